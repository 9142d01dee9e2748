//! The JSON HTTP API.

use std::collections::HashMap;
use std::net::SocketAddr;

use crate::db::{params, Db, OptionalExtension};
use axum::extract::rejection::JsonRejection;
use axum::extract::{ConnectInfo, FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{delete, get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::accounts::{self, check_len, NewUser};
use crate::auth::{self, AuthUser};
use crate::error::AppError;
use crate::state::AppState;
use crate::store::{self, now_ms, RoomInfo};
use crate::throttle;
use tower_http::limit::RequestBodyLimitLayer;
use tower_http::timeout::TimeoutLayer;

/// The public router (API, minimal health, WebSocket). Detailed health and metrics
/// are on the admin listener ([`crate::admin`]).
pub(crate) fn router(state: AppState) -> Router {
    let max_body = state.config.max_body_bytes;
    let request_timeout = state.config.request_timeout;
    Router::new()
        .route("/api/register", post(register))
        .route("/api/login", post(login))
        .route("/api/logout", post(logout))
        .route("/api/logout-all", post(logout_all))
        .route("/api/ws-ticket", post(ws_ticket))
        .route("/api/me", get(me))
        .route("/api/rooms", post(create_room).get(list_rooms))
        .route("/api/rooms/{id}/invite", post(crate::invites::invite))
        .route("/api/rooms/{id}/leave", post(crate::invites::leave))
        .route(
            "/api/rooms/{id}/members/{username}",
            delete(crate::invites::remove_member),
        )
        .route("/api/invites", get(crate::invites::list))
        .route("/api/invites/{id}/accept", post(crate::invites::accept))
        .route("/api/invites/{id}/decline", post(crate::invites::decline))
        .route(
            "/api/me/blocks",
            post(crate::invites::block).get(crate::invites::list_blocks),
        )
        .route("/api/me/blocks/{username}", delete(crate::invites::unblock))
        .route("/api/rooms/{id}/messages", get(history))
        .route(
            "/api/me/preferences",
            get(crate::prefs::get).put(crate::prefs::put),
        )
        .route("/api/me/addresses", post(add_address).get(list_addresses))
        .route("/api/me/addresses/{id}", delete(delete_address))
        .route("/api/me/addresses/{id}/verify", post(crate::verify::verify))
        .route("/health", get(crate::admin::public_health))
        .route("/ws", get(crate::ws::upgrade))
        .merge(crate::web::router())
        .fallback(|| async {
            AppError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .layer(RequestBodyLimitLayer::new(max_body))
        .layer(TimeoutLayer::with_status_code(
            StatusCode::REQUEST_TIMEOUT,
            request_timeout,
        ))
        .layer(axum::middleware::map_response(json_errors))
        .with_state(state)
}

/// The limit layers answer in plain text: give their refusals the API's JSON shape.
async fn json_errors(response: Response) -> Response {
    let is_json = response
        .headers()
        .get(axum::http::header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"application/json"));
    if is_json {
        return response;
    }
    match response.status() {
        StatusCode::PAYLOAD_TOO_LARGE => AppError::new(
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
            "the request body is too large",
        )
        .into_response(),
        StatusCode::REQUEST_TIMEOUT => AppError::new(
            StatusCode::REQUEST_TIMEOUT,
            "request_timeout",
            "the request took too long",
        )
        .into_response(),
        _ => response,
    }
}

/// `Json<T>` whose rejections are JSON errors naming the field.
pub(crate) struct ApiJson<T>(pub T);

impl<T: DeserializeOwned, S: Send + Sync> FromRequest<S> for ApiJson<T> {
    type Rejection = AppError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        match Json::<T>::from_request(req, state).await {
            Ok(Json(v)) => Ok(ApiJson(v)),
            Err(JsonRejection::JsonDataError(e)) => {
                Err(AppError::from_serde(&serde_source(&e.body_text())))
            }
            Err(JsonRejection::MissingJsonContentType(_)) => Err(AppError::new(
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "invalid_request",
                "expected `Content-Type: application/json`",
            )),
            Err(e) if e.status() == StatusCode::PAYLOAD_TOO_LARGE => Err(AppError::new(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                "the request body is too large",
            )),
            Err(e) => Err(AppError::new(
                StatusCode::BAD_REQUEST,
                "invalid_json",
                e.body_text(),
            )),
        }
    }
}

/// axum prefixes serde's message with its own text; keep serde's part.
fn serde_source(text: &str) -> String {
    text.rsplit_once(": ")
        .map(|(_, s)| s.to_string())
        .unwrap_or_else(|| text.to_string())
}

pub(crate) fn parse_id(raw: &str, field: &str) -> Result<i64, AppError> {
    raw.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| AppError::invalid(field, format!("`{field}` must be a positive integer")))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RegisterRequest {
    username: String,
    password: String,
    #[serde(default)]
    display_name: Option<String>,
}

/// The throttling key of the request's client.
fn client(state: &AppState, peer: SocketAddr, headers: &HeaderMap) -> String {
    throttle::client_key(peer, headers, &state.config.trusted_proxies)
}

fn too_many(wait: std::time::Duration, what: &str) -> AppError {
    let secs = throttle::retry_after_secs(wait);
    AppError::new(
        StatusCode::TOO_MANY_REQUESTS,
        "too_many_attempts",
        format!("too many {what}; try again in {secs} s"),
    )
    .retry_after(secs)
}

async fn register(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<RegisterRequest>,
) -> Result<Response, AppError> {
    if !state.registration_open {
        return Err(AppError::new(
            StatusCode::FORBIDDEN,
            "registration_closed",
            "registration is closed on this server; an administrator creates accounts (`mesh-server user add`)",
        ));
    }
    let new = NewUser::check(&req.username, &req.password, req.display_name.as_deref())?;
    // Every well-formed attempt counts (also "username taken": it reveals which
    // names exist).
    let client = client(&state, peer, &headers);
    if let Some(wait) = state.throttles.register_address.blocked(&client) {
        metrics::counter!("mesh_server_throttled_total", "what" => "register").increment(1);
        return Err(too_many(wait, "registrations from your address"));
    }
    state.throttles.register_address.record(&client);
    let name = new.username.clone();
    let exists = state
        .store
        .call(move |conn| Ok(store::user_by_name(conn, &name)?.is_some()))
        .await?;
    if exists {
        return Err(accounts::username_taken());
    }
    // Hash outside the database lock: argon2 takes tens of milliseconds and must not
    // hold up chat writes.
    let hash = state.hashing.hash(req.password).await?;
    let user = state
        .store
        .call(move |conn| accounts::insert_user(conn, new, &hash))
        .await?;
    tracing::info!(user = user.id, username = %user.username, "user registered");
    Ok((StatusCode::CREATED, Json(json!({ "user": user }))).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct LoginRequest {
    username: String,
    password: String,
}

async fn login(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    ApiJson(req): ApiJson<LoginRequest>,
) -> Result<Json<Value>, AppError> {
    let ttl_ms = i64::try_from(state.config.session_ttl.as_millis()).unwrap_or(i64::MAX);
    if req.password.len() > accounts::MAX_PASSWORD_BYTES {
        return Err(AppError::invalid(
            "password",
            format!(
                "`password` is longer than {} bytes",
                accounts::MAX_PASSWORD_BYTES
            ),
        ));
    }
    let refused = || {
        AppError::new(
            StatusCode::UNAUTHORIZED,
            "invalid_credentials",
            "unknown username or wrong password",
        )
    };
    let name = req.username.trim().to_string();
    let account = name.to_lowercase();
    let client = client(&state, peer, &headers);
    // Refused before any password is checked, so a guess cannot succeed either.
    let blocked = [
        state.throttles.login_account.blocked(&account),
        state.throttles.login_address.blocked(&client),
    ]
    .into_iter()
    .flatten()
    .max();
    if let Some(wait) = blocked {
        metrics::counter!("mesh_server_throttled_total", "what" => "login").increment(1);
        return Err(too_many(wait, "failed logins"));
    }
    let found = state
        .store
        .call(move |conn| Ok(store::user_by_name(conn, &name)?))
        .await?;
    // Verify outside the database lock; an unknown user costs the same argon2 work,
    // so response times do not reveal which usernames exist.
    let phc = found.as_ref().map(|(_, phc)| phc.clone());
    let password_ok = state.hashing.verify(req.password, phc).await?;
    let Some((user, _)) = found.filter(|_| password_ok) else {
        state.throttles.login_account.record(&account);
        state.throttles.login_address.record(&client);
        metrics::counter!("mesh_server_login_failures_total").increment(1);
        return Err(refused());
    };
    state.throttles.login_account.clear(&account);
    let user_id = user.id;
    let (token, expires_at) = state
        .store
        .call(move |conn| {
            let token = auth::new_token()?;
            let now = now_ms();
            let expires_at = now.saturating_add(ttl_ms);
            conn.execute(
                "INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES (?1, ?2, ?3, ?4)",
                params![auth::token_hash(&token), user_id, now, expires_at],
            )?;
            store::prune_sessions(conn, now)?;
            Ok((token, expires_at))
        })
        .await?;
    tracing::info!(user = user.id, "logged in");
    Ok(Json(
        json!({ "token": token, "user": user, "expires_at": expires_at }),
    ))
}

async fn logout(State(state): State<AppState>, req: Request) -> Result<StatusCode, AppError> {
    let (parts, _) = req.into_parts();
    let Some(token) = auth::request_token(&parts.headers) else {
        return Err(AppError::unauthorized());
    };
    let hash = auth::token_hash(&token);
    let key = hash.clone();
    let removed = state
        .store
        .call(move |conn| Ok(conn.execute("DELETE FROM sessions WHERE token_hash = ?1", [key])?))
        .await?;
    if removed == 0 {
        return Err(AppError::unauthorized());
    }
    let closed = state.presence.close_session(&hash);
    if let Some(cluster) = &state.cluster {
        cluster.send(crate::cluster::Event::CloseSession { session: hash });
    }
    tracing::info!(websockets_closed = closed, "logged out");
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/ws-ticket` → `{"ticket", "expires_in"}`: a single-use ticket for
/// `/ws?ticket=`, valid 30 s, bound to this session (logging out closes the
/// WebSocket opened with it).
async fn ws_ticket(State(state): State<AppState>, req: Request) -> Result<Json<Value>, AppError> {
    let session = auth::authenticate_session(&state, auth::request_token(req.headers())).await?;
    let ticket = state
        .store
        .call(move |conn| auth::issue_ticket(conn, &session.token_hash, now_ms()))
        .await?;
    Ok(Json(
        json!({ "ticket": ticket, "expires_in": auth::WS_TICKET_TTL_MS / 1000 }),
    ))
}

/// `POST /api/logout-all`: ends every session of the user (this one included) and
/// closes all their WebSockets.
async fn logout_all(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<Value>, AppError> {
    let user_id = user.id;
    let ended = state
        .store
        .call(move |conn| Ok(conn.execute("DELETE FROM sessions WHERE user_id = ?1", [user_id])?))
        .await?;
    let closed = state.presence.close_user(user_id);
    if let Some(cluster) = &state.cluster {
        cluster.send(crate::cluster::Event::CloseUser { user: user_id });
    }
    tracing::info!(
        user = user_id,
        sessions = ended,
        websockets_closed = closed,
        "logged out everywhere"
    );
    Ok(Json(json!({ "sessions_ended": ended })))
}

async fn me(AuthUser(user): AuthUser) -> Json<Value> {
    Json(json!({ "user": user }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct CreateRoomRequest {
    name: String,
}

async fn create_room(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(req): ApiJson<CreateRoomRequest>,
) -> Result<Response, AppError> {
    let name = req.name.trim().to_string();
    check_len("name", &name, 1, 100)?;
    let max_created = state.config.max_rooms_created_per_user;
    let max_rooms = state.config.max_rooms_per_user;
    let room = state
        .store
        .call(move |conn| {
            let tx = conn.transaction()?;
            let created: i64 = tx.query_row(
                "SELECT COUNT(*) FROM rooms r JOIN members m ON m.room_id = r.id AND m.user_id = r.created_by
                 WHERE r.created_by = ?1",
                [user.id],
                |r| r.get(0),
            )?;
            if created >= i64::from(max_created) {
                return Err(store::limit_reached(
                    "too_many_rooms",
                    format!("at most {max_created} rooms created per user (leaving one frees its place)"),
                ));
            }
            if store::memberships(&tx, user.id)? >= i64::from(max_rooms) {
                return Err(store::limit_reached(
                    "too_many_memberships",
                    format!("at most {max_rooms} rooms per user; leave one first"),
                ));
            }
            let now = now_ms();
            tx.execute(
                "INSERT INTO rooms (name, created_by, created_at) VALUES (?1, ?2, ?3)",
                params![name, user.id, now],
            )?;
            let id = tx.last_insert_rowid()?;
            tx.execute(
                "INSERT INTO members (room_id, user_id, joined_at) VALUES (?1, ?2, ?3)",
                params![id, user.id, now],
            )?;
            tx.commit()?;
            Ok(RoomInfo { id, name })
        })
        .await?;
    Ok((StatusCode::CREATED, Json(json!({ "room": room }))).into_response())
}

async fn list_rooms(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<Value>, AppError> {
    let rooms = state
        .store
        .call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT r.id, r.name FROM rooms r JOIN members m ON m.room_id = r.id WHERE m.user_id = ?1 ORDER BY r.id",
            )?;
            let rooms = stmt
                .query_map([user.id], |r| Ok(RoomInfo { id: r.get(0)?, name: r.get(1)? }))?
                .collect::<crate::db::Result<Vec<_>>>()?;
            let mut out = Vec::with_capacity(rooms.len());
            for room in rooms {
                let mut members = store::other_members(conn, room.id, 0)?;
                members.sort_by_key(|u| u.id);
                out.push(json!({ "id": room.id, "name": room.name, "members": members }));
            }
            Ok(out)
        })
        .await?;
    Ok(Json(json!({ "rooms": rooms })))
}

async fn history(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(raw_id): Path<String>,
    Query(query): Query<HashMap<String, String>>,
) -> Result<Json<Value>, AppError> {
    let room_id = parse_id(&raw_id, "room_id")?;
    let before = match query.get("before") {
        Some(b) => parse_id(b, "before")?,
        None => i64::MAX,
    };
    let max = state.config.history_page_max;
    let limit = match query.get("limit") {
        Some(l) => l
            .parse::<usize>()
            .ok()
            .filter(|l| (1..=max).contains(l))
            .ok_or_else(|| AppError::invalid("limit", format!("`limit` must be 1 to {max}")))?,
        None => max.min(50),
    };
    let messages = state
        .store
        .call(move |conn| {
            store::room_for_member(conn, room_id, user.id)?;
            let sql = format!(
                "SELECT {} FROM messages m JOIN users u ON u.id = m.user_id
                 WHERE m.room_id = ?1 AND m.id < ?2 ORDER BY m.id DESC LIMIT ?3",
                store::MESSAGE_COLUMNS
            );
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map(
                params![room_id, before, i64::try_from(limit).unwrap_or(100)],
                store::message_from_row,
            )?;
            Ok(rows.collect::<crate::db::Result<Vec<_>>>()?)
        })
        .await?;
    let next_before = (messages.len() == limit)
        .then(|| messages.last().map(|m| m.id))
        .flatten();
    Ok(Json(
        json!({ "messages": messages, "next_before": next_before }),
    ))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddressRequest {
    kind: String,
    value: String,
}

pub(crate) fn preview(value: &str) -> String {
    let prefix: String = value.chars().take(4).collect();
    format!("{prefix}…")
}

async fn add_address(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(req): ApiJson<AddressRequest>,
) -> Result<Response, AppError> {
    let kind = store::parse_address_kind(&req.kind).ok_or_else(|| {
        let known: Vec<&str> = mesh_notify_core::AddressKind::ALL
            .iter()
            .map(|k| k.as_str())
            .collect();
        AppError::invalid(
            "kind",
            format!("`kind` must be one of {}", known.join(", ")),
        )
    })?;
    let value = req.value.trim().to_string();
    if value.is_empty()
        || value.len() > 4096
        || value.chars().any(|c| c.is_control() || c.is_whitespace())
    {
        return Err(AppError::invalid(
            "value",
            "`value` must be 1 to 4096 bytes without spaces or control characters",
        ));
    }
    if kind == mesh_notify_core::AddressKind::Email {
        match value.split_once('@') {
            Some((local, domain))
                if !local.is_empty() && domain.contains('.') && !domain.contains('@') => {}
            _ => {
                return Err(AppError::invalid(
                    "value",
                    "`value` is not an email address",
                ))
            }
        }
    }
    match kind {
        mesh_notify_core::AddressKind::Webhook
            if !(value.starts_with("https://") || value.starts_with("http://")) =>
        {
            return Err(AppError::invalid(
                "value",
                "`value` must be the webhook's http(s) URL",
            ));
        }
        mesh_notify_core::AddressKind::WebPush
            if serde_json::from_str::<serde_json::Value>(&value)
                .ok()
                .and_then(|v| {
                    v.get("endpoint")
                        .and_then(|e| e.as_str())
                        .map(str::to_owned)
                })
                .is_none() =>
        {
            return Err(AppError::invalid(
                "value",
                "`value` must be the browser's push subscription as JSON ({\"endpoint\", \"keys\": {\"p256dh\", \"auth\"}})",
            ));
        }
        _ => {}
    }
    let is_email = kind == mesh_notify_core::AddressKind::Email;
    if is_email && crate::verify::smtp_provider(&state).is_none() {
        return Err(crate::verify::email_unavailable());
    }
    let shown = preview(&value);
    let max_addresses = i64::from(state.config.max_addresses_per_user);
    let email = value.clone();
    let (id, verified, code) = state
        .store
        .call(move |conn| {
            let tx = conn.transaction()?;
            let (id, verified) = add_address_row(&tx, user.id, kind, &value, max_addresses)?;
            // An email address gets a code (again, if it is still unverified).
            let code = if verified {
                None
            } else {
                Some(crate::verify::issue_code(&tx, id)?)
            };
            tx.commit()?;
            Ok((id, verified, code))
        })
        .await?;
    let mut status = StatusCode::CREATED;
    if let Some(code) = code {
        if let Err(e) = crate::verify::send_code(&state, &user, &email, &code).await {
            // Not sent: forget the code so that a retry can send one at once.
            let _ = state
                .store
                .call(move |conn| Ok(crate::verify::drop_code(conn, id)?))
                .await;
            return Err(e);
        }
        status = StatusCode::ACCEPTED;
    }
    let mut body =
        json!({ "address": { "id": id, "kind": kind, "value": shown, "verified": verified } });
    if !verified {
        body["verification"] = json!({
            "sent_to": shown,
            "expires_in": crate::verify::CODE_TTL_MS / 1000,
            "verify": format!("/api/me/addresses/{id}/verify"),
        });
    }
    Ok((status, Json(body)).into_response())
}

/// Finds or inserts the address row: (id, verified). Email addresses start
/// unverified.
fn add_address_row(
    conn: &Db<'_>,
    user_id: i64,
    kind: mesh_notify_core::AddressKind,
    value: &str,
    max_addresses: i64,
) -> Result<(i64, bool), AppError> {
    let existing: Option<(i64, bool)> = conn
        .query_row(
            "SELECT id, verified FROM addresses WHERE user_id = ?1 AND kind = ?2 AND value = ?3",
            params![user_id, kind.as_str(), value],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .optional()?;
    if let Some(found) = existing {
        return Ok(found);
    }
    let count: i64 = conn.query_row(
        "SELECT COUNT(*) FROM addresses WHERE user_id = ?1",
        [user_id],
        |r| r.get(0),
    )?;
    if count >= max_addresses {
        return Err(store::limit_reached(
            "too_many_addresses",
            format!("at most {max_addresses} addresses per user; delete one first"),
        ));
    }
    let verified = kind != mesh_notify_core::AddressKind::Email;
    // With several instances the same address may be added twice at once: the
    // unique key decides, and the second gets the first's row (as above).
    let inserted = conn.query_opt(
        "INSERT INTO addresses (user_id, kind, value, created_at, verified) VALUES (?1, ?2, ?3, ?4, ?5)
         ON CONFLICT (user_id, kind, value) DO NOTHING RETURNING id",
        params![user_id, kind.as_str(), value, now_ms(), verified],
        |r| r.get::<_, i64>(0),
    )?;
    match inserted {
        Some(id) => Ok((id, verified)),
        None => Ok(conn.query_row(
            "SELECT id, verified FROM addresses WHERE user_id = ?1 AND kind = ?2 AND value = ?3",
            params![user_id, kind.as_str(), value],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?),
    }
}

async fn list_addresses(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<Value>, AppError> {
    let list = state
        .store
        .call(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT id, kind, value, created_at, verified FROM addresses WHERE user_id = ?1 ORDER BY id",
            )?;
            let rows = stmt.query_map([user.id], |r| {
                let value: String = r.get(2)?;
                Ok(json!({
                    "id": r.get::<_, i64>(0)?,
                    "kind": r.get::<_, String>(1)?,
                    "value": preview(&value),
                    "created_at": r.get::<_, i64>(3)?,
                    "verified": r.get::<_, bool>(4)?,
                }))
            })?;
            Ok(rows.collect::<crate::db::Result<Vec<_>>>()?)
        })
        .await?;
    Ok(Json(json!({ "addresses": list })))
}

async fn delete_address(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(raw_id): Path<String>,
) -> Result<StatusCode, AppError> {
    let id = parse_id(&raw_id, "id")?;
    let removed = state
        .store
        .call(move |conn| {
            Ok(conn.execute(
                "DELETE FROM addresses WHERE id = ?1 AND user_id = ?2",
                params![id, user.id],
            )?)
        })
        .await?;
    if removed == 0 {
        return Err(
            AppError::new(StatusCode::NOT_FOUND, "not_found", "no such address").field("id"),
        );
    }
    Ok(StatusCode::NO_CONTENT)
}
