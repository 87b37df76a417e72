//! Fake Baidu ERNIE chat API (wenxinworkshop v1), as Baidu documents it: `POST
//! {base}/chat/{endpoint}?access_token=…` with `messages` (user and assistant turns, an odd
//! number of them), `system`, `stream`; answers `{"id","object","created","result",
//! "is_truncated","need_clear_history","finish_reason","usage"}`, or with `stream: true` SSE
//! events that add `sentence_id` and `is_end` (the last one carrying the whole usage). Every
//! error is HTTP 200 with `{"error_code","error_msg"}`: a JSON body even for a stream request,
//! or an event in the middle of a stream.
//!
//! The `access_token` is checked against a [`MockOAuth`] when one is set: unknown or missing is
//! error 110, expired or revoked 111. Fault knobs, applied in order, one per request: a queued
//! [`ErnieFault`] (FIFO), else the default fault. The reply echoes the last user turn
//! (`"echo: …"`, like the mock upstream), one word per stream event.
//!
//! Function calling as ERNIE v1 has it: a request with `functions` whose last turn is the
//! user's is answered with a call of the first function (or of the one `tool_choice` names):
//! `result: ""`, `function_call: {name, arguments: "{\"input\": <the user's text>}",
//! thoughts}`, `finish_reason: "function_call"`; in a stream that is one last event (the stream
//! faults apply to it as to text). Once the last turn is a `function` result the reply echoes
//! it (`"echo: <result>"`). A `function` turn without its `name`, or turns out of ERNIE's order
//! (user or function, then assistant, alternating), are error 336003.

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use http::StatusCode;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{
    event_stream, form_get, json_resp, lock, reply_text, streamed, wait_for, words, Counters,
    FlightGuard, MockOAuth, ServerHandle, Tail, TokenState,
};

/// The path every ERNIE v1 chat URL starts with.
const PREFIX: &str = "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/";

/// A misbehaviour applied to one answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ErnieFault {
    /// HTTP 200 with `{"error_code": code, "error_msg": …}` (stream requests too).
    Error(i64),
    /// A stream sends `after` events, then an error event with `code`, then ends.
    ErrorEvent { after: usize, code: i64 },
    /// A stream sends `after` events, then half an event, then ends without `is_end`.
    Cut { after: usize },
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct ErnieRequest {
    pub path: String,
    pub query: Option<String>,
    pub headers: http::HeaderMap,
    pub body: Value,
}

#[derive(Default)]
struct Knobs {
    faults: VecDeque<ErnieFault>,
    default_fault: Option<ErnieFault>,
    oauth: Option<MockOAuth>,
    chunk_delay: Duration,
    record: bool,
}

struct Shared {
    knobs: Mutex<Knobs>,
    records: Mutex<Vec<ErnieRequest>>,
    /// Error codes answered so far, in order.
    errors: Mutex<Vec<i64>>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
}

/// Handle to a running fake; clones share it; it stops when the last clone is dropped.
#[derive(Clone)]
pub struct MockErnie {
    shared: Arc<Shared>,
    server: Arc<ServerHandle>,
}

impl MockErnie {
    /// Starts the fake on `127.0.0.1:0`, recording requests, with no token check.
    pub async fn start() -> io::Result<MockErnie> {
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            knobs: Mutex::new(Knobs {
                record: true,
                ..Knobs::default()
            }),
            records: Mutex::new(Vec::new()),
            errors: Mutex::new(Vec::new()),
            counters: Arc::new(Counters::default()),
            cancel: cancel.clone(),
        });
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let server = ServerHandle::spawn(router, cancel).await?;
        Ok(MockErnie {
            shared,
            server: Arc::new(server),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.server.addr()
    }

    /// `http://127.0.0.1:PORT/rpc/2.0/ai_custom/v1/wenxinworkshop`: an upstream's `base_url`.
    pub fn base_url(&self) -> String {
        format!(
            "http://{}{}",
            self.addr(),
            PREFIX.trim_end_matches("/chat/")
        )
    }

    /// Check each request's `access_token` against `oauth` (110 unknown, 111 stale).
    pub fn set_oauth(&self, oauth: Option<MockOAuth>) {
        lock(&self.shared.knobs).oauth = oauth;
    }

    /// Queue a fault for the next request (FIFO).
    pub fn push_fault(&self, f: ErnieFault) {
        lock(&self.shared.knobs).faults.push_back(f);
    }

    /// The fault of every request when the queue is empty.
    pub fn set_default_fault(&self, f: Option<ErnieFault>) {
        lock(&self.shared.knobs).default_fault = f;
    }

    /// Delay between stream events.
    pub fn set_chunk_delay(&self, d: Duration) {
        lock(&self.shared.knobs).chunk_delay = d;
    }

    /// Whether requests are kept for [`MockErnie::received`] (default true).
    pub fn set_recording(&self, on: bool) {
        lock(&self.shared.knobs).record = on;
    }

    pub fn received(&self) -> Vec<ErnieRequest> {
        lock(&self.shared.records).clone()
    }

    /// Requests seen so far.
    pub fn request_count(&self) -> usize {
        Counters::get(&self.shared.counters.requests)
    }

    /// The error codes answered so far (faults and token checks), in order.
    pub fn errors(&self) -> Vec<i64> {
        lock(&self.shared.errors).clone()
    }

    /// Waits until `request_count() >= n`; false on timeout.
    pub async fn wait_requests(&self, n: usize, timeout: Duration) -> bool {
        let c = &self.shared.counters;
        wait_for(&c.changed, timeout, || Counters::get(&c.requests) >= n).await
    }
}

fn error_msg(code: i64) -> &'static str {
    match code {
        110 => "Access token invalid or no longer valid",
        111 => "Access token expired",
        18 => "Open api qps request limit reached",
        336100 => "Try again later",
        336003 => "the first role must be user",
        336006 => "the length of messages must be an odd number",
        _ => "Unknown error",
    }
}

fn error_value(code: i64) -> Value {
    json!({"error_code": code, "error_msg": error_msg(code)})
}

async fn handle(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let guard = FlightGuard::new(s.counters.clone());
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 16 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    let query = parts.uri.query().map(str::to_owned);
    let path = parts.uri.path().to_owned();
    let (fault, oauth, delay) = {
        let mut k = lock(&s.knobs);
        if k.record {
            lock(&s.records).push(ErnieRequest {
                path: path.clone(),
                query: query.clone(),
                headers: parts.headers.clone(),
                body: body.clone(),
            });
        }
        let fault = k.faults.pop_front().or_else(|| k.default_fault.clone());
        (fault, k.oauth.clone(), k.chunk_delay)
    };
    s.counters.requests.fetch_add(1, Ordering::SeqCst);
    s.counters.changed.notify_waiters();
    let fail = |code: i64, guard: FlightGuard| {
        lock(&s.errors).push(code);
        json_resp(StatusCode::OK, &error_value(code), guard)
    };

    if parts.method != http::Method::POST || !path.starts_with(PREFIX) {
        return fail(3, guard);
    }
    if let Some(oauth) = oauth {
        let token = query.as_deref().and_then(|q| form_get(q, "access_token"));
        match token.map(|t| oauth.token_state(&t)) {
            Some(TokenState::Valid) => {}
            Some(TokenState::Stale) => return fail(111, guard),
            _ => return fail(110, guard),
        }
    }
    if let Some(ErnieFault::Error(code)) = fault {
        return fail(code, guard);
    }
    if let Some(code) = invalid(&body) {
        return fail(code, guard);
    }
    let text = reply(&body);
    let prompt = prompt_tokens(&body);
    let id = format!("as-{}", uuid::Uuid::new_v4().simple());
    let created = super::now_secs();
    let stream = body.get("stream").and_then(Value::as_bool) == Some(true);
    let call = function_to_call(&body);
    if let (Some(call), false) = (&call, stream) {
        let c = words(call["arguments"].as_str().unwrap_or_default());
        let v = json!({"id": id, "object": "chat.completion", "created": created,
            "result": "", "is_truncated": false, "need_clear_history": false,
            "finish_reason": "function_call", "function_call": call,
            "usage": {"prompt_tokens": prompt, "completion_tokens": c, "total_tokens": prompt + c}});
        return json_resp(StatusCode::OK, &v, guard);
    }
    if !stream {
        let c = words(&text);
        let v = json!({"id": id, "object": "chat.completion", "created": created,
            "result": text, "is_truncated": false, "need_clear_history": false,
            "finish_reason": "normal",
            "usage": {"prompt_tokens": prompt, "completion_tokens": c, "total_tokens": prompt + c}});
        return json_resp(StatusCode::OK, &v, guard);
    }
    let pieces: Vec<String> = text
        .split(' ')
        .enumerate()
        .map(|(i, w)| {
            if i == 0 {
                w.to_owned()
            } else {
                format!(" {w}")
            }
        })
        .collect();
    let n = pieces.len();
    let mut events: Vec<Bytes> = match call {
        // A call streams as one last event.
        Some(call) => {
            let c = words(call["arguments"].as_str().unwrap_or_default());
            let v = json!({"id": id, "object": "chat.completion", "created": created,
                "sentence_id": 0, "is_end": true, "is_truncated": false, "result": "",
                "need_clear_history": false, "finish_reason": "function_call",
                "function_call": call,
                "usage": {"prompt_tokens": prompt, "completion_tokens": c, "total_tokens": prompt + c}});
            vec![Bytes::from(format!("data: {v}\n\n"))]
        }
        None => pieces
        .iter()
        .enumerate()
        .map(|(i, piece)| {
            let c = i + 1;
            let end = i + 1 == n;
            let mut v = json!({"id": id, "object": "chat.completion", "created": created,
                "sentence_id": i, "is_end": end, "is_truncated": false, "result": piece,
                "need_clear_history": false,
                "usage": {"prompt_tokens": prompt, "completion_tokens": c, "total_tokens": prompt + c}});
            if end {
                v["finish_reason"] = json!("normal");
            }
            Bytes::from(format!("data: {v}\n\n"))
        })
        .collect(),
    };
    match fault {
        Some(ErnieFault::ErrorEvent { after, code }) => {
            events.truncate(after);
            lock(&s.errors).push(code);
            events.push(Bytes::from(format!("data: {}\n\n", error_value(code))));
        }
        Some(ErnieFault::Cut { after }) => {
            let next = events.get(after).cloned();
            events.truncate(after);
            if let Some(e) = next {
                events.push(e.slice(..e.len() / 2));
            }
        }
        _ => {}
    }
    let stream = event_stream(events, delay, Tail::End, s.cancel.clone());
    streamed(StatusCode::OK, "text/event-stream", stream, guard)
}

/// What Baidu refuses about a body: no messages (336003), an even number of turns (336006), a
/// first turn that is not the user's (336003), turns out of order (user or function, then
/// assistant, alternating) or a function turn without its name (336003).
fn invalid(body: &Value) -> Option<i64> {
    let Some(msgs) = body.get("messages").and_then(Value::as_array) else {
        return Some(336003);
    };
    if msgs.is_empty() {
        return Some(336003);
    }
    if msgs.len() % 2 == 0 {
        return Some(336006);
    }
    if msgs[0].get("role").and_then(Value::as_str) != Some("user") {
        return Some(336003);
    }
    for (i, m) in msgs.iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let in_order = match i % 2 {
            0 => role == "user" || role == "function",
            _ => role == "assistant",
        };
        let named = m
            .get("name")
            .and_then(Value::as_str)
            .is_some_and(|n| !n.is_empty());
        if !in_order || (role == "function" && !named) {
            return Some(336003);
        }
    }
    None
}

/// The last turn.
fn last_turn(body: &Value) -> Option<&Value> {
    body.get("messages")?.as_array()?.last()
}

/// The reply text: the echo of the last function result, else of the last user turn.
fn reply(body: &Value) -> String {
    match last_turn(body) {
        Some(m) if m.get("role").and_then(Value::as_str) == Some("function") => {
            let content = m.get("content").and_then(Value::as_str).unwrap_or_default();
            format!("echo: {content}")
        }
        _ => reply_text(body),
    }
}

/// The call the fake makes: of the function `tool_choice` names, else of the first one, when
/// the request offers `functions` and its last turn is the user's.
fn function_to_call(body: &Value) -> Option<Value> {
    let functions = body.get("functions")?.as_array()?;
    let last = last_turn(body)?;
    if last.get("role").and_then(Value::as_str) != Some("user") {
        return None;
    }
    let named = body
        .get("tool_choice")
        .and_then(|c| c.get("function"))
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str);
    let name = match named {
        Some(n) => functions
            .iter()
            .filter_map(|f| f.get("name").and_then(Value::as_str))
            .find(|f| *f == n)?,
        None => functions.first()?.get("name")?.as_str()?,
    };
    let input = last
        .get("content")
        .and_then(Value::as_str)
        .unwrap_or_default();
    Some(
        json!({"name": name, "arguments": json!({"input": input}).to_string(),
        "thoughts": format!("the user asked about {input}; calling {name}")}),
    )
}

/// Words of the system text and every turn; at least 1.
fn prompt_tokens(body: &Value) -> usize {
    let mut n = body.get("system").and_then(Value::as_str).map_or(0, words);
    if let Some(msgs) = body.get("messages").and_then(Value::as_array) {
        for m in msgs {
            n += m.get("content").and_then(Value::as_str).map_or(0, words);
        }
    }
    n.max(1)
}
