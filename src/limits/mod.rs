//! The admit step: rate limits, concurrency and budgets, per key and per team.
//!
//! [`Limiter::admit`] runs once per request, between shaping and planning. It checks every limit
//! of the caller's key and team in ONE atomic step of the backend, and on success reserves what
//! the request may use: one request of the rate, its estimated tokens (prompt characters and
//! `max_tokens`), one concurrency slot, its estimated cost against the budget. The returned
//! [`Admission`] is settled when the request ends ([`Admission::settle`], called by the
//! [`crate::proxy::ledger::Ledger`] with the real usage, or on drop): the concurrency slot and the
//! reservation are released, the real cost is added to spend, the token limit is corrected by
//! the difference between the estimate and the real count.
//!
//! Algorithms: GCRA for requests and tokens per minute ([`gcra`]); a counter of leases for
//! concurrency; reserve-then-settle for budgets, so parallel requests cannot overrun one (the
//! check is `spent + reserved + estimate <= budget`).
//!
//! Backends: [`memory`] (one process; sharded map, a mutex per key/team entry, no global lock)
//! and [`redis`] (a Lua script per admission and per settlement, shared by all replicas). The
//! failure policy when a backend cannot answer is `limits.on_backend_error`: `fail_open` admits
//! the request without limits, `fail_closed` answers 503; both log a warning when the backend goes
//! away (and an info line when it is back) and count `tollgate_limiter_backend_errors_total`.
//! There is never a silent fallback: an admission that skipped the backend carries no
//! `x-ratelimit-*` headers. Redis connections recover on their own (the connection manager
//! reconnects), without a restart.
//!
//! Money is integer nano-dollars ([`prices`]); budget periods are UTC days or months
//! ([`budget`]).

pub mod budget;
pub mod gcra;
pub mod memory;
pub mod prices;
pub mod redis;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

pub use crate::config::{BudgetConfig as Budget, BudgetPeriod};
use crate::config::{Config, LimiterBackend, OnBackendError};
use crate::error::ApiError;
pub use crate::openai::{go_duration, RateHeaders, RateInfo};
use crate::openai::{Body, Endpoint, JsonFields, Kind, Usage};
use crate::telemetry::names;
use prices::{Price, Prices, NANOS_PER_USD};

/// One key's or one team's limits: the config's one shape (config keys and teams, store keys and
/// teams), carried on the caller.
pub use crate::config::Limits;

/// A budget in nano-dollars, the unit the backends count in.
fn budget_nanos(l: &Limits) -> Option<u64> {
    l.budget
        .map(|b| (b.amount_usd * NANOS_PER_USD).round().max(0.0) as u64)
}

/// Whose limits a request counts against: a key and its team. The caller's identity as the
/// limiter sees it (authentication builds it; this module does not know how keys are found).
#[derive(Debug, Clone, Copy)]
pub struct Subject<'a> {
    pub key_id: &'a Arc<str>,
    pub team: &'a Arc<str>,
    pub key_limits: Limits,
    pub team_limits: Limits,
}

/// What a shaped request asks of the model, as far as the estimate goes.
#[derive(Debug, Clone, Copy)]
pub struct Ask<'a> {
    /// The client-facing model (the price table's key).
    pub model: &'a str,
    /// The output cap the upstream receives, if any.
    pub output_cap: Option<u64>,
    /// Completions generated (`n`, `best_of`).
    pub completions: u64,
}

/// Whose limit: the key's own, or its team's (shared by all the team's keys).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Key,
    Team,
}

impl Scope {
    pub fn label(self) -> &'static str {
        match self {
            Scope::Key => "key",
            Scope::Team => "team",
        }
    }
    /// Short tag in backend key names.
    fn tag(self) -> &'static str {
        match self {
            Scope::Key => "k",
            Scope::Team => "t",
        }
    }
}

/// Which limit refused a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LimitKind {
    Rpm,
    Tpm,
    Concurrency,
    Budget,
}

impl LimitKind {
    pub fn label(self) -> &'static str {
        match self {
            LimitKind::Rpm => "rpm",
            LimitKind::Tpm => "tpm",
            LimitKind::Concurrency => "concurrency",
            LimitKind::Budget => "budget",
        }
    }
    fn parse(s: &str) -> Option<LimitKind> {
        Some(match s {
            "rpm" => LimitKind::Rpm,
            "tpm" => LimitKind::Tpm,
            "concurrency" => LimitKind::Concurrency,
            "budget" => LimitKind::Budget,
            _ => return None,
        })
    }
}

/// What a request is expected to use, known before it is sent.
#[derive(Debug, Clone)]
pub struct Estimate {
    pub prompt_tokens: u64,
    /// The output cap after shaping, or `limits.default_max_tokens`, times the completions
    /// asked for (`n`, `best_of`); 0 for embeddings.
    pub completion_tokens: u64,
    /// The model's price; `None` when the model has no price (it costs 0).
    pub price: Option<Price>,
}

impl Estimate {
    pub fn tokens(&self) -> u64 {
        self.prompt_tokens + self.completion_tokens
    }
    pub fn cost_nanos(&self) -> u64 {
        self.price
            .map(|p| p.cost_nanos(self.prompt_tokens, self.completion_tokens))
            .unwrap_or(0)
    }
}

/// The fields the prompt estimate reads: name, whether numbers in it are token ids (one token
/// each), and whether its object keys count as text.
const ESTIMATED_FIELDS: [(&str, bool, bool); 6] = [
    ("messages", false, false),
    ("prompt", true, false),
    ("input", true, false),
    ("tools", false, true),
    ("functions", false, true),
    ("response_format", false, true),
];

/// Tokens in the prompt, estimated without a tokenizer: a token per 4 ASCII characters, a token
/// per other character (CJK text is close to one token per character), a token per number in
/// `prompt`/`input` (token-id arrays), 4 per chat message for its framing. Counts every string in
/// `messages`, `prompt`, `input`, and every string and object key in `tools`, `functions` and
/// `response_format` (the model reads those schemas as prompt).
///
/// Reads the counts [`Body`] made while it validated the client's JSON (a `Map` counts its
/// values on demand): no second walk of the text.
pub fn estimate_prompt_tokens(body: &impl JsonFields) -> u64 {
    let (mut ascii, mut other, mut ids, mut framing) = (0u64, 0u64, 0u64, 0u64);
    for (f, numbers_are_ids, keys_are_text) in ESTIMATED_FIELDS {
        let Some((kind, t)) = body.field_text(f) else {
            continue;
        };
        ascii += t.ascii;
        other += t.other;
        if keys_are_text {
            ascii += t.key_ascii;
            other += t.key_other;
        }
        if numbers_are_ids {
            ids += t.numbers;
        }
        if let (true, Kind::Array(items)) = (f == "messages", kind) {
            framing += 4 * items.len as u64;
        }
    }
    ascii.div_ceil(4) + other + ids + framing
}

/// What the backend checks for one scope.
#[derive(Debug, Clone)]
pub(crate) struct ScopeCheck {
    pub scope: Scope,
    pub id: Arc<str>,
    pub limits: Limits,
    pub budget_nanos: Option<u64>,
    /// Spend counter of the period containing now.
    pub period_tag: String,
}

/// One admission as the backend sees it.
#[derive(Debug, Clone)]
pub(crate) struct AdmitRequest {
    /// Unique across replicas: names the lease in Redis.
    pub lease_id: u64,
    pub scopes: Vec<ScopeCheck>,
    pub tokens: u64,
    pub cost_nanos: u64,
}

/// The backend's answer.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Decision {
    Admit(RateHeaders),
    Deny {
        scope: Scope,
        limit: LimitKind,
        /// `None`: waiting will not help (a request larger than the limit, a budget).
        retry_after: Option<Duration>,
        headers: RateHeaders,
    },
}

/// What settling does for one scope.
#[derive(Debug, Clone)]
pub(crate) struct ScopeSettle {
    pub scope: Scope,
    pub id: Arc<str>,
    /// The token limit the estimate was charged to (corrected by the difference).
    pub tpm: Option<u64>,
    /// A concurrency slot / lease is held.
    pub leased: bool,
    /// Nano-dollars reserved against the budget.
    pub reserved: u64,
    pub period: BudgetPeriod,
}

#[derive(Debug, Clone)]
pub(crate) struct SettleRequest {
    pub lease_id: u64,
    pub scopes: Vec<ScopeSettle>,
    /// Real tokens minus estimated tokens.
    pub token_delta: i64,
    pub cost_nanos: u64,
}

/// A backend failure (Redis down, timed out, script error). Never shown to clients.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct BackendError(pub String);

enum Backend {
    Memory(Arc<memory::Memory>),
    Redis(Box<redis::RedisLimiter>),
}

struct Inner {
    backend: Backend,
    on_error: OnBackendError,
    /// True while the backend is failing: the warning is logged once per outage.
    degraded: AtomicBool,
    /// Settlements running in the background (Redis): awaited at shutdown, so spend recorded by
    /// the last requests is not lost when the process exits.
    settles: tokio_util::task::TaskTracker,
}

impl Inner {
    fn backend_label(&self) -> &'static str {
        match self.backend {
            Backend::Memory(_) => "memory",
            Backend::Redis(_) => "redis",
        }
    }

    fn backend_failed(&self, op: &'static str, e: &BackendError) {
        metrics::counter!(names::LIMITER_BACKEND_ERRORS, "backend" => self.backend_label(),
            "op" => op)
        .increment(1);
        if !self.degraded.swap(true, Ordering::Relaxed) {
            tracing::warn!(backend = self.backend_label(), op, error = %e,
                policy = ?self.on_error, "limiter backend unavailable");
        }
    }

    fn backend_ok(&self) {
        if self.degraded.load(Ordering::Relaxed) && self.degraded.swap(false, Ordering::Relaxed) {
            tracing::info!(backend = self.backend_label(), "limiter backend is back");
        }
    }

    async fn settle(&self, req: SettleRequest) {
        let result = match &self.backend {
            Backend::Memory(m) => {
                m.settle(&req);
                Ok(())
            }
            Backend::Redis(r) => r.settle(&req).await,
        };
        match result {
            Ok(()) => self.backend_ok(),
            Err(e) => self.backend_failed("settle", &e),
        }
    }
}

/// The limiter of one config snapshot. Cheap to share.
pub struct Limiter {
    inner: Arc<Inner>,
    prices: Prices,
    default_max_tokens: u64,
}

impl Limiter {
    /// Build from config: reads the memory backend's state file, prepares the Redis client (it
    /// connects on first use). Call inside a Tokio runtime to get the state-file flusher.
    pub fn from_config(
        cfg: &Config,
        env: &dyn crate::secret::EnvSource,
    ) -> Result<Limiter, String> {
        let l = &cfg.limits;
        let backend = match l.backend {
            LimiterBackend::Memory => Backend::Memory(memory::Memory::open(
                l.state_file.clone(),
                l.state_flush_interval.0,
            )?),
            LimiterBackend::Redis => {
                let url = l
                    .redis_url
                    .as_ref()
                    .ok_or("limits.redis_url is required with backend: redis")?
                    .resolve(env)?;
                Backend::Redis(Box::new(match &l.redis_tls {
                    None => redis::RedisLimiter::new(
                        url.expose(),
                        &l.redis_prefix,
                        l.redis_timeout.0,
                        l.lease_ttl.0,
                    )?,
                    Some(tls) => redis::RedisLimiter::new_tls(
                        url.expose(),
                        tls,
                        env,
                        &l.redis_prefix,
                        l.redis_timeout.0,
                        l.lease_ttl.0,
                    )?,
                }))
            }
        };
        Ok(Limiter {
            inner: Arc::new(Inner {
                backend,
                on_error: l.on_backend_error,
                degraded: AtomicBool::new(false),
                settles: tokio_util::task::TaskTracker::new(),
            }),
            prices: Prices::new(&cfg.prices),
            default_max_tokens: l.default_max_tokens,
        })
    }

    /// The same backend (and its counters) with the prices and defaults of a reloaded config
    /// whose `limits:` did not change.
    pub fn reconfigured(&self, cfg: &Config) -> Limiter {
        Limiter {
            inner: self.inner.clone(),
            prices: Prices::new(&cfg.prices),
            default_max_tokens: cfg.limits.default_max_tokens,
        }
    }

    pub fn prices(&self) -> &Prices {
        &self.prices
    }

    /// Estimate a shaped request: prompt tokens from its text, completion tokens from
    /// `max_tokens` (or the default), cost from the price table.
    pub fn estimate(&self, endpoint: Endpoint, ask: Ask<'_>, body: &Body) -> Estimate {
        let completion_tokens = match endpoint {
            Endpoint::Embeddings => 0,
            _ => ask
                .output_cap
                .unwrap_or(self.default_max_tokens)
                .saturating_mul(ask.completions),
        };
        Estimate {
            prompt_tokens: estimate_prompt_tokens(body),
            completion_tokens,
            price: self.prices.get(ask.model),
        }
    }

    /// The admit step: check and reserve everything in one atomic backend step.
    /// Errors: 429 `rate_limit_exceeded`, 429 `insufficient_quota`, or (backend down and
    /// `fail_closed`) 503.
    pub async fn admit(&self, caller: Subject<'_>, est: &Estimate) -> Result<Admission, ApiError> {
        let now = budget::unix_now();
        let cost = est.cost_nanos();
        let tokens = est.tokens();
        let lease_id = rand::random::<u64>();
        let mut settle = Vec::with_capacity(2);
        let mut checks = Vec::with_capacity(2);
        for (scope, id, limits) in [
            (Scope::Key, caller.key_id, caller.key_limits),
            (Scope::Team, caller.team, caller.team_limits),
        ] {
            let period = limits.budget.map_or(BudgetPeriod::Monthly, |b| b.period);
            let budget_nanos = budget_nanos(&limits);
            settle.push(ScopeSettle {
                scope,
                id: id.clone(),
                tpm: limits.tokens_per_minute,
                leased: limits.max_concurrent.is_some() || budget_nanos.is_some(),
                reserved: if budget_nanos.is_some() { cost } else { 0 },
                period,
            });
            if !limits.is_unlimited() {
                checks.push(ScopeCheck {
                    scope,
                    id: id.clone(),
                    limits,
                    budget_nanos,
                    period_tag: budget::period_tag(period, now),
                });
            }
        }
        let mut admission = Admission {
            inner: Some(self.inner.clone()),
            lease_id,
            scopes: settle,
            estimated_tokens: tokens,
            estimated_prompt: est.prompt_tokens,
            price: est.price,
            headers: RateHeaders::default(),
        };
        if checks.is_empty() {
            admission.unchecked();
            return Ok(admission);
        }
        let req = AdmitRequest {
            lease_id,
            scopes: checks,
            tokens,
            cost_nanos: cost,
        };
        let decision = match &self.inner.backend {
            Backend::Memory(m) => Ok(m.admit(&req)),
            Backend::Redis(r) => r.admit(&req).await,
        };
        match decision {
            Ok(Decision::Admit(headers)) => {
                self.inner.backend_ok();
                admission.headers = headers;
                Ok(admission)
            }
            Ok(Decision::Deny {
                scope,
                limit,
                retry_after,
                headers,
            }) => {
                self.inner.backend_ok();
                admission.disarm();
                metrics::counter!(names::LIMIT_REJECTIONS, "scope" => scope.label(),
                    "limit" => limit.label())
                .increment(1);
                Err(rejection(caller, scope, limit, retry_after, headers, now))
            }
            Err(e) => {
                self.inner.backend_failed("admit", &e);
                match self.inner.on_error {
                    OnBackendError::FailOpen => {
                        admission.unchecked();
                        Ok(admission)
                    }
                    OnBackendError::FailClosed => {
                        admission.disarm();
                        Err(ApiError::LimiterUnavailable)
                    }
                }
            }
        }
    }

    /// Spend so far in the current period, USD, of a key or team (for tests and the admin API).
    pub async fn spend_usd(
        &self,
        scope: Scope,
        id: &str,
        period: BudgetPeriod,
    ) -> Result<f64, BackendError> {
        let tag = budget::period_tag(period, budget::unix_now());
        let nanos = match &self.inner.backend {
            Backend::Memory(m) => m.spend(scope, id, &tag),
            Backend::Redis(r) => r.spend(scope, id, &tag).await?,
        };
        Ok(nanos as f64 / NANOS_PER_USD)
    }

    /// On shutdown, after the connections drained: wait (at most `within`) for the settlements
    /// still running in the background. Returns false when some were still running.
    pub async fn close(&self, within: Duration) -> bool {
        self.inner.settles.close();
        let done = tokio::time::timeout(within, self.inner.settles.wait())
            .await
            .is_ok();
        if !done {
            tracing::warn!(
                pending = self.inner.settles.len(),
                "limiter settlements still running at shutdown: their spend is lost"
            );
        }
        done
    }

    /// Write the memory backend's state file now (on shutdown). A no-op for Redis.
    pub fn flush(&self) -> Result<(), String> {
        match &self.inner.backend {
            Backend::Memory(m) => m.save(),
            Backend::Redis(_) => Ok(()),
        }
    }
}

fn rejection(
    caller: Subject<'_>,
    scope: Scope,
    limit: LimitKind,
    retry_after: Option<Duration>,
    headers: RateHeaders,
    now: u64,
) -> ApiError {
    let who = match scope {
        Scope::Key => format!("key '{}'", caller.key_id),
        Scope::Team => format!("team '{}'", caller.team),
    };
    let retry_secs = retry_after.map(|d| d.as_secs_f64().ceil().max(1.0) as u64);
    let headers = Box::new(headers);
    if let (LimitKind::Budget, Some(secs)) = (limit, retry_secs) {
        // Money is left, but requests in flight hold it: a moment's wait, not the period's end.
        return ApiError::RateLimited {
            message: format!(
                "The remaining budget of {who} is held by requests in flight. Please try again \
                 in {secs}s."
            ),
            retry_after_secs: Some(secs),
            headers,
        };
    }
    if limit == LimitKind::Budget {
        let limits = match scope {
            Scope::Key => caller.key_limits,
            Scope::Team => caller.team_limits,
        };
        let b = limits.budget.map(|b| (b.amount_usd, b.period));
        let (amount, period) = b.unwrap_or((0.0, BudgetPeriod::None));
        let period_word = match period {
            BudgetPeriod::Daily => "daily ",
            BudgetPeriod::Monthly => "monthly ",
            BudgetPeriod::None => "",
        };
        return ApiError::InsufficientQuota {
            message: format!(
                "You exceeded the {period_word}budget of ${amount:.2} of {who}; it covers the \
                 spend so far, the requests in flight and this request's estimate."
            ),
            retry_after_secs: budget::secs_until_reset(period, now),
            headers,
        };
    }
    let what = match limit {
        LimitKind::Rpm => "requests per minute",
        LimitKind::Tpm => "tokens per minute",
        _ => "concurrent requests",
    };
    let message = match retry_secs {
        Some(s) => format!("Rate limit reached for {who} on {what}. Please try again in {s}s."),
        None => format!(
            "Request too large for {who} on {what}: its estimated tokens exceed the limit. \
             Lower max_tokens or the prompt."
        ),
    };
    ApiError::RateLimited {
        message,
        retry_after_secs: retry_secs,
        headers,
    }
}

/// A request admitted by the limiter. Holds its concurrency slot and budget reservation until
/// settled; settling on drop (with zero usage) covers failures and cancelled handlers.
pub struct Admission {
    inner: Option<Arc<Inner>>,
    lease_id: u64,
    scopes: Vec<ScopeSettle>,
    estimated_tokens: u64,
    estimated_prompt: u64,
    price: Option<Price>,
    headers: RateHeaders,
}

impl std::fmt::Debug for Admission {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Admission")
            .field("lease_id", &self.lease_id)
            .field("headers", &self.headers)
            .finish_non_exhaustive()
    }
}

impl Admission {
    /// The `x-ratelimit-*` values at admission (empty when no limit applies or the backend was
    /// skipped).
    pub fn headers(&self) -> &RateHeaders {
        &self.headers
    }

    /// The prompt tokens estimated at admission (charged when the client leaves before the
    /// real usage is known).
    pub fn estimated_prompt_tokens(&self) -> u64 {
        self.estimated_prompt
    }

    /// What `usage` costs at this admission's price, in nano-dollars (what [`Admission::settle`]
    /// will record for it).
    pub fn cost_nanos(&self, usage: Usage) -> u64 {
        match (&self.inner, self.price) {
            (Some(_), Some(p)) => p.cost_of(usage),
            _ => 0,
        }
    }

    /// The admission did not go through the backend (no limits, or failing open): settle only
    /// records spend.
    fn unchecked(&mut self) {
        for s in &mut self.scopes {
            s.tpm = None;
            s.leased = false;
            s.reserved = 0;
        }
    }

    /// Refused: nothing to release or record.
    fn disarm(&mut self) {
        self.inner = None;
    }

    /// The request ended with this usage: release the slot and the reservation, record the real
    /// cost, correct the token limit. Returns the cost in USD. Runs in the background for Redis.
    pub fn settle(mut self, usage: Usage) -> f64 {
        self.settle_inner(usage)
    }

    fn settle_inner(&mut self, usage: Usage) -> f64 {
        let Some(inner) = self.inner.take() else {
            return 0.0;
        };
        let cost = self.price.map(|p| p.cost_of(usage)).unwrap_or(0);
        let actual = usage.prompt_tokens + usage.completion_tokens;
        let req = SettleRequest {
            lease_id: self.lease_id,
            scopes: std::mem::take(&mut self.scopes),
            token_delta: actual as i64 - self.estimated_tokens as i64,
            cost_nanos: cost,
        };
        match &inner.backend {
            Backend::Memory(m) => m.settle(&req),
            Backend::Redis(_) => match tokio::runtime::Handle::try_current() {
                Ok(h) => {
                    let settles = inner.settles.clone();
                    settles.spawn_on(async move { inner.settle(req).await }, &h);
                }
                Err(_) => tracing::warn!("limiter settle outside a runtime: dropped"),
            },
        }
        cost as f64 / NANOS_PER_USD
    }
}

impl Drop for Admission {
    fn drop(&mut self) {
        self.settle_inner(Usage::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;

    #[test]
    fn prompt_estimate_counts_ascii_by_four_and_cjk_by_one() {
        let body = serde_json::json!({"messages":[{"role":"user","content":"abcdefgh"},
            {"role":"user","content":[{"type":"text","text":"你好"}]}]});
        let Value::Object(m) = body else { panic!() };
        // Values only: "user"+"abcdefgh"+"user"+"text" = 20 ascii -> 5; 2 CJK -> 2; 2 messages -> 8.
        assert_eq!(estimate_prompt_tokens(&m), 15);
    }

    #[test]
    fn prompt_estimate_counts_token_ids_and_tool_schemas() {
        let body = serde_json::json!({"prompt": [[1, 2, 3], [4, 5]],
            "tools": [{"type": "function", "function": {"name": "abcd"}}]});
        let Value::Object(m) = body else { panic!() };
        // 5 ids; keys and values of tools: type+function+function+name+abcd = 28 ascii -> 7.
        assert_eq!(estimate_prompt_tokens(&m), 12);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        /// Characters and token ids seen by the oracle.
        #[derive(Default)]
        struct Count {
            ascii: u64,
            other: u64,
            ids: u64,
        }

        impl Count {
            fn text(&mut self, s: &str) {
                for c in s.chars() {
                    if c.is_ascii() {
                        self.ascii += 1
                    } else {
                        self.other += 1
                    }
                }
            }
        }

        /// The estimate as it was computed before bodies stayed raw: a walk over a parsed
        /// `Value`. The oracle the counts made while validating are held to.
        fn value_walk(body: &serde_json::Map<String, Value>) -> u64 {
            fn walk(c: &mut Count, v: &Value, ids: bool, keys: bool) {
                match v {
                    Value::String(s) => c.text(s),
                    Value::Number(_) if ids => c.ids += 1,
                    Value::Array(a) => a.iter().for_each(|v| walk(c, v, ids, keys)),
                    Value::Object(o) => o.iter().for_each(|(k, v)| {
                        if keys {
                            c.text(k);
                        }
                        walk(c, v, ids, keys)
                    }),
                    _ => {}
                }
            }
            let mut c = Count::default();
            let mut framing = 0;
            for (f, ids, keys) in ESTIMATED_FIELDS {
                if let Some(v) = body.get(f) {
                    walk(&mut c, v, ids, keys);
                    if let (Value::Array(a), "messages") = (v, f) {
                        framing += 4 * a.len() as u64;
                    }
                }
            }
            c.ascii.div_ceil(4) + c.other + c.ids + framing
        }

        fn json() -> impl Strategy<Value = Value> {
            let leaf = prop_oneof![
                Just(Value::Null),
                any::<bool>().prop_map(Value::from),
                any::<i64>().prop_map(Value::from),
                any::<u64>().prop_map(Value::from),
                (-1e6f64..1e6).prop_map(Value::from),
                "[a-z \"\\\\\u{7f}-\u{3000}\u{1F600}]{0,12}".prop_map(Value::from),
            ];
            leaf.prop_recursive(4, 48, 6, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..6).prop_map(Value::from),
                    proptest::collection::btree_map("[a-zé\"]{0,6}", inner, 0..6)
                        .prop_map(|m| Value::Object(m.into_iter().collect())),
                ]
            })
        }

        proptest! {
            /// The estimate over the client's JSON text counts what the old walk over a parsed
            /// `Value` counted, whatever the fields hold.
            #[test]
            fn the_raw_estimate_equals_the_value_estimate(
                fields in proptest::collection::vec(
                    (prop_oneof![Just("messages"), Just("prompt"), Just("input"), Just("tools"),
                        Just("functions"), Just("response_format"), Just("other")], json()),
                    0..6),
            ) {
                let map: serde_json::Map<String, Value> =
                    fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
                let text = Value::Object(map.clone()).to_string();
                let body = Body::parse(bytes::Bytes::from(text));
                prop_assert!(body.is_ok());
                let want = value_walk(&map);
                prop_assert_eq!(estimate_prompt_tokens(&map), want);
                if let Ok(body) = body {
                    prop_assert_eq!(estimate_prompt_tokens(&body), want);
                }
            }
        }
    }
}
