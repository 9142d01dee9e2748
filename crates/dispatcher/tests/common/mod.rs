//! Helpers shared by the dispatcher's integration tests.
#![allow(dead_code)]

use std::time::{Duration, Instant};

use mesh_notify::RetryPolicy;
use mesh_notify_core::{Composer, Notification, Recipient, Room};

/// A chat notification from Alice to Bob numbered `i` (in its body).
pub fn chat(i: usize) -> Notification {
    Composer::default().chat(
        "Alice",
        &Room::new("r1", "Room"),
        Recipient::new("bob", "Bob"),
        &format!("message {i}"),
    )
}

/// One try per provider, a send bounded a little above the provider `timeout`.
pub fn one_try(timeout: Duration) -> RetryPolicy {
    RetryPolicy {
        attempts_per_provider: 1,
        initial_delay: Duration::from_millis(1),
        max_inline_wait: Duration::from_millis(10),
        send_timeout: timeout + Duration::from_millis(200),
    }
}

/// Polls `cond` every 10 ms; panics naming `what` after `deadline`.
pub async fn wait_until(what: &str, deadline: Duration, mut cond: impl FnMut() -> bool) {
    let start = Instant::now();
    while !cond() {
        assert!(start.elapsed() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
