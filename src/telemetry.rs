//! Logs and metrics: the request log line, metric names, and the Prometheus registry.
//!
//! Operational logs and request logs are both JSON lines on stderr; request lines carry
//! `log_type: "request"` and the target `tollgate::request` so they can be filtered apart.
//! Metric labels are low-cardinality (model, team, status, kind) and never carry a key, a token
//! or a message. The one global is the metrics recorder, installed once per process.

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

/// Metric names, one place.
pub mod names {
    pub const REQUESTS: &str = "tollgate_requests_total";
    pub const LATENCY: &str = "tollgate_request_duration_seconds";
    pub const TTFB: &str = "tollgate_time_to_first_byte_seconds";
    pub const OVERHEAD: &str = "tollgate_overhead_seconds";
    pub const TOKENS: &str = "tollgate_tokens_total";
    pub const IN_FLIGHT: &str = "tollgate_in_flight_requests";
    pub const ERRORS: &str = "tollgate_errors_total";
    pub const ATTEMPTS: &str = "tollgate_upstream_attempts_total";
    pub const BREAKER_STATE: &str = "tollgate_upstream_breaker_state";
    pub const QUEUE_DEPTH: &str = "tollgate_upstream_queue_depth";
    pub const QUEUE_WAIT: &str = "tollgate_upstream_queue_wait_seconds";
    pub const RETRY_BUDGET_EXHAUSTED: &str = "tollgate_retry_budget_exhausted_total";
    pub const FALLBACKS: &str = "tollgate_fallbacks_total";
    /// Token renewals (OAuth2 token calls that succeeded, JWT re-signs), by credential.
    pub const CREDENTIAL_RENEWALS: &str = "tollgate_credential_renewals_total";
    /// Failed token calls, by credential and class (transient / permanent).
    pub const CREDENTIAL_RENEWAL_FAILURES: &str = "tollgate_credential_renewal_failures_total";
    /// Upstream 401s answered by renewing the credential and retrying, by credential.
    pub const CREDENTIAL_401_RETRIES: &str = "tollgate_credential_401_retries_total";
    /// Upstream 429s answered by rotating to another pool member, by credential.
    pub const CREDENTIAL_429_ROTATIONS: &str = "tollgate_credential_429_rotations_total";
    /// Pool members by state (valid / cooling_down / disabled), by credential.
    pub const CREDENTIAL_POOL_MEMBERS: &str = "tollgate_credential_pool_members";
    /// Requests refused by a limit, by `scope` (key/team) and `limit` (rpm/tpm/concurrency/budget).
    pub const LIMIT_REJECTIONS: &str = "tollgate_limit_rejections_total";
    /// Limiter backend calls that failed, by `backend` and `op` (admit/settle).
    pub const LIMITER_BACKEND_ERRORS: &str = "tollgate_limiter_backend_errors_total";
    /// USD spent, by `team`. A gauge only because the metrics facade counts integers; it only
    /// ever goes up (per process).
    pub const SPEND_USD: &str = "tollgate_spend_usd_total";
    /// Usage rows by outcome: written, spilled, replayed, lost.
    pub const USAGE_ROWS: &str = "tollgate_usage_rows_total";
    pub const USAGE_QUEUE: &str = "tollgate_usage_queue_depth";
    pub const USAGE_WRITE_ERRORS: &str = "tollgate_usage_write_errors_total";
    /// Client connections open now.
    pub const CONNECTIONS_OPEN: &str = "tollgate_connections_open";
    /// Client connections the server closed, by `reason` (no_request / idle / write_timeout).
    pub const CONNECTIONS_CLOSED: &str = "tollgate_connections_closed_total";
}

/// Handle to the process-wide Prometheus recorder.
#[derive(Clone)]
pub struct Metrics {
    handle: Option<PrometheusHandle>,
}

impl Metrics {
    /// The process-wide recorder, installed on first use. If another recorder was installed
    /// first (an embedding program), metrics go there and `/metrics` renders nothing.
    pub fn global() -> Metrics {
        static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
        let handle = HANDLE.get_or_init(|| {
            let latency = [
                0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
                10.0, 30.0, 60.0, 120.0,
            ];
            let overhead = [
                0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.05, 0.1,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(names::OVERHEAD.into()), &overhead)
                .and_then(|b| b.set_buckets(&latency))
                .map(|b| b.build_recorder());
            match recorder {
                Ok(r) => {
                    let handle = r.handle();
                    metrics::set_global_recorder(r).ok().map(|_| handle)
                }
                Err(_) => None,
            }
        });
        Metrics {
            handle: handle.clone(),
        }
    }

    pub fn render(&self) -> String {
        self.handle.as_ref().map(|h| h.render()).unwrap_or_default()
    }
}

/// Install the JSON log subscriber (`RUST_LOG` filters; default info).
///
/// Lines are written by a background thread through a bounded in-memory queue, so a request
/// never waits on stderr. The thread drains every queued line into a 64 KiB buffer and writes it
/// with one system call when the queue is empty (or the buffer full): under load, one write per
/// batch of lines, not one per line. The queue is not lossy: when it is full (stderr slower than the
/// traffic for 64k lines) the logging thread applies back-pressure rather than dropping request
/// lines. Keep the returned guard alive: dropping it flushes what is queued.
pub fn init_logging() -> tracing_appender::non_blocking::WorkerGuard {
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .buffered_lines_limit(64 * 1024)
        .thread_name("tollgate-log")
        .finish(std::io::BufWriter::with_capacity(
            64 * 1024,
            std::io::stderr(),
        ));
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_writer(writer)
        .with_env_filter(filter)
        .try_init();
    guard
}

/// Everything the account step knows about one finished request.
#[derive(Debug, Clone, Default)]
pub struct RequestRecord {
    pub request_id: Arc<str>,
    pub endpoint: &'static str,
    pub team: Option<Arc<str>>,
    pub key_id: Option<Arc<str>>,
    pub model: Option<String>,
    /// The config's name of `model` when it is one of the config's models: only then is it a
    /// metric label (a client's made-up model name is `unknown` there, so clients cannot grow
    /// the label set).
    pub model_label: Option<Arc<str>>,
    pub upstream: Option<Arc<str>>,
    pub status: u16,
    pub error_kind: Option<&'static str>,
    pub stream: bool,
    pub latency: Duration,
    pub ttfb: Option<Duration>,
    /// Time spent waiting on the upstream (send to last byte); excluded from overhead.
    pub upstream_time: Duration,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    /// Cost of the request's real usage, USD (from the limiter's price table).
    pub cost_usd: f64,
    /// The client went away before the answer was complete.
    pub client_disconnected: bool,
    pub attempts: u32,
    /// Every attempt as `upstream:outcome:ms`, comma separated.
    pub attempt_log: String,
    /// Answered from the response cache.
    pub cache_hit: bool,
}

/// Write the request log line and update the metrics.
pub fn account(r: &RequestRecord) {
    let team = r.team.as_deref().unwrap_or("-");
    let model = r.model.as_deref().unwrap_or("-");
    tracing::info!(
        target: "tollgate::request",
        log_type = "request",
        request_id = %r.request_id,
        endpoint = r.endpoint,
        team,
        key_id = r.key_id.as_deref().unwrap_or("-"),
        model,
        upstream = r.upstream.as_deref().unwrap_or("-"),
        status = r.status,
        error_kind = r.error_kind.unwrap_or("-"),
        stream = r.stream,
        latency_ms = r.latency.as_secs_f64() * 1000.0,
        ttfb_ms = r.ttfb.map(|t| t.as_secs_f64() * 1000.0),
        prompt_tokens = r.prompt_tokens,
        completion_tokens = r.completion_tokens,
        cost_usd = r.cost_usd,
        client_disconnected = r.client_disconnected,
        attempts = r.attempts,
        attempt_log = %r.attempt_log,
    );
    // Labels without allocations: shared names from config, static strings otherwise.
    let model: metrics::SharedString = match (&r.model_label, &r.model) {
        (Some(name), _) => name.clone().into(),
        (None, Some(_)) => "unknown".into(),
        (None, None) => "-".into(),
    };
    let team: metrics::SharedString = match &r.team {
        Some(t) => t.clone().into(),
        None => "-".into(),
    };
    metrics::counter!(names::REQUESTS, "model" => model.clone(), "team" => team.clone(),
        "status" => status_label(r.status))
    .increment(1);
    metrics::histogram!(names::LATENCY, "model" => model.clone()).record(r.latency);
    if let Some(t) = r.ttfb {
        metrics::histogram!(names::TTFB, "model" => model.clone()).record(t);
    }
    metrics::histogram!(names::OVERHEAD).record(r.latency.saturating_sub(r.upstream_time));
    if r.prompt_tokens > 0 || r.completion_tokens > 0 {
        metrics::counter!(names::TOKENS, "model" => model.clone(), "team" => team.clone(),
            "direction" => "in")
        .increment(r.prompt_tokens);
        metrics::counter!(names::TOKENS, "model" => model, "team" => team,
            "direction" => "out")
        .increment(r.completion_tokens);
    }
    if let Some(kind) = r.error_kind {
        metrics::counter!(names::ERRORS, "kind" => kind).increment(1);
    }
}

/// An HTTP status as a label: the ones Tollgate answers with are static strings.
fn status_label(status: u16) -> metrics::SharedString {
    let s: &'static str = match status {
        200 => "200",
        400 => "400",
        401 => "401",
        403 => "403",
        404 => "404",
        405 => "405",
        408 => "408",
        413 => "413",
        429 => "429",
        499 => "499",
        500 => "500",
        502 => "502",
        503 => "503",
        504 => "504",
        other => return other.to_string().into(),
    };
    s.into()
}

/// Counts a request in flight for as long as it lives (streams included).
pub struct InFlightGuard;

impl InFlightGuard {
    pub fn new() -> InFlightGuard {
        metrics::gauge!(names::IN_FLIGHT).increment(1.0);
        InFlightGuard
    }
}

impl Default for InFlightGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        metrics::gauge!(names::IN_FLIGHT).decrement(1.0);
    }
}
