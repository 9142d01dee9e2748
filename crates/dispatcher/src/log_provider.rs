//! The built-in `log` provider: writes each notification to the log. It makes the
//! default configuration work with no push server at all, and is a last resort that
//! never fails.

use std::time::Instant;

use async_trait::async_trait;
use mesh_notify_core::{Health, Notification, Notifier, NotifyError, Receipt};

/// Writes notifications to the `mesh_notify::log_provider` tracing target at INFO.
#[derive(Debug, Default, Clone)]
pub struct LogNotifier;

#[async_trait]
impl Notifier for LogNotifier {
    fn name(&self) -> &str {
        "log"
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
