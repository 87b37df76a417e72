//! The relay step: upstream body -> client, with usage captured on the way.
//!
//! Streams (SSE) are forwarded event by event as they arrive: complete events are passed on as
//! zero-copy slices of what was read, only a partial event at the end of a read waits for its
//! rest. The usage chunk is read for accounting and removed when the client did not ask for it.
//! An upstream that breaks or stalls mid-stream ends the client's stream with a well-formed SSE
//! error event. A client that goes away drops this stream, which drops the upstream body and so
//! cancels the upstream request. Non-stream answers arrive here whole (read by the attempt step).
//! Of the upstream's response headers only an allowlist reaches the client ([`CLIENT_HEADERS`]).

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use axum::body::Body;
use axum::response::Response;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use tokio::sync::OwnedSemaphorePermit;

use super::attempt::{Answer, AnswerBody};
use super::ledger::Ledger;
use super::sse::{finish_reason, inspect, model_span, Events, Seen};
use crate::cache::{Capture, Event, Fill};
use crate::error::error_json;
use crate::providers::reading::{Break, Health};
use crate::providers::{BodyError, BodyStream, Usage};
use crate::routing::queue::Slot;
use crate::state::Upstream;

/// Longest partial SSE event held while waiting for its end.
const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// Header naming the upstream that answered.
pub const X_UPSTREAM: HeaderName = HeaderName::from_static("x-tollgate-upstream");
/// Header counting the attempts it took.
pub const X_ATTEMPTS: HeaderName = HeaderName::from_static("x-tollgate-attempts");

/// Header naming the request fields dropped for the answering upstream (the team's
/// `untranslatable_fields: drop`).
pub const X_DROPPED: HeaderName = HeaderName::from_static("x-tollgate-dropped-params");

/// Start relaying `answer` to the client. `in_flight` is held until the body ends.
pub fn respond(
    mut answer: Answer,
    strip_usage: bool,
    in_flight: OwnedSemaphorePermit,
    mut ledger: Ledger,
    fill: Option<Fill>,
) -> Response {
    let mut headers = client_headers(&answer.headers, &answer.upstream.name, ledger.attempts());
    if let Some(dropped) = answer.dropped.take() {
        headers.insert(X_DROPPED, dropped);
    }
    // An answer from a fallback model's upstream is not the cached model's answer.
    let fill = fill.filter(|f| f.serves(&answer.upstream.name));
    // The trace records the upstream's answer as it came (its `gen_ai.response.model`).
    ledger.answer(&answer.body);
    answer.rename_whole();
    ledger.status(answer.status.as_u16());
    ledger.first_byte();
    let body = match answer.body {
        AnswerBody::Full(bytes, usage) => {
            if let Some(u) = usage {
                ledger.usage(u);
            }
            ledger.cost_headers(&mut headers);
            // Only a whole 200 is cached (errors never reach here as an answer).
            if let (Some(f), StatusCode::OK) = (fill, answer.status) {
                f.json(bytes.clone(), usage);
            }
            ledger.finish();
            drop(in_flight);
            Body::from(bytes)
        }
        AnswerBody::Stream { first, rest, slot } => {
            let mut buf = BytesMut::with_capacity(first.len());
            buf.extend_from_slice(&first);
            let relay = SseRelay {
                source: answer.upstream.clone(),
                upstream: rest,
                buf,
                pending: true,
                strip_usage,
                model: answer.model,
                idle: answer.upstream.timeouts.idle.0,
                deadline: answer.deadline,
                sent_at: answer.sent_at,
                usage: None,
                content_events: 0,
                ended: false,
                capture: fill
                    .filter(|_| answer.status == StatusCode::OK)
                    .and_then(Fill::capture),
                ledger,
                _held: (in_flight, slot),
            };
            pump(relay, answer.deadline)
        }
    };
    let mut out = Response::new(body);
    *out.status_mut() = answer.status;
    *out.headers_mut() = headers;
    out
}

/// Run the relay in its own task, handing chunks to the response body through a small channel.
///
/// The task, not the client's reading, drives the upstream: a client that goes away is noticed
/// at once (the channel closes), and a client that stops reading is cut off at the request's
/// deadline, so it cannot hold the upstream slot, the in-flight permit or its limits forever.
/// Dropping the relay releases all of them and accounts the request.
fn pump(mut relay: SseRelay, deadline: Instant) -> Body {
    let (tx, rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    tokio::spawn(async move {
        loop {
            let next = tokio::select! {
                () = tx.closed() => return,
                next = relay.next_out() => next,
            };
            let Some(bytes) = next else { return };
            match tokio::time::timeout_at(deadline, tx.send(bytes)).await {
                Ok(Ok(())) => {}
                _ => return,
            }
        }
    });
    let chunks = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv()
            .await
            .map(|b| (Ok::<Bytes, std::convert::Infallible>(b), rx))
    });
    Body::from_stream(chunks)
}

/// The only upstream response headers a client sees; Tollgate adds its own (`x-request-id`,
/// `x-tollgate-*`, its `x-ratelimit-*`) after these. An allowlist, not a denylist: an upstream's
/// `set-cookie`, `server`, `openai-organization`, its own `x-ratelimit-*` (its account, not the
/// caller's limits) or any header it invents tomorrow never reach the client. `content-length`
/// is set by the server for the body actually sent.
const CLIENT_HEADERS: [HeaderName; 2] = [
    http::header::CONTENT_TYPE,
    HeaderName::from_static("openai-processing-ms"),
];

/// Upstream response headers the client may see ([`CLIENT_HEADERS`]), plus the upstream's name
/// and the attempt count.
fn client_headers(upstream: &HeaderMap, name: &str, attempts: u32) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(CLIENT_HEADERS.len() + 2);
    for k in &CLIENT_HEADERS {
        if let Some(v) = upstream.get(k) {
            out.insert(k.clone(), v.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(name) {
        out.insert(X_UPSTREAM, v);
    }
    out.insert(X_ATTEMPTS, HeaderValue::from(attempts));
    out
}

pub fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "proxy-connection"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

struct SseRelay {
    /// The upstream serving this stream: a break mid-stream counts against its breaker.
    source: Arc<Upstream>,
    upstream: BodyStream,
    /// Bytes read but not yet passed on: at most one partial event.
    buf: BytesMut,
    /// `buf` holds the first chunk, not yet looked at.
    pending: bool,
    strip_usage: bool,
    /// The name each chunk's `model` is set to (JSON-escaped); `None` leaves the upstream's.
    model: Option<Bytes>,
    idle: Duration,
    deadline: Instant,
    sent_at: Instant,
    usage: Option<Usage>,
    /// Content events seen; estimates completion tokens when the upstream sends no usage.
    content_events: u64,
    ended: bool,
    /// The stream as it is captured for the response cache (a miss of a cached model).
    capture: Option<Capture>,
    ledger: Ledger,
    /// Held until the stream ends: the global in-flight slot and the upstream's.
    _held: (OwnedSemaphorePermit, Slot),
}

impl SseRelay {
    /// The next bytes for the client, or None at the end.
    async fn next_out(&mut self) -> Option<Bytes> {
        loop {
            if self.ended {
                return None;
            }
            if self.pending {
                self.pending = false;
                if let Some(out) = self.take_events() {
                    return Some(out);
                }
                continue;
            }
            // The deadline holds even while the upstream always has bytes ready (a timeout
            // only fires on a wait): a stream is cut at its deadline however fast it flows.
            let now = Instant::now();
            if now >= self.deadline {
                return Some(self.end(Break::Deadline));
            }
            let wait = self.idle.min(self.deadline - now);
            match tokio::time::timeout(wait, self.upstream.next()).await {
                // Our own deadline, not the upstream's fault.
                Err(_) if Instant::now() >= self.deadline => {
                    return Some(self.end(Break::Deadline))
                }
                Err(_) => return Some(self.end(Break::Stalled)),
                Ok(Some(Err(BodyError::Reported(error)))) => {
                    return Some(self.end_with(Break::Reported, &error))
                }
                // A reset, or what a translating provider saw end its stream early (a cut, an
                // over-long event).
                Ok(Some(Err(e))) => return Some(self.end(Break::from(e))),
                // Ended in the middle of an event: the cut event is not passed on.
                Ok(None) if !self.buf.is_empty() => return Some(self.end(Break::Cut)),
                Ok(None) => {
                    self.finish();
                    return None;
                }
                Ok(Some(Ok(chunk))) => {
                    self.buf.extend_from_slice(&chunk);
                    if let Some(out) = self.take_events() {
                        return Some(out);
                    }
                    if self.buf.len() > MAX_EVENT_BYTES {
                        return Some(self.end(Break::Overlong));
                    }
                }
            }
        }
    }

    /// Split off the complete events at the front of the buffer, noting usage, removing the
    /// usage-only chunk when the client did not ask for it and putting the client-facing name in
    /// each chunk's `model` where the upstream wrote another. Events left as they are go out as
    /// zero-copy slices of what was read; only a read with an event to change is copied.
    fn take_events(&mut self) -> Option<Bytes> {
        // Copied output, once an event had to change: it holds everything before `copied`.
        let mut edited: Option<BytesMut> = None;
        let mut copied = 0;
        let mut usage_cut = false;
        let mut events = Events::new(&self.buf);
        loop {
            let start = events.consumed();
            let Some(event) = events.next() else { break };
            let end = start + event.len();
            let seen = inspect(event);
            let strip = matches!(
                seen,
                Seen::Usage {
                    usage_only: true,
                    ..
                }
            ) && self.strip_usage
                && !usage_cut;
            let rename = self.model.as_deref().and_then(|name| {
                let at = model_span(event)?;
                (event.get(at.clone())? != name).then_some((at, name))
            });
            // What the client (and the cache) gets of this event: as read, renamed, or nothing.
            let mut out_event: &[u8] = event;
            if strip || rename.is_some() {
                let out =
                    edited.get_or_insert_with(|| BytesMut::with_capacity(self.buf.len() + 64));
                out.extend_from_slice(&self.buf[copied..start]);
                copied = end;
                if let Some((at, name)) = rename.filter(|_| !strip) {
                    let from = out.len();
                    crate::openai::model::splice_into(out, event, at, name);
                    out_event = &out[from..];
                }
            }
            if let Some(c) = &mut self.capture {
                c.event(out_event, cache_event(out_event, &seen));
                if !c.active() {
                    // Past max_entry_bytes: nothing more to look at for the cache.
                    self.capture = None;
                }
            }
            match seen {
                Seen::Content => {
                    if self.content_events == 0 {
                        self.ledger.first_token();
                    }
                    self.content_events += 1;
                }
                Seen::Usage { usage, .. } => {
                    self.usage = Some(usage);
                    usage_cut |= strip;
                }
                Seen::Other | Seen::Done => {}
            }
        }
        let pos = events.consumed();
        if pos == 0 {
            return None;
        }
        self.ledger.streamed(self.content_events);
        let read = self.buf.split_to(pos);
        let out = match edited {
            None => read,
            Some(mut out) => {
                out.extend_from_slice(&read[copied..]);
                out
            }
        };
        (!out.is_empty()).then(|| out.freeze())
    }

    fn finish(&mut self) {
        self.ended = true;
        // Written only when complete; a broken stream dropped its capture first.
        if let Some(mut c) = self.capture.take() {
            c.complete(self.usage);
        }
        self.ledger.upstream_time(self.sent_at.elapsed());
        match self.usage {
            Some(u) => self.ledger.usage(u),
            // No usage from the upstream: the chunks relayed stand for the completion, and the
            // ledger charges the estimated prompt.
            None => self.ledger.streamed(self.content_events),
        }
        self.ledger.finish();
    }

    /// The stream broke: an error event for the client, and what the break says of the
    /// upstream's health for its breaker.
    fn end(&mut self, why: Break) -> Bytes {
        let (code, message, _) = why.read();
        self.end_with(why, &error_json(message, "upstream_error", None, code))
    }

    /// [`SseRelay::end`] with `error` (an OpenAI-shaped error body) as the closing event.
    fn end_with(&mut self, why: Break, error: &[u8]) -> Bytes {
        let (code, _, health) = why.read();
        self.capture = None;
        self.finish();
        self.ledger.broken(code);
        if health == Health::Down {
            let state = self
                .source
                .breaker
                .record(Instant::now(), false, None, false);
            self.source.meters.breaker_state(state.gauge());
        }
        // A half-written event is never passed on: the client gets the whole events it already
        // has, then the error event.
        self.buf.clear();
        let mut out = bytes::BytesMut::with_capacity(256);
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(error);
        out.extend_from_slice(b"\n\n");
        out.freeze()
    }
}

/// How the cache's capture reads an event the relay already inspected.
fn cache_event(event: &[u8], seen: &Seen) -> Event {
    match seen {
        Seen::Done => Event::Done,
        Seen::Usage {
            usage_only: true, ..
        } => Event::UsageOnly,
        Seen::Content | Seen::Usage { .. } => Event::Content {
            finish: finish_reason(event),
        },
        Seen::Other => Event::Content { finish: false },
    }
}
