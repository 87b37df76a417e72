//! An Anthropic Messages request → the OpenAI chat body the request path runs on.
//!
//! Translated: `model`, `max_tokens`, `system` (a string or text blocks → one system message),
//! user/assistant turns (text, `image` with a base64 or url source → `image_url`, `tool_use` →
//! `tool_calls`, `tool_result` → `tool` messages placed before the rest of their turn),
//! `stop_sequences` → `stop`, `temperature`, `top_p`, `stream` (usage always asked for, so the
//! closing `message_delta` carries it), custom `tools`, `tool_choice` (with
//! `disable_parallel_tool_use` → `parallel_tool_calls: false`), `metadata.user_id` → `user`.
//! Anything else (`top_k`, `thinking`, server tools, documents, ...) is a 400 naming it.

use serde_json::{json, Map, Value};

use crate::error::ApiError;

fn refuse(param: &str) -> ApiError {
    ApiError::invalid(
        format!("'{param}' cannot be translated to the gateway's chat form"),
        Some(param),
    )
}

fn invalid(param: &str, what: &str) -> ApiError {
    ApiError::invalid(format!("{param}: {what}"), Some(param))
}

/// The chat body for a Messages body, and whether it asks for a stream.
pub fn translate(raw: &[u8]) -> Result<(Vec<u8>, bool), ApiError> {
    let v: Value = serde_json::from_slice(raw)
        .map_err(|e| ApiError::invalid(format!("the request body is not valid JSON: {e}"), None))?;
    let Value::Object(body) = v else {
        return Err(ApiError::invalid(
            "the request body must be a JSON object",
            None,
        ));
    };
    let mut out = Map::new();
    let mut messages = Vec::new();
    let mut stream = false;
    let mut parallel = None;
    for (key, value) in &body {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" | "temperature" | "top_p" | "max_tokens" => {
                out.insert(key.clone(), value.clone());
            }
            "system" => {
                let text = text_of(value, "system")?;
                if !text.is_empty() {
                    messages.insert(0, json!({"role": "system", "content": text}));
                }
            }
            "messages" => {
                let list = value
                    .as_array()
                    .ok_or_else(|| invalid("messages", "must be a list"))?;
                for (i, m) in list.iter().enumerate() {
                    turn(m, &format!("messages.{i}"), &mut messages)?;
                }
            }
            "stop_sequences" => {
                out.insert("stop".into(), value.clone());
            }
            "stream" => {
                stream = value.as_bool() == Some(true);
                out.insert("stream".into(), Value::Bool(stream));
                if stream {
                    out.insert("stream_options".into(), json!({"include_usage": true}));
                }
            }
            "tools" => {
                let list = value
                    .as_array()
                    .ok_or_else(|| invalid("tools", "must be a list"))?;
                let mut tools = Vec::with_capacity(list.len());
                for (i, t) in list.iter().enumerate() {
                    let p = format!("tools.{i}");
                    if t.get("type").is_some_and(|k| k != "custom") {
                        return Err(refuse(&format!("{p}.type")));
                    }
                    let name = t["name"]
                        .as_str()
                        .ok_or_else(|| invalid(&p, "name required"))?;
                    let mut f = json!({"name": name, "parameters": t["input_schema"]});
                    if let Some(d) = t["description"].as_str() {
                        f["description"] = Value::from(d);
                    }
                    tools.push(json!({"type": "function", "function": f}));
                }
                out.insert("tools".into(), Value::Array(tools));
            }
            "tool_choice" => {
                let choice = match value["type"].as_str() {
                    Some("auto") => json!("auto"),
                    Some("any") => json!("required"),
                    Some("none") => json!("none"),
                    Some("tool") => json!({"type": "function",
                        "function": {"name": value["name"]}}),
                    _ => return Err(refuse("tool_choice.type")),
                };
                if value["disable_parallel_tool_use"].as_bool() == Some(true) {
                    parallel = Some(false);
                }
                out.insert("tool_choice".into(), choice);
            }
            "metadata" => {
                if let Some(u) = value["user_id"].as_str() {
                    out.insert("user".into(), Value::from(u));
                }
                if value
                    .as_object()
                    .is_some_and(|m| m.keys().any(|k| k != "user_id"))
                {
                    return Err(refuse("metadata"));
                }
            }
            other => return Err(refuse(other)),
        }
    }
    if !body.contains_key("max_tokens") {
        return Err(invalid("max_tokens", "Field required"));
    }
    if let Some(p) = parallel {
        out.insert("parallel_tool_calls".into(), Value::Bool(p));
    }
    out.insert("messages".into(), Value::Array(messages));
    let bytes = serde_json::to_vec(&Value::Object(out)).map_err(|_| ApiError::Internal)?;
    Ok((bytes, stream))
}

/// Text content: a string, or text blocks joined.
fn text_of(v: &Value, at: &str) -> Result<String, ApiError> {
    match v {
        Value::String(s) => Ok(s.clone()),
        Value::Array(blocks) => {
            let mut parts = Vec::with_capacity(blocks.len());
            for (j, b) in blocks.iter().enumerate() {
                if b["type"] != "text" {
                    return Err(refuse(&format!("{at}.{j}.type")));
                }
                parts.push(b["text"].as_str().unwrap_or_default());
            }
            Ok(parts.join("\n"))
        }
        _ => Err(invalid(at, "must be a string or a list of text blocks")),
    }
}

/// One turn as chat messages: tool results first (as `tool` messages), then the rest.
fn turn(m: &Value, at: &str, out: &mut Vec<Value>) -> Result<(), ApiError> {
    let role = match m["role"].as_str() {
        Some(r @ ("user" | "assistant")) => r,
        _ => {
            return Err(invalid(
                &format!("{at}.role"),
                "must be 'user' or 'assistant'",
            ))
        }
    };
    let blocks = match &m["content"] {
        Value::String(s) => {
            out.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Value::Array(b) => b,
        _ => return Err(invalid(&format!("{at}.content"), "Field required")),
    };
    let mut parts = Vec::new();
    let mut calls = Vec::new();
    for (j, b) in blocks.iter().enumerate() {
        let p = format!("{at}.content.{j}");
        match b["type"].as_str() {
            Some("text") => parts.push(json!({"type": "text", "text": b["text"]})),
            Some("image") if role == "user" => {
                let s = &b["source"];
                let url = match s["type"].as_str() {
                    Some("base64") => format!(
                        "data:{};base64,{}",
                        s["media_type"].as_str().unwrap_or("image/png"),
                        s["data"].as_str().unwrap_or_default()
                    ),
                    Some("url") => s["url"].as_str().unwrap_or_default().to_owned(),
                    _ => return Err(refuse(&format!("{p}.source.type"))),
                };
                parts.push(json!({"type": "image_url", "image_url": {"url": url}}));
            }
            Some("tool_use") if role == "assistant" => calls.push(json!({
                "id": b["id"], "type": "function",
                "function": {"name": b["name"], "arguments": b["input"].to_string()},
            })),
            Some("tool_result") if role == "user" => {
                let content = match &b["content"] {
                    Value::Null => String::new(),
                    c => text_of(c, &format!("{p}.content"))?,
                };
                out.push(json!({"role": "tool", "tool_call_id": b["tool_use_id"],
                    "content": content}));
            }
            _ => return Err(refuse(&format!("{p}.type"))),
        }
    }
    if role == "assistant" {
        let text: Vec<&str> = parts.iter().filter_map(|p| p["text"].as_str()).collect();
        let mut msg = json!({"role": "assistant", "content": text.join("")});
        if !calls.is_empty() {
            msg["tool_calls"] = Value::Array(calls);
        }
        out.push(msg);
    } else if !parts.is_empty() {
        out.push(json!({"role": "user", "content": parts}));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_messages_request_becomes_a_chat_body() {
        let raw = json!({"model": "claude", "max_tokens": 20, "system": "Be brief.",
            "stop_sequences": ["END"], "stream": true, "metadata": {"user_id": "u"},
            "tools": [{"name": "f", "input_schema": {"type": "object"}}],
            "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
            "messages": [
                {"role": "user", "content": "hi"},
                {"role": "assistant", "content": [{"type": "tool_use", "id": "t1",
                    "name": "f", "input": {"a": 1}}]},
                {"role": "user", "content": [
                    {"type": "tool_result", "tool_use_id": "t1", "content": "42"},
                    {"type": "text", "text": "and?"}]}]});
        let (b, stream) = translate(raw.to_string().as_bytes()).unwrap();
        let v: Value = serde_json::from_slice(&b).unwrap();
        assert!(stream);
        assert_eq!(v["stream_options"]["include_usage"], true);
        assert_eq!(v["stop"], json!(["END"]));
        assert_eq!(v["user"], "u");
        assert_eq!(v["tool_choice"], "required");
        assert_eq!(v["parallel_tool_calls"], false);
        assert_eq!(v["tools"][0]["function"]["parameters"]["type"], "object");
        let m = v["messages"].as_array().unwrap();
        assert_eq!(m[0], json!({"role": "system", "content": "Be brief."}));
        assert_eq!(m[2]["tool_calls"][0]["function"]["arguments"], r#"{"a":1}"#);
        assert_eq!(
            m[3],
            json!({"role": "tool", "tool_call_id": "t1", "content": "42"})
        );
        assert_eq!(m[4]["content"][0]["text"], "and?");
        let bad = json!({"model": "m", "max_tokens": 5, "top_k": 3, "messages": []});
        match translate(bad.to_string().as_bytes()) {
            Err(ApiError::InvalidRequest { param, .. }) => {
                assert_eq!(param.as_deref(), Some("top_k"))
            }
            other => panic!("{other:?}"),
        }
    }
}
