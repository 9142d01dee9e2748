//! Loopback fakes of the providers mesh-notify talks to.
pub mod apns;
pub mod fcm;
pub mod gotify;
pub mod harness;
pub mod ntfy;
pub mod push;
pub mod webhook;
pub mod webpush;
