//! The HTTP side of the Batch API, OpenAI's routes and shapes: `/v1/files` (upload, list,
//! retrieve, content, delete) and `/v1/batches` (create, retrieve, list, cancel). Every route
//! authenticates like the request path and sees only the caller's team's files and batches
//! (another team's id is a 404). Without a store these routes answer 404 naming `store.url`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{FromRequest, Multipart, Path, Query, Request, State};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{files, wire};
use crate::auth::Caller;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::batches::BatchRecord;
use crate::store::files::FileRecord;
use crate::store::{now_ms, Handle};

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/files", post(upload).get(list_files))
        .route("/v1/files/{id}", get(get_file).delete(delete_file))
        .route("/v1/files/{id}/content", get(file_content))
        .route("/v1/batches", post(create_batch).get(list_batches))
        .route("/v1/batches/{id}", get(get_batch))
        .route("/v1/batches/{id}/cancel", post(cancel_batch))
        // Uploads are bounded by `batch.max_file_bytes` while they stream, not by axum's default.
        .layer(axum::extract::DefaultBodyLimit::disable())
}

/// The caller and the store, or the error to answer.
async fn caller(
    s: &AppState,
    req: &http::request::Parts,
) -> Result<(Caller, Arc<Handle>), ApiError> {
    let snap = s.snapshot.load_full();
    let caller = s.authenticate(&snap, &req.headers, &req.extensions).await?;
    let store = s.store.clone().ok_or_else(|| ApiError::NotFound {
        message: "the Batch API needs a store: this gateway has none (store.url)".into(),
    })?;
    Ok((caller, store))
}

fn not_found(what: &str, id: &str) -> ApiError {
    ApiError::NotFound {
        message: format!(
            "No such {what}: '{}'",
            id.chars().take(100).collect::<String>()
        ),
    }
}

/// `limit` (1..=100, default 20) and `after` of a list request.
fn paging(q: &HashMap<String, String>) -> Result<(i64, Option<&str>), ApiError> {
    let limit = match q.get("limit") {
        None => 20,
        Some(v) => match v.parse::<i64>() {
            Ok(n) if (1..=100).contains(&n) => n,
            _ => {
                return Err(ApiError::invalid(
                    "limit must be from 1 to 100",
                    Some("limit"),
                ))
            }
        },
    };
    Ok((limit, q.get("after").map(String::as_str)))
}

async fn upload(State(s): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let (caller, store) = caller(&s, &parts).await?;
    let cfg = s.snapshot.load().config.batch.clone();
    let form = Multipart::from_request(Request::from_parts(parts, body), &())
        .await
        .map_err(|e| {
            ApiError::invalid(format!("expected a multipart/form-data upload: {e}"), None)
        })?;
    let id = FileRecord::new_id();
    let received = tokio::time::timeout(
        cfg.upload_timeout.0,
        files::receive(&cfg.files_dir, &id, cfg.max_file_bytes, form),
    )
    .await
    .map_err(|_| ApiError::BodyTimeout)??;
    let path = files::path(&cfg.files_dir, &id);
    if received.purpose.as_deref() != Some("batch") {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(ApiError::invalid(
            "purpose must be 'batch' (the only purpose Tollgate stores files for)",
            Some("purpose"),
        ));
    }
    let rec = FileRecord {
        id,
        team: caller.team.to_string(),
        purpose: "batch".into(),
        filename: received.filename,
        bytes: i64::try_from(received.bytes).unwrap_or(i64::MAX),
        created_at: now_ms(),
    };
    if let Err(e) = store.db.insert_file(&rec).await {
        let _ = tokio::fs::remove_file(&path).await;
        return Err(e.into());
    }
    Ok(Json(wire::file(&rec)).into_response())
}

async fn list_files(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = req.into_parts();
    let (caller, store) = caller(&s, &parts).await?;
    let (limit, after) = paging(&q)?;
    let purpose = q.get("purpose").map(String::as_str);
    let rows = store
        .db
        .list_files(&caller.team, purpose, after, limit)
        .await?;
    let data = rows.iter().map(wire::file).collect();
    Ok(Json(wire::page(data, limit as usize)).into_response())
}

async fn owned_file(
    s: &AppState,
    req: Request,
    id: &str,
) -> Result<(Caller, Arc<Handle>, FileRecord), ApiError> {
    let (parts, _) = req.into_parts();
    let (caller, store) = caller(s, &parts).await?;
    let rec = store
        .db
        .get_file(Some(&caller.team), id)
        .await?
        .ok_or_else(|| not_found("file", id))?;
    Ok((caller, store, rec))
}

async fn get_file(
    State(s): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let (_, _, rec) = owned_file(&s, req, &id).await?;
    Ok(Json(wire::file(&rec)).into_response())
}

async fn delete_file(
    State(s): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let (caller, store, rec) = owned_file(&s, req, &id).await?;
    if !store.db.delete_file(&caller.team, &rec.id).await? {
        return Err(not_found("file", &id));
    }
    let path = files::path(&s.snapshot.load().config.batch.files_dir, &rec.id);
    if let Err(e) = tokio::fs::remove_file(&path).await {
        tracing::warn!(file = %rec.id, error = %e, "a deleted file's bytes were not removed");
    }
    Ok(Json(json!({"id": rec.id, "object": "file", "deleted": true})).into_response())
}

/// The file's bytes, streamed from disk as they are read.
async fn file_content(
    State(s): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let (_, _, rec) = owned_file(&s, req, &id).await?;
    let path = files::path(&s.snapshot.load().config.batch.files_dir, &rec.id);
    let f = tokio::fs::File::open(&path).await.map_err(|e| {
        tracing::warn!(file = %rec.id, error = %e, "a file's bytes are missing");
        not_found("file content", &id)
    })?;
    let stream = tokio_util::io::ReaderStream::with_capacity(f, 64 * 1024);
    Ok((
        [(http::header::CONTENT_TYPE, "application/octet-stream")],
        Body::from_stream(stream),
    )
        .into_response())
}

/// `POST /v1/batches`. Fields Tollgate does not know (newer SDKs' options) are ignored.
#[derive(Deserialize)]
struct NewBatch {
    input_file_id: String,
    endpoint: String,
    completion_window: String,
    #[serde(default)]
    metadata: Option<HashMap<String, String>>,
}

async fn create_batch(State(s): State<AppState>, req: Request) -> Result<Response, ApiError> {
    let (parts, body) = req.into_parts();
    let (caller, store) = caller(&s, &parts).await?;
    let bytes: Bytes = axum::body::to_bytes(body, 64 * 1024)
        .await
        .map_err(|_| ApiError::BodyTooLarge { limit: 64 * 1024 })?;
    let new: NewBatch = serde_json::from_slice(&bytes)
        .map_err(|e| ApiError::invalid(format!("invalid request body: {e}"), None))?;
    if !wire::ENDPOINTS.contains(&new.endpoint.as_str()) {
        return Err(ApiError::invalid(
            format!("endpoint must be one of {}", wire::ENDPOINTS.join(", ")),
            Some("endpoint"),
        ));
    }
    if new.completion_window != "24h" {
        return Err(ApiError::invalid(
            "completion_window must be '24h'",
            Some("completion_window"),
        ));
    }
    if new.metadata.as_ref().is_some_and(|m| m.len() > 16) {
        return Err(ApiError::invalid(
            "metadata has at most 16 pairs",
            Some("metadata"),
        ));
    }
    if let Some(p) = new.metadata.as_ref().and_then(|m| m.get("priority")) {
        if !p
            .trim()
            .parse::<i64>()
            .is_ok_and(|p| wire::PRIORITY_RANGE.contains(&p))
        {
            return Err(ApiError::invalid(
                format!(
                    "metadata.priority must be an integer from {} to {} (higher runs first)",
                    wire::PRIORITY_RANGE.start(),
                    wire::PRIORITY_RANGE.end()
                ),
                Some("metadata.priority"),
            ));
        }
    }
    let file = store
        .db
        .get_file(Some(&caller.team), &new.input_file_id)
        .await?
        .ok_or_else(|| not_found("file", &new.input_file_id))?;
    if file.purpose != "batch" {
        return Err(ApiError::invalid(
            "the input file must have purpose 'batch'",
            Some("input_file_id"),
        ));
    }
    let now = now_ms();
    let rec = BatchRecord {
        id: BatchRecord::new_id(),
        team: caller.team.to_string(),
        key_id: caller.key_id.to_string(),
        endpoint: new.endpoint,
        input_file_id: file.id,
        completion_window: new.completion_window,
        status: "validating".into(),
        metadata: new.metadata.map(|m| json!(m).to_string()),
        errors: None,
        output_file_id: None,
        error_file_id: None,
        total: 0,
        completed: 0,
        failed: 0,
        created_at: now,
        in_progress_at: None,
        expires_at: now + 24 * 3_600_000,
        finalizing_at: None,
        completed_at: None,
        failed_at: None,
        expired_at: None,
        cancelling_at: None,
        cancelled_at: None,
    };
    store.db.insert_batch(&rec).await?;
    s.batch_wake.notify_one();
    Ok(Json(wire::batch(&rec)).into_response())
}

async fn get_batch(
    State(s): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = req.into_parts();
    let (caller, store) = caller(&s, &parts).await?;
    let rec = store
        .db
        .get_batch(Some(&caller.team), &id)
        .await?
        .ok_or_else(|| not_found("batch", &id))?;
    Ok(Json(wire::batch(&rec)).into_response())
}

async fn list_batches(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = req.into_parts();
    let (caller, store) = caller(&s, &parts).await?;
    let (limit, after) = paging(&q)?;
    let rows = store
        .db
        .list_batches(Some(&caller.team), after, limit)
        .await?;
    let data: Vec<Value> = rows.iter().map(wire::batch).collect();
    Ok(Json(wire::page(data, limit as usize)).into_response())
}

async fn cancel_batch(
    State(s): State<AppState>,
    Path(id): Path<String>,
    req: Request,
) -> Result<Response, ApiError> {
    let (parts, _) = req.into_parts();
    let (caller, store) = caller(&s, &parts).await?;
    let rec = store
        .db
        .cancel_batch(&caller.team, &id, now_ms())
        .await?
        .ok_or_else(|| not_found("batch", &id))?;
    if matches!(
        rec.status.as_str(),
        "completed" | "failed" | "expired" | "cancelled"
    ) {
        return Err(ApiError::Conflict {
            message: format!("batch {id} has already ended ({})", rec.status),
        });
    }
    s.batch_wake.notify_one();
    Ok(Json(wire::batch(&rec)).into_response())
}
