//! Shared state: one `ArcSwap`'d [`Snapshot`] of the config and everything derived from it.
//!
//! A request loads the snapshot once and uses it to the end, so a reload swaps keys, upstreams
//! and routes together and a request never sees a mix. Building a snapshot validates everything
//! first; a bad config never replaces a good one.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use arc_swap::ArcSwap;
use http::HeaderName;
use tokio::sync::Semaphore;

use crate::auth::KeyIndex;
use crate::config::{Config, ProviderKind, Timeouts, UpstreamConfig};
use crate::credentials::Credential;
use crate::limits::Limiter;
use crate::providers::{mock::Mock, openai::OpenAi, Provider};
use crate::routing::breaker::{Breaker, State as BreakerState};
use crate::routing::queue::Gate;
use crate::routing::Route;
use crate::secret::EnvSource;
use crate::telemetry::Metrics;

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
    /// EWMA of time to first byte in microseconds (0 = no sample yet), for the latency strategy.
    ewma_ttfb_us: AtomicU64,
    /// The config this was built from; an unchanged upstream keeps its state across reloads.
    config: UpstreamConfig,
}

impl Upstream {
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

/// Config plus everything derived from it.
pub struct Snapshot {
    pub config: Config,
    pub keys: KeyIndex,
    /// The admin key; `None` closes `/admin`.
    pub admin: Option<KeyIndex>,
    /// The key `/metrics` requires; `None` leaves it open.
    pub metrics_key: Option<KeyIndex>,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    /// Upstream credentials by name (their background tasks live as long as this snapshot).
    pub credentials: BTreeMap<String, Arc<Credential>>,
    pub routes: HashMap<String, Route>,
    pub forward_headers: Vec<HeaderName>,
    /// Rate limits, concurrency and budgets (`limits:`). Its backend (with the memory
    /// backend's counters) is carried over by a reload that leaves `limits:` unchanged.
    pub limiter: Arc<Limiter>,
}

impl Snapshot {
    /// Build from a config. Upstreams whose config did not change since `previous` are carried
    /// over with their breakers, queues and latency figures.
    pub fn build(
        config: Config,
        env: &dyn EnvSource,
        previous: Option<&Snapshot>,
    ) -> Result<Snapshot, String> {
        config.validate(env).map_err(|e| e.to_string())?;
        let keys = KeyIndex::from_config(&config, env)?;
        let admin = KeyIndex::admin(&config, env)?;
        let metrics_key = KeyIndex::metrics(&config, env)?;
        // The limiter's counters survive a reload unless `limits:` itself changed.
        let limiter = Arc::new(match previous {
            Some(p) if p.config.limits == config.limits => p.limiter.reconfigured(&config),
            Some(p) => {
                // Save the old backend's spend first, so a memory backend reads it back.
                if let Err(e) = p.limiter.flush() {
                    tracing::warn!(error = %e, "limits state not saved before reload");
                }
                Limiter::from_config(&config, env)?
            }
            None => Limiter::from_config(&config, env)?,
        });
        // Credentials whose config did not change keep running (tokens, renewal, pool state).
        let mut credentials = BTreeMap::new();
        for (name, c) in &config.credentials {
            let kept = previous.and_then(|p| {
                (p.config.credentials.get(name) == Some(c))
                    .then(|| p.credentials.get(name).cloned())
                    .flatten()
            });
            let cred = match kept {
                Some(k) => k,
                None => Arc::new(Credential::from_config(name, c, env)?),
            };
            credentials.insert(name.clone(), cred);
        }
        let mut upstreams = HashMap::new();
        for (name, u) in &config.upstreams {
            let credential = u
                .credential
                .as_ref()
                .and_then(|c| credentials.get(c).cloned());
            let same_credential = |old: &Upstream| match (&old.credential, &credential) {
                (None, None) => true,
                (Some(a), Some(b)) => Arc::ptr_eq(a, b),
                _ => false,
            };
            let kept = previous
                .and_then(|p| p.upstreams.get(name))
                .filter(|old| old.config == *u && same_credential(old));
            if let Some(old) = kept {
                upstreams.insert(name.clone(), old.clone());
                continue;
            }
            let provider = match u.provider {
                ProviderKind::Openai => Provider::OpenAi(OpenAi::new(
                    u.base_url.as_deref().unwrap_or_default(),
                    &u.timeouts,
                )?),
                ProviderKind::Mock => Provider::Mock(Mock::new(u.mock.clone())),
            };
            let name_arc: Arc<str> = Arc::from(name.as_str());
            upstreams.insert(
                name.clone(),
                Arc::new(Upstream {
                    name: name_arc.clone(),
                    provider,
                    credential,
                    model: u.model.clone(),
                    timeouts: u.timeouts.clone(),
                    gate: Gate::new(name_arc, u.max_concurrent, u.max_queue),
                    breaker: Breaker::new(u.breaker.clone()),
                    ewma_ttfb_us: AtomicU64::new(0),
                    config: u.clone(),
                }),
            );
        }
        let mut routes = HashMap::new();
        for (name, m) in &config.models {
            let targets = m
                .targets
                .iter()
                .filter_map(|t| upstreams.get(&t.upstream).map(|u| (u.clone(), t.weight)))
                .collect();
            routes.insert(name.clone(), Route::new(targets, m.clone()));
        }
        let forward_headers = config
            .server
            .forward_headers
            .iter()
            .filter_map(|h| HeaderName::from_bytes(h.to_ascii_lowercase().as_bytes()).ok())
            .collect();
        Ok(Snapshot {
            config,
            keys,
            admin,
            metrics_key,
            upstreams,
            credentials,
            routes,
            forward_headers,
            limiter,
        })
    }
}

/// Everything handlers share; cheap to clone.
#[derive(Clone)]
pub struct AppState {
    pub snapshot: Arc<ArcSwap<Snapshot>>,
    pub metrics: Metrics,
    /// Bounds requests handled at once (`server.max_in_flight`).
    pub in_flight: Arc<Semaphore>,
    /// The store (keys, teams, usage), when configured. Outside the snapshot: a config reload
    /// does not reconnect it.
    pub store: Option<Arc<crate::store::Handle>>,
}

impl AppState {
    pub fn new(snapshot: Snapshot) -> AppState {
        AppState::with_store(snapshot, None)
    }

    pub fn with_store(snapshot: Snapshot, store: Option<Arc<crate::store::Handle>>) -> AppState {
        let max = snapshot.config.server.max_in_flight;
        AppState {
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            metrics: Metrics::global(),
            in_flight: Arc::new(Semaphore::new(max)),
            store,
        }
    }
}
