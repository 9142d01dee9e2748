//! ntfy, signed webhooks and Web Push, configured from a file like any provider:
//! usable in routes (here as one group step), each against its loopback fake.
#![allow(clippy::result_large_err)] // figment::Jail closures return figment::Error

use figment::providers::{Format, Toml};
use figment::Jail;
use mesh_notify::Config;
use mesh_notify_core::{Address, AddressKind, Composer, Recipient, Room};
use mesh_notify_testkit::ntfy::FakeNtfy;
use mesh_notify_testkit::webhook::FakeWebhookReceiver;
use mesh_notify_testkit::webpush::FakePushService;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
const VAPID: &str = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw";

#[tokio::test]
async fn the_new_providers_deliver_through_a_route_configured_in_a_file() {
    let ntfy = FakeNtfy::start().await.unwrap();
    let hooks = FakeWebhookReceiver::start(SECRET).await.unwrap();
    let push = FakePushService::start().await.unwrap();
    let subscription = push.subscribe().unwrap();
    let toml = format!(
        r#"
        [outbox]
        backend = "none"
        [providers.log]
        enabled = false
        [providers.ntfy]
        url = "{}"
        [providers.webhook]
        secret = "{SECRET}"
        allow_private_addresses = true
        [providers.webpush]
        vapid_key = "{VAPID}"
        subject = "mailto:ops@example.com"
        allow_private_addresses = true
        [routes]
        chat = ["ntfy+webhook+webpush"]
        "#,
        ntfy.url()
    );
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("mesh.toml");
    std::fs::write(&path, &toml).unwrap();
    // The file alone (no environment), as `Config::load` reads it.
    let figment = mesh_notify::Figment::new().merge(Toml::file_exact(&path));
    let config = Config::from_figment(&figment).unwrap();
    let dispatcher = config.build_dispatcher(&figment).await.unwrap();
    let names: Vec<String> = dispatcher
        .providers()
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    assert_eq!(names, ["ntfy", "webhook", "webpush"]);

    let bob = Recipient::new("bob", "Bob")
        .with_address(Address::new(AddressKind::Ntfy, "bob-topic"))
        .with_address(Address::new(
            AddressKind::Webhook,
            format!("{}/hooks/bob", hooks.url()),
        ))
        .with_address(Address::new(AddressKind::WebPush, subscription));
    let n = Composer::default().chat("Alice", &Room::new("r1", "Test"), bob, "Salut");
    let outcome = dispatcher.dispatch(n).await;
    assert!(outcome.delivered.is_some(), "{outcome:?}");
    assert_eq!(ntfy.published().len(), 1);
    assert_eq!(ntfy.published()[0].topic, "bob-topic");
    assert_eq!(hooks.deliveries().len(), 1, "{:?}", hooks.rejected());
    assert_eq!(push.received().len(), 1, "{:?}", push.rejected());
    assert_eq!(push.received()[0].payload["body"], "Salut");
}

#[test]
fn their_secrets_are_watched_and_their_mistakes_name_key_and_file() {
    Jail::expect_with(|jail| {
        jail.create_file(
            "s.toml",
            r#"
            [providers.ntfy]
            token_file = "/run/secrets/ntfy"
            [providers.webhook]
            secret_file = "/run/secrets/webhook"
            [providers.webpush]
            vapid_key_file = "/run/secrets/vapid.pem"
            subject = "mailto:ops@example.com"
            "#,
        )?;
        let (config, _) = Config::load(Some(std::path::Path::new("s.toml"))).unwrap();
        let files: Vec<String> = config
            .secret_files()
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        assert_eq!(
            files,
            [
                "/run/secrets/ntfy",
                "/run/secrets/webhook",
                "/run/secrets/vapid.pem"
            ]
        );
        jail.create_file(
            "bad.toml",
            "profile = \"production\"\n[providers.ntfy]\nurl = \"http://ntfy.lan\"\n",
        )?;
        let err = Config::load(Some(std::path::Path::new("bad.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("providers.ntfy.url"), "{err}");
        assert!(err.contains("bad.toml"), "{err}");
        jail.create_file("hook.toml", "[providers.webhook]\nurl = \"https://x\"\n")?;
        let err = Config::load(Some(std::path::Path::new("hook.toml")))
            .unwrap_err()
            .to_string();
        assert!(err.contains("providers.webhook.secret"), "{err}");
        Ok(())
    });
}
