//! `POST /v1/messages`: Anthropic's Messages API for clients (the `anthropic` SDKs), served by
//! any upstream through the one request path.
//!
//! The caller is authenticated (the SDK sends the Tollgate key as `x-api-key`) and its body read
//! within its team's size limit; the body is translated into the chat form ([`request`]) and
//! handed to [`super::handle`] as a chat completion, so shaping, limits, routing, retries, usage
//! and cost are exactly those of chat. The answer is translated back ([`answer`]): a JSON answer
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

use crate::error::ApiError;
use crate::policy::Endpoint;
use crate::state::AppState;

/// Largest error body translated (Tollgate's own errors are small).
const MAX_ERROR_BODY: usize = 64 * 1024;

pub async fn handle(state: AppState, req: Request<Body>) -> Response {
    let (mut parts, body) = req.into_parts();
    let (raw, stream) = match read(&state, &parts, body).await {
        Ok(r) => r,
        Err(e) => return anthropic_error(e.into_response()).await,
    };
    parts.headers.remove(header::CONTENT_LENGTH);
    let req = Request::from_parts(parts, Body::from(raw));
    let resp = super::handle(state, Endpoint::Chat, req).await;
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

/// Authenticate, read the body within the team's limit, translate it.
async fn read(
    state: &AppState,
    parts: &http::request::Parts,
    body: Body,
) -> Result<(Bytes, bool), ApiError> {
    let snap = state.snapshot.load_full();
    let caller = state
        .authenticate(&snap, &parts.headers, &parts.extensions)
        .await?;
    let team = caller
        .team_policy(&snap.config.teams)
        .ok_or(ApiError::Internal)?;
    let limit = team
        .max_body_bytes
        .unwrap_or(usize::MAX)
        .min(snap.config.server.max_body_bytes);
    let raw = super::read_body(body, limit, snap.config.server.body_read_timeout.0).await?;
    let (chat, stream) = request::translate(&raw)?;
    Ok((Bytes::from(chat), stream))
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
