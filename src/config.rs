//! The config file: typed, validated before any port is bound, every error naming its field.
//!
//! Owns the YAML schema (serde structs with `deny_unknown_fields` and defaults), loading with
//! field paths (`serde_path_to_error`) and line numbers (the YAML parser's), and [`Config::validate`]
//! which checks cross references (models -> upstreams -> credentials, keys -> teams) and resolves
//! secret references. It must not build runtime objects: that is [`crate::state`]'s job.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use serde::Deserialize;

use crate::secret::{EnvSource, SecretRef};

/// A duration written as `250ms`, `2s`, `5m` or `1h`.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl fmt::Debug for Dur {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?}", self.0)
    }
}

impl Dur {
    pub fn parse(s: &str) -> Result<Dur, String> {
        let s = s.trim();
        let split = s
            .find(|c: char| !c.is_ascii_digit() && c != '.')
            .ok_or_else(|| format!("duration '{s}' needs a unit (ms, s, m, h)"))?;
        let (num, unit) = s.split_at(split);
        let n: f64 = num
            .parse()
            .map_err(|_| format!("duration '{s}' has no valid number"))?;
        let secs = match unit {
            "ms" => n / 1000.0,
            "s" => n,
            "m" => n * 60.0,
            "h" => n * 3600.0,
            _ => return Err(format!("duration '{s}' has an unknown unit '{unit}'")),
        };
        if !(0.0..=31_536_000.0).contains(&secs) {
            return Err(format!("duration '{s}' is out of range"));
        }
        Ok(Dur(Duration::from_secs_f64(secs)))
    }
}

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Dur::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn secs(n: u64) -> Dur {
    Dur(Duration::from_secs(n))
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Listener, limits on what clients may send, shutdown.
    #[serde(default)]
    pub server: ServerConfig,
    /// Named upstream credentials, referenced by upstreams.
    #[serde(default)]
    pub credentials: BTreeMap<String, CredentialConfig>,
    /// Upstream deployments: where requests go.
    pub upstreams: BTreeMap<String, UpstreamConfig>,
    /// Client-facing model names, each served by one or more upstreams.
    pub models: BTreeMap<String, ModelConfig>,
    /// Teams: what their keys may do.
    pub teams: BTreeMap<String, TeamConfig>,
    /// Client keys.
    #[serde(default)]
    pub keys: Vec<KeyConfig>,
    /// The admin API's key; without it `/admin` is closed.
    #[serde(default)]
    pub admin: Option<AdminConfig>,
    /// Where rate-limit, concurrency and spend state lives, and what happens when it is down.
    #[serde(default)]
    pub limits: LimitsConfig,
    /// Prices per client-facing model (USD per million tokens); overrides the built-in table.
    #[serde(default)]
    pub prices: BTreeMap<String, PriceConfig>,
    /// Where keys made through the admin API, teams, usage and audit live; without it only
    /// config keys work and no usage rows are written.
    #[serde(default)]
    pub store: Option<StoreConfig>,
}

/// The limiter: backend, failure policy, estimates. Limits themselves are set per team and key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// `memory` (one instance; the default) or `redis` (state shared by every replica).
    pub backend: LimiterBackend,
    /// Redis URL (`redis://[:password@]host:port[/db]`), best as `${ENV}` or `file:`; required
    /// with `backend: redis`.
    pub redis_url: Option<SecretRef>,
    /// Prefix of every Redis key Tollgate writes, so deployments can share one Redis.
    pub redis_prefix: String,
    /// Longest wait for Redis on the request path; beyond it `on_backend_error` applies.
    pub redis_timeout: Dur,
    /// When the backend cannot answer: `fail_open` admits unlimited (and logs, and counts),
    /// `fail_closed` answers 503.
    pub on_backend_error: OnBackendError,
    /// Completion tokens assumed for the estimate when a request sets no `max_tokens`.
    pub default_max_tokens: u64,
    /// A request's concurrency slot and budget reservation expire after this long even if the
    /// replica holding them died; keep it above the longest request (`timeouts.total`).
    pub lease_ttl: Dur,
    /// Memory backend: spend is saved to this JSON file and read back at start (none: spend is
    /// lost on restart).
    pub state_file: Option<std::path::PathBuf>,
    /// Memory backend: how often the state file is rewritten when spend changed.
    pub state_flush_interval: Dur,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            backend: LimiterBackend::Memory,
            redis_url: None,
            redis_prefix: "tollgate:".into(),
            redis_timeout: Dur(Duration::from_millis(250)),
            on_backend_error: OnBackendError::FailOpen,
            default_max_tokens: 1024,
            lease_ttl: secs(900),
            state_file: None,
            state_flush_interval: secs(5),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoreConfig {
    /// `sqlite://tollgate.db?mode=rwc` (embedded) or `postgres://user@host/db`; may be an
    /// `${ENV}` or `file:` reference (a PostgreSQL URL can carry a password).
    pub url: SecretRef,
    /// Connections in the pool.
    #[serde(default = "default_store_connections")]
    pub max_connections: u32,
    /// How long a store key lookup is answered from memory before it is re-read in the
    /// background; a change reaches every replica within twice this. At most 2.5s.
    #[serde(default = "default_key_cache_ttl")]
    pub key_cache_ttl: Dur,
    /// While the store cannot be read, cached store keys keep working this long.
    #[serde(default = "default_stale_if_error")]
    pub stale_if_error: Dur,
    #[serde(default)]
    pub usage: UsageWriterConfig,
}

fn default_store_connections() -> u32 {
    8
}
fn default_key_cache_ttl() -> Dur {
    Dur(Duration::from_secs(2))
}
fn default_stale_if_error() -> Dur {
    secs(60)
}

/// The usage writer: a bounded queue between requests and the store, written in batches.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct UsageWriterConfig {
    /// Rows the queue holds while the store is slow or down.
    pub queue: usize,
    /// Most rows in one batch (one transaction); at most 2000.
    pub batch_size: usize,
    /// A batch is written when full or when its first row has waited this long.
    pub batch_interval: Dur,
    /// What happens to a row when the queue is full: `spill` or `block`.
    pub on_full: OnFull,
    /// With `on_full: block`, how long a row waits for room before it is spilled.
    pub block_timeout: Dur,
    /// The local JSON-lines file rows spill to; replayed into the store later.
    pub spill_path: std::path::PathBuf,
    /// On shutdown, how long the writer may take to write what is queued (the rest spills).
    pub flush_timeout: Dur,
}

impl Default for UsageWriterConfig {
    fn default() -> Self {
        UsageWriterConfig {
            queue: 65_536,
            batch_size: 1000,
            batch_interval: Dur(Duration::from_millis(100)),
            on_full: OnFull::Spill,
            block_timeout: Dur(Duration::from_millis(100)),
            spill_path: "tollgate-usage.spill.jsonl".into(),
            flush_timeout: secs(10),
        }
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimiterBackend {
    /// In process: exact and fastest, but each replica counts alone.
    #[default]
    Memory,
    /// Redis: one atomic script per admission, shared by every replica.
    Redis,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnBackendError {
    /// Admit without limits while the backend is down (availability first).
    #[default]
    FailOpen,
    /// Refuse with 503 while the backend is down (budgets first).
    FailClosed,
}

/// A model's price, USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceConfig {
    /// Prompt (input) tokens.
    pub input_per_million: f64,
    /// Completion (output) tokens.
    pub output_per_million: f64,
}

/// A spending cap.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// The cap in US dollars.
    pub amount_usd: f64,
    /// When spend starts again from zero: `daily` / `monthly` (UTC) or `none` (never).
    #[serde(default)]
    pub period: BudgetPeriod,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    /// Resets at 00:00 UTC.
    Daily,
    /// Resets at 00:00 UTC on the 1st.
    #[default]
    Monthly,
    /// Never resets.
    None,
}

/// The full-queue policy of the usage writer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnFull {
    /// Append the row to the spill file.
    #[default]
    Spill,
    /// Wait (off the request path) up to `block_timeout` for room, then spill.
    Block,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// SHA-256 of the admin key, hex.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The admin key as an `${ENV}` or `file:` reference.
    #[serde(default)]
    pub key: Option<SecretRef>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ServerConfig {
    /// Address to listen on.
    pub listen: SocketAddr,
    /// Largest request body accepted from any client (teams may set lower).
    pub max_body_bytes: usize,
    /// A client must send its request headers within this time.
    pub header_read_timeout: Dur,
    /// A client must send its whole body within this time.
    pub body_read_timeout: Dur,
    /// Requests handled at once; beyond it Tollgate answers 503.
    pub max_in_flight: usize,
    /// On SIGTERM/SIGINT, in-flight requests and streams get this long to finish.
    pub shutdown_grace: Dur,
    /// Client headers forwarded to upstreams (everything else is dropped).
    pub forward_headers: Vec<String>,
    /// Largest non-stream upstream response body Tollgate will relay.
    pub max_response_bytes: usize,
    pub cors: CorsConfig,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 4 * 1024 * 1024,
            header_read_timeout: secs(10),
            body_read_timeout: secs(30),
            max_in_flight: 10_000,
            shutdown_grace: secs(30),
            forward_headers: vec!["accept".into(), "user-agent".into(), "openai-beta".into()],
            max_response_bytes: 64 * 1024 * 1024,
            cors: CorsConfig::default(),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CorsConfig {
    /// Origins allowed to call from a browser; empty disables CORS. `*` allows any origin and
    /// cannot be combined with `allow_credentials`.
    pub allowed_origins: Vec<String>,
    pub allow_credentials: bool,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, tag = "kind", rename_all = "snake_case")]
pub enum CredentialConfig {
    /// A fixed key.
    Static {
        /// The key, as `${ENV}` or `file:PATH` (a literal is warned about).
        secret: SecretRef,
        /// Where the key goes on upstream requests.
        #[serde(default)]
        placement: Placement,
    },
    /// OAuth2 client credentials (RFC 6749 §4.4), renewed in the background.
    Oauth2(OAuth2Config),
    /// A self-signed HS256 JWT from an `id.secret` API key (Zhipu GLM style).
    Jwt(JwtConfig),
    /// Many credentials for one upstream, with rotation, cooldown and a watched token file.
    Pool(PoolConfig),
}

impl CredentialConfig {
    pub fn kind(&self) -> &'static str {
        match self {
            CredentialConfig::Static { .. } => "static",
            CredentialConfig::Oauth2(_) => "oauth2",
            CredentialConfig::Jwt(_) => "jwt",
            CredentialConfig::Pool(_) => "pool",
        }
    }
}

/// How the OAuth2 client authenticates to the token endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// `client_id` and `client_secret` in the form body (`client_secret_post`).
    #[default]
    Form,
    /// HTTP Basic with the client id and secret (`client_secret_basic`).
    Basic,
    /// `grant_type`, `client_id`, `client_secret` as query parameters (Baidu's AK/SK endpoint).
    Query,
}

/// HTTP method used for the token request.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TokenMethod {
    #[default]
    Post,
    /// Only meaningful with `client_auth: query`.
    Get,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OAuth2Config {
    /// The token endpoint, e.g. `https://auth.example.com/oauth2/token`.
    pub token_url: String,
    /// The client id (for Baidu: the API key).
    pub client_id: SecretRef,
    /// The client secret (for Baidu: the secret key), as `${ENV}` or `file:PATH`.
    pub client_secret: SecretRef,
    /// Scope to ask for; none sends no `scope`.
    #[serde(default)]
    pub scope: Option<String>,
    /// How the client authenticates to the token endpoint.
    #[serde(default)]
    pub client_auth: ClientAuth,
    /// Method of the token request.
    #[serde(default)]
    pub token_method: TokenMethod,
    /// Where the access token goes on upstream requests (`bearer`, `{header: name}`,
    /// `{query: access_token}`).
    #[serde(default)]
    pub placement: Placement,
    /// Renew when this much lifetime remains at least (the margin is the larger of this and
    /// `renew_fraction` of the lifetime, capped at half the lifetime).
    #[serde(default = "default_renew_margin")]
    pub renew_margin: Dur,
    /// Renew when this fraction of the lifetime remains at least.
    #[serde(default = "default_renew_fraction")]
    pub renew_fraction: f64,
    /// At most one renewal per this interval, so a short-lived token never causes a loop.
    #[serde(default = "default_min_renew_interval")]
    pub min_renew_interval: Dur,
    /// Lifetime assumed when the token response has no usable `expires_in`.
    #[serde(default = "default_lifetime")]
    pub default_lifetime: Dur,
    /// `expires_in` is clamped to at least this.
    #[serde(default = "default_min_lifetime")]
    pub min_lifetime: Dur,
    /// `expires_in` is clamped to at most this (guards against absurd values).
    #[serde(default = "default_max_lifetime")]
    pub max_lifetime: Dur,
    /// Connect timeout of the token request.
    #[serde(default = "default_token_connect_timeout")]
    pub connect_timeout: Dur,
    /// Total timeout of one token request; a hung token server cannot hang renewals.
    #[serde(default = "default_token_timeout")]
    pub timeout: Dur,
    /// Longest a client request waits for a token when none is usable; then 503.
    #[serde(default = "default_lease_timeout")]
    pub lease_timeout: Dur,
    /// Token requests per renewal round before giving up until the next round.
    #[serde(default = "default_max_attempts")]
    pub max_attempts: u32,
    /// First backoff step between failed token requests (full jitter, doubling).
    #[serde(default = "default_backoff_base")]
    pub backoff_base: Dur,
    /// Largest backoff between failed token requests, and the pause between failed rounds.
    #[serde(default = "default_backoff_max")]
    pub backoff_max: Dur,
    /// After a permanent failure (`invalid_client`, `invalid_grant`), retry this slowly.
    #[serde(default = "default_failed_retry_interval")]
    pub failed_retry_interval: Dur,
}

fn default_renew_margin() -> Dur {
    secs(60)
}
fn default_renew_fraction() -> f64 {
    0.1
}
fn default_min_renew_interval() -> Dur {
    secs(1)
}
fn default_lifetime() -> Dur {
    secs(3600)
}
fn default_min_lifetime() -> Dur {
    secs(1)
}
fn default_max_lifetime() -> Dur {
    secs(7 * 24 * 3600)
}
fn default_token_connect_timeout() -> Dur {
    secs(5)
}
fn default_token_timeout() -> Dur {
    secs(10)
}
fn default_lease_timeout() -> Dur {
    secs(10)
}
fn default_max_attempts() -> u32 {
    5
}
fn default_backoff_base() -> Dur {
    Dur(Duration::from_millis(200))
}
fn default_backoff_max() -> Dur {
    secs(30)
}
fn default_failed_retry_interval() -> Dur {
    secs(300)
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// The API key in the form `id.secret`, as `${ENV}` or `file:PATH`.
    pub api_key: SecretRef,
    /// Lifetime written into each token's `exp`.
    #[serde(default = "default_jwt_ttl")]
    pub ttl: Dur,
    /// Re-sign when this much lifetime remains (clamped to half the ttl).
    #[serde(default = "default_jwt_margin")]
    pub renew_margin: Dur,
    /// Where the token goes on upstream requests.
    #[serde(default)]
    pub placement: Placement,
}

fn default_jwt_ttl() -> Dur {
    secs(1800)
}
fn default_jwt_margin() -> Dur {
    secs(60)
}

/// How a pool picks its next member.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    #[default]
    RoundRobin,
    LeastInFlight,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Static tokens listed inline, each an `${ENV}` / `file:` reference (literals are warned).
    #[serde(default)]
    pub tokens: Vec<SecretRef>,
    /// A file with one token per line (blank lines and `#` comments ignored); watched, edits
    /// apply within 2 s.
    #[serde(default)]
    pub file: Option<String>,
    /// Members of any other kind (e.g. several OAuth2 clients). Pools do not nest.
    #[serde(default)]
    pub members: Vec<CredentialConfig>,
    /// Where `tokens` and `file` tokens go on upstream requests.
    #[serde(default)]
    pub placement: Placement,
    /// Round robin (default) or least in flight.
    #[serde(default)]
    pub selection: Selection,
    /// Cooldown after a 429 that carries no `Retry-After`.
    #[serde(default = "default_cooldown")]
    pub default_cooldown: Dur,
}

fn default_cooldown() -> Dur {
    secs(30)
}

/// Where a credential goes on the upstream request.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "snake_case")]
pub enum Placement {
    /// `Authorization: Bearer <token>`.
    #[default]
    Bearer,
    /// A named header, e.g. `api-key: <token>`.
    Header(String),
    /// A query parameter, e.g. `?access_token=<token>`.
    Query(String),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProviderKind {
    /// Any OpenAI-compatible server: vLLM, OpenAI, DeepSeek, Zhipu's compatible endpoint.
    Openai,
    /// The built-in mock model: answers without any network.
    Mock,
}

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpstreamConfig {
    pub provider: ProviderKind,
    /// Base URL including the version path, e.g. `http://127.0.0.1:8000/v1`. Not used by `mock`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Name of an entry under `credentials`; none for open upstreams.
    #[serde(default)]
    pub credential: Option<String>,
    /// Model name sent upstream in place of the client's.
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
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            max_attempts: 3,
            base_backoff: Dur(Duration::from_millis(50)),
            max_backoff: secs(2),
            budget_ratio: 0.2,
            budget_min_per_sec: 10.0,
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

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TeamConfig {
    /// Client-facing models this team may use; `*` for all.
    pub models: Vec<String>,
    pub max_tokens: Option<RangeDefault<u64>>,
    pub temperature: Option<TemperaturePolicy>,
    /// Most messages in one chat request.
    pub max_messages: Option<usize>,
    /// Largest body this team may send (capped by `server.max_body_bytes`).
    pub max_body_bytes: Option<usize>,
    /// Requests per minute, all the team's keys together.
    pub requests_per_minute: Option<u64>,
    /// Tokens (prompt + completion) per minute, all the team's keys together.
    pub tokens_per_minute: Option<u64>,
    /// Requests in flight at once, all the team's keys together.
    pub max_concurrent: Option<u64>,
    /// Spending cap for all the team's keys together.
    pub budget: Option<BudgetConfig>,
    /// Highest queue priority this team's requests may ask for (`x-tollgate-priority`).
    pub max_priority: Option<Priority>,
}

/// Queue priority of a request waiting for an upstream slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Priority {
    High = 0,
    Normal = 1,
    Low = 2,
}

impl Priority {
    pub fn parse(s: &str) -> Option<Priority> {
        match s.trim().to_ascii_lowercase().as_str() {
            "high" => Some(Priority::High),
            "normal" => Some(Priority::Normal),
            "low" => Some(Priority::Low),
            _ => None,
        }
    }
}

/// A default applied when the client sends nothing, and a cap.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RangeDefault<T> {
    pub default: Option<T>,
    pub max: Option<T>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemperaturePolicy {
    pub default: Option<f64>,
    #[serde(default)]
    pub min: Option<f64>,
    #[serde(default)]
    pub max: Option<f64>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyConfig {
    /// A display name, used as the key id in logs.
    pub name: String,
    pub team: String,
    /// SHA-256 of the key, hex.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The key itself, as an `${ENV}` or `file:` reference.
    #[serde(default)]
    pub key: Option<SecretRef>,
    /// Requests per minute for this key alone (the team's limit applies too).
    #[serde(default)]
    pub requests_per_minute: Option<u64>,
    /// Tokens per minute for this key alone.
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// Requests in flight at once for this key alone.
    #[serde(default)]
    pub max_concurrent: Option<u64>,
    /// Spending cap for this key alone.
    #[serde(default)]
    pub budget: Option<BudgetConfig>,
}

/// A config problem, naming the field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub path: String,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.path.is_empty() {
            write!(f, "{}", self.message)
        } else {
            write!(f, "{}: {}", self.path, self.message)
        }
    }
}

impl std::error::Error for ConfigError {}

fn err(path: impl Into<String>, message: impl Into<String>) -> ConfigError {
    ConfigError {
        path: path.into(),
        message: message.into(),
    }
}

impl Config {
    /// Parse YAML text; the error names the field path and the line.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        serde_path_to_error::deserialize(de).map_err(|e| {
            let path = e.path().to_string();
            let path = if path == "." { String::new() } else { path };
            let inner = e.into_inner();
            let mut message = inner.to_string();
            // The YAML error repeats part of the path ("teams.x: unknown field …"): keep ours.
            if let Some((prefix, rest)) = message.split_once(": ") {
                if !prefix.is_empty() && path.starts_with(prefix) {
                    message = rest.to_owned();
                }
            }
            if let Some(loc) = inner.location() {
                if !message.contains("line ") {
                    message = format!("{message} (line {})", loc.line());
                }
            }
            err(path, message)
        })
    }

    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| err("", format!("cannot read {}: {e}", path.display())))?;
        Config::parse(&text)
    }

    /// Check cross references and resolve every secret. Returns warnings (e.g. literal secrets);
    /// the first hard error aborts.
    pub fn validate(&self, env: &dyn EnvSource) -> Result<Vec<String>, ConfigError> {
        let mut warnings = Vec::new();
        let s = &self.server;
        if s.max_body_bytes == 0 {
            return Err(err("server.max_body_bytes", "must be greater than 0"));
        }
        if s.max_in_flight == 0 {
            return Err(err("server.max_in_flight", "must be greater than 0"));
        }
        if s.cors.allow_credentials && s.cors.allowed_origins.iter().any(|o| o == "*") {
            return Err(err(
                "server.cors.allowed_origins",
                "'*' cannot be combined with allow_credentials: list the origins",
            ));
        }
        for (i, h) in s.forward_headers.iter().enumerate() {
            let lower = h.to_ascii_lowercase();
            if http::HeaderName::from_bytes(lower.as_bytes()).is_err()
                || matches!(
                    lower.as_str(),
                    "authorization" | "x-api-key" | "cookie" | "host" | "content-length"
                )
            {
                return Err(err(
                    format!("server.forward_headers[{i}]"),
                    format!("'{h}' may not be forwarded"),
                ));
            }
        }
        for (name, c) in &self.credentials {
            let path = format!("credentials.{name}");
            check_credential(c, &path, env, &mut warnings)?;
        }
        if self.upstreams.is_empty() {
            return Err(err("upstreams", "at least one upstream is required"));
        }
        for (name, u) in &self.upstreams {
            let path = format!("upstreams.{name}");
            if u.provider == ProviderKind::Openai {
                match &u.base_url {
                    None => return Err(err(format!("{path}.base_url"), "is required")),
                    Some(url) => {
                        let parsed = reqwest::Url::parse(url).map_err(|e| {
                            err(format!("{path}.base_url"), format!("invalid URL: {e}"))
                        })?;
                        if !matches!(parsed.scheme(), "http" | "https") {
                            return Err(err(format!("{path}.base_url"), "must be http or https"));
                        }
                    }
                }
            }
            if let Some(c) = &u.credential {
                if !self.credentials.contains_key(c) {
                    return Err(err(
                        format!("{path}.credential"),
                        format!("credential '{c}' is not defined under credentials"),
                    ));
                }
            }
            if u.max_concurrent == 0 {
                return Err(err(
                    format!("{path}.max_concurrent"),
                    "must be greater than 0",
                ));
            }
            if !(0.0..=1.0).contains(&u.breaker.error_rate) {
                return Err(err(
                    format!("{path}.breaker.error_rate"),
                    "must be between 0 and 1",
                ));
            }
            if u.mock.chunks == 0 {
                return Err(err(format!("{path}.mock.chunks"), "must be at least 1"));
            }
        }
        for (name, m) in &self.models {
            let path = format!("models.{name}");
            if m.targets.is_empty() {
                return Err(err(
                    format!("{path}.targets"),
                    "needs at least one upstream",
                ));
            }
            for (i, t) in m.targets.iter().enumerate() {
                if !self.upstreams.contains_key(&t.upstream) {
                    return Err(err(
                        format!("{path}.targets[{i}].upstream"),
                        format!("upstream '{}' is not defined under upstreams", t.upstream),
                    ));
                }
            }
            let fallbacks = m
                .fallbacks
                .iter()
                .enumerate()
                .map(|(i, f)| (format!("{path}.fallbacks[{i}]"), f));
            let on = m
                .fallback_on
                .iter()
                .map(|(r, f)| (format!("{path}.fallback_on.{r:?}"), f));
            for (fpath, f) in fallbacks.chain(on) {
                if f == name || !self.models.contains_key(f) {
                    return Err(err(
                        fpath,
                        format!("fallback model '{f}' is not another model defined under models"),
                    ));
                }
            }
            if m.retry.max_attempts == 0 {
                return Err(err(
                    format!("{path}.retry.max_attempts"),
                    "must be at least 1",
                ));
            }
            if !(0.0..=10.0).contains(&m.retry.budget_ratio) {
                return Err(err(
                    format!("{path}.retry.budget_ratio"),
                    "must be between 0 and 10",
                ));
            }
        }
        for (name, t) in &self.teams {
            let path = format!("teams.{name}");
            for (i, m) in t.models.iter().enumerate() {
                if m != "*" && !self.models.contains_key(m) {
                    return Err(err(
                        format!("{path}.models[{i}]"),
                        format!("model '{m}' is not defined under models"),
                    ));
                }
            }
            check_limits(
                &path,
                t.requests_per_minute,
                t.tokens_per_minute,
                t.max_concurrent,
                &t.budget,
            )?;
            if let Some(tp) = &t.temperature {
                if let (Some(lo), Some(hi)) = (tp.min, tp.max) {
                    if lo > hi {
                        return Err(err(format!("{path}.temperature"), "min is above max"));
                    }
                }
            }
        }
        if let Some(a) = &self.admin {
            check_key_source(&a.sha256, &a.key, "admin", env, &mut warnings)?;
        }
        if let Some(st) = &self.store {
            st.validate(env, &mut warnings)?;
        }
        for (i, k) in self.keys.iter().enumerate() {
            let path = format!("keys[{i}]");
            if !self.teams.contains_key(&k.team) {
                return Err(err(
                    format!("{path}.team"),
                    format!("team '{}' is not defined under teams", k.team),
                ));
            }
            check_key_source(&k.sha256, &k.key, &path, env, &mut warnings)?;
            check_limits(
                &path,
                k.requests_per_minute,
                k.tokens_per_minute,
                k.max_concurrent,
                &k.budget,
            )?;
        }
        self.validate_limits(env, &mut warnings)?;
        Ok(warnings)
    }
}

impl Config {
    fn validate_limits(
        &self,
        env: &dyn EnvSource,
        warnings: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        let l = &self.limits;
        match (&l.backend, &l.redis_url) {
            (LimiterBackend::Redis, None) => {
                return Err(err("limits.redis_url", "is required with backend: redis"))
            }
            (_, Some(r)) => {
                check_secret(r, "limits.redis_url", env, warnings)?;
                let url = r.resolve(env).map_err(|m| err("limits.redis_url", m))?;
                if !url.expose().starts_with("redis://") {
                    return Err(err(
                        "limits.redis_url",
                        "must start with redis:// (TLS to Redis is not built in)",
                    ));
                }
            }
            _ => {}
        }
        if l.redis_timeout.0.is_zero() {
            return Err(err("limits.redis_timeout", "must be greater than 0"));
        }
        if l.lease_ttl.0 < Duration::from_secs(1) {
            return Err(err("limits.lease_ttl", "must be at least 1s"));
        }
        if l.state_flush_interval.0 < Duration::from_millis(10) {
            return Err(err("limits.state_flush_interval", "must be at least 10ms"));
        }
        if l.state_file.is_some() && l.backend == LimiterBackend::Redis {
            warnings.push(
                "limits.state_file: ignored with backend: redis (spend lives in Redis)".into(),
            );
        }
        let budgeted = self.teams.values().any(|t| t.budget.is_some())
            || self.keys.iter().any(|k| k.budget.is_some());
        if budgeted {
            let prices = crate::limits::prices::Prices::new(&self.prices);
            for name in self.models.keys() {
                if prices.get(name).is_none() {
                    warnings.push(format!(
                        "models.{name}: no price (built in or under prices:); its requests \
                         cost 0 against budgets"
                    ));
                }
            }
        }
        for (name, p) in &self.prices {
            for (field, v) in [
                ("input_per_million", p.input_per_million),
                ("output_per_million", p.output_per_million),
            ] {
                if !v.is_finite() || v < 0.0 {
                    return Err(err(
                        format!("prices.{name}.{field}"),
                        "must be a number of at least 0",
                    ));
                }
            }
        }
        Ok(())
    }
}

impl StoreConfig {
    fn validate(&self, env: &dyn EnvSource, warnings: &mut Vec<String>) -> Result<(), ConfigError> {
        let url = self.url.resolve(env).map_err(|m| err("store.url", m))?;
        let u = url.expose();
        let pg = u.starts_with("postgres:") || u.starts_with("postgresql:");
        if !pg && !u.starts_with("sqlite:") {
            return Err(err("store.url", "must start with sqlite: or postgres:"));
        }
        if pg
            && !self.url.is_reference()
            && u.contains('@')
            && u.split('@')
                .next()
                .is_some_and(|a| a.matches(':').count() > 1)
        {
            warnings.push("store.url: a password written literally in the config; use ${ENV_VAR} or file:PATH".into());
        }
        if self.max_connections == 0 {
            return Err(err("store.max_connections", "must be greater than 0"));
        }
        let ttl = self.key_cache_ttl.0;
        if ttl.is_zero() || ttl > Duration::from_millis(2500) {
            return Err(err(
                "store.key_cache_ttl",
                "must be above 0 and at most 2.5s (a revoked key must be refused everywhere within 5 s)",
            ));
        }
        let u = &self.usage;
        if u.batch_size == 0 || u.batch_size > 2000 {
            return Err(err("store.usage.batch_size", "must be between 1 and 2000"));
        }
        if u.queue < u.batch_size {
            return Err(err("store.usage.queue", "must be at least batch_size"));
        }
        if u.spill_path.as_os_str().is_empty() {
            return Err(err("store.usage.spill_path", "is required"));
        }
        Ok(())
    }
}

/// Limits are positive when set; budgets are finite and not negative.
fn check_limits(
    path: &str,
    rpm: Option<u64>,
    tpm: Option<u64>,
    concurrent: Option<u64>,
    budget: &Option<BudgetConfig>,
) -> Result<(), ConfigError> {
    for (field, v) in [
        ("requests_per_minute", rpm),
        ("tokens_per_minute", tpm),
        ("max_concurrent", concurrent),
    ] {
        if v == Some(0) {
            return Err(err(
                format!("{path}.{field}"),
                "must be greater than 0 (leave it out for no limit)",
            ));
        }
    }
    if let Some(b) = budget {
        if !b.amount_usd.is_finite() || b.amount_usd < 0.0 || b.amount_usd > 1e9 {
            return Err(err(
                format!("{path}.budget.amount_usd"),
                "must be a number from 0 to 1e9",
            ));
        }
    }
    Ok(())
}

/// A key is given as exactly one of a SHA-256 or a secret reference.
fn check_key_source(
    sha256: &Option<String>,
    key: &Option<SecretRef>,
    path: &str,
    env: &dyn EnvSource,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    match (sha256, key) {
        (Some(h), None) => {
            if h.len() != 64 || !h.chars().all(|c| c.is_ascii_hexdigit()) {
                return Err(err(format!("{path}.sha256"), "must be 64 hex digits"));
            }
        }
        (None, Some(r)) => check_secret(r, &format!("{path}.key"), env, warnings)?,
        _ => {
            return Err(err(
                path,
                "give exactly one of sha256 (the key's SHA-256, hex) or key (${ENV} or file:)",
            ))
        }
    }
    Ok(())
}

fn check_secret(
    r: &SecretRef,
    path: &str,
    env: &dyn EnvSource,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    r.resolve(env).map_err(|m| err(path, m))?;
    if !r.is_reference() {
        warnings.push(format!(
            "{path}: secret written literally in the config; use ${{ENV_VAR}} or file:PATH"
        ));
    }
    Ok(())
}

fn check_credential(
    c: &CredentialConfig,
    path: &str,
    env: &dyn EnvSource,
    warnings: &mut Vec<String>,
) -> Result<(), ConfigError> {
    match c {
        CredentialConfig::Static { secret, placement } => {
            check_secret(secret, &format!("{path}.secret"), env, warnings)?;
            check_placement(placement, &format!("{path}.placement"))?;
        }
        CredentialConfig::Oauth2(o) => {
            let url = reqwest::Url::parse(&o.token_url)
                .map_err(|e| err(format!("{path}.token_url"), format!("invalid URL: {e}")))?;
            if !matches!(url.scheme(), "http" | "https") {
                return Err(err(format!("{path}.token_url"), "must be http or https"));
            }
            check_secret(
                &o.client_id,
                &format!("{path}.client_id"),
                env,
                &mut Vec::new(),
            )?;
            check_secret(
                &o.client_secret,
                &format!("{path}.client_secret"),
                env,
                warnings,
            )?;
            check_placement(&o.placement, &format!("{path}.placement"))?;
            if o.token_method == TokenMethod::Get && o.client_auth != ClientAuth::Query {
                return Err(err(
                    format!("{path}.token_method"),
                    "get is only allowed with client_auth: query",
                ));
            }
            if !(0.0..1.0).contains(&o.renew_fraction) {
                return Err(err(
                    format!("{path}.renew_fraction"),
                    "must be at least 0 and below 1",
                ));
            }
            if o.max_attempts == 0 {
                return Err(err(format!("{path}.max_attempts"), "must be at least 1"));
            }
            if o.min_lifetime.0.is_zero() || o.min_lifetime.0 > o.max_lifetime.0 {
                return Err(err(
                    format!("{path}.min_lifetime"),
                    "must be above 0 and not above max_lifetime",
                ));
            }
            for (field, d) in [
                ("timeout", o.timeout),
                ("connect_timeout", o.connect_timeout),
                ("lease_timeout", o.lease_timeout),
                ("min_renew_interval", o.min_renew_interval),
                ("backoff_max", o.backoff_max),
                ("default_lifetime", o.default_lifetime),
            ] {
                if d.0.is_zero() {
                    return Err(err(format!("{path}.{field}"), "must be above 0"));
                }
            }
        }
        CredentialConfig::Jwt(j) => {
            let key = j
                .api_key
                .resolve(env)
                .map_err(|m| err(format!("{path}.api_key"), m))?;
            match key.expose().split_once('.') {
                Some((id, secret)) if !id.is_empty() && !secret.is_empty() => {}
                _ => {
                    return Err(err(
                        format!("{path}.api_key"),
                        "must have the form id.secret",
                    ))
                }
            }
            check_secret(&j.api_key, &format!("{path}.api_key"), env, warnings)?;
            if j.ttl.0 < Duration::from_secs(2) {
                return Err(err(format!("{path}.ttl"), "must be at least 2s"));
            }
            check_placement(&j.placement, &format!("{path}.placement"))?;
        }
        CredentialConfig::Pool(p) => {
            if p.tokens.is_empty() && p.file.is_none() && p.members.is_empty() {
                return Err(err(path, "a pool needs tokens, a file or members"));
            }
            for (i, t) in p.tokens.iter().enumerate() {
                check_secret(t, &format!("{path}.tokens[{i}]"), env, warnings)?;
            }
            if let Some(f) = &p.file {
                std::fs::metadata(f)
                    .map_err(|e| err(format!("{path}.file"), format!("cannot read {f}: {e}")))?;
            }
            for (i, m) in p.members.iter().enumerate() {
                let mpath = format!("{path}.members[{i}]");
                if matches!(m, CredentialConfig::Pool(_)) {
                    return Err(err(mpath, "pools do not nest"));
                }
                check_credential(m, &mpath, env, warnings)?;
            }
            check_placement(&p.placement, &format!("{path}.placement"))?;
            if p.default_cooldown.0.is_zero() {
                return Err(err(format!("{path}.default_cooldown"), "must be above 0"));
            }
        }
    }
    Ok(())
}

fn check_placement(p: &Placement, path: &str) -> Result<(), ConfigError> {
    match p {
        Placement::Header(h) if http::HeaderName::from_bytes(h.as_bytes()).is_err() => {
            Err(err(path, format!("'{h}' is not a valid header name")))
        }
        Placement::Query(q) if q.is_empty() => Err(err(path, "query parameter name is empty")),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const BASE: &str = r#"
upstreams:
  m: { provider: mock }
models:
  mock-gpt: { targets: [ { upstream: m } ] }
teams:
  t: { models: ["*"] }
"#;

    fn check(text: &str) -> Result<Vec<String>, String> {
        Config::parse(text)
            .map_err(|e| e.to_string())?
            .validate(&HashMap::new())
            .map_err(|e| e.to_string())
    }

    #[test]
    fn limits_are_validated_with_field_paths() {
        let t = BASE.replace(
            r#"t: { models: ["*"] }"#,
            r#"t: { models: ["*"], requests_per_minute: 0 }"#,
        );
        assert_eq!(
            check(&t).err().as_deref(),
            Some("teams.t.requests_per_minute: must be greater than 0 (leave it out for no limit)")
        );
        let t = format!(
            "{BASE}keys:\n  - {{ name: k, team: t, sha256: {}, budget: {{ amount_usd: -1 }} }}\n",
            "a".repeat(64)
        );
        assert_eq!(
            check(&t).err().as_deref(),
            Some("keys[0].budget.amount_usd: must be a number from 0 to 1e9")
        );
        let t = format!("{BASE}limits: {{ backend: redis }}\n");
        assert_eq!(
            check(&t).err().as_deref(),
            Some("limits.redis_url: is required with backend: redis")
        );
        let t = format!("{BASE}limits: {{ backend: redis, redis_url: \"http://x\" }}\n");
        assert!(check(&t).is_err_and(|e| e.starts_with("limits.redis_url: must start")));
        let t = format!("{BASE}limits: {{ backned: redis }}\n");
        assert!(check(&t).is_err_and(|e| e.contains("backned")));
        let t =
            format!("{BASE}prices: {{ x: {{ input_per_million: -1, output_per_million: 1 }} }}\n");
        assert_eq!(
            check(&t).err().as_deref(),
            Some("prices.x.input_per_million: must be a number of at least 0")
        );
    }

    #[test]
    fn unpriced_models_are_warned_about_when_budgets_are_set() {
        let t = BASE.replace("mock-gpt:", "house-model:").replace(
            r#"t: { models: ["*"] }"#,
            r#"t: { models: ["*"], budget: { amount_usd: 10, period: daily } }"#,
        );
        let w = check(&t).unwrap_or_else(|e| panic!("{e}"));
        assert!(
            w.iter()
                .any(|w| w.starts_with("models.house-model: no price")),
            "{w:?}"
        );
        assert!(check(BASE).is_ok_and(|w| w.is_empty()));
    }

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(
            Dur::parse("250ms").map(|d| d.0),
            Ok(Duration::from_millis(250))
        );
        assert_eq!(Dur::parse("2m").map(|d| d.0), Ok(Duration::from_secs(120)));
        assert!(Dur::parse("5").is_err());
        assert!(Dur::parse("5y").is_err());
    }

    #[test]
    fn unknown_field_names_path_and_line() {
        let text = format!("{BASE}\nserver:\n  listen: 127.0.0.1:1\n  bogus: 1\n");
        let e = Config::parse(&text)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("bogus"), "{e}");
        assert!(e.contains("line 11"), "{e}");
    }

    #[test]
    fn undefined_upstream_is_named() {
        let text = BASE.replace("upstream: m", "upstream: nope");
        let cfg = Config::parse(&text).map_err(|e| e.to_string());
        let e = cfg.and_then(|c| c.validate(&HashMap::new()).map_err(|e| e.to_string()));
        assert_eq!(
            e.err().as_deref(),
            Some("models.mock-gpt.targets[0].upstream: upstream 'nope' is not defined under upstreams")
        );
    }

    fn validate(text: &str, env: &HashMap<String, String>) -> Result<Vec<String>, String> {
        Config::parse(text)
            .map_err(|e| e.to_string())
            .and_then(|c| c.validate(env).map_err(|e| e.to_string()))
    }

    #[test]
    fn credential_kinds_parse_validate_and_warn_on_literals() {
        let env: HashMap<String, String> = [
            ("SK".to_string(), "s3cret".to_string()),
            ("GLM".to_string(), "id.sec".to_string()),
        ]
        .into();
        let text = format!(
            "{BASE}
credentials:
  baidu:
    kind: oauth2
    token_url: http://127.0.0.1:1/oauth/2.0/token
    client_id: ak
    client_secret: ${{SK}}
    client_auth: query
    placement: {{ query: access_token }}
  glm: {{ kind: jwt, api_key: '${{GLM}}' }}
  pool:
    kind: pool
    tokens: [literal-token]
    members:
      - {{ kind: static, secret: '${{SK}}' }}
"
        );
        let w = validate(&text, &env).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(w.len(), 1, "{w:?}");
        assert!(w[0].starts_with("credentials.pool.tokens[0]"), "{w:?}");
        assert!(!w[0].contains("literal-token"), "{w:?}");

        let bad = text.replace("client_auth: query", "client_auth: query\n    bogus: 1");
        let e = validate(&bad, &env).err().unwrap_or_default();
        assert!(e.contains("bogus"), "{e}");
        let bad = text.replace("'${GLM}'", "'${SK}'");
        let e = validate(&bad, &env).err().unwrap_or_default();
        assert_eq!(e, "credentials.glm.api_key: must have the form id.secret");
        let bad = text.replace(
            "{ kind: static, secret: '${SK}' }",
            "{ kind: pool, tokens: [x] }",
        );
        let e = validate(&bad, &env).err().unwrap_or_default();
        assert_eq!(e, "credentials.pool.members[0]: pools do not nest");
    }
}
