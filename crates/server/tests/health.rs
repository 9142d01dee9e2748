//! Health and metrics: the public `/health` says only ok/degraded; the detailed
//! health and `/metrics` are on the admin listener; provider health checks are
//! cached (a flood of health requests never reaches the provider more than once).

mod common;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use axum::routing::get;
use common::*;
use futures_util::future::join_all;
use serde_json::{json, Value};

/// A Gotify stand-in that only answers `GET /health` and counts the calls.
async fn counting_gotify() -> (String, Arc<AtomicUsize>) {
    let checks = Arc::new(AtomicUsize::new(0));
    let counter = Arc::clone(&checks);
    let app = axum::Router::new().route(
        "/health",
        get(move || {
            counter.fetch_add(1, Ordering::SeqCst);
            async { axum::Json(json!({"health": "green", "database": "green"})) }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (url, checks)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_health_says_only_ok_and_details_live_on_the_admin_listener() {
    let (url, checks) = counting_gotify().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&url, dir.path(), "")).await;
    let api = Api::new(&server);
    let (status, body) = api.call("GET", "/health", None, None).await;
    assert_eq!((status, body), (200, json!({"status": "ok"})));
    let (status, _) = api.call("GET", "/metrics", None, None).await;
    assert_eq!(status, 404, "no metrics on the public listener");
    assert_eq!(
        checks.load(Ordering::SeqCst),
        0,
        "public health never checks providers"
    );

    let admin = server.admin_addr().expect("admin listener");
    assert!(admin.ip().is_loopback());
    assert_ne!(admin, server.addr());
    let h: Value = reqwest::get(format!("http://{admin}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(h["status"], "ok", "{h}");
    assert_eq!(h["database"], "ok");
    assert_eq!(h["providers"][0]["health"]["status"], "healthy", "{h}");
    let metrics = reqwest::get(format!("http://{admin}/metrics"))
        .await
        .unwrap();
    assert_eq!(metrics.status().as_u16(), 200);
    assert!(metrics.text().await.unwrap().contains("mesh_server_"));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_health_requests_checks_each_provider_once() {
    let (url, checks) = counting_gotify().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&url, dir.path(), "")).await;
    let api = Api::new(&server);
    let admin = server.admin_addr().expect("admin listener");
    let http = reqwest::Client::new();
    let detailed = (0..40).map(|_| {
        let http = http.clone();
        async move {
            let v: Value = http
                .get(format!("http://{admin}/health"))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v
        }
    });
    let public = (0..40).map(|_| api.call("GET", "/health", None, None));
    let (detailed, public) = tokio::join!(join_all(detailed), join_all(public));
    assert!(detailed
        .iter()
        .all(|h| h["providers"][0]["health"]["status"] == "healthy"));
    assert!(public.iter().all(|(s, _)| *s == 200));
    assert_eq!(
        checks.load(Ordering::SeqCst),
        1,
        "one live check for 80 health requests"
    );
    server.shutdown().await.unwrap();
}
