//! Shared state: one `ArcSwap`'d [`Snapshot`] of the config and everything derived from it.
//!
//! A request loads the snapshot once and uses it to the end, so a reload swaps keys, upstreams
//! and routes together and a request never sees a mix. Building a snapshot validates everything
//! first; a bad config never replaces a good one.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use arc_swap::ArcSwap;
use http::HeaderName;
use tokio::sync::Semaphore;

use crate::auth::{KeyCache, KeyIndex};
use crate::config::{Config, ProviderKind};
use crate::credentials::Credential;
use crate::limits::Limiter;
use crate::providers::openai::{ClientOptions, OpenAi};
use crate::providers::{anthropic, mock::Mock, Provider};
use crate::routing::Route;
pub use crate::routing::Upstream;
use crate::secret::EnvSource;
use crate::telemetry::{Meters, Metrics};

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
    /// Metric handles of this config's models and teams (upstreams and routes hold their own).
    pub meters: Arc<Meters>,
    /// The response cache (`models.<m>.cache`, `cache:`); its tiers are carried over by a
    /// reload that leaves their config unchanged.
    pub cache: Arc<crate::cache::Cache>,
    /// OpenTelemetry traces (`telemetry.traces`); `None` when off, and then a request builds no
    /// span. Carried over by a reload that leaves the block unchanged.
    pub tracing: Option<Arc<crate::telemetry::trace::Tracing>>,
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
                (p.config.credentials.get(name) == Some(c) && p.config.proxy == config.proxy)
                    .then(|| p.credentials.get(name).cloned())
                    .flatten()
            });
            let cred = match kept {
                Some(k) => k,
                None => Arc::new(Credential::from_config(
                    name,
                    c,
                    env,
                    config.proxy.as_ref(),
                )?),
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
            // The gateway-wide proxy is part of an upstream's config when it has none of its own.
            let same_proxy = |p: &Snapshot| u.proxy.is_some() || p.config.proxy == config.proxy;
            let kept = previous
                .filter(|p| same_proxy(p))
                .and_then(|p| p.upstreams.get(name))
                .filter(|old| old.config() == u && same_credential(old));
            if let Some(old) = kept {
                upstreams.insert(name.clone(), old.clone());
                continue;
            }
            let provider = match u.provider {
                ProviderKind::Openai => {
                    let base_url = u.base_url.as_deref().unwrap_or_default();
                    let connect = client_options(name, u, base_url, config.proxy.as_ref(), env)?;
                    Provider::OpenAi(Box::new(OpenAi::new(name, base_url, connect)?))
                }
                ProviderKind::Mock => Provider::Mock(Mock::new(u.mock.clone())),
                ProviderKind::Anthropic => {
                    let base_url = u.base_url.as_deref().unwrap_or(anthropic::DEFAULT_BASE_URL);
                    let connect = client_options(name, u, base_url, config.proxy.as_ref(), env)?;
                    let version = u.anthropic_version.as_deref();
                    let p = anthropic::Anthropic::new(name, base_url, version, connect)?;
                    Provider::Anthropic(Box::new(p))
                }
                ProviderKind::Ernie => {
                    use crate::providers::ernie::{Ernie, DEFAULT_BASE_URL};
                    let mut with_base = u.clone();
                    let base_url = with_base.base_url.get_or_insert(DEFAULT_BASE_URL.into());
                    let base_url = base_url.clone();
                    let endpoint = u.model.as_deref().unwrap_or_default();
                    let connect =
                        client_options(name, &with_base, &base_url, config.proxy.as_ref(), env)?;
                    Provider::Ernie(Box::new(Ernie::new(name, &base_url, endpoint, connect)?))
                }
                ProviderKind::Azure => {
                    let base_url = u.base_url.as_deref().unwrap_or_default();
                    let connect = client_options(name, u, base_url, config.proxy.as_ref(), env)?;
                    Provider::Azure(Box::new(crate::providers::azure::build(name, u, connect)?))
                }
            };
            upstreams.insert(
                name.clone(),
                Arc::new(Upstream::new(
                    name,
                    provider,
                    credential,
                    u,
                    config.batch.upstream_share,
                )),
            );
        }
        let meters = Arc::new(Meters::new(
            config.models.len(),
            config.teams.keys().map(String::as_str),
        ));
        let mut routes = HashMap::new();
        for (index, (name, m)) in config.models.iter().enumerate() {
            let targets = m
                .targets
                .iter()
                .filter_map(|t| upstreams.get(&t.upstream).map(|u| (u.clone(), t.weight)))
                .collect();
            let name: Arc<str> = Arc::from(name.as_str());
            let route = Route::new(name.clone(), targets, m.clone(), meters.model(index, &name));
            routes.insert(name.to_string(), route);
        }
        let cache = Arc::new(crate::cache::Cache::from_config(
            &config,
            env,
            previous.map(|p| &*p.cache),
        )?);
        let tracing = match &config.telemetry.traces {
            None => None,
            Some(t) => match previous.and_then(|p| p.tracing.as_ref()) {
                Some(old) if old.config() == t => Some(old.clone()),
                _ => Some(Arc::new(crate::telemetry::trace::Tracing::from_config(
                    t, env,
                )?)),
            },
        };
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
            meters,
            cache,
            tracing,
        })
    }
}

/// How upstream `name`'s connections are made: its connect timeout, its TLS configuration (read
/// from its files now), its server name, and the egress proxy its host goes through (its own
/// `proxy:` or the gateway-wide one).
fn client_options(
    name: &str,
    u: &crate::config::UpstreamConfig,
    base: &str,
    gateway_proxy: Option<&crate::config::ProxyConfig>,
    env: &dyn EnvSource,
) -> Result<ClientOptions, String> {
    let path = format!("upstreams.{name}");
    let tls = crate::egress::client_config(u.tls.as_ref(), &format!("{path}.tls"), env)?;
    let dst = crate::providers::client::endpoint_uri(base, "")?;
    let (proxy, proxy_path) = match &u.proxy {
        Some(p) => (Some(p), format!("{path}.proxy")),
        None => (gateway_proxy, "proxy".to_owned()),
    };
    Ok(ClientOptions {
        connect_timeout: u.timeouts.connect.0,
        tls,
        server_name: crate::egress::server_name(u.tls.as_ref()),
        proxy: crate::egress::proxy_route(proxy, &dst, &proxy_path, env)?,
    })
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
    /// Store keys, cached for the request path (with a store only).
    pub store_keys: Option<Arc<KeyCache>>,
    /// Rung when a batch is made or cancelled, so the batch worker looks at once.
    pub batch_wake: Arc<tokio::sync::Notify>,
    /// The web console's login sessions (`admin.console`). Outside the snapshot: a reload keeps
    /// them (a session of a former admin key is refused when used).
    pub sessions: Arc<crate::auth::session::Sessions>,
}

impl AppState {
    pub fn new(snapshot: Snapshot) -> AppState {
        AppState::with_store(snapshot, None)
    }

    pub fn with_store(snapshot: Snapshot, store: Option<Arc<crate::store::Handle>>) -> AppState {
        let max = snapshot.config.server.max_in_flight;
        let store_keys = store.as_ref().map(|h| {
            Arc::new(KeyCache::new(
                h.db.clone(),
                h.key_cache_ttl,
                h.stale_if_error,
            ))
        });
        AppState {
            snapshot: Arc::new(ArcSwap::from_pointee(snapshot)),
            metrics: Metrics::global(),
            in_flight: Arc::new(Semaphore::new(max)),
            store,
            store_keys,
            batch_wake: Arc::new(tokio::sync::Notify::new()),
            sessions: Arc::default(),
        }
    }

    /// Authenticate a request's headers against config keys, then store keys; without a key,
    /// by the connection's client certificate (`extensions`). A request made in process with
    /// its caller already known ([`crate::auth::InProcess`], set by the batch worker) is that
    /// caller.
    pub async fn authenticate(
        &self,
        snap: &Snapshot,
        headers: &http::HeaderMap,
        extensions: &http::Extensions,
    ) -> Result<crate::auth::Caller, crate::error::ApiError> {
        if let Some(p) = extensions.get::<crate::auth::InProcess>() {
            // The key behind it may have expired or been revoked since (both set `expires_at`).
            let c = p.caller();
            if c.expires_at.is_some_and(|e| crate::store::now_ms() >= e) {
                return Err(crate::error::ApiError::Unauthorized);
            }
            return Ok(c.clone());
        }
        crate::auth::authenticate(
            &snap.keys,
            self.store_keys.as_deref(),
            &snap.config.teams,
            headers,
            extensions.get(),
        )
        .await
    }
}
