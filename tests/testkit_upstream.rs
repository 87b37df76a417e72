//! Integration tests for the mock upstream, over real loopback sockets.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tollgate::testkit::{reply_text, AuthCheck, Fault, MockUpstream};

const T: Duration = Duration::from_secs(5);

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

fn chat_body(content: &str, stream: bool) -> Value {
    json!({
        "model": "gpt-test",
        "stream": stream,
        "messages": [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": content}
        ]
    })
}

async fn post(up: &MockUpstream, path: &str, body: &Value) -> reqwest::Response {
    client().post(up.url(path)).json(body).send().await.unwrap()
}

/// Parses an SSE body into its `data:` payloads.
fn sse_data(text: &str) -> Vec<String> {
    text.split("\n\n")
        .filter_map(|ev| ev.strip_prefix("data: "))
        .map(str::to_owned)
        .collect()
}

fn deltas(events: &[String]) -> (String, Vec<Value>) {
    let mut content = String::new();
    let mut chunks = Vec::new();
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let v: Value = serde_json::from_str(e).unwrap();
        if let Some(c) = v
            .pointer("/choices/0/delta/content")
            .and_then(Value::as_str)
        {
            content.push_str(c);
        }
        chunks.push(v);
    }
    (content, chunks)
}

#[tokio::test]
async fn non_stream_chat_shape() {
    let up = MockUpstream::start().await.unwrap();
    assert_eq!(
        up.base_url(),
        format!("http://127.0.0.1:{}/v1", up.addr().port())
    );
    let body = chat_body("hello   there world", false);
    let resp = post(&up, "/v1/chat/completions", &body).await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("content-length").is_some());
    let v: Value = resp.json().await.unwrap();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], "gpt-test");
    assert_eq!(v["choices"][0]["message"]["role"], "assistant");
    assert_eq!(
        v["choices"][0]["message"]["content"],
        "echo: hello there world"
    );
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(reply_text(&body), "echo: hello there world");
    assert_eq!(v["usage"]["prompt_tokens"], 5);
    assert_eq!(v["usage"]["completion_tokens"], 4);
    assert_eq!(v["usage"]["total_tokens"], 9);
    assert!(up.wait_completed(1, T).await);
    assert!(up.wait_idle(T).await);
    assert_eq!(up.cancelled(), 0);
}

#[tokio::test]
async fn reply_text_variants() {
    let arr = json!({"messages": [{"role": "user", "content": [
        {"type": "text", "text": "one two"},
        {"type": "image_url", "image_url": {"url": "x"}},
        {"type": "text", "text": "three"}
    ]}]});
    assert_eq!(reply_text(&arr), "echo: one two three");
    let capped = json!({"max_tokens": 2, "messages": [{"role": "user", "content": "a b c d"}]});
    assert_eq!(reply_text(&capped), "echo: a");
    assert_eq!(reply_text(&json!({"prompt": "say hi"})), "echo: say hi");
    assert_eq!(reply_text(&json!(null)), "echo:");
    assert_eq!(
        reply_text(&json!({"messages": 5, "max_tokens": -1})),
        "echo:"
    );
}

#[tokio::test]
async fn stream_matches_non_stream_and_usage_only_when_asked() {
    let up = MockUpstream::start().await.unwrap();
    let plain: Value = post(
        &up,
        "/v1/chat/completions",
        &chat_body("the quick brown fox", false),
    )
    .await
    .json()
    .await
    .unwrap();
    let expected = plain["choices"][0]["message"]["content"]
        .as_str()
        .unwrap()
        .to_owned();

    let resp = post(
        &up,
        "/v1/chat/completions",
        &chat_body("the quick brown fox", true),
    )
    .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    let events = sse_data(&resp.text().await.unwrap());
    assert_eq!(events.last().unwrap(), "[DONE]");
    let (content, chunks) = deltas(&events);
    assert_eq!(content, expected);
    // One chunk per word, then the finish chunk; no usage chunk.
    assert_eq!(chunks.len(), 5 + 1);
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks[1]["choices"][0]["delta"].get("role").is_none());
    assert_eq!(chunks[0]["object"], "chat.completion.chunk");
    assert_eq!(chunks[0]["model"], "gpt-test");
    let last = chunks.last().unwrap();
    assert_eq!(last["choices"][0]["finish_reason"], "stop");
    assert_eq!(last["choices"][0]["delta"], json!({}));
    assert!(chunks.iter().all(|c| c.get("usage").is_none()));

    let mut body = chat_body("the quick brown fox", true);
    body["stream_options"] = json!({"include_usage": true});
    up.set_chunks(Some(2));
    let events = sse_data(
        &post(&up, "/v1/chat/completions", &body)
            .await
            .text()
            .await
            .unwrap(),
    );
    let (content, chunks) = deltas(&events);
    assert_eq!(content, expected);
    assert_eq!(chunks.len(), 2 + 1 + 1);
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], plain["usage"]);
    assert!(up.wait_completed(3, T).await);
}

#[tokio::test]
async fn completions_embeddings_models_and_404() {
    let up = MockUpstream::start().await.unwrap();
    let v: Value = post(
        &up,
        "/v1/completions",
        &json!({"model": "m", "prompt": "hi you"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], "echo: hi you");
    assert_eq!(v["usage"]["prompt_tokens"], 2);

    let s = post(
        &up,
        "/v1/completions",
        &json!({"model": "m", "prompt": "hi you", "stream": true}),
    )
    .await
    .text()
    .await
    .unwrap();
    let text: String = sse_data(&s)
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| {
            serde_json::from_str::<Value>(e).unwrap()["choices"][0]["text"]
                .as_str()
                .unwrap()
                .to_owned()
        })
        .collect();
    assert_eq!(text, "echo: hi you");

    let e1: Value = post(
        &up,
        "/v1/embeddings",
        &json!({"model": "emb", "input": "abc"}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(e1["object"], "list");
    assert_eq!(e1["model"], "emb");
    assert_eq!(e1["data"][0]["embedding"].as_array().unwrap().len(), 8);
    let e2: Value = post(
        &up,
        "/v1/embeddings",
        &json!({"model": "emb", "input": ["abc", "d e"]}),
    )
    .await
    .json()
    .await
    .unwrap();
    assert_eq!(e2["data"].as_array().unwrap().len(), 2);
    assert_eq!(e2["data"][1]["index"], 1);
    assert_eq!(
        e2["data"][0]["embedding"], e1["data"][0]["embedding"],
        "deterministic"
    );
    assert_ne!(e2["data"][1]["embedding"], e1["data"][0]["embedding"]);
    assert_eq!(e2["usage"]["prompt_tokens"], 3);

    let m: Value = client()
        .get(up.url("/v1/models"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(m["object"], "list");
    assert!(!m["data"].as_array().unwrap().is_empty());

    let r = client().get(up.url("/v1/nope")).send().await.unwrap();
    assert_eq!(r.status(), 404);
    let err: Value = r.json().await.unwrap();
    for k in ["message", "type", "param", "code"] {
        assert!(err["error"].get(k).is_some(), "missing {k}");
    }
    // Odd input: not JSON.
    let r = client()
        .post(up.url("/v1/chat/completions"))
        .body("{{{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert!(r.json::<Value>().await.unwrap()["error"]["message"].is_string());
}

#[tokio::test]
async fn chunk_delay_spreads_chunks_over_time() {
    let up = MockUpstream::start().await.unwrap();
    up.set_chunk_delay(Duration::from_millis(80));
    let start = Instant::now();
    let resp = post(&up, "/v1/chat/completions", &chat_body("a b c", true)).await;
    let mut stream = resp.bytes_stream();
    let mut arrivals = Vec::new();
    let mut all = Vec::new();
    while let Some(chunk) = stream.next().await {
        arrivals.push(start.elapsed());
        all.extend_from_slice(&chunk.unwrap());
    }
    // 4 content chunks + finish + [DONE] = 6 events, 5 gaps of 80 ms.
    assert!(arrivals.len() >= 4, "{arrivals:?}");
    assert!(arrivals[0] < Duration::from_millis(300), "{arrivals:?}");
    let spread = *arrivals.last().unwrap() - arrivals[0];
    assert!(spread >= Duration::from_millis(350), "{arrivals:?}");
    let (content, _) = deltas(&sse_data(std::str::from_utf8(&all).unwrap()));
    assert_eq!(content, "echo: a b c");
}

#[tokio::test]
async fn first_byte_delay_and_delay_fault() {
    let up = MockUpstream::start().await.unwrap();
    up.set_first_byte_delay(Duration::from_millis(150));
    let start = Instant::now();
    assert_eq!(
        post(&up, "/v1/chat/completions", &chat_body("x", false))
            .await
            .status(),
        200
    );
    assert!(start.elapsed() >= Duration::from_millis(150));
    up.set_first_byte_delay(Duration::ZERO);
    up.push_fault(Fault::DelayFirstByte(Duration::from_millis(150)));
    let start = Instant::now();
    assert_eq!(
        post(&up, "/v1/chat/completions", &chat_body("x", false))
            .await
            .status(),
        200
    );
    assert!(start.elapsed() >= Duration::from_millis(150));
}

#[tokio::test]
async fn fault_queue_is_fifo_then_default() {
    let up = MockUpstream::start().await.unwrap();
    up.push_fault(Fault::Status {
        status: 500,
        body: "{\"error\":{\"message\":\"boom\"}}".into(),
        retry_after: None,
    });
    up.push_fault(Fault::Status {
        status: 429,
        body: "slow down".into(),
        retry_after: Some(7),
    });
    up.set_default_fault(Some(Fault::Status {
        status: 503,
        body: "{}".into(),
        retry_after: None,
    }));
    let body = chat_body("x", false);
    let r1 = post(&up, "/v1/chat/completions", &body).await;
    assert_eq!(r1.status(), 500);
    assert_eq!(r1.headers()["content-type"], "application/json");
    assert_eq!(
        r1.text().await.unwrap(),
        "{\"error\":{\"message\":\"boom\"}}"
    );
    let r2 = post(&up, "/v1/chat/completions", &body).await;
    assert_eq!(r2.status(), 429);
    assert_eq!(r2.headers()["retry-after"], "7");
    assert_eq!(r2.headers()["content-type"], "text/plain");
    assert_eq!(r2.text().await.unwrap(), "slow down");
    assert_eq!(post(&up, "/v1/chat/completions", &body).await.status(), 503);
    assert_eq!(post(&up, "/v1/chat/completions", &body).await.status(), 503);
    up.set_default_fault(None);
    assert_eq!(post(&up, "/v1/chat/completions", &body).await.status(), 200);
    up.push_fault(Fault::Hang);
    up.clear_faults();
    assert_eq!(post(&up, "/v1/chat/completions", &body).await.status(), 200);
}

/// Sends a raw HTTP/1.1 request and reads until the server closes.
async fn raw(up: &MockUpstream, body: &Value) -> (String, bool) {
    let mut s = tokio::net::TcpStream::connect(up.addr()).await.unwrap();
    let body = body.to_string();
    let req = format!(
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nConnection: close\r\nContent-Length: {}\r\n\r\n{}",
        body.len(),
        body
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut buf = Vec::new();
    let res = tokio::time::timeout(T, s.read_to_end(&mut buf))
        .await
        .unwrap();
    (String::from_utf8_lossy(&buf).into_owned(), res.is_ok())
}

#[tokio::test]
async fn reset_mid_body_gives_body_error() {
    let up = MockUpstream::start().await.unwrap();
    // Baseline: a normal stream ends with the terminating chunk.
    let (ok, _) = raw(&up, &chat_body("a b c d", true)).await;
    assert!(ok.ends_with("0\r\n\r\n"), "{ok}");

    up.push_fault(Fault::ResetMidBody);
    let (cut, _) = raw(&up, &chat_body("a b c d", true)).await;
    assert!(cut.starts_with("HTTP/1.1 200"), "{cut}");
    assert!(cut.contains("chat.completion.chunk"), "{cut}");
    assert!(!cut.ends_with("0\r\n\r\n"), "{cut}");
    assert!(!cut.contains("[DONE]"));

    up.push_fault(Fault::ResetMidBody);
    let (cut, _) = raw(&up, &chat_body("a b c d", false)).await;
    assert!(cut.starts_with("HTTP/1.1 200"), "{cut}");
    assert!(!cut.ends_with("0\r\n\r\n"), "{cut}");

    // A real HTTP client sees an error reading the body, not a clean end.
    up.push_fault(Fault::ResetMidBody);
    let r = post(&up, "/v1/chat/completions", &chat_body("a b c d", true)).await;
    assert_eq!(r.status(), 200);
    assert!(r.bytes().await.is_err());
    up.push_fault(Fault::ResetMidBody);
    let r = post(&up, "/v1/chat/completions", &chat_body("a b c d", false)).await;
    assert!(r.bytes().await.is_err());
    assert_eq!(up.aborted(), 4);
    assert_eq!(up.cancelled(), 0);
}

#[tokio::test]
async fn hang_and_client_drop_counts_cancelled() {
    let up = MockUpstream::start().await.unwrap();
    up.push_fault(Fault::Hang);
    let c = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    let r = c
        .post(up.url("/v1/chat/completions"))
        .json(&chat_body("x", false))
        .send()
        .await;
    assert!(r.unwrap_err().is_timeout());
    assert!(up.wait_cancelled(1, T).await);
    assert_eq!(up.in_flight(), 0);
    assert!(!up.wait_cancelled(2, Duration::from_millis(50)).await);
}

#[tokio::test]
async fn stall_after_chunks_then_client_drop() {
    let up = MockUpstream::start().await.unwrap();
    up.push_fault(Fault::StallAfterChunks(2));
    let resp = post(&up, "/v1/chat/completions", &chat_body("a b c d", true)).await;
    let mut stream = resp.bytes_stream();
    let mut got = Vec::new();
    while !String::from_utf8_lossy(&got)
        .matches("data: ")
        .count()
        .eq(&2)
    {
        got.extend_from_slice(&stream.next().await.unwrap().unwrap());
    }
    // Nothing more arrives.
    let more = tokio::time::timeout(Duration::from_millis(200), stream.next()).await;
    assert!(more.is_err(), "stream should stall");
    assert_eq!(up.in_flight(), 1);
    drop(stream);
    assert!(up.wait_cancelled(1, T).await);
}

#[tokio::test]
async fn stream_client_drop_mid_stream_counts_cancelled() {
    let up = MockUpstream::start().await.unwrap();
    up.set_chunk_delay(Duration::from_millis(50));
    let resp = post(
        &up,
        "/v1/chat/completions",
        &chat_body("a b c d e f g h", true),
    )
    .await;
    let mut stream = resp.bytes_stream();
    stream.next().await.unwrap().unwrap();
    drop(stream);
    assert!(up.wait_cancelled(1, T).await);
    assert_eq!(up.completed(), 0);
}

#[tokio::test]
async fn malformed_sse_and_truncated_json() {
    let up = MockUpstream::start().await.unwrap();
    up.push_fault(Fault::MalformedSse);
    let r = post(&up, "/v1/chat/completions", &chat_body("x", true)).await;
    assert_eq!(r.status(), 200);
    assert_eq!(r.headers()["content-type"], "text/event-stream");
    let text = r.text().await.unwrap();
    let bad = sse_data(&text)
        .iter()
        .filter(|e| *e != "[DONE]")
        .any(|e| serde_json::from_str::<Value>(e).is_err());
    assert!(bad, "{text}");

    up.push_fault(Fault::TruncatedJson);
    let r = post(
        &up,
        "/v1/chat/completions",
        &chat_body("hello world", false),
    )
    .await;
    assert_eq!(r.status(), 200);
    let text = r.text().await.unwrap();
    assert!(!text.is_empty());
    assert!(serde_json::from_str::<Value>(&text).is_err(), "{text}");
}

#[tokio::test]
async fn auth_check_and_token_status() {
    let up = MockUpstream::start().await.unwrap();
    let check: AuthCheck = Arc::new(|h: &http::HeaderMap, q: Option<&str>| {
        h.get("authorization").is_some_and(|v| v == "Bearer good")
            || q.is_some_and(|q| q.contains("access_token=good"))
    });
    up.set_auth_check(Some(check));
    let body = chat_body("x", false);
    let c = client();
    let url = up.url("/v1/chat/completions");
    assert_eq!(
        c.post(&url)
            .bearer_auth("good")
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        c.post(format!("{url}?access_token=good"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let r = c
        .post(&url)
        .bearer_auth("bad")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "invalid_api_key"
    );
    up.set_auth_check(None);

    up.set_token_status("k1", Some((429, Some(3))));
    up.set_token_status("k2", Some((401, None)));
    let r = c
        .post(&url)
        .bearer_auth("k1")
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "3");
    assert_eq!(
        c.post(&url)
            .header("api-key", "k2")
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        401
    );
    assert_eq!(
        c.post(format!("{url}?access_token=k1"))
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        429
    );
    assert_eq!(
        c.post(&url)
            .bearer_auth("k3")
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    up.set_token_status("k1", None);
    assert_eq!(
        c.post(&url)
            .bearer_auth("k1")
            .json(&body)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test]
async fn records_and_clear() {
    let up = MockUpstream::start().await.unwrap();
    let before = Instant::now();
    client()
        .post(up.url("/v1/chat/completions?x=1"))
        .header("x-test", "yes")
        .json(&chat_body("rec", false))
        .send()
        .await
        .unwrap();
    client().get(up.url("/v1/models")).send().await.unwrap();
    assert!(up.wait_requests(2, T).await);
    let rec = up.received();
    assert_eq!(rec.len(), 2);
    assert_eq!(up.request_count(), 2);
    assert_eq!(rec[0].method, "POST");
    assert_eq!(rec[0].path, "/v1/chat/completions");
    assert_eq!(rec[0].query.as_deref(), Some("x=1"));
    assert_eq!(rec[0].headers["x-test"], "yes");
    assert_eq!(rec[0].body["messages"][1]["content"], "rec");
    assert!(rec[0].at >= before);
    assert_eq!(rec[1].body, Value::Null);
    up.clear_records();
    assert_eq!(up.request_count(), 0);
    assert!(up.received().is_empty());
}

#[tokio::test]
async fn random_failure_rate() {
    let up = MockUpstream::start().await.unwrap();
    up.set_random_failure_rate(1.0);
    let body = chat_body("x y", false);
    for _ in 0..20 {
        let r = post(&up, "/v1/chat/completions", &body).await;
        let status = r.status().as_u16();
        let ok_body = r.bytes().await.is_ok();
        assert!(
            [429, 500, 502, 503].contains(&status) || (status == 200 && !ok_body),
            "status {status} body ok {ok_body}"
        );
    }
    up.set_random_failure_rate(0.0);
    for _ in 0..5 {
        assert_eq!(post(&up, "/v1/chat/completions", &body).await.status(), 200);
    }
}

#[tokio::test]
async fn random_failures_are_drawn_from_the_mix_given() {
    let up = MockUpstream::start().await.unwrap();
    up.set_random_failure_rate(1.0);
    let teapot = |status: u16| Fault::Status {
        status,
        body: "{}".into(),
        retry_after: None,
    };
    up.set_random_fault_mix(vec![teapot(418), teapot(409)]);
    let body = chat_body("x y", false);
    let mut seen = std::collections::BTreeSet::new();
    for _ in 0..40 {
        seen.insert(
            post(&up, "/v1/chat/completions", &body)
                .await
                .status()
                .as_u16(),
        );
    }
    // 40 draws from two: both come up (a miss has probability 2^-39).
    assert_eq!(seen, [409, 418].into());
    // A queued fault still comes first.
    up.push_fault(teapot(451));
    let status = post(&up, "/v1/chat/completions", &body).await.status();
    assert_eq!(status, 451);
    // An empty mix is the default one again.
    up.set_random_fault_mix(Vec::new());
    let status = post(&up, "/v1/chat/completions", &body)
        .await
        .status()
        .as_u16();
    assert!([200, 429, 500, 502, 503].contains(&status), "{status}");
}

#[tokio::test]
async fn shutdown_ends_hanging_requests_and_stops_listening() {
    let up = MockUpstream::start().await.unwrap();
    up.push_fault(Fault::Hang);
    let up2 = up.clone();
    let pending = tokio::spawn(async move {
        post(&up2, "/v1/chat/completions", &chat_body("x", false))
            .await
            .status()
    });
    assert!(up.wait_requests(1, T).await);
    tokio::time::timeout(T, up.shutdown()).await.unwrap();
    assert_eq!(
        tokio::time::timeout(T, pending).await.unwrap().unwrap(),
        503
    );
    assert!(tokio::net::TcpStream::connect(up.addr()).await.is_err());
}

#[tokio::test]
async fn concurrent_requests() {
    let up = MockUpstream::start().await.unwrap();
    up.set_recording(false);
    let c = client();
    let mut tasks = Vec::new();
    for i in 0..50 {
        let (c, url) = (c.clone(), up.url("/v1/chat/completions"));
        tasks.push(tokio::spawn(async move {
            let v: Value = c
                .post(url)
                .json(&chat_body(&format!("n{i}"), false))
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["choices"][0]["message"]["content"] == format!("echo: n{i}")
        }));
    }
    for t in tasks {
        assert!(t.await.unwrap());
    }
    assert_eq!(up.request_count(), 50);
    assert!(up.received().is_empty());
    assert!(up.wait_completed(50, T).await);
}

#[tokio::test]
async fn drop_of_last_handle_stops_server() {
    let up = MockUpstream::start().await.unwrap();
    let addr = up.addr();
    let clone = up.clone();
    drop(up);
    // A clone keeps it alive.
    assert_eq!(
        client()
            .get(clone.url("/v1/models"))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    drop(clone);
    // The listener closes shortly after; bounded wait.
    let deadline = Instant::now() + T;
    while tokio::net::TcpStream::connect(addr).await.is_ok() {
        assert!(
            Instant::now() < deadline,
            "server still accepting after drop"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
