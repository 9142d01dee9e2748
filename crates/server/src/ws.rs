//! The WebSocket endpoint `/ws`: room presence, chat, WebRTC signalling, file shares.
//!
//! Client → server events: `room.join`, `room.leave`, `chat.message.send`,
//! `rtc.offer`, `rtc.answer`, `rtc.ice`, `rtc.hangup`, `file.share`. Server → client:
//! `chat.message`, `presence`, `rtc.*`, `file.shared`, `room.invited`, `ack`, `error`.
//!
//! The handler only writes to SQLite (one short local transaction) and broadcasts;
//! it never waits on a notification provider.
//!
//! Room presence and messages are serialised on the chat database's connection:
//! `room.join`, `room.leave` and a closing connection change presence inside
//! [`Store::call`](crate::store::Store::call), and a message decides who is absent,
//! commits with their notifications and hands its live event to the present
//! connections inside one such call. So for every message each member other than
//! the sender gets exactly one of the live event or a queued notification, even
//! when they join or leave at that instant.

use std::time::{Duration, Instant};

use crate::db::params;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes, WebSocket, WebSocketUpgrade};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use mesh_notify_core::{Kind, Room};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::sync::mpsc;

use crate::auth;
use crate::error::AppError;
use crate::notify::cancel_queued;
use crate::presence::ConnId;
use crate::state::AppState;
use crate::store::{self, now_ms, StoredMessage, User};

/// Events buffered per connection before further ones are dropped (slow client).
const OUTGOING_BUFFER: usize = 1024;

/// `GET /ws`: refuses unknown or expired tokens and tickets with 401 before upgrading.
pub(crate) async fn upgrade(
    State(state): State<AppState>,
    headers: HeaderMap,
    uri: Uri,
    ws: WebSocketUpgrade,
) -> Response {
    // `Authorization: Bearer` (native clients), else a single-use ticket from
    // `POST /api/ws-ticket` (browsers cannot set headers on the upgrade). A session
    // token in the URL (`?token=`) is not accepted.
    let credential = match auth::request_token(&headers) {
        Some(token) => Some(auth::Credential::Token(token)),
        None => auth::query_param(&uri, "ticket").map(|t| auth::Credential::Ticket(t.to_string())),
    };
    let session = match auth::authenticate_credential(&state, credential).await {
        Ok(s) => s,
        Err(e) => return e.into_response(),
    };
    let max = state.config.max_connections_per_user;
    if state.presence.user_connections(session.user.id) >= max {
        return AppError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_connections",
            format!("at most {max} open WebSockets per user; close one first"),
        )
        .into_response();
    }
    // Frames up to 4x the limit are read and refused with a clean 1009 close; larger
    // ones are cut off by the WebSocket layer itself.
    let hard_limit = state.config.max_frame_bytes.saturating_mul(4);
    // Small per-connection buffers: the library default (128 KiB read buffer) made
    // each idle connection cost ~135 KiB of RSS (docs/benchmarks.md).
    ws.max_message_size(hard_limit)
        .max_frame_size(hard_limit)
        .read_buffer_size(8 * 1024)
        .write_buffer_size(8 * 1024)
        .on_upgrade(move |socket| connection(state, session, socket))
}

/// Per-connection token bucket.
struct RateLimit {
    tokens: f64,
    last: Instant,
    rate: f64,
    burst: f64,
}

impl RateLimit {
    fn allow(&mut self) -> bool {
        let now = Instant::now();
        let elapsed = now.duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

struct Conn {
    id: ConnId,
    user: User,
}

fn text(v: &Value) -> Utf8Bytes {
    Utf8Bytes::from(v.to_string())
}

fn close(code: u16, reason: &'static str) -> Message {
    Message::Close(Some(CloseFrame {
        code,
        reason: Utf8Bytes::from_static(reason),
    }))
}

fn error_event(e: &AppError, for_type: Option<&str>, client_id: Option<&str>) -> Value {
    let mut v = json!({"type": "error", "code": e.code, "message": e.message});
    if let Some(f) = &e.field {
        v["field"] = json!(f);
    }
    if let Some(t) = for_type {
        v["for"] = json!(t);
    }
    if let Some(c) = client_id {
        v["client_id"] = json!(c);
    }
    v
}

fn user_json(u: &User) -> Value {
    json!({"id": u.id, "username": u.username, "display_name": u.display_name})
}

/// When the session expiring at `expires_at` (ms since the epoch) ends, on tokio's clock.
fn session_deadline(expires_at: i64) -> tokio::time::Instant {
    let left = u64::try_from(expires_at.saturating_sub(now_ms())).unwrap_or(0);
    let now = tokio::time::Instant::now();
    now.checked_add(Duration::from_millis(left))
        // Centuries away: a year is as good.
        .unwrap_or_else(|| now + Duration::from_secs(365 * 24 * 3600))
}

async fn connection(state: AppState, session: auth::Session, mut socket: WebSocket) {
    let (tx, mut rx) = mpsc::channel::<Utf8Bytes>(OUTGOING_BUFFER);
    let (id, ended) = state
        .presence
        .register(session.user.id, &session.token_hash, tx);
    let conn = Conn {
        id,
        user: session.user,
    };
    if let Some(cluster) = &state.cluster {
        cluster.set_connected(conn.user.id).await;
    }
    tracing::debug!(conn = conn.id, user = conn.user.id, "websocket connected");
    // A logout between the upgrade's check and the registration above signalled no
    // one: look again now that later logouts reach this connection.
    let hash = session.token_hash.clone();
    let still_valid = state
        .store
        .call(move |c| Ok(store::session_user(c, &hash, now_ms())?.is_some()))
        .await
        .unwrap_or(false);
    if !still_valid {
        ended.notify_one();
    }
    let expiry = tokio::time::sleep_until(session_deadline(session.expires_at));
    tokio::pin!(expiry);
    let mut limit = RateLimit {
        tokens: f64::from(state.config.message_burst),
        last: Instant::now(),
        rate: state.config.messages_per_second,
        burst: f64::from(state.config.message_burst),
    };
    let max = state.config.max_frame_bytes;
    // A client over the rate limit this many times in a row is closed (1008).
    let max_strikes = state.config.message_burst.max(10);
    let mut strikes = 0u32;
    // Liveness: pings every third of the idle timeout; nothing received (not even a
    // pong) for the whole timeout closes the connection.
    let idle = state.config.idle_timeout;
    let mut last_seen = Instant::now();
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + idle / 3, idle / 3);
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut shutdown = state.shutdown.clone();
    loop {
        tokio::select! {
            _ = ping.tick() => {
                if last_seen.elapsed() >= idle {
                    metrics::counter!("mesh_server_ws_idle_closed_total").increment(1);
                    let _ = socket.send(close(1001, "idle timeout")).await;
                    break;
                }
                if socket.send(Message::Ping(Default::default())).await.is_err() {
                    break;
                }
            }
            _ = shutdown.changed() => {
                let _ = socket.send(close(1001, "server shutting down")).await;
                break;
            }
            _ = ended.notified() => {
                let _ = socket.send(close(1008, "session ended")).await;
                break;
            }
            _ = &mut expiry => {
                let _ = socket.send(close(1008, "session expired")).await;
                break;
            }
            out = rx.recv() => {
                let Some(out) = out else { break };
                if socket.send(Message::Text(out)).await.is_err() {
                    break;
                }
            }
            incoming = socket.recv() => {
                let msg = match incoming {
                    None => break,
                    Some(Ok(m)) => m,
                    Some(Err(e)) => {
                        // Oversized beyond the hard limit, invalid UTF-8 in a text
                        // frame, or a protocol violation: close, nothing was written.
                        tracing::debug!(conn = conn.id, error = %e, "websocket read failed");
                        let _ = socket.send(close(1002, "protocol error")).await;
                        break;
                    }
                };
                last_seen = Instant::now();
                let size = match &msg {
                    Message::Text(t) => t.len(),
                    Message::Binary(b) => b.len(),
                    Message::Close(_) => break,
                    _ => 0,
                };
                if size > max {
                    let _ = socket.send(close(1009, "message too big")).await;
                    break;
                }
                // Every frame counts against the rate limit (text, binary, ping, pong).
                if !limit.allow() {
                    metrics::counter!("mesh_server_rate_limited_total").increment(1);
                    strikes += 1;
                    if strikes > max_strikes {
                        let _ = socket.send(close(1008, "rate limit exceeded")).await;
                        break;
                    }
                    if matches!(msg, Message::Text(_) | Message::Binary(_)) {
                        let refused = error_event(
                            &AppError::new(StatusCode::TOO_MANY_REQUESTS, "rate_limited", "too many events; slow down"),
                            None,
                            None,
                        );
                        if socket.send(Message::Text(text(&refused))).await.is_err() {
                            break;
                        }
                    }
                    continue;
                }
                strikes = 0;
                let reply = match msg {
                    Message::Text(t) => handle(&state, &conn, t.as_str()).await,
                    Message::Binary(_) => Some(error_event(
                        &AppError::new(StatusCode::BAD_REQUEST, "binary_not_supported", "send events as JSON text frames"),
                        None,
                        None,
                    )),
                    Message::Ping(_) | Message::Pong(_) => None,
                    Message::Close(_) => break,
                };
                if let Some(reply) = reply {
                    if socket.send(Message::Text(text(&reply))).await.is_err() {
                        break;
                    }
                }
            }
        }
    }
    let id = conn.id;
    let st = state.clone();
    let left = match state
        .store
        .call(move |c| Ok(st.presence.unregister(c, id)))
        .await
    {
        Ok(left) => left,
        // The blocking pool refused the task (runtime shutting down): still
        // unregister, under the same connection, from this thread.
        Err(_) => state
            .store
            .call_sync(|c| state.presence.unregister(c, id))
            .unwrap_or_else(|e| {
                tracing::warn!(error = %e.message, "could not unregister a closed connection");
                Vec::new()
            }),
    };
    if let Some(cluster) = &state.cluster {
        for room_id in &left {
            cluster.set_absent(*room_id, conn.user.id).await;
        }
        if state.presence.user_connections(conn.user.id) == 0 {
            cluster.set_disconnected(conn.user.id).await;
        }
    }
    for room_id in left {
        broadcast_presence(&state, room_id, &conn.user, "left");
    }
    tracing::debug!(conn = conn.id, user = conn.user.id, "websocket closed");
}

fn broadcast_presence(state: &AppState, room_id: i64, user: &User, status: &str) {
    let event =
        json!({"type": "presence", "room_id": room_id, "user": user_json(user), "status": status});
    send_room(state, room_id, &event);
}

/// A room event to this instance's connections in the room, and to the other
/// instances' (several instances).
pub(crate) fn send_room(state: &AppState, room_id: i64, event: &Value) {
    let text = text(event);
    state.presence.send_room(room_id, &text);
    if let Some(cluster) = &state.cluster {
        cluster.send(crate::cluster::Event::Room {
            room: room_id,
            text: text.to_string(),
            message: None,
        });
    }
}

/// Handles one text frame; returns the reply for this connection, if any.
async fn handle(state: &AppState, conn: &Conn, raw: &str) -> Option<Value> {
    let value: Value = match serde_json::from_str(raw) {
        Ok(v) => v,
        Err(e) => {
            let err = AppError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                format!("not valid JSON: {e}"),
            );
            return Some(error_event(&err, None, None));
        }
    };
    let Some(obj) = value.as_object() else {
        let err = AppError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "an event is a JSON object",
        );
        return Some(error_event(&err, None, None));
    };
    let client_id = obj
        .get("client_id")
        .and_then(Value::as_str)
        .map(str::to_owned);
    let Some(ty) = obj.get("type").and_then(Value::as_str).map(str::to_owned) else {
        let err = AppError::new(
            StatusCode::BAD_REQUEST,
            "missing_field",
            "missing string field `type`",
        )
        .field("type");
        return Some(error_event(&err, None, client_id.as_deref()));
    };
    let result = match ty.as_str() {
        "room.join" => join(state, conn, value).await,
        "room.leave" => leave(state, conn, value).await,
        "chat.message.send" => chat(state, conn, value).await,
        "file.share" => file_share(state, conn, value).await,
        "rtc.offer" | "rtc.answer" | "rtc.ice" | "rtc.hangup" => rtc(state, conn, &ty, value).await,
        other => Err(AppError::new(
            StatusCode::BAD_REQUEST,
            "unknown_type",
            format!("unknown event type `{other}`"),
        )
        .field("type")),
    };
    match result {
        Ok(reply) => reply,
        Err(e) => {
            metrics::counter!("mesh_server_event_errors_total", "code" => e.code).increment(1);
            Some(error_event(&e, Some(&ty), client_id.as_deref()))
        }
    }
}

fn parse<T: serde::de::DeserializeOwned>(value: Value) -> Result<T, AppError> {
    serde_json::from_value(value).map_err(|e| AppError::from_serde(&e.to_string()))
}

#[derive(Deserialize)]
struct RoomRef {
    room_id: i64,
}

/// `room.join`: (1) marks the connection present and (2) takes the user's pending
/// notification records for the room in a committed transaction, both under the
/// store's connection (so every message is stored either wholly before: notified,
/// its record taken here; or wholly after: live); (3) then cancels those
/// notifications in the outbox; (4) then acknowledges.
async fn join(state: &AppState, conn: &Conn, value: Value) -> Result<Option<Value>, AppError> {
    let RoomRef { room_id } = parse(value)?;
    let user_id = conn.user.id;
    let conn_id = conn.id;
    let st = state.clone();
    let (room, newly, taken, present) = state
        .store
        .call(move |c| {
            let room = store::room_for_member(c, room_id, user_id)?;
            let newly = st.presence.join(c, conn_id, room_id);
            // They are back and will see the messages: the notifications queued
            // while they were away are no longer wanted.
            let taken = if newly {
                store::take_pending(c, user_id, room_id).unwrap_or_else(|e| {
                    tracing::warn!(error = %e, "could not read pending notifications");
                    Vec::new()
                })
            } else {
                Vec::new()
            };
            let present = st.presence.users_in_room(room_id);
            Ok((room, newly, taken, present))
        })
        .await?;
    let mut present = present;
    if let Some(cluster) = &state.cluster {
        if newly {
            // Written before the ack: a message sent on another instance after
            // this join counts them as present.
            cluster.set_present(room_id, user_id).await;
        }
        present.extend(cluster.present_elsewhere(room_id).await);
    }
    let mut present: Vec<i64> = present.into_iter().collect();
    present.sort_unstable();
    if newly {
        broadcast_presence(state, room_id, &conn.user, "joined");
    }
    cancel_queued(state, user_id, room_id, taken).await;
    Ok(Some(
        json!({"type": "ack", "for": "room.join", "room": room, "present": present}),
    ))
}

async fn leave(state: &AppState, conn: &Conn, value: Value) -> Result<Option<Value>, AppError> {
    let RoomRef { room_id } = parse(value)?;
    let conn_id = conn.id;
    let st = state.clone();
    let left = state
        .store
        .call(move |c| {
            if !st.presence.has_joined(conn_id, room_id) {
                return Err(AppError::new(
                    StatusCode::BAD_REQUEST,
                    "not_joined",
                    "this connection has not joined the room",
                )
                .field("room_id"));
            }
            Ok(st.presence.leave(c, conn_id, room_id))
        })
        .await?;
    if let (true, Some(cluster)) = (left, &state.cluster) {
        cluster.set_absent(room_id, conn.user.id).await;
    }
    if left {
        broadcast_presence(state, room_id, &conn.user, "left");
    }
    Ok(Some(
        json!({"type": "ack", "for": "room.leave", "room_id": room_id}),
    ))
}

#[derive(Deserialize)]
struct ChatSend {
    room_id: i64,
    text: String,
    #[serde(default)]
    client_id: Option<String>,
}

fn check_client_id(client_id: Option<&str>) -> Result<(), AppError> {
    match client_id {
        Some(c) if c.len() > 64 => Err(AppError::invalid(
            "client_id",
            "`client_id` is at most 64 bytes",
        )),
        _ => Ok(()),
    }
}

/// Stores a chat message or file share and queues notifications for every member
/// who is not in the room, except the sender, in one transaction; then hands the
/// live event to exactly the connections that were counted as present, before the
/// store's connection is released (no join or leave in between).
async fn store_and_notify(
    state: &AppState,
    conn: &Conn,
    room_id: i64,
    kind: &'static str,
    body: String,
    meta: Option<Value>,
    client_id: Option<String>,
) -> Result<StoredMessage, AppError> {
    let st = state.clone();
    let sender = conn.user.clone();
    // Present through other instances (several instances): read before the
    // transaction; see `cluster` for what a join or leave in between does.
    let assumed = match &state.cluster {
        Some(cluster) => cluster.presence_elsewhere(room_id).await,
        None => Vec::new(),
    };
    let elsewhere: std::collections::HashSet<i64> = assumed.iter().map(|(u, _)| *u).collect();
    // The fan-out task ends its chunk when it sees this (see `fanout::ChatWaiting`).
    let waiting = crate::fanout::ChatWaiting::enter(state);
    let (message, fan_out, event, room_name) = state
        .store
        .call(move |c| {
            drop(waiting);
            let tx = c.transaction()?;
            let room = store::room_for_member(&tx, room_id, sender.id)?;
            let now = now_ms();
            tx.prepare_cached(
                "INSERT INTO messages (room_id, user_id, kind, body, meta, client_id, created_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
            )?
            .execute(params![room_id, sender.id, kind, body, meta.as_ref().map(Value::to_string), client_id, now])?;
            let message = StoredMessage {
                id: tx.last_insert_rowid()?,
                room_id,
                user_id: sender.id,
                username: sender.username.clone(),
                display_name: sender.display_name.clone(),
                kind: kind.to_string(),
                text: body.clone(),
                file: meta,
                client_id,
                created_at: now,
            };
            // Who gets it live is decided here, with the store's connection held:
            // presence cannot change until the event is handed over below. The
            // others' pushes are one `push_fanout` row, expanded right after the
            // commit by `fanout::run`, so this transaction stays short.
            let live = st.presence.reserve_room(&tx, room_id);
            let absent: Vec<i64> = store::other_member_ids(&tx, room_id, sender.id)?
                .into_iter()
                .filter(|id| !live.has_user(*id) && !elsewhere.contains(id))
                .collect();
            if !absent.is_empty() {
                crate::fanout::record(
                    &tx,
                    &crate::fanout::Pending {
                        room_id,
                        room_name: &room.name,
                        kind: if kind == "file" { Kind::File } else { Kind::Chat },
                        from: &sender.display_name,
                        text: &body,
                        members: &absent,
                        created_at: now,
                    },
                )?;
            }
            tx.commit()?;
            // Committed: send the live event into the reserved slots (in commit
            // order, as the store's connection is still held).
            let event_type = if kind == "file" { "file.shared" } else { "chat.message" };
            let event = text(&json!({"type": event_type, "message": message}));
            live.send(&event);
            Ok((message, !absent.is_empty(), event, room.name))
        })
        .await?;
    if let Some(cluster) = &state.cluster {
        // Members counted present through another instance: that instance pushes
        // to those who left before the event arrived.
        let members = store_members_assumed(&assumed, message.user_id);
        cluster.send(crate::cluster::Event::Room {
            room: room_id,
            text: event.to_string(),
            message: (!members.is_empty()).then(|| crate::cluster::MessagePush {
                assumed: members,
                room_name,
                kind: message.kind.clone(),
                from: message.display_name.clone(),
                text: message.text.clone(),
                created_at: message.created_at,
            }),
        });
    }
    metrics::counter!("mesh_server_messages_total", "kind" => kind).increment(1);
    if fan_out {
        state.fanout.wake();
    }
    Ok(message)
}

/// The `(user, instance)` entries a message counted as present elsewhere, the
/// sender left out.
fn store_members_assumed(assumed: &[(i64, String)], sender: i64) -> Vec<(i64, String)> {
    assumed
        .iter()
        .filter(|(u, _)| *u != sender)
        .cloned()
        .collect()
}

async fn chat(state: &AppState, conn: &Conn, value: Value) -> Result<Option<Value>, AppError> {
    let req: ChatSend = parse(value)?;
    check_client_id(req.client_id.as_deref())?;
    let max = state.config.max_message_chars;
    if req.text.trim().is_empty() {
        return Err(AppError::invalid("text", "`text` must not be empty"));
    }
    if req.text.chars().count() > max {
        return Err(AppError::invalid(
            "text",
            format!("`text` is longer than {max} characters"),
        ));
    }
    let message = store_and_notify(
        state,
        conn,
        req.room_id,
        "chat",
        req.text,
        None,
        req.client_id.clone(),
    )
    .await?;
    Ok(Some(json!({
        "type": "ack", "for": "chat.message.send", "client_id": req.client_id,
        "message_id": message.id, "room_id": req.room_id,
    })))
}

#[derive(Deserialize)]
struct FileShare {
    room_id: i64,
    name: String,
    size: u64,
    mime: String,
    #[serde(default)]
    client_id: Option<String>,
}

async fn file_share(
    state: &AppState,
    conn: &Conn,
    value: Value,
) -> Result<Option<Value>, AppError> {
    let req: FileShare = parse(value)?;
    check_client_id(req.client_id.as_deref())?;
    let name = req.name.trim().to_string();
    if name.is_empty()
        || name.chars().count() > 255
        || name.chars().any(char::is_control)
        || crate::accounts::has_invisible_format(&name)
    {
        return Err(AppError::invalid(
            "name",
            "`name` must be 1 to 255 characters without control or invisible formatting characters",
        ));
    }
    let mime = req.mime.trim().to_string();
    if mime.is_empty()
        || mime.len() > 127
        || !mime.contains('/')
        || mime.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(AppError::invalid(
            "mime",
            "`mime` must be a MIME type such as `image/png`",
        ));
    }
    let meta = json!({"name": name, "size": req.size, "mime": mime});
    let message = store_and_notify(
        state,
        conn,
        req.room_id,
        "file",
        name,
        Some(meta),
        req.client_id.clone(),
    )
    .await?;
    Ok(Some(json!({
        "type": "ack", "for": "file.share", "client_id": req.client_id,
        "message_id": message.id, "room_id": req.room_id,
    })))
}

#[derive(Deserialize)]
#[serde(untagged)]
enum Target {
    Id(i64),
    Username(String),
}

/// The client fields an `rtc.*` event may carry to its peer: `sdp` (offer,
/// answer) or `candidate` (ICE), nothing more for `rtc.hangup` (the web client's
/// "decline" and "hang up"), and an optional `call_id`. Everything else the
/// client sent (`from`, `type`, `room_id`, unknown fields) is dropped.
fn rtc_payload(ty: &str, obj: &Map<String, Value>) -> Result<Map<String, Value>, AppError> {
    let missing = |field: &str| {
        AppError::new(
            StatusCode::BAD_REQUEST,
            "missing_field",
            format!("missing field `{field}`"),
        )
        .field(field)
    };
    let mut out = Map::new();
    if ty == "rtc.ice" {
        // An ICE candidate (object or string), or null for "end of candidates".
        let candidate = obj.get("candidate").ok_or_else(|| missing("candidate"))?;
        if !(candidate.is_object() || candidate.is_string() || candidate.is_null()) {
            return Err(AppError::invalid(
                "candidate",
                "`candidate` must be an ICE candidate object, a string or null",
            ));
        }
        out.insert("candidate".into(), candidate.clone());
    } else if ty == "rtc.hangup" {
        // Ends (or declines) the call `call_id`: nothing else to carry.
    } else {
        let sdp = obj.get("sdp").ok_or_else(|| missing("sdp"))?;
        if !sdp.is_string() {
            return Err(AppError::invalid("sdp", "`sdp` must be a string"));
        }
        out.insert("sdp".into(), sdp.clone());
    }
    if let Some(call_id) = obj.get("call_id") {
        match call_id.as_str() {
            Some(c) if !c.is_empty() && c.len() <= 64 => {
                out.insert("call_id".into(), call_id.clone());
            }
            _ => {
                return Err(AppError::invalid(
                    "call_id",
                    "`call_id` must be a string of 1 to 64 bytes",
                ))
            }
        }
    }
    Ok(out)
}

async fn rtc(
    state: &AppState,
    conn: &Conn,
    ty: &str,
    value: Value,
) -> Result<Option<Value>, AppError> {
    let Value::Object(mut obj) = value else {
        return Err(AppError::new(
            StatusCode::BAD_REQUEST,
            "invalid_json",
            "an event is a JSON object",
        ));
    };
    let room_id = match obj.remove("room_id") {
        Some(v) => v
            .as_i64()
            .ok_or_else(|| AppError::invalid("room_id", "`room_id` must be an integer"))?,
        None => {
            return Err(AppError::new(
                StatusCode::BAD_REQUEST,
                "missing_field",
                "missing field `room_id`",
            )
            .field("room_id"))
        }
    };
    let target: Target = match obj.remove("to") {
        Some(v) => serde_json::from_value(v)
            .map_err(|_| AppError::invalid("to", "`to` must be a user id or a username"))?,
        None => {
            return Err(AppError::new(
                StatusCode::BAD_REQUEST,
                "missing_field",
                "missing field `to`",
            )
            .field("to"))
        }
    };
    let payload = rtc_payload(ty, &obj)?;
    let sender = conn.user.clone();
    let (room, peer, recipient, prefs) = state
        .store
        .call(move |c| {
            let room = store::room_for_member(c, room_id, sender.id)?;
            let peer = match target {
                Target::Id(id) => store::user_by_id(c, id)?,
                Target::Username(name) => store::user_by_name(c, &name)?.map(|(u, _)| u),
            };
            let Some(peer) = peer.filter(|p| p.id != sender.id) else {
                return Err(AppError::invalid(
                    "to",
                    "`to` must be another member of the room",
                ));
            };
            if !store::is_member(c, room_id, peer.id)? {
                return Err(AppError::new(
                    StatusCode::FORBIDDEN,
                    "not_member",
                    "the target is not a member of this room",
                )
                .field("to"));
            }
            let recipient = store::recipient(c, &peer)?;
            let prefs = crate::prefs::load(c, peer.id)?;
            Ok((room, peer, recipient, prefs))
        })
        .await?;
    // Only the allow-listed client fields are relayed; what identifies the sender
    // and the room is the server's, set last.
    let mut event = payload;
    event.insert("type".into(), json!(ty));
    event.insert("room_id".into(), json!(room_id));
    event.insert("from".into(), user_json(&conn.user));
    let event = text(&Value::Object(event));
    let mut delivered = state.presence.send_user(peer.id, &event);
    if delivered == 0 {
        if let Some(cluster) = &state.cluster {
            if cluster.connected_elsewhere(peer.id).await {
                cluster.send(crate::cluster::Event::User {
                    user: peer.id,
                    text: event.to_string(),
                });
                delivered = 1;
            }
        }
    }
    if delivered > 0 {
        return Ok((ty == "rtc.offer").then(|| json!({"type": "ack", "for": ty, "room_id": room_id, "to": peer.id, "relayed": true})));
    }
    if ty != "rtc.offer" {
        return Err(AppError::new(
            StatusCode::CONFLICT,
            "peer_offline",
            "the target is not connected",
        )
        .field("to"));
    }
    // The callee is offline: ring them with a call notification (priority 8,
    // expires), never coalesced or delayed; unless they muted the room, or are in
    // their quiet hours without calls allowed.
    let now = now_ms();
    let suppressed = if prefs.is_muted(room_id, now) {
        Some("muted")
    } else if prefs
        .quiet()
        .is_some_and(|q| !q.allow_calls && q.ends_at(now).is_some())
    {
        Some("quiet_hours")
    } else {
        None
    };
    if let Some(reason) = suppressed {
        metrics::counter!("mesh_server_pushes_suppressed_total", "reason" => reason, "kind" => "call")
            .increment(1);
        return Ok(Some(
            json!({"type": "ack", "for": ty, "room_id": room_id, "to": peer.id, "relayed": false, "notified": false, "suppressed": reason}),
        ));
    }
    let composer = state.digests.composer(prefs.language_or(state.language));
    let mut n = composer.call(
        &conn.user.display_name,
        &Room::new(room.id.to_string(), room.name),
        recipient,
    );
    n.route = prefs.route(Kind::Call);
    let notified = match state.dispatcher.submit(n).await {
        Ok(_) => {
            metrics::counter!("mesh_server_notifications_queued_total").increment(1);
            true
        }
        Err(e) => {
            tracing::error!(error = %e, "could not queue a call notification");
            false
        }
    };
    Ok(Some(
        json!({"type": "ack", "for": ty, "room_id": room_id, "to": peer.id, "relayed": false, "notified": notified}),
    ))
}
