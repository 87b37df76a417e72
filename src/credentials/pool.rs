//! A pool of credentials for one upstream (the `access_tokens.txt` practice).
//!
//! Members come from inline `tokens`, a `file` (one token per line; blank lines and `#` comments
//! ignored, whitespace trimmed) and `members` of any other kind (e.g. several OAuth2 clients).
//! Selection is round robin or least-in-flight over the members that are neither disabled nor
//! cooling down. What one member's answer may change for everyone is decided on evidence, so
//! that one tenant's request cannot take a member from the others:
//! - a 429 always moves *this* request on to another member at once; it cools the member down
//!   for its `Retry-After` (or `default_cooldown`, at most [`MAX_COOLDOWN`]) only when the answer
//!   is about the account (the upstream's `x-ratelimit-remaining-*: 0` or `insufficient_quota`)
//!   or when another tenant's request got a 429 from the same member within [`WITNESS_WINDOW`]
//!   (that weaker evidence cools it for at most [`WITNESS_WINDOW`]);
//! - a 401 moves this request on; a renewable member renews; a static member is disabled (until
//!   the file changes or an admin re-enables it) after 401s from [`STRIKES_TO_DISABLE`]
//!   different requests with no success in between;
//! - a 403 is about the request (moderation, model access): it changes nothing and goes to the
//!   client.
//!
//! All cooling → 429 with the earliest recovery as `Retry-After`; all disabled → 503.
//!
//! The file is polled every 500 ms by a task owned through a [`TaskGuard`] (polling rather than
//! inotify: it works the same on every filesystem, across atomic renames and in containers, and a
//! token file is tiny). A change builds a new member list and swaps it in atomically; requests in
//! flight keep the lease they hold. Members whose token is unchanged keep their cooldown and
//! counters; every member's `disabled` flag is cleared. The same task refreshes the
//! members-by-state gauge.

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use arc_swap::ArcSwap;

use crate::config::ProxyConfig;
use tokio::time::Instant;

use super::{
    Credential, InFlight, Lease, MemberRef, Outcome, Retry, TaskGuard, View, MAX_COOLDOWN,
    STRIKES_TO_DISABLE, WITNESS_WINDOW,
};
use crate::config::{Placement, PoolConfig, Selection};
use crate::error::ApiError;
use crate::secret::{EnvSource, Secret};
use crate::telemetry::names;

/// How often the token file is checked.
pub const POLL: Duration = Duration::from_millis(500);
/// Token files larger than this are refused (a token list, not a data set).
const MAX_FILE: u64 = 1024 * 1024;

/// Tokens in a token file: one per line, trimmed; blank lines and `#` comments skipped;
/// duplicates dropped (first kept).
pub fn parse_tokens(text: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for line in text.lines() {
        let t = line.trim();
        if t.is_empty() || t.starts_with('#') || out.iter().any(|o| o == t) {
            continue;
        }
        out.push(t.to_owned());
    }
    out
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Origin {
    Inline,
    File,
    Config,
}

struct Member {
    cred: Arc<Credential>,
    origin: Origin,
    /// For token members: the token's fingerprint, to carry state across file reloads.
    fingerprint: Option<String>,
    disabled: AtomicBool,
    /// Milliseconds since the pool's epoch until which the member cools down; 0 = none.
    cooldown_until: AtomicU64,
    in_flight: Arc<AtomicUsize>,
    served: AtomicU64,
    last_error: Mutex<Option<String>>,
    /// Requests whose 401 counts against this member since its last success (at most
    /// [`STRIKES_TO_DISABLE`]); `has_strikes` lets a success skip the lock.
    strikes: Mutex<Vec<u64>>,
    has_strikes: AtomicBool,
    /// The last 429 without account evidence: when (pool ms) and from which tenant.
    last_429: Mutex<Option<(u64, u64)>>,
}

impl Member {
    fn new(cred: Arc<Credential>, origin: Origin, fingerprint: Option<String>) -> Member {
        Member {
            cred,
            origin,
            fingerprint,
            disabled: AtomicBool::new(false),
            cooldown_until: AtomicU64::new(0),
            in_flight: Arc::new(AtomicUsize::new(0)),
            served: AtomicU64::new(0),
            last_error: Mutex::new(None),
            strikes: Mutex::new(Vec::new()),
            has_strikes: AtomicBool::new(false),
            last_429: Mutex::new(None),
        }
    }

    /// A success: earlier 401s no longer count.
    fn succeeded(&self) {
        if self.has_strikes.swap(false, Ordering::AcqRel) {
            if let Ok(mut s) = self.strikes.lock() {
                s.clear();
            }
        }
    }

    /// Count a 401 from `request`; true once enough different requests had one.
    fn strike(&self, request: u64) -> bool {
        let Ok(mut s) = self.strikes.lock() else {
            return false;
        };
        if !s.contains(&request) {
            s.push(request);
        }
        self.has_strikes.store(true, Ordering::Release);
        s.len() >= STRIKES_TO_DISABLE
    }

    /// Note a 429 without account evidence from `tenant` at `now_ms`; true when another tenant
    /// had one from this member within the window.
    fn corroborated_429(&self, now_ms: u64, tenant: u64) -> bool {
        let Ok(mut last) = self.last_429.lock() else {
            return false;
        };
        let window = u64::try_from(WITNESS_WINDOW.as_millis()).unwrap_or(u64::MAX);
        let seen = last.is_some_and(|(at, t)| t != tenant && now_ms.saturating_sub(at) <= window);
        *last = Some((now_ms, tenant));
        seen
    }

    fn set_error(&self, msg: String) {
        if let Ok(mut e) = self.last_error.lock() {
            *e = Some(msg);
        }
    }
}

struct Members {
    version: u64,
    list: Vec<Arc<Member>>,
}

struct Inner {
    name: Arc<str>,
    placement: Arc<Placement>,
    selection: Selection,
    default_cooldown: Duration,
    file: Option<PathBuf>,
    members: ArcSwap<Members>,
    cursor: AtomicUsize,
    epoch: Instant,
}

pub struct Pool {
    inner: Arc<Inner>,
    task: OnceLock<TaskGuard>,
}

impl Pool {
    /// `proxy` is the gateway-wide egress proxy, for members that fetch tokens.
    pub fn from_config(
        name: &str,
        c: &PoolConfig,
        env: &dyn EnvSource,
        proxy: Option<&ProxyConfig>,
    ) -> Result<Pool, String> {
        let path = format!("credentials.{name}");
        let placement = Arc::new(c.placement.clone());
        let mut list = Vec::new();
        for (i, t) in c.tokens.iter().enumerate() {
            let secret = t
                .resolve(env)
                .map_err(|e| format!("{path}.tokens[{i}]: {e}"))?;
            list.push(token_member(name, &placement, secret, Origin::Inline));
        }
        if let Some(f) = &c.file {
            let text = read_file(f).map_err(|e| format!("{path}.file: {e}"))?;
            for t in parse_tokens(&text) {
                list.push(token_member(name, &placement, Secret::new(t), Origin::File));
            }
        }
        for (i, m) in c.members.iter().enumerate() {
            let cred = Credential::from_config(&format!("{name}[{i}]"), m, env, proxy)?;
            list.push(Arc::new(Member::new(Arc::new(cred), Origin::Config, None)));
        }
        let pool = Pool {
            inner: Arc::new(Inner {
                name: Arc::from(name),
                placement,
                selection: c.selection,
                default_cooldown: c.default_cooldown.0,
                file: c.file.as_ref().map(PathBuf::from),
                members: ArcSwap::from_pointee(Members { version: 1, list }),
                cursor: AtomicUsize::new(0),
                epoch: Instant::now(),
            }),
            task: OnceLock::new(),
        };
        if tokio::runtime::Handle::try_current().is_ok() {
            pool.ensure_started();
        }
        Ok(pool)
    }

    fn ensure_started(&self) {
        self.task
            .get_or_init(|| TaskGuard::spawn(watch(self.inner.clone())));
    }

    pub fn size(&self) -> usize {
        self.inner.members.load().list.len()
    }

    /// A lease from an available member, preferring those not in `avoid` (tried already by
    /// this request); when only avoided ones are left, one of them.
    pub async fn lease(&self, avoid: &[MemberRef]) -> Result<Lease, ApiError> {
        self.ensure_started();
        let inner = &self.inner;
        let members = inner.members.load_full();
        let n = members.list.len();
        if n == 0 {
            return Err(inner.unavailable("the pool has no tokens"));
        }
        let now = inner.now_ms();
        let available = |m: &Member| {
            !m.disabled.load(Ordering::Acquire) && m.cooldown_until.load(Ordering::Acquire) <= now
        };
        let start = inner.cursor.fetch_add(1, Ordering::Relaxed) % n;
        let mut order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        if inner.selection == Selection::LeastInFlight {
            // Stable sort: ties keep the rotating order.
            order.sort_by_key(|&i| members.list[i].in_flight.load(Ordering::Relaxed));
        }
        // Members that can lease without waiting first; a member still fetching its token is
        // waited for only when nobody else is ready.
        let avoided = |i: usize| {
            avoid.contains(&MemberRef {
                list_version: members.version,
                index: i,
            })
        };
        let (fresh, tried): (Vec<usize>, Vec<usize>) = order
            .into_iter()
            .filter(|&i| available(&members.list[i]))
            .partition(|&i| !avoided(i));
        let (ready, waiting): (Vec<usize>, Vec<usize>) = fresh
            .into_iter()
            .partition(|&i| members.list[i].cred.ready());
        for index in ready.into_iter().chain(waiting).chain(tried) {
            let m = &members.list[index];
            match m.cred.lease().await {
                Ok(mut l) => {
                    m.served.fetch_add(1, Ordering::Relaxed);
                    l.member = Some(MemberRef {
                        list_version: members.version,
                        index,
                    });
                    l.in_flight = Some(Arc::new(InFlight::new(m.in_flight.clone())));
                    return Ok(l);
                }
                Err(e) => m.set_error(e.to_string()),
            }
        }
        // Nobody available: 429 if someone recovers by waiting, else 503.
        let earliest = members
            .list
            .iter()
            .filter(|m| !m.disabled.load(Ordering::Acquire))
            .map(|m| m.cooldown_until.load(Ordering::Acquire))
            .filter(|&t| t > now)
            .min();
        if let Some(t) = earliest {
            return Err(ApiError::CredentialsRateLimited {
                message: format!(
                    "every upstream token of credential '{}' is rate limited",
                    inner.name
                ),
                retry_after_secs: (t - now).div_ceil(1000).max(1),
            });
        }
        if members
            .list
            .iter()
            .all(|m| m.disabled.load(Ordering::Acquire))
        {
            return Err(inner.unavailable("every token in the pool is disabled"));
        }
        Err(inner.unavailable("no pool member could supply a credential"))
    }

    pub fn report(&self, lease: &Lease, outcome: Outcome) -> Retry {
        let inner = &self.inner;
        let Some(r) = lease.member else {
            return Retry::No;
        };
        // A 403 is about the request (moderation, model access), not the member: nothing
        // changes and the client gets the answer.
        if outcome == Outcome::Forbidden {
            return Retry::No;
        }
        let members = inner.members.load();
        if members.version != r.list_version {
            // The list changed under this request; its member may be gone. Try another.
            return if outcome == Outcome::Ok {
                Retry::No
            } else {
                Retry::Rotated
            };
        }
        let Some(m) = members.list.get(r.index) else {
            return Retry::No;
        };
        let fp = m.fingerprint.clone().unwrap_or_else(|| m.cred.name.clone());
        match outcome {
            Outcome::Ok | Outcome::Forbidden => {
                m.succeeded();
                Retry::No
            }
            Outcome::RateLimited { after, account } => {
                metrics::counter!(names::CREDENTIAL_429_ROTATIONS,
                    "credential" => inner.name.to_string())
                .increment(1);
                let corroborated =
                    !account && m.corroborated_429(inner.now_ms(), lease.from.tenant);
                if !account && !corroborated {
                    // Maybe about this request only (its size, its content): it moves on to
                    // another member; the member stays in service for everyone else.
                    m.set_error("429: this request moved on; no cooldown without evidence".into());
                    return Retry::Rotated;
                }
                // Two tenants' 429s are weaker evidence than the account's own word: their
                // cooldown lasts at most the witness window.
                let cap = if account {
                    MAX_COOLDOWN
                } else {
                    WITNESS_WINDOW
                };
                let d = after.unwrap_or(inner.default_cooldown).min(cap);
                let until = inner.now_ms() + u64::try_from(d.as_millis()).unwrap_or(u64::MAX / 4);
                m.cooldown_until.fetch_max(until, Ordering::AcqRel);
                m.set_error(format!("429: cooling down for {}s", d.as_secs_f64()));
                let evidence = if account { "account" } else { "two tenants" };
                tracing::info!(credential = %inner.name, member = r.index, fingerprint = %fp,
                    cooldown_secs = d.as_secs_f64(), evidence, "pool member rate limited; rotating");
                Retry::Rotated
            }
            Outcome::Unauthorized if m.cred.renewable() => {
                // It renews itself in the background; this request moves on to another member.
                m.cred.report(lease, outcome);
                m.set_error("401: renewing".into());
                Retry::Rotated
            }
            Outcome::Unauthorized => {
                if !m.strike(lease.from.request) {
                    m.set_error("401: counted; disabled after 401s from 3 requests".into());
                    return Retry::Rotated;
                }
                if !m.disabled.swap(true, Ordering::AcqRel) {
                    tracing::warn!(credential = %inner.name, member = r.index, fingerprint = %fp,
                        status = 401, strikes = STRIKES_TO_DISABLE,
                        "pool member disabled until the file changes or an admin re-enables it");
                }
                m.set_error("401: disabled".into());
                Retry::Rotated
            }
        }
    }

    pub fn enable(&self, index: usize) -> Result<(), String> {
        let members = self.inner.members.load();
        let m = members
            .list
            .get(index)
            .ok_or_else(|| format!("pool '{}' has no member {index}", self.inner.name))?;
        m.disabled.store(false, Ordering::Release);
        m.cooldown_until.store(0, Ordering::Release);
        m.succeeded();
        tracing::info!(credential = %self.inner.name, member = index, "pool member re-enabled by admin");
        Ok(())
    }

    pub fn view(&self) -> View {
        let inner = &self.inner;
        let members = inner.members.load();
        let now = inner.now_ms();
        let views: Vec<View> = members
            .list
            .iter()
            .enumerate()
            .map(|(i, m)| {
                let mut v = m.cred.view();
                v.name = None;
                v.index = Some(i);
                let until = m.cooldown_until.load(Ordering::Acquire);
                if m.disabled.load(Ordering::Acquire) {
                    v.state = "disabled";
                } else if until > now {
                    v.state = "cooling_down";
                    v.cooling_down_until =
                        Some(super::unix_at(inner.epoch + Duration::from_millis(until)));
                }
                v.requests_served = m.served.load(Ordering::Relaxed);
                v.in_flight = Some(m.in_flight.load(Ordering::Relaxed));
                if let Ok(e) = m.last_error.lock() {
                    if e.is_some() {
                        v.last_error = e.clone();
                    }
                }
                v
            })
            .collect();
        let state = if views
            .iter()
            .any(|v| v.state == "valid" || v.state == "renewing")
        {
            "valid"
        } else if views.iter().any(|v| v.state == "cooling_down") {
            "cooling_down"
        } else {
            "disabled"
        };
        View {
            kind: "pool",
            state,
            requests_served: views.iter().map(|v| v.requests_served).sum(),
            members: views,
            ..View::default()
        }
    }
}

impl Inner {
    fn now_ms(&self) -> u64 {
        // +1 so that 0 keeps meaning "no cooldown".
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX / 2) + 1
    }

    fn unavailable(&self, why: &str) -> ApiError {
        ApiError::CredentialUnavailable {
            message: format!("credential '{}': {why}", self.name),
            retry_after_secs: 30,
        }
    }

    /// Swap in a member list built from new file contents.
    fn reload(&self, tokens: Vec<String>) {
        let old = self.members.load_full();
        let mut list: Vec<Arc<Member>> = Vec::new();
        for m in old.list.iter().filter(|m| m.origin == Origin::Inline) {
            list.push(m.clone());
        }
        for t in tokens {
            let secret = Secret::new(t);
            let fp = secret.fingerprint();
            let kept = old.list.iter().find(|m| {
                m.origin == Origin::File && m.fingerprint.as_deref() == Some(fp.as_str())
            });
            match kept {
                Some(m) => list.push(m.clone()),
                None => list.push(token_member(
                    &self.name,
                    &self.placement,
                    secret,
                    Origin::File,
                )),
            }
        }
        for m in old.list.iter().filter(|m| m.origin == Origin::Config) {
            list.push(m.clone());
        }
        for m in &list {
            m.disabled.store(false, Ordering::Release);
            m.succeeded();
        }
        let n = list.len();
        self.members.store(Arc::new(Members {
            version: old.version + 1,
            list,
        }));
        tracing::info!(credential = %self.name, members = n, "token file changed: pool reloaded");
    }

    fn publish_gauges(&self) {
        let members = self.members.load();
        let now = self.now_ms();
        let (mut ok, mut cooling, mut disabled) = (0u32, 0u32, 0u32);
        for m in &members.list {
            if m.disabled.load(Ordering::Acquire) {
                disabled += 1;
            } else if m.cooldown_until.load(Ordering::Acquire) > now {
                cooling += 1;
            } else {
                ok += 1;
            }
        }
        for (state, n) in [
            ("valid", ok),
            ("cooling_down", cooling),
            ("disabled", disabled),
        ] {
            metrics::gauge!(names::CREDENTIAL_POOL_MEMBERS,
                "credential" => self.name.to_string(), "state" => state)
            .set(f64::from(n));
        }
    }
}

fn token_member(
    pool: &str,
    placement: &Arc<Placement>,
    secret: Secret,
    origin: Origin,
) -> Arc<Member> {
    let fp = secret.fingerprint();
    let cred = Credential::static_key(format!("{pool}:{fp}"), placement.clone(), secret);
    Arc::new(Member::new(Arc::new(cred), origin, Some(fp)))
}

fn read_file(path: &str) -> Result<String, String> {
    let meta = std::fs::metadata(path).map_err(|e| format!("cannot read {path}: {e}"))?;
    if meta.len() > MAX_FILE {
        return Err(format!("{path} is larger than {MAX_FILE} bytes"));
    }
    std::fs::read_to_string(path).map_err(|e| format!("cannot read {path}: {e}"))
}

/// Poll the token file and refresh the gauges until the pool is dropped.
async fn watch(inner: Arc<Inner>) {
    let mut last: Option<Vec<String>> = match &inner.file {
        Some(f) => tokio::fs::read_to_string(f)
            .await
            .ok()
            .map(|t| parse_tokens(&t)),
        None => None,
    };
    let mut warned = false;
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        inner.publish_gauges();
        let Some(f) = &inner.file else { continue };
        let f = f.clone();
        let read = tokio::task::spawn_blocking(move || read_file(&f.to_string_lossy())).await;
        match read {
            Ok(Ok(text)) => {
                warned = false;
                let tokens = parse_tokens(&text);
                if last.as_ref() != Some(&tokens) {
                    inner.reload(tokens.clone());
                    last = Some(tokens);
                }
            }
            Ok(Err(e)) if !warned => {
                warned = true;
                tracing::warn!(credential = %inner.name, error = %e,
                    "token file unreadable; keeping the current tokens");
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;
    use crate::secret::SecretRef;
    use std::collections::HashMap;

    fn pool(tokens: &[&str], selection: Selection) -> Pool {
        let cfg = PoolConfig {
            tokens: tokens.iter().map(|t| SecretRef::literal(*t)).collect(),
            file: None,
            members: vec![],
            placement: Placement::Bearer,
            selection,
            default_cooldown: Dur(Duration::from_secs(30)),
        };
        match Pool::from_config("p", &cfg, &HashMap::new(), None) {
            Ok(p) => p,
            Err(e) => panic!("{e}"),
        }
    }

    async fn lease(p: &Pool) -> Lease {
        match p.lease(&[]).await {
            Ok(l) => l,
            Err(e) => panic!("{e}"),
        }
    }

    #[test]
    fn token_file_parsing() {
        let t = parse_tokens("  a \n\n# comment\nb\n   # indented comment\na\n\tc\t\n");
        assert_eq!(t, ["a", "b", "c"]);
    }

    #[tokio::test(start_paused = true)]
    async fn round_robin_cooldown_and_disable() {
        let p = pool(&["a", "b", "c"], Selection::RoundRobin);
        let mut seen = Vec::new();
        for _ in 0..6 {
            seen.push(lease(&p).await.value.expose().to_owned());
        }
        assert_eq!(seen, ["a", "b", "c", "a", "b", "c"]);
        // a answers 429 with Retry-After 3: skipped for 3 s.
        let la = lease(&p).await;
        assert_eq!(la.value.expose(), "a");
        assert_eq!(p.report(&la, limited(3, true)), Retry::Rotated);
        for _ in 0..10 {
            assert_ne!(lease(&p).await.value.expose(), "a");
        }
        tokio::time::sleep(Duration::from_secs(3)).await;
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(lease(&p).await.value.expose().to_owned());
        }
        assert!(got.iter().any(|t| t == "a"), "{got:?}");
        // b answers 401 to three different requests: never used again.
        for request in 1..=3 {
            let mut lb = lease_of(&p, "b").await;
            lb.from.request = request;
            assert_eq!(p.report(&lb, Outcome::Unauthorized), Retry::Rotated);
            let state = p.view().members[1].state;
            assert_eq!(
                state == "disabled",
                request == 3,
                "after {request}: {state}"
            );
        }
        for _ in 0..10 {
            assert_ne!(lease(&p).await.value.expose(), "b");
        }
        assert_eq!(p.view().members[1].state, "disabled");
        assert!(p.enable(1).is_ok());
        let mut got = Vec::new();
        for _ in 0..3 {
            got.push(lease(&p).await.value.expose().to_owned());
        }
        assert!(got.iter().any(|t| t == "b"), "{got:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn all_cooling_is_429_with_earliest_recovery_and_all_disabled_is_503() {
        let p = pool(&["a", "b"], Selection::RoundRobin);
        let la = lease(&p).await;
        let lb = lease(&p).await;
        p.report(&la, limited(7, true));
        p.report(&lb, limited(4, true));
        match p.lease(&[]).await {
            Err(ApiError::CredentialsRateLimited {
                retry_after_secs, ..
            }) => assert_eq!(retry_after_secs, 4),
            other => panic!("{other:?}"),
        }
        for (l, request) in [(&la, 1), (&la, 2), (&la, 3), (&lb, 4), (&lb, 5), (&lb, 6)] {
            let mut l = l.clone();
            l.from.request = request;
            p.report(&l, Outcome::Unauthorized);
        }
        match p.lease(&[]).await {
            Err(e @ ApiError::CredentialUnavailable { .. }) => {
                assert_eq!(e.status().as_u16(), 503);
                assert!(e.to_string().contains("disabled"), "{e}");
            }
            other => panic!("{other:?}"),
        }
    }

    fn limited(secs: u64, account: bool) -> Outcome {
        Outcome::RateLimited {
            after: Some(Duration::from_secs(secs)),
            account,
        }
    }

    async fn lease_of(p: &Pool, token: &str) -> Lease {
        for _ in 0..100 {
            let l = lease(p).await;
            if l.value.expose() == token {
                return l;
            }
        }
        panic!("{token} never leased");
    }

    #[tokio::test(start_paused = true)]
    async fn one_requests_answer_does_not_take_a_member_from_others() {
        let p = pool(&["a", "b"], Selection::RoundRobin);
        let state = |i: usize| p.view().members[i].state;
        // A 403 is about the request: no rotation, nothing changes.
        let la = lease_of(&p, "a").await;
        assert_eq!(p.report(&la, Outcome::Forbidden), Retry::No);
        assert_eq!(state(0), "valid");
        // A 429 without evidence: this request moves on, the member stays in service; the same
        // tenant again changes nothing either.
        let mut la = lease_of(&p, "a").await;
        la.from.tenant = 1;
        assert_eq!(p.report(&la, limited(60, false)), Retry::Rotated);
        assert_eq!(p.report(&la, limited(60, false)), Retry::Rotated);
        assert_eq!(state(0), "valid");
        // Another tenant's 429 within the window corroborates it: cooled, for at most
        // WITNESS_WINDOW whatever the Retry-After said (the account's own word: MAX_COOLDOWN).
        la.from.tenant = 2;
        p.report(&la, limited(86_400, false));
        assert_eq!(state(0), "cooling_down");
        tokio::time::sleep(WITNESS_WINDOW + Duration::from_secs(1)).await;
        assert_eq!(state(0), "valid");
        // 401s: the same request three times is one strike; a success in between resets.
        let mut lb = lease_of(&p, "b").await;
        for _ in 0..3 {
            lb.from.request = 7;
            p.report(&lb, Outcome::Unauthorized);
        }
        lb.from.request = 8;
        p.report(&lb, Outcome::Unauthorized);
        p.report(&lb, Outcome::Ok);
        lb.from.request = 9;
        p.report(&lb, Outcome::Unauthorized);
        assert_eq!(state(1), "valid");
        lb.from.request = 10;
        p.report(&lb, Outcome::Unauthorized);
        lb.from.request = 11;
        p.report(&lb, Outcome::Unauthorized);
        assert_eq!(state(1), "disabled");
    }

    #[tokio::test(start_paused = true)]
    async fn least_in_flight_prefers_idle_members() {
        let p = pool(&["a", "b", "c"], Selection::LeastInFlight);
        let l1 = lease(&p).await;
        let l2 = lease(&p).await;
        let l3 = lease(&p).await;
        let mut v: Vec<_> = [&l1, &l2, &l3]
            .iter()
            .map(|l| l.value.expose().to_owned())
            .collect();
        v.sort();
        assert_eq!(v, ["a", "b", "c"]);
        drop(l2);
        let l4 = lease(&p).await;
        assert_eq!(l4.value.expose(), "b");
    }
}
