//! The OpenAI wire vocabulary every layer shares: the endpoints Tollgate relays, the request body
//! as it is parsed once and edited in place ([`Body`], in `body.rs`), token usage as OpenAI
//! reports it, the `x-ratelimit-*` headers, and the error body
//! `{"error":{"message","type","param","code"}}`.
//!
//! Ground layer: plain types and their wire spelling, no policy. It must not use any other module
//! of the crate; everything above (policy, limits, providers, error, proxy) speaks through it.

mod body;
pub mod model;

pub use body::{Body, BodyError, Items, JsonFields, Kind};

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue};
use serde::Deserialize;
use serde_json::json;
use std::time::Duration;

/// The OpenAI endpoints Tollgate relays.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Endpoint {
    Chat,
    Completions,
    Embeddings,
}

impl Endpoint {
    /// Path appended to an upstream's base URL.
    pub fn path(self) -> &'static str {
        match self {
            Endpoint::Chat => "/chat/completions",
            Endpoint::Completions => "/completions",
            Endpoint::Embeddings => "/embeddings",
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            Endpoint::Chat => "chat",
            Endpoint::Completions => "completions",
            Endpoint::Embeddings => "embeddings",
        }
    }
}

/// Token counts as OpenAI reports them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
pub struct Usage {
    #[serde(default)]
    pub prompt_tokens: u64,
    #[serde(default)]
    pub completion_tokens: u64,
}

/// One limit's state for the `x-ratelimit-*` headers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RateInfo {
    pub limit: u64,
    pub remaining: u64,
    /// Until the limit is fully available again.
    pub reset: Duration,
}

/// The `x-ratelimit-{limit,remaining,reset}-{requests,tokens}` values: of the key's and the
/// team's limit, the one with less remaining. `None` when neither scope sets that limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateHeaders {
    pub requests: Option<RateInfo>,
    pub tokens: Option<RateInfo>,
}

impl RateHeaders {
    fn merge(slot: &mut Option<RateInfo>, info: RateInfo) {
        if slot.is_none_or(|s| info.remaining < s.remaining) {
            *slot = Some(info);
        }
    }
    pub fn add_requests(&mut self, info: RateInfo) {
        Self::merge(&mut self.requests, info);
    }
    pub fn add_tokens(&mut self, info: RateInfo) {
        Self::merge(&mut self.tokens, info);
    }

    /// Write the headers OpenAI sends (reset as a Go-style duration, e.g. `1s`, `6m0s`, `20ms`):
    /// names made once, numbers written without a format string.
    pub fn apply(&self, headers: &mut HeaderMap) {
        const NAMES: [[HeaderName; 3]; 2] = [
            [
                HeaderName::from_static("x-ratelimit-limit-requests"),
                HeaderName::from_static("x-ratelimit-remaining-requests"),
                HeaderName::from_static("x-ratelimit-reset-requests"),
            ],
            [
                HeaderName::from_static("x-ratelimit-limit-tokens"),
                HeaderName::from_static("x-ratelimit-remaining-tokens"),
                HeaderName::from_static("x-ratelimit-reset-tokens"),
            ],
        ];
        for (info, [limit, remaining, reset]) in [
            (&self.requests, NAMES[0].clone()),
            (&self.tokens, NAMES[1].clone()),
        ] {
            let Some(i) = info else { continue };
            headers.insert(limit, HeaderValue::from(i.limit));
            headers.insert(remaining, HeaderValue::from(i.remaining));
            if let Ok(v) = HeaderValue::from_str(&go_duration(i.reset)) {
                headers.insert(reset, v);
            }
        }
    }
}

/// `1h2m3.5s`, `6m0s`, `1.25s`, `20ms`, `0s`, the way OpenAI (Go) prints durations.
pub fn go_duration(d: Duration) -> String {
    let ms = d.as_millis();
    if ms == 0 {
        return "0s".into();
    }
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let h = ms / 3_600_000;
    let m = (ms / 60_000) % 60;
    let (whole, frac) = ((ms % 60_000) / 1000, ms % 1000);
    // Seconds with up to three decimals, trailing zeros dropped (`1.25`, `6`).
    let mut secs = whole.to_string();
    if frac > 0 {
        let digits = format!("{frac:03}");
        secs.push('.');
        secs.push_str(digits.trim_end_matches('0'));
    }
    match (h, m) {
        (0, 0) => format!("{secs}s"),
        (0, m) => format!("{m}m{secs}s"),
        (h, m) => format!("{h}h{m}m{secs}s"),
    }
}

/// Build `{"error":{"message","type","param","code"}}`.
pub fn error_json(message: &str, kind: &str, param: Option<&str>, code: &str) -> Bytes {
    let v = json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    Bytes::from(v.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn go_durations() {
        assert_eq!(go_duration(Duration::ZERO), "0s");
        assert_eq!(go_duration(Duration::from_millis(20)), "20ms");
        assert_eq!(go_duration(Duration::from_millis(1000)), "1s");
        assert_eq!(go_duration(Duration::from_millis(1250)), "1.25s");
        assert_eq!(go_duration(Duration::from_secs(360)), "6m0s");
        assert_eq!(go_duration(Duration::from_secs(3723)), "1h2m3s");
        assert_eq!(go_duration(Duration::from_millis(1005)), "1.005s");
        assert_eq!(go_duration(Duration::from_millis(61_500)), "1m1.5s");
        assert_eq!(go_duration(Duration::from_millis(3_600_040)), "1h0m0.04s");
    }

    #[test]
    fn headers_take_the_scope_with_less_remaining() {
        let mut h = RateHeaders::default();
        h.add_requests(RateInfo {
            limit: 100,
            remaining: 50,
            reset: Duration::from_secs(30),
        });
        h.add_requests(RateInfo {
            limit: 10,
            remaining: 3,
            reset: Duration::from_secs(42),
        });
        let mut map = HeaderMap::new();
        h.apply(&mut map);
        assert_eq!(map["x-ratelimit-limit-requests"], "10");
        assert_eq!(map["x-ratelimit-remaining-requests"], "3");
        assert_eq!(map["x-ratelimit-reset-requests"], "42s");
        assert!(map.get("x-ratelimit-limit-tokens").is_none());
    }
}
