//! Routing through real sockets: weights (the 90/10 split over 10,000 requests, weight 0
//! drains), the least-in-flight and latency strategies, ordered and per-reason fallbacks,
//! per-upstream concurrency with its priority queue, and what a client and an operator can see
//! of the choices made (response headers, the request log line's attempt list, metrics).

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Gateway, DEMO_KEY, DEMO_KEY_SHA256};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tollgate::testkit::{Fault, MockUpstream};

const T: Duration = Duration::from_secs(10);
const FAST_RETRY: &str = "retry: { base_backoff: 1ms, max_backoff: 5ms }";

// ---- harness ----

async fn mock() -> MockUpstream {
    MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("mock upstream: {e}"))
}

fn up(name: &str, m: &MockUpstream, extra: &str) -> String {
    format!(
        "  {name}: {{ provider: openai, base_url: \"{}\", timeouts: {{ first_byte: 2s, idle: 2s }}{extra} }}\n",
        m.base_url()
    )
}

fn config(upstreams: &str, models: &str) -> String {
    config_with(upstreams, models, "")
}

/// `teams_extra` adds teams and keys after the demo ones (`teams:` lines, then `keys:` lines
/// separated by `---keys---`).
fn config_with(upstreams: &str, models: &str, teams_extra: &str) -> String {
    let (teams, keys) = teams_extra
        .split_once("---keys---")
        .unwrap_or((teams_extra, ""));
    format!(
        "upstreams:\n{upstreams}models:\n{models}teams:\n  demo: {{ models: [\"*\"] }}\n{teams}\
         keys:\n  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}\n{keys}"
    )
}

struct Reply {
    status: u16,
    headers: reqwest::header::HeaderMap,
    body: String,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn upstream(&self) -> String {
        self.header("x-tollgate-upstream").unwrap_or("").to_owned()
    }
    fn attempts(&self) -> Option<u32> {
        self.header("x-tollgate-attempts")
            .and_then(|v| v.parse().ok())
    }
    fn json(&self) -> Value {
        serde_json::from_str(&self.body).unwrap_or(Value::Null)
    }
}

fn chat(model: &str, text: &str) -> Value {
    json!({"model": model, "messages": [{"role": "user", "content": text}]})
}

async fn send_as(
    gw: &Gateway,
    key: &str,
    model: &str,
    text: &str,
    headers: &[(&str, &str)],
) -> Reply {
    let mut rb = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&chat(model, text));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let resp = rb.send().await.unwrap_or_else(|e| panic!("request: {e}"));
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap_or_else(|e| panic!("body: {e}"));
    Reply {
        status,
        headers,
        body,
    }
}

async fn send(gw: &Gateway, model: &str, text: &str) -> Reply {
    send_as(gw, DEMO_KEY, model, text, &[]).await
}

/// Requests `model` `total` times from `concurrency` workers; counts `x-tollgate-upstream`
/// of the 200 answers (key "" collects everything else).
async fn spread(
    gw: &Gateway,
    model: &str,
    total: usize,
    concurrency: usize,
) -> HashMap<String, usize> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, url, next) = (
            gw.client.clone(),
            gw.url("/v1/chat/completions"),
            next.clone(),
        );
        let model = model.to_owned();
        workers.push(tokio::spawn(async move {
            let mut seen: HashMap<String, usize> = HashMap::new();
            while next.fetch_add(1, Ordering::Relaxed) < total {
                let r = client
                    .post(&url)
                    .bearer_auth(DEMO_KEY)
                    .json(&chat(&model, "split"))
                    .send()
                    .await;
                let name = match r {
                    Ok(r) if r.status() == 200 => r
                        .headers()
                        .get("x-tollgate-upstream")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_owned(),
                    _ => String::new(),
                };
                *seen.entry(name).or_default() += 1;
            }
            seen
        }));
    }
    let mut all: HashMap<String, usize> = HashMap::new();
    for w in workers {
        for (k, v) in w.await.unwrap_or_else(|e| panic!("{e}")) {
            *all.entry(k).or_default() += v;
        }
    }
    all
}

async fn metrics(gw: &Gateway) -> String {
    gw.metrics_text().await
}

/// Waits (bounded) until `n` requests wait in `upstream`'s queue.
async fn wait_queued(gw: &Gateway, upstream: &str, n: usize) {
    let t0 = Instant::now();
    loop {
        let queued = gw
            .state
            .snapshot
            .load()
            .upstreams
            .get(upstream)
            .map_or(0, |u| u.gate.queued());
        if queued >= n {
            return;
        }
        assert!(
            t0.elapsed() < T,
            "{upstream}: {queued} queued, waited for {n}"
        );
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

// ---- weights ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_90_10_split_over_10000_requests() {
    let cfg = config(
        "  m90: { provider: mock }\n  m10: { provider: mock }\n",
        "  canary: { targets: [ { upstream: m90, weight: 90 }, { upstream: m10, weight: 10 } ] }\n",
    );
    let gw = Gateway::start(&cfg).await;
    let total = 10_000;
    let t0 = Instant::now();
    let seen = spread(&gw, "canary", total, 32).await;
    let (n90, n10) = (
        seen.get("m90").copied().unwrap_or(0),
        seen.get("m10").copied().unwrap_or(0),
    );
    let share = n10 as f64 / total as f64;
    println!(
        "90/10 split: {total} requests in {:.2?}: m90={n90} m10={n10} -> {:.2}% to the 10% target \
         (allowed 8%..12%)",
        t0.elapsed(),
        share * 100.0
    );
    assert_eq!(n90 + n10, total, "{seen:?}");
    assert!((0.08..=0.12).contains(&share), "{share}");
}

#[tokio::test]
async fn weight_zero_drains_even_for_retries() {
    let (a, b) = (mock().await, mock().await);
    let cfg = config(
        &(up("a", &a, "") + &up("b", &b, "")),
        &format!("  m: {{ targets: [ {{ upstream: a, weight: 0 }}, {{ upstream: b, weight: 1 }} ], {FAST_RETRY} }}\n"),
    );
    let gw = Gateway::start(&cfg).await;
    for i in 0..50 {
        let r = send(&gw, "m", &format!("d{i}")).await;
        assert_eq!((r.status, r.upstream()), (200, "b".to_owned()));
    }
    // Even when the live target fails, the drained one is not tried.
    b.set_default_fault(Some(Fault::Status {
        status: 503,
        body: String::new(),
        retry_after: None,
    }));
    let r = send(&gw, "m", "x").await;
    assert_eq!((r.status, r.attempts()), (503, Some(3)));
    assert_eq!(a.request_count(), 0);
}

// ---- strategies ----

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn least_in_flight_avoids_the_busy_upstream() {
    // `slow` holds each request 300ms, `fast` answers at once. With 4 concurrent clients,
    // least-in-flight sends new requests to `fast` while `slow` is busy; weighted random would
    // send half of them (20) to `slow` and take 3 s.
    let (slow, fast) = (mock().await, mock().await);
    slow.set_first_byte_delay(Duration::from_millis(300));
    let cfg = config(
        &(up("slow", &slow, "") + &up("fast", &fast, "")),
        "  m: { strategy: least_in_flight, targets: [ { upstream: slow }, { upstream: fast } ] }\n",
    );
    let gw = Gateway::start(&cfg).await;
    let t0 = Instant::now();
    let seen = spread(&gw, "m", 40, 4).await;
    let n_slow = seen.get("slow").copied().unwrap_or(0);
    println!("least_in_flight: {seen:?} in {:.2?}", t0.elapsed());
    assert_eq!(seen.get("fast").copied().unwrap_or(0) + n_slow, 40);
    assert!(n_slow <= 6, "slow got {n_slow} of 40");
}

#[tokio::test]
async fn latency_strategy_prefers_the_fast_upstream() {
    let (slow, fast) = (mock().await, mock().await);
    slow.set_first_byte_delay(Duration::from_millis(50));
    let cfg = config(
        &(up("slow", &slow, "") + &up("fast", &fast, "")),
        "  m: { strategy: latency, targets: [ { upstream: slow }, { upstream: fast } ] }\n",
    );
    let gw = Gateway::start(&cfg).await;
    // Warm-up: an upstream without a sample is tried first, so both get measured.
    for i in 0..4 {
        assert_eq!(send(&gw, "m", &format!("warm {i}")).await.status, 200);
    }
    assert!(slow.request_count() >= 1 && fast.request_count() >= 1);
    let mut to_fast = 0;
    for i in 0..100 {
        if send(&gw, "m", &format!("r{i}")).await.upstream() == "fast" {
            to_fast += 1;
        }
    }
    println!("latency strategy: {to_fast}/100 to the fast upstream after warm-up");
    // By construction, not by chance: after the warm-up the slow one's EWMA is about 50 ms
    // and the fast one's about 0, and each fast answer only lowers it further.
    assert_eq!(to_fast, 100, "{to_fast} of 100 to the fast upstream");
}

// ---- fallbacks ----

fn status(status: u16, code: &str) -> Fault {
    Fault::Status {
        status,
        body: json!({"error": {"message": "injected", "type": "invalid_request_error",
            "param": null, "code": code}})
        .to_string(),
        retry_after: None,
    }
}

#[tokio::test]
async fn ordered_fallbacks_after_every_target_failed() {
    let (a, c, d) = (mock().await, mock().await, mock().await);
    let cfg = config(
        &(up("a", &a, "") + &up("c", &c, "") + &up("d", &d, "")),
        &format!(
            "  primary: {{ targets: [ {{ upstream: a }} ], fallbacks: [second, third], retry: {{ max_attempts: 2, base_backoff: 1ms }} }}\n  \
             second: {{ targets: [ {{ upstream: c }} ], {FAST_RETRY} }}\n  \
             third: {{ targets: [ {{ upstream: d }} ], {FAST_RETRY} }}\n"
        ),
    );
    let gw = Gateway::start(&cfg).await;
    a.set_default_fault(Some(status(503, "down")));
    // `second` serves after both of `primary`'s attempts failed.
    let r = send(&gw, "primary", "fb").await;
    assert_eq!(
        (r.status, r.upstream(), r.attempts()),
        (200, "c".to_owned(), Some(3))
    );
    assert_eq!((a.request_count(), c.request_count()), (2, 1));
    assert_eq!(c.received()[0].body["model"], "second");
    // `second` down too: `third`, in order.
    c.set_default_fault(Some(status(502, "down")));
    let r = send(&gw, "primary", "fb").await;
    assert_eq!((r.status, r.upstream()), (200, "d".to_owned()));
    assert_eq!(r.json()["choices"][0]["message"]["content"], "echo: fb");
    // A non-retryable error (a plain 400) does not fall back.
    a.set_default_fault(None);
    a.push_fault(status(400, "invalid_value"));
    let r = send(&gw, "primary", "fb").await;
    assert_eq!((r.status, r.attempts()), (400, Some(1)));
    assert_eq!(r.json()["error"]["code"], "invalid_value");
    assert_eq!(d.request_count(), 1);
    assert!(metrics(&gw)
        .await
        .contains("tollgate_fallbacks_total{from=\"primary\",to=\"second\"}"));
}

#[tokio::test]
async fn context_length_error_goes_to_the_larger_model() {
    let (a, b) = (mock().await, mock().await);
    let cfg = config(
        &(up("a", &a, "") + &up("b", &b, "")),
        &format!(
            "  small: {{ targets: [ {{ upstream: a }} ], fallback_on: {{ context_length: big }}, {FAST_RETRY} }}\n  \
             big: {{ targets: [ {{ upstream: b }} ], {FAST_RETRY} }}\n"
        ),
    );
    let gw = Gateway::start(&cfg).await;
    a.push_fault(status(400, "context_length_exceeded"));
    let r = send(&gw, "small", "a very long prompt").await;
    assert_eq!(
        (r.status, r.upstream(), r.attempts()),
        (200, "b".to_owned(), Some(2))
    );
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
    assert_eq!(b.received()[0].body["model"], "big");
    // Another 400 is the client's to see; `big` is not asked.
    a.push_fault(status(400, "invalid_value"));
    let r = send(&gw, "small", "x").await;
    assert_eq!((r.status, r.attempts()), (400, Some(1)));
    assert_eq!(b.request_count(), 1);
}

// ---- per-upstream concurrency ----

#[tokio::test]
async fn full_queue_answers_503_with_retry_after() {
    let q = mock().await;
    let cfg = config(
        &up("q", &q, ", max_concurrent: 1, max_queue: 1"),
        &format!("  m: {{ targets: [ {{ upstream: q }} ], {FAST_RETRY} }}\n"),
    );
    let gw = Arc::new(Gateway::start(&cfg).await);
    q.push_fault(Fault::DelayFirstByte(Duration::from_millis(600)));
    let g1 = gw.clone();
    let held = tokio::spawn(async move { send(&g1, "m", "held").await.status });
    assert!(q.wait_requests(1, T).await);
    let g2 = gw.clone();
    let queued = tokio::spawn(async move { send(&g2, "m", "queued").await.status });
    wait_queued(&gw, "q", 1).await;
    let r = send(&gw, "m", "third").await;
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "upstream_unavailable");
    assert!(r.json()["error"]["message"]
        .as_str()
        .unwrap_or("")
        .contains("queue is full"));
    assert_eq!(r.header("retry-after"), Some("1"));
    assert_eq!(held.await.unwrap_or(0), 200);
    assert_eq!(queued.await.unwrap_or(0), 200);
    assert_eq!(
        q.request_count(),
        2,
        "the refused request never reached the upstream"
    );
}

#[tokio::test]
async fn queue_wait_past_the_deadline_answers_503() {
    let q = mock().await;
    let cfg = config(
        &up("q", &q, ", max_concurrent: 1, max_queue: 8"),
        &format!(
            "  long: {{ targets: [ {{ upstream: q }} ], {FAST_RETRY} }}\n  \
             short: {{ targets: [ {{ upstream: q }} ], deadline: 300ms, {FAST_RETRY} }}\n"
        ),
    );
    let gw = Arc::new(Gateway::start(&cfg).await);
    q.push_fault(Fault::DelayFirstByte(Duration::from_millis(800)));
    let g1 = gw.clone();
    let held = tokio::spawn(async move { send(&g1, "long", "held").await.status });
    assert!(q.wait_requests(1, T).await);
    let t0 = Instant::now();
    let r = send(&gw, "short", "waits").await;
    let took = t0.elapsed();
    assert_eq!(r.status, 503, "{}", r.body);
    assert_eq!(r.json()["error"]["code"], "upstream_unavailable");
    assert!(r.header("retry-after").is_some());
    assert!(
        took >= Duration::from_millis(290) && took < Duration::from_millis(700),
        "{took:?}"
    );
    assert_eq!(held.await.unwrap_or(0), 200);
}

fn sha256_hex(s: &str) -> String {
    Sha256::digest(s.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

#[tokio::test]
async fn queue_serves_high_before_low_and_caps_team_priority() {
    // One slot, held by a slow request. A low then a high request queue up; when the slot
    // frees, the high one is served first. Then a team capped at `normal` asks for `high` after
    // another team's `normal`: capped, it waits its turn.
    let q = mock().await;
    let capped_key = "sk-capped-team";
    let extra = format!(
        "  capped: {{ models: [\"*\"], max_priority: normal }}\n---keys---  - {{ name: capped, team: capped, sha256: {} }}\n",
        sha256_hex(capped_key)
    );
    let cfg = config_with(
        &up("q", &q, ", max_concurrent: 1, max_queue: 8"),
        &format!("  m: {{ targets: [ {{ upstream: q }} ], {FAST_RETRY} }}\n"),
        &extra,
    );
    let gw = Arc::new(Gateway::start(&cfg).await);
    let queue_up = |key: &'static str, text: &'static str, prio: &'static str| {
        let gw = gw.clone();
        tokio::spawn(async move {
            send_as(&gw, key, "m", text, &[("x-tollgate-priority", prio)])
                .await
                .status
        })
    };
    let order = |q: &MockUpstream| -> Vec<String> {
        let mut rec = q.received();
        rec.sort_by_key(|r| r.at);
        rec.iter()
            .map(|r| {
                r.body["messages"][0]["content"]
                    .as_str()
                    .unwrap_or("")
                    .to_owned()
            })
            .collect()
    };

    q.push_fault(Fault::DelayFirstByte(Duration::from_millis(300)));
    let held = queue_up(DEMO_KEY, "held", "normal");
    assert!(q.wait_requests(1, T).await);
    let low = queue_up(DEMO_KEY, "low", "low");
    wait_queued(&gw, "q", 1).await;
    let high = queue_up(DEMO_KEY, "high", "high");
    wait_queued(&gw, "q", 2).await;
    for t in [held, low, high] {
        assert_eq!(t.await.unwrap_or(0), 200);
    }
    assert_eq!(order(&q), ["held", "high", "low"]);

    q.clear_records();
    q.push_fault(Fault::DelayFirstByte(Duration::from_millis(300)));
    let held = queue_up(DEMO_KEY, "held", "normal");
    assert!(q.wait_requests(1, T).await);
    let normal = queue_up(DEMO_KEY, "normal", "normal");
    wait_queued(&gw, "q", 1).await;
    let capped = queue_up(capped_key, "capped-high", "high");
    wait_queued(&gw, "q", 2).await;
    for t in [held, normal, capped] {
        assert_eq!(t.await.unwrap_or(0), 200);
    }
    assert_eq!(order(&q), ["held", "normal", "capped-high"]);
    let bad = send_as(
        &gw,
        DEMO_KEY,
        "m",
        "x",
        &[("x-tollgate-priority", "urgent")],
    )
    .await;
    assert_eq!(bad.status, 400);
}

// ---- visible choices ----

/// Collects log output written through a thread-local subscriber.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if let Ok(mut v) = self.0.lock() {
            v.extend_from_slice(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn headers_and_the_request_log_list_every_attempt() {
    // This test's runtime is single-threaded, so a thread-local subscriber sees the gateway's
    // request log lines (and no other test's).
    let out = Captured::default();
    let writer = out.clone();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .flatten_event(true)
        .with_writer(move || writer.clone())
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    let (a, b) = (mock().await, mock().await);
    let cfg = config(
        &(up("a", &a, "") + &up("b", &b, "")),
        &format!("  m: {{ targets: [ {{ upstream: a, weight: 1000000000 }}, {{ upstream: b, weight: 1 }} ], {FAST_RETRY} }}\n"),
    );
    let gw = Gateway::start(&cfg).await;
    a.push_fault(status(500, "boom"));
    let r = send(&gw, "m", "seen").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.header("x-tollgate-upstream"), Some("b"));
    assert_eq!(r.header("x-tollgate-attempts"), Some("2"));
    let id = r.header("x-request-id").unwrap_or("").to_owned();
    let r = send(&gw, "m", "plain").await;
    assert_eq!((r.upstream(), r.attempts()), ("a".to_owned(), Some(1)));
    drop(gw);

    let text =
        String::from_utf8(out.0.lock().map(|v| v.clone()).unwrap_or_default()).unwrap_or_default();
    let line: Value = text
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["log_type"] == "request" && v["request_id"] == id.as_str())
        .unwrap_or_else(|| panic!("no request log line for {id} in\n{text}"));
    assert_eq!(line["upstream"], "b");
    assert_eq!(line["attempts"], 2);
    let log = line["attempt_log"].as_str().unwrap_or("");
    let parts: Vec<&str> = log.split(',').collect();
    assert_eq!(parts.len(), 2, "{log}");
    assert!(parts[0].starts_with("a:upstream_server_error:"), "{log}");
    assert!(parts[1].starts_with("b:ok:"), "{log}");
}

#[tokio::test]
async fn metrics_show_attempts_breaker_and_queue_per_upstream() {
    let (q, f) = (mock().await, mock().await);
    let cfg = config(
        &(up("metrics-q", &q, ", max_concurrent: 1, max_queue: 4") + &up("metrics-f", &f, "")),
        &format!(
            "  m: {{ targets: [ {{ upstream: metrics-q }} ], {FAST_RETRY} }}\n  \
             n: {{ targets: [ {{ upstream: metrics-f }} ], {FAST_RETRY} }}\n"
        ),
    );
    let gw = Arc::new(Gateway::start(&cfg).await);
    q.push_fault(Fault::DelayFirstByte(Duration::from_millis(200)));
    let g1 = gw.clone();
    let held = tokio::spawn(async move { send(&g1, "m", "held").await.status });
    assert!(q.wait_requests(1, T).await);
    let g2 = gw.clone();
    let waiting = tokio::spawn(async move { send(&g2, "m", "waits").await.status });
    wait_queued(&gw, "metrics-q", 1).await;
    let text = metrics(&gw).await;
    assert!(
        text.contains("tollgate_upstream_queue_depth{upstream=\"metrics-q\"} 1"),
        "{text}"
    );
    assert_eq!(held.await.unwrap_or(0), 200);
    assert_eq!(waiting.await.unwrap_or(0), 200);
    f.push_fault(status(502, "bad"));
    let _ = send(&gw, "n", "x").await;

    let text = metrics(&gw).await;
    for needle in [
        "tollgate_upstream_attempts_total{upstream=\"metrics-q\",outcome=\"ok\"} 2",
        "tollgate_upstream_attempts_total{upstream=\"metrics-f\",outcome=\"upstream_server_error\"} 1",
        "tollgate_upstream_attempts_total{upstream=\"metrics-f\",outcome=\"ok\"} 1",
        "tollgate_upstream_breaker_state{upstream=\"metrics-q\"} 0",
        "tollgate_upstream_breaker_state{upstream=\"metrics-f\"} 0",
        // The queue drained: the gauge comes back down.
        "tollgate_upstream_queue_depth{upstream=\"metrics-q\"} 0",
        "tollgate_upstream_queue_wait_seconds_count{upstream=\"metrics-q\"} 1",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
}
