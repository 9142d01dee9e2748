//! A fallback chain: a provider that is down (transient errors) falls back to the
//! next one; the outcome records every attempt.

use std::sync::Arc;
use std::time::Duration;

use mesh_notify::{Dispatcher, LogNotifier, RetryPolicy};
use mesh_notify_core::{Composer, Kind, Recipient, Room, Secret};
use mesh_notify_gotify::GotifyNotifier;

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    // Port 9 on loopback: nothing listens there, so the connection is refused.
    let gotify = GotifyNotifier::new(
        "http://127.0.0.1:9",
        Some(Secret::new("demo")),
        Duration::from_secs(1),
    )?;
    let dispatcher = Dispatcher::builder()
        .notifier(Arc::new(gotify))
        // Terminal for this demo: the log counts as a delivery. The default log
        // provider does not while a real provider (here Gotify) could deliver
        // later: the notification would wait in the outbox for Gotify instead.
        .notifier(Arc::new(LogNotifier::terminal()))
        .route(Kind::Call, ["gotify", "log"])
        .policy(RetryPolicy {
            attempts_per_provider: 2,
            initial_delay: Duration::from_millis(50),
            ..RetryPolicy::default()
        })
        .build()?;
    let call = Composer::default().call(
        "Alice",
        &Room::new("r1", "Test Gotify"),
        Recipient::new("bob", "Bob"),
    );
    let outcome = dispatcher.dispatch(call).await;
    for a in &outcome.attempts {
        println!(
            "{} try {}: {}",
            a.provider,
            a.try_number,
            a.error.as_deref().unwrap_or("delivered")
        );
    }
    println!("fallback used: {}", outcome.used_fallback());
    Ok(())
}
