//! Fewer, better pushes: coalescing, mute and quiet hours for chat and file
//! notifications.
//!
//! Per (recipient, room, kind) one row of `push_digests` remembers the latest
//! push (`waiting_id`, `last_push_at`) and what is held back (`held_until`). For
//! each message to an absent member, inside the message's transaction:
//!
//! 1. room muted → no push (`mesh_server_pushes_suppressed_total{reason="muted"}`);
//! 2. quiet hours now → held until they end, one summary per room then;
//! 3. something already held → added to it;
//! 4. the room's latest push still waiting in the outbox (not claimed by a worker;
//!    SQLite outbox) → replaced by a summary counting this message too;
//! 5. the latest push went out less than `server.coalesce_window` ago → held until
//!    the window ends (`coalesce_window = "0s"` turns steps 3–5 off: one push per
//!    message, as before);
//! 6. otherwise pushed at once: the first message is never delayed.
//!
//! Held rows are turned into one summary push each by [`run_flusher`] when their
//! time comes. Everything is in the chat database, so a restart loses nothing
//! held. Calls never go through here (they are never coalesced or delayed).

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use mesh_notify_core::{
    Address, Composer, Kind, Language, NotificationId, Recipient, Room, Secret,
};
use tokio::sync::{watch, Notify};

use crate::db::{params, Backend, Db, DbError, Value};
use crate::error::AppError;
use crate::notify::Queued;
use crate::prefs::{self, Preferences};
use crate::state::{AppState, NotifyPath};
use crate::store::{self, now_ms, User};

/// Names kept per summary (the first ones; `{from}` of the summary titles).
const MAX_SENDERS: usize = 5;
/// Held rows turned into pushes per flush transaction.
const FLUSH_BATCH: usize = 200;
/// Longest sleep of the flusher between looks at the table.
const FLUSH_IDLE: Duration = Duration::from_secs(1);

/// The composers per language and the flusher's wake-up.
pub(crate) struct Digests {
    fr: Arc<Composer>,
    en: Arc<Composer>,
    wake: Notify,
}

impl Digests {
    pub(crate) fn new(fr: Composer, en: Composer) -> Self {
        Self {
            fr: Arc::new(fr),
            en: Arc::new(en),
            wake: Notify::new(),
        }
    }

    /// The composer for a recipient's language.
    pub(crate) fn composer(&self, language: Language) -> &Composer {
        match language {
            Language::Fr => &self.fr,
            Language::En => &self.en,
        }
    }

    /// Makes the flusher look at the table now.
    pub(crate) fn wake(&self) {
        self.wake.notify_one();
    }
}

/// A chat message or shared file, as the digest needs it.
pub(crate) struct Event<'a> {
    pub kind: Kind,
    pub room_id: i64,
    pub room: &'a Room,
    /// The sender's display name.
    pub from: &'a str,
    /// The message, or the file name.
    pub text: &'a str,
}

#[derive(Debug, Clone, Default)]
struct Row {
    waiting_id: Option<String>,
    count: u32,
    last_push_at: Option<i64>,
    held_until: Option<i64>,
    held_reason: Option<String>,
    senders: Vec<String>,
    latest: String,
}

impl Row {
    /// Starts a new count with `ev`.
    fn restart(&mut self, ev: &Event<'_>) {
        self.count = 1;
        self.senders = vec![ev.from.to_owned()];
        self.latest = ev.text.to_owned();
    }

    /// Adds `ev` to the current count.
    fn add(&mut self, ev: &Event<'_>) {
        self.count = self.count.saturating_add(1);
        if !self.senders.iter().any(|s| s == ev.from) && self.senders.len() < MAX_SENDERS {
            self.senders.push(ev.from.to_owned());
        }
        self.latest = ev.text.to_owned();
    }

    fn hold(&mut self, until: i64, reason: &str) {
        self.held_until = Some(self.held_until.map_or(until, |h| h.max(until)));
        self.held_reason = Some(reason.to_owned());
    }
}

fn load_row(tx: &Db<'_>, user_id: i64, room_id: i64, kind: Kind) -> Result<Option<Row>, DbError> {
    tx.query_opt(
        "SELECT waiting_id, count, last_push_at, held_until, held_reason, senders, latest
         FROM push_digests WHERE user_id = ?1 AND room_id = ?2 AND kind = ?3",
        params![user_id, room_id, kind.as_str()],
        |r| {
            let senders: String = r.get(5)?;
            Ok(Row {
                waiting_id: r.get(0)?,
                count: r.get(1)?,
                last_push_at: r.get(2)?,
                held_until: r.get(3)?,
                held_reason: r.get(4)?,
                senders: serde_json::from_str(&senders).unwrap_or_default(),
                latest: r.get(6)?,
            })
        },
    )
}

fn save_row(tx: &Db<'_>, user_id: i64, room_id: i64, kind: Kind, row: &Row) -> Result<(), DbError> {
    let senders = serde_json::to_string(&row.senders).unwrap_or_else(|_| "[]".into());
    tx.execute(
        "INSERT INTO push_digests (user_id, room_id, kind, waiting_id, count, last_push_at, held_until, held_reason, senders, latest)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)
         ON CONFLICT (user_id, room_id, kind) DO UPDATE SET
           waiting_id = excluded.waiting_id, count = excluded.count, last_push_at = excluded.last_push_at,
           held_until = excluded.held_until, held_reason = excluded.held_reason,
           senders = excluded.senders, latest = excluded.latest",
        params![
        user_id,
        room_id,
        kind.as_str(),
        row.waiting_id,
        row.count,
        row.last_push_at,
        row.held_until,
        row.held_reason,
        senders,
        row.latest
        ],
    )?;
    Ok(())
}

/// What a fan-out chunk reads for its members, in four queries instead of four
/// per member (issue 16/18: with PostgreSQL each statement is a network round
/// trip; with SQLite the chunk holds the chat's connection for less time).
#[derive(Default)]
pub(crate) struct Prefetched {
    members: HashMap<i64, User>,
    prefs: HashMap<i64, Preferences>,
    rows: HashMap<i64, Row>,
    addresses: HashMap<i64, Vec<Address>>,
}

/// `?first, ?first+1, …` for `n` parameters.
fn placeholders(first: usize, n: usize) -> String {
    (first..first + n)
        .map(|i| format!("?{i}"))
        .collect::<Vec<_>>()
        .join(", ")
}

impl Prefetched {
    /// Reads the members among `user_ids` of `room_id`, their preferences, their
    /// digest rows for `kind` in the room and their verified addresses.
    pub(crate) fn load(
        tx: &Db<'_>,
        room_id: i64,
        kind: Kind,
        user_ids: &[i64],
    ) -> Result<Self, DbError> {
        let mut out = Self::default();
        if user_ids.is_empty() {
            return Ok(out);
        }
        let ids: Vec<Value> = user_ids.iter().map(|id| Value::Int(*id)).collect();
        let with = |head: Vec<Value>| -> Vec<Value> {
            head.into_iter().chain(ids.iter().cloned()).collect()
        };
        for user in tx.query_map(
            &format!(
                "SELECT u.id, u.username, u.display_name FROM members m JOIN users u ON u.id = m.user_id
                 WHERE m.room_id = ?1 AND m.user_id IN ({})",
                placeholders(2, ids.len())
            ),
            &with(vec![Value::Int(room_id)])[..],
            |r| {
                Ok(User {
                    id: r.get(0)?,
                    username: r.get(1)?,
                    display_name: r.get(2)?,
                })
            },
        )? {
            out.members.insert(user.id, user);
        }
        for (id, body) in tx.query_map(
            &format!(
                "SELECT user_id, body FROM preferences WHERE user_id IN ({})",
                placeholders(1, ids.len())
            ),
            &ids[..],
            |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?)),
        )? {
            out.prefs.insert(id, prefs::parse_stored(id, &body));
        }
        for (id, row) in tx.query_map(
            &format!(
                "SELECT user_id, waiting_id, count, last_push_at, held_until, held_reason, senders, latest
                 FROM push_digests WHERE room_id = ?1 AND kind = ?2 AND user_id IN ({}){}",
                placeholders(3, ids.len()),
                // Written back whole below: with PostgreSQL another instance's
                // chunk or the summary flusher must not update them meanwhile.
                match tx.backend() {
                    Backend::Sqlite => "",
                    Backend::Postgres => " ORDER BY user_id FOR UPDATE",
                }
            ),
            &with(vec![Value::Int(room_id), Value::Text(kind.as_str().into())])[..],
            |r| {
                let senders: String = r.get(6)?;
                Ok((
                    r.get::<_, i64>(0)?,
                    Row {
                        waiting_id: r.get(1)?,
                        count: r.get(2)?,
                        last_push_at: r.get(3)?,
                        held_until: r.get(4)?,
                        held_reason: r.get(5)?,
                        senders: serde_json::from_str(&senders).unwrap_or_default(),
                        latest: r.get(7)?,
                    },
                ))
            },
        )? {
            out.rows.insert(id, row);
        }
        for (id, kind, value) in tx.query_map(
            &format!(
                "SELECT user_id, kind, value FROM addresses WHERE verified = 1 AND user_id IN ({})
                 ORDER BY id DESC",
                placeholders(1, ids.len())
            ),
            &ids[..],
            |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                ))
            },
        )? {
            if let Some(kind) = store::parse_address_kind(&kind) {
                out.addresses
                    .entry(id)
                    .or_default()
                    .push(Address::new(kind, Secret::new(value)));
            }
        }
        Ok(out)
    }

    /// `user_id` if they are still a member of the room.
    pub(crate) fn member(&self, user_id: i64) -> Option<&User> {
        self.members.get(&user_id)
    }

    fn recipient(&self, user: &User) -> Recipient {
        let mut r = Recipient::new(user.id.to_string(), user.display_name.clone());
        r.addresses = self.addresses.get(&user.id).cloned().unwrap_or_default();
        r
    }
}

fn counter(name: &'static str, kind: Kind) {
    metrics::counter!(name, "kind" => kind.as_str()).increment(1);
}

/// Decides, inside the message's transaction, what the absent `member` gets for
/// `ev` (see the module documentation), and records it.
pub(crate) fn on_event(
    tx: &Db<'_>,
    state: &AppState,
    queued: &mut Queued,
    member: &User,
    ev: &Event<'_>,
    now: i64,
    pre: &Prefetched,
) -> Result<(), AppError> {
    let prefs = pre.prefs.get(&member.id).cloned().unwrap_or_default();
    if prefs.is_muted(ev.room_id, now) {
        metrics::counter!("mesh_server_pushes_suppressed_total", "reason" => "muted", "kind" => ev.kind.as_str())
            .increment(1);
        return Ok(());
    }
    let composer = state.digests.composer(prefs.language_or(state.language));
    let route = prefs.route(ev.kind);
    let window = i64::try_from(state.config.coalesce_window.as_millis()).unwrap_or(i64::MAX);
    let mut row = pre.rows.get(&member.id).cloned().unwrap_or_default();

    if let Some(end) = prefs.quiet().and_then(|q| q.ends_at(now)) {
        if row.held_until.is_some() {
            row.add(ev);
        } else {
            row.restart(ev);
            row.waiting_id = None;
        }
        row.hold(end, "quiet");
        save_row(tx, member.id, ev.room_id, ev.kind, &row)?;
        counter("mesh_server_pushes_held_quiet_hours_total", ev.kind);
        return Ok(());
    }
    if row.held_until.is_some() {
        row.add(ev);
        save_row(tx, member.id, ev.room_id, ev.kind, &row)?;
        counter("mesh_server_pushes_coalesced_total", ev.kind);
        return Ok(());
    }
    if window > 0 && state.notify_path == NotifyPath::SameTransaction {
        if let Some(id) = row
            .waiting_id
            .as_deref()
            .and_then(|w| w.parse::<NotificationId>().ok())
        {
            let mut merged = row.clone();
            merged.add(ev);
            let recipient = pre.recipient(member);
            let mut n = composer.summary(
                ev.kind,
                merged.count,
                &merged.senders,
                ev.room,
                recipient,
                ev.text,
            );
            n.id = id;
            n.route = route.clone();
            if crate::outbox::replace_waiting_in_tx(tx, &n)? {
                save_row(tx, member.id, ev.room_id, ev.kind, &merged)?;
                counter("mesh_server_pushes_coalesced_total", ev.kind);
                return Ok(());
            }
        }
    }
    if let Some(last) = row.last_push_at {
        if window > 0 && now < last.saturating_add(window) {
            row.restart(ev);
            row.waiting_id = None;
            row.hold(last.saturating_add(window), "window");
            save_row(tx, member.id, ev.room_id, ev.kind, &row)?;
            return Ok(());
        }
    }
    let recipient = pre.recipient(member);
    let mut n = match ev.kind {
        Kind::File => composer.file(ev.from, ev.room, recipient, ev.text),
        _ => composer.chat(ev.from, ev.room, recipient, ev.text),
    };
    n.route = route;
    row.restart(ev);
    row.waiting_id = Some(n.id.to_string());
    row.last_push_at = Some(now);
    row.held_until = None;
    row.held_reason = None;
    queued.push(tx, state.notify_path, ev.room_id, n)?;
    // With coalescing off the row only matters while something is held (quiet
    // hours), and nothing is: skip the write, one statement less per member.
    if window > 0 {
        save_row(tx, member.id, ev.room_id, ev.kind, &row)?;
    }
    Ok(())
}

/// The recipient is back in the room: what was held or counted is forgotten (they
/// see the messages), and the next push is not delayed.
pub(crate) fn forget(tx: &Db<'_>, user_id: i64, room_id: i64) -> Result<(), DbError> {
    tx.execute(
        "DELETE FROM push_digests WHERE user_id = ?1 AND room_id = ?2",
        params![user_id, room_id],
    )?;
    Ok(())
}

/// After `user_id` saved `prefs`: summaries held for a room now muted are dropped;
/// those held by quiet hours follow the new window (now, if it is off).
pub(crate) fn release_held(
    conn: &Db<'_>,
    user_id: i64,
    prefs: &Preferences,
) -> Result<(), DbError> {
    let now = now_ms();
    let quiet_end = prefs.quiet().and_then(|q| q.ends_at(now));
    let rows: Vec<(i64, String, Option<String>)> = conn.query_map(
        "SELECT room_id, kind, held_reason FROM push_digests WHERE user_id = ?1 AND held_until IS NOT NULL",
        params![user_id],
        |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
    )?;
    for (room_id, kind, reason) in rows {
        if prefs.is_muted(room_id, now) {
            conn.execute(
                "UPDATE push_digests SET held_until = NULL, held_reason = NULL, count = 0
                 WHERE user_id = ?1 AND room_id = ?2 AND kind = ?3",
                params![user_id, room_id, kind],
            )?;
            metrics::counter!("mesh_server_pushes_suppressed_total", "reason" => "muted", "kind" => "held")
                .increment(1);
        } else if reason.as_deref() == Some("quiet") {
            conn.execute(
                "UPDATE push_digests SET held_until = ?4 WHERE user_id = ?1 AND room_id = ?2 AND kind = ?3",
                params![user_id, room_id, kind, quiet_end.unwrap_or(now)],
            )?;
        }
    }
    Ok(())
}

/// Deletes rows with nothing held whose latest push is older than `cutoff_ms`.
pub(crate) fn prune(conn: &Db<'_>, cutoff_ms: i64) -> Result<usize, DbError> {
    conn.execute(
        "DELETE FROM push_digests WHERE held_until IS NULL AND (last_push_at IS NULL OR last_push_at < ?1)",
        params![cutoff_ms],
    )
}

/// Turns the held rows whose time has come into one summary push each. Returns
/// when the next one is due, if any.
async fn flush_due(state: &AppState) -> Result<Option<i64>, AppError> {
    let st = state.clone();
    let (queued, next) = state
        .store
        .call_background(move |c| {
            let now = now_ms();
            let next_held = |c: &Db<'_>| -> Result<Option<i64>, DbError> {
                c.query_row(
                    "SELECT MIN(held_until) FROM push_digests WHERE held_until IS NOT NULL",
                    params![],
                    |r| r.get(0),
                )
            };
            // Nothing due (the common case): a read, no write lock taken.
            if next_held(c)?.is_none_or(|t| t > now) {
                return Ok((Queued::default(), next_held(c)?));
            }
            let tx = c.transaction()?;
            // Several instances (PostgreSQL) flush different rows, never one twice.
            let lock = match tx.backend() {
                Backend::Sqlite => "",
                Backend::Postgres => " FOR UPDATE SKIP LOCKED",
            };
            let due: Vec<(i64, i64, String)> = tx.query_map(
                &format!(
                    "SELECT user_id, room_id, kind FROM push_digests
                     WHERE held_until IS NOT NULL AND held_until <= ?1 ORDER BY held_until LIMIT ?2{lock}"
                ),
                params![now, FLUSH_BATCH as i64],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let mut queued = Queued::default();
            for (user_id, room_id, kind) in due {
                let kind = match kind.as_str() {
                    "file" => Kind::File,
                    _ => Kind::Chat,
                };
                flush_one(&tx, &st, &mut queued, user_id, room_id, kind, now)?;
            }
            let next = next_held(&tx)?;
            tx.commit()?;
            Ok((queued, next))
        })
        .await?;
    queued.hand_over(state).await;
    Ok(next)
}

fn flush_one(
    tx: &Db<'_>,
    state: &AppState,
    queued: &mut Queued,
    user_id: i64,
    room_id: i64,
    kind: Kind,
    now: i64,
) -> Result<(), AppError> {
    let Some(mut row) = load_row(tx, user_id, room_id, kind)? else {
        return Ok(());
    };
    let member = store::user_by_id(tx, user_id)?;
    let room = store::room(tx, room_id)?;
    let (Some(member), Some(room)) = (member, room) else {
        forget(tx, user_id, room_id)?;
        return Ok(());
    };
    if !store::is_member(tx, room_id, user_id)? || row.count == 0 {
        forget(tx, user_id, room_id)?;
        return Ok(());
    }
    let prefs = prefs::load(tx, user_id)?;
    if prefs.is_muted(room_id, now) {
        forget(tx, user_id, room_id)?;
        metrics::counter!("mesh_server_pushes_suppressed_total", "reason" => "muted", "kind" => kind.as_str())
            .increment(1);
        return Ok(());
    }
    let composer = state.digests.composer(prefs.language_or(state.language));
    let room_ref = Room::new(room.id.to_string(), room.name);
    let recipient = store::recipient(tx, &member)?;
    let mut n = composer.summary(
        kind,
        row.count,
        &row.senders,
        &room_ref,
        recipient,
        &row.latest,
    );
    n.route = prefs.route(kind);
    row.waiting_id = Some(n.id.to_string());
    row.last_push_at = Some(now);
    row.held_until = None;
    row.held_reason = None;
    queued.push(tx, state.notify_path, room_id, n)?;
    save_row(tx, user_id, room_id, kind, &row)?;
    metrics::counter!("mesh_server_push_summaries_total", "kind" => kind.as_str()).increment(1);
    Ok(())
}

/// Sends held summaries when their time comes, until shutdown. Wakes at the
/// earliest held time, at least every second, and when [`Digests::wake`] is
/// called.
pub(crate) async fn run_flusher(state: AppState, mut shutdown: watch::Receiver<bool>) {
    loop {
        let wait = match flush_due(&state).await {
            Ok(Some(next)) => {
                let ms = u64::try_from(next.saturating_sub(now_ms())).unwrap_or(0);
                Duration::from_millis(ms).min(FLUSH_IDLE)
            }
            Ok(None) => FLUSH_IDLE,
            Err(e) => {
                tracing::warn!(error = %e.message, "could not send held notification summaries; retrying");
                FLUSH_IDLE
            }
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = state.digests.wake.notified() => {}
            _ = shutdown.changed() => return,
        }
        if *shutdown.borrow() {
            return;
        }
    }
}
