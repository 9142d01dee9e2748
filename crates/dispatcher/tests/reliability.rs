//! Reliability: fallback, circuit breaker, queueing when everything is down, lease
//! takeover, expiry. The primary is the real Gotify provider against the loopback
//! fake; the fallback is a recording notifier; the outbox is the in-memory reference
//! implementation (the SQLite and Redis backends pass the same conformance suite).

mod common;

use common::{chat, one_try, wait_until};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_notify::{BreakerConfig, BreakerState, Dispatcher, QueuePolicy, SkipReason};
use mesh_notify_core::testing::{MemoryOutbox, RecordingNotifier};
use mesh_notify_core::{Composer, Kind, Outbox, Recipient, Room, Secret};
use mesh_notify_gotify::GotifyNotifier;
use mesh_notify_testkit::gotify::{FakeGotify, Mode};

const TOKEN: &str = "AreliableTok1";

fn fast_queue() -> QueuePolicy {
    QueuePolicy {
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(100),
        workers: 2,
        batch: 16,
        lease: Duration::from_millis(400),
        poll_interval: Duration::from_millis(20),
        ..QueuePolicy::default()
    }
}

struct Setup {
    fake: FakeGotify,
    fallback: RecordingNotifier,
    outbox: MemoryOutbox,
    dispatcher: Arc<Dispatcher>,
}

async fn setup(route: &[&str], timeout: Duration, breaker: BreakerConfig) -> Setup {
    let fake = FakeGotify::start(&[(TOKEN, 1)]).await.unwrap();
    let gotify = GotifyNotifier::new(&fake.url(), Some(Secret::new(TOKEN)), timeout).unwrap();
    let fallback = RecordingNotifier::new("fallback");
    let outbox = MemoryOutbox::new();
    let mut b = Dispatcher::builder()
        .notifier(Arc::new(gotify))
        .notifier(Arc::new(fallback.clone()))
        .policy(one_try(timeout))
        .breaker(breaker)
        .queue_policy(fast_queue())
        .outbox(Arc::new(outbox.clone()));
    for kind in Kind::ALL {
        b = b.route(kind, route.iter().copied());
    }
    Setup {
        fake,
        fallback,
        outbox,
        dispatcher: Arc::new(b.build().unwrap()),
    }
}

const NO_BREAKER: BreakerConfig = BreakerConfig {
    failure_threshold: 0,
    probe_interval: Duration::from_secs(1),
    probe_max_interval: Duration::from_secs(5),
};

#[tokio::test]
async fn refused_hung_and_503_primaries_fall_back() {
    // refused
    let mut s = setup(
        &["gotify", "fallback"],
        Duration::from_millis(300),
        NO_BREAKER,
    )
    .await;
    s.fake.stop();
    let o = s.dispatcher.dispatch(chat(1)).await;
    assert_eq!(o.delivered.as_ref().unwrap().provider, "fallback", "{o:?}");
    // hung
    s.fake.restart().await.unwrap();
    s.fake.set_mode(Mode::Hang);
    let o = s.dispatcher.dispatch(chat(2)).await;
    assert_eq!(o.delivered.as_ref().unwrap().provider, "fallback", "{o:?}");
    assert!(o.attempts[0]
        .error
        .as_ref()
        .unwrap()
        .contains("did not answer"));
    // 503
    s.fake.set_mode(Mode::Status {
        status: 503,
        retry_after: None,
    });
    let o = s.dispatcher.dispatch(chat(3)).await;
    assert_eq!(o.delivered.as_ref().unwrap().provider, "fallback", "{o:?}");
    assert_eq!(s.fallback.delivered().len(), 3);
    assert!(s.fake.messages().is_empty());
}

#[tokio::test]
async fn breaker_opens_skips_the_hung_primary_without_waiting_and_closes_on_recovery() {
    let breaker = BreakerConfig {
        failure_threshold: 2,
        probe_interval: Duration::from_millis(300),
        probe_max_interval: Duration::from_millis(300),
    };
    let s = setup(&["gotify", "fallback"], Duration::from_millis(200), breaker).await;
    s.fake.set_mode(Mode::Hang);
    for i in 0..2 {
        let o = s.dispatcher.dispatch(chat(i)).await;
        assert_eq!(o.delivered.unwrap().provider, "fallback");
    }
    assert_eq!(
        s.dispatcher.breaker_state("gotify"),
        Some(BreakerState::Open)
    );
    // While open: straight to the fallback, the hung primary is not even
    // contacted (so no timeout is paid; checked by the request count, not the
    // wall clock, which is unreliable on busy machines).
    let before = s.fake.requests();
    let o = s.dispatcher.dispatch(chat(9)).await;
    assert_eq!(
        s.fake.requests(),
        before,
        "the open circuit skipped the primary"
    );
    assert!(o.attempts.iter().all(|a| a.provider != "gotify"), "{o:?}");
    assert_eq!(o.skipped[0].reason, SkipReason::CircuitOpen);
    assert_eq!(o.delivered.unwrap().provider, "fallback");
    let requests_while_open = s.fake.requests();
    // Primary recovers; after the cool-down one probe closes the circuit.
    s.fake.set_mode(Mode::Normal);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let o = s.dispatcher.dispatch(chat(10)).await;
    assert_eq!(o.delivered.unwrap().provider, "gotify");
    assert_eq!(
        s.dispatcher.breaker_state("gotify"),
        Some(BreakerState::Closed)
    );
    assert_eq!(s.fake.requests(), requests_while_open + 1);
}

#[tokio::test]
async fn all_down_queues_everything_then_delivers_each_once_after_recovery() {
    let mut s = setup(&["gotify"], Duration::from_millis(200), NO_BREAKER).await;
    s.fake.set_mode(Mode::Status {
        status: 503,
        retry_after: None,
    });
    let workers = s.dispatcher.start_workers();
    let mut ids = Vec::new();
    for i in 0..40 {
        let n = chat(i);
        ids.push(n.id.to_string());
        s.dispatcher.submit(n).await.unwrap();
    }
    // Inline dispatch that fails is queued too.
    let n = chat(40);
    ids.push(n.id.to_string());
    let o = s.dispatcher.dispatch(n).await;
    assert!(!o.is_delivered() && o.queued, "{o:?}");
    // Let the workers fail a few rounds, and the server be unreachable for a while.
    wait_until("some failed rounds", Duration::from_secs(5), || {
        s.fake.requests() > 60
    })
    .await;
    s.fake.stop();
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(s.fake.messages().is_empty());
    assert_eq!(s.outbox.stats().await.unwrap().pending, 41);
    s.fake.restart().await.unwrap();
    s.fake.set_mode(Mode::Normal);
    wait_until("all delivered", Duration::from_secs(10), || {
        s.fake.messages().len() >= 41
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut got: Vec<String> = s
        .fake
        .messages()
        .iter()
        .map(|m| {
            m.extras["mesh::notification"]["id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    got.sort();
    ids.sort();
    assert_eq!(got, ids, "every notification delivered exactly once");
    let stats = s.outbox.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (0, 0));
    workers.shutdown().await;
}

#[tokio::test]
async fn a_worker_that_dies_without_ack_is_taken_over_after_the_lease() {
    let s = setup(&["gotify"], Duration::from_secs(1), NO_BREAKER).await;
    let n = chat(1);
    s.outbox
        .enqueue(&n, mesh_notify_core::Timestamp::now())
        .await
        .unwrap();
    // A worker claims it, then "dies": never acks.
    let claimed = s
        .outbox
        .claim("doomed-worker", 10, Duration::from_millis(300))
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
    let started = Instant::now();
    let workers = s.dispatcher.start_workers();
    wait_until("takeover delivery", Duration::from_secs(5), || {
        s.fake.messages().len() == 1
    })
    .await;
    assert!(
        started.elapsed() >= Duration::from_millis(250),
        "delivered before the lease expired"
    );
    workers.shutdown().await;
    assert_eq!(s.outbox.stats().await.unwrap().pending, 0);
    assert_eq!(s.fake.messages().len(), 1);
}

#[tokio::test]
async fn calls_expire_and_are_dead_lettered_never_delivered_late() {
    let s = setup(&["gotify"], Duration::from_millis(200), NO_BREAKER).await;
    s.fake.set_mode(Mode::Status {
        status: 503,
        retry_after: None,
    });
    let composer = Composer {
        call_ttl: Duration::from_millis(300),
        ..Composer::default()
    };
    let call = composer.call(
        "Alice",
        &Room::new("r1", "Room"),
        Recipient::new("bob", "Bob"),
    );
    let workers = s.dispatcher.start_workers();
    s.dispatcher.submit(call.clone()).await.unwrap();
    let outbox = s.outbox.clone();
    let start = Instant::now();
    loop {
        if outbox.stats().await.unwrap().dead == 1 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "call never dead-lettered"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.fake.set_mode(Mode::Normal);
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        s.fake.messages().is_empty(),
        "an expired call must never ring"
    );
    let dead = outbox.dead(10).await.unwrap();
    assert_eq!(dead[0].entry.notification.id, call.id);
    assert!(dead[0].reason.contains("expired"), "{}", dead[0].reason);
    workers.shutdown().await;
}

#[tokio::test]
async fn permanent_refusals_are_dead_lettered_not_retried_forever() {
    let s = setup(&["gotify"], Duration::from_millis(200), NO_BREAKER).await;
    s.fake.set_mode(Mode::Status {
        status: 400,
        retry_after: None,
    });
    let workers = s.dispatcher.start_workers();
    s.dispatcher.submit(chat(1)).await.unwrap();
    let outbox = s.outbox.clone();
    let start = Instant::now();
    while outbox.stats().await.unwrap().dead == 0 {
        assert!(start.elapsed() < Duration::from_secs(5));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(s.fake.requests(), 1);
    let dead = outbox.dead(1).await.unwrap();
    assert!(dead[0].reason.contains("400"), "{}", dead[0].reason);
    workers.shutdown().await;
}

#[tokio::test]
async fn submit_is_idempotent_by_id() {
    let s = setup(&["gotify"], Duration::from_millis(200), NO_BREAKER).await;
    let n = chat(1);
    assert_eq!(
        s.dispatcher.submit(n.clone()).await.unwrap(),
        mesh_notify::Submitted::Queued
    );
    assert_eq!(
        s.dispatcher.submit(n).await.unwrap(),
        mesh_notify::Submitted::Duplicate
    );
    assert_eq!(s.outbox.stats().await.unwrap().pending, 1);
}
