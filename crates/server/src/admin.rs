//! Health and metrics. The public listener answers `GET /health` with only
//! `{"status": "ok" | "degraded"}`; the detailed health (providers, outbox, database,
//! connections) and the Prometheus `/metrics` are served on the admin listener
//! (`server.admin_bind`, loopback by default).
//!
//! Provider health checks reach the providers themselves (Gotify's `/health`, a TLS
//! handshake, an SMTP connection), so their results are cached: at most one live
//! check per provider per [`PROVIDER_CHECK_TTL`], however many requests come. The
//! public answer never checks providers and is itself cached for a second.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use futures_util::future::join_all;
use mesh_notify_core::Health;
use serde_json::{json, Value};

use crate::error::AppError;
use crate::state::AppState;

/// How long a provider's health check result is reused.
pub(crate) const PROVIDER_CHECK_TTL: Duration = Duration::from_secs(30);

/// How long the public status is reused.
const PUBLIC_TTL: Duration = Duration::from_secs(1);

/// Longest wait for one check.
const CHECK_TIMEOUT: Duration = Duration::from_secs(3);

/// Cached health results.
#[derive(Default)]
pub(crate) struct HealthCache {
    /// Provider name → (checked at, result). Held across a refresh, so concurrent
    /// requests wait for the one live check instead of making their own.
    providers: tokio::sync::Mutex<HashMap<String, (Instant, Health)>>,
    /// The public status and when it was computed.
    public: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

/// The admin router: detailed `/health` and `/metrics`.
pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .route("/health", get(detailed_health))
        .route("/metrics", get(metrics_text))
        .fallback(|| async {
            AppError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
        })
        .with_state(state)
}

/// Whether the server can take messages: its database answers and its outbox works.
async fn core_ok(state: &AppState) -> (bool, bool, Option<(Value, bool)>) {
    let db = state
        .store
        .call(|conn| Ok(conn.query_row("SELECT 1", crate::db::params![], |r| r.get::<_, i64>(0))?))
        .await
        .is_ok();
    let outbox = match state.dispatcher.outbox() {
        Some(o) => {
            let h = tokio::time::timeout(CHECK_TIMEOUT, o.health())
                .await
                .unwrap_or_else(|_| timed_out());
            let ok = h.is_usable();
            let stats = match o.stats().await {
                Ok(s) => json!(s),
                Err(e) => json!({"error": e.to_string()}),
            };
            Some((
                json!({"backend": o.backend(), "health": health_json(&h), "stats": stats}),
                ok,
            ))
        }
        None => None,
    };
    let outbox_ok = outbox.as_ref().is_none_or(|(_, ok)| *ok);
    (db && outbox_ok, db, outbox)
}

/// `GET /health` (public): `{"status": "ok"}` (200) or `{"status": "degraded"}`
/// (503, the database or the outbox does not work). Nothing else is revealed.
pub(crate) async fn public_health(State(state): State<AppState>) -> Response {
    let ok = {
        let mut cached = state.health.public.lock().await;
        match *cached {
            Some((at, ok)) if at.elapsed() < PUBLIC_TTL => ok,
            _ => {
                let (ok, _, _) = core_ok(&state).await;
                *cached = Some((Instant::now(), ok));
                ok
            }
        }
    };
    if ok {
        (StatusCode::OK, Json(json!({"status": "ok"}))).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "degraded"})),
        )
            .into_response()
    }
}

fn timed_out() -> Health {
    Health::Unhealthy(format!("no answer within {CHECK_TIMEOUT:?}"))
}

fn health_json(h: &Health) -> Value {
    match h {
        Health::Healthy => json!({"status": "healthy"}),
        Health::Degraded(d) => json!({"status": "degraded", "detail": d}),
        Health::Unhealthy(d) => json!({"status": "unhealthy", "detail": d}),
    }
}

/// Every provider's health, checked live only when its cached result is older than
/// [`PROVIDER_CHECK_TTL`].
async fn provider_health(state: &AppState) -> Vec<Value> {
    let providers = state.dispatcher.providers();
    let mut cache = state.health.providers.lock().await;
    let stale: Vec<_> = providers
        .iter()
        .filter(|p| {
            cache
                .get(p.name())
                .is_none_or(|(at, _)| at.elapsed() >= PROVIDER_CHECK_TTL)
        })
        .collect();
    let checks = stale.iter().map(|p| async move {
        let h = tokio::time::timeout(CHECK_TIMEOUT, p.health())
            .await
            .unwrap_or_else(|_| timed_out());
        (p.name().to_string(), h)
    });
    for (name, h) in join_all(checks).await {
        metrics::counter!("mesh_server_provider_health_checks_total", "provider" => name.clone())
            .increment(1);
        cache.insert(name, (Instant::now(), h));
    }
    providers
        .iter()
        .map(|p| {
            let (at, h) = cache
                .get(p.name())
                .map(|(at, h)| (Some(*at), health_json(h)))
                .unwrap_or((None, json!({"status": "unknown"})));
            json!({
                "name": p.name(),
                "describe": p.describe(),
                "health": h,
                "checked_secs_ago": at.map(|at| at.elapsed().as_secs()),
            })
        })
        .collect()
}

/// `GET /health` (admin): server, database, providers (cached checks) and outbox.
/// 200 while the database and the outbox work, even when providers are down
/// (notifications then wait in the outbox).
async fn detailed_health(State(state): State<AppState>) -> Response {
    let providers = provider_health(&state).await;
    let (ok, db, outbox) = core_ok(&state).await;
    let body = json!({
        "status": if ok { "ok" } else { "degraded" },
        "database": if db { "ok" } else { "unavailable" },
        "connections": state.presence.connections(),
        "providers": providers,
        "disabled_providers": state.dispatcher.disabled().collect::<Vec<_>>(),
        "outbox": outbox.map_or_else(|| json!({"backend": "none"}), |(v, _)| v),
    });
    let status = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body)).into_response()
}

async fn metrics_text(State(state): State<AppState>) -> Response {
    match &state.metrics {
        Some(handle) => {
            handle.run_upkeep();
            (
                [(
                    axum::http::header::CONTENT_TYPE,
                    "text/plain; version=0.0.4",
                )],
                handle.render(),
            )
                .into_response()
        }
        None => AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "metrics_unavailable",
            "another metrics recorder is installed in this process",
        )
        .into_response(),
    }
}
