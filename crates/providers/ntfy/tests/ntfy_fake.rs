//! The ntfy provider against a loopback fake that follows ntfy's publish API.

use std::time::Duration;

use mesh_notify_core::{
    Address, AddressKind, Composer, ErrorClass, Health, Notification, Notifier, NotifyError,
    Recipient, Room, Secret,
};
use mesh_notify_ntfy::{NtfyConfig, NtfyNotifier};
use mesh_notify_provider_kit::{Profile, ProviderConfig, ProviderContext};
use mesh_notify_testkit::ntfy::{FakeNtfy, Mode};

const TOKEN: &str = "tk_mesh0123456789";

fn chat_to(topic: Option<&str>) -> Notification {
    let mut bob = Recipient::new("bob", "Bob");
    if let Some(t) = topic {
        bob = bob.with_address(Address::new(AddressKind::Ntfy, t));
    }
    Composer::default().chat("Alice", &Room::new("r1", "Test"), bob, "Salut Bob !")
}

fn notifier(fake: &FakeNtfy, topic: Option<&str>, token: Option<&str>) -> NtfyNotifier {
    NtfyNotifier::new(
        &fake.url(),
        topic.map(Secret::new),
        token.map(Secret::new),
        Duration::from_secs(5),
    )
    .unwrap()
}

#[tokio::test]
async fn publishes_to_the_recipients_topic_with_the_token() {
    let fake = FakeNtfy::with_tokens(&[(TOKEN, &["bob-topic"])])
        .await
        .unwrap();
    let ntfy = notifier(&fake, None, Some(TOKEN));
    let n = chat_to(Some("bob-topic"));
    assert!(ntfy.can_reach(&n));
    assert_eq!(ntfy.address_kind(&n), Some(AddressKind::Ntfy));
    let receipt = ntfy.send(&n).await.unwrap();
    let published = fake.published();
    assert_eq!(published.len(), 1);
    let p = &published[0];
    assert_eq!(receipt.message_id.as_deref(), Some(p.id.as_str()));
    assert_eq!(p.topic, "bob-topic");
    assert_eq!(p.title, "💬 Alice dans Test");
    assert_eq!(p.message, "Salut Bob !");
    assert_eq!(p.priority, Some(4));
    assert_eq!(p.tags, ["mesh", "chat"]);
    assert_eq!(p.click, "mesh://room/r1");
    assert!(!p.markdown);
    assert_eq!(p.token.as_deref(), Some(TOKEN));
    assert_eq!(
        p.headers.get("content-type").map(String::as_str),
        Some("application/json")
    );
}

#[tokio::test]
async fn a_call_is_published_at_max_priority_and_markdown_is_flagged() {
    let fake = FakeNtfy::start().await.unwrap();
    let ntfy = notifier(&fake, None, None);
    let bob = Recipient::new("bob", "Bob").with_address(Address::new(AddressKind::Ntfy, "bob"));
    let call = Composer::default().call("Alice", &Room::new("r1", "Test"), bob.clone());
    ntfy.send(&call).await.unwrap();
    let mut md = chat_to(Some("bob"));
    md.format = mesh_notify_core::BodyFormat::Markdown;
    ntfy.send(&md).await.unwrap();
    let published = fake.published();
    assert_eq!(published[0].priority, Some(5));
    assert_eq!(published[0].tags, ["mesh", "call"]);
    assert!(published[1].markdown);
}

#[tokio::test]
async fn the_default_topic_serves_recipients_without_one() {
    let fake = FakeNtfy::start().await.unwrap();
    let with_default = notifier(&fake, Some("mesh-alerts"), None);
    let n = chat_to(None);
    assert!(with_default.can_reach(&n));
    assert_eq!(with_default.address_kind(&n), None);
    with_default.send(&n).await.unwrap();
    assert_eq!(fake.published()[0].topic, "mesh-alerts");

    let without = notifier(&fake, None, None);
    assert!(!without.can_reach(&n));
    let err = without.send(&n).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Unreachable);
}

#[tokio::test]
async fn a_refused_token_is_a_misconfiguration_and_a_forbidden_own_topic_is_permanent() {
    let fake = FakeNtfy::with_tokens(&[(TOKEN, &["bob-topic"])])
        .await
        .unwrap();
    let wrong = notifier(&fake, None, Some("tk_wrong"));
    let err = wrong.send(&chat_to(Some("bob-topic"))).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Misconfigured, "{err}");
    assert!(err.to_string().contains("40101"), "{err}");
    assert!(!err.to_string().contains("tk_wrong"), "{err}");

    let right = notifier(&fake, Some("other"), Some(TOKEN));
    let err = right.send(&chat_to(Some("eve-topic"))).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    let err = right.send(&chat_to(None)).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Misconfigured, "{err}");
    assert!(fake.published().is_empty());
}

#[tokio::test]
async fn rate_limits_and_server_errors_are_transient() {
    let fake = FakeNtfy::start().await.unwrap();
    let ntfy = notifier(&fake, None, None);
    fake.set_mode(Mode::Error {
        status: 429,
        code: 42901,
        retry_after: Some("30".into()),
    });
    match ntfy.send(&chat_to(Some("bob"))).await.unwrap_err() {
        NotifyError::Transient {
            reason,
            retry_after,
        } => {
            assert_eq!(retry_after, Some(Duration::from_secs(30)));
            assert!(reason.contains("42901"), "{reason}");
        }
        other => panic!("{other:?}"),
    }
    fake.set_mode(Mode::Error {
        status: 429,
        code: 42909,
        retry_after: None,
    });
    let err = ntfy.send(&chat_to(Some("bob"))).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Misconfigured);
    fake.set_mode(Mode::Error {
        status: 500,
        code: 50001,
        retry_after: None,
    });
    let err = ntfy.send(&chat_to(Some("bob"))).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
}

#[tokio::test]
async fn a_server_that_never_answers_times_out_as_transient() {
    let fake = FakeNtfy::start().await.unwrap();
    fake.set_mode(Mode::Hang);
    let ntfy = NtfyNotifier::new(&fake.url(), None, None, Duration::from_millis(200)).unwrap();
    let err = ntfy.send(&chat_to(Some("bob"))).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
    assert!(err.to_string().contains("did not answer"), "{err}");
}

#[tokio::test]
async fn an_invalid_topic_is_never_sent_and_never_reported_gone() {
    let fake = FakeNtfy::start().await.unwrap();
    let ntfy = notifier(&fake, None, None);
    let err = ntfy.send(&chat_to(Some("not/a topic"))).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert!(!err.to_string().contains("not/a topic"), "{err}");
    assert_eq!(fake.requests(), 0);
}

#[tokio::test]
async fn health_follows_the_server() {
    let mut fake = FakeNtfy::start().await.unwrap();
    let ntfy = notifier(&fake, None, None);
    assert_eq!(ntfy.health().await, Health::Healthy);
    fake.stop();
    assert!(matches!(ntfy.health().await, Health::Unhealthy(_)));
}

#[tokio::test]
async fn the_section_builds_a_working_notifier_and_follows_the_profile() {
    let fake = FakeNtfy::start().await.unwrap();
    let dir = std::env::temp_dir().join(format!("ntfy-section-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let token_file = dir.join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n")).unwrap();
    let section: NtfyConfig = serde_json::from_value(serde_json::json!({
        "url": fake.url(),
        "token_file": token_file,
    }))
    .unwrap();
    let dev = ProviderContext::new(Profile::Development, Duration::from_secs(5), "ntfy");
    section.validate(&dev).unwrap();
    assert_eq!(section.secret_files(), std::slice::from_ref(&token_file));
    let notifier = section.build(&dev).unwrap();
    notifier.send(&chat_to(Some("bob"))).await.unwrap();
    assert_eq!(fake.published()[0].token.as_deref(), Some(TOKEN));

    let prod = ProviderContext::new(Profile::Production, Duration::from_secs(5), "ntfy");
    let issue = section.validate(&prod).unwrap_err();
    assert_eq!(issue.key, "providers.ntfy.url");
    assert!(issue.message.contains("allow_insecure_http"));
    let default: NtfyConfig = serde_json::from_value(serde_json::json!({})).unwrap();
    assert_eq!(default.url, "https://ntfy.sh");
    default.validate(&prod).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
}
