//! The shared transport against a loopback server: bounded answers, Retry-After,
//! timeouts.

use std::time::Duration;

use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, post};
use axum::Router;
use mesh_notify_core::ErrorClass;
use mesh_notify_provider_kit::http::{ClientSettings, Transport};
use mesh_notify_testkit::harness::LoopbackServer;

async fn server() -> LoopbackServer {
    let app = Router::new()
        .route("/big", get(|| async { "x".repeat(1024 * 1024) }))
        .route(
            "/busy",
            post(|| async {
                let mut h = HeaderMap::new();
                h.insert("retry-after", "42".parse().unwrap());
                (StatusCode::TOO_MANY_REQUESTS, h, "slow down")
            }),
        )
        .route("/hang", get(std::future::pending::<()>));
    LoopbackServer::start(app).await.unwrap()
}

#[tokio::test]
async fn answers_are_read_up_to_the_bound() {
    let s = server().await;
    let client = ClientSettings::new(Duration::from_secs(30))
        .build()
        .unwrap();
    let t = Transport::new("fake", Duration::from_secs(30)).with_answer_limit(1000);
    let a = t
        .send(client.get(format!("{}/big", s.url())))
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(a.body.len(), 1000);
    assert!(a.truncated);
}

#[tokio::test]
async fn retry_after_is_read_from_the_answer() {
    let s = server().await;
    let client = ClientSettings::new(Duration::from_secs(30))
        .build()
        .unwrap();
    let t = Transport::new("fake", Duration::from_secs(30));
    let a = t
        .send(client.post(format!("{}/busy", s.url())))
        .await
        .unwrap();
    assert_eq!(a.status, StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(a.retry_after(), Some(Duration::from_secs(42)));
    assert_eq!(a.body, "slow down");
    assert!(!a.truncated);
}

#[tokio::test]
async fn a_server_that_never_answers_is_a_transient_timeout() {
    let s = server().await;
    // The client's own timeout fires; the test asserts the class, not the time.
    let client = ClientSettings::new(Duration::from_millis(200))
        .build()
        .unwrap();
    let t = Transport::new("fake", Duration::from_millis(200));
    let err = t
        .send(client.get(format!("{}/hang", s.url())))
        .await
        .unwrap_err();
    assert_eq!(err.class(), ErrorClass::Transient);
    assert!(err.to_string().contains("did not answer within"), "{err}");
}
