//! The `azure` provider against the test kit's fake Azure OpenAI resource, through real sockets:
//! deployments in the path, `api-version` in the query (apart from the path), the key in the
//! `api-key` header or an Entra ID token from an `oauth2` credential as a bearer; chat (JSON and
//! stream) and embeddings answered OpenAI-shaped with the client's model name, usage counted,
//! and Azure's own refusals (a wrong api-version) reaching the client OpenAI-shaped.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use common::{await_metric, chat, sse_events, stream_content, Gateway, DEMO_KEY_SHA256};
use serde_json::{json, Value};
use tollgate::testkit::{AzureFake, Fault, MockOAuth, MockUpstream};

const KEY: &str = "azure-resource-key-1";
const VERSION: &str = "2024-10-21";

async fn fake() -> MockUpstream {
    let m = MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("mock: {e}"));
    let mut az = AzureFake::new("gpt4o-prod", "gpt-4o-2024-08-06", VERSION, KEY);
    az.deployments
        .push(("emb-prod".into(), "text-embedding-3-small".into()));
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
