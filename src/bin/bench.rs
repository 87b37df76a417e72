//! `tollgate-bench`: what Tollgate adds on the request path, measured against a direct connection
//! to the same upstream in the same run, and against nginx as a bare reverse proxy when it is
//! installed (the cost of a plain proxy hop is the real reference).
//!
//! It starts the test kit's mock upstream in process, the release `tollgate` binary (and nginx)
//! on loopback, then for each target runs: an open-loop fixed rate of non-stream requests
//! (latency percentiles from the intended send time), a closed loop for maximum throughput,
//! streams for time to first byte, and, for the proxies, resident memory idle and while holding
//! many streams open. Every scenario runs `--runs` times; the table shows medians.
//! `--scenarios cache` measures the response cache ([`cache`]): the miss path, hits per
//! tier, and hit against miss throughput.
//! Method and results: docs/BENCHMARKS.md. Usually run through scripts/bench.sh.
//!
//! `--soak` runs the soak under faults instead ([`soak`]): the gateway kept busy while upstream
//! calls fail and its credential's tokens expire, with its answers, billing, gauges and memory
//! checked afterwards; it exits 2 when a check fails.

#[path = "bench/answer.rs"]
mod answer;
#[path = "bench/billing.rs"]
mod billing;
#[path = "bench/cache.rs"]
mod cache;
#[path = "bench/load.rs"]
mod load;
#[path = "bench/procs.rs"]
mod procs;
#[path = "bench/report.rs"]
mod report;
#[path = "bench/soak.rs"]
mod soak;
#[path = "bench/stats.rs"]
mod stats;

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, ValueEnum};
use tollgate::testkit::MockUpstream;

use load::Payloads;
use procs::{Gateway, Nginx, TempDir};
use report::{Better, Results};

#[derive(Parser, Debug, Clone)]
#[command(
    name = "tollgate-bench",
    about = "Tollgate's added latency, throughput, stream first byte and memory, against a direct \
             connection to the same mock upstream and against nginx"
)]
struct Args {
    /// The gateway binary under test (build it with `cargo build --release`).
    #[arg(long, default_value = "target/release/tollgate")]
    gateway_bin: PathBuf,
    /// nginx binary; default: `nginx` on PATH, else /usr/sbin/nginx. Skipped when absent.
    #[arg(long)]
    nginx_bin: Option<PathBuf>,
    /// Do not run nginx even if it is installed.
    #[arg(long)]
    no_nginx: bool,
    /// nginx worker processes.
    #[arg(long, default_value_t = 1)]
    nginx_workers: usize,
    /// Repetitions of every scenario; the table reports the median.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Measured seconds of the fixed-rate and max-throughput scenarios.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Unrecorded seconds before each fixed-rate and max-throughput measurement.
    #[arg(long, default_value_t = 2.0)]
    warmup: f64,
    /// Requests per second of the open-loop scenario.
    #[arg(long, default_value_t = 1000.0)]
    rate: f64,
    /// Requests per second of the cache scenario's open loops (misses, and hits per tier).
    #[arg(long, default_value_t = 200.0)]
    cache_rate: f64,
    /// Redis of the cache scenario's Redis tier (a key prefix of its own per run); skipped with
    /// a note when it does not answer.
    #[arg(long, default_value = "redis://127.0.0.1:6379")]
    cache_redis_url: String,
    /// Connections (workers) of the closed-loop max-throughput scenario.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Streams measured for time to first byte.
    #[arg(long, default_value_t = 500)]
    streams: usize,
    /// Streams open at once in the time-to-first-byte scenario.
    #[arg(long, default_value_t = 25)]
    stream_concurrency: usize,
    /// Streams measured one at a time (no concurrency) for the bare first-byte cost; 0 skips.
    #[arg(long, default_value_t = 100)]
    stream_serial: usize,
    /// Chunks per stream in the time-to-first-byte scenario.
    #[arg(long, default_value_t = 8)]
    stream_chunks: usize,
    /// Mock delay between stream chunks (ms) in the time-to-first-byte scenario.
    #[arg(long, default_value_t = 10)]
    stream_chunk_delay_ms: u64,
    /// Streams held open at once for the memory figure.
    #[arg(long, default_value_t = 1000)]
    mem_streams: usize,
    /// Chunks per held stream (they must outlast the sampling).
    #[arg(long, default_value_t = 200)]
    mem_chunks: usize,
    /// Mock delay between chunks of held streams (ms).
    #[arg(long, default_value_t = 50)]
    mem_chunk_delay_ms: u64,
    /// Worker threads of the load generator's runtime.
    #[arg(long, default_value_t = 2)]
    client_threads: usize,
    /// Worker threads of the mock upstream's runtime (separate from the generator's).
    #[arg(long, default_value_t = 2)]
    mock_threads: usize,
    /// Pin the gateway and nginx to these CPUs (`taskset -c LIST`); default: no pinning.
    #[arg(long)]
    server_cpus: Option<String>,
    /// Targets to measure.
    #[arg(long, value_delimiter = ',', default_value = "direct,nginx,tollgate")]
    targets: Vec<String>,
    /// Scenarios to run.
    #[arg(
        long,
        value_enum,
        value_delimiter = ',',
        default_value = "fixed,max,stream,memory"
    )]
    scenarios: Vec<Scenario>,
    /// Record a CPU profile of the gateway with `perf record` (to this file) during the first
    /// run's max-throughput scenario.
    #[arg(long)]
    perf_out: Option<PathBuf>,
    /// Run the gateway with the config a team runs: SQLite store and usage rows, a priced model,
    /// team rate, token, concurrency and budget limits (never refusing). Default: the minimal
    /// config (no store, no limits).
    #[arg(long)]
    governed: bool,
    /// Keep the temp directory (configs, gateway and nginx logs).
    #[arg(long)]
    keep_tmp: bool,
    /// Run the soak under faults instead of the benchmark (docs/BENCHMARKS.md, "Soak under
    /// faults"); the `--soak-*` options shape it.
    #[arg(long)]
    soak: bool,
    #[command(flatten)]
    soak_args: soak::SoakArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Scenario {
    Fixed,
    Max,
    Stream,
    Memory,
    /// Streams that wait: the upstream sent headers and one event, then nothing.
    Waiting,
    /// The response cache: miss path, hits per tier, hit vs miss throughput (issue 10).
    Cache,
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.soak {
        return match soak::run(&args) {
            Ok(true) => ExitCode::SUCCESS,
            Ok(false) => ExitCode::from(2),
            Err(e) => {
                eprintln!("tollgate-bench --soak: {e:#}");
                ExitCode::from(1)
            }
        };
    }
    match run(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tollgate-bench: {e:#}");
            ExitCode::from(1)
        }
    }
}

fn run(args: Args) -> Result<()> {
    if args.runs == 0 {
        bail!("--runs must be at least 1");
    }
    if !args.gateway_bin.is_file() {
        bail!(
            "{} not found: build it first (cargo build --release --bins --features testkit) or pass --gateway-bin",
            args.gateway_bin.display()
        );
    }
    // The mock gets its own runtime (its own threads), so that the generator's tasks and the
    // mock's are scheduled apart, as they would be in two processes.
    let mock_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.mock_threads.max(1))
        .thread_name("mock")
        .enable_all()
        .build()
        .context("mock runtime")?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(args.client_threads.max(1))
        .thread_name("loadgen")
        .enable_all()
        .build()
        .context("load generator runtime")?;
    let mock = mock_rt
        .block_on(MockUpstream::start())
        .context("start the mock upstream")?;
    mock.set_recording(false);
    let result = rt.block_on(bench(&args, &mock));
    mock_rt.block_on(mock.shutdown());
    result
}

/// One target: its name and base URL (`http://host:port`).
struct Target {
    name: &'static str,
    base: String,
    /// The process to watch (memory, CPU): none for direct.
    pid: Option<u32>,
}

async fn bench(args: &Args, mock: &MockUpstream) -> Result<()> {
    let want = |t: &str| args.targets.iter().any(|x| x == t);
    let has = |s: Scenario| args.scenarios.contains(&s);
    let nginx_bin = if args.no_nginx || !want("nginx") {
        None
    } else {
        args.nginx_bin.clone().or_else(procs::find_nginx)
    };

    println!("# tollgate-bench");
    println!();
    for line in procs::machine() {
        println!("- {line}");
    }
    println!(
        "- command: {}",
        std::env::args().collect::<Vec<_>>().join(" ")
    );
    println!(
        "- gateway: {} ({} config)",
        args.gateway_bin.display(),
        if args.governed { "governed" } else { "minimal" }
    );
    match &nginx_bin {
        Some(b) => println!("- nginx: {} ({})", b.display(), procs::nginx_version(b)),
        None => println!("- nginx: not run (not installed, or --no-nginx)"),
    }
    println!(
        "- load: fixed {} req/s, max-throughput {} connections, {} s measured after {} s warm-up; \
         {} streams ({} at once, {} chunks {} ms apart); {} held streams ({} chunks {} ms apart); \
         {} runs, medians reported",
        args.rate,
        args.concurrency,
        args.duration,
        args.warmup,
        args.streams,
        args.stream_concurrency,
        args.stream_chunks,
        args.stream_chunk_delay_ms,
        args.mem_streams,
        args.mem_chunks,
        args.mem_chunk_delay_ms,
        args.runs
    );
    println!(
        "- threads: generator runtime {}, mock runtime {}, pacer 1; servers pinned to: {}",
        args.client_threads,
        args.mock_threads,
        args.server_cpus
            .as_deref()
            .unwrap_or("none (all share every CPU)")
    );
    println!("- load average at start: {:.2}", procs::loadavg());
    let need = (args.mem_streams as u64) * 3 + 512;
    match procs::nofile_soft_limit() {
        Some(n) if n < need => println!(
            "- WARNING: open files limit {n} < {need}: raise it (ulimit -n) or the held streams fail"
        ),
        Some(n) => println!("- open files limit: {n}"),
        None => {}
    }
    println!();

    let mut tmp = TempDir::new()?;
    tmp.keep = args.keep_tmp;
    let cache_tiers = has(Scenario::Cache).then(|| cache::tiers(&tmp.path, &args.cache_redis_url));
    let redis = cache_tiers.as_ref().is_some_and(|c| c.redis.is_some());
    let config = procs::write_gateway_config(
        &tmp.path,
        &mock.base_url(),
        args.governed,
        cache_tiers.as_ref(),
    )?;
    let payloads = Payloads::new(args.mem_chunks + 8);
    let clk = procs::clock_ticks();
    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    let mut res = Results::default();
    let t_all = Instant::now();

    for run in 0..args.runs {
        println!(
            "## run {}/{} (load average {:.2})",
            run + 1,
            args.runs,
            procs::loadavg()
        );
        let mut gateway = if want("tollgate") {
            let g = Gateway::start(
                &args.gateway_bin,
                &config,
                &tmp.path,
                run,
                args.server_cpus.as_deref(),
            )?;
            wait_healthy(&format!("http://{}", g.addr)).await?;
            println!("  tollgate pid {} listening on {}", g.proc.pid(), g.addr);
            Some(g)
        } else {
            None
        };
        let mut nginx = match &nginx_bin {
            Some(bin) => Some(Nginx::start(
                bin,
                &tmp.path,
                mock.addr(),
                args.nginx_workers,
                run,
                args.server_cpus.as_deref(),
            )?),
            None => None,
        };
        if let Some(n) = &nginx {
            println!(
                "  nginx pid {} listening on 127.0.0.1:{}",
                n.proc.pid(),
                n.port
            );
        }
        if let Some(g) = &gateway {
            if let Some(kib) = procs::status_kib(g.proc.pid(), "VmRSS") {
                res.record("RSS at start", "MiB", Better::Lower, "tollgate", mib(kib));
            }
        }
        let mut targets = Vec::new();
        if want("direct") {
            targets.push(Target {
                name: "direct",
                base: format!("http://{}", mock.addr()),
                pid: None,
            });
        }
        if let Some(n) = &nginx {
            targets.push(Target {
                name: "nginx",
                base: format!("http://127.0.0.1:{}", n.port),
                pid: Some(n.proc.pid()),
            });
        }
        if let Some(g) = &gateway {
            targets.push(Target {
                name: "tollgate",
                base: format!("http://{}", g.addr),
                pid: Some(g.proc.pid()),
            });
        }
        // Rotate the order from run to run so no target always goes first (or last).
        let len = targets.len().max(1);
        targets.rotate_left(run % len);

        // Warm-up: connections, allocator, lazy statics; then the idle memory figure.
        mock.set_chunks(None);
        mock.set_chunk_delay(Duration::ZERO);
        for t in &targets {
            let client = load::client()?;
            let url = load::chat_url(&t.base)?;
            let w = load::closed_loop(
                &client,
                &url,
                &payloads.plain,
                8,
                Duration::ZERO,
                Duration::from_secs(1),
            )
            .await?;
            let s = load::streams(&client, &url, &payloads.stream, 50, 10).await?;
            if w.errors.count + s.errors.count > 0 {
                bail!(
                    "{}: warm-up failed: {}",
                    t.name,
                    w.errors.first.or(s.errors.first).unwrap_or_default()
                );
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        for t in &targets {
            if let Some(kib) = t.pid.and_then(procs::tree_rss_kib) {
                res.record(
                    "RSS idle after warm-up",
                    "MiB",
                    Better::Lower,
                    t.name,
                    mib(kib),
                );
            }
        }

        if has(Scenario::Fixed) {
            let name = format!("fixed {}/s", args.rate);
            for t in &targets {
                let client = load::client()?;
                let url = load::chat_url(&t.base)?;
                let cpu0 = t.pid.and_then(procs::tree_cpu_ticks);
                let r =
                    load::fixed_rate(&client, &url, &payloads.plain, args.rate, warmup, duration)
                        .await?;
                let cpu1 = t.pid.and_then(procs::tree_cpu_ticks);
                let l = r.latency;
                println!(
                    "  {:<8} fixed  P50 {:.3} P90 {:.3} P99 {:.3} max {:.3} ms; {} sent, {} errors; \
                     start lag P50 {:.3} P99 {:.3} ms",
                    t.name, l.p50, l.p90, l.p99, l.max, r.sent, r.errors.count, r.start_lag.p50,
                    r.start_lag.p99
                );
                if let Some(e) = &r.errors.first {
                    println!("           first error: {e}");
                }
                res.record(&format!("{name} P50"), "ms", Better::Lower, t.name, l.p50);
                res.record(&format!("{name} P90"), "ms", Better::Lower, t.name, l.p90);
                res.record(&format!("{name} P99"), "ms", Better::Lower, t.name, l.p99);
                res.record(&format!("{name} max"), "ms", Better::Lower, t.name, l.max);
                res.record(
                    &format!("{name} errors"),
                    "count",
                    Better::Lower,
                    t.name,
                    r.errors.count as f64,
                );
                res.record(
                    &format!("{name} generator start lag P99"),
                    "ms",
                    Better::Lower,
                    t.name,
                    r.start_lag.p99,
                );
                if let (Some(a), Some(b)) = (cpu0, cpu1) {
                    let reqs = args.rate * (args.warmup + args.duration);
                    let us = (b - a) as f64 / clk * 1e6 / reqs;
                    res.record_cpu(&name, t.name, us);
                }
            }
        }

        if has(Scenario::Max) {
            let name = format!("max throughput, {} conns", args.concurrency);
            for t in &targets {
                let client = load::client()?;
                let url = load::chat_url(&t.base)?;
                let perf = match (&args.perf_out, t.name, run, t.pid) {
                    (Some(out), "tollgate", 0, Some(pid)) => {
                        start_perf(out, pid, warmup + duration)
                    }
                    _ => None,
                };
                let cpu0 = t.pid.and_then(procs::tree_cpu_ticks);
                let r = load::closed_loop(
                    &client,
                    &url,
                    &payloads.plain,
                    args.concurrency,
                    warmup,
                    duration,
                )
                .await?;
                let cpu1 = t.pid.and_then(procs::tree_cpu_ticks);
                if let Some(mut p) = perf {
                    let _ = tokio::task::spawn_blocking(move || p.wait()).await;
                }
                println!(
                    "  {:<8} max    {:.0} req/s; P50 {:.3} P99 {:.3} ms; {} errors",
                    t.name, r.rps, r.latency.p50, r.latency.p99, r.errors.count
                );
                if let Some(e) = &r.errors.first {
                    println!("           first error: {e}");
                }
                res.record(&name, "req/s", Better::Higher, t.name, r.rps);
                res.record(
                    &format!("{name} P50"),
                    "ms",
                    Better::Lower,
                    t.name,
                    r.latency.p50,
                );
                res.record(
                    &format!("{name} P99"),
                    "ms",
                    Better::Lower,
                    t.name,
                    r.latency.p99,
                );
                res.record(
                    &format!("{name} errors"),
                    "count",
                    Better::Lower,
                    t.name,
                    r.errors.count as f64,
                );
                if let (Some(a), Some(b)) = (cpu0, cpu1) {
                    let reqs = r.done_total.max(1) as f64;
                    let us = (b - a) as f64 / clk * 1e6 / reqs;
                    res.record_cpu(&name, t.name, us);
                }
            }
        }

        if has(Scenario::Stream) {
            mock.set_chunks(Some(args.stream_chunks));
            mock.set_chunk_delay(Duration::from_millis(args.stream_chunk_delay_ms));
            for t in &targets {
                let client = load::client()?;
                let url = load::chat_url(&t.base)?;
                // A few unrecorded streams first, at the same concurrency.
                let _ = load::streams(
                    &client,
                    &url,
                    &payloads.stream,
                    args.stream_concurrency,
                    args.stream_concurrency,
                )
                .await?;
                let r = load::streams(
                    &client,
                    &url,
                    &payloads.stream,
                    args.streams,
                    args.stream_concurrency,
                )
                .await?;
                println!(
                    "  {:<8} stream TTFB P50 {:.3} P99 {:.3} ms; whole stream P50 {:.1} ms; {} errors",
                    t.name, r.ttfb.p50, r.ttfb.p99, r.total.p50, r.errors.count
                );
                if let Some(e) = &r.errors.first {
                    println!("           first error: {e}");
                }
                res.record(
                    "stream first byte P50",
                    "ms",
                    Better::Lower,
                    t.name,
                    r.ttfb.p50,
                );
                res.record(
                    "stream first byte P99",
                    "ms",
                    Better::Lower,
                    t.name,
                    r.ttfb.p99,
                );
                res.record("stream whole P50", "ms", Better::Lower, t.name, r.total.p50);
                res.record(
                    "stream errors",
                    "count",
                    Better::Lower,
                    t.name,
                    r.errors.count as f64,
                );
                if args.stream_serial > 0 {
                    let r = load::streams(&client, &url, &payloads.stream, args.stream_serial, 1)
                        .await?;
                    println!(
                        "  {:<8} stream TTFB one at a time P50 {:.3} P99 {:.3} ms; {} errors",
                        t.name, r.ttfb.p50, r.ttfb.p99, r.errors.count
                    );
                    let (lo, n) = (Better::Lower, t.name);
                    res.record(
                        "stream first byte P50, one at a time",
                        "ms",
                        lo,
                        n,
                        r.ttfb.p50,
                    );
                    res.record(
                        "stream first byte P99, one at a time",
                        "ms",
                        lo,
                        n,
                        r.ttfb.p99,
                    );
                    let errs = r.errors.count as f64;
                    res.record("stream errors, one at a time", "count", lo, n, errs);
                }
            }
        }

        if has(Scenario::Memory) {
            mock.set_chunks(Some(args.mem_chunks));
            mock.set_chunk_delay(Duration::from_millis(args.mem_chunk_delay_ms));
            for t in &targets {
                let Some(pid) = t.pid else { continue };
                let url = load::chat_url(&t.base)?;
                let h = load::hold_streams(
                    &url,
                    &payloads.long_stream,
                    args.mem_streams,
                    128,
                    Duration::from_secs(30),
                    Duration::from_secs(2),
                    || procs::tree_rss_kib(pid),
                )
                .await?;
                println!(
                    "  {:<8} memory {} streams opened, {} still open after sampling; RSS peak {} MiB; {} errors",
                    t.name,
                    h.opened,
                    h.open_at_end,
                    h.peak.map(|k| format!("{:.1}", mib(k))).unwrap_or_else(|| "-".into()),
                    h.errors.count
                );
                if let Some(e) = &h.errors.first {
                    println!("           first error: {e}");
                }
                let name = format!("RSS with {} open streams", args.mem_streams);
                if let Some(k) = h.peak {
                    res.record(&name, "MiB", Better::Lower, t.name, mib(k));
                }
                res.record(
                    "streams held open",
                    "count",
                    Better::Higher,
                    t.name,
                    h.open_at_end as f64,
                );
            }
            mock.set_chunks(None);
            mock.set_chunk_delay(Duration::ZERO);
            tokio::time::sleep(Duration::from_secs(2)).await;
            for t in &targets {
                if let Some(kib) = t.pid.and_then(procs::tree_rss_kib) {
                    res.record(
                        "RSS idle after load",
                        "MiB",
                        Better::Lower,
                        t.name,
                        mib(kib),
                    );
                }
            }
        }
        mock.set_chunks(None);
        mock.set_chunk_delay(Duration::ZERO);
        if has(Scenario::Waiting) {
            waiting_streams(args, mock, &targets, &payloads, &mut res).await?;
        }
        if has(Scenario::Cache) {
            cache::run(args, &targets, redis, &mut res).await?;
        }
        if let Some(g) = &gateway {
            if let Some(kib) = procs::status_kib(g.proc.pid(), "VmHWM") {
                res.record(
                    "RSS peak (VmHWM)",
                    "MiB",
                    Better::Lower,
                    "tollgate",
                    mib(kib),
                );
            }
        }
        if let Some(g) = gateway.as_mut() {
            g.proc.stop(Duration::from_secs(10));
            println!("  gateway log: {}", g.log.display());
        }
        if let Some(n) = nginx.as_mut() {
            n.proc.stop(Duration::from_secs(10));
        }
        drop(gateway);
        drop(nginx);
        println!("  load average at end of run: {:.2}", procs::loadavg());
        println!();
    }

    println!(
        "## medians over {} runs ({:.0} s in all; load average now {:.2})",
        args.runs,
        t_all.elapsed().as_secs_f64(),
        procs::loadavg()
    );
    println!();
    print!("{}", res.table());
    println!();
    if args.scenarios.iter().any(|s| *s != Scenario::Cache) {
        verdicts(args, &res);
    }
    if has(Scenario::Cache) {
        cache::verdicts(args, &res);
    }
    if args.keep_tmp {
        println!();
        println!("temp files kept in {}", tmp.path.display());
    }
    Ok(())
}

/// The targets, read off the medians.
fn verdicts(args: &Args, res: &Results) {
    println!("## targets (tollgate minus direct, medians)");
    println!();
    let added = |name: &str| -> Option<f64> {
        Some(res.median(name, "tollgate")? - res.median(name, "direct")?)
    };
    let added_nginx = |name: &str| -> Option<f64> {
        Some(res.median(name, "nginx")? - res.median(name, "direct")?)
    };
    let line = |what: &str, v: Option<f64>, limit: f64, unit: &str, reference: Option<f64>| {
        let reference = reference
            .map(|r| format!(" (nginx adds {r:.3} {unit})"))
            .unwrap_or_default();
        match v {
            Some(v) => println!(
                "- {what}: {v:.3} {unit}, target < {limit} {unit}: {}{reference}",
                if v < limit { "MET" } else { "NOT MET" }
            ),
            None => println!("- {what}: not measured"),
        }
    };
    let fixed = format!("fixed {}/s", args.rate);
    line(
        &format!("added P50 at {} req/s", args.rate),
        added(&format!("{fixed} P50")),
        0.3,
        "ms",
        added_nginx(&format!("{fixed} P50")),
    );
    line(
        &format!("added P99 at {} req/s", args.rate),
        added(&format!("{fixed} P99")),
        2.0,
        "ms",
        added_nginx(&format!("{fixed} P99")),
    );
    let conc = args.stream_concurrency;
    for (what, name) in [
        (
            format!("added stream first byte P50, {conc} at once"),
            "stream first byte P50",
        ),
        (
            format!("added stream first byte P99, {conc} at once"),
            "stream first byte P99",
        ),
        (
            "added stream first byte P50, one at a time".into(),
            "stream first byte P50, one at a time",
        ),
        (
            "added stream first byte P99, one at a time".into(),
            "stream first byte P99, one at a time",
        ),
    ] {
        line(&what, added(name), 1.0, "ms", added_nginx(name));
    }
    line(
        "idle resident memory (after warm-up)",
        res.median("RSS idle after warm-up", "tollgate"),
        30.0,
        "MiB",
        None,
    );
    let name = format!("max throughput, {} conns", args.concurrency);
    if let (Some(t), Some(d)) = (res.median(&name, "tollgate"), res.median(&name, "direct")) {
        let n = res
            .median(&name, "nginx")
            .map(|n| format!(", nginx {n:.0} req/s ({:.2}x direct)", n / d))
            .unwrap_or_default();
        println!(
            "- max throughput: tollgate {t:.0} req/s = {:.2}x direct ({d:.0} req/s){n} (no target set)",
            t / d
        );
    }
    line(
        "resident memory per waiting stream",
        res.median("RSS per waiting stream", "tollgate"),
        20.0,
        "KiB",
        res.median("RSS per waiting stream", "nginx"),
    );
    let mem = format!("RSS with {} open streams", args.mem_streams);
    if let Some(m) = res.median(&mem, "tollgate") {
        println!(
            "- resident memory with {} open streams: {m:.1} MiB (no target set)",
            args.mem_streams
        );
    }
}

/// The waiting scenario: `--mem-streams` streams held open against an upstream that sent its
/// headers and first event and then waits (the mock's `StallAfterChunks(1)`). Records the RSS
/// just before they open, its peak while they are open, and the difference per stream (KiB).
/// Run it alone (`--scenarios waiting`): memory freed by earlier scenarios would be reused and
/// flatter the figure.
async fn waiting_streams(
    args: &Args,
    mock: &MockUpstream,
    targets: &[Target],
    payloads: &Payloads,
    res: &mut Results,
) -> Result<()> {
    mock.set_default_fault(Some(tollgate::testkit::Fault::StallAfterChunks(1)));
    let n = args.mem_streams;
    for t in targets {
        let Some(pid) = t.pid else { continue };
        let url = load::chat_url(&t.base)?;
        let Some(before) = procs::tree_rss_kib(pid) else {
            continue;
        };
        let h = load::hold_streams(
            &url,
            &payloads.stream,
            n,
            128,
            Duration::from_secs(30),
            Duration::from_secs(2),
            || procs::tree_rss_kib(pid),
        )
        .await?;
        let per = h
            .peak
            .filter(|_| h.opened > 0)
            .map(|p| p.saturating_sub(before) as f64 / h.opened as f64);
        println!(
            "  {:<8} waiting {} streams opened, {} still open after sampling; RSS {:.1} -> peak {} MiB = {} KiB per stream; {} errors",
            t.name,
            h.opened,
            h.open_at_end,
            mib(before),
            h.peak.map(|k| format!("{:.1}", mib(k))).unwrap_or_else(|| "-".into()),
            per.map(|k| format!("{k:.1}")).unwrap_or_else(|| "-".into()),
            h.errors.count
        );
        if let Some(e) = &h.errors.first {
            println!("           first error: {e}");
        }
        let lo = Better::Lower;
        res.record("RSS before waiting streams", "MiB", lo, t.name, mib(before));
        if let Some(k) = h.peak {
            let name = format!("RSS with {n} waiting streams");
            res.record(&name, "MiB", lo, t.name, mib(k));
        }
        if let Some(k) = per {
            res.record("RSS per waiting stream", "KiB", lo, t.name, k);
        }
        let held = h.open_at_end as f64;
        res.record(
            "waiting streams held open",
            "count",
            Better::Higher,
            t.name,
            held,
        );
    }
    mock.set_default_fault(None);
    Ok(())
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Poll `GET base/health` until it answers 200 (10 s at most).
async fn wait_healthy(base: &str) -> Result<()> {
    let client = load::client()?;
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(r) = client.get(format!("{base}/health")).send().await {
            if r.status().is_success() {
                return Ok(());
            }
        }
        if Instant::now() > until {
            bail!("{base}/health did not answer 200 in 10 s");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// `perf record -F 999 -g -p PID -o OUT -- sleep SECS`, if perf is installed.
fn start_perf(out: &Path, pid: u32, d: Duration) -> Option<std::process::Child> {
    let child = Command::new("perf")
        .args(["record", "-F", "999", "-g", "-p", &pid.to_string(), "-o"])
        .arg(out)
        .args(["--", "sleep", &format!("{:.1}", d.as_secs_f64())])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    match child {
        Ok(c) => {
            println!("  perf recording the gateway to {}", out.display());
            Some(c)
        }
        Err(e) => {
            println!("  perf not started: {e}");
            None
        }
    }
}
