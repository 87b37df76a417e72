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
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}
  - {{ name: other, team: other, sha256: {other} }}
  - {{ name: optout, team: optout, sha256: {optout} }}
admin:
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
