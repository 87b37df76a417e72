//! `POST /v1/messages`: Anthropic's Messages API for clients (the `anthropic` SDKs), served by
//! any upstream through the one request path.
//!
//! The caller is authenticated (the SDK sends the Tollgate key as `x-api-key`) and its body read
//! within its team's size limit ([`super::accept`]); the body is translated into the chat form
//! ([`request`]) and sent down the request path as a chat completion ([`super::forward`]), so
//! shaping, limits, routing, retries, usage and cost are exactly those of chat. The answer is translated back ([`answer`]): a JSON answer
//! whole, an error into Anthropic's error body (status kept), a stream chunk by chunk as the
//! relay hands it on. It owns no step of the path; it only speaks Anthropic at its two ends.

mod answer;
mod request;

use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use futures_util::StreamExt;
use http::{header, HeaderValue, Request, StatusCode};
use http_body_util::BodyExt;

use axum::extract::State;

use crate::error::ApiError;
use crate::state::AppState;

/// Largest error body translated (Tollgate's own errors are small).
const MAX_ERROR_BODY: usize = 64 * 1024;

/// `POST /v1/messages`.
pub async fn create(State(state): State<AppState>, req: Request<Body>) -> Response {
    let accepted = match super::accept(&state, req).await {
        Ok(a) => a,
        Err(e) => return anthropic_error(e.into_response()).await,
    };
    let (chat, stream) = match request::translate(&accepted.body) {
        Ok(t) => t,
        Err(e) => return anthropic_error(e.into_response()).await,
    };
    let resp = super::forward(&state, accepted, "messages", chat).await;
    if !resp.status().is_success() {
        return anthropic_error(resp).await;
    }
    let (mut parts, body) = resp.into_parts();
    parts.headers.remove(header::CONTENT_LENGTH);
    let sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    if stream && sse {
        let events = translate_stream(body);
        return Response::from_parts(parts, Body::from_stream(events));
    }
    let whole = match body.collect().await {
        Ok(b) => b.to_bytes(),
        Err(_) => return anthropic_error(ApiError::UpstreamInvalid.into_response()).await,
    };
    match answer::message(&whole) {
        Some(m) => {
            parts.headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            Response::from_parts(parts, Body::from(m))
        }
        None => anthropic_error(ApiError::UpstreamInvalid.into_response()).await,
    }
}

/// The OpenAI chunks of a stream as Anthropic events, as they come.
fn translate_stream(
    body: Body,
) -> impl futures_util::Stream<Item = Result<Bytes, axum::Error>> + Send {
    let state = (body.into_data_stream(), answer::Events::default(), false);
    futures_util::stream::unfold(state, |(mut body, mut events, ended)| async move {
        if ended {
            return None;
        }
        match body.next().await {
            Some(Ok(chunk)) => {
                let out = events.feed(&chunk);
                Some((Ok(out), (body, events, false)))
            }
            Some(Err(e)) => Some((Err(e), (body, events, true))),
            None => {
                let out = events.end();
                Some((Ok(out), (body, events, true)))
            }
        }
    })
}

/// An OpenAI-shaped error answer in Anthropic's shape, its status and headers kept.
async fn anthropic_error(resp: Response) -> Response {
    let (mut parts, body) = resp.into_parts();
    let raw = http_body_util::Limited::new(body, MAX_ERROR_BODY)
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let status = if parts.status.is_success() {
        StatusCode::BAD_GATEWAY
    } else {
        parts.status
    };
    parts.status = status;
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(answer::error(status, &raw)))
}
