//! The Redis tier: entries shared by every replica, each a string key
//! `{prefix}{model}:{team or *}:{sha256 hex}` with the entry's byte form, expiring with it.
//!
//! Failure policy: every call waits at most `cache.redis_timeout`; Redis down, slow or answering
//! something that does not decode is a miss (a lookup) or a dropped write, never an error.
//! Bounded by Redis's own `maxmemory` policy and the TTL, not by Tollgate.

use std::time::Duration;

use ::redis::aio::ConnectionManager;
use ::redis::Client;
use tokio::sync::OnceCell;

use super::{now_ms, Entry, Key};

pub(super) struct RedisTier {
    client: Client,
    /// Made on first use (it needs the runtime); reconnects by itself afterwards.
    conn: OnceCell<ConnectionManager>,
    prefix: String,
    timeout: Duration,
}

impl RedisTier {
    pub(super) fn new(url: &str, prefix: &str, timeout: Duration) -> Result<RedisTier, String> {
        let client =
            Client::open(url).map_err(|e| format!("cache.redis_url: invalid: {:?}", e.kind()))?;
        Ok(RedisTier {
            client,
            conn: OnceCell::new(),
            prefix: prefix.to_owned(),
            timeout,
        })
    }

    async fn conn(&self) -> Option<ConnectionManager> {
        self.conn
            .get_or_try_init(|| async {
                crate::limits::redis::bounded_connection(&self.client, self.timeout)
            })
            .await
            .ok()
            .cloned()
    }

    fn name(&self, model: &str, team: &str, key: &Key) -> String {
        let team = if team.is_empty() { "*" } else { team };
        format!("{}{model}:{team}:{}", self.prefix, key.hex())
    }

    /// Run a command within the timeout; `None` on any failure.
    async fn run<T: ::redis::FromRedisValue>(&self, cmd: &::redis::Cmd) -> Option<T> {
        let mut conn = self.conn().await?;
        match tokio::time::timeout(self.timeout, cmd.query_async::<T>(&mut conn)).await {
            Ok(Ok(v)) => Some(v),
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "cache redis call failed");
                None
            }
            Err(_) => None,
        }
    }

    pub(super) async fn get(&self, model: &str, team: &str, key: &Key) -> Option<Entry> {
        let cmd = ::redis::cmd("GET")
            .arg(self.name(model, team, key))
            .to_owned();
        let raw: Option<Vec<u8>> = self.run(&cmd).await.flatten();
        Entry::decode(raw?.into())
    }

    pub(super) async fn put(&self, key: &Key, entry: &Entry) {
        let ttl = entry.expires_ms.saturating_sub(now_ms());
        if ttl == 0 {
            return;
        }
        let cmd = ::redis::cmd("SET")
            .arg(self.name(&entry.model, &entry.team, key))
            .arg(&entry.encode()[..])
            .arg("PX")
            .arg(ttl)
            .to_owned();
        let _: Option<()> = self.run(&cmd).await;
    }

    /// Delete the matching keys (SCAN, then DEL in batches).
    pub(super) async fn purge(&self, model: Option<&str>, team: Option<&str>) -> bool {
        let pattern = format!(
            "{}{}:{}:*",
            self.prefix,
            glob_escape(model.unwrap_or("*"), model.is_none()),
            glob_escape(team.unwrap_or("*"), team.is_none()),
        );
        let mut cursor: u64 = 0;
        loop {
            let scan = ::redis::cmd("SCAN")
                .arg(cursor)
                .arg("MATCH")
                .arg(&pattern)
                .arg("COUNT")
                .arg(500)
                .to_owned();
            let Some((next, keys)) = self.run::<(u64, Vec<String>)>(&scan).await else {
                return false;
            };
            if !keys.is_empty() {
                let del = ::redis::cmd("DEL").arg(keys).to_owned();
                if self.run::<i64>(&del).await.is_none() {
                    return false;
                }
            }
            if next == 0 {
                return true;
            }
            cursor = next;
        }
    }
}

/// A name inside a SCAN pattern: glob characters escaped unless `wild`.
fn glob_escape(s: &str, wild: bool) -> String {
    if wild {
        return s.to_owned();
    }
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}
