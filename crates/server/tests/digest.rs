//! Notifications people keep switched on: coalescing, mute, quiet hours, the
//! recipient's language and own routes. mesh-server in-process with its default
//! `coalesce_window` (5 s), real WebSocket clients, the fake Gotify on loopback.

mod common;

use std::time::Duration;

use common::*;
use mesh_notify_testkit::gotify::{FakeGotify, Mode, ReceivedMessage};
use serde_json::{json, Value};

struct Scene {
    gotify: FakeGotify,
    server: mesh_server::ServerHandle,
    api: Api,
    bob: User,
    room: i64,
    _dir: tempfile::TempDir,
}

/// Alice and Bob in "Test Gotify"; Alice connected and in the room, Bob away.
async fn scene() -> (Scene, Ws) {
    scene_with("").await
}

async fn scene_with(extra: &str) -> (Scene, Ws) {
    let gotify = FakeGotify::start(&[(APP_TOKEN, 1)]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), extra)).await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;
    let bob = api.register_and_login("bob", "Bob").await;
    let room = api.create_room(&alice, "Test Gotify").await;
    api.invite(&alice, room, &bob).await;
    let mut ws = Ws::connect(&server, &alice.token).await;
    assert_eq!(ws.join(room).await["type"], "ack");
    (
        Scene {
            gotify,
            server,
            api,
            bob,
            room,
            _dir: dir,
        },
        ws,
    )
}

impl Scene {
    async fn put_prefs(&self, user: &User, prefs: Value) -> (u16, Value) {
        self.api.put_preferences(user, prefs).await
    }

    fn chats(&self) -> Vec<ReceivedMessage> {
        self.gotify
            .messages()
            .into_iter()
            .filter(|m| m.title.starts_with("💬"))
            .collect()
    }

    fn calls(&self) -> Vec<ReceivedMessage> {
        self.gotify
            .messages()
            .into_iter()
            .filter(|m| m.title.starts_with("📞"))
            .collect()
    }

    async fn metrics(&self) -> String {
        let admin = self.server.admin_addr().expect("admin listener");
        reqwest::get(format!("http://{admin}/metrics"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }
}

/// The value of a counter line of the Prometheus text, 0 when absent.
fn counter(metrics: &str, series: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(series).map(str::trim))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// How many messages a chat push stands for: `💬 N nouveaux messages …` or 1.
fn count_of(m: &ReceivedMessage) -> usize {
    m.title
        .strip_prefix("💬 ")
        .and_then(|rest| rest.split_once(" nouveaux messages"))
        .and_then(|(n, _)| n.parse().ok())
        .unwrap_or(1)
}

async fn call_bob(alice: &mut Ws, s: &Scene) -> Value {
    alice
        .send(json!({"type": "rtc.offer", "room_id": s.room, "to": "bob", "sdp": "v=0 offer"}))
        .await;
    alice
        .wait_for("offer ack", |v| {
            v["type"] == "ack" && v["for"] == "rtc.offer"
        })
        .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_messages_in_three_seconds_make_two_pushes_and_a_call_rings_at_once() {
    let (s, mut alice) = scene().await;
    for i in 1..=10 {
        assert_eq!(
            alice.say(s.room, &format!("message {i}")).await["type"],
            "ack"
        );
        if i == 1 {
            // The first message is never delayed.
            eventually("the first push", || s.chats().len() == 1).await;
        }
        if i == 5 {
            // A call in the middle rings at once, while the messages are held.
            let ack = call_bob(&mut alice, &s).await;
            assert_eq!(ack["notified"], true, "{ack}");
            eventually("the call push", || s.calls().len() == 1).await;
            assert_eq!(s.chats().len(), 1, "the held messages are still held");
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    eventually("pushes standing for all 10 messages", || {
        s.chats().iter().map(count_of).sum::<usize>() == 10
    })
    .await;
    outbox_drained(&s.server).await;
    let chats = s.chats();
    assert_eq!(
        chats.len(),
        2,
        "{:?}",
        chats.iter().map(|m| &m.title).collect::<Vec<_>>()
    );
    assert_eq!(chats[0].title, "💬 Alice dans Test Gotify");
    assert_eq!(chats[0].message, "message 1");
    assert_eq!(
        chats[1].title,
        "💬 9 nouveaux messages de Alice dans Test Gotify"
    );
    assert_eq!(
        chats[1].message, "message 10",
        "the summary shows the latest message"
    );
    assert_eq!(
        chats[1].extras["client::notification"]["click"]["url"],
        json!(format!("mesh://room/{}", s.room))
    );
    let all = s.gotify.messages();
    let call_at = all.iter().position(|m| m.title.starts_with("📞")).unwrap();
    let summary_at = all
        .iter()
        .position(|m| m.title.contains("9 nouveaux"))
        .unwrap();
    assert!(
        call_at < summary_at,
        "the call was not held behind the summary"
    );
    // The recorder is shared by the tests of this process: at least ours.
    assert!(
        counter(
            &s.metrics().await,
            "mesh_server_pushes_coalesced_total{kind=\"chat\"}"
        ) >= 8
    );
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_while_the_push_is_still_waiting_merge_into_it() {
    // Gotify is down: the room's push waits in the outbox, and every further
    // message replaces it with a summary instead of queuing another one.
    // The breaker opens at the first failure, so the push is parked (waiting,
    // not in a worker's hands) until Gotify answers again.
    let (s, mut alice) = scene_with(
        "[breaker]\nfailure_threshold = 1\nprobe_interval = \"2s\"\nprobe_max_interval = \"2s\"\n",
    )
    .await;
    s.gotify.set_mode(Mode::Status {
        status: 503,
        retry_after: None,
    });
    assert_eq!(alice.say(s.room, "m1").await["type"], "ack");
    eventually_async("the push parked", || async {
        outbox_stats(&s.server).await.parked == 1
    })
    .await;
    for i in 2..=4 {
        assert_eq!(alice.say(s.room, &format!("m{i}")).await["type"], "ack");
    }
    let stats = outbox_stats(&s.server).await;
    assert_eq!(stats.pending, 1, "one waiting push for the room: {stats:?}");
    s.gotify.set_mode(Mode::Normal);
    eventually("the merged push", || s.chats().len() == 1).await;
    outbox_drained(&s.server).await;
    let chats = s.chats();
    assert_eq!(chats.len(), 1);
    assert_eq!(
        chats[0].title,
        "💬 4 nouveaux messages de Alice dans Test Gotify"
    );
    assert_eq!(chats[0].message, "m4");
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_muted_room_gets_no_push_until_unmuted() {
    let (s, mut alice) = scene().await;
    let room_key = s.room.to_string();
    let (status, body) = s
        .put_prefs(&s.bob, json!({"muted_rooms": {room_key.clone(): null}}))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["muted_rooms"][&room_key], Value::Null);
    assert_eq!(body["language"], "fr", "the server's language by default");
    let (status, got) = s
        .api
        .call("GET", "/api/me/preferences", Some(&s.bob.token), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(got, body);

    for i in 0..3 {
        assert_eq!(alice.say(s.room, &format!("muet {i}")).await["type"], "ack");
    }
    let ack = call_bob(&mut alice, &s).await;
    assert_eq!(ack["notified"], false, "{ack}");
    assert_eq!(ack["suppressed"], "muted");
    outbox_drained(&s.server).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.gotify.messages().is_empty(), "{:?}", s.gotify.messages());
    // Muted, not cut off: the messages are in the history.
    assert_eq!(s.api.history(&s.bob, s.room).await.len(), 3);

    // Muted until a time already past: pushes again.
    let (status, body) = s
        .put_prefs(
            &s.bob,
            json!({"muted_rooms": {room_key: "2020-01-01T00:00:00Z"}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(alice.say(s.room, "de retour").await["type"], "ack");
    eventually("a push after unmuting", || s.chats().len() == 1).await;
    assert_eq!(s.chats()[0].message, "de retour");
    let metrics = s.metrics().await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mesh_server_pushes_suppressed_total")
                && l.contains("reason=\"muted\"")),
        "{metrics}"
    );
    s.server.shutdown().await.unwrap();
}

/// Quiet hours from the current minute to the next one (UTC), so they end within
/// a minute; waits first if fewer than 15 s of the minute are left.
async fn quiet_hours_now() -> (String, String) {
    loop {
        let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
        if now.second() < 45 {
            let start = now.time();
            let end = start
                .checked_add(jiff::SignedDuration::from_mins(1))
                .unwrap();
            return (
                format!("{:02}:{:02}", start.hour(), start.minute()),
                format!("{:02}:{:02}", end.hour(), end.minute()),
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_hold_chat_let_calls_ring_and_end_with_one_summary() {
    let (s, mut alice) = scene().await;
    let (start, end) = quiet_hours_now().await;
    let (status, body) = s
        .put_prefs(
            &s.bob,
            json!({"quiet_hours": {"start": start, "end": end, "timezone": "UTC", "allow_calls": true}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for text in ["un", "deux", "trois"] {
        assert_eq!(alice.say(s.room, text).await["type"], "ack");
    }
    let ack = call_bob(&mut alice, &s).await;
    assert_eq!(
        ack["notified"], true,
        "calls ring during quiet hours: {ack}"
    );
    eventually("the call push", || s.calls().len() == 1).await;
    outbox_drained(&s.server).await;
    assert!(s.chats().is_empty(), "chat is held during quiet hours");

    // When the window ends: one summary for the room.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    while s.chats().is_empty() {
        assert!(
            std::time::Instant::now() < deadline,
            "no summary after quiet hours"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    outbox_drained(&s.server).await;
    let chats = s.chats();
    assert_eq!(chats.len(), 1);
    assert_eq!(
        chats[0].title,
        "💬 3 nouveaux messages de Alice dans Test Gotify"
    );
    assert_eq!(chats[0].message, "trois");
    assert!(
        counter(
            &s.metrics().await,
            "mesh_server_pushes_held_quiet_hours_total{kind=\"chat\"}"
        ) >= 3
    );
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quiet_hours_without_calls_and_switching_them_off_releases_the_summary() {
    let (s, mut alice) = scene().await;
    // A window covering the whole day but one minute, far from now's minute.
    let now = jiff::Timestamp::now().to_zoned(jiff::tz::TimeZone::UTC);
    let end = now
        .time()
        .checked_sub(jiff::SignedDuration::from_mins(2))
        .unwrap();
    let start = now
        .time()
        .checked_sub(jiff::SignedDuration::from_mins(1))
        .unwrap();
    let hm = |t: jiff::civil::Time| format!("{:02}:{:02}", t.hour(), t.minute());
    let quiet =
        json!({"start": hm(start), "end": hm(end), "timezone": "UTC", "allow_calls": false});
    let (status, body) = s.put_prefs(&s.bob, json!({"quiet_hours": quiet})).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(alice.say(s.room, "chut").await["type"], "ack");
    assert_eq!(alice.say(s.room, "chut encore").await["type"], "ack");
    let ack = call_bob(&mut alice, &s).await;
    assert_eq!(ack["notified"], false, "{ack}");
    assert_eq!(ack["suppressed"], "quiet_hours");
    outbox_drained(&s.server).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(s.gotify.messages().is_empty());

    // Quiet hours switched off: the held summary goes out now.
    let (status, body) = s.put_prefs(&s.bob, json!({})).await;
    assert_eq!(status, 200, "{body}");
    eventually("the released summary", || s.chats().len() == 1).await;
    assert_eq!(
        s.chats()[0].title,
        "💬 2 nouveaux messages de Alice dans Test Gotify"
    );
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn language_and_own_routes_per_recipient() {
    let (s, mut alice) = scene().await;
    let (status, body) = s
        .put_prefs(
            &s.bob,
            json!({"language": "en", "routes": {"file": ["log"]}}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(alice.say(s.room, "hello").await["type"], "ack");
    eventually("an English push", || s.chats().len() == 1).await;
    assert_eq!(s.chats()[0].title, "💬 Alice in Test Gotify");
    // Files go only where Bob asked (the log here): nothing reaches Gotify.
    alice
        .send(json!({"type": "file.share", "room_id": s.room, "name": "a.pdf", "size": 10, "mime": "application/pdf"}))
        .await;
    alice.wait_type("file.shared").await;
    outbox_drained(&s.server).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(s.gotify.messages().len(), 1, "{:?}", s.gotify.messages());
    s.server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_preferences_are_refused_naming_the_field_and_change_nothing() {
    let (s, _alice) = scene().await;
    let cases = [
        (json!({"routes": {"file": ["smtp"]}}), "routes.file[0]"),
        (
            json!({"quiet_hours": {"start": "7h", "end": "08:00", "timezone": "UTC"}}),
            "quiet_hours.start",
        ),
        (
            json!({"quiet_hours": {"start": "22:00", "end": "08:00", "timezone": "Paris"}}),
            "quiet_hours.timezone",
        ),
        (json!({"muted_rooms": {"x": null}}), "muted_rooms.x"),
        (json!({"language": "de"}), "body"),
        (json!({"colour": "blue"}), "body"),
    ];
    for (prefs, field) in cases {
        let (status, body) = s.put_prefs(&s.bob, prefs.clone()).await;
        assert_eq!(status, 400, "{prefs} → {body}");
        assert_eq!(body["field"], field, "{prefs} → {body}");
    }
    let (status, got) = s
        .api
        .call("GET", "/api/me/preferences", Some(&s.bob.token), None)
        .await;
    assert_eq!(status, 200);
    assert_eq!(got["muted_rooms"], json!({}));
    assert_eq!(got["quiet_hours"], Value::Null);
    let (status, _) = s.api.call("GET", "/api/me/preferences", None, None).await;
    assert_eq!(status, 401);
    s.server.shutdown().await.unwrap();
}
