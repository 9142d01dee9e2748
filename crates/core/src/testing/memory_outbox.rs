//! [`MemoryOutbox`]: the in-memory reference implementation of [`Outbox`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;

use crate::{
    Claim, DeadEntry, Health, Notification, NotificationId, Outbox, OutboxEntry, OutboxError,
    OutboxStats, Timestamp,
};

#[derive(Debug, Clone)]
struct Lease {
    id: String,
    worker: String,
    until: Timestamp,
}

#[derive(Debug, Clone)]
struct Record {
    entry: OutboxEntry,
    lease: Option<Lease>,
}

impl Record {
    fn leased_at(&self, now: Timestamp) -> bool {
        self.lease.as_ref().is_some_and(|l| l.until > now)
    }
}

#[derive(Debug, Default)]
struct State {
    pending: HashMap<NotificationId, Record>,
    /// In order of death (oldest first).
    dead: Vec<DeadEntry>,
}

/// An in-memory [`Outbox`] for tests: same semantics as the durable backends (it
/// passes [`outbox_conformance`](super::outbox_conformance)), nothing survives the
/// process. Clones share the same queue, so a clone plays the part of the same
/// outbox "reopened".
///
/// ```
/// use mesh_notify_core::testing::MemoryOutbox;
/// use mesh_notify_core::{Kind, Notification, Outbox, Recipient, Timestamp};
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
/// let outbox = MemoryOutbox::new();
/// let n = Notification::new(Kind::Chat, Recipient::new("bob", "Bob"), "t", "b");
/// assert!(outbox.enqueue(&n, Timestamp::now()).await.unwrap());
/// let claims = outbox.claim("w1", 10, std::time::Duration::from_secs(30)).await.unwrap();
/// assert_eq!(claims[0].id(), n.id);
/// outbox.ack(&claims[0]).await.unwrap();
/// # });
/// ```
#[derive(Debug, Clone, Default)]
pub struct MemoryOutbox {
    state: Arc<Mutex<State>>,
    leases: Arc<AtomicU64>,
}

impl MemoryOutbox {
    /// An empty outbox.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes the record if `claim` still holds its lease.
    fn take_leased(state: &mut State, claim: &Claim) -> Result<Record, OutboxError> {
        let id = claim.id();
        let holds = state
            .pending
            .get(&id)
            .and_then(|r| r.lease.as_ref())
            .is_some_and(|l| l.id == claim.lease_id);
        if !holds {
            return Err(OutboxError::LeaseLost(id));
        }
        state.pending.remove(&id).ok_or(OutboxError::LeaseLost(id))
    }
}

fn due_order(a: &OutboxEntry, b: &OutboxEntry) -> std::cmp::Ordering {
    (a.due_at, a.notification.id).cmp(&(b.due_at, b.notification.id))
}

#[async_trait]
impl Outbox for MemoryOutbox {
    fn backend(&self) -> &'static str {
        "memory"
    }

    async fn enqueue(&self, n: &Notification, due_at: Timestamp) -> Result<bool, OutboxError> {
        let mut state = self.state();
        if state.pending.contains_key(&n.id) {
            return Ok(false);
        }
        let entry = OutboxEntry {
            notification: n.clone(),
            attempts: 0,
            due_at,
            enqueued_at: Timestamp::now(),
            last_error: None,
            parked_on: Vec::new(),
        };
        state.pending.insert(n.id, Record { entry, lease: None });
        Ok(true)
    }

    async fn claim(
        &self,
        worker: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Claim>, OutboxError> {
        let now = Timestamp::now();
        let mut state = self.state();
        let mut ready: Vec<&mut Record> = state
            .pending
            .values_mut()
            .filter(|r| r.entry.due_at <= now && !r.leased_at(now))
            .collect();
        ready.sort_by(|a, b| due_order(&a.entry, &b.entry));
        let mut claims = Vec::new();
        for record in ready.into_iter().take(max) {
            record.entry.attempts += 1;
            record.entry.parked_on.clear();
            let lease = Lease {
                id: format!("mem-{}", self.leases.fetch_add(1, Ordering::Relaxed)),
                worker: worker.to_owned(),
                until: now.plus(lease),
            };
            claims.push(Claim {
                entry: record.entry.clone(),
                lease_id: lease.id.clone(),
                worker: lease.worker.clone(),
            });
            record.lease = Some(lease);
        }
        Ok(claims)
    }

    async fn ack(&self, claim: &Claim) -> Result<(), OutboxError> {
        Self::take_leased(&mut self.state(), claim).map(drop)
    }

    async fn retry_at(&self, claim: &Claim, when: Timestamp, why: &str) -> Result<(), OutboxError> {
        let mut state = self.state();
        let mut record = Self::take_leased(&mut state, claim)?;
        record.lease = None;
        record.entry.due_at = when;
        record.entry.last_error = Some(why.to_owned());
        state.pending.insert(claim.id(), record);
        Ok(())
    }

    async fn park(
        &self,
        claim: &Claim,
        providers: &[String],
        until: Timestamp,
        why: &str,
    ) -> Result<(), OutboxError> {
        let mut state = self.state();
        let mut record = Self::take_leased(&mut state, claim)?;
        record.lease = None;
        record.entry.attempts = record.entry.attempts.saturating_sub(1);
        record.entry.due_at = until;
        record.entry.last_error = Some(why.to_owned());
        record.entry.parked_on = providers.to_vec();
        state.pending.insert(claim.id(), record);
        Ok(())
    }

    async fn unpark(&self, provider: Option<&str>, limit: usize) -> Result<u64, OutboxError> {
        let now = Timestamp::now();
        let mut state = self.state();
        let mut parked: Vec<&mut Record> = state
            .pending
            .values_mut()
            .filter(|r| {
                !r.leased_at(now)
                    && !r.entry.parked_on.is_empty()
                    && provider.is_none_or(|p| r.entry.parked_on.iter().any(|q| q == p))
            })
            .collect();
        parked.sort_by_key(|r| r.entry.notification.id);
        let mut n = 0;
        for r in parked.into_iter().take(limit) {
            r.entry.parked_on.clear();
            r.entry.due_at = now;
            n += 1;
        }
        Ok(n)
    }

    async fn renew(&self, claim: &Claim, lease: Duration) -> Result<(), OutboxError> {
        let mut state = self.state();
        let lease_until = Timestamp::now().plus(lease);
        match state
            .pending
            .get_mut(&claim.id())
            .and_then(|r| r.lease.as_mut())
        {
            Some(l) if l.id == claim.lease_id => {
                l.until = lease_until;
                Ok(())
            }
            _ => Err(OutboxError::LeaseLost(claim.id())),
        }
    }

    async fn dead_letter(&self, claim: &Claim, why: &str) -> Result<(), OutboxError> {
        let mut state = self.state();
        let record = Self::take_leased(&mut state, claim)?;
        state.dead.retain(|d| d.entry.notification.id != claim.id());
        state.dead.push(DeadEntry {
            entry: record.entry,
            reason: why.to_owned(),
            died_at: Timestamp::now(),
        });
        Ok(())
    }

    async fn cancel(&self, id: NotificationId) -> Result<bool, OutboxError> {
        Ok(self.state().pending.remove(&id).is_some())
    }

    async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        let now = Timestamp::now();
        let state = self.state();
        let mut stats = OutboxStats {
            pending: state.pending.len() as u64,
            dead: state.dead.len() as u64,
            ..OutboxStats::default()
        };
        let mut oldest: Option<Timestamp> = None;
        for r in state.pending.values() {
            if r.leased_at(now) {
                stats.in_flight += 1;
            } else if !r.entry.parked_on.is_empty() && r.entry.due_at > now {
                stats.parked += 1;
            } else if r.entry.due_at <= now {
                stats.due += 1;
                oldest = Some(oldest.map_or(r.entry.due_at, |o| o.min(r.entry.due_at)));
            }
        }
        stats.oldest_due_age_ms = oldest.map_or(0, |o| {
            u64::try_from(now.as_millis() - o.as_millis()).unwrap_or(0)
        });
        Ok(stats)
    }

    async fn pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, OutboxError> {
        let state = self.state();
        let mut entries: Vec<OutboxEntry> =
            state.pending.values().map(|r| r.entry.clone()).collect();
        entries.sort_by(due_order);
        entries.truncate(limit);
        Ok(entries)
    }

    async fn dead(&self, limit: usize) -> Result<Vec<DeadEntry>, OutboxError> {
        Ok(self
            .state()
            .dead
            .iter()
            .rev()
            .take(limit)
            .cloned()
            .collect())
    }

    async fn requeue_dead(&self, id: NotificationId) -> Result<bool, OutboxError> {
        let mut state = self.state();
        let Some(pos) = state
            .dead
            .iter()
            .position(|d| d.entry.notification.id == id)
        else {
            return Ok(false);
        };
        let dead = state.dead.remove(pos);
        let mut entry = dead.entry;
        entry.attempts = 0;
        entry.parked_on.clear();
        entry.due_at = Timestamp::now();
        state
            .pending
            .entry(id)
            .or_insert(Record { entry, lease: None });
        Ok(true)
    }

    async fn purge_dead(&self) -> Result<u64, OutboxError> {
        let mut state = self.state();
        let n = state.dead.len() as u64;
        state.dead.clear();
        Ok(n)
    }

    async fn health(&self) -> Health {
        Health::Healthy
    }
}
