//! `[providers.ntfy]` and its registration as a mesh-notify provider.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_notify_core::{Notifier, Secret};
use mesh_notify_provider_kit::http::check_https;
use mesh_notify_provider_kit::{
    resolve_timeout, secret_from, ConfigIssue, ProviderConfig, ProviderContext,
};
use serde::Deserialize;

use crate::{is_valid_topic, NtfyNotifier};

/// The public ntfy server.
pub const DEFAULT_URL: &str = "https://ntfy.sh";

/// `[providers.ntfy]` configuration.
///
/// ```toml
/// [providers.ntfy]
/// url = "https://ntfy.example.com"        # default https://ntfy.sh
/// token_file = "/run/secrets/ntfy_token"  # access token (tk_…), or `token`
/// topic = "mesh-alerts"                   # for recipients without an ntfy topic
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NtfyConfig {
    /// The ntfy server (default `https://ntfy.sh`); a path prefix is kept.
    #[serde(default = "default_url")]
    pub url: String,
    /// Default topic, for recipients without an `ntfy` address. A secret: on a
    /// server without access control, whoever knows a topic reads it.
    #[serde(default)]
    pub topic: Option<Secret>,
    /// Access token (`Authorization: Bearer`). Prefer `token_file`.
    #[serde(default)]
    pub token: Option<Secret>,
    /// File holding the access token (trimmed); exclusive with `token`.
    #[serde(default)]
    pub token_file: Option<PathBuf>,
    /// Per-request timeout (default: the top-level `timeout`).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Allow `http://` in the production profile.
    #[serde(default)]
    pub allow_insecure_http: bool,
}

fn default_url() -> String {
    DEFAULT_URL.into()
}

impl ProviderConfig for NtfyConfig {
    const NAME: &'static str = "ntfy";

    fn validate(&self, ctx: &ProviderContext) -> Result<(), ConfigIssue> {
        check_https(ctx, "url", &self.url, self.allow_insecure_http)?;
        if let Some(t) = &self.topic {
            if !is_valid_topic(t.expose().trim()) {
                return Err(ctx.issue(
                    "topic",
                    "an ntfy topic is 1 to 64 letters, digits, `-` or `_`",
                ));
            }
        }
        Ok(())
    }

    fn build(&self, ctx: &ProviderContext) -> Result<Arc<dyn Notifier>, ConfigIssue> {
        let timeout = resolve_timeout(ctx, self.timeout)?;
        let token = secret_from(
            ctx,
            ("token", self.token.as_ref()),
            ("token_file", self.token_file.as_deref()),
        )?;
        let topic = self.topic.clone().filter(|t| !t.is_empty());
        let notifier = NtfyNotifier::new(&self.url, topic, token, timeout)
            .map_err(|e| ctx.issue(e.key, e.message))?;
        tracing::info!("ntfy configured: {}", notifier.url());
        Ok(Arc::new(notifier))
    }

    fn secret_files(&self) -> Vec<PathBuf> {
        self.token_file.iter().cloned().collect()
    }
}
