//! # mesh-notify-ntfy
//!
//! The [ntfy](https://ntfy.sh) provider for mesh-notify (ntfy.sh or a self-hosted
//! server): each notification is published as JSON to the server's root URL
//! (`POST /` with `topic`, `title`, `message`, `priority`, `tags`, `click`,
//! `markdown`, as ntfy's "publish as JSON" documents), with the access token in
//! `Authorization: Bearer` when one is configured.
//!
//! * The topic is the recipient's `ntfy` address (a user subscribes to their own
//!   topic in the ntfy app), else the configured default `topic`. Topics are
//!   treated as secrets (on a public server the topic *is* the password): they
//!   never appear in logs, `Debug` or errors.
//! * Priority: mesh-notify's 0–10 onto ntfy's 1–5 ([`ntfy_priority`]): 0 → 1
//!   (min), 1–3 → 2 (low), 4–5 → 3 (default), 6–7 → 4 (high), 8–10 → 5 (max).
//!   A chat (6) is high, a call (8) max, a file (5) default.
//! * Click: the `mesh://room/…` URL; tags `mesh` and the kind.
//! * Answers are classified from ntfy's error JSON `{"code","http","error"}`
//!   ([`classify`]): 429 is transient (with `Retry-After` when given), except
//!   `42909` (too many failed logins: the token is wrong) which is a
//!   misconfiguration; 401 misconfigured; 5xx transient.
//!
//! ```no_run
//! use std::time::Duration;
//! use mesh_notify_core::{Address, AddressKind, Composer, Notifier, Recipient, Room};
//! use mesh_notify_ntfy::NtfyNotifier;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let ntfy = NtfyNotifier::new("https://ntfy.sh", None, None, Duration::from_secs(5))?;
//! let bob = Recipient::new("bob", "Bob").with_address(Address::new(AddressKind::Ntfy, "bob-3f9a2c"));
//! let n = Composer::default().chat("Alice", &Room::new("r1", "Test"), bob, "Salut");
//! let receipt = ntfy.send(&n).await?;
//! println!("published as ntfy message {:?}", receipt.message_id);
//! # Ok(()) }
//! ```

mod classify;
mod config;

use std::time::{Duration, Instant};

use async_trait::async_trait;
use mesh_notify_core::{
    AddressKind, BodyFormat, Health, Notification, Notifier, NotifyError, Priority, Receipt, Secret,
};
use mesh_notify_provider_kit::http::{parse_url, token_header, ClientSettings, Transport, UrlRole};
use serde_json::{json, Value};
use url::Url;

pub use classify::classify;
pub use config::{NtfyConfig, DEFAULT_URL};

/// ntfy's topic rule: 1 to 64 of `A-Z a-z 0-9 - _`.
pub fn is_valid_topic(topic: &str) -> bool {
    (1..=64).contains(&topic.len())
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// mesh-notify's 0–10 priority on ntfy's 1 (min) to 5 (max).
pub fn ntfy_priority(p: Priority) -> u8 {
    match p.get() {
        0 => 1,
        1..=3 => 2,
        4..=5 => 3,
        6..=7 => 4,
        _ => 5,
    }
}

/// The JSON published for a notification to `topic`.
pub fn publish_body(n: &Notification, topic: &str) -> Value {
    let message = if n.body.trim().is_empty() {
        n.title.as_str()
    } else {
        n.body.as_str()
    };
    let mut body = json!({
        "topic": topic,
        "title": n.title,
        "message": message,
        "priority": ntfy_priority(n.priority),
        "tags": ["mesh", n.kind.as_str()],
    });
    if let Some(url) = &n.click_url {
        body["click"] = json!(url);
    }
    if n.format == BodyFormat::Markdown {
        body["markdown"] = json!(true);
    }
    body
}

/// Publishes notifications to an ntfy server.
pub struct NtfyNotifier {
    client: reqwest::Client,
    transport: Transport,
    base_url: Url,
    topic: Option<Secret>,
    token: Option<Secret>,
    timeout: Duration,
}

impl std::fmt::Debug for NtfyNotifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NtfyNotifier")
            .field("url", &self.base_url.as_str())
            .field("topic", &self.topic)
            .field("token", &self.token)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Why an ntfy notifier could not be built (the key below `providers.ntfy`, and
/// what is wrong).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NtfyError {
    /// The key below `providers.ntfy`.
    pub key: &'static str,
    /// What is wrong (never a secret).
    pub message: String,
}

impl std::fmt::Display for NtfyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "invalid providers.ntfy.{}: {}", self.key, self.message)
    }
}

impl std::error::Error for NtfyError {}

impl NtfyNotifier {
    /// A notifier for the server at `base_url`, with an optional default topic
    /// (for recipients without an `ntfy` address) and access token.
    pub fn new(
        base_url: &str,
        topic: Option<Secret>,
        token: Option<Secret>,
        timeout: Duration,
    ) -> Result<Self, NtfyError> {
        let err = |key, message: String| NtfyError { key, message };
        let base_url = parse_url(base_url, UrlRole::Base).map_err(|m| err("url", m))?;
        if let Some(t) = &topic {
            if !is_valid_topic(t.expose().trim()) {
                return Err(err(
                    "topic",
                    "an ntfy topic is 1 to 64 letters, digits, `-` or `_`".into(),
                ));
            }
        }
        if let Some(t) = &token {
            if token_header("Bearer ", t).is_none() {
                return Err(err(
                    "token",
                    "the token contains characters that cannot go in an Authorization header"
                        .into(),
                ));
            }
        }
        let client = ClientSettings::new(timeout)
            .build()
            .map_err(|m| err("url", format!("cannot build the HTTP client: {m}")))?;
        Ok(Self {
            client,
            transport: Transport::new("ntfy", timeout).with_endpoint(&base_url),
            base_url,
            topic,
            token,
            timeout,
        })
    }

    /// The server's base URL.
    pub fn url(&self) -> &str {
        self.base_url.as_str()
    }

    /// The topic for `n` and whether it is the recipient's own.
    fn topic_for<'a>(&'a self, n: &'a Notification) -> Option<(&'a Secret, bool)> {
        match n
            .recipient
            .address(AddressKind::Ntfy)
            .filter(|t| !t.is_empty())
        {
            Some(t) => Some((t, true)),
            None => self.topic.as_ref().map(|t| (t, false)),
        }
    }

    fn request(
        &self,
        method: reqwest::Method,
        url: Url,
    ) -> Result<reqwest::RequestBuilder, NotifyError> {
        let mut request = self.client.request(method, url);
        if let Some(token) = &self.token {
            let value = token_header("Bearer ", token).ok_or_else(|| {
                NotifyError::misconfigured("the ntfy token cannot go in an Authorization header")
            })?;
            request = request.header(reqwest::header::AUTHORIZATION, value);
        }
        Ok(request)
    }
}

#[async_trait]
impl Notifier for NtfyNotifier {
    fn name(&self) -> &str {
        "ntfy"
    }

    fn describe(&self) -> String {
        format!(
            "url={}, default topic: {}, token: {}, timeout={:?}",
            self.base_url,
            if self.topic.is_some() {
                "set (redacted)"
            } else {
                "none"
            },
            if self.token.is_some() {
                "set (redacted)"
            } else {
                "none"
            },
            self.timeout
        )
    }

    /// The recipient's own topics when they registered some, else the default
    /// topic (one destination).
    fn address_kind(&self, n: &Notification) -> Option<AddressKind> {
        n.recipient
            .address(AddressKind::Ntfy)
            .filter(|t| !t.is_empty())
            .map(|_| AddressKind::Ntfy)
    }

    fn can_reach(&self, n: &Notification) -> bool {
        self.topic_for(n).is_some()
    }

    fn enforced_timeout(&self) -> Option<Duration> {
        Some(self.timeout)
    }

    async fn send(&self, n: &Notification) -> Result<Receipt, NotifyError> {
        let (topic, own) = self.topic_for(n).ok_or(NotifyError::Unreachable {
            wanted: "ntfy topic",
        })?;
        let topic = topic.expose().trim();
        if !is_valid_topic(topic) {
            // Not proven dead (ntfy topics do not die): kept, never sent.
            return Err(NotifyError::permanent(
                "the recipient's ntfy topic is not a valid topic (1 to 64 letters, digits, `-` or `_`; not sent)",
            ));
        }
        let started = Instant::now();
        let request = self
            .request(reqwest::Method::POST, self.base_url.clone())?
            .json(&publish_body(n, topic));
        let answer = self.transport.send(request).await?;
        if !answer.status.is_success() {
            return Err(classify(
                answer.status,
                answer.retry_after_header(),
                &answer.body,
                own,
            ));
        }
        let message_id = serde_json::from_str::<Value>(&answer.body)
            .ok()
            .and_then(|v| v.get("id").and_then(Value::as_str).map(str::to_owned));
        if message_id.is_none() {
            tracing::warn!("ntfy accepted the message but its answer had no id");
        }
        Ok(Receipt {
            provider: self.name().to_string(),
            message_id,
            latency: started.elapsed(),
        })
    }

    async fn health(&self) -> Health {
        let url = match self.base_url.join("v1/health") {
            Ok(url) => url,
            Err(e) => return Health::Unhealthy(format!("cannot build the ntfy health URL: {e}")),
        };
        let request = match self.request(reqwest::Method::GET, url) {
            Ok(r) => r,
            Err(e) => return Health::Unhealthy(e.to_string()),
        };
        match self.transport.send(request).await {
            Err(e) => Health::Unhealthy(e.to_string()),
            Ok(a) => {
                let healthy = serde_json::from_str::<Value>(&a.body)
                    .ok()
                    .and_then(|v| v.get("healthy").and_then(Value::as_bool));
                match (a.status.is_success(), healthy) {
                    (true, Some(true)) => Health::Healthy,
                    _ => Health::Unhealthy(format!("ntfy health {}: {}", a.status, a.excerpt(200))),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_notify_core::{Composer, Kind, Recipient, Room};

    #[test]
    fn priorities_map_onto_ntfys_five_levels() {
        let p = |v| ntfy_priority(Priority::new(v).unwrap());
        assert_eq!(
            [p(0), p(1), p(3), p(4), p(5), p(6), p(7), p(8), p(10)],
            [1, 2, 2, 3, 3, 4, 4, 5, 5]
        );
        // The seed's kinds: chat high, call max, file default, system high.
        for (kind, want) in [
            (Kind::Chat, 4),
            (Kind::Call, 5),
            (Kind::File, 3),
            (Kind::System, 4),
        ] {
            assert_eq!(ntfy_priority(kind.default_priority()), want, "{kind}");
        }
    }

    #[test]
    fn the_body_carries_title_message_click_tags_and_markdown() {
        let n = Composer::default().chat(
            "Alice",
            &Room::new("r1", "Test"),
            Recipient::new("bob", "Bob"),
            "Salut",
        );
        let b = publish_body(&n, "bob-topic");
        assert_eq!(b["topic"], "bob-topic");
        assert_eq!(b["title"], n.title.as_str());
        assert_eq!(b["message"], "Salut");
        assert_eq!(b["priority"], 4);
        assert_eq!(b["click"], "mesh://room/r1");
        assert_eq!(b["tags"], json!(["mesh", "chat"]));
        assert!(b.get("markdown").is_none());
        let mut md = n.clone();
        md.format = BodyFormat::Markdown;
        assert_eq!(publish_body(&md, "t")["markdown"], true);
    }

    #[test]
    fn topics_follow_ntfys_rule() {
        assert!(is_valid_topic("bob_3F9a-2c"));
        assert!(!is_valid_topic(""));
        assert!(!is_valid_topic("a/b"));
        assert!(!is_valid_topic(&"x".repeat(65)));
    }

    #[test]
    fn debug_and_describe_hide_topic_and_token() {
        let n = NtfyNotifier::new(
            "https://ntfy.example.com",
            Some(Secret::new("secret-topic")),
            Some(Secret::new("tk_secret")),
            Duration::from_secs(5),
        )
        .unwrap();
        for text in [format!("{n:?}"), n.describe()] {
            assert!(!text.contains("secret-topic"), "{text}");
            assert!(!text.contains("tk_secret"), "{text}");
        }
    }
}
