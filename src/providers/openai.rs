//! The `openai` provider: any OpenAI-compatible server (vLLM, OpenAI, DeepSeek, Zhipu's
//! compatible endpoint).
//!
//! The URL is the configured base URL plus the endpoint path, never anything from the request.
//! One pooled, keep-alive HTTP client per upstream with `TCP_NODELAY` and the upstream's connect
//! timeout; the first-byte timeout is applied by the caller around [`OpenAi::send`].

use futures_util::StreamExt;

use super::{BodyError, UpstreamRequest, UpstreamResponse};
use crate::config::Timeouts;
use crate::error::ApiError;

pub struct OpenAi {
    client: reqwest::Client,
    /// Base URL without a trailing slash.
    base_url: String,
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
        Ok(OpenAi {
            client,
            base_url: base_url.trim_end_matches('/').to_owned(),
        })
    }

    pub async fn send(&self, req: UpstreamRequest<'_>) -> Result<UpstreamResponse, ApiError> {
        let url = format!("{}{}", self.base_url, req.endpoint.path());
        let mut builder = self
            .client
            .post(url)
            .headers(req.headers.clone())
            .header(http::header::CONTENT_TYPE, "application/json")
            .body(req.body);
        if let Some(lease) = req.lease {
            builder = lease.apply(builder);
        }
        let resp = builder.send().await.map_err(classify)?;
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
