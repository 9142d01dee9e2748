//! Plays the seed's Test 2 against a running mesh-server:
//! Alice and Bob register, Alice creates "Test Gotify" and invites Bob, Bob accepts
//! and joins, then disconnects, Alice writes → Bob gets one push notification.
//!
//! ```sh
//! cargo run --release -p mesh-server                       # terminal 1
//! cargo run -p mesh-server --example seed_test2            # terminal 2
//! cargo run -p mesh-server --example seed_test2 -- http://127.0.0.1:8080
//! ```

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type Error = Box<dyn std::error::Error>;

async fn post(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> Result<(u16, Value), Error> {
    let mut req = http.post(url);
    if !body.is_null() {
        req = req.json(&body);
    }
    if let Some(t) = token {
        req = req.bearer_auth(t);
    }
    let resp = req.send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.unwrap_or(Value::Null)))
}

/// A single-use WebSocket ticket for the session `token` (`/ws?ticket=`: the way a
/// browser connects; the session token itself never goes into a URL).
async fn ws_url(http: &reqwest::Client, base: &str, token: &str) -> Result<String, Error> {
    let (status, answer) = post(
        http,
        format!("{base}/api/ws-ticket"),
        Some(token),
        Value::Null,
    )
    .await?;
    match answer["ticket"].as_str() {
        Some(t) if status == 200 => Ok(format!("{}/ws?ticket={t}", base.replacen("http", "ws", 1))),
        _ => Err(format!("ws-ticket: {status} {answer}").into()),
    }
}

/// Registers (unless the name exists) and logs in; returns the session token.
async fn account(
    http: &reqwest::Client,
    base: &str,
    username: &str,
    display: &str,
) -> Result<String, Error> {
    let password = format!("{username}-example-password");
    let body = json!({"username": username, "password": password, "display_name": display});
    let (status, answer) = post(http, format!("{base}/api/register"), None, body).await?;
    if status != 201 && status != 409 {
        return Err(format!("register {username}: {status} {answer}").into());
    }
    let (status, answer) = post(
        http,
        format!("{base}/api/login"),
        None,
        json!({"username": username, "password": password}),
    )
    .await?;
    match answer["token"].as_str() {
        Some(t) if status == 200 => Ok(t.to_string()),
        _ => Err(format!("login {username}: {status} {answer}").into()),
    }
}

async fn next_of_type<S>(ws: &mut S, ty: &str) -> Result<Value, Error>
where
    S: StreamExt<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    while let Some(msg) = ws.next().await {
        if let Message::Text(t) = msg? {
            let v: Value = serde_json::from_str(t.as_str())?;
            if v["type"] == ty || v["type"] == "error" {
                return Ok(v);
            }
        }
    }
    Err(format!("connection closed before `{ty}`").into())
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Error> {
    let base = std::env::args()
        .nth(1)
        .unwrap_or_else(|| "http://127.0.0.1:8080".into());
    let http = reqwest::Client::new();

    let alice = account(&http, &base, "alice", "Alice").await?;
    let bob = account(&http, &base, "bob", "Bob").await?;
    let (_, room) = post(
        &http,
        format!("{base}/api/rooms"),
        Some(&alice),
        json!({"name": "Test Gotify"}),
    )
    .await?;
    let room_id = room["room"]["id"].as_i64().ok_or("no room id")?;

    // Bob is connected when Alice invites him: the invitation reaches him live
    // (`room.invited`); he is a member only once he accepts it.
    let (mut b, _) = tokio_tungstenite::connect_async(ws_url(&http, &base, &bob).await?).await?;
    // One round trip (an unknown event type gets an error back): the server has
    // registered Bob's connection.
    b.send(Message::text(json!({"type": "sync"}).to_string()))
        .await?;
    next_of_type(&mut b, "error").await?;
    let (status, invite) = post(
        &http,
        format!("{base}/api/rooms/{room_id}/invite"),
        Some(&alice),
        json!({"username": "bob"}),
    )
    .await?;
    if status != 201 && status != 200 {
        return Err(format!("invite bob: {status} {invite}").into());
    }
    let invite_id = invite["invite"]["id"].as_i64().ok_or("no invite id")?;
    if status == 201 {
        let ev = next_of_type(&mut b, "room.invited").await?;
        println!("Bob is invited: {ev}");
    }
    let (status, accepted) = post(
        &http,
        format!("{base}/api/invites/{invite_id}/accept"),
        Some(&bob),
        Value::Null,
    )
    .await?;
    if status != 200 {
        return Err(format!("accept: {status} {accepted}").into());
    }
    println!("room {room_id} \"Test Gotify\" created, Bob invited and accepted");

    let (mut a, _) = tokio_tungstenite::connect_async(ws_url(&http, &base, &alice).await?).await?;
    a.send(Message::text(
        json!({"type": "room.join", "room_id": room_id}).to_string(),
    ))
    .await?;
    next_of_type(&mut a, "ack").await?;

    b.send(Message::text(
        json!({"type": "room.join", "room_id": room_id}).to_string(),
    ))
    .await?;
    next_of_type(&mut b, "ack").await?;
    println!("Bob joined the room; now Bob disconnects");
    b.close(None).await?;
    loop {
        let ev = next_of_type(&mut a, "presence").await?;
        if ev["status"] == "left" && ev["user"]["username"] == "bob" {
            println!("Alice sees Bob leave: {ev}");
            break;
        }
    }

    let text = "Salut Bob, tu as un message dans Test Gotify !";
    a.send(Message::text(
        json!({"type": "chat.message.send", "room_id": room_id, "text": text}).to_string(),
    ))
    .await?;
    let ack = next_of_type(&mut a, "ack").await?;
    println!("Alice's message stored: {ack}");
    println!("Bob is absent: expect one Gotify notification \"💬 Alice dans Test Gotify\" (priority 6, click mesh://room/{room_id}),");
    println!("or, without Gotify configured, a line from the log provider in the server's output.");
    a.close(None).await?;
    Ok(())
}
