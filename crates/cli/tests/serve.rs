//! `mesh-notify serve` end to end, as a user runs it: the built binary, a config
//! file, real HTTP clients (reqwest, curl-style requests, the Python example), the
//! fake Gotify as the downstream provider.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use mesh_notify_testkit::gotify::FakeGotify;
use serde_json::{json, Value};

const DOWNSTREAM: &str = "AdownstreamTok1";
const INGEST: &str = "AmeshIngestTok";
const API_KEY: &str = "backend-key-0123456789";

struct Serve {
    child: Child,
    base: String,
}

impl Serve {
    fn start(dir: &Path, gotify_url: &str) -> Self {
        let config = dir.join("mesh.toml");
        std::fs::write(
            &config,
            format!(
                r#"
[outbox]
path = "{outbox}"
[providers.gotify]
url = "{gotify_url}"
token = "{DOWNSTREAM}"
[routes]
chat = ["gotify"]
system = ["gotify"]
[breaker]
probe_interval = "100ms"
probe_max_interval = "300ms"
[serve]
bind = "127.0.0.1:0"
[serve.gotify_apps.mesh]
token = "{INGEST}"
kind = "chat"
[serve.api_keys.backend]
key = "{API_KEY}"
"#,
                outbox = dir.join("outbox.sqlite3").display()
            ),
        )
        .unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_mesh-notify"))
            .arg("--config")
            .arg(&config)
            .arg("serve")
            .env_remove("GOTIFY_URL")
            .env_remove("GOTIFY_TOKEN")
            .env("LOG_LEVEL", "info")
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let stderr = child.stderr.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if let Some(rest) = line.split("listening on http://").nth(1) {
                    let _ = tx.send(rest.split_whitespace().next().unwrap_or("").to_owned());
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("serve says where it listens");
        Self {
            child,
            base: format!("http://{addr}"),
        }
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn until(what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_seed_curl_command_gets_gotifys_answer_and_reaches_the_provider() {
    let gotify = FakeGotify::start(&[(DOWNSTREAM, 7)]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &gotify.url());
    let http = reqwest::Client::new();
    // curl -X POST "$URL/message?token=…" -H 'Content-Type: application/json' -d '{…}'
    let resp = http
        .post(format!("{}/message?token={INGEST}", serve.base))
        .header("Content-Type", "application/json")
        .body(r#"{"title":"Test cURL","message":"Hello from cURL","priority":5}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.unwrap();
    for field in ["id", "appid", "message", "title", "priority", "date"] {
        assert!(body.get(field).is_some(), "answer has `{field}`: {body}");
    }
    assert_eq!(body["title"], "Test cURL");
    assert_eq!(body["message"], "Hello from cURL");
    assert_eq!(body["priority"], 5);
    assert_eq!(body["appid"], 1);
    until("delivered downstream", || !gotify.messages().is_empty()).await;
    let m = &gotify.messages()[0];
    assert_eq!(
        (m.title.as_str(), m.message.as_str()),
        ("Test cURL", "Hello from cURL")
    );
    assert_eq!(m.token, DOWNSTREAM, "sent with the downstream token");

    // The other auth forms and body encodings Gotify accepts; extras kept.
    let r = http
        .post(format!("{}/message", serve.base))
        .header("X-Gotify-Key", INGEST)
        .json(&json!({"message": "with extras", "extras": {"home::x": {"y": 1}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["extras"]["home::x"]["y"], 1, "{b}");
    assert_eq!(
        b["title"], "mesh",
        "no title: the application's name, as Gotify does"
    );
    let r = http
        .post(format!("{}/message", serve.base))
        .bearer_auth(INGEST)
        .header("Content-Type", "application/x-www-form-urlencoded")
        .body("message=as+a+form&priority=8")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    until("three delivered", || gotify.messages().len() >= 3).await;
    let extras = gotify
        .messages()
        .into_iter()
        .find(|m| m.message == "with extras")
        .unwrap()
        .extras;
    assert_eq!(extras["home::x"]["y"], 1, "extras passed on: {extras}");

    // What Gotify refuses, answered as Gotify answers.
    let r = http
        .post(format!("{}/message?token=nope", serve.base))
        .json(&json!({"message": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["error"], "Unauthorized");
    assert_eq!(b["errorCode"], 401);
    let r = http
        .post(format!("{}/message?token={INGEST}", serve.base))
        .json(&json!({"title": "no message"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await.unwrap();
    assert!(
        b["errorDescription"].as_str().unwrap().contains("message"),
        "{b}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_provider_down_it_still_answers_200_and_delivers_after_a_restart() {
    let mut gotify = FakeGotify::start(&[(DOWNSTREAM, 7)]).await.unwrap();
    gotify.stop();
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &gotify.url());
    let http = reqwest::Client::new();
    for i in 0..5 {
        let r = http
            .post(format!("{}/message?token={INGEST}", serve.base))
            .json(&json!({"message": format!("queued {i}")}))
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 200, "durable even with Gotify down");
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    drop(serve); // killed
    let serve = Serve::start(dir.path(), &gotify.url());
    gotify.restart().await.unwrap();
    until("all five delivered", || gotify.messages().len() >= 5).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let mut got: Vec<String> = gotify
        .messages()
        .iter()
        .map(|m| m.message.clone())
        .collect();
    got.sort();
    assert_eq!(
        got,
        (0..5).map(|i| format!("queued {i}")).collect::<Vec<_>>()
    );
    drop(serve);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_native_api_submits_reports_every_attempt_and_honours_idempotency() {
    let gotify = FakeGotify::start(&[(DOWNSTREAM, 7)]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &gotify.url());
    let http = reqwest::Client::new();
    let url = format!("{}/v1/notifications", serve.base);
    let req =
        json!({"kind": "system", "title": "Backup", "body": "done", "recipient": {"id": "ops"}});
    let r = http.post(&url).json(&req).send().await.unwrap();
    assert_eq!(r.status(), 401, "no API key");
    let r = http
        .post(&url)
        .bearer_auth(API_KEY)
        .json(&json!({"kind": "nope", "recipient": {"id": "x"}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let b: Value = r.json().await.unwrap();
    assert_eq!(b["field"], "kind", "{b}");
    let send = || {
        http.post(&url)
            .bearer_auth(API_KEY)
            .header("Idempotency-Key", "backup-2026-12-04")
            .json(&req)
            .send()
    };
    let r = send().await.unwrap();
    assert_eq!(r.status(), 202);
    let a: Value = r.json().await.unwrap();
    let id = a["id"].as_str().unwrap().to_owned();
    let again: Value = send().await.unwrap().json().await.unwrap();
    assert_eq!(again["id"], id.as_str(), "same key, same notification");
    until("delivered", || !gotify.messages().is_empty()).await;
    let status_url = format!("{}/v1/notifications/{id}", serve.base);
    let deadline = Instant::now() + Duration::from_secs(10);
    let st = loop {
        let st: Value = http
            .get(&status_url)
            .bearer_auth(API_KEY)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        if st["status"] == "delivered" {
            break st;
        }
        assert!(Instant::now() < deadline, "{st}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(st["delivered_by"], "gotify");
    assert_eq!(st["attempts"][0]["provider"], "gotify");
    assert_eq!(st["attempts"][0]["outcome"], "delivered");
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(gotify.messages().len(), 1, "the replay was not sent twice");
    let spec: Value = http
        .get(format!("{}/v1/openapi.json", serve.base))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(spec["paths"]["/v1/notifications"].is_object());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_example_works_against_serve() {
    let gotify = FakeGotify::start(&[(DOWNSTREAM, 7)]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let serve = Serve::start(dir.path(), &gotify.url());
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../examples/python/mesh_notify_client.py"
    );
    for args in [
        vec![
            "gotify",
            serve.base.as_str(),
            INGEST,
            "Depuis Python",
            "Salut",
        ],
        vec!["native", serve.base.as_str(), API_KEY, "Natif", "Bonjour"],
    ] {
        let mut cmd = Command::new("python3");
        cmd.arg(script).args(&args);
        let out = tokio::task::spawn_blocking(move || cmd.output().unwrap())
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    until("both delivered", || gotify.messages().len() >= 2).await;
}
