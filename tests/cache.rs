//! The response cache through real sockets: a miss then a hit with one upstream call, a stream
//! replayed as the live stream was, the client's opt-out and refresh headers, teams kept apart,
//! single flight, errors and broken streams never cached, the disk tier across a restart, the
//! Redis tier shared by two gateways (and Redis unreachable: misses, never errors), the admin
//! view and purge, and the `cache_hit` usage row.
//!
//! Model `m` caches in memory (per team), `shared` in memory for every team, `det-all` caches
//! every request (not only deterministic ones); the mock upstream counts what reaches it.

mod common;

use std::time::Duration;

use common::{sha256_hex, Gateway, Reply, ADMIN_KEY, DEMO_KEY, DEMO_KEY_SHA256};
use serde_json::{json, Value};
use tollgate::testkit::{Fault, MockUpstream};

const OTHER_KEY: &str = "sk-other-team";
const OPTOUT_KEY: &str = "sk-optout-team";

async fn mock() -> MockUpstream {
    MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("mock upstream: {e}"))
}

/// Models `m`, `shared` and `det-all` on the mock at `url`; `cache` is the top-level `cache:`
/// section's body and `tiers` the tier list of `m`.
fn config(url: &str, tiers: &str, cache: &str) -> String {
    config_with(url, tiers, cache, "", "")
}

/// [`config`] with more teams and keys (YAML lines, indented as list entries).
fn config_with(url: &str, tiers: &str, cache: &str, teams: &str, keys: &str) -> String {
    format!(
        r#"
upstreams:
  a: {{ provider: openai, base_url: "{url}", model: up-model }}
models:
  m: {{ targets: [ {{ upstream: a }} ], retry: {{ max_attempts: 1 }},
       cache: {{ tiers: {tiers}, ttl: 60s, single_flight: {{ enabled: true, max_wait: 5s }} }} }}
  shared: {{ targets: [ {{ upstream: a }} ], cache: {{ shared: true }} }}
  det-all: {{ targets: [ {{ upstream: a }} ], cache: {{ qualify: all }} }}
teams:
  demo: {{ models: ["*"] }}
  other: {{ models: ["*"] }}
  optout: {{ models: ["*"], cache: {{ enabled: false }} }}
{teams}keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}
  - {{ name: other, team: other, sha256: {other} }}
  - {{ name: optout, team: optout, sha256: {optout} }}
{keys}admin:
  sha256: {admin}
cache: {{ {cache} }}
"#,
        other = sha256_hex(OTHER_KEY),
        optout = sha256_hex(OPTOUT_KEY),
        admin = sha256_hex(ADMIN_KEY),
    )
}

/// A deterministic chat request (temperature 0).
fn det(model: &str, text: &str, stream: bool) -> Value {
    json!({"model": model, "temperature": 0, "stream": stream,
           "messages": [{"role": "user", "content": text}]})
}

async fn ask(gw: &Gateway, key: &str, body: &Value, headers: &[(&str, &str)]) -> Reply {
    let mut req = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(body);
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    Reply::read(req.send().await.unwrap_or_else(|e| panic!("request: {e}"))).await
}

fn cache_of(r: &Reply) -> (&str, &str) {
    (
        r.header("x-tollgate-cache").unwrap_or("-"),
        r.header("x-tollgate-cache-tier").unwrap_or("-"),
    )
}

async fn start(m: &MockUpstream) -> Gateway {
    Gateway::start(&config(&m.base_url(), "[memory]", "")).await
}

#[tokio::test]
async fn a_miss_then_a_hit_calls_the_upstream_once() {
    let m = mock().await;
    let gw = start(&m).await;
    let body = det("m", "what is a toll gate?", false);
    let first = ask(&gw, DEMO_KEY, &body, &[]).await;
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(cache_of(&first), ("miss", "-"));
    let second = ask(&gw, DEMO_KEY, &body, &[]).await;
    assert_eq!(second.status, 200);
    assert_eq!(cache_of(&second), ("hit", "memory"));
    assert_eq!(second.body, first.body);
    assert_eq!(second.header("content-type"), Some("application/json"));
    assert_eq!(m.request_count(), 1);
    // The same request spelled differently (key order, number spelling, a `user`) is the
    // same entry.
    let respelled = json!({"messages": [{"content": "what is a toll gate?", "role": "user"}],
                           "user": "someone", "temperature": 0.0, "model": "m"});
    let third = ask(&gw, DEMO_KEY, &respelled, &[]).await;
    assert_eq!(cache_of(&third), ("hit", "memory"));
    assert_eq!(m.request_count(), 1);
    let hits = r#"tollgate_cache_hits_total{tier="memory"}"#;
    let misses = r#"tollgate_cache_misses_total{tier="memory"}"#;
    assert_eq!(common::metric_value(&gw, hits).await, 2.0);
    assert_eq!(common::metric_value(&gw, misses).await, 1.0);
}

#[tokio::test]
async fn only_deterministic_requests_qualify_unless_the_model_says_all() {
    let m = mock().await;
    let gw = start(&m).await;
    let sampled = json!({"model": "m", "temperature": 0.7,
                         "messages": [{"role": "user", "content": "a poem"}]});
    for _ in 0..2 {
        let r = ask(&gw, DEMO_KEY, &sampled, &[]).await;
        assert_eq!((r.status, cache_of(&r)), (200, ("bypass", "-")));
    }
    assert_eq!(m.request_count(), 2);
    let seeded = json!({"model": "m", "seed": 7, "messages": [{"role": "user", "content": "x"}]});
    ask(&gw, DEMO_KEY, &seeded, &[]).await;
    let r = ask(&gw, DEMO_KEY, &seeded, &[]).await;
    assert_eq!(cache_of(&r), ("hit", "memory"));
    let two = json!({"model": "m", "temperature": 0, "n": 2,
                     "messages": [{"role": "user", "content": "x"}]});
    assert_eq!(cache_of(&ask(&gw, DEMO_KEY, &two, &[]).await).0, "bypass");
    let all = json!({"model": "det-all", "temperature": 0.7,
                     "messages": [{"role": "user", "content": "a poem"}]});
    ask(&gw, DEMO_KEY, &all, &[]).await;
    assert_eq!(cache_of(&ask(&gw, DEMO_KEY, &all, &[]).await).0, "hit");
    // A model without a cache says nothing.
    let none = ask(&gw, DEMO_KEY, &det("nope", "x", false), &[]).await;
    assert_eq!(none.header("x-tollgate-cache"), None);
}

#[tokio::test]
async fn no_store_bypasses_no_cache_refreshes_and_max_age_bounds_the_age() {
    let m = mock().await;
    let gw = start(&m).await;
    let body = det("m", "headers", false);
    let r = ask(&gw, DEMO_KEY, &body, &[("cache-control", "no-store")]).await;
    assert_eq!((r.status, cache_of(&r)), (200, ("bypass", "-")));
    // no-store wrote nothing: the next request is a miss.
    let r = ask(&gw, DEMO_KEY, &body, &[]).await;
    assert_eq!(cache_of(&r), ("miss", "-"));
    let r = ask(&gw, DEMO_KEY, &body, &[("x-tollgate-cache", "no-store")]).await;
    assert_eq!(cache_of(&r), ("bypass", "-"));
    assert_eq!(m.request_count(), 3);
    // no-cache goes upstream (a refresh) and writes the new answer.
    let r = ask(&gw, DEMO_KEY, &body, &[("cache-control", "no-cache")]).await;
    assert_eq!((r.status, cache_of(&r)), (200, ("refresh", "-")));
    let r = ask(&gw, DEMO_KEY, &body, &[("x-tollgate-cache", "no-cache")]).await;
    assert_eq!(cache_of(&r), ("refresh", "-"));
    assert_eq!(m.request_count(), 5);
    let r = ask(&gw, DEMO_KEY, &body, &[("cache-control", "max-age=3600")]).await;
    assert_eq!(cache_of(&r), ("hit", "memory"));
    assert_eq!(m.request_count(), 5);
    // An entry older than the client's max-age is not served: wait until the entry is at
    // least a second old, then ask for at most 0 seconds.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let r = ask(&gw, DEMO_KEY, &body, &[("x-tollgate-cache", "max-age=0")]).await;
    assert_eq!(cache_of(&r), ("miss", "-"));
    assert_eq!(m.request_count(), 6);
}

#[tokio::test]
async fn teams_never_see_each_others_entries_unless_the_model_is_shared() {
    let m = mock().await;
    let gw = start(&m).await;
    let body = det("m", "team secret", false);
    assert_eq!(cache_of(&ask(&gw, DEMO_KEY, &body, &[]).await).0, "miss");
    assert_eq!(cache_of(&ask(&gw, OTHER_KEY, &body, &[]).await).0, "miss");
    assert_eq!(cache_of(&ask(&gw, OTHER_KEY, &body, &[]).await).0, "hit");
    assert_eq!(m.request_count(), 2);
    // A team that opted out neither reads nor writes.
    for _ in 0..2 {
        let r = ask(&gw, OPTOUT_KEY, &body, &[]).await;
        assert_eq!((r.status, cache_of(&r).0), (200, "bypass"));
    }
    assert_eq!(m.request_count(), 4);
    let shared = det("shared", "for everyone", false);
    assert_eq!(cache_of(&ask(&gw, DEMO_KEY, &shared, &[]).await).0, "miss");
    assert_eq!(cache_of(&ask(&gw, OTHER_KEY, &shared, &[]).await).0, "hit");
    assert_eq!(m.request_count(), 5);
}

/// The parts of a stream a client reads: each event's content delta, role, finish reason and
/// usage, in order, ids and timestamps aside.
fn stream_view(r: &Reply) -> Vec<Value> {
    r.events()
        .iter()
        .map(|e| match serde_json::from_str::<Value>(e) {
            Ok(v) => json!({
                "role": v["choices"][0]["delta"]["role"],
                "content": v["choices"][0]["delta"]["content"],
                "finish_reason": v["choices"][0]["finish_reason"],
                "usage": v["usage"],
            }),
            Err(_) => json!(e),
        })
        .collect()
}

#[tokio::test]
async fn a_stream_hit_replays_what_the_live_stream_sent() {
    let m = mock().await;
    let gw = start(&m).await;
    let with_usage = json!({"model": "m", "temperature": 0, "stream": true,
        "stream_options": {"include_usage": true},
        "messages": [{"role": "user", "content": "stream me a few words please"}]});
    let live = ask(&gw, DEMO_KEY, &with_usage, &[]).await;
    assert_eq!((live.status, cache_of(&live)), (200, ("miss", "-")));
    let hit = ask(&gw, DEMO_KEY, &with_usage, &[]).await;
    assert_eq!((hit.status, cache_of(&hit)), (200, ("hit", "memory")));
    assert_eq!(m.request_count(), 1);
    assert_eq!(hit.header("content-type"), Some("text/event-stream"));
    // Byte for byte: the same events, the same framing, `[DONE]` last.
    assert_eq!(hit.body, live.body);
    let view = stream_view(&hit);
    assert_eq!(view, stream_view(&live));
    assert_eq!(view[0]["role"], "assistant");
    assert!(view.iter().any(|e| e["finish_reason"] == "stop"));
    assert!(view
        .iter()
        .any(|e| e["usage"]["completion_tokens"].is_u64()));
    assert_eq!(hit.events().last().map(String::as_str), Some("[DONE]"));
    assert_eq!(hit.content(), "echo: stream me a few words please");

    // Without include_usage: the same entry, replayed without the usage chunk, as a live
    // stream without it (a refresh goes upstream) looks.
    let plain = det("m", "stream me a few words please", true);
    let hit = ask(&gw, DEMO_KEY, &plain, &[]).await;
    assert_eq!(cache_of(&hit), ("hit", "memory"));
    let live = ask(&gw, DEMO_KEY, &plain, &[("cache-control", "no-cache")]).await;
    assert_eq!(cache_of(&live), ("refresh", "-"));
    assert_eq!(stream_view(&hit), stream_view(&live));
    assert!(stream_view(&hit).iter().all(|e| e["usage"].is_null()));
    assert!(hit.body.ends_with("data: [DONE]\n\n"));
    // A stream entry does not answer a non-stream request (the form is part of the key).
    let json_req = det("m", "stream me a few words please", false);
    assert_eq!(
        cache_of(&ask(&gw, DEMO_KEY, &json_req, &[]).await).0,
        "miss"
    );
}

#[tokio::test]
async fn a_broken_stream_and_an_error_are_never_cached() {
    let m = mock().await;
    let gw = start(&m).await;
    let body = det("m", "fragile", true);
    m.push_fault(Fault::ResetMidBody);
    let broken = ask(&gw, DEMO_KEY, &body, &[]).await;
    assert_eq!(cache_of(&broken).0, "miss");
    assert!(broken.body.contains("\"error\""), "{}", broken.body);
    let next = ask(&gw, DEMO_KEY, &body, &[]).await;
    assert_eq!(cache_of(&next).0, "miss");
    assert!(!next.body.contains("\"error\""));
    assert_eq!(cache_of(&ask(&gw, DEMO_KEY, &body, &[]).await).0, "hit");
    assert_eq!(m.request_count(), 2);

    let json_body = det("m", "refused", false);
    m.push_fault(Fault::Status {
        status: 400,
        body: json!({"error": {"message": "bad", "type": "invalid_request_error",
                               "param": null, "code": null}})
        .to_string(),
        retry_after: None,
    });
    let refused = ask(&gw, DEMO_KEY, &json_body, &[]).await;
    assert_eq!(refused.status, 400);
    assert_eq!(cache_of(&refused).0, "miss");
    let ok = ask(&gw, DEMO_KEY, &json_body, &[]).await;
    assert_eq!((ok.status, cache_of(&ok).0), (200, "miss"));
    assert_eq!(
        cache_of(&ask(&gw, DEMO_KEY, &json_body, &[]).await).0,
        "hit"
    );
    assert_eq!(m.request_count(), 4);
}

#[tokio::test]
async fn a_stream_cut_off_before_done_is_not_cached() {
    let m = mock().await;
    let gw = start(&m).await;
    // The upstream stalls after two events: the idle timeout ends the stream.
    let cfg = config(&m.base_url(), "[memory]", "").replace(
        "model: up-model }",
        "model: up-model, timeouts: { idle: 300ms } }",
    );
    drop(gw);
    let gw = Gateway::start(&cfg).await;
    m.push_fault(Fault::StallAfterChunks(2));
    let body = det("m", "stalls half way through", true);
    let cut = ask(&gw, DEMO_KEY, &body, &[]).await;
    assert!(cut.body.contains("\"error\""), "{}", cut.body);
    assert_eq!(cache_of(&ask(&gw, DEMO_KEY, &body, &[]).await).0, "miss");
    assert_eq!(m.request_count(), 2);
}

#[tokio::test]
async fn identical_requests_in_flight_share_one_upstream_call() {
    let m = mock().await;
    m.set_first_byte_delay(Duration::from_millis(400));
    let gw = start(&m).await;
    for stream in [false, true] {
        m.clear_records();
        let body = det("m", &format!("single flight {stream}"), stream);
        let asks = (0..8).map(|_| ask(&gw, DEMO_KEY, &body, &[]));
        let replies = futures_util::future::join_all(asks).await;
        assert_eq!(m.request_count(), 1, "stream: {stream}");
        let first = &replies[0].body;
        let mut statuses: Vec<&str> = replies.iter().map(|r| cache_of(r).0).collect();
        statuses.sort_unstable();
        assert_eq!(
            statuses,
            ["hit"; 7]
                .iter()
                .chain(&["miss"])
                .copied()
                .collect::<Vec<_>>()
        );
        for r in &replies {
            assert_eq!(r.status, 200);
            assert_eq!(&r.body, first, "every caller gets the same answer");
        }
    }
}

#[tokio::test]
async fn a_failed_leader_lets_its_followers_go_upstream() {
    let m = mock().await;
    m.set_first_byte_delay(Duration::from_millis(300));
    let gw = start(&m).await;
    m.push_fault(Fault::Status {
        status: 400,
        body: "{\"error\":{\"message\":\"no\",\"type\":\"x\",\"param\":null,\"code\":null}}".into(),
        retry_after: None,
    });
    let body = det("m", "leader fails", false);
    let asks = (0..3).map(|_| ask(&gw, DEMO_KEY, &body, &[]));
    let replies = futures_util::future::join_all(asks).await;
    let mut statuses: Vec<u16> = replies.iter().map(|r| r.status).collect();
    statuses.sort_unstable();
    // The leader's 400 is its own; the followers went upstream (one became the new leader).
    assert_eq!(statuses, [200, 200, 400]);
    assert!(m.request_count() >= 2);
}

#[tokio::test]
async fn admin_shows_the_tiers_and_purges_by_model_and_team() {
    let m = mock().await;
    let gw = start(&m).await;
    let body = det("m", "purge me", false);
    ask(&gw, DEMO_KEY, &body, &[]).await;
    ask(&gw, OTHER_KEY, &body, &[]).await;
    ask(&gw, DEMO_KEY, &body, &[]).await;
    let admin = |method: reqwest::Method, path: &str| {
        gw.client
            .request(method, gw.url(path))
            .bearer_auth(ADMIN_KEY)
            .send()
    };
    let stats = Reply::read(admin(reqwest::Method::GET, "/admin/cache").await.unwrap()).await;
    assert_eq!(stats.status, 200, "{}", stats.body);
    let v = stats.json();
    assert_eq!(v["tiers"]["memory"]["entries"], 2);
    assert!(v["tiers"]["memory"]["bytes"].as_u64().unwrap_or(0) > 0);
    assert!(v["tiers"]["memory"]["hits"].as_u64().unwrap_or(0) >= 1);
    let del = admin(reqwest::Method::DELETE, "/admin/cache?team=other")
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    assert_eq!(cache_of(&ask(&gw, DEMO_KEY, &body, &[]).await).0, "hit");
    assert_eq!(cache_of(&ask(&gw, OTHER_KEY, &body, &[]).await).0, "miss");
    let del = admin(reqwest::Method::DELETE, "/admin/cache?model=m")
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    assert_eq!(cache_of(&ask(&gw, DEMO_KEY, &body, &[]).await).0, "miss");
    let del = admin(reqwest::Method::DELETE, "/admin/cache")
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    assert_eq!(cache_of(&ask(&gw, OTHER_KEY, &body, &[]).await).0, "miss");
    let bad = Reply::read(
        admin(reqwest::Method::DELETE, "/admin/cache?modle=m")
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(bad.status, 400);
    bad.error();
    // Without the admin key: no.
    let anon = gw
        .client
        .get(gw.url("/admin/cache"))
        .bearer_auth(DEMO_KEY)
        .send()
        .await
        .unwrap();
    assert_ne!(anon.status(), 200);
}

#[tokio::test]
async fn a_hit_writes_a_cache_hit_usage_row_with_no_tokens_and_no_cost() {
    let m = mock().await;
    let dir = tempfile::tempdir().unwrap();
    let db = dir.path().join("store.db");
    let cfg = format!(
        "{}prices:\n  m: {{ input_per_million: 1.0, output_per_million: 2.0 }}\n\
         store:\n  url: \"sqlite://{}?mode=rwc\"\n  usage: {{ spill_path: \"{}\", batch_interval: 20ms }}\n",
        config(&m.base_url(), "[memory]", ""),
        db.display(),
        dir.path().join("spill.jsonl").display()
    );
    let gw = Gateway::start(&cfg).await;
    let body = det("m", "bill me once", false);
    let miss = ask(&gw, DEMO_KEY, &body, &[]).await;
    let hit = ask(&gw, DEMO_KEY, &body, &[]).await;
    assert_eq!(cache_of(&hit).0, "hit");
    let miss_id = miss.header("x-request-id").unwrap().to_owned();
    let hit_id = hit.header("x-request-id").unwrap().to_owned();
    assert!(common::metric_value(&gw, "tollgate_cache_saved_usd").await > 0.0);
    gw.stop().await;
    let pool = sqlx::SqlitePool::connect(&format!("sqlite://{}", db.display()))
        .await
        .unwrap();
    let rows: Vec<(String, i64, i64, i64, f64)> = sqlx::query_as(
        "SELECT request_id, cache_hit, prompt_tokens, completion_tokens, cost_usd FROM usage",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    let row = |id: &str| {
        rows.iter()
            .find(|r| r.0 == id)
            .unwrap_or_else(|| panic!("no usage row for {id}: {rows:?}"))
            .clone()
    };
    let (_, hit_flag, p, c, cost) = row(&hit_id);
    assert_eq!((hit_flag, p, c), (1, 0, 0));
    assert_eq!(cost, 0.0);
    let (_, miss_flag, p, _, cost) = row(&miss_id);
    assert_eq!(miss_flag, 0);
    assert!(
        p > 0 && cost > 0.0,
        "the miss is billed: {p} tokens, {cost} USD"
    );
}

// ---- the disk tier ----

/// Poll `/metrics` at `base` (bounded: 200 polls 25 ms apart) until the cache's writer has
/// made at least `n` writes.
async fn await_writes(base: &str, n: f64) {
    let client = reqwest::Client::new();
    for _ in 0..200 {
        let text = match client.get(format!("{base}/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let v = text
            .lines()
            .find_map(|l| l.strip_prefix("tollgate_cache_writes_total "))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or(0.0);
        if v >= n {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the cache writer did not make {n} writes");
}

async fn post(base: &str, body: &Value) -> Reply {
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(DEMO_KEY)
        .json(body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("request: {e}"));
    Reply::read(r).await
}

#[tokio::test]
async fn the_disk_tier_survives_a_restart() {
    let m = mock().await;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("cache.db");
    let cfg = config(
        &m.base_url(),
        "[memory, disk]",
        &format!("disk_path: \"{}\"", disk.display()),
    );
    let a = det("m", "remember me across restarts", true);
    let b = det("m", "written while shutting down", false);
    let run = |n: usize| {
        let d = dir.path().join(n.to_string());
        std::fs::create_dir_all(&d).unwrap();
        common::serve_binary(&d, &cfg)
    };

    // Killed (SIGKILL) once its write was made: the entry is on disk.
    let (mut child, addr_file) = run(1);
    let base = format!("http://{}", common::wait_for_addr_file(&addr_file).await);
    let live = post(&base, &a).await;
    assert_eq!((live.status, cache_of(&live).0), (200, "miss"));
    await_writes(&base, 1.0).await;
    child.kill().await.unwrap();

    let (mut child, addr_file) = run(2);
    let base = format!("http://{}", common::wait_for_addr_file(&addr_file).await);
    let hit = post(&base, &a).await;
    assert_eq!((hit.status, cache_of(&hit)), (200, ("hit", "disk")));
    assert_eq!(hit.body, live.body);
    // The disk hit filled memory.
    assert_eq!(cache_of(&post(&base, &a).await), ("hit", "memory"));
    // Stopped (SIGTERM) at once after a miss: the shutdown writes what is queued first.
    let live_b = post(&base, &b).await;
    assert_eq!(cache_of(&live_b).0, "miss");
    let pid = child.id().unwrap().to_string();
    assert!(std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap()
        .success());
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait()).await;
    assert!(
        exit.is_ok_and(|e| e.is_ok_and(|s| s.success())),
        "clean exit"
    );

    let (_child, addr_file) = run(3);
    let base = format!("http://{}", common::wait_for_addr_file(&addr_file).await);
    let hit_b = post(&base, &b).await;
    assert_eq!(cache_of(&hit_b), ("hit", "disk"));
    assert_eq!(hit_b.body, live_b.body);
    assert_eq!(m.request_count(), 2);
}

/// A gateway whose model `m` caches on disk only, at `disk`, holding `max` bytes.
async fn disk_only(m: &MockUpstream, disk: &std::path::Path, max: &str) -> Gateway {
    let cfg = config(
        &m.base_url(),
        "[disk], max_bytes: { disk: MAX }, max_entry_bytes: 1024",
        &format!("disk_path: \"{}\"", disk.display()),
    )
    .replace("MAX", max);
    Gateway::start(&cfg).await
}

async fn sqlite(path: &std::path::Path) -> sqlx::SqlitePool {
    sqlx::SqlitePool::connect(&format!("sqlite://{}", path.display()))
        .await
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()))
}

#[tokio::test]
async fn a_corrupt_disk_entry_is_a_miss_and_is_removed() {
    let m = mock().await;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("cache.db");
    let gw = disk_only(&m, &disk, "1000000").await;
    let base = gw.url("");
    let body = det("m", "corrupt me", false);
    assert_eq!(cache_of(&ask(&gw, DEMO_KEY, &body, &[]).await).0, "miss");
    await_writes(&base, 1.0).await;
    assert_eq!(
        cache_of(&ask(&gw, DEMO_KEY, &body, &[]).await),
        ("hit", "disk")
    );
    let db = sqlite(&disk).await;
    sqlx::query("UPDATE cache_entries SET value = x'00ff'")
        .execute(&db)
        .await
        .unwrap();
    let r = ask(&gw, DEMO_KEY, &body, &[]).await;
    assert_eq!((r.status, cache_of(&r).0), (200, "miss"));
    // The corrupt row is removed (then the miss's answer written again: 2 writes before).
    await_writes(&base, 2.0).await;
    for _ in 0..200 {
        let values: Vec<(Vec<u8>,)> = sqlx::query_as("SELECT value FROM cache_entries")
            .fetch_all(&db)
            .await
            .unwrap();
        if values.iter().all(|v| v.0 != [0x00, 0xff]) {
            assert_eq!(cache_of(&ask(&gw, DEMO_KEY, &body, &[]).await).0, "hit");
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("the corrupt entry was not removed");
}

#[tokio::test]
async fn the_disk_tier_is_bounded_in_bytes_and_evicts_the_least_recently_used() {
    let m = mock().await;
    let dir = tempfile::tempdir().unwrap();
    let disk = dir.path().join("cache.db");
    // Each answer weighs ~500 bytes: room for about four.
    let gw = disk_only(&m, &disk, "2200").await;
    let base = gw.url("");
    let body = |i: usize| det("m", &format!("entry number {i}"), false);
    for i in 0..3 {
        ask(&gw, DEMO_KEY, &body(i), &[]).await;
    }
    await_writes(&base, 3.0).await;
    // Entry 0 is used again: entry 1 is now the least recently used.
    assert_eq!(cache_of(&ask(&gw, DEMO_KEY, &body(0), &[]).await).1, "disk");
    for i in 3..8 {
        ask(&gw, DEMO_KEY, &body(i), &[]).await;
        await_writes(&base, i as f64 + 1.0).await;
    }
    let db = sqlite(&disk).await;
    let (total,): (i64,) = sqlx::query_as("SELECT COALESCE(SUM(size), 0) FROM cache_entries")
        .fetch_one(&db)
        .await
        .unwrap();
    let (count,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM cache_entries")
        .fetch_one(&db)
        .await
        .unwrap();
    assert!(total <= 2200, "{total} bytes on disk");
    assert!(total > 0);
    // Six fit: the two least recently used (1, then 2) went; 0, used again, stayed.
    assert_eq!(count, 6, "{total} bytes in {count} entries");
    for (i, want) in [(7, "hit"), (0, "hit"), (3, "hit"), (1, "miss"), (2, "miss")] {
        assert_eq!(
            cache_of(&ask(&gw, DEMO_KEY, &body(i), &[]).await).0,
            want,
            "entry {i}"
        );
    }
}

// ---- the Redis tier ----

fn redis_cache(url: &str, prefix: &str) -> String {
    format!("redis_url: \"{url}\", redis_prefix: \"{prefix}\", redis_timeout: 2s")
}

#[tokio::test]
async fn two_gateways_share_hits_through_redis() {
    let m = mock().await;
    let prefix = format!("tg-cache-test-{:016x}:", rand::random::<u64>());
    let cfg = config(
        &m.base_url(),
        "[memory, redis]",
        &redis_cache(&common::redis_url(), &prefix),
    );
    let (a, b) = (Gateway::start(&cfg).await, Gateway::start(&cfg).await);
    for stream in [false, true] {
        let body = det("m", &format!("shared through redis {stream}"), stream);
        let live = ask(&a, DEMO_KEY, &body, &[]).await;
        assert_eq!(cache_of(&live).0, "miss");
        await_writes(&a.url(""), if stream { 2.0 } else { 1.0 }).await;
        let hit = ask(&b, DEMO_KEY, &body, &[]).await;
        assert_eq!((hit.status, cache_of(&hit)), (200, ("hit", "redis")));
        assert_eq!(hit.body, live.body);
        assert_eq!(
            cache_of(&ask(&b, DEMO_KEY, &body, &[]).await),
            ("hit", "memory")
        );
    }
    assert_eq!(m.request_count(), 2);
    // A purge through one gateway reaches Redis for both.
    let del = b
        .client
        .delete(b.url("/admin/cache?model=m"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap();
    assert_eq!(del.status(), 200);
    let body = det("m", "shared through redis false", false);
    let c = Gateway::start(&cfg).await;
    assert_eq!(cache_of(&ask(&c, DEMO_KEY, &body, &[]).await).0, "miss");
}

#[tokio::test]
async fn redis_unreachable_makes_misses_never_errors() {
    let m = mock().await;
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let dead = format!("redis://{}", l.local_addr().unwrap());
    drop(l);
    let cfg = config(&m.base_url(), "[redis]", &redis_cache(&dead, "tg-dead:"));
    let gw = Gateway::start(&cfg).await;
    for stream in [false, true, false] {
        let r = ask(&gw, DEMO_KEY, &det("m", "nobody home", stream), &[]).await;
        assert_eq!((r.status, cache_of(&r).0), (200, "miss"), "{}", r.body);
    }
    assert_eq!(m.request_count(), 3);
}

#[tokio::test]
async fn the_example_config_shows_a_miss_then_a_hit() {
    let dir = tempfile::tempdir().unwrap();
    let example = std::fs::read_to_string("examples/cache.yaml").unwrap();
    let cfg = example.replace(
        "disk_path: tollgate-cache.db",
        &format!("disk_path: \"{}\"", dir.path().join("cache.db").display()),
    );
    assert_ne!(cfg, example, "the example names its disk file");
    let (_child, addr_file) = common::serve_binary(dir.path(), &cfg);
    let base = format!("http://{}", common::wait_for_addr_file(&addr_file).await);
    let body = json!({"model": "mock-gpt", "temperature": 0,
                      "messages": [{"role": "user", "content": "hello"}]});
    let first = post(&base, &body).await;
    assert_eq!(
        (first.status, cache_of(&first).0),
        (200, "miss"),
        "{}",
        first.body
    );
    let second = post(&base, &body).await;
    assert_eq!((second.status, cache_of(&second)), (200, ("hit", "memory")));
    assert_eq!(second.body, first.body);
}

#[tokio::test]
async fn hits_count_as_requests_but_not_as_tokens() {
    let m = mock().await;
    let limited = "sk-limited-team";
    let frugal = "sk-frugal-team";
    let teams = "  limited: { models: [\"*\"], requests_per_minute: 3 }\n  \
                 frugal: { models: [\"*\"], tokens_per_minute: 200 }\n";
    let keys = format!(
        "  - {{ name: limited, team: limited, sha256: {} }}\n  \
         - {{ name: frugal, team: frugal, sha256: {} }}\n",
        sha256_hex(limited),
        sha256_hex(frugal)
    );
    let cfg = config_with(&m.base_url(), "[memory]", "", teams, &keys);
    let gw = Gateway::start(&cfg).await;
    let mut body = det("m", "count me", false);
    body["max_tokens"] = json!(20);
    let statuses: Vec<(u16, String)> = {
        let mut out = Vec::new();
        for _ in 0..4 {
            let r = ask(&gw, limited, &body, &[]).await;
            out.push((r.status, cache_of(&r).0.to_owned()));
        }
        out
    };
    // A hit is a request: the fourth is past 3 a minute.
    assert_eq!(
        statuses[..3].iter().map(|s| s.0).collect::<Vec<_>>(),
        [200, 200, 200]
    );
    assert_eq!(statuses[1].1, "hit");
    assert_eq!(statuses[3].0, 429);
    // Its tokens are given back: far more hits than 200 tokens a minute would allow.
    for i in 0..20 {
        let r = ask(&gw, frugal, &body, &[]).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
}

#[tokio::test]
async fn redis_hanging_or_stopped_mid_test_makes_misses_never_errors() {
    let m = mock().await;
    let target: std::net::SocketAddr = common::redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("the test Redis URL is host:port: {e}"));
    let relay = common::Relay::start(target).await;
    let prefix = format!("tg-cache-test-{:016x}:", rand::random::<u64>());
    let cfg = config(
        &m.base_url(),
        "[redis]",
        &format!(
            "redis_url: \"redis://{}\", redis_prefix: \"{prefix}\", redis_timeout: 200ms",
            relay.addr
        ),
    );
    let gw = Gateway::start(&cfg).await;
    let body = det("m", "redis goes away", false);
    assert_eq!(cache_of(&ask(&gw, DEMO_KEY, &body, &[]).await).0, "miss");
    await_writes(&gw.url(""), 1.0).await;
    assert_eq!(
        cache_of(&ask(&gw, DEMO_KEY, &body, &[]).await),
        ("hit", "redis")
    );
    // Redis hangs: each lookup waits at most redis_timeout, then it is a miss.
    relay.hold();
    let r = ask(&gw, DEMO_KEY, &body, &[]).await;
    assert_eq!((r.status, cache_of(&r).0), (200, "miss"), "{}", r.body);
    // Redis stops: misses, never errors.
    relay.cut();
    relay.release();
    for stream in [false, true] {
        let r = ask(&gw, DEMO_KEY, &det("m", "redis goes away", stream), &[]).await;
        assert_eq!((r.status, cache_of(&r).0), (200, "miss"), "{}", r.body);
    }
    assert_eq!(m.request_count(), 4);
}

#[tokio::test]
async fn an_answer_from_a_fallback_model_is_not_cached_under_the_first() {
    let (a, b) = (mock().await, mock().await);
    let cfg = format!(
        r#"
upstreams:
  a: {{ provider: openai, base_url: "{}" }}
  b: {{ provider: openai, base_url: "{}" }}
models:
  m: {{ targets: [ {{ upstream: a }} ], fallbacks: [f], retry: {{ max_attempts: 1 }}, cache: {{}} }}
  f: {{ targets: [ {{ upstream: b }} ] }}
teams:
  demo: {{ models: ["*"] }}
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}
"#,
        a.base_url(),
        b.base_url()
    );
    let gw = Gateway::start(&cfg).await;
    a.push_fault(Fault::Status {
        status: 503,
        body: "{\"error\":{\"message\":\"down\",\"type\":\"x\",\"param\":null,\"code\":null}}"
            .into(),
        retry_after: None,
    });
    let body = det("m", "fall back", false);
    let fell = ask(&gw, DEMO_KEY, &body, &[]).await;
    assert_eq!(
        (fell.status, cache_of(&fell).0),
        (200, "miss"),
        "{}",
        fell.body
    );
    assert_eq!(fell.upstream(), Some("b"));
    let own = ask(&gw, DEMO_KEY, &body, &[]).await;
    assert_eq!((own.upstream(), cache_of(&own).0), (Some("a"), "miss"));
    assert_eq!(cache_of(&ask(&gw, DEMO_KEY, &body, &[]).await).0, "hit");
}

#[tokio::test]
async fn a_reload_keeps_a_models_entries_unless_its_cache_config_changed() {
    let m = mock().await;
    let cfg = config(&m.base_url(), "[memory]", "");
    let gw = Gateway::start(&cfg).await;
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("cfg.yaml");
    let body = det("m", "kept over a reload", false);
    assert_eq!(cache_of(&ask(&gw, DEMO_KEY, &body, &[]).await).0, "miss");
    // Another team added: the model's cache is the same, its entries stay.
    let more_teams = config_with(
        &m.base_url(),
        "[memory]",
        "",
        "  more: { models: [\"*\"] }\n",
        "",
    );
    std::fs::write(&path, &more_teams).unwrap();
    tollgate::reload::reload_now(&gw.state, &path).unwrap();
    assert_eq!(cache_of(&ask(&gw, DEMO_KEY, &body, &[]).await).0, "hit");
    // The model's ttl changed: a new memory tier.
    std::fs::write(&path, more_teams.replace("ttl: 60s", "ttl: 120s")).unwrap();
    tollgate::reload::reload_now(&gw.state, &path).unwrap();
    assert_eq!(cache_of(&ask(&gw, DEMO_KEY, &body, &[]).await).0, "miss");
    assert_eq!(m.request_count(), 2);
}

#[tokio::test]
async fn an_answer_larger_than_max_entry_bytes_is_relayed_whole_but_not_cached() {
    let m = mock().await;
    let gw = Gateway::start(&config(
        &m.base_url(),
        "[memory], max_entry_bytes: 2500",
        "",
    ))
    .await;
    let long = "many words in this prompt make a long answer ".repeat(60);
    for stream in [true, false] {
        let body = det("m", &long, stream);
        let first = ask(&gw, DEMO_KEY, &body, &[]).await;
        let second = ask(&gw, DEMO_KEY, &body, &[]).await;
        for r in [&first, &second] {
            assert_eq!((r.status, cache_of(r).0), (200, "miss"), "stream: {stream}");
            assert_eq!(r.content(), format!("echo: {}", long.trim_end()));
        }
        assert!(first.body.len() > 2500);
    }
    assert_eq!(m.request_count(), 4);
    // A short answer of the same model is cached.
    let short = det("m", "short", true);
    ask(&gw, DEMO_KEY, &short, &[]).await;
    assert_eq!(cache_of(&ask(&gw, DEMO_KEY, &short, &[]).await).0, "hit");
}

#[tokio::test]
async fn a_team_ttl_overrides_the_models() {
    let m = mock().await;
    let brief = "sk-brief-team";
    let cfg = config_with(
        &m.base_url(),
        "[memory]",
        "",
        "  brief: { models: [\"*\"], cache: { ttl: 1s } }\n",
        &format!(
            "  - {{ name: brief, team: brief, sha256: {} }}\n",
            sha256_hex(brief)
        ),
    );
    let gw = Gateway::start(&cfg).await;
    let body = det("m", "short lived", false);
    for key in [brief, DEMO_KEY] {
        assert_eq!(cache_of(&ask(&gw, key, &body, &[]).await).0, "miss");
        assert_eq!(cache_of(&ask(&gw, key, &body, &[]).await).0, "hit");
    }
    // Past the team's 1 s TTL (the model's is 60 s): only the team's entry is gone.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(cache_of(&ask(&gw, brief, &body, &[]).await).0, "miss");
    assert_eq!(cache_of(&ask(&gw, DEMO_KEY, &body, &[]).await).0, "hit");
}
