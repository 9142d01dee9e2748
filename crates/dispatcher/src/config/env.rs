//! Environment variables: the seed's plain `GOTIFY_URL`/`GOTIFY_TOKEN`, and
//! `MESH_NOTIFY_*` secrets, taken verbatim as strings.

use figment::value::{Dict, Map, Tag, Value};
use figment::{Metadata, Profile as FigmentProfile, Provider};
/// Environment variables taken verbatim as strings (no number parsing, so
/// `GOTIFY_TOKEN=0123` stays `"0123"`), each mapped to a key path.
pub(super) struct PlainEnv {
    vars: Vec<(String, String)>,
    label: &'static str,
}

impl PlainEnv {
    pub(super) fn seed_variables() -> Self {
        Self {
            vars: vec![
                ("GOTIFY_URL".into(), "providers.gotify.url".into()),
                ("GOTIFY_TOKEN".into(), "providers.gotify.token".into()),
            ],
            label: "environment variable",
        }
    }

    /// `MESH_NOTIFY_*` variables whose key ends in a secret-like name.
    pub(super) fn prefixed_secrets() -> Self {
        let vars = std::env::vars()
            .filter_map(|(name, _)| {
                let rest = name.strip_prefix(PREFIX)?;
                is_secret_key(rest)
                    .then(|| (name.clone(), rest.to_ascii_lowercase().replace("__", ".")))
            })
            .collect();
        Self {
            vars,
            label: "environment variable",
        }
    }
}

pub(super) const PREFIX: &str = "MESH_NOTIFY_";

pub(super) fn is_secret_key(env_key_without_prefix: &str) -> bool {
    let last = env_key_without_prefix
        .rsplit("__")
        .next()
        .unwrap_or("")
        .to_ascii_lowercase();
    matches!(last.as_str(), "token" | "password" | "secret" | "key")
}

fn insert_path(dict: &mut Dict, path: &[&str], value: Value) {
    match path {
        [] => {}
        [last] => {
            dict.insert((*last).to_string(), value);
        }
        [first, rest @ ..] => {
            let entry = dict
                .entry((*first).to_string())
                .or_insert_with(|| Value::Dict(Tag::Default, Dict::new()));
            if !matches!(entry, Value::Dict(..)) {
                *entry = Value::Dict(Tag::Default, Dict::new());
            }
            if let Value::Dict(_, inner) = entry {
                insert_path(inner, rest, value);
            }
        }
    }
}

impl Provider for PlainEnv {
    fn metadata(&self) -> Metadata {
        let vars = self.vars.clone();
        Metadata::named(self.label).interpolater(move |_profile, keys| {
            let key = keys.join(".");
            vars.iter()
                .find(|(_, k)| *k == key)
                .map(|(v, _)| v.clone())
                .unwrap_or(key)
        })
    }

    fn data(&self) -> Result<Map<FigmentProfile, Dict>, figment::Error> {
        let mut dict = Dict::new();
        for (var, key) in &self.vars {
            if let Ok(value) = std::env::var(var) {
                if value.trim().is_empty() {
                    continue;
                }
                let path: Vec<&str> = key.split('.').collect();
                insert_path(&mut dict, &path, Value::from(value));
            }
        }
        let mut map = Map::new();
        map.insert(FigmentProfile::Default, dict);
        Ok(map)
    }
}
