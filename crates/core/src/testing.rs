//! Test helpers for users of mesh-notify (feature `test-util`).

mod memory_outbox;
pub mod outbox_conformance;

pub use memory_outbox::MemoryOutbox;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use crate::{Health, Notification, Notifier, NotifyError, Receipt};

/// A provider that records what it is asked to send and answers from a script
/// (`Ok` once the script is empty). Clones share the same record.
#[derive(Clone, Default)]
pub struct RecordingNotifier {
    name: String,
    sent: Arc<Mutex<Vec<Notification>>>,
    script: Arc<Mutex<VecDeque<Result<(), NotifyError>>>>,
}

impl RecordingNotifier {
    /// A recorder called `name`.
    pub fn new(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            ..Self::default()
        }
    }

    /// Queues the answer for the next call to `send`.
    pub fn push_answer(&self, answer: Result<(), NotifyError>) {
        self.script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_back(answer);
    }

    /// Everything delivered so far (failed sends are not recorded).
    pub fn delivered(&self) -> Vec<Notification> {
        self.sent
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

#[async_trait]
impl Notifier for RecordingNotifier {
    fn name(&self) -> &str {
        &self.name
    }

    async fn send(&self, notification: &Notification) -> Result<Receipt, NotifyError> {
        let answer = self
            .script
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop_front()
            .unwrap_or(Ok(()));
        answer?;
        let mut sent = self.sent.lock().unwrap_or_else(PoisonError::into_inner);
        sent.push(notification.clone());
        Ok(Receipt {
            provider: self.name.clone(),
            message_id: Some(sent.len().to_string()),
            latency: Duration::ZERO,
        })
    }

    async fn health(&self) -> Health {
        Health::Healthy
    }
}
