//! OpenTelemetry traces through real sockets: the gateway exports to the test kit's OTLP
//! collector over HTTP/protobuf and gRPC; spans arrive with the client's trace as parent, the
//! attempt span as the upstream's parent (its `traceparent`), the GenAI attributes and no
//! secret or prompt; a collector that hangs, refuses or is not there costs requests nothing and
//! its lost spans are counted.

mod common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use common::{chat, metric_value, Gateway, Reply, DEMO_KEY, DEMO_KEY_SHA256};
use tollgate::testkit::{CollectorMode, Fault, MockCollector, MockUpstream, ReceivedSpan};

const UP_SECRET: &str = "sk-upstream-secret-canary";
const OTLP_TOKEN: &str = "otlp-token-canary";
const PROMPT: &str = "the secret plan is written in purple ink";
/// The client's trace: trace id and its span id (the request span's parent).
const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CLIENT_SPAN: &str = "00f067aa0ba902b7";
const WAIT: Duration = Duration::from_secs(10);

async fn collector() -> MockCollector {
    MockCollector::start()
        .await
        .unwrap_or_else(|e| panic!("collector: {e}"))
}

async fn upstream() -> MockUpstream {
    let m = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("mock upstream: {e}"));
    m.set_recording(true);
    m
}

/// `gpt` served by one `openai` upstream (asked for `served-model`), with `traces` as the
/// `telemetry.traces` block (empty: traces off).
fn config(base_url: &str, traces: &str) -> String {
    let telemetry = if traces.is_empty() {
        String::new()
    } else {
        format!("telemetry:\n  traces:\n{traces}")
    };
    format!(
        r#"
credentials:
  up-key: {{ kind: static, secret: "${{UP_KEY}}" }}
upstreams:
  up:
    provider: openai
    base_url: {base_url}
    credential: up-key
    model: served-model
models:
  gpt: {{ targets: [ {{ upstream: up }} ], retry: {{ max_attempts: 2, base_backoff: 10ms, max_backoff: 20ms }} }}
teams:
  demo: {{ models: ["*"] }}
keys:
  - {{ name: demo-key, team: demo, sha256: {DEMO_KEY_SHA256} }}
{telemetry}
"#
    )
}

/// The `telemetry.traces` lines for `endpoint` over `protocol`, plus `extra` lines.
fn traces(endpoint: &str, protocol: &str, extra: &str) -> String {
    format!(
        "    endpoint: {endpoint}\n    protocol: {protocol}\n    service_name: tollgate-test\n    \
         headers: {{ x-collector-token: \"${{OTLP_TOKEN}}\" }}\n{extra}"
    )
}

async fn gateway(yaml: &str) -> Gateway {
    let env = HashMap::from([
        ("UP_KEY".to_owned(), UP_SECRET.to_owned()),
        ("OTLP_TOKEN".to_owned(), OTLP_TOKEN.to_owned()),
    ]);
    Gateway::start_with_env(yaml, env).await
}

/// A chat request carrying the client's `traceparent` (sampled).
async fn traced_chat(gw: &Gateway, stream: bool) -> Reply {
    let resp = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(DEMO_KEY)
        .header("traceparent", format!("00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"))
        .json(&chat("gpt", PROMPT, stream))
        .send()
        .await
        .unwrap_or_else(|e| panic!("request: {e}"));
    Reply::read(resp).await
}

fn server_spans(spans: &[ReceivedSpan]) -> Vec<&ReceivedSpan> {
    spans.iter().filter(|s| s.kind == 2).collect()
}
fn client_spans(spans: &[ReceivedSpan]) -> Vec<&ReceivedSpan> {
    spans.iter().filter(|s| s.kind == 3).collect()
}

/// One traced request over `protocol`: parentage both ways, attributes, events, headers.
async fn one_traced_request(protocol: &str) {
    let col = collector().await;
    let up = upstream().await;
    let endpoint = match protocol {
        "grpc" => col.grpc_endpoint(),
        _ => col.http_endpoint(),
    };
    let gw = gateway(&config(&up.base_url(), &traces(&endpoint, protocol, ""))).await;

    let reply = traced_chat(&gw, false).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let usage = reply.json()["usage"].clone();

    let arrived = col
        .wait_spans(WAIT, |s| {
            !server_spans(s).is_empty() && !client_spans(s).is_empty()
        })
        .await;
    let spans = col.spans();
    assert!(arrived, "spans did not arrive over {protocol}: {spans:?}");
    assert!(spans.iter().all(|s| s.protocol == protocol));
    let (req, att) = (server_spans(&spans)[0], client_spans(&spans)[0]);

    // The request span is the client's span's child; the attempt span the request span's.
    assert_eq!(req.trace_id, CLIENT_TRACE);
    assert_eq!(req.parent_span_id, CLIENT_SPAN);
    assert_eq!(att.trace_id, CLIENT_TRACE);
    assert_eq!(att.parent_span_id, req.span_id);
    // The upstream saw the attempt span as its parent.
    let received = up.received();
    let sent = received[0].headers.get("traceparent");
    let expected = format!("00-{CLIENT_TRACE}-{}-01", att.span_id);
    assert_eq!(sent.and_then(|v| v.to_str().ok()), Some(expected.as_str()));

    assert_eq!(req.service_name.as_deref(), Some("tollgate-test"));
    assert_eq!(req.name, "chat gpt");
    assert_eq!(req.attr("gen_ai.operation.name"), Some("chat"));
    assert_eq!(req.attr("gen_ai.system"), Some("openai"));
    assert_eq!(req.attr("gen_ai.request.model"), Some("gpt"));
    assert_eq!(req.attr("gen_ai.response.model"), Some("served-model"));
    let tokens = |k: &str| usage[k].as_u64().map(|n| n.to_string());
    assert_eq!(
        req.attr("gen_ai.usage.input_tokens").map(str::to_owned),
        tokens("prompt_tokens")
    );
    assert_eq!(
        req.attr("gen_ai.usage.output_tokens").map(str::to_owned),
        tokens("completion_tokens")
    );
    assert_eq!(req.attr("tollgate.team"), Some("demo"));
    assert_eq!(req.attr("tollgate.key_id"), Some("demo-key"));
    assert_eq!(req.attr("tollgate.upstream"), Some("up"));
    assert_eq!(req.attr("http.response.status_code"), Some("200"));
    assert!(!req.error);
    for e in ["auth", "admit", "first byte"] {
        assert!(
            req.events.iter().any(|n| n == e),
            "no {e} event: {:?}",
            req.events
        );
    }
    assert_eq!(att.attr("gen_ai.request.model"), Some("served-model"));
    assert_eq!(att.attr("gen_ai.system"), Some("openai"));
    assert_eq!(att.attr("http.response.status_code"), Some("200"));
    assert_eq!(att.attr("tollgate.outcome"), Some("ok"));
    assert_eq!(att.events, ["queue wait", "response"]);

    // Never a secret, never the prompt (capture is off).
    for s in &spans {
        for (k, v) in &s.attributes {
            for canary in [DEMO_KEY, UP_SECRET, OTLP_TOKEN, "purple ink"] {
                assert!(!v.contains(canary), "{k}={v} leaks {canary}");
            }
        }
        assert!(s.attr("gen_ai.input.messages").is_none());
    }
    // The export carried its configured header (from the environment).
    let h = col.last_headers();
    assert_eq!(
        h.get("x-collector-token").and_then(|v| v.to_str().ok()),
        Some(OTLP_TOKEN)
    );
}

#[tokio::test]
async fn spans_arrive_over_http_with_the_clients_trace_as_parent_and_the_genai_attributes() {
    one_traced_request("http").await;
}

#[tokio::test]
async fn spans_arrive_over_grpc_with_the_clients_trace_as_parent_and_the_genai_attributes() {
    one_traced_request("grpc").await;
}

#[tokio::test]
async fn each_attempt_is_a_child_span_with_its_upstream_status() {
    let col = collector().await;
    let up = upstream().await;
    let gw = gateway(&config(
        &up.base_url(),
        &traces(&col.http_endpoint(), "http", ""),
    ))
    .await;
    up.push_fault(Fault::Status {
        status: 500,
        body: r#"{"error":{"message":"boom"}}"#.into(),
        retry_after: None,
    });

    let reply = traced_chat(&gw, true).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.attempts(), Some(2));
    assert!(
        col.wait_spans(WAIT, |s| client_spans(s).len() == 2
            && !server_spans(s).is_empty())
            .await
    );
    let spans = col.spans();
    let req = server_spans(&spans)[0];
    let mut atts = client_spans(&spans);
    atts.sort_by_key(|s| s.attr("http.response.status_code") != Some("500"));
    assert_eq!(atts[0].attr("http.response.status_code"), Some("500"));
    assert!(atts[0].error);
    assert_ne!(atts[0].attr("tollgate.outcome"), Some("ok"));
    assert_eq!(atts[1].attr("http.response.status_code"), Some("200"));
    assert!(!atts[1].error);
    for a in &atts {
        assert_eq!(a.parent_span_id, req.span_id);
    }
    assert_eq!(req.attr("tollgate.attempts"), Some("2"));
    assert_eq!(req.attr("tollgate.stream"), Some("true"));
    // Each upstream request carried its own attempt's span id.
    let sent: Vec<String> = up
        .received()
        .iter()
        .filter_map(|r| {
            r.headers
                .get("traceparent")?
                .to_str()
                .ok()
                .map(str::to_owned)
        })
        .collect();
    let mut expected: Vec<String> = atts
        .iter()
        .map(|a| format!("00-{CLIENT_TRACE}-{}-01", a.span_id))
        .collect();
    let mut sent_sorted = sent.clone();
    sent_sorted.sort();
    expected.sort();
    assert_eq!(sent_sorted, expected);
}

#[tokio::test]
async fn prompt_capture_puts_the_prompt_on_the_request_span_cut_to_its_bound() {
    let col = collector().await;
    let up = upstream().await;
    let extra = "    capture_prompts: true\n    prompt_max_bytes: 40\n";
    let gw = gateway(&config(
        &up.base_url(),
        &traces(&col.http_endpoint(), "http", extra),
    ))
    .await;
    let reply = traced_chat(&gw, false).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert!(col.wait_spans(WAIT, |s| !server_spans(s).is_empty()).await);
    let spans = col.spans();
    let req = server_spans(&spans)[0];
    let captured = req.attr("gen_ai.input.messages").unwrap_or_default();
    // The `messages` array as the client wrote it (its JSON text), cut.
    assert!(
        captured.starts_with(r#"[{"content":"the secret"#),
        "{captured}"
    );
    assert!(captured.len() <= 40, "{captured}");
    assert_eq!(req.attr("tollgate.prompt_truncated"), Some("true"));
    // Still no secret.
    for (k, v) in &req.attributes {
        assert!(!v.contains(DEMO_KEY) && !v.contains(UP_SECRET), "{k}={v}");
    }
}

#[tokio::test]
async fn a_sampling_ratio_of_zero_records_nothing_but_still_propagates_the_trace() {
    let col = collector().await;
    let up = upstream().await;
    let gw = gateway(&config(
        &up.base_url(),
        &traces(&col.http_endpoint(), "http", "    sampling_ratio: 0\n"),
    ))
    .await;
    let resp = gw
        .post("/v1/chat/completions", chat("gpt", "hello", false))
        .await;
    assert_eq!(resp.status(), 200);
    let tp = up.received()[0]
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok().map(str::to_owned))
        .unwrap_or_default();
    // A new trace, not sampled: flags 00.
    assert!(tp.starts_with("00-") && tp.ends_with("-00"), "{tp}");
    // The client's sampled trace is followed whatever the ratio (parent-based).
    let reply = traced_chat(&gw, false).await;
    assert_eq!(reply.status, 200);
    assert!(col.wait_spans(WAIT, |s| !server_spans(s).is_empty()).await);
    assert!(col.spans().iter().all(|s| s.trace_id == CLIENT_TRACE));
}

#[tokio::test]
async fn with_traces_off_nothing_is_added_upstream() {
    let up = upstream().await;
    let gw = gateway(&config(&up.base_url(), "")).await;
    assert!(gw.state.snapshot.load().tracing.is_none());
    let resp = gw
        .post("/v1/chat/completions", chat("gpt", "hello", false))
        .await;
    assert_eq!(resp.status(), 200);
    assert!(up.received()[0].headers.get("traceparent").is_none());
}

/// 20 requests against a collector that misbehaves: each answers at once, and spans lost are
/// counted under `reason`.
async fn requests_cost_nothing(gw: &Gateway, reason: &str, at_least: f64) {
    let metric = format!("tollgate_trace_spans_dropped_total{{reason=\"{reason}\"}}");
    let before = metric_value(gw, &metric).await;
    let started = Instant::now();
    for i in 0..20 {
        let t0 = Instant::now();
        let resp = gw
            .post(
                "/v1/chat/completions",
                chat("gpt", &format!("hi {i}"), false),
            )
            .await;
        assert_eq!(resp.status(), 200);
        assert!(t0.elapsed() < Duration::from_secs(2), "request {i} waited");
    }
    // Far less than one export timeout (30 s): no request waited on the collector.
    assert!(started.elapsed() < Duration::from_secs(10));
    let mut after = metric_value(gw, &metric).await;
    let deadline = Instant::now() + WAIT;
    while after - before < at_least && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
        after = metric_value(gw, &metric).await;
    }
    assert!(
        after - before >= at_least,
        "{metric}: {before} -> {after}, expected at least +{at_least}"
    );
}

#[tokio::test]
async fn a_collector_that_never_answers_costs_requests_nothing_and_full_queue_drops_are_counted() {
    let col = collector().await;
    col.set_mode(CollectorMode::Hang);
    let up = upstream().await;
    let extra = "    queue_size: 4\n    max_batch: 2\n    export_timeout: 30s\n";
    let gw = gateway(&config(
        &up.base_url(),
        &traces(&col.http_endpoint(), "http", extra),
    ))
    .await;
    // 40 spans (a request and an attempt span each); at most 2 in the hanging export and 4
    // queued.
    requests_cost_nothing(&gw, "queue_full", 34.0).await;
    assert!(col.exports() >= 1);
    assert!(col.spans().is_empty());
}

#[tokio::test]
async fn a_collector_that_refuses_costs_requests_nothing_and_failed_exports_are_counted() {
    let col = collector().await;
    col.set_mode(CollectorMode::Refuse);
    let up = upstream().await;
    let gw = gateway(&config(
        &up.base_url(),
        &traces(&col.grpc_endpoint(), "grpc", "    export_timeout: 2s\n"),
    ))
    .await;
    requests_cost_nothing(&gw, "export_failed", 1.0).await;
    assert!(col.spans().is_empty());
}

#[tokio::test]
async fn a_collector_that_is_not_there_costs_requests_nothing() {
    // A port nobody listens on: every connection is refused.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        l.local_addr().unwrap_or_else(|e| panic!("{e}"))
    };
    let up = upstream().await;
    let gw = gateway(&config(
        &up.base_url(),
        &traces(
            &format!("http://{closed}"),
            "http",
            "    export_timeout: 2s\n",
        ),
    ))
    .await;
    requests_cost_nothing(&gw, "export_failed", 1.0).await;
}

#[tokio::test]
async fn the_binary_exports_the_last_requests_spans_when_it_stops() {
    let col = collector().await;
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // The binary reads the process environment: the secrets are literals here.
    let cfg = config(
        &up.base_url(),
        &format!(
            "    endpoint: {}\n    protocol: grpc\n",
            col.grpc_endpoint()
        ),
    )
    .replace("\"${UP_KEY}\"", UP_SECRET);
    let (mut child, addr_file) = common::serve_binary(dir.path(), &cfg);
    let base = format!("http://{}", common::wait_for_addr_file(&addr_file).await);
    let r = reqwest::Client::new()
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(DEMO_KEY)
        .json(&chat("gpt", "hello", false))
        .send()
        .await
        .unwrap_or_else(|e| panic!("request: {e}"));
    assert_eq!(r.status(), 200);
    // At once: the spans are still in the export queue (it gathers for 100 ms).
    common::sigterm(&child);
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap_or_else(|_| panic!("tollgate did not exit after SIGTERM"))
        .unwrap_or_else(|e| panic!("wait: {e}"));
    assert!(status.success(), "exit: {status}");
    // Exported before the process ended, not after.
    let spans = col.spans();
    assert_eq!(server_spans(&spans).len(), 1, "{spans:?}");
    assert_eq!(client_spans(&spans).len(), 1, "{spans:?}");
}

#[tokio::test]
async fn a_reload_keeps_an_unchanged_tracer_and_applies_a_changed_or_removed_block() {
    let (a, b) = (collector().await, collector().await);
    let up = upstream().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("cfg.yaml");
    // A reload reads the process environment: the upstream secret is a literal here.
    let cfg = |traces: &str| config(&up.base_url(), traces).replace("\"${UP_KEY}\"", UP_SECRET);
    let to_a = cfg(&format!("    endpoint: {}\n", a.http_endpoint()));
    let gw = gateway(&to_a).await;
    let reload = |yaml: String| {
        std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("{e}"));
        tollgate::reload::reload_now(&gw.state, &path).unwrap_or_else(|e| panic!("reload: {e}"));
    };
    let tracer = || gw.state.snapshot.load().tracing.clone();
    let before = tracer().unwrap_or_else(|| panic!("traces are on"));

    reload(to_a.clone());
    let kept = tracer().unwrap_or_else(|| panic!("traces are on"));
    assert!(std::sync::Arc::ptr_eq(&before, &kept));

    reload(cfg(&format!(
        "    endpoint: {}\n    protocol: grpc\n",
        b.grpc_endpoint()
    )));
    assert_eq!(traced_chat(&gw, false).await.status, 200);
    assert!(b.wait_spans(WAIT, |s| !server_spans(s).is_empty()).await);
    assert!(a.spans().is_empty());

    reload(cfg(""));
    assert!(tracer().is_none());
    up.clear_records();
    let resp = gw
        .post("/v1/chat/completions", chat("gpt", "hello", false))
        .await;
    assert_eq!(resp.status(), 200);
    assert!(up.received()[0].headers.get("traceparent").is_none());
}

/// `tollgate check-config FILE` with `env`: exit code and what it printed.
fn check_config(yaml: &str, env: &[(&str, &str)]) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("{e}"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("check-config")
        .arg(&path)
        .envs(env.iter().copied())
        .env_remove("OTLP_MISSING")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code().unwrap_or(-1), text)
}

#[test]
fn check_config_passes_the_tracing_example_and_names_a_bad_traces_field() {
    let example = std::fs::read_to_string("examples/tracing.yaml").unwrap_or_default();
    let (code, out) = check_config(&example, &[]);
    assert_eq!(code, 0, "{out}");
    let bad = example.replace("sampling_ratio: 1 ", "sampling_ratio: 2 ");
    let (code, out) = check_config(&bad, &[]);
    assert_eq!(code, 64, "{out}");
    assert!(
        out.contains("telemetry.traces.sampling_ratio: must be between 0 and 1"),
        "{out}"
    );
    let secret = example.replace(
        "    # headers:\n    #   authorization: ${OTLP_AUTH}",
        "    headers:\n      authorization: ${OTLP_MISSING}",
    );
    let (code, out) = check_config(&secret, &[]);
    assert_eq!(code, 64, "{out}");
    assert!(
        out.contains(
            "telemetry.traces.headers.authorization: environment variable OTLP_MISSING is not set"
        ),
        "{out}"
    );
    let literal = secret.replace("${OTLP_MISSING}", "Bearer s3cr3t-value");
    let (code, out) = check_config(&literal, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(
        out.contains("telemetry.traces.headers.authorization: secret written literally"),
        "{out}"
    );
    assert!(!out.contains("s3cr3t-value"), "{out}");
}
