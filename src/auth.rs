//! Client keys: presented key -> [`Caller`].
//!
//! Keys are held only as SHA-256 hashes. A presented key (`Authorization: Bearer …` or
//! `x-api-key: …`) is hashed, looked up, and the stored hash compared in constant time. The key
//! itself never leaves this module; logs carry the key's name (its id) only. This module does not
//! decide what a caller may do: that is [`crate::policy`].

use std::collections::HashMap;
use std::sync::Arc;

use http::HeaderMap;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Config;
use crate::error::ApiError;
use crate::limits::Limits;
use crate::secret::{EnvSource, SecretRef};

/// Who is calling: enough for policy, limits and accounting.
#[derive(Debug, Clone)]
pub struct Caller {
    /// The key's name from config; safe to log.
    pub key_id: Arc<str>,
    pub team: Arc<str>,
    /// This key's own limits (rate, tokens, concurrency, budget); unset fields do not limit.
    /// Config keys fill it from `keys[]`; store keys set it from their row.
    pub key_limits: Limits,
    /// The team's limits, shared by all its keys (from `teams.<name>`).
    pub team_limits: Limits,
}

#[derive(Debug, Default)]
pub struct KeyIndex {
    by_hash: HashMap<[u8; 32], Caller>,
}

pub fn hash_key(key: &str) -> [u8; 32] {
    Sha256::digest(key.as_bytes()).into()
}

impl KeyIndex {
    pub fn from_config(cfg: &Config, env: &dyn EnvSource) -> Result<KeyIndex, String> {
        let mut by_hash = HashMap::new();
        for k in &cfg.keys {
            let hash = key_hash(&k.name, &k.sha256, &k.key, env)?;
            let team_limits = cfg.teams.get(&k.team).map(Limits::of_team);
            by_hash.insert(
                hash,
                Caller {
                    key_id: Arc::from(k.name.as_str()),
                    team: Arc::from(k.team.as_str()),
                    key_limits: Limits::of_key(k),
                    team_limits: team_limits.unwrap_or_default(),
                },
            );
        }
        Ok(KeyIndex { by_hash })
    }

    /// The admin key, if configured, as an index of one (team `admin`).
    pub fn admin(cfg: &Config, env: &dyn EnvSource) -> Result<Option<KeyIndex>, String> {
        let Some(a) = &cfg.admin else { return Ok(None) };
        let hash = key_hash("admin", &a.sha256, &a.key, env)?;
        let caller = Caller {
            key_id: Arc::from("admin"),
            team: Arc::from("admin"),
            key_limits: Limits::default(),
            team_limits: Limits::default(),
        };
        Ok(Some(KeyIndex {
            by_hash: HashMap::from([(hash, caller)]),
        }))
    }

    /// Authenticate from request headers.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<Caller, ApiError> {
        let key = presented_key(headers).ok_or(ApiError::Unauthorized)?;
        let hash = hash_key(key);
        match self.by_hash.get_key_value(&hash) {
            Some((stored, caller)) if bool::from(stored.ct_eq(&hash)) => Ok(caller.clone()),
            _ => Err(ApiError::Unauthorized),
        }
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
