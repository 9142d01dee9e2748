//! The web client in headless Chromium: people register, chat, call and share
//! files through the page served at `/`, against mesh-server in-process and the
//! fake Gotify. The seed's Tests 2 and 3 as a person would do them, the room
//! life cycle, every screen without console errors, and the README's
//! screenshots (`docs/screenshots/`).
//!
//! Needs Debian's `chromium` and `chromium-driver` (`scripts/test` installs them).

mod browser;
mod common;

use browser::{screenshots_dir, Browser, Driver, DESKTOP, ONE_AT_A_TIME, PHONE};
use common::*;
use mesh_notify_testkit::gotify::FakeGotify;
use mesh_server::ServerHandle;

/// Console errors the client may cause on purpose: none (every screen, the
/// preferences section included, must load without one).
const EXPECTED: &[&str] = &[];

struct Web {
    gotify: FakeGotify,
    server: ServerHandle,
    driver: Driver,
    base: String,
    _dir: tempfile::TempDir,
}

async fn web() -> Web {
    web_with("").await
}

/// With `extra` configuration (TOML) over the tests' defaults.
async fn web_with(extra: &str) -> Web {
    let gotify = FakeGotify::start(&[(APP_TOKEN, 1), ("alice-gotify-token", 2)])
        .await
        .expect("fake gotify");
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment(&gotify.url(), dir.path(), extra)).await;
    let base = format!("http://{}", server.addr());
    let driver = Driver::start().await;
    Web {
        gotify,
        server,
        driver,
        base,
        _dir: dir,
    }
}

impl Web {
    async fn browser(&self, name: &str, size: (u32, u32)) -> Browser {
        self.driver.browser(name, &self.base, size).await
    }

    async fn finish(self, browsers: Vec<Browser>) {
        for b in browsers {
            b.close().await;
        }
        self.server.shutdown().await.unwrap();
    }
}

fn password(username: &str) -> String {
    format!("pw-{username}-secret")
}

fn js_str(s: &str) -> String {
    serde_json::to_string(s).unwrap()
}

async fn signed_in(b: &Browser) {
    b.wait_js(
        "the home screen with its WebSocket open",
        "document.body.dataset.screen === 'home' && document.body.dataset.ws === 'open'",
    )
    .await;
}

async fn register(b: &Browser, username: &str) {
    b.goto("/").await;
    b.fill("#register-username", username).await;
    b.fill("#register-password", &password(username)).await;
    b.click("#register-submit").await;
    signed_in(b).await;
}

async fn log_in(b: &Browser, username: &str) {
    b.fill("#login-username", username).await;
    b.fill("#login-password", &password(username)).await;
    b.click("#login-submit").await;
    signed_in(b).await;
}

/// Creates a room from the sidebar; returns its id once it is open.
async fn create_room(b: &Browser, name: &str) -> i64 {
    b.fill("#new-room-name", name).await;
    b.click("#create-room").await;
    let v = b
        .wait_js(
            "the new room open",
            &format!(
                "document.getElementById('room-title').textContent === {} && !document.getElementById('chat-room').hidden && Number(document.getElementById('chat-room').dataset.roomId)",
                js_str(name)
            ),
        )
        .await;
    v.as_i64().expect("room id")
}

async fn invite(b: &Browser, username: &str) {
    b.fill("#invite-username", username).await;
    b.click("#invite-submit").await;
    b.wait_js(
        "the invitation sent",
        &format!(
            "document.getElementById('notice').textContent.includes({})",
            js_str(username)
        ),
    )
    .await;
}

async fn open_room(b: &Browser, room: i64) {
    b.click(&format!("button.room[data-room-id='{room}']"))
        .await;
    b.wait_js(
        "the room open",
        &format!("document.getElementById('chat-room').dataset.roomId === '{room}' && !document.getElementById('chat-room').hidden"),
    )
    .await;
}

/// Sends `text` from the composer and waits for the server's acknowledgement.
async fn say(b: &Browser, text: &str) {
    b.fill("#message-input", text).await;
    b.click("#send").await;
    b.wait_js(
        "the message acknowledged",
        &format!(
            "Array.from(document.querySelectorAll('#messages .message.mine[data-message-id]:not(.pending)')).some(li => li.querySelector('.text').textContent === {})",
            js_str(text)
        ),
    )
    .await;
}

async fn sees_message(b: &Browser, text: &str) {
    b.wait_js(
        &format!("the message {text:?}"),
        &format!(
            "Array.from(document.querySelectorAll('#messages .message .text')).some(e => e.textContent === {})",
            js_str(text)
        ),
    )
    .await;
}

/// Waits until the open room's other members are shown online (or all offline).
async fn peer_online(b: &Browser, online: bool) {
    let expr = if online {
        "document.querySelectorAll('#member-list [data-online=\"true\"]').length > 0"
    } else {
        "document.querySelectorAll('#member-list [data-online=\"true\"]').length === 0 && document.querySelectorAll('#member-list [data-online]').length > 0"
    };
    b.wait_js(
        if online {
            "a peer online"
        } else {
            "no peer online"
        },
        expr,
    )
    .await;
}

/// Closes the Mesh tab (its WebSocket with it), keeping the browser open on a
/// blank tab.
async fn close_tab(b: &Browser) {
    let blank = b.client.new_window(true).await.expect("new tab").handle;
    b.client.close_window().await.expect("close the tab");
    b.client
        .switch_to_window(blank)
        .await
        .expect("switch to the blank tab");
}

/// Alice and Bob registered in two browsers; Alice creates `room` and invites Bob,
/// who accepts while he is online (so the invitation is not pushed).
async fn alice_and_bob(web: &Web, room: &str, bob_size: (u32, u32)) -> (Browser, Browser, i64) {
    let alice = web.browser("alice", DESKTOP).await;
    let bob = web.browser("bob", bob_size).await;
    register(&alice, "alice").await;
    register(&bob, "bob").await;
    let id = create_room(&alice, room).await;
    invite(&alice, "bob").await;
    bob.click(".invite .accept-invite").await;
    bob.wait_js(
        "the accepted room open",
        &format!("document.getElementById('chat-room').dataset.roomId === '{id}'"),
    )
    .await;
    peer_online(&alice, true).await;
    peer_online(&bob, true).await;
    (alice, bob, id)
}

fn shot(name: &str) -> std::path::PathBuf {
    screenshots_dir().join(name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_test_2_in_the_browser_bob_closes_his_tab_and_gets_one_push() {
    let _one = ONE_AT_A_TIME.lock().await;
    let web = web().await;
    let (alice, bob, _room) = alice_and_bob(&web, "Test Gotify", DESKTOP).await;

    say(&alice, "Tu es là ?").await;
    sees_message(&bob, "Tu es là ?").await;
    assert!(
        web.gotify.messages().is_empty(),
        "Bob saw it live: nothing pushed (nor for the invitation)"
    );

    close_tab(&bob).await;
    peer_online(&alice, false).await;
    say(&alice, "Salut Bob !").await;

    eventually("one push at the fake Gotify", || {
        web.gotify.messages().len() == 1
    })
    .await;
    outbox_drained(&web.server).await;
    let msgs = web.gotify.messages();
    assert_eq!(msgs.len(), 1, "exactly one push: {msgs:?}");
    // The default fr template `💬 {from} dans {room}`, from = display name
    // (the username when none was given at registration).
    assert_eq!(msgs[0].title, "💬 alice dans Test Gotify");
    assert_eq!(msgs[0].message, "Salut Bob !");
    assert_eq!(msgs[0].priority, Some(6));

    alice.assert_no_console_errors("chat", EXPECTED).await;
    bob.assert_no_console_errors("chat", EXPECTED).await;
    web.finish(vec![alice, bob]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_test_3_in_the_browser_call_push_when_offline_then_a_connected_call() {
    let _one = ONE_AT_A_TIME.lock().await;
    let web = web().await;
    let (alice, bob, room) = alice_and_bob(&web, "Appels", DESKTOP).await;

    // Bob offline: Alice's call rings him by push, once.
    close_tab(&bob).await;
    peer_online(&alice, false).await;
    alice.click("#call-video").await;
    alice
        .wait_js(
            "the call ended as the callee is offline",
            "document.getElementById('call-panel').dataset.state === 'ended' && document.getElementById('call-status').textContent.includes('notification')",
        )
        .await;
    eventually("one call push", || web.gotify.messages().len() == 1).await;
    outbox_drained(&web.server).await;
    let msgs = web.gotify.messages();
    assert_eq!(msgs.len(), 1, "{msgs:?}");
    assert_eq!(msgs[0].title, "📞 Appel audio/vidéo de alice");
    assert_eq!(msgs[0].message, "Appel entrant dans Appels");
    assert_eq!(msgs[0].priority, Some(8));

    // Bob is back (his session is remembered); the call connects both ways.
    bob.goto("/").await;
    signed_in(&bob).await;
    open_room(&bob, room).await;
    peer_online(&alice, true).await;
    alice.click("#call-video").await;
    bob.wait_js(
        "the incoming call",
        "document.getElementById('call-panel').dataset.phase === 'incoming'",
    )
    .await;
    bob.click("#accept-call").await;
    for b in [&alice, &bob] {
        b.wait_js(
            "RTCPeerConnection.connectionState == connected",
            "document.getElementById('call-panel').dataset.state === 'connected'",
        )
        .await;
        b.wait_js(
            "remote audio and video",
            "(() => { const s = document.getElementById('remote-video').srcObject; return s && s.getAudioTracks().length === 1 && s.getVideoTracks().length === 1; })()",
        )
        .await;
        b.wait_js(
            "the remote video playing",
            "document.getElementById('remote-video').videoWidth > 0",
        )
        .await;
    }
    alice.screenshot(&shot("call.png")).await;

    alice.click("#hangup").await;
    for b in [&alice, &bob] {
        b.wait_js(
            "the call hung up",
            "document.getElementById('call-panel').dataset.state === 'ended' && document.getElementById('local-video').srcObject === null && document.getElementById('remote-video').srcObject === null",
        )
        .await;
    }
    assert_eq!(
        web.gotify.messages().len(),
        1,
        "no push for the connected call"
    );
    alice.assert_no_console_errors("call", EXPECTED).await;
    bob.assert_no_console_errors("call", EXPECTED).await;
    web.finish(vec![alice, bob]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_invitations_live_chat_files_and_history_after_reload() {
    let _one = ONE_AT_A_TIME.lock().await;
    // The history is filled at once from a WebSocket: above the default burst.
    let web = web_with("[server]\nmessage_burst = 100").await;
    let alice = web.browser("alice", DESKTOP).await;
    // Bob is on a phone-sized screen.
    let bob = web.browser("bob", PHONE).await;

    // Register, log out, log in again.
    register(&alice, "alice").await;
    alice.click("#logout").await;
    alice
        .wait_js(
            "the login screen",
            "document.body.dataset.screen === 'auth'",
        )
        .await;
    log_in(&alice, "alice").await;
    register(&bob, "bob").await;

    // A declined invitation leaves no room.
    let declined = create_room(&alice, "Refusé").await;
    invite(&alice, "bob").await;
    bob.click(".invite .decline-invite").await;
    bob.wait_js(
        "the invitation gone",
        "document.querySelectorAll('.invite').length === 0",
    )
    .await;
    assert_eq!(
        bob.js(&format!(
            "return document.querySelectorAll(\"button.room[data-room-id='{declined}']\").length;"
        ))
        .await,
        0
    );

    // Accepted: both in "Projet", chat both ways, live.
    let room = create_room(&alice, "Projet").await;
    invite(&alice, "bob").await;
    bob.click(".invite .accept-invite").await;
    bob.wait_js(
        "the room open",
        &format!("document.getElementById('chat-room').dataset.roomId === '{room}'"),
    )
    .await;
    peer_online(&alice, true).await;
    say(&alice, "Bonjour Bob <b>pas du HTML</b>").await;
    sees_message(&bob, "Bonjour Bob <b>pas du HTML</b>").await;
    say(&bob, "Salut Alice !").await;
    sees_message(&alice, "Salut Alice !").await;
    assert_eq!(
        bob.js("return document.querySelectorAll('#messages b').length;")
            .await,
        0,
        "message text is never parsed as HTML"
    );

    // Unread count: Alice writes in a room Bob is not looking at.
    open_room(&alice, declined).await;
    invite(&alice, "bob").await;
    bob.goto("/").await; // back to the room list on the phone
    signed_in(&bob).await;
    bob.click(".invite .accept-invite").await;
    bob.wait_js(
        "the room open",
        &format!("document.getElementById('chat-room').dataset.roomId === '{declined}'"),
    )
    .await;
    open_room(&alice, room).await;
    say(&alice, "Tu as vu ?").await;
    bob.click("#back").await;
    bob.wait_js(
        "one unread in Projet",
        &format!("document.querySelector(\"button.room[data-room-id='{room}'] .badge\")?.dataset.unread === '1'"),
    )
    .await;
    bob.screenshot(&shot("rooms-phone.png")).await;
    open_room(&bob, room).await;
    sees_message(&bob, "Tu as vu ?").await;
    bob.wait_js(
        "the badge cleared",
        &format!("!document.querySelector(\"button.room[data-room-id='{room}'] .badge\")"),
    )
    .await;

    // A file: announced by `file.share`, sent over an RTCDataChannel.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("notes.txt");
    let content: String = (0..5000).map(|i| format!("ligne {i}\n")).collect();
    std::fs::write(&file, &content).unwrap();
    alice.choose_file("#file-input", &file).await;
    let li = "#messages .message[data-kind='file']:not(.mine)";
    bob.wait_visible(&format!("{li} .receive-file")).await;
    bob.click(&format!("{li} .receive-file")).await;
    bob.wait_js(
        "the file received",
        &format!("document.querySelector(\"{li}\").dataset.transfer === 'done'"),
    )
    .await;
    let link = bob
        .js(&format!(
            "const a = document.querySelector(\"{li} a.save-file\"); return [a.download, a.href];"
        ))
        .await;
    assert_eq!(link[0], "notes.txt");
    // The page may not fetch `blob:` (connect-src 'self'): open it in a tab.
    let chat_tab = bob.client.window().await.unwrap();
    let tab = bob.client.new_window(true).await.unwrap().handle;
    bob.client.switch_to_window(tab).await.unwrap();
    bob.client.goto(link[1].as_str().unwrap()).await.unwrap();
    let text = bob.js("return document.body.innerText;").await;
    assert_eq!(
        text.as_str().map(str::trim_end),
        Some(content.trim_end()),
        "the same bytes"
    );
    bob.client.close_window().await.unwrap();
    bob.client.switch_to_window(chat_tab).await.unwrap();
    alice.screenshot(&shot("chat.png")).await;
    bob.screenshot(&shot("chat-phone.png")).await;

    // History: 35 more messages (from another of Alice's clients), then Bob
    // reloads: the newest 30, then older ones on demand, in order.
    let api = Api::new(&web.server);
    let (status, body) = api
        .call(
            "POST",
            "/api/login",
            None,
            Some(serde_json::json!({"username": "alice", "password": password("alice")})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let mut ws = Ws::connect(&web.server, body["token"].as_str().unwrap()).await;
    for i in 1..=35 {
        let ack = ws.say(room, &format!("n°{i}")).await;
        assert_eq!(ack["type"], "ack", "{ack}");
    }
    ws.close().await;
    sees_message(&bob, "n°35").await;
    bob.client.refresh().await.unwrap();
    signed_in(&bob).await;
    open_room(&bob, room).await;
    sees_message(&bob, "n°35").await;
    let shown = bob.texts("#messages .message .text").await;
    assert_eq!(shown.len(), 30, "{shown:?}");
    assert_eq!(shown[0], "n°6");
    bob.click("#older").await;
    sees_message(&bob, "Bonjour Bob <b>pas du HTML</b>").await;
    let shown = bob.texts("#messages .message .text").await;
    let first = shown
        .iter()
        .position(|t| t == "Bonjour Bob <b>pas du HTML</b>")
        .unwrap();
    assert_eq!(shown[first + 1], "Salut Alice !");
    assert_eq!(shown.last().unwrap(), "n°35");
    assert!(
        shown.windows(2).all(|w| w[0] != w[1]),
        "no duplicates after paging"
    );
    bob.wait_js("no more pages", "document.getElementById('older').hidden")
        .await;

    alice.assert_no_console_errors("chat", EXPECTED).await;
    bob.assert_no_console_errors("chat", EXPECTED).await;
    web.finish(vec![alice, bob]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_screen_renders_without_console_errors_in_french_and_english() {
    let _one = ONE_AT_A_TIME.lock().await;
    let web = web().await;
    let alice = web.browser("alice", DESKTOP).await;

    alice.goto("/").await;
    alice.wait_visible("#login-form").await;
    assert_eq!(
        alice.js("return document.documentElement.lang;").await,
        "fr"
    );
    assert_eq!(
        alice.texts("#login-form h3").await,
        vec!["Se connecter".to_string()]
    );
    alice.assert_no_console_errors("login", &[]).await;
    alice.screenshot(&shot("login.png")).await;

    // Every control has an accessible name.
    let unnamed = alice
        .js("return Array.from(document.querySelectorAll('input:not([type=hidden]), select, textarea, button')).filter(e => !(e.labels && e.labels.length) && !e.getAttribute('aria-label') && !e.textContent.trim()).map(e => e.id || e.outerHTML.slice(0, 60));")
        .await;
    assert_eq!(unnamed, serde_json::json!([]), "controls without a label");

    // English, then back.
    alice
        .js("const s = document.getElementById('lang'); s.value = 'en'; s.dispatchEvent(new Event('change')); return null;")
        .await;
    assert_eq!(
        alice.texts("#login-form h3").await,
        vec!["Log in".to_string()]
    );
    assert_eq!(
        alice.js("return document.documentElement.lang;").await,
        "en"
    );
    alice
        .js("const s = document.getElementById('lang'); s.value = 'fr'; s.dispatchEvent(new Event('change')); return null;")
        .await;

    register(&alice, "alice").await;
    alice.assert_no_console_errors("home", &[]).await;
    create_room(&alice, "Salon").await;
    alice.assert_no_console_errors("room", &[]).await;

    // Notification settings: a Gotify token, then a test push through it.
    alice.click("#open-settings").await;
    alice
        .wait_js(
            "the settings screen",
            "document.body.dataset.screen === 'settings' && !document.getElementById('prefs-form').hidden",
        )
        .await;
    // Preferences: mute the room, quiet hours on, saved through PUT /api/me/preferences.
    alice.click("#muted-rooms input[type=checkbox]").await;
    alice.click("#quiet-enabled").await;
    alice.fill("#quiet-timezone", "Europe/Paris").await;
    alice.click("#prefs-save").await;
    alice
        .wait_js(
            "the preferences saved",
            "document.getElementById('prefs-result').dataset.kind === 'ok'",
        )
        .await;
    let alice_token: String = serde_json::from_value(
        alice
            .wait_js("the session token", "localStorage.getItem('mesh.token')")
            .await,
    )
    .expect("the session token is a string");
    let (status, prefs) = Api::new(&web.server)
        .call("GET", "/api/me/preferences", Some(&alice_token), None)
        .await;
    assert_eq!(status, 200, "{prefs}");
    assert_eq!(
        prefs["muted_rooms"].as_object().map(|m| m.len()),
        Some(1),
        "{prefs}"
    );
    assert_eq!(prefs["quiet_hours"]["timezone"], "Europe/Paris", "{prefs}");
    alice.fill("#gotify-token", "alice-gotify-token").await;
    alice.click("#gotify-add").await;
    alice
        .wait_js(
            "the token listed",
            "document.querySelectorAll('#address-list li[data-kind=\"gotify\"]').length === 1",
        )
        .await;
    alice.click("#test-push").await;
    alice
        .wait_js(
            "the test push sent",
            "document.getElementById('test-push-result').dataset.kind === 'ok'",
        )
        .await;
    eventually("the test push at Gotify", || {
        web.gotify.messages().len() == 1
    })
    .await;
    let m = &web.gotify.messages()[0];
    assert_eq!(m.title, "🔔 Notification de test Mesh");
    assert_eq!(m.token, "alice-gotify-token");
    alice.screenshot(&shot("settings.png")).await;
    alice.assert_no_console_errors("settings", EXPECTED).await;
    alice.click("#close-settings").await;
    alice
        .wait_js("home again", "document.body.dataset.screen === 'home'")
        .await;

    // The phone layout: the room list, then the room.
    alice
        .client
        .set_window_size(PHONE.0, PHONE.1)
        .await
        .unwrap();
    alice.click("#back").await;
    alice.wait_visible("#room-list").await;
    assert!(
        alice
            .js("return document.documentElement.scrollWidth <= window.innerWidth;")
            .await
            .as_bool()
            .unwrap(),
        "no horizontal scrolling on a phone"
    );
    alice.assert_no_console_errors("phone", &[]).await;
    web.finish(vec![alice]).await;
}
