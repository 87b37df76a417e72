//! The request path: one function, [`handle`], reads top to bottom as the steps every relayed
//! request goes through. Each step is a call into the module that owns it.
//!
//! This module owns the order of the steps, the attempt loop (credential, provider, first-byte
//! timeout, refresh-and-retry-once on a 401) and the hand-off to [`relay`]. It does not parse
//! config, hash keys or format errors: those belong to their modules.

mod attempt;
mod cached;
pub mod ledger;
pub mod relay;
mod sse;

use std::sync::Arc;
use std::time::Duration;

use crate::error::ApiError;
use crate::openai::{Body as JsonBody, BodyError};
use crate::policy::{self, Endpoint};
use crate::state::{AppState, Snapshot};
use axum::body::Body;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, Request};
use http_body_util::BodyExt;
use ledger::Ledger;

/// The client API a request came in through when it is not the endpoint it runs as (set by
/// `fronts`: `"responses"`, `"messages"`), so its log line, trace and usage row name that API.
#[derive(Debug, Clone, Copy)]
pub struct Dialect(pub &'static str);

/// The request id, set by the `app` middleware before any handler runs.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// Handle one relayed OpenAI request: the whole path, in order. The request's ledger (its
/// context) is owned here: each step before the relay borrows it, then it moves into the relay,
/// which accounts the request when the body ends, or into the error answer.
pub async fn handle(state: AppState, endpoint: Endpoint, req: Request<Body>) -> Response {
    let request_id = req
        .extensions()
        .get::<RequestId>()
        .map(|r| r.0.clone())
        .unwrap_or_else(|| Arc::from("-"));
    let usage = state.store.as_ref().map(|s| s.usage.clone());
    let label = req
        .extensions()
        .get::<Dialect>()
        .map_or(endpoint.label(), |d| d.0);
    let mut ledger = Ledger::start(request_id, label, usage);
    match run(&state, endpoint, req, &mut ledger).await {
        Ok(Ready::Cached {
            snap,
            hit,
            include_usage,
        }) => cached::serve(&snap, hit, include_usage, ledger),
        Ok(Ready::Upstream(relayed)) => relayed.relay(ledger),
        Err(e) => refuse(e, ledger),
    }
}

/// Every step up to the relay: what comes back is an upstream answer ready to relay.
async fn run(
    state: &AppState,
    endpoint: Endpoint,
    req: Request<Body>,
    ledger: &mut Ledger,
) -> Result<Ready, ApiError> {
    let snap = state.snapshot.load_full();
    ledger.meters(&snap.meters);
    let (parts, body) = req.into_parts();
    ledger.request(&parts);
    ledger.traced(snap.tracing.as_deref(), &parts.headers);

    // authenticate: key -> caller.
    let caller = state
        .authenticate(&snap, &parts.headers, &parts.extensions)
        .await?;
    ledger.caller(&caller);
    let batch = parts
        .extensions
        .get::<crate::auth::InProcess>()
        .and_then(|p| p.batch_id());
    if let Some(id) = batch {
        ledger.batch(id.clone());
    }
    let batch = batch.is_some();
    let team = caller
        .team_policy(&snap.config.teams)
        .ok_or(ApiError::Internal)?;

    // accept (cont.): read the body within the team's size limit and the read deadline.
    let mut json = parse_json(read_body(&snap, team, body).await?)?;

    // shape: validate fields, apply the team's defaults and caps, check the model.
    let shaped = policy::shape(endpoint, team, &parts.headers, &mut json)?;
    ledger.shaped(&shaped);
    ledger.prompt(&json);
    let route = snap.routes.get(&shaped.model);
    let route = policy::check_model(&shaped.model, team, route, |m| caller.key_allows(m))?;
    ledger.model_known(&route.meters);

    // admit: rate limits, concurrency, budget (limits) -> 429. Settled when the ledger drops.
    let estimate = snap.limiter.estimate(endpoint, shaped.ask(), &json);
    ledger.admitted(snap.limiter.admit(caller.subject(), &estimate).await?);

    // look up (cache): an exact-match answer ends the path here; a miss carries its fill.
    let looked = cached::look_up(
        &snap,
        endpoint,
        &caller.team,
        team,
        &shaped,
        &json,
        &parts.headers,
    )
    .await;
    let cache = match looked {
        cached::Looked::Off => None,
        cached::Looked::Hit(hit) => {
            return Ok(Ready::Cached {
                include_usage: shaped.client_wants_usage,
                snap,
                hit,
            })
        }
        cached::Looked::Go(status, fill) => {
            ledger.cache_status(status.label());
            Some((status, fill))
        }
    };

    // Only now, authenticated and within its own limits, may the caller take one of the
    // process's shared in-flight slots: a caller cannot hold them while it trickles a body in
    // or past its own concurrency.
    let in_flight = in_flight_slot(state)?;

    // plan + attempt: model -> upstreams in order; retries and fallbacks before the first byte.
    let headers = forward_headers(&snap, &parts.headers, ledger.request_id());
    let request = attempt::Request {
        endpoint,
        stream: shaped.stream,
        headers: &headers,
        max_response_bytes: snap.config.server.max_response_bytes,
        witness: crate::credentials::Witness {
            request: rand::random(),
            tenant: tenant_of(&caller.team),
        },
        drop_untranslatable: team.untranslatable_fields == crate::config::Untranslatable::Drop,
    };
    let wishes = attempt::Wishes {
        priority: shaped.priority,
        batch,
        max_attempts: shaped.max_attempts,
    };
    let answer = attempt::dispatch(&snap, route, &mut json, &request, wishes, ledger).await?;
    Ok(Ready::Upstream(Relayed {
        answer,
        strip_usage: shaped.stream && !shaped.client_wants_usage,
        in_flight,
        cache,
    }))
}

/// What passed every step: an upstream answer to relay, or a cached one. Made once per request
/// and moved straight into its answer, so the size difference between the two does not matter.
#[allow(clippy::large_enum_variant)]
enum Ready {
    Upstream(Relayed),
    Cached {
        snap: Arc<Snapshot>,
        hit: crate::cache::Hit,
        /// The client asked for the usage chunk of its stream.
        include_usage: bool,
    },
}

/// An upstream answer, with what its relay holds.
struct Relayed {
    answer: attempt::Answer,
    /// The client did not ask for the usage chunk of its stream.
    strip_usage: bool,
    in_flight: tokio::sync::OwnedSemaphorePermit,
    /// What the cache did, and where the answer is written if it is to be.
    cache: Option<(crate::cache::Status, Option<crate::cache::Fill>)>,
}

impl Relayed {
    /// relay: bytes to the client as they come; the ledger accounts when the body ends.
    fn relay(self, ledger: Ledger) -> Response {
        let rate = ledger.rate_headers().copied();
        let (status, fill) = self.cache.map_or((None, None), |(s, f)| (Some(s), f));
        let mut resp = relay::respond(self.answer, self.strip_usage, self.in_flight, ledger, fill);
        if let Some(rate) = rate {
            rate.apply(resp.headers_mut());
        }
        if let Some(s) = status {
            cached::mark(&mut resp, s);
        }
        resp
    }
}

/// The error answer; the ledger accounts the failure as it drops here.
fn refuse(e: ApiError, mut ledger: Ledger) -> Response {
    ledger.fail(&e);
    let mut resp = e.into_response();
    // Errors after admission carry the limiter's headers too.
    if let Some(rate) = ledger.rate_headers() {
        rate.apply(resp.headers_mut());
    }
    if let Some(c) = ledger.cache_label() {
        resp.headers_mut()
            .insert(crate::cache::X_CACHE, HeaderValue::from_static(c));
    }
    let attempts = ledger.attempts();
    if attempts > 0 {
        resp.headers_mut()
            .insert(relay::X_ATTEMPTS, HeaderValue::from(attempts));
    }
    resp
}

/// One of the process's `server.max_in_flight` slots, held until the answer is relayed.
fn in_flight_slot(state: &AppState) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
    state
        .in_flight
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Overloaded {
            message: "too many requests in flight".into(),
            retry_after_secs: 1,
        })
}

/// A stable number for a team (the tenant in shared-state evidence).
fn tenant_of(team: &str) -> u64 {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    team.hash(&mut h);
    h.finish()
}

/// Only allowlisted client headers go upstream, plus our request id. Never the client's key,
/// never hop-by-hop headers.
fn forward_headers(snap: &Snapshot, client: &HeaderMap, request_id: &str) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(snap.forward_headers.len() + 1);
    for name in &snap.forward_headers {
        for v in client.get_all(name) {
            out.append(name.clone(), v.clone());
        }
    }
    if let Ok(v) = HeaderValue::from_str(request_id) {
        out.insert(HeaderName::from_static("x-request-id"), v);
    }
    out
}

/// A `Retry-After` value for the client: whole seconds, rounded up.
pub(crate) fn retry_after_value(d: Duration) -> HeaderValue {
    let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
    HeaderValue::from(secs)
}

/// Read a request body within the team's and the server's size limit and the read deadline.
pub(crate) async fn read_body(
    snap: &Snapshot,
    team: &crate::config::TeamConfig,
    body: Body,
) -> Result<Bytes, ApiError> {
    let limit = team
        .max_body_bytes
        .unwrap_or(usize::MAX)
        .min(snap.config.server.max_body_bytes);
    let deadline = snap.config.server.body_read_timeout.0;
    let limited = http_body_util::Limited::new(body, limit);
    match tokio::time::timeout(deadline, limited.collect()).await {
        Err(_) => Err(ApiError::BodyTimeout),
        Ok(Ok(collected)) => Ok(collected.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => {
            Err(ApiError::BodyTooLarge { limit })
        }
        Ok(Err(_)) => Err(ApiError::invalid(
            "the request body could not be read",
            None,
        )),
    }
}

/// The body parsed once ([`JsonBody`]): shaping edits it in place, each attempt writes it out.
fn parse_json(bytes: Bytes) -> Result<JsonBody, ApiError> {
    match JsonBody::parse(bytes) {
        Ok(b) => Ok(b),
        Err(BodyError::NotObject) => Err(ApiError::invalid(
            "the request body must be a JSON object",
            None,
        )),
        Err(BodyError::Invalid(e)) => Err(ApiError::invalid(
            format!("the request body is not valid JSON: {e}"),
            None,
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_for_the_client_is_whole_seconds_rounded_up() {
        assert_eq!(retry_after_value(Duration::from_millis(1500)), "2");
        assert_eq!(retry_after_value(Duration::from_secs(3)), "3");
        assert_eq!(retry_after_value(Duration::ZERO), "0");
    }
}
