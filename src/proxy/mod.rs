//! The request path: one function, [`handle`], reads top to bottom as the steps every relayed
//! request goes through. Each step is a call into the module that owns it.
//!
//! This module owns the order of the steps, the attempt loop (credential, provider, first-byte
//! timeout, refresh-and-retry-once on a 401) and the hand-off to [`relay`]. It does not parse
//! config, hash keys or format errors: those belong to their modules.

pub mod ledger;
pub mod relay;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::{Map, Value};
use tokio::sync::OwnedSemaphorePermit;

use crate::credentials::{Lease, Outcome};
use crate::error::ApiError;
use crate::policy::{self, Endpoint};
use crate::providers::{UpstreamRequest, UpstreamResponse};
use crate::state::{AppState, Snapshot, Upstream};
use ledger::Ledger;

/// The request id, set by the `app` middleware before any handler runs.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// What the client gets back once an upstream answered.
struct Answered {
    upstream: Arc<Upstream>,
    response: UpstreamResponse,
    permit: OwnedSemaphorePermit,
    sent_at: Instant,
}

/// Handle one relayed OpenAI request: the whole path, in order.
pub async fn handle(state: AppState, endpoint: Endpoint, req: Request<Body>) -> Response {
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| Arc::from("-"));
    let usage = state.store.as_ref().map(|s| s.usage.clone());
    let mut ledger = Ledger::start(request_id, endpoint.label(), usage);
    match run(&state, endpoint, req, &mut ledger).await {
        Ok(resp) => resp,
        Err(e) => {
            ledger.fail(&e);
            e.into_response()
        }
    }
}

async fn run(
    state: &AppState,
    endpoint: Endpoint,
    req: Request<Body>,
    ledger: &mut Ledger,
) -> Result<Response, ApiError> {
    // accept: bound the work in flight.
    let in_flight =
        state
            .in_flight
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::Overloaded {
                message: "too many requests in flight".into(),
                retry_after_secs: 1,
            })?;
    let snap = state.snapshot.load_full();
    let (parts, body) = req.into_parts();

    // authenticate: key -> caller.
    let caller = crate::auth::authenticate(state, &snap, &parts.headers).await?;
    ledger.caller(&caller);
    let team = caller.team_policy(&snap).ok_or(ApiError::Internal)?;

    // accept (cont.): read the body within the team's size limit and the read deadline.
    let limit = team
        .max_body_bytes
        .unwrap_or(usize::MAX)
        .min(snap.config.server.max_body_bytes);
    let bytes = read_body(body, limit, snap.config.server.body_read_timeout.0).await?;
    let mut json = parse_json(&bytes)?;

    // shape: validate fields, apply the team's defaults and caps, check the model.
    let shaped = policy::shape(endpoint, team, &mut json)?;
    ledger.shaped(&shaped);
    let route = snap
        .routes
        .get(&shaped.model)
        .ok_or_else(|| ApiError::ModelNotFound {
            model: shaped.model.clone(),
        })?;
    if !policy::model_allowed(team, &shaped.model) || !caller.key_allows(&shaped.model) {
        return Err(ApiError::ModelNotAllowed {
            model: shaped.model.clone(),
        });
    }
    if shaped.stream && !shaped.client_wants_usage {
        // Ask for the usage chunk so usage is always recorded; the relay strips it again.
        json.insert(
            "stream_options".into(),
            serde_json::json!({"include_usage": true}),
        );
    }

    // plan: model -> upstreams in attempt order.
    let plan = route.plan();
    let first = plan.first().ok_or_else(|| ApiError::Overloaded {
        message: format!("no upstream is serving model '{}'", shaped.model),
        retry_after_secs: 5,
    })?;

    // attempt: credential -> provider request -> first byte.
    let headers = forward_headers(&snap, &parts.headers, ledger.request_id());
    let answered = attempt(first, endpoint, &mut json, shaped.stream, &headers, ledger).await?;

    // relay: bytes to the client as they come; account when the body ends.
    Ok(relay::respond(
        answered.response,
        relay::Context {
            stream: shaped.stream,
            strip_usage: shaped.stream && !shaped.client_wants_usage,
            timeouts: answered.upstream.timeouts.clone(),
            max_response_bytes: snap.config.server.max_response_bytes,
            sent_at: answered.sent_at,
            upstream_name: answered.upstream.name.clone(),
            permits: (in_flight, answered.permit),
        },
        std::mem::take(ledger),
    )
    .await)
}

/// One upstream attempt, with one retry on a 401 when the credential could renew itself.
async fn attempt(
    upstream: &Arc<Upstream>,
    endpoint: Endpoint,
    json: &mut Map<String, Value>,
    stream: bool,
    headers: &HeaderMap,
    ledger: &mut Ledger,
) -> Result<Answered, ApiError> {
    ledger.upstream(&upstream.name);
    let permit =
        upstream
            .permits
            .clone()
            .try_acquire_owned()
            .map_err(|_| ApiError::Overloaded {
                message: format!("upstream '{}' is at its concurrency limit", upstream.name),
                retry_after_secs: 1,
            })?;
    if let Some(m) = &upstream.model {
        json.insert("model".into(), Value::String(m.clone()));
    }
    let body = Bytes::from(serde_json::to_vec(json).map_err(|_| ApiError::Internal)?);
    let mut renewed = false;
    loop {
        ledger.attempted();
        let lease: Option<Lease> = match &upstream.credential {
            Some(c) => Some(c.lease().await?),
            None => None,
        };
        let sent_at = Instant::now();
        let request = UpstreamRequest {
            endpoint,
            body: body.clone(),
            stream,
            headers,
            lease: lease.as_ref(),
            json,
        };
        let sent = tokio::time::timeout(
            upstream.timeouts.first_byte.0,
            upstream.provider.send(request),
        )
        .await
        .map_err(|_| ApiError::UpstreamTimeout)
        .and_then(|r| r);
        let response = match sent {
            Ok(r) => r,
            Err(e) => {
                upstream.set_healthy(false);
                return Err(e);
            }
        };
        upstream.set_healthy(true);
        let status = response.status;
        if let (Some(cred), Some(lease)) = (&upstream.credential, &lease) {
            let outcome = match status.as_u16() {
                401 => Outcome::Unauthorized,
                403 => Outcome::Forbidden,
                429 => Outcome::RateLimited(retry_after(&response.headers)),
                _ => Outcome::Ok,
            };
            if cred.report(lease, outcome) && !renewed && status == StatusCode::UNAUTHORIZED {
                renewed = true;
                continue;
            }
        }
        if !status.is_success() {
            ledger.upstream_time(sent_at.elapsed());
            return Err(upstream_error(response, upstream.timeouts.idle.0).await);
        }
        return Ok(Answered {
            upstream: upstream.clone(),
            response,
            permit,
            sent_at,
        });
    }
}

/// Read an upstream error body (bounded in size and time) into an [`ApiError::UpstreamStatus`].
async fn upstream_error(resp: UpstreamResponse, idle: Duration) -> ApiError {
    use futures_util::StreamExt;
    const MAX: usize = 64 * 1024;
    let retry_after = resp.headers.get(http::header::RETRY_AFTER).cloned();
    let mut body = resp.body;
    let mut buf = Vec::new();
    while buf.len() < MAX {
        match tokio::time::timeout(idle, body.next()).await {
            Ok(Some(Ok(chunk))) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.truncate(MAX);
    ApiError::UpstreamStatus {
        status: resp.status,
        body: Bytes::from(buf),
        retry_after,
    }
}

fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let v = headers.get(http::header::RETRY_AFTER)?.to_str().ok()?;
    v.trim().parse::<u64>().ok().map(Duration::from_secs)
}

/// Only allowlisted client headers go upstream, plus our request id. Never the client's key,
/// never hop-by-hop headers.
fn forward_headers(snap: &Snapshot, client: &HeaderMap, request_id: &str) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(snap.forward_headers.len() + 1);
    for name in &snap.forward_headers {
        for v in client.get_all(name) {
            out.append(name.clone(), v.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        out.insert(HeaderName::from_static("x-request-id"), v);
    }
    out
}

async fn read_body(body: Body, limit: usize, deadline: Duration) -> Result<Bytes, ApiError> {
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(deadline, limited.collect()).await {
        Err(_) => Err(ApiError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::BodyTooLarge { limit })
        }
        Ok(Err(_)) => Err(ApiError::invalid(
            "the request body could not be read",
            None,
        )),
    }
}

fn parse_json(bytes: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::invalid(
            "the request body must be a JSON object",
            None,
        )),
        Err(e) => Err(ApiError::invalid(
            format!("the request body is not valid JSON: {e}"),
            None,
        )),
    }
}
