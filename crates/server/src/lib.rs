//! # mesh-server
//!
//! The Mesh chat server: accounts, rooms, invitations, presence and WebSocket events
//! (chat, WebRTC call signalling, file shares). A room member who is *absent* (not in
//! the room with any connection) gets a push notification through the
//! [`mesh_notify`] dispatcher; a member who is present gets the event live and no
//! push. The sender is never notified.
//!
//! Storage is one SQLite file, `{server.data_dir}/mesh.sqlite3`, holding the chat
//! data *and* the notification outbox: a chat message and its notifications commit
//! in one transaction, and the delivery workers send them afterwards, so the
//! WebSocket handler never waits on a provider.
//!
//! ```no_run
//! use mesh_notify::Config;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let (config, figment) = Config::load(Some("config/default.toml".as_ref()))?;
//! let server = mesh_server::start(config, &figment, None).await?;
//! println!("listening on http://{}", server.addr());
//! server.shutdown().await?;
//! # Ok(()) }
//! ```

mod accounts;
mod address_book;
mod admin;
mod api;
mod auth;
mod cluster;
mod config;
mod db;
mod digest;
mod error;
mod fanout;
mod hashing;
mod invites;
mod migrations;
mod notify;
mod outbox;
mod prefs;
mod presence;
mod serve;
mod state;
mod store;
mod throttle;
mod verify;
mod web;
mod ws;

use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};

use mesh_notify::{Config, DeadAddress, Dispatcher, Figment, OutboxBackend};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

pub use config::{Registration, ServerSection, TlsSection};
pub use error::{AppError, ServerError};
pub(crate) use mesh_notify_outbox_sqlite::rusqlite;
pub use store::{Store, User};

use presence::Presence;
use state::{AppState, NotifyPath, Shared};

/// The process-wide Prometheus recorder (installed once; `None` if another
/// recorder was installed first).
fn prometheus() -> Option<PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE
        .get_or_init(|| {
            let recorder = PrometheusBuilder::new().build_recorder();
            let handle = recorder.handle();
            match metrics::set_global_recorder(recorder) {
                Ok(()) => Some(handle),
                Err(_) => {
                    tracing::warn!("a metrics recorder is already installed: /metrics is disabled");
                    None
                }
            }
        })
        .clone()
}

/// A running server. Stop it with [`ServerHandle::shutdown`].
pub struct ServerHandle {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    stop: watch::Sender<bool>,
    task: JoinHandle<Result<(), ServerError>>,
    dispatcher: Arc<Dispatcher>,
    store: Store,
    instance: Option<String>,
}

impl std::fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addr", &self.addr)
            .field("admin_addr", &self.admin_addr)
            .finish()
    }
}

impl ServerHandle {
    /// The address it listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin listener's address (detailed `/health`, `/metrics`), unless
    /// `server.admin_bind = "none"`.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// The dispatcher (providers, outbox) the server uses.
    pub fn dispatcher(&self) -> &Arc<Dispatcher> {
        &self.dispatcher
    }

    /// The chat database.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// This instance's id among several (PostgreSQL + Redis), random per start.
    pub fn instance_id(&self) -> Option<&str> {
        self.instance.as_deref()
    }

    /// Chat and file pushes committed with their message but not yet expanded into
    /// the outbox (one per absent member; see `docs/decisions.md`, deferred fan-out).
    /// Together with the outbox's `pending`, what is still to be delivered.
    pub async fn fanout_backlog(&self) -> Result<u64, String> {
        self.store
            .call(|c| Ok(fanout::backlog(c)?))
            .await
            .map_err(|e| e.message)
    }

    /// Closes every WebSocket (1001), stops accepting requests, waits for the HTTP
    /// connections and then for the delivery workers to finish their batch.
    pub async fn shutdown(self) -> Result<(), ServerError> {
        let _ = self.stop.send(true);
        self.wait().await
    }

    /// Waits until the server stops (after [`ServerHandle::shutdown`] or an error).
    pub async fn wait(self) -> Result<(), ServerError> {
        match self.task.await {
            Ok(r) => r,
            Err(e) => Err(ServerError::Serve(std::io::Error::other(e.to_string()))),
        }
    }

    /// A sender that stops the server when `true` is sent (for signal handlers).
    pub fn stopper(&self) -> watch::Sender<bool> {
        self.stop.clone()
    }
}

/// Creates an account in the server's database (`{server.data_dir}/mesh.sqlite3`,
/// created if missing), with the checks of `POST /api/register`: the way to add
/// users when `server.registration = "closed"` (`mesh-server user add`). Blocking
/// (argon2 and SQLite): call it from a plain thread or the blocking pool.
pub fn add_user(
    figment: &Figment,
    username: &str,
    password: &str,
    display_name: Option<&str>,
) -> Result<store::User, ServerError> {
    let section = ServerSection::from_figment(figment)?;
    let account_err = |e: AppError| ServerError::Account {
        field: e.field.clone(),
        message: e.message,
    };
    let new = accounts::NewUser::check(username, password, display_name).map_err(account_err)?;
    if section.database == config::Database::Postgres {
        let pg = section
            .postgres_config()
            .ok_or_else(|| ServerError::Invalid {
                key: "server.database_url".into(),
                source_name: "configuration".into(),
                message: "is required with database = \"postgres\"".into(),
            })?;
        let hash = auth::hash_password(password).map_err(account_err)?;
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .map_err(|e| ServerError::Database {
                reason: format!("cannot start a runtime: {e}"),
            })?;
        return rt.block_on(async move {
            let store = Store::connect_postgres(&pg)
                .await
                .map_err(|reason| ServerError::Database { reason })?;
            store
                .call(move |conn| accounts::insert_user(conn, new, &hash))
                .await
                .map_err(account_err)
        });
    }
    create_data_dir(&section.data_dir)?;
    let db_path = section.database_path();
    let store = Store::open(&db_path).map_err(|reason| ServerError::Storage {
        path: db_path.clone(),
        reason,
    })?;
    let hash = auth::hash_password(password).map_err(account_err)?;
    store
        .call_sync(|conn| accounts::insert_user(conn, new, &hash))
        .map_err(account_err)?
        .map_err(account_err)
}

/// Creates the data directory (readable by the owner only, on Unix).
fn create_data_dir(dir: &std::path::Path) -> Result<(), ServerError> {
    let err = |e: std::io::Error| ServerError::Storage {
        path: dir.to_path_buf(),
        reason: e.to_string(),
    };
    let mut builder = std::fs::DirBuilder::new();
    builder.recursive(true);
    #[cfg(unix)]
    std::os::unix::fs::DirBuilderExt::mode(&mut builder, 0o700);
    builder.create(dir).map_err(err)
}

/// Starts the server: opens the database in `server.data_dir`, builds the
/// dispatcher from `config`, starts the delivery workers and serves on `listener`
/// (or binds `server.bind`).
pub async fn start(
    config: Config,
    figment: &Figment,
    listener: Option<TcpListener>,
) -> Result<ServerHandle, ServerError> {
    let section = ServerSection::from_figment(figment)?;
    let has_tls = section.tls.is_some();
    let tls = match &section.tls {
        Some(t) => Some(serve::tls_acceptor(t)?),
        None => None,
    };
    create_data_dir(&section.data_dir)?;
    let db_path = section.database_path();
    let storage_err = |reason: String| ServerError::Storage {
        path: db_path.clone(),
        reason,
    };
    let store = match section.database {
        config::Database::Sqlite => {
            let path = db_path.clone();
            tokio::task::spawn_blocking(move || Store::open(&path))
                .await
                .map_err(|e| storage_err(e.to_string()))?
                .map_err(|e| storage_err(e.to_string()))?
        }
        config::Database::Postgres => {
            if config.outbox.backend == OutboxBackend::Sqlite {
                return Err(ServerError::Invalid {
                    key: "outbox.backend".into(),
                    source_name: "with server.database = \"postgres\"".into(),
                    message: "must be \"redis\": the instances sharing the PostgreSQL database share one outbox (the SQLite outbox is one machine's file)".into(),
                });
            }
            section
                .check_postgres_transport(config.profile)
                .map_err(|message| ServerError::Invalid {
                    key: "server.database_url".into(),
                    source_name: "the production profile".into(),
                    message,
                })?;
            let pg = section
                .postgres_config()
                .ok_or_else(|| ServerError::Invalid {
                    key: "server.database_url".into(),
                    source_name: "configuration".into(),
                    message: "is required with database = \"postgres\"".into(),
                })?;
            let store = Store::connect_postgres(&pg)
                .await
                .map_err(|reason| ServerError::Database { reason })?;
            tracing::info!("chat data: PostgreSQL (schema migrated)");
            store
        }
    };

    let (outbox, notify_path) = match config.outbox.backend {
        OutboxBackend::Sqlite => {
            store
                .call_sync(|c| match c.as_sqlite() {
                    Some(c) => outbox::install_schema(c),
                    None => Err("not a SQLite database".into()),
                })
                .map_err(|e| storage_err(format!("outbox schema: {}", e.message)))?
                .map_err(|e| storage_err(format!("outbox schema: {e}")))?;
            let outbox = outbox::on_store(&store);
            tracing::info!(path = %db_path.display(), "outbox: sqlite, in the chat database (same transaction as messages; outbox.path is not used by mesh-server)");
            (outbox, NotifyPath::SameTransaction)
        }
        OutboxBackend::None => {
            tracing::warn!("outbox.backend = \"none\": notifications are not durable");
            (None, NotifyPath::Submit)
        }
        OutboxBackend::Redis => {
            // Shared by several instances: each notification is written to
            // `push_handoff` with the message, submitted after the commit, and its
            // row deleted once Redis has it (`NotifyPath::Handoff`).
            let outbox = config.open_outbox(figment).await?;
            tracing::info!("outbox: redis, shared by every instance; notifications handed over through push_handoff after each commit");
            (outbox, NotifyPath::Handoff)
        }
    };

    let (dead_tx, dead_rx) = mpsc::unbounded_channel::<DeadAddress>();
    let mut builder = config
        .dispatcher_builder(figment)?
        .on_dead_address(move |d| {
            let _ = dead_tx.send(d);
        })
        .address_book(Arc::new(address_book::StoreAddressBook(store.clone())));
    if let Some(o) = outbox {
        builder = builder.outbox(o);
    }
    let dispatcher = Arc::new(builder.build()?);
    let enabled: Vec<String> = dispatcher
        .providers()
        .iter()
        .map(|p| p.describe())
        .collect();
    tracing::info!(
        "providers enabled: {}",
        if enabled.is_empty() {
            "none".to_string()
        } else {
            enabled.join(", ")
        }
    );
    let workers = dispatcher.start_workers();

    let listener = match listener {
        Some(l) => l,
        None => TcpListener::bind(section.bind)
            .await
            .map_err(|source| ServerError::Bind {
                addr: section.bind.to_string(),
                source,
            })?,
    };
    let addr = listener.local_addr().map_err(ServerError::Serve)?;

    let admin_listener = match section.admin_bind {
        Some(bind) => Some(
            TcpListener::bind(bind)
                .await
                .map_err(|source| ServerError::Bind {
                    addr: format!("{bind} (server.admin_bind)"),
                    source,
                })?,
        ),
        None => None,
    };
    let admin_addr = match &admin_listener {
        Some(l) => Some(l.local_addr().map_err(ServerError::Serve)?),
        None => None,
    };
    let registration_open = section.registration_open(config.profile);
    tracing::info!(
        "registration: {}",
        if registration_open {
            "open (POST /api/register)"
        } else {
            "closed (accounts are created with `mesh-server user add`)"
        }
    );
    let hashing = hashing::HashingPool::new(section.hashing_threads, section.hashing_queue)
        .map_err(|e| ServerError::Serve(std::io::Error::other(format!("hashing threads: {e}"))))?;
    const MAX_KEYS: usize = 100_000;
    let throttles = throttle::Throttles {
        login_account: throttle::Window::new(
            section.login_failures_per_account,
            section.login_failure_window,
            MAX_KEYS,
        ),
        login_address: throttle::Window::new(
            section.login_failures_per_address,
            section.login_failure_window,
            MAX_KEYS,
        ),
        register_address: throttle::Window::new(
            section.registrations_per_address,
            section.registration_window,
            MAX_KEYS,
        ),
    };
    // Several instances on one PostgreSQL database share presence and live events
    // through the outbox's Redis.
    let cluster = match (section.database, config.outbox.backend) {
        (config::Database::Postgres, OutboxBackend::Redis) => {
            let mut url = url::Url::parse(config.outbox.redis_url.as_deref().unwrap_or_default())
                .map_err(|e| ServerError::Outbox(format!("redis_url: {e}")))?;
            if let Some(pw) = &config.outbox.redis_password {
                url.set_password(Some(pw.expose())).map_err(|()| {
                    ServerError::Outbox("redis_url cannot carry a password".into())
                })?;
            }
            let cluster = cluster::Cluster::connect(
                url.as_str(),
                &config.outbox.redis_prefix,
                section.presence_ttl,
            )
            .await
            .map_err(|e| ServerError::Outbox(format!("presence over redis: {e}")))?;
            tracing::info!(instance = cluster.instance(), ttl = ?section.presence_ttl, "presence and live events shared with the other instances through Redis");
            Some(Arc::new(cluster))
        }
        _ => None,
    };
    let (stop, stop_rx) = watch::channel(false);
    let state = AppState(Arc::new(Shared {
        cluster: cluster.clone(),
        registration_open,
        hashing,
        throttles,
        health: admin::HealthCache::default(),
        digests: digest::Digests::new(
            config.composer_for(mesh_notify_core::Language::Fr),
            config.composer_for(mesh_notify_core::Language::En),
        ),
        fanout: fanout::Fanout::default(),
        language: config.language,
        config: section,
        store: store.clone(),
        presence: Presence::default(),
        dispatcher: Arc::clone(&dispatcher),
        notify_path,
        shutdown: stop_rx.clone(),
        metrics: prometheus(),
    }));
    // Awaited at shutdown: the heartbeat removes this instance's presence and the
    // publisher sends what is queued (other instances then push at once instead
    // of waiting for the entries to expire).
    let mut cluster_tasks = Vec::new();
    if let Some(cluster) = &cluster {
        cluster_tasks.push(tokio::spawn(cluster::run_publisher(
            state.clone(),
            stop_rx.clone(),
        )));
        tokio::spawn(cluster::run_subscriber(state.clone(), stop_rx.clone()));
        cluster_tasks.push(tokio::spawn(cluster::run_heartbeat(
            state.clone(),
            stop_rx.clone(),
        )));
        // Serve once subscribed: a join is then written where the others read it.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        while !cluster.is_subscribed() && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }
    tokio::spawn(dead_address_loop(store.clone(), dead_rx, stop_rx.clone()));
    tokio::spawn(prune_loop(state.clone(), stop_rx.clone()));
    tokio::spawn(digest::run_flusher(state.clone(), stop_rx.clone()));
    let fanout_task = tokio::spawn(fanout::run(state.clone(), stop_rx.clone()));
    if notify_path == NotifyPath::Handoff {
        tokio::spawn(notify::sweep_handoff(
            state.clone(),
            std::time::Duration::from_secs(5),
            stop_rx.clone(),
        ));
    }
    let checkpoint_task = (store.backend() == db::Backend::Sqlite).then(|| {
        tokio::spawn(store::run_checkpoints(
            store.clone(),
            std::time::Duration::from_secs(1),
            stop_rx.clone(),
        ))
    });
    let limits = serve::ConnLimits {
        max_connections: state.config.max_connections,
        header_read_timeout: state.config.header_read_timeout,
    };
    let admin_app = admin::router(state.clone());
    let app = api::router(state);
    let database = match store.backend() {
        db::Backend::Sqlite => db_path.display().to_string(),
        db::Backend::Postgres => "PostgreSQL".to_string(),
    };
    tracing::info!(
        "mesh-server listening on {}://{addr} (database {database})",
        if has_tls { "https" } else { "http" },
    );
    let admin_task = admin_listener.map(|l| {
        if let Some(a) = admin_addr {
            tracing::info!("admin endpoints (detailed /health, /metrics) on http://{a}");
        }
        let stop_admin = stop_rx.clone();
        tokio::spawn(async move { serve::serve(l, admin_app, limits, None, stop_admin).await })
    });
    let task = tokio::spawn(async move {
        let served = serve::serve(listener, app, limits, tls, stop_rx).await;
        if let Some(admin) = admin_task {
            match admin.await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => tracing::warn!(error = %e, "the admin listener failed"),
                Err(e) => tracing::warn!(error = %e, "the admin listener task failed"),
            }
        }
        // The fan-out expands what is left before the workers stop (bounded: what
        // does not fit stays in the database for the next start).
        if tokio::time::timeout(std::time::Duration::from_secs(5), fanout_task)
            .await
            .is_err()
        {
            tracing::warn!(
                "fan-out still busy at shutdown; the rest is expanded at the next start"
            );
        }
        for t in cluster_tasks {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(3), t).await;
        }
        workers.shutdown().await;
        // The last checkpoint (TRUNCATE) after the workers' last writes.
        if let Some(checkpoints) = checkpoint_task {
            let _ = tokio::time::timeout(std::time::Duration::from_secs(5), checkpoints).await;
        }
        tracing::info!("mesh-server stopped");
        served.map_err(ServerError::Serve)
    });
    Ok(ServerHandle {
        instance: cluster.as_ref().map(|c| c.instance().to_string()),
        addr,
        admin_addr,
        stop,
        task,
        dispatcher,
        store,
    })
}

/// Deletes the addresses providers report dead (APNs 410, FCM UNREGISTERED, ...).
async fn dead_address_loop(
    store: Store,
    mut rx: mpsc::UnboundedReceiver<DeadAddress>,
    mut stop: watch::Receiver<bool>,
) {
    loop {
        let dead = tokio::select! {
            d = rx.recv() => match d { Some(d) => d, None => break },
            _ = stop.wait_for(|s| *s) => break,
        };
        let Some(address) = dead.address else {
            continue;
        };
        let Ok(user_id) = dead.user_id.parse::<i64>() else {
            continue;
        };
        let kind = dead.kind;
        let result = store
            .call(move |c| {
                Ok(c.execute(
                    "DELETE FROM addresses WHERE user_id = ?1 AND kind = ?2 AND value = ?3",
                    crate::db::params![user_id, kind.as_str(), address.expose()],
                )?)
            })
            .await;
        match result {
            Ok(n) => {
                tracing::info!(user = user_id, kind = %kind, provider = %dead.provider, removed = n, "dead address deleted")
            }
            Err(e) => {
                tracing::warn!(user = user_id, error = %e.message, "could not delete a dead address")
            }
        }
    }
}

/// Every `server.prune_interval`: deletes expired sessions and old records of
/// queued notifications.
async fn prune_loop(state: AppState, mut stop: watch::Receiver<bool>) {
    let retention = i64::try_from(state.config.pending_retention.as_millis()).unwrap_or(i64::MAX);
    let every = state.config.prune_interval;
    loop {
        let now = store::now_ms();
        let cutoff = now.saturating_sub(retention);
        match state
            .store
            .call(move |c| {
                Ok((
                    store::prune_sessions(c, now)?,
                    store::prune_pending(c, cutoff)? + digest::prune(c, cutoff)?,
                ))
            })
            .await
        {
            Ok((sessions, pending)) if sessions + pending > 0 => {
                tracing::debug!(
                    sessions,
                    pending,
                    "expired sessions and old pending-notification records pruned"
                )
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e.message, "pruning failed"),
        }
        state.throttles.prune();
        tokio::select! {
            _ = tokio::time::sleep(every) => {}
            _ = stop.wait_for(|s| *s) => break,
        }
    }
}
