//! # mesh-notify-webhook
//!
//! Signed webhooks for mesh-notify: each notification is `POST`ed as JSON to the
//! recipient's `webhook` address (an https URL they registered) or to the
//! configured `url`, signed per the [Standard Webhooks] specification:
//!
//! * `webhook-id`: `msg_` and the notification id (the same on every retry, so
//!   the receiver can drop duplicates);
//! * `webhook-timestamp`: seconds since the Unix epoch;
//! * `webhook-signature`: `v1,` and the base64 HMAC-SHA256 of
//!   `{id}.{timestamp}.{body}` under the `whsec_…` secret.
//!
//! The body is `{"type":"notification.{kind}","timestamp":…,"data":{…}}`
//! ([`payload`]). Answers: 2xx delivered; 410 gone (a recipient's URL is
//! reported dead; the configured URL is a misconfiguration); 408, 425, 429 and
//! 5xx transient (honouring `Retry-After`); other 4xx permanent.
//!
//! Recipients' URLs must be https in the production profile (unless
//! `allow_insecure_http`) and may not name a loopback, private or link-local
//! address (unless `allow_private_addresses`): a user must not make the server
//! call its own admin port. Host names are not resolved for that check; block
//! internal networks at the egress too.
//!
//! [Standard Webhooks]: https://www.standardwebhooks.com
//!
//! ```no_run
//! use std::time::Duration;
//! use mesh_notify_core::{Address, AddressKind, Composer, Notifier, Recipient, Room};
//! use mesh_notify_webhook::{SigningKey, WebhookNotifier, WebhookPolicy};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let key = SigningKey::parse("whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")?;
//! let hooks = WebhookNotifier::new(None, key, WebhookPolicy::default(), Duration::from_secs(5))?;
//! let bob = Recipient::new("bob", "Bob")
//!     .with_address(Address::new(AddressKind::Webhook, "https://bob.example.com/mesh"));
//! let n = Composer::default().chat("Alice", &Room::new("r1", "Test"), bob, "Salut");
//! hooks.send(&n).await?;
//! # Ok(()) }
//! ```

mod config;
mod sign;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use mesh_notify_core::{
    parse_retry_after, AddressKind, Health, Notification, Notifier, NotifyError, Receipt, Timestamp,
};
use mesh_notify_provider_kit::http::{
    is_internal_address, is_transient_status, parse_url, ClientSettings, Transport, UrlRole,
};
use reqwest::StatusCode;
use serde_json::{json, Value};
use url::Url;

pub use config::WebhookConfig;
pub use sign::{SigningKey, SECRET_PREFIX};

/// Which recipients' URLs are accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct WebhookPolicy {
    /// Refuse `http://` URLs (the production profile, unless `allow_insecure_http`).
    pub https_only: bool,
    /// Accept URLs naming loopback, private, link-local or unspecified addresses
    /// (and `localhost`).
    pub allow_private_addresses: bool,
}

/// `YYYY-MM-DDTHH:MM:SSZ` for seconds since the Unix epoch.
pub fn rfc3339(secs: i64) -> String {
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // Civil from days (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// The JSON body for a notification: `type` (`notification.chat`, …),
/// `timestamp` (when it was created) and `data` (id, kind, title, body, format,
/// priority, click URL, room, recipient's user id).
pub fn payload(n: &Notification) -> Value {
    let mut data = json!({
        "id": n.id.to_string(),
        "kind": n.kind.as_str(),
        "title": n.title,
        "body": n.body,
        "format": n.format.content_type(),
        "priority": n.priority.get(),
        "recipient": n.recipient.user_id,
    });
    if let Some(url) = &n.click_url {
        data["click_url"] = json!(url);
    }
    if let Some(room) = &n.room {
        data["room"] = json!({ "id": room.id, "name": room.name });
    }
    json!({
        "type": format!("notification.{}", n.kind.as_str()),
        "timestamp": rfc3339(n.created_at.as_secs()),
        "data": data,
    })
}

/// Classifies a non-2xx answer. `own`: the URL is the recipient's.
pub fn classify(
    status: StatusCode,
    retry_after: Option<&str>,
    body: &str,
    own: bool,
) -> NotifyError {
    let excerpt: String = body.chars().take(200).collect();
    let what = format!("the webhook answered {status}: {excerpt}");
    match status.as_u16() {
        410 if own => NotifyError::gone(
            AddressKind::Webhook,
            format!("the recipient's webhook endpoint is gone ({what})"),
        ),
        410 => NotifyError::misconfigured(format!(
            "the configured webhook endpoint is gone; check providers.webhook.url ({what})"
        )),
        _ if is_transient_status(status) => NotifyError::Transient {
            reason: what,
            retry_after: retry_after.and_then(parse_retry_after),
        },
        _ => NotifyError::permanent(what),
    }
}

/// Sends signed webhooks.
pub struct WebhookNotifier {
    client: reqwest::Client,
    transport: Transport,
    url: Option<Url>,
    key: SigningKey,
    policy: WebhookPolicy,
    timeout: Duration,
}

impl std::fmt::Debug for WebhookNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WebhookNotifier")
            .field("url", &self.url.as_ref().map(origin))
            .field("key", &self.key)
            .field("policy", &self.policy)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// `scheme://host[:port]`: webhook URLs often carry a secret in their path.
fn origin(url: &Url) -> String {
    url.origin().ascii_serialization()
}

impl WebhookNotifier {
    /// A notifier signing with `key`, sending to recipients' `webhook` addresses
    /// and, for recipients without one, to `url`.
    pub fn new(
        url: Option<&str>,
        key: SigningKey,
        policy: WebhookPolicy,
        timeout: Duration,
    ) -> Result<Self, String> {
        let url = url.map(|u| parse_url(u, UrlRole::Endpoint)).transpose()?;
        let client = ClientSettings::new(timeout)
            .build()
            .map_err(|m| format!("cannot build the HTTP client: {m}"))?;
        Ok(Self {
            client,
            transport: Transport::new("the webhook endpoint", timeout),
            url,
            key,
            policy,
            timeout,
        })
    }

    /// Where `n` goes, and whether that is the recipient's own URL.
    fn target(&self, n: &Notification) -> Result<(Url, bool), NotifyError> {
        let Some(raw) = n
            .recipient
            .address(AddressKind::Webhook)
            .filter(|u| !u.is_empty())
        else {
            return self
                .url
                .clone()
                .map(|u| (u, false))
                .ok_or(NotifyError::Unreachable {
                    wanted: "webhook URL",
                });
        };
        // A recipient's URL: never quoted in errors (it may hold a secret).
        let url = parse_url(raw.expose(), UrlRole::Endpoint).map_err(|why| {
            NotifyError::permanent(format!(
                "the recipient's webhook URL cannot be used: {why} (not sent)"
            ))
        })?;
        if self.policy.https_only && url.scheme() != "https" {
            return Err(NotifyError::permanent(
                "the recipient's webhook URL is plain http://, refused in the production profile (not sent)",
            ));
        }
        if !self.policy.allow_private_addresses && is_internal_address(&url) {
            return Err(NotifyError::permanent(
                "the recipient's webhook URL names a loopback, private or link-local address, refused (not sent; see providers.webhook.allow_private_addresses)",
            ));
        }
        Ok((url, true))
    }
}

#[async_trait]
impl Notifier for WebhookNotifier {
    fn name(&self) -> &str {
        "webhook"
    }

    fn describe(&self) -> String {
        format!(
            "default url: {}, secret: set (redacted), https only: {}, private addresses: {}, timeout={:?}",
            self.url.as_ref().map_or("none".into(), |u| format!("{}/… (path redacted)", origin(u))),
            self.policy.https_only,
            if self.policy.allow_private_addresses { "allowed" } else { "refused" },
            self.timeout
        )
    }

    fn address_kind(&self, n: &Notification) -> Option<AddressKind> {
        n.recipient
            .address(AddressKind::Webhook)
            .filter(|u| !u.is_empty())
            .map(|_| AddressKind::Webhook)
    }

    fn can_reach(&self, n: &Notification) -> bool {
        self.address_kind(n).is_some() || self.url.is_some()
    }

    fn enforced_timeout(&self) -> Option<Duration> {
        Some(self.timeout)
    }

    async fn send(&self, n: &Notification) -> Result<Receipt, NotifyError> {
        let (url, own) = self.target(n)?;
        let body = serde_json::to_vec(&payload(n))
            .map_err(|e| NotifyError::permanent(format!("cannot encode the webhook body: {e}")))?;
        let id = format!("msg_{}", n.id.as_uuid().simple());
        let timestamp = Timestamp::now().as_secs();
        let signature = self.key.signature(&id, timestamp, &body);
        let started = Instant::now();
        let request = self
            .client
            .post(url)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("webhook-id", &id)
            .header("webhook-timestamp", timestamp.to_string())
            .header("webhook-signature", signature)
            .body(body);
        let answer = self.transport.send(request).await?;
        if !answer.status.is_success() {
            return Err(classify(
                answer.status,
                answer.retry_after_header(),
                &answer.body,
                own,
            ));
        }
        Ok(Receipt {
            provider: self.name().to_string(),
            message_id: Some(id),
            latency: started.elapsed(),
        })
    }

    /// Webhook receivers have no standard health endpoint: nothing is probed
    /// (a probe would be a message). Failures show in sends and the breaker.
    async fn health(&self) -> Health {
        Health::Healthy
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_notify_core::{ErrorClass, Kind};

    #[test]
    fn timestamps_are_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_614_265_330), "2021-02-25T15:02:10Z");
        assert_eq!(rfc3339(951_782_400), "2000-02-29T00:00:00Z");
    }

    #[test]
    fn the_payload_carries_the_notification() {
        let n = mesh_notify_core::Composer::default().chat(
            "Alice",
            &mesh_notify_core::Room::new("r1", "Test"),
            mesh_notify_core::Recipient::new("bob", "Bob"),
            "Salut",
        );
        let p = payload(&n);
        assert_eq!(p["type"], "notification.chat");
        assert_eq!(p["data"]["id"], n.id.to_string());
        assert_eq!(p["data"]["kind"], Kind::Chat.as_str());
        assert_eq!(p["data"]["body"], "Salut");
        assert_eq!(p["data"]["click_url"], "mesh://room/r1");
        assert_eq!(p["data"]["room"]["id"], "r1");
        assert_eq!(p["data"]["recipient"], "bob");
        assert!(p["timestamp"].as_str().unwrap().ends_with('Z'));
    }

    #[test]
    fn answers_are_classified() {
        let c =
            |s: u16, own| classify(StatusCode::from_u16(s).unwrap(), Some("5"), "x", own).class();
        assert_eq!(c(410, true), ErrorClass::RecipientGone);
        assert_eq!(c(410, false), ErrorClass::Misconfigured);
        for s in [400, 401, 403, 404, 413, 422] {
            assert_eq!(c(s, true), ErrorClass::Permanent, "{s}");
        }
        for s in [408, 429, 500, 502, 503] {
            assert_eq!(c(s, true), ErrorClass::Transient, "{s}");
        }
        match classify(StatusCode::TOO_MANY_REQUESTS, Some("5"), "", true) {
            NotifyError::Transient { retry_after, .. } => {
                assert_eq!(retry_after, Some(Duration::from_secs(5)))
            }
            other => panic!("{other:?}"),
        }
    }
}
