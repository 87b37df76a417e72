//! `GET /admin/usage/series` (spend and requests per hour or day, per team or model) and
//! `GET /admin/usage/errors` (the latest failed requests): read from the usage rows by
//! [`crate::store::series`]; the console's charts and errors page are drawn from them.

use std::collections::HashMap;

use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::store;
use crate::error::ApiError;
use crate::state::AppState;
use crate::store::series::{SeriesBy, SeriesQuery, MAX_BUCKETS};
use crate::store::{now_ms, parse_time};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 86_400_000;

/// Read `bucket` (`hour`, default, or `day`), `group_by` (`model`, default, or `team`), `from`
/// (default: 24 buckets back for hours, 30 for days), `to` (default now), `team`, `model`.
fn series_query(q: &HashMap<String, String>) -> Result<SeriesQuery, ApiError> {
    let bucket = q.get("bucket").map_or("hour", String::as_str);
    let (bucket_ms, span) = match bucket {
        "hour" => (HOUR_MS, 24),
        "day" => (DAY_MS, 30),
        _ => {
            return Err(ApiError::invalid(
                "bucket must be hour or day",
                Some("bucket"),
            ))
        }
    };
    let by = match q.get("group_by") {
        None => SeriesBy::Model,
        Some(g) => SeriesBy::parse(g)
            .ok_or_else(|| ApiError::invalid("group_by must be team or model", Some("group_by")))?,
    };
    let time = |k: &str| -> Result<Option<i64>, ApiError> {
        q.get(k)
            .map(|v| parse_time(v).map_err(|e| ApiError::invalid(e, Some(k))))
            .transpose()
    };
    let to = time("to")?.unwrap_or_else(now_ms);
    // Whole buckets: from the start of the bucket `span - 1` before the one `to` falls in.
    let from = time("from")?.unwrap_or((to / bucket_ms - (span - 1)) * bucket_ms);
    if from >= to {
        return Err(ApiError::invalid("from must be before to", Some("from")));
    }
    if (to - from) / bucket_ms > MAX_BUCKETS {
        return Err(ApiError::invalid(
            format!("at most {MAX_BUCKETS} buckets: narrow from/to or use bucket=day"),
            Some("from"),
        ));
    }
    Ok(SeriesQuery {
        by,
        bucket_ms,
        from,
        to,
        team: q.get("team").cloned(),
        model: q.get("model").cloned(),
    })
}

pub(super) async fn usage_series(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let h = store(&s)?;
    let sq = series_query(&q)?;
    let series = h.db.usage_series(&sq).await?;
    Ok(Json(json!({
        "bucket_ms": sq.bucket_ms,
        "from": sq.from,
        "to": sq.to,
        "group_by": match sq.by { SeriesBy::Team => "team", SeriesBy::Model => "model" },
        "series": series,
    }))
    .into_response())
}

/// `?limit=` (1 to 500, default 50).
pub(super) async fn recent_errors(
    State(s): State<AppState>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let h = store(&s)?;
    let limit = q
        .get("limit")
        .map(|l| {
            l.parse::<i64>()
                .map_err(|_| ApiError::invalid("limit must be a number", Some("limit")))
        })
        .transpose()?
        .unwrap_or(50);
    let data = h.db.recent_errors(limit).await?;
    Ok(Json(json!({"object": "list", "data": data})).into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn defaults_span_whole_buckets_up_to_now() {
        let sq = series_query(&q(&[("to", "1700000000")])).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(sq.bucket_ms, HOUR_MS);
        assert_eq!(sq.from % HOUR_MS, 0);
        assert_eq!((sq.to - sq.from) / HOUR_MS, 23);
        assert_eq!(sq.by, SeriesBy::Model);
    }

    #[test]
    fn bad_parameters_name_themselves() {
        for (pairs, param) in [
            (vec![("bucket", "week")], "bucket"),
            (vec![("group_by", "key")], "group_by"),
            (vec![("from", "2024-01-02"), ("to", "2024-01-01")], "from"),
            (vec![("from", "2000-01-01"), ("to", "2024-01-01")], "from"),
        ] {
            match series_query(&q(&pairs)) {
                Err(ApiError::InvalidRequest { param: Some(p), .. }) => assert_eq!(p, param),
                other => panic!("{pairs:?}: {other:?}"),
            }
        }
    }
}
