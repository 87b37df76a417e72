//! The admin API: `/admin/*` on the main listener, behind the admin key.
//!
//! The admin key is separate from client keys (config `admin.key`, an `${ENV}`/`file:`
//! reference or a SHA-256); without one configured every admin route answers 404, so an admin
//! surface is never open by accident. Each concern adds its routes to [`router`]; this module owns
//! only the gate and the route table.

use axum::extract::{Path, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::json;

use crate::error::ApiError;
use crate::state::AppState;

/// Routes under `/admin`, each behind [`require_admin`].
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/admin/status", get(status))
        .route("/admin/credentials", get(credentials))
        .route(
            "/admin/credentials/{name}/members/{index}/enable",
            post(enable_member),
        )
        .route_layer(middleware::from_fn_with_state(state, require_admin))
}

/// Upstreams with their health, models and teams: what this replica is serving.
async fn status(State(s): State<AppState>) -> Response {
    let snap = s.snapshot.load();
    let upstreams: Vec<_> = snap
        .config
        .upstreams
        .keys()
        .map(|name| {
            let healthy = snap.upstreams.get(name).is_some_and(|u| u.is_healthy());
            json!({"name": name, "healthy": healthy})
        })
        .collect();
    Json(json!({
        "upstreams": upstreams,
        "models": snap.config.models.keys().collect::<Vec<_>>(),
        "teams": snap.config.teams.keys().collect::<Vec<_>>(),
        "config_keys": snap.config.keys.len(),
    }))
    .into_response()
}

/// Every upstream credential and pool member: kind, state, expiry, last error, requests served
/// and a short fingerprint; never a secret.
async fn credentials(State(s): State<AppState>) -> Response {
    let snap = s.snapshot.load();
    let list: Vec<_> = snap.credentials.values().map(|c| c.view()).collect();
    Json(json!({ "credentials": list })).into_response()
}

/// Re-enable a disabled or cooling pool member.
async fn enable_member(
    State(s): State<AppState>,
    Path((name, index)): Path<(String, usize)>,
) -> Response {
    let snap = s.snapshot.load();
    let Some(c) = snap.credentials.get(&name) else {
        return ApiError::RouteNotFound {
            path: format!(
                "credential '{}'",
                name.chars().take(100).collect::<String>()
            ),
        }
        .into_response();
    };
    match c.enable_member(index) {
        Ok(()) => {
            Json(json!({"enabled": true, "credential": name, "index": index})).into_response()
        }
        Err(message) => ApiError::invalid(message, Some("index")).into_response(),
    }
}

async fn require_admin(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let snap = s.snapshot.load();
    match &snap.admin {
        None => ApiError::RouteNotFound {
            path: req.uri().path().chars().take(200).collect(),
        }
        .into_response(),
        Some(admin) => match admin.authenticate(req.headers()) {
            Ok(_) => next.run(req).await,
            Err(e) => e.into_response(),
        },
    }
}
