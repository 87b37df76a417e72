//! The `azure` provider against the test kit's fake Azure OpenAI resource, through real sockets:
//! deployments in the path, `api-version` in the query (apart from the path), the key in the
//! `api-key` header or an Entra ID token from an `oauth2` credential as a bearer; chat (JSON and
//! stream) and embeddings answered OpenAI-shaped with the client's model name, usage counted;
//! tools, `tool_choice` and tool results passed to the deployment untouched and its calls passed
//! back; Azure's own refusals (a wrong api-version, the content filter's 400, a 429 with
//! `retry-after-ms`) reaching the client OpenAI-shaped; and the official `openai` Python SDK as
//! the client.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{await_metric, chat, sse_events, stream_content, Gateway, Reply, DEMO_KEY_SHA256};
use serde_json::{json, Value};
use tollgate::routing::breaker::State as BreakerState;
use tollgate::testkit::{AzureFake, Fault, MockOAuth, MockUpstream};

const KEY: &str = "azure-resource-key-1";
const VERSION: &str = "2024-10-21";
/// A term the fake resource's content filter refuses.
const FILTERED: &str = "forbidden-topic";

async fn fake() -> MockUpstream {
    let m = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("mock: {e}"));
    let mut az = AzureFake::new("gpt4o-prod", "gpt-4o-2024-08-06", VERSION, KEY);
    az.deployments
        .push(("emb-prod".into(), "text-embedding-3-small".into()));
    az.content_filter.push(FILTERED.into());
    m.set_azure(Some(az));
    m
}

/// Models `az` (chat, deployment `gpt4o-prod` named by `deployment:`) and `emb` (deployment
/// named by the upstream's `model:`), both on the fake at `base`, with `credential`.
fn config(base: &str, api_version: &str, credential: &str) -> String {
    format!(
        r#"
credentials:
{credential}
upstreams:
  az-chat:
    provider: azure
    base_url: {base}
    deployment: gpt4o-prod
    api_version: "{api_version}"
    credential: azure
  az-emb:
    provider: azure
    base_url: {base}
    model: emb-prod
    api_version: "{api_version}"
    credential: azure
models:
  az: {{ targets: [ {{ upstream: az-chat }} ], retry: {{ max_attempts: 1 }} }}
  emb: {{ targets: [ {{ upstream: az-emb }} ], retry: {{ max_attempts: 1 }} }}
teams:
  demo: {{ models: ["*"] }}
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}
"#
    )
}

const STATIC_KEY: &str =
    "  azure: { kind: static, secret: \"${AZ_KEY}\", placement: { header: api-key } }";

async fn start(m: &MockUpstream, api_version: &str) -> Gateway {
    let env = HashMap::from([("AZ_KEY".to_string(), KEY.to_string())]);
    // The resource's root, as the Azure portal shows it: no path, no query.
    let base = m.url("");
    Gateway::start_with_env(&config(&base, api_version, STATIC_KEY), env).await
}

async fn json_of(resp: reqwest::Response) -> Value {
    resp.json::<Value>()
        .await
        .unwrap_or_else(|e| panic!("not JSON: {e}"))
}

#[tokio::test]
async fn chat_and_stream_go_to_the_deployment_with_the_api_version_and_key() {
    let m = fake().await;
    let gw = start(&m, VERSION).await;

    let resp = gw
        .post("/v1/chat/completions", chat("az", "hello azure", false))
        .await;
    assert_eq!(resp.status(), 200);
    assert_eq!(
        resp.headers()
            .get("x-tollgate-upstream")
            .and_then(|v| v.to_str().ok()),
        Some("az-chat")
    );
    let v = json_of(resp).await;
    assert_eq!(v["choices"][0]["message"]["content"], "echo: hello azure");
    // Azure names the deployment's model; the client sees the name it asked for.
    assert_eq!(v["model"], "az", "{v}");
    let seen = &m.received()[0];
    assert_eq!(seen.path, "/openai/deployments/gpt4o-prod/chat/completions");
    assert_eq!(seen.query.as_deref(), Some("api-version=2024-10-21"));
    assert_eq!(seen.headers["api-key"], KEY);
    assert!(seen.headers.get("authorization").is_none());

    let mut body = chat("az", "one two three", true);
    body["stream_options"] = json!({"include_usage": true});
    let resp = gw.post("/v1/chat/completions", body).await;
    assert_eq!(resp.status(), 200);
    let events = sse_events(resp).await;
    assert_eq!(stream_content(&events), "echo: one two three");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    for e in events.iter().filter(|e| *e != "[DONE]") {
        let c: Value = serde_json::from_str(e).unwrap_or_else(|err| panic!("{err}: {e}"));
        assert_eq!(c["model"], "az", "{c}");
    }
    assert!(events.iter().any(|e| e.contains("\"usage\"")), "{events:?}");
    assert_eq!(
        m.received()[1].query.as_deref(),
        Some("api-version=2024-10-21")
    );

    // Usage of both answers is counted for the model and team.
    let out = "tollgate_tokens_total{model=\"az\",team=\"demo\",direction=\"out\"}";
    assert!(
        await_metric(&gw, out, |v| v >= 2.0).await,
        "{}",
        gw.metrics_text().await
    );
}

#[tokio::test]
async fn embeddings_use_the_deployment_named_by_the_upstreams_model() {
    let m = fake().await;
    let gw = start(&m, VERSION).await;
    let v = json_of(
        gw.post(
            "/v1/embeddings",
            json!({"model": "emb", "input": ["a", "b"]}),
        )
        .await,
    )
    .await;
    assert_eq!(v["data"].as_array().map(Vec::len), Some(2), "{v}");
    assert_eq!(v["model"], "emb");
    assert!(
        v["usage"]["prompt_tokens"].as_u64().is_some_and(|t| t > 0),
        "{v}"
    );
    let seen = &m.received()[0];
    assert_eq!(seen.path, "/openai/deployments/emb-prod/embeddings");
    assert_eq!(seen.query.as_deref(), Some("api-version=2024-10-21"));
    let tokens_in = "tollgate_tokens_total{model=\"emb\",team=\"demo\",direction=\"in\"}";
    assert!(await_metric(&gw, tokens_in, |v| v >= 1.0).await);
}

/// An api-version the resource does not serve: Azure's 404 `{"error":{"code","message"}}`
/// reaches the client as an OpenAI-shaped error with Azure's message; a wrong key is the
/// gateway's own credential failing, not the client's.
#[tokio::test]
async fn azures_refusals_reach_the_client_openai_shaped() {
    let m = fake().await;
    let gw = start(&m, "2023-01-01").await;
    let r = common::Reply::read(
        gw.post("/v1/chat/completions", chat("az", "x", false))
            .await,
    )
    .await;
    assert_eq!(r.status, 404, "{}", r.body);
    let e = r.error();
    assert_eq!(e["message"], "Resource not found");
    assert_eq!(
        m.received()[0].query.as_deref(),
        Some("api-version=2023-01-01")
    );

    let env = HashMap::from([("AZ_KEY".to_string(), "a-wrong-key".to_string())]);
    let gw = Gateway::start_with_env(&config(&m.url(""), VERSION, STATIC_KEY), env).await;
    let r = common::Reply::read(
        gw.post("/v1/chat/completions", chat("az", "x", false))
            .await,
    )
    .await;
    assert_eq!(r.status, 502, "{}", r.body);
    r.error();
    assert!(!r.body.contains("a-wrong-key"), "{}", r.body);

    // The mock's fault knobs apply in Azure mode too: a 429 with Retry-After is the client's 429.
    let gw = start(&m, VERSION).await;
    m.push_fault(Fault::Status {
        status: 429,
        body: json!({"error": {"code": "429", "message": "Requests to the ChatCompletions_Create \
            Operation have exceeded call rate limit."}})
        .to_string(),
        retry_after: Some(30),
    });
    let r = common::Reply::read(
        gw.post("/v1/chat/completions", chat("az", "x", false))
            .await,
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.error()["message"]
        .as_str()
        .is_some_and(|s| s.contains("call rate limit")));
}

/// An Entra ID token from the `oauth2` credential goes as a bearer (no api-key header); the
/// fake accepts only tokens its token server issued.
#[tokio::test]
async fn an_entra_id_token_from_oauth2_is_sent_as_a_bearer() {
    let oauth = MockOAuth::start()
        .await
        .unwrap_or_else(|e| panic!("mock oauth: {e}"));
    oauth.add_client("cid", "cs-1");
    let m = fake().await;
    m.set_auth_check(Some(oauth.bearer_check()));
    let credential = format!(
        "  azure:\n    kind: oauth2\n    token_url: {}\n    client_id: cid\n    client_secret: \"${{OA_SECRET}}\"\n    scope: https://cognitiveservices.azure.com/.default",
        oauth.token_url()
    );
    let env = HashMap::from([("OA_SECRET".to_string(), "cs-1".to_string())]);
    let gw = Gateway::start_with_env(&config(&m.url(""), VERSION, &credential), env).await;
    let v = json_of(
        gw.post("/v1/chat/completions", chat("az", "with a token", false))
            .await,
    )
    .await;
    assert_eq!(
        v["choices"][0]["message"]["content"], "echo: with a token",
        "{v}"
    );
    let seen = &m.received()[0];
    assert!(seen.headers.get("api-key").is_none());
    let auth = seen.headers["authorization"].to_str().unwrap_or_default();
    assert!(oauth.is_valid(auth.trim_start_matches("Bearer ")), "{auth}");
    assert_eq!(seen.path, "/openai/deployments/gpt4o-prod/chat/completions");
    // The token was asked for Azure's scope.
    assert!(oauth.wait_token_requests(1, Duration::from_secs(1)).await);
    assert!(oauth.requests().iter().any(|r| r
        .params
        .iter()
        .any(|(k, v)| k == "scope" && v == "https://cognitiveservices.azure.com/.default")));
}

/// Two tools; the second has a different first parameter, so a call shows which was chosen.
fn tools() -> Value {
    json!([
        {"type": "function", "function": {"name": "get_weather",
            "description": "The weather in a city",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                "required": ["city"]}}},
        {"type": "function", "function": {"name": "get_time",
            "parameters": {"type": "object", "properties": {"zone": {"type": "string"}}}}}
    ])
}

/// The data of each event of a stream, parsed (`[DONE]` as a string).
fn parsed(r: &Reply) -> Vec<Value> {
    r.events()
        .iter()
        .map(|e| serde_json::from_str(e).unwrap_or_else(|_| Value::from(e.as_str())))
        .collect()
}

/// The tool call of an answer, JSON or stream: (id, name, arguments, finish reason); each
/// stream chunk is checked to carry the client-facing model name.
fn tool_call_of(r: &Reply, stream: bool) -> (String, String, Value, String) {
    let s = |v: &Value| v.as_str().unwrap_or_default().to_owned();
    if !stream {
        let v = r.json();
        assert_eq!(v["model"], "az", "{v}");
        let c = &v["choices"][0];
        let call = &c["message"]["tool_calls"][0];
        let args = serde_json::from_str(call["function"]["arguments"].as_str().unwrap_or(""))
            .unwrap_or(Value::Null);
        return (
            s(&call["id"]),
            s(&call["function"]["name"]),
            args,
            s(&c["finish_reason"]),
        );
    }
    let (mut id, mut name, mut args, mut finish) =
        (String::new(), String::new(), String::new(), String::new());
    let events = parsed(r);
    assert_eq!(events.last(), Some(&Value::from("[DONE]")), "{}", r.body);
    for e in events.iter().filter(|e| e.is_object()) {
        assert_eq!(e["model"], "az", "{e}");
        for c in e["choices"].as_array().into_iter().flatten() {
            for t in c["delta"]["tool_calls"].as_array().into_iter().flatten() {
                id += t["id"].as_str().unwrap_or_default();
                name += t["function"]["name"].as_str().unwrap_or_default();
                args += t["function"]["arguments"].as_str().unwrap_or_default();
            }
            finish += c["finish_reason"].as_str().unwrap_or_default();
        }
    }
    let args = serde_json::from_str(&args).unwrap_or(Value::Null);
    (id, name, args, finish)
}

/// The fake itself, asked directly as Azure is: the content filter's 400 with Azure's
/// `innererror` and null `type`, a tool call with each choice's filter results, and the stream's
/// opening prompt-filter chunk. (The tests through the gateway rely on these shapes.)
#[tokio::test]
async fn the_fake_answers_in_azures_shapes() {
    let m = fake().await;
    let url = m.url("/openai/deployments/gpt4o-prod/chat/completions?api-version=2024-10-21");
    let post = |body: Value| {
        let req = reqwest::Client::new()
            .post(&url)
            .header("api-key", KEY)
            .json(&body);
        async move { Reply::read(req.send().await.unwrap_or_else(|e| panic!("{e}"))).await }
    };
    let r = post(chat("x", &format!("about {FILTERED}"), true)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let e = &r.json()["error"];
    assert_eq!(
        (&e["code"], &e["param"]),
        (&json!("content_filter"), &json!("prompt"))
    );
    assert!(e["type"].is_null(), "{e}");
    assert_eq!(e["innererror"]["code"], "ResponsibleAIPolicyViolation");
    assert_eq!(
        e["innererror"]["content_filter_result"]["violence"]["filtered"],
        true
    );

    let mut ask = chat("x", "weather in Oslo", false);
    ask["tools"] = tools();
    let v = post(ask.clone()).await.json();
    assert_eq!(v["model"], "gpt-4o-2024-08-06", "{v}");
    let c = &v["choices"][0];
    assert_eq!(c["finish_reason"], "tool_calls");
    assert_eq!(
        c["message"]["tool_calls"][0]["function"]["name"],
        "get_weather"
    );
    assert_eq!(c["content_filter_results"]["hate"]["severity"], "safe");
    assert_eq!(
        v["prompt_filter_results"][0]["content_filter_results"]["sexual"]["filtered"],
        false
    );

    ask["stream"] = json!(true);
    let r = post(ask).await;
    let events = parsed(&r);
    assert_eq!(events[0]["choices"], json!([]));
    assert_eq!(
        (&events[0]["id"], &events[0]["model"]),
        (&json!(""), &json!(""))
    );
    assert!(events[0]["prompt_filter_results"].is_array());
    assert!(events[1..events.len() - 1]
        .iter()
        .all(|e| e["choices"][0]["content_filter_results"].is_object()));
}

/// What the gateway forwards of a tool conversation is what the client sent: `tools`,
/// `tool_choice`, `parallel_tool_calls`, the assistant's `tool_calls` and the `tool` message.
/// The deployment's call comes back, JSON and streamed, with the client's model name.
#[tokio::test]
async fn tools_tool_choice_and_tool_results_pass_untouched_and_calls_come_back() {
    let m = fake().await;
    let gw = start(&m, VERSION).await;
    let forwarded = |sent: &Value, fields: &[&str]| {
        let seen = m
            .received()
            .last()
            .map(|r| r.body.clone())
            .unwrap_or_default();
        assert_eq!(
            m.received().last().map(|r| r.path.clone()).as_deref(),
            Some("/openai/deployments/gpt4o-prod/chat/completions")
        );
        for f in fields {
            assert_eq!(seen[f], sent[f], "{f} was changed on the way");
        }
    };
    for stream in [false, true] {
        // The user's turn: a named tool_choice picks the second tool.
        let ask = json!({"model": "az", "stream": stream,
            "messages": [{"role": "system", "content": "Use the tools."},
                {"role": "user", "content": "time in Tokyo"}],
            "tools": tools(),
            "tool_choice": {"type": "function", "function": {"name": "get_time"}},
            "parallel_tool_calls": false});
        let r = Reply::read(gw.post("/v1/chat/completions", ask.clone()).await).await;
        assert_eq!(r.status, 200, "{}", r.body);
        forwarded(
            &ask,
            &[
                "tools",
                "tool_choice",
                "parallel_tool_calls",
                "messages",
                "stream",
            ],
        );
        let (id, name, args, finish) = tool_call_of(&r, stream);
        assert!(id.starts_with("call_"), "{id}");
        assert_eq!(name, "get_time");
        assert_eq!(args, json!({"zone": "time in Tokyo"}));
        assert_eq!(finish, "tool_calls");
        // Azure's extras come through: the prompt filter's verdict (a stream's first chunk).
        let first = if stream {
            parsed(&r)[0].clone()
        } else {
            r.json()
        };
        assert!(first["prompt_filter_results"].is_array(), "{first}");

        // The tool's result goes back; the deployment answers from it.
        let answer = json!({"model": "az", "stream": stream, "tools": tools(),
            "tool_choice": "auto",
            "messages": [{"role": "user", "content": "time in Tokyo"},
                {"role": "assistant", "content": null, "tool_calls": [{"id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": args.to_string()}}]},
                {"role": "tool", "tool_call_id": id, "content": "09:30 JST"}]});
        let r = Reply::read(gw.post("/v1/chat/completions", answer.clone()).await).await;
        assert_eq!(r.status, 200, "{}", r.body);
        forwarded(&answer, &["tools", "tool_choice", "messages"]);
        assert_eq!(r.content(), "echo: 09:30 JST");
    }
    // `tool_choice: "none"` gets text, even with tools offered.
    let none = json!({"model": "az", "messages": [{"role": "user", "content": "just talk"}],
        "tools": tools(), "tool_choice": "none"});
    let r = Reply::read(gw.post("/v1/chat/completions", none.clone()).await).await;
    forwarded(&none, &["tools", "tool_choice"]);
    assert_eq!(r.content(), "echo: just talk");
    assert_eq!(r.json()["choices"][0]["finish_reason"], "stop");
}

/// Two upstreams on the same deployment (breakers open at one failure) behind `guarded`, and
/// `one` on the first alone; three attempts each.
fn guarded_config(base: &str) -> String {
    let upstream = |name: &str| {
        format!(
            "  {name}: {{ provider: azure, base_url: {base}, deployment: gpt4o-prod, \
             api_version: \"{VERSION}\", credential: azure, \
             breaker: {{ consecutive_failures: 1, cooldown: 600s }} }}\n"
        )
    };
    format!(
        r#"
credentials:
{STATIC_KEY}
upstreams:
{}{}models:
  guarded: {{ targets: [ {{ upstream: az-a }}, {{ upstream: az-b }} ], retry: {{ max_attempts: 3 }} }}
  one: {{ targets: [ {{ upstream: az-a }} ], retry: {{ max_attempts: 3 }} }}
teams:
  demo: {{ models: ["*"] }}
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}
"#,
        upstream("az-a"),
        upstream("az-b")
    )
}

async fn start_guarded(m: &MockUpstream) -> Gateway {
    let env = HashMap::from([("AZ_KEY".to_string(), KEY.to_string())]);
    Gateway::start_with_env(&guarded_config(&m.url("")), env).await
}

fn breaker(gw: &Gateway, upstream: &str) -> BreakerState {
    match gw.state.snapshot.load().upstreams.get(upstream) {
        Some(u) => u.breaker.state(),
        None => panic!("no upstream {upstream}"),
    }
}

/// Azure's content filter refuses a prompt with a 400 `content_filter`: the client gets an
/// OpenAI-shaped 400 with that code and Azure's message (the `innererror` details stay behind),
/// after one attempt although two upstreams and three attempts were there, and no breaker counts
/// it. A 500 on the same setup does open a breaker: the setup would notice a failure.
#[tokio::test]
async fn a_content_filter_refusal_is_a_400_not_retried_and_not_a_breaker_failure() {
    let m = fake().await;
    let gw = start_guarded(&m).await;
    for (i, stream) in [false, true, false, true].into_iter().enumerate() {
        let r = Reply::read(
            gw.post(
                "/v1/chat/completions",
                chat("guarded", &format!("tell me about {FILTERED}"), stream),
            )
            .await,
        )
        .await;
        assert_eq!(r.status, 400, "{}", r.body);
        assert!(
            r.header("content-type")
                .is_some_and(|c| c.starts_with("application/json")),
            "{:?}",
            r.headers
        );
        let e = r.error();
        assert_eq!(e["code"], "content_filter", "{e}");
        assert_eq!(e["param"], "prompt", "{e}");
        assert_eq!(e["type"], "upstream_error", "{e}");
        assert!(
            e["message"]
                .as_str()
                .is_some_and(|t| t.contains("content management policy")),
            "{e}"
        );
        assert!(!r.body.contains("innererror"), "{}", r.body);
        assert_eq!(r.attempts(), Some(1));
        assert_eq!(m.request_count(), i + 1, "a filtered prompt was sent again");
    }
    assert_eq!(breaker(&gw, "az-a"), BreakerState::Closed);
    assert_eq!(breaker(&gw, "az-b"), BreakerState::Closed);
    let r = Reply::read(
        gw.post("/v1/chat/completions", chat("guarded", "fine", false))
            .await,
    )
    .await;
    assert_eq!((r.status, r.content().as_str()), (200, "echo: fine"));

    // The contrast: a 500 is retried on the other upstream and opens the first one's breaker.
    m.push_fault(Fault::Status {
        status: 500,
        body: json!({"error": {"code": "InternalServerError", "message": "boom"}}).to_string(),
        retry_after: None,
    });
    let r = Reply::read(
        gw.post("/v1/chat/completions", chat("guarded", "x", false))
            .await,
    )
    .await;
    assert_eq!((r.status, r.attempts()), (200, Some(2)), "{}", r.body);
    let failed = if r.upstream() == Some("az-a") {
        "az-b"
    } else {
        "az-a"
    };
    assert_eq!(breaker(&gw, failed), BreakerState::Open);
}

/// Azure's 429 carries `retry-after-ms`: a long one goes back to the client as its 429 with that
/// wait in whole seconds, rounded up, after one attempt; a short one is waited out and retried,
/// and it counts ahead of a whole-second `Retry-After` that alone would be too long to wait.
#[tokio::test]
async fn azures_retry_after_ms_is_the_wait_a_429_asks_for() {
    let m = fake().await;
    let limited = |headers: &[(&str, &str)]| Fault::Respond {
        status: 429,
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        body: json!({"error": {"code": "429", "message": "Requests to the ChatCompletions_Create \
            Operation under Azure OpenAI API version 2024-10-21 have exceeded token rate limit \
            of your current OpenAI S0 pricing tier."}})
        .to_string(),
    };

    let gw = start_guarded(&m).await;
    m.push_fault(limited(&[("retry-after-ms", "7500")]));
    let r = Reply::read(
        gw.post("/v1/chat/completions", chat("one", "x", false))
            .await,
    )
    .await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.header("retry-after"), Some("8"));
    assert!(r.error()["message"]
        .as_str()
        .is_some_and(|t| t.contains("token rate limit")));
    assert_eq!((r.attempts(), m.request_count()), (Some(1), 1));
    assert_eq!(breaker(&gw, "az-a"), BreakerState::Closed);

    let gw = start_guarded(&m).await;
    m.clear_records();
    m.push_fault(limited(&[("retry-after-ms", "300"), ("retry-after", "9")]));
    let started = std::time::Instant::now();
    let r = Reply::read(
        gw.post("/v1/chat/completions", chat("one", "later", false))
            .await,
    )
    .await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!((r.attempts(), m.request_count()), (Some(2), 2));
    let gap = m.received()[1].at - m.received()[0].at;
    assert!(gap >= Duration::from_millis(300), "{gap:?}");
    assert!(started.elapsed() < Duration::from_secs(9));
}

/// The official `openai` Python SDK, unchanged, with a Tollgate key against models an Azure
/// resource serves: chat, a stream with usage, embeddings (base64, the SDK's default, and
/// floats), a tool call and its result, a streamed tool call, and the content filter's refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_talks_to_an_azure_upstream() {
    let m = fake().await;
    let gw = start(&m, VERSION).await;
    let stdout = common::python::run_script("test_azure_sdk.py", &[&gw.url("/v1")]).await;
    assert!(stdout.contains("6/6 checks passed"), "{stdout}");
    let seen = m.received();
    assert_eq!(seen.len(), 9, "{stdout}");
    for r in &seen {
        assert_eq!(r.query.as_deref(), Some("api-version=2024-10-21"));
        assert_eq!(r.headers["api-key"], KEY);
        assert!(r.headers.get("authorization").is_none());
    }
    let embeddings = seen
        .iter()
        .filter(|r| r.path == "/openai/deployments/emb-prod/embeddings")
        .count();
    assert_eq!(embeddings, 3);
}
