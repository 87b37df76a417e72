//! The `ernie` provider through real sockets: the gateway in process, the test kit's fake ERNIE
//! server (errors in HTTP 200 bodies and stream events) and its mock OAuth2 server issuing the
//! access tokens Baidu-style (client id and secret in the query).

mod common;

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::{chat, Gateway, Reply, DEMO_KEY_SHA256};
use serde_json::{json, Value};
use tollgate::testkit::{ErnieFault, MockErnie, MockOAuth};

fn env() -> HashMap<String, String> {
    [("BAIDU_SECRET_KEY".to_string(), "sk-baidu".to_string())].into()
}

/// The fake ERNIE server checking tokens of a mock OAuth2 server (tokens living `lifetime`).
async fn start_fakes(lifetime: Duration) -> (MockOAuth, MockErnie) {
    let oauth = MockOAuth::start()
        .await
        .unwrap_or_else(|e| panic!("mock oauth: {e}"));
    oauth.add_client("baidu-ak", "sk-baidu");
    oauth.set_lifetime(lifetime);
    let ernie = MockErnie::start()
        .await
        .unwrap_or_else(|e| panic!("fake ernie: {e}"));
    ernie.set_oauth(Some(oauth.clone()));
    (oauth, ernie)
}

/// Model `ernie-speed` on the fake; `credential` is extra YAML for the OAuth2 credential,
/// `model` extra fields of the model, `team` extra fields of the demo team, `tail` more YAML.
fn config(
    oauth: &MockOAuth,
    ernie: &MockErnie,
    credential: &str,
    model: &str,
    team: &str,
    tail: &str,
) -> String {
    format!(
        r#"
credentials:
  baidu:
    kind: oauth2
    token_url: {token_url}
    client_id: baidu-ak
    client_secret: "${{BAIDU_SECRET_KEY}}"
    client_auth: query
    placement: {{ query: access_token }}
{credential}
upstreams:
  ernie:
    provider: ernie
    base_url: {base}
    model: ernie-speed-128k
    credential: baidu
    timeouts: {{ first_byte: 5s, idle: 5s }}
  mock:
    provider: mock
models:
  ernie-speed: {{ targets: [ {{ upstream: ernie }} ] {model} }}
  mock-gpt: {{ targets: [ {{ upstream: mock }} ] }}
teams:
  demo: {{ models: ["*"] {team} }}
keys:
  - {{ name: demo, team: demo, sha256: {DEMO_KEY_SHA256} }}
{tail}
"#,
        token_url = oauth.baidu_url(),
        base = ernie.base_url(),
    )
}

async fn start(oauth: &MockOAuth, ernie: &MockErnie) -> Gateway {
    Gateway::start_with_env(&config(oauth, ernie, "", "", "", ""), env()).await
}

async fn send(gw: &Gateway, body: Value) -> Reply {
    Reply::read(gw.post("/v1/chat/completions", body).await).await
}

fn with_system(text: &str, stream: bool) -> Value {
    json!({"model": "ernie-speed", "stream": stream, "max_tokens": 50, "user": "u-7",
        "messages": [{"role": "system", "content": "be brief"},
            {"role": "user", "content": text}]})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_non_stream_and_stream_are_translated_both_ways() {
    let (oauth, ernie) = start_fakes(Duration::from_secs(3600)).await;
    let gw = start(&oauth, &ernie).await;

    let r = send(&gw, with_system("hello there", false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["choices"][0]["message"]["content"], "echo: hello there");
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    // Prompt: "be brief" + "hello there"; completion: "echo: hello there".
    assert_eq!(
        v["usage"],
        json!({"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7})
    );

    // What ERNIE received: its path, the token in the query, the system text in its field.
    let got = ernie.received();
    assert_eq!(got.len(), 1);
    assert_eq!(
        got[0].path,
        "/rpc/2.0/ai_custom/v1/wenxinworkshop/chat/ernie-speed-128k"
    );
    let q = got[0].query.clone().unwrap_or_default();
    assert!(q.starts_with("access_token=mock-at-"), "{q}");
    assert_eq!(
        got[0].body,
        json!({"system": "be brief", "messages": [{"role": "user", "content": "hello there"}],
            "stream": false, "max_output_tokens": 50, "user_id": "u-7"})
    );
    // The token came from Baidu's endpoint with the client id and secret in the query.
    let tq = oauth.requests()[0].query.clone().unwrap_or_default();
    assert!(
        tq.contains("client_id=baidu-ak") && tq.contains("client_secret=sk-baidu"),
        "{tq}"
    );

    // A stream, without and with the usage chunk.
    let r = send(&gw, with_system("one two three", true)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.content(), "echo: one two three");
    let events = r.events();
    assert!(events.len() >= 5, "{events:?}");
    assert_eq!(events.last().map(String::as_str), Some("[DONE]"));
    let last: Value = serde_json::from_str(&events[events.len() - 2]).unwrap_or_default();
    assert_eq!(last["choices"][0]["finish_reason"], "stop", "{events:?}");
    assert!(
        !r.body.contains("\"usage\""),
        "unrequested usage: {}",
        r.body
    );
    let mut b = with_system("one two three", true);
    b["stream_options"] = json!({"include_usage": true});
    let r = send(&gw, b).await;
    let events = r.events();
    let usage: Value = serde_json::from_str(&events[events.len() - 2]).unwrap_or_default();
    assert_eq!(usage["usage"]["total_tokens"], 9, "{events:?}");
    assert_eq!(usage["choices"], json!([]));
    // One token for all of it.
    assert_eq!(oauth.token_requests(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_field_that_cannot_be_translated_is_a_400_naming_it() {
    let (oauth, ernie) = start_fakes(Duration::from_secs(3600)).await;
    let gw = start(&oauth, &ernie).await;
    let mut b = chat("ernie-speed", "hi", false);
    b["logit_bias"] = json!({"1": 2});
    let r = send(&gw, b).await;
    assert_eq!(r.status, 400, "{}", r.body);
    assert_eq!(r.error()["param"], "logit_bias");
    let mut b = chat("ernie-speed", "hi", false);
    b["temperature"] = json!(1.7);
    let r = send(&gw, b).await;
    assert_eq!(
        (r.status, r.error()["param"].clone()),
        (400, json!("temperature"))
    );
    assert_eq!(ernie.request_count(), 0);
}

fn weather_tool() -> Value {
    json!({"type": "function", "function": {"name": "get_weather",
        "description": "the weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
}

/// The chat events of a stream reply, parsed (without `[DONE]`).
fn chunks(r: &Reply) -> Vec<Value> {
    r.events()
        .iter()
        .filter(|e| *e != "[DONE]")
        .map(|e| serde_json::from_str(e).unwrap_or_default())
        .collect()
}

/// A whole tool loop, not streamed and streamed: ERNIE's function call reaches the client as
/// `tool_calls`, the tool's result goes back as a `function` turn named after the call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tool_loop_non_stream_and_stream_calls_then_sends_the_result_as_a_function_turn() {
    let (oauth, ernie) = start_fakes(Duration::from_secs(3600)).await;
    let gw = start(&oauth, &ernie).await;
    for stream in [false, true] {
        let seen = ernie.received().len();
        let question = json!({"role": "user", "content": "weather in Paris"});
        let first = json!({"model": "ernie-speed", "stream": stream, "tools": [weather_tool()],
            "messages": [question]});
        if stream {
            // An overload as the first event: retried before the client saw a byte.
            ernie.push_fault(ErnieFault::ErrorEvent {
                after: 0,
                code: 336100,
            });
        }
        let r = send(&gw, first).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.attempts(), Some(if stream { 2 } else { 1 }));
        // What ERNIE was offered: its functions, nothing else about tools.
        let got = ernie.received();
        assert_eq!(
            got[seen].body["functions"],
            json!([{"name": "get_weather", "description": "the weather in a city",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}])
        );
        assert!(got[seen].body.get("tool_choice").is_none());
        assert!(got[seen].body.get("tools").is_none());
        let call = if stream {
            let events = chunks(&r);
            assert_eq!(r.events().last().map(String::as_str), Some("[DONE]"));
            let delta = events[0]["choices"][0]["delta"].clone();
            assert_eq!(delta["role"], "assistant", "{events:?}");
            let finish = &events[events.len() - 1]["choices"][0]["finish_reason"];
            assert_eq!(finish, "tool_calls", "{events:?}");
            delta["tool_calls"][0].clone()
        } else {
            let v = r.json();
            let choice = v["choices"][0].clone();
            assert_eq!(choice["finish_reason"], "tool_calls", "{v}");
            assert_eq!(choice["message"]["content"], Value::Null, "{v}");
            assert_eq!(v["usage"]["prompt_tokens"], 3, "{v}");
            choice["message"]["tool_calls"][0].clone()
        };
        let id = call["id"].as_str().unwrap_or_default().to_owned();
        assert!(id.starts_with("call_as-"), "{call}");
        assert_eq!(call["type"], "function");
        assert_eq!(call["function"]["name"], "get_weather");
        assert_eq!(
            call["function"]["arguments"],
            json!({"input": "weather in Paris"}).to_string()
        );

        // Turn two: the call and its result go back.
        let mut assistant = json!({"role": "assistant", "content": null, "tool_calls": [call]});
        if stream {
            assistant["tool_calls"][0]
                .as_object_mut()
                .map(|c| c.remove("index"));
        }
        let second = json!({"model": "ernie-speed", "stream": stream, "tools": [weather_tool()],
            "messages": [question, assistant,
                {"role": "tool", "tool_call_id": id, "content": "{\"temp\": 21}"}]});
        let r = send(&gw, second).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.content(), "echo: {\"temp\": 21}");
        let got = ernie.received();
        assert_eq!(
            got.last()
                .map(|g| g.body["messages"].clone())
                .unwrap_or_default(),
            json!([{"role": "user", "content": "weather in Paris"},
                {"role": "assistant", "content": "", "function_call": {"name": "get_weather",
                    "arguments": json!({"input": "weather in Paris"}).to_string()}},
                {"role": "function", "name": "get_weather", "content": "{\"temp\": 21}"}])
        );
    }
}

/// `tool_choice` as ERNIE takes it (a named function, `none`, `auto`), the legacy
/// `functions` / `function_call` answered in their own shape, and every case ERNIE cannot take
/// refused with a 400 naming the field before anything is sent.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_choice_is_mapped_and_what_ernie_cannot_take_is_a_400_naming_it() {
    let (oauth, ernie) = start_fakes(Duration::from_secs(3600)).await;
    let gw = start(&oauth, &ernie).await;
    let other = json!({"type": "function", "function": {"name": "get_time",
        "parameters": {"type": "object", "properties": {}}}});
    let with = |choice: Value| {
        json!({"model": "ernie-speed", "tools": [weather_tool(), other.clone()],
            "tool_choice": choice, "messages": [{"role": "user", "content": "what time"}]})
    };
    // A named function: ERNIE's tool_choice; the fake calls the named one.
    let named = json!({"type": "function", "function": {"name": "get_time"}});
    let r = send(&gw, with(named.clone())).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let v = r.json();
    assert_eq!(
        v["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
        "get_time"
    );
    let last = ernie.received().pop().map(|r| r.body).unwrap_or_default();
    assert_eq!(last["tool_choice"], named);
    assert_eq!(last["functions"][1]["description"], "");
    // none: nothing offered, a text answer.
    let r = send(&gw, with(json!("none"))).await;
    assert_eq!((r.status, r.content()), (200, "echo: what time".to_owned()));
    let last = ernie.received().pop().map(|r| r.body).unwrap_or_default();
    assert!(last.get("functions").is_none() && last.get("tool_choice").is_none());
    // auto: ERNIE's default, nothing but the functions sent.
    let r = send(&gw, with(json!("auto"))).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let last = ernie.received().pop().map(|r| r.body).unwrap_or_default();
    assert!(last.get("functions").is_some() && last.get("tool_choice").is_none());

    // Legacy functions and function_call: the answer's legacy shape.
    let legacy = json!({"model": "ernie-speed", "functions": [{"name": "get_weather"}],
        "function_call": {"name": "get_weather"},
        "messages": [{"role": "user", "content": "rain?"}]});
    let r = send(&gw, legacy).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let choice = r.json()["choices"][0].clone();
    assert_eq!(choice["finish_reason"], "function_call", "{choice}");
    assert_eq!(choice["message"]["function_call"]["name"], "get_weather");
    assert!(choice["message"].get("tool_calls").is_none(), "{choice}");

    // Refused, named, never sent.
    let sent = ernie.request_count();
    let call = |id: &str| {
        json!({"id": id, "type": "function", "function": {"name": "get_weather",
            "arguments": "{}"}})
    };
    let conversation = |assistant: Value, tool_id: &str| {
        json!({"model": "ernie-speed", "tools": [weather_tool()], "messages": [
            {"role": "user", "content": "x"}, assistant,
            {"role": "tool", "tool_call_id": tool_id, "content": "sunny"}]})
    };
    let cases = [
        (with(json!("required")), "tool_choice"),
        (
            with(json!({"type": "function", "function": {"name": "nope"}})),
            "tool_choice",
        ),
        (
            json!({"model": "ernie-speed", "tools": [{"type": "web_search"}],
                "messages": [{"role": "user", "content": "x"}]}),
            "tools[0].type",
        ),
        (
            conversation(
                json!({"role": "assistant", "tool_calls": [call("a"), call("b")]}),
                "a",
            ),
            "messages[1].tool_calls",
        ),
        (
            conversation(
                json!({"role": "assistant", "tool_calls": [call("a")]}),
                "zzz",
            ),
            "messages[2].tool_call_id",
        ),
    ];
    for (body, param) in cases {
        let r = send(&gw, body).await;
        assert_eq!(r.status, 400, "{param}: {}", r.body);
        assert_eq!(r.error()["param"], param, "{}", r.body);
    }
    assert_eq!(
        ernie.request_count(),
        sent,
        "a refused request reached ERNIE"
    );
}

/// With traces on, ERNIE receives the attempt span's W3C `traceparent`, in the client's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ernie_requests_carry_the_attempt_traceparent() {
    const CLIENT_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
    let (oauth, ernie) = start_fakes(Duration::from_secs(3600)).await;
    let col = tollgate::testkit::MockCollector::start()
        .await
        .unwrap_or_else(|e| panic!("collector: {e}"));
    let tail = format!(
        "telemetry:\n  traces:\n    endpoint: {}\n    protocol: http\n",
        col.http_endpoint()
    );
    let gw = Gateway::start_with_env(&config(&oauth, &ernie, "", "", "", &tail), env()).await;
    let resp = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(common::DEMO_KEY)
        .header(
            "traceparent",
            format!("00-{CLIENT_TRACE}-00f067aa0ba902b7-01"),
        )
        .json(&chat("ernie-speed", "traced", false))
        .send()
        .await
        .unwrap_or_else(|e| panic!("request: {e}"));
    let r = Reply::read(resp).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let got = ernie.received();
    let tp = got[0]
        .headers
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    assert!(tp.starts_with(&format!("00-{CLIENT_TRACE}-")), "{tp:?}");
    // The attempt's span, not the client's.
    assert!(!tp.contains("00f067aa0ba902b7"), "{tp}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_errors_110_and_111_renew_the_token_once_and_retry_once() {
    let (oauth, ernie) = start_fakes(Duration::from_secs(3600)).await;
    let gw = start(&oauth, &ernie).await;
    assert_eq!(
        send(&gw, chat("ernie-speed", "warm up", false))
            .await
            .status,
        200
    );
    for code in [111, 110] {
        let tokens = oauth.token_requests();
        let seen = ernie.request_count();
        ernie.push_fault(ErnieFault::Error(code));
        let r = send(&gw, chat("ernie-speed", "hi", true)).await;
        assert_eq!(r.status, 200, "{code}: {}", r.body);
        assert_eq!(r.content(), "echo: hi");
        assert_eq!(oauth.token_requests(), tokens + 1, "{code}: one renewal");
        assert_eq!(ernie.request_count(), seen + 2, "{code}: one retry");
    }
    // Refused again after the renewal: the gateway's credential is refused, never the client's.
    ernie.push_fault(ErnieFault::Error(110));
    ernie.push_fault(ErnieFault::Error(110));
    let r = send(&gw, chat("ernie-speed", "hi", false)).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.error_code(), "upstream_credential_rejected");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qps_limit_18_is_a_429_waited_out_and_retried_or_served_by_a_fallback() {
    let (oauth, ernie) = start_fakes(Duration::from_secs(3600)).await;
    let gw = start(&oauth, &ernie).await;
    ernie.push_fault(ErnieFault::Error(18));
    let t0 = Instant::now();
    let r = send(&gw, chat("ernie-speed", "hi", false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.attempts(), Some(2));
    assert!(
        t0.elapsed() >= Duration::from_millis(900),
        "the 1 s back-off was skipped"
    );
    drop(gw);

    // Waiting is not allowed here: the rate_limited fallback answers at once.
    let cfg = config(
        &oauth,
        &ernie,
        "",
        ", retry: { max_retry_after: 0s }, fallback_on: { rate_limited: mock-gpt }",
        "",
        "",
    );
    let gw = Gateway::start_with_env(&cfg, env()).await;
    ernie.push_fault(ErnieFault::Error(18));
    let r = send(&gw, chat("ernie-speed", "hi", false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.upstream(), Some("mock"));
    assert_eq!(ernie.errors().iter().filter(|c| **c == 18).count(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_336100_is_retried_and_other_codes_are_openai_errors_naming_them() {
    let (oauth, ernie) = start_fakes(Duration::from_secs(3600)).await;
    let gw = start(&oauth, &ernie).await;
    for stream in [false, true] {
        ernie.push_fault(ErnieFault::Error(336100));
        let r = send(&gw, chat("ernie-speed", "busy", stream)).await;
        assert_eq!(r.status, 200, "{}", r.body);
        assert_eq!(r.content(), "echo: busy");
        assert_eq!(r.attempts(), Some(2));
    }
    // The error as the stream's first event: nothing reached the client yet, so it is retried.
    ernie.push_fault(ErnieFault::ErrorEvent {
        after: 0,
        code: 336100,
    });
    let r = send(&gw, chat("ernie-speed", "busy", true)).await;
    assert_eq!(
        (r.status, r.content()),
        (200, "echo: busy".to_owned()),
        "{}",
        r.body
    );
    assert_eq!(r.attempts(), Some(2));
    ernie.push_fault(ErnieFault::Error(336003));
    let r = send(&gw, chat("ernie-speed", "hi", false)).await;
    assert_eq!(r.status, 400, "{}", r.body);
    let e = r.error();
    assert_eq!(e["code"], "ernie_336003");
    assert!(
        e["message"].as_str().unwrap_or_default().contains("336003"),
        "{e}"
    );
    assert_eq!(r.attempts(), Some(1));
    // ERNIE's own check of the turns (an even number of them) reaches the client named.
    let b = json!({"model": "ernie-speed", "messages": [{"role": "user", "content": "a"},
        {"role": "assistant", "content": "b"}]});
    let r = send(&gw, b).await;
    assert_eq!((r.status, r.error_code()), (400, "ernie_336006".to_owned()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_error_event_or_a_cut_mid_stream_ends_the_stream_with_an_openai_error() {
    let (oauth, ernie) = start_fakes(Duration::from_secs(3600)).await;
    let gw = start(&oauth, &ernie).await;
    ernie.push_fault(ErnieFault::ErrorEvent {
        after: 2,
        code: 336100,
    });
    let r = send(&gw, chat("ernie-speed", "a b c d", true)).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.content(), "echo: a");
    let events = r.events();
    let last: Value =
        serde_json::from_str(events.last().map_or("", String::as_str)).unwrap_or_default();
    assert_eq!(last["error"]["code"], "ernie_336100", "{events:?}");
    assert!(!r.body.contains("[DONE]"));

    ernie.push_fault(ErnieFault::Cut { after: 1 });
    let r = send(&gw, chat("ernie-speed", "a b c d", true)).await;
    let events = r.events();
    let last: Value =
        serde_json::from_str(events.last().map_or("", String::as_str)).unwrap_or_default();
    assert_eq!(
        last["error"]["code"], "upstream_stream_broken",
        "{events:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn usage_rows_cost_and_team_limits_apply_as_for_any_upstream() {
    let (oauth, ernie) = start_fakes(Duration::from_secs(3600)).await;
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let url = format!("sqlite://{}?mode=rwc", dir.path().join("t.db").display());
    let tail = format!(
        "store:\n  url: \"{url}\"\n  usage: {{ spill_path: \"{}\", batch_interval: 20ms }}\n\
         prices:\n  ernie-speed: {{ input_per_million: 1, output_per_million: 2 }}\n",
        dir.path().join("spill.jsonl").display()
    );
    let cfg = config(&oauth, &ernie, "", "", ", requests_per_minute: 2", &tail);
    let gw = Gateway::start_with_env(&cfg, env()).await;
    let store = gw.store();
    let r = send(&gw, chat("ernie-speed", "what does it cost", false)).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let usage = r.json()["usage"].clone();
    let cost = r
        .header("x-tollgate-cost-usd")
        .unwrap_or_default()
        .to_owned();
    // 4 prompt words, 5 completion words at 1 and 2 per million.
    assert_eq!(usage["prompt_tokens"], 4);
    assert_eq!(cost, "0.000014000");
    let mut b = chat("ernie-speed", "one two", true);
    b["stream_options"] = json!({"include_usage": true});
    assert_eq!(send(&gw, b).await.status, 200);
    let r = send(&gw, chat("ernie-speed", "one more", false)).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(
        ernie.request_count(),
        2,
        "the limited request never reached ERNIE"
    );
    gw.stop().await;
    let report = store
        .query_usage(&tollgate::store::usage::UsageFilter::default())
        .await
        .unwrap_or_else(|e| panic!("usage: {e}"));
    let t = &report.totals;
    assert_eq!((t.requests, t.errors), (3, 1), "{report:?}");
    // The stream: "one two" -> 2 prompt, "echo: one two" -> 3 completion.
    assert_eq!(
        (t.prompt_tokens, t.completion_tokens),
        (4 + 2, 5 + 3),
        "{report:?}"
    );
    assert!(
        (t.cost_usd - (6.0 * 1e-6 + 8.0 * 2e-6)).abs() < 1e-12,
        "{report:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_openai_python_sdk_streams_and_not_through_ernie() {
    let (oauth, ernie) = start_fakes(Duration::from_secs(3600)).await;
    let gw = start(&oauth, &ernie).await;
    common::python::run_script("test_ernie_sdk.py", &[&gw.url("/v1")]).await;
    // Chat and stream, then a tool call and its result, not streamed and streamed.
    assert_eq!(ernie.request_count(), 6);
    let got = ernie.received();
    assert_eq!(got[3].body["messages"][2]["role"], "function");
    assert_eq!(got[3].body["messages"][2]["name"], "get_weather");
}

/// The credentials soak through the ernie provider: tokens really live 2 s but are announced
/// as 3 s, so every cycle has a stretch where ERNIE answers 111 in a 200 body for the token the
/// gateway still holds. Each such answer renews the token and the request is retried: the
/// client never sees it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn soak_two_second_tokens_with_111_in_bodies_no_client_visible_failures() {
    let (oauth, ernie) = start_fakes(Duration::from_secs(2)).await;
    oauth.set_expires_in_override(Some(json!(3)));
    ernie.set_recording(false);
    let cred = "    renew_margin: 500ms\n    min_renew_interval: 100ms\n";
    let gw =
        Arc::new(Gateway::start_with_env(&config(&oauth, &ernie, cred, "", "", ""), env()).await);
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let end = Instant::now() + Duration::from_secs(10);
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (gw, ok, failed) = (gw.clone(), ok.clone(), failed.clone());
        tasks.push(tokio::spawn(async move {
            let mut n = 0usize;
            while Instant::now() < end {
                n += 1;
                let stream = (i + n) % 2 == 0;
                let r = send(&gw, chat("ernie-speed", "soak", stream)).await;
                if r.status == 200 && r.content() == "echo: soak" {
                    ok.fetch_add(1, Ordering::Relaxed);
                } else if let Ok(mut f) = failed.lock() {
                    f.push(format!("{}: {}", r.status, r.body));
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let failed = failed.lock().map(|f| f.clone()).unwrap_or_default();
    let stale = ernie.errors().iter().filter(|c| **c == 111).count();
    let ok = ok.load(Ordering::Relaxed);
    println!(
        "ernie soak: {ok} ok, {} failed, {stale} answers of 111, {} token requests",
        failed.len(),
        oauth.token_requests()
    );
    assert!(
        failed.is_empty(),
        "{} failures, first: {:?}",
        failed.len(),
        failed.first()
    );
    assert!(ok >= 100, "{ok}");
    assert!(
        stale >= 3,
        "only {stale} stale-token answers: the soak did not exercise 111"
    );
}

/// The example config passes the config check; an `ernie` upstream without its endpoint name,
/// or with a query string in its `base_url`, is refused naming the field.
#[test]
fn the_example_passes_and_a_bad_ernie_upstream_is_refused_by_field() {
    use tollgate::config::Config;
    let env: HashMap<String, String> = [
        ("BAIDU_API_KEY", "ak"),
        ("BAIDU_SECRET_KEY", "sk"),
        ("TOLLGATE_ADMIN_KEY", "sk-admin-ernie-test"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let example =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/ernie.yaml"))
            .unwrap_or_else(|e| panic!("{e}"));
    let config = Config::parse(&example).unwrap_or_else(|e| panic!("{e}"));
    if let Err(e) = config.validate(&env) {
        panic!("examples/ernie.yaml: {e}");
    }
    let bad = |upstream: &str| {
        let yaml = format!(
            "upstreams:\n  e: {upstream}\nmodels:\n  m: {{ targets: [ {{ upstream: e }} ] }}\n\
             teams:\n  t: {{ models: [\"*\"] }}\n"
        );
        match Config::parse(&yaml).map(|c| c.validate(&env)) {
            Ok(Err(e)) => e.to_string(),
            other => panic!("accepted: {yaml} {:?}", other.map(|r| r.is_ok())),
        }
    };
    let e = bad("{ provider: ernie }");
    assert!(e.starts_with("upstreams.e.model: is required"), "{e}");
    let e = bad("{ provider: ernie, model: \"a/b\" }");
    assert!(e.starts_with("upstreams.e.model:"), "{e}");
    let e = bad("{ provider: ernie, model: completions, base_url: \"https://h/x?a=1\" }");
    assert!(
        e.starts_with("upstreams.e.base_url: must have no query"),
        "{e}"
    );
}
