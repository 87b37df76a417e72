//! Integration-test harness: a Tollgate started in process on 127.0.0.1:0, reached through real
//! sockets, stopped by dropping or [`Gateway::stop`].
#![allow(dead_code)]

pub mod python;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tollgate::config::Config;
use tollgate::server::{self, ServeOptions};
use tollgate::state::{AppState, Snapshot};

/// A whole answer: status, headers and body, with readers for what tests look at.
pub struct Reply {
    pub status: u16,
    pub headers: reqwest::header::HeaderMap,
    pub body: String,
}

impl Reply {
    pub async fn read(resp: reqwest::Response) -> Reply {
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let body = resp
            .text()
            .await
            .unwrap_or_else(|e| panic!("body failed: {e}"));
        Reply {
            status,
            headers,
            body,
        }
    }
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    pub fn attempts(&self) -> Option<u32> {
        self.header("x-tollgate-attempts")
            .and_then(|v| v.parse().ok())
    }
    pub fn upstream(&self) -> Option<&str> {
        self.header("x-tollgate-upstream")
    }
    pub fn retry_after_secs(&self) -> Option<u64> {
        self.header("retry-after").and_then(|v| v.parse().ok())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
    /// The SSE `data:` payloads in order.
    pub fn events(&self) -> Vec<String> {
        self.body
            .split("\n\n")
            .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")))
            .map(str::to_owned)
            .collect()
    }
    /// The answer's text: the message of a JSON answer, the concatenated deltas of a stream.
    pub fn content(&self) -> String {
        if let Some(c) = self.json()["choices"][0]["message"]["content"].as_str() {
            return c.to_owned();
        }
        self.events()
            .iter()
            .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
            .filter_map(|v| {
                v["choices"][0]["delta"]["content"]
                    .as_str()
                    .map(str::to_owned)
            })
            .collect()
    }
    /// The OpenAI error object, checked for shape (all four fields).
    pub fn error(&self) -> serde_json::Value {
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].is_string(), "not OpenAI-shaped: {}", self.body);
        assert!(e["type"].is_string(), "not OpenAI-shaped: {}", self.body);
        assert!(e.get("param").is_some(), "not OpenAI-shaped: {}", self.body);
        assert!(e.get("code").is_some(), "not OpenAI-shaped: {}", self.body);
        e.clone()
    }
    /// The code of a JSON error answer, its message, type and param checked for shape.
    pub fn error_code(&self) -> String {
        let v = self.json();
        let e = &v["error"];
        assert!(e["message"].is_string(), "not OpenAI-shaped: {}", self.body);
        assert!(e["type"].is_string(), "not OpenAI-shaped: {}", self.body);
        assert!(e.get("param").is_some(), "not OpenAI-shaped: {}", self.body);
        e["code"].as_str().unwrap_or("").to_owned()
    }
}

/// Poll `/metrics` (bounded: 100 polls 50 ms apart) until `pred` holds for the value of the
/// first line starting with `metric` (the name, with its labels if any).
pub async fn await_metric(gw: &Gateway, metric: &str, pred: impl Fn(f64) -> bool) -> bool {
    let client = reqwest::Client::new();
    for _ in 0..100 {
        let text = match client.get(gw.url("/metrics")).send().await {
            Ok(r) => r.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        let value = text.lines().find_map(|l| {
            l.strip_prefix(metric)
                .and_then(|v| v.trim().parse::<f64>().ok())
        });
        if pred(value.unwrap_or(0.0)) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    false
}

/// Nano-dollars a mock answer's `usage` costs at the built-in `mock-gpt` price (1.00 in / 2.00
/// out per million tokens).
pub fn cost_nanos(v: &serde_json::Value) -> u64 {
    let p = v["usage"]["prompt_tokens"].as_u64().unwrap_or(0);
    let c = v["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    p * 1000 + c * 2000
}

/// `tollgate serve` as its own process on port 0 with `cfg` written into `dir` (`RUST_LOG=warn`,
/// killed when dropped), and the file it writes its address to.
pub fn serve_binary(
    dir: &std::path::Path,
    cfg: &str,
) -> (tokio::process::Child, std::path::PathBuf) {
    serve_binary_under(&[], dir, cfg)
}

/// [`serve_binary`] run under a wrapper command (`["taskset", "-c", "0"]`); none when empty.
pub fn serve_binary_under(
    wrapper: &[&str],
    dir: &std::path::Path,
    cfg: &str,
) -> (tokio::process::Child, std::path::PathBuf) {
    let cfg_path = dir.join("cfg.yaml");
    std::fs::write(&cfg_path, cfg).unwrap_or_else(|e| panic!("write config: {e}"));
    let addr_file = dir.join("addr");
    let bin = env!("CARGO_BIN_EXE_tollgate");
    let (program, args) = match wrapper.split_first() {
        Some((w, rest)) => (*w, rest.iter().copied().chain([bin]).collect::<Vec<_>>()),
        None => (bin, Vec::new()),
    };
    let child = tokio::process::Command::new(program)
        .args(args)
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&cfg_path)
        .arg("--addr-file")
        .arg(&addr_file)
        .env("RUST_LOG", "warn")
        // The quickstart's admin key (admin API and console) comes from the environment.
        .env("TOLLGATE_ADMIN_KEY", ADMIN_KEY)
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("spawn tollgate: {e}"));
    (child, addr_file)
}

/// Send SIGTERM to a started binary (a graceful stop).
pub fn sigterm(child: &tokio::process::Child) {
    let pid = child
        .id()
        .unwrap_or_else(|| panic!("the process has already exited"));
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("kill: {e}"));
    assert!(killed.success(), "kill -TERM {pid}: {killed}");
}

/// The address a started binary wrote to its `--addr-file` (polled: at most 10 s).
pub async fn wait_for_addr_file(path: &std::path::Path) -> String {
    for _ in 0..200 {
        let addr = std::fs::read_to_string(path).unwrap_or_default();
        if !addr.is_empty() {
            return addr;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("gateway did not start");
}

/// The test Redis: `TOLLGATE_TEST_REDIS_URL`, default `redis://127.0.0.1:6379`.
pub fn redis_url() -> String {
    std::env::var("TOLLGATE_TEST_REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

/// The quickstart's demo key.
pub const DEMO_KEY: &str = "sk-tollgate-demo";
/// sha256("sk-tollgate-demo").
pub const DEMO_KEY_SHA256: &str =
    "179510ee3e248a7bfae1a518d344461ddef0e32bbf53b40845f2d3e157c5973f";

pub struct Gateway {
    pub addr: SocketAddr,
    pub state: AppState,
    pub client: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
    /// The usage writer when the config has a store; flushed by [`Gateway::stop`].
    writer: Option<tollgate::store::UsageWriter>,
    /// The batch worker when the config has a store; stopped by [`Gateway::stop`].
    worker: Option<tollgate::batch::Worker>,
}

impl Gateway {
    /// Start with `yaml`; `${VAR}` references resolve from `env`.
    pub async fn start_with_env(yaml: &str, env: HashMap<String, String>) -> Gateway {
        let config = match Config::parse(yaml) {
            Ok(c) => c,
            Err(e) => panic!("test config does not parse: {e}"),
        };
        let snapshot = match Snapshot::build(config, &env, None) {
            Ok(s) => s,
            Err(e) => panic!("test config is invalid: {e}"),
        };
        let opts = match ServeOptions::from_config(&snapshot.config.server)
            .with_tls(&snapshot.config.server)
        {
            Ok(o) => o,
            Err(e) => panic!("test listener TLS is invalid: {e}"),
        };
        let (store, writer) = match &snapshot.config.store {
            None => (None, None),
            Some(cfg) => match tollgate::store::open(cfg, &env).await {
                Ok((h, w)) => (Some(h), Some(w)),
                Err(e) => panic!("cannot open the test store: {e}"),
            },
        };
        let state = AppState::with_store(snapshot, store);
        let worker = tollgate::batch::start(&state);
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("cannot bind: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("no local addr: {e}"),
        };
        let (tx, rx) = oneshot::channel::<()>();
        let app = tollgate::app::service(state.clone());
        let task = tokio::spawn(server::serve(listener, app, opts, async {
            let _ = rx.await;
        }));
        let client = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap_or_default();
        Gateway {
            addr,
            state,
            client,
            stop: Some(tx),
            task: Some(task),
            writer,
            worker,
        }
    }

    /// The store, for tests that configured one.
    pub fn store(&self) -> tollgate::store::Store {
        match &self.state.store {
            Some(h) => h.db.clone(),
            None => panic!("this gateway has no store"),
        }
    }

    pub async fn start(yaml: &str) -> Gateway {
        Gateway::start_with_env(yaml, HashMap::new()).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// POST JSON with the demo key.
    /// The Prometheus text of `/metrics`.
    pub async fn metrics_text(&self) -> String {
        self.client
            .get(self.url("/metrics"))
            .send()
            .await
            .unwrap_or_else(|e| panic!("/metrics: {e}"))
            .text()
            .await
            .unwrap_or_default()
    }

    pub async fn post(&self, path: &str, body: serde_json::Value) -> reqwest::Response {
        self.post_with_key(path, DEMO_KEY, body).await
    }

    pub async fn post_with_key(
        &self,
        path: &str,
        key: &str,
        body: serde_json::Value,
    ) -> reqwest::Response {
        match self
            .client
            .post(self.url(path))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
        {
            Ok(r) => r,
            Err(e) => panic!("request to {path} failed: {e}"),
        }
    }

    /// Begin a graceful shutdown, wait until the server has drained, flush the usage writer.
    pub async fn stop(mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(w) = &self.worker {
            w.begin_stop();
        }
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
        if let Some(w) = self.worker.take() {
            w.stop(Duration::from_secs(10)).await;
        }
        // As the binary does: the limiter's last settlements, then the usage rows.
        let limiter = self.state.snapshot.load().limiter.clone();
        limiter.close(Duration::from_secs(10)).await;
        if let Some(t) = self.state.snapshot.load().tracing.clone() {
            t.flush(Duration::from_secs(10)).await;
        }
        if let Some(w) = self.writer.take() {
            w.close().await;
        }
    }

    /// Begin a graceful shutdown without waiting.
    pub fn begin_shutdown(&mut self) -> Option<JoinHandle<()>> {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        self.task.take()
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        if let Some(t) = &self.task {
            t.abort();
        }
    }
}

/// A config serving `mock-gpt` from the built-in mock with the demo key; `extra_upstreams`,
/// `models` etc. can be appended by tests through string building.
pub fn mock_config(chunks: usize, chunk_delay_ms: u64) -> String {
    format!(
        r#"
upstreams:
  mock:
    provider: mock
    mock: {{ chunks: {chunks}, chunk_delay: {chunk_delay_ms}ms }}
models:
  mock-gpt: {{ targets: [ {{ upstream: mock }} ] }}
teams:
  demo: {{ models: ["*"] }}
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}
"#
    )
}

/// A chat body with one user message.
pub fn chat(model: &str, text: &str, stream: bool) -> serde_json::Value {
    serde_json::json!({"model": model, "stream": stream,
        "messages": [{"role": "user", "content": text}]})
}

/// Read an SSE body and return the `data:` payloads in order.
pub async fn sse_events(resp: reqwest::Response) -> Vec<String> {
    let text = match resp.text().await {
        Ok(t) => t,
        Err(e) => panic!("stream body failed: {e}"),
    };
    text.split("\n\n")
        .filter_map(|ev| ev.lines().find_map(|l| l.strip_prefix("data: ")))
        .map(str::to_owned)
        .collect()
}

/// Concatenate `choices[0].delta.content` of chat chunks.
pub fn stream_content(events: &[String]) -> String {
    events
        .iter()
        .filter_map(|e| serde_json::from_str::<serde_json::Value>(e).ok())
        .filter_map(|v| {
            v["choices"][0]["delta"]["content"]
                .as_str()
                .map(str::to_owned)
        })
        .collect()
}

/// sha256(key) as hex, for configs.
pub fn sha256_hex(key: &str) -> String {
    hex::encode(tollgate::auth::hash_key(key))
}

/// The admin key the store tests configure.
pub const ADMIN_KEY: &str = "sk-admin-test";

/// A fresh PostgreSQL database for one test, dropped (with its connections) on drop.
/// `TOLLGATE_TEST_PG_URL` names the server (default `postgres://postgres@127.0.0.1:5432/postgres`).
pub struct PgDb {
    pub url: String,
    name: String,
    admin_url: String,
}

impl PgDb {
    pub async fn create() -> PgDb {
        let admin_url = std::env::var("TOLLGATE_TEST_PG_URL")
            .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into());
        let name = format!("tg_{}", uuid::Uuid::new_v4().simple());
        let mut conn = match <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url).await {
            Ok(c) => c,
            Err(e) => panic!("PostgreSQL at {admin_url} is needed for this test: {e}"),
        };
        if let Err(e) = sqlx::query(&format!("CREATE DATABASE {name}"))
            .execute(&mut conn)
            .await
        {
            panic!("cannot create database {name}: {e}");
        }
        let base = admin_url
            .rsplit_once('/')
            .map(|(b, _)| b.to_owned())
            .unwrap_or_else(|| admin_url.clone());
        PgDb {
            url: format!("{base}/{name}"),
            name,
            admin_url,
        }
    }

    /// The same database reached through `addr` (a [`Relay`]) instead of the server's port.
    pub fn url_via(&self, addr: SocketAddr) -> String {
        let after_at = self
            .url
            .rsplit_once('@')
            .map(|(_, r)| r)
            .unwrap_or(&self.url);
        let host_port = after_at.split('/').next().unwrap_or_default();
        self.url.replacen(host_port, &addr.to_string(), 1)
    }

    /// The server's address, for a [`Relay`] to point at.
    pub fn server_addr(&self) -> SocketAddr {
        let after_at = self
            .url
            .rsplit_once('@')
            .map(|(_, r)| r)
            .unwrap_or(&self.url);
        let host_port = after_at.split('/').next().unwrap_or_default();
        match host_port.parse() {
            Ok(a) => a,
            Err(e) => panic!("cannot parse {host_port} as an address: {e}"),
        }
    }
}

impl Drop for PgDb {
    fn drop(&mut self) {
        let (admin_url, name) = (self.admin_url.clone(), self.name.clone());
        // Drop may run inside a runtime: use a thread with its own.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                if let Ok(mut c) =
                    <sqlx::PgConnection as sqlx::Connection>::connect(&admin_url).await
                {
                    let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)"))
                        .execute(&mut c)
                        .await;
                }
            });
        })
        .join();
    }
}

/// A TCP relay the test controls: [`Relay::cut`] closes every relayed connection and refuses
/// new ones (as a database outage looks to a client); [`Relay::restore`] lets them through again.
pub struct Relay {
    pub addr: SocketAddr,
    up: Arc<AtomicBool>,
    /// While true, bytes from clients are held (not forwarded): the server seems to hang.
    held: Arc<tokio::sync::watch::Sender<bool>>,
    conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>>,
    task: JoinHandle<()>,
}

impl Relay {
    pub async fn start(target: SocketAddr) -> Relay {
        let listener = match tokio::net::TcpListener::bind("127.0.0.1:0").await {
            Ok(l) => l,
            Err(e) => panic!("cannot bind relay: {e}"),
        };
        let addr = match listener.local_addr() {
            Ok(a) => a,
            Err(e) => panic!("no relay addr: {e}"),
        };
        let up = Arc::new(AtomicBool::new(true));
        let held = Arc::new(tokio::sync::watch::channel(false).0);
        let conns: Arc<Mutex<Vec<tokio::task::AbortHandle>>> = Arc::default();
        let (up2, conns2, held2) = (up.clone(), conns.clone(), held.clone());
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if !up2.load(Ordering::SeqCst) {
                    drop(client);
                    continue;
                }
                let mut gate = held2.subscribe();
                let t = tokio::spawn(async move {
                    use tokio::io::{AsyncReadExt, AsyncWriteExt};
                    let Ok(server) = tokio::net::TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let up_dir = async {
                        let mut buf = vec![0u8; 16 * 1024];
                        let mut pending: Vec<u8> = Vec::new();
                        loop {
                            let n = match cr.read(&mut buf).await {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            pending.extend_from_slice(&buf[..n]);
                            // Held: keep what the client sends until released; a client that
                            // goes away meanwhile never reaches the server (as with a server
                            // that hangs, then times the connection out).
                            let mut gone = false;
                            while *gate.borrow() {
                                tokio::select! {
                                    r = gate.changed() => if r.is_err() { gone = true; break },
                                    r = cr.read(&mut buf) => match r {
                                        Ok(0) | Err(_) => { gone = true; break }
                                        Ok(n) => pending.extend_from_slice(&buf[..n]),
                                    },
                                }
                            }
                            if gone || sw.write_all(&pending).await.is_err() {
                                break;
                            }
                            pending.clear();
                        }
                    };
                    // Both directions in this one task, so aborting it (cut) ends both.
                    tokio::select! {
                        () = up_dir => {}
                        _ = tokio::io::copy(&mut sr, &mut cw) => {}
                    }
                });
                if let Ok(mut c) = conns2.lock() {
                    c.retain(|h| !h.is_finished());
                    c.push(t.abort_handle());
                }
            }
        });
        Relay {
            addr,
            up,
            held,
            conns,
            task,
        }
    }

    /// Hold the bytes clients send (the server seems to hang) until [`Relay::release`].
    pub fn hold(&self) {
        self.held.send_replace(true);
    }

    pub fn release(&self) {
        self.held.send_replace(false);
    }

    pub fn cut(&self) {
        self.up.store(false, Ordering::SeqCst);
        if let Ok(mut c) = self.conns.lock() {
            for h in c.drain(..) {
                h.abort();
            }
        }
    }

    pub fn restore(&self) {
        self.up.store(true, Ordering::SeqCst);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
        self.task.abort();
    }
}

/// One request of a load run: what was sent and what came back.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub request_id: String,
    /// HTTP status, or 0 if no complete answer came back.
    pub status: u16,
}

/// The request mix of the usage tests: non-stream and stream chats, and two kinds of failure
/// that still have an identified caller (unknown model: 404, no messages: 400).
pub fn mixed_body(i: usize) -> serde_json::Value {
    match i % 10 {
        0..=4 => chat("mock-gpt", &format!("request {i}"), false),
        5..=7 => chat("mock-gpt", &format!("stream {i}"), true),
        8 => chat("no-such-model", "x", false),
        _ => serde_json::json!({"model": "mock-gpt"}),
    }
}

/// Send `n` requests (body `mixed_body(i)`, key `key`) spread over `bases` round robin,
/// `concurrency` at a time; every response body is read to its end.
pub async fn load(
    client: &reqwest::Client,
    bases: &[String],
    key: &str,
    n: usize,
    concurrency: usize,
) -> Vec<Outcome> {
    use futures_util::StreamExt;
    futures_util::stream::iter(0..n)
        .map(|i| {
            let url = format!("{}/v1/chat/completions", bases[i % bases.len()]);
            let request_id = format!("load-{i}-{}", uuid::Uuid::new_v4().simple());
            let req = client
                .post(url)
                .bearer_auth(key)
                .header("x-request-id", request_id.clone())
                .json(&mixed_body(i));
            async move {
                let status = match req.send().await {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        match r.bytes().await {
                            Ok(_) => s,
                            Err(_) => 0,
                        }
                    }
                    Err(_) => 0,
                };
                Outcome { request_id, status }
            }
        })
        .buffer_unordered(concurrency)
        .collect()
        .await
}

/// A config with the mock model, the demo key, an admin key and a store at `url`.
pub fn store_config(url: &str, spill: &std::path::Path, extra_usage: &str) -> String {
    format!(
        r#"{}
admin:
  sha256: {}
store:
  url: "{url}"
  key_cache_ttl: 1s
  usage: {{ spill_path: "{}", batch_interval: 20ms{extra_usage} }}
"#,
        mock_config(4, 0),
        sha256_hex(ADMIN_KEY),
        spill.display()
    )
}

/// The usage table read two ways: its row count, and the distinct request ids of its rows. One
/// row per request holds exactly when the two agree (a count alone lets a lost row and a doubled
/// row cancel out; a set alone cannot see a doubled row).
pub async fn usage_rows_and_ids(
    store: &tollgate::store::Store,
) -> (usize, std::collections::HashSet<String>) {
    let rows = store
        .count_usage()
        .await
        .unwrap_or_else(|e| panic!("count usage rows: {e}"));
    let ids = store
        .usage_request_ids()
        .await
        .unwrap_or_else(|e| panic!("read usage request ids: {e}"));
    (usize::try_from(rows).unwrap_or(usize::MAX), ids)
}

/// Exactly one usage row per request of `sent` and none other: as many rows as distinct ids,
/// and those ids are the ones sent.
pub async fn assert_one_row_per_request(store: &tollgate::store::Store, sent: &[Outcome]) {
    let (rows, ids) = usage_rows_and_ids(store).await;
    let sent: std::collections::HashSet<&str> =
        sent.iter().map(|o| o.request_id.as_str()).collect();
    let missing = sent.iter().filter(|id| !ids.contains(**id)).count();
    let foreign = ids.iter().filter(|id| !sent.contains(id.as_str())).count();
    assert_eq!(
        rows,
        ids.len(),
        "{rows} rows but {} distinct request ids: some request has more than one row",
        ids.len()
    );
    assert_eq!(
        (missing, foreign),
        (0, 0),
        "{missing} requests without a row, {foreign} rows of requests never sent"
    );
}

/// The value of `metric` (its name with its labels, exactly as Prometheus prints them) in
/// `/metrics` now; 0 when the line is not there yet (a counter nothing has incremented). The
/// recorder is process-wide, so a test compares two readings rather than looking for a line.
pub async fn metric_value(gw: &Gateway, metric: &str) -> f64 {
    let text = gw.metrics_text().await;
    text.lines()
        .find_map(|l| {
            l.strip_prefix(metric)
                .filter(|rest| rest.starts_with(' '))
                .and_then(|v| v.trim().parse::<f64>().ok())
        })
        .unwrap_or(0.0)
}
