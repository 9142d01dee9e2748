//! Configuration: TOML file + environment, through figment.
//!
//! Sources, later ones winning:
//! 1. built-in defaults (the same as `config/default.toml`);
//! 2. the TOML file given with `--config` or `MESH_NOTIFY_CONFIG`;
//! 3. the seed's plain variables `GOTIFY_URL` and `GOTIFY_TOKEN`;
//! 4. `MESH_NOTIFY_*` variables, `__` separating levels
//!    (`MESH_NOTIFY_PROVIDERS__GOTIFY__URL`).
//!
//! Unknown keys are errors; every error names the key and where it came from.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use figment::providers::{Env, Format, Toml};
use figment::value::{Dict, Map, Tag, Value};
use figment::{Figment, Metadata, Profile as FigmentProfile, Provider};
use mesh_notify_core::{Composer, Kind, Language, Notifier as _, Templates};
use serde::Deserialize;

use crate::{
    BreakerConfig, BuildError, Dispatcher, DispatcherBuilder, LogNotifier, QueuePolicy,
    RateLimitConfig, RetryPolicy,
};

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

/// Partial override of the built-in templates (`[templates]`).
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
#[allow(missing_docs)]
pub struct TemplatesOverride {
    pub chat_title: Option<String>,
    pub chat_body: Option<String>,
    pub call_title: Option<String>,
    pub call_body: Option<String>,
    pub file_title: Option<String>,
    pub file_body: Option<String>,
}

/// `[retry]`: inline retries of one provider before falling back.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Tries per provider for transient failures (default 2).
    pub attempts_per_provider: u32,
    /// Delay before the first inline retry (default 200ms).
    #[serde(with = "humantime_serde")]
    pub initial_delay: Duration,
    /// Longest `Retry-After` waited for inline (default 1s); longer means fall back.
    #[serde(with = "humantime_serde")]
    pub max_inline_wait: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        let p = RetryPolicy::default();
        Self {
            attempts_per_provider: p.attempts_per_provider,
            initial_delay: p.initial_delay,
            max_inline_wait: p.max_inline_wait,
        }
    }
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
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct ProvidersConfig {
    /// `[providers.gotify]`.
    #[cfg(feature = "gotify")]
    #[serde(default)]
    pub gotify: Option<mesh_notify_gotify::GotifyConfig>,
    /// `[providers.fcm]`.
    #[cfg(feature = "fcm")]
    #[serde(default)]
    pub fcm: Option<mesh_notify_fcm::FcmConfig>,
    /// `[providers.apns]`.
    #[cfg(feature = "apns")]
    #[serde(default)]
    pub apns: Option<mesh_notify_apns::ApnsConfig>,
    /// `[providers.smtp]`.
    #[cfg(feature = "smtp")]
    #[serde(default)]
    pub smtp: Option<mesh_notify_smtp::SmtpConfig>,
    /// `[providers.log]`.
    #[serde(default)]
    pub log: LogConfig,
}

/// `[routes]`: ordered provider names per kind, primary first.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct RoutesConfig {
    /// Chat messages.
    pub chat: Vec<String>,
    /// Incoming calls.
    pub call: Vec<String>,
    /// Shared files.
    pub file: Vec<String>,
    /// System errors.
    pub system: Vec<String>,
}

impl Default for RoutesConfig {
    fn default() -> Self {
        let r = || vec!["gotify".to_string(), "log".to_string()];
        Self {
            chat: r(),
            call: r(),
            file: r(),
            system: r(),
        }
    }
}

impl RoutesConfig {
    /// The route for a kind.
    pub fn get(&self, kind: Kind) -> &[String] {
        match kind {
            Kind::Chat => &self.chat,
            Kind::Call => &self.call,
            Kind::File => &self.file,
            Kind::System => &self.system,
        }
    }
}

/// `[breaker]`: circuit breaker applied to every provider.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSection {
    /// Consecutive transient failures that open a provider's circuit (0 = off; default 5).
    pub failure_threshold: u32,
    /// Wait between opening and the first probe (default 1s); doubles after each
    /// failed probe. `cool_down` is accepted as its former name.
    #[serde(with = "humantime_serde", alias = "cool_down")]
    pub probe_interval: Duration,
    /// Longest wait between two probes of a provider that is down (default 5s):
    /// the longest a backlog waits after the provider is back.
    #[serde(with = "humantime_serde")]
    pub probe_max_interval: Duration,
}

impl Default for BreakerSection {
    fn default() -> Self {
        let b = BreakerConfig::default();
        Self {
            failure_threshold: b.failure_threshold,
            probe_interval: b.probe_interval,
            probe_max_interval: b.probe_max_interval,
        }
    }
}

/// `[rate_limits.<provider>]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct RateLimitSection {
    /// Sustained sends per second.
    pub per_second: f64,
    /// Burst size (default: one second's worth).
    #[serde(default)]
    pub burst: Option<u32>,
}

/// `[queue]`: retry timing, expiry and workers for queued notifications.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct QueueSection {
    /// First retry delay before jitter (default 1s).
    #[serde(with = "humantime_serde")]
    pub initial_backoff: Duration,
    /// Largest retry delay (default 15m).
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
    /// Delivery workers per process (default 2).
    pub workers: usize,
    /// Entries one worker claims and acknowledges at once (default 128).
    pub batch: usize,
    /// Of a claimed batch, how many one worker delivers at the same time (default 32).
    pub concurrency: usize,
    /// Lease on a claimed entry before another worker may take it over (default 60s).
    #[serde(with = "humantime_serde")]
    pub lease: Duration,
    /// How often idle workers poll for due entries (default 250ms).
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Give up (dead-letter) after this age, per kind. Calls use `call_ttl`.
    pub max_age: MaxAgeSection,
    /// On shutdown, how long in-flight deliveries may finish (default 10s); the
    /// rest is handed back to the outbox.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

/// `[queue.max_age]`.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct MaxAgeSection {
    /// Chat notifications (default 12h).
    #[serde(with = "humantime_serde")]
    pub chat: Duration,
    /// File notifications (default 12h).
    #[serde(with = "humantime_serde")]
    pub file: Duration,
    /// System notifications (default 24h).
    #[serde(with = "humantime_serde")]
    pub system: Duration,
}

impl Default for MaxAgeSection {
    fn default() -> Self {
        let q = QueuePolicy::default();
        let get = |k| {
            q.max_age
                .get(&k)
                .copied()
                .unwrap_or(Duration::from_secs(3600))
        };
        Self {
            chat: get(Kind::Chat),
            file: get(Kind::File),
            system: get(Kind::System),
        }
    }
}

impl Default for QueueSection {
    fn default() -> Self {
        let q = QueuePolicy::default();
        Self {
            initial_backoff: q.initial_backoff,
            max_backoff: q.max_backoff,
            workers: q.workers,
            batch: q.batch,
            concurrency: q.concurrency,
            lease: q.lease,
            poll_interval: q.poll_interval,
            shutdown_grace: q.shutdown_grace,
            max_age: MaxAgeSection::default(),
        }
    }
}

/// Which durable store holds queued notifications.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OutboxBackend {
    /// Embedded SQLite file (default; nothing to install).
    #[default]
    Sqlite,
    /// Redis Streams, shared by several instances.
    Redis,
    /// No durable queue: failed notifications are only logged.
    None,
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

/// The default SQLite outbox file: mesh-server's database (`data/mesh.sqlite3`).
pub const DEFAULT_OUTBOX_PATH: &str = "data/mesh.sqlite3";

/// `[outbox]`.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct OutboxSection {
    /// `sqlite` (default), `redis` or `none`.
    pub backend: OutboxBackend,
    /// SQLite file (default `data/mesh.sqlite3`: mesh-server's database, which
    /// holds its outbox; with a `[server] data_dir`, `{data_dir}/mesh.sqlite3`).
    /// See [`Config::sqlite_outbox_path`].
    pub path: PathBuf,
    /// Redis URL, e.g. `redis://127.0.0.1:6379/0` (password via `redis_password`).
    pub redis_url: Option<String>,
    /// Redis password, kept out of the URL and the logs.
    pub redis_password: Option<mesh_notify_core::Secret>,
    /// Prefix of every Redis key (default `mesh-notify`).
    pub redis_prefix: String,
}

impl Default for OutboxSection {
    fn default() -> Self {
        Self {
            backend: OutboxBackend::Sqlite,
            path: PathBuf::from(DEFAULT_OUTBOX_PATH),
            redis_url: None,
            redis_password: None,
            redis_prefix: "mesh-notify".into(),
        }
    }
}

/// The whole mesh-notify configuration.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// `development` (default) or `production`.
    #[serde(default)]
    pub profile: Profile,
    /// Default per-request timeout for every provider (default 5s).
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Built-in template language: `fr` (default) or `en`.
    #[serde(default)]
    pub language: Language,
    /// Overrides of individual templates.
    #[serde(default)]
    pub templates: TemplatesOverride,
    /// Chat bodies are cut to this many characters (default 100).
    #[serde(default = "default_chat_chars")]
    pub chat_body_max_chars: usize,
    /// Send bodies as markdown (default false: text/plain).
    #[serde(default)]
    pub markdown: bool,
    /// `text` (default: one line per event, coloured only on a terminal) or
    /// `json` (one JSON object per line, for log shippers).
    #[serde(default)]
    pub log_format: LogFormat,
    /// How long a call notification may still be delivered (default 60s).
    #[serde(default = "default_call_ttl", with = "humantime_serde")]
    pub call_ttl: Duration,
    /// Inline retry policy.
    #[serde(default)]
    pub retry: RetryConfig,
    /// Providers.
    #[serde(default)]
    pub providers: ProvidersConfig,
    /// Routes per kind.
    #[serde(default)]
    pub routes: RoutesConfig,
    /// Circuit breaker for every provider.
    #[serde(default)]
    pub breaker: BreakerSection,
    /// Rate limits per provider name.
    #[serde(default)]
    pub rate_limits: std::collections::BTreeMap<String, RateLimitSection>,
    /// Retry timing and workers for queued notifications.
    #[serde(default)]
    pub queue: QueueSection,
    /// The durable outbox.
    #[serde(default)]
    pub outbox: OutboxSection,
    /// The `[server]` table of an application that embeds mesh-notify (mesh-server).
    /// Not interpreted here: the application extracts and checks it itself
    /// (`figment.extract_inner("server")`).
    #[serde(default)]
    pub server: Option<figment::value::Dict>,
    /// The `[serve]` table of `mesh-notify serve` (the HTTP front door). Not
    /// interpreted here: the CLI extracts and checks it.
    #[serde(default)]
    pub serve: Option<figment::value::Dict>,
}

fn default_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_chat_chars() -> usize {
    100
}
fn default_call_ttl() -> Duration {
    Duration::from_secs(60)
}

/// Names of every provider mesh-notify knows, configured or not.
pub const KNOWN_PROVIDERS: &[&str] = &["gotify", "fcm", "apns", "smtp", "log"];

/// A configuration that cannot be used.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// figment could not read or extract it (the message names key and source).
    #[error("{0}")]
    Figment(Box<figment::Error>),
    /// The configuration file given does not exist or is unreadable.
    #[error("cannot read configuration file `{path}`: {reason}")]
    File {
        /// The path given.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// A value is present but wrong.
    #[error("invalid `{key}` (from {source_name}): {message}")]
    Invalid {
        /// The key, dotted (`providers.gotify.url`).
        key: String,
        /// Where it came from (file path or environment variable).
        source_name: String,
        /// What is wrong.
        message: String,
    },
    /// Routes do not match the providers.
    #[error("{error} (from {source_name})")]
    Routes {
        /// The routing error.
        error: BuildError,
        /// Where the route came from.
        source_name: String,
    },
}

impl From<figment::Error> for ConfigError {
    fn from(e: figment::Error) -> Self {
        ConfigError::Figment(Box::new(e))
    }
}

/// Environment variables taken verbatim as strings (no number parsing, so
/// `GOTIFY_TOKEN=0123` stays `"0123"`), each mapped to a key path.
struct PlainEnv {
    vars: Vec<(String, String)>,
    label: &'static str,
}

impl PlainEnv {
    fn seed_variables() -> Self {
        Self {
            vars: vec![
                ("GOTIFY_URL".into(), "providers.gotify.url".into()),
                ("GOTIFY_TOKEN".into(), "providers.gotify.token".into()),
            ],
            label: "environment variable",
        }
    }

    /// `MESH_NOTIFY_*` variables whose key ends in a secret-like name.
    fn prefixed_secrets() -> Self {
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

const PREFIX: &str = "MESH_NOTIFY_";

fn is_secret_key(env_key_without_prefix: &str) -> bool {
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

    /// The secret files the providers read (`token_file`, `service_account_file`,
    /// `key_file`, `password_file`): watched for rotation (see
    /// [`crate::SecretWatcher`]).
    pub fn secret_files(&self) -> Vec<PathBuf> {
        let mut files = Vec::new();
        #[cfg(feature = "gotify")]
        if let Some(f) = self
            .providers
            .gotify
            .as_ref()
            .and_then(|g| g.token_file.clone())
        {
            files.push(f);
        }
        #[cfg(feature = "fcm")]
        if let Some(c) = &self.providers.fcm {
            files.push(c.service_account_file.clone());
        }
        #[cfg(feature = "apns")]
        if let Some(c) = &self.providers.apns {
            files.push(c.key_file.clone());
        }
        #[cfg(feature = "smtp")]
        if let Some(f) = self
            .providers
            .smtp
            .as_ref()
            .and_then(|c| c.password_file.clone())
        {
            files.push(f);
        }
        files
    }

    /// Loads and validates the configuration.
    pub fn load(path: Option<&Path>) -> Result<(Self, Figment), ConfigError> {
        let figment = Self::figment(path)?;
        let config = Self::from_figment(&figment)?;
        Ok((config, figment))
    }

    /// Extracts and validates from a figment.
    pub fn from_figment(figment: &Figment) -> Result<Self, ConfigError> {
        let config: Config = figment.extract()?;
        config.validate(figment)?;
        Ok(config)
    }

    fn source_of(figment: &Figment, key: &str) -> String {
        match figment.find_metadata(key) {
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

    fn validate(&self, figment: &Figment) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_string(),
            source_name: Self::source_of(figment, key),
            message,
        };
        if self.timeout.is_zero() {
            return Err(invalid("timeout", "must be greater than zero".into()));
        }
        if self.chat_body_max_chars == 0 {
            return Err(invalid("chat_body_max_chars", "must be at least 1".into()));
        }
        if self.retry.attempts_per_provider == 0 {
            return Err(invalid(
                "retry.attempts_per_provider",
                "must be at least 1".into(),
            ));
        }
        if let Err(e) = self.templates().validate() {
            return Err(invalid(&format!("templates.{}", e.template), e.to_string()));
        }
        #[cfg(feature = "gotify")]
        if let Some(g) = &self.providers.gotify {
            if !g.url.trim().is_empty() {
                check_url(
                    self.profile,
                    "providers.gotify",
                    &g.url,
                    g.allow_insecure_http,
                )
                .map_err(|m| invalid("providers.gotify.url", m))?;
            }
        }
        for (name, rl) in &self.rate_limits {
            let key = format!("rate_limits.{name}");
            if !KNOWN_PROVIDERS.contains(&name.as_str()) {
                return Err(invalid(&key, format!("unknown provider `{name}`")));
            }
            if !(rl.per_second.is_finite() && rl.per_second > 0.0) {
                return Err(invalid(
                    &format!("{key}.per_second"),
                    "must be a positive number".into(),
                ));
            }
        }
        if self.queue.workers == 0 || self.queue.batch == 0 {
            return Err(invalid(
                "queue",
                "workers and batch must be at least 1".into(),
            ));
        }
        if self.queue.initial_backoff.is_zero()
            || self.queue.max_backoff < self.queue.initial_backoff
        {
            return Err(invalid(
                "queue.max_backoff",
                "initial_backoff must be > 0 and max_backoff >= initial_backoff".into(),
            ));
        }
        if self.breaker.probe_interval.is_zero() {
            return Err(invalid(
                "breaker.probe_interval",
                "must be greater than zero".into(),
            ));
        }
        if self.breaker.probe_max_interval < self.breaker.probe_interval {
            return Err(invalid(
                "breaker.probe_interval",
                format!(
                    "must be at most breaker.probe_max_interval ({:?}) (`cool_down` is its former name)",
                    self.breaker.probe_max_interval
                ),
            ));
        }
        if self.breaker.probe_max_interval > Duration::from_secs(24 * 3600) {
            return Err(invalid(
                "breaker.probe_max_interval",
                "must be at most 24h".into(),
            ));
        }
        if self.queue.lease < Duration::from_millis(100) {
            return Err(invalid(
                "queue.lease",
                "must be at least 100ms (it is renewed while a delivery is in flight)".into(),
            ));
        }
        if self.outbox.backend == OutboxBackend::Redis && self.outbox.redis_url.is_none() {
            return Err(invalid(
                "outbox.redis_url",
                "required when outbox.backend = \"redis\"".into(),
            ));
        }
        #[cfg(feature = "fcm")]
        if let Some(c) = &self.providers.fcm {
            for (key, url) in c.urls() {
                check_url(self.profile, "providers.fcm", &url, c.allow_insecure_http)
                    .map_err(|m| invalid(key, m))?;
            }
        }
        #[cfg(feature = "apns")]
        if let Some(c) = &self.providers.apns {
            let (key, url) = c.url_to_check();
            check_url(self.profile, "providers.apns", &url, c.allow_insecure_http)
                .map_err(|m| invalid(key, m))?;
        }
        #[cfg(feature = "smtp")]
        if let Some(c) = &self.providers.smtp {
            if self.profile == Profile::Production && c.is_plaintext() && !c.allow_insecure {
                return Err(invalid(
                    "providers.smtp.tls",
                    "tls = \"none\" sends mail and credentials in clear text; refused in the production profile (use starttls or tls, or set providers.smtp.allow_insecure = true)".into(),
                ));
            }
        }
        for kind in Kind::ALL {
            for name in self
                .routes
                .get(kind)
                .iter()
                .flat_map(|e| crate::router::group_members(e))
            {
                if !KNOWN_PROVIDERS.contains(&name) {
                    let key = format!("routes.{kind}");
                    return Err(invalid(
                        &key,
                        format!(
                            "unknown provider `{name}` (known: {})",
                            KNOWN_PROVIDERS.join(", ")
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// The effective templates (language + overrides).
    pub fn templates(&self) -> Templates {
        let mut t = Templates::for_language(self.language);
        let o = &self.templates;
        let set = |slot: &mut String, v: &Option<String>| {
            if let Some(v) = v {
                slot.clone_from(v);
            }
        };
        set(&mut t.chat_title, &o.chat_title);
        set(&mut t.chat_body, &o.chat_body);
        set(&mut t.call_title, &o.call_title);
        set(&mut t.call_body, &o.call_body);
        set(&mut t.file_title, &o.file_title);
        set(&mut t.file_body, &o.file_body);
        t
    }

    /// A composer with the configured templates and limits.
    pub fn composer(&self) -> Composer {
        Composer {
            templates: self.templates(),
            chat_body_max_chars: self.chat_body_max_chars,
            markdown: self.markdown,
            call_ttl: self.call_ttl,
        }
    }

    /// The inline retry policy.
    pub fn retry_policy(&self) -> RetryPolicy {
        RetryPolicy {
            attempts_per_provider: self.retry.attempts_per_provider,
            initial_delay: self.retry.initial_delay,
            max_inline_wait: self.retry.max_inline_wait,
            // A little above the provider timeout, so the provider's own timeout
            // (with its clearer message) fires first.
            send_timeout: self.timeout + Duration::from_millis(500),
        }
    }

    /// The queue policy (`[queue]`, with calls expiring after `call_ttl`).
    pub fn queue_policy(&self) -> QueuePolicy {
        let q = &self.queue;
        QueuePolicy {
            initial_backoff: q.initial_backoff,
            max_backoff: q.max_backoff,
            max_age: std::collections::BTreeMap::from([
                (Kind::Chat, q.max_age.chat),
                (Kind::File, q.max_age.file),
                (Kind::System, q.max_age.system),
                (Kind::Call, self.call_ttl),
            ]),
            workers: q.workers,
            batch: q.batch,
            concurrency: q.concurrency,
            lease: q.lease,
            poll_interval: q.poll_interval,
            shutdown_grace: q.shutdown_grace,
        }
    }

    /// A dispatcher builder with every configured provider and the routes. Providers
    /// that are not configured are disabled with one warning each.
    pub fn dispatcher_builder(&self, figment: &Figment) -> Result<DispatcherBuilder, ConfigError> {
        let mut builder = Dispatcher::builder()
            .policy(self.retry_policy())
            .queue_policy(self.queue_policy())
            .breaker(BreakerConfig {
                failure_threshold: self.breaker.failure_threshold,
                probe_interval: self.breaker.probe_interval,
                probe_max_interval: self.breaker.probe_max_interval,
            });
        for (name, rl) in &self.rate_limits {
            let burst = rl
                .burst
                .unwrap_or_else(|| rl.per_second.ceil().clamp(1.0, f64::from(u32::MAX)) as u32);
            builder = builder.rate_limit(
                name.clone(),
                RateLimitConfig {
                    per_second: rl.per_second,
                    burst,
                },
            );
        }
        let mut enabled: Vec<&str> = Vec::new();

        #[cfg(feature = "gotify")]
        match self
            .providers
            .gotify
            .as_ref()
            .filter(|g| !g.url.trim().is_empty())
        {
            Some(g) => {
                let notifier = g.build(self.timeout).map_err(|e| ConfigError::Invalid {
                    key: "providers.gotify".into(),
                    source_name: Self::source_of(figment, "providers.gotify.url"),
                    message: e.to_string(),
                })?;
                tracing::info!("Gotify configured: {}", notifier.url());
                tracing::info!("Gotify enabled: true");
                if !notifier.has_default_token() {
                    tracing::warn!(
                        "Gotify has no default token: only recipients with their own Gotify token can be reached"
                    );
                }
                builder = builder.notifier(Arc::new(notifier));
                enabled.push("gotify");
            }
            None => {
                tracing::warn!("Gotify not configured - notifications disabled");
            }
        }

        #[cfg(feature = "fcm")]
        if let Some(c) = &self.providers.fcm {
            let provider_err = |key: &str, message: String| ConfigError::Invalid {
                key: key.to_string(),
                source_name: Self::source_of(figment, key),
                message,
            };
            let notifier = c
                .build(self.timeout)
                .map_err(|e| provider_err("providers.fcm.service_account_file", e.to_string()))?;
            for (key, url) in notifier.urls() {
                check_url(self.profile, "providers.fcm", &url, c.allow_insecure_http)
                    .map_err(|m| provider_err(key, m))?;
            }
            tracing::info!("FCM configured: project {}", notifier.project_id());
            builder = builder.notifier(Arc::new(notifier));
            enabled.push("fcm");
        }

        #[cfg(feature = "apns")]
        if let Some(c) = &self.providers.apns {
            let key = "providers.apns.key_file";
            let notifier = c.build(self.timeout).map_err(|e| ConfigError::Invalid {
                key: key.to_string(),
                source_name: Self::source_of(figment, key),
                message: e.to_string(),
            })?;
            tracing::info!(
                "APNs configured: {} (topic {})",
                notifier.base_url(),
                notifier.topic()
            );
            builder = builder.notifier(Arc::new(notifier));
            enabled.push("apns");
        }

        #[cfg(feature = "smtp")]
        if let Some(c) = &self.providers.smtp {
            let key = "providers.smtp";
            let notifier = c.build(self.timeout).map_err(|e| ConfigError::Invalid {
                key: key.to_string(),
                source_name: Self::source_of(figment, "providers.smtp.host"),
                message: e.to_string(),
            })?;
            tracing::info!("SMTP configured: {}", notifier.describe());
            builder = builder.notifier(Arc::new(notifier));
            enabled.push("smtp");
        }

        if self.providers.log.enabled {
            if self.providers.log.terminal {
                tracing::warn!(
                    "providers.log.terminal = true: a notification written to the log counts as delivered, so one that arrives while every real provider is down is never sent to them"
                );
                builder = builder.notifier(Arc::new(LogNotifier::terminal()));
            } else {
                builder = builder.notifier(Arc::new(LogNotifier::new()));
            }
            enabled.push("log");
        }
        for name in KNOWN_PROVIDERS {
            if enabled.contains(name) {
                continue;
            }
            builder = builder.disabled(*name);
            let used = Kind::ALL.iter().any(|k| {
                self.routes
                    .get(*k)
                    .iter()
                    .flat_map(|e| crate::router::group_members(e))
                    .any(|n| n == *name)
            });
            if used && *name != "gotify" {
                tracing::warn!("{name} not configured - skipped in routes");
            }
        }
        for kind in Kind::ALL {
            builder = builder.route(kind, self.routes.get(kind).iter().cloned());
        }
        Ok(builder)
    }

    /// Opens the configured outbox (`[outbox]`); `None` for `backend = "none"`.
    /// A file or server that cannot be used is an error naming it.
    pub async fn open_outbox(
        &self,
        figment: &Figment,
    ) -> Result<Option<Arc<dyn mesh_notify_core::Outbox>>, ConfigError> {
        self.open_outbox_with(figment, true).await
    }

    /// The SQLite outbox file every tool uses for this configuration, and why:
    /// `outbox.path` when set; otherwise mesh-server's database,
    /// `{server.data_dir}/mesh.sqlite3` (default `data/mesh.sqlite3`), so
    /// `mesh-notify outbox …` and `mesh-notify run` find mesh-server's queue when
    /// given the same configuration.
    pub fn sqlite_outbox_path(&self) -> (PathBuf, String) {
        if self.outbox.path != std::path::Path::new(DEFAULT_OUTBOX_PATH) {
            return (self.outbox.path.clone(), "outbox.path".into());
        }
        let data_dir = self
            .server
            .as_ref()
            .and_then(|s| s.get("data_dir"))
            .and_then(|v| v.as_str())
            .map(PathBuf::from);
        match data_dir {
            Some(dir) => (
                dir.join("mesh.sqlite3"),
                "mesh-server's database: server.data_dir/mesh.sqlite3".into(),
            ),
            None => (
                PathBuf::from(DEFAULT_OUTBOX_PATH),
                "the default: mesh-server's database in ./data".into(),
            ),
        }
    }

    /// Like [`open_outbox`](Self::open_outbox); with `create = false` a missing
    /// SQLite file is an error naming the path (inspecting never creates one).
    pub async fn open_outbox_with(
        &self,
        figment: &Figment,
        create: bool,
    ) -> Result<Option<Arc<dyn mesh_notify_core::Outbox>>, ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_string(),
            source_name: Self::source_of(figment, key),
            message,
        };
        match self.outbox.backend {
            OutboxBackend::None => {
                tracing::warn!("outbox disabled (outbox.backend = \"none\"): undeliverable notifications are lost");
                Ok(None)
            }
            #[cfg(feature = "sqlite")]
            OutboxBackend::Sqlite => {
                let (path, why) = self.sqlite_outbox_path();
                if !create && !path.exists() {
                    return Err(invalid(
                        "outbox.path",
                        format!(
                            "no outbox at `{}` ({why}); nothing was created. Point at the file your mesh-server or `mesh-notify run` uses: `--config` with its configuration, `outbox.path`, or MESH_NOTIFY_OUTBOX__PATH",
                            path.display()
                        ),
                    ));
                }
                if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                    std::fs::create_dir_all(dir).map_err(|e| {
                        invalid(
                            "outbox.path",
                            format!("cannot create directory `{}`: {e}", dir.display()),
                        )
                    })?;
                }
                let outbox = tokio::task::spawn_blocking(move || {
                    mesh_notify_outbox_sqlite::SqliteOutbox::open(path)
                })
                .await
                .map_err(|e| invalid("outbox.path", e.to_string()))?
                .map_err(|e| invalid("outbox.path", e.to_string()))?;
                tracing::info!("outbox: sqlite {}", outbox.path().display());
                Ok(Some(Arc::new(outbox)))
            }
            #[cfg(not(feature = "sqlite"))]
            OutboxBackend::Sqlite => Err(invalid(
                "outbox.backend",
                "this build has no `sqlite` feature".into(),
            )),
            #[cfg(feature = "redis")]
            OutboxBackend::Redis => {
                let raw = self.outbox.redis_url.clone().unwrap_or_default();
                let mut url = url::Url::parse(&raw)
                    .map_err(|e| invalid("outbox.redis_url", format!("not a URL: {e}")))?;
                if let Some(pw) = &self.outbox.redis_password {
                    url.set_password(Some(pw.expose())).map_err(|()| {
                        invalid("outbox.redis_url", "cannot carry a password".into())
                    })?;
                }
                let outbox = mesh_notify_outbox_redis::RedisOutbox::connect(
                    url.as_str(),
                    &self.outbox.redis_prefix,
                )
                .await
                .map_err(|e| invalid("outbox.redis_url", e.to_string()))?;
                tracing::info!(
                    "outbox: redis {} (prefix {})",
                    outbox.target(),
                    self.outbox.redis_prefix
                );
                if let mesh_notify_core::Health::Degraded(why) =
                    mesh_notify_core::Outbox::health(&outbox).await
                {
                    tracing::warn!("outbox: {why}");
                }
                Ok(Some(Arc::new(outbox)))
            }
            #[cfg(not(feature = "redis"))]
            OutboxBackend::Redis => Err(invalid(
                "outbox.backend",
                "this build has no `redis` feature".into(),
            )),
        }
    }

    /// Builds the dispatcher, with the configured outbox.
    pub async fn build_dispatcher(&self, figment: &Figment) -> Result<Dispatcher, ConfigError> {
        let mut builder = self.dispatcher_builder(figment)?;
        if let Some(outbox) = self.open_outbox(figment).await? {
            builder = builder.outbox(outbox);
        }
        builder.build().map_err(|error| ConfigError::Routes {
            source_name: match &error {
                BuildError::UnknownProvider { kind, .. } => {
                    Self::source_of(figment, &format!("routes.{kind}"))
                }
                _ => "configuration".into(),
            },
            error,
        })
    }
}

/// Checks a provider URL against the profile's transport rules.
pub(crate) fn check_url(
    profile: Profile,
    provider: &str,
    url: &str,
    allow_insecure_http: bool,
) -> Result<(), String> {
    let parsed = url::Url::parse(url.trim()).map_err(|e| format!("`{url}` is not a URL: {e}"))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if profile == Profile::Development || allow_insecure_http => Ok(()),
        "http" => Err(format!(
            "plain http:// is refused in the production profile; use https:// or set `{provider}.allow_insecure_http = true`"
        )),
        other => Err(format!("scheme `{other}` is not supported (use https://)")),
    }
}
