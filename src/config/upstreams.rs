//! Config of upstreams (`upstreams:`) and client-facing models (`models:`): providers,
//! timeouts, breakers, routing strategy, retries and fallbacks.

use super::*;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Any OpenAI-compatible server: vLLM, OpenAI, DeepSeek, Zhipu's compatible endpoint.
    Openai,
    /// The built-in mock model: answers without any network.
    Mock,
    /// Anthropic's Messages API, translated to and from OpenAI chat completions.
    Anthropic,
    /// Baidu Qianfan's ERNIE chat API (wenxinworkshop v1): requests and answers translated,
    /// errors sent as HTTP 200 with `error_code` mapped to statuses (see docs/PROVIDERS.md).
    Ernie,
    /// Azure OpenAI: `{base_url}/openai/deployments/{deployment}/…?api-version=…`.
    Azure,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub provider: ProviderKind,
    /// Base URL including the version path, e.g. `http://127.0.0.1:8000/v1`. Not used by `mock`;
    /// for `anthropic` it defaults to `https://api.anthropic.com` (`/v1/messages` is appended).
    /// `ernie` defaults to `https://aip.baidubce.com/rpc/2.0/ai_custom/v1/wenxinworkshop`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Name of an entry under `credentials`; none for open upstreams.
    #[serde(default)]
    pub credential: Option<String>,
    /// Model name sent upstream in place of the client's (`ernie`: the endpoint name in the
    /// path, e.g. `completions`, `ernie-speed-128k`; required there).
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Requests in flight to this upstream at once; beyond it Tollgate answers 503.
    #[serde(default = "default_max_concurrent")]
    pub max_concurrent: usize,
    /// Requests waiting for a slot when `max_concurrent` are in flight; beyond it, 503.
    #[serde(default = "default_max_queue")]
    pub max_queue: usize,
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Behaviour of the `mock` provider.
    #[serde(default)]
    pub mock: MockConfig,
    /// `anthropic` only: the `anthropic-version` header sent upstream; unset: `2023-06-01`.
    #[serde(default)]
    pub anthropic_version: Option<String>,
    /// TLS towards this upstream: a private CA, a client certificate, a server name, a
    /// minimum version. Unset: the public roots, TLS 1.2+.
    #[serde(default)]
    pub tls: Option<ClientTlsConfig>,
    /// The egress proxy for this upstream; replaces the gateway-wide `proxy:` (`{}`: direct).
    #[serde(default)]
    pub proxy: Option<ProxyConfig>,
    /// (`azure`) The deployment named in the path; `model:` when unset.
    #[serde(default)]
    pub deployment: Option<String>,
    /// (`azure`, required) The `api-version` query parameter, e.g. `2024-10-21`.
    #[serde(default)]
    pub api_version: Option<String>,
}

fn default_max_queue() -> usize {
    1024
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerConfig {
    /// Opens after this many failures in a row.
    pub consecutive_failures: u32,
    /// Opens when the error rate over `window` exceeds this (0..1)...
    pub error_rate: f64,
    /// ...or the P99 time to first byte over `window` exceeds this objective...
    pub latency_objective: Option<Dur>,
    /// ...once the window holds at least this many requests.
    pub min_requests: u32,
    pub window: Dur,
    /// How long an open breaker stays open before one probe is let through.
    pub cooldown: Dur,
}

impl Default for BreakerConfig {
    fn default() -> Self {
        BreakerConfig {
            consecutive_failures: 5,
            error_rate: 0.3,
            latency_objective: None,
            min_requests: 20,
            window: secs(300),
            cooldown: secs(30),
        }
    }
}

fn default_max_concurrent() -> usize {
    1024
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// TCP (and TLS) connect.
    pub connect: Dur,
    /// From sending the request to the response headers.
    pub first_byte: Dur,
    /// Longest gap between two stream chunks.
    pub idle: Dur,
    /// The whole request, streams included.
    pub total: Dur,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            connect: secs(5),
            first_byte: secs(60),
            idle: secs(60),
            total: secs(600),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MockConfig {
    /// Stream chunks per answer (the reply is split into this many pieces).
    pub chunks: usize,
    /// Delay between stream chunks.
    pub chunk_delay: Dur,
    /// Delay before the answer starts.
    pub latency: Dur,
    /// Fixed prompt token count to report; counted from the request when absent.
    pub prompt_tokens: Option<u64>,
    /// Fixed completion token count to report; counted from the reply when absent.
    pub completion_tokens: Option<u64>,
}

impl Default for MockConfig {
    fn default() -> Self {
        MockConfig {
            chunks: 8,
            chunk_delay: Dur(Duration::ZERO),
            latency: Dur(Duration::ZERO),
            prompt_tokens: None,
            completion_tokens: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Upstreams serving this model, with weights.
    pub targets: Vec<TargetConfig>,
    /// How the first target of each request is chosen.
    #[serde(default)]
    pub strategy: Strategy,
    /// Other models to try, in order, when every target failed for a retryable reason.
    #[serde(default)]
    pub fallbacks: Vec<String>,
    /// Per-reason fallbacks, tried first for that reason (e.g. `context_length: big-model`),
    /// even when the reason is not retryable.
    #[serde(default)]
    pub fallback_on: BTreeMap<FallbackReason, String>,
    #[serde(default)]
    pub retry: RetryConfig,
    /// Overall deadline for one request to this model, retries and fallbacks included.
    #[serde(default = "default_deadline")]
    pub deadline: Dur,
    /// The response cache for this model; none: answers are never cached.
    #[serde(default)]
    pub cache: Option<ModelCacheConfig>,
    /// Answers carry this model's client-facing name in `model` (JSON and every stream chunk);
    /// `true` leaves the name the upstream wrote (e.g. its dated or renamed model).
    #[serde(default)]
    pub keep_upstream_model: bool,
}

fn default_deadline() -> Dur {
    secs(600)
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    /// Weighted random (weight 0 drains a target).
    #[default]
    Weighted,
    /// The target with the fewest requests in flight (weight 0 still drains).
    LeastInFlight,
    /// The target with the lowest EWMA of time to first byte.
    Latency,
}

/// Why every target of a model failed; keys of `fallback_on`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum FallbackReason {
    /// The upstream said the prompt is too long for the model.
    ContextLength,
    /// The upstream (or every target) is rate limited.
    RateLimited,
    /// Connect errors, timeouts, 5xx, open breakers.
    Unavailable,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts per model, the first included (a request header can lower it).
    pub max_attempts: u32,
    /// Backoff before retry n is uniform in [0, min(max_backoff, base_backoff * 2^n)].
    pub base_backoff: Dur,
    pub max_backoff: Dur,
    /// Retries may add at most this fraction to the upstream load...
    pub budget_ratio: f64,
    /// ...plus this many retries per second.
    pub budget_min_per_sec: f64,
    /// An upstream's 429 with a `Retry-After` up to this long is waited out and retried (when
    /// it also fits the deadline and attempts are left), even on the only upstream; a longer
    /// one goes back to the client as 429 with that `Retry-After`. `0s` never waits.
    pub max_retry_after: Dur,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            base_backoff: Dur(Duration::from_millis(50)),
            max_backoff: secs(2),
            budget_ratio: 0.2,
            budget_min_per_sec: 10.0,
            max_retry_after: secs(5),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TargetConfig {
    pub upstream: String,
    #[serde(default = "one")]
    pub weight: u32,
}

fn one() -> u32 {
    1
}
