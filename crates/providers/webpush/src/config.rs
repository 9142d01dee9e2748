//! `[providers.webpush]` and its registration as a mesh-notify provider.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use mesh_notify_core::{Notifier, Secret};
use mesh_notify_provider_kit::{
    resolve_timeout, secret_from, ConfigIssue, Profile, ProviderConfig, ProviderContext,
};
use serde::Deserialize;

use crate::{EndpointPolicy, VapidKey, WebPushNotifier};

/// Default time to live of chat, file and system pushes.
pub const DEFAULT_TTL: Duration = Duration::from_secs(12 * 3600);
/// The longest accepted `ttl` (4 weeks, what push services keep at most).
pub const MAX_TTL: Duration = Duration::from_secs(28 * 24 * 3600);

/// `[providers.webpush]` configuration.
///
/// ```toml
/// [providers.webpush]
/// vapid_key_file = "/run/secrets/vapid.pem"   # P-256 private key (PKCS#8 PEM, or base64url scalar)
/// subject = "mailto:ops@example.com"          # who push services can contact
/// ttl = "12h"                                 # chat, file and system pushes
/// ```
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebPushConfig {
    /// The VAPID private key, inline (PKCS#8 PEM or base64url scalar). Prefer
    /// `vapid_key_file`.
    #[serde(default)]
    pub vapid_key: Option<Secret>,
    /// File holding the VAPID private key; exclusive with `vapid_key`.
    #[serde(default)]
    pub vapid_key_file: Option<PathBuf>,
    /// The VAPID `sub`: `mailto:` or an https URL where the push service can
    /// reach the operator.
    pub subject: String,
    /// Time to live of chat, file and system pushes (default 12h); calls live
    /// as long as they ring.
    #[serde(default, with = "humantime_serde")]
    pub ttl: Option<Duration>,
    /// Per-request timeout (default: the top-level `timeout`).
    #[serde(default, with = "humantime_serde")]
    pub timeout: Option<Duration>,
    /// Allow `http://` push endpoints in the production profile.
    #[serde(default)]
    pub allow_insecure_http: bool,
    /// Accept push endpoints on loopback or private addresses (default false).
    #[serde(default)]
    pub allow_private_addresses: bool,
}

impl ProviderConfig for WebPushConfig {
    const NAME: &'static str = "webpush";

    fn validate(&self, ctx: &ProviderContext) -> Result<(), ConfigIssue> {
        if self.vapid_key.is_none() && self.vapid_key_file.is_none() {
            return Err(ctx.issue(
                "vapid_key_file",
                "a VAPID key is required: set providers.webpush.vapid_key_file (or vapid_key)",
            ));
        }
        if !(self.subject.starts_with("mailto:") || self.subject.starts_with("https://")) {
            return Err(ctx.issue(
                "subject",
                format!(
                    "`{}` is not a VAPID subject: use mailto:you@example.com or an https:// URL",
                    self.subject
                ),
            ));
        }
        if let Some(ttl) = self.ttl {
            if ttl > MAX_TTL {
                return Err(ctx.issue("ttl", format!("{ttl:?} is longer than 4 weeks")));
            }
        }
        Ok(())
    }

    fn build(&self, ctx: &ProviderContext) -> Result<Arc<dyn Notifier>, ConfigIssue> {
        let timeout = resolve_timeout(ctx, self.timeout)?;
        let key_name = if self.vapid_key_file.is_some() {
            "vapid_key_file"
        } else {
            "vapid_key"
        };
        let text = secret_from(
            ctx,
            ("vapid_key", self.vapid_key.as_ref()),
            ("vapid_key_file", self.vapid_key_file.as_deref()),
        )?
        .ok_or_else(|| ctx.issue(key_name, "the VAPID key is empty"))?;
        let vapid = VapidKey::parse(text.expose()).map_err(|m| ctx.issue(key_name, m))?;
        let policy = EndpointPolicy {
            https_only: ctx.profile == Profile::Production && !self.allow_insecure_http,
            allow_private_addresses: self.allow_private_addresses,
        };
        let notifier = WebPushNotifier::new(
            vapid,
            &self.subject,
            self.ttl.unwrap_or(DEFAULT_TTL),
            policy,
            timeout,
        )
        .map_err(|m| ctx.issue("subject", m))?;
        tracing::info!(
            "Web Push configured: VAPID public key {} (the applicationServerKey browsers subscribe with)",
            notifier.public_key()
        );
        Ok(Arc::new(notifier))
    }

    fn secret_files(&self) -> Vec<PathBuf> {
        self.vapid_key_file.iter().cloned().collect()
    }
}
