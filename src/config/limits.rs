//! Config of the limiter (`limits:`), prices (`prices:`) and budgets.

use super::*;

/// The limiter: backend, failure policy, estimates. Limits themselves are set per team and key.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// `memory` (one instance; the default) or `redis` (state shared by every replica).
    pub backend: LimiterBackend,
    /// Redis URL (`redis://[:password@]host:port[/db]`, or `rediss://` for TLS), best as
    /// `${ENV}` or `file:`; required with `backend: redis`.
    pub redis_url: Option<SecretRef>,
    /// TLS to Redis with a `rediss://` URL: a private CA, a client certificate. Unset: the
    /// system's trusted roots.
    pub redis_tls: Option<RedisTlsConfig>,
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
            redis_tls: None,
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

/// TLS to Redis (`rediss://`).
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisTlsConfig {
    /// A PEM bundle of the CAs Redis's certificate may chain to (only these are trusted).
    pub ca_file: Option<std::path::PathBuf>,
    /// A PEM client certificate for Redis's `tls-auth-clients`; needs `client_key`.
    pub client_cert_file: Option<std::path::PathBuf>,
    /// Its private key (PEM) as a secret reference (`file:/path` or `${ENV}`).
    pub client_key: Option<SecretRef>,
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

/// Limits and budget of a key or a team: one shape, with the same field names, in the config
/// file (a team's or key's fields), the store, the admin API, the CLI and the limiter. Unset
/// fields do not limit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Requests per minute (`rpm` is read too).
    #[serde(default, alias = "rpm", skip_serializing_if = "Option::is_none")]
    pub requests_per_minute: Option<u64>,
    /// Tokens (prompt + completion) per minute (`tpm` is read too).
    #[serde(default, alias = "tpm", skip_serializing_if = "Option::is_none")]
    pub tokens_per_minute: Option<u64>,
    /// Requests in flight at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_concurrent: Option<u64>,
    /// Spending cap per period.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<BudgetConfig>,
}

impl Limits {
    /// True when nothing is limited.
    pub fn is_unlimited(&self) -> bool {
        *self == Limits::default()
    }
}

/// A spending cap.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// The cap in US dollars.
    pub amount_usd: f64,
    /// When spend starts again from zero: `daily` / `monthly` (UTC) or `none` (never).
    #[serde(default)]
    pub period: BudgetPeriod,
}

/// The window a budget applies to: one vocabulary for the config file, the store, the admin API
/// and the CLI. Written `daily`, `monthly`, `none`; the store's earlier `day`, `month`, `total`
/// are read as the same periods.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BudgetPeriod {
    /// Resets at 00:00 UTC.
    #[serde(alias = "day")]
    Daily,
    /// Resets at 00:00 UTC on the 1st.
    #[default]
    #[serde(alias = "month")]
    Monthly,
    /// Never resets.
    #[serde(alias = "total")]
    None,
}

impl BudgetPeriod {
    pub fn as_str(self) -> &'static str {
        match self {
            BudgetPeriod::Daily => "daily",
            BudgetPeriod::Monthly => "monthly",
            BudgetPeriod::None => "none",
        }
    }
    /// The written forms, the store's earlier ones included.
    pub fn parse(s: &str) -> Option<BudgetPeriod> {
        match s {
            "daily" | "day" => Some(BudgetPeriod::Daily),
            "monthly" | "month" => Some(BudgetPeriod::Monthly),
            "none" | "total" => Some(BudgetPeriod::None),
            _ => None,
        }
    }
}
