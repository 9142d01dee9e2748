//! A loopback fake of Firebase Cloud Messaging's HTTP v1 API and of Google's OAuth 2
//! token endpoint, following `shared/specs/fcm-v1-discovery.json` (copied to
//! `fixtures/fcm-v1-discovery.json`) and Google's documented behaviour:
//!
//! * `POST /token` is the service-account JWT-bearer grant. The form must carry
//!   `grant_type=urn:ietf:params:oauth:grant-type:jwt-bearer` and an `assertion`,
//!   an RS256 JWT **verified with the service account's public key**: `iss` is the
//!   account's `client_email`, `scope` contains `firebase.messaging`, `aud` is the
//!   token URI, and `exp <= iat + 3600`. Success answers
//!   `{"access_token","expires_in","token_type":"Bearer"}`; refusals answer Google's
//!   OAuth error body `{"error":"invalid_grant","error_description":...}` (400).
//! * `POST /v1/projects/{project}/messages:send` requires
//!   `Authorization: Bearer <token issued by /token, not expired>` (401
//!   `UNAUTHENTICATED` otherwise) for the fake's own project (403
//!   `PERMISSION_DENIED` otherwise). The body is checked against the discovery
//!   document's `SendMessageRequest`/`Message` schemas: an unknown field, a value
//!   of the wrong type, a bad enum value or a malformed duration answers 400
//!   `INVALID_ARGUMENT` like Google (proto JSON: both `snake_case` and `camelCase`
//!   field names are accepted). A message needs exactly one target and at most
//!   4096 bytes of payload. Success answers `{"name":"projects/{p}/messages/{id}"}`.
//! * A registration token that is not one (characters outside `A-Z a-z 0-9 _ - : .`,
//!   or marked with [`FakeFcm::invalidate`]) answers Google's 400 for it: message
//!   "The registration token is not a valid FCM registration token", an `FcmError`
//!   `INVALID_ARGUMENT` and a `google.rpc.BadRequest` field violation on
//!   `message.token`. A token marked with [`FakeFcm::unregister`] answers 404
//!   `UNREGISTERED`.
//! * Scripted failures ([`SendMode::Fail`]) answer Google's documented error bodies,
//!   `{"error":{"code","message","status","details":[{"@type":
//!   "type.googleapis.com/google.firebase.fcm.v1.FcmError","errorCode":...}]}}`,
//!   with the documented HTTP status of each [`FcmErrorCode`] and an optional
//!   `Retry-After`; [`SendMode::Answer`] answers any status and body.
//!   [`SendMode::Hang`] never answers.
//! * [`TokenMode::AnnounceExpiresIn`] issues working tokens whose `expires_in` is
//!   any JSON value (negative, huge, a string), as a misbehaving endpoint would.
//!
//! The service-account key is a committed **test-only** RSA key pair
//! (`fixtures/fcm-test-key.pem`); [`OTHER_TEST_PRIVATE_KEY_PEM`] is a second pair
//! the fake does not know.

use std::collections::{HashMap, HashSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Json, Router};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use tokio::net::TcpListener;

use crate::harness::LoopbackServer;

/// The fake's Firebase project id.
pub const PROJECT_ID: &str = "mesh-test-project";
/// The fake service account's email (the JWT `iss`).
pub const CLIENT_EMAIL: &str = "fcm-sender@mesh-test-project.iam.gserviceaccount.com";
/// The fake service account's key id (the JWT header `kid`).
pub const PRIVATE_KEY_ID: &str = "0123456789abcdef0123456789abcdef01234567";
/// TEST-ONLY RSA private key of the fake service account (PKCS#8 PEM).
pub const TEST_PRIVATE_KEY_PEM: &str = include_str!("../fixtures/fcm-test-key.pem");
/// Public half of [`TEST_PRIVATE_KEY_PEM`]; the token endpoint verifies with it.
pub const TEST_PUBLIC_KEY_PEM: &str = include_str!("../fixtures/fcm-test-key.pub.pem");
/// A second TEST-ONLY RSA private key that the fake does not know.
pub const OTHER_TEST_PRIVATE_KEY_PEM: &str = include_str!("../fixtures/fcm-other-test-key.pem");
/// FCM's payload limit (notification + data), bytes.
pub const MAX_PAYLOAD_BYTES: usize = 4096;
/// The scope FCM needs.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";

const DISCOVERY: &str = include_str!("../fixtures/fcm-v1-discovery.json");
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
const FCM_ERROR_TYPE: &str = "type.googleapis.com/google.firebase.fcm.v1.FcmError";
const BAD_REQUEST_TYPE: &str = "type.googleapis.com/google.rpc.BadRequest";
/// Google's message for a registration token that is not one.
pub const INVALID_TOKEN_MESSAGE: &str =
    "The registration token is not a valid FCM registration token";

/// The `errorCode`s of FCM's `FcmError`, with their documented HTTP statuses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FcmErrorCode {
    /// 404 `NOT_FOUND`: the registration token is no longer valid.
    Unregistered,
    /// 400 `INVALID_ARGUMENT`: the request is malformed (here: something other than
    /// the registration token; see [`invalid_token_body`] for that case).
    InvalidArgument,
    /// 403 `PERMISSION_DENIED`: the token belongs to another sender.
    SenderIdMismatch,
    /// 401 `UNAUTHENTICATED`: APNs certificate or web push key is invalid.
    ThirdPartyAuthError,
    /// 429 `RESOURCE_EXHAUSTED`: sending limit exceeded.
    QuotaExceeded,
    /// 503 `UNAVAILABLE`: server overloaded.
    Unavailable,
    /// 500 `INTERNAL`: unknown internal error.
    Internal,
}

impl FcmErrorCode {
    /// Every code.
    pub const ALL: [FcmErrorCode; 7] = [
        FcmErrorCode::Unregistered,
        FcmErrorCode::InvalidArgument,
        FcmErrorCode::SenderIdMismatch,
        FcmErrorCode::ThirdPartyAuthError,
        FcmErrorCode::QuotaExceeded,
        FcmErrorCode::Unavailable,
        FcmErrorCode::Internal,
    ];

    /// The `errorCode` string.
    pub fn as_str(self) -> &'static str {
        match self {
            FcmErrorCode::Unregistered => "UNREGISTERED",
            FcmErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            FcmErrorCode::SenderIdMismatch => "SENDER_ID_MISMATCH",
            FcmErrorCode::ThirdPartyAuthError => "THIRD_PARTY_AUTH_ERROR",
            FcmErrorCode::QuotaExceeded => "QUOTA_EXCEEDED",
            FcmErrorCode::Unavailable => "UNAVAILABLE",
            FcmErrorCode::Internal => "INTERNAL",
        }
    }

    /// The HTTP status FCM answers with.
    pub fn http_status(self) -> u16 {
        match self {
            FcmErrorCode::Unregistered => 404,
            FcmErrorCode::InvalidArgument => 400,
            FcmErrorCode::SenderIdMismatch => 403,
            FcmErrorCode::ThirdPartyAuthError => 401,
            FcmErrorCode::QuotaExceeded => 429,
            FcmErrorCode::Unavailable => 503,
            FcmErrorCode::Internal => 500,
        }
    }

    /// The `google.rpc.Code` name in `error.status`.
    pub fn rpc_status(self) -> &'static str {
        match self {
            FcmErrorCode::Unregistered => "NOT_FOUND",
            FcmErrorCode::InvalidArgument => "INVALID_ARGUMENT",
            FcmErrorCode::SenderIdMismatch => "PERMISSION_DENIED",
            FcmErrorCode::ThirdPartyAuthError => "UNAUTHENTICATED",
            FcmErrorCode::QuotaExceeded => "RESOURCE_EXHAUSTED",
            FcmErrorCode::Unavailable => "UNAVAILABLE",
            FcmErrorCode::Internal => "INTERNAL",
        }
    }

    fn message(self) -> &'static str {
        match self {
            FcmErrorCode::Unregistered => "Requested entity was not found.",
            FcmErrorCode::InvalidArgument => "Request contains an invalid argument.",
            FcmErrorCode::SenderIdMismatch => "SenderId mismatch",
            FcmErrorCode::ThirdPartyAuthError => "Auth error from APNS or Web Push Service",
            FcmErrorCode::QuotaExceeded => {
                "Quota exceeded for quota metric 'Send requests' and limit 'Send requests per minute'."
            }
            FcmErrorCode::Unavailable => "The service is currently unavailable.",
            FcmErrorCode::Internal => "Internal error encountered.",
        }
    }

    /// Google's full error body for this code.
    pub fn error_body(self) -> Value {
        google_error(
            self.http_status(),
            self.rpc_status(),
            self.message(),
            Some(self.as_str()),
        )
    }
}

/// How the fake answers `messages:send`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum SendMode {
    /// Behave like FCM.
    #[default]
    Normal,
    /// After authentication and validation, answer this FCM error (and
    /// `Retry-After`, if given).
    Fail {
        /// The `errorCode`.
        code: FcmErrorCode,
        /// The `Retry-After` header value (seconds or HTTP date).
        retry_after: Option<String>,
    },
    /// After authentication and validation, answer exactly this.
    Answer {
        /// HTTP status.
        status: u16,
        /// JSON body.
        body: Value,
        /// The `Retry-After` header value, if any.
        retry_after: Option<String>,
    },
    /// Accept the connection and never answer.
    Hang,
}

/// Google's 400 for a registration token that is not a valid one: an `FcmError`
/// `INVALID_ARGUMENT` and a `BadRequest` field violation on `message.token`.
pub fn invalid_token_body() -> Value {
    let mut body = google_error(
        400,
        "INVALID_ARGUMENT",
        INVALID_TOKEN_MESSAGE,
        Some("INVALID_ARGUMENT"),
    );
    if let Some(details) = body["error"]["details"].as_array_mut() {
        details.push(json!({
            "@type": BAD_REQUEST_TYPE,
            "fieldViolations": [{ "field": "message.token", "description": INVALID_TOKEN_MESSAGE }],
        }));
    }
    body
}

/// Google's 400 for a field of the message other than the token, e.g.
/// `invalid_field_body("message.android.ttl", "Invalid value ...")`: an `FcmError`
/// `INVALID_ARGUMENT` and a `BadRequest` field violation on that field.
pub fn invalid_field_body(field: &str, description: &str) -> Value {
    let mut body = google_error(
        400,
        "INVALID_ARGUMENT",
        description,
        Some("INVALID_ARGUMENT"),
    );
    if let Some(details) = body["error"]["details"].as_array_mut() {
        details.push(json!({
            "@type": BAD_REQUEST_TYPE,
            "fieldViolations": [{ "field": field, "description": description }],
        }));
    }
    body
}

/// How the fake answers `POST /token`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenMode {
    /// Verify the assertion and issue tokens valid for `expires_in` seconds.
    Normal {
        /// Lifetime of issued tokens, seconds (Google: 3599).
        expires_in: u64,
    },
    /// Verify the assertion and issue tokens that work for an hour, but announce
    /// this `expires_in` (any JSON: `-1`, `1e300`, `"3599"`).
    AnnounceExpiresIn(Value),
    /// Answer every request with exactly this (no verification, nothing issued).
    Answer {
        /// HTTP status.
        status: u16,
        /// JSON body.
        body: Value,
    },
    /// Refuse every request with an OAuth error body.
    Refuse {
        /// HTTP status (Google: 400 for `invalid_grant`).
        status: u16,
        /// The OAuth `error`.
        error: String,
        /// The `error_description`.
        description: String,
    },
}

impl Default for TokenMode {
    fn default() -> Self {
        TokenMode::Normal { expires_in: 3599 }
    }
}

impl TokenMode {
    /// Google's answer for a service account that was deleted or disabled.
    pub fn invalid_grant() -> Self {
        TokenMode::Refuse {
            status: 400,
            error: "invalid_grant".into(),
            description: "Invalid grant: account not found".into(),
        }
    }
}

/// A message FCM accepted.
#[derive(Debug, Clone)]
pub struct ReceivedMessage {
    /// The project from the URL.
    pub project: String,
    /// The `message` object, with field names normalised to the discovery
    /// document's `camelCase` (map keys such as `data` or `apns.headers` are kept).
    pub message: Value,
    /// The bearer token used.
    pub access_token: String,
    /// Request headers, lower-case names.
    pub headers: HashMap<String, String>,
}

/// A token request the fake answered with a token.
#[derive(Debug, Clone)]
pub struct TokenGrant {
    /// The verified JWT claims.
    pub claims: Value,
    /// The `kid` of the JWT header.
    pub kid: Option<String>,
}

struct Inner {
    send_mode: SendMode,
    token_mode: TokenMode,
    issued: HashMap<String, Instant>,
    unregistered: HashSet<String>,
    invalid: HashSet<String>,
    received: Vec<ReceivedMessage>,
    grants: Vec<TokenGrant>,
    send_requests: usize,
    token_requests: usize,
}

#[derive(Clone)]
struct Shared {
    inner: Arc<Mutex<Inner>>,
    token_uri: String,
    next_id: Arc<AtomicU64>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A running fake FCM + OAuth token endpoint on 127.0.0.1 (free port).
pub struct FakeFcm {
    server: LoopbackServer,
    shared: Shared,
}

impl FakeFcm {
    /// Starts the fake for project [`PROJECT_ID`].
    pub async fn start() -> std::io::Result<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let shared = Shared {
            inner: Arc::new(Mutex::new(Inner {
                send_mode: SendMode::Normal,
                token_mode: TokenMode::default(),
                issued: HashMap::new(),
                unregistered: HashSet::new(),
                invalid: HashSet::new(),
                received: Vec::new(),
                grants: Vec::new(),
                send_requests: 0,
                token_requests: 0,
            })),
            token_uri: format!("http://{addr}/token"),
            next_id: Arc::new(AtomicU64::new(1)),
        };
        let app = Router::new().fallback(route).with_state(shared.clone());
        let server = LoopbackServer::from_listener(listener, app)?;
        Ok(Self { server, shared })
    }

    /// Base URL of the FCM API, e.g. `http://127.0.0.1:41234`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The OAuth token endpoint, `{url}/token`.
    pub fn token_uri(&self) -> String {
        self.shared.token_uri.clone()
    }

    /// Socket address.
    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// A Google service-account JSON file's content for the fake account, with
    /// `token_uri` pointing at this fake.
    pub fn service_account_json(&self) -> Value {
        self.service_account_json_with_key(TEST_PRIVATE_KEY_PEM)
    }

    /// Like [`FakeFcm::service_account_json`] with another private key.
    pub fn service_account_json_with_key(&self, private_key_pem: &str) -> Value {
        json!({
            "type": "service_account",
            "project_id": PROJECT_ID,
            "private_key_id": PRIVATE_KEY_ID,
            "private_key": private_key_pem,
            "client_email": CLIENT_EMAIL,
            "client_id": "100000000000000000001",
            "auth_uri": "https://accounts.google.com/o/oauth2/auth",
            "token_uri": self.token_uri(),
            "auth_provider_x509_cert_url": "https://www.googleapis.com/oauth2/v1/certs",
            "client_x509_cert_url": "https://www.googleapis.com/robot/v1/metadata/x509/fcm-sender%40mesh-test-project.iam.gserviceaccount.com",
            "universe_domain": "googleapis.com",
        })
    }

    /// Changes how `messages:send` answers.
    pub fn set_send_mode(&self, mode: SendMode) {
        self.shared.lock().send_mode = mode;
    }

    /// Changes how `POST /token` answers.
    pub fn set_token_mode(&self, mode: TokenMode) {
        self.shared.lock().token_mode = mode;
    }

    /// Marks a registration token as unregistered (the app was uninstalled):
    /// sends to it answer `UNREGISTERED`.
    pub fn unregister(&self, registration_token: &str) {
        self.shared
            .lock()
            .unregistered
            .insert(registration_token.to_string());
    }

    /// Marks a registration token as not a valid one (truncated, from another
    /// push service): sends to it answer Google's 400 `INVALID_ARGUMENT` about
    /// `message.token` ([`invalid_token_body`]).
    pub fn invalidate(&self, registration_token: &str) {
        self.shared
            .lock()
            .invalid
            .insert(registration_token.to_string());
    }

    /// Revokes every access token issued so far (sends with them answer 401).
    pub fn revoke_access_tokens(&self) {
        self.shared.lock().issued.clear();
    }

    /// Messages accepted so far.
    pub fn messages(&self) -> Vec<ReceivedMessage> {
        self.shared.lock().received.clone()
    }

    /// Requests to `messages:send`, accepted or not.
    pub fn send_requests(&self) -> usize {
        self.shared.lock().send_requests
    }

    /// Requests to `POST /token`, answered with a token or not.
    pub fn token_requests(&self) -> usize {
        self.shared.lock().token_requests
    }

    /// Token requests that were granted, with their verified claims.
    pub fn grants(&self) -> Vec<TokenGrant> {
        self.shared.lock().grants.clone()
    }

    /// Stops serving: the port is closed and connections are refused.
    pub fn stop(&mut self) {
        self.server.stop();
    }
}

/// Google's JSON error body (`google.rpc.Status`), with an `FcmError` detail when
/// `error_code` is given.
pub fn google_error(code: u16, status: &str, message: &str, error_code: Option<&str>) -> Value {
    let mut error = json!({ "code": code, "message": message, "status": status });
    if let Some(error_code) = error_code {
        error["details"] = json!([{ "@type": FCM_ERROR_TYPE, "errorCode": error_code }]);
    }
    json!({ "error": error })
}

fn google_response(code: u16, status: &str, message: &str, error_code: Option<&str>) -> Response {
    let http = StatusCode::from_u16(code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    (http, Json(google_error(code, status, message, error_code))).into_response()
}

fn oauth_error(status: u16, error: &str, description: &str) -> Response {
    let http = StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST);
    (
        http,
        Json(json!({ "error": error, "error_description": description })),
    )
        .into_response()
}

async fn route(
    State(shared): State<Shared>,
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let path = uri.path();
    if path == "/token" && method == Method::POST {
        return token(&shared, &headers, &body);
    }
    let project = path
        .strip_prefix("/v1/projects/")
        .and_then(|rest| rest.strip_suffix("/messages:send"))
        .filter(|p| !p.is_empty() && !p.contains('/'));
    match (project, method) {
        (Some(project), Method::POST) => send(&shared, project, &headers, &body).await,
        (Some(_), _) => google_response(
            405,
            "METHOD_NOT_ALLOWED",
            "Method not allowed; messages:send takes POST.",
            None,
        ),
        (None, _) => google_response(404, "NOT_FOUND", "Requested entity was not found.", None),
    }
}

// ----------------------------------------------------------------------------
// OAuth 2 token endpoint

#[derive(Deserialize)]
struct AssertionClaims {
    iss: String,
    #[serde(default)]
    scope: String,
    aud: String,
    iat: i64,
    exp: i64,
}

fn unix_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX))
        .unwrap_or(0)
}

fn decoding_key() -> Option<&'static DecodingKey> {
    static KEY: OnceLock<Option<DecodingKey>> = OnceLock::new();
    KEY.get_or_init(|| DecodingKey::from_rsa_pem(TEST_PUBLIC_KEY_PEM.as_bytes()).ok())
        .as_ref()
}

fn token(shared: &Shared, headers: &HeaderMap, body: &[u8]) -> Response {
    let mode = {
        let mut inner = shared.lock();
        inner.token_requests += 1;
        inner.token_mode.clone()
    };
    // (lifetime in the fake, `expires_in` announced)
    let (lifetime, announced) = match mode {
        TokenMode::Refuse {
            status,
            error,
            description,
        } => return oauth_error(status, &error, &description),
        TokenMode::Answer { status, body } => return body.pipe_response(status),
        TokenMode::Normal { expires_in } => (Duration::from_secs(expires_in), json!(expires_in)),
        TokenMode::AnnounceExpiresIn(value) => (Duration::from_secs(3600), value),
    };
    let content_type = headers
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    if !content_type
        .to_ascii_lowercase()
        .starts_with("application/x-www-form-urlencoded")
    {
        return oauth_error(400, "invalid_request", "Bad Request");
    }
    let form: HashMap<String, String> = url::form_urlencoded::parse(body).into_owned().collect();
    match form.get("grant_type").map(String::as_str) {
        Some(JWT_BEARER) => {}
        Some(other) => {
            return oauth_error(
                400,
                "unsupported_grant_type",
                &format!("Invalid grant_type: {other}"),
            )
        }
        None => {
            return oauth_error(
                400,
                "invalid_request",
                "Missing required parameter: grant_type",
            )
        }
    }
    let Some(assertion) = form.get("assertion") else {
        return oauth_error(
            400,
            "invalid_request",
            "Missing required parameter: assertion",
        );
    };
    let Some(key) = decoding_key() else {
        return oauth_error(
            500,
            "internal_failure",
            "fake: test public key does not load",
        );
    };
    let header = match jsonwebtoken::decode_header(assertion) {
        Ok(h) => h,
        Err(_) => return oauth_error(400, "invalid_grant", "Invalid JWT: not a JWT"),
    };
    // Signature and alg first (Google: "Invalid JWT Signature."); claims are
    // checked by hand below so each refusal has Google's wording.
    let mut validation = Validation::new(Algorithm::RS256);
    validation.validate_exp = false;
    validation.validate_aud = false;
    validation.required_spec_claims.clear();
    let data = match jsonwebtoken::decode::<Value>(assertion, key, &validation) {
        Ok(d) => d,
        Err(_) => return oauth_error(400, "invalid_grant", "Invalid JWT Signature."),
    };
    let claims: AssertionClaims = match serde_json::from_value(data.claims.clone()) {
        Ok(c) => c,
        Err(e) => {
            return oauth_error(
                400,
                "invalid_grant",
                &format!("Invalid JWT: missing or malformed claim ({e})"),
            )
        }
    };
    if claims.iss != CLIENT_EMAIL {
        return oauth_error(400, "invalid_grant", "Invalid grant: account not found");
    }
    if claims.aud != shared.token_uri {
        return oauth_error(
            400,
            "invalid_grant",
            &format!(
                "Invalid JWT: Failed audience check. The expected value is {}",
                shared.token_uri
            ),
        );
    }
    let now = unix_now();
    let skew = 300;
    if claims.exp > claims.iat + 3600
        || claims.exp <= claims.iat
        || claims.iat > now + skew
        || claims.exp < now - skew
    {
        return oauth_error(
            400,
            "invalid_grant",
            "Invalid JWT: Token must be a short-lived token (60 minutes) and in a reasonable timeframe. Check your iat and exp values in the JWT claim.",
        );
    }
    if !claims.scope.split(' ').any(|s| s == FCM_SCOPE) {
        return oauth_error(
            400,
            "invalid_scope",
            "Invalid OAuth scope or ID token audience provided.",
        );
    }
    let n = shared.next_id.fetch_add(1, Ordering::SeqCst);
    let access_token = format!("ya29.fake-{n}-{:x}", now);
    {
        let mut inner = shared.lock();
        let now = Instant::now();
        // A lifetime too long for the clock never expires.
        let expires = now
            .checked_add(lifetime)
            .or_else(|| now.checked_add(Duration::from_secs(100 * 365 * 24 * 3600)))
            .unwrap_or(now);
        inner.issued.insert(access_token.clone(), expires);
        inner.grants.push(TokenGrant {
            claims: data.claims,
            kid: header.kid,
        });
    }
    Json(json!({
        "access_token": access_token,
        "expires_in": announced,
        "token_type": "Bearer",
    }))
    .into_response()
}

// ----------------------------------------------------------------------------
// messages:send

async fn send(shared: &Shared, project: &str, headers: &HeaderMap, body: &[u8]) -> Response {
    shared.lock().send_requests += 1;
    let unauthenticated = || {
        google_response(
            401,
            "UNAUTHENTICATED",
            "Request had invalid authentication credentials. Expected OAuth 2 access token, login cookie or other valid authentication credential. See https://developers.google.com/identity/sign-in/web/devconsole-project.",
            None,
        )
    };
    let Some(access_token) = headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
    else {
        return unauthenticated();
    };
    let (mode, known, unregistered, invalid) = {
        let inner = shared.lock();
        let known = inner
            .issued
            .get(access_token)
            .is_some_and(|exp| Instant::now() < *exp);
        (
            inner.send_mode.clone(),
            known,
            inner.unregistered.clone(),
            inner.invalid.clone(),
        )
    };
    if !known {
        return unauthenticated();
    }
    if project != PROJECT_ID {
        return google_response(
            403,
            "PERMISSION_DENIED",
            &format!("Permission 'cloudmessaging.messages.create' denied on resource '//cloudresourcemanager.googleapis.com/projects/{project}' (or it may not exist)."),
            None,
        );
    }
    if mode == SendMode::Hang {
        std::future::pending::<()>().await;
    }
    let request: Value = match serde_json::from_slice(body) {
        Ok(v) => v,
        Err(e) => {
            return google_response(
                400,
                "INVALID_ARGUMENT",
                &format!("Invalid JSON payload received. {e}"),
                None,
            )
        }
    };
    let normalised = match schemas().check_ref("SendMessageRequest", &request, "") {
        Ok(v) => v,
        Err(message) => return invalid_json(&message),
    };
    let Some(message) = normalised.get("message").cloned() else {
        return google_response(
            400,
            "INVALID_ARGUMENT",
            "Request contains an invalid argument.",
            Some("INVALID_ARGUMENT"),
        );
    };
    let targets = ["token", "topic", "condition", "fid"]
        .iter()
        .filter(|t| message.get(**t).is_some_and(|v| !v.is_null()))
        .count();
    if targets != 1 {
        return google_response(
            400,
            "INVALID_ARGUMENT",
            "Recipient of the message is not set.",
            Some("INVALID_ARGUMENT"),
        );
    }
    if payload_size(&message) > MAX_PAYLOAD_BYTES {
        return google_response(
            400,
            "INVALID_ARGUMENT",
            "Android message is too big",
            Some("INVALID_ARGUMENT"),
        );
    }
    if let Some(registration) = message.get("token").and_then(Value::as_str) {
        let malformed = registration.is_empty()
            || !registration
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b':' | b'.'));
        if malformed || invalid.contains(registration) {
            return invalid_token_body().pipe_response(400);
        }
        if unregistered.contains(registration) {
            return FcmErrorCode::Unregistered.error_body().pipe_response(404);
        }
    }
    if let SendMode::Answer {
        status,
        body,
        retry_after,
    } = mode.clone()
    {
        let mut resp = body.pipe_response(status);
        if let Some(ra) = retry_after.and_then(|ra| ra.parse().ok()) {
            resp.headers_mut().insert("retry-after", ra);
        }
        return resp;
    }
    if let SendMode::Fail { code, retry_after } = mode {
        let mut resp = code.error_body().pipe_response(code.http_status());
        if let Some(ra) = retry_after.and_then(|ra| ra.parse().ok()) {
            resp.headers_mut().insert("retry-after", ra);
        }
        return resp;
    }
    let validate_only = normalised
        .get("validateOnly")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
    if !validate_only {
        shared.lock().received.push(ReceivedMessage {
            project: project.to_string(),
            message,
            access_token: access_token.to_string(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap_or("").to_string()))
                .collect(),
        });
    }
    let name = if validate_only {
        format!("projects/{project}/messages/fake_message_id")
    } else {
        format!("projects/{project}/messages/0:{id}%fake")
    };
    Json(json!({ "name": name })).into_response()
}

trait PipeResponse {
    fn pipe_response(self, status: u16) -> Response;
}

impl PipeResponse for Value {
    fn pipe_response(self, status: u16) -> Response {
        let http = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (http, Json(self)).into_response()
    }
}

/// Bytes counted against FCM's 4096-byte limit: the serialised `notification` and
/// `data` of the message.
pub fn payload_size(message: &Value) -> usize {
    ["notification", "data"]
        .iter()
        .filter_map(|k| message.get(*k))
        .map(|v| v.to_string().len())
        .sum()
}

fn invalid_json(message: &str) -> Response {
    let mut body = google_error(400, "INVALID_ARGUMENT", message, None);
    body["error"]["details"] = json!([{
        "@type": "type.googleapis.com/google.rpc.BadRequest",
        "fieldViolations": [{ "description": message }],
    }]);
    body.pipe_response(400)
}

// ----------------------------------------------------------------------------
// Schema checks from the discovery document

struct Schemas(Map<String, Value>);

fn schemas() -> &'static Schemas {
    static SCHEMAS: OnceLock<Schemas> = OnceLock::new();
    SCHEMAS.get_or_init(|| {
        let doc: Value = serde_json::from_str(DISCOVERY).unwrap_or(Value::Null);
        Schemas(
            doc.get("schemas")
                .and_then(Value::as_object)
                .cloned()
                .unwrap_or_default(),
        )
    })
}

fn lower_camel(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut upper = false;
    for c in name.chars() {
        if c == '_' {
            upper = true;
        } else if upper {
            out.extend(c.to_uppercase());
            upper = false;
        } else {
            out.push(c);
        }
    }
    out
}

fn join(path: &str, field: &str) -> String {
    if path.is_empty() {
        field.to_string()
    } else {
        format!("{path}.{field}")
    }
}

impl Schemas {
    /// Checks `value` against the named schema; returns it with field names in
    /// camelCase, or Google's error message.
    fn check_ref(&self, name: &str, value: &Value, path: &str) -> Result<Value, String> {
        let Some(schema) = self.0.get(name) else {
            return Err(format!(
                "fake: schema {name} missing from the discovery document"
            ));
        };
        let Some(obj) = value.as_object() else {
            return Err(format!(
                "Invalid value at '{path}' (type.googleapis.com/google.firebase.fcm.v1.{name}), {value}"
            ));
        };
        let empty = Map::new();
        let props = schema
            .get("properties")
            .and_then(Value::as_object)
            .unwrap_or(&empty);
        let mut out = Map::new();
        for (key, v) in obj {
            let camel = lower_camel(key);
            let Some(prop) = props.get(&camel) else {
                let at = if path.is_empty() {
                    String::new()
                } else {
                    format!(" at '{path}'")
                };
                return Err(format!(
                    "Invalid JSON payload received. Unknown name \"{key}\"{at}: Cannot find field."
                ));
            };
            if v.is_null() {
                continue;
            }
            let checked = self.check_prop(prop, v, &join(path, &camel))?;
            out.insert(camel, checked);
        }
        Ok(Value::Object(out))
    }

    fn check_prop(&self, prop: &Value, v: &Value, path: &str) -> Result<Value, String> {
        if let Some(name) = prop.get("$ref").and_then(Value::as_str) {
            return self.check_ref(name, v, path);
        }
        let ty = prop.get("type").and_then(Value::as_str).unwrap_or("any");
        let bad = |t: &str| format!("Invalid value at '{path}' ({t}), {v}");
        match ty {
            "string" => {
                let s = match (v, prop.get("format").and_then(Value::as_str)) {
                    (Value::String(s), _) => s.clone(),
                    (Value::Number(n), Some("int64" | "uint64")) => n.to_string(),
                    _ => return Err(bad("TYPE_STRING")),
                };
                if let Some(allowed) = prop.get("enum").and_then(Value::as_array) {
                    if !allowed.iter().any(|a| a.as_str() == Some(s.as_str())) {
                        return Err(bad("TYPE_ENUM"));
                    }
                }
                if prop.get("format").and_then(Value::as_str) == Some("google-duration")
                    && !is_duration(&s)
                {
                    return Err(bad("type.googleapis.com/google.protobuf.Duration"));
                }
                Ok(v.clone())
            }
            "boolean" if v.is_boolean() => Ok(v.clone()),
            "boolean" => Err(bad("TYPE_BOOL")),
            "integer" if v.is_i64() || v.is_u64() => Ok(v.clone()),
            "integer" => Err(bad("TYPE_INT32")),
            "number" if v.is_number() => Ok(v.clone()),
            "number" => Err(bad("TYPE_FLOAT")),
            "array" => {
                let Some(items) = v.as_array() else {
                    return Err(bad("TYPE_LIST"));
                };
                let item_schema = prop.get("items").cloned().unwrap_or(json!({"type": "any"}));
                items
                    .iter()
                    .enumerate()
                    .map(|(i, item)| self.check_prop(&item_schema, item, &format!("{path}[{i}]")))
                    .collect::<Result<Vec<_>, _>>()
                    .map(Value::Array)
            }
            "object" => {
                let Some(map) = v.as_object() else {
                    return Err(bad("TYPE_MESSAGE"));
                };
                match prop.get("additionalProperties") {
                    Some(ap) if ap.get("type").and_then(Value::as_str) != Some("any") => {
                        for (k, val) in map {
                            self.check_prop(ap, val, &format!("{path}[{k}]"))?;
                        }
                        Ok(v.clone())
                    }
                    _ => Ok(v.clone()),
                }
            }
            _ => Ok(v.clone()),
        }
    }
}

/// `^[0-9]+(\.[0-9]{1,9})?s$`, proto3's JSON encoding of a Duration.
fn is_duration(s: &str) -> bool {
    let Some(num) = s.strip_suffix('s') else {
        return false;
    };
    let (secs, frac) = match num.split_once('.') {
        Some((a, b)) => (a, Some(b)),
        None => (num, None),
    };
    !secs.is_empty()
        && secs.bytes().all(|b| b.is_ascii_digit())
        && frac.is_none_or(|f| (1..=9).contains(&f.len()) && f.bytes().all(|b| b.is_ascii_digit()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert!(is_duration("60s"));
        assert!(is_duration("3.5s"));
        assert!(!is_duration("60"));
        assert!(!is_duration("s"));
        assert!(!is_duration("-1s"));
        assert!(!is_duration("1.s"));
    }

    #[test]
    fn discovery_document_loads_with_the_message_schema() {
        assert!(schemas().0.contains_key("Message"));
        assert!(schemas().0.contains_key("AndroidNotification"));
        assert!(decoding_key().is_some());
    }

    #[test]
    fn snake_and_camel_names_both_map_to_the_schema() {
        let msg = json!({"message": {"token": "t", "android": {"collapse_key": "k", "notification": {"clickAction": "x"}}}});
        let out = schemas().check_ref("SendMessageRequest", &msg, "").unwrap();
        assert_eq!(out["message"]["android"]["collapseKey"], "k");
        assert_eq!(
            out["message"]["android"]["notification"]["clickAction"],
            "x"
        );
        let err = schemas()
            .check_ref(
                "SendMessageRequest",
                &json!({"message": {"token": "t", "android": {"urgency": 1}}}),
                "",
            )
            .unwrap_err();
        assert!(
            err.contains("Unknown name \"urgency\" at 'message.android'"),
            "{err}"
        );
        let err = schemas()
            .check_ref(
                "SendMessageRequest",
                &json!({"message": {"token": "t", "data": {"n": 1}}}),
                "",
            )
            .unwrap_err();
        assert!(err.contains("message.data[n]"), "{err}");
    }
}
