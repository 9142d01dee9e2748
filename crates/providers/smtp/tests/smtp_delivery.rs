//! The SMTP provider against a real SMTP server (aiosmtpd, tests/smtp_server.py),
//! with every received message parsed by mail-parser, independently of lettre.

mod common;

use std::io::Write;
use std::time::Duration;

use common::{closed_port, SmtpServer};
use mail_parser::{MessageParser, PartType};
use mesh_notify_core::{
    Address, AddressKind, Composer, ErrorClass, Health, Notification, Notifier, NotifyError,
    Recipient, Room, Secret,
};
use mesh_notify_smtp::{SmtpConfig, SmtpConfigError, SmtpNotifier, TlsMode};

const FROM: &str = "Mesh <noreply@mesh.test>";

fn config(port: u16) -> SmtpConfig {
    let mut c = SmtpConfig::new("127.0.0.1", FROM);
    c.port = Some(port);
    c.tls = TlsMode::None;
    c.hello_name = Some("mesh-notify.test".into());
    c
}

fn notifier(port: u16) -> SmtpNotifier {
    config(port).build(Duration::from_secs(5)).unwrap()
}

fn bob(email: &str) -> Recipient {
    Recipient::new("bob", "Bob Dupont").with_address(Address::new(AddressKind::Email, email))
}

fn room() -> Room {
    Room::new("room-1", "Test Gotify")
}

fn call_to(email: &str) -> Notification {
    Composer::default().call("Alice", &room(), bob(email))
}

fn header<'a>(msg: &'a mail_parser::Message<'a>, name: &'a str) -> Option<&'a str> {
    msg.header_raw(name).map(str::trim)
}

/// A decoded text part with CRLF line ends made LF and trailing blank lines removed.
fn text(body: &str) -> String {
    body.replace("\r\n", "\n").trim_end().to_string()
}

async fn send_class(port: u16, n: &Notification) -> NotifyError {
    notifier(port)
        .send(n)
        .await
        .expect_err("the server should refuse this message")
}

#[tokio::test]
async fn delivers_one_email_with_subject_body_and_headers() {
    let Some(server) = SmtpServer::start(&[]) else {
        return;
    };
    let smtp = notifier(server.port);
    let n = call_to("bob@example.com");
    let receipt = smtp.send(&n).await.unwrap();

    let expected_id = format!("<{}@mesh-notify>", n.id);
    assert_eq!(receipt.provider, "smtp");
    assert_eq!(receipt.message_id.as_deref(), Some(expected_id.as_str()));

    let got = server.messages();
    assert_eq!(got.len(), 1, "exactly one email");
    let m = &got[0];
    assert_eq!(m.mail_from, "noreply@mesh.test");
    assert_eq!(m.rcpt_tos, ["bob@example.com"]);
    assert!(m.raw.is_ascii(), "headers and body are 7-bit encoded");
    let raw = String::from_utf8_lossy(&m.raw);
    assert!(
        raw.contains("Subject: =?utf-8?"),
        "subject is RFC 2047-encoded:\n{raw}"
    );

    let msg = MessageParser::default().parse(&m.raw).unwrap();
    assert_eq!(msg.subject(), Some("📞 Appel audio/vidéo de Alice"));
    let from = msg.from().and_then(|a| a.first()).unwrap();
    assert_eq!(from.address(), Some("noreply@mesh.test"));
    assert_eq!(from.name(), Some("Mesh"));
    let to = msg.to().and_then(|a| a.first()).unwrap();
    assert_eq!(to.address(), Some("bob@example.com"));
    assert_eq!(to.name(), Some("Bob Dupont"));
    assert_eq!(
        msg.message_id(),
        Some(format!("{}@mesh-notify", n.id).as_str())
    );
    assert_eq!(header(&msg, "Message-ID"), Some(expected_id.as_str()));
    assert_eq!(header(&msg, "Importance"), Some("high"), "call priority 8");
    assert_eq!(header(&msg, "X-Priority"), Some("1"));
    assert_eq!(
        header(&msg, "X-Mesh-Notification-Id"),
        Some(n.id.to_string().as_str())
    );
    assert_eq!(header(&msg, "X-Mesh-Kind"), Some("call"));
    assert_eq!(header(&msg, "Auto-Submitted"), Some("auto-generated"));
    assert!(msg.date().is_some());
    assert!(
        header(&msg, "Content-Type")
            .unwrap()
            .starts_with("text/plain; charset=utf-8"),
        "{:?}",
        header(&msg, "Content-Type")
    );
    assert_eq!(
        text(&msg.body_text(0).unwrap()),
        "Appel entrant dans Test Gotify\n\nmesh://room/room-1"
    );
    assert!(
        !msg.parts
            .iter()
            .any(|p| matches!(p.body, PartType::Html(_))),
        "no HTML part for a plain notification"
    );
}

#[tokio::test]
async fn utf8_bodies_and_priorities_map_to_importance() {
    let Some(server) = SmtpServer::start(&[]) else {
        return;
    };
    let smtp = notifier(server.port);
    let chat = Composer::default().chat(
        "Zoé",
        &room(),
        bob("bob@example.com"),
        "Ça marche 🎉 — à demain !",
    );
    let file = Composer::default().file("Zoé", &room(), bob("bob@example.com"), "rapport.pdf");
    let low = Composer::with_priority(chat.clone(), 2).unwrap();
    for n in [&chat, &file, &low] {
        smtp.send(n).await.unwrap();
    }
    let got = server.messages();
    assert_eq!(got.len(), 3);
    let parsed: Vec<_> = got
        .iter()
        .map(|m| MessageParser::default().parse(&m.raw).unwrap())
        .collect();

    assert_eq!(parsed[0].subject(), Some("💬 Zoé dans Test Gotify"));
    assert_eq!(
        text(&parsed[0].body_text(0).unwrap()),
        "Ça marche 🎉 — à demain !\n\nmesh://room/room-1"
    );
    assert_eq!(
        header(&parsed[0], "Importance"),
        Some("normal"),
        "chat priority 6"
    );
    assert_eq!(header(&parsed[0], "X-Priority"), Some("3"));
    assert_eq!(header(&parsed[0], "X-Mesh-Kind"), Some("chat"));

    assert_eq!(parsed[1].subject(), Some("📁 Zoé a partagé un fichier"));
    assert_eq!(
        text(&parsed[1].body_text(0).unwrap()),
        "Fichier: rapport.pdf\nDans: Test Gotify\n\nmesh://room/room-1"
    );
    assert_eq!(
        header(&parsed[1], "Importance"),
        Some("normal"),
        "file priority 5"
    );

    assert_eq!(header(&parsed[2], "Importance"), Some("low"), "priority 2");
    assert_eq!(header(&parsed[2], "X-Priority"), Some("5"));

    // Sequential sends reuse the pooled connection.
    assert!(got[0].peer_port.is_some());
    assert_eq!(
        got[0].peer_port, got[1].peer_port,
        "the pool reuses its connection"
    );
    assert_eq!(got[1].peer_port, got[2].peer_port);
}

#[tokio::test]
async fn markdown_adds_an_escaped_html_alternative() {
    let Some(server) = SmtpServer::start(&[]) else {
        return;
    };
    let smtp = notifier(server.port);
    let composer = Composer {
        markdown: true,
        ..Composer::default()
    };
    let n = composer.chat(
        "Alice",
        &room(),
        bob("bob@example.com"),
        "**Regarde** *ça* : `x < y` <script>alert('pwned')</script>",
    );
    smtp.send(&n).await.unwrap();

    let got = server.messages();
    let msg = MessageParser::default().parse(&got[0].raw).unwrap();
    assert!(
        header(&msg, "Content-Type")
            .unwrap()
            .starts_with("multipart/alternative"),
        "{:?}",
        header(&msg, "Content-Type")
    );
    let plain: Vec<&str> = msg
        .parts
        .iter()
        .filter_map(|p| match &p.body {
            PartType::Text(t) => Some(t.as_ref()),
            _ => None,
        })
        .collect();
    let html: Vec<&str> = msg
        .parts
        .iter()
        .filter_map(|p| match &p.body {
            PartType::Html(h) => Some(h.as_ref()),
            _ => None,
        })
        .collect();
    assert_eq!(plain.len(), 1);
    assert_eq!(html.len(), 1);
    assert_eq!(
        text(plain[0]),
        "**Regarde** *ça* : `x < y` <script>alert('pwned')</script>\n\nmesh://room/room-1",
        "the plain part keeps the markdown source"
    );
    let html = html[0];
    assert!(
        html.contains(
            "<p><strong>Regarde</strong> <em>ça</em> : <code>x &lt; y</code> &lt;script&gt;alert(&#39;pwned&#39;)&lt;/script&gt;</p>"
        ),
        "{html}"
    );
    assert!(
        !html.contains("<script"),
        "raw HTML must never pass through:\n{html}"
    );
    assert!(
        html.contains("<a href=\"mesh://room/room-1\">mesh://room/room-1</a>"),
        "{html}"
    );
}

#[tokio::test]
async fn temporary_failure_451_is_transient() {
    let Some(server) = SmtpServer::start(&[]) else {
        return;
    };
    let e = send_class(server.port, &call_to("tempfail@example.com")).await;
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
    assert!(e.to_string().contains("451"), "{e}");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn unknown_mailbox_550_at_rcpt_is_recipient_gone() {
    let Some(server) = SmtpServer::start(&[]) else {
        return;
    };
    let e = send_class(server.port, &call_to("nouser@example.com")).await;
    assert!(
        matches!(
            e,
            NotifyError::RecipientGone {
                address: AddressKind::Email,
                ..
            }
        ),
        "{e:?}"
    );
    assert!(e.to_string().contains("5.1.1"), "{e}");
    assert!(
        !e.to_string().contains("nouser@example.com"),
        "no address in errors: {e}"
    );
}

#[tokio::test]
async fn refusal_554_at_data_is_permanent() {
    let Some(server) = SmtpServer::start(&[]) else {
        return;
    };
    let e = send_class(server.port, &call_to("reject-data@example.com")).await;
    assert_eq!(e.class(), ErrorClass::Permanent, "{e}");
    assert!(e.to_string().contains("554"), "{e}");
}

#[tokio::test]
async fn spam_refusal_550_5_7_1_at_data_is_permanent_not_gone() {
    let Some(server) = SmtpServer::start(&[]) else {
        return;
    };
    let e = send_class(server.port, &call_to("spam@example.com")).await;
    assert_eq!(e.class(), ErrorClass::Permanent, "{e}");
}

#[tokio::test]
async fn refused_sender_is_misconfigured() {
    let Some(server) = SmtpServer::start(&[]) else {
        return;
    };
    let mut c = config(server.port);
    c.from = "bad-sender@mesh.test".into();
    let e = c
        .build(Duration::from_secs(5))
        .unwrap()
        .send(&call_to("bob@example.com"))
        .await
        .unwrap_err();
    assert_eq!(e.class(), ErrorClass::Misconfigured, "{e}");
    assert!(e.to_string().contains("`from`"), "{e}");
}

#[tokio::test]
async fn connection_refused_is_transient_and_unhealthy() {
    let port = closed_port();
    let smtp = notifier(port);
    let e = smtp.send(&call_to("bob@example.com")).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
    assert!(matches!(smtp.health().await, Health::Unhealthy(_)));
}

#[tokio::test]
async fn a_silent_server_times_out_as_transient() {
    // Accepts the TCP connection and never sends a greeting.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let holder = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((socket, _)) = listener.accept().await {
            held.push(socket);
        }
    });
    let smtp = config(port).build(Duration::from_millis(300)).unwrap();
    // The step deadline fired (the message says so); no wall-clock assertion.
    let e = smtp.send(&call_to("bob@example.com")).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
    assert!(e.to_string().contains("did not answer within"), "{e}");
    holder.abort();
}

#[tokio::test]
async fn health_is_healthy_against_a_live_server() {
    let Some(server) = SmtpServer::start(&[]) else {
        return;
    };
    assert_eq!(notifier(server.port).health().await, Health::Healthy);
}

fn password_file(password: &str) -> tempfile::NamedTempFile {
    let mut f = tempfile::NamedTempFile::new().unwrap();
    writeln!(f, "  {password}  ").unwrap();
    f
}

#[tokio::test]
async fn authenticates_with_a_password_file() {
    let Some(server) = SmtpServer::start(&["--auth", "mesh:s3cret-pw"]) else {
        return;
    };
    let file = password_file("s3cret-pw");
    let mut c = config(server.port);
    c.username = Some("mesh".into());
    c.password_file = Some(file.path().to_path_buf());
    let smtp = c.build(Duration::from_secs(5)).unwrap();
    assert_eq!(smtp.health().await, Health::Healthy);
    smtp.send(&call_to("bob@example.com")).await.unwrap();
    let got = server.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].auth_login.as_deref(), Some("mesh"));
}

#[tokio::test]
async fn wrong_password_535_is_misconfigured() {
    let Some(server) = SmtpServer::start(&["--auth", "mesh:s3cret-pw"]) else {
        return;
    };
    let mut c = config(server.port);
    c.username = Some("mesh".into());
    c.password = Some(Secret::new("wrong-pw"));
    let smtp = c.build(Duration::from_secs(5)).unwrap();
    let e = smtp.send(&call_to("bob@example.com")).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Misconfigured, "{e}");
    assert!(e.to_string().contains("535"), "{e}");
    assert!(!e.to_string().contains("wrong-pw"), "{e}");
    match smtp.health().await {
        Health::Unhealthy(why) => assert!(why.contains("535"), "{why}"),
        h => panic!("expected unhealthy, got {h:?}"),
    }
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn missing_credentials_530_is_misconfigured() {
    let Some(server) = SmtpServer::start(&["--auth", "mesh:s3cret-pw"]) else {
        return;
    };
    let e = send_class(server.port, &call_to("bob@example.com")).await;
    assert_eq!(e.class(), ErrorClass::Misconfigured, "{e}");
    assert!(e.to_string().contains("530"), "{e}");
}

#[tokio::test]
async fn no_email_address_means_unreachable() {
    let smtp = notifier(closed_port());
    let n = Composer::default().call("Alice", &room(), Recipient::new("bob", "Bob"));
    assert!(!smtp.can_reach(&n));
    let e = smtp.send(&n).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Unreachable);
    let gotify_only =
        Recipient::new("bob", "Bob").with_address(Address::new(AddressKind::Gotify, "tok"));
    assert!(!smtp.can_reach(&Composer::default().call("A", &room(), gotify_only)));
    assert!(smtp.can_reach(&call_to("bob@example.com")));
}

#[tokio::test]
async fn invalid_recipient_address_is_permanent_without_connecting() {
    // Nothing listens on this port: a connection attempt would be transient.
    let smtp = notifier(closed_port());
    for bad in ["not an address", "bob@", "@example.com", "bob@exa mple.com"] {
        let e = smtp.send(&call_to(bad)).await.unwrap_err();
        assert_eq!(e.class(), ErrorClass::Permanent, "{bad}: {e}");
        assert!(!e.to_string().contains(bad), "no address in errors: {e}");
    }
}

#[tokio::test]
async fn non_ascii_address_without_smtputf8_is_permanent() {
    let Some(server) = SmtpServer::start(&[]) else {
        return;
    };
    let e = send_class(server.port, &call_to("zoé@example.com")).await;
    assert_eq!(e.class(), ErrorClass::Permanent, "{e}");
    assert!(e.to_string().contains("SMTPUTF8"), "{e}");
}

#[tokio::test]
async fn non_ascii_address_with_smtputf8_is_delivered() {
    let Some(server) = SmtpServer::start(&["--smtputf8"]) else {
        return;
    };
    notifier(server.port)
        .send(&call_to("zoé@example.com"))
        .await
        .unwrap();
    assert_eq!(server.messages()[0].rcpt_tos, ["zoé@example.com"]);
}

#[test]
fn debug_and_describe_redact_the_password() {
    let mut c = SmtpConfig::new("smtp.example.com", FROM);
    c.username = Some("mesh".into());
    c.password = Some(Secret::new("Sup3rSecretPw"));
    assert!(!format!("{c:?}").contains("Sup3rSecretPw"));
    let smtp = c.build(Duration::from_secs(5)).unwrap();
    let debug = format!("{smtp:?}");
    assert!(!debug.contains("Sup3rSecretPw"), "{debug}");
    assert!(debug.contains("mesh"), "{debug}");
    let described = smtp.describe();
    assert!(!described.contains("Sup3rSecretPw"), "{described}");
    assert!(described.contains("smtp.example.com:587"), "{described}");
    assert!(described.contains("tls=starttls"), "{described}");
    assert_eq!(smtp.name(), "smtp");
}

#[test]
fn password_file_is_read_and_a_missing_one_is_named() {
    let file = password_file("from-file-pw");
    let mut c = SmtpConfig::new("smtp.example.com", FROM);
    c.username = Some("mesh".into());
    c.password_file = Some(file.path().to_path_buf());
    assert_eq!(
        c.resolve_password().unwrap().unwrap().expose(),
        "from-file-pw"
    );
    assert!(c.build(Duration::from_secs(1)).is_ok());

    c.password_file = Some("/nonexistent/mesh/smtp_password".into());
    let err = c.build(Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(err, SmtpConfigError::PasswordFile { .. }),
        "{err:?}"
    );
    let text = err.to_string();
    assert!(text.contains("/nonexistent/mesh/smtp_password"), "{text}");
    assert!(text.contains("password_file"), "{text}");

    let empty = password_file("");
    c.password_file = Some(empty.path().to_path_buf());
    let err = c.build(Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(err, SmtpConfigError::EmptyPasswordFile { .. }),
        "{err}"
    );
}

#[test]
fn bad_settings_are_errors_naming_the_key() {
    let mut c = SmtpConfig::new("smtp.example.com", "not a mailbox");
    let err = c.build(Duration::from_secs(1)).unwrap_err();
    assert!(
        matches!(err, SmtpConfigError::InvalidFrom { .. }),
        "{err:?}"
    );
    assert!(
        err.to_string().contains("`from`") && err.to_string().contains("not a mailbox"),
        "{err}"
    );

    c.from = FROM.into();
    c.host = "smtp://smtp.example.com".into();
    let err = c.build(Duration::from_secs(1)).unwrap_err();
    assert!(err.to_string().contains("`host`"), "{err}");
    c.host = "  ".into();
    assert!(matches!(
        c.build(Duration::from_secs(1)),
        Err(SmtpConfigError::InvalidHost { .. })
    ));

    c.host = "smtp.example.com".into();
    c.pool_max_size = Some(0);
    assert!(matches!(
        c.build(Duration::from_secs(1)),
        Err(SmtpConfigError::InvalidPoolSize)
    ));
    c.pool_max_size = None;
    c.port = Some(0);
    assert!(matches!(
        c.build(Duration::from_secs(1)),
        Err(SmtpConfigError::InvalidPort)
    ));
    c.port = None;

    // Timeouts: zero or absurd (no panic), naming the key that set them.
    for (own, default) in [
        (Some(Duration::MAX), Duration::from_secs(1)),
        (Some(Duration::ZERO), Duration::from_secs(1)),
        (None, Duration::MAX),
    ] {
        c.timeout = own;
        let err = c.build(default).unwrap_err();
        assert!(
            matches!(err, SmtpConfigError::InvalidTimeout { .. }),
            "{err:?}"
        );
        let key = if own.is_some() {
            "invalid providers.smtp.timeout"
        } else {
            "invalid timeout (used by SMTP"
        };
        assert!(err.to_string().starts_with(key), "{err}");
    }
    c.timeout = None;

    c.ca_file = Some("/nonexistent/ca.pem".into());
    let err = c.build(Duration::from_secs(1)).unwrap_err();
    assert!(
        err.to_string().contains("ca_file") && err.to_string().contains("/nonexistent/ca.pem"),
        "{err}"
    );
}

#[test]
fn plaintext_is_reported_for_the_production_check() {
    let mut c = SmtpConfig::new("smtp.example.com", FROM);
    for (mode, plaintext) in [
        (TlsMode::None, true),
        (TlsMode::Starttls, false),
        (TlsMode::Tls, false),
    ] {
        c.tls = mode;
        assert_eq!(c.is_plaintext(), plaintext);
        let smtp = c.build(Duration::from_secs(1)).unwrap();
        assert_eq!(smtp.is_plaintext(), plaintext);
        assert_eq!(smtp.port(), mode.default_port());
    }
    let parsed: SmtpConfig =
        serde_json::from_str(r#"{"host":"h","from":"a@b.c","tls":"none","allow_insecure":true}"#)
            .unwrap();
    assert!(parsed.allow_insecure && parsed.is_plaintext());
    assert!(parsed
        .build(Duration::from_secs(1))
        .unwrap()
        .allow_insecure());
}

#[tokio::test]
async fn a_send_stuck_in_data_times_out_and_its_connection_is_not_reused() {
    let Some(server) = SmtpServer::start(&[]) else {
        return;
    };
    let mut c = config(server.port);
    c.pool_max_size = Some(1);
    let smtp = c.build(Duration::from_millis(500)).unwrap();
    let e = smtp.send(&call_to("hang@example.com")).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Transient, "{e}");
    assert!(e.to_string().contains("did not answer within"), "{e}");

    // The only pool slot is free again, and the half-finished session was closed:
    // the next message goes through on a fresh connection.
    smtp.send(&call_to("bob@example.com")).await.unwrap();
    let got = server.messages();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].rcpt_tos, ["bob@example.com"]);
}

#[tokio::test]
async fn a_cancelled_send_frees_its_slot() {
    let Some(server) = SmtpServer::start(&[]) else {
        return;
    };
    let mut c = config(server.port);
    c.pool_max_size = Some(1);
    let smtp = c.build(Duration::from_secs(5)).unwrap();
    // The caller gives up (drops the future) while the server sits on DATA.
    let gave_up = tokio::time::timeout(
        Duration::from_millis(300),
        smtp.send(&call_to("hang@example.com")),
    )
    .await;
    assert!(gave_up.is_err(), "the hang mode must not answer");
    smtp.send(&call_to("bob@example.com")).await.unwrap();
    assert_eq!(server.messages().len(), 1);
}
