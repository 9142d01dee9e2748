//! Durable delivery: `submit`, backoff, and the delivery workers that drain the outbox.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures_util::stream::{FuturesUnordered, StreamExt};
use mesh_notify_core::{Claim, Kind, Notification, OutboxError, Timestamp};
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::dispatcher::Dispatcher;

/// How queued notifications are retried and for how long.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuePolicy {
    /// First retry delay (before jitter).
    pub initial_backoff: Duration,
    /// Largest retry delay.
    pub max_backoff: Duration,
    /// After this age a notification of the kind is dead-lettered. Calls also stop
    /// at their own `expires_at` (60 s by default).
    pub max_age: BTreeMap<Kind, Duration>,
    /// Delivery workers per process.
    pub workers: usize,
    /// Entries claimed (and acknowledged) at once by one worker.
    pub batch: usize,
    /// Of a claimed batch, how many one worker delivers at the same time.
    pub concurrency: usize,
    /// Lease on a claimed entry; another worker takes it over after this.
    pub lease: Duration,
    /// How often an idle worker looks for due entries (a local `submit` wakes it at once).
    pub poll_interval: Duration,
}

impl Default for QueuePolicy {
    fn default() -> Self {
        let hours = |h: u64| Duration::from_secs(h * 3600);
        Self {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(15 * 60),
            max_age: BTreeMap::from([
                (Kind::Chat, hours(12)),
                (Kind::File, hours(12)),
                (Kind::System, hours(24)),
                (Kind::Call, Duration::from_secs(60)),
            ]),
            workers: 2,
            batch: 128,
            concurrency: 32,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_millis(250),
        }
    }
}

impl QueuePolicy {
    /// Full-jitter exponential backoff for the `attempt`-th failure (1-based), at
    /// least `retry_after` when the provider asked for it.
    pub fn backoff(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let exp = attempt.saturating_sub(1).min(31);
        let ceiling = self
            .initial_backoff
            .saturating_mul(1u32 << exp)
            .min(self.max_backoff);
        let jittered = ceiling.mul_f64(jitter_fraction());
        match retry_after {
            Some(ra) => jittered.max(ra.min(self.max_backoff)),
            None => jittered,
        }
    }
}

/// A uniform fraction in [0, 1) from a small splitmix64 generator (no crypto needed).
fn jitter_fraction() -> f64 {
    static STATE: AtomicU64 = AtomicU64::new(0);
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9E37_79B9_7F4A_7C15);
    let mut z = STATE
        .fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed)
        .wrapping_add(seed);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    (z >> 11) as f64 / (1u64 << 53) as f64
}

/// What `submit` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Submitted {
    /// Stored durably; a worker will deliver it.
    Queued,
    /// Already queued under the same id; nothing changed.
    Duplicate,
    /// No outbox is configured: delivery was started in the background, not durably.
    InMemory,
}

/// Running delivery workers. Dropping it does not stop them: call [`Workers::shutdown`].
pub struct Workers {
    stop: watch::Sender<bool>,
    handles: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Asks every worker to stop after its current batch and waits for them.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for h in self.handles {
            let _ = h.await;
        }
    }
}

impl Dispatcher {
    /// Hands a notification over for delivery and returns as soon as it is durable
    /// (the chat path never waits on a provider).
    pub async fn submit(self: &Arc<Self>, n: Notification) -> Result<Submitted, OutboxError> {
        let Some(outbox) = self.outbox() else {
            let me = Arc::clone(self);
            tokio::spawn(async move {
                let outcome = me.dispatch(n).await;
                if !outcome.is_delivered() {
                    tracing::warn!(id = %outcome.notification_id, "not delivered and no outbox configured: {}", outcome.failure_summary());
                }
            });
            return Ok(Submitted::InMemory);
        };
        let added = outbox.enqueue(&n, Timestamp::now()).await?;
        self.wake.notify_one();
        Ok(if added {
            Submitted::Queued
        } else {
            Submitted::Duplicate
        })
    }

    /// Starts `queue.workers` delivery workers (and an outbox metrics sampler) on the
    /// current runtime. Without an outbox there is nothing to drain and none start.
    pub fn start_workers(self: &Arc<Self>) -> Workers {
        let (stop, stop_rx) = watch::channel(false);
        let mut handles = Vec::new();
        if self.outbox().is_some() {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
            for i in 0..self.queue_policy().workers.max(1) {
                let worker = format!("{host}-{}-{i}", std::process::id());
                handles.push(tokio::spawn(worker_loop(
                    Arc::clone(self),
                    worker,
                    stop_rx.clone(),
                )));
            }
            handles.push(tokio::spawn(stats_loop(Arc::clone(self), stop_rx)));
        }
        Workers { stop, handles }
    }

    /// Claims and delivers one batch as `worker`; returns how many entries it handled.
    /// Workers call this in a loop; tests and tools may call it directly.
    pub async fn deliver_batch(&self, worker: &str) -> Result<usize, OutboxError> {
        let Some(outbox) = self.outbox() else {
            return Ok(0);
        };
        let policy = self.queue_policy();
        let claims = outbox
            .claim(worker, policy.batch.max(1), policy.lease)
            .await?;
        let n = claims.len();
        // Deliver with at most `concurrency` in flight, starting the next as soon as
        // one finishes (no waiting for the slowest of a chunk).
        let mut delivered = vec![false; n];
        {
            let mut in_flight = FuturesUnordered::new();
            let mut pending = claims.iter().enumerate();
            for (i, c) in pending.by_ref().take(policy.concurrency.max(1)) {
                in_flight.push(self.deliver_indexed(i, c));
            }
            while let Some((i, ok)) = in_flight.next().await {
                delivered[i] = ok;
                if let Some((j, c)) = pending.next() {
                    in_flight.push(self.deliver_indexed(j, c));
                }
            }
        }
        // Acknowledge the delivered ones together: one durable write per batch.
        let to_ack: Vec<Claim> = claims
            .into_iter()
            .zip(delivered)
            .filter_map(|(c, ok)| ok.then_some(c))
            .collect();
        if !to_ack.is_empty() {
            for (claim, r) in to_ack.iter().zip(outbox.ack_batch(&to_ack).await) {
                if let Err(e) = r {
                    // LeaseLost: another worker took it over and may deliver it again
                    // (at-least-once); otherwise the lease expires and it is retried.
                    tracing::warn!(id = %claim.id(), error = %e, "could not acknowledge a delivered notification");
                }
            }
        }
        Ok(n)
    }

    async fn deliver_indexed(&self, i: usize, claim: &Claim) -> (usize, bool) {
        (i, self.deliver_claim(claim).await)
    }

    /// Delivers one claimed entry. Returns `true` when it was delivered (the caller
    /// acknowledges it, in a batch); otherwise settles it here (retry or dead letter).
    async fn deliver_claim(&self, claim: &Claim) -> bool {
        let Some(outbox) = self.outbox() else {
            return false;
        };
        let n = &claim.entry.notification;
        let now = Timestamp::now();
        let settle = |r: Result<(), OutboxError>| {
            if let Err(e) = r {
                // LeaseLost: another worker took it over; it will settle it.
                tracing::warn!(id = %claim.id(), error = %e, "could not settle a claimed notification");
            }
        };
        if n.is_expired_at(now) {
            metrics::counter!("mesh_notify_dead_letters_total", "reason" => "expired").increment(1);
            settle(
                outbox
                    .dead_letter(claim, "expired before it could be delivered")
                    .await,
            );
            return false;
        }
        let age = Duration::from_millis(
            u64::try_from(now.as_millis() - n.created_at.as_millis()).unwrap_or(0),
        );
        if let Some(max_age) = self.queue_policy().max_age.get(&n.kind) {
            if age > *max_age {
                metrics::counter!("mesh_notify_dead_letters_total", "reason" => "too_old")
                    .increment(1);
                let why = format!(
                    "gave up after {:?} (max age for {} notifications); last error: {}",
                    max_age,
                    n.kind,
                    claim.entry.last_error.as_deref().unwrap_or("none")
                );
                settle(outbox.dead_letter(claim, &why).await);
                return false;
            }
        }
        let outcome = self.try_route(n).await;
        if outcome.is_delivered() {
            return true;
        }
        if outcome.expired {
            metrics::counter!("mesh_notify_dead_letters_total", "reason" => "expired").increment(1);
            settle(
                outbox
                    .dead_letter(claim, "expired before it could be delivered")
                    .await,
            );
        } else if outcome.is_hopeless() {
            metrics::counter!("mesh_notify_dead_letters_total", "reason" => "refused").increment(1);
            settle(outbox.dead_letter(claim, &outcome.failure_summary()).await);
        } else {
            let delay = self
                .queue_policy()
                .backoff(claim.entry.attempts, outcome.retry_after());
            let mut when = Timestamp::now().plus(delay);
            if let Some(exp) = n.expires_at {
                // No point retrying after expiry: come back at expiry to dead-letter it.
                when = when.min(exp);
            }
            settle(
                outbox
                    .retry_at(claim, when, &outcome.failure_summary())
                    .await,
            );
        }
        false
    }
}

async fn worker_loop(d: Arc<Dispatcher>, worker: String, mut stop: watch::Receiver<bool>) {
    let mut error_backoff = Duration::from_millis(100);
    loop {
        if *stop.borrow() {
            break;
        }
        match d.deliver_batch(&worker).await {
            Ok(0) => {
                tokio::select! {
                    _ = d.wake.notified() => {}
                    _ = tokio::time::sleep(d.queue_policy().poll_interval) => {}
                    _ = stop.changed() => {}
                }
            }
            Ok(_) => {
                error_backoff = Duration::from_millis(100);
            }
            Err(e) => {
                tracing::warn!(worker = %worker, error = %e, "outbox claim failed; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(error_backoff) => {}
                    _ = stop.changed() => {}
                }
                error_backoff = (error_backoff * 2).min(Duration::from_secs(10));
            }
        }
    }
}

async fn stats_loop(d: Arc<Dispatcher>, mut stop: watch::Receiver<bool>) {
    let Some(outbox) = d.outbox() else { return };
    loop {
        match outbox.stats().await {
            Ok(s) => {
                metrics::gauge!("mesh_notify_outbox_pending").set(s.pending as f64);
                metrics::gauge!("mesh_notify_outbox_in_flight").set(s.in_flight as f64);
                metrics::gauge!("mesh_notify_outbox_dead").set(s.dead as f64);
                metrics::gauge!("mesh_notify_outbox_oldest_due_age_seconds")
                    .set(s.oldest_due_age_ms as f64 / 1000.0);
            }
            Err(e) => tracing::debug!(error = %e, "outbox stats unavailable"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop.changed() => break,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_is_jittered_capped_and_honours_retry_after() {
        let p = QueuePolicy {
            initial_backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
            ..QueuePolicy::default()
        };
        let mut distinct = std::collections::HashSet::new();
        for attempt in 1..=20 {
            let d = p.backoff(attempt, None);
            let ceiling =
                Duration::from_secs(1 << (attempt - 1).min(6)).min(Duration::from_secs(60));
            assert!(d <= ceiling, "attempt {attempt}: {d:?} > {ceiling:?}");
            distinct.insert(d);
        }
        assert!(distinct.len() > 10, "full jitter should spread delays");
        assert!(p.backoff(1, Some(Duration::from_secs(30))) >= Duration::from_secs(30));
        assert!(p.backoff(1, Some(Duration::from_secs(3600))) <= Duration::from_secs(60));
    }
}
