//! The look-up step on the request path: ask the response cache ([`crate::cache`]) for the
//! shaped request, answer a hit, and carry a miss's fill to the relay.
//!
//! A hit is answered like the live answer it stands for: the JSON body, or the stream's events
//! (the usage chunk only when the client asked for it) with the SSE content type. It is
//! accounted as a request (rate limits counted it at admission) with no tokens and no cost, its
//! usage row marked `cache_hit`. Every answer of a model with a cache says what happened in
//! `x-tollgate-cache` (and `x-tollgate-cache-tier` on a hit). This module owns no cache state.

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, StatusCode};

use super::ledger::Ledger;
use crate::cache::{self, Fill, Hit, Lookup, Status};
use crate::config::TeamConfig;
use crate::openai::{Body as JsonBody, Endpoint};
use crate::policy::Shaped;
use crate::state::Snapshot;

/// What the look-up step decided.
pub(super) enum Looked {
    /// The model has no cache.
    Off,
    /// Answered from the cache.
    Hit(Hit),
    /// Go upstream; write the answer through the fill if there is one.
    Go(Status, Option<Fill>),
}

/// look up: the cache's answer for the shaped request, or what to do with the upstream's.
pub(super) async fn look_up(
    snap: &Snapshot,
    endpoint: Endpoint,
    team_name: &str,
    team: &TeamConfig,
    shaped: &Shaped,
    json: &JsonBody,
    headers: &HeaderMap,
) -> Looked {
    if !snap.cache.covers(&shaped.model) {
        return Looked::Off;
    }
    let req = cache::Request {
        endpoint,
        model: &shaped.model,
        team: team_name,
        team_config: team.cache.as_ref(),
        stream: shaped.stream,
        body: json,
        directives: cache::Directives::read(headers),
    };
    match snap.cache.look_up(&req).await {
        Lookup::Off => Looked::Off,
        Lookup::Bypass => Looked::Go(Status::Bypass, None),
        Lookup::Hit(h) => Looked::Hit(h),
        Lookup::Miss(f) => Looked::Go(Status::Miss, Some(f)),
        Lookup::Refresh(f) => Looked::Go(Status::Refresh, Some(f)),
    }
}

/// Answer a hit; the ledger accounts it (no tokens, no cost) as it drops here.
pub(super) fn serve(
    snap: &Snapshot,
    hit: Hit,
    include_usage: bool,
    mut ledger: Ledger,
) -> Response {
    let rate = ledger.rate_headers().copied();
    let e = &hit.entry;
    if let (Some(u), Some(price)) = (e.usage, snap.limiter.prices().get(&e.model)) {
        snap.cache.saved(price.cost_of(u) as f64 / 1e9);
    }
    ledger.cache_hit();
    ledger.cache_status(Status::Hit.label());
    ledger.status(200);
    ledger.first_byte();
    ledger.finish();
    let pieces = e.replay(include_usage);
    let (body, content_type) = match e.form {
        cache::Form::Json => (
            Body::from(pieces.into_iter().next().unwrap_or_default()),
            "application/json",
        ),
        cache::Form::Sse => {
            let chunks = futures_util::stream::iter(
                pieces
                    .into_iter()
                    .map(Ok::<Bytes, std::convert::Infallible>),
            );
            (Body::from_stream(chunks), "text/event-stream")
        }
    };
    let mut resp = Response::new(body);
    *resp.status_mut() = StatusCode::OK;
    let h = resp.headers_mut();
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    h.insert(cache::X_CACHE, HeaderValue::from_static("hit"));
    h.insert(cache::X_CACHE_TIER, HeaderValue::from_static(hit.tier));
    h.insert(super::relay::X_ATTEMPTS, HeaderValue::from(0));
    if let (cache::Form::Json, Some(u)) = (e.form, e.usage) {
        // A hit costs nothing; the usage is the cached answer's own.
        super::ledger::cost_headers(h, 0, u);
    }
    if let Some(rate) = rate {
        rate.apply(h);
    }
    resp
}

/// Say what the cache did on a relayed answer.
pub(super) fn mark(resp: &mut Response, status: Status) {
    resp.headers_mut()
        .insert(cache::X_CACHE, HeaderValue::from_static(status.label()));
}
