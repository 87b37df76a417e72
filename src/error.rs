//! Every error Tollgate itself answers with, and the one place that turns it into HTTP.
//!
//! Each variant knows its status, its OpenAI `type`/`code` and its metric label
//! ([`ApiError::kind`]); what an upstream failure means for retries, breakers and fallbacks is
//! read in one place, the providers' `reading` module. Messages never contain secrets or
//! upstream internals; the body is always `{"error":{"message","type","param","code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

pub use crate::openai::error_json;
use crate::openai::RateHeaders;

/// Read by OpenAI's SDKs before anything else when deciding to retry.
const X_SHOULD_RETRY: header::HeaderName = header::HeaderName::from_static("x-should-retry");

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{message}")]
    InvalidRequest {
        message: String,
        param: Option<String>,
    },
    #[error("request body is larger than {limit} bytes")]
    BodyTooLarge { limit: usize },
    #[error("the request body was not received in time")]
    BodyTimeout,
    #[error("unknown route {path}")]
    RouteNotFound { path: String },
    #[error("method {method} is not allowed on this route")]
    MethodNotAllowed { method: String },
    #[error("missing or invalid API key")]
    Unauthorized,
    #[error("model '{model}' is not allowed for this key's team")]
    ModelNotAllowed { model: String },
    /// A write to the admin API authenticated by a console session cookie without that
    /// session's CSRF token in `x-csrf-token` (see [`crate::auth::session`]).
    #[error("a console write needs its session's CSRF token in the x-csrf-token header")]
    CsrfRejected,
    #[error("model '{model}' does not exist")]
    ModelNotFound { model: String },
    /// A rate or concurrency limit of the key or its team (see [`crate::limits`]).
    #[error("{message}")]
    RateLimited {
        message: String,
        /// `None`: waiting will not help (the request alone is larger than the limit); the
        /// answer then tells SDKs not to retry.
        retry_after_secs: Option<u64>,
        /// The `x-ratelimit-*` values at refusal.
        headers: Box<RateHeaders>,
    },
    /// The key's or team's budget is spent (OpenAI's `insufficient_quota`).
    #[error("{message}")]
    InsufficientQuota {
        message: String,
        /// Until the budget period ends; `None` for a budget that never resets.
        retry_after_secs: Option<u64>,
        headers: Box<RateHeaders>,
    },
    /// The limiter's backend is down and `limits.on_backend_error` is `fail_closed`.
    #[error("rate limiting is temporarily unavailable; please retry")]
    LimiterUnavailable,
    /// Every upstream credential of a pool is cooling down after 429s.
    #[error("the upstream is rate limiting: {message}")]
    CredentialsRateLimited {
        message: String,
        retry_after_secs: u64,
    },
    #[error("Tollgate is overloaded: {message}")]
    Overloaded {
        message: String,
        retry_after_secs: u64,
    },
    #[error("the upstream credential is unavailable: {message}")]
    CredentialUnavailable {
        message: String,
        retry_after_secs: u64,
    },
    #[error("the upstream could not be reached or closed the connection")]
    UpstreamUnreachable,
    /// A connection to the upstream could not be made for a reason worth naming: its TLS
    /// (unknown CA, name mismatch, a client certificate) or the egress proxy on the way.
    #[error("cannot connect to the upstream '{upstream}': {failure}")]
    UpstreamConnect {
        upstream: String,
        failure: ConnectFailure,
    },
    /// No upstream of the model can take the request now (breakers open, queues full).
    #[error("no upstream is available: {message}")]
    UpstreamUnavailable {
        message: String,
        retry_after_secs: u64,
    },
    #[error("the upstream did not answer in time")]
    UpstreamTimeout,
    #[error("the upstream sent an invalid response")]
    UpstreamInvalid,
    /// The upstream answered 401 after the credential's renewal retry (or every pool rotation):
    /// it refuses the gateway's own credential. The client's key is fine, so this is never the
    /// client's 401: it is a 502 naming the upstream.
    #[error("the upstream '{upstream}' refused the gateway's credential")]
    UpstreamCredentialRejected { upstream: String },
    /// An error answer from the upstream, relayed with its status. Build it with
    /// [`ApiError::upstream_status`]: `body` is then always Tollgate's own OpenAI-shaped JSON
    /// (see [`sanitize_upstream_error`]).
    #[error("upstream answered {status}")]
    UpstreamStatus {
        status: StatusCode,
        body: Bytes,
        retry_after: Option<HeaderValue>,
    },
    /// An admin object (key, team) that does not exist.
    #[error("{message}")]
    NotFound { message: String },
    /// An admin change that clashes with what exists (a team name taken, a revoked key rotated).
    #[error("{message}")]
    Conflict { message: String },
    /// The store (database) cannot be reached.
    #[error("the key store is unavailable; try again shortly")]
    StoreUnavailable,
    #[error("internal error")]
    Internal,
}

impl ApiError {
    pub fn invalid(message: impl Into<String>, param: Option<&str>) -> Self {
        ApiError::InvalidRequest {
            message: message.into(),
            param: param.map(str::to_owned),
        }
    }

    pub fn status(&self) -> StatusCode {
        use ApiError::*;
        match self {
            InvalidRequest { .. } => StatusCode::BAD_REQUEST,
            BodyTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            RouteNotFound { .. } | ModelNotFound { .. } => StatusCode::NOT_FOUND,
            MethodNotAllowed { .. } => StatusCode::METHOD_NOT_ALLOWED,
            Unauthorized => StatusCode::UNAUTHORIZED,
            ModelNotAllowed { .. } | CsrfRejected => StatusCode::FORBIDDEN,
            RateLimited { .. } | InsufficientQuota { .. } | CredentialsRateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Overloaded { .. }
            | CredentialUnavailable { .. }
            | UpstreamUnavailable { .. }
            | LimiterUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamUnreachable
            | UpstreamConnect { .. }
            | UpstreamInvalid
            | UpstreamCredentialRejected { .. } => StatusCode::BAD_GATEWAY,
            UpstreamTimeout => StatusCode::GATEWAY_TIMEOUT,
            UpstreamStatus { status, .. } => *status,
            NotFound { .. } => StatusCode::NOT_FOUND,
            Conflict { .. } => StatusCode::CONFLICT,
            StoreUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Internal => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// Low-cardinality label for metrics and logs: a closed vocabulary, never a message.
    pub fn kind(&self) -> &'static str {
        use ApiError::*;
        match self {
            InvalidRequest { .. } | BodyTimeout => "client_invalid",
            BodyTooLarge { .. } => "client_body_too_large",
            RouteNotFound { .. } | MethodNotAllowed { .. } => "client_route",
            Unauthorized => "auth_failed",
            ModelNotAllowed { .. } => "policy_model_denied",
            CsrfRejected => "auth_csrf",
            ModelNotFound { .. } => "client_model_unknown",
            RateLimited { .. } => "policy_rate_limited",
            InsufficientQuota { .. } => "policy_budget_exceeded",
            LimiterUnavailable => "limiter_unavailable",
            CredentialsRateLimited { .. } => "credential_rate_limited",
            Overloaded { .. } => "overloaded",
            CredentialUnavailable { .. } => "credential_unavailable",
            UpstreamUnreachable => "upstream_unreachable",
            UpstreamConnect { failure, .. } if failure.is_proxy() => "upstream_proxy",
            UpstreamConnect { .. } => "upstream_tls",
            UpstreamUnavailable { .. } => "upstream_unavailable",
            UpstreamTimeout => "upstream_timeout",
            UpstreamInvalid => "upstream_invalid",
            UpstreamCredentialRejected { .. } => "upstream_auth",
            UpstreamStatus { status, .. } => match status.as_u16() {
                429 => "upstream_rate_limited",
                401 | 403 => "upstream_auth",
                400..=499 => "upstream_client_error",
                _ => "upstream_server_error",
            },
            NotFound { .. } => "client_not_found",
            Conflict { .. } => "client_conflict",
            StoreUnavailable => "store_unavailable",
            Internal => "internal",
        }
    }

    fn openai_type(&self) -> &'static str {
        use ApiError::*;
        match self {
            Unauthorized => "authentication_error",
            ModelNotAllowed { .. } | CsrfRejected => "permission_error",
            RateLimited { .. } | CredentialsRateLimited { .. } => "rate_limit_error",
            InsufficientQuota { .. } => "insufficient_quota",
            InvalidRequest { .. }
            | BodyTooLarge { .. }
            | BodyTimeout
            | RouteNotFound { .. }
            | MethodNotAllowed { .. }
            | ModelNotFound { .. }
            | NotFound { .. }
            | Conflict { .. } => "invalid_request_error",
            UpstreamStatus { .. } => "upstream_error",
            _ => "api_error",
        }
    }

    fn code(&self) -> &'static str {
        use ApiError::*;
        match self {
            InvalidRequest { .. } => "invalid_request",
            BodyTooLarge { .. } => "body_too_large",
            BodyTimeout => "body_timeout",
            RouteNotFound { .. } => "unknown_url",
            MethodNotAllowed { .. } => "method_not_allowed",
            Unauthorized => "invalid_api_key",
            ModelNotAllowed { .. } => "model_not_allowed",
            CsrfRejected => "csrf_token_invalid",
            ModelNotFound { .. } => "model_not_found",
            RateLimited { .. } | CredentialsRateLimited { .. } => "rate_limit_exceeded",
            InsufficientQuota { .. } => "insufficient_quota",
            LimiterUnavailable => "limiter_unavailable",
            Overloaded { .. } => "overloaded",
            CredentialUnavailable { .. } => "upstream_credential_unavailable",
            UpstreamUnreachable => "upstream_unreachable",
            UpstreamConnect { failure, .. } if failure.is_proxy() => "upstream_proxy_error",
            UpstreamConnect { .. } => "upstream_tls_error",
            UpstreamUnavailable { .. } => "upstream_unavailable",
            UpstreamTimeout => "upstream_timeout",
            UpstreamInvalid => "upstream_invalid_response",
            UpstreamCredentialRejected { .. } => "upstream_credential_rejected",
            UpstreamStatus { .. } => "upstream_error",
            NotFound { .. } => "not_found",
            Conflict { .. } => "conflict",
            StoreUnavailable => "store_unavailable",
            Internal => "internal_error",
        }
    }

    fn retry_after(&self) -> Option<HeaderValue> {
        use ApiError::*;
        match self {
            Overloaded {
                retry_after_secs, ..
            }
            | CredentialsRateLimited {
                retry_after_secs, ..
            }
            | CredentialUnavailable {
                retry_after_secs, ..
            }
            | UpstreamUnavailable {
                retry_after_secs, ..
            } => Some(HeaderValue::from(*retry_after_secs)),
            InsufficientQuota {
                retry_after_secs, ..
            }
            | RateLimited {
                retry_after_secs, ..
            } => retry_after_secs.map(HeaderValue::from),
            LimiterUnavailable => Some(HeaderValue::from(1u64)),
            UpstreamStatus { retry_after, .. } => retry_after.clone(),
            _ => None,
        }
    }

    /// An upstream's error answer: its raw body is reduced to what a client may see
    /// ([`sanitize_upstream_error`]), `secret` (the credential Tollgate attached) masked.
    pub fn upstream_status(
        status: StatusCode,
        raw: &[u8],
        retry_after: Option<HeaderValue>,
        secret: Option<&str>,
    ) -> ApiError {
        ApiError::UpstreamStatus {
            status,
            body: sanitize_upstream_error(status, raw, secret),
            retry_after,
        }
    }

    /// A retry by the client's SDK cannot succeed soon: a request larger than a rate limit, or a
    /// spent budget (it resets at the end of its period, not within an SDK's backoff).
    fn futile_to_retry(&self) -> bool {
        matches!(
            self,
            ApiError::RateLimited {
                retry_after_secs: None,
                ..
            } | ApiError::InsufficientQuota { .. }
        )
    }

    /// The OpenAI-shaped JSON body. An upstream error body was sanitized when it was read; one
    /// built some other way that is not OpenAI-shaped gets Tollgate's own message.
    pub fn body(&self) -> Bytes {
        if let ApiError::UpstreamStatus { body, status, .. } = self {
            if is_openai_error(body) {
                return body.clone();
            }
            return generic_upstream_error(*status);
        }
        let param = match self {
            ApiError::InvalidRequest { param, .. } => param.as_deref(),
            _ => None,
        };
        error_json(&self.to_string(), self.openai_type(), param, self.code())
    }
}

/// Why a connection could not be made, named for a client and a log line: the hop (the
/// upstream's TLS, the egress proxy) and the cause. A closed vocabulary, never a peer's text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnectFailure {
    /// TLS: the server's certificate chains to no CA Tollgate trusts.
    UnknownCa,
    /// TLS: the server's certificate is not valid for the name Tollgate checked.
    NameMismatch,
    /// TLS: the server's certificate is expired or not yet valid.
    CertificateExpired,
    /// TLS: the server requires a client certificate and none was sent.
    ClientCertRequired,
    /// TLS: the server refused the client certificate Tollgate sent.
    ClientCertRejected,
    /// TLS: the handshake failed otherwise (no common version or cipher, not a TLS server).
    Handshake,
    /// The egress proxy asked for credentials it did not get or accept (407).
    ProxyAuthRequired,
    /// The egress proxy refused the CONNECT with this status (403, 502, ...; 0: no valid
    /// answer, or the connection closed).
    ProxyRefused(u16),
    /// The egress proxy could not be reached.
    ProxyUnreachable,
}

impl ConnectFailure {
    /// The hop is the egress proxy (else the upstream's TLS).
    pub fn is_proxy(self) -> bool {
        matches!(
            self,
            ConnectFailure::ProxyAuthRequired
                | ConnectFailure::ProxyRefused(_)
                | ConnectFailure::ProxyUnreachable
        )
    }

    /// A short label for log fields.
    pub fn label(self) -> &'static str {
        use ConnectFailure::*;
        match self {
            UnknownCa => "unknown_ca",
            NameMismatch => "name_mismatch",
            CertificateExpired => "certificate_expired",
            ClientCertRequired => "client_cert_required",
            ClientCertRejected => "client_cert_rejected",
            Handshake => "handshake_failed",
            ProxyAuthRequired => "proxy_auth_required",
            ProxyRefused(_) => "proxy_refused",
            ProxyUnreachable => "proxy_unreachable",
        }
    }
}

impl std::fmt::Display for ConnectFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        use ConnectFailure::*;
        if let ProxyRefused(status) = self {
            return match status {
                0 => f.write_str("the egress proxy refused the tunnel (no valid answer)"),
                s => write!(f, "the egress proxy refused the tunnel ({s})"),
            };
        }
        f.write_str(match self {
            UnknownCa => {
                "TLS handshake failed: the server's certificate is signed by an unknown CA"
            }
            NameMismatch => {
                "TLS handshake failed: the server's certificate does not match its name"
            }
            CertificateExpired => {
                "TLS handshake failed: the server's certificate is expired or not yet valid"
            }
            ClientCertRequired => "TLS handshake failed: the server requires a client certificate",
            ClientCertRejected => {
                "TLS handshake failed: the server refused the gateway's client certificate"
            }
            Handshake => "TLS handshake failed",
            ProxyAuthRequired => {
                "the egress proxy requires authentication (407 Proxy Authentication Required)"
            }
            ProxyUnreachable => "the egress proxy could not be reached",
            ProxyRefused(_) => "the egress proxy refused the tunnel",
        })
    }
}

/// Longest upstream error message relayed; the rest is cut.
const MAX_UPSTREAM_MESSAGE: usize = 1024;
/// A piece of the gateway's credential this long appearing in an upstream message withholds it.
const SECRET_PIECE: usize = 12;

/// What a client sees of an upstream error body. Only an OpenAI-shaped body
/// (`{"error":{"message": string, ...}}`) is relayed, and only its `message`, `type`, `param`
/// and `code` (strings; a numeric code becomes a string), rebuilt by Tollgate: every other field
/// is dropped. The credential Tollgate attached (`secret`) is masked as `***`; a string that
/// still holds a 12-character piece of it is replaced. Anything else (HTML pages, text,
/// other JSON) is replaced by Tollgate's own message, so internal hosts, DSNs and stack traces
/// in an upstream's error page never reach the client.
pub fn sanitize_upstream_error(status: StatusCode, raw: &[u8], secret: Option<&str>) -> Bytes {
    let Ok(serde_json::Value::Object(mut top)) = serde_json::from_slice::<serde_json::Value>(raw)
    else {
        return generic_upstream_error(status);
    };
    let Some(serde_json::Value::Object(err)) = top.remove("error") else {
        return generic_upstream_error(status);
    };
    let Some(message) = err.get("message").and_then(serde_json::Value::as_str) else {
        return generic_upstream_error(status);
    };
    let secret = secret.filter(|s| !s.is_empty());
    let clean = |v: &str| -> Option<String> {
        // Mask first, then cut: a cut must not leave a part of the secret unmasked.
        let masked = match secret {
            Some(s) => v.replace(s, "***"),
            None => v.to_owned(),
        };
        let v: String = masked.chars().take(MAX_UPSTREAM_MESSAGE).collect();
        if let Some(s) = secret {
            let piece = SECRET_PIECE.min(s.len());
            let leaked = (0..=s.len() - piece)
                .filter_map(|i| s.get(i..i + piece))
                .any(|p| v.contains(p));
            if leaked {
                return None;
            }
        }
        Some(v)
    };
    let field = |name: &str| -> Option<String> {
        match err.get(name) {
            Some(serde_json::Value::String(s)) => clean(s),
            Some(serde_json::Value::Number(n)) => clean(&n.to_string()),
            _ => None,
        }
    };
    let message = clean(message).unwrap_or_else(|| {
        format!("the upstream answered {status}; its message was withheld by the gateway")
    });
    let kind = field("type").unwrap_or_else(|| "upstream_error".to_owned());
    let code = field("code");
    let param = field("param");
    let v = serde_json::json!({"error": {"message": message, "type": kind, "param": param, "code": code}});
    Bytes::from(v.to_string())
}

/// Tollgate's own message for an upstream error body it does not relay.
fn generic_upstream_error(status: StatusCode) -> Bytes {
    error_json(
        &format!("the upstream answered {status}"),
        "upstream_error",
        None,
        "upstream_error",
    )
}

fn is_openai_error(body: &[u8]) -> bool {
    serde_json::from_slice::<serde_json::Value>(body)
        .is_ok_and(|v| v.get("error").is_some_and(serde_json::Value::is_object))
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut resp = (self.status(), self.body()).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if let Some(v) = self.retry_after() {
            headers.insert(header::RETRY_AFTER, v);
        }
        if self.futile_to_retry() {
            // OpenAI's SDKs read this before the status: no automatic retries.
            headers.insert(X_SHOULD_RETRY, HeaderValue::from_static("false"));
        }
        if let ApiError::RateLimited { headers: rate, .. }
        | ApiError::InsufficientQuota { headers: rate, .. } = &self
        {
            rate.apply(headers);
        }
        // The error's kind travels to the request log and metrics through an extension.
        resp.extensions_mut().insert(ErrorKind(self.kind()));
        resp
    }
}

/// Response extension carrying [`ApiError::kind`] to the accounting step.
#[derive(Debug, Clone, Copy)]
pub struct ErrorKind(pub &'static str);

#[cfg(test)]
mod tests {
    use super::*;

    fn clean(raw: &str, secret: Option<&str>) -> serde_json::Value {
        let b = sanitize_upstream_error(StatusCode::BAD_REQUEST, raw.as_bytes(), secret);
        serde_json::from_slice(&b).unwrap_or_default()
    }

    #[test]
    fn only_openai_fields_are_relayed_and_the_secret_is_masked() {
        let v = clean(
            r#"{"error":{"message":"Incorrect API key provided: sk-live-0123456789abcdef.","type":"invalid_request_error","param":null,"code":"invalid_api_key","key":"sk-live-0123456789abcdef"},"debug":"x"}"#,
            Some("sk-live-0123456789abcdef"),
        );
        assert_eq!(v["error"]["message"], "Incorrect API key provided: ***.");
        assert_eq!(v["error"]["type"], "invalid_request_error");
        assert_eq!(v["error"]["code"], "invalid_api_key");
        assert!(v["error"].get("key").is_none() && v.get("debug").is_none());
        // A piece of the secret withholds the message.
        let v = clean(
            r#"{"error":{"message":"bad key 0123456789abcdef"}}"#,
            Some("sk-live-0123456789abcdef"),
        );
        assert!(!v.to_string().contains("0123456789ab"), "{v}");
        // Numeric codes become strings; other shapes get Tollgate's message.
        assert_eq!(
            clean(r#"{"error":{"message":"m","code":1214}}"#, None)["error"]["code"],
            "1214"
        );
        for raw in [
            "<html>db=postgres://u:p@db.internal</html>",
            r#"{"detail":"x"}"#,
            r#"{"error":"x"}"#,
            r#"{"error":{"code":1}}"#,
            "",
        ] {
            let v = clean(raw, None);
            assert_eq!(v["error"]["code"], "upstream_error", "{raw}");
            assert_eq!(
                v["error"]["message"], "the upstream answered 400 Bad Request",
                "{raw}"
            );
        }
    }
}
