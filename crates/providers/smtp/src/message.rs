//! One notification → one email.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lettre::message::header::{ContentType, HeaderName, HeaderValue};
use lettre::message::{Mailbox, MultiPart, SinglePart};
use lettre::Message;
use mesh_notify_core::{BodyFormat, Notification};

use crate::markdown::{escape_html, render_markdown};

/// 10000-01-01T00:00:00Z in ms: the first instant a `Date` header cannot carry.
const LAST_HTTP_DATE_MS: u64 = 253_402_300_800_000;

const IMPORTANCE: HeaderName = HeaderName::new_from_ascii_str("Importance");
const X_PRIORITY: HeaderName = HeaderName::new_from_ascii_str("X-Priority");
const X_MESH_NOTIFICATION_ID: HeaderName = HeaderName::new_from_ascii_str("X-Mesh-Notification-Id");
const X_MESH_KIND: HeaderName = HeaderName::new_from_ascii_str("X-Mesh-Kind");
const AUTO_SUBMITTED: HeaderName = HeaderName::new_from_ascii_str("Auto-Submitted");

/// The `Message-ID` of a notification's email: `<{notification id}@mesh-notify>`.
/// A retry of the same notification carries the same id, so mail clients and
/// archives can recognise a duplicate.
pub fn message_id(n: &Notification) -> String {
    format!("<{}@mesh-notify>", n.id)
}

/// `(Importance, X-Priority)` for a 0–10 priority: high/1 from 8, normal/3 from 4,
/// low/5 below.
pub fn importance(priority: u8) -> (&'static str, &'static str) {
    match priority {
        8.. => ("high", "1"),
        4..=7 => ("normal", "3"),
        _ => ("low", "5"),
    }
}

/// The plain-text body: the notification's body, then the click URL alone on the
/// last line (no words around it, so nothing needs translating).
pub fn plain_body(n: &Notification) -> String {
    let mut text = n.body.trim_end().to_string();
    if let Some(url) = &n.click_url {
        if !text.is_empty() {
            text.push_str("\n\n");
        }
        text.push_str(url);
    }
    text
}

/// The HTML alternative for a markdown notification: the rendered body (all raw
/// HTML escaped) and the click URL as a link when its scheme is one a mail client
/// may open (`mesh`, `https`, `http`), as plain text otherwise.
pub fn html_body(n: &Notification) -> String {
    let mut html =
        String::from("<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"></head><body>\n");
    html.push_str(&render_markdown(&n.body));
    if let Some(url) = &n.click_url {
        let mut escaped = String::new();
        escape_html(url, &mut escaped);
        let linkable = ["mesh://", "https://", "http://"].iter().any(|scheme| {
            url.get(..scheme.len())
                .is_some_and(|s| s.eq_ignore_ascii_case(scheme))
        });
        if linkable {
            html.push_str(&format!("<p><a href=\"{escaped}\">{escaped}</a></p>\n"));
        } else {
            html.push_str(&format!("<p>{escaped}</p>\n"));
        }
    }
    html.push_str("</body></html>\n");
    html
}

/// Keeps a header value on one line.
fn one_line(text: &str) -> String {
    text.split(['\n', '\r', '\t'])
        .map(str::trim)
        .filter(|part| !part.is_empty())
        .collect::<Vec<_>>()
        .join(" ")
}

/// Builds the email for `n`, from `from` to `to`.
pub fn build_message(
    from: &Mailbox,
    to: lettre::Address,
    n: &Notification,
) -> Result<Message, lettre::error::Error> {
    let display_name = one_line(&n.recipient.display_name);
    let to = Mailbox::new(Some(display_name).filter(|d| !d.is_empty()), to);
    let (importance, x_priority) = importance(n.priority.get());
    // The Date header cannot say years after 9999 (lettre's formatter panics on
    // them) nor before 1970: a creation time outside that range is corrupt, and the
    // mail is dated now instead.
    let created = u64::try_from(n.created_at.as_millis())
        .ok()
        .filter(|ms| *ms < LAST_HTTP_DATE_MS)
        .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms)))
        .unwrap_or_else(SystemTime::now);
    let builder = Message::builder()
        .from(from.clone())
        .to(to)
        .subject(one_line(&n.title))
        .date(created)
        .message_id(Some(message_id(n)))
        .raw_header(HeaderValue::new(IMPORTANCE, importance.to_string()))
        .raw_header(HeaderValue::new(X_PRIORITY, x_priority.to_string()))
        .raw_header(HeaderValue::new(X_MESH_NOTIFICATION_ID, n.id.to_string()))
        .raw_header(HeaderValue::new(X_MESH_KIND, n.kind.as_str().to_string()))
        .raw_header(HeaderValue::new(
            AUTO_SUBMITTED,
            "auto-generated".to_string(),
        ));
    let plain = SinglePart::builder()
        .header(ContentType::TEXT_PLAIN)
        .body(plain_body(n));
    match n.format {
        BodyFormat::Plain => builder.singlepart(plain),
        BodyFormat::Markdown => builder.multipart(
            MultiPart::alternative().singlepart(plain).singlepart(
                SinglePart::builder()
                    .header(ContentType::TEXT_HTML)
                    .body(html_body(n)),
            ),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_notify_core::{Kind, Recipient};

    #[test]
    fn an_absurd_creation_time_does_not_panic() {
        let to: lettre::Address = "bob@example.com".parse().unwrap();
        let from: Mailbox = "Mesh <mesh@example.com>".parse().unwrap();
        for ms in [i64::MAX, i64::MIN, -1, 253_402_300_800_000] {
            let mut n = Notification::new(Kind::Chat, Recipient::new("b", "B"), "t", "m");
            n.created_at = mesh_notify_core::Timestamp(ms);
            build_message(&from, to.clone(), &n).unwrap();
        }
    }

    #[test]
    fn importance_follows_priority() {
        assert_eq!(importance(10), ("high", "1"));
        assert_eq!(importance(8), ("high", "1"));
        assert_eq!(importance(7), ("normal", "3"));
        assert_eq!(importance(4), ("normal", "3"));
        assert_eq!(importance(3), ("low", "5"));
        assert_eq!(importance(0), ("low", "5"));
    }

    #[test]
    fn plain_body_ends_with_the_url_alone() {
        let mut n = Notification::new(Kind::Chat, Recipient::new("b", "B"), "t", "Salut\n");
        assert_eq!(plain_body(&n), "Salut");
        n.click_url = Some("mesh://room/r1".into());
        assert_eq!(plain_body(&n), "Salut\n\nmesh://room/r1");
        n.body = String::new();
        assert_eq!(plain_body(&n), "mesh://room/r1");
    }

    #[test]
    fn only_safe_schemes_become_links() {
        let mut n = Notification::new(Kind::Chat, Recipient::new("b", "B"), "t", "x");
        n.click_url = Some("javascript:alert(1)".into());
        let html = html_body(&n);
        assert!(!html.contains("href"), "{html}");
        assert!(html.contains("<p>javascript:alert(1)</p>"));
        n.click_url = Some("mesh://room/a\"b".into());
        assert!(html_body(&n).contains("<a href=\"mesh://room/a&quot;b\">"));
    }

    #[test]
    fn header_values_stay_on_one_line() {
        assert_eq!(one_line("a\nb\r\n\tc  "), "a b c");
    }
}
