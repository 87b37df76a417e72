//! The response cache: exact-match answers for repeated requests, in up to three tiers (memory,
//! Redis, disk), with single flight for identical requests in flight at once.
//!
//! Owns the key ([`key`]), the entry and its byte form ([`entry`]), the tiers, the lookup order
//! (memory → Redis → disk; a hit in a lower tier fills the ones above), the fill of a missed
//! answer (memory at once, disk and Redis through a bounded queue to one writer task: a full
//! queue drops the write and counts it), single flight ([`flight`]), purges and statistics.
//!
//! It does not read HTTP bodies, relay, account or answer clients: the proxy calls
//! [`Cache::look_up`] as one step of the request path, serves a [`Hit`], and hands the relay a
//! [`Fill`] that it completes only for a whole, successful answer. Failure policy: the cache
//! never fails a request. A tier that cannot answer (Redis down or slower than
//! `cache.redis_timeout`, a disk error, a corrupt entry) is a miss; a write that cannot be made
//! is dropped. It must not use `proxy`, `state` or `admin`.

mod disk;
pub mod entry;
mod fill;
mod flight;
pub mod key;
mod redis;
mod stats;
mod writer;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use http::HeaderMap;
use metrics::Gauge;
use tokio::sync::mpsc;

use crate::config::{CacheStoreConfig, Config, ModelCacheConfig, Qualify, TeamCacheConfig, Tier};
use crate::openai::{Body, Endpoint};
use crate::secret::EnvSource;
pub use entry::{Entry, Form};
pub use fill::{Capture, Event, Fill};
pub use key::Key;
use stats::{tier_index, Stats, FLIGHT};
use writer::{writer, Write};

/// What the cache did for a request (`x-tollgate-cache`, the log line, metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Status {
    Hit,
    Miss,
    /// Not looked up nor written: the client said `no-store`, the team opted out, or the
    /// request does not qualify.
    Bypass,
    /// Not looked up, written: the client said `no-cache`.
    Refresh,
}

impl Status {
    pub fn label(self) -> &'static str {
        match self {
            Status::Hit => "hit",
            Status::Miss => "miss",
            Status::Bypass => "bypass",
            Status::Refresh => "refresh",
        }
    }
}

/// What a client asked of the cache: `Cache-Control` and `x-tollgate-cache` (same syntax, for
/// SDKs that cannot set `Cache-Control`), both read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Directives {
    pub no_cache: bool,
    pub no_store: bool,
    pub max_age: Option<u64>,
}

/// The header SDKs can set in place of `Cache-Control`.
pub const X_CACHE: http::HeaderName = http::HeaderName::from_static("x-tollgate-cache");
/// The tier a hit came from.
pub const X_CACHE_TIER: http::HeaderName = http::HeaderName::from_static("x-tollgate-cache-tier");

impl Directives {
    pub fn read(headers: &HeaderMap) -> Directives {
        let mut d = Directives::default();
        let values = headers
            .get_all(http::header::CACHE_CONTROL)
            .iter()
            .chain(headers.get_all(X_CACHE).iter());
        for v in values {
            let Ok(v) = v.to_str() else { continue };
            for token in v.split(',').map(str::trim) {
                let lower = token.to_ascii_lowercase();
                match lower.as_str() {
                    "no-cache" => d.no_cache = true,
                    "no-store" => d.no_store = true,
                    _ => {
                        if let Some(n) = lower.strip_prefix("max-age=") {
                            if let Ok(n) = n.trim_matches('"').parse::<u64>() {
                                d.max_age = Some(d.max_age.map_or(n, |m| m.min(n)));
                            }
                        }
                    }
                }
            }
        }
        d
    }
}

/// The caches of every model, and the tiers they share.
pub struct Cache {
    models: HashMap<String, Arc<ModelCache>>,
    shared: Arc<Shared>,
}

/// What every model's cache shares: the writer queue, the disk and Redis tiers, the flights in
/// progress, counters. Kept over a reload that leaves `cache:` unchanged.
struct Shared {
    config: CacheStoreConfig,
    writes: Option<mpsc::Sender<Write>>,
    disk: Option<Arc<disk::Disk>>,
    redis: Option<Arc<redis::RedisTier>>,
    flights: flight::Flights,
    stats: Stats,
}

/// One model's cache: its config and its memory tier.
pub struct ModelCache {
    name: Arc<str>,
    config: ModelCacheConfig,
    upstream_models: Vec<String>,
    /// The upstreams (by name) whose answers are this model's: an answer from a fallback
    /// model's upstream is not written under this model's key.
    upstreams: Vec<String>,
    memory: Option<moka::sync::Cache<Key, Arc<Entry>>>,
    /// `tollgate_cache_bytes{tier="memory",model}`.
    memory_bytes: Gauge,
}

/// A request as the cache sees it (after shaping).
pub struct Request<'a> {
    pub endpoint: Endpoint,
    pub model: &'a str,
    pub team: &'a str,
    pub team_config: Option<&'a TeamCacheConfig>,
    pub stream: bool,
    pub body: &'a Body,
    pub directives: Directives,
}

/// The outcome of a lookup.
pub enum Lookup {
    /// The model has no cache: nothing is said.
    Off,
    Bypass,
    Hit(Hit),
    /// Not found (or `no-cache`): the answer is to be written through the fill.
    Miss(Fill),
    Refresh(Fill),
}

/// A cached answer for this request.
pub struct Hit {
    pub entry: Arc<Entry>,
    /// Where it came from: `memory`, `redis`, `disk` or `flight` (an identical request's answer).
    pub tier: &'static str,
}

impl Cache {
    /// Build from a config, keeping what `previous` had where its config did not change: the
    /// shared tiers and writer when `cache:` is the same, a model's memory tier when its cache
    /// config and upstream models are.
    pub fn from_config(
        config: &Config,
        env: &dyn EnvSource,
        previous: Option<&Cache>,
    ) -> Result<Cache, String> {
        let shared = match previous {
            Some(p) if p.shared.config == config.cache => p.shared.clone(),
            _ => Arc::new(Shared::new(config, env)?),
        };
        let mut models = HashMap::new();
        for (name, m) in &config.models {
            let Some(c) = &m.cache else { continue };
            let upstreams: Vec<String> = m.targets.iter().map(|t| t.upstream.clone()).collect();
            let upstream_models: Vec<String> = m
                .targets
                .iter()
                .map(|t| {
                    config
                        .upstreams
                        .get(&t.upstream)
                        .and_then(|u| u.model.clone())
                        .unwrap_or_else(|| name.clone())
                })
                .collect();
            let kept = previous
                .and_then(|p| p.models.get(name))
                .filter(|old| {
                    old.config == *c
                        && old.upstream_models == upstream_models
                        && old.upstreams == upstreams
                })
                .cloned();
            let mc = match kept {
                Some(k) => k,
                None => Arc::new(ModelCache::new(name, c.clone(), upstream_models, upstreams)),
            };
            models.insert(name.clone(), mc);
        }
        Ok(Cache { models, shared })
    }

    /// Whether `model` has a cache (nothing else of the request is read when not).
    pub fn covers(&self, model: &str) -> bool {
        self.models.contains_key(model)
    }

    /// Look a request up: a hit, or a fill for its answer. Never an error.
    pub async fn look_up(&self, req: &Request<'_>) -> Lookup {
        let Some(model) = self.models.get(req.model) else {
            return Lookup::Off;
        };
        let Some(fill) = self.ticket(model, req) else {
            return Lookup::Bypass;
        };
        if req.directives.no_cache {
            return Lookup::Refresh(fill);
        }
        let fresh = Freshness::new(req.directives.max_age);
        if let Some(hit) = self.find(model, &fill.key, &fill.team, &fresh).await {
            return Lookup::Hit(hit);
        }
        if !model.config.single_flight.enabled {
            return Lookup::Miss(fill);
        }
        self.single_flight(model, fill, &fresh).await
    }

    /// The fill of a request that qualifies (its key, team and TTL); `None`: a bypass (the
    /// team opted out, the client said `no-store`, or the request does not qualify).
    fn ticket(&self, model: &Arc<ModelCache>, req: &Request<'_>) -> Option<Fill> {
        let team_cfg = req.team_config;
        let qualify = team_cfg
            .and_then(|t| t.qualify)
            .unwrap_or(model.config.qualify);
        if team_cfg.is_some_and(|t| !t.enabled)
            || req.directives.no_store
            || (qualify == Qualify::Deterministic && !key::deterministic(req.endpoint, req.body))
        {
            return None;
        }
        let shared = model.config.shared;
        let scope = key::Scope {
            endpoint: req.endpoint,
            model: req.model,
            upstream_models: &model.upstream_models,
            team: (!shared).then_some(req.team),
            stream: req.stream,
        };
        Some(Fill {
            model: model.clone(),
            shared: self.shared.clone(),
            key: key::key(&scope, req.body)?,
            team: Arc::from(if shared { "" } else { req.team }),
            ttl: team_cfg.and_then(|t| t.ttl).unwrap_or(model.config.ttl).0,
            stream: req.stream,
            leader: None,
        })
    }

    /// A miss with single flight: the first request of its key goes upstream (its fill leads
    /// the flight); the others wait for its answer, or go upstream themselves when it fails or
    /// `max_wait` passes.
    async fn single_flight(&self, model: &ModelCache, mut fill: Fill, fresh: &Freshness) -> Lookup {
        match self.shared.flights.join(fill.key) {
            flight::Joined::Leader(leader) => {
                // An identical request may have finished between the lookup and now.
                if let Some(hit) = model.memory_get(&fill.key, fresh) {
                    self.shared.stats.hit(0);
                    return Lookup::Hit(hit);
                }
                fill.leader = Some(leader);
                Lookup::Miss(fill)
            }
            flight::Joined::Follower(rx) => {
                match flight::wait(rx, model.config.single_flight.max_wait.0).await {
                    Some(entry) => {
                        self.shared.stats.hit(FLIGHT);
                        Lookup::Hit(Hit {
                            entry,
                            tier: "flight",
                        })
                    }
                    None => Lookup::Miss(fill),
                }
            }
        }
    }

    /// Memory, then Redis, then disk; a hit below fills the tiers above.
    async fn find(
        &self,
        model: &Arc<ModelCache>,
        key: &Key,
        team: &str,
        fresh: &Freshness,
    ) -> Option<Hit> {
        let stats = &self.shared.stats;
        if model.memory.is_some() {
            if let Some(hit) = model.memory_get(key, fresh) {
                stats.hit(0);
                return Some(hit);
            }
            stats.miss(0);
        }
        let tiers = &model.config.tiers;
        if let (true, Some(r)) = (tiers.contains(&Tier::Redis), &self.shared.redis) {
            match r.get(&model.name, team, key).await.filter(|e| fresh.ok(e)) {
                Some(e) => {
                    stats.hit(tier_index(Tier::Redis));
                    return Some(self.promoted(model, key, e, Tier::Redis));
                }
                None => stats.miss(tier_index(Tier::Redis)),
            }
        }
        if let (true, Some(d)) = (tiers.contains(&Tier::Disk), &self.shared.disk) {
            match d.get(key, &model.name).await {
                disk::Got::Entry(e) if fresh.ok(&e) => {
                    stats.hit(tier_index(Tier::Disk));
                    self.shared.queue(Write::Touch(*key));
                    return Some(self.promoted(model, key, e, Tier::Disk));
                }
                disk::Got::Corrupt => {
                    self.shared.queue(Write::Remove(*key));
                    stats.miss(tier_index(Tier::Disk));
                }
                _ => stats.miss(tier_index(Tier::Disk)),
            }
        }
        None
    }

    /// A lower tier's hit, copied into the tiers above it.
    fn promoted(&self, model: &ModelCache, key: &Key, e: Entry, from: Tier) -> Hit {
        let entry = Arc::new(e);
        model.memory_put(key, &entry);
        if from == Tier::Disk && model.config.tiers.contains(&Tier::Redis) {
            self.shared.queue(Write::Put {
                key: *key,
                entry: entry.clone(),
                disk_max_bytes: None,
                redis: true,
            });
        }
        Hit {
            entry,
            tier: from.label(),
        }
    }

    /// Wait (at most `within`) until the writes queued so far are made: at shutdown, so an
    /// answer cached just before is on disk. False when they were not made in time.
    pub async fn flush(&self, within: Duration) -> bool {
        let Some(tx) = &self.shared.writes else {
            return true;
        };
        let (done, made) = tokio::sync::oneshot::channel();
        let queued = tokio::time::timeout(within, tx.send(Write::Flush(done)));
        let Ok(Ok(())) = queued.await else {
            return false;
        };
        matches!(tokio::time::timeout(within, made).await, Ok(Ok(())))
    }

    /// A hit saved this much upstream spend.
    pub fn saved(&self, usd: f64) {
        if usd.is_finite() && usd > 0.0 {
            self.shared.stats.saved(usd);
        }
    }

    /// Sizes and counts per tier (`GET /admin/cache`).
    pub async fn stats(&self) -> serde_json::Value {
        let mut memory_bytes = 0;
        let mut memory_entries = 0;
        let mut models = serde_json::Map::new();
        for (name, m) in &self.models {
            if let Some(mem) = &m.memory {
                mem.run_pending_tasks();
                memory_bytes += mem.weighted_size();
                memory_entries += mem.entry_count();
            }
            let tiers: Vec<&str> = m.config.tiers.iter().map(|t| t.label()).collect();
            models.insert(name.clone(), serde_json::json!({ "tiers": tiers }));
        }
        let mut tiers = self.shared.stats.per_tier();
        let set =
            |tiers: &mut serde_json::Map<String, serde_json::Value>, t: &str, b: u64, n: u64| {
                if let Some(serde_json::Value::Object(o)) = tiers.get_mut(t) {
                    o.insert("bytes".into(), serde_json::json!(b));
                    o.insert("entries".into(), serde_json::json!(n));
                }
            };
        set(&mut tiers, "memory", memory_bytes, memory_entries);
        if let Some(d) = &self.shared.disk {
            let (b, n) = d.size().await;
            set(&mut tiers, "disk", b.max(0) as u64, n.max(0) as u64);
        }
        serde_json::json!({ "tiers": tiers, "models": models })
    }

    /// Remove entries: all, or a model's, or a team's (or a model's for one team). Returns
    /// whether every tier could be purged (Redis or disk may be unreachable).
    pub async fn purge(&self, model: Option<&str>, team: Option<&str>) -> bool {
        for (name, m) in &self.models {
            if model.is_some_and(|want| want != name) {
                continue;
            }
            if let Some(mem) = &m.memory {
                match team {
                    None => mem.invalidate_all(),
                    Some(t) => {
                        let t: Arc<str> = Arc::from(t);
                        if mem.invalidate_entries_if(move |_, e| e.team == t).is_err() {
                            mem.invalidate_all();
                        }
                    }
                }
            }
        }
        let mut ok = true;
        if let Some(d) = &self.shared.disk {
            ok &= d.purge(model, team).await;
        }
        if let Some(r) = &self.shared.redis {
            ok &= r.purge(model, team).await;
        }
        ok
    }
}

impl Shared {
    fn new(config: &Config, env: &dyn EnvSource) -> Result<Shared, String> {
        let cfg = &config.cache;
        let models = config.models.values().filter_map(|m| m.cache.as_ref());
        let (mut wants_disk, mut wants_redis) = (false, false);
        for c in models {
            wants_disk |= c.tiers.contains(&Tier::Disk);
            wants_redis |= c.tiers.contains(&Tier::Redis);
        }
        let disk = wants_disk
            .then(|| disk::Disk::open(&cfg.disk_path))
            .transpose()?
            .map(Arc::new);
        let redis = match (&cfg.redis_url, wants_redis) {
            (Some(url), true) => {
                let url = url
                    .resolve(env)
                    .map_err(|m| format!("cache.redis_url: {m}"))?;
                Some(Arc::new(redis::RedisTier::new(
                    url.expose(),
                    &cfg.redis_prefix,
                    cfg.redis_timeout.0,
                )?))
            }
            _ => None,
        };
        let stats = Stats::new();
        let writes = if disk.is_some() || redis.is_some() {
            let (tx, rx) = mpsc::channel(cfg.write_queue);
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => {
                    rt.spawn(writer(rx, disk.clone(), redis.clone()));
                    Some(tx)
                }
                Err(_) => None,
            }
        } else {
            None
        };
        Ok(Shared {
            config: cfg.clone(),
            writes,
            disk,
            redis,
            flights: flight::Flights::default(),
            stats,
        })
    }

    /// Queue a write for the writer task; a full queue drops it (counted).
    fn queue(&self, w: Write) {
        if let Some(tx) = &self.writes {
            if tx.try_send(w).is_err() {
                self.stats.dropped();
            }
        }
    }
}

impl ModelCache {
    fn new(
        name: &str,
        config: ModelCacheConfig,
        upstream_models: Vec<String>,
        upstreams: Vec<String>,
    ) -> ModelCache {
        let memory = config.tiers.contains(&Tier::Memory).then(|| {
            moka::sync::Cache::builder()
                .max_capacity(config.max_bytes.memory)
                .weigher(|_k: &Key, e: &Arc<Entry>| u32::try_from(e.weight()).unwrap_or(u32::MAX))
                .expire_after(UntilExpiry)
                .support_invalidation_closures()
                .build()
        });
        ModelCache {
            name: Arc::from(name),
            config,
            upstream_models,
            upstreams,
            memory,
            memory_bytes: metrics::gauge!(
                crate::telemetry::names::CACHE_BYTES, "tier" => "memory", "model" => name.to_owned()
            ),
        }
    }

    fn memory_get(&self, key: &Key, fresh: &Freshness) -> Option<Hit> {
        let entry = self.memory.as_ref()?.get(key)?;
        fresh.ok(&entry).then_some(Hit {
            entry,
            tier: "memory",
        })
    }

    fn memory_put(&self, key: &Key, entry: &Arc<Entry>) {
        if let Some(mem) = &self.memory {
            mem.insert(*key, entry.clone());
            self.memory_bytes.set(mem.weighted_size() as f64);
        }
    }
}

/// A memory entry leaves when the entry expires (its TTL: the model's, or the writing team's).
struct UntilExpiry;

impl moka::Expiry<Key, Arc<Entry>> for UntilExpiry {
    fn expire_after_create(
        &self,
        _key: &Key,
        entry: &Arc<Entry>,
        _now: std::time::Instant,
    ) -> Option<Duration> {
        Some(Duration::from_millis(
            entry.expires_ms.saturating_sub(now_ms()),
        ))
    }
}

/// Which entries a request accepts: unexpired, and no older than its `max-age`.
struct Freshness {
    now_ms: u64,
    max_age_ms: Option<u64>,
}

impl Freshness {
    fn new(max_age: Option<u64>) -> Freshness {
        Freshness {
            now_ms: now_ms(),
            max_age_ms: max_age.map(|s| s.saturating_mul(1000)),
        }
    }
    fn ok(&self, e: &Entry) -> bool {
        self.now_ms < e.expires_ms
            && self
                .max_age_ms
                .is_none_or(|m| self.now_ms.saturating_sub(e.created_ms) <= m)
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    #[test]
    fn directives_from_either_header() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::CACHE_CONTROL,
            "no-cache, max-age=60".parse().unwrap(),
        );
        h.insert(X_CACHE, "max-age=10".parse().unwrap());
        let d = Directives::read(&h);
        assert!(d.no_cache && !d.no_store);
        assert_eq!(d.max_age, Some(10));
        let mut h = HeaderMap::new();
        h.insert(X_CACHE, "No-Store".parse().unwrap());
        assert!(Directives::read(&h).no_store);
    }

    #[test]
    fn freshness_honours_expiry_and_max_age() {
        let e = |created_ms, expires_ms| Entry {
            form: Form::Json,
            model: "m".into(),
            team: "".into(),
            created_ms,
            expires_ms,
            usage: None,
            body: Bytes::new(),
            usage_event: Bytes::new(),
        };
        let f = Freshness {
            now_ms: 100_000,
            max_age_ms: Some(10_000),
        };
        assert!(f.ok(&e(95_000, 200_000)));
        assert!(!f.ok(&e(80_000, 200_000)));
        assert!(!f.ok(&e(99_000, 100_000)));
    }
}
