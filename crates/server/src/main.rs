//! `mesh-server`: the Mesh chat server. `mesh-server --config config/default.toml`.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use mesh_notify::Config;

#[derive(Parser, Debug)]
#[command(
    name = "mesh-server",
    version,
    about = "Mesh chat server with push notifications for absent members"
)]
struct Cli {
    /// Configuration file (TOML). Also MESH_NOTIFY_CONFIG. Without one, the built-in
    /// defaults (same as config/default.toml) apply.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Log filter, e.g. `info` or `mesh_server=debug` (else LOG_LEVEL, else RUST_LOG, else info).
    #[arg(long)]
    log_level: Option<String>,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Manage accounts (without a subcommand, mesh-server serves).
    User {
        #[command(subcommand)]
        action: UserCommand,
    },
}

#[derive(clap::Subcommand, Debug)]
enum UserCommand {
    /// Create an account; the password is read from standard input (first line),
    /// never from the command line: `printf '%s\n' "$PW" | mesh-server user add alice`.
    Add {
        /// Login name (3 to 32 letters, digits, `_`, `-`, `.`).
        username: String,
        /// Name shown to others (default: the username).
        #[arg(long)]
        display_name: Option<String>,
    },
}

/// `mesh-server user add`: creates the account in `{server.data_dir}/mesh.sqlite3`.
fn user_add(
    config: Option<&std::path::Path>,
    username: &str,
    display_name: Option<&str>,
) -> Result<(), Box<dyn std::error::Error>> {
    use std::io::{BufRead, IsTerminal, Write};
    let (_, figment) = Config::load(config)?;
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        eprint!("password for {username} (shown as typed; pipe it in to hide it): ");
        let _ = std::io::stderr().flush();
    }
    let mut line = String::new();
    stdin.lock().read_line(&mut line)?;
    let password = line.strip_suffix('\n').unwrap_or(&line);
    let password = password.strip_suffix('\r').unwrap_or(password);
    let user = mesh_server::add_user(&figment, username, password, display_name)?;
    println!(
        "user {} created (id {}, display name {:?})",
        user.username, user.id, user.display_name
    );
    Ok(())
}

async fn stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn run(cli: Cli) -> Result<(), Box<dyn std::error::Error>> {
    if let Some(Command::User { action }) = &cli.command {
        let UserCommand::Add {
            username,
            display_name,
        } = action;
        return user_add(cli.config.as_deref(), username, display_name.as_deref());
    }
    let (config, figment) = Config::load(cli.config.as_deref())?;
    mesh_notify::init_logging_as(cli.log_level.as_deref(), config.log_format);
    let watched = config.clone();
    let server = mesh_server::start(config, &figment, None).await?;
    // Secrets given as *_file are re-read on SIGHUP and when the file changes.
    let path = cli.config.clone();
    let _secrets = mesh_notify::SecretWatcher::spawn(
        std::sync::Arc::clone(server.dispatcher()),
        &watched,
        Box::new(move || Config::load(path.as_deref())),
        std::time::Duration::from_secs(2),
    );
    let stopper = server.stopper();
    tokio::spawn(async move {
        stop_signal().await;
        tracing::info!("stop signal received: shutting down");
        let _ = stopper.send(true);
    });
    server.wait().await?;
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
