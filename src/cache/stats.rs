//! Hit and miss counts per tier, for `GET /admin/cache` and the metrics.

use std::sync::atomic::{AtomicU64, Ordering};

use metrics::{Counter, Gauge};

use crate::config::Tier;

/// Counts per tier (memory, redis, disk, flight) for `GET /admin/cache` and metrics.
pub(super) struct Stats {
    tiers: [TierStats; 4],
    writes_dropped: Counter,
    saved_usd: Gauge,
}

pub(super) struct TierStats {
    label: &'static str,
    hits: AtomicU64,
    misses: AtomicU64,
    hit_counter: Counter,
    miss_counter: Counter,
}

pub(super) const FLIGHT: usize = 3;

pub(super) fn tier_index(t: Tier) -> usize {
    match t {
        Tier::Memory => 0,
        Tier::Redis => 1,
        Tier::Disk => 2,
    }
}

impl Stats {
    pub(super) fn new() -> Stats {
        // Handles made once per `cache:` config; the recorder is installed first.
        let _ = crate::telemetry::Metrics::global();
        let tier = |label: &'static str| TierStats {
            label,
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
            hit_counter: metrics::counter!(crate::telemetry::names::CACHE_HITS, "tier" => label),
            miss_counter: metrics::counter!(crate::telemetry::names::CACHE_MISSES, "tier" => label),
        };
        Stats {
            tiers: [tier("memory"), tier("redis"), tier("disk"), tier("flight")],
            writes_dropped: metrics::counter!(crate::telemetry::names::CACHE_WRITES_DROPPED),
            saved_usd: metrics::gauge!(crate::telemetry::names::CACHE_SAVED_USD),
        }
    }
    pub(super) fn hit(&self, i: usize) {
        self.tiers[i].hits.fetch_add(1, Ordering::Relaxed);
        self.tiers[i].hit_counter.increment(1);
    }
    pub(super) fn miss(&self, i: usize) {
        self.tiers[i].misses.fetch_add(1, Ordering::Relaxed);
        self.tiers[i].miss_counter.increment(1);
    }
    pub(super) fn saved(&self, usd: f64) {
        self.saved_usd.increment(usd);
    }
    pub(super) fn dropped(&self) {
        self.writes_dropped.increment(1);
    }

    /// Hits, misses and hit ratio of each tier.
    pub(super) fn per_tier(&self) -> serde_json::Map<String, serde_json::Value> {
        let mut tiers = serde_json::Map::new();
        for t in &self.tiers {
            let hits = t.hits.load(Ordering::Relaxed);
            let misses = t.misses.load(Ordering::Relaxed);
            let ratio = if hits + misses == 0 {
                0.0
            } else {
                hits as f64 / (hits + misses) as f64
            };
            tiers.insert(
                t.label.to_owned(),
                serde_json::json!({"hits": hits, "misses": misses, "hit_ratio": ratio}),
            );
        }
        tiers
    }
}
