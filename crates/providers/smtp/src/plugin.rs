//! `[providers.smtp]` as a mesh-notify provider plug-in.

use std::path::PathBuf;
use std::sync::Arc;

use mesh_notify_core::Notifier;
use mesh_notify_provider_kit::{ConfigIssue, Profile, ProviderConfig, ProviderContext};

use crate::{SmtpConfig, SmtpConfigError};

impl SmtpConfigError {
    /// The key (below `providers.smtp`) this error is about; `None` for the
    /// top-level `timeout`.
    pub fn key(&self) -> Option<&'static str> {
        Some(match self {
            SmtpConfigError::InvalidHost { .. } | SmtpConfigError::Tls { .. } => "host",
            SmtpConfigError::InvalidPort => "port",
            SmtpConfigError::InvalidFrom { .. } => "from",
            SmtpConfigError::InvalidHelloName { .. } => "hello_name",
            SmtpConfigError::InvalidTimeout { key, .. } => {
                return key.strip_prefix("providers.smtp.");
            }
            SmtpConfigError::InvalidPoolSize => "pool_max_size",
            SmtpConfigError::PasswordFile { .. } | SmtpConfigError::EmptyPasswordFile { .. } => {
                "password_file"
            }
            SmtpConfigError::BothPasswordAndFile => "password",
            SmtpConfigError::IncompleteCredentials(_) => "username",
            SmtpConfigError::CaFile { .. } => "ca_file",
        })
    }
}

impl ProviderConfig for SmtpConfig {
    const NAME: &'static str = "smtp";

    fn validate(&self, ctx: &ProviderContext) -> Result<(), ConfigIssue> {
        if ctx.profile == Profile::Production && self.is_plaintext() && !self.allow_insecure {
            return Err(ctx.issue(
                "tls",
                "tls = \"none\" sends mail and credentials in clear text; refused in the production profile (use starttls or tls, or set providers.smtp.allow_insecure = true)",
            ));
        }
        Ok(())
    }

    fn build(&self, ctx: &ProviderContext) -> Result<Arc<dyn Notifier>, ConfigIssue> {
        let notifier = SmtpConfig::build(self, ctx.timeout)
            .map_err(|e| ctx.issue_at(e.key(), e.to_string()))?;
        tracing::info!(
            "SMTP configured: {}",
            mesh_notify_core::Notifier::describe(&notifier)
        );
        Ok(Arc::new(notifier))
    }

    fn secret_files(&self) -> Vec<PathBuf> {
        self.password_file.iter().cloned().collect()
    }
}
