//! Redis-specific behaviour: start-up errors, AOF restart durability, health,
//! the stream and consumer group bookkeeping, corrupt entries.

mod support;

use std::time::{Duration, Instant};

use mesh_notify_core::testing::outbox_conformance::notification;
use mesh_notify_core::{Health, Outbox, OutboxError, Timestamp};
use mesh_notify_outbox_redis::{redact_url, RedisOutbox, RedisOutboxConfig, GROUP};
use support::{redis_server_binary, redis_url, unique_prefix, RedisServer};

fn ago(ms: i64) -> Timestamp {
    Timestamp(Timestamp::now().as_millis() - ms)
}

/// The name of one of the outbox's keys (layout in the crate's `scripts` module).
fn key(prefix: &str, name: &str) -> String {
    format!("{{{prefix}}}:{name}")
}

#[tokio::test]
async fn an_unreachable_server_fails_at_start_up_naming_the_url_without_password() {
    let port = support::free_port(); // nothing listens there
    let url = format!("redis://:s3cretPw@127.0.0.1:{port}/0");
    let config = RedisOutboxConfig {
        connect_timeout: Duration::from_millis(500),
        ..RedisOutboxConfig::default()
    };
    let started = Instant::now();
    let err = RedisOutbox::connect_with(&url, "mesh", &config)
        .await
        .unwrap_err();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "fails fast: {:?}",
        started.elapsed()
    );
    match &err {
        OutboxError::Open { target, reason } => {
            assert!(target.contains(&format!("127.0.0.1:{port}")), "{target}");
            assert!(!target.contains("s3cretPw"), "{target}");
            assert!(!reason.contains("s3cretPw"), "{reason}");
        }
        other => panic!("expected Open, got {other:?}"),
    }
    assert!(!err.to_string().contains("s3cretPw"));
}

#[tokio::test]
async fn an_invalid_url_fails_at_start_up_without_leaking_the_password() {
    let err = RedisOutbox::connect("http://user:s3cretPw@127.0.0.1:1/", "mesh")
        .await
        .unwrap_err();
    assert!(matches!(err, OutboxError::Open { .. }), "{err:?}");
    assert!(!err.to_string().contains("s3cretPw"), "{err}");
    assert_eq!(redact_url("redis://:pw@h:1/0"), "redis://:***@h:1/0");
    assert_eq!(redact_url("redis://h:1/"), "redis://h:1/");
    assert_eq!(redact_url("not a url pw"), "<unparsable Redis URL>");
}

#[tokio::test]
async fn a_prefix_with_braces_is_refused() {
    for prefix in ["{mesh}", "a}b", "x{"] {
        let err = RedisOutbox::connect("redis://127.0.0.1:1/", prefix)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, OutboxError::Open { reason, .. } if reason.contains("prefix")),
            "{prefix}: {err:?}"
        );
    }
}

#[tokio::test]
async fn an_empty_prefix_is_refused() {
    let err = RedisOutbox::connect("redis://127.0.0.1:1/", "")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, OutboxError::Open { reason, .. } if reason.contains("prefix")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn entries_survive_a_redis_crash_and_restart_with_aof() {
    let Some(binary) = redis_server_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let aof = ["--appendonly", "yes", "--appendfsync", "always"];
    let prefix = "mesh:restart";
    let due = notification("due");
    let future = notification("future");
    let leased = notification("leased");
    let dead = notification("dead");

    let server = RedisServer::start(&binary, dir.path(), &aof).await;
    let claims = {
        let outbox = server.outbox(prefix).await;
        assert_eq!(outbox.health().await, Health::Healthy, "AOF is on");
        outbox
            .enqueue_batch(&[leased.clone(), dead.clone()], ago(3000))
            .await
            .unwrap();
        assert!(outbox.enqueue(&due, ago(1000)).await.unwrap());
        assert!(outbox
            .enqueue(&future, Timestamp(Timestamp::now().as_millis() + 3_600_000))
            .await
            .unwrap());
        let claims = outbox
            .claim("w1", 2, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(claims.len(), 2);
        let to_kill = claims.iter().find(|c| c.id() == dead.id).unwrap();
        outbox.dead_letter(to_kill, "refused").await.unwrap();
        claims
    };
    server.kill(); // SIGKILL: no shutdown save, only the AOF

    let server = RedisServer::start(&binary, dir.path(), &aof).await;
    let outbox = server.outbox(prefix).await;
    let stats = outbox.stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.in_flight, stats.due, stats.dead),
        (3, 1, 1, 1),
        "{stats:?}"
    );
    let pending = outbox.pending(10).await.unwrap();
    let ids: Vec<_> = pending.iter().map(|e| e.notification.id).collect();
    assert_eq!(ids, vec![leased.id, due.id, future.id]);
    assert_eq!(pending[2].notification, future);
    assert_eq!(outbox.dead(10).await.unwrap()[0].entry.notification, dead);
    let got = outbox
        .claim("w2", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(got.len(), 1);
    assert_eq!(got[0].id(), due.id);
    let held = claims.iter().find(|c| c.id() == leased.id).unwrap();
    outbox
        .ack(held)
        .await
        .expect("the lease taken before the crash still settles");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_is_degraded_without_aof() {
    let Some(binary) = redis_server_binary() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let server = RedisServer::start(&binary, dir.path(), &["--appendonly", "no"]).await;
    let outbox = server.outbox("mesh").await;
    match outbox.health().await {
        Health::Degraded(why) => {
            assert!(why.contains("appendonly"), "{why}");
            assert!(why.contains("127.0.0.1"), "names the server: {why}");
        }
        other => panic!("expected Degraded, got {other:?}"),
    }
    server.kill();
    assert!(
        matches!(outbox.health().await, Health::Unhealthy(_)),
        "server gone"
    );
}

/// Raw view of the stream, to check the consumer-group bookkeeping.
async fn stream_state(url: &str, prefix: &str) -> (u64, Vec<(String, String)>) {
    let client = redis::Client::open(url).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let stream = key(prefix, "stream");
    let len: u64 = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    let pel: Vec<(String, String, u64, u64)> = redis::cmd("XPENDING")
        .arg(&stream)
        .arg(GROUP)
        .arg("-")
        .arg("+")
        .arg(100)
        .query_async(&mut conn)
        .await
        .unwrap();
    (
        len,
        pel.into_iter()
            .map(|(id, consumer, _, _)| (id, consumer))
            .collect(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn claims_live_in_the_consumer_group_and_settled_entries_leave_the_stream() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("stream");
    let outbox = RedisOutbox::connect(&url, &prefix).await.unwrap();
    let ns: Vec<_> = (0..3).map(|i| notification(&format!("s{i}"))).collect();
    outbox.enqueue_batch(&ns, ago(10)).await.unwrap();
    assert_eq!(
        stream_state(&url, &prefix).await,
        (0, vec![]),
        "waiting entries are not in the stream yet"
    );

    let claims = outbox
        .claim("w1", 10, Duration::from_millis(200))
        .await
        .unwrap();
    assert_eq!(claims.len(), 3);
    let (len, pel) = stream_state(&url, &prefix).await;
    assert_eq!(len, 3);
    assert_eq!(pel.len(), 3);
    assert!(pel.iter().all(|(_, consumer)| consumer == "w1"), "{pel:?}");
    for c in &claims {
        assert!(
            pel.iter()
                .any(|(sid, _)| c.lease_id.starts_with(&format!("{sid}/"))),
            "lease id names the stream entry"
        );
    }

    outbox.ack(&claims[0]).await.unwrap();
    outbox.retry_at(&claims[1], ago(0), "503").await.unwrap();
    let (len, pel) = stream_state(&url, &prefix).await;
    assert_eq!(
        (len, pel.len()),
        (1, 1),
        "acked and retried entries are XACKed and XDELed"
    );

    // The third one's lease expires: another worker's claim moves it in the group.
    let started = Instant::now();
    let mut taken = Vec::new();
    while !taken
        .iter()
        .any(|c: &mesh_notify_core::Claim| c.id() == claims[2].id())
    {
        assert!(started.elapsed() < Duration::from_secs(5), "no takeover");
        taken.extend(
            outbox
                .claim("w2", 10, Duration::from_secs(60))
                .await
                .unwrap(),
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(taken.len(), 2, "the retried entry and the expired one");
    let (_, pel) = stream_state(&url, &prefix).await;
    assert_eq!(pel.len(), 2);
    assert!(pel.iter().all(|(_, consumer)| consumer == "w2"), "{pel:?}");
    assert!(matches!(
        outbox.ack(&claims[2]).await,
        Err(OutboxError::LeaseLost(_))
    ));
    for c in &taken {
        outbox.ack(c).await.unwrap();
    }
    assert_eq!(stream_state(&url, &prefix).await, (0, vec![]));
    assert_eq!(outbox.stats().await.unwrap(), Default::default());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_entry_is_quarantined_and_does_not_block_the_queue() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("corrupt");
    let outbox = RedisOutbox::connect(&url, &prefix).await.unwrap();
    let bad = notification("bad");
    let good = notification("good");
    assert!(outbox.enqueue(&bad, ago(2000)).await.unwrap());
    assert!(outbox.enqueue(&good, ago(1000)).await.unwrap());
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("HSET")
        .arg(key(&prefix, "n"))
        .arg(bad.id.to_string())
        .arg("{not json")
        .query_async(&mut conn)
        .await
        .unwrap();

    let claims = outbox
        .claim("w1", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claims.len(), 1, "the good entry is still delivered");
    assert_eq!(claims[0].entry.notification, good);
    let stats = outbox.stats().await.unwrap();
    assert_eq!(
        (stats.pending, stats.in_flight, stats.dead),
        (1, 1, 1),
        "{stats:?}"
    );
    match outbox.dead(10).await {
        Err(OutboxError::Corrupt { id, reason }) => {
            assert_eq!(id, bad.id.to_string());
            assert!(reason.contains("JSON"), "{reason}");
        }
        other => panic!("expected Corrupt, got {other:?}"),
    }
    assert_eq!(outbox.purge_dead().await.unwrap(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_entry_left_unread_is_still_claimed() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("stranded");
    let outbox = RedisOutbox::connect(&url, &prefix).await.unwrap();
    // Far from due: the claim's move from the waiting set would never pick it.
    let n = notification("stranded");
    let later = Timestamp(Timestamp::now().as_millis() + 3_600_000);
    assert!(outbox.enqueue(&n, later).await.unwrap());
    // Move it into the stream by hand, as the claim script does, without reading
    // it: an entry added to the stream and left undelivered.
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let removed: u64 = redis::cmd("ZREM")
        .arg(key(&prefix, "delayed"))
        .arg(n.id.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(removed, 1);
    let _sid: String = redis::cmd("XADD")
        .arg(key(&prefix, "stream"))
        .arg("*")
        .arg("id")
        .arg(n.id.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(stream_state(&url, &prefix).await, (1, vec![]), "unread");

    let claims = outbox
        .claim("w1", 10, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claims.len(), 1, "the unread stream entry is claimed");
    assert_eq!(claims[0].entry.notification, n);
    assert_eq!(claims[0].entry.attempts, 1);
    let (len, pel) = stream_state(&url, &prefix).await;
    assert_eq!((len, pel.len()), (1, 1));
    assert_eq!(pel[0].1, "w1");
    outbox.ack(&claims[0]).await.unwrap();
    assert_eq!(stream_state(&url, &prefix).await, (0, vec![]));
    assert_eq!(outbox.stats().await.unwrap(), Default::default());

    // Stale stream entries (their id is no longer pending), more of them than the
    // claim asks for, are dropped, not claimed, and do not stop a due entry from
    // being claimed in the same call.
    let due = notification("due");
    assert!(outbox.enqueue(&due, ago(0)).await.unwrap());
    for _ in 0..3 {
        let _sid: String = redis::cmd("XADD")
            .arg(key(&prefix, "stream"))
            .arg("*")
            .arg("id")
            .arg(n.id.to_string())
            .query_async(&mut conn)
            .await
            .unwrap();
    }
    let claims = outbox
        .claim("w1", 2, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claims.len(), 1);
    assert_eq!(claims[0].id(), due.id);
    outbox.ack(&claims[0]).await.unwrap();
    assert_eq!(stream_state(&url, &prefix).await, (0, vec![]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_key_carries_the_prefix_as_its_cluster_hash_tag() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("hashtag");
    let outbox = RedisOutbox::connect(&url, &prefix).await.unwrap();
    let ns: Vec<_> = (0..4).map(|i| notification(&format!("k{i}"))).collect();
    outbox.enqueue_batch(&ns, ago(0)).await.unwrap();
    let claims = outbox
        .claim("w1", 10, Duration::from_secs(60))
        .await
        .unwrap();
    outbox
        .park(
            &claims[0],
            &["gotify".to_owned()],
            Timestamp(Timestamp::now().as_millis() + 60_000),
            "down",
        )
        .await
        .unwrap();
    outbox.dead_letter(&claims[1], "refused").await.unwrap();
    outbox.retry_at(&claims[2], ago(0), "503").await.unwrap();
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let mut found: Vec<String> = redis::cmd("KEYS")
        .arg(format!("*{prefix}*"))
        .query_async(&mut conn)
        .await
        .unwrap();
    found.sort();
    let tag = format!("{{{prefix}}}:");
    assert!(found.iter().all(|k| k.starts_with(&tag)), "{found:?}");
    let slots: std::collections::HashSet<u16> = found
        .iter()
        .map(|k| {
            // CRC16 of the hash tag, as Redis Cluster computes it.
            let open = k.find('{').unwrap();
            let close = open + 1 + k[open + 1..].find('}').unwrap();
            crc16(&k.as_bytes()[open + 1..close]) % 16384
        })
        .collect();
    assert_eq!(slots.len(), 1, "one slot for {found:?}");
    assert!(found.len() >= 8, "{found:?}");
}

/// CRC16-CCITT (XMODEM), Redis Cluster's key hash.
fn crc16(bytes: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in bytes {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leases_follow_the_redis_server_clock() {
    let Some(url) = redis_url() else { return };
    let prefix = unique_prefix("clock");
    let outbox = RedisOutbox::connect(&url, &prefix).await.unwrap();
    let n = notification("clock");
    assert!(outbox.enqueue(&n, ago(0)).await.unwrap());
    let client = redis::Client::open(url.as_str()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let (secs, micros): (i64, i64) = redis::cmd("TIME").query_async(&mut conn).await.unwrap();
    let server_now = secs * 1000 + micros / 1000;
    let claims = outbox
        .claim("w1", 1, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(claims.len(), 1);
    let deadline: f64 = redis::cmd("ZSCORE")
        .arg(key(&prefix, "leases"))
        .arg(n.id.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    let offset = deadline as i64 - server_now;
    assert!(
        (60_000..62_000).contains(&offset),
        "deadline = server time + lease: {offset}"
    );
    outbox
        .renew(&claims[0], Duration::from_secs(600))
        .await
        .unwrap();
    let renewed: f64 = redis::cmd("ZSCORE")
        .arg(key(&prefix, "leases"))
        .arg(n.id.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(renewed as i64 - server_now >= 600_000, "renewed: {renewed}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn huge_limits_are_accepted() {
    let Some(url) = redis_url() else { return };
    let outbox = RedisOutbox::connect(&url, &unique_prefix("limits"))
        .await
        .unwrap();
    let n = notification("limits");
    assert!(outbox.enqueue(&n, ago(0)).await.unwrap());
    assert_eq!(outbox.pending(usize::MAX).await.unwrap().len(), 1);
    assert!(outbox.dead(usize::MAX).await.unwrap().is_empty());
    assert_eq!(outbox.unpark(None, usize::MAX).await.unwrap(), 0);
    let claims = outbox.claim("w1", usize::MAX, Duration::MAX).await.unwrap();
    assert_eq!(claims.len(), 1);
    outbox.renew(&claims[0], Duration::MAX).await.unwrap();
    outbox.ack(&claims[0]).await.unwrap();
}
