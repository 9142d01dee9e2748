//! Black box, the way a user runs it: the built `mesh-server` binary with the
//! default configuration (no config file) and only `GOTIFY_URL`/`GOTIFY_TOKEN`
//! set, a fake Gotify on loopback, real HTTP and WebSocket clients. The seed's
//! promise: when Gotify hangs or is down (even across a SIGKILL), every chat
//! notification queued meanwhile reaches Gotify exactly once when it is back.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use mesh_notify_testkit::gotify::{FakeGotify, Mode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::Message;

const APP_TOKEN: &str = "AdefaultCfgTok";

/// The server binary, running in `dir` (its `data/` lives there).
struct Server {
    child: Child,
    base: String,
}

impl Server {
    fn start(dir: &Path, gotify_url: &str) -> Self {
        Self::start_with(dir, gotify_url, &[])
    }

    fn start_with(dir: &Path, gotify_url: &str, env: &[(&str, &str)]) -> Self {
        let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-server"))
            .current_dir(dir)
            .env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .envs(
                [("GOTIFY_URL", gotify_url), ("GOTIFY_TOKEN", APP_TOKEN)]
                    .into_iter()
                    .filter(|_| !gotify_url.is_empty()),
            )
            .env("MESH_NOTIFY_SERVER__BIND", "127.0.0.1:0")
            .env("MESH_NOTIFY_SERVER__ADMIN_BIND", "127.0.0.1:0")
            // 20 messages back to back plus a join: above the default burst of 20
            // now that answers are not held back by Nagle's algorithm.
            .env("MESH_NOTIFY_SERVER__MESSAGE_BURST", "100")
            // These tests count one push per message to check exactly-once delivery;
            // coalescing them into summaries is tested in digest.rs.
            .env("MESH_NOTIFY_SERVER__COALESCE_WINDOW", "0s")
            .env("RUST_LOG", "info")
            .envs(env.iter().copied())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("mesh-server starts");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let addr = rest.split_whitespace().next().unwrap_or("").to_owned();
                    let _ = tx.send(addr);
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("mesh-server says where it listens");
        Self {
            child,
            base: format!("http://{addr}"),
        }
    }

    /// SIGTERM, then waits up to `within` for the exit; returns the status.
    fn terminate(mut self, within: Duration) -> (std::process::ExitStatus, Duration) {
        let started = Instant::now();
        // SAFETY: signalling our own child by its pid.
        unsafe {
            libc::kill(self.child.id() as i32, libc::SIGTERM);
        }
        loop {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return (status, started.elapsed());
            }
            assert!(
                started.elapsed() < within,
                "mesh-server did not exit within {within:?} of SIGTERM"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn kill9(mut self) {
        // SIGKILL: no shutdown code runs.
        self.child.kill().expect("kill");
        let _ = self.child.wait();
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Value) -> Value {
        let http = reqwest::Client::new();
        let url = format!("{}{path}", self.base);
        let mut req = match method {
            "POST" if body.is_null() => http.post(url),
            "POST" => http.post(url).json(&body),
            _ => http.get(url),
        };
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        let resp = req.send().await.expect("request");
        assert!(
            resp.status().is_success(),
            "{method} {path}: {}",
            resp.status()
        );
        resp.json().await.unwrap_or(Value::Null)
    }

    async fn user(&self, name: &str) -> (i64, String) {
        let pw = format!("pw-{name}-long-enough");
        self.call(
            "POST",
            "/api/register",
            None,
            json!({"username": name, "password": pw, "display_name": name}),
        )
        .await;
        let v = self
            .call(
                "POST",
                "/api/login",
                None,
                json!({"username": name, "password": pw}),
            )
            .await;
        (
            v["user"]["id"].as_i64().expect("id"),
            v["token"].as_str().expect("token").to_owned(),
        )
    }

    /// Alice and Bob in a room; Alice connected and joined, Bob absent.
    async fn scene(&self) -> (Ws, i64) {
        let (_, alice) = self.user("alice").await;
        let (_, bob) = self.user("bob").await;
        let room = self
            .call(
                "POST",
                "/api/rooms",
                Some(&alice),
                json!({"name": "Test Gotify"}),
            )
            .await["room"]["id"]
            .as_i64()
            .expect("room");
        // Bob is connected when invited (a live `room.invited`, no push), accepts,
        // and goes away.
        let mut bob_ws = Ws::connect(&self.base, &bob).await;
        bob_ws.sync().await;
        let invite = self
            .call(
                "POST",
                &format!("/api/rooms/{room}/invite"),
                Some(&alice),
                json!({"username": "bob"}),
            )
            .await;
        let invite = invite["invite"]["id"].as_i64().expect("invite id");
        // An invitation is not membership: Bob accepts it.
        self.call(
            "POST",
            &format!("/api/invites/{invite}/accept"),
            Some(&bob),
            Value::Null,
        )
        .await;
        drop(bob_ws);
        let mut ws = Ws::connect(&self.base, &alice).await;
        ws.request(json!({"type": "room.join", "room_id": room}), "room.join")
            .await;
        (ws, room)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Ws(
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
);

impl Ws {
    async fn connect(base: &str, token: &str) -> Self {
        let mut req = format!("{}/ws", base.replacen("http://", "ws://", 1))
            .into_client_request()
            .expect("request");
        req.headers_mut().insert(
            "authorization",
            format!("Bearer {token}").parse().expect("header"),
        );
        Self(tokio_tungstenite::connect_async(req).await.expect("ws").0)
    }

    /// Sends and waits for the ack of `ty`.
    async fn request(&mut self, v: Value, ty: &str) {
        self.0
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            assert!(Instant::now() < deadline, "no ack for {ty}");
            let msg = tokio::time::timeout(Duration::from_secs(10), self.0.next())
                .await
                .expect("event")
                .expect("open")
                .expect("frame");
            if let Message::Text(t) = msg {
                let e: Value = serde_json::from_str(t.as_str()).expect("json");
                assert_ne!(e["type"], "error", "{e}");
                if e["type"] == "ack" && e["for"] == ty {
                    return;
                }
            }
        }
    }

    /// One round trip (any answer): the server has registered the connection.
    async fn sync(&mut self) {
        self.0
            .send(Message::text(json!({"type": "sync"}).to_string()))
            .await
            .expect("send");
        loop {
            let msg = tokio::time::timeout(Duration::from_secs(10), self.0.next())
                .await
                .expect("an answer")
                .expect("open")
                .expect("frame");
            if matches!(msg, Message::Text(_)) {
                return;
            }
        }
    }

    async fn say(&mut self, room: i64, text: &str) {
        self.request(
            json!({"type": "chat.message.send", "room_id": room, "text": text, "client_id": text}),
            "chat.message.send",
        )
        .await;
    }
}

/// Message text → how many times Gotify received it.
fn received(gotify: &FakeGotify) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for msg in gotify.messages() {
        *m.entry(msg.message).or_insert(0) += 1;
    }
    m
}

async fn until(what: &str, limit: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gotify_hung_then_back_every_queued_notification_arrives_exactly_once() {
    let gotify = FakeGotify::start(&[(APP_TOKEN, 1)]).await.expect("fake");
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &gotify.url());
    let (mut alice, room) = server.scene().await;
    gotify.set_mode(Mode::Hang);
    let hung_at = Instant::now();
    let texts: Vec<String> = (0..20).map(|i| format!("pendant la panne {i}")).collect();
    for t in &texts {
        alice.say(room, t).await;
    }
    // Gotify hangs for 10 s, then answers again.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(hung_at.elapsed())).await;
    assert!(
        gotify.messages().is_empty(),
        "nothing can arrive while hung"
    );
    gotify.set_mode(Mode::Normal);
    until("all 20 reach Gotify", Duration::from_secs(60), || {
        gotify.messages().len() >= 20
    })
    .await;
    // Anything extra (a duplicate) would show up within a few more probes.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = received(&gotify);
    let want: BTreeMap<String, usize> = texts.iter().map(|t| (t.clone(), 1)).collect();
    assert_eq!(
        got, want,
        "every notification exactly once, none to the log only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gotify_down_server_sigkilled_and_restarted_every_notification_arrives_exactly_once() {
    let mut gotify = FakeGotify::start(&[(APP_TOKEN, 1)]).await.expect("fake");
    gotify.stop(); // connection refused
    let dir = tempfile::tempdir().expect("dir");
    let server = Server::start(dir.path(), &gotify.url());
    let (mut alice, room) = server.scene().await;
    let texts: Vec<String> = (0..10).map(|i| format!("avant le crash {i}")).collect();
    for t in &texts {
        alice.say(room, t).await;
    }
    // Let the workers fail on them (and open the circuit), then SIGKILL.
    tokio::time::sleep(Duration::from_secs(2)).await;
    drop(alice);
    server.kill9();

    let server = Server::start(dir.path(), &gotify.url());
    tokio::time::sleep(Duration::from_secs(1)).await;
    gotify.restart().await.expect("gotify back");
    until("all 10 reach Gotify", Duration::from_secs(60), || {
        gotify.messages().len() >= 10
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = received(&gotify);
    let want: BTreeMap<String, usize> = texts.iter().map(|t| (t.clone(), 1)).collect();
    assert_eq!(got, want, "every notification exactly once after the crash");
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_a_hung_gotify_exits_in_the_grace_period_and_loses_nothing() {
    let gotify = FakeGotify::start(&[(APP_TOKEN, 1)]).await.expect("fake");
    let dir = tempfile::tempdir().expect("dir");
    let grace = [("MESH_NOTIFY_QUEUE__SHUTDOWN_GRACE", "1s")];
    let server = Server::start_with(dir.path(), &gotify.url(), &grace);
    let (mut alice, room) = server.scene().await;
    gotify.set_mode(Mode::Hang);
    alice.say(room, "en vol").await;
    until("the delivery is in flight", Duration::from_secs(10), || {
        gotify.requests() >= 1
    })
    .await;
    drop(alice);
    // The send hangs (5 s provider timeout); the grace is 1 s.
    let (status, took) = server.terminate(Duration::from_secs(20));
    assert!(status.success(), "exit status {status:?}");
    assert!(
        took < Duration::from_secs(5),
        "exited after {took:?}, before the hung send timed out"
    );
    // Next start, Gotify answering: delivered exactly once, without waiting for a lease.
    gotify.set_mode(Mode::Normal);
    let server = Server::start(dir.path(), &gotify.url());
    until(
        "delivered after the restart",
        Duration::from_secs(30),
        || !gotify.messages().is_empty(),
    )
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let got = received(&gotify);
    assert_eq!(got.get("en vol"), Some(&1), "{got:?}");
    assert_eq!(got.len(), 1);
    drop(server);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rotating_the_gotify_token_file_needs_no_restart_and_loses_nothing() {
    // Gotify only knows the new token: the old one was revoked there first.
    let gotify = FakeGotify::start(&[("AnewRotatedTok", 1)])
        .await
        .expect("fake");
    let dir = tempfile::tempdir().expect("dir");
    let token_file = dir.path().join("gotify-token");
    std::fs::write(&token_file, "AoldRevokedTok\n").expect("token");
    let config = dir.path().join("mesh.toml");
    std::fs::write(
        &config,
        format!(
            "[providers.gotify]\nurl = \"{}\"\ntoken_file = \"{}\"\n",
            gotify.url(),
            token_file.display()
        ),
    )
    .expect("config");
    let config_arg = config.display().to_string();
    let server = Server::start_with(
        dir.path(),
        "",
        &[("MESH_NOTIFY_CONFIG", config_arg.as_str())],
    );
    let (mut alice, room) = server.scene().await;
    let texts: Vec<String> = (0..5).map(|i| format!("pendant la rotation {i}")).collect();
    for t in &texts {
        alice.say(room, t).await;
    }
    // The old token is refused: nothing arrives, nothing is dead-lettered.
    until("the old token is tried", Duration::from_secs(10), || {
        gotify.requests() >= 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(gotify.messages().is_empty());
    // Rotate the file (as a secret update does): no restart, no signal.
    std::fs::write(&token_file, "AnewRotatedTok\n").expect("rotate");
    until(
        "all queued notifications delivered",
        Duration::from_secs(30),
        || gotify.messages().len() >= 5,
    )
    .await;
    // SIGHUP reloads too, and does not stop the server.
    // SAFETY: signalling our own child.
    unsafe {
        libc::kill(server.child.id() as i32, libc::SIGHUP);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    alice.say(room, "après le SIGHUP").await;
    until("delivered after SIGHUP", Duration::from_secs(15), || {
        gotify.messages().len() >= 6
    })
    .await;
    let msgs = gotify.messages();
    assert!(
        msgs.iter().all(|m| m.token == "AnewRotatedTok"),
        "every delivery used the new token"
    );
    let got = received(&gotify);
    for t in &texts {
        assert_eq!(got.get(t), Some(&1), "{got:?}");
    }
    drop(server);
}
