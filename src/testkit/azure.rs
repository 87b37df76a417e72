//! The mock upstream's Azure OpenAI mode ([`super::MockUpstream::set_azure`]): requests must come
//! as Azure's REST API wants them, `POST /openai/deployments/{deployment}/{chat/completions|
//! completions|embeddings}?api-version=…` with an `api-key` header or an Entra ID bearer token,
//! and are answered OpenAI-shaped with the deployment's model name in `model`, as Azure does.
//! Refusals have Azure's shapes (`{"error":{"code","message"}}`, no `type`): an unknown path or an
//! unsupported or missing `api-version` is 404 `Resource not found`, a missing or wrong key 401,
//! an unknown deployment 404 `DeploymentNotFound`, a prompt holding one of
//! [`AzureFake::content_filter`]'s terms Azure's 400 `content_filter` with its `innererror`. The
//! mock's fault knobs apply before any of it.
//!
//! Answers carry Azure's extras ([`dress`]): `prompt_filter_results` and each choice's
//! `content_filter_results`; a stream opens with Azure's prompt-filter chunk (`choices: []`, empty
//! `id`, `model` and `object`). A chat request offering `tools` whose last message is the user's
//! is answered with a call (`finish_reason: tool_calls`, streamed as OpenAI streams calls) of the
//! tool `tool_choice` names, else the first; `tool_choice: "none"` gets text; a conversation
//! ending on a tool result is answered `echo: <the result>`.

use http::{HeaderMap, StatusCode};
use serde_json::{json, Value};

use super::{bearer_token, form_get, now_secs, sse, usage, AuthCheck, Planned};
use crate::providers::mock::{request_text, Head, ToolCall};

/// What the fake Azure resource accepts.
#[derive(Debug, Clone)]
pub struct AzureFake {
    /// `api-version` values served.
    pub api_versions: Vec<String>,
    /// Deployments: (name, the model its answers carry).
    pub deployments: Vec<(String, String)>,
    /// The resource key the `api-key` header must carry; `None`: any non-empty key.
    pub api_key: Option<String>,
    /// Terms the resource's content filter refuses: a chat or completions request whose body
    /// holds one is Azure's 400 `content_filter` (the prompt filter runs before the model).
    pub content_filter: Vec<String>,
}

impl AzureFake {
    /// One deployment serving `model`, one api-version, one key.
    pub fn new(deployment: &str, model: &str, api_version: &str, api_key: &str) -> AzureFake {
        AzureFake {
            api_versions: vec![api_version.to_owned()],
            deployments: vec![(deployment.to_owned(), model.to_owned())],
            api_key: Some(api_key.to_owned()),
            content_filter: Vec::new(),
        }
    }

    /// The OpenAI path a request stands for and the model its answer names; or Azure's refusal.
    /// A bearer token is checked by `bearer` (the mock's auth check) when there is one.
    pub(super) fn admit(
        &self,
        headers: &HeaderMap,
        path: &str,
        query: Option<&str>,
        bearer: Option<&AuthCheck>,
        body: &Value,
    ) -> Result<(String, String), (StatusCode, Value)> {
        let not_found = || {
            (
                StatusCode::NOT_FOUND,
                json!({"error": {"code": "404", "message": "Resource not found"}}),
            )
        };
        let rest = path
            .strip_prefix("/openai/deployments/")
            .ok_or_else(not_found)?;
        let (deployment, endpoint) = rest.split_once('/').ok_or_else(not_found)?;
        if !matches!(endpoint, "chat/completions" | "completions" | "embeddings") {
            return Err(not_found());
        }
        let version = query.and_then(|q| form_get(q, "api-version"));
        if !version.is_some_and(|v| self.api_versions.contains(&v)) {
            return Err(not_found());
        }
        let key = headers.get("api-key").and_then(|v| v.to_str().ok());
        let authorized = match (key, bearer_token(headers)) {
            (Some(k), _) => !k.is_empty() && self.api_key.as_deref().is_none_or(|want| want == k),
            (None, Some(_)) => bearer.is_none_or(|check| check(headers, query)),
            (None, None) => false,
        };
        if !authorized {
            return Err((
                StatusCode::UNAUTHORIZED,
                json!({"error": {"code": "401", "message": "Access denied due to invalid \
                    subscription key or wrong API endpoint. Make sure to provide a valid key \
                    for an active subscription and use a correct regional API endpoint for \
                    your resource."}}),
            ));
        }
        let Some((_, model)) = self.deployments.iter().find(|(d, _)| d == deployment) else {
            return Err((
                StatusCode::NOT_FOUND,
                json!({"error": {"code": "DeploymentNotFound", "message": "The API deployment \
                    for this resource does not exist. If you created the deployment within the \
                    last 5 minutes, please wait a moment and try again."}}),
            ));
        };
        if endpoint != "embeddings" {
            let text = body.to_string();
            if self
                .content_filter
                .iter()
                .any(|t| text.contains(t.as_str()))
            {
                return Err((StatusCode::BAD_REQUEST, content_filter_refusal()));
            }
        }
        Ok((format!("/v1/{endpoint}"), model.clone()))
    }
}

/// Azure's refusal of a prompt its content filter caught: a 400 whose `code` is `content_filter`,
/// `type` null, `param` `prompt`, and an `innererror` naming the policy and each category.
fn content_filter_refusal() -> Value {
    json!({"error": {
        "message": "The response was filtered due to the prompt triggering Azure OpenAI's content \
            management policy. Please modify your prompt and retry. To learn more about our content \
            filtering policies please read our documentation: \
            https://go.microsoft.com/fwlink/?linkid=2198766",
        "type": null, "param": "prompt", "code": "content_filter", "status": 400,
        "innererror": {"code": "ResponsibleAIPolicyViolation", "content_filter_result": {
            "hate": {"filtered": false, "severity": "safe"},
            "jailbreak": {"filtered": false, "detected": false},
            "self_harm": {"filtered": false, "severity": "safe"},
            "sexual": {"filtered": false, "severity": "safe"},
            "violence": {"filtered": true, "severity": "medium"}}}}})
}

/// A content filter verdict of "nothing found" in every category.
fn all_safe() -> Value {
    let safe = json!({"filtered": false, "severity": "safe"});
    json!({"hate": safe, "self_harm": safe, "sexual": safe, "violence": safe})
}

/// Azure's answer made from the mock's OpenAI one (`planned`, for the OpenAI `path` the request
/// stands for): a tool call when the request asks for one, then Azure's content filter results.
/// Embeddings and refusals pass as they are.
pub(super) fn dress(planned: Planned, path: &str, body: &Value, chunks: Option<usize>) -> Planned {
    let chat = path == "/v1/chat/completions";
    if !chat && path != "/v1/completions" {
        return planned;
    }
    let planned = match chat.then(|| tool_to_call(body)).flatten() {
        Some(name) => tool_call(body, name, chunks),
        None => planned,
    };
    match planned {
        Planned::Json(status, mut v) if status.is_success() => {
            v["prompt_filter_results"] =
                json!([{"prompt_index": 0, "content_filter_results": all_safe()}]);
            for c in v["choices"].as_array_mut().into_iter().flatten() {
                c["content_filter_results"] = all_safe();
            }
            Planned::Json(status, v)
        }
        Planned::Sse(events) => Planned::Sse(dress_stream(events)),
        other => other,
    }
}

/// Azure's stream: its prompt-filter chunk first, then each chunk's choices with their own
/// content filter results (categories for a choice that says something, `{}` otherwise).
fn dress_stream(events: Vec<bytes::Bytes>) -> Vec<bytes::Bytes> {
    let head = json!({"id": "", "object": "", "created": 0, "model": "", "choices": [],
        "prompt_filter_results": [{"prompt_index": 0, "content_filter_results": all_safe()}]});
    let mut out = vec![sse(&head)];
    for event in events {
        let parsed = event
            .strip_prefix(b"data: ".as_slice())
            .and_then(|d| serde_json::from_slice::<Value>(d.trim_ascii()).ok())
            .filter(Value::is_object);
        let Some(mut v) = parsed else {
            out.push(event);
            continue;
        };
        for c in v["choices"].as_array_mut().into_iter().flatten() {
            let said = [&c["delta"]["content"], &c["text"]]
                .iter()
                .any(|t| t.as_str().is_some_and(|t| !t.is_empty()));
            c["content_filter_results"] = if said { all_safe() } else { json!({}) };
        }
        out.push(sse(&v));
    }
    out
}

/// The tool a chat request gets a call of: the one `tool_choice` names, else the first offered;
/// none when `tool_choice` is `"none"` or the conversation does not end on the user's turn.
fn tool_to_call(body: &Value) -> Option<String> {
    let tools = body["tools"].as_array().filter(|t| !t.is_empty())?;
    let last = body["messages"].as_array()?.last()?;
    if last["role"] != "user" {
        return None;
    }
    let name = match &body["tool_choice"] {
        Value::String(s) if s == "none" => return None,
        Value::Object(o) => &o.get("function")?["name"],
        _ => &tools[0]["function"]["name"],
    };
    name.as_str().map(str::to_owned)
}

/// The call of tool `name`: its arguments name the tool's first parameter (`input` when it has
/// none) with the user's text.
fn tool_call(body: &Value, name: String, chunks: Option<usize>) -> Planned {
    let tool = body["tools"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|t| t["function"]["name"] == name.as_str());
    let param = tool
        .and_then(|t| t["function"]["parameters"]["properties"].as_object())
        .and_then(|p| p.keys().next().cloned())
        .unwrap_or_else(|| "input".to_owned());
    let text = body.as_object().map(request_text).unwrap_or_default();
    let id = format!("chatcmpl-{}", uuid::Uuid::new_v4().simple());
    let call = ToolCall {
        id: format!("call_{}", id.get(9..33).unwrap_or_default()),
        name,
        arguments: json!({ param: text }).to_string(),
    };
    let head = Head {
        id: &id,
        created: now_secs(),
        model: body["model"].as_str().unwrap_or_default(),
    };
    let used = usage(body, &call.arguments);
    if body["stream"] != true {
        return Planned::Json(StatusCode::OK, call.answer(&head, used));
    }
    let wants_usage = body["stream_options"]["include_usage"] == true;
    Planned::Sse(call.events(&head, chunks.unwrap_or(4), wants_usage.then_some(used)))
}
