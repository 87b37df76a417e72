//! The `anthropic` provider through real sockets: clients speak OpenAI chat completions to
//! Tollgate, Tollgate speaks the Messages API to the test kit's fake Anthropic
//! ([`tollgate::testkit::MockAnthropic`]). Chat and streams, tools both ways, every error type
//! with its status, 529 retried and failed over, errors in the middle of a stream, usage rows
//! and cost, team limits, credential pools, and the official `openai` Python SDK as a client.

mod common;

use std::time::Duration;

use common::{chat, sha256_hex, Gateway, Reply, DEMO_KEY_SHA256};
use serde_json::{json, Value};
use tollgate::testkit::{AnthropicFault, MockAnthropic};

/// `claude` served by the fake at `base` with the fake's key; `extra` is appended (models,
/// teams, prices, store).
fn config(base: &str, model_extra: &str, team_extra: &str, extra: &str) -> String {
    format!(
        r#"
credentials:
  ant: {{ kind: static, secret: "sk-ant-test" }}
upstreams:
  claude-up:
    provider: anthropic
    base_url: "{base}"
    credential: ant
    model: claude-sonnet-test
models:
  claude: {{ targets: [ {{ upstream: claude-up }} ] {model_extra} }}
teams:
  demo: {{ models: ["*"] {team_extra} }}
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}
{extra}
"#
    )
}

/// `claude` on an anthropic upstream at `a` (one attempt), falling back to model `fallback` on
/// an upstream of `provider` at `b` (named `b-up`); teams and keys as given.
fn fallback_config(a: &str, provider: &str, b: &str, teams: &str) -> String {
    format!(
        r#"
credentials:
  ant: {{ kind: static, secret: "sk-ant-test" }}
upstreams:
  a-up: {{ provider: anthropic, base_url: "{a}", credential: ant }}
  b-up: {{ provider: {provider}, base_url: "{b}", credential: ant }}
models:
  claude: {{ targets: [ {{ upstream: a-up }} ], retry: {{ max_attempts: 1 }}, fallbacks: [fallback] }}
  fallback: {{ targets: [ {{ upstream: b-up }} ] }}
{teams}
"#
    )
}

async fn fake() -> MockAnthropic {
    MockAnthropic::start()
        .await
        .unwrap_or_else(|e| panic!("fake anthropic: {e}"))
}

async fn post(gw: &Gateway, body: Value) -> Reply {
    Reply::read(gw.post("/v1/chat/completions", body).await).await
}

fn tools_body(stream: bool) -> Value {
    json!({"model": "claude", "stream": stream,
        "messages": [{"role": "user", "content": "weather in Paris"}],
        "tools": [{"type": "function", "function": {"name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"query": {"type": "string"}}}}}]})
}

/// The data of each event of a stream, parsed (`[DONE]` as a string).
fn parsed(r: &Reply) -> Vec<Value> {
    r.events()
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|_| Value::from(e.as_str())))
        .collect()
}

#[tokio::test]
async fn chat_and_stream_go_through_the_messages_api() {
    let up = fake().await;
    let gw = Gateway::start(&config(&up.base_url(), "", "", "")).await;
    let mut body = chat("claude", "hello there", false);
    body["messages"] = json!([{"role": "system", "content": "Be brief."},
        {"role": "user", "content": "hello there"}]);
    body["max_tokens"] = json!(100);
    let r = post(&gw, body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(r.content(), "echo: hello there");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    assert_eq!(v["usage"]["prompt_tokens"], 4);
    assert_eq!(v["usage"]["completion_tokens"], 3);
    assert_eq!(v["usage"]["total_tokens"], 7);
    // What Anthropic received: its path, its headers, its body.
    let got = up.received();
    let req = &got[0];
    assert_eq!(req.path, "/v1/messages");
    assert_eq!(req.headers["x-api-key"], "sk-ant-test");
    assert_eq!(req.headers["anthropic-version"], "2023-06-01");
    assert!(req.headers.get("authorization").is_none());
    assert_eq!(req.body["model"], "claude-sonnet-test");
    assert_eq!(
        req.body["system"],
        json!([{"type": "text", "text": "Be brief."}])
    );
    assert_eq!(req.body["max_tokens"], 100);

    // Streamed, the client not asking for usage: chunks, a finish reason, [DONE], no usage.
    body["stream"] = json!(true);
    let r = post(&gw, body.clone()).await;
    assert_eq!(r.status, 200);
    assert!(r
        .header("content-type")
        .is_some_and(|c| c.starts_with("text/event-stream")));
    let ev = parsed(&r);
    assert_eq!(r.content(), "echo: hello there");
    assert_eq!(ev[0]["object"], "chat.completion.chunk");
    assert_eq!(ev[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(ev
        .iter()
        .any(|e| e["choices"][0]["finish_reason"] == "stop"));
    assert_eq!(ev.last(), Some(&Value::from("[DONE]")));
    assert!(ev.iter().all(|e| e.get("usage").is_none()), "{}", r.body);
    // The gateway asked for usage, as from every upstream; Anthropic got `stream: true`.
    assert_eq!(up.received()[1].body["stream"], true);
    assert!(up.received()[1].body.get("stream_options").is_none());

    // Asking for usage: the last chunk before [DONE] carries it.
    body["stream_options"] = json!({"include_usage": true});
    let r = post(&gw, body).await;
    let ev = parsed(&r);
    let usage = &ev[ev.len() - 2]["usage"];
    assert_eq!(usage["prompt_tokens"], 4, "{}", r.body);
    assert_eq!(usage["completion_tokens"], 3);
    assert_eq!(ev[ev.len() - 2]["choices"], json!([]));
}

#[tokio::test]
async fn the_anthropic_version_comes_from_the_config() {
    let up = fake().await;
    let cfg = config(&up.base_url(), "", "", "").replace(
        "    model: claude-sonnet-test\n",
        "    model: claude-sonnet-test\n    anthropic_version: \"2024-01-01\"\n",
    );
    let gw = Gateway::start(&cfg).await;
    let r = post(&gw, chat("claude", "hi", false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(up.received()[0].headers["anthropic-version"], "2024-01-01");
}

#[tokio::test]
async fn tools_and_tool_results_translate_both_ways() {
    let up = fake().await;
    let gw = Gateway::start(&config(&up.base_url(), "", "", "")).await;
    let r = post(&gw, tools_body(false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["choices"][0]["finish_reason"], "tool_calls");
    let call = &v["choices"][0]["message"]["tool_calls"][0];
    assert_eq!(call["type"], "function");
    assert_eq!(call["function"]["name"], "get_weather");
    let args: Value = serde_json::from_str(call["function"]["arguments"].as_str().unwrap_or(""))
        .unwrap_or_default();
    assert_eq!(args, json!({"query": "weather in Paris"}));
    let sent = &up.received()[0].body;
    assert_eq!(sent["tools"][0]["name"], "get_weather");
    assert_eq!(sent["tools"][0]["input_schema"]["type"], "object");

    // The tool's result goes back as a tool_result block; the answer is text again.
    let mut follow = tools_body(false);
    follow["tool_choice"] = json!("auto");
    follow["messages"] = json!([
        {"role": "user", "content": "weather in Paris"},
        {"role": "assistant", "content": null, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "sunny"},
    ]);
    let r = post(&gw, follow).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.content(), "echo: result: sunny");
    let sent = &up.received()[1].body;
    assert_eq!(sent["messages"][1]["content"][0]["type"], "tool_use");
    assert_eq!(sent["messages"][1]["content"][0]["input"], args);
    assert_eq!(sent["messages"][2]["content"][0]["type"], "tool_result");
    assert_eq!(sent["messages"][2]["content"][0]["tool_use_id"], call["id"]);
    assert_eq!(sent["tool_choice"], json!({"type": "auto"}));

    // Streamed: the call's id and name first, its arguments in fragments.
    let r = post(&gw, tools_body(true)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let ev = parsed(&r);
    let calls: Vec<&Value> = ev
        .iter()
        .filter_map(|e| e["choices"][0]["delta"]["tool_calls"].get(0))
        .collect();
    assert_eq!(calls[0]["function"]["name"], "get_weather");
    assert!(calls[0]["id"]
        .as_str()
        .is_some_and(|id| id.starts_with("toolu_")));
    let joined: String = calls
        .iter()
        .filter_map(|c| c["function"]["arguments"].as_str())
        .collect();
    assert!(
        calls.len() >= 3,
        "arguments not streamed in parts: {calls:?}"
    );
    assert_eq!(serde_json::from_str::<Value>(&joined).ok(), Some(args));
    assert!(ev
        .iter()
        .any(|e| e["choices"][0]["finish_reason"] == "tool_calls"));
}

#[tokio::test]
async fn a_field_that_cannot_be_translated_is_a_400_naming_it_before_any_upstream_call() {
    let up = fake().await;
    let gw = Gateway::start(&config(&up.base_url(), "", "", "")).await;
    let mut body = chat("claude", "hi", false);
    body["seed"] = json!(7);
    let r = post(&gw, body).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let e = r.error();
    assert_eq!(e["param"], "seed");
    assert_eq!(e["type"], "invalid_request_error");
    let audio = json!({"model": "claude", "messages": [{"role": "user",
        "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]});
    let r = post(&gw, audio).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error()["param"], "messages[0].content[0].type");
    let r = Reply::read(
        gw.post("/v1/embeddings", json!({"model": "claude", "input": "x"}))
            .await,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(up.request_count(), 0);
}

#[tokio::test]
async fn a_team_that_drops_untranslatable_fields_is_answered_without_them_and_told_which() {
    let up = fake().await;
    // A fallback that speaks OpenAI: it gets the fields the anthropic upstream could not take.
    let open = tollgate::testkit::MockUpstream::start().await.unwrap();
    let teams = format!(
        r#"
teams:
  demo: {{ models: ["*"], untranslatable_fields: drop }}
  strict: {{ models: ["*"] }}
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}
  - {{ name: strict, team: strict, sha256: {} }}
"#,
        sha256_hex("sk-strict")
    );
    let cfg = fallback_config(&up.base_url(), "openai", &open.base_url(), &teams);
    let gw = Gateway::start(&cfg).await;
    let mut body = chat("claude", "hello there", false);
    body["seed"] = json!(7);
    body["logprobs"] = json!(true);
    body["temperature"] = json!(0.5);
    let r = post(&gw, body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.content(), "echo: hello there");
    assert_eq!(
        r.header("x-tollgate-dropped-params"),
        Some("logprobs, seed")
    );
    let sent = &up.received()[0].body;
    assert!(
        sent.get("seed").is_none() && sent.get("logprobs").is_none(),
        "{sent}"
    );
    assert_eq!(sent["temperature"], 0.5);

    // Streamed: the same, the header on the stream's answer.
    body["stream"] = json!(true);
    let r = post(&gw, body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(
        r.header("x-tollgate-dropped-params"),
        Some("logprobs, seed")
    );
    assert_eq!(r.content(), "echo: hello there");

    // What is not a top-level parameter is still refused: message content is never dropped.
    let audio = json!({"model": "claude", "messages": [{"role": "user",
        "content": [{"type": "input_audio", "input_audio": {"data": "", "format": "wav"}}]}]});
    let r = post(&gw, audio).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error()["param"], "messages[0].content[0].type");
    assert_eq!(up.request_count(), 2);

    // Fallen back to the OpenAI-speaking upstream: it receives the body whole, nothing dropped.
    up.push_fault(AnthropicFault::error("overloaded_error"));
    body["stream"] = json!(false);
    let r = post(&gw, body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.upstream(), Some("b-up"));
    assert_eq!(r.header("x-tollgate-dropped-params"), None);
    let got = open.received();
    assert_eq!(got[0].body["seed"], 7);
    assert_eq!(got[0].body["logprobs"], true);

    // The team without the switch: a 400 naming a field the provider refused, nothing sent.
    let before = up.request_count();
    let r = Reply::read(
        gw.post_with_key("/v1/chat/completions", "sk-strict", body)
            .await,
    )
    .await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error()["param"], "logprobs");
    assert_eq!(up.request_count(), before);
}

#[tokio::test]
async fn every_anthropic_error_type_keeps_its_status_in_an_openai_shape() {
    let up = fake().await;
    let no_retry = ", retry: { max_attempts: 1 }";
    let gw = Gateway::start(&config(&up.base_url(), no_retry, "", "")).await;
    let cases = [
        ("invalid_request_error", 400),
        ("permission_error", 403),
        ("not_found_error", 404),
        ("request_too_large", 413),
        ("rate_limit_error", 429),
        ("api_error", 500),
        ("overloaded_error", 529),
    ];
    for (kind, status) in cases {
        up.push_fault(AnthropicFault::error(kind));
        let r = post(&gw, chat("claude", "hi", false)).await;
        assert_eq!(r.status, status, "{kind}: {}", r.body);
        let e = r.error();
        assert_eq!(e["type"], kind, "{}", r.body);
        assert_eq!(e["code"], kind);
        assert_eq!(e["message"], "injected by the fake");
    }
    // A refused key: the gateway's own credential, so a 502 naming the upstream, not the
    // client's 401.
    up.push_fault(AnthropicFault::error("authentication_error"));
    let r = post(&gw, chat("claude", "hi", false)).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert!(r.error()["message"]
        .as_str()
        .is_some_and(|m| m.contains("claude-up")));
    // The same errors before a stream starts.
    up.push_fault(AnthropicFault::error("invalid_request_error"));
    let r = post(&gw, chat("claude", "hi", true)).await;
    assert_eq!(r.status, 400);
    assert_eq!(r.error()["type"], "invalid_request_error");
}

#[tokio::test]
async fn an_overloaded_529_is_retried() {
    let up = fake().await;
    let gw = Gateway::start(&config(&up.base_url(), "", "", "")).await;
    up.push_fault(AnthropicFault::error("overloaded_error"));
    let r = post(&gw, chat("claude", "hi", false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.attempts(), Some(2));
    assert_eq!(up.request_count(), 2);
    // And a stream.
    up.push_fault(AnthropicFault::error("overloaded_error"));
    let r = post(&gw, chat("claude", "hi", true)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.attempts(), Some(2));
    assert_eq!(r.content(), "echo: hi");
}

#[tokio::test]
async fn an_overloaded_upstream_falls_back_to_a_second_one() {
    let a = fake().await;
    let b = fake().await;
    let teams = format!(
        "teams:\n  demo: {{ models: [\"*\"] }}\nkeys:\n  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}"
    );
    let cfg = fallback_config(&a.base_url(), "anthropic", &b.base_url(), &teams);
    let gw = Gateway::start(&cfg).await;
    a.push_fault(AnthropicFault::error("overloaded_error"));
    let r = post(&gw, chat("claude", "hi", false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.upstream(), Some("b-up"));
    assert_eq!((a.request_count(), b.request_count()), (1, 1));
}

#[tokio::test]
async fn an_error_event_or_a_cut_mid_stream_ends_with_an_openai_error_event() {
    let up = fake().await;
    let gw = Gateway::start(&config(&up.base_url(), "", "", "")).await;
    let body = chat("claude", "one two three four five", true);
    // message_start, ping, block start, two deltas, then an error event.
    up.push_fault(AnthropicFault::ErrorEventAfter(
        5,
        "overloaded_error".to_owned(),
    ));
    let r = post(&gw, body.clone()).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content(), "echo: one");
    let ev = parsed(&r);
    let last = ev.last().cloned().unwrap_or_default();
    assert_eq!(last["error"]["type"], "overloaded_error", "{}", r.body);
    assert_eq!(last["error"]["message"], "injected by the fake");
    assert!(!r.body.contains("[DONE]"));

    up.push_fault(AnthropicFault::CutAfter(6));
    let r = post(&gw, body).await;
    assert_eq!(r.status, 200);
    let ev = parsed(&r);
    let last = ev.last().cloned().unwrap_or_default();
    assert_eq!(last["error"]["code"], "upstream_invalid", "{}", r.body);
    assert!(up.wait_idle(Duration::from_secs(5)).await);
}

#[tokio::test]
async fn usage_rows_and_cost_come_from_anthropic_usage() {
    let up = fake().await;
    up.set_cache_read(10);
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let store = format!(
        "prices:\n  claude: {{ input_per_million: 3, output_per_million: 15 }}\n\
         admin:\n  sha256: {}\nstore:\n  url: \"{url}\"\n  usage: {{ spill_path: \"{}\", \
         batch_interval: 20ms }}\n",
        sha256_hex(common::ADMIN_KEY),
        dir.path().join("spill.jsonl").display()
    );
    let gw = Gateway::start(&config(&up.base_url(), "", "", &store)).await;
    let db = gw.store();
    let r = post(&gw, chat("claude", "what does it cost", false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    // 4 words in, 10 read from the cache: 14 prompt tokens, 10 of them cached.
    assert_eq!(v["usage"]["prompt_tokens"], 14);
    assert_eq!(v["usage"]["prompt_tokens_details"]["cached_tokens"], 10);
    let completion = v["usage"]["completion_tokens"].as_u64().unwrap_or(0);
    assert_eq!(r.header("x-tollgate-prompt-tokens"), Some("14"));
    let nanos = 14 * 3000 + completion * 15000;
    let cost = format!("{}.{:09}", nanos / 1_000_000_000, nanos % 1_000_000_000);
    assert_eq!(r.header("x-tollgate-cost-usd"), Some(cost.as_str()));
    // A stream's usage is counted too.
    let mut s = chat("claude", "what does it cost", true);
    s["stream_options"] = json!({"include_usage": true});
    let r = post(&gw, s).await;
    assert_eq!(r.status, 200);
    gw.stop().await;
    let report = db
        .query_usage(&tollgate::store::usage::UsageFilter::default())
        .await
        .unwrap_or_else(|e| panic!("usage: {e}"));
    assert_eq!(report.totals.requests, 2);
    let expected = 2.0 * nanos as f64 / 1e9;
    assert!(
        (report.totals.cost_usd - expected).abs() < 1e-12,
        "{report:?} vs {expected}"
    );
}

#[tokio::test]
async fn team_limits_apply_before_anthropic_is_called() {
    let up = fake().await;
    let gw = Gateway::start(&config(&up.base_url(), "", ", requests_per_minute: 2", "")).await;
    for _ in 0..2 {
        let r = post(&gw, chat("claude", "hi", false)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.header("x-ratelimit-limit-requests"), Some("2"));
    }
    let r = post(&gw, chat("claude", "hi", true)).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.error()["code"], "rate_limit_exceeded");
    assert_eq!(up.request_count(), 2);
}

#[tokio::test]
async fn a_pool_member_anthropic_refuses_is_rotated_out() {
    let up = fake().await;
    let cfg = config(&up.base_url(), "", "", "").replace(
        r#"ant: { kind: static, secret: "sk-ant-test" }"#,
        r#"ant: { kind: pool, tokens: ["sk-ant-revoked", "sk-ant-test"] }"#,
    );
    let gw = Gateway::start(&cfg).await;
    for i in 0..4 {
        let r = post(&gw, chat("claude", "hi", false)).await;
        assert_eq!(r.status, 200, "request {i}: {}", r.body);
    }
    let keys: Vec<String> = up
        .received()
        .iter()
        .filter_map(|r| r.headers.get("x-api-key")?.to_str().ok().map(str::to_owned))
        .collect();
    assert!(keys.iter().any(|k| k == "sk-ant-revoked"), "{keys:?}");
    assert!(keys.iter().filter(|k| *k == "sk-ant-test").count() >= 4);
}

/// An expiring credential (OAuth2) that Anthropic stops accepting: the 401 renews it once and
/// the request is sent again with the new token; the client sees a 200.
#[tokio::test]
async fn a_refused_expiring_credential_is_renewed_once_and_the_request_retried() {
    let oauth = tollgate::testkit::MockOAuth::start()
        .await
        .unwrap_or_else(|e| panic!("mock oauth: {e}"));
    oauth.add_client("cid", "cs-1");
    let up = fake().await;
    let valid = oauth.clone();
    up.set_key_check(Some(std::sync::Arc::new(move |k: &str| valid.is_valid(k))));
    let cred = format!(
        "ant:\n    kind: oauth2\n    token_url: {}\n    client_id: cid\n    \
         client_secret: \"${{OA_SECRET}}\"\n    min_renew_interval: 10ms",
        oauth.token_url()
    );
    let cfg = config(&up.base_url(), ", retry: { max_attempts: 1 }", "", "")
        .replace(r#"ant: { kind: static, secret: "sk-ant-test" }"#, &cred);
    let env = [("OA_SECRET".to_owned(), "cs-1".to_owned())];
    let gw = Gateway::start_with_env(&cfg, env.into_iter().collect()).await;
    let r = post(&gw, chat("claude", "hi", false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let issued = oauth.issued();
    oauth.revoke_all();
    let r = post(&gw, chat("claude", "hi", false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    // Two sends: the refused one and the one with the renewed token (max_attempts is 1).
    assert_eq!(r.attempts(), Some(2));
    assert_eq!(oauth.issued(), issued + 1);
    let keys: Vec<String> = up
        .received()
        .iter()
        .filter_map(|r| r.headers.get("x-api-key")?.to_str().ok().map(str::to_owned))
        .collect();
    assert_eq!(keys.len(), 3, "{keys:?}");
    assert_eq!(keys[0], keys[1]);
    assert_ne!(keys[1], keys[2]);
}

/// The official `openai` Python SDK, unchanged, against a model served by Anthropic.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_talks_to_an_anthropic_upstream() {
    let up = fake().await;
    // The script's first call meets a rate limit (the SDK's RateLimitError).
    up.push_fault(AnthropicFault::error("rate_limit_error"));
    let gw = Gateway::start(&config(
        &up.base_url(),
        ", retry: { max_attempts: 1 }",
        "",
        "",
    ))
    .await;
    let stdout = common::python::run_script("test_anthropic_upstream.py", &[&gw.url("/v1")]).await;
    assert!(up.request_count() >= 5, "{stdout}");
    assert!(stdout.contains("6/6 checks passed"), "{stdout}");
}

/// `examples/anthropic.yaml` as it ships, its `base_url` pointed at the fake: the curl in its
/// header comment answers, with its cost.
#[tokio::test]
async fn the_example_config_serves_claude() {
    let up = fake().await;
    up.set_key("sk-ant-from-env");
    let yaml = std::fs::read_to_string("examples/anthropic.yaml").unwrap_or_default();
    let commented = "    # base_url: https://api.anthropic.com";
    assert!(yaml.contains(commented), "the example changed");
    let yaml = yaml.replace(commented, &format!("    base_url: \"{}\" #", up.base_url()));
    let env = [("ANTHROPIC_API_KEY".to_owned(), "sk-ant-from-env".to_owned())];
    let gw = Gateway::start_with_env(&yaml, env.into_iter().collect()).await;
    let mut body = chat("claude", "hello", false);
    body["max_tokens"] = json!(200);
    let r = post(&gw, body).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.content(), "echo: hello");
    assert!(r.header("x-tollgate-cost-usd").is_some());
    assert_eq!(up.received()[0].body["model"], "claude-sonnet-4-5");
}

// ---- POST /v1/messages: Anthropic's API for clients, any upstream behind it ----

/// `mock-gpt` on the built-in mock (an OpenAI-shaped upstream) and `claude` on the fake.
fn messages_config(base: &str, team_extra: &str) -> String {
    config(base, "", team_extra, "")
        .replace(
            "upstreams:\n",
            "upstreams:\n  mock: { provider: mock, mock: { chunks: 3 } }\n",
        )
        .replace(
            "models:\n",
            "models:\n  mock-gpt: { targets: [ { upstream: mock } ] }\n",
        )
}

async fn post_messages(gw: &Gateway, key: &str, body: Value) -> Reply {
    let r = gw
        .client
        .post(gw.url("/v1/messages"))
        .header("x-api-key", key)
        .header("anthropic-version", "2023-06-01")
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("/v1/messages: {e}"));
    Reply::read(r).await
}

#[tokio::test]
async fn messages_are_answered_in_anthropic_shape_within_the_team_limits() {
    let up = fake().await;
    let gw = Gateway::start(&messages_config(&up.base_url(), ", requests_per_minute: 3")).await;
    let key = "sk-tollgate-demo";
    let body = json!({"model": "mock-gpt", "max_tokens": 20,
        "messages": [{"role": "user", "content": "hello there"}]});
    let r = post_messages(&gw, key, body.clone()).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let m = r.json();
    assert_eq!(m["type"], "message");
    assert_eq!(
        m["content"][0],
        json!({"type": "text", "text": "mock reply: hello there"})
    );
    assert_eq!(m["stop_reason"], "end_turn");
    assert!(m["usage"]["output_tokens"].as_u64().unwrap_or(0) > 0);

    let mut s = body.clone();
    s["stream"] = json!(true);
    let r = post_messages(&gw, key, s).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let names: Vec<&str> = r
        .body
        .lines()
        .filter_map(|l| l.strip_prefix("event: "))
        .collect();
    assert_eq!(names.first(), Some(&"message_start"));
    assert_eq!(names.get(1), Some(&"content_block_start"));
    assert_eq!(
        &names[names.len() - 3..],
        ["content_block_stop", "message_delta", "message_stop"]
    );
    let delta = parsed(&r)
        .into_iter()
        .find(|e| e["type"] == "message_delta")
        .unwrap_or_default();
    assert_eq!(delta["delta"]["stop_reason"], "end_turn");
    assert!(
        delta["usage"]["output_tokens"].as_u64().unwrap_or(0) > 0,
        "{}",
        r.body
    );

    // The third request of the minute passes, the fourth is refused in Anthropic's shape.
    assert_eq!(post_messages(&gw, key, body.clone()).await.status, 200);
    let r = post_messages(&gw, key, body.clone()).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.json()["type"], "error");
    assert_eq!(r.json()["error"]["type"], "rate_limit_error");
    let r = post_messages(&gw, "sk-wrong", body).await;
    assert_eq!(r.status, 401);
    assert_eq!(r.json()["error"]["type"], "authentication_error");
}

/// The official `anthropic` Python SDK, unchanged, against Tollgate: an OpenAI-shaped
/// upstream and an Anthropic one behind it, streams and tools included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_anthropic_python_sdk_talks_to_tollgate() {
    let up = fake().await;
    let gw = Gateway::start(&messages_config(&up.base_url(), "")).await;
    let stdout = common::python::run_script("test_anthropic_sdk.py", &[&gw.url("")]).await;
    assert!(up.request_count() >= 4, "{stdout}");
    assert!(stdout.contains("6/6 checks passed"), "{stdout}");
}
