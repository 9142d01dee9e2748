//! Passwords (argon2id) and opaque session tokens (random, stored as SHA-256).
//! Neither a password nor a token is ever logged.

use std::cell::RefCell;

use argon2::password_hash::phc::{Output, ParamsString, PasswordHash, Salt};
use argon2::{Algorithm, Argon2, Block, Params, Version};
use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use sha2::{Digest, Sha256};

use crate::error::AppError;

use crate::state::AppState;
use crate::store::{self, User};

thread_local! {
    /// This thread's argon2 working memory (19 MiB with the default parameters),
    /// allocated once and reused by every hash on the thread. Allocating it anew for
    /// each hash left every hashing thread's allocator holding freed 19 MiB
    /// regions; reused, the memory is bounded by the number of hashing threads.
    static BLOCKS: RefCell<Vec<Block>> = const { RefCell::new(Vec::new()) };
}

/// Runs `f` with `count` argon2 blocks: this thread's reused memory for the default
/// parameters (or smaller), a temporary allocation for larger ones (hashes made
/// with other parameters are not kept around). Argon2 overwrites the blocks before
/// reading them, so they are not cleared between hashes (a freed allocation was not
/// cleared either; wiping 19 MiB per hash doubled a login's cost in debug builds).
fn with_blocks<R>(count: usize, f: impl FnOnce(&mut [Block]) -> R) -> R {
    if count > Params::DEFAULT.block_count() {
        let mut blocks = vec![Block::new(); count];
        return f(&mut blocks);
    }
    BLOCKS.with(|cell| {
        let mut blocks = cell.borrow_mut();
        if blocks.len() < count {
            blocks.resize(count, Block::new());
        }
        f(&mut blocks[..count])
    })
}

fn hashing_failed(e: impl std::fmt::Display) -> AppError {
    AppError::internal(format!("password hashing failed: {e}"))
}

/// Hashes a password with argon2id (default parameters: 19 MiB, 2 passes) and a
/// random 16-byte salt; returns the PHC string. Blocking: call it from a hashing
/// thread.
pub(crate) fn hash_password(password: &str) -> Result<String, AppError> {
    let mut salt = [0u8; 16];
    getrandom::fill(&mut salt).map_err(|e| AppError::internal(format!("no randomness: {e}")))?;
    let params = Params::DEFAULT;
    let argon2 = Argon2::new(Algorithm::Argon2id, Version::V0x13, params.clone());
    let mut out = [0u8; Params::DEFAULT_OUTPUT_LEN];
    with_blocks(params.block_count(), |blocks| {
        argon2.hash_password_into_with_memory(password.as_bytes(), &salt, &mut out, blocks)
    })
    .map_err(hashing_failed)?;
    let phc = PasswordHash {
        algorithm: Algorithm::Argon2id.ident(),
        version: Some(Version::V0x13.into()),
        params: ParamsString::try_from(&params).map_err(hashing_failed)?,
        salt: Some(Salt::new(&salt).map_err(hashing_failed)?),
        hash: Some(Output::new(&out).map_err(hashing_failed)?),
    };
    Ok(phc.to_string())
}

/// Checks a password against a stored PHC string (any argon2 variant, version and
/// parameters), comparing in constant time. Blocking.
pub(crate) fn verify_password(password: &str, phc: &str) -> bool {
    let Ok(parsed) = PasswordHash::new(phc) else {
        return false;
    };
    let (Some(salt), Some(expected)) = (&parsed.salt, &parsed.hash) else {
        return false;
    };
    let Ok(algorithm) = Algorithm::try_from(parsed.algorithm.as_str()) else {
        return false;
    };
    let version = match parsed.version.map(Version::try_from).transpose() {
        Ok(v) => v.unwrap_or_default(),
        Err(_) => return false,
    };
    let Ok(params) = Params::try_from(&parsed) else {
        return false;
    };
    let argon2 = Argon2::new(algorithm, version, params.clone());
    let mut out = vec![0u8; expected.len()];
    let hashed = with_blocks(params.block_count(), |blocks| {
        argon2.hash_password_into_with_memory(password.as_bytes(), salt.as_ref(), &mut out, blocks)
    });
    // `Output` compares in constant time.
    hashed.is_ok() && Output::new(&out).is_ok_and(|computed| &computed == expected)
}

/// A hash to verify against when the user is unknown (same work as a real one).
pub(crate) fn dummy_hash() -> Option<&'static str> {
    static DUMMY: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    DUMMY
        .get_or_init(|| hash_password("mesh-server timing equaliser").ok())
        .as_deref()
}

/// A new session token: 32 random bytes, hex.
pub(crate) fn new_token() -> Result<String, AppError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| AppError::internal(format!("no randomness: {e}")))?;
    Ok(hex(&bytes))
}

/// What the database keeps of a token.
pub(crate) fn token_hash(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0x0f)]));
    }
    s
}

/// The bearer token of a request: `Authorization: Bearer ...`. Session tokens are
/// never read from the URL (URLs end up in proxy logs and browser history):
/// browsers open WebSockets with a single-use ticket instead (`/ws?ticket=`).
pub(crate) fn request_token(headers: &axum::http::HeaderMap) -> Option<String> {
    let value = headers.get(axum::http::header::AUTHORIZATION)?;
    let value = value.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim().to_string())
        .filter(|t| !t.is_empty())
}

/// The value of `name` in the query string, if present and not empty.
pub(crate) fn query_param<'a>(uri: &'a axum::http::Uri, name: &str) -> Option<&'a str> {
    uri.query()?
        .split('&')
        .filter_map(|pair| pair.split_once('='))
        .find(|(k, v)| *k == name && !v.is_empty())
        .map(|(_, v)| v)
}

/// How long a WebSocket ticket stays valid.
pub(crate) const WS_TICKET_TTL_MS: i64 = 30_000;

/// Issues a single-use WebSocket ticket for the session `token_hash`, valid
/// [`WS_TICKET_TTL_MS`]. Only its hash is stored.
pub(crate) fn issue_ticket(
    conn: &crate::db::Db<'_>,
    token_hash: &str,
    now: i64,
) -> Result<String, AppError> {
    let ticket = new_token()?;
    conn.execute(
        "INSERT INTO ws_tickets (ticket_hash, token_hash, expires_at) VALUES (?1, ?2, ?3)",
        crate::db::params![
            self::token_hash(&ticket),
            token_hash,
            now + WS_TICKET_TTL_MS
        ],
    )?;
    Ok(ticket)
}

/// Takes (deletes) a ticket: the session token hash it was issued for, if it
/// existed and had not expired at `now`. A ticket works once.
pub(crate) fn consume_ticket(
    conn: &crate::db::Db<'_>,
    ticket: &str,
    now: i64,
) -> Result<Option<String>, crate::db::DbError> {
    conn.query_opt(
        "DELETE FROM ws_tickets WHERE ticket_hash = ?1 RETURNING token_hash, expires_at",
        crate::db::params![token_hash(ticket)],
        |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)),
    )
    .map(|found| found.filter(|(_, exp)| *exp > now).map(|(hash, _)| hash))
}

/// A live login session.
#[derive(Debug, Clone)]
pub(crate) struct Session {
    /// Its user.
    pub user: User,
    /// What the database keeps of its token.
    pub token_hash: String,
    /// When it expires (ms since the epoch).
    pub expires_at: i64,
}

/// How a request proves its session.
pub(crate) enum Credential {
    /// `Authorization: Bearer` session token.
    Token(String),
    /// A single-use WebSocket ticket (`/ws?ticket=`).
    Ticket(String),
}

/// Looks a token up; `unauthorized` when unknown or expired.
pub(crate) async fn authenticate_session(
    state: &AppState,
    token: Option<String>,
) -> Result<Session, AppError> {
    authenticate_credential(state, token.map(Credential::Token)).await
}

/// Looks a session token or a WebSocket ticket up (a ticket is used up);
/// `unauthorized` when unknown or expired.
pub(crate) async fn authenticate_credential(
    state: &AppState,
    credential: Option<Credential>,
) -> Result<Session, AppError> {
    let Some(credential) = credential else {
        return Err(AppError::unauthorized());
    };
    state
        .store
        .call(move |conn| {
            let hash = match credential {
                Credential::Token(token) => token_hash(&token),
                Credential::Ticket(ticket) => consume_ticket(conn, &ticket, store::now_ms())?
                    .ok_or_else(|| {
                        AppError::new(
                            axum::http::StatusCode::UNAUTHORIZED,
                            "unauthorized",
                            "unknown, used or expired WebSocket ticket",
                        )
                        .field("ticket")
                    })?,
            };
            let (user, expires_at) = store::session_user(conn, &hash, store::now_ms())?
                .ok_or_else(AppError::unauthorized)?;
            Ok(Session {
                user,
                token_hash: hash,
                expires_at,
            })
        })
        .await
}

/// Looks a token up; `unauthorized` when unknown or expired.
pub(crate) async fn authenticate(
    state: &AppState,
    token: Option<String>,
) -> Result<User, AppError> {
    authenticate_session(state, token).await.map(|s| s.user)
}

/// The logged-in user of an HTTP API request.
pub(crate) struct AuthUser(pub User);

impl FromRequestParts<AppState> for AuthUser {
    type Rejection = AppError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &AppState,
    ) -> Result<Self, Self::Rejection> {
        authenticate(state, request_token(&parts.headers))
            .await
            .map(AuthUser)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_agree_with_the_argon2_crates_own_hasher_and_verifier() {
        use argon2::password_hash::{PasswordHasher, PasswordVerifier};
        // Stored by earlier versions (the crate's own hasher): still verified.
        let theirs = Argon2::default()
            .hash_password(b"correct horse")
            .unwrap()
            .to_string();
        assert!(verify_password("correct horse", &theirs));
        assert!(!verify_password("wrong horse", &theirs));
        // Ours: verified by the crate's own verifier.
        let ours = hash_password("battery staple").unwrap();
        let parsed = PasswordHash::new(&ours).unwrap();
        assert!(Argon2::default()
            .verify_password(b"battery staple", &parsed)
            .is_ok());
        // Other parameters (smaller here) still verify, with a temporary buffer
        // when larger than the default.
        let small = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(1024, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw-small")
        .unwrap()
        .to_string();
        assert!(verify_password("pw-small", &small));
        let big = Argon2::new(
            Algorithm::Argon2id,
            Version::V0x13,
            Params::new(Params::DEFAULT_M_COST * 2, 1, 1, None).unwrap(),
        )
        .hash_password(b"pw-big")
        .unwrap()
        .to_string();
        assert!(verify_password("pw-big", &big));
        assert!(!verify_password(
            "pw-big",
            "$argon2id$v=19$m=19456,t=2,p=1$bm90IGEgc2FsdA$AAAA"
        ));
    }

    #[test]
    fn each_thread_reuses_one_working_memory_for_every_hash() {
        std::thread::spawn(|| {
            let memory = || BLOCKS.with(|b| (b.borrow().as_ptr() as usize, b.borrow().len()));
            let phc = hash_password("first password").unwrap();
            let (ptr, len) = memory();
            assert_eq!(len, Params::DEFAULT.block_count());
            for i in 0..3 {
                hash_password(&format!("password {i}")).unwrap();
                assert!(verify_password("first password", &phc));
                assert_eq!(memory(), (ptr, len), "the same memory, not a new one");
            }
        })
        .join()
        .unwrap();
    }

    #[test]
    fn passwords_round_trip_and_hashes_are_salted() {
        let a = hash_password("correct horse").unwrap();
        let b = hash_password("correct horse").unwrap();
        assert_ne!(a, b);
        assert!(a.starts_with("$argon2id$"));
        assert!(verify_password("correct horse", &a));
        assert!(!verify_password("wrong horse", &a));
        assert!(!verify_password("x", "not a hash"));
    }

    #[test]
    fn tickets_work_once_and_expire() {
        let sqlite = crate::rusqlite::Connection::open_in_memory().unwrap();
        let conn = crate::db::Db::sqlite(&sqlite);
        conn.execute_batch(crate::store::SCHEMA).unwrap();
        conn.execute_batch(
            "INSERT INTO users (id, username, display_name, password_hash, created_at) VALUES (1, 'a', 'A', 'x', 0);
             INSERT INTO sessions (token_hash, user_id, created_at, expires_at) VALUES ('session-hash', 1, 0, 1000000);",
        )
        .unwrap();
        let ticket = issue_ticket(&conn, "session-hash", 1_000).unwrap();
        assert_eq!(ticket.len(), 64);
        let stored: String = conn
            .query_row(
                "SELECT ticket_hash FROM ws_tickets",
                crate::db::params![],
                |r| r.get(0),
            )
            .unwrap();
        assert_ne!(stored, ticket, "only the hash is stored");
        assert_eq!(
            consume_ticket(&conn, &ticket, 1_001).unwrap().as_deref(),
            Some("session-hash")
        );
        assert_eq!(consume_ticket(&conn, &ticket, 1_002).unwrap(), None, "used");
        let late = issue_ticket(&conn, "session-hash", 1_000).unwrap();
        assert_eq!(
            consume_ticket(&conn, &late, 1_000 + WS_TICKET_TTL_MS).unwrap(),
            None,
            "expired after 30 s"
        );
        assert_eq!(consume_ticket(&conn, "unknown", 0).unwrap(), None);
    }

    #[test]
    fn session_tokens_come_from_the_header_only() {
        let mut headers = axum::http::HeaderMap::new();
        let uri: axum::http::Uri = "/ws?token=abc&ticket=t1".parse().unwrap();
        assert_eq!(request_token(&headers), None);
        assert_eq!(query_param(&uri, "ticket"), Some("t1"));
        assert_eq!(query_param(&uri, "nope"), None);
        headers.insert("authorization", "Bearer xyz".parse().unwrap());
        assert_eq!(request_token(&headers).as_deref(), Some("xyz"));
    }

    #[test]
    fn tokens_are_random_and_stored_hashed() {
        let t = new_token().unwrap();
        assert_eq!(t.len(), 64);
        assert_ne!(t, new_token().unwrap());
        let h = token_hash(&t);
        assert_eq!(h.len(), 64);
        assert_ne!(h, t);
        assert_eq!(
            token_hash("abc"),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }
}
