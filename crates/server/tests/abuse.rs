//! Abuse limits on accounts: failed logins throttled per account and per client
//! address (429 + Retry-After, checked before the password), registrations per
//! address, a bounded password-hashing queue (503 + Retry-After), the password
//! length cap at login, and closed registration.

mod common;

use common::*;
use futures_util::future::join_all;
use mesh_notify_testkit::gotify::FakeGotify;
use serde_json::{json, Value};

async fn fake() -> FakeGotify {
    FakeGotify::start(&[(APP_TOKEN, 1)])
        .await
        .expect("fake gotify")
}

/// POST /api/login with optional X-Forwarded-For: (status, Retry-After, body).
async fn login(
    api: &Api,
    username: &str,
    password: &str,
    forwarded_for: Option<&str>,
) -> (u16, Option<u64>, Value) {
    let mut req = api
        .http
        .post(format!("{}/api/login", api.base))
        .json(&json!({"username": username, "password": password}));
    if let Some(f) = forwarded_for {
        req = req.header("x-forwarded-for", f);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let retry = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    (status, retry, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_per_account_before_the_password_is_checked() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    // The per-address limit is out of the way: this is about the account.
    let extra = "[server]\nlogin_failures_per_address = 1000";
    let server = start(&figment(&gotify.url(), dir.path(), extra)).await;
    let api = Api::new(&server);
    api.register_and_login("alice", "Alice").await;
    api.register_and_login("bob", "Bob").await;
    for i in 0..5 {
        let (status, _, body) = login(&api, "alice", "wrong-password", None).await;
        assert_eq!(status, 401, "failure {i}: {body}");
    }
    // The sixth attempt is refused, even with the right password.
    let (status, retry, body) = login(&api, "ALICE", "pw-alice-secret", None).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["code"], "too_many_attempts");
    let retry = retry.expect("Retry-After");
    assert!((1..=900).contains(&retry), "Retry-After {retry}");
    assert_eq!(body["retry_after"], retry);
    // Other accounts are not affected.
    let (status, _, body) = login(&api, "bob", "pw-bob-secret", None).await;
    assert_eq!(status, 200, "{body}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_logins_are_throttled_per_client_address_behind_a_trusted_proxy_only() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    // The tests' client is the "proxy" (127.0.0.1); X-Forwarded-For names the client.
    let extra = "[server]\ntrusted_proxies = [\"127.0.0.1\"]";
    let server = start(&figment(&gotify.url(), dir.path(), extra)).await;
    let api = Api::new(&server);
    api.register_and_login("alice", "Alice").await;
    // One address tries five different accounts.
    let attacker = Some("203.0.113.7");
    for name in ["u1", "u2", "u3", "u4", "u5"] {
        let (status, _, body) = login(&api, name, "guess-guess", attacker).await;
        assert_eq!(status, 401, "{body}");
    }
    let (status, retry, body) = login(&api, "alice", "pw-alice-secret", attacker).await;
    assert_eq!(status, 429, "{body}");
    assert!(retry.is_some());
    // Another client address behind the same proxy is not affected.
    let (status, _, body) = login(&api, "alice", "pw-alice-secret", Some("198.51.100.1")).await;
    assert_eq!(status, 200, "{body}");
    server.shutdown().await.unwrap();

    // Without the proxy being trusted, X-Forwarded-For is ignored: changing it does
    // not escape the limit.
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    let api = Api::new(&server);
    for i in 0..5 {
        let spoofed = format!("192.0.2.{i}");
        let (status, _, _) = login(&api, &format!("x{i}"), "guess-guess", Some(&spoofed)).await;
        assert_eq!(status, 401);
    }
    let (status, _, body) = login(&api, "x9", "guess-guess", Some("192.0.2.200")).await;
    assert_eq!(status, 429, "{body}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn registrations_are_throttled_per_address_and_long_passwords_refused_at_login() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[server]\nregistrations_per_address = 2";
    let server = start(&figment(&gotify.url(), dir.path(), extra)).await;
    let api = Api::new(&server);
    api.register_and_login("alice", "Alice").await;
    let reg = |name: &str| {
        api.call(
            "POST",
            "/api/register",
            None,
            Some(json!({"username": name, "password": "long-enough-pw"})),
        )
    };
    let (status, body) = reg("alice").await;
    assert_eq!(status, 409, "a taken name counts too: {body}");
    let (status, body) = reg("carol").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("too_many_attempts")),
        "{body}"
    );
    // A malformed request is refused for what it is, and does not count.
    let (status, body) = reg("x").await;
    assert_eq!((status, body["field"].as_str()), (400, Some("username")));

    // Passwords over 1024 bytes are refused at login as at register, before hashing.
    let (status, _, body) = login(&api, "alice", &"p".repeat(1025), None).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("password")),
        "{body}"
    );
    let (status, _, _) = login(&api, "alice", "pw-alice-secret", None).await;
    assert_eq!(status, 200, "the refused long password was not a failure");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_hashing_queue_answers_503_with_retry_after() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let extra = "[server]\nhashing_threads = 1\nhashing_queue = 1\nlogin_failures_per_address = 1000\nlogin_failures_per_account = 1000";
    let server = start(&figment(&gotify.url(), dir.path(), extra)).await;
    let api = Api::new(&server);
    api.register_and_login("alice", "Alice").await;
    // Thirty logins at once: one hashes, one waits, the rest are refused at once.
    let attempts = (0..30).map(|_| login(&api, "alice", "pw-alice-secret", None));
    let results = join_all(attempts).await;
    let ok = results.iter().filter(|(s, _, _)| *s == 200).count();
    let busy: Vec<_> = results.iter().filter(|(s, _, _)| *s == 503).collect();
    assert!(ok >= 1, "{results:?}");
    assert!(!busy.is_empty(), "some were refused: {results:?}");
    for (_, retry, body) in &busy {
        assert_eq!(body["code"], "busy");
        assert!(retry.is_some(), "Retry-After on 503");
    }
    assert_eq!(ok + busy.len(), 30, "{results:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn closed_registration_refuses_register() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(
        &gotify.url(),
        dir.path(),
        "[server]\nregistration = \"closed\"",
    ))
    .await;
    let api = Api::new(&server);
    let (status, body) = api
        .call(
            "POST",
            "/api/register",
            None,
            Some(json!({"username": "mallory", "password": "long-enough-pw"})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("registration_closed")),
        "{body}"
    );
    server.shutdown().await.unwrap();
}
