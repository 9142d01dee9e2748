//! # mesh-notify-outbox-redis
//!
//! The scale-out [`Outbox`] of mesh-notify: a Redis Stream read through a consumer
//! group, so any number of dispatcher instances share one queue and a crashed
//! worker's entries are taken over by another once their lease expires.
//!
//! * Entries wait in a sorted set by due time (not-yet-due enqueues and retries
//!   alike) and are moved into the stream atomically (Lua) by the `claim` that
//!   hands them out, oldest due first, so `claim` honours due order exactly.
//! * A claim is the stream entry in the worker's pending list plus a lease token
//!   (`<stream id>/<attempt>`) and deadline stored with the entry; `ack`,
//!   `retry_at` and `dead_letter` check the token, so a worker whose lease was
//!   taken over gets [`OutboxError::LeaseLost`]. Expired leases are found through
//!   a sorted set of deadlines and moved to the new worker with `XCLAIM`, so each
//!   claim's own lease duration is honoured (not the group-wide idle time).
//! * Stream entries are deleted (`XDEL`) only after `XACK`; the stream is never
//!   trimmed with `MAXLEN`.
//! * Dead letters are kept in a hash per entry plus a sorted set (most recent
//!   first), re-queued by id or purged.
//! * Durability is Redis's: run it with `appendonly yes` (and `appendfsync always`
//!   for `enqueue` to return only after fsync); [`Outbox::health`] reports
//!   `Degraded` when AOF is off.
//!
//! All keys live under a configurable prefix, so several outboxes (or tests) can
//! share one server.
//!
//! ```no_run
//! use mesh_notify_core::{Kind, Notification, Outbox, Recipient, Timestamp};
//! use mesh_notify_outbox_redis::RedisOutbox;
//!
//! # async fn demo() -> Result<(), mesh_notify_core::OutboxError> {
//! let outbox = RedisOutbox::connect("redis://127.0.0.1:6379/", "mesh:outbox").await?;
//! let n = Notification::new(Kind::Chat, Recipient::new("bob", "Bob"), "Alice", "Salut !");
//! outbox.enqueue(&n, Timestamp::now()).await?;
//! let claims = outbox.claim("worker-1", 16, std::time::Duration::from_secs(30)).await?;
//! for claim in &claims {
//!     outbox.ack(claim).await?;
//! }
//! # Ok(()) }
//! ```

mod scripts;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use mesh_notify_core::{
    Claim, DeadEntry, Health, Notification, NotificationId, Outbox, OutboxEntry, OutboxError,
    OutboxStats, Timestamp,
};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{RedisError, Script, ScriptInvocation};

use scripts::Scripts;

/// The consumer group every worker reads through.
pub const GROUP: &str = "mesh-notify";

/// How many entries one `enqueue_batch` script call stores.
const BATCH_CHUNK: usize = 500;

/// How many dead letters one purge step deletes.
const PURGE_CHUNK: usize = 1000;

/// Connection tuning for [`RedisOutbox::connect_with`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisOutboxConfig {
    /// Bound on connecting at start-up (and on each reconnection attempt). Default 3 s.
    pub connect_timeout: Duration,
    /// Bound on each command's answer. Default 5 s.
    pub response_timeout: Duration,
}

impl Default for RedisOutboxConfig {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(3),
            response_timeout: Duration::from_secs(5),
        }
    }
}

/// Key names under one prefix.
#[derive(Debug, Clone)]
struct Keys {
    stream: String,
    delayed: String,
    leases: String,
    dead: String,
    dead_seq: String,
    entry_prefix: String,
    dead_prefix: String,
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            stream: format!("{prefix}:stream"),
            delayed: format!("{prefix}:delayed"),
            leases: format!("{prefix}:leases"),
            dead: format!("{prefix}:dead"),
            dead_seq: format!("{prefix}:deadseq"),
            entry_prefix: format!("{prefix}:e:"),
            dead_prefix: format!("{prefix}:d:"),
        }
    }

    fn entry(&self, id: &str) -> String {
        format!("{}{id}", self.entry_prefix)
    }

    fn dead_entry(&self, id: &str) -> String {
        format!("{}{id}", self.dead_prefix)
    }
}

/// The Redis outbox. Cheap to clone (clones share one multiplexed, automatically
/// reconnecting connection).
#[derive(Clone)]
pub struct RedisOutbox {
    conn: ConnectionManager,
    keys: Arc<Keys>,
    scripts: Arc<Scripts>,
    target: Arc<str>,
}

impl std::fmt::Debug for RedisOutbox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisOutbox")
            .field("target", &self.target)
            .field("stream", &self.keys.stream)
            .finish()
    }
}

/// `url` with any password replaced, for errors and logs.
pub fn redact_url(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut u) => {
            if u.password().is_some() {
                // Only fails for URLs that cannot have credentials, which this one has.
                let _ = u.set_password(Some("***"));
            }
            u.to_string()
        }
        Err(_) => "<unparsable Redis URL>".to_owned(),
    }
}

fn unavailable(e: RedisError) -> OutboxError {
    OutboxError::Unavailable(format!("redis: {e}"))
}

fn now_ms() -> i64 {
    Timestamp::now().as_millis()
}

type EntryRow = (String, String, i64, i64, u32, Option<String>);

fn decode_entry(
    id: &str,
    json: &str,
    due: i64,
    enq: i64,
    attempts: u32,
    err: Option<String>,
) -> Result<OutboxEntry, OutboxError> {
    let notification: Notification =
        serde_json::from_str(json).map_err(|e| OutboxError::Corrupt {
            id: id.to_owned(),
            reason: format!("notification JSON: {e}"),
        })?;
    Ok(OutboxEntry {
        notification,
        attempts,
        due_at: Timestamp(due),
        enqueued_at: Timestamp(enq),
        last_error: err,
    })
}

impl RedisOutbox {
    /// Connects to `url` (e.g. `redis://:password@host:6379/0`) and uses keys under
    /// `prefix`, with the default [`RedisOutboxConfig`].
    ///
    /// Fails with [`OutboxError::Open`] naming the URL (password hidden) if the
    /// URL is invalid or the server does not answer within the connect timeout.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, OutboxError> {
        Self::connect_with(url, prefix, &RedisOutboxConfig::default()).await
    }

    /// Like [`connect`](Self::connect), with explicit tuning.
    pub async fn connect_with(
        url: &str,
        prefix: &str,
        config: &RedisOutboxConfig,
    ) -> Result<Self, OutboxError> {
        let target = redact_url(url);
        let open_err = |reason: String| OutboxError::Open {
            target: target.clone(),
            reason,
        };
        if prefix.is_empty() {
            return Err(open_err("the key prefix must not be empty".into()));
        }
        // The client's own parse errors may quote the URL: keep them out.
        let client = redis::Client::open(url)
            .map_err(|e| open_err(format!("invalid Redis URL ({:?})", e.kind())))?;
        let manager_config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(config.connect_timeout))
            .set_response_timeout(Some(config.response_timeout))
            .set_number_of_retries(2);
        let connect = async {
            let mut conn = ConnectionManager::new_with_config(client, manager_config).await?;
            let keys = Keys::new(prefix);
            let created: Result<(), RedisError> = redis::cmd("XGROUP")
                .arg("CREATE")
                .arg(&keys.stream)
                .arg(GROUP)
                .arg("0")
                .arg("MKSTREAM")
                .query_async(&mut conn)
                .await;
            match created {
                Err(e) if e.code() != Some("BUSYGROUP") => Err(e),
                _ => Ok((conn, keys)),
            }
        };
        let (conn, keys) = tokio::time::timeout(config.connect_timeout, connect)
            .await
            .map_err(|_| open_err(format!("no answer within {:?}", config.connect_timeout)))?
            .map_err(|e| open_err(e.to_string()))?;
        Ok(Self {
            conn,
            keys: Arc::new(keys),
            scripts: Arc::new(Scripts::new()),
            target: target.into(),
        })
    }

    /// The server, as shown in errors (password hidden).
    pub fn target(&self) -> &str {
        &self.target
    }

    async fn run<T: redis::FromRedisValue>(
        &self,
        invocation: &ScriptInvocation<'_>,
    ) -> Result<T, OutboxError> {
        let mut conn = self.conn.clone();
        invocation
            .invoke_async(&mut conn)
            .await
            .map_err(unavailable)
    }

    fn prepare<'a>(script: &'a Script, keys: &[&str]) -> ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        for k in keys {
            inv.key(*k);
        }
        inv
    }

    /// Stores one chunk; returns how many were new.
    async fn enqueue_chunk(
        &self,
        ns: &[Notification],
        due_at: Timestamp,
        now: i64,
    ) -> Result<usize, OutboxError> {
        let k = &self.keys;
        let mut inv = Self::prepare(&self.scripts.enqueue, &[&k.delayed]);
        inv.arg(&k.entry_prefix).arg(due_at.as_millis()).arg(now);
        for n in ns {
            let json = serde_json::to_string(n).map_err(|e| {
                OutboxError::Unavailable(format!("cannot encode notification {}: {e}", n.id))
            })?;
            inv.arg(n.id.to_string()).arg(json);
        }
        self.run(&inv).await
    }

    /// Settles `claim` with `script` (which answers 1, or 0 for a lost lease).
    async fn settle(&self, inv: &ScriptInvocation<'_>, claim: &Claim) -> Result<(), OutboxError> {
        match self.run::<i64>(inv).await? {
            1 => Ok(()),
            _ => Err(OutboxError::LeaseLost(claim.id())),
        }
    }
}

#[async_trait]
impl Outbox for RedisOutbox {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn enqueue(&self, n: &Notification, due_at: Timestamp) -> Result<bool, OutboxError> {
        Ok(self
            .enqueue_chunk(std::slice::from_ref(n), due_at, now_ms())
            .await?
            == 1)
    }

    async fn enqueue_batch(
        &self,
        ns: &[Notification],
        due_at: Timestamp,
    ) -> Result<usize, OutboxError> {
        let now = now_ms();
        // Chunks go out together on the multiplexed connection (pipelined).
        let added = futures_util::future::try_join_all(
            ns.chunks(BATCH_CHUNK)
                .map(|chunk| self.enqueue_chunk(chunk, due_at, now)),
        )
        .await?;
        Ok(added.into_iter().sum())
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
        let k = &self.keys;
        let mut inv = Self::prepare(&self.scripts.claim, &[&k.stream, &k.delayed, &k.leases]);
        let lease_ms = u64::try_from(lease.as_millis()).unwrap_or(u64::MAX).max(1);
        inv.arg(GROUP)
            .arg(worker)
            .arg(max)
            .arg(lease_ms)
            .arg(now_ms())
            .arg(&k.entry_prefix);
        type Row = (String, String, u32, String, i64, i64, Option<String>);
        let rows: Vec<Row> = self.run(&inv).await?;
        let mut claims = Vec::with_capacity(rows.len());
        for (id, lease_id, attempts, json, due, enq, err) in rows {
            let claim = decode_entry(&id, &json, due, enq, attempts, err).map(|entry| Claim {
                entry,
                lease_id: lease_id.clone(),
                worker: worker.to_owned(),
            });
            match claim {
                Ok(claim) => claims.push(claim),
                Err(corrupt) => {
                    // Quarantine it so it cannot block the queue; `dead` reports it.
                    let mut inv = Self::prepare(
                        &self.scripts.dead_letter,
                        &[
                            &k.stream,
                            &k.leases,
                            &k.entry(&id),
                            &k.dead_entry(&id),
                            &k.dead,
                            &k.dead_seq,
                        ],
                    );
                    inv.arg(GROUP)
                        .arg(&id)
                        .arg(&lease_id)
                        .arg(corrupt.to_string())
                        .arg(now_ms());
                    self.run::<i64>(&inv).await?;
                }
            }
        }
        Ok(claims)
    }

    async fn ack(&self, claim: &Claim) -> Result<(), OutboxError> {
        let k = &self.keys;
        let id = claim.id().to_string();
        let mut inv = Self::prepare(&self.scripts.ack, &[&k.stream, &k.leases, &k.entry(&id)]);
        inv.arg(GROUP).arg(&id).arg(&claim.lease_id);
        self.settle(&inv, claim).await
    }

    async fn retry_at(&self, claim: &Claim, when: Timestamp, why: &str) -> Result<(), OutboxError> {
        let k = &self.keys;
        let id = claim.id().to_string();
        let mut inv = Self::prepare(
            &self.scripts.retry,
            &[&k.stream, &k.delayed, &k.leases, &k.entry(&id)],
        );
        inv.arg(GROUP)
            .arg(&id)
            .arg(&claim.lease_id)
            .arg(when.as_millis())
            .arg(why);
        self.settle(&inv, claim).await
    }

    async fn dead_letter(&self, claim: &Claim, why: &str) -> Result<(), OutboxError> {
        let k = &self.keys;
        let id = claim.id().to_string();
        let mut inv = Self::prepare(
            &self.scripts.dead_letter,
            &[
                &k.stream,
                &k.leases,
                &k.entry(&id),
                &k.dead_entry(&id),
                &k.dead,
                &k.dead_seq,
            ],
        );
        inv.arg(GROUP)
            .arg(&id)
            .arg(&claim.lease_id)
            .arg(why)
            .arg(now_ms());
        self.settle(&inv, claim).await
    }

    async fn cancel(&self, id: NotificationId) -> Result<bool, OutboxError> {
        let k = &self.keys;
        let id = id.to_string();
        let mut inv = Self::prepare(
            &self.scripts.cancel,
            &[&k.stream, &k.delayed, &k.leases, &k.entry(&id)],
        );
        inv.arg(GROUP).arg(&id);
        Ok(self.run::<i64>(&inv).await? == 1)
    }

    async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let k = &self.keys;
        let now = now_ms();
        let mut inv = Self::prepare(&self.scripts.stats, &[&k.delayed, &k.leases, &k.dead]);
        inv.arg(now).arg(&k.entry_prefix);
        let (pending, in_flight, due, dead, oldest): (u64, u64, u64, u64, i64) =
            self.run(&inv).await?;
        Ok(OutboxStats {
            pending,
            in_flight,
            due,
            dead,
            oldest_due_age_ms: if oldest < 0 {
                0
            } else {
                u64::try_from(now - oldest).unwrap_or(0)
            },
        })
    }

    async fn pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, OutboxError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let k = &self.keys;
        let mut inv = Self::prepare(&self.scripts.pending, &[&k.delayed, &k.leases]);
        inv.arg(&k.entry_prefix).arg(limit);
        let rows: Vec<EntryRow> = self.run(&inv).await?;
        rows.into_iter()
            .map(|(id, json, due, enq, att, err)| decode_entry(&id, &json, due, enq, att, err))
            .collect()
    }

    async fn dead(&self, limit: usize) -> Result<Vec<DeadEntry>, OutboxError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let k = &self.keys;
        let mut inv = Self::prepare(&self.scripts.dead, &[&k.dead]);
        inv.arg(&k.dead_prefix).arg(limit);
        type Row = (String, String, i64, i64, u32, Option<String>, String, i64);
        let rows: Vec<Row> = self.run(&inv).await?;
        rows.into_iter()
            .map(|(id, json, due, enq, att, err, reason, died)| {
                Ok(DeadEntry {
                    entry: decode_entry(&id, &json, due, enq, att, err)?,
                    reason,
                    died_at: Timestamp(died),
                })
            })
            .collect()
    }

    async fn requeue_dead(&self, id: NotificationId) -> Result<bool, OutboxError> {
        let k = &self.keys;
        let id = id.to_string();
        let mut inv = Self::prepare(
            &self.scripts.requeue,
            &[&k.delayed, &k.dead, &k.dead_entry(&id), &k.entry(&id)],
        );
        inv.arg(&id).arg(now_ms());
        Ok(self.run::<i64>(&inv).await? == 1)
    }

    async fn purge_dead(&self) -> Result<u64, OutboxError> {
        let k = &self.keys;
        let mut total = 0;
        loop {
            let mut inv = Self::prepare(&self.scripts.purge, &[&k.dead]);
            inv.arg(&k.dead_prefix).arg(PURGE_CHUNK);
            let n: u64 = self.run(&inv).await?;
            total += n;
            if n < PURGE_CHUNK as u64 {
                return Ok(total);
            }
        }
    }

    async fn health(&self) -> Health {
        let mut conn = self.conn.clone();
        if let Err(e) = redis::cmd("PING").query_async::<String>(&mut conn).await {
            return Health::Unhealthy(format!("redis {}: {e}", self.target));
        }
        let appendonly: Result<(String, String), RedisError> = redis::cmd("CONFIG")
            .arg("GET")
            .arg("appendonly")
            .query_async(&mut conn)
            .await;
        match appendonly {
            Ok((_, value)) if value.eq_ignore_ascii_case("no") => Health::Degraded(format!(
                "redis {}: appendonly is off, queued notifications can be lost on restart",
                self.target
            )),
            Ok(_) => Health::Healthy,
            Err(e) => Health::Degraded(format!(
                "redis {}: cannot check that appendonly is on ({e})",
                self.target
            )),
        }
    }
}
