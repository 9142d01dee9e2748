//! The conformance suite every [`Outbox`] backend runs (feature `test-util`).
//!
//! A backend's test file implements [`OutboxHarness`] (open a fresh, empty outbox;
//! reopen the same storage) and calls each check from its own `#[tokio::test]`, so a
//! failure names the broken guarantee:
//!
//! ```no_run
//! use std::sync::Arc;
//! use mesh_notify_core::testing::{outbox_conformance as suite, MemoryOutbox};
//! use mesh_notify_core::Outbox;
//!
//! struct Harness(MemoryOutbox);
//!
//! #[async_trait::async_trait]
//! impl suite::OutboxHarness for Harness {
//!     async fn open(&mut self) -> Arc<dyn Outbox> {
//!         self.0 = MemoryOutbox::new();
//!         Arc::new(self.0.clone())
//!     }
//!     async fn reopen(&mut self) -> Arc<dyn Outbox> {
//!         Arc::new(self.0.clone())
//!     }
//! }
//!
//! #[tokio::test]
//! async fn lease_expiry_and_takeover() {
//!     suite::lease_expiry_and_takeover(&mut Harness(MemoryOutbox::new())).await;
//! }
//! ```
//!
//! The checks use real time and short leases ([`LEASE`]); the whole suite takes
//! about a second. Semantics pinned here beyond the trait's documentation:
//!
//! * a late `ack`/`retry_at`/`dead_letter` whose lease expired but was **not**
//!   claimed again still succeeds (nobody else holds the entry);
//! * `cancel` also removes a claimed entry, whose holder then gets `LeaseLost`;
//! * `requeue_dead` makes the entry due now with `attempts` reset to 0;
//! * leases survive a reopen: a claim made before is still settled by its holder.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use crate::{
    Address, AddressKind, Kind, Notification, NotificationId, Outbox, OutboxError, OutboxStats,
    Recipient, Timestamp,
};

/// The short lease the checks use.
pub const LEASE: Duration = Duration::from_millis(250);

/// A long lease, for claims that must not expire during a check.
pub const LONG_LEASE: Duration = Duration::from_secs(60);

/// How long a check waits for an expired lease to be taken over before failing.
const TAKEOVER_DEADLINE: Duration = Duration::from_secs(5);

/// Opens the backend under test.
#[async_trait]
pub trait OutboxHarness: Send {
    /// A fresh, empty outbox on new storage (a new file, a new key prefix, ...).
    async fn open(&mut self) -> Arc<dyn Outbox>;

    /// A new handle on the storage of the last [`open`](Self::open), as after a
    /// process restart. The check drops its previous handles first.
    async fn reopen(&mut self) -> Arc<dyn Outbox>;
}

/// Runs every check, each on a freshly opened outbox.
pub async fn run_all<H: OutboxHarness + ?Sized>(h: &mut H) {
    enqueue_claim_ack(h).await;
    dedup_by_id(h).await;
    batch_enqueue(h).await;
    not_yet_due_is_not_claimed(h).await;
    claims_oldest_due_first(h).await;
    retry_ordering_by_due_time(h).await;
    lease_expiry_and_takeover(h).await;
    late_settle_without_takeover_succeeds(h).await;
    dead_letters_are_kept_listed_requeued_and_purged(h).await;
    cancel(h).await;
    stats(h).await;
    survives_reopen(h).await;
    ack_batch_settles_each_claim(h).await;
    parked_entries_keep_their_attempt_count(h).await;
    unpark_by_provider_and_limit(h).await;
    parked_entry_comes_back_at_its_give_up_time(h).await;
    renew_keeps_the_lease_and_reports_a_lost_one(h).await;
    ack_per_entry(h).await;
}

/// A notification tagged `tag` (in its title), with an address so the round trip
/// covers secrets too.
pub fn notification(tag: &str) -> Notification {
    let bob =
        Recipient::new("bob", "Bob").with_address(Address::new(AddressKind::Gotify, "AppTokBob"));
    Notification::new(
        Kind::Chat,
        bob,
        format!("note {tag}"),
        format!("body of {tag}"),
    )
}

fn ago(ms: i64) -> Timestamp {
    Timestamp(Timestamp::now().as_millis() - ms)
}

fn in_ms(ms: i64) -> Timestamp {
    Timestamp(Timestamp::now().as_millis() + ms)
}

fn ids(claims: &[crate::Claim]) -> Vec<NotificationId> {
    claims.iter().map(crate::Claim::id).collect()
}

fn assert_lease_lost<T: std::fmt::Debug>(
    r: Result<T, OutboxError>,
    id: NotificationId,
    what: &str,
) {
    match r {
        Err(OutboxError::LeaseLost(got)) => {
            assert_eq!(got, id, "{what}: LeaseLost names the entry")
        }
        other => panic!("{what}: expected LeaseLost({id}), got {other:?}"),
    }
}

async fn stats_of(o: &dyn Outbox) -> OutboxStats {
    o.stats().await.expect("stats")
}

/// Enqueue, claim (the entry comes back intact, attempts 1, leased to the worker),
/// ack (gone; a second ack is `LeaseLost`).
pub async fn enqueue_claim_ack<H: OutboxHarness + ?Sized>(h: &mut H) {
    let o = h.open().await;
    let n = notification("a");
    let before = Timestamp::now();
    let due = ago(10);
    assert!(
        o.enqueue(&n, due).await.expect("enqueue"),
        "a new id is added"
    );
    let claims = o.claim("w1", 10, LONG_LEASE).await.expect("claim");
    assert_eq!(claims.len(), 1, "the due entry is claimed");
    let c = &claims[0];
    assert_eq!(
        c.entry.notification, n,
        "the notification round-trips unchanged"
    );
    assert_eq!(c.entry.attempts, 1);
    assert_eq!(c.entry.due_at, due);
    assert!(
        c.entry.enqueued_at >= Timestamp(before.as_millis() - 1000),
        "enqueued_at is now"
    );
    assert_eq!(c.entry.last_error, None);
    assert_eq!(c.worker, "w1");
    assert!(!c.lease_id.is_empty());
    assert!(
        o.claim("w2", 10, LONG_LEASE)
            .await
            .expect("claim")
            .is_empty(),
        "a leased entry is not claimed twice"
    );
    o.ack(c).await.expect("ack");
    assert!(
        o.pending(10).await.expect("pending").is_empty(),
        "acked entry is gone"
    );
    assert!(o
        .claim("w1", 10, LONG_LEASE)
        .await
        .expect("claim")
        .is_empty());
    assert_lease_lost(o.ack(c).await, n.id, "second ack");
    assert_eq!(stats_of(&*o).await, OutboxStats::default());
}

/// Enqueuing an id twice keeps one entry and returns `false` the second time.
pub async fn dedup_by_id<H: OutboxHarness + ?Sized>(h: &mut H) {
    let o = h.open().await;
    let n = notification("dup");
    assert!(o.enqueue(&n, ago(0)).await.expect("enqueue"));
    let mut changed = n.clone();
    changed.body = "changed".into();
    assert!(
        !o.enqueue(&changed, in_ms(60_000)).await.expect("enqueue"),
        "same id: not added"
    );
    let pending = o.pending(10).await.expect("pending");
    assert_eq!(pending.len(), 1, "one entry per id");
    assert_eq!(
        pending[0].notification, n,
        "the first one is kept unchanged"
    );
    // A claimed entry is still pending: enqueuing it again changes nothing.
    let claims = o.claim("w1", 10, LONG_LEASE).await.expect("claim");
    assert_eq!(ids(&claims), vec![n.id]);
    assert!(
        !o.enqueue(&n, ago(0)).await.expect("enqueue"),
        "claimed id: not added"
    );
    assert!(o
        .claim("w2", 10, LONG_LEASE)
        .await
        .expect("claim")
        .is_empty());
    assert_eq!(stats_of(&*o).await.pending, 1);
}

/// `enqueue_batch` stores many at once and counts only the new ones.
pub async fn batch_enqueue<H: OutboxHarness + ?Sized>(h: &mut H) {
    let o = h.open().await;
    let existing = notification("existing");
    assert!(o.enqueue(&existing, ago(0)).await.expect("enqueue"));
    let mut batch: Vec<Notification> = (0..100).map(|i| notification(&format!("b{i}"))).collect();
    batch.push(existing.clone());
    batch.push(batch[0].clone());
    assert_eq!(
        o.enqueue_batch(&batch, ago(0))
            .await
            .expect("enqueue_batch"),
        100,
        "duplicates are not counted"
    );
    assert_eq!(o.enqueue_batch(&[], ago(0)).await.expect("empty batch"), 0);
    let pending = o.pending(1000).await.expect("pending");
    assert_eq!(pending.len(), 101);
    let distinct: HashSet<NotificationId> = pending.iter().map(|e| e.notification.id).collect();
    assert_eq!(distinct.len(), 101);
    let st = stats_of(&*o).await;
    assert_eq!((st.pending, st.due, st.in_flight), (101, 101, 0));
    let claims = o.claim("w1", 1000, LONG_LEASE).await.expect("claim");
    assert_eq!(claims.len(), 101, "all of them are claimable");
}

/// Entries due in the future are listed and counted but not claimed.
pub async fn not_yet_due_is_not_claimed<H: OutboxHarness + ?Sized>(h: &mut H) {
    let o = h.open().await;
    let later = notification("later");
    let now = notification("now");
    assert!(o.enqueue(&later, in_ms(60_000)).await.expect("enqueue"));
    assert!(
        o.claim("w1", 10, LONG_LEASE)
            .await
            .expect("claim")
            .is_empty(),
        "not due yet"
    );
    let st = stats_of(&*o).await;
    assert_eq!(
        (st.pending, st.due, st.in_flight, st.oldest_due_age_ms),
        (1, 0, 0, 0)
    );
    assert!(o.enqueue(&now, ago(0)).await.expect("enqueue"));
    let claims = o.claim("w1", 10, LONG_LEASE).await.expect("claim");
    assert_eq!(ids(&claims), vec![now.id], "only the due one");
    let pending = o.pending(10).await.expect("pending");
    assert_eq!(pending.len(), 2, "the future one is still pending");
    // A short due time becomes claimable once reached.
    let soon = notification("soon");
    assert!(o.enqueue(&soon, in_ms(200)).await.expect("enqueue"));
    assert!(o
        .claim("w1", 10, LONG_LEASE)
        .await
        .expect("claim")
        .is_empty());
    let got = claim_within(&*o, "w1", Duration::from_secs(5)).await;
    assert_eq!(ids(&got), vec![soon.id]);
}

/// Claims hand out the oldest due entries first and at most `max`; `pending`
/// lists soonest due first.
pub async fn claims_oldest_due_first<H: OutboxHarness + ?Sized>(h: &mut H) {
    let o = h.open().await;
    let a = notification("a");
    let b = notification("b");
    let c = notification("c");
    let d = notification("d");
    assert!(o.enqueue(&a, ago(3000)).await.expect("enqueue"));
    assert!(o.enqueue(&b, ago(1000)).await.expect("enqueue"));
    assert!(o.enqueue(&c, ago(2000)).await.expect("enqueue"));
    assert!(o.enqueue(&d, in_ms(60_000)).await.expect("enqueue"));
    let listed: Vec<NotificationId> = o
        .pending(10)
        .await
        .expect("pending")
        .iter()
        .map(|e| e.notification.id)
        .collect();
    assert_eq!(
        listed,
        vec![a.id, c.id, b.id, d.id],
        "pending: soonest due first"
    );
    let two: Vec<NotificationId> = o
        .pending(2)
        .await
        .expect("pending")
        .iter()
        .map(|e| e.notification.id)
        .collect();
    assert_eq!(two, vec![a.id, c.id], "pending respects the limit");
    assert!(o
        .claim("w1", 0, LONG_LEASE)
        .await
        .expect("claim 0")
        .is_empty());
    let first = o.claim("w1", 2, LONG_LEASE).await.expect("claim");
    assert_eq!(
        ids(&first),
        vec![a.id, c.id],
        "oldest due first, at most max"
    );
    let rest = o.claim("w1", 2, LONG_LEASE).await.expect("claim");
    assert_eq!(ids(&rest), vec![b.id]);
}

/// `retry_at` releases the lease, records why, and makes the entry due at the
/// given time; retried entries come back in due order with attempts counted.
pub async fn retry_ordering_by_due_time<H: OutboxHarness + ?Sized>(h: &mut H) {
    let o = h.open().await;
    let a = notification("a");
    let b = notification("b");
    let c = notification("c");
    o.enqueue_batch(&[a.clone(), b.clone(), c.clone()], ago(5000))
        .await
        .expect("enqueue");
    let claims = o.claim("w1", 10, LONG_LEASE).await.expect("claim");
    assert_eq!(claims.len(), 3);
    let by_id = |id: NotificationId| claims.iter().find(|c| c.id() == id).expect("claimed");
    o.retry_at(by_id(a.id), in_ms(60_000), "a: later")
        .await
        .expect("retry a");
    o.retry_at(by_id(b.id), ago(1000), "b: 503")
        .await
        .expect("retry b");
    o.retry_at(by_id(c.id), ago(2000), "c: timeout")
        .await
        .expect("retry c");
    let st = stats_of(&*o).await;
    assert_eq!((st.pending, st.in_flight, st.due), (3, 0, 2));
    let again = o.claim("w2", 10, LONG_LEASE).await.expect("claim");
    assert_eq!(
        ids(&again),
        vec![c.id, b.id],
        "due retries in due order; the future one waits"
    );
    assert_eq!(again[0].entry.attempts, 2, "attempts count every claim");
    assert_eq!(again[0].entry.last_error.as_deref(), Some("c: timeout"));
    assert_eq!(again[1].entry.last_error.as_deref(), Some("b: 503"));
    assert_eq!(
        again[0].entry.notification, c,
        "the notification is unchanged"
    );
    let pending = o.pending(10).await.expect("pending");
    let pa = pending
        .iter()
        .find(|e| e.notification.id == a.id)
        .expect("a pending");
    assert_eq!(pa.last_error.as_deref(), Some("a: later"));
    assert_eq!(pa.attempts, 1);
    assert_lease_lost(
        o.ack(by_id(b.id)).await,
        b.id,
        "ack of a claim already retried",
    );
}

async fn claim_within(o: &dyn Outbox, worker: &str, deadline: Duration) -> Vec<crate::Claim> {
    let start = Instant::now();
    loop {
        let got = o.claim(worker, 10, LEASE).await.expect("claim");
        if !got.is_empty() {
            return got;
        }
        assert!(
            start.elapsed() < deadline,
            "nothing became claimable within {deadline:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A lease that expires is taken over by another worker's claim; the old
/// worker's late `ack`/`retry_at`/`dead_letter` then fail with `LeaseLost`.
pub async fn lease_expiry_and_takeover<H: OutboxHarness + ?Sized>(h: &mut H) {
    let o = h.open().await;
    let n = notification("lease");
    assert!(o.enqueue(&n, ago(0)).await.expect("enqueue"));
    let claimed_at = Instant::now();
    let old = o.claim("w1", 10, LEASE).await.expect("claim");
    assert_eq!(ids(&old), vec![n.id]);
    let old = &old[0];
    assert!(
        o.claim("w2", 10, LEASE).await.expect("claim").is_empty(),
        "live lease is respected"
    );
    let st = stats_of(&*o).await;
    assert_eq!((st.pending, st.in_flight, st.due), (1, 1, 0));
    let new = claim_within(&*o, "w2", TAKEOVER_DEADLINE).await;
    let waited = claimed_at.elapsed();
    assert!(
        waited + Duration::from_millis(30) >= LEASE,
        "taken over only after the lease expired (after {waited:?})"
    );
    assert_eq!(ids(&new), vec![n.id]);
    let new = &new[0];
    assert_eq!(new.worker, "w2");
    assert_eq!(new.entry.attempts, 2, "the takeover is a second attempt");
    assert_ne!(new.lease_id, old.lease_id, "a new lease");
    assert_lease_lost(o.ack(old).await, n.id, "late ack by the old worker");
    assert_lease_lost(
        o.retry_at(old, ago(0), "late").await,
        n.id,
        "late retry_at by the old worker",
    );
    assert_lease_lost(
        o.dead_letter(old, "late").await,
        n.id,
        "late dead_letter by the old worker",
    );
    assert_eq!(
        stats_of(&*o).await.dead,
        0,
        "the failed dead_letter did nothing"
    );
    assert_eq!(
        o.pending(10).await.expect("pending").len(),
        1,
        "the entry is still there"
    );
    o.ack(new).await.expect("the new holder acks");
    assert_eq!(stats_of(&*o).await, OutboxStats::default());
}

/// `ack_batch` acknowledges every claim it is given and reports a claim whose lease
/// was taken over as `LeaseLost`, without failing the others.
pub async fn ack_batch_settles_each_claim<H: OutboxHarness + ?Sized>(h: &mut H) {
    let o = h.open().await;
    let a = notification("batch-a");
    let b = notification("batch-b");
    let c = notification("batch-c");
    assert!(o.enqueue(&c, ago(20)).await.expect("enqueue"));
    assert!(o.enqueue(&a, ago(0)).await.expect("enqueue"));
    assert!(o.enqueue(&b, ago(0)).await.expect("enqueue"));
    // w1 holds c on a short lease, a and b on a long one.
    let short = o.claim("w1", 1, LEASE).await.expect("claim");
    assert_eq!(ids(&short), vec![c.id], "oldest due first");
    let long = o.claim("w1", 10, LONG_LEASE).await.expect("claim");
    assert_eq!(long.len(), 2);
    // c's lease expires and w2 takes it over: w1's claim on c is now stale.
    let taken = claim_within(&*o, "w2", TAKEOVER_DEADLINE).await;
    assert_eq!(ids(&taken), vec![c.id]);
    let w1: Vec<_> = long.iter().chain(short.iter()).cloned().collect();
    let results = o.ack_batch(&w1).await;
    assert_eq!(results.len(), 3, "one result per claim, in order");
    assert!(results[0].is_ok() && results[1].is_ok(), "{results:?}");
    assert_lease_lost(results[2].clone(), c.id, "stale claim in a batch");
    let st = stats_of(&*o).await;
    assert_eq!(
        (st.pending, st.in_flight),
        (1, 1),
        "only c is left, held by w2"
    );
    let results = o.ack_batch(&taken).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(stats_of(&*o).await, OutboxStats::default());
    assert!(o.ack_batch(&[]).await.is_empty());
}

/// A worker whose lease expired but was not taken over can still settle it.
pub async fn late_settle_without_takeover_succeeds<H: OutboxHarness + ?Sized>(h: &mut H) {
    let o = h.open().await;
    let a = notification("a");
    let b = notification("b");
    o.enqueue_batch(&[a.clone(), b.clone()], ago(10))
        .await
        .expect("enqueue");
    let claims = o.claim("w1", 10, LEASE).await.expect("claim");
    assert_eq!(claims.len(), 2);
    // Nothing to await: the point is letting the lease run out.
    tokio::time::sleep(LEASE + Duration::from_millis(100)).await;
    let st = stats_of(&*o).await;
    assert_eq!(
        (st.in_flight, st.due),
        (0, 2),
        "expired leases count as due"
    );
    for c in &claims {
        if c.id() == a.id {
            o.ack(c).await.expect("late ack without takeover");
        } else {
            o.retry_at(c, in_ms(60_000), "later")
                .await
                .expect("late retry without takeover");
        }
    }
    let pending = o.pending(10).await.expect("pending");
    assert_eq!(pending.len(), 1);
    assert_eq!(pending[0].notification.id, b.id);
    assert!(o.claim("w2", 10, LEASE).await.expect("claim").is_empty());
}

/// Dead letters are kept, listed most recent first, re-queued by id (due now,
/// attempts reset) and purged.
pub async fn dead_letters_are_kept_listed_requeued_and_purged<H: OutboxHarness + ?Sized>(
    h: &mut H,
) {
    let o = h.open().await;
    let a = notification("a");
    let b = notification("b");
    let c = notification("c");
    assert!(o.enqueue(&a, ago(3000)).await.expect("enqueue"));
    assert!(o.enqueue(&b, ago(2000)).await.expect("enqueue"));
    assert!(o.enqueue(&c, ago(1000)).await.expect("enqueue"));
    let claims = o.claim("w1", 2, LONG_LEASE).await.expect("claim");
    assert_eq!(ids(&claims), vec![a.id, b.id]);
    let before = Timestamp::now();
    o.dead_letter(&claims[0], "a: expired")
        .await
        .expect("dead a");
    o.dead_letter(&claims[1], "b: every provider refused")
        .await
        .expect("dead b");
    assert_lease_lost(o.ack(&claims[0]).await, a.id, "ack after dead_letter");
    let st = stats_of(&*o).await;
    assert_eq!((st.pending, st.in_flight, st.dead), (1, 0, 2));
    let dead = o.dead(10).await.expect("dead");
    assert_eq!(dead.len(), 2);
    assert_eq!(dead[0].entry.notification, b, "most recent first");
    assert_eq!(dead[0].reason, "b: every provider refused");
    assert_eq!(dead[1].entry.notification, a);
    assert_eq!(dead[1].reason, "a: expired");
    assert_eq!(dead[1].entry.attempts, 1);
    assert!(dead[1].died_at >= Timestamp(before.as_millis() - 1000));
    assert_eq!(
        o.dead(1).await.expect("dead").len(),
        1,
        "dead respects the limit"
    );
    let next = o.claim("w1", 10, LONG_LEASE).await.expect("claim");
    assert_eq!(ids(&next), vec![c.id], "dead letters are not claimed");
    o.ack(&next[0]).await.expect("ack c");

    assert!(o.requeue_dead(a.id).await.expect("requeue"), "requeue a");
    assert!(
        !o.requeue_dead(a.id).await.expect("requeue"),
        "a is no longer dead"
    );
    assert!(
        !o.requeue_dead(NotificationId::new())
            .await
            .expect("requeue"),
        "unknown id"
    );
    let st = stats_of(&*o).await;
    assert_eq!((st.pending, st.due, st.dead), (1, 1, 1));
    let again = o.claim("w1", 10, LONG_LEASE).await.expect("claim");
    assert_eq!(ids(&again), vec![a.id], "requeued entry is due now");
    assert_eq!(again[0].entry.notification, a);
    assert_eq!(
        again[0].entry.attempts, 1,
        "attempts start over after requeue"
    );
    o.ack(&again[0]).await.expect("ack");

    assert_eq!(o.purge_dead().await.expect("purge"), 1);
    assert!(o.dead(10).await.expect("dead").is_empty());
    assert_eq!(o.purge_dead().await.expect("purge"), 0);
    assert_eq!(stats_of(&*o).await, OutboxStats::default());
}

/// `cancel` removes a pending entry (claimed or not) and says whether it did.
pub async fn cancel<H: OutboxHarness + ?Sized>(h: &mut H) {
    let o = h.open().await;
    let a = notification("a");
    let b = notification("b");
    let later = notification("later");
    o.enqueue_batch(&[a.clone(), b.clone()], ago(10))
        .await
        .expect("enqueue");
    assert!(o.enqueue(&later, in_ms(60_000)).await.expect("enqueue"));
    assert!(
        o.cancel(a.id).await.expect("cancel"),
        "cancel a pending entry"
    );
    assert!(!o.cancel(a.id).await.expect("cancel"), "already gone");
    assert!(
        !o.cancel(NotificationId::new()).await.expect("cancel"),
        "unknown id"
    );
    assert!(
        o.cancel(later.id).await.expect("cancel"),
        "cancel a not-yet-due entry"
    );
    let claims = o.claim("w1", 10, LONG_LEASE).await.expect("claim");
    assert_eq!(
        ids(&claims),
        vec![b.id],
        "cancelled entries are not claimed"
    );
    assert!(
        o.cancel(b.id).await.expect("cancel"),
        "cancel a claimed entry"
    );
    assert_lease_lost(o.ack(&claims[0]).await, b.id, "ack of a cancelled entry");
    assert_eq!(stats_of(&*o).await, OutboxStats::default());
    // A cancelled id can be enqueued again.
    assert!(o.enqueue(&a, ago(0)).await.expect("enqueue"));
    assert_eq!(
        ids(&o.claim("w1", 10, LONG_LEASE).await.expect("claim")),
        vec![a.id]
    );
}

/// `stats` counts pending, in-flight, due and dead entries and the oldest due age.
pub async fn stats<H: OutboxHarness + ?Sized>(h: &mut H) {
    let o = h.open().await;
    assert_eq!(stats_of(&*o).await, OutboxStats::default(), "empty");
    let a = notification("a");
    let b = notification("b");
    let c = notification("c");
    let d = notification("d");
    assert!(o.enqueue(&a, ago(4000)).await.expect("enqueue"));
    assert!(o.enqueue(&b, ago(2000)).await.expect("enqueue"));
    assert!(o.enqueue(&c, ago(1000)).await.expect("enqueue"));
    assert!(o.enqueue(&d, in_ms(60_000)).await.expect("enqueue"));
    let st = stats_of(&*o).await;
    assert_eq!((st.pending, st.in_flight, st.due, st.dead), (4, 0, 3, 0));
    assert!(
        (4000..30_000).contains(&st.oldest_due_age_ms),
        "oldest due age {}",
        st.oldest_due_age_ms
    );
    let claims = o.claim("w1", 2, LONG_LEASE).await.expect("claim");
    assert_eq!(ids(&claims), vec![a.id, b.id]);
    let st = stats_of(&*o).await;
    assert_eq!((st.pending, st.in_flight, st.due, st.dead), (4, 2, 1, 0));
    assert!(
        (1000..2000).contains(&st.oldest_due_age_ms),
        "leased entries do not count: {}",
        st.oldest_due_age_ms
    );
    o.dead_letter(&claims[0], "gone").await.expect("dead");
    o.ack(&claims[1]).await.expect("ack");
    let st = stats_of(&*o).await;
    assert_eq!((st.pending, st.in_flight, st.due, st.dead), (2, 0, 1, 1));
}

/// Entries, dead letters and leases survive dropping the backend and opening it
/// again on the same storage.
pub async fn survives_reopen<H: OutboxHarness + ?Sized>(h: &mut H) {
    let o = h.open().await;
    let due = notification("due");
    let future = notification("future");
    let leased = notification("leased");
    let dead = notification("dead");
    assert!(o.enqueue(&leased, ago(3000)).await.expect("enqueue"));
    assert!(o.enqueue(&dead, ago(2000)).await.expect("enqueue"));
    assert!(o.enqueue(&due, ago(1000)).await.expect("enqueue"));
    assert!(o.enqueue(&future, in_ms(3_600_000)).await.expect("enqueue"));
    let claims = o.claim("w1", 2, LONG_LEASE).await.expect("claim");
    assert_eq!(ids(&claims), vec![leased.id, dead.id]);
    o.dead_letter(&claims[1], "refused").await.expect("dead");
    drop(o);

    let o = h.reopen().await;
    let st = stats_of(&*o).await;
    assert_eq!(
        (st.pending, st.in_flight, st.due, st.dead),
        (3, 1, 1, 1),
        "after reopen: {st:?}"
    );
    let pending = o.pending(10).await.expect("pending");
    let listed: Vec<NotificationId> = pending.iter().map(|e| e.notification.id).collect();
    assert_eq!(listed, vec![leased.id, due.id, future.id]);
    assert_eq!(pending[2].notification, future, "entries survive intact");
    let dead_list = o.dead(10).await.expect("dead");
    assert_eq!(dead_list.len(), 1);
    assert_eq!(dead_list[0].entry.notification, dead);
    assert_eq!(dead_list[0].reason, "refused");
    let got = o.claim("w2", 10, LONG_LEASE).await.expect("claim");
    assert_eq!(
        ids(&got),
        vec![due.id],
        "the lease taken before the restart still holds"
    );
    o.ack(&claims[0])
        .await
        .expect("the lease holder settles its claim after the restart");
    assert!(
        o.enqueue(&future, ago(0)).await.is_ok_and(|added| !added),
        "dedup survives too"
    );
    drop(o);

    let o = h.reopen().await;
    let st = stats_of(&*o).await;
    assert_eq!(
        (st.pending, st.in_flight, st.dead),
        (2, 1, 1),
        "after second reopen: {st:?}"
    );
    assert!(o.requeue_dead(dead.id).await.expect("requeue after reopen"));
    assert_eq!(o.purge_dead().await.expect("purge"), 0);
}

fn names(ps: &[&str]) -> Vec<String> {
    ps.iter().map(|p| (*p).to_owned()).collect()
}

/// A parked entry keeps its attempt count (the claim that parked it does not
/// count), is not claimed while parked, is counted as parked (not due), and comes
/// back due at once, attempts unchanged, when `unpark` names its provider.
pub async fn parked_entries_keep_their_attempt_count<H: OutboxHarness + ?Sized>(h: &mut H) {
    let o = h.open().await;
    let n = notification("park");
    assert!(o.enqueue(&n, ago(0)).await.expect("enqueue"));
    // A real failure first: attempts 1 after the retry.
    let c = o.claim("w1", 10, LONG_LEASE).await.expect("claim");
    assert_eq!(c[0].entry.attempts, 1);
    o.retry_at(&c[0], ago(0), "503").await.expect("retry");
    // Then parked three times in a row: attempts stay at 1.
    for round in 0..3 {
        let c = o.claim("w1", 10, LONG_LEASE).await.expect("claim");
        assert_eq!(ids(&c), vec![n.id], "round {round}: claimable again");
        assert_eq!(
            c[0].entry.attempts, 2,
            "round {round}: parking burned no attempt"
        );
        o.park(
            &c[0],
            &names(&["gotify"]),
            in_ms(3_600_000),
            "gotify: circuit open",
        )
        .await
        .expect("park");
        assert!(
            o.claim("w2", 10, LONG_LEASE)
                .await
                .expect("claim")
                .is_empty(),
            "round {round}: a parked entry is not claimed"
        );
        let st = stats_of(&*o).await;
        assert_eq!(
            (st.pending, st.in_flight, st.due, st.parked),
            (1, 0, 0, 1),
            "round {round}: {st:?}"
        );
        let listed = o.pending(10).await.expect("pending");
        assert_eq!(listed[0].attempts, 1, "round {round}");
        assert_eq!(listed[0].parked_on, names(&["gotify"]));
        assert_eq!(
            listed[0].last_error.as_deref(),
            Some("gotify: circuit open")
        );
        assert_eq!(o.unpark(Some("gotify"), 100).await.expect("unpark"), 1);
        let st = stats_of(&*o).await;
        assert_eq!((st.due, st.parked), (1, 0), "round {round}: due at once");
    }
    let c = o.claim("w1", 10, LONG_LEASE).await.expect("claim");
    assert_eq!(c[0].entry.attempts, 2);
    assert!(c[0].entry.parked_on.is_empty(), "claiming ends the parking");
    o.ack(&c[0]).await.expect("ack");
    assert_eq!(stats_of(&*o).await, OutboxStats::default());
}

/// `unpark` wakes only entries waiting for the named provider (any of their
/// providers), at most `limit` of them, oldest first; `None` wakes any.
pub async fn unpark_by_provider_and_limit<H: OutboxHarness + ?Sized>(h: &mut H) {
    let o = h.open().await;
    let a = notification("a");
    let b = notification("b");
    let c = notification("c");
    let d = notification("d");
    for n in [&a, &b, &c, &d] {
        assert!(o.enqueue(n, ago(0)).await.expect("enqueue"));
    }
    let claims = o.claim("w1", 10, LONG_LEASE).await.expect("claim");
    assert_eq!(claims.len(), 4);
    let by_id = |id: NotificationId| claims.iter().find(|c| c.id() == id).expect("claimed");
    let far = in_ms(3_600_000);
    o.park(by_id(a.id), &names(&["gotify"]), far, "down")
        .await
        .expect("park a");
    o.park(by_id(b.id), &names(&["gotify", "fcm"]), far, "down")
        .await
        .expect("park b");
    o.park(by_id(c.id), &names(&["gotify"]), far, "down")
        .await
        .expect("park c");
    o.park(by_id(d.id), &names(&["apns"]), far, "down")
        .await
        .expect("park d");
    assert_eq!(stats_of(&*o).await.parked, 4);
    assert_eq!(
        o.unpark(Some("smtp"), 100).await.expect("unpark"),
        0,
        "nobody waits for smtp"
    );
    assert_eq!(
        o.unpark(Some("fcm"), 100).await.expect("unpark"),
        1,
        "b waits for fcm too"
    );
    assert_eq!(
        ids(&o.claim("w1", 10, LONG_LEASE).await.expect("claim")),
        vec![b.id]
    );
    assert_eq!(
        o.unpark(Some("gotify"), 1).await.expect("unpark"),
        1,
        "limit 1"
    );
    assert_eq!(
        ids(&o.claim("w1", 10, LONG_LEASE).await.expect("claim")),
        vec![a.id],
        "oldest first"
    );
    assert_eq!(
        o.unpark(None, 100).await.expect("unpark"),
        2,
        "None wakes any"
    );
    let got = o.claim("w1", 10, LONG_LEASE).await.expect("claim");
    let got: HashSet<NotificationId> = ids(&got).into_iter().collect();
    assert_eq!(got, HashSet::from([c.id, d.id]));
    assert_eq!(stats_of(&*o).await.parked, 0);
}

/// A parked entry whose give-up time passes is handed out again (to be
/// dead-lettered) even though nobody unparked it; a stale claim cannot park.
pub async fn parked_entry_comes_back_at_its_give_up_time<H: OutboxHarness + ?Sized>(h: &mut H) {
    let o = h.open().await;
    let n = notification("expiring");
    assert!(o.enqueue(&n, ago(0)).await.expect("enqueue"));
    let c = o.claim("w1", 10, LONG_LEASE).await.expect("claim");
    o.park(&c[0], &names(&["gotify"]), in_ms(300), "down")
        .await
        .expect("park");
    assert_lease_lost(
        o.park(&c[0], &names(&["gotify"]), in_ms(300), "down").await,
        n.id,
        "parking twice with the same claim",
    );
    assert!(o
        .claim("w1", 10, LONG_LEASE)
        .await
        .expect("claim")
        .is_empty());
    let back = claim_within(&*o, "w2", TAKEOVER_DEADLINE).await;
    assert_eq!(ids(&back), vec![n.id]);
    assert_eq!(back[0].entry.attempts, 1);
    o.dead_letter(&back[0], "expired").await.expect("dead");
    assert_eq!(stats_of(&*o).await.dead, 1);
}

/// `renew` keeps a slow delivery's lease: nobody takes the entry over while the
/// holder renews, and once the lease was lost (expired and claimed by another
/// worker) `renew` says `LeaseLost`, so the old holder never sends it a second time.
pub async fn renew_keeps_the_lease_and_reports_a_lost_one<H: OutboxHarness + ?Sized>(h: &mut H) {
    let o = h.open().await;
    let n = notification("slow");
    assert!(o.enqueue(&n, ago(0)).await.expect("enqueue"));
    let c = o.claim("w1", 10, LEASE).await.expect("claim");
    assert_eq!(ids(&c), vec![n.id]);
    let c = &c[0];
    // Renew for three lease lengths: the entry is never claimable meanwhile.
    let until = Instant::now() + LEASE * 3;
    while Instant::now() < until {
        o.renew(c, LEASE).await.expect("renew while held");
        assert!(
            o.claim("w2", 10, LEASE).await.expect("claim").is_empty(),
            "a renewed lease is not taken over"
        );
        tokio::time::sleep(LEASE / 4).await;
    }
    assert_eq!(stats_of(&*o).await.in_flight, 1);
    // Stop renewing: the lease runs out and w2 takes it over.
    let taken = claim_within(&*o, "w2", TAKEOVER_DEADLINE).await;
    assert_eq!(ids(&taken), vec![n.id]);
    assert_lease_lost(o.renew(c, LONG_LEASE).await, n.id, "renew after takeover");
    assert_lease_lost(o.ack(c).await, n.id, "ack after takeover");
    o.ack(&taken[0]).await.expect("the new holder acks");
    assert_lease_lost(
        o.renew(&taken[0], LEASE).await,
        n.id,
        "renew of an acked entry",
    );
}

/// Entries of one claim are acknowledged one by one as each delivery finishes,
/// interleaved with new claims; each ack removes exactly its own entry.
pub async fn ack_per_entry<H: OutboxHarness + ?Sized>(h: &mut H) {
    let o = h.open().await;
    let ns: Vec<Notification> = (0..5).map(|i| notification(&format!("e{i}"))).collect();
    for n in &ns {
        assert!(o.enqueue(n, ago(0)).await.expect("enqueue"));
    }
    let first = o.claim("w1", 3, LONG_LEASE).await.expect("claim");
    assert_eq!(first.len(), 3);
    o.ack(&first[1])
        .await
        .expect("ack the one that finished first");
    let st = stats_of(&*o).await;
    assert_eq!((st.pending, st.in_flight, st.due), (4, 2, 2));
    let second = o.claim("w1", 10, LONG_LEASE).await.expect("claim");
    assert_eq!(second.len(), 2, "the rest, while two are still in flight");
    for c in second.iter().chain([&first[2], &first[0]]) {
        o.ack(c).await.expect("ack");
    }
    assert_eq!(stats_of(&*o).await, OutboxStats::default());
    assert_lease_lost(o.ack(&first[1]).await, first[1].id(), "second ack");
}
