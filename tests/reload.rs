//! Config reload without a restart: routing changes (weights, targets) take effect for new
//! requests, a bad config is refused and the old one keeps serving, requests in flight finish
//! on the snapshot they started with; and the real binary picks up a file edit and `SIGHUP`.

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::{mock_config, Gateway, DEMO_KEY, DEMO_KEY_SHA256};
use serde_json::{json, Value};

fn config(weights: (u32, u32), mock: &str) -> String {
    format!(
        "upstreams:\n  blue: {{ provider: mock{mock} }}\n  green: {{ provider: mock{mock} }}\n\
         models:\n  m: {{ targets: [ {{ upstream: blue, weight: {} }}, {{ upstream: green, weight: {} }} ] }}\n\
         teams:\n  demo: {{ models: [\"*\"] }}\n\
         keys:\n  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}\n",
        weights.0, weights.1
    )
}

fn write(path: &Path, text: &str) {
    // Write then rename, so a watcher never reads a half-written file.
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write: {e}"));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename: {e}"));
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
}

async fn served_by(client: &reqwest::Client, base: &str, text: &str) -> String {
    let r = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(DEMO_KEY)
        .json(&json!({"model": "m", "messages": [{"role": "user", "content": text}]}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("request: {e}"));
    assert_eq!(r.status(), 200);
    r.headers()
        .get("x-tollgate-upstream")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_owned()
}

async fn all_served_by(gw: &Gateway, n: usize) -> Vec<String> {
    let base = format!("http://{}", gw.addr);
    let mut out = Vec::new();
    for i in 0..n {
        out.push(served_by(&gw.client, &base, &format!("r{i}")).await);
    }
    out.sort();
    out.dedup();
    out
}

#[tokio::test]
async fn reload_moves_traffic_when_weights_change() {
    let dir = tempdir();
    let path = dir.path().join("tollgate.yaml");
    let before = config((100, 0), "");
    write(&path, &before);
    let gw = Gateway::start(&before).await;
    assert_eq!(all_served_by(&gw, 30).await, ["blue"]);
    write(&path, &config((0, 100), ""));
    tollgate::reload::reload_now(&gw.state, &path).unwrap_or_else(|e| panic!("reload: {e}"));
    assert_eq!(all_served_by(&gw, 30).await, ["green"]);
}

#[tokio::test]
async fn a_bad_config_is_refused_and_the_old_one_keeps_serving() {
    let dir = tempdir();
    let path = dir.path().join("tollgate.yaml");
    let good = config((100, 0), "");
    write(&path, &good);
    let gw = Gateway::start(&good).await;

    let unknown_field =
        config((0, 100), "").replace("provider: mock }", "provider: mock, wieght: 3 }");
    write(&path, &unknown_field);
    let e = tollgate::reload::reload_now(&gw.state, &path)
        .err()
        .unwrap_or_else(|| panic!("an unknown field was accepted"));
    assert!(e.contains("wieght"), "{e}");
    assert_eq!(all_served_by(&gw, 20).await, ["blue"]);

    let dangling = config((0, 100), "").replace("upstream: green", "upstream: nowhere");
    write(&path, &dangling);
    let e = tollgate::reload::reload_now(&gw.state, &path)
        .err()
        .unwrap_or_else(|| panic!("a dangling target was accepted"));
    assert!(e.contains("models.m.targets[1].upstream"), "{e}");
    assert_eq!(all_served_by(&gw, 20).await, ["blue"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_in_flight_finish_across_a_reload() {
    // Eight streams of ten chunks 100ms apart start on `blue`; the reload then removes `blue`
    // altogether. Every stream still completes whole on the snapshot it started with, and new
    // requests go to `green`.
    let dir = tempdir();
    let path = dir.path().join("tollgate.yaml");
    let slow = ", mock: { chunks: 10, chunk_delay: 100ms }";
    let before = config((100, 0), slow);
    write(&path, &before);
    let gw = Gateway::start(&before).await;
    let text = "one two three four five six seven eight nine ten";
    let mut streams = Vec::new();
    for _ in 0..8 {
        let resp = gw
            .client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(DEMO_KEY)
            .json(&json!({"model": "m", "stream": true,
                "messages": [{"role": "user", "content": text}]}))
            .send()
            .await
            .unwrap_or_else(|e| panic!("stream: {e}"));
        // The response head is here: the stream is committed and relaying.
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()
                .get("x-tollgate-upstream")
                .and_then(|v| v.to_str().ok()),
            Some("blue")
        );
        streams.push(tokio::spawn(resp.text()));
    }
    let old_blue = gw
        .state
        .snapshot
        .load()
        .upstreams
        .get("blue")
        .cloned()
        .unwrap_or_else(|| panic!("no blue"));
    let after = config((0, 100), slow)
        .replace(
            "  blue: { provider: mock, mock: { chunks: 10, chunk_delay: 100ms } }\n",
            "",
        )
        .replace("{ upstream: blue, weight: 0 }, ", "");
    assert!(!after.contains("blue"), "{after}");
    write(&path, &after);
    tollgate::reload::reload_now(&gw.state, &path).unwrap_or_else(|e| panic!("reload: {e}"));
    // Each stream holds its slot on the old `blue` until it ends: all eight were in flight
    // across the reload.
    assert_eq!(
        old_blue.gate.in_flight(),
        8,
        "streams ended before the reload"
    );
    assert_eq!(all_served_by(&gw, 5).await, ["green"]);
    for s in streams {
        let body = s
            .await
            .unwrap_or_else(|e| panic!("{e}"))
            .unwrap_or_else(|e| panic!("stream broke: {e}"));
        let events: Vec<&str> = body
            .split("\n\n")
            .filter_map(|ev| ev.strip_prefix("data: "))
            .collect();
        let content: String = events
            .iter()
            .filter_map(|e| serde_json::from_str::<Value>(e).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect();
        assert_eq!(content, format!("mock reply: {text}"));
        assert_eq!(events.last(), Some(&"[DONE]"));
    }
}

/// The spawned binary; killed when dropped.
struct Child(std::process::Child);

impl Drop for Child {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Polls `cond` every 50ms for up to `within`.
async fn eventually<F, Fut>(within: Duration, mut cond: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let t0 = Instant::now();
    while t0.elapsed() < within {
        if cond().await {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

fn read(path: &PathBuf) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

#[tokio::test]
async fn the_binary_reloads_on_file_change_and_on_sighup() {
    let dir = tempdir();
    let path = dir.path().join("tollgate.yaml");
    let addr_file = dir.path().join("addr");
    let log = dir.path().join("stderr.log");
    write(&path, &config((100, 0), ""));
    let stderr = std::fs::File::create(&log).unwrap_or_else(|e| panic!("log: {e}"));
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("serve")
        .arg("--config")
        .arg(&path)
        .args(["--listen", "127.0.0.1:0", "--addr-file"])
        .arg(&addr_file)
        .env("RUST_LOG", "info")
        .stdout(std::process::Stdio::null())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn: {e}"));
    let child = Child(child);
    let pid = child.0.id();
    assert!(
        eventually(Duration::from_secs(20), || async {
            !read(&addr_file).is_empty()
        })
        .await,
        "no address file; log:\n{}",
        read(&log)
    );
    let base = format!("http://{}", read(&addr_file).trim());
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap_or_default();
    assert_eq!(served_by(&client, &base, "x").await, "blue");

    // 1. Edit the file: the watcher (a stat a second) swaps the config in.
    let t0 = Instant::now();
    write(&path, &config((0, 100), ""));
    assert!(
        eventually(Duration::from_secs(5), || served_by_is(
            &client, &base, "green"
        ))
        .await,
        "the file change was not picked up; log:\n{}",
        read(&log)
    );
    let file_took = t0.elapsed();

    // 2. SIGHUP: an edit the watcher cannot see (same size, modification time put back), so
    //    only the signal can load it.
    let stamp = std::fs::metadata(&path)
        .and_then(|m| m.modified())
        .unwrap_or_else(|e| panic!("mtime: {e}"));
    let next = config((100, 0), "");
    assert_eq!(next.len(), read(&path).len());
    std::fs::write(&path, &next).unwrap_or_else(|e| panic!("write: {e}"));
    std::fs::File::options()
        .write(true)
        .open(&path)
        .and_then(|f| f.set_modified(stamp))
        .unwrap_or_else(|e| panic!("set mtime: {e}"));
    let t1 = Instant::now();
    let status = std::process::Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("kill: {e}"));
    assert!(status.success());
    assert!(
        eventually(Duration::from_secs(5), || served_by_is(
            &client, &base, "blue"
        ))
        .await,
        "SIGHUP did not reload; log:\n{}",
        read(&log)
    );
    let hup_took = t1.elapsed();
    assert!(
        eventually(Duration::from_secs(2), || async {
            let l = read(&log);
            l.contains("config reloaded") && l.contains("sighup")
        })
        .await,
        "{}",
        read(&log)
    );

    // 3. A bad edit is refused with its reason logged; the old config keeps serving.
    write(&path, &config((0, 100), "").replace("teams:", "teems:"));
    assert!(
        eventually(Duration::from_secs(5), || async {
            read(&log).contains("config reload refused")
        })
        .await,
        "{}",
        read(&log)
    );
    for i in 0..10 {
        assert_eq!(served_by(&client, &base, &format!("r{i}")).await, "blue");
    }
    println!("binary reload: file change took effect in {file_took:.2?}, SIGHUP in {hup_took:.2?}");
}

async fn served_by_is(client: &reqwest::Client, base: &str, want: &str) -> bool {
    served_by(client, base, "poll").await == want
}

/// `batch:` applies at a restart only (the worker reads it at start): a reload keeps the batch
/// block the API and the worker share, and applies the rest.
#[tokio::test]
async fn a_reload_keeps_the_batch_block_it_started_with() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("c.yaml");
    let before = format!(
        "{}batch: {{ files_dir: {} }}\n",
        mock_config(1, 0),
        dir.path().join("a").display()
    );
    let gw = Gateway::start(&before).await;
    let after = before.replace("/a }", "/b }").replace(
        "demo: { models: [\"*\"] }",
        "demo: { models: [\"*\"], requests_per_minute: 7 }",
    );
    assert_ne!(after, before);
    std::fs::write(&path, &after).unwrap_or_else(|e| panic!("{e}"));
    tollgate::reload::reload_now(&gw.state, &path).unwrap_or_else(|e| panic!("reload: {e}"));
    let snap = gw.state.snapshot.load();
    assert_eq!(snap.config.batch.files_dir, dir.path().join("a"));
    let rpm = snap
        .config
        .teams
        .get("demo")
        .and_then(|t| t.limits.requests_per_minute);
    assert_eq!(rpm, Some(7), "the rest of the reload applies");
    drop(snap);
    gw.stop().await;
}
