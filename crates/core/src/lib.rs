//! # mesh-notify-core
//!
//! The provider-agnostic heart of mesh-notify: the [`Notification`] a chat server
//! emits, the [`Notifier`] trait every provider (Gotify, FCM, APNs, SMTP, ...)
//! implements, and the [`NotifyError`] classification the dispatcher uses to decide
//! between retrying, falling back and giving up.
//!
//! This crate has no I/O of its own and changes rarely; retry, fallback, circuit
//! breaking and queueing live in the `mesh-notify` dispatcher crate.
//!
//! ```
//! use mesh_notify_core::{Composer, Recipient, Room, Kind};
//!
//! let composer = Composer::default(); // built-in French templates, 100-char chat bodies
//! let bob = Recipient::new("bob", "Bob");
//! let room = Room::new("r1", "Test Gotify");
//! let n = composer.chat("Alice", &room, bob, "Salut Bob !");
//! assert_eq!(n.kind, Kind::Chat);
//! assert_eq!(n.title, "💬 Alice dans Test Gotify");
//! assert_eq!(n.priority.get(), 6);
//! assert_eq!(n.click_url.as_deref(), Some("mesh://room/r1"));
//! ```

mod compose;
mod error;
mod notification;
mod notifier;
mod outbox;
mod retry_after;
mod secret;
mod text;

pub use compose::{Composer, Language, TemplateError, Templates};
pub use error::{error_chain, ErrorClass, NotifyError};
pub use notification::{
    Address, AddressKind, BodyFormat, Kind, Notification, NotificationId, Priority, PriorityError,
    Recipient, Room, Timestamp,
};
pub use notifier::{Health, Notifier, Receipt};
pub use outbox::{Claim, DeadEntry, Outbox, OutboxEntry, OutboxError, OutboxStats};
pub use retry_after::parse_retry_after;
pub use secret::Secret;
pub use text::{room_click_url, sanitize_text, truncate_graphemes};

#[cfg(feature = "test-util")]
pub mod testing;
