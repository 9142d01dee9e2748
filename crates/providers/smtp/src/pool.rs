//! A small pool of SMTP connections with deadlines on every step.
//!
//! lettre's own async pool is not used: its async transport bounds only the TCP
//! connect with its timeout (a server that accepts and then stays silent would
//! hang a send forever), and a send cancelled by an outer timeout hands its
//! connection back to lettre's pool in the middle of a transaction. Here a
//! connection goes back to the idle list only after a complete, successful
//! exchange; a failed, timed-out or cancelled one is dropped (closed).

use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use lettre::transport::smtp::authentication::{Credentials, Mechanism};
use lettre::transport::smtp::client::{AsyncSmtpConnection, TlsParameters};
use lettre::transport::smtp::extension::ClientId;
use mesh_notify_core::NotifyError;
use tokio::sync::{Semaphore, SemaphorePermit};

use crate::{classify_smtp_error, TlsMode};

/// Idle connections older than this are closed instead of reused (servers drop
/// idle clients after a few minutes).
const IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Where and how to connect.
pub(crate) struct Target {
    pub host: String,
    pub port: u16,
    pub hello_name: ClientId,
    pub tls: TlsMode,
    pub tls_parameters: Option<TlsParameters>,
    pub credentials: Option<Credentials>,
}

struct Idle {
    conn: AsyncSmtpConnection,
    since: Instant,
}

pub(crate) struct ConnectionPool {
    target: Target,
    idle: Mutex<Vec<Idle>>,
    sessions: Semaphore,
    max_size: u32,
    timeout: Duration,
}

/// One checked-out connection. Dropping it closes the connection; [`Session::release`]
/// returns it to the pool.
pub(crate) struct Session<'a> {
    conn: AsyncSmtpConnection,
    pool: &'a ConnectionPool,
    _permit: SemaphorePermit<'a>,
}

impl ConnectionPool {
    pub fn new(target: Target, max_size: u32, timeout: Duration) -> Self {
        Self {
            target,
            idle: Mutex::new(Vec::new()),
            sessions: Semaphore::new(max_size as usize),
            max_size,
            timeout,
        }
    }

    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Runs one SMTP step under the deadline.
    pub async fn step<T>(
        &self,
        what: &str,
        fut: impl std::future::Future<Output = Result<T, lettre::transport::smtp::Error>>,
    ) -> Result<T, NotifyError> {
        match tokio::time::timeout(self.timeout, fut).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(classify_smtp_error(&e, self.timeout)),
            Err(_) => Err(NotifyError::transient(format!(
                "the SMTP server did not answer within {:?} ({what})",
                self.timeout
            ))),
        }
    }

    /// A live connection: an idle one that still answers `NOOP`, or a new one
    /// (connected, TLS set up, authenticated). Waits at most `timeout` for a free
    /// slot when `max_size` sessions are already running.
    pub async fn checkout(&self) -> Result<Session<'_>, NotifyError> {
        let permit = tokio::time::timeout(self.timeout, self.sessions.acquire())
            .await
            .map_err(|_| {
                NotifyError::transient(format!(
                    "all {} SMTP connections stayed busy for {:?}",
                    self.max_size, self.timeout
                ))
            })?
            .map_err(|_| NotifyError::transient("the SMTP connection pool is closed"))?;
        while let Some(idle) = self.pop_idle() {
            let mut conn = idle.conn;
            if idle.since.elapsed() > IDLE_TIMEOUT {
                continue;
            }
            if let Ok(true) = tokio::time::timeout(self.timeout, conn.test_connected()).await {
                return Ok(Session {
                    conn,
                    pool: self,
                    _permit: permit,
                });
            }
        }
        let conn = self.connect().await?;
        Ok(Session {
            conn,
            pool: self,
            _permit: permit,
        })
    }

    fn pop_idle(&self) -> Option<Idle> {
        self.idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .pop()
    }

    async fn connect(&self) -> Result<AsyncSmtpConnection, NotifyError> {
        let t = &self.target;
        let wrapper = match t.tls {
            TlsMode::Tls => t.tls_parameters.clone(),
            TlsMode::None | TlsMode::Starttls => None,
        };
        let mut conn = self
            .step(
                "connecting",
                AsyncSmtpConnection::connect_tokio1(
                    (t.host.as_str(), t.port),
                    Some(self.timeout),
                    &t.hello_name,
                    wrapper,
                    None,
                ),
            )
            .await?;
        if let (TlsMode::Starttls, Some(parameters)) = (t.tls, &t.tls_parameters) {
            self.step("STARTTLS", conn.starttls(parameters.clone(), &t.hello_name))
                .await?;
        }
        if let Some(credentials) = &t.credentials {
            self.step(
                "AUTH",
                conn.auth(&[Mechanism::Plain, Mechanism::Login], credentials),
            )
            .await?;
        }
        Ok(conn)
    }
}

impl Session<'_> {
    pub fn conn(&mut self) -> &mut AsyncSmtpConnection {
        &mut self.conn
    }

    /// Returns the connection to the pool for reuse (unless lettre marked it broken).
    pub fn release(self) {
        if self.conn.has_broken() {
            return;
        }
        let mut idle = self
            .pool
            .idle
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if idle.len() < self.pool.max_size as usize {
            idle.push(Idle {
                conn: self.conn,
                since: Instant::now(),
            });
        }
    }
}
