//! Every provider's address kind can be registered by a user (`POST
//! /api/me/addresses`), including the plug-in providers ntfy, webhook and Web
//! Push; a bad kind or value is refused naming the field.

mod common;

use common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ntfy_webhook_and_webpush_addresses_are_accepted_and_checked() {
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment("", dir.path(), "")).await;
    let api = Api::new(&server);
    let bob = api.register_and_login("bob", "Bob").await;
    let add = |kind: &'static str, value: String| {
        let (api, token) = (api.clone(), bob.token.clone());
        async move {
            api.call(
                "POST",
                "/api/me/addresses",
                Some(&token),
                Some(json!({"kind": kind, "value": value})),
            )
            .await
        }
    };
    let sub = json!({"endpoint": "https://push.example.net/send/abc", "keys": {"p256dh": "BNc", "auth": "tBH"}}).to_string();
    for (kind, value) in [
        ("ntfy", "mesh-bob-7f3a".to_string()),
        ("webhook", "https://hooks.example.net/mesh/bob".to_string()),
        ("webpush", sub),
    ] {
        let (status, body) = add(kind, value).await;
        assert!(status == 201 || status == 200, "{kind}: {status} {body}");
    }
    let (status, body) = add("pager", "123".into()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "kind", "{body}");
    assert!(
        body.to_string().contains("webpush"),
        "lists every kind: {body}"
    );
    let (status, body) = add("webhook", "ftp://nope".into()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "value", "{body}");
    let (status, body) = add("webpush", "not-json".into()).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["field"], "value", "{body}");
    server.shutdown().await.unwrap();
}
