//! # mesh-notify
//!
//! The dispatcher: it takes one abstract [`Notification`](mesh_notify_core::Notification)
//! and tries the providers configured for its kind, primary first, then each
//! fallback. Transient failures get a short bounded retry on the same provider;
//! permanent, misconfigured and recipient-gone failures move on at once. Every
//! attempt is recorded in the [`Outcome`].
//!
//! Configuration comes from TOML files and the environment through [figment]; see
//! [`Config`] and `docs/configuration.md`.
//!
//! ```
//! use std::sync::Arc;
//! use mesh_notify::{Dispatcher, LogNotifier};
//! use mesh_notify_core::{Composer, Kind, Recipient, Room};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let dispatcher = Dispatcher::builder()
//!     .notifier(Arc::new(LogNotifier::new()))
//!     .disabled("gotify") // known, but not configured here
//!     .route(Kind::Chat, ["gotify", "log"])
//!     .build()
//!     .unwrap();
//! let n = Composer::default().chat("Alice", &Room::new("r1", "Test"), Recipient::new("bob", "Bob"), "Salut");
//! let outcome = dispatcher.dispatch(n).await;
//! assert_eq!(outcome.delivered.unwrap().provider, "log");
//! # }
//! ```

mod breaker;
mod config;
mod delivery;
mod dispatcher;
mod log_provider;
#[cfg(feature = "logging")]
mod logging;
mod ratelimit;
mod reload;
mod router;
#[cfg(feature = "serve")]
pub mod serve;

pub use breaker::{Admission, BreakerConfig, BreakerState, CircuitBreaker};
pub use config::{
    known_providers, BreakerSection, Config, ConfigError, LogConfig, LogFormat, MaxAgeSection,
    OutboxBackend, OutboxSection, Profile, ProvidersConfig, QueueSection, RateLimitSection,
    Registration, RetryConfig, RoutesConfig, TemplatesOverride, REGISTRY,
};
pub use delivery::{AddressBook, QueuePolicy, Submitted, Workers};
pub use dispatcher::{Dispatcher, DispatcherBuilder};
pub use figment::Figment;
pub use log_provider::LogNotifier;
#[cfg(feature = "logging")]
pub use logging::{init_logging, init_logging_as};
pub use mesh_notify_core as core;
pub use mesh_notify_provider_kit as provider_kit;
pub use ratelimit::{RateLimitConfig, RateLimiter};
pub use reload::{ConfigLoader, SecretWatcher};
pub use router::{
    group_members, Attempt, BuildError, DeadAddress, DeviceOutcome, Outcome, RetryPolicy, Router,
    Skip, SkipReason,
};
