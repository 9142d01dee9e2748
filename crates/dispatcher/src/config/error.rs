//! Configuration errors: each names the key and where its value came from.

use std::path::PathBuf;

use crate::BuildError;

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// figment could not read or extract it (the message names key and source).
    #[error("{0}")]
    Figment(Box<figment::Error>),
    /// The configuration file given does not exist or is unreadable.
    #[error("cannot read configuration file `{path}`: {reason}")]
    File {
        /// The path given.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A value is present but wrong.
    #[error("invalid `{key}` (from {source_name}): {message}")]
    Invalid {
        /// The key, dotted (`providers.gotify.url`).
        key: String,
        /// Where it came from (file path or environment variable).
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// Routes do not match the providers.
    #[error("{error} (from {source_name})")]
    Routes {
        /// The routing error.
        error: BuildError,
        /// Where the route came from.
        source_name: String,
    },
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        ConfigError::Figment(Box::new(e))
    }
}
