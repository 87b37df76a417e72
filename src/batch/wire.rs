//! The Batch API's JSON, as OpenAI writes it: the file object, the batch object, list pages and
//! the lines of output and error files. Times on the wire are Unix seconds; the store keeps
//! milliseconds.

use serde_json::{json, Value};

use crate::store::batches::BatchRecord;
use crate::store::files::FileRecord;

/// Endpoints a batch may target.
pub const ENDPOINTS: &[&str] = &["/v1/chat/completions", "/v1/completions", "/v1/embeddings"];

fn secs(ms: i64) -> i64 {
    ms.div_euclid(1000)
}

fn secs_opt(ms: Option<i64>) -> Value {
    ms.map_or(Value::Null, |v| json!(secs(v)))
}

/// OpenAI's file object.
pub fn file(f: &FileRecord) -> Value {
    json!({
        "id": f.id,
        "object": "file",
        "bytes": f.bytes,
        "created_at": secs(f.created_at),
        "filename": f.filename,
        "purpose": f.purpose,
        "status": "processed",
        "status_details": null,
        "expires_at": null,
    })
}

/// Highest and lowest `metadata.priority` a batch may ask for.
pub const PRIORITY_RANGE: std::ops::RangeInclusive<i64> = -1000..=1000;

/// A batch's priority among its team's batches: `metadata.priority` (an integer written as a
/// string, as metadata values are; higher first), 0 when absent. Checked when the batch is made.
pub fn priority(metadata: Option<&str>) -> i64 {
    #[derive(serde::Deserialize)]
    struct Meta<'a> {
        #[serde(borrow, default)]
        priority: Option<std::borrow::Cow<'a, str>>,
    }
    metadata
        .and_then(|m| serde_json::from_str::<Meta<'_>>(m).ok())
        .and_then(|m| m.priority?.trim().parse().ok())
        .unwrap_or(0)
}

/// OpenAI's batch object.
pub fn batch(b: &BatchRecord) -> Value {
    let errors = b
        .errors
        .as_deref()
        .and_then(|e| serde_json::from_str::<Value>(e).ok())
        .map_or(Value::Null, |data| json!({"object": "list", "data": data}));
    let metadata = b
        .metadata
        .as_deref()
        .and_then(|m| serde_json::from_str::<Value>(m).ok())
        .unwrap_or(Value::Null);
    json!({
        "id": b.id,
        "object": "batch",
        "endpoint": b.endpoint,
        "errors": errors,
        "input_file_id": b.input_file_id,
        "completion_window": b.completion_window,
        "status": b.status,
        "output_file_id": b.output_file_id,
        "error_file_id": b.error_file_id,
        "created_at": secs(b.created_at),
        "in_progress_at": secs_opt(b.in_progress_at),
        "expires_at": secs(b.expires_at),
        "finalizing_at": secs_opt(b.finalizing_at),
        "completed_at": secs_opt(b.completed_at),
        "failed_at": secs_opt(b.failed_at),
        "expired_at": secs_opt(b.expired_at),
        "cancelling_at": secs_opt(b.cancelling_at),
        "cancelled_at": secs_opt(b.cancelled_at),
        "request_counts": {"total": b.total, "completed": b.completed, "failed": b.failed},
        "metadata": metadata,
    })
}

/// A cursor page (`has_more` when the page is full: one more query tells).
pub fn page(data: Vec<Value>, limit: usize) -> Value {
    let first = data.first().map(|v| v["id"].clone()).unwrap_or(Value::Null);
    let last = data.last().map(|v| v["id"].clone()).unwrap_or(Value::Null);
    json!({
        "object": "list",
        "has_more": data.len() >= limit,
        "first_id": first,
        "last_id": last,
        "data": data,
    })
}

/// One line of an output or error file for a request that got an answer.
pub fn answered(custom_id: &str, request_id: &str, status: u16, body: Value) -> String {
    json!({
        "id": format!("batch_req_{}", uuid::Uuid::now_v7().simple()),
        "custom_id": custom_id,
        "response": {"status_code": status, "request_id": request_id, "body": body},
        "error": null,
    })
    .to_string()
}

/// One line of an error file for a request that got no answer (`batch_expired`, ...).
pub fn unanswered(custom_id: &str, code: &str, message: &str) -> String {
    json!({
        "id": format!("batch_req_{}", uuid::Uuid::now_v7().simple()),
        "custom_id": custom_id,
        "response": null,
        "error": {"code": code, "message": message},
    })
    .to_string()
}

/// A validation error of an input file, naming its line (from 1) when there is one.
pub fn input_error(code: &str, message: String, line: Option<i64>, param: Option<&str>) -> Value {
    json!({"code": code, "message": message, "param": param, "line": line})
}
