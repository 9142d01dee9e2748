//! # mesh-notify-provider-kit
//!
//! What every mesh-notify provider needs, written once:
//!
//! * [`ProviderConfig`], the **plug-in interface**: a provider crate implements it
//!   on its `[providers.NAME]` section type, which gives the section's name, its
//!   validation against the [`Profile`] (https rules, insecure opt-ins), its
//!   construction from a shared [`ProviderContext`] (profile, default timeout),
//!   and the secret files it reads (watched for rotation). The dispatcher only
//!   registers the type (one line) and walks its registry;
//! * helpers for sections: [`resolve_timeout`], [`secret_from`] (a secret given
//!   inline or in a file, exclusive), [`ConfigIssue`] (an error naming its key);
//! * with the `http` feature (default), [`http`]: the reqwest client every HTTP
//!   provider uses (rustls, timeouts, pool), the base-URL policy (http(s), no
//!   credentials or query in URLs, https required in production unless
//!   `allow_insecure_http`), answers read with a size bound, `Retry-After`, and
//!   the classification of transport errors (timeout and connect → transient,
//!   a request that cannot be built → permanent).
//!
//! ```
//! use std::sync::Arc;
//! use mesh_notify_core::Notifier;
//! use mesh_notify_provider_kit::{ConfigIssue, ProviderConfig, ProviderContext};
//!
//! #[derive(Debug, Clone, PartialEq, serde::Deserialize)]
//! #[serde(deny_unknown_fields)]
//! struct PigeonConfig { loft: String }
//!
//! impl ProviderConfig for PigeonConfig {
//!     const NAME: &'static str = "pigeon";
//!     fn build(&self, ctx: &ProviderContext) -> Result<Arc<dyn Notifier>, ConfigIssue> {
//!         Err(ctx.issue("loft", "no pigeons today"))
//!     }
//! }
//! let ctx = ProviderContext::new(Default::default(), std::time::Duration::from_secs(5), "pigeon");
//! let Err(err) = PigeonConfig { loft: "roof".into() }.build(&ctx) else { panic!() };
//! assert_eq!(err.key, "providers.pigeon.loft");
//! ```

#[cfg(feature = "http")]
pub mod http;
mod plugin;

pub use plugin::{
    resolve_timeout, secret_from, AnySection, ConfigIssue, Profile, ProviderConfig,
    ProviderContext, MAX_TIMEOUT,
};
