//! One conformance suite for both chat databases (issue 18): the embedded SQLite
//! file and PostgreSQL. Everything goes through the HTTP and WebSocket API, so the
//! same calls exercise users, sessions, WebSocket tickets, rooms, invitations,
//! members, blocks, messages, addresses, preferences and pushes on each backend.
//!
//! PostgreSQL runs as a real server: `scripts/test` starts a private cluster and
//! exports `MESH_TEST_POSTGRES_URL`; each test creates a database of its own. The
//! PostgreSQL instances share the queue through Redis (`REDIS_URL`), as several
//! instances do.

mod common;

use common::*;
use mesh_notify_testkit::gotify::FakeGotify;
use mesh_server::ServerHandle;
use serde_json::json;

async fn fake() -> FakeGotify {
    FakeGotify::start(&[(APP_TOKEN, 1), ("bob-client-token", 2)])
        .await
        .expect("fake gotify")
}

/// A new, empty PostgreSQL database on the test cluster (which needs Redis too):
/// its URL.
async fn fresh_database() -> Option<String> {
    let admin = needed("MESH_TEST_POSTGRES_URL")?;
    needed("REDIS_URL")?;
    Some(create_database(&admin).await)
}

/// The configuration of an instance on `database_url`, sharing Redis under `prefix`.
fn postgres_extra(database_url: &str, prefix: &str) -> String {
    let redis = std::env::var("REDIS_URL").unwrap_or_default();
    format!(
        "[server]\ndatabase = \"postgres\"\ndatabase_url = \"{database_url}\"\n\
         [outbox]\nbackend = \"redis\"\nredis_url = \"{redis}\"\nredis_prefix = \"{prefix}\"\n"
    )
}

fn prefix() -> String {
    format!("pg-{}", mesh_notify::core::NotificationId::new())
}

/// The suite: every table, through the API. Bob is never connected, so each chat
/// message Alice sends in their room is one push for him.
async fn conformance(server: &ServerHandle, gotify: &FakeGotify) {
    let api = Api::new(server);
    let alice = api.register_and_login("alice", "Alice").await;
    let bob = api.register_and_login("bob", "Bob").await;

    // users: names are unique without regard to case; login ignores case too.
    let (status, body) = api
        .call(
            "POST",
            "/api/register",
            None,
            Some(json!({"username": "ALICE", "password": "another-password", "display_name": "A"})),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["code"], "username_taken");
    assert_eq!(body["field"], "username");
    let (status, body) = api
        .call(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": "Alice", "password": "pw-alice-secret"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let second = body["token"].as_str().unwrap().to_string();
    let (status, body) = api
        .call(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": "alice", "password": "wrong"})),
        )
        .await;
    assert_eq!(status, 401, "{body}");

    // sessions: each login is its own session; logout ends only that one.
    let (status, body) = api.call("GET", "/api/me", Some(&second), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["id"], alice.id);
    let (status, _) = api.call("POST", "/api/logout", Some(&second), None).await;
    assert!(status == 200 || status == 204, "logout: {status}");
    let (status, _) = api.call("GET", "/api/me", Some(&second), None).await;
    assert_eq!(status, 401, "the ended session is gone");
    let (status, _) = api.call("GET", "/api/me", Some(&alice.token), None).await;
    assert_eq!(status, 200, "the other session lives on");

    // rooms, invitations, members.
    let room = api.create_room(&alice, "Conformité").await;
    let (status, body) = api.send_invite(&alice, room, "BOB").await;
    assert_eq!(status, 201, "{body}");
    let invites = api.invites(&bob).await;
    assert_eq!(invites.len(), 1, "{invites:?}");
    let (status, again) = api.send_invite(&alice, room, "bob").await;
    assert_eq!(status, 200, "the same invitation again: {again}");
    assert_eq!(again["invite"]["id"], invites[0]["id"]);
    let id = invites[0]["id"].as_i64().unwrap();
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/invites/{id}/accept"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api.call("GET", "/api/rooms", Some(&bob.token), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["rooms"][0]["id"], room, "{body}");
    assert_eq!(body["rooms"][0]["name"], "Conformité");

    // blocks: listed, then lifted.
    let carol = api.register_and_login("carol", "Carol").await;
    let (status, body) = api
        .call(
            "POST",
            "/api/me/blocks",
            Some(&bob.token),
            Some(json!({"username": "carol"})),
        )
        .await;
    assert!(status == 200 || status == 201, "block: {status} {body}");
    let (status, body) = api
        .send_invite(&carol, api.create_room(&carol, "C").await, "bob")
        .await;
    assert!(
        status >= 400 || body["invite"].is_object(),
        "{status} {body}"
    );
    let (_, blocks) = api
        .call("GET", "/api/me/blocks", Some(&bob.token), None)
        .await;
    assert_eq!(
        blocks["blocks"].as_array().map(Vec::len),
        Some(1),
        "{blocks}"
    );
    let (status, _) = api
        .call("DELETE", "/api/me/blocks/carol", Some(&bob.token), None)
        .await;
    assert!(status == 200 || status == 204, "unblock: {status}");

    // addresses: Bob's Gotify token, listed without the secret in full.
    let (status, body) = api
        .call(
            "POST",
            "/api/me/addresses",
            Some(&bob.token),
            Some(json!({"kind": "gotify", "value": "bob-client-token"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (_, list) = api
        .call("GET", "/api/me/addresses", Some(&bob.token), None)
        .await;
    assert_eq!(
        list["addresses"].as_array().map(Vec::len),
        Some(1),
        "{list}"
    );
    assert!(!list.to_string().contains("bob-client-token"), "{list}");

    // preferences: English for Bob, stored and read back.
    let (status, body) = api.put_preferences(&bob, json!({"language": "en"})).await;
    assert_eq!(status, 200, "{body}");
    let (_, prefs) = api
        .call("GET", "/api/me/preferences", Some(&bob.token), None)
        .await;
    assert_eq!(prefs["language"], "en", "{prefs}");

    // WebSocket tickets, messages, history and the push to the absent member.
    let (status, body) = api
        .call("POST", "/api/ws-ticket", Some(&alice.token), None)
        .await;
    assert_eq!(status, 200, "{body}");
    // Bob was invited while away: that was one push already.
    outbox_drained(server).await;
    let before = gotify.messages().len();
    assert!(before >= 1, "the invitation reached Bob");
    let mut ws = Ws::connect(server, &alice.token).await;
    assert_eq!(ws.join(room).await["type"], "ack");
    assert_eq!(ws.say(room, "premier message").await["type"], "ack");
    eventually("Bob's push", || gotify.messages().len() == before + 1).await;
    let msgs = gotify.messages();
    assert_eq!(
        msgs[before].title, "💬 Alice in Conformité",
        "Bob reads English"
    );
    assert_eq!(msgs[before].message, "premier message");
    let history = api.history(&bob, room).await;
    assert_eq!(history.len(), 1, "{history:?}");
    assert_eq!(history[0]["text"], "premier message");
    assert_eq!(history[0]["username"], "alice");
    ws.close().await;

    // leaving: no more member, no more history.
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/rooms/{room}/leave"),
            Some(&bob.token),
            None,
        )
        .await;
    assert!(status == 200 || status == 204, "leave: {status} {body}");
    let (status, _) = api
        .call(
            "GET",
            &format!("/api/rooms/{room}/messages"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(status, 403);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_passes_on_sqlite() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    conformance(&server, &gotify).await;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_suite_passes_on_postgres() {
    let Some(db) = fresh_database().await else {
        return;
    };
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = postgres_extra(&db, &prefix());
    let server = start(&figment(&gotify.url(), dir.path(), &extra)).await;
    conformance(&server, &gotify).await;
    assert!(
        !dir.path().join("mesh.sqlite3").exists(),
        "no SQLite file with PostgreSQL"
    );
    server.shutdown().await.unwrap();
}

/// Two instances on one PostgreSQL database and one Redis: what one writes the
/// other reads (accounts, sessions, rooms, messages), the schema is migrated once,
/// and a message's push is delivered exactly once although both instances expand
/// pending fan-outs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_one_database() {
    let Some(db) = fresh_database().await else {
        return;
    };
    let gotify = fake().await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let extra = postgres_extra(&db, &prefix());
    // Started together: the schema's migration runs once, the other waits.
    let (fig_a, fig_b) = (
        figment(&gotify.url(), dir_a.path(), &extra),
        figment(&gotify.url(), dir_b.path(), &extra),
    );
    let (a, b) = tokio::join!(start(&fig_a), start(&fig_b));
    let (api_a, api_b) = (Api::new(&a), Api::new(&b));
    let alice = api_a.register_and_login("alice", "Alice").await;
    // Registered on A, logs in on B; a session from A is valid on B.
    let (status, body) = api_b
        .call(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": "alice", "password": "pw-alice-secret"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = api_b.call("GET", "/api/me", Some(&alice.token), None).await;
    assert_eq!(status, 200, "{body}");
    let bob = api_b.register_and_login("bob", "Bob").await;
    let room = api_a.create_room(&alice, "Partagée").await;
    api_b.invite(&alice, room, &bob).await;

    // Alice writes through A; B shows the history; Bob (absent) gets each push once.
    let mut ws = Ws::connect(&a, &alice.token).await;
    assert_eq!(ws.join(room).await["type"], "ack");
    for i in 0..5 {
        assert_eq!(ws.say(room, &format!("m{i}")).await["type"], "ack");
    }
    let history = api_b.history(&bob, room).await;
    assert_eq!(history.len(), 5, "{history:?}");
    eventually("Bob's pushes", || !gotify.messages().is_empty()).await;
    outbox_drained(&a).await;
    outbox_drained(&b).await;
    // Coalescing (5 s window) gives 1 push now and the rest as one summary.
    eventually("the summary", || gotify.messages().len() == 2).await;
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    let msgs = gotify.messages();
    assert_eq!(msgs.len(), 2, "{msgs:?}");
    assert_eq!(msgs[0].message, "m0");
    ws.close().await;
    a.shutdown().await.unwrap();
    b.shutdown().await.unwrap();
}

/// A notification whose hand-off row a crash left (committed with its message,
/// never submitted to Redis) is submitted by the next sweep, exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hand_off_left_by_a_crash_is_delivered() {
    let Some(db) = fresh_database().await else {
        return;
    };
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = postgres_extra(&db, &prefix());
    let fig = figment(&gotify.url(), dir.path(), &extra);
    let server = start(&fig).await;
    let api = Api::new(&server);
    let bob = api.register_and_login("bob", "Bob").await;
    server.shutdown().await.unwrap();

    // What a message's transaction committed before the crash.
    let n = mesh_notify::core::Notification::new(
        mesh_notify::core::Kind::Chat,
        mesh_notify::core::Recipient::new(bob.id.to_string(), "Bob"),
        "💬 Alice dans Crash",
        "avant le crash",
    );
    let (client, conn) = tokio_postgres::connect(&db, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    client
        .execute(
            "INSERT INTO push_handoff (id, body, created_at) VALUES ($1, $2, 0)",
            &[&n.id.to_string(), &serde_json::to_string(&n).unwrap()],
        )
        .await
        .unwrap();

    let server = start(&fig).await;
    eventually("the push left by the crash", || {
        gotify.messages().len() == 1
    })
    .await;
    eventually_async("the hand-off row deleted", || async {
        client
            .query_one("SELECT COUNT(*) FROM push_handoff", &[])
            .await
            .unwrap()
            .get::<_, i64>(0)
            == 0
    })
    .await;
    outbox_drained(&server).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert_eq!(gotify.messages().len(), 1, "exactly once");
    assert_eq!(gotify.messages()[0].message, "avant le crash");
    server.shutdown().await.unwrap();
}

/// Bad PostgreSQL settings are refused at start, naming the key.
#[tokio::test]
async fn bad_postgres_settings_name_the_key() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    for (extra, key) in [
        ("[server]\ndatabase = \"postgres\"\n", "server.database_url"),
        (
            "[server]\ndatabase = \"postgres\"\ndatabase_url = \"postgres://mesh:hunter2@127.0.0.1/mesh\"\n",
            "server.database_url",
        ),
        (
            "[server]\ndatabase = \"postgres\"\ndatabase_url = \"postgres://mesh@127.0.0.1/mesh\"\n",
            "outbox.backend",
        ),
    ] {
        let err = start_err(&figment(&gotify.url(), dir.path(), extra), extra).await;
        assert!(err.contains(key), "{extra}: {err}");
        assert!(!err.contains("hunter2"), "the password is never shown: {err}");
    }
}

/// The production profile refuses plain TCP to a PostgreSQL on another machine
/// (like plain http to a provider), naming the key and the fix.
#[tokio::test]
async fn production_wants_tls_to_a_remote_database() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let base = "profile = \"production\"\n[providers.gotify]\nallow_insecure_http = true\n\
                [outbox]\nbackend = \"redis\"\nredis_url = \"redis://127.0.0.1:1/\"\n\
                [server]\ndatabase = \"postgres\"\n";
    let fig = figment(
        &gotify.url(),
        dir.path(),
        &format!("{base}database_url = \"postgres://mesh@db.example.internal:5432/mesh\"\n"),
    );
    let err = start_err(&fig, "plain TCP to a remote database in production").await;
    assert!(err.contains("server.database_url"), "{err}");
    assert!(err.contains("sslmode=require"), "{err}");
}

/// `sslmode=require` against a server without TLS fails at start with the
/// database's key, not later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_required_but_not_offered_fails_at_start() {
    let Some(db) = fresh_database().await else {
        return;
    };
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = postgres_extra(&format!("{db}?sslmode=require"), &prefix());
    let fig = figment(&gotify.url(), dir.path(), &extra);
    let err = start_err(&fig, "the test cluster has no TLS").await;
    assert!(err.contains("server.database_url"), "{err}");
}

/// PostgreSQL drops the server's connections (a restart, a failover): requests
/// answer 503 with `Retry-After` (never 500) until the instance has reconnected,
/// then work again with the same data.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_database_connection_is_503_then_reconnected() {
    let Some(db) = fresh_database().await else {
        return;
    };
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = postgres_extra(&db, &prefix());
    let server = start(&figment(&gotify.url(), dir.path(), &extra)).await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;

    let name = db.rsplit_once('/').unwrap().1.to_string();
    let admin = std::env::var("MESH_TEST_POSTGRES_URL").unwrap();
    let (client, conn) = tokio_postgres::connect(&admin, tokio_postgres::NoTls)
        .await
        .unwrap();
    tokio::spawn(conn);
    let killed: i64 = client
        .query_one(
            "SELECT COUNT(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE datname = $1",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(killed >= 1, "the server's connections were terminated");

    let mut statuses = Vec::new();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let (status, body) = api.call("GET", "/api/me", Some(&alice.token), None).await;
        statuses.push(status);
        if status == 503 {
            assert_eq!(body["code"], "unavailable", "{body}");
        }
        if status == 200 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "never reconnected: {statuses:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 503),
        "only 503 while reconnecting: {statuses:?}"
    );
    let (status, body) = api.call("GET", "/api/me", Some(&alice.token), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["user"]["username"], "alice");
    server.shutdown().await.unwrap();
}

/// A private redis-server on `port`, data in `dir` (AOF on, as in production).
fn redis_server(port: u16, dir: &std::path::Path) -> std::process::Child {
    let binary = std::env::var("MESH_TEST_REDIS_SERVER").unwrap_or_else(|_| "redis-server".into());
    std::process::Command::new(binary)
        .args(["--bind", "127.0.0.1", "--port", &port.to_string()])
        .args(["--save", "", "--appendonly", "yes", "--daemonize", "no"])
        .arg("--dir")
        .arg(dir)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("redis-server starts")
}

async fn redis_answers(url: &str) -> bool {
    let Ok(client) = redis::Client::open(url) else {
        return false;
    };
    match client.get_multiplexed_async_connection().await {
        Ok(mut c) => redis::cmd("PING")
            .query_async::<String>(&mut c)
            .await
            .is_ok(),
        Err(_) => false,
    }
}

/// Redis dies while Alice chats (PostgreSQL + Redis): the chat goes on, Bob's push
/// waits in `push_handoff`, and once Redis is back the sweep hands it over: one
/// push, nothing lost, nothing twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_the_push_waits_in_the_database_and_goes_out_once() {
    let Some(db) = fresh_database().await else {
        return;
    };
    let redis_dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let url = format!("redis://127.0.0.1:{port}/");
    let mut redis = redis_server(port, redis_dir.path());
    eventually_async("redis-server answers", || redis_answers(&url)).await;

    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = format!(
        "[server]\ndatabase = \"postgres\"\ndatabase_url = \"{db}\"\ncoalesce_window = \"0s\"\n\
         [outbox]\nbackend = \"redis\"\nredis_url = \"{url}\"\nredis_prefix = \"{}\"\n",
        prefix()
    );
    let server = start(&figment(&gotify.url(), dir.path(), &extra)).await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;
    let bob = api.register_and_login("bob", "Bob").await;
    let room = api.create_room(&alice, "Panne").await;
    api.invite(&alice, room, &bob).await;
    outbox_drained(&server).await;
    let before = gotify.messages().len();

    redis.kill().unwrap();
    redis.wait().unwrap();
    let mut ws = Ws::connect(&server, &alice.token).await;
    assert_eq!(ws.join(room).await["type"], "ack");
    assert_eq!(ws.say(room, "pendant la panne").await["type"], "ack");
    // The chat goes on: the message is in the history.
    assert_eq!(api.history(&alice, room).await.len(), 1);
    tokio::time::sleep(std::time::Duration::from_millis(500)).await;
    assert_eq!(
        gotify.messages().len(),
        before,
        "nothing delivered without Redis"
    );

    let mut redis = redis_server(port, redis_dir.path());
    eventually_async("redis-server back", || redis_answers(&url)).await;
    // The sweep (every 5 s, rows older than 10 s) hands the push over.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    while gotify.messages().len() < before + 1 {
        assert!(
            std::time::Instant::now() < deadline,
            "the push never went out after Redis came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    let msgs = gotify.messages();
    assert_eq!(msgs.len(), before + 1, "exactly once: {msgs:?}");
    assert_eq!(msgs[before].message, "pendant la panne");
    ws.close().await;
    server.shutdown().await.unwrap();
    let _ = redis.kill();
    let _ = redis.wait();
}

/// The race a message can meet across instances: instance A counted Bob present
/// through instance B, but Bob left the room on B before A's event got there. B
/// then pushes to him (one push), and to nobody who is still in the room. The
/// event is published here as A would, with B's instance id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_who_left_before_the_event_arrived_gets_the_push() {
    let Some(db) = fresh_database().await else {
        return;
    };
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let redis_prefix = prefix();
    let extra = postgres_extra(&db, &redis_prefix).replacen(
        "[server]\n",
        "[server]\ncoalesce_window = \"0s\"\n",
        1,
    );
    let b = start(&figment(&gotify.url(), dir.path(), &extra)).await;
    let api = Api::new(&b);
    let alice = api.register_and_login("alice", "Alice").await;
    let bob = api.register_and_login("bob", "Bob").await;
    let carol = api.register_and_login("carol", "Carol").await;
    let room = api.create_room(&alice, "Course").await;
    api.invite(&alice, room, &bob).await;
    api.invite(&alice, room, &carol).await;
    // Carol is in the room on B; Bob is not (he left).
    let mut carol_ws = Ws::connect(&b, &carol.token).await;
    assert_eq!(carol_ws.join(room).await["type"], "ack");
    outbox_drained(&b).await;
    let before = gotify.messages().len();

    let instance = b.instance_id().expect("several-instance mode").to_string();
    let text =
        serde_json::json!({"type": "chat.message", "message": {"room_id": room, "text": "course"}})
            .to_string();
    let event = serde_json::json!({
        "from": "instance-a",
        "kind": "room",
        "room": room,
        "text": text,
        "message": {
            "assumed": [[bob.id, instance], [carol.id, instance]],
            "room_name": "Course",
            "kind": "chat",
            "from": "Alice",
            "text": "course",
            "created_at": 1_800_000_000_000_i64,
        },
    });
    let redis = redis::Client::open(std::env::var("REDIS_URL").unwrap()).unwrap();
    let mut conn = redis.get_multiplexed_async_connection().await.unwrap();
    let receivers: i64 = redis::cmd("PUBLISH")
        .arg(format!("{redis_prefix}:mesh:events"))
        .arg(event.to_string())
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(receivers >= 1, "B is subscribed");

    // Carol, present, gets it live; Bob, gone, gets one push.
    carol_ws
        .wait_for("the event on B", |v| v["type"] == "chat.message")
        .await;
    eventually("Bob's push", || gotify.messages().len() == before + 1).await;
    outbox_drained(&b).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let msgs = gotify.messages();
    assert_eq!(msgs.len(), before + 1, "only Bob: {msgs:?}");
    assert_eq!(msgs[before].title, "💬 Alice dans Course");
    assert_eq!(msgs[before].message, "course");
    carol_ws.close().await;
    b.shutdown().await.unwrap();
}

/// `mesh-server user add` with `database = "postgres"` creates the account in
/// PostgreSQL (not in a SQLite file), where the running server logs it in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_add_writes_to_postgres() {
    let Some(db) = fresh_database().await else {
        return;
    };
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let fig = figment(&gotify.url(), dir.path(), &postgres_extra(&db, &prefix()));
    let server = start(&fig).await;
    let f = fig.clone();
    let user = std::thread::spawn(move || {
        mesh_server::add_user(&f, "dave", "a-long-enough-password", Some("Dave"))
    })
    .join()
    .unwrap()
    .expect("user add");
    assert_eq!(user.username, "dave");
    assert!(!dir.path().join("mesh.sqlite3").exists());
    let (status, body) = Api::new(&server)
        .call(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": "dave", "password": "a-long-enough-password"})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    server.shutdown().await.unwrap();
}
