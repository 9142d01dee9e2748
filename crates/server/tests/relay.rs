//! Relayed events are built by the server: only allow-listed client fields reach
//! the peer, and the sender (`from`, `user_id`, names) is always the server's.

mod common;

use common::*;
use mesh_notify_testkit::gotify::FakeGotify;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spoofed_sender_is_ignored_in_rtc_chat_and_file_events() {
    let gotify = FakeGotify::start(&[(APP_TOKEN, 1)])
        .await
        .expect("fake gotify");
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;
    let bob = api.register_and_login("bob", "Bob").await;
    let room = api.create_room(&alice, "Salon").await;
    api.invite(&alice, room, &bob).await;
    let mut a = Ws::connect(&server, &alice.token).await;
    a.join(room).await;
    let mut b = Ws::connect(&server, &bob.token).await;
    b.join(room).await;
    let fake_sender = json!({"id": 999, "username": "ceo", "display_name": "The CEO"});

    // rtc.offer: Alice claims to be someone else and adds fields of her own.
    a.send(json!({
        "type": "rtc.offer", "room_id": room, "to": "bob", "sdp": "v=0 offer",
        "call_id": "call-1", "from": fake_sender, "user": fake_sender,
        "admin": true, "display_name": "The CEO",
    }))
    .await;
    let offer = b.wait_type("rtc.offer").await;
    assert_eq!(offer["from"]["id"], alice.id, "{offer}");
    assert_eq!(offer["from"]["username"], "alice");
    assert_eq!(offer["from"]["display_name"], "Alice");
    let mut keys: Vec<&str> = offer
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    keys.sort_unstable();
    assert_eq!(
        keys,
        ["call_id", "from", "room_id", "sdp", "type"],
        "{offer}"
    );
    assert_eq!(offer["sdp"], "v=0 offer");
    assert_eq!(offer["call_id"], "call-1");
    assert_eq!(offer["room_id"], room);

    // rtc.ice with a string `from` and a wrong room_id type in a nested field.
    a.send(json!({
        "type": "rtc.ice", "room_id": room, "to": bob.id, "from": "bob",
        "candidate": {"candidate": "c1", "sdpMid": "0"}, "extra": [1, 2, 3],
    }))
    .await;
    let ice = b.wait_type("rtc.ice").await;
    assert_eq!(ice["from"]["id"], alice.id, "{ice}");
    assert_eq!(ice["candidate"]["candidate"], "c1");
    assert!(ice.get("extra").is_none(), "{ice}");

    // chat.message and file.shared: the message's author is the sender.
    a.send(json!({
        "type": "chat.message.send", "room_id": room, "text": "bonjour",
        "from": fake_sender, "user_id": 999, "username": "ceo", "display_name": "The CEO",
        "id": 1, "created_at": 0,
    }))
    .await;
    let chat = b.wait_type("chat.message").await;
    assert_eq!(chat["message"]["user_id"], alice.id, "{chat}");
    assert_eq!(chat["message"]["username"], "alice");
    assert_eq!(chat["message"]["display_name"], "Alice");
    assert_ne!(chat["message"]["created_at"], 0);
    assert!(chat.get("from").is_none(), "{chat}");
    a.send(json!({
        "type": "file.share", "room_id": room, "name": "a.png", "size": 3, "mime": "image/png",
        "from": fake_sender, "user_id": 999, "url": "https://evil.example/x",
    }))
    .await;
    let file = b.wait_type("file.shared").await;
    assert_eq!(file["message"]["user_id"], alice.id, "{file}");
    assert_eq!(
        file["message"]["file"],
        json!({"name": "a.png", "size": 3, "mime": "image/png"})
    );
    assert!(!file.to_string().contains("evil.example"), "{file}");

    // Allow-listed fields are still checked.
    a.send(json!({"type": "rtc.offer", "room_id": room, "to": "bob", "sdp": 42}))
        .await;
    let e = a.wait_type("error").await;
    assert_eq!(
        (e["code"].as_str(), e["field"].as_str()),
        (Some("invalid_field"), Some("sdp"))
    );
    a.send(json!({"type": "rtc.answer", "room_id": room, "to": "bob", "sdp": "x", "call_id": "c".repeat(65)}))
        .await;
    let e = a.wait_type("error").await;
    assert_eq!(e["field"], "call_id", "{e}");
    server.shutdown().await.unwrap();
}
