//! A loopback fake of APNs' provider API (`POST /3/device/{token}`), served over real
//! TLS with HTTP/2 only (ALPN `h2`), following Apple's "Sending notification
//! requests to APNs" and "Handling notification responses from APNs":
//!
//! * The certificate is made at start by a throwaway CA ([`FakeApns::ca_pem`]); a
//!   client must trust that CA (reqwest `tls_certs_merge`, or the provider's
//!   `ca_file`). The server offers only `h2`, so an HTTP/1.1 client fails the
//!   handshake.
//! * Token authentication: `authorization: bearer <JWT>`; the JWT must be ES256,
//!   signed by the configured key (verified with its public key), with header
//!   `kid` = key id, claim `iss` = team id and an `iat` within the last hour.
//!   Missing → 403 `MissingProviderToken`; bad signature, `kid`, `iss` or alg →
//!   403 `InvalidProviderToken`; `iat` older than an hour → 403
//!   `ExpiredProviderToken`.
//! * Headers: `apns-topic` (the bundle id, or `{bundle}.voip` for
//!   `apns-push-type: voip`), `apns-push-type`, and — stricter than APNs, which
//!   makes them optional, because mesh-notify always sends them — `apns-priority`
//!   (5 or 10), `apns-expiration` (integer), `apns-id` (canonical lowercase UUID);
//!   `apns-collapse-id` is optional, at most 64 bytes. Violations get Apple's
//!   reasons (`MissingTopic`, `TopicDisallowed`, `InvalidPushType`, `BadPriority`,
//!   `BadExpirationDate`, `BadMessageId`, `BadCollapseId`, `DuplicateHeaders`).
//! * Device token: missing → 400 `MissingDeviceToken`; not hexadecimal → 400
//!   `BadDeviceToken`. Wrong method → 405 `MethodNotAllowed`; other paths → 404
//!   `BadPath`.
//! * Payload: empty → 400 `PayloadEmpty`; over 4096 bytes (5120 for VoIP) → 413
//!   `PayloadTooLarge`; not a JSON object with an `aps` dictionary → 400
//!   `BadPayload` (Apple documents no reason for this; the fake is loud on purpose).
//! * Every answer carries `apns-id` (the request's, or a generated one); errors
//!   have the body `{"reason": "..."}`, plus `"timestamp"` (ms) with 410.
//!
//! Scripted answers ([`Answer`]), globally or per device token, apply to requests
//! that pass the checks above. [`FakeApns::set_wrong_environment`] makes the fake
//! behave like the other APNs environment (production for a development build's
//! tokens, or the reverse): every well-formed device token is answered 400
//! `BadDeviceToken`, whatever the scripted answers say. Provider tokens can be made stale (as when an hour
//! passes, or APNs decides so): [`FakeApns::expire_seen_jwts`] makes every JWT seen
//! so far, and [`FakeApns::expire_next_new_jwt`] the next JWT not seen before,
//! answer 403 `ExpiredProviderToken` from then on. Every
//! request is recorded ([`ApnsRequest`]), and distinct JWTs and TLS connections are
//! counted.

use std::collections::{HashMap, HashSet};
use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::http::request::Parts;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use jsonwebtoken::{decode, decode_header, Algorithm, DecodingKey, Validation};
use serde_json::{json, Value};
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};
use tokio_rustls::rustls;
use tokio_rustls::TlsAcceptor;

/// Largest alert payload APNs accepts.
pub const MAX_PAYLOAD: usize = 4096;
/// Largest VoIP payload APNs accepts.
pub const MAX_VOIP_PAYLOAD: usize = 5120;

/// Who the fake accepts provider tokens from, and for which app.
#[derive(Debug, Clone)]
pub struct FakeApnsConfig {
    /// Team id expected in `iss`.
    pub team_id: String,
    /// Key id expected in the JWT header `kid`.
    pub key_id: String,
    /// The signing key's public key, PEM (`-----BEGIN PUBLIC KEY-----`).
    pub public_key_pem: String,
    /// The app's bundle id (allowed topics: it and `{bundle_id}.voip`).
    pub bundle_id: String,
}

/// How the fake answers a request that passed its checks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// 200 with the `apns-id` header.
    Accept,
    /// This status with `{"reason": reason}` (and `timestamp` with 410).
    Reject {
        /// HTTP status.
        status: u16,
        /// Apple's reason string (sent verbatim, known or not).
        reason: String,
        /// `Retry-After` header value, if any.
        retry_after: Option<String>,
    },
    /// Never answer (the stream stays open).
    Hang,
}

impl Answer {
    /// A rejection without `Retry-After`.
    pub fn reject(status: u16, reason: &str) -> Self {
        Answer::Reject {
            status,
            reason: reason.to_string(),
            retry_after: None,
        }
    }
}

/// One request the fake received, whatever it answered.
#[derive(Debug, Clone)]
pub struct ApnsRequest {
    /// HTTP method.
    pub method: String,
    /// Request path.
    pub path: String,
    /// HTTP version (`HTTP/2.0`).
    pub version: String,
    /// The device token from the path (empty when absent).
    pub device_token: String,
    /// All headers, lower-case names (the last value when repeated).
    pub headers: HashMap<String, String>,
    /// The raw body.
    pub body: Vec<u8>,
    /// The body as JSON (`Value::Null` when it is not JSON).
    pub payload: Value,
    /// The bearer token, if any.
    pub jwt: Option<String>,
    /// The JWT header, when the signature verified.
    pub jwt_header: Option<Value>,
    /// The JWT claims, when the signature verified.
    pub jwt_claims: Option<Value>,
    /// The status the fake answered (0 for a hung request).
    pub status: u16,
    /// The reason it gave, for errors.
    pub reason: Option<String>,
    /// The `apns-id` it answered with.
    pub apns_id: String,
}

impl ApnsRequest {
    /// A header's value.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).map(String::as_str)
    }
}

struct Inner {
    config: FakeApnsConfig,
    decoding_key: DecodingKey,
    answer: Answer,
    per_token: HashMap<String, Answer>,
    wrong_environment: bool,
    expire_next_new: bool,
    expired_jwts: HashSet<String>,
    jwts_seen: HashSet<String>,
    requests: Vec<ApnsRequest>,
    connections: usize,
    next_id: u64,
}

#[derive(Clone)]
struct Shared(Arc<Mutex<Inner>>);

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running fake APNs on 127.0.0.1 (free port), HTTP/2 over TLS.
pub struct FakeApns {
    addr: SocketAddr,
    ca_pem: String,
    shared: Shared,
    task: Option<JoinHandle<()>>,
}

fn io_err(e: impl std::fmt::Display) -> std::io::Error {
    std::io::Error::other(e.to_string())
}

/// A CA and a server certificate for `127.0.0.1` and `localhost` signed by it:
/// (CA PEM, server certificate DER, server key DER).
fn make_certificates() -> std::io::Result<(String, Vec<u8>, Vec<u8>)> {
    use rcgen::{
        BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
        IsCa, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256,
    };
    let ca_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(io_err)?;
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).map_err(io_err)?;
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mesh-notify fake APNs CA");
    ca_params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca = CertifiedIssuer::self_signed(ca_params, ca_key).map_err(io_err)?;

    let leaf_key = KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(io_err)?;
    let mut leaf_params =
        CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .map_err(io_err)?;
    leaf_params
        .distinguished_name
        .push(DnType::CommonName, "fake api.push.apple.com");
    leaf_params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    let leaf = leaf_params.signed_by(&leaf_key, &ca).map_err(io_err)?;
    Ok((ca.pem(), leaf.der().to_vec(), leaf_key.serialize_der()))
}

impl FakeApns {
    /// Starts a fake that accepts tokens signed by `config`'s key for its app.
    pub async fn start(config: FakeApnsConfig) -> std::io::Result<Self> {
        let decoding_key =
            DecodingKey::from_ec_pem(config.public_key_pem.as_bytes()).map_err(io_err)?;
        let (ca_pem, cert_der, key_der) = make_certificates()?;
        let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(io_err)?
            .with_no_client_auth()
            .with_single_cert(
                vec![rustls::pki_types::CertificateDer::from(cert_der)],
                rustls::pki_types::PrivateKeyDer::Pkcs8(key_der.into()),
            )
            .map_err(io_err)?;
        tls.alpn_protocols = vec![b"h2".to_vec()];
        let acceptor = TlsAcceptor::from(Arc::new(tls));

        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Shared(Arc::new(Mutex::new(Inner {
            config,
            decoding_key,
            answer: Answer::Accept,
            per_token: HashMap::new(),
            wrong_environment: false,
            expire_next_new: false,
            expired_jwts: HashSet::new(),
            jwts_seen: HashSet::new(),
            requests: Vec::new(),
            connections: 0,
            next_id: 1,
        })));
        let task = Some(spawn_server(listener, acceptor, shared.clone()));
        Ok(Self {
            addr,
            ca_pem,
            shared,
            task,
        })
    }

    /// Base URL, e.g. `https://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// Socket address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The PEM of the CA that signed the server certificate (trust it to connect).
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// How requests without a per-token answer are answered (default: accept).
    pub fn set_answer(&self, answer: Answer) {
        self.shared.lock().answer = answer;
    }

    /// How requests to this device token are answered (overrides the global one).
    pub fn set_token_answer(&self, device_token: &str, answer: Answer) {
        self.shared
            .lock()
            .per_token
            .insert(device_token.to_string(), answer);
    }

    /// Behave like the other APNs environment (`true`): every device token is
    /// unknown there, so every request that passes the other checks is answered
    /// 400 `BadDeviceToken`, as APNs does for a development build's token sent to
    /// production. `false` restores the scripted answers.
    pub fn set_wrong_environment(&self, wrong: bool) {
        self.shared.lock().wrong_environment = wrong;
    }

    /// Every JWT presented so far is stale from now on: requests carrying one are
    /// answered 403 `ExpiredProviderToken` (a freshly signed token is accepted).
    pub fn expire_seen_jwts(&self) {
        let mut inner = self.shared.lock();
        let seen: Vec<String> = inner.jwts_seen.iter().cloned().collect();
        inner.expired_jwts.extend(seen);
    }

    /// The next JWT the fake has not seen before is stale: its first request and
    /// every later one are answered 403 `ExpiredProviderToken`.
    pub fn expire_next_new_jwt(&self) {
        self.shared.lock().expire_next_new = true;
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<ApnsRequest> {
        self.shared.lock().requests.clone()
    }

    /// Requests answered 200.
    pub fn delivered(&self) -> Vec<ApnsRequest> {
        self.requests()
            .into_iter()
            .filter(|r| r.status == 200)
            .collect()
    }

    /// How many different bearer tokens were presented.
    pub fn distinct_jwts(&self) -> usize {
        self.shared.lock().jwts_seen.len()
    }

    /// How many TLS connections completed their handshake.
    pub fn connections(&self) -> usize {
        self.shared.lock().connections
    }

    /// Stops serving: the port closes and open connections are dropped.
    pub fn stop(&mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

impl Drop for FakeApns {
    fn drop(&mut self) {
        self.stop();
    }
}

fn spawn_server(listener: TcpListener, acceptor: TlsAcceptor, shared: Shared) -> JoinHandle<()> {
    tokio::spawn(async move {
        // Connection tasks live in this set, so aborting the server drops them too.
        let mut connections = JoinSet::new();
        loop {
            tokio::select! {
                accepted = listener.accept() => {
                    let Ok((tcp, _)) = accepted else { continue };
                    connections.spawn(serve_connection(tcp, acceptor.clone(), shared.clone()));
                }
                Some(_) = connections.join_next(), if !connections.is_empty() => {}
            }
        }
    })
}

async fn serve_connection(tcp: tokio::net::TcpStream, acceptor: TlsAcceptor, shared: Shared) {
    let Ok(tls) = acceptor.accept(tcp).await else {
        return;
    };
    shared.lock().connections += 1;
    let service = hyper::service::service_fn(move |req| handle(shared.clone(), req));
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(tls), service)
        .await;
}

struct Reject {
    status: u16,
    reason: &'static str,
}

fn reject(status: u16, reason: &'static str) -> Reject {
    Reject { status, reason }
}

const PUSH_TYPES: &[&str] = &[
    "alert",
    "background",
    "location",
    "voip",
    "complication",
    "fileprovider",
    "mdm",
    "liveactivity",
    "pushtotalk",
];

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn is_canonical_uuid(s: &str) -> bool {
    let groups: Vec<&str> = s.split('-').collect();
    groups.len() == 5
        && groups.iter().zip([8, 4, 4, 4, 12]).all(|(g, len)| {
            g.len() == len && g.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
        })
}

/// Verifies the provider token; returns its header and claims.
fn check_jwt(inner: &Inner, jwt: &str) -> Result<(Value, Value), Reject> {
    let invalid = || reject(403, "InvalidProviderToken");
    let header = decode_header(jwt).map_err(|_| invalid())?;
    if header.alg != Algorithm::ES256 || header.kid.as_deref() != Some(inner.config.key_id.as_str())
    {
        return Err(invalid());
    }
    let mut validation = Validation::new(Algorithm::ES256);
    validation.required_spec_claims = HashSet::from(["iss".to_string()]);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.set_issuer(&[inner.config.team_id.as_str()]);
    let data = decode::<Value>(jwt, &inner.decoding_key, &validation).map_err(|_| invalid())?;
    let iat = data
        .claims
        .get("iat")
        .and_then(Value::as_i64)
        .ok_or_else(invalid)?;
    let now = now_secs();
    if iat < now - 3600 {
        return Err(reject(403, "ExpiredProviderToken"));
    }
    if iat > now + 60 {
        return Err(invalid());
    }
    let header = serde_json::to_value(&data.header).unwrap_or(Value::Null);
    Ok((header, data.claims))
}

/// Apple's checks, in order; `Ok` when the request is well-formed.
fn check_request(
    inner: &mut Inner,
    parts: &Parts,
    body: &[u8],
    record: &mut ApnsRequest,
) -> Result<(), Reject> {
    if parts.method != Method::POST {
        return Err(reject(405, "MethodNotAllowed"));
    }
    let Some(device_token) = parts.uri.path().strip_prefix("/3/device/") else {
        return Err(reject(404, "BadPath"));
    };
    record.device_token = device_token.to_string();
    if parts
        .headers
        .keys()
        .any(|name| parts.headers.get_all(name).iter().count() > 1)
    {
        return Err(reject(400, "DuplicateHeaders"));
    }
    let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());

    // Authentication first: a refused token is refused whatever else is wrong.
    let Some(auth) = header("authorization") else {
        return Err(reject(403, "MissingProviderToken"));
    };
    let jwt = match auth.split_once(' ') {
        Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => token.trim(),
        _ => return Err(reject(403, "InvalidProviderToken")),
    };
    record.jwt = Some(jwt.to_string());
    let first_use = inner.jwts_seen.insert(jwt.to_string());
    let (jwt_header, jwt_claims) = check_jwt(inner, jwt)?;
    record.jwt_header = Some(jwt_header);
    record.jwt_claims = Some(jwt_claims);
    if first_use && inner.expire_next_new {
        inner.expire_next_new = false;
        inner.expired_jwts.insert(jwt.to_string());
    }
    if inner.expired_jwts.contains(jwt) {
        return Err(reject(403, "ExpiredProviderToken"));
    }

    let Some(topic) = header("apns-topic") else {
        return Err(reject(400, "MissingTopic"));
    };
    let bundle = inner.config.bundle_id.as_str();
    let voip_topic = format!("{bundle}.voip");
    if topic != bundle && topic != voip_topic {
        return Err(reject(400, "TopicDisallowed"));
    }
    let push_type = header("apns-push-type").unwrap_or("");
    if !PUSH_TYPES.contains(&push_type) || (push_type == "voip") != (topic == voip_topic) {
        return Err(reject(400, "InvalidPushType"));
    }

    if device_token.is_empty() {
        return Err(reject(400, "MissingDeviceToken"));
    }
    if !device_token.bytes().all(|b| b.is_ascii_hexdigit()) || inner.wrong_environment {
        return Err(reject(400, "BadDeviceToken"));
    }

    if !matches!(header("apns-priority"), Some("1" | "5" | "10")) {
        return Err(reject(400, "BadPriority"));
    }
    if header("apns-expiration")
        .and_then(|v| v.parse::<i64>().ok())
        .is_none()
    {
        return Err(reject(400, "BadExpirationDate"));
    }
    if !header("apns-id").is_some_and(is_canonical_uuid) {
        return Err(reject(400, "BadMessageId"));
    }
    if header("apns-collapse-id").is_some_and(|c| c.len() > 64) {
        return Err(reject(400, "BadCollapseId"));
    }

    if body.is_empty() {
        return Err(reject(400, "PayloadEmpty"));
    }
    let limit = if push_type == "voip" {
        MAX_VOIP_PAYLOAD
    } else {
        MAX_PAYLOAD
    };
    if body.len() > limit {
        return Err(reject(413, "PayloadTooLarge"));
    }
    if !record.payload.get("aps").is_some_and(Value::is_object) {
        return Err(reject(400, "BadPayload"));
    }
    Ok(())
}

async fn handle(
    shared: Shared,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let (parts, body) = req.into_parts();
    let body = body
        .collect()
        .await
        .map(|c| c.to_bytes())
        .unwrap_or_default();
    let mut record = ApnsRequest {
        method: parts.method.to_string(),
        path: parts.uri.path().to_string(),
        version: format!("{:?}", parts.version),
        device_token: String::new(),
        headers: parts
            .headers
            .iter()
            .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
            .collect(),
        body: body.to_vec(),
        payload: serde_json::from_slice(&body).unwrap_or(Value::Null),
        jwt: None,
        jwt_header: None,
        jwt_claims: None,
        status: 0,
        reason: None,
        apns_id: String::new(),
    };

    let (answer, apns_id) = {
        let mut inner = shared.lock();
        let apns_id = match record.headers.get("apns-id") {
            Some(id) if is_canonical_uuid(id) => id.clone(),
            _ => {
                inner.next_id += 1;
                format!("00000000-0000-4000-8000-{:012x}", inner.next_id)
            }
        };
        let answer = match check_request(&mut inner, &parts, &body, &mut record) {
            Err(r) => Answer::reject(r.status, r.reason),
            Ok(()) => inner
                .per_token
                .get(&record.device_token)
                .unwrap_or(&inner.answer)
                .clone(),
        };
        record.apns_id = apns_id.clone();
        if let Answer::Reject { status, reason, .. } = &answer {
            record.status = *status;
            record.reason = Some(reason.clone());
        } else if answer == Answer::Accept {
            record.status = 200;
        }
        inner.requests.push(record);
        (answer, apns_id)
    };

    let mut response = match answer {
        Answer::Hang => std::future::pending().await,
        Answer::Accept => Response::new(Full::new(Bytes::new())),
        Answer::Reject {
            status,
            reason,
            retry_after,
        } => {
            let mut body = json!({ "reason": reason });
            if status == 410 {
                body["timestamp"] = json!(now_secs() * 1000);
            }
            let mut response = Response::new(Full::new(Bytes::from(body.to_string())));
            *response.status_mut() =
                StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            response.headers_mut().insert(
                "content-type",
                hyper::header::HeaderValue::from_static("application/json"),
            );
            if let Some(ra) = retry_after.and_then(|v| v.parse().ok()) {
                response.headers_mut().insert("retry-after", ra);
            }
            response
        }
    };
    if let Ok(id) = apns_id.parse() {
        response.headers_mut().insert("apns-id", id);
    }
    Ok(response)
}
