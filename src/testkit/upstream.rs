//! Mock OpenAI-compatible upstream: deterministic echo replies (plain JSON and
//! SSE streams), runtime fault knobs, per-credential statuses, an optional auth
//! check, request records, and body-lifecycle counters (completed, cancelled by
//! the client, aborted by the server, in flight).
//!
//! Fault and knob precedence for each request: the queued fault (FIFO) if any,
//! else a random fault (per `set_random_failure_rate`, drawn from the default mix or the one
//! given to `set_random_fault_mix`), else the default fault.
//! The fault is taken when the request arrives, whatever its route or
//! credential; then per-token statuses, then the auth check, then routing.
//! A content fault (`set_content_fault`: the request body contains a marker)
//! comes before all of these and leaves the queue alone, so one tenant's
//! request can be made to fail while another's goes through. Headers set with
//! `set_response_headers` are added to every answer. Embeddings honour `encoding_format:
//! base64` (the Python SDK's default) as OpenAI does.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use rand::Rng;
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;

pub use super::reply_text;
use super::{
    bearer_token, completion, event_stream, form_get, full, json_resp, lock, model_of,
    openai_error, sleep_or_cancel, stream_events, streamed, wait_for, words, AuthCheck, Counters,
    FlightGuard, Outcome, Planned, ServerHandle, Tail,
};

/// Largest request body the mock reads (bigger bodies are recorded as `Null`).
const MAX_BODY: usize = 64 << 20;

/// A misbehaviour applied to one response.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// Answer `status` with `body` as-is (`application/json` if it parses as
    /// JSON, else `text/plain`), plus `Retry-After: secs` if given.
    Status {
        status: u16,
        body: String,
        retry_after: Option<u64>,
    },
    /// Wait this long before sending response headers, then answer normally.
    DelayFirstByte(Duration),
    /// Send headers and the first `n` stream events (for a plain JSON answer:
    /// half the body, or nothing if `n == 0`), then hang until the client goes.
    StallAfterChunks(usize),
    /// Send headers and part of the body (streams: one or two events), then
    /// drop the connection abruptly: the client sees a body error.
    ResetMidBody,
    /// A 200 `text/event-stream` whose events are neither JSON nor SSE-framed.
    MalformedSse,
    /// A 200 whose body is the normal answer cut in half (clean end of body).
    TruncatedJson,
    /// Never answer, until the client goes away (or the mock shuts down).
    Hang,
    /// Answer `status` with exactly these headers (plus a content type: JSON
    /// if `body` parses, else `text/html`) and `body`: for Retry-After dates,
    /// odd headers and HTML error pages.
    Respond {
        status: u16,
        headers: Vec<(String, String)>,
        body: String,
    },
    /// Answer `status` with an OpenAI-shaped error whose message and an
    /// extra field repeat the credential the request carried (as some
    /// upstreams do): a canary for credential leaks.
    EchoCredential { status: u16 },
}

/// One request as the mock received it.
#[derive(Debug, Clone)]
pub struct Received {
    pub method: String,
    pub path: String,
    pub query: Option<String>,
    pub headers: HeaderMap,
    /// The body parsed as JSON; `Null` if empty or not JSON.
    pub body: Value,
    /// The body's bytes as they arrived.
    pub raw: Bytes,
    /// The HTTP version it came over (HTTP/2 when TLS negotiated `h2`).
    pub version: http::Version,
    pub at: Instant,
}

#[derive(Default)]
struct Knobs {
    chunk_delay: Duration,
    first_byte_delay: Duration,
    chunks: Option<usize>,
    faults: VecDeque<Fault>,
    default_fault: Option<Fault>,
    auth_check: Option<AuthCheck>,
    token_status: HashMap<String, (u16, Option<u64>)>,
    content_faults: Vec<(String, Fault)>,
    response_headers: Vec<(String, String)>,
    /// Faults a random failure is drawn from (uniformly); empty: the default mix.
    random_mix: Vec<Fault>,
    /// Azure OpenAI mode: paths, api-version and key checked as Azure does.
    azure: Option<super::AzureFake>,
}

struct Shared {
    knobs: Mutex<Knobs>,
    failure_rate: AtomicU64,
    recording: AtomicBool,
    records: Mutex<Vec<Received>>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
}

/// Handle to a running mock upstream. Clones share the same server; it stops
/// when the last clone is dropped or on [`MockUpstream::shutdown`].
#[derive(Clone)]
pub struct MockUpstream {
    shared: Arc<Shared>,
    server: Arc<ServerHandle>,
    /// `https` when started with [`MockUpstream::start_tls`].
    scheme: &'static str,
}

impl MockUpstream {
    /// Starts the mock on `127.0.0.1:0`.
    pub async fn start() -> io::Result<MockUpstream> {
        MockUpstream::start_with(None).await
    }

    /// Starts the mock on `127.0.0.1:0` over TLS with `tls` (its certificate, its ALPN, its
    /// client-certificate verifier): [`MockUpstream::base_url`] is then `https://`.
    pub async fn start_tls(tls: Arc<rustls::ServerConfig>) -> io::Result<MockUpstream> {
        MockUpstream::start_with(Some(tls)).await
    }

    async fn start_with(tls: Option<Arc<rustls::ServerConfig>>) -> io::Result<MockUpstream> {
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            knobs: Mutex::new(Knobs::default()),
            failure_rate: AtomicU64::new(0f64.to_bits()),
            recording: AtomicBool::new(true),
            records: Mutex::new(Vec::new()),
            counters: Arc::new(Counters::default()),
            cancel: cancel.clone(),
        });
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let (server, scheme) = match tls {
            None => (ServerHandle::spawn(router, cancel).await?, "http"),
            Some(tls) => (ServerHandle::spawn_tls(router, cancel, tls).await?, "https"),
        };
        Ok(MockUpstream {
            shared,
            server: Arc::new(server),
            scheme,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT/v1` (`https://` over TLS)
    pub fn base_url(&self) -> String {
        format!("{}://{}/v1", self.scheme, self.addr())
    }

    /// `http://127.0.0.1:PORT` + `path` (path should start with `/`; `https://` over TLS).
    pub fn url(&self, path: &str) -> String {
        format!("{}://{}{}", self.scheme, self.addr(), path)
    }

    /// Stops the server: no new connections; hanging/stalled responses end.
    pub async fn shutdown(&self) {
        self.server.shutdown().await;
    }

    // ---- knobs ----

    /// Delay between consecutive stream events.
    pub fn set_chunk_delay(&self, d: Duration) {
        lock(&self.shared.knobs).chunk_delay = d;
    }

    /// Delay before response headers, for every request.
    pub fn set_first_byte_delay(&self, d: Duration) {
        lock(&self.shared.knobs).first_byte_delay = d;
    }

    /// Number of content chunks a streamed reply is split into (clamped to
    /// 1..=words); `None` = one chunk per word.
    pub fn set_chunks(&self, n: Option<usize>) {
        lock(&self.shared.knobs).chunks = n;
    }

    /// Queues a fault for the next request without one (FIFO).
    pub fn push_fault(&self, f: Fault) {
        lock(&self.shared.knobs).faults.push_back(f);
    }

    /// Requests whose raw body contains `marker` get `fault` (before any
    /// queued, random or default fault, which stay untouched); `None` removes
    /// the rule.
    pub fn set_content_fault(&self, marker: &str, fault: Option<Fault>) {
        let mut k = lock(&self.shared.knobs);
        k.content_faults.retain(|(m, _)| m != marker);
        if let Some(f) = fault {
            k.content_faults.push((marker.to_owned(), f));
        }
    }

    /// Headers added to every answer from now on (an upstream's `set-cookie`,
    /// `server`, `x-ratelimit-*`, ...). Invalid names or values are skipped.
    pub fn set_response_headers(&self, headers: &[(&str, &str)]) {
        lock(&self.shared.knobs).response_headers = headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
    }

    /// Drops all queued faults.
    pub fn clear_faults(&self) {
        lock(&self.shared.knobs).faults.clear();
    }

    /// Fault applied when the queue is empty (and no random fault fired).
    pub fn set_default_fault(&self, f: Option<Fault>) {
        lock(&self.shared.knobs).default_fault = f;
    }

    /// With probability `p` per request (when the queue is empty), apply one of
    /// Status 500/502/503, ResetMidBody, Status 429 (`Retry-After: 1`), or one of the faults
    /// given to [`MockUpstream::set_random_fault_mix`].
    pub fn set_random_failure_rate(&self, p: f64) {
        let p = if p.is_finite() {
            p.clamp(0.0, 1.0)
        } else {
            0.0
        };
        self.shared
            .failure_rate
            .store(p.to_bits(), Ordering::Relaxed);
    }

    /// The faults a random failure (see [`MockUpstream::set_random_failure_rate`]) is drawn
    /// from, each equally likely; an empty list restores the default mix.
    pub fn set_random_fault_mix(&self, mix: Vec<Fault>) {
        lock(&self.shared.knobs).random_mix = mix;
    }

    /// Azure OpenAI mode ([`super::AzureFake`]): requests must use Azure's paths, a served
    /// `api-version` and a key (or a bearer token, checked by the auth check if one is set);
    /// answers name the deployment's model. `None` returns to OpenAI paths.
    pub fn set_azure(&self, azure: Option<super::AzureFake>) {
        lock(&self.shared.knobs).azure = azure;
    }

    /// When set and the check returns false, requests get 401 `invalid_api_key`.
    pub fn set_auth_check(&self, check: Option<AuthCheck>) {
        lock(&self.shared.knobs).auth_check = check;
    }

    /// Requests whose bearer token, `api-key`/`x-api-key` header or
    /// `access_token` query parameter equals `token` get `status` (with
    /// `Retry-After` if given; a 429 also says the credential's limit is spent
    /// with `x-ratelimit-remaining-requests: 0`, as OpenAI does). `None`
    /// removes the rule.
    pub fn set_token_status(&self, token: &str, status: Option<(u16, Option<u64>)>) {
        let mut k = lock(&self.shared.knobs);
        match status {
            Some(s) => {
                k.token_status.insert(token.to_owned(), s);
            }
            None => {
                k.token_status.remove(token);
            }
        }
    }

    /// Whether requests are recorded in [`MockUpstream::received`] (default
    /// true; turn off for long benchmarks). Counters are kept either way.
    pub fn set_recording(&self, on: bool) {
        self.shared.recording.store(on, Ordering::Relaxed);
    }

    // ---- records ----

    pub fn received(&self) -> Vec<Received> {
        lock(&self.shared.records).clone()
    }

    /// Requests seen since start or the last `clear_records`.
    pub fn request_count(&self) -> usize {
        Counters::get(&self.shared.counters.requests)
    }

    /// Clears records and the request count (body counters are kept).
    pub fn clear_records(&self) {
        lock(&self.shared.records).clear();
        self.shared.counters.requests.store(0, Ordering::SeqCst);
    }

    /// Responses whose client went away before the body was fully sent
    /// (including requests dropped while hanging or delayed).
    pub fn cancelled(&self) -> usize {
        Counters::get(&self.shared.counters.cancelled)
    }

    /// Responses whose body was sent to the end.
    pub fn completed(&self) -> usize {
        Counters::get(&self.shared.counters.completed)
    }

    /// Responses the mock cut off itself (ResetMidBody, or shutdown).
    pub fn aborted(&self) -> usize {
        Counters::get(&self.shared.counters.aborted)
    }

    /// Requests received whose response has not finished one way or another.
    pub fn in_flight(&self) -> usize {
        Counters::get(&self.shared.counters.in_flight)
    }

    /// The most requests that were ever in flight at once (since start or `reset_peak`).
    pub fn peak_in_flight(&self) -> usize {
        Counters::get(&self.shared.counters.peak_in_flight)
    }

    /// Start counting `peak_in_flight` afresh from the requests in flight now.
    pub fn reset_peak(&self) {
        let c = &self.shared.counters;
        c.peak_in_flight.store(
            Counters::get(&c.in_flight),
            std::sync::atomic::Ordering::SeqCst,
        );
    }

    /// Waits until `cancelled() >= n`; false on timeout.
    pub async fn wait_cancelled(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| Counters::get(&s.cancelled) >= n)
            .await
    }

    /// Waits until `completed() >= n`; false on timeout.
    pub async fn wait_completed(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| Counters::get(&s.completed) >= n)
            .await
    }

    /// Waits until `request_count() >= n`; false on timeout.
    pub async fn wait_requests(&self, n: usize, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| Counters::get(&s.requests) >= n)
            .await
    }

    /// Waits until `in_flight() == 0`; false on timeout.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        self.wait_until(timeout, |s| Counters::get(&s.in_flight) == 0)
            .await
    }

    async fn wait_until(&self, timeout: Duration, cond: impl Fn(&Counters) -> bool) -> bool {
        let c = &self.shared.counters;
        wait_for(&c.changed, timeout, || cond(c)).await
    }
}

// ---- request handling ----

async fn handle(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let extra = lock(&s.knobs).response_headers.clone();
    let mut resp = answer(s, req).await;
    for (k, v) in extra {
        if let (Ok(k), Ok(v)) = (
            header::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(&v),
        ) {
            resp.headers_mut().append(k, v);
        }
    }
    resp
}

async fn answer(s: Arc<Shared>, req: Request) -> Response {
    let mut guard = FlightGuard::new(s.counters.clone());
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, MAX_BODY)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let query = parts.uri.query().map(str::to_owned);
    let path = parts.uri.path().to_owned();
    if s.recording.load(Ordering::Relaxed) {
        lock(&s.records).push(Received {
            method: parts.method.as_str().to_owned(),
            path: path.clone(),
            query: query.clone(),
            headers: parts.headers.clone(),
            body: body.clone(),
            raw: bytes.clone(),
            version: parts.version,
            at: Instant::now(),
        });
    }
    s.counters.requests.fetch_add(1, Ordering::SeqCst);
    s.counters.changed.notify_waiters();

    let azure = lock(&s.knobs).azure.clone();
    let (queued, default, first_byte, chunk_delay, chunks, auth, token_status) = {
        let mut k = lock(&s.knobs);
        let by_content = k
            .content_faults
            .iter()
            .find(|(m, _)| memfind(&bytes, m.as_bytes()))
            .map(|(_, f)| f.clone());
        let token_status = request_tokens(&parts.headers, query.as_deref())
            .into_iter()
            .find_map(|t| k.token_status.get(&t).copied());
        let queued = by_content
            .or_else(|| k.faults.pop_front())
            .or_else(|| random_fault(&s, &k.random_mix));
        (
            queued,
            k.default_fault.clone(),
            k.first_byte_delay,
            k.chunk_delay,
            k.chunks,
            k.auth_check.clone(),
            token_status,
        )
    };
    let fault = queued.or(default);

    let mut delay = first_byte;
    if let Some(Fault::DelayFirstByte(d)) = &fault {
        delay += *d;
    }
    if !sleep_or_cancel(delay, &s.cancel).await {
        guard.finish(Outcome::Aborted);
        return shutting_down();
    }
    match fault {
        Some(Fault::Hang) => {
            s.cancel.cancelled().await;
            guard.finish(Outcome::Aborted);
            return shutting_down();
        }
        Some(Fault::Status {
            status,
            body,
            retry_after,
        }) => return status_resp(status, body, retry_after, guard),
        Some(Fault::Respond {
            status,
            headers,
            body,
        }) => return respond_resp(status, &headers, body, guard),
        Some(Fault::EchoCredential { status }) => {
            let token = request_tokens(&parts.headers, query.as_deref())
                .into_iter()
                .next()
                .unwrap_or_default();
            let err = json!({"error": {
                "message": format!("Incorrect API key provided: {token}."),
                "type": "invalid_request_error", "param": null, "code": "invalid_api_key",
                "received_credential": token}});
            let code = StatusCode::from_u16(status).unwrap_or(StatusCode::UNAUTHORIZED);
            return json_resp(code, &err, guard);
        }
        _ => {}
    }
    if let Some((status, retry_after)) = token_status {
        return token_status_resp(status, retry_after, guard);
    }
    let mut body = body;
    let mut path = path;
    if let Some(az) = &azure {
        match az.admit(
            &parts.headers,
            &path,
            query.as_deref(),
            auth.as_ref(),
            &body,
        ) {
            Ok((openai_path, model)) => {
                path = openai_path;
                if let Some(o) = body.as_object_mut() {
                    o.insert("model".into(), Value::from(model));
                }
            }
            Err((status, err)) => return json_resp(status, &err, guard),
        }
    } else if let Some(check) = auth {
        if !check(&parts.headers, query.as_deref()) {
            let err = openai_error(
                "Incorrect API key provided (mock auth check failed).",
                "invalid_request_error",
                Some("invalid_api_key"),
            );
            return json_resp(StatusCode::UNAUTHORIZED, &err, guard);
        }
    }

    let mut planned = plan(&parts.method, &path, &body, chunks);
    if azure.is_some() {
        planned = super::azure::dress(planned, &path, &body, chunks);
    }
    apply(planned, fault, chunk_delay, &s.cancel, guard)
}

fn shutting_down() -> Response {
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
    resp
}

/// Credentials a request carries: bearer token, api-key headers, access_token.
fn request_tokens(headers: &HeaderMap, query: Option<&str>) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(t) = bearer_token(headers) {
        out.push(t.to_owned());
    }
    for name in ["api-key", "x-api-key"] {
        if let Some(v) = headers.get(name).and_then(|v| v.to_str().ok()) {
            out.push(v.trim().to_owned());
        }
    }
    if let Some(t) = query.and_then(|q| form_get(q, "access_token")) {
        out.push(t);
    }
    out
}

/// With the configured probability, a fault drawn from `mix` (the default mix if empty).
fn random_fault(s: &Shared, mix: &[Fault]) -> Option<Fault> {
    let p = f64::from_bits(s.failure_rate.load(Ordering::Relaxed));
    if p <= 0.0 {
        return None;
    }
    let mut rng = rand::rng();
    if rng.random::<f64>() >= p {
        return None;
    }
    if !mix.is_empty() {
        return mix.get(rng.random_range(0..mix.len())).cloned();
    }
    let status = |status: u16, retry_after: Option<u64>| Fault::Status {
        status,
        body: openai_error("Injected mock failure.", "server_error", None).to_string(),
        retry_after,
    };
    Some(match rng.random_range(0..5u8) {
        0 => status(500, None),
        1 => status(502, None),
        2 => status(503, None),
        3 => Fault::ResetMidBody,
        _ => status(429, Some(1)),
    })
}

fn status_resp(
    status: u16,
    body: String,
    retry_after: Option<u64>,
    guard: FlightGuard,
) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let ct = if serde_json::from_str::<Value>(&body).is_ok() {
        "application/json"
    } else {
        "text/plain"
    };
    let mut resp = full(code, ct, Bytes::from(body), guard);
    if let Some(secs) = retry_after {
        resp.headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs));
    }
    resp
}

fn memfind(hay: &[u8], needle: &[u8]) -> bool {
    !needle.is_empty() && hay.windows(needle.len()).any(|w| w == needle)
}

fn respond_resp(
    status: u16,
    headers: &[(String, String)],
    body: String,
    guard: FlightGuard,
) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let ct = if serde_json::from_str::<Value>(&body).is_ok() {
        "application/json"
    } else {
        "text/html"
    };
    let mut resp = full(code, ct, Bytes::from(body), guard);
    for (k, v) in headers {
        if let (Ok(k), Ok(v)) = (
            header::HeaderName::from_bytes(k.as_bytes()),
            HeaderValue::from_str(v),
        ) {
            resp.headers_mut().append(k, v);
        }
    }
    resp
}

fn token_status_resp(status: u16, retry_after: Option<u64>, guard: FlightGuard) -> Response {
    let body = match status {
        429 => openai_error(
            "Rate limit reached for this credential (mock).",
            "requests",
            Some("rate_limit_exceeded"),
        ),
        401 => openai_error(
            "Incorrect API key provided (mock).",
            "invalid_request_error",
            Some("invalid_api_key"),
        ),
        _ => openai_error("Mock status for this credential.", "server_error", None),
    };
    let mut resp = status_resp(status, body.to_string(), retry_after, guard);
    if status == 429 {
        resp.headers_mut().insert(
            header::HeaderName::from_static("x-ratelimit-remaining-requests"),
            HeaderValue::from_static("0"),
        );
    }
    resp
}

fn plan(method: &Method, path: &str, body: &Value, chunks: Option<usize>) -> Planned {
    let endpoint = match (method, path) {
        (&Method::POST, "/v1/chat/completions") => "chat",
        (&Method::POST, "/v1/completions") => "completion",
        (&Method::POST, "/v1/embeddings") => "embeddings",
        (&Method::GET, "/v1/models") => return Planned::Json(StatusCode::OK, models()),
        _ => {
            let msg = format!("Unknown request URL: {method} {path}.");
            let err = openai_error(&msg, "invalid_request_error", Some("unknown_url"));
            return Planned::Json(StatusCode::NOT_FOUND, err);
        }
    };
    if !body.is_object() {
        let err = openai_error(
            "The request body must be a JSON object.",
            "invalid_request_error",
            None,
        );
        return Planned::Json(StatusCode::BAD_REQUEST, err);
    }
    if endpoint == "embeddings" {
        return Planned::Json(StatusCode::OK, embeddings(body));
    }
    let chat = endpoint == "chat";
    if body.get("stream").and_then(Value::as_bool) == Some(true) {
        Planned::Sse(stream_events(body, chat, chunks))
    } else {
        Planned::Json(StatusCode::OK, completion(body, chat))
    }
}

fn apply(
    planned: Planned,
    fault: Option<Fault>,
    delay: Duration,
    cancel: &CancellationToken,
    guard: FlightGuard,
) -> Response {
    const SSE: &str = "text/event-stream";
    const JSON: &str = "application/json";
    let cancel = cancel.clone();
    let halve = |b: Bytes| b.slice(0..b.len() / 2);
    match (fault, planned) {
        (Some(Fault::MalformedSse), _) => {
            let events = [
                "data: {\"id\":\"chatcmpl-mock\",\"object\":\"chat.completion.chunk\",\"choices\":[{\"delta\":{\"content\":\n\n",
                "this line is not an SSE field at all\n",
                "data: {not json}\n\n",
                "data: [DONE]\n\n",
            ];
            let events = events.iter().map(|e| Bytes::from_static(e.as_bytes()));
            let stream = event_stream(events.collect(), delay, Tail::End, cancel);
            streamed(StatusCode::OK, SSE, stream, guard)
        }
        (Some(Fault::TruncatedJson), Planned::Json(status, v)) => {
            full(status, JSON, halve(Bytes::from(v.to_string())), guard)
        }
        (Some(Fault::TruncatedJson), Planned::Sse(events)) => full(
            StatusCode::OK,
            SSE,
            halve(Bytes::from(events.concat())),
            guard,
        ),
        (Some(Fault::ResetMidBody), Planned::Json(status, v)) => {
            let part = halve(Bytes::from(v.to_string()));
            streamed(
                status,
                JSON,
                event_stream(vec![part], delay, Tail::Error, cancel),
                guard,
            )
        }
        (Some(Fault::ResetMidBody), Planned::Sse(mut events)) => {
            events.truncate(events.len().saturating_sub(1).clamp(1, 2));
            streamed(
                StatusCode::OK,
                SSE,
                event_stream(events, delay, Tail::Error, cancel),
                guard,
            )
        }
        (Some(Fault::StallAfterChunks(n)), Planned::Json(status, v)) => {
            let part = halve(Bytes::from(v.to_string()));
            let events = if n == 0 { Vec::new() } else { vec![part] };
            streamed(
                status,
                JSON,
                event_stream(events, delay, Tail::Stall, cancel),
                guard,
            )
        }
        (Some(Fault::StallAfterChunks(n)), Planned::Sse(mut events)) => {
            events.truncate(n);
            streamed(
                StatusCode::OK,
                SSE,
                event_stream(events, delay, Tail::Stall, cancel),
                guard,
            )
        }
        (_, Planned::Json(status, v)) => json_resp(status, &v, guard),
        (_, Planned::Sse(events)) => streamed(
            StatusCode::OK,
            SSE,
            event_stream(events, delay, Tail::End, cancel),
            guard,
        ),
    }
}

// ---- embeddings and models payloads ----

/// Eight deterministic floats in [-1, 1] from the SHA-256 of `s`.
fn embed(s: &str) -> Vec<f64> {
    let h = Sha256::digest(s.as_bytes());
    h.chunks_exact(4)
        .map(|c| {
            let v = u32::from_be_bytes([c[0], c[1], c[2], c[3]]);
            f64::from(v) / f64::from(u32::MAX) * 2.0 - 1.0
        })
        .collect()
}

/// A vector as OpenAI (and Azure) send it: numbers, or with `encoding_format: base64` (the
/// Python SDK's default) the little-endian `f32` bytes in base64.
fn vector(s: &str, base64: bool) -> Value {
    let v = embed(s);
    if !base64 {
        return json!(v);
    }
    use base64::Engine;
    let bytes: Vec<u8> = v.iter().flat_map(|x| (*x as f32).to_le_bytes()).collect();
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

fn embeddings(body: &Value) -> Value {
    let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
    let inputs: Vec<String> = match body.get("input") {
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) if items.iter().all(Value::is_number) => {
            vec![Value::Array(items.clone()).to_string()]
        }
        Some(Value::Array(items)) => items
            .iter()
            .map(|i| i.as_str().map_or_else(|| i.to_string(), str::to_owned))
            .collect(),
        Some(other) => vec![other.to_string()],
        None => Vec::new(),
    };
    let data: Vec<Value> = inputs
        .iter()
        .enumerate()
        .map(|(i, s)| json!({"object": "embedding", "index": i, "embedding": vector(s, base64)}))
        .collect();
    let tokens = inputs.iter().map(|s| words(s)).sum::<usize>().max(1);
    json!({
        "object": "list",
        "data": data,
        "model": model_of(body),
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    })
}

fn models() -> Value {
    let ids = ["mock-model", "gpt-4o-mini", "text-embedding-3-small"];
    let data: Vec<Value> = ids
        .iter()
        .map(
            |id| json!({"id": id, "object": "model", "created": 0, "owned_by": "tollgate-testkit"}),
        )
        .collect();
    json!({"object": "list", "data": data})
}
