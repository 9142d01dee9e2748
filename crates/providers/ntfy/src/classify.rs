//! ntfy's answers, classified.

use mesh_notify_core::{parse_retry_after, NotifyError};
use mesh_notify_provider_kit::http::is_transient_status;
use reqwest::StatusCode;
use serde::Deserialize;

/// ntfy's error body (`server/errors.go`).
#[derive(Debug, Deserialize)]
struct NtfyErrorBody {
    #[serde(default)]
    code: u32,
    #[serde(default)]
    error: String,
}

/// Classifies a non-2xx answer to a publish.
///
/// * 401 (`40101`, the token is unknown) → misconfigured;
/// * 403 (`40301`, the token or anonymous access may not write this topic) →
///   misconfigured for the configured default topic; permanent for a
///   recipient's own topic (their topic is not writable with our token: kept,
///   not reported gone, as ntfy topics do not die);
/// * 429: `42909` (too many failed logins: our token is wrong) → misconfigured;
///   any other (`42901` requests, `42908` daily messages, ...) → transient,
///   honouring `Retry-After` when the server (or a proxy) sends one;
/// * 408, 425, 5xx (including `507` `50701`, UnifiedPush topic without
///   subscriber) → transient;
/// * other 4xx (`40009` topic invalid, `40007` priority, `413` too large) →
///   permanent.
pub fn classify(
    status: StatusCode,
    retry_after: Option<&str>,
    body: &str,
    own_topic: bool,
) -> NotifyError {
    let parsed = serde_json::from_str::<NtfyErrorBody>(body).ok();
    let detail = match &parsed {
        Some(e) if e.code != 0 => format!("{} ({})", e.error, e.code),
        Some(e) => e.error.clone(),
        None => body.chars().take(200).collect(),
    };
    let code = parsed.as_ref().map(|e| e.code).unwrap_or(0);
    let what = format!("ntfy answered {status}: {detail}");
    match status.as_u16() {
        401 => NotifyError::misconfigured(format!("the ntfy access token was refused ({what})")),
        403 if own_topic => NotifyError::permanent(format!(
            "the ntfy token may not publish to the recipient's topic ({what})"
        )),
        403 => NotifyError::misconfigured(format!(
            "the ntfy token may not publish to the configured topic ({what})"
        )),
        429 if code == 42909 => NotifyError::misconfigured(format!(
            "ntfy refuses our logins after too many failures; check the token ({what})"
        )),
        _ if is_transient_status(status) => NotifyError::Transient {
            reason: what,
            retry_after: retry_after.and_then(parse_retry_after),
        },
        _ => NotifyError::permanent(what),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_notify_core::ErrorClass;
    use std::time::Duration;

    fn c(status: u16, body: &str, own: bool) -> NotifyError {
        classify(StatusCode::from_u16(status).unwrap(), Some("7"), body, own)
    }

    fn err(status: u16, code: u32, msg: &str) -> String {
        format!(
            r#"{{"code":{code},"http":{status},"error":"{msg}","link":"https://ntfy.sh/docs/publish/"}}"#
        )
    }

    #[test]
    fn ntfys_error_codes_are_classified() {
        assert_eq!(
            c(401, &err(401, 40101, "unauthorized"), true).class(),
            ErrorClass::Misconfigured
        );
        assert_eq!(
            c(403, &err(403, 40301, "forbidden"), false).class(),
            ErrorClass::Misconfigured
        );
        assert_eq!(
            c(403, &err(403, 40301, "forbidden"), true).class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            c(
                400,
                &err(400, 40009, "invalid request: topic invalid"),
                true
            )
            .class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            c(413, &err(413, 41303, "JSON body too large"), true).class(),
            ErrorClass::Permanent
        );
        assert_eq!(
            c(
                429,
                &err(429, 42909, "limit reached: too many auth failures"),
                true
            )
            .class(),
            ErrorClass::Misconfigured
        );
        assert_eq!(
            c(
                507,
                &err(507, 50701, "cannot publish to UnifiedPush topic"),
                true
            )
            .class(),
            ErrorClass::Transient
        );
        assert_eq!(
            c(502, "<html>bad gateway</html>", true).class(),
            ErrorClass::Transient
        );
    }

    #[test]
    fn rate_limits_are_transient_and_honour_retry_after() {
        let e = c(
            429,
            &err(429, 42901, "limit reached: too many requests"),
            true,
        );
        assert_eq!(
            e,
            NotifyError::Transient {
                reason:
                    "ntfy answered 429 Too Many Requests: limit reached: too many requests (42901)"
                        .into(),
                retry_after: Some(Duration::from_secs(7)),
            }
        );
    }
}
