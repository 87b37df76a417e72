//! The upstream HTTP client every HTTP provider sends through: hyper-util's pooled legacy client
//! over hyper 1, HTTP/1.1 and HTTP/2 (by ALPN on `https`), keep-alive, `TCP_NODELAY`, the
//! upstream's connect timeout, idle pooled connections closed after [`POOL_IDLE`], HTTPS through
//! rustls with the webpki roots (the roots reqwest used before). No redirects are followed.
//!
//! It owns the client, the mapping of hyper's body to the providers' [`BodyStream`] and of its
//! errors to [`ApiError`]; building a request (URI, headers, credential) is each provider's job.
//! URIs are parsed once per upstream by the provider ([`endpoint_uri`]), never per request.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use http::Uri;
use http_body_util::{BodyExt, Full};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::{BodyError, BodyStream};
use crate::error::ApiError;

/// How long an idle pooled connection is kept.
pub const POOL_IDLE: Duration = Duration::from_secs(90);
/// Idle connections kept per upstream host.
const POOL_MAX_IDLE: usize = 1024;

/// The pooled client, generic over nothing: request bodies are whole (`Full<Bytes>`).
pub type Client = hyper_util::client::legacy::Client<HttpsConnector<HttpConnector>, Full<Bytes>>;

/// A pooled client whose connections are made within `connect_timeout`.
pub fn build(connect_timeout: Duration) -> Result<Client, String> {
    let mut tcp = HttpConnector::new();
    tcp.set_nodelay(true);
    tcp.set_connect_timeout(Some(connect_timeout));
    // The TLS layer below decides the scheme; plain `http` passes through it.
    tcp.enforce_http(false);
    let tls = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_webpki_roots(rustls::crypto::ring::default_provider())
        .map_err(|e| format!("cannot build the TLS configuration: {e}"))?
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(tcp);
    Ok(
        hyper_util::client::legacy::Client::builder(TokioExecutor::new())
            .pool_timer(TokioTimer::new())
            .timer(TokioTimer::new())
            .pool_idle_timeout(POOL_IDLE)
            .pool_max_idle_per_host(POOL_MAX_IDLE)
            .build(tls),
    )
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
/// timeout) is [`ApiError::UpstreamTimeout`]; anything else (refused, reset, TLS, a closed
/// pooled connection) is [`ApiError::UpstreamUnreachable`].
pub fn classify(e: &hyper_util::client::legacy::Error) -> ApiError {
    if is_timeout(e) {
        ApiError::UpstreamTimeout
    } else {
        ApiError::UpstreamUnreachable
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
