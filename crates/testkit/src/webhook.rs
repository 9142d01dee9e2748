//! A loopback webhook receiver that verifies Standard Webhooks signatures
//! (<https://www.standardwebhooks.com>) with an implementation of its own
//! (HMAC-SHA256 written out over `sha2`, independent of the provider's
//! aws-lc-rs):
//!
//! * `webhook-id`, `webhook-timestamp` and `webhook-signature` are required
//!   (400 without them);
//! * the timestamp must be within 5 minutes of now (400 otherwise);
//! * one of the space-separated `v1,<base64>` signatures must be the HMAC of
//!   `{id}.{timestamp}.{body}` under the secret (401 otherwise);
//! * then it answers the status set for the path (default 204).
//!
//! Any path is accepted, so each recipient can have their own URL
//! (`{url}/hooks/bob`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Router;
use base64::engine::general_purpose::STANDARD;
use base64::Engine as _;
use serde_json::Value;
use sha2::{Digest, Sha256};

use crate::harness::LoopbackServer;

/// How a path answers once the signature is verified.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// This status (2xx: accepted), with an optional `Retry-After`.
    Status(u16, Option<String>),
    /// Never answer.
    Hang,
}

/// A delivery the receiver verified and accepted (or answered as set).
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The request path.
    pub path: String,
    /// `webhook-id`.
    pub id: String,
    /// `webhook-timestamp`.
    pub timestamp: i64,
    /// The JSON body.
    pub payload: Value,
    /// The status answered.
    pub status: u16,
}

#[derive(Default)]
struct Inner {
    answers: HashMap<String, Answer>,
    deliveries: Vec<Delivery>,
    rejected: Vec<(u16, String)>,
}

#[derive(Clone)]
struct Shared {
    key: Arc<Vec<u8>>,
    inner: Arc<Mutex<Inner>>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running webhook receiver on loopback.
pub struct FakeWebhookReceiver {
    server: LoopbackServer,
    shared: Shared,
}

impl FakeWebhookReceiver {
    /// A receiver verifying with `secret` (`whsec_…`).
    pub async fn start(secret: &str) -> std::io::Result<Self> {
        let b64 = secret.strip_prefix("whsec_").unwrap_or(secret);
        let key = STANDARD
            .decode(b64)
            .map_err(|e| std::io::Error::other(format!("bad secret: {e}")))?;
        let shared = Shared {
            key: Arc::new(key),
            inner: Arc::default(),
        };
        let app = Router::new().fallback(receive).with_state(shared.clone());
        let server = LoopbackServer::start(app).await?;
        Ok(Self { server, shared })
    }

    /// Base URL, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// How `path` answers from now on.
    pub fn answer(&self, path: &str, answer: Answer) {
        self.shared.lock().answers.insert(path.to_string(), answer);
    }

    /// Verified deliveries so far.
    pub fn deliveries(&self) -> Vec<Delivery> {
        self.shared.lock().deliveries.clone()
    }

    /// Requests refused before the answer (status, why).
    pub fn rejected(&self) -> Vec<(u16, String)> {
        self.shared.lock().rejected.clone()
    }
}

/// HMAC-SHA256 (RFC 2104), written out.
fn hmac_sha256(key: &[u8], message: &[u8]) -> [u8; 32] {
    const BLOCK: usize = 64;
    let mut k = [0u8; BLOCK];
    if key.len() > BLOCK {
        k[..32].copy_from_slice(&Sha256::digest(key));
    } else {
        k[..key.len()].copy_from_slice(key);
    }
    let pad = |byte: u8| k.map(|b| b ^ byte);
    let inner = Sha256::new()
        .chain_update(pad(0x36))
        .chain_update(message)
        .finalize();
    Sha256::new()
        .chain_update(pad(0x5c))
        .chain_update(inner)
        .finalize()
        .into()
}

/// The expected `v1,…` signature for a message.
pub fn expected_signature(key: &[u8], id: &str, timestamp: i64, body: &[u8]) -> String {
    let mut content = format!("{id}.{timestamp}.").into_bytes();
    content.extend_from_slice(body);
    format!("v1,{}", STANDARD.encode(hmac_sha256(key, &content)))
}

async fn receive(
    State(shared): State<Shared>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let reject = |status: u16, why: &str| {
        shared.lock().rejected.push((status, why.to_string()));
        (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            why.to_string(),
        )
            .into_response()
    };
    let (Some(id), Some(ts), Some(sigs)) = (
        header("webhook-id"),
        header("webhook-timestamp"),
        header("webhook-signature"),
    ) else {
        return reject(400, "missing webhook headers");
    };
    let Ok(timestamp) = ts.parse::<i64>() else {
        return reject(400, "invalid webhook-timestamp");
    };
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    if (now - timestamp).abs() > 300 {
        return reject(400, "timestamp outside the tolerance");
    }
    let expected = expected_signature(&shared.key, &id, timestamp, &body);
    if !sigs.split(' ').any(|s| s == expected) {
        return reject(401, "no matching signature");
    }
    let Ok(payload) = serde_json::from_slice::<Value>(&body) else {
        return reject(400, "body is not JSON");
    };
    let path = uri.path().to_string();
    let answer = shared
        .lock()
        .answers
        .get(&path)
        .cloned()
        .unwrap_or(Answer::Status(204, None));
    let (status, retry_after) = match answer {
        Answer::Hang => return std::future::pending().await,
        Answer::Status(s, r) => (s, r),
    };
    shared.lock().deliveries.push(Delivery {
        path,
        id,
        timestamp,
        payload,
        status,
    });
    let mut response = StatusCode::from_u16(status)
        .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
        .into_response();
    if let Some(r) = retry_after.and_then(|r| r.parse().ok()) {
        response.headers_mut().insert("retry-after", r);
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hmac_matches_the_standard_webhooks_reference_vector() {
        let key = STANDARD.decode("MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw").unwrap();
        assert_eq!(
            expected_signature(
                &key,
                "msg_p5jXN8AQM9LWM0D4loKWxJek",
                1614265330,
                br#"{"test": 2432232314}"#
            ),
            "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="
        );
    }
}
