//! Fan-out limits: WebSockets per user, rooms created, rooms joined, members per
//! room and addresses per user, each refused with a clear error.

mod common;

use common::*;
use mesh_notify_testkit::gotify::FakeGotify;
use serde_json::json;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_user_and_per_room_limits_are_refused_with_a_clear_error() {
    let gotify = FakeGotify::start(&[(APP_TOKEN, 1)]).await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = "[server]\nmax_connections_per_user = 2\nmax_rooms_created_per_user = 2\nmax_rooms_per_user = 3\nmax_members_per_room = 3\nmax_addresses_per_user = 2";
    let server = start(&figment(&gotify.url(), dir.path(), extra)).await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;
    let bob = api.register_and_login("bob", "Bob").await;
    let carol = api.register_and_login("carol", "Carol").await;
    let dave = api.register_and_login("dave", "Dave").await;

    // WebSockets per user.
    let mut first = Ws::connect(&server, &alice.token).await;
    first.sync().await;
    let mut second = Ws::connect(&server, &alice.token).await;
    second.sync().await;
    let mut req = format!("ws://{}/ws", server.addr())
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "authorization",
        format!("Bearer {}", alice.token).parse().unwrap(),
    );
    match tokio_tungstenite::connect_async(req).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(resp)) => {
            assert_eq!(resp.status().as_u16(), 429);
            let body =
                String::from_utf8_lossy(resp.body().as_deref().unwrap_or_default()).to_string();
            assert!(body.contains("too_many_connections"), "{body}");
        }
        other => panic!(
            "a third WebSocket was not refused: {other:?}",
            other = other.map(|_| ())
        ),
    }
    first.close().await;
    second.close().await;

    // Rooms created per user (rooms left do not count).
    let r1 = api.create_room(&alice, "un").await;
    let r2 = api.create_room(&alice, "deux").await;
    let (status, body) = api
        .call(
            "POST",
            "/api/rooms",
            Some(&alice.token),
            Some(json!({"name": "trois"})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("too_many_rooms")),
        "{body}"
    );

    // Members per room: r1 takes Alice, Bob and Carol; Dave's invitation is refused.
    api.invite(&alice, r1, &bob).await;
    api.invite(&alice, r1, &carol).await;
    let (status, body) = api.send_invite(&alice, r1, "dave").await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("room_full")),
        "{body}"
    );

    // Rooms per user: Bob is in r1, r2 and a room of his own (3); a fourth
    // membership is refused at accept, and the invitation stays pending.
    api.invite(&alice, r2, &bob).await;
    api.create_room(&bob, "à Bob").await;
    let dave_room = api.create_room(&dave, "chez Dave").await;
    let (status, body) = api.send_invite(&dave, dave_room, "bob").await;
    assert_eq!(status, 201, "{body}");
    let id = body["invite"]["id"].as_i64().unwrap();
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/invites/{id}/accept"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("too_many_memberships")),
        "{body}"
    );
    assert_eq!(api.invites(&bob).await.len(), 1, "still pending");
    let (status, body) = api
        .call(
            "POST",
            "/api/rooms",
            Some(&bob.token),
            Some(json!({"name": "encore"})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("too_many_memberships")),
        "{body}"
    );
    // Leaving one room makes room for it.
    let (status, _) = api
        .call(
            "POST",
            &format!("/api/rooms/{r2}/leave"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(status, 204);
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/invites/{id}/accept"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");

    // Addresses per user.
    for i in 0..2 {
        let (status, body) = api
            .call(
                "POST",
                "/api/me/addresses",
                Some(&carol.token),
                Some(json!({"kind": "fcm", "value": format!("token-{i}")})),
            )
            .await;
        assert_eq!(status, 201, "{body}");
    }
    let (status, body) = api
        .call(
            "POST",
            "/api/me/addresses",
            Some(&carol.token),
            Some(json!({"kind": "fcm", "value": "token-3"})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (409, Some("too_many_addresses")),
        "{body}"
    );
    server.shutdown().await.unwrap();
}
