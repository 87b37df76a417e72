//! The cost of accounting, through real sockets: metric series registered once (not per
//! request), and the binary's request log line — on by default, off with `RUST_LOG=warn`,
//! written by a low-priority thread.

mod common;

use std::collections::HashSet;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use common::{chat, mock_config, wait_for_addr_file, Gateway, DEMO_KEY};
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};

/// A recorder that counts registrations (what the `metrics` macros did on every call) and
/// keeps every series' count.
#[derive(Default)]
struct Counting {
    registrations: AtomicUsize,
    series: Mutex<HashSet<String>>,
    /// Every registration, in order.
    log: Mutex<Vec<String>>,
    counters: Mutex<Vec<(String, Arc<AtomicU64>)>>,
}

impl Counting {
    fn note(&self, key: &Key) -> String {
        self.registrations.fetch_add(1, Ordering::SeqCst);
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        let id = format!("{}{{{}}}", key.name(), labels.join(","));
        if let Ok(mut s) = self.series.lock() {
            s.insert(id.clone());
        }
        if let Ok(mut l) = self.log.lock() {
            l.push(id.clone());
        }
        id
    }
    fn registrations(&self) -> usize {
        self.registrations.load(Ordering::SeqCst)
    }
    /// The registrations after the first `n`.
    fn since(&self, n: usize) -> Vec<String> {
        self.log
            .lock()
            .map(|l| l.iter().skip(n).cloned().collect())
            .unwrap_or_default()
    }
    fn series(&self) -> usize {
        self.series.lock().map(|s| s.len()).unwrap_or(0)
    }
    fn count(&self, id: &str) -> u64 {
        self.counters
            .lock()
            .map(|c| {
                c.iter()
                    .filter(|(i, _)| i == id)
                    .map(|(_, v)| v.load(Ordering::SeqCst))
                    .sum()
            })
            .unwrap_or(0)
    }
}

impl Recorder for &'static Counting {
    fn describe_counter(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_gauge(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn describe_histogram(&self, _: KeyName, _: Option<Unit>, _: SharedString) {}
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let id = self.note(key);
        let value = Arc::new(AtomicU64::new(0));
        if let Ok(mut c) = self.counters.lock() {
            c.push((id, value.clone()));
        }
        Counter::from_arc(value)
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        self.note(key);
        Gauge::noop()
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        self.note(key);
        Histogram::noop()
    }
}

#[tokio::test]
async fn requests_touch_handles_made_once_not_the_metrics_registry() {
    // This test owns its process (nextest): its recorder is the global one.
    let recorder: &'static Counting = Box::leak(Box::default());
    assert!(metrics::set_global_recorder(recorder).is_ok());
    let gw = Gateway::start(&mock_config(2, 0)).await;
    let client = reqwest::Client::new();
    let round = || async {
        for (model, stream) in [("mock-gpt", false), ("mock-gpt", true), ("nope", false)] {
            let r = gw
                .post("/v1/chat/completions", chat(model, "hi", stream))
                .await;
            let _ = r.text().await;
        }
        let r = client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth("sk-wrong")
            .json(&chat("mock-gpt", "hi", false))
            .send()
            .await;
        let _ = r.map(|r| r.status());
    };
    round().await;
    let (registrations, series) = (recorder.registrations(), recorder.series());
    for _ in 0..25 {
        round().await;
    }
    // Each series was registered when first used, and never again: 100 more requests, no
    // registry lookup (the macros registered ~8 series per request).
    assert_eq!(
        recorder.registrations(),
        registrations,
        "registered again: {:?}",
        recorder.since(registrations)
    );
    assert_eq!(recorder.series(), series);
    assert_eq!(recorder.registrations(), recorder.series());
    // The handles count, under the same names and labels as before.
    let ok = "tollgate_requests_total{model=mock-gpt,team=demo,status=200}";
    assert_eq!(recorder.count(ok), 52);
    let unknown = "tollgate_requests_total{model=unknown,team=demo,status=404}";
    assert_eq!(recorder.count(unknown), 26);
    assert_eq!(
        recorder.count("tollgate_requests_total{model=-,team=-,status=401}"),
        26
    );
    assert_eq!(
        recorder.count("tollgate_upstream_attempts_total{upstream=mock,outcome=ok}"),
        52
    );
    assert_eq!(
        recorder.count("tollgate_errors_total{kind=auth_failed}"),
        26
    );
    let seen = |id: &str| {
        recorder
            .series
            .lock()
            .map(|s| s.contains(id))
            .unwrap_or(false)
    };
    assert!(seen("tollgate_request_duration_seconds{model=unknown}"));
    assert!(seen("tollgate_in_flight_requests{}"));
    let tokens_in = "tollgate_tokens_total{model=mock-gpt,team=demo,direction=in}";
    assert!(recorder.count(tokens_in) >= 52);
}

/// Run the binary on the mock model with `RUST_LOG` set to `log`, send one request, stop it and
/// return its stderr, plus the nice value of its `tollgate-log` thread while it ran.
async fn run_binary(log: &str) -> (String, Option<i32>) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cfg = dir.path().join("cfg.yaml");
    std::fs::write(&cfg, mock_config(2, 0)).unwrap_or_else(|e| panic!("{e}"));
    let addr_file = dir.path().join("addr");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg)
        .arg("--addr-file")
        .arg(&addr_file)
        .env("RUST_LOG", log)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = wait_for_addr_file(&addr_file).await;
    let r = reqwest::Client::new()
        .post(format!(
            "http://{}/v1/chat/completions?trace=on",
            addr.trim()
        ))
        .bearer_auth(DEMO_KEY)
        .header("x-request-id", "log-test-1")
        .header("user-agent", "log-test-agent/1.0")
        .json(&chat("mock-gpt", "x", false))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 200);
    let nice = log_thread_nice(child.id());
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "exit {:?}", out.status);
    (String::from_utf8_lossy(&out.stderr).into_owned(), nice)
}

/// The nice value of the process's `tollgate-log` thread (Linux: /proc/PID/task/TID/stat).
fn log_thread_nice(pid: u32) -> Option<i32> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).ok()?;
    for t in tasks.flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.trim() == "tollgate-log" {
            let stat = std::fs::read_to_string(t.path().join("stat")).ok()?;
            // Fields after the command's closing parenthesis; nice is field 19 of the line.
            let rest = stat.rsplit_once(')')?.1;
            return rest.split_whitespace().nth(16)?.parse().ok();
        }
    }
    None
}

#[tokio::test]
async fn the_binary_writes_one_request_line_from_a_low_priority_thread() {
    let (stderr, nice) = run_binary("info").await;
    let lines: Vec<serde_json::Value> = stderr
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    assert!(
        lines.iter().all(|v| v.is_object()),
        "a line is not JSON: {stderr}"
    );
    let requests: Vec<&serde_json::Value> = lines
        .iter()
        .filter(|v| v["log_type"] == "request")
        .collect();
    assert_eq!(requests.len(), 1, "{stderr}");
    let line = requests[0];
    assert_eq!(line["request_id"], "log-test-1");
    assert_eq!(line["target"], "tollgate::request");
    assert_eq!(line["level"], "INFO");
    assert_eq!(
        (line["team"].as_str(), line["model"].as_str()),
        (Some("demo"), Some("mock-gpt"))
    );
    assert_eq!(line["status"], 200);
    assert!(line["latency_ms"].as_f64().is_some(), "{line}");
    // Who asked for what: the client's loopback address, the method, the path without its
    // query, the user agent.
    assert!(
        line["client_addr"]
            .as_str()
            .is_some_and(|a| a.starts_with("127.0.0.1:")),
        "{line}"
    );
    assert_eq!(line["method"], "POST");
    assert_eq!(line["path"], "/v1/chat/completions");
    assert_eq!(line["user_agent"], "log-test-agent/1.0");
    // Rounded: milliseconds to the microsecond, dollars to the nano-dollar.
    for (field, places) in [("latency_ms", 3), ("cost_usd", 9)] {
        let text = line[field].to_string();
        let decimals = text.split_once('.').map_or(0, |(_, d)| d.len());
        assert!(decimals <= places, "{field} = {text}");
    }
    assert!(
        line["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')),
        "{line}"
    );
    // Operational lines go through the same writer, whole.
    assert!(
        lines
            .iter()
            .any(|v| v["level"] == "INFO" && v["log_type"].is_null()),
        "{stderr}"
    );
    if cfg!(target_os = "linux") {
        assert_eq!(nice, Some(19), "the log thread's nice value");
    }
}

#[tokio::test]
async fn rust_log_warn_turns_the_request_line_off() {
    let (stderr, _) = run_binary("warn").await;
    assert!(!stderr.contains("\"log_type\":\"request\""), "{stderr}");
    let (stderr, _) = run_binary("warn,tollgate::request=info").await;
    assert!(stderr.contains("\"log_type\":\"request\""), "{stderr}");
}

/// `/metrics` as Prometheus and Grafana expect it: every series has `# HELP` and `# TYPE`,
/// `_total` only on counters, the build, the process, spend as a counter per team and model,
/// and a stream's time to first token and output rate.
#[tokio::test]
async fn metrics_follow_prometheus_conventions() {
    let config = format!(
        "{}prices:\n  mock-gpt: {{ input_per_million: 1, output_per_million: 2 }}\n",
        mock_config(5, 2)
    );
    let gw = Gateway::start(&config).await;
    let client = reqwest::Client::new();
    for stream in [false, true] {
        let r = client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(DEMO_KEY)
            .json(&chat("mock-gpt", "hello there", stream))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.status(), 200);
        // A whole answer says what it cost; a stream's usage comes after its headers.
        let cost = r.headers().get("x-tollgate-cost-usd");
        assert_eq!(cost.is_some(), !stream, "{:?}", r.headers());
        let _ = r.bytes().await;
    }
    // The stream's accounting runs when its body ends, just after the client has it.
    let ttft = "tollgate_time_to_first_token_seconds_count{model=\"mock-gpt\"}";
    assert!(
        common::await_metric(&gw, ttft, |v| v == 1.0).await,
        "{ttft}"
    );
    let text = gw.metrics_text().await;
    let mut types = std::collections::HashMap::new();
    let mut helps = HashSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let (name, kind) = rest.split_once(' ').unwrap_or((rest, ""));
            types.insert(name.to_owned(), kind.to_owned());
        } else if let Some(rest) = line.strip_prefix("# HELP ") {
            let (name, help) = rest.split_once(' ').unwrap_or((rest, ""));
            assert!(!help.trim().is_empty(), "empty help: {line}");
            helps.insert(name.to_owned());
        }
    }
    assert!(types.len() > 15, "{text}");
    for (name, kind) in &types {
        assert!(helps.contains(name), "{name} has no # HELP");
        assert_eq!(
            name.ends_with("_total"),
            kind == "counter",
            "{name} is a {kind}"
        );
    }
    let value = |series: &str| -> Option<f64> {
        text.lines()
            .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
    };
    assert_eq!(
        types.get("tollgate_spend_usd_total").map(String::as_str),
        Some("counter")
    );
    let spend = value("tollgate_spend_usd_total{team=\"demo\",model=\"mock-gpt\"}");
    assert!(spend.is_some_and(|v| v > 0.0), "{text}");
    let version = env!("CARGO_PKG_VERSION");
    assert!(
        text.lines().any(|l| l.starts_with("tollgate_build_info{")
            && l.contains(&format!("version=\"{version}\""))
            && l.contains("commit=\"")
            && l.ends_with(" 1")),
        "{text}"
    );
    if cfg!(target_os = "linux") {
        assert!(
            value("process_resident_memory_bytes").is_some_and(|v| v > 1e6),
            "{text}"
        );
        assert!(value("process_open_fds").is_some_and(|v| v > 0.0), "{text}");
    }
    let rate = "tollgate_output_tokens_per_second_count{model=\"mock-gpt\"}";
    assert_eq!(value(rate), Some(1.0), "{text}");
    gw.stop().await;
}
