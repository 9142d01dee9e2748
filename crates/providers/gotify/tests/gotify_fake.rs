//! The Gotify provider against the loopback fake Gotify (testkit), which follows
//! shared/specs/gotify-openapi.json.

use std::time::Duration;

use mesh_notify_core::{
    Address, AddressKind, Composer, ErrorClass, Health, Kind, Notification, Notifier, NotifyError,
    Recipient, Room, Secret,
};
use mesh_notify_gotify::{
    classify_status, message_body, GotifyConfig, GotifyConfigError, GotifyNotifier,
};
use mesh_notify_testkit::gotify::{FakeGotify, Mode, TokenSource};
use reqwest::StatusCode;

const APP_TOKEN: &str = "AGlobalAppTok1";
const USER_TOKEN: &str = "ABobsOwnTok2";

fn chat_for(recipient: Recipient) -> mesh_notify_core::Notification {
    Composer::default().chat(
        "Alice",
        &Room::new("room-1", "Test Gotify"),
        recipient,
        "Salut Bob, tu es là ?",
    )
}

fn notifier(fake: &FakeGotify, token: Option<&str>, timeout: Duration) -> GotifyNotifier {
    GotifyNotifier::new(&fake.url(), token.map(Secret::new), timeout).unwrap()
}

#[tokio::test]
async fn delivers_with_header_auth_priority_and_extras() {
    let fake = FakeGotify::start(&[(APP_TOKEN, 7)]).await.unwrap();
    let gotify = notifier(&fake, Some(APP_TOKEN), Duration::from_secs(5));
    let n = chat_for(Recipient::new("bob", "Bob"));
    let receipt = gotify.send(&n).await.unwrap();

    let got = fake.messages();
    assert_eq!(got.len(), 1);
    let m = &got[0];
    assert_eq!(receipt.provider, "gotify");
    assert_eq!(
        receipt.message_id.as_deref(),
        Some(m.id.to_string().as_str())
    );
    assert_eq!(
        m.token_source,
        TokenSource::Header,
        "token must travel in X-Gotify-Key"
    );
    assert_eq!(m.appid, 7);
    assert_eq!(m.title, "💬 Alice dans Test Gotify");
    assert_eq!(m.message, "Salut Bob, tu es là ?");
    assert_eq!(m.priority, Some(6));
    assert!(m.headers["content-type"].starts_with("application/json"));
    assert_eq!(
        m.extras["client::notification"]["click"]["url"],
        "mesh://room/room-1"
    );
    assert!(
        m.extras.get("android::action").is_none(),
        "a chat message must not open the app on receipt: {}",
        m.extras
    );
    assert_eq!(m.extras["client::display"]["contentType"], "text/plain");
    assert_eq!(m.extras["mesh::notification"]["id"], n.id.to_string());
}

#[tokio::test]
async fn markdown_sets_the_content_type() {
    let fake = FakeGotify::start(&[(APP_TOKEN, 1)]).await.unwrap();
    let gotify = notifier(&fake, Some(APP_TOKEN), Duration::from_secs(5));
    let composer = Composer {
        markdown: true,
        ..Composer::default()
    };
    let n = composer.file(
        "Alice",
        &Room::new("r", "R"),
        Recipient::new("b", "B"),
        "a.pdf",
    );
    gotify.send(&n).await.unwrap();
    assert_eq!(
        fake.messages()[0].extras["client::display"]["contentType"],
        "text/markdown"
    );
    assert_eq!(fake.messages()[0].priority, Some(5));
}

#[tokio::test]
async fn recipient_token_overrides_the_default() {
    let fake = FakeGotify::start(&[(APP_TOKEN, 1), (USER_TOKEN, 2)])
        .await
        .unwrap();
    let gotify = notifier(&fake, Some(APP_TOKEN), Duration::from_secs(5));
    let bob =
        Recipient::new("bob", "Bob").with_address(Address::new(AddressKind::Gotify, USER_TOKEN));
    gotify.send(&chat_for(bob)).await.unwrap();
    assert_eq!(fake.messages()[0].appid, 2);
    assert_eq!(fake.messages()[0].token, USER_TOKEN);
}

#[tokio::test]
async fn base_url_path_prefix_is_kept() {
    let fake = FakeGotify::start(&[(APP_TOKEN, 1)]).await.unwrap();
    // No prefix route exists on the fake, so a prefixed URL must 404 -> permanent,
    // proving the prefix was not dropped.
    let gotify = GotifyNotifier::new(
        &format!("{}/gotify", fake.url()),
        Some(Secret::new(APP_TOKEN)),
        Duration::from_secs(5),
    )
    .unwrap();
    let err = gotify
        .send(&chat_for(Recipient::new("b", "B")))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    assert!(err.to_string().contains("404"), "{err}");
}

#[tokio::test]
async fn a_refused_default_token_is_misconfigured_and_never_printed() {
    let fake = FakeGotify::start(&[(APP_TOKEN, 1)]).await.unwrap();
    let gotify = notifier(&fake, Some("WrongTok999"), Duration::from_secs(5));
    let err = gotify
        .send(&chat_for(Recipient::new("b", "B")))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Misconfigured, "{err}");
    assert!(err.to_string().contains("401"), "{err}");
    assert!(!err.to_string().contains("WrongTok999"));
    assert!(!format!("{err:?}").contains("WrongTok999"));
    assert!(!format!("{gotify:?}").contains("WrongTok999"));
    assert!(fake.messages().is_empty());
}

#[tokio::test]
async fn a_refused_recipient_token_means_the_recipient_is_gone() {
    let fake = FakeGotify::start(&[(APP_TOKEN, 1)]).await.unwrap();
    let gotify = notifier(&fake, Some(APP_TOKEN), Duration::from_secs(5));
    let bob =
        Recipient::new("bob", "Bob").with_address(Address::new(AddressKind::Gotify, "DeletedTok"));
    let err = gotify.send(&chat_for(bob)).await.unwrap_err();
    assert!(
        matches!(
            err,
            NotifyError::RecipientGone {
                address: AddressKind::Gotify,
                ..
            }
        ),
        "{err:?}"
    );
}

#[tokio::test]
async fn server_errors_are_transient_and_honour_retry_after() {
    let fake = FakeGotify::start(&[(APP_TOKEN, 1)]).await.unwrap();
    let gotify = notifier(&fake, Some(APP_TOKEN), Duration::from_secs(5));
    fake.set_mode(Mode::Status {
        status: 503,
        retry_after: Some("7".into()),
    });
    let err = gotify
        .send(&chat_for(Recipient::new("b", "B")))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
    assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));

    fake.set_mode(Mode::Status {
        status: 500,
        retry_after: None,
    });
    let err = gotify
        .send(&chat_for(Recipient::new("b", "B")))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
    assert_eq!(err.retry_after(), None);

    fake.set_mode(Mode::Status {
        status: 400,
        retry_after: None,
    });
    let err = gotify
        .send(&chat_for(Recipient::new("b", "B")))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Permanent);
}

#[tokio::test]
async fn a_hung_server_times_out_as_transient() {
    let fake = FakeGotify::start(&[(APP_TOKEN, 1)]).await.unwrap();
    fake.set_mode(Mode::Hang);
    let gotify = notifier(&fake, Some(APP_TOKEN), Duration::from_millis(200));
    let err = gotify
        .send(&chat_for(Recipient::new("b", "B")))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    assert!(err.to_string().contains("did not answer"), "{err}");
}

#[tokio::test]
async fn refused_connections_are_transient_and_health_says_so() {
    let mut fake = FakeGotify::start(&[(APP_TOKEN, 1)]).await.unwrap();
    let gotify = notifier(&fake, Some(APP_TOKEN), Duration::from_secs(2));
    assert_eq!(gotify.health().await, Health::Healthy);
    fake.stop();
    tokio::time::sleep(Duration::from_millis(50)).await;
    let err = gotify
        .send(&chat_for(Recipient::new("b", "B")))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient, "{err}");
    assert!(err.to_string().contains("cannot connect"), "{err}");
    assert!(matches!(gotify.health().await, Health::Unhealthy(_)));
    fake.restart().await.unwrap();
    gotify
        .send(&chat_for(Recipient::new("b", "B")))
        .await
        .unwrap();
}

#[tokio::test]
async fn without_any_token_the_recipient_is_unreachable() {
    let fake = FakeGotify::start(&[(APP_TOKEN, 1)]).await.unwrap();
    let gotify = notifier(&fake, None, Duration::from_secs(5));
    let n = chat_for(Recipient::new("b", "B"));
    assert!(!gotify.can_reach(&n));
    assert_eq!(
        gotify.send(&n).await.unwrap_err().class(),
        ErrorClass::Unreachable
    );
    assert_eq!(fake.requests(), 0);
}

#[tokio::test]
async fn an_empty_body_is_replaced_by_the_title() {
    let fake = FakeGotify::start(&[(APP_TOKEN, 1)]).await.unwrap();
    let gotify = notifier(&fake, Some(APP_TOKEN), Duration::from_secs(5));
    let n = Composer::default().system(Recipient::new("b", "B"), "Disk full", "");
    gotify.send(&n).await.unwrap();
    assert_eq!(fake.messages()[0].message, "Disk full");
    assert_eq!(fake.messages()[0].priority, Some(7));
}

#[test]
fn status_classification_table() {
    let body = r#"{"error":"Bad Request","errorCode":400,"errorDescription":"Field 'message' is required"}"#;
    let e = classify_status(StatusCode::BAD_REQUEST, None, body, false);
    assert_eq!(e.class(), ErrorClass::Permanent);
    assert!(e.to_string().contains("Field 'message' is required"));
    assert_eq!(
        classify_status(StatusCode::FORBIDDEN, None, "", false).class(),
        ErrorClass::Misconfigured
    );
    assert_eq!(
        classify_status(StatusCode::PAYLOAD_TOO_LARGE, None, "", false).class(),
        ErrorClass::Permanent
    );
    assert_eq!(
        classify_status(StatusCode::TOO_MANY_REQUESTS, Some("3"), "", false).retry_after(),
        Some(Duration::from_secs(3))
    );
    assert_eq!(
        classify_status(StatusCode::BAD_GATEWAY, None, "", false).class(),
        ErrorClass::Transient
    );
}

#[test]
fn config_rejects_bad_urls_and_reads_token_files() {
    let bad = |u: &str| {
        GotifyNotifier::new(u, None, Duration::from_secs(1))
            .unwrap_err()
            .to_string()
    };
    assert!(bad("ftp://x").contains("scheme"));
    assert!(bad("not a url").contains("invalid Gotify url"));
    assert!(bad("https://user:pw@h").contains("credentials"));
    assert!(bad("https://h/?token=abc").contains("query"));

    let dir = std::env::temp_dir().join(format!("gotify-token-{}", std::process::id()));
    std::fs::write(&dir, "FileTok42\n").unwrap();
    let cfg = GotifyConfig {
        url: "https://h".into(),
        token: None,
        token_file: Some(dir.clone()),
        timeout: None,
        allow_insecure_http: false,
        open_on_receive: None,
    };
    assert_eq!(cfg.resolve_token().unwrap().unwrap().expose(), "FileTok42");
    std::fs::remove_file(&dir).unwrap();
    let err = cfg.resolve_token().unwrap_err().to_string();
    assert!(err.contains(&dir.display().to_string()), "{err}");
}

/// One notification of each kind, all with the click target `mesh://room/room-1`.
fn one_of_each_kind() -> Vec<Notification> {
    let c = Composer::default();
    let room = Room::new("room-1", "Test Gotify");
    let b = || Recipient::new("b", "B");
    let mut system = c.system(b(), "Disk full", "95 %");
    system.click_url = Some("mesh://room/room-1".into());
    vec![
        c.chat("Alice", &room, b(), "Salut"),
        c.call("Alice", &room, b()),
        c.file("Alice", &room, b(), "photo.jpg"),
        system,
    ]
}

/// Sends one notification of each kind; returns (kind, extras) as received.
async fn extras_per_kind(
    gotify: &GotifyNotifier,
    fake: &FakeGotify,
) -> Vec<(Kind, serde_json::Value)> {
    let sent = one_of_each_kind();
    for n in &sent {
        gotify.send(n).await.unwrap();
    }
    let got = fake.messages();
    assert_eq!(got.len(), sent.len());
    sent.iter()
        .zip(got)
        .map(|(n, m)| {
            assert_eq!(m.extras["mesh::notification"]["id"], n.id.to_string());
            (n.kind, m.extras)
        })
        .collect()
}

fn opens_on_receive(extras: &serde_json::Value) -> bool {
    match extras.get("android::action") {
        None => false,
        Some(action) => {
            assert_eq!(action["onReceive"]["intentUrl"], "mesh://room/room-1");
            true
        }
    }
}

#[tokio::test]
async fn by_default_only_calls_open_the_app_on_receipt_and_every_kind_opens_on_tap() {
    let fake = FakeGotify::start(&[(APP_TOKEN, 1)]).await.unwrap();
    let gotify = notifier(&fake, Some(APP_TOKEN), Duration::from_secs(5));
    assert_eq!(gotify.open_on_receive(), &[Kind::Call]);
    for (kind, extras) in extras_per_kind(&gotify, &fake).await {
        assert_eq!(
            opens_on_receive(&extras),
            kind == Kind::Call,
            "{kind}: {extras}"
        );
        assert_eq!(
            extras["client::notification"]["click"]["url"], "mesh://room/room-1",
            "{kind}: {extras}"
        );
        assert_eq!(extras["mesh::notification"]["kind"], kind.as_str());
        assert_eq!(extras["client::display"]["contentType"], "text/plain");
    }
    assert!(gotify.describe().contains("open_on_receive=[call]"));
}

fn config(fake: &FakeGotify, open_on_receive: serde_json::Value) -> GotifyConfig {
    serde_json::from_value(serde_json::json!({
        "url": fake.url(),
        "token": APP_TOKEN,
        "open_on_receive": open_on_receive,
    }))
    .unwrap()
}

#[tokio::test]
async fn open_on_receive_is_configurable_per_kind() {
    let fake = FakeGotify::start(&[(APP_TOKEN, 1)]).await.unwrap();
    let gotify = config(&fake, serde_json::json!(["chat", "file", "chat"]))
        .build(Duration::from_secs(5))
        .unwrap();
    for (kind, extras) in extras_per_kind(&gotify, &fake).await {
        let expected = matches!(kind, Kind::Chat | Kind::File);
        assert_eq!(opens_on_receive(&extras), expected, "{kind}: {extras}");
        assert!(extras["client::notification"]["click"]["url"].is_string());
    }
}

#[tokio::test]
async fn an_empty_open_on_receive_never_opens_the_app_and_unset_means_calls() {
    let fake = FakeGotify::start(&[(APP_TOKEN, 1)]).await.unwrap();
    let none = config(&fake, serde_json::json!([]))
        .build(Duration::from_secs(5))
        .unwrap();
    for (kind, extras) in extras_per_kind(&none, &fake).await {
        assert!(!opens_on_receive(&extras), "{kind}: {extras}");
        assert!(extras["client::notification"]["click"]["url"].is_string());
    }

    let unset: GotifyConfig = serde_json::from_value(serde_json::json!({
        "url": fake.url(),
        "token": APP_TOKEN,
    }))
    .unwrap();
    assert_eq!(unset.open_on_receive_kinds().unwrap(), vec![Kind::Call]);
    assert_eq!(
        unset
            .build(Duration::from_secs(5))
            .unwrap()
            .open_on_receive(),
        &[Kind::Call]
    );
}

#[test]
fn the_default_message_body_matches_the_default_notifier() {
    for n in one_of_each_kind() {
        let body = message_body(&n);
        assert_eq!(
            body["extras"].get("android::action").is_some(),
            n.kind == Kind::Call,
            "{body}"
        );
    }
}

#[tokio::test]
async fn an_unknown_kind_in_open_on_receive_is_a_clear_error_naming_the_key() {
    let fake = FakeGotify::start(&[(APP_TOKEN, 1)]).await.unwrap();
    for bad in ["chta", "Call", "calls", ""] {
        let err = config(&fake, serde_json::json!(["call", bad]))
            .build(Duration::from_secs(5))
            .unwrap_err();
        assert!(
            matches!(err, GotifyConfigError::InvalidField { .. }),
            "{err:?}"
        );
        let text = err.to_string();
        assert!(
            text.starts_with("invalid providers.gotify.open_on_receive"),
            "{text}"
        );
        assert!(text.contains(&format!("`{bad}`")), "{text}");
        assert!(text.contains("chat, call, file, system"), "{text}");
    }
    // Not a list of strings: serde names the field.
    let err = serde_json::from_value::<GotifyConfig>(serde_json::json!({
        "url": fake.url(), "open_on_receive": "call",
    }))
    .unwrap_err();
    assert!(err.to_string().contains("sequence"), "{err}");
}

#[tokio::test]
async fn a_recipient_token_that_cannot_go_in_a_header_is_permanent_and_not_sent() {
    let fake = FakeGotify::start(&[(APP_TOKEN, 1)]).await.unwrap();
    let gotify = notifier(&fake, Some(APP_TOKEN), Duration::from_secs(5));
    for bad in ["Tok\r\nX-Injected: 1", "Tok\u{7f}", "Tokén"] {
        let bob = Recipient::new("bob", "Bob").with_address(Address::new(AddressKind::Gotify, bad));
        let err = gotify.send(&chat_for(bob)).await.unwrap_err();
        assert!(matches!(err, NotifyError::Permanent { .. }), "{err:?}");
        assert!(err.to_string().contains("X-Gotify-Key"), "{err}");
        assert!(!err.to_string().contains("Tok"), "{err}");
    }
    assert_eq!(fake.requests(), 0);
}

#[test]
fn a_default_token_that_cannot_go_in_a_header_is_a_config_error() {
    let err = GotifyNotifier::new(
        "https://h",
        Some(Secret::new("Secret\nTok")),
        Duration::from_secs(1),
    )
    .unwrap_err();
    let text = err.to_string();
    assert!(text.starts_with("invalid providers.gotify.token"), "{text}");
    assert!(!text.contains("Secret"), "{text}");
}

#[test]
fn timeouts_out_of_range_are_refused_without_panicking() {
    let cfg: GotifyConfig =
        serde_json::from_value(serde_json::json!({"url": "https://h"})).unwrap();
    let err = cfg.build(Duration::MAX).unwrap_err().to_string();
    assert!(err.starts_with("invalid timeout (used by Gotify"), "{err}");
    let err = cfg.build(Duration::ZERO).unwrap_err().to_string();
    assert!(err.starts_with("invalid timeout"), "{err}");
    let mut own = cfg.clone();
    own.timeout = Some(Duration::MAX);
    let err = own.build(Duration::from_secs(5)).unwrap_err().to_string();
    assert!(err.starts_with("invalid providers.gotify.timeout"), "{err}");
    assert!(GotifyNotifier::new("https://h", None, Duration::ZERO).is_err());
    cfg.build(Duration::from_secs(3600)).unwrap();
}
