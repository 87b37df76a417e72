//! OpenAI tools and legacy functions → ERNIE v1 function calling, the request side.
//!
//! ERNIE v1 (wenxinworkshop) takes `functions: [{name, description, parameters, responses?,
//! examples?}]`, a `tool_choice` of `{"type":"function","function":{"name":…}}` (a hint
//! naming one of `functions`), assistant turns carrying one `function_call: {name, arguments,
//! thoughts?}`, and the result as a turn of role `function` whose `name` is the called
//! function's. That shape was read from Baidu's own SDKs: the Go SDK's `ChatCompletionRequest`
//! and `Function` types (github.com/baidubce/bce-qianfan-sdk, `go/qianfan/chat_completion.go`)
//! and its OpenAI adapter (`python/qianfan/extensions/openai/adapter.py`, which sends an
//! OpenAI named tool choice unchanged and drops `auto`), and the v1 body table copied in
//! github.com/glee0413/agentsoft `prompts/src/component/LLM/baidullm_prompt.md`.
//!
//! What cannot be said to ERNIE is refused with a 400 naming the field: tools other than
//! functions, `tool_choice: "required"`, a `strict: true` schema, more than one call in one
//! assistant turn, a tool result for a call the conversation never made. Pure: no I/O.

use serde_json::{json, Map, Value};

use super::refuse;
use crate::error::ApiError;

/// How a function call in the answer is shaped for the client: `tool_calls` (the request
/// offered `tools`, or nothing) or the legacy `function_call` (it offered `functions`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Calls {
    #[default]
    Tools,
    Legacy,
}

/// What the client asked about calling a function.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Choice {
    /// ERNIE's default: it decides.
    Auto,
    /// No call: `functions` are not sent at all.
    None,
    /// A hint naming one function (ERNIE's `tool_choice`).
    Named(String),
}

/// The offered functions, once read: the ERNIE list and how the answer will be shaped.
#[derive(Debug, Default)]
pub struct Offer {
    functions: Option<(Vec<Value>, Calls)>,
    /// The choice and the field that carried it (`tool_choice` or `function_call`).
    choice: Option<(Choice, &'static str)>,
}

impl Offer {
    /// OpenAI `tools`: each must be `{"type":"function","function":{…}}`.
    pub fn tools(&mut self, v: &Value) -> Result<(), ApiError> {
        let Some(list) = v.as_array() else {
            return Err(refuse("tools", "must be an array"));
        };
        let mut out = Vec::with_capacity(list.len());
        for (i, t) in list.iter().enumerate() {
            let at = format!("tools[{i}]");
            let Some(obj) = t.as_object() else {
                return Err(refuse(&at, "must be an object"));
            };
            match obj.get("type").and_then(Value::as_str) {
                Some("function") => {}
                _ => {
                    return Err(refuse(
                        &format!("{at}.type"),
                        "ERNIE v1 calls functions only",
                    ))
                }
            }
            if let Some(k) = obj
                .iter()
                .find(|(k, v)| !matches!(k.as_str(), "type" | "function") && !v.is_null())
                .map(|(k, _)| k)
            {
                return Err(refuse(&format!("{at}.{k}"), "ERNIE has no such tool field"));
            }
            out.push(function(obj.get("function"), &format!("{at}.function"))?);
        }
        self.offer(out, Calls::Tools)
    }

    /// Legacy `functions`: each is `{name, description?, parameters?}`.
    pub fn functions(&mut self, v: &Value) -> Result<(), ApiError> {
        let Some(list) = v.as_array() else {
            return Err(refuse("functions", "must be an array"));
        };
        let out = list
            .iter()
            .enumerate()
            .map(|(i, f)| function(Some(f), &format!("functions[{i}]")))
            .collect::<Result<Vec<_>, _>>()?;
        self.offer(out, Calls::Legacy)
    }

    fn offer(&mut self, list: Vec<Value>, calls: Calls) -> Result<(), ApiError> {
        if self.functions.is_some() {
            // Named after the legacy field whichever came first.
            return Err(refuse("functions", "send tools or functions, not both"));
        }
        self.functions = Some((list, calls));
        Ok(())
    }

    /// OpenAI `tool_choice`.
    pub fn tool_choice(&mut self, v: &Value) -> Result<(), ApiError> {
        let k = "tool_choice";
        let choice = match v {
            Value::String(s) if s == "auto" => Choice::Auto,
            Value::String(s) if s == "none" => Choice::None,
            Value::String(s) if s == "required" => {
                return Err(refuse(
                    k,
                    "ERNIE cannot be made to call a function (its tool_choice is a hint)",
                ))
            }
            Value::Object(o) if o.get("type").and_then(Value::as_str) == Some("function") => {
                match o
                    .get("function")
                    .and_then(|f| f.get("name"))
                    .and_then(Value::as_str)
                {
                    Some(name) => Choice::Named(name.to_owned()),
                    None => return Err(refuse(k, "must name the function")),
                }
            }
            _ => {
                return Err(refuse(
                    k,
                    "only none, auto or a named function are translated",
                ))
            }
        };
        self.choose(choice, k)
    }

    /// Legacy `function_call`: `none`, `auto` or `{"name": …}`.
    pub fn function_call(&mut self, v: &Value) -> Result<(), ApiError> {
        let k = "function_call";
        let choice = match v {
            Value::String(s) if s == "auto" => Choice::Auto,
            Value::String(s) if s == "none" => Choice::None,
            Value::Object(o) => match o.get("name").and_then(Value::as_str) {
                Some(name) => Choice::Named(name.to_owned()),
                None => return Err(refuse(k, "must name the function")),
            },
            _ => return Err(refuse(k, "must be none, auto or {\"name\": …}")),
        };
        self.choose(choice, k)
    }

    fn choose(&mut self, choice: Choice, field: &'static str) -> Result<(), ApiError> {
        if self.choice.is_some() {
            return Err(refuse(
                "function_call",
                "send tool_choice or function_call, not both",
            ));
        }
        self.choice = Some((choice, field));
        Ok(())
    }

    /// Write `functions` and `tool_choice` into the ERNIE body; the answer's call shape.
    pub fn finish(self, out: &mut Map<String, Value>) -> Result<Calls, ApiError> {
        let (choice, field) = self.choice.unwrap_or((Choice::Auto, "tool_choice"));
        let Some((list, calls)) = self.functions else {
            return match choice {
                Choice::Named(_) => Err(refuse(field, "names a function but none is offered")),
                _ => Ok(Calls::Tools),
            };
        };
        match choice {
            // "Call nothing": ERNIE is not offered anything to call.
            Choice::None => return Ok(calls),
            Choice::Auto => {}
            Choice::Named(name) => {
                let offered = list
                    .iter()
                    .any(|f| f.get("name").and_then(Value::as_str) == Some(name.as_str()));
                if !offered {
                    return Err(refuse(
                        field,
                        &format!("names '{name}', which is not among the functions offered"),
                    ));
                }
                out.insert(
                    "tool_choice".into(),
                    json!({"type": "function", "function": {"name": name}}),
                );
            }
        }
        if !list.is_empty() {
            out.insert("functions".into(), Value::Array(list));
        }
        Ok(calls)
    }
}

/// One function definition → ERNIE's: `description` defaults to "" and `parameters` to an
/// empty object schema (ERNIE requires both); `strict: true` is refused (ERNIE does not
/// promise to follow a schema).
fn function(v: Option<&Value>, at: &str) -> Result<Value, ApiError> {
    let Some(obj) = v.and_then(Value::as_object) else {
        return Err(refuse(at, "must be an object"));
    };
    let mut out = Map::new();
    for (k, v) in obj {
        if v.is_null() {
            continue;
        }
        let field = format!("{at}.{k}");
        match k.as_str() {
            "name" | "description" => {
                let s = v
                    .as_str()
                    .ok_or_else(|| refuse(&field, "must be a string"))?;
                out.insert(k.clone(), Value::from(s));
            }
            "parameters" if v.is_object() => {
                out.insert(k.clone(), v.clone());
            }
            "parameters" => return Err(refuse(&field, "must be a JSON schema object")),
            "strict" if v.as_bool() == Some(false) => {}
            "strict" => return Err(refuse(&field, "ERNIE does not enforce a schema")),
            _ => return Err(refuse(&field, "ERNIE has no such function field")),
        }
    }
    if !out.contains_key("name") {
        return Err(refuse(&format!("{at}.name"), "is required"));
    }
    out.entry("description").or_insert_with(|| Value::from(""));
    out.entry("parameters")
        .or_insert_with(|| json!({"type": "object", "properties": {}}));
    Ok(Value::Object(out))
}

/// The calls made so far in a conversation: id → function name, and whether answered.
#[derive(Debug, Default)]
pub struct Made {
    made: Vec<(String, String, bool)>,
}

impl Made {
    /// An assistant message's call (`tool_calls` with at most one entry, or a legacy
    /// `function_call`) as ERNIE's `function_call`, the call's id remembered.
    pub fn assistant(
        &mut self,
        msg: &Map<String, Value>,
        at: &dyn Fn(&str) -> String,
    ) -> Result<Option<Value>, ApiError> {
        let tool_calls = msg.get("tool_calls").filter(|v| !v.is_null());
        let legacy = msg.get("function_call").filter(|v| !v.is_null());
        if tool_calls.is_some() && legacy.is_some() {
            return Err(refuse(
                &at("function_call"),
                "send tool_calls or function_call, not both",
            ));
        }
        if let Some(f) = legacy {
            return call(f, &at("function_call")).map(Some);
        }
        let Some(list) = tool_calls else {
            return Ok(None);
        };
        let Some(list) = list.as_array() else {
            return Err(refuse(&at("tool_calls"), "must be an array"));
        };
        let Some(first) = list.first() else {
            return Ok(None);
        };
        if list.len() > 1 {
            return Err(refuse(
                &at("tool_calls"),
                "ERNIE takes one function call per assistant turn",
            ));
        }
        let field = at("tool_calls[0]");
        if first.get("type").and_then(Value::as_str) != Some("function") {
            return Err(refuse(&format!("{field}.type"), "must be function"));
        }
        let out = call(
            first.get("function").unwrap_or(&Value::Null),
            &format!("{field}.function"),
        )?;
        if let Some(id) = first.get("id").and_then(Value::as_str) {
            let name = out["name"].as_str().unwrap_or_default().to_owned();
            self.made.push((id.to_owned(), name, false));
        }
        Ok(Some(out))
    }

    /// The function a `tool` message answers (by its `tool_call_id`), marked answered.
    pub fn answer(
        &mut self,
        msg: &Map<String, Value>,
        at: &dyn Fn(&str) -> String,
    ) -> Result<String, ApiError> {
        let field = at("tool_call_id");
        let Some(id) = msg.get("tool_call_id").and_then(Value::as_str) else {
            return Err(refuse(&field, "must name the call it answers"));
        };
        match self.made.iter_mut().find(|(made, _, _)| made == id) {
            Some((_, _, true)) => Err(refuse(&field, "answers a call already answered")),
            Some((_, name, answered)) => {
                *answered = true;
                Ok(name.clone())
            }
            None => Err(refuse(
                &field,
                "matches no tool call of an earlier assistant message",
            )),
        }
    }
}

/// `{name, arguments}` of a call → ERNIE's `function_call` (arguments a JSON string).
fn call(v: &Value, at: &str) -> Result<Value, ApiError> {
    let name = v
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| refuse(&format!("{at}.name"), "must be a string"))?;
    let arguments = match v.get("arguments") {
        None | Some(Value::Null) => "{}".to_owned(),
        Some(Value::String(s)) => s.clone(),
        Some(_) => return Err(refuse(&format!("{at}.arguments"), "must be a string")),
    };
    Ok(json!({"name": name, "arguments": arguments}))
}

/// A tool result as ERNIE's `function` content: a JSON object as it is, anything else as
/// `{"result": <text>}` (ERNIE reads function results as JSON; Baidu's OpenAI adapter wraps
/// every result the same way).
pub fn result_content(text: &str) -> String {
    match serde_json::from_str::<Value>(text) {
        Ok(Value::Object(_)) => text.to_owned(),
        _ => json!({ "result": text }).to_string(),
    }
}
