//! The configuration's section types, each with its defaults, and what is
//! derived from them (templates, composer, policies). No I/O here.

use std::path::PathBuf;
use std::time::Duration;

use mesh_notify_core::{Composer, Kind, Language, Templates};
use serde::Deserialize;

use super::providers::ProvidersConfig;
use crate::{BreakerConfig, QueuePolicy, RetryPolicy};
pub use mesh_notify_provider_kit::Profile;

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
    pub chat_summary_title: Option<String>,
    pub chat_summary_title_many: Option<String>,
    pub file_summary_title: Option<String>,
    pub file_summary_title_many: Option<String>,
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

/// `[breaker]`: the circuit breaker's own settings type.
pub type BreakerSection = BreakerConfig;

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

impl Config {
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
        set(&mut t.chat_summary_title, &o.chat_summary_title);
        set(&mut t.chat_summary_title_many, &o.chat_summary_title_many);
        set(&mut t.file_summary_title, &o.file_summary_title);
        set(&mut t.file_summary_title_many, &o.file_summary_title_many);
        t
    }

    /// A composer for a recipient who reads `language`: the configured one when
    /// it is the configured language (overrides included), else that language's
    /// built-in templates, with the configured limits either way.
    pub fn composer_for(&self, language: Language) -> Composer {
        let mut c = self.composer();
        if language != self.language {
            c.templates = Templates::for_language(language);
        }
        c
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
}
