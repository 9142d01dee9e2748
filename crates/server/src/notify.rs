//! Turning chat events into queued notifications.
//!
//! With the SQLite outbox (the default) a chat message, its notifications and the
//! `pending_notifications` records commit in one transaction; the WebSocket handler
//! then only wakes a delivery worker and never waits on a provider.

use crate::db::{params, Db};
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
    /// Whether `to_submit` has rows in `push_handoff` to delete once submitted.
    pub handed_off: bool,
}

impl Queued {
    /// Queues `n` for the room `room_id` inside `tx`.
    pub(crate) fn push(
        &mut self,
        tx: &Db<'_>,
        path: NotifyPath,
        room_id: i64,
        n: Notification,
    ) -> Result<(), AppError> {
        if matches!(n.kind, Kind::Chat | Kind::File) {
            let user_id: i64 = n.recipient.user_id.parse().unwrap_or_default();
            tx.execute(
                "INSERT INTO pending_notifications (notification_id, user_id, room_id, kind, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                params![n.id.to_string(), user_id, room_id, n.kind.as_str(), n.created_at.as_millis()],
            )?;
        }
        match path {
            NotifyPath::SameTransaction => {
                crate::outbox::enqueue_in_tx(tx, &n, Timestamp::now())?;
                self.in_tx += 1;
            }
            NotifyPath::Handoff => {
                let body = serde_json::to_string(&n)
                    .map_err(|e| AppError::internal(format!("encoding a notification: {e}")))?;
                tx.execute(
                    "INSERT INTO push_handoff (id, body, created_at) VALUES (?1, ?2, ?3)
                     ON CONFLICT DO NOTHING",
                    params![n.id.to_string(), body, crate::store::now_ms()],
                )?;
                self.handed_off = true;
                self.to_submit.push(n);
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
        let mut submitted = Vec::with_capacity(self.to_submit.len());
        for n in self.to_submit {
            let id = n.id;
            match state.dispatcher.submit(n).await {
                Ok(_) => {
                    metrics::counter!("mesh_server_notifications_queued_total").increment(1);
                    submitted.push(id.to_string());
                }
                // With a hand-off row it is submitted again by the sweep.
                Err(e) => tracing::error!(id = %id, error = %e, "could not queue a notification"),
            }
        }
        if self.handed_off && !submitted.is_empty() {
            if let Err(e) = state
                .store
                .call_background(move |db| delete_handoff(db, &submitted).map_err(AppError::from))
                .await
            {
                tracing::warn!(error = %e.message, "hand-off rows not deleted; the sweep submits them again");
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

/// Deletes the hand-off rows of notifications the outbox now holds.
fn delete_handoff(db: &Db<'_>, ids: &[String]) -> Result<(), crate::db::DbError> {
    let tx = db.transaction()?;
    for id in ids {
        tx.execute("DELETE FROM push_handoff WHERE id = ?1", params![id])?;
    }
    tx.commit()
}

/// How old a hand-off row must be before the sweep submits it: older than any
/// hand-over still in progress (a submit to Redis takes milliseconds).
const HANDOFF_STALE_MS: i64 = 10_000;

/// Submits the hand-off rows a crash (or a Redis outage) left behind, every
/// `every`, the first time at once. Any instance may sweep any row: the Redis outbox
/// keeps one entry per notification id.
pub(crate) async fn sweep_handoff(
    state: AppState,
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    loop {
        let cutoff = crate::store::now_ms() - HANDOFF_STALE_MS;
        let rows = state
            .store
            .call_background(move |db| {
                Ok(db.query_map(
                    "SELECT id, body FROM push_handoff WHERE created_at < ?1 ORDER BY created_at LIMIT 500",
                    params![cutoff],
                    |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)),
                )?)
            })
            .await;
        match rows {
            Ok(rows) if !rows.is_empty() => {
                let mut queued = Queued {
                    handed_off: true,
                    ..Queued::default()
                };
                for (id, body) in rows {
                    match serde_json::from_str::<Notification>(&body) {
                        Ok(n) => queued.to_submit.push(n),
                        Err(e) => {
                            tracing::error!(id = %id, error = %e, "unreadable hand-off row kept");
                        }
                    }
                }
                let n = queued.to_submit.len();
                queued.hand_over(&state).await;
                tracing::info!(count = n, "hand-off rows left behind submitted again");
                metrics::counter!("mesh_server_handoff_resubmitted_total").increment(n as u64);
                if n >= 500 {
                    continue;
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e.message, "hand-off sweep failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
}
