//! STARTTLS and implicit TLS against the real aiosmtpd server, with a certificate
//! made for the test (rcgen) and trusted through `ca_file`.

mod common;

use std::time::Duration;

use common::SmtpServer;
use mesh_notify_core::{
    Address, AddressKind, Composer, ErrorClass, Health, Notifier, Recipient, Room,
};
use mesh_notify_smtp::{SmtpConfig, TlsMode};

struct Pki {
    dir: tempfile::TempDir,
}

impl Pki {
    /// A self-signed certificate for 127.0.0.1, its key, both as PEM files.
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ck = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
        std::fs::write(dir.path().join("cert.pem"), ck.cert.pem()).unwrap();
        std::fs::write(dir.path().join("key.pem"), ck.signing_key.serialize_pem()).unwrap();
        Self { dir }
    }
    fn cert(&self) -> String {
        self.dir.path().join("cert.pem").display().to_string()
    }
    fn key(&self) -> String {
        self.dir.path().join("key.pem").display().to_string()
    }
}

fn config(port: u16, tls: TlsMode, ca_file: Option<String>) -> SmtpConfig {
    let mut c = SmtpConfig::new("127.0.0.1", "noreply@mesh.test");
    c.port = Some(port);
    c.tls = tls;
    c.ca_file = ca_file.map(Into::into);
    c
}

fn call() -> mesh_notify_core::Notification {
    let bob = Recipient::new("bob", "Bob")
        .with_address(Address::new(AddressKind::Email, "bob@example.com"));
    Composer::default().call("Alice", &Room::new("r1", "Test"), bob)
}

#[tokio::test]
async fn starttls_with_a_trusted_ca_and_auth() {
    let pki = Pki::new();
    let Some(server) = SmtpServer::start(&[
        "--tls-cert",
        &pki.cert(),
        "--tls-key",
        &pki.key(),
        "--auth",
        "mesh:s3cret-pw",
    ]) else {
        return;
    };
    let mut c = config(server.port, TlsMode::Starttls, Some(pki.cert()));
    c.username = Some("mesh".into());
    c.password = Some("s3cret-pw".into());
    let smtp = c.build(Duration::from_secs(5)).unwrap();
    assert!(!smtp.is_plaintext());
    assert_eq!(smtp.health().await, Health::Healthy);
    smtp.send(&call()).await.unwrap();
    let got = server.messages();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls, "the message travelled over TLS");
    assert_eq!(got[0].auth_login.as_deref(), Some("mesh"));
}

#[tokio::test]
async fn implicit_tls() {
    let pki = Pki::new();
    let Some(server) = SmtpServer::start(&[
        "--tls-cert",
        &pki.cert(),
        "--tls-key",
        &pki.key(),
        "--implicit-tls",
    ]) else {
        return;
    };
    let smtp = config(server.port, TlsMode::Tls, Some(pki.cert()))
        .build(Duration::from_secs(5))
        .unwrap();
    smtp.send(&call()).await.unwrap();
    let got = server.messages();
    assert_eq!(got.len(), 1);
    assert!(got[0].tls);
}

#[tokio::test]
async fn an_untrusted_certificate_is_misconfigured() {
    let pki = Pki::new();
    let Some(server) = SmtpServer::start(&[
        "--tls-cert",
        &pki.cert(),
        "--tls-key",
        &pki.key(),
        "--implicit-tls",
    ]) else {
        return;
    };
    let smtp = config(server.port, TlsMode::Tls, None)
        .build(Duration::from_secs(5))
        .unwrap();
    let e = smtp.send(&call()).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Misconfigured, "{e}");
    assert!(e.to_string().contains("ca_file"), "{e}");
    assert!(server.messages().is_empty());
}

#[tokio::test]
async fn starttls_required_but_not_offered_is_misconfigured() {
    let Some(server) = SmtpServer::start(&[]) else {
        return;
    };
    let smtp = config(server.port, TlsMode::Starttls, None)
        .build(Duration::from_secs(5))
        .unwrap();
    let e = smtp.send(&call()).await.unwrap_err();
    assert_eq!(e.class(), ErrorClass::Misconfigured, "{e}");
    assert!(e.to_string().contains("STARTTLS"), "{e}");
    assert!(server.messages().is_empty(), "nothing is sent in plaintext");
}
