//! The fake APNs refuses what APNs refuses, so the provider tests against it mean
//! something: raw HTTP/2 requests, each with one thing wrong.

use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::{encode, Algorithm, EncodingKey, Header};
use mesh_notify_testkit::apns::{Answer, FakeApns, FakeApnsConfig};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use reqwest::header::{HeaderMap, HeaderName, HeaderValue};
use serde_json::{json, Value};

const KEY_ID: &str = "KEYID12345";
const TEAM_ID: &str = "TEAMID6789";
const BUNDLE: &str = "org.example.mesh";
const TOKEN: &str = "4f1a0c9e7d1b2a3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4";
const APNS_ID: &str = "0190f3c2-7d4e-7a1b-8c2d-3e4f5a6b7c8d";

struct Harness {
    fake: FakeApns,
    key: KeyPair,
    client: reqwest::Client,
}

impl Harness {
    async fn start() -> Self {
        let key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
        let fake = FakeApns::start(FakeApnsConfig {
            team_id: TEAM_ID.into(),
            key_id: KEY_ID.into(),
            public_key_pem: key.public_key_pem(),
            bundle_id: BUNDLE.into(),
        })
        .await
        .unwrap();
        let client = reqwest::Client::builder()
            .http2_prior_knowledge()
            .tls_certs_merge([reqwest::Certificate::from_pem(fake.ca_pem().as_bytes()).unwrap()])
            .build()
            .unwrap();
        Self { fake, key, client }
    }

    fn jwt(&self, kid: &str, iss: &str, iat_ago: i64) -> String {
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs() as i64;
        let mut header = Header::new(Algorithm::ES256);
        header.kid = Some(kid.into());
        let key = EncodingKey::from_ec_pem(self.key.serialize_pem().as_bytes()).unwrap();
        encode(&header, &json!({"iss": iss, "iat": now - iat_ago}), &key).unwrap()
    }

    fn headers(&self) -> HeaderMap {
        let mut h = HeaderMap::new();
        let jwt = self.jwt(KEY_ID, TEAM_ID, 0);
        h.insert("authorization", format!("bearer {jwt}").parse().unwrap());
        h.insert("apns-topic", HeaderValue::from_static(BUNDLE));
        h.insert("apns-push-type", HeaderValue::from_static("alert"));
        h.insert("apns-priority", HeaderValue::from_static("10"));
        h.insert("apns-expiration", HeaderValue::from_static("0"));
        h.insert("apns-id", HeaderValue::from_static(APNS_ID));
        h
    }

    async fn post(&self, path: &str, headers: HeaderMap, body: Vec<u8>) -> (u16, Value, HeaderMap) {
        let resp = self
            .client
            .post(format!("{}{path}", self.fake.url()))
            .headers(headers)
            .body(body)
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&body).unwrap_or(Value::Null),
            headers,
        )
    }

    async fn reason_with(&self, edit: impl FnOnce(&mut HeaderMap)) -> (u16, String) {
        let mut h = self.headers();
        edit(&mut h);
        let (status, body, _) = self.post(&format!("/3/device/{TOKEN}"), h, payload()).await;
        (status, body["reason"].as_str().unwrap_or("").to_string())
    }
}

fn payload() -> Vec<u8> {
    json!({"aps": {"alert": {"title": "t", "body": "b"}}})
        .to_string()
        .into_bytes()
}

/// One change to an otherwise valid request's headers.
type HeaderEdit = Box<dyn FnOnce(&mut HeaderMap)>;

fn set(h: &mut HeaderMap, name: &'static str, value: &str) {
    h.insert(HeaderName::from_static(name), value.parse().unwrap());
}

#[tokio::test]
async fn a_well_formed_request_is_accepted_and_echoes_apns_id() {
    let t = Harness::start().await;
    let (status, _, headers) = t
        .post(&format!("/3/device/{TOKEN}"), t.headers(), payload())
        .await;
    assert_eq!(status, 200);
    assert_eq!(headers["apns-id"], APNS_ID);
    let r = &t.fake.requests()[0];
    assert_eq!(r.version, "HTTP/2.0");
    assert!(r.jwt_claims.is_some());
}

#[tokio::test]
async fn an_http1_client_cannot_talk_to_it() {
    let t = Harness::start().await;
    let http1 = reqwest::Client::builder()
        .http1_only()
        .tls_certs_merge([reqwest::Certificate::from_pem(t.fake.ca_pem().as_bytes()).unwrap()])
        .build()
        .unwrap();
    let res = http1
        .post(format!("{}/3/device/{TOKEN}", t.fake.url()))
        .headers(t.headers())
        .body(payload())
        .send()
        .await;
    assert!(res.is_err(), "{res:?}");
    assert!(t.fake.requests().is_empty());
}

#[tokio::test]
async fn provider_token_problems_are_403s() {
    let t = Harness::start().await;
    assert_eq!(
        t.reason_with(|h| {
            h.remove("authorization");
        })
        .await,
        (403, "MissingProviderToken".into())
    );
    let stale = t.jwt(KEY_ID, TEAM_ID, 3700);
    assert_eq!(
        t.reason_with(|h| set(h, "authorization", &format!("bearer {stale}")))
            .await,
        (403, "ExpiredProviderToken".into())
    );
    let wrong_kid = t.jwt("OTHERKEY99", TEAM_ID, 0);
    assert_eq!(
        t.reason_with(|h| set(h, "authorization", &format!("bearer {wrong_kid}")))
            .await,
        (403, "InvalidProviderToken".into())
    );
    let wrong_iss = t.jwt(KEY_ID, "OTHERTEAM9", 0);
    assert_eq!(
        t.reason_with(|h| set(h, "authorization", &format!("bearer {wrong_iss}")))
            .await,
        (403, "InvalidProviderToken".into())
    );
    let other_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some(KEY_ID.into());
    let forged = encode(
        &header,
        &json!({"iss": TEAM_ID, "iat": SystemTime::now().duration_since(UNIX_EPOCH).unwrap().as_secs()}),
        &EncodingKey::from_ec_pem(other_key.serialize_pem().as_bytes()).unwrap(),
    )
    .unwrap();
    assert_eq!(
        t.reason_with(|h| set(h, "authorization", &format!("bearer {forged}")))
            .await,
        (403, "InvalidProviderToken".into())
    );
}

#[tokio::test]
async fn header_problems_get_apples_reasons() {
    let t = Harness::start().await;
    let cases: Vec<(HeaderEdit, &str)> = vec![
        (
            Box::new(|h| {
                h.remove("apns-topic");
            }),
            "MissingTopic",
        ),
        (
            Box::new(|h| set(h, "apns-topic", "org.other.app")),
            "TopicDisallowed",
        ),
        (
            Box::new(|h| set(h, "apns-push-type", "voip")),
            "InvalidPushType",
        ),
        (Box::new(|h| set(h, "apns-priority", "7")), "BadPriority"),
        (
            Box::new(|h| set(h, "apns-expiration", "soon")),
            "BadExpirationDate",
        ),
        (
            Box::new(|h| set(h, "apns-id", &APNS_ID.to_uppercase())),
            "BadMessageId",
        ),
        (
            Box::new(|h| set(h, "apns-collapse-id", &"c".repeat(65))),
            "BadCollapseId",
        ),
    ];
    for (edit, reason) in cases {
        assert_eq!(t.reason_with(edit).await, (400, reason.to_string()));
    }
    // A VoIP push on the VoIP topic is fine.
    let voip = t
        .reason_with(|h| {
            set(h, "apns-push-type", "voip");
            set(h, "apns-topic", "org.example.mesh.voip");
        })
        .await;
    assert_eq!(voip.0, 200);
}

#[tokio::test]
async fn path_method_token_and_payload_problems() {
    let t = Harness::start().await;
    let reason = |v: &Value| v["reason"].as_str().unwrap_or("").to_string();
    let (s, b, _) = t.post("/3/device/", t.headers(), payload()).await;
    assert_eq!((s, reason(&b)), (400, "MissingDeviceToken".into()));
    let (s, b, _) = t.post("/3/device/not-hex!", t.headers(), payload()).await;
    assert_eq!((s, reason(&b)), (400, "BadDeviceToken".into()));
    let (s, b, _) = t.post("/3/other", t.headers(), payload()).await;
    assert_eq!((s, reason(&b)), (404, "BadPath".into()));
    let (s, b, _) = t
        .post(&format!("/3/device/{TOKEN}"), t.headers(), Vec::new())
        .await;
    assert_eq!((s, reason(&b)), (400, "PayloadEmpty".into()));
    let mut big = json!({"aps": {"alert": "x"}, "pad": "y".repeat(4096)})
        .to_string()
        .into_bytes();
    let (s, b, _) = t
        .post(&format!("/3/device/{TOKEN}"), t.headers(), big.clone())
        .await;
    assert_eq!((s, reason(&b)), (413, "PayloadTooLarge".into()));
    big.truncate(10);
    let (s, _, _) = t
        .post(&format!("/3/device/{TOKEN}"), t.headers(), big)
        .await;
    assert_eq!(s, 400);
    let resp = t
        .client
        .get(format!("{}/3/device/{TOKEN}", t.fake.url()))
        .headers(t.headers())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status().as_u16(), 405);
}

#[tokio::test]
async fn scripted_410_carries_a_timestamp_and_per_token_scripts_win() {
    let t = Harness::start().await;
    t.fake.set_answer(Answer::reject(503, "ServiceUnavailable"));
    t.fake
        .set_token_answer(TOKEN, Answer::reject(410, "Unregistered"));
    let (s, b, h) = t
        .post(&format!("/3/device/{TOKEN}"), t.headers(), payload())
        .await;
    assert_eq!(s, 410);
    assert_eq!(b["reason"], "Unregistered");
    assert!(b["timestamp"].as_i64().unwrap() > 1_700_000_000_000);
    assert_eq!(h["apns-id"], APNS_ID);
    let other = "ab".repeat(32);
    let (s, b, _) = t
        .post(&format!("/3/device/{other}"), t.headers(), payload())
        .await;
    assert_eq!((s, b["reason"].clone()), (503, json!("ServiceUnavailable")));
}

#[tokio::test]
async fn the_wrong_environment_refuses_every_token_but_not_the_provider_token() {
    let t = Harness::start().await;
    t.fake.set_token_answer(TOKEN, Answer::Accept);
    t.fake.set_wrong_environment(true);
    for token in [TOKEN.to_string(), "ab".repeat(32)] {
        let (s, b, _) = t
            .post(&format!("/3/device/{token}"), t.headers(), payload())
            .await;
        assert_eq!((s, b["reason"].clone()), (400, json!("BadDeviceToken")));
    }
    // Authentication is still checked first.
    let mut h = t.headers();
    h.remove("authorization");
    let (s, b, _) = t.post(&format!("/3/device/{TOKEN}"), h, payload()).await;
    assert_eq!(
        (s, b["reason"].clone()),
        (403, json!("MissingProviderToken"))
    );

    t.fake.set_wrong_environment(false);
    let (s, _, _) = t
        .post(&format!("/3/device/{TOKEN}"), t.headers(), payload())
        .await;
    assert_eq!(s, 200);
}
