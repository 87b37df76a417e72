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
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::OwnedSemaphorePermit;

use super::attempt::{Answer, AnswerBody};
use super::ledger::Ledger;
use crate::error::error_json;
use crate::providers::{BodyStream, Usage};
use crate::routing::queue::Slot;
use crate::state::Upstream;

/// Longest partial SSE event held while waiting for its end.
const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

/// Header naming the upstream that answered.
pub const X_UPSTREAM: HeaderName = HeaderName::from_static("x-tollgate-upstream");
/// Header counting the attempts it took.
pub const X_ATTEMPTS: HeaderName = HeaderName::from_static("x-tollgate-attempts");

/// Start relaying `answer` to the client. `in_flight` is held until the body ends.
pub fn respond(
    answer: Answer,
    strip_usage: bool,
    in_flight: OwnedSemaphorePermit,
    mut ledger: Ledger,
) -> Response {
    let headers = client_headers(&answer.headers, &answer.upstream.name, ledger.attempts());
    ledger.status(answer.status.as_u16());
    ledger.first_byte();
    let body = match answer.body {
        AnswerBody::Full(bytes, usage) => {
            if let Some(u) = usage {
                ledger.usage(u);
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
                idle: answer.upstream.timeouts.idle.0,
                deadline: answer.deadline,
                sent_at: answer.sent_at,
                usage: None,
                content_events: 0,
                ended: false,
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

/// Whether a first stream chunk starts like server-sent events.
pub fn looks_like_sse(chunk: &[u8]) -> bool {
    let start = chunk.trim_ascii_start();
    [&b"data:"[..], b":", b"event:", b"id:", b"retry:"]
        .iter()
        .any(|p| start.starts_with(p))
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
    idle: Duration,
    deadline: Instant,
    sent_at: Instant,
    usage: Option<Usage>,
    /// Content events seen; estimates completion tokens when the upstream sends no usage.
    content_events: u64,
    ended: bool,
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
            let wait = self
                .idle
                .min(self.deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, self.upstream.next()).await {
                Err(_) if Instant::now() >= self.deadline => {
                    // Our own deadline, not the upstream's fault: no breaker failure.
                    return Some(self.end_with(
                        "deadline_exceeded",
                        "the request reached its deadline in the middle of the stream",
                        false,
                    ));
                }
                Err(_) => {
                    return Some(self.end_with_error(
                        "upstream_timeout",
                        "the upstream stopped sending in the middle of the stream",
                    ))
                }
                Ok(Some(Err(_))) => {
                    return Some(self.end_with_error(
                        "upstream_stream_broken",
                        "the upstream connection was lost in the middle of the stream",
                    ))
                }
                Ok(None) => {
                    if !self.buf.is_empty() {
                        // Ended in the middle of an event: the cut event is not passed on.
                        self.buf.clear();
                        return Some(self.end_with_error(
                            "upstream_invalid",
                            "the upstream stream ended in the middle of an event",
                        ));
                    }
                    self.finish();
                    return None;
                }
                Ok(Some(Ok(chunk))) => {
                    self.buf.extend_from_slice(&chunk);
                    if let Some(out) = self.take_events() {
                        return Some(out);
                    }
                    if self.buf.len() > MAX_EVENT_BYTES {
                        return Some(self.end_with_error(
                            "upstream_invalid",
                            "the upstream sent an over-long stream event",
                        ));
                    }
                }
            }
        }
    }

    /// Split off the complete events at the front of the buffer, noting usage and removing
    /// the usage-only chunk when the client did not ask for it.
    fn take_events(&mut self) -> Option<Bytes> {
        let mut cut: Option<(usize, usize)> = None;
        let mut events = Events::new(&self.buf);
        loop {
            let start = events.consumed();
            let Some(event) = events.next() else { break };
            let len = event.len();
            match inspect(event) {
                Seen::Content => self.content_events += 1,
                Seen::Usage { usage, usage_only } => {
                    self.usage = Some(usage);
                    if usage_only && self.strip_usage && cut.is_none() {
                        cut = Some((start, start + len));
                    }
                }
                Seen::Other => {}
            }
        }
        let pos = events.consumed();
        if pos == 0 {
            return None;
        }
        self.ledger.streamed(self.content_events);
        let mut out = self.buf.split_to(pos);
        if let Some((a, b)) = cut {
            let tail = out.split_off(b);
            out.truncate(a);
            out.unsplit(tail);
        }
        (!out.is_empty()).then(|| out.freeze())
    }

    fn finish(&mut self) {
        self.ended = true;
        self.ledger.upstream_time(self.sent_at.elapsed());
        match self.usage {
            Some(u) => self.ledger.usage(u),
            // No usage from the upstream: the chunks relayed stand for the completion, and the
            // ledger charges the estimated prompt.
            None => self.ledger.streamed(self.content_events),
        }
        self.ledger.finish();
    }

    /// The upstream broke the stream: an error event, and a failure for its breaker.
    fn end_with_error(&mut self, code: &'static str, message: &str) -> Bytes {
        self.end_with(code, message, true)
    }

    fn end_with(&mut self, code: &'static str, message: &str, upstream_fault: bool) -> Bytes {
        self.finish();
        self.ledger.broken(code);
        if upstream_fault {
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
        out.extend_from_slice(&error_json(message, "upstream_error", None, code));
        out.extend_from_slice(b"\n\n");
        out.freeze()
    }
}

/// The complete SSE events at the front of a buffer, in order, each through its blank line
/// (`\n\n` or `\n\r\n`); a partial event at the end is left for more bytes. The one SSE
/// splitter: the relay and the attempt step's first-event check both use it, and a property test
/// holds it to giving the same events however the stream is cut into chunks.
pub(crate) struct Events<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Events<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Events { buf, pos: 0 }
    }

    /// Bytes taken by the events returned so far.
    pub(crate) fn consumed(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Events<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.buf.get(self.pos..)?;
        let len = event_len(rest)?;
        let event = rest.get(..len)?;
        self.pos += len;
        Some(event)
    }
}

/// Length of the first complete SSE event (through its blank line), if there is one.
fn event_len(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1] == b'\n' {
                return Some(i + 2);
            }
            if buf[i + 1] == b'\r' && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

enum Seen {
    Content,
    Usage { usage: Usage, usage_only: bool },
    Other,
}

fn inspect(event: &[u8]) -> Seen {
    let data = event
        .split(|b| *b == b'\n')
        .find_map(|line| line.strip_prefix(b"data:"))
        .map(|d| d.trim_ascii());
    let Some(data) = data else { return Seen::Other };
    if data == b"[DONE]" {
        return Seen::Other;
    }
    if memfind(data, b"\"usage\"") {
        #[derive(serde::Deserialize)]
        struct Probe {
            usage: Option<Usage>,
            #[serde(default)]
            choices: Vec<serde::de::IgnoredAny>,
        }
        if let Ok(Probe {
            usage: Some(usage),
            choices,
        }) = serde_json::from_slice::<Probe>(data)
        {
            return Seen::Usage {
                usage,
                usage_only: choices.is_empty(),
            };
        }
    }
    Seen::Content
}

fn memfind(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_boundaries() {
        assert_eq!(event_len(b"data: a\n\ndata: b"), Some(9));
        assert_eq!(event_len(b"data: a\r\n\r\n"), Some(11));
        assert_eq!(event_len(b"data: a\n"), None);
    }

    mod split_property {
        //! Any cut of a valid event stream into chunks gives the same events, in order, with
        //! nothing left over, and the same usage. The test command runs proptest's default 256
        //! cases; a longer run: `PROPTEST_CASES=200000 cargo nextest run --lib split_property`.
        use super::super::*;
        use proptest::prelude::*;

        /// One event: field lines (data, comments, event names, ids) and one line ending for
        /// the whole event, then the blank line.
        fn event() -> impl Strategy<Value = Vec<u8>> {
            let line = prop_oneof![
                "[ -~&&[^\\r\\n]]{0,40}".prop_map(|t| format!("data: {t}")),
                Just(r#"data: {"choices":[{"delta":{"content":"hi"}}]}"#.to_owned()),
                Just(
                    r#"data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}"#
                        .to_owned()
                ),
                Just("data: [DONE]".to_owned()),
                "[ -~]{0,20}".prop_map(|t| format!(": {t}")),
                Just("event: message".to_owned()),
                (0u32..1000).prop_map(|n| format!("id: {n}")),
            ];
            (prop::collection::vec(line, 1..4), any::<bool>()).prop_map(|(lines, crlf)| {
                let eol = if crlf { "\r\n" } else { "\n" };
                let mut e = String::new();
                for l in lines {
                    e.push_str(&l);
                    e.push_str(eol);
                }
                e.push_str(eol);
                e.into_bytes()
            })
        }

        /// Feed `chunks` as the relay does: append, take the complete events at the front.
        fn split(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, usize) {
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for c in chunks {
                buf.extend_from_slice(c);
                let mut events = Events::new(&buf);
                out.extend(events.by_ref().map(<[u8]>::to_vec));
                let n = events.consumed();
                let _ = buf.split_to(n);
            }
            (out, buf.len())
        }

        fn usage(events: &[Vec<u8>]) -> Option<(u64, u64)> {
            events.iter().rev().find_map(|e| match inspect(e) {
                Seen::Usage { usage, .. } => Some((usage.prompt_tokens, usage.completion_tokens)),
                _ => None,
            })
        }

        proptest! {
            #[test]
            fn any_split_gives_the_same_events(
                events in prop::collection::vec(event(), 1..12),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
            ) {
                let stream: Vec<u8> = events.concat();
                let mut at: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
                at.sort_unstable();
                at.dedup();
                let mut chunks: Vec<&[u8]> = Vec::new();
                let mut from = 0;
                for &to in at.iter().chain(std::iter::once(&stream.len())) {
                    chunks.push(&stream[from..to]);
                    from = to;
                }
                let (got, left) = split(&chunks);
                prop_assert_eq!(left, 0);
                prop_assert_eq!(&got, &events);
                prop_assert_eq!(usage(&got), usage(&events));
                // The attempt step's first-event check sees the same first event on every
                // prefix that holds it whole, and nothing before that.
                let first = events[0].len();
                for &cut in &at {
                    let e = Events::new(&stream[..cut]).next();
                    prop_assert_eq!(e, (cut >= first).then(|| &stream[..first]));
                }
            }

            #[test]
            fn a_cut_event_is_never_passed_on(
                events in prop::collection::vec(event(), 1..6),
                drop_tail in 1usize..4,
            ) {
                let stream: Vec<u8> = events.concat();
                let cut = stream.len().saturating_sub(drop_tail);
                let (got, left) = split(&[&stream[..cut]]);
                prop_assert_eq!(&got[..], &events[..events.len() - 1]);
                prop_assert_eq!(left, cut - (stream.len() - events[events.len() - 1].len()));
            }
        }
    }

    #[test]
    fn usage_only_chunk_is_recognised() {
        let ev = br#"data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}"#;
        match inspect(ev) {
            Seen::Usage { usage, usage_only } => {
                assert_eq!(
                    (usage.prompt_tokens, usage.completion_tokens, usage_only),
                    (3, 5, true)
                )
            }
            _ => panic!("usage not seen"),
        }
        assert!(matches!(inspect(b"data: [DONE]"), Seen::Other));
    }
}
