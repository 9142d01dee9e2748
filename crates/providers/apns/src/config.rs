//! `[providers.apns]` configuration and the checks that build an [`ApnsNotifier`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use jsonwebtoken::EncodingKey;
use mesh_notify_provider_kit::http::{
    load_root_certificate, parse_url, ClientSettings, Transport, UrlRole,
};
use serde::{Deserialize, Serialize};
use url::Url;

use crate::mismatch::MismatchGuard;
use crate::token::ProviderTokens;
use crate::ApnsNotifier;

/// APNs production endpoint.
pub const PRODUCTION_URL: &str = "https://api.push.apple.com";
/// APNs sandbox (development) endpoint.
pub const SANDBOX_URL: &str = "https://api.sandbox.push.apple.com";
/// The longest accepted `timeout` (per request). Longer is surely a typo, and
/// keeps deadline arithmetic far from overflowing.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// The longest accepted `ttl` (one year). Apple documents no limit; this one
/// catches typos (`ttl = "1000y"`) that would put an absurd `apns-expiration` on
/// every notification.
pub const MAX_TTL: Duration = Duration::from_secs(365 * 24 * 3600);

/// Which APNs endpoint to use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ApnsEnvironment {
    /// `https://api.push.apple.com` (apps from the App Store or TestFlight).
    #[default]
    Production,
    /// `https://api.sandbox.push.apple.com` (development builds).
    Sandbox,
}

impl ApnsEnvironment {
    /// The endpoint's base URL.
    pub fn base_url(self) -> &'static str {
        match self {
            ApnsEnvironment::Production => PRODUCTION_URL,
            ApnsEnvironment::Sandbox => SANDBOX_URL,
        }
    }
}

/// `[providers.apns]` configuration (token-based authentication).
///
/// ```toml
/// [providers.apns]
/// key_file = "/run/secrets/AuthKey_ABC123DEFG.p8"
/// key_id = "ABC123DEFG"
/// team_id = "DEF123GHIJ"
/// bundle_id = "org.example.mesh"
/// environment = "production"   # or "sandbox", or base_url = "https://..."
/// timeout = "5s"
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ApnsConfig {
    /// The `.p8` signing key downloaded from the Apple developer account (PKCS#8
    /// PEM, EC P-256).
    pub key_file: PathBuf,
    /// The key's 10-character Key ID (JWT header `kid`).
    pub key_id: String,
    /// The 10-character Team ID (JWT claim `iss`).
    pub team_id: String,
    /// The app's bundle id, sent as `apns-topic` (`{bundle_id}.voip` for VoIP pushes).
    pub bundle_id: String,
    /// `production` (default) or `sandbox`. Give this or `base_url`, not both.
    #[serde(default)]
    pub environment: Option<ApnsEnvironment>,
    /// Any APNs-compatible base URL (a proxy, or a test server).
    #[serde(default)]
    pub base_url: Option<String>,
    /// Per-request timeout (default: the global `timeout`).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// How long APNs keeps trying to deliver a chat, file or system notification to
    /// an offline device (`apns-expiration`). Unset: `0`, one attempt, not stored.
    /// Calls always expire when their ring does.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Allow an `http://` `base_url` in the production profile.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// An extra root certificate (PEM) to trust, for a test server or a TLS proxy.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
}

/// Why an APNs provider could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ApnsConfigError {
    /// `key_file` could not be read.
    #[error("cannot read APNs key_file `{path}`: {source}")]
    KeyFile {
        /// The path as given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `key_file` is not a usable ES256 signing key.
    #[error("APNs key_file `{path}` is not a PKCS#8 PEM EC P-256 (.p8) private key: {reason}")]
    InvalidKey {
        /// The path as given.
        path: PathBuf,
        /// What is wrong with it (never the key itself).
        reason: String,
    },
    /// A field has an invalid value.
    #[error("invalid providers.apns.{key}: {reason}")]
    InvalidField {
        /// The configuration key.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// `base_url` does not parse or is not http(s).
    #[error("invalid providers.apns.base_url `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The global `timeout`, which applies when `providers.apns.timeout` is unset,
    /// is out of range for APNs.
    #[error("invalid timeout (used by APNs, as providers.apns.timeout is unset): {0}")]
    InvalidDefaultTimeout(String),
    /// Both `environment` and `base_url` were given.
    #[error("give either providers.apns.environment or providers.apns.base_url, not both")]
    BothEnvironmentAndBaseUrl,
    /// `ca_file` could not be read.
    #[error("cannot read APNs ca_file `{path}`: {source}")]
    CaFile {
        /// The path as given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `ca_file` is not a PEM certificate.
    #[error("APNs ca_file `{path}` is not a PEM certificate: {reason}")]
    InvalidCa {
        /// The path as given.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the APNs HTTP/2 client: {0}")]
    Client(String),
}

impl ApnsConfig {
    /// A configuration for the production endpoint with default options.
    pub fn new(
        key_file: impl Into<PathBuf>,
        key_id: impl Into<String>,
        team_id: impl Into<String>,
        bundle_id: impl Into<String>,
    ) -> Self {
        Self {
            key_file: key_file.into(),
            key_id: key_id.into(),
            team_id: team_id.into(),
            bundle_id: bundle_id.into(),
            environment: None,
            base_url: None,
            timeout: None,
            ttl: None,
            allow_insecure_http: false,
            ca_file: None,
        }
    }

    /// The base URL in use: `base_url`, else the `environment`'s endpoint.
    pub fn resolved_base_url(&self) -> String {
        match &self.base_url {
            Some(url) => url.trim().to_string(),
            None => self.environment.unwrap_or_default().base_url().to_string(),
        }
    }

    /// The URL the dispatcher's https check must look at, with the configuration
    /// key to name in its error: `("providers.apns.base_url", url)` (or
    /// `providers.apns.environment` when the URL comes from the environment).
    pub fn url_to_check(&self) -> (&'static str, String) {
        let key = if self.base_url.is_some() {
            "providers.apns.base_url"
        } else {
            "providers.apns.environment"
        };
        (key, self.resolved_base_url())
    }

    /// Builds the notifier (`default_timeout` applies when `timeout` is unset).
    ///
    /// Reads and checks the key (by signing a token), the ids and the URL, so a
    /// wrong configuration fails here rather than at the first notification.
    pub fn build(&self, default_timeout: Duration) -> Result<ApnsNotifier, ApnsConfigError> {
        if self.environment.is_some() && self.base_url.is_some() {
            return Err(ApnsConfigError::BothEnvironmentAndBaseUrl);
        }
        check_apple_id("key_id", &self.key_id)?;
        check_apple_id("team_id", &self.team_id)?;
        check_bundle_id(&self.bundle_id)?;
        let timeout = self.timeout.unwrap_or(default_timeout);
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            let reason = format!(
                "{timeout:?} is out of range: must be greater than zero and at most {MAX_TIMEOUT:?}"
            );
            if self.timeout.is_none() {
                // The global `timeout` applies: name that key.
                return Err(ApnsConfigError::InvalidDefaultTimeout(reason));
            }
            return Err(ApnsConfigError::InvalidField {
                key: "timeout",
                reason,
            });
        }
        if let Some(ttl) = self.ttl {
            if ttl > MAX_TTL {
                return Err(ApnsConfigError::InvalidField {
                    key: "ttl",
                    reason: format!("{ttl:?} is longer than the accepted {MAX_TTL:?} (one year)"),
                });
            }
        }
        let base_url = parse_base_url(&self.resolved_base_url())?;
        let endpoint = match (&self.base_url, self.environment.unwrap_or_default()) {
            (Some(_), _) => format!("{base_url} (providers.apns.base_url)"),
            (None, ApnsEnvironment::Production) => {
                format!("{base_url} (environment = \"production\")")
            }
            (None, ApnsEnvironment::Sandbox) => format!("{base_url} (environment = \"sandbox\")"),
        };
        let tokens = load_key(&self.key_file, &self.key_id, &self.team_id)?;

        let mut settings = ClientSettings::new(timeout).http2_only();
        if let Some(path) = &self.ca_file {
            settings = settings.trust(load_ca(path)?);
        }
        let client = settings.build().map_err(ApnsConfigError::Client)?;
        Ok(ApnsNotifier {
            client,
            transport: Transport::new("APNs", timeout).with_endpoint(&base_url),
            base_url,
            bundle_id: self.bundle_id.clone(),
            key_id: self.key_id.clone(),
            team_id: self.team_id.clone(),
            key_file: self.key_file.clone(),
            tokens,
            timeout,
            ttl: self.ttl,
            mismatches: MismatchGuard::new(endpoint),
        })
    }
}

fn check_apple_id(key: &'static str, value: &str) -> Result<(), ApnsConfigError> {
    if value.len() == 10 && value.chars().all(|c| c.is_ascii_alphanumeric()) {
        Ok(())
    } else {
        Err(ApnsConfigError::InvalidField {
            key,
            reason: format!(
                "`{value}` is not a 10-character identifier from the Apple developer account"
            ),
        })
    }
}

fn check_bundle_id(value: &str) -> Result<(), ApnsConfigError> {
    let invalid = |reason: String| ApnsConfigError::InvalidField {
        key: "bundle_id",
        reason,
    };
    if value.is_empty()
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-')
    {
        return Err(invalid(format!(
            "`{value}` is not a bundle id (letters, digits, `.` and `-`, e.g. org.example.mesh)"
        )));
    }
    if value.ends_with(".voip") {
        return Err(invalid(format!(
            "`{value}`: give the app's bundle id; `.voip` is appended for VoIP pushes"
        )));
    }
    Ok(())
}

fn parse_base_url(raw: &str) -> Result<Url, ApnsConfigError> {
    parse_url(raw, UrlRole::Base).map_err(|reason| ApnsConfigError::InvalidUrl {
        url: raw.to_string(),
        reason,
    })
}

fn load_key(path: &Path, key_id: &str, team_id: &str) -> Result<ProviderTokens, ApnsConfigError> {
    let pem = std::fs::read(path).map_err(|source| ApnsConfigError::KeyFile {
        path: path.to_path_buf(),
        source,
    })?;
    let invalid = |reason: String| ApnsConfigError::InvalidKey {
        path: path.to_path_buf(),
        reason,
    };
    let key = EncodingKey::from_ec_pem(&pem).map_err(|e| invalid(e.to_string()))?;
    let tokens = ProviderTokens::new(key, key_id.to_string(), team_id.to_string());
    // Parsing is lazy: only signing proves the key is an ES256 key.
    tokens
        .sign()
        .map_err(|e| invalid(format!("signing a test token failed: {e}")))?;
    Ok(tokens)
}

fn load_ca(path: &Path) -> Result<reqwest::Certificate, ApnsConfigError> {
    if let Err(source) = std::fs::metadata(path) {
        return Err(ApnsConfigError::CaFile {
            path: path.to_path_buf(),
            source,
        });
    }
    load_root_certificate(path).map_err(|reason| ApnsConfigError::InvalidCa {
        path: path.to_path_buf(),
        reason,
    })
}
