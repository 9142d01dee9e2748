//! Log set-up shared by the `mesh-notify` and `mesh-server` binaries (feature
//! `logging`).

use tracing_subscriber::EnvFilter;

use crate::config::LogFormat;

/// Installs a stderr `tracing` subscriber writing text; see [`init_logging_as`].
pub fn init_logging(level: Option<&str>) {
    init_logging_as(level, LogFormat::Text);
}

/// Installs a stderr `tracing` subscriber. The filter is `level` (a `--log-level`
/// flag), else `LOG_LEVEL`, else `RUST_LOG`, else `info`. `json` writes one JSON
/// object per line (for log shippers); text is coloured only on a terminal and
/// never with `NO_COLOR` set.
pub fn init_logging_as(level: Option<&str>, format: LogFormat) {
    let filter = level
        .map(str::to_owned)
        .or_else(|| std::env::var("LOG_LEVEL").ok())
        .map(EnvFilter::new)
        .or_else(|| EnvFilter::try_from_default_env().ok())
        .unwrap_or_else(|| EnvFilter::new("info"));
    // Colour only on a terminal, and never with NO_COLOR set (https://no-color.org):
    // a log file or pipe gets plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    let installed = match format {
        LogFormat::Json => builder.json().with_ansi(false).try_init(),
        LogFormat::Text => builder.with_ansi(ansi).try_init(),
    };
    if let Err(e) = installed {
        eprintln!("logging already set up: {e}");
    }
}
