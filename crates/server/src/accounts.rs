//! Creating accounts: the checks shared by `POST /api/register` and
//! `mesh-server user add`.

use axum::http::StatusCode;

use crate::db::{params, Db, ErrorKind};
use crate::error::AppError;
use crate::store::{self, now_ms, User};

/// Longest password accepted, in bytes (register, login and `user add`).
pub(crate) const MAX_PASSWORD_BYTES: usize = 1024;

/// Characters that change how text around them is shown without being visible
/// themselves: bidirectional overrides, embeddings and isolates (which let "Alice"
/// display as someone else, or a file name end in a fake extension), zero-width
/// characters, the BOM and other invisible formatting marks.
pub(crate) fn is_invisible_format(c: char) -> bool {
    matches!(
        c,
        '\u{00AD}'                     // soft hyphen
            | '\u{061C}'               // Arabic letter mark
            | '\u{115F}' | '\u{1160}'   // Hangul fillers
            | '\u{180E}'               // Mongolian vowel separator
            | '\u{200B}'..='\u{200F}'  // zero-width space/non-joiner/joiner, LRM, RLM
                                       // (a joiner inside an emoji sequence is allowed
                                       // by `has_invisible_format`)
            | '\u{202A}'..='\u{202E}'  // bidi embeddings and overrides
            | '\u{2060}'..='\u{2064}'  // word joiner, invisible operators
            | '\u{2066}'..='\u{206F}'  // bidi isolates, deprecated format characters
            | '\u{3164}'               // Hangul filler
            | '\u{FEFF}'               // BOM, zero-width no-break space
            | '\u{FFA0}'               // halfwidth Hangul filler
            | '\u{FFF9}'..='\u{FFFB}'  // interlinear annotation
            | '\u{E0000}'..='\u{E007F}' // tags
    )
}

/// Emoji blocks (where a zero-width joiner makes one glyph of two: 👩‍💻).
fn is_emoji(c: char) -> bool {
    matches!(c, '\u{2600}'..='\u{27BF}' | '\u{1F000}'..='\u{1FAFF}')
}

/// Whether `value` has an invisible formatting character, a zero-width joiner
/// between two emoji (optionally after a variation selector) excepted.
pub(crate) fn has_invisible_format(value: &str) -> bool {
    let chars: Vec<char> = value.chars().collect();
    chars.iter().enumerate().any(|(i, &c)| {
        if !is_invisible_format(c) {
            return false;
        }
        let joins_emoji = c == '\u{200D}'
            && i > 0
            && chars.get(i + 1).is_some_and(|next| is_emoji(*next))
            && chars[..i]
                .iter()
                .rev()
                .find(|p| !matches!(p, '\u{FE00}'..='\u{FE0F}' | '\u{1F3FB}'..='\u{1F3FF}'))
                .is_some_and(|prev| is_emoji(*prev));
        !joins_emoji
    })
}

/// Checks a text field's length (in characters) and that it has no control
/// characters nor invisible formatting characters ([`has_invisible_format`]).
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
    if has_invisible_format(value) {
        return Err(AppError::invalid(
            field,
            format!(
                "`{field}` must not contain invisible formatting characters (bidirectional or zero-width)"
            ),
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
pub(crate) fn insert_user(conn: &Db<'_>, new: NewUser, hash: &str) -> Result<User, AppError> {
    if store::user_by_name(conn, &new.username)?.is_some() {
        return Err(username_taken());
    }
    // Another instance may take the name between the check and the insert: the
    // unique index decides, with the same answer.
    let id: i64 = conn
        .query_row(
            "INSERT INTO users (username, display_name, password_hash, created_at) VALUES (?1, ?2, ?3, ?4)
             RETURNING id",
            params![new.username, new.display_name, hash, now_ms()],
            |r| r.get(0),
        )
        .map_err(|e| match e.kind {
            ErrorKind::Unique => username_taken(),
            _ => AppError::from(e),
        })?;
    Ok(User {
        id,
        username: new.username,
        display_name: new.display_name,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_refuse_bidi_and_zero_width_characters() {
        for bad in [
            "Ali\u{202E}ecb",
            "Bob\u{200B}",
            "\u{2066}Eve\u{2069}",
            "Mal\u{FEFF}lory",
            "x\u{200D}y",
            "\u{061C}name",
        ] {
            let e = check_len("display_name", bad, 1, 64).unwrap_err();
            assert_eq!(e.field.as_deref(), Some("display_name"), "{bad:?}");
        }
        for good in [
            "Alice",
            "Zoë",
            "Ελένη",
            "李雷",
            "José María",
            "👩‍💻 Dev",
            "❤️‍🔥",
            "👋🏽",
        ] {
            assert!(check_len("display_name", good, 1, 64).is_ok(), "{good:?}");
        }
        // A joiner is accepted only inside an emoji sequence.
        assert!(check_len("display_name", "a\u{200D}👍", 1, 64).is_err());
        assert!(check_len("display_name", "👍\u{200D}", 1, 64).is_err());
    }
}
