//! Email addresses are verified before they receive anything: adding one sends a
//! six-digit code through the configured SMTP provider, and the address is used
//! only once `POST /api/me/addresses/{id}/verify {"code"}` succeeds. So nobody can
//! make the server mail a third party more than that one code (and the resend
//! cooldown bounds even that).

use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use mesh_notify_core::{Address, AddressKind, Kind, Language, Notification, Recipient, Secret};
use serde::Deserialize;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::api::{parse_id, ApiJson};
use crate::auth::AuthUser;
use crate::db::{params, Db, DbError};
use crate::error::AppError;
use crate::state::AppState;
use crate::store::{now_ms, User};

/// How long a code is valid.
pub(crate) const CODE_TTL_MS: i64 = 15 * 60 * 1000;
/// Wrong codes accepted before the code is void.
pub(crate) const MAX_ATTEMPTS: i64 = 5;
/// Shortest time between two codes for one address.
pub(crate) const RESEND_AFTER_MS: i64 = 60 * 1000;
/// Longest wait for the SMTP server.
const SEND_TIMEOUT: Duration = Duration::from_secs(15);

/// A random six-digit code.
fn new_code() -> Result<String, AppError> {
    let mut bytes = [0u8; 4];
    getrandom::fill(&mut bytes).map_err(|e| AppError::internal(format!("no randomness: {e}")))?;
    Ok(format!("{:06}", u32::from_le_bytes(bytes) % 1_000_000))
}

/// What is stored of a code: bound to its address.
fn code_hash(address_id: i64, code: &str) -> String {
    let digest = Sha256::digest(format!("{address_id}:{code}").as_bytes());
    digest.iter().map(|b| format!("{b:02x}")).collect()
}

/// Stores a new code for the address; `Err` (429) when the last one was sent less
/// than [`RESEND_AFTER_MS`] ago.
pub(crate) fn issue_code(conn: &Db<'_>, address_id: i64) -> Result<String, AppError> {
    let now = now_ms();
    let sent_at: Option<i64> = conn.query_opt(
        "SELECT sent_at FROM address_verifications WHERE address_id = ?1",
        params![address_id],
        |r| r.get(0),
    )?;
    if let Some(sent_at) = sent_at {
        let wait_ms = sent_at + RESEND_AFTER_MS - now;
        if wait_ms > 0 {
            let secs = u64::try_from(wait_ms).unwrap_or(0).div_ceil(1000).max(1);
            return Err(AppError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_attempts",
                format!(
                    "a verification code was sent less than a minute ago; try again in {secs} s"
                ),
            )
            .retry_after(secs));
        }
    }
    let code = new_code()?;
    conn.execute(
        "INSERT INTO address_verifications (address_id, code_hash, expires_at, attempts, sent_at)
         VALUES (?1, ?2, ?3, 0, ?4)
         ON CONFLICT (address_id) DO UPDATE SET code_hash = excluded.code_hash,
           expires_at = excluded.expires_at, attempts = 0, sent_at = excluded.sent_at",
        params![
            address_id,
            code_hash(address_id, &code),
            now + CODE_TTL_MS,
            now
        ],
    )?;
    Ok(code)
}

/// Forgets the address's code (its email could not be sent: a new one may be asked
/// for at once).
pub(crate) fn drop_code(conn: &Db<'_>, address_id: i64) -> Result<usize, DbError> {
    conn.execute(
        "DELETE FROM address_verifications WHERE address_id = ?1",
        params![address_id],
    )
}

/// Sends the code to `email` through the SMTP provider.
pub(crate) async fn send_code(
    state: &AppState,
    user: &User,
    email: &str,
    code: &str,
) -> Result<(), AppError> {
    let Some(smtp) = smtp_provider(state) else {
        return Err(email_unavailable());
    };
    let (title, body) = match state.language {
        Language::En => (
            "Mesh: your verification code".to_string(),
            format!(
                "Your Mesh verification code: {code}\nIt is valid for 15 minutes. If you did not add this address to Mesh, ignore this message."
            ),
        ),
        _ => (
            "Mesh : votre code de vérification".to_string(),
            format!(
                "Votre code de vérification Mesh : {code}\nIl est valable 15 minutes. Si vous n'avez pas ajouté cette adresse à Mesh, ignorez ce message."
            ),
        ),
    };
    let recipient = Recipient::new(user.id.to_string(), user.display_name.clone())
        .with_address(Address::new(AddressKind::Email, Secret::new(email)));
    let n = Notification::new(Kind::System, recipient, title, body);
    match tokio::time::timeout(SEND_TIMEOUT, smtp.send(&n)).await {
        Ok(Ok(_)) => Ok(()),
        Ok(Err(e)) => {
            tracing::warn!(user = user.id, error = %e, "the verification email was not sent");
            Err(send_failed())
        }
        Err(_) => {
            tracing::warn!(user = user.id, "the verification email timed out");
            Err(send_failed())
        }
    }
}

fn send_failed() -> AppError {
    AppError::new(
        StatusCode::BAD_GATEWAY,
        "email_send_failed",
        "the verification email could not be sent; try adding the address again later",
    )
    .field("value")
}

/// The configured SMTP provider, if any.
pub(crate) fn smtp_provider(
    state: &AppState,
) -> Option<std::sync::Arc<dyn mesh_notify_core::Notifier>> {
    state
        .dispatcher
        .providers()
        .into_iter()
        .find(|p| p.name() == "smtp")
}

/// Refusal when no SMTP provider is configured.
pub(crate) fn email_unavailable() -> AppError {
    AppError::new(
        StatusCode::CONFLICT,
        "email_unavailable",
        "email addresses need the SMTP provider, which this server does not have",
    )
    .field("kind")
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct VerifyRequest {
    code: String,
}

/// `POST /api/me/addresses/{id}/verify {"code"}` → `200 {"address"}` (verified).
pub(crate) async fn verify(
    State(state): State<AppState>,
    AuthUser(user): AuthUser,
    Path(raw_id): Path<String>,
    ApiJson(req): ApiJson<VerifyRequest>,
) -> Result<Json<Value>, AppError> {
    let id = parse_id(&raw_id, "id")?;
    let code = req.code.trim().to_string();
    if code.is_empty() || code.len() > 16 {
        return Err(AppError::invalid(
            "code",
            "`code` is the 6-digit code sent by email",
        ));
    }
    let (kind, value) = state
        .store
        .call(move |c| {
            let tx = c.transaction()?;
            let Some((kind, value, verified)) = tx.query_opt(
                "SELECT kind, value, verified FROM addresses WHERE id = ?1 AND user_id = ?2",
                params![id, user.id],
                |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, bool>(2)?)),
            )?
            else {
                return Err(AppError::new(StatusCode::NOT_FOUND, "not_found", "no such address").field("id"));
            };
            if verified {
                return Ok((kind, value));
            }
            // Locked with PostgreSQL: guesses through several instances at once
            // count one after the other against the attempt limit.
            let lock = match tx.backend() {
                crate::db::Backend::Sqlite => "",
                crate::db::Backend::Postgres => " FOR UPDATE",
            };
            let pending: Option<(String, i64, i64)> = tx.query_opt(
                &format!("SELECT code_hash, expires_at, attempts FROM address_verifications WHERE address_id = ?1{lock}"),
                params![id],
                |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
            )?;
            let Some((hash, _, attempts)) = pending.filter(|(_, exp, _)| *exp > now_ms())
            else {
                return Err(AppError::invalid(
                    "code",
                    "no valid code for this address (expired or never sent); add the address again to get a new one",
                ));
            };
            if hash != code_hash(id, &code) {
                let attempts = attempts + 1;
                if attempts >= MAX_ATTEMPTS {
                    tx.execute("DELETE FROM address_verifications WHERE address_id = ?1", params![id])?;
                    tx.commit()?;
                    return Err(AppError::new(
                        StatusCode::TOO_MANY_REQUESTS,
                        "too_many_attempts",
                        "too many wrong codes: this code is void; add the address again to get a new one",
                    )
                    .field("code"));
                }
                tx.execute(
                    "UPDATE address_verifications SET attempts = ?2 WHERE address_id = ?1",
                    params![id, attempts],
                )?;
                tx.commit()?;
                return Err(AppError::invalid("code", "wrong code"));
            }
            tx.execute("UPDATE addresses SET verified = 1 WHERE id = ?1", params![id])?;
            tx.execute("DELETE FROM address_verifications WHERE address_id = ?1", params![id])?;
            tx.commit()?;
            Ok((kind, value))
        })
        .await?;
    tracing::info!(user = user.id, address = id, "email address verified");
    Ok(Json(json!({
        "address": {"id": id, "kind": kind, "value": crate::api::preview(&value), "verified": true}
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_six_digits_and_bound_to_their_address() {
        for _ in 0..100 {
            let c = new_code().unwrap();
            assert_eq!(c.len(), 6);
            assert!(c.chars().all(|d| d.is_ascii_digit()));
        }
        assert_ne!(code_hash(1, "123456"), code_hash(2, "123456"));
        assert_eq!(code_hash(1, "123456"), code_hash(1, "123456"));
    }
}
