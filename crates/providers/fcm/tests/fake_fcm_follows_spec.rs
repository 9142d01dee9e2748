//! The fake FCM itself must behave like Google (the FCM v1 discovery document,
//! Google's OAuth JWT-bearer rules), or the provider tests prove nothing. These
//! tests talk to it with raw HTTP and hand-made JWTs.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mesh_notify_testkit::fcm::{
    invalid_token_body, FakeFcm, FcmErrorCode, SendMode, TokenMode, CLIENT_EMAIL, FCM_SCOPE,
    INVALID_TOKEN_MESSAGE, OTHER_TEST_PRIVATE_KEY_PEM, PROJECT_ID, TEST_PRIVATE_KEY_PEM,
};
use serde_json::{json, Value};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

fn assertion(claims: &Value, pem: &str) -> String {
    let key = EncodingKey::from_rsa_pem(pem.as_bytes()).unwrap();
    jsonwebtoken::encode(&Header::new(Algorithm::RS256), claims, &key).unwrap()
}

fn good_claims(fake: &FakeFcm) -> Value {
    let iat = now();
    json!({"iss": CLIENT_EMAIL, "scope": FCM_SCOPE, "aud": fake.token_uri(), "iat": iat, "exp": iat + 3600})
}

async fn token_request(fake: &FakeFcm, grant_type: &str, assertion: &str) -> (u16, Value) {
    let body = format!(
        "grant_type={}&assertion={assertion}",
        grant_type.replace(':', "%3A")
    );
    let resp = reqwest::Client::new()
        .post(fake.token_uri())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(body)
        .send()
        .await
        .unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

const GRANT: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";

async fn access_token(fake: &FakeFcm) -> String {
    let (status, body) = token_request(
        fake,
        GRANT,
        &assertion(&good_claims(fake), TEST_PRIVATE_KEY_PEM),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["token_type"], "Bearer");
    assert!(body["expires_in"].as_u64().unwrap() > 0);
    body["access_token"].as_str().unwrap().to_string()
}

#[tokio::test]
async fn token_endpoint_verifies_the_assertion() {
    let fake = FakeFcm::start().await.unwrap();
    access_token(&fake).await;

    let refuse = |claims: Value, pem: &'static str| {
        let fake = &fake;
        async move { token_request(fake, GRANT, &assertion(&claims, pem)).await }
    };
    // Signed by an unknown key.
    let (s, b) = refuse(good_claims(&fake), OTHER_TEST_PRIVATE_KEY_PEM).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "{b}"
    );
    // Wrong issuer, audience, lifetime, scope.
    let mut c = good_claims(&fake);
    c["iss"] = "someone@else.iam.gserviceaccount.com".into();
    let (s, b) = refuse(c, TEST_PRIVATE_KEY_PEM).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "{b}"
    );
    let mut c = good_claims(&fake);
    c["aud"] = "https://oauth2.googleapis.com/token".into();
    let (s, b) = refuse(c, TEST_PRIVATE_KEY_PEM).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "{b}"
    );
    let mut c = good_claims(&fake);
    c["exp"] = json!(c["iat"].as_i64().unwrap() + 3601);
    let (s, b) = refuse(c, TEST_PRIVATE_KEY_PEM).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "{b}"
    );
    let mut c = good_claims(&fake);
    c["scope"] = "https://www.googleapis.com/auth/userinfo.email".into();
    let (s, b) = refuse(c, TEST_PRIVATE_KEY_PEM).await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_scope")),
        "{b}"
    );
    // Wrong grant type; not a JWT.
    let (s, b) = token_request(&fake, "client_credentials", "x").await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("unsupported_grant_type")),
        "{b}"
    );
    let (s, b) = token_request(&fake, GRANT, "not-a-jwt").await;
    assert_eq!(
        (s, b["error"].as_str()),
        (400, Some("invalid_grant")),
        "{b}"
    );
    assert_eq!(fake.token_requests(), 8);
    assert_eq!(fake.grants().len(), 1);
}

async fn send(fake: &FakeFcm, bearer: Option<&str>, project: &str, body: Value) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .post(format!(
            "{}/v1/projects/{project}/messages:send",
            fake.url()
        ))
        .json(&body);
    if let Some(t) = bearer {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await.unwrap();
    (
        resp.status().as_u16(),
        resp.json().await.unwrap_or(Value::Null),
    )
}

#[tokio::test]
async fn messages_send_requires_an_issued_token_for_the_project() {
    let fake = FakeFcm::start().await.unwrap();
    let msg = json!({"message": {"token": "t", "notification": {"title": "a", "body": "b"}}});
    let (s, b) = send(&fake, None, PROJECT_ID, msg.clone()).await;
    assert_eq!(
        (s, b["error"]["status"].as_str()),
        (401, Some("UNAUTHENTICATED")),
        "{b}"
    );
    let (s, _) = send(&fake, Some("ya29.made-up"), PROJECT_ID, msg.clone()).await;
    assert_eq!(s, 401);
    let token = access_token(&fake).await;
    let (s, b) = send(&fake, Some(&token), "other-project", msg.clone()).await;
    assert_eq!(
        (s, b["error"]["status"].as_str()),
        (403, Some("PERMISSION_DENIED")),
        "{b}"
    );
    let (s, b) = send(&fake, Some(&token), PROJECT_ID, msg).await;
    assert_eq!(s, 200, "{b}");
    assert!(b["name"]
        .as_str()
        .unwrap()
        .starts_with(&format!("projects/{PROJECT_ID}/messages/")));
    assert_eq!(fake.messages().len(), 1);
}

#[tokio::test]
async fn messages_are_checked_against_the_discovery_schema() {
    let fake = FakeFcm::start().await.unwrap();
    let token = access_token(&fake).await;
    let bad = [
        json!({"message": {"token": "t", "priority": "high"}}),
        json!({"message": {"token": "t", "android": {"notification": {"click_url": "x"}}}}),
        json!({"message": {"token": "t", "data": {"count": 3}}}),
        json!({"message": {"token": "t", "android": {"priority": "URGENT"}}}),
        json!({"message": {"token": "t", "android": {"ttl": 60}}}),
        json!({"message": {"token": "t", "android": {"ttl": "60"}}}),
        json!({"message": {"token": "t", "apns": {"headers": {"apns-priority": 10}}}}),
        json!({"message": {"notification": {"title": "no target"}}}),
        json!({"message": {"token": "t", "topic": "two-targets"}}),
        json!({"message": {"token": "t", "data": {"big": "x".repeat(5000)}}}),
        json!({"msg": {"token": "t"}}),
    ];
    for body in bad {
        let (s, b) = send(&fake, Some(&token), PROJECT_ID, body.clone()).await;
        assert_eq!(
            (s, b["error"]["status"].as_str()),
            (400, Some("INVALID_ARGUMENT")),
            "{body} -> {b}"
        );
    }
    let good = json!({"message": {
        "token": "t",
        "notification": {"title": "a", "body": "b"},
        "android": {"priority": "HIGH", "ttl": "3.5s", "collapseKey": "k",
                    "notification": {"channel_id": "c", "tag": "t", "click_action": "x"}},
        "apns": {"headers": {"apns-priority": "10"}, "payload": {"aps": {"alert": {"title": "a"}, "badge": 1}}},
        "data": {"k": "v"},
    }});
    let (s, b) = send(&fake, Some(&token), PROJECT_ID, good).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(fake.messages().len(), 1);
}

#[tokio::test]
async fn scripted_failures_use_googles_error_bodies() {
    let fake = FakeFcm::start().await.unwrap();
    let token = access_token(&fake).await;
    let msg = json!({"message": {"token": "t"}});
    for code in FcmErrorCode::ALL {
        fake.set_send_mode(SendMode::Fail {
            code,
            retry_after: Some("12".into()),
        });
        let resp = reqwest::Client::new()
            .post(format!(
                "{}/v1/projects/{PROJECT_ID}/messages:send",
                fake.url()
            ))
            .bearer_auth(&token)
            .json(&msg)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), code.http_status());
        assert_eq!(resp.headers()["retry-after"], "12");
        let b: Value = resp.json().await.unwrap();
        assert_eq!(b["error"]["code"], code.http_status());
        assert_eq!(b["error"]["status"], code.rpc_status());
        assert_eq!(
            b["error"]["details"][0]["@type"],
            "type.googleapis.com/google.firebase.fcm.v1.FcmError"
        );
        assert_eq!(b["error"]["details"][0]["errorCode"], code.as_str());
    }
    let unregistered = FcmErrorCode::Unregistered.error_body();
    assert_eq!(
        unregistered,
        json!({"error":{"code":404,"message":"Requested entity was not found.","status":"NOT_FOUND","details":[{"@type":"type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":"UNREGISTERED"}]}})
    );
    assert!(fake.messages().is_empty());
}

#[test]
fn vendored_discovery_document_matches_shared_specs() {
    // The fake validates against crates/testkit/fixtures/fcm-v1-discovery.json, a
    // copy of shared/specs/fcm-v1-discovery.json; where shared/ is beside the
    // checkout, the copy must not drift.
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../..");
    let shared = root.join("../shared/specs/fcm-v1-discovery.json");
    let vendored = root.join("crates/testkit/fixtures/fcm-v1-discovery.json");
    let vendored: Value = serde_json::from_slice(&std::fs::read(vendored).unwrap()).unwrap();
    assert!(vendored["schemas"]["Message"]["properties"]["token"].is_object());
    if let Ok(raw) = std::fs::read(shared) {
        let shared: Value = serde_json::from_slice(&raw).unwrap();
        assert_eq!(shared, vendored);
    }
}

#[tokio::test]
async fn a_token_that_is_not_one_gets_googles_invalid_argument_about_message_token() {
    let fake = FakeFcm::start().await.unwrap();
    let token = access_token(&fake).await;
    let msg = |t: &str| json!({"message": {"token": t, "notification": {"title": "a"}}});
    for bad in ["with space", "", "semi;colon"] {
        let (s, b) = send(&fake, Some(&token), PROJECT_ID, msg(bad)).await;
        assert_eq!(s, 400, "{bad:?}: {b}");
        assert_eq!(b, invalid_token_body());
    }
    assert_eq!(
        invalid_token_body()["error"]["details"][1]["fieldViolations"][0]["field"],
        "message.token"
    );
    assert_eq!(
        invalid_token_body()["error"]["message"],
        INVALID_TOKEN_MESSAGE
    );
    let good = "dQw4w9WgXcQ:APA91bH-x_y.z";
    let (s, _) = send(&fake, Some(&token), PROJECT_ID, msg(good)).await;
    assert_eq!(s, 200);
    fake.invalidate(good);
    let (s, b) = send(&fake, Some(&token), PROJECT_ID, msg(good)).await;
    assert_eq!((s, b), (400, invalid_token_body()));
}

#[tokio::test]
async fn scripted_answers_and_announced_lifetimes_are_served_verbatim() {
    let fake = FakeFcm::start().await.unwrap();
    fake.set_token_mode(TokenMode::AnnounceExpiresIn(json!(-5)));
    let (status, body) = token_request(
        &fake,
        GRANT,
        &assertion(&good_claims(&fake), TEST_PRIVATE_KEY_PEM),
    )
    .await;
    assert_eq!((status, body["expires_in"].clone()), (200, json!(-5)));
    // The token works even though its announced lifetime is over.
    let token = body["access_token"].as_str().unwrap().to_string();
    fake.set_send_mode(SendMode::Answer {
        status: 418,
        body: json!({"error": {"code": 418}}),
        retry_after: Some("4".into()),
    });
    let msg = json!({"message": {"token": "t"}});
    let (s, b) = send(&fake, Some(&token), PROJECT_ID, msg).await;
    assert_eq!((s, b), (418, json!({"error": {"code": 418}})));

    fake.set_token_mode(TokenMode::AnnounceExpiresIn(json!(u64::MAX)));
    let (status, body) = token_request(
        &fake,
        GRANT,
        &assertion(&good_claims(&fake), TEST_PRIVATE_KEY_PEM),
    )
    .await;
    assert_eq!((status, body["expires_in"].clone()), (200, json!(u64::MAX)));
}
