//! The export side of traces: a bounded queue between the request path and one export task,
//! and the OTLP exporter (HTTP/protobuf through hyper + rustls, or gRPC through tonic).
//!
//! Failure policy: the request path never waits on the collector. A finished span is handed to
//! the queue with `try_send`; a full queue drops it and counts it
//! (`tollgate_trace_spans_dropped_total{reason="queue_full"}`). The export task sends one batch
//! at a time, each bounded by `export_timeout`; a batch that fails or times out is dropped and
//! counted (`reason="export_failed"`), never retried (the next batch may find the collector
//! back). The SDK's own batch processor is not used: it runs its exports on a thread of its own
//! with no runtime for hyper or tonic, and reports drops only in its internal logs.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use metrics::{Counter, Label};
use opentelemetry::Context;
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig, WithTonicConfig};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{Span, SpanData, SpanExporter, SpanProcessor};
use opentelemetry_sdk::Resource;
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::config::{OtlpProtocol, TracesConfig};
use crate::secret::EnvSource;
use crate::telemetry::meters::Lazy;
use crate::telemetry::names;

/// How long the task gathers spans into a batch after the first one arrives.
const GATHER: Duration = Duration::from_millis(100);
/// Largest collector answer read (it is a small protobuf or JSON status).
const MAX_ANSWER: usize = 64 * 1024;

/// A queue slot: almost always a span; boxing it would cost an allocation per span for the
/// sake of the rare flush.
#[allow(clippy::large_enum_variant)]
enum Msg {
    Span(SpanData),
    Flush(oneshot::Sender<()>),
}

/// The counters of the export side, made once per tracer.
struct Counters {
    queue_full: Lazy<Counter>,
    export_failed: Lazy<Counter>,
    exported: Lazy<Counter>,
}

impl Counters {
    fn new() -> Counters {
        let dropped = |reason: &'static str| {
            Lazy::new(
                names::TRACE_SPANS_DROPPED,
                vec![Label::new("reason", reason)],
            )
        };
        Counters {
            queue_full: dropped("queue_full"),
            export_failed: dropped("export_failed"),
            exported: Lazy::new(names::TRACE_SPANS_EXPORTED, Vec::new()),
        }
    }
}

/// The span processor the SDK calls when a span ends: a non-blocking queue send.
pub(super) struct QueueProcessor {
    tx: mpsc::Sender<Msg>,
    counters: std::sync::Arc<Counters>,
}

impl fmt::Debug for QueueProcessor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("QueueProcessor").finish_non_exhaustive()
    }
}

impl SpanProcessor for QueueProcessor {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if self.tx.try_send(Msg::Span(span)).is_err() {
            self.counters.queue_full.get().increment(1);
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        // Synchronous in the SDK: flushing is `Queue::flush`, awaited at shutdown.
        Ok(())
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        Ok(())
    }
}

/// The handle that flushes the queue (at shutdown).
pub(super) struct Queue {
    tx: mpsc::Sender<Msg>,
}

impl Queue {
    /// Export everything queued before this call; false if that took longer than `within`.
    pub(super) async fn flush(&self, within: Duration) -> bool {
        let (done, wait) = oneshot::channel();
        let deadline = Instant::now() + within;
        let sent = tokio::time::timeout_at(deadline, self.tx.send(Msg::Flush(done))).await;
        matches!(sent, Ok(Ok(())))
            && matches!(tokio::time::timeout_at(deadline, wait).await, Ok(Ok(())))
    }
}

/// Build the exporter and start the export task on the current runtime.
pub(super) fn start(
    cfg: &TracesConfig,
    env: &dyn EnvSource,
    resource: &Resource,
) -> Result<(QueueProcessor, Queue), String> {
    let mut exporter = exporter(cfg, env)?;
    exporter.set_resource(resource);
    let runtime = tokio::runtime::Handle::try_current()
        .map_err(|_| "telemetry.traces: the export task needs a Tokio runtime".to_owned())?;
    let (tx, rx) = mpsc::channel(cfg.queue_size);
    let counters = std::sync::Arc::new(Counters::new());
    let task = Task {
        exporter,
        max_batch: cfg.max_batch,
        timeout: cfg.export_timeout.0,
        counters: counters.clone(),
    };
    runtime.spawn(task.run(rx));
    Ok((
        QueueProcessor {
            tx: tx.clone(),
            counters,
        },
        Queue { tx },
    ))
}

/// The OTLP exporter of the configured protocol.
fn exporter(
    cfg: &TracesConfig,
    env: &dyn EnvSource,
) -> Result<opentelemetry_otlp::SpanExporter, String> {
    let mut headers = Vec::with_capacity(cfg.headers.len());
    for (name, value) in &cfg.headers {
        let path = format!("telemetry.traces.headers.{name}");
        let v = value.resolve(env).map_err(|m| format!("{path}: {m}"))?;
        headers.push((name.clone(), v.expose().to_owned()));
    }
    let url = cfg.export_url();
    let timeout = cfg.export_timeout.0;
    let built = match cfg.protocol {
        OtlpProtocol::Http => opentelemetry_otlp::SpanExporter::builder()
            .with_http()
            .with_protocol(Protocol::HttpBinary)
            .with_endpoint(url)
            .with_timeout(timeout)
            .with_headers(headers.into_iter().collect())
            .with_http_client(HttpClient::new(env, timeout)?)
            .build(),
        OtlpProtocol::Grpc => {
            let mut map = http::HeaderMap::with_capacity(headers.len());
            for (name, value) in headers {
                let bad = || format!("telemetry.traces.headers.{name}: not a valid header");
                let k = http::HeaderName::from_bytes(name.as_bytes()).map_err(|_| bad())?;
                let v = http::HeaderValue::from_str(&value).map_err(|_| bad())?;
                map.insert(k, v);
            }
            let metadata =
                opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(map);
            let mut b = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_protocol(Protocol::Grpc)
                .with_endpoint(url.clone())
                .with_timeout(timeout)
                .with_metadata(metadata);
            if url.starts_with("https:") {
                use opentelemetry_otlp::tonic_types::transport::ClientTlsConfig;
                b = b.with_tls_config(ClientTlsConfig::new().with_webpki_roots());
            }
            b.build()
        }
    };
    built.map_err(|e| format!("telemetry.traces: {e}"))
}

/// The export task: gather a batch, send it within the timeout, count what was lost.
struct Task {
    exporter: opentelemetry_otlp::SpanExporter,
    max_batch: usize,
    timeout: Duration,
    counters: std::sync::Arc<Counters>,
}

impl Task {
    async fn run(self, mut rx: mpsc::Receiver<Msg>) {
        let mut failing = false;
        let mut batch = Vec::with_capacity(self.max_batch.min(1024));
        let mut flushes = Vec::new();
        while let Some(first) = rx.recv().await {
            take(first, &mut batch, &mut flushes);
            let until = Instant::now() + GATHER;
            while batch.len() < self.max_batch && flushes.is_empty() {
                match tokio::time::timeout_at(until, rx.recv()).await {
                    Ok(Some(m)) => take(m, &mut batch, &mut flushes),
                    _ => break,
                }
            }
            self.export(&mut batch, &mut failing).await;
            for f in flushes.drain(..) {
                let _ = f.send(());
            }
        }
        self.export(&mut batch, &mut failing).await;
    }

    /// Send one batch. The log says when exports start failing and when they work again (not
    /// each failure: the counter has those).
    async fn export(&self, batch: &mut Vec<SpanData>, failing: &mut bool) {
        if batch.is_empty() {
            return;
        }
        let n = batch.len() as u64;
        let spans = std::mem::take(batch);
        let error = match tokio::time::timeout(self.timeout, self.exporter.export(spans)).await {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some(format!("no answer within {:?}", self.timeout)),
        };
        match error {
            None => {
                self.counters.exported.get().increment(n);
                if std::mem::take(failing) {
                    tracing::info!("trace export works again");
                }
            }
            Some(e) => {
                self.counters.export_failed.get().increment(n);
                if !std::mem::replace(failing, true) {
                    tracing::warn!(error = %e, "trace export failing; spans are dropped and counted (tollgate_trace_spans_dropped_total)");
                }
            }
        }
    }
}

fn take(m: Msg, batch: &mut Vec<SpanData>, flushes: &mut Vec<oneshot::Sender<()>>) {
    match m {
        Msg::Span(s) => batch.push(s),
        Msg::Flush(f) => flushes.push(f),
    }
}

/// The OTLP HTTP exporter's client: hyper with the gateway's rustls setup (public roots, ring),
/// so traces add no second HTTP or TLS stack.
struct HttpClient {
    client: hyper_util::client::legacy::Client<
        hyper_rustls::HttpsConnector<HttpConnector>,
        Full<Bytes>,
    >,
    timeout: Duration,
}

impl fmt::Debug for HttpClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpClient").finish_non_exhaustive()
    }
}

impl HttpClient {
    fn new(env: &dyn EnvSource, timeout: Duration) -> Result<HttpClient, String> {
        let tls = crate::egress::client_config(None, "telemetry.traces", env)?;
        let mut tcp = HttpConnector::new();
        tcp.set_nodelay(true);
        tcp.set_connect_timeout(Some(timeout));
        tcp.enforce_http(false);
        let https = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .wrap_connector(tcp);
        let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(2)
            .build(https);
        Ok(HttpClient { client, timeout })
    }

    async fn send(
        &self,
        request: http::Request<Bytes>,
    ) -> Result<http::Response<Bytes>, opentelemetry_http::HttpError> {
        let (parts, body) = request.into_parts();
        let request = http::Request::from_parts(parts, Full::new(body));
        let exchange = async {
            let response = self.client.request(request).await?;
            let (parts, body) = response.into_parts();
            let body = Limited::new(body, MAX_ANSWER).collect().await?.to_bytes();
            Ok::<_, opentelemetry_http::HttpError>(http::Response::from_parts(parts, body))
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| "the collector did not answer in time")?
    }
}

type Sending<'a> = Pin<
    Box<
        dyn Future<Output = Result<http::Response<Bytes>, opentelemetry_http::HttpError>>
            + Send
            + 'a,
    >,
>;

// `HttpClient` is an `async_trait`; this is what its macro would write.
impl opentelemetry_http::HttpClient for HttpClient {
    fn send_bytes<'s, 'a>(&'s self, request: http::Request<Bytes>) -> Sending<'a>
    where
        's: 'a,
        Self: 'a,
    {
        Box::pin(self.send(request))
    }
}
