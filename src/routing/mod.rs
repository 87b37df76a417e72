//! Routing: client-facing model -> the upstreams to attempt, in order, and the per-upstream
//! state that decides it (breakers, concurrency gates, latency EWMA, retry budgets).
//!
//! [`Route::plan`] orders a model's targets by its strategy and leaves out upstreams whose
//! breaker is open or that are rate limited; the proxy walks that order. This module sends
//! nothing and keeps no per-request state.

pub mod breaker;
pub mod queue;
pub mod retry;
mod upstream;

use std::sync::Arc;
use tokio::time::Instant;

use rand::Rng;

use crate::config::{ModelConfig, Strategy};
use crate::telemetry::meters::ModelMeters;
use retry::RetryBudget;
pub use upstream::Upstream;

/// The upstreams behind one client-facing model, and how to use them.
pub struct Route {
    /// The client-facing model name, shared: a metric label without an allocation.
    pub name: Arc<str>,
    pub targets: Vec<(Arc<Upstream>, u32)>,
    pub config: ModelConfig,
    /// Bounds the extra load retries of this model may add.
    pub budget: RetryBudget,
    /// This model's metric series (made with the snapshot).
    pub meters: Arc<ModelMeters>,
    /// The name its answers carry in `model` (the client-facing name, JSON-escaped, made once
    /// per config); `None` with `keep_upstream_model`: the upstream's name is left as it is.
    pub answer_model: Option<bytes::Bytes>,
}

impl Route {
    pub fn new(
        name: Arc<str>,
        targets: Vec<(Arc<Upstream>, u32)>,
        config: ModelConfig,
        meters: Arc<ModelMeters>,
    ) -> Route {
        let budget = RetryBudget::new(config.retry.budget_ratio, config.retry.budget_min_per_sec);
        let answer_model =
            (!config.keep_upstream_model).then(|| crate::openai::model::escape(&name));
        Route {
            answer_model,
            name,
            targets,
            config,
            budget,
            meters,
        }
    }

    /// Attempt order over the targets that can take a request now: the strategy's first
    /// choice, then the others by weight. Drained (weight 0) targets are never used.
    pub fn plan(&self, now: Instant) -> Vec<Arc<Upstream>> {
        let mut live: Vec<(Arc<Upstream>, u32)> = self
            .targets
            .iter()
            .filter(|(u, w)| *w > 0 && u.breaker.available(now))
            .cloned()
            .collect();
        let mut order = Vec::with_capacity(live.len());
        while !live.is_empty() {
            let i = match self.config.strategy {
                Strategy::Weighted => weighted_pick(&live),
                Strategy::LeastInFlight => min_index(&live, |u| u.gate.in_flight() as f64),
                Strategy::Latency => min_index(&live, |u| u.ewma_ttfb_ms()),
            };
            order.push(live.swap_remove(i).0);
        }
        order
    }
}

fn weighted_pick(targets: &[(Arc<Upstream>, u32)]) -> usize {
    let total: u64 = targets.iter().map(|(_, w)| u64::from(*w)).sum();
    if total == 0 {
        return 0;
    }
    let mut pick = rand::rng().random_range(0..total);
    for (i, (_, w)) in targets.iter().enumerate() {
        if pick < u64::from(*w) {
            return i;
        }
        pick -= u64::from(*w);
    }
    0
}

/// Index of the smallest score; ties go to a random one of them so load spreads.
fn min_index(targets: &[(Arc<Upstream>, u32)], score: impl Fn(&Upstream) -> f64) -> usize {
    let scores: Vec<f64> = targets.iter().map(|(u, _)| score(u)).collect();
    let best = scores.iter().cloned().fold(f64::INFINITY, f64::min);
    let ties: Vec<usize> = (0..scores.len()).filter(|i| scores[*i] <= best).collect();
    match ties.len() {
        0 => 0,
        1 => ties[0],
        n => ties[rand::rng().random_range(0..n)],
    }
}
