//! Creating accounts: the checks shared by `POST /api/register` and
//! `mesh-server user add`.

use axum::http::StatusCode;

use crate::error::AppError;
use crate::rusqlite::{params, Connection};
use crate::store::{self, now_ms, User};

/// Longest password accepted, in bytes (register, login and `user add`).
pub(crate) const MAX_PASSWORD_BYTES: usize = 1024;

/// Checks a text field's length (in characters) and that it has no control
/// characters.
pub(crate) fn check_len(field: &str, value: &str, min: usize, max: usize) -> Result<(), AppError> {
    let n = value.chars().count();
    if n < min || n > max {
        return Err(AppError::invalid(
            field,
            format!("`{field}` must be {min} to {max} characters"),
        ));
    }
    if value.chars().any(char::is_control) {
        return Err(AppError::invalid(
            field,
            format!("`{field}` must not contain control characters"),
        ));
    }
    Ok(())
}

/// A checked new account (not stored yet).
#[derive(Debug)]
pub(crate) struct NewUser {
    pub username: String,
    pub display_name: String,
}

impl NewUser {
    /// Checks username, password and display name (defaults to the username).
    pub(crate) fn check(
        username: &str,
        password: &str,
        display_name: Option<&str>,
    ) -> Result<Self, AppError> {
        let username = username.trim().to_string();
        check_len("username", &username, 3, 32)?;
        if !username
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
        {
            return Err(AppError::invalid(
                "username",
                "`username` may only contain letters, digits, `_`, `-` and `.`",
            ));
        }
        if password.len() < 8 || password.len() > MAX_PASSWORD_BYTES {
            return Err(AppError::invalid(
                "password",
                format!("`password` must be 8 to {MAX_PASSWORD_BYTES} bytes"),
            ));
        }
        let display_name = display_name
            .map(|d| d.trim().to_string())
            .unwrap_or_else(|| username.clone());
        check_len("display_name", &display_name, 1, 64)?;
        Ok(Self {
            username,
            display_name,
        })
    }
}

pub(crate) fn username_taken() -> AppError {
    AppError::new(
        StatusCode::CONFLICT,
        "username_taken",
        "this username is taken",
    )
    .field("username")
}

/// Stores the account with its password hash (PHC string).
pub(crate) fn insert_user(conn: &Connection, new: NewUser, hash: &str) -> Result<User, AppError> {
    if store::user_by_name(conn, &new.username)?.is_some() {
        return Err(username_taken());
    }
    conn.execute(
        "INSERT INTO users (username, display_name, password_hash, created_at) VALUES (?1, ?2, ?3, ?4)",
        params![new.username, new.display_name, hash, now_ms()],
    )?;
    Ok(User {
        id: conn.last_insert_rowid(),
        username: new.username,
        display_name: new.display_name,
    })
}
