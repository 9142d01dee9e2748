//! The built-in `log` provider: writes each notification to the log. It makes the
//! default configuration work with no push server at all.
//!
//! Writing to a log is not a delivery: while a real provider of the route can reach
//! the recipient, the dispatcher does not count the log as delivered (the
//! notification waits in the outbox for the real provider). Only a log provider
//! built with [`LogNotifier::terminal`] (`providers.log.terminal = true`) always
//! counts.

use std::time::Instant;

use async_trait::async_trait;
use mesh_notify_core::{Health, Notification, Notifier, NotifyError, Receipt};

/// Writes notifications to the `mesh_notify::log_provider` tracing target at INFO.
#[derive(Debug, Default, Clone)]
pub struct LogNotifier {
    terminal: bool,
}

impl LogNotifier {
    /// The default: counts as delivery only where no real provider can deliver.
    pub fn new() -> Self {
        Self::default()
    }

    /// Always counts as delivery, even where a real provider could deliver later
    /// (a notification written to the log while Gotify is down is then never sent
    /// to Gotify).
    pub fn terminal() -> Self {
        Self { terminal: true }
    }
}

#[async_trait]
impl Notifier for LogNotifier {
    fn name(&self) -> &str {
        "log"
    }

    fn reaches_people(&self) -> bool {
        self.terminal
    }

    async fn send(&self, n: &Notification) -> Result<Receipt, NotifyError> {
        let started = Instant::now();
        tracing::info!(
            target: "mesh_notify::log_provider",
            id = %n.id,
            kind = %n.kind,
            recipient = %n.recipient.user_id,
            priority = n.priority.get(),
            click_url = n.click_url.as_deref().unwrap_or(""),
            title = %n.title,
            body = %n.body,
            "notification"
        );
        Ok(Receipt {
            provider: "log".into(),
            message_id: Some(n.id.to_string()),
            latency: started.elapsed(),
        })
    }

    async fn health(&self) -> Health {
        Health::Healthy
    }
}
