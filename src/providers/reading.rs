//! One reading of what an upstream did with a request: every step that reacts to an upstream
//! (the retry loop, the breaker, the credential, the fallback choice, the relay when a stream
//! breaks) takes its cue from the one [`Reading`] made here, never from the status again.
//!
//! It owns the meaning of upstream statuses and failures (which are worth another attempt, which
//! count against an upstream's health, what a credential heard, which `fallback_on` reason
//! applies, how long a `Retry-After` or Azure's `retry-after-ms` asks to wait, whether a 429 is
//! about the account) and the meaning of a stream that breaks after it started. It owns no state
//! and does no I/O: the callers act on what it says.

use std::time::{Duration, SystemTime};

use http::{HeaderMap, StatusCode};
use serde_json::Value;

use crate::config::FallbackReason;
use crate::credentials::Outcome;
use crate::error::ApiError;

/// What one attempt tells about the upstream's health (its breaker).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    /// It answered as a working server does (a success, or a client error about the request).
    Up,
    /// It failed: a 5xx, its own 408, no answer in time, a reset, an invalid answer.
    Down,
    /// A 429: "later", not "unhealthy". A half-open probe that gets one neither closes nor
    /// reopens the breaker; the probe is given back.
    Busy,
    /// The request never reached it (no slot in its queue, no credential): nothing is recorded,
    /// but a probe that could not even be sent counts as failed.
    Unreached,
    /// Nothing about the upstream (a fault of Tollgate's own, the request's deadline): nothing
    /// is recorded, and a probe is released as passed.
    Unrelated,
}

/// Everything the request path needs to know about one upstream failure (or success).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reading {
    /// Another attempt (on the same or another upstream, after a backoff) may succeed.
    pub retryable: bool,
    pub health: Health,
    /// What the credential's lease heard; `None` when no answer came back to report.
    pub credential: Option<Outcome>,
    /// The `fallback_on` reason this calls for, if any.
    pub fallback: Option<FallbackReason>,
    /// The upstream's `Retry-After`, clamped to [`MAX_UPSTREAM_RETRY_AFTER`].
    pub retry_after: Option<Duration>,
}

impl Reading {
    /// A successful answer.
    pub const OK: Reading = Reading {
        retryable: false,
        health: Health::Up,
        credential: Some(Outcome::Ok),
        fallback: None,
        retry_after: None,
    };

    /// An answer with a status other than success: its headers and its (bounded) body.
    pub fn answer(status: StatusCode, headers: &HeaderMap, body: &[u8]) -> Reading {
        if status.is_success() {
            return Reading::OK;
        }
        let retry_after = retry_after(headers);
        let credential = Some(match status.as_u16() {
            401 => Outcome::Unauthorized,
            403 => Outcome::Forbidden,
            429 => Outcome::RateLimited {
                after: retry_after,
                account: about_account(headers, body),
            },
            _ => Outcome::Ok,
        });
        Reading {
            credential,
            retry_after,
            ..Reading::status(status, body)
        }
    }

    /// A failed attempt, from the error it ended with.
    pub fn failure(e: &ApiError) -> Reading {
        let (retryable, health) = match e {
            ApiError::UpstreamStatus { status, body, .. } => return Reading::status(*status, body),
            ApiError::UpstreamCredentialRejected { .. } => {
                return Reading::status(UNAUTHORIZED, b"")
            }
            ApiError::UpstreamUnreachable
            | ApiError::UpstreamConnect { .. }
            | ApiError::UpstreamTimeout
            | ApiError::UpstreamInvalid => (true, Health::Down),
            ApiError::UpstreamUnavailable { .. } => (true, Health::Unreached),
            ApiError::CredentialUnavailable { .. } => (false, Health::Unreached),
            _ => (false, Health::Unrelated),
        };
        Reading {
            retryable,
            health,
            credential: None,
            fallback: retryable.then_some(FallbackReason::Unavailable),
            retry_after: None,
        }
    }

    /// What a status alone says (and, for a 4xx, whether its body says the prompt is too long).
    fn status(status: StatusCode, body: &[u8]) -> Reading {
        let code = status.as_u16();
        let (retryable, health, fallback) = match code {
            429 => (true, Health::Busy, Some(FallbackReason::RateLimited)),
            // Its own timeout: a health failure; a conflict: the request may pass next time.
            // Neither names a `fallback_on` reason (the ordered fallbacks still apply).
            408 => (true, Health::Down, None),
            409 => (true, Health::Up, None),
            // The gateway's own credential refused (after its renewal or rotations): another
            // upstream may take the request.
            401 => (true, Health::Up, Some(FallbackReason::Unavailable)),
            400..=499 => (
                false,
                Health::Up,
                context_too_long(body).then_some(FallbackReason::ContextLength),
            ),
            // Anthropic's `overloaded_error`: the service is short of capacity for everyone;
            // another attempt (here or elsewhere) may pass, exactly as after a 503.
            529 => (true, Health::Down, Some(FallbackReason::Unavailable)),
            500..=599 => (true, Health::Down, Some(FallbackReason::Unavailable)),
            // Anything else is not an answer a client could use, nor one worth repeating.
            _ => (false, Health::Down, Some(FallbackReason::Unavailable)),
        };
        Reading {
            retryable,
            health,
            credential: None,
            fallback,
            retry_after: None,
        }
    }
}

const UNAUTHORIZED: StatusCode = StatusCode::UNAUTHORIZED;

/// How a stream that had started ended early, as the relay saw it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Break {
    /// The upstream sent nothing for its idle timeout.
    Stalled,
    /// The upstream connection was lost.
    Reset,
    /// The stream ended in the middle of an event.
    Cut,
    /// One event grew past the relay's limit.
    Overlong,
    /// The request's own deadline passed: not the upstream's fault.
    Deadline,
    /// The upstream reported an error in its stream (the provider's error body is relayed).
    Reported,
}

impl From<crate::providers::BodyError> for Break {
    fn from(e: crate::providers::BodyError) -> Break {
        use crate::providers::BodyError;
        match e {
            BodyError::Reset => Break::Reset,
            BodyError::Cut => Break::Cut,
            BodyError::Overlong => Break::Overlong,
            BodyError::Reported(_) => Break::Reported,
        }
    }
}

impl Break {
    /// The error code and message of the closing error event, and what it says of the
    /// upstream's health.
    pub fn read(self) -> (&'static str, &'static str, Health) {
        match self {
            Break::Stalled => (
                "upstream_timeout",
                "the upstream stopped sending in the middle of the stream",
                Health::Down,
            ),
            Break::Reset => (
                "upstream_stream_broken",
                "the upstream connection was lost in the middle of the stream",
                Health::Down,
            ),
            Break::Cut => (
                "upstream_invalid",
                "the upstream stream ended in the middle of an event",
                Health::Down,
            ),
            Break::Overlong => (
                "upstream_invalid",
                "the upstream sent an over-long stream event",
                Health::Down,
            ),
            Break::Deadline => (
                "deadline_exceeded",
                "the request reached its deadline in the middle of the stream",
                Health::Unrelated,
            ),
            Break::Reported => (
                "upstream_error",
                "the upstream reported an error in the middle of the stream",
                Health::Down,
            ),
        }
    }
}

/// Whether a client-error body says the prompt is longer than the model takes (OpenAI's code or
/// wording, Anthropic's `prompt is too long`).
fn context_too_long(body: &[u8]) -> bool {
    let text = String::from_utf8_lossy(body);
    text.contains("context_length_exceeded")
        || text.contains("maximum context length")
        || text.contains("prompt is too long")
}

/// Whether a 429 says the upstream *account* is out, rather than something about this one
/// request: the upstream's own `x-ratelimit-remaining-requests: 0` or
/// `x-ratelimit-remaining-tokens: 0` (Anthropic: `anthropic-ratelimit-*-remaining: 0`), or an
/// `insufficient_quota` code or type (Anthropic: `enforced_spend_limit_reached`).
fn about_account(headers: &HeaderMap, body: &[u8]) -> bool {
    let zero = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.trim() == "0")
    };
    const ZERO_MEANS_ACCOUNT: [&str; 6] = [
        "x-ratelimit-remaining-requests",
        "x-ratelimit-remaining-tokens",
        "anthropic-ratelimit-requests-remaining",
        "anthropic-ratelimit-tokens-remaining",
        "anthropic-ratelimit-input-tokens-remaining",
        "anthropic-ratelimit-output-tokens-remaining",
    ];
    if ZERO_MEANS_ACCOUNT.iter().any(|h| zero(h)) {
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
        [b.error.code, b.error.kind].iter().any(|v| {
            matches!(
                v.as_ref().and_then(Value::as_str),
                Some("insufficient_quota" | "enforced_spend_limit_reached")
            )
        })
    })
}

/// The longest `Retry-After` Tollgate takes from an upstream: longer values (or dates further
/// ahead) are read as this. A value is only ever added to an `Instant` after this clamp, so
/// `Retry-After: 18446744073709551615` cannot overflow a deadline.
pub const MAX_UPSTREAM_RETRY_AFTER: Duration = Duration::from_secs(3600);

/// How long an upstream asks to wait: Azure OpenAI's `retry-after-ms` (milliseconds, which it
/// sends with a 429 next to a whole-second `Retry-After`, and which the OpenAI SDKs prefer too),
/// else `Retry-After`: delay-seconds or an HTTP date (RFC 9110 §10.2.3). Clamped to
/// [`MAX_UPSTREAM_RETRY_AFTER`]; a date in the past is zero. A value that is neither is ignored
/// (an unreadable `retry-after-ms` leaves `Retry-After` to speak).
fn retry_after(headers: &HeaderMap) -> Option<Duration> {
    let text = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::trim)
    };
    text(RETRY_AFTER_MS)
        .and_then(parse_retry_after_ms)
        .or_else(|| parse_retry_after(text(http::header::RETRY_AFTER.as_str())?, SystemTime::now()))
}

/// Azure's (and the OpenAI SDKs') millisecond variant of `Retry-After`.
const RETRY_AFTER_MS: &str = "retry-after-ms";

/// `retry-after-ms`: a non-negative number of milliseconds, possibly with a fraction (the SDKs
/// read it as a float), clamped to [`MAX_UPSTREAM_RETRY_AFTER`].
fn parse_retry_after_ms(v: &str) -> Option<Duration> {
    let ms: f64 = v.parse().ok()?;
    if !ms.is_finite() || ms < 0.0 || v.starts_with(['+', '-']) {
        return None;
    }
    let max = MAX_UPSTREAM_RETRY_AFTER.as_secs_f64();
    Some(Duration::from_secs_f64((ms / 1000.0).min(max)))
}

fn parse_retry_after(v: &str, now: SystemTime) -> Option<Duration> {
    let d = if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) {
        // All digits: too many of them for a u64 is simply "very long".
        v.parse::<u64>().map_or(Duration::MAX, Duration::from_secs)
    } else {
        let at = httpdate::parse_http_date(v).ok()?;
        at.duration_since(now).unwrap_or(Duration::ZERO)
    };
    Some(d.min(MAX_UPSTREAM_RETRY_AFTER))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::UNIX_EPOCH;

    #[test]
    fn retry_after_is_seconds_or_a_date_and_always_clamped() {
        let now = UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let p = |v: &str| parse_retry_after(v, now);
        assert_eq!(p("7"), Some(Duration::from_secs(7)));
        assert_eq!(p("0"), Some(Duration::ZERO));
        assert_eq!(p("18446744073709551615"), Some(MAX_UPSTREAM_RETRY_AFTER));
        assert_eq!(
            p("99999999999999999999999999"),
            Some(MAX_UPSTREAM_RETRY_AFTER)
        );
        let in_30s = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(p(&in_30s), Some(Duration::from_secs(30)));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(p(&past), Some(Duration::ZERO));
        let far = httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(253_402_300_000));
        assert_eq!(p(&far), Some(MAX_UPSTREAM_RETRY_AFTER));
        for bad in ["", "-1", "1.5", "soon", "+3"] {
            assert_eq!(p(bad), None, "{bad}");
        }
    }

    #[test]
    fn azures_retry_after_ms_comes_before_retry_after() {
        let read = |pairs: &[(&'static str, &str)]| {
            let mut h = HeaderMap::new();
            for (k, v) in pairs {
                h.insert(*k, v.parse().unwrap());
            }
            Reading::answer(StatusCode::TOO_MANY_REQUESTS, &h, b"").retry_after
        };
        let ms = Duration::from_millis;
        // Azure sends both; the millisecond one is the more precise and wins.
        assert_eq!(
            read(&[("retry-after-ms", "1500"), ("retry-after", "2")]),
            Some(ms(1500))
        );
        assert_eq!(read(&[("retry-after-ms", "200")]), Some(ms(200)));
        assert_eq!(
            read(&[("retry-after-ms", " 12.5 ")]),
            Some(Duration::from_micros(12_500))
        );
        assert_eq!(read(&[("retry-after-ms", "0")]), Some(Duration::ZERO));
        assert_eq!(
            read(&[("retry-after-ms", "99999999999999999999")]),
            Some(MAX_UPSTREAM_RETRY_AFTER)
        );
        // Unreadable: `Retry-After` speaks, or nothing does.
        for bad in ["", "-5", "+5", "soon", "NaN", "inf", "1e400"] {
            assert_eq!(
                read(&[("retry-after-ms", bad), ("retry-after", "3")]),
                Some(Duration::from_secs(3)),
                "{bad}"
            );
            assert_eq!(read(&[("retry-after-ms", bad)]), None, "{bad}");
        }
        assert_eq!(read(&[("retry-after", "3")]), Some(Duration::from_secs(3)));
        // The credential hears the same wait.
        let mut h = HeaderMap::new();
        h.insert("retry-after-ms", "750".parse().unwrap());
        assert_eq!(
            Reading::answer(StatusCode::TOO_MANY_REQUESTS, &h, b"").credential,
            Some(Outcome::RateLimited {
                after: Some(ms(750)),
                account: false
            })
        );
    }

    #[test]
    fn one_status_one_reading() {
        let none = HeaderMap::new();
        let r =
            |s: u16, body: &[u8]| Reading::answer(StatusCode::from_u16(s).unwrap(), &none, body);
        // Worth another attempt: timeouts, conflicts, rate limits, server errors, a refused
        // credential (on another upstream); not the client's own mistakes.
        for s in [408, 409, 429, 500, 502, 503, 504, 401] {
            assert!(r(s, b"").retryable, "{s}");
        }
        for s in [400, 403, 404, 413, 422] {
            assert!(!r(s, b"").retryable, "{s}");
        }
        assert_eq!(r(500, b"").health, Health::Down);
        assert_eq!(r(408, b"").health, Health::Down);
        assert_eq!(r(429, b"").health, Health::Busy);
        assert_eq!(r(400, b"").health, Health::Up);
        assert_eq!(r(401, b"").credential, Some(Outcome::Unauthorized));
        assert_eq!(r(403, b"").credential, Some(Outcome::Forbidden));
        assert_eq!(r(500, b"").credential, Some(Outcome::Ok));
        assert_eq!(r(429, b"").fallback, Some(FallbackReason::RateLimited));
        assert_eq!(r(503, b"").fallback, Some(FallbackReason::Unavailable));
        assert_eq!(r(400, b"").fallback, None);
        let long = br#"{"error":{"code":"context_length_exceeded"}}"#;
        assert_eq!(r(400, long).fallback, Some(FallbackReason::ContextLength));
        assert_eq!(Reading::answer(StatusCode::OK, &none, b""), Reading::OK);
        // Anthropic: 529 overloaded is a 503; its "prompt is too long" a context-length 400.
        let overloaded = r(529, br#"{"error":{"type":"overloaded_error"}}"#);
        assert_eq!(overloaded, r(503, b""));
        let long = br#"{"error":{"message":"prompt is too long: 210000 tokens > 200000"}}"#;
        assert_eq!(r(400, long).fallback, Some(FallbackReason::ContextLength));
    }

    #[test]
    fn a_429_is_about_the_account_only_on_its_own_word() {
        let mut h = HeaderMap::new();
        h.insert(http::header::RETRY_AFTER, "3".parse().unwrap());
        let about = |h: &HeaderMap, body: &[u8]| match Reading::answer(
            StatusCode::TOO_MANY_REQUESTS,
            h,
            body,
        )
        .credential
        {
            Some(Outcome::RateLimited { after, account }) => (after, account),
            other => panic!("{other:?}"),
        };
        assert_eq!(about(&h, b""), (Some(Duration::from_secs(3)), false));
        let quota = br#"{"error":{"type":"insufficient_quota"}}"#;
        assert_eq!(about(&h, quota), (Some(Duration::from_secs(3)), true));
        h.insert("x-ratelimit-remaining-tokens", "0".parse().unwrap());
        assert!(about(&h, b"").1);
        let mut a = HeaderMap::new();
        a.insert(
            "anthropic-ratelimit-requests-remaining",
            "0".parse().unwrap(),
        );
        assert!(about(&a, b"").1);
        let spent =
            br#"{"error":{"type":"rate_limit_error","code":"enforced_spend_limit_reached"}}"#;
        assert!(about(&HeaderMap::new(), spent).1);
    }

    #[test]
    fn failures_without_an_answer() {
        let r = |e: ApiError| Reading::failure(&e);
        assert_eq!(r(ApiError::UpstreamTimeout).health, Health::Down);
        assert!(r(ApiError::UpstreamUnreachable).retryable);
        let no_slot = r(ApiError::UpstreamUnavailable {
            message: String::new(),
            retry_after_secs: 1,
        });
        assert_eq!(
            (no_slot.retryable, no_slot.health),
            (true, Health::Unreached)
        );
        let no_cred = r(ApiError::CredentialUnavailable {
            message: String::new(),
            retry_after_secs: 1,
        });
        assert_eq!((no_cred.retryable, no_cred.fallback), (false, None));
        assert_eq!(r(ApiError::Internal).health, Health::Unrelated);
        let rejected = r(ApiError::UpstreamCredentialRejected {
            upstream: "a".into(),
        });
        assert_eq!((rejected.retryable, rejected.health), (true, Health::Up));
        assert_eq!(Break::Deadline.read().2, Health::Unrelated);
        assert_eq!(Break::Reset.read().2, Health::Down);
    }
}
