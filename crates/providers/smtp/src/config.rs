//! `[providers.smtp]` configuration and its validation.

use std::path::PathBuf;
use std::time::Duration;

use mesh_notify_core::Secret;
use serde::{Deserialize, Serialize};

use crate::SmtpNotifier;

/// Default size of the connection pool.
pub const DEFAULT_POOL_MAX_SIZE: u32 = 10;

/// How the connection to the SMTP server is protected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// Plaintext SMTP (default port 25). The production profile refuses it unless
    /// `allow_insecure = true`.
    None,
    /// Plaintext first, then `STARTTLS`, which is required: a server that does not
    /// offer it is an error, never a silent downgrade (default port 587). The default.
    #[default]
    Starttls,
    /// TLS from the first byte, "implicit TLS" / SMTPS (default port 465).
    Tls,
}

impl TlsMode {
    /// The conventional port for this mode: 25, 587 or 465.
    pub fn default_port(self) -> u16 {
        match self {
            TlsMode::None => 25,
            TlsMode::Starttls => 587,
            TlsMode::Tls => 465,
        }
    }

    /// Lower-case name, as written in the configuration.
    pub fn as_str(self) -> &'static str {
        match self {
            TlsMode::None => "none",
            TlsMode::Starttls => "starttls",
            TlsMode::Tls => "tls",
        }
    }
}

impl std::fmt::Display for TlsMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// `[providers.smtp]` configuration.
///
/// ```toml
/// [providers.smtp]
/// host = "smtp.example.com"
/// tls = "starttls"              # none | starttls | tls (implicit); default starttls
/// port = 587                    # default: 25, 587 or 465 from `tls`
/// username = "mesh"
/// password_file = "/run/secrets/smtp_password"
/// from = "Mesh <noreply@example.com>"
/// timeout = "10s"
/// pool_max_size = 10
/// ```
///
/// `Debug` never shows the password.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SmtpConfig {
    /// Host name or IP address of the SMTP server (also the name its TLS
    /// certificate must carry).
    pub host: String,
    /// Port (default: from `tls`: 25 for `none`, 587 for `starttls`, 465 for `tls`).
    #[serde(default)]
    pub port: Option<u16>,
    /// `none`, `starttls` (default) or `tls` (implicit TLS).
    #[serde(default)]
    pub tls: TlsMode,
    /// User name for SMTP AUTH (PLAIN or LOGIN). Needs `password` or `password_file`.
    #[serde(default)]
    pub username: Option<String>,
    /// Password for SMTP AUTH. Prefer `password_file`.
    #[serde(default)]
    pub password: Option<Secret>,
    /// File holding the password (surrounding whitespace trimmed).
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The sender: `noreply@example.com` or `Mesh <noreply@example.com>`.
    pub from: String,
    /// Timeout for connecting and for each SMTP command (default: the global
    /// `timeout`).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// How many connections may be open at once (and kept for reuse); default 10.
    #[serde(default)]
    pub pool_max_size: Option<u32>,
    /// The name sent with `EHLO` (default: this machine's host name).
    #[serde(default)]
    pub hello_name: Option<String>,
    /// A PEM file of extra root certificates to trust (a private relay's CA), on
    /// top of the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Allow `tls = "none"` in the production profile.
    #[serde(default)]
    pub allow_insecure: bool,
}

/// Why an SMTP provider could not be built. Each variant names the key or path.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum SmtpConfigError {
    /// `host` is empty or is a URL rather than a host name.
    #[error("invalid SMTP `host` `{host}`: {reason}")]
    InvalidHost {
        /// The host as given.
        host: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `port` is 0.
    #[error("invalid SMTP `port` 0")]
    InvalidPort,
    /// `from` is not a valid mailbox.
    #[error("invalid SMTP `from` address `{from}`: {reason}")]
    InvalidFrom {
        /// The value as given.
        from: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `hello_name` is not a plausible host name.
    #[error("invalid SMTP `hello_name` `{name}`: {reason}")]
    InvalidHelloName {
        /// The value as given.
        name: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// `timeout` (or the global one it defaults to) is zero or too long.
    #[error("invalid {key}: {reason}")]
    InvalidTimeout {
        /// The key: `providers.smtp.timeout`, or the global `timeout`.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `pool_max_size` is 0.
    #[error("invalid SMTP `pool_max_size` 0: at least one connection is needed")]
    InvalidPoolSize,
    /// `password_file` could not be read.
    #[error("cannot read SMTP `password_file` `{path}`: {source}")]
    PasswordFile {
        /// The path as given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `password_file` holds nothing but whitespace.
    #[error("SMTP `password_file` `{path}` is empty")]
    EmptyPasswordFile {
        /// The path as given.
        path: PathBuf,
    },
    /// Both `password` and `password_file` were given.
    #[error("give either `password` or `password_file` for SMTP, not both")]
    BothPasswordAndFile,
    /// A user name without a password, or a password without a user name.
    #[error("incomplete SMTP credentials: {0}")]
    IncompleteCredentials(&'static str),
    /// `ca_file` could not be read or holds no usable certificate.
    #[error("cannot use SMTP `ca_file` `{path}`: {reason}")]
    CaFile {
        /// The path as given.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The TLS settings could not be built.
    #[error("cannot set up TLS for SMTP host `{host}`: {reason}")]
    Tls {
        /// The host.
        host: String,
        /// Why.
        reason: String,
    },
}

impl SmtpConfig {
    /// A configuration with the given server and sender and every other key at its
    /// default (STARTTLS on port 587, no credentials).
    pub fn new(host: impl Into<String>, from: impl Into<String>) -> Self {
        Self {
            host: host.into(),
            port: None,
            tls: TlsMode::default(),
            username: None,
            password: None,
            password_file: None,
            from: from.into(),
            timeout: None,
            pool_max_size: None,
            hello_name: None,
            ca_file: None,
            allow_insecure: false,
        }
    }

    /// Whether mail (and any password) would cross the network unencrypted
    /// (`tls = "none"`). The production profile refuses that unless
    /// `allow_insecure` is set.
    pub fn is_plaintext(&self) -> bool {
        self.tls == TlsMode::None
    }

    /// The port in use: `port`, or the default for `tls`.
    pub fn effective_port(&self) -> u16 {
        self.port.unwrap_or_else(|| self.tls.default_port())
    }

    /// The password, read from `password` or `password_file`.
    pub fn resolve_password(&self) -> Result<Option<Secret>, SmtpConfigError> {
        match (&self.password, &self.password_file) {
            (Some(_), Some(_)) => Err(SmtpConfigError::BothPasswordAndFile),
            (Some(p), None) => Ok(Some(p.clone()).filter(|p| !p.is_empty())),
            (None, Some(path)) => {
                let raw = std::fs::read_to_string(path).map_err(|source| {
                    SmtpConfigError::PasswordFile {
                        path: path.clone(),
                        source,
                    }
                })?;
                let password = raw.trim();
                if password.is_empty() {
                    return Err(SmtpConfigError::EmptyPasswordFile { path: path.clone() });
                }
                Ok(Some(Secret::new(password)))
            }
            (None, None) => Ok(None),
        }
    }

    /// `(username, password)` when credentials are configured.
    pub fn resolve_credentials(&self) -> Result<Option<(String, Secret)>, SmtpConfigError> {
        let username = self
            .username
            .as_deref()
            .map(str::trim)
            .filter(|u| !u.is_empty());
        match (username, self.resolve_password()?) {
            (Some(u), Some(p)) => Ok(Some((u.to_string(), p))),
            (None, None) => Ok(None),
            (Some(_), None) => Err(SmtpConfigError::IncompleteCredentials(
                "`username` is set but neither `password` nor `password_file`",
            )),
            (None, Some(_)) => Err(SmtpConfigError::IncompleteCredentials(
                "a password is set but `username` is not",
            )),
        }
    }

    /// Validates everything and builds the notifier; `default_timeout` applies when
    /// `timeout` is unset. No connection is made here (and no async runtime is
    /// needed): the pool connects on the first send or health check.
    pub fn build(&self, default_timeout: Duration) -> Result<SmtpNotifier, SmtpConfigError> {
        SmtpNotifier::from_config(self, default_timeout)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_modes_parse_and_pick_ports() {
        #[derive(Deserialize)]
        struct W {
            tls: TlsMode,
        }
        for (text, mode, port) in [
            ("none", TlsMode::None, 25),
            ("starttls", TlsMode::Starttls, 587),
            ("tls", TlsMode::Tls, 465),
        ] {
            let w: W = serde_json::from_str(&format!(r#"{{"tls":"{text}"}}"#)).unwrap();
            assert_eq!(w.tls, mode);
            assert_eq!(mode.default_port(), port);
            assert_eq!(mode.to_string(), text);
        }
        assert!(serde_json::from_str::<W>(r#"{"tls":"ssl"}"#).is_err());
    }

    #[test]
    fn unknown_keys_are_rejected() {
        let err =
            serde_json::from_str::<SmtpConfig>(r#"{"host":"h","from":"a@b.c","passwrod":"x"}"#)
                .unwrap_err();
        assert!(err.to_string().contains("passwrod"), "{err}");
    }

    #[test]
    fn defaults_and_plaintext() {
        let c: SmtpConfig =
            serde_json::from_str(r#"{"host":"smtp.example.com","from":"a@b.c","timeout":"7s"}"#)
                .unwrap();
        assert_eq!(c.tls, TlsMode::Starttls);
        assert_eq!(c.effective_port(), 587);
        assert_eq!(c.timeout, Some(Duration::from_secs(7)));
        assert!(!c.is_plaintext());
        let mut c = c;
        c.tls = TlsMode::None;
        assert!(c.is_plaintext());
        assert_eq!(c.effective_port(), 25);
    }

    #[test]
    fn credentials_must_be_complete_and_unambiguous() {
        let mut c = SmtpConfig::new("h", "a@b.c");
        assert!(c.resolve_credentials().unwrap().is_none());
        c.username = Some("u".into());
        assert!(matches!(
            c.resolve_credentials(),
            Err(SmtpConfigError::IncompleteCredentials(_))
        ));
        c.password = Some(Secret::new("p"));
        let (u, p) = c.resolve_credentials().unwrap().unwrap();
        assert_eq!((u.as_str(), p.expose()), ("u", "p"));
        c.password_file = Some("/nonexistent".into());
        assert!(matches!(
            c.resolve_credentials(),
            Err(SmtpConfigError::BothPasswordAndFile)
        ));
        c.username = None;
        c.password_file = None;
        assert!(matches!(
            c.resolve_credentials(),
            Err(SmtpConfigError::IncompleteCredentials(_))
        ));
    }
}
