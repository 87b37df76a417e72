//! Baidu's `error_code`s (sent in an HTTP 200 body, or as a stream event) read as the HTTP
//! answer they stand for, so the one classifier ([`crate::providers::reading`]) and the attempt
//! loop treat an ERNIE upstream like any other: 110/111 are a 401 (the credential renews once and
//! the request is sent once more), the QPS/RPM/TPM limits a 429 that asks to wait a second, the
//! daily and total quotas a 429 about the account, internal errors and overload a retryable 503,
//! the caller's mistakes a 4xx. The code itself reaches the client as `ernie_<N>`.
//!
//! Where the codes were checked (docs/PROVIDERS.md lists them). Baidu's error code page itself
//! (cloud.baidu.com/doc/WENXINWORKSHOP/s/tlmyncueh) is not in the stored copies available here;
//! Baidu's own SDKs name every code but the length ones, and agree with this table:
//! - github.com/baidubce/bce-qianfan-sdk at 6cacf600 (2025-12-12), `go/qianfan/consts.go` and
//!   `python/qianfan/consts.py` (`APIErrorCode`): 1 unknown, 2 service unavailable, 3
//!   unsupported method, 4 request limit, 6 no permission, 13 service token, 14 IAM
//!   certification, 15 app not exist, 17 daily limit, 18 QPS limit, 19 total request limit,
//!   100 invalid request, 110/111 token invalid/expired, 336000 internal error, 336001 invalid
//!   argument, 336002 invalid JSON, 336003 invalid param, 336004 permission, 336005 API name
//!   not exist, 336100 server high load, 336101 invalid HTTP method, 336104/336105 invalid
//!   system / user setting, 336501 RPM, 336502 TPM. Its retried set (`RetryErrCodes`) is 2,
//!   15, 18, 336100, 336501, 336502.
//! - github.com/PaddlePaddle/ERNIE-SDK at 157ca7ea, `erniebot/src/erniebot/backends/bce.py`:
//!   17 request limit, 18 rate limit, 110/111 token, 336002/336003/336006/336007/336102 bad
//!   request, 336100 try again.
//!
//! Not verified from a Baidu source: that 336007, 336008 and 336103 mean "input too long"
//! (336007 and 336103 are read so by a third-party adapter, github.com/iimeta/fastapi-sdk
//! `baidu`; nothing found for 336008). They stay 400s either way; only the "maximum context
//! length" wording depends on it.

use bytes::Bytes;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use serde_json::json;

/// How Tollgate reads one ERNIE error code.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mapped {
    pub status: StatusCode,
    /// The OpenAI error `type`.
    pub kind: &'static str,
    /// A `Retry-After` (seconds) the classifier reads, as it would an upstream's.
    pub retry_after: Option<u64>,
    /// The limit is the account's (a daily or total quota): the upstream leaves every tenant's
    /// plans for a while, as on an OpenAI `x-ratelimit-remaining-requests: 0`.
    pub account: bool,
}

const fn m(status: StatusCode, kind: &'static str) -> Mapped {
    Mapped {
        status,
        kind,
        retry_after: None,
        account: false,
    }
}

/// The status an ERNIE `error_code` stands for.
pub fn map(code: i64) -> Mapped {
    match code {
        // Access token invalid (110) or expired (111): exactly a 401.
        110 | 111 => m(StatusCode::UNAUTHORIZED, "authentication_error"),
        // Cluster limit (4), QPS (18), RPM (336501), TPM (336502): wait a moment.
        4 | 18 | 336501 | 336502 => Mapped {
            retry_after: Some(1),
            ..m(StatusCode::TOO_MANY_REQUESTS, "rate_limit_error")
        },
        // Daily (17) and total (19) request quotas: the account's, not this request's.
        17 | 19 => Mapped {
            retry_after: Some(60),
            account: true,
            ..m(StatusCode::TOO_MANY_REQUESTS, "insufficient_quota")
        },
        // Unknown error (1), temporarily unavailable (2), internal error (336000), overloaded
        // / try again later (336100): another attempt may succeed.
        1 | 2 | 336000 | 336100 => m(StatusCode::SERVICE_UNAVAILABLE, "api_error"),
        // No permission (6), token or IAM failure (13, 14), no permission for the model (336004).
        6 | 13 | 14 | 336004 => m(StatusCode::FORBIDDEN, "permission_error"),
        // No such API (3) or endpoint (336005): the upstream's `model:` is wrong.
        3 | 336005 => m(StatusCode::NOT_FOUND, "invalid_request_error"),
        // Invalid parameters and the like (100, 336001..336003, 336006..336105).
        100 | 336001..=336003 | 336006..=336199 => {
            m(StatusCode::BAD_REQUEST, "invalid_request_error")
        }
        // Anything else (15 "app not exist" among them, which Baidu's SDK retries too): the
        // upstream failed in a way Tollgate does not know.
        _ => m(StatusCode::BAD_GATEWAY, "upstream_error"),
    }
}

/// Input too long for the model (the question, the system text, the whole prompt): worded so
/// that `fallback_on: context_length` applies.
fn too_long(code: i64) -> bool {
    matches!(code, 336007 | 336008 | 336103)
}

/// The OpenAI-shaped error body for an ERNIE error, naming its code.
pub fn error_body(code: i64, message: &str, kind: &str) -> Bytes {
    let mut text = format!("ernie error {code}: {message}");
    if too_long(code) {
        text.push_str(" (maximum context length exceeded)");
    }
    let v = json!({"error": {"message": text, "type": kind, "param": null,
        "code": format!("ernie_{code}")}});
    Bytes::from(v.to_string())
}

/// The headers the classifier reads for this mapping: `Retry-After`, and the account's own
/// "nothing left" for a spent quota.
pub fn headers(mapped: &Mapped) -> HeaderMap {
    let mut h = HeaderMap::with_capacity(3);
    h.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    if let Some(s) = mapped.retry_after {
        h.insert(http::header::RETRY_AFTER, HeaderValue::from(s));
    }
    if mapped.account {
        h.insert(
            HeaderName::from_static("x-ratelimit-remaining-requests"),
            HeaderValue::from_static("0"),
        );
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::credentials::Outcome;
    use crate::providers::reading::{Health, Reading};

    fn read(code: i64) -> Reading {
        let mapped = map(code);
        let body = error_body(code, "x", mapped.kind);
        Reading::answer(mapped.status, &headers(&mapped), &body)
    }

    #[test]
    fn each_class_reads_as_its_http_answer() {
        for c in [110, 111] {
            assert_eq!(read(c).credential, Some(Outcome::Unauthorized), "{c}");
        }
        for c in [4, 18, 336501, 336502] {
            let r = read(c);
            assert!(r.retryable && r.health == Health::Busy, "{c}");
            assert_eq!(r.retry_after, Some(std::time::Duration::from_secs(1)));
            assert!(matches!(
                r.credential,
                Some(Outcome::RateLimited { account: false, .. })
            ));
        }
        assert!(matches!(
            read(17).credential,
            Some(Outcome::RateLimited { account: true, .. })
        ));
        for c in [336100, 336000, 2] {
            let r = read(c);
            assert!(r.retryable && r.health == Health::Down, "{c}");
        }
        for c in [336003, 100, 6, 336005] {
            assert!(!read(c).retryable, "{c}");
        }
        assert_eq!(
            read(336007).fallback,
            Some(crate::config::FallbackReason::ContextLength)
        );
        let body: serde_json::Value =
            serde_json::from_slice(&error_body(336003, "bad", "invalid_request_error")).unwrap();
        assert_eq!(body["error"]["code"], "ernie_336003");
    }
}
