//! The admin API: `/admin/*` on the main listener, behind the admin key.
//!
//! The admin key is separate from client keys (config `admin.key`, an `${ENV}`/`file:`
//! reference or a SHA-256); without one configured every admin route answers 404, whatever the
//! method, so an admin surface is never open (or even visible) by accident. Each concern adds its routes to [`router`]; this module owns
//! the gate, the route table, and the thin handlers over the admin operations of [`ops`] (shared
//! with the CLI: they check requests against the config and ask the store), which add the status
//! codes and drop changed keys from this replica's key cache at once. Without a store those routes answer
//! 404 naming `store.url`. Every change writes an audit row with actor `admin-api`, except a
//! purge of the response cache (`/admin/cache`), which changes no record.
//!
//! The gate ([`require_admin`]) also admits the web console's session cookie (see
//! [`crate::auth::session`]): the console is a client of this API, not a second one.

mod batches;
pub mod ops;
mod series;

use axum::body::Bytes;
use axum::extract::{Path, Query, Request, State};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, patch, post};
use axum::{Json, Router};
use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Deserialize;
use serde_json::json;
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use crate::config::Dur;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::records::{KeyPatch, NewKey, NewTeam, TeamPatch};
use crate::store::usage::{GroupBy, UsageFilter};
use crate::store::{parse_time, Handle};

/// Who the audit trail names for changes made through this API.
const ACTOR: &str = "admin-api";

/// Routes under `/admin`, each behind [`require_admin`].
pub fn router(state: AppState) -> Router<AppState> {
    Router::new()
        .route("/admin/status", get(status))
        .route("/admin/credentials", get(credentials))
        .route(
            "/admin/credentials/{name}/members/{index}/enable",
            post(enable_member),
        )
        .route("/admin/keys", post(create_key).get(list_keys))
        .route("/admin/keys/{id}", get(get_key).patch(update_key))
        .route("/admin/keys/{id}/revoke", post(revoke_key))
        .route("/admin/keys/{id}/rotate", post(rotate_key))
        .route("/admin/teams", post(create_team).get(list_teams))
        .route(
            "/admin/teams/{name}",
            patch(update_team).delete(delete_team),
        )
        .route("/admin/usage", get(usage))
        .route("/admin/usage/series", get(series::usage_series))
        .route("/admin/usage/errors", get(series::recent_errors))
        .route("/admin/audit", get(audit))
        .route("/admin/cache", get(cache_stats).delete(cache_purge))
        .route("/admin/batches", get(batches::list))
        .route("/admin/batches/{id}", get(batches::view))
        .route_layer(middleware::from_fn_with_state(state, require_admin))
}

/// Whether `path` is an admin path that must look unknown: no admin key is configured. The app
/// asks before routing, so `POST /admin/status` is a 404 like any unknown path rather than a 405
/// telling that the route exists.
pub fn hidden(state: &AppState, path: &str) -> bool {
    (path == "/admin" || path.starts_with("/admin/")) && state.snapshot.load().admin.is_none()
}

/// Drop a key changed through this replica from the request path's cache at once.
async fn forget_key(s: &AppState, hash_hex: &str) {
    if let Some(k) = &s.store_keys {
        k.invalidate(hash_hex).await;
    }
}

fn store(s: &AppState) -> Result<Arc<Handle>, ApiError> {
    s.store.clone().ok_or_else(|| ApiError::NotFound {
        message: "this gateway has no store configured (store.url)".into(),
    })
}

/// Parse a JSON body; errors are OpenAI-shaped 400s naming the problem.
fn body<T: DeserializeOwned>(b: &Bytes) -> Result<T, ApiError> {
    let b: &[u8] = if b.is_empty() { b"{}" } else { b };
    serde_json::from_slice(b)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}"), None))
}

async fn create_key(State(s): State<AppState>, b: Bytes) -> Result<Response, ApiError> {
    let h = store(&s)?;
    let new: NewKey = body(&b)?;
    let v = ops::create_key(&s.snapshot.load().config, &h.db, ACTOR, &new).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn list_keys(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let keys = store(&s)?
        .db
        .list_keys(q.get("team").map(String::as_str))
        .await?;
    Ok(Json(json!({"object": "list", "data": keys})).into_response())
}

async fn get_key(State(s): State<AppState>, Path(id): Path<String>) -> Result<Response, ApiError> {
    Ok(Json(store(&s)?.db.get_key(&id).await?).into_response())
}

async fn update_key(
    State(s): State<AppState>,
    Path(id): Path<String>,
    b: Bytes,
) -> Result<Response, ApiError> {
    let h = store(&s)?;
    let p: KeyPatch = body(&b)?;
    let rec = ops::update_key(&s.snapshot.load().config, &h.db, ACTOR, &id, &p).await?;
    forget_key(&s, &rec.hash).await;
    Ok(Json(rec).into_response())
}

async fn revoke_key(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let h = store(&s)?;
    let rec = h.db.revoke_key(ACTOR, &id).await?;
    forget_key(&s, &rec.hash).await;
    Ok(Json(rec).into_response())
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Rotate {
    /// How long the old key keeps working, e.g. `1h` (default) or `0s`.
    #[serde(default)]
    grace: Option<Dur>,
}

async fn rotate_key(
    State(s): State<AppState>,
    Path(id): Path<String>,
    b: Bytes,
) -> Result<Response, ApiError> {
    let h = store(&s)?;
    let r: Rotate = body(&b)?;
    let grace = r.grace.map_or(Duration::from_secs(3600), |d| d.0);
    let (v, old_hash) = ops::rotate_key(&h.db, ACTOR, &id, grace).await?;
    forget_key(&s, &old_hash).await;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

async fn create_team(State(s): State<AppState>, b: Bytes) -> Result<Response, ApiError> {
    let h = store(&s)?;
    let t: NewTeam = body(&b)?;
    let rec = ops::create_team(&s.snapshot.load().config, &h.db, ACTOR, &t).await?;
    Ok((StatusCode::CREATED, Json(rec)).into_response())
}

async fn update_team(
    State(s): State<AppState>,
    Path(name): Path<String>,
    b: Bytes,
) -> Result<Response, ApiError> {
    let h = store(&s)?;
    let p: TeamPatch = body(&b)?;
    let rec = ops::update_team(&s.snapshot.load().config, &h.db, ACTOR, &name, &p).await?;
    // Cached callers carry their team: drop them all so the change applies at once here.
    if let Some(k) = &s.store_keys {
        k.invalidate_all();
    }
    Ok(Json(rec).into_response())
}

async fn delete_team(
    State(s): State<AppState>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    let h = store(&s)?;
    let v = ops::delete_team(&s.snapshot.load().config, &h.db, ACTOR, &name).await?;
    // The team's keys are revoked: drop cached callers so they are refused here at once.
    if let Some(k) = &s.store_keys {
        k.invalidate_all();
    }
    Ok(Json(v).into_response())
}

async fn list_teams(State(s): State<AppState>) -> Result<Response, ApiError> {
    let h = store(&s)?;
    let data = ops::list_teams(&s.snapshot.load().config, &h.db).await?;
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

/// Build a usage filter from `team`, `key`, `model`, `from`, `to`, `group_by`.
pub fn usage_filter(q: &HashMap<String, String>) -> Result<UsageFilter, ApiError> {
    let time = |k: &str| -> Result<Option<i64>, ApiError> {
        q.get(k)
            .map(|v| parse_time(v).map_err(|e| ApiError::invalid(e, Some(k))))
            .transpose()
    };
    let group_by = match q.get("group_by") {
        None => None,
        Some(g) => Some(GroupBy::parse(g).ok_or_else(|| {
            ApiError::invalid("group_by must be team, key, model or day", Some("group_by"))
        })?),
    };
    Ok(UsageFilter {
        team: q.get("team").cloned(),
        key_id: q.get("key").cloned(),
        model: q.get("model").cloned(),
        from: time("from")?,
        to: time("to")?,
        group_by,
    })
}

async fn usage(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let h = store(&s)?;
    let f = usage_filter(&q)?;
    Ok(Json(h.db.query_usage(&f).await?).into_response())
}

async fn audit(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let limit = q
        .get("limit")
        .and_then(|l| l.parse::<i64>().ok())
        .unwrap_or(100)
        .clamp(1, 1000);
    let entries = store(&s)?.db.audit(limit).await?;
    Ok(Json(json!({"object": "list", "data": entries})).into_response())
}

/// The response cache of this replica: bytes, entries, hits and misses per tier.
async fn cache_stats(State(s): State<AppState>) -> Response {
    let snap = s.snapshot.load_full();
    Json(snap.cache.stats().await).into_response()
}

/// Purge the response cache: everything, or `?model=`, `?team=` (or both). Memory is purged on
/// this replica; disk and Redis for every replica that shares them. `complete: false` when a
/// shared tier could not be reached.
async fn cache_purge(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    if let Some(k) = q.keys().find(|k| !matches!(k.as_str(), "model" | "team")) {
        return Err(ApiError::invalid(
            format!("unknown parameter '{k}': use model or team"),
            Some(k),
        ));
    }
    let snap = s.snapshot.load_full();
    let model = q.get("model").map(String::as_str);
    let team = q.get("team").map(String::as_str);
    let complete = snap.cache.purge(model, team).await;
    Ok(
        Json(json!({"purged": true, "model": model, "team": team, "complete": complete}))
            .into_response(),
    )
}

/// Upstreams with their health (breaker state, time to first byte, requests in flight and
/// queued against their caps), models and teams: what this replica is serving.
async fn status(State(s): State<AppState>) -> Response {
    let snap = s.snapshot.load();
    let upstreams: Vec<_> = snap
        .config
        .upstreams
        .keys()
        .map(|name| match snap.upstreams.get(name) {
            Some(u) => json!({
                "name": name,
                "healthy": u.is_healthy(),
                "breaker": u.breaker.state().label(),
                "ewma_ttfb_ms": u.ewma_ttfb_ms(),
                "in_flight": u.gate.in_flight(),
                "queued": u.gate.queued(),
                "max_concurrent": u.config().max_concurrent,
                "max_queue": u.config().max_queue,
                "credential": u.config().credential,
            }),
            None => json!({"name": name, "healthy": false}),
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

/// The admin API's one gate: the admin key (`Authorization: Bearer` or `x-api-key`), or, with
/// the console on and no key presented, a console session cookie (with its CSRF token on
/// writes; see [`crate::auth::session`]). A presented key always decides.
async fn require_admin(State(s): State<AppState>, req: Request, next: Next) -> Response {
    let snap = s.snapshot.load();
    let Some(admin) = &snap.admin else {
        return ApiError::RouteNotFound {
            path: req.uri().path().chars().take(200).collect(),
        }
        .into_response();
    };
    let h = req.headers();
    let by_key = h.contains_key(http::header::AUTHORIZATION) || h.contains_key("x-api-key");
    let console = snap
        .config
        .admin
        .as_ref()
        .is_some_and(|a| a.console.enabled);
    let admitted = if by_key || !console {
        admin.authenticate(h).map(drop)
    } else {
        crate::auth::session::authorize(&s.sessions, admin, req.method(), h).map(drop)
    };
    match admitted {
        Ok(()) => next.run(req).await,
        Err(e) => e.into_response(),
    }
}
