//! Write your own provider: implement `Notifier`, classify failures, route through it.

use std::sync::Arc;
use std::time::Instant;

use async_trait::async_trait;
use mesh_notify::Dispatcher;
use mesh_notify_core::{
    Composer, Health, Kind, Notification, Notifier, NotifyError, Receipt, Recipient, Room,
};

/// Prints notifications to stdout, refusing empty titles as a permanent error.
struct StdoutNotifier;

#[async_trait]
impl Notifier for StdoutNotifier {
    fn name(&self) -> &str {
        "stdout"
    }

    async fn send(&self, n: &Notification) -> Result<Receipt, NotifyError> {
        let started = Instant::now();
        if n.title.is_empty() {
            return Err(NotifyError::permanent("empty title"));
        }
        println!("[{}] {} — {}", n.priority.get(), n.title, n.body);
        Ok(Receipt {
            provider: self.name().into(),
            message_id: Some(n.id.to_string()),
            latency: started.elapsed(),
        })
    }

    async fn health(&self) -> Health {
        Health::Healthy
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dispatcher = Dispatcher::builder()
        .notifier(Arc::new(StdoutNotifier))
        .route(Kind::File, ["stdout"])
        .build()?;
    let n = Composer::default().file(
        "Alice",
        &Room::new("r1", "Projets"),
        Recipient::new("bob", "Bob"),
        "plan.pdf",
    );
    let outcome = dispatcher.dispatch(n).await;
    assert!(outcome.is_delivered());
    Ok(())
}
