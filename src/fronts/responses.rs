//! `POST /v1/responses`, OpenAI's Responses API, translated to and from a chat completion
//! request (the gateway's internal form) for text and function tools, streams included.
//!
//! Request: `instructions` becomes the system message; `input` (a string, or message items with
//! text and image parts, `function_call` and `function_call_output` items) becomes `messages`;
//! function `tools`, `tool_choice`, `parallel_tool_calls`, `max_output_tokens`, `temperature`,
//! `top_p`, `user`, `metadata`, `service_tier`, `reasoning.effort` and `text.format` map to their
//! chat fields. Anything else is refused with a 400 naming the field (never dropped silently):
//! Tollgate keeps no responses, so `previous_response_id`, `store: true` and the retrieval
//! routes are not offered; built-in tools (web search, file search, …) are not either.
//!
//! Answer: the chat completion becomes a `response` object (a `message` item with
//! `output_text`, `function_call` items, usage as input/output tokens); a stream of chat chunks
//! becomes the Responses event sequence (`response.created` … `response.completed`), event by
//! event as the chunks arrive. The final events repeat the whole text, as the protocol has them,
//! so a stream holds its text so far (bounded by `server.max_response_bytes`). Errors are the
//! request path's OpenAI-shaped errors, unchanged; an error mid-stream becomes an `error` event.

use std::collections::BTreeMap;

use axum::body::Body;
use axum::extract::State;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use http::{header, HeaderValue, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::providers::sse;
use crate::state::AppState;

/// The route's handler.
pub async fn create(State(state): State<AppState>, req: http::Request<Body>) -> Response {
    let accepted = match super::accept(&state, req).await {
        Ok(a) => a,
        Err(e) => return e.into_response(),
    };
    let request: Map<String, Value> = match serde_json::from_slice(&accepted.body) {
        Ok(Value::Object(m)) => m,
        Ok(_) => {
            return ApiError::invalid("the request body must be a JSON object", None)
                .into_response()
        }
        Err(e) => {
            return ApiError::invalid(format!("the request body is not valid JSON: {e}"), None)
                .into_response()
        }
    };
    let (chat, echo) = match to_chat(request) {
        Ok(t) => t,
        Err(e) => return e.into_response(),
    };
    let limit = state.snapshot.load().config.server.max_response_bytes;
    let chat = Value::Object(chat).to_string().into_bytes();
    let answer = super::forward(&state, accepted, "responses", chat).await;
    translate_answer(answer, echo, limit).await
}

/// What the response object repeats of the request.
#[derive(Clone, Default)]
struct Echo {
    fields: Map<String, Value>,
}

/// Request fields the response object repeats, with their value when the request has none.
const ECHOED: [(&str, Value); 9] = [
    ("instructions", Value::Null),
    ("max_output_tokens", Value::Null),
    ("metadata", Value::Null),
    ("parallel_tool_calls", Value::Bool(true)),
    ("temperature", Value::Null),
    ("tool_choice", Value::Null),
    ("tools", Value::Null),
    ("top_p", Value::Null),
    ("text", Value::Null),
];

fn bad(message: impl Into<String>, param: &str) -> ApiError {
    ApiError::invalid(message, Some(param))
}

/// Translate a Responses request into a chat completion request.
fn to_chat(mut r: Map<String, Value>) -> Result<(Map<String, Value>, Echo), ApiError> {
    let mut echo = Echo::default();
    for (name, default) in ECHOED {
        let v = r.get(name).cloned().unwrap_or(default);
        echo.fields.insert(name.to_owned(), v);
    }
    if echo.fields["tool_choice"].is_null() {
        echo.fields.insert("tool_choice".into(), json!("auto"));
    }
    if echo.fields["tools"].is_null() {
        echo.fields.insert("tools".into(), json!([]));
    }
    if echo.fields["text"].is_null() {
        echo.fields
            .insert("text".into(), json!({"format": {"type": "text"}}));
    }
    let mut chat = Map::new();
    let mut messages = Vec::new();
    let names: Vec<String> = r.keys().cloned().collect();
    for name in names {
        let Some(v) = r.remove(&name) else { continue };
        match name.as_str() {
            "model" | "temperature" | "top_p" | "user" | "parallel_tool_calls" | "service_tier" => {
                chat.insert(name, v);
            }
            "stream" => {
                if v == Value::Bool(true) {
                    chat.insert("stream_options".into(), json!({"include_usage": true}));
                }
                chat.insert(name, v);
            }
            // Repeated in the response object, not sent upstream.
            "metadata" => {}
            "max_output_tokens" => {
                chat.insert("max_tokens".into(), v);
            }
            "instructions" => match v {
                Value::Null => {}
                Value::String(s) => messages.insert(0, json!({"role": "system", "content": s})),
                _ => return Err(bad("instructions must be a string", "instructions")),
            },
            "input" => input_messages(v, &mut messages)?,
            "tools" => {
                chat.insert(name, tools(v)?);
            }
            "tool_choice" => {
                chat.insert(name, tool_choice(v)?);
            }
            "text" => {
                if let Some(format) = response_format(&v)? {
                    chat.insert("response_format".into(), format);
                }
            }
            "reasoning" => {
                let effort = v.get("effort").cloned().unwrap_or(Value::Null);
                let others = v
                    .as_object()
                    .map_or(0, |o| o.keys().filter(|k| *k != "effort").count());
                if others > 0 || !(effort.is_null() || effort.is_string()) {
                    return Err(bad(
                        "only reasoning.effort is translated to chat (reasoning_effort)",
                        "reasoning",
                    ));
                }
                if !effort.is_null() {
                    chat.insert("reasoning_effort".into(), effort);
                }
            }
            "store" if v != Value::Bool(true) => {}
            "store" => {
                return Err(bad(
                    "Tollgate does not store responses: send store: false (or leave it out)",
                    "store",
                ))
            }
            "truncation" if v.is_null() || v == "disabled" => {}
            "include" if v.is_null() || v.as_array().is_some_and(Vec::is_empty) => {}
            _ => {
                return Err(bad(
                    format!(
                    "'{name}' is not supported by Tollgate's /v1/responses (see docs/ENDPOINTS.md)"
                ),
                    &name,
                ))
            }
        }
    }
    if messages.is_empty() {
        return Err(bad("input is required", "input"));
    }
    chat.insert("messages".into(), Value::Array(messages));
    Ok((chat, echo))
}

/// `input` as chat messages, appended to `out`.
fn input_messages(input: Value, out: &mut Vec<Value>) -> Result<(), ApiError> {
    let items = match input {
        Value::String(s) => {
            out.push(json!({"role": "user", "content": s}));
            return Ok(());
        }
        Value::Array(items) => items,
        _ => return Err(bad("input must be a string or an array of items", "input")),
    };
    for (i, item) in items.into_iter().enumerate() {
        let at = format!("input[{i}]");
        let kind = item
            .get("type")
            .and_then(Value::as_str)
            .unwrap_or("message");
        match kind {
            "message" => out.push(message(item, &at)?),
            "function_call" => {
                let call = json!({
                    "id": item.get("call_id").cloned().unwrap_or(Value::Null),
                    "type": "function",
                    "function": {
                        "name": item.get("name").cloned().unwrap_or(Value::Null),
                        "arguments": item.get("arguments").cloned().unwrap_or(json!("{}")),
                    },
                });
                if !call["id"].is_string() || !call["function"]["name"].is_string() {
                    return Err(bad("a function_call item needs call_id and name", &at));
                }
                // Calls in a row are one assistant turn (parallel calls).
                let joined = out.last_mut().and_then(|m| {
                    let open = m["role"] == "assistant" && m.get("tool_calls").is_some();
                    open.then(|| m["tool_calls"].as_array_mut()).flatten()
                });
                match joined {
                    Some(calls) => calls.push(call),
                    None => out
                        .push(json!({"role": "assistant", "content": null, "tool_calls": [call]})),
                }
            }
            "function_call_output" => {
                let output = match item.get("output") {
                    Some(Value::String(s)) => s.clone(),
                    Some(Value::Array(parts)) => text_of(parts),
                    _ => return Err(bad("a function_call_output needs output", &at)),
                };
                out.push(json!({"role": "tool",
                    "tool_call_id": item.get("call_id").cloned().unwrap_or(Value::Null),
                    "content": output}));
            }
            other => {
                return Err(bad(
                    format!("input items of type '{other}' are not supported"),
                    &format!("{at}.type"),
                ))
            }
        }
    }
    Ok(())
}

fn text_of(parts: &[Value]) -> String {
    parts
        .iter()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect::<Vec<_>>()
        .join("")
}

/// One message item as a chat message.
fn message(item: Value, at: &str) -> Result<Value, ApiError> {
    let role = match item.get("role").and_then(Value::as_str) {
        Some("user") => "user",
        Some("assistant") => "assistant",
        Some("system" | "developer") => "system",
        _ => {
            return Err(bad(
                "role must be user, assistant, system or developer",
                &format!("{at}.role"),
            ))
        }
    };
    let content = match item.get("content") {
        Some(Value::String(s)) => Value::String(s.clone()),
        Some(Value::Array(parts)) if role != "user" => Value::String(text_of(parts)),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, p) in parts.iter().enumerate() {
                let here = format!("{at}.content[{j}]");
                match p.get("type").and_then(Value::as_str) {
                    Some("input_text" | "output_text") => {
                        out.push(json!({"type": "text", "text": p.get("text").cloned().unwrap_or(json!(""))}))
                    }
                    Some("input_image") => {
                        let Some(url) = p.get("image_url").and_then(Value::as_str) else {
                            return Err(bad("only images given by image_url are supported", &here));
                        };
                        let detail = p.get("detail").and_then(Value::as_str).unwrap_or("auto");
                        out.push(json!({"type": "image_url", "image_url": {"url": url, "detail": detail}}));
                    }
                    _ => {
                        return Err(bad(
                            "content parts must be input_text or input_image",
                            &format!("{here}.type"),
                        ))
                    }
                }
            }
            Value::Array(out)
        }
        _ => {
            return Err(bad(
                "content must be a string or an array",
                &format!("{at}.content"),
            ))
        }
    };
    Ok(json!({"role": role, "content": content}))
}

fn tools(v: Value) -> Result<Value, ApiError> {
    let Value::Array(list) = v else {
        return Err(bad("tools must be an array", "tools"));
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.into_iter().enumerate() {
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(bad(
                "only function tools are supported",
                &format!("tools[{i}].type"),
            ));
        }
        let mut f = Map::new();
        for k in ["name", "description", "parameters", "strict"] {
            if let Some(v) = t.get(k).filter(|v| !v.is_null()) {
                f.insert(k.to_owned(), v.clone());
            }
        }
        out.push(json!({"type": "function", "function": f}));
    }
    Ok(Value::Array(out))
}

fn tool_choice(v: Value) -> Result<Value, ApiError> {
    match &v {
        Value::String(s) if matches!(s.as_str(), "auto" | "none" | "required") => Ok(v),
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => Ok(
            json!({"type": "function", "function": {"name": o.get("name").cloned().unwrap_or(Value::Null)}}),
        ),
        _ => Err(bad(
            "tool_choice must be auto, none, required or a function",
            "tool_choice",
        )),
    }
}

/// `text.format` as chat's `response_format` (`None` for plain text).
fn response_format(text: &Value) -> Result<Option<Value>, ApiError> {
    let Some(format) = text.get("format") else {
        return Ok(None);
    };
    match format.get("type").and_then(Value::as_str) {
        Some("text") => Ok(None),
        Some("json_object") => Ok(Some(json!({"type": "json_object"}))),
        Some("json_schema") => {
            let mut schema = Map::new();
            for k in ["name", "schema", "strict", "description"] {
                if let Some(v) = format.get(k) {
                    schema.insert(k.to_owned(), v.clone());
                }
            }
            Ok(Some(json!({"type": "json_schema", "json_schema": schema})))
        }
        _ => Err(bad(
            "text.format.type must be text, json_object or json_schema",
            "text.format",
        )),
    }
}

fn new_id(prefix: &str) -> String {
    format!("{prefix}_{}", uuid::Uuid::new_v4().simple())
}

/// The chat answer, translated: JSON and SSE bodies; errors pass as they are.
async fn translate_answer(answer: Response, echo: Echo, limit: usize) -> Response {
    let (mut parts, body) = answer.into_parts();
    if parts.status != StatusCode::OK {
        return Response::from_parts(parts, body);
    }
    parts.headers.remove(header::CONTENT_LENGTH);
    let sse = parts
        .headers
        .get(header::CONTENT_TYPE)
        .is_some_and(|v| v.as_bytes().starts_with(b"text/event-stream"));
    if sse {
        let events = Events::new(echo, limit);
        let upstream = body.into_data_stream();
        // One output piece per chat chunk that makes events; the upstream body is dropped (and
        // with it the request path's relay) as soon as the client goes away.
        let stream = futures_util::stream::unfold(Some((upstream, events)), |state| async move {
            let (mut upstream, mut events) = state?;
            loop {
                match upstream.next().await {
                    Some(Ok(bytes)) => {
                        let more = events.feed(&bytes);
                        if events.ended {
                            return Some((Ok::<_, std::io::Error>(more), None));
                        }
                        if !more.is_empty() {
                            return Some((Ok(more), Some((upstream, events))));
                        }
                    }
                    _ => return Some((Ok(events.finish()), None)),
                }
            }
        });
        return Response::from_parts(parts, Body::from_stream(stream));
    }
    let bytes = match http_body_util::Limited::new(body, limit).collect().await {
        Ok(c) => c.to_bytes(),
        Err(_) => return ApiError::Internal.into_response(),
    };
    let chat: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(_) => return ApiError::Internal.into_response(),
    };
    let body = response_object(&chat, &echo).to_string();
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    Response::from_parts(parts, Body::from(body))
}

/// Responses usage from chat usage.
fn usage(u: &Value) -> Value {
    let input = u["prompt_tokens"].as_u64().unwrap_or(0);
    let output = u["completion_tokens"].as_u64().unwrap_or(0);
    json!({
        "input_tokens": input,
        "input_tokens_details": {"cached_tokens":
            u["prompt_tokens_details"]["cached_tokens"].as_u64().unwrap_or(0)},
        "output_tokens": output,
        "output_tokens_details": {"reasoning_tokens":
            u["completion_tokens_details"]["reasoning_tokens"].as_u64().unwrap_or(0)},
        "total_tokens": u["total_tokens"].as_u64().unwrap_or(input + output),
    })
}

/// Status and `incomplete_details` for a chat finish reason.
fn ending(finish: Option<&str>) -> (&'static str, Value) {
    match finish {
        Some("length") => ("incomplete", json!({"reason": "max_output_tokens"})),
        Some("content_filter") => ("incomplete", json!({"reason": "content_filter"})),
        _ => ("completed", Value::Null),
    }
}

/// What identifies a response: its id, creation time and model.
struct Head<'a> {
    id: &'a str,
    created: &'a Value,
    model: &'a Value,
}

/// The response object around `output`.
fn envelope(
    head: Head<'_>,
    (status, incomplete): (&str, Value),
    output: Vec<Value>,
    usage: Value,
    echo: &Echo,
) -> Value {
    let Head { id, created, model } = head;
    let mut r = json!({
        "id": id, "object": "response", "created_at": created, "status": status,
        "error": null, "incomplete_details": incomplete, "model": model,
        "output": output, "usage": usage,
    });
    if let Some(o) = r.as_object_mut() {
        for (k, v) in &echo.fields {
            o.insert(k.clone(), v.clone());
        }
    }
    r
}

fn message_item(id: &str, status: &str, text: &str, refusal: Option<&str>) -> Value {
    let content = match refusal {
        Some(r) => json!([{"type": "refusal", "refusal": r}]),
        None => json!([{"type": "output_text", "text": text, "annotations": []}]),
    };
    json!({"type": "message", "id": id, "status": status, "role": "assistant", "content": content})
}

fn call_item(id: &str, status: &str, call_id: &Value, name: &Value, arguments: &str) -> Value {
    json!({"type": "function_call", "id": id, "call_id": call_id, "name": name,
        "arguments": arguments, "status": status})
}

/// A whole chat completion as a response object.
fn response_object(chat: &Value, echo: &Echo) -> Value {
    let choice = &chat["choices"][0];
    let msg = &choice["message"];
    let mut output = Vec::new();
    let text = msg["content"].as_str().unwrap_or("");
    let refusal = msg["refusal"].as_str();
    let calls = msg["tool_calls"].as_array();
    if !text.is_empty() || refusal.is_some() || calls.is_none_or(Vec::is_empty) {
        output.push(message_item(&new_id("msg"), "completed", text, refusal));
    }
    for c in calls.into_iter().flatten() {
        let args = c["function"]["arguments"].as_str().unwrap_or("{}");
        output.push(call_item(
            &new_id("fc"),
            "completed",
            &c["id"],
            &c["function"]["name"],
            args,
        ));
    }
    let head = Head {
        id: &new_id("resp"),
        created: &chat["created"],
        model: &chat["model"],
    };
    let end = ending(choice["finish_reason"].as_str());
    envelope(head, end, output, usage(&chat["usage"]), echo)
}

/// One function call being streamed.
struct Call {
    item_id: String,
    output_index: usize,
    call_id: Value,
    name: Value,
    arguments: String,
}

/// The Responses event sequence of one chat stream, made as its chunks arrive.
struct Events {
    echo: Echo,
    limit: usize,
    pending: BytesMut,
    seq: u64,
    id: String,
    model: Value,
    created: Value,
    started: bool,
    /// The message item, once text arrived: its id, output index and text so far.
    message: Option<(String, usize, String)>,
    /// Function calls by their chat index.
    calls: BTreeMap<u64, Call>,
    items: usize,
    finish: Option<String>,
    usage: Value,
    /// `data: [DONE]`, an error, or too much text: nothing more is sent.
    ended: bool,
}

impl Events {
    fn new(echo: Echo, limit: usize) -> Events {
        Events {
            echo,
            limit,
            pending: BytesMut::new(),
            seq: 0,
            id: new_id("resp"),
            model: Value::Null,
            created: Value::Null,
            started: false,
            message: None,
            calls: BTreeMap::new(),
            items: 0,
            finish: None,
            usage: json!({}),
            ended: false,
        }
    }

    fn emit(&mut self, out: &mut Vec<u8>, kind: &str, mut data: Value) {
        if let Some(o) = data.as_object_mut() {
            o.insert("type".into(), json!(kind));
            o.insert("sequence_number".into(), json!(self.seq));
        }
        self.seq += 1;
        out.extend_from_slice(b"event: ");
        out.extend_from_slice(kind.as_bytes());
        out.extend_from_slice(b"\ndata: ");
        out.extend_from_slice(data.to_string().as_bytes());
        out.extend_from_slice(b"\n\n");
    }

    fn held(&self) -> usize {
        self.message.as_ref().map_or(0, |m| m.2.len())
            + self
                .calls
                .values()
                .map(|c| c.arguments.len())
                .sum::<usize>()
            + self.pending.len()
    }

    /// The events for one more chunk of the chat stream.
    fn feed(&mut self, chunk: &[u8]) -> Bytes {
        let mut out = Vec::new();
        if self.ended {
            return Bytes::new();
        }
        self.pending.extend_from_slice(chunk);
        let pending = std::mem::take(&mut self.pending);
        let mut events = sse::Events::new(&pending);
        for event in events.by_ref() {
            self.chat_event(event, &mut out);
            if self.ended {
                return Bytes::from(out);
            }
        }
        let consumed = events.consumed();
        self.pending = pending;
        let _ = self.pending.split_to(consumed);
        if self.held() > self.limit {
            self.fail(
                &mut out,
                "the answer is larger than server.max_response_bytes",
                "response_too_large",
            );
        }
        Bytes::from(out)
    }

    /// The stream ended without `[DONE]`: it was cut.
    fn finish(&mut self) -> Bytes {
        let mut out = Vec::new();
        if !self.ended {
            self.fail(
                &mut out,
                "the upstream stream ended early",
                "upstream_stream_cut",
            );
        }
        Bytes::from(out)
    }

    fn fail(&mut self, out: &mut Vec<u8>, message: &str, code: &str) {
        self.emit(
            out,
            "error",
            json!({"code": code, "message": message, "param": null}),
        );
        self.ended = true;
    }

    fn chat_event(&mut self, event: &[u8], out: &mut Vec<u8>) {
        let Some(data) = sse::data(event) else { return };
        let data = data.trim_ascii();
        if data == b"[DONE]" {
            self.complete(out);
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(data) else {
            return;
        };
        if let Some(e) = v.get("error") {
            let code = e["code"]
                .as_str()
                .or(e["type"].as_str())
                .unwrap_or("upstream_error");
            let message = e["message"].as_str().unwrap_or("the stream failed");
            let (code, message) = (code.to_owned(), message.to_owned());
            self.fail(out, &message, &code);
            return;
        }
        if !self.started {
            self.started = true;
            self.model = v["model"].clone();
            self.created = v["created"].clone();
            let r = self.snapshot(("in_progress", Value::Null), Vec::new(), Value::Null);
            self.emit(out, "response.created", json!({"response": r}));
            self.emit(out, "response.in_progress", json!({"response": r}));
        }
        if !v["usage"].is_null() {
            self.usage = v["usage"].clone();
        }
        let choice = &v["choices"][0];
        if let Some(f) = choice["finish_reason"].as_str() {
            self.finish = Some(f.to_owned());
        }
        let delta = &choice["delta"];
        if let Some(text) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            self.text(out, text);
        }
        for tc in delta["tool_calls"].as_array().into_iter().flatten() {
            self.call_delta(out, tc);
        }
    }

    fn text(&mut self, out: &mut Vec<u8>, text: &str) {
        if self.message.is_none() {
            let id = new_id("msg");
            let index = self.items;
            self.items += 1;
            let item = json!({"type": "message", "id": id, "status": "in_progress",
                "role": "assistant", "content": []});
            self.emit(
                out,
                "response.output_item.added",
                json!({"output_index": index, "item": item}),
            );
            self.emit(
                out,
                "response.content_part.added",
                json!({"item_id": id,
                "output_index": index, "content_index": 0,
                "part": {"type": "output_text", "text": "", "annotations": []}}),
            );
            self.message = Some((id, index, String::new()));
        }
        let Some((id, index, so_far)) = self.message.as_mut() else {
            return;
        };
        so_far.push_str(text);
        let data = json!({"item_id": id, "output_index": index, "content_index": 0,
            "delta": text, "logprobs": []});
        self.emit(out, "response.output_text.delta", data);
    }

    fn call_delta(&mut self, out: &mut Vec<u8>, tc: &Value) {
        let index = tc["index"].as_u64().unwrap_or(0);
        if !self.calls.contains_key(&index) {
            let call = Call {
                item_id: new_id("fc"),
                output_index: self.items,
                call_id: tc["id"].clone(),
                name: tc["function"]["name"].clone(),
                arguments: String::new(),
            };
            self.items += 1;
            let item = call_item(&call.item_id, "in_progress", &call.call_id, &call.name, "");
            let data = json!({"output_index": call.output_index, "item": item});
            self.calls.insert(index, call);
            self.emit(out, "response.output_item.added", data);
        }
        let Some(piece) = tc["function"]["arguments"]
            .as_str()
            .filter(|a| !a.is_empty())
        else {
            return;
        };
        let Some(call) = self.calls.get_mut(&index) else {
            return;
        };
        call.arguments.push_str(piece);
        let data = json!({"item_id": call.item_id, "output_index": call.output_index,
            "delta": piece});
        self.emit(out, "response.function_call_arguments.delta", data);
    }

    /// The response object as it stands.
    fn snapshot(&self, end: (&str, Value), output: Vec<Value>, usage: Value) -> Value {
        let head = Head {
            id: &self.id,
            created: &self.created,
            model: &self.model,
        };
        envelope(head, end, output, usage, &self.echo)
    }

    /// `[DONE]`: close every item, then `response.completed` (or `.incomplete`).
    fn complete(&mut self, out: &mut Vec<u8>) {
        let mut output: Vec<(usize, Value)> = Vec::new();
        if let Some((id, index, text)) = self.message.take() {
            self.emit(
                out,
                "response.output_text.done",
                json!({"item_id": id,
                "output_index": index, "content_index": 0, "text": text, "logprobs": []}),
            );
            self.emit(
                out,
                "response.content_part.done",
                json!({"item_id": id,
                "output_index": index, "content_index": 0,
                "part": {"type": "output_text", "text": text, "annotations": []}}),
            );
            let item = message_item(&id, "completed", &text, None);
            self.emit(
                out,
                "response.output_item.done",
                json!({"output_index": index, "item": item}),
            );
            output.push((index, item));
        }
        for call in std::mem::take(&mut self.calls).into_values() {
            self.emit(
                out,
                "response.function_call_arguments.done",
                json!({
                "item_id": call.item_id, "output_index": call.output_index,
                "arguments": call.arguments}),
            );
            let item = call_item(
                &call.item_id,
                "completed",
                &call.call_id,
                &call.name,
                &call.arguments,
            );
            self.emit(
                out,
                "response.output_item.done",
                json!({"output_index": call.output_index, "item": item}),
            );
            output.push((call.output_index, item));
        }
        output.sort_by_key(|(i, _)| *i);
        let (status, incomplete) = ending(self.finish.as_deref());
        let usage = usage(&self.usage);
        let output = output.into_iter().map(|(_, v)| v).collect();
        let r = self.snapshot((status, incomplete), output, usage);
        let kind = if status == "completed" {
            "response.completed"
        } else {
            "response.incomplete"
        };
        self.emit(out, kind, json!({"response": r}));
        self.ended = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(v: Value) -> Result<Map<String, Value>, ApiError> {
        let Value::Object(m) = v else {
            panic!("object")
        };
        to_chat(m).map(|(c, _)| c)
    }

    #[test]
    fn instructions_input_items_and_tools_become_chat() {
        let chat = req(json!({
            "model": "m", "instructions": "be brief", "max_output_tokens": 9,
            "input": [
                {"role": "user", "content": [{"type": "input_text", "text": "hi"}]},
                {"type": "function_call", "call_id": "c1", "name": "f", "arguments": "{}"},
                {"type": "function_call", "call_id": "c2", "name": "g", "arguments": "{}"},
                {"type": "function_call_output", "call_id": "c1", "output": "one"},
            ],
            "tools": [{"type": "function", "name": "f", "parameters": {"type": "object"}}],
            "tool_choice": {"type": "function", "name": "f"},
        }))
        .unwrap_or_else(|e| panic!("{e:?}"));
        assert_eq!(chat["max_tokens"], 9);
        let m = chat["messages"].as_array().cloned().unwrap_or_default();
        assert_eq!(m[0], json!({"role": "system", "content": "be brief"}));
        assert_eq!(m[1]["content"][0], json!({"type": "text", "text": "hi"}));
        assert_eq!(
            m[2]["tool_calls"].as_array().map(Vec::len),
            Some(2),
            "one turn"
        );
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "c1", "content": "one"})
        );
        assert_eq!(chat["tools"][0]["function"]["name"], "f");
        assert_eq!(chat["tool_choice"]["function"]["name"], "f");
    }

    #[test]
    fn fields_that_cannot_be_translated_are_refused_by_name() {
        for (body, param) in [
            (
                json!({"model": "m", "input": "x", "previous_response_id": "r"}),
                "previous_response_id",
            ),
            (json!({"model": "m", "input": "x", "store": true}), "store"),
            (
                json!({"model": "m", "input": "x", "tools": [{"type": "web_search"}]}),
                "tools[0].type",
            ),
            (
                json!({"model": "m", "input": [{"type": "reasoning"}]}),
                "input[0].type",
            ),
            (json!({"model": "m"}), "input"),
        ] {
            match req(body) {
                Err(ApiError::InvalidRequest { param: Some(p), .. }) => assert_eq!(p, param),
                other => panic!("{param}: {:?}", other.map(|_| ())),
            }
        }
    }

    #[test]
    fn a_chat_stream_becomes_the_responses_event_sequence_however_it_is_cut() {
        let chat = concat!(
            "data: {\"model\":\"m\",\"created\":1,\"choices\":[{\"index\":0,\"delta\":{\"role\":\"assistant\",\"content\":\"Hel\"}}]}\n\n",
            "data: {\"model\":\"m\",\"created\":1,\"choices\":[{\"index\":0,\"delta\":{\"content\":\"lo\"},\"finish_reason\":\"stop\"}]}\n\n",
            "data: {\"model\":\"m\",\"created\":1,\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2,\"total_tokens\":5}}\n\n",
            "data: [DONE]\n\n",
        );
        for cut in [1usize, 7, 64, chat.len()] {
            let mut ev = Events::new(Echo::default(), 1 << 20);
            let mut out = Vec::new();
            for piece in chat.as_bytes().chunks(cut) {
                out.extend_from_slice(&ev.feed(piece));
            }
            out.extend_from_slice(&ev.finish());
            let text = String::from_utf8_lossy(&out);
            let kinds: Vec<&str> = text
                .lines()
                .filter_map(|l| l.strip_prefix("event: "))
                .collect();
            assert_eq!(
                kinds,
                [
                    "response.created",
                    "response.in_progress",
                    "response.output_item.added",
                    "response.content_part.added",
                    "response.output_text.delta",
                    "response.output_text.delta",
                    "response.output_text.done",
                    "response.content_part.done",
                    "response.output_item.done",
                    "response.completed"
                ],
                "cut {cut}"
            );
            assert!(text.contains("\"text\":\"Hello\""), "{text}");
            assert!(text.contains("\"output_tokens\":2"), "{text}");
        }
    }

    #[test]
    fn a_cut_stream_ends_with_an_error_event() {
        let mut ev = Events::new(Echo::default(), 1 << 20);
        let mut out = ev
            .feed(b"data: {\"model\":\"m\",\"choices\":[{\"index\":0,\"delta\":{\"content\":\"a\"}}]}\n\n")
            .to_vec();
        out.extend_from_slice(&ev.finish());
        let text = String::from_utf8_lossy(&out);
        assert!(text.contains("event: error\n"), "{text}");
        assert!(!text.contains("response.completed"), "{text}");
    }
}
