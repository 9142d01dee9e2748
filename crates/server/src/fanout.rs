//! Deferred fan-out of chat and file pushes.
//!
//! A chat message commits with **one** `push_fanout` row that names the members who
//! were absent at that moment (decided with the store's connection held, like the
//! live event). This task then turns the row into per-member pushes (preferences,
//! coalescing, outbox entry) in short transactions of at most [`CHUNK`] members,
//! ended early whenever a chat message waits for the connection, right after the
//! commit. The sender's transaction therefore costs the same with 100
//! absent members as with none, and a chat message never waits for 100 outbox
//! inserts (issue 16: measured in `docs/benchmarks.md`).
//!
//! Nothing is lost: the row commits with the message (`synchronous=FULL`), and each
//! chunk removes its members from the row in the same transaction that writes their
//! outbox entries. A crash between the two leaves the row (or its rest) for the next
//! start, which expands it again. The chunk transactions commit with
//! `synchronous=NORMAL`: in a power cut they may roll back, and then the row is still
//! there with those members: expanded again, never lost.
//!
//! A member who comes back into the room before their part of a row is expanded is
//! taken off the row by that rejoin ([`forget_member`], in the rejoin's
//! transaction), as a rejoin cancels the pushes already queued: they see the
//! message in the room. A member who left the room is skipped. Anyone else on the
//! row gets the push, including a member whose connection was too slow to take
//! the live event.
//!
//! At-least-once, like the outbox's relaxed acknowledgements: after a power cut a
//! chunk whose commit was lost is expanded again (possibly after its pushes went
//! out).

use std::time::Duration;

use mesh_notify_core::{Kind, Room};
use tokio::sync::{watch, Notify};

use crate::db::{params, Backend, Db, DbError};
use crate::error::AppError;
use crate::notify::Queued;
use crate::state::AppState;
use crate::store;

/// At most this many members per transaction. A chunk also ends early, after
/// [`MIN_CHUNK`] members, as soon as a chat message waits for the connection
/// ([`ChatWaiting`]), so a message waits for a few members' expansion and a
/// commit, never for a whole chunk (measured in
/// `server_load`: fixed chunks of 16 members held the connection ~0.5 ms on
/// average, of 8 ~0.35 ms; see `docs/benchmarks.md`).
pub(crate) const CHUNK: usize = 64;

/// A chunk expands at least this many members even when a chat message waits: the
/// row's rest is rewritten once per chunk, and one member per chunk would make a
/// large room's row cost O(n²) under sustained chat (8 members held the connection
/// ~0.35 ms on average in `server_load`).
pub(crate) const MIN_CHUNK: usize = 8;

/// How many chat messages are waiting for the store's connection. The fan-out
/// checks it between members and lets them in first.
#[derive(Default)]
pub(crate) struct ChatWaiting(std::sync::atomic::AtomicUsize);

/// Counts one waiting chat message until dropped (when its transaction starts).
pub(crate) struct Waiting(AppState);

impl ChatWaiting {
    /// A chat message is about to ask for `state`'s store connection.
    pub(crate) fn enter(state: &AppState) -> Waiting {
        state
            .fanout
            .chat_waiting
            .0
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Waiting(state.clone())
    }

    fn any(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::SeqCst) > 0
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        self.0
            .fanout
            .chat_waiting
            .0
            .fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
    }
}

/// The wake-up of the fan-out task, and the chat messages it gives way to.
#[derive(Default)]
pub(crate) struct Fanout {
    wake: Notify,
    /// Chat messages waiting for the store's connection.
    pub chat_waiting: ChatWaiting,
}

impl Fanout {
    /// A message committed a row: expand it now.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }
}

/// What a committed message asks the task to fan out.
pub(crate) struct Pending<'a> {
    pub room_id: i64,
    pub room_name: &'a str,
    pub kind: Kind,
    pub from: &'a str,
    pub text: &'a str,
    pub members: &'a [i64],
    pub created_at: i64,
}

/// Records, inside the message's transaction, the members to notify.
pub(crate) fn record(tx: &Db<'_>, p: &Pending<'_>) -> Result<(), AppError> {
    let members = serde_json::to_string(p.members)
        .map_err(|e| AppError::internal(format!("fan-out members: {e}")))?;
    tx.execute(
        "INSERT INTO push_fanout (room_id, room_name, kind, from_name, body, members, member_count, created_at)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
        params![
            p.room_id,
            p.room_name,
            p.kind.as_str(),
            p.from,
            p.text,
            members,
            p.members.len() as i64,
            p.created_at
        ],
    )?;
    Ok(())
}

/// Locks the rows a statement reads until the transaction ends (PostgreSQL, where
/// several instances expand rows; SQLite's `BEGIN IMMEDIATE` already holds the only
/// write lock).
fn for_update(db: &Db<'_>, skip_locked: bool) -> &'static str {
    match (db.backend(), skip_locked) {
        (Backend::Sqlite, _) => "",
        (Backend::Postgres, false) => " FOR UPDATE",
        (Backend::Postgres, true) => " FOR UPDATE SKIP LOCKED",
    }
}

/// `user_id` is back in `room_id` (a rejoin, in its transaction): takes them off
/// the room's rows not yet expanded, as their queued pushes are cancelled.
pub(crate) fn forget_member(tx: &Db<'_>, room_id: i64, user_id: i64) -> Result<(), DbError> {
    let sql = format!(
        "SELECT id, members FROM push_fanout WHERE room_id = ?1 ORDER BY id{}",
        for_update(tx, false)
    );
    let rows: Vec<(i64, String)> =
        tx.query_map(&sql, params![room_id], |r| Ok((r.get(0)?, r.get(1)?)))?;
    for (id, members) in rows {
        let Ok(mut members) = serde_json::from_str::<Vec<i64>>(&members) else {
            continue;
        };
        let before = members.len();
        members.retain(|m| *m != user_id);
        if members.len() == before {
            continue;
        }
        if members.is_empty() {
            tx.execute("DELETE FROM push_fanout WHERE id = ?1", params![id])?;
        } else {
            let rest = serde_json::to_string(&members)
                .map_err(|e| DbError::other(format!("fan-out members: {e}")))?;
            tx.execute(
                "UPDATE push_fanout SET members = ?2, member_count = ?3 WHERE id = ?1",
                params![id, rest, members.len() as i64],
            )?;
        }
    }
    Ok(())
}

/// Members not yet expanded, over every row.
pub(crate) fn backlog(conn: &Db<'_>) -> Result<u64, DbError> {
    conn.query_row(
        "SELECT CAST(COALESCE(SUM(member_count), 0) AS BIGINT) FROM push_fanout",
        params![],
        |r| r.get::<_, i64>(0),
    )
    .map(|n| u64::try_from(n).unwrap_or(0))
}

/// Expands up to [`CHUNK`] members of the oldest row in one transaction. Returns
/// the pushes to hand over and whether rows remain.
fn expand_chunk(conn: &Db<'_>, state: &AppState) -> Result<(Queued, bool), AppError> {
    use mesh_notify_outbox_sqlite::{set_synchronous, Synchronous};
    let Some(sqlite) = conn.as_sqlite() else {
        return expand_chunk_relaxed(conn, state);
    };
    set_synchronous(sqlite, Synchronous::Normal)?;
    let result = expand_chunk_relaxed(conn, state);
    let restored = set_synchronous(sqlite, Synchronous::Full);
    let out = result?;
    restored?;
    Ok(out)
}

fn expand_chunk_relaxed(conn: &Db<'_>, state: &AppState) -> Result<(Queued, bool), AppError> {
    let tx = conn.transaction()?;
    let mut queued = Queued::batched();
    // With PostgreSQL another instance may be expanding the oldest row: take the
    // oldest one nobody holds.
    let sql = format!(
        "SELECT id, room_id, room_name, kind, from_name, body, members FROM push_fanout
         ORDER BY id LIMIT 1{}",
        for_update(&tx, true)
    );
    let row = tx.query_opt(&sql, params![], |r| {
        Ok((
            r.get::<_, i64>(0)?,
            r.get::<_, i64>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, String>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            r.get::<_, String>(6)?,
        ))
    })?;
    let Some((id, room_id, room_name, kind, from, body, members)) = row else {
        return Ok((queued, false));
    };
    let members: Vec<i64> = match serde_json::from_str(&members) {
        Ok(m) => m,
        Err(e) => {
            // Written by this module only; a row that cannot be read is dropped
            // (and said) rather than blocking every later message.
            tracing::error!(row = id, error = %e, "unreadable fan-out row dropped");
            tx.execute("DELETE FROM push_fanout WHERE id = ?1", params![id])?;
            tx.commit()?;
            return Ok((queued, true));
        }
    };
    let kind = if kind == "file" {
        Kind::File
    } else {
        Kind::Chat
    };
    let room = Room::new(room_id.to_string(), room_name);
    let ev = crate::digest::Event {
        kind,
        room_id,
        room: &room,
        from: &from,
        text: &body,
    };
    let now = store::now_ms();
    let mut done = 0;
    // What the members' pushes need, read for the whole chunk at once.
    let chunk = &members[..members.len().min(CHUNK)];
    let pre = crate::digest::Prefetched::load(&tx, room_id, kind, chunk)?;
    for &user_id in chunk {
        if done >= MIN_CHUNK && state.fanout.chat_waiting.any() {
            break;
        }
        done += 1;
        let Some(user) = pre.member(user_id) else {
            continue;
        };
        crate::digest::on_event(&tx, state, &mut queued, user, &ev, now, &pre)?;
    }
    queued.flush(&tx)?;
    let rest = &members[done..];
    if rest.is_empty() {
        tx.execute("DELETE FROM push_fanout WHERE id = ?1", params![id])?;
    } else {
        let count = rest.len() as i64;
        let rest = serde_json::to_string(rest)
            .map_err(|e| AppError::internal(format!("fan-out members: {e}")))?;
        tx.execute(
            "UPDATE push_fanout SET members = ?2, member_count = ?3 WHERE id = ?1",
            params![id, rest, count],
        )?;
    }
    let more = !rest.is_empty()
        || tx.exists(
            "SELECT 1 FROM push_fanout WHERE id > ?1 LIMIT 1",
            params![id],
        )?;
    tx.commit()?;
    Ok((queued, more))
}

/// Expands every row there is now. Returns after the last one, or on an error.
pub(crate) async fn drain(state: &AppState) -> Result<(), AppError> {
    loop {
        let st = state.clone();
        let (queued, more) = state
            .store
            .call_background(move |c| expand_chunk(c, &st))
            .await?;
        queued.hand_over(state).await;
        if !more {
            return Ok(());
        }
        // Let a chat message take the connection between two chunks.
        tokio::task::yield_now().await;
    }
}

async fn count_backlog(state: &AppState) {
    match state.store.call_background(|c| Ok(backlog(c)?)).await {
        Ok(n) => metrics::gauge!("mesh_server_fanout_backlog").set(n as f64),
        Err(e) => tracing::warn!(error = %e.message, "could not count the fan-out backlog"),
    }
}

/// The fan-out task: expands rows as messages commit them (and whatever a previous
/// run left), until shutdown, then expands what is left once more.
pub(crate) async fn run(state: AppState, mut shutdown: watch::Receiver<bool>) {
    loop {
        if let Err(e) = drain(&state).await {
            tracing::warn!(error = %e.message, "fan-out failed; retrying in 1 s");
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                _ = shutdown.changed() => {}
            }
        }
        count_backlog(&state).await;
        if *shutdown.borrow() {
            return;
        }
        tokio::select! {
            _ = state.fanout.wake.notified() => {}
            // A safety net: a wake-up is never lost (`notify_one` keeps a permit),
            // but an error above leaves rows until the next pass.
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = shutdown.changed() => {
                // Expand what is left before the delivery workers stop; what does
                // not fit stays in the database for the next start.
                if let Err(e) = drain(&state).await {
                    tracing::warn!(error = %e.message, "fan-out at shutdown failed; the rest waits for the next start");
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows(conn: &Db<'_>) -> Vec<(i64, String)> {
        conn.query_map(
            "SELECT room_id, members FROM push_fanout ORDER BY id",
            params![],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap()
    }

    #[test]
    fn a_rejoin_takes_the_member_off_that_rooms_rows_only() {
        let dir = tempfile::tempdir().unwrap();
        let store = crate::store::Store::open(&dir.path().join("m.db")).unwrap();
        store
            .call_sync(|c| {
                for (room, members) in [(1, vec![2, 3]), (1, vec![3]), (2, vec![3, 4])] {
                    record(
                        c,
                        &Pending {
                            room_id: room,
                            room_name: "r",
                            kind: Kind::Chat,
                            from: "Alice",
                            text: "t",
                            members: &members,
                            created_at: 1,
                        },
                    )
                    .unwrap();
                }
                assert_eq!(backlog(c).unwrap(), 5);
                forget_member(c, 1, 3).unwrap();
                // Room 1: 3 is gone (a row left empty is deleted); room 2 untouched.
                assert_eq!(
                    rows(c),
                    vec![(1, "[2]".to_string()), (2, "[3,4]".to_string())]
                );
                assert_eq!(backlog(c).unwrap(), 3);
                forget_member(c, 1, 99).unwrap();
                assert_eq!(backlog(c).unwrap(), 3);
            })
            .map_err(|e| e.message)
            .unwrap();
    }
}
