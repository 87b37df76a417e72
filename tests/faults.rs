//! The fault suite: every fault knob of the test kit's mock upstream, through real sockets, each
//! test stating what a client sees. A fault before the first byte reached the client is
//! answered OpenAI-shaped with the upstream's (or Tollgate's) status when the model has one
//! upstream, and rescued by the retry when it has two; a fault after the first byte ends the
//! stream with an SSE error event and is never retried. Then the retry rules (4xx, Retry-After,
//! the attempts header, the deadline, the retry budget), the breaker's life cycle, and bounded
//! load tests whose figures are printed (`cargo test --test faults -- --nocapture`) and
//! recorded in docs/RELIABILITY.md.
//!
//! Model `one` has the single upstream `a`; model `two` has `a` then `b`: `a` weighs 10^9 and
//! `b` 1, so `a` is planned first (all but surely) and `b` is what a retry moves to.

mod common;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{metric_value, Gateway, Reply, DEMO_KEY, DEMO_KEY_SHA256};
use serde_json::{json, Value};
use tollgate::routing::breaker::State as BreakerState;
use tollgate::testkit::{Fault, MockUpstream};

const T: Duration = Duration::from_secs(10);
const FAST_RETRY: &str = "retry: { base_backoff: 1ms, max_backoff: 5ms }";
const TIMEOUTS: &str = "timeouts: { first_byte: 300ms, idle: 300ms }";

// ---- harness ----

async fn mock() -> MockUpstream {
    MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("mock upstream: {e}"))
}

/// A base URL nothing listens on: a port bound and released again.
fn refused_url() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("bind: {e}"));
    let addr = l.local_addr().unwrap_or_else(|e| panic!("addr: {e}"));
    drop(l);
    format!("http://{addr}/v1")
}

/// One `openai` upstream entry with short timeouts; `extra` adds fields (`, breaker: {..}`).
fn up(name: &str, url: &str, extra: &str) -> String {
    format!("  {name}: {{ provider: openai, base_url: \"{url}\", {TIMEOUTS}{extra} }}\n")
}

fn config(upstreams: &str, models: &str) -> String {
    format!(
        "upstreams:\n{upstreams}models:\n{models}teams:\n  demo: {{ models: [\"*\"] }}\n\
         keys:\n  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}\n"
    )
}

fn models(retry: &str) -> String {
    format!(
        "  one: {{ targets: [ {{ upstream: a }} ], {retry} }}\n  two: {{ targets: [ \
         {{ upstream: a, weight: 1000000000 }}, {{ upstream: b, weight: 1 }} ], {retry} }}\n"
    )
}

struct Setup {
    gw: Gateway,
    a: MockUpstream,
    b: MockUpstream,
}

/// Mocks `a` and `b`, models `one` and `two`; `a_extra` is appended to upstream `a`.
async fn setup_with(a_extra: &str, retry: &str) -> Setup {
    let (a, b) = (mock().await, mock().await);
    let ups = up("a", &a.base_url(), a_extra) + &up("b", &b.base_url(), "");
    let gw = Gateway::start(&config(&ups, &models(retry))).await;
    Setup { gw, a, b }
}

async fn setup() -> Setup {
    setup_with("", FAST_RETRY).await
}

fn breaker_state(gw: &Gateway, upstream: &str) -> BreakerState {
    let snap = gw.state.snapshot.load();
    match snap.upstreams.get(upstream) {
        Some(u) => u.breaker.state(),
        None => panic!("no upstream {upstream}"),
    }
}

fn chat(model: &str, text: &str, stream: bool) -> Value {
    json!({"model": model, "stream": stream, "messages": [{"role": "user", "content": text}]})
}

/// The test kit's echo for `text`.
fn echo(text: &str) -> String {
    format!("echo: {text}")
}

async fn send_with(
    gw: &Gateway,
    model: &str,
    text: &str,
    stream: bool,
    headers: &[(&str, &str)],
) -> Reply {
    let mut rb = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(DEMO_KEY)
        .json(&chat(model, text, stream));
    for (k, v) in headers {
        rb = rb.header(*k, *v);
    }
    let resp = rb
        .send()
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}"));
    Reply::read(resp).await
}

async fn send(gw: &Gateway, model: &str, text: &str, stream: bool) -> Reply {
    send_with(gw, model, text, stream, &[]).await
}

fn openai_body(code: &str) -> String {
    json!({"error": {"message": "injected", "type": "server_error", "param": null, "code": code}})
        .to_string()
}

fn status_fault(status: u16, code: &str, retry_after: Option<u64>) -> Fault {
    Fault::Status {
        status,
        body: openai_body(code),
        retry_after,
    }
}

/// A fault before any byte reached the client. With one upstream that always fails this way
/// the client gets `status` with OpenAI `code` after the model's 3 attempts (all three reach
/// the upstream); with two upstreams and the fault once, the retry on `b` rescues it: 200,
/// `x-tollgate-attempts: 2`, `x-tollgate-upstream: b`, the right content.
async fn rescued_before_first_byte(fault: Fault, stream: bool, status: u16, code: &str) {
    let s = setup().await;
    s.a.set_default_fault(Some(fault.clone()));
    let r = send(&s.gw, "one", "hello fault", stream).await;
    assert_eq!(r.status, status, "single upstream, {fault:?}: {}", r.body);
    assert_eq!(r.error_code(), code, "{fault:?}");
    assert_eq!(r.attempts(), Some(3), "{fault:?}");
    assert!(
        s.a.wait_requests(3, T).await,
        "the upstream saw every attempt"
    );
    assert_eq!(s.a.request_count(), 3, "{fault:?}");

    s.a.set_default_fault(None);
    s.a.clear_records();
    s.a.push_fault(fault.clone());
    let r = send(&s.gw, "two", "hello rescue", stream).await;
    assert_eq!(r.status, 200, "two upstreams, {fault:?}: {}", r.body);
    assert_eq!(r.attempts(), Some(2), "{fault:?}");
    assert_eq!(r.upstream(), Some("b"), "{fault:?}");
    assert_eq!(r.content(), echo("hello rescue"), "{fault:?}");
    if stream {
        assert_eq!(r.events().last().map(String::as_str), Some("[DONE]"));
    }
    assert_eq!((s.a.request_count(), s.b.request_count()), (1, 1));
}

/// A fault after the first stream event reached the client: the client gets 200, the content
/// so far, then an SSE error event with `code`, and no `[DONE]`. It is never retried: `b`
/// receives nothing even on model `two`, and the upstream request is cancelled.
async fn broken_after_first_byte(fault: Fault, code: &str) {
    let s = setup().await;
    let text = "w1 w2 w3 w4 w5 w6";
    for model in ["one", "two"] {
        s.a.push_fault(fault.clone());
        let r = send(&s.gw, model, text, true).await;
        assert_eq!(r.status, 200, "{model}: {}", r.body);
        assert_eq!(r.upstream(), Some("a"));
        assert_eq!(r.attempts(), Some(1));
        let content = r.content();
        assert!(
            !content.is_empty() && echo(text).starts_with(&content) && content != echo(text),
            "{model}: partial content expected, got {content:?}"
        );
        let events = r.events();
        let last: Value = events
            .last()
            .and_then(|e| serde_json::from_str(e).ok())
            .unwrap_or(Value::Null);
        assert_eq!(last["error"]["code"], code, "{model}: {events:?}");
        assert!(last["error"]["message"].is_string());
        assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    }
    assert_eq!(s.b.request_count(), 0, "never retried after the first byte");
    assert_eq!(s.a.request_count(), 2);
}

// ---- one test per fault ----

#[tokio::test]
async fn fault_connection_refused() {
    let b = mock().await;
    // (A high breaker threshold: six failures below must not open it.)
    let extra = ", breaker: { consecutive_failures: 100 }";
    let ups = up("a", &refused_url(), extra) + &up("b", &b.base_url(), "");
    let gw = Gateway::start(&config(&ups, &models(FAST_RETRY))).await;
    // Alone: 502 upstream_unreachable after three attempts.
    let r = send(&gw, "one", "x", false).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.error_code(), "upstream_unreachable");
    assert_eq!(r.attempts(), Some(3));
    // Streams too: nothing was sent, so the error is a plain JSON answer.
    let r = send(&gw, "one", "x", true).await;
    assert_eq!(r.status, 502);
    assert_eq!(r.error_code(), "upstream_unreachable");
    // With a second upstream: rescued.
    for stream in [false, true] {
        let r = send(&gw, "two", "hello", stream).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.attempts(), Some(2));
        assert_eq!(r.upstream(), Some("b"));
        assert_eq!(r.content(), echo("hello"));
    }
}

#[tokio::test]
async fn fault_status_500() {
    // The upstream's OpenAI-shaped body passes through with its status and code.
    rescued_before_first_byte(status_fault(500, "mock_500", None), false, 500, "mock_500").await;
}

#[tokio::test]
async fn fault_status_502_with_a_non_json_body() {
    // A body that is not OpenAI-shaped is replaced by Tollgate's message: code `upstream_error`.
    let fault = Fault::Status {
        status: 502,
        body: "<html>bad gateway</html>".into(),
        retry_after: None,
    };
    rescued_before_first_byte(fault, false, 502, "upstream_error").await;
}

#[tokio::test]
async fn fault_status_503_on_a_stream_request() {
    // Before the first byte a stream request gets a plain JSON error, not an event stream.
    rescued_before_first_byte(status_fault(503, "mock_503", None), true, 503, "mock_503").await;
}

#[tokio::test]
async fn fault_reset_mid_body_non_stream() {
    // A non-stream answer is read whole before anything is sent, so a reset is retried.
    rescued_before_first_byte(Fault::ResetMidBody, false, 502, "upstream_unreachable").await;
}

#[tokio::test]
async fn fault_reset_mid_stream() {
    broken_after_first_byte(Fault::ResetMidBody, "upstream_stream_broken").await;
}

#[tokio::test]
async fn fault_slow_first_byte() {
    // Headers later than `timeouts.first_byte` (300ms): 504, retried.
    let f = Fault::DelayFirstByte(Duration::from_secs(2));
    rescued_before_first_byte(f.clone(), false, 504, "upstream_timeout").await;
    rescued_before_first_byte(f, true, 504, "upstream_timeout").await;
}

#[tokio::test]
async fn fault_hang() {
    rescued_before_first_byte(Fault::Hang, false, 504, "upstream_timeout").await;
}

#[tokio::test]
async fn fault_stalled_stream_after_two_events() {
    // The idle timeout (300ms) ends the stream with an error event; the upstream is cancelled.
    broken_after_first_byte(Fault::StallAfterChunks(2), "upstream_timeout").await;
}

#[tokio::test]
async fn fault_stalled_stream_before_the_first_event() {
    // Headers came but no event: nothing was sent yet, so it is a retryable timeout.
    rescued_before_first_byte(Fault::StallAfterChunks(0), true, 504, "upstream_timeout").await;
}

#[tokio::test]
async fn fault_stalled_non_stream_body() {
    rescued_before_first_byte(Fault::StallAfterChunks(1), false, 504, "upstream_timeout").await;
}

#[tokio::test]
async fn fault_malformed_sse() {
    // The first event is not JSON: the stream is not committed, 502, retried.
    rescued_before_first_byte(Fault::MalformedSse, true, 502, "upstream_invalid_response").await;
    // The same garbage as the answer to a non-stream request.
    rescued_before_first_byte(Fault::MalformedSse, false, 502, "upstream_invalid_response").await;
}

#[tokio::test]
async fn fault_truncated_json() {
    // A 200 whose JSON body ends half way (cleanly): 502, retried.
    rescued_before_first_byte(
        Fault::TruncatedJson,
        false,
        502,
        "upstream_invalid_response",
    )
    .await;
}

#[tokio::test]
async fn fault_truncated_stream_is_not_retried_and_not_completed() {
    // A 200 event stream cut in half with a clean end. Its first events are well formed, so
    // the stream is committed and relayed; the client sees a strict prefix of the content and
    // no `[DONE]`, and nothing is retried. (The test below checks the error event it ends with.)
    let s = setup().await;
    let text = "w1 w2 w3 w4 w5 w6 w7 w8";
    s.a.push_fault(Fault::TruncatedJson);
    let r = send(&s.gw, "two", text, true).await;
    assert_eq!(r.status, 200);
    let content = r.content();
    assert!(
        echo(text).starts_with(&content) && content != echo(text),
        "{content:?}"
    );
    assert!(!r.events().iter().any(|e| e == "[DONE]"));
    assert_eq!(s.b.request_count(), 0);
}

/// The cut stream, as docs/RELIABILITY.md §8 states it: 200, a strict prefix of the content,
/// then an SSE error event with code `upstream_invalid` as its last event, and no `[DONE]`.
#[tokio::test]
async fn fault_truncated_stream_ends_with_an_error_event() {
    let s = setup().await;
    let text = "w1 w2 w3 w4 w5 w6 w7 w8";
    s.a.push_fault(Fault::TruncatedJson);
    let r = send(&s.gw, "one", text, true).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let events = r.events();
    let last: Value = events
        .last()
        .and_then(|e| serde_json::from_str(e).ok())
        .unwrap_or(Value::Null);
    assert_eq!(last["error"]["code"], "upstream_invalid", "{events:?}");
    assert!(last["error"]["message"].is_string(), "{events:?}");
    assert!(!events.iter().any(|e| e == "[DONE]"), "{events:?}");
    let content = r.content();
    assert!(
        !content.is_empty() && echo(text).starts_with(&content) && content != echo(text),
        "a strict prefix of {:?} expected, got {content:?}",
        echo(text)
    );
}

/// A 429 that says the upstream account is out (`x-ratelimit-remaining-requests: 0`, as OpenAI
/// sends): only such evidence marks an upstream rate limited for every request (see
/// tests/upstream_trust.rs for a 429 about one request only).
fn account_429(retry_after: u64) -> Fault {
    Fault::Respond {
        status: 429,
        headers: vec![
            ("retry-after".into(), retry_after.to_string()),
            ("x-ratelimit-remaining-requests".into(), "0".into()),
        ],
        body: openai_body("rate_limit_exceeded"),
    }
}

#[tokio::test]
async fn fault_429_with_retry_after_two_upstreams() {
    // A 429 about the account with Retry-After: 2 marks `a` rate limited: this request is
    // rescued by `b`, and the following ones go to `b` without touching `a` until the two
    // seconds have passed. A 429 is not a health failure: `a`'s breaker stays closed.
    let s = setup().await;
    s.a.push_fault(account_429(2));
    let r = send(&s.gw, "two", "hello", false).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!((r.attempts(), r.upstream()), (Some(2), Some("b")));
    let marked = Instant::now();
    for i in 0..20 {
        let r = send(&s.gw, "two", &format!("next {i}"), false).await;
        assert_eq!(
            (r.status, r.attempts(), r.upstream()),
            (200, Some(1), Some("b"))
        );
    }
    assert!(
        marked.elapsed() < Duration::from_millis(1500),
        "too slow to tell"
    );
    assert_eq!(s.a.request_count(), 1, "rate-limited upstream was skipped");
    assert_eq!(breaker_state(&s.gw, "a"), BreakerState::Closed);
    // Waiting out the Retry-After is the point of this step.
    tokio::time::sleep(Duration::from_millis(2100).saturating_sub(marked.elapsed())).await;
    let r = send(&s.gw, "two", "again", false).await;
    assert_eq!((r.status, r.upstream()), (200, Some("a")));
}

#[tokio::test]
async fn fault_429_with_retry_after_single_upstream() {
    // Alone, with a Retry-After longer than `retry.max_retry_after` (5s by default), the
    // client gets the upstream's 429 with its Retry-After after one attempt (no retry is sent
    // into a Retry-After window); while the window lasts Tollgate answers 429 with the
    // remaining Retry-After itself, without contacting the upstream. (A shorter Retry-After is
    // waited out: tests/upstream_trust.rs.)
    let s = setup().await;
    s.a.push_fault(account_429(8));
    let r = send(&s.gw, "one", "hello", false).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("8"));
    assert_eq!(r.error_code(), "rate_limit_exceeded");
    assert_eq!(r.attempts(), Some(1));
    let r = send(&s.gw, "one", "hello", true).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.error_code(), "upstream_rate_limited");
    let secs: u64 = r
        .header("retry-after")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=8).contains(&secs), "retry-after {secs}");
    assert_eq!(s.a.request_count(), 1);
    assert_eq!(breaker_state(&s.gw, "a"), BreakerState::Closed);
}

// ---- retry rules ----

#[tokio::test]
async fn client_errors_are_not_retried_but_408_409_429_and_5xx_are() {
    let s = setup_with(", breaker: { consecutive_failures: 1000 }", FAST_RETRY).await;
    // A 400: the client gets it as is, the upstream saw one request, nothing else was tried.
    s.a.push_fault(status_fault(400, "invalid_value", None));
    let r = send(&s.gw, "two", "x", false).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error_code(), "invalid_value");
    assert_eq!(r.attempts(), Some(1));
    assert_eq!((s.a.request_count(), s.b.request_count()), (1, 0));
    s.a.push_fault(status_fault(400, "invalid_value", None));
    let r = send(&s.gw, "one", "x", false).await;
    assert_eq!((r.status, r.attempts()), (400, Some(1)));
    assert_eq!(s.a.request_count(), 2);

    for status in [403u16, 404, 422] {
        s.a.clear_records();
        s.b.clear_records();
        s.a.push_fault(status_fault(status, "no", None));
        let r = send(&s.gw, "two", "x", false).await;
        assert_eq!((r.status, r.attempts()), (status, Some(1)), "{status}");
        assert_eq!((s.a.request_count(), s.b.request_count()), (1, 0));
    }
    // A 401 is the upstream refusing the gateway's credential (a 502 when it is the last
    // word); another upstream, with its own credential, may take the request.
    for status in [401u16, 408, 409, 429, 500, 502, 503, 504] {
        s.a.clear_records();
        s.b.clear_records();
        s.a.push_fault(status_fault(status, "retry-me", None));
        let r = send(&s.gw, "two", "x", false).await;
        assert_eq!(
            (r.status, r.attempts(), r.upstream()),
            (200, Some(2), Some("b")),
            "{status}"
        );
        assert_eq!((s.a.request_count(), s.b.request_count()), (1, 1));
    }
}

#[tokio::test]
async fn max_attempts_header_lowers_but_never_raises() {
    let s = setup_with(", breaker: { consecutive_failures: 1000 }", FAST_RETRY).await;
    let one = [("x-tollgate-max-attempts", "1")];
    s.a.push_fault(status_fault(500, "boom", None));
    let r = send_with(&s.gw, "two", "x", false, &one).await;
    assert_eq!((r.status, r.attempts()), (500, Some(1)), "{}", r.body);
    assert_eq!((s.a.request_count(), s.b.request_count()), (1, 0));

    s.a.set_default_fault(Some(status_fault(500, "boom", None)));
    for (asked, used) in [("2", 2), ("10", 3)] {
        s.a.clear_records();
        let r = send_with(
            &s.gw,
            "one",
            "x",
            false,
            &[("x-tollgate-max-attempts", asked)],
        )
        .await;
        assert_eq!((r.status, r.attempts()), (500, Some(used)), "asked {asked}");
        assert_eq!(s.a.request_count(), used as usize);
    }
    for bad in ["0", "many"] {
        let r = send_with(
            &s.gw,
            "one",
            "x",
            false,
            &[("x-tollgate-max-attempts", bad)],
        )
        .await;
        assert_eq!(r.status, 400);
        assert_eq!(r.error_code(), "invalid_request");
    }
}

#[tokio::test]
async fn the_deadline_bounds_every_wait() {
    // first_byte 10s, but the model's deadline is 400ms: one attempt, 504 at the deadline, no
    // retry started after it.
    let a = mock().await;
    a.set_default_fault(Some(Fault::Hang));
    let ups = format!(
        "  a: {{ provider: openai, base_url: \"{}\", timeouts: {{ first_byte: 10s }} }}\n",
        a.base_url()
    );
    let models =
        format!("  one: {{ targets: [ {{ upstream: a }} ], deadline: 400ms, {FAST_RETRY} }}\n");
    let gw = Gateway::start(&config(&ups, &models)).await;
    let t0 = Instant::now();
    let r = send(&gw, "one", "x", false).await;
    let took = t0.elapsed();
    assert_eq!(r.status, 504, "{}", r.body);
    assert_eq!(r.error_code(), "upstream_timeout");
    assert_eq!(r.attempts(), Some(1));
    assert!(
        took >= Duration::from_millis(390) && took < Duration::from_secs(2),
        "{took:?}"
    );
    assert!(
        a.wait_cancelled(1, T).await,
        "the hanging upstream request is cancelled"
    );
}

#[tokio::test]
async fn retry_budget_bounds_amplification() {
    // A permanently failing upstream, 5 attempts per request, a budget of 20% plus 1 retry per
    // second (10 over the 10 s window). Without a budget 100 requests would cost 500 upstream
    // requests; with it at most 100 + 20 + 10.
    let retry = "retry: { max_attempts: 5, base_backoff: 1ms, max_backoff: 2ms, \
                 budget_ratio: 0.2, budget_min_per_sec: 1 }";
    let s = setup_with(
        ", breaker: { consecutive_failures: 1000000, error_rate: 1.0 }",
        retry,
    )
    .await;
    s.a.set_default_fault(Some(status_fault(503, "down", None)));
    let exhausted_metric = "tollgate_retry_budget_exhausted_total{model=\"one\"}";
    let before = metric_value(&s.gw, exhausted_metric).await;
    let clients = 100;
    let (mut attempts, mut cut_short) = (0, 0);
    for i in 0..clients {
        let r = send(&s.gw, "one", &format!("r{i}"), false).await;
        assert_eq!(r.status, 503);
        attempts += r.attempts().unwrap_or(0);
        // Nothing but the budget stops a request before its 5 attempts here.
        cut_short += usize::from(r.attempts().unwrap_or(0) < 5);
    }
    let upstream = s.a.request_count();
    assert_eq!(upstream, attempts as usize);
    let factor = upstream as f64 / clients as f64;
    println!(
        "retry budget: {clients} client requests -> {upstream} upstream requests \
         (x{factor:.2}; x5.00 without a budget; bound x1.30)"
    );
    assert!(
        (clients..=clients + 30).contains(&upstream),
        "upstream saw {upstream}"
    );
    // The counter counts each request the spent budget stopped, once: its increase over this
    // test (the recorder is process-wide) is exactly the requests cut short.
    let increase = metric_value(&s.gw, exhausted_metric).await - before;
    assert!(
        cut_short > 0,
        "the budget never ran out: the test proves nothing"
    );
    assert_eq!(
        increase, cut_short as f64,
        "{exhausted_metric} rose by {increase}; {cut_short} requests were cut short"
    );
}

// ---- breaker ----

const BREAKER: &str = ", breaker: { consecutive_failures: 3, error_rate: 1.0, cooldown: 300ms }";

#[tokio::test]
async fn breaker_opens_skips_probes_and_closes() {
    let s = setup_with(BREAKER, FAST_RETRY).await;
    s.a.set_default_fault(Some(status_fault(500, "boom", None)));
    // Three failures in a row open it; every client request is still rescued by `b`.
    for i in 0..3 {
        let r = send(&s.gw, "two", "x", false).await;
        assert_eq!(
            (r.status, r.attempts(), r.upstream()),
            (200, Some(2), Some("b"))
        );
        let want = if i < 2 {
            BreakerState::Closed
        } else {
            BreakerState::Open
        };
        assert_eq!(breaker_state(&s.gw, "a"), want, "after failure {}", i + 1);
    }
    // Open: skipped, one attempt each.
    for _ in 0..5 {
        let r = send(&s.gw, "two", "x", false).await;
        assert_eq!(
            (r.status, r.attempts(), r.upstream()),
            (200, Some(1), Some("b"))
        );
    }
    assert_eq!(s.a.request_count(), 3);
    // After the cooldown one probe goes through; it fails, so the breaker opens again.
    tokio::time::sleep(Duration::from_millis(350)).await;
    let r = send(&s.gw, "two", "x", false).await;
    assert_eq!(
        (r.status, r.attempts(), r.upstream()),
        (200, Some(2), Some("b"))
    );
    assert_eq!(s.a.request_count(), 4);
    assert_eq!(breaker_state(&s.gw, "a"), BreakerState::Open);
    let r = send(&s.gw, "two", "x", false).await;
    assert_eq!(r.attempts(), Some(1));
    assert_eq!(s.a.request_count(), 4);
    // The upstream recovers; after the next cooldown the probe succeeds and closes it.
    s.a.set_default_fault(None);
    tokio::time::sleep(Duration::from_millis(350)).await;
    let r = send(&s.gw, "two", "x", false).await;
    assert_eq!(
        (r.status, r.attempts(), r.upstream()),
        (200, Some(1), Some("a"))
    );
    assert_eq!(breaker_state(&s.gw, "a"), BreakerState::Closed);
    let r = send(&s.gw, "two", "x", false).await;
    assert_eq!(r.upstream(), Some("a"));
}

/// `/ready`'s status and body.
async fn ready(gw: &Gateway) -> (u16, String) {
    let r = gw
        .client
        .get(gw.url("/ready"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("/ready: {e}"));
    (r.status().as_u16(), r.text().await.unwrap_or_default())
}

/// docs/RELIABILITY.md §3: `/ready` answers 503 when every upstream's breaker is open, and
/// 200 while one is not.
#[tokio::test]
async fn ready_answers_503_when_every_breaker_is_open() {
    let breaker = ", breaker: { consecutive_failures: 1, error_rate: 1.0, cooldown: 60s }";
    let (a, b) = (mock().await, mock().await);
    let ups = up("a", &a.base_url(), breaker) + &up("b", &b.base_url(), breaker);
    let gw = Gateway::start(&config(&ups, &models(FAST_RETRY))).await;
    assert_eq!(ready(&gw).await.0, 200, "nothing has failed yet");
    a.set_default_fault(Some(status_fault(500, "boom", None)));
    b.set_default_fault(Some(status_fault(500, "boom", None)));
    // Model `one` has only `a`: its first failure opens `a`'s breaker.
    assert_eq!(send(&gw, "one", "x", false).await.status, 500);
    assert_eq!(breaker_state(&gw, "a"), BreakerState::Open);
    assert_eq!(breaker_state(&gw, "b"), BreakerState::Closed);
    let (status, body) = ready(&gw).await;
    assert_eq!(status, 200, "b's breaker is closed: {body}");
    // Model `two` now skips `a` and fails on `b`, which opens the last breaker.
    assert_eq!(send(&gw, "two", "x", false).await.status, 500);
    assert_eq!(breaker_state(&gw, "b"), BreakerState::Open);
    let (status, body) = ready(&gw).await;
    assert_eq!(status, 503, "every breaker is open: {body}");
}

#[tokio::test]
async fn half_open_lets_exactly_one_probe_through() {
    let s = setup_with(BREAKER, FAST_RETRY).await;
    s.a.set_default_fault(Some(status_fault(500, "boom", None)));
    for _ in 0..3 {
        send(&s.gw, "two", "x", false).await;
    }
    assert_eq!(breaker_state(&s.gw, "a"), BreakerState::Open);
    s.a.set_default_fault(None);
    s.a.clear_records();
    // The probe is slow (200ms, under the 300ms first-byte timeout), so the other requests
    // arrive while it is in flight.
    s.a.set_first_byte_delay(Duration::from_millis(200));
    tokio::time::sleep(Duration::from_millis(350)).await;
    let mut tasks = Vec::new();
    for i in 0..6 {
        let (client, url) = (s.gw.client.clone(), s.gw.url("/v1/chat/completions"));
        tasks.push(tokio::spawn(async move {
            let r = client
                .post(url)
                .bearer_auth(DEMO_KEY)
                .json(&chat("two", &format!("p{i}"), false))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}"));
            let up = r
                .headers()
                .get("x-tollgate-upstream")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("")
                .to_owned();
            (r.status().as_u16(), up)
        }));
    }
    let mut served = Vec::new();
    for t in tasks {
        served.push(t.await.unwrap_or_else(|e| panic!("{e}")));
    }
    assert!(served.iter().all(|(s, _)| *s == 200), "{served:?}");
    assert_eq!(
        served.iter().filter(|(_, u)| u == "a").count(),
        1,
        "{served:?}"
    );
    assert_eq!(s.a.request_count(), 1);
    assert_eq!(breaker_state(&s.gw, "a"), BreakerState::Closed);
}

#[tokio::test]
async fn a_probe_abandoned_by_its_client_does_not_wedge_the_breaker() {
    // The half-open probe's client goes away mid-attempt: the attempt is dropped without an
    // outcome. The probe slot must be given back, so the next request probes again (and,
    // the upstream being healthy, closes the breaker) instead of `a` being skipped forever.
    let s = setup_with(BREAKER, FAST_RETRY).await;
    s.a.set_default_fault(Some(status_fault(500, "boom", None)));
    for _ in 0..3 {
        send(&s.gw, "two", "x", false).await;
    }
    assert_eq!(breaker_state(&s.gw, "a"), BreakerState::Open);
    s.a.set_default_fault(None);
    s.a.clear_records();
    s.a.set_first_byte_delay(Duration::from_millis(250));
    tokio::time::sleep(Duration::from_millis(350)).await;
    let gone =
        s.gw.client
            .post(s.gw.url("/v1/chat/completions"))
            .bearer_auth(DEMO_KEY)
            .timeout(Duration::from_millis(100))
            .json(&chat("two", "impatient", false))
            .send()
            .await;
    assert!(gone.is_err(), "the client should have given up");
    assert!(s.a.wait_requests(1, T).await, "the probe reached a");
    assert!(
        s.a.wait_cancelled(1, T).await,
        "the gateway dropped the abandoned probe"
    );
    assert_eq!(breaker_state(&s.gw, "a"), BreakerState::HalfOpen);
    s.a.set_first_byte_delay(Duration::ZERO);
    let r = send(&s.gw, "two", "x", false).await;
    assert_eq!((r.status, r.upstream()), (200, Some("a")), "a probed again");
    assert_eq!(breaker_state(&s.gw, "a"), BreakerState::Closed);
}

#[tokio::test]
async fn breaker_opens_on_error_rate_over_a_minimum_of_requests() {
    // 4 failures in 10 (40% > 30%), never three in a row; it opens at the 10th request.
    let s = setup_with(
        ", breaker: { consecutive_failures: 100, error_rate: 0.3, min_requests: 10, cooldown: 30s }",
        FAST_RETRY,
    )
    .await;
    let ok = || Fault::DelayFirstByte(Duration::ZERO);
    let fail = || status_fault(500, "boom", None);
    for f in [
        fail(),
        ok(),
        ok(),
        fail(),
        ok(),
        ok(),
        fail(),
        ok(),
        fail(),
        ok(),
    ] {
        s.a.push_fault(f);
    }
    for i in 1..=10 {
        let r = send(&s.gw, "two", "x", false).await;
        assert_eq!(r.status, 200);
        let want = if i < 10 {
            BreakerState::Closed
        } else {
            BreakerState::Open
        };
        assert_eq!(breaker_state(&s.gw, "a"), want, "after request {i}");
    }
    let r = send(&s.gw, "two", "x", false).await;
    assert_eq!((r.attempts(), r.upstream()), (Some(1), Some("b")));
    assert_eq!(s.a.request_count(), 10);
}

#[tokio::test]
async fn breaker_opens_on_p99_latency_over_the_objective() {
    // Every answer from `a` takes 120ms against a 50ms objective: successes, yet after the
    // minimum of 5 requests the breaker opens and `b` takes over.
    let s = setup_with(
        ", breaker: { consecutive_failures: 100, latency_objective: 50ms, min_requests: 5, cooldown: 30s }",
        FAST_RETRY,
    )
    .await;
    s.a.set_first_byte_delay(Duration::from_millis(120));
    for i in 1..=5 {
        let r = send(&s.gw, "two", "x", false).await;
        assert_eq!((r.status, r.upstream()), (200, Some("a")), "request {i}");
    }
    assert_eq!(breaker_state(&s.gw, "a"), BreakerState::Open);
    let r = send(&s.gw, "two", "x", false).await;
    assert_eq!(r.upstream(), Some("b"));
}

// ---- load ----

/// Runs `total` requests from `concurrency` workers; `check(i, reply)` says whether request `i`
/// succeeded. Returns the successes.
async fn load<F>(gw: &Gateway, total: usize, concurrency: usize, stream: bool, check: F) -> usize
where
    F: Fn(usize, &Reply) -> bool + Send + Sync + 'static,
{
    let next = Arc::new(AtomicUsize::new(0));
    let ok = Arc::new(AtomicUsize::new(0));
    let check = Arc::new(check);
    let mut workers = Vec::new();
    for _ in 0..concurrency {
        let (client, url) = (gw.client.clone(), gw.url("/v1/chat/completions"));
        let (next, ok, check) = (next.clone(), ok.clone(), check.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let sent = client
                    .post(&url)
                    .bearer_auth(DEMO_KEY)
                    .json(&chat("two-even", &format!("load {i} of {total}"), stream))
                    .send()
                    .await;
                let reply = match sent {
                    Ok(resp) => {
                        let status = resp.status().as_u16();
                        let headers = resp.headers().clone();
                        let body = resp.text().await.unwrap_or_default();
                        Reply {
                            status,
                            headers,
                            body,
                        }
                    }
                    Err(e) => Reply {
                        status: 0,
                        headers: Default::default(),
                        body: e.to_string(),
                    },
                };
                if check(i, &reply) {
                    ok.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for w in workers {
        w.await.unwrap_or_else(|e| panic!("worker: {e}"));
    }
    ok.load(Ordering::Relaxed)
}

/// The test kit's random mix: `a` fails 20% of requests at random (500, 502, 503, reset
/// mid-body, 429 + Retry-After: 1), `b` is healthy; model `two-even` weighs them equally with
/// the default retry policy. A 429 moves its request on to `b`; it marks `a` for everyone only
/// with evidence about the account (these 429s carry none, and come from one team).
async fn load_setup_random() -> Setup {
    let s = load_setup().await;
    s.a.set_random_failure_rate(0.2);
    s
}

/// A wider mix, without Retry-After windows, so `a` keeps half the load: 20% of `a`'s
/// answers fail, drawn evenly (fixed seed) from 500, 502, 503, 429 without Retry-After, reset
/// mid-body, truncated JSON, malformed SSE, a first byte later than the timeout, and a stall
/// after the first chunk. The other 80% are normal answers.
async fn load_setup_mixed(n: usize) -> Setup {
    let s = load_setup().await;
    for f in mixed_faults(n) {
        s.a.push_fault(f);
    }
    s
}

/// The wider mix's first `n` answers of `a`, in order: `DelayFirstByte(0)` is a normal answer.
fn mixed_faults(n: usize) -> Vec<Fault> {
    let mut seed: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        // xorshift64*: reproducible without a dependency.
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        seed.wrapping_mul(0x2545_f491_4f6c_dd1d) >> 33
    };
    let mut faults = Vec::with_capacity(n);
    for _ in 0..n {
        let f = if next() % 100 >= 20 {
            Fault::DelayFirstByte(Duration::ZERO)
        } else {
            match next() % 9 {
                0 => status_fault(500, "boom", None),
                1 => status_fault(502, "boom", None),
                2 => status_fault(503, "boom", None),
                3 => status_fault(429, "slow_down", None),
                4 => Fault::ResetMidBody,
                5 => Fault::TruncatedJson,
                6 => Fault::MalformedSse,
                7 => Fault::DelayFirstByte(Duration::from_secs(1)),
                _ => Fault::StallAfterChunks(1),
            }
        };
        faults.push(f);
    }
    faults
}

fn is_failure(f: &Fault) -> bool {
    !matches!(f, Fault::DelayFirstByte(d) if d.is_zero())
}

async fn load_setup() -> Setup {
    let (a, b) = (mock().await, mock().await);
    a.set_recording(false);
    b.set_recording(false);
    // `a` keeps the short timeouts its faults need; healthy `b` gets timeouts no slow machine
    // reaches, so what the load tests assert of it does not hang on the machine's speed.
    let b_up = format!(
        "  b: {{ provider: openai, base_url: \"{}\", timeouts: {{ first_byte: 30s, idle: 30s }} }}\n",
        b.base_url()
    );
    let ups = up("a", &a.base_url(), "") + &b_up;
    let models = "  two-even: { targets: [ { upstream: a }, { upstream: b } ] }\n";
    let gw = Gateway::start(&config(&ups, models)).await;
    Setup { gw, a, b }
}

/// 2,000 non-stream requests at concurrency 32: all 2,000 succeed with the right content (as
/// docs/RELIABILITY.md §9 states), and the amplification is bounded as §2 states it: a failed
/// attempt on `a` moves to the next upstream of the plan, healthy `b`, so no request takes more
/// than 2 attempts; every upstream request is one of those attempts; and the retries stay
/// within the default retry budget (`budget_min_per_sec: 10`, `budget_ratio: 0.2`, over 10 s
/// windows). Returns the retries (upstream requests beyond one per client request).
async fn load_non_stream(s: &Setup, label: &str) -> usize {
    let total = 2000;
    let t0 = Instant::now();
    let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (attempts, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let (f2, attempts2, most2) = (failures.clone(), attempts.clone(), most.clone());
    let ok = load(&s.gw, total, 32, false, move |i, r| {
        let n = r.attempts().unwrap_or(0) as usize;
        attempts2.fetch_add(n, Ordering::Relaxed);
        most2.fetch_max(n, Ordering::Relaxed);
        let good = r.status == 200 && r.content() == echo(&format!("load {i} of {total}"));
        if !good {
            if let Ok(mut f) = f2.lock() {
                f.push(format!("{} {}", r.status, r.body));
            }
        }
        good
    })
    .await;
    let took = t0.elapsed();
    let rate = ok as f64 / total as f64;
    let (na, nb) = (s.a.request_count(), s.b.request_count());
    println!(
        "load non-stream ({label}): {ok}/{total} succeeded ({:.2}%) in {took:.2?} at \
         concurrency 32; upstream requests a={na} b={nb}; amplification x{:.3}; \
         a's breaker {:?}",
        rate * 100.0,
        (na + nb) as f64 / total as f64,
        breaker_state(&s.gw, "a"),
    );
    let failures = failures.lock().map(|f| f.clone()).unwrap_or_default();
    assert_eq!(ok, total, "success {rate}: {failures:?}");
    let (attempts, most) = (
        attempts.load(Ordering::Relaxed),
        most.load(Ordering::Relaxed),
    );
    assert!(most <= 2, "a request took {most} attempts; b was healthy");
    // Every upstream request is one of the attempts the clients were told of (an attempt may
    // fail before the mock counts it, e.g. a timeout while it still reads the body).
    assert!(
        na + nb <= attempts,
        "{} upstream requests for {attempts} attempts: amplification nobody was told of",
        na + nb
    );
    let retries = attempts - total;
    // The budget's bound over the run: in each 10 s block, retries < 100 + 0.2 x the requests
    // of that block and the one before (+1 for the check being made before counting).
    let blocks = (took.as_secs() / 10 + 2) as usize;
    let budget = blocks * 101 + total * 2 / 5;
    assert!(
        retries <= budget,
        "{retries} retries; the budget allows {budget}"
    );
    retries
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_non_stream_random_failures() {
    let s = load_setup_random().await;
    let retries = load_non_stream(&s, "test kit random 20%").await;
    assert!(
        retries <= s.a.request_count(),
        "a retry per failure of a at most"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_non_stream_mixed_failures() {
    let s = load_setup_mixed(3000).await;
    let retries = load_non_stream(&s, "mixed 20%, nine fault kinds").await;
    // `a` answered from the seeded list in order: each of its failures cost one retry (on
    // `b`). More retries only when a normal answer of `a` missed its 300ms timeout (a loaded
    // machine); on a quiet one the two are equal.
    let na = s.a.request_count();
    let failed = mixed_faults(3000)
        .iter()
        .take(na)
        .filter(|f| is_failure(f))
        .count();
    println!("load non-stream (mixed): {failed} failures of a, {retries} retries");
    assert!(
        retries >= failed,
        "{retries} retries for {failed} failures of a"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_streams_are_never_duplicated_or_spliced() {
    // Each stream either carries exactly the expected echo once (one response id, one
    // `[DONE]`, no error), or is a strict prefix of it that ends with an SSE error event of
    // one of the codes docs/RELIABILITY.md §8 gives a break after the first byte (reset, stall,
    // cut event) and no `[DONE]`. Anything else (two ids, repeated content, content after an
    // error, a stream cut without an error event, a non-200) is a splice, a duplicate, a
    // silent cut or a failure.
    let s = load_setup_mixed(600).await;
    let total = 300;
    let complete = Arc::new(AtomicUsize::new(0));
    let broken = Arc::new(AtomicUsize::new(0));
    let bad = Arc::new(std::sync::Mutex::new(Vec::new()));
    let (c2, b2, bad2) = (complete.clone(), broken.clone(), bad.clone());
    let t0 = Instant::now();
    load(&s.gw, total, 16, true, move |i, r| {
        let expected = echo(&format!("load {i} of {total}"));
        let events = r.events();
        let chunks: Vec<Value> = events
            .iter()
            .filter_map(|e| serde_json::from_str(e).ok())
            .collect();
        let ids: std::collections::BTreeSet<&str> =
            chunks.iter().filter_map(|c| c["id"].as_str()).collect();
        let dones = events.iter().filter(|e| *e == "[DONE]").count();
        let errors = chunks.iter().filter(|c| c["error"].is_object()).count();
        let content = r.content();
        let last_is_error = chunks.last().is_some_and(|c| {
            matches!(
                c["error"]["code"].as_str(),
                Some("upstream_stream_broken" | "upstream_timeout" | "upstream_invalid")
            )
        });
        let prefix = expected.starts_with(&content) && content != expected;
        if r.status == 200 && content == expected && ids.len() == 1 && dones == 1 && errors == 0 {
            c2.fetch_add(1, Ordering::Relaxed);
            true
        } else if r.status == 200
            && ids.len() <= 1
            && dones == 0
            && errors == 1
            && last_is_error
            && prefix
        {
            b2.fetch_add(1, Ordering::Relaxed);
            false
        } else {
            if let Ok(mut b) = bad2.lock() {
                b.push(format!("#{i} status {} body {}", r.status, r.body));
            }
            false
        }
    })
    .await;
    let complete = complete.load(Ordering::Relaxed);
    let broken = broken.load(Ordering::Relaxed);
    let bad = bad.lock().map(|b| b.clone()).unwrap_or_default();
    println!(
        "load streams (mixed 20%): {total} streams in {:.2?}: {complete} complete, {broken} \
         ended by an SSE error event after the first byte (reset / stall / cut event), {} \
         duplicated/spliced/cut silently/failed; upstream a={} b={}",
        t0.elapsed(),
        bad.len(),
        s.a.request_count(),
        s.b.request_count(),
    );
    assert!(bad.is_empty(), "{bad:#?}");
    assert_eq!(complete + broken, total);
    // Only faults after the first event break a stream: 3 of the 9 kinds, 20% of a's half.
    assert!(broken <= total / 8, "{broken} broken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_breaker_opens_under_failure_and_closes_after_recovery() {
    // Under concurrent load `a` starts failing every request; its breaker (5 in a row,
    // cooldown 500ms) opens, `a` is skipped, no client request fails (`b` rescues). Then `a`
    // recovers; after the cooldown a probe closes the breaker and `a` takes traffic again.
    let (a, b) = (mock().await, mock().await);
    a.set_recording(false);
    b.set_recording(false);
    let extra = ", breaker: { consecutive_failures: 5, cooldown: 500ms }";
    let ups = up("a", &a.base_url(), extra) + &up("b", &b.base_url(), "");
    let models = "  two-even: { targets: [ { upstream: a }, { upstream: b } ] }\n";
    let gw = Arc::new(Gateway::start(&config(&ups, models)).await);

    let stop = Arc::new(AtomicBool::new(false));
    let failed = Arc::new(AtomicUsize::new(0));
    let sent = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for w in 0..8 {
        let (client, url) = (gw.client.clone(), gw.url("/v1/chat/completions"));
        let (stop, failed, sent) = (stop.clone(), failed.clone(), sent.clone());
        workers.push(tokio::spawn(async move {
            let mut i = 0;
            // Bounded: stops on the flag, and in any case after 20,000 requests per worker.
            while !stop.load(Ordering::Relaxed) && i < 20_000 {
                i += 1;
                let r = client
                    .post(&url)
                    .bearer_auth(DEMO_KEY)
                    .json(&chat("two-even", &format!("w{w} {i}"), false))
                    .send()
                    .await;
                sent.fetch_add(1, Ordering::Relaxed);
                if !r.is_ok_and(|r| r.status() == 200) {
                    failed.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(breaker_state(&gw, "a"), BreakerState::Closed);
    let failing_since = Instant::now();
    a.set_default_fault(Some(status_fault(500, "boom", None)));
    let opened = sample_breaker(&gw, &a, failing_since).await;
    let served_after = a.request_count();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let a_after_close = a.request_count() - served_after;
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.await.unwrap_or_else(|e| panic!("{e}"));
    }
    let (sent, failed) = (sent.load(Ordering::Relaxed), failed.load(Ordering::Relaxed));
    let to_open = opened.open_seen - failing_since;
    let to_close = opened.closed - opened.recovered;
    println!(
        "load breaker: opened {to_open:.2?} after a started failing; {} requests to a while \
         open in its cooldown ({} of them 50ms or more after it was seen open); closed \
         {:.2?} after a started failing (cooldown 500ms), {to_close:.2?} after a recovered; \
         {a_after_close} requests to a in the 100ms after closing; {failed}/{sent} client \
         requests failed",
        opened.to_a_in_cooldown,
        opened.to_a_late_in_cooldown,
        opened.closed - failing_since,
    );
    assert!(to_open < Duration::from_secs(1));
    // Left Open only once the cooldown had passed, counted from before the first failure.
    assert_eq!(
        opened.left_open_early, None,
        "the breaker left Open before its cooldown ended"
    );
    assert!(opened.closed - failing_since >= Duration::from_millis(500));
    // Only attempts already in flight when it opened (one per client worker at most) reach
    // `a` during the cooldown, and none once 50ms have passed.
    assert!(opened.to_a_in_cooldown <= 8, "{}", opened.to_a_in_cooldown);
    assert_eq!(opened.to_a_late_in_cooldown, 0);
    assert!(to_close < Duration::from_millis(1500), "{to_close:?}");
    assert!(a_after_close > 0, "a takes traffic again");
    assert_eq!(failed, 0);
}

/// What sampling the breaker of `a` every 2ms, from `a` starting to fail until it closes, saw.
struct BreakerRun {
    open_seen: Instant,
    /// When `a` was made healthy again: 300ms after the breaker was seen open.
    recovered: Instant,
    closed: Instant,
    /// A state other than Open sampled after it opened and before the cooldown (counted from
    /// `failing_since`, which is before the breaker opened) could have ended.
    left_open_early: Option<(Duration, BreakerState)>,
    /// Requests `a` received from its opening being seen to the end of the cooldown; and those
    /// of them from 50ms after the opening was seen.
    to_a_in_cooldown: usize,
    to_a_late_in_cooldown: usize,
}

/// Observation only, the load runs on its own: wait (bounded) for the breaker of `a` to open,
/// then sample it every 2ms across the whole cooldown and until it closes, making `a` healthy
/// 300ms after the opening was seen.
async fn sample_breaker(gw: &Gateway, a: &MockUpstream, failing_since: Instant) -> BreakerRun {
    let cooldown_end = failing_since + Duration::from_millis(500);
    let bound = failing_since + Duration::from_secs(10);
    while breaker_state(gw, "a") != BreakerState::Open {
        assert!(Instant::now() < bound, "the breaker did not open");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let open_seen = Instant::now();
    let at_open = a.request_count();
    let late = open_seen + Duration::from_millis(50);
    let (mut at_late, mut at_end) = (None, None);
    let (mut recovered, mut left_open_early) = (None, None);
    loop {
        let now = Instant::now();
        let (state, seen) = (breaker_state(gw, "a"), a.request_count());
        if now < cooldown_end {
            at_end = Some(seen);
            if now >= late && at_late.is_none() {
                at_late = Some(seen);
            }
            if state != BreakerState::Open && left_open_early.is_none() {
                left_open_early = Some((now - failing_since, state));
            }
        }
        if recovered.is_none() && now >= open_seen + Duration::from_millis(300) {
            a.set_default_fault(None);
            recovered = Some(Instant::now());
        }
        if state == BreakerState::Closed && recovered.is_some() {
            break BreakerRun {
                open_seen,
                recovered: recovered.unwrap_or(now),
                closed: now,
                left_open_early,
                to_a_in_cooldown: at_end.unwrap_or(at_open) - at_open,
                to_a_late_in_cooldown: at_end.unwrap_or(0) - at_late.unwrap_or(at_end.unwrap_or(0)),
            };
        }
        assert!(Instant::now() < bound, "the breaker did not close");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}
