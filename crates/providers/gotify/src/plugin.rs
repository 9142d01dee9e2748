//! `[providers.gotify]` as a mesh-notify provider plug-in.

use std::path::PathBuf;
use std::sync::Arc;

use mesh_notify_core::Notifier;
use mesh_notify_provider_kit::http::check_https;
use mesh_notify_provider_kit::{ConfigIssue, ProviderConfig, ProviderContext};

use crate::{GotifyConfig, GotifyConfigError};

impl GotifyConfigError {
    /// The key (below `providers.gotify`) this error is about; `None` for the
    /// top-level `timeout`.
    pub fn key(&self) -> Option<&'static str> {
        Some(match self {
            GotifyConfigError::InvalidUrl { .. } | GotifyConfigError::Client(_) => "url",
            GotifyConfigError::TokenFile { .. } => "token_file",
            GotifyConfigError::BothTokenAndFile => "token",
            GotifyConfigError::InvalidField { key, .. } => {
                return key.strip_prefix("providers.gotify.");
            }
        })
    }
}

impl ProviderConfig for GotifyConfig {
    const NAME: &'static str = "gotify";
    const NOT_CONFIGURED: Option<&'static str> =
        Some("Gotify not configured - notifications disabled");

    /// A `[providers.gotify]` with an empty `url` (an unset `GOTIFY_URL`) is not
    /// configured.
    fn is_configured(&self) -> bool {
        !self.url.trim().is_empty()
    }

    fn validate(&self, ctx: &ProviderContext) -> Result<(), ConfigIssue> {
        check_https(ctx, "url", &self.url, self.allow_insecure_http)
    }

    fn build(&self, ctx: &ProviderContext) -> Result<Arc<dyn Notifier>, ConfigIssue> {
        let notifier = GotifyConfig::build(self, ctx.timeout)
            .map_err(|e| ctx.issue_at(e.key(), e.to_string()))?;
        tracing::info!("Gotify configured: {}", notifier.url());
        tracing::info!("Gotify enabled: true");
        if !notifier.has_default_token() {
            tracing::warn!(
                "Gotify has no default token: only recipients with their own Gotify token can be reached"
            );
        }
        Ok(Arc::new(notifier))
    }

    fn secret_files(&self) -> Vec<PathBuf> {
        self.token_file.iter().cloned().collect()
    }
}
