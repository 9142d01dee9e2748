//! One loopback server harness for every fake: serve an axum [`Router`] on
//! `127.0.0.1` (a free port), stop it (connections are then refused), serve it
//! again on the same port.
//!
//! ```
//! use axum::{routing::get, Router};
//! use mesh_notify_testkit::harness::LoopbackServer;
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() -> std::io::Result<()> {
//! let server = LoopbackServer::start(Router::new().route("/health", get(|| async { "ok" }))).await?;
//! assert!(server.url().starts_with("http://127.0.0.1:"));
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::time::Duration;

use axum::Router;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// A router served on loopback; stopped when dropped.
pub struct LoopbackServer {
    addr: SocketAddr,
    app: Router,
    task: Option<JoinHandle<()>>,
}

impl LoopbackServer {
    /// Serves `app` on `127.0.0.1`, port chosen by the system.
    pub async fn start(app: Router) -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let task = Some(serve(listener, app.clone()));
        Ok(Self { addr, app, task })
    }

    /// Serves `app` on a listener already bound (when the app must know its own
    /// address, e.g. a token endpoint URL or the VAPID audience).
    pub fn from_listener(listener: TcpListener, app: Router) -> std::io::Result<Self> {
        let addr = listener.local_addr()?;
        let task = Some(serve(listener, app.clone()));
        Ok(Self { addr, app, task })
    }

    /// `http://127.0.0.1:PORT` (no trailing slash).
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// The socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops serving: the port is closed and connections are refused.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }

    /// Serves again on the same port after [`LoopbackServer::stop`].
    pub async fn restart(&mut self) -> std::io::Result<()> {
        self.stop();
        // The aborted task drops its listener asynchronously: retry briefly.
        let mut last_err = None;
        for _ in 0..50 {
            match TcpListener::bind(self.addr).await {
                Ok(listener) => {
                    self.task = Some(serve(listener, self.app.clone()));
                    return Ok(());
                }
                Err(e) => {
                    last_err = Some(e);
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        }
        Err(last_err.unwrap_or_else(|| std::io::Error::other("could not rebind")))
    }
}

impl Drop for LoopbackServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn serve(listener: TcpListener, app: Router) -> JoinHandle<()> {
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    })
}
