//! A loopback fake of an ntfy server's publish API, following ntfy's server source
//! (`server/server.go`, `server/errors.go`):
//!
//! * `PUT`/`POST /` with a JSON body publishes as JSON: `topic` (must match
//!   `^[-_A-Za-z0-9]{1,64}$`, else 400 `40009`), `message` (empty: `triggered`),
//!   `title`, `priority` (1–5, else 400 `40007`), `tags`, `click`, `markdown`.
//!   A body that is not JSON gets 400 `40024`.
//! * Access control (when the fake is given tokens): `Authorization: Bearer`
//!   with an unknown token gets 401 `40101`; a token (or anonymous access)
//!   without write permission on the topic gets 403 `40301`.
//! * Errors are ntfy's JSON `{"code","http","error","link"}`.
//! * 200 answers the message: `{"id","time","expires","event":"message","topic",
//!   "message","title","priority","tags","click","content_type"}`.
//! * `GET /v1/health` answers `{"healthy":true}`.
//!
//! Failure modes: answer a status with an ntfy error code (e.g. 429 `42901`, with
//! an optional `Retry-After`), or hang.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

use crate::harness::LoopbackServer;

/// How the fake answers publishing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Mode {
    /// Behave like ntfy.
    #[default]
    Normal,
    /// Answer this HTTP status with this ntfy error code, and an optional
    /// `Retry-After`.
    Error {
        /// HTTP status.
        status: u16,
        /// ntfy's error code (`42901`, `50001`, ...).
        code: u32,
        /// `Retry-After` header, if any.
        retry_after: Option<String>,
    },
    /// Accept the connection and never answer.
    Hang,
}

/// A message the fake published.
#[derive(Debug, Clone)]
pub struct Published {
    /// The message id the fake answered with.
    pub id: String,
    /// Topic.
    pub topic: String,
    /// Title (empty when absent).
    pub title: String,
    /// Message.
    pub message: String,
    /// Priority (1–5), when sent.
    pub priority: Option<u8>,
    /// Tags.
    pub tags: Vec<String>,
    /// Click URL (empty when absent).
    pub click: String,
    /// Whether the message is markdown.
    pub markdown: bool,
    /// The bearer token used, when any.
    pub token: Option<String>,
    /// All request headers, lower-case names.
    pub headers: HashMap<String, String>,
}

#[derive(Default)]
struct Inner {
    /// token → topics it may write; `None` = no access control.
    acl: Option<HashMap<String, HashSet<String>>>,
    mode: Mode,
    published: Vec<Published>,
    requests: usize,
}

#[derive(Clone, Default)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    next_id: Arc<AtomicU64>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running fake ntfy server on loopback.
pub struct FakeNtfy {
    server: LoopbackServer,
    shared: Shared,
}

impl FakeNtfy {
    /// A fake without access control: anyone may publish to any topic.
    pub async fn start() -> std::io::Result<Self> {
        Self::start_with(None).await
    }

    /// A fake with access control: each token may write the topics listed;
    /// anonymous publishing is forbidden.
    pub async fn with_tokens(tokens: &[(&str, &[&str])]) -> std::io::Result<Self> {
        let acl = tokens
            .iter()
            .map(|(t, topics)| {
                (
                    t.to_string(),
                    topics.iter().map(|s| s.to_string()).collect(),
                )
            })
            .collect();
        Self::start_with(Some(acl)).await
    }

    async fn start_with(acl: Option<HashMap<String, HashSet<String>>>) -> std::io::Result<Self> {
        let shared = Shared::default();
        shared.lock().acl = acl;
        let app = Router::new()
            .route("/", post(publish).put(publish))
            .route("/v1/health", get(health))
            .with_state(shared.clone());
        let server = LoopbackServer::start(app).await?;
        Ok(Self { server, shared })
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Changes how publishing is answered.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.lock().mode = mode;
    }

    /// Messages published so far.
    pub fn published(&self) -> Vec<Published> {
        self.shared.lock().published.clone()
    }

    /// Publish requests seen so far, accepted or not.
    pub fn requests(&self) -> usize {
        self.shared.lock().requests
    }

    /// Stops serving (connections are refused).
    pub fn stop(&mut self) {
        self.server.stop();
    }
}

/// ntfy's error body.
fn ntfy_error(status: u16, code: u32, message: &str) -> Response {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (
        status,
        Json(json!({ "code": code, "http": status.as_u16(), "error": message, "link": "https://ntfy.sh/docs/publish/" })),
    )
        .into_response()
}

fn topic_is_valid(topic: &str) -> bool {
    (1..=64).contains(&topic.len())
        && topic
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

async fn publish(State(shared): State<Shared>, headers: HeaderMap, body: Bytes) -> Response {
    let mode = {
        let mut inner = shared.lock();
        inner.requests += 1;
        inner.mode.clone()
    };
    match mode {
        Mode::Normal => {}
        Mode::Hang => return std::future::pending().await,
        Mode::Error {
            status,
            code,
            retry_after,
        } => {
            let mut response = ntfy_error(status, code, "fake error");
            if let Some(r) = retry_after.and_then(|r| r.parse().ok()) {
                response.headers_mut().insert("retry-after", r);
            }
            return response;
        }
    }
    // Authentication first, as ntfy does (maybeAuthenticate).
    let token = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::to_owned);
    let acl = shared.lock().acl.clone();
    if let (Some(acl), Some(t)) = (&acl, &token) {
        if !acl.contains_key(t) {
            return ntfy_error(401, 40101, "unauthorized");
        }
    }
    let Ok(m) = serde_json::from_slice::<Value>(&body) else {
        return ntfy_error(
            400,
            40024,
            "invalid request: request body must be valid JSON",
        );
    };
    let text = |k: &str| m.get(k).and_then(Value::as_str).unwrap_or("").to_string();
    let topic = text("topic");
    if !topic_is_valid(&topic) {
        return ntfy_error(400, 40009, "invalid request: topic invalid");
    }
    if let Some(acl) = &acl {
        let allowed = token
            .as_ref()
            .and_then(|t| acl.get(t))
            .is_some_and(|topics| topics.contains(&topic));
        if !allowed {
            return ntfy_error(403, 40301, "forbidden");
        }
    }
    let priority = match m.get("priority").and_then(Value::as_u64) {
        None | Some(0) => None,
        Some(p @ 1..=5) => Some(p as u8),
        Some(_) => return ntfy_error(400, 40007, "invalid priority parameter"),
    };
    let mut message = text("message");
    if message.is_empty() {
        message = "triggered".into();
    }
    let tags: Vec<String> = m
        .get("tags")
        .and_then(Value::as_array)
        .map(|a| {
            a.iter()
                .filter_map(Value::as_str)
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default();
    let markdown = m.get("markdown").and_then(Value::as_bool).unwrap_or(false);
    let n = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let id = format!("fake{n:08}");
    let published = Published {
        id: id.clone(),
        topic: topic.clone(),
        title: text("title"),
        message: message.clone(),
        priority,
        tags: tags.clone(),
        click: text("click"),
        markdown,
        token,
        headers: headers
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect(),
    };
    let mut answer = json!({
        "id": id,
        "time": 1_700_000_000u64 + n,
        "expires": 1_700_043_200u64 + n,
        "event": "message",
        "topic": topic,
        "message": message,
    });
    if !published.title.is_empty() {
        answer["title"] = json!(published.title);
    }
    if let Some(p) = priority {
        answer["priority"] = json!(p);
    }
    if !tags.is_empty() {
        answer["tags"] = json!(tags);
    }
    if !published.click.is_empty() {
        answer["click"] = json!(published.click);
    }
    if markdown {
        answer["content_type"] = json!("text/markdown");
    }
    shared.lock().published.push(published);
    Json(answer).into_response()
}

async fn health() -> Response {
    Json(json!({ "healthy": true })).into_response()
}
