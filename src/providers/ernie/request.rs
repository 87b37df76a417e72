//! OpenAI chat request → ERNIE (wenxinworkshop v1) chat request.
//!
//! Every top-level field of the OpenAI body is either translated, known to be harmless at its
//! default (`n: 1`, `logprobs: false`, `parallel_tool_calls`, `null` anywhere), or refused with a
//! 400 naming it: nothing is dropped silently. Tools and functions are read by [`super::tools`].
//! The table lives in docs/PROVIDERS.md (`## ernie`); the tests below hold this module to it.
//! Pure: no I/O, no state.

use serde_json::{Map, Value};

use super::refuse;
use super::tools::{self, Calls, Made, Offer};
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
    /// How a function call in the answer is shaped (`tool_calls`, or legacy `function_call`).
    pub calls: Calls,
}

/// The ERNIE body for an OpenAI chat body (its top-level fields as JSON values).
pub fn translate(fields: &Map<String, Value>) -> Result<Translated, ApiError> {
    let mut out = Map::new();
    let mut stream = false;
    let mut include_usage = false;
    let mut model = String::new();
    let mut penalty: Option<f64> = None;
    let mut offer = Offer::default();
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
            "tools" => offer.tools(value)?,
            "functions" => offer.functions(value)?,
            "tool_choice" => offer.tool_choice(value)?,
            "function_call" => offer.function_call(value)?,
            // ERNIE makes one call per turn at most: `true` allows several, never requires them.
            "parallel_tool_calls" if value.is_boolean() => {}
            "parallel_tool_calls" => return Err(refuse(k, "must be a boolean")),
            _ => return Err(refuse(k, "ERNIE has no such parameter")),
        }
    }
    let calls = offer.finish(&mut out)?;
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
        calls,
    })
}

fn number(field: &str, v: &Value) -> Result<f64, ApiError> {
    v.as_f64().ok_or_else(|| refuse(field, "must be a number"))
}

/// One ERNIE turn being built.
struct Turn {
    role: &'static str,
    text: String,
    /// The function a `function` turn answers.
    name: Option<String>,
    /// An assistant turn's `function_call`.
    call: Option<Value>,
}

impl Turn {
    fn into_value(self) -> Value {
        let mut m = Map::new();
        m.insert("role".into(), Value::from(self.role));
        m.insert("content".into(), Value::String(self.text));
        if let Some(n) = self.name {
            m.insert("name".into(), Value::String(n));
        }
        if let Some(c) = self.call {
            m.insert("function_call".into(), c);
        }
        Value::Object(m)
    }
}

/// The fields a message of `role` may carry besides `role` and `content`.
fn allowed(role: &str, field: &str) -> bool {
    matches!(
        (role, field),
        (_, "role" | "content")
            | ("assistant", "tool_calls" | "function_call")
            | ("tool", "tool_call_id")
            | ("function", "name")
    )
}

/// The leading system (and developer) messages joined into ERNIE's `system`, and the user,
/// assistant and function turns (consecutive user or assistant turns joined, as ERNIE wants
/// them alternating). A `tool` message becomes a `function` turn named after the call it
/// answers.
fn messages(v: &Value) -> Result<(Option<String>, Vec<Value>), ApiError> {
    let Some(list) = v.as_array() else {
        return Err(refuse("messages", "must be an array"));
    };
    let mut system: Vec<String> = Vec::new();
    let mut turns: Vec<Turn> = Vec::new();
    let mut made = Made::default();
    for (i, m) in list.iter().enumerate() {
        let at = |f: &str| format!("messages[{i}].{f}");
        let Some(obj) = m.as_object() else {
            return Err(refuse(&format!("messages[{i}]"), "must be an object"));
        };
        let role = obj.get("role").and_then(Value::as_str).unwrap_or_default();
        for (f, fv) in obj {
            if !allowed(role, f) && !fv.is_null() {
                return Err(refuse(&at(f), "ERNIE has no such message field"));
            }
        }
        let text = content(obj.get("content"), &at("content"))?;
        match role {
            "system" | "developer" if turns.is_empty() => system.push(text),
            "system" | "developer" => {
                return Err(refuse(
                    &at("role"),
                    "ERNIE takes system text only before the conversation starts",
                ))
            }
            "user" | "assistant" => {
                let call = made.assistant(obj, &at)?;
                let role = if role == "user" { "user" } else { "assistant" };
                match turns.last_mut() {
                    Some(t) if t.role == role => {
                        if call.is_some() && t.call.is_some() {
                            return Err(refuse(
                                &at("tool_calls"),
                                "ERNIE takes one function call per assistant turn",
                            ));
                        }
                        if !text.is_empty() {
                            if !t.text.is_empty() {
                                t.text.push('\n');
                            }
                            t.text.push_str(&text);
                        }
                        t.call = t.call.take().or(call);
                    }
                    _ => turns.push(Turn {
                        role,
                        text,
                        name: None,
                        call,
                    }),
                }
            }
            "tool" => {
                let name = made.answer(obj, &at)?;
                turns.push(Turn {
                    role: "function",
                    text: tools::result_content(&text),
                    name: Some(name),
                    call: None,
                });
            }
            "function" => {
                let Some(name) = obj.get("name").and_then(Value::as_str) else {
                    return Err(refuse(&at("name"), "a function message names its function"));
                };
                turns.push(Turn {
                    role: "function",
                    text: tools::result_content(&text),
                    name: Some(name.to_owned()),
                    call: None,
                });
            }
            _ => {
                return Err(refuse(
                    &at("role"),
                    "ERNIE takes user, assistant and tool turns",
                ))
            }
        }
    }
    let messages = turns.into_iter().map(Turn::into_value).collect();
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
        assert_eq!(with("tools", json!({})).as_deref(), Some("tools"));
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

    fn weather() -> Value {
        json!({"type": "function", "function": {"name": "weather", "description": "the weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}}})
    }

    fn user(text: &str) -> Value {
        json!({"role": "user", "content": text})
    }

    #[test]
    fn tools_and_functions_become_ernie_functions() {
        let ernie_weather = json!({"name": "weather", "description": "the weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}});
        let out = t(json!({"messages": [user("x")], "tools": [weather()],
            "parallel_tool_calls": false}))
        .unwrap();
        assert_eq!(out.body["functions"], json!([ernie_weather]));
        assert_eq!(out.calls, Calls::Tools);
        assert!(out.body.get("tool_choice").is_none());
        // Legacy functions: the same list, the answer in the legacy shape; defaults filled in.
        let out = t(json!({"messages": [user("x")], "functions": [{"name": "now"}]})).unwrap();
        assert_eq!(
            out.body["functions"],
            json!([{"name": "now", "description": "", "parameters": {"type": "object",
                "properties": {}}}])
        );
        assert_eq!(out.calls, Calls::Legacy);
        // No tools at all: the answer shape is tool_calls and nothing is sent.
        let out = t(json!({"messages": [user("x")], "tools": []})).unwrap();
        assert!(out.body.get("functions").is_none());
    }

    #[test]
    fn tool_choice_maps_to_ernie_or_is_refused() {
        let with = |choice: Value| {
            t(json!({"messages": [user("x")], "tools": [weather()], "tool_choice": choice}))
        };
        // auto: ERNIE's default, nothing sent.
        let out = with(json!("auto")).unwrap();
        assert!(out.body.get("tool_choice").is_none() && out.body.get("functions").is_some());
        // none: nothing offered to call.
        let out = with(json!("none")).unwrap();
        assert!(out.body.get("functions").is_none() && out.body.get("tool_choice").is_none());
        // A named function: ERNIE's tool_choice, the same shape.
        let named = json!({"type": "function", "function": {"name": "weather"}});
        assert_eq!(with(named.clone()).unwrap().body["tool_choice"], named);
        // Legacy function_call naming one: the same tool_choice.
        let out = t(
            json!({"messages": [user("x")], "functions": [{"name": "weather"}],
            "function_call": {"name": "weather"}}),
        )
        .unwrap();
        assert_eq!(out.body["tool_choice"], named);
        for refused in [
            json!("required"),
            json!({"type": "function", "function": {"name": "other"}}),
            json!({"type": "allowed_tools"}),
        ] {
            assert_eq!(
                param(with(refused).unwrap_err()).as_deref(),
                Some("tool_choice")
            );
        }
        let no_tools = json!({"messages": [user("x")], "tool_choice": named});
        assert_eq!(
            param(t(no_tools).unwrap_err()).as_deref(),
            Some("tool_choice")
        );
        let both = json!({"messages": [user("x")], "tools": [weather()],
            "functions": [{"name": "f"}]});
        assert_eq!(param(t(both).unwrap_err()).as_deref(), Some("functions"));
    }

    #[test]
    fn a_tool_loop_becomes_function_turns_named_after_the_call() {
        let call = json!({"id": "call_1", "type": "function",
            "function": {"name": "weather", "arguments": "{\"city\":\"Paris\"}"}});
        let out = t(json!({"tools": [weather()], "messages": [user("weather?"),
            {"role": "assistant", "content": null, "tool_calls": [call]},
            {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
            {"role": "assistant", "content": "It is sunny."},
            user("and tomorrow?"),
            {"role": "assistant", "function_call": {"name": "weather", "arguments": "{}"}},
            {"role": "function", "name": "weather", "content": "{\"rain\": true}"}]}))
        .unwrap();
        assert_eq!(
            out.body["messages"],
            json!([{"role": "user", "content": "weather?"},
                {"role": "assistant", "content": "", "function_call": {"name": "weather",
                    "arguments": "{\"city\":\"Paris\"}"}},
                {"role": "function", "name": "weather", "content": "{\"result\":\"sunny\"}"},
                {"role": "assistant", "content": "It is sunny."},
                {"role": "user", "content": "and tomorrow?"},
                {"role": "assistant", "content": "", "function_call": {"name": "weather",
                    "arguments": "{}"}},
                {"role": "function", "name": "weather", "content": "{\"rain\": true}"}])
        );
    }

    #[test]
    fn tool_messages_ernie_cannot_take_are_refused_by_name() {
        let call = |id: &str| {
            json!({"id": id, "type": "function", "function": {"name": "weather",
                "arguments": "{}"}})
        };
        let refused = |messages: Value| {
            param(t(json!({"tools": [weather()], "messages": messages})).unwrap_err())
        };
        // Two calls in one assistant turn.
        let two = json!([user("x"), {"role": "assistant",
            "tool_calls": [call("a"), call("b")]}, {"role": "tool", "tool_call_id": "a",
            "content": "1"}]);
        assert_eq!(refused(two).as_deref(), Some("messages[1].tool_calls"));
        // A result for a call never made, or answered twice.
        let unknown = json!([user("x"), {"role": "assistant", "tool_calls": [call("a")]},
            {"role": "tool", "tool_call_id": "zzz", "content": "1"}]);
        assert_eq!(
            refused(unknown).as_deref(),
            Some("messages[2].tool_call_id")
        );
        let twice = json!([user("x"), {"role": "assistant", "tool_calls": [call("a")]},
            {"role": "tool", "tool_call_id": "a", "content": "1"},
            {"role": "tool", "tool_call_id": "a", "content": "2"}]);
        assert_eq!(refused(twice).as_deref(), Some("messages[3].tool_call_id"));
        // Tools that are not functions; strict schemas; unknown function fields.
        let with_tools =
            |tools: Value| param(t(json!({"messages": [user("x")], "tools": tools})).unwrap_err());
        assert_eq!(
            with_tools(json!([{"type": "web_search"}])).as_deref(),
            Some("tools[0].type")
        );
        assert_eq!(
            with_tools(json!([{"type": "function", "function": {"name": "f",
                "strict": true}}]))
            .as_deref(),
            Some("tools[0].function.strict")
        );
        assert_eq!(
            with_tools(json!([{"type": "function", "function": {"description": "d"}}])).as_deref(),
            Some("tools[0].function.name")
        );
        // A name on a user message is still refused.
        let named = json!([{"role": "user", "content": "x", "name": "bob"}]);
        assert_eq!(refused(named).as_deref(), Some("messages[0].name"));
    }
}
