//! Wiring: the dispatcher, its providers (walking the registry) and the outbox,
//! built from a validated configuration.

use std::path::PathBuf;
use std::sync::Arc;

use figment::Figment;
use mesh_notify_core::Kind;

use super::providers::{known_providers, registration, REGISTRY};
use super::{Config, ConfigError, OutboxBackend, DEFAULT_OUTBOX_PATH};
use crate::{BuildError, Dispatcher, DispatcherBuilder, LogNotifier, RateLimitConfig};

impl Config {
    /// The secret files the providers read (`token_file`, `service_account_file`,
    /// `key_file`, `password_file`): watched for rotation (see
    /// [`crate::SecretWatcher`]).
    pub fn secret_files(&self) -> Vec<PathBuf> {
        self.providers.secret_files()
    }

    /// A dispatcher builder with every configured provider and the routes. Providers
    /// that are not configured are disabled with one warning each.
    pub fn dispatcher_builder(&self, figment: &Figment) -> Result<DispatcherBuilder, ConfigError> {
        let mut builder = Dispatcher::builder()
            .policy(self.retry_policy())
            .queue_policy(self.queue_policy())
            .breaker(self.breaker);
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

        let resolved;
        let providers = if self.providers.is_pending() {
            // Deserialised without `from_figment`: read the sections now.
            let mut p = self.providers.clone();
            p.resolve(figment)?;
            resolved = p;
            &resolved
        } else {
            &self.providers
        };
        for reg in REGISTRY {
            match providers.section(reg.name).filter(|s| s.is_configured()) {
                Some(section) => {
                    let notifier = section
                        .build(&self.provider_context(reg.name))
                        .map_err(|issue| Self::issue(figment, issue))?;
                    builder = builder.notifier(notifier);
                    enabled.push(reg.name);
                }
                None => {
                    if let Some(notice) = reg.not_configured {
                        tracing::warn!("{notice}");
                    }
                }
            }
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
        for name in &known_providers() {
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
            let announced = registration(name).is_some_and(|r| r.not_configured.is_some());
            if used && !announced {
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
