//! Limits and budgets through real sockets, on the memory and the Redis backends.
//!
//! Redis tests use `TOLLGATE_TEST_REDIS_URL` (default `redis://127.0.0.1:6379`) and a random key
//! prefix each, so they run in parallel without colliding.

mod common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{
    chat, cost_nanos, redis_url, serve_binary, sse_events, wait_for_addr_file, Gateway, DEMO_KEY,
    DEMO_KEY_SHA256,
};
use serde_json::{json, Value};
use tokio::net::{TcpListener, TcpStream};
use tollgate::limits::{BudgetPeriod, Scope};

fn prefix() -> String {
    format!("tg-test-{:016x}:", rand::random::<u64>())
}

#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    Memory,
    Redis,
}

fn limits_block(backend: Backend, extra: &str) -> String {
    match backend {
        Backend::Memory => format!("limits: {{ backend: memory {extra} }}"),
        Backend::Redis => format!(
            "limits: {{ backend: redis, redis_url: \"{}\", redis_prefix: \"{}\" {extra} }}",
            redis_url(),
            prefix()
        ),
    }
}

/// The mock model with the demo key, `team` and `key` limit fields, and a `limits:` block.
fn config(limits: &str, team: &str, key: &str, latency_ms: u64) -> String {
    format!(
        r#"
upstreams:
  mock:
    provider: mock
    mock: {{ chunks: 2, latency: {latency_ms}ms }}
models:
  mock-gpt: {{ targets: [ {{ upstream: mock }} ] }}
teams:
  demo: {{ models: ["*"] {team} }}
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} {key} }}
{limits}
"#
    )
}

fn body(max_tokens: u64) -> Value {
    let mut b = chat("mock-gpt", "hello there", false);
    b["max_tokens"] = json!(max_tokens);
    b
}

fn header(r: &reqwest::Response, name: &str) -> Option<String> {
    r.headers()
        .get(name)
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned)
}

fn num(r: &reqwest::Response, name: &str) -> u64 {
    header(r, name)
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("header {name} missing or not a number"))
}

async fn json_of(r: reqwest::Response) -> Value {
    r.json::<Value>()
        .await
        .unwrap_or_else(|e| panic!("not JSON: {e}"))
}

/// Poll `f` until it returns true, for at most `secs`.
async fn eventually<F, Fut>(secs: u64, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let until = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < until {
        if f().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    false
}

async fn spend(gw: &Gateway, scope: Scope, id: &str) -> f64 {
    gw.state
        .snapshot
        .load()
        .limiter
        .spend_usd(scope, id, BudgetPeriod::Monthly)
        .await
        .unwrap_or_else(|e| panic!("spend: {e}"))
}

// ---------------------------------------------------------------------------------------------
// Requests per minute

async fn rpm_exact_then_429(backend: Backend) {
    let cfg = config(
        &limits_block(backend, ""),
        ", requests_per_minute: 5",
        "",
        0,
    );
    let gw = Gateway::start(&cfg).await;
    for i in 0..5u64 {
        let r = gw.post("/v1/chat/completions", body(16)).await;
        assert_eq!(r.status(), 200, "request {i}");
        assert_eq!(num(&r, "x-ratelimit-limit-requests"), 5);
        assert_eq!(num(&r, "x-ratelimit-remaining-requests"), 4 - i);
        assert!(header(&r, "x-ratelimit-reset-requests").is_some());
    }
    let r = gw.post("/v1/chat/completions", body(16)).await;
    assert_eq!(r.status(), 429);
    let retry: u64 = num(&r, "retry-after");
    assert!((1..=13).contains(&retry), "retry-after {retry}");
    assert_eq!(num(&r, "x-ratelimit-limit-requests"), 5);
    assert_eq!(num(&r, "x-ratelimit-remaining-requests"), 0);
    let v = json_of(r).await;
    assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");
    assert_eq!(v["error"]["type"], "rate_limit_error", "{v}");
    assert!(v["error"].get("param").is_some());
    let text = gw.metrics_text().await;
    assert!(
        text.contains(r#"tollgate_limit_rejections_total{scope="team",limit="rpm"}"#),
        "{text}"
    );
}

#[tokio::test]
async fn memory_rpm_admits_exactly_the_limit_then_429_with_headers() {
    rpm_exact_then_429(Backend::Memory).await;
}

#[tokio::test]
async fn redis_rpm_admits_exactly_the_limit_then_429_with_headers() {
    rpm_exact_then_429(Backend::Redis).await;
}

#[tokio::test]
async fn key_and_team_limits_both_apply_and_streams_carry_headers() {
    let cfg = config(
        &limits_block(Backend::Memory, ""),
        ", requests_per_minute: 100, tokens_per_minute: 100000",
        ", requests_per_minute: 2",
        0,
    );
    let gw = Gateway::start(&cfg).await;
    let r = gw
        .post("/v1/chat/completions", chat("mock-gpt", "stream me", true))
        .await;
    assert_eq!(r.status(), 200);
    // The key's limit is the tighter one: its figures are reported.
    assert_eq!(num(&r, "x-ratelimit-limit-requests"), 2);
    assert_eq!(num(&r, "x-ratelimit-remaining-requests"), 1);
    assert_eq!(num(&r, "x-ratelimit-limit-tokens"), 100_000);
    assert!(num(&r, "x-ratelimit-remaining-tokens") < 100_000);
    assert!(header(&r, "x-ratelimit-reset-tokens").is_some());
    let events = sse_events(r).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert_eq!(gw.post("/v1/chat/completions", body(8)).await.status(), 200);
    let r = gw.post("/v1/chat/completions", body(8)).await;
    assert_eq!(r.status(), 429);
    let v = json_of(r).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("key 'demo'")),
        "{v}"
    );
}

// ---------------------------------------------------------------------------------------------
// Tokens per minute

async fn tpm_reconciles(backend: Backend) {
    let cfg = config(
        &limits_block(backend, ""),
        ", tokens_per_minute: 1000",
        "",
        0,
    );
    let gw = Gateway::start(&cfg).await;
    let b = body(400);
    let Value::Object(m) = &b else { panic!() };
    let estimate = tollgate::limits::estimate_prompt_tokens(m) + 400;

    let r = gw.post("/v1/chat/completions", b.clone()).await;
    assert_eq!(r.status(), 200);
    let first = num(&r, "x-ratelimit-remaining-tokens");
    assert_eq!(first, 1000 - estimate);
    let v = json_of(r).await;
    let used = v["usage"]["total_tokens"].as_u64().unwrap_or(0);
    assert!(used > 0 && used < estimate, "{v}");

    // After settlement only the real usage stays charged: the second admission sees
    // 1000 - used - estimate (plus what refilled meanwhile), not 1000 - 2 * estimate.
    let ok = eventually(5, || {
        let gw = &gw;
        let b = b.clone();
        async move {
            let r = gw.post("/v1/chat/completions", b).await;
            let rem = num(&r, "x-ratelimit-remaining-tokens");
            rem + 2 >= 1000 - used - estimate && r.status() == 200
        }
    })
    .await;
    assert!(ok, "the estimate was not reconciled with the real usage");

    // A request whose estimate alone exceeds the limit can never pass.
    let r = gw.post("/v1/chat/completions", body(5000)).await;
    assert_eq!(r.status(), 429);
    let v = json_of(r).await;
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("too large")),
        "{v}"
    );
}

#[tokio::test]
async fn memory_tpm_estimate_is_reconciled_with_real_usage() {
    tpm_reconciles(Backend::Memory).await;
}

#[tokio::test]
async fn redis_tpm_estimate_is_reconciled_with_real_usage() {
    tpm_reconciles(Backend::Redis).await;
}

// ---------------------------------------------------------------------------------------------
// Concurrency

async fn concurrency(backend: Backend) {
    let cfg = config(&limits_block(backend, ""), "", ", max_concurrent: 2", 400);
    let gw = Arc::new(Gateway::start(&cfg).await);
    let mut tasks = Vec::new();
    for _ in 0..6 {
        let gw = gw.clone();
        tasks.push(tokio::spawn(async move {
            gw.post("/v1/chat/completions", body(8))
                .await
                .status()
                .as_u16()
        }));
    }
    let mut codes = Vec::new();
    for t in tasks {
        codes.push(t.await.unwrap_or(0));
    }
    codes.sort();
    assert_eq!(codes, vec![200, 200, 429, 429, 429, 429]);
    // Slots come back when the requests end.
    let ok = eventually(5, || {
        let gw = gw.clone();
        async move { gw.post("/v1/chat/completions", body(8)).await.status() == 200 }
    })
    .await;
    assert!(ok);
}

#[tokio::test]
async fn memory_concurrency_limit_holds_and_releases() {
    concurrency(Backend::Memory).await;
}

#[tokio::test]
async fn redis_concurrency_limit_holds_and_releases() {
    concurrency(Backend::Redis).await;
}

// ---------------------------------------------------------------------------------------------
// Budgets

async fn budget_parallel(backend: Backend) {
    let b = body(100);
    let Value::Object(m) = &b else { panic!() };
    // Estimated cost of one request at the mock's price (1.00 in, 2.00 out per million).
    let est_nanos = tollgate::limits::estimate_prompt_tokens(m) * 1000 + 100 * 2000;
    let budget_usd = est_nanos as f64 * 5.5 / 1e9;
    let cfg = config(
        &limits_block(backend, ""),
        &format!(", budget: {{ amount_usd: {budget_usd}, period: monthly }}"),
        "",
        300,
    );
    let gw = Arc::new(Gateway::start(&cfg).await);
    let mut tasks = Vec::new();
    for _ in 0..50 {
        let gw = gw.clone();
        let b = b.clone();
        tasks.push(tokio::spawn(async move {
            let r = gw.post("/v1/chat/completions", b).await;
            let status = r.status().as_u16();
            (status, json_of(r).await)
        }));
    }
    let mut admitted = 0;
    let mut spent = 0;
    for t in tasks {
        let (status, v) = t.await.unwrap_or((0, Value::Null));
        match status {
            200 => {
                admitted += 1;
                spent += cost_nanos(&v);
            }
            429 => {
                // Money is left but the requests in flight hold it: a retryable refusal.
                assert_eq!(v["error"]["code"], "rate_limit_exceeded", "{v}");
                assert!(
                    v["error"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("held by requests in flight")),
                    "{v}"
                );
            }
            s => panic!("unexpected status {s}: {v}"),
        }
    }
    // Reservations make this exact: 5 estimates fit in 5.5, the 6th does not.
    assert_eq!(admitted, 5);
    let ok = eventually(5, || {
        let gw = gw.clone();
        async move { (spend(&gw, Scope::Team, "demo").await * 1e9).round() as u64 == spent }
    })
    .await;
    assert!(
        ok,
        "team spend is not the sum of the real costs ({spent} nanos)"
    );
    assert_eq!(
        (spend(&gw, Scope::Key, "demo").await * 1e9).round() as u64,
        spent
    );
}

#[tokio::test]
async fn memory_parallel_requests_cannot_overrun_a_budget() {
    budget_parallel(Backend::Memory).await;
}

#[tokio::test]
async fn redis_parallel_requests_cannot_overrun_a_budget() {
    budget_parallel(Backend::Redis).await;
}

#[tokio::test]
async fn spent_budget_answers_insufficient_quota_with_retry_after() {
    let cfg = config(
        &limits_block(Backend::Memory, ""),
        "",
        ", budget: { amount_usd: 0.0000001, period: daily }",
        0,
    );
    let gw = Gateway::start(&cfg).await;
    // The first call finds money left (its estimate is larger than all of it, but nothing else
    // holds the remainder): admitted. It spends the budget, so the next one is refused.
    let r = gw.post("/v1/chat/completions", body(16)).await;
    assert_eq!(r.status(), 200);
    let r = gw.post("/v1/chat/completions", body(16)).await;
    assert_eq!(r.status(), 429);
    assert_eq!(header(&r, "x-should-retry").as_deref(), Some("false"));
    let retry = num(&r, "retry-after");
    assert!(retry > 0 && retry <= 86_400, "{retry}");
    let v = json_of(r).await;
    assert_eq!(v["error"]["code"], "insufficient_quota", "{v}");
}

// ---------------------------------------------------------------------------------------------
// Spend survives a restart

#[tokio::test]
async fn memory_spend_survives_a_restart_through_the_state_file() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("limits-state.json");
    let extra = format!(", state_file: \"{}\"", file.display());
    let cfg = config(&limits_block(Backend::Memory, &extra), "", "", 0);
    let gw = Gateway::start(&cfg).await;
    let mut expected = 0;
    for _ in 0..3 {
        let v = json_of(gw.post("/v1/chat/completions", body(16)).await).await;
        expected += cost_nanos(&v);
    }
    assert!(
        eventually(5, || async {
            (spend(&gw, Scope::Team, "demo").await * 1e9).round() as u64 == expected
        })
        .await
    );
    // What `tollgate serve` does on shutdown.
    gw.state
        .snapshot
        .load()
        .limiter
        .flush()
        .unwrap_or_else(|e| panic!("{e}"));
    gw.stop().await;

    let gw = Gateway::start(&cfg).await;
    assert_team_and_key_spent(&gw, expected).await;
}

/// The same through the real binary: `tollgate serve` writes the state file when it stops on
/// SIGTERM (the periodic flush is an hour away, so only the shutdown can have written it), and
/// a gateway started on the same file reads the spend back to the nano-dollar.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_spend_is_saved_when_tollgate_serve_gets_sigterm() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("limits-state.json");
    let extra = format!(
        ", state_file: \"{}\", state_flush_interval: 1h",
        file.display()
    );
    let cfg = config(&limits_block(Backend::Memory, &extra), "", "", 0);
    let (mut child, addr_file) = serve_binary(dir.path(), &cfg);
    let base = format!("http://{}", wait_for_addr_file(&addr_file).await);
    let client = reqwest::Client::new();
    let mut expected = 0;
    for _ in 0..3 {
        let r = client
            .post(format!("{base}/v1/chat/completions"))
            .bearer_auth(DEMO_KEY)
            .json(&body(16))
            .send()
            .await
            .unwrap_or_else(|e| panic!("request: {e}"));
        assert_eq!(r.status(), 200);
        expected += cost_nanos(&json_of(r).await);
    }
    assert!(expected > 0);
    assert!(
        !file.exists(),
        "the state file was written before the shutdown"
    );
    common::sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap_or_else(|_| panic!("tollgate did not exit after SIGTERM"))
        .unwrap_or_else(|e| panic!("wait: {e}"));
    assert!(status.success(), "exit: {status}");
    let saved: Value = std::fs::read(&file)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_else(|| panic!("no readable state file after SIGTERM: {}", file.display()));
    assert_eq!(saved["teams"]["demo"]["nanos"], expected, "{saved}");

    let gw = Gateway::start(&cfg).await;
    assert_team_and_key_spent(&gw, expected).await;
}

#[tokio::test]
async fn redis_spend_survives_a_restart() {
    let block = limits_block(Backend::Redis, "");
    let cfg = config(&block, "", "", 0);
    let gw = Gateway::start(&cfg).await;
    let v = json_of(gw.post("/v1/chat/completions", body(16)).await).await;
    let expected = cost_nanos(&v);
    assert!(
        eventually(5, || async {
            (spend(&gw, Scope::Team, "demo").await * 1e9).round() as u64 == expected
        })
        .await
    );
    gw.stop().await;
    let gw = Gateway::start(&cfg).await;
    assert_eq!(
        (spend(&gw, Scope::Team, "demo").await * 1e9).round() as u64,
        expected
    );
}

// ---------------------------------------------------------------------------------------------
// Redis unreachable

async fn unused_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    l.local_addr().map(|a| a.port()).unwrap_or(1)
}

fn redis_block_at(url: &str, policy: &str) -> String {
    format!(
        "limits: {{ backend: redis, redis_url: \"{url}\", redis_prefix: \"{}\", \
         redis_timeout: 200ms, on_backend_error: {policy} }}",
        prefix()
    )
}

#[tokio::test]
async fn redis_down_fail_open_admits_without_headers_and_counts_errors() {
    let url = format!("redis://127.0.0.1:{}", unused_port().await);
    let cfg = config(
        &redis_block_at(&url, "fail_open"),
        ", requests_per_minute: 1",
        "",
        0,
    );
    let gw = Gateway::start(&cfg).await;
    for _ in 0..3 {
        let r = gw.post("/v1/chat/completions", body(8)).await;
        assert_eq!(r.status(), 200);
        assert!(header(&r, "x-ratelimit-limit-requests").is_none());
    }
    let text = gw.metrics_text().await;
    assert!(
        text.contains("tollgate_limiter_backend_errors_total{backend=\"redis\",op=\"admit\"}"),
        "{text}"
    );
}

#[tokio::test]
async fn redis_down_fail_closed_answers_503() {
    let url = format!("redis://127.0.0.1:{}", unused_port().await);
    let cfg = config(
        &redis_block_at(&url, "fail_closed"),
        ", requests_per_minute: 100",
        "",
        0,
    );
    let gw = Gateway::start(&cfg).await;
    let started = Instant::now();
    let r = gw.post("/v1/chat/completions", body(8)).await;
    assert_eq!(r.status(), 503);
    assert!(started.elapsed() < Duration::from_secs(2));
    assert_eq!(num(&r, "retry-after"), 1);
    let v = json_of(r).await;
    assert_eq!(v["error"]["code"], "limiter_unavailable", "{v}");
}

/// A TCP relay to Redis that can be cut (open connections dropped, new ones closed at once)
/// and restored.
struct Relay {
    addr: SocketAddr,
    cut: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Relay {
    async fn start(target: SocketAddr) -> Relay {
        let l = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let addr = l.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let cut = Arc::new(AtomicBool::new(false));
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (c, cs) = (cut.clone(), conns.clone());
        let task = tokio::spawn(async move {
            while let Ok((mut inbound, _)) = l.accept().await {
                if c.load(Ordering::SeqCst) {
                    drop(inbound);
                    continue;
                }
                let h = tokio::spawn(async move {
                    if let Ok(mut out) = TcpStream::connect(target).await {
                        let _ = tokio::io::copy_bidirectional(&mut inbound, &mut out).await;
                    }
                });
                cs.lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .push(h.abort_handle());
            }
        });
        Relay {
            addr,
            cut,
            conns,
            task,
        }
    }
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for h in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            h.abort();
        }
    }
    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

#[tokio::test]
async fn redis_outage_and_recovery_without_restart() {
    let target: SocketAddr = redis_url()
        .trim_start_matches("redis://")
        .split('/')
        .next()
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| "127.0.0.1:6379".parse().unwrap_or_else(|e| panic!("{e}")));
    let relay = Relay::start(target).await;
    let url = format!("redis://{}", relay.addr);
    let cfg = config(
        &redis_block_at(&url, "fail_closed"),
        ", requests_per_minute: 10000",
        "",
        0,
    );
    let gw = Gateway::start(&cfg).await;
    let r = gw.post("/v1/chat/completions", body(8)).await;
    assert_eq!(r.status(), 200);
    assert!(header(&r, "x-ratelimit-limit-requests").is_some());

    relay.cut();
    let down = eventually(5, || async {
        gw.post("/v1/chat/completions", body(8)).await.status() == 503
    })
    .await;
    assert!(down, "requests still admitted with Redis cut off");

    relay.restore();
    let back = eventually(10, || async {
        let r = gw.post("/v1/chat/completions", body(8)).await;
        r.status() == 200 && header(&r, "x-ratelimit-limit-requests").is_some()
    })
    .await;
    assert!(back, "the limiter did not recover after Redis came back");
}

// ---------------------------------------------------------------------------------------------
// Scale-out: two gateways, one Redis

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_gateways_share_one_team_limit_and_their_spend_adds_up() {
    // Redis never fails open here: on a busy machine a 250 ms wait for Redis would admit
    // requests unlimited (`fail_open`, the default) and the count would say nothing of the limit.
    let block = limits_block(
        Backend::Redis,
        ", redis_timeout: 10s, on_backend_error: fail_closed",
    );
    let cfg = config(&block, ", requests_per_minute: 600", "", 0);
    let a = Arc::new(Gateway::start(&cfg).await);
    let b = Arc::new(Gateway::start(&cfg).await);
    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(128));
    let mut tasks = Vec::new();
    for i in 0..900 {
        let gw = if i % 2 == 0 { a.clone() } else { b.clone() };
        let sem = sem.clone();
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await;
            let r = gw.post("/v1/chat/completions", body(8)).await;
            let status = r.status().as_u16();
            let v = if status == 200 {
                json_of(r).await
            } else {
                Value::Null
            };
            (status, v)
        }));
    }
    let (mut admitted, mut refused, mut spent) = (0u64, 0u64, 0u64);
    for t in tasks {
        match t.await.unwrap_or((0, Value::Null)) {
            (200, v) => {
                admitted += 1;
                spent += cost_nanos(&v);
            }
            (429, _) => refused += 1,
            (s, _) => panic!("unexpected status {s}"),
        }
    }
    let elapsed = started.elapsed();
    eprintln!("scale-out: admitted {admitted}, refused {refused} in {elapsed:?}");
    assert!(elapsed < Duration::from_secs(20), "too slow: {elapsed:?}");
    // Exactly: the burst of 600, plus what refilled at 10 per second during the run (GCRA
    // refills continuously; there is no window edge letting a second 600 through).
    let refill = (elapsed.as_secs_f64() * 10.0).ceil() as u64;
    assert!(
        (600..=600 + refill + 1).contains(&admitted),
        "admitted {admitted}, refused {refused} in {elapsed:?}"
    );
    // The issue's 600 ± 5% holds whenever the 900 requests take under 3 s (about 1 s here in a
    // debug build); a slower machine only sees more refill, bounded above.
    if elapsed < Duration::from_secs(3) {
        assert!((570..=630).contains(&admitted), "admitted {admitted}");
    }
    assert_eq!(admitted + refused, 900);
    let ok = eventually(5, || {
        let a = a.clone();
        async move { (spend(&a, Scope::Team, "demo").await * 1e9).round() as u64 == spent }
    })
    .await;
    assert!(
        ok,
        "spend in Redis {} != sum of real costs {spent}",
        spend(&a, Scope::Team, "demo").await * 1e9
    );
    // Both gateways read the same figure.
    assert_eq!(
        (spend(&b, Scope::Team, "demo").await * 1e9).round() as u64,
        spent
    );
}

// ---------------------------------------------------------------------------------------------
// A client that leaves mid-stream

#[tokio::test]
async fn a_client_leaving_mid_stream_releases_its_slot_and_pays_its_prompt() {
    let cfg = format!(
        r#"
upstreams:
  mock:
    provider: mock
    mock: {{ chunks: 20, chunk_delay: 100ms }}
models:
  mock-gpt: {{ targets: [ {{ upstream: mock }} ] }}
teams:
  demo: {{ models: ["*"], budget: {{ amount_usd: 1, period: monthly }} }}
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256}, max_concurrent: 1 }}
{}
"#,
        limits_block(Backend::Memory, "")
    );
    let gw = Gateway::start(&cfg).await;
    let text = "one two three four five six seven eight";
    let mut stream = gw
        .post("/v1/chat/completions", chat("mock-gpt", text, true))
        .await;
    assert_eq!(stream.status(), 200);
    let first = stream.chunk().await;
    assert!(matches!(first, Ok(Some(_))), "{first:?}");
    // The slot is held while the stream runs.
    let r = gw.post("/v1/chat/completions", body(8)).await;
    assert_eq!(r.status(), 429);
    drop(stream);
    // Gone: the prompt is charged (no usage chunk reached Tollgate) and the slot comes back.
    // docs/LIMITS.md: one token per 4 ASCII characters of the strings of `messages` (its role
    // and content), plus 4 for the message's framing; mock-gpt costs $1.00 per million input
    // tokens, 1,000 nano-dollars each.
    let prompt = ("user".len() + text.len()).div_ceil(4) as u64 + 4;
    let asked = chat("mock-gpt", text, true);
    let code = asked
        .as_object()
        .map(tollgate::limits::estimate_prompt_tokens);
    assert_eq!(code, Some(prompt), "the code estimates as the docs say");
    let least = prompt * 1_000;
    let spent = || async { (spend(&gw, Scope::Team, "demo").await * 1e9).round() as u64 };
    let charged = eventually(5, || async { spent().await >= least }).await;
    assert!(
        charged,
        "a disconnected stream was charged {} nano-dollars, less than its estimated prompt \
         ({prompt} tokens, {least})",
        spent().await
    );
    let ok = eventually(5, || async {
        gw.post("/v1/chat/completions", body(8)).await.status() == 200
    })
    .await;
    assert!(ok, "the slot of a disconnected stream was not released");
}

/// The team's and the key's spend, in nano-dollars, are both `expected`.
async fn assert_team_and_key_spent(gw: &Gateway, expected: u64) {
    assert_eq!(
        (spend(gw, Scope::Team, "demo").await * 1e9).round() as u64,
        expected
    );
    assert_eq!(
        (spend(gw, Scope::Key, "demo").await * 1e9).round() as u64,
        expected
    );
}
