//! One upstream deployment at run time: its provider, credential, concurrency gate, breaker and
//! latency figure. Routing owns it because routing decides with it; the assembly (`state`)
//! builds it from config.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use super::breaker::{Breaker, State as BreakerState};
use super::queue::Gate;
use crate::config::{Timeouts, UpstreamConfig};
use crate::credentials::Credential;
use crate::providers::Provider;
use crate::telemetry::meters::UpstreamMeters;

/// One upstream deployment at run time.
pub struct Upstream {
    pub name: Arc<str>,
    pub provider: Provider,
    pub credential: Option<Arc<Credential>>,
    /// Model name sent upstream in place of the client's.
    pub model: Option<String>,
    pub timeouts: Timeouts,
    /// Bounds requests in flight to this upstream, with a priority queue behind it.
    pub gate: Arc<Gate>,
    pub breaker: Breaker,
    /// This upstream's attempt and breaker series.
    pub meters: UpstreamMeters,
    /// EWMA of time to first byte in microseconds (0 = no sample yet), for the latency strategy.
    ewma_ttfb_us: AtomicU64,
    /// The config this was built from; an unchanged upstream keeps its state across reloads.
    config: UpstreamConfig,
}

impl Upstream {
    /// A fresh upstream (closed breaker, empty queue, no latency sample) from its config;
    /// batch lines may hold `batch_share` of its concurrency.
    pub fn new(
        name: &str,
        provider: Provider,
        credential: Option<Arc<Credential>>,
        cfg: &UpstreamConfig,
        batch_share: f64,
    ) -> Upstream {
        let name: Arc<str> = Arc::from(name);
        let meters = UpstreamMeters::new(&name);
        Upstream {
            gate: Gate::new(name.clone(), cfg.max_concurrent, cfg.max_queue, batch_share),
            name,
            provider,
            credential,
            model: cfg.model.clone(),
            timeouts: cfg.timeouts.clone(),
            breaker: Breaker::new(cfg.breaker.clone()),
            meters,
            ewma_ttfb_us: AtomicU64::new(0),
            config: cfg.clone(),
        }
    }

    /// The config this was built from.
    pub fn config(&self) -> &UpstreamConfig {
        &self.config
    }

    /// Not known to be down: `/ready` needs one such upstream.
    pub fn is_healthy(&self) -> bool {
        self.breaker.state() != BreakerState::Open
    }

    pub fn ewma_ttfb_ms(&self) -> f64 {
        self.ewma_ttfb_us.load(Ordering::Relaxed) as f64 / 1000.0
    }

    /// Fold one time-to-first-byte sample into the EWMA (weight 0.2 for the new sample).
    pub fn observe_ttfb(&self, d: Duration) {
        let sample = d.as_micros().min(u128::from(u64::MAX / 2)) as u64;
        let _ = self
            .ewma_ttfb_us
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |old| {
                Some(if old == 0 {
                    sample.max(1)
                } else {
                    (old * 4 + sample) / 5
                })
            });
    }
}
