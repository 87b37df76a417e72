//! The disk tier: one SQLite file of its own (not the store's), through sqlx.
//!
//! One table, `cache_entries(key, model, team, value, size, last_used, expires)`. Reads are on
//! the request path (one indexed select); every write (put, touch, remove, eviction) is made by
//! the cache's writer task. Each model's entries are bounded in bytes: past its bound the least
//! recently used go first (expired ones before them). A value that does not decode is a miss
//! and is removed. WAL journal: a kill loses at most the writes still queued.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions};
use sqlx::Row;
use tokio::sync::{Mutex, OnceCell};

use super::{now_ms, Entry, Key};

pub(super) struct Disk {
    pool: SqlitePool,
    schema: OnceCell<bool>,
    /// Bytes per model, as the writer task last counted them (read from the file at first use).
    totals: Mutex<HashMap<String, i64>>,
}

pub(super) enum Got {
    Entry(Entry),
    Missing,
    Corrupt,
}

const SCHEMA: &str = "CREATE TABLE IF NOT EXISTS cache_entries (
    key BLOB PRIMARY KEY,
    model TEXT NOT NULL,
    team TEXT NOT NULL,
    value BLOB NOT NULL,
    size INTEGER NOT NULL,
    last_used INTEGER NOT NULL,
    expires INTEGER NOT NULL
);
CREATE INDEX IF NOT EXISTS cache_entries_lru ON cache_entries (model, last_used);";

/// Longest a lookup waits for the file (a busy pool, a slow disk); then it is a miss.
const READ_WAIT: Duration = Duration::from_millis(500);

/// Rows looked at per eviction round.
const EVICT_BATCH: i64 = 64;

impl Disk {
    pub(super) fn open(path: &Path) -> Result<Disk, String> {
        let opts = SqliteConnectOptions::from_str("sqlite://")
            .map_err(|e| format!("cache.disk_path: {e}"))?
            .filename(path)
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .busy_timeout(Duration::from_secs(5));
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_lazy_with(opts);
        Ok(Disk {
            pool,
            schema: OnceCell::new(),
            totals: Mutex::new(HashMap::new()),
        })
    }

    /// The table exists (made at first use, by whichever comes first); false if the file cannot
    /// be used.
    async fn ready(&self) -> bool {
        *self
            .schema
            .get_or_init(|| async {
                match sqlx::raw_sql(SCHEMA).execute(&self.pool).await {
                    Ok(_) => true,
                    Err(e) => {
                        tracing::warn!(error = %e, "cache disk tier unusable");
                        false
                    }
                }
            })
            .await
    }

    /// A lookup, within [`READ_WAIT`].
    pub(super) async fn get(&self, key: &Key, model: &str) -> Got {
        tokio::time::timeout(READ_WAIT, self.read(key, model))
            .await
            .unwrap_or(Got::Missing)
    }

    async fn read(&self, key: &Key, model: &str) -> Got {
        if !self.ready().await {
            return Got::Missing;
        }
        let row = sqlx::query("SELECT value FROM cache_entries WHERE key = ? AND model = ?")
            .bind(&key.0[..])
            .bind(model)
            .fetch_optional(&self.pool)
            .await;
        match row {
            Ok(Some(r)) => match r.try_get::<Vec<u8>, _>(0) {
                Ok(v) => Entry::decode(v.into()).map_or(Got::Corrupt, Got::Entry),
                Err(_) => Got::Corrupt,
            },
            Ok(None) => Got::Missing,
            Err(e) => {
                tracing::debug!(error = %e, "cache disk read failed");
                Got::Missing
            }
        }
    }

    /// Write an entry, then evict the model's least recently used past `max_bytes`.
    pub(super) async fn put(&self, key: &Key, entry: &Entry, max_bytes: u64) {
        if !self.ready().await {
            return;
        }
        let value = entry.encode();
        let size = value.len() as i64;
        let model = &*entry.model;
        let mut totals = self.totals.lock().await;
        let total = match totals.get(model) {
            Some(t) => *t,
            None => self.total(model).await,
        };
        let old: i64 = sqlx::query("SELECT size FROM cache_entries WHERE key = ?")
            .bind(&key.0[..])
            .fetch_optional(&self.pool)
            .await
            .ok()
            .flatten()
            .and_then(|r| r.try_get(0).ok())
            .unwrap_or(0);
        let written = sqlx::query(
            "INSERT OR REPLACE INTO cache_entries (key, model, team, value, size, last_used, expires)
             VALUES (?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&key.0[..])
        .bind(model)
        .bind(&*entry.team)
        .bind(&value[..])
        .bind(size)
        .bind(now_ms() as i64)
        .bind(entry.expires_ms as i64)
        .execute(&self.pool)
        .await;
        let mut total = total - old;
        match written {
            Ok(_) => total += size,
            Err(e) => tracing::debug!(error = %e, "cache disk write failed"),
        }
        let max = i64::try_from(max_bytes).unwrap_or(i64::MAX);
        if total > max {
            total = self.evict(model, max).await;
        }
        totals.insert(model.to_owned(), total);
        // Off the request path (the writer task): the registry lookup is fine here.
        metrics::gauge!(crate::telemetry::names::CACHE_BYTES, "tier" => "disk", "model" => model.to_owned())
            .set(total as f64);
    }

    /// The model's bytes as the file has them.
    async fn total(&self, model: &str) -> i64 {
        sqlx::query("SELECT COALESCE(SUM(size), 0) FROM cache_entries WHERE model = ?")
            .bind(model)
            .fetch_one(&self.pool)
            .await
            .ok()
            .and_then(|r| r.try_get(0).ok())
            .unwrap_or(0)
    }

    /// Remove the model's expired entries, then its least recently used, until it holds at
    /// most `max` bytes; returns what it holds.
    async fn evict(&self, model: &str, max: i64) -> i64 {
        let _ = sqlx::query("DELETE FROM cache_entries WHERE model = ? AND expires <= ?")
            .bind(model)
            .bind(now_ms() as i64)
            .execute(&self.pool)
            .await;
        let mut total = self.total(model).await;
        while total > max {
            let rows = sqlx::query(
                "SELECT key, size FROM cache_entries WHERE model = ? ORDER BY last_used LIMIT ?",
            )
            .bind(model)
            .bind(EVICT_BATCH)
            .fetch_all(&self.pool)
            .await
            .unwrap_or_default();
            if rows.is_empty() {
                return 0;
            }
            for r in rows {
                if total <= max {
                    break;
                }
                let (Ok(k), Ok(size)) = (r.try_get::<Vec<u8>, _>(0), r.try_get::<i64, _>(1)) else {
                    continue;
                };
                let gone = sqlx::query("DELETE FROM cache_entries WHERE key = ?")
                    .bind(k)
                    .execute(&self.pool)
                    .await;
                if gone.is_err() {
                    return self.total(model).await;
                }
                total -= size;
            }
        }
        total
    }

    pub(super) async fn touch(&self, key: &Key) {
        let _ = sqlx::query("UPDATE cache_entries SET last_used = ? WHERE key = ?")
            .bind(now_ms() as i64)
            .bind(&key.0[..])
            .execute(&self.pool)
            .await;
    }

    pub(super) async fn remove(&self, key: &Key) {
        let _ = sqlx::query("DELETE FROM cache_entries WHERE key = ?")
            .bind(&key.0[..])
            .execute(&self.pool)
            .await;
        self.totals.lock().await.clear();
    }

    /// Bytes and entries in the file.
    pub(super) async fn size(&self) -> (i64, i64) {
        if !self.ready().await {
            return (0, 0);
        }
        sqlx::query("SELECT COALESCE(SUM(size), 0), COUNT(*) FROM cache_entries")
            .fetch_one(&self.pool)
            .await
            .ok()
            .and_then(|r| Some((r.try_get(0).ok()?, r.try_get(1).ok()?)))
            .unwrap_or((0, 0))
    }

    pub(super) async fn purge(&self, model: Option<&str>, team: Option<&str>) -> bool {
        if !self.ready().await {
            return false;
        }
        let done = sqlx::query(
            "DELETE FROM cache_entries WHERE (?1 IS NULL OR model = ?1) AND (?2 IS NULL OR team = ?2)",
        )
        .bind(model)
        .bind(team)
        .execute(&self.pool)
        .await
        .is_ok();
        self.totals.lock().await.clear();
        done
    }
}
