//! The listener against hostile clients, through real sockets: framing the guard cannot vouch
//! for, connections that never speak, slow readers, and who may read `/metrics`.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{Gateway, DEMO_KEY, DEMO_KEY_SHA256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tollgate::testkit::MockUpstream;

async fn mock() -> MockUpstream {
    MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("mock: {e}"))
}

/// One `openai` upstream at `base_url` serving `gpt`; `server` is spliced under `server:`.
fn config(base_url: &str, server: &str) -> String {
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
    timeouts: {{ connect: 500ms, first_byte: 2s, idle: 2s, total: 20s }}
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

async fn start(m: &MockUpstream, server: &str) -> Gateway {
    Gateway::start_with_env(&config(&m.base_url(), server), env()).await
}

async fn connect(gw: &Gateway) -> TcpStream {
    TcpStream::connect(gw.addr)
        .await
        .unwrap_or_else(|e| panic!("connect: {e}"))
}

/// Read until the server closes (or resets) the connection; `None` if it is still open after
/// `within`.
async fn read_until_closed(s: &mut TcpStream, within: Duration) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    let mut buf = [0u8; 16 * 1024];
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, s.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(out),
            Ok(Ok(n)) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Send `request` on a fresh connection; what came back before the server closed it.
async fn exchange(gw: &Gateway, request: &[u8]) -> String {
    let mut s = connect(gw).await;
    s.write_all(request)
        .await
        .unwrap_or_else(|e| panic!("write: {e}"));
    match read_until_closed(&mut s, Duration::from_secs(5)).await {
        Some(out) => String::from_utf8_lossy(&out).into_owned(),
        None => panic!("the connection was left open"),
    }
}

/// Exactly one answer, 400, OpenAI-shaped, `connection: close` (the caller saw the close).
fn assert_one_framing_400(out: &str) {
    assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
    assert!(out.starts_with("HTTP/1.1 400"), "{out}");
    assert!(
        out.to_ascii_lowercase().contains("connection: close"),
        "{out}"
    );
    let body = out.split("\r\n\r\n").nth(1).unwrap_or_default();
    let v: serde_json::Value =
        serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {out}"));
    assert_eq!(v["error"]["type"], "invalid_request_error", "{out}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap_or_default()
            .contains("framing"),
        "{out}"
    );
}

const SMUGGLED: &str = "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-length: 3\r\n\
                        transfer-encoding: chunked\r\n\r\n0\r\n\r\n";

#[tokio::test]
async fn a_bare_lf_head_is_refused_and_its_body_never_parsed() {
    let m = mock().await;
    let gw = start(&m, "").await;
    // A head ending in bare LFs whose body is itself a CL+TE request: the body must never be
    // read as a head (the guard used to mark it, shifting the parser's boundary).
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\nhost: x\nauthorization: Bearer {DEMO_KEY}\n\
         content-length: {}\n\n{SMUGGLED}",
        SMUGGLED.len()
    );
    assert_one_framing_400(&exchange(&gw, req.as_bytes()).await);
    // One bare LF among CRLFs is enough.
    let req = format!("GET /health HTTP/1.1\r\nhost: x\nx-a: b\r\n\r\n{SMUGGLED}");
    assert_one_framing_400(&exchange(&gw, req.as_bytes()).await);
    assert_eq!(m.request_count(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn an_overlong_header_line_does_not_blind_the_guard() {
    let m = mock().await;
    let gw = start(&m, "").await;
    let long = "a".repeat(20 * 1024);
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-pad: {long}\r\n\
         authorization: Bearer {DEMO_KEY}\r\ncontent-length: 5\r\n\
         transfer-encoding: chunked\r\n\r\n0\r\n\r\n{SMUGGLED}"
    );
    assert_one_framing_400(&exchange(&gw, req.as_bytes()).await);
    // A later request on the connection, after a normal one, is still followed.
    let req = format!(
        "GET /health HTTP/1.1\r\nhost: x\r\n\r\nPOST /v1/chat/completions HTTP/1.1\r\nhost: x\r\n\
         x-pad: {long}\r\ncontent-length: 5\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"
    );
    let out = exchange(&gw, req.as_bytes()).await;
    assert_eq!(out.matches("HTTP/1.1 200").count(), 1, "{out}");
    assert_eq!(out.matches("HTTP/1.1 400").count(), 1, "{out}");
    assert_eq!(m.request_count(), 0, "nothing reached the upstream");
}

#[tokio::test]
async fn equal_or_odd_content_lengths_are_refused() {
    let m = mock().await;
    let gw = start(&m, "").await;
    let body = r#"{"model":"gpt","messages":[{"role":"user","content":"x"}]}"#;
    let n = body.len();
    for lengths in [
        format!("content-length: {n}\r\ncontent-length: {n}"),
        format!("content-length: {n}, {n}"),
        format!("content-length: +{n}"),
    ] {
        let req = format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {DEMO_KEY}\r\n\
             {lengths}\r\n\r\n{body}"
        );
        let out = exchange(&gw, req.as_bytes()).await;
        if lengths.contains("\r\n") {
            assert_one_framing_400(&out);
        } else {
            // hyper refuses a list or a signed value itself, before the app sees the request
            // (its own empty 400): still one answer and a closed connection.
            assert!(out.starts_with("HTTP/1.1 400"), "{lengths}: {out}");
            assert_eq!(out.matches("HTTP/1.1 ").count(), 1, "{out}");
        }
    }
    assert_eq!(m.request_count(), 0, "nothing reached the upstream");
}
