//! Soak run for self-renewing credentials: the gateway in process, the test kit's mock OAuth2
//! server handing out 2-s tokens and a mock upstream that rejects expired or revoked tokens, with
//! 64 concurrent clients (half streaming) for `SOAK_SECS` seconds (default 60).
//!
//! ```text
//! cargo run --release --example credential_soak            # 60 s
//! SOAK_SECS=20 SOAK_CLIENTS=32 cargo run --release --example credential_soak
//! ```
//!
//! Prints requests, failures, token requests (expected about 1 + duration / 1.5 s) and expired
//! tokens seen upstream; exits 1 if any client request failed (a stream counts as a success only
//! if it ends with `[DONE]` and carries no error event), the upstream ever saw an expired token,
//! or the token requests fall outside [duration / 2 s, 1.5 × expected] (fewer cannot have kept
//! 2-s tokens fresh; more means renewals are not single-flight or happen too early).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tollgate::config::Config;
use tollgate::server::{self, ServeOptions};
use tollgate::state::{AppState, Snapshot};
use tollgate::testkit::{MockOAuth, MockUpstream};

const KEY: &str = "sk-soak";

fn env_num(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let secs = env_num("SOAK_SECS", 60);
    let clients = env_num("SOAK_CLIENTS", 64);
    let oauth = MockOAuth::start().await?;
    oauth.add_client("soak", "soak-secret");
    oauth.set_lifetime(Duration::from_secs(2));
    let up = MockUpstream::start().await?;
    up.set_recording(false);
    up.set_auth_check(Some(oauth.bearer_check()));

    let key_sha = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(KEY.as_bytes()));
    let yaml = format!(
        r#"
server: {{ max_in_flight: 100000 }}
credentials:
  soak:
    kind: oauth2
    token_url: {token_url}
    client_id: soak
    client_secret: "${{SOAK_SECRET}}"
    renew_margin: 500ms
    min_renew_interval: 500ms
upstreams:
  up: {{ provider: openai, base_url: {base}, credential: soak }}
models:
  gpt: {{ targets: [ {{ upstream: up }} ] }}
teams:
  soak: {{ models: ["*"] }}
keys:
  - {{ name: soak, team: soak, sha256: {key_sha} }}
"#,
        token_url = oauth.token_url(),
        base = up.base_url(),
    );
    let env: HashMap<String, String> = [("SOAK_SECRET".into(), "soak-secret".into())].into();
    let config = Config::parse(&yaml)?;
    let snapshot = Snapshot::build(config, &env, None).map_err(anyhow::Error::msg)?;
    let opts = ServeOptions {
        header_read_timeout: Duration::from_secs(10),
        shutdown_grace: Duration::from_secs(5),
        ..ServeOptions::from_config(&snapshot.config.server)
    };
    let state = AppState::new(snapshot);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(server::serve(
        listener,
        tollgate::app::router(state),
        opts,
        async {
            let _ = stopped.await;
        },
    ));

    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .tcp_nodelay(true)
        .build()?;
    let url = format!("http://{addr}/v1/chat/completions");
    let ok = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let end = started + Duration::from_secs(secs);
    let mut tasks = Vec::new();
    for i in 0..clients {
        let (http, url, ok, failed) = (http.clone(), url.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let stream = i % 2 == 0;
            let body = serde_json::json!({"model": "gpt", "stream": stream,
                "messages": [{"role": "user", "content": "soak"}]});
            while Instant::now() < end {
                let good = match http.post(&url).bearer_auth(KEY).json(&body).send().await {
                    Ok(r) if r.status().is_success() => match r.bytes().await {
                        Ok(b) => complete(&b, stream),
                        Err(e) => {
                            eprintln!("failed: body: {e}");
                            false
                        }
                    },
                    Ok(r) => {
                        let status = r.status();
                        let text = r.text().await.unwrap_or_default();
                        eprintln!("failed: {status} {text}");
                        false
                    }
                    Err(e) => {
                        eprintln!("failed: {e}");
                        false
                    }
                };
                if good { &ok } else { &failed }.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let ok = ok.load(Ordering::Relaxed);
    let failed = failed.load(Ordering::Relaxed);
    let token_requests = oauth.token_requests();
    let expired = oauth.rejected_expired();
    let expected = 1.0 + secs as f64 / 1.5;
    let (lo, hi) = (
        (secs as f64 / 2.0).floor() as u64,
        (expected * 1.5).ceil() as u64,
    );
    let tokens_ok = (lo..=hi).contains(&(token_requests as u64));
    println!(
        "credential soak: {secs} s, {clients} clients, 2-s tokens renewed 500 ms before expiry\n\
         requests: {} ({ok} ok, {failed} failed), {:.0} req/s\n\
         token requests: {token_requests} (expected about {expected:.0} = 1 + {secs} s / 1.5 s; \
         allowed {lo}..={hi}: {})\n\
         expired tokens seen by the upstream: {expired}",
        ok + failed,
        (ok + failed) as f64 / elapsed,
        if tokens_ok { "ok" } else { "OUT OF BOUNDS" },
    );
    let _ = stop.send(());
    let _ = server.await;
    if failed > 0 || expired > 0 || !tokens_ok {
        std::process::exit(1);
    }
    Ok(())
}

/// A whole answer: JSON with choices, or a stream whose last event is `[DONE]` with no error
/// event before it (a stream cut by an error event is a failure, though its status was 200).
fn complete(body: &[u8], stream: bool) -> bool {
    let text = String::from_utf8_lossy(body);
    if !stream {
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_default();
        let good = v["choices"].is_array();
        if !good {
            eprintln!("failed: answer without choices: {text}");
        }
        return good;
    }
    let events: Vec<&str> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data:"))
        .map(str::trim)
        .collect();
    let error = events.iter().find(|e| {
        serde_json::from_str::<serde_json::Value>(e).is_ok_and(|v| v.get("error").is_some())
    });
    if let Some(e) = error {
        eprintln!("failed: stream ended by an error event: {e}");
        return false;
    }
    let done = events.last() == Some(&"[DONE]");
    if !done {
        eprintln!("failed: stream without [DONE]");
    }
    done
}
