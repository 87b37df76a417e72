//! The usage writer's promises in docs/STORE.md, each asserted through real sockets against
//! PostgreSQL behind a relay the test can cut: a full queue spills and the spill is replayed
//! once the store is back, `on_full: block` makes rows wait instead of spilling, spill files
//! left by an earlier run are replayed at start, and `stale_if_error` keeps cached store keys
//! working while the store is down (and no longer).

mod common;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{chat, load, store_config, Gateway, PgDb, Relay, ADMIN_KEY, DEMO_KEY};
use serde_json::{json, Value};
use tollgate::store::writer::WriterStats;

/// Generous bound for things that happen in the background (a batch, a replay): a slow
/// machine only makes them take longer, never makes them wrong.
const BACKGROUND: Duration = Duration::from_secs(60);

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
}

fn stats(gw: &Gateway) -> Arc<WriterStats> {
    match &gw.state.store {
        Some(h) => h.usage.stats.clone(),
        None => panic!("no store"),
    }
}

fn queued(gw: &Gateway) -> usize {
    gw.state.store.as_ref().map_or(0, |h| h.usage.queued())
}

/// Poll (bounded; the writer's progress has no event a test can await) until `pred` holds.
async fn until(what: &str, mut pred: impl FnMut() -> bool) {
    let start = Instant::now();
    while !pred() {
        assert!(
            start.elapsed() < BACKGROUND,
            "{what}: not after {BACKGROUND:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The spill file and the files moved aside for replay.
fn spill_files(spill: &Path) -> Vec<PathBuf> {
    let name = spill.file_name().unwrap_or_default().to_string_lossy();
    let dir = spill.parent().unwrap_or(Path::new("."));
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.filter_map(Result::ok)
                .map(|e| e.path())
                .filter(|p| {
                    p.file_name()
                        .is_some_and(|n| n.to_string_lossy().starts_with(&*name))
                })
                .collect()
        })
        .unwrap_or_default()
}

fn spilled_lines(spill: &Path) -> usize {
    spill_files(spill)
        .iter()
        .map(|p| {
            std::fs::read_to_string(p)
                .unwrap_or_default()
                .lines()
                .count()
        })
        .sum()
}

/// Rows in the store and distinct request ids among them.
async fn rows_and_distinct(db_url: &str) -> (i64, usize) {
    let store = tollgate::store::Store::connect(db_url, 1)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"));
    let rows = store.count_usage().await.unwrap_or(-1);
    let ids = store
        .usage_request_ids()
        .await
        .unwrap_or_else(|e| panic!("read rows: {e}"));
    store.close().await;
    (rows, ids.len())
}

/// A queue of 4 while the store is down: the rows that find it full are spilled (and on disk),
/// then replayed after the first successful batch once the store is back; every request has
/// exactly one row and no spill file is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_spills_and_the_spill_is_replayed_when_the_store_is_back() {
    let db = PgDb::create().await;
    let relay = Relay::start(db.server_addr()).await;
    let dir = tempdir();
    let spill = dir.path().join("spill.jsonl");
    let cfg = store_config(&db.url_via(relay.addr), &spill, ", queue: 4, batch_size: 2");
    let gw = Gateway::start(&cfg).await;
    let st = stats(&gw);
    relay.cut();
    let n = 40;
    let out = load(&gw.client, &[gw.url("")], DEMO_KEY, n, 4).await;
    assert_eq!(out.iter().filter(|o| o.status == 0).count(), 0);
    // At most 2 rows in the writer's failing batch and 4 in the queue; the rest spill.
    // Every spilled row is on disk (the file, or the file moved aside for a replay that failed).
    until("rows spilled to disk while the store is down", || {
        let s = st.get(&st.spilled);
        s >= n as u64 - 6 && spilled_lines(&spill) == s as usize
    })
    .await;
    assert_eq!(st.get(&st.written), 0, "the store was down");
    assert!(st.get(&st.write_errors) > 0, "the outage was not noticed");
    let spilled = st.get(&st.spilled);

    relay.restore();
    until("spilled rows replayed", || {
        st.get(&st.replayed) == spilled && st.get(&st.written) + spilled == n as u64
    })
    .await;
    gw.stop().await;
    assert_eq!(
        st.get(&st.spilled),
        spilled,
        "nothing spilled after the outage"
    );
    assert_eq!(st.get(&st.replayed), spilled);
    assert_eq!(st.get(&st.lost), 0);
    assert_eq!(rows_and_distinct(&db.url).await, (n as i64, n));
    assert!(spill_files(&spill).is_empty(), "{:?}", spill_files(&spill));
}

/// `on_full: block` with the same outage: the queue fills, yet no row is spilled — the rows wait
/// for room (up to `block_timeout`, here a minute) while every request is answered; once the
/// store is back every row is written.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_full_block_makes_rows_wait_for_room_instead_of_spilling() {
    let db = PgDb::create().await;
    let relay = Relay::start(db.server_addr()).await;
    let dir = tempdir();
    let spill = dir.path().join("spill.jsonl");
    let extra = ", queue: 4, batch_size: 2, on_full: block, block_timeout: 60s";
    let cfg = store_config(&db.url_via(relay.addr), &spill, extra);
    let gw = Gateway::start(&cfg).await;
    let st = stats(&gw);
    relay.cut();
    let n = 20;
    let out = load(&gw.client, &[gw.url("")], DEMO_KEY, n, 4).await;
    assert_eq!(out.iter().filter(|o| o.status == 0).count(), 0);
    until("the queue full while the store is down", || {
        queued(&gw) == 4 && st.get(&st.write_errors) > 0
    })
    .await;
    assert_eq!(st.get(&st.spilled), 0, "a row spilled instead of waiting");

    relay.restore();
    until("every row written", || st.get(&st.written) == n as u64).await;
    gw.stop().await;
    assert_eq!(st.get(&st.spilled), 0, "a row spilled instead of waiting");
    assert_eq!(st.get(&st.lost), 0);
    assert_eq!(rows_and_distinct(&db.url).await, (n as i64, n));
    assert!(spill_files(&spill).is_empty(), "{:?}", spill_files(&spill));
}

fn row(i: usize) -> tollgate::store::usage::UsageRow {
    tollgate::store::usage::UsageRow {
        id: tollgate::store::usage::UsageRow::new_id(),
        ts: 1_700_000_000_000 + i as i64,
        request_id: format!("leftover-{i}"),
        team: "demo".into(),
        key_id: "demo".into(),
        model: Some("mock-gpt".into()),
        upstream: Some("mock".into()),
        endpoint: "chat".into(),
        stream: false,
        status: 200,
        error_kind: None,
        prompt_tokens: 5,
        completion_tokens: 7,
        cost_usd: 0.0,
        latency_ms: 3,
        ttfb_ms: Some(2),
        cache_hit: false,
        batch_id: None,
    }
}

fn write_rows(path: &Path, rows: &[tollgate::store::usage::UsageRow]) {
    let text: String = rows
        .iter()
        .map(|r| serde_json::to_string(r).unwrap_or_else(|e| panic!("row: {e}")) + "\n")
        .collect();
    std::fs::write(path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// An earlier run left a spill file and a file it had moved aside for replay: a gateway started
/// on the same `spill_path` replays both into the store without a single request, and removes
/// them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spill_files_left_by_an_earlier_run_are_replayed_at_start() {
    let db = PgDb::create().await;
    let dir = tempdir();
    let spill = dir.path().join("spill.jsonl");
    let rows: Vec<_> = (0..5).map(row).collect();
    write_rows(&spill, &rows[..2]);
    write_rows(&dir.path().join("spill.jsonl.replay-earlier"), &rows[2..]);
    let gw = Gateway::start(&store_config(&db.url, &spill, "")).await;
    let st = stats(&gw);
    until("leftover rows replayed", || st.get(&st.replayed) == 5).await;
    gw.stop().await;
    assert_eq!(rows_and_distinct(&db.url).await, (5, 5));
    assert!(spill_files(&spill).is_empty(), "{:?}", spill_files(&spill));
}

async fn chat_with(gw: &Gateway, key: &str) -> (u16, Value) {
    let r = gw
        .post_with_key("/v1/chat/completions", key, chat("mock-gpt", "hi", false))
        .await;
    let status = r.status().as_u16();
    (status, r.json().await.unwrap_or(Value::Null))
}

/// `stale_if_error: 6s`, `key_cache_ttl: 200ms`: with the store cut off, a store key read just
/// before keeps working past `2 × ttl` (when it would otherwise be re-read), an unknown key gets
/// 503 `store_unavailable`, config keys are untouched, and once `stale_if_error` has passed
/// since the key was read the store key gets 503 too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stale_if_error_keeps_cached_store_keys_working_for_its_length_only() {
    let db = PgDb::create().await;
    let relay = Relay::start(db.server_addr()).await;
    let dir = tempdir();
    let stale = Duration::from_secs(6);
    let cfg = store_config(&db.url_via(relay.addr), &dir.path().join("spill"), "").replace(
        "  key_cache_ttl: 1s\n",
        "  key_cache_ttl: 200ms\n  stale_if_error: 6s\n",
    );
    assert!(cfg.contains("stale_if_error: 6s"), "{cfg}");
    let gw = Gateway::start(&cfg).await;
    let created = gw
        .client
        .post(gw.url("/admin/keys"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"team": "demo"}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("create key: {e}"));
    assert_eq!(created.status(), 201);
    let created: Value = created.json().await.unwrap_or(Value::Null);
    let key = created["key"].as_str().unwrap_or_default().to_owned();

    // The key is read from the store now, between `asked` and `read_by`.
    let asked = Instant::now();
    assert_eq!(chat_with(&gw, &key).await.0, 200);
    let read_by = Instant::now();
    relay.cut();
    // Past 2 × ttl the entry must be re-read; the store is down, so the cached answer stands.
    tokio::time::sleep_until((asked + Duration::from_secs(1)).into()).await;
    let sent = Instant::now();
    let (status, body) = chat_with(&gw, &key).await;
    assert!(
        sent - asked < stale,
        "the machine stalled for {:?}",
        sent - asked
    );
    assert_eq!(
        status, 200,
        "a cached store key refused within stale_if_error: {body}"
    );

    let (status, body) = chat_with(&gw, "sk-tg-nosuchkeynosuchkeynosuchkey00000").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");
    assert!(body["error"]["message"].is_string(), "{body}");
    assert_eq!(
        chat_with(&gw, DEMO_KEY).await.0,
        200,
        "config keys are untouched"
    );

    tokio::time::sleep_until((read_by + stale + Duration::from_millis(200)).into()).await;
    let (status, body) = chat_with(&gw, &key).await;
    assert_eq!(
        status, 503,
        "a store key still served past stale_if_error: {body}"
    );
    assert_eq!(body["error"]["code"], "store_unavailable", "{body}");

    relay.restore();
    assert_eq!(chat_with(&gw, &key).await.0, 200, "the store is back");
    gw.stop().await;
}
