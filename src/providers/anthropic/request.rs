//! OpenAI chat request → Anthropic Messages request.
//!
//! Every top-level field of the (shaped) chat body is either translated, accepted because its
//! value asks for nothing (`n: 1`, `logprobs: false`, a `null`), or refused with a 400 naming it:
//! nothing is dropped silently. docs/PROVIDERS.md lists the same table for users.
//!
//! | OpenAI | Anthropic |
//! |---|---|
//! | `system` / `developer` messages | `system` (text blocks, in order) |
//! | `user` / `assistant` text and `image_url` parts | `text` / `image` blocks (`data:` → base64, http(s) → url) |
//! | assistant `tool_calls` | `tool_use` blocks (arguments parsed as JSON) |
//! | `tool` messages | `tool_result` blocks in a user turn |
//! | `max_tokens` / `max_completion_tokens` | `max_tokens` (else [`DEFAULT_MAX_TOKENS`]) |
//! | `temperature`, `top_p`, `stream` | the same |
//! | `stop` | `stop_sequences` |
//! | `tools` (functions), `tool_choice`, `parallel_tool_calls` | `tools`, `tool_choice` (`disable_parallel_tool_use`) |
//! | `user` | `metadata.user_id` |
//! | `stream_options` | read by the stream translator (the usage chunk), not sent |

use serde_json::{json, Map, Value};

use crate::error::ApiError;
use crate::openai::Body;

/// `max_tokens` when the request sets neither `max_tokens` nor `max_completion_tokens`
/// (Anthropic requires one).
pub const DEFAULT_MAX_TOKENS: u64 = 4096;

/// The Messages request for a chat body.
pub fn translate(body: &Body) -> Result<Vec<u8>, ApiError> {
    let mut out = Map::new();
    let mut max_tokens = None;
    let mut parallel = None;
    let mut tool_choice = None;
    for (key, raw) in body.fields() {
        let key = std::str::from_utf8(key).map_err(|_| refuse("a field name", ""))?;
        let value: Value = serde_json::from_slice(raw).map_err(|_| ApiError::Internal)?;
        if value.is_null() {
            continue;
        }
        match key {
            "model" => {
                out.insert("model".into(), value);
            }
            "messages" => {
                let (system, messages) = messages(&value)?;
                if !system.is_empty() {
                    out.insert("system".into(), Value::Array(system));
                }
                out.insert("messages".into(), Value::Array(messages));
            }
            "max_tokens" | "max_completion_tokens" => {
                let n = value.as_u64().filter(|n| *n > 0).ok_or_else(|| {
                    ApiError::invalid(format!("'{key}' must be a positive integer"), Some(key))
                })?;
                // The smaller of the two when both are set: neither limit is exceeded.
                max_tokens = Some(max_tokens.map_or(n, |m: u64| m.min(n)));
            }
            "temperature" | "top_p" => {
                if !value.is_number() {
                    return Err(ApiError::invalid(
                        format!("'{key}' must be a number"),
                        Some(key),
                    ));
                }
                out.insert(key.into(), value);
            }
            "stream" => {
                out.insert("stream".into(), Value::Bool(value.as_bool() == Some(true)));
            }
            // Read by the stream translator (the closing usage chunk), not sent.
            "stream_options" => {}
            "stop" => {
                let stops = match value {
                    Value::String(s) => vec![Value::String(s)],
                    Value::Array(a) if a.iter().all(Value::is_string) => a,
                    _ => {
                        return Err(refuse(
                            "'stop' other than a string or a list of strings",
                            "stop",
                        ))
                    }
                };
                if !stops.is_empty() {
                    out.insert("stop_sequences".into(), Value::Array(stops));
                }
            }
            "tools" => {
                let tools = tools(&value)?;
                if !tools.is_empty() {
                    out.insert("tools".into(), Value::Array(tools));
                }
            }
            "tool_choice" => tool_choice = Some(choice(&value)?),
            "parallel_tool_calls" => parallel = value.as_bool(),
            "user" => {
                let user = value
                    .as_str()
                    .ok_or_else(|| ApiError::invalid("'user' must be a string", Some("user")))?;
                out.insert("metadata".into(), json!({"user_id": user}));
            }
            // Values that ask for nothing Anthropic would do differently.
            "n" if value.as_u64() == Some(1) => {}
            "logprobs" | "store" if value.as_bool() == Some(false) => {}
            "presence_penalty" | "frequency_penalty" if value.as_f64() == Some(0.0) => {}
            "response_format" if value.get("type").and_then(Value::as_str) == Some("text") => {}
            other => return Err(refuse(&format!("'{other}'"), other)),
        }
    }
    if !out.contains_key("messages") {
        return Err(ApiError::invalid(
            "'messages' is required",
            Some("messages"),
        ));
    }
    out.insert(
        "max_tokens".into(),
        Value::from(max_tokens.unwrap_or(DEFAULT_MAX_TOKENS)),
    );
    if tool_choice.is_some() || parallel == Some(false) {
        let mut c = tool_choice.unwrap_or_else(|| json!({"type": "auto"}));
        // `none` takes no flag; for the others a `false` forbids parallel calls.
        if parallel == Some(false) && c.get("type").and_then(Value::as_str) != Some("none") {
            c["disable_parallel_tool_use"] = Value::Bool(true);
        }
        out.insert("tool_choice".into(), c);
    }
    let bytes = serde_json::to_vec(&Value::Object(out)).map_err(|_| ApiError::Internal)?;
    Ok(bytes)
}

/// The 400 for something the Messages API has no place for.
fn refuse(what: &str, param: &str) -> ApiError {
    ApiError::invalid(
        format!("{what} cannot be translated for an Anthropic upstream"),
        (!param.is_empty()).then_some(param),
    )
}

/// The `system` blocks and the turns, consecutive turns of one role merged (tool results
/// following each other form one user turn).
fn messages(value: &Value) -> Result<(Vec<Value>, Vec<Value>), ApiError> {
    let list = value
        .as_array()
        .ok_or_else(|| ApiError::invalid("'messages' must be a list", Some("messages")))?;
    let mut system = Vec::new();
    let mut turns: Vec<(&'static str, Vec<Value>)> = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let at = format!("messages[{i}]");
        let m = m
            .as_object()
            .ok_or_else(|| ApiError::invalid(format!("{at} must be an object"), Some(&at)))?;
        for k in m.keys() {
            if !matches!(
                k.as_str(),
                "role" | "content" | "tool_calls" | "tool_call_id"
            ) {
                let param = format!("{at}.{k}");
                if !m.get(k).is_some_and(Value::is_null) {
                    return Err(refuse(&format!("'{param}'"), &param));
                }
            }
        }
        let role = m.get("role").and_then(Value::as_str).unwrap_or_default();
        let content = m.get("content").filter(|c| !c.is_null());
        let (role, blocks) = match role {
            "system" | "developer" => {
                system.extend(text_blocks(content, &at)?);
                continue;
            }
            "user" => ("user", blocks(content, &at)?),
            "assistant" => {
                let mut b = blocks(content, &at)?;
                b.extend(tool_uses(m.get("tool_calls"), &at)?);
                ("assistant", b)
            }
            "tool" => {
                let id = m
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        let p = format!("{at}.tool_call_id");
                        ApiError::invalid(format!("{p} is required"), Some(&p))
                    })?;
                let result = text_blocks(content, &at)?;
                (
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": id, "content": result})],
                )
            }
            other => {
                let p = format!("{at}.role");
                return Err(refuse(&format!("role '{other}'"), &p));
            }
        };
        if blocks.is_empty() {
            continue;
        }
        match turns.last_mut() {
            Some((r, b)) if *r == role => b.extend(blocks),
            _ => turns.push((role, blocks)),
        }
    }
    let turns = turns
        .into_iter()
        .map(|(role, content)| json!({"role": role, "content": content}))
        .collect();
    Ok((system, turns))
}

/// Content that may only be text (system prompts, tool results): text blocks.
fn text_blocks(content: Option<&Value>, at: &str) -> Result<Vec<Value>, ApiError> {
    let all = blocks(content, at)?;
    if let Some(i) = all.iter().position(|b| b["type"] != "text") {
        let p = format!("{at}.content[{i}]");
        return Err(refuse(&format!("'{p}' (only text is allowed here)"), &p));
    }
    Ok(all)
}

/// A message's content as Anthropic blocks: a string, or text and image parts. Empty text is
/// left out (Anthropic refuses empty text blocks).
fn blocks(content: Option<&Value>, at: &str) -> Result<Vec<Value>, ApiError> {
    let text = |s: &str| (!s.is_empty()).then(|| json!({"type": "text", "text": s}));
    match content {
        None => Ok(Vec::new()),
        Some(Value::String(s)) => Ok(text(s).into_iter().collect()),
        Some(Value::Array(parts)) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let p = format!("{at}.content[{j}]");
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let t = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                            ApiError::invalid(format!("{p}.text must be a string"), Some(&p))
                        })?;
                        out.extend(text(t));
                    }
                    Some("image_url") => out.push(image(part, &p)?),
                    other => {
                        let what = format!("'{p}' of type '{}'", other.unwrap_or("?"));
                        return Err(refuse(&what, &format!("{p}.type")));
                    }
                }
            }
            Ok(out)
        }
        Some(_) => {
            let p = format!("{at}.content");
            Err(ApiError::invalid(
                format!("{p} must be a string or a list"),
                Some(&p),
            ))
        }
    }
}

/// An `image_url` part: a `data:` URL becomes a base64 source, an http(s) URL a url source.
fn image(part: &Value, at: &str) -> Result<Value, ApiError> {
    let url = part
        .pointer("/image_url/url")
        .and_then(Value::as_str)
        .ok_or_else(|| {
            let p = format!("{at}.image_url.url");
            ApiError::invalid(format!("{p} must be a string"), Some(&p))
        })?;
    if let Some(rest) = url.strip_prefix("data:") {
        let bad = || {
            let p = format!("{at}.image_url.url");
            ApiError::invalid(
                format!("{p}: a data URL must be `data:<media type>;base64,<data>`"),
                Some(&p),
            )
        };
        let (meta, data) = rest.split_once(',').ok_or_else(bad)?;
        let media = meta.strip_suffix(";base64").ok_or_else(bad)?;
        return Ok(json!({"type": "image", "source":
            {"type": "base64", "media_type": media, "data": data}}));
    }
    if url.starts_with("https://") || url.starts_with("http://") {
        return Ok(json!({"type": "image", "source": {"type": "url", "url": url}}));
    }
    let p = format!("{at}.image_url.url");
    Err(refuse(&format!("'{p}' (not a data: or http(s) URL)"), &p))
}

/// Assistant `tool_calls` as `tool_use` blocks.
fn tool_uses(calls: Option<&Value>, at: &str) -> Result<Vec<Value>, ApiError> {
    let Some(calls) = calls.filter(|c| !c.is_null()) else {
        return Ok(Vec::new());
    };
    let p = format!("{at}.tool_calls");
    let calls = calls
        .as_array()
        .ok_or_else(|| ApiError::invalid(format!("{p} must be a list"), Some(&p)))?;
    let mut out = Vec::with_capacity(calls.len());
    for (j, c) in calls.iter().enumerate() {
        let p = format!("{at}.tool_calls[{j}]");
        if c.get("type").and_then(Value::as_str).unwrap_or("function") != "function" {
            return Err(refuse(
                &format!("'{p}' (not a function call)"),
                &format!("{p}.type"),
            ));
        }
        let field = |name: &str| {
            c.pointer(name).and_then(Value::as_str).ok_or_else(|| {
                let q = format!("{p}{}", name.replace('/', "."));
                ApiError::invalid(format!("{q} must be a string"), Some(&q))
            })
        };
        let (id, name, args) = (
            field("/id")?,
            field("/function/name")?,
            field("/function/arguments")?,
        );
        let input: Value = if args.trim().is_empty() {
            json!({})
        } else {
            serde_json::from_str(args).map_err(|_| {
                let q = format!("{p}.function.arguments");
                ApiError::invalid(format!("{q} must be a JSON object"), Some(&q))
            })?
        };
        out.push(json!({"type": "tool_use", "id": id, "name": name, "input": input}));
    }
    Ok(out)
}

/// OpenAI `tools` (functions) as Anthropic tools.
fn tools(value: &Value) -> Result<Vec<Value>, ApiError> {
    let list = value
        .as_array()
        .ok_or_else(|| ApiError::invalid("'tools' must be a list", Some("tools")))?;
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let p = format!("tools[{i}]");
        if t.get("type").and_then(Value::as_str) != Some("function") {
            return Err(refuse(
                &format!("'{p}' (not a function tool)"),
                &format!("{p}.type"),
            ));
        }
        let f = t.get("function").unwrap_or(&Value::Null);
        let name = f.get("name").and_then(Value::as_str).ok_or_else(|| {
            let q = format!("{p}.function.name");
            ApiError::invalid(format!("{q} must be a string"), Some(&q))
        })?;
        let schema = f
            .get("parameters")
            .filter(|s| !s.is_null())
            .cloned()
            .unwrap_or_else(|| json!({"type": "object", "properties": {}}));
        let mut tool = json!({"name": name, "input_schema": schema});
        if let Some(d) = f.get("description").and_then(Value::as_str) {
            tool["description"] = Value::from(d);
        }
        if f.get("strict").is_some_and(|s| s.as_bool() == Some(true)) {
            let q = format!("{p}.function.strict");
            return Err(refuse(&format!("'{q}'"), &q));
        }
        out.push(tool);
    }
    Ok(out)
}

/// OpenAI `tool_choice` as Anthropic's.
fn choice(value: &Value) -> Result<Value, ApiError> {
    match value {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(json!({"type": "auto"})),
            "none" => Ok(json!({"type": "none"})),
            "required" => Ok(json!({"type": "any"})),
            other => Err(refuse(&format!("tool_choice '{other}'"), "tool_choice")),
        },
        Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
            let name = value
                .pointer("/function/name")
                .and_then(Value::as_str)
                .ok_or_else(|| {
                    ApiError::invalid(
                        "tool_choice.function.name must be a string",
                        Some("tool_choice.function.name"),
                    )
                })?;
            Ok(json!({"type": "tool", "name": name}))
        }
        _ => Err(refuse("this 'tool_choice'", "tool_choice")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tr(v: Value) -> Result<Value, ApiError> {
        let body = Body::parse(bytes::Bytes::from(v.to_string())).unwrap();
        translate(&body).map(|b| serde_json::from_slice(&b).unwrap())
    }

    fn param(e: ApiError) -> Option<String> {
        match e {
            ApiError::InvalidRequest { param, .. } => param,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_conversation_with_tools_translates_whole() {
        let got = tr(json!({
            "model": "claude", "max_completion_tokens": 50, "temperature": 0.2, "top_p": 0.9,
            "stop": "END", "stream": true, "stream_options": {"include_usage": true},
            "user": "u1", "parallel_tool_calls": false, "tool_choice": "required",
            "tools": [{"type": "function", "function": {"name": "get_weather",
                "description": "Weather", "parameters": {"type": "object"}}}],
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "developer", "content": [{"type": "text", "text": "No emoji."}]},
                {"role": "user", "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "data:image/png;base64,AAAA"}},
                    {"type": "image_url", "image_url": {"url": "https://x.test/a.jpg"}}]},
                {"role": "assistant", "content": "", "tool_calls": [{"id": "call_1",
                    "type": "function", "function": {"name": "get_weather",
                    "arguments": "{\"city\":\"Paris\"}"}}]},
                {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
                {"role": "user", "content": "thanks"},
            ]
        }))
        .unwrap();
        assert_eq!(
            got,
            json!({
                "model": "claude", "max_tokens": 50, "temperature": 0.2, "top_p": 0.9,
                "stop_sequences": ["END"], "stream": true, "metadata": {"user_id": "u1"},
                "tool_choice": {"type": "any", "disable_parallel_tool_use": true},
                "tools": [{"name": "get_weather", "description": "Weather",
                    "input_schema": {"type": "object"}}],
                "system": [{"type": "text", "text": "Be brief."},
                    {"type": "text", "text": "No emoji."}],
                "messages": [
                    {"role": "user", "content": [
                        {"type": "text", "text": "What is this?"},
                        {"type": "image", "source": {"type": "base64",
                            "media_type": "image/png", "data": "AAAA"}},
                        {"type": "image", "source": {"type": "url",
                            "url": "https://x.test/a.jpg"}}]},
                    {"role": "assistant", "content": [{"type": "tool_use", "id": "call_1",
                        "name": "get_weather", "input": {"city": "Paris"}}]},
                    {"role": "user", "content": [
                        {"type": "tool_result", "tool_use_id": "call_1",
                            "content": [{"type": "text", "text": "sunny"}]},
                        {"type": "text", "text": "thanks"}]},
                ]
            })
        );
    }

    #[test]
    fn max_tokens_has_a_default() {
        let got = tr(json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]}));
        assert_eq!(got.unwrap()["max_tokens"], DEFAULT_MAX_TOKENS);
    }

    #[test]
    fn what_cannot_be_translated_is_a_400_naming_it() {
        let base = || json!({"model": "m", "messages": [{"role": "user", "content": "hi"}]});
        let refused = |field: &str, v: Value| {
            let mut b = base();
            b[field] = v;
            param(tr(b).unwrap_err())
        };
        assert_eq!(refused("seed", json!(3)).as_deref(), Some("seed"));
        assert_eq!(refused("n", json!(2)).as_deref(), Some("n"));
        assert_eq!(
            refused("logprobs", json!(true)).as_deref(),
            Some("logprobs")
        );
        let fmt = json!({"type": "json_object"});
        assert_eq!(
            refused("response_format", fmt).as_deref(),
            Some("response_format")
        );
        let audio = json!([{"role": "user", "content": [{"type": "input_audio"}]}]);
        assert_eq!(
            refused("messages", audio).as_deref(),
            Some("messages[0].content[0].type")
        );
        let named = json!([{"role": "user", "content": "x", "name": "bob"}]);
        assert_eq!(
            refused("messages", named).as_deref(),
            Some("messages[0].name")
        );
        let web = json!([{"type": "web_search"}]);
        assert_eq!(refused("tools", web).as_deref(), Some("tools[0].type"));
        // Values that ask for nothing pass.
        let mut b = base();
        b["n"] = json!(1);
        b["logprobs"] = json!(false);
        b["seed"] = Value::Null;
        assert!(tr(b).is_ok());
    }
}
