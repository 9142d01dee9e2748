//! Parsing `Retry-After`, which providers send as seconds or as an HTTP date.

use std::time::{Duration, SystemTime};

/// Parses a `Retry-After` value: delta-seconds (`120`) or an HTTP date
/// (`Wed, 21 Oct 2026 07:28:00 GMT`). A date in the past gives zero. Anything else
/// gives `None`.
///
/// ```
/// use std::time::Duration;
/// use mesh_notify_core::parse_retry_after;
/// assert_eq!(parse_retry_after("30"), Some(Duration::from_secs(30)));
/// assert_eq!(parse_retry_after("soon"), None);
/// ```
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = httpdate::parse_http_date(value).ok()?;
    Some(
        when.duration_since(SystemTime::now())
            .unwrap_or(Duration::ZERO),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_seconds_and_dates() {
        assert_eq!(parse_retry_after(" 5 "), Some(Duration::from_secs(5)));
        let in_a_minute = SystemTime::now() + Duration::from_secs(61);
        let d = parse_retry_after(&httpdate::fmt_http_date(in_a_minute)).unwrap();
        assert!(
            d > Duration::from_secs(55) && d <= Duration::from_secs(61),
            "{d:?}"
        );
        assert_eq!(
            parse_retry_after("Thu, 01 Jan 1970 00:00:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("-3"), None);
        assert_eq!(parse_retry_after(""), None);
    }
}
