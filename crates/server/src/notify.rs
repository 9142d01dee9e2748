//! Turning chat events into queued notifications.
//!
//! With the SQLite outbox (the default) a chat message, its notifications and the
//! `pending_notifications` records commit in one transaction; the WebSocket handler
//! then only wakes a delivery worker and never waits on a provider.

use crate::rusqlite::{params, Transaction};
use mesh_notify_core::{Kind, Notification, Timestamp};

use crate::error::AppError;
use crate::state::{AppState, NotifyPath};

/// Notifications collected inside a transaction, handed over after commit.
#[derive(Default)]
pub(crate) struct Queued {
    /// How many were written to the outbox inside the transaction.
    pub in_tx: usize,
    /// To `submit` after commit (non-SQLite outboxes).
    pub to_submit: Vec<Notification>,
}

impl Queued {
    /// Queues `n` for the room `room_id` inside `tx`.
    pub(crate) fn push(
        &mut self,
        tx: &Transaction<'_>,
        path: NotifyPath,
        room_id: i64,
        n: Notification,
    ) -> Result<(), AppError> {
        if matches!(n.kind, Kind::Chat | Kind::File) {
            let user_id: i64 = n.recipient.user_id.parse().unwrap_or_default();
            tx.prepare_cached(
                "INSERT OR IGNORE INTO pending_notifications (notification_id, user_id, room_id, kind, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![n.id.to_string(), user_id, room_id, n.kind.as_str(), n.created_at.as_millis()])?;
        }
        match path {
            NotifyPath::SameTransaction => {
                crate::outbox::enqueue_in_tx(tx, &n, Timestamp::now())?;
                self.in_tx += 1;
            }
            NotifyPath::Submit => self.to_submit.push(n),
        }
        Ok(())
    }

    /// After commit: wakes a worker, or submits. Never waits on a provider.
    pub(crate) async fn hand_over(self, state: &AppState) {
        if self.in_tx > 0 {
            metrics::counter!("mesh_server_notifications_queued_total")
                .increment(self.in_tx as u64);
            state.dispatcher.notify_enqueued();
        }
        for n in self.to_submit {
            let id = n.id;
            match state.dispatcher.submit(n).await {
                Ok(_) => metrics::counter!("mesh_server_notifications_queued_total").increment(1),
                Err(e) => tracing::error!(id = %id, error = %e, "could not queue a notification"),
            }
        }
    }
}

/// Cancels queued chat/file notifications of `user_id` for `room_id`: the ids the
/// rejoin took from `pending_notifications` (see `ws::join`), after that rejoin was
/// committed. Best effort: an entry a delivery worker has already claimed may still
/// be delivered (documented in docs/decisions.md).
pub(crate) async fn cancel_queued(state: &AppState, user_id: i64, room_id: i64, ids: Vec<String>) {
    if ids.is_empty() {
        return;
    }
    let Some(outbox) = state.dispatcher.outbox() else {
        return;
    };
    for id in ids {
        let Ok(nid) = id.parse() else { continue };
        match outbox.cancel(nid).await {
            Ok(true) => {
                metrics::counter!("mesh_server_notifications_cancelled_total").increment(1);
                tracing::debug!(id = %id, user = user_id, room = room_id, "queued notification cancelled: recipient is back");
            }
            Ok(false) => {}
            Err(e) => {
                tracing::warn!(id = %id, error = %e, "could not cancel a queued notification")
            }
        }
    }
}
