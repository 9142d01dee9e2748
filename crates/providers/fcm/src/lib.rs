//! # mesh-notify-fcm
//!
//! The [Firebase Cloud Messaging](https://firebase.google.com/docs/cloud-messaging)
//! HTTP v1 provider for mesh-notify: `POST {base_url}/v1/projects/{project_id}/messages:send`
//! with an OAuth 2 access token obtained from a Google service-account key
//! (JWT-bearer grant, token cached until shortly before it expires, one refresh in
//! flight at a time), a `Message` with `notification`, `android`, `apns` and `data`
//! blocks, and every answer classified into a [`NotifyError`] from FCM's
//! `FcmError.errorCode` (`UNREGISTERED` → recipient gone, `QUOTA_EXCEEDED` →
//! transient with `Retry-After`, ...; see [`classify_send_error`]). Addresses are
//! reported dead exactly when the Firebase Admin SDKs would prune them.
//!
//! The recipient needs an [`AddressKind::Fcm`] address (a registration token).
//!
//! ```no_run
//! use std::time::Duration;
//! use mesh_notify_core::{Address, AddressKind, Composer, Notifier, Recipient, Room};
//! use mesh_notify_fcm::FcmConfig;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let config: FcmConfig = serde_json::from_value(serde_json::json!({
//!     "service_account_file": "/etc/mesh-notify/fcm-service-account.json",
//!     "channel_id": "messages",
//! }))?;
//! let fcm = config.build(Duration::from_secs(5))?;
//! let bob = Recipient::new("bob", "Bob")
//!     .with_address(Address::new(AddressKind::Fcm, "registration-token-from-the-app"));
//! let n = Composer::default().chat("Alice", &Room::new("r1", "Test"), bob, "Salut");
//! let receipt = fcm.send(&n).await?;
//! println!("delivered as {:?}", receipt.message_id); // projects/…/messages/…
//! # Ok(()) }
//! ```

mod auth;
mod message;
mod plugin;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mesh_notify_core::{
    parse_retry_after, AddressKind, Health, Notification, Notifier, NotifyError, Receipt, Timestamp,
};
use mesh_notify_provider_kit::http::{self, ClientSettings, Transport, UrlRole};
use reqwest::StatusCode;
use serde::Deserialize;
use url::Url;

pub use auth::{
    classify_token_error, token_lifetime, DEFAULT_TOKEN_URI, FCM_SCOPE, MAX_TOKEN_LIFETIME,
};
pub use message::{
    fcm_message, payload_size, AndroidOptions, HIGH_PRIORITY_FROM, MAX_PAYLOAD_BYTES,
};

use auth::{ServiceAccountAuth, ServiceAccountKey};

/// Google's FCM endpoint.
pub const DEFAULT_BASE_URL: &str = "https://fcm.googleapis.com";
/// Default per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest accepted `timeout` (per request). Longer is surely a typo, and
/// keeps deadline arithmetic far from overflowing.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);
/// The longest `ttl` FCM accepts: 4 weeks (`2419200s`).
pub const MAX_TTL: Duration = Duration::from_secs(28 * 24 * 3600);

const FCM_ERROR_TYPE: &str = "type.googleapis.com/google.firebase.fcm.v1.FcmError";
const BAD_REQUEST_TYPE: &str = "type.googleapis.com/google.rpc.BadRequest";

/// `[providers.fcm]` configuration.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FcmConfig {
    /// Google service-account key file (JSON, from the Firebase console:
    /// Project settings → Service accounts → Generate new private key).
    pub service_account_file: PathBuf,
    /// Firebase project id (default: the key file's `project_id`).
    #[serde(default)]
    pub project_id: Option<String>,
    /// FCM API base URL (default `https://fcm.googleapis.com`).
    #[serde(default)]
    pub base_url: Option<String>,
    /// OAuth token endpoint (default: the key file's `token_uri`, else
    /// `https://oauth2.googleapis.com/token`).
    #[serde(default)]
    pub token_uri: Option<String>,
    /// Per-request timeout (default: the global `timeout`, 5 s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Allow `http://` URLs in the production profile.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Android notification channel (`android.notification.channel_id`).
    #[serde(default)]
    pub channel_id: Option<String>,
    /// Time to live of notifications that do not expire by themselves (calls
    /// expire on their own; FCM's default is 4 weeks).
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
}

/// Why an FCM provider could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum FcmConfigError {
    /// `service_account_file` is missing or unreadable.
    #[error("cannot read FCM service_account_file `{path}`: {source}")]
    ServiceAccountFile {
        /// The path as given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// `service_account_file` is not a Google service-account key.
    #[error("FCM service_account_file `{path}` is not a Google service-account key: {reason}")]
    ServiceAccountJson {
        /// The path as given.
        path: PathBuf,
        /// What is wrong (never quotes the key).
        reason: String,
    },
    /// The key file's `private_key` is not a usable RSA key.
    #[error(
        "the private_key in FCM service_account_file `{path}` is not a usable RSA key: {reason}"
    )]
    PrivateKey {
        /// The path as given.
        path: PathBuf,
        /// What is wrong (never quotes the key).
        reason: String,
    },
    /// No project id in the config nor in the key file.
    #[error("no FCM project id: set providers.fcm.project_id, or use a service_account_file with a project_id (`{path}` has none)")]
    MissingProjectId {
        /// The key file.
        path: PathBuf,
    },
    /// The project id cannot be a Firebase project id.
    #[error("invalid providers.fcm.project_id `{0}`: expected letters, digits and '-'")]
    InvalidProjectId(String),
    /// A URL does not parse or is not http(s).
    #[error("invalid {key} `{url}`: {reason}")]
    InvalidUrl {
        /// The configuration key (`providers.fcm.base_url`, `providers.fcm.token_uri`).
        key: &'static str,
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// A duration is out of range (`key` is the full key, e.g.
    /// `providers.fcm.ttl`, or `timeout` when the global one applies).
    #[error("invalid {key}: {reason}")]
    InvalidField {
        /// The configuration key.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

impl FcmConfig {
    /// A configuration with only the key file set.
    pub fn new(service_account_file: impl Into<PathBuf>) -> Self {
        Self {
            service_account_file: service_account_file.into(),
            project_id: None,
            base_url: None,
            token_uri: None,
            timeout: None,
            allow_insecure_http: false,
            channel_id: None,
            ttl: None,
        }
    }

    /// The URLs set in this configuration, with their keys, for the dispatcher's
    /// https check. The defaults are https; a `token_uri` coming from the key file
    /// is reported by [`FcmNotifier::urls`].
    pub fn urls(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if let Some(u) = &self.base_url {
            out.push(("providers.fcm.base_url", u.clone()));
        }
        if let Some(u) = &self.token_uri {
            out.push(("providers.fcm.token_uri", u.clone()));
        }
        out
    }

    /// Reads the key file and builds the notifier (`default_timeout` applies when
    /// `timeout` is unset). No network traffic: the first access token is fetched
    /// on the first send or health check.
    pub fn build(&self, default_timeout: Duration) -> Result<FcmNotifier, FcmConfigError> {
        let path = &self.service_account_file;
        let key = ServiceAccountKey::from_file(path)?;
        let project_id = self
            .project_id
            .clone()
            .or_else(|| key.project_id.clone())
            .map(|p| p.trim().to_string())
            .filter(|p| !p.is_empty())
            .ok_or_else(|| FcmConfigError::MissingProjectId { path: path.clone() })?;
        if !project_id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        {
            return Err(FcmConfigError::InvalidProjectId(project_id));
        }
        let base_url = parse_url(
            "providers.fcm.base_url",
            self.base_url.as_deref().unwrap_or(DEFAULT_BASE_URL),
        )?;
        let (token_key, token_uri) = match (&self.token_uri, &key.token_uri) {
            (Some(u), _) => ("providers.fcm.token_uri", u.as_str()),
            (None, Some(u)) => ("token_uri in service_account_file", u.as_str()),
            (None, None) => ("providers.fcm.token_uri", DEFAULT_TOKEN_URI),
        };
        let token_uri = parse_url(token_key, token_uri)?;
        let send_url = base_url
            .join(&format!("v1/projects/{project_id}/messages:send"))
            .map_err(|e| FcmConfigError::InvalidUrl {
                key: "providers.fcm.base_url",
                url: base_url.to_string(),
                reason: e.to_string(),
            })?;
        let timeout = self.timeout.unwrap_or(default_timeout);
        if timeout.is_zero() || timeout > MAX_TIMEOUT {
            return Err(FcmConfigError::InvalidField {
                key: if self.timeout.is_some() {
                    "providers.fcm.timeout"
                } else {
                    "timeout (used by FCM, as providers.fcm.timeout is unset)"
                },
                reason: format!(
                    "{timeout:?} is out of range: must be greater than zero and at most {MAX_TIMEOUT:?}"
                ),
            });
        }
        if let Some(ttl) = self.ttl {
            if ttl > MAX_TTL {
                return Err(FcmConfigError::InvalidField {
                    key: "providers.fcm.ttl",
                    reason: format!(
                        "{ttl:?} is longer than FCM's maximum time to live, 4 weeks ({}s)",
                        MAX_TTL.as_secs()
                    ),
                });
            }
        }
        let client = ClientSettings::new(timeout)
            .build()
            .map_err(FcmConfigError::Client)?;
        let auth = ServiceAccountAuth::new(client.clone(), &key, token_uri, timeout, path)?;
        Ok(FcmNotifier {
            client,
            transport: Transport::new("FCM", timeout),
            send_url,
            base_url,
            project_id,
            auth,
            android: AndroidOptions {
                channel_id: self.channel_id.clone().filter(|c| !c.trim().is_empty()),
                ttl: self.ttl,
            },
            timeout,
        })
    }
}

fn parse_url(key: &'static str, raw: &str) -> Result<Url, FcmConfigError> {
    let role = if key == "providers.fcm.base_url" {
        UrlRole::Base
    } else {
        UrlRole::Endpoint
    };
    http::parse_url(raw, role).map_err(|reason| FcmConfigError::InvalidUrl {
        key,
        url: raw.to_string(),
        reason,
    })
}

/// Sends notifications through FCM HTTP v1.
pub struct FcmNotifier {
    client: reqwest::Client,
    transport: Transport,
    send_url: Url,
    base_url: Url,
    project_id: String,
    auth: ServiceAccountAuth,
    android: AndroidOptions,
    timeout: Duration,
}

impl std::fmt::Debug for FcmNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FcmNotifier")
            .field("project_id", &self.project_id)
            .field("send_url", &self.send_url.as_str())
            .field("auth", &self.auth)
            .field("android", &self.android)
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl FcmNotifier {
    /// The Firebase project notifications are sent for.
    pub fn project_id(&self) -> &str {
        &self.project_id
    }

    /// The effective URLs with their keys (`providers.fcm.base_url`,
    /// `providers.fcm.token_uri`), for https checks.
    pub fn urls(&self) -> Vec<(&'static str, String)> {
        vec![
            ("providers.fcm.base_url", self.base_url.to_string()),
            ("providers.fcm.token_uri", self.auth.token_uri().to_string()),
        ]
    }
}

#[derive(Deserialize)]
struct GoogleErrorBody {
    error: GoogleError,
}

#[derive(Deserialize)]
struct GoogleError {
    #[serde(default)]
    message: String,
    #[serde(default)]
    status: String,
    #[serde(default)]
    details: Vec<serde_json::Value>,
}

/// Whether an `INVALID_ARGUMENT` error is about the registration token rather than
/// the rest of the message: a `google.rpc.BadRequest` field violation on
/// `message.token`, or Google's message "The registration token is not a valid FCM
/// registration token".
fn is_about_the_registration_token(error: &GoogleError) -> bool {
    let field_is_token = error
        .details
        .iter()
        .filter(|d| d.get("@type").and_then(|t| t.as_str()) == Some(BAD_REQUEST_TYPE))
        .filter_map(|d| d.get("fieldViolations").and_then(|v| v.as_array()))
        .flatten()
        .filter_map(|v| v.get("field").and_then(|f| f.as_str()))
        .any(|field| field == "message.token");
    let message = error.message.to_ascii_lowercase();
    let message_is_token = message.contains("registration token")
        && (message.contains("not a valid") || message.contains("invalid"));
    field_is_token || message_is_token
}

/// Classifies a non-200 answer of `messages:send`.
///
/// The `errorCode` of the `FcmError` in `error.details` decides, not the HTTP status
/// alone. Addresses are reported dead ([`NotifyError::RecipientGone`]) exactly
/// where the Firebase Admin SDKs and Firebase's token-management guide prune them:
///
/// * `UNREGISTERED` (404): the app was uninstalled or the token expired → gone;
/// * `INVALID_ARGUMENT` (400) → gone only when the error is about the registration
///   token (a `BadRequest` field violation on `message.token`, or "The
///   registration token is not a valid FCM registration token"); about anything
///   else (payload, TTL, data keys) it is our message that is wrong → permanent;
/// * `SENDER_ID_MISMATCH` (403): the token belongs to another Firebase project.
///   Permanent, not gone: the same answer comes for every token when
///   `project_id` or the service account is the wrong project, and a
///   configuration mistake must not delete addresses;
/// * `THIRD_PARTY_AUTH_ERROR` → misconfigured (APNs or web push credentials in the
///   Firebase project);
/// * `QUOTA_EXCEEDED`, `UNAVAILABLE`, `INTERNAL` → transient with `Retry-After`.
///
/// Without an `FcmError`: 400 `INVALID_ARGUMENT` about the token → gone, other 400s
/// permanent; 401 (access token refused) and 403/404 (no permission, unknown
/// project) misconfigured; 408/429/5xx transient; other 4xx permanent.
pub fn classify_send_error(
    status: StatusCode,
    retry_after: Option<&str>,
    body: &str,
) -> NotifyError {
    let parsed = serde_json::from_str::<GoogleErrorBody>(body)
        .ok()
        .map(|b| b.error);
    let error_code = parsed.as_ref().and_then(|e| {
        e.details.iter().find_map(|d| {
            (d.get("@type").and_then(|t| t.as_str()) == Some(FCM_ERROR_TYPE))
                .then(|| d.get("errorCode").and_then(|c| c.as_str()))
                .flatten()
                .map(str::to_owned)
        })
    });
    let detail = match &parsed {
        Some(e) if !e.status.is_empty() => format!("{}: {}", e.status, e.message),
        Some(e) => e.message.clone(),
        None => body.chars().take(200).collect(),
    };
    let what = match &error_code {
        Some(code) => format!("FCM answered {status} {code} ({detail})"),
        None => format!("FCM answered {status} ({detail})"),
    };
    let transient = || NotifyError::Transient {
        reason: what.clone(),
        retry_after: retry_after.and_then(parse_retry_after),
    };
    let invalid_token = || {
        NotifyError::gone(
            AddressKind::Fcm,
            format!("the FCM registration token is not a valid registration token ({what})"),
        )
    };
    let about_token = parsed.as_ref().is_some_and(is_about_the_registration_token);
    match error_code.as_deref() {
        Some("UNREGISTERED") => NotifyError::gone(
            AddressKind::Fcm,
            format!("the FCM registration token is no longer valid ({what})"),
        ),
        Some("INVALID_ARGUMENT") if about_token => invalid_token(),
        Some("INVALID_ARGUMENT") => NotifyError::permanent(what),
        Some("SENDER_ID_MISMATCH") => NotifyError::permanent(format!(
            "{what}: the registration token belongs to another Firebase project (sender); \
             the address is kept. If every token gets this, project_id or the service \
             account is the wrong project"
        )),
        Some("THIRD_PARTY_AUTH_ERROR") => NotifyError::misconfigured(format!(
            "FCM could not authenticate to APNs or web push; check the APNs key in the Firebase project ({what})"
        )),
        Some("QUOTA_EXCEEDED") | Some("UNAVAILABLE") | Some("INTERNAL") => transient(),
        _ => match status.as_u16() {
            400 if about_token => invalid_token(),
            401 => NotifyError::misconfigured(format!(
                "FCM refused the access token; check the service account ({what})"
            )),
            403 | 404 => NotifyError::misconfigured(format!(
                "FCM refused the project; check project_id and the service account's permissions ({what})"
            )),
            _ if http::is_transient_status(status) => transient(),
            _ => NotifyError::permanent(what),
        },
    }
}

#[derive(Deserialize)]
struct SentMessage {
    name: String,
}

#[async_trait]
impl Notifier for FcmNotifier {
    fn name(&self) -> &str {
        "fcm"
    }

    fn address_kind(&self, _n: &Notification) -> Option<AddressKind> {
        Some(AddressKind::Fcm)
    }

    fn describe(&self) -> String {
        format!(
            "project={}, url={}, token_uri={}, service account={}, key: redacted, timeout={:?}",
            self.project_id,
            self.base_url,
            self.auth.token_uri(),
            self.auth.client_email(),
            self.timeout
        )
    }

    fn can_reach(&self, n: &Notification) -> bool {
        n.recipient
            .address(AddressKind::Fcm)
            .is_some_and(|t| !t.is_empty())
    }

    async fn send(&self, n: &Notification) -> Result<Receipt, NotifyError> {
        let registration = n
            .recipient
            .address(AddressKind::Fcm)
            .filter(|t| !t.is_empty())
            .ok_or(NotifyError::Unreachable {
                wanted: "FCM registration token",
            })?;
        let message = fcm_message(n, registration.expose(), &self.android, Timestamp::now());
        let size = payload_size(&message);
        if size > MAX_PAYLOAD_BYTES {
            return Err(NotifyError::permanent(format!(
                "the FCM payload would be {size} bytes, over FCM's {MAX_PAYLOAD_BYTES}-byte limit"
            )));
        }
        let started = Instant::now();
        let token = self.auth.access_token().await?;
        let authorization = http::token_header("Bearer ", &token).ok_or_else(|| {
            NotifyError::misconfigured("the access token cannot go in an Authorization header")
        })?;
        let request = self
            .client
            .post(self.send_url.clone())
            .header(reqwest::header::AUTHORIZATION, authorization)
            .json(&serde_json::json!({ "message": message }));
        let answer = self.transport.send(request).await?;
        let (status, body) = (answer.status, answer.body.as_str());
        if status != StatusCode::OK {
            let err = classify_send_error(status, answer.retry_after_header(), body);
            if status == StatusCode::UNAUTHORIZED
                && matches!(err, NotifyError::Misconfigured { .. })
                && !body.contains("THIRD_PARTY_AUTH_ERROR")
            {
                // The access token was refused (revoked?): fetch a new one next time.
                self.auth.invalidate(&token).await;
            }
            return Err(err);
        }
        let message_id = match serde_json::from_str::<SentMessage>(body) {
            Ok(m) => Some(m.name),
            Err(e) => {
                tracing::warn!(error = %e, "FCM accepted the message but its answer had no name");
                None
            }
        };
        Ok(Receipt {
            provider: self.name().to_string(),
            message_id,
            latency: started.elapsed(),
        })
    }

    async fn health(&self) -> Health {
        match self.auth.access_token().await {
            Ok(_) => Health::Healthy,
            Err(e) => Health::Unhealthy(format!("cannot obtain an FCM access token: {e}")),
        }
    }
}
