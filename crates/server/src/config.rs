//! The `[server]` table of the shared mesh-notify configuration.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use figment::Figment;
use mesh_notify::Profile;
use serde::Deserialize;

use crate::ServerError;

/// `[server]`: the chat server's own settings. Every key is optional.
///
/// ```toml
/// [server]
/// bind = "127.0.0.1:8080"
/// data_dir = "data"
/// max_frame_bytes = 65536
/// messages_per_second = 10.0
/// message_burst = 20
/// session_ttl = "30days"
/// history_page_max = 100
/// ```
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct ServerSection {
    /// Address to listen on (default `127.0.0.1:8080`).
    pub bind: SocketAddr,
    /// Address of the admin listener: detailed `/health` and `/metrics` (default
    /// `127.0.0.1:9090`; `"none"` turns it off). Keep it off the public network.
    #[serde(deserialize_with = "admin_bind")]
    pub admin_bind: Option<SocketAddr>,
    /// Directory holding `mesh.sqlite3` (default `data`, created if missing).
    pub data_dir: PathBuf,
    /// Where chat data lives: `sqlite` (default, `{data_dir}/mesh.sqlite3`, one
    /// instance) or `postgres` (`database_url`, shared by several instances, which
    /// then need `outbox.backend = "redis"`).
    pub database: Database,
    /// PostgreSQL connection URL, e.g. `postgres://mesh@127.0.0.1:5432/mesh`
    /// (no password in it: `database_password`).
    pub database_url: Option<String>,
    /// PostgreSQL password, kept out of the URL and the logs (e.g. the environment
    /// variable `MESH_NOTIFY_SERVER__DATABASE_PASSWORD`).
    pub database_password: Option<mesh_notify_core::Secret>,
    /// In the production profile, PostgreSQL on another machine must be reached
    /// over TLS (`sslmode=require` in `database_url`); `true` allows plain TCP
    /// (a trusted private network). Default false.
    pub database_allow_plaintext: bool,
    /// With several instances (PostgreSQL + Redis): how long a user counts as
    /// present through an instance that stopped refreshing it (a crashed one);
    /// refreshed every third of it (default 15 s).
    #[serde(with = "humantime_serde")]
    pub presence_ttl: Duration,
    /// Largest WebSocket message accepted, in bytes (default 64 KiB); larger ones
    /// close the connection with code 1009.
    pub max_frame_bytes: usize,
    /// Sustained client events per second and connection (default 10).
    pub messages_per_second: f64,
    /// Events a connection may send in a burst above the sustained rate (default 20).
    pub message_burst: u32,
    /// How long a login session stays valid (default 30 days).
    #[serde(with = "humantime_serde")]
    pub session_ttl: Duration,
    /// Largest page of room history (default 100).
    pub history_page_max: usize,
    /// Longest chat message, in characters (default 4000).
    pub max_message_chars: usize,
    /// Queued chat/file notifications remembered for cancellation when the recipient
    /// comes back into the room; older records are pruned (default 24h).
    #[serde(with = "humantime_serde")]
    pub pending_retention: Duration,
    /// After a chat or file push for a room, further messages to the same
    /// recipient within this window are held and sent as one summary when it ends
    /// (default 5 s); messages arriving while the room's push is still waiting in
    /// the outbox are merged into it. `0s` turns coalescing off (one push per
    /// message). The first message is never delayed; calls are never held.
    #[serde(with = "humantime_serde")]
    pub coalesce_window: Duration,
    /// How often expired sessions and old pending-notification records are deleted
    /// (default 10 minutes).
    #[serde(with = "humantime_serde")]
    pub prune_interval: Duration,
    /// `open`: anyone may `POST /api/register`; `closed`: accounts are created with
    /// `mesh-server user add`. Default: open in the development profile, closed in
    /// the production profile.
    pub registration: Option<Registration>,
    /// Failed logins per account within `login_failure_window` before `/api/login`
    /// answers 429 for that account (default 5).
    pub login_failures_per_account: u32,
    /// Failed logins per client address within `login_failure_window` before
    /// `/api/login` answers 429 for that address (default 5).
    pub login_failures_per_address: u32,
    /// The window of the login failure limits (default 15 minutes).
    #[serde(with = "humantime_serde")]
    pub login_failure_window: Duration,
    /// Registration attempts per client address within `registration_window`
    /// (default 10).
    pub registrations_per_address: u32,
    /// The window of the registration limit (default 1 hour).
    #[serde(with = "humantime_serde")]
    pub registration_window: Duration,
    /// Reverse proxies whose `X-Forwarded-For` names the client (default none: the
    /// peer address is the client).
    pub trusted_proxies: Vec<IpAddr>,
    /// Open connections at most, WebSockets included (default 10,000); beyond, new
    /// connections are closed at once.
    pub max_connections: usize,
    /// A client must send a request's head within this; a keep-alive connection
    /// idle this long between requests is closed (default 10 s).
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Longest time to answer an HTTP request, reading its body included (default
    /// 30 s; then 408).
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// A WebSocket from which nothing arrives for this long (not even the answer to
    /// the server's pings, sent every third of it) is closed (default 60 s).
    #[serde(with = "humantime_serde")]
    pub idle_timeout: Duration,
    /// Largest HTTP request body, in bytes (default 64 KiB; then 413).
    pub max_body_bytes: usize,
    /// Open WebSockets per user at most (default 20; then the upgrade answers 429).
    pub max_connections_per_user: usize,
    /// Rooms a user may have created and still be in (default 100).
    pub max_rooms_created_per_user: u32,
    /// Rooms a user may be a member of (default 500).
    pub max_rooms_per_user: u32,
    /// Members per room (default 1,000).
    pub max_members_per_room: u32,
    /// Notification addresses per user (default 20).
    pub max_addresses_per_user: u32,
    /// `[server.tls]`: serve HTTPS/WSS directly (rustls), for deployments without a
    /// TLS reverse proxy. Absent: plain HTTP (put a TLS proxy in front).
    pub tls: Option<TlsSection>,
    /// Threads computing argon2 (default 2; each uses 19 MiB and a core).
    pub hashing_threads: usize,
    /// Password hashing jobs waiting for a thread; when full, register and login
    /// answer 503 with `Retry-After` (default 32).
    pub hashing_queue: usize,
}

/// `[server.tls]`: the certificate chain and private key, PEM files.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// The certificate chain, leaf first (PEM).
    pub cert_file: PathBuf,
    /// The private key (PEM: PKCS#8, PKCS#1 or SEC1).
    pub key_file: PathBuf,
}

/// `server.admin_bind`: an address, or `"none"`/`"off"`.
fn admin_bind<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let raw = String::deserialize(d)?;
    match raw.trim() {
        "none" | "off" | "" => Ok(None),
        addr => addr.parse().map(Some).map_err(|_| {
            serde::de::Error::custom(format!(
                "`{addr}` is not a socket address (e.g. \"127.0.0.1:9090\") nor \"none\""
            ))
        }),
    }
}

/// `server.database`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Database {
    /// The embedded file in `data_dir` (the default).
    #[default]
    Sqlite,
    /// A PostgreSQL server (`database_url`).
    Postgres,
}

/// `server.registration`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Registration {
    /// Anyone may register.
    Open,
    /// Only `mesh-server user add` creates accounts.
    Closed,
}

impl Default for ServerSection {
    fn default() -> Self {
        Self {
            bind: SocketAddr::from(([127, 0, 0, 1], 8080)),
            admin_bind: Some(SocketAddr::from(([127, 0, 0, 1], 9090))),
            data_dir: PathBuf::from("data"),
            database: Database::Sqlite,
            database_url: None,
            database_password: None,
            database_allow_plaintext: false,
            presence_ttl: Duration::from_secs(15),
            max_frame_bytes: 64 * 1024,
            messages_per_second: 10.0,
            message_burst: 20,
            session_ttl: Duration::from_secs(30 * 24 * 3600),
            history_page_max: 100,
            max_message_chars: 4000,
            pending_retention: Duration::from_secs(24 * 3600),
            prune_interval: Duration::from_secs(600),
            coalesce_window: Duration::from_secs(5),
            registration: None,
            login_failures_per_account: 5,
            login_failures_per_address: 5,
            login_failure_window: Duration::from_secs(15 * 60),
            registrations_per_address: 10,
            registration_window: Duration::from_secs(3600),
            trusted_proxies: Vec::new(),
            max_connections: 10_000,
            header_read_timeout: Duration::from_secs(10),
            request_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(60),
            max_body_bytes: 64 * 1024,
            max_connections_per_user: 20,
            max_rooms_created_per_user: 100,
            max_rooms_per_user: 500,
            max_members_per_room: 1000,
            max_addresses_per_user: 20,
            tls: None,
            hashing_threads: 2,
            hashing_queue: 32,
        }
    }
}

impl ServerSection {
    /// Extracts `[server]` from the figment (defaults when absent) and checks it.
    /// Errors name the key and where it came from.
    pub fn from_figment(figment: &Figment) -> Result<Self, ServerError> {
        let section: ServerSection = if figment.find_value("server").is_ok() {
            figment
                .extract_inner("server")
                .map_err(|e| ServerError::Config(mesh_notify::ConfigError::from(e)))?
        } else {
            ServerSection::default()
        };
        section.validate(figment)?;
        Ok(section)
    }

    fn validate(&self, figment: &Figment) -> Result<(), ServerError> {
        let invalid = |key: &str, message: &str| {
            let source = figment
                .find_metadata(&format!("server.{key}"))
                .map(|md| match &md.source {
                    Some(src) => format!("{} {src}", md.name),
                    None => md.name.to_string(),
                })
                .unwrap_or_else(|| "built-in defaults".into());
            ServerError::Invalid {
                key: format!("server.{key}"),
                source_name: source,
                message: message.into(),
            }
        };
        if self.max_frame_bytes < 1024 {
            return Err(invalid("max_frame_bytes", "must be at least 1024"));
        }
        if !(self.messages_per_second.is_finite() && self.messages_per_second > 0.0) {
            return Err(invalid("messages_per_second", "must be a positive number"));
        }
        if self.message_burst == 0 {
            return Err(invalid("message_burst", "must be at least 1"));
        }
        if self.session_ttl.is_zero() {
            return Err(invalid("session_ttl", "must be greater than zero"));
        }
        if self.history_page_max == 0 {
            return Err(invalid("history_page_max", "must be at least 1"));
        }
        if self.coalesce_window > Duration::from_secs(3600) {
            return Err(invalid("coalesce_window", "must be at most 1h"));
        }
        if self.prune_interval < Duration::from_millis(10) {
            return Err(invalid("prune_interval", "must be at least 10ms"));
        }
        for (key, value) in [
            (
                "login_failures_per_account",
                self.login_failures_per_account,
            ),
            (
                "login_failures_per_address",
                self.login_failures_per_address,
            ),
            ("registrations_per_address", self.registrations_per_address),
            (
                "max_rooms_created_per_user",
                self.max_rooms_created_per_user,
            ),
            ("max_rooms_per_user", self.max_rooms_per_user),
            ("max_members_per_room", self.max_members_per_room),
            ("max_addresses_per_user", self.max_addresses_per_user),
        ] {
            if value == 0 {
                return Err(invalid(key, "must be at least 1"));
            }
        }
        for (key, value) in [
            ("login_failure_window", self.login_failure_window),
            ("registration_window", self.registration_window),
        ] {
            if value.is_zero() {
                return Err(invalid(key, "must be greater than zero"));
            }
        }
        for (key, value) in [
            ("header_read_timeout", self.header_read_timeout),
            ("request_timeout", self.request_timeout),
            ("idle_timeout", self.idle_timeout),
        ] {
            if value < Duration::from_millis(10) {
                return Err(invalid(key, "must be at least 10ms"));
            }
        }
        if self.max_connections_per_user == 0 {
            return Err(invalid("max_connections_per_user", "must be at least 1"));
        }
        if self.max_connections == 0 {
            return Err(invalid("max_connections", "must be at least 1"));
        }
        if self.max_body_bytes < 1024 {
            return Err(invalid("max_body_bytes", "must be at least 1024"));
        }
        if !(1..=64).contains(&self.hashing_threads) {
            return Err(invalid("hashing_threads", "must be 1 to 64"));
        }
        if self.max_message_chars == 0 {
            return Err(invalid("max_message_chars", "must be at least 1"));
        }
        if self.presence_ttl < Duration::from_millis(300) {
            return Err(invalid("presence_ttl", "must be at least 300ms"));
        }
        if self.database == Database::Postgres {
            let Some(url) = &self.database_url else {
                return Err(invalid(
                    "database_url",
                    "is required with database = \"postgres\" (e.g. postgres://mesh@127.0.0.1:5432/mesh)",
                ));
            };
            let parsed: tokio_postgres::Config = url
                .parse()
                .map_err(|e| invalid("database_url", &format!("not a PostgreSQL URL: {e}")))?;
            if parsed.get_password().is_some() {
                return Err(invalid(
                    "database_url",
                    "must not carry the password: set server.database_password (or MESH_NOTIFY_SERVER__DATABASE_PASSWORD)",
                ));
            }
        }
        Ok(())
    }

    /// Whether `POST /api/register` is open, given the deployment profile.
    pub fn registration_open(&self, profile: Profile) -> bool {
        match self.registration {
            Some(r) => r == Registration::Open,
            None => profile == Profile::Development,
        }
    }

    /// The production profile's transport rule for PostgreSQL: TLS required
    /// (`sslmode=require`) unless the server is on this machine or
    /// `database_allow_plaintext` is set. `Err` says what to change.
    pub(crate) fn check_postgres_transport(&self, profile: Profile) -> Result<(), String> {
        let Some(config) = self.postgres_config() else {
            return Ok(());
        };
        let tls_required = matches!(
            config.get_ssl_mode(),
            tokio_postgres::config::SslMode::Require
        );
        if profile == Profile::Development
            || tls_required
            || self.database_allow_plaintext
            || crate::db::postgres_is_local(&config)
        {
            return Ok(());
        }
        Err("plain TCP to a remote PostgreSQL is refused in the production profile: add `sslmode=require` to the URL (TLS, certificate verified against the system's roots), or set server.database_allow_plaintext = true on a trusted network".into())
    }

    /// The PostgreSQL connection settings (`database_url` with `database_password`).
    pub(crate) fn postgres_config(&self) -> Option<tokio_postgres::Config> {
        let mut config: tokio_postgres::Config = self.database_url.as_deref()?.parse().ok()?;
        if let Some(pw) = &self.database_password {
            config.password(pw.expose());
        }
        if config.get_application_name().is_none() {
            config.application_name("mesh-server");
        }
        // A database that does not answer fails requests instead of holding them.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(Duration::from_secs(5));
        }
        config.keepalives(true);
        if config.get_keepalives_idle() == Duration::from_secs(2 * 60 * 60) {
            config.keepalives_idle(Duration::from_secs(30));
        }
        Some(config)
    }

    /// The SQLite file: `{data_dir}/mesh.sqlite3`.
    pub fn database_path(&self) -> PathBuf {
        self.data_dir.join("mesh.sqlite3")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use figment::providers::{Format, Toml};

    #[test]
    fn missing_table_gives_defaults() {
        let f = Figment::from(Toml::string("timeout = \"5s\""));
        assert_eq!(
            ServerSection::from_figment(&f).unwrap(),
            ServerSection::default()
        );
    }

    #[test]
    fn keys_are_read_and_unknown_keys_are_named() {
        let f = Figment::from(Toml::string(
            "[server]\nbind = \"127.0.0.1:0\"\nmax_frame_bytes = 2048\nsession_ttl = \"1h\"",
        ));
        let s = ServerSection::from_figment(&f).unwrap();
        assert_eq!(s.max_frame_bytes, 2048);
        assert_eq!(s.session_ttl, Duration::from_secs(3600));
        let f = Figment::from(Toml::string("[server]\nbnd = \"x\""));
        let err = ServerSection::from_figment(&f).unwrap_err().to_string();
        assert!(err.contains("bnd"), "{err}");
    }

    #[test]
    fn the_admin_listener_is_on_loopback_by_default_and_can_be_turned_off() {
        let s = ServerSection::default();
        assert_eq!(s.admin_bind, Some("127.0.0.1:9090".parse().unwrap()));
        let f = Figment::from(Toml::string("[server]\nadmin_bind = \"none\""));
        assert_eq!(ServerSection::from_figment(&f).unwrap().admin_bind, None);
        let f = Figment::from(Toml::string("[server]\nadmin_bind = \"127.0.0.1:0\""));
        assert_eq!(
            ServerSection::from_figment(&f).unwrap().admin_bind,
            Some("127.0.0.1:0".parse().unwrap())
        );
        let f = Figment::from(Toml::string("[server]\nadmin_bind = \"nowhere\""));
        let err = ServerSection::from_figment(&f).unwrap_err().to_string();
        assert!(
            err.contains("admin_bind") && err.contains("nowhere"),
            "{err}"
        );
    }

    #[test]
    fn registration_is_open_in_development_and_closed_in_production_by_default() {
        let s = ServerSection::default();
        assert!(s.registration_open(Profile::Development));
        assert!(!s.registration_open(Profile::Production));
        let f = Figment::from(Toml::string("[server]\nregistration = \"open\""));
        let s = ServerSection::from_figment(&f).unwrap();
        assert!(s.registration_open(Profile::Production));
        let f = Figment::from(Toml::string("[server]\nregistration = \"closed\""));
        let s = ServerSection::from_figment(&f).unwrap();
        assert!(!s.registration_open(Profile::Development));
        let f = Figment::from(Toml::string("[server]\nregistration = \"maybe\""));
        let err = ServerSection::from_figment(&f).unwrap_err().to_string();
        assert!(err.contains("registration"), "{err}");
        let f = Figment::from(Toml::string(
            "[server]\ntrusted_proxies = [\"10.0.0.1\", \"::1\"]",
        ));
        assert_eq!(
            ServerSection::from_figment(&f)
                .unwrap()
                .trusted_proxies
                .len(),
            2
        );
        let f = Figment::from(Toml::string("[server]\nlogin_failures_per_account = 0"));
        let err = ServerSection::from_figment(&f).unwrap_err().to_string();
        assert!(err.contains("server.login_failures_per_account"), "{err}");
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        const KEYS: &[&str] = &[
            "bind",
            "admin_bind",
            "data_dir",
            "max_frame_bytes",
            "messages_per_second",
            "message_burst",
            "session_ttl",
            "history_page_max",
            "max_message_chars",
            "pending_retention",
            "prune_interval",
            "coalesce_window",
            "registration",
            "login_failures_per_account",
            "login_failure_window",
            "trusted_proxies",
            "max_connections",
            "header_read_timeout",
            "max_body_bytes",
            "max_rooms_per_user",
            "hashing_threads",
            "hashing_queue",
            "tls",
        ];

        /// A TOML value of any type, as text.
        fn toml_value() -> impl Strategy<Value = String> {
            prop_oneof![
                any::<i64>().prop_map(|i| i.to_string()),
                any::<f64>()
                    .prop_filter("finite", |f| f.is_finite())
                    .prop_map(|f| format!("{f:?}")),
                any::<bool>().prop_map(|b| b.to_string()),
                ".{0,40}".prop_map(|s| format!("{s:?}")),
                prop::collection::vec(any::<u16>(), 0..4).prop_map(|v| format!("{v:?}")),
                Just("{ cert_file = \"x\" }".to_string()),
            ]
        }

        proptest! {
            #![proptest_config(ProptestConfig { cases: 256, failure_persistence: None, ..ProptestConfig::default() })]

            /// Any value for any key: the loader never panics; an error names the
            /// key it is about.
            #[test]
            fn any_value_for_any_key_is_accepted_or_named(
                key in prop::sample::select(KEYS),
                value in toml_value(),
            ) {
                let text = format!("[server]\n{key} = {value}\n");
                let f = Figment::from(Toml::string(&text));
                if let Err(e) = ServerSection::from_figment(&f) {
                    let msg = e.to_string();
                    prop_assert!(msg.contains(key), "{text:?}: {msg}");
                }
            }

            /// Arbitrary text in the [server] table: never a panic, errors say something.
            #[test]
            fn arbitrary_text_never_panics(body in "[ -~\n]{0,200}") {
                let f = Figment::from(Toml::string(&format!("[server]\n{body}")));
                if let Err(e) = ServerSection::from_figment(&f) {
                    prop_assert!(!e.to_string().is_empty());
                }
            }
        }
    }

    #[test]
    fn bad_values_name_the_key() {
        let f = Figment::from(Toml::string("[server]\nmax_frame_bytes = 10"));
        let err = ServerSection::from_figment(&f).unwrap_err().to_string();
        assert!(err.contains("server.max_frame_bytes"), "{err}");
        let f = Figment::from(Toml::string("[server]\nbind = \"not an address\""));
        let err = ServerSection::from_figment(&f).unwrap_err().to_string();
        assert!(err.contains("bind"), "{err}");
    }
}
