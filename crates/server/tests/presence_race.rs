//! Presence races: Bob joins and leaves the room while Alice writes. For every
//! message Bob gets exactly one of the live `chat.message` event or a queued
//! notification: never both, never neither.
//!
//! "Queued" is read where the server decides it: the message's transaction writes
//! one `push_fanout` row naming the absent members (expanded into outbox entries
//! right after). Triggers installed by the test copy every such row, and every
//! outbox insert, into audit tables, so a push later delivered, cancelled or skipped
//! (Bob came back before it went out) still counts as queued, and no outbox entry
//! may exist for a message that was not.

mod common;

use std::collections::HashMap;
use std::path::Path;

use common::*;
use mesh_notify_outbox_sqlite::rusqlite;
use mesh_notify_testkit::gotify::FakeGotify;
use serde_json::{json, Value};

const ROUNDS: usize = 200;

/// Copies every outbox insert into `race_audit` (deliveries and cancellations
/// delete outbox rows; the audit keeps them).
fn install_audit(db: &Path) {
    let conn = rusqlite::Connection::open(db).expect("open the chat database");
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .expect("busy timeout");
    conn.execute_batch(&format!(
        "CREATE TABLE race_audit (id TEXT NOT NULL, payload TEXT NOT NULL);
         CREATE TRIGGER race_audit_insert AFTER INSERT ON {table}
         BEGIN INSERT INTO race_audit (id, payload) VALUES (NEW.id, NEW.payload); END;
         CREATE TABLE race_fanout (body TEXT NOT NULL, members TEXT NOT NULL);
         CREATE TRIGGER race_fanout_insert AFTER INSERT ON push_fanout
         BEGIN INSERT INTO race_fanout (body, members) VALUES (NEW.body, NEW.members); END;",
        table = mesh_notify_outbox_sqlite::TABLE
    ))
    .expect("install the audit trigger");
}

/// How many messages were ever decided "push" for `user_id` (absent when the
/// message committed), by body.
fn decided_bodies(db: &Path, user_id: i64) -> HashMap<String, usize> {
    let conn = rusqlite::Connection::open(db).expect("open the chat database");
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .expect("busy timeout");
    let mut stmt = conn
        .prepare("SELECT body, members FROM race_fanout")
        .expect("prepare");
    let rows = stmt
        .query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))
        .expect("query")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows");
    let mut out = HashMap::new();
    for (body, members) in rows {
        let members: Vec<i64> = serde_json::from_str(&members).expect("members are JSON");
        let n = members.iter().filter(|m| **m == user_id).count();
        if n > 0 {
            *out.entry(body).or_insert(0) += n;
        }
    }
    out
}

/// How many notifications were ever written to the outbox for `user_id`, by body.
fn queued_bodies(db: &Path, user_id: i64) -> HashMap<String, usize> {
    let conn = rusqlite::Connection::open(db).expect("open the chat database");
    conn.busy_timeout(std::time::Duration::from_secs(10))
        .expect("busy timeout");
    let mut stmt = conn
        .prepare("SELECT payload FROM race_audit")
        .expect("prepare");
    let payloads = stmt
        .query_map([], |r| r.get::<_, String>(0))
        .expect("query")
        .collect::<Result<Vec<_>, _>>()
        .expect("rows");
    let mut out = HashMap::new();
    for p in payloads {
        let n: Value = serde_json::from_str(&p).expect("payload is JSON");
        if n["recipient"]["user_id"] == user_id.to_string().as_str() {
            let body = n["body"].as_str().expect("body").to_string();
            *out.entry(body).or_insert(0) += 1;
        }
    }
    out
}

/// Reads events until the ack for `what` (or an error), counting the chat messages
/// seen on the way in `live`.
async fn until_ack(ws: &mut Ws, what: &str, live: &mut HashMap<String, usize>) -> Value {
    loop {
        let v = ws.next().await;
        if v["type"] == "chat.message" {
            let text = v["message"]["text"].as_str().expect("text").to_string();
            *live.entry(text).or_insert(0) += 1;
        } else if (v["type"] == "ack" && v["for"] == what) || v["type"] == "error" {
            return v;
        }
    }
}

/// Reads events until the chat message `text`, counting the chat messages seen.
async fn until_chat(ws: &mut Ws, text: &str, live: &mut HashMap<String, usize>) {
    loop {
        let v = ws.next().await;
        if v["type"] == "chat.message" {
            let t = v["message"]["text"].as_str().expect("text").to_string();
            *live.entry(t.clone()).or_insert(0) += 1;
            if t == text {
                return;
            }
        }
    }
}

async fn jitter(n: usize) {
    for _ in 0..n {
        tokio::task::yield_now().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_member_joining_or_leaving_during_a_message_gets_exactly_one_of_live_or_push() {
    let gotify = FakeGotify::start(&[(APP_TOKEN, 1)])
        .await
        .expect("fake gotify");
    let dir = tempfile::tempdir().unwrap();
    // One push per message (coalescing off): each message is either live or pushed.
    let extra = "[server]\nmessages_per_second = 100000.0\nmessage_burst = 100000\ncoalesce_window = \"0s\"\n[routes]\nchat = [\"gotify\"]";
    let server = start(&figment(&gotify.url(), dir.path(), extra)).await;
    let db = server.store().path().to_path_buf();
    install_audit(&db);

    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;
    let bob = api.register_and_login("bob", "Bob").await;
    let room = api.create_room(&alice, "Course").await;
    api.invite(&alice, room, &bob).await;

    let mut a = Ws::connect(&server, &alice.token).await;
    assert_eq!(a.join(room).await["type"], "ack");
    let mut b = Ws::connect(&server, &bob.token).await;
    let mut live: HashMap<String, usize> = HashMap::new();
    let mut in_room = false;

    for i in 0..ROUNDS {
        let text = format!("race-{i}");
        let (op, what) = if in_room {
            ("room.leave", "room.leave")
        } else {
            ("room.join", "room.join")
        };
        let (ack, bob_ack) = tokio::join!(
            async {
                jitter(i % 7).await;
                a.say(room, &text).await
            },
            async {
                jitter((i / 7) % 5).await;
                b.send(json!({"type": op, "room_id": room})).await;
                until_ack(&mut b, what, &mut live).await
            }
        );
        assert_eq!(ack["type"], "ack", "message {i}: {ack}");
        assert_eq!(bob_ack["type"], "ack", "Bob's {op} in round {i}: {bob_ack}");
        in_room = !in_room;
    }

    // Barrier: with Bob in the room, a last message reaches him after every event
    // queued for his connection before it.
    if !in_room {
        b.send(json!({"type": "room.join", "room_id": room})).await;
        let ack = until_ack(&mut b, "room.join", &mut live).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    assert_eq!(a.say(room, "fin").await["type"], "ack");
    until_chat(&mut b, "fin", &mut live).await;

    outbox_drained(&server).await;
    let queued = decided_bodies(&db, bob.id);
    let mut wrong = Vec::new();
    // An outbox entry only for a message decided "push", once at most.
    for (body, n) in queued_bodies(&db, bob.id) {
        if n != 1 || queued.get(&body).copied().unwrap_or(0) != 1 {
            wrong.push(format!(
                "{body}: {n} outbox entries, decided push {:?}",
                queued.get(&body)
            ));
        }
    }
    let (mut n_live, mut n_queued) = (0, 0);
    for i in 0..ROUNDS {
        let text = format!("race-{i}");
        let l = live.get(&text).copied().unwrap_or(0);
        let q = queued.get(&text).copied().unwrap_or(0);
        n_live += l;
        n_queued += q;
        if l + q != 1 {
            wrong.push(format!("{text}: live {l}, queued {q}"));
        }
    }
    eprintln!("Bob over {ROUNDS} racing messages: {n_live} live, {n_queued} queued");
    assert!(
        wrong.is_empty(),
        "{} of {ROUNDS} messages broke \"exactly one of live or push\" for Bob: {wrong:?}",
        wrong.len()
    );
    assert_eq!(live.get("fin"), Some(&1));
    assert_eq!(queued.get("fin"), None);
    assert!(
        n_live > 0 && n_queued > 0,
        "both outcomes occur (live {n_live}, queued {n_queued})"
    );

    // What reached the fake Gotify is a subset of what was queued (some were
    // cancelled when Bob came back), and never a message Bob saw live.
    outbox_drained(&server).await;
    for m in gotify.messages() {
        assert!(
            queued.contains_key(&m.message),
            "pushed but never queued: {}",
            m.message
        );
        assert!(
            !live.contains_key(&m.message),
            "pushed although seen live: {}",
            m.message
        );
    }
    server.shutdown().await.unwrap();
}
