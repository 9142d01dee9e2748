//! The delivery service: provider-health-gated queue (park, probe, release at
//! once), `Retry-After` pauses, the log provider never swallowing what a real
//! provider can deliver, lease safety with a provider slower than the lease, and
//! supervised workers. Outbox: the in-memory reference backend (SQLite and Redis
//! pass the same conformance suite, parking included).

mod common;

use common::{chat, one_try, wait_until};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use mesh_notify::{BreakerConfig, BreakerState, Dispatcher, LogNotifier, QueuePolicy, SkipReason};
use mesh_notify_core::testing::MemoryOutbox;
use mesh_notify_core::{
    Claim, Composer, DeadEntry, Health, Kind, Notification, NotificationId, Notifier, NotifyError,
    Outbox, OutboxEntry, OutboxError, OutboxStats, Receipt, Recipient, Room, Secret, Timestamp,
};
use mesh_notify_gotify::GotifyNotifier;
use mesh_notify_testkit::gotify::{FakeGotify, Mode};

const TOKEN: &str = "AhealthTok01";

fn queue() -> QueuePolicy {
    QueuePolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        workers: 2,
        batch: 16,
        concurrency: 8,
        lease: Duration::from_secs(5),
        poll_interval: Duration::from_millis(20),
        ..QueuePolicy::default()
    }
}

fn breaker() -> BreakerConfig {
    BreakerConfig {
        failure_threshold: 3,
        probe_interval: Duration::from_millis(100),
        probe_max_interval: Duration::from_millis(400),
    }
}

async fn stats_until(
    outbox: &dyn Outbox,
    what: &str,
    mut cond: impl FnMut(&OutboxStats) -> bool,
) -> OutboxStats {
    let start = Instant::now();
    loop {
        let s = outbox.stats().await.expect("stats");
        if cond(&s) {
            return s;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "timed out waiting for: {what} ({s:?})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn delivered_ids(fake: &FakeGotify) -> Vec<String> {
    let mut ids: Vec<String> = fake
        .messages()
        .iter()
        .map(|m| {
            m.extras["mesh::notification"]["id"]
                .as_str()
                .expect("id extra")
                .to_owned()
        })
        .collect();
    ids.sort();
    ids
}

struct Setup {
    fake: FakeGotify,
    outbox: MemoryOutbox,
    dispatcher: Arc<Dispatcher>,
}

async fn gotify_setup(route: &[&str], log: Option<LogNotifier>) -> Setup {
    let fake = FakeGotify::start(&[(TOKEN, 1)]).await.unwrap();
    let timeout = Duration::from_millis(300);
    let gotify = GotifyNotifier::new(&fake.url(), Some(Secret::new(TOKEN)), timeout).unwrap();
    let outbox = MemoryOutbox::new();
    let mut b = Dispatcher::builder()
        .notifier(Arc::new(gotify))
        .policy(one_try(timeout))
        .breaker(breaker())
        .queue_policy(queue())
        .outbox(Arc::new(outbox.clone()));
    if let Some(log) = log {
        b = b.notifier(Arc::new(log));
    }
    for kind in Kind::ALL {
        b = b.route(kind, route.iter().copied());
    }
    Setup {
        fake,
        outbox,
        dispatcher: Arc::new(b.build().unwrap()),
    }
}

/// While Gotify is down its queued notifications are parked: their attempt count
/// stays at the one or two tries that opened the circuit however long the outage
/// lasts, Gotify sees only the probes, and once it answers every parked
/// notification is delivered, each exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_while_down_released_at_once_when_back() {
    let s = gotify_setup(&["gotify"], None).await;
    s.fake.set_mode(Mode::Status {
        status: 503,
        retry_after: None,
    });
    let workers = s.dispatcher.start_workers();
    let mut ids = Vec::new();
    for i in 0..60 {
        let n = chat(i);
        ids.push(n.id.to_string());
        s.dispatcher.submit(n).await.unwrap();
    }
    ids.sort();
    stats_until(&s.outbox, "all parked", |st| st.parked == 60).await;
    assert_eq!(
        s.dispatcher.breaker_state("gotify"),
        Some(BreakerState::Open)
    );
    // Let several probes fail (100 ms doubling to 400 ms).
    let requests_when_parked = s.fake.requests();
    tokio::time::sleep(Duration::from_millis(1200)).await;
    let probes = s.fake.requests() - requests_when_parked;
    assert!(
        (1..=8).contains(&probes),
        "only probes reach the provider while it is down, got {probes}"
    );
    let pending = s.outbox.pending(100).await.unwrap();
    let max_attempts = pending.iter().map(|e| e.attempts).max().unwrap_or(0);
    assert!(
        max_attempts <= 2,
        "parking burns no attempts (max attempts {max_attempts})"
    );
    s.fake.set_mode(Mode::Normal);
    wait_until(
        "every parked notification delivered",
        Duration::from_secs(10),
        || s.fake.messages().len() >= 60,
    )
    .await;
    stats_until(&s.outbox, "outbox empty", |st| st.pending == 0).await;
    assert_eq!(delivered_ids(&s.fake), ids, "each exactly once");
    assert_eq!(
        s.dispatcher.breaker_state("gotify"),
        Some(BreakerState::Closed)
    );
    workers.shutdown().await;
}

/// A 429 with `Retry-After` pauses the provider (not each entry): nothing is sent
/// to it until the pause ends, then everything that waited goes out.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_pauses_the_provider() {
    let s = gotify_setup(&["gotify"], None).await;
    s.fake.set_mode(Mode::Status {
        status: 429,
        retry_after: Some("1".into()),
    });
    let workers = s.dispatcher.start_workers();
    s.dispatcher.submit(chat(0)).await.unwrap();
    wait_until("the 429", Duration::from_secs(5), || s.fake.requests() >= 1).await;
    s.fake.set_mode(Mode::Normal);
    let paused_at = Instant::now();
    for i in 1..20 {
        s.dispatcher.submit(chat(i)).await.unwrap();
    }
    stats_until(&s.outbox, "parked during the pause", |st| st.parked >= 19).await;
    assert_eq!(s.fake.requests(), 1, "nothing sent during the pause");
    wait_until("delivered after the pause", Duration::from_secs(10), || {
        s.fake.messages().len() == 20
    })
    .await;
    assert!(
        paused_at.elapsed() >= Duration::from_millis(500),
        "the pause was honoured"
    );
    stats_until(&s.outbox, "outbox empty", |st| st.pending == 0).await;
    workers.shutdown().await;
}

/// Route [gotify, log], Gotify down: the log does not count as delivery; the
/// notification waits and reaches Gotify once it is back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_log_never_swallows_what_gotify_can_deliver_later() {
    let s = gotify_setup(&["gotify", "log"], Some(LogNotifier::new())).await;
    s.fake.set_mode(Mode::Hang);
    let n = chat(1);
    let o = s.dispatcher.dispatch(n.clone()).await;
    assert!(!o.is_delivered(), "{o:?}");
    assert!(o.queued, "queued for Gotify: {o:?}");
    assert!(o
        .skipped
        .iter()
        .any(|k| k.provider == "log" && k.reason == SkipReason::Standby));
    let workers = s.dispatcher.start_workers();
    for i in 2..12 {
        s.dispatcher.submit(chat(i)).await.unwrap();
    }
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert!(s.fake.messages().is_empty());
    assert_eq!(s.outbox.stats().await.unwrap().pending, 11);
    s.fake.set_mode(Mode::Normal);
    wait_until("all reach Gotify", Duration::from_secs(10), || {
        s.fake.messages().len() == 11
    })
    .await;
    stats_until(&s.outbox, "outbox empty", |st| st.pending == 0).await;
    workers.shutdown().await;
}

/// Where no real provider can reach the recipient (Gotify without a default
/// token, Bob without a Gotify token), the log is the delivery; a terminal log
/// always is.
#[tokio::test]
async fn the_log_delivers_where_no_real_provider_can() {
    let fake = FakeGotify::start(&[(TOKEN, 1)]).await.unwrap();
    let no_default = GotifyNotifier::new(&fake.url(), None, Duration::from_millis(300)).unwrap();
    let d = Dispatcher::builder()
        .notifier(Arc::new(no_default))
        .notifier(Arc::new(LogNotifier::new()))
        .route(Kind::Chat, ["gotify", "log"])
        .build()
        .unwrap();
    let o = d.dispatch(chat(1)).await;
    assert_eq!(o.delivered.unwrap().provider, "log");

    let mut fake = fake;
    fake.stop();
    let down = GotifyNotifier::new(
        &fake.url(),
        Some(Secret::new(TOKEN)),
        Duration::from_millis(300),
    )
    .unwrap();
    let d = Dispatcher::builder()
        .notifier(Arc::new(down))
        .notifier(Arc::new(LogNotifier::terminal()))
        .route(Kind::Chat, ["gotify", "log"])
        .policy(one_try(Duration::from_millis(300)))
        .build()
        .unwrap();
    let o = d.dispatch(chat(2)).await;
    assert_eq!(
        o.delivered.unwrap().provider,
        "log",
        "terminal: always counts"
    );
}

/// A provider that answers after `delay`, counting sends per notification.
struct SlowNotifier {
    delay: Duration,
    sends: Mutex<Vec<NotificationId>>,
}

#[async_trait]
impl Notifier for SlowNotifier {
    fn name(&self) -> &str {
        "slow"
    }
    async fn send(&self, n: &Notification) -> Result<Receipt, NotifyError> {
        self.sends.lock().unwrap().push(n.id);
        tokio::time::sleep(self.delay).await;
        Ok(Receipt {
            provider: "slow".into(),
            message_id: None,
            latency: self.delay,
        })
    }
    async fn health(&self) -> Health {
        Health::Healthy
    }
}

/// A provider slower than the lease, with two dispatcher instances on one
/// outbox: the lease is renewed while the send is in flight, so the other
/// instance never takes the entry over and nothing is sent twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_provider_slower_than_the_lease_is_not_sent_twice() {
    let outbox = MemoryOutbox::new();
    let slow = Arc::new(SlowNotifier {
        delay: Duration::from_millis(900),
        sends: Mutex::new(Vec::new()),
    });
    let policy = QueuePolicy {
        lease: Duration::from_millis(300),
        ..queue()
    };
    let make = || {
        Arc::new(
            Dispatcher::builder()
                .notifier(slow.clone())
                .route(Kind::Chat, ["slow"])
                .policy(one_try(Duration::from_secs(3)))
                .queue_policy(policy.clone())
                .outbox(Arc::new(outbox.clone()))
                .build()
                .unwrap(),
        )
    };
    let (a, b) = (make(), make());
    let wa = a.start_workers();
    let wb = b.start_workers();
    for i in 0..6 {
        a.submit(chat(i)).await.unwrap();
    }
    stats_until(&outbox, "all delivered", |st| st.pending == 0).await;
    let sends = slow.sends.lock().unwrap().clone();
    let mut unique = sends.clone();
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 6);
    assert_eq!(sends.len(), 6, "no notification sent twice: {sends:?}");
    wa.shutdown().await;
    wb.shutdown().await;
}

/// A provider that panics on its first `panics` sends.
struct PanickyNotifier {
    panics: AtomicUsize,
    delivered: AtomicUsize,
}

#[async_trait]
impl Notifier for PanickyNotifier {
    fn name(&self) -> &str {
        "panicky"
    }
    async fn send(&self, _n: &Notification) -> Result<Receipt, NotifyError> {
        if self
            .panics
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |p| p.checked_sub(1))
            .is_ok()
        {
            panic!("provider bug");
        }
        self.delivered.fetch_add(1, Ordering::SeqCst);
        Ok(Receipt {
            provider: "panicky".into(),
            message_id: None,
            latency: Duration::ZERO,
        })
    }
    async fn health(&self) -> Health {
        Health::Healthy
    }
}

/// A delivery that panics is logged and its notification retried (and
/// delivered); the worker carries on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_delivery_is_retried_and_the_worker_carries_on() {
    let outbox = MemoryOutbox::new();
    let p = Arc::new(PanickyNotifier {
        panics: AtomicUsize::new(2),
        delivered: AtomicUsize::new(0),
    });
    let d = Arc::new(
        Dispatcher::builder()
            .notifier(p.clone())
            .route(Kind::Chat, ["panicky"])
            .queue_policy(queue())
            .outbox(Arc::new(outbox.clone()))
            .build()
            .unwrap(),
    );
    let workers = d.start_workers();
    for i in 0..5 {
        d.submit(chat(i)).await.unwrap();
    }
    stats_until(&outbox, "all delivered", |st| st.pending == 0).await;
    assert_eq!(p.delivered.load(Ordering::SeqCst), 5);
    assert_eq!(outbox.stats().await.unwrap().dead, 0);
    workers.shutdown().await;
}

/// An outbox whose `claim` panics once (a backend bug) and counts claims.
#[derive(Clone)]
struct FlakyOutbox {
    inner: MemoryOutbox,
    panic_next_claim: Arc<AtomicBool>,
    claims: Arc<AtomicUsize>,
}

#[async_trait]
impl Outbox for FlakyOutbox {
    fn backend(&self) -> &'static str {
        "flaky"
    }
    async fn enqueue(&self, n: &Notification, due_at: Timestamp) -> Result<bool, OutboxError> {
        self.inner.enqueue(n, due_at).await
    }
    async fn claim(
        &self,
        worker: &str,
        max: usize,
        lease: Duration,
    ) -> Result<Vec<Claim>, OutboxError> {
        self.claims.fetch_add(1, Ordering::SeqCst);
        if self.panic_next_claim.swap(false, Ordering::SeqCst) {
            panic!("backend bug");
        }
        self.inner.claim(worker, max, lease).await
    }
    async fn ack(&self, claim: &Claim) -> Result<(), OutboxError> {
        self.inner.ack(claim).await
    }
    async fn retry_at(&self, claim: &Claim, when: Timestamp, why: &str) -> Result<(), OutboxError> {
        self.inner.retry_at(claim, when, why).await
    }
    async fn park(
        &self,
        claim: &Claim,
        providers: &[String],
        until: Timestamp,
        why: &str,
    ) -> Result<(), OutboxError> {
        self.inner.park(claim, providers, until, why).await
    }
    async fn unpark(&self, provider: Option<&str>, limit: usize) -> Result<u64, OutboxError> {
        self.inner.unpark(provider, limit).await
    }
    async fn renew(&self, claim: &Claim, lease: Duration) -> Result<(), OutboxError> {
        self.inner.renew(claim, lease).await
    }
    async fn dead_letter(&self, claim: &Claim, why: &str) -> Result<(), OutboxError> {
        self.inner.dead_letter(claim, why).await
    }
    async fn cancel(&self, id: NotificationId) -> Result<bool, OutboxError> {
        self.inner.cancel(id).await
    }
    async fn stats(&self) -> Result<OutboxStats, OutboxError> {
        self.inner.stats().await
    }
    async fn pending(&self, limit: usize) -> Result<Vec<OutboxEntry>, OutboxError> {
        self.inner.pending(limit).await
    }
    async fn dead(&self, limit: usize) -> Result<Vec<DeadEntry>, OutboxError> {
        self.inner.dead(limit).await
    }
    async fn requeue_dead(&self, id: NotificationId) -> Result<bool, OutboxError> {
        self.inner.requeue_dead(id).await
    }
    async fn purge_dead(&self) -> Result<u64, OutboxError> {
        self.inner.purge_dead().await
    }
    async fn health(&self) -> Health {
        Health::Healthy
    }
}

fn flaky_dispatcher(outbox: &FlakyOutbox) -> Arc<Dispatcher> {
    Arc::new(
        Dispatcher::builder()
            .notifier(Arc::new(LogNotifier::new()))
            .route(Kind::Chat, ["log"])
            .queue_policy(QueuePolicy {
                workers: 1,
                ..queue()
            })
            .outbox(Arc::new(outbox.clone()))
            .build()
            .unwrap(),
    )
}

/// A worker task that panics is replaced: deliveries go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_worker_is_replaced() {
    let outbox = FlakyOutbox {
        inner: MemoryOutbox::new(),
        panic_next_claim: Arc::new(AtomicBool::new(true)),
        claims: Arc::new(AtomicUsize::new(0)),
    };
    let d = flaky_dispatcher(&outbox);
    let workers = d.start_workers();
    wait_until("the first claim panicked", Duration::from_secs(5), || {
        !outbox.panic_next_claim.load(Ordering::SeqCst)
    })
    .await;
    for i in 0..3 {
        d.submit(chat(i)).await.unwrap();
    }
    stats_until(&outbox.inner, "delivered by the new worker", |st| {
        st.pending == 0
    })
    .await;
    workers.shutdown().await;
}

/// Dropping the `Workers` handle stops them: no more claims afterwards (they do
/// not spin on the closed stop channel).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_workers_stops_them() {
    let outbox = FlakyOutbox {
        inner: MemoryOutbox::new(),
        panic_next_claim: Arc::new(AtomicBool::new(false)),
        claims: Arc::new(AtomicUsize::new(0)),
    };
    let d = flaky_dispatcher(&outbox);
    let workers = d.start_workers();
    wait_until("polling", Duration::from_secs(5), || {
        outbox.claims.load(Ordering::SeqCst) >= 3
    })
    .await;
    drop(workers);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let after_drop = outbox.claims.load(Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        outbox.claims.load(Ordering::SeqCst),
        after_drop,
        "no claims after the handle was dropped"
    );
    d.submit(chat(1)).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(outbox.inner.stats().await.unwrap().pending, 1);
}

/// A per-device provider: records which token each send went to; tokens listed
/// in `flaky` fail (transient) their first `fail_first` sends.
struct DeviceNotifier {
    sends: Mutex<Vec<String>>,
    flaky: Mutex<std::collections::HashMap<String, usize>>,
}

#[async_trait]
impl Notifier for DeviceNotifier {
    fn name(&self) -> &str {
        "fcm"
    }
    fn can_reach(&self, n: &Notification) -> bool {
        n.recipient
            .address(mesh_notify_core::AddressKind::Fcm)
            .is_some()
    }
    fn address_kind(&self, _n: &Notification) -> Option<mesh_notify_core::AddressKind> {
        Some(mesh_notify_core::AddressKind::Fcm)
    }
    async fn send(&self, n: &Notification) -> Result<Receipt, NotifyError> {
        let token = n
            .recipient
            .address(mesh_notify_core::AddressKind::Fcm)
            .map(|t| t.expose().to_owned())
            .unwrap_or_default();
        {
            let mut flaky = self.flaky.lock().unwrap();
            if let Some(left) = flaky.get_mut(&token) {
                if *left > 0 {
                    *left -= 1;
                    return Err(NotifyError::transient("503 UNAVAILABLE"));
                }
            }
        }
        self.sends.lock().unwrap().push(token);
        Ok(Receipt {
            provider: "fcm".into(),
            message_id: None,
            latency: Duration::ZERO,
        })
    }
    async fn health(&self) -> Health {
        Health::Healthy
    }
}

fn bob_with(tokens: &[&str]) -> Recipient {
    let mut bob = Recipient::new("bob", "Bob");
    for t in tokens {
        bob = bob.with_address(mesh_notify_core::Address::new(
            mesh_notify_core::AddressKind::Fcm,
            *t,
        ));
    }
    bob
}

/// One device fails for a while: the others get the notification at once, the
/// failing one later through a follow-up, and nobody gets it twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_device_is_retried_alone_and_nobody_gets_it_twice() {
    let outbox = MemoryOutbox::new();
    let fcm = Arc::new(DeviceNotifier {
        sends: Mutex::new(Vec::new()),
        flaky: Mutex::new([("tok-tablet".to_string(), 2)].into_iter().collect()),
    });
    let d = Arc::new(
        Dispatcher::builder()
            .notifier(fcm.clone())
            .route(Kind::Chat, ["fcm"])
            .policy(one_try(Duration::from_secs(1)))
            .breaker(BreakerConfig {
                failure_threshold: 0,
                ..BreakerConfig::default()
            })
            .queue_policy(queue())
            .outbox(Arc::new(outbox.clone()))
            .build()
            .unwrap(),
    );
    let workers = d.start_workers();
    let n = Composer::default().chat(
        "Alice",
        &Room::new("r", "Room"),
        bob_with(&["tok-phone", "tok-laptop", "tok-tablet"]),
        "hi",
    );
    d.submit(n).await.unwrap();
    wait_until("every device served", Duration::from_secs(10), || {
        fcm.sends.lock().unwrap().len() >= 3
    })
    .await;
    stats_until(&outbox, "nothing left", |st| st.pending == 0).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut sends = fcm.sends.lock().unwrap().clone();
    sends.sort();
    assert_eq!(
        sends,
        ["tok-laptop", "tok-phone", "tok-tablet"],
        "each device exactly once"
    );
    workers.shutdown().await;
}

struct Book(Mutex<Vec<mesh_notify_core::Address>>);

#[async_trait]
impl mesh_notify::AddressBook for Book {
    async fn addresses(&self, _user: &str) -> Option<Vec<mesh_notify_core::Address>> {
        Some(self.0.lock().unwrap().clone())
    }
}

/// A queued notification goes to the addresses the user has when it is sent, not
/// to the ones they had when it was queued.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queued_notifications_use_the_current_addresses() {
    let outbox = MemoryOutbox::new();
    let fcm = Arc::new(DeviceNotifier {
        sends: Mutex::new(Vec::new()),
        flaky: Mutex::new(Default::default()),
    });
    let book = Arc::new(Book(Mutex::new(vec![mesh_notify_core::Address::new(
        mesh_notify_core::AddressKind::Fcm,
        "tok-new-phone",
    )])));
    let d = Arc::new(
        Dispatcher::builder()
            .notifier(fcm.clone())
            .route(Kind::Chat, ["fcm"])
            .queue_policy(queue())
            .outbox(Arc::new(outbox.clone()))
            .address_book(book)
            .build()
            .unwrap(),
    );
    let n = Composer::default().chat(
        "Alice",
        &Room::new("r", "Room"),
        bob_with(&["tok-removed-phone"]),
        "hi",
    );
    d.submit(n).await.unwrap();
    let workers = d.start_workers();
    stats_until(&outbox, "delivered", |st| st.pending == 0).await;
    assert_eq!(*fcm.sends.lock().unwrap(), ["tok-new-phone"]);
    workers.shutdown().await;
}
