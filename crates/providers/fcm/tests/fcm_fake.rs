//! The FCM provider against the loopback fake FCM + OAuth endpoint (testkit), which
//! follows shared/specs/fcm-v1-discovery.json and verifies the JWT assertion.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use mesh_notify_core::{
    Address, AddressKind, Composer, ErrorClass, Health, Kind, Notification, Notifier, NotifyError,
    Recipient, Room,
};
use mesh_notify_fcm::{FcmConfig, FcmConfigError, FcmNotifier};
use mesh_notify_testkit::fcm::{
    google_error, invalid_field_body, invalid_token_body, FakeFcm, FcmErrorCode, SendMode,
    TokenMode, CLIENT_EMAIL, FCM_SCOPE, INVALID_TOKEN_MESSAGE, OTHER_TEST_PRIVATE_KEY_PEM,
    PRIVATE_KEY_ID, PROJECT_ID, TEST_PRIVATE_KEY_PEM,
};
use serde_json::{json, Value};
use tempfile::TempDir;

const REG_TOKEN: &str = "bk3RNwTe3H0:CI2k_HHwgIpoDKCIZvvDMExUdFQ3P1";

struct Setup {
    fake: FakeFcm,
    fcm: FcmNotifier,
    _dir: TempDir,
}

fn write_key(dir: &TempDir, json: &Value) -> PathBuf {
    let path = dir.path().join("service-account.json");
    std::fs::write(&path, serde_json::to_vec_pretty(json).unwrap()).unwrap();
    path
}

async fn setup_with(key_pem: &str, adjust: impl FnOnce(&mut FcmConfig)) -> Setup {
    let fake = FakeFcm::start().await.unwrap();
    let dir = TempDir::new().unwrap();
    let path = write_key(&dir, &fake.service_account_json_with_key(key_pem));
    let mut config = FcmConfig::new(path);
    config.base_url = Some(fake.url());
    adjust(&mut config);
    let fcm = config.build(Duration::from_secs(5)).unwrap();
    Setup {
        fake,
        fcm,
        _dir: dir,
    }
}

async fn setup() -> Setup {
    setup_with(TEST_PRIVATE_KEY_PEM, |_| {}).await
}

fn bob() -> Recipient {
    Recipient::new("bob", "Bob").with_address(Address::new(AddressKind::Fcm, REG_TOKEN))
}

fn chat() -> Notification {
    Composer::default().chat(
        "Alice",
        &Room::new("room-1", "Test FCM"),
        bob(),
        "Salut Bob !",
    )
}

fn call() -> Notification {
    Composer::default().call("Alice", &Room::new("room-1", "Test FCM"), bob())
}

#[tokio::test]
async fn maps_every_field_of_a_chat_message() {
    let s = setup_with(TEST_PRIVATE_KEY_PEM, |c| {
        c.channel_id = Some("messages".into())
    })
    .await;
    let n = chat();
    let receipt = s.fcm.send(&n).await.unwrap();

    let got = s.fake.messages();
    assert_eq!(got.len(), 1);
    let m = &got[0].message;
    assert_eq!(got[0].project, PROJECT_ID);
    assert_eq!(receipt.provider, "fcm");
    assert!(
        receipt
            .message_id
            .as_deref()
            .is_some_and(|id| id.starts_with(&format!("projects/{PROJECT_ID}/messages/"))),
        "{receipt:?}"
    );
    let id = n.id.to_string();
    assert_eq!(m["token"], REG_TOKEN);
    assert_eq!(m["notification"]["title"], "💬 Alice dans Test FCM");
    assert_eq!(m["notification"]["body"], "Salut Bob !");
    assert_eq!(m["android"]["priority"], "NORMAL");
    // One notification per room on the device: the room's collapse key.
    assert_eq!(m["android"]["collapseKey"], "room-room-1");
    assert!(
        m["android"].get("ttl").is_none(),
        "no ttl unless configured: {m}"
    );
    assert_eq!(
        m["android"]["notification"]["clickAction"],
        "mesh://room/room-1"
    );
    assert_eq!(m["android"]["notification"]["channelId"], "messages");
    assert_eq!(m["android"]["notification"]["tag"], "room-room-1");
    assert_eq!(m["apns"]["headers"]["apns-priority"], "5");
    assert_eq!(m["apns"]["headers"]["apns-collapse-id"], "room-room-1");
    assert_eq!(
        m["apns"]["payload"]["aps"]["alert"]["title"],
        "💬 Alice dans Test FCM"
    );
    assert_eq!(m["apns"]["payload"]["aps"]["alert"]["body"], "Salut Bob !");
    assert_eq!(m["data"]["kind"], "chat");
    assert_eq!(m["data"]["room_id"], "room-1");
    assert_eq!(m["data"]["click_url"], "mesh://room/room-1");
    assert_eq!(m["data"]["notification_id"], id.as_str());
    let data = m["data"].as_object().unwrap();
    assert_eq!(data.len(), 4, "{data:?}");
    assert!(
        data.values().all(Value::is_string),
        "data values must be strings: {data:?}"
    );
    assert!(got[0].headers["content-type"].starts_with("application/json"));

    // The token used was issued for a verified assertion with Google's claims.
    let grants = s.fake.grants();
    assert_eq!(grants.len(), 1);
    let claims = &grants[0].claims;
    assert_eq!(claims["iss"], CLIENT_EMAIL);
    assert_eq!(claims["scope"], FCM_SCOPE);
    assert_eq!(claims["aud"], s.fake.token_uri());
    let lifetime = claims["exp"].as_i64().unwrap() - claims["iat"].as_i64().unwrap();
    assert!(lifetime > 0 && lifetime <= 3600, "{claims}");
    assert_eq!(grants[0].kid.as_deref(), Some(PRIVATE_KEY_ID));
}

#[tokio::test]
async fn calls_are_high_priority_and_live_until_they_expire() {
    let s = setup().await;
    let n = call();
    s.fcm.send(&n).await.unwrap();
    let m = &s.fake.messages()[0].message;
    assert_eq!(m["android"]["priority"], "HIGH");
    assert_eq!(m["android"]["ttl"], "60s");
    assert_eq!(m["apns"]["headers"]["apns-priority"], "10");
    let expiration: i64 = m["apns"]["headers"]["apns-expiration"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let expires_at = n.expires_at.unwrap().as_secs();
    assert!(
        (expires_at - expiration).abs() <= 1,
        "{expiration} vs {expires_at}"
    );
    assert_eq!(m["data"]["kind"], "call");
}

#[tokio::test]
async fn priority_8_is_the_high_threshold() {
    let s = setup().await;
    let seven = Composer::with_priority(chat(), 7).unwrap();
    let eight = Composer::with_priority(chat(), 8).unwrap();
    s.fcm.send(&seven).await.unwrap();
    s.fcm.send(&eight).await.unwrap();
    let got = s.fake.messages();
    assert_eq!(got[0].message["android"]["priority"], "NORMAL");
    assert_eq!(got[0].message["apns"]["headers"]["apns-priority"], "5");
    assert_eq!(got[1].message["android"]["priority"], "HIGH");
    assert_eq!(got[1].message["apns"]["headers"]["apns-priority"], "10");
}

#[tokio::test]
async fn configured_ttl_applies_to_kinds_that_do_not_expire() {
    let s = setup_with(TEST_PRIVATE_KEY_PEM, |c| {
        c.ttl = Some(Duration::from_secs(3600))
    })
    .await;
    s.fcm.send(&chat()).await.unwrap();
    s.fcm.send(&call()).await.unwrap();
    let got = s.fake.messages();
    assert_eq!(got[0].message["android"]["ttl"], "3600s");
    assert_eq!(
        got[1].message["android"]["ttl"], "60s",
        "a call keeps its own expiry"
    );
}

#[tokio::test]
async fn a_notification_without_room_or_click_url_sends_only_the_data_it_has() {
    let s = setup().await;
    let n = Composer::default().system(bob(), "Erreur", "disque plein");
    s.fcm.send(&n).await.unwrap();
    let m = &s.fake.messages()[0].message;
    let data = m["data"].as_object().unwrap();
    assert_eq!(data.len(), 2, "{data:?}");
    assert_eq!(data["kind"], "system");
    assert!(m["android"]["notification"].get("clickAction").is_none());
}

#[tokio::test]
async fn too_large_payload_is_refused_without_a_request() {
    let s = setup().await;
    let n = Notification::new(Kind::System, bob(), "Big", "x".repeat(4100));
    let err = s.fcm.send(&n).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    assert!(err.to_string().contains("4096"), "{err}");
    assert_eq!(s.fake.send_requests(), 0);
    assert_eq!(s.fake.token_requests(), 0);
    // Just under the limit goes through (the fake enforces FCM's limit too).
    let n = Notification::new(Kind::System, bob(), "Big", "x".repeat(3500));
    s.fcm.send(&n).await.unwrap();
    assert_eq!(s.fake.messages().len(), 1);
}

async fn send_failing(code: FcmErrorCode, retry_after: Option<&str>) -> NotifyError {
    let s = setup().await;
    s.fake.set_send_mode(SendMode::Fail {
        code,
        retry_after: retry_after.map(str::to_owned),
    });
    let err = s.fcm.send(&chat()).await.unwrap_err();
    assert_eq!(s.fake.send_requests(), 1);
    assert!(err.to_string().contains(code.as_str()), "{err}");
    err
}

#[tokio::test]
async fn unregistered_means_the_fcm_address_is_gone() {
    let err = send_failing(FcmErrorCode::Unregistered, None).await;
    assert!(
        matches!(
            err,
            NotifyError::RecipientGone {
                address: AddressKind::Fcm,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn unregistered_token_scripted_per_device() {
    let s = setup().await;
    s.fake.unregister(REG_TOKEN);
    let err = s.fcm.send(&chat()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::RecipientGone, "{err}");
}

#[tokio::test]
async fn invalid_argument_about_the_message_is_permanent() {
    let err = send_failing(FcmErrorCode::InvalidArgument, None).await;
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
}

#[tokio::test]
async fn sender_id_mismatch_is_permanent_and_keeps_the_address() {
    let err = send_failing(FcmErrorCode::SenderIdMismatch, None).await;
    assert!(matches!(err, NotifyError::Permanent { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains("another Firebase project"), "{text}");
    assert!(text.contains("address is kept"), "{text}");
}

fn chat_to(token: &str) -> Notification {
    let to = Recipient::new("u", "U").with_address(Address::new(AddressKind::Fcm, token));
    Composer::default().chat("Alice", &Room::new("room-1", "Test FCM"), to, "Salut")
}

fn assert_fcm_gone(err: &NotifyError) {
    assert!(
        matches!(
            err,
            NotifyError::RecipientGone {
                address: AddressKind::Fcm,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn an_invalid_registration_token_is_gone_like_the_admin_sdk_says() {
    let s = setup().await;
    s.fake.invalidate(REG_TOKEN);
    let err = s.fcm.send(&chat()).await.unwrap_err();
    assert_fcm_gone(&err);
    let text = err.to_string();
    assert!(text.contains("INVALID_ARGUMENT"), "{text}");
    assert!(text.contains(INVALID_TOKEN_MESSAGE), "{text}");
    assert!(!text.contains(REG_TOKEN), "{text}");
    // Only that token: another one is delivered.
    s.fcm.send(&chat_to("another-token:APA91b")).await.unwrap();
}

#[tokio::test]
async fn a_token_with_characters_fcm_refuses_is_gone() {
    let s = setup().await;
    for bad in ["has space", "quote\"in", "é-token"] {
        let err = s.fcm.send(&chat_to(bad)).await.unwrap_err();
        assert_fcm_gone(&err);
    }
    assert!(s.fake.messages().is_empty());
}

async fn classified(status: u16, body: Value) -> NotifyError {
    let s = setup().await;
    s.fake.set_send_mode(SendMode::Answer {
        status,
        body,
        retry_after: None,
    });
    s.fcm.send(&chat()).await.unwrap_err()
}

#[tokio::test]
async fn invalid_argument_is_gone_only_when_it_is_about_the_token() {
    // Google's body for a bad token (FcmError + BadRequest on message.token).
    assert_fcm_gone(&classified(400, invalid_token_body()).await);
    // The field violation alone, without an FcmError.
    let mut bare = google_error(400, "INVALID_ARGUMENT", "Invalid registration", None);
    bare["error"]["details"] = json!([{
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{"field": "message.token", "description": "Invalid registration"}],
    }]);
    assert_fcm_gone(&classified(400, bare).await);
    // Google's message alone, with the FcmError code and no field violation.
    let message_only = google_error(
        400,
        "INVALID_ARGUMENT",
        INVALID_TOKEN_MESSAGE,
        Some("INVALID_ARGUMENT"),
    );
    assert_fcm_gone(&classified(400, message_only).await);

    // About anything else: our message is wrong, the token may be fine.
    for body in [
        invalid_field_body(
            "message.android.ttl",
            "Invalid value at 'message.android.ttl' (type.googleapis.com/google.protobuf.Duration)",
        ),
        invalid_field_body("message.data", "Invalid data key: from"),
        google_error(
            400,
            "INVALID_ARGUMENT",
            "Android message is too big",
            Some("INVALID_ARGUMENT"),
        ),
        google_error(
            400,
            "INVALID_ARGUMENT",
            "Request contains an invalid argument.",
            None,
        ),
    ] {
        let err = classified(400, body.clone()).await;
        assert!(
            matches!(err, NotifyError::Permanent { .. }),
            "{body}: {err:?}"
        );
    }
}

#[tokio::test]
async fn sender_id_mismatch_is_never_gone_even_when_it_mentions_the_token() {
    let body = google_error(
        403,
        "PERMISSION_DENIED",
        "SenderId mismatch",
        Some("SENDER_ID_MISMATCH"),
    );
    let err = classified(403, body).await;
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
}

#[tokio::test]
async fn third_party_auth_error_is_misconfigured() {
    let err = send_failing(FcmErrorCode::ThirdPartyAuthError, None).await;
    assert_eq!(err.class(), ErrorClass::Misconfigured, "{err}");
}

#[tokio::test]
async fn quota_exceeded_is_transient_with_retry_after_seconds() {
    let err = send_failing(FcmErrorCode::QuotaExceeded, Some("30")).await;
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
}

#[tokio::test]
async fn quota_exceeded_honours_an_http_date_retry_after() {
    // A day ahead: the assertion holds however long the test waits for a core.
    let day = Duration::from_secs(24 * 3600);
    let date = httpdate::fmt_http_date(SystemTime::now() + day);
    let err = send_failing(FcmErrorCode::QuotaExceeded, Some(&date)).await;
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    let ra = err.retry_after().unwrap();
    assert!(ra > day - Duration::from_secs(3600) && ra <= day, "{ra:?}");
}

#[tokio::test]
async fn unavailable_is_transient() {
    let err = send_failing(FcmErrorCode::Unavailable, Some("7")).await;
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
}

#[tokio::test]
async fn internal_is_transient() {
    let err = send_failing(FcmErrorCode::Internal, None).await;
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    assert_eq!(err.retry_after(), None);
}

#[tokio::test]
async fn oauth_refusal_is_misconfigured_and_nothing_is_sent() {
    let s = setup().await;
    s.fake.set_token_mode(TokenMode::invalid_grant());
    let err = s.fcm.send(&chat()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Misconfigured, "{err}");
    assert!(err.to_string().contains("invalid_grant"), "{err}");
    assert!(err.to_string().contains(CLIENT_EMAIL), "{err}");
    assert_eq!(s.fake.send_requests(), 0);
}

#[tokio::test]
async fn a_key_google_does_not_know_is_refused_by_signature_check() {
    let s = setup_with(OTHER_TEST_PRIVATE_KEY_PEM, |_| {}).await;
    let err = s.fcm.send(&chat()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Misconfigured, "{err}");
    assert!(err.to_string().contains("Invalid JWT Signature"), "{err}");
    assert_eq!(s.fake.token_requests(), 1);
    assert_eq!(s.fake.send_requests(), 0);
}

#[tokio::test]
async fn token_endpoint_outage_is_transient() {
    let s = setup().await;
    s.fake.set_token_mode(TokenMode::Refuse {
        status: 503,
        error: "temporarily_unavailable".into(),
        description: "try later".into(),
    });
    let err = s.fcm.send(&chat()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
}

#[tokio::test]
async fn one_token_serves_many_sends_even_concurrent_ones() {
    let s = setup().await;
    let fcm = Arc::new(s.fcm);
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..8 {
        let fcm = fcm.clone();
        tasks.spawn(async move { fcm.send(&chat()).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.unwrap().unwrap();
    }
    for _ in 0..4 {
        fcm.send(&chat()).await.unwrap();
    }
    assert_eq!(s.fake.messages().len(), 12);
    assert_eq!(
        s.fake.token_requests(),
        1,
        "the access token must be cached"
    );
    assert!(fcm.health().await.is_usable());
    assert_eq!(s.fake.token_requests(), 1, "health uses the cached token");
}

#[tokio::test]
async fn tokens_about_to_expire_are_refreshed() {
    let s = setup().await;
    // Less than the refresh margin: each send needs a fresh token.
    s.fake.set_token_mode(TokenMode::Normal { expires_in: 30 });
    for _ in 0..3 {
        s.fcm.send(&chat()).await.unwrap();
    }
    assert_eq!(s.fake.token_requests(), 3);
}

async fn token_requests_for_two_sends(expires_in: Value) -> usize {
    let s = setup().await;
    s.fake
        .set_token_mode(TokenMode::AnnounceExpiresIn(expires_in.clone()));
    s.fcm.send(&chat()).await.unwrap();
    s.fcm.send(&chat()).await.unwrap();
    assert_eq!(s.fake.messages().len(), 2, "{expires_in}");
    s.fake.token_requests()
}

#[tokio::test]
async fn a_huge_expires_in_is_capped_and_never_panics() {
    for huge in [
        json!(u64::MAX),
        json!(i64::MAX),
        json!(1e300),
        json!("3599"),
        serde_json::from_str::<Value>("184467440737095516150000").unwrap(),
    ] {
        assert_eq!(
            token_requests_for_two_sends(huge.clone()).await,
            1,
            "{huge}"
        );
    }
}

#[tokio::test]
async fn a_negative_zero_or_unreadable_expires_in_makes_a_single_use_token() {
    for bad in [
        json!(-1),
        json!(0),
        json!(i64::MIN),
        json!("soon"),
        json!(true),
    ] {
        assert_eq!(token_requests_for_two_sends(bad.clone()).await, 2, "{bad}");
    }
}

#[tokio::test]
async fn an_access_token_that_cannot_go_in_a_header_is_misconfigured_and_not_sent() {
    let s = setup().await;
    for token in ["ya29.bad\r\nX-Injected: 1", "", "   "] {
        s.fake.set_token_mode(TokenMode::Answer {
            status: 200,
            body: json!({"access_token": token, "expires_in": 3599, "token_type": "Bearer"}),
        });
        let err = s.fcm.send(&chat()).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Misconfigured, "{err}");
        assert!(err.to_string().contains("Authorization header"), "{err}");
        assert!(!err.to_string().contains("X-Injected"), "{err}");
    }
    assert_eq!(s.fake.send_requests(), 0);
}

#[tokio::test]
async fn refused_access_token_is_misconfigured_and_replaced_next_time() {
    let s = setup().await;
    s.fcm.send(&chat()).await.unwrap();
    s.fake.revoke_access_tokens();
    let err = s.fcm.send(&chat()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Misconfigured, "{err}");
    s.fcm.send(&chat()).await.unwrap();
    assert_eq!(s.fake.token_requests(), 2);
    assert_eq!(s.fake.messages().len(), 2);
}

#[tokio::test]
async fn project_id_override_is_used_in_the_url() {
    let s = setup_with(TEST_PRIVATE_KEY_PEM, |c| {
        c.project_id = Some("another-project".into())
    })
    .await;
    assert_eq!(s.fcm.project_id(), "another-project");
    let err = s.fcm.send(&chat()).await.unwrap_err();
    // The fake only serves its own project: 403 PERMISSION_DENIED, no FcmError.
    assert_eq!(err.class(), ErrorClass::Misconfigured, "{err}");
    assert!(err.to_string().contains("another-project"), "{err}");
}

#[tokio::test]
async fn unreachable_without_an_fcm_address() {
    let s = setup().await;
    let n = Composer::default().chat(
        "Alice",
        &Room::new("r", "R"),
        Recipient::new("carol", "Carol").with_address(Address::new(AddressKind::Apns, "abcd")),
        "hi",
    );
    assert!(!s.fcm.can_reach(&n));
    assert!(s.fcm.can_reach(&chat()));
    let err = s.fcm.send(&n).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Unreachable);
    assert_eq!(s.fake.send_requests(), 0);
    assert_eq!(s.fake.token_requests(), 0);
}

#[tokio::test]
async fn connection_refused_and_timeouts_are_transient() {
    let mut s = setup_with(TEST_PRIVATE_KEY_PEM, |c| {
        c.timeout = Some(Duration::from_millis(300))
    })
    .await;
    s.fake.set_send_mode(SendMode::Hang);
    let err = s.fcm.send(&chat()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    assert!(err.to_string().contains("did not answer"), "{err}");
    s.fake.stop();
    let err = s.fcm.send(&chat()).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
}

#[tokio::test]
async fn health_follows_the_token_endpoint() {
    let s = setup().await;
    assert_eq!(s.fcm.health().await, Health::Healthy);
    let s = setup().await;
    s.fake.set_token_mode(TokenMode::invalid_grant());
    match s.fcm.health().await {
        Health::Unhealthy(reason) => assert!(reason.contains("invalid_grant"), "{reason}"),
        other => panic!("expected unhealthy, got {other:?}"),
    }
}

#[tokio::test]
async fn debug_and_describe_never_show_the_private_key() {
    let s = setup().await;
    let key_line = TEST_PRIVATE_KEY_PEM.lines().nth(1).unwrap();
    assert!(key_line.len() > 40);
    for text in [format!("{:?}", s.fcm), s.fcm.describe()] {
        assert!(!text.contains(key_line), "{text}");
        assert!(!text.contains("PRIVATE KEY"), "{text}");
        assert!(text.contains(PROJECT_ID), "{text}");
    }
    assert_eq!(s.fcm.name(), "fcm");
    let urls = s.fcm.urls();
    assert_eq!(urls[0].0, "providers.fcm.base_url");
    assert_eq!(urls[1], ("providers.fcm.token_uri", s.fake.token_uri()));
}

// ---------------------------------------------------------------- configuration

fn build_err(json: &str) -> (FcmConfigError, PathBuf) {
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("sa.json");
    std::fs::write(&path, json).unwrap();
    let err = FcmConfig::new(&path)
        .build(Duration::from_secs(5))
        .unwrap_err();
    (err, path)
}

#[test]
fn missing_key_file_names_the_path() {
    let err = FcmConfig::new("/nonexistent/fcm-sa.json")
        .build(Duration::from_secs(5))
        .unwrap_err();
    assert!(
        matches!(err, FcmConfigError::ServiceAccountFile { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("/nonexistent/fcm-sa.json"),
        "{err}"
    );
}

#[test]
fn invalid_key_files_name_the_path_and_never_the_key() {
    let (err, path) = build_err("{not json");
    assert!(
        matches!(err, FcmConfigError::ServiceAccountJson { .. }),
        "{err:?}"
    );
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");

    let (err, _) = build_err(r#"{"type":"service_account","private_key":"x"}"#);
    assert!(err.to_string().contains("client_email"), "{err}");

    let (err, _) =
        build_err(r#"{"type":"authorized_user","private_key":"x","client_email":"a@b"}"#);
    assert!(err.to_string().contains("service_account"), "{err}");

    let bad = serde_json::json!({
        "type": "service_account", "project_id": "p", "client_email": "a@b",
        "private_key": "-----BEGIN PRIVATE KEY-----\nTm90QUtleVNlY3JldFNlY3JldA==\n-----END PRIVATE KEY-----\n",
    });
    let (err, path) = build_err(&bad.to_string());
    assert!(matches!(err, FcmConfigError::PrivateKey { .. }), "{err:?}");
    assert!(err.to_string().contains(path.to_str().unwrap()), "{err}");
    assert!(
        !err.to_string().contains("Tm90QUtleVNlY3JldFNlY3JldA"),
        "{err}"
    );
}

#[test]
fn project_id_comes_from_the_key_file_or_the_config() {
    let mut sa = serde_json::json!({
        "type": "service_account", "client_email": "a@b", "private_key": TEST_PRIVATE_KEY_PEM,
    });
    let (err, _) = build_err(&sa.to_string());
    assert!(
        matches!(err, FcmConfigError::MissingProjectId { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("providers.fcm.project_id"),
        "{err}"
    );

    sa["project_id"] = "from-file".into();
    let dir = TempDir::new().unwrap();
    let path = dir.path().join("sa.json");
    std::fs::write(&path, sa.to_string()).unwrap();
    let fcm = FcmConfig::new(&path).build(Duration::from_secs(5)).unwrap();
    assert_eq!(fcm.project_id(), "from-file");
    // No token_uri anywhere: Google's default.
    assert_eq!(fcm.urls()[1].1, "https://oauth2.googleapis.com/token");
    assert_eq!(fcm.urls()[0].1, "https://fcm.googleapis.com/");

    let mut config = FcmConfig::new(&path);
    config.project_id = Some("bad/project".into());
    assert!(matches!(
        config.build(Duration::from_secs(5)).unwrap_err(),
        FcmConfigError::InvalidProjectId(_)
    ));
    config.project_id = None;
    config.token_uri = Some("ftp://example.com/token".into());
    let err = config.build(Duration::from_secs(5)).unwrap_err();
    assert!(err.to_string().contains("providers.fcm.token_uri"), "{err}");
}

#[tokio::test]
async fn durations_out_of_range_are_refused_without_panicking() {
    let fake = FakeFcm::start().await.unwrap();
    let dir = TempDir::new().unwrap();
    let path = write_key(&dir, &fake.service_account_json());
    let mut config = FcmConfig::new(path);
    config.timeout = Some(Duration::MAX);
    let err = config.build(Duration::from_secs(5)).unwrap_err();
    assert!(
        matches!(err, FcmConfigError::InvalidField { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().starts_with("invalid providers.fcm.timeout"),
        "{err}"
    );
    config.timeout = Some(Duration::ZERO);
    let err = config.build(Duration::from_secs(5)).unwrap_err();
    assert!(err.to_string().contains("providers.fcm.timeout"), "{err}");
    // Unset: the global timeout applies, and the error names it.
    config.timeout = None;
    let err = config.build(Duration::ZERO).unwrap_err();
    assert!(err.to_string().starts_with("invalid timeout"), "{err}");

    config.ttl = Some(Duration::MAX);
    let err = config.build(Duration::from_secs(5)).unwrap_err();
    assert!(
        err.to_string().starts_with("invalid providers.fcm.ttl"),
        "{err}"
    );
    assert!(err.to_string().contains("2419200s"), "{err}");
    config.ttl = Some(Duration::from_secs(28 * 24 * 3600));
    config.build(Duration::from_secs(5)).unwrap();
}

#[test]
fn config_keys_are_checked() {
    let ok: FcmConfig = serde_json::from_value(serde_json::json!({
        "service_account_file": "/etc/sa.json",
        "project_id": "p",
        "base_url": "http://127.0.0.1:1",
        "token_uri": "http://127.0.0.1:1/token",
        "timeout": "3s",
        "allow_insecure_http": true,
        "channel_id": "calls",
        "ttl": "1h",
    }))
    .unwrap();
    assert_eq!(ok.timeout, Some(Duration::from_secs(3)));
    assert_eq!(ok.ttl, Some(Duration::from_secs(3600)));
    assert_eq!(
        ok.urls(),
        vec![
            ("providers.fcm.base_url", "http://127.0.0.1:1".to_string()),
            (
                "providers.fcm.token_uri",
                "http://127.0.0.1:1/token".to_string()
            ),
        ]
    );
    let err = serde_json::from_value::<FcmConfig>(serde_json::json!({
        "service_account_file": "/etc/sa.json",
        "api_key": "legacy",
    }))
    .unwrap_err();
    assert!(err.to_string().contains("api_key"), "{err}");
    assert!(serde_json::from_value::<FcmConfig>(serde_json::json!({})).is_err());
}
