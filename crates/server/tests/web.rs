//! The web client's HTTP side without a browser: embedded assets with their
//! security headers, and `POST /api/me/test-push`.

mod common;

use common::*;
use mesh_notify_testkit::gotify::FakeGotify;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_is_served_with_a_strict_policy() {
    let gotify = FakeGotify::start(&[(APP_TOKEN, 1)]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    let http = reqwest::Client::new();
    let base = format!("http://{}", server.addr());
    for (path, ty) in [
        ("/", "text/html; charset=utf-8"),
        ("/app.js", "text/javascript; charset=utf-8"),
        ("/style.css", "text/css; charset=utf-8"),
        ("/sw.js", "text/javascript; charset=utf-8"),
        ("/favicon.svg", "image/svg+xml"),
    ] {
        let r = http.get(format!("{base}{path}")).send().await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        let h = r.headers();
        assert_eq!(h["content-type"], ty, "{path}");
        assert_eq!(h["x-content-type-options"], "nosniff", "{path}");
        let csp = h["content-security-policy"].to_str().unwrap();
        assert!(csp.starts_with("default-src 'self'"), "{csp}");
        assert!(csp.contains("script-src 'self'"), "{csp}");
        assert!(csp.contains("connect-src 'self'"), "{csp}");
        assert!(
            !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
            "{csp}"
        );
        assert!(!r.bytes().await.unwrap().is_empty());
    }
    let page = http.get(&base).send().await.unwrap().text().await.unwrap();
    assert!(
        !page.contains("<script>") && page.contains(r#"<script type="module" src="/app.js">"#),
        "no inline script"
    );
    // The API keeps answering JSON errors for unknown paths.
    let r = http.get(format!("{base}/nope.js")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let body: serde_json::Value = r.json().await.unwrap();
    assert_eq!(body["code"], "not_found");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_test_push_reaches_the_caller_and_is_rate_limited() {
    let gotify = FakeGotify::start(&[(APP_TOKEN, 1), ("carol-token", 2)])
        .await
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    let api = Api::new(&server);
    let (status, _) = api.call("POST", "/api/me/test-push", None, None).await;
    assert_eq!(status, 401, "needs a session");
    let carol = api.register_and_login("carol", "Carol").await;
    let (status, body) = api
        .call(
            "POST",
            "/api/me/addresses",
            Some(&carol.token),
            Some(json!({"kind": "gotify", "value": "carol-token"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    let (status, body) = api
        .call("POST", "/api/me/test-push", Some(&carol.token), None)
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["queued"], true);
    eventually("the test push", || gotify.messages().len() == 1).await;
    let m = &gotify.messages()[0];
    assert_eq!(m.title, "🔔 Notification de test Mesh");
    assert_eq!(m.message, "Mesh peut vous joindre ici.");
    assert_eq!(m.token, "carol-token", "to the caller's own address");
    for _ in 0..2 {
        let (status, _) = api
            .call("POST", "/api/me/test-push", Some(&carol.token), None)
            .await;
        assert_eq!(status, 202);
    }
    let resp = api
        .http
        .post(format!("{}/api/me/test-push", api.base))
        .bearer_auth(&carol.token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 429, "the fourth within a minute");
    assert!(resp.headers().contains_key("retry-after"));
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["code"], "too_many_attempts");
    // Another user has their own allowance.
    let dave = api.register_and_login("dave", "Dave").await;
    let (status, _) = api
        .call("POST", "/api/me/test-push", Some(&dave.token), None)
        .await;
    assert_eq!(status, 202);
    eventually("four pushes in all", || gotify.messages().len() == 4).await;
    outbox_drained(&server).await;
    assert_eq!(gotify.messages().len(), 4);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_vapid_public_key_is_served_when_web_push_is_configured() {
    let gotify = FakeGotify::start(&[(APP_TOKEN, 1)]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    let api = Api::new(&server);
    let (status, body) = api.call("GET", "/api/webpush/key", None, None).await;
    assert_eq!(status, 404, "{body}");
    assert_eq!(body["code"], "webpush_unavailable");
    server.shutdown().await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let extra = r#"
[providers.webpush]
vapid_key = "yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw"
subject = "mailto:ops@example.com"
"#;
    let server = start(&figment(&gotify.url(), dir.path(), extra)).await;
    let api = Api::new(&server);
    let (status, body) = api.call("GET", "/api/webpush/key", None, None).await;
    assert_eq!(status, 200, "{body}");
    let key = body["public_key"].as_str().unwrap();
    // An uncompressed P-256 point, base64url: 65 bytes → 87 characters.
    assert_eq!(key.len(), 87, "{key}");
    assert!(key.starts_with('B'), "{key}");
    server.shutdown().await.unwrap();
}
