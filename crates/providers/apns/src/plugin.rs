//! `[providers.apns]` as a mesh-notify provider plug-in.

use std::path::PathBuf;
use std::sync::Arc;

use mesh_notify_core::Notifier;
use mesh_notify_provider_kit::http::check_https;
use mesh_notify_provider_kit::{ConfigIssue, ProviderConfig, ProviderContext};

use crate::{ApnsConfig, ApnsConfigError};

impl ApnsConfigError {
    /// The key (below `providers.apns`) this error is about; `None` for the
    /// top-level `timeout`.
    pub fn key(&self) -> Option<&'static str> {
        Some(match self {
            ApnsConfigError::KeyFile { .. } | ApnsConfigError::InvalidKey { .. } => "key_file",
            ApnsConfigError::InvalidField { key, .. } => key,
            ApnsConfigError::InvalidUrl { .. } | ApnsConfigError::BothEnvironmentAndBaseUrl => {
                "base_url"
            }
            ApnsConfigError::InvalidDefaultTimeout(_) => return None,
            ApnsConfigError::CaFile { .. } | ApnsConfigError::InvalidCa { .. } => "ca_file",
            ApnsConfigError::Client(_) => "",
        })
    }
}

impl ProviderConfig for ApnsConfig {
    const NAME: &'static str = "apns";

    fn validate(&self, ctx: &ProviderContext) -> Result<(), ConfigIssue> {
        let (key, url) = self.url_to_check();
        let key = key.strip_prefix("providers.apns.").unwrap_or(key);
        check_https(ctx, key, &url, self.allow_insecure_http)
    }

    fn build(&self, ctx: &ProviderContext) -> Result<Arc<dyn Notifier>, ConfigIssue> {
        let notifier = ApnsConfig::build(self, ctx.timeout)
            .map_err(|e| ctx.issue_at(e.key(), e.to_string()))?;
        tracing::info!(
            "APNs configured: {} (topic {})",
            notifier.base_url(),
            notifier.topic()
        );
        Ok(Arc::new(notifier))
    }

    fn secret_files(&self) -> Vec<PathBuf> {
        vec![self.key_file.clone()]
    }
}
