//! A loopback fake push service (RFC 8030) that checks what a real one checks
//! and opens what only the browser could: it hands out subscriptions (a P-256
//! key pair and an `auth` secret per browser, an endpoint `/push/{id}`) and, for
//! each push:
//!
//! * requires `TTL` (400 without) and `Content-Encoding: aes128gcm` (415);
//! * verifies the VAPID token (RFC 8292) with `jsonwebtoken`: `Authorization:
//!   vapid t=<ES256 JWT>, k=<public key>`, `aud` = this service's origin, `exp`
//!   in the future and at most 24 h away, a `mailto:`/`https:` `sub` (401);
//! * decrypts the body as the browser would (RFC 8291 / RFC 8188: its own
//!   code, the receiving direction) and parses the JSON payload (400 when it
//!   cannot);
//! * answers 201 with a `Location`, 404 for an unknown subscription, 410 for
//!   one that was unsubscribed, or the status set with [`FakePushService::set_mode`].

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce, UnboundKey, AES_128_GCM};
use aws_lc_rs::agreement::{self, PrivateKey, UnparsedPublicKey, ECDH_P256};
use aws_lc_rs::hkdf::{KeyType, Salt, HKDF_SHA256};
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use serde_json::{json, Value};

use crate::harness::LoopbackServer;

/// How pushes are answered (after the checks).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Mode {
    /// Accept: 201.
    #[default]
    Accept,
    /// Answer this status, with an optional `Retry-After`.
    Status(u16, Option<String>),
    /// Never answer.
    Hang,
}

/// A push the service accepted and decrypted.
#[derive(Debug, Clone)]
pub struct ReceivedPush {
    /// The subscription's id (the last path segment of its endpoint).
    pub subscription: String,
    /// `TTL`.
    pub ttl: u64,
    /// `Urgency` (`normal` when absent).
    pub urgency: String,
    /// `Topic` (RFC 8030 §5.4), when sent.
    pub topic: Option<String>,
    /// The decrypted JSON payload.
    pub payload: Value,
    /// The VAPID `sub`.
    pub subject: String,
    /// The VAPID public key (`k`).
    pub vapid_key: String,
}

struct Browser {
    key: PrivateKey,
    public: Vec<u8>,
    auth: [u8; 16],
    unsubscribed: bool,
}

#[derive(Default)]
struct Inner {
    browsers: HashMap<String, Browser>,
    mode: Mode,
    received: Vec<ReceivedPush>,
    rejected: Vec<(u16, String)>,
}

#[derive(Clone)]
struct Shared {
    origin: Arc<String>,
    inner: Arc<Mutex<Inner>>,
    next: Arc<AtomicU64>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running fake push service on loopback.
pub struct FakePushService {
    server: LoopbackServer,
    shared: Shared,
}

impl FakePushService {
    /// Starts the service.
    pub async fn start() -> std::io::Result<Self> {
        // The origin is known only once bound: bind first, then build the app.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Shared {
            origin: Arc::new(format!("http://{addr}")),
            inner: Arc::default(),
            next: Arc::new(AtomicU64::new(1)),
        };
        let app = Router::new()
            .route("/push/{id}", post(push))
            .with_state(shared.clone());
        let server = LoopbackServer::from_listener(listener, app)?;
        Ok(Self { server, shared })
    }

    /// Base URL (the origin VAPID tokens must name).
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// A new browser subscription, as `PushSubscription.toJSON()` gives it.
    pub fn subscribe(&self) -> std::io::Result<String> {
        let crypto = |_| std::io::Error::other("P-256 key generation failed");
        let n = self.shared.next.fetch_add(1, Ordering::Relaxed);
        let id = format!("sub{n}");
        let key = PrivateKey::generate(&ECDH_P256).map_err(crypto)?;
        let public = key.compute_public_key().map_err(crypto)?.as_ref().to_vec();
        let mut auth = [0u8; 16];
        aws_lc_rs::rand::fill(&mut auth).map_err(crypto)?;
        let subscription = json!({
            "endpoint": format!("{}/push/{id}", self.shared.origin),
            "expirationTime": null,
            "keys": {
                "p256dh": URL_SAFE_NO_PAD.encode(&public),
                "auth": URL_SAFE_NO_PAD.encode(auth),
            },
        });
        self.shared.lock().browsers.insert(
            id,
            Browser {
                key,
                public,
                auth,
                unsubscribed: false,
            },
        );
        Ok(subscription.to_string())
    }

    /// The browser unsubscribed: pushes to `subscription` get 410.
    pub fn unsubscribe(&self, subscription: &str) {
        let id = id_of(subscription);
        if let Some(b) = self.shared.lock().browsers.get_mut(&id) {
            b.unsubscribed = true;
        }
    }

    /// How pushes are answered from now on.
    pub fn set_mode(&self, mode: Mode) {
        self.shared.lock().mode = mode;
    }

    /// Pushes accepted and decrypted so far.
    pub fn received(&self) -> Vec<ReceivedPush> {
        self.shared.lock().received.clone()
    }

    /// Pushes refused by a check (status, why).
    pub fn rejected(&self) -> Vec<(u16, String)> {
        self.shared.lock().rejected.clone()
    }
}

/// The id of a subscription JSON's endpoint.
pub fn id_of(subscription: &str) -> String {
    serde_json::from_str::<Value>(subscription)
        .ok()
        .and_then(|v| v["endpoint"].as_str().map(str::to_owned))
        .and_then(|e| e.rsplit('/').next().map(str::to_owned))
        .unwrap_or_default()
}

struct Len(usize);

impl KeyType for Len {
    fn len(&self) -> usize {
        self.0
    }
}

fn derive(salt: &[u8], ikm: &[u8], info: &[u8], out: &mut [u8]) -> Option<()> {
    let prk = Salt::new(HKDF_SHA256, salt).extract(ikm);
    let info = [info];
    let okm = prk.expand(&info, Len(out.len())).ok()?;
    okm.fill(out).ok()
}

/// The browser's side of RFC 8291: opens an `aes128gcm` body.
fn decrypt(browser: &Browser, body: &[u8]) -> Option<Vec<u8>> {
    let salt = body.get(..16)?;
    let id_len = usize::from(*body.get(20)?);
    let as_public = body.get(21..21 + id_len)?;
    let mut record = body.get(21 + id_len..)?.to_vec();
    let secret = agreement::agree(
        &browser.key,
        UnparsedPublicKey::new(&ECDH_P256, as_public),
        (),
        |s| Ok(s.to_vec()),
    )
    .ok()?;
    let mut info = b"WebPush: info\0".to_vec();
    info.extend_from_slice(&browser.public);
    info.extend_from_slice(as_public);
    let mut ikm = [0u8; 32];
    derive(&browser.auth, &secret, &info, &mut ikm)?;
    let mut cek = [0u8; 16];
    derive(salt, &ikm, b"Content-Encoding: aes128gcm\0", &mut cek)?;
    let mut nonce = [0u8; 12];
    derive(salt, &ikm, b"Content-Encoding: nonce\0", &mut nonce)?;
    let key = LessSafeKey::new(UnboundKey::new(&AES_128_GCM, &cek).ok()?);
    let plain = key
        .open_in_place(
            Nonce::assume_unique_for_key(nonce),
            Aad::empty(),
            &mut record,
        )
        .ok()?;
    // Padding: zeros after the delimiter; the last record's delimiter is 0x02.
    let end = plain.iter().rposition(|&b| b != 0)?;
    (plain[end] == 0x02).then(|| plain[..end].to_vec())
}

/// Verifies the VAPID header; the `sub` and `k` on success.
fn check_vapid(headers: &HeaderMap, origin: &str) -> Result<(String, String), String> {
    let value = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .ok_or("no Authorization")?;
    let rest = value
        .strip_prefix("vapid ")
        .ok_or("not a vapid authorization")?;
    let mut t = None;
    let mut k = None;
    for part in rest.split(',') {
        let part = part.trim();
        if let Some(v) = part.strip_prefix("t=") {
            t = Some(v);
        } else if let Some(v) = part.strip_prefix("k=") {
            k = Some(v);
        }
    }
    let (t, k) = (t.ok_or("no t=")?, k.ok_or("no k=")?);
    let point = URL_SAFE_NO_PAD
        .decode(k)
        .map_err(|_| "k is not base64url")?;
    if point.len() != 65 || point[0] != 4 {
        return Err("k is not an uncompressed P-256 point".into());
    }
    let key = jsonwebtoken::DecodingKey::from_ec_components(
        &URL_SAFE_NO_PAD.encode(&point[1..33]),
        &URL_SAFE_NO_PAD.encode(&point[33..65]),
    )
    .map_err(|e| format!("bad key: {e}"))?;
    let mut validation = jsonwebtoken::Validation::new(jsonwebtoken::Algorithm::ES256);
    validation.set_audience(&[origin]);
    validation.set_required_spec_claims(&["exp", "aud", "sub"]);
    validation.leeway = 0;
    let data = jsonwebtoken::decode::<Value>(t, &key, &validation)
        .map_err(|e| format!("VAPID token refused: {e}"))?;
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let exp = data.claims["exp"].as_u64().unwrap_or(0);
    if exp > now + 24 * 3600 {
        return Err("exp is more than 24 hours away".into());
    }
    let sub = data.claims["sub"].as_str().unwrap_or("").to_string();
    if !(sub.starts_with("mailto:") || sub.starts_with("https://")) {
        return Err("sub is not a mailto: or https: URL".into());
    }
    Ok((sub, k.to_string()))
}

async fn push(
    State(shared): State<Shared>,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let reject = |status: u16, why: String| {
        shared.lock().rejected.push((status, why.clone()));
        (
            StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
            why,
        )
            .into_response()
    };
    let header = |n: &str| {
        headers
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
    };
    let Some(ttl) = header("ttl").and_then(|t| t.parse::<u64>().ok()) else {
        return reject(400, "TTL is required".into());
    };
    // RFC 8030 §5.4: at most 32 characters from the URL-safe base64 alphabet.
    let topic = header("topic");
    if let Some(t) = &topic {
        let valid = !t.is_empty()
            && t.len() <= 32
            && t.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !valid {
            return reject(400, format!("invalid Topic {t:?}"));
        }
    }
    if header("content-encoding").as_deref() != Some("aes128gcm") {
        return reject(415, "Content-Encoding must be aes128gcm".into());
    }
    let (subject, vapid_key) = match check_vapid(&headers, &shared.origin) {
        Ok(v) => v,
        Err(why) => return reject(401, why),
    };
    let plain = {
        let inner = shared.lock();
        let Some(browser) = inner.browsers.get(&id) else {
            drop(inner);
            return reject(404, "no such subscription".into());
        };
        if browser.unsubscribed {
            drop(inner);
            return reject(410, "unsubscribed".into());
        }
        decrypt(browser, &body)
    };
    let Some(payload) = plain.and_then(|p| serde_json::from_slice::<Value>(&p).ok()) else {
        return reject(400, "cannot decrypt the payload".into());
    };
    let mode = shared.lock().mode.clone();
    match mode {
        Mode::Hang => return std::future::pending().await,
        Mode::Status(status, retry_after) => {
            let mut r = StatusCode::from_u16(status)
                .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
                .into_response();
            if let Some(v) = retry_after.and_then(|v| v.parse().ok()) {
                r.headers_mut().insert("retry-after", v);
            }
            return r;
        }
        Mode::Accept => {}
    }
    let n = shared.next.fetch_add(1, Ordering::Relaxed);
    shared.lock().received.push(ReceivedPush {
        subscription: id,
        ttl,
        urgency: header("urgency").unwrap_or_else(|| "normal".into()),
        topic,
        payload,
        subject,
        vapid_key,
    });
    let mut r = StatusCode::CREATED.into_response();
    if let Ok(v) = format!("/message/m{n}").parse() {
        r.headers_mut().insert("location", v);
    }
    r
}
