//! The in-process backend: exact and fastest, for one instance.
//!
//! State is a sharded map (`DashMap`) from key id / team name to an entry behind its own mutex;
//! the map's shard lock is held only to find or insert an entry. An admission locks its key's
//! entry, then its team's (always in that order, so two admissions cannot deadlock), checks every
//! limit, and only if all pass writes them: check and increment are one step. No lock is held
//! across an `.await` (there is none here) and there is no process-wide lock.
//!
//! Times come from `tokio::time::Instant`, so tests can run on a paused clock. Spend survives a
//! restart through `limits.state_file`: a small JSON file rewritten atomically (write, then
//! rename) every `state_flush_interval` when spend changed, and by [`Memory::save`] on shutdown.
//! Rate and concurrency state is not persisted: after a restart every limit starts full.
//!
//! The maps are bounded by eviction: every `SWEEP_EVERY` a sweep removes the entries at rest (no
//! request in flight, no reservation, rate limits full again, no spend in a current period), so
//! a stream of short-lived keys (store keys created and revoked, say) does not grow the process.
//! An evicted entry is marked under its own lock; an admission or settlement that found it just
//! before it went looks it up again, so nothing is charged to an entry nobody can see.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use dashmap::DashMap;
use serde::{Deserialize, Serialize};

use super::gcra::{self, Verdict};
use super::{
    budget, AdmitRequest, Decision, LimitKind, RateHeaders, RateInfo, Scope, SettleRequest,
};

#[derive(Debug, Default)]
struct Entry {
    rpm_tat: f64,
    tpm_tat: f64,
    concurrent: u64,
    /// Nano-dollars reserved by admitted requests not yet settled.
    reserved: u64,
    /// The spend counter's period tag and value.
    spend_tag: String,
    spend: u64,
    /// Removed from its map by a sweep: look the id up again.
    evicted: bool,
}

/// How often idle entries are swept out of the maps.
const SWEEP_EVERY: Duration = Duration::from_secs(60);

impl Entry {
    fn spend_in(&self, tag: &str) -> u64 {
        if self.spend_tag == tag {
            self.spend
        } else {
            0
        }
    }
}

type Shared = Arc<Mutex<Entry>>;

pub struct Memory {
    keys: DashMap<Arc<str>, Shared>,
    teams: DashMap<Arc<str>, Shared>,
    epoch: tokio::time::Instant,
    state_file: Option<PathBuf>,
    /// Spend changed since the state file was last written.
    dirty: AtomicBool,
}

/// The state file's contents.
#[derive(Debug, Default, Serialize, Deserialize)]
struct StateFile {
    version: u32,
    keys: BTreeMap<String, SpendRecord>,
    teams: BTreeMap<String, SpendRecord>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SpendRecord {
    period: String,
    nanos: u64,
}

fn lock(e: &Shared) -> MutexGuard<'_, Entry> {
    e.lock().unwrap_or_else(|p| p.into_inner())
}

impl Memory {
    /// Open, reading spend from `state_file` if it exists, and start the periodic flusher when
    /// running inside a Tokio runtime.
    pub fn open(state_file: Option<PathBuf>, flush_every: Duration) -> Result<Arc<Memory>, String> {
        let m = Arc::new(Memory {
            keys: DashMap::new(),
            teams: DashMap::new(),
            epoch: tokio::time::Instant::now(),
            state_file,
            dirty: AtomicBool::new(false),
        });
        if let Some(path) = &m.state_file {
            match std::fs::read(path) {
                Ok(bytes) => {
                    let file: StateFile = serde_json::from_slice(&bytes).map_err(|e| {
                        format!("limits.state_file {}: unreadable: {e}", path.display())
                    })?;
                    for (map, records) in [(&m.keys, file.keys), (&m.teams, file.teams)] {
                        for (id, r) in records {
                            let e = Entry {
                                spend_tag: r.period,
                                spend: r.nanos,
                                ..Entry::default()
                            };
                            map.insert(Arc::from(id), Arc::new(Mutex::new(e)));
                        }
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => {
                    return Err(format!(
                        "limits.state_file {}: cannot read: {e}",
                        path.display()
                    ))
                }
            }
            if let Ok(rt) = tokio::runtime::Handle::try_current() {
                rt.spawn(flusher(Arc::downgrade(&m), flush_every));
            }
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(sweeper(Arc::downgrade(&m)));
        }
        Ok(m)
    }

    fn map(&self, scope: Scope) -> &DashMap<Arc<str>, Shared> {
        match scope {
            Scope::Key => &self.keys,
            Scope::Team => &self.teams,
        }
    }

    fn entry(&self, scope: Scope, id: &Arc<str>) -> Shared {
        let map = self.map(scope);
        if let Some(e) = map.get(id.as_ref()) {
            return e.clone();
        }
        map.entry(id.clone()).or_default().clone()
    }

    /// Entries in the maps (keys, teams).
    pub fn len(&self) -> (usize, usize) {
        (self.keys.len(), self.teams.len())
    }

    /// Remove the entries at rest: nothing in flight or reserved, both rates full again, and no
    /// spend in the current day, month or all-time counter. Returns how many went.
    pub fn sweep(&self) -> usize {
        let now = self.now_us();
        let t = budget::unix_now();
        let current = [
            budget::period_tag(crate::config::BudgetPeriod::Daily, t),
            budget::period_tag(crate::config::BudgetPeriod::Monthly, t),
            budget::period_tag(crate::config::BudgetPeriod::None, t),
        ];
        let mut removed = 0;
        for map in [&self.keys, &self.teams] {
            map.retain(|_, e| {
                let mut e = lock(e);
                let at_rest = e.concurrent == 0
                    && e.reserved == 0
                    && e.rpm_tat <= now
                    && e.tpm_tat <= now
                    && (e.spend == 0 || !current.contains(&e.spend_tag));
                if at_rest {
                    e.evicted = true;
                    removed += 1;
                }
                !at_rest
            });
        }
        if removed > 0 {
            self.dirty.store(true, Ordering::Relaxed);
        }
        removed
    }

    fn now_us(&self) -> f64 {
        self.epoch.elapsed().as_secs_f64() * 1e6 + 1.0
    }

    /// Check every limit of every scope and, only if all pass, charge them.
    pub(crate) fn admit(&self, req: &AdmitRequest) -> Decision {
        let entries: Vec<Shared> = req
            .scopes
            .iter()
            .map(|s| self.entry(s.scope, &s.id))
            .collect();
        // Key first, then team: the order every admission uses. A sweep between the lookup and
        // these locks may have evicted an idle entry: look again.
        let mut guards: Vec<MutexGuard<'_, Entry>> = entries.iter().map(lock).collect();
        if guards.iter().any(|g| g.evicted) {
            drop(guards);
            return self.admit(req);
        }
        let now = self.now_us();
        let mut headers = RateHeaders::default();
        let mut denied: Option<(Scope, LimitKind, Option<Duration>)> = None;
        let mut writes: Vec<(Option<f64>, Option<f64>)> = Vec::with_capacity(guards.len());
        for (s, e) in req.scopes.iter().zip(guards.iter()) {
            let mut deny = |kind, retry: Option<Duration>| {
                if denied.is_none() {
                    denied = Some((s.scope, kind, retry));
                }
            };
            if let Some(b) = s.budget_nanos {
                use super::budget::{admits, Verdict, HELD_RETRY};
                match admits(b, e.spend_in(&s.period_tag), e.reserved, req.cost_nanos) {
                    Verdict::Admit => {}
                    Verdict::Held => deny(LimitKind::Budget, Some(HELD_RETRY)),
                    Verdict::Spent => deny(LimitKind::Budget, None),
                }
            }
            let mut w = (None, None);
            if let Some(rpm) = s.limits.requests_per_minute {
                let (tat, info, retry) = rate(e.rpm_tat, now, 1, rpm);
                headers.add_requests(info);
                match tat {
                    Some(t) => w.0 = Some(t),
                    None => deny(LimitKind::Rpm, retry),
                }
            }
            if let Some(tpm) = s.limits.tokens_per_minute {
                let (tat, info, retry) = rate(e.tpm_tat, now, req.tokens, tpm);
                headers.add_tokens(info);
                match tat {
                    Some(t) => w.1 = Some(t),
                    None => deny(LimitKind::Tpm, retry),
                }
            }
            if let Some(c) = s.limits.max_concurrent {
                if e.concurrent >= c {
                    deny(LimitKind::Concurrency, Some(Duration::from_secs(1)));
                }
            }
            writes.push(w);
        }
        if let Some((scope, limit, retry_after)) = denied {
            return Decision::Deny {
                scope,
                limit,
                retry_after,
                headers,
            };
        }
        for ((s, e), (rpm, tpm)) in req.scopes.iter().zip(guards.iter_mut()).zip(writes) {
            if let Some(t) = rpm {
                e.rpm_tat = t;
            }
            if let Some(t) = tpm {
                e.tpm_tat = t;
            }
            if s.limits.max_concurrent.is_some() || s.budget_nanos.is_some() {
                e.concurrent += 1;
            }
            if s.budget_nanos.is_some() {
                e.reserved += req.cost_nanos;
            }
        }
        Decision::Admit(headers)
    }

    /// Release what the admission held, add the real cost, correct the token limit.
    pub(crate) fn settle(&self, req: &SettleRequest) {
        let tag_now = budget::unix_now();
        for s in &req.scopes {
            // Checked under the entry's own lock: a sweep that evicted it between the lookup
            // and the lock sends us to look it up again.
            loop {
                let entry = self.entry(s.scope, &s.id);
                let mut e = lock(&entry);
                if e.evicted {
                    continue;
                }
                if s.leased {
                    e.concurrent = e.concurrent.saturating_sub(1);
                    e.reserved = e.reserved.saturating_sub(s.reserved);
                }
                if let Some(tpm) = s.tpm {
                    if req.token_delta != 0 {
                        let now = self.now_us();
                        e.tpm_tat = gcra::adjust(e.tpm_tat, now, req.token_delta, tpm);
                    }
                }
                if req.cost_nanos > 0 {
                    let tag = budget::period_tag(s.period, tag_now);
                    if e.spend_tag != tag {
                        e.spend_tag = tag;
                        e.spend = 0;
                    }
                    e.spend = e.spend.saturating_add(req.cost_nanos);
                    self.dirty.store(true, Ordering::Relaxed);
                }
                break;
            }
        }
    }

    /// Spend of `id` in the period `tag`, nano-dollars.
    pub fn spend(&self, scope: Scope, id: &str, tag: &str) -> u64 {
        self.map(scope)
            .get(id)
            .map(|e| lock(&e).spend_in(tag))
            .unwrap_or(0)
    }

    /// Write the state file now (write to a temporary file, then rename over the old one).
    pub fn save(&self) -> Result<(), String> {
        let Some(path) = &self.state_file else {
            return Ok(());
        };
        self.dirty.store(false, Ordering::Relaxed);
        let mut file = StateFile {
            version: 1,
            ..StateFile::default()
        };
        for (map, out) in [(&self.keys, &mut file.keys), (&self.teams, &mut file.teams)] {
            for item in map.iter() {
                let e = lock(item.value());
                if e.spend > 0 {
                    out.insert(
                        item.key().to_string(),
                        SpendRecord {
                            period: e.spend_tag.clone(),
                            nanos: e.spend,
                        },
                    );
                }
            }
        }
        let bytes = serde_json::to_vec_pretty(&file).map_err(|e| e.to_string())?;
        let tmp = path.with_extension("tmp");
        std::fs::write(&tmp, bytes)
            .and_then(|()| std::fs::rename(&tmp, path))
            .map_err(|e| {
                self.dirty.store(true, Ordering::Relaxed);
                format!("limits.state_file {}: cannot write: {e}", path.display())
            })
    }
}

/// One rate limit's check: the new TAT if admitted, the header values, the wait if refused.
fn rate(tat: f64, now: f64, cost: u64, limit: u64) -> (Option<f64>, RateInfo, Option<Duration>) {
    match gcra::check(tat, now, cost, limit) {
        Verdict::Admit {
            tat,
            remaining,
            reset_us,
        } => (Some(tat), info(limit, remaining, reset_us), None),
        Verdict::Deny {
            retry_us,
            remaining,
            reset_us,
        } => {
            let retry = retry_us
                .is_finite()
                .then(|| Duration::from_secs_f64(retry_us.max(0.0) / 1e6));
            (None, info(limit, remaining, reset_us), retry)
        }
    }
}

fn info(limit: u64, remaining: u64, reset_us: f64) -> RateInfo {
    RateInfo {
        limit,
        remaining,
        reset: Duration::from_secs_f64(reset_us.max(0.0) / 1e6),
    }
}

async fn sweeper(m: Weak<Memory>) {
    loop {
        tokio::time::sleep(SWEEP_EVERY).await;
        let Some(m) = m.upgrade() else { return };
        m.sweep();
    }
}

async fn flusher(m: Weak<Memory>, every: Duration) {
    loop {
        tokio::time::sleep(every).await;
        let Some(m) = m.upgrade() else { return };
        if m.dirty.load(Ordering::Relaxed) {
            let m2 = m.clone();
            let r = tokio::task::spawn_blocking(move || m2.save()).await;
            if let Ok(Err(e)) = r {
                tracing::warn!(error = %e, "limits state file not written");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::{Limits, ScopeCheck, ScopeSettle};
    use super::*;
    use crate::config::{BudgetConfig, BudgetPeriod};

    fn check(scope: Scope, id: &str, limits: Limits) -> ScopeCheck {
        ScopeCheck {
            scope,
            id: Arc::from(id),
            limits,
            budget_nanos: limits.budget.map(|b| (b.amount_usd * 1e9) as u64),
            period_tag: budget::period_tag(BudgetPeriod::Monthly, budget::unix_now()),
        }
    }

    fn req(scopes: Vec<ScopeCheck>, tokens: u64, cost: u64) -> AdmitRequest {
        AdmitRequest {
            lease_id: 1,
            scopes,
            tokens,
            cost_nanos: cost,
        }
    }

    fn admitted(d: &Decision) -> bool {
        matches!(d, Decision::Admit(_))
    }

    #[tokio::test(start_paused = true)]
    async fn rpm_at_the_minute_boundary_on_a_paused_clock() {
        let Ok(m) = Memory::open(None, Duration::from_secs(5)) else {
            panic!("open")
        };
        let limits = Limits {
            requests_per_minute: Some(60),
            ..Limits::default()
        };
        let r = req(vec![check(Scope::Team, "t", limits)], 1, 0);
        tokio::time::advance(Duration::from_millis(59_900)).await;
        let first = (0..100).filter(|_| admitted(&m.admit(&r))).count();
        tokio::time::advance(Duration::from_millis(200)).await;
        let second = (0..100).filter(|_| admitted(&m.admit(&r))).count();
        assert_eq!(first, 60);
        // 0.2 s at one per second: nothing yet, not another 60.
        assert_eq!(second, 0);
        tokio::time::advance(Duration::from_millis(1000)).await;
        assert_eq!((0..100).filter(|_| admitted(&m.admit(&r))).count(), 1);
        tokio::time::advance(Duration::from_secs(60)).await;
        assert_eq!((0..100).filter(|_| admitted(&m.admit(&r))).count(), 60);
    }

    #[tokio::test(start_paused = true)]
    async fn a_refusal_by_the_team_charges_nothing_to_the_key() {
        let Ok(m) = Memory::open(None, Duration::from_secs(5)) else {
            panic!("open")
        };
        let key = Limits {
            requests_per_minute: Some(10),
            ..Limits::default()
        };
        let team = Limits {
            requests_per_minute: Some(3),
            ..Limits::default()
        };
        let r = req(
            vec![check(Scope::Key, "k", key), check(Scope::Team, "t", team)],
            1,
            0,
        );
        let n = (0..10).filter(|_| admitted(&m.admit(&r))).count();
        assert_eq!(n, 3);
        match m.admit(&r) {
            Decision::Deny {
                scope,
                limit,
                headers,
                ..
            } => {
                assert_eq!((scope, limit), (Scope::Team, LimitKind::Rpm));
                assert_eq!(
                    headers.requests.map(|i| (i.limit, i.remaining)),
                    Some((3, 0))
                );
            }
            d => panic!("{d:?}"),
        }
        // The key was charged 3, not 10: 7 remain.
        let r = req(vec![check(Scope::Key, "k", key)], 1, 0);
        assert_eq!((0..10).filter(|_| admitted(&m.admit(&r))).count(), 7);
    }

    #[tokio::test]
    async fn budget_reservations_are_exact_and_released_on_settle() {
        let Ok(m) = Memory::open(None, Duration::from_secs(5)) else {
            panic!("open")
        };
        let team = Limits {
            budget: Some(BudgetConfig {
                amount_usd: 5.5e-6,
                period: BudgetPeriod::Monthly,
            }),
            ..Limits::default()
        };
        let r = req(vec![check(Scope::Team, "t", team)], 10, 1000);
        assert_eq!((0..50).filter(|_| admitted(&m.admit(&r))).count(), 5);
        let settle = |cost| SettleRequest {
            lease_id: 1,
            scopes: vec![ScopeSettle {
                scope: Scope::Team,
                id: Arc::from("t"),
                tpm: None,
                leased: true,
                reserved: 1000,
                period: BudgetPeriod::Monthly,
            }],
            token_delta: 0,
            cost_nanos: cost,
        };
        // Two finish having cost less than estimated: 5500 - 800 spent - 3000 reserved leaves
        // room for one more estimate of 1000.
        m.settle(&settle(400));
        m.settle(&settle(400));
        assert_eq!((0..50).filter(|_| admitted(&m.admit(&r))).count(), 1);
        let tag = budget::period_tag(BudgetPeriod::Monthly, budget::unix_now());
        assert_eq!(m.spend(Scope::Team, "t", &tag), 800);
    }

    #[tokio::test]
    async fn concurrency_slots_come_back_on_settle() {
        let Ok(m) = Memory::open(None, Duration::from_secs(5)) else {
            panic!("open")
        };
        let key = Limits {
            max_concurrent: Some(2),
            ..Limits::default()
        };
        let r = req(vec![check(Scope::Key, "k", key)], 1, 0);
        assert_eq!((0..5).filter(|_| admitted(&m.admit(&r))).count(), 2);
        m.settle(&SettleRequest {
            lease_id: 1,
            scopes: vec![ScopeSettle {
                scope: Scope::Key,
                id: Arc::from("k"),
                tpm: None,
                leased: true,
                reserved: 0,
                period: BudgetPeriod::Monthly,
            }],
            token_delta: 0,
            cost_nanos: 0,
        });
        assert_eq!((0..5).filter(|_| admitted(&m.admit(&r))).count(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn idle_entries_are_swept_and_busy_ones_stay() {
        let Ok(m) = Memory::open(None, Duration::from_secs(5)) else {
            panic!("open")
        };
        let limits = Limits {
            requests_per_minute: Some(60),
            max_concurrent: Some(5),
            ..Limits::default()
        };
        for i in 0..1000 {
            let r = req(vec![check(Scope::Key, &format!("k{i}"), limits)], 1, 0);
            assert!(admitted(&m.admit(&r)));
            if i > 0 {
                m.settle(&SettleRequest {
                    lease_id: 1,
                    scopes: vec![ScopeSettle {
                        scope: Scope::Key,
                        id: Arc::from(format!("k{i}")),
                        tpm: None,
                        leased: true,
                        reserved: 0,
                        period: BudgetPeriod::Monthly,
                    }],
                    token_delta: 0,
                    cost_nanos: 0,
                });
            }
        }
        assert_eq!(m.len(), (1000, 0));
        // Their rate limits are not full again yet: nothing goes.
        assert_eq!(m.sweep(), 0);
        tokio::time::advance(Duration::from_secs(61)).await;
        // All but k0, which still holds a concurrency slot.
        assert_eq!(m.sweep(), 999);
        assert_eq!(m.len(), (1, 0));
        let r = req(vec![check(Scope::Key, "k0", limits)], 1, 0);
        for _ in 0..4 {
            assert!(admitted(&m.admit(&r)));
        }
        // The slot k0 held survived the sweep: the sixth is refused.
        assert!(!admitted(&m.admit(&r)));
    }

    #[tokio::test]
    async fn state_file_round_trip() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("limits.json");
        let m = Memory::open(Some(path.clone()), Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("{e}"));
        m.settle(&SettleRequest {
            lease_id: 1,
            scopes: vec![ScopeSettle {
                scope: Scope::Team,
                id: Arc::from("t"),
                tpm: None,
                leased: false,
                reserved: 0,
                period: BudgetPeriod::Daily,
            }],
            token_delta: 0,
            cost_nanos: 1234,
        });
        m.save().unwrap_or_else(|e| panic!("{e}"));
        let m2 =
            Memory::open(Some(path), Duration::from_secs(60)).unwrap_or_else(|e| panic!("{e}"));
        let tag = budget::period_tag(BudgetPeriod::Daily, budget::unix_now());
        assert_eq!(m2.spend(Scope::Team, "t", &tag), 1234);
    }
}
