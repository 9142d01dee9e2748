//! The durable outbox contract: notifications that could not be delivered yet wait
//! here, survive restarts, and are handed to delivery workers under expiring leases.
//!
//! Semantics every backend guarantees (checked by the conformance suite in
//! `testing::outbox_conformance`, feature `test-util`):
//!
//! * `enqueue` returns only once the entry is durable (fsync'd / AOF'd).
//! * Enqueuing an id that is already present keeps the one entry (returns `false`).
//! * `claim` hands out due entries (`due_at <= now`) that are not under a live
//!   lease, oldest due first, and leases them to the worker for `lease`. A worker
//!   that dies without answering loses the lease when it expires, and another
//!   worker's `claim` takes the entry over (at-least-once delivery).
//! * `ack`, `retry_at` and `dead_letter` take the [`Claim`] and fail with
//!   [`OutboxError::LeaseLost`] if the lease expired and the entry was claimed
//!   again meanwhile, so a slow worker cannot settle somebody else's claim.
//! * Dead letters are kept and inspectable until purged or re-queued.
//! * `park` releases a claim without counting it as an attempt and keeps the entry
//!   out of `claim` until `unpark` names one of the providers it waits for, or
//!   until its give-up time (then it is handed out again, to be dead-lettered).
//!   Claiming an entry ends its parking.
//! * `renew` extends a lease that is still held, so a slow delivery keeps it.

use std::time::Duration;

use async_trait::async_trait;
use serde::{Deserialize, Serialize};

use crate::{Health, Notification, NotificationId, Timestamp};

/// A queued notification with its delivery bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct OutboxEntry {
    /// The notification (its id is the entry's key).
    pub notification: Notification,
    /// How many times it has been claimed so far (1 on the first claim).
    pub attempts: u32,
    /// When it is due for (another) delivery attempt.
    pub due_at: Timestamp,
    /// When it was first enqueued.
    pub enqueued_at: Timestamp,
    /// Why the last attempt failed, if one did.
    pub last_error: Option<String>,
    /// While parked: the providers it waits for (it becomes due again as soon as
    /// one of them is back, see [`Outbox::unpark`]). Empty when not parked.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub parked_on: Vec<String>,
}

/// A leased entry. Settle it with `ack`, `retry_at` or `dead_letter`.
#[derive(Debug, Clone, PartialEq)]
pub struct Claim {
    /// The entry, with `attempts` already counting this claim.
    pub entry: OutboxEntry,
    /// Backend-specific proof of this particular lease.
    pub lease_id: String,
    /// Which worker holds it.
    pub worker: String,
}

impl Claim {
    /// The notification's id.
    pub fn id(&self) -> NotificationId {
        self.entry.notification.id
    }
}

/// A dead-lettered entry.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DeadEntry {
    /// The entry as it was when it died.
    pub entry: OutboxEntry,
    /// Why it was given up (expired, every provider refused permanently, ...).
    pub reason: String,
    /// When.
    pub died_at: Timestamp,
}

/// Counters for operators and metrics.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct OutboxStats {
    /// Entries waiting (due or not, leased or not).
    pub pending: u64,
    /// Of which currently under a live lease.
    pub in_flight: u64,
    /// Of which due now and not leased.
    pub due: u64,
    /// Dead letters kept.
    pub dead: u64,
    /// Age of the oldest due entry's due time, in milliseconds (0 when none is due).
    pub oldest_due_age_ms: u64,
    /// Of the pending entries, how many are parked (waiting for a provider to come
    /// back, see [`Outbox::park`]); parked entries are not due.
    #[serde(default)]
    pub parked: u64,
}

/// Outbox failures.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum OutboxError {
    /// The backend could not be opened at start-up (path or URL named).
    #[error("cannot open outbox {target}: {reason}")]
    Open {
        /// The file path or (password-free) URL.
        target: String,
        /// Why.
        reason: String,
    },
    /// The backend is unreachable or failed; the operation may be retried.
    #[error("outbox unavailable: {0}")]
    Unavailable(String),
    /// The claim's lease expired and the entry was claimed again by someone else,
    /// or the entry is gone.
    #[error("lease lost for notification {0}")]
    LeaseLost(NotificationId),
    /// A stored entry cannot be decoded (kept in place, reported here).
    #[error("corrupt outbox entry {id}: {reason}")]
    Corrupt {
        /// The entry's key as stored.
        id: String,
        /// Why it cannot be decoded.
        reason: String,
    },
}

/// A durable queue of notifications awaiting delivery.
#[async_trait]
pub trait Outbox: Send + Sync {
    /// Backend name for logs (`sqlite`, `redis`).
    fn backend(&self) -> &'static str;

    /// Stores `n`, due at `due_at`. Returns once durable. `Ok(false)` when an entry
    /// with this id is already pending (nothing changes).
    async fn enqueue(&self, n: &Notification, due_at: Timestamp) -> Result<bool, OutboxError>;

    /// Stores many at once (one durable write where the backend allows); returns how
    /// many were new.
    async fn enqueue_batch(
        &self,
        ns: &[Notification],
        due_at: Timestamp,
    ) -> Result<usize, OutboxError> {
        let mut added = 0;
        for n in ns {
            if self.enqueue(n, due_at).await? {
                added += 1;
            }
        }
        Ok(added)
    }

    /// Leases up to `max` due entries to `worker` for `lease`.
    async fn claim(
        &self,
        worker: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Claim>, OutboxError>;

    /// Delivered: removes the entry.
    async fn ack(&self, claim: &Claim) -> Result<(), OutboxError>;

    /// Delivered, many at once (one durable write where the backend allows): one
    /// result per claim, in order, each as `ack` would give it.
    async fn ack_batch(&self, claims: &[Claim]) -> Vec<Result<(), OutboxError>> {
        let mut out = Vec::with_capacity(claims.len());
        for c in claims {
            out.push(self.ack(c).await);
        }
        out
    }

    /// Not delivered: releases the lease and makes the entry due again at `when`.
    async fn retry_at(&self, claim: &Claim, when: Timestamp, why: &str) -> Result<(), OutboxError>;

    /// Not delivered because every provider that could deliver it is down (circuit
    /// open, paused): releases the lease **without counting this attempt**
    /// (`attempts` goes back to its value before the claim) and parks the entry on
    /// `providers` with `why` as its last error. A parked entry is not claimed
    /// until [`unpark`](Self::unpark) names one of `providers`, or until `until`
    /// (its give-up time), when it is handed out again to be dead-lettered.
    async fn park(
        &self,
        claim: &Claim,
        providers: &[String],
        until: Timestamp,
        why: &str,
    ) -> Result<(), OutboxError>;

    /// Makes up to `limit` parked entries that wait for `provider` (any provider
    /// when `None`) due now, oldest first; returns how many.
    async fn unpark(&self, provider: Option<&str>, limit: usize) -> Result<u64, OutboxError>;

    /// Extends a lease that `claim` still holds to `lease` from now (a slow
    /// delivery keeps its entry). `LeaseLost` when another worker took it over or
    /// the entry is gone: the caller must then not deliver it.
    async fn renew(&self, claim: &Claim, lease: Duration) -> Result<(), OutboxError>;

    /// Given up: moves the entry to the dead letters with `why`.
    async fn dead_letter(&self, claim: &Claim, why: &str) -> Result<(), OutboxError>;

    /// Removes a pending entry that is no longer wanted (e.g. the recipient came
    /// back and saw the message). `Ok(false)` if it was not pending.
    async fn cancel(&self, id: NotificationId) -> Result<bool, OutboxError>;

    /// Counters.
    async fn stats(&self) -> Result<OutboxStats, OutboxError>;

    /// Up to `limit` pending entries, soonest due first.
    async fn pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, OutboxError>;

    /// Up to `limit` dead letters, most recent first.
    async fn dead(&self, limit: usize) -> Result<Vec<DeadEntry>, OutboxError>;

    /// Moves a dead letter back to pending, due now. `Ok(false)` if no such dead letter.
    async fn requeue_dead(&self, id: NotificationId) -> Result<bool, OutboxError>;

    /// Deletes every dead letter; returns how many.
    async fn purge_dead(&self) -> Result<u64, OutboxError>;

    /// Backend health (e.g. Redis without AOF is `Degraded`).
    async fn health(&self) -> Health;
}
