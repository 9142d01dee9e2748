//! Email addresses are verified before use: adding one sends a code through the
//! SMTP provider; the address receives nothing else until the code is entered.

mod common;

use std::sync::{Arc, Mutex};

use common::*;
use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpListener;

/// A minimal SMTP server on loopback keeping every message's DATA.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<Vec<String>>>);

impl Sink {
    async fn start() -> (Self, u16) {
        let sink = Sink::default();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let kept = sink.clone();
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let kept = kept.clone();
                tokio::spawn(async move {
                    let (read, mut write) = stream.into_split();
                    let mut lines = BufReader::new(read).lines();
                    let _ = write.write_all(b"220 sink.test ESMTP\r\n").await;
                    while let Ok(Some(line)) = lines.next_line().await {
                        let verb = line.to_ascii_uppercase();
                        let reply: &[u8] = if verb.starts_with("EHLO") {
                            b"250-sink.test\r\n250 8BITMIME\r\n"
                        } else if verb.starts_with("DATA") {
                            let _ = write.write_all(b"354 go on\r\n").await;
                            let mut data = String::new();
                            while let Ok(Some(l)) = lines.next_line().await {
                                if l == "." {
                                    break;
                                }
                                data.push_str(&l);
                                data.push('\n');
                            }
                            kept.0.lock().unwrap().push(data);
                            b"250 queued\r\n"
                        } else if verb.starts_with("QUIT") {
                            let _ = write.write_all(b"221 bye\r\n").await;
                            break;
                        } else {
                            b"250 ok\r\n"
                        };
                        if write.write_all(reply).await.is_err() {
                            break;
                        }
                    }
                });
            }
        });
        (sink, port)
    }

    fn messages(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }
}

/// The six-digit code in a verification email (quoted-printable soft breaks joined).
fn code_in(message: &str) -> String {
    let text = message.replace("=\n", "");
    let at = text.find("code: ").expect("the email names the code") + "code: ".len();
    let code: String = text[at..].chars().take(6).collect();
    assert!(code.chars().all(|c| c.is_ascii_digit()), "{code}");
    code
}

fn smtp_config(port: u16) -> String {
    format!(
        "language = \"en\"\n[providers.smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"none\"\nfrom = \"Mesh <noreply@mesh.test>\"\n[routes]\nchat = [\"smtp\", \"log\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_email_address_receives_nothing_but_its_code_until_verified() {
    let (sink, port) = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment("", dir.path(), &smtp_config(port))).await;
    let api = Api::new(&server);
    let alice = api.register_and_login("alice", "Alice").await;
    let bob = api.register_and_login("bob", "Bob").await;
    let room = api.create_room(&alice, "Salon").await;
    api.invite(&alice, room, &bob).await;

    let (status, body) = api
        .call(
            "POST",
            "/api/me/addresses",
            Some(&bob.token),
            Some(json!({"kind": "email", "value": "victim@example.com"})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    assert_eq!(body["address"]["verified"], false);
    let id = body["address"]["id"].as_i64().unwrap();
    assert_eq!(sink.messages().len(), 1, "the code, sent at once");
    let code = code_in(&sink.messages()[0]);

    // Unverified: Alice's message does not go to that address.
    let mut a = Ws::connect(&server, &alice.token).await;
    a.join(room).await;
    assert_eq!(a.say(room, "avant").await["type"], "ack");
    outbox_drained(&server).await;
    assert_eq!(sink.messages().len(), 1, "nothing but the code");
    let (_, list) = api
        .call("GET", "/api/me/addresses", Some(&bob.token), None)
        .await;
    assert_eq!(list["addresses"][0]["verified"], false);

    // Asking again at once is refused (one code a minute).
    let (status, body) = api
        .call(
            "POST",
            "/api/me/addresses",
            Some(&bob.token),
            Some(json!({"kind": "email", "value": "victim@example.com"})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("too_many_attempts")),
        "{body}"
    );

    // A wrong code, then the right one.
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let path = format!("/api/me/addresses/{id}/verify");
    let verify = |c: &str| api.call("POST", &path, Some(&bob.token), Some(json!({"code": c})));
    let (status, body) = verify(wrong).await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("code")),
        "{body}"
    );
    let (status, body) = verify(&code).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["address"]["verified"], true);

    // Verified: now it is used.
    assert_eq!(a.say(room, "après").await["type"], "ack");
    eventually("the chat email", || sink.messages().len() == 2).await;
    outbox_drained(&server).await;
    let msgs = sink.messages();
    assert_eq!(msgs.len(), 2);
    assert!(msgs[1].contains("apr"), "{}", msgs[1]);
    server.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrong_codes_void_the_code_and_email_needs_smtp() {
    let (sink, port) = Sink::start().await;
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment("", dir.path(), &smtp_config(port))).await;
    let api = Api::new(&server);
    let bob = api.register_and_login("bob", "Bob").await;
    let (status, body) = api
        .call(
            "POST",
            "/api/me/addresses",
            Some(&bob.token),
            Some(json!({"kind": "email", "value": "bob@example.com"})),
        )
        .await;
    assert_eq!(status, 202, "{body}");
    let id = body["address"]["id"].as_i64().unwrap();
    let code = code_in(&sink.messages()[0]);
    let wrong = if code == "000000" { "111111" } else { "000000" };
    let mut last = Value::Null;
    for _ in 0..5 {
        let (_, body) = api
            .call(
                "POST",
                &format!("/api/me/addresses/{id}/verify"),
                Some(&bob.token),
                Some(json!({"code": wrong})),
            )
            .await;
        last = body;
    }
    assert_eq!(last["code"], "too_many_attempts", "{last}");
    // The right code no longer works: it was void after five wrong ones.
    let (status, body) = api
        .call(
            "POST",
            &format!("/api/me/addresses/{id}/verify"),
            Some(&bob.token),
            Some(json!({"code": code})),
        )
        .await;
    assert_eq!(
        (status, body["field"].as_str()),
        (400, Some("code")),
        "{body}"
    );
    server.shutdown().await.unwrap();

    // Without an SMTP provider, email addresses are refused outright.
    let dir = tempfile::tempdir().unwrap();
    let server = start(&figment("", dir.path(), "")).await;
    let api = Api::new(&server);
    let bob = api.register_and_login("bob", "Bob").await;
    let (status, body) = api
        .call(
            "POST",
            "/api/me/addresses",
            Some(&bob.token),
            Some(json!({"kind": "email", "value": "bob@example.com"})),
        )
        .await;
    assert_eq!(
        (status, body["code"].as_str(), body["field"].as_str()),
        (409, Some("email_unavailable"), Some("kind")),
        "{body}"
    );
    server.shutdown().await.unwrap();
}
