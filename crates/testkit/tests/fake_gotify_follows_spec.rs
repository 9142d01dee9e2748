//! The fake Gotify itself must behave like Gotify (shared/specs/gotify-openapi.json),
//! or the provider tests prove nothing.

use mesh_notify_testkit::gotify::{FakeGotify, TokenSource};
use serde_json::{json, Value};

async fn post(url: String, req: reqwest::RequestBuilder) -> (u16, Value) {
    let _ = url;
    let resp = req.send().await.unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn token_is_accepted_from_query_header_and_bearer() {
    let fake = FakeGotify::start(&[("T1", 3)]).await.unwrap();
    let c = reqwest::Client::new();
    let url = format!("{}/message", fake.url());
    let body = json!({"message": "m"});
    let (s, _) = post(url.clone(), c.post(format!("{url}?token=T1")).json(&body)).await;
    assert_eq!(s, 200);
    let (s, _) = post(
        url.clone(),
        c.post(&url).header("X-Gotify-Key", "T1").json(&body),
    )
    .await;
    assert_eq!(s, 200);
    let (s, answer) = post(
        url.clone(),
        c.post(&url)
            .header("Authorization", "Bearer T1")
            .json(&body),
    )
    .await;
    assert_eq!(s, 200);
    for key in ["id", "appid", "message", "title", "priority", "date"] {
        assert!(answer.get(key).is_some(), "answer lacks {key}: {answer}");
    }
    let sources: Vec<_> = fake.messages().iter().map(|m| m.token_source).collect();
    assert_eq!(
        sources,
        [TokenSource::Query, TokenSource::Header, TokenSource::Bearer]
    );
}

#[tokio::test]
async fn missing_or_unknown_token_is_401_with_gotify_error_body() {
    let fake = FakeGotify::start(&[("T1", 3)]).await.unwrap();
    let c = reqwest::Client::new();
    let url = format!("{}/message", fake.url());
    for req in [c.post(&url), c.post(&url).header("X-Gotify-Key", "nope")] {
        let (s, body) = post(url.clone(), req.json(&json!({"message": "m"}))).await;
        assert_eq!(s, 401);
        assert_eq!(body["error"], "Unauthorized");
        assert_eq!(body["errorCode"], 401);
        assert!(body["errorDescription"].is_string());
    }
}

#[tokio::test]
async fn empty_message_or_json_without_content_type_is_400() {
    let fake = FakeGotify::start(&[("T1", 3)]).await.unwrap();
    let c = reqwest::Client::new();
    let url = format!("{}/message", fake.url());
    let (s, body) = post(
        url.clone(),
        c.post(&url)
            .header("X-Gotify-Key", "T1")
            .json(&json!({"message": ""})),
    )
    .await;
    assert_eq!(s, 400);
    assert_eq!(body["errorCode"], 400);
    let (s, _) = post(
        url.clone(),
        c.post(&url)
            .header("X-Gotify-Key", "T1")
            .json(&json!({"title": "t"})),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = post(
        url.clone(),
        c.post(&url)
            .header("X-Gotify-Key", "T1")
            .body(r#"{"message":"m"}"#),
    )
    .await;
    assert_eq!(
        s, 400,
        "JSON without Content-Type: application/json must be refused"
    );
    assert!(fake.messages().is_empty());
}
