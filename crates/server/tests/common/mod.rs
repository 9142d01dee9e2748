//! Shared helpers for mesh-server's end-to-end tests: an in-process server on
//! 127.0.0.1:0 with a temp data dir, HTTP and WebSocket clients, polling with a
//! deadline.
#![allow(dead_code)]

use std::path::Path;
use std::time::{Duration, Instant};

use figment::providers::{Format, Toml};
use figment::Figment;
use futures_util::{SinkExt, StreamExt};
use mesh_notify::Config;
use mesh_server::ServerHandle;
use serde_json::{json, Value};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

/// The fake Gotify's global application token.
pub const APP_TOKEN: &str = "global-app-token";

/// The configuration every test starts from; `extra` (TOML) is merged on top.
pub fn figment(gotify_url: &str, data_dir: &Path, extra: &str) -> Figment {
    let base = format!(
        r#"
timeout = "2s"
[retry]
attempts_per_provider = 1
initial_delay = "10ms"
max_inline_wait = "100ms"
[providers.gotify]
url = "{gotify_url}"
token = "{APP_TOKEN}"
[routes]
chat = ["gotify", "log"]
call = ["gotify", "log"]
file = ["gotify", "log"]
system = ["gotify", "log"]
[queue]
initial_backoff = "50ms"
max_backoff = "200ms"
poll_interval = "20ms"
lease = "3s"
[breaker]
failure_threshold = 0
[server]
data_dir = "{}"
admin_bind = "127.0.0.1:0"
"#,
        data_dir.display()
    );
    Figment::from(Toml::string(&base)).merge(Toml::string(extra))
}

/// Starts a server in-process on a free loopback port.
pub async fn start(figment: &Figment) -> ServerHandle {
    // Errors the server logs are shown with a failing test's output.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(
            std::env::var("RUST_LOG").unwrap_or_else(|_| "error".into()),
        ))
        .with_test_writer()
        .try_init();
    let config = Config::from_figment(figment).expect("test config is valid");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    mesh_server::start(config, figment, Some(listener))
        .await
        .expect("server starts")
}

/// Starts a server that must refuse to start: its error, as text.
pub async fn start_err(figment: &Figment, why: &str) -> String {
    let config = Config::from_figment(figment).expect("dispatcher config");
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    mesh_server::start(config, figment, Some(listener))
        .await
        .expect_err(why)
        .to_string()
}

/// An environment variable naming a server a test needs (scripts/test sets
/// them): under CI it must be set; elsewhere the test is skipped, saying so.
pub fn needed(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{var} is not set: under CI these tests must run (scripts/test sets it)")
        }
        _ => {
            eprintln!("SKIPPED: {var} not set (run scripts/test)");
            None
        }
    }
}

/// A new, empty database on the PostgreSQL server at `admin` (a URL naming a
/// database): the new database's URL.
pub async fn create_database(admin: &str) -> String {
    let (client, conn) = tokio_postgres::connect(admin, tokio_postgres::NoTls)
        .await
        .expect("connect to the test cluster");
    tokio::spawn(conn);
    let name = format!(
        "mesh_test_{}",
        mesh_notify::core::NotificationId::new()
            .to_string()
            .replace('-', "")
    );
    client
        .batch_execute(&format!("CREATE DATABASE {name}"))
        .await
        .expect("create database");
    let (base, _) = admin.rsplit_once('/').expect("URL with a database");
    format!("{base}/{name}")
}

/// Polls `f` every 20 ms until it is true; panics with `what` after 10 s.
pub async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Like [`eventually`], for a condition that needs to await.
pub async fn eventually_async<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Outbox counters of a running server.
pub async fn outbox_stats(server: &ServerHandle) -> mesh_notify::core::OutboxStats {
    server
        .dispatcher()
        .outbox()
        .expect("outbox configured")
        .stats()
        .await
        .expect("stats")
}

/// Waits until every committed push is expanded (the deferred fan-out) and the
/// outbox has nothing pending.
pub async fn outbox_drained(server: &ServerHandle) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let backlog = server.fanout_backlog().await.expect("fan-out backlog");
        let s = outbox_stats(server).await;
        if backlog == 0 && s.pending == 0 {
            return;
        }
        assert!(Instant::now() < deadline, "outbox still has {s:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A logged-in user.
#[derive(Debug, Clone)]
pub struct User {
    pub id: i64,
    pub username: String,
    pub token: String,
}

/// HTTP API client for one server.
#[derive(Clone)]
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(server: &ServerHandle) -> Self {
        Self {
            base: format!("http://{}", server.addr()),
            http: reqwest::Client::new(),
        }
    }

    /// GET/POST/PUT/DELETE with an optional bearer token; returns (status, JSON body or Null).
    pub async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let url = format!("{}{}", self.base, path);
        let mut req = match method {
            "GET" => self.http.get(url),
            "POST" => self.http.post(url),
            "PUT" => self.http.put(url),
            "DELETE" => self.http.delete(url),
            other => panic!("method {other}"),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.expect("request");
        let status = resp.status().as_u16();
        let text = resp.text().await.expect("body");
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    pub async fn register_and_login(&self, username: &str, display_name: &str) -> User {
        let password = format!("pw-{username}-secret");
        let (status, body) = self
            .call(
                "POST",
                "/api/register",
                None,
                Some(json!({"username": username, "password": password, "display_name": display_name})),
            )
            .await;
        assert_eq!(status, 201, "register {username}: {body}");
        let (status, body) = self
            .call(
                "POST",
                "/api/login",
                None,
                Some(json!({"username": username, "password": password})),
            )
            .await;
        assert_eq!(status, 200, "login {username}: {body}");
        User {
            id: body["user"]["id"].as_i64().expect("user id"),
            username: username.into(),
            token: body["token"].as_str().expect("token").into(),
        }
    }

    pub async fn create_room(&self, owner: &User, name: &str) -> i64 {
        let (status, body) = self
            .call(
                "POST",
                "/api/rooms",
                Some(&owner.token),
                Some(json!({"name": name})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
        body["room"]["id"].as_i64().expect("room id")
    }

    /// `by` invites `username` into `room`: (status, body).
    pub async fn send_invite(&self, by: &User, room: i64, username: &str) -> (u16, Value) {
        self.call(
            "POST",
            &format!("/api/rooms/{room}/invite"),
            Some(&by.token),
            Some(json!({"username": username})),
        )
        .await
    }

    /// `invitee`'s pending invitations.
    pub async fn invites(&self, invitee: &User) -> Vec<Value> {
        let (status, body) = self
            .call("GET", "/api/invites", Some(&invitee.token), None)
            .await;
        assert_eq!(status, 200, "{body}");
        body["invites"].as_array().cloned().unwrap_or_default()
    }

    /// `by` invites `invitee` into `room` and `invitee` accepts: a member. The
    /// invitee is connected meanwhile, so the invitation reaches them as a live
    /// `room.invited` event (no push: tests count pushes).
    pub async fn invite(&self, by: &User, room: i64, invitee: &User) {
        let ws_base = self.base.replacen("http://", "ws://", 1);
        let mut ws = Ws::connect_url(&format!("{ws_base}/ws"), &invitee.token).await;
        ws.sync().await;
        let (status, body) = self.send_invite(by, room, &invitee.username).await;
        assert!(status == 201 || status == 200, "invite: {status} {body}");
        let id = body["invite"]["id"].as_i64().expect("invite id");
        if status == 201 {
            let event = ws.wait_type("room.invited").await;
            assert_eq!(event["invite"]["id"], id, "{event}");
        }
        ws.close().await;
        let (status, body) = self
            .call(
                "POST",
                &format!("/api/invites/{id}/accept"),
                Some(&invitee.token),
                None,
            )
            .await;
        assert_eq!(status, 200, "accept: {body}");
        assert_eq!(body["room"]["id"], room, "{body}");
    }

    /// `PUT /api/me/preferences` as `user`.
    pub async fn put_preferences(&self, user: &User, prefs: Value) -> (u16, Value) {
        self.call("PUT", "/api/me/preferences", Some(&user.token), Some(prefs))
            .await
    }

    pub async fn history(&self, user: &User, room: i64) -> Vec<Value> {
        let (status, body) = self
            .call(
                "GET",
                &format!("/api/rooms/{room}/messages"),
                Some(&user.token),
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body["messages"].as_array().cloned().unwrap_or_default()
    }
}

/// A WebSocket client.
pub struct Ws {
    pub ws: WebSocketStream<MaybeTlsStream<TcpStream>>,
}

impl Ws {
    /// Connects with `Authorization: Bearer`.
    pub async fn connect(server: &ServerHandle, token: &str) -> Self {
        Self::connect_url(&format!("ws://{}/ws", server.addr()), token).await
    }

    /// Connects to `url` with `Authorization: Bearer`.
    pub async fn connect_url(url: &str, token: &str) -> Self {
        let mut req = url.into_client_request().expect("request");
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        let (ws, _) = tokio_tungstenite::connect_async(req)
            .await
            .expect("websocket connects");
        Self { ws }
    }

    /// One round trip: after it, the server has registered this connection.
    pub async fn sync(&mut self) {
        self.send(json!({"type": "sync"})).await;
        self.wait_for("the answer to a sync", |v| {
            v["type"] == "error" && v["code"] == "unknown_type"
        })
        .await;
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// The next JSON event (5 s deadline).
    pub async fn next(&mut self) -> Value {
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(5), self.ws.next())
                .await
                .expect("an event within 5 s")
                .expect("connection open")
                .expect("frame");
            match msg {
                Message::Text(t) => return serde_json::from_str(t.as_str()).expect("JSON event"),
                Message::Close(c) => panic!("closed: {c:?}"),
                _ => continue,
            }
        }
    }

    /// Skips events until one matches.
    pub async fn wait_for(&mut self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            let v = self.next().await;
            if pred(&v) {
                return v;
            }
        }
    }

    /// Waits for an event of this type.
    pub async fn wait_type(&mut self, ty: &str) -> Value {
        self.wait_for(ty, |v| v["type"] == ty).await
    }

    pub async fn join(&mut self, room: i64) -> Value {
        self.send(json!({"type": "room.join", "room_id": room}))
            .await;
        self.wait_for("join ack or error", |v| {
            (v["type"] == "ack" && v["for"] == "room.join") || v["type"] == "error"
        })
        .await
    }

    /// Sends a chat message and waits for its ack (or error).
    pub async fn say(&mut self, room: i64, text: &str) -> Value {
        self.send(json!({"type": "chat.message.send", "room_id": room, "text": text, "client_id": text.chars().take(32).collect::<String>()}))
            .await;
        self.wait_for("chat ack or error", |v| {
            (v["type"] == "ack" && v["for"] == "chat.message.send") || v["type"] == "error"
        })
        .await
    }

    /// Waits for the server to close this connection.
    pub async fn expect_closed_within(mut self, within: Duration) {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.ws.next()).await {
                Err(_) => panic!("the connection was not closed within {within:?}"),
                Ok(None) | Ok(Some(Err(_))) | Ok(Some(Ok(Message::Close(_)))) => return,
                Ok(Some(Ok(_))) => continue,
            }
        }
    }

    pub async fn close(mut self) {
        let _ = self.ws.close(None).await;
        // Drain until the server's close answer so the server has seen it.
        while let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_secs(5), self.ws.next()).await
        {
            if matches!(m, Message::Close(_)) {
                break;
            }
        }
    }
}

/// Waits for `presence` of `user` with `status` in `room`.
pub async fn presence(ws: &mut Ws, room: i64, user: &User, status: &str) {
    let (id, status) = (user.id, status.to_string());
    ws.wait_for("presence", move |v| {
        v["type"] == "presence"
            && v["room_id"] == room
            && v["user"]["id"] == id
            && v["status"] == status.as_str()
    })
    .await;
}
