//! What the limiter adds to a request: the admit step plus settlement, memory vs Redis.
//!
//! ```text
//! cargo run --release --example limiter_bench -- [memory|redis|both] [seconds] [redis-url]
//! ```
//!
//! For each backend: an open loop at 1,000 admissions/s for `seconds` (default 5), then a closed
//! loop at the maximum rate with 1 and with 32 concurrent callers. For Redis, a bare PING at
//! 1,000/s first gives the machine's floor. Each sample is one
//! `Limiter::admit` plus dropping the `Admission` (which settles: inline for memory, a spawned
//! script call for Redis, off the request's path but loading Redis all the same). The caller has
//! every limit set on both its key and its team (rpm, tpm, concurrency, budget), high enough
//! never to refuse, so every sample runs the full check-and-charge of two scopes.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::auth::Caller;
use tollgate::config::Config;
use tollgate::limits::{Estimate, Limiter, Limits};

const BASE: &str = r#"
upstreams:
  m: { provider: mock }
models:
  mock-gpt: { targets: [ { upstream: m } ] }
teams:
  t: { models: ["*"] }
"#;

fn limiter(backend: &str, redis_url: &str) -> Limiter {
    let limits = match backend {
        "redis" => format!(
            "limits: {{ backend: redis, redis_url: \"{redis_url}\", redis_prefix: \"bench-{:x}:\", \
             redis_timeout: 1s }}",
            rand::random::<u32>()
        ),
        _ => "limits: { backend: memory }".to_owned(),
    };
    let cfg =
        Config::parse(&format!("{BASE}{limits}\n")).unwrap_or_else(|e| panic!("bench config: {e}"));
    Limiter::from_config(&cfg, &std::collections::HashMap::new())
        .unwrap_or_else(|e| panic!("limiter: {e}"))
}

fn caller(i: usize) -> Caller {
    let all = Limits {
        requests_per_minute: Some(1_000_000_000),
        tokens_per_minute: Some(1_000_000_000_000),
        max_concurrent: Some(1_000_000),
        budget: Some(tollgate::limits::Budget {
            amount_usd: 1e8,
            period: tollgate::limits::BudgetPeriod::Monthly,
        }),
    };
    Caller {
        key_id: Arc::from(format!("key-{}", i % 16)),
        team: Arc::from("team"),
        key_limits: all,
        team_limits: all,
        ..Caller::default()
    }
}

async fn one(l: &Limiter, c: &Caller, est: &Estimate) -> Duration {
    let t = Instant::now();
    match l.admit(c.subject(), est).await {
        Ok(a) => drop(a),
        Err(e) => panic!("refused in the bench: {e}"),
    }
    t.elapsed()
}

fn report(name: &str, mut samples: Vec<Duration>, wall: Duration) {
    samples.sort();
    let q = |p: f64| {
        let i = ((samples.len() as f64 * p).ceil() as usize).clamp(1, samples.len()) - 1;
        samples[i].as_secs_f64() * 1e6
    };
    println!(
        "{name:<34} n={:<7} rate={:>9.0}/s  p50={:>8.1}us  p99={:>8.1}us  p99.9={:>8.1}us  max={:>8.1}us",
        samples.len(),
        samples.len() as f64 / wall.as_secs_f64(),
        q(0.50),
        q(0.99),
        q(0.999),
        q(1.0),
    );
}

async fn run(backend: &str, secs: u64, redis_url: &str) {
    let l = Arc::new(limiter(backend, redis_url));
    let est = Estimate {
        prompt_tokens: 200,
        completion_tokens: 256,
        price: l.prices().get("mock-gpt"),
    };
    // Warm up (connect, load the scripts, fill the maps).
    for i in 0..2000 {
        one(&l, &caller(i), &est).await;
    }

    // Open loop: one admission every millisecond.
    let n = (secs * 1000) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        tick.tick().await;
        samples.push(one(&l, &caller(i), &est).await);
    }
    report(&format!("{backend} @1000/s"), samples, start.elapsed());

    // Closed loops at the maximum rate.
    for conc in [1usize, 32] {
        let per = (n * 4 / conc).max(1000);
        let start = Instant::now();
        let mut tasks = Vec::new();
        for w in 0..conc {
            let l = l.clone();
            let est = est.clone();
            tasks.push(tokio::spawn(async move {
                let mut s = Vec::with_capacity(per);
                for i in 0..per {
                    s.push(one(&l, &caller(w * per + i), &est).await);
                }
                s
            }));
        }
        let mut all = Vec::new();
        for t in tasks {
            all.extend(t.await.unwrap_or_default());
        }
        report(
            &format!("{backend} max rate, {conc} concurrent"),
            all,
            start.elapsed(),
        );
    }
    // Let spawned Redis settlements finish before the next backend.
    tokio::time::sleep(Duration::from_millis(500)).await;
}

/// The floor on this machine: a bare Redis PING round trip at 1,000/s on the same client.
async fn baseline(secs: u64, url: &str) {
    let client = redis::Client::open(url).unwrap_or_else(|e| panic!("{e}"));
    let mut conn = redis::aio::ConnectionManager::new(client)
        .await
        .unwrap_or_else(|e| panic!("redis: {e}"));
    let n = (secs * 1000) as usize;
    let mut tick = tokio::time::interval(Duration::from_millis(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut samples = Vec::with_capacity(n);
    let start = Instant::now();
    for _ in 0..n {
        tick.tick().await;
        let t = Instant::now();
        let _: Result<String, _> = redis::cmd("PING").query_async(&mut conn).await;
        samples.push(t.elapsed());
    }
    report("baseline: redis PING @1000/s", samples, start.elapsed());
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let which = args.first().map(String::as_str).unwrap_or("both");
    let secs: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(5);
    let url = args
        .get(2)
        .cloned()
        .or_else(|| std::env::var("TOLLGATE_TEST_REDIS_URL").ok())
        .unwrap_or_else(|| "redis://127.0.0.1:6379".into());
    if which == "memory" || which == "both" {
        run("memory", secs, &url).await;
    }
    if which == "redis" || which == "both" {
        baseline(secs, &url).await;
        run("redis", secs, &url).await;
    }
}
