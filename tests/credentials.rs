//! Self-renewing upstream credentials through real sockets: the gateway in process, the test
//! kit's mock OAuth2 server and mock upstream (which rejects expired or revoked tokens).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{chat, Gateway, DEMO_KEY_SHA256};
use serde_json::Value;
use tollgate::testkit::{MockOAuth, MockUpstream};

const ADMIN_KEY: &str = "sk-admin-test";

fn env() -> HashMap<String, String> {
    [
        ("OA_SECRET".to_string(), "cs-1".to_string()),
        ("ADMIN_KEY".to_string(), ADMIN_KEY.to_string()),
        ("GLM_KEY".to_string(), "glm-id.glm-secret".to_string()),
    ]
    .into()
}

/// A config with one `openai` upstream at `base` using `credential` (YAML under `credentials:`).
fn config(base: &str, credential: &str) -> String {
    format!(
        r#"
credentials:
  up-cred:
{credential}
upstreams:
  up:
    provider: openai
    base_url: {base}
    credential: up-cred
    timeouts: {{ first_byte: 5s }}
models:
  gpt: {{ targets: [ {{ upstream: up }} ] }}
teams:
  demo: {{ models: ["*"] }}
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}
admin: {{ key: "${{ADMIN_KEY}}" }}
"#
    )
}

fn oauth_cred(token_url: &str, extra: &str) -> String {
    format!(
        "    kind: oauth2\n    token_url: {token_url}\n    client_id: cid\n    client_secret: \"${{OA_SECRET}}\"\n{extra}"
    )
}

async fn start_mocks(lifetime: Duration) -> (MockOAuth, MockUpstream) {
    let oauth = MockOAuth::start()
        .await
        .unwrap_or_else(|e| panic!("mock oauth: {e}"));
    oauth.add_client("cid", "cs-1");
    oauth.set_lifetime(lifetime);
    let up = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("mock upstream: {e}"));
    up.set_auth_check(Some(oauth.bearer_check()));
    (oauth, up)
}

async fn chat_status(gw: &Gateway) -> (u16, reqwest::header::HeaderMap, String) {
    let resp = gw
        .post("/v1/chat/completions", chat("gpt", "hi", false))
        .await;
    let status = resp.status().as_u16();
    let headers = resp.headers().clone();
    (status, headers, resp.text().await.unwrap_or_default())
}

async fn admin_credentials(gw: &Gateway) -> Value {
    let resp = gw
        .client
        .get(gw.url("/admin/credentials"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap_or_else(|e| panic!("admin: {e}"));
    assert_eq!(resp.status(), 200);
    resp.json()
        .await
        .unwrap_or_else(|e| panic!("admin json: {e}"))
}

/// Run `clients` concurrent request loops for `dur`; returns (ok, failed, first failure).
async fn load(gw: &Arc<Gateway>, clients: usize, dur: Duration) -> (usize, usize, String) {
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(AtomicUsize::new(0));
    let first = Arc::new(std::sync::Mutex::new(String::new()));
    let end = Instant::now() + dur;
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (gw, ok, failed, first) = (gw.clone(), ok.clone(), failed.clone(), first.clone());
        tasks.push(tokio::spawn(async move {
            while Instant::now() < end {
                let (status, _, body) = chat_status(&gw).await;
                if status == 200 {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    if let Ok(mut f) = first.lock() {
                        if f.is_empty() {
                            *f = format!("{status}: {body}");
                        }
                    }
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let first = first.lock().map(|f| f.clone()).unwrap_or_default();
    (
        ok.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
        first,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_second_tokens_32_clients_15_seconds_no_failures_no_expired_tokens() {
    let (oauth, up) = start_mocks(Duration::from_secs(2)).await;
    up.set_recording(false);
    // Renew when 500 ms remain: every 1.5 s.
    let cred = oauth_cred(
        &oauth.token_url(),
        "    renew_margin: 500ms\n    min_renew_interval: 500ms\n",
    );
    let gw = Arc::new(Gateway::start_with_env(&config(&up.base_url(), &cred), env()).await);
    let (status, _, body) = chat_status(&gw).await;
    assert_eq!(status, 200, "{body}");
    let before = oauth.token_requests();
    let dur = Duration::from_secs(15);
    let (ok, failed, first) = load(&gw, 32, dur).await;
    let during = oauth.token_requests() - before;
    let expected = dur.as_secs_f64() / 1.5;
    println!(
        "32 clients x 15 s: {ok} ok, {failed} failed; {during} token requests (expected {expected}); \
         upstream saw {} expired tokens",
        oauth.rejected_expired()
    );
    assert_eq!(failed, 0, "first failure: {first}");
    assert!(ok > 100, "{ok}");
    assert_eq!(oauth.rejected_expired(), 0);
    assert!(
        (during as f64 - expected).abs() <= 2.0,
        "{during} token requests in 15 s, expected about {expected}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_revoked_token_costs_exactly_one_extra_token_request() {
    let (oauth, up) = start_mocks(Duration::from_secs(60)).await;
    let cred = oauth_cred(&oauth.token_url(), "    min_renew_interval: 200ms\n");
    let gw = Arc::new(Gateway::start_with_env(&config(&up.base_url(), &cred), env()).await);
    assert_eq!(chat_status(&gw).await.0, 200);
    let before = oauth.token_requests();
    oauth.revoke_all();
    let (ok, failed, first) = load(&gw, 16, Duration::from_secs(2)).await;
    assert_eq!(failed, 0, "first failure: {first}");
    assert!(ok > 0);
    assert_eq!(oauth.token_requests(), before + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn token_server_failing_twice_while_the_token_is_valid_is_invisible() {
    let (oauth, up) = start_mocks(Duration::from_secs(3)).await;
    // Renewal due at 1.5 s; two 503s, then success, well before expiry.
    let cred = oauth_cred(
        &oauth.token_url(),
        "    renew_margin: 1500ms\n    backoff_base: 100ms\n",
    );
    let gw = Arc::new(Gateway::start_with_env(&config(&up.base_url(), &cred), env()).await);
    assert_eq!(chat_status(&gw).await.0, 200);
    let before = oauth.token_requests();
    oauth.fail_next(2, 503);
    let (ok, failed, first) = load(&gw, 8, Duration::from_secs(4)).await;
    assert_eq!(failed, 0, "first failure: {first}");
    assert!(ok > 0);
    assert!(oauth.token_requests() >= before + 3);
    assert_eq!(oauth.rejected_expired(), 0);
    let v = admin_credentials(&gw).await;
    let c = &v["credentials"][0];
    assert_eq!(c["renewal_failures"], 2, "{v}");
    assert_eq!(
        c["last_error"], "token server answered 503 server_error",
        "{v}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_hung_token_server_cannot_hold_requests_and_shows_in_admin() {
    let (oauth, up) = start_mocks(Duration::from_secs(1)).await;
    let cred = oauth_cred(
        &oauth.token_url(),
        "    renew_margin: 300ms\n    timeout: 1s\n    lease_timeout: 1s\n    max_attempts: 2\n",
    );
    let gw = Gateway::start_with_env(&config(&up.base_url(), &cred), env()).await;
    assert_eq!(chat_status(&gw).await.0, 200);
    oauth.set_hang(true);
    // Let the token expire.
    tokio::time::sleep(Duration::from_millis(1200)).await;
    for _ in 0..3 {
        let t0 = Instant::now();
        let (status, headers, body) = chat_status(&gw).await;
        assert!(
            t0.elapsed() < Duration::from_millis(2500),
            "{:?}",
            t0.elapsed()
        );
        assert_eq!(status, 503, "{body}");
        assert!(headers.get("retry-after").is_some());
        assert!(
            body.contains("upstream credential is unavailable"),
            "{body}"
        );
        assert!(!body.contains("cs-1"), "{body}");
    }
    let v = admin_credentials(&gw).await;
    let c = &v["credentials"][0];
    assert_eq!(c["last_error"], "token request timed out", "{v}");
    assert!(c["renewal_failures"].as_u64().unwrap_or(0) >= 1, "{v}");
    assert_ne!(c["state"], "valid", "{v}");
    oauth.set_hang(false);
}

fn bearer_of(r: &tollgate::testkit::Received) -> String {
    r.headers
        .get("authorization")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or_default()
        .to_owned()
}

fn uses(up: &MockUpstream, token: &str) -> usize {
    up.received()
        .iter()
        .filter(|r| bearer_of(r) == token)
        .count()
}

fn write_atomically(path: &std::path::Path, text: &str) {
    let tmp = path.with_extension("tmp");
    std::fs::write(&tmp, text).unwrap_or_else(|e| panic!("write: {e}"));
    std::fs::rename(&tmp, path).unwrap_or_else(|e| panic!("rename: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pool_of_three_cooldown_disable_file_reload_and_all_limited() {
    let up = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("mock upstream: {e}"));
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let file = dir.path().join("access_tokens.txt");
    write_atomically(&file, "# upstream keys\ntok-a\n\n  tok-b  \ntok-c\n");
    let cred = format!("    kind: pool\n    file: {}\n", file.display());
    let gw = Gateway::start_with_env(&config(&up.base_url(), &cred), env()).await;

    // tok-a answers 429 with Retry-After: 3 (and the mock's `x-ratelimit-remaining-requests: 0`:
    // evidence that the token's limit is spent, so it cools down at once); tok-b answers 401, and
    // is disabled once three different requests got a 401 from it with no success in between.
    up.set_token_status("tok-a", Some((429, Some(3))));
    up.set_token_status("tok-b", Some((401, None)));
    let t0 = Instant::now();
    while t0.elapsed() < Duration::from_millis(2500) {
        let (status, _, body) = chat_status(&gw).await;
        assert_eq!(status, 200, "{body}");
    }
    assert_eq!(uses(&up, "tok-a"), 1, "tok-a used while cooling down");
    assert_eq!(uses(&up, "tok-b"), 3, "tok-b used after its third 401");
    assert!(uses(&up, "tok-c") > 5);

    // The admin view shows the states, fingerprints, never a token.
    let v = admin_credentials(&gw).await;
    let text = v.to_string();
    assert!(!text.contains("tok-"), "{text}");
    let members = &v["credentials"][0]["members"];
    assert_eq!(members[0]["state"], "cooling_down", "{v}");
    assert!(members[0]["cooling_down_until"].is_u64(), "{v}");
    assert_eq!(members[1]["state"], "disabled", "{v}");
    assert_eq!(members[2]["state"], "valid", "{v}");
    assert_eq!(members[2]["fingerprint"].as_str().map(str::len), Some(8));

    // After the cooldown tok-a is used again; tok-b never.
    up.set_token_status("tok-a", None);
    tokio::time::sleep(
        Duration::from_secs(3).saturating_sub(t0.elapsed()) + Duration::from_millis(300),
    )
    .await;
    for _ in 0..6 {
        assert_eq!(chat_status(&gw).await.0, 200);
    }
    assert!(uses(&up, "tok-a") > 1);
    assert_eq!(uses(&up, "tok-b"), 3);

    // An admin can re-enable a member.
    let resp = gw
        .client
        .post(gw.url("/admin/credentials/up-cred/members/1/enable"))
        .bearer_auth(ADMIN_KEY)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), 200);
    let v = admin_credentials(&gw).await;
    assert_eq!(v["credentials"][0]["members"][1]["state"], "valid", "{v}");

    // A new token in the file is used within 2 s.
    write_atomically(&file, "tok-a\ntok-c\ntok-d\n");
    let written = Instant::now();
    while uses(&up, "tok-d") == 0 {
        assert!(
            written.elapsed() < Duration::from_secs(2),
            "tok-d not used 2 s after the file changed"
        );
        assert_eq!(chat_status(&gw).await.0, 200);
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Every token rate limited: the client gets 429 with Retry-After.
    for t in ["tok-a", "tok-c", "tok-d"] {
        up.set_token_status(t, Some((429, Some(5))));
    }
    let (status, headers, body) = chat_status(&gw).await;
    assert_eq!(status, 429, "{body}");
    let ra: u64 = headers
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    assert!((1..=5).contains(&ra), "{ra}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn baidu_style_query_auth_and_access_token_parameter() {
    let (oauth, up) = start_mocks(Duration::from_secs(3600)).await;
    let cred = format!(
        "    kind: oauth2\n    token_url: {}\n    client_id: cid\n    client_secret: \"${{OA_SECRET}}\"\n    client_auth: query\n    placement: {{ query: access_token }}\n",
        oauth.baidu_url()
    );
    let gw = Gateway::start_with_env(&config(&up.base_url(), &cred), env()).await;
    for _ in 0..3 {
        let (status, _, body) = chat_status(&gw).await;
        assert_eq!(status, 200, "{body}");
    }
    let reqs = oauth.requests();
    assert_eq!(reqs.len(), 1);
    assert_eq!(reqs[0].method, "POST");
    let q = reqs[0].query.clone().unwrap_or_default();
    assert!(
        q.contains("grant_type=client_credentials") && q.contains("client_id=cid"),
        "{q}"
    );
    for r in up.received() {
        assert!(r.headers.get("authorization").is_none());
        let q = r.query.clone().unwrap_or_default();
        assert!(q.starts_with("access_token="), "{q}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zhipu_style_jwt_is_verified_by_the_upstream() {
    let up = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("mock upstream: {e}"));
    up.set_auth_check(Some(Arc::new(|headers, _query| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .and_then(|t| tollgate::credentials::jwt::verify(t, "glm-id", "glm-secret", now))
            .is_some()
    })));
    let cred = "    kind: jwt\n    api_key: \"${GLM_KEY}\"\n    ttl: 10m\n";
    let gw = Gateway::start_with_env(&config(&up.base_url(), cred), env()).await;
    for _ in 0..3 {
        let (status, _, body) = chat_status(&gw).await;
        assert_eq!(status, 200, "{body}");
    }
    // A wrong secret is refused by the mock: the check is real. The upstream refusing the
    // gateway's credential is a 502 for the client, not a 401 (its key is fine).
    let mut bad = env();
    bad.insert("GLM_KEY".into(), "glm-id.wrong".into());
    let gw = Gateway::start_with_env(&config(&up.base_url(), cred), bad).await;
    let (status, _, body) = chat_status(&gw).await;
    assert_eq!(status, 502, "{body}");
    assert!(body.contains("upstream_credential_rejected"), "{body}");
}
