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
use http::{HeaderMap, StatusCode};
use serde_json::Value;

use super::ledger::Ledger;
use super::relay;
use crate::config::{FallbackReason, Priority};
use crate::credentials::{Lease, Outcome, Retry, Witness, MAX_COOLDOWN, WITNESS_WINDOW};
use crate::error::ApiError;
use crate::openai::Body as JsonBody;
use crate::policy::Endpoint;
use crate::providers::{BodyStream, UpstreamRequest, UpstreamResponse};
use crate::routing::breaker::Admit;
use crate::routing::queue::{Refused, Slot};
use crate::routing::retry::backoff;
use crate::state::{Snapshot, Upstream};
use crate::telemetry::names;

/// What stays the same over every attempt of one request.
pub struct Request<'a> {
    pub endpoint: Endpoint,
    pub stream: bool,
    pub headers: &'a HeaderMap,
    pub max_response_bytes: usize,
    /// Who sends it: shared upstream state changes on evidence from more than one of these.
    pub witness: Witness,
}

/// What one attempt aims at: the model being tried (the requested one or a fallback), the
/// queue priority and the request's deadline.
#[derive(Clone, Copy)]
struct Target<'a> {
    model: &'a str,
    priority: Priority,
    deadline: Instant,
}

/// What the client asked of the attempt loop through headers.
#[derive(Debug, Clone, Copy)]
pub struct Wishes {
    pub priority: Priority,
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

/// Try the model's upstreams, then its fallbacks, until one answers.
pub async fn dispatch(
    snap: &Snapshot,
    model: &str,
    json: &mut JsonBody,
    req: &Request<'_>,
    wishes: Wishes,
    ledger: &mut Ledger,
) -> Result<Answer, ApiError> {
    let started = Instant::now();
    let first = snap
        .routes
        .get(model)
        .ok_or_else(|| ApiError::ModelNotFound {
            model: model.to_owned(),
        })?;
    let deadline = started + first.config.deadline.0;
    let mut tried: Vec<&str> = Vec::new();
    let mut current = model;
    loop {
        tried.push(current);
        let route = snap.routes.get(current).ok_or(ApiError::Internal)?;
        let max_attempts = route
            .config
            .retry
            .max_attempts
            .min(wishes.max_attempts.unwrap_or(u32::MAX))
            .max(1);
        route.budget.deposit(Instant::now());
        let plan = route.plan(Instant::now());
        let mut err = no_upstream(route, current);
        // Upstreams that refused the gateway's credential in this request: not tried again.
        let mut refused: Vec<&str> = Vec::new();
        // Upstreams that answered this request 429 with a Retry-After: not before then.
        let mut not_before: Vec<(&str, Instant)> = Vec::new();
        let max_retry_after = route.config.retry.max_retry_after.0;
        for n in 0..max_attempts {
            // The next upstream in plan order that can take this request now. An upstream
            // that is rate limited (its mark, or its Retry-After to this request) or open is
            // skipped; when every one left is only waiting out a Retry-After, the earliest is
            // waited for if that fits `retry.max_retry_after` and the deadline. Otherwise we
            // stop and the last error stands: the upstream's 429 with its Retry-After.
            let now = Instant::now();
            let Some((upstream, at)) = next_upstream(&plan, n, now, &refused, &not_before) else {
                break;
            };
            let must_wait = at.saturating_duration_since(now);
            if must_wait > max_retry_after || at >= deadline {
                break;
            }
            if n > 0 {
                if !route.budget.withdraw(Instant::now()) {
                    metrics::counter!(names::RETRY_BUDGET_EXHAUSTED, "model" => current.to_owned())
                        .increment(1);
                    break;
                }
                let wait = backoff(
                    n - 1,
                    route.config.retry.base_backoff.0,
                    route.config.retry.max_backoff.0,
                )
                .max(must_wait);
                if Instant::now() + wait >= deadline {
                    break;
                }
                tokio::time::sleep(wait).await;
            } else if !must_wait.is_zero() {
                tokio::time::sleep(must_wait).await;
            }
            let t0 = Instant::now();
            let target = Target {
                model: current,
                priority: wishes.priority,
                deadline,
            };
            let result = attempt(upstream, &target, json, req, ledger).await;
            let outcome = match &result {
                Ok(_) => "ok",
                Err(e) => e.kind(),
            };
            ledger.attempt(&upstream.name, outcome, t0.elapsed());
            metrics::counter!(names::ATTEMPTS, "upstream" => upstream.name.clone(),
                "outcome" => outcome)
            .increment(1);
            match result {
                Ok(answer) => return Ok(answer),
                Err(e) => {
                    let retry = e.retryable();
                    match &e {
                        ApiError::UpstreamCredentialRejected { .. } => refused.push(&upstream.name),
                        ApiError::UpstreamStatus {
                            status,
                            retry_after: Some(v),
                            ..
                        } if status.as_u16() == 429 => {
                            // Our own clamped whole seconds (set in `attempt_inner`).
                            if let Some(secs) = v.to_str().ok().and_then(|v| v.parse().ok()) {
                                not_before.push((
                                    &upstream.name,
                                    Instant::now() + Duration::from_secs(secs),
                                ));
                            }
                        }
                        _ => {}
                    }
                    err = e;
                    if !retry {
                        break;
                    }
                }
            }
        }
        // fall back: a per-reason fallback first, then the ordered list (retryable errors only).
        let reason = reason_of(&err);
        let by_reason = reason
            .and_then(|r| route.config.fallback_on.get(&r))
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
        let next = by_reason.or_else(|| if err.retryable() { ordered() } else { None });
        match next {
            Some(m) if Instant::now() < deadline => {
                metrics::counter!(names::FALLBACKS, "from" => current.to_owned(), "to" => m.to_owned())
                    .increment(1);
                current = m;
            }
            _ => return Err(err),
        }
    }
}

fn no_upstream(route: &crate::routing::Route, model: &str) -> ApiError {
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
    refused: &[&str],
    not_before: &[(&str, Instant)],
) -> Option<(&'p Arc<Upstream>, Instant)> {
    let mut best: Option<(&Arc<Upstream>, Instant)> = None;
    for k in 0..plan.len() {
        let u = &plan[(n as usize + k) % plan.len()];
        if refused.contains(&&*u.name) {
            continue;
        }
        let mut at = now;
        for (name, t) in not_before {
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

/// Which `fallback_on` entry an error calls for.
fn reason_of(e: &ApiError) -> Option<FallbackReason> {
    match e {
        ApiError::UpstreamStatus { status, body, .. } => {
            if status.as_u16() == 429 {
                Some(FallbackReason::RateLimited)
            } else if status.is_client_error() {
                let text = String::from_utf8_lossy(body);
                (text.contains("context_length_exceeded")
                    || text.contains("maximum context length"))
                .then_some(FallbackReason::ContextLength)
            } else {
                Some(FallbackReason::Unavailable)
            }
        }
        e if e.retryable() => Some(FallbackReason::Unavailable),
        _ => None,
    }
}

/// One attempt on one upstream, with one retry on a 401 when the credential renewed itself and up
/// to pool-size immediate retries when a pool member was rotated out (429 / 401 / 403).
async fn attempt(
    upstream: &Arc<Upstream>,
    target: &Target<'_>,
    json: &mut JsonBody,
    req: &Request<'_>,
    ledger: &mut Ledger,
) -> Result<Answer, ApiError> {
    ledger.upstream(&upstream.name);
    let probe = match upstream.breaker.admit(Instant::now()) {
        Admit::Yes => false,
        Admit::Probe => true,
        Admit::No => {
            return Err(ApiError::UpstreamUnavailable {
                message: format!("upstream '{}' is not taking requests", upstream.name),
                retry_after_secs: 1,
            })
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
    let state = match &result {
        Ok(a) => {
            let ttfb = now.duration_since(a.sent_at);
            upstream.observe_ttfb(ttfb);
            Some(upstream.breaker.record(now, true, Some(ttfb), probe))
        }
        // A 429 says "later", not "healthy": a probe that gets one neither closes nor reopens.
        Err(ApiError::UpstreamStatus { status, .. }) if status.as_u16() == 429 => {
            if probe {
                upstream.breaker.abandon_probe();
            }
            None
        }
        // An upstream 408 is its own timeout: a health failure.
        Err(ApiError::UpstreamStatus { status, .. }) if status.as_u16() == 408 => {
            Some(upstream.breaker.record(now, false, None, probe))
        }
        // Client-side errors, and a refused credential, say nothing about the upstream's health.
        Err(ApiError::UpstreamCredentialRejected { .. }) => {
            Some(upstream.breaker.record(now, true, None, probe))
        }
        Err(ApiError::UpstreamStatus { status, .. }) if status.is_client_error() => {
            Some(upstream.breaker.record(now, true, None, probe))
        }
        Err(ApiError::UpstreamUnavailable { .. }) | Err(ApiError::CredentialUnavailable { .. }) => {
            if probe {
                Some(upstream.breaker.record(now, false, None, probe))
            } else {
                None
            }
        }
        Err(e) if e.source() == crate::error::Source::Upstream => {
            Some(upstream.breaker.record(now, false, None, probe))
        }
        Err(_) => probe.then(|| upstream.breaker.record(now, true, None, probe)),
    };
    if let Some(s) = state {
        metrics::gauge!(names::BREAKER_STATE, "upstream" => upstream.name.clone()).set(s.gauge());
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
) -> Result<Answer, ApiError> {
    let Target {
        model,
        priority,
        deadline,
    } = *target;
    let left = || deadline.saturating_duration_since(Instant::now());
    let slot = upstream.gate.acquire(priority, left()).await.map_err(|r| {
        ApiError::UpstreamUnavailable {
            message: match r {
                Refused::QueueFull => format!("upstream '{}' queue is full", upstream.name),
                Refused::Timeout => format!("no slot at upstream '{}' in time", upstream.name),
            },
            retry_after_secs: 1,
        }
    })?;
    let upstream_model = upstream.model.as_deref().unwrap_or(model);
    if json.get::<&str>("model").and_then(Result::ok) != Some(upstream_model) {
        json.insert("model", Value::from(upstream_model));
    }
    let body = json.to_bytes();
    let mut renewed = false;
    let mut rotations = 0;
    let max_rotations = upstream
        .credential
        .as_ref()
        .map_or(0, |c| c.max_rotations());
    // Pool members this attempt already heard from: a rotation prefers the others.
    let mut tried_members: Vec<crate::credentials::MemberRef> = Vec::new();
    let (response, sent_at, lease, error_body, account) = loop {
        ledger.attempted();
        let lease: Option<Lease> = match &upstream.credential {
            // A lease waits only when no token is usable; that wait is bounded by the credential's
            // lease_timeout and by the request's deadline.
            Some(c) => {
                let mut lease = tokio::time::timeout(left(), c.lease_avoiding(&tried_members))
                    .await
                    .map_err(|_| ApiError::CredentialUnavailable {
                        message: format!("no upstream credential for '{}' in time", upstream.name),
                        retry_after_secs: 1,
                    })??;
                lease.from = req.witness;
                Some(lease)
            }
            None => None,
        };
        let sent_at = Instant::now();
        let request = UpstreamRequest {
            endpoint: req.endpoint,
            body: body.clone(),
            stream: req.stream,
            headers: req.headers,
            lease: lease.as_ref(),
            json,
        };
        let wait = upstream.timeouts.first_byte.0.min(left());
        // From here the upstream may read (and bill) the prompt.
        ledger.sent();
        let mut response = tokio::time::timeout(wait, upstream.provider.send(request))
            .await
            .map_err(|_| ApiError::UpstreamTimeout)??;
        // One reading of an error answer (bounded), used by the credential, the upstream's
        // mark and what the client sees.
        let error_body = if response.status.is_success() {
            None
        } else {
            Some(read_error_body(&mut response.body, upstream.timeouts.idle.0, deadline).await)
        };
        let account = response.status == StatusCode::TOO_MANY_REQUESTS
            && about_account(&response.headers, error_body.as_deref().unwrap_or_default());
        if let (Some(cred), Some(lease)) = (&upstream.credential, &lease) {
            let outcome = match response.status.as_u16() {
                401 => Outcome::Unauthorized,
                403 => Outcome::Forbidden,
                429 => Outcome::RateLimited {
                    after: super::retry_after(&response.headers),
                    account,
                },
                _ => Outcome::Ok,
            };
            tried_members.extend(lease.member);
            match cred.report(lease, outcome) {
                Retry::Renewed if !renewed && response.status == StatusCode::UNAUTHORIZED => {
                    renewed = true;
                    continue;
                }
                Retry::Rotated if rotations < max_rotations => {
                    rotations += 1;
                    continue;
                }
                _ => {}
            }
        }
        break (response, sent_at, lease, error_body, account);
    };
    if let Some(raw) = error_body {
        ledger.upstream_time(sent_at.elapsed());
        if response.status == StatusCode::UNAUTHORIZED {
            // After the renewal retry (or every rotation): the upstream refuses the gateway's
            // own credential. The client's key is fine; the body is not relayed.
            return Err(ApiError::UpstreamCredentialRejected {
                upstream: upstream.name.to_string(),
            });
        }
        let retry_after = super::retry_after(&response.headers);
        if response.status == StatusCode::TOO_MANY_REQUESTS {
            // The upstream leaves every tenant's plans only on evidence that the 429 is about
            // the account: its own headers or code, or another tenant's 429 within the window.
            // Otherwise only this request moves on (or waits out its Retry-After).
            if let Some(d) = retry_after {
                let now = Instant::now();
                let corroborated = !account
                    && upstream
                        .breaker
                        .note_429(now, req.witness.tenant, WITNESS_WINDOW);
                // Two tenants' 429s are weaker evidence than the account's own word: their mark
                // lasts at most the witness window.
                let cap = if account {
                    MAX_COOLDOWN
                } else {
                    WITNESS_WINDOW
                };
                if account || corroborated {
                    upstream.breaker.rate_limited(now + d.min(cap), false);
                }
            }
        }
        let secret = lease.as_ref().map(|l| l.value.expose());
        return Err(ApiError::upstream_status(
            response.status,
            &raw,
            retry_after.map(super::retry_after_value),
            secret,
        ));
    }
    let is_sse = response
        .headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let UpstreamResponse {
        status,
        headers,
        body: mut stream,
    } = response;
    if req.stream && is_sse {
        // Commit only once the first whole event is here and is well formed. Fix: this used
        // to commit on the first chunk if it merely started like SSE, so a malformed first
        // event (`data: {"choices":[{"delta":{"content":` cut short) reached the client as a
        // 200 with garbage although nothing had been sent yet and a retry was still allowed.
        let until = Instant::now() + upstream.timeouts.first_byte.0.min(left());
        let mut first = BytesMut::new();
        loop {
            let wait = until.saturating_duration_since(Instant::now());
            match tokio::time::timeout(wait, stream.next()).await {
                Err(_) => return Err(ApiError::UpstreamTimeout),
                Ok(Some(Err(_))) => return Err(ApiError::UpstreamUnreachable),
                // Ended before one whole event: nothing usable was sent.
                Ok(None) if first.is_empty() => return Err(ApiError::UpstreamUnreachable),
                Ok(None) => return Err(ApiError::UpstreamInvalid),
                Ok(Some(Ok(chunk))) => first.extend_from_slice(&chunk),
            }
            if !relay::looks_like_sse(&first) || first.len() > MAX_FIRST_EVENT {
                return Err(ApiError::UpstreamInvalid);
            }
            if let Some(ok) = first_event_ok(&first) {
                if !ok {
                    return Err(ApiError::UpstreamInvalid);
                }
                break;
            }
        }
        let first = first.freeze();
        return Ok(Answer {
            upstream: upstream.clone(),
            status,
            headers,
            body: AnswerBody::Stream {
                first,
                rest: stream,
                slot,
            },
            sent_at,
            deadline: (sent_at + upstream.timeouts.total.0).min(deadline),
        });
    }
    // Non-stream: read it whole, so a reset or a cut body can still be retried.
    let total_deadline = (sent_at + upstream.timeouts.total.0).min(deadline);
    let hint = headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok())
        .unwrap_or(0);
    let mut buf = BytesMut::with_capacity(hint.min(req.max_response_bytes));
    loop {
        let wait = upstream
            .timeouts
            .idle
            .0
            .min(total_deadline.saturating_duration_since(Instant::now()));
        match tokio::time::timeout(wait, stream.next()).await {
            Err(_) => return Err(ApiError::UpstreamTimeout),
            Ok(Some(Err(_))) => return Err(ApiError::UpstreamUnreachable),
            Ok(None) => break,
            Ok(Some(Ok(chunk))) => {
                if buf.len() + chunk.len() > req.max_response_bytes {
                    return Err(ApiError::UpstreamInvalid);
                }
                buf.extend_from_slice(&chunk);
            }
        }
    }
    ledger.upstream_time(sent_at.elapsed());
    // Fix: every relayed endpoint (chat, completions, embeddings) answers JSON, so the body
    // must parse whatever its content type says. Checking only `*json*` content types let a
    // 200 `text/event-stream` of garbage through to a non-stream client instead of retrying.
    // One parse validates the body and reads its usage.
    let Ok(usage) = crate::providers::read_usage(&buf) else {
        return Err(ApiError::UpstreamInvalid);
    };
    drop(slot);
    Ok(Answer {
        upstream: upstream.clone(),
        status,
        headers,
        body: AnswerBody::Full(buf.freeze(), usage),
        sent_at,
        deadline: total_deadline,
    })
}

/// Largest first stream event waited for before the stream is committed.
const MAX_FIRST_EVENT: usize = 1024 * 1024;

/// Whether the first SSE event in `buf` is well formed: `None` while it is incomplete, else
/// whether its `data` (if any) is JSON or `[DONE]`. Comment-only events (keep-alives) pass.
fn first_event_ok(buf: &[u8]) -> Option<bool> {
    // The event ends at a blank line, found by the relay's own splitter.
    let event = relay::Events::new(buf).next()?;
    let mut data: Vec<u8> = Vec::new();
    for line in event.split(|b| *b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(d) = line.strip_prefix(b"data:") {
            if !data.is_empty() {
                data.push(b'\n');
            }
            data.extend_from_slice(d.strip_prefix(b" ").unwrap_or(d));
        }
    }
    let data = data.trim_ascii();
    Some(
        data.is_empty()
            || data == b"[DONE]"
            || serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok(),
    )
}

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

/// Whether a 429 says the upstream *account* is out, rather than something about this one
/// request: the upstream's own `x-ratelimit-remaining-requests: 0` or
/// `x-ratelimit-remaining-tokens: 0`, or an `insufficient_quota` code or type.
fn about_account(headers: &HeaderMap, body: &[u8]) -> bool {
    let zero = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() == "0")
    };
    if zero("x-ratelimit-remaining-requests") || zero("x-ratelimit-remaining-tokens") {
        return true;
    }
    #[derive(serde::Deserialize)]
    struct Body {
        error: Error,
    }
    #[derive(serde::Deserialize)]
    struct Error {
        #[serde(default)]
        code: Option<Value>,
        #[serde(default, rename = "type")]
        kind: Option<Value>,
    }
    serde_json::from_slice::<Body>(body).is_ok_and(|b| {
        [b.error.code, b.error.kind]
            .iter()
            .any(|v| v.as_ref().and_then(Value::as_str) == Some("insufficient_quota"))
    })
}

#[cfg(test)]
mod tests {
    use super::first_event_ok;

    #[test]
    fn first_event_must_be_whole_and_well_formed() {
        assert_eq!(first_event_ok(b"data: {\"a\":1}"), None);
        assert_eq!(first_event_ok(b"data: {\"a\":1}\n\ndata: {x"), Some(true));
        assert_eq!(first_event_ok(b"data: {\"a\":1}\r\n\r\n"), Some(true));
        assert_eq!(first_event_ok(b"data: [DONE]\n\n"), Some(true));
        assert_eq!(first_event_ok(b": keep-alive\n\n"), Some(true));
        assert_eq!(
            first_event_ok(b"data: {\"choices\":[{\"delta\":{\"content\":\n\n"),
            Some(false)
        );
        assert_eq!(first_event_ok(b"data: {not json}\n\n"), Some(false));
    }
}
