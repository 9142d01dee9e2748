//! A lean loopback Gotify-compatible sink: keep-alive HTTP/1.1, answers `POST /message`
//! like Gotify (200 with `{"id","appid","message","title","priority","date"}`), and
//! counts. Unlike the testkit's fake it keeps nothing per message, so memory figures
//! measure the client, not the sink.
//!
//! Modes: ok, 503 (Gotify's error body), hang (accept, read, never answer), and
//! down (listener closed and open connections dropped: connections are refused).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use serde::Deserialize;
use tokio::net::TcpListener;
use tokio::runtime::Handle;
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// The application token the sink accepts.
pub const TOKEN: &str = "AbenchToken0001";

/// How the sink answers `POST /message`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// 200 like Gotify.
    Ok = 0,
    /// 503 with Gotify's error body.
    Unavailable = 1,
    /// Read the request and never answer (until the sink is dropped, at most 60 s).
    Hang = 2,
}

struct Shared {
    mode: AtomicU8,
    /// Added before every answer (a provider over a WAN), in microseconds.
    latency_us: AtomicU64,
    delivered: AtomicU64,
    next_id: AtomicU64,
}

/// A running sink (on the runtime whose handle it was given).
pub struct Sink {
    addr: SocketAddr,
    shared: Arc<Shared>,
    rt: Handle,
    /// Flipped to `true` to drop every open connection.
    close: Mutex<Option<(watch::Sender<bool>, JoinHandle<()>)>>,
}

/// Errors starting the sink.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Binding the loopback listener failed.
    #[error("cannot bind the sink on {addr}: {source}")]
    Bind {
        /// Address tried.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
}

impl Sink {
    /// Starts a sink on a free loopback port, serving on runtime `rt`.
    pub async fn start(rt: Handle) -> Result<Self, SinkError> {
        let listener = bind("127.0.0.1:0".parse().map_err(|e| SinkError::Bind {
            addr: "127.0.0.1:0".into(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidInput, e),
        })?)?;
        let addr = listener.local_addr().map_err(|e| SinkError::Bind {
            addr: "127.0.0.1:0".into(),
            source: e,
        })?;
        let shared = Arc::new(Shared {
            mode: AtomicU8::new(Mode::Ok as u8),
            latency_us: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            next_id: AtomicU64::new(1),
        });
        let sink = Self {
            addr,
            shared,
            rt,
            close: Mutex::new(None),
        };
        sink.serve(listener);
        Ok(sink)
    }

    fn serve(&self, listener: std::net::TcpListener) {
        let (tx, rx) = watch::channel(false);
        let shared = Arc::clone(&self.shared);
        let task = self.rt.spawn(accept_loop(listener, shared, rx));
        *self.close.lock().unwrap_or_else(PoisonError::into_inner) = Some((tx, task));
    }

    /// The base URL (`http://127.0.0.1:PORT/`).
    pub fn url(&self) -> String {
        format!("http://{}/", self.addr)
    }

    /// Sets how `POST /message` is answered.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.mode.store(mode as u8, Ordering::SeqCst);
    }

    /// Answers every request after `latency` (a provider far away).
    pub fn set_latency(&self, latency: Duration) {
        self.shared.latency_us.store(
            u64::try_from(latency.as_micros()).unwrap_or(u64::MAX),
            Ordering::SeqCst,
        );
    }

    /// Messages answered with 200 so far.
    pub fn delivered(&self) -> u64 {
        self.shared.delivered.load(Ordering::SeqCst)
    }

    /// Closes the listener and every open connection: new connections are refused.
    pub async fn down(&self) {
        let taken = self
            .close
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some((tx, task)) = taken {
            let _ = tx.send(true);
            task.abort();
            let _ = task.await;
        }
    }

    /// Listens again on the same port after [`down`](Self::down).
    pub async fn up(&self) -> Result<(), SinkError> {
        let mut last = None;
        // The port was ours a moment ago; retry briefly in case the kernel is slow to
        // release it.
        for _ in 0..50 {
            match bind(self.addr) {
                Ok(l) => {
                    self.serve(l);
                    return Ok(());
                }
                Err(e) => last = Some(e),
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(last.unwrap_or(SinkError::Bind {
            addr: self.addr.to_string(),
            source: std::io::Error::other("no attempt made"),
        }))
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        if let Some((tx, task)) = self
            .close
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            let _ = tx.send(true);
            task.abort();
        }
    }
}

fn bind(addr: SocketAddr) -> Result<std::net::TcpListener, SinkError> {
    let err = |e| SinkError::Bind {
        addr: addr.to_string(),
        source: e,
    };
    let l = std::net::TcpListener::bind(addr).map_err(err)?;
    l.set_nonblocking(true).map_err(err)?;
    Ok(l)
}

async fn accept_loop(
    listener: std::net::TcpListener,
    shared: Arc<Shared>,
    close: watch::Receiver<bool>,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("sink: cannot register the listener: {e}");
            return;
        }
    };
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                eprintln!("sink: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let shared = Arc::clone(&shared);
        let mut close = close.clone();
        tokio::spawn(async move {
            let svc = service_fn(move |req| handle(Arc::clone(&shared), req));
            let conn = http1::Builder::new()
                .keep_alive(true)
                .serve_connection(TokioIo::new(stream), svc);
            tokio::select! {
                _ = conn => {}
                _ = close.wait_for(|c| *c) => {}
            }
        });
    }
}

#[derive(Deserialize)]
struct Message {
    #[serde(default)]
    title: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    priority: i64,
}

type Answer = Response<Full<Bytes>>;

fn json(status: StatusCode, body: String) -> Answer {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("application/json"),
    );
    r
}

fn gotify_error(status: StatusCode, description: &str) -> Answer {
    let body = serde_json::json!({
        "error": status.canonical_reason().unwrap_or("Error"),
        "errorCode": status.as_u16(),
        "errorDescription": description,
    });
    json(status, body.to_string())
}

async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Answer, Infallible> {
    if req.uri().path() == "/health" {
        return Ok(json(
            StatusCode::OK,
            r#"{"health":"green","database":"green"}"#.into(),
        ));
    }
    if req.method() != Method::POST || req.uri().path() != "/message" {
        return Ok(gotify_error(StatusCode::NOT_FOUND, "page not found"));
    }
    let authorised = req
        .headers()
        .get("x-gotify-key")
        .is_some_and(|v| v.as_bytes() == TOKEN.as_bytes());
    let body = match req.into_body().collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return Ok(gotify_error(StatusCode::BAD_REQUEST, "unreadable body")),
    };
    let latency = shared.latency_us.load(Ordering::Relaxed);
    if latency > 0 {
        tokio::time::sleep(Duration::from_micros(latency)).await;
    }
    match shared.mode.load(Ordering::Relaxed) {
        m if m == Mode::Unavailable as u8 => {
            return Ok(gotify_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "the server is temporarily unavailable",
            ))
        }
        m if m == Mode::Hang as u8 => {
            // Bounded: the benchmark's clients time out long before.
            tokio::time::sleep(Duration::from_secs(60)).await;
            return Ok(gotify_error(StatusCode::GATEWAY_TIMEOUT, "hung"));
        }
        _ => {}
    }
    if !authorised {
        return Ok(gotify_error(
            StatusCode::UNAUTHORIZED,
            "you need to provide a valid access token or user credentials to access this api",
        ));
    }
    let msg: Message = match serde_json::from_slice(&body) {
        Ok(m) => m,
        Err(e) => return Ok(gotify_error(StatusCode::BAD_REQUEST, &e.to_string())),
    };
    if msg.message.is_empty() {
        return Ok(gotify_error(
            StatusCode::BAD_REQUEST,
            "Field 'message' is required",
        ));
    }
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let answer = serde_json::json!({
        "id": id,
        "appid": 1,
        "message": msg.message,
        "title": msg.title,
        "priority": msg.priority,
        "date": "2026-11-25T12:00:00.000000000Z",
    });
    shared.delivered.fetch_add(1, Ordering::SeqCst);
    Ok(json(StatusCode::OK, answer.to_string()))
}

/// The sink in a child process (this program re-executed with `--serve-sink`), as
/// a user's Gotify would be: the client's figures then include the real cost of
/// crossing a process boundary (wake-ups, context switches) and the sink does not
/// share the client's runtime or allocator. Killed on drop.
pub struct SinkProcess {
    child: std::process::Child,
    url: String,
}

/// The argument that makes this program serve a sink (internal).
pub const SERVE_SINK_ARG: &str = "--serve-sink";

impl SinkProcess {
    /// Starts the child and waits for the URL it prints.
    pub fn start(pin: bool) -> Result<Self, String> {
        use std::io::BufRead;
        let exe = std::env::current_exe().map_err(|e| format!("cannot find this program: {e}"))?;
        let mut cmd = std::process::Command::new(exe);
        cmd.arg(SERVE_SINK_ARG);
        if pin {
            cmd.arg("--pin");
        }
        let mut child = cmd
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::inherit())
            .spawn()
            .map_err(|e| format!("cannot start the sink process: {e}"))?;
        let stdout = child
            .stdout
            .take()
            .ok_or("the sink process has no stdout")?;
        let mut line = String::new();
        std::io::BufReader::new(stdout)
            .read_line(&mut line)
            .map_err(|e| format!("the sink process did not say where it listens: {e}"))?;
        let url = line.trim().to_owned();
        if !url.starts_with("http://") {
            let _ = child.kill();
            return Err(format!(
                "the sink process printed {url:?}, expected its URL"
            ));
        }
        Ok(Self { child, url })
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Drop for SinkProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `--serve-sink`: serves a sink on a runtime as wide as the machine, prints its
/// URL on stdout, and runs until stdin is closed (the parent exits or drops it).
pub fn serve_sink_main() -> std::process::ExitCode {
    use std::io::{Read, Write};
    // One thread on the last core: a lean server that leaves the other cores to
    // the client (which pins itself to them), so the figures measure the client.
    let rt = match tokio::runtime::Builder::new_current_thread()
        .thread_name("sink")
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("sink: cannot start a runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let pin = std::env::args().any(|a| a == "--pin");
    if let Some(&last) = crate::affinity::allowed().last().filter(|_| pin) {
        if let Err(e) = crate::affinity::pin_process(&[last]) {
            eprintln!("sink: cannot pin to cpu {last}: {e}");
        }
    }
    let sink = match rt.block_on(Sink::start(rt.handle().clone())) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sink: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let mut out = std::io::stdout();
    if writeln!(out, "{}", sink.url())
        .and_then(|_| out.flush())
        .is_err()
    {
        return std::process::ExitCode::FAILURE;
    }
    // Serve until the parent goes away (stdin closed).
    rt.block_on(async {
        let _ = tokio::task::spawn_blocking(|| {
            let mut buf = [0u8; 64];
            while matches!(std::io::stdin().read(&mut buf), Ok(n) if n > 0) {}
        })
        .await;
    });
    drop(sink);
    rt.shutdown_background();
    std::process::ExitCode::SUCCESS
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_notify_core::{Composer, Notifier, Recipient, Room, Secret};
    use mesh_notify_gotify::GotifyNotifier;

    fn notification() -> mesh_notify_core::Notification {
        Composer::default().chat(
            "Alice",
            &Room::new("r1", "Test"),
            Recipient::new("bob", "Bob"),
            "Salut",
        )
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn answers_like_gotify_in_each_mode() {
        let sink = Sink::start(Handle::current()).await.unwrap();
        let gotify = GotifyNotifier::new(
            &sink.url(),
            Some(Secret::new(TOKEN)),
            Duration::from_millis(300),
        )
        .unwrap();
        let n = notification();

        let receipt = gotify.send(&n).await.unwrap();
        assert_eq!(receipt.message_id.as_deref(), Some("1"));
        assert_eq!(sink.delivered(), 1);

        let wrong = GotifyNotifier::new(
            &sink.url(),
            Some(Secret::new("nope")),
            Duration::from_millis(300),
        )
        .unwrap();
        assert!(matches!(
            wrong.send(&n).await,
            Err(mesh_notify_core::NotifyError::Misconfigured { .. })
        ));

        sink.set_mode(Mode::Unavailable);
        let err = gotify.send(&n).await.unwrap_err();
        assert!(
            err.is_transient() && err.to_string().contains("503"),
            "{err}"
        );

        sink.set_mode(Mode::Hang);
        let err = gotify.send(&n).await.unwrap_err();
        assert!(
            err.is_transient() && err.to_string().contains("did not answer"),
            "{err}"
        );

        sink.set_mode(Mode::Ok);
        sink.down().await;
        let err = gotify.send(&n).await.unwrap_err();
        assert!(err.is_transient(), "{err}");
        assert_eq!(sink.delivered(), 1);

        sink.up().await.unwrap();
        gotify.send(&n).await.unwrap();
        assert_eq!(sink.delivered(), 2);
    }
}
