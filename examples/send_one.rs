//! Send one chat notification through the configured chain.
//!
//! ```sh
//! GOTIFY_URL=https://gotify.example.com GOTIFY_TOKEN=... cargo run --example send_one
//! ```
//! Without `GOTIFY_URL`, the built-in `log` provider delivers it.

use mesh_notify::Config;
use mesh_notify_core::{Recipient, Room};

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    tracing_subscriber::fmt().with_env_filter("info").init();
    let (config, figment) = Config::load(None)?;
    // Inline delivery only (no outbox): see `Config::build_dispatcher` for the durable one.
    let dispatcher = config.dispatcher_builder(&figment)?.build()?;
    let n = config.composer().chat(
        "Alice",
        &Room::new("room-1", "Test Gotify"),
        Recipient::new("bob", "Bob"),
        "Salut Bob, tu es là ?",
    );
    let outcome = dispatcher.dispatch(n).await;
    match &outcome.delivered {
        Some(r) => println!("delivered by {} in {:?}", r.provider, r.latency),
        None => println!("not delivered: {}", outcome.failure_summary()),
    }
    Ok(())
}
