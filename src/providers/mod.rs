//! Provider kinds: how to talk to one kind of upstream.
//!
//! One file per kind. Each builds the upstream request from the shaped body, sends it, and hands
//! back an [`UpstreamResponse`] whose body is a stream of bytes, so the relay treats an HTTP
//! upstream, a translated one (Anthropic) and the in-process mock alike; translating providers
//! also build the upstream body ([`Provider::body`]). Usage parsing for OpenAI-shaped bodies lives here too.
//! HTTP providers send through the one pooled client of [`client`].
//! Providers do not retry, choose upstreams or touch client state: that is the proxy's job.

pub mod anthropic;
pub mod azure;
pub mod client;
pub mod ernie;
pub mod mock;
pub mod openai;
pub mod reading;
pub mod sse;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use http::{HeaderMap, StatusCode};
use serde::Deserialize;

use crate::credentials::Lease;
use crate::error::ApiError;
pub use crate::openai::{Endpoint, Usage};

/// Why an upstream body ended early.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BodyError {
    /// The connection was reset or the body was cut.
    Reset,
    /// A translated stream ended before its closing event, or in the middle of an event.
    Cut,
    /// One event of a translated stream grew past the translator's bound.
    Overlong,
    /// The upstream reported an error inside its stream (an in-band error event a provider
    /// read): the OpenAI-shaped error body the client's stream ends with.
    Reported(Bytes),
}

pub type BodyStream = BoxStream<'static, Result<Bytes, BodyError>>;

/// An upstream's answer: status and headers have arrived, the body streams.
pub struct UpstreamResponse {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: BodyStream,
}

/// One request to send upstream.
pub struct UpstreamRequest<'a> {
    pub endpoint: Endpoint,
    /// The shaped JSON body, serialized once.
    pub body: Bytes,
    pub stream: bool,
    /// Client headers from the allowlist, plus `x-request-id`.
    pub headers: &'a HeaderMap,
    pub lease: Option<&'a Lease>,
    /// The parsed body, for providers that answer in process.
    pub json: &'a crate::openai::Body,
    /// W3C `traceparent` of the attempt's span (traces on), in place of any forwarded one.
    pub traceparent: Option<http::HeaderValue>,
}

pub enum Provider {
    // Boxed: the pooled client and the pre-parsed URIs make it large.
    OpenAi(Box<openai::OpenAi>),
    Mock(mock::Mock),
    Anthropic(Box<anthropic::Anthropic>),
    Ernie(Box<ernie::Ernie>),
    /// Azure OpenAI: the OpenAI sender with deployment URIs ([`azure`]).
    Azure(Box<openai::OpenAi>),
}

impl Provider {
    /// The provider's name for traces (`gen_ai.system`).
    pub fn system(&self) -> &'static str {
        match self {
            Provider::OpenAi(_) => "openai",
            Provider::Mock(_) => "mock",
            Provider::Anthropic(_) => "anthropic",
            Provider::Ernie(_) => "ernie",
            Provider::Azure(_) => "az.ai.openai",
        }
    }

    /// The upstream body for the shaped request: the OpenAI body as it is, or its translation
    /// (a 400 naming what cannot be translated, before anything is sent).
    pub fn body(&self, endpoint: Endpoint, json: &crate::openai::Body) -> Result<Bytes, ApiError> {
        match self {
            Provider::Anthropic(p) => p.body(endpoint, json),
            Provider::Ernie(p) => p.body(endpoint, json),
            Provider::OpenAi(_) | Provider::Mock(_) | Provider::Azure(_) => Ok(json.to_bytes()),
        }
    }

    /// Send the request; resolves when the response headers arrived.
    pub async fn send(&self, req: UpstreamRequest<'_>) -> Result<UpstreamResponse, ApiError> {
        match self {
            Provider::OpenAi(p) | Provider::Azure(p) => p.send(req).await,
            Provider::Mock(p) => Ok(p.answer(req).await),
            Provider::Anthropic(p) => p.send(req).await,
            Provider::Ernie(p) => p.send(req).await,
        }
    }
}

#[derive(Deserialize)]
struct AnswerProbe<'a> {
    #[serde(default)]
    usage: Option<Usage>,
    #[serde(borrow, default)]
    model: crate::openai::model::ModelStr<'a>,
}

/// Parse a whole JSON object once: an error when it is not one (cut, malformed), else its
/// `usage` if it has one and where its top-level `model` string lies (for the relay to put the
/// client-facing name there). Validation, usage capture and the model's place in a single pass.
#[allow(clippy::type_complexity)]
pub fn read_answer(
    json: &[u8],
) -> Result<(Option<Usage>, Option<std::ops::Range<usize>>), serde_json::Error> {
    serde_json::from_slice::<AnswerProbe>(json).map(|p| (p.usage, p.model.span_in(json)))
}
