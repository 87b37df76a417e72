//! Batches across restarts of the `tollgate` binary, and `tollgate batch` at a terminal: a
//! graceful stop (SIGTERM) and a `kill -9` midway both end, after a restart, with exactly one
//! output line per input line, equal to what an uninterrupted run gives.

mod batch_kit;
mod common;

use std::path::Path;
use std::time::Duration;

use batch_kit::{chat_lines, expected, files_of, results, Api};
use common::{serve_binary, sigterm, wait_for_addr_file, DEMO_KEY, DEMO_KEY_SHA256};
use serde_json::Value;

/// The built-in mock (20 ms a line), four lines at a time, 2-second leases, a SQLite store.
fn config(dir: &Path) -> String {
    format!(
        r#"
server: {{ shutdown_grace: 5s }}
upstreams:
  mock: {{ provider: mock, mock: {{ latency: 20ms }} }}
models:
  mock-gpt: {{ targets: [ {{ upstream: mock }} ] }}
teams:
  demo: {{ models: ["*"] }}
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}
store:
  url: "sqlite://{db}?mode=rwc"
  usage: {{ spill_path: {spill} }}
batch:
  files_dir: {files}
  poll_interval: 50ms
  concurrency: 4
  lease: 2s
"#,
        db = dir.join("t.db").display(),
        spill = dir.join("spill.jsonl").display(),
        files = dir.join("files").display(),
    )
}

async fn start(dir: &Path) -> (tokio::process::Child, String) {
    let _ = std::fs::remove_file(dir.join("addr"));
    let (child, addr_file) = serve_binary(dir, &config(dir));
    let addr = wait_for_addr_file(&addr_file).await;
    (child, format!("http://{addr}"))
}

async fn exits(child: &mut tokio::process::Child) -> Option<i32> {
    match tokio::time::timeout(Duration::from_secs(20), child.wait()).await {
        Ok(Ok(s)) => s.code(),
        other => panic!("the gateway did not exit: {other:?}"),
    }
}

/// Run a batch of `n` lines, interrupt the gateway once `at` lines are done with `interrupt`,
/// start it again, and check the ended batch.
async fn interrupted(n: usize, at: i64, graceful: bool) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let (mut child, url) = start(dir.path()).await;
    let api = Api::new(&url, DEMO_KEY);
    let b = api
        .submit(chat_lines(n, "mock-gpt"), "/v1/chat/completions")
        .await;
    let id = b["id"].as_str().unwrap_or_default().to_owned();
    let before = api
        .wait_for(&id, Duration::from_secs(30), |b| {
            b["request_counts"]["completed"].as_i64().unwrap_or(0) >= at
        })
        .await;
    if graceful {
        sigterm(&child);
        assert_eq!(exits(&mut child).await, Some(0), "a graceful stop exits 0");
    } else {
        child
            .start_kill()
            .unwrap_or_else(|e| panic!("kill -9: {e}"));
        let _ = child.wait().await;
    }
    let (mut child, url) = start(dir.path()).await;
    let api = Api::new(&url, DEMO_KEY);
    let (_, mid) = api.get(&format!("/v1/batches/{id}")).await;
    let done_mid = mid["request_counts"]["completed"].as_i64().unwrap_or(0);
    assert!(
        done_mid >= before["request_counts"]["completed"].as_i64().unwrap_or(0),
        "{mid}"
    );
    assert!(
        done_mid < n as i64,
        "the batch ended before the restart: {mid}"
    );
    let b = api.wait_end(&id, Duration::from_secs(60)).await;
    assert_eq!(b["status"], "completed", "{b}");
    assert_eq!(b["request_counts"]["completed"], Value::from(n), "{b}");
    let (output, errors) = files_of(&api, &b).await;
    assert_eq!(
        output.lines().count(),
        n,
        "exactly one output line per input line"
    );
    assert_eq!(results(&output, &errors), expected(n));
    sigterm(&child);
    assert_eq!(exits(&mut child).await, Some(0));
}

#[tokio::test]
async fn a_graceful_restart_midway_loses_and_repeats_no_line() {
    interrupted(400, 40, true).await;
}

#[tokio::test]
async fn kill_9_midway_loses_and_repeats_no_line() {
    interrupted(400, 40, false).await;
}

/// `tollgate batch submit` with a plain-text file of prompts, `--wait` and `-o`, its stdout not
/// a terminal: plain progress lines, the output written, exit 0; then `status` and `download`.
#[tokio::test]
async fn tollgate_batch_submit_turns_prompts_into_a_batch_and_downloads_its_output() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let (mut child, url) = start(dir.path()).await;
    let prompts: String = (0..30).map(|i| format!("prompt {i}\n")).collect();
    let input = dir.path().join("prompts.txt");
    std::fs::write(&input, prompts).unwrap_or_else(|e| panic!("write: {e}"));
    let out = dir.path().join("out.jsonl");
    let run = |args: &[&str]| {
        let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.arg("batch")
            .args(args)
            .env("TOLLGATE_URL", &url)
            .env("TOLLGATE_API_KEY", DEMO_KEY)
            .env("RUST_LOG", "warn")
            .kill_on_drop(true);
        cmd
    };
    let submitted = tokio::time::timeout(
        Duration::from_secs(60),
        run(&["submit"])
            .arg(&input)
            .args(["--model", "mock-gpt", "--wait", "-o"])
            .arg(&out)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("submit --wait did not end"))
    .unwrap_or_else(|e| panic!("submit: {e}"));
    let stdout = String::from_utf8_lossy(&submitted.stdout).into_owned();
    assert!(
        submitted.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&submitted.stderr)
    );
    let id = stdout.lines().next().unwrap_or_default().to_owned();
    assert!(id.starts_with("batch_"), "{stdout}");
    assert!(
        stdout.contains("completed: 30/30 done, 0 failed"),
        "plain progress lines: {stdout}"
    );
    let text = std::fs::read_to_string(&out).unwrap_or_default();
    let got = results(&text, "");
    let want: std::collections::BTreeMap<_, _> = (0..30)
        .map(|i| {
            (
                format!("line-{}", i + 1),
                (200, format!("mock reply: prompt {i}")),
            )
        })
        .collect();
    assert_eq!(got, want);

    let status = run(&["status", &id])
        .output()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let v: Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
    assert_eq!(v["status"], "completed");
    let again = dir.path().join("again.jsonl");
    let dl = run(&["download", &id, "-o"])
        .arg(&again)
        .output()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(dl.status.success());
    assert_eq!(std::fs::read_to_string(&again).unwrap_or_default(), text);
    // No key: a usage error.
    let nokey = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["batch", "status", &id, "--url", &url])
        .env_remove("TOLLGATE_API_KEY")
        .output()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(nokey.status.code(), Some(64));
    sigterm(&child);
    assert_eq!(exits(&mut child).await, Some(0));
}

/// `tollgate batch submit --wait` at a terminal (a pseudo-terminal made by util-linux `script`):
/// a progress bar with done of total, failed, rate and ETA instead of plain lines, ending on the
/// batch's status; `--priority` reaches the batch as `metadata.priority`.
#[tokio::test]
async fn tollgate_batch_submit_at_a_terminal_draws_a_progress_bar() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let (mut child, url) = start(dir.path()).await;
    let prompts: String = (0..30).map(|i| format!("prompt {i}\n")).collect();
    let input = dir.path().join("prompts.txt");
    std::fs::write(&input, prompts).unwrap_or_else(|e| panic!("write: {e}"));
    let command = format!(
        "{bin} batch submit {input} --model mock-gpt --priority 5 --wait",
        bin = env!("CARGO_BIN_EXE_tollgate"),
        input = input.display(),
    );
    let shown = tokio::time::timeout(
        Duration::from_secs(60),
        tokio::process::Command::new("script")
            .args(["-qefc", &command, "/dev/null"])
            .env("TOLLGATE_URL", &url)
            .env("TOLLGATE_API_KEY", DEMO_KEY)
            .env("RUST_LOG", "warn")
            .env("TERM", "xterm")
            .env("COLUMNS", "120")
            .kill_on_drop(true)
            .output(),
    )
    .await
    .unwrap_or_else(|_| panic!("submit --wait did not end"))
    .unwrap_or_else(|e| panic!("script (util-linux): {e}"));
    let screen = String::from_utf8_lossy(&shown.stdout).into_owned();
    assert!(shown.status.success(), "{screen}");
    let id = screen
        .split_whitespace()
        .find(|w| w.starts_with("batch_"))
        .unwrap_or_default()
        .to_owned();
    assert!(!id.is_empty(), "{screen}");
    assert!(
        screen.contains("completed, 0 failed [==============================] 30/30 done"),
        "a full bar at the end: {screen}"
    );
    assert!(screen.contains("/s, ETA "), "rate and ETA: {screen}");
    assert!(
        !screen.contains("completed: 30/30 done"),
        "no plain lines: {screen}"
    );
    let api = Api::new(&url, DEMO_KEY);
    let (_, b) = api.get(&format!("/v1/batches/{id}")).await;
    assert_eq!(b["metadata"]["priority"], "5", "{b}");
    sigterm(&child);
    assert_eq!(exits(&mut child).await, Some(0));
}

/// Two `tollgate` processes share one PostgreSQL store and files directory; one is killed with
/// `kill -9` midway and the other takes its lines over once their leases expire: every line
/// ends with exactly one output line.
#[tokio::test]
async fn a_replica_killed_midway_on_postgres_has_its_lines_taken_over() {
    let pg = common::PgDb::create().await;
    let shared = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
    let cfg = config(shared.path()).replace(
        &format!("sqlite://{}?mode=rwc", shared.path().join("t.db").display()),
        &pg.url,
    );
    let (da, db) = (
        tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")),
        tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}")),
    );
    let (mut a, addr_a) = serve_binary(da.path(), &cfg);
    let (mut b, addr_b) = serve_binary(db.path(), &cfg);
    let url_a = format!("http://{}", wait_for_addr_file(&addr_a).await);
    let url_b = format!("http://{}", wait_for_addr_file(&addr_b).await);
    let n = 400;
    let api_a = Api::new(&url_a, DEMO_KEY);
    let batch = api_a
        .submit(chat_lines(n, "mock-gpt"), "/v1/chat/completions")
        .await;
    let id = batch["id"].as_str().unwrap_or_default().to_owned();
    api_a
        .wait_for(&id, Duration::from_secs(30), |b| {
            b["request_counts"]["completed"].as_i64().unwrap_or(0) >= 40
        })
        .await;
    a.start_kill().unwrap_or_else(|e| panic!("kill -9: {e}"));
    let _ = a.wait().await;
    let api_b = Api::new(&url_b, DEMO_KEY);
    let ended = api_b.wait_end(&id, Duration::from_secs(60)).await;
    assert_eq!(ended["status"], "completed", "{ended}");
    assert_eq!(ended["request_counts"]["completed"], Value::from(n));
    let (output, errors) = files_of(&api_b, &ended).await;
    assert_eq!(output.lines().count(), n);
    assert_eq!(results(&output, &errors), expected(n));
    sigterm(&b);
    assert_eq!(exits(&mut b).await, Some(0));
}
