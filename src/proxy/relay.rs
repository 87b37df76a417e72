//! The relay step: upstream body -> client, with usage captured on the way.
//!
//! Streams (SSE) are forwarded event by event as they arrive: complete events are passed on as
//! zero-copy slices of what was read, only a partial event at the end of a read waits for its
//! rest. The usage chunk is read for accounting and removed when the client did not ask for it.
//! An upstream that breaks or stalls mid-stream ends the client's stream with a well-formed SSE
//! error event. A client that goes away drops this stream, which drops the upstream body and so
//! cancels the upstream request. Non-stream answers are read whole (bounded) to read their usage.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderName, HeaderValue};
use tokio::sync::OwnedSemaphorePermit;

use super::ledger::Ledger;
use crate::config::Timeouts;
use crate::error::{error_json, ApiError};
use crate::providers::{parse_usage, BodyStream, UpstreamResponse, Usage};

/// Longest partial SSE event held while waiting for its end.
const MAX_EVENT_BYTES: usize = 4 * 1024 * 1024;

pub struct Context {
    pub stream: bool,
    pub strip_usage: bool,
    pub timeouts: Timeouts,
    pub max_response_bytes: usize,
    pub sent_at: Instant,
    pub upstream_name: Arc<str>,
    /// Held until the body ends: the global in-flight slot and the upstream's.
    pub permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

pub async fn respond(resp: UpstreamResponse, ctx: Context, mut ledger: Ledger) -> Response {
    let is_sse = resp
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let headers = client_headers(&resp.headers, &ctx.upstream_name, ledger.attempts());
    let status = resp.status;
    ledger.status(status.as_u16());
    if ctx.stream && is_sse {
        ledger.first_byte();
        let relay = SseRelay {
            upstream: resp.body,
            buf: BytesMut::new(),
            strip_usage: ctx.strip_usage,
            idle: ctx.timeouts.idle.0,
            deadline: ctx.sent_at + ctx.timeouts.total.0,
            sent_at: ctx.sent_at,
            usage: None,
            content_events: 0,
            ended: false,
            ledger,
            _permits: ctx.permits,
        };
        let body = futures_util::stream::unfold(relay, |mut r| async move {
            r.next_out()
                .await
                .map(|b| (Ok::<Bytes, std::convert::Infallible>(b), r))
        });
        let mut out = Response::new(Body::from_stream(body));
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        return out;
    }

    // Non-stream: read the whole (bounded) answer, then send it at once.
    let deadline = ctx.sent_at + ctx.timeouts.total.0;
    let mut body = resp.body;
    let mut buf = BytesMut::new();
    loop {
        let wait = ctx
            .timeouts
            .idle
            .0
            .min(deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, body.next()).await {
            Err(_) => return fail(&mut ledger, ApiError::UpstreamTimeout),
            Ok(Some(Err(_))) => return fail(&mut ledger, ApiError::UpstreamUnreachable),
            Ok(None) => break,
            Ok(Some(Ok(chunk))) => {
                if buf.len() + chunk.len() > ctx.max_response_bytes {
                    return fail(&mut ledger, ApiError::UpstreamInvalid);
                }
                ledger.first_byte();
                buf.extend_from_slice(&chunk);
            }
        }
    }
    ledger.upstream_time(ctx.sent_at.elapsed());
    let bytes = buf.freeze();
    if let Some(u) = parse_usage(&bytes) {
        ledger.usage(u);
    }
    ledger.finish();
    let mut out = Response::new(Body::from(bytes));
    *out.status_mut() = status;
    *out.headers_mut() = headers;
    drop(ctx.permits);
    out
}

fn fail(ledger: &mut Ledger, e: ApiError) -> Response {
    ledger.fail(&e);
    e.into_response()
}

/// Upstream response headers the client may see: hop-by-hop and length headers are dropped.
fn client_headers(upstream: &HeaderMap, name: &str, attempts: u32) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(upstream.len() + 2);
    for (k, v) in upstream {
        if !is_hop_by_hop(k) && k != http::header::CONTENT_LENGTH {
            out.append(k.clone(), v.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(name) {
        out.insert(HeaderName::from_static("x-tollgate-upstream"), v);
    }
    out.insert(
        HeaderName::from_static("x-tollgate-attempts"),
        HeaderValue::from(attempts),
    );
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
    upstream: BodyStream,
    /// Bytes read but not yet passed on: at most one partial event.
    buf: BytesMut,
    strip_usage: bool,
    idle: Duration,
    deadline: Instant,
    sent_at: Instant,
    usage: Option<Usage>,
    /// Content events seen; estimates completion tokens when the upstream sends no usage.
    content_events: u64,
    ended: bool,
    ledger: Ledger,
    _permits: (OwnedSemaphorePermit, OwnedSemaphorePermit),
}

impl SseRelay {
    /// The next bytes for the client, or None at the end.
    async fn next_out(&mut self) -> Option<Bytes> {
        loop {
            if self.ended {
                return None;
            }
            let wait = self
                .idle
                .min(self.deadline.saturating_duration_since(Instant::now()));
            match tokio::time::timeout(wait, self.upstream.next()).await {
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
                    self.finish();
                    // A last event without its blank line still goes out.
                    if !self.buf.is_empty() {
                        return Some(self.buf.split().freeze());
                    }
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
        let mut pos = 0;
        let mut cut: Option<(usize, usize)> = None;
        while let Some(len) = event_len(&self.buf[pos..]) {
            let event = &self.buf[pos..pos + len];
            match inspect(event) {
                Seen::Content => self.content_events += 1,
                Seen::Usage { usage, usage_only } => {
                    self.usage = Some(usage);
                    if usage_only && self.strip_usage && cut.is_none() {
                        cut = Some((pos, pos + len));
                    }
                }
                Seen::Other => {}
            }
            pos += len;
        }
        if pos == 0 {
            return None;
        }
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
        let usage = self.usage.unwrap_or(Usage {
            prompt_tokens: 0,
            completion_tokens: self.content_events,
        });
        self.ledger.usage(usage);
        self.ledger.finish();
    }

    fn end_with_error(&mut self, code: &'static str, message: &str) -> Bytes {
        self.finish();
        self.ledger.broken(code);
        let mut out = self.buf.split();
        // Close a half-written event before the error event.
        if !out.is_empty() {
            out.extend_from_slice(b"\n\n");
        }
        out.extend_from_slice(b"data: ");
        out.extend_from_slice(&error_json(message, "upstream_error", None, code));
        out.extend_from_slice(b"\n\n");
        out.freeze()
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
