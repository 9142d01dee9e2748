//! Loading: the sources in order, extraction, and provenance (which file or
//! variable a key came from).

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Toml};
use figment::{Figment, Profile as FigmentProfile};

use super::env::{is_secret_key, PlainEnv, PREFIX};
use super::{Config, ConfigError};

impl Config {
    /// The figment with every source, for the file at `path` (or none).
    pub fn figment(path: Option<&Path>) -> Result<Figment, ConfigError> {
        let mut figment = Figment::new();
        let env_path = std::env::var_os("MESH_NOTIFY_CONFIG").map(PathBuf::from);
        if let Some(path) = path.map(Path::to_path_buf).or(env_path) {
            // figment ignores a missing file silently; a file the user named must exist.
            std::fs::metadata(&path).map_err(|e| ConfigError::File {
                path: path.clone(),
                reason: e.to_string(),
            })?;
            figment = figment.merge(Toml::file_exact(path));
        }
        figment = figment
            .merge(PlainEnv::seed_variables())
            .merge(
                Env::prefixed(PREFIX)
                    .ignore(&["config"])
                    .filter(|k| !is_secret_key(k.as_str()))
                    .split("__"),
            )
            .merge(PlainEnv::prefixed_secrets());
        Ok(figment)
    }

    /// Loads and validates the configuration.
    pub fn load(path: Option<&Path>) -> Result<(Self, Figment), ConfigError> {
        let figment = Self::figment(path)?;
        let config = Self::from_figment(&figment)?;
        Ok((config, figment))
    }

    /// Extracts and validates from a figment.
    pub fn from_figment(figment: &Figment) -> Result<Self, ConfigError> {
        let mut config: Config = figment.extract()?;
        config.providers.resolve(figment)?;
        config.validate(figment)?;
        Ok(config)
    }

    /// Where `key`'s value came from: `TOML file /etc/mesh.toml`, `environment
    /// variable GOTIFY_URL`, or `built-in defaults`. A provider key that is not
    /// set is attributed to its provider's table.
    pub(super) fn source_of(figment: &Figment, key: &str) -> String {
        let found = figment.find_metadata(key).or_else(|| {
            let (table, _) = key.rsplit_once('.')?;
            table
                .starts_with("providers.")
                .then(|| figment.find_metadata(table))
                .flatten()
        });
        match found {
            Some(md) => match &md.source {
                Some(src) => format!("{} {}", md.name, src),
                None => {
                    let keys: Vec<&str> = key.split('.').collect();
                    format!(
                        "{} {}",
                        md.name,
                        md.interpolate(&FigmentProfile::Default, &keys)
                    )
                }
            },
            None => "built-in defaults".into(),
        }
    }

    /// A provider's [`ConfigIssue`](mesh_notify_provider_kit::ConfigIssue) as a
    /// configuration error naming the source of its key.
    pub(super) fn issue(
        figment: &Figment,
        issue: mesh_notify_provider_kit::ConfigIssue,
    ) -> ConfigError {
        ConfigError::Invalid {
            source_name: Self::source_of(figment, &issue.key),
            key: issue.key,
            message: issue.message,
        }
    }
}
