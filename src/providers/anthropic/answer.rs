//! Anthropic answers read whole → OpenAI: a Message becomes a `chat.completion`, an error body
//! `{"type":"error","error":{"type","message"}}` becomes `{"error":{"message","type","param",
//! "code"}}` with the upstream's status kept (so the one reading in [`super::super::reading`]
//! classifies it: 529 `overloaded_error` retryable like a 503, 401 renewing the credential).
//!
//! [`Whole`] is the body adapter: it gathers the upstream body (bounded) while handing the
//! reader an empty chunk per chunk read, so the reader's idle timeout still sees progress, and
//! ends with the translation.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Bytes, BytesMut};
use futures_util::Stream;
use http::StatusCode;
use serde_json::{json, Value};

use crate::providers::{BodyError, BodyStream};

/// Largest Anthropic body gathered for a translation (a Message or an error).
pub const MAX_WHOLE: usize = 64 * 1024 * 1024;

/// What a body read whole is.
#[derive(Debug, Clone, Copy)]
pub enum Kind {
    /// A Message (a success).
    Message,
    /// An error answer with this status.
    Error(StatusCode),
}

/// A body read whole, then translated.
pub struct Whole {
    inner: BodyStream,
    buf: BytesMut,
    translate: Kind,
    done: bool,
}

impl Whole {
    pub fn new(inner: BodyStream, translate: Kind) -> Whole {
        Whole {
            inner,
            buf: BytesMut::new(),
            translate,
            done: false,
        }
    }
}

impl Stream for Whole {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.inner.as_mut().poll_next(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(Some(Ok(chunk))) => {
                if self.buf.len() + chunk.len() > MAX_WHOLE {
                    self.done = true;
                    return Poll::Ready(Some(Err(BodyError::Overlong)));
                }
                self.buf.extend_from_slice(&chunk);
                Poll::Ready(Some(Ok(Bytes::new())))
            }
            Poll::Ready(Some(Err(e))) => {
                self.done = true;
                Poll::Ready(Some(Err(e)))
            }
            Poll::Ready(None) => {
                self.done = true;
                let out = match self.translate {
                    Kind::Message => message(&self.buf),
                    Kind::Error(status) => error(status, &self.buf),
                };
                Poll::Ready(Some(Ok(out)))
            }
        }
    }
}

/// Seconds since the epoch, for `created`.
pub fn now_secs() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An Anthropic `stop_reason` as an OpenAI `finish_reason`.
pub fn finish_reason(stop: &str) -> &'static str {
    match stop {
        "max_tokens" | "model_context_window_exceeded" => "length",
        "tool_use" => "tool_calls",
        "refusal" => "content_filter",
        // end_turn, stop_sequence, pause_turn and any reason added later.
        _ => "stop",
    }
}

/// Anthropic usage (`input_tokens` excludes the cached ones) as OpenAI usage: the prompt is
/// every input token, cache reads among them reported as `cached_tokens`.
pub fn usage(u: &Value) -> Value {
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let cached = n("cache_read_input_tokens");
    let prompt = n("input_tokens") + n("cache_creation_input_tokens") + cached;
    let completion = n("output_tokens");
    json!({
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
        "prompt_tokens_details": {"cached_tokens": cached},
    })
}

/// A Message as a `chat.completion`; an empty body (which the reader refuses as invalid) when
/// it is not one.
pub fn message(raw: &[u8]) -> Bytes {
    let Ok(m) = serde_json::from_slice::<Value>(raw) else {
        return Bytes::new();
    };
    if m.get("type").and_then(Value::as_str) != Some("message") {
        return Bytes::new();
    }
    let mut text = String::new();
    let mut calls = Vec::new();
    for block in m["content"].as_array().into_iter().flatten() {
        match block["type"].as_str() {
            Some("text") => text.push_str(block["text"].as_str().unwrap_or_default()),
            Some("tool_use") => calls.push(json!({
                "id": block["id"],
                "type": "function",
                "function": {"name": block["name"], "arguments": block["input"].to_string()},
            })),
            // Thinking and server-tool blocks have no place in a chat message.
            _ => {}
        }
    }
    let mut msg = json!({"role": "assistant", "content": text});
    if !calls.is_empty() {
        if text.is_empty() {
            msg["content"] = Value::Null;
        }
        msg["tool_calls"] = Value::Array(calls);
    }
    let finish = finish_reason(m["stop_reason"].as_str().unwrap_or("end_turn"));
    let out = json!({
        "id": m["id"],
        "object": "chat.completion",
        "created": now_secs(),
        "model": m["model"],
        "choices": [{"index": 0, "message": msg, "finish_reason": finish}],
        "usage": usage(&m["usage"]),
    });
    Bytes::from(out.to_string())
}

/// Anthropic's error type for a status, when the body does not say.
pub fn type_of_status(status: StatusCode) -> &'static str {
    match status.as_u16() {
        400 => "invalid_request_error",
        401 => "authentication_error",
        402 => "billing_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        529 => "overloaded_error",
        _ => "api_error",
    }
}

/// An Anthropic error body (or an error page that is not JSON, such as the proxy's 413) as an
/// OpenAI error: the message and type kept, the code the type (or the more precise
/// `details.error_code`, e.g. `enforced_spend_limit_reached`).
pub fn error(status: StatusCode, raw: &[u8]) -> Bytes {
    let v: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
    let e = &v["error"];
    let kind = e["type"].as_str().unwrap_or_else(|| type_of_status(status));
    let message = e["message"]
        .as_str()
        .map_or_else(|| format!("the upstream answered {status}"), str::to_owned);
    let code = e
        .pointer("/details/error_code")
        .and_then(Value::as_str)
        .unwrap_or(kind);
    let out = json!({"error": {"message": message, "type": kind, "param": null, "code": code}});
    Bytes::from(out.to_string())
}

/// An Anthropic `error` event's data (`{"type":"error","error":{...}}`) as the OpenAI error body
/// the client's stream ends with; a data that is not JSON an `api_error`.
pub fn reported(raw: &[u8]) -> Bytes {
    let v: Value = serde_json::from_slice(raw).unwrap_or(Value::Null);
    let e = &v["error"];
    let kind = e["type"].as_str().unwrap_or("api_error");
    let message = e["message"]
        .as_str()
        .unwrap_or("the upstream reported an error in the middle of the stream");
    let out = json!({"error": {"message": message, "type": kind, "param": null, "code": kind}});
    Bytes::from(out.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_message_with_text_and_tool_use() {
        let m = json!({"id": "msg_1", "type": "message", "role": "assistant", "model": "claude",
            "content": [{"type": "text", "text": "Checking."},
                {"type": "tool_use", "id": "toolu_1", "name": "get_weather",
                 "input": {"city": "Paris"}}],
            "stop_reason": "tool_use", "stop_sequence": null,
            "usage": {"input_tokens": 10, "output_tokens": 5,
                "cache_creation_input_tokens": 2, "cache_read_input_tokens": 3}});
        let out: Value = serde_json::from_slice(&message(m.to_string().as_bytes())).unwrap();
        assert_eq!(out["object"], "chat.completion");
        assert_eq!(out["choices"][0]["finish_reason"], "tool_calls");
        assert_eq!(out["choices"][0]["message"]["content"], "Checking.");
        let call = &out["choices"][0]["message"]["tool_calls"][0];
        assert_eq!(call["id"], "toolu_1");
        assert_eq!(call["function"]["name"], "get_weather");
        assert_eq!(call["function"]["arguments"], r#"{"city":"Paris"}"#);
        assert_eq!(
            out["usage"],
            json!({"prompt_tokens": 15, "completion_tokens": 5, "total_tokens": 20,
                "prompt_tokens_details": {"cached_tokens": 3}})
        );
        assert!(message(b"{\"type\":\"error\"}").is_empty());
    }

    #[test]
    fn stop_reasons() {
        assert_eq!(finish_reason("end_turn"), "stop");
        assert_eq!(finish_reason("stop_sequence"), "stop");
        assert_eq!(finish_reason("max_tokens"), "length");
        assert_eq!(finish_reason("tool_use"), "tool_calls");
    }

    #[test]
    fn errors_keep_their_type_and_message() {
        let raw = br#"{"type":"error","error":{"type":"overloaded_error","message":"Overloaded"}}"#;
        let out: Value =
            serde_json::from_slice(&error(StatusCode::from_u16(529).unwrap(), raw)).unwrap();
        assert_eq!(
            out,
            json!({"error": {"message": "Overloaded", "type": "overloaded_error",
                "param": null, "code": "overloaded_error"}})
        );
        let html = error(StatusCode::PAYLOAD_TOO_LARGE, b"<html>too big</html>");
        let out: Value = serde_json::from_slice(&html).unwrap();
        assert_eq!(out["error"]["type"], "request_too_large");
    }
}
