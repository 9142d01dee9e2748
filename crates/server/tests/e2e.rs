//! End to end: mesh-server in-process, real WebSocket clients, the fake Gotify on
//! loopback as the provider. Seed Tests 2 and 3, files, cancellation, fallback,
//! recovery and restart.

mod common;

use common::*;
use mesh_notify_testkit::gotify::{FakeGotify, Mode};
use serde_json::{json, Value};
use std::time::Duration;

async fn fake() -> FakeGotify {
    FakeGotify::start(&[(APP_TOKEN, 1), ("bob-own-token", 2)])
        .await
        .expect("fake gotify")
}

struct Scene {
    api: Api,
    alice: User,
    bob: User,
    room: i64,
}

/// Alice and Bob register, Alice creates "Test Gotify" and invites Bob.
async fn scene(server: &mesh_server::ServerHandle) -> Scene {
    let api = Api::new(server);
    let alice = api.register_and_login("alice", "Alice").await;
    let bob = api.register_and_login("bob", "Bob").await;
    let room = api.create_room(&alice, "Test Gotify").await;
    api.invite(&alice, room, &bob).await;
    Scene {
        api,
        alice,
        bob,
        room,
    }
}

fn click(m: &mesh_notify_testkit::gotify::ReceivedMessage) -> Value {
    m.extras["client::notification"]["click"]["url"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_test_2_absent_member_gets_exactly_one_chat_notification() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    let s = scene(&server).await;

    let mut alice = Ws::connect(&server, &s.alice.token).await;
    assert_eq!(alice.join(s.room).await["type"], "ack");
    let mut bob = Ws::connect(&server, &s.bob.token).await;
    assert_eq!(bob.join(s.room).await["type"], "ack");
    presence(&mut alice, s.room, &s.bob, "joined").await;

    // While Bob is in the room: the message arrives live and nothing is pushed.
    let ack = alice.say(s.room, "Tu es là ?").await;
    assert_eq!(ack["type"], "ack", "{ack}");
    let live = bob.wait_type("chat.message").await;
    assert_eq!(live["message"]["text"], "Tu es là ?");
    assert_eq!(live["message"]["display_name"], "Alice");

    // Bob disconnects; Alice sees him leave, then writes a long message.
    bob.close().await;
    presence(&mut alice, s.room, &s.bob, "left").await;
    let long = format!("Salut Bob ! {}", "x".repeat(150));
    assert_eq!(alice.say(s.room, &long).await["type"], "ack");

    eventually("one notification at the fake", || {
        gotify.messages().len() == 1
    })
    .await;
    outbox_drained(&server).await;
    let msgs = gotify.messages();
    assert_eq!(
        msgs.len(),
        1,
        "exactly one notification (none for the message Bob saw live, none for Alice)"
    );
    let m = &msgs[0];
    assert_eq!(m.title, "💬 Alice dans Test Gotify");
    assert_eq!(
        m.message.chars().count(),
        100,
        "body cut to 100 chars: {}",
        m.message
    );
    assert!(m.message.starts_with("Salut Bob !"));
    assert_eq!(m.priority, Some(6));
    assert_eq!(click(m), json!(format!("mesh://room/{}", s.room)));
    assert_eq!(
        m.token, APP_TOKEN,
        "Bob has no address: the global Gotify app token is used"
    );

    // The history has both messages, newest first.
    let history = s.api.history(&s.alice, s.room).await;
    assert_eq!(history.len(), 2);
    assert_eq!(history[1]["text"], "Tu es là ?");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_own_gotify_token_is_used_and_sender_is_never_notified() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    let s = scene(&server).await;
    let (status, body) = s
        .api
        .call(
            "POST",
            "/api/me/addresses",
            Some(&s.bob.token),
            Some(json!({"kind": "gotify", "value": "bob-own-token"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    // A second tab of Bob's that is NOT in the room does not make him present.
    let _bob_elsewhere = Ws::connect(&server, &s.bob.token).await;
    let mut alice = Ws::connect(&server, &s.alice.token).await;
    alice.join(s.room).await;
    assert_eq!(alice.say(s.room, "pour Bob").await["type"], "ack");
    eventually("Bob's notification", || gotify.messages().len() == 1).await;
    outbox_drained(&server).await;
    let msgs = gotify.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].token, "bob-own-token");
    assert_eq!(msgs[0].appid, 2);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_test_3_call_notification_when_offline_relay_when_connected() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    let s = scene(&server).await;
    let mut alice = Ws::connect(&server, &s.alice.token).await;
    alice.join(s.room).await;

    // Bob is not connected: the offer becomes a call notification.
    alice
        .send(json!({"type": "rtc.offer", "room_id": s.room, "to": "bob", "sdp": "v=0 offer"}))
        .await;
    let ack = alice
        .wait_for("offer ack", |v| {
            v["type"] == "ack" && v["for"] == "rtc.offer"
        })
        .await;
    assert_eq!(ack["relayed"], false);
    assert_eq!(ack["notified"], true);
    eventually("call notification", || gotify.messages().len() == 1).await;
    let m = &gotify.messages()[0];
    assert_eq!(m.title, "📞 Appel audio/vidéo de Alice");
    assert_eq!(m.message, "Appel entrant dans Test Gotify");
    assert_eq!(m.priority, Some(8));
    assert_eq!(click(m), json!(format!("mesh://room/{}", s.room)));

    // Bob connected (not even in the room): the offer is relayed, nothing pushed.
    let mut bob = Ws::connect(&server, &s.bob.token).await;
    alice
        .send(json!({"type": "rtc.offer", "room_id": s.room, "to": s.bob.id, "sdp": "v=0 second"}))
        .await;
    let offer = bob.wait_type("rtc.offer").await;
    assert_eq!(offer["sdp"], "v=0 second");
    assert_eq!(offer["from"]["id"], s.alice.id);
    assert_eq!(offer["room_id"], s.room);
    let ack = alice
        .wait_for("offer ack", |v| {
            v["type"] == "ack" && v["for"] == "rtc.offer"
        })
        .await;
    assert_eq!(ack["relayed"], true);
    // Answer and ICE go back the other way.
    bob.send(json!({"type": "rtc.answer", "room_id": s.room, "to": "alice", "sdp": "v=0 answer"}))
        .await;
    assert_eq!(alice.wait_type("rtc.answer").await["sdp"], "v=0 answer");
    bob.send(json!({"type": "rtc.ice", "room_id": s.room, "to": s.alice.id, "candidate": {"candidate": "c1", "sdpMid": "0"}}))
        .await;
    assert_eq!(
        alice.wait_type("rtc.ice").await["candidate"]["candidate"],
        "c1"
    );
    outbox_drained(&server).await;
    assert_eq!(gotify.messages().len(), 1, "no push while Bob is connected");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_share_notifies_absent_member_and_is_broadcast() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    let s = scene(&server).await;
    let mut alice = Ws::connect(&server, &s.alice.token).await;
    alice.join(s.room).await;
    alice
        .send(json!({"type": "file.share", "room_id": s.room, "name": "photo.jpg", "size": 123456, "mime": "image/jpeg"}))
        .await;
    let shared = alice.wait_type("file.shared").await;
    assert_eq!(
        shared["message"]["file"],
        json!({"name": "photo.jpg", "size": 123456, "mime": "image/jpeg"})
    );
    eventually("file notification", || gotify.messages().len() == 1).await;
    let m = &gotify.messages()[0];
    assert_eq!(m.title, "📁 Alice a partagé un fichier");
    assert_eq!(m.message, "Fichier: photo.jpg\nDans: Test Gotify");
    assert_eq!(m.priority, Some(5));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejoining_the_room_cancels_the_queued_chat_notification() {
    let gotify = fake().await;
    // Gotify refuses with Retry-After: the notification waits in the outbox (and
    // Gotify is paused for those 5 s: nothing is sent to it meanwhile).
    gotify.set_mode(Mode::Status {
        status: 503,
        retry_after: Some("5".into()),
    });
    let dir = tempfile::tempdir().unwrap();
    let extra = "[routes]\nchat = [\"gotify\"]\n[queue]\nmax_backoff = \"60s\"";
    let server = start(&figment(&gotify.url(), dir.path(), extra)).await;
    let s = scene(&server).await;
    let mut alice = Ws::connect(&server, &s.alice.token).await;
    alice.join(s.room).await;
    assert_eq!(alice.say(s.room, "premier").await["type"], "ack");
    eventually("first attempt refused", || gotify.requests() >= 1).await;
    // Wait until the refused attempt is settled (due again in 5 s, not leased).
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let st = outbox_stats(&server).await;
        if st.pending == 1 && st.in_flight == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{st:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }

    // Bob comes back into the room: he sees the message, the push is dropped.
    let mut bob = Ws::connect(&server, &s.bob.token).await;
    assert_eq!(bob.join(s.room).await["type"], "ack");
    assert_eq!(
        outbox_stats(&server).await.pending,
        0,
        "queued chat notification cancelled"
    );

    // Gotify recovers; Bob leaves; a new message is pushed, the old one never is.
    gotify.set_mode(Mode::Normal);
    bob.close().await;
    presence(&mut alice, s.room, &s.bob, "left").await;
    assert_eq!(alice.say(s.room, "second").await["type"], "ack");
    eventually("second notification", || !gotify.messages().is_empty()).await;
    outbox_drained(&server).await;
    let msgs = gotify.messages();
    assert_eq!(
        msgs.len(),
        1,
        "{:?}",
        msgs.iter().map(|m| &m.message).collect::<Vec<_>>()
    );
    assert_eq!(msgs[0].message, "second");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gotify_down_the_log_does_not_swallow_it_the_message_waits_for_gotify() {
    // The route is [gotify, log]: the log must not count as delivery while Gotify
    // (configured, and able to reach Bob) is down.
    let mut gotify = fake().await;
    gotify.stop(); // connection refused
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    let s = scene(&server).await;
    let mut alice = Ws::connect(&server, &s.alice.token).await;
    alice.join(s.room).await;
    assert_eq!(
        alice.say(s.room, "pas dans le journal").await["type"],
        "ack"
    );
    let outbox = server.dispatcher().outbox().unwrap().clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let pending = outbox.pending(10).await.unwrap();
        if pending
            .first()
            // Settled: the failed attempt is recorded (a claimed entry already
            // counts the attempt but has no error yet).
            .is_some_and(|e| e.last_error.is_some())
        {
            assert!(
                pending[0]
                    .last_error
                    .as_deref()
                    .unwrap_or("")
                    .contains("gotify"),
                "{pending:?}"
            );
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never tried: {pending:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(
        outbox_stats(&server).await.pending,
        1,
        "still queued for Gotify"
    );
    assert!(outbox.dead(10).await.unwrap().is_empty());
    gotify.restart().await.unwrap();
    eventually("delivered to Gotify once it is back", || {
        gotify.messages().len() == 1
    })
    .await;
    outbox_drained(&server).await;
    assert_eq!(gotify.messages()[0].message, "pas dans le journal");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_real_provider_the_log_delivers() {
    let dir = tempfile::tempdir().unwrap();
    let fig = figment("", dir.path(), "");
    let server = start(&fig).await;
    let s = scene(&server).await;
    let mut alice = Ws::connect(&server, &s.alice.token).await;
    alice.join(s.room).await;
    assert_eq!(alice.say(s.room, "dans le journal").await["type"], "ack");
    outbox_drained(&server).await;
    let outbox = server.dispatcher().outbox().unwrap();
    assert!(outbox.dead(10).await.unwrap().is_empty());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn all_providers_down_delivered_once_after_recovery_across_a_restart() {
    let gotify = fake().await;
    gotify.set_mode(Mode::Status {
        status: 503,
        retry_after: None,
    });
    let dir = tempfile::tempdir().unwrap();
    let fig = figment(&gotify.url(), dir.path(), "[routes]\nchat = [\"gotify\"]");
    let server = start(&fig).await;
    let s = scene(&server).await;
    let mut alice = Ws::connect(&server, &s.alice.token).await;
    alice.join(s.room).await;
    assert_eq!(alice.say(s.room, "tiens bon").await["type"], "ack");
    eventually("retried while Gotify is down", || gotify.requests() >= 2).await;
    assert!(gotify.messages().is_empty());
    drop(alice);
    server.shutdown().await.unwrap();

    // A new server on the same data directory; Gotify recovers.
    let server = start(&fig).await;
    let before = gotify.requests();
    gotify.set_mode(Mode::Normal);
    eventually("delivered after recovery", || gotify.messages().len() == 1).await;
    outbox_drained(&server).await;
    let msgs = gotify.messages();
    assert_eq!(msgs.len(), 1, "delivered exactly once");
    assert_eq!(msgs[0].message, "tiens bon");
    assert!(gotify.requests() > before);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_gotify_token_is_deleted_from_the_users_addresses() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    let s = scene(&server).await;
    // A token the fake does not know: Gotify answers 401 → recipient gone.
    let (status, _) = s
        .api
        .call(
            "POST",
            "/api/me/addresses",
            Some(&s.bob.token),
            Some(json!({"kind": "gotify", "value": "deleted-app-token"})),
        )
        .await;
    assert_eq!(status, 201);
    let mut alice = Ws::connect(&server, &s.alice.token).await;
    alice.join(s.room).await;
    assert_eq!(alice.say(s.room, "allo").await["type"], "ack");
    let api = s.api.clone();
    let token = s.bob.token.clone();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (_, body) = api
            .call("GET", "/api/me/addresses", Some(&token), None)
            .await;
        if body["addresses"].as_array().is_some_and(Vec::is_empty) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "dead address still listed: {body}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_gotify_does_not_slow_chat() {
    let gotify = fake().await;
    gotify.set_mode(Mode::Hang);
    let dir = tempfile::tempdir().unwrap();
    // Provider timeout 2 s: a handler that waited on Gotify would take >= 2 s per message.
    let server = start(&figment(
        &gotify.url(),
        dir.path(),
        "[routes]\nchat = [\"gotify\"]",
    ))
    .await;
    let s = scene(&server).await;
    let mut alice = Ws::connect(&server, &s.alice.token).await;
    alice.join(s.room).await;
    let started = std::time::Instant::now();
    for i in 0..10 {
        let ack = alice.say(s.room, &format!("m{i}")).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    let elapsed = started.elapsed();
    eventually("workers are stuck on the hung Gotify", || {
        gotify.requests() >= 1
    })
    .await;
    assert!(
        elapsed < std::time::Duration::from_millis(1500),
        "10 messages took {elapsed:?}"
    );
    assert_eq!(s.api.history(&s.alice, s.room).await.len(), 10);
    drop(alice);
    server.shutdown().await.unwrap();
}

/// With the Redis outbox (several instances share it), Seed Test 2 still gives Bob
/// exactly one notification. Needs REDIS_URL (scripts/test starts redis-server).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_test_2_with_the_redis_outbox() {
    let url = match std::env::var("REDIS_URL") {
        Ok(u) if !u.is_empty() => u,
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("REDIS_URL is not set: under CI the Redis tests must run")
        }
        _ => {
            eprintln!("SKIPPED: REDIS_URL not set (run scripts/test)");
            return;
        }
    };
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let prefix = format!("e2e-{}", mesh_notify::core::NotificationId::new());
    let extra = format!(
        "[outbox]\nbackend = \"redis\"\nredis_url = \"{url}\"\nredis_prefix = \"{prefix}\"\n[routes]\nchat = [\"gotify\"]\n"
    );
    let server = start(&figment(&gotify.url(), dir.path(), &extra)).await;
    let s = scene(&server).await;
    let mut alice = Ws::connect(&server, &s.alice.token).await;
    assert_eq!(alice.join(s.room).await["type"], "ack");
    assert_eq!(alice.say(s.room, "Bob, via Redis").await["type"], "ack");
    eventually("one notification at the fake", || {
        gotify.messages().len() == 1
    })
    .await;
    outbox_drained(&server).await;
    let msgs = gotify.messages();
    assert_eq!(msgs.len(), 1);
    assert_eq!(msgs[0].title, "💬 Alice dans Test Gotify");
    assert_eq!(msgs[0].message, "Bob, via Redis");
    assert_eq!(
        server.dispatcher().outbox().map(|o| o.backend()),
        Some("redis")
    );
    server.shutdown().await.unwrap();
}

/// A crash after a message committed but before its pushes were fanned out leaves
/// its `push_fanout` row; the next start expands it, chunk after chunk: the absent
/// member gets the push, exactly once, and listed users who are not members get
/// nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fan_out_left_by_a_crash_is_delivered_at_the_next_start() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let fig = figment(&gotify.url(), dir.path(), "");
    let server = start(&fig).await;
    let s = scene(&server).await;
    let db = server.store().path().to_path_buf();
    server.shutdown().await.unwrap();

    // What the message's transaction commits, as the crash left it.
    {
        let conn = mesh_notify_outbox_sqlite::rusqlite::Connection::open(&db).unwrap();
        let now = 1_800_000_000_000_i64;
        conn.execute(
            "INSERT INTO messages (room_id, user_id, kind, body, created_at) VALUES (?1, ?2, 'chat', 'avant le crash', ?3)",
            mesh_notify_outbox_sqlite::rusqlite::params![s.room, s.alice.id, now],
        )
        .unwrap();
        conn.execute(
            "INSERT INTO push_fanout (room_id, room_name, kind, from_name, body, members, member_count, created_at)
             VALUES (?1, 'Test Gotify', 'chat', 'Alice', 'avant le crash', ?2, 101, ?3)",
            mesh_notify_outbox_sqlite::rusqlite::params![
                s.room,
                // 100 users who are not members first: Bob's push is in a later
                // chunk (at most 64 members each), after the row was cut down.
                format!(
                    "[{}, {}]",
                    (0..100)
                        .map(|i| (900_000 + i).to_string())
                        .collect::<Vec<_>>()
                        .join(", "),
                    s.bob.id
                ),
                now
            ],
        )
        .unwrap();
    }

    let server = start(&fig).await;
    eventually("the push left by the crash", || {
        gotify.messages().len() == 1
    })
    .await;
    outbox_drained(&server).await;
    assert_eq!(server.fanout_backlog().await.unwrap(), 0);
    let msgs = gotify.messages();
    assert_eq!(msgs.len(), 1, "exactly once");
    assert_eq!(msgs[0].title, "💬 Alice dans Test Gotify");
    assert_eq!(msgs[0].message, "avant le crash");
    assert_eq!(click(&msgs[0]), format!("mesh://room/{}", s.room));
    server.shutdown().await.unwrap();
}
