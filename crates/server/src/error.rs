//! Errors: start-up errors ([`ServerError`]) and request/event errors ([`AppError`]),
//! shown to clients as `{"error": ..., "code": ..., "field": ...}`.

use crate::rusqlite;
use std::path::PathBuf;

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// The server cannot start (or stopped with an error).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServerError {
    /// The shared configuration is invalid (the message names key and source).
    #[error(transparent)]
    Config(#[from] mesh_notify::ConfigError),
    /// A `[server]` value is present but wrong.
    #[error("invalid `{key}` (from {source_name}): {message}")]
    Invalid {
        /// Dotted key (`server.max_frame_bytes`).
        key: String,
        /// Where it came from.
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// The data directory or database cannot be used.
    #[error("cannot use {path}: {reason}")]
    Storage {
        /// File or directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// The PostgreSQL database (`server.database_url`) cannot be used.
    #[error("server.database_url: {reason}")]
    Database {
        /// Why (never the password).
        reason: String,
    },
    /// The dispatcher's routes do not match its providers.
    #[error("cannot build the dispatcher: {0}")]
    Dispatcher(#[from] mesh_notify::BuildError),
    /// The configured outbox backend is not supported by this server.
    #[error("outbox.backend: {0}")]
    Outbox(String),
    /// Listening failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// Serving failed.
    #[error("server failed: {0}")]
    Serve(std::io::Error),
    /// An account cannot be created as asked (`mesh-server user add`); the message
    /// names the field.
    #[error("{message}")]
    Account {
        /// The field at fault (`username`, `password`, `display_name`), if one is.
        field: Option<String>,
        /// What is wrong.
        message: String,
    },
}

/// An error answered to one request or one WebSocket event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppError {
    /// HTTP status (for the HTTP API).
    pub status: StatusCode,
    /// Stable machine-readable code (`not_member`, `missing_field`, ...).
    pub code: &'static str,
    /// Human-readable message (never contains secrets).
    pub message: String,
    /// The request field at fault, if one is.
    pub field: Option<String>,
    /// Seconds to wait before trying again (`Retry-After`), for 429 and 503.
    pub retry_after: Option<u64>,
}

impl AppError {
    pub(crate) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
            field: None,
            retry_after: None,
        }
    }

    pub(crate) fn retry_after(mut self, seconds: u64) -> Self {
        self.retry_after = Some(seconds);
        self
    }

    pub(crate) fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    pub(crate) fn invalid(field: &str, message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_field", message).field(field)
    }

    pub(crate) fn not_member() -> Self {
        Self::new(
            StatusCode::FORBIDDEN,
            "not_member",
            "you are not a member of this room (or it does not exist)",
        )
        .field("room_id")
    }

    pub(crate) fn unauthorized() -> Self {
        Self::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            "missing, unknown or expired session token",
        )
    }

    pub(crate) fn internal(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!(error = %message, "internal error");
        Self::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal",
            "internal server error",
        )
    }

    /// 503: a dependency (the database) is not reachable; the client may retry.
    pub(crate) fn unavailable(message: impl Into<String>) -> Self {
        let message = message.into();
        tracing::error!(error = %message, "service unavailable");
        let mut e = Self::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "unavailable",
            "the database is not reachable; try again shortly",
        );
        e.retry_after = Some(1);
        e
    }

    /// The JSON body (`{"error", "code", "field"?}`).
    pub fn body(&self) -> serde_json::Value {
        let mut v = json!({"error": self.message, "code": self.code});
        if let Some(f) = &self.field {
            v["field"] = json!(f);
        }
        if let Some(r) = self.retry_after {
            v["retry_after"] = json!(r);
        }
        v
    }

    /// A serde error about a request body, with the field it names when it names one.
    pub(crate) fn from_serde(message: &str) -> Self {
        let field = backticked(message);
        let code = if message.starts_with("missing field") {
            "missing_field"
        } else if message.starts_with("unknown field") {
            "unknown_field"
        } else {
            "invalid_request"
        };
        let mut e = Self::new(StatusCode::BAD_REQUEST, code, message.to_string());
        e.field = field;
        e
    }
}

/// The first `` `name` `` in a serde message.
fn backticked(message: &str) -> Option<String> {
    let start = message.find('`')? + 1;
    let len = message[start..].find('`')?;
    Some(message[start..start + len].to_string())
}

impl From<crate::db::DbError> for AppError {
    fn from(e: crate::db::DbError) -> Self {
        match e.kind {
            crate::db::ErrorKind::Unavailable => AppError::unavailable(format!("database: {e}")),
            _ => AppError::internal(format!("database: {e}")),
        }
    }
}

impl From<rusqlite::Error> for AppError {
    fn from(e: rusqlite::Error) -> Self {
        AppError::internal(format!("database: {e}"))
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let mut response = (self.status, Json(self.body())).into_response();
        if let Some(secs) = self.retry_after {
            response
                .headers_mut()
                .insert(axum::http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serde_messages_name_the_field() {
        let e = AppError::from_serde("missing field `username` at line 1 column 2");
        assert_eq!(e.code, "missing_field");
        assert_eq!(e.field.as_deref(), Some("username"));
        assert_eq!(e.body()["field"], "username");
        let e = AppError::from_serde("expected value at line 1 column 1");
        assert_eq!(e.field, None);
        assert_eq!(e.code, "invalid_request");
    }
}
