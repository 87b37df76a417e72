//! The `openai` provider: any OpenAI-compatible server (vLLM, OpenAI, DeepSeek, Zhipu's
//! compatible endpoint).
//!
//! The URL is the configured base URL plus the endpoint path, never anything from the request.
//! One pooled, keep-alive HTTP client per upstream with `TCP_NODELAY` and the upstream's connect
//! timeout; the first-byte timeout is applied by the caller around [`OpenAi::send`].

use futures_util::StreamExt;
use http::HeaderValue;

use super::{BodyError, UpstreamRequest, UpstreamResponse};
use crate::config::Timeouts;
use crate::error::ApiError;
use crate::openai::Endpoint;

pub struct OpenAi {
    client: reqwest::Client,
    /// The upstream URL of each endpoint, parsed once when the config is loaded: no URL parsing
    /// (or IDNA work) per request.
    chat: reqwest::Url,
    completions: reqwest::Url,
    embeddings: reqwest::Url,
}

impl OpenAi {
    pub fn new(base_url: &str, timeouts: &Timeouts) -> Result<OpenAi, String> {
        let client = reqwest::Client::builder()
            .connect_timeout(timeouts.connect.0)
            .tcp_nodelay(true)
            .pool_idle_timeout(std::time::Duration::from_secs(90))
            .pool_max_idle_per_host(1024)
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| format!("cannot build HTTP client: {e}"))?;
        let base = base_url.trim_end_matches('/');
        let url = |e: Endpoint| {
            reqwest::Url::parse(&format!("{base}{}", e.path()))
                .map_err(|err| format!("base_url {base}: {err}"))
        };
        Ok(OpenAi {
            client,
            chat: url(Endpoint::Chat)?,
            completions: url(Endpoint::Completions)?,
            embeddings: url(Endpoint::Embeddings)?,
        })
    }

    pub async fn send(&self, req: UpstreamRequest<'_>) -> Result<UpstreamResponse, ApiError> {
        let mut url = match req.endpoint {
            Endpoint::Chat => &self.chat,
            Endpoint::Completions => &self.completions,
            Endpoint::Embeddings => &self.embeddings,
        }
        .clone();
        let mut headers = req.headers.clone();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(lease) = req.lease {
            lease.place(&mut headers, &mut url);
        }
        let mut request = reqwest::Request::new(http::Method::POST, url);
        *request.headers_mut() = headers;
        *request.body_mut() = Some(req.body.into());
        let resp = self.client.execute(request).await.map_err(classify)?;
        let status = resp.status();
        let headers = resp.headers().clone();
        let body = resp
            .bytes_stream()
            .map(|r| r.map_err(|_| BodyError::Reset))
            .boxed();
        Ok(UpstreamResponse {
            status,
            headers,
            body,
        })
    }
}

fn classify(e: reqwest::Error) -> ApiError {
    if e.is_timeout() {
        ApiError::UpstreamTimeout
    } else {
        ApiError::UpstreamUnreachable
    }
}
