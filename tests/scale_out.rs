//! Scale-out proof with two real Tollgate processes on different ports sharing one Redis (limits)
//! and one PostgreSQL (keys, usage): a team limit is enforced across both, a key revoked through
//! one is refused by the other within 5 s, and the spend adds up exactly twice over: in the
//! usage rows both write to the store, and in the team's spend counter both add to in Redis.

mod common;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{chat, cost_nanos, sha256_hex, PgDb, ADMIN_KEY};
use futures_util::{stream, StreamExt};
use serde_json::{json, Value};
use tollgate::limits::budget::{period_tag, unix_now};
use tollgate::limits::redis::RedisLimiter;
use tollgate::limits::{BudgetPeriod, Scope};

/// A gateway process, killed if the test panics.
struct Proc {
    child: Option<Child>,
    addr: String,
}

impl Proc {
    async fn start(config: &Path, dir: &Path, name: &str, redis_url: &str) -> Proc {
        let addr_file = dir.join(format!("{name}.addr"));
        let log = std::fs::File::create(dir.join(format!("{name}.log")))
            .unwrap_or_else(|e| panic!("{e}"));
        let child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .arg("serve")
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0", "--addr-file"])
            .arg(&addr_file)
            .env("TG_REDIS_URL", redis_url)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start tollgate: {e}"));
        let mut proc = Proc {
            child: Some(child),
            addr: String::new(),
        };
        // The address file appearing has no event to await: poll it, bounded.
        for _ in 0..300 {
            if let Ok(a) = std::fs::read_to_string(&addr_file) {
                if !a.is_empty() {
                    proc.addr = a;
                    return proc;
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let logs = std::fs::read_to_string(dir.join(format!("{name}.log"))).unwrap_or_default();
        panic!("{name} did not start:\n{logs}");
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGTERM and wait for a clean exit.
    fn stop(mut self) -> bool {
        let Some(mut child) = self.child.take() else {
            return false;
        };
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        for _ in 0..200 {
            if let Ok(Some(status)) = child.try_wait() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = child.kill();
        false
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

async fn admin(client: &reqwest::Client, p: &Proc, method: &str, path: &str, body: Value) -> Value {
    let req = match method {
        "POST" => client.post(p.url(path)).json(&body),
        _ => client.get(p.url(path)),
    };
    let resp = req
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    resp.json().await.unwrap_or(Value::Null)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_limits_keys_and_spend() {
    let db = PgDb::create().await;
    let redis_url = std::env::var("TOLLGATE_TEST_REDIS_URL")
        .unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let prefix = format!("tg-scale-{}:", uuid::Uuid::new_v4().simple());
    let config = format!(
        r#"
upstreams:
  mock: {{ provider: mock, mock: {{ chunks: 2 }} }}
models:
  mock-gpt: {{ targets: [ {{ upstream: mock }} ] }}
teams:
  shared: {{ models: ["*"], requests_per_minute: 600 }}
admin:
  sha256: {admin}
store:
  url: "{url}"
  key_cache_ttl: 1s
  usage: {{ batch_interval: 20ms, spill_path: "{spill}" }}
limits:
  backend: redis
  redis_url: ${{TG_REDIS_URL}}
  redis_prefix: "{prefix}"
  # A slow machine must not turn a slow Redis into admissions without limits (fail_open):
  # Redis gets all the time it needs, and a failure would show as a 503.
  redis_timeout: 10s
  on_backend_error: fail_closed
"#,
        admin = sha256_hex(ADMIN_KEY),
        url = db.url,
        spill = dir.path().join("spill.jsonl").display(),
    );
    let config_path = dir.path().join("tollgate.yaml");
    std::fs::write(&config_path, config).unwrap_or_else(|e| panic!("{e}"));
    let a = Proc::start(&config_path, dir.path(), "a", &redis_url).await;
    let b = Proc::start(&config_path, dir.path(), "b", &redis_url).await;
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(64)
        .timeout(Duration::from_secs(30))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));

    // A key made through replica A.
    let created = admin(
        &client,
        &a,
        "POST",
        "/admin/keys",
        json!({"team": "shared", "name": "load"}),
    )
    .await;
    let key = created["key"].as_str().unwrap_or_default().to_owned();
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    assert!(key.starts_with("sk-tg-"), "{created}");

    // 900 requests spread over both replicas against a team limit of 600/min.
    let procs = Arc::new([a, b]);
    let started = Instant::now();
    let results: Vec<(u16, Value)> = stream::iter(0..900usize)
        .map(|i| {
            let (client, procs, key) = (client.clone(), procs.clone(), key.clone());
            async move {
                let p = &procs[i % 2];
                let r = client
                    .post(p.url("/v1/chat/completions"))
                    .bearer_auth(&key)
                    .json(&chat("mock-gpt", "spread the load", false))
                    .send()
                    .await;
                match r {
                    Ok(r) => {
                        let s = r.status().as_u16();
                        (s, r.json::<Value>().await.unwrap_or(Value::Null))
                    }
                    Err(_) => (0, Value::Null),
                }
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    let elapsed = started.elapsed().as_secs_f64();
    let admitted = results.iter().filter(|(s, _)| *s == 200).count();
    let refused = results.iter().filter(|(s, _)| *s == 429).count();
    println!(
        "scale-out: admitted {admitted}, refused {refused} of 900 in {elapsed:.2}s across two processes (limit 600/min)"
    );
    assert_eq!(admitted + refused, 900, "only 200 or 429 expected");
    // The ceiling below grows with the elapsed time (10 per second): bounded as in
    // tests/limits.rs, so a slow run cannot make it admit anything (20 s would allow 801).
    assert!(
        elapsed < 20.0,
        "too slow for the ceiling to mean anything: {elapsed:.2}s"
    );
    // The limit refills at 10/s while the load runs: allow exactly that on top of 600.
    let ceiling = 600 + (elapsed * 10.0).ceil() as usize + 1;
    assert!(
        (600..=ceiling).contains(&admitted),
        "admitted {admitted}, allowed 600..={ceiling}"
    );
    if elapsed < 3.0 {
        assert!((570..=630).contains(&admitted), "600 ± 5%: {admitted}");
    }

    // Spend in the store: what the clients were told they used, priced, equals the cost of the
    // usage rows both replicas wrote.
    let expected: f64 = results
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, v)| {
            let p = v["usage"]["prompt_tokens"].as_f64().unwrap_or(0.0);
            let c = v["usage"]["completion_tokens"].as_f64().unwrap_or(0.0);
            (p * 1.00 + c * 2.00) / 1e6
        })
        .sum();
    let mut recorded = Value::Null;
    for _ in 0..100 {
        recorded = admin(
            &client,
            &procs[1],
            "GET",
            "/admin/usage?team=shared",
            Value::Null,
        )
        .await;
        if recorded["totals"]["requests"].as_u64() == Some(900) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(recorded["totals"]["requests"], 900, "{recorded}");
    let cost = recorded["totals"]["cost_usd"].as_f64().unwrap_or(-1.0);
    println!("scale-out: spend expected {expected:.9} USD, in the store's rows {cost:.9} USD");
    assert!(
        (cost - expected).abs() < 1e-9,
        "expected {expected}, recorded {cost}"
    );

    // Revoke through A; B refuses the key within 5 s.
    let revoked = admin(
        &client,
        &procs[0],
        "POST",
        &format!("/admin/keys/{id}/revoke"),
        json!({}),
    )
    .await;
    assert!(revoked.get("error").is_none(), "{revoked}");
    let t0 = Instant::now();
    let mut refused_after = None;
    while t0.elapsed() < Duration::from_secs(6) {
        let s = client
            .get(procs[1].url("/v1/models"))
            .bearer_auth(&key)
            .send()
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        if s == 401 {
            refused_after = Some(t0.elapsed());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    println!("scale-out: revoked on A, refused by B after {refused_after:?}");
    assert!(refused_after.is_some_and(|d| d <= Duration::from_secs(5)));

    let Ok([a, b]) = Arc::try_unwrap(procs) else {
        panic!("processes still shared");
    };
    assert!(a.stop() && b.stop(), "both exit 0 on SIGTERM");

    // Spend in the limiter: the team's counter in Redis, which both replicas add to when a
    // request settles (every settlement has run once they exited), is the same sum in
    // nano-dollars, exactly.
    let want: u64 = results
        .iter()
        .filter(|(s, _)| *s == 200)
        .map(|(_, v)| cost_nanos(v))
        .sum();
    let counter = limiter_spend(&redis_url, &prefix, "shared").await;
    println!("scale-out: spend expected {want} nano-USD, in the limiter's counter {counter}");
    assert_eq!(counter, want, "the team's spend counter in Redis");
}

/// The team's spend counter of the current month in Redis, nano-dollars, read with the limiter's
/// own code.
async fn limiter_spend(redis_url: &str, prefix: &str, team: &str) -> u64 {
    let limiter = RedisLimiter::new(
        redis_url,
        prefix,
        Duration::from_secs(5),
        Duration::from_secs(60),
    )
    .unwrap_or_else(|e| panic!("redis limiter: {e}"));
    let tag = period_tag(BudgetPeriod::Monthly, unix_now());
    limiter
        .spend(Scope::Team, team, &tag)
        .await
        .unwrap_or_else(|e| panic!("read spend: {}", e.0))
}
