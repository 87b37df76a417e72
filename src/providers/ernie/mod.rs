//! The `ernie` provider: Baidu Qianfan's ERNIE chat API (wenxinworkshop v1), spoken in OpenAI's
//! chat-completions form on both sides of the gateway.
//!
//! A request goes to `{base_url}/chat/{endpoint}` (the endpoint name is the upstream's `model:`,
//! the URI parsed once per upstream) with the credential's `access_token` in the query, its body
//! translated from OpenAI's ([`request`]). The answer is translated back ([`answer`]): a whole
//! `chat.completion`, or `chat.completion.chunk` events as ERNIE's events arrive.
//!
//! The quirk this module exists for: ERNIE answers errors with HTTP 200 and
//! `{"error_code","error_msg"}` in the body, for stream requests too (a JSON body instead of
//! events, or an error event). The provider reads the whole non-stream body, or a stream's first
//! event, before it hands back an answer, and turns an error into the HTTP status it stands for
//! ([`codes`]), so the one classifier and the attempt loop see ordinary HTTP: a 110/111 is a 401
//! (renew the credential once, send once more), a QPS limit a 429, overload a 503. An error
//! event later in a stream ends it through [`crate::providers::BodyError::Reported`], which the
//! relay turns into its closing error event. Nothing here retries or knows about routing.

pub mod answer;
pub mod codes;
pub mod request;
pub mod tools;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{header, HeaderMap, HeaderValue, StatusCode, Uri};
use serde_json::{Map, Value};

use super::client::{
    body_stream, classify, endpoint_uri, json_post, with_query, Client, ClientOptions,
};
use super::sse::{data, Events};
use super::{BodyStream, UpstreamRequest, UpstreamResponse};
use crate::credentials::Placed;
use crate::error::ApiError;
use crate::openai::Endpoint;
use answer::{Chunks, Said};

/// Where Baidu serves the v1 chat API.
pub const DEFAULT_BASE_URL: &str = "https://aip.baidubce.com/rpc/2.0/ai_custom/v1/wenxinworkshop";

/// Largest whole answer (or error body) read from ERNIE; the gateway's own
/// `server.max_response_bytes` applies to the translated answer after this.
const MAX_ANSWER: usize = 16 * 1024 * 1024;

/// Headers the provider adds to the forwarded ones besides `json_post`'s: credential, host.
const ADDED_HEADERS: usize = 2;

pub struct Ernie {
    /// The upstream's name, for errors that say which hop failed.
    name: String,
    client: Client,
    /// `{base_url}/chat/{endpoint}`, parsed once.
    chat: Uri,
}

impl Ernie {
    /// The provider of upstream `name` serving ERNIE endpoint `endpoint` (e.g. `completions`).
    pub fn new(
        name: &str,
        base_url: &str,
        endpoint: &str,
        connect: ClientOptions,
    ) -> Result<Ernie, String> {
        Ok(Ernie {
            name: name.to_owned(),
            client: super::client::build(connect),
            chat: endpoint_uri(base_url, &format!("/chat/{endpoint}"))?,
        })
    }

    /// The ERNIE body for a shaped chat body: a 400 naming what cannot be translated (before
    /// anything is sent), a 400 for the endpoints ERNIE's chat API does not serve.
    pub fn body(&self, endpoint: Endpoint, json: &crate::openai::Body) -> Result<Bytes, ApiError> {
        if endpoint != Endpoint::Chat {
            return Err(ApiError::invalid(
                format!(
                    "the ernie provider serves chat completions only, not {}",
                    endpoint.label()
                ),
                None,
            ));
        }
        let t = request::translate(&fields(json))?;
        Ok(Bytes::from(t.body.to_string()))
    }

    /// Send the body [`Ernie::body`] made; the answer's model name, whether the client's stream
    /// asked for the usage chunk and the shape of a function call in the answer (legacy
    /// `function_call` when the client offered legacy `functions`) are read from the shaped body.
    pub async fn send(&self, req: UpstreamRequest<'_>) -> Result<UpstreamResponse, ApiError> {
        let model = req
            .json
            .get::<&str>("model")
            .and_then(Result::ok)
            .unwrap_or_default()
            .to_owned();
        let include_usage = req
            .json
            .get::<Value>("stream_options")
            .and_then(Result::ok)
            .and_then(|o| o.get("include_usage").and_then(Value::as_bool))
            == Some(true);
        let calls = if req.json.contains_key("functions") {
            tools::Calls::Legacy
        } else {
            tools::Calls::Tools
        };
        let placed = req.lease.map(|l| &l.placed);
        let uri = match placed {
            Some(Placed::Query(pair)) => with_query(&self.chat, pair)?,
            _ => self.chat.clone(),
        };
        let mut request = json_post(uri, req.body, req.headers, req.traceparent, ADDED_HEADERS);
        let headers = request.headers_mut();
        if let Some(Placed::Header(name, value)) = placed {
            headers.insert(name.clone(), value.clone());
        }
        let response = self
            .client
            .request(request)
            .await
            .map_err(|e| classify(&e, &self.name))?;
        let (parts, body) = response.into_parts();
        let body = body_stream(body);
        if !parts.status.is_success() {
            // A real HTTP error (a proxy in front, a 5xx page): the classifier reads it as is.
            return Ok(UpstreamResponse {
                status: parts.status,
                headers: parts.headers,
                body,
            });
        }
        if req.stream {
            let secret = req.lease.map(|l| l.value.clone());
            let chunks = Chunks::new(model, include_usage, secret).with_calls(calls);
            stream(body, chunks).await
        } else {
            whole(body, &model, calls).await
        }
    }
}

/// The request body's top-level fields as values (read once per attempt).
fn fields(json: &crate::openai::Body) -> Map<String, Value> {
    let mut out = Map::new();
    for (k, v) in json.fields() {
        let key = String::from_utf8_lossy(k).into_owned();
        out.insert(key, serde_json::from_slice(v).unwrap_or(Value::Null));
    }
    out
}

/// The 400 for a request field ERNIE cannot be told, naming it (`param`).
fn refuse(field: &str, why: &str) -> ApiError {
    ApiError::invalid(
        format!("'{field}' cannot be translated for the ernie provider: {why}"),
        Some(field),
    )
}

/// Read a body whole, bounded; `None` when it breaks or is too long.
async fn read_all(mut body: BodyStream, mut buf: BytesMut) -> Option<BytesMut> {
    while let Some(chunk) = body.next().await {
        buf.extend_from_slice(&chunk.ok()?);
        if buf.len() > MAX_ANSWER {
            return None;
        }
    }
    Some(buf)
}

/// An ERNIE error as the HTTP answer it stands for.
fn error_answer(code: i64, msg: &str) -> UpstreamResponse {
    let mapped = codes::map(code);
    let body = codes::error_body(code, msg, mapped.kind);
    UpstreamResponse {
        status: mapped.status,
        headers: codes::headers(&mapped),
        body: futures_util::stream::once(async move { Ok(body) }).boxed(),
    }
}

fn ok(content_type: &'static str, body: BodyStream) -> UpstreamResponse {
    let mut headers = HeaderMap::with_capacity(1);
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    UpstreamResponse {
        status: StatusCode::OK,
        headers,
        body,
    }
}

/// A non-stream answer: read whole, an error mapped, an answer translated. ERNIE sends a
/// non-stream answer's headers when it is ready, so its body arrives within the first-byte
/// timeout that bounds this call.
async fn whole(
    body: BodyStream,
    model: &str,
    calls: tools::Calls,
) -> Result<UpstreamResponse, ApiError> {
    let raw = read_all(body, BytesMut::new())
        .await
        .ok_or(ApiError::UpstreamUnreachable)?;
    match answer::read(&raw) {
        Some(Said::Error(code, msg)) => Ok(error_answer(code, &msg)),
        Some(Said::Answer(v)) => {
            let out = answer::completion(&v, model, calls);
            Ok(ok(
                "application/json",
                futures_util::stream::once(async move { Ok(out) }).boxed(),
            ))
        }
        None => Err(ApiError::UpstreamInvalid),
    }
}

/// A stream answer: its first event (or the JSON body sent in place of events) is read before
/// anything is handed back, so an error there is still a status the attempt loop acts on.
async fn stream(mut body: BodyStream, chunks: Chunks) -> Result<UpstreamResponse, ApiError> {
    let mut buf = BytesMut::new();
    loop {
        let first = buf.trim_ascii_start();
        if first.starts_with(b"{") {
            // JSON instead of events: an error (or nothing usable).
            let raw = read_all(body, buf)
                .await
                .ok_or(ApiError::UpstreamUnreachable)?;
            return match answer::read(&raw) {
                Some(Said::Error(code, msg)) => Ok(error_answer(code, &msg)),
                _ => Err(ApiError::UpstreamInvalid),
            };
        }
        let first = Events::new(&buf).next().map(|event| {
            let d = data(event).unwrap_or_default();
            (event.len(), answer::read(&d), d.trim_ascii().is_empty())
        });
        match first {
            Some((_, Some(Said::Error(code, msg)), _)) => return Ok(error_answer(code, &msg)),
            Some((_, _, false)) => break,
            // A comment or keep-alive before the first event: look further.
            Some((len, _, true)) => {
                let _ = buf.split_to(len);
                continue;
            }
            None => {}
        }
        if buf.len() > answer::MAX_EVENT {
            return Err(ApiError::UpstreamInvalid);
        }
        match body.next().await {
            Some(Ok(chunk)) => buf.extend_from_slice(&chunk),
            Some(Err(_)) => return Err(ApiError::UpstreamUnreachable),
            None if buf.trim_ascii().is_empty() => return Err(ApiError::UpstreamUnreachable),
            None => return Err(ApiError::UpstreamInvalid),
        }
    }
    Ok(ok(
        "text/event-stream",
        answer::translate(body, buf, chunks),
    ))
}
