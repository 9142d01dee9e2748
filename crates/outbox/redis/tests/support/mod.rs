//! Shared by this crate's tests: where the shared Redis is, and private
//! redis-server processes for tests that restart or reconfigure Redis.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use mesh_notify_outbox_redis::RedisOutbox;

/// `REDIS_URL` (set by `scripts/test`). Missing: a failure under `CI=true`,
/// otherwise `None` with a loud note so the skip is visible.
pub fn redis_url() -> Option<String> {
    match std::env::var("REDIS_URL") {
        Ok(url) if !url.is_empty() => Some(url),
        _ if std::env::var("CI").is_ok_and(|v| v == "true") => {
            panic!("REDIS_URL is not set but CI=true: run the tests through scripts/test, which starts redis-server")
        }
        _ => {
            eprintln!("\n!!!!! SKIPPED: REDIS_URL is not set; run scripts/test (it starts redis-server) to test the Redis outbox !!!!!\n");
            None
        }
    }
}

/// A prefix no other test uses.
pub fn unique_prefix(test: &str) -> String {
    format!("mesh-test:{test}:{}", uuid::Uuid::now_v7())
}

/// The redis-server binary: `MESH_TEST_REDIS_SERVER`, else `redis-server` on PATH.
/// Missing: a failure under `CI=true`, otherwise `None` with a loud note.
pub fn redis_server_binary() -> Option<PathBuf> {
    let candidate = std::env::var_os("MESH_TEST_REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("redis-server"));
    let works = Command::new(&candidate)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if works {
        return Some(candidate);
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!(
            "redis-server not found ({}) but CI=true",
            candidate.display()
        );
    }
    eprintln!(
        "\n!!!!! SKIPPED: redis-server not found; install it or set MESH_TEST_REDIS_SERVER !!!!!\n"
    );
    None
}

/// A free loopback port (the listener is closed again before use).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// A private redis-server child process on a free loopback port, data in `dir`.
pub struct RedisServer {
    child: Child,
    pub url: String,
}

impl RedisServer {
    /// Starts one and waits until it answers.
    pub async fn start(binary: &Path, dir: &Path, extra: &[&str]) -> Self {
        let port = free_port();
        let child = Command::new(binary)
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--daemonize",
                "no",
            ])
            .arg("--dir")
            .arg(dir)
            .args(extra)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let server = Self {
            child,
            url: format!("redis://127.0.0.1:{port}/"),
        };
        let started = Instant::now();
        loop {
            let client = redis::Client::open(server.url.as_str()).unwrap();
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                let pong: redis::RedisResult<String> =
                    redis::cmd("PING").query_async(&mut conn).await;
                if pong.is_ok() {
                    return server;
                }
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start on {}",
                server.url
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// SIGKILL, as in a crash.
    pub fn kill(mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub async fn outbox(&self, prefix: &str) -> RedisOutbox {
        RedisOutbox::connect(&self.url, prefix).await.unwrap()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
