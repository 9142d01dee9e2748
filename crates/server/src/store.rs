//! The embedded SQLite store: users, sessions, rooms, members, messages, notification
//! addresses and the record of queued notifications (for cancellation). The outbox's
//! own tables live in the same file, so a chat message and its notifications commit
//! in one transaction.
//!
//! Every function here is blocking; callers go through [`Store::call`], which runs
//! them on tokio's blocking pool.

use crate::rusqlite;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};

use crate::db::{params, Backend, Db, DbError, PgConn, Row};
use crate::rusqlite::Connection;
use mesh_notify_core::{Address, AddressKind, Recipient, Secret};
use serde::Serialize;

use crate::error::AppError;

pub(crate) const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS users (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE COLLATE NOCASE,
    display_name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS sessions (
    token_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS users_by_lower_name ON users(lower(username));
CREATE INDEX IF NOT EXISTS sessions_by_expiry ON sessions(expires_at);
CREATE TABLE IF NOT EXISTS rooms (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    created_by INTEGER NOT NULL REFERENCES users(id),
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS members (
    room_id INTEGER NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    joined_at INTEGER NOT NULL,
    PRIMARY KEY (room_id, user_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS members_by_user ON members(user_id);
CREATE TABLE IF NOT EXISTS messages (
    id INTEGER PRIMARY KEY,
    room_id INTEGER NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    user_id INTEGER NOT NULL REFERENCES users(id),
    kind TEXT NOT NULL,
    body TEXT NOT NULL,
    meta TEXT,
    client_id TEXT,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS messages_by_room ON messages(room_id, id);
CREATE TABLE IF NOT EXISTS addresses (
    id INTEGER PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    kind TEXT NOT NULL,
    value TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    verified INTEGER NOT NULL DEFAULT 1,
    UNIQUE (user_id, kind, value)
);
CREATE TABLE IF NOT EXISTS address_verifications (
    address_id INTEGER PRIMARY KEY REFERENCES addresses(id) ON DELETE CASCADE,
    code_hash TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    attempts INTEGER NOT NULL,
    sent_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS pending_notifications (
    notification_id TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL,
    room_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS pending_by_user_room ON pending_notifications(user_id, room_id);
CREATE INDEX IF NOT EXISTS pending_by_age ON pending_notifications(created_at);
CREATE TABLE IF NOT EXISTS invites (
    id INTEGER PRIMARY KEY,
    room_id INTEGER NOT NULL REFERENCES rooms(id) ON DELETE CASCADE,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    invited_by INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    status TEXT NOT NULL CHECK (status IN ('pending', 'declined')),
    created_at INTEGER NOT NULL,
    UNIQUE (room_id, user_id)
);
CREATE INDEX IF NOT EXISTS invites_by_user ON invites(user_id, status);
CREATE TABLE IF NOT EXISTS ws_tickets (
    ticket_hash TEXT PRIMARY KEY,
    token_hash TEXT NOT NULL REFERENCES sessions(token_hash) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS blocks (
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    blocked_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    created_at INTEGER NOT NULL,
    PRIMARY KEY (user_id, blocked_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS preferences (
    user_id INTEGER PRIMARY KEY REFERENCES users(id) ON DELETE CASCADE,
    body TEXT NOT NULL,
    updated_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS push_digests (
    user_id INTEGER NOT NULL,
    room_id INTEGER NOT NULL,
    kind TEXT NOT NULL,
    waiting_id TEXT,
    count INTEGER NOT NULL DEFAULT 0,
    last_push_at INTEGER,
    held_until INTEGER,
    held_reason TEXT,
    senders TEXT NOT NULL DEFAULT '[]',
    latest TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (user_id, room_id, kind)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS push_digests_held ON push_digests(held_until) WHERE held_until IS NOT NULL;
CREATE TABLE IF NOT EXISTS push_fanout (
    id INTEGER PRIMARY KEY,
    room_id INTEGER NOT NULL,
    room_name TEXT NOT NULL,
    kind TEXT NOT NULL,
    from_name TEXT NOT NULL,
    body TEXT NOT NULL,
    members TEXT NOT NULL,
    member_count INTEGER NOT NULL DEFAULT 0,
    created_at INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS push_handoff (
    id TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    created_at INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS push_handoff_by_age ON push_handoff(created_at);
";

/// Brings a database made by an earlier version up to date.
fn migrate(conn: &Connection) -> rusqlite::Result<()> {
    let has_verified = conn
        .prepare("SELECT 1 FROM pragma_table_info('addresses') WHERE name = 'verified'")?
        .exists([])?;
    if !has_verified {
        // Email addresses were used unverified: they must be verified now.
        conn.execute_batch(
            "ALTER TABLE addresses ADD COLUMN verified INTEGER NOT NULL DEFAULT 1;
             UPDATE addresses SET verified = 0 WHERE kind = 'email';",
        )?;
    }
    let has_count = conn
        .prepare("SELECT 1 FROM pragma_table_info('push_fanout') WHERE name = 'member_count'")?
        .exists([])?;
    if !has_count {
        // Rows left by the previous version keep their count in the new column.
        conn.execute_batch(
            "ALTER TABLE push_fanout ADD COLUMN member_count INTEGER NOT NULL DEFAULT 0;
             UPDATE push_fanout SET member_count = json_array_length(members);",
        )?;
    }
    Ok(())
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    mesh_notify_core::Timestamp::now().as_millis()
}

/// A handle on the database (cheap to clone). One connection, used from the blocking
/// pool; SQLite serialises writers anyway and every transaction here is short.
/// With PostgreSQL (several instances on one database) it is one connection per
/// instance too, reconnected when lost.
#[derive(Clone)]
pub struct Store {
    inner: Inner,
    path: PathBuf,
}

#[derive(Clone)]
enum Inner {
    Sqlite(Arc<Mutex<Connection>>),
    Postgres(Arc<PgStore>),
}

struct PgStore {
    config: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    /// Requests and chat messages (presence is decided under this lock).
    conn: Mutex<Option<PgConn>>,
    /// Background work: fan-out, summaries, hand-off, address lookups. Over the
    /// network every statement is a round trip, so a chat message must not queue
    /// behind a fan-out chunk's dozens (SQLite has one connection: its statements
    /// are function calls).
    background: Mutex<Option<PgConn>>,
}

/// Which of PostgreSQL's connections a call uses.
#[derive(Clone, Copy)]
enum Lane {
    Requests,
    Background,
}

impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.inner {
            Inner::Sqlite(_) => f.debug_struct("Store").field("path", &self.path).finish(),
            Inner::Postgres(_) => f
                .debug_struct("Store")
                .field("database", &"postgres")
                .finish(),
        }
    }
}

impl Store {
    /// Opens (creating if needed) the database and installs the server's schema.
    pub fn open(path: &Path) -> Result<Self, String> {
        Self::open_inner(path).map_err(|e| e.to_string())
    }

    fn open_inner(path: &Path) -> Result<Self, Box<dyn std::error::Error + Send + Sync>> {
        let conn = Connection::open(path)?;
        // WAL, synchronous=FULL and a busy timeout, like the outbox's own connection:
        // a committed chat message and its queued notifications survive a crash.
        mesh_notify_outbox_sqlite::configure_connection(
            &conn,
            mesh_notify_outbox_sqlite::DEFAULT_BUSY_TIMEOUT,
        )?;
        let problems: Vec<String> = conn
            .prepare("PRAGMA quick_check")?
            .query_map([], |r| r.get::<_, String>(0))?
            .collect::<rusqlite::Result<_>>()?;
        if problems != ["ok"] {
            return Err(format!("integrity check failed: {}", problems.join("; ")).into());
        }
        conn.pragma_update(None, "foreign_keys", "ON")?;
        // Checkpoints run on their own connection (`run_checkpoints`), not inside
        // whichever chat commit crosses the threshold: a checkpoint fsyncs the
        // database file and held that commit for tens of milliseconds.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // The chat's statements and the outbox's (which shares this connection).
        conn.set_prepared_statement_cache_capacity(64);
        conn.execute_batch(SCHEMA)?;
        migrate(&conn)?;
        Ok(Self {
            inner: Inner::Sqlite(Arc::new(Mutex::new(conn))),
            path: path.to_path_buf(),
        })
    }

    /// Connects to PostgreSQL at `url` and applies the schema's migrations (under
    /// an advisory lock, so instances starting together take turns).
    pub async fn connect_postgres(config: &tokio_postgres::Config) -> Result<Self, String> {
        let tls = crate::db::postgres_tls()?;
        let conn = PgConn::connect(config, &tls)
            .await
            .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
        let conn = tokio::task::spawn_blocking(move || {
            let mut conn = conn;
            crate::migrations::apply_postgres(&Db::postgres(&mut conn)).map(|()| conn)
        })
        .await
        .map_err(|e| format!("PostgreSQL schema: {e}"))?
        .map_err(|e| format!("PostgreSQL schema: {e}"))?;
        let store = Self {
            inner: Inner::Postgres(Arc::new(PgStore {
                config: config.clone(),
                tls,
                conn: Mutex::new(Some(conn)),
                background: Mutex::new(None),
            })),
            path: PathBuf::new(),
        };
        Ok(store)
    }

    /// Which database this is.
    pub(crate) fn backend(&self) -> Backend {
        match self.inner {
            Inner::Sqlite(_) => Backend::Sqlite,
            Inner::Postgres(_) => Backend::Postgres,
        }
    }

    /// The database file (SQLite; empty for PostgreSQL).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The SQLite connection itself, for the outbox to share (see `outbox::on_store`).
    pub(crate) fn connection(&self) -> Option<Arc<Mutex<Connection>>> {
        match &self.inner {
            Inner::Sqlite(c) => Some(Arc::clone(c)),
            Inner::Postgres(_) => None,
        }
    }

    /// Runs `f` with the connection on the blocking pool.
    pub(crate) async fn call<R, F>(&self, f: F) -> Result<R, AppError>
    where
        F: FnOnce(&Db<'_>) -> Result<R, AppError> + Send + 'static,
        R: Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || run(&inner, Lane::Requests, f))
            .await
            .map_err(|e| AppError::internal(format!("database task failed: {e}")))?
    }

    /// [`Store::call`] for background work (fan-out, summaries, hand-off, address
    /// lookups): with PostgreSQL on a connection of its own, so requests do not
    /// wait behind it; with SQLite the same connection.
    pub(crate) async fn call_background<R, F>(&self, f: F) -> Result<R, AppError>
    where
        F: FnOnce(&Db<'_>) -> Result<R, AppError> + Send + 'static,
        R: Send + 'static,
    {
        let inner = self.inner.clone();
        tokio::task::spawn_blocking(move || run(&inner, Lane::Background, f))
            .await
            .map_err(|e| AppError::internal(format!("database task failed: {e}")))?
    }

    /// Runs `f` with the connection, blocking the current thread (start-up, tests,
    /// and the last resort when the blocking pool is gone). With PostgreSQL it runs
    /// on a thread of its own (the client is driven by the runtime's handle).
    pub(crate) fn call_sync<R: Send>(
        &self,
        f: impl FnOnce(&Db<'_>) -> R + Send,
    ) -> Result<R, AppError> {
        match &self.inner {
            Inner::Sqlite(c) => {
                let guard = lock(c);
                Ok(f(&Db::sqlite(&guard)))
            }
            Inner::Postgres(_) => {
                let inner = &self.inner;
                // The client is driven by the runtime: the thread enters it, so a
                // reconnect there works too.
                let handle = tokio::runtime::Handle::try_current().ok();
                std::thread::scope(|s| {
                    match s
                        .spawn(move || {
                            let _entered = handle.as_ref().map(tokio::runtime::Handle::enter);
                            run(inner, Lane::Requests, |db| Ok(f(db)))
                        })
                        .join()
                    {
                        Ok(r) => r,
                        Err(panic) => std::panic::resume_unwind(panic),
                    }
                })
            }
        }
    }
}

/// Locks the connection and runs `f` (blocking).
fn run<R>(
    inner: &Inner,
    lane: Lane,
    f: impl FnOnce(&Db<'_>) -> Result<R, AppError>,
) -> Result<R, AppError> {
    match inner {
        Inner::Sqlite(c) => {
            let guard = lock(c);
            f(&Db::sqlite(&guard))
        }
        Inner::Postgres(pg) => {
            let slot = match lane {
                Lane::Requests => &pg.conn,
                Lane::Background => &pg.background,
            };
            let mut guard = slot.lock().unwrap_or_else(PoisonError::into_inner);
            if guard.as_ref().is_none_or(PgConn::is_closed) {
                let handle = tokio::runtime::Handle::try_current()
                    .map_err(|e| AppError::internal(format!("database: {e}")))?;
                *guard = None;
                let conn = handle
                    .block_on(PgConn::connect(&pg.config, &pg.tls))
                    .map_err(|e| AppError::unavailable(format!("database: {e}")))?;
                tracing::debug!("PostgreSQL: connected");
                *guard = Some(conn);
            }
            match guard.as_mut() {
                Some(conn) => f(&Db::postgres(conn)),
                None => Err(AppError::internal("database: no connection")),
            }
        }
    }
}

/// WAL pages after which a checkpoint runs at once instead of at the next tick.
const CHECKPOINT_PAGES: i64 = 1000;

/// Moves the write-ahead log into the database file from a connection of its own,
/// every `every` (and once more, truncating the log, at shutdown). `PASSIVE`
/// checkpoints never wait for, nor block, the chat's readers and writers.
pub(crate) async fn run_checkpoints(
    store: Store,
    every: std::time::Duration,
    mut stop: tokio::sync::watch::Receiver<bool>,
) {
    let path = store.path().to_path_buf();
    // Without this task the main connection checkpoints again by itself (SQLite's
    // default threshold), so the WAL never grows without bound.
    let fall_back = |why: String| {
        tracing::error!(error = %why, "WAL checkpoints: no connection of their own; chat commits checkpoint again");
        let _ = store.call_sync(|c| {
            if let Some(Err(e)) = c
                .as_sqlite()
                .map(|c| c.pragma_update(None, "wal_autocheckpoint", 1000))
            {
                tracing::error!(error = %e, "could not turn WAL autocheckpoint back on");
            }
        });
    };
    let opened = tokio::task::spawn_blocking(move || -> rusqlite::Result<Connection> {
        let conn = Connection::open(&path)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))?;
        conn.pragma_update(None, "synchronous", "FULL")?;
        Ok(conn)
    })
    .await;
    let conn = match opened {
        Ok(Ok(c)) => Arc::new(Mutex::new(c)),
        Ok(Err(e)) => return fall_back(e.to_string()),
        Err(e) => return fall_back(e.to_string()),
    };
    let checkpoint = |mode: &'static str| {
        let conn = Arc::clone(&conn);
        tokio::task::spawn_blocking(move || -> rusqlite::Result<(i64, i64)> {
            let guard = conn.lock().unwrap_or_else(PoisonError::into_inner);
            guard.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
                Ok((r.get(1)?, r.get(2)?))
            })
        })
    };
    let mut last_done = -1_i64;
    loop {
        match checkpoint("PASSIVE").await {
            Ok(Ok((log, done))) if log >= 0 && log - done >= CHECKPOINT_PAGES => {
                if done != last_done {
                    // Writers outpace it: go again at once, the WAL stays short.
                    last_done = done;
                    tokio::task::yield_now().await;
                } else {
                    // No progress (a reader holds an old snapshot): not in a
                    // tight loop.
                    tokio::select! {
                        _ = tokio::time::sleep(std::time::Duration::from_millis(50)) => {}
                        _ = stop.wait_for(|s| *s) => break,
                    }
                }
                continue;
            }
            Ok(Ok((_, done))) => last_done = done,
            Ok(Err(e)) => tracing::warn!(error = %e, "WAL checkpoint failed"),
            Err(e) => tracing::warn!(error = %e, "WAL checkpoint task failed"),
        }
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
    match checkpoint("TRUNCATE").await {
        Ok(Ok(_)) => {}
        Ok(Err(e)) => tracing::debug!(error = %e, "final WAL checkpoint not done"),
        Err(e) => tracing::debug!(error = %e, "final WAL checkpoint task failed"),
    }
}

/// Locks the connection. After a panic while it was held (a poisoned lock) the
/// connection may have been left with `synchronous = NORMAL` by a relaxed
/// transaction: it is set back to `FULL` before anyone commits on it.
fn lock(conn: &Mutex<Connection>) -> std::sync::MutexGuard<'_, Connection> {
    match conn.lock() {
        Ok(guard) => guard,
        Err(poisoned) => {
            let guard = poisoned.into_inner();
            if let Err(e) = mesh_notify_outbox_sqlite::set_synchronous(
                &guard,
                mesh_notify_outbox_sqlite::Synchronous::Full,
            ) {
                tracing::error!(error = %e, "could not restore synchronous = FULL after a panic");
            }
            conn.clear_poison();
            guard
        }
    }
}

/// A user as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct User {
    /// Numeric id.
    pub id: i64,
    /// Login name (unique, case-insensitive).
    pub username: String,
    /// Name shown to others and in notifications.
    pub display_name: String,
}

/// A room as the API shows it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RoomInfo {
    /// Numeric id (also in `mesh://room/{id}`).
    pub id: i64,
    /// Display name.
    pub name: String,
}

/// A stored message (chat or file share).
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct StoredMessage {
    /// Numeric id, increasing.
    pub id: i64,
    /// Room.
    pub room_id: i64,
    /// Author.
    pub user_id: i64,
    /// Author's username.
    pub username: String,
    /// Author's display name.
    pub display_name: String,
    /// `chat` or `file`.
    pub kind: String,
    /// Text (chat) or file name (file).
    pub text: String,
    /// File metadata for `file` messages.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file: Option<serde_json::Value>,
    /// The sender's own id for the message, echoed back.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// Milliseconds since the epoch.
    pub created_at: i64,
}

fn user_from_row(r: &Row) -> Result<User, DbError> {
    Ok(User {
        id: r.get(0)?,
        username: r.get(1)?,
        display_name: r.get(2)?,
    })
}

/// A user by login name (case-insensitive, ASCII: names are checked to be ASCII).
pub(crate) fn user_by_name(
    conn: &Db<'_>,
    username: &str,
) -> Result<Option<(User, String)>, DbError> {
    conn.query_opt(
        "SELECT id, username, display_name, password_hash FROM users WHERE lower(username) = lower(?1)",
        params![username],
        |r| Ok((user_from_row(r)?, r.get(3)?)),
    )
}

pub(crate) fn user_by_id(conn: &Db<'_>, id: i64) -> Result<Option<User>, DbError> {
    conn.query_opt(
        "SELECT id, username, display_name FROM users WHERE id = ?1",
        params![id],
        user_from_row,
    )
}

/// The user of a live session, and when the session expires (ms since the epoch).
pub(crate) fn session_user(
    conn: &Db<'_>,
    token_hash: &str,
    now: i64,
) -> Result<Option<(User, i64)>, DbError> {
    conn.query_opt(
        "SELECT u.id, u.username, u.display_name, s.expires_at FROM sessions s JOIN users u ON u.id = s.user_id
         WHERE s.token_hash = ?1 AND s.expires_at > ?2",
        params![token_hash, now],
        |r| Ok((user_from_row(r)?, r.get(3)?)),
    )
}

/// Deletes expired sessions and WebSocket tickets; returns how many sessions.
pub(crate) fn prune_sessions(conn: &Db<'_>, now: i64) -> Result<usize, DbError> {
    conn.execute(
        "DELETE FROM ws_tickets WHERE expires_at <= ?1",
        params![now],
    )?;
    conn.execute("DELETE FROM sessions WHERE expires_at <= ?1", params![now])
}

pub(crate) fn is_member(conn: &Db<'_>, room_id: i64, user_id: i64) -> Result<bool, DbError> {
    conn.exists(
        "SELECT 1 FROM members WHERE room_id = ?1 AND user_id = ?2",
        params![room_id, user_id],
    )
}

pub(crate) fn room(conn: &Db<'_>, room_id: i64) -> Result<Option<RoomInfo>, DbError> {
    conn.query_opt(
        "SELECT id, name FROM rooms WHERE id = ?1",
        params![room_id],
        |r| {
            Ok(RoomInfo {
                id: r.get(0)?,
                name: r.get(1)?,
            })
        },
    )
}

/// The room, if `user_id` is a member of it. Non-members learn nothing about
/// whether the room exists.
pub(crate) fn room_for_member(
    conn: &Db<'_>,
    room_id: i64,
    user_id: i64,
) -> Result<RoomInfo, AppError> {
    if !is_member(conn, room_id, user_id)? {
        return Err(AppError::not_member());
    }
    room(conn, room_id)?.ok_or_else(AppError::not_member)
}

/// A per-user or per-room limit reached: 409 with `code`, naming the limit.
pub(crate) fn limit_reached(code: &'static str, what: String) -> AppError {
    AppError::new(axum::http::StatusCode::CONFLICT, code, what)
}

/// Rooms `user_id` is a member of.
pub(crate) fn memberships(conn: &Db<'_>, user_id: i64) -> Result<i64, DbError> {
    conn.query_row(
        "SELECT COUNT(*) FROM members WHERE user_id = ?1",
        params![user_id],
        |r| r.get(0),
    )
}

/// Members of `room_id`.
pub(crate) fn member_count(conn: &Db<'_>, room_id: i64) -> Result<i64, DbError> {
    conn.query_row(
        "SELECT COUNT(*) FROM members WHERE room_id = ?1",
        params![room_id],
        |r| r.get(0),
    )
}

/// Checks that `user_id` may join one more room and `room_id` take one more member.
pub(crate) fn check_can_join(
    conn: &Db<'_>,
    room_id: i64,
    user_id: i64,
    max_rooms_per_user: u32,
    max_members_per_room: u32,
) -> Result<(), AppError> {
    if member_count(conn, room_id)? >= i64::from(max_members_per_room) {
        return Err(limit_reached(
            "room_full",
            format!("the room has {max_members_per_room} members, the most allowed"),
        ));
    }
    if memberships(conn, user_id)? >= i64::from(max_rooms_per_user) {
        return Err(limit_reached(
            "too_many_memberships",
            format!("at most {max_rooms_per_user} rooms per user; leave one first"),
        ));
    }
    Ok(())
}

pub(crate) fn parse_address_kind(s: &str) -> Option<AddressKind> {
    // Every kind a provider can use, named as `AddressKind::as_str` names it
    // (gotify, fcm, apns, apns_voip, email, ntfy, webhook, webpush).
    s.parse().ok()
}

/// A member with the addresses they registered (newest first, so a provider uses the
/// most recent token of its kind).
pub(crate) fn recipient(conn: &Db<'_>, user: &User) -> Result<Recipient, DbError> {
    let mut r = Recipient::new(user.id.to_string(), user.display_name.clone());
    let rows = conn.query_map(
        "SELECT kind, value FROM addresses WHERE user_id = ?1 AND verified = 1 ORDER BY id DESC",
        params![user.id],
        |row| Ok((row.get::<_, String>(0)?, row.get::<_, String>(1)?)),
    )?;
    for (kind, value) in rows {
        if let Some(kind) = parse_address_kind(&kind) {
            r.addresses.push(Address::new(kind, Secret::new(value)));
        }
    }
    Ok(r)
}

/// Ids of a room's members other than `except`.
pub(crate) fn other_member_ids(
    conn: &Db<'_>,
    room_id: i64,
    except: i64,
) -> Result<Vec<i64>, DbError> {
    conn.query_map(
        "SELECT user_id FROM members WHERE room_id = ?1 AND user_id <> ?2 ORDER BY user_id",
        params![room_id, except],
        |r| r.get(0),
    )
}

/// Members of a room other than `except`, as users.
pub(crate) fn other_members(
    conn: &Db<'_>,
    room_id: i64,
    except: i64,
) -> Result<Vec<User>, DbError> {
    conn.query_map(
        "SELECT u.id, u.username, u.display_name FROM members m JOIN users u ON u.id = m.user_id
         WHERE m.room_id = ?1 AND m.user_id <> ?2 ORDER BY u.id",
        params![room_id, except],
        user_from_row,
    )
}

pub(crate) fn message_from_row(r: &Row) -> Result<StoredMessage, DbError> {
    let meta: Option<String> = r.get(6)?;
    Ok(StoredMessage {
        id: r.get(0)?,
        room_id: r.get(1)?,
        user_id: r.get(2)?,
        username: r.get(3)?,
        display_name: r.get(4)?,
        kind: r.get(5)?,
        file: meta.and_then(|m| serde_json::from_str(&m).ok()),
        text: r.get(7)?,
        client_id: r.get(8)?,
        created_at: r.get(9)?,
    })
}

pub(crate) const MESSAGE_COLUMNS: &str =
    "m.id, m.room_id, m.user_id, u.username, u.display_name, m.kind, m.meta, m.body, m.client_id, m.created_at";

/// Deletes the record of queued notifications older than `cutoff_ms`.
pub(crate) fn prune_pending(conn: &Db<'_>, cutoff_ms: i64) -> Result<usize, DbError> {
    conn.execute(
        "DELETE FROM pending_notifications WHERE created_at < ?1",
        params![cutoff_ms],
    )
}

/// Takes (deletes and returns) the queued chat/file notification ids for `user_id`
/// in `room_id`.
pub(crate) fn take_pending(
    conn: &Db<'_>,
    user_id: i64,
    room_id: i64,
) -> Result<Vec<String>, DbError> {
    let tx = conn.transaction()?;
    // The room's fan-out rows first, in the order a fan-out chunk takes its locks
    // (row, then digest rows): with PostgreSQL the two run on different
    // connections and the opposite order could deadlock.
    crate::fanout::forget_member(&tx, room_id, user_id)?;
    let ids = tx.query_map(
        "DELETE FROM pending_notifications WHERE user_id = ?1 AND room_id = ?2 AND kind IN ('chat', 'file')
         RETURNING notification_id",
        params![user_id, room_id],
        |r| r.get::<_, String>(0),
    )?;
    crate::digest::forget(&tx, user_id, room_id)?;
    tx.commit()?;
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn email_addresses_of_an_older_database_must_be_verified() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mesh.sqlite3");
        {
            let conn = Connection::open(&path).unwrap();
            conn.execute_batch(
                "CREATE TABLE users (id INTEGER PRIMARY KEY, username TEXT NOT NULL UNIQUE COLLATE NOCASE,
                     display_name TEXT NOT NULL, password_hash TEXT NOT NULL, created_at INTEGER NOT NULL);
                 CREATE TABLE addresses (id INTEGER PRIMARY KEY, user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
                     kind TEXT NOT NULL, value TEXT NOT NULL, created_at INTEGER NOT NULL, UNIQUE (user_id, kind, value));
                 INSERT INTO users VALUES (1, 'bob', 'Bob', 'x', 0);
                 INSERT INTO addresses VALUES (1, 1, 'email', 'bob@example.com', 0);
                 INSERT INTO addresses VALUES (2, 1, 'gotify', 'bob-token', 0);",
            )
            .unwrap();
        }
        let store = Store::open(&path).unwrap();
        let kinds = store.call_sync(|c| {
            let bob = user_by_id(c, 1).unwrap().unwrap();
            recipient(c, &bob)
                .unwrap()
                .addresses
                .iter()
                .map(|a| a.kind)
                .collect::<Vec<_>>()
        });
        let kinds = kinds.map_err(|e| e.message).unwrap();
        assert_eq!(
            kinds,
            [AddressKind::Gotify],
            "the email address waits for verification"
        );
        // Opening again does not migrate twice.
        drop(store);
        Store::open(&path).unwrap();
    }
}
