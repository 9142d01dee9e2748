//! # mesh-notify-smtp
//!
//! The SMTP (email) provider for mesh-notify: one email per notification, sent with
//! [lettre](https://lettre.rs)'s pooled async transport over plaintext, STARTTLS or
//! implicit TLS (rustls with aws-lc-rs, system roots plus an optional `ca_file`),
//! with optional AUTH credentials, and every failure classified into a
//! [`NotifyError`](mesh_notify_core::NotifyError).
//!
//! The email goes to the recipient's [`AddressKind::Email`](mesh_notify_core::AddressKind)
//! address. Its subject is the title (RFC 2047-encoded when not ASCII), its plain
//! text the body with the click URL on the last line, plus an HTML alternative
//! (every raw HTML character escaped) when the body is markdown. `Message-ID` is
//! `<{notification id}@mesh-notify>`, so a retry keeps the same id; `Importance`
//! and `X-Priority` follow the priority; `X-Mesh-Notification-Id` and `X-Mesh-Kind`
//! identify it.
//!
//! ```no_run
//! use std::time::Duration;
//! use mesh_notify_core::{Address, AddressKind, Composer, Notifier, Recipient, Room};
//! use mesh_notify_smtp::{SmtpConfig, TlsMode};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let mut config = SmtpConfig::new("smtp.example.com", "Mesh <noreply@example.com>");
//! config.tls = TlsMode::Starttls;
//! config.username = Some("mesh".into());
//! config.password_file = Some("/run/secrets/smtp_password".into());
//! let smtp = config.build(Duration::from_secs(10))?;
//!
//! let bob = Recipient::new("bob", "Bob").with_address(Address::new(AddressKind::Email, "bob@example.com"));
//! let n = Composer::default().call("Alice", &Room::new("r1", "Test"), bob);
//! let receipt = smtp.send(&n).await?;
//! println!("sent as {:?}", receipt.message_id); // <{n.id}@mesh-notify>
//! # Ok(()) }
//! ```

mod classify;
mod config;
mod markdown;
mod message;
mod plugin;
mod pool;

use std::str::FromStr;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lettre::message::Mailbox;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Certificate, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use mesh_notify_core::{AddressKind, Health, Notification, Notifier, NotifyError, Receipt};

pub use classify::{classify_reply, classify_smtp_error};
pub use config::{SmtpConfig, SmtpConfigError, TlsMode, DEFAULT_POOL_MAX_SIZE};
pub use message::{build_message, html_body, importance, message_id, plain_body};

/// The longest accepted `timeout` (it bounds each SMTP step). Longer is surely a
/// typo, and keeps deadline arithmetic far from overflowing.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

use pool::{ConnectionPool, Target};

/// Sends notifications as emails through one SMTP server.
///
/// Connections are made on demand and kept for reuse: at most `pool_max_size` SMTP
/// sessions run at once, and a send waits at most `timeout` for a free one.
/// `timeout` bounds every step on its own: connecting (with TLS and AUTH), each
/// reuse check, and the transfer of one message. A connection goes back to the
/// pool only after a successful exchange; a failed, timed-out or cancelled send
/// closes it, so a dropped future never leaves a half-finished transaction behind.
/// Building the notifier makes no connection and needs no async runtime.
pub struct SmtpNotifier {
    pool: ConnectionPool,
    from: Mailbox,
    host: String,
    port: u16,
    tls: TlsMode,
    username: Option<String>,
    timeout: Duration,
    pool_max_size: u32,
    allow_insecure: bool,
}

impl std::fmt::Debug for SmtpNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SmtpNotifier")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("tls", &self.tls)
            .field("username", &self.username)
            .field("password", &self.username.as_ref().map(|_| "***"))
            .field("from", &self.from.to_string())
            .field("timeout", &self.timeout)
            .field("pool_max_size", &self.pool_max_size)
            .finish()
    }
}

impl SmtpNotifier {
    fn from_config(
        config: &SmtpConfig,
        default_timeout: Duration,
    ) -> Result<Self, SmtpConfigError> {
        let host = config.host.trim();
        let invalid_host = |reason: &str| SmtpConfigError::InvalidHost {
            host: config.host.clone(),
            reason: reason.to_string(),
        };
        if host.is_empty() {
            return Err(invalid_host("empty"));
        }
        if host.contains("://") || host.contains(['/', ' ', '@']) {
            return Err(invalid_host(
                "expected a host name or IP address (the port, TLS mode and credentials have keys of their own)",
            ));
        }
        let port = config.effective_port();
        if port == 0 {
            return Err(SmtpConfigError::InvalidPort);
        }
        let from =
            Mailbox::from_str(config.from.trim()).map_err(|e| SmtpConfigError::InvalidFrom {
                from: config.from.clone(),
                reason: e.to_string(),
            })?;
        let pool_max_size = config.pool_max_size.unwrap_or(DEFAULT_POOL_MAX_SIZE);
        if pool_max_size == 0 {
            return Err(SmtpConfigError::InvalidPoolSize);
        }
        let credentials = config.resolve_credentials()?;
        let timeout = config.timeout.unwrap_or(default_timeout);
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            return Err(SmtpConfigError::InvalidTimeout {
                key: if config.timeout.is_some() {
                    "providers.smtp.timeout"
                } else {
                    "timeout (used by SMTP, as providers.smtp.timeout is unset)"
                },
                reason: format!(
                    "{timeout:?} is out of range: must be greater than zero and at most {MAX_TIMEOUT:?}"
                ),
            });
        }
        let hello_name = match &config.hello_name {
            None => ClientId::default(),
            Some(name) => {
                let name = name.trim();
                if name.is_empty() || name.contains(|c: char| c.is_whitespace() || c.is_control()) {
                    return Err(SmtpConfigError::InvalidHelloName {
                        name: name.to_string(),
                        reason: "expected a host name without spaces",
                    });
                }
                ClientId::Domain(name.to_string())
            }
        };
        let tls_parameters = match config.tls {
            TlsMode::None => None,
            TlsMode::Starttls | TlsMode::Tls => {
                Some(tls_parameters(host, config.ca_file.as_deref())?)
            }
        };
        let username = credentials.as_ref().map(|(u, _)| u.clone());
        let target = Target {
            host: host.to_string(),
            port,
            hello_name,
            tls: config.tls,
            tls_parameters,
            credentials: credentials
                .map(|(user, password)| Credentials::new(user, password.expose().to_string())),
        };
        Ok(Self {
            pool: ConnectionPool::new(target, pool_max_size, timeout),
            from,
            host: host.to_string(),
            port,
            tls: config.tls,
            username,
            timeout,
            pool_max_size,
            allow_insecure: config.allow_insecure,
        })
    }

    /// The server's host.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The server's port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The TLS mode.
    pub fn tls(&self) -> TlsMode {
        self.tls
    }

    /// The sender mailbox.
    pub fn from_mailbox(&self) -> &Mailbox {
        &self.from
    }

    /// Whether mail (and any password) crosses the network unencrypted
    /// (`tls = "none"`).
    pub fn is_plaintext(&self) -> bool {
        self.tls == TlsMode::None
    }

    /// Whether the configuration allows plaintext in the production profile.
    pub fn allow_insecure(&self) -> bool {
        self.allow_insecure
    }
}

fn tls_parameters(
    host: &str,
    ca_file: Option<&std::path::Path>,
) -> Result<TlsParameters, SmtpConfigError> {
    let mut params = TlsParameters::builder(host.to_string());
    if let Some(path) = ca_file {
        let ca_error = |reason: String| SmtpConfigError::CaFile {
            path: path.to_path_buf(),
            reason,
        };
        let pem = std::fs::read(path).map_err(|e| ca_error(e.to_string()))?;
        let cert = Certificate::from_pem(&pem).map_err(|e| ca_error(e.to_string()))?;
        params = params.add_root_certificate(cert);
    }
    params.build().map_err(|e| SmtpConfigError::Tls {
        host: host.to_string(),
        reason: e.to_string(),
    })
}

#[async_trait]
impl Notifier for SmtpNotifier {
    fn name(&self) -> &str {
        "smtp"
    }

    fn address_kind(&self, _n: &Notification) -> Option<AddressKind> {
        Some(AddressKind::Email)
    }

    fn describe(&self) -> String {
        format!(
            "host={}:{}, tls={}{}, from={}, auth: {}, pool_max_size={}, timeout={:?}",
            self.host,
            self.port,
            self.tls,
            if self.is_plaintext() {
                " (plaintext)"
            } else {
                ""
            },
            self.from,
            match &self.username {
                Some(u) => format!("user `{u}`, password set (redacted)"),
                None => "none".to_string(),
            },
            self.pool_max_size,
            self.timeout
        )
    }

    fn can_reach(&self, n: &Notification) -> bool {
        n.recipient
            .address(AddressKind::Email)
            .is_some_and(|a| !a.is_empty())
    }

    async fn send(&self, n: &Notification) -> Result<Receipt, NotifyError> {
        let address = n
            .recipient
            .address(AddressKind::Email)
            .filter(|a| !a.is_empty())
            .ok_or(NotifyError::Unreachable {
                wanted: "email address",
            })?;
        // The address itself is personal data: keep it out of the error text.
        let to = lettre::Address::from_str(address.expose().trim()).map_err(|e| {
            NotifyError::permanent(format!("the recipient's email address is not valid: {e}"))
        })?;
        let email = build_message(&self.from, to, n)
            .map_err(|e| NotifyError::permanent(format!("cannot build the email: {e}")))?;
        let id = message_id(n);
        let envelope = email.envelope().clone();
        let bytes = email.formatted();
        let started = Instant::now();
        let mut session = self.pool.checkout().await?;
        let response = self
            .pool
            .step(
                "sending the message",
                session.conn().send(&envelope, &bytes),
            )
            .await?;
        session.release();
        tracing::debug!(
            message_id = %id,
            code = %response.code(),
            answer = %response.message().collect::<Vec<_>>().join(" "),
            "SMTP server accepted the email"
        );
        Ok(Receipt {
            provider: self.name().to_string(),
            message_id: Some(id),
            latency: started.elapsed(),
        })
    }

    async fn health(&self) -> Health {
        let mut session = match self.pool.checkout().await {
            Ok(session) => session,
            Err(e) => return Health::Unhealthy(e.to_string()),
        };
        match tokio::time::timeout(self.pool.timeout(), session.conn().test_connected()).await {
            Ok(true) => {
                session.release();
                Health::Healthy
            }
            Ok(false) => Health::Unhealthy("the SMTP server did not answer NOOP".into()),
            Err(_) => Health::Unhealthy(format!(
                "the SMTP server did not answer NOOP within {:?}",
                self.timeout
            )),
        }
    }
}
