//! `mesh-notify serve`: an HTTP front door to the delivery service, for servers
//! not written in Rust.
//!
//! * `POST /message` exactly as Gotify accepts it, so any Gotify client (the seed's
//!   Python server, curl, Apprise's `gotify://`) gains fallback and a durable queue
//!   by pointing `GOTIFY_URL` here. Each configured application token maps to a
//!   kind (its route). The message is durable before the `200`.
//! * A native API under `/v1` (API keys): submit, status with every attempt, dead
//!   letters and their re-queueing.
//! * `/health`, `/metrics`, `/v1/openapi.json`.
//!
//! The delivery workers run in the same process.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use figment::Figment;
use mesh_notify_core::{
    room_click_url, Address, AddressKind, Composer, Kind, Notification, NotificationId, Priority,
    Recipient, Room, Secret, Timestamp,
};

use crate::{Config, ConfigError, Dispatcher, Outcome, RateLimitConfig, RateLimiter};
use serde::Deserialize;
use serde_json::{json, Map, Value};

/// The committed OpenAPI document of the native API.
const OPENAPI: &str = include_str!("../../../docs/serve-openapi.json");

/// `[serve]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServeSection {
    /// Listen address (default `127.0.0.1:8180`).
    #[serde(default = "default_bind")]
    pub bind: SocketAddr,
    /// `[serve.gotify_apps.<name>]`: application tokens accepted at `POST /message`.
    #[serde(default)]
    pub gotify_apps: BTreeMap<String, GotifyApp>,
    /// `[serve.api_keys.<name>]`: keys for the native API.
    #[serde(default)]
    pub api_keys: BTreeMap<String, ApiKey>,
}

fn default_bind() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8180))
}

impl Default for ServeSection {
    fn default() -> Self {
        Self {
            bind: default_bind(),
            gotify_apps: BTreeMap::new(),
            api_keys: BTreeMap::new(),
        }
    }
}

/// One Gotify application token.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GotifyApp {
    /// The token (or `token_file`).
    pub token: Option<Secret>,
    /// File holding the token.
    pub token_file: Option<PathBuf>,
    /// The route its messages take (default `system`).
    #[serde(default = "default_kind")]
    pub kind: String,
    /// Priority when a message has none (default: the kind's).
    pub priority: Option<i64>,
}

fn default_kind() -> String {
    "system".into()
}

/// One native API key.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ApiKey {
    /// The key (or `key_file`).
    pub key: Option<Secret>,
    /// File holding the key.
    pub key_file: Option<PathBuf>,
    /// Requests per second allowed for this key (default 100, burst 200).
    pub per_second: Option<f64>,
}

struct App {
    name: String,
    appid: i64,
    token: Secret,
    kind: Kind,
    priority: Option<Priority>,
}

struct Key {
    name: String,
    key: Secret,
    limiter: RateLimiter,
}

/// What happened to a notification submitted here (bounded memory).
#[derive(Default)]
struct Statuses {
    by_id: HashMap<NotificationId, Value>,
    order: VecDeque<NotificationId>,
    idempotency: HashMap<(String, String), (NotificationId, Instant)>,
}

impl Statuses {
    const MAX: usize = 100_000;

    fn put(&mut self, id: NotificationId, v: Value) {
        if self.by_id.insert(id, v).is_none() {
            self.order.push_back(id);
            while self.order.len() > Self::MAX {
                if let Some(old) = self.order.pop_front() {
                    self.by_id.remove(&old);
                }
            }
        }
    }
}

#[derive(Clone)]
struct ServeState {
    dispatcher: Arc<Dispatcher>,
    composer: Arc<Composer>,
    apps: Arc<Vec<App>>,
    keys: Arc<Vec<Key>>,
    next_id: Arc<AtomicI64>,
    statuses: Arc<Mutex<Statuses>>,
    metrics: Option<metrics_exporter_prometheus::PrometheusHandle>,
}

impl ServeState {
    fn statuses(&self) -> std::sync::MutexGuard<'_, Statuses> {
        self.statuses.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn invalid(key: &str, message: String) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_string(),
        source_name: "configuration".into(),
        message,
    }
}

fn secret(
    key_name: &str,
    value: &Option<Secret>,
    file: &Option<PathBuf>,
) -> Result<Secret, ConfigError> {
    match (value, file) {
        (Some(v), None) if !v.expose().trim().is_empty() => Ok(v.clone()),
        (None, Some(f)) => {
            let text = std::fs::read_to_string(f).map_err(|e| {
                invalid(
                    &format!("{key_name}_file"),
                    format!("cannot read `{}`: {e}", f.display()),
                )
            })?;
            let t = text.trim();
            if t.is_empty() {
                return Err(invalid(
                    &format!("{key_name}_file"),
                    format!("`{}` is empty", f.display()),
                ));
            }
            Ok(Secret::new(t))
        }
        (Some(_), Some(_)) => Err(invalid(
            key_name,
            format!("set `{key_name}` or `{key_name}_file`, not both"),
        )),
        _ => Err(invalid(key_name, "required (or its `_file`)".into())),
    }
}

/// Reads and checks `[serve]`.
pub fn serve_section(figment: &Figment) -> Result<ServeSection, ConfigError> {
    if !figment.contains("serve") {
        return Ok(ServeSection::default());
    }
    figment.extract_inner::<ServeSection>("serve").map_err(|e| {
        let key = e.path.join(".");
        invalid(
            &if key.is_empty() { "serve".into() } else { key },
            e.to_string(),
        )
    })
}

fn build_apps(section: &ServeSection) -> Result<Vec<App>, ConfigError> {
    let mut apps = Vec::new();
    for (i, (name, app)) in section.gotify_apps.iter().enumerate() {
        let base = format!("serve.gotify_apps.{name}");
        let token = secret(&format!("{base}.token"), &app.token, &app.token_file)?;
        let kind: Kind = app
            .kind
            .parse()
            .map_err(|e: String| invalid(&format!("{base}.kind"), e))?;
        let priority = app
            .priority
            .map(Priority::new)
            .transpose()
            .map_err(|e| invalid(&format!("{base}.priority"), e.to_string()))?;
        apps.push(App {
            name: name.clone(),
            appid: i64::try_from(i).unwrap_or(i64::MAX).saturating_add(1),
            token,
            kind,
            priority,
        });
    }
    Ok(apps)
}

fn build_keys(section: &ServeSection) -> Result<Vec<Key>, ConfigError> {
    let mut keys = Vec::new();
    for (name, k) in &section.api_keys {
        let base = format!("serve.api_keys.{name}");
        let key = secret(&format!("{base}.key"), &k.key, &k.key_file)?;
        let per_second = k.per_second.unwrap_or(100.0);
        if !(per_second.is_finite() && per_second > 0.0) {
            return Err(invalid(
                &format!("{base}.per_second"),
                "must be a positive number".into(),
            ));
        }
        let burst = (per_second * 2.0).ceil().clamp(1.0, f64::from(u32::MAX)) as u32;
        keys.push(Key {
            name: name.clone(),
            key,
            limiter: RateLimiter::new(RateLimitConfig { per_second, burst }),
        });
    }
    Ok(keys)
}

/// Compares in constant time for equal lengths.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

/// Runs `serve` until `stop` resolves: on `listener` when given (tests,
/// benchmarks), else on `serve.bind`.
pub async fn run(
    config: &Config,
    figment: &Figment,
    listener: Option<tokio::net::TcpListener>,
    stop: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), String> {
    let section = serve_section(figment).map_err(|e| e.to_string())?;
    let apps = build_apps(&section).map_err(|e| e.to_string())?;
    let keys = build_keys(&section).map_err(|e| e.to_string())?;
    if apps.is_empty() && keys.is_empty() {
        tracing::warn!("serve: no [serve.gotify_apps] and no [serve.api_keys]: every request will be refused (401)");
    }
    let statuses = Arc::new(Mutex::new(Statuses::default()));
    let recorder = statuses.clone();
    let mut builder = config
        .dispatcher_builder(figment)
        .map_err(|e| e.to_string())?
        .on_outcome(move |n, o| record(&recorder, n, o));
    if let Some(outbox) = config
        .open_outbox(figment)
        .await
        .map_err(|e| e.to_string())?
    {
        builder = builder.outbox(outbox);
    } else {
        return Err("serve needs a durable outbox (outbox.backend = \"none\" is refused): a 200 promises the message is stored".into());
    }
    let dispatcher = Arc::new(builder.build().map_err(|e| e.to_string())?);
    let metrics = {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        metrics::set_global_recorder(recorder).ok().map(|()| handle)
    };
    let state = ServeState {
        dispatcher: Arc::clone(&dispatcher),
        composer: Arc::new(config.composer()),
        apps: Arc::new(apps),
        keys: Arc::new(keys),
        next_id: Arc::new(AtomicI64::new(Timestamp::now().as_millis())),
        statuses,
        metrics,
    };
    let app = Router::new()
        .route("/message", post(gotify_message))
        .route("/v1/notifications", post(native_submit))
        .route("/v1/notifications/{id}", get(native_status))
        .route("/v1/dead", get(native_dead))
        .route("/v1/dead/{id}/retry", post(native_retry))
        .route("/v1/openapi.json", get(openapi))
        .route("/health", get(health))
        .route("/metrics", get(metrics_text))
        .with_state(state);
    let listener = match listener {
        Some(l) => l,
        None => tokio::net::TcpListener::bind(section.bind)
            .await
            .map_err(|e| format!("cannot listen on serve.bind {}: {e}", section.bind))?,
    };
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let workers = dispatcher.start_workers();
    let path = std::env::var("MESH_NOTIFY_CONFIG").ok();
    let watched = config.clone();
    let _secrets = crate::SecretWatcher::spawn(
        Arc::clone(&dispatcher),
        &watched,
        Box::new(move || Config::load(path.as_deref().map(std::path::Path::new))),
        Duration::from_secs(2),
    );
    tracing::info!("mesh-notify serve listening on http://{addr}");
    let served = axum::serve(listener, app)
        .with_graceful_shutdown(stop)
        .await;
    workers.shutdown().await;
    served.map_err(|e| e.to_string())
}

fn record(statuses: &Mutex<Statuses>, n: &Notification, o: &Outcome) {
    let mut s = statuses.lock().unwrap_or_else(PoisonError::into_inner);
    let Some(entry) = s.by_id.get_mut(&n.id) else {
        return;
    };
    let now = httpdate::fmt_http_date(std::time::SystemTime::now());
    if let Some(attempts) = entry["attempts"].as_array_mut() {
        for a in &o.attempts {
            attempts.push(json!({
                "provider": a.provider,
                "try": a.try_number,
                "outcome": if a.error_class.is_none() { "delivered" } else { "failed" },
                "error_class": a.error_class.map(|c| c.as_str()),
                "error": a.error,
                "latency_ms": a.latency.as_secs_f64() * 1000.0,
                "at": now,
            }));
        }
        for k in &o.skipped {
            attempts.push(json!({
                "provider": k.provider,
                "outcome": "skipped",
                "reason": k.reason.to_string(),
                "at": now,
            }));
        }
    }
    if let Some(r) = &o.delivered {
        entry["status"] = json!("delivered");
        entry["delivered_by"] = json!(r.provider);
    } else if o.expired {
        entry["status"] = json!("expired");
    }
}

fn gotify_error(status: StatusCode, description: &str) -> Response {
    (
        status,
        Json(json!({
            "error": status.canonical_reason().unwrap_or("Error"),
            "errorCode": status.as_u16(),
            "errorDescription": description,
        })),
    )
        .into_response()
}

const UNAUTHORIZED: &str =
    "you need to provide a valid access token or user credentials to access this api";

/// The application token as Gotify looks for it: `?token=`, `X-Gotify-Key`, then
/// `Authorization: Bearer` (the order of Gotify's own lookup, as the test fake
/// follows it).
fn gotify_token(query: &HashMap<String, String>, headers: &HeaderMap) -> Option<String> {
    if let Some(t) = query.get("token") {
        return Some(t.clone());
    }
    if let Some(t) = headers.get("x-gotify-key").and_then(|v| v.to_str().ok()) {
        return Some(t.to_owned());
    }
    headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(|t| t.trim().to_owned())
}

#[derive(Deserialize, Default)]
struct CreateMessage {
    message: Option<String>,
    title: Option<String>,
    priority: Option<Value>,
    extras: Option<Map<String, Value>>,
}

fn parse_priority(v: &Value) -> Result<i64, String> {
    match v {
        Value::Number(n) => n
            .as_i64()
            .ok_or_else(|| format!("Field 'priority' must be an integer, got {n}")),
        Value::String(s) => s
            .trim()
            .parse()
            .map_err(|_| format!("Field 'priority' must be an integer, got {s:?}")),
        Value::Null => Ok(0),
        other => Err(format!("Field 'priority' must be an integer, got {other}")),
    }
}

async fn gotify_message(
    State(st): State<ServeState>,
    Query(query): Query<HashMap<String, String>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let Some(token) = gotify_token(&query, &headers) else {
        return gotify_error(StatusCode::UNAUTHORIZED, UNAUTHORIZED);
    };
    let Some(app) = st.apps.iter().find(|a| same(a.token.expose(), &token)) else {
        return gotify_error(StatusCode::UNAUTHORIZED, UNAUTHORIZED);
    };
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_ascii_lowercase();
    // Body: JSON, or form fields; query parameters fill what the body lacks.
    let mut msg = if content_type.starts_with("application/json") {
        match serde_json::from_slice::<CreateMessage>(&body) {
            Ok(m) => m,
            Err(e) => return gotify_error(StatusCode::BAD_REQUEST, &e.to_string()),
        }
    } else {
        let mut m = CreateMessage::default();
        for (k, v) in url::form_urlencoded::parse(&body) {
            match k.as_ref() {
                "message" => m.message = Some(v.into_owned()),
                "title" => m.title = Some(v.into_owned()),
                "priority" => m.priority = Some(Value::String(v.into_owned())),
                _ => {}
            }
        }
        m
    };
    if msg.message.is_none() {
        msg.message = query.get("message").cloned();
    }
    if msg.title.is_none() {
        msg.title = query.get("title").cloned();
    }
    if msg.priority.is_none() {
        msg.priority = query.get("priority").map(|p| Value::String(p.clone()));
    }
    let message = match msg.message {
        Some(m) if !m.is_empty() => m,
        _ => return gotify_error(StatusCode::BAD_REQUEST, "Field 'message' is required"),
    };
    let priority = match msg.priority.as_ref().map(parse_priority).transpose() {
        Ok(p) => p,
        Err(e) => return gotify_error(StatusCode::BAD_REQUEST, &e),
    };
    let mesh_priority = match priority {
        Some(p) => match Priority::new(p.clamp(0, 10)) {
            Ok(p) => p,
            Err(e) => return gotify_error(StatusCode::BAD_REQUEST, &e.to_string()),
        },
        None => app.priority.unwrap_or(app.kind.default_priority()),
    };
    let title = msg
        .title
        .clone()
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| app.name.clone());
    let recipient = Recipient::new(format!("gotify-app:{}", app.name), app.name.clone());
    let mut n = Notification::new(app.kind, recipient, title.clone(), message.clone());
    n.priority = mesh_priority;
    n.extras = msg.extras.clone();
    if let Some(url) = n
        .extras
        .as_ref()
        .and_then(|e| e.get("client::notification"))
        .and_then(|c| c["click"]["url"].as_str())
    {
        n.click_url = Some(url.to_owned());
    }
    if app.kind == Kind::Call {
        n.expires_at = Some(n.created_at.plus(st.composer.call_ttl));
    }
    let id = st.next_id.fetch_add(1, Ordering::Relaxed);
    st.statuses().put(n.id, queued_status(&n));
    if let Err(e) = st.dispatcher.submit(n).await {
        tracing::error!(error = %e, "serve: could not store a message");
        return gotify_error(
            StatusCode::SERVICE_UNAVAILABLE,
            "the message could not be stored; try again",
        );
    }
    metrics::counter!("mesh_notify_serve_ingested_total", "api" => "gotify").increment(1);
    let date = time_rfc3339(std::time::SystemTime::now());
    let mut answer = json!({
        "id": id,
        "appid": app.appid,
        "message": message,
        "title": title,
        "priority": priority.unwrap_or(i64::from(mesh_priority.get())),
        "date": date,
    });
    if let Some(extras) = msg.extras {
        answer["extras"] = Value::Object(extras);
    }
    Json(answer).into_response()
}

/// RFC 3339 in UTC, e.g. `2026-12-04T17:30:00.123Z`.
fn time_rfc3339(t: std::time::SystemTime) -> String {
    humantime::format_rfc3339_millis(t).to_string()
}

fn queued_status(n: &Notification) -> Value {
    json!({
        "id": n.id.to_string(),
        "kind": n.kind.as_str(),
        "status": "queued",
        "attempts": [],
        "created_at": time_rfc3339(std::time::SystemTime::now()),
    })
}

fn api_error(status: StatusCode, field: Option<&str>, message: &str) -> Response {
    let mut body = json!({"error": message});
    if let Some(f) = field {
        body["field"] = json!(f);
    }
    (status, Json(body)).into_response()
}

/// The API key's name, or the error to answer.
async fn authorize(st: &ServeState, headers: &HeaderMap) -> Result<String, Response> {
    let presented = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|a| a.strip_prefix("Bearer "))
        .map(str::trim);
    let Some(presented) = presented else {
        return Err(api_error(
            StatusCode::UNAUTHORIZED,
            None,
            "missing API key: send `Authorization: Bearer <key>`",
        ));
    };
    let Some(key) = st.keys.iter().find(|k| same(k.key.expose(), presented)) else {
        return Err(api_error(StatusCode::UNAUTHORIZED, None, "unknown API key"));
    };
    if !key.limiter.acquire_within(Duration::ZERO).await {
        let mut r = api_error(
            StatusCode::TOO_MANY_REQUESTS,
            None,
            &format!("rate limit of API key `{}` exceeded", key.name),
        );
        r.headers_mut()
            .insert("retry-after", axum::http::HeaderValue::from_static("1"));
        return Err(r);
    }
    Ok(key.name.clone())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeAddress {
    kind: String,
    value: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeRecipient {
    id: String,
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    addresses: Vec<NativeAddress>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeRoom {
    id: String,
    #[serde(default)]
    name: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct NativeNotification {
    kind: String,
    #[serde(default)]
    title: Option<String>,
    #[serde(default)]
    body: Option<String>,
    /// Template parameters (used when `title` is absent).
    #[serde(default)]
    from: Option<String>,
    #[serde(default)]
    message: Option<String>,
    #[serde(default)]
    file: Option<String>,
    #[serde(default)]
    priority: Option<i64>,
    recipient: NativeRecipient,
    #[serde(default)]
    room: Option<NativeRoom>,
    #[serde(default)]
    expires_in_seconds: Option<u64>,
}

fn address_kind(s: &str) -> Option<AddressKind> {
    Some(match s {
        "gotify" => AddressKind::Gotify,
        "fcm" => AddressKind::Fcm,
        "apns" => AddressKind::Apns,
        "apns_voip" => AddressKind::ApnsVoip,
        "email" => AddressKind::Email,
        _ => return None,
    })
}

fn build_native(st: &ServeState, req: NativeNotification) -> Result<Notification, Box<Response>> {
    let bad = |field: &str, m: &str| Box::new(api_error(StatusCode::BAD_REQUEST, Some(field), m));
    let kind: Kind = req
        .kind
        .parse()
        .map_err(|_| bad("kind", "`kind` must be chat, call, file or system"))?;
    if req.recipient.id.trim().is_empty() {
        return Err(bad("recipient.id", "`recipient.id` is required"));
    }
    let mut recipient = Recipient::new(
        req.recipient.id.clone(),
        req.recipient
            .name
            .clone()
            .unwrap_or_else(|| req.recipient.id.clone()),
    );
    for (i, a) in req.recipient.addresses.iter().enumerate() {
        let k = address_kind(&a.kind).ok_or_else(|| {
            bad(
                &format!("recipient.addresses[{i}].kind"),
                "must be gotify, fcm, apns, apns_voip or email",
            )
        })?;
        if a.value.trim().is_empty() {
            return Err(bad(
                &format!("recipient.addresses[{i}].value"),
                "must not be empty",
            ));
        }
        recipient = recipient.with_address(Address::new(k, a.value.trim()));
    }
    let room = req
        .room
        .as_ref()
        .map(|r| Room::new(r.id.clone(), r.name.clone().unwrap_or_else(|| r.id.clone())));
    let mut n = match (&req.title, kind, &room) {
        (Some(title), _, _) => {
            let mut n = Notification::new(kind, recipient, title, req.body.clone().unwrap_or_default());
            if let Some(r) = &room {
                n.click_url = Some(room_click_url(&r.id));
                n.room = Some(r.clone());
            }
            n
        }
        (None, Kind::Chat, Some(r)) => st.composer.chat(
            req.from.as_deref().ok_or_else(|| bad("from", "`from` is required without `title`"))?,
            r,
            recipient,
            req.message.as_deref().ok_or_else(|| bad("message", "`message` is required without `title`"))?,
        ),
        (None, Kind::Call, Some(r)) => st.composer.call(
            req.from.as_deref().ok_or_else(|| bad("from", "`from` is required without `title`"))?,
            r,
            recipient,
        ),
        (None, Kind::File, Some(r)) => st.composer.file(
            req.from.as_deref().ok_or_else(|| bad("from", "`from` is required without `title`"))?,
            r,
            recipient,
            req.file.as_deref().ok_or_else(|| bad("file", "`file` is required without `title`"))?,
        ),
        (None, _, _) => {
            return Err(bad(
                "title",
                "`title` is required (or `room` and the kind's template parameters: from, message, file)",
            ))
        }
    };
    if let Some(p) = req.priority {
        n.priority = Priority::new(p).map_err(|e| bad("priority", &e.to_string()))?;
    }
    if let Some(secs) = req.expires_in_seconds {
        if secs == 0 || secs > 30 * 86_400 {
            return Err(bad("expires_in_seconds", "must be between 1 and 2592000"));
        }
        n.expires_at = Some(n.created_at.plus(Duration::from_secs(secs)));
    }
    Ok(n)
}

async fn native_submit(State(st): State<ServeState>, headers: HeaderMap, body: Bytes) -> Response {
    let key = match authorize(&st, &headers).await {
        Ok(k) => k,
        Err(r) => return r,
    };
    let req: NativeNotification = match serde_json::from_slice(&body) {
        Ok(r) => r,
        Err(e) => {
            return api_error(
                StatusCode::BAD_REQUEST,
                None,
                &format!("invalid JSON body: {e}"),
            )
        }
    };
    let idem = headers
        .get("idempotency-key")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    if let Some(k) = &idem {
        let mut s = st.statuses();
        s.idempotency
            .retain(|_, (_, at)| at.elapsed() < Duration::from_secs(24 * 3600));
        if let Some((id, _)) = s.idempotency.get(&(key.clone(), k.clone())) {
            let status = s
                .by_id
                .get(id)
                .and_then(|v| v["status"].as_str())
                .unwrap_or("queued")
                .to_owned();
            return (
                StatusCode::ACCEPTED,
                Json(json!({"id": id.to_string(), "status": status, "replayed": true})),
            )
                .into_response();
        }
    }
    let mut n = match build_native(&st, req) {
        Ok(n) => n,
        Err(r) => return *r,
    };
    if let Some(k) = &idem {
        // The same key always names the same notification (the outbox dedups it).
        n.id = NotificationId::default().derived(&format!("idempotency:{key}:{k}"));
    }
    let id = n.id;
    st.statuses().put(id, queued_status(&n));
    if let Err(e) = st.dispatcher.submit(n).await {
        tracing::error!(error = %e, "serve: could not store a notification");
        return api_error(
            StatusCode::SERVICE_UNAVAILABLE,
            None,
            "the notification could not be stored; try again",
        );
    }
    if let Some(k) = idem {
        st.statuses()
            .idempotency
            .insert((key, k), (id, Instant::now()));
    }
    metrics::counter!("mesh_notify_serve_ingested_total", "api" => "native").increment(1);
    (
        StatusCode::ACCEPTED,
        Json(json!({"id": id.to_string(), "status": "queued"})),
    )
        .into_response()
}

async fn native_status(
    State(st): State<ServeState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorize(&st, &headers).await {
        return r;
    }
    let Ok(nid) = id.parse::<NotificationId>() else {
        return api_error(StatusCode::BAD_REQUEST, Some("id"), "not a notification id");
    };
    let known = st.statuses().by_id.get(&nid).cloned();
    if let Some(outbox) = st.dispatcher.outbox() {
        if let Ok(dead) = outbox.dead(10_000).await {
            if let Some(d) = dead.iter().find(|d| d.entry.notification.id == nid) {
                let mut v = known.unwrap_or_else(|| queued_status(&d.entry.notification));
                v["status"] = json!("dead");
                v["reason"] = json!(d.reason);
                return Json(v).into_response();
            }
        }
    }
    match known {
        Some(v) => Json(v).into_response(),
        None => api_error(
            StatusCode::NOT_FOUND,
            Some("id"),
            "no such notification (submitted elsewhere, or forgotten after 100,000 newer ones)",
        ),
    }
}

async fn native_dead(State(st): State<ServeState>, headers: HeaderMap) -> Response {
    if let Err(r) = authorize(&st, &headers).await {
        return r;
    }
    let Some(outbox) = st.dispatcher.outbox() else {
        return Json(json!({"dead": []})).into_response();
    };
    match outbox.dead(1000).await {
        Ok(dead) => Json(json!({
            "dead": dead.iter().map(|d| json!({
                "id": d.entry.notification.id.to_string(),
                "kind": d.entry.notification.kind.as_str(),
                "title": d.entry.notification.title,
                "attempts": d.entry.attempts,
                "reason": d.reason,
                "died_at_ms": d.died_at.as_millis(),
            })).collect::<Vec<_>>()
        }))
        .into_response(),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, None, &e.to_string()),
    }
}

async fn native_retry(
    State(st): State<ServeState>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Response {
    if let Err(r) = authorize(&st, &headers).await {
        return r;
    }
    let Ok(nid) = id.parse::<NotificationId>() else {
        return api_error(StatusCode::BAD_REQUEST, Some("id"), "not a notification id");
    };
    let Some(outbox) = st.dispatcher.outbox() else {
        return api_error(StatusCode::NOT_FOUND, Some("id"), "no outbox");
    };
    match outbox.requeue_dead(nid).await {
        Ok(true) => {
            st.dispatcher.notify_enqueued();
            if let Some(v) = st.statuses().by_id.get_mut(&nid) {
                v["status"] = json!("queued");
            }
            (
                StatusCode::ACCEPTED,
                Json(json!({"id": id, "status": "queued"})),
            )
                .into_response()
        }
        Ok(false) => api_error(StatusCode::NOT_FOUND, Some("id"), "no such dead letter"),
        Err(e) => api_error(StatusCode::SERVICE_UNAVAILABLE, None, &e.to_string()),
    }
}

async fn openapi() -> Response {
    (
        [(axum::http::header::CONTENT_TYPE, "application/json")],
        OPENAPI,
    )
        .into_response()
}

async fn health(State(st): State<ServeState>) -> Response {
    let ok = match st.dispatcher.outbox() {
        Some(o) => o.health().await.is_usable(),
        None => false,
    };
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        Json(json!({"status": if ok { "ok" } else { "degraded" }})),
    )
        .into_response()
}

async fn metrics_text(State(st): State<ServeState>) -> Response {
    match &st.metrics {
        Some(h) => h.render().into_response(),
        None => (StatusCode::NOT_FOUND, "metrics recorder not installed").into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rfc3339_dates() {
        let t = std::time::UNIX_EPOCH + Duration::from_millis(1_764_869_400_123);
        assert_eq!(time_rfc3339(t), "2025-12-04T17:30:00.123Z");
        assert_eq!(
            time_rfc3339(std::time::UNIX_EPOCH),
            "1970-01-01T00:00:00.000Z"
        );
    }

    #[test]
    fn constant_time_compare() {
        assert!(same("abc", "abc"));
        assert!(!same("abc", "abd"));
        assert!(!same("abc", "abcd"));
    }
}
