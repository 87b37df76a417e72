//! Every error Tollgate itself answers with, and the one place that turns it into HTTP.
//!
//! Each variant knows its status, its OpenAI `type`/`code`, its metric label ([`ApiError::kind`])
//! and where the fault lies ([`Source`]). Messages never contain secrets or upstream internals;
//! the body is always `{"error":{"message","type","param","code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;

pub use crate::openai::error_json;
use crate::openai::RateHeaders;

/// Read by OpenAI's SDKs before anything else when deciding to retry.
const X_SHOULD_RETRY: header::HeaderName = header::HeaderName::from_static("x-should-retry");

/// Who caused an error; decides whether a retry on another upstream can help.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Client,
    Upstream,
    Internal,
}

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
    /// An error answer from the upstream, relayed with its status. `body` is the upstream's body
    /// when it is JSON with an `error` object, otherwise it is wrapped.
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
            ModelNotAllowed { .. } => StatusCode::FORBIDDEN,
            RateLimited { .. } | InsufficientQuota { .. } | CredentialsRateLimited { .. } => {
                StatusCode::TOO_MANY_REQUESTS
            }
            Overloaded { .. }
            | CredentialUnavailable { .. }
            | UpstreamUnavailable { .. }
            | LimiterUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            UpstreamUnreachable | UpstreamInvalid => StatusCode::BAD_GATEWAY,
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
            ModelNotFound { .. } => "client_model_unknown",
            RateLimited { .. } => "policy_rate_limited",
            InsufficientQuota { .. } => "policy_budget_exceeded",
            LimiterUnavailable => "limiter_unavailable",
            CredentialsRateLimited { .. } => "credential_rate_limited",
            Overloaded { .. } => "overloaded",
            CredentialUnavailable { .. } => "credential_unavailable",
            UpstreamUnreachable => "upstream_unreachable",
            UpstreamUnavailable { .. } => "upstream_unavailable",
            UpstreamTimeout => "upstream_timeout",
            UpstreamInvalid => "upstream_invalid",
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

    pub fn source(&self) -> Source {
        use ApiError::*;
        match self {
            UpstreamUnreachable
            | UpstreamUnavailable { .. }
            | UpstreamTimeout
            | UpstreamInvalid
            | UpstreamStatus { .. } => Source::Upstream,
            CredentialUnavailable { .. }
            | CredentialsRateLimited { .. }
            | Overloaded { .. }
            | LimiterUnavailable
            | StoreUnavailable
            | Internal => Source::Internal,
            _ => Source::Client,
        }
    }

    /// Whether another attempt (same or another upstream) may succeed: connect errors, timeouts
    /// before the first byte, 408/409/429 and 5xx.
    pub fn retryable(&self) -> bool {
        match self {
            ApiError::UpstreamUnreachable
            | ApiError::UpstreamUnavailable { .. }
            | ApiError::UpstreamTimeout
            | ApiError::UpstreamInvalid => true,
            ApiError::UpstreamStatus { status, .. } => {
                matches!(status.as_u16(), 408 | 409 | 429) || status.is_server_error()
            }
            _ => false,
        }
    }

    fn openai_type(&self) -> &'static str {
        use ApiError::*;
        match self {
            Unauthorized => "authentication_error",
            ModelNotAllowed { .. } => "permission_error",
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
            ModelNotFound { .. } => "model_not_found",
            RateLimited { .. } | CredentialsRateLimited { .. } => "rate_limit_exceeded",
            InsufficientQuota { .. } => "insufficient_quota",
            LimiterUnavailable => "limiter_unavailable",
            Overloaded { .. } => "overloaded",
            CredentialUnavailable { .. } => "upstream_credential_unavailable",
            UpstreamUnreachable => "upstream_unreachable",
            UpstreamUnavailable { .. } => "upstream_unavailable",
            UpstreamTimeout => "upstream_timeout",
            UpstreamInvalid => "upstream_invalid_response",
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

    /// The OpenAI-shaped JSON body. Upstream error bodies that already have that shape pass
    /// through untouched; anything else is wrapped.
    pub fn body(&self) -> Bytes {
        if let ApiError::UpstreamStatus { body, status, .. } = self {
            if is_openai_error(body) {
                return body.clone();
            }
            let text = String::from_utf8_lossy(&body[..body.len().min(512)]).into_owned();
            let message = if text.trim().is_empty() {
                format!("upstream answered {status} with an empty body")
            } else {
                format!("upstream answered {status}: {}", text.trim())
            };
            return error_json(&message, self.openai_type(), None, self.code());
        }
        let param = match self {
            ApiError::InvalidRequest { param, .. } => param.as_deref(),
            _ => None,
        };
        error_json(&self.to_string(), self.openai_type(), param, self.code())
    }
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
