//! Usage rows: one per authenticated request, written in batches by [`super::writer`], and the
//! queries over them (totals by team, key, model and period).
//!
//! A row carries an id made when the request ends, so writing a batch twice (a commit whose
//! answer was lost, a spill file replayed after a partial replay) inserts it once:
//! `INSERT … ON CONFLICT DO NOTHING`, the same syntax on both backends.

use serde::{Deserialize, Serialize};

use super::{civil_from_days, on_pool, Store, StoreError};

/// What one request cost and how it went.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct UsageRow {
    pub id: String,
    /// Request start, ms since the epoch.
    pub ts: i64,
    pub request_id: String,
    pub team: String,
    pub key_id: String,
    pub model: Option<String>,
    pub upstream: Option<String>,
    pub endpoint: String,
    pub stream: bool,
    pub status: u16,
    pub error_kind: Option<String>,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    pub latency_ms: i64,
    pub ttfb_ms: Option<i64>,
    pub cache_hit: bool,
    /// The batch this request was a line of (`batch_…`); `None` for interactive requests.
    /// Absent from spill files written before batches existed.
    #[serde(default)]
    pub batch_id: Option<String>,
}

impl UsageRow {
    /// Time-ordered (UUIDv7): new rows land at the end of the primary key's B-tree instead of
    /// at random places in it, which is most of the insert cost of a random id.
    pub fn new_id() -> String {
        uuid::Uuid::now_v7().simple().to_string()
    }
}

/// Columns per row: PostgreSQL allows 65,535 bind parameters per statement, so a batch is at
/// most 65,535 / 18 rows; [`MAX_BATCH`] stays well below.
const COLS: usize = 18;
pub const MAX_BATCH: usize = 2000;
/// Most rows in one SQLite statement (a power of two, see [`super::sized_chunks`]). Every chunk
/// size stays prepared on each connection, and SQLite's program for an insert grows with its
/// parameters: with chunks of 256 rows (4,608 parameters) each writing connection's SQLite
/// heap (outside the Rust allocator) stood at about 1.4 MiB, with 64 rows at about 0.9 MiB, and
/// 64 rows still amortise a statement's cost over many rows.
const SQLITE_CHUNK: usize = 64;
const _: () = assert!(MAX_BATCH * COLS < 65_535);

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// How to group a usage query.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupBy {
    Team,
    Key,
    Model,
    Day,
}

impl GroupBy {
    pub fn parse(s: &str) -> Option<GroupBy> {
        match s {
            "team" => Some(GroupBy::Team),
            "key" => Some(GroupBy::Key),
            "model" => Some(GroupBy::Model),
            "day" => Some(GroupBy::Day),
            _ => None,
        }
    }
    fn expr(self) -> &'static str {
        match self {
            GroupBy::Team => "team",
            GroupBy::Key => "key_id",
            GroupBy::Model => "COALESCE(model, '-')",
            GroupBy::Day => "CAST(ts / 86400000 AS TEXT)",
        }
    }
}

/// Which rows a usage query covers; `None` fields do not filter. `to` is exclusive.
#[derive(Debug, Clone, Default)]
pub struct UsageFilter {
    pub team: Option<String>,
    pub key_id: Option<String>,
    pub model: Option<String>,
    pub from: Option<i64>,
    pub to: Option<i64>,
    pub group_by: Option<GroupBy>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct Totals {
    pub requests: i64,
    /// Requests answered with a status of 400 or above (499: the client left).
    pub errors: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub key: String,
    #[serde(flatten)]
    pub totals: Totals,
}

#[derive(Debug, Clone, Serialize)]
pub struct UsageReport {
    pub totals: Totals,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub groups: Option<Vec<Group>>,
}

const AGG: &str = "CAST(COUNT(*) AS BIGINT) AS requests, \
    CAST(COALESCE(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), 0) AS BIGINT) AS errors, \
    CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS prompt_tokens, \
    CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS completion_tokens, \
    CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION) AS cost_usd";
const WHERE: &str = "WHERE ($1 IS NULL OR team = $1) AND ($2 IS NULL OR key_id = $2) \
    AND ($3 IS NULL OR model = $3) AND ($4 IS NULL OR ts >= $4) AND ($5 IS NULL OR ts < $5)";

macro_rules! totals_from_row {
    ($r:expr) => {{
        use sqlx::Row;
        Totals {
            requests: $r.try_get("requests")?,
            errors: $r.try_get("errors")?,
            prompt_tokens: $r.try_get("prompt_tokens")?,
            completion_tokens: $r.try_get("completion_tokens")?,
            cost_usd: $r.try_get("cost_usd")?,
        }
    }};
}

/// PostgreSQL: one array per column through `UNNEST` — 18 parameters however many rows, which
/// PostgreSQL parses and binds far faster than a 17,000-parameter `VALUES` list.
async fn insert_usage_pg(p: &sqlx::PgPool, rows: &[UsageRow]) -> Result<(), sqlx::Error> {
    let col = |f: &dyn Fn(&UsageRow) -> String| rows.iter().map(f).collect::<Vec<_>>();
    let opt = |f: &dyn Fn(&UsageRow) -> Option<String>| rows.iter().map(f).collect::<Vec<_>>();
    let int = |f: &dyn Fn(&UsageRow) -> i64| rows.iter().map(f).collect::<Vec<_>>();
    sqlx::query(
        "INSERT INTO usage (id, ts, request_id, team, key_id, model, upstream, endpoint, stream, \
         status, error_kind, prompt_tokens, completion_tokens, cost_usd, latency_ms, ttfb_ms, \
         cache_hit, batch_id) SELECT * FROM UNNEST($1::text[], $2::int8[], $3::text[], \
         $4::text[], $5::text[], $6::text[], $7::text[], $8::text[], $9::int8[], $10::int8[], \
         $11::text[], $12::int8[], $13::int8[], $14::float8[], $15::int8[], $16::int8[], \
         $17::int8[], $18::text[]) \
         ON CONFLICT DO NOTHING",
    )
    .bind(col(&|r| r.id.clone()))
    .bind(int(&|r| r.ts))
    .bind(col(&|r| r.request_id.clone()))
    .bind(col(&|r| r.team.clone()))
    .bind(col(&|r| r.key_id.clone()))
    .bind(opt(&|r| r.model.clone()))
    .bind(opt(&|r| r.upstream.clone()))
    .bind(col(&|r| r.endpoint.clone()))
    .bind(int(&|r| i64::from(r.stream)))
    .bind(int(&|r| i64::from(r.status)))
    .bind(opt(&|r| r.error_kind.clone()))
    .bind(int(&|r| clamp(r.prompt_tokens)))
    .bind(int(&|r| clamp(r.completion_tokens)))
    .bind(rows.iter().map(|r| r.cost_usd).collect::<Vec<f64>>())
    .bind(int(&|r| r.latency_ms))
    .bind(rows.iter().map(|r| r.ttfb_ms).collect::<Vec<Option<i64>>>())
    .bind(int(&|r| i64::from(r.cache_hit)))
    .bind(opt(&|r| r.batch_id.clone()))
    .execute(p)
    .await
    .map(|_| ())
}

impl Store {
    /// Insert a batch in one transaction (one statement on PostgreSQL, chunks of at most
    /// [`SQLITE_CHUNK`] rows in one transaction on SQLite); rows already present are skipped.
    pub async fn insert_usage(&self, rows: &[UsageRow]) -> Result<(), sqlx::Error> {
        if rows.is_empty() {
            return Ok(());
        }
        if let super::Pool::Pg(p) = &self.pool {
            return insert_usage_pg(p, rows).await;
        }
        on_pool!(self, p => {
            let mut tx = p.begin().await?;
            for chunk in super::sized_chunks(rows, SQLITE_CHUNK) {
                let mut qb = sqlx::QueryBuilder::new(
                    "INSERT INTO usage (id, ts, request_id, team, key_id, model, upstream, \
                     endpoint, stream, status, error_kind, prompt_tokens, completion_tokens, \
                     cost_usd, latency_ms, ttfb_ms, cache_hit, batch_id) ",
                );
                qb.push_values(chunk, |mut b, r| {
                    b.push_bind(&r.id)
                        .push_bind(r.ts)
                        .push_bind(&r.request_id)
                        .push_bind(&r.team)
                        .push_bind(&r.key_id)
                        .push_bind(&r.model)
                        .push_bind(&r.upstream)
                        .push_bind(&r.endpoint)
                        .push_bind(i64::from(r.stream))
                        .push_bind(i64::from(r.status))
                        .push_bind(&r.error_kind)
                        .push_bind(clamp(r.prompt_tokens))
                        .push_bind(clamp(r.completion_tokens))
                        .push_bind(r.cost_usd)
                        .push_bind(r.latency_ms)
                        .push_bind(r.ttfb_ms)
                        .push_bind(i64::from(r.cache_hit))
                        .push_bind(&r.batch_id);
                });
                qb.push(" ON CONFLICT DO NOTHING");
                // Kept prepared: power-of-two chunk sizes give at most 9 statement texts.
                qb.build().execute(&mut *tx).await?;
            }
            tx.commit().await
        })
    }

    /// Record when store keys were last used (latest request start per key). Called by the
    /// writer after a batch, never on the request path; config keys have no row and match none.
    pub async fn touch_keys(&self, last_used: &[(String, i64)]) -> Result<(), sqlx::Error> {
        on_pool!(self, p => {
            for (id, ts) in last_used {
                sqlx::query(
                    "UPDATE keys SET last_used_at = $2 WHERE id = $1 \
                     AND (last_used_at IS NULL OR last_used_at < $2)",
                )
                .bind(id)
                .bind(*ts)
                .execute(p)
                .await?;
            }
            Ok(())
        })
    }

    /// Totals (and groups) of the rows `f` selects.
    pub async fn query_usage(&self, f: &UsageFilter) -> Result<UsageReport, StoreError> {
        let totals_sql = format!("SELECT {AGG} FROM usage {WHERE}");
        let totals = on_pool!(self, p => {
            let r = sqlx::query(&totals_sql)
                .bind(&f.team).bind(&f.key_id).bind(&f.model).bind(f.from).bind(f.to)
                .fetch_one(p)
                .await?;
            totals_from_row!(r)
        });
        let Some(g) = f.group_by else {
            return Ok(UsageReport {
                totals,
                groups: None,
            });
        };
        let expr = g.expr();
        let sql = format!(
            "SELECT {expr} AS grp, {AGG} FROM usage {WHERE} GROUP BY {expr} ORDER BY {expr}"
        );
        let mut groups = on_pool!(self, p => {
            use sqlx::Row;
            let rows = sqlx::query(&sql)
                .bind(&f.team).bind(&f.key_id).bind(&f.model).bind(f.from).bind(f.to)
                .fetch_all(p)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(Group { key: r.try_get("grp")?, totals: totals_from_row!(r) });
            }
            out
        });
        if g == GroupBy::Day {
            for grp in &mut groups {
                if let Ok(day) = grp.key.parse::<i64>() {
                    grp.key = civil_from_days(day);
                }
            }
        }
        Ok(UsageReport {
            totals,
            groups: Some(groups),
        })
    }

    /// Every request id with a usage row (tests: "every completed request has its row").
    pub async fn usage_request_ids(
        &self,
    ) -> Result<std::collections::HashSet<String>, sqlx::Error> {
        on_pool!(self, p => {
            let ids: Vec<String> = sqlx::query_scalar("SELECT request_id FROM usage")
                .fetch_all(p)
                .await?;
            Ok(ids.into_iter().collect())
        })
    }

    /// How many usage rows there are (tests and benchmarks).
    pub async fn count_usage(&self) -> Result<i64, sqlx::Error> {
        on_pool!(self, p => {
            sqlx::query_scalar::<_, i64>("SELECT CAST(COUNT(*) AS BIGINT) FROM usage")
                .fetch_one(p)
                .await
        })
    }
}
