//! Membership with consent: invitations (accepted or declined by the invitee),
//! leaving a room, the creator removing a member, and blocking a user's
//! invitations.
//!
//! An invitation is not membership: the invitee gets no room event and no push for
//! the room until they accept. Each pending invitation produces exactly one
//! `room.invited` event (when the invitee is connected) or one system push (when
//! not); inviting again while it is pending, or after it was declined, produces
//! nothing new (see docs/decisions.md, "mesh-server: invitations with consent").

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use mesh_notify_core::{room_click_url, Kind, Language, Notification, Priority, Recipient, Room};
use serde::Deserialize;
use serde_json::{json, Value};

use crate::api::{parse_id, ApiJson};
use crate::auth::AuthUser;
use crate::db::{params, Db, OptionalExtension};
use crate::error::AppError;
use crate::notify::{cancel_queued, Queued};
use crate::state::AppState;
use crate::store::{self, now_ms, User};

/// Priority of the push announcing an invitation: below chat (6) and calls (8),
/// an invitation is never urgent.
const INVITE_PRIORITY: i64 = 5;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct UsernameRequest {
    username: String,
}

fn user_json(u: &User) -> Value {
    json!({"id": u.id, "username": u.username, "display_name": u.display_name})
}

fn invite_json(id: i64, room: &store::RoomInfo, from: &User, created_at: i64) -> Value {
    json!({
        "id": id,
        "room_id": room.id,
        "room_name": room.name,
        "from": user_json(from),
        "created_at": created_at,
    })
}

fn unknown_user() -> AppError {
    AppError::new(StatusCode::NOT_FOUND, "unknown_user", "no such user").field("username")
}

/// Whether `user_id` has blocked `blocked_id`.
fn has_blocked(conn: &Db<'_>, user_id: i64, blocked_id: i64) -> crate::db::Result<bool> {
    conn.query_row(
        "SELECT 1 FROM blocks WHERE user_id = ?1 AND blocked_id = ?2",
        params![user_id, blocked_id],
        |_| Ok(()),
    )
    .optional()
    .map(|o| o.is_some())
}

/// The push telling an offline invitee about an invitation.
fn invite_push(
    language: Language,
    from: &User,
    room: &store::RoomInfo,
    recipient: Recipient,
) -> Notification {
    let (title, body) = match language {
        Language::En => (
            format!("✉️ Invitation from {}", from.display_name),
            format!("{} invites you to {}", from.display_name, room.name),
        ),
        _ => (
            format!("✉️ Invitation de {}", from.display_name),
            format!("{} vous invite dans {}", from.display_name, room.name),
        ),
    };
    let mut n = Notification::new(Kind::System, recipient, title, body);
    if let Ok(p) = Priority::new(INVITE_PRIORITY) {
        n.priority = p;
    }
    n.click_url = Some(room_click_url(&room.id.to_string()));
    n.room = Some(Room::new(room.id.to_string(), room.name.clone()));
    n
}

/// `POST /api/rooms/{id}/invite {username}` (members only) → `201 {"invite"}` for a
/// new invitation, `200 {"invite"}` when one is already pending (nothing is sent
/// again).
pub(crate) async fn invite(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(raw_id): Path<String>,
    ApiJson(req): ApiJson<UsernameRequest>,
) -> Result<Response, AppError> {
    let room_id = parse_id(&raw_id, "room_id")?;
    let st = state.clone();
    let path = state.notify_path;
    let language = state.language;
    let max_members = state.config.max_members_per_room;
    // Connected through another instance (several instances): the invitation
    // reaches them live there, no push.
    let connected_elsewhere = match (&state.cluster, req.username.trim()) {
        (Some(cluster), name) => {
            let name = name.to_string();
            let found = state
                .store
                .call(move |c| Ok(store::user_by_name(c, &name)?.map(|(u, _)| u.id)))
                .await?;
            match found {
                Some(id) => cluster.connected_elsewhere(id).await,
                None => false,
            }
        }
        (None, _) => false,
    };
    let (invite, created, queued, invitee_id, announced) = state
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let room = store::room_for_member(&tx, room_id, user.id)?;
            let Some((invitee, _)) = store::user_by_name(&tx, req.username.trim())? else {
                return Err(unknown_user());
            };
            if invitee.id == user.id || store::is_member(&tx, room_id, invitee.id)? {
                return Err(AppError::new(
                    StatusCode::CONFLICT,
                    "already_member",
                    "this user is already a member of the room",
                )
                .field("username"));
            }
            if store::member_count(&tx, room_id)? >= i64::from(max_members) {
                return Err(store::limit_reached(
                    "room_full",
                    format!("the room has {max_members} members, the most allowed"),
                ));
            }
            if has_blocked(&tx, invitee.id, user.id)? {
                return Err(AppError::new(
                    StatusCode::FORBIDDEN,
                    "invite_refused",
                    "this user does not accept invitations from you",
                )
                .field("username"));
            }
            let existing: Option<(i64, String, i64, i64)> = tx
                .query_row(
                    "SELECT id, status, invited_by, created_at FROM invites WHERE room_id = ?1 AND user_id = ?2",
                    params![room_id, invitee.id],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
                )
                .optional()?;
            let now = now_ms();
            let (id, from, created_at, created, announce) = match existing {
                // Already pending: the same invitation, nothing new to announce.
                Some((id, status, by, at)) if status == "pending" => {
                    let from = store::user_by_id(&tx, by)?.unwrap_or_else(|| user.clone());
                    (id, from, at, false, false)
                }
                // Declined before: pending again, listed, but not announced again
                // (a decline must not turn into one push per re-invite).
                Some((id, _, _, _)) => {
                    tx.execute(
                        "UPDATE invites SET status = 'pending', invited_by = ?2, created_at = ?3 WHERE id = ?1",
                        params![id, user.id, now],
                    )?;
                    (id, user.clone(), now, true, false)
                }
                None => {
                    tx.execute(
                        "INSERT INTO invites (room_id, user_id, invited_by, status, created_at) VALUES (?1, ?2, ?3, 'pending', ?4)",
                        params![room_id, invitee.id, user.id, now],
                    )?;
                    (tx.last_insert_rowid()?, user.clone(), now, true, true)
                }
            };
            let invite = invite_json(id, &room, &from, created_at);
            let mut queued = Queued::default();
            let live = if announce {
                // Live to every connection of the invitee, else one push.
                let live = st.presence.reserve_user(&tx, invitee.id);
                if live.is_empty() && !connected_elsewhere {
                    let recipient = store::recipient(&tx, &invitee)?;
                    // In the invitee's language (their preferences), else the server's.
                    let language = crate::prefs::load(&tx, invitee.id)?.language_or(language);
                    queued.push(&tx, path, room_id, invite_push(language, &from, &room, recipient))?;
                }
                Some(live)
            } else {
                None
            };
            tx.commit()?;
            let announced = live.is_some();
            if let Some(live) = live {
                live.send(&json!({"type": "room.invited", "invite": invite}).to_string().into());
            }
            Ok((invite, created, queued, invitee.id, announced))
        })
        .await?;
    if let (true, Some(cluster)) = (announced, &state.cluster) {
        cluster.send(crate::cluster::Event::User {
            user: invitee_id,
            text: json!({"type": "room.invited", "invite": invite}).to_string(),
        });
    }
    queued.hand_over(&state).await;
    if created {
        tracing::info!(room = room_id, invitee = invitee_id, "invitation sent");
    }
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((status, Json(json!({ "invite": invite }))).into_response())
}

/// `GET /api/invites`: my pending invitations, oldest first.
pub(crate) async fn list(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<Value>, AppError> {
    let invites = state
        .store
        .call(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT i.id, r.id, r.name, u.id, u.username, u.display_name, i.created_at
                 FROM invites i JOIN rooms r ON r.id = i.room_id JOIN users u ON u.id = i.invited_by
                 WHERE i.user_id = ?1 AND i.status = 'pending' ORDER BY i.id",
            )?;
            let rows = stmt.query_map([user.id], |r| {
                let room = store::RoomInfo {
                    id: r.get(1)?,
                    name: r.get(2)?,
                };
                let from = User {
                    id: r.get(3)?,
                    username: r.get(4)?,
                    display_name: r.get(5)?,
                };
                Ok(invite_json(r.get(0)?, &room, &from, r.get(6)?))
            })?;
            Ok(rows.collect::<crate::db::Result<Vec<_>>>()?)
        })
        .await?;
    Ok(Json(json!({ "invites": invites })))
}

fn no_such_invite() -> AppError {
    AppError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such pending invitation",
    )
    .field("id")
}

/// `POST /api/invites/{id}/accept` → `200 {"room"}`: the invitee becomes a member.
pub(crate) async fn accept(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(raw_id): Path<String>,
) -> Result<Json<Value>, AppError> {
    let id = parse_id(&raw_id, "id")?;
    let (max_rooms, max_members) = (
        state.config.max_rooms_per_user,
        state.config.max_members_per_room,
    );
    let room = state
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let room_id: i64 = tx
                .query_row(
                    "DELETE FROM invites WHERE id = ?1 AND user_id = ?2 AND status = 'pending' RETURNING room_id",
                    params![id, user.id],
                    |r| r.get(0),
                )
                .optional()?
                .ok_or_else(no_such_invite)?;
            // Refused: the invitation stays pending (the delete is rolled back).
            store::check_can_join(&tx, room_id, user.id, max_rooms, max_members)?;
            let room = store::room(&tx, room_id)?.ok_or_else(no_such_invite)?;
            tx.execute(
                "INSERT INTO members (room_id, user_id, joined_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![room_id, user.id, now_ms()],
            )?;
            tx.commit()?;
            Ok(room)
        })
        .await?;
    tracing::info!(room = room.id, user = user.id, "invitation accepted");
    Ok(Json(json!({ "room": room })))
}

/// `POST /api/invites/{id}/decline` → 204.
pub(crate) async fn decline(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(raw_id): Path<String>,
) -> Result<StatusCode, AppError> {
    let id = parse_id(&raw_id, "id")?;
    let changed = state
        .store
        .call(move |c| {
            Ok(c.execute(
                "UPDATE invites SET status = 'declined' WHERE id = ?1 AND user_id = ?2 AND status = 'pending'",
                params![id, user.id],
            )?)
        })
        .await?;
    if changed == 0 {
        return Err(no_such_invite());
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Why a member is no longer in a room.
#[derive(Clone, Copy)]
enum Departure {
    Left,
    Removed,
}

impl Departure {
    fn as_str(self) -> &'static str {
        match self {
            Departure::Left => "left",
            Departure::Removed => "removed",
        }
    }
}

/// Ends `member`'s membership of `room_id`: deletes it, takes their connections out
/// of the room and drops their queued chat/file notifications for it, all under the
/// store's connection (so no message falls in between: from here on they get
/// neither live events nor pushes for the room). `check` runs first, in the same
/// transaction.
async fn end_membership(
    state: &AppState,
    room_id: i64,
    member: User,
    why: Departure,
    check: impl FnOnce(&Db<'_>) -> Result<(), AppError> + Send + 'static,
) -> Result<(), AppError> {
    let st = state.clone();
    let member_id = member.id;
    let (was_present, taken) = state
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            check(&tx)?;
            let removed = tx.execute(
                "DELETE FROM members WHERE room_id = ?1 AND user_id = ?2",
                params![room_id, member_id],
            )?;
            if removed == 0 {
                return Err(AppError::not_member());
            }
            tx.commit()?;
            let was_present = st.presence.evict(c, member_id, room_id);
            let taken = store::take_pending(c, member_id, room_id).unwrap_or_else(|e| {
                tracing::warn!(error = %e, "could not read pending notifications");
                Vec::new()
            });
            Ok((was_present, taken))
        })
        .await?;
    if let Some(cluster) = &state.cluster {
        if was_present {
            cluster.set_absent(room_id, member_id).await;
        }
        cluster.send(crate::cluster::Event::Evict {
            user: member_id,
            room: room_id,
        });
    }
    if was_present {
        let event = json!({"type": "presence", "room_id": room_id, "user": user_json(&member), "status": "left"});
        crate::ws::send_room(state, room_id, &event);
    }
    let event = json!({"type": "room.left", "room_id": room_id, "reason": why.as_str()});
    state
        .presence
        .send_user(member_id, &event.to_string().into());
    if let Some(cluster) = &state.cluster {
        cluster.send(crate::cluster::Event::User {
            user: member_id,
            text: event.to_string(),
        });
    }
    cancel_queued(state, member_id, room_id, taken).await;
    tracing::info!(
        room = room_id,
        user = member_id,
        reason = why.as_str(),
        "membership ended"
    );
    Ok(())
}

/// `POST /api/rooms/{id}/leave` → 204.
pub(crate) async fn leave(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(raw_id): Path<String>,
) -> Result<StatusCode, AppError> {
    let room_id = parse_id(&raw_id, "room_id")?;
    end_membership(&state, room_id, user, Departure::Left, |_| Ok(())).await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `DELETE /api/rooms/{id}/members/{username}` (the room's creator only) → 204.
pub(crate) async fn remove_member(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path((raw_id, username)): Path<(String, String)>,
) -> Result<StatusCode, AppError> {
    let room_id = parse_id(&raw_id, "room_id")?;
    let name = username.clone();
    let caller = user.id;
    let target = state
        .store
        .call(move |c| {
            store::room_for_member(c, room_id, caller)?;
            let creator: i64 = c.query_row(
                "SELECT created_by FROM rooms WHERE id = ?1",
                [room_id],
                |r| r.get(0),
            )?;
            if creator != caller {
                return Err(AppError::new(
                    StatusCode::FORBIDDEN,
                    "not_creator",
                    "only the room's creator can remove members",
                )
                .field("room_id"));
            }
            let target = store::user_by_name(c, name.trim())?
                .map(|(u, _)| u)
                .filter(|u| store::is_member(c, room_id, u.id).unwrap_or(false))
                .ok_or_else(|| {
                    AppError::new(
                        StatusCode::NOT_FOUND,
                        "unknown_member",
                        "no such member in this room",
                    )
                    .field("username")
                })?;
            if target.id == caller {
                return Err(AppError::invalid(
                    "username",
                    "to leave your own room use POST /api/rooms/{id}/leave",
                ));
            }
            Ok(target)
        })
        .await?;
    // The creator check is repeated inside the membership transaction.
    end_membership(&state, room_id, target, Departure::Removed, move |c| {
        if store::is_member(c, room_id, caller)? {
            Ok(())
        } else {
            Err(AppError::not_member())
        }
    })
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

/// `POST /api/me/blocks {username}` → `201 {"block"}` (200 when already blocked):
/// that user's invitations are refused from now on, and their pending ones to me
/// are withdrawn.
pub(crate) async fn block(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    ApiJson(req): ApiJson<UsernameRequest>,
) -> Result<Response, AppError> {
    let (blocked, created) = state
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let Some((blocked, _)) = store::user_by_name(&tx, req.username.trim())? else {
                return Err(unknown_user());
            };
            if blocked.id == user.id {
                return Err(AppError::invalid("username", "you cannot block yourself"));
            }
            let created = tx.execute(
                "INSERT INTO blocks (user_id, blocked_id, created_at) VALUES (?1, ?2, ?3) ON CONFLICT DO NOTHING",
                params![user.id, blocked.id, now_ms()],
            )? > 0;
            tx.execute(
                "DELETE FROM invites WHERE user_id = ?1 AND invited_by = ?2",
                params![user.id, blocked.id],
            )?;
            tx.commit()?;
            Ok((blocked, created))
        })
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    Ok((
        status,
        Json(json!({ "block": { "user": user_json(&blocked) } })),
    )
        .into_response())
}

/// `GET /api/me/blocks`.
pub(crate) async fn list_blocks(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
) -> Result<Json<Value>, AppError> {
    let blocks = state
        .store
        .call(move |c| {
            let mut stmt = c.prepare_cached(
                "SELECT u.id, u.username, u.display_name FROM blocks b JOIN users u ON u.id = b.blocked_id
                 WHERE b.user_id = ?1 ORDER BY u.username",
            )?;
            let rows = stmt.query_map([user.id], |r| {
                Ok(json!({"user": {"id": r.get::<_, i64>(0)?, "username": r.get::<_, String>(1)?, "display_name": r.get::<_, String>(2)?}}))
            })?;
            Ok(rows.collect::<crate::db::Result<Vec<_>>>()?)
        })
        .await?;
    Ok(Json(json!({ "blocks": blocks })))
}

/// `DELETE /api/me/blocks/{username}` → 204.
pub(crate) async fn unblock(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(username): Path<String>,
) -> Result<StatusCode, AppError> {
    let removed = state
        .store
        .call(move |c| {
            Ok(c.execute(
                "DELETE FROM blocks WHERE user_id = ?1 AND blocked_id = (SELECT id FROM users WHERE lower(username) = lower(?2))",
                params![user.id, username.trim()],
            )?)
        })
        .await?;
    if removed == 0 {
        return Err(AppError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this user is not blocked",
        )
        .field("username"));
    }
    Ok(StatusCode::NO_CONTENT)
}
