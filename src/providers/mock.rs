//! The built-in `mock` provider: a model that answers in process, without any network.
//!
//! The reply is deterministic and derived from the request (the last user message, echoed), so
//! tests and the quickstart can check what they get. Streams are split into a configured number
//! of chunks with a configured delay between them; latency and usage figures are configurable.
//! Streamed and non-streamed answers carry the same content.
//!
//! Tools: a chat request with `tools` whose last message is the user's is answered with a call
//! of the first tool, its arguments `{"input": <the user's text>}` (`finish_reason:
//! tool_calls`); once the last message is a tool result, the reply echoes that result. So a
//! client's whole tool loop can run against the quickstart.

use std::time::{SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::{stream, StreamExt};
use http::{HeaderMap, HeaderValue, StatusCode};
use serde_json::{json, Map, Value};

use super::{UpstreamRequest, UpstreamResponse};
use crate::config::MockConfig;
use crate::openai::Endpoint;

/// The request fields the mock's answer depends on.
const READ: [&str; 9] = [
    "model",
    "tools",
    "encoding_format",
    "messages",
    "prompt",
    "input",
    "max_tokens",
    "max_completion_tokens",
    "stream_options",
];

pub struct Mock {
    cfg: MockConfig,
}

/// What a request asks about: the last tool result when the conversation ends on one, else the
/// last user message's text, or the prompt.
pub fn request_text(body: &Map<String, Value>) -> String {
    match body.get("messages").and_then(Value::as_array) {
        Some(msgs) => match msgs.last() {
            Some(m) if m.get("role").and_then(Value::as_str) == Some("tool") => {
                content_text(m.get("content"))
            }
            _ => msgs
                .iter()
                .rev()
                .find(|m| m.get("role").and_then(Value::as_str) == Some("user"))
                .map(|m| content_text(m.get("content")))
                .unwrap_or_default(),
        },
        None => content_text(body.get("prompt")),
    }
}

/// The tool call the mock makes: the first tool's name, when the request offers tools and its
/// last message is the user's.
fn tool_to_call(body: &Map<String, Value>) -> Option<String> {
    let first = body.get("tools")?.as_array()?.first()?;
    let name = first.get("function")?.get("name")?.as_str()?;
    let last = body.get("messages")?.as_array()?.last()?;
    (last.get("role").and_then(Value::as_str) == Some("user")).then(|| name.to_owned())
}

/// The text the mock answers with: "mock reply: " and the words of the last user message (or
/// the prompt), cut to `max_tokens` words.
pub fn reply_text(body: &Map<String, Value>) -> String {
    let source = request_text(body);
    let limit = body
        .get("max_tokens")
        .or_else(|| body.get("max_completion_tokens"))
        .and_then(Value::as_u64)
        .unwrap_or(u64::MAX) as usize;
    let words: Vec<&str> = ["mock", "reply:"]
        .into_iter()
        .chain(source.split_whitespace())
        .take(limit.max(1))
        .collect();
    words.join(" ")
}

/// The text of a message `content`: a string, or the text parts of an array.
pub fn content_text(v: Option<&Value>) -> String {
    match v {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| match p {
                Value::String(s) => Some(s.as_str()),
                other => other.get("text").and_then(Value::as_str),
            })
            .collect::<Vec<_>>()
            .join(" "),
        _ => String::new(),
    }
}

fn count_words(body: &Map<String, Value>) -> u64 {
    let mut n = 0;
    if let Some(msgs) = body.get("messages").and_then(Value::as_array) {
        for m in msgs {
            n += content_text(m.get("content")).split_whitespace().count();
        }
    }
    for f in ["prompt", "input"] {
        n += content_text(body.get(f)).split_whitespace().count();
    }
    n.max(1) as u64
}

/// Split `text` into `n` pieces at word boundaries whose concatenation is `text`.
pub fn split_chunks(text: &str, n: usize) -> Vec<String> {
    let words: Vec<&str> = text.split_inclusive(' ').collect();
    let n = n.clamp(1, words.len().max(1));
    let per = words.len().div_ceil(n).max(1);
    words.chunks(per).map(|c| c.concat()).collect()
}

/// A vector as OpenAI sends it: numbers, or with `encoding_format: base64` the little-endian
/// `f32` bytes in base64 (what the Node SDK asks for by default).
fn embedding(v: &[f32], base64: bool) -> Value {
    if !base64 {
        return json!(v);
    }
    use base64::Engine;
    let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
    Value::String(base64::engine::general_purpose::STANDARD.encode(bytes))
}

impl Mock {
    pub fn new(cfg: MockConfig) -> Mock {
        Mock { cfg }
    }

    pub async fn answer(&self, req: UpstreamRequest<'_>) -> UpstreamResponse {
        if !self.cfg.latency.0.is_zero() {
            tokio::time::sleep(self.cfg.latency.0).await;
        }
        // The mock is the upstream here: it reads the fields it answers from as values.
        let body = &req.json.pick(&READ);
        let model = body.get("model").and_then(Value::as_str).unwrap_or("mock");
        let created = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        let id = format!("mock-{}", uuid::Uuid::new_v4().simple());
        let prompt = self.cfg.prompt_tokens.unwrap_or_else(|| count_words(body));
        let headers = HeaderMap::new();

        if req.endpoint == Endpoint::Embeddings {
            let inputs = match body.get("input") {
                Some(Value::Array(a)) => a.len().max(1),
                _ => 1,
            };
            let base64 = body.get("encoding_format").and_then(Value::as_str) == Some("base64");
            let data: Vec<Value> = (0..inputs)
                .map(|i| {
                    let v: Vec<f32> = (0..8).map(|k| ((i * 8 + k) as f32 * 0.37).sin()).collect();
                    json!({"object": "embedding", "index": i, "embedding": embedding(&v, base64)})
                })
                .collect();
            let out = json!({"object": "list", "data": data, "model": model,
                "usage": {"prompt_tokens": prompt, "total_tokens": prompt}});
            return json_response(headers, out);
        }

        let chat = req.endpoint == Endpoint::Chat;
        if let Some(tool) = chat.then(|| tool_to_call(body)).flatten() {
            let call = ToolCall {
                id: format!("call_{}", id.get(5..17).unwrap_or_default()),
                name: tool,
                arguments: json!({"input": request_text(body)}).to_string(),
            };
            let head = Head {
                id: &id,
                created,
                model,
            };
            let completion = self.cfg.completion_tokens.unwrap_or(1);
            let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion,
                "total_tokens": prompt + completion});
            if !req.stream {
                return json_response(headers, call.answer(&head, usage));
            }
            let events = call.events(&head, self.cfg.chunks, wants_usage(body).then_some(usage));
            return self.stream(headers, events);
        }
        let text = reply_text(body);
        let completion = self
            .cfg
            .completion_tokens
            .unwrap_or(text.split_whitespace().count() as u64);
        let usage = json!({"prompt_tokens": prompt, "completion_tokens": completion,
            "total_tokens": prompt + completion});

        if !req.stream {
            let choice = if chat {
                json!({"index": 0, "message": {"role": "assistant", "content": text},
                    "finish_reason": "stop"})
            } else {
                json!({"index": 0, "text": text, "finish_reason": "stop"})
            };
            let object = if chat {
                "chat.completion"
            } else {
                "text_completion"
            };
            let out = json!({"id": id, "object": object, "created": created, "model": model,
                "choices": [choice], "usage": usage});
            return json_response(headers, out);
        }

        let object = if chat {
            "chat.completion.chunk"
        } else {
            "text_completion"
        };
        let mut events: Vec<Bytes> = Vec::new();
        for (i, piece) in split_chunks(&text, self.cfg.chunks).into_iter().enumerate() {
            let choice = if chat {
                let delta = if i == 0 {
                    json!({"role": "assistant", "content": piece})
                } else {
                    json!({"content": piece})
                };
                json!({"index": 0, "delta": delta, "finish_reason": null})
            } else {
                json!({"index": 0, "text": piece, "finish_reason": null})
            };
            events.push(sse(&json!({"id": id, "object": object, "created": created,
                "model": model, "choices": [choice]})));
        }
        let last = if chat {
            json!({"index": 0, "delta": {}, "finish_reason": "stop"})
        } else {
            json!({"index": 0, "text": "", "finish_reason": "stop"})
        };
        events.push(sse(&json!({"id": id, "object": object, "created": created,
            "model": model, "choices": [last]})));
        if wants_usage(body) {
            events.push(sse(&json!({"id": id, "object": object, "created": created,
                "model": model, "choices": [], "usage": usage})));
        }
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        self.stream(headers, events)
    }

    /// The events as a stream, `chunk_delay` apart.
    fn stream(&self, mut headers: HeaderMap, events: Vec<Bytes>) -> UpstreamResponse {
        let delay = self.cfg.chunk_delay.0;
        let body = stream::iter(events.into_iter().enumerate())
            .then(move |(i, ev)| async move {
                if i > 0 && !delay.is_zero() {
                    tokio::time::sleep(delay).await;
                }
                Ok(ev)
            })
            .boxed();
        headers.insert(
            http::header::CONTENT_TYPE,
            HeaderValue::from_static("text/event-stream"),
        );
        UpstreamResponse {
            status: StatusCode::OK,
            headers,
            body,
        }
    }
}

fn wants_usage(body: &Map<String, Value>) -> bool {
    body.get("stream_options")
        .and_then(|o| o.get("include_usage"))
        .and_then(Value::as_bool)
        .unwrap_or(false)
}

/// What every answer of one request repeats.
pub(crate) struct Head<'a> {
    pub(crate) id: &'a str,
    pub(crate) created: u64,
    pub(crate) model: &'a str,
}

/// The mock's call of a tool (the test kit's fake upstreams answer tool calls with it too).
pub(crate) struct ToolCall {
    pub(crate) id: String,
    pub(crate) name: String,
    pub(crate) arguments: String,
}

impl ToolCall {
    pub(crate) fn answer(&self, h: &Head<'_>, usage: Value) -> Value {
        json!({"id": h.id, "object": "chat.completion", "created": h.created, "model": h.model,
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {
                "role": "assistant", "content": null,
                "tool_calls": [{"id": self.id, "type": "function",
                    "function": {"name": self.name, "arguments": self.arguments}}]}}],
            "usage": usage})
    }

    /// The call streamed as OpenAI does: id and name first, then the arguments in pieces.
    pub(crate) fn events(&self, h: &Head<'_>, chunks: usize, usage: Option<Value>) -> Vec<Bytes> {
        let chunk = |delta: Value, finish: Value| {
            sse(
                &json!({"id": h.id, "object": "chat.completion.chunk", "created": h.created,
                "model": h.model, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}),
            )
        };
        let mut events = vec![chunk(
            json!({"role": "assistant", "content": null, "tool_calls": [{"index": 0,
                "id": self.id, "type": "function",
                "function": {"name": self.name, "arguments": ""}}]}),
            Value::Null,
        )];
        let pieces = self.arguments.len().div_ceil(chunks.max(1)).max(1);
        let mut rest = self.arguments.as_str();
        while !rest.is_empty() {
            let mut at = pieces.min(rest.len());
            while !rest.is_char_boundary(at) {
                at += 1;
            }
            let (piece, tail) = rest.split_at(at);
            events.push(chunk(
                json!({"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}),
                Value::Null,
            ));
            rest = tail;
        }
        events.push(chunk(json!({}), json!("tool_calls")));
        if let Some(usage) = usage {
            events.push(sse(&json!({"id": h.id, "object": "chat.completion.chunk",
                "created": h.created, "model": h.model, "choices": [], "usage": usage})));
        }
        events.push(Bytes::from_static(b"data: [DONE]\n\n"));
        events
    }
}

fn sse(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

fn json_response(mut headers: HeaderMap, v: Value) -> UpstreamResponse {
    headers.insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    UpstreamResponse {
        status: StatusCode::OK,
        headers,
        body: stream::once(async move { Ok(Bytes::from(v.to_string())) }).boxed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chunks_concatenate_to_the_text() {
        let t = "mock reply: one two three four five";
        for n in 1..10 {
            assert_eq!(split_chunks(t, n).concat(), t);
        }
        assert_eq!(split_chunks(t, 3).len(), 3);
    }

    #[test]
    fn reply_echoes_last_user_message_within_max_tokens() {
        let body = json!({"messages": [{"role":"user","content":"a b"},
            {"role":"assistant","content":"x"},{"role":"user","content":"hello there world"}],
            "max_tokens": 4});
        let m = body.as_object().cloned().unwrap_or_default();
        assert_eq!(reply_text(&m), "mock reply: hello there");
    }
}
