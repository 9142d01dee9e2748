//! A loopback fake of the Gotify server's message API, following
//! `shared/specs/gotify-openapi.json` and Gotify's observed behaviour:
//!
//! * `POST /message` looks up the application token in the order `?token=`,
//!   `X-Gotify-Key`, `Authorization: Bearer`; a missing or unknown token gets 401
//!   with Gotify's error body `{"error","errorCode","errorDescription"}`.
//! * The body is bound by content type like Gotify's gin binding: JSON only with
//!   `Content-Type: application/json`, otherwise as a form, so a JSON body sent
//!   without the JSON content type has no `message` and gets 400. An empty or
//!   missing `message` gets 400 `Field 'message' is required`.
//! * 200 answers `{"id","appid","message","title","priority","date","extras"}`.
//! * `GET /health` answers `{"health":"green","database":"green"}`.
//!
//! Failure modes for reliability tests and benchmarks: answer a status (503 with
//! an optional `Retry-After`), hang without answering, answer after a delay, or
//! refuse connections ([`FakeGotify::stop`]).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::harness::LoopbackServer;

/// How the fake answers `POST /message`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Mode {
    /// Behave like Gotify.
    #[default]
    Normal,
    /// Answer this status (with Gotify's error body) and an optional `Retry-After`.
    Status {
        /// HTTP status to return.
        status: u16,
        /// Value of the `Retry-After` header, if any.
        retry_after: Option<String>,
    },
    /// Accept the connection and never answer.
    Hang,
    /// Behave normally after a delay.
    Delay(Duration),
}

/// Where the token was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenSource {
    /// `?token=` query parameter.
    Query,
    /// `X-Gotify-Key` header.
    Header,
    /// `Authorization: Bearer` header.
    Bearer,
}

/// A message the fake accepted.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// The id the fake answered with.
    pub id: i64,
    /// Application id the token belongs to.
    pub appid: i64,
    /// The token used.
    pub token: String,
    /// Where the token was found.
    pub token_source: TokenSource,
    /// Title (empty when absent).
    pub title: String,
    /// Message body.
    pub message: String,
    /// Priority, if sent.
    pub priority: Option<i64>,
    /// Extras object (`Value::Null` when absent).
    pub extras: Value,
    /// All request headers, lower-case names.
    pub headers: HashMap<String, String>,
}

#[derive(Default)]
struct Inner {
    tokens: HashMap<String, i64>,
    mode: Mode,
    received: Vec<ReceivedMessage>,
    requests: usize,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    next_id: Arc<AtomicI64>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running fake Gotify on 127.0.0.1 (free port).
pub struct FakeGotify {
    server: LoopbackServer,
    shared: Shared,
}

impl FakeGotify {
    /// Starts a fake that knows these application tokens (token, appid).
    pub async fn start(tokens: &[(&str, i64)]) -> std::io::Result<Self> {
        let shared = Shared {
            inner: Arc::new(Mutex::new(Inner {
                tokens: tokens.iter().map(|(t, a)| (t.to_string(), *a)).collect(),
                ..Inner::default()
            })),
            next_id: Arc::new(AtomicI64::new(1)),
        };
        let server = LoopbackServer::start(app(shared.clone())).await?;
        Ok(Self { server, shared })
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// Socket address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// Changes how `POST /message` answers.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.lock().mode = mode;
    }

    /// Messages accepted so far.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.shared.lock().received.clone()
    }

    /// Requests to `POST /message` seen so far, accepted or not.
    pub fn requests(&self) -> usize {
        self.shared.lock().requests
    }

    /// Stops serving: the port is closed and connections are refused.
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Serves again on the same port after [`FakeGotify::stop`], keeping the record.
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.server.restart().await
    }
}

fn app(shared: Shared) -> Router {
    Router::new()
        .route("/message", post(create_message))
        .route("/health", get(health))
        .with_state(shared)
}

fn gotify_error(status: StatusCode, description: &str) -> Response {
    let body = json!({
        "error": status.canonical_reason().unwrap_or("Error"),
        "errorCode": status.as_u16(),
        "errorDescription": description,
    });
    (status, Json(body)).into_response()
}

async fn health() -> Json<Value> {
    Json(json!({"health": "green", "database": "green"}))
}

#[derive(Deserialize)]
struct CreateMessage {
    message: Option<String>,
    title: Option<String>,
    priority: Option<i64>,
    extras: Option<serde_json::Map<String, Value>>,
}

fn find_token(
    query: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Option<(String, TokenSource)> {
    if let Some(t) = query.get("token") {
        return Some((t.clone(), TokenSource::Query));
    }
    if let Some(t) = headers.get("x-gotify-key").and_then(|v| v.to_str().ok()) {
        return Some((t.to_string(), TokenSource::Header));
    }
    let auth = headers.get("authorization").and_then(|v| v.to_str().ok())?;
    auth.strip_prefix("Bearer ")
        .map(|t| (t.trim().to_string(), TokenSource::Bearer))
}

fn parse_form(body: &[u8]) -> CreateMessage {
    let text = String::from_utf8_lossy(body);
    let mut fields: HashMap<String, String> = HashMap::new();
    for pair in text.split('&') {
        if let Some((k, v)) = pair.split_once('=') {
            fields.insert(k.to_string(), v.replace('+', " "));
        }
    }
    CreateMessage {
        message: fields.get("message").cloned(),
        title: fields.get("title").cloned(),
        priority: fields.get("priority").and_then(|p| p.parse().ok()),
        extras: None,
    }
}

async fn create_message(
    State(shared): State<Shared>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let mode = {
        let mut inner = shared.lock();
        inner.requests += 1;
        inner.mode.clone()
    };
    match mode {
        Mode::Normal => {}
        Mode::Hang => std::future::pending::<()>().await,
        Mode::Delay(d) => tokio::time::sleep(d).await,
        Mode::Status {
            status,
            retry_after,
        } => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let mut resp = gotify_error(status, "fake gotify failure mode");
            if let Some(ra) = retry_after {
                if let Ok(v) = ra.parse() {
                    resp.headers_mut().insert("retry-after", v);
                }
            }
            return resp;
        }
    }

    let Some((token, token_source)) = find_token(&query, &headers) else {
        return gotify_error(
            StatusCode::UNAUTHORIZED,
            "you need to provide a valid access token or user credentials to access this api",
        );
    };
    let appid =
        match shared.lock().tokens.get(&token) {
            Some(appid) => *appid,
            None => return gotify_error(
                StatusCode::UNAUTHORIZED,
                "you need to provide a valid access token or user credentials to access this api",
            ),
        };

    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    let msg = if content_type.starts_with("application/json") {
        match serde_json::from_slice::<CreateMessage>(&body) {
            Ok(m) => m,
            Err(e) => return gotify_error(StatusCode::BAD_REQUEST, &e.to_string()),
        }
    } else {
        parse_form(&body)
    };
    let message = match msg.message {
        Some(m) if !m.is_empty() => m,
        _ => return gotify_error(StatusCode::BAD_REQUEST, "Field 'message' is required"),
    };
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let extras = msg.extras.map(Value::Object).unwrap_or(Value::Null);
    let title = msg.title.unwrap_or_default();
    let received = ReceivedMessage {
        id,
        appid,
        token,
        token_source,
        title: title.clone(),
        message: message.clone(),
        priority: msg.priority,
        extras: extras.clone(),
        headers: headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
    };
    shared.lock().received.push(received);
    let mut answer = json!({
        "id": id,
        "appid": appid,
        "message": message,
        "title": title,
        "priority": msg.priority.unwrap_or(0),
        "date": "2026-11-25T12:00:00.000000000Z",
    });
    if !extras.is_null() {
        answer["extras"] = extras;
    }
    Json(answer).into_response()
}
