//! Test kit: in-process mock servers for integration tests and benchmarks.
//!
//! Owns the shared plumbing of the kit (server handles, the auth-check type,
//! notify-based waits, form/query parsing, Basic-auth decoding, OpenAI-shaped
//! error bodies) and the deterministic OpenAI payloads the mock upstream
//! answers chat/completions with ([`reply_text`], completion and SSE builders).
//! It re-exports the mocks:
//! - [`MockUpstream`]: an OpenAI-compatible upstream with fault knobs and
//!   request records ([`upstream`]), over plain HTTP or TLS.
//! - [`MockAnthropic`]: Anthropic's Messages API as documented, with its error types and
//!   stream events, and fault knobs ([`anthropic`]).
//! - [`ConnectProxy`]: an HTTP CONNECT proxy that counts the tunnels and bytes it
//!   passed and can refuse (407, 403) ([`connect_proxy`]).
//! - [`MockErnie`]: Baidu's ERNIE chat API (wenxinworkshop v1), errors in HTTP 200 bodies and
//!   stream events included, its `access_token` checked against a [`MockOAuth`] ([`ernie`]).
//! - [`MockOAuth`]: an OAuth2 token server (standard and Baidu style) with
//!   expiry, revocation and failure knobs ([`oauth`]).
//! - [`MockCollector`]: an OTLP trace collector over HTTP/protobuf and gRPC that keeps the
//!   spans it receives and can refuse or hang ([`otlp`]).
//!
//! Both listen on an ephemeral loopback port (`127.0.0.1:0`) and stop when the
//! last handle is dropped or `shutdown()` is called.

pub mod anthropic;
pub mod azure;
pub mod connect_proxy;
pub mod ernie;
pub mod oauth;
pub mod otlp;
pub mod upstream;

pub use anthropic::{AnthropicFault, AnthropicReceived, MockAnthropic};
pub use azure::AzureFake;
pub use connect_proxy::ConnectProxy;
pub use ernie::{ErnieFault, MockErnie};
pub use oauth::{MockOAuth, TokenRequest, TokenState};
pub use otlp::{CollectorMode, MockCollector, ReceivedSpan};
pub use upstream::{Fault, MockUpstream, Received};

use std::collections::VecDeque;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::body::{Body, Bytes};
use axum::response::Response;
use axum::serve::ListenerExt;
use axum::Router;
use futures_util::Stream;
use http::{header, HeaderMap, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::sync::Notify;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// A request check: given the request headers and the raw query string (if
/// any), decide whether the request is authorized.
pub type AuthCheck = Arc<dyn Fn(&HeaderMap, Option<&str>) -> bool + Send + Sync>;

/// A running axum server on a loopback port; cancels it when dropped.
pub(crate) struct ServerHandle {
    addr: SocketAddr,
    cancel: CancellationToken,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl ServerHandle {
    /// Binds `127.0.0.1:0` and serves `router` until the returned handle is
    /// dropped or shut down. `cancel` is also handed to the router's state so
    /// long waits inside handlers can end at shutdown.
    pub(crate) async fn spawn(router: Router, cancel: CancellationToken) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let listener = listener.tap_io(|tcp| {
            // Small SSE chunks must leave at once; failure here is harmless.
            let _ = tcp.set_nodelay(true);
        });
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, router)
                .with_graceful_shutdown(stop.cancelled_owned())
                .await;
        });
        Ok(Self {
            addr,
            cancel,
            task: Mutex::new(Some(task)),
        })
    }

    /// Like [`ServerHandle::spawn`], over TLS with `tls` (HTTP/1.1 and HTTP/2 by the ALPN the
    /// config offers). A failed handshake closes that connection only; shutdown drops the open
    /// connections.
    pub(crate) async fn spawn_tls(
        router: Router,
        cancel: CancellationToken,
        tls: Arc<rustls::ServerConfig>,
    ) -> std::io::Result<Self> {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let acceptor = tokio_rustls::TlsAcceptor::from(tls);
        let stop = cancel.clone();
        let task = tokio::spawn(async move {
            loop {
                let tcp = tokio::select! {
                    _ = stop.cancelled() => break,
                    r = listener.accept() => match r {
                        Ok((tcp, _)) => tcp,
                        Err(_) => continue,
                    },
                };
                let _ = tcp.set_nodelay(true);
                let (acceptor, router, stop) = (acceptor.clone(), router.clone(), stop.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else {
                        return;
                    };
                    let service = hyper_util::service::TowerToHyperService::new(router);
                    let builder = hyper_util::server::conn::auto::Builder::new(
                        hyper_util::rt::TokioExecutor::new(),
                    );
                    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(tls), service);
                    tokio::select! {
                        _ = conn => {}
                        _ = stop.cancelled() => {}
                    }
                });
            }
        });
        Ok(Self {
            addr,
            cancel,
            task: Mutex::new(Some(task)),
        })
    }

    pub(crate) fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops accepting, ends pending waits, and waits (bounded) for the server
    /// task; aborts it if connections linger.
    pub(crate) async fn shutdown(&self) {
        self.cancel.cancel();
        let task = self.task.lock().map(|mut t| t.take()).unwrap_or(None);
        if let Some(mut task) = task {
            if tokio::time::timeout(Duration::from_secs(2), &mut task)
                .await
                .is_err()
            {
                task.abort();
            }
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        // Graceful shutdown finishes on its own: every wait in the handlers
        // also ends on this token.
        self.cancel.cancel();
    }
}

/// Locks a std mutex, ignoring poisoning (records stay usable after a panic).
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Waits until `cond()` holds, re-checking each time `notify` fires
/// (`notify_waiters`); false if `timeout` passes first. No polling.
pub(crate) async fn wait_for(notify: &Notify, timeout: Duration, cond: impl Fn() -> bool) -> bool {
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let notified = notify.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        if cond() {
            return true;
        }
        if tokio::time::timeout_at(deadline, notified).await.is_err() {
            return cond();
        }
    }
}

/// Sleeps `d`; false if `cancel` (server shutdown) fires first.
pub(crate) async fn sleep_or_cancel(d: Duration, cancel: &CancellationToken) -> bool {
    if d.is_zero() {
        return true;
    }
    tokio::select! {
        _ = tokio::time::sleep(d) => true,
        _ = cancel.cancelled() => false,
    }
}

/// Percent-decodes one `application/x-www-form-urlencoded` component (`+` is a
/// space). Invalid escapes are kept literally; invalid UTF-8 is replaced.
pub fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hi = hex_val(bytes[i + 1]);
                let lo = hex_val(bytes[i + 2]);
                match (hi, lo) {
                    (Some(h), Some(l)) => {
                        out.push(h * 16 + l);
                        i += 2;
                    }
                    _ => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Parses `a=1&b=two` (a query string or form body) into decoded pairs, in order.
pub fn parse_form(s: &str) -> Vec<(String, String)> {
    s.split('&')
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (form_decode(k), form_decode(v)),
            None => (form_decode(p), String::new()),
        })
        .collect()
}

/// First value of `key` in a query string / form body.
pub fn form_get(s: &str, key: &str) -> Option<String> {
    parse_form(s)
        .into_iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v)
}

/// The bearer token of an `Authorization: Bearer …` header, if any.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    let v = headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, rest) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| rest.trim())
        .filter(|t| !t.is_empty())
}

/// Decodes an `Authorization: Basic …` header into (user, password); each part
/// is also form-decoded, as RFC 6749 §2.3.1 asks of OAuth clients.
pub fn basic_auth(headers: &HeaderMap) -> Option<(String, String)> {
    let v = headers
        .get(http::header::AUTHORIZATION)?
        .to_str()
        .ok()?
        .trim();
    let (scheme, rest) = v.split_once(' ')?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return None;
    }
    let raw = base64_decode(rest.trim())?;
    let text = String::from_utf8(raw).ok()?;
    let (user, pass) = text.split_once(':')?;
    Some((form_decode(user), form_decode(pass)))
}

/// Standard (or URL-safe) base64 decoding, padding optional. `None` on bad input.
pub fn base64_decode(s: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(s.len() * 3 / 4);
    let (mut acc, mut bits) = (0u32, 0u32);
    for c in s.bytes().filter(|&c| c != b'=') {
        let v = match c {
            b'A'..=b'Z' => c - b'A',
            b'a'..=b'z' => c - b'a' + 26,
            b'0'..=b'9' => c - b'0' + 52,
            b'+' | b'-' => 62,
            b'/' | b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push(((acc >> bits) & 0xff) as u8);
        }
    }
    Some(out)
}

/// An OpenAI-shaped error body: `{"error":{"message","type","param","code"}}`.
pub fn openai_error(message: &str, kind: &str, code: Option<&str>) -> serde_json::Value {
    serde_json::json!({
        "error": {
            "message": message,
            "type": kind,
            "param": null,
            "code": code,
        }
    })
}

// ---- response bodies that report how they ended ----

/// Response lifecycle counters shared by a mock and its bodies; `changed`
/// fires on every change so tests can await them.
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) requests: AtomicUsize,
    pub(crate) completed: AtomicUsize,
    pub(crate) cancelled: AtomicUsize,
    pub(crate) aborted: AtomicUsize,
    pub(crate) in_flight: AtomicUsize,
    /// The most requests ever in flight at once.
    pub(crate) peak_in_flight: AtomicUsize,
    pub(crate) changed: Notify,
}

impl Counters {
    pub(crate) fn get(counter: &AtomicUsize) -> usize {
        counter.load(Ordering::SeqCst)
    }
}

pub(crate) enum Outcome {
    Completed,
    Cancelled,
    Aborted,
}

/// Counts a request in flight until its response body finishes; if dropped
/// unfinished, the client went away.
pub(crate) struct FlightGuard {
    shared: Arc<Counters>,
    done: bool,
}

impl FlightGuard {
    pub(crate) fn new(shared: Arc<Counters>) -> Self {
        let now = shared.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        shared.peak_in_flight.fetch_max(now, Ordering::SeqCst);
        FlightGuard {
            shared,
            done: false,
        }
    }

    pub(crate) fn finish(&mut self, outcome: Outcome) {
        if self.done {
            return;
        }
        self.done = true;
        let counter = match outcome {
            Outcome::Completed => &self.shared.completed,
            Outcome::Cancelled => &self.shared.cancelled,
            Outcome::Aborted => &self.shared.aborted,
        };
        counter.fetch_add(1, Ordering::SeqCst);
        self.shared.in_flight.fetch_sub(1, Ordering::SeqCst);
        self.shared.changed.notify_waiters();
    }
}

impl Drop for FlightGuard {
    fn drop(&mut self) {
        self.finish(Outcome::Cancelled);
    }
}

pub(crate) type ChunkResult = Result<Bytes, io::Error>;

/// A body stream that reports how it ended to its guard.
struct Tracked<S> {
    inner: Pin<Box<S>>,
    guard: FlightGuard,
}

impl<S: Stream<Item = ChunkResult>> Stream for Tracked<S> {
    type Item = ChunkResult;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<ChunkResult>> {
        let this = self.get_mut();
        let polled = this.inner.as_mut().poll_next(cx);
        match &polled {
            Poll::Ready(None) => this.guard.finish(Outcome::Completed),
            Poll::Ready(Some(Err(_))) => this.guard.finish(Outcome::Aborted),
            _ => {}
        }
        polled
    }
}

/// What an [`event_stream`] does after its events run out: end cleanly, fail
/// (hyper then drops the connection abruptly), or stall until shutdown.
#[derive(Clone, Copy)]
pub(crate) enum Tail {
    End,
    Error,
    Stall,
}

/// A body stream of `events`, `delay` apart (none before the first), then `tail`.
pub(crate) fn event_stream(
    events: Vec<Bytes>,
    delay: Duration,
    tail: Tail,
    cancel: CancellationToken,
) -> impl Stream<Item = ChunkResult> + Send {
    let state = (VecDeque::from(events), true, Some(tail));
    futures_util::stream::unfold(state, move |(mut queue, first, tail)| {
        let cancel = cancel.clone();
        async move {
            let tail = tail?;
            if let Some(ev) = queue.pop_front() {
                if !first && !delay.is_zero() && !sleep_or_cancel(delay, &cancel).await {
                    return Some((Err(reset("mock shut down")), (queue, false, None)));
                }
                return Some((Ok(ev), (queue, false, Some(tail))));
            }
            match tail {
                Tail::End => None,
                Tail::Error => {
                    // Let hyper flush what was sent so far before the abort,
                    // so the client sees headers and a partial body.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    Some((Err(reset("mock reset mid-body")), (queue, false, None)))
                }
                Tail::Stall => {
                    cancel.cancelled().await;
                    Some((Err(reset("mock shut down")), (queue, false, None)))
                }
            }
        }
    })
}

fn reset(msg: &str) -> io::Error {
    io::Error::new(io::ErrorKind::ConnectionReset, msg.to_owned())
}

pub(crate) fn streamed(
    status: StatusCode,
    content_type: &'static str,
    stream: impl Stream<Item = ChunkResult> + Send + 'static,
    guard: FlightGuard,
) -> Response {
    let body = Body::from_stream(Tracked {
        inner: Box::pin(stream),
        guard,
    });
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

pub(crate) fn full(
    status: StatusCode,
    content_type: &'static str,
    bytes: Bytes,
    mut guard: FlightGuard,
) -> Response {
    let len = bytes.len();
    let body = if bytes.is_empty() {
        guard.finish(Outcome::Completed);
        Body::empty()
    } else {
        Body::new(http_body_util::Full::new(bytes).map_frame(move |frame| {
            guard.finish(Outcome::Completed);
            frame
        }))
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    resp
}

pub(crate) fn json_resp(status: StatusCode, v: &Value, guard: FlightGuard) -> Response {
    let bytes = Bytes::from(v.to_string());
    full(status, "application/json", bytes, guard)
}

// ---- deterministic OpenAI payloads (answered by the mock upstream) ----

/// A mock upstream's normal answer before any body fault is applied.
pub(crate) enum Planned {
    Json(StatusCode, Value),
    Sse(Vec<Bytes>),
}

/// The text of a message `content`: a string, or the text parts of an array (the built-in
/// mock provider reads requests the same way).
use crate::providers::mock::content_text;

pub(crate) fn words(s: &str) -> usize {
    s.split_whitespace().count()
}

/// The deterministic reply to a chat/completions request: `"echo: "` + the
/// last user message's text (or the `prompt`), whitespace-normalized to single
/// spaces, cut to `max_tokens` (or `max_completion_tokens`) words if given.
pub fn reply_text(body: &Value) -> String {
    let source = body
        .as_object()
        .map(crate::providers::mock::request_text)
        .unwrap_or_default();
    let full = format!("echo: {source}");
    let limit = body
        .get("max_tokens")
        .or_else(|| body.get("max_completion_tokens"))
        .and_then(Value::as_u64)
        .map(|n| usize::try_from(n).unwrap_or(usize::MAX))
        .unwrap_or(usize::MAX);
    full.split_whitespace()
        .take(limit)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Words across all message contents (or the prompt); at least 1.
fn prompt_tokens(body: &Value) -> usize {
    let n = match body.get("messages").and_then(Value::as_array) {
        Some(msgs) => msgs
            .iter()
            .map(|m| words(&content_text(m.get("content"))))
            .sum(),
        None => words(&content_text(body.get("prompt"))),
    };
    n.max(1)
}

pub(crate) fn usage(body: &Value, text: &str) -> Value {
    let (p, c) = (prompt_tokens(body), words(text));
    json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c})
}

pub(crate) fn model_of(body: &Value) -> Value {
    body.get("model")
        .cloned()
        .unwrap_or_else(|| Value::from("mock-model"))
}

pub(crate) fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

pub(crate) fn completion(body: &Value, chat: bool) -> Value {
    let text = reply_text(body);
    let choice = if chat {
        json!({"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"})
    } else {
        json!({"index": 0, "text": text, "logprobs": null, "finish_reason": "stop"})
    };
    let (prefix, object) = if chat {
        ("chatcmpl", "chat.completion")
    } else {
        ("cmpl", "text_completion")
    };
    json!({
        "id": format!("{prefix}-{}", uuid::Uuid::new_v4().simple()),
        "object": object,
        "created": now_secs(),
        "model": model_of(body),
        "choices": [choice],
        "usage": usage(body, &text),
    })
}

/// Splits `text` (single-space separated) into `n` pieces whose concatenation
/// is `text`; default one piece per word. Never empty.
fn split_chunks(text: &str, chunks: Option<usize>) -> Vec<String> {
    let w: Vec<&str> = text.split(' ').filter(|w| !w.is_empty()).collect();
    if w.is_empty() {
        return vec![String::new()];
    }
    let n = chunks.unwrap_or(w.len()).clamp(1, w.len());
    (0..n)
        .map(|i| {
            let (a, b) = (i * w.len() / n, (i + 1) * w.len() / n);
            let piece = w[a..b].join(" ");
            if a > 0 {
                format!(" {piece}")
            } else {
                piece
            }
        })
        .collect()
}

pub(crate) fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

pub(crate) fn stream_events(body: &Value, chat: bool, chunks: Option<usize>) -> Vec<Bytes> {
    let text = reply_text(body);
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let (created, model) = (now_secs(), model_of(body));
    let object = if chat {
        "chat.completion.chunk"
    } else {
        "text_completion"
    };
    let chunk = |choices: Value| json!({"id": id, "object": object, "created": created, "model": model, "choices": choices});
    let mut events = Vec::new();
    for (i, piece) in split_chunks(&text, chunks).into_iter().enumerate() {
        let choice = match (chat, i) {
            (true, 0) => {
                json!({"index": 0, "delta": {"role": "assistant", "content": piece}, "finish_reason": null})
            }
            (true, _) => json!({"index": 0, "delta": {"content": piece}, "finish_reason": null}),
            (false, _) => {
                json!({"index": 0, "text": piece, "logprobs": null, "finish_reason": null})
            }
        };
        events.push(sse(&chunk(json!([choice]))));
    }
    let last = if chat {
        json!({"index": 0, "delta": {}, "finish_reason": "stop"})
    } else {
        json!({"index": 0, "text": "", "logprobs": null, "finish_reason": "stop"})
    };
    events.push(sse(&chunk(json!([last]))));
    let include_usage = body
        .pointer("/stream_options/include_usage")
        .and_then(Value::as_bool)
        == Some(true);
    if include_usage {
        let mut u = chunk(json!([]));
        u["usage"] = usage(body, &text);
        events.push(sse(&u));
    }
    events.push(Bytes::from_static(b"data: [DONE]\n\n"));
    events
}
