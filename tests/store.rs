//! Keys and teams in the store, through the admin API and real sockets: create, use, revoke,
//! rotate, admin auth, and two replicas sharing one PostgreSQL database.

mod common;

use std::time::{Duration, Instant};

use common::{chat, load, mock_config, store_config, Gateway, PgDb, ADMIN_KEY, DEMO_KEY};
use serde_json::{json, Value};

async fn admin(gw: &Gateway, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    let m = reqwest::Method::from_bytes(method.as_bytes()).unwrap_or(reqwest::Method::GET);
    let mut req = gw.client.request(m, gw.url(path)).bearer_auth(ADMIN_KEY);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let resp = req
        .send()
        .await
        .unwrap_or_else(|e| panic!("{method} {path}: {e}"));
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(Value::Null))
}

async fn chat_status(gw: &Gateway, key: &str, model: &str) -> u16 {
    gw.post_with_key("/v1/chat/completions", key, chat(model, "hi", false))
        .await
        .status()
        .as_u16()
}

/// Poll (bounded, short sleeps: there is no event to wait on) until `key` gets `want`.
/// Returns how long it took and how many polls got something else first.
async fn await_status(gw: &Gateway, key: &str, want: u16, within: Duration) -> (Duration, i64) {
    let start = Instant::now();
    let mut others = 0;
    loop {
        let got = chat_status(gw, key, "mock-gpt").await;
        if got == want {
            return (start.elapsed(), others);
        }
        others += 1;
        assert!(
            start.elapsed() < within,
            "still {got} after {within:?}, wanted {want}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn sqlite(dir: &tempfile::TempDir) -> String {
    format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display())
}

fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
}

#[tokio::test]
async fn admin_routes_need_the_admin_key() {
    // No admin key configured: the admin surface does not exist.
    let gw = Gateway::start(&mock_config(1, 0)).await;
    let r = gw.client.get(gw.url("/admin/keys")).send().await;
    assert_eq!(r.map(|r| r.status().as_u16()).ok(), Some(404));
    gw.stop().await;

    let dir = tempdir();
    let gw = Gateway::start(&store_config(&sqlite(&dir), &dir.path().join("s"), "")).await;
    for (key, want) in [(None, 401), (Some(DEMO_KEY), 401), (Some(ADMIN_KEY), 200)] {
        let mut req = gw.client.get(gw.url("/admin/keys"));
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let status = req.send().await.map(|r| r.status().as_u16()).ok();
        assert_eq!(status, Some(want), "key {key:?}");
    }
    gw.stop().await;
}

#[tokio::test]
async fn store_key_lifecycle_create_use_narrow_revoke() {
    let dir = tempdir();
    let gw = Gateway::start(&store_config(&sqlite(&dir), &dir.path().join("s"), "")).await;

    // A store team; config team names are refused.
    let (s, v) = admin(
        &gw,
        "POST",
        "/admin/teams",
        Some(json!({"name": "demo", "models": ["*"]})),
    )
    .await;
    assert_eq!((s, v["error"]["code"].as_str()), (409, Some("conflict")));
    let (s, _) = admin(
        &gw,
        "POST",
        "/admin/teams",
        Some(
            json!({"name": "ml", "models": ["mock-gpt"], "requests_per_minute": 600,
                    "budget": {"amount_usd": 5.0, "period": "monthly"}}),
        ),
    )
    .await;
    assert_eq!(s, 201);
    // The config's limits shape and its checks: a zero limit is refused in the config's words.
    let (s, v) = admin(
        &gw,
        "POST",
        "/admin/teams",
        Some(json!({"name": "zero", "models": ["*"], "requests_per_minute": 0})),
    )
    .await;
    assert_eq!(s, 400, "{v}");
    assert_eq!(
        v["error"]["message"].as_str(),
        Some("requests_per_minute: must be greater than 0 (leave it out for no limit)")
    );
    let (s, v) = admin(&gw, "POST", "/admin/keys", Some(json!({"team": "nope"}))).await;
    assert_eq!((s, v["error"]["param"].as_str()), (400, Some("team")));

    let (s, created) = admin(
        &gw,
        "POST",
        "/admin/keys",
        Some(json!({"team": "ml", "name": "ci", "tpm": 100000})),
    )
    .await;
    assert_eq!(s, 201, "{created}");
    let key = created["key"].as_str().unwrap_or_default().to_owned();
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    assert!(key.starts_with("sk-tg-") && key.len() == 38, "{key}");
    assert_eq!(created["prefix"].as_str(), Some(&key[..10]));
    // `tpm` is read as `tokens_per_minute`; answers use the config's names.
    assert_eq!(created["tokens_per_minute"], 100000);

    // The list shows the prefix, never the key or its hash.
    let (_, list) = admin(&gw, "GET", "/admin/keys?team=ml", None).await;
    let text = list.to_string();
    assert!(!text.contains(&key) && !text.contains("hash"), "{text}");
    assert_eq!(list["data"].as_array().map(Vec::len), Some(1));

    assert_eq!(chat_status(&gw, &key, "mock-gpt").await, 200);
    // The caller carries the store's limits for the limits module.
    let caller = gw
        .state
        .authenticate(
            &gw.state.snapshot.load_full(),
            &{
                let mut h = http::HeaderMap::new();
                h.insert(
                    "authorization",
                    http::HeaderValue::from_str(&format!("Bearer {key}"))
                        .unwrap_or_else(|e| panic!("{e}")),
                );
                h
            },
            &http::Extensions::new(),
        )
        .await
        .unwrap_or_else(|e| panic!("auth: {e}"));
    assert_eq!(caller.key_limits.tokens_per_minute, Some(100000));
    assert_eq!(caller.team_limits.requests_per_minute, Some(600));
    assert_eq!(caller.team_limits.budget.map(|b| b.amount_usd), Some(5.0));

    // Narrow the key's models: refused for a model outside them.
    let (s, _) = admin(
        &gw,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"models": ["no-such"]})),
    )
    .await;
    assert_eq!(s, 400);
    let (s, _) = admin(
        &gw,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"models": []})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(chat_status(&gw, &key, "mock-gpt").await, 403);
    let (s, _) = admin(
        &gw,
        "PATCH",
        &format!("/admin/keys/{id}"),
        Some(json!({"models": null})),
    )
    .await;
    assert_eq!(s, 200);
    assert_eq!(chat_status(&gw, &key, "mock-gpt").await, 200);

    // Revoked through this replica: refused at once (its cache entry is dropped).
    let (s, v) = admin(&gw, "POST", &format!("/admin/keys/{id}/revoke"), None).await;
    assert_eq!(s, 200);
    assert!(v["revoked_at"].is_i64());
    assert_eq!(chat_status(&gw, &key, "mock-gpt").await, 401);
    let (s, _) = admin(&gw, "POST", "/admin/keys/key_nope/revoke", None).await;
    assert_eq!(s, 404);

    // Every change is in the audit trail.
    let (_, audit) = admin(&gw, "GET", "/admin/audit", None).await;
    let actions: Vec<&str> = audit["data"]
        .as_array()
        .map(|a| a.iter().filter_map(|e| e["action"].as_str()).collect())
        .unwrap_or_default();
    for a in ["team.create", "key.create", "key.update", "key.revoke"] {
        assert!(actions.contains(&a), "{actions:?}");
    }
    assert!(!audit.to_string().contains(&key));

    gw.stop().await;
}

#[tokio::test]
async fn rotation_keeps_the_old_key_for_the_grace_period() {
    let dir = tempdir();
    let gw = Gateway::start(&store_config(&sqlite(&dir), &dir.path().join("s"), "")).await;
    let (_, created) = admin(&gw, "POST", "/admin/keys", Some(json!({"team": "demo"}))).await;
    let old = created["key"].as_str().unwrap_or_default().to_owned();
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(chat_status(&gw, &old, "mock-gpt").await, 200);

    // The rotation happens after this instant, so the old key's grace ends no sooner than
    // 1.5 s after it, however slowly the machine runs the requests in between.
    let asked = Instant::now();
    let (s, rotated) = admin(
        &gw,
        "POST",
        &format!("/admin/keys/{id}/rotate"),
        Some(json!({"grace": "1500ms"})),
    )
    .await;
    assert_eq!(s, 201, "{rotated}");
    let new = rotated["key"].as_str().unwrap_or_default().to_owned();
    assert_ne!(new, old);
    assert_eq!(rotated["replaces"]["id"].as_str(), Some(id.as_str()));
    // Both work during the grace period; after it only the new one.
    assert_eq!(chat_status(&gw, &old, "mock-gpt").await, 200);
    assert_eq!(chat_status(&gw, &new, "mock-gpt").await, 200);
    await_status(&gw, &old, 401, Duration::from_secs(5)).await;
    let took = asked.elapsed();
    assert!(
        took >= Duration::from_millis(1500),
        "old key refused too early: {took:?} after the rotation was asked for"
    );
    assert_eq!(chat_status(&gw, &new, "mock-gpt").await, 200);
    // A rotated-out key cannot be rotated again.
    let (s, _) = admin(&gw, "POST", &format!("/admin/keys/{id}/rotate"), None).await;
    assert_eq!(s, 409);
    gw.stop().await;
}

/// Two gateways on one PostgreSQL database with the default key cache (`key_cache_ttl` 2 s): a
/// key revoked through one is refused by the other within 5 s of the revocation request, and
/// the usage both recorded adds up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_keys_revocations_and_usage() {
    let db = PgDb::create().await;
    let dir = tempdir();
    let cfg = |spill: &str| {
        let c = store_config(&db.url, &dir.path().join(spill), "");
        let c = c.replace("  key_cache_ttl: 1s\n", "");
        assert!(!c.contains("key_cache_ttl"), "the default cache is tested");
        c
    };
    let a = Gateway::start(&cfg("a")).await;
    let b = Gateway::start(&cfg("b")).await;

    let (s, created) = admin(&a, "POST", "/admin/keys", Some(json!({"team": "demo"}))).await;
    assert_eq!(s, 201);
    let key = created["key"].as_str().unwrap_or_default().to_owned();
    let id = created["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(chat_status(&b, &key, "mock-gpt").await, 200);

    // Load through both replicas with the store key.
    let n = 1_000;
    let out = load(&a.client, &[a.url(""), b.url("")], &key, n, 32).await;
    assert_eq!(out.iter().filter(|o| o.status == 0).count(), 0);

    // The revoked key is one b has just read from the store for the first time: its cache entry
    // is as fresh as it can be when the revocation comes, the worst case.
    let (s, late) = admin(&a, "POST", "/admin/keys", Some(json!({"team": "demo"}))).await;
    assert_eq!(s, 201);
    let late_key = late["key"].as_str().unwrap_or_default().to_owned();
    let late_id = late["id"].as_str().unwrap_or_default().to_owned();
    assert_eq!(chat_status(&b, &late_key, "mock-gpt").await, 200);
    let revoked_at = Instant::now();
    let (s, _) = admin(&a, "POST", &format!("/admin/keys/{late_id}/revoke"), None).await;
    assert_eq!(s, 200);
    assert_eq!(chat_status(&a, &late_key, "mock-gpt").await, 401);
    let (_, polls_ok) = await_status(&b, &late_key, 401, Duration::from_secs(5)).await;
    let took = revoked_at.elapsed();
    assert!(
        took < Duration::from_secs(5),
        "b refused the revoked key {took:?} after the revocation was asked for"
    );
    eprintln!("revocation reached the other replica in {took:?}");

    let store = a.store();
    a.stop().await;
    b.stop().await;
    // Rows of `key`: the first request and the whole load (its failures had an identified
    // caller). Of the revoked key: its first request and the polls b still answered before the
    // revocation reached it; the 401s have none.
    let report = store
        .query_usage(&tollgate::store::usage::UsageFilter {
            key_id: Some(id.clone()),
            group_by: Some(tollgate::store::usage::GroupBy::Model),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("usage: {e}"));
    let refused = out.iter().filter(|o| o.status >= 400).count() as i64;
    assert_eq!(report.totals.requests, 1 + n as i64, "{report:?}");
    assert_eq!(report.totals.errors, refused);
    assert_eq!(
        store.count_usage().await.unwrap_or(-1),
        report.totals.requests + 1 + polls_ok
    );
    // Spend from both replicas adds up: the groups sum to the totals.
    let groups = report.groups.unwrap_or_default();
    let tokens: i64 = groups.iter().map(|g| g.totals.prompt_tokens).sum();
    assert_eq!(tokens, report.totals.prompt_tokens);
    assert!(tokens > 0);
}

/// Deleting a store team revokes its keys at once (here) and keeps its usage; a config team
/// cannot be deleted through the API; an unknown team is a 404.
#[tokio::test]
async fn deleting_a_team_revokes_its_keys() {
    let dir = tempdir();
    let gw = Gateway::start(&store_config(&sqlite(&dir), &dir.path().join("s"), "")).await;
    let (s, _) = admin(
        &gw,
        "POST",
        "/admin/teams",
        Some(json!({"name": "gone", "models": ["*"]})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, k) = admin(&gw, "POST", "/admin/keys", Some(json!({"team": "gone"}))).await;
    assert_eq!(s, 201);
    let key = k["key"].as_str().unwrap_or_default().to_owned();
    assert_eq!(chat_status(&gw, &key, "mock-gpt").await, 200);

    let (s, v) = admin(&gw, "DELETE", "/admin/teams/gone", None).await;
    assert_eq!(s, 200, "{v}");
    assert_eq!(v["keys_revoked"], 1);
    assert_eq!(chat_status(&gw, &key, "mock-gpt").await, 401);
    let (_, teams) = admin(&gw, "GET", "/admin/teams", None).await;
    assert!(
        !teams["data"]
            .as_array()
            .is_some_and(|d| d.iter().any(|t| t["name"] == "gone")),
        "{teams}"
    );
    let (s, v) = admin(&gw, "DELETE", "/admin/teams/gone", None).await;
    assert_eq!(s, 404, "{v}");
    assert_eq!(v["error"]["type"], "invalid_request_error", "{v}");
    let (s, v) = admin(&gw, "DELETE", "/admin/teams/demo", None).await;
    assert_eq!(s, 409, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("config file")),
        "{v}"
    );
    // The deleted team's request stays in the usage (read once the writer has flushed).
    let store = gw.store();
    gw.stop().await;
    let usage = store
        .query_usage(&tollgate::store::usage::UsageFilter {
            team: Some("gone".into()),
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("usage: {e}"));
    assert_eq!(usage.totals.requests, 1, "{usage:?}");
}
