//! The plan and attempt steps: walk a model's upstreams (then its fallbacks) until one answers,
//! all before the first byte reaches the client.
//!
//! A retry happens only on a retryable failure (connect error, reset or timeout before the first
//! byte, 408/409/429, 5xx, an invalid answer), only while the retry budget allows, after a
//! full-jitter backoff, and never past the request's deadline. A stream is committed only once
//! its first chunk arrived and looks right; a non-stream answer only once it was read whole and
//! parses, so a reset in either case can still be retried. Each attempt feeds the upstream's
//! breaker and latency EWMA and is listed in the request log.

use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::Value;

use super::ledger::Ledger;
use super::sse;
use crate::config::Priority;
use crate::credentials::{
    Credential, Lease, Outcome, Retry, Witness, MAX_COOLDOWN, WITNESS_WINDOW,
};
use crate::error::ApiError;
use crate::openai::Body as JsonBody;
use crate::policy::Endpoint;
use crate::providers::reading::{Health, Reading};
use crate::providers::{BodyStream, UpstreamRequest, UpstreamResponse};
use crate::routing::breaker::Admit;
use crate::routing::queue::{Ask, Refused, Slot};
use crate::routing::retry::backoff;
use crate::routing::Route;
use crate::state::{Snapshot, Upstream};

/// What stays the same over every attempt of one request.
pub struct Request<'a> {
    pub endpoint: Endpoint,
    pub stream: bool,
    pub headers: &'a HeaderMap,
    pub max_response_bytes: usize,
    /// Who sends it: shared upstream state changes on evidence from more than one of these.
    pub witness: Witness,
    /// The team drops top-level fields a translating provider cannot translate
    /// ([`crate::config::Untranslatable::Drop`]) instead of refusing the request.
    pub drop_untranslatable: bool,
}

/// What one attempt aims at: the model being tried (the requested one or a fallback), the
/// slot it asks for (queue priority, batch line or not) and the request's deadline.
#[derive(Clone, Copy)]
struct Target<'a> {
    model: &'a str,
    /// What the answer's `model` is set to ([`Route::answer_model`]).
    answer_model: Option<&'a Bytes>,
    ask: Ask,
    deadline: Instant,
}

/// What the client asked of the attempt loop through headers.
#[derive(Debug, Clone, Copy)]
pub struct Wishes {
    pub priority: Priority,
    /// A batch line: it holds at most the batch share of each upstream's slots.
    pub batch: bool,
    pub max_attempts: Option<u32>,
}

/// An upstream answer ready to relay: nothing of it has reached the client yet.
pub struct Answer {
    pub upstream: Arc<Upstream>,
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: AnswerBody,
    pub sent_at: Instant,
    pub deadline: Instant,
    /// Where a whole answer's top-level `model` string lies (read with its usage).
    model_at: Option<std::ops::Range<usize>>,
    /// The name the client sees in `model` (JSON-escaped; [`Route::answer_model`]); `None`
    /// leaves the upstream's.
    pub model: Option<Bytes>,
    /// The request fields the answering upstream's provider could not translate and the team
    /// dropped (`x-tollgate-dropped-params`).
    pub dropped: Option<HeaderValue>,
}

pub enum AnswerBody {
    /// A whole non-stream body, and the usage it reports.
    Full(Bytes, Option<crate::providers::Usage>),
    /// A stream whose first chunk has arrived; the upstream slot is held until it ends.
    Stream {
        first: Bytes,
        rest: BodyStream,
        slot: Slot,
    },
}

/// A failed attempt: the error the client would see, and the one reading of it that the retry
/// loop, the breaker, the fallback choice and the request log act on.
pub struct Failure {
    pub error: ApiError,
    pub reading: Reading,
}

impl From<ApiError> for Failure {
    fn from(error: ApiError) -> Failure {
        let reading = Reading::failure(&error);
        Failure { error, reading }
    }
}

/// Try the model's upstreams, then its fallbacks, until one answers.
pub async fn dispatch(
    snap: &Snapshot,
    first: &Route,
    json: &mut JsonBody,
    req: &Request<'_>,
    wishes: Wishes,
    ledger: &mut Ledger,
) -> Result<Answer, ApiError> {
    let deadline = Instant::now() + first.config.deadline.0;
    let mut tried: Vec<&str> = Vec::new();
    let mut route = first;
    loop {
        tried.push(&route.name);
        let target = Target {
            model: &route.name,
            answer_model: route.answer_model.as_ref(),
            ask: Ask {
                priority: wishes.priority,
                batch: wishes.batch,
            },
            deadline,
        };
        let failure = match try_route(route, &target, wishes, json, req, ledger).await {
            Ok(answer) => return Ok(answer),
            Err(f) => f,
        };
        let Some(next) = fallback(first, route, &failure.reading, &tried) else {
            return Err(failure.error);
        };
        if Instant::now() >= deadline {
            return Err(failure.error);
        }
        route.meters.fallback(next);
        route = snap.routes.get(next).ok_or(ApiError::Internal)?;
    }
}

/// The model a failure falls back to: its `fallback_on` entry for the reading's reason first,
/// then (for a retryable failure only) the first model's ordered fallbacks not yet tried.
fn fallback<'s>(
    first: &'s Route,
    current: &'s Route,
    reading: &Reading,
    tried: &[&str],
) -> Option<&'s str> {
    let by_reason = reading
        .fallback
        .and_then(|r| current.config.fallback_on.get(&r))
        .map(String::as_str)
        .filter(|m| !tried.contains(m));
    let ordered = || {
        first
            .config
            .fallbacks
            .iter()
            .map(String::as_str)
            .find(|m| !tried.contains(m))
    };
    by_reason.or_else(|| if reading.retryable { ordered() } else { None })
}

/// Upstreams this request should not try again now: those that refused the gateway's credential
/// in this request, and those that answered it 429 with a Retry-After (not before then).
#[derive(Default)]
struct Avoid<'p> {
    refused: Vec<&'p str>,
    not_before: Vec<(&'p str, Instant)>,
}

impl<'p> Avoid<'p> {
    fn note(&mut self, upstream: &'p str, reading: &Reading) {
        if reading.credential == Some(Outcome::Unauthorized) {
            self.refused.push(upstream);
        }
        if let (Health::Busy, Some(d)) = (reading.health, reading.retry_after) {
            // Whole seconds, rounded up: what the client is told to wait, too.
            let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            self.not_before
                .push((upstream, Instant::now() + Duration::from_secs(secs)));
        }
    }
}

/// Up to the route's attempt limit over its plan: each retryable failure leads to the next
/// upstream that can take the request, after a backoff and within the retry budget.
async fn try_route(
    route: &Route,
    target: &Target<'_>,
    wishes: Wishes,
    json: &mut JsonBody,
    req: &Request<'_>,
    ledger: &mut Ledger,
) -> Result<Answer, Failure> {
    let max_attempts = route
        .config
        .retry
        .max_attempts
        .min(wishes.max_attempts.unwrap_or(u32::MAX))
        .max(1);
    route.budget.deposit(Instant::now());
    let plan = route.plan(Instant::now());
    // The answer when no attempt is made is built only then (its message is formatted).
    let mut failure = None;
    let mut avoid = Avoid::default();
    for n in 0..max_attempts {
        let Some(upstream) = pace(route, &plan, n, &avoid, target.deadline).await else {
            break;
        };
        let t0 = Instant::now();
        let result = attempt(upstream, target, json, req, ledger).await;
        let outcome = result.as_ref().map_or_else(|f| f.error.kind(), |_| "ok");
        ledger.attempt(&upstream.name, outcome, t0.elapsed());
        upstream.meters.attempt(outcome);
        let f = match result {
            Ok(answer) => return Ok(answer),
            Err(f) => f,
        };
        avoid.note(&upstream.name, &f.reading);
        let stop = !f.reading.retryable;
        failure = Some(f);
        if stop {
            break;
        }
    }
    Err(failure.unwrap_or_else(|| Failure::from(no_upstream(route))))
}

/// The upstream for attempt `n`, once it may be tried: the next in plan order that can take the
/// request now, else the one that can take it soonest if that wait fits `retry.max_retry_after`
/// and the deadline. A retry also waits out its backoff and needs the retry budget. `None`
/// stops the attempts (the last failure stands: an upstream's 429 with its Retry-After).
async fn pace<'p>(
    route: &Route,
    plan: &'p [Arc<Upstream>],
    n: u32,
    avoid: &Avoid<'_>,
    deadline: Instant,
) -> Option<&'p Arc<Upstream>> {
    let now = Instant::now();
    let (upstream, at) = next_upstream(plan, n, now, avoid)?;
    let must_wait = at.saturating_duration_since(now);
    if must_wait > route.config.retry.max_retry_after.0 || at >= deadline {
        return None;
    }
    let wait = if n == 0 {
        must_wait
    } else {
        if !route.budget.withdraw(Instant::now()) {
            route.meters.retry_budget_exhausted();
            return None;
        }
        let retry = &route.config.retry;
        backoff(n - 1, retry.base_backoff.0, retry.max_backoff.0).max(must_wait)
    };
    if n > 0 && Instant::now() + wait >= deadline {
        return None;
    }
    if !wait.is_zero() {
        tokio::time::sleep(wait).await;
    }
    Some(upstream)
}

fn no_upstream(route: &Route) -> ApiError {
    let model = &route.name;
    let now = Instant::now();
    // Fix: only live (weight > 0) targets count; a drained target is never tried, so it must
    // not turn "every upstream is rate limited" (429 + Retry-After) into a 503.
    let live = || route.targets.iter().filter(|(_, w)| *w > 0);
    let soonest = live()
        .filter_map(|(u, _)| u.breaker.rate_limited_until(now))
        .min();
    match soonest {
        Some(t) if live().all(|(u, _)| u.breaker.rate_limited_until(now).is_some()) => {
            ApiError::UpstreamStatus {
                status: StatusCode::TOO_MANY_REQUESTS,
                body: crate::error::error_json(
                    &format!("every upstream of model '{model}' is rate limited"),
                    "rate_limit_error",
                    None,
                    "upstream_rate_limited",
                ),
                retry_after: Some(http::HeaderValue::from(
                    t.duration_since(now).as_secs().max(1),
                )),
            }
        }
        _ => ApiError::UpstreamUnavailable {
            message: format!("every upstream of model '{model}' is down or draining"),
            retry_after_secs: 5,
        },
    }
}

/// The upstream for attempt `n` and when it can take this request: the first in plan order
/// (starting at `n`) that can take it now, else the one that can take it soonest. `None` when
/// none can (open breakers, refused credentials).
fn next_upstream<'p>(
    plan: &'p [Arc<Upstream>],
    n: u32,
    now: Instant,
    avoid: &Avoid<'_>,
) -> Option<(&'p Arc<Upstream>, Instant)> {
    let mut best: Option<(&Arc<Upstream>, Instant)> = None;
    for k in 0..plan.len() {
        let u = &plan[(n as usize + k) % plan.len()];
        if avoid.refused.contains(&&*u.name) {
            continue;
        }
        let mut at = now;
        for (name, t) in &avoid.not_before {
            if *name == &*u.name {
                at = at.max(*t);
            }
        }
        if let Some(t) = u.breaker.rate_limited_until(now) {
            at = at.max(t);
        }
        if !u.breaker.available(at) {
            continue;
        }
        if at <= now {
            return Some((u, now));
        }
        if best.is_none_or(|(_, b)| at < b) {
            best = Some((u, at));
        }
    }
    best
}

/// One attempt on one upstream, with one retry on a 401 when the credential renewed itself and up
/// to pool-size immediate retries when a pool member was rotated out (429 / 401 / 403). Its
/// reading feeds the upstream's breaker.
async fn attempt(
    upstream: &Arc<Upstream>,
    target: &Target<'_>,
    json: &mut JsonBody,
    req: &Request<'_>,
    ledger: &mut Ledger,
) -> Result<Answer, Failure> {
    ledger.upstream(upstream, target.model);
    let probe = match upstream.breaker.admit(Instant::now()) {
        Admit::Yes => false,
        Admit::Probe => true,
        Admit::No => {
            return Err(Failure::from(ApiError::UpstreamUnavailable {
                message: format!("upstream '{}' is not taking requests", upstream.name),
                retry_after_secs: 1,
            }))
        }
    };
    // Fix: if this future is dropped mid-attempt (client gone), the probe slot is given back;
    // otherwise the breaker stayed half-open with its one probe "in flight" forever.
    let mut abandoned = ProbeGuard {
        breaker: probe.then_some(&upstream.breaker),
    };
    let result = attempt_inner(upstream, target, json, req, ledger).await;
    // An outcome is recorded below, with no await in between.
    abandoned.breaker = None;
    let now = Instant::now();
    let (health, ttfb) = match &result {
        Ok(a) => {
            let ttfb = now.duration_since(a.sent_at);
            upstream.observe_ttfb(ttfb);
            (Health::Up, Some(ttfb))
        }
        Err(f) => (f.reading.health, None),
    };
    let breaker = &upstream.breaker;
    let state = match health {
        Health::Up => Some(breaker.record(now, true, ttfb, probe)),
        Health::Down => Some(breaker.record(now, false, None, probe)),
        Health::Busy => {
            if probe {
                breaker.abandon_probe();
            }
            None
        }
        Health::Unreached => probe.then(|| breaker.record(now, false, None, probe)),
        Health::Unrelated => probe.then(|| breaker.record(now, true, None, probe)),
    };
    if let Some(s) = state {
        upstream.meters.breaker_state(s.gauge());
    }
    result
}

/// Gives a half-open probe back to its breaker when the attempt ends without an outcome.
struct ProbeGuard<'a> {
    breaker: Option<&'a crate::routing::breaker::Breaker>,
}

impl Drop for ProbeGuard<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.breaker {
            b.abandon_probe();
        }
    }
}

async fn attempt_inner(
    upstream: &Arc<Upstream>,
    target: &Target<'_>,
    json: &mut JsonBody,
    req: &Request<'_>,
    ledger: &mut Ledger,
) -> Result<Answer, Failure> {
    let deadline = target.deadline;
    let queued_at = Instant::now();
    let left = deadline.saturating_duration_since(queued_at);
    let slot = upstream.gate.acquire(target.ask, left).await.map_err(|r| {
        ApiError::UpstreamUnavailable {
            message: match r {
                Refused::QueueFull => format!("upstream '{}' queue is full", upstream.name),
                Refused::Timeout => format!("no slot at upstream '{}' in time", upstream.name),
            },
            retry_after_secs: 1,
        }
    })?;
    ledger.queued(queued_at.elapsed());
    let upstream_model = upstream.model.as_deref().unwrap_or(target.model);
    if json.get::<&str>("model").and_then(Result::ok) != Some(upstream_model) {
        json.insert("model", Value::from(upstream_model));
    }
    let (body, trimmed, dropped) = upstream_body(upstream, req, json, ledger.request_id())?;
    let sent = send(
        upstream,
        &body,
        trimmed.as_ref().unwrap_or(json),
        req,
        deadline,
        ledger,
    )
    .await?;
    if let Some((raw, reading)) = &sent.error {
        ledger.upstream_time(sent.at.elapsed());
        return Err(refusal(upstream, &sent, raw, *reading, req.witness));
    }
    let deadline = (sent.at + upstream.timeouts.total.0).min(deadline);
    let Sent { response, at, .. } = sent;
    if req.stream && is_sse(&response.headers) {
        let mut answer = commit_stream(upstream, response, at, deadline, slot).await?;
        answer.model = target.answer_model.cloned();
        answer.dropped = dropped;
        return Ok(answer);
    }
    let mut answer = read_whole(upstream, response, at, deadline, req.max_response_bytes).await?;
    answer.model = target.answer_model.cloned();
    answer.dropped = dropped;
    ledger.upstream_time(at.elapsed());
    drop(slot);
    Ok(answer)
}

/// Fields a team may have dropped: top-level parameters, never the conversation itself or what
/// the gateway reads to route and relay.
fn droppable(field: &str) -> bool {
    !matches!(
        field,
        "model" | "messages" | "prompt" | "input" | "stream" | "stream_options"
    )
}

/// The upstream's body for the shaped request. A translating provider refuses a field it cannot
/// translate with a 400 naming it; when the team drops such fields, a top-level one is taken out
/// of a copy of the body (a fallback to another provider still gets it) and the translation
/// tried again. Returns the body, the trimmed copy it was made from, and the dropped fields as
/// a header value (in alphabetical order).
fn upstream_body(
    upstream: &Upstream,
    req: &Request<'_>,
    json: &JsonBody,
    request_id: &str,
) -> Result<(Bytes, Option<JsonBody>, Option<HeaderValue>), ApiError> {
    let mut trimmed: Option<JsonBody> = None;
    let mut dropped: Vec<String> = Vec::new();
    loop {
        let current = trimmed.as_ref().unwrap_or(json);
        match upstream.provider.body(req.endpoint, current) {
            Ok(body) => {
                dropped.sort_unstable();
                let named = (!dropped.is_empty()).then(|| {
                    let list = dropped.join(", ");
                    tracing::info!(request_id, upstream = %upstream.name, dropped = %list,
                        "request fields the upstream cannot take were dropped (team's untranslatable_fields: drop)");
                    HeaderValue::from_str(&list).unwrap_or(HeaderValue::from_static("?"))
                });
                return Ok((body, trimmed, named));
            }
            Err(ApiError::InvalidRequest {
                param: Some(field), ..
            }) if req.drop_untranslatable && droppable(&field) && current.contains_key(&field) => {
                trimmed.get_or_insert_with(|| json.clone()).remove(&field);
                dropped.push(field);
            }
            Err(e) => return Err(e),
        }
    }
}

/// An upstream's answer to the request, as the credential last heard it.
struct Sent {
    response: UpstreamResponse,
    at: Instant,
    lease: Option<Lease>,
    /// For an error status: its body (bounded) and its reading.
    error: Option<(Vec<u8>, Reading)>,
}

/// Send the request with a lease of the upstream's credential and report what the credential
/// heard; send again once when a 401 renewed the credential, and after each pool rotation.
async fn send(
    upstream: &Upstream,
    body: &Bytes,
    json: &JsonBody,
    req: &Request<'_>,
    deadline: Instant,
    ledger: &mut Ledger,
) -> Result<Sent, ApiError> {
    let mut rounds = Rounds::default();
    loop {
        ledger.attempted();
        let lease = lease(upstream, &rounds.tried_members, req.witness, deadline).await?;
        let at = Instant::now();
        let request = UpstreamRequest {
            endpoint: req.endpoint,
            body: body.clone(),
            stream: req.stream,
            headers: req.headers,
            lease: lease.as_ref(),
            json,
            traceparent: ledger.traceparent(),
        };
        let wait = upstream
            .timeouts
            .first_byte
            .0
            .min(deadline.saturating_duration_since(at));
        // From here the upstream may read (and bill) the prompt.
        ledger.sent();
        let mut response = tokio::time::timeout(wait, upstream.provider.send(request))
            .await
            .map_err(|_| ApiError::UpstreamTimeout)??;
        ledger.upstream_status(response.status.as_u16());
        // One reading of the answer (an error body bounded), used by the credential, the
        // upstream's mark, the retry loop and what the client sees.
        let error = if response.status.is_success() {
            None
        } else {
            let raw = read_error_body(&mut response.body, upstream.timeouts.idle.0, deadline).await;
            let reading = Reading::answer(response.status, &response.headers, &raw);
            Some((raw, reading))
        };
        let heard = error.as_ref().map_or(Reading::OK, |(_, r)| *r).credential;
        if let (Some(cred), Some(lease), Some(outcome)) = (&upstream.credential, &lease, heard) {
            if rounds.again(cred, lease, outcome) {
                continue;
            }
        }
        return Ok(Sent {
            response,
            at,
            lease,
            error,
        });
    }
}

/// The credential's side of one attempt: what it heard so far decides whether to send again.
#[derive(Default)]
struct Rounds {
    renewed: bool,
    rotations: usize,
    /// Pool members this attempt already heard from: a rotation prefers the others.
    tried_members: Vec<crate::credentials::MemberRef>,
}

impl Rounds {
    /// Report what the lease heard; true when the request should go out again: once after a
    /// 401 renewed the credential, and after each pool rotation up to the pool's size.
    fn again(&mut self, cred: &Credential, lease: &Lease, outcome: Outcome) -> bool {
        self.tried_members.extend(lease.member);
        match cred.report(lease, outcome) {
            Retry::Renewed if !self.renewed && outcome == Outcome::Unauthorized => {
                self.renewed = true;
                true
            }
            Retry::Rotated if self.rotations < cred.max_rotations() => {
                self.rotations += 1;
                true
            }
            _ => false,
        }
    }
}

/// A lease of the upstream's credential, if it has one. It waits only when no token is usable;
/// that wait is bounded by the credential's lease_timeout and by the request's deadline.
async fn lease(
    upstream: &Upstream,
    tried_members: &[crate::credentials::MemberRef],
    witness: Witness,
    deadline: Instant,
) -> Result<Option<Lease>, ApiError> {
    let Some(c) = &upstream.credential else {
        return Ok(None);
    };
    let mut lease = tokio::time::timeout_at(deadline, c.lease_avoiding(tried_members))
        .await
        .map_err(|_| ApiError::CredentialUnavailable {
            message: format!("no upstream credential for '{}' in time", upstream.name),
            retry_after_secs: 1,
        })??;
    lease.from = witness;
    Ok(Some(lease))
}

/// An error answer as the client will see it (sanitized, without the gateway's secret). A 401
/// after the renewal retry (or every rotation) means the upstream refuses the gateway's own
/// credential: the client's key is fine and the body is not relayed. A 429 marks the upstream
/// rate limited for every tenant only on evidence that it is about the account.
fn refusal(
    upstream: &Upstream,
    sent: &Sent,
    raw: &[u8],
    reading: Reading,
    witness: Witness,
) -> Failure {
    let status = sent.response.status;
    if status == StatusCode::UNAUTHORIZED {
        let error = ApiError::UpstreamCredentialRejected {
            upstream: upstream.name.to_string(),
        };
        return Failure { error, reading };
    }
    if let Some(Outcome::RateLimited {
        after: Some(d),
        account,
    }) = reading.credential
    {
        mark_rate_limited(upstream, d, account, witness.tenant);
    }
    let secret = sent.lease.as_ref().map(|l| l.value.expose());
    let error = ApiError::upstream_status(
        status,
        raw,
        reading.retry_after.map(super::retry_after_value),
        secret,
    );
    Failure { error, reading }
}

/// The upstream leaves every tenant's plans only on evidence that the 429 is about the account:
/// its own headers or code, or another tenant's 429 within the window. Otherwise only this
/// request moves on (or waits out its Retry-After).
fn mark_rate_limited(upstream: &Upstream, after: Duration, account: bool, tenant: u64) {
    let now = Instant::now();
    let corroborated = !account && upstream.breaker.note_429(now, tenant, WITNESS_WINDOW);
    // Two tenants' 429s are weaker evidence than the account's own word: their mark lasts at
    // most the witness window.
    let cap = if account {
        MAX_COOLDOWN
    } else {
        WITNESS_WINDOW
    };
    if account || corroborated {
        upstream.breaker.rate_limited(now + after.min(cap), false);
    }
}

fn is_sse(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"))
}

/// Commit a stream only once its first whole event is here and is well formed. Fix: this used
/// to commit on the first chunk if it merely started like SSE, so a malformed first event
/// (`data: {"choices":[{"delta":{"content":` cut short) reached the client as a 200 with garbage
/// although nothing had been sent yet and a retry was still allowed.
async fn commit_stream(
    upstream: &Arc<Upstream>,
    response: UpstreamResponse,
    sent_at: Instant,
    deadline: Instant,
    slot: Slot,
) -> Result<Answer, Failure> {
    let UpstreamResponse {
        status,
        headers,
        body: mut stream,
    } = response;
    let until = deadline.min(Instant::now() + upstream.timeouts.first_byte.0);
    let mut first = BytesMut::new();
    loop {
        match tokio::time::timeout_at(until, stream.next()).await {
            Err(_) => return Err(ApiError::UpstreamTimeout.into()),
            Ok(Some(Err(_))) => return Err(ApiError::UpstreamUnreachable.into()),
            // Ended before one whole event: nothing usable was sent.
            Ok(None) if first.is_empty() => return Err(ApiError::UpstreamUnreachable.into()),
            Ok(None) => return Err(ApiError::UpstreamInvalid.into()),
            Ok(Some(Ok(chunk))) => first.extend_from_slice(&chunk),
        }
        if !sse::looks_like_sse(&first) || first.len() > MAX_FIRST_EVENT {
            return Err(ApiError::UpstreamInvalid.into());
        }
        match sse::first_event_ok(&first) {
            None => continue,
            Some(false) => return Err(ApiError::UpstreamInvalid.into()),
            Some(true) => break,
        }
    }
    Ok(Answer {
        upstream: upstream.clone(),
        status,
        headers,
        body: AnswerBody::Stream {
            first: first.freeze(),
            rest: stream,
            slot,
        },
        sent_at,
        deadline,
        model_at: None,
        model: None,
        dropped: None,
    })
}

/// Read a non-stream answer whole, so a reset or a cut body can still be retried. Fix: every
/// relayed endpoint (chat, completions, embeddings) answers JSON, so the body must parse whatever
/// its content type says; checking only `*json*` content types let a 200 `text/event-stream` of
/// garbage through to a non-stream client instead of retrying. One parse validates the body and
/// reads its usage.
async fn read_whole(
    upstream: &Arc<Upstream>,
    response: UpstreamResponse,
    sent_at: Instant,
    deadline: Instant,
    max_bytes: usize,
) -> Result<Answer, ApiError> {
    let UpstreamResponse {
        status,
        headers,
        body: mut stream,
    } = response;
    let hint = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut buf = BytesMut::with_capacity(hint.min(max_bytes));
    loop {
        let until = deadline.min(Instant::now() + upstream.timeouts.idle.0);
        match tokio::time::timeout_at(until, stream.next()).await {
            Err(_) => return Err(ApiError::UpstreamTimeout),
            Ok(Some(Err(_))) => return Err(ApiError::UpstreamUnreachable),
            Ok(None) => break,
            Ok(Some(Ok(chunk))) if buf.len() + chunk.len() > max_bytes => {
                return Err(ApiError::UpstreamInvalid)
            }
            Ok(Some(Ok(chunk))) => buf.extend_from_slice(&chunk),
        }
    }
    let Ok((usage, model_at)) = crate::providers::read_answer(&buf) else {
        return Err(ApiError::UpstreamInvalid);
    };
    Ok(Answer {
        upstream: upstream.clone(),
        status,
        headers,
        body: AnswerBody::Full(buf.freeze(), usage),
        sent_at,
        deadline,
        model_at,
        model: None,
        dropped: None,
    })
}

impl Answer {
    /// Put [`Answer::model`] in a whole answer's top-level `model`, only where the upstream
    /// wrote another name (a stream's chunks are renamed by the relay as they pass).
    pub fn rename_whole(&mut self) {
        let (Some(name), Some(at), AnswerBody::Full(bytes, _)) =
            (&self.model, self.model_at.take(), &mut self.body)
        else {
            return;
        };
        if bytes.get(at.clone()) != Some(&name[..]) {
            *bytes = crate::openai::model::replace(bytes, at, name);
        }
    }
}

/// Largest first stream event waited for before the stream is committed.
const MAX_FIRST_EVENT: usize = 1024 * 1024;

/// Read an upstream error body, bounded in size (64 KiB; the rest is never read) and time
/// (each chunk within `idle`, the whole within the request's deadline).
async fn read_error_body(body: &mut BodyStream, idle: Duration, deadline: Instant) -> Vec<u8> {
    const MAX: usize = 64 * 1024;
    let mut buf = Vec::new();
    while buf.len() < MAX {
        let until = deadline.min(Instant::now() + idle);
        match tokio::time::timeout_at(until, body.next()).await {
            Ok(Some(Ok(chunk))) => buf.extend_from_slice(&chunk),
            _ => break,
        }
    }
    buf.truncate(MAX);
    buf
}
