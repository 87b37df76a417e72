//! The Batch API through real sockets: files, batches, validation, cancel, faults, short-lived
//! tokens, two gateways sharing PostgreSQL. The worker runs inside the gateway (tests/common
//! starts it with the store). Restarts of the binary are in tests/batch_restart.rs.

mod batch_kit;
mod common;

use std::time::Duration;

use batch_kit::{chat_lines, expected, files_of, results, Api};
use common::{Gateway, DEMO_KEY, DEMO_KEY_SHA256};
use serde_json::{json, Value};
use tollgate::testkit::{MockOAuth, MockUpstream};

const OTHER_KEY: &str = "sk-other-team";

fn other_sha() -> String {
    hex::encode(tollgate::auth::hash_key(OTHER_KEY))
}

/// The built-in mock behind `mock-gpt`, teams `demo` and `other`, a SQLite store in `dir`.
fn config(dir: &std::path::Path, mock: &str, batch: &str) -> String {
    format!(
        r#"
upstreams:
  mock:
    provider: mock
    mock: {mock}
models:
  mock-gpt: {{ targets: [ {{ upstream: mock }} ] }}
teams:
  demo: {{ models: ["*"] }}
  other: {{ models: ["*"] }}
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}
  - {{ name: other, team: other, sha256: {other} }}
admin: {{ key: "${{ADMIN_KEY}}" }}
store:
  url: "sqlite://{db}?mode=rwc"
  usage: {{ batch_interval: 20ms, spill_path: {spill} }}
batch:
  files_dir: {files}
  poll_interval: 50ms
{batch}
"#,
        other = other_sha(),
        db = dir.join("t.db").display(),
        spill = dir.join("spill.jsonl").display(),
        files = dir.join("files").display(),
    )
}

async fn start(yaml: &str) -> Gateway {
    let env = std::collections::HashMap::from([("ADMIN_KEY".to_owned(), "sk-admin".to_owned())]);
    Gateway::start_with_env(yaml, env).await
}

fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"))
}

#[tokio::test]
async fn a_batch_runs_from_upload_to_output_file_and_only_its_team_sees_it() {
    let dir = tmp();
    let gw = start(&config(dir.path(), "{}", "")).await;
    let api = Api::new(&gw.url(""), DEMO_KEY);
    let other = Api::new(&gw.url(""), OTHER_KEY);

    // Files: upload, retrieve, list; another team's key sees none of it.
    let n = 25;
    let (status, file) = api.upload("in.jsonl", chat_lines(n, "mock-gpt")).await;
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["object"], "file");
    assert_eq!(file["purpose"], "batch");
    assert_eq!(file["filename"], "in.jsonl");
    assert_eq!(
        file["bytes"].as_u64(),
        Some(chat_lines(n, "mock-gpt").len() as u64)
    );
    let fid = file["id"].as_str().unwrap_or_default().to_owned();
    let (status, got) = api.get(&format!("/v1/files/{fid}")).await;
    assert_eq!((status, got["id"].clone()), (200, json!(fid)));
    let (_, list) = api.get("/v1/files").await;
    assert_eq!(list["data"][0]["id"], json!(fid));
    assert_eq!(api.content(&fid).await, chat_lines(n, "mock-gpt"));
    for path in [
        format!("/v1/files/{fid}"),
        format!("/v1/files/{fid}/content"),
    ] {
        let (status, body) = other.get(&path).await;
        assert_eq!(status, 404, "{path}: {body}");
        assert_eq!(body["error"]["type"], "invalid_request_error");
    }
    let (_, list) = other.get("/v1/files").await;
    assert_eq!(list["data"], json!([]));

    // The batch: validating -> ... -> completed, one output line per input line.
    let (status, b) = api
        .post(
            "/v1/batches",
            json!({"input_file_id": fid, "endpoint": "/v1/chat/completions",
                   "completion_window": "24h", "metadata": {"job": "nightly"}}),
        )
        .await;
    assert_eq!(status, 200, "{b}");
    assert_eq!(b["object"], "batch");
    assert_eq!(b["status"], "validating");
    assert_eq!(b["metadata"]["job"], "nightly");
    let id = b["id"].as_str().unwrap_or_default().to_owned();
    let (status, _) = other.get(&format!("/v1/batches/{id}")).await;
    assert_eq!(status, 404);
    let (status, _) = other
        .post(&format!("/v1/batches/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 404);

    let b = api.wait_end(&id, Duration::from_secs(30)).await;
    assert_eq!(b["status"], "completed", "{b}");
    assert_eq!(
        b["request_counts"],
        json!({"total": n, "completed": n, "failed": 0})
    );
    for t in ["in_progress_at", "finalizing_at", "completed_at"] {
        assert!(b[t].as_i64().is_some(), "{t} unset: {b}");
    }
    assert!(b["error_file_id"].is_null(), "{b}");
    let lines = format!("tollgate_batch_lines_total{{outcome=\"completed\"}} {n}");
    let metrics = gw.metrics_text().await;
    assert!(metrics.contains(&lines), "{lines} not in {metrics}");
    let (output, errors) = files_of(&api, &b).await;
    assert_eq!(results(&output, &errors), expected(n));
    let first: Value =
        serde_json::from_str(output.lines().next().unwrap_or("")).unwrap_or_default();
    assert!(
        first["id"].as_str().unwrap_or("").starts_with("batch_req_"),
        "{first}"
    );
    assert!(first["response"]["request_id"].is_string(), "{first}");
    assert!(first["error"].is_null());
    let (_, list) = api.get("/v1/batches?limit=5").await;
    assert_eq!(list["data"][0]["id"], json!(id));
    assert!(other.get("/v1/batches").await.1["data"] == json!([]));

    // Usage rows carry the batch id: the admin view's spend counts every line.
    let view = wait_admin(&gw, &id, |v| v["spend"]["requests"] == json!(n)).await;
    assert!(
        view["spend"]["cost_usd"].as_f64().unwrap_or(0.0) > 0.0,
        "{view}"
    );
    assert_eq!(view["batch"]["request_counts"]["completed"], json!(n));

    // A finished batch's input may go; a running one's may not (see the cancel test).
    let (status, del) = api.delete(&format!("/v1/files/{fid}")).await;
    assert_eq!((status, del["deleted"].clone()), (200, json!(true)));
    let (status, _) = api.get(&format!("/v1/files/{fid}")).await;
    assert_eq!(status, 404);
    gw.stop().await;
}

/// Poll the admin view of a batch until `done` holds (bounded).
async fn wait_admin(gw: &Gateway, id: &str, done: impl Fn(&Value) -> bool) -> Value {
    let start = std::time::Instant::now();
    loop {
        let resp = gw
            .client
            .get(gw.url(&format!("/admin/batches/{id}")))
            .bearer_auth("sk-admin")
            .send()
            .await
            .unwrap_or_else(|e| panic!("admin view: {e}"));
        assert_eq!(resp.status().as_u16(), 200);
        let v: Value = resp.json().await.unwrap_or_default();
        if done(&v) {
            return v;
        }
        assert!(start.elapsed() < Duration::from_secs(10), "admin view: {v}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_bad_input_file_fails_validation_naming_each_line() {
    let dir = tmp();
    let gw = start(&config(
        dir.path(),
        "{}",
        "  max_line_bytes: 400\n  max_lines: 7",
    ))
    .await;
    let api = Api::new(&gw.url(""), DEMO_KEY);
    let good = chat_lines(2, "mock-gpt");
    let mut lines: Vec<String> = good.lines().map(str::to_owned).collect();
    lines.push("{not json".into());
    lines.push(lines[0].clone());
    lines.push(
        lines[1]
            .replace("req-1", "req-x")
            .replace("/v1/chat/completions", "/v1/embeddings"),
    );
    lines.push(
        lines[1]
            .replace("req-1", "req-y")
            .replace("/v1/chat/completions", "/v1/nope"),
    );
    lines.push(
        lines[1]
            .replace("req-1", "req-z")
            .replace("line 1", &"long ".repeat(100)),
    );
    let b = api.submit(lines.join("\n"), "/v1/chat/completions").await;
    let b = api
        .wait_end(
            b["id"].as_str().unwrap_or_default(),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(b["status"], "failed", "{b}");
    assert!(b["failed_at"].is_i64());
    let errs: Vec<(String, i64)> = b["errors"]["data"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|e| {
                    (
                        e["code"].as_str().unwrap_or("").to_owned(),
                        e["line"].as_i64().unwrap_or(0),
                    )
                })
                .collect()
        })
        .unwrap_or_default();
    assert_eq!(
        errs,
        vec![
            ("invalid_json_line".to_owned(), 3),
            ("duplicate_custom_id".to_owned(), 4),
            ("mismatched_url".to_owned(), 5),
            ("invalid_url".to_owned(), 6),
            ("line_too_large".to_owned(), 7),
        ],
        "{b}"
    );
    assert_eq!(b["errors"]["object"], "list");
    assert!(b["errors"]["data"][0]["message"]
        .as_str()
        .unwrap_or("")
        .contains("Line 3"));

    // More lines than `max_lines`.
    let b = api
        .submit(chat_lines(8, "mock-gpt"), "/v1/chat/completions")
        .await;
    let b = api
        .wait_end(
            b["id"].as_str().unwrap_or_default(),
            Duration::from_secs(20),
        )
        .await;
    assert_eq!(b["status"], "failed");
    assert_eq!(b["errors"]["data"][0]["code"], "too_many_requests");
    assert_eq!(b["errors"]["data"][0]["line"], 8);

    // Refused at once: an unknown endpoint, a window other than 24h, another purpose, no file.
    let (_, file) = api.upload("in.jsonl", chat_lines(1, "mock-gpt")).await;
    for (body, param) in [
        (
            json!({"input_file_id": file["id"], "endpoint": "/v1/images", "completion_window": "24h"}),
            "endpoint",
        ),
        (
            json!({"input_file_id": file["id"], "endpoint": "/v1/embeddings", "completion_window": "1h"}),
            "completion_window",
        ),
    ] {
        let (status, e) = api.post("/v1/batches", body).await;
        assert_eq!(status, 400, "{e}");
        assert_eq!(e["error"]["param"], param);
    }
    let (status, e) = api
        .post("/v1/batches", json!({"input_file_id": "file-nope", "endpoint": "/v1/embeddings", "completion_window": "24h"}))
        .await;
    assert_eq!(status, 404, "{e}");
    let (status, e) = api
        .upload_purpose("x.jsonl", "{}".into(), "fine-tune")
        .await;
    assert_eq!(
        (status, e["error"]["param"].clone()),
        (400, json!("purpose"))
    );
    gw.stop().await;
}

#[tokio::test]
async fn an_upload_over_the_size_limit_is_refused_and_leaves_nothing() {
    let dir = tmp();
    let gw = start(&config(dir.path(), "{}", "  max_file_bytes: 1000")).await;
    let api = Api::new(&gw.url(""), DEMO_KEY);
    let (status, e) = api.upload("big.jsonl", "x".repeat(5000)).await;
    assert_eq!(status, 413, "{e}");
    let (_, list) = api.get("/v1/files").await;
    assert_eq!(list["data"], json!([]));
    let left: Vec<_> = std::fs::read_dir(dir.path().join("files"))
        .map(|d| d.filter_map(Result::ok).map(|e| e.file_name()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
    gw.stop().await;
}

#[tokio::test]
async fn a_batch_cancelled_midway_ends_cancelled_with_what_was_done() {
    let dir = tmp();
    // Each line takes ~50 ms; two at a time.
    let gw = start(&config(dir.path(), "{ latency: 50ms }", "  concurrency: 2")).await;
    let api = Api::new(&gw.url(""), DEMO_KEY);
    let n = 200;
    let b = api
        .submit(chat_lines(n, "mock-gpt"), "/v1/chat/completions")
        .await;
    let id = b["id"].as_str().unwrap_or_default().to_owned();
    api.wait_for(&id, Duration::from_secs(20), |b| {
        b["request_counts"]["completed"].as_i64().unwrap_or(0) >= 4
    })
    .await;
    // Its input cannot be deleted while it runs.
    let (status, e) = api
        .delete(&format!(
            "/v1/files/{}",
            b["input_file_id"].as_str().unwrap_or("")
        ))
        .await;
    assert_eq!(status, 409, "{e} {b}");
    let (status, c) = api
        .post(&format!("/v1/batches/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200, "{c}");
    assert_eq!(c["status"], "cancelling");
    let b = api.wait_end(&id, Duration::from_secs(20)).await;
    assert_eq!(b["status"], "cancelled", "{b}");
    assert!(b["cancelled_at"].is_i64());
    let done = b["request_counts"]["completed"].as_u64().unwrap_or(0) as usize;
    assert!((4..n).contains(&done), "{b}");
    let (output, errors) = files_of(&api, &b).await;
    let got = results(&output, &errors);
    assert_eq!(got.len(), done);
    let want = expected(n);
    for (k, v) in &got {
        assert_eq!(Some(v), want.get(k));
    }
    // Cancelling an ended batch is refused.
    let (status, _) = api
        .post(&format!("/v1/batches/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 409);
    gw.stop().await;
}

/// Upstream behind an OAuth2 token that lives 2 seconds, failing 20% of calls.
fn faulty_config(dir: &std::path::Path, up: &MockUpstream, oauth: &MockOAuth) -> String {
    format!(
        r#"
credentials:
  up-cred:
    kind: oauth2
    token_url: {token_url}
    client_id: cid
    client_secret: "${{OA_SECRET}}"
    min_renew_interval: 100ms
upstreams:
  up:
    provider: openai
    base_url: {base}
    credential: up-cred
    timeouts: {{ first_byte: 5s }}
models:
  gpt: {{ targets: [ {{ upstream: up }} ] }}
teams:
  demo: {{ models: ["*"], rpm: 100000, max_concurrent: 8 }}
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}
store:
  url: "sqlite://{db}?mode=rwc"
  usage: {{ spill_path: {spill} }}
batch:
  files_dir: {files}
  poll_interval: 50ms
  concurrency: 8
  retry_backoff: 20ms
  max_attempts: 20
"#,
        token_url = oauth.token_url(),
        base = up.base_url(),
        db = dir.join("t.db").display(),
        spill = dir.join("spill.jsonl").display(),
        files = dir.join("files").display(),
    )
}

#[tokio::test]
async fn two_second_tokens_and_a_fifth_of_calls_failing_still_give_one_answer_per_line() {
    let dir = tmp();
    let oauth = MockOAuth::start()
        .await
        .unwrap_or_else(|e| panic!("oauth: {e}"));
    oauth.add_client("cid", "cs-1");
    oauth.set_lifetime(Duration::from_secs(2));
    let up = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("upstream: {e}"));
    up.set_auth_check(Some(oauth.bearer_check()));
    up.set_first_byte_delay(Duration::from_millis(10));
    up.set_random_failure_rate(0.2);
    let env = std::collections::HashMap::from([("OA_SECRET".to_owned(), "cs-1".to_owned())]);
    let gw = Gateway::start_with_env(&faulty_config(dir.path(), &up, &oauth), env).await;
    let api = Api::new(&gw.url(""), DEMO_KEY);
    let n = 600;
    let b = api
        .submit(chat_lines(n, "gpt"), "/v1/chat/completions")
        .await;
    let b = api
        .wait_end(
            b["id"].as_str().unwrap_or_default(),
            Duration::from_secs(120),
        )
        .await;
    assert_eq!(b["status"], "completed", "{b}");
    assert_eq!(
        b["request_counts"],
        json!({"total": n, "completed": n, "failed": 0}),
        "{b}"
    );
    let (output, errors) = files_of(&api, &b).await;
    let got = results(&output, &errors);
    let want: std::collections::BTreeMap<_, _> = (0..n)
        .map(|i| (format!("req-{i}"), (200, format!("echo: line {i}"))))
        .collect();
    assert_eq!(got, want);
    assert!(
        oauth.issued() >= 2,
        "the token was renewed: {}",
        oauth.issued()
    );
    assert_eq!(
        oauth.rejected_expired(),
        0,
        "an expired token reached the upstream"
    );
    gw.stop().await;
}

/// Two gateways share one PostgreSQL store (and one files directory): each line is done once.
#[tokio::test]
async fn two_gateways_on_one_postgres_share_a_batch_and_do_each_line_once() {
    let pg = common::PgDb::create().await;
    let dir = tmp();
    let up = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("upstream: {e}"));
    up.set_first_byte_delay(Duration::from_millis(5));
    let cfg = format!(
        r#"
upstreams:
  up: {{ provider: openai, base_url: {base} }}
models:
  gpt: {{ targets: [ {{ upstream: up }} ] }}
teams:
  demo: {{ models: ["*"] }}
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}
store:
  url: "{pg}"
  usage: {{ spill_path: {spill} }}
batch:
  files_dir: {files}
  poll_interval: 20ms
  concurrency: 4
"#,
        base = up.base_url(),
        pg = pg.url,
        spill = dir.path().join("spill.jsonl").display(),
        files = dir.path().join("files").display(),
    );
    let a = Gateway::start(&cfg).await;
    let b_gw = Gateway::start(&cfg).await;
    let api = Api::new(&a.url(""), DEMO_KEY);
    let n = 400;
    let b = api
        .submit(chat_lines(n, "gpt"), "/v1/chat/completions")
        .await;
    let b = Api::new(&b_gw.url(""), DEMO_KEY)
        .wait_end(
            b["id"].as_str().unwrap_or_default(),
            Duration::from_secs(60),
        )
        .await;
    assert_eq!(b["status"], "completed", "{b}");
    assert_eq!(b["request_counts"]["completed"], json!(n));
    let (output, errors) = files_of(&api, &b).await;
    let got = results(&output, &errors);
    let want: std::collections::BTreeMap<_, _> = (0..n)
        .map(|i| (format!("req-{i}"), (200, format!("echo: line {i}"))))
        .collect();
    assert_eq!(got, want);
    // Each line reached the upstream exactly once, from one of the two gateways.
    assert_eq!(up.request_count(), n, "a line was sent twice");
    a.stop().await;
    b_gw.stop().await;
}

/// A pool member revoked midway (its token answers 401 from then on): the pool rotates to the
/// others and every line still ends with one answer.
#[tokio::test]
async fn a_pool_member_revoked_midway_still_gives_one_answer_per_line() {
    let dir = tmp();
    let up = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("upstream: {e}"));
    up.set_first_byte_delay(Duration::from_millis(5));
    let cfg = format!(
        r#"
credentials:
  up-key: {{ kind: pool, tokens: ["tok-1", "tok-2", "tok-3"] }}
upstreams:
  up: {{ provider: openai, base_url: {base}, credential: up-key }}
models:
  gpt: {{ targets: [ {{ upstream: up }} ] }}
teams:
  demo: {{ models: ["*"] }}
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}
store:
  url: "sqlite://{db}?mode=rwc"
  usage: {{ spill_path: {spill} }}
batch:
  files_dir: {files}
  poll_interval: 50ms
  concurrency: 4
  retry_backoff: 20ms
"#,
        base = up.base_url(),
        db = dir.path().join("t.db").display(),
        spill = dir.path().join("spill.jsonl").display(),
        files = dir.path().join("files").display(),
    );
    let gw = Gateway::start(&cfg).await;
    let api = Api::new(&gw.url(""), DEMO_KEY);
    let n = 300;
    let b = api
        .submit(chat_lines(n, "gpt"), "/v1/chat/completions")
        .await;
    let id = b["id"].as_str().unwrap_or_default().to_owned();
    api.wait_for(&id, Duration::from_secs(30), |b| {
        b["request_counts"]["completed"].as_i64().unwrap_or(0) >= 30
    })
    .await;
    up.set_recording(true);
    up.set_token_status("tok-2", Some((401, None)));
    let b = api.wait_end(&id, Duration::from_secs(60)).await;
    let refused = up
        .received()
        .iter()
        .filter(|r| {
            r.headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer tok-2")
        })
        .count();
    assert!(refused > 0, "the revoked member was never tried");
    assert_eq!(b["status"], "completed", "{b}");
    let (output, errors) = files_of(&api, &b).await;
    let got = results(&output, &errors);
    let want: std::collections::BTreeMap<_, _> = (0..n)
        .map(|i| (format!("req-{i}"), (200, format!("echo: line {i}"))))
        .collect();
    assert_eq!(got, want);
    gw.stop().await;
}

/// A batch takes at most its share of the team's rate limit and backs off when it meets it:
/// with `rpm: 60` and `share: 0.5` its lines stop after 30 in the minute, none of them failed,
/// and the team's interactive requests still get the other half.
#[tokio::test]
async fn a_batch_stops_at_its_share_of_the_team_rate_and_interactive_requests_keep_the_rest() {
    let dir = tmp();
    let cfg = config(dir.path(), "{}", "  share: 0.5\n  retry_backoff: 20ms").replace(
        "demo: { models: [\"*\"] }",
        "demo: { models: [\"*\"], rpm: 60 }",
    );
    assert!(cfg.contains("rpm: 60"), "{cfg}");
    let gw = start(&cfg).await;
    let api = Api::new(&gw.url(""), DEMO_KEY);
    let n = 100;
    let b = api
        .submit(chat_lines(n, "mock-gpt"), "/v1/chat/completions")
        .await;
    let id = b["id"].as_str().unwrap_or_default().to_owned();
    let b = api
        .wait_for(&id, Duration::from_secs(20), |b| {
            b["request_counts"]["completed"].as_i64().unwrap_or(0) >= 30
        })
        .await;
    // The batch's half of the minute is spent; the team's other half is not.
    let mut statuses = Vec::new();
    for _ in 0..20 {
        let r = gw
            .post(
                "/v1/chat/completions",
                common::chat("mock-gpt", "now", false),
            )
            .await;
        statuses.push(r.status().as_u16());
    }
    assert!(statuses.iter().all(|s| *s == 200), "{statuses:?}");
    let (_, now) = api.get(&format!("/v1/batches/{id}")).await;
    let done = now["request_counts"]["completed"].as_i64().unwrap_or(0);
    assert!(
        (30..=33).contains(&done),
        "the batch went past its share: {now}"
    );
    assert_eq!(
        now["request_counts"]["failed"],
        json!(0),
        "a limited line failed: {now}"
    );
    assert_eq!(now["status"], "in_progress", "{b}");
    let (status, _) = api
        .post(&format!("/v1/batches/{id}/cancel"), json!({}))
        .await;
    assert_eq!(status, 200);
    let b = api.wait_end(&id, Duration::from_secs(20)).await;
    assert_eq!(b["status"], "cancelled", "{b}");
    assert_eq!(b["request_counts"]["failed"], json!(0), "{b}");
    gw.stop().await;
}

/// A batch runs as the key that made it: once that store key has expired (or is revoked), its
/// remaining lines are refused (401) and end in the error file, not answered on its team's
/// account; the lines before were answered.
#[tokio::test]
async fn a_batch_stops_answering_when_its_key_expires() {
    let dir = tmp();
    let gw = start(&config(
        dir.path(),
        "{ latency: 150ms }",
        "  concurrency: 1\n",
    ))
    .await;
    let admin = Api::new(&gw.url(""), "sk-admin");
    let (status, k) = admin
        .post(
            "/admin/keys",
            json!({"team": "demo", "name": "short", "expires_in_secs": 1}),
        )
        .await;
    assert_eq!(status, 201, "{k}");
    let api = Api::new(&gw.url(""), k["key"].as_str().unwrap_or_default());
    let n = 20;
    let b = api
        .submit(chat_lines(n, "mock-gpt"), "/v1/chat/completions")
        .await;
    let id = b["id"].as_str().unwrap_or_default().to_owned();
    // The key is gone for the batch's own status too: read it with another key of the team.
    let watcher = Api::new(&gw.url(""), DEMO_KEY);
    let b = watcher.wait_end(&id, Duration::from_secs(30)).await;
    let counts = &b["request_counts"];
    assert_eq!(counts["total"], n, "{b}");
    let failed = counts["failed"].as_u64().unwrap_or(0);
    assert!(failed >= 1, "no line refused after the key expired: {b}");
    let (_, errors) = files_of(&watcher, &b).await;
    assert!(
        errors.lines().all(|l| l.contains("\"status_code\":401")),
        "{errors}"
    );
    gw.stop().await;
}

/// A `purpose` field is read bounded: a long one is a 400 naming it, not read whole.
#[tokio::test]
async fn an_overlong_purpose_field_is_refused() {
    let dir = tmp();
    let gw = start(&config(dir.path(), "{}", "")).await;
    let api = Api::new(&gw.url(""), DEMO_KEY);
    let (status, body) = api
        .upload_purpose(
            "in.jsonl",
            chat_lines(1, "mock-gpt"),
            &"b".repeat(64 * 1024),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["error"]["param"], "purpose", "{body}");
    gw.stop().await;
}

/// `batch.upstream_share`: batch lines hold at most their share of an upstream's slots
/// (`max_concurrent: 4`, share 0.5: 2), however many the batch may run, and interactive
/// requests find the rest free at once: the upstream has no queue (`max_queue: 0`), so an
/// interactive request finding every slot taken would be answered 503.
#[tokio::test]
async fn batch_lines_hold_at_most_their_share_of_an_upstream_and_interactive_requests_find_the_rest(
) {
    let dir = tmp();
    let up = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("mock upstream: {e}"));
    up.set_first_byte_delay(Duration::from_millis(150));
    let cfg = format!(
        r#"
upstreams:
  up: {{ provider: openai, base_url: "{base}", max_concurrent: 4, max_queue: 0 }}
models:
  gpt: {{ targets: [ {{ upstream: up }} ] }}
teams:
  demo: {{ models: ["*"] }}
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}
store:
  url: "sqlite://{db}?mode=rwc"
  usage: {{ spill_path: {spill} }}
batch:
  files_dir: {files}
  poll_interval: 50ms
  concurrency: 8
  upstream_share: 0.5
  retry_backoff: 20ms
"#,
        base = up.base_url(),
        db = dir.path().join("t.db").display(),
        spill = dir.path().join("spill.jsonl").display(),
        files = dir.path().join("files").display(),
    );
    let gw = start(&cfg).await;
    let api = Api::new(&gw.url(""), DEMO_KEY);
    let n = 16;
    let b = api
        .submit(chat_lines(n, "gpt"), "/v1/chat/completions")
        .await;
    let id = b["id"].as_str().unwrap_or_default().to_owned();
    // Two rounds of lines with the batch alone: never more than its 2 slots at once.
    assert!(up.wait_requests(4, Duration::from_secs(20)).await);
    assert_eq!(up.peak_in_flight(), 2, "the batch took more than its share");
    // Interactive requests, two at a time, while the batch holds its share: all answered.
    for round in 0..3 {
        let (a, b) = tokio::join!(
            gw.post("/v1/chat/completions", common::chat("gpt", "now", false)),
            gw.post("/v1/chat/completions", common::chat("gpt", "too", false)),
        );
        let statuses = [a.status().as_u16(), b.status().as_u16()];
        assert_eq!(statuses, [200, 200], "round {round}");
    }
    let b = api.wait_end(&id, Duration::from_secs(30)).await;
    assert_eq!(b["status"], "completed", "{b}");
    assert_eq!(b["request_counts"]["completed"], json!(n), "{b}");
    let (out, errors) = files_of(&api, &b).await;
    let got = results(&out, &errors);
    assert_eq!(got.len(), n, "one output line per input line");
    assert!(got.values().all(|(status, _)| *status == 200), "{got:?}");
    assert!(up.peak_in_flight() <= 4);
    gw.stop().await;
    up.shutdown().await;
}

/// A team's batches run by `metadata.priority` (higher first, then oldest): a batch made later
/// with a higher priority takes the turn from a running one, which goes on afterwards and still
/// ends with one answer per line. A priority that is not an integer in range is refused.
#[tokio::test]
async fn a_later_batch_of_higher_priority_runs_first_and_the_other_resumes() {
    let dir = tmp();
    let gw = start(&config(
        dir.path(),
        "{ latency: 40ms }",
        "  concurrency: 2\n  retry_backoff: 20ms",
    ))
    .await;
    let api = Api::new(&gw.url(""), DEMO_KEY);
    let (n_low, n_high) = (40, 6);
    let low = api
        .submit(chat_lines(n_low, "mock-gpt"), "/v1/chat/completions")
        .await;
    let low_id = low["id"].as_str().unwrap_or_default().to_owned();
    api.wait_for(&low_id, Duration::from_secs(20), |b| {
        b["request_counts"]["completed"].as_i64().unwrap_or(0) >= 2
    })
    .await;

    let (status, file) = api
        .upload("high.jsonl", chat_lines(n_high, "mock-gpt"))
        .await;
    assert_eq!(status, 200, "{file}");
    for bad in ["urgent", "1001", "1.5"] {
        let (status, err) = api
            .post(
                "/v1/batches",
                json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                       "completion_window": "24h", "metadata": {"priority": bad}}),
            )
            .await;
        assert_eq!(status, 400, "{bad}: {err}");
        assert_eq!(err["error"]["param"], "metadata.priority", "{err}");
    }
    let (status, high) = api
        .post(
            "/v1/batches",
            json!({"input_file_id": file["id"], "endpoint": "/v1/chat/completions",
                   "completion_window": "24h", "metadata": {"priority": "10"}}),
        )
        .await;
    assert_eq!(status, 200, "{high}");
    assert_eq!(high["metadata"]["priority"], "10");
    let high_id = high["id"].as_str().unwrap_or_default().to_owned();
    let high = api.wait_end(&high_id, Duration::from_secs(20)).await;
    assert_eq!(high["status"], "completed", "{high}");
    let (_, low_now) = api.get(&format!("/v1/batches/{low_id}")).await;
    assert_eq!(low_now["status"], "in_progress", "{low_now}");
    assert!(
        low_now["request_counts"]["completed"].as_i64().unwrap_or(0) < n_low as i64 - 10,
        "the older batch kept running beside the urgent one: {low_now}"
    );
    let low = api.wait_end(&low_id, Duration::from_secs(30)).await;
    assert_eq!(low["status"], "completed", "{low}");
    for (b, n) in [(&low, n_low), (&high, n_high)] {
        let (out, errors) = files_of(&api, b).await;
        assert_eq!(results(&out, &errors), expected(n), "one answer per line");
    }
    gw.stop().await;
}
