//! Routing: client-facing model -> an ordered list of upstreams to attempt.
//!
//! Owns the model table derived from config and the choice of which upstream goes first
//! (weighted random; weight 0 drains a target). It does not send anything and keeps no
//! per-request state.

use std::sync::Arc;

use rand::Rng;

use crate::state::Upstream;

/// The upstreams behind one client-facing model.
pub struct Route {
    pub targets: Vec<(Arc<Upstream>, u32)>,
}

impl Route {
    /// Attempt order: one target drawn by weight first, the others after it in config order.
    pub fn plan(&self) -> Vec<Arc<Upstream>> {
        let total: u64 = self.targets.iter().map(|(_, w)| u64::from(*w)).sum();
        let mut order: Vec<Arc<Upstream>> = Vec::with_capacity(self.targets.len());
        if total > 0 {
            let mut pick = rand::rng().random_range(0..total);
            for (u, w) in &self.targets {
                if pick < u64::from(*w) {
                    order.push(u.clone());
                    break;
                }
                pick -= u64::from(*w);
            }
        }
        for (u, w) in &self.targets {
            if *w > 0 && !order.iter().any(|o| Arc::ptr_eq(o, u)) {
                order.push(u.clone());
            }
        }
        order
    }
}
