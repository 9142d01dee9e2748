//! `[providers.fcm]` as a mesh-notify provider plug-in.

use std::path::PathBuf;
use std::sync::Arc;

use mesh_notify_core::Notifier;
use mesh_notify_provider_kit::http::check_https;
use mesh_notify_provider_kit::{ConfigIssue, ProviderConfig, ProviderContext};

use crate::{FcmConfig, FcmConfigError};

const PREFIX: &str = "providers.fcm.";

impl FcmConfigError {
    /// The key (below `providers.fcm`) this error is about; `None` for the
    /// top-level `timeout`.
    pub fn key(&self) -> Option<&'static str> {
        Some(match self {
            FcmConfigError::ServiceAccountFile { .. }
            | FcmConfigError::ServiceAccountJson { .. }
            | FcmConfigError::PrivateKey { .. } => "service_account_file",
            FcmConfigError::MissingProjectId { .. } | FcmConfigError::InvalidProjectId(_) => {
                "project_id"
            }
            FcmConfigError::InvalidUrl { key, .. } | FcmConfigError::InvalidField { key, .. } => {
                match key.strip_prefix(PREFIX) {
                    Some(k) => k,
                    // `token_uri in service_account_file`, or the global `timeout`.
                    None if key.starts_with("token_uri") => "service_account_file",
                    None => return None,
                }
            }
            FcmConfigError::Client(_) => "",
        })
    }
}

impl ProviderConfig for FcmConfig {
    const NAME: &'static str = "fcm";

    fn validate(&self, ctx: &ProviderContext) -> Result<(), ConfigIssue> {
        for (key, url) in self.urls() {
            let key = key.strip_prefix(PREFIX).unwrap_or(key);
            check_https(ctx, key, &url, self.allow_insecure_http)?;
        }
        Ok(())
    }

    fn build(&self, ctx: &ProviderContext) -> Result<Arc<dyn Notifier>, ConfigIssue> {
        let notifier = FcmConfig::build(self, ctx.timeout)
            .map_err(|e| ctx.issue_at(e.key(), e.to_string()))?;
        // The token URI may come from the key file: check the effective URLs too.
        for (key, url) in notifier.urls() {
            let key = key.strip_prefix(PREFIX).unwrap_or(key);
            check_https(ctx, key, &url, self.allow_insecure_http)?;
        }
        tracing::info!("FCM configured: project {}", notifier.project_id());
        Ok(Arc::new(notifier))
    }

    fn secret_files(&self) -> Vec<PathBuf> {
        vec![self.service_account_file.clone()]
    }
}
