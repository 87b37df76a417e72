//! Logs and metrics: the request log line, metric names and handles, and the Prometheus
//! registry.
//!
//! Operational logs and request logs are both JSON lines on stderr; request lines carry
//! `log_type: "request"` and the target `tollgate::request` so they can be filtered apart.
//! Metric labels are low-cardinality (model, team, status, kind) and never carry a key, a token
//! or a message. The one global is the metrics recorder, installed once per process (with the
//! handles of its label-less series, [`meters::process`]). What a request touches is a handle made
//! per config snapshot ([`meters`]) and a line handed to the log writer ([`request_log`]).
//!
//! [`trace`] holds OpenTelemetry traces (off unless `telemetry.traces` is set): the tracer built
//! per config, the spans of one request, and their export over OTLP through a bounded queue.

mod help;
pub mod meters;
mod request_log;
pub mod spend;
pub mod trace;

use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime};

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

pub use meters::Meters;
use meters::{ModelMeters, TeamMeters};

/// The crate's version and the commit it was built from (`--version`, `tollgate_build_info`).
pub const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (",
    env!("TOLLGATE_COMMIT"),
    ")"
);

/// Metric names, one place.
pub mod names {
    pub const REQUESTS: &str = "tollgate_requests_total";
    pub const LATENCY: &str = "tollgate_request_duration_seconds";
    pub const TTFB: &str = "tollgate_time_to_first_byte_seconds";
    /// Streams: time to the first content event.
    pub const TTFT: &str = "tollgate_time_to_first_token_seconds";
    /// Streams: output tokens per second after the first one.
    pub const OUTPUT_RATE: &str = "tollgate_output_tokens_per_second";
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
    /// USD spent, by `team` and `model`: a counter rendered by [`super::spend`].
    pub const SPEND_USD: &str = "tollgate_spend_usd_total";
    /// 1, labelled with the version and commit.
    pub const BUILD_INFO: &str = "tollgate_build_info";
    /// Batch lines recorded, by outcome (completed, failed).
    pub const BATCH_LINES: &str = "tollgate_batch_lines_total";
    /// The response cache ([`crate::cache`]), by tier.
    pub const CACHE_HITS: &str = "tollgate_cache_hits_total";
    pub const CACHE_MISSES: &str = "tollgate_cache_misses_total";
    pub const CACHE_BYTES: &str = "tollgate_cache_bytes";
    pub const CACHE_SAVED_USD: &str = "tollgate_cache_saved_usd";
    pub const CACHE_WRITES: &str = "tollgate_cache_writes_total";
    pub const CACHE_WRITES_DROPPED: &str = "tollgate_cache_writes_dropped_total";
    /// Usage rows by outcome: written, spilled, replayed, lost.
    pub const USAGE_ROWS: &str = "tollgate_usage_rows_total";
    pub const USAGE_QUEUE: &str = "tollgate_usage_queue_depth";
    pub const USAGE_WRITE_ERRORS: &str = "tollgate_usage_write_errors_total";
    /// Client connections open now.
    pub const CONNECTIONS_OPEN: &str = "tollgate_connections_open";
    /// Client connections the server closed, by `reason` (no_request / idle / write_timeout).
    pub const CONNECTIONS_CLOSED: &str = "tollgate_connections_closed_total";
    /// Finished spans not exported, by `reason` (queue_full / export_failed).
    pub const TRACE_SPANS_DROPPED: &str = "tollgate_trace_spans_dropped_total";
    /// Spans the collector accepted.
    pub const TRACE_SPANS_EXPORTED: &str = "tollgate_trace_spans_exported_total";
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
            let tokens_per_second = [
                1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 50.0, 75.0, 100.0, 150.0, 200.0, 300.0, 500.0,
                1000.0,
            ];
            let recorder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Full(names::OVERHEAD.into()), &overhead)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full(names::OUTPUT_RATE.into()),
                        &tokens_per_second,
                    )
                })
                .and_then(|b| b.set_buckets(&latency))
                .map(|b| b.build_recorder());
            let handle = match recorder {
                Ok(r) => {
                    let handle = r.handle();
                    metrics::set_global_recorder(r).ok().map(|_| handle)
                }
                Err(_) => None,
            };
            if handle.is_some() {
                help::describe();
                process_collector().describe();
                metrics::gauge!(names::BUILD_INFO,
                    "version" => env!("CARGO_PKG_VERSION"), "commit" => env!("TOLLGATE_COMMIT"))
                .set(1.0);
            }
            handle
        });
        Metrics {
            handle: handle.clone(),
        }
    }

    /// Drain the histograms' recorded samples into their buckets every `every` until `stop`.
    /// Without it samples pile up in memory until the next scrape: a gateway nobody scrapes
    /// grew by about 70 bytes a request.
    pub fn spawn_upkeep(
        &self,
        every: std::time::Duration,
        stop: tokio_util::sync::CancellationToken,
    ) -> Option<tokio::task::JoinHandle<()>> {
        let h = self.handle.clone()?;
        Some(tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tick.tick() => h.run_upkeep(),
                }
            }
        }))
    }

    /// The Prometheus text: the recorder's series (with the process's CPU, memory and file
    /// descriptors read now), then spend ([`spend`]).
    pub fn render(&self) -> String {
        let Some(h) = &self.handle else {
            return String::new();
        };
        process_collector().collect();
        let mut out = h.render();
        spend::render(&mut out);
        out
    }
}

/// `process_cpu_seconds_total`, `process_resident_memory_bytes`, `process_open_fds` and the
/// rest of Prometheus's standard process metrics, read when `/metrics` is scraped.
fn process_collector() -> &'static metrics_process::Collector {
    static COLLECTOR: OnceLock<metrics_process::Collector> = OnceLock::new();
    COLLECTOR.get_or_init(metrics_process::Collector::default)
}

/// Install the JSON log subscriber (`RUST_LOG` filters; default info) and the log writer.
///
/// Every line (the request line from [`account`], operational lines from tracing) is handed
/// whole to one background thread through a bounded queue, so a request never waits on stderr;
/// the thread writes them in batches at low priority ([`request_log`] says how, and what
/// happens when the queue is full). Keep the returned guard alive: dropping it writes what is
/// queued and stops the thread.
pub fn init_logging() -> LogGuard {
    let (tx, thread) = match request_log::start(std::io::stderr()) {
        Ok((tx, thread)) => (Some(tx), Some(thread)),
        Err(e) => {
            eprintln!("log writer not started ({e}); logging to stderr directly");
            (None, None)
        }
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let fmt = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_current_span(false)
        .with_env_filter(filter);
    let _ = match &tx {
        Some(tx) => fmt.with_writer(QueueWriter(tx.clone())).try_init(),
        None => fmt.with_writer(std::io::stderr).try_init(),
    };
    if let Some(tx) = &tx {
        request_log::install(tx.clone());
    }
    LogGuard { tx, thread }
}

/// Writes what is queued and stops the log writer when dropped.
pub struct LogGuard {
    tx: Option<flume::Sender<request_log::Msg>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        if let Some(tx) = self.tx.take() {
            let _ = tx.send(request_log::Msg::Stop);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// tracing's writer: each event's line (tracing writes one event with one `write_all`) goes to
/// the log writer's queue.
#[derive(Clone)]
struct QueueWriter(flume::Sender<request_log::Msg>);

impl std::io::Write for QueueWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        request_log::send(&self.0, buf.to_vec());
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for QueueWriter {
    type Writer = QueueWriter;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

/// Everything the account step knows about one finished request.
#[derive(Debug, Clone, Default)]
pub struct RequestRecord {
    pub request_id: Arc<str>,
    pub endpoint: &'static str,
    /// The client's address (the TCP peer).
    pub client_addr: Option<std::net::SocketAddr>,
    pub method: Option<http::Method>,
    /// The request's URI; only its path is logged (a query may carry what must not be logged).
    pub uri: Option<http::Uri>,
    pub user_agent: Option<http::HeaderValue>,
    pub team: Option<Arc<str>>,
    pub key_id: Option<Arc<str>>,
    pub model: Option<String>,
    /// The metric handles of the snapshot that served the request.
    pub meters: Option<Arc<Meters>>,
    /// The caller's team's series.
    pub team_meters: Option<Arc<TeamMeters>>,
    /// The series of `model` when it is one of the config's models: only then is it a metric
    /// label (a client's made-up model name is `unknown` there, so clients cannot grow the
    /// label set).
    pub model_meters: Option<Arc<ModelMeters>>,
    pub upstream: Option<Arc<str>>,
    pub status: u16,
    pub error_kind: Option<&'static str>,
    pub stream: bool,
    pub latency: Duration,
    pub ttfb: Option<Duration>,
    /// Streams: time to the first content event.
    pub ttft: Option<Duration>,
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
    /// What the response cache did (`hit`, `miss`, `bypass`, `refresh`); `None` for a model
    /// without a cache.
    pub cache: Option<&'static str>,
}

/// Write the request log line and update the metrics.
pub fn account(r: &RequestRecord) {
    if tracing::enabled!(target: "tollgate::request", tracing::Level::INFO) {
        match request_log::queue() {
            Some(tx) => {
                let mut line = Vec::with_capacity(1024);
                request_log::format(r, SystemTime::now(), &mut line);
                request_log::send(tx, line);
            }
            // No log writer in this process (a library user, a test): through tracing.
            None => trace_line(r),
        }
    }
    count(r);
}

/// The request line as a tracing event: the same fields as [`request_log::format`] writes.
fn trace_line(r: &RequestRecord) {
    tracing::info!(
        target: "tollgate::request",
        log_type = "request",
        request_id = %r.request_id,
        endpoint = r.endpoint,
        client_addr = %OrDash(r.client_addr),
        method = r.method.as_ref().map_or("-", http::Method::as_str),
        path = r.uri.as_ref().map_or("-", http::Uri::path),
        user_agent = &*user_agent(r),
        team = r.team.as_deref().unwrap_or("-"),
        key_id = r.key_id.as_deref().unwrap_or("-"),
        model = r.model.as_deref().unwrap_or("-"),
        upstream = r.upstream.as_deref().unwrap_or("-"),
        status = r.status,
        error_kind = r.error_kind.unwrap_or("-"),
        stream = r.stream,
        latency_ms = millis(r.latency),
        ttfb_ms = r.ttfb.map(millis),
        prompt_tokens = r.prompt_tokens,
        completion_tokens = r.completion_tokens,
        cost_usd = dollars(r.cost_usd),
        client_disconnected = r.client_disconnected,
        attempts = r.attempts,
        attempt_log = %r.attempt_log,
        cache = r.cache,
    );
}

/// `t` as RFC 3339 in UTC with microseconds (`2026-12-02T02:16:48.123456Z`), as the logs write it.
pub fn rfc3339(t: SystemTime) -> String {
    let mut out = Vec::with_capacity(27);
    request_log::timestamp(t, &mut out);
    String::from_utf8_lossy(&out).into_owned()
}

/// A duration in milliseconds rounded to the microsecond, as the log line shows it.
pub(crate) fn millis(d: Duration) -> f64 {
    d.as_micros() as f64 / 1000.0
}

/// US dollars rounded to the nano-dollar (the unit spend is counted in), as the log line shows
/// them: `0.00015546`, not `0.00015546000000000001`.
pub(crate) fn dollars(usd: f64) -> f64 {
    (usd * 1e9).round() / 1e9
}

/// The `User-Agent` as text (invalid UTF-8 replaced), `-` when there is none.
pub(crate) fn user_agent(r: &RequestRecord) -> std::borrow::Cow<'_, str> {
    r.user_agent
        .as_ref()
        .map_or(std::borrow::Cow::Borrowed("-"), |v| {
            String::from_utf8_lossy(v.as_bytes())
        })
}

/// An optional value shown as itself or `-`.
pub(crate) struct OrDash<T>(pub Option<T>);

impl<T: std::fmt::Display> std::fmt::Display for OrDash<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("-"),
        }
    }
}

/// The request's metrics, through the handles of its snapshot.
fn count(r: &RequestRecord) {
    let meters = r.meters.as_deref().unwrap_or(Meters::fallback());
    let team_of_name;
    let team: &TeamMeters = match (&r.team_meters, &r.team) {
        (Some(t), _) => t,
        (None, Some(name)) => {
            team_of_name = meters.team(name);
            &team_of_name
        }
        (None, None) => meters.no_team(),
    };
    let model: &ModelMeters = match (&r.model_meters, &r.model) {
        (Some(m), _) => m,
        (None, Some(_)) => meters.unknown_model(),
        (None, None) => meters.no_model(),
    };
    team.request(model, r.status);
    model.latency(r.latency, r.ttfb);
    let process = meters::process();
    process
        .overhead
        .get()
        .record(r.latency.saturating_sub(r.upstream_time));
    if r.prompt_tokens > 0 || r.completion_tokens > 0 {
        team.tokens(model, r.prompt_tokens, r.completion_tokens);
    }
    if let Some(kind) = r.error_kind {
        process.errors.increment(kind, 1);
    }
    if r.cost_usd > 0.0 {
        team.spend(model, r.cost_usd);
    }
    if let Some(first) = r.ttft {
        model.generation(first, output_rate(r, first));
    }
}

/// A stream's output tokens per second after its first content event: the tokens after the
/// first over the time after it; `None` with fewer than two tokens or no time between.
fn output_rate(r: &RequestRecord, first: Duration) -> Option<f64> {
    let after = r.latency.checked_sub(first)?.as_secs_f64();
    (r.completion_tokens >= 2 && after > 0.0).then(|| (r.completion_tokens - 1) as f64 / after)
}

/// Counts a request in flight for as long as it lives (streams included).
pub struct InFlightGuard;

impl InFlightGuard {
    pub fn new() -> InFlightGuard {
        meters::process().in_flight.get().increment(1.0);
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
        meters::process().in_flight.get().decrement(1.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::sync::Mutex;

    /// What a tracing subscriber wrote.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Ok(mut v) = self.0.lock() {
                v.extend_from_slice(buf);
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    /// The line tracing's JSON formatter (configured as `init_logging` configures it) writes.
    fn traced(r: &RequestRecord) -> String {
        let out = Captured::default();
        let writer = out.clone();
        let subscriber = tracing_subscriber::fmt()
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_writer(move || writer.clone())
            .finish();
        tracing::subscriber::with_default(subscriber, || trace_line(r));
        let bytes = out.0.lock().map(|v| v.clone()).unwrap_or_default();
        String::from_utf8(bytes).unwrap_or_default()
    }

    fn formatted(r: &RequestRecord) -> String {
        let mut line = Vec::new();
        request_log::format(r, SystemTime::now(), &mut line);
        String::from_utf8(line).unwrap_or_default()
    }

    /// The line without its timestamp's value.
    fn untimed(line: &str) -> String {
        let rest = line.split_once("\",\"level\"").map_or("", |(_, r)| r);
        rest.to_owned()
    }

    fn records() -> Vec<RequestRecord> {
        let full = RequestRecord {
            request_id: Arc::from("8cf4-\u{1}-id"),
            endpoint: "chat",
            client_addr: Some(std::net::SocketAddr::from(([127, 0, 0, 1], 52_114))),
            method: Some(http::Method::POST),
            uri: Some(http::Uri::from_static(
                "/v1/chat/completions?api-key=secret",
            )),
            user_agent: Some(http::HeaderValue::from_static("OpenAI/Python 1.54.0")),
            team: Some(Arc::from("demo")),
            key_id: Some(Arc::from("demo key")),
            model: Some("a \"quoted\"\\ model\n\t\r\u{8}\u{c}\u{1f}\u{7f} é 模型 😀".into()),
            upstream: Some(Arc::from("mock")),
            status: 200,
            error_kind: None,
            stream: true,
            latency: Duration::from_nanos(127_934_123),
            ttfb: Some(Duration::from_nanos(612_345)),
            upstream_time: Duration::from_millis(120),
            prompt_tokens: 2,
            completion_tokens: 18_446_744_073_709_551_615,
            cost_usd: (0.1 + 0.2) * 1e-3, // 0.00030000000000000003
            client_disconnected: false,
            attempts: 2,
            attempt_log: "a:upstream_server_error:0.4ms,mock:ok:1.2ms".into(),
            cache: Some("miss"),
            ..RequestRecord::default()
        };
        let refused = RequestRecord {
            request_id: Arc::from("r2"),
            endpoint: "embeddings",
            status: 401,
            error_kind: Some("auth_failed"),
            latency: Duration::from_secs(3),
            ..RequestRecord::default()
        };
        let odd = RequestRecord {
            request_id: Arc::from(""),
            cost_usd: f64::NAN,
            latency: Duration::ZERO,
            ttfb: Some(Duration::from_secs(1)),
            client_disconnected: true,
            status: 499,
            ..RequestRecord::default()
        };
        vec![full, refused, odd]
    }

    #[test]
    fn the_request_line_is_the_one_tracing_wrote_byte_for_byte() {
        for r in records() {
            let (ours, theirs) = (formatted(&r), traced(&r));
            assert!(theirs.contains("\"log_type\":\"request\""), "{theirs}");
            assert!(untimed(&ours).len() > 300 || r.model.is_none(), "{ours}");
            assert_eq!(untimed(&ours), untimed(&theirs));
            assert!(ours.ends_with("}\n"), "{ours}");
            let v: serde_json::Value = serde_json::from_str(&ours).unwrap_or_default();
            assert_eq!(v["request_id"].as_str(), Some(&*r.request_id));
            assert_eq!(v["model"].as_str(), Some(r.model.as_deref().unwrap_or("-")));
        }
    }

    #[test]
    fn the_line_names_the_client_and_rounds_its_numbers() {
        let line = formatted(&records()[0]);
        for part in [
            "\"client_addr\":\"127.0.0.1:52114\"",
            "\"method\":\"POST\"",
            // The path only: a query may carry a secret.
            "\"path\":\"/v1/chat/completions\",",
            "\"user_agent\":\"OpenAI/Python 1.54.0\"",
            "\"latency_ms\":127.934,",
            "\"ttfb_ms\":0.612,",
            "\"cost_usd\":0.0003,",
        ] {
            assert!(line.contains(part), "{part} not in {line}");
        }
        assert!(!line.contains("secret"), "{line}");
        let refused = formatted(&records()[1]);
        assert!(
            refused.contains("\"client_addr\":\"-\",\"method\":\"-\""),
            "{refused}"
        );
    }

    #[test]
    fn the_timestamp_is_rfc3339_utc_with_microseconds() {
        let at = |secs: u64, micros: u64| {
            let mut out = Vec::new();
            request_log::timestamp(
                std::time::UNIX_EPOCH + Duration::from_micros(secs * 1_000_000 + micros),
                &mut out,
            );
            String::from_utf8(out).unwrap_or_default()
        };
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000000Z");
        assert_eq!(at(1_700_000_000, 123_456), "2023-11-14T22:13:20.123456Z");
        assert_eq!(at(951_782_400, 7), "2000-02-29T00:00:00.000007Z");
        assert_eq!(at(4_107_542_399, 999_999), "2100-02-28T23:59:59.999999Z");
        // The same instant as tracing's own formatter.
        let line = traced(&records()[1]);
        let theirs = &line[14..41];
        assert_eq!(theirs.len(), at(0, 0).len(), "{line}");
        assert_eq!(&theirs[10..11], "T");
    }

    proptest::proptest! {
        #[test]
        fn strings_are_escaped_as_serde_json_escapes_them(s in "\\PC*|[\\x00-\\x7f]*") {
            let mut ours = Vec::new();
            request_log::json_string(&mut ours, &s);
            let theirs = serde_json::to_string(&s).unwrap_or_default();
            proptest::prop_assert_eq!(String::from_utf8(ours).unwrap_or_default(), theirs);
        }
    }
}
