//! What goes on the wire: the JSON payload and the `apns-*` header values.

use std::time::Duration;

use mesh_notify_core::{Kind, Notification, Timestamp};
use serde_json::{json, Value};

/// APNs refuses alert payloads larger than this (bytes).
pub const MAX_PAYLOAD_BYTES: usize = 4096;
/// APNs refuses VoIP payloads larger than this (bytes).
pub const MAX_VOIP_PAYLOAD_BYTES: usize = 5120;
/// `apns-collapse-id` may not exceed this many bytes.
pub const MAX_COLLAPSE_ID_BYTES: usize = 64;
/// How long a call without `expires_at` may still ring.
pub const CALL_RING: Duration = Duration::from_secs(60);

/// The JSON payload for a notification:
/// `{"aps":{"alert":{"title","body"},"sound":"default","thread-id":room},
///   "click_url", "room_id", "notification_id", "kind"}`.
pub fn payload(n: &Notification) -> Value {
    let mut aps = json!({
        "alert": { "title": n.title, "body": n.body },
        "sound": "default",
    });
    if let Some(room) = &n.room {
        aps["thread-id"] = json!(room.id);
    }
    let mut payload = json!({
        "aps": aps,
        "notification_id": n.id.to_string(),
        "kind": n.kind.as_str(),
    });
    if let Some(url) = &n.click_url {
        payload["click_url"] = json!(url);
    }
    if let Some(room) = &n.room {
        payload["room_id"] = json!(room.id);
    }
    payload
}

/// `apns-priority`: 5 (sent when the device saves power) for files, 10 otherwise.
pub fn priority(n: &Notification) -> u8 {
    match n.kind {
        Kind::File => 5,
        Kind::Chat | Kind::Call | Kind::System => 10,
    }
}

/// `apns-expiration` (Unix seconds; `0` means one attempt, never stored).
///
/// A notification's own `expires_at` wins (a call stops ringing after 60 s, so a
/// later delivery is useless); a call without one expires [`CALL_RING`] after its
/// creation; others use the configured `ttl` from `now`, or `0`.
pub fn expiration(n: &Notification, ttl: Option<Duration>, now: Timestamp) -> i64 {
    if let Some(expires) = n.expires_at {
        return expires.as_secs();
    }
    if n.kind == Kind::Call {
        return n.created_at.plus(CALL_RING).as_secs();
    }
    match ttl {
        Some(ttl) if !ttl.is_zero() => now.plus(ttl).as_secs(),
        _ => 0,
    }
}

/// `apns-collapse-id`: the notification's collapse key (the composer sets one per
/// room for messages and one for files, so a device shows the latest of each),
/// everything else by notification id (a retry after an ambiguous failure
/// replaces the first copy instead of showing twice). A key that is too long, or
/// that cannot go in an HTTP header (control or non-ASCII characters), is sent as
/// its 32-hex-digit digest ([`Notification::collapse_topic`]).
pub fn collapse_id(n: &Notification) -> String {
    if let Some(key) = n.collapse_key.as_deref() {
        let header_safe =
            key.bytes().all(|b| b.is_ascii_graphic() || b == b' ') && !key.ends_with(' ');
        if !key.is_empty() && key.len() <= MAX_COLLAPSE_ID_BYTES && header_safe {
            return key.to_owned();
        }
        if let Some(topic) = n.collapse_topic() {
            return topic;
        }
    }
    n.id.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_notify_core::{Composer, Recipient, Room};

    #[test]
    fn long_room_ids_are_sent_as_a_digest() {
        let room = Room::new("x".repeat(80), "R");
        let n = Composer::default().chat("A", &room, Recipient::new("b", "B"), "hi");
        let id = collapse_id(&n);
        assert_eq!(id.len(), 32);
        let again = Composer::default().chat("A", &room, Recipient::new("b", "B"), "ho");
        assert_eq!(collapse_id(&again), id, "stable per room");
        let n =
            Composer::default().chat("A", &Room::new("r1", "R"), Recipient::new("b", "B"), "hi");
        assert_eq!(collapse_id(&n), "room-r1");
        let call = Composer::default().call("A", &Room::new("r1", "R"), Recipient::new("b", "B"));
        assert_eq!(collapse_id(&call), call.id.to_string());
    }

    #[test]
    fn room_ids_that_cannot_go_in_a_header_are_sent_as_a_digest() {
        for room_id in ["salle-é", "a\nb", "tab\there", "trailing "] {
            let n = Composer::default().chat(
                "A",
                &Room::new(room_id, "R"),
                Recipient::new("b", "B"),
                "hi",
            );
            let id = collapse_id(&n);
            assert_eq!(id.len(), 32, "{room_id:?}");
            assert_ne!(id, n.id.to_string(), "{room_id:?}");
            assert!(reqwest::header::HeaderValue::from_str(&id).is_ok());
        }
        let n = Composer::default().chat(
            "A",
            &Room::new("room 1", "R"),
            Recipient::new("b", "B"),
            "hi",
        );
        assert_eq!(collapse_id(&n), "room-room 1");
    }

    #[test]
    fn a_huge_ttl_saturates_instead_of_overflowing() {
        let n =
            Composer::default().chat("A", &Room::new("r1", "R"), Recipient::new("b", "B"), "hi");
        let exp = expiration(&n, Some(Duration::MAX), Timestamp(i64::MAX - 5));
        assert_eq!(exp, i64::MAX / 1000);
    }

    #[test]
    fn expiration_uses_ttl_only_without_an_expiry() {
        let n =
            Composer::default().chat("A", &Room::new("r1", "R"), Recipient::new("b", "B"), "hi");
        let now = Timestamp(1_000_000);
        assert_eq!(expiration(&n, None, now), 0);
        assert_eq!(expiration(&n, Some(Duration::from_secs(3600)), now), 4600);
        let mut call =
            Composer::default().call("A", &Room::new("r1", "R"), Recipient::new("b", "B"));
        assert_eq!(
            expiration(&call, Some(Duration::from_secs(3600)), now),
            call.expires_at.unwrap().as_secs()
        );
        call.expires_at = None;
        assert_eq!(expiration(&call, None, now), call.created_at.as_secs() + 60);
    }
}
