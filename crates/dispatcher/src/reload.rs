//! Secret rotation without a restart: on `SIGHUP`, and whenever one of the
//! providers' secret files changes (a Kubernetes or Docker secret update replaces
//! the file), the configuration is loaded again and the providers rebuilt from it
//! replace the running ones. Sends that start from then on use the new secret;
//! breakers, routes and the queue are untouched. A reload that fails (a missing or
//! unreadable file, a bad key) is reported and the running providers are kept; a
//! new token that the provider refuses makes it `misconfigured`: its notifications
//! are parked (queued, never dead-lettered) until a working secret arrives.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use figment::Figment;
use tokio::task::JoinHandle;

use crate::{Config, ConfigError, Dispatcher};

/// How the configuration is loaded again (the same way it was loaded at start).
pub type ConfigLoader = Box<dyn Fn() -> Result<(Config, Figment), ConfigError> + Send + Sync>;

/// Watches secret files and `SIGHUP`; see the module documentation.
pub struct SecretWatcher {
    task: JoinHandle<()>,
}

impl SecretWatcher {
    /// Starts watching for `dispatcher`: the files of `config`
    /// ([`Config::secret_files`]) are checked every `poll`; `load` re-reads the
    /// configuration on a change or on `SIGHUP`.
    pub fn spawn(
        dispatcher: Arc<Dispatcher>,
        config: &Config,
        load: ConfigLoader,
        poll: Duration,
    ) -> Self {
        let files = config.secret_files();
        let task = tokio::spawn(watch(dispatcher, files, load, poll));
        Self { task }
    }

    /// Stops watching.
    pub fn stop(self) {
        self.task.abort();
    }
}

impl Drop for SecretWatcher {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// What the files hold now (a missing file is `None`).
fn snapshot(files: &[PathBuf]) -> Vec<Option<Vec<u8>>> {
    files.iter().map(|f| std::fs::read(f).ok()).collect()
}

async fn watch(d: Arc<Dispatcher>, mut files: Vec<PathBuf>, load: ConfigLoader, poll: Duration) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    let mut seen = snapshot(&files);
    loop {
        #[cfg(unix)]
        let by_signal = match hup.as_mut() {
            Some(h) => tokio::select! {
                _ = h.recv() => true,
                _ = tokio::time::sleep(poll) => false,
            },
            None => {
                tokio::time::sleep(poll).await;
                false
            }
        };
        #[cfg(not(unix))]
        let by_signal = {
            tokio::time::sleep(poll).await;
            false
        };
        let now = snapshot(&files);
        if !by_signal && now == seen {
            continue;
        }
        let why = if by_signal {
            "SIGHUP"
        } else {
            "a secret file changed"
        };
        match reload(&d, &load) {
            Ok((names, new_files)) => {
                tracing::info!(
                    "secrets reloaded ({why}): {} now use the new secret",
                    if names.is_empty() {
                        "no provider".to_string()
                    } else {
                        names.join(", ")
                    }
                );
                files = new_files;
                seen = snapshot(&files);
            }
            Err(e) => {
                tracing::error!(
                    "secret reload ({why}) failed: {e}; the running providers keep their previous secret"
                );
                // Do not retry in a loop on the same broken content.
                seen = now;
            }
        }
    }
}

fn reload(d: &Dispatcher, load: &ConfigLoader) -> Result<(Vec<String>, Vec<PathBuf>), ConfigError> {
    let (config, figment) = load()?;
    let providers = config.dispatcher_builder(&figment)?.into_providers();
    let mut names: Vec<String> = providers.iter().map(|p| p.name().to_owned()).collect();
    let ignored = d.router().replace_providers(providers);
    names.retain(|n| !ignored.contains(n));
    if !ignored.is_empty() {
        tracing::warn!(
            "reload: {} newly configured, not started (a provider is added or removed with a restart)",
            ignored.join(", ")
        );
    }
    Ok((names, config.secret_files()))
}
