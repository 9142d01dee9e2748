//! Configuration: TOML file + environment, through figment.
//!
//! Sources, later ones winning:
//! 1. built-in defaults (the same as `config/default.toml`);
//! 2. the TOML file given with `--config` or `MESH_NOTIFY_CONFIG`;
//! 3. the seed's plain variables `GOTIFY_URL` and `GOTIFY_TOKEN`;
//! 4. `MESH_NOTIFY_*` variables, `__` separating levels
//!    (`MESH_NOTIFY_PROVIDERS__GOTIFY__URL`).
//!
//! Unknown keys are errors; every error names the key and where it came from.
//!
//! One module per concern, imports one way, no cycle (`error` and `env` import
//! no sibling; `providers` → error; `sections` → providers; `load`, `validate`
//! and `wiring` → the ones before):
//! * `sections`: the section types and their defaults, the derived policies;
//! * `providers`: the provider registry and the `[providers]` table;
//! * `env`: environment variables read verbatim;
//! * `load`: sources, extraction, provenance;
//! * `validate`: checks of a loaded configuration;
//! * `wiring`: the dispatcher, providers and outbox built from it;
//! * `error`: [`ConfigError`].

mod env;
mod error;
mod load;
mod providers;
mod sections;
mod validate;
mod wiring;

pub use error::ConfigError;
pub use providers::{known_providers, LogConfig, ProvidersConfig, Registration, REGISTRY};
pub use sections::*;
