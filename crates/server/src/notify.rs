//! Turning chat events into queued notifications.
//!
//! With the SQLite outbox (the default) a chat message, its notifications and the
//! `pending_notifications` records commit in one transaction; the WebSocket handler
//! then only wakes a delivery worker and never waits on a provider.

use crate::db::{params, Db, Value};
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
    /// Rows are written by [`Queued::flush`] (several per statement) instead of
    /// one statement per notification.
    batched: bool,
    /// `pending_notifications` rows not yet written (batched).
    pending_rows: Vec<[Value; 5]>,
    /// `push_handoff` rows not yet written (batched).
    handoff_rows: Vec<[Value; 3]>,
}

/// Rows per multi-row `INSERT`.
const ROWS_PER_INSERT: usize = 100;

/// `(?1, ?2, ?3), (?4, ?5, ?6), …`: `rows` groups of `width` placeholders.
fn value_groups(rows: usize, width: usize) -> String {
    (0..rows)
        .map(|r| {
            let cols = (1..=width)
                .map(|c| format!("?{}", r * width + c))
                .collect::<Vec<_>>()
                .join(", ");
            format!("({cols})")
        })
        .collect::<Vec<_>>()
        .join(", ")
}

impl Queued {
    /// A collector whose rows wait for [`Queued::flush`] (a fan-out chunk: with
    /// PostgreSQL each statement is a network round trip, so 64 members' rows go
    /// in two statements, not 128).
    pub(crate) fn batched() -> Self {
        Self {
            batched: true,
            ..Self::default()
        }
    }

    /// Writes the rows [`Queued::push`] collected in batched mode; call it in the
    /// transaction, before the commit.
    pub(crate) fn flush(&mut self, tx: &Db<'_>) -> Result<(), AppError> {
        let pending = std::mem::take(&mut self.pending_rows);
        for chunk in pending.chunks(ROWS_PER_INSERT) {
            let values: Vec<Value> = chunk.iter().flatten().cloned().collect();
            tx.execute(
                &format!(
                    "INSERT INTO pending_notifications (notification_id, user_id, room_id, kind, created_at)
                     VALUES {} ON CONFLICT DO NOTHING",
                    value_groups(chunk.len(), 5)
                ),
                &values[..],
            )?;
        }
        let handoff = std::mem::take(&mut self.handoff_rows);
        for chunk in handoff.chunks(ROWS_PER_INSERT) {
            let values: Vec<Value> = chunk.iter().flatten().cloned().collect();
            tx.execute(
                &format!(
                    "INSERT INTO push_handoff (id, body, created_at) VALUES {} ON CONFLICT DO NOTHING",
                    value_groups(chunk.len(), 3)
                ),
                &values[..],
            )?;
        }
        Ok(())
    }

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
            if self.batched {
                self.pending_rows.push([
                    Value::Text(n.id.to_string()),
                    Value::Int(user_id),
                    Value::Int(room_id),
                    Value::Text(n.kind.as_str().into()),
                    Value::Int(n.created_at.as_millis()),
                ]);
            } else {
                tx.execute(
                "INSERT INTO pending_notifications (notification_id, user_id, room_id, kind, created_at)
                 VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT DO NOTHING",
                params![n.id.to_string(), user_id, room_id, n.kind.as_str(), n.created_at.as_millis()],
            )?;
            }
        }
        match path {
            NotifyPath::SameTransaction => {
                crate::outbox::enqueue_in_tx(tx, &n, Timestamp::now())?;
                self.in_tx += 1;
            }
            NotifyPath::Handoff => {
                let body = serde_json::to_string(&n)
                    .map_err(|e| AppError::internal(format!("encoding a notification: {e}")))?;
                let now = crate::store::now_ms();
                if self.batched {
                    self.handoff_rows.push([
                        Value::Text(n.id.to_string()),
                        Value::Text(body),
                        Value::Int(now),
                    ]);
                } else {
                    tx.execute(
                        "INSERT INTO push_handoff (id, body, created_at) VALUES (?1, ?2, ?3)
                         ON CONFLICT DO NOTHING",
                        params![n.id.to_string(), body, now],
                    )?;
                }
                self.handed_off = true;
                self.to_submit.push(n);
            }
            NotifyPath::Submit => self.to_submit.push(n),
        }
        Ok(())
    }

    /// After commit: wakes a worker, or submits. Never waits on a provider.
    pub(crate) async fn hand_over(self, state: &AppState) {
        if !self.pending_rows.is_empty() || !self.handoff_rows.is_empty() {
            // A batched collector handed over without `flush`: the rows were
            // never written (a bug); the notifications still go out below.
            tracing::error!("queued rows were not flushed before the commit");
        }
        if self.in_tx > 0 {
            metrics::counter!("mesh_server_notifications_queued_total")
                .increment(self.in_tx as u64);
            state.dispatcher.notify_enqueued();
        }
        if self.to_submit.is_empty() {
            return;
        }
        // One write to the outbox for the lot (a fan-out chunk is up to 64).
        let ids: Vec<String> = self.to_submit.iter().map(|n| n.id.to_string()).collect();
        let count = ids.len();
        let submitted = match state.dispatcher.submit_batch(self.to_submit).await {
            Ok(_) => {
                metrics::counter!("mesh_server_notifications_queued_total").increment(count as u64);
                ids
            }
            // With hand-off rows they are submitted again by the sweep.
            Err(e) => {
                tracing::error!(count, error = %e, "could not queue notifications");
                Vec::new()
            }
        };
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
    // One statement per 100 ids (a fan-out chunk is at most 64).
    for chunk in ids.chunks(100) {
        let list = (1..=chunk.len())
            .map(|i| format!("?{i}"))
            .collect::<Vec<_>>()
            .join(", ");
        db.execute(
            &format!("DELETE FROM push_handoff WHERE id IN ({list})"),
            chunk,
        )?;
    }
    Ok(())
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
        let now = crate::store::now_ms();
        let cutoff = now - HANDOFF_STALE_MS;
        let rows = state
            .store
            .call_background(move |db| {
                // Taken with a lease (their time moved to now): another instance's
                // sweep leaves them alone for HANDOFF_STALE_MS, so one instance
                // resubmits each row.
                let lock = match db.backend() {
                    crate::db::Backend::Sqlite => "",
                    crate::db::Backend::Postgres => " FOR UPDATE SKIP LOCKED",
                };
                Ok(db.query_map(
                    &format!(
                        "UPDATE push_handoff SET created_at = ?2 WHERE id IN (
                             SELECT id FROM push_handoff WHERE created_at < ?1
                             ORDER BY created_at LIMIT 500{lock})
                         RETURNING id, body"
                    ),
                    params![cutoff, now],
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
