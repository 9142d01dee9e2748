//! # mesh-notify-outbox-sqlite
//!
//! The embedded, default [`Outbox`] of mesh-notify: one SQLite file (WAL,
//! `synchronous=FULL`), so `enqueue` returns only once the entry is on disk and
//! entries, leases and dead letters survive a crash or restart.
//!
//! The chat server can share the file: call [`install_schema`] on its own
//! connection, then [`enqueue_in_tx`] inside the transaction that stores the chat
//! message, so the message and its notifications commit (or not) together.
//! [`rusqlite`] is re-exported so both sides use the same version.
//!
//! ```no_run
//! use mesh_notify_core::{Kind, Notification, Outbox, Recipient, Timestamp};
//! use mesh_notify_outbox_sqlite::SqliteOutbox;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let outbox = SqliteOutbox::open("/var/lib/mesh/mesh.db")?;
//! let n = Notification::new(Kind::Chat, Recipient::new("bob", "Bob"), "Alice", "Salut !");
//! outbox.enqueue(&n, Timestamp::now()).await?; // durable when this returns
//!
//! // In the chat server, atomically with its own rows:
//! let mut conn = mesh_notify_outbox_sqlite::rusqlite::Connection::open("/var/lib/mesh/mesh.db")?;
//! mesh_notify_outbox_sqlite::configure_connection(&conn, mesh_notify_outbox_sqlite::DEFAULT_BUSY_TIMEOUT)?;
//! mesh_notify_outbox_sqlite::install_schema(&conn)?;
//! let tx = conn.transaction()?;
//! // tx.execute("INSERT INTO messages ...", ...)?;
//! mesh_notify_outbox_sqlite::enqueue_in_tx(&tx, &n, Timestamp::now())?;
//! tx.commit()?;
//! # Ok(()) }
//! ```

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use mesh_notify_core::{
    Claim, DeadEntry, Health, Notification, NotificationId, Outbox, OutboxEntry, OutboxError,
    OutboxStats, Timestamp,
};
use rusqlite::{params, Connection, OptionalExtension, Transaction, TransactionBehavior};

pub use rusqlite;

/// How long a statement waits for another connection's lock before failing.
pub const DEFAULT_BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// The table of pending entries.
pub const TABLE: &str = "mesh_notify_outbox";
/// The table of dead letters.
pub const DEAD_TABLE: &str = "mesh_notify_outbox_dead";

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS mesh_notify_outbox (
    id          TEXT PRIMARY KEY NOT NULL,
    payload     TEXT NOT NULL,
    due_at      INTEGER NOT NULL,
    lease_id    TEXT,
    lease_until INTEGER,
    worker      TEXT,
    attempts    INTEGER NOT NULL DEFAULT 0,
    enqueued_at INTEGER NOT NULL,
    last_error  TEXT,
    parked_on   TEXT
);
CREATE INDEX IF NOT EXISTS mesh_notify_outbox_due ON mesh_notify_outbox (due_at, id);
CREATE TABLE IF NOT EXISTS mesh_notify_outbox_dead (
    id          TEXT PRIMARY KEY NOT NULL,
    payload     TEXT NOT NULL,
    due_at      INTEGER NOT NULL,
    attempts    INTEGER NOT NULL,
    enqueued_at INTEGER NOT NULL,
    last_error  TEXT,
    reason      TEXT NOT NULL,
    died_at     INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS mesh_notify_outbox_dead_died ON mesh_notify_outbox_dead (died_at);
";

/// Added after the first release: entries parked while their providers are down
/// (`,gotify,fcm,`: delimited so `LIKE '%,gotify,%'` matches whole names).
const PARKED_INDEX: &str = "CREATE INDEX IF NOT EXISTS mesh_notify_outbox_parked
    ON mesh_notify_outbox (id) WHERE parked_on IS NOT NULL";

const INSERT: &str = "INSERT INTO mesh_notify_outbox (id, payload, due_at, attempts, enqueued_at)
     VALUES (?1, ?2, ?3, 0, ?4) ON CONFLICT (id) DO NOTHING";

/// Tuning for [`SqliteOutbox::open_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SqliteOutboxConfig {
    /// How long to wait for a lock held by another connection or process
    /// ([`DEFAULT_BUSY_TIMEOUT`]). Also bounds how long `open` waits on a locked file.
    pub busy_timeout: Duration,
}

impl Default for SqliteOutboxConfig {
    fn default() -> Self {
        Self {
            busy_timeout: DEFAULT_BUSY_TIMEOUT,
        }
    }
}

/// Sets the pragmas the outbox relies on for durability on `conn`: WAL journal,
/// `synchronous=FULL` and `busy_timeout`. Use it on a
/// connection that calls [`enqueue_in_tx`], so the commit is as durable as
/// [`SqliteOutbox::enqueue`].
pub fn configure_connection(conn: &Connection, busy_timeout: Duration) -> Result<(), OutboxError> {
    configure(conn, busy_timeout).map_err(OutboxError::Unavailable)
}

fn configure(conn: &Connection, busy_timeout: Duration) -> Result<(), String> {
    conn.busy_timeout(busy_timeout).map_err(|e| e.to_string())?;
    let mode: String = conn
        .query_row("PRAGMA journal_mode = WAL", [], |r| r.get(0))
        .map_err(|e| e.to_string())?;
    if !mode.eq_ignore_ascii_case("wal") {
        return Err(format!("cannot switch to WAL journal mode (still {mode})"));
    }
    conn.pragma_update(None, "synchronous", "FULL")
        .map_err(|e| e.to_string())
}

/// Creates the outbox tables and indexes if missing (idempotent). Both the outbox
/// and a chat server sharing the file may call it.
pub fn install_schema(conn: &Connection) -> Result<(), OutboxError> {
    let failed = |e: rusqlite::Error| {
        OutboxError::Unavailable(format!("cannot create the outbox tables: {e}"))
    };
    conn.execute_batch(SCHEMA).map_err(failed)?;
    // Files created before parking existed lack the column.
    let has_parked: bool = conn
        .prepare("SELECT 1 FROM pragma_table_info('mesh_notify_outbox') WHERE name = 'parked_on'")
        .and_then(|mut s| s.exists([]))
        .map_err(failed)?;
    if !has_parked {
        conn.execute_batch("ALTER TABLE mesh_notify_outbox ADD COLUMN parked_on TEXT")
            .map_err(failed)?;
    }
    conn.execute_batch(PARKED_INDEX).map_err(failed)
}

/// `,a,b,` for `[a, b]`.
fn parked_list(providers: &[String]) -> String {
    let mut s = String::from(",");
    for p in providers {
        s.push_str(p);
        s.push(',');
    }
    s
}

/// A `LIKE` pattern matching a parked list that contains `provider`.
fn parked_pattern(provider: &str) -> String {
    let escaped = provider
        .replace('\\', "\\\\")
        .replace('%', "\\%")
        .replace('_', "\\_");
    format!("%,{escaped},%")
}

/// Enqueues `n` inside the caller's transaction (the outbox tables must exist, see
/// [`install_schema`]); it becomes durable and visible to delivery workers when
/// `tx` commits. `Ok(false)` when the id is already pending.
pub fn enqueue_in_tx(
    tx: &Connection,
    n: &Notification,
    due_at: Timestamp,
) -> Result<bool, OutboxError> {
    insert(tx, n, due_at, Timestamp::now()).map_err(unavailable)
}

/// Replaces the notification of the entry with `n`'s id by `n` (same due time) inside
/// the caller's transaction, if the entry is still waiting: present and not leased
/// by a worker. `false` when it is gone (delivered, cancelled, dead) or in flight;
/// the caller then queues a new entry instead. This is how mesh-server merges the
/// messages that arrive while a room's notification is still waiting into one.
pub fn replace_waiting_in_tx(tx: &Connection, n: &Notification) -> Result<bool, OutboxError> {
    let payload = serde_json::to_string(n)
        .map_err(|e| OutboxError::Unavailable(format!("encoding a notification: {e}")))?;
    let changed = tx
        .prepare_cached(
            "UPDATE mesh_notify_outbox SET payload = ?2
             WHERE id = ?1 AND (lease_until IS NULL OR lease_until <= ?3)",
        )
        .and_then(|mut s| {
            s.execute(params![
                n.id.to_string(),
                payload,
                Timestamp::now().as_millis()
            ])
        })
        .map_err(unavailable)?;
    Ok(changed == 1)
}

fn insert(
    conn: &Connection,
    n: &Notification,
    due_at: Timestamp,
    now: Timestamp,
) -> rusqlite::Result<bool> {
    let payload = serde_json::to_string(n)
        .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
    let mut stmt = conn.prepare_cached(INSERT)?;
    let added = stmt.execute(params![
        n.id.to_string(),
        payload,
        due_at.as_millis(),
        now.as_millis()
    ])?;
    Ok(added == 1)
}

fn unavailable(e: rusqlite::Error) -> OutboxError {
    OutboxError::Unavailable(format!("sqlite: {e}"))
}

/// One `enqueue` waiting for the group commit.
type EnqueueJob = (
    Notification,
    Timestamp,
    tokio::sync::oneshot::Sender<Result<bool, OutboxError>>,
);

/// At most this many enqueues share one commit.
const GROUP_COMMIT_MAX: usize = 1000;

/// The SQLite outbox. Cheap to clone (clones share one connection); blocking
/// SQLite calls run on Tokio's blocking pool.
///
/// Concurrent `enqueue` calls share one durable commit (group commit): a writer
/// task takes every enqueue waiting when it starts a transaction, commits them
/// together with one fsync, then answers each. One caller alone still gets its own
/// commit at once; 64 concurrent callers get about one fsync per batch instead of
/// one each.
#[derive(Clone)]
pub struct SqliteOutbox {
    conn: Arc<Mutex<Connection>>,
    path: Arc<PathBuf>,
    writer: Arc<std::sync::OnceLock<tokio::sync::mpsc::UnboundedSender<EnqueueJob>>>,
}

/// The group-commit writer: one transaction per batch of waiting enqueues.
async fn group_commit(
    conn: Arc<Mutex<Connection>>,
    mut rx: tokio::sync::mpsc::UnboundedReceiver<EnqueueJob>,
) {
    while let Some(first) = rx.recv().await {
        let mut jobs = vec![first];
        while jobs.len() < GROUP_COMMIT_MAX {
            match rx.try_recv() {
                Ok(job) => jobs.push(job),
                Err(_) => break,
            }
        }
        let items: Vec<(Notification, Timestamp)> =
            jobs.iter().map(|(n, due, _)| (n.clone(), *due)).collect();
        let conn = Arc::clone(&conn);
        let written = tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(PoisonError::into_inner);
            let now = Timestamp::now();
            let tx = immediate(&mut guard)?;
            let mut added = Vec::with_capacity(items.len());
            for (n, due) in &items {
                added.push(insert(&tx, n, *due, now).map_err(unavailable)?);
            }
            tx.commit().map_err(unavailable)?;
            Ok::<_, OutboxError>(added)
        })
        .await
        .map_err(|e| OutboxError::Unavailable(format!("sqlite worker task failed: {e}")))
        .and_then(|r| r);
        match written {
            Ok(added) => {
                for ((_, _, reply), a) in jobs.into_iter().zip(added) {
                    let _ = reply.send(Ok(a));
                }
            }
            Err(e) => {
                for (_, _, reply) in jobs {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

impl std::fmt::Debug for SqliteOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SqliteOutbox")
            .field("path", &self.path)
            .finish()
    }
}

impl SqliteOutbox {
    /// Opens (creating if needed) the outbox in the SQLite file at `path` with the
    /// default [`SqliteOutboxConfig`].
    ///
    /// Fails with [`OutboxError::Open`] naming the path when the file cannot be
    /// used: a directory, not a database, corrupt, or locked by another process.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, OutboxError> {
        Self::open_with(path, &SqliteOutboxConfig::default())
    }

    /// Like [`open`](Self::open), with explicit tuning.
    pub fn open_with(
        path: impl AsRef<Path>,
        config: &SqliteOutboxConfig,
    ) -> Result<Self, OutboxError> {
        let path = path.as_ref();
        let open_err = |reason: String| OutboxError::Open {
            target: path.display().to_string(),
            reason,
        };
        if path.is_dir() {
            return Err(open_err("is a directory, expected an SQLite file".into()));
        }
        let conn = Connection::open(path).map_err(|e| open_err(e.to_string()))?;
        configure(&conn, config.busy_timeout).map_err(open_err)?;
        check_integrity(&conn).map_err(open_err)?;
        install_schema(&conn).map_err(|e| open_err(e.to_string()))?;
        conn.set_prepared_statement_cache_capacity(32);
        Ok(Self {
            conn: Arc::new(Mutex::new(conn)),
            path: Arc::new(path.to_owned()),
            writer: Arc::new(std::sync::OnceLock::new()),
        })
    }

    /// An outbox on a connection the application already holds (and shares):
    /// every outbox call takes `conn`'s lock, so the application's own
    /// transactions and the delivery workers' claims and acknowledgements take
    /// turns on one in-process lock, and never meet as two SQLite connections
    /// contending for the file's write lock (whose busy handler sleeps 1, 2, 5,
    /// 10 ms… between tries instead of waking when the lock is free).
    ///
    /// The connection must already be set up with [`configure_connection`] and
    /// carry the schema ([`install_schema`]); `path` is the file it opened (for
    /// [`path`](Self::path) and messages).
    pub fn on_connection(conn: Arc<Mutex<Connection>>, path: impl AsRef<Path>) -> Self {
        Self {
            conn,
            path: Arc::new(path.as_ref().to_owned()),
            writer: Arc::new(std::sync::OnceLock::new()),
        }
    }

    /// The database file.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Like [`with_conn`](Self::with_conn), with `synchronous=NORMAL` for the
    /// duration of `f`: its commits are not fsync'd one by one (WAL mode keeps them
    /// consistent; the next `FULL` commit, e.g. an enqueue, makes them durable).
    /// Used for leases and acknowledgements only: losing one in a power cut means a
    /// lease taken again or a notification delivered again (at-least-once), never a
    /// lost notification.
    async fn with_conn_relaxed<T, F>(&self, f: F) -> Result<T, OutboxError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, OutboxError> + Send + 'static,
    {
        self.with_conn(move |conn| {
            set_synchronous(conn, Synchronous::Normal).map_err(unavailable)?;
            let result = f(conn);
            let restored = set_synchronous(conn, Synchronous::Full);
            let value = result?;
            restored.map_err(unavailable)?;
            Ok(value)
        })
        .await
    }

    /// Runs `f` on the connection on the blocking pool.
    async fn with_conn<T, F>(&self, f: F) -> Result<T, OutboxError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, OutboxError> + Send + 'static,
    {
        let conn = Arc::clone(&self.conn);
        tokio::task::spawn_blocking(move || {
            let mut guard = conn.lock().unwrap_or_else(PoisonError::into_inner);
            f(&mut guard)
        })
        .await
        .map_err(|e| OutboxError::Unavailable(format!("sqlite worker task failed: {e}")))?
    }
}

/// `PRAGMA synchronous` values switched around relaxed commits.
#[derive(Debug, Clone, Copy)]
pub enum Synchronous {
    /// Commits are not fsync'd one by one (WAL keeps them consistent).
    Normal,
    /// Every commit is fsync'd.
    Full,
}

/// Sets `PRAGMA synchronous` (switched twice per relaxed transaction, by the
/// outbox and by mesh-server's fan-out). SQLite applies a PRAGMA while preparing
/// it and re-prepares it on every run, so the cached statement saves little; the
/// helper keeps both call sites on one spelling.
pub fn set_synchronous(conn: &Connection, value: Synchronous) -> rusqlite::Result<()> {
    let sql = match value {
        Synchronous::Normal => "PRAGMA synchronous = NORMAL",
        Synchronous::Full => "PRAGMA synchronous = FULL",
    };
    conn.prepare_cached(sql)?.execute([]).map(|_| ())
}

fn check_integrity(conn: &Connection) -> Result<(), String> {
    let mut stmt = conn
        .prepare("PRAGMA quick_check")
        .map_err(|e| e.to_string())?;
    let problems: Vec<String> = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .and_then(|rows| rows.collect::<Result<_, _>>())
        .map_err(|e| e.to_string())?;
    if problems.len() == 1 && problems[0] == "ok" {
        Ok(())
    } else {
        Err(format!("integrity check failed: {}", problems.join("; ")))
    }
}

fn immediate(conn: &mut Connection) -> Result<Transaction<'_>, OutboxError> {
    conn.transaction_with_behavior(TransactionBehavior::Immediate)
        .map_err(unavailable)
}

/// A row of either table, before decoding.
struct RawEntry {
    id: String,
    payload: String,
    due_at: i64,
    attempts: i64,
    enqueued_at: i64,
    last_error: Option<String>,
    parked_on: Option<String>,
}

impl RawEntry {
    /// Reads columns `id, payload, due_at, attempts, enqueued_at, last_error`
    /// (and `parked_on` when `with_parked`).
    fn read(r: &rusqlite::Row<'_>, with_parked: bool) -> rusqlite::Result<Self> {
        Ok(Self {
            id: r.get(0)?,
            payload: r.get(1)?,
            due_at: r.get(2)?,
            attempts: r.get(3)?,
            enqueued_at: r.get(4)?,
            last_error: r.get(5)?,
            parked_on: if with_parked { r.get(6)? } else { None },
        })
    }

    /// A pending row (`ENTRY_COLUMNS, parked_on`).
    fn from_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Self::read(r, true)
    }

    /// A dead row (`ENTRY_COLUMNS, ...`).
    fn from_dead_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Self> {
        Self::read(r, false)
    }

    fn decode(&self) -> Result<OutboxEntry, OutboxError> {
        let corrupt = |reason: String| OutboxError::Corrupt {
            id: self.id.clone(),
            reason,
        };
        let notification: Notification =
            serde_json::from_str(&self.payload).map_err(|e| corrupt(format!("payload: {e}")))?;
        if notification.id.to_string() != self.id {
            return Err(corrupt(format!("payload carries id {}", notification.id)));
        }
        Ok(OutboxEntry {
            notification,
            attempts: u32::try_from(self.attempts)
                .map_err(|_| corrupt(format!("attempts {}", self.attempts)))?,
            due_at: Timestamp(self.due_at),
            enqueued_at: Timestamp(self.enqueued_at),
            last_error: self.last_error.clone(),
            parked_on: self
                .parked_on
                .as_deref()
                .map(|p| {
                    p.split(',')
                        .filter(|s| !s.is_empty())
                        .map(str::to_owned)
                        .collect()
                })
                .unwrap_or_default(),
        })
    }
}

const ENTRY_COLUMNS: &str = "id, payload, due_at, attempts, enqueued_at, last_error";
const PENDING_COLUMNS: &str = "id, payload, due_at, attempts, enqueued_at, last_error, parked_on";

/// Settles a claim: runs `f` only if `claim` still holds its lease.
fn holds_lease(tx: &Transaction<'_>, claim: &Claim) -> Result<(), OutboxError> {
    let held: Option<i64> = tx
        .prepare_cached("SELECT 1 FROM mesh_notify_outbox WHERE id = ?1 AND lease_id = ?2")
        .and_then(|mut s| {
            s.query_row(params![claim.id().to_string(), claim.lease_id], |r| {
                r.get(0)
            })
            .optional()
        })
        .map_err(unavailable)?;
    match held {
        Some(_) => Ok(()),
        None => Err(OutboxError::LeaseLost(claim.id())),
    }
}

fn move_to_dead(
    tx: &Transaction<'_>,
    id: &str,
    reason: &str,
    now: Timestamp,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT OR REPLACE INTO mesh_notify_outbox_dead
             (id, payload, due_at, attempts, enqueued_at, last_error, reason, died_at)
         SELECT id, payload, due_at, attempts, enqueued_at, last_error, ?2, ?3
         FROM mesh_notify_outbox WHERE id = ?1",
    )?
    .execute(params![id, reason, now.as_millis()])?;
    tx.prepare_cached("DELETE FROM mesh_notify_outbox WHERE id = ?1")?
        .execute(params![id])?;
    Ok(())
}

fn to_u64(v: i64) -> u64 {
    u64::try_from(v).unwrap_or(0)
}

#[async_trait]
impl Outbox for SqliteOutbox {
    fn backend(&self) -> &'static str {
        "sqlite"
    }

    async fn enqueue(&self, n: &Notification, due_at: Timestamp) -> Result<bool, OutboxError> {
        // Group commit through the writer task (started on first use, on the
        // caller's runtime).
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let writer = self.writer.get_or_init(|| {
                let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
                handle.spawn(group_commit(Arc::clone(&self.conn), rx));
                tx
            });
            let (reply, answer) = tokio::sync::oneshot::channel();
            if writer.send((n.clone(), due_at, reply)).is_ok() {
                if let Ok(result) = answer.await {
                    return result;
                }
            }
            // The writer's runtime is gone (a clone used from another runtime):
            // commit directly below.
        }
        let n = n.clone();
        self.with_conn(move |conn| insert(conn, &n, due_at, Timestamp::now()).map_err(unavailable))
            .await
    }

    async fn enqueue_batch(
        &self,
        ns: &[Notification],
        due_at: Timestamp,
    ) -> Result<usize, OutboxError> {
        if ns.is_empty() {
            return Ok(0);
        }
        let ns = ns.to_vec();
        self.with_conn(move |conn| {
            let now = Timestamp::now();
            let tx = immediate(conn)?;
            let mut added = 0;
            for n in &ns {
                if insert(&tx, n, due_at, now).map_err(unavailable)? {
                    added += 1;
                }
            }
            tx.commit().map_err(unavailable)?;
            Ok(added)
        })
        .await
    }

    async fn claim(
        &self,
        worker: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Claim>, OutboxError> {
        if max == 0 {
            return Ok(Vec::new());
        }
        let worker = worker.to_owned();
        let leased_by = worker.clone();
        // Leases are taken under the connection's lock; the payloads are decoded
        // after it is released (the connection may be shared with the
        // application's own transactions, see `on_connection`).
        let leased: Vec<(RawEntry, String)> = self
            .with_conn_relaxed(move |conn| {
                let now = Timestamp::now();
                let until = now.plus(lease);
                let tx = immediate(conn)?;
                let rows: Vec<RawEntry> = {
                    let mut stmt = tx
                        .prepare_cached(&format!(
                            "SELECT {PENDING_COLUMNS} FROM mesh_notify_outbox
                             WHERE due_at <= ?1 AND (lease_until IS NULL OR lease_until <= ?1)
                             ORDER BY due_at, id LIMIT ?2"
                        ))
                        .map_err(unavailable)?;
                    let limit = i64::try_from(max).unwrap_or(i64::MAX);
                    stmt.query_map(params![now.as_millis(), limit], RawEntry::from_row)
                        .and_then(|rows| rows.collect::<Result<_, _>>())
                        .map_err(unavailable)?
                };
                let mut leased = Vec::with_capacity(rows.len());
                {
                    let mut update = tx
                        .prepare_cached(
                            "UPDATE mesh_notify_outbox
                             SET lease_id = ?2, lease_until = ?3, worker = ?4, attempts = attempts + 1,
                                 parked_on = NULL
                             WHERE id = ?1",
                        )
                        .map_err(unavailable)?;
                    for raw in rows {
                        let lease_id = uuid::Uuid::now_v7().to_string();
                        update
                            .execute(params![raw.id, lease_id, until.as_millis(), leased_by])
                            .map_err(unavailable)?;
                        leased.push((raw, lease_id));
                    }
                }
                tx.commit().map_err(unavailable)?;
                Ok(leased)
            })
            .await?;
        let mut claims = Vec::with_capacity(leased.len());
        let mut corrupt = Vec::new();
        for (raw, lease_id) in leased {
            match raw.decode() {
                Ok(mut entry) => {
                    entry.attempts += 1;
                    entry.parked_on.clear();
                    claims.push(Claim {
                        entry,
                        lease_id,
                        worker: worker.clone(),
                    });
                }
                Err(e) => corrupt.push((raw.id, e.to_string())),
            }
        }
        if !corrupt.is_empty() {
            // Quarantine them so they cannot block the queue; `dead` reports them.
            self.with_conn(move |conn| {
                let now = Timestamp::now();
                let tx = immediate(conn)?;
                for (id, why) in &corrupt {
                    move_to_dead(&tx, id, why, now).map_err(unavailable)?;
                }
                tx.commit().map_err(unavailable)
            })
            .await?;
        }
        Ok(claims)
    }

    async fn ack(&self, claim: &Claim) -> Result<(), OutboxError> {
        let claim = claim.clone();
        self.with_conn(move |conn| {
            let deleted = conn
                .prepare_cached("DELETE FROM mesh_notify_outbox WHERE id = ?1 AND lease_id = ?2")
                .and_then(|mut s| s.execute(params![claim.id().to_string(), claim.lease_id]))
                .map_err(unavailable)?;
            if deleted == 1 {
                Ok(())
            } else {
                Err(OutboxError::LeaseLost(claim.id()))
            }
        })
        .await
    }

    async fn ack_batch(&self, claims: &[Claim]) -> Vec<Result<(), OutboxError>> {
        let claims = claims.to_vec();
        let n = claims.len();
        let result = self
            .with_conn_relaxed(move |conn| {
                // One transaction for the whole batch, not fsync'd on its own.
                let tx = conn
                    .transaction_with_behavior(TransactionBehavior::Immediate)
                    .map_err(unavailable)?;
                let mut results = Vec::with_capacity(claims.len());
                {
                    let mut stmt = tx
                        .prepare_cached(
                            "DELETE FROM mesh_notify_outbox WHERE id = ?1 AND lease_id = ?2",
                        )
                        .map_err(unavailable)?;
                    for claim in &claims {
                        let deleted = stmt
                            .execute(params![claim.id().to_string(), claim.lease_id])
                            .map_err(unavailable)?;
                        results.push(if deleted == 1 {
                            Ok(())
                        } else {
                            Err(OutboxError::LeaseLost(claim.id()))
                        });
                    }
                }
                tx.commit().map_err(unavailable)?;
                Ok(results)
            })
            .await;
        match result {
            Ok(results) => results,
            Err(e) => vec![Err(e); n],
        }
    }

    async fn retry_at(&self, claim: &Claim, when: Timestamp, why: &str) -> Result<(), OutboxError> {
        let claim = claim.clone();
        let why = why.to_owned();
        self.with_conn(move |conn| {
            let updated = conn
                .prepare_cached(
                    "UPDATE mesh_notify_outbox
                     SET due_at = ?3, last_error = ?4, lease_id = NULL, lease_until = NULL, worker = NULL
                     WHERE id = ?1 AND lease_id = ?2",
                )
                .and_then(|mut s| {
                    s.execute(params![claim.id().to_string(), claim.lease_id, when.as_millis(), why])
                })
                .map_err(unavailable)?;
            if updated == 1 {
                Ok(())
            } else {
                Err(OutboxError::LeaseLost(claim.id()))
            }
        })
        .await
    }

    async fn park(
        &self,
        claim: &Claim,
        providers: &[String],
        until: Timestamp,
        why: &str,
    ) -> Result<(), OutboxError> {
        let claim = claim.clone();
        let why = why.to_owned();
        let parked = parked_list(providers);
        self.with_conn_relaxed(move |conn| {
            let updated = conn
                .prepare_cached(
                    "UPDATE mesh_notify_outbox
                     SET due_at = ?3, last_error = ?4, parked_on = ?5, attempts = MAX(attempts - 1, 0),
                         lease_id = NULL, lease_until = NULL, worker = NULL
                     WHERE id = ?1 AND lease_id = ?2",
                )
                .and_then(|mut s| {
                    s.execute(params![
                        claim.id().to_string(),
                        claim.lease_id,
                        until.as_millis(),
                        why,
                        parked
                    ])
                })
                .map_err(unavailable)?;
            if updated == 1 {
                Ok(())
            } else {
                Err(OutboxError::LeaseLost(claim.id()))
            }
        })
        .await
    }

    async fn unpark(&self, provider: Option<&str>, limit: usize) -> Result<u64, OutboxError> {
        let pattern = provider.map_or_else(|| "%".to_owned(), parked_pattern);
        self.with_conn(move |conn| {
            let now = Timestamp::now().as_millis();
            conn.prepare_cached(
                "UPDATE mesh_notify_outbox SET due_at = ?1, parked_on = NULL
                 WHERE id IN (
                     SELECT id FROM mesh_notify_outbox
                     WHERE parked_on IS NOT NULL AND parked_on LIKE ?2 ESCAPE '\\'
                       AND (lease_until IS NULL OR lease_until <= ?1)
                     ORDER BY id LIMIT ?3)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    now,
                    pattern,
                    i64::try_from(limit).unwrap_or(i64::MAX)
                ])
            })
            .map(|n| n as u64)
            .map_err(unavailable)
        })
        .await
    }

    async fn renew(&self, claim: &Claim, lease: Duration) -> Result<(), OutboxError> {
        let claim = claim.clone();
        self.with_conn_relaxed(move |conn| {
            let until = Timestamp::now().plus(lease);
            let updated = conn
                .prepare_cached(
                    "UPDATE mesh_notify_outbox SET lease_until = ?3 WHERE id = ?1 AND lease_id = ?2",
                )
                .and_then(|mut s| {
                    s.execute(params![claim.id().to_string(), claim.lease_id, until.as_millis()])
                })
                .map_err(unavailable)?;
            if updated == 1 {
                Ok(())
            } else {
                Err(OutboxError::LeaseLost(claim.id()))
            }
        })
        .await
    }

    async fn dead_letter(&self, claim: &Claim, why: &str) -> Result<(), OutboxError> {
        let claim = claim.clone();
        let why = why.to_owned();
        self.with_conn(move |conn| {
            let tx = immediate(conn)?;
            holds_lease(&tx, &claim)?;
            move_to_dead(&tx, &claim.id().to_string(), &why, Timestamp::now())
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)
        })
        .await
    }

    async fn cancel(&self, id: NotificationId) -> Result<bool, OutboxError> {
        self.with_conn(move |conn| {
            conn.prepare_cached("DELETE FROM mesh_notify_outbox WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id.to_string()]))
                .map(|n| n == 1)
                .map_err(unavailable)
        })
        .await
    }

    async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        self.with_conn(move |conn| {
            let now = Timestamp::now().as_millis();
            let tx = conn.transaction().map_err(unavailable)?;
            let (pending, in_flight, due, oldest, parked): (i64, i64, i64, Option<i64>, i64) = tx
                .prepare_cached(
                    "SELECT COUNT(*),
                        COALESCE(SUM(lease_until > ?1), 0),
                        COALESCE(SUM(due_at <= ?1 AND (lease_until IS NULL OR lease_until <= ?1)), 0),
                        MIN(CASE WHEN due_at <= ?1 AND (lease_until IS NULL OR lease_until <= ?1)
                            THEN due_at END),
                        COALESCE(SUM(parked_on IS NOT NULL AND due_at > ?1
                            AND (lease_until IS NULL OR lease_until <= ?1)), 0)
                     FROM mesh_notify_outbox",
                )
                .and_then(|mut s| s.query_row(params![now], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?))))
                .map_err(unavailable)?;
            let dead: i64 = tx
                .prepare_cached("SELECT COUNT(*) FROM mesh_notify_outbox_dead")
                .and_then(|mut s| s.query_row([], |r| r.get(0)))
                .map_err(unavailable)?;
            Ok(OutboxStats {
                pending: to_u64(pending),
                in_flight: to_u64(in_flight),
                due: to_u64(due),
                dead: to_u64(dead),
                oldest_due_age_ms: oldest.map_or(0, |o| to_u64(now - o)),
                parked: to_u64(parked),
            })
        })
        .await
    }

    async fn pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, OutboxError> {
        self.with_conn(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {PENDING_COLUMNS} FROM mesh_notify_outbox ORDER BY due_at, id LIMIT ?1"
                ))
                .map_err(unavailable)?;
            let rows: Vec<RawEntry> = stmt
                .query_map(
                    params![i64::try_from(limit).unwrap_or(i64::MAX)],
                    RawEntry::from_row,
                )
                .and_then(|rows| rows.collect::<Result<_, _>>())
                .map_err(unavailable)?;
            rows.iter().map(RawEntry::decode).collect()
        })
        .await
    }

    async fn dead(&self, limit: usize) -> Result<Vec<DeadEntry>, OutboxError> {
        self.with_conn(move |conn| {
            let mut stmt = conn
                .prepare_cached(&format!(
                    "SELECT {ENTRY_COLUMNS}, reason, died_at FROM mesh_notify_outbox_dead
                     ORDER BY died_at DESC, rowid DESC LIMIT ?1"
                ))
                .map_err(unavailable)?;
            let rows: Vec<(RawEntry, String, i64)> = stmt
                .query_map(params![i64::try_from(limit).unwrap_or(i64::MAX)], |r| {
                    Ok((RawEntry::from_dead_row(r)?, r.get(6)?, r.get(7)?))
                })
                .and_then(|rows| rows.collect::<Result<_, _>>())
                .map_err(unavailable)?;
            rows.into_iter()
                .map(|(raw, reason, died_at)| {
                    Ok(DeadEntry {
                        entry: raw.decode()?,
                        reason,
                        died_at: Timestamp(died_at),
                    })
                })
                .collect()
        })
        .await
    }

    async fn requeue_dead(&self, id: NotificationId) -> Result<bool, OutboxError> {
        self.with_conn(move |conn| {
            let now = Timestamp::now().as_millis();
            let tx = immediate(conn)?;
            let id = id.to_string();
            tx.prepare_cached(
                "INSERT INTO mesh_notify_outbox (id, payload, due_at, attempts, enqueued_at, last_error)
                 SELECT id, payload, ?2, 0, enqueued_at, last_error
                 FROM mesh_notify_outbox_dead WHERE id = ?1
                 ON CONFLICT (id) DO NOTHING",
            )
            .and_then(|mut s| s.execute(params![id, now]))
            .map_err(unavailable)?;
            let removed = tx
                .prepare_cached("DELETE FROM mesh_notify_outbox_dead WHERE id = ?1")
                .and_then(|mut s| s.execute(params![id]))
                .map_err(unavailable)?;
            tx.commit().map_err(unavailable)?;
            Ok(removed == 1)
        })
        .await
    }

    async fn purge_dead(&self) -> Result<u64, OutboxError> {
        self.with_conn(move |conn| {
            conn.execute("DELETE FROM mesh_notify_outbox_dead", [])
                .map(|n| n as u64)
                .map_err(unavailable)
        })
        .await
    }

    async fn health(&self) -> Health {
        let result = self
            .with_conn(|conn| {
                conn.query_row("SELECT COUNT(*) FROM mesh_notify_outbox", [], |r| {
                    r.get::<_, i64>(0)
                })
                .map_err(unavailable)
            })
            .await;
        match result {
            Ok(_) => Health::Healthy,
            Err(e) => Health::Unhealthy(format!("{}: {e}", self.path.display())),
        }
    }
}
