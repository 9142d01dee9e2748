//! The trait every provider implements.

use std::time::Duration;

use async_trait::async_trait;
use serde::Serialize;

use crate::{Notification, NotifyError};

/// Proof of delivery from one provider.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Receipt {
    /// Which provider delivered.
    pub provider: String,
    /// The provider's id for the message (Gotify message id, FCM message name,
    /// APNs `apns-id`, SMTP `Message-ID`), when it returns one.
    pub message_id: Option<String>,
    /// How long the provider took.
    pub latency: Duration,
}

/// A provider's health, as seen by its own health check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "status", content = "detail", rename_all = "lowercase")]
pub enum Health {
    /// Working.
    Healthy,
    /// Working, with a warning (e.g. Redis without AOF).
    Degraded(String),
    /// Not working.
    Unhealthy(String),
}

impl Health {
    /// Whether it can deliver.
    pub fn is_usable(&self) -> bool {
        !matches!(self, Health::Unhealthy(_))
    }
}

/// A notification provider (Gotify, FCM, APNs, SMTP, ...).
///
/// A provider sends once and classifies the answer; it never sleeps or retries on
/// its own. Retries, fallback, circuit breaking and queueing are the dispatcher's.
#[async_trait]
pub trait Notifier: Send + Sync {
    /// Stable name used in routes (`gotify`, `fcm`, ...).
    fn name(&self) -> &str;

    /// A one-line description for operators (endpoint, whether a default token is
    /// set). Must never include secrets.
    fn describe(&self) -> String {
        self.name().to_string()
    }

    /// Whether this provider has a way to reach the notification's recipient (an
    /// address of its kind, or a default destination). The dispatcher skips
    /// providers that answer `false`.
    fn can_reach(&self, notification: &Notification) -> bool {
        let _ = notification;
        true
    }

    /// The kind of recipient address this provider sends `notification` to, when it
    /// sends to one of the recipient's own addresses (FCM tokens, APNs tokens,
    /// email addresses, a recipient's Gotify token). The dispatcher then fans the
    /// notification out to **every** address of that kind (every device), each
    /// with its own result. `None` (the default): the provider has one destination
    /// for this notification (e.g. Gotify's default application token).
    fn address_kind(&self, notification: &Notification) -> Option<crate::AddressKind> {
        let _ = notification;
        None
    }

    /// Whether a delivery by this provider reaches a person. The built-in `log`
    /// provider answers `false`: the dispatcher then counts it as the delivery
    /// only for notifications that no real provider of the route can reach, and
    /// otherwise keeps them queued until a real provider delivers them.
    fn reaches_people(&self) -> bool {
        true
    }

    /// `Some(t)` when every [`send`](Self::send) is guaranteed to finish within
    /// `t` on its own (one HTTP request under a client timeout that covers the
    /// whole exchange, say). The dispatcher then does not arm a second timer
    /// around the send when `t` is within its own send timeout (a timer per send
    /// measurably costs latency at low concurrency; see docs/benchmarks.md).
    /// The default, `None`, makes the dispatcher bound every send itself.
    fn enforced_timeout(&self) -> Option<std::time::Duration> {
        None
    }

    /// Sends one notification.
    async fn send(&self, notification: &Notification) -> Result<Receipt, NotifyError>;

    /// Checks that the provider is reachable and its credentials are accepted.
    async fn health(&self) -> Health;
}
