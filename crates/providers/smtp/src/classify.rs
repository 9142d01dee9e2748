//! Every SMTP failure, classified in one place.
//!
//! lettre reports a negative reply with its code and text but not which command
//! it answered, so the stage is read from the reply itself: the RFC 3463 enhanced
//! status code (`5.1.1`, sent by every mainstream server) says whether the
//! destination address, the sender or the message was refused.

use std::error::Error as _;
use std::time::Duration;

use lettre::transport::smtp::Error as SmtpError;
use mesh_notify_core::{AddressKind, NotifyError};

/// Classifies a negative SMTP reply (`code` 400–599, `text` after the code).
///
/// * 4xx: transient (the server said "later").
/// * 530/534/535/538 (authentication required, too weak, credentials invalid,
///   encryption required) and a refused sender (`5.1.7`, `5.1.8`): misconfigured.
/// * 550/551/553 naming the destination mailbox (`5.1.0`, `5.1.1`, `5.1.2`,
///   `5.1.6`, `5.1.10`, `5.2.1`, or, without an enhanced code, "no such user",
///   "user unknown", "mailbox unavailable"...; 551 "user not local" always):
///   recipient gone.
/// * Any other 5xx, including a bad address syntax (`5.1.3`) and a refused
///   message (`554`, `550 5.7.1`): permanent.
pub fn classify_reply(code: u16, text: &str) -> NotifyError {
    let what = format!("SMTP server answered {code} {}", text.trim());
    let enhanced = enhanced_code(text);
    match code {
        400..=499 => NotifyError::transient(what),
        530 | 534 | 535 | 538 => NotifyError::misconfigured(format!(
            "SMTP authentication failed or is required; check `username`/`password` and `tls` ({what})"
        )),
        _ if matches!(enhanced, Some((5, 1, 7 | 8))) => NotifyError::misconfigured(format!(
            "the SMTP server refused the sender; check `from` ({what})"
        )),
        550 | 551 | 553 if destination_gone(code, enhanced, text) => NotifyError::gone(
            AddressKind::Email,
            format!("the recipient's mailbox does not exist ({what})"),
        ),
        _ => NotifyError::permanent(what),
    }
}

fn destination_gone(code: u16, enhanced: Option<(u16, u16, u16)>, text: &str) -> bool {
    match enhanced {
        Some((_, 1, 0 | 1 | 2 | 6 | 10)) | Some((_, 2, 1)) => true,
        Some(_) => false,
        None if code == 551 => true,
        None => {
            let text = text.to_ascii_lowercase();
            [
                "no such user",
                "user unknown",
                "unknown user",
                "mailbox unavailable",
                "mailbox not found",
                "no such mailbox",
                "does not exist",
            ]
            .iter()
            .any(|phrase| text.contains(phrase))
        }
    }
}

/// The RFC 3463 `class.subject.detail` code at the start of a reply text.
fn enhanced_code(text: &str) -> Option<(u16, u16, u16)> {
    let first = text.split_whitespace().next()?;
    let mut parts = first.split('.');
    let class = parts.next()?.parse().ok()?;
    let subject = parts.next()?.parse().ok()?;
    let detail = parts.next()?.parse().ok()?;
    if parts.next().is_some() || !matches!(class, 2 | 4 | 5) {
        return None;
    }
    Some((class, subject, detail))
}

/// Classifies any error from lettre's SMTP transport.
///
/// Negative replies go through [`classify_reply`]. A timeout, a refused or reset
/// connection and a garbled reply are transient. A TLS failure (certificate not
/// trusted, wrong host name), a missing `STARTTLS` or AUTH mechanism are
/// misconfigurations. A message the server cannot take without an extension it
/// lacks (`SMTPUTF8` for a non-ASCII address) is permanent.
pub fn classify_smtp_error(err: &SmtpError, timeout: Duration) -> NotifyError {
    if let Some(code) = err.status() {
        let text = err.source().map(|s| s.to_string()).unwrap_or_default();
        return classify_reply(u16::from(code), &text);
    }
    let detail = source_chain(err);
    if err.is_timeout() {
        return NotifyError::transient(format!(
            "the SMTP server did not answer within {timeout:?} ({detail})"
        ));
    }
    if err.is_tls() || is_certificate_failure(err) {
        return NotifyError::misconfigured(format!(
            "TLS with the SMTP server failed; check `host`, `tls` and `ca_file` ({detail})"
        ));
    }
    if err.is_client() {
        let lower = detail.to_ascii_lowercase();
        if lower.contains("smtputf8") || lower.contains("8bitmime") {
            return NotifyError::permanent(format!(
                "the SMTP server cannot take this message: {detail}"
            ));
        }
        return NotifyError::misconfigured(format!("SMTP session failed: {detail}"));
    }
    NotifyError::transient(format!("SMTP connection failed: {detail}"))
}

/// A TLS handshake failure surfaces as an I/O error wrapping rustls's error.
fn is_certificate_failure(err: &SmtpError) -> bool {
    let mut cur = err.source();
    while let Some(e) = cur {
        if let Some(io) = e.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::InvalidData {
                let text = io.to_string().to_ascii_lowercase();
                return text.contains("certificate") || text.contains("handshake");
            }
        }
        cur = e.source();
    }
    false
}

use mesh_notify_core::error_chain as source_chain;

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_notify_core::ErrorClass;

    fn class(code: u16, text: &str) -> ErrorClass {
        classify_reply(code, text).class()
    }

    #[test]
    fn four_hundreds_are_transient() {
        assert_eq!(class(451, "4.3.0 try later"), ErrorClass::Transient);
        assert_eq!(class(421, "service shutting down"), ErrorClass::Transient);
        assert_eq!(class(450, "4.2.1 mailbox busy"), ErrorClass::Transient);
        assert_eq!(
            class(452, "4.5.3 too many recipients"),
            ErrorClass::Transient
        );
    }

    #[test]
    fn dead_mailboxes_are_gone() {
        for (code, text) in [
            (550, "5.1.1 no such user"),
            (
                550,
                "5.1.1 <bob@example.com>: Recipient address rejected: User unknown",
            ),
            (553, "5.1.2 domain does not exist"),
            (550, "5.1.10 null MX"),
            (550, "5.2.1 mailbox disabled"),
            (551, "5.1.6 user has moved"),
            (551, "User not local"),
            (550, "Requested action not taken: mailbox unavailable"),
            (550, "No such user here"),
        ] {
            let e = classify_reply(code, text);
            assert_eq!(e.class(), ErrorClass::RecipientGone, "{code} {text}");
            assert!(matches!(
                e,
                NotifyError::RecipientGone {
                    address: AddressKind::Email,
                    ..
                }
            ));
        }
    }

    #[test]
    fn other_refusals_are_permanent() {
        assert_eq!(class(554, "5.6.0 message refused"), ErrorClass::Permanent);
        assert_eq!(
            class(550, "5.7.1 message refused as spam"),
            ErrorClass::Permanent
        );
        assert_eq!(class(552, "5.3.4 message too big"), ErrorClass::Permanent);
        assert_eq!(
            class(553, "5.1.3 bad address syntax"),
            ErrorClass::Permanent
        );
        assert_eq!(class(550, "rejected by policy"), ErrorClass::Permanent);
        assert_eq!(class(500, "5.5.2 syntax error"), ErrorClass::Permanent);
    }

    #[test]
    fn auth_and_sender_problems_are_misconfiguration() {
        assert_eq!(
            class(535, "5.7.8 Authentication credentials invalid"),
            ErrorClass::Misconfigured
        );
        assert_eq!(
            class(530, "5.7.0 Authentication required"),
            ErrorClass::Misconfigured
        );
        assert_eq!(
            class(530, "5.7.0 Must issue a STARTTLS command first"),
            ErrorClass::Misconfigured
        );
        assert_eq!(
            class(538, "5.7.11 Encryption required"),
            ErrorClass::Misconfigured
        );
        assert_eq!(
            class(553, "5.1.8 sender address rejected"),
            ErrorClass::Misconfigured
        );
        assert_eq!(
            class(550, "5.1.7 bad sender mailbox syntax"),
            ErrorClass::Misconfigured
        );
    }

    #[test]
    fn enhanced_codes_are_parsed_strictly() {
        assert_eq!(enhanced_code("5.1.1 no such user"), Some((5, 1, 1)));
        assert_eq!(enhanced_code("5.1.10 null MX"), Some((5, 1, 10)));
        assert_eq!(enhanced_code("1.2.3 x"), None);
        assert_eq!(enhanced_code("5.1 x"), None);
        assert_eq!(enhanced_code("5.1.1.1 x"), None);
        assert_eq!(enhanced_code(""), None);
        assert_eq!(enhanced_code("version 1.2.3"), None);
    }
}
