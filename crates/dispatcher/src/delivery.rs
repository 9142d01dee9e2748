//! The delivery service: `submit`, the durable outbox, the delivery workers that
//! drain it, and every retry decision for queued notifications in one place:
//!
//! * **delivered** → acknowledged as soon as its send finishes (acknowledgements
//!   that finish together share one write);
//! * **every provider that could deliver it is down** (circuit open, paused by
//!   `Retry-After`) → *parked*: no attempt burned, no growing backoff. The health
//!   monitor lets one parked notification through as the provider's probe on the
//!   breaker's schedule; when a provider answers again, everything parked on it is
//!   due at once and the workers drain the backlog at line rate;
//! * **a failure about this notification** (one recipient's 5xx, ...) → per-entry
//!   full-jitter exponential backoff;
//! * **refused by every provider, expired, too old** → dead letter (kept).
//!
//! Leases: a delivery never starts on an expired lease, and a lease is renewed
//! while its delivery is in flight, so a provider slower than the lease does not
//! cause a second delivery. Workers are supervised: a panicking task is logged and
//! replaced; dropping [`Workers`] stops them.
//!
//! This module builds on the router (`router.rs`); the router knows nothing of it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use mesh_notify_core::{Claim, Kind, Notification, Outbox, OutboxError, Timestamp};
use tokio::sync::{watch, Notify};
use tokio::task::{JoinHandle, JoinSet};
use tokio::time::Instant;

use crate::router::{Outcome, Router, SkipReason};

/// A parked notification is looked at again after this even if nobody unparks it
/// (e.g. the instance that parked it died): a safety net, not the normal path.
const PARK_RECHECK: Duration = Duration::from_secs(60);

/// A parked notification blocked only by a local rate limit comes back after this.
const RATE_LIMIT_RECHECK: Duration = Duration::from_secs(1);

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
    /// On shutdown, how long in-flight deliveries may take to finish; what is
    /// still in flight then is handed back (lease released, due at once) for
    /// another instance or the next start.
    pub shutdown_grace: Duration,
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
            shutdown_grace: Duration::from_secs(10),
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

/// Where the delivery service looks up a recipient's current addresses just
/// before sending (once per claimed batch, when the entries leave the queue), so a
/// queued notification never goes to a token the user removed (or misses one they
/// added) while it waited. mesh-server implements it over its `addresses` table.
#[async_trait::async_trait]
pub trait AddressBook: Send + Sync {
    /// The user's current addresses; `None` when unknown here (the notification's
    /// own addresses are used as they are).
    async fn addresses(&self, user_id: &str) -> Option<Vec<mesh_notify_core::Address>>;

    /// [`addresses`](Self::addresses) for several users at once (a worker's claimed
    /// batch); a user missing from the answer counts as `None`. The default asks
    /// one by one; a database-backed book answers with one round trip.
    async fn addresses_many(
        &self,
        user_ids: &[String],
    ) -> HashMap<String, Option<Vec<mesh_notify_core::Address>>> {
        let mut out = HashMap::with_capacity(user_ids.len());
        for id in user_ids {
            if !out.contains_key(id) {
                out.insert(id.clone(), self.addresses(id).await);
            }
        }
        out
    }
}

/// What the address book said for a claimed entry's recipient: `None` when it was
/// not asked (no book), `Some(None)` when it does not know the user.
type Looked = Option<Option<Vec<mesh_notify_core::Address>>>;

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

/// Running delivery workers (and the health monitor). Dropping it stops them
/// (in-flight deliveries get the shutdown grace in the background);
/// [`Workers::shutdown`] stops them and waits.
pub struct Workers {
    stop: watch::Sender<Option<Instant>>,
    grace: Duration,
    handles: Vec<JoinHandle<()>>,
}

impl Workers {
    /// Stops claiming, lets in-flight deliveries finish within the queue's
    /// `shutdown_grace`, hands back (releases) what is still in flight then, and
    /// waits for every worker to end.
    pub async fn shutdown(self) {
        let grace = self.grace;
        self.shutdown_within(grace).await;
    }

    /// Like [`shutdown`](Self::shutdown) with an explicit grace period.
    pub async fn shutdown_within(mut self, grace: Duration) {
        let _ = self.stop.send(Some(Instant::now() + grace));
        for h in std::mem::take(&mut self.handles) {
            let _ = h.await;
        }
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        let deadline = Instant::now() + self.grace;
        self.stop.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(deadline);
                true
            } else {
                false
            }
        });
    }
}

type StopRx = watch::Receiver<Option<Instant>>;

fn stopped(stop: &StopRx) -> bool {
    stop.borrow().is_some() || stop.has_changed().is_err()
}

/// When in-flight work must be handed back (now if the handle vanished).
fn stop_deadline(stop: &StopRx) -> Instant {
    stop.borrow().unwrap_or_else(Instant::now)
}

/// Resolves when stop is asked (or the [`Workers`] handle is gone).
async fn stop_asked(stop: &mut StopRx) {
    while !stopped(stop) {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

/// How one claimed entry ended.
enum Settled {
    /// Delivered: acknowledge it.
    Delivered(Box<Claim>),
    /// Retried later, parked or dead-lettered (already written).
    Done,
    /// The lease was lost: another worker holds the entry now.
    Lost,
}

/// The durable delivery service over a [`Router`].
pub(crate) struct Delivery {
    router: Arc<Router>,
    outbox: Option<Arc<dyn Outbox>>,
    queue: QueuePolicy,
    wake: Notify,
    /// Providers this process has parked notifications on (the monitor probes them).
    parked_on: Mutex<HashSet<String>>,
    address_book: Option<Arc<dyn AddressBook>>,
    on_outcome: Option<OutcomeHook>,
}

/// Called with every try of a queued or dispatched notification (cheap: it runs on
/// the delivery path).
pub(crate) type OutcomeHook = Arc<dyn Fn(&Notification, &Outcome) + Send + Sync>;

impl Delivery {
    pub(crate) fn new(
        router: Arc<Router>,
        outbox: Option<Arc<dyn Outbox>>,
        queue: QueuePolicy,
        address_book: Option<Arc<dyn AddressBook>>,
        on_outcome: Option<OutcomeHook>,
    ) -> Self {
        Self {
            router,
            outbox,
            queue,
            wake: Notify::new(),
            parked_on: Mutex::new(HashSet::new()),
            address_book,
            on_outcome,
        }
    }

    fn report(&self, n: &Notification, outcome: &Outcome) {
        if let Some(hook) = &self.on_outcome {
            hook(n, outcome);
        }
    }

    /// The address book's answers for a claimed batch's recipients, in one call.
    async fn look_up(
        &self,
        claims: &[Claim],
    ) -> HashMap<String, Option<Vec<mesh_notify_core::Address>>> {
        let Some(book) = self.address_book.as_ref() else {
            return HashMap::new();
        };
        let mut ids: Vec<String> = claims
            .iter()
            .map(|c| c.entry.notification.recipient.user_id.clone())
            .collect();
        ids.sort_unstable();
        ids.dedup();
        book.addresses_many(&ids).await
    }

    /// `n` with its recipient's current addresses (see [`AddressBook`]), as
    /// `looked` up for its batch. A follow-up keeps only its devices that still exist.
    fn with_current_addresses(&self, n: &Notification, looked: Looked) -> Option<Notification> {
        let current = looked??;
        let mut n = n.clone();
        if n.resend_via.is_some() {
            n.recipient.addresses.retain(|a| current.contains(a));
        } else {
            n.recipient.addresses = current;
        }
        Some(n)
    }

    /// Queues follow-ups for the devices that did not get a delivered
    /// notification (one per provider; ids derived, so never twice).
    async fn queue_follow_ups(&self, outbox: &dyn Outbox, n: &Notification, outcome: &Outcome) {
        let mut by_provider: BTreeMap<&str, Vec<mesh_notify_core::Address>> = BTreeMap::new();
        for (p, a) in &outcome.pending_devices {
            by_provider.entry(p.as_str()).or_default().push(a.clone());
        }
        for (p, devices) in by_provider {
            let f = n.follow_up(p, &devices);
            let due = Timestamp::now().plus(self.queue.backoff(1, outcome.retry_after()));
            match outbox.enqueue(&f, due).await {
                Ok(_) => tracing::info!(
                    id = %n.id,
                    follow_up = %f.id,
                    provider = p,
                    "{} of the recipient's devices did not get it; retried later",
                    devices.len()
                ),
                Err(e) => {
                    tracing::error!(id = %n.id, error = %e, "could not queue the follow-up for the devices that did not get it")
                }
            }
        }
    }

    pub(crate) fn outbox(&self) -> Option<&Arc<dyn Outbox>> {
        self.outbox.as_ref()
    }

    pub(crate) fn queue_policy(&self) -> &QueuePolicy {
        &self.queue
    }

    /// Wakes an idle worker.
    pub(crate) fn notify_enqueued(&self) {
        self.wake.notify_one();
    }

    /// Wakes every idle worker (a backlog became due).
    fn wake_all(&self) {
        self.wake.notify_waiters();
        self.wake.notify_one();
    }

    fn parked_hint(&self) -> std::sync::MutexGuard<'_, HashSet<String>> {
        self.parked_on
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Tries the route now; when nothing delivers and some provider may deliver
    /// later, queues the notification (`outcome.queued`). What every provider
    /// refused for good is not queued: the outcome says why.
    pub(crate) async fn dispatch(&self, n: Notification) -> Outcome {
        let mut outcome = self.router.try_route(&n).await;
        self.report(&n, &outcome);
        if outcome.is_delivered() {
            if let (Some(outbox), false) = (&self.outbox, outcome.pending_devices.is_empty()) {
                self.queue_follow_ups(&**outbox, &n, &outcome).await;
                self.wake.notify_one();
            }
            return outcome;
        }
        if outcome.expired || outcome.is_hopeless() {
            return outcome;
        }
        if let Some(outbox) = &self.outbox {
            let due = Timestamp::now().plus(self.queue.backoff(1, outcome.retry_after()));
            match outbox.enqueue(&n, due).await {
                Ok(_) => {
                    outcome.queued = true;
                    self.wake.notify_one();
                }
                Err(e) => {
                    tracing::error!(id = %n.id, error = %e, "nothing delivered and the outbox refused the notification");
                }
            }
        }
        outcome
    }

    /// Hands a notification over for delivery and returns once it is durable.
    pub(crate) async fn submit(
        self: &Arc<Self>,
        n: Notification,
    ) -> Result<Submitted, OutboxError> {
        let Some(outbox) = &self.outbox else {
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

    /// [`Delivery::submit`] for several notifications: one durable write to the
    /// outbox (one Redis script or one SQLite transaction). Returns how many were
    /// new.
    pub(crate) async fn submit_batch(
        self: &Arc<Self>,
        ns: Vec<Notification>,
    ) -> Result<usize, OutboxError> {
        if self.outbox.is_none() {
            let count = ns.len();
            for n in ns {
                self.submit(n).await?;
            }
            return Ok(count);
        }
        let Some(outbox) = &self.outbox else {
            return Ok(0);
        };
        let added = outbox.enqueue_batch(&ns, Timestamp::now()).await?;
        self.wake.notify_one();
        Ok(added)
    }

    /// Starts `queue.workers` supervised delivery workers, the health monitor and
    /// an outbox metrics sampler. Without an outbox none start.
    pub(crate) fn start_workers(self: &Arc<Self>) -> Workers {
        let (stop, stop_rx) = watch::channel(None);
        let mut handles = Vec::new();
        if let Some(ob) = &self.outbox {
            let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "local".into());
            for i in 0..self.queue.workers.max(1) {
                let worker = format!("{host}-{}-{i}", std::process::id());
                let (me, outbox, stop) = (Arc::clone(self), Arc::clone(ob), stop_rx.clone());
                handles.push(supervise("delivery worker", stop_rx.clone(), move || {
                    worker_loop(
                        Arc::clone(&me),
                        Arc::clone(&outbox),
                        worker.clone(),
                        stop.clone(),
                    )
                }));
            }
            let (me, outbox, stop) = (Arc::clone(self), Arc::clone(ob), stop_rx.clone());
            handles.push(supervise("health monitor", stop_rx.clone(), move || {
                monitor_loop(Arc::clone(&me), Arc::clone(&outbox), stop.clone())
            }));
            let (me, outbox, stop) = (Arc::clone(self), Arc::clone(ob), stop_rx.clone());
            handles.push(supervise("outbox stats", stop_rx, move || {
                stats_loop(Arc::clone(&me), Arc::clone(&outbox), stop.clone())
            }));
        }
        Workers {
            stop,
            grace: self.queue.shutdown_grace,
            handles,
        }
    }

    /// Delivers one claimed entry under its lease: never starts on an expired
    /// lease, renews it while the delivery is in flight, and abandons the delivery
    /// if the lease is lost (another worker holds the entry then).
    async fn deliver_leased(
        self: Arc<Self>,
        outbox: Arc<dyn Outbox>,
        claim: Claim,
        mut leased_until: Instant,
        looked: Looked,
    ) -> Settled {
        let lease = self.queue.lease;
        let margin = lease / 3;
        if Instant::now() + margin >= leased_until {
            let asked = Instant::now();
            if let Err(e) = outbox.renew(&claim, lease).await {
                tracing::warn!(id = %claim.id(), error = %e, "lease ran out before the send started: not sent (another worker has it)");
                return Settled::Lost;
            }
            leased_until = asked + lease;
        }
        let work = self.deliver_claim(&*outbox, &claim, looked);
        tokio::pin!(work);
        loop {
            let renew_at = leased_until.checked_sub(margin).unwrap_or(leased_until);
            tokio::select! {
                settled = &mut work => return settled,
                _ = tokio::time::sleep_until(renew_at) => {
                    let asked = Instant::now();
                    match outbox.renew(&claim, lease).await {
                        Ok(()) => leased_until = asked + lease,
                        Err(OutboxError::LeaseLost(_)) => {
                            tracing::error!(id = %claim.id(), "lease lost while delivering: delivery abandoned so that it is not sent twice");
                            return Settled::Lost;
                        }
                        Err(e) if Instant::now() + Duration::from_millis(50) >= leased_until => {
                            tracing::error!(id = %claim.id(), error = %e, "cannot renew the lease before it runs out: delivery abandoned");
                            return Settled::Lost;
                        }
                        Err(e) => {
                            tracing::warn!(id = %claim.id(), error = %e, "lease renewal failed; trying again");
                            leased_until = leased_until.max(Instant::now() + margin + Duration::from_millis(100));
                        }
                    }
                }
            }
        }
    }

    /// When a queued notification is given up: its expiry, or its kind's max age.
    fn give_up_at(&self, n: &Notification) -> Option<Timestamp> {
        let by_age = self
            .queue
            .max_age
            .get(&n.kind)
            .map(|age| n.created_at.plus(*age));
        match (n.expires_at, by_age) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Tries one claimed entry and settles it unless delivered (the caller
    /// acknowledges delivered entries).
    async fn deliver_claim(&self, outbox: &dyn Outbox, claim: &Claim, looked: Looked) -> Settled {
        let n = &claim.entry.notification;
        let now = Timestamp::now();
        let settle = |r: Result<(), OutboxError>| match r {
            Ok(()) => Settled::Done,
            Err(e) => {
                // LeaseLost: another worker took it over; it will settle it.
                tracing::warn!(id = %claim.id(), error = %e, "could not settle a claimed notification");
                Settled::Lost
            }
        };
        if n.is_expired_at(now) {
            metrics::counter!("mesh_notify_dead_letters_total", "reason" => "expired").increment(1);
            return settle(
                outbox
                    .dead_letter(claim, "expired before it could be delivered")
                    .await,
            );
        }
        if let Some(max_age) = self.queue.max_age.get(&n.kind) {
            let age = Duration::from_millis(
                u64::try_from(now.as_millis() - n.created_at.as_millis()).unwrap_or(0),
            );
            if age > *max_age {
                metrics::counter!("mesh_notify_dead_letters_total", "reason" => "too_old")
                    .increment(1);
                let why = format!(
                    "gave up after {:?} (max age for {} notifications); last error: {}",
                    max_age,
                    n.kind,
                    claim.entry.last_error.as_deref().unwrap_or("none")
                );
                return settle(outbox.dead_letter(claim, &why).await);
            }
        }
        let refreshed = self.with_current_addresses(n, looked);
        let n = refreshed.as_ref().unwrap_or(n);
        let outcome = self.router.try_route(n).await;
        self.report(n, &outcome);
        if outcome.is_delivered() {
            if !outcome.pending_devices.is_empty() {
                self.queue_follow_ups(outbox, n, &outcome).await;
            }
            return Settled::Delivered(Box::new(claim.clone()));
        }
        if outcome.expired {
            metrics::counter!("mesh_notify_dead_letters_total", "reason" => "expired").increment(1);
            return settle(
                outbox
                    .dead_letter(claim, "expired before it could be delivered")
                    .await,
            );
        }
        if outcome.is_hopeless() {
            metrics::counter!("mesh_notify_dead_letters_total", "reason" => "refused").increment(1);
            return settle(outbox.dead_letter(claim, &outcome.failure_summary()).await);
        }
        if let Some((providers, until)) = self.park_decision(n, &outcome) {
            metrics::counter!("mesh_notify_parked_total").increment(1);
            let r = outbox
                .park(claim, &providers, until, &outcome.failure_summary())
                .await;
            if r.is_ok() {
                self.parked_hint().extend(providers);
            }
            return settle(r);
        }
        let delay = self
            .queue
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
        )
    }

    /// Parks when every provider that could deliver `n` is down (circuit open,
    /// paused) or held back by a rate limit: the failure is the providers', not
    /// this notification's. Returns the providers to wait for and when to look
    /// again at the latest.
    fn park_decision(
        &self,
        n: &Notification,
        outcome: &Outcome,
    ) -> Option<(Vec<String>, Timestamp)> {
        let candidates = self.router.candidates(n);
        if candidates.is_empty() {
            return None;
        }
        let rate_limited = |p: &String| {
            outcome
                .skipped
                .iter()
                .any(|s| &s.provider == p && s.reason == SkipReason::RateLimited)
        };
        let mut down = Vec::new();
        let mut limited = false;
        for p in &candidates {
            if !self.router.is_healthy(p) {
                down.push(p.clone());
            } else if rate_limited(p) {
                limited = true;
            } else {
                return None;
            }
        }
        let recheck = if limited {
            RATE_LIMIT_RECHECK
        } else {
            PARK_RECHECK
        };
        let mut until = Timestamp::now().plus(recheck);
        if let Some(give_up) = self.give_up_at(n) {
            until = until.min(give_up);
        }
        Some((down, until))
    }
}

/// Runs the task made by `make`, and makes a new one if it panics, until stop is
/// asked.
fn supervise<F, Fut>(what: &'static str, stop: StopRx, make: F) -> JoinHandle<()>
where
    F: Fn() -> Fut + Send + 'static,
    Fut: Future<Output = ()> + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match tokio::spawn(make()).await {
                Ok(()) => return,
                Err(e) if e.is_panic() => {
                    metrics::counter!("mesh_notify_task_panics_total", "task" => what).increment(1);
                    tracing::error!(task = what, "{what} panicked; starting a new one");
                    if stopped(&stop) {
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(_) => return,
            }
        }
    })
}

async fn worker_loop(d: Arc<Delivery>, outbox: Arc<dyn Outbox>, worker: String, mut stop: StopRx) {
    let policy = d.queue.clone();
    let concurrency = policy.concurrency.max(1);
    let refill_at = (concurrency / 4).max(1);
    let mut in_flight: JoinSet<Settled> = JoinSet::new();
    let mut claims_by_task: HashMap<tokio::task::Id, Claim> = HashMap::new();
    let mut error_backoff = Duration::from_millis(100);
    loop {
        let stopping = stopped(&stop);
        if stopping && in_flight.is_empty() {
            break;
        }
        let room = concurrency.saturating_sub(in_flight.len());
        let mut claimed_none = false;
        if !stopping && (in_flight.is_empty() || room >= refill_at) {
            let asked = Instant::now();
            match outbox
                .claim(&worker, room.min(policy.batch.max(1)), policy.lease)
                .await
            {
                Ok(claims) => {
                    error_backoff = Duration::from_millis(100);
                    claimed_none = claims.is_empty();
                    // One address-book round trip for the whole batch.
                    let book = if d.address_book.is_some() && !claims.is_empty() {
                        Some(d.look_up(&claims).await)
                    } else {
                        None
                    };
                    for claim in claims {
                        let looked = book.as_ref().map(|b| {
                            b.get(&claim.entry.notification.recipient.user_id)
                                .cloned()
                                .flatten()
                        });
                        let task = Arc::clone(&d).deliver_leased(
                            Arc::clone(&outbox),
                            claim.clone(),
                            asked + policy.lease,
                            looked,
                        );
                        let handle = in_flight.spawn(task);
                        claims_by_task.insert(handle.id(), claim);
                    }
                }
                Err(e) => {
                    tracing::warn!(worker = %worker, error = %e, "outbox claim failed; retrying");
                    if in_flight.is_empty() {
                        tokio::select! {
                            _ = tokio::time::sleep(error_backoff) => {}
                            _ = stop_asked(&mut stop) => {}
                        }
                        error_backoff = (error_backoff * 2).min(Duration::from_secs(10));
                        continue;
                    }
                }
            }
        }
        if in_flight.is_empty() {
            if claimed_none || stopping {
                tokio::select! {
                    _ = d.wake.notified() => {}
                    _ = tokio::time::sleep(policy.poll_interval) => {}
                    _ = stop_asked(&mut stop) => {}
                }
            }
            continue;
        }
        // Wait for a delivery to finish (or for new work while there is room; or,
        // when stopping, for the end of the grace period).
        let first = if stopping {
            tokio::select! {
                done = in_flight.join_next_with_id() => done,
                _ = tokio::time::sleep_until(stop_deadline(&stop)) => {
                    hand_back(&*outbox, &mut in_flight, &mut claims_by_task).await;
                    break;
                }
            }
        } else {
            tokio::select! {
                done = in_flight.join_next_with_id() => done,
                _ = d.wake.notified(), if room > 0 => None,
                _ = stop_asked(&mut stop) => None,
            }
        };
        let mut to_ack = Vec::new();
        let mut finished = first.into_iter().collect::<Vec<_>>();
        while let Some(done) = in_flight.try_join_next_with_id() {
            finished.push(done);
        }
        for done in finished {
            match done {
                Ok((id, Settled::Delivered(claim))) => {
                    claims_by_task.remove(&id);
                    to_ack.push(*claim);
                }
                Ok((id, _)) => {
                    claims_by_task.remove(&id);
                }
                Err(e) => {
                    let claim = claims_by_task.remove(&e.id());
                    handle_failed_task(&d, &*outbox, claim, e).await;
                }
            }
        }
        if !to_ack.is_empty() {
            for (claim, r) in to_ack.iter().zip(outbox.ack_batch(&to_ack).await) {
                if let Err(e) = r {
                    // LeaseLost: another worker took it over and may deliver it again
                    // (at-least-once); otherwise the lease expires and it is retried.
                    tracing::warn!(id = %claim.id(), error = %e, "could not acknowledge a delivered notification");
                }
            }
        }
    }
}

/// Shutdown grace over: abort what is still in flight and hand the entries back
/// (lease released, due at once, no attempt counted) so another instance, or the
/// next start, delivers them without waiting for the lease to run out.
async fn hand_back(
    outbox: &dyn Outbox,
    in_flight: &mut JoinSet<Settled>,
    claims_by_task: &mut HashMap<tokio::task::Id, Claim>,
) {
    in_flight.abort_all();
    while in_flight.join_next().await.is_some() {}
    let n = claims_by_task.len();
    for (_, claim) in claims_by_task.drain() {
        if let Err(e) = outbox
            .park(&claim, &[], Timestamp::now(), "handed back at shutdown")
            .await
        {
            tracing::warn!(id = %claim.id(), error = %e, "could not hand back a notification at shutdown; it is retried when its lease runs out");
        }
    }
    if n > 0 {
        tracing::info!("shutdown: {n} deliveries still in flight were handed back to the outbox");
    }
}

/// A delivery task panicked (a provider bug): log it and retry the entry later
/// instead of waiting for its lease to run out.
async fn handle_failed_task(
    d: &Delivery,
    outbox: &dyn Outbox,
    claim: Option<Claim>,
    e: tokio::task::JoinError,
) {
    let Some(claim) = claim else { return };
    if !e.is_panic() {
        return;
    }
    metrics::counter!("mesh_notify_task_panics_total", "task" => "delivery").increment(1);
    tracing::error!(id = %claim.id(), "a delivery panicked; the notification is retried later");
    let when = Timestamp::now().plus(d.queue.backoff(claim.entry.attempts, None));
    if let Err(e) = outbox
        .retry_at(&claim, when, "the delivery panicked (provider bug)")
        .await
    {
        tracing::warn!(id = %claim.id(), error = %e, "could not settle a notification whose delivery panicked");
    }
}

/// Provider health → queue: releases what waited for a provider that is back,
/// and lets one parked notification through as each down provider's probe.
async fn monitor_loop(d: Arc<Delivery>, outbox: Arc<dyn Outbox>, mut stop: StopRx) {
    // Parked by an earlier run (or another instance): give them a fresh look.
    match outbox.unpark(None, usize::MAX).await {
        Ok(0) => {}
        Ok(n) => {
            tracing::info!("{n} parked notifications are due again at start-up");
            d.wake_all();
        }
        Err(e) => tracing::warn!(error = %e, "could not release parked notifications at start-up"),
    }
    let mut last_probe: HashMap<String, Instant> = HashMap::new();
    loop {
        if stopped(&stop) {
            return;
        }
        let mut released = 0;
        for p in d.router.events.take_recovered() {
            d.parked_hint().remove(&p);
            match outbox.unpark(Some(&p), usize::MAX).await {
                Ok(n) => {
                    if n > 0 {
                        tracing::info!(provider = %p, "{p} answers again: {n} parked notifications due now");
                    }
                    released += n;
                }
                Err(e) => {
                    tracing::warn!(provider = %p, error = %e, "could not release parked notifications; trying again");
                    d.parked_hint().insert(p);
                }
            }
        }
        let now = Instant::now();
        let mut next = now + Duration::from_secs(1);
        let hint: Vec<String> = d.parked_hint().iter().cloned().collect();
        for p in hint {
            if d.router.is_healthy(&p) {
                // Back (a pause ended, or it was parked by another instance).
                d.parked_hint().remove(&p);
                match outbox.unpark(Some(&p), usize::MAX).await {
                    Ok(n) => released += n,
                    Err(e) => {
                        tracing::warn!(provider = %p, error = %e, "could not release parked notifications");
                        d.parked_hint().insert(p);
                    }
                }
                continue;
            }
            match d.router.next_try_at(&p) {
                Some(at) if at <= now => {
                    // One probe per due time: the breaker admits the first send.
                    if last_probe.get(&p).is_some_and(|t| *t >= at) {
                        continue;
                    }
                    last_probe.insert(p.clone(), now);
                    match outbox.unpark(Some(&p), 1).await {
                        Ok(0) => {
                            d.parked_hint().remove(&p);
                        }
                        Ok(_) => {
                            tracing::debug!(provider = %p, "probing {p} with one parked notification");
                            d.wake.notify_one();
                            // Normally the probe's result wakes us; look again soon
                            // in case nobody here picks the probe up.
                            next = next.min(now + Duration::from_millis(250));
                        }
                        Err(e) => {
                            tracing::warn!(provider = %p, error = %e, "could not release a probe")
                        }
                    }
                }
                Some(at) => next = next.min(at),
                None => {}
            }
        }
        if released > 0 {
            d.wake_all();
        }
        tokio::select! {
            _ = d.router.events.wait() => {}
            _ = tokio::time::sleep_until(next) => {}
            _ = stop_asked(&mut stop) => return,
        }
    }
}

async fn stats_loop(d: Arc<Delivery>, outbox: Arc<dyn Outbox>, mut stop: StopRx) {
    loop {
        match outbox.stats().await {
            Ok(s) => {
                metrics::gauge!("mesh_notify_outbox_pending").set(s.pending as f64);
                metrics::gauge!("mesh_notify_outbox_in_flight").set(s.in_flight as f64);
                metrics::gauge!("mesh_notify_outbox_dead").set(s.dead as f64);
                metrics::gauge!("mesh_notify_outbox_parked").set(s.parked as f64);
                metrics::gauge!("mesh_notify_outbox_oldest_due_age_seconds")
                    .set(s.oldest_due_age_ms as f64 / 1000.0);
                if s.parked > 0 && d.parked_hint().is_empty() {
                    // Parked by another instance (or before a restart): watch
                    // every provider so they are released once it is back.
                    let names: Vec<String> = d
                        .router
                        .providers()
                        .iter()
                        .map(|p| p.name().to_owned())
                        .collect();
                    d.parked_hint().extend(names);
                }
            }
            Err(e) => tracing::debug!(error = %e, "outbox stats unavailable"),
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(5)) => {}
            _ = stop_asked(&mut stop) => return,
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
