//! Membership with consent: an invitation is not membership until the invitee
//! accepts; each pending invitation is announced once (live event or one push);
//! declining, blocking, leaving and removal; non-members never get pushes.

mod common;

use common::*;
use mesh_notify_testkit::gotify::{FakeGotify, Mode};
use serde_json::{json, Value};

const BOB_TOKEN: &str = "bob-own-token";

async fn fake() -> FakeGotify {
    FakeGotify::start(&[(APP_TOKEN, 1), (BOB_TOKEN, 2)])
        .await
        .expect("fake gotify")
}

/// Bob's pushes go to his own Gotify token, so they can be told apart.
async fn bob_uses_his_own_token(api: &Api, bob: &User) {
    let (status, body) = api
        .call(
            "POST",
            "/api/me/addresses",
            Some(&bob.token),
            Some(json!({"kind": "gotify", "value": BOB_TOKEN})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
}

fn pushes_to_bob(gotify: &FakeGotify) -> Vec<String> {
    gotify
        .messages()
        .into_iter()
        .filter(|m| m.token == BOB_TOKEN)
        .map(|m| format!("{} | {}", m.title, m.message))
        .collect()
}

/// Counts events of type `ty` until the answer to a sync round trip (every event
/// queued for the connection before the sync is read by then).
async fn count_until_sync(ws: &mut Ws, ty: &str) -> Vec<Value> {
    ws.send(json!({"type": "sync"})).await;
    let mut seen = Vec::new();
    loop {
        let v = ws.next().await;
        if v["type"] == "error" && v["code"] == "unknown_type" {
            return seen;
        }
        if v["type"] == ty {
            seen.push(v);
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invitation_is_not_membership_until_accepted_and_is_pushed_once() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;
    let bob = api.register_and_login("bob", "Bob").await;
    bob_uses_his_own_token(&api, &bob).await;
    let room = api.create_room(&alice, "Test Gotify").await;
    let mut a = Ws::connect(&server, &alice.token).await;
    assert_eq!(a.join(room).await["type"], "ack");

    // Bob is offline: one invitation, one push, however often Alice insists.
    let (status, body) = api.send_invite(&alice, room, "bob").await;
    assert_eq!(status, 201, "{body}");
    let invite = &body["invite"];
    let id = invite["id"].as_i64().expect("invite id");
    assert_eq!(invite["room_id"], room);
    assert_eq!(invite["room_name"], "Test Gotify");
    assert_eq!(invite["from"]["username"], "alice");
    for _ in 0..3 {
        let (status, body) = api.send_invite(&alice, room, "BOB").await;
        assert_eq!(status, 200, "already pending: {body}");
        assert_eq!(body["invite"]["id"], id);
    }
    eventually("the invitation push", || !pushes_to_bob(&gotify).is_empty()).await;

    // Not a member yet: no room access, no pushes for the room's messages.
    let mut b = Ws::connect(&server, &bob.token).await;
    assert_eq!(b.join(room).await["code"], "not_member");
    let (status, _) = api
        .call(
            "GET",
            &format!("/api/rooms/{room}/messages"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(status, 403);
    assert_eq!(a.say(room, "avant").await["type"], "ack");
    assert!(
        count_until_sync(&mut b, "chat.message").await.is_empty(),
        "no live event for a non-member"
    );
    b.close().await;
    outbox_drained(&server).await;
    let pushes = pushes_to_bob(&gotify);
    assert_eq!(
        pushes.len(),
        1,
        "one push for the invitation only: {pushes:?}"
    );
    assert!(
        pushes[0].contains("Invitation de Alice") && pushes[0].contains("Test Gotify"),
        "{pushes:?}"
    );

    // Bob sees it in his list and accepts: now a member, pushed for new messages.
    let invites = api.invites(&bob).await;
    assert_eq!(invites.len(), 1);
    assert_eq!(invites[0]["id"], id);
    assert_eq!(invites[0]["room_name"], "Test Gotify");
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/invites/{id}/accept"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["room"]["id"], room);
    assert!(api.invites(&bob).await.is_empty());
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/invites/{id}/accept"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!((status, body["field"].as_str()), (404, Some("id")));
    let (status, body) = api.send_invite(&alice, room, "bob").await;
    assert_eq!(
        (status, body["code"].as_str(), body["field"].as_str()),
        (409, Some("already_member"), Some("username"))
    );
    assert_eq!(a.say(room, "après").await["type"], "ack");
    eventually("the push for the message after accepting", || {
        pushes_to_bob(&gotify).len() == 2
    })
    .await;
    outbox_drained(&server).await;
    let pushes = pushes_to_bob(&gotify);
    assert_eq!(pushes.len(), 2, "{pushes:?}");
    assert!(pushes[1].ends_with("| après"), "{pushes:?}");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connected_invitee_gets_one_live_event_and_no_push() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;
    let bob = api.register_and_login("bob", "Bob").await;
    let room = api.create_room(&alice, "Salon").await;
    let mut b = Ws::connect(&server, &bob.token).await;
    b.sync().await;
    let (status, body) = api.send_invite(&alice, room, "bob").await;
    assert_eq!(status, 201, "{body}");
    for _ in 0..3 {
        assert_eq!(api.send_invite(&alice, room, "bob").await.0, 200);
    }
    let events = count_until_sync(&mut b, "room.invited").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["invite"], body["invite"]);
    outbox_drained(&server).await;
    assert!(gotify.messages().is_empty(), "no push while connected");
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn declined_invitations_are_not_announced_again_and_blocks_refuse_invitations() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;
    let bob = api.register_and_login("bob", "Bob").await;
    bob_uses_his_own_token(&api, &bob).await;
    let room = api.create_room(&alice, "Spam").await;
    let other = api.create_room(&alice, "Encore").await;

    let (status, body) = api.send_invite(&alice, room, "bob").await;
    assert_eq!(status, 201, "{body}");
    let id = body["invite"]["id"].as_i64().unwrap();
    eventually("the invitation push", || pushes_to_bob(&gotify).len() == 1).await;
    let (status, _) = api
        .call(
            "POST",
            &format!("/api/invites/{id}/decline"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert!(api.invites(&bob).await.is_empty());
    // Declined: invited again, it is listed but not pushed again.
    assert_eq!(api.send_invite(&alice, room, "bob").await.0, 201);
    assert_eq!(api.invites(&bob).await.len(), 1);
    // A second room is a second invitation: one more push.
    assert_eq!(api.send_invite(&alice, other, "bob").await.0, 201);
    eventually("the second room's push", || {
        pushes_to_bob(&gotify).len() == 2
    })
    .await;
    outbox_drained(&server).await;
    assert_eq!(pushes_to_bob(&gotify).len(), 2);

    // Bob blocks Alice: her pending invitations are withdrawn, new ones refused.
    let (status, body) = api
        .call(
            "POST",
            "/api/me/blocks",
            Some(&bob.token),
            Some(json!({"username": "alice"})),
        )
        .await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["block"]["user"]["username"], "alice");
    assert!(api.invites(&bob).await.is_empty());
    let third = api.create_room(&alice, "Toujours").await;
    let (status, body) = api.send_invite(&alice, third, "bob").await;
    assert_eq!(
        (status, body["code"].as_str(), body["field"].as_str()),
        (403, Some("invite_refused"), Some("username"))
    );
    let (status, body) = api
        .call(
            "POST",
            "/api/me/blocks",
            Some(&bob.token),
            Some(json!({"username": "nobody"})),
        )
        .await;
    assert_eq!((status, body["field"].as_str()), (404, Some("username")));
    let (status, body) = api
        .call(
            "POST",
            "/api/me/blocks",
            Some(&bob.token),
            Some(json!({"username": "bob"})),
        )
        .await;
    assert_eq!((status, body["field"].as_str()), (400, Some("username")));
    let (_, list) = api
        .call("GET", "/api/me/blocks", Some(&bob.token), None)
        .await;
    assert_eq!(list["blocks"][0]["user"]["username"], "alice");
    outbox_drained(&server).await;
    assert_eq!(pushes_to_bob(&gotify).len(), 2, "nothing more pushed");

    // Unblocked, Alice can invite again.
    let (status, _) = api
        .call("DELETE", "/api/me/blocks/alice", Some(&bob.token), None)
        .await;
    assert_eq!(status, 204);
    assert_eq!(api.send_invite(&alice, third, "bob").await.0, 201);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_or_being_removed_ends_live_events_and_pushes() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;
    let bob = api.register_and_login("bob", "Bob").await;
    let carol = api.register_and_login("carol", "Carol").await;
    bob_uses_his_own_token(&api, &bob).await;
    let room = api.create_room(&alice, "Salon").await;
    api.invite(&alice, room, &bob).await;
    api.invite(&alice, room, &carol).await;
    let mut a = Ws::connect(&server, &alice.token).await;
    a.join(room).await;
    let mut b = Ws::connect(&server, &bob.token).await;
    b.join(room).await;
    presence(&mut a, room, &bob, "joined").await;

    // Bob leaves: his connection is out of the room at once.
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/rooms/{room}/leave"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    let left = b.wait_type("room.left").await;
    assert_eq!(
        (left["room_id"].as_i64(), left["reason"].as_str()),
        (Some(room), Some("left"))
    );
    presence(&mut a, room, &bob, "left").await;
    assert_eq!(a.say(room, "après départ").await["type"], "ack");
    assert!(count_until_sync(&mut b, "chat.message").await.is_empty());
    assert_eq!(b.join(room).await["code"], "not_member");
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/rooms/{room}/leave"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!((status, body["code"].as_str()), (403, Some("not_member")));

    // Only the creator removes members.
    let (status, body) = api
        .call(
            "DELETE",
            &format!("/api/rooms/{room}/members/alice"),
            Some(&carol.token),
            None,
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (403, Some("not_creator")),
        "{body}"
    );
    let (status, body) = api
        .call(
            "DELETE",
            &format!("/api/rooms/{room}/members/bob"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!((status, body["field"].as_str()), (404, Some("username")));
    let (status, body) = api
        .call(
            "DELETE",
            &format!("/api/rooms/{room}/members/alice"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!((status, body["field"].as_str()), (400, Some("username")));
    eventually("Carol's push for the message after Bob left", || {
        gotify
            .messages()
            .iter()
            .any(|m| m.message == "après départ")
    })
    .await;
    let mut c = Ws::connect(&server, &carol.token).await;
    c.sync().await;
    let (status, body) = api
        .call(
            "DELETE",
            &format!("/api/rooms/{room}/members/carol"),
            Some(&alice.token),
            None,
        )
        .await;
    assert_eq!(status, 204, "{body}");
    assert_eq!(c.wait_type("room.left").await["reason"], "removed");
    assert_eq!(a.say(room, "sans carol").await["type"], "ack");
    outbox_drained(&server).await;
    let texts: Vec<String> = gotify.messages().into_iter().map(|m| m.message).collect();
    assert_eq!(
        texts,
        ["après départ"],
        "Carol's push only; none after removal"
    );
    assert!(
        pushes_to_bob(&gotify).is_empty(),
        "{:?}",
        pushes_to_bob(&gotify)
    );
    let (_, rooms) = api
        .call("GET", "/api/rooms", Some(&carol.token), None)
        .await;
    assert_eq!(rooms["rooms"], json!([]));
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn leaving_cancels_the_queued_notifications_for_the_room() {
    let gotify = fake().await;
    gotify.set_mode(Mode::Status {
        status: 503,
        retry_after: Some("5".into()),
    });
    let dir = tempfile::tempdir().unwrap();
    let extra = "[routes]\nchat = [\"gotify\"]\n[queue]\nmax_backoff = \"60s\"";
    let server = start(&figment(&gotify.url(), dir.path(), extra)).await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;
    let bob = api.register_and_login("bob", "Bob").await;
    let room = api.create_room(&alice, "Salon").await;
    api.invite(&alice, room, &bob).await;
    let mut a = Ws::connect(&server, &alice.token).await;
    a.join(room).await;
    assert_eq!(a.say(room, "en attente").await["type"], "ack");
    eventually("first attempt refused", || gotify.requests() >= 1).await;
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let st = outbox_stats(&server).await;
        if st.pending == 1 && st.in_flight == 0 {
            break;
        }
        assert!(std::time::Instant::now() < deadline, "{st:?}");
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    let (status, _) = api
        .call(
            "POST",
            &format!("/api/rooms/{room}/leave"),
            Some(&bob.token),
            None,
        )
        .await;
    assert_eq!(status, 204);
    assert_eq!(
        outbox_stats(&server).await.pending,
        0,
        "Bob left: his queued notification is cancelled"
    );
    gotify.set_mode(Mode::Normal);
    assert_eq!(a.say(room, "seule").await["type"], "ack");
    outbox_drained(&server).await;
    assert!(gotify.messages().is_empty());
    server.shutdown().await.unwrap();
}

/// The invitation push speaks the invitee's language (`/api/me/preferences`), not
/// the server's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_invitation_push_is_in_the_invitees_language() {
    let gotify = fake().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), "")).await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;
    let bob = api.register_and_login("bob", "Bob").await;
    bob_uses_his_own_token(&api, &bob).await;
    let (status, body) = api.put_preferences(&bob, json!({"language": "en"})).await;
    assert_eq!(status, 200, "{body}");
    let room = api.create_room(&alice, "Team Chat").await;
    let (status, body) = api.send_invite(&alice, room, "bob").await;
    assert_eq!(status, 201, "{body}");
    eventually("the invitation push", || !pushes_to_bob(&gotify).is_empty()).await;
    outbox_drained(&server).await;
    assert_eq!(
        pushes_to_bob(&gotify),
        vec!["✉️ Invitation from Alice | Alice invites you to Team Chat".to_string()]
    );

    // Carol kept the default: French.
    api.register_and_login("carol", "Carol").await;
    let (status, body) = api.send_invite(&alice, room, "carol").await;
    assert_eq!(status, 201, "{body}");
    eventually("Carol's invitation push", || {
        gotify
            .messages()
            .iter()
            .any(|m| m.title == "✉️ Invitation de Alice")
    })
    .await;
    server.shutdown().await.unwrap();
}
