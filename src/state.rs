//! Shared state: one `ArcSwap`'d [`Snapshot`] of the config and everything derived from it.
//!
//! A request loads the snapshot once and uses it to the end, so a reload swaps keys, upstreams
//! and routes together and a request never sees a mix. Building a snapshot validates everything
//! first; a bad config never replaces a good one.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderName;
use tokio::sync::Semaphore;

use crate::auth::KeyIndex;
use crate::config::{Config, ProviderKind, Timeouts};
use crate::credentials::Credential;
use crate::providers::{mock::Mock, openai::OpenAi, Provider};
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
    /// Bounds requests in flight to this upstream.
    pub permits: Arc<Semaphore>,
    /// False after a connect failure or timeout, true again after a success; `/ready` reads it.
    healthy: AtomicBool,
}

impl Upstream {
    pub fn is_healthy(&self) -> bool {
        self.healthy.load(Ordering::Relaxed)
    }
    pub fn set_healthy(&self, ok: bool) {
        self.healthy.store(ok, Ordering::Relaxed);
    }
}

/// Config plus everything derived from it.
pub struct Snapshot {
    pub config: Config,
    pub keys: KeyIndex,
    /// The admin key; `None` closes `/admin`.
    pub admin: Option<KeyIndex>,
    pub upstreams: HashMap<String, Arc<Upstream>>,
    pub routes: HashMap<String, Route>,
    pub forward_headers: Vec<HeaderName>,
}

impl Snapshot {
    pub fn build(config: Config, env: &dyn EnvSource) -> Result<Snapshot, String> {
        config.validate(env).map_err(|e| e.to_string())?;
        let keys = KeyIndex::from_config(&config, env)?;
        let admin = KeyIndex::admin(&config, env)?;
        let mut credentials = HashMap::new();
        for (name, c) in &config.credentials {
            credentials.insert(
                name.clone(),
                Arc::new(Credential::from_config(name, c, env)?),
            );
        }
        let mut upstreams = HashMap::new();
        for (name, u) in &config.upstreams {
            let provider = match u.provider {
                ProviderKind::Openai => Provider::OpenAi(OpenAi::new(
                    u.base_url.as_deref().unwrap_or_default(),
                    &u.timeouts,
                )?),
                ProviderKind::Mock => Provider::Mock(Mock::new(u.mock.clone())),
            };
            let credential = u
                .credential
                .as_ref()
                .and_then(|c| credentials.get(c).cloned());
            upstreams.insert(
                name.clone(),
                Arc::new(Upstream {
                    name: Arc::from(name.as_str()),
                    provider,
                    credential,
                    model: u.model.clone(),
                    timeouts: u.timeouts.clone(),
                    permits: Arc::new(Semaphore::new(u.max_concurrent)),
                    healthy: AtomicBool::new(true),
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
            routes.insert(name.clone(), Route { targets });
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
            upstreams,
            routes,
            forward_headers,
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
