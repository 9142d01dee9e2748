//! Google service-account authentication: the OAuth 2 JWT-bearer grant
//! (RFC 7523, as Google documents it for server-to-server apps), with the access
//! token cached until shortly before it expires and one refresh in flight at a time.

use std::path::Path;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mesh_notify_core::{parse_retry_after, NotifyError, Secret};
use reqwest::StatusCode;
use serde::{Deserialize, Serialize};
use url::Url;

use crate::FcmConfigError;
use mesh_notify_provider_kit::http::Transport;

/// The OAuth scope FCM's `messages:send` needs.
pub const FCM_SCOPE: &str = "https://www.googleapis.com/auth/firebase.messaging";
/// Google's token endpoint, used when neither the config nor the key file names one.
pub const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
/// Google accepts assertions valid for at most one hour.
const ASSERTION_LIFETIME: u64 = 3600;
/// A cached token is replaced this long before it expires.
const REFRESH_MARGIN: Duration = Duration::from_secs(60);
/// Lifetime assumed when the token endpoint gives no `expires_in` (Google always
/// does; its tokens live 3599 s).
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);
/// The longest a token is cached, whatever `expires_in` says: Google's access
/// tokens live one hour, and a larger claim is an endpoint bug (or an overflow
/// waiting to happen).
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(3600);

/// The fields of a Google service-account key file that we use.
#[derive(Deserialize)]
pub(crate) struct ServiceAccountKey {
    #[serde(rename = "type", default)]
    pub(crate) kind: Option<String>,
    #[serde(default)]
    pub(crate) project_id: Option<String>,
    #[serde(default)]
    pub(crate) private_key_id: Option<String>,
    pub(crate) private_key: Secret,
    pub(crate) client_email: String,
    #[serde(default)]
    pub(crate) token_uri: Option<String>,
}

impl ServiceAccountKey {
    /// Reads and checks a key file; errors name the path and never quote the key.
    pub(crate) fn from_file(path: &Path) -> Result<Self, FcmConfigError> {
        let raw =
            std::fs::read_to_string(path).map_err(|source| FcmConfigError::ServiceAccountFile {
                path: path.to_path_buf(),
                source,
            })?;
        let invalid = |reason: String| FcmConfigError::ServiceAccountJson {
            path: path.to_path_buf(),
            reason,
        };
        let key: ServiceAccountKey = serde_json::from_str(&raw).map_err(|e| {
            // serde_json's data errors may quote a value; only "missing field"
            // messages are safe to repeat.
            let what = match e.classify() {
                serde_json::error::Category::Data if e.to_string().starts_with("missing field") => {
                    e.to_string()
                }
                serde_json::error::Category::Data => format!(
                    "a field has the wrong type (line {}, column {})",
                    e.line(),
                    e.column()
                ),
                _ => format!("not valid JSON (line {}, column {})", e.line(), e.column()),
            };
            invalid(what)
        })?;
        if let Some(kind) = &key.kind {
            if kind != "service_account" {
                return Err(invalid(format!(
                    "`type` is `{kind}`, expected `service_account` (download a key for a service account, not OAuth client credentials)"
                )));
            }
        }
        if key.client_email.trim().is_empty() {
            return Err(invalid("`client_email` is empty".into()));
        }
        if key.private_key.is_empty() {
            return Err(invalid("`private_key` is empty".into()));
        }
        Ok(key)
    }
}

#[derive(Serialize)]
struct AssertionClaims<'a> {
    iss: &'a str,
    scope: &'a str,
    aud: &'a str,
    iat: u64,
    exp: u64,
}

#[derive(Deserialize)]
struct TokenAnswer {
    access_token: String,
    /// Seconds, as the endpoint sent it: taken apart by [`token_lifetime`], never
    /// trusted to be a sane integer.
    #[serde(default)]
    expires_in: Option<serde_json::Value>,
    #[serde(default)]
    token_type: Option<String>,
}

/// How long an access token may be cached, from the token endpoint's
/// `expires_in`: absent → [`DEFAULT_LIFETIME`]; larger than
/// [`MAX_TOKEN_LIFETIME`] (however large, including floats and numbers beyond
/// `u64`) → that maximum; zero, negative or not a number → `None`: the token is
/// used for this send only, and the next send fetches a new one.
pub fn token_lifetime(expires_in: Option<&serde_json::Value>) -> Option<Duration> {
    use serde_json::Value;
    let Some(value) = expires_in else {
        return Some(DEFAULT_LIFETIME);
    };
    // Some endpoints send the number as a string.
    let secs: f64 = match value {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse().ok()?,
        _ => return None,
    };
    if !secs.is_finite() || secs <= 0.0 {
        return None;
    }
    let max = MAX_TOKEN_LIFETIME.as_secs_f64();
    Some(Duration::from_secs_f64(secs.min(max)))
}

#[derive(Deserialize)]
struct OAuthError {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

struct CachedToken {
    token: Secret,
    refresh_at: Instant,
}

/// Issues and caches access tokens for one service account.
pub(crate) struct ServiceAccountAuth {
    client: reqwest::Client,
    transport: Transport,
    token_uri: Url,
    client_email: String,
    key_id: Option<String>,
    key: EncodingKey,
    /// Held across a refresh, so at most one token request is in flight and the
    /// callers that waited reuse its result.
    cache: tokio::sync::Mutex<Option<CachedToken>>,
}

impl std::fmt::Debug for ServiceAccountAuth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServiceAccountAuth")
            .field("token_uri", &self.token_uri.as_str())
            .field("client_email", &self.client_email)
            .field("private_key_id", &self.key_id)
            .field("private_key", &"***")
            .finish()
    }
}

impl ServiceAccountAuth {
    /// Loads the RSA key and proves it can sign.
    pub(crate) fn new(
        client: reqwest::Client,
        key: &ServiceAccountKey,
        token_uri: Url,
        timeout: Duration,
        path: &Path,
    ) -> Result<Self, FcmConfigError> {
        let bad_key = |reason: String| FcmConfigError::PrivateKey {
            path: path.to_path_buf(),
            reason,
        };
        let encoding = EncodingKey::from_rsa_pem(key.private_key.expose().as_bytes())
            .map_err(|e| bad_key(e.to_string()))?;
        let auth = Self {
            transport: Transport::new("Google's token endpoint", timeout).with_endpoint(&token_uri),
            client,
            token_uri,
            client_email: key.client_email.clone(),
            key_id: key.private_key_id.clone(),
            key: encoding,
            cache: tokio::sync::Mutex::new(None),
        };
        // Key parsing is lazy in the signer: sign once now so a bad key is a
        // start-up error rather than a failure on the first notification.
        auth.assertion().map_err(|e| bad_key(e.to_string()))?;
        Ok(auth)
    }

    pub(crate) fn token_uri(&self) -> &Url {
        &self.token_uri
    }

    pub(crate) fn client_email(&self) -> &str {
        &self.client_email
    }

    fn assertion(&self) -> Result<String, jsonwebtoken::errors::Error> {
        let iat = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let claims = AssertionClaims {
            iss: &self.client_email,
            scope: FCM_SCOPE,
            aud: self.token_uri.as_str(),
            iat,
            exp: iat.saturating_add(ASSERTION_LIFETIME),
        };
        let mut header = Header::new(Algorithm::RS256);
        header.kid = self.key_id.clone();
        jsonwebtoken::encode(&header, &claims, &self.key)
    }

    /// A valid access token: the cached one, or a fresh one from the token endpoint.
    pub(crate) async fn access_token(&self) -> Result<Secret, NotifyError> {
        let mut cache = self.cache.lock().await;
        if let Some(cached) = cache.as_ref() {
            if Instant::now() < cached.refresh_at {
                return Ok(cached.token.clone());
            }
        }
        let fresh = self.fetch().await?;
        let token = fresh.token.clone();
        *cache = Some(fresh);
        Ok(token)
    }

    /// Forgets `used` if it is still the cached token (FCM refused it).
    pub(crate) async fn invalidate(&self, used: &Secret) {
        let mut cache = self.cache.lock().await;
        if cache.as_ref().is_some_and(|c| &c.token == used) {
            *cache = None;
        }
    }

    async fn fetch(&self) -> Result<CachedToken, NotifyError> {
        let assertion = self.assertion().map_err(|e| {
            NotifyError::misconfigured(format!(
                "cannot sign the OAuth assertion for {}: {e}",
                self.client_email
            ))
        })?;
        let body = url::form_urlencoded::Serializer::new(String::new())
            .append_pair("grant_type", JWT_BEARER)
            .append_pair("assertion", &assertion)
            .finish();
        let started = Instant::now();
        let request = self
            .client
            .post(self.token_uri.clone())
            .header(
                reqwest::header::CONTENT_TYPE,
                "application/x-www-form-urlencoded",
            )
            .body(body);
        let answer = self.transport.send(request).await.map_err(|e| match e {
            // Built from the configuration alone (token_uri, the signed
            // assertion): the provider's problem, not one notification's.
            NotifyError::Permanent { reason } => NotifyError::misconfigured(reason),
            other => other,
        })?;
        let (status, text) = (answer.status, answer.body.as_str());
        if status != StatusCode::OK {
            return Err(classify_token_error(
                status,
                answer.retry_after_header(),
                text,
                self.token_uri.as_str(),
                &self.client_email,
            ));
        }
        let answer: TokenAnswer = serde_json::from_str(text).map_err(|_| {
            NotifyError::misconfigured(format!(
                "the token endpoint {} answered 200 without an access_token; is token_uri right?",
                self.token_uri
            ))
        })?;
        if let Some(kind) = &answer.token_type {
            if !kind.eq_ignore_ascii_case("bearer") {
                return Err(NotifyError::misconfigured(format!(
                    "the token endpoint {} issued a `{kind}` token, expected Bearer",
                    self.token_uri
                )));
            }
        }
        let token = answer.access_token.trim();
        if token.is_empty()
            || reqwest::header::HeaderValue::from_str(&format!("Bearer {token}")).is_err()
        {
            // The token never goes on the wire, and every send would fail the
            // same way: the endpoint is not a Google token endpoint.
            return Err(NotifyError::misconfigured(format!(
                "the token endpoint {} issued an access_token that is empty or cannot go in \
                 an Authorization header; is token_uri right?",
                self.token_uri
            )));
        }
        let lifetime = token_lifetime(answer.expires_in.as_ref());
        let refresh_at = match lifetime {
            Some(lifetime) => started
                .checked_add(lifetime.saturating_sub(REFRESH_MARGIN))
                .unwrap_or(started),
            None => {
                tracing::warn!(
                    token_uri = %self.token_uri,
                    expires_in = %answer.expires_in.as_ref().map(|v| v.to_string()).unwrap_or_default(),
                    "the token endpoint gave an unusable expires_in; the access token is used once, not cached"
                );
                started
            }
        };
        tracing::debug!(
            token_uri = %self.token_uri,
            expires_in = ?lifetime,
            "obtained an FCM access token"
        );
        Ok(CachedToken {
            token: Secret::new(token),
            refresh_at,
        })
    }
}

/// Classifies a non-200 answer of the OAuth token endpoint.
///
/// OAuth refusals (`invalid_grant`, `invalid_client`, `invalid_scope`,
/// `unauthorized_client`, ... with 400/401/403) mean the service account or its key
/// is wrong: misconfigured. 408, 429 and 5xx are transient (with `Retry-After`).
/// Anything else (404, ...) means `token_uri` does not point at a token endpoint:
/// misconfigured.
pub fn classify_token_error(
    status: StatusCode,
    retry_after: Option<&str>,
    body: &str,
    token_uri: &str,
    client_email: &str,
) -> NotifyError {
    let detail = match serde_json::from_str::<OAuthError>(body) {
        Ok(e) => match e.error_description.filter(|d| !d.is_empty()) {
            Some(d) => format!("{}: {d}", e.error),
            None => e.error,
        },
        Err(_) => body.chars().take(200).collect(),
    };
    match status.as_u16() {
        408 | 425 | 429 | 500..=599 => NotifyError::Transient {
            reason: format!("Google's token endpoint {token_uri} answered {status}: {detail}"),
            retry_after: retry_after.and_then(parse_retry_after),
        },
        400 | 401 | 403 => NotifyError::misconfigured(format!(
            "Google refused the service account {client_email} at {token_uri} ({status}, {detail}); check that the key in service_account_file is current and the account is enabled"
        )),
        _ => NotifyError::misconfigured(format!(
            "the token endpoint {token_uri} answered {status}: {detail}; is token_uri right?"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn lifetime(v: serde_json::Value) -> Option<Duration> {
        token_lifetime(Some(&v))
    }

    #[test]
    fn expires_in_is_bounded_and_never_overflows() {
        assert_eq!(token_lifetime(None), Some(DEFAULT_LIFETIME));
        assert_eq!(lifetime(json!(3599)), Some(Duration::from_secs(3599)));
        assert_eq!(lifetime(json!("3599")), Some(Duration::from_secs(3599)));
        // Huge: capped.
        for huge in [
            json!(u64::MAX),
            json!(i64::MAX),
            json!(1e300),
            json!("1e30"),
        ] {
            assert_eq!(lifetime(huge), Some(MAX_TOKEN_LIFETIME));
        }
        let beyond_u64: serde_json::Value =
            serde_json::from_str("184467440737095516150000").unwrap();
        assert_eq!(lifetime(beyond_u64), Some(MAX_TOKEN_LIFETIME));
        // Zero, negative, not a number: use once, do not cache.
        for bad in [
            json!(0),
            json!(-1),
            json!(i64::MIN),
            json!(-1e300),
            json!("soon"),
            json!(null),
            json!(true),
            json!([3600]),
        ] {
            assert_eq!(lifetime(bad.clone()), None, "{bad}");
        }
        // Even the largest lifetime fits on an Instant.
        let now = Instant::now();
        assert!(now.checked_add(MAX_TOKEN_LIFETIME).is_some());
    }
}
