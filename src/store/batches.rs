//! Batches and their lines in the store: the batch rows the Batch API shows, and the line
//! table the worker leases from and records results into.
//!
//! Exactly-once results come from three rules, all enforced in SQL so that any number of
//! gateways sharing the store can work on one batch:
//! 1. a line is leased to one gateway (`lease_owner`, `lease_until`); PostgreSQL picks free
//!    lines with `FOR UPDATE SKIP LOCKED`, so two replicas never lease the same line, and an
//!    expired lease (a dead replica) is free again; SQLite has one writer at a time;
//! 2. a result is recorded only by the line's current lease holder while its lease is live, in
//!    the same transaction that marks the line done and counts it in the batch
//!    ([`Store::finish_line`]); a line done once is never done again;
//! 3. a batch's validation and finalization are leased the same way ([`Store::claim_batch`]).
//!
//! This module does not read files, call upstreams or decide what a result is: that is `batch`.

use serde::Serialize;
use sqlx::Row;

use super::{on_pool, Pool, Store, StoreError};

/// A batch as stored. Times are milliseconds since the epoch.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BatchRecord {
    /// `batch_` + a time-ordered hex id.
    pub id: String,
    pub team: String,
    pub key_id: String,
    pub endpoint: String,
    pub input_file_id: String,
    pub completion_window: String,
    pub status: String,
    /// JSON object text.
    pub metadata: Option<String>,
    /// JSON array text of validation errors.
    pub errors: Option<String>,
    pub output_file_id: Option<String>,
    pub error_file_id: Option<String>,
    pub total: i64,
    pub completed: i64,
    pub failed: i64,
    pub created_at: i64,
    pub in_progress_at: Option<i64>,
    pub expires_at: i64,
    pub finalizing_at: Option<i64>,
    pub completed_at: Option<i64>,
    pub failed_at: Option<i64>,
    pub expired_at: Option<i64>,
    pub cancelling_at: Option<i64>,
    pub cancelled_at: Option<i64>,
}

impl BatchRecord {
    pub fn new_id() -> String {
        format!("batch_{}", uuid::Uuid::now_v7().simple())
    }
}

/// A line of an input file that passed validation, as the worker will find it.
#[derive(Debug, Clone, PartialEq)]
pub struct NewLine {
    pub line: i64,
    pub custom_id: String,
    pub offset: i64,
    pub len: i64,
}

/// A line leased to this gateway.
#[derive(Debug, Clone, PartialEq)]
pub struct LeasedLine {
    pub line: i64,
    pub custom_id: String,
    pub offset: i64,
    pub len: i64,
    /// Upstream failures so far.
    pub attempts: i64,
}

/// A recorded line, as finalization reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct LineResult {
    pub line: i64,
    pub custom_id: String,
    /// `None`: not done (a cancelled or expired batch).
    pub failed: Option<bool>,
    pub result: Option<String>,
}

const COLS: &str = "id, team, key_id, endpoint, input_file_id, completion_window, status, \
    metadata, errors, output_file_id, error_file_id, total_count, completed_count, failed_count, \
    created_at, in_progress_at, expires_at, finalizing_at, completed_at, failed_at, expired_at, \
    cancelling_at, cancelled_at";

/// Statuses in which a batch still has work for the worker.
pub const ACTIVE: &str = "('validating', 'in_progress', 'finalizing', 'cancelling')";

macro_rules! batch_from_row {
    ($r:expr) => {
        BatchRecord {
            id: $r.try_get("id")?,
            team: $r.try_get("team")?,
            key_id: $r.try_get("key_id")?,
            endpoint: $r.try_get("endpoint")?,
            input_file_id: $r.try_get("input_file_id")?,
            completion_window: $r.try_get("completion_window")?,
            status: $r.try_get("status")?,
            metadata: $r.try_get("metadata")?,
            errors: $r.try_get("errors")?,
            output_file_id: $r.try_get("output_file_id")?,
            error_file_id: $r.try_get("error_file_id")?,
            total: $r.try_get("total_count")?,
            completed: $r.try_get("completed_count")?,
            failed: $r.try_get("failed_count")?,
            created_at: $r.try_get("created_at")?,
            in_progress_at: $r.try_get("in_progress_at")?,
            expires_at: $r.try_get("expires_at")?,
            finalizing_at: $r.try_get("finalizing_at")?,
            completed_at: $r.try_get("completed_at")?,
            failed_at: $r.try_get("failed_at")?,
            expired_at: $r.try_get("expired_at")?,
            cancelling_at: $r.try_get("cancelling_at")?,
            cancelled_at: $r.try_get("cancelled_at")?,
        }
    };
}

/// Rows per INSERT of lines (a power of two, see [`super::sized_chunks`]): 4 columns bound each,
/// far below both backends' parameter limits.
const LINE_CHUNK: usize = 512;

impl Store {
    pub async fn insert_batch(&self, b: &BatchRecord) -> Result<(), StoreError> {
        on_pool!(self, p => {
            sqlx::query(
                "INSERT INTO batches (id, team, key_id, endpoint, input_file_id, \
                 completion_window, status, metadata, total_count, completed_count, \
                 failed_count, created_at, expires_at) \
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, 0, 0, $9, $10)",
            )
            .bind(&b.id)
            .bind(&b.team)
            .bind(&b.key_id)
            .bind(&b.endpoint)
            .bind(&b.input_file_id)
            .bind(&b.completion_window)
            .bind(&b.status)
            .bind(&b.metadata)
            .bind(b.created_at)
            .bind(b.expires_at)
            .execute(p)
            .await?;
            Ok(())
        })
    }

    /// The batch `id` if `team` owns it (`None`: any team).
    pub async fn get_batch(
        &self,
        team: Option<&str>,
        id: &str,
    ) -> Result<Option<BatchRecord>, StoreError> {
        let sql = format!("SELECT {COLS} FROM batches WHERE id = $1 AND ($2 IS NULL OR team = $2)");
        on_pool!(self, p => {
            match sqlx::query(&sql).bind(id).bind(team).fetch_optional(p).await? {
                Some(r) => Ok(Some(batch_from_row!(r))),
                None => Ok(None),
            }
        })
    }

    /// Batches newest first after the cursor `after` (a batch id), at most `limit`; one team's
    /// or (`None`) every team's.
    pub async fn list_batches(
        &self,
        team: Option<&str>,
        after: Option<&str>,
        limit: i64,
    ) -> Result<Vec<BatchRecord>, StoreError> {
        let sql = format!(
            "SELECT {COLS} FROM batches WHERE ($1 IS NULL OR team = $1) \
             AND ($2 IS NULL OR id < $2) ORDER BY id DESC LIMIT $3"
        );
        on_pool!(self, p => {
            let rows = sqlx::query(&sql).bind(team).bind(after).bind(limit).fetch_all(p).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(batch_from_row!(r));
            }
            Ok(out)
        })
    }

    /// Batches with work left, oldest first.
    pub async fn active_batches(&self) -> Result<Vec<BatchRecord>, StoreError> {
        let sql = format!("SELECT {COLS} FROM batches WHERE status IN {ACTIVE} ORDER BY id");
        on_pool!(self, p => {
            let rows = sqlx::query(&sql).fetch_all(p).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(batch_from_row!(r));
            }
            Ok(out)
        })
    }

    /// Ask to cancel: a validating or running batch becomes `cancelling`. Returns the batch
    /// (unchanged when it had already ended), `None` if `team` has no such batch.
    pub async fn cancel_batch(
        &self,
        team: &str,
        id: &str,
        now: i64,
    ) -> Result<Option<BatchRecord>, StoreError> {
        on_pool!(self, p => {
            sqlx::query(
                "UPDATE batches SET status = 'cancelling', cancelling_at = $3 \
                 WHERE id = $1 AND team = $2 AND status IN ('validating', 'in_progress')",
            )
            .bind(id)
            .bind(team)
            .bind(now)
            .execute(p)
            .await
            .map(|_| ())
        })?;
        self.get_batch(Some(team), id).await
    }

    /// Lease batch `id` in `status` (validating, finalizing or cancelling) to `owner` until
    /// `until`, if no other gateway holds a live lease on it. For `cancelling`, only once no
    /// line of it is still leased (in flight somewhere).
    pub async fn claim_batch(
        &self,
        id: &str,
        status: &str,
        owner: &str,
        now: i64,
        until: i64,
    ) -> Result<bool, StoreError> {
        on_pool!(self, p => {
            let done = sqlx::query(
                "UPDATE batches SET lease_owner = $3, lease_until = $5 \
                 WHERE id = $1 AND status = $2 \
                 AND (lease_owner IS NULL OR lease_owner = $3 OR lease_until < $4) \
                 AND ($2 <> 'cancelling' OR NOT EXISTS (SELECT 1 FROM batch_lines \
                      WHERE batch_id = $1 AND done = 0 AND lease_owner IS NOT NULL \
                      AND lease_until >= $4))",
            )
            .bind(id)
            .bind(status)
            .bind(owner)
            .bind(now)
            .bind(until)
            .execute(p)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Record a validated input's lines (idempotent: a takeover may insert them again), then
    /// start the batch: `validating` -> `in_progress`. False if the batch was cancelled or
    /// taken over meanwhile.
    pub async fn start_batch(
        &self,
        id: &str,
        owner: &str,
        lines: &[NewLine],
        now: i64,
    ) -> Result<bool, StoreError> {
        on_pool!(self, p => {
            for chunk in super::sized_chunks(lines, LINE_CHUNK) {
                let mut qb = sqlx::QueryBuilder::new(
                    "INSERT INTO batch_lines (batch_id, line, custom_id, byte_offset, byte_len, \
                     done, attempts) ",
                );
                qb.push_values(chunk, |mut b, l| {
                    b.push_bind(id)
                        .push_bind(l.line)
                        .push_bind(&l.custom_id)
                        .push_bind(l.offset)
                        .push_bind(l.len)
                        .push("0, 0");
                });
                qb.push(" ON CONFLICT DO NOTHING");
                // Kept prepared: power-of-two chunk sizes give at most 10 statement texts.
                qb.build().execute(p).await?;
            }
            let done = sqlx::query(
                "UPDATE batches SET status = 'in_progress', in_progress_at = $3, \
                 total_count = $4, lease_owner = NULL, lease_until = NULL \
                 WHERE id = $1 AND status = 'validating' AND lease_owner = $2",
            )
            .bind(id)
            .bind(owner)
            .bind(now)
            .bind(lines.len() as i64)
            .execute(p)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// End a batch whose input failed validation: `failed`, with its errors (JSON array).
    pub async fn fail_batch(
        &self,
        id: &str,
        owner: &str,
        errors: &str,
        now: i64,
    ) -> Result<bool, StoreError> {
        on_pool!(self, p => {
            let done = sqlx::query(
                "UPDATE batches SET status = 'failed', failed_at = $3, errors = $4, \
                 lease_owner = NULL, lease_until = NULL \
                 WHERE id = $1 AND status = 'validating' AND lease_owner = $2",
            )
            .bind(id)
            .bind(owner)
            .bind(now)
            .bind(errors)
            .execute(p)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Lease up to `n` free lines of a running batch to `owner`, lowest line numbers first.
    pub async fn claim_lines(
        &self,
        batch_id: &str,
        owner: &str,
        n: i64,
        now: i64,
        until: i64,
    ) -> Result<Vec<LeasedLine>, StoreError> {
        // PostgreSQL: rows another replica is claiming right now are skipped, not waited for.
        let lock = match self.pool {
            Pool::Pg(_) => " FOR UPDATE SKIP LOCKED",
            Pool::Sqlite(_) => "",
        };
        // The picked lines are a materialized CTE: evaluated once. As a plain `IN (subquery)`
        // PostgreSQL may run the subquery again per row, each run skipping the rows just
        // locked, and lease more lines than asked for.
        let sql = format!(
            "WITH picked AS MATERIALIZED (SELECT line FROM batch_lines \
               WHERE batch_id = $1 AND done = 0 AND (lease_until IS NULL OR lease_until < $4) \
               ORDER BY line LIMIT $3{lock}) \
             UPDATE batch_lines SET lease_owner = $2, lease_until = $5 \
             WHERE batch_id = $1 AND line IN (SELECT line FROM picked) \
             AND done = 0 AND (lease_until IS NULL OR lease_until < $4) \
             AND EXISTS (SELECT 1 FROM batches WHERE id = $1 AND status = 'in_progress') \
             RETURNING line, custom_id, byte_offset, byte_len, attempts"
        );
        on_pool!(self, p => {
            let rows = sqlx::query(&sql)
                .bind(batch_id)
                .bind(owner)
                .bind(n)
                .bind(now)
                .bind(until)
                .fetch_all(p)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(LeasedLine {
                    line: r.try_get("line")?,
                    custom_id: r.try_get("custom_id")?,
                    offset: r.try_get("byte_offset")?,
                    len: r.try_get("byte_len")?,
                    attempts: r.try_get("attempts")?,
                });
            }
            out.sort_by_key(|l| l.line);
            Ok(out)
        })
    }

    /// Extend every lease `owner` holds (lines and batches) to `until`.
    pub async fn renew_leases(&self, owner: &str, until: i64) -> Result<(), StoreError> {
        on_pool!(self, p => {
            sqlx::query(
                "UPDATE batch_lines SET lease_until = $2 WHERE lease_owner = $1 AND done = 0",
            )
            .bind(owner)
            .bind(until)
            .execute(p)
            .await?;
            sqlx::query("UPDATE batches SET lease_until = $2 WHERE lease_owner = $1")
                .bind(owner)
                .bind(until)
                .execute(p)
                .await?;
            Ok(())
        })
    }

    /// Give a leased line back, to be tried again after `not_before`, with its attempt count.
    pub async fn release_line(
        &self,
        batch_id: &str,
        line: i64,
        owner: &str,
        not_before: i64,
        attempts: i64,
    ) -> Result<(), StoreError> {
        on_pool!(self, p => {
            sqlx::query(
                "UPDATE batch_lines SET lease_owner = NULL, lease_until = $4, attempts = $5 \
                 WHERE batch_id = $1 AND line = $2 AND lease_owner = $3 AND done = 0",
            )
            .bind(batch_id)
            .bind(line)
            .bind(owner)
            .bind(not_before)
            .bind(attempts)
            .execute(p)
            .await?;
            Ok(())
        })
    }

    /// Give back every line `owner` holds (a gateway stopping): others may take them at once.
    pub async fn release_all(&self, owner: &str) -> Result<(), StoreError> {
        on_pool!(self, p => {
            sqlx::query(
                "UPDATE batch_lines SET lease_owner = NULL, lease_until = NULL \
                 WHERE lease_owner = $1 AND done = 0",
            )
            .bind(owner)
            .execute(p)
            .await?;
            sqlx::query(
                "UPDATE batches SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = $1",
            )
            .bind(owner)
            .execute(p)
            .await?;
            Ok(())
        })
    }

    /// Record a line's result (its output or error file line) and count it, in one
    /// transaction, if `owner` still holds its live lease. False: someone else owns the line
    /// now (or it is done), and this result is dropped.
    #[allow(clippy::too_many_arguments)]
    pub async fn finish_line(
        &self,
        batch_id: &str,
        line: i64,
        owner: &str,
        now: i64,
        failed: bool,
        error_kind: Option<&str>,
        result: &str,
    ) -> Result<bool, StoreError> {
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            let done = sqlx::query(
                "UPDATE batch_lines SET done = 1, failed = $5, error_kind = $6, result = $7, \
                 lease_owner = NULL, lease_until = NULL \
                 WHERE batch_id = $1 AND line = $2 AND lease_owner = $3 AND lease_until >= $4 \
                 AND done = 0 AND EXISTS (SELECT 1 FROM batches WHERE id = $1 \
                 AND status IN ('in_progress', 'cancelling'))",
            )
            .bind(batch_id)
            .bind(line)
            .bind(owner)
            .bind(now)
            .bind(i64::from(failed))
            .bind(error_kind)
            .bind(result)
            .execute(&mut *tx)
            .await?;
            if done.rows_affected() != 1 {
                return Ok(false);
            }
            let (c, f) = if failed { (0i64, 1i64) } else { (1, 0) };
            sqlx::query(
                "UPDATE batches SET completed_count = completed_count + $2, \
                 failed_count = failed_count + $3 WHERE id = $1",
            )
            .bind(batch_id)
            .bind(c)
            .bind(f)
            .execute(&mut *tx)
            .await?;
            tx.commit().await?;
            Ok(true)
        })
    }

    /// A running batch with no line left to do moves to `finalizing`.
    pub async fn to_finalizing(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        on_pool!(self, p => {
            let done = sqlx::query(
                "UPDATE batches SET status = 'finalizing', finalizing_at = $2 \
                 WHERE id = $1 AND status = 'in_progress' \
                 AND NOT EXISTS (SELECT 1 FROM batch_lines WHERE batch_id = $1 AND done = 0)",
            )
            .bind(id)
            .bind(now)
            .execute(p)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// A running batch past its completion window moves to `finalizing`, marked expired.
    pub async fn to_expiring(&self, id: &str, now: i64) -> Result<bool, StoreError> {
        on_pool!(self, p => {
            let done = sqlx::query(
                "UPDATE batches SET status = 'finalizing', finalizing_at = $2, expired_at = $2 \
                 WHERE id = $1 AND status = 'in_progress' AND expires_at < $2",
            )
            .bind(id)
            .bind(now)
            .execute(p)
            .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Up to `n` lines after line `after`, in order, done or not.
    pub async fn line_results(
        &self,
        batch_id: &str,
        after: i64,
        n: i64,
    ) -> Result<Vec<LineResult>, StoreError> {
        on_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT line, custom_id, done, failed, result FROM batch_lines \
                 WHERE batch_id = $1 AND line > $2 ORDER BY line LIMIT $3",
            )
            .bind(batch_id)
            .bind(after)
            .bind(n)
            .fetch_all(p)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let done: i64 = r.try_get("done")?;
                let failed: Option<i64> = r.try_get("failed")?;
                out.push(LineResult {
                    line: r.try_get("line")?,
                    custom_id: r.try_get("custom_id")?,
                    failed: (done == 1).then_some(failed == Some(1)),
                    result: r.try_get("result")?,
                });
            }
            Ok(out)
        })
    }

    /// End a finalizing (or cancelling) batch held by `owner`: its final status and files.
    pub async fn end_batch(
        &self,
        id: &str,
        owner: &str,
        status: &str,
        output_file_id: Option<&str>,
        error_file_id: Option<&str>,
        now: i64,
    ) -> Result<bool, StoreError> {
        let at = match status {
            "completed" => "completed_at",
            "cancelled" => "cancelled_at",
            _ => "expired_at",
        };
        let sql = format!(
            "UPDATE batches SET status = $3, output_file_id = $4, error_file_id = $5, \
             {at} = COALESCE({at}, $6), lease_owner = NULL, lease_until = NULL \
             WHERE id = $1 AND lease_owner = $2 AND status IN ('finalizing', 'cancelling')"
        );
        on_pool!(self, p => {
            let done = sqlx::query(&sql)
                .bind(id)
                .bind(owner)
                .bind(status)
                .bind(output_file_id)
                .bind(error_file_id)
                .bind(now)
                .execute(p)
                .await?;
            Ok(done.rows_affected() == 1)
        })
    }

    /// Failed lines of a batch by error kind, most frequent first.
    pub async fn batch_errors_by_kind(
        &self,
        batch_id: &str,
    ) -> Result<Vec<(String, i64)>, StoreError> {
        on_pool!(self, p => {
            let rows = sqlx::query(
                "SELECT COALESCE(error_kind, 'unknown') AS kind, CAST(COUNT(*) AS BIGINT) AS n \
                 FROM batch_lines WHERE batch_id = $1 AND done = 1 AND failed = 1 \
                 GROUP BY COALESCE(error_kind, 'unknown') ORDER BY n DESC",
            )
            .bind(batch_id)
            .fetch_all(p)
            .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push((r.try_get("kind")?, r.try_get("n")?));
            }
            Ok(out)
        })
    }

    /// Spend of a batch's lines so far, from the usage rows written (USD, requests, tokens).
    pub async fn batch_spend(&self, batch_id: &str) -> Result<super::usage::Totals, StoreError> {
        on_pool!(self, p => {
            let r = sqlx::query(
                "SELECT CAST(COUNT(*) AS BIGINT) AS requests, \
                 CAST(COALESCE(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), 0) AS BIGINT) AS errors, \
                 CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS prompt_tokens, \
                 CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS completion_tokens, \
                 CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION) AS cost_usd \
                 FROM usage WHERE batch_id = $1",
            )
            .bind(batch_id)
            .fetch_one(p)
            .await?;
            Ok(super::usage::Totals {
                requests: r.try_get("requests")?,
                errors: r.try_get("errors")?,
                prompt_tokens: r.try_get("prompt_tokens")?,
                completion_tokens: r.try_get("completion_tokens")?,
                cost_usd: r.try_get("cost_usd")?,
            })
        })
    }
}
