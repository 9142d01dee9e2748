//! The Mesh web client: static assets from `crates/server/web/`, embedded in the
//! binary (`include_bytes!`, no build step) and served at `/` with a strict
//! Content-Security-Policy; `POST /api/me/test-push`, which the client's
//! notification settings use to check that a push reaches the user; and
//! `GET /api/webpush/key`, the VAPID public key browsers subscribe with.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use mesh_notify_core::Language;
use serde_json::json;

use crate::auth::AuthUser;
use crate::error::AppError;
use crate::state::AppState;
use crate::store;
use crate::throttle::Window;

/// One embedded file: its URL path, content type and bytes.
struct Asset {
    path: &'static str,
    content_type: &'static str,
    bytes: &'static [u8],
}

macro_rules! asset {
    ($path:literal, $file:literal, $ty:literal) => {
        Asset {
            path: $path,
            content_type: $ty,
            bytes: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/web/", $file)),
        }
    };
}

/// Every file of `crates/server/web/` (a unit test checks that none is missing).
const ASSETS: &[Asset] = &[
    asset!("/", "index.html", "text/html; charset=utf-8"),
    asset!("/app.js", "app.js", "text/javascript; charset=utf-8"),
    asset!("/api.js", "api.js", "text/javascript; charset=utf-8"),
    asset!("/call.js", "call.js", "text/javascript; charset=utf-8"),
    asset!("/i18n.js", "i18n.js", "text/javascript; charset=utf-8"),
    asset!(
        "/settings.js",
        "settings.js",
        "text/javascript; charset=utf-8"
    ),
    asset!("/sw.js", "sw.js", "text/javascript; charset=utf-8"),
    asset!("/style.css", "style.css", "text/css; charset=utf-8"),
    asset!("/favicon.svg", "favicon.svg", "image/svg+xml"),
    asset!(
        "/manifest.webmanifest",
        "manifest.webmanifest",
        "application/manifest+json"
    ),
];

/// The client's policy: its own scripts, styles and connections only (the
/// WebSocket is same-origin, which `'self'` covers), media from the camera
/// (`blob:`/`mediastream:` are not fetched), no plugins, no framing.
pub(crate) const CONTENT_SECURITY_POLICY: &str = "default-src 'self'; script-src 'self'; \
     style-src 'self'; img-src 'self' blob: data:; media-src 'self' blob: mediastream:; \
     connect-src 'self'; worker-src 'self'; manifest-src 'self'; object-src 'none'; \
     base-uri 'none'; form-action 'self'; frame-ancestors 'none'";

/// Test pushes allowed per user within [`TEST_PUSH_WINDOW`].
const TEST_PUSHES: u32 = 3;
const TEST_PUSH_WINDOW: Duration = Duration::from_secs(60);

/// The web client's routes, merged into the public router.
pub(crate) fn router() -> Router<AppState> {
    let mut router = Router::new();
    for asset in ASSETS {
        router = router.route(asset.path, get(move || async move { serve(asset) }));
    }
    let limit = Arc::new(TestPushLimit(Window::new(
        TEST_PUSHES,
        TEST_PUSH_WINDOW,
        100_000,
    )));
    router
        .route("/api/me/test-push", post(test_push))
        .route("/api/webpush/key", get(webpush_key))
        .layer(Extension(limit))
}

fn serve(asset: &'static Asset) -> Response {
    let mut response = asset.bytes.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CONTENT_SECURITY_POLICY),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    // Embedded in the binary: a new build is a new client; revalidate each load.
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    headers.insert(
        "permissions-policy",
        HeaderValue::from_static("camera=(self), microphone=(self), geolocation=()"),
    );
    response
}

/// Test pushes per user.
struct TestPushLimit(Window);

/// `POST /api/me/test-push` → `202 {"queued": true, "id"}`: queues a system
/// notification to the caller, through the same route and addresses as any
/// other. At most [`TEST_PUSHES`] per user per minute (`429` + `Retry-After`).
async fn test_push(
    State(state): State<AppState>,
    Extension(limit): Extension<Arc<TestPushLimit>>,
    AuthUser(user): AuthUser,
) -> Result<Response, AppError> {
    let key = user.id.to_string();
    if let Some(wait) = limit.0.blocked(&key) {
        metrics::counter!("mesh_server_throttled_total", "what" => "test_push").increment(1);
        let secs = crate::throttle::retry_after_secs(wait);
        return Err(AppError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "too_many_attempts",
            format!("too many test pushes; try again in {secs} s"),
        )
        .retry_after(secs));
    }
    limit.0.record(&key);
    let who = user.clone();
    let (recipient, prefs) = state
        .store
        .call(move |conn| {
            Ok((
                store::recipient(conn, &who)?,
                crate::prefs::load(conn, who.id)?,
            ))
        })
        .await?;
    let language = prefs.language_or(state.language);
    let (title, body) = match language {
        Language::En => ("🔔 Mesh test notification", "Mesh can reach you here."),
        _ => (
            "🔔 Notification de test Mesh",
            "Mesh peut vous joindre ici.",
        ),
    };
    let n = state
        .digests
        .composer(language)
        .system(recipient, title, body);
    let id = n.id.to_string();
    state.dispatcher.submit(n).await.map_err(|e| {
        tracing::error!(error = %e, "could not queue a test push");
        AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_unavailable",
            "the notification queue is unavailable; try again later",
        )
    })?;
    metrics::counter!("mesh_server_notifications_queued_total").increment(1);
    tracing::info!(user = user.id, "test push queued");
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({ "queued": true, "id": id })),
    )
        .into_response())
}

/// The VAPID public key in the webpush provider's description (the provider is
/// behind `dyn Notifier`; its description names the key, which is public).
fn vapid_public_key(description: &str) -> Option<&str> {
    let rest = description.strip_prefix("VAPID public key=")?;
    let key = rest.split(',').next()?.trim();
    (!key.is_empty()).then_some(key)
}

/// `GET /api/webpush/key` → `{"public_key"}` (base64url), or `404
/// webpush_unavailable` when the server has no webpush provider.
async fn webpush_key(State(state): State<AppState>) -> Result<Json<serde_json::Value>, AppError> {
    state
        .dispatcher
        .providers()
        .into_iter()
        .find(|p| p.name() == "webpush")
        .and_then(|p| vapid_public_key(&p.describe()).map(str::to_owned))
        .map(|key| Json(json!({ "public_key": key })))
        .ok_or_else(|| {
            AppError::new(
                StatusCode::NOT_FOUND,
                "webpush_unavailable",
                "this server has no Web Push provider",
            )
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_vapid_key_is_read_from_the_description() {
        assert_eq!(
            vapid_public_key("VAPID public key=BAbc-_1, subject=mailto:a@b.c, ttl=1s"),
            Some("BAbc-_1")
        );
        assert_eq!(vapid_public_key("gotify"), None);
        assert_eq!(vapid_public_key("VAPID public key=, x"), None);
    }

    #[test]
    fn every_file_of_the_web_folder_is_embedded() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("web");
        let mut files: Vec<String> = std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        files.sort();
        for f in &files {
            let path = if f == "index.html" {
                "/".to_string()
            } else {
                format!("/{f}")
            };
            assert!(
                ASSETS.iter().any(|a| a.path == path),
                "web/{f} is not in ASSETS"
            );
        }
        assert_eq!(files.len(), ASSETS.len());
    }

    #[test]
    fn the_policy_allows_no_inline_script() {
        assert!(CONTENT_SECURITY_POLICY.starts_with("default-src 'self'"));
        assert!(!CONTENT_SECURITY_POLICY.contains("unsafe"));
    }
}
