//! The APNs provider against the loopback fake APNs (testkit), over real TLS with
//! HTTP/2: the fake verifies the ES256 provider token with the public key and
//! checks headers and payload like APNs.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_notify_apns::{ApnsConfig, ApnsConfigError, ApnsEnvironment, ApnsNotifier, SANDBOX_URL};
use mesh_notify_core::{
    Address, AddressKind, Composer, ErrorClass, Health, Kind, Notification, Notifier, NotifyError,
    Recipient, Room, Timestamp,
};
use mesh_notify_testkit::apns::{Answer, ApnsRequest, FakeApns, FakeApnsConfig};
use rcgen::{KeyPair, PKCS_ECDSA_P256_SHA256};
use tempfile::TempDir;

const KEY_ID: &str = "KEYID12345";
const TEAM_ID: &str = "TEAMID6789";
const BUNDLE: &str = "org.example.mesh";
const ALERT_TOKEN: &str = "4f1a0c9e7d1b2a3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4";
const VOIP_TOKEN: &str = "9b8a7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9";

struct Setup {
    fake: FakeApns,
    dir: TempDir,
    key: KeyPair,
}

impl Setup {
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
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("AuthKey.p8"), key.serialize_pem()).unwrap();
        std::fs::write(dir.path().join("ca.pem"), fake.ca_pem()).unwrap();
        Self { fake, dir, key }
    }

    fn key_path(&self) -> PathBuf {
        self.dir.path().join("AuthKey.p8")
    }

    fn config(&self) -> ApnsConfig {
        let mut cfg = ApnsConfig::new(self.key_path(), KEY_ID, TEAM_ID, BUNDLE);
        cfg.base_url = Some(self.fake.url());
        cfg.ca_file = Some(self.dir.path().join("ca.pem"));
        cfg
    }

    fn notifier(&self) -> ApnsNotifier {
        self.config().build(Duration::from_secs(5)).unwrap()
    }
}

fn bob() -> Recipient {
    Recipient::new("bob", "Bob").with_address(Address::new(AddressKind::Apns, ALERT_TOKEN))
}

fn bob_with_voip() -> Recipient {
    bob().with_address(Address::new(AddressKind::ApnsVoip, VOIP_TOKEN))
}

fn room() -> Room {
    Room::new("room-1", "Test APNs")
}

fn chat(to: Recipient) -> Notification {
    Composer::default().chat("Alice", &room(), to, "Salut Bob, tu es là ?")
}

fn call(to: Recipient) -> Notification {
    Composer::default().call("Alice", &room(), to)
}

fn file(to: Recipient) -> Notification {
    Composer::default().file("Alice", &room(), to, "photo.jpg")
}

fn now_secs() -> i64 {
    Timestamp::now().as_secs()
}

fn only_request(fake: &FakeApns) -> ApnsRequest {
    let requests = fake.requests();
    assert_eq!(requests.len(), 1, "{requests:#?}");
    requests.into_iter().next().unwrap()
}

#[tokio::test]
async fn chat_goes_over_http2_with_a_verified_es256_provider_token() {
    let s = Setup::start().await;
    let apns = s.notifier();
    let n = chat(bob());
    let receipt = apns.send(&n).await.unwrap();

    let r = only_request(&s.fake);
    assert_eq!(r.status, 200, "{:?}", r.reason);
    assert_eq!(receipt.provider, "apns");
    assert_eq!(
        receipt.message_id.as_deref(),
        Some(n.id.to_string().as_str())
    );
    assert_eq!(r.version, "HTTP/2.0");
    assert_eq!(r.method, "POST");
    assert_eq!(r.path, format!("/3/device/{ALERT_TOKEN}"));

    // The fake fills these only when the signature verified with the public key.
    let header = r.jwt_header.as_ref().expect("signature verified");
    let claims = r.jwt_claims.as_ref().expect("signature verified");
    assert_eq!(header["alg"], "ES256");
    assert_eq!(header["kid"], KEY_ID);
    assert_eq!(claims["iss"], TEAM_ID);
    let iat = claims["iat"].as_i64().unwrap();
    assert!((now_secs() - iat).abs() <= 5, "iat {iat}");
    let auth = r.header("authorization").unwrap();
    assert_eq!(auth, format!("bearer {}", r.jwt.as_deref().unwrap()));
}

#[tokio::test]
async fn chat_headers_and_payload() {
    let s = Setup::start().await;
    let n = chat(bob());
    s.notifier().send(&n).await.unwrap();
    let r = only_request(&s.fake);
    assert_eq!(r.header("apns-topic"), Some(BUNDLE));
    assert_eq!(r.header("apns-push-type"), Some("alert"));
    assert_eq!(r.header("apns-priority"), Some("10"));
    assert_eq!(r.header("apns-expiration"), Some("0"));
    assert_eq!(r.header("apns-collapse-id"), Some("room-room-1"));
    let id = n.id.to_string();
    assert_eq!(r.header("apns-id"), Some(id.as_str()));
    assert_eq!(id, id.to_lowercase());

    let p = &r.payload;
    assert_eq!(p["aps"]["alert"]["title"], "💬 Alice dans Test APNs");
    assert_eq!(p["aps"]["alert"]["body"], "Salut Bob, tu es là ?");
    assert_eq!(p["aps"]["sound"], "default");
    assert_eq!(p["aps"]["thread-id"], "room-1");
    assert_eq!(p["click_url"], "mesh://room/room-1");
    assert_eq!(p["room_id"], "room-1");
}

#[tokio::test]
async fn a_configured_ttl_sets_the_expiration_of_chats() {
    let s = Setup::start().await;
    let mut cfg = s.config();
    cfg.ttl = Some(Duration::from_secs(3600));
    let before = now_secs();
    cfg.build(Duration::from_secs(5))
        .unwrap()
        .send(&chat(bob()))
        .await
        .unwrap();
    let exp: i64 = only_request(&s.fake)
        .header("apns-expiration")
        .unwrap()
        .parse()
        .unwrap();
    assert!(exp >= before + 3600 && exp <= now_secs() + 3600, "{exp}");
}

#[tokio::test]
async fn a_call_rings_the_voip_token_on_the_voip_topic_and_expires_with_the_ring() {
    let s = Setup::start().await;
    let n = call(bob_with_voip());
    s.notifier().send(&n).await.unwrap();
    let r = only_request(&s.fake);
    assert_eq!(r.status, 200, "{:?}", r.reason);
    assert_eq!(r.device_token, VOIP_TOKEN);
    assert_eq!(r.header("apns-topic"), Some("org.example.mesh.voip"));
    assert_eq!(r.header("apns-push-type"), Some("voip"));
    assert_eq!(r.header("apns-priority"), Some("10"));
    let exp: i64 = r.header("apns-expiration").unwrap().parse().unwrap();
    assert_eq!(exp, n.expires_at.unwrap().as_secs());
    let ahead = exp - now_secs();
    assert!((55..=60).contains(&ahead), "expires {ahead} s ahead");
    assert_eq!(
        r.header("apns-collapse-id"),
        Some(n.id.to_string().as_str())
    );
    assert_eq!(
        r.payload["aps"]["alert"]["title"],
        "📞 Appel audio/vidéo de Alice"
    );
    assert_eq!(r.payload["room_id"], "room-1");
}

#[tokio::test]
async fn a_call_without_voip_token_is_an_alert() {
    let s = Setup::start().await;
    let n = call(bob());
    s.notifier().send(&n).await.unwrap();
    let r = only_request(&s.fake);
    assert_eq!(r.device_token, ALERT_TOKEN);
    assert_eq!(r.header("apns-topic"), Some(BUNDLE));
    assert_eq!(r.header("apns-push-type"), Some("alert"));
    assert_eq!(
        r.header("apns-expiration"),
        Some(n.expires_at.unwrap().as_secs().to_string().as_str())
    );
}

#[tokio::test]
async fn a_file_is_sent_with_priority_5_and_a_chat_with_10() {
    let s = Setup::start().await;
    let apns = s.notifier();
    let f = file(bob_with_voip());
    apns.send(&f).await.unwrap();
    apns.send(&chat(bob())).await.unwrap();
    let requests = s.fake.requests();
    assert_eq!(requests.len(), 2);
    let r = &requests[0];
    assert_eq!(
        r.device_token, ALERT_TOKEN,
        "files never use the VoIP token"
    );
    assert_eq!(r.header("apns-priority"), Some("5"));
    assert_eq!(r.header("apns-push-type"), Some("alert"));
    assert_eq!(r.header("apns-expiration"), Some("0"));
    assert_eq!(
        r.header("apns-collapse-id"),
        Some("room-room-1-files"),
        "one notification per room for files"
    );
    assert_eq!(
        r.payload["aps"]["alert"]["body"],
        "Fichier: photo.jpg\nDans: Test APNs"
    );
    assert_eq!(requests[1].header("apns-priority"), Some("10"));
}

#[tokio::test]
async fn one_provider_token_and_one_connection_serve_many_sends() {
    let s = Setup::start().await;
    let apns = Arc::new(s.notifier());
    for _ in 0..10 {
        apns.send(&chat(bob())).await.unwrap();
    }
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let apns = apns.clone();
            tokio::spawn(async move { apns.send(&chat(bob())).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    assert_eq!(s.fake.delivered().len(), 20);
    assert_eq!(s.fake.distinct_jwts(), 1);
    assert_eq!(apns.provider_tokens_signed(), 1);
    assert_eq!(
        s.fake.connections(),
        1,
        "requests are multiplexed on one HTTP/2 connection"
    );
}

#[tokio::test]
async fn an_oversized_payload_is_refused_without_a_request() {
    let s = Setup::start().await;
    let apns = s.notifier();
    let big = Notification::new(Kind::Chat, bob(), "Big", "x".repeat(4100));
    let err = apns.send(&big).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    assert!(err.to_string().contains("4096"), "{err}");
    assert!(s.fake.requests().is_empty());
}

#[tokio::test]
async fn voip_payloads_may_reach_5120_bytes() {
    let s = Setup::start().await;
    let apns = s.notifier();
    let mut ok = Notification::new(Kind::Call, bob_with_voip(), "Call", "x".repeat(4500));
    ok.expires_at = Some(Timestamp::now().plus(Duration::from_secs(60)));
    apns.send(&ok).await.unwrap();
    assert_eq!(s.fake.delivered().len(), 1);

    let mut too_big = ok.clone();
    too_big.body = "x".repeat(5200);
    let err = apns.send(&too_big).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    assert!(err.to_string().contains("5120"), "{err}");
    assert_eq!(s.fake.requests().len(), 1);
}

/// Sends `n` with the fake scripted to answer `answer`; returns the error.
async fn error_for(answer: Answer, n: Notification) -> (NotifyError, Vec<ApnsRequest>) {
    let s = Setup::start().await;
    s.fake.set_answer(answer);
    let err = s.notifier().send(&n).await.unwrap_err();
    (err, s.fake.requests())
}

fn assert_gone(err: &NotifyError, kind: AddressKind, reason: &str) {
    assert!(
        matches!(err, NotifyError::RecipientGone { address, .. } if *address == kind),
        "{err:?}"
    );
    assert!(err.to_string().contains(reason), "{err}");
}

#[tokio::test]
async fn unregistered_410_means_the_alert_token_is_gone() {
    let (err, requests) = error_for(Answer::reject(410, "Unregistered"), chat(bob())).await;
    assert_gone(&err, AddressKind::Apns, "Unregistered");
    assert!(err.to_string().contains("token invalid since"), "{err}");
    assert_eq!(requests.len(), 1);
}

#[tokio::test]
async fn expired_token_410_means_the_token_is_gone() {
    let (err, _) = error_for(Answer::reject(410, "ExpiredToken"), chat(bob())).await;
    assert_gone(&err, AddressKind::Apns, "ExpiredToken");
}

fn assert_permanent(err: &NotifyError, reason: &str) {
    assert!(matches!(err, NotifyError::Permanent { .. }), "{err:?}");
    assert!(err.to_string().contains(reason), "{err}");
}

#[tokio::test]
async fn bad_device_token_400_is_permanent_and_keeps_the_address() {
    // Apple: "invalid token or token for the wrong environment". Only 410 proves a
    // token dead.
    let (err, requests) = error_for(Answer::reject(400, "BadDeviceToken"), chat(bob())).await;
    assert_permanent(&err, "400 BadDeviceToken");
    assert!(err.to_string().contains("other APNs environment"), "{err}");
    assert!(err.to_string().contains("address is kept"), "{err}");
    assert!(!err.to_string().contains(ALERT_TOKEN), "{err}");
    assert_eq!(requests.len(), 1);
}

#[tokio::test]
async fn device_token_not_for_topic_on_a_call_is_permanent() {
    let s = Setup::start().await;
    s.fake
        .set_token_answer(VOIP_TOKEN, Answer::reject(400, "DeviceTokenNotForTopic"));
    let apns = s.notifier();
    let err = apns.send(&call(bob_with_voip())).await.unwrap_err();
    assert_permanent(&err, "DeviceTokenNotForTopic");
    assert!(err.to_string().contains("apns_voip"), "{err}");
    // The alert token is unaffected by the per-token script.
    apns.send(&chat(bob_with_voip())).await.unwrap();
}

/// `count` different hexadecimal device tokens.
fn tokens(count: usize) -> Vec<String> {
    (0..count)
        .map(|i| format!("{i:02x}{}", &ALERT_TOKEN[2..]))
        .collect()
}

fn chat_to_token(token: &str) -> Notification {
    chat(Recipient::new("u", "U").with_address(Address::new(AddressKind::Apns, token)))
}

#[tokio::test]
async fn the_wrong_environment_flags_the_provider_misconfigured_and_deletes_nothing() {
    let s = Setup::start().await;
    s.fake.set_wrong_environment(true);
    let apns = s.notifier();
    let tokens = tokens(4);

    // Two different tokens refused: each may be just a bad token.
    for t in &tokens[..2] {
        let err = apns.send(&chat_to_token(t)).await.unwrap_err();
        assert_permanent(&err, "BadDeviceToken");
    }
    assert_eq!(apns.suspected_misconfiguration(), None);

    // The third in a row, with no delivery in between: the configuration.
    let err = apns.send(&chat_to_token(&tokens[2])).await.unwrap_err();
    assert!(matches!(err, NotifyError::Misconfigured { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(
            "every device token is refused as BadDeviceToken: the provider's environment \
             (production/sandbox) or topic likely does not match the app build"
        ),
        "{text}"
    );
    assert!(text.contains(&s.fake.url()), "names the endpoint: {text}");
    assert!(!text.contains(&tokens[2]), "{text}");

    // From then on, every such answer says so, and health reports it without
    // a probe.
    let err = apns.send(&chat_to_token(&tokens[3])).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Misconfigured, "{err}");
    let sent = s.fake.requests().len();
    match apns.health().await {
        Health::Unhealthy(why) => {
            assert!(why.contains("environment (production/sandbox)"), "{why}");
            assert_eq!(Some(why), apns.suspected_misconfiguration());
        }
        h => panic!("expected unhealthy, got {h:?}"),
    }
    assert_eq!(s.fake.requests().len(), sent);
    assert!(s.fake.requests().iter().all(|r| r.status == 400));

    // Fixed (here: the fake is the right environment again): the first delivery
    // clears the flag.
    s.fake.set_wrong_environment(false);
    apns.send(&chat_to_token(&tokens[0])).await.unwrap();
    assert_eq!(apns.suspected_misconfiguration(), None);
    assert_eq!(apns.health().await, Health::Healthy);
}

#[tokio::test]
async fn one_bad_token_refused_again_and_again_is_not_a_misconfiguration() {
    let s = Setup::start().await;
    s.fake
        .set_token_answer(ALERT_TOKEN, Answer::reject(400, "BadDeviceToken"));
    let apns = s.notifier();
    for _ in 0..5 {
        let err = apns.send(&chat(bob())).await.unwrap_err();
        assert_permanent(&err, "BadDeviceToken");
    }
    assert_eq!(apns.suspected_misconfiguration(), None);
    assert_eq!(apns.health().await, Health::Healthy);
}

#[tokio::test]
async fn a_delivery_between_refusals_restarts_the_count() {
    let s = Setup::start().await;
    let tokens = tokens(5);
    for t in &tokens[..4] {
        s.fake
            .set_token_answer(t, Answer::reject(400, "BadDeviceToken"));
    }
    let apns = s.notifier();
    for t in &tokens[..2] {
        apns.send(&chat_to_token(t)).await.unwrap_err();
    }
    apns.send(&chat_to_token(&tokens[4])).await.unwrap();
    for t in &tokens[2..4] {
        let err = apns.send(&chat_to_token(t)).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    }
    assert_eq!(apns.suspected_misconfiguration(), None);
}

#[tokio::test]
async fn a_bundle_id_the_app_does_not_have_flags_a_topic_mismatch() {
    let s = Setup::start().await;
    let mut cfg = s.config();
    cfg.bundle_id = "org.example.other".into();
    let apns = cfg.build(Duration::from_secs(5)).unwrap();
    let tokens = tokens(3);
    for t in &tokens[..2] {
        let err = apns.send(&chat_to_token(t)).await.unwrap_err();
        assert_permanent(&err, "TopicDisallowed");
    }
    let err = apns.send(&chat_to_token(&tokens[2])).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Misconfigured, "{err}");
    let text = err.to_string();
    assert!(
        text.contains("every device token is refused for topic `org.example.other`"),
        "{text}"
    );
    assert!(text.contains("bundle_id"), "{text}");
    assert!(matches!(apns.health().await, Health::Unhealthy(why) if why.contains("topic")));
}

#[tokio::test]
async fn device_token_not_for_topic_for_every_token_is_a_topic_mismatch() {
    let s = Setup::start().await;
    s.fake
        .set_answer(Answer::reject(400, "DeviceTokenNotForTopic"));
    let apns = s.notifier().with_mismatch_threshold(2);
    let tokens = tokens(2);
    let err = apns.send(&chat_to_token(&tokens[0])).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    let err = apns.send(&chat_to_token(&tokens[1])).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Misconfigured, "{err}");
    assert!(err.to_string().contains("DeviceTokenNotForTopic"), "{err}");
}

#[tokio::test]
async fn a_token_that_is_not_hexadecimal_is_permanent_and_not_sent() {
    let s = Setup::start().await;
    let apns = s.notifier();
    for bad in ["not-a-token", "abc\r\nx-injected: 1", "zz11"] {
        let err = apns.send(&chat_to_token(bad)).await.unwrap_err();
        assert!(matches!(err, NotifyError::Permanent { .. }), "{err:?}");
        assert!(err.to_string().contains("not hexadecimal"), "{err}");
    }
    assert!(s.fake.requests().is_empty());
    assert_eq!(apns.suspected_misconfiguration(), None);
}

#[tokio::test]
async fn a_room_id_that_cannot_go_in_a_header_is_still_delivered() {
    let s = Setup::start().await;
    let n = Composer::default().chat("Alice", &Room::new("salle\nété", "Test"), bob(), "Salut");
    s.notifier().send(&n).await.unwrap();
    let r = only_request(&s.fake);
    assert_eq!(
        r.header("apns-collapse-id"),
        n.collapse_topic().as_deref(),
        "sent as the key's digest"
    );
}

#[tokio::test]
async fn payload_too_large_413_is_permanent() {
    let (err, _) = error_for(Answer::reject(413, "PayloadTooLarge"), chat(bob())).await;
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    assert!(err.to_string().contains("413 PayloadTooLarge"), "{err}");
}

#[tokio::test]
async fn other_400s_are_permanent() {
    let (err, _) = error_for(Answer::reject(400, "BadCollapseId"), chat(bob())).await;
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    assert!(err.to_string().contains("BadCollapseId"), "{err}");
}

#[tokio::test]
async fn too_many_requests_429_is_transient_and_honours_retry_after() {
    let answer = Answer::Reject {
        status: 429,
        reason: "TooManyRequests".into(),
        retry_after: Some("30".into()),
    };
    let (err, _) = error_for(answer, chat(bob())).await;
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    assert_eq!(err.retry_after(), Some(Duration::from_secs(30)));
    assert!(err.to_string().contains("TooManyRequests"), "{err}");
}

#[tokio::test]
async fn internal_server_error_500_is_transient() {
    let (err, _) = error_for(Answer::reject(500, "InternalServerError"), chat(bob())).await;
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    assert_eq!(err.retry_after(), None);
}

#[tokio::test]
async fn service_unavailable_503_is_transient() {
    let (err, requests) = error_for(Answer::reject(503, "ServiceUnavailable"), chat(bob())).await;
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    assert!(err.to_string().contains("ServiceUnavailable"), "{err}");
    assert_eq!(requests.len(), 1, "a provider never retries on its own");
}

#[tokio::test]
async fn an_unknown_reason_is_kept_verbatim() {
    let (err, _) = error_for(Answer::reject(400, "SomeBrandNewReason"), chat(bob())).await;
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    assert!(err.to_string().contains("SomeBrandNewReason"), "{err}");
}

#[tokio::test]
async fn an_expired_provider_token_is_re_signed_once_and_the_send_delivered() {
    let s = Setup::start().await;
    s.fake.expire_next_new_jwt();
    let apns = s.notifier();
    let receipt = apns.send(&chat(bob())).await.unwrap();
    let requests = s.fake.requests();
    assert_eq!(requests.len(), 2, "{requests:#?}");
    assert_eq!(requests[0].status, 403);
    assert_eq!(requests[0].reason.as_deref(), Some("ExpiredProviderToken"));
    assert_eq!(requests[1].status, 200);
    assert_ne!(requests[0].jwt, requests[1].jwt);
    assert_eq!(requests[0].header("apns-id"), requests[1].header("apns-id"));
    assert_eq!(s.fake.distinct_jwts(), 2);
    assert_eq!(apns.provider_tokens_signed(), 2);
    assert_eq!(receipt.message_id, Some(requests[1].apns_id.clone()));

    // The fresh token is kept: the next send reuses it.
    apns.send(&chat(bob())).await.unwrap();
    assert_eq!(s.fake.distinct_jwts(), 2);
    assert_eq!(s.fake.requests()[2].jwt, requests[1].jwt);
}

#[tokio::test]
async fn a_token_that_goes_stale_between_sends_is_replaced() {
    let s = Setup::start().await;
    let apns = s.notifier();
    apns.send(&chat(bob())).await.unwrap();
    s.fake.expire_seen_jwts();
    apns.send(&chat(bob())).await.unwrap();
    let requests = s.fake.requests();
    let statuses: Vec<u16> = requests.iter().map(|r| r.status).collect();
    assert_eq!(statuses, [200, 403, 200]);
    assert_eq!(requests[0].jwt, requests[1].jwt);
    assert_ne!(requests[1].jwt, requests[2].jwt);
}

#[tokio::test]
async fn an_expired_provider_token_twice_is_misconfigured() {
    let (err, requests) = error_for(Answer::reject(403, "ExpiredProviderToken"), chat(bob())).await;
    assert_eq!(err.class(), ErrorClass::Misconfigured, "{err}");
    assert!(err.to_string().contains("ExpiredProviderToken"), "{err}");
    assert_eq!(requests.len(), 2, "one re-signed retry, no more");
    assert_ne!(requests[0].jwt, requests[1].jwt);
}

#[tokio::test]
async fn a_token_signed_with_another_key_is_misconfigured() {
    let s = Setup::start().await;
    let other = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let path = s.dir.path().join("Other.p8");
    std::fs::write(&path, other.serialize_pem()).unwrap();
    let mut cfg = s.config();
    cfg.key_file = path;
    let err = cfg
        .build(Duration::from_secs(5))
        .unwrap()
        .send(&chat(bob()))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Misconfigured, "{err}");
    assert!(err.to_string().contains("InvalidProviderToken"), "{err}");
    let requests = s.fake.requests();
    assert_eq!(requests.len(), 2);
    assert!(requests.iter().all(|r| r.jwt_claims.is_none()));
    assert_eq!(s.fake.distinct_jwts(), 2);
}

#[tokio::test]
async fn a_hung_server_times_out_as_transient() {
    let s = Setup::start().await;
    s.fake.set_answer(Answer::Hang);
    let mut cfg = s.config();
    cfg.timeout = Some(Duration::from_millis(300));
    let err = cfg
        .build(Duration::from_secs(5))
        .unwrap()
        .send(&chat(bob()))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    assert!(err.to_string().contains("did not answer"), "{err}");
}

#[tokio::test]
async fn a_stopped_server_is_transient_and_unhealthy() {
    let mut s = Setup::start().await;
    let apns = s.notifier();
    assert_eq!(apns.health().await, Health::Healthy);
    s.fake.stop();
    let err = apns.send(&chat(bob())).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    assert!(!err.to_string().contains(ALERT_TOKEN), "{err}");
    assert!(matches!(apns.health().await, Health::Unhealthy(_)));
}

#[tokio::test]
async fn health_probes_without_a_device_token_and_reports_a_refused_key() {
    let s = Setup::start().await;
    assert_eq!(s.notifier().health().await, Health::Healthy);
    let r = only_request(&s.fake);
    assert_eq!(r.device_token, "");
    assert_eq!(r.reason.as_deref(), Some("MissingDeviceToken"));
    assert!(r.jwt_claims.is_some());

    let other = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).unwrap();
    let path = s.dir.path().join("Other.p8");
    std::fs::write(&path, other.serialize_pem()).unwrap();
    let mut cfg = s.config();
    cfg.key_file = path;
    match cfg.build(Duration::from_secs(5)).unwrap().health().await {
        Health::Unhealthy(why) => assert!(why.contains("InvalidProviderToken"), "{why}"),
        h => panic!("expected unhealthy, got {h:?}"),
    }
}

#[tokio::test]
async fn the_fake_server_certificate_is_not_trusted_without_ca_file() {
    let s = Setup::start().await;
    let mut cfg = s.config();
    cfg.ca_file = None;
    let err = cfg
        .build(Duration::from_secs(5))
        .unwrap()
        .send(&chat(bob()))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    assert!(s.fake.requests().is_empty());
}

#[tokio::test]
async fn a_recipient_without_a_usable_token_is_unreachable() {
    let s = Setup::start().await;
    let apns = s.notifier();
    let nobody = chat(Recipient::new("carol", "Carol"));
    assert!(!apns.can_reach(&nobody));
    assert!(matches!(
        apns.send(&nobody).await,
        Err(NotifyError::Unreachable { .. })
    ));
    // A VoIP token only serves calls.
    let voip_only = Recipient::new("dave", "Dave")
        .with_address(Address::new(AddressKind::ApnsVoip, VOIP_TOKEN));
    assert!(!apns.can_reach(&chat(voip_only.clone())));
    assert!(apns.can_reach(&call(voip_only)));
    // An empty token is no token.
    let empty = Recipient::new("erin", "Erin").with_address(Address::new(AddressKind::Apns, " "));
    assert!(!apns.can_reach(&chat(empty)));
    assert!(apns.can_reach(&chat(bob())));
    assert!(s.fake.requests().is_empty());
}

#[tokio::test]
async fn an_expired_call_is_not_sent() {
    let s = Setup::start().await;
    let mut n = call(bob_with_voip());
    n.expires_at = Some(Timestamp(Timestamp::now().as_millis() - 1000));
    let err = s.notifier().send(&n).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    assert!(s.fake.requests().is_empty());
}

#[tokio::test]
async fn debug_describe_and_errors_never_show_the_key_or_token() {
    let s = Setup::start().await;
    let apns = s.notifier();
    apns.send(&chat(bob())).await.unwrap();
    let jwt = only_request(&s.fake).jwt.unwrap();
    let pem = s.key.serialize_pem();
    let key_line = pem.lines().nth(1).unwrap();
    for shown in [
        format!("{apns:?}"),
        apns.describe(),
        format!("{:?}", s.config()),
    ] {
        assert!(!shown.contains(key_line), "{shown}");
        assert!(!shown.contains(&jwt), "{shown}");
    }
    assert!(format!("{apns:?}").contains("<redacted>"));
    assert!(apns.describe().contains(BUNDLE));
}

fn build_err(cfg: &ApnsConfig) -> ApnsConfigError {
    cfg.build(Duration::from_secs(5)).unwrap_err()
}

#[tokio::test]
async fn key_file_problems_name_the_path() {
    let s = Setup::start().await;
    let mut cfg = s.config();
    cfg.key_file = s.dir.path().join("missing.p8");
    let err = build_err(&cfg);
    assert!(matches!(err, ApnsConfigError::KeyFile { .. }), "{err:?}");
    assert!(err.to_string().contains("missing.p8"), "{err}");

    // A certificate is not a key; a P-384 key is not an ES256 key.
    let not_a_key = s.dir.path().join("ca-as-key.p8");
    std::fs::write(&not_a_key, s.fake.ca_pem()).unwrap();
    cfg.key_file = not_a_key;
    let err = build_err(&cfg);
    assert!(matches!(err, ApnsConfigError::InvalidKey { .. }), "{err:?}");
    assert!(err.to_string().contains("ca-as-key.p8"), "{err}");

    let p384 = KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
    let p384_path = s.dir.path().join("p384.p8");
    std::fs::write(&p384_path, p384.serialize_pem()).unwrap();
    cfg.key_file = p384_path;
    let err = build_err(&cfg);
    assert!(matches!(err, ApnsConfigError::InvalidKey { .. }), "{err:?}");
    assert!(err.to_string().contains("p384.p8"), "{err}");
    let key_line = p384.serialize_pem().lines().nth(1).unwrap().to_string();
    assert!(!err.to_string().contains(&key_line));
}

#[tokio::test]
async fn durations_out_of_range_are_refused_without_panicking() {
    let s = Setup::start().await;
    let mut cfg = s.config();
    cfg.timeout = Some(Duration::MAX);
    let err = build_err(&cfg);
    assert!(
        err.to_string().contains("invalid providers.apns.timeout"),
        "{err}"
    );
    cfg.timeout = Some(Duration::ZERO);
    assert!(build_err(&cfg)
        .to_string()
        .contains("providers.apns.timeout"));

    // Unset: the global timeout applies, and the error names it.
    cfg.timeout = None;
    let err = cfg.build(Duration::MAX).unwrap_err();
    assert!(
        matches!(err, ApnsConfigError::InvalidDefaultTimeout(_)),
        "{err:?}"
    );
    assert!(err.to_string().starts_with("invalid timeout"), "{err}");

    let mut cfg = s.config();
    cfg.ttl = Some(Duration::MAX);
    let err = build_err(&cfg);
    assert!(
        err.to_string().contains("invalid providers.apns.ttl"),
        "{err}"
    );
    cfg.ttl = Some(Duration::from_secs(30 * 24 * 3600));
    cfg.build(Duration::from_secs(5)).unwrap();
}

#[tokio::test]
async fn ids_urls_and_ca_file_are_checked() {
    let s = Setup::start().await;
    let mut cfg = s.config();
    cfg.key_id = "SHORT".into();
    assert!(build_err(&cfg)
        .to_string()
        .contains("providers.apns.key_id"));

    let mut cfg = s.config();
    cfg.bundle_id = "org.example.mesh.voip".into();
    assert!(build_err(&cfg)
        .to_string()
        .contains("providers.apns.bundle_id"));

    let mut cfg = s.config();
    cfg.environment = Some(ApnsEnvironment::Sandbox);
    assert!(matches!(
        build_err(&cfg),
        ApnsConfigError::BothEnvironmentAndBaseUrl
    ));

    let mut cfg = s.config();
    cfg.base_url = Some("ftp://example.com".into());
    assert!(matches!(
        build_err(&cfg),
        ApnsConfigError::InvalidUrl { .. }
    ));

    let mut cfg = s.config();
    cfg.ca_file = Some(s.dir.path().join("nope.pem"));
    let err = build_err(&cfg);
    assert!(err.to_string().contains("nope.pem"), "{err}");
}

#[test]
fn config_deserializes_strictly_and_names_the_url_to_check() {
    let cfg: ApnsConfig = serde_json::from_value(serde_json::json!({
        "key_file": "/run/secrets/AuthKey.p8",
        "key_id": KEY_ID,
        "team_id": TEAM_ID,
        "bundle_id": BUNDLE,
        "environment": "sandbox",
        "timeout": "2s",
    }))
    .unwrap();
    assert_eq!(cfg.timeout, Some(Duration::from_secs(2)));
    assert_eq!(
        cfg.url_to_check(),
        ("providers.apns.environment", SANDBOX_URL.to_string())
    );
    let default = ApnsConfig::new("k.p8", KEY_ID, TEAM_ID, BUNDLE);
    assert_eq!(default.resolved_base_url(), "https://api.push.apple.com");
    let mut custom = default.clone();
    custom.base_url = Some("http://127.0.0.1:9".into());
    assert_eq!(
        custom.url_to_check(),
        ("providers.apns.base_url", "http://127.0.0.1:9".to_string())
    );

    let unknown = serde_json::from_value::<ApnsConfig>(serde_json::json!({
        "key_file": "k.p8", "key_id": KEY_ID, "team_id": TEAM_ID, "bundle_id": BUNDLE,
        "certificate": "x",
    }));
    assert!(unknown.unwrap_err().to_string().contains("certificate"));
    let missing = serde_json::from_value::<ApnsConfig>(serde_json::json!({
        "key_id": KEY_ID, "team_id": TEAM_ID, "bundle_id": BUNDLE,
    }));
    assert!(missing.unwrap_err().to_string().contains("key_file"));
}
