//! Embedded SQLite outbox for mesh-notify (work in progress).
