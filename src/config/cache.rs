//! Config of the response cache: where the shared tiers live (`cache:`), what each model caches
//! (`models.<m>.cache`) and a team's override or opt-out (`teams.<t>.cache`). See docs/CACHE.md.

use super::*;

/// Where the disk and Redis tiers live; shared by every model that turns them on.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheStoreConfig {
    /// The disk tier's SQLite file (created if missing); a separate file from `store.url`.
    pub disk_path: std::path::PathBuf,
    /// Redis URL of the Redis tier (`redis://…`, best as `${ENV}` or `file:`); required when a
    /// model lists the `redis` tier.
    pub redis_url: Option<SecretRef>,
    /// Prefix of every Redis key the cache writes.
    pub redis_prefix: String,
    /// Longest wait for Redis on the request path; beyond it the lookup is a miss.
    pub redis_timeout: Dur,
    /// Cache writes (disk, Redis) queued for the writer task; when full a write is dropped and
    /// counted (`tollgate_cache_writes_dropped_total`).
    pub write_queue: usize,
}

impl Default for CacheStoreConfig {
    fn default() -> Self {
        CacheStoreConfig {
            disk_path: "tollgate-cache.db".into(),
            redis_url: None,
            redis_prefix: "tollgate:cache:".into(),
            redis_timeout: Dur(Duration::from_millis(50)),
            write_queue: 1024,
        }
    }
}

/// A cache tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Tier {
    /// In process, weighted by bytes (moka).
    Memory,
    /// Shared by every replica through Redis.
    Redis,
    /// A SQLite file that survives restarts.
    Disk,
}

impl Tier {
    pub fn label(self) -> &'static str {
        match self {
            Tier::Memory => "memory",
            Tier::Redis => "redis",
            Tier::Disk => "disk",
        }
    }
}

/// Which requests are answered from (and written to) the cache.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Qualify {
    /// `temperature: 0` or a `seed`, and no `n` (or `best_of`) above 1.
    #[default]
    Deterministic,
    /// Every request (the operator accepts that a sampled answer is repeated).
    All,
}

/// Bytes each tier may hold for one model.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TierBytes {
    pub memory: u64,
    pub disk: u64,
}

impl Default for TierBytes {
    fn default() -> Self {
        TierBytes {
            memory: 64 << 20,
            disk: 1 << 30,
        }
    }
}

/// Identical requests in flight at once wait for the first one's answer.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SingleFlightConfig {
    pub enabled: bool,
    /// Longest wait for the first request; past it a follower goes upstream itself.
    pub max_wait: Dur,
}

impl Default for SingleFlightConfig {
    fn default() -> Self {
        SingleFlightConfig {
            enabled: true,
            max_wait: secs(30),
        }
    }
}

/// A model's response cache.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ModelCacheConfig {
    /// Tiers, looked up in the order memory, Redis, disk whatever the order here.
    pub tiers: Vec<Tier>,
    /// How long an entry is served (a client can ask for less with `max-age`).
    pub ttl: Dur,
    /// Bytes per tier (Redis is bounded by its own `maxmemory` and the TTL).
    pub max_bytes: TierBytes,
    /// Answers larger than this are not cached (a stream stops being captured past it).
    pub max_entry_bytes: u64,
    pub qualify: Qualify,
    /// Every team shares this model's entries (otherwise the team is part of the key).
    pub shared: bool,
    pub single_flight: SingleFlightConfig,
}

impl Default for ModelCacheConfig {
    fn default() -> Self {
        ModelCacheConfig {
            tiers: vec![Tier::Memory],
            ttl: secs(3600),
            max_bytes: TierBytes::default(),
            max_entry_bytes: 1 << 20,
            qualify: Qualify::Deterministic,
            shared: false,
            single_flight: SingleFlightConfig::default(),
        }
    }
}

/// A team's view of the cache: off, or a shorter TTL / other qualification.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TeamCacheConfig {
    /// `false`: this team's requests never read or write the cache.
    pub enabled: bool,
    /// Overrides the model's `ttl` for this team's lookups.
    pub ttl: Option<Dur>,
    /// Overrides the model's `qualify` for this team.
    pub qualify: Option<Qualify>,
}

impl Default for TeamCacheConfig {
    fn default() -> Self {
        TeamCacheConfig {
            enabled: true,
            ttl: None,
            qualify: None,
        }
    }
}

impl Config {
    pub(super) fn validate_cache(
        &self,
        env: &dyn EnvSource,
        warnings: &mut Vec<String>,
    ) -> Result<(), ConfigError> {
        let mut wants_redis = false;
        for (name, m) in &self.models {
            let Some(c) = &m.cache else { continue };
            let path = format!("models.{name}.cache");
            if c.tiers.is_empty() {
                return Err(err(format!("{path}.tiers"), "needs at least one tier"));
            }
            for (i, t) in c.tiers.iter().enumerate() {
                if c.tiers[..i].contains(t) {
                    return Err(err(
                        format!("{path}.tiers[{i}]"),
                        format!("tier '{}' is listed twice", t.label()),
                    ));
                }
            }
            wants_redis |= c.tiers.contains(&Tier::Redis);
            if c.ttl.0 < Duration::from_secs(1) {
                return Err(err(format!("{path}.ttl"), "must be at least 1s"));
            }
            if c.max_entry_bytes == 0 {
                return Err(err(
                    format!("{path}.max_entry_bytes"),
                    "must be greater than 0",
                ));
            }
            for (tier, bytes) in [
                (Tier::Memory, c.max_bytes.memory),
                (Tier::Disk, c.max_bytes.disk),
            ] {
                if c.tiers.contains(&tier) && bytes < c.max_entry_bytes {
                    return Err(err(
                        format!("{path}.max_bytes.{}", tier.label()),
                        "must be at least max_entry_bytes",
                    ));
                }
            }
            if c.single_flight.enabled && c.single_flight.max_wait.0.is_zero() {
                return Err(err(
                    format!("{path}.single_flight.max_wait"),
                    "must be greater than 0",
                ));
            }
        }
        for (name, t) in &self.teams {
            if let Some(ttl) = t.cache.as_ref().and_then(|c| c.ttl) {
                if ttl.0 < Duration::from_secs(1) {
                    return Err(err(
                        format!("teams.{name}.cache.ttl"),
                        "must be at least 1s",
                    ));
                }
            }
        }
        let s = &self.cache;
        if s.write_queue == 0 {
            return Err(err("cache.write_queue", "must be greater than 0"));
        }
        if s.redis_timeout.0.is_zero() {
            return Err(err("cache.redis_timeout", "must be greater than 0"));
        }
        match &s.redis_url {
            None if wants_redis => Err(err(
                "cache.redis_url",
                "is required when a model's cache lists the redis tier",
            )),
            None => Ok(()),
            Some(r) => {
                check_secret(r, "cache.redis_url", env, warnings)?;
                let url = r.resolve(env).map_err(|m| err("cache.redis_url", m))?;
                if !url.expose().starts_with("redis://") {
                    return Err(err(
                        "cache.redis_url",
                        "must start with redis:// (TLS to Redis is not built in)",
                    ));
                }
                Ok(())
            }
        }
    }
}
