//! The soak's billing check: after the gateway has stopped (its usage writer flushed), every
//! usage row is read back, from the SQLite store and from the writer's spill files, and held
//! against the requests the soak sent.
//!
//! Rows are counted once per row id (a spilled row replayed into the store is the same row);
//! two rows for one request id are a double bill. A row is due for every request the gateway
//! accepted, i.e. whose caller it identified (see `proxy/ledger.rs`): every answer except a
//! refusal of the client key.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::ConnectOptions;

/// Usage rows by request id, each row counted once.
#[derive(Debug, Default)]
pub struct Billed {
    /// request id -> rows billed for it.
    pub per_request: HashMap<String, u32>,
    /// Rows read from the store.
    pub in_store: usize,
    /// Rows read from spill files that the store did not have.
    pub spilled_only: usize,
}

impl Billed {
    pub fn rows(&self) -> usize {
        self.per_request.values().map(|&n| n as usize).sum()
    }
}

/// Read every usage row from the store at `db` and the spill file `spill` (and its
/// `.replay-*` siblings).
pub async fn read(db: &Path, spill: &Path) -> Result<Billed> {
    let mut seen: HashSet<String> = HashSet::new();
    let mut billed = Billed::default();
    for (id, request_id) in store_rows(db).await? {
        if seen.insert(id) {
            *billed.per_request.entry(request_id).or_default() += 1;
            billed.in_store += 1;
        }
    }
    for file in spill_files(spill) {
        let text =
            std::fs::read_to_string(&file).with_context(|| format!("read {}", file.display()))?;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            let row: serde_json::Value = serde_json::from_str(line)
                .with_context(|| format!("a spilled row in {}", file.display()))?;
            let field = |k: &str| row.get(k).and_then(|v| v.as_str()).map(str::to_owned);
            let (Some(id), Some(request_id)) = (field("id"), field("request_id")) else {
                continue;
            };
            if seen.insert(id) {
                *billed.per_request.entry(request_id).or_default() += 1;
                billed.spilled_only += 1;
            }
        }
    }
    Ok(billed)
}

async fn store_rows(db: &Path) -> Result<Vec<(String, String)>> {
    let mut conn = SqliteConnectOptions::new()
        .filename(db)
        .read_only(true)
        .connect()
        .await
        .with_context(|| format!("open {}", db.display()))?;
    sqlx::query_as::<_, (String, String)>("SELECT id, request_id FROM usage")
        .fetch_all(&mut conn)
        .await
        .context("read the usage table")
}

/// `spill` itself and the files moved aside for replay (`<name>.replay-*`).
fn spill_files(spill: &Path) -> Vec<PathBuf> {
    let (Some(dir), Some(name)) = (spill.parent(), spill.file_name()) else {
        return Vec::new();
    };
    let prefix = format!("{}.replay-", name.to_string_lossy());
    let mut out: Vec<PathBuf> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&prefix))
                })
                .collect()
        })
        .unwrap_or_default();
    if spill.is_file() {
        out.push(spill.to_path_buf());
    }
    out
}

/// What the rows say against what was sent.
#[derive(Debug, Default)]
pub struct Reconciled {
    /// Accepted requests (a row is due for each).
    pub accepted: usize,
    /// Accepted requests without a row.
    pub missing: usize,
    /// Requests with more than one row.
    pub billed_twice: usize,
    /// Rows for requests the soak never sent, or that were refused before authentication.
    pub unexpected: usize,
    /// Requests without any answer that were billed anyway (allowed: the gateway saw them).
    pub unanswered_billed: usize,
}

/// What the soak knows of one request it sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sent {
    /// Answered after the gateway identified the caller: one row is due.
    Accepted,
    /// Refused before authentication: no row is due.
    Refused,
    /// No terminal answer: zero or one row.
    Unanswered,
}

/// Hold the rows against `sent` (request id -> what the client saw).
pub fn reconcile(billed: &Billed, sent: &HashMap<String, Sent>) -> Reconciled {
    let mut r = Reconciled::default();
    for (id, what) in sent {
        let rows = billed.per_request.get(id).copied().unwrap_or(0);
        if rows > 1 {
            r.billed_twice += 1;
        }
        match what {
            Sent::Accepted => {
                r.accepted += 1;
                r.missing += usize::from(rows == 0);
            }
            Sent::Refused => r.unexpected += rows as usize,
            Sent::Unanswered => r.unanswered_billed += usize::from(rows > 0),
        }
    }
    r.unexpected += billed
        .per_request
        .iter()
        .filter(|(id, _)| !sent.contains_key(*id))
        .map(|(_, &n)| n as usize)
        .sum::<usize>();
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_are_held_against_what_was_sent() {
        let billed = Billed {
            per_request: [("a", 1), ("b", 2), ("d", 1), ("x", 1)]
                .into_iter()
                .map(|(k, n)| (k.to_owned(), n))
                .collect(),
            ..Billed::default()
        };
        let sent: HashMap<String, Sent> = [
            ("a", Sent::Accepted),
            ("b", Sent::Accepted),
            ("c", Sent::Accepted),
            ("d", Sent::Unanswered),
            ("e", Sent::Refused),
        ]
        .into_iter()
        .map(|(k, s)| (k.to_owned(), s))
        .collect();
        let r = reconcile(&billed, &sent);
        assert_eq!(r.accepted, 3);
        assert_eq!(r.missing, 1, "c");
        assert_eq!(r.billed_twice, 1, "b");
        assert_eq!(r.unexpected, 1, "x");
        assert_eq!(r.unanswered_billed, 1, "d");
        assert_eq!(billed.rows(), 5);
    }
}
