//! OpenAI chat request → ERNIE (wenxinworkshop v1) chat request.
//!
//! Every top-level field of the OpenAI body is either translated, known to be harmless at its
//! default (`n: 1`, `logprobs: false`, `null` anywhere), or refused with a 400 naming it: nothing
//! is dropped silently. The table lives in docs/PROVIDERS.md (`## ernie`); the tests below hold
//! this module to it. Pure: no I/O, no state.

use serde_json::{Map, Value};

use crate::error::ApiError;

/// What the provider needs besides the ERNIE body: whether the client's stream asked for the
/// usage chunk (the gateway always asks; the relay strips it when the client did not).
#[derive(Debug, Clone, PartialEq)]
pub struct Translated {
    pub body: Value,
    pub stream: bool,
    pub include_usage: bool,
    /// The model name the answer reports (the body's `model`).
    pub model: String,
}

fn refuse(field: &str, why: &str) -> ApiError {
    ApiError::invalid(
        format!("'{field}' cannot be translated for the ernie provider: {why}"),
        Some(field),
    )
}

/// The ERNIE body for an OpenAI chat body (its top-level fields as JSON values).
pub fn translate(fields: &Map<String, Value>) -> Result<Translated, ApiError> {
    let mut out = Map::new();
    let mut stream = false;
    let mut include_usage = false;
    let mut model = String::new();
    let mut penalty: Option<f64> = None;
    for (key, value) in fields {
        if value.is_null() {
            continue;
        }
        let k = key.as_str();
        match k {
            // In the URL (the upstream's endpoint name), not the body.
            "model" => model = value.as_str().unwrap_or_default().to_owned(),
            "messages" => {
                let (system, messages) = messages(value)?;
                if let Some(s) = system {
                    out.insert("system".into(), Value::String(s));
                }
                out.insert("messages".into(), Value::Array(messages));
            }
            "stream" => {
                stream = value
                    .as_bool()
                    .ok_or_else(|| refuse(k, "must be a boolean"))?;
                out.insert("stream".into(), Value::Bool(stream));
            }
            "stream_options" => {
                include_usage = value
                    .get("include_usage")
                    .and_then(Value::as_bool)
                    .unwrap_or(false);
            }
            "temperature" => {
                let t = number(k, value)?;
                // ERNIE takes (0, 1]: 0 (greedy) becomes its smallest value; above 1 has no
                // equivalent.
                if !(0.0..=1.0).contains(&t) {
                    return Err(refuse(k, "ERNIE takes a temperature between 0 and 1"));
                }
                out.insert("temperature".into(), Value::from(t.max(0.01)));
            }
            "top_p" => {
                let p = number(k, value)?;
                if !(0.0..=1.0).contains(&p) {
                    return Err(refuse(k, "must be between 0 and 1"));
                }
                out.insert("top_p".into(), Value::from(p));
            }
            "presence_penalty" | "frequency_penalty" => {
                let p = number(k, value)?;
                if !(0.0..=2.0).contains(&p) {
                    return Err(refuse(
                        k,
                        "ERNIE's penalty_score only discourages repetition (0 to 2 here)",
                    ));
                }
                penalty = Some(penalty.unwrap_or(0.0).max(p));
            }
            "stop" => {
                let stop = match value {
                    Value::String(s) => vec![Value::String(s.clone())],
                    Value::Array(a) if a.iter().all(Value::is_string) && a.len() <= 4 => a.clone(),
                    _ => return Err(refuse(k, "must be a string or up to 4 strings")),
                };
                out.insert("stop".into(), Value::Array(stop));
            }
            "max_tokens" | "max_completion_tokens" => {
                let n = value
                    .as_u64()
                    .ok_or_else(|| refuse(k, "must be a positive integer"))?;
                out.insert("max_output_tokens".into(), Value::from(n));
            }
            "user" => {
                let u = value
                    .as_str()
                    .ok_or_else(|| refuse(k, "must be a string"))?;
                out.insert("user_id".into(), Value::from(u));
            }
            "response_format" => match value.get("type").and_then(Value::as_str) {
                Some("text") => {}
                Some("json_object") => {
                    out.insert("response_format".into(), Value::from("json_object"));
                }
                _ => return Err(refuse(k, "only text and json_object are supported")),
            },
            // Defaults that ask for nothing ERNIE would not do anyway.
            "n" if value.as_u64() == Some(1) => {}
            "logprobs" if value.as_bool() == Some(false) => {}
            "n" => return Err(refuse(k, "ERNIE answers one choice")),
            "tools" | "tool_choice" | "functions" | "function_call" | "parallel_tool_calls" => {
                return Err(refuse(
                    k,
                    "tool calls are not translated (see docs/PROVIDERS.md)",
                ))
            }
            _ => return Err(refuse(k, "ERNIE has no such parameter")),
        }
    }
    if let Some(p) = penalty {
        // OpenAI's additive penalties (0..2) onto ERNIE's multiplicative 1.0..2.0.
        out.insert("penalty_score".into(), Value::from(1.0 + p / 2.0));
    }
    if !out.contains_key("messages") {
        return Err(ApiError::invalid(
            "'messages' is required",
            Some("messages"),
        ));
    }
    Ok(Translated {
        body: Value::Object(out),
        stream,
        include_usage,
        model,
    })
}

fn number(field: &str, v: &Value) -> Result<f64, ApiError> {
    v.as_f64().ok_or_else(|| refuse(field, "must be a number"))
}

/// The leading system (and developer) messages joined into ERNIE's `system`, and the user and
/// assistant turns (consecutive turns of one role joined, as ERNIE wants them alternating).
fn messages(v: &Value) -> Result<(Option<String>, Vec<Value>), ApiError> {
    let Some(list) = v.as_array() else {
        return Err(refuse("messages", "must be an array"));
    };
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<(String, String)> = Vec::new();
    for (i, m) in list.iter().enumerate() {
        let at = |f: &str| format!("messages[{i}].{f}");
        let Some(obj) = m.as_object() else {
            return Err(refuse(&format!("messages[{i}]"), "must be an object"));
        };
        for (f, fv) in obj {
            if !matches!(f.as_str(), "role" | "content") && !fv.is_null() {
                return Err(refuse(&at(f), "ERNIE messages carry only role and content"));
            }
        }
        let role = obj.get("role").and_then(Value::as_str).unwrap_or_default();
        let text = content(obj.get("content"), &at("content"))?;
        match role {
            "system" | "developer" if turns.is_empty() => system.push(text),
            "system" | "developer" => {
                return Err(refuse(
                    &at("role"),
                    "ERNIE takes system text only before the conversation starts",
                ))
            }
            "user" | "assistant" => match turns.last_mut() {
                Some((r, t)) if r == role => {
                    t.push('\n');
                    t.push_str(&text);
                }
                _ => turns.push((role.to_owned(), text)),
            },
            _ => return Err(refuse(&at("role"), "ERNIE takes user and assistant turns")),
        }
    }
    let messages = turns
        .into_iter()
        .map(|(role, content)| serde_json::json!({"role": role, "content": content}))
        .collect();
    let system = (!system.is_empty()).then(|| system.join("\n\n"));
    Ok((system, messages))
}

/// A message's text: a string, or an array of text parts (any other part is refused).
fn content(v: Option<&Value>, field: &str) -> Result<String, ApiError> {
    match v {
        None | Some(Value::Null) => Ok(String::new()),
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut out = String::new();
            for p in parts {
                match (
                    p.get("type").and_then(Value::as_str),
                    p.get("text").and_then(Value::as_str),
                ) {
                    (Some("text"), Some(t)) => out.push_str(t),
                    _ => return Err(refuse(field, "ERNIE v1 takes text only")),
                }
            }
            Ok(out)
        }
        Some(_) => Err(refuse(field, "must be a string or text parts")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn t(v: Value) -> Result<Translated, ApiError> {
        translate(v.as_object().unwrap())
    }

    fn param(e: ApiError) -> Option<String> {
        match e {
            ApiError::InvalidRequest { param, .. } => param,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn chat_fields_are_translated() {
        let out = t(json!({"model": "ernie", "stream": true,
            "stream_options": {"include_usage": true},
            "messages": [{"role": "system", "content": "be brief"},
                {"role": "system", "content": "be kind"},
                {"role": "user", "content": "a"}, {"role": "user", "content": [{"type":"text","text":"b"}]},
                {"role": "assistant", "content": "c"}, {"role": "user", "content": "d"}],
            "temperature": 0, "top_p": 0.5, "presence_penalty": 0.4, "frequency_penalty": 1.0,
            "stop": "END", "max_tokens": 20, "user": "u-1", "n": 1, "logprobs": false,
            "seed": null}))
        .unwrap();
        assert!(out.stream && out.include_usage);
        assert_eq!(out.model, "ernie");
        assert_eq!(
            out.body,
            json!({"system": "be brief\n\nbe kind", "stream": true,
                "messages": [{"role":"user","content":"a\nb"},{"role":"assistant","content":"c"},
                    {"role":"user","content":"d"}],
                "temperature": 0.01, "top_p": 0.5, "penalty_score": 1.5, "stop": ["END"],
                "max_output_tokens": 20, "user_id": "u-1"})
        );
    }

    #[test]
    fn what_cannot_be_translated_is_refused_by_name() {
        let base = || json!({"model": "m", "messages": [{"role": "user", "content": "x"}]});
        let with = |k: &str, v: Value| {
            let mut b = base();
            b[k] = v;
            param(t(b).unwrap_err())
        };
        assert_eq!(with("tools", json!([])).as_deref(), Some("tools"));
        assert_eq!(with("n", json!(2)).as_deref(), Some("n"));
        assert_eq!(
            with("temperature", json!(1.5)).as_deref(),
            Some("temperature")
        );
        assert_eq!(
            with("presence_penalty", json!(-1)).as_deref(),
            Some("presence_penalty")
        );
        assert_eq!(
            with("logit_bias", json!({"1": 2})).as_deref(),
            Some("logit_bias")
        );
        let b = json!({"messages": [{"role": "user", "content": "x"},
            {"role": "tool", "content": "y", "tool_call_id": "1"}]});
        assert_eq!(
            param(t(b).unwrap_err()).as_deref(),
            Some("messages[1].tool_call_id")
        );
        let b = json!({"messages": [{"role": "user", "content": [{"type": "image_url",
            "image_url": {"url": "x"}}]}]});
        assert_eq!(
            param(t(b).unwrap_err()).as_deref(),
            Some("messages[0].content")
        );
        let b = json!({"messages": [{"role": "user", "content": "x"},
            {"role": "system", "content": "late"}]});
        assert_eq!(
            param(t(b).unwrap_err()).as_deref(),
            Some("messages[1].role")
        );
    }
}
