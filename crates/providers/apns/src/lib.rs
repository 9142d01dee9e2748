//! # mesh-notify-apns
//!
//! The Apple Push Notification service provider for mesh-notify, with token-based
//! authentication over HTTP/2 (TLS, ALPN `h2`):
//!
//! * `POST /3/device/{token}` with `authorization: bearer <JWT>`, where the JWT is
//!   an ES256 provider token signed with the team's `.p8` key (`kid` = key id,
//!   `iss` = team id, `iat`), cached and re-signed every 40 minutes (APNs refuses
//!   tokens older than an hour and throttles providers that re-sign too often);
//! * alerts go to the recipient's [`AddressKind::Apns`] token; calls go to their
//!   PushKit [`AddressKind::ApnsVoip`] token when they have one (topic
//!   `{bundle_id}.voip`, push type `voip`, expiring when the ring ends);
//! * `apns-id` carries the notification id and `apns-collapse-id` collapses chats
//!   per room, so a retry after an ambiguous failure does not show twice;
//! * each answer is classified from Apple's `reason` ([`classify_response`]); a
//!   refused provider token is re-signed once and the request repeated once;
//! * only a 410 reports the token dead. `BadDeviceToken` (malformed, or a token of
//!   the other environment) and topic mismatches are permanent for that send; when
//!   [`MISMATCH_THRESHOLD`] different tokens in a row are refused that way, the
//!   provider reports itself misconfigured (wrong `environment` or `bundle_id`)
//!   until a send is delivered again ([`Mismatch`]).
//!
//! ```no_run
//! use std::time::Duration;
//! use mesh_notify_apns::ApnsConfig;
//! use mesh_notify_core::{Address, AddressKind, Composer, Notifier, Recipient, Room};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let apns = ApnsConfig::new(
//!     "/run/secrets/AuthKey_ABC123DEFG.p8",
//!     "ABC123DEFG",
//!     "DEF123GHIJ",
//!     "org.example.mesh",
//! )
//! .build(Duration::from_secs(5))?;
//! let bob = Recipient::new("bob", "Bob").with_address(Address::new(
//!     AddressKind::Apns,
//!     "4f1a0c9e7d1b2a3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4",
//! ));
//! let n = Composer::default().chat("Alice", &Room::new("r1", "Test"), bob, "Salut");
//! let receipt = apns.send(&n).await?;
//! println!("accepted by APNs as {:?}", receipt.message_id);
//! # Ok(()) }
//! ```

mod classify;
mod config;
mod mismatch;
mod payload;
mod plugin;
mod token;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mesh_notify_core::{
    AddressKind, Health, Kind, Notification, Notifier, NotifyError, Receipt, Secret, Timestamp,
};
use mesh_notify_provider_kit::http::{token_header, Transport};
use reqwest::header::{HeaderValue, AUTHORIZATION};
use url::Url;

pub use classify::{classify_response, is_provider_token_refusal, ApnsErrorBody};
pub use config::{
    ApnsConfig, ApnsConfigError, ApnsEnvironment, MAX_TIMEOUT, MAX_TTL, PRODUCTION_URL, SANDBOX_URL,
};
pub use mismatch::{Mismatch, MISMATCH_THRESHOLD};
pub use payload::{
    collapse_id, expiration, payload, priority, CALL_RING, MAX_COLLAPSE_ID_BYTES,
    MAX_PAYLOAD_BYTES, MAX_VOIP_PAYLOAD_BYTES,
};
pub use token::TOKEN_REFRESH_AFTER;

use mismatch::MismatchGuard;
use token::ProviderTokens;

/// Sends notifications through APNs. Built by [`ApnsConfig::build`].
pub struct ApnsNotifier {
    client: reqwest::Client,
    transport: Transport,
    base_url: Url,
    bundle_id: String,
    key_id: String,
    team_id: String,
    key_file: PathBuf,
    tokens: ProviderTokens,
    timeout: Duration,
    ttl: Option<Duration>,
    mismatches: MismatchGuard,
}

impl std::fmt::Debug for ApnsNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApnsNotifier")
            .field("base_url", &self.base_url.as_str())
            .field("bundle_id", &self.bundle_id)
            .field("key_id", &self.key_id)
            .field("team_id", &self.team_id)
            .field("key_file", &self.key_file)
            .field("key", &"<redacted>")
            .field("timeout", &self.timeout)
            .field("ttl", &self.ttl)
            .finish()
    }
}

/// Where one notification goes.
struct Target<'a> {
    token: &'a Secret,
    address: AddressKind,
    topic: String,
    push_type: &'static str,
    max_payload: usize,
}

/// One APNs answer.
struct Answer {
    status: u16,
    apns_id: Option<String>,
    retry_after: Option<String>,
    body: String,
}

impl Answer {
    fn reason(&self) -> Option<String> {
        ApnsErrorBody::parse(&self.body).reason
    }
}

impl ApnsNotifier {
    /// The base URL in use (with a trailing `/`).
    pub fn base_url(&self) -> &str {
        self.base_url.as_str()
    }

    /// The alert topic (the bundle id).
    pub fn topic(&self) -> &str {
        &self.bundle_id
    }

    /// How many provider tokens this notifier has signed and used so far (one per
    /// 40 minutes in normal operation, plus one per refusal).
    pub fn provider_tokens_signed(&self) -> u64 {
        self.tokens.signed_count()
    }

    /// How many different device tokens in a row, refused as `BadDeviceToken` (or
    /// for the topic) with no delivery in between, make this provider report
    /// itself misconfigured (default [`MISMATCH_THRESHOLD`]; at least 1).
    pub fn with_mismatch_threshold(mut self, threshold: usize) -> Self {
        self.mismatches.set_threshold(threshold);
        self
    }

    /// Why this provider believes its environment or topic is wrong (the same text
    /// as its unhealthy [`Notifier::health`]), or `None`.
    pub fn suspected_misconfiguration(&self) -> Option<String> {
        self.mismatches.suspicion()
    }

    fn target<'a>(&self, n: &'a Notification) -> Option<Target<'a>> {
        let usable = |kind| n.recipient.address(kind).filter(|t| !t.is_empty());
        if n.kind == Kind::Call {
            if let Some(token) = usable(AddressKind::ApnsVoip) {
                return Some(Target {
                    token,
                    address: AddressKind::ApnsVoip,
                    topic: format!("{}.voip", self.bundle_id),
                    push_type: "voip",
                    max_payload: MAX_VOIP_PAYLOAD_BYTES,
                });
            }
        }
        usable(AddressKind::Apns).map(|token| Target {
            token,
            address: AddressKind::Apns,
            topic: self.bundle_id.clone(),
            push_type: "alert",
            max_payload: MAX_PAYLOAD_BYTES,
        })
    }

    async fn post(
        &self,
        url: &Url,
        jwt: &Secret,
        headers: &[(&'static str, String)],
        body: &[u8],
    ) -> Result<Answer, NotifyError> {
        let auth = token_header("bearer ", jwt).ok_or_else(|| {
            NotifyError::misconfigured("the signed provider token is not a valid header")
        })?;
        let mut request = self
            .client
            .post(url.clone())
            .header(AUTHORIZATION, auth)
            .body(body.to_vec());
        for (name, value) in headers {
            // Every value is built by us, but one that cannot go in a header is a
            // property of this notification: retrying cannot help.
            let value = HeaderValue::from_str(value).map_err(|_| {
                NotifyError::permanent(format!(
                    "the {name} value cannot go in an HTTP header (not sent)"
                ))
            })?;
            request = request.header(*name, value);
        }
        let answer = self.transport.send(request).await?;
        Ok(Answer {
            status: answer.status.as_u16(),
            apns_id: answer.header("apns-id").map(str::to_owned),
            retry_after: answer.retry_after_header().map(str::to_owned),
            body: answer.body,
        })
    }

    fn sign_error(e: jsonwebtoken::errors::Error) -> NotifyError {
        NotifyError::misconfigured(format!("cannot sign the APNs provider token: {e}"))
    }
}

#[async_trait]
impl Notifier for ApnsNotifier {
    fn name(&self) -> &str {
        "apns"
    }

    fn address_kind(&self, n: &Notification) -> Option<AddressKind> {
        self.target(n).map(|t| t.address)
    }

    fn describe(&self) -> String {
        format!(
            "url={}, topic={}, key_id={}, team_id={}, key: set (redacted), timeout={:?}",
            self.base_url, self.bundle_id, self.key_id, self.team_id, self.timeout
        )
    }

    fn can_reach(&self, n: &Notification) -> bool {
        self.target(n).is_some()
    }

    async fn send(&self, n: &Notification) -> Result<Receipt, NotifyError> {
        let target = self.target(n).ok_or(NotifyError::Unreachable {
            wanted: "APNs device token",
        })?;
        let device = target.token.expose().trim();
        if !device.bytes().all(|b| b.is_ascii_hexdigit()) {
            // Permanent, not gone: only APNs' 410 proves a token dead, and a token
            // that cannot even go in the URL is worth a look rather than a silent
            // deletion.
            return Err(NotifyError::permanent(format!(
                "the {} device token is not hexadecimal, it cannot be an APNs token (not sent)",
                target.address
            )));
        }
        let now = Timestamp::now();
        if n.is_expired_at(now) {
            return Err(NotifyError::permanent(
                "the notification expired before it could be sent to APNs (not sent)",
            ));
        }
        let body = serde_json::to_vec(&payload(n))
            .map_err(|e| NotifyError::permanent(format!("cannot encode the APNs payload: {e}")))?;
        if body.len() > target.max_payload {
            return Err(NotifyError::permanent(format!(
                "PayloadTooLarge: the {} payload is {} bytes, APNs accepts at most {} (not sent)",
                target.push_type,
                body.len(),
                target.max_payload
            )));
        }
        let url = self
            .base_url
            .join(&format!("3/device/{device}"))
            .map_err(|e| NotifyError::misconfigured(format!("cannot build the APNs URL: {e}")))?;
        let headers = [
            ("apns-topic", target.topic.clone()),
            ("apns-push-type", target.push_type.to_string()),
            ("apns-priority", priority(n).to_string()),
            ("apns-expiration", expiration(n, self.ttl, now).to_string()),
            ("apns-collapse-id", collapse_id(n)),
            ("apns-id", n.id.to_string()),
        ];

        let started = Instant::now();
        let jwt = self.tokens.current().map_err(Self::sign_error)?;
        let mut answer = self.post(&url, &jwt, &headers, &body).await?;
        let reason = answer.reason();
        if is_provider_token_refusal(answer.status, reason.as_deref()) {
            // Part of token authentication, not a delivery retry: APNs wants a new
            // token; sign one and repeat the request once.
            tracing::info!(
                reason = reason.as_deref().unwrap_or_default(),
                "APNs refused the provider token; re-signing it once"
            );
            let fresh = self
                .tokens
                .replace_rejected(&jwt)
                .map_err(Self::sign_error)?;
            answer = self.post(&url, &fresh, &headers, &body).await?;
            let reason = answer.reason();
            if is_provider_token_refusal(answer.status, reason.as_deref()) {
                return Err(NotifyError::misconfigured(format!(
                    "APNs refused the provider token again after re-signing it ({} {}); \
                     check key_file, key_id, team_id and environment",
                    answer.status,
                    reason.unwrap_or_default()
                )));
            }
        }
        if answer.status != 200 {
            let err = classify_response(
                answer.status,
                &answer.body,
                answer.retry_after.as_deref(),
                target.address,
            );
            let reason = answer.reason();
            if let Some(kind) = Mismatch::of(answer.status, reason.as_deref()) {
                if let Some(why) = self.mismatches.refused(
                    kind,
                    &target.topic,
                    device,
                    reason.as_deref().unwrap_or_default(),
                ) {
                    return Err(NotifyError::misconfigured(format!(
                        "{why} (this send: APNs answered {} {})",
                        answer.status,
                        reason.unwrap_or_default()
                    )));
                }
            }
            return Err(err);
        }
        self.mismatches.delivered(&target.topic);
        Ok(Receipt {
            provider: self.name().to_string(),
            message_id: answer.apns_id,
            latency: started.elapsed(),
        })
    }

    /// Signs (or reuses) a provider token and posts to `/3/device/` without a device
    /// token: any answer proves the host is reachable over HTTP/2; APNs answers 400
    /// (`MissingDeviceToken`) when it accepts the token and 403 when it refuses it.
    ///
    /// The probe cannot tell a wrong environment or topic: while sends say so
    /// (see [`Mismatch`]), health is unhealthy with that explanation, without a
    /// probe, until a send is delivered.
    async fn health(&self) -> Health {
        if let Some(why) = self.mismatches.suspicion() {
            return Health::Unhealthy(why);
        }
        let jwt = match self.tokens.current() {
            Ok(jwt) => jwt,
            Err(e) => return Health::Unhealthy(Self::sign_error(e).to_string()),
        };
        let url = match self.base_url.join("3/device/") {
            Ok(url) => url,
            Err(e) => return Health::Unhealthy(format!("cannot build the APNs URL: {e}")),
        };
        let headers = [
            ("apns-topic", self.bundle_id.clone()),
            ("apns-push-type", "alert".to_string()),
            ("apns-priority", "5".to_string()),
            ("apns-expiration", "0".to_string()),
        ];
        let probe = br#"{"aps":{"alert":{"title":"health check"}}}"#;
        match self.post(&url, &jwt, &headers, probe).await {
            Err(e) => Health::Unhealthy(e.to_string()),
            Ok(answer) => match answer.status {
                200 | 400 => Health::Healthy,
                429 => Health::Degraded(format!(
                    "APNs is throttling: {}",
                    answer.reason().unwrap_or_default()
                )),
                status => Health::Unhealthy(
                    classify_response(status, &answer.body, None, AddressKind::Apns).to_string(),
                ),
            },
        }
    }
}
