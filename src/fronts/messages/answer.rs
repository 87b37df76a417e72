//! OpenAI answers → Anthropic: a `chat.completion` as a Message, an OpenAI error as Anthropic's
//! error body, and a stream of `chat.completion.chunk` events as Anthropic's events
//! ([`Events`]), chunk by chunk as the relay hands them on.

use bytes::{Bytes, BytesMut};
use http::StatusCode;
use serde_json::{json, Value};

use crate::providers::sse::{data, Events as Split};

/// An OpenAI `finish_reason` as an Anthropic `stop_reason`.
fn stop_reason(finish: &str) -> &'static str {
    match finish {
        "length" => "max_tokens",
        "tool_calls" | "function_call" => "tool_use",
        "content_filter" => "refusal",
        _ => "end_turn",
    }
}

/// OpenAI usage as Anthropic's (`input_tokens` without the cached ones).
fn usage(u: &Value) -> Value {
    let n = |p: &str| u.pointer(p).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("/prompt_tokens_details/cached_tokens");
    json!({"input_tokens": n("/prompt_tokens").saturating_sub(cached),
        "output_tokens": n("/completion_tokens"),
        "cache_creation_input_tokens": 0, "cache_read_input_tokens": cached})
}

/// A `chat.completion` as a Message; `None` when it is not one.
pub fn message(raw: &[u8]) -> Option<Bytes> {
    let v: Value = serde_json::from_slice(raw).ok()?;
    let choice = &v["choices"][0];
    let msg = &choice["message"];
    let mut content = Vec::new();
    if let Some(t) = msg["content"].as_str().filter(|t| !t.is_empty()) {
        content.push(json!({"type": "text", "text": t}));
    }
    for c in msg["tool_calls"].as_array().into_iter().flatten() {
        let args = c["function"]["arguments"].as_str().unwrap_or("{}");
        let input: Value = serde_json::from_str(args).unwrap_or_else(|_| json!({}));
        content.push(
            json!({"type": "tool_use", "id": c["id"], "name": c["function"]["name"],
            "input": input}),
        );
    }
    let out = json!({"id": v["id"], "type": "message", "role": "assistant", "model": v["model"],
        "content": content,
        "stop_reason": stop_reason(choice["finish_reason"].as_str().unwrap_or("stop")),
        "stop_sequence": null, "usage": usage(&v["usage"])});
    Some(Bytes::from(out.to_string()))
}

/// Anthropic's error type for a status: the provider's table, plus the statuses Tollgate itself
/// answers with that Anthropic does not use (422 for a bad body, 503 when no upstream is free).
fn error_type(status: StatusCode) -> &'static str {
    match status.as_u16() {
        422 => "invalid_request_error",
        503 => "overloaded_error",
        _ => crate::providers::anthropic::answer::type_of_status(status),
    }
}

/// An OpenAI error body as Anthropic's `{"type":"error","error":{"type","message"}}`.
pub fn error(status: StatusCode, raw: &[u8]) -> Bytes {
    let v: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
    let message = v
        .pointer("/error/message")
        .and_then(Value::as_str)
        .map_or_else(|| format!("the gateway answered {status}"), str::to_owned);
    let out = json!({"type": "error",
        "error": {"type": error_type(status), "message": message}});
    Bytes::from(out.to_string())
}

/// The block being streamed.
#[derive(PartialEq)]
enum Block {
    None,
    Text,
    /// A tool_use block, by its OpenAI tool call index.
    Tool(u64),
}

/// The stream translator's state.
pub struct Events {
    buf: BytesMut,
    started: bool,
    index: u64,
    block: Block,
    stop: &'static str,
    usage: Value,
    pub done: bool,
}

impl Default for Events {
    fn default() -> Self {
        Events {
            buf: BytesMut::new(),
            started: false,
            index: 0,
            block: Block::None,
            stop: "end_turn",
            usage: Value::Null,
            done: false,
        }
    }
}

fn event(out: &mut BytesMut, name: &str, v: &Value) {
    out.extend_from_slice(b"event: ");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\ndata: ");
    out.extend_from_slice(v.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

impl Events {
    /// Translate what `chunk` completes.
    pub fn feed(&mut self, chunk: &[u8]) -> Bytes {
        self.buf.extend_from_slice(chunk);
        let mut out = BytesMut::new();
        let mut split = Split::new(&self.buf);
        let mut datas = Vec::new();
        for e in split.by_ref() {
            if let Some(d) = data(e) {
                datas.push(d.into_owned());
            }
        }
        let n = split.consumed();
        let _ = self.buf.split_to(n);
        for d in datas {
            if !self.done {
                self.one(&d, &mut out);
            }
        }
        out.freeze()
    }

    /// The end of the OpenAI stream: close the message if nothing did.
    pub fn end(&mut self) -> Bytes {
        let mut out = BytesMut::new();
        if !self.done {
            self.finish(&mut out);
        }
        out.freeze()
    }

    fn close_block(&mut self, out: &mut BytesMut) {
        if self.block != Block::None {
            event(
                out,
                "content_block_stop",
                &json!({"type": "content_block_stop", "index": self.index}),
            );
            self.index += 1;
            self.block = Block::None;
        }
    }

    fn finish(&mut self, out: &mut BytesMut) {
        self.close_block(out);
        let u = usage(&self.usage);
        event(
            out,
            "message_delta",
            &json!({"type": "message_delta",
            "delta": {"stop_reason": self.stop, "stop_sequence": null}, "usage": u}),
        );
        event(out, "message_stop", &json!({"type": "message_stop"}));
        self.done = true;
    }

    fn one(&mut self, d: &[u8], out: &mut BytesMut) {
        if d.trim_ascii() == b"[DONE]" {
            self.finish(out);
            return;
        }
        let Ok(v) = serde_json::from_slice::<Value>(d) else {
            return;
        };
        if let Some(e) = v.get("error") {
            // An Anthropic upstream's own type is kept; Tollgate's codes are an `api_error`.
            let kind = e["type"]
                .as_str()
                .filter(|t| matches!(*t, "overloaded_error" | "rate_limit_error"))
                .unwrap_or("api_error");
            event(
                out,
                "error",
                &json!({"type": "error",
                "error": {"type": kind, "message": e["message"]}}),
            );
            self.done = true;
            return;
        }
        if !self.started {
            self.started = true;
            event(
                out,
                "message_start",
                &json!({"type": "message_start", "message": {
                "id": v["id"], "type": "message", "role": "assistant", "model": v["model"],
                "content": [], "stop_reason": null, "stop_sequence": null,
                "usage": {"input_tokens": 0, "output_tokens": 0}}}),
            );
        }
        if v["usage"].is_object() {
            self.usage = v["usage"].clone();
        }
        let choice = &v["choices"][0];
        let delta = &choice["delta"];
        if let Some(t) = delta["content"].as_str().filter(|t| !t.is_empty()) {
            if self.block != Block::Text {
                self.close_block(out);
                self.block = Block::Text;
                event(
                    out,
                    "content_block_start",
                    &json!({"type": "content_block_start",
                    "index": self.index, "content_block": {"type": "text", "text": ""}}),
                );
            }
            event(
                out,
                "content_block_delta",
                &json!({"type": "content_block_delta",
                "index": self.index, "delta": {"type": "text_delta", "text": t}}),
            );
        }
        for c in delta["tool_calls"].as_array().into_iter().flatten() {
            let i = c["index"].as_u64().unwrap_or(0);
            if self.block != Block::Tool(i) {
                self.close_block(out);
                self.block = Block::Tool(i);
                event(
                    out,
                    "content_block_start",
                    &json!({"type": "content_block_start",
                    "index": self.index, "content_block": {"type": "tool_use", "id": c["id"],
                    "name": c["function"]["name"], "input": {}}}),
                );
            }
            if let Some(a) = c["function"]["arguments"]
                .as_str()
                .filter(|a| !a.is_empty())
            {
                event(
                    out,
                    "content_block_delta",
                    &json!({"type": "content_block_delta",
                    "index": self.index,
                    "delta": {"type": "input_json_delta", "partial_json": a}}),
                );
            }
        }
        if let Some(f) = choice["finish_reason"].as_str() {
            self.stop = stop_reason(f);
        }
    }
}
