//! `tollgate-bench --soak`: the gateway kept busy under faults, with its answers, its billing,
//! its gauges and its memory checked afterwards (issue 9, "Under load and faults").
//!
//! It starts the test kit's mock OAuth2 server (short-lived tokens) and a mock upstream that
//! accepts only valid tokens, writes a config with an `oauth2` credential, a SQLite store and
//! team limits, spawns the release gateway, then runs:
//! - a warm-up (no faults), after which the baseline RSS is taken;
//! - phase 1: `--soak-requests` requests (every other one a stream) from `--soak-clients`
//!   clients while `--soak-fault-rate` of upstream calls fail in one of the kit's fault kinds;
//! - phase 2: `--soak-auth-clients` clients for `--soak-seconds` on the short-lived tokens, no
//!   other faults.
//!
//! Then it stops the gateway (its usage writer flushes) and reads the usage rows back. Every
//! check is printed PASS or FAIL; the command exits 2 when one fails. Every wait is bounded.
//! Method and figures: docs/BENCHMARKS.md, "Soak under faults".

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use reqwest::{Client, Url};
use tokio_util::sync::CancellationToken;
use tollgate::testkit::{openai_error, Fault, MockOAuth, MockUpstream};

use super::answer::{judge, Answer};
use super::billing::{self, Sent};
use super::load::{self, Payloads};
use super::procs::{self, Gateway, TempDir, KEY, KEY_SHA256, MODEL};

/// The soak's own options (the gateway binary, threads, pinning and `--keep-tmp` are shared
/// with the benchmark).
#[derive(clap::Args, Debug, Clone)]
pub struct SoakArgs {
    /// Phase 1: requests sent (every other one a stream) while upstream calls fail.
    #[arg(long, default_value_t = 100_000)]
    pub soak_requests: usize,
    /// Phase 1: concurrent clients.
    #[arg(long, default_value_t = 256)]
    pub soak_clients: usize,
    /// Phase 1: share of upstream calls that fail, drawn evenly from the fault kinds.
    #[arg(long, default_value_t = 0.1)]
    pub soak_fault_rate: f64,
    /// Phase 2: concurrent clients on short-lived tokens, no other faults.
    #[arg(long, default_value_t = 1000)]
    pub soak_auth_clients: usize,
    /// Phase 2: how long it lasts, seconds.
    #[arg(long, default_value_t = 60.0)]
    pub soak_seconds: f64,
    /// Lifetime of the mock OAuth2 server's access tokens, seconds.
    #[arg(long, default_value_t = 2)]
    pub soak_token_secs: u64,
    /// Phase 1 stops sending after this many seconds (requests not sent fail the soak).
    #[arg(long, default_value_t = 900.0)]
    pub soak_max_seconds: f64,
    /// How far above its baseline the gateway's RSS may stay after phase 1, MiB.
    #[arg(long, default_value_t = 16.0)]
    pub soak_rss_slack_mib: f64,
}

/// Run the soak; `Ok(false)` when a check failed.
pub fn run(args: &crate::Args) -> Result<bool> {
    let threads = |n: usize, name: &str| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(n.max(1))
            .thread_name(name)
            .enable_all()
            .build()
            .with_context(|| format!("{name} runtime"))
    };
    // The mocks on their own threads, apart from the clients, as in the benchmark.
    let mock_rt = threads(args.mock_threads, "mock")?;
    let rt = threads(args.client_threads, "soak")?;
    let mocks = mock_rt.block_on(Mocks::start(args.soak_args.soak_token_secs))?;
    let result = rt.block_on(soak(args, &mocks));
    mock_rt.block_on(async {
        mocks.upstream.shutdown().await;
        mocks.oauth.shutdown().await;
    });
    result
}

/// The mock OAuth2 server and the mock upstream that checks its tokens.
struct Mocks {
    oauth: MockOAuth,
    upstream: MockUpstream,
}

const CLIENT_ID: &str = "soak";
const CLIENT_SECRET: &str = "soak-secret";

impl Mocks {
    async fn start(token_secs: u64) -> Result<Mocks> {
        let oauth = MockOAuth::start()
            .await
            .context("start the mock OAuth2 server")?;
        oauth.add_client(CLIENT_ID, CLIENT_SECRET);
        oauth.set_lifetime(Duration::from_secs(token_secs.max(1)));
        let upstream = MockUpstream::start()
            .await
            .context("start the mock upstream")?;
        upstream.set_recording(false);
        upstream.set_auth_check(Some(oauth.bearer_check()));
        Ok(Mocks { oauth, upstream })
    }
}

/// Phase 1's faults, equally likely: server errors, a 429 with `Retry-After`, a 401 as for an
/// expired token, a connection reset mid-body, a slow first byte, a stream that stalls after two
/// events, a body cut in half, and events that are not SSE.
fn fault_mix() -> Vec<Fault> {
    let status = |status: u16, retry_after: Option<u64>, kind: &str, code: Option<&str>| {
        let body = openai_error("Injected by the soak.", kind, code).to_string();
        Fault::Status {
            status,
            body,
            retry_after,
        }
    };
    vec![
        status(500, None, "server_error", None),
        status(502, None, "server_error", None),
        status(503, None, "server_error", None),
        status(429, Some(1), "requests", Some("rate_limit_exceeded")),
        status(401, None, "invalid_request_error", Some("invalid_api_key")),
        Fault::ResetMidBody,
        Fault::DelayFirstByte(Duration::from_millis(300)),
        Fault::StallAfterChunks(2),
        Fault::TruncatedJson,
        Fault::MalformedSse,
    ]
}

/// What every client task shares.
struct Ctx {
    client: Client,
    url: Url,
    /// `http://host:port` of the gateway.
    base: String,
    /// The gateway's process id.
    pid: u32,
    payloads: Payloads,
}

async fn soak(args: &crate::Args, mocks: &Mocks) -> Result<bool> {
    let s = &args.soak_args;
    header(args);
    let mut tmp = TempDir::new()?;
    tmp.keep = args.keep_tmp;
    let files = write_config(
        &tmp.path,
        &mocks.upstream.base_url(),
        &mocks.oauth.token_url(),
    )?;
    let gateway = Gateway::start(
        &args.gateway_bin,
        &files.config,
        &tmp.path,
        0,
        args.server_cpus.as_deref(),
    )?;
    let base = format!("http://{}", gateway.addr);
    crate::wait_healthy(&base).await?;
    let pid = gateway.proc.pid();
    println!(
        "- gateway pid {pid} on {base}; temp dir {}",
        tmp.path.display()
    );
    let ctx = Arc::new(Ctx {
        client: load::client()?,
        url: load::chat_url(&base)?,
        base,
        pid,
        payloads: Payloads::new(8),
    });
    let mut sent = HashMap::new();
    let (warm, baseline) = warm_up(&ctx, s, mocks, &mut sent).await;
    let (p1, after1) = faults_phase(&ctx, s, mocks, &mut sent).await;
    let (p2, after2) = tokens_phase(&ctx, s, mocks, &mut sent).await;

    // Stop the gateway (its usage writer flushes), then read the bill.
    let log = gateway.log.clone();
    stop(gateway).await;
    let billed = billing::read(&files.db, &files.spill).await?;
    let rec = billing::reconcile(&billed, &sent);
    println!(
        "- usage rows {} ({} in the store, {} only in spill files); accepted requests {}; \
         unanswered requests billed {}",
        billed.rows(),
        billed.in_store,
        billed.spilled_only,
        rec.accepted,
        rec.unanswered_billed
    );
    let gauge = |a: &After| a.gauge.map_or(usize::MAX, |g| g as usize);
    let checks = [
        (
            "warm-up: requests without a terminal answer",
            warm.broken,
            0,
        ),
        ("phase 1: requests without a terminal answer", p1.broken, 0),
        (
            "phase 1: requests not sent in time",
            s.soak_requests - p1.sent,
            0,
        ),
        (
            "phase 1: answers with another request id",
            p1.foreign_ids,
            0,
        ),
        (
            "phase 2: client-visible authentication failures",
            p2.auth_failures,
            0,
        ),
        ("phase 2: requests without a terminal answer", p2.broken, 0),
        ("usage rows for accepted requests missing", rec.missing, 0),
        ("usage rows nobody asked for", rec.unexpected, 0),
        ("requests billed twice", rec.billed_twice, 0),
        ("in-flight gauge after phase 1", gauge(&after1), 0),
        ("in-flight gauge after phase 2", gauge(&after2), 0),
        (
            "upstream requests still open after the phases",
            after1.open + after2.open,
            0,
        ),
        ("gateway panics in its log", count_panics(&log), 0),
    ];
    let mut ok = print_checks(&checks);
    let limit = baseline.map(|b| b as f64 / 1024.0 + s.soak_rss_slack_mib);
    ok &= print_rss_check(after1.rss, limit);
    if args.keep_tmp {
        println!("\ntemp files kept in {}", tmp.path.display());
    }
    Ok(ok)
}

/// A few requests without faults (connections, allocator, caches); returns their tally and the
/// baseline RSS taken after them.
async fn warm_up(
    ctx: &Arc<Ctx>,
    s: &SoakArgs,
    mocks: &Mocks,
    sent: &mut HashMap<String, Sent>,
) -> (Tally, Option<u64>) {
    let start = procs::status_kib(ctx.pid, "VmRSS");
    let n = (s.soak_requests / 10).clamp(1, 2000);
    let warm = phase(ctx, "w", Load::count(n, s.soak_clients, 300.0)).await;
    sent.extend(warm.ids.iter().cloned());
    let after = settle(ctx, mocks).await;
    println!(
        "- RSS at start {}, after {n} warm-up requests (the baseline) {}",
        mib(start),
        mib(after.rss)
    );
    (warm, after.rss)
}

/// Phase 1: the requests while `--soak-fault-rate` of upstream calls fail.
async fn faults_phase(
    ctx: &Arc<Ctx>,
    s: &SoakArgs,
    mocks: &Mocks,
    sent: &mut HashMap<String, Sent>,
) -> (Tally, After) {
    mocks.upstream.set_random_fault_mix(fault_mix());
    mocks.upstream.set_random_failure_rate(s.soak_fault_rate);
    let calls_before = mocks.upstream.request_count();
    let load = Load::count(s.soak_requests, s.soak_clients, s.soak_max_seconds);
    let tally = phase(ctx, "p1", load).await;
    mocks.upstream.set_random_failure_rate(0.0);
    mocks.upstream.set_random_fault_mix(Vec::new());
    let calls = mocks.upstream.request_count() - calls_before;
    print_phase("phase 1 (faults)", &tally);
    println!(
        "  upstream calls {calls} ({:.3} per request)",
        calls as f64 / tally.sent.max(1) as f64
    );
    let after = settle(ctx, mocks).await;
    after.print(ctx.pid);
    sent.extend(tally.ids.iter().cloned());
    (tally, after)
}

/// Phase 2: `--soak-auth-clients` clients for `--soak-seconds` on the short-lived tokens.
async fn tokens_phase(
    ctx: &Arc<Ctx>,
    s: &SoakArgs,
    mocks: &Mocks,
    sent: &mut HashMap<String, Sent>,
) -> (Tally, After) {
    let tokens_before = mocks.oauth.token_requests();
    let expired_before = mocks.oauth.rejected_expired();
    let secs = Duration::from_secs_f64(s.soak_seconds.max(0.0));
    let tally = phase(ctx, "p2", Load::For(secs, s.soak_auth_clients)).await;
    print_phase("phase 2 (short-lived tokens)", &tally);
    println!(
        "  token requests {}, expired tokens the upstream refused {}",
        mocks.oauth.token_requests() - tokens_before,
        mocks.oauth.rejected_expired() - expired_before
    );
    let after = settle(ctx, mocks).await;
    after.print(ctx.pid);
    sent.extend(tally.ids.iter().cloned());
    (tally, after)
}

/// The gateway after a phase.
struct After {
    /// `tollgate_in_flight_requests`, if it could be read.
    gauge: Option<f64>,
    /// Requests the mock upstream still has open.
    open: usize,
    rss: Option<u64>,
}

impl After {
    fn print(&self, pid: u32) {
        println!(
            "  after: in-flight gauge {:?}, upstream requests open {}, RSS {}, peak so far (VmHWM) {}",
            self.gauge,
            self.open,
            mib(self.rss),
            mib(procs::status_kib(pid, "VmHWM"))
        );
    }
}

fn header(args: &crate::Args) {
    let s = &args.soak_args;
    println!("# tollgate-bench --soak\n");
    for line in procs::machine() {
        println!("- {line}");
    }
    println!(
        "- command: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!(
        "- phase 1: {} requests (half streams), {} clients, {:.0}% of upstream calls failing; \
         phase 2: {} clients for {} s; tokens live {} s",
        s.soak_requests,
        s.soak_clients,
        s.soak_fault_rate * 100.0,
        s.soak_auth_clients,
        s.soak_seconds,
        s.soak_token_secs
    );
    let need = (s.soak_auth_clients.max(s.soak_clients) as u64) * 4 + 512;
    match procs::nofile_soft_limit() {
        Some(n) if n < need => {
            println!("- WARNING: open files limit {n} < {need}: raise it (ulimit -n)")
        }
        Some(n) => println!("- open files limit: {n}"),
        None => {}
    }
}

/// The config file and where the store and its spill file live.
struct Files {
    config: PathBuf,
    db: PathBuf,
    spill: PathBuf,
}

/// The config a team runs, with the upstream's credential an OAuth2 client: the SQLite store
/// (a usage row per request), a priced model, team limits and a budget high enough never to
/// refuse. Timeouts are short so stalled faults end quickly; the breaker tolerates the injected
/// error rate (with one upstream, an open breaker would turn the rest of the soak into 503s).
fn write_config(dir: &Path, mock_base: &str, token_url: &str) -> Result<Files> {
    let secret = dir.join("client-secret");
    std::fs::write(&secret, CLIENT_SECRET).context("write the client secret")?;
    let files = Files {
        config: dir.join("tollgate.yaml"),
        db: dir.join("soak.db"),
        spill: dir.join("usage-spill.jsonl"),
    };
    let yaml = format!(
        "# Written by tollgate-bench --soak.
server:
  listen: 127.0.0.1:0
  max_in_flight: 20000
credentials:
  soak:
    kind: oauth2
    token_url: {token_url}
    client_id: {CLIENT_ID}
    client_secret: file:{secret}
upstreams:
  mock:
    provider: openai
    base_url: {mock_base}
    credential: soak
    max_concurrent: 4096
    max_queue: 4096
    timeouts: {{ connect: 2s, first_byte: 5s, idle: 2s, total: 60s }}
    breaker: {{ consecutive_failures: 50, error_rate: 0.5 }}
models:
  {MODEL}:
    deadline: 30s
    targets:
      - upstream: mock
teams:
  bench: {{ models: [\"*\"], requests_per_minute: 1000000000, tokens_per_minute: 1000000000000, \
max_concurrent: 100000, budget: {{ amount_usd: 1000000000, period: monthly }} }}
keys:
  - name: bench
    team: bench
    sha256: {KEY_SHA256}
store:
  url: \"sqlite://{db}?mode=rwc\"
  usage: {{ spill_path: {spill} }}
prices:
  {MODEL}: {{ input_per_million: 1.0, output_per_million: 2.0 }}
limits: {{ backend: memory }}
",
        secret = secret.display(),
        db = files.db.display(),
        spill = files.spill.display(),
    );
    std::fs::write(&files.config, yaml).context("write the soak config")?;
    Ok(files)
}

/// How long a phase runs: a number of requests (stopping early at a time cap) or a duration;
/// and with how many clients.
#[derive(Clone, Copy)]
enum Load {
    Count(usize, usize, Duration),
    For(Duration, usize),
}

impl Load {
    fn count(n: usize, clients: usize, cap_secs: f64) -> Load {
        Load::Count(n, clients, Duration::from_secs_f64(cap_secs.max(0.0)))
    }
    fn clients(self) -> usize {
        match self {
            Load::Count(_, c, _) | Load::For(_, c) => c.max(1),
        }
    }
    /// Whether request `i` may start, `elapsed` into the phase.
    fn more(self, i: usize, elapsed: Duration) -> bool {
        match self {
            Load::Count(n, _, cap) => i < n && elapsed < cap,
            Load::For(d, _) => elapsed < d,
        }
    }
}

/// What a phase's clients saw.
#[derive(Default)]
struct Tally {
    sent: usize,
    complete: usize,
    /// OpenAI-shaped errors by (status, code).
    errors: BTreeMap<(u16, String), usize>,
    broken: usize,
    /// The first few requests without a terminal answer, for the report.
    broken_examples: Vec<String>,
    auth_failures: usize,
    foreign_ids: usize,
    elapsed: Duration,
    peak_rss_kib: Option<u64>,
    /// Every request id and what the gateway owes it.
    ids: Vec<(String, Sent)>,
}

impl Tally {
    fn add(&mut self, id: String, answer: Answer, echoed: bool) {
        self.sent += 1;
        self.foreign_ids += usize::from(!echoed);
        self.auth_failures += usize::from(answer.is_auth_failure());
        let sent = match &answer {
            _ if answer.refused_before_auth() => Sent::Refused,
            Answer::Complete => Sent::Accepted,
            Answer::Error { .. } => Sent::Accepted,
            Answer::Broken(_) => Sent::Unanswered,
        };
        match answer {
            Answer::Complete => self.complete += 1,
            Answer::Error { status, code } => *self.errors.entry((status, code)).or_default() += 1,
            Answer::Broken(why) => {
                self.broken += 1;
                if self.broken_examples.len() < 5 {
                    self.broken_examples.push(format!("{id}: {why}"));
                }
            }
        }
        self.ids.push((id, sent));
    }

    fn merge(&mut self, o: Tally) {
        self.sent += o.sent;
        self.complete += o.complete;
        for (k, n) in o.errors {
            *self.errors.entry(k).or_default() += n;
        }
        self.broken += o.broken;
        let room = 5usize.saturating_sub(self.broken_examples.len());
        self.broken_examples
            .extend(o.broken_examples.into_iter().take(room));
        self.auth_failures += o.auth_failures;
        self.foreign_ids += o.foreign_ids;
        self.ids.extend(o.ids);
    }
}

/// One phase: its clients take request numbers from a shared counter until the load is done.
/// Request `i` is a stream when `i` is odd, and carries the request id `soak-{tag}-{i}`.
async fn phase(ctx: &Arc<Ctx>, tag: &'static str, load: Load) -> Tally {
    let next = Arc::new(AtomicUsize::new(0));
    let started = Instant::now();
    let stop = CancellationToken::new();
    let sampler = tokio::spawn(sample_rss(ctx.pid, stop.clone()));
    let mut tasks = Vec::with_capacity(load.clients());
    for _ in 0..load.clients() {
        let (ctx, next) = (ctx.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut t = Tally::default();
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if !load.more(i, started.elapsed()) {
                    return t;
                }
                let id = format!("soak-{tag}-{i}");
                let (answer, echoed) = one(&ctx, &id, i % 2 == 1).await;
                t.add(id, answer, echoed);
            }
        }));
    }
    let mut tally = Tally::default();
    for task in tasks {
        match task.await {
            Ok(t) => tally.merge(t),
            Err(e) => eprintln!("soak: a client task failed: {e}"),
        }
    }
    tally.elapsed = started.elapsed();
    stop.cancel();
    tally.peak_rss_kib = sampler.await.ok().flatten();
    tally
}

/// One request, read to its end, and whether the answer carried its request id.
async fn one(ctx: &Ctx, id: &str, stream: bool) -> (Answer, bool) {
    let body = if stream {
        &ctx.payloads.stream
    } else {
        &ctx.payloads.plain
    };
    let sent = post(ctx, id, body.clone()).send().await;
    let resp = match sent {
        Ok(r) => r,
        Err(e) => return (Answer::Broken(format!("send: {}", chain(&e))), true),
    };
    let echoed = resp.headers().get("x-request-id").is_some_and(|v| v == id);
    let status = resp.status().as_u16();
    match resp.bytes().await {
        Ok(b) => (judge(status, &b, stream), echoed),
        Err(e) => (Answer::Broken(format!("body: {}", chain(&e))), echoed),
    }
}

fn post(ctx: &Ctx, id: &str, body: Bytes) -> reqwest::RequestBuilder {
    ctx.client
        .post(ctx.url.clone())
        .header(reqwest::header::AUTHORIZATION, format!("Bearer {KEY}"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .header("x-request-id", id)
        .body(body)
}

/// An error and its sources, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut out = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        out.push_str(": ");
        out.push_str(&s.to_string());
        src = s.source();
    }
    out
}

/// The largest VmRSS seen every 100 ms until `stop`.
async fn sample_rss(pid: u32, stop: CancellationToken) -> Option<u64> {
    let mut peak = None;
    loop {
        if let Some(k) = procs::status_kib(pid, "VmRSS") {
            peak = Some(peak.map_or(k, |p: u64| p.max(k)));
        }
        tokio::select! {
            () = stop.cancelled() => return peak,
            () = tokio::time::sleep(Duration::from_millis(100)) => {}
        }
    }
}

/// After a phase: wait (bounded) until the mock has no request open and the gateway's in-flight
/// gauge reads 0, then give the allocator a second to hand memory back before RSS is read.
async fn settle(ctx: &Ctx, mocks: &Mocks) -> After {
    mocks.upstream.wait_idle(Duration::from_secs(30)).await;
    let until = Instant::now() + Duration::from_secs(30);
    let mut gauge = in_flight_gauge(&ctx.client, &ctx.base).await;
    while gauge != Some(0.0) && Instant::now() < until {
        tokio::time::sleep(Duration::from_millis(100)).await;
        gauge = in_flight_gauge(&ctx.client, &ctx.base).await;
    }
    tokio::time::sleep(Duration::from_secs(1)).await;
    After {
        gauge,
        open: mocks.upstream.in_flight(),
        rss: procs::status_kib(ctx.pid, "VmRSS"),
    }
}

/// `tollgate_in_flight_requests` from `GET /metrics`.
async fn in_flight_gauge(client: &Client, base: &str) -> Option<f64> {
    let text = client
        .get(format!("{base}/metrics"))
        .send()
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("tollgate_in_flight_requests "))
        .and_then(|v| v.trim().parse().ok())
}

/// SIGTERM, and wait (off the runtime's threads) for the graceful exit.
async fn stop(mut gateway: Gateway) {
    let _ = tokio::task::spawn_blocking(move || gateway.proc.stop(Duration::from_secs(60))).await;
}

/// Lines of the gateway's log that report a panic.
fn count_panics(log: &Path) -> usize {
    use std::io::BufRead;
    let Ok(f) = std::fs::File::open(log) else {
        return 0;
    };
    std::io::BufReader::new(f)
        .lines()
        .map_while(Result::ok)
        .filter(|l| l.contains("panicked"))
        .count()
}

fn print_phase(name: &str, t: &Tally) {
    let secs = t.elapsed.as_secs_f64();
    println!(
        "- {name}: {} requests in {secs:.1} s ({:.0} req/s): {} complete, {} OpenAI-shaped errors \
         ({} of them authentication failures), {} without a terminal answer; peak RSS {}",
        t.sent,
        t.sent as f64 / secs.max(1e-9),
        t.complete,
        t.errors.values().sum::<usize>(),
        t.auth_failures,
        t.broken,
        mib(t.peak_rss_kib)
    );
    for ((status, code), n) in &t.errors {
        println!("  error {status} {code}: {n}");
    }
    for e in &t.broken_examples {
        println!("  no terminal answer: {e}");
    }
}

/// Each check: PASS when the value equals the expected one. Returns whether all passed.
fn print_checks(checks: &[(&str, usize, usize)]) -> bool {
    println!("\n## checks\n");
    let mut ok = true;
    for (what, got, want) in checks {
        let pass = got == want;
        ok &= pass;
        let got = if *got == usize::MAX {
            "unknown".to_owned()
        } else {
            got.to_string()
        };
        println!("- {}: {what}: {got} (want {want})", verdict(pass));
    }
    ok
}

fn print_rss_check(after: Option<u64>, limit_mib: Option<f64>) -> bool {
    let (Some(after), Some(limit)) = (after, limit_mib) else {
        println!("- FAIL: RSS after phase 1: not measured");
        return false;
    };
    let after = after as f64 / 1024.0;
    let pass = after <= limit;
    println!(
        "- {}: RSS after phase 1: {after:.1} MiB (want at most {limit:.1} MiB, baseline + slack)",
        verdict(pass)
    );
    pass
}

fn verdict(pass: bool) -> &'static str {
    if pass {
        "PASS"
    } else {
        "FAIL"
    }
}

fn mib(kib: Option<u64>) -> String {
    kib.map_or_else(|| "-".into(), |k| format!("{:.1} MiB", k as f64 / 1024.0))
}
