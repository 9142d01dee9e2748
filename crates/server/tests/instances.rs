//! Two `mesh-server` binaries on one PostgreSQL database and one Redis (issue 18),
//! run as a user runs them: environment variables only, real HTTP and WebSocket
//! clients, a fake Gotify on loopback. Alice talks through instance A, Bob through
//! instance B:
//!
//! - live chat reaches the other instance both ways, and Bob, present on B, gets
//!   no push for what Alice sends on A;
//! - once Bob leaves the room, one message is exactly one push;
//! - a call offer sent on A reaches Bob's socket on B;
//! - logging a session out on A closes its socket on B;
//! - after B is killed with SIGKILL, Bob counts as absent once the presence TTL
//!   has run out, and Alice's next message is one push.
//!
//! Needs `MESH_TEST_POSTGRES_URL` and `REDIS_URL` (scripts/test starts both).

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::*;
use mesh_notify_testkit::gotify::FakeGotify;

const TOKEN: &str = "AinstancesTok";

/// A `mesh-server` binary on the shared database.
struct Instance {
    child: Child,
    api: Api,
}

impl Instance {
    fn start(
        dir: &std::path::Path,
        gotify: &str,
        database: &str,
        redis: &str,
        prefix: &str,
    ) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-server"))
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("GOTIFY_URL", gotify)
            .env("GOTIFY_TOKEN", TOKEN)
            .env("MESH_NOTIFY_SERVER__BIND", "127.0.0.1:0")
            .env("MESH_NOTIFY_SERVER__ADMIN_BIND", "127.0.0.1:0")
            .env("MESH_NOTIFY_SERVER__DATABASE", "postgres")
            .env("MESH_NOTIFY_SERVER__DATABASE_URL", database)
            .env("MESH_NOTIFY_SERVER__PRESENCE_TTL", "1s")
            .env("MESH_NOTIFY_SERVER__COALESCE_WINDOW", "0s")
            .env("MESH_NOTIFY_OUTBOX__BACKEND", "redis")
            .env("MESH_NOTIFY_OUTBOX__REDIS_URL", redis)
            .env("MESH_NOTIFY_OUTBOX__REDIS_PREFIX", prefix)
            .env("RUST_LOG", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mesh-server starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = tx.send(addr);
                }
                if line.contains("ERROR") {
                    eprintln!("[mesh-server] {line}");
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("mesh-server says where it listens");
        Self {
            child,
            api: Api {
                base: format!("http://{addr}"),
                http: reqwest::Client::new(),
            },
        }
    }

    fn ws_url(&self) -> String {
        format!("{}/ws", self.api.base.replacen("http://", "ws://", 1))
    }

    async fn connect(&self, user: &User) -> Ws {
        Ws::connect_url(&self.ws_url(), &user.token).await
    }

    fn kill9(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Nothing more reaches the fake for a while.
async fn no_more_pushes(gotify: &FakeGotify, expected: usize) {
    tokio::time::sleep(Duration::from_millis(800)).await;
    assert_eq!(
        gotify.messages().len(),
        expected,
        "pushes: {:?}",
        gotify.messages()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_one_room_presence_and_a_crash() {
    let (Some(admin), Some(redis)) = (needed("MESH_TEST_POSTGRES_URL"), needed("REDIS_URL")) else {
        return;
    };
    let database = create_database(&admin).await;
    let gotify = FakeGotify::start(&[(TOKEN, 1)]).await.expect("fake gotify");
    let prefix = format!("inst-{}", mesh_notify::core::NotificationId::new());
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = Instance::start(dir_a.path(), &gotify.url(), &database, &redis, &prefix);
    let b = Instance::start(dir_b.path(), &gotify.url(), &database, &redis, &prefix);

    let alice = a.api.register_and_login("alice", "Alice").await;
    let bob = b.api.register_and_login("bob", "Bob").await;
    let room = a.api.create_room(&alice, "Salle").await;
    // The invitation goes through A while Bob listens on B: live there, no push.
    b.api.invite(&alice, room, &bob).await;
    no_more_pushes(&gotify, 0).await;

    let mut wa = a.connect(&alice).await;
    let mut wb = b.connect(&bob).await;
    assert_eq!(wa.join(room).await["type"], "ack");
    let joined = wb.join(room).await;
    assert_eq!(joined["type"], "ack");
    let present = joined["present"].as_array().cloned().unwrap_or_default();
    assert!(
        present.contains(&alice.id.into()),
        "B sees Alice present through A: {joined}"
    );
    presence(&mut wa, room, &bob, "joined").await;

    // Live both ways; Bob is present (on B), so A pushes nothing.
    assert_eq!(wa.say(room, "bonjour depuis A").await["type"], "ack");
    wb.wait_for("Alice's message on B", |v| {
        v["type"] == "chat.message" && v["message"]["text"] == "bonjour depuis A"
    })
    .await;
    assert_eq!(wb.say(room, "salut depuis B").await["type"], "ack");
    wa.wait_for("Bob's message on A", |v| {
        v["type"] == "chat.message" && v["message"]["text"] == "salut depuis B"
    })
    .await;
    no_more_pushes(&gotify, 0).await;

    // A call offer from A reaches Bob's socket on B, relayed, with no push.
    wa.send(serde_json::json!({"type": "rtc.offer", "room_id": room, "to": bob.id, "sdp": "v=0 across"}))
        .await;
    let ack = wa
        .wait_for("offer ack", |v| {
            v["type"] == "ack" && v["for"] == "rtc.offer"
        })
        .await;
    assert_eq!(ack["relayed"], true, "{ack}");
    let offer = wb.wait_type("rtc.offer").await;
    assert_eq!(offer["sdp"], "v=0 across");
    assert_eq!(offer["from"]["id"], alice.id);
    no_more_pushes(&gotify, 0).await;

    // Bob leaves the room (still connected to B): one message, one push.
    wb.send(serde_json::json!({"type": "room.leave", "room_id": room}))
        .await;
    wb.wait_for("leave ack", |v| {
        v["type"] == "ack" && v["for"] == "room.leave"
    })
    .await;
    presence(&mut wa, room, &bob, "left").await;
    assert_eq!(wa.say(room, "tu es parti ?").await["type"], "ack");
    eventually("one push for Bob", || gotify.messages().len() == 1).await;
    no_more_pushes(&gotify, 1).await;
    assert_eq!(gotify.messages()[0].title, "💬 Alice dans Salle");
    assert_eq!(gotify.messages()[0].message, "tu es parti ?");

    // Logging out through A closes that session's socket on B.
    let (status, body) = a
        .api
        .call(
            "POST",
            "/api/login",
            None,
            Some(serde_json::json!({"username": "bob", "password": "pw-bob-secret"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let second = body["token"].as_str().unwrap().to_string();
    let mut phone = Ws::connect_url(&b.ws_url(), &second).await;
    phone.sync().await;
    let (status, _) = a.api.call("POST", "/api/logout", Some(&second), None).await;
    assert_eq!(status, 204);
    phone.expect_closed_within(Duration::from_secs(5)).await;

    // Back in the room on B, then B dies without a word: once the presence TTL
    // (1 s) has run out, Bob is absent and gets Alice's next message as a push.
    assert_eq!(wb.join(room).await["type"], "ack");
    b.kill9();
    drop(wb);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(wa.say(room, "tu es là ?").await["type"], "ack");
    eventually("the push after the crash", || gotify.messages().len() == 2).await;
    no_more_pushes(&gotify, 2).await;
    assert_eq!(gotify.messages()[1].message, "tu es là ?");
    wa.close().await;
}
