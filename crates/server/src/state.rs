//! Shared server state.

use std::ops::Deref;
use std::sync::Arc;

use mesh_notify::Dispatcher;
use mesh_notify_core::Language;
use metrics_exporter_prometheus::PrometheusHandle;
use tokio::sync::watch;

use crate::admin::HealthCache;
use crate::config::ServerSection;
use crate::hashing::HashingPool;
use crate::presence::Presence;
use crate::store::Store;
use crate::throttle::Throttles;

/// How notifications reach the outbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NotifyPath {
    /// The SQLite outbox lives in the chat database: notifications are written in
    /// the same transaction as the message, then a worker is woken.
    SameTransaction,
    /// A shared outbox (Redis): each notification is written to `push_handoff` in
    /// the message's transaction, submitted after the commit, and its row deleted
    /// once the outbox has it. Rows left by a crash are submitted again at the next
    /// sweep (the Redis outbox ignores an id it already holds).
    Handoff,
    /// No outbox (`outbox.backend = "none"`): submitted after the commit, not
    /// durable.
    Submit,
}

pub(crate) struct Shared {
    pub config: ServerSection,
    pub store: Store,
    pub presence: Presence,
    /// Presence and events shared with other instances (PostgreSQL + Redis).
    pub cluster: crate::cluster::Shared,
    pub dispatcher: Arc<Dispatcher>,
    /// Composers per recipient language, and the held-summary flusher.
    pub digests: crate::digest::Digests,
    /// The deferred fan-out of chat and file pushes.
    pub fanout: crate::fanout::Fanout,
    /// Language of the server's own notification texts (invitations).
    pub language: Language,
    pub notify_path: NotifyPath,
    pub shutdown: watch::Receiver<bool>,
    pub metrics: Option<PrometheusHandle>,
    /// Whether `POST /api/register` is open (`server.registration` and the profile).
    pub registration_open: bool,
    /// The argon2 threads and their bounded queue.
    pub hashing: HashingPool,
    /// Failed-login and registration limits.
    pub throttles: Throttles,
    /// Cached health checks.
    pub health: HealthCache,
}

/// Cheap-to-clone handle on [`Shared`].
#[derive(Clone)]
pub(crate) struct AppState(pub Arc<Shared>);

impl Deref for AppState {
    type Target = Shared;
    fn deref(&self) -> &Shared {
        &self.0
    }
}
