//! The abstract notification the chat server emits, independent of any provider.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::Secret;

/// Stable identity of a notification (UUID v7, so ids sort by creation time).
///
/// It is the idempotency key: the outbox keeps one entry per id, and providers that
/// allow it receive it (Gotify extras, APNs `apns-id`, FCM data) so a retry after an
/// ambiguous failure can be recognised.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NotificationId(Uuid);

impl NotificationId {
    /// A new, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
    /// A stable id derived from this one and `key` (UUID v5 in this id's
    /// namespace): the same inputs give the same id in every process.
    pub fn derived(&self, key: &str) -> Self {
        Self(Uuid::new_v5(&self.0, key.as_bytes()))
    }

    /// The underlying UUID.
    pub fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for NotificationId {
    fn default() -> Self {
        Self::new()
    }
}

impl From<Uuid> for NotificationId {
    fn from(value: Uuid) -> Self {
        Self(value)
    }
}

impl std::str::FromStr for NotificationId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

impl fmt::Display for NotificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl fmt::Debug for NotificationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NotificationId({})", self.0)
    }
}

/// What happened, which decides the route, the priority and the templates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A chat message in a room the recipient is not in.
    Chat,
    /// An incoming audio/video call (`rtc.offer` to an offline peer).
    Call,
    /// A file shared in a room.
    File,
    /// An operational alert (system error).
    System,
}

impl Kind {
    /// All kinds, in a stable order.
    pub const ALL: [Kind; 4] = [Kind::Chat, Kind::Call, Kind::File, Kind::System];

    /// The seed's priority for this kind: chat 6, call 8, file 5, system 7.
    pub fn default_priority(self) -> Priority {
        Priority(match self {
            Kind::Chat => 6,
            Kind::Call => 8,
            Kind::File => 5,
            Kind::System => 7,
        })
    }

    /// Lower-case name, as used in configuration (`routes.chat`).
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Chat => "chat",
            Kind::Call => "call",
            Kind::File => "file",
            Kind::System => "system",
        }
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Kind {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "chat" => Ok(Kind::Chat),
            "call" => Ok(Kind::Call),
            "file" => Ok(Kind::File),
            "system" => Ok(Kind::System),
            other => Err(format!(
                "unknown notification kind `{other}` (expected chat, call, file or system)"
            )),
        }
    }
}

/// Notification priority on Gotify's 0–10 scale. Out-of-range values are an error,
/// never silently clamped.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct Priority(u8);

/// A priority outside 0–10.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("priority {0} is out of range: expected 0 to 10")]
pub struct PriorityError(pub i64);

impl Priority {
    /// The highest priority.
    pub const MAX: u8 = 10;

    /// Validates a priority (0–10).
    pub fn new(value: i64) -> Result<Self, PriorityError> {
        if (0..=i64::from(Self::MAX)).contains(&value) {
            Ok(Self(value as u8))
        } else {
            Err(PriorityError(value))
        }
    }

    /// The value, 0–10.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl TryFrom<i64> for Priority {
    type Error = PriorityError;
    fn try_from(value: i64) -> Result<Self, Self::Error> {
        Self::new(value)
    }
}

impl<'de> Deserialize<'de> for Priority {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let v = i64::deserialize(deserializer)?;
        Priority::new(v).map_err(serde::de::Error::custom)
    }
}

/// How the body should be displayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BodyFormat {
    /// Plain text (`text/plain`), the default.
    #[default]
    Plain,
    /// Markdown (`text/markdown`), opt-in.
    Markdown,
}

impl BodyFormat {
    /// The MIME type, as Gotify's `client::display.contentType` expects it.
    pub fn content_type(self) -> &'static str {
        match self {
            BodyFormat::Plain => "text/plain",
            BodyFormat::Markdown => "text/markdown",
        }
    }
}

/// Milliseconds since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct Timestamp(pub i64);

impl Timestamp {
    /// The current time.
    pub fn now() -> Self {
        Self::from_system(SystemTime::now())
    }

    /// Converts a `SystemTime` (times before 1970 become 0).
    pub fn from_system(t: SystemTime) -> Self {
        let ms = t
            .duration_since(UNIX_EPOCH)
            .map(|d| i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
            .unwrap_or(0);
        Self(ms)
    }

    /// This instant plus `d`.
    pub fn plus(self, d: Duration) -> Self {
        Self(
            self.0
                .saturating_add(i64::try_from(d.as_millis()).unwrap_or(i64::MAX)),
        )
    }

    /// Milliseconds since the epoch.
    pub fn as_millis(self) -> i64 {
        self.0
    }

    /// Seconds since the epoch.
    pub fn as_secs(self) -> i64 {
        self.0.div_euclid(1000)
    }
}

/// Which kind of address (and therefore which provider) reaches a recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AddressKind {
    /// A Gotify application token (one Gotify app per user).
    Gotify,
    /// An FCM registration token.
    Fcm,
    /// An APNs device token for alert notifications.
    Apns,
    /// An APNs PushKit (VoIP) token, used for calls.
    ApnsVoip,
    /// An email address.
    Email,
    /// An ntfy topic (on the configured ntfy server).
    Ntfy,
    /// An https URL that receives signed webhooks.
    Webhook,
    /// A Web Push subscription (the browser's `PushSubscription` as JSON:
    /// `endpoint`, `keys.p256dh`, `keys.auth`).
    #[serde(rename = "webpush")]
    WebPush,
}

impl AddressKind {
    /// Every kind, in a stable order.
    pub const ALL: [AddressKind; 8] = [
        AddressKind::Gotify,
        AddressKind::Fcm,
        AddressKind::Apns,
        AddressKind::ApnsVoip,
        AddressKind::Email,
        AddressKind::Ntfy,
        AddressKind::Webhook,
        AddressKind::WebPush,
    ];

    /// Lower-case name used in APIs and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            AddressKind::Gotify => "gotify",
            AddressKind::Fcm => "fcm",
            AddressKind::Apns => "apns",
            AddressKind::ApnsVoip => "apns_voip",
            AddressKind::Email => "email",
            AddressKind::Ntfy => "ntfy",
            AddressKind::Webhook => "webhook",
            AddressKind::WebPush => "webpush",
        }
    }
}

impl std::str::FromStr for AddressKind {
    type Err = String;
    /// The kind named as by [`AddressKind::as_str`].
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        AddressKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = AddressKind::ALL.iter().map(|k| k.as_str()).collect();
                format!("unknown address kind `{s}` (expected {})", known.join(", "))
            })
    }
}

impl fmt::Display for AddressKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One way of reaching a recipient. Tokens are [`Secret`]s: they never appear in
/// `Debug` output.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Address {
    /// Which provider this address is for.
    pub kind: AddressKind,
    /// The token or email address.
    pub value: Secret,
}

impl Address {
    /// A new address.
    pub fn new(kind: AddressKind, value: impl Into<Secret>) -> Self {
        Self {
            kind,
            value: value.into(),
        }
    }
}

/// Who receives the notification.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Recipient {
    /// The user's id in the chat server.
    pub user_id: String,
    /// Name to greet them with.
    pub display_name: String,
    /// Every address they registered; providers pick the kinds they understand.
    #[serde(default)]
    pub addresses: Vec<Address>,
}

impl Recipient {
    /// A recipient with no addresses (reachable only through providers with a
    /// default destination, such as a global Gotify app token).
    pub fn new(user_id: impl Into<String>, display_name: impl Into<String>) -> Self {
        Self {
            user_id: user_id.into(),
            display_name: display_name.into(),
            addresses: Vec::new(),
        }
    }

    /// Adds an address.
    pub fn with_address(mut self, address: Address) -> Self {
        self.addresses.push(address);
        self
    }

    /// The first address of this kind.
    pub fn address(&self, kind: AddressKind) -> Option<&Secret> {
        self.addresses
            .iter()
            .find(|a| a.kind == kind)
            .map(|a| &a.value)
    }
}

/// The room an event happened in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Room {
    /// Stable room id (used in the click URL).
    pub id: String,
    /// Display name.
    pub name: String,
}

impl Room {
    /// A room.
    pub fn new(id: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            id: id.into(),
            name: name.into(),
        }
    }
}

/// One notification for one recipient.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Notification {
    /// Idempotency key.
    pub id: NotificationId,
    /// What happened.
    pub kind: Kind,
    /// Title line.
    pub title: String,
    /// Body text (sanitised; plain text unless `format` is markdown).
    pub body: String,
    /// 0–10.
    pub priority: Priority,
    /// Where a click leads (`mesh://room/{id}`); never carries secrets.
    pub click_url: Option<String>,
    /// Plain (default) or markdown.
    #[serde(default)]
    pub format: BodyFormat,
    /// Who receives it.
    pub recipient: Recipient,
    /// The room it is about, if any.
    pub room: Option<Room>,
    /// When it was created.
    pub created_at: Timestamp,
    /// After this instant it must not be delivered (calls ring for 60 s).
    pub expires_at: Option<Timestamp>,
    /// Set on a follow-up for the devices of a recipient that did not get the
    /// original (see [`Notification::follow_up`]): only this provider is tried.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resend_via: Option<String>,
    /// Extra data from the sender, passed on to providers that carry it (Gotify
    /// `extras`, as received by `mesh-notify serve`'s `POST /message`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub extras: Option<serde_json::Map<String, serde_json::Value>>,
    /// Notifications with the same key replace each other on the device (APNs
    /// `apns-collapse-id`, FCM `android.notification.tag`, Web Push `Topic`): the
    /// composer sets one per room and kind, so a phone shows one up-to-date
    /// notification for a room's messages. See [`Notification::collapse_topic`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub collapse_key: Option<String>,
    /// The recipient's own provider order for this notification (entries as in
    /// `[routes]`, groups `a+b` included), replacing the kind's route. The
    /// application checks the names against the configured providers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<Vec<String>>,
}

impl Notification {
    /// A notification with the kind's default priority and no room.
    pub fn new(
        kind: Kind,
        recipient: Recipient,
        title: impl Into<String>,
        body: impl Into<String>,
    ) -> Self {
        Self {
            id: NotificationId::new(),
            kind,
            title: crate::sanitize_text(&title.into()),
            body: crate::sanitize_text(&body.into()),
            priority: kind.default_priority(),
            click_url: None,
            format: BodyFormat::Plain,
            recipient,
            room: None,
            created_at: Timestamp::now(),
            expires_at: None,
            resend_via: None,
            extras: None,
            collapse_key: None,
            route: None,
        }
    }

    /// The collapse key in the narrowest form providers accept (Web Push `Topic`:
    /// at most 32 characters of the URL-safe base64 alphabet): the key itself when
    /// it fits, otherwise a 32-hex-digit digest of it (UUIDv5), so it stays stable
    /// and never leaks what the key contains.
    pub fn collapse_topic(&self) -> Option<String> {
        let key = self.collapse_key.as_deref()?;
        if key.is_empty() {
            return None;
        }
        let fits = key.len() <= 32
            && key
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        Some(if fits {
            key.to_owned()
        } else {
            Uuid::new_v5(&Uuid::NAMESPACE_OID, key.as_bytes())
                .simple()
                .to_string()
        })
    }

    /// The same notification for one of the recipient's devices: only `address`
    /// among the addresses of its kind, and an id derived from the original id and
    /// the address (the idempotency key of this (notification, device) pair, so a
    /// provider that dedups by id never shows it twice on that device, and never
    /// drops it on another).
    pub fn for_device(&self, address: &Address) -> Notification {
        let mut n = self.clone();
        n.recipient
            .addresses
            .retain(|a| a.kind != address.kind || a == address);
        n.id = self.id.derived(&format!(
            "device:{}:{}",
            address.kind.as_str(),
            address.value.expose()
        ));
        n
    }

    /// A follow-up for the devices (`addresses`, of one provider) that did not get
    /// this notification while another device did: only `provider` is tried, only
    /// with those addresses. Its id is derived from this id, the provider and the
    /// addresses, so queuing the same follow-up twice keeps one.
    pub fn follow_up(&self, provider: &str, addresses: &[Address]) -> Notification {
        let mut n = self.clone();
        let mut key = format!("follow-up:{provider}");
        for a in addresses {
            key.push(':');
            key.push_str(a.kind.as_str());
            key.push('=');
            key.push_str(a.value.expose());
        }
        n.id = self.id.derived(&key);
        n.recipient.addresses = addresses.to_vec();
        n.resend_via = Some(provider.to_owned());
        n
    }

    /// Whether it has expired at `now`.
    pub fn is_expired_at(&self, now: Timestamp) -> bool {
        self.expires_at.is_some_and(|e| now >= e)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_is_validated_not_clamped() {
        assert_eq!(Priority::new(10).unwrap().get(), 10);
        assert_eq!(Priority::new(0).unwrap().get(), 0);
        assert_eq!(Priority::new(11), Err(PriorityError(11)));
        assert_eq!(Priority::new(-1), Err(PriorityError(-1)));
        assert!(serde_json::from_str::<Priority>("11").is_err());
    }

    #[test]
    fn kinds_have_the_seed_priorities() {
        assert_eq!(Kind::Chat.default_priority().get(), 6);
        assert_eq!(Kind::Call.default_priority().get(), 8);
        assert_eq!(Kind::File.default_priority().get(), 5);
        assert_eq!(Kind::System.default_priority().get(), 7);
    }

    #[test]
    fn ids_are_v7_and_round_trip_through_json() {
        let n = Notification::new(Kind::System, Recipient::new("u", "U"), "t", "b");
        assert_eq!(n.id.as_uuid().get_version_num(), 7);
        let json = serde_json::to_string(&n).unwrap();
        let back: Notification = serde_json::from_str(&json).unwrap();
        assert_eq!(back, n);
    }

    #[test]
    fn debug_output_redacts_address_tokens() {
        let r =
            Recipient::new("u", "U").with_address(Address::new(AddressKind::Gotify, "AppTok123"));
        assert!(!format!("{r:?}").contains("AppTok123"));
    }
}
