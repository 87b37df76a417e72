//! The core path through real sockets, on the built-in mock model.

mod common;

use common::{chat, mock_config, sse_events, stream_content, Gateway, DEMO_KEY};
use serde_json::{json, Value};

async fn json_of(resp: reqwest::Response) -> Value {
    match resp.json::<Value>().await {
        Ok(v) => v,
        Err(e) => panic!("not JSON: {e}"),
    }
}

fn assert_openai_error(v: &Value, code: &str) {
    let e = &v["error"];
    assert!(e["message"].is_string(), "{v}");
    assert!(e["type"].is_string(), "{v}");
    assert!(e.get("param").is_some(), "{v}");
    assert_eq!(e["code"], code, "{v}");
}

#[tokio::test]
async fn stream_and_non_stream_carry_the_same_content() {
    let gw = Gateway::start(&mock_config(3, 0)).await;
    let resp = gw
        .post(
            "/v1/chat/completions",
            chat("mock-gpt", "one two three four", false),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert!(resp.headers().get("x-request-id").is_some());
    let v = json_of(resp).await;
    let content = v["choices"][0]["message"]["content"]
        .as_str()
        .unwrap_or("")
        .to_owned();
    assert_eq!(content, "mock reply: one two three four");
    assert!(v["usage"]["total_tokens"].as_u64().unwrap_or(0) > 0);

    let resp = gw
        .post(
            "/v1/chat/completions",
            chat("mock-gpt", "one two three four", true),
        )
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok()),
        Some("text/event-stream")
    );
    let events = sse_events(resp).await;
    assert_eq!(stream_content(&events), content);
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    // The client did not ask for usage: no usage chunk reaches it.
    assert!(
        events.iter().all(|e| !e.contains("\"usage\"")),
        "{events:?}"
    );
}

#[tokio::test]
async fn include_usage_gets_the_usage_chunk() {
    let gw = Gateway::start(&mock_config(2, 0)).await;
    let mut body = chat("mock-gpt", "count me", true);
    body["stream_options"] = json!({"include_usage": true});
    let events = sse_events(gw.post("/v1/chat/completions", body).await).await;
    let usage: Vec<Value> = events
        .iter()
        .filter_map(|e| serde_json::from_str::<Value>(e).ok())
        .filter(|v| v["usage"].is_object())
        .collect();
    assert_eq!(usage.len(), 1, "{events:?}");
    assert_eq!(usage[0]["usage"]["prompt_tokens"], 2);
}

#[tokio::test]
async fn completions_embeddings_and_models() {
    let gw = Gateway::start(&mock_config(2, 0)).await;
    let v = json_of(
        gw.post(
            "/v1/completions",
            json!({"model":"mock-gpt","prompt":"hi you"}),
        )
        .await,
    )
    .await;
    assert_eq!(v["choices"][0]["text"], "mock reply: hi you");
    let v = json_of(
        gw.post(
            "/v1/embeddings",
            json!({"model":"mock-gpt","input":["a","b","c"]}),
        )
        .await,
    )
    .await;
    assert_eq!(v["data"].as_array().map(Vec::len), Some(3));
    let resp = gw
        .client
        .get(gw.url("/v1/models"))
        .header("x-api-key", DEMO_KEY)
        .send()
        .await;
    let v = json_of(resp.unwrap_or_else(|e| panic!("{e}"))).await;
    assert_eq!(v["data"][0]["id"], "mock-gpt");
}

#[tokio::test]
async fn authentication_failures_are_401_and_openai_shaped() {
    let gw = Gateway::start(&mock_config(2, 0)).await;
    let resp = gw
        .post_with_key(
            "/v1/chat/completions",
            "sk-wrong",
            chat("mock-gpt", "x", false),
        )
        .await;
    assert_eq!(resp.status(), 401);
    assert_openai_error(&json_of(resp).await, "invalid_api_key");
    let resp = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .json(&chat("mock-gpt", "x", false))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), 401);
    let resp = gw
        .client
        .get(gw.url("/v1/models"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn model_rules_give_404_and_403() {
    let cfg = mock_config(2, 0).replace(
        "models:\n  mock-gpt: { targets: [ { upstream: mock } ] }",
        "models:\n  mock-gpt: { targets: [ { upstream: mock } ] }\n  secret-gpt: { targets: [ { upstream: mock } ] }",
    ).replace("demo: { models: [\"*\"] }", "demo: { models: [mock-gpt] }");
    let gw = Gateway::start(&cfg).await;
    let resp = gw
        .post("/v1/chat/completions", chat("nope", "x", false))
        .await;
    assert_eq!(resp.status(), 404);
    assert_openai_error(&json_of(resp).await, "model_not_found");
    let resp = gw
        .post("/v1/chat/completions", chat("secret-gpt", "x", false))
        .await;
    assert_eq!(resp.status(), 403);
    assert_openai_error(&json_of(resp).await, "model_not_allowed");
    let resp = gw
        .client
        .get(gw.url("/v1/models"))
        .bearer_auth(DEMO_KEY)
        .send()
        .await;
    let v = json_of(resp.unwrap_or_else(|e| panic!("{e}"))).await;
    let ids: Vec<&str> = v["data"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|m| m["id"].as_str())
        .collect();
    assert_eq!(ids, vec!["mock-gpt"]);
}

#[tokio::test]
async fn bad_input_gets_4xx_with_openai_body() {
    let gw = Gateway::start(&format!(
        "{}\nserver: {{ max_body_bytes: 2048 }}\n",
        mock_config(2, 0)
    ))
    .await;
    let send = |body: Vec<u8>| {
        gw.client
            .post(gw.url("/v1/chat/completions"))
            .bearer_auth(DEMO_KEY)
            .header("content-type", "application/json")
            .body(body)
            .send()
    };
    let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
    let cases: Vec<(Vec<u8>, u16, &str)> = vec![
        (b"{not json".to_vec(), 400, "invalid_request"),
        (vec![0xff, 0xfe, b'{', b'}'], 400, "invalid_request"),
        (format!(r#"{{"model":"mock-gpt","messages":{deep}}}"#).into_bytes().into_iter().take(2000).collect(), 400, "invalid_request"),
        (br#"{"model":"mock-gpt","messages":[{"role":"user","content":"x"}],"max_tokens":1e30}"#.to_vec(), 400, "invalid_request"),
        (br#"{"model":"mock-gpt","messages":[{"role":"user","content":"x"}],"n":-1}"#.to_vec(), 400, "invalid_request"),
        (br#"{"model":"mock-gpt","messages":[{"role":"user","content":"x"}],"max_tokens":"many"}"#.to_vec(), 400, "invalid_request"),
        (vec![b' '; 4096], 413, "body_too_large"),
    ];
    for (body, status, code) in cases {
        let resp = send(body).await.unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status().as_u16(), status);
        assert_openai_error(&json_of(resp).await, code);
    }
    // Deeply nested JSON within the size limit.
    let gw2 = Gateway::start(&mock_config(2, 0)).await;
    let resp = gw2
        .client
        .post(gw2.url("/v1/chat/completions"))
        .bearer_auth(DEMO_KEY)
        .body(format!(r#"{{"model":"mock-gpt","messages":{deep}}}"#))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn unknown_route_and_wrong_method() {
    let gw = Gateway::start(&mock_config(2, 0)).await;
    let resp = gw
        .client
        .get(gw.url("/v2/whatever"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), 404);
    assert_openai_error(&json_of(resp).await, "unknown_url");
    let resp = gw
        .client
        .get(gw.url("/v1/chat/completions"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.status(), 405);
    assert_openai_error(&json_of(resp).await, "method_not_allowed");
}

#[tokio::test]
async fn request_id_is_accepted_or_generated() {
    let gw = Gateway::start(&mock_config(2, 0)).await;
    let resp = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(DEMO_KEY)
        .header("x-request-id", "req-abc-123")
        .json(&chat("mock-gpt", "x", false))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(resp.headers()["x-request-id"], "req-abc-123");
    let resp = gw
        .client
        .get(gw.url("/nope"))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(resp
        .headers()
        .get("x-request-id")
        .is_some_and(|v| v.len() == 36));
}

#[tokio::test]
async fn health_ready_and_metrics() {
    let gw = Gateway::start(&mock_config(2, 0)).await;
    for p in ["/health", "/ready"] {
        let resp = gw
            .client
            .get(gw.url(p))
            .send()
            .await
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(resp.status(), 200, "{p}");
    }
    let _ = gw
        .post("/v1/chat/completions", chat("mock-gpt", "x y", false))
        .await;
    let _ = gw
        .post_with_key(
            "/v1/chat/completions",
            "sk-bad",
            chat("mock-gpt", "x", false),
        )
        .await;
    let text = gw.metrics_text().await;
    for needle in [
        "tollgate_requests_total{model=\"mock-gpt\",team=\"demo\",status=\"200\"}",
        "tollgate_request_duration_seconds_bucket",
        "tollgate_time_to_first_byte_seconds_bucket",
        "tollgate_overhead_seconds_bucket",
        "tollgate_tokens_total{model=\"mock-gpt\",team=\"demo\",direction=\"in\"}",
        "tollgate_errors_total{kind=\"auth_failed\"}",
        "tollgate_in_flight_requests",
    ] {
        assert!(text.contains(needle), "missing {needle} in\n{text}");
    }
    assert!(!text.contains("sk-bad") && !text.contains(DEMO_KEY));
}

#[tokio::test]
async fn cors_allows_listed_origins_only() {
    let cfg = format!(
        "{}\nserver:\n  cors: {{ allowed_origins: [\"https://app.example\"] }}\n",
        mock_config(2, 0)
    );
    let gw = Gateway::start(&cfg).await;
    let preflight = |origin: &'static str| {
        gw.client
            .request(reqwest::Method::OPTIONS, gw.url("/v1/chat/completions"))
            .header("origin", origin)
            .header("access-control-request-method", "POST")
            .send()
    };
    let ok = preflight("https://app.example")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        ok.headers()["access-control-allow-origin"],
        "https://app.example"
    );
    let other = preflight("https://evil.example")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(other.headers().get("access-control-allow-origin").is_none());
}

#[tokio::test]
async fn team_shaping_applies_defaults_and_caps() {
    let cfg = mock_config(2, 0).replace(
        "demo: { models: [\"*\"] }",
        "demo: { models: [\"*\"], max_tokens: { default: 3, max: 4 }, max_messages: 2, temperature: { min: 0, max: 1 } }",
    );
    let gw = Gateway::start(&cfg).await;
    // Default max_tokens 3 cuts the mock's echo to three words.
    let v = json_of(
        gw.post("/v1/chat/completions", chat("mock-gpt", "a b c d e", false))
            .await,
    )
    .await;
    assert_eq!(v["choices"][0]["message"]["content"], "mock reply: a");
    let mut body = chat("mock-gpt", "a b c d e", false);
    body["max_tokens"] = json!(1000);
    let v = json_of(gw.post("/v1/chat/completions", body).await).await;
    assert_eq!(v["choices"][0]["message"]["content"], "mock reply: a b");
    let mut body = chat("mock-gpt", "x", false);
    body["temperature"] = json!(1.5);
    assert_eq!(gw.post("/v1/chat/completions", body).await.status(), 400);
    let body = json!({"model":"mock-gpt","messages":[{"role":"user","content":"1"},{"role":"user","content":"2"},{"role":"user","content":"3"}]});
    assert_eq!(gw.post("/v1/chat/completions", body).await.status(), 400);
}
