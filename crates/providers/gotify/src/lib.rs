//! # mesh-notify-gotify
//!
//! The [Gotify](https://gotify.net) provider for mesh-notify: `POST /message` with the
//! application token in the `X-Gotify-Key` header (never in the URL, so it stays out
//! of access logs), a JSON body with `title`, `message`, `priority` and `extras`
//! (click URL for the web and Android clients, content type, notification id), and
//! every answer classified into a [`NotifyError`].
//!
//! Every notification carries `client::notification.click.url` (opened when the
//! user taps it). `android::action.onReceive.intentUrl`, which makes the Gotify
//! Android app open the target as soon as the push arrives, without a tap, is
//! only added for the kinds in `open_on_receive` (default: calls, so a ringing
//! call surfaces; a chat message must not take over the phone, gotify/android#227).
//!
//! ```no_run
//! use std::time::Duration;
//! use mesh_notify_core::{Composer, Notifier, Recipient, Room, Secret};
//! use mesh_notify_gotify::GotifyNotifier;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let gotify = GotifyNotifier::new(
//!     "https://gotify.example.com",
//!     Some(Secret::new("AppToken")),
//!     Duration::from_secs(5),
//! )?;
//! let n = Composer::default().chat("Alice", &Room::new("r1", "Test"), Recipient::new("bob", "Bob"), "Salut");
//! let receipt = gotify.send(&n).await?;
//! println!("delivered as Gotify message {:?}", receipt.message_id);
//! # Ok(()) }
//! ```

mod plugin;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mesh_notify_core::{
    parse_retry_after, AddressKind, Health, Kind, Notification, Notifier, NotifyError, Receipt,
    Secret,
};
use mesh_notify_provider_kit::http::{
    is_transient_status, parse_url, token_header, ClientSettings, Transport, UrlRole,
};
pub use mesh_notify_provider_kit::MAX_TIMEOUT;
use reqwest::header::HeaderValue;
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use url::Url;

/// Default per-request timeout.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(5);
/// The kinds that get `android::action.onReceive.intentUrl` unless
/// `open_on_receive` says otherwise: calls only.
pub const DEFAULT_OPEN_ON_RECEIVE: &[Kind] = &[Kind::Call];

/// `[providers.gotify]` configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct GotifyConfig {
    /// Base URL of the Gotify server, e.g. `https://push.example.com` (a path prefix
    /// such as `https://example.com/gotify/` is kept).
    pub url: String,
    /// Default application token (used when the recipient has no Gotify token of
    /// their own). Prefer `token_file` or the `GOTIFY_TOKEN` variable.
    #[serde(default)]
    pub token: Option<Secret>,
    /// File holding the default application token (whitespace trimmed).
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Per-request timeout (default: the global `timeout`, 5 s).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Allow `http://` in the production profile.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// The kinds (`chat`, `call`, `file`, `system`) whose notifications the Gotify
    /// Android app opens as soon as they arrive (`android::action.onReceive`).
    /// Default: `["call"]`; `[]` for none.
    #[serde(default)]
    pub open_on_receive: Option<Vec<String>>,
}

/// Why a Gotify provider could not be built.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum GotifyConfigError {
    /// The URL does not parse or is not http(s).
    #[error("invalid Gotify url `{url}`: {reason}")]
    InvalidUrl {
        /// The URL as given.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// `token_file` could not be read.
    #[error("cannot read Gotify token_file `{path}`: {source}")]
    TokenFile {
        /// The path as given.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// Both `token` and `token_file` were given.
    #[error("give either `token` or `token_file` for Gotify, not both")]
    BothTokenAndFile,
    /// A key has an invalid value.
    #[error("invalid {key}: {reason}")]
    InvalidField {
        /// The configuration key (`providers.gotify.open_on_receive`, ...).
        key: &'static str,
        /// What is wrong with it (never a secret).
        reason: String,
    },
    /// The HTTP client could not be built.
    #[error("cannot build the HTTP client: {0}")]
    Client(String),
}

impl GotifyConfig {
    /// The default token, read from `token` or `token_file`.
    pub fn resolve_token(&self) -> Result<Option<Secret>, GotifyConfigError> {
        match (&self.token, &self.token_file) {
            (Some(_), Some(_)) => Err(GotifyConfigError::BothTokenAndFile),
            (Some(t), None) => Ok(Some(t.clone()).filter(|t| !t.is_empty())),
            (None, Some(path)) => {
                let raw = std::fs::read_to_string(path).map_err(|source| {
                    GotifyConfigError::TokenFile {
                        path: path.clone(),
                        source,
                    }
                })?;
                Ok(Some(Secret::new(raw.trim())).filter(|t| !t.is_empty()))
            }
            (None, None) => Ok(None),
        }
    }

    /// The kinds listed in `open_on_receive` ([`DEFAULT_OPEN_ON_RECEIVE`] when
    /// unset). An unknown kind is an error naming the key and the kinds it takes.
    pub fn open_on_receive_kinds(&self) -> Result<Vec<Kind>, GotifyConfigError> {
        let Some(names) = &self.open_on_receive else {
            return Ok(DEFAULT_OPEN_ON_RECEIVE.to_vec());
        };
        let mut kinds = Vec::new();
        for name in names {
            let kind = Kind::ALL
                .into_iter()
                .find(|k| k.as_str() == name)
                .ok_or_else(|| GotifyConfigError::InvalidField {
                    key: "providers.gotify.open_on_receive",
                    reason: format!(
                        "unknown kind `{name}`; expected a list of chat, call, file, system \
                         (lower case), e.g. [\"call\"], or [] for none"
                    ),
                })?;
            if !kinds.contains(&kind) {
                kinds.push(kind);
            }
        }
        Ok(kinds)
    }

    /// Builds the notifier (`default_timeout` applies when `timeout` is unset).
    pub fn build(&self, default_timeout: Duration) -> Result<GotifyNotifier, GotifyConfigError> {
        let open_on_receive = self.open_on_receive_kinds()?;
        let timeout = self.timeout.unwrap_or(default_timeout);
        check_timeout(
            if self.timeout.is_some() {
                "providers.gotify.timeout"
            } else {
                "timeout (used by Gotify, as providers.gotify.timeout is unset)"
            },
            timeout,
        )?;
        Ok(
            GotifyNotifier::new(&self.url, self.resolve_token()?, timeout)?
                .with_open_on_receive(open_on_receive),
        )
    }
}

/// The token (surrounding whitespace trimmed) as a sensitive `X-Gotify-Key`
/// value, when it can be one: Gotify tokens are printable ASCII; anything else
/// (inner spaces, line breaks, control characters, non-ASCII, which `http` would
/// pass as opaque bytes) cannot be a token.
fn header_value(token: &Secret) -> Option<HeaderValue> {
    token_header("", token)
}

fn check_timeout(key: &'static str, timeout: Duration) -> Result<(), GotifyConfigError> {
    if timeout.is_zero() || timeout > MAX_TIMEOUT {
        return Err(GotifyConfigError::InvalidField {
            key,
            reason: format!(
                "{timeout:?} is out of range: must be greater than zero and at most {MAX_TIMEOUT:?}"
            ),
        });
    }
    Ok(())
}

/// Sends notifications to a Gotify server.
pub struct GotifyNotifier {
    client: reqwest::Client,
    transport: Transport,
    message_url: Url,
    health_url: Url,
    base_url: Url,
    token: Option<Secret>,
    timeout: Duration,
    open_on_receive: Vec<Kind>,
}

impl std::fmt::Debug for GotifyNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GotifyNotifier")
            .field("url", &self.base_url.as_str())
            .field("token", &self.token)
            .field("timeout", &self.timeout)
            .field("open_on_receive", &self.open_on_receive)
            .finish()
    }
}

impl GotifyNotifier {
    /// A notifier for the server at `base_url`, with an optional default application
    /// token (recipients' own Gotify tokens override it). Calls open on receipt
    /// ([`DEFAULT_OPEN_ON_RECEIVE`]); see [`GotifyNotifier::with_open_on_receive`].
    pub fn new(
        base_url: &str,
        token: Option<Secret>,
        timeout: Duration,
    ) -> Result<Self, GotifyConfigError> {
        let invalid = |reason: String| GotifyConfigError::InvalidUrl {
            url: base_url.to_string(),
            reason,
        };
        let base = parse_url(base_url, UrlRole::Base).map_err(invalid)?;
        check_timeout("providers.gotify.timeout", timeout)?;
        if let Some(token) = &token {
            if header_value(token).is_none() {
                return Err(GotifyConfigError::InvalidField {
                    key: "providers.gotify.token",
                    reason: "the token contains characters that cannot go in the X-Gotify-Key \
                             header (spaces, control characters, line breaks or non-ASCII)"
                        .into(),
                });
            }
        }
        let message_url = base.join("message").map_err(|e| invalid(e.to_string()))?;
        let health_url = base.join("health").map_err(|e| invalid(e.to_string()))?;
        let client = ClientSettings::new(timeout)
            .build()
            .map_err(GotifyConfigError::Client)?;
        Ok(Self {
            client,
            transport: Transport::new("Gotify", timeout),
            message_url,
            health_url,
            base_url: base,
            token,
            timeout,
            open_on_receive: DEFAULT_OPEN_ON_RECEIVE.to_vec(),
        })
    }

    /// The kinds whose notifications the Gotify Android app opens as soon as they
    /// arrive (`android::action.onReceive.intentUrl`); every other notification
    /// opens on a tap only (`client::notification.click.url`).
    pub fn with_open_on_receive(mut self, kinds: impl IntoIterator<Item = Kind>) -> Self {
        self.open_on_receive = kinds.into_iter().collect();
        self
    }

    /// The kinds that open on receipt.
    pub fn open_on_receive(&self) -> &[Kind] {
        &self.open_on_receive
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        self.base_url.as_str()
    }

    /// Whether a default application token is set.
    pub fn has_default_token(&self) -> bool {
        self.token.is_some()
    }

    fn token_for<'a>(&'a self, n: &'a Notification) -> Option<(&'a Secret, bool)> {
        match n.recipient.address(AddressKind::Gotify) {
            Some(t) => Some((t, true)),
            None => self.token.as_ref().map(|t| (t, false)),
        }
    }
}

/// The JSON body of `POST /message` for a notification, with the default
/// [`DEFAULT_OPEN_ON_RECEIVE`] (what [`GotifyNotifier::new`] sends).
pub fn message_body(n: &Notification) -> Value {
    message_body_with(n, DEFAULT_OPEN_ON_RECEIVE)
}

/// The JSON body of `POST /message` for a notification: `title`, `message`,
/// `priority` and `extras` (`client::display.contentType`, `mesh::notification`,
/// and with a click URL `client::notification.click.url`, plus
/// `android::action.onReceive.intentUrl` when the kind is in `open_on_receive`).
pub fn message_body_with(n: &Notification, open_on_receive: &[Kind]) -> Value {
    // Gotify rejects an empty message; fall back to the title.
    let message = if n.body.trim().is_empty() {
        n.title.as_str()
    } else {
        n.body.as_str()
    };
    let mut extras = json!({
        "client::display": { "contentType": n.format.content_type() },
        "mesh::notification": {
            "id": n.id.to_string(),
            "kind": n.kind.as_str(),
        },
    });
    if let Some(url) = &n.click_url {
        extras["client::notification"] = json!({ "click": { "url": url } });
        if open_on_receive.contains(&n.kind) {
            extras["android::action"] = json!({ "onReceive": { "intentUrl": url } });
        }
    }
    if let Some(room) = &n.room {
        extras["mesh::notification"]["room_id"] = json!(room.id);
    }
    // The sender's own extras are passed on as they came; ours fill the rest.
    if let (Some(theirs), Some(ours)) = (&n.extras, extras.as_object_mut()) {
        for (k, v) in theirs {
            ours.insert(k.clone(), v.clone());
        }
    }
    json!({
        "title": n.title,
        "message": message,
        "priority": n.priority.get(),
        "extras": extras,
    })
}

#[derive(Deserialize)]
struct GotifyErrorBody {
    #[serde(default)]
    error: String,
    #[serde(default, rename = "errorDescription")]
    error_description: String,
}

/// Classifies a non-200 answer from `POST /message`.
///
/// 401/403 mean the token was refused: misconfigured when it is the provider's
/// default token, recipient gone when it is the recipient's own token (their Gotify
/// application was deleted). 400 and other 4xx are permanent; 408, 429 and 5xx are
/// transient and honour `Retry-After`.
pub fn classify_status(
    status: StatusCode,
    retry_after: Option<&str>,
    body: &str,
    recipient_token: bool,
) -> NotifyError {
    let detail = serde_json::from_str::<GotifyErrorBody>(body)
        .ok()
        .map(|b| {
            if b.error_description.is_empty() {
                b.error
            } else {
                b.error_description
            }
        })
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| body.chars().take(200).collect());
    let what = format!("Gotify answered {status}: {detail}");
    match status.as_u16() {
        401 | 403 if recipient_token => NotifyError::gone(
            AddressKind::Gotify,
            format!("the recipient's Gotify token was refused ({what})"),
        ),
        401 | 403 => NotifyError::misconfigured(format!("the Gotify token was refused ({what})")),
        _ if is_transient_status(status) => NotifyError::Transient {
            reason: what,
            retry_after: retry_after.and_then(parse_retry_after),
        },
        _ => NotifyError::permanent(what),
    }
}

#[derive(Deserialize)]
struct CreatedMessage {
    id: i64,
}

#[async_trait]
impl Notifier for GotifyNotifier {
    fn name(&self) -> &str {
        "gotify"
    }

    /// The recipient's own Gotify tokens when they registered some (each one is a
    /// device or an app), else the default token (one destination).
    fn address_kind(&self, n: &Notification) -> Option<AddressKind> {
        n.recipient
            .address(AddressKind::Gotify)
            .filter(|t| !t.is_empty())
            .map(|_| AddressKind::Gotify)
    }

    /// One request under the client's timeout, which covers connecting, sending
    /// and reading the whole answer.
    fn enforced_timeout(&self) -> Option<Duration> {
        Some(self.timeout)
    }

    fn describe(&self) -> String {
        let open: Vec<&str> = self.open_on_receive.iter().map(|k| k.as_str()).collect();
        format!(
            "url={}, default token: {}, timeout={:?}, open_on_receive=[{}]",
            self.base_url,
            if self.token.is_some() {
                "set (redacted)"
            } else {
                "none"
            },
            self.timeout,
            open.join(", ")
        )
    }

    fn can_reach(&self, n: &Notification) -> bool {
        self.token_for(n).is_some()
    }

    async fn send(&self, n: &Notification) -> Result<Receipt, NotifyError> {
        let (token, recipient_token) = self.token_for(n).ok_or(NotifyError::Unreachable {
            wanted: "Gotify application token",
        })?;
        let key = header_value(token).ok_or_else(|| {
            // Only a recipient's own token can get here (the default one is checked
            // when the notifier is built). It is not proven dead, so it is not
            // reported gone; it can never be sent either.
            NotifyError::permanent(
                "the recipient's Gotify token contains characters that cannot go in the \
                 X-Gotify-Key header (not sent)",
            )
        })?;
        let started = Instant::now();
        let request = self
            .client
            .post(self.message_url.clone())
            .header("X-Gotify-Key", key)
            .json(&message_body_with(n, &self.open_on_receive));
        let answer = self.transport.send(request).await?;
        if answer.status != StatusCode::OK {
            return Err(classify_status(
                answer.status,
                answer.retry_after_header(),
                &answer.body,
                recipient_token,
            ));
        }
        let message_id = match serde_json::from_str::<CreatedMessage>(&answer.body) {
            Ok(m) => Some(m.id.to_string()),
            Err(e) => {
                tracing::warn!(error = %e, "Gotify accepted the message but its answer had no id");
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
        #[derive(Deserialize)]
        struct GotifyHealth {
            health: String,
            database: String,
        }
        match self
            .transport
            .send(self.client.get(self.health_url.clone()))
            .await
        {
            Err(e) => Health::Unhealthy(e.to_string()),
            Ok(answer) => {
                let status = answer.status;
                match serde_json::from_str::<GotifyHealth>(&answer.body) {
                    Ok(h)
                        if status.is_success() && h.health == "green" && h.database == "green" =>
                    {
                        Health::Healthy
                    }
                    Ok(h) => Health::Unhealthy(format!(
                        "Gotify health {status}: health={}, database={}",
                        h.health, h.database
                    )),
                    Err(e) => Health::Unhealthy(format!("Gotify health {status}: {e}")),
                }
            }
        }
    }
}
