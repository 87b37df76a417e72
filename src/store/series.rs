//! Usage over time and recent failures, read from the usage rows: what the console's charts and
//! its errors page show (through the admin API).
//!
//! Buckets are fixed widths of UTC time (an hour, a day) computed in SQL by integer division of
//! the row's start time, one query for both backends (`GROUP BY 1, 2` and `CAST(… AS BIGINT)`
//! read the same on SQLite and PostgreSQL). Only buckets with rows come back; a reader fills the
//! gaps. The time range is bounded by the caller ([`MAX_BUCKETS`]) and served by the `usage_ts`
//! index.

use serde::Serialize;

use super::usage::Totals;
use super::{on_pool, Store, StoreError};

/// Most buckets one series query may span.
pub const MAX_BUCKETS: i64 = 2000;
/// Most rows one recent-errors query returns.
pub const MAX_ERRORS: i64 = 500;

/// What a series is split by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeriesBy {
    Team,
    Model,
}

impl SeriesBy {
    pub fn parse(s: &str) -> Option<SeriesBy> {
        match s {
            "team" => Some(SeriesBy::Team),
            "model" => Some(SeriesBy::Model),
            _ => None,
        }
    }
    fn expr(self) -> &'static str {
        match self {
            SeriesBy::Team => "team",
            SeriesBy::Model => "COALESCE(model, '-')",
        }
    }
}

/// Which rows, split how, in buckets of what width. `to` is exclusive.
#[derive(Debug, Clone)]
pub struct SeriesQuery {
    pub by: SeriesBy,
    pub bucket_ms: i64,
    pub from: i64,
    pub to: i64,
    pub team: Option<String>,
    pub model: Option<String>,
}

/// One bucket of one series: its start (ms since the epoch) and its totals.
#[derive(Debug, Clone, Serialize)]
pub struct Point {
    pub t: i64,
    #[serde(flatten)]
    pub totals: Totals,
}

/// The points of one team or model, oldest first.
#[derive(Debug, Clone, Serialize)]
pub struct Series {
    pub key: String,
    pub points: Vec<Point>,
}

/// A failed request as its usage row tells it.
#[derive(Debug, Clone, Serialize)]
pub struct Failure {
    pub ts: i64,
    pub request_id: String,
    pub team: String,
    pub key_id: String,
    pub model: Option<String>,
    pub upstream: Option<String>,
    pub endpoint: String,
    pub status: i64,
    pub error_kind: Option<String>,
    pub latency_ms: i64,
}

const AGG: &str = "CAST(COUNT(*) AS BIGINT) AS requests, \
    CAST(COALESCE(SUM(CASE WHEN status >= 400 THEN 1 ELSE 0 END), 0) AS BIGINT) AS errors, \
    CAST(COALESCE(SUM(prompt_tokens), 0) AS BIGINT) AS prompt_tokens, \
    CAST(COALESCE(SUM(completion_tokens), 0) AS BIGINT) AS completion_tokens, \
    CAST(COALESCE(SUM(cost_usd), 0) AS DOUBLE PRECISION) AS cost_usd";

impl Store {
    /// Totals per bucket per team or model over `[from, to)`.
    pub async fn usage_series(&self, q: &SeriesQuery) -> Result<Vec<Series>, StoreError> {
        let expr = q.by.expr();
        let sql = format!(
            "SELECT CAST(ts / $1 AS BIGINT) AS bucket, {expr} AS grp, {AGG} FROM usage \
             WHERE ts >= $2 AND ts < $3 AND ($4 IS NULL OR team = $4) \
             AND ($5 IS NULL OR model = $5) GROUP BY 1, 2 ORDER BY 2, 1"
        );
        let rows: Vec<(String, Point)> = on_pool!(self, p => {
            use sqlx::Row;
            let rows = sqlx::query(&sql)
                .bind(q.bucket_ms).bind(q.from).bind(q.to).bind(&q.team).bind(&q.model)
                .fetch_all(p)
                .await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                let bucket: i64 = r.try_get("bucket")?;
                let totals = Totals {
                    requests: r.try_get("requests")?,
                    errors: r.try_get("errors")?,
                    prompt_tokens: r.try_get("prompt_tokens")?,
                    completion_tokens: r.try_get("completion_tokens")?,
                    cost_usd: r.try_get("cost_usd")?,
                };
                out.push((r.try_get("grp")?, Point { t: bucket * q.bucket_ms, totals }));
            }
            out
        });
        let mut series: Vec<Series> = Vec::new();
        for (key, point) in rows {
            match series.last_mut() {
                Some(s) if s.key == key => s.points.push(point),
                _ => series.push(Series {
                    key,
                    points: vec![point],
                }),
            }
        }
        Ok(series)
    }

    /// The latest failed requests (status 400 or above), newest first, at most `limit`.
    pub async fn recent_errors(&self, limit: i64) -> Result<Vec<Failure>, StoreError> {
        let sql = "SELECT ts, request_id, team, key_id, model, upstream, endpoint, status, \
                   error_kind, latency_ms FROM usage WHERE status >= 400 \
                   ORDER BY ts DESC LIMIT $1";
        let limit = limit.clamp(1, MAX_ERRORS);
        Ok(on_pool!(self, p => {
            use sqlx::Row;
            let rows = sqlx::query(sql).bind(limit).fetch_all(p).await?;
            let mut out = Vec::with_capacity(rows.len());
            for r in &rows {
                out.push(Failure {
                    ts: r.try_get("ts")?,
                    request_id: r.try_get("request_id")?,
                    team: r.try_get("team")?,
                    key_id: r.try_get("key_id")?,
                    model: r.try_get("model")?,
                    upstream: r.try_get("upstream")?,
                    endpoint: r.try_get("endpoint")?,
                    status: r.try_get("status")?,
                    error_kind: r.try_get("error_kind")?,
                    latency_ms: r.try_get("latency_ms")?,
                });
            }
            out
        }))
    }
}
