//! The `anthropic` provider: Anthropic's Messages API (`POST {base_url}/v1/messages`) behind
//! the OpenAI chat-completions form the request path speaks.
//!
//! Both ways are translated here and nowhere else: the shaped chat body becomes a Messages
//! request ([`request`]) before the attempt sends it, so a field that cannot be translated is a
//! 400 naming it before any upstream saw the prompt; the answer's body is wrapped so the proxy
//! reads OpenAI bytes: a Message or an error read whole ([`answer`]), an event stream translated
//! event by event ([`stream`]). Statuses and headers are the upstream's, so the one reading of
//! an answer ([`super::reading`]) classifies Anthropic's statuses as any other (529 retryable,
//! 401 renewing the credential once).
//!
//! The credential goes in `x-api-key` whatever its `placement` (Anthropic reads the key nowhere
//! else), with `anthropic-version` from the config. Only chat completions are served.

pub mod answer;
pub mod request;
pub mod stream;

use bytes::Bytes;
use http::{header, HeaderName, HeaderValue, Uri};
use http_body_util::Full;

use super::client::{body_stream, classify, endpoint_uri, Client, ClientOptions};
use super::{UpstreamRequest, UpstreamResponse};
use crate::error::ApiError;
use crate::openai::{Body, Endpoint};

/// Where Anthropic's API is when the config names no `base_url`.
pub const DEFAULT_BASE_URL: &str = "https://api.anthropic.com";
/// The `anthropic-version` sent when the config names none.
pub const DEFAULT_VERSION: &str = "2023-06-01";

const X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");
const ANTHROPIC_VERSION: HeaderName = HeaderName::from_static("anthropic-version");

pub struct Anthropic {
    /// The upstream's name, for errors and log lines that say which hop failed.
    name: String,
    client: Client,
    /// `{base_url}/v1/messages`, parsed once.
    messages: Uri,
    version: HeaderValue,
}

impl Anthropic {
    /// The provider of upstream `name`: `base_url` without `/v1` (the default:
    /// [`DEFAULT_BASE_URL`]), `version` the `anthropic-version` (default [`DEFAULT_VERSION`]).
    pub fn new(
        name: &str,
        base_url: &str,
        version: Option<&str>,
        connect: ClientOptions,
    ) -> Result<Anthropic, String> {
        let version = version.unwrap_or(DEFAULT_VERSION);
        Ok(Anthropic {
            name: name.to_owned(),
            client: super::client::build(connect),
            messages: endpoint_uri(base_url, "/v1/messages")?,
            version: HeaderValue::from_str(version)
                .map_err(|_| format!("anthropic_version {version:?} is not a header value"))?,
        })
    }

    /// The Messages request body for a shaped chat body; a 400 naming what cannot be
    /// translated, a 404 for endpoints Anthropic does not have.
    pub fn body(&self, endpoint: Endpoint, json: &Body) -> Result<Bytes, ApiError> {
        if endpoint != Endpoint::Chat {
            return Err(ApiError::invalid(
                format!(
                    "the upstream '{}' speaks Anthropic's Messages API: only chat completions \
                     are served",
                    self.name
                ),
                None,
            ));
        }
        request::translate(json).map(Bytes::from)
    }

    pub async fn send(&self, req: UpstreamRequest<'_>) -> Result<UpstreamResponse, ApiError> {
        let include_usage = req
            .json
            .get::<serde_json::Value>("stream_options")
            .and_then(Result::ok)
            .and_then(|o| o.get("include_usage").and_then(serde_json::Value::as_bool))
            == Some(true);
        let request = self.request(req)?;
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| classify(&e, &self.name))?;
        let (mut parts, body) = response.into_parts();
        let body = body_stream(body);
        let status = parts.status;
        let sse = parts
            .headers
            .get(header::CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.starts_with("text/event-stream"));
        // The translated body has another length.
        parts.headers.remove(header::CONTENT_LENGTH);
        let body: super::BodyStream = if !status.is_success() {
            set_json(&mut parts.headers);
            Box::pin(answer::Whole::new(body, answer::Kind::Error(status)))
        } else if sse {
            Box::pin(stream::Translate::new(body, include_usage))
        } else {
            set_json(&mut parts.headers);
            Box::pin(answer::Whole::new(body, answer::Kind::Message))
        };
        Ok(UpstreamResponse {
            status,
            headers: parts.headers,
            body,
        })
    }

    fn request(&self, req: UpstreamRequest<'_>) -> Result<http::Request<Full<Bytes>>, ApiError> {
        let mut request = super::client::json_post(
            self.messages.clone(),
            req.body,
            req.headers,
            req.traceparent,
            4,
        );
        let headers = request.headers_mut();
        headers.insert(ANTHROPIC_VERSION, self.version.clone());
        if let Some(lease) = req.lease {
            let mut key =
                HeaderValue::from_str(lease.value.expose()).map_err(|_| ApiError::Internal)?;
            key.set_sensitive(true);
            headers.insert(X_API_KEY, key);
        }
        Ok(request)
    }
}

fn set_json(headers: &mut http::HeaderMap) {
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
}
