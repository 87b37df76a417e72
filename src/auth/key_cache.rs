//! Store keys for the request path: a cache in front of the database, so that in steady state
//! no query sits on a request's path, and a revoked key is refused by every replica within 5 s.
//!
//! An entry (a caller, or "no such key" — negative caching, so a wrong key costs one query per
//! `ttl`, not one per request) is fresh for `ttl`. From `ttl` to `2 × ttl` it is still answered
//! from, and the first request to see it stale starts one background refresh; a key in use is
//! therefore re-read about every `ttl` without any request waiting for it. Past `2 × ttl` the
//! entry is re-read before answering (one query, shared by concurrent lookups of that key). A
//! change made on another replica is seen here after at most `2 × ttl` plus one query; config
//! validation keeps `ttl` at or below 2.5 s. Changes made through this replica are dropped from
//! the cache at once ([`KeyCache::invalidate`]).
//!
//! Failure policy: when the store cannot be read, an entry keeps being answered from for up to
//! `stale_if_error` after it was last read (a revocation cannot be written while the store is
//! down either), then the key is refused with 503. Config keys never touch this path.
//! Expiry (rotation grace included) is checked on every request against the cached expiry time,
//! so it is exact, not delayed by the cache.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::time::Instant;

use moka::future::Cache;

use super::{Caller, StoreTeam};
use crate::store::{now_ms, Store, StoreError};

struct Entry {
    /// `None`: no usable key with this hash (unknown, revoked or expired when read).
    caller: Option<Caller>,
    read_at: Instant,
    refreshing: AtomicBool,
}

pub struct KeyCache {
    store: Store,
    cache: Cache<[u8; 32], Arc<Entry>>,
    ttl: Duration,
    stale_if_error: Duration,
}

impl KeyCache {
    pub fn new(store: Store, ttl: Duration, stale_if_error: Duration) -> KeyCache {
        let keep = stale_if_error.max(ttl * 2);
        KeyCache {
            store,
            cache: Cache::builder()
                .max_capacity(100_000)
                .time_to_live(keep)
                .build(),
            ttl,
            stale_if_error: keep,
        }
    }

    /// The caller for a key hash, or `None` if the store has no usable key with it.
    pub async fn lookup(&self, hash: [u8; 32]) -> Result<Option<Caller>, StoreError> {
        let now = now_ms();
        let usable =
            |c: &Option<Caller>| c.clone().filter(|c| c.expires_at.is_none_or(|e| now < e));
        if let Some(e) = self.cache.get(&hash).await {
            let age = e.read_at.elapsed();
            if age < self.ttl {
                return Ok(usable(&e.caller));
            }
            if age < self.ttl * 2 {
                if !e.refreshing.swap(true, Ordering::AcqRel) {
                    self.refresh_in_background(hash);
                }
                return Ok(usable(&e.caller));
            }
            // Too old to answer from without asking: re-read, falling back to it on error.
            self.cache.invalidate(&hash).await;
            return match self.load(hash).await {
                Ok(fresh) => Ok(usable(&fresh.caller)),
                Err(err) if age < self.stale_if_error => {
                    tracing::warn!(error = %err, "store unreachable; answering from the key cache");
                    self.cache.insert(hash, e.clone()).await;
                    Ok(usable(&e.caller))
                }
                Err(err) => Err(err),
            };
        }
        Ok(usable(&self.load(hash).await?.caller))
    }

    /// Read through the cache; concurrent misses for the same hash share one query.
    async fn load(&self, hash: [u8; 32]) -> Result<Arc<Entry>, StoreError> {
        let store = self.store.clone();
        self.cache
            .try_get_with(hash, async move { read(&store, hash).await.map(Arc::new) })
            .await
            .map_err(|e| match Arc::try_unwrap(e) {
                Ok(e) => e,
                Err(e) => StoreError::Unavailable(e.to_string()),
            })
    }

    fn refresh_in_background(&self, hash: [u8; 32]) {
        let store = self.store.clone();
        let cache = self.cache.clone();
        tokio::spawn(async move {
            match read(&store, hash).await {
                Ok(e) => cache.insert(hash, Arc::new(e)).await,
                Err(err) => {
                    tracing::warn!(error = %err, "key cache refresh failed");
                    if let Some(e) = cache.get(&hash).await {
                        e.refreshing.store(false, Ordering::Release);
                    }
                }
            }
        });
    }

    /// Forget a key at once (it was changed through this replica).
    pub async fn invalidate(&self, hash_hex: &str) {
        let Ok(bytes) = hex::decode(hash_hex) else {
            return;
        };
        if let Ok(hash) = <[u8; 32]>::try_from(bytes.as_slice()) {
            self.cache.invalidate(&hash).await;
        }
    }

    /// Forget every key (a team changed through this replica).
    pub fn invalidate_all(&self) {
        self.cache.invalidate_all();
    }
}

/// One query: the key and, when its team lives in the store, the team.
async fn read(store: &Store, hash: [u8; 32]) -> Result<Entry, StoreError> {
    let found = store.key_by_hash(&hash).await?;
    let caller = found
        .filter(|(k, _)| k.active(now_ms()))
        .map(|(k, team)| Caller {
            key_id: Arc::from(k.id.as_str()),
            team: Arc::from(k.team.as_str()),
            models: k.models.map(Arc::from),
            key_limits: k.limits,
            team_limits: team.as_ref().map(|t| t.limits).unwrap_or_default(),
            store_team: team.map(|t| Arc::new(StoreTeam::from(t))),
            expires_at: k.expires_at,
            limit_id: None,
        });
    Ok(Entry {
        caller,
        read_at: Instant::now(),
        refreshing: AtomicBool::new(false),
    })
}
