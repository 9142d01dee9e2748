//! The Web Push provider against a loopback push service that verifies the VAPID
//! token and decrypts the payload on its own.

use std::time::Duration;

use mesh_notify_core::{
    Address, AddressKind, Composer, ErrorClass, Notification, Notifier, NotifyError, Recipient,
    Room,
};
use mesh_notify_provider_kit::{Profile, ProviderConfig, ProviderContext};
use mesh_notify_testkit::webpush::{id_of, FakePushService, Mode};
use mesh_notify_webpush::{EndpointPolicy, VapidKey, WebPushConfig, WebPushNotifier};

// A P-256 private scalar (RFC 8291 Appendix A's application server key).
const VAPID: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";
const SUBJECT: &str = "mailto:ops@example.com";

fn notifier(timeout: Duration) -> WebPushNotifier {
    WebPushNotifier::new(
        VapidKey::parse(VAPID).unwrap(),
        SUBJECT,
        Duration::from_secs(3600),
        EndpointPolicy {
            https_only: false,
            allow_private_addresses: true,
        },
        timeout,
    )
    .unwrap()
}

fn bob(subscription: &str) -> Recipient {
    Recipient::new("bob", "Bob").with_address(Address::new(AddressKind::WebPush, subscription))
}

fn chat(subscription: &str) -> Notification {
    Composer::default().chat(
        "Alice",
        &Room::new("r1", "Test"),
        bob(subscription),
        "Salut Bob !",
    )
}

#[tokio::test]
async fn a_push_is_encrypted_signed_and_opened_by_the_browser() {
    let service = FakePushService::start().await.unwrap();
    let sub = service.subscribe().unwrap();
    let push = notifier(Duration::from_secs(5));
    let n = chat(&sub);
    assert!(push.can_reach(&n));
    assert_eq!(push.address_kind(&n), Some(AddressKind::WebPush));
    let receipt = push.send(&n).await.unwrap();
    assert!(service.rejected().is_empty(), "{:?}", service.rejected());
    let got = service.received();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].subscription, id_of(&sub));
    assert_eq!(got[0].payload["title"], "💬 Alice dans Test");
    assert_eq!(got[0].payload["body"], "Salut Bob !");
    assert_eq!(got[0].payload["url"], "mesh://room/r1");
    assert_eq!(got[0].urgency, "normal");
    assert_eq!(got[0].topic.as_deref(), Some("room-r1"), "one per room");
    assert_eq!(got[0].ttl, 3600);
    assert_eq!(got[0].subject, SUBJECT);
    assert_eq!(got[0].vapid_key, push.public_key());
    assert!(receipt.message_id.unwrap().starts_with("/message/"));
}

#[tokio::test]
async fn a_call_is_urgent_and_lives_as_long_as_it_rings() {
    let service = FakePushService::start().await.unwrap();
    let sub = service.subscribe().unwrap();
    let composer = Composer::default();
    let call = composer.call("Alice", &Room::new("r1", "Test"), bob(&sub));
    notifier(Duration::from_secs(5)).send(&call).await.unwrap();
    let got = service.received();
    assert_eq!(got[0].urgency, "high");
    assert_eq!(got[0].topic, None, "every call stands alone");
    assert!(got[0].ttl <= composer.call_ttl.as_secs(), "{}", got[0].ttl);
    assert!(
        got[0].ttl + 5 >= composer.call_ttl.as_secs(),
        "{}",
        got[0].ttl
    );
    assert_eq!(got[0].payload["kind"], "call");
}

#[tokio::test]
async fn an_unsubscribed_or_unknown_subscription_is_reported_gone() {
    let service = FakePushService::start().await.unwrap();
    let sub = service.subscribe().unwrap();
    service.unsubscribe(&sub);
    let push = notifier(Duration::from_secs(5));
    let err = push.send(&chat(&sub)).await.unwrap_err();
    assert!(
        matches!(
            err,
            NotifyError::RecipientGone {
                address: AddressKind::WebPush,
                ..
            }
        ),
        "{err:?}"
    );
    let unknown = sub.replace(&id_of(&sub), "nobody");
    let err = push.send(&chat(&unknown)).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::RecipientGone);
}

#[tokio::test]
async fn throttling_is_transient_and_honours_retry_after() {
    let service = FakePushService::start().await.unwrap();
    let sub = service.subscribe().unwrap();
    service.set_mode(Mode::Status(429, Some("20".into())));
    match notifier(Duration::from_secs(5))
        .send(&chat(&sub))
        .await
        .unwrap_err()
    {
        NotifyError::Transient { retry_after, .. } => {
            assert_eq!(retry_after, Some(Duration::from_secs(20)))
        }
        other => panic!("{other:?}"),
    }
    service.set_mode(Mode::Status(503, None));
    let err = notifier(Duration::from_secs(5))
        .send(&chat(&sub))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
}

#[tokio::test]
async fn a_service_that_never_answers_times_out_as_transient() {
    let service = FakePushService::start().await.unwrap();
    let sub = service.subscribe().unwrap();
    service.set_mode(Mode::Hang);
    let err = notifier(Duration::from_millis(200))
        .send(&chat(&sub))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
}

#[tokio::test]
async fn broken_subscriptions_are_never_sent_and_never_quoted() {
    let push = notifier(Duration::from_secs(5));
    for bad in [
        "not json",
        r#"{"endpoint":"https://push.example.net/x","keys":{"p256dh":"!!","auth":"AAAAAAAAAAAAAAAAAAAAAA"}}"#,
        r#"{"endpoint":"https://push.example.net/x","keys":{"p256dh":"BAAA","auth":"AAAAAAAAAAAAAAAAAAAAAA"}}"#,
    ] {
        let err = push.send(&chat(bad)).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Permanent, "{bad}: {err}");
        assert!(!err.to_string().contains("push.example.net"), "{err}");
    }
    let strict = WebPushNotifier::new(
        VapidKey::parse(VAPID).unwrap(),
        SUBJECT,
        Duration::from_secs(60),
        EndpointPolicy {
            https_only: true,
            allow_private_addresses: false,
        },
        Duration::from_secs(5),
    )
    .unwrap();
    let service = FakePushService::start().await.unwrap();
    let sub = service.subscribe().unwrap();
    let err = strict.send(&chat(&sub)).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert!(service.received().is_empty() && service.rejected().is_empty());
}

#[tokio::test]
async fn the_section_builds_from_a_key_file_and_checks_its_keys() {
    let service = FakePushService::start().await.unwrap();
    let sub = service.subscribe().unwrap();
    let dir = std::env::temp_dir().join(format!("webpush-section-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let key_file = dir.join("vapid.key");
    std::fs::write(&key_file, format!("{VAPID}\n")).unwrap();
    let section: WebPushConfig = serde_json::from_value(serde_json::json!({
        "vapid_key_file": key_file,
        "subject": SUBJECT,
        "allow_private_addresses": true,
    }))
    .unwrap();
    let dev = ProviderContext::new(Profile::Development, Duration::from_secs(5), "webpush");
    section.validate(&dev).unwrap();
    assert_eq!(section.secret_files(), std::slice::from_ref(&key_file));
    section
        .build(&dev)
        .unwrap()
        .send(&chat(&sub))
        .await
        .unwrap();
    assert_eq!(service.received().len(), 1);

    let no_key: WebPushConfig =
        serde_json::from_value(serde_json::json!({ "subject": SUBJECT })).unwrap();
    assert_eq!(
        no_key.validate(&dev).unwrap_err().key,
        "providers.webpush.vapid_key_file"
    );
    let bad_subject: WebPushConfig = serde_json::from_value(serde_json::json!({
        "vapid_key": VAPID, "subject": "ops@example.com"
    }))
    .unwrap();
    assert_eq!(
        bad_subject.validate(&dev).unwrap_err().key,
        "providers.webpush.subject"
    );
    let bad_key: WebPushConfig = serde_json::from_value(serde_json::json!({
        "vapid_key": "not-a-key", "subject": SUBJECT
    }))
    .unwrap();
    let Err(issue) = bad_key.build(&dev) else {
        panic!("built with a bad key")
    };
    assert_eq!(issue.key, "providers.webpush.vapid_key");
    std::fs::remove_dir_all(&dir).unwrap();
}
