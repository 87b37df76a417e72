//! A fake Anthropic Messages API (`POST /v1/messages`) with fault knobs, written from
//! Anthropic's documented wire format: the request checks the real API makes (`x-api-key`,
//! `anthropic-version`, `model`, `max_tokens`, `messages` of user/assistant turns), Message
//! answers with text and `tool_use` blocks, `stop_reason`, usage with cache tokens, and the
//! event stream (`message_start`, `content_block_start`, `ping`, `content_block_delta` with
//! `text_delta` / `input_json_delta`, `content_block_stop`, `message_delta`, `message_stop`).
//!
//! The answer is deterministic: `echo: ` and the last user turn's text, cut at `max_tokens`
//! words or at a stop sequence. With `tools` (and `tool_choice` other than `none`) and a last
//! user turn without a tool result, it calls the named (else the first) tool with
//! `{"query": <that text>}`; a turn with tool results is answered `echo: result: <their text>`.
//!
//! Faults, queued (first in, first out) and each taken by one request: an error of any type
//! with its status and Anthropic's error body, a stream cut after some events (a clean end
//! without `message_stop`), an `error` event in the middle of a stream.

use std::collections::VecDeque;
use std::io;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::Response;
use axum::Router;
use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;

use super::{
    event_stream, full, lock, streamed, wait_for, Counters, FlightGuard, ServerHandle, Tail,
};

/// The key the fake accepts unless told otherwise.
pub const DEFAULT_KEY: &str = "sk-ant-test";

/// A misbehaviour applied to one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AnthropicFault {
    /// Answer `status` with `{"type":"error","error":{"type": kind, "message"}}`, plus
    /// `retry-after` if given.
    Error {
        status: u16,
        kind: String,
        retry_after: Option<u64>,
    },
    /// A stream that ends cleanly after this many events, without `message_stop`.
    CutAfter(usize),
    /// A stream that sends this many events, then an `error` event of this type, then ends.
    ErrorEventAfter(usize, String),
}

impl AnthropicFault {
    /// The error Anthropic documents for `kind`, with its status.
    pub fn error(kind: &str) -> AnthropicFault {
        let status = match kind {
            "invalid_request_error" => 400,
            "authentication_error" => 401,
            "permission_error" => 403,
            "not_found_error" => 404,
            "request_too_large" => 413,
            "rate_limit_error" => 429,
            "overloaded_error" => 529,
            _ => 500,
        };
        AnthropicFault::Error {
            status,
            kind: kind.to_owned(),
            retry_after: None,
        }
    }
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct AnthropicReceived {
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

/// Decides whether an `x-api-key` is accepted, in place of the one fixed key.
pub type KeyCheck = Arc<dyn Fn(&str) -> bool + Send + Sync>;

struct Shared {
    faults: Mutex<VecDeque<AnthropicFault>>,
    key: Mutex<String>,
    key_check: Mutex<Option<KeyCheck>>,
    cache_read: Mutex<u64>,
    records: Mutex<Vec<AnthropicReceived>>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
}

/// Handle to a running fake; it stops when the last clone is dropped.
#[derive(Clone)]
pub struct MockAnthropic {
    shared: Arc<Shared>,
    server: Arc<ServerHandle>,
}

impl MockAnthropic {
    /// Starts the fake on `127.0.0.1:0`, accepting [`DEFAULT_KEY`].
    pub async fn start() -> io::Result<MockAnthropic> {
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            faults: Mutex::new(VecDeque::new()),
            key: Mutex::new(DEFAULT_KEY.to_owned()),
            key_check: Mutex::new(None),
            cache_read: Mutex::new(0),
            records: Mutex::new(Vec::new()),
            counters: Arc::new(Counters::default()),
            cancel: cancel.clone(),
        });
        let router = Router::new().fallback(handle).with_state(shared.clone());
        let server = ServerHandle::spawn(router, cancel).await?;
        Ok(MockAnthropic {
            shared,
            server: Arc::new(server),
        })
    }

    /// `http://127.0.0.1:PORT` (the API's base URL: `/v1/messages` is under it).
    pub fn base_url(&self) -> String {
        format!("http://{}", self.server.addr())
    }

    /// Queue a fault for the next request that has none queued before it.
    pub fn push_fault(&self, f: AnthropicFault) {
        lock(&self.shared.faults).push_back(f);
    }

    /// The only `x-api-key` accepted from now on (others: 401 `authentication_error`).
    pub fn set_key(&self, key: &str) {
        *lock(&self.shared.key) = key.to_owned();
    }

    /// Accept the keys `check` accepts (e.g. the tokens an OAuth2 server holds valid) instead of
    /// the fixed key; `None` goes back to the fixed key.
    pub fn set_key_check(&self, check: Option<KeyCheck>) {
        *lock(&self.shared.key_check) = check;
    }

    /// Report this many `cache_read_input_tokens` on every answer.
    pub fn set_cache_read(&self, n: u64) {
        *lock(&self.shared.cache_read) = n;
    }

    pub fn received(&self) -> Vec<AnthropicReceived> {
        lock(&self.shared.records).clone()
    }

    pub fn request_count(&self) -> usize {
        Counters::get(&self.shared.counters.requests)
    }

    /// Waits until no answer is in flight; false on timeout.
    pub async fn wait_idle(&self, timeout: Duration) -> bool {
        let c = &self.shared.counters;
        wait_for(&c.changed, timeout, || Counters::get(&c.in_flight) == 0).await
    }
}

/// Anthropic's error body.
pub fn error_body(kind: &str, message: &str) -> Value {
    json!({"type": "error", "error": {"type": kind, "message": message},
        "request_id": "req_fake"})
}

fn error_resp(status: u16, kind: &str, message: &str, guard: FlightGuard) -> Response {
    let code = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let body = Bytes::from(error_body(kind, message).to_string());
    full(code, "application/json", body, guard)
}

async fn handle(State(s): State<Arc<Shared>>, req: Request) -> Response {
    let guard = FlightGuard::new(s.counters.clone());
    let (parts, body) = req.into_parts();
    let bytes = axum::body::to_bytes(body, 64 << 20)
        .await
        .unwrap_or_default();
    let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
    lock(&s.records).push(AnthropicReceived {
        path: parts.uri.path().to_owned(),
        headers: parts.headers.clone(),
        body: body.clone(),
    });
    s.counters.requests.fetch_add(1, Ordering::SeqCst);
    s.counters.changed.notify_waiters();
    if parts.method != http::Method::POST || parts.uri.path() != "/v1/messages" {
        return error_resp(404, "not_found_error", "Not found", guard);
    }
    let key = parts.headers.get("x-api-key").and_then(|v| v.to_str().ok());
    let key_check = lock(&s.key_check).clone();
    let accepted = match (key, key_check) {
        (None, _) => false,
        (Some(k), Some(accepts)) => accepts(k),
        (Some(k), None) => k == lock(&s.key).as_str(),
    };
    if !accepted {
        return error_resp(401, "authentication_error", "invalid x-api-key", guard);
    }
    if parts.headers.get("anthropic-version").is_none() {
        let msg = "anthropic-version: header is required";
        return error_resp(400, "invalid_request_error", msg, guard);
    }
    let fault = lock(&s.faults).pop_front();
    if let Some(AnthropicFault::Error {
        status,
        kind,
        retry_after,
    }) = &fault
    {
        let mut resp = error_resp(*status, kind, "injected by the fake", guard);
        if let Some(secs) = retry_after {
            resp.headers_mut()
                .insert(http::header::RETRY_AFTER, http::HeaderValue::from(*secs));
        }
        return resp;
    }
    if let Err(msg) = check(&body) {
        return error_resp(400, "invalid_request_error", &msg, guard);
    }
    let cache_read = *lock(&s.cache_read);
    let reply = reply(&body, cache_read);
    if body["stream"].as_bool() == Some(true) {
        let mut events = stream_events(&reply);
        let tail = match fault {
            Some(AnthropicFault::CutAfter(n)) => {
                events.truncate(n);
                Tail::End
            }
            Some(AnthropicFault::ErrorEventAfter(n, kind)) => {
                events.truncate(n);
                let e = error_body(&kind, "injected by the fake");
                events.push(sse("error", &e));
                Tail::End
            }
            _ => Tail::End,
        };
        let stream = event_stream(events, Duration::ZERO, tail, s.cancel.clone());
        return streamed(StatusCode::OK, "text/event-stream", stream, guard);
    }
    full(
        StatusCode::OK,
        "application/json",
        Bytes::from(reply.to_string()),
        guard,
    )
}

/// The checks the Messages API makes on a request, as an error message.
fn check(body: &Value) -> Result<(), String> {
    if !body["model"].is_string() {
        return Err("model: Field required".into());
    }
    if !body["max_tokens"].is_u64() {
        return Err("max_tokens: Field required".into());
    }
    let msgs = body["messages"]
        .as_array()
        .filter(|m| !m.is_empty())
        .ok_or("messages: at least one message is required")?;
    for (i, m) in msgs.iter().enumerate() {
        if !matches!(m["role"].as_str(), Some("user" | "assistant")) {
            return Err(format!(
                "messages.{i}.role: Input should be 'user' or 'assistant'"
            ));
        }
        match &m["content"] {
            Value::String(_) => {}
            Value::Array(blocks) => {
                for (j, b) in blocks.iter().enumerate() {
                    let ok = match b["type"].as_str() {
                        Some("text") => b["text"].as_str().is_some_and(|t| !t.is_empty()),
                        Some("image") => b["source"]["type"].is_string(),
                        Some("tool_use") => b["id"].is_string() && b["input"].is_object(),
                        Some("tool_result") => b["tool_use_id"].is_string(),
                        _ => false,
                    };
                    if !ok {
                        return Err(format!("messages.{i}.content.{j}: invalid content block"));
                    }
                }
            }
            _ => return Err(format!("messages.{i}.content: Field required")),
        }
    }
    if let Some(system) = body.get("system") {
        if !(system.is_string() || system.is_array()) {
            return Err("system: Input should be a string or a list of text blocks".into());
        }
    }
    Ok(())
}

/// The text of a turn's content: a string, or its text blocks (tool results' text too).
fn text_of(content: &Value) -> (String, bool) {
    match content {
        Value::String(s) => (s.clone(), false),
        Value::Array(blocks) => {
            let mut parts = Vec::new();
            let mut results = false;
            for b in blocks {
                match b["type"].as_str() {
                    Some("text") => parts.push(b["text"].as_str().unwrap_or_default().to_owned()),
                    Some("tool_result") => {
                        results = true;
                        parts.push(text_of(&b["content"]).0);
                    }
                    _ => {}
                }
            }
            (parts.join(" "), results)
        }
        _ => (String::new(), false),
    }
}

fn words(s: &str) -> u64 {
    s.split_whitespace().count() as u64
}

/// The Message the fake answers `body` with.
fn reply(body: &Value, cache_read: u64) -> Value {
    let msgs = body["messages"].as_array().cloned().unwrap_or_default();
    let last_user = msgs.iter().rev().find(|m| m["role"] == "user");
    let (text, results) = last_user.map_or((String::new(), false), |m| text_of(&m["content"]));
    let input_tokens = msgs
        .iter()
        .map(|m| words(&text_of(&m["content"]).0))
        .sum::<u64>()
        + body.get("system").map_or(0, |s| words(&text_of(s).0));
    let usage = |out: u64| {
        json!({"input_tokens": input_tokens.max(1), "output_tokens": out,
            "cache_creation_input_tokens": 0, "cache_read_input_tokens": cache_read})
    };
    let id = format!("msg_{}", uuid::Uuid::new_v4().simple());
    let message = |content: Value, stop: &str, stop_seq: Value, out: u64| {
        json!({"id": id, "type": "message", "role": "assistant", "model": body["model"],
            "content": content, "stop_reason": stop, "stop_sequence": stop_seq,
            "usage": usage(out)})
    };
    let tools = body["tools"].as_array().filter(|t| !t.is_empty());
    let choice = body["tool_choice"]["type"].as_str();
    if let (Some(tools), false, false) = (tools, results, choice == Some("none")) {
        let name = match choice {
            Some("tool") => body["tool_choice"]["name"].clone(),
            _ => tools[0]["name"].clone(),
        };
        let call = json!({"type": "tool_use", "id": format!("toolu_{}", &id[4..16]),
            "name": name, "input": {"query": text}});
        return message(json!([call]), "tool_use", Value::Null, 8);
    }
    let full = if results {
        format!("echo: result: {text}")
    } else {
        format!("echo: {text}")
    };
    let mut out: Vec<&str> = full.split_whitespace().collect();
    let mut stop = "end_turn";
    let mut stop_seq = Value::Null;
    let limit = body["max_tokens"].as_u64().unwrap_or(u64::MAX);
    if out.len() as u64 > limit {
        out.truncate(usize::try_from(limit).unwrap_or(usize::MAX));
        stop = "max_tokens";
    }
    let mut reply = out.join(" ");
    for s in body["stop_sequences"].as_array().into_iter().flatten() {
        if let Some(at) = s.as_str().and_then(|s| reply.find(s)) {
            reply.truncate(at);
            stop = "stop_sequence";
            stop_seq = s.clone();
        }
    }
    let n = words(&reply);
    message(json!([{"type": "text", "text": reply}]), stop, stop_seq, n)
}

fn sse(name: &str, data: &Value) -> Bytes {
    Bytes::from(format!("event: {name}\ndata: {data}\n\n"))
}

/// The event stream of a Message, a text block's words one delta each, a tool's input in two
/// JSON fragments.
fn stream_events(m: &Value) -> Vec<Bytes> {
    let mut start = m.clone();
    start["content"] = json!([]);
    start["stop_reason"] = Value::Null;
    start["stop_sequence"] = Value::Null;
    start["usage"]["output_tokens"] = json!(1);
    let mut events = vec![
        sse(
            "message_start",
            &json!({"type": "message_start", "message": start}),
        ),
        sse("ping", &json!({"type": "ping"})),
    ];
    for (i, block) in m["content"].as_array().into_iter().flatten().enumerate() {
        let delta = |d: Value| {
            sse(
                "content_block_delta",
                &json!({"type": "content_block_delta", "index": i, "delta": d}),
            )
        };
        if block["type"] == "tool_use" {
            let mut b = block.clone();
            b["input"] = json!({});
            events.push(sse(
                "content_block_start",
                &json!({"type": "content_block_start", "index": i, "content_block": b}),
            ));
            let input = block["input"].to_string();
            let (a, rest) = input.split_at(input.len() / 2);
            for part in [a, rest] {
                events.push(delta(
                    json!({"type": "input_json_delta", "partial_json": part}),
                ));
            }
        } else {
            events.push(sse(
                "content_block_start",
                &json!({"type": "content_block_start", "index": i,
                    "content_block": {"type": "text", "text": ""}}),
            ));
            let text = block["text"].as_str().unwrap_or_default();
            for (j, w) in text.split(' ').enumerate() {
                let piece = if j == 0 {
                    w.to_owned()
                } else {
                    format!(" {w}")
                };
                events.push(delta(json!({"type": "text_delta", "text": piece})));
            }
        }
        events.push(sse(
            "content_block_stop",
            &json!({"type": "content_block_stop", "index": i}),
        ));
    }
    events.push(sse(
        "message_delta",
        &json!({"type": "message_delta",
            "delta": {"stop_reason": m["stop_reason"], "stop_sequence": m["stop_sequence"]},
            "usage": {"output_tokens": m["usage"]["output_tokens"]}}),
    ));
    events.push(sse("message_stop", &json!({"type": "message_stop"})));
    events
}
