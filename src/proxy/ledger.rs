//! The account step as a guard: a [`Ledger`] collects what happened to one request and writes
//! the request log line and metrics exactly once, when it is dropped.
//!
//! Dropping on every path (answered, failed, client gone mid-stream, handler cancelled) is what
//! makes accounting impossible to skip. It owns no I/O of its own beyond
//! [`crate::telemetry::account`] and handing a usage row to the store's writer
//! ([`crate::store::UsageSink::record`], a non-blocking queue send). Rows are written for
//! requests whose caller was identified; a request refused before that (no or a wrong key, the
//! gateway overloaded) has its log line and metrics only.
//!
//! With traces on (`telemetry.traces`), the ledger also carries the request's
//! [`RequestTrace`]: each step it records becomes an event or attribute of the request span, each
//! upstream attempt a child span, and the request span ends when the ledger drops. Off, the
//! trace is `None` and each step pays one branch.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use crate::auth::Caller;
use crate::error::ApiError;
use crate::limits::{Admission, RateHeaders};
use crate::policy::Shaped;
use crate::providers::Usage;
use crate::store::{now_ms, UsageRow, UsageSink};
use crate::telemetry::meters::ModelMeters;
use crate::telemetry::trace::{RequestTrace, Tracing};
use crate::telemetry::{self, InFlightGuard, Meters, RequestRecord};

/// Owned by the request's handler, lent to each step, and moved into the relay once an answer
/// is relayed: one ledger per request, accounted once.
pub struct Ledger {
    rec: RequestRecord,
    started: Instant,
    /// The answer reached its end (or failed with a known error); otherwise the client left.
    finished: bool,
    /// The upstream reported real usage; otherwise the prompt is charged at its estimate.
    usage_reported: bool,
    /// The request went to an upstream (see [`Ledger::sent`]).
    sent: bool,
    _in_flight: InFlightGuard,
    /// The limiter's admission, settled with the real usage when the ledger drops.
    admission: Option<Admission>,
    /// Where the usage row goes; `None` without a store.
    usage: Option<UsageSink>,
    /// The request's spans; `None` with traces off. Boxed: off, the ledger (moved from step to
    /// relay) grows by one pointer, not by the 152 bytes of the trace.
    trace: Option<Box<RequestTrace>>,
    /// The batch this request is a line of (set for in-process batch lines only).
    batch_id: Option<Arc<str>>,
}

impl Ledger {
    pub fn start(request_id: Arc<str>, endpoint: &'static str, usage: Option<UsageSink>) -> Ledger {
        Ledger {
            rec: RequestRecord {
                request_id,
                endpoint,
                ..RequestRecord::default()
            },
            started: Instant::now(),
            finished: false,
            usage_reported: false,
            sent: false,
            _in_flight: InFlightGuard::new(),
            admission: None,
            usage,
            trace: None,
            batch_id: None,
        }
    }

    /// Traces are on: the request span starts, a child of the client's `traceparent`.
    pub fn traced(&mut self, tracing: Option<&Tracing>, headers: &http::HeaderMap) {
        if let Some(t) = tracing {
            let trace = t.request(self.rec.endpoint, headers, &self.rec.request_id);
            self.trace = Some(Box::new(trace));
        }
    }
    /// The `traceparent` sent upstream: the running attempt's span.
    pub fn traceparent(&self) -> Option<http::HeaderValue> {
        self.trace.as_deref().and_then(RequestTrace::traceparent)
    }
    /// With `capture_prompts` only: the prompt goes on the request span.
    pub fn prompt(&mut self, json: &crate::openai::Body) {
        if let Some(t) = &mut self.trace {
            t.prompt(
                ["messages", "prompt", "input"]
                    .iter()
                    .find_map(|k| json.raw(k)),
            );
        }
    }
    /// The attempt waited this long for a slot at its upstream.
    pub fn queued(&mut self, waited: Duration) {
        if let Some(t) = &mut self.trace {
            t.queued(waited);
        }
    }
    /// The answer about to be relayed: the trace reads the model it names.
    pub fn answer(&mut self, body: &super::attempt::AnswerBody) {
        if let Some(t) = &mut self.trace {
            match body {
                super::attempt::AnswerBody::Full(b, _) => t.answer(b, false),
                super::attempt::AnswerBody::Stream { first, .. } => t.answer(first, true),
            }
        }
    }
    /// The upstream answered this attempt's request with `status`.
    pub fn upstream_status(&mut self, status: u16) {
        if let Some(t) = &mut self.trace {
            t.upstream_status(status);
        }
    }

    /// Who asked for what: client address, method, URI and user agent, for the log line.
    pub fn request(&mut self, parts: &http::request::Parts) {
        self.rec.client_addr = parts
            .extensions
            .get::<crate::server::conn::ClientAddr>()
            .map(|a| a.0);
        self.rec.method = Some(parts.method.clone());
        self.rec.uri = Some(parts.uri.clone());
        self.rec.user_agent = parts.headers.get(http::header::USER_AGENT).cloned();
    }

    pub fn request_id(&self) -> &str {
        &self.rec.request_id
    }
    /// The metric handles of the snapshot serving this request.
    pub fn meters(&mut self, m: &Arc<Meters>) {
        self.rec.meters = Some(m.clone());
    }
    pub fn caller(&mut self, c: &Caller) {
        self.rec.team = Some(c.team.clone());
        self.rec.key_id = Some(c.key_id.clone());
        self.rec.team_meters = self.rec.meters.as_ref().map(|m| m.team(&c.team));
        if let Some(t) = &mut self.trace {
            t.auth(&c.team, &c.key_id);
        }
    }
    /// The request is a line of batch `id`: its usage row says so.
    pub fn batch(&mut self, id: Arc<str>) {
        self.batch_id = Some(id);
    }
    pub fn shaped(&mut self, s: &Shaped) {
        self.rec.model = Some(s.model.clone());
        self.rec.stream = s.stream;
        if let Some(t) = &mut self.trace {
            t.shaped(&s.model, s.stream);
        }
    }
    /// The shaped model is one of the config's models (a metric label from now on).
    pub fn model_known(&mut self, meters: &Arc<ModelMeters>) {
        self.rec.model_meters = Some(meters.clone());
    }
    /// The request passed the limiter; its reservation is settled when this ledger drops.
    pub fn admitted(&mut self, a: Admission) {
        self.admission = Some(a);
        if let Some(t) = &mut self.trace {
            t.admitted();
        }
    }
    /// The `x-ratelimit-*` values of the admission, if any.
    pub fn rate_headers(&self) -> Option<&RateHeaders> {
        self.admission.as_ref().map(Admission::headers)
    }
    /// An attempt on `u` starts (asking it for `model`).
    pub fn upstream(&mut self, u: &crate::state::Upstream, model: &str) {
        self.rec.upstream = Some(u.name.clone());
        if let Some(t) = &mut self.trace {
            let system = u.provider.system();
            t.attempt_start(&u.name, system, Some(u.model.as_deref().unwrap_or(model)));
        }
    }
    pub fn attempted(&mut self) {
        self.rec.attempts += 1;
    }
    /// A request went to an upstream: from now on its prompt may be billed.
    pub fn sent(&mut self) {
        self.sent = true;
    }
    /// One attempt's outcome, for the request log's attempt list (`name:outcome:ms,…`).
    pub fn attempt(&mut self, upstream: &str, outcome: &'static str, took: Duration) {
        if let Some(t) = &mut self.trace {
            t.attempt_end(outcome);
        }
        let log = &mut self.rec.attempt_log;
        if !log.is_empty() {
            log.push(',');
        }
        // `name:outcome:12.3ms`: tenths of a millisecond, rounded, without float formatting.
        let tenths = (took.as_nanos() + 50_000) / 100_000;
        let mut n = itoa::Buffer::new();
        log.push_str(upstream);
        log.push(':');
        log.push_str(outcome);
        log.push(':');
        log.push_str(n.format(tenths / 10));
        log.push('.');
        log.push_str(n.format(tenths % 10));
        log.push_str("ms");
    }
    pub fn attempts(&self) -> u32 {
        self.rec.attempts
    }
    pub fn upstream_time(&mut self, d: Duration) {
        self.rec.upstream_time = d;
    }
    pub fn status(&mut self, status: u16) {
        self.rec.status = status;
    }
    pub fn first_byte(&mut self) {
        if self.rec.ttfb.is_none() {
            self.rec.ttfb = Some(self.started.elapsed());
            if let Some(t) = &mut self.trace {
                t.first_byte();
            }
        }
    }
    /// A stream's first content event is on its way to the client.
    pub fn first_token(&mut self) {
        if self.rec.ttft.is_none() {
            self.rec.ttft = Some(self.started.elapsed());
        }
    }
    /// Content chunks relayed so far: what a client that leaves mid-stream (or a stream that
    /// ends without the upstream's usage) is charged for.
    pub fn streamed(&mut self, chunks: u64) {
        if !self.usage_reported {
            self.rec.completion_tokens = chunks;
        }
    }
    pub fn usage(&mut self, u: Usage) {
        self.usage_reported = true;
        self.rec.prompt_tokens = u.prompt_tokens;
        self.rec.completion_tokens = u.completion_tokens;
    }
    /// What the request cost in US dollars (the limits module prices it); carried to the usage row.
    pub fn cost(&mut self, usd: f64) {
        self.rec.cost_usd = usd;
    }
    /// The answer came from the response cache.
    pub fn cache_hit(&mut self) {
        self.rec.cache_hit = true;
    }
    /// What the response cache did (`hit`, `miss`, `bypass`, `refresh`), for the log line.
    pub fn cache_status(&mut self, status: &'static str) {
        self.rec.cache = Some(status);
        if let Some(t) = &mut self.trace {
            t.cache(status);
        }
    }
    /// What the response cache did, if the model has a cache.
    pub fn cache_label(&self) -> Option<&'static str> {
        self.rec.cache
    }
    /// The usage this request is billed for under admission `a`: the upstream's, or when there
    /// is none (the client left, the stream broke, the upstream sent none) but the request
    /// reached an upstream, which has at least read the prompt, the prompt's estimate. A request
    /// refused before any upstream saw it costs nothing.
    fn billed(&self, a: &Admission) -> Usage {
        let mut usage = Usage {
            prompt_tokens: self.rec.prompt_tokens,
            completion_tokens: self.rec.completion_tokens,
        };
        if !self.usage_reported && self.sent {
            usage.prompt_tokens = usage.prompt_tokens.max(a.estimated_prompt_tokens());
        }
        usage
    }

    /// `x-tollgate-cost-usd` and the usage it was computed from, for an answer whose usage is
    /// known before its headers go out (a whole JSON answer): what the usage row will say.
    pub fn cost_headers(&self, h: &mut http::HeaderMap) {
        let Some(a) = &self.admission else { return };
        let usage = self.billed(a);
        cost_headers(h, a.cost_nanos(usage), usage);
    }

    /// A stream broke after it started: the status stays, the kind says what happened.
    pub fn broken(&mut self, kind: &'static str) {
        self.rec.error_kind = Some(kind);
    }
    pub fn fail(&mut self, e: &ApiError) {
        self.rec.status = e.status().as_u16();
        self.rec.error_kind = Some(e.kind());
        self.finished = true;
    }
    pub fn finish(&mut self) {
        self.finished = true;
    }
}

impl Drop for Ledger {
    fn drop(&mut self) {
        if !self.finished {
            self.rec.client_disconnected = true;
            if self.rec.status == 0 {
                // nginx's "client closed request".
                self.rec.status = 499;
            }
        }
        self.rec.latency = self.started.elapsed();
        if let Some(a) = self.admission.take() {
            let usage = self.billed(&a);
            self.rec.cost_usd = a.settle(usage);
        }
        if let Some(t) = &mut self.trace {
            t.finish(&self.rec);
        }
        telemetry::account(&self.rec);
        // The row (an id, owned strings) is made only where it has somewhere to go.
        if let Some(sink) = &self.usage {
            if let Some(mut row) = usage_row(&self.rec) {
                row.batch_id = self.batch_id.as_deref().map(str::to_owned);
                sink.record(row);
            }
        }
    }
}

/// The usage row of an identified caller's request.
fn usage_row(r: &RequestRecord) -> Option<UsageRow> {
    let ms = |d: Duration| i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
    Some(UsageRow {
        id: UsageRow::new_id(),
        ts: now_ms() - ms(r.latency),
        request_id: r.request_id.to_string(),
        team: r.team.as_deref()?.to_owned(),
        key_id: r.key_id.as_deref()?.to_owned(),
        model: r.model.clone(),
        upstream: r.upstream.as_deref().map(str::to_owned),
        endpoint: r.endpoint.to_owned(),
        stream: r.stream,
        status: r.status,
        error_kind: r.error_kind.map(str::to_owned),
        prompt_tokens: r.prompt_tokens,
        completion_tokens: r.completion_tokens,
        cost_usd: r.cost_usd,
        latency_ms: ms(r.latency),
        ttfb_ms: r.ttfb.map(ms),
        cache_hit: r.cache_hit,
        batch_id: None,
    })
}

/// The answer's cost in US dollars (to the nano-dollar).
pub const X_COST: http::HeaderName = http::HeaderName::from_static("x-tollgate-cost-usd");
/// The prompt tokens the cost was computed from.
pub const X_PROMPT_TOKENS: http::HeaderName =
    http::HeaderName::from_static("x-tollgate-prompt-tokens");
/// The completion tokens the cost was computed from.
pub const X_COMPLETION_TOKENS: http::HeaderName =
    http::HeaderName::from_static("x-tollgate-completion-tokens");

/// Set the cost headers: `nanos` as dollars, and the usage.
pub fn cost_headers(h: &mut http::HeaderMap, nanos: u64, usage: Usage) {
    let mut usd = String::with_capacity(32);
    telemetry::spend::push_dollars(&mut usd, nanos);
    if let Ok(v) = http::HeaderValue::from_maybe_shared(bytes::Bytes::from(usd)) {
        h.insert(X_COST, v);
    }
    h.insert(
        X_PROMPT_TOKENS,
        http::HeaderValue::from(usage.prompt_tokens),
    );
    h.insert(
        X_COMPLETION_TOKENS,
        http::HeaderValue::from(usage.completion_tokens),
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attempts_are_logged_as_name_outcome_and_tenths_of_a_millisecond() {
        let mut l = Ledger::start("r".into(), "chat", None);
        l.attempt("a", "ok", Duration::from_micros(12_345));
        l.attempt("b", "timeout", Duration::from_micros(40));
        l.attempt("c", "ok", Duration::from_secs(2));
        assert_eq!(
            l.rec.attempt_log,
            "a:ok:12.3ms,b:timeout:0.0ms,c:ok:2000.0ms"
        );
    }

    #[test]
    fn the_cost_header_is_dollars_and_nine_digits_of_nanodollars() {
        let cases = [
            (0, "0.000000000"),
            (7, "0.000000007"),
            (123_456_789, "0.123456789"),
            (1_000_000_000, "1.000000000"),
            (1_234_567_890_123, "1234.567890123"),
            (u64::MAX, "18446744073.709551615"),
        ];
        for (nanos, want) in cases {
            let mut h = http::HeaderMap::new();
            cost_headers(&mut h, nanos, Usage::default());
            assert_eq!(h.get(X_COST).and_then(|v| v.to_str().ok()), Some(want));
            assert_eq!(
                h.get(X_PROMPT_TOKENS).map(|v| v.as_bytes()),
                Some(&b"0"[..])
            );
        }
    }
}
