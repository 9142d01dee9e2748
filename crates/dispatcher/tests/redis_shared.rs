//! Several dispatcher instances sharing one Redis outbox deliver each notification
//! once, and a queue filled while the provider is down drains after it recovers.
//! Needs a real redis-server: `scripts/test` starts one and exports REDIS_URL.

use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_notify::{BreakerConfig, Dispatcher, QueuePolicy, RetryPolicy};
use mesh_notify_core::{Composer, Kind, Outbox, Recipient, Room, Secret};
use mesh_notify_gotify::GotifyNotifier;
use mesh_notify_outbox_redis::RedisOutbox;
use mesh_notify_testkit::gotify::{FakeGotify, Mode};

const TOKEN: &str = "AsharedRedisTok";

fn redis_url() -> Option<String> {
    match std::env::var("REDIS_URL") {
        Ok(u) if !u.is_empty() => Some(u),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("REDIS_URL is not set: under CI the Redis tests must run (scripts/test starts redis-server)")
        }
        _ => {
            eprintln!("SKIPPED: REDIS_URL not set (run scripts/test)");
            None
        }
    }
}

async fn instance(
    url: &str,
    prefix: &str,
    gotify_url: &str,
) -> (Arc<Dispatcher>, Arc<RedisOutbox>) {
    let outbox = Arc::new(RedisOutbox::connect(url, prefix).await.unwrap());
    let gotify =
        GotifyNotifier::new(gotify_url, Some(Secret::new(TOKEN)), Duration::from_secs(2)).unwrap();
    let mut b = Dispatcher::builder()
        .notifier(Arc::new(gotify))
        .policy(RetryPolicy {
            attempts_per_provider: 1,
            ..RetryPolicy::default()
        })
        .breaker(BreakerConfig {
            failure_threshold: 5,
            probe_interval: Duration::from_millis(50),
            probe_max_interval: Duration::from_millis(50),
        })
        .queue_policy(QueuePolicy {
            initial_backoff: Duration::from_millis(20),
            max_backoff: Duration::from_millis(100),
            workers: 2,
            batch: 8,
            lease: Duration::from_secs(10),
            poll_interval: Duration::from_millis(20),
            ..QueuePolicy::default()
        })
        .outbox(outbox.clone());
    for k in Kind::ALL {
        b = b.route(k, ["gotify"]);
    }
    (Arc::new(b.build().unwrap()), outbox)
}

#[tokio::test]
async fn two_instances_share_the_queue_and_deliver_each_notification_once() {
    let Some(url) = redis_url() else { return };
    let prefix = format!("test-shared-{}", uuid_like());
    let fake = FakeGotify::start(&[(TOKEN, 1)]).await.unwrap();
    fake.set_mode(Mode::Status {
        status: 503,
        retry_after: None,
    });
    let (a, outbox) = instance(&url, &prefix, &fake.url()).await;
    let (b, _) = instance(&url, &prefix, &fake.url()).await;
    let wa = a.start_workers();
    let wb = b.start_workers();
    let composer = Composer::default();
    let mut ids = Vec::new();
    for i in 0..60 {
        let n = composer.chat(
            "Alice",
            &Room::new("r", "R"),
            Recipient::new(format!("u{i}"), "U"),
            &format!("m{i}"),
        );
        ids.push(n.id.to_string());
        // Alternate the instance that accepts the notification.
        if i % 2 == 0 {
            a.submit(n).await.unwrap()
        } else {
            b.submit(n).await.unwrap()
        };
    }
    let start = Instant::now();
    // The workers try, the circuits open, the entries are parked; only probes
    // reach Gotify after that.
    while fake.requests() < 10 || outbox.stats().await.unwrap().parked == 0 {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "workers never tried"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    fake.set_mode(Mode::Normal);
    while fake.messages().len() < 60 {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "only {} delivered",
            fake.messages().len()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    wa.shutdown().await;
    wb.shutdown().await;
    let mut got: Vec<String> = fake
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
    assert_eq!(
        got, ids,
        "each notification delivered exactly once across both instances"
    );
    let stats = outbox.stats().await.unwrap();
    assert_eq!((stats.pending, stats.dead), (0, 0));
}

fn uuid_like() -> String {
    mesh_notify_core::NotificationId::new().to_string()
}
