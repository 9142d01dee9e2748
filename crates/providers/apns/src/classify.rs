//! Classifying APNs answers (status + JSON `reason`) into [`NotifyError`]s, following
//! Apple's "Handling notification responses from APNs".

use mesh_notify_core::{parse_retry_after, AddressKind, NotifyError};
use serde::Deserialize;

/// The JSON body of an APNs error answer: `{"reason": "...", "timestamp": ms}`
/// (`timestamp` only with 410).
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
pub struct ApnsErrorBody {
    /// Apple's reason string, e.g. `BadDeviceToken`.
    #[serde(default)]
    pub reason: Option<String>,
    /// With 410: when APNs learned the token was no longer valid (ms since epoch).
    #[serde(default)]
    pub timestamp: Option<i64>,
}

impl ApnsErrorBody {
    /// Parses an error body; anything that is not APNs JSON gives an empty body.
    pub fn parse(body: &str) -> Self {
        serde_json::from_str(body).unwrap_or_default()
    }
}

/// Whether an answer refuses the provider token in a way a freshly signed token may
/// fix (403 `ExpiredProviderToken` or `InvalidProviderToken`).
pub fn is_provider_token_refusal(status: u16, reason: Option<&str>) -> bool {
    status == 403
        && matches!(
            reason,
            Some("ExpiredProviderToken" | "InvalidProviderToken")
        )
}

/// Classifies a non-200 answer to `POST /3/device/{token}`.
///
/// * 410 (`Unregistered`, `ExpiredToken`): the token in use (`address`) is dead.
///   Only a 410 proves that.
/// * 400 `BadDeviceToken` (Apple: "invalid token *or* token for the wrong
///   environment") and `DeviceTokenNotForTopic`: permanent for this send, the
///   address is kept. A configuration mistake (production key and a development
///   build, a wrong `bundle_id`) makes APNs answer this to every token; the
///   notifier tells the two apart across sends (see [`crate::Mismatch`]).
/// * 403 (provider token or certificate refused): misconfigured.
/// * 404 `BadPath` / 405 `MethodNotAllowed`: `base_url` is not APNs, misconfigured.
/// * 408, 429 (`TooManyRequests`, `TooManyProviderTokenUpdates`) and 5xx:
///   transient, honouring `Retry-After`.
/// * 413 `PayloadTooLarge` and any other 4xx: permanent.
///
/// The reason is kept verbatim in the message, also when it is one this code does
/// not know.
pub fn classify_response(
    status: u16,
    body: &str,
    retry_after: Option<&str>,
    address: AddressKind,
) -> NotifyError {
    let parsed = ApnsErrorBody::parse(body);
    let detail = match &parsed.reason {
        Some(reason) if !reason.is_empty() => reason.clone(),
        _ if body.trim().is_empty() => "(no reason given)".to_string(),
        _ => body.chars().take(200).collect(),
    };
    let mut what = format!("APNs answered {status} {detail}");
    if let Some(ts) = parsed.timestamp {
        what.push_str(&format!(" (token invalid since {ts} ms after the epoch)"));
    }
    let reason = parsed.reason.as_deref();
    match status {
        410 => NotifyError::gone(address, what),
        400 if reason == Some("BadDeviceToken") => NotifyError::permanent(format!(
            "{what}: the {address} token is malformed or belongs to the other APNs environment \
             (sandbox vs production); the address is kept"
        )),
        400 if reason == Some("DeviceTokenNotForTopic") => NotifyError::permanent(format!(
            "{what}: the {address} token does not belong to this topic (bundle_id); \
             the address is kept"
        )),
        403 => NotifyError::misconfigured(format!(
            "{what}; check key_file, key_id, team_id, bundle_id and environment"
        )),
        404 | 405 => NotifyError::misconfigured(format!("{what}; is base_url an APNs server?")),
        408 | 429 | 500..=599 => NotifyError::Transient {
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

    fn class(status: u16, reason: &str) -> ErrorClass {
        classify_response(
            status,
            &format!("{{\"reason\":\"{reason}\"}}"),
            None,
            AddressKind::Apns,
        )
        .class()
    }

    #[test]
    fn apple_reasons_map_to_classes() {
        assert_eq!(class(400, "BadCollapseId"), ErrorClass::Permanent);
        assert_eq!(class(400, "TopicDisallowed"), ErrorClass::Permanent);
        assert_eq!(class(400, "BadDeviceToken"), ErrorClass::Permanent);
        assert_eq!(class(400, "DeviceTokenNotForTopic"), ErrorClass::Permanent);
        assert_eq!(class(410, "Unregistered"), ErrorClass::RecipientGone);
        assert_eq!(class(410, "ExpiredToken"), ErrorClass::RecipientGone);
        assert_eq!(class(403, "Forbidden"), ErrorClass::Misconfigured);
        assert_eq!(class(404, "BadPath"), ErrorClass::Misconfigured);
        assert_eq!(
            class(429, "TooManyProviderTokenUpdates"),
            ErrorClass::Transient
        );
        assert_eq!(class(502, "whatever"), ErrorClass::Transient);
    }

    #[test]
    fn a_body_that_is_not_json_is_kept() {
        let e = classify_response(
            502,
            "<html>bad gateway</html>",
            Some("3"),
            AddressKind::Apns,
        );
        assert!(e.to_string().contains("<html>bad gateway</html>"), "{e}");
        assert_eq!(e.retry_after(), Some(std::time::Duration::from_secs(3)));
    }

    #[test]
    fn only_expired_or_invalid_provider_tokens_are_re_signed() {
        assert!(is_provider_token_refusal(403, Some("ExpiredProviderToken")));
        assert!(is_provider_token_refusal(403, Some("InvalidProviderToken")));
        assert!(!is_provider_token_refusal(
            403,
            Some("MissingProviderToken")
        ));
        assert!(!is_provider_token_refusal(
            400,
            Some("ExpiredProviderToken")
        ));
    }
}
