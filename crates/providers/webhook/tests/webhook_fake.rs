//! The webhook provider against a loopback receiver that verifies Standard
//! Webhooks signatures independently.

use std::time::Duration;

use mesh_notify_core::{
    Address, AddressKind, Composer, ErrorClass, Notification, Notifier, NotifyError, Recipient,
    Room,
};
use mesh_notify_provider_kit::{Profile, ProviderConfig, ProviderContext};
use mesh_notify_testkit::webhook::{Answer, FakeWebhookReceiver};
use mesh_notify_webhook::{SigningKey, WebhookConfig, WebhookNotifier, WebhookPolicy};

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const OTHER: &str = "whsec_c2VjcmV0LXRoYXQtaXMtbG9uZy1lbm91Z2gtMTIz";

/// Tests run on loopback: private addresses allowed.
fn loopback() -> WebhookPolicy {
    WebhookPolicy {
        https_only: false,
        allow_private_addresses: true,
    }
}

fn notifier(default_url: Option<&str>, secret: &str) -> WebhookNotifier {
    WebhookNotifier::new(
        default_url,
        SigningKey::parse(secret).unwrap(),
        loopback(),
        Duration::from_secs(5),
    )
    .unwrap()
}

fn chat_to(url: Option<&str>) -> Notification {
    let mut bob = Recipient::new("bob", "Bob");
    if let Some(u) = url {
        bob = bob.with_address(Address::new(AddressKind::Webhook, u));
    }
    Composer::default().chat("Alice", &Room::new("r1", "Test"), bob, "Salut Bob !")
}

#[tokio::test]
async fn a_signed_delivery_reaches_the_recipients_url() {
    let rx = FakeWebhookReceiver::start(SECRET).await.unwrap();
    let hooks = notifier(None, SECRET);
    let n = chat_to(Some(&format!("{}/hooks/bob", rx.url())));
    assert_eq!(hooks.address_kind(&n), Some(AddressKind::Webhook));
    let receipt = hooks.send(&n).await.unwrap();
    let d = rx.deliveries();
    assert_eq!(d.len(), 1, "{:?}", rx.rejected());
    assert_eq!(d[0].path, "/hooks/bob");
    assert_eq!(d[0].id, format!("msg_{}", n.id.as_uuid().simple()));
    assert_eq!(receipt.message_id.as_deref(), Some(d[0].id.as_str()));
    assert_eq!(d[0].payload["type"], "notification.chat");
    assert_eq!(d[0].payload["data"]["title"], "💬 Alice dans Test");
    assert_eq!(d[0].payload["data"]["body"], "Salut Bob !");
    assert_eq!(d[0].payload["data"]["click_url"], "mesh://room/r1");
}

#[tokio::test]
async fn the_same_notification_keeps_its_webhook_id_on_a_retry() {
    let rx = FakeWebhookReceiver::start(SECRET).await.unwrap();
    let hooks = notifier(Some(&format!("{}/default", rx.url())), SECRET);
    let n = chat_to(None);
    hooks.send(&n).await.unwrap();
    hooks.send(&n).await.unwrap();
    let d = rx.deliveries();
    assert_eq!(d.len(), 2);
    assert_eq!(d[0].path, "/default");
    assert_eq!(d[0].id, d[1].id);
}

#[tokio::test]
async fn a_wrong_secret_is_refused_by_the_receiver_as_a_permanent_failure() {
    let rx = FakeWebhookReceiver::start(SECRET).await.unwrap();
    let hooks = notifier(None, OTHER);
    let err = hooks
        .send(&chat_to(Some(&format!("{}/hooks/bob", rx.url()))))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    assert_eq!(rx.rejected()[0].0, 401);
    assert!(rx.deliveries().is_empty());
}

#[tokio::test]
async fn answers_are_classified_gone_transient_or_permanent() {
    let rx = FakeWebhookReceiver::start(SECRET).await.unwrap();
    let hooks = notifier(Some(&format!("{}/default-gone", rx.url())), SECRET);
    let url = |p: &str| format!("{}{p}", rx.url());
    rx.answer("/gone", Answer::Status(410, None));
    rx.answer("/default-gone", Answer::Status(410, None));
    rx.answer("/busy", Answer::Status(429, Some("12".into())));
    rx.answer("/down", Answer::Status(503, None));
    rx.answer("/bad", Answer::Status(422, None));
    rx.answer("/ok", Answer::Status(200, None));

    let err = hooks.send(&chat_to(Some(&url("/gone")))).await.unwrap_err();
    assert_eq!(
        err,
        NotifyError::RecipientGone {
            address: AddressKind::Webhook,
            reason: err_reason(&err),
        }
    );
    let err = hooks.send(&chat_to(None)).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Misconfigured);
    match hooks.send(&chat_to(Some(&url("/busy")))).await.unwrap_err() {
        NotifyError::Transient { retry_after, .. } => {
            assert_eq!(retry_after, Some(Duration::from_secs(12)))
        }
        other => panic!("{other:?}"),
    }
    let err = hooks.send(&chat_to(Some(&url("/down")))).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
    let err = hooks.send(&chat_to(Some(&url("/bad")))).await.unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent);
    hooks.send(&chat_to(Some(&url("/ok")))).await.unwrap();
}

fn err_reason(e: &NotifyError) -> String {
    match e {
        NotifyError::RecipientGone { reason, .. } => reason.clone(),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn a_receiver_that_never_answers_times_out_as_transient() {
    let rx = FakeWebhookReceiver::start(SECRET).await.unwrap();
    rx.answer("/slow", Answer::Hang);
    let hooks = WebhookNotifier::new(
        None,
        SigningKey::parse(SECRET).unwrap(),
        loopback(),
        Duration::from_millis(200),
    )
    .unwrap();
    let err = hooks
        .send(&chat_to(Some(&format!("{}/slow", rx.url()))))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
}

#[tokio::test]
async fn recipients_cannot_point_the_server_at_internal_or_plain_http_urls() {
    let strict = WebhookNotifier::new(
        None,
        SigningKey::parse(SECRET).unwrap(),
        WebhookPolicy {
            https_only: true,
            allow_private_addresses: false,
        },
        Duration::from_secs(5),
    )
    .unwrap();
    for url in [
        "https://127.0.0.1:9090/admin?token=abc",
        "https://169.254.169.254/latest/meta-data",
        "http://hooks.example.com/x",
        "not a url",
    ] {
        let err = strict.send(&chat_to(Some(url))).await.unwrap_err();
        assert_eq!(err.class(), ErrorClass::Permanent, "{url}: {err}");
        assert!(!err.to_string().contains("token=abc"), "{err}");
    }
}

#[tokio::test]
async fn the_section_builds_from_a_secret_file_and_follows_the_profile() {
    let rx = FakeWebhookReceiver::start(SECRET).await.unwrap();
    let dir = std::env::temp_dir().join(format!("webhook-section-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("secret");
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let section: WebhookConfig = serde_json::from_value(serde_json::json!({
        "url": format!("{}/default", rx.url()),
        "secret_file": file,
    }))
    .unwrap();
    let dev = ProviderContext::new(Profile::Development, Duration::from_secs(5), "webhook");
    section.validate(&dev).unwrap();
    assert_eq!(section.secret_files(), std::slice::from_ref(&file));
    let notifier = section.build(&dev).unwrap();
    notifier.send(&chat_to(None)).await.unwrap();
    assert_eq!(rx.deliveries().len(), 1);
    assert!(
        !notifier.describe().contains("/default"),
        "{}",
        notifier.describe()
    );

    let prod = ProviderContext::new(Profile::Production, Duration::from_secs(5), "webhook");
    assert_eq!(
        section.validate(&prod).unwrap_err().key,
        "providers.webhook.url"
    );
    let no_secret: WebhookConfig = serde_json::from_value(serde_json::json!({})).unwrap();
    assert_eq!(
        no_secret.validate(&dev).unwrap_err().key,
        "providers.webhook.secret"
    );
    let bad: WebhookConfig =
        serde_json::from_value(serde_json::json!({ "secret": "whsec_short" })).unwrap();
    let issue = bad.validate(&dev).unwrap_err();
    assert_eq!(issue.key, "providers.webhook.secret");
    assert!(!issue.message.contains("short"), "{}", issue.message);
    std::fs::remove_dir_all(&dir).unwrap();
}
