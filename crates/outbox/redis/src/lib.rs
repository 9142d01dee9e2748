//! Redis Streams outbox for mesh-notify (work in progress).
