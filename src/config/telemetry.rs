//! Config of what Tollgate tells about itself beyond logs and `/metrics`: OpenTelemetry traces
//! over OTLP (`telemetry.traces`). Off unless the block is written. See docs/TRACING.md.
//!
//! Only the schema and its checks live here; the exporter is built by
//! [`crate::telemetry::trace`] when the snapshot is built.

use super::*;

/// `telemetry:` — traces for now.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetryConfig {
    /// OpenTelemetry traces over OTLP. Unset: no tracer exists and a request builds no span.
    pub traces: Option<TracesConfig>,
}

/// How OTLP reaches the collector.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OtlpProtocol {
    /// HTTP/protobuf (`POST …/v1/traces`), the collector's port 4318.
    #[default]
    Http,
    /// gRPC (`TraceService/Export`), the collector's port 4317.
    Grpc,
}

/// `telemetry.traces`: where spans go and how many.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TracesConfig {
    /// The collector's URL, `http://` or `https://`. HTTP: `/v1/traces` is added when the URL
    /// has no path; gRPC: used as written.
    pub endpoint: String,
    /// `http` (HTTP/protobuf, the default) or `grpc`.
    #[serde(default)]
    pub protocol: OtlpProtocol,
    /// Headers (gRPC: metadata) sent with every export, e.g. a vendor's API key. Values are
    /// secrets: write `${ENV}` or `file:PATH` (a literal is warned about by `check-config`).
    #[serde(default)]
    pub headers: BTreeMap<String, SecretRef>,
    /// Share of new traces recorded, 0 to 1. A client's `traceparent` decides for its own
    /// trace (parent-based sampling).
    #[serde(default = "one")]
    pub sampling_ratio: f64,
    /// `service.name` of every span.
    #[serde(default = "default_service_name")]
    pub service_name: String,
    /// Put the request's prompt (its `messages`, `prompt` or `input`) on the request span as
    /// `gen_ai.input.messages`, cut to `prompt_max_bytes`. Off: no prompt text leaves Tollgate.
    #[serde(default)]
    pub capture_prompts: bool,
    /// Longest prompt text captured, bytes.
    #[serde(default = "default_prompt_max_bytes")]
    pub prompt_max_bytes: usize,
    /// Finished spans waiting for export at most; when full a span is dropped and counted
    /// (`tollgate_trace_spans_dropped_total`), never waited for.
    #[serde(default = "default_queue_size")]
    pub queue_size: usize,
    /// Spans sent in one export at most.
    #[serde(default = "default_max_batch")]
    pub max_batch: usize,
    /// One export (connect, send, answer) gives up after this long; its spans are dropped and
    /// counted.
    #[serde(default = "default_export_timeout")]
    pub export_timeout: Dur,
}

fn one() -> f64 {
    1.0
}
fn default_service_name() -> String {
    "tollgate".into()
}
fn default_prompt_max_bytes() -> usize {
    4096
}
fn default_queue_size() -> usize {
    2048
}
fn default_max_batch() -> usize {
    512
}
fn default_export_timeout() -> Dur {
    secs(10)
}

impl TracesConfig {
    /// The export URL: for HTTP with no path, the collector's `/v1/traces`.
    pub fn export_url(&self) -> String {
        let e = self.endpoint.trim_end_matches('/');
        let has_path =
            reqwest::Url::parse(e).is_ok_and(|u| u.path() != "/" && !u.path().is_empty());
        match self.protocol {
            OtlpProtocol::Http if !has_path => format!("{e}/v1/traces"),
            _ => e.to_owned(),
        }
    }

    pub(super) fn validate(
        &self,
        env: &dyn EnvSource,
        warnings: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        const P: &str = "telemetry.traces";
        let url = reqwest::Url::parse(&self.endpoint)
            .map_err(|e| err(format!("{P}.endpoint"), format!("invalid URL: {e}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(err(format!("{P}.endpoint"), "must be http or https"));
        }
        if !(0.0..=1.0).contains(&self.sampling_ratio) {
            return Err(err(
                format!("{P}.sampling_ratio"),
                "must be between 0 and 1",
            ));
        }
        if self.service_name.trim().is_empty() {
            return Err(err(format!("{P}.service_name"), "must not be empty"));
        }
        for (field, v) in [
            ("queue_size", self.queue_size),
            ("max_batch", self.max_batch),
            ("prompt_max_bytes", self.prompt_max_bytes),
        ] {
            if v == 0 {
                return Err(err(format!("{P}.{field}"), "must be greater than 0"));
            }
        }
        if self.export_timeout.0.is_zero() {
            return Err(err(format!("{P}.export_timeout"), "must be greater than 0"));
        }
        for (name, value) in &self.headers {
            let path = format!("{P}.headers.{name}");
            // gRPC metadata keys are lowercase HTTP header names.
            if http::HeaderName::from_bytes(name.as_bytes()).is_err()
                || name.bytes().any(|b| b.is_ascii_uppercase())
            {
                return Err(err(path, "is not a valid lowercase header name"));
            }
            check_secret(value, &path, env, warnings)?;
            let v = value.resolve(env).map_err(|m| err(&path, m))?;
            if http::HeaderValue::from_str(v.expose()).is_err() {
                // Never the value itself: it is a secret.
                return Err(err(path, "the value is not a valid header value"));
            }
        }
        Ok(())
    }
}
