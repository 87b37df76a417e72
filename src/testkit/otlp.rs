//! Mock OTLP collector: receives trace exports over HTTP/protobuf (`POST /v1/traces`) and gRPC
//! (`TraceService/Export`, h2c) on two loopback ports, decodes them with the collector's own
//! protobuf types (`opentelemetry-proto`) and keeps every span, flattened, for tests to read.
//!
//! A knob makes it misbehave the way a collector can: refuse each export (HTTP 503 / gRPC
//! `UNAVAILABLE`) or never answer. It owns nothing of Tollgate's: it only checks what arrives.

use std::collections::BTreeMap;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use http::{header, StatusCode};
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::common::v1::KeyValue;
use prost::Message;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use super::{lock, wait_for, ServerHandle};

/// How the collector answers an export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CollectorMode {
    /// Keep the spans and answer success.
    Accept,
    /// Answer HTTP 503 / gRPC `UNAVAILABLE`, keeping nothing.
    Refuse,
    /// Never answer (until the exporter gives up or the collector stops).
    Hang,
}

/// One received span, flattened: ids in lowercase hex (the parent's empty for a root span),
/// attribute values as text (integers in decimal, booleans `true`/`false`).
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    /// `http` or `grpc`: how it arrived.
    pub protocol: &'static str,
    /// The resource's `service.name`.
    pub service_name: Option<String>,
    pub trace_id: String,
    pub span_id: String,
    pub parent_span_id: String,
    pub name: String,
    /// 2 = server, 3 = client (OTLP's `SpanKind`).
    pub kind: i32,
    pub attributes: BTreeMap<String, String>,
    /// Event names in order.
    pub events: Vec<String>,
    /// The span's status is an error.
    pub error: bool,
}

impl ReceivedSpan {
    pub fn attr(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

struct Shared {
    spans: Mutex<Vec<ReceivedSpan>>,
    mode: Mutex<CollectorMode>,
    /// Export calls received, whatever their answer.
    exports: AtomicUsize,
    /// The headers (gRPC: metadata) of the last export call.
    last_headers: Mutex<http::HeaderMap>,
    notify: Notify,
    cancel: CancellationToken,
}

impl Shared {
    /// Keep the request's spans, or not, as the mode says; `Err` for a refusal.
    async fn receive(
        &self,
        protocol: &'static str,
        headers: http::HeaderMap,
        req: ExportTraceServiceRequest,
    ) -> Result<(), ()> {
        *lock(&self.last_headers) = headers;
        self.exports.fetch_add(1, Ordering::SeqCst);
        self.notify.notify_waiters();
        let mode = *lock(&self.mode);
        match mode {
            CollectorMode::Refuse => return Err(()),
            CollectorMode::Hang => {
                self.cancel.cancelled().await;
                return Err(());
            }
            CollectorMode::Accept => {}
        }
        let mut out = Vec::new();
        for rs in req.resource_spans {
            let service_name = rs.resource.as_ref().and_then(|r| {
                r.attributes
                    .iter()
                    .find(|kv| kv.key == "service.name")
                    .map(text)
            });
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(ReceivedSpan {
                        protocol,
                        service_name: service_name.clone(),
                        trace_id: hex::encode(&s.trace_id),
                        span_id: hex::encode(&s.span_id),
                        parent_span_id: hex::encode(&s.parent_span_id),
                        name: s.name,
                        kind: s.kind,
                        attributes: s
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), text(kv)))
                            .collect(),
                        events: s.events.into_iter().map(|e| e.name).collect(),
                        // OTLP status code 2 = error.
                        error: s.status.is_some_and(|st| st.code == 2),
                    });
                }
            }
        }
        lock(&self.spans).extend(out);
        self.notify.notify_waiters();
        Ok(())
    }
}

/// An attribute value as text.
fn text(kv: &KeyValue) -> String {
    match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
        Some(AnyValue::StringValue(s)) => s.clone(),
        Some(AnyValue::BoolValue(b)) => b.to_string(),
        Some(AnyValue::IntValue(i)) => i.to_string(),
        Some(AnyValue::DoubleValue(d)) => d.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

/// The mock collector: an HTTP/protobuf and a gRPC listener sharing one span list.
pub struct MockCollector {
    shared: Arc<Shared>,
    http: ServerHandle,
    grpc: ServerHandle,
}

impl MockCollector {
    pub async fn start() -> io::Result<MockCollector> {
        let cancel = CancellationToken::new();
        let shared = Arc::new(Shared {
            spans: Mutex::new(Vec::new()),
            mode: Mutex::new(CollectorMode::Accept),
            exports: AtomicUsize::new(0),
            last_headers: Mutex::new(http::HeaderMap::new()),
            notify: Notify::new(),
            cancel: cancel.clone(),
        });
        let http_router = Router::new()
            .route("/v1/traces", post(http_export))
            .with_state(shared.clone());
        let http = ServerHandle::spawn(http_router, cancel.clone()).await?;
        let grpc_router =
            tonic::service::Routes::new(TraceServiceServer::new(Grpc(shared.clone())))
                .into_axum_router();
        let grpc = ServerHandle::spawn(grpc_router, cancel).await?;
        Ok(MockCollector { shared, http, grpc })
    }

    /// `http://127.0.0.1:PORT`: the HTTP/protobuf endpoint (the exporter adds `/v1/traces`).
    pub fn http_endpoint(&self) -> String {
        format!("http://{}", self.http.addr())
    }

    /// `http://127.0.0.1:PORT`: the gRPC endpoint.
    pub fn grpc_endpoint(&self) -> String {
        format!("http://{}", self.grpc.addr())
    }

    pub fn set_mode(&self, mode: CollectorMode) {
        *lock(&self.shared.mode) = mode;
    }

    /// Every span kept so far, in arrival order.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        lock(&self.shared.spans).clone()
    }

    /// Export calls received so far (kept, refused or left hanging).
    pub fn exports(&self) -> usize {
        self.shared.exports.load(Ordering::SeqCst)
    }

    /// The headers (gRPC: metadata) of the last export call.
    pub fn last_headers(&self) -> http::HeaderMap {
        lock(&self.shared.last_headers).clone()
    }

    /// Wait until `cond` holds over the spans kept; false if `timeout` passes first.
    pub async fn wait_spans(
        &self,
        timeout: Duration,
        cond: impl Fn(&[ReceivedSpan]) -> bool,
    ) -> bool {
        wait_for(&self.shared.notify, timeout, || {
            cond(&lock(&self.shared.spans))
        })
        .await
    }

    /// Wait until at least `n` export calls arrived.
    pub async fn wait_exports(&self, n: usize, timeout: Duration) -> bool {
        wait_for(&self.shared.notify, timeout, || self.exports() >= n).await
    }

    pub async fn shutdown(&self) {
        self.http.shutdown().await;
        self.grpc.shutdown().await;
    }
}

async fn http_export(
    State(shared): State<Arc<Shared>>,
    headers: http::HeaderMap,
    body: Bytes,
) -> Response {
    let answer = |status: StatusCode, body: Vec<u8>| {
        Response::builder()
            .status(status)
            .header(header::CONTENT_TYPE, "application/x-protobuf")
            .body(Body::from(body))
            .unwrap_or_default()
    };
    let Ok(req) = ExportTraceServiceRequest::decode(body) else {
        return answer(StatusCode::BAD_REQUEST, Vec::new());
    };
    match shared.receive("http", headers, req).await {
        Ok(()) => answer(
            StatusCode::OK,
            ExportTraceServiceResponse::default().encode_to_vec(),
        ),
        Err(()) => answer(StatusCode::SERVICE_UNAVAILABLE, Vec::new()),
    }
}

/// The gRPC side.
struct Grpc(Arc<Shared>);

type Exported<'a> = Pin<
    Box<
        dyn Future<Output = Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status>>
            + Send
            + 'a,
    >,
>;

// `TraceService` is an `async_trait`; this is what its macro would write.
impl TraceService for Grpc {
    fn export<'s, 'a>(&'s self, request: tonic::Request<ExportTraceServiceRequest>) -> Exported<'a>
    where
        's: 'a,
        Self: 'a,
    {
        let shared = self.0.clone();
        Box::pin(async move {
            let headers = request.metadata().clone().into_headers();
            match shared.receive("grpc", headers, request.into_inner()).await {
                Ok(()) => Ok(tonic::Response::new(ExportTraceServiceResponse::default())),
                Err(()) => Err(tonic::Status::unavailable("the mock collector refuses")),
            }
        })
    }
}
