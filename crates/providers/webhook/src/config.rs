//! `[providers.webhook]` and its registration as a mesh-notify provider.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_notify_core::{Notifier, Secret};
use mesh_notify_provider_kit::http::check_https;
use mesh_notify_provider_kit::{
    resolve_timeout, secret_from, ConfigIssue, Profile, ProviderConfig, ProviderContext,
};
use serde::Deserialize;

use crate::{SigningKey, WebhookNotifier, WebhookPolicy};

/// `[providers.webhook]` configuration.
///
/// ```toml
/// [providers.webhook]
/// secret_file = "/run/secrets/webhook_secret"   # whsec_…, or `secret`
/// url = "https://hooks.example.com/mesh"        # optional: for recipients without a webhook address
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Endpoint for recipients without a `webhook` address (optional).
    #[serde(default)]
    pub url: Option<String>,
    /// The signing secret, `whsec_` and base64 (24 to 64 bytes). Prefer
    /// `secret_file`.
    #[serde(default)]
    pub secret: Option<Secret>,
    /// File holding the signing secret (trimmed); exclusive with `secret`.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Per-request timeout (default: the top-level `timeout`).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Allow `http://` (the configured URL and recipients' URLs) in the production
    /// profile.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Accept recipients' URLs that name loopback, private or link-local
    /// addresses (default false).
    #[serde(default)]
    pub allow_private_addresses: bool,
}

impl ProviderConfig for WebhookConfig {
    const NAME: &'static str = "webhook";

    fn validate(&self, ctx: &ProviderContext) -> Result<(), ConfigIssue> {
        if self.secret.is_none() && self.secret_file.is_none() {
            return Err(ctx.issue(
                "secret",
                "a signing secret is required: set providers.webhook.secret_file (or secret) to a whsec_… value",
            ));
        }
        if let Some(secret) = &self.secret {
            SigningKey::parse(secret.expose()).map_err(|m| ctx.issue("secret", m))?;
        }
        if let Some(url) = &self.url {
            check_https(ctx, "url", url, self.allow_insecure_http)?;
        }
        Ok(())
    }

    fn build(&self, ctx: &ProviderContext) -> Result<Arc<dyn Notifier>, ConfigIssue> {
        let timeout = resolve_timeout(ctx, self.timeout)?;
        let secret = secret_from(
            ctx,
            ("secret", self.secret.as_ref()),
            ("secret_file", self.secret_file.as_deref()),
        )?
        .ok_or_else(|| ctx.issue("secret", "the signing secret is empty"))?;
        let key_name = if self.secret_file.is_some() {
            "secret_file"
        } else {
            "secret"
        };
        let key = SigningKey::parse(secret.expose()).map_err(|m| ctx.issue(key_name, m))?;
        let policy = WebhookPolicy {
            https_only: ctx.profile == Profile::Production && !self.allow_insecure_http,
            allow_private_addresses: self.allow_private_addresses,
        };
        let notifier = WebhookNotifier::new(self.url.as_deref(), key, policy, timeout)
            .map_err(|m| ctx.issue("url", m))?;
        tracing::info!("webhook configured: {}", notifier.describe());
        Ok(Arc::new(notifier))
    }

    fn secret_files(&self) -> Vec<PathBuf> {
        self.secret_file.iter().cloned().collect()
    }
}
