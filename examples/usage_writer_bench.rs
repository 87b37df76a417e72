//! The usage writer's sustained rows per second, on SQLite or PostgreSQL.
//!
//! ```text
//! cargo run --release --example usage_writer_bench -- --store sqlite [--rows 200000]
//! cargo run --release --example usage_writer_bench -- --store postgres [--url postgres://…]
//! ```
//!
//! Method: a fresh database (a temporary SQLite file, or a new PostgreSQL database dropped
//! afterwards), the writer with its default batching (1,000 rows / 100 ms) and a queue of
//! 65,536; producers hand it rows through the same `UsageSink::record` the ledger uses, as fast
//! as the queue takes them (a full queue is waited out, not spilled, so every row is written),
//! then the writer is closed (flushed). Rows/s = rows counted in the store / time from the first
//! row to the end of the flush.

use std::time::{Duration, Instant};

use tollgate::config::{OnFull, UsageWriterConfig};
use tollgate::store::{now_ms, writer, Store, UsageRow};

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn row(i: usize) -> UsageRow {
    UsageRow {
        id: UsageRow::new_id(),
        ts: now_ms(),
        request_id: format!("bench-{i}"),
        team: format!("team-{}", i % 8),
        key_id: format!("key_bench{:08}", i % 64),
        model: Some("mock-gpt".into()),
        upstream: Some("mock".into()),
        endpoint: "chat".into(),
        stream: i % 3 == 0,
        status: 200,
        error_kind: None,
        prompt_tokens: 120,
        completion_tokens: 380,
        cost_usd: 0.00042,
        latency_ms: 850,
        ttfb_ms: Some(120),
        cache_hit: false,
        batch_id: None,
    }
}

#[tokio::main]
async fn main() -> Result<(), String> {
    let backend = arg("--store").unwrap_or_else(|| "sqlite".into());
    let rows: usize = arg("--rows")
        .and_then(|r| r.parse().ok())
        .unwrap_or(200_000);
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut drop_db: Option<(String, String)> = None;
    let url = match backend.as_str() {
        "sqlite" => format!(
            "sqlite://{}?mode=rwc",
            dir.path().join("bench.db").display()
        ),
        "postgres" => {
            let admin = arg("--url")
                .or_else(|| std::env::var("TOLLGATE_TEST_PG_URL").ok())
                .unwrap_or_else(|| "postgres://postgres@127.0.0.1:5432/postgres".into());
            let name = format!("tg_bench_{}", uuid::Uuid::new_v4().simple());
            let mut c = <sqlx::PgConnection as sqlx::Connection>::connect(&admin)
                .await
                .map_err(|e| e.to_string())?;
            sqlx::query(&format!("CREATE DATABASE {name}"))
                .execute(&mut c)
                .await
                .map_err(|e| e.to_string())?;
            let base = admin
                .rsplit_once('/')
                .map(|(b, _)| b.to_owned())
                .unwrap_or(admin.clone());
            drop_db = Some((admin, name.clone()));
            format!("{base}/{name}")
        }
        other => return Err(format!("--store sqlite|postgres, not {other}")),
    };
    let store = Store::connect(&url, 4).await?;
    let cfg = UsageWriterConfig {
        on_full: OnFull::Block,
        block_timeout: tollgate::config::Dur(Duration::from_secs(60)),
        spill_path: dir.path().join("spill.jsonl"),
        // The final flush is part of the measurement: never cut it short.
        flush_timeout: tollgate::config::Dur(Duration::from_secs(600)),
        ..UsageWriterConfig::default()
    };
    let (sink, w) = writer::start(store.clone(), &cfg)?;
    let start = Instant::now();
    for i in 0..rows {
        // Wait out a full queue instead of spilling: the benchmark measures the writer.
        while sink.queued() >= cfg.queue {
            tokio::time::sleep(Duration::from_micros(200)).await;
        }
        sink.record(row(i));
    }
    let stats = sink.stats.clone();
    w.close().await;
    let elapsed = start.elapsed();
    let counted = store.count_usage().await.map_err(|e| e.to_string())?;
    store.close().await;
    if let Some((admin, name)) = drop_db {
        if let Ok(mut c) = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await {
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                .execute(&mut c)
                .await;
        }
    }
    let spilled = stats.get(&stats.spilled);
    println!(
        "{backend}: {counted} rows in {:.2}s = {:.0} rows/s (spilled {spilled})",
        elapsed.as_secs_f64(),
        counted as f64 / elapsed.as_secs_f64()
    );
    if counted as usize != rows {
        return Err(format!("{counted} rows in the store, {rows} sent"));
    }
    Ok(())
}
