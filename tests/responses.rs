//! `POST /v1/responses` through real sockets: translated to chat and back over the built-in
//! mock (text, function tools, streams), the team's limits and the usage row and cost of a chat
//! request, refusals naming the field, and a stream cut upstream ending in an `error` event.
//! The official Python SDK's checks are in tests/python/test_openai_sdk.py.

mod common;

use common::{Gateway, DEMO_KEY_SHA256};
use serde_json::{json, Value};
use tollgate::testkit::{Fault, MockUpstream};

fn config(dir: &std::path::Path, flaky: &str) -> String {
    format!(
        r#"
upstreams:
  mock: {{ provider: mock, mock: {{ chunks: 4 }} }}
  flaky: {{ provider: openai, base_url: "{flaky}" }}
models:
  mock-gpt: {{ targets: [ {{ upstream: mock }} ] }}
  flaky-gpt: {{ targets: [ {{ upstream: flaky }} ] }}
prices:
  mock-gpt: {{ input_per_million: 1000, output_per_million: 2000 }}
teams:
  demo: {{ models: ["*"], rpm: 8 }}
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}
store:
  url: "sqlite://{db}?mode=rwc"
  usage: {{ spill_path: {spill}, batch_interval: 20ms }}
"#,
        db = dir.join("t.db").display(),
        spill = dir.join("spill.jsonl").display(),
    )
}

async fn post(gw: &Gateway, body: Value) -> reqwest::Response {
    gw.post("/v1/responses", body).await
}

/// The SSE events of a Responses stream: (event name, data).
async fn events(resp: reqwest::Response) -> Vec<(String, Value)> {
    let text = resp.text().await.unwrap_or_else(|e| panic!("{e}"));
    text.split("\n\n")
        .filter(|e| !e.trim().is_empty())
        .map(|e| {
            let name = e
                .lines()
                .find_map(|l| l.strip_prefix("event: "))
                .unwrap_or_default()
                .to_owned();
            let data = e
                .lines()
                .find_map(|l| l.strip_prefix("data: "))
                .and_then(|d| serde_json::from_str(d).ok())
                .unwrap_or(Value::Null);
            (name, data)
        })
        .collect()
}

#[tokio::test]
async fn text_and_tool_calls_stream_and_not_through_the_chat_path() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let gw = Gateway::start(&config(dir.path(), "http://127.0.0.1:9/v1")).await;

    // Text, not streamed: the response object, usage, and the chat path's cost header.
    let r = post(
        &gw,
        json!({"model": "mock-gpt", "instructions": "be brief", "input": "hello there"}),
    )
    .await;
    assert_eq!(r.status(), 200);
    assert!(r.headers().contains_key("x-tollgate-cost-usd"));
    assert!(r.headers().contains_key("x-request-id"));
    let v: Value = r.json().await.unwrap_or_default();
    assert_eq!(v["object"], "response");
    assert_eq!(v["status"], "completed");
    assert_eq!(v["instructions"], "be brief");
    assert_eq!(v["output"][0]["type"], "message");
    assert_eq!(
        v["output"][0]["content"][0]["text"],
        "mock reply: hello there"
    );
    let usage = &v["usage"];
    assert!(usage["input_tokens"].as_u64().unwrap_or(0) > 0, "{v}");
    assert_eq!(usage["output_tokens"], 4, "{v}");

    // Text, streamed: the event sequence, deltas as the chunks came, the total at the end.
    let r = post(
        &gw,
        json!({"model": "mock-gpt", "input": "hello there", "stream": true}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let evs = events(r).await;
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.first(), Some(&"response.created"), "{names:?}");
    assert_eq!(names.last(), Some(&"response.completed"), "{names:?}");
    let deltas: Vec<&str> = evs
        .iter()
        .filter(|(n, _)| n == "response.output_text.delta")
        .filter_map(|(_, d)| d["delta"].as_str())
        .collect();
    assert_eq!(deltas.len(), 4, "one delta per chunk: {deltas:?}");
    assert_eq!(deltas.concat(), "mock reply: hello there");
    let seqs: Vec<u64> = evs
        .iter()
        .filter_map(|(_, d)| d["sequence_number"].as_u64())
        .collect();
    assert_eq!(seqs, (0..evs.len() as u64).collect::<Vec<_>>());
    let done = &evs[evs.len() - 1].1["response"];
    assert_eq!(
        done["output"][0]["content"][0]["text"],
        "mock reply: hello there"
    );
    assert_eq!(done["usage"]["output_tokens"], 4);

    // A function tool: the call, then the tool's result in a second turn.
    let tool = json!({"type": "function", "name": "lookup",
        "parameters": {"type": "object", "properties": {"input": {"type": "string"}}}});
    let r = post(
        &gw,
        json!({"model": "mock-gpt", "input": "find it", "tools": [tool]}),
    )
    .await;
    let v: Value = r.json().await.unwrap_or_default();
    let call = &v["output"][0];
    assert_eq!(call["type"], "function_call", "{v}");
    assert_eq!(call["name"], "lookup");
    assert_eq!(call["arguments"], r#"{"input":"find it"}"#);
    let r = post(
        &gw,
        json!({"model": "mock-gpt", "tools": [tool], "input": [
            {"role": "user", "content": "find it"},
            {"type": "function_call", "call_id": call["call_id"], "name": "lookup",
             "arguments": call["arguments"]},
            {"type": "function_call_output", "call_id": call["call_id"], "output": "found"},
        ]}),
    )
    .await;
    let v: Value = r.json().await.unwrap_or_default();
    assert_eq!(
        v["output"][0]["content"][0]["text"], "mock reply: found",
        "{v}"
    );

    // The call streamed: its arguments in pieces, whole at the end.
    let r = post(
        &gw,
        json!({"model": "mock-gpt", "input": "find it", "tools": [tool], "stream": true}),
    )
    .await;
    let evs = events(r).await;
    let pieces: String = evs
        .iter()
        .filter(|(n, _)| n == "response.function_call_arguments.delta")
        .filter_map(|(_, d)| d["delta"].as_str())
        .collect();
    assert_eq!(pieces, r#"{"input":"find it"}"#);
    let done = &evs[evs.len() - 1].1["response"]["output"][0];
    assert_eq!(done["arguments"], pieces, "{done}");

    // Five requests so far, all within the team's 8 a minute; the ninth of the minute is refused
    // as a chat request would be.
    for _ in 0..3 {
        assert_eq!(
            post(&gw, json!({"model": "mock-gpt", "input": "x"}))
                .await
                .status(),
            200
        );
    }
    let r = post(&gw, json!({"model": "mock-gpt", "input": "x"})).await;
    assert_eq!(r.status(), 429);
    let e: Value = r.json().await.unwrap_or_default();
    assert_eq!(e["error"]["code"], "rate_limit_exceeded", "{e}");

    // Every request wrote its usage row.
    gw.stop().await;
    let store = tollgate::store::Store::connect(
        &format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display()),
        1,
    )
    .await
    .unwrap_or_else(|e| panic!("store: {e}"));
    let (rows, ids) = common::usage_rows_and_ids(&store).await;
    assert_eq!(
        rows, 9,
        "one usage row per request, the refused one included"
    );
    assert_eq!(ids.len(), 9);
    // The rows name the API the client called.
    let db = sqlx::SqlitePool::connect(&format!("sqlite://{}", dir.path().join("t.db").display()))
        .await
        .unwrap_or_else(|e| panic!("sqlite: {e}"));
    let endpoints: Vec<(String, i64)> =
        sqlx::query_as("SELECT endpoint, COUNT(*) FROM usage GROUP BY endpoint")
            .fetch_all(&db)
            .await
            .unwrap_or_else(|e| panic!("usage rows: {e}"));
    assert_eq!(endpoints, [("responses".to_owned(), 9)]);
}

#[tokio::test]
async fn refusals_name_the_field_and_errors_keep_their_shape() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let up = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("mock upstream: {e}"));
    let gw = Gateway::start(&config(dir.path(), &up.base_url())).await;
    for (body, param) in [
        (
            json!({"model": "mock-gpt", "input": "x", "previous_response_id": "resp_1"}),
            "previous_response_id",
        ),
        (
            json!({"model": "mock-gpt", "input": "x", "store": true}),
            "store",
        ),
        (
            json!({"model": "mock-gpt", "input": "x", "tools": [{"type": "web_search"}]}),
            "tools[0].type",
        ),
        (
            json!({"model": "mock-gpt", "input": [{"type": "file_search_call"}]}),
            "input[0].type",
        ),
        (
            json!({"model": "mock-gpt", "input": "x", "frequency_penalty": 1}),
            "frequency_penalty",
        ),
    ] {
        let r = post(&gw, body).await;
        assert_eq!(r.status(), 400, "{param}");
        let e: Value = r.json().await.unwrap_or_default();
        assert_eq!(e["error"]["param"], param, "{e}");
        assert_eq!(e["error"]["type"], "invalid_request_error", "{e}");
    }
    // No key: 401 before the body is read; an unknown model: the chat path's 404.
    let r = reqwest::Client::new()
        .post(gw.url("/v1/responses"))
        .json(&json!({"model": "mock-gpt", "input": "x"}))
        .send()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(r.status(), 401);
    let r = post(&gw, json!({"model": "nope", "input": "x"})).await;
    assert_eq!(r.status(), 404);
    let e: Value = r.json().await.unwrap_or_default();
    assert!(
        e["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("nope")),
        "{e}"
    );

    // A stream the upstream cuts: the text so far, then an `error` event, no completion.
    up.push_fault(Fault::ResetMidBody);
    let r = post(
        &gw,
        json!({"model": "flaky-gpt", "input": "hello there", "stream": true}),
    )
    .await;
    assert_eq!(r.status(), 200);
    let evs = events(r).await;
    let names: Vec<&str> = evs.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(names.last(), Some(&"error"), "{names:?}");
    assert!(!names.contains(&"response.completed"), "{names:?}");
    gw.stop().await;
    up.shutdown().await;
}
