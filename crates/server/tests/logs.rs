//! Passwords and session tokens never appear in the logs (every level, every crate).

mod common;

use std::io::Write;
use std::sync::{Arc, Mutex, PoisonError};

use common::*;
use mesh_notify_testkit::gotify::FakeGotify;
use serde_json::json;

#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_and_tokens_never_reach_the_logs() {
    let captured = Captured::default();
    let writer = captured.clone();
    tracing_subscriber::fmt()
        .with_env_filter("trace")
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .init();

    let gotify = FakeGotify::start(&[(APP_TOKEN, 1)]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;
    let bob = api.register_and_login("bob", "Bob").await;
    let room = api.create_room(&alice, "Test Gotify").await;
    api.invite(&alice, room, &bob).await;
    let (status, _) = api
        .call(
            "POST",
            "/api/me/addresses",
            Some(&bob.token),
            Some(json!({"kind": "gotify", "value": "bobs-secret-app-token"})),
        )
        .await;
    assert_eq!(status, 201);
    // A failed login with a wrong password, and a WebSocket opened with a ticket.
    let (status, _) = api
        .call(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": "alice", "password": "wrong-secret-pass"})),
        )
        .await;
    assert_eq!(status, 401);
    let (status, body) = api
        .call("POST", "/api/ws-ticket", Some(&alice.token), None)
        .await;
    assert_eq!(status, 200, "{body}");
    let ticket = body["ticket"].as_str().unwrap().to_string();
    let (mut ws, _) =
        tokio_tungstenite::connect_async(format!("ws://{}/ws?ticket={ticket}", server.addr(),))
            .await
            .unwrap();
    futures_util::SinkExt::send(
        &mut ws,
        tokio_tungstenite::tungstenite::Message::text(
            json!({"type": "chat.message.send", "room_id": room, "text": "hello"}).to_string(),
        ),
    )
    .await
    .unwrap();
    eventually("a delivery attempt with Bob's token", || {
        gotify.requests() >= 1
    })
    .await;
    outbox_drained(&server).await;
    server.shutdown().await.unwrap();

    let logs = String::from_utf8_lossy(&captured.0.lock().unwrap_or_else(PoisonError::into_inner))
        .to_string();
    assert!(logs.contains("user registered"), "logs were captured");
    for secret in [
        "pw-alice-secret",
        "pw-bob-secret",
        "wrong-secret-pass",
        alice.token.as_str(),
        ticket.as_str(),
        bob.token.as_str(),
        "bobs-secret-app-token",
        APP_TOKEN,
    ] {
        assert!(
            !logs.contains(secret),
            "a secret reached the logs: {secret}"
        );
    }
}
