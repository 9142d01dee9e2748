//! Sessions end for real: logout closes that session's WebSockets, logout-all ends
//! every session, an expiring session closes its WebSockets, and expired sessions
//! are pruned periodically.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::StreamExt;
use mesh_notify_outbox_sqlite::rusqlite;
use mesh_notify_testkit::gotify::FakeGotify;
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn fake() -> FakeGotify {
    FakeGotify::start(&[(APP_TOKEN, 1)])
        .await
        .expect("fake gotify")
}

/// Reads until the server closes the connection; the close code, if a close frame
/// came. Panics if it stays open for 10 s.
async fn closed_by_server(ws: &mut Ws) -> Option<u16> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.ws.next()).await {
            Err(_) => panic!("the WebSocket is still open"),
            Ok(Some(Ok(Message::Close(frame)))) => return frame.map(|f| u16::from(f.code)),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => return None,
        }
    }
}

async fn login(api: &Api, username: &str) -> String {
    let (status, body) = api
        .call(
            "POST",
            "/api/login",
            None,
            Some(json!({"username": username, "password": format!("pw-{username}-secret")})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["token"].as_str().unwrap().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logout_closes_that_sessions_websockets_and_logout_all_closes_every_one() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;
    let phone = login(&api, "alice").await;
    let laptop = login(&api, "alice").await;
    let mut tab = Ws::connect(&server, &alice.token).await;
    tab.sync().await;
    let mut tab2 = Ws::connect(&server, &alice.token).await;
    tab2.sync().await;
    let mut on_phone = Ws::connect(&server, &phone).await;
    on_phone.sync().await;

    // Logging out of the first session closes both of its connections, only them.
    let (status, _) = api
        .call("POST", "/api/logout", Some(&alice.token), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(closed_by_server(&mut tab).await, Some(1008));
    assert_eq!(closed_by_server(&mut tab2).await, Some(1008));
    on_phone.sync().await;
    let (status, _) = api.call("GET", "/api/me", Some(&alice.token), None).await;
    assert_eq!(status, 401);

    // Logout everywhere, from the laptop: the phone's connection closes too.
    let (status, body) = api
        .call("POST", "/api/logout-all", Some(&laptop), None)
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["sessions_ended"], 2);
    assert_eq!(closed_by_server(&mut on_phone).await, Some(1008));
    for token in [&phone, &laptop] {
        let (status, _) = api.call("GET", "/api/me", Some(token), None).await;
        assert_eq!(status, 401);
    }
    let (status, _) = api
        .call("POST", "/api/logout-all", Some(&phone), None)
        .await;
    assert_eq!(status, 401);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expiring_session_closes_its_websockets() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(
        &gotify.url(),
        dir.path(),
        "[server]\nsession_ttl = \"2s\"",
    ))
    .await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;
    let mut ws = Ws::connect(&server, &alice.token).await;
    ws.sync().await;
    assert_eq!(closed_by_server(&mut ws).await, Some(1008));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_sessions_are_pruned_periodically() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(
        &gotify.url(),
        dir.path(),
        "[server]\nsession_ttl = \"1ms\"\nprune_interval = \"50ms\"",
    ))
    .await;
    let api = Api::new(&server);
    api.register_and_login("alice", "Alice").await;
    let db = server.store().path().to_path_buf();
    let sessions = move || {
        let conn = rusqlite::Connection::open(&db).expect("open the database");
        conn.busy_timeout(Duration::from_secs(10))
            .expect("busy timeout");
        conn.query_row("SELECT COUNT(*) FROM sessions", [], |r| r.get::<_, i64>(0))
            .expect("count")
    };
    // No further login happens: only the periodic pruning can delete it.
    eventually("the expired session is pruned", || sessions() == 0).await;
    server.shutdown().await.unwrap();
}

async fn ticket(api: &Api, token: &str) -> String {
    let (status, body) = api.call("POST", "/api/ws-ticket", Some(token), None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["expires_in"], 30);
    body["ticket"].as_str().expect("ticket").to_string()
}

fn upgrade_status(r: Result<impl Sized, tokio_tungstenite::tungstenite::Error>) -> u16 {
    match r {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => resp.status().as_u16(),
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => 101,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn browsers_open_websockets_with_a_single_use_ticket_never_with_the_token_in_the_url() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;
    let addr = server.addr();

    // The session token in the URL is refused, valid as it is.
    let r = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?token={}", alice.token)).await;
    assert_eq!(upgrade_status(r), 401);
    let (status, _) = api.call("POST", "/api/ws-ticket", None, None).await;
    assert_eq!(status, 401, "a ticket needs a session");

    // A ticket opens one WebSocket, once.
    let t = ticket(&api, &alice.token).await;
    assert_ne!(t, alice.token);
    let (ws, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?ticket={t}"))
        .await
        .expect("the ticket opens a WebSocket");
    let mut ws = Ws { ws };
    ws.sync().await;
    let r = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?ticket={t}")).await;
    assert_eq!(upgrade_status(r), 401, "a ticket works once");

    // The WebSocket belongs to the session: logging out closes it, and an unused
    // ticket of that session is void.
    let unused = ticket(&api, &alice.token).await;
    let (status, _) = api
        .call("POST", "/api/logout", Some(&alice.token), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(closed_by_server(&mut ws).await, Some(1008));
    let r = tokio_tungstenite::connect_async(format!("ws://{addr}/ws?ticket={unused}")).await;
    assert_eq!(upgrade_status(r), 401);
    server.shutdown().await.unwrap();
}
