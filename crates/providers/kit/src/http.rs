//! The HTTP plumbing every HTTP provider shares: one way to build the client,
//! check a configured URL, send a request, read the answer (bounded), honour
//! `Retry-After` and classify what went wrong on the way.
//!
//! ```no_run
//! use std::time::Duration;
//! use mesh_notify_provider_kit::http::{ClientSettings, Transport};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let client = ClientSettings::new(Duration::from_secs(5)).build()?;
//! let transport = Transport::new("ntfy", Duration::from_secs(5));
//! let answer = transport.send(client.post("https://ntfy.sh/").body("{}")).await?;
//! if !answer.status.is_success() {
//!     println!("{} (retry after {:?})", answer.status, answer.retry_after());
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::time::Duration;

use mesh_notify_core::{error_chain, parse_retry_after, NotifyError, Secret};
use reqwest::header::{HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::StatusCode;
use std::net::IpAddr;

use url::{Host, Url};

use crate::{ConfigIssue, Profile, ProviderContext};

/// `User-Agent` of every provider request.
pub const USER_AGENT: &str = concat!("mesh-notify/", env!("CARGO_PKG_VERSION"));

/// Default bound on an answer body: providers answer small JSON documents; a
/// larger answer is cut here (and marked [`Answer::truncated`]) rather than held
/// in memory whole.
pub const MAX_ANSWER_BYTES: usize = 64 * 1024;

/// How idle pooled connections are kept.
pub const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// How a provider's reqwest client is built: rustls (reqwest's `rustls` feature,
/// aws-lc-rs), one timeout for connecting and one for the whole exchange, idle
/// connections pooled for [`POOL_IDLE_TIMEOUT`], our `User-Agent`.
#[derive(Clone)]
pub struct ClientSettings {
    timeout: Duration,
    http2_only: bool,
    extra_roots: Vec<reqwest::Certificate>,
}

impl fmt::Debug for ClientSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientSettings")
            .field("timeout", &self.timeout)
            .field("http2_only", &self.http2_only)
            .field("extra_roots", &self.extra_roots.len())
            .finish()
    }
}

impl ClientSettings {
    /// HTTP/1.1 or HTTP/2 (by ALPN), `timeout` for connecting and for each whole
    /// exchange (connect, send, read the answer).
    pub fn new(timeout: Duration) -> Self {
        Self {
            timeout,
            http2_only: false,
            extra_roots: Vec::new(),
        }
    }

    /// HTTP/2 only, with prior knowledge and keep-alive pings (APNs).
    pub fn http2_only(mut self) -> Self {
        self.http2_only = true;
        self
    }

    /// Trusts one more root certificate (a private CA, a test server).
    pub fn trust(mut self, root: reqwest::Certificate) -> Self {
        self.extra_roots.push(root);
        self
    }

    /// The client. The error says why (never a secret).
    pub fn build(self) -> Result<reqwest::Client, String> {
        let mut builder = reqwest::Client::builder()
            .timeout(self.timeout)
            .connect_timeout(self.timeout)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .user_agent(USER_AGENT);
        if self.http2_only {
            builder = builder
                .http2_prior_knowledge()
                .http2_keep_alive_interval(Duration::from_secs(60))
                .http2_keep_alive_timeout(Duration::from_secs(20));
        }
        if !self.extra_roots.is_empty() {
            builder = builder.tls_certs_merge(self.extra_roots);
        }
        builder.build().map_err(|e| error_chain(&e))
    }
}

/// Reads a PEM root certificate (`ca_file`).
pub fn load_root_certificate(path: &std::path::Path) -> Result<reqwest::Certificate, String> {
    let pem = std::fs::read(path).map_err(|e| format!("cannot read `{}`: {e}", path.display()))?;
    if !String::from_utf8_lossy(&pem).contains("-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "`{}` is not a PEM certificate: no `-----BEGIN CERTIFICATE-----` block",
            path.display()
        ));
    }
    reqwest::Certificate::from_pem(&pem).map_err(|e| {
        format!(
            "`{}` is not a PEM certificate: {}",
            path.display(),
            error_chain(&e)
        )
    })
}

/// What a configured URL is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UrlRole {
    /// A base that paths are joined to: a trailing `/` is added, so a path
    /// prefix (`https://example.com/gotify`) is kept.
    Base,
    /// A complete endpoint, used as is (an OAuth token URI, a webhook URL).
    Endpoint,
}

/// Parses a configured URL: `http` or `https`, with a host, without credentials
/// (they would end up in logs; secrets go in their own keys), query or fragment.
/// The error says what is wrong, without repeating the URL.
pub fn parse_url(raw: &str, role: UrlRole) -> Result<Url, String> {
    let mut url = Url::parse(raw.trim()).map_err(|e| e.to_string())?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("scheme `{}` is not http or https", url.scheme()));
    }
    if url.cannot_be_a_base() || url.host_str().is_none() {
        return Err("no host".into());
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err("credentials in the URL would be logged; use the token keys".into());
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err("a query string or fragment in the URL is not allowed".into());
    }
    if role == UrlRole::Base && !url.path().ends_with('/') {
        let path = format!("{}/", url.path());
        url.set_path(&path);
    }
    Ok(url)
}

/// The profile's transport rule for a provider URL at `key` (a key of the
/// provider, e.g. `url`): `https` always; `http` in the development profile, or
/// in production when the provider sets `allow_insecure_http = true`.
pub fn check_https(
    ctx: &ProviderContext,
    key: &str,
    url: &str,
    allow_insecure_http: bool,
) -> Result<(), ConfigIssue> {
    let parsed =
        Url::parse(url.trim()).map_err(|e| ctx.issue(key, format!("`{url}` is not a URL: {e}")))?;
    match parsed.scheme() {
        "https" => Ok(()),
        "http" if ctx.profile == Profile::Development || allow_insecure_http => Ok(()),
        "http" => Err(ctx.issue(
            key,
            format!(
                "plain http:// is refused in the production profile; use https:// or set `{} = true`",
                ctx.key("allow_insecure_http")
            ),
        )),
        other => Err(ctx.issue(
            key,
            format!("scheme `{other}` is not supported (use https://)"),
        )),
    }
}

/// Whether `url` names a loopback, private, shared (100.64/10), link-local,
/// unspecified or broadcast address, or `localhost`: where a URL given by a
/// user (a webhook, a push endpoint) must not make the server connect. Host
/// names are not resolved: block internal networks at the egress too.
pub fn is_internal_address(url: &Url) -> bool {
    let internal_ip = |ip: IpAddr| match ip {
        IpAddr::V4(v4) => {
            v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || v4.octets()[0] == 100 && (v4.octets()[1] & 0xc0) == 64 // 100.64/10
        }
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6.is_unspecified()
                || (v6.segments()[0] & 0xfe00) == 0xfc00 // unique local
                || (v6.segments()[0] & 0xffc0) == 0xfe80 // link local
                || v6.to_ipv4_mapped().is_some_and(|v4| {
                    v4.is_loopback() || v4.is_private() || v4.is_link_local()
                })
        }
    };
    match url.host() {
        Some(Host::Ipv4(ip)) => internal_ip(IpAddr::V4(ip)),
        Some(Host::Ipv6(ip)) => internal_ip(IpAddr::V6(ip)),
        Some(Host::Domain(d)) => {
            let d = d.trim_end_matches('.').to_ascii_lowercase();
            d == "localhost" || d.ends_with(".localhost")
        }
        None => true,
    }
}

/// `{prefix}{token}` as a sensitive header value (hidden from reqwest's and
/// hyper's `Debug`), when the token can be one: printable ASCII, no spaces,
/// surrounding whitespace trimmed. `None` for anything else (line breaks,
/// control characters, non-ASCII), which no token contains.
pub fn token_header(prefix: &str, token: &Secret) -> Option<HeaderValue> {
    let raw = token.expose().trim();
    if raw.is_empty() || !raw.bytes().all(|b| b.is_ascii_graphic()) {
        return None;
    }
    let mut value = HeaderValue::from_str(&format!("{prefix}{raw}")).ok()?;
    value.set_sensitive(true);
    Some(value)
}

/// Whether an HTTP status means "try again later": 408, 425, 429 and 5xx.
pub fn is_transient_status(status: StatusCode) -> bool {
    matches!(status.as_u16(), 408 | 425 | 429 | 500..=599)
}

/// One answer, its body read up to a bound.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body (lossy UTF-8), at most the transport's answer limit.
    pub body: String,
    /// Whether the body was longer than the limit and cut.
    pub truncated: bool,
}

impl Answer {
    /// A header's value, when it is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    /// The raw `Retry-After` header.
    pub fn retry_after_header(&self) -> Option<&str> {
        self.header(RETRY_AFTER.as_str())
    }

    /// `Retry-After` as a delay (seconds or an HTTP date).
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after_header().and_then(parse_retry_after)
    }

    /// At most `max` characters of the body, for error messages.
    pub fn excerpt(&self, max: usize) -> String {
        self.body.chars().take(max).collect()
    }
}

/// Sends requests to one service and classifies what goes wrong on the way.
///
/// Errors never contain the request URL (device tokens, topics and push
/// endpoints live in URLs): reqwest's error is stripped of it, and only the
/// endpoint given to [`Transport::with_endpoint`] is named.
#[derive(Debug, Clone)]
pub struct Transport {
    service: &'static str,
    timeout: Duration,
    endpoint: Option<String>,
    limit: usize,
}

impl Transport {
    /// For `service` (its name in messages: `Gotify`, `FCM`, ...) whose client
    /// has `timeout`.
    pub fn new(service: &'static str, timeout: Duration) -> Self {
        Self {
            service,
            timeout,
            endpoint: None,
            limit: MAX_ANSWER_BYTES,
        }
    }

    /// Names `endpoint` in connection errors (`cannot connect to APNs at …`).
    pub fn with_endpoint(mut self, endpoint: impl fmt::Display) -> Self {
        self.endpoint = Some(endpoint.to_string());
        self
    }

    /// Reads at most `bytes` of an answer (default [`MAX_ANSWER_BYTES`]).
    pub fn with_answer_limit(mut self, bytes: usize) -> Self {
        self.limit = bytes;
        self
    }

    /// The timeout the messages mention.
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Classifies a reqwest error: a request that cannot be built is permanent
    /// (nothing was sent, and a retry would build the same request); a timeout,
    /// a refused connection or any other failure on the way is transient.
    pub fn error(&self, err: reqwest::Error) -> NotifyError {
        let err = err.without_url();
        let service = self.service;
        if err.is_builder() {
            NotifyError::permanent(format!(
                "cannot build the {service} request (not sent): {}",
                error_chain(&err)
            ))
        } else if err.is_timeout() {
            NotifyError::transient(format!(
                "{service} did not answer within {:?}",
                self.timeout
            ))
        } else if err.is_connect() {
            let at = self
                .endpoint
                .as_deref()
                .map(|e| format!(" at {e}"))
                .unwrap_or_default();
            NotifyError::transient(format!(
                "cannot connect to {service}{at}: {}",
                error_chain(&err)
            ))
        } else {
            NotifyError::transient(format!("{service} request failed: {}", error_chain(&err)))
        }
    }

    /// Sends the request and reads the answer (bounded). A status is not an error
    /// here: the provider classifies it.
    pub async fn send(&self, request: reqwest::RequestBuilder) -> Result<Answer, NotifyError> {
        let response = request.send().await.map_err(|e| self.error(e))?;
        self.read(response).await
    }

    /// Reads an answer, its body up to the limit; the rest is not read (the
    /// connection is then closed rather than reused).
    pub async fn read(&self, mut response: reqwest::Response) -> Result<Answer, NotifyError> {
        let status = response.status();
        let headers = std::mem::take(response.headers_mut());
        let mut body = Vec::new();
        let mut truncated = false;
        while let Some(chunk) = response.chunk().await.map_err(|e| self.error(e))? {
            let room = self.limit.saturating_sub(body.len());
            if chunk.len() > room {
                body.extend_from_slice(&chunk[..room]);
                truncated = true;
                break;
            }
            body.extend_from_slice(&chunk);
        }
        Ok(Answer {
            status,
            headers,
            body: String::from_utf8_lossy(&body).into_owned(),
            truncated,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mesh_notify_core::ErrorClass;

    fn ctx(profile: Profile) -> ProviderContext {
        ProviderContext::new(profile, Duration::from_secs(5), "ntfy")
    }

    #[test]
    fn urls_are_http_with_a_host_and_no_secrets() {
        let base = parse_url("https://example.com/gotify", UrlRole::Base).unwrap();
        assert_eq!(base.as_str(), "https://example.com/gotify/");
        let end = parse_url("https://oauth2.example.com/token", UrlRole::Endpoint).unwrap();
        assert_eq!(end.as_str(), "https://oauth2.example.com/token");
        assert!(parse_url("ftp://example.com", UrlRole::Base)
            .unwrap_err()
            .contains("scheme"));
        assert!(parse_url("https://u:p@example.com", UrlRole::Base)
            .unwrap_err()
            .contains("credentials"));
        assert!(parse_url("https://example.com/?token=x", UrlRole::Base)
            .unwrap_err()
            .contains("query"));
        assert!(parse_url("not a url", UrlRole::Base).is_err());
    }

    #[test]
    fn production_wants_https_unless_allowed() {
        let dev = ctx(Profile::Development);
        let prod = ctx(Profile::Production);
        assert!(check_https(&dev, "url", "http://ntfy.lan", false).is_ok());
        assert!(check_https(&prod, "url", "https://ntfy.sh", false).is_ok());
        assert!(check_https(&prod, "url", "http://ntfy.lan", true).is_ok());
        let err = check_https(&prod, "url", "http://ntfy.lan", false).unwrap_err();
        assert_eq!(err.key, "providers.ntfy.url");
        assert!(err
            .message
            .contains("providers.ntfy.allow_insecure_http = true"));
        let err = check_https(&dev, "url", "ws://ntfy.lan", false).unwrap_err();
        assert!(err.message.contains("scheme `ws`"), "{err}");
    }

    #[test]
    fn token_headers_are_sensitive_and_refuse_what_no_token_holds() {
        let v = token_header("Bearer ", &Secret::new(" tk_abc \n")).unwrap();
        assert_eq!(v.to_str().unwrap(), "Bearer tk_abc");
        assert!(v.is_sensitive());
        assert!(token_header("", &Secret::new("two words")).is_none());
        assert!(token_header("", &Secret::new("é")).is_none());
        assert!(token_header("", &Secret::new("  ")).is_none());
    }

    #[test]
    fn internal_addresses_are_recognised() {
        for u in [
            "http://127.0.0.1:9090/admin",
            "http://localhost/x",
            "http://api.localhost/x",
            "https://10.1.2.3/",
            "https://192.168.1.1/",
            "https://172.16.0.1/",
            "https://169.254.169.254/latest/meta-data",
            "https://100.64.0.1/",
            "https://[::1]/",
            "https://[fd00::1]/",
            "https://[fe80::1]/",
            "https://[::ffff:127.0.0.1]/",
            "https://0.0.0.0/",
        ] {
            assert!(is_internal_address(&Url::parse(u).unwrap()), "{u}");
        }
        for u in [
            "https://hooks.example.com/x",
            "https://8.8.8.8/",
            "https://[2001:db8::1]/",
        ] {
            assert!(!is_internal_address(&Url::parse(u).unwrap()), "{u}");
        }
    }

    #[test]
    fn transient_statuses() {
        for s in [408, 425, 429, 500, 502, 503, 504] {
            assert!(is_transient_status(StatusCode::from_u16(s).unwrap()), "{s}");
        }
        for s in [200, 400, 401, 403, 404, 410, 413] {
            assert!(
                !is_transient_status(StatusCode::from_u16(s).unwrap()),
                "{s}"
            );
        }
    }

    #[tokio::test]
    async fn refused_connections_are_transient_and_name_the_endpoint_not_the_url() {
        // A port that was free a moment ago: nothing listens there.
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let client = ClientSettings::new(Duration::from_secs(5)).build().unwrap();
        let t = Transport::new("ntfy", Duration::from_secs(5)).with_endpoint("the ntfy server");
        let err = t
            .send(client.post(format!("http://127.0.0.1:{port}/secret-topic")))
            .await
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Transient);
        let text = err.to_string();
        assert!(
            text.contains("cannot connect to ntfy at the ntfy server"),
            "{text}"
        );
        assert!(!text.contains("secret-topic"), "{text}");
    }

    #[tokio::test]
    async fn a_request_that_cannot_be_built_is_permanent() {
        let client = ClientSettings::new(Duration::from_secs(5)).build().unwrap();
        let t = Transport::new("ntfy", Duration::from_secs(5));
        let err = t
            .send(
                client
                    .post("http://127.0.0.1:1/")
                    .header("bad header name", "x"),
            )
            .await
            .unwrap_err();
        assert_eq!(err.class(), ErrorClass::Permanent, "{err}");
    }
}
