//! `mesh-notify`: send a notification through the configured provider chain, or check
//! the configuration.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use mesh_notify::core::{
    room_click_url, Address, AddressKind, ErrorClass, Kind, Notification, Priority, Recipient,
    Room, Timestamp,
};
use mesh_notify::serve;
use mesh_notify::{Config, ConfigError};

#[derive(Parser, Debug)]
#[command(
    name = "mesh-notify",
    version,
    about = "mesh-notify: push notifications with fallback"
)]
struct Cli {
    /// Configuration file (TOML). Also MESH_NOTIFY_CONFIG.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// Log filter, e.g. `info` or `mesh_notify=debug` (else LOG_LEVEL, else RUST_LOG, else info).
    #[arg(long, global = true)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Send one notification through the configured chain and report what happened.
    Send {
        /// chat, call, file or system.
        #[arg(long, default_value = "system")]
        kind: String,
        /// Title.
        #[arg(long)]
        title: String,
        /// Body.
        #[arg(long)]
        message: String,
        /// Priority 0-10 (default: the kind's).
        #[arg(long)]
        priority: Option<i64>,
        /// Room id: sets the click URL mesh://room/{id}.
        #[arg(long)]
        room: Option<String>,
        /// Send with this Gotify application token instead of the configured one.
        #[arg(long, env = "MESH_NOTIFY_TO_GOTIFY_TOKEN", hide_env_values = true)]
        to_gotify_token: Option<String>,
        /// Send to this address instead of the configured default recipient:
        /// `gotify:APPTOKEN`, `fcm:REGISTRATION_TOKEN`, `apns:DEVICE_TOKEN`,
        /// `apns_voip:PUSHKIT_TOKEN`, `email:ADDRESS`, `ntfy:TOPIC`, `webhook:URL`
        /// or `webpush:SUBSCRIPTION_JSON`. Repeatable: each address
        /// is tried through its provider only, and the result is printed per device.
        #[arg(long = "to", value_name = "KIND:ADDRESS", value_parser = parse_to)]
        to: Vec<Address>,
        /// Print the outcome as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Print the effective providers and routes (secrets redacted); fail on bad config.
    CheckConfig,
    /// Inspect and manage the durable outbox of the configured backend.
    Outbox {
        #[command(subcommand)]
        command: OutboxCommand,
    },
    /// Run delivery workers on the configured outbox until Ctrl-C / SIGTERM.
    Run,
    /// Serve the HTTP front door (Gotify-compatible `POST /message`, the native
    /// `/v1` API, `/health`, `/metrics`) with delivery workers in the same process.
    Serve,
}

#[derive(Subcommand, Debug)]
enum OutboxCommand {
    /// Counts: pending, in flight, due, dead, oldest due age.
    Stats,
    /// Pending entries, soonest due first.
    List {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Dead letters, most recent first, with why they died.
    Dead {
        /// At most this many.
        #[arg(long, default_value_t = 50)]
        limit: usize,
    },
    /// Move dead letters back to the queue, due now.
    Retry {
        /// Notification ids to re-queue.
        ids: Vec<String>,
        /// Re-queue every dead letter.
        #[arg(long, conflicts_with = "ids")]
        all: bool,
    },
    /// Delete every dead letter.
    PurgeDead,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(run(cli))
}

fn config_error(e: &ConfigError) -> ExitCode {
    eprintln!("configuration error: {e}");
    ExitCode::from(78) // EX_CONFIG
}

async fn run(cli: Cli) -> ExitCode {
    let (config, figment) = match Config::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => return config_error(&e),
    };
    mesh_notify::init_logging_as(cli.log_level.as_deref(), config.log_format);
    match cli.command {
        Command::CheckConfig => check_config(&config, &figment),
        Command::Outbox { command } => outbox_command(&config, &figment, command).await,
        Command::Run => run_workers(&config, &figment, cli.config.as_deref()).await,
        Command::Serve => match serve::run(&config, &figment, None, shutdown_signal()).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("error: {e}");
                ExitCode::from(78)
            }
        },
        Command::Send {
            kind,
            title,
            message,
            priority,
            room,
            to_gotify_token,
            to,
            json,
        } => {
            let kind: Kind = match kind.parse() {
                Ok(k) => k,
                Err(e) => {
                    eprintln!("error: --kind: {e}");
                    return ExitCode::from(64);
                }
            };
            let mut recipient = Recipient::new("cli", "mesh-notify CLI");
            if let Some(token) = to_gotify_token {
                recipient = recipient.with_address(Address::new(AddressKind::Gotify, token));
            }
            let mut n = Notification::new(kind, recipient, title, message);
            n.format = if config.markdown {
                mesh_notify::core::BodyFormat::Markdown
            } else {
                mesh_notify::core::BodyFormat::Plain
            };
            if let Some(p) = priority {
                match Priority::new(p) {
                    Ok(p) => n.priority = p,
                    Err(e) => {
                        eprintln!("error: --priority: {e}");
                        return ExitCode::from(64);
                    }
                }
            }
            if let Some(room_id) = room {
                n.click_url = Some(room_click_url(&room_id));
                n.room = Some(Room::new(room_id.clone(), room_id));
            }
            if kind == Kind::Call {
                n.expires_at = Some(n.created_at.plus(config.call_ttl));
            }
            let dispatcher = match config.build_dispatcher(&figment).await {
                Ok(d) => d,
                Err(e) => return config_error(&e),
            };
            if to.is_empty() {
                return send(&dispatcher, n, json).await;
            }
            send_to(&dispatcher, n, &to, json).await
        }
    }
}

async fn send(dispatcher: &mesh_notify::Dispatcher, n: Notification, json: bool) -> ExitCode {
    let outcome = dispatcher.dispatch(n).await;
    if json {
        match serde_json::to_string_pretty(&outcome) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("error: cannot print the outcome: {e}"),
        }
    }
    for a in &outcome.attempts {
        if let (Some(class), Some(err)) = (a.error_class, &a.error) {
            eprintln!(
                "{} (try {}) failed [{class}]: {err}",
                a.provider, a.try_number
            );
        }
    }
    for skip in &outcome.skipped {
        eprintln!("{} skipped: {}", skip.provider, skip.reason);
    }
    let misconfigured: Vec<&str> = outcome
        .attempts
        .iter()
        .filter(|a| a.error_class == Some(ErrorClass::Misconfigured))
        .map(|a| a.provider.as_str())
        .collect();
    match &outcome.delivered {
        Some(receipt) => {
            if !json {
                println!(
                    "delivered by {} (message id {}) in {:.1} ms{}",
                    receipt.provider,
                    receipt.message_id.as_deref().unwrap_or("-"),
                    receipt.latency.as_secs_f64() * 1000.0,
                    if outcome.used_fallback() {
                        " after falling back"
                    } else {
                        ""
                    }
                );
            }
            if misconfigured.is_empty() {
                ExitCode::SUCCESS
            } else {
                eprintln!(
                    "error: {} refused its configuration (e.g. the token was refused); fix it",
                    misconfigured.join(", ")
                );
                ExitCode::from(2)
            }
        }
        None if outcome.queued => {
            eprintln!(
                "not delivered now: {}\nqueued in the outbox; `mesh-notify run` (or mesh-server) delivers it when a provider recovers",
                outcome.failure_summary()
            );
            ExitCode::FAILURE
        }
        None if outcome.expired => {
            eprintln!("not delivered: the notification expired");
            ExitCode::FAILURE
        }
        None => {
            eprintln!("not delivered: {}", outcome.failure_summary());
            ExitCode::FAILURE
        }
    }
}

/// `--to KIND:ADDRESS`.
fn parse_to(s: &str) -> Result<Address, String> {
    let (kind, value) = s
        .split_once(':')
        .ok_or_else(|| format!("`{s}`: expected KIND:ADDRESS (e.g. fcm:TOKEN)"))?;
    let kind: AddressKind = kind.parse()?;
    if value.trim().is_empty() {
        return Err(format!("`{}:` has an empty address", kind.as_str()));
    }
    Ok(Address::new(kind, value.trim()))
}

/// The provider that serves an address kind.
fn provider_for(kind: AddressKind) -> &'static str {
    match kind {
        AddressKind::Gotify => "gotify",
        AddressKind::Fcm => "fcm",
        AddressKind::Apns | AddressKind::ApnsVoip => "apns",
        AddressKind::Email => "smtp",
        AddressKind::Ntfy => "ntfy",
        AddressKind::Webhook => "webhook",
        AddressKind::WebPush => "webpush",
    }
}

/// `send --to …`: each provider with the addresses given for it, results per device.
async fn send_to(
    dispatcher: &mesh_notify::Dispatcher,
    n: Notification,
    to: &[Address],
    json: bool,
) -> ExitCode {
    let mut by_provider: std::collections::BTreeMap<&str, Vec<Address>> = Default::default();
    for a in to {
        by_provider
            .entry(provider_for(a.kind))
            .or_default()
            .push(a.clone());
    }
    let enabled: Vec<String> = dispatcher
        .providers()
        .iter()
        .map(|p| p.name().to_owned())
        .collect();
    let mut all_ok = true;
    for (provider, addresses) in by_provider {
        if !enabled.iter().any(|e| e == provider) {
            eprintln!(
                "error: --to {}:…: the {provider} provider is not configured ([providers.{provider}] in the config)",
                addresses[0].kind.as_str()
            );
            all_ok = false;
            continue;
        }
        let mut one = n.clone();
        one.id = mesh_notify::core::NotificationId::new();
        one.recipient.addresses = addresses.clone();
        one.resend_via = Some(provider.to_owned());
        let outcome = dispatcher.dispatch(one).await;
        if json {
            match serde_json::to_string_pretty(&outcome) {
                Ok(s) => println!("{s}"),
                Err(e) => eprintln!("error: cannot print the outcome: {e}"),
            }
        }
        if outcome.devices.is_empty() {
            // One device: one line.
            let hint = addresses.first().map(device_hint).unwrap_or_default();
            match &outcome.delivered {
                Some(r) => println!(
                    "{provider} {} {hint}: delivered (message id {}) in {:.1} ms",
                    addresses[0].kind.as_str(),
                    r.message_id.as_deref().unwrap_or("-"),
                    r.latency.as_secs_f64() * 1000.0
                ),
                None => {
                    all_ok = false;
                    let last = outcome.attempts.last();
                    println!(
                        "{provider} {} {hint}: not delivered [{}]: {}{}",
                        addresses[0].kind.as_str(),
                        last.and_then(|a| a.error_class)
                            .map_or("skipped".to_string(), |c| c.to_string()),
                        if outcome.attempts.is_empty() {
                            outcome.failure_summary()
                        } else {
                            last.and_then(|a| a.error.clone()).unwrap_or_default()
                        },
                        if outcome.queued {
                            " (queued for retry)"
                        } else {
                            ""
                        }
                    );
                }
            }
            continue;
        }
        for d in &outcome.devices {
            if d.delivered {
                println!(
                    "{} {} {}: delivered (message id {})",
                    d.provider,
                    d.address.as_str(),
                    d.hint,
                    d.message_id.as_deref().unwrap_or("-")
                );
            } else {
                all_ok = false;
                println!(
                    "{} {} {}: not delivered [{}]: {}",
                    d.provider,
                    d.address.as_str(),
                    d.hint,
                    d.error_class.map_or("-".to_string(), |c| c.to_string()),
                    d.error.as_deref().unwrap_or("-")
                );
            }
        }
    }
    if all_ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// `…` and the last 4 characters.
fn device_hint(a: &Address) -> String {
    let v: Vec<char> = a.value.expose().chars().collect();
    let tail: String = v[v.len().saturating_sub(4)..].iter().collect();
    format!("…{tail}")
}

fn check_config(config: &Config, figment: &mesh_notify::Figment) -> ExitCode {
    let dispatcher = match config.dispatcher_builder(figment).and_then(|b| {
        b.build().map_err(|error| ConfigError::Routes {
            error,
            source_name: "configuration".into(),
        })
    }) {
        Ok(d) => d,
        Err(e) => return config_error(&e),
    };
    // As written in the configuration (`development`, `fr`), not Rust's names.
    println!(
        "profile: {}",
        format!("{:?}", config.profile).to_lowercase()
    );
    println!("timeout: {:?}", config.timeout);
    println!(
        "language: {}",
        format!("{:?}", config.language).to_lowercase()
    );
    println!("providers:");
    for p in dispatcher.providers() {
        println!("  {} enabled: {}", p.name(), p.describe());
    }
    for name in dispatcher.disabled() {
        println!("  {name} disabled (not configured)");
    }
    println!("routes:");
    let enabled: Vec<std::sync::Arc<dyn mesh_notify::core::Notifier>> = dispatcher.providers();
    for kind in Kind::ALL {
        let route = dispatcher.route(kind);
        let names: Vec<&str> = route
            .iter()
            .flat_map(|e| mesh_notify::group_members(e))
            .collect();
        let real: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| enabled.iter().any(|p| p.name() == *n && p.reaches_people()))
            .collect();
        let has_log = names.iter().any(|n| {
            enabled
                .iter()
                .any(|p| p.name() == *n && !p.reaches_people())
        });
        let terminal_log =
            config.providers.log.enabled && config.providers.log.terminal && names.contains(&"log");
        let note = if terminal_log {
            "  (log is terminal: what it writes counts as delivered, even while a real provider is down)".to_string()
        } else if has_log && real.is_empty() {
            "  (no real provider enabled: the log is the delivery)".to_string()
        } else if has_log {
            format!(
                "  (the log counts only for recipients that {} cannot reach; otherwise a notification waits in the outbox until {} delivers it)",
                real.join("/"),
                real.join(" or ")
            )
        } else if real.is_empty() {
            "  (no enabled provider: these notifications wait in the outbox)".to_string()
        } else {
            String::new()
        };
        println!("  {kind}: {}{note}", route.join(" -> "));
    }
    println!(
        "breaker: opens after {} transient failures; probes after {:?}, doubling up to {:?}; notifications waiting for a provider that is down are parked (no attempt burned) and all released when it answers",
        config.breaker.failure_threshold, config.breaker.probe_interval, config.breaker.probe_max_interval
    );
    match config.outbox.backend {
        mesh_notify::OutboxBackend::Sqlite => {
            let (path, why) = config.sqlite_outbox_path();
            println!("outbox: sqlite {} ({why})", path.display())
        }
        mesh_notify::OutboxBackend::Redis => println!(
            "outbox: redis {} (prefix {})",
            config.outbox.redis_url.as_deref().unwrap_or("-"),
            config.outbox.redis_prefix
        ),
        mesh_notify::OutboxBackend::None => {
            println!("outbox: none (undeliverable notifications are lost)")
        }
    }
    ExitCode::SUCCESS
}

async fn outbox_command(
    config: &Config,
    figment: &mesh_notify::Figment,
    command: OutboxCommand,
) -> ExitCode {
    let outbox = match config.open_outbox_with(figment, false).await {
        Ok(Some(o)) => o,
        Ok(None) => {
            eprintln!("error: no outbox configured (outbox.backend = \"none\")");
            return ExitCode::from(78);
        }
        Err(e) => return config_error(&e),
    };
    let result: Result<(), mesh_notify::core::OutboxError> = async {
        match command {
            OutboxCommand::Stats => {
                let s = outbox.stats().await?;
                println!("backend: {}", outbox.backend());
                println!("pending: {}", s.pending);
                println!("in_flight: {}", s.in_flight);
                println!("due: {}", s.due);
                println!("parked: {}", s.parked);
                println!("dead: {}", s.dead);
                println!(
                    "oldest_due_age: {:.1}s",
                    s.oldest_due_age_ms as f64 / 1000.0
                );
            }
            OutboxCommand::List { limit } => {
                for e in outbox.pending(limit).await? {
                    let n = &e.notification;
                    let when = if e.parked_on.is_empty() {
                        format!(
                            "due_in={:.1}s",
                            (e.due_at.as_millis() - Timestamp::now().as_millis()) as f64 / 1000.0
                        )
                    } else {
                        format!("parked_on={}", e.parked_on.join(","))
                    };
                    println!(
                        "{}  {:<6} to={:<12} attempts={} {when}  {}{}",
                        n.id,
                        n.kind,
                        n.recipient.user_id,
                        e.attempts,
                        n.title,
                        e.last_error
                            .as_deref()
                            .map(|err| format!("  [last error: {err}]"))
                            .unwrap_or_default()
                    );
                }
            }
            OutboxCommand::Dead { limit } => {
                for d in outbox.dead(limit).await? {
                    let n = &d.entry.notification;
                    println!(
                        "{}  {:<6} to={:<12} attempts={}  {}  [{}]",
                        n.id, n.kind, n.recipient.user_id, d.entry.attempts, n.title, d.reason
                    );
                }
            }
            OutboxCommand::Retry { ids, all } => {
                let ids: Vec<String> = if all {
                    outbox
                        .dead(usize::MAX)
                        .await?
                        .into_iter()
                        .map(|d| d.entry.notification.id.to_string())
                        .collect()
                } else {
                    ids
                };
                let bar = indicatif::ProgressBar::new(ids.len() as u64);
                if ids.len() < 10 {
                    bar.set_draw_target(indicatif::ProgressDrawTarget::hidden());
                }
                let mut requeued = 0usize;
                for raw in &ids {
                    match raw.parse() {
                        Ok(id) => {
                            if outbox.requeue_dead(id).await? {
                                requeued += 1;
                            } else {
                                bar.suspend(|| eprintln!("{raw}: no such dead letter"));
                            }
                        }
                        Err(e) => bar.suspend(|| eprintln!("{raw}: not a notification id ({e})")),
                    }
                    bar.inc(1);
                }
                bar.finish_and_clear();
                println!("re-queued {requeued} of {}", ids.len());
            }
            OutboxCommand::PurgeDead => {
                println!("purged {} dead letters", outbox.purge_dead().await?);
            }
        }
        Ok(())
    }
    .await;
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run_workers(
    config: &Config,
    figment: &mesh_notify::Figment,
    config_path: Option<&std::path::Path>,
) -> ExitCode {
    let dispatcher = match config.build_dispatcher(figment).await {
        Ok(d) => std::sync::Arc::new(d),
        Err(e) => return config_error(&e),
    };
    if dispatcher.outbox().is_none() {
        eprintln!("error: no outbox configured: nothing to deliver");
        return ExitCode::from(78);
    }
    let workers = dispatcher.start_workers();
    // Secrets given as *_file are re-read on SIGHUP and when the file changes.
    let path = config_path.map(std::path::Path::to_path_buf);
    let _secrets = mesh_notify::SecretWatcher::spawn(
        std::sync::Arc::clone(&dispatcher),
        config,
        Box::new(move || Config::load(path.as_deref())),
        std::time::Duration::from_secs(2),
    );
    tracing::info!("delivery workers running; Ctrl-C to stop");
    shutdown_signal().await;
    tracing::info!("stopping delivery workers");
    workers.shutdown().await;
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    return;
                }
            };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
