//! OpenTelemetry traces: one span per relayed request, a child span per upstream attempt, the
//! steps as events, GenAI semantic-convention attributes; exported over OTLP (HTTP/protobuf or
//! gRPC) by [`export`]. See docs/TRACING.md for the span and attribute list.
//!
//! Owns the tracer (built from `telemetry.traces` when the snapshot is built), reading the
//! client's W3C `traceparent`, writing the one sent upstream, and what goes on a span. It does
//! not decide when a step happens: the request's ledger (`proxy::ledger`) calls a
//! [`RequestTrace`] method at each step it already records, so the request path itself only
//! grows by the traceparent it forwards.
//!
//! Cost when off: no [`Tracing`] exists, the ledger holds `None` and checks it per step; no span
//! object, no allocation. When on, a request that is not sampled gets a non-recording span
//! (ids only) so that its `traceparent` still flows. Never on a span: a client key, a
//! credential, a header value; the prompt only with `capture_prompts`, cut to its bound.

mod export;

use std::borrow::Cow;
use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use opentelemetry::propagation::{Extractor, TextMapPropagator};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{Sampler, SdkTracer, SdkTracerProvider};
use opentelemetry_sdk::Resource;

use crate::config::TracesConfig;
use crate::secret::EnvSource;

/// Attribute keys, one place (GenAI and HTTP semantic conventions, then Tollgate's own).
pub mod keys {
    pub const SYSTEM: &str = "gen_ai.system";
    pub const PROVIDER: &str = "gen_ai.provider.name";
    pub const OPERATION: &str = "gen_ai.operation.name";
    pub const REQUEST_MODEL: &str = "gen_ai.request.model";
    pub const RESPONSE_MODEL: &str = "gen_ai.response.model";
    pub const INPUT_TOKENS: &str = "gen_ai.usage.input_tokens";
    pub const OUTPUT_TOKENS: &str = "gen_ai.usage.output_tokens";
    pub const INPUT_MESSAGES: &str = "gen_ai.input.messages";
    pub const STATUS: &str = "http.response.status_code";
    pub const ERROR_TYPE: &str = "error.type";
    pub const REQUEST_ID: &str = "tollgate.request_id";
    pub const TEAM: &str = "tollgate.team";
    pub const KEY_ID: &str = "tollgate.key_id";
    pub const UPSTREAM: &str = "tollgate.upstream";
    pub const STREAM: &str = "tollgate.stream";
    pub const ATTEMPTS: &str = "tollgate.attempts";
    pub const OUTCOME: &str = "tollgate.outcome";
    pub const CACHE: &str = "tollgate.cache";
    pub const COST_USD: &str = "tollgate.cost_usd";
    pub const QUEUE_WAIT_MS: &str = "tollgate.queue_wait_ms";
    pub const CLIENT_DISCONNECTED: &str = "tollgate.client_disconnected";
    pub const PROMPT_TRUNCATED: &str = "tollgate.prompt_truncated";
}

/// The process's tracer for one `telemetry.traces` config, with its export queue. Shared by
/// the snapshots built from that config (a reload that leaves it unchanged keeps it).
///
/// Dropping the last snapshot that holds it (a reload with a changed block) ends nothing
/// abruptly: requests still running keep the tracer (and so the queue) alive through their
/// spans; once the last sender is gone the export task sends what is queued and stops.
pub struct Tracing {
    config: TracesConfig,
    /// Kept for the tracer's lifetime; its processor only queues.
    _provider: SdkTracerProvider,
    tracer: SdkTracer,
    queue: export::Queue,
}

impl Tracing {
    /// Build the exporter, the export task and the tracer. Needs a Tokio runtime (the export
    /// task runs on it); the collector is not contacted until the first export.
    pub fn from_config(cfg: &TracesConfig, env: &dyn EnvSource) -> Result<Tracing, String> {
        let resource = Resource::builder_empty()
            .with_service_name(cfg.service_name.clone())
            .with_attribute(KeyValue::new(
                "service.version",
                env!("CARGO_PKG_VERSION").to_owned(),
            ))
            .build();
        let (processor, queue) = export::start(cfg, env, &resource)?;
        let sampler =
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(cfg.sampling_ratio)));
        let provider = SdkTracerProvider::builder()
            .with_span_processor(processor)
            .with_sampler(sampler)
            .with_resource(resource)
            .build();
        let tracer = provider.tracer("tollgate");
        Ok(Tracing {
            config: cfg.clone(),
            _provider: provider,
            tracer,
            queue,
        })
    }

    /// The config this was built from: a reload keeps this tracer when it is unchanged.
    pub fn config(&self) -> &TracesConfig {
        &self.config
    }

    /// The request's span, a child of the client's `traceparent` if it sent a valid one.
    pub fn request(
        &self,
        endpoint: &'static str,
        headers: &HeaderMap,
        request_id: &str,
    ) -> RequestTrace {
        let parent = TraceContextPropagator::new().extract(&Headers(headers));
        let op = operation(endpoint);
        let span = self
            .tracer
            .span_builder(op)
            .with_kind(SpanKind::Server)
            .with_attributes([
                KeyValue::new(keys::OPERATION, op),
                KeyValue::new(keys::REQUEST_ID, request_id.to_owned()),
            ])
            .start_with_context(&self.tracer, &parent);
        let cx = parent.with_span(span);
        let recording = cx.span().is_recording();
        RequestTrace {
            cx,
            tracer: self.tracer.clone(),
            attempt: None,
            attempt_model: None,
            answered_model: None,
            op,
            recording,
            capture: self
                .config
                .capture_prompts
                .then_some(self.config.prompt_max_bytes),
        }
    }

    /// Export what is queued, waiting at most `within`; false if it did not finish in time.
    /// Spans ended after this still go out with the next batch.
    pub async fn flush(&self, within: Duration) -> bool {
        self.queue.flush(within).await
    }
}

/// GenAI `gen_ai.operation.name` of an endpoint label.
fn operation(endpoint: &'static str) -> &'static str {
    match endpoint {
        "completions" => "text_completion",
        "embeddings" => "embeddings",
        _ => "chat",
    }
}

/// Reads the client's headers for the propagator.
struct Headers<'a>(&'a HeaderMap);

impl Extractor for Headers<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(http::HeaderName::as_str).collect()
    }
}

/// One request's spans: the request span, and the attempt span while an attempt runs.
pub struct RequestTrace {
    cx: Context,
    tracer: SdkTracer,
    attempt: Option<Context>,
    /// The model the running attempt asked its upstream for.
    attempt_model: Option<String>,
    /// The model the answering attempt asked for: `gen_ai.response.model` when the answer does
    /// not name its own.
    answered_model: Option<String>,
    op: &'static str,
    /// Sampled: attributes and events are worth building.
    recording: bool,
    /// `capture_prompts`: the prompt's bound in bytes.
    capture: Option<usize>,
}

impl RequestTrace {
    fn event(&self, name: &'static str, attrs: Vec<KeyValue>) {
        if self.recording {
            self.cx.span().add_event(name, attrs);
        }
    }

    /// authenticate: who is calling (the key's id, never the key).
    pub fn auth(&mut self, team: &str, key_id: &str) {
        if self.recording {
            let span = self.cx.span();
            span.set_attribute(KeyValue::new(keys::TEAM, team.to_owned()));
            span.set_attribute(KeyValue::new(keys::KEY_ID, key_id.to_owned()));
            span.add_event("auth", Vec::new());
        }
    }

    /// shape: the model asked for, and the span's GenAI name (`chat gpt-4o`).
    pub fn shaped(&mut self, model: &str, stream: bool) {
        if self.recording {
            let span = self.cx.span();
            span.update_name(format!("{} {model}", self.op));
            span.set_attribute(KeyValue::new(keys::REQUEST_MODEL, model.to_owned()));
            span.set_attribute(KeyValue::new(keys::STREAM, stream));
        }
    }

    /// With `capture_prompts` only: the prompt's JSON text, cut to its bound on a character
    /// boundary.
    pub fn prompt(&mut self, raw: Option<&[u8]>) {
        let (Some(max), Some(raw), true) = (self.capture, raw, self.recording) else {
            return;
        };
        let text = String::from_utf8_lossy(raw);
        let cut = floor_char_boundary(&text, max);
        let span = self.cx.span();
        span.set_attribute(KeyValue::new(keys::INPUT_MESSAGES, text[..cut].to_owned()));
        if cut < text.len() {
            span.set_attribute(KeyValue::new(keys::PROMPT_TRUNCATED, true));
        }
    }

    /// admit: the limiter let it through.
    pub fn admitted(&mut self) {
        self.event("admit", Vec::new());
    }

    /// look up: what the response cache did.
    pub fn cache(&mut self, status: &'static str) {
        self.event("cache", vec![KeyValue::new(keys::CACHE, status)]);
    }

    /// An attempt on `upstream` starts: its span, a child of the request span.
    pub fn attempt_start(&mut self, upstream: &str, system: &'static str, model: Option<&str>) {
        self.attempt_end("abandoned");
        let mut attrs = vec![
            KeyValue::new(keys::UPSTREAM, upstream.to_owned()),
            KeyValue::new(keys::SYSTEM, system),
            KeyValue::new(keys::PROVIDER, system),
            KeyValue::new(keys::OPERATION, self.op),
        ];
        if let (Some(m), true) = (model, self.recording) {
            attrs.push(KeyValue::new(keys::REQUEST_MODEL, m.to_owned()));
            self.attempt_model = Some(m.to_owned());
        }
        let name: Cow<'static, str> = if self.recording {
            format!("{} {upstream}", self.op).into()
        } else {
            self.op.into()
        };
        let span = self
            .tracer
            .span_builder(name)
            .with_kind(SpanKind::Client)
            .with_attributes(attrs)
            .start_with_context(&self.tracer, &self.cx);
        self.attempt = Some(self.cx.with_span(span));
        if self.recording {
            let span = self.cx.span();
            span.set_attribute(KeyValue::new(keys::UPSTREAM, upstream.to_owned()));
            span.set_attribute(KeyValue::new(keys::SYSTEM, system));
        }
    }

    /// The attempt waited this long for a slot at its upstream (the upstream's queue).
    pub fn queued(&mut self, waited: Duration) {
        if let (Some(a), true) = (&self.attempt, self.recording) {
            a.span().add_event(
                "queue wait",
                vec![KeyValue::new(
                    keys::QUEUE_WAIT_MS,
                    waited.as_secs_f64() * 1000.0,
                )],
            );
        }
    }

    /// The upstream answered with `status` (each send of the attempt, the last one stays).
    pub fn upstream_status(&mut self, status: u16) {
        if let (Some(a), true) = (&self.attempt, self.recording) {
            let span = a.span();
            span.set_attribute(KeyValue::new(keys::STATUS, i64::from(status)));
            span.add_event(
                "response",
                vec![KeyValue::new(keys::STATUS, i64::from(status))],
            );
        }
    }

    /// The attempt ended: `ok`, or the kind of its failure.
    pub fn attempt_end(&mut self, outcome: &'static str) {
        let Some(a) = self.attempt.take() else { return };
        let model = self.attempt_model.take();
        let span = a.span();
        if self.recording {
            span.set_attribute(KeyValue::new(keys::OUTCOME, outcome));
            if outcome == "ok" {
                self.answered_model = model;
            }
            if outcome != "ok" {
                span.set_attribute(KeyValue::new(keys::ERROR_TYPE, outcome));
                span.set_status(Status::error(outcome));
            }
        }
        span.end();
    }

    /// The `traceparent` for the upstream: the running attempt's span (the request's outside
    /// an attempt). Sent whether or not the trace is sampled, with its sampled flag.
    pub fn traceparent(&self) -> Option<HeaderValue> {
        let cx = self.attempt.as_ref().unwrap_or(&self.cx);
        let sc = cx.span().span_context().clone();
        if !sc.is_valid() {
            return None;
        }
        let v = format!(
            "00-{}-{}-{:02x}",
            sc.trace_id(),
            sc.span_id(),
            sc.trace_flags().to_u8()
        );
        HeaderValue::from_str(&v).ok()
    }

    /// relay: the answer about to be relayed (a whole JSON body, or a stream's first event):
    /// `gen_ai.response.model` is the `model` it names, else the one its attempt asked for.
    pub fn answer(&mut self, body: &[u8], sse: bool) {
        if !self.recording {
            return;
        }
        let named = model_in(body, sse);
        if let Some(m) = named.or_else(|| self.answered_model.take()) {
            let cut = floor_char_boundary(&m, MAX_MODEL_NAME);
            self.cx
                .span()
                .set_attribute(KeyValue::new(keys::RESPONSE_MODEL, m[..cut].to_owned()));
        }
    }

    /// relay: the first byte of the answer went to the client.
    pub fn first_byte(&mut self) {
        self.event("first byte", Vec::new());
    }

    /// account: the request's outcome and usage; the request span ends.
    pub fn finish(&mut self, r: &super::RequestRecord) {
        self.attempt_end("abandoned");
        let span = self.cx.span();
        if self.recording {
            let mut attrs = vec![
                KeyValue::new(keys::STATUS, i64::from(r.status)),
                KeyValue::new(keys::ATTEMPTS, i64::from(r.attempts)),
                KeyValue::new(keys::COST_USD, r.cost_usd),
            ];
            if r.prompt_tokens > 0 || r.completion_tokens > 0 {
                let n = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
                attrs.push(KeyValue::new(keys::INPUT_TOKENS, n(r.prompt_tokens)));
                attrs.push(KeyValue::new(keys::OUTPUT_TOKENS, n(r.completion_tokens)));
            }
            if r.client_disconnected {
                attrs.push(KeyValue::new(keys::CLIENT_DISCONNECTED, true));
            }
            if let Some(kind) = r.error_kind {
                attrs.push(KeyValue::new(keys::ERROR_TYPE, kind));
            }
            span.set_attributes(attrs);
            // A 5xx, or an answer that broke after it started (a 200 with an error kind).
            if r.status >= 500 || (r.status < 400 && r.error_kind.is_some()) {
                span.set_status(Status::error(r.error_kind.unwrap_or("error")));
            }
        }
        span.end();
    }
}

/// Longest model name put on a span (the upstream writes it).
const MAX_MODEL_NAME: usize = 256;

/// The `model` an answer names: a JSON body's, or a stream's first `data:` event's.
fn model_in(body: &[u8], sse: bool) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        #[serde(borrow, default)]
        model: Option<Cow<'a, str>>,
    }
    let json = if sse {
        body.split(|&b| b == b'\n')
            .find_map(|line| line.strip_prefix(b"data:"))?
            .trim_ascii()
    } else {
        body
    };
    serde_json::from_slice::<Probe<'_>>(json)
        .ok()?
        .model
        .map(Cow::into_owned)
}

/// The largest index at most `max` that falls on a character boundary of `s`.
fn floor_char_boundary(s: &str, max: usize) -> usize {
    if max >= s.len() {
        return s.len();
    }
    (0..=max)
        .rev()
        .find(|&i| s.is_char_boundary(i))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_prompt_is_cut_on_a_character_boundary() {
        let s = "aé模😀";
        assert_eq!(floor_char_boundary(s, 100), s.len());
        assert_eq!(floor_char_boundary(s, 2), 1);
        assert_eq!(floor_char_boundary(s, 3), 3);
        assert_eq!(floor_char_boundary(s, 7), 6);
        assert_eq!(floor_char_boundary(s, 0), 0);
    }

    #[test]
    fn the_response_model_is_read_from_a_body_or_a_streams_first_event() {
        let body = br#"{"id":"x","model":"gpt-4o-2024-08-06","choices":[]}"#;
        assert_eq!(model_in(body, false).as_deref(), Some("gpt-4o-2024-08-06"));
        let sse = b": keep-alive\r\ndata: {\"model\":\"m\\u00e9\",\"choices\":[]}\r\n\r\n";
        assert_eq!(model_in(sse, true).as_deref(), Some("m\u{e9}"));
        assert_eq!(model_in(br#"{"choices":[]}"#, false), None);
        assert_eq!(model_in(b"data: [DONE]\n\n", true), None);
        assert_eq!(model_in(b"not json", false), None);
    }

    #[test]
    fn endpoints_map_to_genai_operation_names() {
        assert_eq!(operation("chat"), "chat");
        assert_eq!(operation("completions"), "text_completion");
        assert_eq!(operation("embeddings"), "embeddings");
    }
}
