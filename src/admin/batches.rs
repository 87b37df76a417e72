//! The admin view of batches: every team's batches, and one batch's progress, errors by kind
//! and spend so far (from its usage rows). Read-only; the JSON the web console's batches page
//! can use. Cancelling stays with the team's own key (`POST /v1/batches/{id}/cancel`).

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::store;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::now_ms;

/// `GET /admin/batches?limit=&after=&team=`: newest first.
pub(super) async fn list(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let limit = q
        .get("limit")
        .and_then(|v| v.parse::<i64>().ok())
        .unwrap_or(50)
        .clamp(1, 500);
    let rows = store(&s)?
        .db
        .list_batches(
            q.get("team").map(String::as_str),
            q.get("after").map(String::as_str),
            limit,
        )
        .await?;
    let data: Vec<_> = rows.iter().map(with_team).collect();
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

/// OpenAI's batch object plus the team that owns it and the key that made it.
fn with_team(b: &crate::store::batches::BatchRecord) -> serde_json::Value {
    let mut v = crate::batch::wire::batch(b);
    v["team"] = json!(b.team);
    v["key_id"] = json!(b.key_id);
    v
}

/// `GET /admin/batches/{id}`: the batch, its progress (done, rate, ETA), its failed lines by
/// error kind and what its lines have cost so far.
pub(super) async fn view(
    State(s): State<AppState>,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let h = store(&s)?;
    let b =
        h.db.get_batch(None, &id)
            .await?
            .ok_or_else(|| ApiError::NotFound {
                message: format!(
                    "No such batch: '{}'",
                    id.chars().take(100).collect::<String>()
                ),
            })?;
    let errors = h.db.batch_errors_by_kind(&id).await?;
    let spend = h.db.batch_spend(&id).await?;
    let done = b.completed + b.failed;
    let end = b
        .completed_at
        .or(b.cancelled_at)
        .or(b.expired_at)
        .or(b.failed_at)
        .unwrap_or_else(now_ms);
    let secs = b.in_progress_at.map(|t| (end - t).max(1) as f64 / 1000.0);
    let rate = secs.map(|s| done as f64 / s);
    let eta = match rate {
        Some(r) if r > 0.0 && b.status == "in_progress" => {
            Some(((b.total - done).max(0) as f64 / r).ceil() as i64)
        }
        _ => None,
    };
    let kinds: serde_json::Map<String, serde_json::Value> =
        errors.into_iter().map(|(k, n)| (k, json!(n))).collect();
    Ok(Json(json!({
        "batch": with_team(&b),
        "progress": {
            "total": b.total,
            "done": done,
            "completed": b.completed,
            "failed": b.failed,
            "lines_per_second": rate,
            "eta_seconds": eta,
        },
        "errors_by_kind": kinds,
        "spend": spend,
    }))
    .into_response())
}
