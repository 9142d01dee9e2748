//! # mesh-notify-outbox-redis
//!
//! The scale-out [`Outbox`] of mesh-notify: a Redis Stream read through a consumer
//! group, so any number of dispatcher instances share one queue and a crashed
//! worker's entries are taken over by another once their lease expires.
//!
//! * Entries wait in a sorted set by due time (not-yet-due enqueues, retries and
//!   parked entries alike) and are moved into the stream atomically (Lua) by the
//!   `claim` that hands them out, oldest due first, so `claim` honours due order
//!   exactly. Every `claim` also reads stream entries that were never delivered,
//!   so an entry added to the stream is never stranded there.
//! * A claim is the stream entry in the worker's pending list plus a lease token
//!   (`<stream id>/<attempt>`) stored with the entry and a deadline in a sorted
//!   set; `ack`, `retry_at`, `park`, `renew` and `dead_letter` check the token, so
//!   a worker whose lease was taken over gets [`OutboxError::LeaseLost`]. Expired
//!   leases are found through that sorted set and moved to the new worker with
//!   `XCLAIM`, so each claim's own lease duration is honoured (not the group-wide
//!   idle time); `renew` pushes the deadline back.
//! * Lease deadlines and due checks use the Redis server's clock (`TIME` inside the
//!   scripts), so workers whose clocks disagree still agree on leases; due times
//!   chosen by the caller (`enqueue`, `retry_at`, `park`) are taken as given.
//! * `park` puts the entry back in the waiting set with its give-up time as due
//!   time (so it comes back by itself then, to be dead-lettered) and records the
//!   providers it waits for; `unpark` makes such entries due now, oldest first.
//! * Stream entries are deleted (`XDEL`) only after `XACK`; the stream is never
//!   trimmed with `MAXLEN`. `ack_batch` settles a whole batch in one script call.
//! * Dead letters are kept in their own hashes plus a sorted set (most recent
//!   first), re-queued by id or purged.
//! * Durability is Redis's: run it with `appendonly yes` (and `appendfsync always`
//!   for `enqueue` to return only after fsync); [`Outbox::health`] reports
//!   `Degraded` when AOF is off.
//!
//! All keys are `{prefix}:<name>`: several outboxes (or tests) can share one server
//! under different prefixes, and the braces make the prefix the Redis Cluster hash
//! tag, so one outbox's keys share a slot. Every script declares every key it
//! touches in `KEYS` (the layout is documented in the `scripts` module), so the
//! scripts are Cluster-safe. (This layout replaced the per-entry `prefix:e:<id>`
//! hashes of earlier versions; entries stored by those are not read.)
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

use scripts::{Scripts, KEY_NAMES};

/// The consumer group every worker reads through.
pub const GROUP: &str = "mesh-notify";

/// How many entries one `enqueue_batch` script call stores.
const BATCH_CHUNK: usize = 500;

/// How many claims one `ack_batch` script call settles.
const ACK_CHUNK: usize = 500;

/// How many dead letters one purge step deletes.
const PURGE_CHUNK: usize = 1000;

/// Largest `max`/`limit` handed to the scripts: larger counts reach Redis as
/// floats it does not take for integers (and could never be filled anyway).
const MAX_COUNT: usize = 1 << 31;

/// Longest lease handed to the scripts (ms; ~31,700 years), so the deadline stays
/// an exact integer in Lua's doubles.
const MAX_LEASE_MS: u64 = 1_000_000_000_000_000;

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

/// Key names under one prefix: `{prefix}:<name>` for each of [`KEY_NAMES`], in
/// that order (the order of `KEYS` in every script).
#[derive(Debug, Clone)]
struct Keys {
    all: [String; KEY_NAMES.len()],
}

impl Keys {
    fn new(prefix: &str) -> Self {
        Self {
            all: KEY_NAMES.map(|name| format!("{{{prefix}}}:{name}")),
        }
    }

    fn stream(&self) -> &str {
        &self.all[0]
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
            .field("stream", &self.keys.stream())
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

/// One pending entry as the scripts return it: id, notification JSON, due,
/// enqueued, attempts, last error, parked-on providers (JSON array).
type EntryRow = (
    String,
    Option<String>,
    i64,
    i64,
    u32,
    Option<String>,
    Option<String>,
);

fn decode_entry(
    id: &str,
    json: Option<&str>,
    due: i64,
    enq: i64,
    attempts: u32,
    err: Option<String>,
    park: Option<&str>,
) -> Result<OutboxEntry, OutboxError> {
    let corrupt = |reason: String| OutboxError::Corrupt {
        id: id.to_owned(),
        reason,
    };
    let json = json.ok_or_else(|| corrupt("notification JSON missing".into()))?;
    let notification: Notification =
        serde_json::from_str(json).map_err(|e| corrupt(format!("notification JSON: {e}")))?;
    let parked_on = match park {
        Some(p) => serde_json::from_str(p).map_err(|e| corrupt(format!("parked-on list: {e}")))?,
        None => Vec::new(),
    };
    Ok(OutboxEntry {
        notification,
        attempts,
        due_at: Timestamp(due),
        enqueued_at: Timestamp(enq),
        last_error: err,
        parked_on,
    })
}

impl RedisOutbox {
    /// Connects to `url` (e.g. `redis://:password@host:6379/0`) and uses keys under
    /// `prefix`, with the default [`RedisOutboxConfig`].
    ///
    /// Fails with [`OutboxError::Open`] naming the URL (password hidden) if the
    /// URL is invalid or the server does not answer within the connect timeout,
    /// and if `prefix` is empty or contains `{` or `}` (it becomes the keys' Redis
    /// Cluster hash tag).
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
        if prefix.contains(['{', '}']) {
            return Err(open_err(format!(
                "the key prefix {prefix:?} must not contain '{{' or '}}' (the outbox puts it \
                 in braces itself, as the Redis Cluster hash tag)"
            )));
        }
        // The client's own parse errors may quote the URL: keep them out.
        // TCP_NODELAY: redis-rs leaves Nagle's algorithm on by default, and a
        // small command after a small write then waits for the delayed ACK (up to
        // 40 ms on Linux).
        let info = redis::IntoConnectionInfo::into_connection_info(url)
            .map_err(|e| open_err(format!("invalid Redis URL ({:?})", e.kind())))?;
        let info = info.set_tcp_settings(redis::io::tcp::TcpSettings::default().set_nodelay(true));
        let client = redis::Client::open(info)
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
                .arg(keys.stream())
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

    /// An invocation of `script` with every key declared.
    fn prepare<'a>(&self, script: &'a Script) -> ScriptInvocation<'a> {
        let mut inv = script.prepare_invoke();
        for k in &self.keys.all {
            inv.key(k);
        }
        inv
    }

    /// Stores one chunk; returns how many were new.
    async fn enqueue_chunk(
        &self,
        ns: &[Notification],
        due_at: Timestamp,
    ) -> Result<usize, OutboxError> {
        let mut inv = self.prepare(&self.scripts.enqueue);
        inv.arg(due_at.as_millis());
        for n in ns {
            let json = serde_json::to_string(n).map_err(|e| {
                OutboxError::Unavailable(format!("cannot encode notification {}: {e}", n.id))
            })?;
            inv.arg(n.id.to_string()).arg(json);
        }
        self.run(&inv).await
    }

    /// Acks one chunk in one script call: one result per claim, in order.
    async fn ack_chunk(&self, claims: &[Claim]) -> Vec<Result<(), OutboxError>> {
        let mut inv = self.prepare(&self.scripts.ack);
        inv.arg(GROUP);
        for c in claims {
            inv.arg(c.id().to_string()).arg(&c.lease_id);
        }
        match self.run::<Vec<i64>>(&inv).await {
            Ok(done) => claims
                .iter()
                .enumerate()
                .map(|(i, c)| match done.get(i) {
                    Some(1) => Ok(()),
                    _ => Err(OutboxError::LeaseLost(c.id())),
                })
                .collect(),
            Err(e) => claims.iter().map(|_| Err(e.clone())).collect(),
        }
    }

    /// Settles `claim` with `script` (which answers 1, or 0 for a lost lease).
    async fn settle(&self, inv: &ScriptInvocation<'_>, claim: &Claim) -> Result<(), OutboxError> {
        match self.run::<i64>(inv).await? {
            1 => Ok(()),
            _ => Err(OutboxError::LeaseLost(claim.id())),
        }
    }

    /// Moves a claimed entry to the dead letters (lease token `lease_id`).
    async fn dead_letter_by_token(
        &self,
        id: &str,
        lease_id: &str,
        why: &str,
    ) -> Result<i64, OutboxError> {
        let mut inv = self.prepare(&self.scripts.dead_letter);
        inv.arg(GROUP).arg(id).arg(lease_id).arg(why);
        self.run(&inv).await
    }
}

#[async_trait]
impl Outbox for RedisOutbox {
    fn backend(&self) -> &'static str {
        "redis"
    }

    async fn enqueue(&self, n: &Notification, due_at: Timestamp) -> Result<bool, OutboxError> {
        Ok(self.enqueue_chunk(std::slice::from_ref(n), due_at).await? == 1)
    }

    async fn enqueue_batch(
        &self,
        ns: &[Notification],
        due_at: Timestamp,
    ) -> Result<usize, OutboxError> {
        // Chunks go out together on the multiplexed connection (pipelined).
        let added = futures_util::future::try_join_all(
            ns.chunks(BATCH_CHUNK)
                .map(|chunk| self.enqueue_chunk(chunk, due_at)),
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
        let mut inv = self.prepare(&self.scripts.claim);
        let lease_ms = u64::try_from(lease.as_millis())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_LEASE_MS);
        inv.arg(GROUP)
            .arg(worker)
            .arg(max.min(MAX_COUNT))
            .arg(lease_ms);
        type Row = (
            String,
            String,
            u32,
            Option<String>,
            i64,
            i64,
            Option<String>,
        );
        let rows: Vec<Row> = self.run(&inv).await?;
        let mut claims = Vec::with_capacity(rows.len());
        for (id, lease_id, attempts, json, due, enq, err) in rows {
            let claim =
                decode_entry(&id, json.as_deref(), due, enq, attempts, err, None).map(|entry| {
                    Claim {
                        entry,
                        lease_id: lease_id.clone(),
                        worker: worker.to_owned(),
                    }
                });
            match claim {
                Ok(claim) => claims.push(claim),
                Err(corrupt) => {
                    // Quarantine it so it cannot block the queue; `dead` reports it.
                    self.dead_letter_by_token(&id, &lease_id, &corrupt.to_string())
                        .await?;
                }
            }
        }
        Ok(claims)
    }

    async fn ack(&self, claim: &Claim) -> Result<(), OutboxError> {
        self.ack_chunk(std::slice::from_ref(claim))
            .await
            .pop()
            .unwrap_or(Err(OutboxError::LeaseLost(claim.id())))
    }

    async fn ack_batch(&self, claims: &[Claim]) -> Vec<Result<(), OutboxError>> {
        // One script call per chunk; chunks go out together (pipelined).
        futures_util::future::join_all(claims.chunks(ACK_CHUNK).map(|c| self.ack_chunk(c)))
            .await
            .into_iter()
            .flatten()
            .collect()
    }

    async fn retry_at(&self, claim: &Claim, when: Timestamp, why: &str) -> Result<(), OutboxError> {
        let mut inv = self.prepare(&self.scripts.retry);
        inv.arg(GROUP)
            .arg(claim.id().to_string())
            .arg(&claim.lease_id)
            .arg(when.as_millis())
            .arg(why);
        self.settle(&inv, claim).await
    }

    async fn park(
        &self,
        claim: &Claim,
        providers: &[String],
        until: Timestamp,
        why: &str,
    ) -> Result<(), OutboxError> {
        let mut inv = self.prepare(&self.scripts.park);
        inv.arg(GROUP)
            .arg(claim.id().to_string())
            .arg(&claim.lease_id)
            .arg(until.as_millis())
            .arg(why);
        for p in providers {
            inv.arg(p);
        }
        self.settle(&inv, claim).await
    }

    async fn unpark(&self, provider: Option<&str>, limit: usize) -> Result<u64, OutboxError> {
        if limit == 0 {
            return Ok(0);
        }
        let mut inv = self.prepare(&self.scripts.unpark);
        inv.arg(limit.min(MAX_COUNT));
        if let Some(p) = provider {
            inv.arg(p);
        }
        self.run(&inv).await
    }

    async fn renew(&self, claim: &Claim, lease: Duration) -> Result<(), OutboxError> {
        let lease_ms = u64::try_from(lease.as_millis())
            .unwrap_or(u64::MAX)
            .clamp(1, MAX_LEASE_MS);
        let mut inv = self.prepare(&self.scripts.renew);
        inv.arg(claim.id().to_string())
            .arg(&claim.lease_id)
            .arg(lease_ms);
        self.settle(&inv, claim).await
    }

    async fn dead_letter(&self, claim: &Claim, why: &str) -> Result<(), OutboxError> {
        match self
            .dead_letter_by_token(&claim.id().to_string(), &claim.lease_id, why)
            .await?
        {
            1 => Ok(()),
            _ => Err(OutboxError::LeaseLost(claim.id())),
        }
    }

    async fn cancel(&self, id: NotificationId) -> Result<bool, OutboxError> {
        let mut inv = self.prepare(&self.scripts.cancel);
        inv.arg(GROUP).arg(id.to_string());
        Ok(self.run::<i64>(&inv).await? == 1)
    }

    async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let inv = self.prepare(&self.scripts.stats);
        let (pending, in_flight, due, dead, oldest, parked, now): (
            u64,
            u64,
            u64,
            u64,
            i64,
            u64,
            i64,
        ) = self.run(&inv).await?;
        Ok(OutboxStats {
            pending,
            in_flight,
            due,
            dead,
            oldest_due_age_ms: if oldest < 0 {
                0
            } else {
                u64::try_from(now.saturating_sub(oldest)).unwrap_or(0)
            },
            parked,
        })
    }

    async fn pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, OutboxError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut inv = self.prepare(&self.scripts.pending);
        inv.arg(limit.min(MAX_COUNT));
        let rows: Vec<EntryRow> = self.run(&inv).await?;
        rows.into_iter()
            .map(|(id, json, due, enq, att, err, park)| {
                decode_entry(&id, json.as_deref(), due, enq, att, err, park.as_deref())
            })
            .collect()
    }

    async fn dead(&self, limit: usize) -> Result<Vec<DeadEntry>, OutboxError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut inv = self.prepare(&self.scripts.dead);
        inv.arg(limit.min(MAX_COUNT));
        type Row = (
            String,
            Option<String>,
            i64,
            i64,
            u32,
            Option<String>,
            String,
            i64,
        );
        let rows: Vec<Row> = self.run(&inv).await?;
        rows.into_iter()
            .map(|(id, json, due, enq, att, err, reason, died)| {
                Ok(DeadEntry {
                    entry: decode_entry(&id, json.as_deref(), due, enq, att, err, None)?,
                    reason,
                    died_at: Timestamp(died),
                })
            })
            .collect()
    }

    async fn requeue_dead(&self, id: NotificationId) -> Result<bool, OutboxError> {
        let mut inv = self.prepare(&self.scripts.requeue);
        inv.arg(id.to_string());
        Ok(self.run::<i64>(&inv).await? == 1)
    }

    async fn purge_dead(&self) -> Result<u64, OutboxError> {
        let mut total = 0;
        loop {
            let mut inv = self.prepare(&self.scripts.purge);
            inv.arg(PURGE_CHUNK);
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
