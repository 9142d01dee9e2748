//! Authorisation and bad input, over HTTP and WebSocket: each refusal stores,
//! broadcasts and pushes nothing, and the server keeps serving.

mod common;

use common::*;
use mesh_notify_testkit::gotify::FakeGotify;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::Message;

async fn fake() -> FakeGotify {
    FakeGotify::start(&[(APP_TOKEN, 1)])
        .await
        .expect("fake gotify")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn non_members_cannot_join_send_relay_share_or_trigger_notifications() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;
    let bob = api.register_and_login("bob", "Bob").await;
    let mallory = api.register_and_login("mallory", "Mallory").await;
    let room = api.create_room(&alice, "Test Gotify").await;
    api.invite(&alice, room, &bob).await;

    let mut a = Ws::connect(&server, &alice.token).await;
    a.join(room).await;
    let mut m = Ws::connect(&server, &mallory.token).await;

    let e = m.join(room).await;
    assert_eq!(
        (e["type"].as_str(), e["code"].as_str(), e["field"].as_str()),
        (Some("error"), Some("not_member"), Some("room_id"))
    );
    let e = m.say(room, "spam").await;
    assert_eq!(e["code"], "not_member", "{e}");
    m.send(json!({"type": "file.share", "room_id": room, "name": "x.exe", "size": 1, "mime": "application/octet-stream"})).await;
    assert_eq!(m.wait_type("error").await["code"], "not_member");
    m.send(json!({"type": "rtc.offer", "room_id": room, "to": "bob", "sdp": "x"}))
        .await;
    assert_eq!(m.wait_type("error").await["code"], "not_member");
    // A member cannot relay to a non-member either.
    a.send(json!({"type": "rtc.offer", "room_id": room, "to": "mallory", "sdp": "x"}))
        .await;
    let e = a.wait_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["field"].as_str()),
        (Some("not_member"), Some("to"))
    );
    // A room that does not exist looks the same as one you are not in.
    assert_eq!(m.join(999_999).await["code"], "not_member");

    // HTTP: history and invitations are members-only.
    let (status, body) = api
        .call(
            "GET",
            &format!("/api/rooms/{room}/messages"),
            Some(&mallory.token),
            None,
        )
        .await;
    assert_eq!((status, body["field"].as_str()), (403, Some("room_id")));
    let (status, _) = api
        .call(
            "POST",
            &format!("/api/rooms/{room}/invite"),
            Some(&mallory.token),
            Some(json!({"username": "mallory"})),
        )
        .await;
    assert_eq!(status, 403);

    // Nothing was broadcast: the next chat event Alice sees is her own.
    a.say(room, "sync").await;
    let ev = a
        .wait_for("a chat event", |v| {
            v["type"] == "chat.message" || v["type"] == "file.shared"
        })
        .await;
    assert_eq!(ev["message"]["text"], "sync");
    // Nothing stored but Alice's message; the only push is Bob's for "sync".
    let history = api.history(&alice, room).await;
    assert_eq!(history.len(), 1);
    eventually("Bob's push for sync", || gotify.messages().len() == 1).await;
    outbox_drained(&server).await;
    assert_eq!(gotify.messages().len(), 1);
    assert_eq!(gotify.messages()[0].message, "sync");
    let _ = bob;
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_events_get_error_events_and_the_connection_survives() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;
    let room = api.create_room(&alice, "R").await;
    let mut a = Ws::connect(&server, &alice.token).await;

    let cases: Vec<(Message, &str, Option<&str>)> = vec![
        (Message::text("{not json"), "invalid_json", None),
        (Message::text("[1,2]"), "invalid_json", None),
        (
            Message::text(r#"{"room_id": 1}"#),
            "missing_field",
            Some("type"),
        ),
        (
            Message::text(r#"{"type": "chat.delete", "room_id": 1}"#),
            "unknown_type",
            Some("type"),
        ),
        (
            Message::text(format!(
                r#"{{"type": "chat.message.send", "room_id": {room}}}"#
            )),
            "missing_field",
            Some("text"),
        ),
        (
            Message::text(r#"{"type": "room.join", "room_id": "abc"}"#),
            "invalid_request",
            None,
        ),
        (
            Message::text(format!(
                r#"{{"type": "chat.message.send", "room_id": {room}, "text": "   "}}"#
            )),
            "invalid_field",
            Some("text"),
        ),
        (
            Message::text(format!(
                r#"{{"type": "rtc.offer", "room_id": {room}, "to": "alice"}}"#
            )),
            "missing_field",
            Some("sdp"),
        ),
        (
            Message::text(format!(
                r#"{{"type": "file.share", "room_id": {room}, "name": "a", "size": 1, "mime": "nope"}}"#
            )),
            "invalid_field",
            Some("mime"),
        ),
        (
            Message::binary(vec![0xff, 0xfe, 0x00, 0xc3]),
            "binary_not_supported",
            None,
        ),
        (
            Message::text(format!(r#"{{"type": "room.leave", "room_id": {room}}}"#)),
            "not_joined",
            Some("room_id"),
        ),
    ];
    for (msg, code, field) in cases {
        let shown = format!("{msg:?}");
        a.send_raw(msg).await;
        let e = a.wait_type("error").await;
        assert_eq!(e["code"], code, "{shown}: {e}");
        assert_eq!(e["field"].as_str(), field, "{shown}: {e}");
    }
    // Still connected and working; nothing was stored by the bad events.
    assert_eq!(a.join(room).await["type"], "ack");
    assert!(api.history(&alice, room).await.is_empty());
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_frames_close_with_1009_and_store_nothing() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(
        &gotify.url(),
        dir.path(),
        "[server]\nmax_frame_bytes = 4096",
    ))
    .await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;
    let room = api.create_room(&alice, "R").await;

    for size in [4097usize, 100_000] {
        let mut a = Ws::connect(&server, &alice.token).await;
        let text = "x".repeat(size);
        let frame = json!({"type": "chat.message.send", "room_id": room, "text": text}).to_string();
        a.send_raw(Message::text(frame)).await;
        let closed = loop {
            match tokio::time::timeout(
                std::time::Duration::from_secs(5),
                futures_util::StreamExt::next(&mut a.ws),
            )
            .await
            {
                Ok(Some(Ok(Message::Close(frame)))) => break frame,
                Ok(Some(Ok(_))) => continue,
                // The transport may be cut before the close frame is read: still a close.
                Ok(Some(Err(_))) | Ok(None) => break None,
                Err(_) => panic!("connection not closed after a {size}-byte frame"),
            }
        };
        if size == 4097 {
            assert_eq!(
                closed.map(|c| c.code),
                Some(CloseCode::Size),
                "1009 for a too-big message"
            );
        }
    }
    let (status, _) = api.call("GET", "/health", None, None).await;
    assert_eq!(status, 200, "server still serving");
    assert!(api.history(&alice, room).await.is_empty(), "nothing stored");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_rate_limited_per_connection() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[server]\nmessages_per_second = 0.5\nmessage_burst = 3";
    let server = start(&figment(&gotify.url(), dir.path(), extra)).await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;
    let room = api.create_room(&alice, "R").await;
    let mut a = Ws::connect(&server, &alice.token).await;
    for i in 0..6 {
        a.send(json!({"type": "chat.message.send", "room_id": room, "text": format!("m{i}")}))
            .await;
    }
    let (mut acks, mut limited) = (0, 0);
    while acks + limited < 6 {
        let v = a.next().await;
        match (v["type"].as_str(), v["code"].as_str()) {
            (Some("ack"), _) => acks += 1,
            (Some("error"), Some("rate_limited")) => limited += 1,
            _ => {}
        }
    }
    assert_eq!(acks, 3, "the burst passes");
    assert_eq!(limited, 3, "the rest is refused");
    assert_eq!(
        api.history(&alice, room).await.len(),
        3,
        "refused events are not stored"
    );
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_or_expired_tokens_are_refused_at_the_upgrade() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(
        &gotify.url(),
        dir.path(),
        "[server]\nsession_ttl = \"1ms\"",
    ))
    .await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;
    let refused = |r: Result<_, tokio_tungstenite::tungstenite::Error>| match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("upgrade accepted"),
    };
    let addr = server.addr();
    let with_bearer = |token: &str| {
        let mut req = format!("ws://{addr}/ws").into_client_request().unwrap();
        req.headers_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
        req
    };
    // Expired (the session lived 1 ms).
    let r = tokio_tungstenite::connect_async(with_bearer(&alice.token)).await;
    assert_eq!(refused(r.map(|_| ())), 401);
    // Unknown.
    let r = tokio_tungstenite::connect_async(with_bearer("deadbeef")).await;
    assert_eq!(refused(r.map(|_| ())), 401);
    let r = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?ticket=deadbeef")).await;
    assert_eq!(refused(r.map(|_| ())), 401);
    // Missing.
    let r = tokio_tungstenite::connect_async(format!("ws://{addr}/ws")).await;
    assert_eq!(refused(r.map(|_| ())), 401);
    // The HTTP API refuses it too.
    let (status, body) = api
        .call("GET", "/api/rooms", Some(&alice.token), None)
        .await;
    assert_eq!((status, body["code"].as_str()), (401, Some("unauthorized")));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_api_validates_and_names_the_bad_field() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    let api = Api::new(&server);
    let reg = |body| api.call("POST", "/api/register", None, Some(body));
    let (s, b) = reg(json!({"username": "al", "password": "longenough"})).await;
    assert_eq!((s, b["field"].as_str()), (400, Some("username")));
    let (s, b) = reg(json!({"username": "alice", "password": "short"})).await;
    assert_eq!((s, b["field"].as_str()), (400, Some("password")));
    let (s, b) = reg(json!({"username": "alice"})).await;
    assert_eq!(
        (s, b["code"].as_str(), b["field"].as_str()),
        (400, Some("missing_field"), Some("password"))
    );
    let (s, b) = reg(json!({"username": "alice", "password": "longenough", "admin": true})).await;
    assert_eq!((s, b["field"].as_str()), (400, Some("admin")));
    let alice = api.register_and_login("alice", "Alice").await;
    let (s, b) = reg(json!({"username": "ALICE", "password": "longenough"})).await;
    assert_eq!((s, b["field"].as_str()), (409, Some("username")));
    let (s, _) = api
        .call(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": "alice", "password": "wrong-password"})),
        )
        .await;
    assert_eq!(s, 401);

    // Addresses: validated, listed redacted, deleted.
    let add = |body| api.call("POST", "/api/me/addresses", Some(&alice.token), Some(body));
    let (s, b) = add(json!({"kind": "pager", "value": "x"})).await;
    assert_eq!((s, b["field"].as_str()), (400, Some("kind")));
    let (s, b) = add(json!({"kind": "email", "value": "not-an-email"})).await;
    assert_eq!((s, b["field"].as_str()), (400, Some("value")));
    let (s, b) = add(json!({"kind": "fcm", "value": "fcm-registration-token-123456"})).await;
    assert_eq!(s, 201, "{b}");
    let id = b["address"]["id"].as_i64().unwrap();
    let (_, list) = api
        .call("GET", "/api/me/addresses", Some(&alice.token), None)
        .await;
    let shown = list["addresses"][0]["value"].as_str().unwrap().to_string();
    assert_eq!(shown, "fcm-…");
    assert!(!list.to_string().contains("registration-token"));
    let (s, _) = api
        .call(
            "DELETE",
            &format!("/api/me/addresses/{id}"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(s, 204);
    let (s, b) = api
        .call(
            "DELETE",
            &format!("/api/me/addresses/{id}"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!((s, b["field"].as_str()), (404, Some("id")));

    // Rooms, invitations, paged history.
    let room = api.create_room(&alice, "Salon").await;
    let (s, b) = api
        .call(
            "POST",
            &format!("/api/rooms/{room}/invite"),
            Some(&alice.token),
            Some(json!({"username": "nobody"})),
        )
        .await;
    assert_eq!((s, b["field"].as_str()), (404, Some("username")));
    let (s, b) = api
        .call(
            "POST",
            "/api/rooms/abc/invite",
            Some(&alice.token),
            Some(json!({"username": "x"})),
        )
        .await;
    assert_eq!((s, b["field"].as_str()), (400, Some("room_id")));
    let mut a = Ws::connect(&server, &alice.token).await;
    for i in 0..5 {
        assert_eq!(a.say(room, &format!("m{i}")).await["type"], "ack");
    }
    let (_, page) = api
        .call(
            "GET",
            &format!("/api/rooms/{room}/messages?limit=2"),
            Some(&alice.token),
            None,
        )
        .await;
    let texts: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["m4", "m3"]);
    let before = page["next_before"].as_i64().unwrap();
    let (_, page) = api
        .call(
            "GET",
            &format!("/api/rooms/{room}/messages?limit=2&before={before}"),
            Some(&alice.token),
            None,
        )
        .await;
    let texts: Vec<&str> = page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["text"].as_str().unwrap())
        .collect();
    assert_eq!(texts, ["m2", "m1"]);
    let (s, b) = api
        .call(
            "GET",
            &format!("/api/rooms/{room}/messages?limit=1000"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!((s, b["field"].as_str()), (400, Some("limit")));
    let (_, rooms) = api
        .call("GET", "/api/rooms", Some(&alice.token), None)
        .await;
    assert_eq!(rooms["rooms"][0]["name"], "Salon");

    // Health and metrics: on the admin listener.
    let admin = server.admin_addr().expect("admin listener");
    let h: serde_json::Value = reqwest::get(format!("http://{admin}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["providers"][0]["name"], "gotify");
    assert_eq!(h["providers"][0]["health"]["status"], "healthy");
    assert_eq!(h["outbox"]["backend"], "sqlite");
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("mesh_server_messages_total"), "{metrics}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn names_with_bidi_or_zero_width_characters_are_refused() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    let api = Api::new(&server);
    // "Alice" shown as someone else by a right-to-left override.
    let (s, b) = api
        .call(
            "POST",
            "/api/register",
            None,
            Some(json!({"username": "mallory", "password": "long-enough-pw", "display_name": "Admin\u{202E}nimda"})),
        )
        .await;
    assert_eq!((s, b["field"].as_str()), (400, Some("display_name")), "{b}");
    let alice = api.register_and_login("alice", "Alice").await;
    let (s, b) = api
        .call(
            "POST",
            "/api/rooms",
            Some(&alice.token),
            Some(json!({"name": "Sup\u{200B}port"})),
        )
        .await;
    assert_eq!((s, b["field"].as_str()), (400, Some("name")), "{b}");
    let room = api.create_room(&alice, "Salon 👩‍💻").await;
    let mut a = Ws::connect(&server, &alice.token).await;
    // A file name that displays as "invoice.pdf" but ends in ".exe".
    a.send(json!({"type": "file.share", "room_id": room, "name": "invoice\u{202E}fdp.exe", "size": 1, "mime": "application/pdf"}))
        .await;
    let e = a.wait_type("error").await;
    assert_eq!(e["field"], "name", "{e}");
    assert!(api.history(&alice, room).await.is_empty());
    server.shutdown().await.unwrap();
}
