//! The provider plug-in interface: a `[providers.NAME]` section type that knows
//! how to validate itself and build its notifier.

use std::any::Any;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use mesh_notify_core::{Notifier, Secret};
use serde::de::DeserializeOwned;
use serde::Deserialize;

/// The longest accepted per-request `timeout`. Longer is surely a typo, and keeps
/// deadline arithmetic far from overflowing.
pub const MAX_TIMEOUT: Duration = Duration::from_secs(3600);

/// Deployment profile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Profile {
    /// Local work: plain http allowed.
    #[default]
    Development,
    /// Production: provider URLs must be https unless a provider sets
    /// `allow_insecure_http = true`.
    Production,
}

/// A configuration value a provider cannot use: the full dotted key
/// (`providers.gotify.url`) and what is wrong. The dispatcher adds where the key
/// came from (file or environment variable).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigIssue {
    /// The key, dotted, from the top of the configuration.
    pub key: String,
    /// What is wrong (never a secret).
    pub message: String,
}

impl fmt::Display for ConfigIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid `{}`: {}", self.key, self.message)
    }
}

impl std::error::Error for ConfigIssue {}

/// What a provider gets from the rest of the configuration when it is validated
/// and built.
#[derive(Debug, Clone)]
pub struct ProviderContext {
    /// The deployment profile.
    pub profile: Profile,
    /// The top-level `timeout`, for providers whose own `timeout` is unset.
    pub timeout: Duration,
    /// The provider's name (its `[providers.NAME]` table and its name in routes).
    pub name: &'static str,
}

impl ProviderContext {
    /// A context.
    pub fn new(profile: Profile, timeout: Duration, name: &'static str) -> Self {
        Self {
            profile,
            timeout,
            name,
        }
    }

    /// The full key of one of this provider's keys: `providers.{name}.{key}`
    /// (`providers.{name}` for an empty `key`).
    pub fn key(&self, key: &str) -> String {
        if key.is_empty() {
            format!("providers.{}", self.name)
        } else {
            format!("providers.{}.{key}", self.name)
        }
    }

    /// An issue with this provider's `key`.
    pub fn issue(&self, key: &str, message: impl Into<String>) -> ConfigIssue {
        ConfigIssue {
            key: self.key(key),
            message: message.into(),
        }
    }

    /// An issue with this provider's `key`, or with the top-level `timeout` for
    /// `None` (the one top-level key a provider falls back to).
    pub fn issue_at(&self, key: Option<&str>, message: impl Into<String>) -> ConfigIssue {
        match key {
            Some(key) => self.issue(key, message),
            None => ConfigIssue {
                key: "timeout".into(),
                message: message.into(),
            },
        }
    }
}

/// A `[providers.NAME]` section: the one thing a provider crate implements to be
/// registered with the dispatcher (`crates/dispatcher/src/config/registry.rs`).
///
/// The section is deserialised from the configuration (unknown keys should be
/// refused: `#[serde(deny_unknown_fields)]`), validated when the configuration is
/// loaded ([`validate`](Self::validate): no file or network access, only the
/// rules of the profile), and built when the dispatcher is
/// ([`build`](Self::build): reads key files, builds clients). The notifier it
/// builds describes itself for `check-config` ([`Notifier::describe`]) and
/// checks its own health ([`Notifier::health`]).
pub trait ProviderConfig:
    DeserializeOwned + fmt::Debug + Clone + PartialEq + Send + Sync + 'static
{
    /// The provider's name: its `[providers.NAME]` table and its name in routes.
    const NAME: &'static str;

    /// Logged (warning) at start-up when the section is absent or not configured,
    /// whether or not a route uses the provider. `None` (the default): only a
    /// route naming it gets a warning.
    const NOT_CONFIGURED: Option<&'static str> = None;

    /// Whether the section enables the provider (e.g. Gotify with an empty `url`
    /// is present but not configured). Default: present means configured.
    fn is_configured(&self) -> bool {
        true
    }

    /// The profile's rules (https, insecure opt-ins) and anything else that can be
    /// judged without reading files or the network.
    fn validate(&self, ctx: &ProviderContext) -> Result<(), ConfigIssue> {
        let _ = ctx;
        Ok(())
    }

    /// Builds the notifier (reads key files, builds clients; no network traffic).
    fn build(&self, ctx: &ProviderContext) -> Result<Arc<dyn Notifier>, ConfigIssue>;

    /// The secret files this section reads (`token_file`, `key_file`, ...), watched
    /// for rotation: when one changes, the provider is built again.
    fn secret_files(&self) -> Vec<PathBuf> {
        Vec::new()
    }
}

/// A [`ProviderConfig`] of any type, as the dispatcher holds it.
pub trait AnySection: fmt::Debug + Send + Sync + 'static {
    /// [`ProviderConfig::NAME`].
    fn name(&self) -> &'static str;
    /// [`ProviderConfig::is_configured`].
    fn is_configured(&self) -> bool;
    /// [`ProviderConfig::validate`].
    fn validate(&self, ctx: &ProviderContext) -> Result<(), ConfigIssue>;
    /// [`ProviderConfig::build`].
    fn build(&self, ctx: &ProviderContext) -> Result<Arc<dyn Notifier>, ConfigIssue>;
    /// [`ProviderConfig::secret_files`].
    fn secret_files(&self) -> Vec<PathBuf>;
    /// For downcasting to the concrete section type.
    fn as_any(&self) -> &dyn Any;
    /// Whether `other` is the same type with the same values.
    fn same_as(&self, other: &dyn AnySection) -> bool;
}

impl<T: ProviderConfig> AnySection for T {
    fn name(&self) -> &'static str {
        T::NAME
    }
    fn is_configured(&self) -> bool {
        ProviderConfig::is_configured(self)
    }
    fn validate(&self, ctx: &ProviderContext) -> Result<(), ConfigIssue> {
        ProviderConfig::validate(self, ctx)
    }
    fn build(&self, ctx: &ProviderContext) -> Result<Arc<dyn Notifier>, ConfigIssue> {
        ProviderConfig::build(self, ctx)
    }
    fn secret_files(&self) -> Vec<PathBuf> {
        ProviderConfig::secret_files(self)
    }
    fn as_any(&self) -> &dyn Any {
        self
    }
    fn same_as(&self, other: &dyn AnySection) -> bool {
        other.as_any().downcast_ref::<T>() == Some(self)
    }
}

/// The provider's timeout: its own `timeout` when set, else the top-level one;
/// more than zero and at most [`MAX_TIMEOUT`]. The error names the key that
/// applies.
pub fn resolve_timeout(
    ctx: &ProviderContext,
    own: Option<Duration>,
) -> Result<Duration, ConfigIssue> {
    let timeout = own.unwrap_or(ctx.timeout);
    if timeout.is_zero() || timeout > MAX_TIMEOUT {
        let reason = format!(
            "{timeout:?} is out of range: must be greater than zero and at most {MAX_TIMEOUT:?}"
        );
        return Err(match own {
            Some(_) => ctx.issue("timeout", reason),
            None => ConfigIssue {
                key: "timeout".into(),
                message: format!(
                    "{reason} (used by {}, as {} is unset)",
                    ctx.name,
                    ctx.key("timeout")
                ),
            },
        });
    }
    Ok(timeout)
}

/// A secret given inline (`value_key`) or in a file (`file_key`, surrounding
/// whitespace trimmed), not both. An empty secret is `None`.
pub fn secret_from(
    ctx: &ProviderContext,
    (value_key, value): (&str, Option<&Secret>),
    (file_key, file): (&str, Option<&Path>),
) -> Result<Option<Secret>, ConfigIssue> {
    match (value, file) {
        (Some(_), Some(_)) => Err(ctx.issue(
            value_key,
            format!(
                "give either {} or {}, not both",
                ctx.key(value_key),
                ctx.key(file_key)
            ),
        )),
        (Some(v), None) => Ok(Some(v.clone()).filter(|s| !s.is_empty())),
        (None, Some(path)) => {
            let raw = std::fs::read_to_string(path).map_err(|e| {
                ctx.issue(file_key, format!("cannot read `{}`: {e}", path.display()))
            })?;
            Ok(Some(Secret::new(raw.trim())).filter(|s| !s.is_empty()))
        }
        (None, None) => Ok(None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ctx() -> ProviderContext {
        ProviderContext::new(Profile::Production, Duration::from_secs(5), "ntfy")
    }

    #[test]
    fn timeouts_name_the_key_that_applies() {
        assert_eq!(
            resolve_timeout(&ctx(), None).ok(),
            Some(Duration::from_secs(5))
        );
        let own = resolve_timeout(&ctx(), Some(Duration::ZERO)).unwrap_err();
        assert_eq!(own.key, "providers.ntfy.timeout");
        let mut c = ctx();
        c.timeout = Duration::from_secs(7200);
        let global = resolve_timeout(&c, None).unwrap_err();
        assert_eq!(global.key, "timeout");
        assert!(global.message.contains("providers.ntfy.timeout is unset"));
    }

    #[test]
    fn secrets_come_inline_or_from_a_file_not_both() {
        let dir = std::env::temp_dir().join(format!("kit-secret-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("token");
        std::fs::write(&file, "  tk_file \n").unwrap();
        let inline = Secret::new("tk_inline");
        let got = secret_from(
            &ctx(),
            ("token", None),
            ("token_file", Some(file.as_path())),
        )
        .unwrap();
        assert_eq!(got.unwrap().expose(), "tk_file");
        let both = secret_from(
            &ctx(),
            ("token", Some(&inline)),
            ("token_file", Some(file.as_path())),
        )
        .unwrap_err();
        assert_eq!(both.key, "providers.ntfy.token");
        let missing = secret_from(
            &ctx(),
            ("token", None),
            ("token_file", Some(dir.join("nope").as_path())),
        )
        .unwrap_err();
        assert_eq!(missing.key, "providers.ntfy.token_file");
        assert!(!missing.message.contains("tk_"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
