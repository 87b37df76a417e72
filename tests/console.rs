//! The web console over HTTP, through real sockets: its files need no session while its data
//! does, signing in (a wrong key refused; the cookie's flags; the token is not the key), CSRF on
//! every cookie-authenticated write (the bearer admin key needs none), logout, a session's
//! lifetime and cap, a changed admin key ending sessions, the console hidden when off, and the
//! admin endpoints its pages draw from (usage series and recent errors on SQLite and
//! PostgreSQL, upstream health). The browser test is `tests/console_browser.rs`.

mod common;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use common::{chat, sha256_hex, Gateway, PgDb, Reply, ADMIN_KEY};
use serde_json::{json, Value};
use tollgate::config::Config;
use tollgate::state::Snapshot;

/// The mock model, the demo key, an admin key with the console on (`console` adds to its flow
/// map) and a store at `url`.
fn config(url: &str, spill: &std::path::Path, console: &str) -> String {
    format!(
        r#"{}
admin:
  sha256: {}
  console: {{ enabled: true{console} }}
store:
  url: "{url}"
  key_cache_ttl: 1s
  usage: {{ spill_path: "{}", batch_interval: 20ms }}
"#,
        common::mock_config(4, 0),
        sha256_hex(ADMIN_KEY),
        spill.display()
    )
}

async fn start(console: &str) -> (Gateway, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let gw = Gateway::start(&config(&url, &dir.path().join("spill"), console)).await;
    (gw, dir)
}

/// A signed-in console: its cookie (`name=value`) and CSRF token.
struct Session {
    cookie: String,
    csrf: String,
    set_cookie: String,
}

async fn login(gw: &Gateway, key: &str) -> Reply {
    let r = gw
        .client
        .post(gw.url("/console/login"))
        .json(&json!({ "key": key }))
        .send()
        .await
        .unwrap_or_else(|e| panic!("login: {e}"));
    Reply::read(r).await
}

async fn sign_in(gw: &Gateway) -> Session {
    let r = login(gw, ADMIN_KEY).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let set_cookie = r
        .header("set-cookie")
        .unwrap_or_else(|| panic!("no cookie"))
        .to_owned();
    let cookie = set_cookie.split(';').next().unwrap_or_default().to_owned();
    let csrf = r.json()["csrf"].as_str().unwrap_or_default().to_owned();
    Session {
        cookie,
        csrf,
        set_cookie,
    }
}

/// A request with the session's cookie; `csrf` adds the `x-csrf-token` header.
async fn call(
    gw: &Gateway,
    method: reqwest::Method,
    path: &str,
    cookie: &str,
    csrf: Option<&str>,
    body: Option<Value>,
) -> Reply {
    let mut req = gw
        .client
        .request(method, gw.url(path))
        .header("cookie", cookie);
    if let Some(t) = csrf {
        req = req.header("x-csrf-token", t);
    }
    if let Some(b) = body {
        req = req.json(&b);
    }
    Reply::read(req.send().await.unwrap_or_else(|e| panic!("{path}: {e}"))).await
}

async fn get(gw: &Gateway, path: &str, cookie: &str) -> Reply {
    call(gw, reqwest::Method::GET, path, cookie, None, None).await
}

#[tokio::test]
async fn the_console_files_need_no_session_but_its_data_does() {
    let (gw, _dir) = start("").await;
    let page = get(&gw, "/console", "").await;
    assert_eq!(page.status, 200);
    assert!(page
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/html")));
    assert!(
        page.body.contains("/console/assets/app.js"),
        "{}",
        page.body
    );
    let csp = page.header("content-security-policy").unwrap_or_default();
    assert!(
        csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"),
        "{csp}"
    );
    let js = get(&gw, "/console/assets/pages/keys.js", "").await;
    assert_eq!(js.status, 200);
    assert!(js
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/javascript")));
    assert_eq!(get(&gw, "/console/assets/nope.js", "").await.status, 404);
    // Data: the session and the admin API.
    for path in ["/console/session", "/admin/keys", "/admin/usage/series"] {
        let r = get(&gw, path, "").await;
        assert_eq!(r.status, 401, "{path}: {}", r.body);
        assert_eq!(r.error_code(), "invalid_api_key");
    }
    // A made-up cookie is no session.
    let forged = format!("tollgate_console={}", "ab".repeat(32));
    assert_eq!(get(&gw, "/admin/keys", &forged).await.status, 401);
    gw.stop().await;
}

#[tokio::test]
async fn a_wrong_key_is_refused_and_the_right_one_gets_a_strict_httponly_cookie() {
    let (gw, _dir) = start("").await;
    for wrong in ["sk-not-the-admin-key", common::DEMO_KEY, ""] {
        let r = login(&gw, wrong).await;
        assert_eq!(r.status, 401, "{wrong}: {}", r.body);
        assert!(r.header("set-cookie").is_none(), "{wrong}");
    }
    let long = login(&gw, &"k".repeat(5000)).await;
    assert_eq!(long.status, 413, "a sign-in body is bounded: {}", long.body);
    assert!(
        long.body.contains("\"error\"") && long.body.contains("\"type\""),
        "OpenAI-shaped: {}",
        long.body
    );
    assert_eq!(gw.state.sessions.len(), 0);

    let s = sign_in(&gw).await;
    let attrs: Vec<&str> = s.set_cookie.split(';').map(str::trim).collect();
    for flag in ["HttpOnly", "SameSite=Strict", "Path=/", "Max-Age=28800"] {
        assert!(attrs.contains(&flag), "{flag} missing: {}", s.set_cookie);
    }
    assert!(!attrs.contains(&"Secure"), "plain HTTP: {}", s.set_cookie);
    let token = s
        .cookie
        .strip_prefix("tollgate_console=")
        .unwrap_or_default();
    assert_eq!(token.len(), 64, "{}", s.cookie);
    assert!(!s.set_cookie.contains(ADMIN_KEY));
    assert!(!token.contains(&sha256_hex(ADMIN_KEY)));
    assert_eq!(s.csrf.len(), 64);
    assert_ne!(s.csrf, token);

    // The session answers with the same CSRF token; admin reads work with the cookie.
    let me = get(&gw, "/console/session", &s.cookie).await;
    assert_eq!(me.status, 200, "{}", me.body);
    assert_eq!(me.json()["csrf"], s.csrf.as_str());
    assert_eq!(me.header("cache-control"), Some("no-store"));
    assert_eq!(get(&gw, "/admin/keys", &s.cookie).await.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn a_cookie_write_needs_its_sessions_csrf_token_and_the_bearer_key_needs_none() {
    let (gw, _dir) = start("").await;
    let s = sign_in(&gw).await;
    let other = sign_in(&gw).await;
    let team = |name: &str| Some(json!({"name": name, "models": ["*"]}));
    let post = reqwest::Method::POST;

    let none = call(
        &gw,
        post.clone(),
        "/admin/teams",
        &s.cookie,
        None,
        team("a"),
    )
    .await;
    assert_eq!(none.status, 403, "{}", none.body);
    assert_eq!(none.error_code(), "csrf_token_invalid");
    let wrong = call(
        &gw,
        post.clone(),
        "/admin/teams",
        &s.cookie,
        Some(&other.csrf),
        team("a"),
    )
    .await;
    assert_eq!(wrong.status, 403, "another session's token: {}", wrong.body);
    // Nothing was made by the refused writes.
    let teams = get(&gw, "/admin/teams", &s.cookie).await.json();
    assert!(
        !teams["data"]
            .as_array()
            .is_some_and(|t| t.iter().any(|t| t["name"] == "a")),
        "{teams}"
    );
    // The refusal covers every write method, and the response cache purge too.
    let purge = call(
        &gw,
        reqwest::Method::DELETE,
        "/admin/cache",
        &s.cookie,
        None,
        None,
    )
    .await;
    assert_eq!(purge.status, 403);

    let ok = call(
        &gw,
        post.clone(),
        "/admin/teams",
        &s.cookie,
        Some(&s.csrf),
        team("a"),
    )
    .await;
    assert_eq!(ok.status, 201, "{}", ok.body);
    // The admin API keeps taking the bearer admin key, with no CSRF token.
    let bearer = gw
        .client
        .post(gw.url("/admin/teams"))
        .bearer_auth(ADMIN_KEY)
        .json(&json!({"name": "b", "models": ["*"]}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(bearer.status(), 201);
    // A presented key decides: a wrong one is refused even with a good cookie.
    let r = gw
        .client
        .get(gw.url("/admin/keys"))
        .header("cookie", &s.cookie)
        .bearer_auth("sk-wrong")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 401);
    gw.stop().await;
}

#[tokio::test]
async fn logout_ends_the_session_and_clears_the_cookie() {
    let (gw, _dir) = start("").await;
    let s = sign_in(&gw).await;
    let post = reqwest::Method::POST;
    let r = call(&gw, post.clone(), "/console/logout", &s.cookie, None, None).await;
    assert_eq!(r.status, 403, "logout is a write: {}", r.body);
    assert_eq!(get(&gw, "/console/session", &s.cookie).await.status, 200);

    let r = call(&gw, post, "/console/logout", &s.cookie, Some(&s.csrf), None).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let cleared = r.header("set-cookie").unwrap_or_default();
    assert!(
        cleared.starts_with("tollgate_console=;") && cleared.contains("Max-Age=0"),
        "{cleared}"
    );
    assert_eq!(get(&gw, "/console/session", &s.cookie).await.status, 401);
    assert_eq!(get(&gw, "/admin/keys", &s.cookie).await.status, 401);
    assert_eq!(gw.state.sessions.len(), 0);
    gw.stop().await;
}

#[tokio::test]
async fn a_session_ends_at_its_lifetime_and_past_the_cap_the_oldest_ends() {
    let (gw, _dir) = start(", session_ttl: 1s, max_sessions: 2").await;
    let s = sign_in(&gw).await;
    assert!(s.set_cookie.contains("Max-Age=1"), "{}", s.set_cookie);
    assert_eq!(get(&gw, "/admin/keys", &s.cookie).await.status, 200);
    // Expiry is a time, not an event: poll until the session is refused (bounded).
    let started = tokio::time::Instant::now();
    loop {
        let r = get(&gw, "/admin/keys", &s.cookie).await;
        if r.status == 401 {
            break;
        }
        assert_eq!(r.status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "the session outlived its 1s lifetime"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(get(&gw, "/console/session", &s.cookie).await.status, 401);

    // At most two sessions: a third login ends the first.
    let (a, b, c) = (sign_in(&gw).await, sign_in(&gw).await, sign_in(&gw).await);
    assert_eq!(get(&gw, "/console/session", &a.cookie).await.status, 401);
    assert_eq!(get(&gw, "/console/session", &b.cookie).await.status, 200);
    assert_eq!(get(&gw, "/console/session", &c.cookie).await.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn a_new_admin_key_ends_the_sessions_of_the_old_one() {
    let (gw, dir) = start("").await;
    let s = sign_in(&gw).await;
    assert_eq!(get(&gw, "/admin/keys", &s.cookie).await.status, 200);
    // A reload with another admin key (as `reload` builds and swaps a snapshot).
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let yaml = config(&url, &dir.path().join("spill"), "")
        .replace(&sha256_hex(ADMIN_KEY), &sha256_hex("sk-admin-new"));
    let cfg = Config::parse(&yaml).unwrap_or_else(|e| panic!("{e}"));
    let old = gw.state.snapshot.load_full();
    let snap = Snapshot::build(cfg, &HashMap::<String, String>::new(), Some(&old))
        .unwrap_or_else(|e| panic!("{e}"));
    gw.state.snapshot.store(Arc::new(snap));
    assert_eq!(get(&gw, "/admin/keys", &s.cookie).await.status, 401);
    assert_eq!(login(&gw, ADMIN_KEY).await.status, 401);
    assert_eq!(login(&gw, "sk-admin-new").await.status, 200);
    gw.stop().await;
}

#[tokio::test]
async fn with_the_console_off_its_paths_are_unknown_whatever_the_method() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let yaml =
        config(&url, &dir.path().join("spill"), "").replace("enabled: true", "enabled: false");
    let gw = Gateway::start(&yaml).await;
    for (method, path) in [
        (reqwest::Method::GET, "/console"),
        (reqwest::Method::GET, "/console/assets/app.js"),
        (reqwest::Method::POST, "/console/login"),
        (reqwest::Method::DELETE, "/console/login"),
    ] {
        let r = Reply::read(
            gw.client
                .request(method.clone(), gw.url(path))
                .json(&json!({"key": ADMIN_KEY}))
                .send()
                .await
                .unwrap_or_else(|e| panic!("{e}")),
        )
        .await;
        assert_eq!(r.status, 404, "{method} {path}: {}", r.body);
        assert!(r.header("set-cookie").is_none());
    }
    gw.stop().await;
}

/// Send three good requests and one for an unknown model with the demo key, then read the
/// series and the recent errors through the admin API once the usage writer has the rows.
async fn series_and_errors(gw: &Gateway) {
    for _ in 0..3 {
        let r = gw
            .post("/v1/chat/completions", chat("mock-gpt", "hi", false))
            .await;
        assert_eq!(r.status(), 200);
    }
    let r = gw
        .post("/v1/chat/completions", chat("nope", "hi", false))
        .await;
    assert_eq!(r.status(), 404);
    let admin = |path: String| {
        let req = gw.client.get(gw.url(&path)).bearer_auth(ADMIN_KEY);
        async move { Reply::read(req.send().await.unwrap_or_else(|e| panic!("{e}"))).await }
    };
    // The writer flushes every 20 ms: poll until all four rows are counted (bounded).
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let by_team = loop {
        let r = admin("/admin/usage/series?group_by=team&bucket=hour".into()).await;
        assert_eq!(r.status, 200, "{}", r.body);
        let v = r.json();
        if v["series"][0]["points"][0]["requests"] == 4 {
            break v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "rows never counted: {v}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!(by_team["series"][0]["key"], "demo");
    assert_eq!(by_team["series"][0]["points"][0]["errors"], 1);
    let t = by_team["series"][0]["points"][0]["t"].as_i64().unwrap_or(0);
    assert_eq!(t % 3_600_000, 0, "buckets start on the hour: {by_team}");
    assert!(by_team["from"].as_i64() <= Some(t) && Some(t) < by_team["to"].as_i64());

    let by_model = admin("/admin/usage/series?bucket=day".into()).await.json();
    let series = by_model["series"].as_array().cloned().unwrap_or_default();
    let mock = series
        .iter()
        .find(|s| s["key"] == "mock-gpt")
        .unwrap_or_else(|| panic!("{by_model}"));
    assert_eq!(mock["points"][0]["requests"], 3);
    assert!(mock["points"][0]["cost_usd"].as_f64() > Some(0.0), "{mock}");
    assert_eq!(by_model["bucket_ms"], 86_400_000);
    let filtered = admin("/admin/usage/series?team=nobody".into()).await.json();
    assert_eq!(filtered["series"], json!([]));

    let errors = admin("/admin/usage/errors?limit=10".into()).await.json();
    let rows = errors["data"].as_array().cloned().unwrap_or_default();
    assert_eq!(rows.len(), 1, "{errors}");
    assert_eq!(rows[0]["status"], 404);
    assert_eq!(rows[0]["error_kind"], "client_model_unknown");
    assert_eq!(rows[0]["team"], "demo");
    let bad = admin("/admin/usage/series?bucket=week".into()).await;
    assert_eq!(bad.status, 400);
}

#[tokio::test]
async fn usage_series_and_recent_errors_on_sqlite() {
    let (gw, _dir) = start("").await;
    series_and_errors(&gw).await;
    gw.stop().await;
}

#[tokio::test]
async fn usage_series_and_recent_errors_on_postgres() {
    let db = PgDb::create().await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let gw = Gateway::start(&config(&db.url, &dir.path().join("spill"), "")).await;
    series_and_errors(&gw).await;
    gw.stop().await;
}

#[tokio::test]
async fn status_shows_each_upstreams_breaker_latency_and_queue() {
    let (gw, _dir) = start("").await;
    let r = gw
        .post("/v1/chat/completions", chat("mock-gpt", "hi", false))
        .await;
    assert_eq!(r.status(), 200);
    let s = Reply::read(
        gw.client
            .get(gw.url("/admin/status"))
            .bearer_auth(ADMIN_KEY)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}")),
    )
    .await
    .json();
    let u = &s["upstreams"][0];
    assert_eq!(u["breaker"], "closed", "{s}");
    assert_eq!(u["in_flight"], 0);
    assert_eq!(u["queued"], 0);
    assert!(u["max_concurrent"].as_u64() > Some(0), "{s}");
    assert!(
        u["ewma_ttfb_ms"].as_f64() > Some(0.0),
        "one request was timed: {s}"
    );
    gw.stop().await;
}
