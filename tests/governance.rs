//! Governance against a hostile client, through real sockets: output caps in every field the
//! upstream may read, estimates that cover the whole request, budgets with a bounded overrun and
//! no refusal while money is left, shared capacity only after authentication and the caller's
//! own limits, and metric labels a client cannot grow.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{chat, cost_nanos, redis_url, Gateway, DEMO_KEY, DEMO_KEY_SHA256};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tollgate::limits::{BudgetPeriod, Scope};
use tollgate::testkit::MockUpstream;

#[derive(Clone, Copy, Debug)]
enum Backend {
    Memory,
    Redis,
}

fn limits_block(backend: Backend) -> String {
    match backend {
        Backend::Memory => "limits: { backend: memory }".into(),
        Backend::Redis => format!(
            "limits: {{ backend: redis, redis_url: \"{}\", redis_prefix: \"tg-gov-{:016x}:\" }}",
            redis_url(),
            rand::random::<u64>()
        ),
    }
}

/// The built-in mock model (priced 1.00 in / 2.00 out per million tokens) with the demo key.
fn mock_config(team: &str, limits: &str, latency_ms: u64) -> String {
    format!(
        r#"
upstreams:
  mock: {{ provider: mock, mock: {{ chunks: 2, latency: {latency_ms}ms }} }}
models:
  mock-gpt: {{ targets: [ {{ upstream: mock }} ] }}
teams:
  demo: {{ models: ["*"] {team} }}
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}
{limits}
"#
    )
}

async fn json_of(r: reqwest::Response) -> Value {
    r.json::<Value>()
        .await
        .unwrap_or_else(|e| panic!("not JSON: {e}"))
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

// ---------------------------------------------------------------------------------------------
// 1. Every field that caps output is capped.

#[tokio::test]
async fn no_output_cap_above_the_teams_reaches_the_upstream_in_any_field() {
    let up = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("mock: {e}"));
    up.set_recording(true);
    let cfg = format!(
        r#"
credentials:
  up-key: {{ kind: static, secret: "${{UP_KEY}}" }}
upstreams:
  up: {{ provider: openai, base_url: "{}", credential: up-key }}
models:
  gpt: {{ targets: [ {{ upstream: up }} ] }}
teams:
  demo: {{ models: ["*"], max_tokens: {{ max: 500 }} }}
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}
"#,
        up.base_url()
    );
    let env = HashMap::from([("UP_KEY".to_string(), "k".to_string())]);
    let gw = Gateway::start_with_env(&cfg, env).await;
    let asks = [
        json!({"max_tokens": 10, "max_completion_tokens": 100_000_000}),
        json!({"max_completion_tokens": 100_000_000}),
        json!({"max_tokens": 100_000_000, "max_completion_tokens": 20}),
        json!({"max_tokens": 100_000_000}),
        json!({}),
        json!({"max_tokens": null, "max_completion_tokens": 7}),
    ];
    for ask in &asks {
        let mut body = chat("gpt", "hello there", false);
        if let (Some(b), Some(a)) = (body.as_object_mut(), ask.as_object()) {
            b.extend(a.clone());
        }
        let r = gw.post("/v1/chat/completions", body).await;
        assert_eq!(r.status(), 200, "{ask}");
    }
    let got = up.received();
    assert_eq!(got.len(), asks.len());
    for (ask, rec) in asks.iter().zip(&got) {
        let caps: Vec<u64> = ["max_tokens", "max_completion_tokens"]
            .iter()
            .filter_map(|f| rec.body.get(*f).and_then(Value::as_u64))
            .collect();
        assert!(!caps.is_empty(), "no cap went upstream for {ask}");
        assert!(caps.iter().all(|c| *c <= 500), "{ask} -> {}", rec.body);
        assert!(
            caps.windows(2).all(|w| w[0] == w[1]),
            "{ask} -> {}",
            rec.body
        );
    }
    // The smaller of the client's two numbers is the one kept.
    assert_eq!(got[0].body["max_completion_tokens"], 10);
    assert_eq!(got[2].body["max_tokens"], 20);
    assert_eq!(got[4].body["max_tokens"], 500);
}

// ---------------------------------------------------------------------------------------------
// 2. The estimate covers the whole request; a request that can never fit is not retried.

#[tokio::test]
async fn n_best_of_and_token_ids_count_and_a_request_that_never_fits_says_do_not_retry() {
    let gw = Gateway::start(&mock_config(
        ", tokens_per_minute: 1000",
        &limits_block(Backend::Memory),
        300,
    ))
    .await;
    // 100 completion tokens, fine once; 20 completions of them can never fit 1,000 a minute.
    let mut one = chat("mock-gpt", "hi", false);
    one["max_tokens"] = json!(100);
    let r = gw.post("/v1/chat/completions", one.clone()).await;
    assert_eq!(r.status(), 200);
    let mut twenty = one.clone();
    twenty["n"] = json!(20);
    let too_large = [
        ("/v1/chat/completions", twenty),
        (
            "/v1/completions",
            json!({"model": "mock-gpt", "prompt": "hi", "max_tokens": 100, "best_of": 20}),
        ),
        (
            "/v1/completions",
            json!({"model": "mock-gpt", "prompt": (0..1500).collect::<Vec<u32>>(), "max_tokens": 1}),
        ),
        (
            "/v1/completions",
            json!({"model": "mock-gpt", "prompt": vec!["hi"; 20], "max_tokens": 100}),
        ),
        (
            "/v1/embeddings",
            json!({"model": "mock-gpt", "input": [(0..1500).collect::<Vec<u32>>()]}),
        ),
    ];
    for (path, body) in too_large {
        let r = gw.post(path, body).await;
        assert_eq!(r.status(), 429, "{path}");
        assert_eq!(header(&r, "x-should-retry").as_deref(), Some("false"));
        assert_eq!(header(&r, "retry-after"), None, "{path}");
        let v = json_of(r).await;
        assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| m.contains("Request too large")),
            "{v}"
        );
    }
    // Two that fit the limit alone but not together: the second only has to wait, and is told
    // when to come back.
    let mut big = chat("mock-gpt", "hi", false);
    big["max_tokens"] = json!(600);
    let (a, b) = tokio::join!(
        gw.post("/v1/chat/completions", big.clone()),
        gw.post("/v1/chat/completions", big)
    );
    let waited: Vec<_> = [&a, &b].into_iter().filter(|r| r.status() == 429).collect();
    assert_eq!(waited.len(), 1, "{} {}", a.status(), b.status());
    assert_eq!(header(waited[0], "x-should-retry"), None);
    assert!(header(waited[0], "retry-after").is_some());
}

// ---------------------------------------------------------------------------------------------
// 3. Budgets: no refusal while money is left, and a bounded overrun under parallel clients.

async fn spend_nanos(gw: &Gateway) -> u64 {
    let usd = gw
        .state
        .snapshot
        .load()
        .limiter
        .spend_usd(Scope::Team, "demo", BudgetPeriod::Monthly)
        .await
        .unwrap_or_else(|e| panic!("spend: {e}"));
    (usd * 1e9).round() as u64
}

async fn budget_on_the_remainder(backend: Backend) {
    // With no max_tokens, one request's estimate is 1,024 completion tokens: $0.002048, four
    // times the whole budget. Each real answer costs a few hundredths of that.
    let budget_nanos: u64 = 500_000;
    let gw = Arc::new(
        Gateway::start(&mock_config(
            &format!(
                ", budget: {{ amount_usd: {}, period: monthly }}",
                budget_nanos as f64 / 1e9
            ),
            &limits_block(backend),
            20,
        ))
        .await,
    );
    // The first call is admitted although its estimate alone is larger than the budget.
    let r = gw
        .post(
            "/v1/chat/completions",
            chat("mock-gpt", "hello there", false),
        )
        .await;
    assert_eq!(r.status(), 200, "{}", json_of(r).await);

    // 16 parallel clients call until the budget is spent: the remainder goes to one request at a
    // time, the others are refused meanwhile.
    let mut tasks = Vec::new();
    for i in 0..16 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            let mut costs = Vec::new();
            let until = Instant::now() + Duration::from_secs(60);
            while Instant::now() < until {
                let text = format!("client {i} asks a question of a few words");
                let r = gw
                    .post("/v1/chat/completions", chat("mock-gpt", &text, false))
                    .await;
                match r.status().as_u16() {
                    200 => costs.push(cost_nanos(&json_of(r).await)),
                    429 => {
                        let retry = header(&r, "retry-after");
                        let should_retry = header(&r, "x-should-retry");
                        let v = json_of(r).await;
                        let spent = spend_nanos(&gw).await >= budget_nanos;
                        match v["error"]["code"].as_str() {
                            // Spent: final until the period ends.
                            Some("insufficient_quota") => {
                                assert!(spent, "refused as spent while money was left: {v}");
                                assert_eq!(should_retry.as_deref(), Some("false"));
                                break;
                            }
                            // Held by the request in flight: worth retrying in a second.
                            Some("rate_limit_exceeded") => {
                                assert_eq!(retry.as_deref(), Some("1"), "{v}");
                                assert_eq!(should_retry, None, "{v}");
                            }
                            _ => panic!("unexpected refusal: {v}"),
                        }
                        if spent {
                            break;
                        }
                        tokio::task::yield_now().await;
                    }
                    s => panic!("unexpected {s}: {}", json_of(r).await),
                }
            }
            costs
        }));
    }
    let mut costs = Vec::new();
    for t in tasks {
        costs.extend(t.await.unwrap_or_else(|e| panic!("{e}")));
    }
    let max_one = costs.iter().copied().max().unwrap_or(0);
    assert!(max_one > 0 && costs.len() >= 2, "{} answers", costs.len());
    // Spend settles in the background on Redis: wait until it stops moving.
    let mut spent = spend_nanos(&gw).await;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(20)).await;
        let now = spend_nanos(&gw).await;
        if now == spent && now >= budget_nanos {
            break;
        }
        spent = now;
    }
    assert!(
        spent >= budget_nanos,
        "money was left: {spent} of {budget_nanos}"
    );
    assert!(
        spent <= budget_nanos + max_one,
        "overrun beyond one request: spent {spent}, budget {budget_nanos}, largest {max_one}"
    );
}

#[tokio::test]
async fn memory_budget_admits_on_the_remainder_one_request_at_a_time() {
    budget_on_the_remainder(Backend::Memory).await;
}

#[tokio::test]
async fn redis_budget_admits_on_the_remainder_one_request_at_a_time() {
    budget_on_the_remainder(Backend::Redis).await;
}

/// A graceful shutdown waits for the limiter's last settlements: the spend of a request that
/// ended just before SIGTERM reaches Redis even while Redis is slow to answer.
#[tokio::test]
async fn shutdown_waits_for_the_last_settlement_so_its_spend_is_not_lost() {
    let redis_addr: std::net::SocketAddr = redis_url()
        .trim_start_matches("redis://")
        .trim_end_matches('/')
        .parse()
        .unwrap_or_else(|e| panic!("TOLLGATE_TEST_REDIS_URL must be redis://host:port: {e}"));
    let relay = common::Relay::start(redis_addr).await;
    let prefix = format!("tg-gov-{:016x}:", rand::random::<u64>());
    let limits = |url: &str| {
        format!(
            "limits: {{ backend: redis, redis_url: \"{url}\", redis_prefix: \"{prefix}\", \
             redis_timeout: 10s }}"
        )
    };
    let team = ", budget: { amount_usd: 100, period: monthly }";
    // Four chunks 200 ms apart: the stream is still running when its first event arrives.
    let cfg = format!(
        "server: {{ shutdown_grace: 10s }}\n{}",
        mock_config(team, &limits(&format!("redis://{}", relay.addr)), 0)
            .replace("chunks: 2, latency: 0ms", "chunks: 4, chunk_delay: 200ms")
    );
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("tollgate.yaml");
    let addr_file = dir.path().join("addr");
    std::fs::write(&config, cfg).unwrap_or_else(|e| panic!("{e}"));
    let mut gateway = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--addr-file")
        .arg(&addr_file)
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = common::wait_for_addr_file(&addr_file).await;

    // A stream: once its first event arrived it is admitted; then Redis stops answering, and
    // the settlement at its end waits.
    let mut body = chat("mock-gpt", "one two three four", true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = reqwest::Client::new()
        .post(format!("http://{}/v1/chat/completions", addr.trim()))
        .bearer_auth(DEMO_KEY)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), 200);
    let mut stream = resp.bytes_stream();
    let mut text = Vec::new();
    use futures_util::StreamExt;
    if let Some(first) = stream.next().await {
        text.extend_from_slice(&first.unwrap_or_default());
    }
    relay.hold();
    while let Some(chunk) = stream.next().await {
        text.extend_from_slice(&chunk.unwrap_or_default());
    }
    let text = String::from_utf8_lossy(&text).into_owned();
    let usage = text
        .split("\n\n")
        .filter_map(|e| e.strip_prefix("data: "))
        .filter_map(|d| serde_json::from_str::<Value>(d).ok())
        .find(|v| v["usage"].is_object())
        .unwrap_or_else(|| panic!("no usage chunk in {text}"));
    let cost = cost_nanos(&usage);
    assert!(cost > 0);

    // SIGTERM while the settlement waits on Redis; Redis comes back a moment later.
    let pid = gateway.id().unwrap_or_else(|| panic!("no pid"));
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(killed.success());
    let exited_at_once = tokio::time::timeout(Duration::from_secs(1), gateway.wait())
        .await
        .is_ok();
    relay.release();
    let exit = tokio::time::timeout(Duration::from_secs(15), gateway.wait())
        .await
        .unwrap_or_else(|_| panic!("the gateway did not exit"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(exit.code(), Some(0));

    // The spend, read straight from Redis with another limiter on the same keys.
    let direct = tollgate::config::Config::parse(&mock_config(team, &limits(&redis_url()), 0))
        .unwrap_or_else(|e| panic!("{e}"));
    let limiter = tollgate::limits::Limiter::from_config(&direct, &HashMap::new())
        .unwrap_or_else(|e| panic!("{e}"));
    let usd = limiter
        .spend_usd(Scope::Team, "demo", BudgetPeriod::Monthly)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        (usd * 1e9).round() as u64,
        cost,
        "the last request's spend was lost (the process exited at once: {exited_at_once})"
    );
}

// ---------------------------------------------------------------------------------------------
// 6. Shared in-flight slots are taken only after authentication and the caller's own limits.

/// Two teams: `greedy` (key `sk-greedy`, one request at a time) and `other` (the demo key).
fn greedy_config(server: &str, latency_ms: u64) -> String {
    format!(
        r#"
server: {{ {server} }}
upstreams:
  mock: {{ provider: mock, mock: {{ chunks: 2, latency: {latency_ms}ms }} }}
models:
  mock-gpt: {{ targets: [ {{ upstream: mock }} ] }}
teams:
  greedy: {{ models: ["*"], max_concurrent: 1 }}
  other: {{ models: ["*"] }}
keys:
  - {{ name: greedy, team: greedy, sha256: {} }}
  - {{ name: other, team: other, sha256: {DEMO_KEY_SHA256} }}
"#,
        common::sha256_hex("sk-greedy")
    )
}

#[tokio::test]
async fn a_caller_trickling_bodies_holds_no_shared_slot() {
    let cfg = greedy_config("max_in_flight: 3, body_read_timeout: 30s", 10);
    let gw = Gateway::start(&cfg).await;
    // The greedy key opens more requests than there are slots and sends half of each body.
    let mut held = Vec::new();
    for _ in 0..5 {
        let mut s = TcpStream::connect(gw.addr)
            .await
            .unwrap_or_else(|e| panic!("connect: {e}"));
        let head = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n\
                    authorization: Bearer sk-greedy\r\ncontent-type: application/json\r\n\
                    content-length: 100\r\n\r\n{\"model\":";
        s.write_all(head.as_bytes())
            .await
            .unwrap_or_else(|e| panic!("write: {e}"));
        held.push(s);
    }
    // All five reached the request path (the in-flight gauge counts them from the moment their
    // heads were read, before their bodies).
    assert!(
        common::await_metric(&gw, "tollgate_in_flight_requests", |v| v >= 5.0).await,
        "the greedy requests never reached the gateway"
    );
    for _ in 0..5 {
        let r = gw
            .post_with_key(
                "/v1/chat/completions",
                DEMO_KEY,
                chat("mock-gpt", "hi", false),
            )
            .await;
        assert_eq!(r.status(), 200, "{}", json_of(r).await);
    }
    drop(held);
}

#[tokio::test]
async fn a_caller_past_its_own_concurrency_is_told_so_and_takes_no_shared_slot() {
    let cfg = greedy_config("max_in_flight: 3", 300);
    let gw = Arc::new(Gateway::start(&cfg).await);
    let mut greedy = Vec::new();
    for _ in 0..5 {
        let gw = gw.clone();
        greedy.push(tokio::spawn(async move {
            let r = gw
                .post_with_key(
                    "/v1/chat/completions",
                    "sk-greedy",
                    chat("mock-gpt", "hi", false),
                )
                .await;
            let status = r.status().as_u16();
            (status, json_of(r).await)
        }));
    }
    let other = gw
        .post_with_key(
            "/v1/chat/completions",
            DEMO_KEY,
            chat("mock-gpt", "hi", false),
        )
        .await;
    assert_eq!(other.status(), 200);
    let mut statuses = Vec::new();
    for t in greedy {
        let (status, v) = t.await.unwrap_or_else(|e| panic!("{e}"));
        if status == 429 {
            assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");
        }
        statuses.push(status);
    }
    statuses.sort_unstable();
    // One runs; the others hear about their own limit (429), never the shared one (503).
    assert_eq!(statuses, vec![200, 429, 429, 429, 429]);
}

// ---------------------------------------------------------------------------------------------
// 7. Labels come from config: made-up model names do not grow /metrics.

#[tokio::test]
async fn made_up_model_names_never_become_metric_labels() {
    let gw = Gateway::start(&mock_config("", "", 0)).await;
    let r = gw
        .post("/v1/chat/completions", chat("mock-gpt", "hi", false))
        .await;
    assert_eq!(r.status(), 200);
    for i in 0..200 {
        let r = gw
            .post(
                "/v1/chat/completions",
                chat(
                    &format!("made-up-{i:04}-{:x}", rand::random::<u64>()),
                    "hi",
                    false,
                ),
            )
            .await;
        assert_eq!(r.status(), 404);
    }
    let text = gw
        .client
        .get(gw.url("/metrics"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .text()
        .await
        .unwrap_or_default();
    assert!(
        !text.contains("made-up-"),
        "a client's model name is a label"
    );
    assert!(text.contains("model=\"unknown\""), "{text}");
    assert!(text.contains("model=\"mock-gpt\""), "{text}");
}
