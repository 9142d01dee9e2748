//! Validation of a loaded configuration: every error names the key and its
//! source. Providers validate their own sections (see the registry).

use std::time::Duration;

use figment::Figment;
use mesh_notify_core::Kind;
use mesh_notify_provider_kit::ProviderContext;

use super::providers::known_providers;
use super::{Config, ConfigError, OutboxBackend};

impl Config {
    /// The context a provider is validated and built with.
    pub(super) fn provider_context(&self, name: &'static str) -> ProviderContext {
        ProviderContext::new(self.profile, self.timeout, name)
    }

    pub(super) fn validate(&self, figment: &Figment) -> Result<(), ConfigError> {
        let invalid = |key: &str, message: String| ConfigError::Invalid {
            key: key.to_string(),
            source_name: Self::source_of(figment, key),
            message,
        };
        let known = known_providers();
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
        for (name, rl) in &self.rate_limits {
            let key = format!("rate_limits.{name}");
            if !known.contains(&name.as_str()) {
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
        for section in self.providers.sections().filter(|s| s.is_configured()) {
            section
                .validate(&self.provider_context(section.name()))
                .map_err(|issue| Self::issue(figment, issue))?;
        }
        for kind in Kind::ALL {
            for name in self
                .routes
                .get(kind)
                .iter()
                .flat_map(|e| crate::router::group_members(e))
            {
                if !known.contains(&name) {
                    let key = format!("routes.{kind}");
                    return Err(invalid(
                        &key,
                        format!("unknown provider `{name}` (known: {})", known.join(", ")),
                    ));
                }
            }
        }
        Ok(())
    }
}
