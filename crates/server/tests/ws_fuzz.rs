//! Property test of the WebSocket event decoder, end to end: arbitrary frames (any
//! text, arbitrary JSON, plausible events with wrong field types, binary) never
//! crash the connection, and every refusal is an `error` event with a code and a
//! message. Bounded (`cases`) so that CI stays fast.

mod common;

use common::*;
use futures_util::SinkExt;
use proptest::prelude::*;
use proptest::test_runner::{Config as ProptestConfig, TestCaseError, TestRunner};
use serde_json::{json, Map, Value};
use tokio_tungstenite::tungstenite::Message;

const TYPES: &[&str] = &[
    "room.join",
    "room.leave",
    "chat.message.send",
    "file.share",
    "rtc.offer",
    "rtc.answer",
    "rtc.ice",
    "chat.delete",
    "",
];

const FIELDS: &[&str] = &[
    "room_id",
    "to",
    "text",
    "client_id",
    "sdp",
    "candidate",
    "call_id",
    "name",
    "size",
    "mime",
    "from",
    "type",
];

fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|i| json!(i)),
        any::<f64>()
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| json!(f)),
        ".{0,30}".prop_map(Value::String),
        Just(json!(1)),
        Just(json!("alice")),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(".{0,8}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A plausible event: a known (or unknown) type and a few known fields with
/// values of any JSON type.
fn event() -> impl Strategy<Value = Value> {
    (
        prop::sample::select(TYPES),
        prop::collection::vec((prop::sample::select(FIELDS), json_value()), 0..6),
    )
        .prop_map(|(ty, fields)| {
            let mut obj = Map::new();
            obj.insert("type".into(), json!(ty));
            for (k, v) in fields {
                obj.insert(k.to_string(), v);
            }
            Value::Object(obj)
        })
}

fn frame() -> impl Strategy<Value = Message> {
    prop_oneof![
        ".{0,120}".prop_map(Message::text),
        json_value().prop_map(|v| Message::text(v.to_string())),
        event().prop_map(|v| Message::text(v.to_string())),
        prop::collection::vec(any::<u8>(), 0..64).prop_map(Message::binary),
    ]
}

#[test]
fn arbitrary_frames_get_clear_errors_and_never_break_the_connection() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let gotify = rt
        .block_on(mesh_notify_testkit::gotify::FakeGotify::start(&[(
            APP_TOKEN, 1,
        )]))
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let extra = "[server]\nmessages_per_second = 100000.0\nmessage_burst = 100000";
    let server = rt.block_on(start(&figment(&gotify.url(), dir.path(), extra)));
    let (ws, room) = rt.block_on(async {
        let api = Api::new(&server);
        let alice = api.register_and_login("alice", "Alice").await;
        let bob = api.register_and_login("bob", "Bob").await;
        let room = api.create_room(&alice, "Fuzz").await;
        api.invite(&alice, room, &bob).await;
        let mut ws = Ws::connect(&server, &alice.token).await;
        ws.join(room).await;
        (ws, room)
    });
    assert_eq!(room, 1, "fuzzed events name room 1 often");
    let ws = tokio::sync::Mutex::new(ws);
    let mut runner = TestRunner::new(ProptestConfig {
        cases: 300,
        failure_persistence: None,
        ..ProptestConfig::default()
    });
    let result = runner.run(&frame(), |msg| {
        rt.block_on(async {
            let mut ws = ws.lock().await;
            let shown = format!("{msg:?}");
            ws.ws
                .send(msg)
                .await
                .map_err(|e| TestCaseError::fail(format!("send {shown}: {e}")))?;
            // A sync after it: every answer to the frame comes before the sync's.
            ws.send(json!({"type": "sync"})).await;
            loop {
                let v = ws.next().await;
                if v["type"] == "error" {
                    let code = v["code"].as_str().unwrap_or("");
                    let message = v["message"].as_str().unwrap_or("");
                    if code.is_empty() || message.is_empty() {
                        return Err(TestCaseError::fail(format!(
                            "unclear error {v} for {shown}"
                        )));
                    }
                    if code == "internal" {
                        return Err(TestCaseError::fail(format!("internal error for {shown}")));
                    }
                    if v["for"] == "sync"
                        || (code == "unknown_type"
                            && v["field"] == "type"
                            && message.contains("`sync`"))
                    {
                        return Ok(());
                    }
                }
            }
        })
    });
    if let Err(e) = result {
        panic!("{e}");
    }
    rt.block_on(server.shutdown()).unwrap();
}
