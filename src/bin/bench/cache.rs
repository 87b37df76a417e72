//! The `cache` scenario (issue 10): what the response cache costs on a miss and what a hit
//! costs from each tier, against the same mock upstream.
//!
//! The gateway serves three cached models, one tier each ([`CACHE_MEMORY`], [`CACHE_DISK`],
//! [`CACHE_REDIS`]; see `procs::write_gateway_config`). Measured per run, with the load code of
//! the other scenarios: an open loop at `--cache-rate` of unique requests (each a miss on the
//! memory model) to the gateway and straight to the mock (the miss path's added latency); the same
//! rate of one deterministic request (`temperature: 0`) repeated, once primed, per tier; a closed
//! loop of hits (memory) and of misses for throughput. Every hit figure is checked to be a hit of
//! the right tier (`x-tollgate-cache`, `x-tollgate-cache-tier`) before and after it is measured.

use std::io::{Read, Write};
use std::net::{TcpStream, ToSocketAddrs};
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use bytes::Bytes;
use reqwest::{Client, Url};
use serde_json::json;

use super::load::{self, Body};
use super::procs::{self, CacheTiers, CACHE_DISK, CACHE_MEMORY, CACHE_REDIS};
use super::report::{Better, Results};
use super::{Args, Target};

/// The cache scenario's tiers: the disk file in `dir`, and Redis at `redis_url` under a key prefix
/// of this run when it answers PING (else a printed note, and no Redis model).
pub fn tiers(dir: &Path, redis_url: &str) -> CacheTiers {
    let redis = match redis_ping(redis_url) {
        Ok(()) => {
            let prefix = format!("tollgate-bench:{}-{}:", std::process::id(), stamp());
            println!("- cache: Redis tier at {redis_url}, key prefix {prefix}");
            Some((redis_url.to_owned(), prefix))
        }
        Err(e) => {
            println!("- cache: Redis at {redis_url} unreachable ({e}): Redis tier not measured");
            None
        }
    };
    CacheTiers {
        disk_path: dir.join("cache.db"),
        redis,
    }
}

/// `PING` over a plain TCP connection to the URL's host and port (1 s at most).
fn redis_ping(url: &str) -> Result<()> {
    let rest = url
        .strip_prefix("redis://")
        .ok_or_else(|| anyhow::anyhow!("not a redis:// URL"))?;
    let hostport = rest.split(['/', '?']).next().unwrap_or(rest);
    let hostport = hostport.rsplit('@').next().unwrap_or(hostport);
    let hostport = if hostport.contains(':') {
        hostport.to_owned()
    } else {
        format!("{hostport}:6379")
    };
    let Some(addr) = hostport.to_socket_addrs()?.next() else {
        bail!("{hostport} does not resolve");
    };
    let t = Duration::from_secs(1);
    let mut s = TcpStream::connect_timeout(&addr, t)?;
    s.set_read_timeout(Some(t))?;
    s.write_all(b"PING\r\n")?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf)?;
    if !buf[..n].starts_with(b"+PONG") {
        bail!("PING answered {:?}", String::from_utf8_lossy(&buf[..n]));
    }
    Ok(())
}

fn stamp() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// A deterministic (cacheable) chat request to `model` asking `content`.
fn body(model: &str, content: &str) -> Bytes {
    let v = json!({
        "model": model,
        "messages": [
            {"role": "system", "content": "You are terse."},
            {"role": "user", "content": content},
        ],
        "temperature": 0,
    });
    Bytes::from(v.to_string())
}

const QUESTION: &str = "Summarise in one sentence why a gateway should answer a repeated \
                        question from its cache.";

/// The same request every time (a hit once primed).
fn same(model: &str) -> Bytes {
    body(model, QUESTION)
}

/// Request i asks a question no earlier request of this process asked (each a miss).
fn unique(model: &str) -> Body {
    let (model, tag) = (model.to_owned(), stamp());
    Body::Each(Arc::new(move |i| {
        body(&model, &format!("{QUESTION} (request {tag}-{i})"))
    }))
}

/// One request: its (`x-tollgate-cache`, `x-tollgate-cache-tier`) headers.
async fn cache_headers(client: &Client, url: &Url, body: &Bytes) -> Result<(String, String)> {
    let resp = load::post(client, url, body).send().await?;
    let status = resp.status();
    let h = |n: &str| {
        resp.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("-")
            .to_owned()
    };
    let got = (h("x-tollgate-cache"), h("x-tollgate-cache-tier"));
    let _ = resp.bytes().await?;
    if !status.is_success() {
        bail!("status {status}");
    }
    Ok(got)
}

/// Send `body` until it is a hit from `tier` (the disk and Redis writes are queued): 10 s at most.
async fn prime(client: &Client, url: &Url, body: &Bytes, tier: &str) -> Result<()> {
    let until = Instant::now() + Duration::from_secs(10);
    loop {
        let (cache, got) = cache_headers(client, url, body).await?;
        if cache == "hit" && got == tier {
            return Ok(());
        }
        if Instant::now() > until {
            bail!("no {tier} hit in 10 s (last answer: x-tollgate-cache {cache}, tier {got})");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// One run of the scenario against every target (the hits only against tollgate).
pub async fn run(args: &Args, targets: &[Target], redis: bool, res: &mut Results) -> Result<()> {
    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    let rate = args.cache_rate;
    let conc = args.concurrency;
    let (lo, hi) = (Better::Lower, Better::Higher);
    for t in targets {
        let client = load::client()?;
        let url = load::chat_url(&t.base)?;
        let gateway = t.name == "tollgate";
        if gateway {
            let b = unique(CACHE_MEMORY);
            let (cache, _) = cache_headers(&client, &url, &load_body(&b)).await?;
            if cache != "miss" {
                bail!("a unique request was not a miss (x-tollgate-cache {cache})");
            }
        }
        let r =
            load::fixed_rate(&client, &url, unique(CACHE_MEMORY), rate, warmup, duration).await?;
        let l = r.latency;
        println!(
            "  {:<8} cache miss {rate}/s P50 {:.3} P99 {:.3} ms; {} sent, {} errors",
            t.name, l.p50, l.p99, r.sent, r.errors.count
        );
        print_first(&r.errors.first);
        res.record(&format!("cache miss {rate}/s P50"), "ms", lo, t.name, l.p50);
        res.record(&format!("cache miss {rate}/s P99"), "ms", lo, t.name, l.p99);
        res.record(
            "cache miss errors",
            "count",
            lo,
            t.name,
            r.errors.count as f64,
        );
        let cpu0 = t.pid.and_then(procs::tree_cpu_ticks);
        let c =
            load::closed_loop(&client, &url, unique(CACHE_MEMORY), conc, warmup, duration).await?;
        record_cpu(res, "cache max misses", t, cpu0, c.done_total);
        println!(
            "  {:<8} cache max misses {:.0} req/s, P50 {:.3} P99 {:.3} ms; {} errors",
            t.name, c.rps, c.latency.p50, c.latency.p99, c.errors.count
        );
        print_first(&c.errors.first);
        res.record(
            &format!("cache max misses, {conc} conns"),
            "req/s",
            hi,
            t.name,
            c.rps,
        );
        if gateway {
            hits(args, &client, &url, t, redis, res).await?;
        }
    }
    Ok(())
}

/// Against the gateway: hit latency per tier at `--cache-rate`, then memory-hit throughput.
async fn hits(
    args: &Args,
    client: &Client,
    url: &Url,
    t: &Target,
    redis: bool,
    res: &mut Results,
) -> Result<()> {
    let warmup = Duration::from_secs_f64(args.warmup);
    let duration = Duration::from_secs_f64(args.duration);
    let (rate, conc) = (args.cache_rate, args.concurrency);
    let (lo, hi) = (Better::Lower, Better::Higher);
    let mut tiers = vec![("memory", CACHE_MEMORY), ("disk", CACHE_DISK)];
    if redis {
        tiers.push(("redis", CACHE_REDIS));
    }
    for (tier, model) in tiers {
        let b = same(model);
        prime(client, url, &b, tier).await?;
        let r = load::fixed_rate(client, url, &b, rate, warmup, duration).await?;
        let (cache, got) = cache_headers(client, url, &b).await?;
        let l = r.latency;
        println!(
            "  {:<8} cache {tier} hit {rate}/s P50 {:.3} P99 {:.3} ms; {} sent, {} errors; \
             after: {cache} from {got}",
            t.name, l.p50, l.p99, r.sent, r.errors.count
        );
        print_first(&r.errors.first);
        if cache != "hit" || got != tier {
            println!("           WARNING: not a {tier} hit after the measurement");
        }
        let name = format!("cache {tier} hit {rate}/s");
        res.record(&format!("{name} P50"), "ms", lo, t.name, l.p50);
        res.record(&format!("{name} P99"), "ms", lo, t.name, l.p99);
        res.record(
            &format!("{name} errors"),
            "count",
            lo,
            t.name,
            r.errors.count as f64,
        );
    }
    let b = same(CACHE_MEMORY);
    prime(client, url, &b, "memory").await?;
    let cpu0 = t.pid.and_then(procs::tree_cpu_ticks);
    let c = load::closed_loop(client, url, &b, conc, warmup, duration).await?;
    record_cpu(res, "cache max memory hits", t, cpu0, c.done_total);
    println!(
        "  {:<8} cache max memory hits {:.0} req/s, P50 {:.3} P99 {:.3} ms; {} errors",
        t.name, c.rps, c.latency.p50, c.latency.p99, c.errors.count
    );
    print_first(&c.errors.first);
    res.record(
        &format!("cache max memory hits, {conc} conns"),
        "req/s",
        hi,
        t.name,
        c.rps,
    );
    Ok(())
}

/// The target's CPU time per request since `cpu0` (µs), as the `max` scenario records it: the
/// gateway's capacity on its core, whatever the generator (sharing the other CPU with the mock)
/// can send.
fn record_cpu(res: &mut Results, name: &str, t: &Target, cpu0: Option<u64>, done: usize) {
    let cpu1 = t.pid.and_then(procs::tree_cpu_ticks);
    if let (Some(a), Some(b)) = (cpu0, cpu1) {
        let us = b.saturating_sub(a) as f64 / procs::clock_ticks() * 1e6 / done.max(1) as f64;
        println!("  {:<8} {name}: server CPU {us:.1} µs/request", t.name);
        res.record_cpu(name, t.name, us);
    }
}

/// The first request of a `unique` body (for the miss check).
fn load_body(b: &Body) -> Bytes {
    match b {
        Body::Same(b) => b.clone(),
        Body::Each(f) => f(u64::MAX),
    }
}

fn print_first(e: &Option<String>) {
    if let Some(e) = e {
        println!("           first error: {e}");
    }
}

/// The targets, read off the medians.
pub fn verdicts(args: &Args, res: &Results) {
    let rate = args.cache_rate;
    let conc = args.concurrency;
    println!();
    println!("## response cache targets (medians; gateway on the pinned CPUs)");
    println!();
    let m = |name: &str, t: &str| res.median(name, t);
    let verdict = |ok: bool| if ok { "MET" } else { "NOT MET" };
    for p in ["P50", "P99"] {
        let miss = format!("cache miss {rate}/s {p}");
        let hit = format!("cache memory hit {rate}/s {p}");
        match (
            m(&miss, "tollgate"),
            m(&miss, "direct"),
            m(&hit, "tollgate"),
        ) {
            (Some(g), Some(d), Some(h)) => println!(
                "- memory hit {p} {h:.3} ms <= miss path's added {p} {:.3} ms \
                 (miss {g:.3} - direct {d:.3}): {}",
                g - d,
                verdict(h <= g - d)
            ),
            _ => println!("- memory hit {p} vs miss path's added {p}: not measured"),
        }
        // Like for like: both sides minus the same direct round trip.
        if let (Some(g), Some(d), Some(h)) = (
            m(&miss, "tollgate"),
            m(&miss, "direct"),
            m(&hit, "tollgate"),
        ) {
            println!(
                "  (like for like: memory hit minus direct {p} {:.3} ms vs miss minus direct {:.3} ms)",
                h - d,
                g - d
            );
        }
    }
    let p99 = |tier: &str| m(&format!("cache {tier} hit {rate}/s P99"), "tollgate");
    match (p99("redis"), p99("memory")) {
        (Some(r), Some(mem)) => println!(
            "- Redis hit P99 {r:.3} ms < memory hit P99 {mem:.3} + 1 ms: {}",
            verdict(r < mem + 1.0)
        ),
        _ => println!("- Redis hit P99: not measured"),
    }
    match (
        p99("disk"),
        m(&format!("cache disk hit {rate}/s P50"), "tollgate"),
    ) {
        (Some(d), Some(p50)) => println!(
            "- disk hit P99 {d:.3} ms (P50 {p50:.3}) < 2 ms: {}",
            verdict(d < 2.0)
        ),
        _ => println!("- disk hit: not measured"),
    }
    let hits = m(&format!("cache max memory hits, {conc} conns"), "tollgate");
    let misses = m(&format!("cache max misses, {conc} conns"), "tollgate");
    match (hits, misses) {
        (Some(h), Some(mi)) if mi > 0.0 => println!(
            "- hit throughput {h:.0} req/s >= 2x miss throughput {mi:.0} req/s ({:.2}x): {}",
            h / mi,
            verdict(h >= 2.0 * mi)
        ),
        _ => println!("- hit vs miss throughput: not measured"),
    }
    let cpu = |n: &str| m(&format!("cache max {n} server CPU"), "tollgate");
    if let (Some(h), Some(mi)) = (cpu("memory hits"), cpu("misses")) {
        println!(
            "  (gateway CPU per request: hit {h:.1} µs, miss {mi:.1} µs: a core serves {:.2}x \
             as many hits as misses)",
            mi / h
        );
    }
}
