//! One batch line through the request path: the line's body becomes an in-process request to
//! [`crate::proxy::handle`] as the batch's team ([`crate::auth::InProcess`]), so the team's
//! policy, limits (at the batch's share), routing, retries, credentials and accounting all
//! apply as to an interactive request. Lines ask for low queue priority. The answer is read
//! whole (bounded by `server.max_response_bytes`) and sorted into what the worker does next.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http::{header, Method, Request};
use http_body_util::BodyExt;
use serde_json::Value;

use crate::auth::{Caller, InProcess};
use crate::policy::Endpoint;
use crate::proxy::RequestId;
use crate::state::AppState;

/// What became of one try of a line.
#[derive(Debug)]
pub enum Outcome {
    /// An answer to record: 200 goes to the output file, anything else to the error file.
    Answer {
        status: u16,
        body: Value,
        /// The error's `code` (or `type`), for the admin view's errors by kind.
        kind: Option<String>,
    },
    /// The team's own limits (at the batch's share) or the gateway's load refused it: try again
    /// after `wait`, without counting an attempt.
    Limited { wait: Duration },
    /// The upstream failed (5xx, timeout, its own 429): worth another attempt.
    Transient {
        status: u16,
        body: Value,
        kind: Option<String>,
        wait: Option<Duration>,
    },
}

/// The endpoint of a batch's `endpoint` string.
pub fn endpoint_of(url: &str) -> Option<Endpoint> {
    match url {
        "/v1/chat/completions" => Some(Endpoint::Chat),
        "/v1/completions" => Some(Endpoint::Completions),
        "/v1/embeddings" => Some(Endpoint::Embeddings),
        _ => None,
    }
}

/// Send `body` (the line's `body` JSON) through the request path.
pub async fn execute(
    state: &AppState,
    caller: &Caller,
    batch_id: &Arc<str>,
    endpoint: Endpoint,
    url: &str,
    request_id: &str,
    body: Bytes,
) -> Outcome {
    let req = Request::builder()
        .method(Method::POST)
        .uri(url)
        .header(header::CONTENT_TYPE, "application/json")
        .header("x-tollgate-priority", "low")
        .extension(RequestId(Arc::from(request_id)))
        .extension(InProcess::new(caller.clone(), Some(batch_id.clone())))
        .body(Body::from(body));
    let Ok(req) = req else {
        return Outcome::Answer {
            status: 500,
            body: error_body("the batch line could not be sent", "internal_error"),
            kind: Some("internal_error".into()),
        };
    };
    let resp = crate::proxy::handle(state.clone(), endpoint, req).await;
    let status = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get(header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    let limit = state.snapshot.load().config.server.max_response_bytes;
    let bytes = match http_body_util::Limited::new(resp.into_body(), limit)
        .collect()
        .await
    {
        Ok(c) => c.to_bytes(),
        Err(_) => {
            return Outcome::Transient {
                status: 502,
                body: error_body(
                    "the answer broke off or was too large",
                    "upstream_invalid_response",
                ),
                kind: Some("upstream_invalid_response".into()),
                wait: None,
            }
        }
    };
    let body: Value = serde_json::from_slice(&bytes)
        .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
    classify(status, body, retry_after)
}

/// Sort an answer by what the worker should do with it.
fn classify(status: u16, body: Value, retry_after: Option<Duration>) -> Outcome {
    if status == 200 {
        return Outcome::Answer {
            status,
            body,
            kind: None,
        };
    }
    let code = body["error"]["code"]
        .as_str()
        .or_else(|| body["error"]["type"].as_str())
        .map(str::to_owned);
    let ours_limited = matches!(
        code.as_deref(),
        Some(
            "rate_limit_exceeded"
                | "overloaded"
                | "limiter_unavailable"
                | "upstream_credential_unavailable"
                | "upstream_unavailable"
                | "store_unavailable"
        )
    );
    // A limit refusal without Retry-After means waiting cannot help (the line alone is larger
    // than the limit): that is the line's answer.
    if ours_limited && (retry_after.is_some() || status == 503) {
        return Outcome::Limited {
            wait: retry_after.unwrap_or(Duration::from_secs(1)),
        };
    }
    let upstream_limited = status == 429 && code.as_deref() != Some("insufficient_quota");
    if (upstream_limited && !ours_limited) || status >= 500 || status == 408 {
        return Outcome::Transient {
            status,
            body,
            kind: code,
            wait: retry_after,
        };
    }
    Outcome::Answer {
        status,
        body,
        kind: code.or_else(|| Some(format!("http_{status}"))),
    }
}

fn error_body(message: &str, code: &str) -> Value {
    serde_json::json!({"error": {"message": message, "type": "api_error", "param": null, "code": code}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn err(code: &str) -> Value {
        json!({"error": {"message": "m", "type": "t", "param": null, "code": code}})
    }

    #[test]
    fn answers_are_sorted_by_what_the_worker_does_next() {
        assert!(matches!(
            classify(200, json!({}), None),
            Outcome::Answer { status: 200, .. }
        ));
        assert!(matches!(
            classify(429, err("rate_limit_exceeded"), Some(Duration::from_secs(2))),
            Outcome::Limited { wait } if wait == Duration::from_secs(2)
        ));
        // Larger than the limit itself: no Retry-After, recorded as the line's answer.
        assert!(matches!(
            classify(429, err("rate_limit_exceeded"), None),
            Outcome::Answer { status: 429, .. }
        ));
        assert!(matches!(
            classify(429, err("insufficient_quota"), None),
            Outcome::Answer { status: 429, .. }
        ));
        assert!(matches!(
            classify(503, err("overloaded"), None),
            Outcome::Limited { .. }
        ));
        assert!(matches!(
            classify(502, err("upstream_unreachable"), None),
            Outcome::Transient { .. }
        ));
        assert!(matches!(
            classify(429, err("upstream_error"), None),
            Outcome::Transient { .. }
        ));
        assert!(matches!(
            classify(400, err("invalid_request"), None),
            Outcome::Answer { status: 400, .. }
        ));
    }
}
