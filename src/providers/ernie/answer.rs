//! ERNIE answers → OpenAI answers: a whole `chat.completion`, or a stream of
//! `chat.completion.chunk` events translated one ERNIE event at a time.
//!
//! An ERNIE answer is `{"id","object","created","result","is_truncated","need_clear_history",
//! "finish_reason","usage"}`; a stream event adds `sentence_id` and `is_end`, the last one
//! (`is_end: true`) carrying the whole usage. An error is `{"error_code","error_msg"}` instead,
//! whole or as one event. The stream translator holds at most one partial event
//! ([`MAX_EVENT`]); it ends the client's stream with `data: [DONE]` after the last event, or
//! with a [`BodyError`] when the upstream reports an error, cuts the stream, or sends garbage.
//!
//! A function call (`function_call: {name, arguments, thoughts?}` in the answer or in an event)
//! becomes OpenAI's `tool_calls` (one call, id `call_<ERNIE answer id>`, `finish_reason:
//! tool_calls`), or the legacy `function_call` (`finish_reason: function_call`) when the client
//! offered legacy `functions` ([`Calls`]). ERNIE's `thoughts` have no OpenAI field and are not
//! relayed. In a stream the first event carrying a call gives the `delta.tool_calls` chunk
//! (name and whole arguments at once); a later one is not relayed again.

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::{json, Value};

use super::codes;
use super::tools::Calls;
use crate::providers::sse::{data, Events};
use crate::providers::{BodyError, BodyStream};
use crate::secret::Secret;

/// Longest ERNIE event held while waiting for its end.
pub const MAX_EVENT: usize = 1024 * 1024;

/// What an ERNIE body (or stream event) says.
#[derive(Debug)]
pub enum Said {
    Answer(Value),
    /// `error_code` and `error_msg`.
    Error(i64, String),
}

/// Read one ERNIE JSON object; `None` when it is not one.
pub fn read(raw: &[u8]) -> Option<Said> {
    let v: Value = serde_json::from_slice(raw).ok()?;
    if !v.is_object() {
        return None;
    }
    match v.get("error_code").and_then(Value::as_i64) {
        Some(code) if code != 0 => {
            let msg = v
                .get("error_msg")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_owned();
            Some(Said::Error(code, msg))
        }
        _ => Some(Said::Answer(v)),
    }
}

/// The ERNIE answer's function call, when it made one.
fn function_call(v: &Value) -> Option<&Value> {
    v.get("function_call")
        .filter(|c| c.get("name").and_then(Value::as_str).is_some())
}

/// The OpenAI id of the call in ERNIE answer `v`: one call per answer, so the answer's id
/// makes it unique (a fresh one when ERNIE sent none).
fn call_id(v: &Value) -> String {
    match text(v, "id") {
        "" => format!("call_{}", uuid::Uuid::new_v4().simple()),
        id => format!("call_{id}"),
    }
}

/// `{name, arguments}` of ERNIE's call (arguments as a JSON string).
fn call_function(c: &Value) -> Value {
    let arguments = match c.get("arguments") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => "{}".to_owned(),
        Some(other) => other.to_string(),
    };
    json!({"name": text(c, "name"), "arguments": arguments})
}

/// The finish reason of an answer that called a function.
fn called(calls: Calls) -> &'static str {
    match calls {
        Calls::Tools => "tool_calls",
        Calls::Legacy => "function_call",
    }
}

fn finish_reason(v: &Value) -> &'static str {
    if v.get("need_clear_history").and_then(Value::as_bool) == Some(true) {
        return "content_filter";
    }
    match v.get("finish_reason").and_then(Value::as_str) {
        Some("length") => "length",
        Some("content_filter") => "content_filter",
        _ if v.get("is_truncated").and_then(Value::as_bool) == Some(true) => "length",
        _ => "stop",
    }
}

/// OpenAI's usage object from ERNIE's (the same three counts).
fn usage(v: &Value) -> Option<Value> {
    let u = v.get("usage")?;
    let n = |k: &str| u.get(k).and_then(Value::as_u64).unwrap_or(0);
    let (p, c) = (n("prompt_tokens"), n("completion_tokens"));
    Some(json!({"prompt_tokens": p, "completion_tokens": c, "total_tokens": p + c}))
}

fn text<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or_default()
}

/// A whole ERNIE answer as an OpenAI `chat.completion`.
pub fn completion(v: &Value, model: &str, calls: Calls) -> Bytes {
    let result = text(v, "result");
    let (message, finish) = match function_call(v) {
        None => (
            json!({"role": "assistant", "content": result}),
            finish_reason(v),
        ),
        Some(c) => {
            let content = if result.is_empty() {
                Value::Null
            } else {
                Value::from(result)
            };
            let mut m = json!({"role": "assistant", "content": content});
            match calls {
                Calls::Tools => {
                    m["tool_calls"] = json!([{"id": call_id(v), "type": "function",
                        "function": call_function(c)}]);
                }
                Calls::Legacy => m["function_call"] = call_function(c),
            }
            (m, called(calls))
        }
    };
    let mut out = json!({
        "id": text(v, "id"),
        "object": "chat.completion",
        "created": v.get("created").and_then(Value::as_u64).unwrap_or(0),
        "model": model,
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
    });
    if let Some(u) = usage(v) {
        out["usage"] = u;
    }
    Bytes::from(out.to_string())
}

/// The OpenAI error event body an ERNIE error event ends a stream with, sanitized as any
/// upstream error body is (the credential masked, the message cut).
fn reported(code: i64, msg: &str, secret: Option<&Secret>) -> BodyError {
    let mapped = codes::map(code);
    let raw = codes::error_body(code, msg, mapped.kind);
    BodyError::Reported(crate::error::sanitize_upstream_error(
        mapped.status,
        &raw,
        secret.map(Secret::expose),
    ))
}

/// The translation state of one stream.
pub struct Chunks {
    model: String,
    /// The credential this request carried, masked in a relayed error message.
    secret: Option<Secret>,
    include_usage: bool,
    role_sent: bool,
    /// How a function call is relayed.
    calls: Calls,
    /// A function call was relayed: the stream finishes with `tool_calls`.
    called: bool,
    /// The last event (`is_end`) was translated: nothing more is read.
    pub ended: bool,
}

impl Chunks {
    pub fn new(model: String, include_usage: bool, secret: Option<Secret>) -> Chunks {
        Chunks {
            model,
            secret,
            include_usage,
            role_sent: false,
            calls: Calls::Tools,
            called: false,
            ended: false,
        }
    }

    /// Relay a function call in the legacy `function_call` shape instead of `tool_calls`.
    pub fn with_calls(mut self, calls: Calls) -> Chunks {
        self.calls = calls;
        self
    }

    fn chunk(&self, v: &Value, choices: Value) -> Value {
        json!({"id": text(v, "id"), "object": "chat.completion.chunk",
            "created": v.get("created").and_then(Value::as_u64).unwrap_or(0),
            "model": self.model, "choices": choices})
    }

    /// One ERNIE event's `data` → the OpenAI events it stands for, appended to `out`.
    pub fn event(&mut self, data: &[u8], out: &mut BytesMut) -> Result<(), BodyError> {
        let v = match read(data) {
            Some(Said::Answer(v)) => v,
            Some(Said::Error(code, msg)) => return Err(reported(code, &msg, self.secret.as_ref())),
            None => return Err(BodyError::Reset),
        };
        let mut push = |v: &Value| {
            out.extend_from_slice(b"data: ");
            out.extend_from_slice(v.to_string().as_bytes());
            out.extend_from_slice(b"\n\n");
        };
        let result = text(&v, "result");
        let call = if self.called { None } else { function_call(&v) };
        if !result.is_empty() || (!self.role_sent && call.is_none()) {
            let delta = if self.role_sent {
                json!({"content": result})
            } else {
                json!({"role": "assistant", "content": result})
            };
            self.role_sent = true;
            push(&self.chunk(
                &v,
                json!([{"index": 0, "delta": delta, "finish_reason": null}]),
            ));
        }
        if let Some(c) = call {
            let mut delta = match self.calls {
                Calls::Tools => json!({"tool_calls": [{"index": 0, "id": call_id(&v),
                    "type": "function", "function": call_function(c)}]}),
                Calls::Legacy => json!({"function_call": call_function(c)}),
            };
            if !self.role_sent {
                delta["role"] = json!("assistant");
                delta["content"] = Value::Null;
                self.role_sent = true;
            }
            self.called = true;
            push(&self.chunk(
                &v,
                json!([{"index": 0, "delta": delta, "finish_reason": null}]),
            ));
        }
        if v.get("is_end").and_then(Value::as_bool) == Some(true) {
            let finish = if self.called {
                called(self.calls)
            } else {
                finish_reason(&v)
            };
            push(&self.chunk(
                &v,
                json!([{"index": 0, "delta": {}, "finish_reason": finish}]),
            ));
            if let (true, Some(u)) = (self.include_usage, usage(&v)) {
                let mut c = self.chunk(&v, json!([]));
                c["usage"] = u;
                push(&c);
            }
            out.extend_from_slice(b"data: [DONE]\n\n");
            self.ended = true;
        }
        Ok(())
    }
}

/// Translate the complete events at the front of `buf` into `out`; stops after the last one.
fn drain(buf: &mut BytesMut, chunks: &mut Chunks, out: &mut BytesMut) -> Result<(), BodyError> {
    let mut events = Events::new(buf);
    let mut result = Ok(());
    while !chunks.ended {
        let Some(event) = events.next() else { break };
        let d = data(event).unwrap_or_default();
        if !d.trim_ascii().is_empty() {
            if let Err(e) = chunks.event(&d, out) {
                result = Err(e);
                break;
            }
        }
    }
    let taken = events.consumed();
    let _ = buf.split_to(taken);
    result
}

/// The client's stream: `upstream`'s ERNIE events (the first ones already read into `buf`)
/// translated as they come.
pub fn translate(upstream: BodyStream, buf: BytesMut, chunks: Chunks) -> BodyStream {
    struct St {
        upstream: BodyStream,
        buf: BytesMut,
        chunks: Chunks,
        /// An error to end with once what came before it was passed on.
        failed: Option<BodyError>,
        done: bool,
    }
    let st = St {
        upstream,
        buf,
        chunks,
        failed: None,
        done: false,
    };
    futures_util::stream::unfold(st, |mut st| async move {
        loop {
            if let Some(e) = st.failed.take() {
                st.done = true;
                return Some((Err(e), st));
            }
            if st.done {
                return None;
            }
            let mut out = BytesMut::new();
            if let Err(e) = drain(&mut st.buf, &mut st.chunks, &mut out) {
                st.failed = Some(e);
            }
            if st.chunks.ended {
                st.done = true;
            }
            if !out.is_empty() {
                return Some((Ok(out.freeze()), st));
            }
            if st.failed.is_some() || st.done {
                continue;
            }
            match st.upstream.next().await {
                Some(Ok(c)) => {
                    st.buf.extend_from_slice(&c);
                    if st.buf.len() > MAX_EVENT {
                        st.failed = Some(BodyError::Reset);
                    }
                }
                Some(Err(e)) => st.failed = Some(e),
                // Ended before its last event: the stream was cut.
                None => st.failed = Some(BodyError::Reset),
            }
        }
    })
    .boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(v: Value) -> Bytes {
        Bytes::from(format!("data: {v}\n\n"))
    }

    async fn run(parts: Vec<Result<Bytes, BodyError>>, usage: bool) -> (String, Option<BodyError>) {
        let up = futures_util::stream::iter(parts).boxed();
        let mut s = translate(up, BytesMut::new(), Chunks::new("m".into(), usage, None));
        let (mut text, mut err) = (String::new(), None);
        while let Some(r) = s.next().await {
            match r {
                Ok(b) => text.push_str(std::str::from_utf8(&b).unwrap()),
                Err(e) => err = Some(e),
            }
        }
        (text, err)
    }

    #[tokio::test]
    async fn events_become_chunks_then_usage_then_done() {
        let a = ev(json!({"id":"as-1","created":1,"sentence_id":0,"is_end":false,"result":"Hel"}));
        let b = ev(
            json!({"id":"as-1","created":1,"sentence_id":1,"is_end":true,"result":"lo",
            "finish_reason":"normal","usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}),
        );
        let whole = [a, b].concat();
        // Cut anywhere: the same chunks.
        for cut in [1, 7, whole.len() / 2, whole.len() - 1] {
            let parts = vec![
                Ok(Bytes::copy_from_slice(&whole[..cut])),
                Ok(Bytes::copy_from_slice(&whole[cut..])),
            ];
            let (text, err) = run(parts, true).await;
            assert!(err.is_none(), "{err:?}");
            let events: Vec<Value> = text
                .split("\n\n")
                .filter_map(|e| e.strip_prefix("data: "))
                .filter(|d| *d != "[DONE]")
                .map(|d| serde_json::from_str(d).unwrap())
                .collect();
            assert_eq!(
                events[0]["choices"][0]["delta"],
                json!({"role":"assistant","content":"Hel"})
            );
            assert_eq!(events[1]["choices"][0]["delta"]["content"], "lo");
            assert_eq!(events[2]["choices"][0]["finish_reason"], "stop");
            assert_eq!(events[3]["usage"]["total_tokens"], 5);
            assert!(text.ends_with("data: [DONE]\n\n"));
        }
    }

    #[tokio::test]
    async fn an_error_event_or_a_cut_ends_the_stream_with_an_error() {
        let a = ev(json!({"id":"as-1","is_end":false,"result":"Hel"}));
        let e = ev(json!({"error_code":336100,"error_msg":"try again later"}));
        let (text, err) = run(vec![Ok(a.clone()), Ok(e)], false).await;
        assert!(text.contains("Hel"));
        match err {
            Some(BodyError::Reported(b)) => {
                let v: Value = serde_json::from_slice(&b).unwrap();
                assert_eq!(v["error"]["code"], "ernie_336100");
            }
            other => panic!("{other:?}"),
        }
        let (_, err) = run(vec![Ok(a)], false).await;
        assert_eq!(err, Some(BodyError::Reset));
    }

    #[tokio::test]
    async fn a_relayed_error_event_never_carries_the_token() {
        let token = "24.0123456789abcdef0123456789abcdef";
        let e = ev(json!({"error_code": 111, "error_msg": format!("token {token} expired")}));
        let up = futures_util::stream::iter(vec![Ok(e)]).boxed();
        let chunks = Chunks::new("m".into(), false, Some(Secret::new(token)));
        let mut s = translate(up, BytesMut::new(), chunks);
        match s.next().await {
            Some(Err(BodyError::Reported(b))) => {
                let text = String::from_utf8_lossy(&b);
                assert!(!text.contains("0123456789ab"), "{text}");
                assert!(text.contains("ernie_111"), "{text}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn a_whole_answer_is_a_chat_completion() {
        let v = json!({"id":"as-9","object":"chat.completion","created":5,"result":"hi",
            "is_truncated":false,"need_clear_history":false,"finish_reason":"normal",
            "usage":{"prompt_tokens":2,"completion_tokens":1,"total_tokens":3}});
        let out: Value = serde_json::from_slice(&completion(&v, "ernie-x", Calls::Tools)).unwrap();
        assert_eq!(out["choices"][0]["message"]["content"], "hi");
        assert_eq!(out["choices"][0]["finish_reason"], "stop");
        assert_eq!(out["usage"]["completion_tokens"], 1);
        assert_eq!(out["model"], "ernie-x");
    }

    fn call_answer() -> Value {
        json!({"id":"as-7","object":"chat.completion","created":5,"result":"",
            "is_truncated":false,"need_clear_history":false,"finish_reason":"function_call",
            "function_call":{"name":"weather","arguments":"{\"city\":\"Paris\"}",
                "thoughts":"the user wants the weather"},
            "usage":{"prompt_tokens":4,"completion_tokens":6,"total_tokens":10}})
    }

    #[test]
    fn a_function_call_becomes_tool_calls_or_the_legacy_function_call() {
        let out: Value =
            serde_json::from_slice(&completion(&call_answer(), "m", Calls::Tools)).unwrap();
        let choice = &out["choices"][0];
        assert_eq!(choice["finish_reason"], "tool_calls");
        assert_eq!(
            choice["message"],
            json!({"role": "assistant", "content": null, "tool_calls": [{"id": "call_as-7",
                "type": "function", "function": {"name": "weather",
                "arguments": "{\"city\":\"Paris\"}"}}]})
        );
        assert_eq!(out["usage"]["total_tokens"], 10);
        let out: Value =
            serde_json::from_slice(&completion(&call_answer(), "m", Calls::Legacy)).unwrap();
        let choice = &out["choices"][0];
        assert_eq!(choice["finish_reason"], "function_call");
        assert_eq!(
            choice["message"],
            json!({"role": "assistant", "content": null, "function_call": {"name": "weather",
                "arguments": "{\"city\":\"Paris\"}"}})
        );
        // finish_reason function_call without a call is an ordinary stop.
        let mut v = call_answer();
        v.as_object_mut().unwrap().remove("function_call");
        let out: Value = serde_json::from_slice(&completion(&v, "m", Calls::Tools)).unwrap();
        assert_eq!(out["choices"][0]["finish_reason"], "stop");
    }

    fn chunks_of(text: &str) -> Vec<Value> {
        text.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[tokio::test]
    async fn a_streamed_call_becomes_one_tool_calls_delta_then_finish_tool_calls() {
        // The call in its own event, then the last event (the way it may come), and the call
        // in the last event itself (the way the test kit's fake sends it).
        let first = json!({"id":"as-7","created":5,"sentence_id":0,"is_end":false,"result":"",
            "function_call":{"name":"weather","arguments":"{}"}});
        let last = json!({"id":"as-7","created":5,"sentence_id":1,"is_end":true,"result":"",
            "finish_reason":"function_call",
            "usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}});
        let mut whole = call_answer();
        whole["sentence_id"] = json!(0);
        whole["is_end"] = json!(true);
        for parts in [vec![Ok(ev(first)), Ok(ev(last))], vec![Ok(ev(whole))]] {
            let (text, err) = run(parts, false).await;
            assert!(err.is_none(), "{err:?}");
            let events = chunks_of(&text);
            assert_eq!(events.len(), 2, "{text}");
            let delta = &events[0]["choices"][0]["delta"];
            assert_eq!(delta["role"], "assistant");
            assert_eq!(delta["content"], Value::Null);
            let call = &delta["tool_calls"][0];
            assert_eq!(
                (
                    call["index"].clone(),
                    call["id"].clone(),
                    call["type"].clone()
                ),
                (json!(0), json!("call_as-7"), json!("function"))
            );
            assert_eq!(call["function"]["name"], "weather");
            assert_eq!(events[1]["choices"][0]["finish_reason"], "tool_calls");
            assert!(text.ends_with("data: [DONE]\n\n"));
        }
        // Legacy: a function_call delta and finish_reason function_call.
        let mut v = call_answer();
        v["is_end"] = json!(true);
        let up2 = futures_util::stream::iter(vec![Ok(ev(v))]).boxed();
        let chunks = Chunks::new("m".into(), false, None).with_calls(Calls::Legacy);
        let mut s = translate(up2, BytesMut::new(), chunks);
        let mut text = String::new();
        while let Some(Ok(b)) = s.next().await {
            text.push_str(std::str::from_utf8(&b).unwrap());
        }
        let events = chunks_of(&text);
        assert_eq!(
            events[0]["choices"][0]["delta"]["function_call"]["name"],
            "weather"
        );
        assert_eq!(events[1]["choices"][0]["finish_reason"], "function_call");
    }
}
