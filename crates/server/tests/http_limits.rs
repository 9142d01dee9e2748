//! HTTP limits: a slow-header client (slowloris) is cut off, idle keep-alive
//! connections are closed, the connection cap holds (WebSockets included), bodies
//! and request times are bounded, idle WebSockets are closed, and every WebSocket
//! frame kind counts against the rate limit. Raw sockets where it matters.

mod common;

use std::time::{Duration, Instant};

use common::*;
use futures_util::{SinkExt, StreamExt};
use mesh_notify_testkit::gotify::FakeGotify;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::Message;

async fn fake() -> FakeGotify {
    FakeGotify::start(&[(APP_TOKEN, 1)])
        .await
        .expect("fake gotify")
}

/// Reads until the peer closes; everything read. Panics if it stays open 10 s.
async fn read_until_closed(s: &mut TcpStream) -> String {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, s.read(&mut buf)).await {
            Err(_) => panic!(
                "the server kept the connection open; read so far: {}",
                String::from_utf8_lossy(&got)
            ),
            Ok(Ok(0)) | Ok(Err(_)) => return String::from_utf8_lossy(&got).into_owned(),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
        }
    }
}

/// A fresh client (no pooled connection): GET /health works.
async fn serving(server: &mesh_server::ServerHandle) -> bool {
    reqwest::Client::new()
        .get(format!("http://{}/health", server.addr()))
        .send()
        .await
        .is_ok_and(|r| r.status().is_success())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_header_client_is_cut_off_and_idle_keep_alive_connections_closed() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[server]\nheader_read_timeout = \"300ms\"";
    let server = start(&figment(&gotify.url(), dir.path(), extra)).await;

    // Slowloris: a request head trickling in, one header line every 100 ms.
    let mut slow = TcpStream::connect(server.addr()).await.unwrap();
    slow.write_all(b"GET /health HTTP/1.1\r\nHost: mesh\r\n")
        .await
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 256];
    let cut_off = loop {
        assert!(
            Instant::now() < deadline,
            "the slow client was never cut off"
        );
        if slow.write_all(b"X-Slow: 1\r\n").await.is_err() {
            break true;
        }
        match tokio::time::timeout(Duration::from_millis(100), slow.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => break true,
            Ok(Ok(_)) => break true, // an error answer, then the close
            Err(_) => {}             // still open: keep trickling
        }
    };
    assert!(cut_off);
    assert!(serving(&server).await, "others are served meanwhile");

    // Keep-alive: after a complete request and its answer, an idle connection is
    // closed.
    let mut idle = TcpStream::connect(server.addr()).await.unwrap();
    idle.write_all(b"GET /health HTTP/1.1\r\nHost: mesh\r\n\r\n")
        .await
        .unwrap();
    let answer = read_until_closed(&mut idle).await;
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_connection_cap_counts_open_connections_and_websockets() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[server]\nmax_connections = 3\nheader_read_timeout = \"30s\"";
    let server = start(&figment(&gotify.url(), dir.path(), extra)).await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;
    // The API client's pooled connection would take a slot: drop it.
    drop(api);

    // One WebSocket and two idle TCP connections fill the three slots.
    let mut ws = Ws::connect(&server, &alice.token).await;
    ws.sync().await;
    let _a = TcpStream::connect(server.addr()).await.unwrap();
    let _b = TcpStream::connect(server.addr()).await.unwrap();
    // The fourth is closed at once, without an answer.
    let mut fourth = TcpStream::connect(server.addr()).await.unwrap();
    let _ = fourth
        .write_all(b"GET /health HTTP/1.1\r\nHost: mesh\r\n\r\n")
        .await;
    let answer = read_until_closed(&mut fourth).await;
    assert!(answer.is_empty(), "refused, not served: {answer}");
    // The WebSocket still works; once the idle ones go, new clients are served.
    ws.sync().await;
    drop((_a, _b));
    eventually_async("served again after the idle connections went away", || {
        serving(&server)
    })
    .await;
    server.shutdown().await.unwrap();
}

/// Polls an async condition every 50 ms; panics after 10 s.
async fn eventually_async<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for: {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodies_and_request_times_are_bounded() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[server]\nmax_body_bytes = 2048\nrequest_timeout = \"300ms\"";
    let server = start(&figment(&gotify.url(), dir.path(), extra)).await;
    let api = Api::new(&server);
    let (status, body) = api
        .call(
            "POST",
            "/api/register",
            None,
            Some(json!({"username": "alice", "password": "x".repeat(4096)})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (413, Some("body_too_large")),
        "{body}"
    );
    api.register_and_login("alice", "Alice").await;

    // A body announced but never sent: the request times out (408), the
    // connection is not held forever.
    let mut s = TcpStream::connect(server.addr()).await.unwrap();
    s.write_all(
        b"POST /api/login HTTP/1.1\r\nHost: mesh\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{",
    )
    .await
    .unwrap();
    let answer = read_until_closed(&mut s).await;
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(answer.contains("request_timeout"), "{answer}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_websockets_are_closed_and_live_ones_kept() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[server]\nidle_timeout = \"600ms\"";
    let server = start(&figment(&gotify.url(), dir.path(), extra)).await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;

    // A client that keeps reading answers the pings and stays connected.
    let mut live = Ws::connect(&server, &alice.token).await;
    live.sync().await;
    let mut pings = 0;
    let until = Instant::now() + Duration::from_millis(1500);
    while Instant::now() < until {
        if let Ok(Some(Ok(m))) =
            tokio::time::timeout(Duration::from_millis(100), live.ws.next()).await
        {
            match m {
                Message::Ping(_) => pings += 1,
                Message::Close(c) => panic!("closed although alive: {c:?}"),
                _ => {}
            }
        }
    }
    assert!(pings >= 1, "the server pings");
    live.sync().await;

    // A client that goes silent (reads nothing, so answers no ping) is closed.
    let mut silent = Ws::connect(&server, &alice.token).await;
    silent.sync().await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, silent.ws.next()).await {
            Err(_) => panic!("the silent WebSocket is still open"),
            Ok(Some(Ok(Message::Close(c)))) => break c.map(|c| u16::from(c.code)),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => break None,
        }
    };
    // The close frame (1001) may be lost: reading the queued pings makes the client
    // answer them on a socket the server already closed, which can reset it first.
    assert!(matches!(code, None | Some(1001)), "{code:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ping_and_binary_floods_count_against_the_rate_limit_and_close_the_connection() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[server]\nmessages_per_second = 0.5\nmessage_burst = 2";
    let server = start(&figment(&gotify.url(), dir.path(), extra)).await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;
    let mut ws = Ws::connect(&server, &alice.token).await;
    for i in 0..40 {
        let frame = if i % 2 == 0 {
            Message::Ping(vec![1, 2, 3].into())
        } else {
            Message::binary(vec![0u8; 8])
        };
        if ws.ws.send(frame).await.is_err() {
            break;
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    let code = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, ws.ws.next()).await {
            Err(_) => panic!("the flooding connection is still open"),
            Ok(Some(Ok(Message::Close(c)))) => break c.map(|c| u16::from(c.code)),
            Ok(Some(Ok(_))) => continue,
            Ok(Some(Err(_))) | Ok(None) => break None,
        }
    };
    assert_eq!(code, Some(1008), "closed for exceeding the rate limit");
    server.shutdown().await.unwrap();
}
