//! Client keys: presented key -> [`Caller`].
//!
//! Keys are held only as SHA-256 hashes. A presented key (`Authorization: Bearer …` or
//! `x-api-key: …`) is hashed, looked up, and the stored hash compared in constant time. The key
//! itself never leaves this module; logs carry the key's name (its id) only. This module does not
//! decide what a caller may do: that is [`crate::policy`].
//!
//! Two sources, config keys first: the config file's keys (a `HashMap` built with the snapshot)
//! and, when a store is configured, keys made through the admin API, read through
//! [`KeyCache`] (this module's) so the request path does not query the database in steady
//! state. It reads the store and hands the limiter its limits; it must not use the assembled
//! state (`state`), which is built from it. [`session`] holds the web console's login sessions,
//! which stand for the admin key.

mod key_cache;
pub mod session;

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use http::HeaderMap;
use subtle::ConstantTimeEq;

use crate::config::{Config, TeamConfig};
use crate::error::ApiError;
use crate::limits::Limits;
pub use crate::secret::hash_key;
use crate::secret::{EnvSource, SecretRef};
use crate::store::TeamRecord;
pub use key_cache::KeyCache;

use crate::server::tls::PeerCertificate;

/// Who is calling: enough for policy, limits and accounting.
///
/// Config keys fill only `key_id` and `team`; the `Option` fields are set for store keys.
#[derive(Debug, Clone, Default)]
pub struct Caller {
    /// The key's name from config, or a store key's id (`key_…`); safe to log.
    pub key_id: Arc<str>,
    pub team: Arc<str>,
    /// This key's own limits (rate, tokens, concurrency, budget); unset fields do not limit.
    /// Config keys fill it from `keys[]`; store keys set it from their row.
    pub key_limits: Limits,
    /// The team's limits, shared by all its keys (from `teams.<name>`).
    pub team_limits: Limits,
    /// Store keys: models this key may use, narrowing its team's (`*` allowed). `None`: the
    /// team's models.
    pub models: Option<Arc<[String]>>,
    /// The team as the store has it, when the team lives in the store (its policy, limits and
    /// budget). `None`: a config team, found in `config.teams`.
    pub store_team: Option<Arc<StoreTeam>>,
    /// Store keys: when the key stops working (ms since the epoch; rotation grace or expiry),
    /// checked on every request.
    pub expires_at: Option<i64>,
    /// The name the limiter counts `key_limits` under when it is not the key's id: batch lines
    /// (`batch:<team>`), so a team's batches are held to their share of the team's limits
    /// apart from the key's own interactive requests. Usage rows still name `key_id`.
    pub limit_id: Option<Arc<str>>,
}

/// A store team, with the policy the request path applies for it.
#[derive(Debug, Clone)]
pub struct StoreTeam {
    pub record: TeamRecord,
    /// Shaping policy: the store holds models only; other fields are defaults.
    pub policy: TeamConfig,
}

impl From<TeamRecord> for StoreTeam {
    fn from(record: TeamRecord) -> Self {
        StoreTeam {
            policy: TeamConfig {
                models: record.models.clone(),
                ..TeamConfig::default()
            },
            record,
        }
    }
}

impl Caller {
    /// The caller's team policy: the store's for store teams, else the config's.
    pub fn team_policy<'a>(
        &'a self,
        teams: &'a BTreeMap<String, TeamConfig>,
    ) -> Option<&'a TeamConfig> {
        match &self.store_team {
            Some(t) => Some(&t.policy),
            None => teams.get(self.team.as_ref()),
        }
    }

    /// The caller as the limiter counts it.
    pub fn subject(&self) -> crate::limits::Subject<'_> {
        crate::limits::Subject {
            key_id: self.limit_id.as_ref().unwrap_or(&self.key_id),
            team: &self.team,
            key_limits: self.key_limits,
            team_limits: self.team_limits,
        }
    }

    /// Whether the key itself may use `model` (its team is checked separately).
    pub fn key_allows(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|m| m.iter().any(|m| m == "*" || m == model))
    }
}

/// A caller the gateway authenticated itself, in process: a batch line run by the batch worker
/// as its batch's team. [`crate::state::AppState::authenticate`] honours it before any key.
///
/// It travels as a request extension, which only code in this process can set (the server
/// never turns anything a client sends into an extension), and only this crate can make one
/// (the constructor is `pub(crate)`, the fields private), so a client cannot forge it.
#[derive(Debug, Clone)]
pub struct InProcess {
    caller: Caller,
    batch_id: Option<Arc<str>>,
}

impl InProcess {
    /// `caller`, already authenticated, running a line of `batch_id`.
    pub(crate) fn new(caller: Caller, batch_id: Option<Arc<str>>) -> InProcess {
        InProcess { caller, batch_id }
    }
    pub fn caller(&self) -> &Caller {
        &self.caller
    }
    /// The batch the request is a line of; its usage row carries it.
    pub fn batch_id(&self) -> Option<&Arc<str>> {
        self.batch_id.as_ref()
    }
}

/// Authenticate from request headers: config keys, then (with a store) store keys. A request
/// with no API key at all is authenticated by the connection's verified client certificate
/// (`peer`) when a team lists it; a key that is presented always decides, even on such a
/// connection (a wrong key is 401, never the certificate's team).
pub async fn authenticate(
    keys: &KeyIndex,
    store_keys: Option<&KeyCache>,
    teams: &BTreeMap<String, TeamConfig>,
    headers: &HeaderMap,
    peer: Option<&PeerCertificate>,
) -> Result<Caller, ApiError> {
    let Some(key) = presented_key(headers) else {
        return peer
            .and_then(|p| keys.by_certificate(p))
            .ok_or(ApiError::Unauthorized);
    };
    let hash = hash_key(key);
    if let Some(c) = keys.lookup(&hash) {
        return Ok(c);
    }
    let Some(store_keys) = store_keys else {
        return Err(ApiError::Unauthorized);
    };
    match store_keys.lookup(hash).await? {
        Some(mut c) => {
            // A store key of a config team: the team's limits come from the config.
            if c.store_team.is_none() {
                if let Some(t) = teams.get(c.team.as_ref()) {
                    c.team_limits = t.limits;
                }
            }
            Ok(c)
        }
        None => Err(ApiError::Unauthorized),
    }
}

#[derive(Debug, Default)]
pub struct KeyIndex {
    by_hash: HashMap<[u8; 32], Caller>,
    /// Teams' client certificates (`teams.X.client_cert_sha256`) by fingerprint.
    by_cert: HashMap<[u8; 32], Caller>,
}

impl KeyIndex {
    pub fn from_config(cfg: &Config, env: &dyn EnvSource) -> Result<KeyIndex, String> {
        let mut by_hash = HashMap::new();
        for k in &cfg.keys {
            let hash = key_hash(&k.name, &k.sha256, &k.key, env)?;
            let team_limits = cfg.teams.get(&k.team).map(|t| t.limits);
            by_hash.insert(
                hash,
                Caller {
                    key_id: Arc::from(k.name.as_str()),
                    team: Arc::from(k.team.as_str()),
                    key_limits: k.limits,
                    team_limits: team_limits.unwrap_or_default(),
                    ..Caller::default()
                },
            );
        }
        let mut by_cert = HashMap::new();
        for (team, t) in &cfg.teams {
            for f in &t.client_cert_sha256 {
                let sha = crate::config::parse_fingerprint(f).ok_or_else(|| {
                    format!("teams.{team}.client_cert_sha256: {f}: not a fingerprint")
                })?;
                let caller = Caller {
                    key_id: Arc::from(format!("cert:{}", hex::encode(&sha[..4]))),
                    team: Arc::from(team.as_str()),
                    team_limits: t.limits,
                    ..Caller::default()
                };
                by_cert.insert(sha, caller);
            }
        }
        Ok(KeyIndex { by_hash, by_cert })
    }

    /// The caller a verified client certificate stands for, if a team lists it.
    pub fn by_certificate(&self, peer: &PeerCertificate) -> Option<Caller> {
        self.by_cert.get(&peer.sha256).cloned()
    }

    /// The admin key, if configured, as an index of one (team `admin`).
    pub fn admin(cfg: &Config, env: &dyn EnvSource) -> Result<Option<KeyIndex>, String> {
        let Some(a) = &cfg.admin else { return Ok(None) };
        let hash = key_hash("admin", &a.sha256, &a.key, env)?;
        let caller = Caller {
            key_id: Arc::from("admin"),
            team: Arc::from("admin"),
            ..Caller::default()
        };
        Ok(Some(KeyIndex {
            by_hash: HashMap::from([(hash, caller)]),
            by_cert: HashMap::new(),
        }))
    }

    /// The `/metrics` key (`server.metrics_key`), if configured, as an index of one.
    pub fn metrics(cfg: &Config, env: &dyn EnvSource) -> Result<Option<KeyIndex>, String> {
        let Some(k) = &cfg.server.metrics_key else {
            return Ok(None);
        };
        let hash = hash_key(k.resolve(env)?.expose());
        let caller = Caller {
            key_id: Arc::from("metrics"),
            team: Arc::from("metrics"),
            ..Caller::default()
        };
        Ok(Some(KeyIndex {
            by_hash: HashMap::from([(hash, caller)]),
            by_cert: HashMap::new(),
        }))
    }

    /// Authenticate from request headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let key = presented_key(headers).ok_or(ApiError::Unauthorized)?;
        self.lookup(&hash_key(key)).ok_or(ApiError::Unauthorized)
    }

    /// The caller for a key hash, compared in constant time.
    pub fn lookup(&self, hash: &[u8; 32]) -> Option<Caller> {
        match self.by_hash.get_key_value(hash) {
            Some((stored, caller)) if bool::from(stored.ct_eq(hash)) => Some(caller.clone()),
            _ => None,
        }
    }

    /// Whether a config key has this SHA-256 (a store key must not shadow one).
    pub fn contains(&self, hash: &[u8; 32]) -> bool {
        self.by_hash.contains_key(hash)
    }
}

/// The SHA-256 of a key given either as a hex hash or as a secret reference.
fn key_hash(
    name: &str,
    sha256: &Option<String>,
    key: &Option<SecretRef>,
    env: &dyn EnvSource,
) -> Result<[u8; 32], String> {
    match (sha256, key) {
        (Some(h), _) => {
            let bytes = hex::decode(h).map_err(|e| format!("key {name}: {e}"))?;
            <[u8; 32]>::try_from(bytes.as_slice())
                .map_err(|_| format!("key {name}: sha256 must be 32 bytes"))
        }
        (None, Some(r)) => Ok(hash_key(r.resolve(env)?.expose())),
        (None, None) => Err(format!("key {name} has no hash")),
    }
}

fn presented_key(headers: &HeaderMap) -> Option<&str> {
    if let Some(v) = headers.get(http::header::AUTHORIZATION) {
        let v = v.to_str().ok()?;
        let (scheme, rest) = v.split_once(' ')?;
        if scheme.eq_ignore_ascii_case("bearer") {
            let k = rest.trim();
            return (!k.is_empty()).then_some(k);
        }
        return None;
    }
    let k = headers.get("x-api-key")?.to_str().ok()?.trim();
    (!k.is_empty()).then_some(k)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bearer_and_x_api_key_are_both_accepted() {
        let mut idx = KeyIndex::default();
        idx.by_hash.insert(
            hash_key("sk-1"),
            Caller {
                key_id: "k".into(),
                team: "t".into(),
                key_limits: Limits::default(),
                team_limits: Limits::default(),
                ..Caller::default()
            },
        );
        let mut h = HeaderMap::new();
        h.insert(
            "authorization",
            http::HeaderValue::from_static("Bearer sk-1"),
        );
        assert!(idx.authenticate(&h).is_ok());
        let mut h = HeaderMap::new();
        h.insert("x-api-key", http::HeaderValue::from_static("sk-1"));
        assert!(idx.authenticate(&h).is_ok());
        h.insert("x-api-key", http::HeaderValue::from_static("sk-2"));
        assert!(idx.authenticate(&h).is_err());
        assert!(idx.authenticate(&HeaderMap::new()).is_err());
    }
}
