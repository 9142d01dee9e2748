//! The provider registry: every provider mesh-notify can build, and the
//! `[providers]` table that holds their sections.
//!
//! **Adding a provider is one line in [`REGISTRY`]** (plus its crate as an
//! optional dependency and a feature in this crate's `Cargo.toml`): the provider
//! crate implements [`ProviderConfig`] on its section type, which gives the name
//! used in `[providers.NAME]` and in routes, validation against the profile,
//! construction, and its secret files. See `docs/providers.md`.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use figment::Figment;

use super::ConfigError;
use mesh_notify_provider_kit::{AnySection, ProviderConfig};
use serde::de::{self, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Deserializer};

/// Every provider this build knows, in start-up order. One line per provider.
pub static REGISTRY: &[Registration] = &[
    #[cfg(feature = "gotify")]
    Registration::of::<mesh_notify_gotify::GotifyConfig>(),
    #[cfg(feature = "fcm")]
    Registration::of::<mesh_notify_fcm::FcmConfig>(),
    #[cfg(feature = "apns")]
    Registration::of::<mesh_notify_apns::ApnsConfig>(),
    #[cfg(feature = "smtp")]
    Registration::of::<mesh_notify_smtp::SmtpConfig>(),
    #[cfg(feature = "ntfy")]
    Registration::of::<mesh_notify_ntfy::NtfyConfig>(),
    #[cfg(feature = "webhook")]
    Registration::of::<mesh_notify_webhook::WebhookConfig>(),
    #[cfg(feature = "webpush")]
    Registration::of::<mesh_notify_webpush::WebPushConfig>(),
];

/// The built-in provider that writes notifications to the log (`[providers.log]`).
pub const LOG_PROVIDER: &str = "log";

/// Reads a provider's section from the figment at a key.
type Extract = fn(&Figment, &str) -> Result<Arc<dyn AnySection>, ConfigError>;

/// One registered provider: its name and how to read its section.
pub struct Registration {
    /// `[providers.NAME]`, and the name in routes.
    pub name: &'static str,
    /// Logged when the provider is not configured ([`ProviderConfig::NOT_CONFIGURED`]).
    pub not_configured: Option<&'static str>,
    extract: Extract,
}

impl Registration {
    /// The registration of the provider whose section type is `T`.
    pub const fn of<T: ProviderConfig>() -> Self {
        Self {
            name: T::NAME,
            not_configured: T::NOT_CONFIGURED,
            extract: extract::<T>,
        }
    }

    /// Reads this provider's section at `key` of the figment; the error names
    /// the key and where it came from.
    pub fn extract(
        &self,
        figment: &Figment,
        key: &str,
    ) -> Result<Arc<dyn AnySection>, ConfigError> {
        (self.extract)(figment, key)
    }
}

fn extract<T: ProviderConfig>(
    figment: &Figment,
    key: &str,
) -> Result<Arc<dyn AnySection>, ConfigError> {
    figment
        .extract_inner::<T>(key)
        .map(|section| Arc::new(section) as Arc<dyn AnySection>)
        .map_err(|e| ConfigError::from(key_first(e, key)))
}

/// figment 0.10's `extract_inner` appends the section's path after the inner
/// key (`chanel_id.providers.fcm`); put it first, where it belongs.
fn key_first(error: figment::Error, key: &str) -> figment::Error {
    let prefix: Vec<String> = key.split('.').map(str::to_owned).collect();
    let mut fixed: Vec<figment::Error> = error
        .into_iter()
        .map(|mut e| {
            if e.path.ends_with(&prefix) && e.path.len() > prefix.len() {
                let inner = e.path.len() - prefix.len();
                e.path.rotate_left(inner);
            }
            e
        })
        .collect();
    // `into_iter` gives the newest first; chain back from the oldest.
    let mut chained = match fixed.pop() {
        Some(oldest) => oldest,
        None => return figment::Error::from(format!("invalid `{key}`")),
    };
    while let Some(newer) = fixed.pop() {
        chained = chained.chain(newer);
    }
    chained
}

/// The registration named `name`.
pub fn registration(name: &str) -> Option<&'static Registration> {
    REGISTRY.iter().find(|r| r.name == name)
}

/// Names of every provider mesh-notify knows, configured or not: the registry's
/// and `log`.
pub fn known_providers() -> Vec<&'static str> {
    REGISTRY
        .iter()
        .map(|r| r.name)
        .chain(std::iter::once(LOG_PROVIDER))
        .collect()
}

/// `[providers.log]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// Whether the built-in log provider is available to routes (default true).
    #[serde(default = "yes")]
    pub enabled: bool,
    /// Whether writing a notification to the log counts as its delivery even when
    /// a real provider of the route could deliver it later (default false: the
    /// log delivers only where no real provider can reach the recipient, and
    /// otherwise the notification waits in the outbox for the real provider).
    #[serde(default)]
    pub terminal: bool,
}

fn yes() -> bool {
    true
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            terminal: false,
        }
    }
}

/// `[providers]`: each provider is optional; one that is absent is disabled.
///
/// Deserialising records which registered sections are present (an unregistered
/// name is an error); [`Config::from_figment`](crate::Config::from_figment) then
/// reads each with its own type, so its errors name the key and the source.
#[derive(Debug, Clone, Default)]
pub struct ProvidersConfig {
    /// Sections read with their own type, by name.
    sections: BTreeMap<&'static str, Arc<dyn AnySection>>,
    /// Sections present but not read yet.
    pending: Vec<&'static str>,
    /// `[providers.log]`.
    pub log: LogConfig,
}

impl PartialEq for ProvidersConfig {
    fn eq(&self, other: &Self) -> bool {
        self.log == other.log
            && self.pending == other.pending
            && self.sections.len() == other.sections.len()
            && self
                .sections
                .iter()
                .zip(&other.sections)
                .all(|((a, x), (b, y))| a == b && x.same_as(y.as_ref()))
    }
}

impl ProvidersConfig {
    /// The section of the provider whose section type is `T`, when present.
    ///
    /// ```
    /// # use mesh_notify::Config;
    /// # let config = Config::from_figment(&mesh_notify::Figment::new()).unwrap();
    /// let gotify = config.providers.get::<mesh_notify_gotify::GotifyConfig>();
    /// assert!(gotify.is_none());
    /// ```
    pub fn get<T: ProviderConfig>(&self) -> Option<&T> {
        self.sections
            .get(T::NAME)
            .and_then(|s| s.as_any().downcast_ref::<T>())
    }

    /// The section named `name`, when present.
    pub fn section(&self, name: &str) -> Option<&dyn AnySection> {
        self.sections.get(name).map(|s| s.as_ref())
    }

    /// Every section present, in registry order.
    pub fn sections(&self) -> impl Iterator<Item = &dyn AnySection> {
        REGISTRY
            .iter()
            .filter_map(|r| self.sections.get(r.name).map(|s| s.as_ref()))
    }

    /// Sets (or replaces) a section.
    pub fn insert<T: ProviderConfig>(&mut self, section: T) {
        self.pending.retain(|n| *n != T::NAME);
        self.sections.insert(T::NAME, Arc::new(section));
    }

    /// Reads the sections recorded by deserialisation with their own types.
    pub(crate) fn resolve(&mut self, figment: &Figment) -> Result<(), ConfigError> {
        for name in std::mem::take(&mut self.pending) {
            if let Some(reg) = registration(name) {
                let section = reg.extract(figment, &format!("providers.{name}"))?;
                self.sections.insert(name, section);
            }
        }
        Ok(())
    }

    /// Whether sections are waiting for [`resolve`](Self::resolve).
    pub(crate) fn is_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// The secret files every section reads.
    pub fn secret_files(&self) -> Vec<PathBuf> {
        self.sections().flat_map(|s| s.secret_files()).collect()
    }
}

impl<'de> Deserialize<'de> for ProvidersConfig {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct Sections;
        impl<'de> Visitor<'de> for Sections {
            type Value = ProvidersConfig;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table of provider sections")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                let mut out = ProvidersConfig::default();
                while let Some(name) = map.next_key::<String>()? {
                    if name == LOG_PROVIDER {
                        out.log = map.next_value()?;
                    } else if let Some(reg) = registration(&name) {
                        map.next_value::<IgnoredAny>()?;
                        if !out.pending.contains(&reg.name) {
                            out.pending.push(reg.name);
                        }
                    } else {
                        return Err(de::Error::unknown_field(
                            &name,
                            KNOWN.get_or_init(known_providers),
                        ));
                    }
                }
                Ok(out)
            }
        }
        deserializer.deserialize_map(Sections)
    }
}

static KNOWN: std::sync::OnceLock<Vec<&'static str>> = std::sync::OnceLock::new();
