//! The `openai` provider: any OpenAI-compatible server (vLLM, OpenAI, DeepSeek, Zhipu's
//! compatible endpoint).
//!
//! The URL is the configured base URL plus the endpoint path, never anything from the request:
//! one `http::Uri` per endpoint, parsed when the config is loaded. A request is built from the
//! forwarded headers, the JSON content type and the lease's ready-made credential (see
//! [`crate::credentials::Placed`]) and sent through the upstream's pooled client ([`super::client`]);
//! the first-byte timeout is applied by the caller around [`OpenAi::send`].
//!
//! Providers that speak OpenAI's body and answers at other URLs (Azure OpenAI: deployments in the
//! path, `api-version` in the query) are this same sender with their own pre-parsed URIs
//! ([`OpenAi::with_uris`]).

use http::Uri;
use http_body_util::Full;

pub use super::client::ClientOptions;
use super::client::{body_stream, classify, endpoint_uri, json_post, with_query, Client};
use super::{UpstreamRequest, UpstreamResponse};
use crate::credentials::Placed;
use crate::error::ApiError;
use crate::openai::Endpoint;

/// Headers the provider adds to the forwarded ones besides `json_post`'s: credential, host.
const ADDED_HEADERS: usize = 2;

pub struct OpenAi {
    /// The upstream's name, for errors and log lines that say which hop failed.
    name: String,
    client: Client,
    /// The upstream URI of each endpoint, parsed once: no URL parsing per request.
    chat: Uri,
    completions: Uri,
    embeddings: Uri,
}

impl OpenAi {
    /// The provider of upstream `name`; `connect` is how its connections are made (timeout,
    /// TLS, proxy), built by the caller from the upstream's config.
    pub fn new(name: &str, base_url: &str, connect: ClientOptions) -> Result<OpenAi, String> {
        OpenAi::with_uris(name, |e| endpoint_uri(base_url, e.path()), connect)
    }

    /// The sender of upstream `name` with each endpoint's URI made (once) by `uri`.
    pub fn with_uris(
        name: &str,
        uri: impl Fn(Endpoint) -> Result<Uri, String>,
        connect: ClientOptions,
    ) -> Result<OpenAi, String> {
        Ok(OpenAi {
            name: name.to_owned(),
            client: super::client::build(connect),
            chat: uri(Endpoint::Chat)?,
            completions: uri(Endpoint::Completions)?,
            embeddings: uri(Endpoint::Embeddings)?,
        })
    }

    pub async fn send(&self, req: UpstreamRequest<'_>) -> Result<UpstreamResponse, ApiError> {
        let request = self.request(req)?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| classify(&e, &self.name))?;
        let (parts, body) = response.into_parts();
        Ok(UpstreamResponse {
            status: parts.status,
            headers: parts.headers,
            body: body_stream(body),
        })
    }

    /// The upstream request: the endpoint's URI (plus a query credential), the forwarded headers
    /// copied once into a map sized for what is added, and the body as it is.
    fn request(
        &self,
        req: UpstreamRequest<'_>,
    ) -> Result<http::Request<Full<bytes::Bytes>>, ApiError> {
        let base = match req.endpoint {
            Endpoint::Chat => &self.chat,
            Endpoint::Completions => &self.completions,
            Endpoint::Embeddings => &self.embeddings,
        };
        let placed = req.lease.map(|l| &l.placed);
        let uri = match placed {
            Some(Placed::Query(pair)) => with_query(base, pair)?,
            _ => base.clone(),
        };
        let mut request = json_post(uri, req.body, req.headers, req.traceparent, ADDED_HEADERS);
        let headers = request.headers_mut();
        if let Some(Placed::Header(name, value)) = placed {
            headers.insert(name.clone(), value.clone());
        }
        Ok(request)
    }
}
