//! Mapping a [`Notification`] to an FCM v1 `Message`.

use std::time::Duration;

use mesh_notify_core::{Notification, Timestamp};
use serde_json::{json, Map, Value};

/// FCM's payload limit, bytes.
pub const MAX_PAYLOAD_BYTES: usize = 4096;
/// From this priority (0–10) on, Android gets `HIGH` and APNs `apns-priority: 10`.
pub const HIGH_PRIORITY_FROM: u8 = 8;

/// Android options from the configuration.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AndroidOptions {
    /// `android.notification.channel_id` (Android 8+ notification channel).
    pub channel_id: Option<String>,
    /// Time to live for notifications without an expiry (FCM's default: 4 weeks).
    pub ttl: Option<Duration>,
}

/// Seconds until `expires_at`, rounded up, never negative.
fn remaining_secs(expires_at: Timestamp, now: Timestamp) -> u64 {
    let ms = expires_at
        .as_millis()
        .saturating_sub(now.as_millis())
        .max(0);
    u64::try_from(ms).unwrap_or(0).div_ceil(1000)
}

/// The `message` object of `messages:send` for `n`, sent to `registration_token`.
///
/// * `notification{title, body}`;
/// * `android{priority, ttl, collapse_key, notification{click_action, channel_id, tag}}`:
///   `HIGH` from priority 8 on, else `NORMAL`; `ttl` runs until `expires_at` (calls)
///   or is the configured `ttl`; the notification's collapse key (one per room and
///   kind) is the collapse key and the tag, so the device shows one up-to-date
///   notification per room; without one, the notification id (a duplicate after
///   an ambiguous failure replaces instead of showing twice);
/// * `apns{headers{apns-priority 10/5, apns-expiration, apns-collapse-id},
///   payload{aps{alert{title, body}}}}` for iOS devices reached through FCM;
/// * `data{kind, notification_id, room_id, click_url}`, strings only.
pub fn fcm_message(
    n: &Notification,
    registration_token: &str,
    options: &AndroidOptions,
    now: Timestamp,
) -> Value {
    let high = n.priority.get() >= HIGH_PRIORITY_FROM;
    let id = n.id.to_string();
    // Successive pushes for a room replace each other on the device (the
    // composer's collapse key); without one, the notification id, so a duplicate
    // after an ambiguous failure replaces instead of showing twice.
    let collapse = n
        .collapse_key
        .clone()
        .filter(|k| !k.is_empty())
        .unwrap_or_else(|| id.clone());
    let apns_collapse = n
        .collapse_key
        .as_ref()
        .filter(|k| !k.is_empty() && k.len() <= 64 && k.is_ascii())
        .cloned()
        .or_else(|| n.collapse_topic())
        .unwrap_or_else(|| id.clone());
    let ttl_secs = match n.expires_at {
        Some(expires_at) => Some(remaining_secs(expires_at, now)),
        None => options.ttl.map(|t| t.as_secs()),
    };

    let mut android_notification = Map::new();
    if let Some(url) = &n.click_url {
        android_notification.insert("click_action".into(), json!(url));
    }
    if let Some(channel) = &options.channel_id {
        android_notification.insert("channel_id".into(), json!(channel));
    }
    android_notification.insert("tag".into(), json!(collapse));
    let mut android = json!({
        "priority": if high { "HIGH" } else { "NORMAL" },
        "collapse_key": collapse,
        "notification": android_notification,
    });
    if let Some(secs) = ttl_secs {
        android["ttl"] = json!(format!("{secs}s"));
    }

    let mut apns_headers = json!({
        "apns-priority": if high { "10" } else { "5" },
        "apns-collapse-id": apns_collapse,
    });
    if let Some(secs) = ttl_secs {
        // Absolute UNIX time; 0 would mean "deliver now or never", which an expired
        // call also wants.
        let at = if secs == 0 {
            0
        } else {
            now.as_secs()
                .saturating_add(i64::try_from(secs).unwrap_or(i64::MAX))
        };
        apns_headers["apns-expiration"] = json!(at.to_string());
    }

    let mut data = json!({
        "kind": n.kind.as_str(),
        "notification_id": id,
    });
    if let Some(room) = &n.room {
        data["room_id"] = json!(room.id);
    }
    if let Some(url) = &n.click_url {
        data["click_url"] = json!(url);
    }

    json!({
        "token": registration_token,
        "notification": { "title": n.title, "body": n.body },
        "android": android,
        "apns": {
            "headers": apns_headers,
            "payload": { "aps": { "alert": { "title": n.title, "body": n.body } } },
        },
        "data": data,
    })
}

/// The payload size FCM's 4096-byte limit is checked against: the larger of what
/// an Android device receives (`notification`, `data` and `android`) and what an
/// iOS device receives (`apns.payload` and `data`). Conservative: FCM itself
/// counts a little less, so anything under this limit is accepted.
pub fn payload_size(message: &Value) -> usize {
    let size = |keys: &[&str]| -> usize {
        keys.iter()
            .filter_map(|k| message.get(*k))
            .map(|v| v.to_string().len())
            .sum()
    };
    let apns_payload = message
        .get("apns")
        .and_then(|a| a.get("payload"))
        .map(|p| p.to_string().len())
        .unwrap_or(0);
    size(&["notification", "data", "android"]).max(apns_payload + size(&["data"]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_notify_core::{Composer, Recipient, Room};

    #[test]
    fn call_ttl_runs_until_expiry_rounded_up() {
        let n = Composer::default().call("A", &Room::new("r", "R"), Recipient::new("b", "B"));
        let m = fcm_message(
            &n,
            "tok",
            &AndroidOptions::default(),
            n.created_at.plus(Duration::from_millis(1)),
        );
        assert_eq!(m["android"]["ttl"], "60s");
        let later = n.created_at.plus(Duration::from_secs(120));
        let m = fcm_message(&n, "tok", &AndroidOptions::default(), later);
        assert_eq!(m["android"]["ttl"], "0s");
        assert_eq!(m["apns"]["headers"]["apns-expiration"], "0");
    }

    #[test]
    fn no_ttl_without_expiry_or_config() {
        let n = Composer::default().chat("A", &Room::new("r", "R"), Recipient::new("b", "B"), "m");
        let m = fcm_message(&n, "tok", &AndroidOptions::default(), n.created_at);
        assert!(m["android"].get("ttl").is_none());
        assert!(m["apns"]["headers"].get("apns-expiration").is_none());
    }
}
