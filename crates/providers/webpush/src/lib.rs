//! # mesh-notify-webpush
//!
//! Web Push for mesh-notify: notifications reach browsers (and installed web
//! apps) without a vendor SDK.
//!
//! * **Delivery** (RFC 8030): `POST` to the subscription's `endpoint` with `TTL`
//!   and `Urgency`: a call is `high` with the call's remaining time to live
//!   (it must ring now or never), a system alert `high`, a chat `normal`, a
//!   shared file `low`; these last three live `ttl` (default 12 h).
//! * **Encryption** (RFC 8291): the payload is encrypted with the
//!   subscription's `p256dh` key and `auth` secret, `Content-Encoding:
//!   aes128gcm` ([`encrypt`]; tested against the RFC's example).
//! * **Authentication** (RFC 8292): a VAPID JWT (ES256) for the push service's
//!   origin, `Authorization: vapid t=…, k=…` ([`VapidKey`]).
//! * **Answers**: 201 (any 2xx) delivered, the `Location` header as the message
//!   id; 404 and 410 report the subscription dead (pruned); 401 and 403 mean
//!   the VAPID key is refused (misconfigured); 413 and other 4xx permanent; 429
//!   and 5xx transient, honouring `Retry-After`.
//!
//! The recipient's `webpush` address holds the subscription as the browser
//! gives it (`PushSubscription.toJSON()`): `{"endpoint": "https://…",
//! "keys": {"p256dh": "…", "auth": "…"}}`. The endpoint is a capability URL: it
//! never appears in logs or errors. The payload the service worker receives is
//! JSON: `{"title","body","url","kind","id","room"}`.
//!
//! ```no_run
//! use std::time::Duration;
//! use mesh_notify_core::{Address, AddressKind, Composer, Notifier, Recipient, Room};
//! use mesh_notify_webpush::{EndpointPolicy, VapidKey, WebPushNotifier};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let vapid = VapidKey::parse(&std::fs::read_to_string("/run/secrets/vapid.pem")?)?;
//! let push = WebPushNotifier::new(vapid, "mailto:ops@example.com", Duration::from_secs(12 * 3600),
//!     EndpointPolicy { https_only: true, allow_private_addresses: false }, Duration::from_secs(5))?;
//! let subscription = r#"{"endpoint":"https://push.example.net/abc","keys":{"p256dh":"…","auth":"…"}}"#;
//! let bob = Recipient::new("bob", "Bob").with_address(Address::new(AddressKind::WebPush, subscription));
//! push.send(&Composer::default().chat("Alice", &Room::new("r1", "Test"), bob, "Salut")).await?;
//! # Ok(()) }
//! ```

mod config;
mod ece;
mod vapid;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use mesh_notify_core::{
    parse_retry_after, AddressKind, Health, Kind, Notification, Notifier, NotifyError, Receipt,
    Timestamp,
};
use mesh_notify_provider_kit::http::{
    is_internal_address, is_transient_status, parse_url, ClientSettings, Transport, UrlRole,
};
use reqwest::StatusCode;
use serde::Deserialize;
use serde_json::{json, Value};
use url::Url;

pub use config::{WebPushConfig, DEFAULT_TTL};
pub use ece::{encrypt, encrypt_with, HEADER_LEN, RECORD_SIZE};
pub use vapid::VapidKey;

/// The largest body push services must accept (RFC 8291 §4): 4096 bytes.
pub const MAX_BODY_BYTES: usize = 4096;
/// How long a VAPID token is valid (RFC 8292 allows at most 24 h).
pub const VAPID_LIFETIME: Duration = Duration::from_secs(12 * 3600);

/// A browser's push subscription (`PushSubscription.toJSON()`).
#[derive(Deserialize)]
pub struct Subscription {
    /// The push service URL for this browser.
    pub endpoint: String,
    /// Its keys.
    pub keys: SubscriptionKeys,
}

/// The keys of a [`Subscription`] (base64url).
#[derive(Deserialize)]
pub struct SubscriptionKeys {
    /// The browser's P-256 public key.
    pub p256dh: String,
    /// The 16-byte authentication secret.
    pub auth: String,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Subscription(***)")
    }
}

fn b64url(s: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(s.trim().trim_end_matches('=')).ok()
}

/// `Urgency` (RFC 8030 §5.3) for a kind.
pub fn urgency(kind: Kind) -> &'static str {
    match kind {
        Kind::Call | Kind::System => "high",
        Kind::Chat => "normal",
        Kind::File => "low",
    }
}

/// `TTL` in seconds: what is left of the notification's own expiry (calls),
/// else `ttl`.
pub fn ttl_secs(n: &Notification, ttl: Duration, now: Timestamp) -> u64 {
    match n.expires_at {
        Some(expires) => u64::try_from((expires.as_millis() - now.as_millis()) / 1000).unwrap_or(0),
        None => ttl.as_secs(),
    }
}

/// The JSON the service worker receives.
pub fn payload(n: &Notification) -> Value {
    let mut p = json!({
        "title": n.title,
        "body": n.body,
        "kind": n.kind.as_str(),
        "id": n.id.to_string(),
    });
    if let Some(url) = &n.click_url {
        p["url"] = json!(url);
    }
    if let Some(room) = &n.room {
        p["room"] = json!(room.id);
    }
    p
}

/// Classifies a non-2xx answer of a push service.
pub fn classify(status: StatusCode, retry_after: Option<&str>, body: &str) -> NotifyError {
    let excerpt: String = body.chars().take(200).collect();
    let what = format!("the push service answered {status}: {excerpt}");
    match status.as_u16() {
        404 | 410 => NotifyError::gone(
            AddressKind::WebPush,
            format!("the push subscription has expired or was unsubscribed ({what})"),
        ),
        401 | 403 => NotifyError::misconfigured(format!(
            "the push service refused our VAPID key; check providers.webpush.vapid_key ({what})"
        )),
        _ if is_transient_status(status) => NotifyError::Transient {
            reason: what,
            retry_after: retry_after.and_then(parse_retry_after),
        },
        _ => NotifyError::permanent(what),
    }
}

/// Which subscription endpoints are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EndpointPolicy {
    /// Refuse `http://` endpoints (the production profile, unless `allow_insecure_http`).
    pub https_only: bool,
    /// Accept endpoints on loopback or private addresses (tests).
    pub allow_private_addresses: bool,
}

/// Sends Web Push notifications.
pub struct WebPushNotifier {
    client: reqwest::Client,
    transport: Transport,
    vapid: VapidKey,
    subject: String,
    ttl: Duration,
    policy: EndpointPolicy,
    timeout: Duration,
}

impl std::fmt::Debug for WebPushNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebPushNotifier")
            .field("vapid", &self.vapid)
            .field("subject", &self.subject)
            .field("ttl", &self.ttl)
            .field("policy", &self.policy)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// A subscription ready to send to.
struct Target {
    endpoint: Url,
    p256dh: Vec<u8>,
    auth: Vec<u8>,
}

impl WebPushNotifier {
    /// A notifier signing with `vapid` for `subject` (`mailto:…` or `https://…`).
    pub fn new(
        vapid: VapidKey,
        subject: &str,
        ttl: Duration,
        policy: EndpointPolicy,
        timeout: Duration,
    ) -> Result<Self, String> {
        if !(subject.starts_with("mailto:") || subject.starts_with("https://")) {
            return Err(format!(
                "`{subject}` is not a VAPID subject: use mailto:you@example.com or an https:// URL"
            ));
        }
        let client = ClientSettings::new(timeout)
            .build()
            .map_err(|m| format!("cannot build the HTTP client: {m}"))?;
        Ok(Self {
            client,
            transport: Transport::new("the push service", timeout),
            vapid,
            subject: subject.to_string(),
            ttl,
            policy,
            timeout,
        })
    }

    /// The VAPID public key browsers subscribe with (`applicationServerKey`).
    pub fn public_key(&self) -> &str {
        self.vapid.public_key()
    }

    /// The recipient's subscription, checked. Never quotes it.
    fn target(&self, raw: &str) -> Result<Target, NotifyError> {
        let bad = |why: &str| {
            NotifyError::permanent(format!(
                "the recipient's push subscription cannot be used: {why} (not sent)"
            ))
        };
        let sub: Subscription = serde_json::from_str(raw)
            .map_err(|_| bad("expected {\"endpoint\",\"keys\":{\"p256dh\",\"auth\"}}"))?;
        let endpoint = parse_url(&sub.endpoint, UrlRole::Endpoint)
            .map_err(|_| bad("the endpoint is not a URL"))?;
        if self.policy.https_only && endpoint.scheme() != "https" {
            return Err(bad(
                "the endpoint is plain http://, refused in the production profile",
            ));
        }
        if !self.policy.allow_private_addresses && is_internal_address(&endpoint) {
            return Err(bad("the endpoint names a loopback or private address"));
        }
        let p256dh = b64url(&sub.keys.p256dh).ok_or_else(|| bad("keys.p256dh is not base64url"))?;
        let auth = b64url(&sub.keys.auth).ok_or_else(|| bad("keys.auth is not base64url"))?;
        Ok(Target {
            endpoint,
            p256dh,
            auth,
        })
    }
}

#[async_trait]
impl Notifier for WebPushNotifier {
    fn name(&self) -> &str {
        "webpush"
    }

    fn describe(&self) -> String {
        format!(
            "VAPID public key={}, subject={}, ttl={:?}, https only: {}, timeout={:?}",
            self.vapid.public_key(),
            self.subject,
            self.ttl,
            self.policy.https_only,
            self.timeout
        )
    }

    fn address_kind(&self, _n: &Notification) -> Option<AddressKind> {
        Some(AddressKind::WebPush)
    }

    fn can_reach(&self, n: &Notification) -> bool {
        n.recipient
            .address(AddressKind::WebPush)
            .is_some_and(|s| !s.is_empty())
    }

    fn enforced_timeout(&self) -> Option<Duration> {
        Some(self.timeout)
    }

    async fn send(&self, n: &Notification) -> Result<Receipt, NotifyError> {
        let raw = n
            .recipient
            .address(AddressKind::WebPush)
            .filter(|s| !s.is_empty())
            .ok_or(NotifyError::Unreachable {
                wanted: "Web Push subscription",
            })?;
        let target = self.target(raw.expose())?;
        let now = Timestamp::now();
        if n.is_expired_at(now) {
            return Err(NotifyError::permanent(
                "the notification expired before it could be pushed (not sent)",
            ));
        }
        let plaintext = serde_json::to_vec(&payload(n))
            .map_err(|e| NotifyError::permanent(format!("cannot encode the payload: {e}")))?;
        let body = encrypt(&plaintext, &target.p256dh, &target.auth).map_err(|why| {
            NotifyError::permanent(format!(
                "the recipient's push subscription cannot be used: {why} (not sent)"
            ))
        })?;
        if body.len() > MAX_BODY_BYTES {
            return Err(NotifyError::permanent(format!(
                "the encrypted push message would be {} bytes, over the {MAX_BODY_BYTES} push services must accept (not sent)",
                body.len()
            )));
        }
        let audience = target.endpoint.origin().ascii_serialization();
        let expires = now.as_secs() + VAPID_LIFETIME.as_secs() as i64;
        let authorization = self
            .vapid
            .authorization(&audience, &self.subject, expires)
            .map_err(NotifyError::misconfigured)?;
        let started = Instant::now();
        let mut request = self.client.post(target.endpoint);
        // RFC 8030 §5.4: a newer message with the same topic replaces a stored one.
        if let Some(topic) = n.collapse_topic() {
            request = request.header("Topic", topic);
        }
        let request = request
            .header(reqwest::header::AUTHORIZATION, authorization)
            .header(reqwest::header::CONTENT_ENCODING, "aes128gcm")
            .header(reqwest::header::CONTENT_TYPE, "application/octet-stream")
            .header("TTL", ttl_secs(n, self.ttl, now).to_string())
            .header("Urgency", urgency(n.kind))
            .body(body);
        let answer = self.transport.send(request).await?;
        if !answer.status.is_success() {
            return Err(classify(
                answer.status,
                answer.retry_after_header(),
                &answer.body,
            ));
        }
        Ok(Receipt {
            provider: self.name().to_string(),
            // The message resource; no secret (not the subscription endpoint).
            message_id: answer.header("location").map(str::to_owned),
            latency: started.elapsed(),
        })
    }

    /// Push services have no health endpoint common to all; nothing is probed.
    async fn health(&self) -> Health {
        Health::Healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_notify_core::{Composer, ErrorClass, Recipient, Room};

    #[test]
    fn urgency_and_ttl_follow_the_kind() {
        let c = Composer::default();
        let room = Room::new("r1", "Test");
        let call = c.call("Alice", &room, Recipient::new("bob", "Bob"));
        let chat = c.chat("Alice", &room, Recipient::new("bob", "Bob"), "Salut");
        assert_eq!(urgency(call.kind), "high");
        assert_eq!(urgency(chat.kind), "normal");
        assert_eq!(urgency(Kind::File), "low");
        assert_eq!(urgency(Kind::System), "high");
        let now = call.created_at;
        assert_eq!(ttl_secs(&call, DEFAULT_TTL, now), c.call_ttl.as_secs());
        assert_eq!(ttl_secs(&chat, DEFAULT_TTL, now), DEFAULT_TTL.as_secs());
        let later = now.plus(Duration::from_secs(3600));
        assert_eq!(ttl_secs(&call, DEFAULT_TTL, later), 0);
    }

    #[test]
    fn answers_are_classified() {
        let c = |s: u16| classify(StatusCode::from_u16(s).unwrap(), Some("3"), "").class();
        assert_eq!(c(404), ErrorClass::RecipientGone);
        assert_eq!(c(410), ErrorClass::RecipientGone);
        assert_eq!(c(401), ErrorClass::Misconfigured);
        assert_eq!(c(403), ErrorClass::Misconfigured);
        assert_eq!(c(400), ErrorClass::Permanent);
        assert_eq!(c(413), ErrorClass::Permanent);
        assert_eq!(c(429), ErrorClass::Transient);
        assert_eq!(c(503), ErrorClass::Transient);
    }

    #[test]
    fn the_payload_is_what_the_service_worker_shows() {
        let n = Composer::default().chat(
            "Alice",
            &Room::new("r1", "Test"),
            Recipient::new("bob", "Bob"),
            "Salut",
        );
        let p = payload(&n);
        assert_eq!(p["title"], n.title.as_str());
        assert_eq!(p["body"], "Salut");
        assert_eq!(p["url"], "mesh://room/r1");
        assert_eq!(p["kind"], "chat");
        assert_eq!(p["room"], "r1");
    }
}
