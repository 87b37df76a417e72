//! The core path against a real HTTP upstream (the test kit's mock), through real sockets:
//! passthrough, credentials placement, header allowlist, upstream errors, cancellation,
//! graceful shutdown, framing and slow clients.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{chat, sse_events, stream_content, Gateway, DEMO_KEY, DEMO_KEY_SHA256};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate::testkit::{Fault, MockUpstream};

async fn mock() -> MockUpstream {
    MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("mock: {e}"))
}

/// One `openai` upstream at `base_url` serving `gpt` (sent upstream as `served-model`), no retries.
fn config(base_url: &str, extra_upstream: &str, server: &str) -> String {
    format!(
        r#"
server:
  header_read_timeout: 500ms
  body_read_timeout: 500ms
{server}
credentials:
  up-key: {{ kind: static, secret: "${{UP_KEY}}" }}
upstreams:
  up:
    provider: openai
    base_url: {base_url}
    credential: up-key
    model: served-model
    timeouts: {{ connect: 500ms, first_byte: 300ms, idle: 300ms, total: 10s }}
{extra_upstream}
models:
  gpt: {{ targets: [ {{ upstream: up }} ], retry: {{ max_attempts: 1 }} }}
teams:
  demo: {{ models: ["*"] }}
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}
"#
    )
}

fn env() -> HashMap<String, String> {
    HashMap::from([("UP_KEY".to_string(), "upstream-secret-1".to_string())])
}

async fn start(m: &MockUpstream) -> Gateway {
    Gateway::start_with_env(&config(&m.base_url(), "", ""), env()).await
}

async fn json_of(resp: reqwest::Response) -> Value {
    resp.json::<Value>()
        .await
        .unwrap_or_else(|e| panic!("not JSON: {e}"))
}

#[tokio::test]
async fn unknown_fields_pass_both_ways_and_model_is_replaced() {
    let m = mock().await;
    let gw = start(&m).await;
    let mut body = chat("gpt", "hi there", false);
    body["tools"] = json!([{"type": "function", "function": {"name": "f", "parameters": {}}}]);
    body["response_format"] = json!({"type": "json_object"});
    body["logprobs"] = json!(true);
    let resp = gw.post("/v1/chat/completions", body).await;
    assert_eq!(resp.status(), 200);
    let seen = &m.received()[0];
    assert_eq!(seen.body["model"], "served-model");
    assert_eq!(seen.body["tools"][0]["function"]["name"], "f");
    assert_eq!(seen.body["response_format"]["type"], "json_object");
    assert_eq!(seen.body["logprobs"], true);

    // A response field Tollgate does not know reaches the client untouched; `model` carries
    // the client-facing name, not the one sent upstream.
    let answer = json!({"id": "x", "object": "chat.completion", "model": "served-model",
        "system_fingerprint": "fp_123", "choices": [{"index": 0, "message": {"role": "assistant",
        "content": "hey"}, "logprobs": {"content": []}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}});
    m.push_fault(Fault::Status {
        status: 200,
        body: answer.to_string(),
        retry_after: None,
    });
    let v = json_of(
        gw.post("/v1/chat/completions", chat("gpt", "x", false))
            .await,
    )
    .await;
    let mut expected = answer.clone();
    expected["model"] = json!("gpt");
    assert_eq!(v, expected);
}

/// An upstream that renames the model (`model: served-model`) answers with its own name; the
/// client sees the name it asked for, in a JSON answer, in every stream chunk (the usage chunk
/// too) and in embeddings (where `model` comes after the vectors), unless the model says
/// `keep_upstream_model: true`. Nothing else of the answer changes.
#[tokio::test]
async fn answers_carry_the_client_facing_model_name_unless_told_to_keep_the_upstreams() {
    let m = mock().await;
    for keep in [false, true] {
        let mut cfg = config(&m.base_url(), "", "");
        if keep {
            cfg = cfg.replace(
                "retry: { max_attempts: 1 } }",
                "retry: { max_attempts: 1 }, keep_upstream_model: true }",
            );
        }
        let gw = Gateway::start_with_env(&cfg, env()).await;
        let want = if keep { "served-model" } else { "gpt" };

        let v = json_of(
            gw.post("/v1/chat/completions", chat("gpt", "a b c", false))
                .await,
        )
        .await;
        assert_eq!(v["model"], want, "{v}");
        assert_eq!(v["choices"][0]["message"]["content"], "echo: a b c");
        assert!(v["usage"]["completion_tokens"].as_u64().is_some(), "{v}");

        let mut body = chat("gpt", "one two three four", true);
        body["stream_options"] = json!({"include_usage": true});
        let resp = gw.post("/v1/chat/completions", body).await;
        assert_eq!(resp.status(), 200);
        let events = sse_events(resp).await;
        assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
        let chunks: Vec<Value> = events[..events.len() - 1]
            .iter()
            .map(|e| serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}")))
            .collect();
        assert!(chunks.len() >= 3, "{events:?}");
        for c in &chunks {
            assert_eq!(c["model"], want, "{c}");
        }
        assert!(
            chunks.last().is_some_and(|c| c["usage"].is_object()),
            "{events:?}"
        );
        assert_eq!(stream_content(&events), "echo: one two three four");

        // Without include_usage the usage chunk is still removed, the rest renamed.
        let events = sse_events(
            gw.post("/v1/chat/completions", chat("gpt", "x y", true))
                .await,
        )
        .await;
        assert!(
            events.iter().all(|e| !e.contains("\"usage\"")),
            "{events:?}"
        );
        assert!(
            events
                .iter()
                .filter(|e| *e != "[DONE]")
                .all(|e| e.contains(&format!("\"model\":\"{want}\""))),
            "{events:?}"
        );

        let v = json_of(
            gw.post(
                "/v1/embeddings",
                json!({"model": "gpt", "input": ["a", "b"]}),
            )
            .await,
        )
        .await;
        assert_eq!(v["model"], want, "{v}");
        assert_eq!(v["data"].as_array().map(Vec::len), Some(2), "{v}");
        gw.stop().await;
    }
    // The upstream was always asked for its own name.
    assert!(m
        .received()
        .iter()
        .all(|r| r.body["model"] == "served-model"));
}

#[tokio::test]
async fn only_allowlisted_headers_reach_the_upstream() {
    let m = mock().await;
    let gw = start(&m).await;
    let resp = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(DEMO_KEY)
        .header("x-api-key", DEMO_KEY)
        .header("cookie", "session=1")
        .header("x-custom", "nope")
        .header("user-agent", "test-agent/1")
        .header("x-request-id", "rid-42")
        .json(&chat("gpt", "x", false))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), 200);
    let seen = &m.received()[0];
    let h = &seen.headers;
    assert_eq!(h["authorization"], "Bearer upstream-secret-1");
    assert_eq!(h["user-agent"], "test-agent/1");
    assert_eq!(h["x-request-id"], "rid-42");
    for gone in ["x-api-key", "cookie", "x-custom"] {
        assert!(h.get(gone).is_none(), "{gone} reached the upstream");
    }
    assert!(!format!("{h:?}").contains(DEMO_KEY));
}

#[tokio::test]
async fn static_key_in_a_named_header_or_query_parameter() {
    for (placement, check) in [
        ("{ header: api-key }", "header"),
        ("{ query: key }", "query"),
    ] {
        let m = mock().await;
        let cfg = config(&m.base_url(), "", "").replace(
            "up-key: { kind: static, secret: \"${UP_KEY}\" }",
            &format!("up-key: {{ kind: static, secret: \"${{UP_KEY}}\", placement: {placement} }}"),
        );
        let gw = Gateway::start_with_env(&cfg, env()).await;
        assert_eq!(
            gw.post("/v1/chat/completions", chat("gpt", "x", false))
                .await
                .status(),
            200
        );
        let seen = &m.received()[0];
        match check {
            "header" => {
                assert_eq!(seen.headers["api-key"], "upstream-secret-1");
                assert!(seen.headers.get("authorization").is_none());
            }
            _ => assert_eq!(seen.query.as_deref(), Some("key=upstream-secret-1")),
        }
    }
}

/// A credential carried in the query is form-encoded once, with the token, and appended to the
/// pre-parsed endpoint URI: characters that mean something in a query arrive intact, and the
/// path is the configured one. Every request of the pooled client carries it.
#[tokio::test]
async fn a_query_credential_is_encoded_and_appended_to_the_endpoint() {
    let m = mock().await;
    let cfg = config(&m.base_url(), "", "").replace(
        "up-key: { kind: static, secret: \"${UP_KEY}\" }",
        "up-key: { kind: static, secret: \"${UP_KEY}\", placement: { query: access_token } }",
    );
    let secret = "s3cr t+/=&x?é";
    let env = HashMap::from([("UP_KEY".to_string(), secret.to_string())]);
    let gw = Gateway::start_with_env(&cfg, env).await;
    for _ in 0..3 {
        let resp = gw
            .post("/v1/chat/completions", chat("gpt", "x", true))
            .await;
        assert_eq!(resp.status(), 200);
        assert!(resp.text().await.unwrap_or_default().contains("[DONE]"));
    }
    let seen = m.received();
    assert_eq!(seen.len(), 3);
    for r in &seen {
        assert_eq!(r.path, "/v1/chat/completions");
        let q = r.query.as_deref().unwrap_or_default();
        assert_eq!(q, "access_token=s3cr+t%2B%2F%3D%26x%3F%C3%A9");
        assert_eq!(
            tollgate::testkit::form_get(q, "access_token").as_deref(),
            Some(secret)
        );
        assert!(r.headers.get("authorization").is_none());
    }
}

#[tokio::test]
async fn upstream_errors_pass_through_with_their_status() {
    let m = mock().await;
    let gw = start(&m).await;
    let err = json!({"error": {"message": "boom", "type": "server_error", "param": null,
        "code": "boom"}});
    m.push_fault(Fault::Status {
        status: 500,
        body: err.to_string(),
        retry_after: None,
    });
    let resp = gw
        .post("/v1/chat/completions", chat("gpt", "x", false))
        .await;
    assert_eq!(resp.status(), 500);
    assert_eq!(json_of(resp).await, err);

    // A non-JSON error body is replaced by Tollgate's own OpenAI-shaped message (it used to
    // be wrapped with the upstream's text, which let HTML pages with internals through).
    m.push_fault(Fault::Status {
        status: 503,
        body: "<html>bad gateway</html>".into(),
        retry_after: None,
    });
    let resp = gw
        .post("/v1/chat/completions", chat("gpt", "x", false))
        .await;
    assert_eq!(resp.status(), 503);
    let v = json_of(resp).await;
    assert_eq!(v["error"]["code"], "upstream_error");
    assert_eq!(
        v["error"]["message"],
        "the upstream answered 503 Service Unavailable"
    );

    m.push_fault(Fault::Status {
        status: 429,
        body: json!({"error": {"message": "slow down", "type": "rate_limit_error",
            "param": null, "code": "rate_limit_exceeded"}})
        .to_string(),
        retry_after: Some(7),
    });
    let resp = gw
        .post("/v1/chat/completions", chat("gpt", "x", false))
        .await;
    assert_eq!(resp.status(), 429);
    assert_eq!(resp.headers()["retry-after"], "7");
}

#[tokio::test]
async fn refused_reset_and_timeout_are_502_502_504() {
    // Connection refused: a port that was bound and released.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or_else(|e| panic!("{e}"));
    let gw = Gateway::start_with_env(
        &config(&format!("http://127.0.0.1:{port}/v1"), "", ""),
        env(),
    )
    .await;
    let resp = gw
        .post("/v1/chat/completions", chat("gpt", "x", false))
        .await;
    assert_eq!(resp.status(), 502);
    assert_eq!(json_of(resp).await["error"]["code"], "upstream_unreachable");

    let m = mock().await;
    let gw = start(&m).await;
    m.push_fault(Fault::ResetMidBody);
    let resp = gw
        .post("/v1/chat/completions", chat("gpt", "x", false))
        .await;
    assert_eq!(resp.status(), 502);
    assert_eq!(json_of(resp).await["error"]["code"], "upstream_unreachable");

    m.push_fault(Fault::DelayFirstByte(Duration::from_secs(3)));
    let resp = gw
        .post("/v1/chat/completions", chat("gpt", "x", false))
        .await;
    assert_eq!(resp.status(), 504);
    assert_eq!(json_of(resp).await["error"]["code"], "upstream_timeout");
}

#[tokio::test]
async fn stream_broken_midway_ends_with_an_sse_error_event() {
    let m = mock().await;
    let gw = start(&m).await;
    m.push_fault(Fault::StallAfterChunks(2));
    let resp = gw
        .post("/v1/chat/completions", chat("gpt", "a b c d e f", true))
        .await;
    assert_eq!(resp.status(), 200);
    let events = sse_events(resp).await;
    let last: Value = serde_json::from_str(events.last().map(String::as_str).unwrap_or(""))
        .unwrap_or(Value::Null);
    assert_eq!(last["error"]["code"], "upstream_timeout", "{events:?}");
    assert!(
        !stream_content(&events).is_empty(),
        "partial content reached the client"
    );
    // docs/RELIABILITY.md: the stalled upstream request is cancelled, not left hanging.
    assert!(
        m.wait_cancelled(1, Duration::from_secs(5)).await,
        "the stalled upstream request was not cancelled (cancelled {}, completed {})",
        m.cancelled(),
        m.completed()
    );
    assert_eq!(m.completed(), 0);
}

#[tokio::test]
async fn a_client_that_disconnects_cancels_the_upstream() {
    let m = mock().await;
    m.set_chunk_delay(Duration::from_millis(100));
    let gw = start(&m).await;
    let mut resp = gw
        .post(
            "/v1/chat/completions",
            chat("gpt", "1 2 3 4 5 6 7 8 9 10", true),
        )
        .await;
    assert_eq!(resp.status(), 200);
    let first = resp.chunk().await.unwrap_or_else(|e| panic!("{e}"));
    assert!(first.is_some());
    drop(resp);
    assert!(
        m.wait_cancelled(1, Duration::from_secs(5)).await,
        "upstream stream was not cancelled"
    );
    assert_eq!(m.completed(), 0);
}

#[tokio::test]
async fn overloaded_gateway_answers_503() {
    let m = mock().await;
    let gw =
        Gateway::start_with_env(&config(&m.base_url(), "", "  max_in_flight: 1\n"), env()).await;
    m.push_fault(Fault::DelayFirstByte(Duration::from_millis(250)));
    let slow = gw.post("/v1/chat/completions", chat("gpt", "x", false));
    let second = async {
        assert!(m.wait_requests(1, Duration::from_secs(5)).await);
        gw.post("/v1/chat/completions", chat("gpt", "x", false))
            .await
    };
    let (slow, resp) = tokio::join!(slow, second);
    assert_eq!(resp.status(), 503);
    assert!(resp.headers().get("retry-after").is_some());
    assert_eq!(json_of(resp).await["error"]["code"], "overloaded");
    assert_eq!(slow.status(), 200, "the request in flight is unaffected");
}

#[tokio::test]
async fn graceful_shutdown_lets_streams_finish() {
    let m = mock().await;
    m.set_chunk_delay(Duration::from_millis(40));
    let mut gw = start(&m).await;
    let resp = gw
        .post("/v1/chat/completions", chat("gpt", "a b c d e f g h", true))
        .await;
    assert_eq!(resp.status(), 200);
    let addr = gw.addr;
    let server = gw.begin_shutdown();
    let events = sse_events(resp).await;
    let expected = tollgate::testkit::reply_text(&chat("gpt", "a b c d e f g h", true));
    assert_eq!(stream_content(&events), expected);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    if let Some(s) = server {
        let _ = tokio::time::timeout(Duration::from_secs(5), s).await;
    }
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "still accepting"
    );
}

async fn raw(gw: &Gateway, request: &[u8]) -> String {
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    s.write_all(request).await.unwrap_or_else(|e| panic!("{e}"));
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn ambiguous_framing_is_refused() {
    let m = mock().await;
    let gw = start(&m).await;
    let body = r#"{"model":"gpt","messages":[{"role":"user","content":"x"}]}"#;
    for (cl, te) in [
        ("content-length", "transfer-encoding"),
        ("Transfer-Encoding", "Content-Length"),
    ] {
        let (first, second) = if cl.starts_with('c') {
            (format!("{cl}: {}", body.len()), format!("{te}: chunked"))
        } else {
            (format!("{cl}: chunked"), format!("{te}: {}", body.len()))
        };
        let both = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {DEMO_KEY}\r\n\
             {first}\r\n{second}\r\n\r\n{:x}\r\n{body}\r\n0\r\n\r\n",
            body.len()
        );
        let out = raw(&gw, both.as_bytes()).await;
        assert!(out.starts_with("HTTP/1.1 400"), "{out}");
        assert!(
            out.to_ascii_lowercase().contains("connection: close"),
            "{out}"
        );
    }
    // A well-framed chunked request on a kept-alive connection after a fixed-length one works.
    let ok = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {DEMO_KEY}\r\n\
         content-length: {}\r\n\r\n{body}POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n\
         authorization: Bearer {DEMO_KEY}\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n\
         {:x}\r\n{body}\r\n0\r\n\r\n",
        body.len(),
        body.len()
    );
    let out = raw(&gw, ok.as_bytes()).await;
    assert_eq!(out.matches("HTTP/1.1 200").count(), 2, "{out}");
    assert_eq!(
        m.request_count(),
        2,
        "only the two well-framed requests reached the upstream"
    );
}

#[tokio::test]
async fn conflicting_content_lengths_are_refused() {
    let m = mock().await;
    let gw = start(&m).await;
    let body = r#"{"model":"gpt","messages":[{"role":"user","content":"x"}]}"#;
    let two = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {DEMO_KEY}\r\n\
         content-length: {}\r\ncontent-length: 5\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let out = raw(&gw, two.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert_eq!(
        m.request_count(),
        0,
        "nothing ambiguous reached the upstream"
    );
}

#[tokio::test]
async fn slow_clients_are_cut_off() {
    let m = mock().await;
    let gw = start(&m).await;
    // Headers never finished: the connection is closed after header_read_timeout.
    let started = std::time::Instant::now();
    let out = raw(&gw, b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n").await;
    assert!(
        started.elapsed() < Duration::from_secs(4),
        "connection held open"
    );
    assert!(!out.contains("200 OK"));
    // Body announced but not sent: 408 after body_read_timeout, OpenAI-shaped.
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {DEMO_KEY}\r\n\
         content-length: 100\r\nconnection: close\r\n\r\n{{\"model\""
    );
    let out = raw(&gw, req.as_bytes()).await;
    assert!(out.starts_with("HTTP/1.1 408"), "{out}");
    assert!(out.contains("body_timeout"), "{out}");
}

#[tokio::test]
async fn the_binary_never_logs_keys() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let addr_file = dir.path().join("addr");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args([
            "serve",
            "--config",
            "examples/quickstart.yaml",
            "--listen",
            "127.0.0.1:0",
        ])
        .arg("--addr-file")
        .arg(&addr_file)
        .env("TOLLGATE_ADMIN_KEY", "sk-admin-never-logged")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut addr = String::new();
    for _ in 0..200 {
        addr = std::fs::read_to_string(&addr_file).unwrap_or_default();
        if !addr.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!addr.is_empty(), "gateway did not start");
    let client = reqwest::Client::new();
    let url = format!("http://{addr}/v1/chat/completions");
    for key in [DEMO_KEY, "sk-wrong-secret-123"] {
        let _ = client
            .post(&url)
            .bearer_auth(key)
            .json(&chat("mock-gpt", "x", false))
            .send()
            .await;
    }
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap_or_else(|e| panic!("{e}"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(out.status.success(), "exit {:?}", out.status);
    let logs = String::from_utf8_lossy(&out.stderr);
    assert!(logs.contains("\"log_type\":\"request\""), "{logs}");
    assert!(logs.contains("\"key_id\":\"demo\""), "{logs}");
    assert!(logs.contains("\"error_kind\":\"auth_failed\""), "{logs}");
    assert!(
        !logs.contains(DEMO_KEY) && !logs.contains("sk-wrong-secret-123"),
        "{logs}"
    );
}

/// Fields Tollgate does not edit reach the upstream as the client wrote them (a seed beyond
/// f64, a decimal's own digits, key order), the edited ones once each: a duplicated `max_tokens`
/// is sent once, as the value the cap was applied to.
#[tokio::test]
async fn untouched_fields_reach_the_upstream_byte_for_byte() {
    let m = mock().await;
    let gw = start(&m).await;
    let sent = r#"{"seed":12345678901234567890123,"model":"gpt","temperature":0.10,
        "messages":[{"role":"user","content":"hi"}],"logit_bias":{"50256":-100.0},
        "max_tokens":7,"max_tokens":3}"#;
    let resp = reqwest::Client::new()
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(DEMO_KEY)
        .header("content-type", "application/json")
        .body(sent)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), 200);
    let raw = m.received()[0].raw.clone();
    let raw = String::from_utf8_lossy(&raw);
    for verbatim in [
        r#"{"seed":12345678901234567890123,"model":"served-model","temperature":0.10,"#,
        r#""messages":[{"role":"user","content":"hi"}],"logit_bias":{"50256":-100.0},"#,
    ] {
        assert!(raw.contains(verbatim), "{verbatim} not in {raw}");
    }
    assert_eq!(raw.matches("max_tokens").count(), 1, "{raw}");
    assert_eq!(m.received()[0].body["max_tokens"], json!(3));
}

#[tokio::test]
async fn other_stream_options_are_kept_when_usage_is_asked_for() {
    let m = mock().await;
    let gw = start(&m).await;
    let mut body = chat("gpt", "a b", true);
    body["stream_options"] = json!({"continuous_usage_stats": false});
    let events = sse_events(gw.post("/v1/chat/completions", body).await).await;
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    assert!(
        events.iter().all(|e| !e.contains("\"usage\"")),
        "{events:?}"
    );
    let seen = &m.received()[0].body["stream_options"];
    assert_eq!(
        seen,
        &json!({"continuous_usage_stats": false, "include_usage": true})
    );
}

#[tokio::test]
async fn a_client_that_stops_reading_releases_its_slot_at_the_deadline() {
    let m = mock().await;
    let cfg = config(&m.base_url(), "", "").replace(
        "retry: { max_attempts: 1 } }",
        "retry: { max_attempts: 1 }, deadline: 1s }",
    );
    let gw = Gateway::start_with_env(&cfg, env()).await;
    // A long echo, one event per word: megabytes of SSE, more than the socket buffers hold.
    let words = vec!["word"; 60_000].join(" ");
    let body = serde_json::to_string(&chat("gpt", &words, true)).unwrap_or_default();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {DEMO_KEY}\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        body.len()
    );
    let mut s = tokio::net::TcpStream::connect(gw.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    s.write_all(req.as_bytes())
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // The client never reads. Its slot must come back by itself after the 1 s deadline.
    let upstream = gw.state.snapshot.load().upstreams.get("up").cloned();
    let upstream = upstream.unwrap_or_else(|| panic!("no upstream"));
    assert!(m.wait_requests(1, Duration::from_secs(5)).await);
    let started = std::time::Instant::now();
    let mut held = true;
    // Nothing to await here (the release happens inside the gateway): poll, bounded.
    while started.elapsed() < Duration::from_secs(5) {
        if upstream.gate.in_flight() == 0 {
            held = false;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        !held,
        "the slot was still held {:?} after the deadline",
        started.elapsed()
    );
    assert!(
        m.wait_cancelled(1, Duration::from_secs(5)).await,
        "upstream not cancelled"
    );
    drop(s);
}
