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
    let header = if server.contains("header_read_timeout") {
        ""
    } else {
        "  header_read_timeout: 500ms"
    };
    format!(
        r#"
server:
{header}
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

// --- Connections that never speak ---

#[tokio::test]
async fn sockets_that_never_send_a_request_are_closed() {
    let m = mock().await;
    let gw = start(&m, "  idle_timeout: 500ms").await;
    let within = Duration::from_secs(3);
    // Silent, half an HTTP/2 preface, the whole preface and SETTINGS but no stream, half a head.
    let openers: [&[u8]; 4] = [
        b"",
        b"PRI * HTTP/2.0\r\n",
        b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n\0\0\0\x04\0\0\0\0\0",
        b"GET /health HTTP/1.1\r\nhost:",
    ];
    let mut socks = Vec::new();
    for o in openers {
        let mut s = connect(&gw).await;
        s.write_all(o)
            .await
            .unwrap_or_else(|e| panic!("write: {e}"));
        socks.push(s);
    }
    for (i, s) in socks.iter_mut().enumerate() {
        assert!(
            read_until_closed(s, within).await.is_some(),
            "socket {i} still open after {within:?}"
        );
    }
    assert!(
        common::await_metric(
            &gw,
            "tollgate_connections_closed_total{reason=\"no_request\"}",
            |v| v >= 3.0
        )
        .await,
        "the closes were not counted"
    );
}

#[tokio::test]
async fn an_idle_http2_connection_is_closed_but_a_long_stream_is_not() {
    let m = mock().await;
    // Ten chunks 200 ms apart: the stream lasts four idle timeouts.
    m.set_chunks(Some(10));
    m.set_chunk_delay(Duration::from_millis(200));
    let gw = start(&m, "  idle_timeout: 500ms").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let resp = h2
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(DEMO_KEY)
        .json(&common::chat(
            "gpt",
            "one two three four five six seven eight nine ten",
            true,
        ))
        .send()
        .await
        .unwrap_or_else(|e| panic!("stream: {e}"));
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    let events = common::sse_events(resp).await;
    assert_eq!(
        events.last().map(String::as_str),
        Some("[DONE]"),
        "{events:?}"
    );
    // Now idle: closed after idle_timeout, and counted.
    assert!(
        common::await_metric(
            &gw,
            "tollgate_connections_closed_total{reason=\"idle\"}",
            |v| v >= 1.0
        )
        .await,
        "the idle HTTP/2 connection was not closed"
    );
}

#[tokio::test]
async fn at_the_connection_cap_new_connections_wait_for_a_free_slot() {
    let m = mock().await;
    let gw = start(
        &m,
        "  max_connections: 2\n  header_read_timeout: 30s\n  idle_timeout: 30s",
    )
    .await;
    // Two connections hold both slots (each has answered one request and stays open).
    let mut held = Vec::new();
    for _ in 0..2 {
        let mut s = connect(&gw).await;
        s.write_all(b"GET /health HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf))
            .await
            .unwrap_or_else(|_| panic!("no answer"))
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
        held.push(s);
    }
    // A third connects (the kernel queues it) but is not served while both are open.
    let mut third = connect(&gw).await;
    third
        .write_all(b"GET /health HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let mut buf = [0u8; 1024];
    assert!(
        tokio::time::timeout(Duration::from_millis(300), third.read(&mut buf))
            .await
            .is_err(),
        "served beyond the cap"
    );
    // One closes: the third is served.
    drop(held.pop());
    let out = read_until_closed(&mut third, Duration::from_secs(5))
        .await
        .unwrap_or_else(|| panic!("the waiting connection was never served"));
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
}

/// The binary under `ulimit -n 512` with a thousand clients that connect and never finish a
/// request, reconnecting when closed: `/health` and an honest chat request still answer.
#[tokio::test]
async fn health_and_honest_clients_are_served_through_a_thousand_idle_sockets() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{ header_read_timeout: 500ms, idle_timeout: 500ms }}\n{}",
            common::mock_config(2, 0)
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let addr_file = dir.path().join("addr");
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n 512 && exec '{}' serve --config '{}' --listen 127.0.0.1:0 --addr-file '{}'",
            env!("CARGO_BIN_EXE_tollgate"),
            config.display(),
            addr_file.display()
        ))
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = common::wait_for_addr_file(&addr_file).await;
    let target: std::net::SocketAddr = addr.trim().parse().unwrap_or_else(|e| panic!("{e}"));
    // A thousand pests: silent, half a preface, or a head trickled a byte at a time.
    let stop = tokio_util::sync::CancellationToken::new();
    let connected = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let mut pests = Vec::new();
    for i in 0..1000 {
        let (stop, connected) = (stop.clone(), connected.clone());
        pests.push(tokio::spawn(async move {
            while !stop.is_cancelled() {
                let attempt = tokio::select! {
                    () = stop.cancelled() => return,
                    s = TcpStream::connect(target) => s,
                };
                let Ok(mut s) = attempt else {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                };
                let opener: &[u8] = match i % 3 {
                    0 => b"",
                    1 => b"PRI * HTTP/2.0\r\n",
                    _ => b"POST /v1/chat/completions HTTP/1.1\r\n",
                };
                let _ = s.write_all(opener).await;
                connected.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let mut buf = [0u8; 64];
                loop {
                    tokio::select! {
                        () = stop.cancelled() => return,
                        r = tokio::time::timeout(Duration::from_millis(200), s.read(&mut buf)) => match r {
                            Ok(Ok(0)) | Ok(Err(_)) => break,
                            Ok(Ok(_)) => {}
                            // Trickle one more byte.
                            Err(_) => {
                                if i % 3 == 2 && s.write_all(b"x").await.is_err() {
                                    break;
                                }
                            }
                        },
                    }
                }
            }
        }));
    }
    // Every pest is connected (accepted or queued in the backlog) before the honest clients come.
    for _ in 0..400 {
        if connected.load(std::sync::atomic::Ordering::SeqCst) >= 1000 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(connected.load(std::sync::atomic::Ordering::SeqCst) >= 1000);
    // The honest requests queue behind the thousand in the kernel's backlog: about
    // 1000 / 256 slots x 0.5 s, much longer on a loaded machine.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let health = client.get(format!("http://{target}/health")).send().await;
    let chat = client
        .post(format!("http://{target}/v1/chat/completions"))
        .bearer_auth(DEMO_KEY)
        .json(&common::chat("mock-gpt", "still here", false))
        .send()
        .await;
    stop.cancel();
    for p in pests {
        let _ = p.await;
    }
    let _ = child.kill().await;
    let health = health.unwrap_or_else(|e| panic!("/health did not answer: {e}"));
    assert_eq!(health.status(), 200);
    let chat = chat.unwrap_or_else(|e| panic!("chat did not answer: {e}"));
    assert_eq!(chat.status(), 200);
}

// --- Slow readers ---

/// A 16 MiB chat answer: far more than loopback socket buffers hold.
fn big_answer() -> String {
    let content = "a".repeat(16 << 20);
    serde_json::json!({
        "id": "x", "object": "chat.completion", "created": 0, "model": "gpt",
        "choices": [{"index": 0, "finish_reason": "stop",
                     "message": {"role": "assistant", "content": content}}],
        "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
    })
    .to_string()
}

#[tokio::test]
async fn a_client_that_never_reads_is_cut_off_at_the_write_deadline() {
    let m = mock().await;
    let body = big_answer();
    m.push_fault(tollgate::testkit::Fault::Status {
        status: 200,
        body,
        retry_after: None,
    });
    let gw = start(&m, "  write_timeout: 500ms").await;
    let sock = tokio::net::TcpSocket::new_v4().unwrap_or_else(|e| panic!("{e}"));
    sock.set_recv_buffer_size(4096)
        .unwrap_or_else(|e| panic!("{e}"));
    let mut s = sock
        .connect(gw.addr)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let req = serde_json::to_string(&common::chat("gpt", "big", false)).unwrap_or_default();
    s.write_all(
        format!(
            "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nauthorization: Bearer {DEMO_KEY}\r\n\
             content-type: application/json\r\ncontent-length: {}\r\n\r\n{req}",
            req.len()
        )
        .as_bytes(),
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    // The client reads nothing; the server gives up on it and says so.
    assert!(
        common::await_metric(
            &gw,
            "tollgate_connections_closed_total{reason=\"write_timeout\"}",
            |v| v >= 1.0
        )
        .await,
        "the stalled writer was not cut off"
    );
    // The connection and the answer it held are gone (only /metrics' own connection is open).
    assert!(
        common::await_metric(&gw, "tollgate_connections_open", |v| v <= 1.0).await,
        "the connection is still open"
    );
    // What the client can still read is less than the answer, then the end.
    let out = read_until_closed(&mut s, Duration::from_secs(10))
        .await
        .unwrap_or_else(|| panic!("the connection was left open"));
    let head_end = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no head"))
        + 4;
    let head = String::from_utf8_lossy(&out[..head_end]).to_ascii_lowercase();
    assert!(head.starts_with("http/1.1 200"), "{head}");
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no content-length: {head}"));
    assert!(length > 16 << 20);
    assert!(
        out.len() - head_end < length,
        "the whole answer arrived ({} bytes)",
        out.len() - head_end
    );
}

// --- Who may read /metrics, and what /admin shows without an admin key ---

#[tokio::test]
async fn metrics_can_require_a_key() {
    let m = mock().await;
    let mut env = env();
    env.insert("METRICS_KEY".into(), "sk-metrics-scraper".into());
    let gw = Gateway::start_with_env(
        &config(&m.base_url(), "  metrics_key: \"${METRICS_KEY}\""),
        env,
    )
    .await;
    let url = gw.url("/metrics");
    for key in [None, Some("sk-wrong"), Some(DEMO_KEY)] {
        let mut req = gw.client.get(&url);
        if let Some(k) = key {
            req = req.bearer_auth(k);
        }
        let resp = req.send().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status(), 401, "{key:?}");
        let v: serde_json::Value = resp.json().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(v["error"]["code"], "invalid_api_key", "{v}");
    }
    let resp = gw
        .client
        .get(&url)
        .bearer_auth("sk-metrics-scraper")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), 200);
    assert!(resp.text().await.unwrap_or_default().contains("tollgate_"));
}

#[tokio::test]
async fn without_an_admin_key_any_method_on_admin_is_an_unknown_path() {
    let m = mock().await;
    let gw = start(&m, "").await;
    let unknown = gw
        .client
        .get(gw.url("/no/such/path"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(unknown.status(), 404);
    let unknown: serde_json::Value = unknown.json().await.unwrap_or_else(|e| panic!("{e}"));
    for (method, path) in [
        ("GET", "/admin/status"),
        ("POST", "/admin/status"),
        ("DELETE", "/admin/keys"),
        ("PUT", "/admin/keys/abc"),
        ("GET", "/admin/keys/abc/revoke"),
        ("PATCH", "/admin/usage"),
    ] {
        let resp = gw
            .client
            .request(method.parse().unwrap_or_default(), gw.url(path))
            .bearer_auth(DEMO_KEY)
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status(), 404, "{method} {path}");
        assert!(resp.headers().get("allow").is_none(), "{method} {path}");
        let v: serde_json::Value = resp.json().await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(
            v["error"]["code"], unknown["error"]["code"],
            "{method} {path}: {v}"
        );
        assert_eq!(
            v["error"]["type"], unknown["error"]["type"],
            "{method} {path}: {v}"
        );
    }
}

/// `server.metrics_listen` through the binary: `/metrics` answers there (with its key) and is an
/// unknown path on the main listener.
#[tokio::test]
async fn metrics_can_listen_on_their_own_address() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    // A free port for the metrics listener (bound and released: a small race, loopback only).
    let metrics_addr = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap_or_else(|e| panic!("{e}"));
    let config = dir.path().join("config.yaml");
    std::fs::write(
        &config,
        format!(
            "server: {{ metrics_listen: \"{metrics_addr}\", metrics_key: \"${{TG_METRICS_KEY}}\" }}\n{}",
            common::mock_config(2, 0)
        ),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let addr_file = dir.path().join("addr");
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--listen", "127.0.0.1:0", "--config"])
        .arg(&config)
        .arg("--addr-file")
        .arg(&addr_file)
        .env("TG_METRICS_KEY", "sk-scrape")
        .stderr(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let addr = common::wait_for_addr_file(&addr_file).await;
    let client = reqwest::Client::new();
    let main = client
        .get(format!("http://{}/metrics", addr.trim()))
        .bearer_auth("sk-scrape")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(main.status(), 404);
    let own = format!("http://{metrics_addr}/metrics");
    let open = client
        .get(&own)
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(open.status(), 401);
    let scraped = client
        .get(&own)
        .bearer_auth("sk-scrape")
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(scraped.status(), 200);
    // Only /metrics lives there.
    let chat = client
        .post(format!("http://{metrics_addr}/v1/chat/completions"))
        .bearer_auth(DEMO_KEY)
        .json(&common::chat("mock-gpt", "x", false))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(chat.status(), 404);
    let _ = child.kill().await;
}

/// Over HTTP/2, flow control stalls a stream without blocking the socket: the body-level write
/// deadline cuts it.
#[tokio::test]
async fn an_http2_client_that_never_reads_is_cut_off_at_the_write_deadline() {
    let m = mock().await;
    let body = big_answer();
    let expected = body.len();
    m.push_fault(tollgate::testkit::Fault::Status {
        status: 200,
        body,
        retry_after: None,
    });
    let gw = start(&m, "  write_timeout: 500ms").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap_or_else(|e| panic!("{e}"));
    let mut resp = h2
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(DEMO_KEY)
        .json(&common::chat("gpt", "big", false))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.version(), reqwest::Version::HTTP_2);
    // Read nothing until the server has given up on this client.
    assert!(
        common::await_metric(
            &gw,
            "tollgate_connections_closed_total{reason=\"write_timeout\"}",
            |v| v >= 1.0
        )
        .await,
        "the stalled HTTP/2 stream was not cut off"
    );
    let mut got = 0;
    let ended = loop {
        match tokio::time::timeout(Duration::from_secs(10), resp.chunk()).await {
            Ok(Ok(Some(c))) => got += c.len(),
            Ok(Ok(None)) => break "end",
            Ok(Err(_)) => break "error",
            Err(_) => panic!("the stream neither ended nor failed"),
        }
    };
    assert!(
        got < expected,
        "the whole answer arrived ({got} bytes, {ended})"
    );
    assert_eq!(ended, "error");
}

/// On one CPU (`taskset -c 0`, as a container limited to one CPU) the binary runs everything on
/// one thread: concurrent answers and streams complete, and SIGTERM still ends it gracefully,
/// finishing the stream in flight.
#[tokio::test]
async fn on_one_cpu_the_binary_serves_streams_and_stops_gracefully() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let quickstart = std::fs::read_to_string("examples/quickstart.yaml")
        .unwrap_or_else(|e| panic!("quickstart: {e}"));
    let (mut child, addr_file) =
        common::serve_binary_under(&["taskset", "-c", "0"], dir.path(), &quickstart);
    let base = format!("http://{}", common::wait_for_addr_file(&addr_file).await);
    let client = reqwest::Client::new();
    let ask = |stream: bool| {
        let (client, base) = (client.clone(), base.clone());
        async move {
            let r = client
                .post(format!("{base}/v1/chat/completions"))
                .bearer_auth(DEMO_KEY)
                .json(&serde_json::json!({"model": "mock-gpt", "stream": stream,
                    "messages": [{"role": "user", "content": "hi"}]}))
                .send()
                .await
                .unwrap_or_else(|e| panic!("send: {e}"));
            let status = r.status().as_u16();
            (
                status,
                r.text().await.unwrap_or_else(|e| panic!("body: {e}")),
            )
        }
    };
    let answers = futures_util::future::join_all((0..40).map(|i| ask(i % 2 == 0))).await;
    for (i, (status, body)) in answers.iter().enumerate() {
        assert_eq!(*status, 200, "request {i}: {body}");
        if i % 2 == 0 {
            assert!(
                body.trim_end().ends_with("data: [DONE]"),
                "stream {i}: {body}"
            );
        } else {
            assert!(
                body.contains("\"finish_reason\":\"stop\""),
                "answer {i}: {body}"
            );
        }
    }
    // A stream in flight when SIGTERM comes is finished, then the process exits 0: its first
    // chunk is read before the signal, the rest (8 chunks, 20 ms apart) after it.
    let mut resp = client
        .post(format!("{base}/v1/chat/completions"))
        .bearer_auth(DEMO_KEY)
        .json(&serde_json::json!({"model": "mock-gpt", "stream": true,
            "messages": [{"role": "user", "content": "hi"}]}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("send: {e}"));
    assert_eq!(resp.status(), 200);
    let mut body = resp
        .chunk()
        .await
        .unwrap_or_else(|e| panic!("first chunk: {e}"))
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .unwrap_or_default();
    assert!(!body.contains("[DONE]"), "{body}");
    common::sigterm(&child);
    while let Some(c) = resp.chunk().await.unwrap_or_else(|e| panic!("rest: {e}")) {
        body.push_str(&String::from_utf8_lossy(&c));
    }
    assert!(body.trim_end().ends_with("data: [DONE]"), "{body}");
    let exit = tokio::time::timeout(Duration::from_secs(30), child.wait())
        .await
        .unwrap_or_else(|_| panic!("no exit 30 s after SIGTERM"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(exit.success(), "{exit}");
}
