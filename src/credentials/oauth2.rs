//! OAuth2 client credentials (RFC 6749 §4.4) that keep themselves alive.
//!
//! One background task per credential owns every token call (single flight by construction):
//! requests read the current token lock-free from an `ArcSwap` and never wait while it is valid.
//! The task renews ahead of expiry, when `max(renew_margin, renew_fraction × lifetime)` remains
//! (capped at half the lifetime), but never more than once per `min_renew_interval`, so a token shorter-lived than the margin
//! cannot cause a renewal loop. Expiry is computed from the monotonic arrival time of the token
//! response, never from wall-clock timestamps. A failed call is retried with full-jitter backoff
//! (bounded attempts and delay) while the old token stays in use; `invalid_client` /
//! `invalid_grant` are permanent (loud log, credential marked failed, slow retry) and told apart
//! from 5xx / timeouts (transient). A refresh token, when the server hands one out, is tried
//! before the client-credentials grant.
//!
//! A 401 invalidates a token only if it is still the current generation, so a burst of 401s from
//! one old token causes one renewal. A request that finds no usable token wakes the task and
//! waits for its result, bounded by `lease_timeout`, then gets 503 (never 401: the client's own
//! key is fine). Token calls go through the [`Fetch`] trait so the timing logic is unit-tested
//! with paused time and a fake token server.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwapOption;
use futures_util::future::BoxFuture;
use serde_json::Value;
use tokio::sync::{watch, Notify};
use tokio::time::Instant;

use super::{backoff, Lease, Outcome, Placed, Retry, TaskGuard, View};
use crate::config::{ClientAuth, OAuth2Config, Placement, ProxyConfig, TokenMethod};
use crate::error::ApiError;
use crate::secret::{EnvSource, Secret};
use crate::telemetry::names;

/// Which grant to ask the token server for.
#[derive(Debug, Clone, Copy)]
pub enum Grant<'a> {
    ClientCredentials,
    Refresh(&'a Secret),
}

/// A token the server handed out.
#[derive(Debug, Clone)]
pub struct Fetched {
    pub access_token: Secret,
    /// Already clamped to sane bounds.
    pub lifetime: Duration,
    pub refresh_token: Option<Secret>,
    /// When the response arrived (monotonic): expiry counts from here.
    pub received: Instant,
}

/// Why a token call failed. Messages never carry a secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FetchError {
    /// 5xx, timeouts, connection errors: back off and retry.
    Transient(String),
    /// `invalid_client`, `invalid_grant` and friends: retrying soon will not help.
    Permanent(String),
}

/// The token server, behind a trait so the renewal logic can be tested without sockets.
pub trait Fetch: Send + Sync + 'static {
    fn fetch<'a>(&'a self, grant: Grant<'a>) -> BoxFuture<'a, Result<Fetched, FetchError>>;
}

/// Timing knobs, from config.
#[derive(Debug, Clone)]
pub struct Settings {
    pub renew_margin: Duration,
    pub renew_fraction: f64,
    pub min_renew_interval: Duration,
    pub lease_timeout: Duration,
    pub max_attempts: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    pub failed_retry_interval: Duration,
}

impl Settings {
    fn from_config(c: &OAuth2Config) -> Settings {
        Settings {
            renew_margin: c.renew_margin.0,
            renew_fraction: c.renew_fraction,
            min_renew_interval: c.min_renew_interval.0,
            lease_timeout: c.lease_timeout.0,
            max_attempts: c.max_attempts.max(1),
            backoff_base: c.backoff_base.0,
            backoff_max: c.backoff_max.0,
            failed_retry_interval: c.failed_retry_interval.0,
        }
    }

    /// How long before expiry to renew a token of this lifetime: the larger of `renew_margin`
    /// and `renew_fraction` of the lifetime, but at most half the lifetime (a 60 s token with the
    /// default 60 s margin is renewed at 30 s, not continuously).
    pub fn margin(&self, lifetime: Duration) -> Duration {
        self.renew_margin
            .max(lifetime.mul_f64(self.renew_fraction))
            .min(lifetime / 2)
    }
}

/// Clamp a token response's `expires_in` (number, numeric string, missing, 0, negative, huge)
/// into `[min, max]`; anything unusable means `default`.
pub fn clamp_lifetime(
    v: Option<&Value>,
    default: Duration,
    min: Duration,
    max: Duration,
) -> Duration {
    let secs = match v {
        Some(Value::Number(n)) => n.as_f64(),
        Some(Value::String(s)) => s.trim().parse::<f64>().ok(),
        _ => None,
    };
    match secs {
        Some(s) if s.is_finite() => {
            Duration::from_secs_f64(s.clamp(min.as_secs_f64(), max.as_secs_f64()))
        }
        _ => default.clamp(min, max),
    }
}

struct Token {
    value: Secret,
    /// The value as the request carries it, built once here.
    placed: Placed,
    generation: u64,
    lifetime: Duration,
    expires_at: Instant,
    renew_at: Instant,
    refresh: Option<Secret>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Failure {
    Transient(Instant),
    Permanent(Instant),
}

#[derive(Default)]
struct Status {
    failure: Option<Failure>,
    last_error: Option<String>,
}

struct Inner {
    name: Arc<str>,
    settings: Settings,
    fetcher: Box<dyn Fetch>,
    placement: Arc<Placement>,
    current: ArcSwapOption<Token>,
    /// Tokens of this generation or older are known bad (got a 401).
    bad_generation: AtomicU64,
    next_generation: AtomicU64,
    /// Wakes the renewal task (a 401, or a request that found no usable token).
    wake: Notify,
    /// A request is waiting for a token: renew now even after a failed round.
    wanted: AtomicBool,
    /// Bumped on every install or failed round; waiters watch it.
    changed: watch::Sender<u64>,
    /// Failed rounds so far; a waiter gives up when a round fails after it started waiting.
    failed_rounds: AtomicU64,
    status: Mutex<Status>,
    renewing: AtomicBool,
    served: AtomicU64,
    renewals: AtomicU64,
    failures: AtomicU64,
}

/// An OAuth2 client-credentials credential with its renewal task.
pub struct OAuth2 {
    inner: Arc<Inner>,
    task: OnceLock<TaskGuard>,
}

impl OAuth2 {
    /// `proxy` is the gateway-wide egress proxy, used when the credential sets none.
    pub fn from_config(
        name: &str,
        c: &OAuth2Config,
        env: &dyn EnvSource,
        proxy: Option<&ProxyConfig>,
    ) -> Result<Self, String> {
        let path = format!("credentials.{name}");
        let token_url = reqwest::Url::parse(&c.token_url)
            .map_err(|e| format!("{path}.token_url: invalid URL: {e}"))?;
        let fetcher = HttpFetch {
            client: token_client(c, &path, &token_url, env, proxy)?,
            token_url,
            client_id: c
                .client_id
                .resolve(env)
                .map_err(|e| format!("{path}.client_id: {e}"))?,
            client_secret: c
                .client_secret
                .resolve(env)
                .map_err(|e| format!("{path}.client_secret: {e}"))?,
            scope: c.scope.clone(),
            auth: c.client_auth,
            method: c.token_method,
            default_lifetime: c.default_lifetime.0,
            min_lifetime: c.min_lifetime.0,
            max_lifetime: c.max_lifetime.0,
        };
        Ok(OAuth2::with_fetcher(
            name,
            Settings::from_config(c),
            Arc::new(c.placement.clone()),
            Box::new(fetcher),
        ))
    }

    /// Build around any token source; starts the renewal task when a runtime is running (else
    /// on the first lease).
    pub fn with_fetcher(
        name: &str,
        settings: Settings,
        placement: Arc<Placement>,
        fetcher: Box<dyn Fetch>,
    ) -> OAuth2 {
        let (changed, _) = watch::channel(0u64);
        let o = OAuth2 {
            inner: Arc::new(Inner {
                name: Arc::from(name),
                settings,
                fetcher,
                placement,
                current: ArcSwapOption::empty(),
                bad_generation: AtomicU64::new(0),
                next_generation: AtomicU64::new(0),
                wake: Notify::new(),
                wanted: AtomicBool::new(false),
                changed,
                failed_rounds: AtomicU64::new(0),
                status: Mutex::new(Status::default()),
                renewing: AtomicBool::new(false),
                served: AtomicU64::new(0),
                renewals: AtomicU64::new(0),
                failures: AtomicU64::new(0),
            }),
            task: OnceLock::new(),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            o.ensure_started();
        }
        o
    }

    fn ensure_started(&self) {
        self.task
            .get_or_init(|| TaskGuard::spawn(run(self.inner.clone())));
    }

    /// Whether a usable token is at hand (a lease would not wait).
    pub fn ready(&self) -> bool {
        let inner = &self.inner;
        inner.current.load().as_ref().is_some_and(|t| {
            t.generation > inner.bad_generation.load(Ordering::Acquire)
                && Instant::now() < t.expires_at
        })
    }

    /// The current token if usable; in steady state the only thing a request does.
    fn try_lease(&self) -> Option<Lease> {
        let inner = &self.inner;
        let tok = inner.current.load_full()?;
        if tok.generation <= inner.bad_generation.load(Ordering::Acquire)
            || Instant::now() >= tok.expires_at
        {
            return None;
        }
        inner.served.fetch_add(1, Ordering::Relaxed);
        Some(Lease::prepared(
            inner.placement.clone(),
            tok.value.clone(),
            tok.placed.clone(),
            tok.generation,
        ))
    }

    pub async fn lease(&self) -> Result<Lease, ApiError> {
        self.ensure_started();
        if let Some(l) = self.try_lease() {
            return Ok(l);
        }
        let inner = &self.inner;
        let mut rx = inner.changed.subscribe();
        let failed_before = inner.failed_rounds.load(Ordering::Acquire);
        let deadline = Instant::now() + inner.settings.lease_timeout;
        loop {
            if let Some(l) = self.try_lease() {
                return Ok(l);
            }
            if let Some(Failure::Permanent(at)) = inner.failure() {
                let left = (at + inner.settings.failed_retry_interval)
                    .saturating_duration_since(Instant::now());
                return Err(inner.unavailable("the token server rejected the client", left));
            }
            if inner.failed_rounds.load(Ordering::Acquire) > failed_before {
                return Err(inner.unavailable(
                    "the token server is failing",
                    inner.settings.min_renew_interval,
                ));
            }
            inner.wanted.store(true, Ordering::Release);
            inner.wake.notify_one();
            match tokio::time::timeout_at(deadline, rx.changed()).await {
                Ok(Ok(())) => continue,
                _ => {
                    return Err(inner.unavailable(
                        "no token arrived in time",
                        inner.settings.min_renew_interval,
                    ))
                }
            }
        }
    }

    pub fn report(&self, lease: &Lease, outcome: Outcome) -> Retry {
        if outcome != Outcome::Unauthorized {
            return Retry::No;
        }
        let inner = &self.inner;
        let current = inner.current.load().as_ref().map_or(0, |t| t.generation);
        if lease.generation == current {
            let before = inner
                .bad_generation
                .fetch_max(lease.generation, Ordering::AcqRel);
            if before < lease.generation {
                tracing::warn!(credential = %inner.name, generation = lease.generation,
                    "upstream answered 401: token invalidated, renewing");
                inner.wanted.store(true, Ordering::Release);
                inner.wake.notify_one();
            }
        }
        metrics::counter!(names::CREDENTIAL_401_RETRIES, "credential" => inner.name.to_string())
            .increment(1);
        Retry::Renewed
    }

    pub fn view(&self) -> View {
        let inner = &self.inner;
        let now = Instant::now();
        let tok = inner.current.load_full();
        let usable = tok.as_ref().is_some_and(|t| {
            t.generation > inner.bad_generation.load(Ordering::Acquire) && now < t.expires_at
        });
        let (failure, last_error) = match inner.status.lock() {
            Ok(s) => (s.failure, s.last_error.clone()),
            Err(_) => (None, None),
        };
        let state = if inner.renewing.load(Ordering::Acquire) {
            "renewing"
        } else if usable {
            "valid"
        } else if matches!(failure, Some(Failure::Permanent(_))) {
            "failed"
        } else if failure.is_some() {
            "unavailable"
        } else {
            "pending"
        };
        View {
            kind: "oauth2",
            state,
            fingerprint: tok.as_ref().map(|t| t.value.fingerprint()),
            expires_in_secs: tok
                .as_ref()
                .map(|t| t.expires_at.saturating_duration_since(now).as_secs_f64()),
            last_error,
            requests_served: inner.served.load(Ordering::Relaxed),
            renewals: Some(inner.renewals.load(Ordering::Relaxed)),
            renewal_failures: Some(inner.failures.load(Ordering::Relaxed)),
            ..View::default()
        }
    }

    /// Token calls made so far (tests).
    pub fn renewals(&self) -> u64 {
        self.inner.renewals.load(Ordering::Relaxed)
    }
}

impl Inner {
    fn failure(&self) -> Option<Failure> {
        self.status.lock().ok().and_then(|s| s.failure)
    }

    fn unavailable(&self, why: &str, retry_after: Duration) -> ApiError {
        ApiError::CredentialUnavailable {
            message: format!("credential '{}': {why}", self.name),
            retry_after_secs: retry_after.as_secs_f64().ceil().max(1.0) as u64,
        }
    }

    /// When the next renewal round should start.
    fn due(&self, last_round: Option<Instant>, now: Instant) -> Instant {
        let s = &self.settings;
        let floor = last_round.map_or(now, |t| t + s.min_renew_interval);
        let wanted = self.wanted.load(Ordering::Acquire);
        let want = match self.failure() {
            Some(Failure::Permanent(at)) => at + s.failed_retry_interval,
            Some(Failure::Transient(at)) if !wanted => at + s.backoff_max,
            Some(Failure::Transient(_)) => now,
            None => match self.current.load_full() {
                Some(t) if t.generation > self.bad_generation.load(Ordering::Acquire) => t.renew_at,
                _ => now,
            },
        };
        want.max(floor)
    }

    /// One renewal round: up to `max_attempts` token calls with full-jitter backoff.
    async fn round(&self) {
        let s = &self.settings;
        self.renewing.store(true, Ordering::Release);
        self.wanted.store(false, Ordering::Release);
        let mut refresh = self.current.load_full().and_then(|t| t.refresh.clone());
        let mut result = Err(FetchError::Transient("no attempt".into()));
        for attempt in 0..s.max_attempts {
            result = match refresh.take() {
                Some(r) => match self.fetcher.fetch(Grant::Refresh(&r)).await {
                    Ok(f) => Ok(f),
                    Err(e) => {
                        tracing::info!(credential = %self.name, error = ?e,
                            "refresh grant failed; falling back to client credentials");
                        self.fetcher.fetch(Grant::ClientCredentials).await
                    }
                },
                None => self.fetcher.fetch(Grant::ClientCredentials).await,
            };
            match &result {
                Ok(_) | Err(FetchError::Permanent(_)) => break,
                Err(FetchError::Transient(msg)) => {
                    self.failures.fetch_add(1, Ordering::Relaxed);
                    metrics::counter!(names::CREDENTIAL_RENEWAL_FAILURES,
                        "credential" => self.name.to_string(), "class" => "transient")
                    .increment(1);
                    tracing::warn!(credential = %self.name, attempt = attempt + 1,
                        error = %msg, "token request failed; backing off");
                    self.set_error(None, msg);
                    if attempt + 1 < s.max_attempts {
                        let wait = backoff::full_jitter(
                            attempt,
                            s.backoff_base,
                            s.backoff_max,
                            &mut rand::rng(),
                        );
                        tokio::time::sleep(wait).await;
                    }
                }
            }
        }
        match result {
            Ok(f) => self.install(f),
            Err(FetchError::Permanent(msg)) => {
                self.failures.fetch_add(1, Ordering::Relaxed);
                metrics::counter!(names::CREDENTIAL_RENEWAL_FAILURES,
                    "credential" => self.name.to_string(), "class" => "permanent")
                .increment(1);
                tracing::error!(credential = %self.name, error = %msg,
                    retry_in_secs = s.failed_retry_interval.as_secs(),
                    "token server rejected the client: credential marked failed");
                self.set_error(Some(Failure::Permanent(Instant::now())), &msg);
                self.failed_rounds.fetch_add(1, Ordering::AcqRel);
            }
            Err(FetchError::Transient(msg)) => {
                self.set_error(Some(Failure::Transient(Instant::now())), &msg);
                self.failed_rounds.fetch_add(1, Ordering::AcqRel);
            }
        }
        self.renewing.store(false, Ordering::Release);
        self.changed.send_modify(|v| *v += 1);
    }

    fn set_error(&self, failure: Option<Failure>, msg: &str) {
        if let Ok(mut st) = self.status.lock() {
            if failure.is_some() {
                st.failure = failure;
            }
            st.last_error = Some(msg.to_owned());
        }
    }

    fn install(&self, f: Fetched) {
        let generation = self.next_generation.fetch_add(1, Ordering::AcqRel) + 1;
        let margin = self.settings.margin(f.lifetime);
        let tok = Token {
            generation,
            lifetime: f.lifetime,
            expires_at: f.received + f.lifetime,
            renew_at: f.received + f.lifetime.saturating_sub(margin),
            refresh: f.refresh_token,
            placed: Placed::new(&self.placement, &f.access_token),
            value: f.access_token,
        };
        tracing::info!(credential = %self.name, generation,
            fingerprint = %tok.value.fingerprint(),
            lifetime_secs = tok.lifetime.as_secs_f64(), "token renewed");
        self.current.store(Some(Arc::new(tok)));
        self.renewals.fetch_add(1, Ordering::Relaxed);
        metrics::counter!(names::CREDENTIAL_RENEWALS, "credential" => self.name.to_string())
            .increment(1);
        if let Ok(mut st) = self.status.lock() {
            st.failure = None;
        }
    }
}

/// The renewal task: sleeps until the next renewal is due (or it is woken), runs one round.
async fn run(inner: Arc<Inner>) {
    let mut last_round: Option<Instant> = None;
    loop {
        let due = inner.due(last_round, Instant::now());
        if Instant::now() < due {
            tokio::select! {
                _ = tokio::time::sleep_until(due) => {}
                _ = inner.wake.notified() => {}
            }
            if Instant::now() < inner.due(last_round, Instant::now()) {
                continue;
            }
        }
        last_round = Some(Instant::now());
        inner.round().await;
    }
}

/// The real token server over HTTP.
struct HttpFetch {
    client: reqwest::Client,
    token_url: reqwest::Url,
    client_id: Secret,
    client_secret: Secret,
    scope: Option<String>,
    auth: ClientAuth,
    method: TokenMethod,
    default_lifetime: Duration,
    min_lifetime: Duration,
    max_lifetime: Duration,
}

/// OAuth2 error codes that retrying soon will not fix.
const PERMANENT: &[&str] = &[
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
];

impl Fetch for HttpFetch {
    fn fetch<'a>(&'a self, grant: Grant<'a>) -> BoxFuture<'a, Result<Fetched, FetchError>> {
        Box::pin(async move {
            let mut params: Vec<(&str, &str)> = Vec::with_capacity(5);
            match grant {
                Grant::ClientCredentials => {
                    params.push(("grant_type", "client_credentials"));
                    if let Some(s) = &self.scope {
                        params.push(("scope", s));
                    }
                }
                Grant::Refresh(r) => {
                    params.push(("grant_type", "refresh_token"));
                    params.push(("refresh_token", r.expose()));
                }
            }
            let id = self.client_id.expose();
            let secret = self.client_secret.expose();
            let req = match self.auth {
                ClientAuth::Form => {
                    params.push(("client_id", id));
                    params.push(("client_secret", secret));
                    self.client.post(self.token_url.clone()).form(&params)
                }
                ClientAuth::Basic => self
                    .client
                    .post(self.token_url.clone())
                    .basic_auth(id, Some(secret))
                    .form(&params),
                ClientAuth::Query => {
                    params.push(("client_id", id));
                    params.push(("client_secret", secret));
                    let method = match self.method {
                        TokenMethod::Get => reqwest::Method::GET,
                        TokenMethod::Post => reqwest::Method::POST,
                    };
                    self.client
                        .request(method, self.token_url.clone())
                        .query(&params)
                }
            };
            // reqwest's error text can carry the URL (and with query auth, the secret): only
            // the error's class is reported.
            let resp = req.send().await.map_err(describe)?;
            let status = resp.status();
            let body = resp.bytes().await.map_err(describe)?;
            let received = Instant::now();
            let json: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let code = json.get("error").and_then(Value::as_str).map(|c| {
                c.chars()
                    .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .take(64)
                    .collect::<String>()
            });
            if status.is_success() && code.is_none() {
                if let Some(tok) = json.get("access_token").and_then(Value::as_str) {
                    if !tok.is_empty() {
                        return Ok(Fetched {
                            access_token: Secret::new(tok),
                            lifetime: clamp_lifetime(
                                json.get("expires_in"),
                                self.default_lifetime,
                                self.min_lifetime,
                                self.max_lifetime,
                            ),
                            refresh_token: json
                                .get("refresh_token")
                                .and_then(Value::as_str)
                                .filter(|r| !r.is_empty())
                                .map(Secret::new),
                            received,
                        });
                    }
                }
                return Err(FetchError::Transient(format!(
                    "token server answered {} without an access_token",
                    status.as_u16()
                )));
            }
            let msg = format!(
                "token server answered {} {}",
                status.as_u16(),
                code.as_deref().unwrap_or("")
            )
            .trim_end()
            .to_owned();
            let permanent = code.as_deref().is_some_and(|c| PERMANENT.contains(&c))
                || (code.is_none() && matches!(status.as_u16(), 401 | 403));
            if permanent {
                Err(FetchError::Permanent(msg))
            } else {
                Err(FetchError::Transient(msg))
            }
        })
    }
}

/// The token endpoint's HTTP client: its timeouts, no redirects, the endpoint's TLS (the same
/// rustls configuration an upstream gets from [`crate::egress::client_config`]) and its egress
/// proxy, decided now for the endpoint's host. The environment's proxy variables are never read
/// by reqwest itself: only `proxy: {from_env: true}` brings them in.
fn token_client(
    c: &OAuth2Config,
    path: &str,
    token_url: &reqwest::Url,
    env: &dyn EnvSource,
    gateway_proxy: Option<&ProxyConfig>,
) -> Result<reqwest::Client, String> {
    let tls = crate::egress::client_config(c.tls.as_ref(), &format!("{path}.tls"), env)?;
    let mut builder = reqwest::Client::builder()
        .connect_timeout(c.connect_timeout.0)
        .timeout(c.timeout.0)
        .tcp_nodelay(true)
        .redirect(reqwest::redirect::Policy::none())
        .use_preconfigured_tls(tls)
        .no_proxy();
    let (proxy, proxy_path) = match c.proxy.as_ref() {
        Some(p) => (Some(p), format!("{path}.proxy")),
        None => (gateway_proxy, "proxy".to_owned()),
    };
    let dst: http::Uri = token_url
        .as_str()
        .parse()
        .map_err(|e| format!("{path}.token_url: {e}"))?;
    if let Some(route) = crate::egress::proxy_route(proxy, &dst, &proxy_path, env)? {
        let mut p =
            reqwest::Proxy::all(route.uri.to_string()).map_err(|e| format!("{proxy_path}: {e}"))?;
        if let Some(auth) = route.auth {
            p = p.custom_http_auth(auth);
        }
        builder = builder.proxy(p);
    }
    builder
        .build()
        .map_err(|e| format!("{path}: cannot build HTTP client: {e}"))
}

fn describe(e: reqwest::Error) -> FetchError {
    if let Some(f) = crate::egress::failure(&e) {
        return FetchError::Transient(format!("cannot connect to the token server: {f}"));
    }
    let what = if e.is_timeout() {
        "token request timed out"
    } else if e.is_connect() {
        "cannot connect to the token server"
    } else if e.is_body() || e.is_decode() {
        "token response could not be read"
    } else {
        "token request failed"
    };
    FetchError::Transient(what.into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::VecDeque;
    use std::sync::atomic::AtomicUsize;

    /// A fake token server: answers from a script (then succeeds), counts calls, can hang.
    #[derive(Default)]
    struct Fake {
        calls: AtomicUsize,
        script: Mutex<VecDeque<Result<(), FetchError>>>,
        lifetime: Mutex<Duration>,
        delay: Mutex<Duration>,
        refresh: AtomicBool,
        grants: Mutex<Vec<&'static str>>,
    }

    struct Shared(Arc<Fake>);

    impl Fetch for Shared {
        fn fetch<'a>(&'a self, grant: Grant<'a>) -> BoxFuture<'a, Result<Fetched, FetchError>> {
            Box::pin(async move {
                let f = &self.0;
                let n = f.calls.fetch_add(1, Ordering::SeqCst) + 1;
                if let Ok(mut g) = f.grants.lock() {
                    g.push(match grant {
                        Grant::ClientCredentials => "client_credentials",
                        Grant::Refresh(_) => "refresh_token",
                    });
                }
                let delay = f.delay.lock().map(|d| *d).unwrap_or_default();
                tokio::time::sleep(delay).await;
                let step = f.script.lock().ok().and_then(|mut s| s.pop_front());
                if let Some(Err(e)) = step {
                    return Err(e);
                }
                Ok(Fetched {
                    access_token: Secret::new(format!("tok-{n}")),
                    lifetime: f.lifetime.lock().map(|d| *d).unwrap_or_default(),
                    refresh_token: f
                        .refresh
                        .load(Ordering::SeqCst)
                        .then(|| Secret::new(format!("rt-{n}"))),
                    received: Instant::now(),
                })
            })
        }
    }

    fn settings() -> Settings {
        Settings {
            renew_margin: Duration::from_millis(500),
            renew_fraction: 0.1,
            min_renew_interval: Duration::from_secs(1),
            lease_timeout: Duration::from_secs(3),
            max_attempts: 4,
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(2),
            failed_retry_interval: Duration::from_secs(60),
        }
    }

    fn make(lifetime: Duration) -> (OAuth2, Arc<Fake>) {
        let fake = Arc::new(Fake::default());
        if let Ok(mut l) = fake.lifetime.lock() {
            *l = lifetime;
        }
        let o = OAuth2::with_fetcher(
            "t",
            settings(),
            Arc::new(Placement::Bearer),
            Box::new(Shared(fake.clone())),
        );
        (o, fake)
    }

    async fn lease_ok(o: &OAuth2) -> Lease {
        match o.lease().await {
            Ok(l) => l,
            Err(e) => panic!("lease failed: {e}"),
        }
    }

    #[test]
    fn margin_is_the_larger_of_fixed_and_fraction_capped_at_half() {
        let s = Settings {
            renew_margin: Duration::from_secs(60),
            ..settings()
        };
        assert_eq!(
            s.margin(Duration::from_secs(3600)),
            Duration::from_secs(360)
        );
        assert_eq!(s.margin(Duration::from_secs(300)), Duration::from_secs(60));
        assert_eq!(s.margin(Duration::from_secs(60)), Duration::from_secs(30));
    }

    #[test]
    fn odd_expires_in_is_clamped() {
        let d = Duration::from_secs(3600);
        let min = Duration::from_secs(1);
        let max = Duration::from_secs(86400);
        let c = |v: Value| clamp_lifetime(Some(&v), d, min, max);
        assert_eq!(c(serde_json::json!(120)), Duration::from_secs(120));
        assert_eq!(c(serde_json::json!("120")), Duration::from_secs(120));
        assert_eq!(c(serde_json::json!(0)), min);
        assert_eq!(c(serde_json::json!(-5)), min);
        assert_eq!(c(serde_json::json!(1e300)), max);
        assert_eq!(c(serde_json::json!("soon")), d);
        assert_eq!(c(serde_json::json!(null)), d);
        assert_eq!(clamp_lifetime(None, d, min, max), d);
    }

    /// The token server takes 2 s (longer than `min_renew_interval`, shorter than
    /// `lease_timeout`): all 50 leases are waiting on the one call at once, and none of them
    /// starts a second one.
    #[tokio::test(start_paused = true)]
    async fn concurrent_first_leases_make_one_token_call() {
        let (o, fake) = make(Duration::from_secs(10));
        if let Ok(mut d) = fake.delay.lock() {
            *d = Duration::from_secs(2);
        }
        let o = Arc::new(o);
        let mut tasks = Vec::new();
        for _ in 0..50 {
            let o = o.clone();
            tasks.push(tokio::spawn(async move {
                o.lease().await.map(|l| l.generation)
            }));
        }
        // Paused time does not move while this task is runnable: the call is still in flight.
        let mut spins = 0;
        while o.inner.changed.receiver_count() < 50 {
            assert!(spins < 10_000, "the leases never all waited");
            spins += 1;
            tokio::task::yield_now().await;
        }
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1, "one call in flight");
        for t in tasks {
            assert!(matches!(t.await, Ok(Ok(1))));
        }
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn renews_ahead_of_expiry_without_making_requests_wait() {
        // 10 s tokens, margin max(0.5 s, 1 s) = 1 s: renewals at 9 s, 18 s, 27 s.
        let (o, fake) = make(Duration::from_secs(10));
        let start = Instant::now();
        lease_ok(&o).await;
        let mut gens = Vec::new();
        while start.elapsed() < Duration::from_secs(30) {
            let t0 = Instant::now();
            gens.push(lease_ok(&o).await.generation);
            assert_eq!(t0.elapsed(), Duration::ZERO, "a lease waited");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(fake.calls.load(Ordering::SeqCst), 4);
        assert_eq!(gens.last(), Some(&4));
    }

    #[tokio::test(start_paused = true)]
    async fn short_lived_tokens_renew_at_most_once_per_min_interval() {
        // Lifetime 300 ms is below the 500 ms margin: renewal is due at once, every time.
        let (o, fake) = make(Duration::from_millis(300));
        lease_ok(&o).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        let calls = fake.calls.load(Ordering::SeqCst);
        assert!((10..=11).contains(&calls), "{calls} token calls in 10 s");
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_of_401s_from_one_token_renews_once() {
        let (o, fake) = make(Duration::from_secs(100));
        let old = lease_ok(&o).await;
        for _ in 0..20 {
            assert_eq!(o.report(&old, Outcome::Unauthorized), Retry::Renewed);
        }
        let new = lease_ok(&o).await;
        assert_eq!(new.generation, 2);
        // Late 401s from the old generation change nothing.
        assert_eq!(o.report(&old, Outcome::Unauthorized), Retry::Renewed);
        tokio::time::sleep(Duration::from_secs(5)).await;
        assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
        assert_eq!(lease_ok(&o).await.generation, 2);
    }

    #[tokio::test(start_paused = true)]
    async fn transient_failures_back_off_while_the_old_token_serves() {
        let (o, fake) = make(Duration::from_secs(10));
        lease_ok(&o).await;
        if let Ok(mut s) = fake.script.lock() {
            s.push_back(Err(FetchError::Transient("503".into())));
            s.push_back(Err(FetchError::Transient("503".into())));
        }
        // Renewal starts at 9 s; two failures, then success, all within the token's life.
        for _ in 0..150 {
            let l = lease_ok(&o).await;
            assert!(l.generation >= 1);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        assert_eq!(fake.calls.load(Ordering::SeqCst), 4);
        assert_eq!(lease_ok(&o).await.generation, 2);
        assert_eq!(o.view().renewal_failures, Some(2));
    }

    #[tokio::test(start_paused = true)]
    async fn permanent_failure_fails_fast_with_503_and_retries_slowly() {
        let (o, fake) = make(Duration::from_secs(10));
        if let Ok(mut s) = fake.script.lock() {
            s.push_back(Err(FetchError::Permanent("invalid_client".into())));
        }
        let e = o.lease().await.err().map(|e| e.status().as_u16());
        assert_eq!(e, Some(503));
        assert_eq!(o.view().state, "failed");
        let t0 = Instant::now();
        assert_eq!(
            o.lease().await.err().map(|e| e.status().as_u16()),
            Some(503)
        );
        assert_eq!(t0.elapsed(), Duration::ZERO);
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert_eq!(fake.calls.load(Ordering::SeqCst), 1);
        tokio::time::sleep(Duration::from_secs(31)).await;
        assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
        assert_eq!(lease_ok(&o).await.generation, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_hung_token_server_bounds_the_wait() {
        let (o, fake) = make(Duration::from_secs(10));
        if let Ok(mut d) = fake.delay.lock() {
            *d = Duration::from_secs(3600);
        }
        let t0 = Instant::now();
        let e = o.lease().await.err().map(|e| e.status().as_u16());
        assert_eq!(e, Some(503));
        assert_eq!(t0.elapsed(), settings().lease_timeout);
    }

    #[tokio::test(start_paused = true)]
    async fn refresh_grant_is_used_before_client_credentials() {
        let (o, fake) = make(Duration::from_secs(10));
        fake.refresh.store(true, Ordering::SeqCst);
        lease_ok(&o).await;
        tokio::time::sleep(Duration::from_secs(10)).await;
        // First a refresh that is refused, then the fallback.
        if let Ok(mut s) = fake.script.lock() {
            s.push_back(Err(FetchError::Permanent("invalid_grant".into())));
        }
        tokio::time::sleep(Duration::from_secs(9)).await;
        let grants = fake.grants.lock().map(|g| g.clone()).unwrap_or_default();
        assert_eq!(
            grants,
            [
                "client_credentials",
                "refresh_token",
                "refresh_token",
                "client_credentials"
            ]
        );
        assert_eq!(lease_ok(&o).await.generation, 3);
    }

    #[tokio::test(start_paused = true)]
    async fn dropping_the_credential_stops_its_task() {
        let (o, fake) = make(Duration::from_millis(300));
        lease_ok(&o).await;
        drop(o);
        let before = fake.calls.load(Ordering::SeqCst);
        tokio::time::sleep(Duration::from_secs(10)).await;
        assert_eq!(fake.calls.load(Ordering::SeqCst), before);
    }
}
