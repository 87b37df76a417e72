//! The upstream HTTP client every HTTP provider sends through: hyper-util's pooled legacy client
//! over hyper 1, HTTP/1.1 and HTTP/2 (by ALPN on `https`), keep-alive, `TCP_NODELAY`, the
//! upstream's connect timeout, idle pooled connections closed after [`POOL_IDLE`], HTTPS through
//! rustls with the upstream's TLS configuration ([`crate::egress::client_config`]: the public
//! roots plus a private CA, a client certificate, a server name, a minimum version), through the
//! egress proxy (a CONNECT tunnel) when one applies. No redirects are followed.
//!
//! It owns the client, the mapping of hyper's body to the providers' [`BodyStream`] and of its
//! errors to [`ApiError`]; building a request (URI, headers, credential) is each provider's job.
//! URIs are parsed once per upstream by the provider ([`endpoint_uri`]), never per request; the
//! TLS configuration and the proxy decision are made once per upstream, when its client is built.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue, Method, Uri};
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tower::Service;

use super::{BodyError, BodyStream};
use crate::egress::ProxyRoute;
use crate::error::ApiError;

/// How long an idle pooled connection is kept.
pub const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream host.
const POOL_MAX_IDLE: usize = 1024;

/// The pooled client, generic over nothing: request bodies are whole (`Full<Bytes>`).
pub type Client = hyper_util::client::legacy::Client<HttpsConnector<Egress>, Full<Bytes>>;

/// How one upstream's connections are made, decided when its client is built.
pub struct ClientOptions {
    pub connect_timeout: Duration,
    /// The TLS configuration (ALPN is set here).
    pub tls: rustls::ClientConfig,
    /// Sent as SNI (and checked, by the configuration's verifier) instead of the URL's host.
    pub server_name: Option<rustls::pki_types::ServerName<'static>>,
    /// The egress proxy, if the upstream's host goes through one.
    pub proxy: Option<ProxyRoute>,
}

/// A pooled client for one upstream.
pub fn build(opts: ClientOptions) -> Client {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(opts.connect_timeout));
    // The TLS layer above decides the scheme; plain `http` passes through it.
    tcp.enforce_http(false);
    let egress = match opts.proxy {
        None => Egress::Direct(tcp),
        Some(route) => Egress::Tunnel(tcp, std::sync::Arc::new(route)),
    };
    let builder = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(opts.tls)
        .https_or_http();
    let builder = match opts.server_name {
        Some(name) => {
            builder.with_server_name_resolver(hyper_rustls::FixedServerNameResolver::new(name))
        }
        None => builder,
    };
    let tls = builder.enable_http1().enable_http2().wrap_connector(egress);
    hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .pool_timer(TokioTimer::new())
        .timer(TokioTimer::new())
        .pool_idle_timeout(POOL_IDLE)
        .pool_max_idle_per_host(POOL_MAX_IDLE)
        .build(tls)
}

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type Connecting =
    Pin<Box<dyn Future<Output = Result<TokioIo<tokio::net::TcpStream>, BoxError>> + Send>>;

/// The TCP connection under TLS: straight to the upstream, or a CONNECT tunnel through the
/// egress proxy (for `http` upstreams too). Called once per new connection, not per request.
#[derive(Clone)]
pub enum Egress {
    Direct(HttpConnector),
    /// The connector reaches the proxy; the tunnel is opened by [`crate::egress::tunnel`].
    Tunnel(HttpConnector, std::sync::Arc<ProxyRoute>),
}

impl Service<Uri> for Egress {
    type Response = TokioIo<tokio::net::TcpStream>;
    type Error = BoxError;
    type Future = Connecting;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        match self {
            Egress::Direct(c) => c.poll_ready(cx).map_err(Into::into),
            Egress::Tunnel(c, _) => c.poll_ready(cx).map_err(Into::into),
        }
    }

    fn call(&mut self, dst: Uri) -> Self::Future {
        match self {
            Egress::Direct(c) => {
                let f = c.call(dst);
                Box::pin(async move { f.await.map_err(Into::into) })
            }
            Egress::Tunnel(c, route) => {
                let connecting = c.call(route.uri.clone());
                let route = route.clone();
                Box::pin(async move {
                    let authority = authority(&dst)?;
                    let tcp = connecting
                        .await
                        .map_err(|e| crate::egress::proxy_unreachable(e.into()))?
                        .into_inner();
                    let tcp = crate::egress::tunnel(tcp, &authority, route.auth.as_ref()).await?;
                    Ok(TokioIo::new(tcp))
                })
            }
        }
    }
}

/// `host:port` of the destination for the CONNECT line, the scheme's port when none is written.
fn authority(dst: &Uri) -> Result<String, BoxError> {
    let host = dst.host().ok_or("the upstream URL has no host")?;
    let port = dst
        .port_u16()
        .unwrap_or(if dst.scheme_str() == Some("http") {
            80
        } else {
            443
        });
    Ok(format!("{host}:{port}"))
}

/// `base` plus `path`, parsed once: what a provider keeps per endpoint. Parsed by the same URL
/// parser as the config check (IDNA hosts, percent-encoding), then held as an `http::Uri`.
pub fn endpoint_uri(base: &str, path: &str) -> Result<Uri, String> {
    let base = base.trim_end_matches('/');
    let url = reqwest::Url::parse(&format!("{base}{path}"))
        .map_err(|e| format!("base_url {base}: {e}"))?;
    if !matches!(url.scheme(), "http" | "https") {
        return Err(format!("base_url {base}: must be an http or https URL"));
    }
    Uri::try_from(url.as_str()).map_err(|e| format!("base_url {base}: {e}"))
}

/// `uri` with `pair` (already `name=value`, form-encoded) added to its query: for credentials
/// carried in the URL. The scheme and authority are shared, not parsed again.
pub fn with_query(uri: &Uri, pair: &[u8]) -> Result<Uri, ApiError> {
    let pq = uri.path_and_query().map_or("/", |p| p.as_str());
    let sep: &[u8] = if uri.query().is_some() { b"&" } else { b"?" };
    let mut buf = Vec::with_capacity(pq.len() + 1 + pair.len());
    buf.extend_from_slice(pq.as_bytes());
    buf.extend_from_slice(sep);
    buf.extend_from_slice(pair);
    let mut parts = uri.clone().into_parts();
    parts.path_and_query = Some(
        http::uri::PathAndQuery::from_maybe_shared(Bytes::from(buf))
            .map_err(|_| ApiError::Internal)?,
    );
    Uri::from_parts(parts).map_err(|_| ApiError::Internal)
}

/// The upstream's body as a stream of data chunks (trailers are skipped); a body that fails
/// (reset, cut) ends with [`BodyError::Reset`].
pub fn body_stream(body: hyper::body::Incoming) -> BodyStream {
    body.into_data_stream()
        .map(|r| r.map_err(|_| BodyError::Reset))
        .boxed()
}

/// What a failed send means for the client: a timeout anywhere in the error's chain (the connect
/// timeout) is [`ApiError::UpstreamTimeout`]; a TLS failure or a refusal by the egress proxy is
/// [`ApiError::UpstreamConnect`] naming `upstream`, the hop and the cause (and logged once here,
/// with the error chain, which holds no secret); anything else (refused, reset, a closed pooled
/// connection) is [`ApiError::UpstreamUnreachable`].
pub fn classify(e: &hyper_util::client::legacy::Error, upstream: &str) -> ApiError {
    if is_timeout(e) {
        return ApiError::UpstreamTimeout;
    }
    match crate::egress::failure(e) {
        Some(failure) => {
            tracing::warn!(
                upstream,
                hop = if failure.is_proxy() { "proxy" } else { "tls" },
                cause = failure.label(),
                error = %Chain(e),
                "cannot connect to the upstream: {failure}"
            );
            ApiError::UpstreamConnect {
                upstream: upstream.to_owned(),
                failure,
            }
        }
        None => ApiError::UpstreamUnreachable,
    }
}

/// An error and its sources on one line.
struct Chain<'a>(&'a (dyn std::error::Error + 'static));

impl std::fmt::Display for Chain<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.0)?;
        let mut next = self.0.source();
        while let Some(e) = next {
            write!(f, ": {e}")?;
            next = e.source();
        }
        Ok(())
    }
}

fn is_timeout(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(e);
    while let Some(err) = next {
        if let Some(io) = err.downcast_ref::<std::io::Error>() {
            if io.kind() == std::io::ErrorKind::TimedOut {
                return true;
            }
        }
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_timeout)
        {
            return true;
        }
        next = err.source();
    }
    false
}

/// The W3C trace context header.
const TRACEPARENT: http::HeaderName = http::HeaderName::from_static("traceparent");

/// The request every HTTP provider sends: a JSON `POST` of `body` to `uri` with the client's
/// forwarded headers, `content-type` and `accept` set, the attempt's `traceparent` when traces
/// are on, and room for `more` headers of the provider's own.
pub fn json_post(
    uri: Uri,
    body: Bytes,
    forwarded: &HeaderMap,
    traceparent: Option<HeaderValue>,
    more: usize,
) -> http::Request<Full<Bytes>> {
    let mut request = http::Request::new(Full::new(body));
    *request.method_mut() = Method::POST;
    *request.uri_mut() = uri;
    let headers = request.headers_mut();
    headers.reserve(forwarded.len() + 3 + more);
    for (name, value) in forwarded {
        headers.append(name.clone(), value.clone());
    }
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(header::ACCEPT, HeaderValue::from_static("*/*"));
    if let Some(tp) = traceparent {
        headers.insert(TRACEPARENT, tp);
    }
    request
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoint_uris_are_absolute_http_urls() {
        let u = endpoint_uri("http://127.0.0.1:9/v1/", "/chat/completions").unwrap();
        assert_eq!(u.to_string(), "http://127.0.0.1:9/v1/chat/completions");
        assert!(endpoint_uri("127.0.0.1:9", "/x").is_err());
        assert!(endpoint_uri("ftp://h/v1", "/x").is_err());
        let spaced = endpoint_uri("http://h/v 1", "/x").unwrap();
        assert_eq!(spaced.path(), "/v%201/x");
    }

    #[test]
    fn a_query_credential_is_appended() {
        let u = endpoint_uri("https://h/v1", "/chat/completions").unwrap();
        let q = with_query(&u, b"access_token=a%2Bb").unwrap();
        assert_eq!(
            q.to_string(),
            "https://h/v1/chat/completions?access_token=a%2Bb"
        );
        let u = endpoint_uri("https://h/v1?api-version=2", "").unwrap();
        let q = with_query(&u, b"k=v").unwrap();
        assert_eq!(q.to_string(), "https://h/v1?api-version=2&k=v");
    }
}
