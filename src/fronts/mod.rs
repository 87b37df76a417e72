//! Client-facing API dialects besides OpenAI's chat completions — the Responses API
//! (`POST /v1/responses`, [`responses`]) and Anthropic's Messages API (`POST /v1/messages`,
//! [`messages`]) — translated at the edge into the one internal form, a
//! chat completion request. That request then goes down the same request path as any chat
//! request ([`crate::proxy::handle`]): policy, limits, cache, routing, credentials, usage rows
//! and cost alike, whatever the upstream's provider. The answer comes back translated, streams
//! event by event.
//!
//! The caller is authenticated here, before the body is read (as the request path does), and
//! handed to the request path as an in-process caller, so a key is checked once. This module
//! owns the dialects' wire shapes; it does not choose upstreams, count limits or format errors
//! (an [`ApiError`] is answered by the error module, OpenAI-shaped).

pub mod messages;
pub mod responses;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::request::Parts;
use http::Request;

use crate::auth::{Caller, InProcess};
use crate::error::ApiError;
use crate::policy::Endpoint;
use crate::state::AppState;

/// A dialect's request, accepted: its parts, its caller and its body (bounded as a chat
/// request's body is: the team's and the server's size limit, the read deadline).
pub(crate) struct Accepted {
    pub parts: Parts,
    pub caller: Caller,
    pub body: Bytes,
}

/// Authenticate the request, then read its body within the caller's limits.
pub(crate) async fn accept(state: &AppState, req: Request<Body>) -> Result<Accepted, ApiError> {
    let snap = state.snapshot.load_full();
    let (parts, body) = req.into_parts();
    let caller = state
        .authenticate(&snap, &parts.headers, &parts.extensions)
        .await?;
    let team = caller
        .team_policy(&snap.config.teams)
        .ok_or(ApiError::Internal)?;
    let body = crate::proxy::read_body(&snap, team, body).await?;
    Ok(Accepted {
        parts,
        caller,
        body,
    })
}

/// Send a translated chat completion request down the request path as the accepted caller; the
/// chat answer (JSON, SSE or an OpenAI-shaped error) comes back for translation. `dialect` names
/// the client's API in the request's log line, trace and usage row.
pub(crate) async fn forward(
    state: &AppState,
    accepted: Accepted,
    dialect: &'static str,
    chat: Vec<u8>,
) -> Response {
    let Accepted {
        mut parts, caller, ..
    } = accepted;
    parts.headers.remove(http::header::CONTENT_LENGTH);
    parts.extensions.insert(InProcess::new(caller, None));
    parts.extensions.insert(crate::proxy::Dialect(dialect));
    let req = Request::from_parts(parts, Body::from(chat));
    crate::proxy::handle(state.clone(), Endpoint::Chat, req).await
}
