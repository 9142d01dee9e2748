//! Every device of a user (issue 10), end to end through mesh-server with the
//! loopback FCM and APNs fakes: one chat message reaches all of Bob's phones, a
//! dead FCM token is pruned without touching the others and without duplicates,
//! and an APNs environment mistake never deletes anybody's address.

mod common;

use std::time::Duration;

use common::*;
use mesh_notify_testkit::fcm::FakeFcm;
use mesh_notify_testkit::gotify::FakeGotify;
use mesh_notify_testkit::push::PushFakes;
use serde_json::{json, Value};

const APNS_A: &str = "4f1a0c9e7d1b2a3c4d5e6f708192a3b4c5d6e7f8091a2b3c4d5e6f708192a3b4";
const APNS_B: &str = "9b8a7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9";
const APNS_C: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

struct Fakes {
    gotify: FakeGotify,
    push: PushFakes,
    _dir: tempfile::TempDir,
}

async fn fakes() -> Fakes {
    let dir = tempfile::tempdir().unwrap();
    Fakes {
        gotify: FakeGotify::start(&[(APP_TOKEN, 1)]).await.unwrap(),
        push: PushFakes::start(dir.path()).await.unwrap(),
        _dir: dir,
    }
}

impl Fakes {
    fn extra(&self, chat_route: &str) -> String {
        format!(
            "{}\n[routes]\nchat = {chat_route}\n",
            self.push.providers_toml()
        )
    }
}

async fn add_address(api: &Api, user: &User, kind: &str, value: &str) {
    let (status, body) = api
        .call(
            "POST",
            "/api/me/addresses",
            Some(&user.token),
            Some(json!({"kind": kind, "value": value})),
        )
        .await;
    assert!(status == 201 || status == 200, "{status} {body}");
}

async fn addresses(api: &Api, user: &User) -> Vec<Value> {
    let (status, body) = api
        .call("GET", "/api/me/addresses", Some(&user.token), None)
        .await;
    assert_eq!(status, 200, "{body}");
    body["addresses"].as_array().cloned().unwrap_or_default()
}

/// Alice (connected, in the room) and Bob (absent), members of one room.
async fn scene(server: &mesh_server::ServerHandle) -> (Api, User, User, i64, Ws) {
    let api = Api::new(server);
    let alice = api.register_and_login("alice", "Alice").await;
    let bob = api.register_and_login("bob", "Bob").await;
    let room = api.create_room(&alice, "Team").await;
    api.invite(&alice, room, &bob).await;
    let mut ws = Ws::connect(server, &alice.token).await;
    assert_eq!(ws.join(room).await["type"], "ack");
    (api, alice, bob, room, ws)
}

fn fcm_tokens(f: &FakeFcm) -> Vec<String> {
    f.messages()
        .iter()
        .map(|m| m.message["token"].as_str().unwrap_or("").to_owned())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_gets_it_and_a_dead_token_is_pruned_alone() {
    let f = fakes().await;
    let data = tempfile::tempdir().unwrap();
    let server = start(&figment(
        &f.gotify.url(),
        data.path(),
        &f.extra(r#"["fcm+apns", "gotify"]"#),
    ))
    .await;
    let (api, _alice, bob, room, mut alice_ws) = scene(&server).await;
    add_address(&api, &bob, "fcm", "fcm-pixel").await;
    add_address(&api, &bob, "fcm", "fcm-tablet").await;
    add_address(&api, &bob, "apns", APNS_A).await;

    // One message, three devices.
    assert_eq!(
        alice_ws.say(room, "à tous tes appareils").await["type"],
        "ack"
    );
    eventually("two FCM devices and one iPhone", || {
        f.push.fcm.messages().len() >= 2 && !f.push.apns.delivered().is_empty()
    })
    .await;
    outbox_drained(&server).await;
    let mut tokens = fcm_tokens(&f.push.fcm);
    tokens.sort();
    assert_eq!(tokens, ["fcm-pixel", "fcm-tablet"]);
    assert_eq!(f.push.apns.delivered().len(), 1);
    assert!(
        f.gotify.messages().is_empty(),
        "the devices got it: no fallback"
    );

    // The tablet is uninstalled: its token is pruned, the others still get pushes,
    // and nobody gets anything twice.
    f.push.fcm.unregister("fcm-tablet");
    assert_eq!(alice_ws.say(room, "le deuxième").await["type"], "ack");
    eventually("the others got the second message", || {
        f.push.fcm.messages().len() >= 3 && f.push.apns.delivered().len() >= 2
    })
    .await;
    outbox_drained(&server).await;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left: Vec<String> = addresses(&api, &bob)
            .await
            .iter()
            .map(|a| a["kind"].as_str().unwrap_or("").to_owned())
            .collect();
        if left.iter().filter(|k| *k == "fcm").count() == 1 {
            assert_eq!(left.iter().filter(|k| *k == "apns").count(), 1, "{left:?}");
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not pruned: {left:?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        f.push.fcm.messages().len(),
        3,
        "{:?}",
        fcm_tokens(&f.push.fcm)
    );
    assert_eq!(f.push.apns.delivered().len(), 2);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_apns_environment_mistake_deletes_nothing_and_falls_back() {
    let f = fakes().await;
    f.push.apns.set_wrong_environment(true);
    let data = tempfile::tempdir().unwrap();
    let server = start(&figment(
        &f.gotify.url(),
        data.path(),
        &f.extra(r#"["apns", "gotify"]"#),
    ))
    .await;
    let (api, _alice, bob, room, mut alice_ws) = scene(&server).await;
    for t in [APNS_A, APNS_B, APNS_C] {
        add_address(&api, &bob, "apns", t).await;
    }
    assert_eq!(
        alice_ws.say(room, "mauvais environnement").await["type"],
        "ack"
    );
    eventually("fell back to Gotify", || !f.gotify.messages().is_empty()).await;
    outbox_drained(&server).await;
    assert_eq!(f.gotify.messages()[0].message, "mauvais environnement");
    assert_eq!(addresses(&api, &bob).await.len(), 3, "no address deleted");
    // The provider's health names the likely cause.
    let apns = server
        .dispatcher()
        .providers()
        .into_iter()
        .find(|p| p.name() == "apns")
        .expect("apns enabled");
    match apns.health().await {
        mesh_notify_core::Health::Unhealthy(why) => {
            assert!(why.contains("environment"), "{why}")
        }
        other => panic!("expected unhealthy, got {other:?}"),
    }
    server.shutdown().await.unwrap();
}
