//! Usage rows: nothing lost. Every request of an identified caller (answered, streamed, failed)
//! gets exactly one row, on SQLite and PostgreSQL, across a database outage, and across SIGTERM.

mod common;

use std::time::{Duration, Instant};

use common::{
    assert_one_row_per_request, load, serve_binary, store_config, usage_rows_and_ids, Gateway,
    PgDb, Relay, DEMO_KEY,
};

async fn ten_thousand(url: &str, dir: &std::path::Path) {
    let gw = Gateway::start(&store_config(url, &dir.join("spill.jsonl"), "")).await;
    let store = gw.store();
    let started = Instant::now();
    let out = load(&gw.client, &[gw.url("")], DEMO_KEY, 10_000, 64).await;
    let elapsed = started.elapsed();
    let ok = out.iter().filter(|o| o.status == 200).count();
    let failed = out.iter().filter(|o| o.status >= 400).count();
    assert_eq!(ok, 8_000, "answered");
    assert_eq!(failed, 2_000, "refused with 4xx");
    gw.stop().await;
    let (rows, ids) = usage_rows_and_ids(&store).await;
    eprintln!(
        "{}: 10000 requests in {elapsed:?}, {rows} rows, {} distinct request ids",
        store.backend(),
        ids.len()
    );
    assert_eq!(rows, 10_000);
    assert_one_row_per_request(&store, &out).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_ten_thousand_rows_sqlite() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    ten_thousand(&url, dir.path()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ten_thousand_requests_ten_thousand_rows_postgres() {
    let db = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    ten_thousand(&db.url, dir.path()).await;
}

/// PostgreSQL goes away for 2 s mid-run (a relay in front of it cuts every connection and
/// refuses new ones). A small queue forces spilling too. After it is back: no row lost, none
/// doubled.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_outage_mid_run_loses_no_rows() {
    let db = PgDb::create().await;
    let relay = Relay::start(db.server_addr()).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let cfg = store_config(
        &db.url_via(relay.addr),
        &dir.path().join("spill.jsonl"),
        ", queue: 500, batch_size: 100",
    );
    let gw = Gateway::start(&cfg).await;
    let store = gw.store();
    let stats = match &gw.state.store {
        Some(h) => h.usage.stats.clone(),
        None => panic!("no store"),
    };
    let n = 4_000;
    let client = gw.client.clone();
    let base = gw.url("");
    let run = tokio::spawn(async move { load(&client, &[base], DEMO_KEY, n, 32).await });
    tokio::time::sleep(Duration::from_millis(300)).await;
    relay.cut();
    tokio::time::sleep(Duration::from_secs(2)).await;
    relay.restore();
    let out = run.await.unwrap_or_else(|e| panic!("load task: {e}"));
    assert_eq!(out.iter().filter(|o| o.status == 0).count(), 0);
    gw.stop().await;
    let errors = stats.get(&stats.write_errors);
    let spilled = stats.get(&stats.spilled);
    let replayed = stats.get(&stats.replayed);
    // Count through the server's own port: the relay is not needed any more.
    let direct = tollgate::store::Store::connect(&db.url, 2)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let (rows, ids) = usage_rows_and_ids(&direct).await;
    eprintln!(
        "outage: {errors} failed writes, {spilled} spilled, {replayed} replayed, {rows} rows, \
         {} distinct request ids",
        ids.len()
    );
    assert!(
        errors > 0,
        "the outage was not noticed: the test proves nothing"
    );
    assert_eq!(rows, n);
    assert_one_row_per_request(&direct, &out).await;
    direct.close().await;
    drop(store);
}

/// The real binary with a SQLite store gets SIGTERM in the middle of a load run: every request
/// that got its complete answer has its row once the process has exited.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_run_keeps_every_completed_request() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let db_path = dir.path().join("t.db");
    let url = format!("sqlite://{}?mode=rwc", db_path.display());
    // Slow streams keep requests in flight when the signal arrives.
    let cfg = store_config(&url, &dir.path().join("spill.jsonl"), "")
        .replace("chunk_delay: 0ms", "chunk_delay: 5ms");
    let (mut child, addr_file) = serve_binary(dir.path(), &cfg);
    let deadline = Instant::now() + Duration::from_secs(20);
    let addr = loop {
        if let Ok(a) = std::fs::read_to_string(&addr_file) {
            if !a.is_empty() {
                break a;
            }
        }
        assert!(Instant::now() < deadline, "tollgate did not start");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let pid = child.id().unwrap_or_else(|| panic!("no pid"));
    let client = reqwest::Client::new();
    let base = format!("http://{addr}");
    let run = tokio::spawn(async move { load(&client, &[base], DEMO_KEY, 3_000, 32).await });
    tokio::time::sleep(Duration::from_millis(700)).await;
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("kill: {e}"));
    assert!(killed.success());
    let out = run.await.unwrap_or_else(|e| panic!("load task: {e}"));
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap_or_else(|_| panic!("tollgate did not exit after SIGTERM"))
        .unwrap_or_else(|e| panic!("wait: {e}"));
    assert!(status.success(), "exit: {status}");
    let completed: Vec<&str> = out
        .iter()
        .filter(|o| o.status != 0)
        .map(|o| o.request_id.as_str())
        .collect();
    assert!(
        !completed.is_empty() && completed.len() < 3_000,
        "SIGTERM was not mid-run"
    );
    let store = tollgate::store::Store::connect(&url, 1)
        .await
        .unwrap_or_else(|e| panic!("open store: {e}"));
    let (rows, ids) = usage_rows_and_ids(&store).await;
    let missing: Vec<&&str> = completed.iter().filter(|id| !ids.contains(**id)).collect();
    eprintln!(
        "sigterm: {} completed, {rows} rows, {} distinct request ids, {} missing",
        completed.len(),
        ids.len(),
        missing.len()
    );
    assert!(
        missing.is_empty(),
        "completed requests without a row: {missing:?}"
    );
    assert_eq!(
        rows,
        ids.len(),
        "{rows} rows but {} distinct request ids: some request has more than one row",
        ids.len()
    );
    let sent: std::collections::HashSet<&str> = out.iter().map(|o| o.request_id.as_str()).collect();
    let foreign = ids.iter().filter(|id| !sent.contains(id.as_str())).count();
    assert_eq!(foreign, 0, "rows of requests never sent");
}

/// A whole JSON answer carries its cost and the usage it was computed from; the usage row of
/// the request says the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_json_answer_carries_the_cost_its_usage_row_records() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let config = format!(
        "{}prices:\n  mock-gpt: {{ input_per_million: 1, output_per_million: 2 }}\n",
        store_config(&url, &dir.path().join("spill.jsonl"), "")
    );
    let gw = Gateway::start(&config).await;
    let store = gw.store();
    let r = gw
        .post(
            "/v1/chat/completions",
            common::chat("mock-gpt", "what does it cost", false),
        )
        .await;
    assert_eq!(r.status(), 200);
    let header = |name: &str| -> String {
        r.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let (cost, prompt, completion) = (
        header("x-tollgate-cost-usd"),
        header("x-tollgate-prompt-tokens"),
        header("x-tollgate-completion-tokens"),
    );
    let body: serde_json::Value = r.json().await.unwrap_or_default();
    assert_eq!(prompt, body["usage"]["prompt_tokens"].to_string());
    assert_eq!(completion, body["usage"]["completion_tokens"].to_string());
    let expected = common::cost_nanos(&body);
    assert!(expected > 0);
    assert_eq!(
        cost,
        format!(
            "{}.{:09}",
            expected / 1_000_000_000,
            expected % 1_000_000_000
        )
    );
    gw.stop().await;
    let report = store
        .query_usage(&tollgate::store::usage::UsageFilter::default())
        .await
        .unwrap_or_else(|e| panic!("usage: {e}"));
    assert_eq!(report.totals.requests, 1);
    let cost: f64 = cost.parse().unwrap_or(-1.0);
    assert!(
        (report.totals.cost_usd - cost).abs() < 1e-12,
        "{report:?} vs {cost}"
    );
}
