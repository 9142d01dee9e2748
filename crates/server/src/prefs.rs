//! A user's notification preferences (`GET`/`PUT /api/me/preferences`): language,
//! muted rooms, quiet hours and their own provider order per kind.
//!
//! ```json
//! {"language": "fr",
//!  "muted_rooms": {"12": "2026-12-05T08:00:00Z", "14": null},
//!  "quiet_hours": {"start": "22:00", "end": "07:30", "timezone": "Europe/Paris", "allow_calls": true},
//!  "routes": {"file": ["smtp"]}}
//! ```
//!
//! Stored as that JSON in the `preferences` table; read inside the message
//! transaction for every absent member, so a change applies to the next message.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use jiff::civil::Time;
use jiff::tz::TimeZone;
use mesh_notify_core::{Kind, Language};
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::AuthUser;
use crate::db::{params, Db, DbError};
use crate::error::AppError;
use crate::state::AppState;
use crate::store;

/// Rooms a user may mute at most (a bound on what is stored per user).
const MAX_MUTED_ROOMS: usize = 500;

/// What a user chose; every field optional in a `PUT` body.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Preferences {
    /// Language of their notifications (default: the server's `language`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub language: Option<Language>,
    /// Room id → muted until (RFC 3339), or `null`: until unmuted.
    #[serde(default)]
    pub muted_rooms: BTreeMap<String, Option<String>>,
    /// When chat and file pushes wait (one summary per room when it ends).
    #[serde(default)]
    pub quiet_hours: Option<QuietHours>,
    /// Kind (`chat`, `call`, `file`) → their own provider order.
    #[serde(default)]
    pub routes: BTreeMap<String, Vec<String>>,
}

/// `quiet_hours`: a daily window in the user's time zone.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct QuietHours {
    /// `HH:MM`, local time.
    pub start: String,
    /// `HH:MM`, local time; before `start` means the window crosses midnight.
    pub end: String,
    /// An IANA time zone name (`Europe/Paris`).
    pub timezone: String,
    /// Whether calls still ring during the window (default true).
    #[serde(default = "yes")]
    pub allow_calls: bool,
}

fn yes() -> bool {
    true
}

/// A checked quiet-hours window, ready to evaluate.
#[derive(Debug, Clone)]
pub struct QuietWindow {
    start: Time,
    end: Time,
    tz: TimeZone,
    /// Whether calls ring during the window.
    pub allow_calls: bool,
}

impl QuietWindow {
    /// Checks `q`; the error names the field.
    pub fn parse(q: &QuietHours) -> Result<Self, AppError> {
        let start = parse_hm(&q.start).ok_or_else(|| {
            AppError::invalid(
                "quiet_hours.start",
                format!(
                    "`quiet_hours.start` must be HH:MM (00:00–23:59), got {:?}",
                    q.start
                ),
            )
        })?;
        let end = parse_hm(&q.end).ok_or_else(|| {
            AppError::invalid(
                "quiet_hours.end",
                format!(
                    "`quiet_hours.end` must be HH:MM (00:00–23:59), got {:?}",
                    q.end
                ),
            )
        })?;
        let tz = TimeZone::get(&q.timezone).map_err(|_| {
            AppError::invalid(
                "quiet_hours.timezone",
                format!(
                    "`quiet_hours.timezone` must be an IANA time zone such as \"Europe/Paris\", got {:?}",
                    q.timezone
                ),
            )
        })?;
        Ok(Self {
            start,
            end,
            tz,
            allow_calls: q.allow_calls,
        })
    }

    /// When `now` (ms since the epoch) is inside the window: the instant (ms) the
    /// window ends. Local wall-clock times in the user's zone, so the window stays
    /// at the same hours across DST changes; an end time that does not exist on a
    /// spring-forward night (a gap) resolves like calendars do (RFC 5545,
    /// Temporal's "compatible": moved forward by the gap's length).
    pub fn ends_at(&self, now_ms: i64) -> Option<i64> {
        if self.start == self.end {
            return None;
        }
        let now = jiff::Timestamp::from_millisecond(now_ms).ok()?;
        let local = now.to_zoned(self.tz.clone());
        let t = local.time();
        let crosses_midnight = self.end < self.start;
        let inside = if crosses_midnight {
            t >= self.start || t < self.end
        } else {
            t >= self.start && t < self.end
        };
        if !inside {
            return None;
        }
        let date = local.date();
        let end_date = if crosses_midnight && t >= self.start {
            date.tomorrow().ok()?
        } else {
            date
        };
        let end = end_date
            .to_datetime(self.end)
            .to_zoned(self.tz.clone())
            .ok()?;
        Some(end.timestamp().as_millisecond().max(now_ms + 1))
    }
}

fn parse_hm(s: &str) -> Option<Time> {
    let (h, m) = s.split_once(':')?;
    if h.len() != 2 || m.len() != 2 {
        return None;
    }
    let h: i8 = h.parse().ok()?;
    let m: i8 = m.parse().ok()?;
    Time::new(h, m, 0, 0).ok()
}

fn parse_until(s: &str) -> Option<i64> {
    s.parse::<jiff::Timestamp>()
        .ok()
        .map(jiff::Timestamp::as_millisecond)
}

impl Preferences {
    /// Whether pushes about `room_id` are muted at `now_ms`.
    pub fn is_muted(&self, room_id: i64, now_ms: i64) -> bool {
        match self.muted_rooms.get(&room_id.to_string()) {
            None => false,
            Some(None) => true,
            Some(Some(until)) => parse_until(until).is_some_and(|u| now_ms < u),
        }
    }

    /// The quiet window, if set and valid (it was checked when saved).
    pub fn quiet(&self) -> Option<QuietWindow> {
        self.quiet_hours
            .as_ref()
            .and_then(|q| QuietWindow::parse(q).ok())
    }

    /// Their own route for `kind`, if any.
    pub fn route(&self, kind: Kind) -> Option<Vec<String>> {
        self.routes.get(kind.as_str()).cloned()
    }

    /// The language of their notifications.
    pub fn language_or(&self, default: Language) -> Language {
        self.language.unwrap_or(default)
    }

    /// Checks every field; `providers` are the configured provider names. The
    /// error names the field (`muted_rooms.12`, `routes.file[0]`, …).
    fn validate(&self, providers: &[String]) -> Result<(), AppError> {
        if self.muted_rooms.len() > MAX_MUTED_ROOMS {
            return Err(AppError::invalid(
                "muted_rooms",
                format!("at most {MAX_MUTED_ROOMS} muted rooms"),
            ));
        }
        for (room, until) in &self.muted_rooms {
            let field = format!("muted_rooms.{room}");
            if room.parse::<i64>().map_or(true, |id| id <= 0) {
                return Err(AppError::invalid(
                    &field,
                    format!("`{field}`: a room id is a positive integer, got {room:?}"),
                ));
            }
            if let Some(u) = until {
                if parse_until(u).is_none() {
                    return Err(AppError::invalid(
                        &field,
                        format!(
                            "`{field}` must be an RFC 3339 time (\"2026-12-05T08:00:00Z\") or null, got {u:?}"
                        ),
                    ));
                }
            }
        }
        if let Some(q) = &self.quiet_hours {
            QuietWindow::parse(q)?;
        }
        for (kind, route) in &self.routes {
            let field = format!("routes.{kind}");
            if !matches!(kind.as_str(), "chat" | "call" | "file") {
                return Err(AppError::invalid(
                    &field,
                    format!("`{field}`: the kinds are chat, call and file, got {kind:?}"),
                ));
            }
            if route.is_empty() || route.len() > 8 {
                return Err(AppError::invalid(
                    &field,
                    format!("`{field}` lists 1 to 8 providers"),
                ));
            }
            for (i, entry) in route.iter().enumerate() {
                for name in entry.split('+') {
                    if !providers.iter().any(|p| p == name) {
                        let field = format!("routes.{kind}[{i}]");
                        return Err(AppError::invalid(
                            &field,
                            format!(
                                "`{field}`: {name:?} is not a configured provider (configured: {})",
                                providers.join(", ")
                            ),
                        ));
                    }
                }
            }
        }
        Ok(())
    }
}

/// The stored preferences of `user_id` (defaults when none were saved).
pub(crate) fn load(conn: &Db<'_>, user_id: i64) -> Result<Preferences, DbError> {
    let body: Option<String> = conn.query_opt(
        "SELECT body FROM preferences WHERE user_id = ?1",
        params![user_id],
        |r| r.get(0),
    )?;
    Ok(body.map(|b| parse_stored(user_id, &b)).unwrap_or_default())
}

/// Stored preferences as JSON; defaults (and a warning) when unreadable.
pub(crate) fn parse_stored(user_id: i64, body: &str) -> Preferences {
    serde_json::from_str(body).unwrap_or_else(|e| {
        tracing::warn!(user = user_id, error = %e, "unreadable stored preferences; using defaults");
        Preferences::default()
    })
}

fn save(conn: &Db<'_>, user_id: i64, p: &Preferences) -> Result<(), AppError> {
    let body = serde_json::to_string(p).map_err(|e| AppError::internal(e.to_string()))?;
    conn.execute(
        "INSERT INTO preferences (user_id, body, updated_at) VALUES (?1, ?2, ?3)
         ON CONFLICT (user_id) DO UPDATE SET body = excluded.body, updated_at = excluded.updated_at",
        params![user_id, body, store::now_ms()],
    )?;
    Ok(())
}

fn to_json(p: &Preferences, default_language: Language) -> Value {
    let mut v = serde_json::to_value(p).unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.insert(
            "language".into(),
            serde_json::to_value(p.language_or(default_language)).unwrap_or(Value::Null),
        );
    }
    v
}

/// `GET /api/me/preferences`.
pub(crate) async fn get(
    State(state): State<AppState>,
    user: AuthUser,
) -> Result<Json<Value>, AppError> {
    let id = user.0.id;
    let p = state.store.call(move |c| Ok(load(c, id)?)).await?;
    Ok(Json(to_json(&p, state.language)))
}

/// `PUT /api/me/preferences`: replaces the preferences; fields left out take
/// their defaults. Answers the stored preferences.
pub(crate) async fn put(
    State(state): State<AppState>,
    user: AuthUser,
    body: axum::body::Bytes,
) -> Result<Json<Value>, AppError> {
    let p: Preferences = serde_json::from_slice(&body)
        .map_err(|e| AppError::invalid("body", format!("preferences: {e}")))?;
    let providers: Vec<String> = state
        .dispatcher
        .providers()
        .iter()
        .map(|p| p.name().to_string())
        .collect();
    p.validate(&providers)?;
    let id = user.0.id;
    let saved = p.clone();
    state
        .store
        .call(move |c| {
            save(c, id, &saved)?;
            // An unmuted room or quiet hours switched off: held summaries go out
            // at the next flush instead of waiting for a window that no longer is.
            crate::digest::release_held(c, id, &saved)?;
            Ok(())
        })
        .await?;
    state.digests.wake();
    Ok(Json(to_json(&p, state.language)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(start: &str, end: &str, tz: &str) -> QuietWindow {
        QuietWindow::parse(&QuietHours {
            start: start.into(),
            end: end.into(),
            timezone: tz.into(),
            allow_calls: true,
        })
        .unwrap()
    }

    fn ms(rfc3339: &str) -> i64 {
        rfc3339.parse::<jiff::Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn a_window_across_midnight() {
        let w = window("22:00", "07:30", "Europe/Paris");
        // 21:59 Paris (UTC+1 in December): outside.
        assert_eq!(w.ends_at(ms("2026-12-04T20:59:00Z")), None);
        // 22:00 Paris: inside, ends tomorrow 07:30 Paris.
        assert_eq!(
            w.ends_at(ms("2026-12-04T21:00:00Z")),
            Some(ms("2026-12-05T06:30:00Z"))
        );
        // 03:00 Paris: inside, ends the same morning.
        assert_eq!(
            w.ends_at(ms("2026-12-05T02:00:00Z")),
            Some(ms("2026-12-05T06:30:00Z"))
        );
        // 07:30 Paris: the window is over.
        assert_eq!(w.ends_at(ms("2026-12-05T06:30:00Z")), None);
        // Midday: outside.
        assert_eq!(w.ends_at(ms("2026-12-05T11:00:00Z")), None);
    }

    #[test]
    fn a_window_within_one_day_and_an_empty_one() {
        let w = window("13:00", "14:00", "UTC");
        assert_eq!(w.ends_at(ms("2026-12-04T12:59:59Z")), None);
        assert_eq!(
            w.ends_at(ms("2026-12-04T13:30:00Z")),
            Some(ms("2026-12-04T14:00:00Z"))
        );
        assert_eq!(w.ends_at(ms("2026-12-04T14:00:00Z")), None);
        assert_eq!(
            window("08:00", "08:00", "UTC").ends_at(ms("2026-12-04T08:00:00Z")),
            None
        );
    }

    #[test]
    fn the_window_keeps_its_local_hours_across_dst_changes() {
        let w = window("22:00", "07:30", "Europe/Paris");
        // The night of 28→29 March 2026 (clocks go forward at 02:00 to 03:00):
        // 22:00 CET = 21:00Z; the end 07:30 CEST = 05:30Z (6.5 h later, not 9.5).
        assert_eq!(
            w.ends_at(ms("2026-03-28T21:00:00Z")),
            Some(ms("2026-03-29T05:30:00Z"))
        );
        // The night of 24→25 October 2026 (clocks go back at 03:00 to 02:00):
        // starts 22:00 CEST = 20:00Z, ends 07:30 CET = 06:30Z.
        assert_eq!(w.ends_at(ms("2026-10-24T19:59:00Z")), None);
        assert_eq!(
            w.ends_at(ms("2026-10-24T20:00:00Z")),
            Some(ms("2026-10-25T06:30:00Z"))
        );
        // 02:30 happens twice that night; both are inside.
        assert!(w.ends_at(ms("2026-10-25T00:30:00Z")).is_some());
        assert!(w.ends_at(ms("2026-10-25T01:30:00Z")).is_some());
    }

    #[test]
    fn an_end_inside_the_spring_forward_gap_moves_forward() {
        // 02:30 does not exist in Paris on 29 March 2026: like calendars, the end
        // moves forward by the gap (03:30 CEST = 01:30Z).
        let w = window("01:00", "02:30", "Europe/Paris");
        assert_eq!(
            w.ends_at(ms("2026-03-29T00:15:00Z")),
            Some(ms("2026-03-29T01:30:00Z"))
        );
    }

    #[test]
    fn bad_fields_are_named() {
        let providers = vec!["gotify".to_string(), "smtp".to_string()];
        let bad = |json: &str| -> String {
            let p: Preferences = serde_json::from_str(json).unwrap();
            p.validate(&providers).unwrap_err().body().to_string()
        };
        assert!(
            bad(r#"{"quiet_hours":{"start":"25:00","end":"07:00","timezone":"UTC"}}"#)
                .contains("quiet_hours.start")
        );
        assert!(bad(
            r#"{"quiet_hours":{"start":"22:00","end":"07:00","timezone":"Mars/Olympus"}}"#
        )
        .contains("quiet_hours.timezone"));
        assert!(bad(r#"{"muted_rooms":{"abc":null}}"#).contains("muted_rooms.abc"));
        assert!(bad(r#"{"muted_rooms":{"3":"tomorrow"}}"#).contains("muted_rooms.3"));
        assert!(bad(r#"{"routes":{"file":["fcm"]}}"#).contains("routes.file[0]"));
        assert!(bad(r#"{"routes":{"system":["smtp"]}}"#).contains("routes.system"));
        let ok: Preferences = serde_json::from_str(
            r#"{"language":"en","muted_rooms":{"3":null,"4":"2026-12-05T08:00:00+01:00"},
                "quiet_hours":{"start":"22:00","end":"07:30","timezone":"Europe/Paris","allow_calls":false},
                "routes":{"file":["smtp"],"chat":["gotify+smtp"]}}"#,
        )
        .unwrap();
        assert!(ok.validate(&providers).is_ok());
        assert!(ok.is_muted(3, i64::MAX));
        assert!(ok.is_muted(4, ms("2026-12-05T06:59:00Z")));
        assert!(!ok.is_muted(4, ms("2026-12-05T07:00:00Z")));
        assert!(!ok.is_muted(5, 0));
    }
}
