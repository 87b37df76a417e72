//! Anthropic's event stream → OpenAI `chat.completion.chunk` events, event by event as they
//! arrive: whatever complete events one upstream read holds are translated and handed on at
//! once; only a partial event waits (bounded by [`MAX_EVENT`]). Nothing else is kept but the
//! message's id, model, usage and which content block is which tool call.
//!
//! | Anthropic event | OpenAI chunk |
//! |---|---|
//! | `message_start` | `delta: {role: assistant, content: ""}` |
//! | `content_block_start` text / tool_use | text / `tool_calls[i]` with id, name, `arguments: ""` |
//! | `content_block_delta` `text_delta` / `input_json_delta` | `content` / `tool_calls[i].function.arguments` |
//! | `message_delta` | `delta: {}` with `finish_reason`; its usage is kept |
//! | `message_stop` | the usage-only chunk (when `include_usage`), then `data: [DONE]` |
//! | `ping`, `content_block_stop`, unknown events, thinking deltas | nothing |
//! | `error` | the stream ends with [`BodyError::Reported`] carrying it as an OpenAI error body: the relay closes the client's stream with it |
//!
//! A stream that ends without `message_stop` ends with [`BodyError::Cut`].

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes, BytesMut};
use futures_util::Stream;
use serde_json::{json, Map, Value};

use super::answer::{finish_reason, now_secs, reported, usage};
use crate::providers::sse::{data, Events};
use crate::providers::{BodyError, BodyStream};

/// Longest partial Anthropic event held while waiting for its end (the relay's own bound).
pub const MAX_EVENT: usize = 4 * 1024 * 1024;

/// The translating body stream.
pub struct Translate {
    inner: BodyStream,
    /// Bytes read but not yet translated: at most one partial event.
    buf: BytesMut,
    message: Message,
    /// Something was handed on: from now on every upstream read yields a chunk, even an empty
    /// one, so the reader's idle timeout sees the upstream's keep-alives.
    started: bool,
    /// An error to hand on after the chunk that preceded it.
    pending: Option<BodyError>,
    done: bool,
}

/// What the translation remembers of the message.
#[derive(Default)]
struct Message {
    id: Value,
    model: Value,
    created: u64,
    include_usage: bool,
    /// Anthropic usage fields, the latest value of each.
    usage: Map<String, Value>,
    /// (content block index, tool call index) of each tool_use block.
    tools: Vec<(u64, usize)>,
    stopped: bool,
}

impl Translate {
    pub fn new(inner: BodyStream, include_usage: bool) -> Translate {
        Translate {
            inner,
            buf: BytesMut::new(),
            message: Message {
                include_usage,
                created: now_secs(),
                ..Message::default()
            },
            started: false,
            pending: None,
            done: false,
        }
    }

    /// Translate the complete events in the buffer into `out`; an error event stops there.
    fn drain(&mut self, out: &mut BytesMut) -> Result<(), Bytes> {
        let mut events = Events::new(&self.buf);
        let mut result = Ok(());
        for event in events.by_ref() {
            if self.message.stopped {
                continue;
            }
            if let Err(r) = self.message.event(event, out) {
                result = Err(r);
                break;
            }
        }
        let n = events.consumed();
        self.buf.advance(n);
        result
    }
}

impl Stream for Translate {
    type Item = Result<Bytes, BodyError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(e) = self.pending.take() {
                self.done = true;
                return Poll::Ready(Some(Err(e)));
            }
            if self.done {
                return Poll::Ready(None);
            }
            let chunk = match self.inner.as_mut().poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Some(Ok(chunk))) => chunk,
                Poll::Ready(Some(Err(e))) => {
                    self.done = true;
                    return Poll::Ready(Some(Err(e)));
                }
                Poll::Ready(None) => {
                    self.done = true;
                    if self.message.stopped {
                        return Poll::Ready(None);
                    }
                    return Poll::Ready(Some(Err(BodyError::Cut)));
                }
            };
            self.buf.extend_from_slice(&chunk);
            let mut out = BytesMut::new();
            if let Err(r) = self.drain(&mut out) {
                self.pending = Some(BodyError::Reported(r));
            } else if self.buf.len() > MAX_EVENT {
                self.pending = Some(BodyError::Overlong);
            }
            if out.is_empty() && (!self.started || self.pending.is_some()) {
                continue;
            }
            self.started = true;
            return Poll::Ready(Some(Ok(out.freeze())));
        }
    }
}

impl Message {
    /// One Anthropic event: its OpenAI chunks appended to `out`.
    fn event(&mut self, event: &[u8], out: &mut BytesMut) -> Result<(), Bytes> {
        let Some(raw) = data(event) else {
            return Ok(());
        };
        let Ok(v) = serde_json::from_slice::<Value>(&raw) else {
            return Err(reported(b""));
        };
        match v["type"].as_str().unwrap_or_default() {
            "message_start" => {
                let m = &v["message"];
                self.id = m["id"].clone();
                self.model = m["model"].clone();
                self.note_usage(&m["usage"]);
                self.chunk(out, json!({"role": "assistant", "content": ""}), None);
            }
            "content_block_start" => {
                let block = &v["content_block"];
                match block["type"].as_str() {
                    Some("text") => {
                        let text = block["text"].as_str().unwrap_or_default();
                        if !text.is_empty() {
                            self.chunk(out, json!({"content": text}), None);
                        }
                    }
                    Some("tool_use") => {
                        let index = self.tools.len();
                        self.tools.push((v["index"].as_u64().unwrap_or(0), index));
                        let call = json!({"index": index, "id": block["id"], "type": "function",
                            "function": {"name": block["name"], "arguments": ""}});
                        self.chunk(out, json!({"tool_calls": [call]}), None);
                    }
                    _ => {}
                }
            }
            "content_block_delta" => {
                let d = &v["delta"];
                match d["type"].as_str() {
                    Some("text_delta") => {
                        let text = d["text"].as_str().unwrap_or_default();
                        if !text.is_empty() {
                            self.chunk(out, json!({"content": text}), None);
                        }
                    }
                    Some("input_json_delta") => {
                        let part = d["partial_json"].as_str().unwrap_or_default();
                        let block = v["index"].as_u64().unwrap_or(0);
                        let tool = self.tools.iter().find(|(b, _)| *b == block);
                        if let (Some((_, index)), false) = (tool, part.is_empty()) {
                            let call = json!({"index": index, "function": {"arguments": part}});
                            self.chunk(out, json!({"tool_calls": [call]}), None);
                        }
                    }
                    _ => {}
                }
            }
            "message_delta" => {
                self.note_usage(&v["usage"]);
                if let Some(stop) = v.pointer("/delta/stop_reason").and_then(Value::as_str) {
                    self.chunk(out, json!({}), Some(finish_reason(stop)));
                }
            }
            "message_stop" => {
                self.stopped = true;
                if self.include_usage {
                    let u = usage(&Value::Object(self.usage.clone()));
                    let c = json!({"id": self.id, "object": "chat.completion.chunk",
                        "created": self.created, "model": self.model, "choices": [],
                        "usage": u});
                    write(out, &c);
                }
                out.extend_from_slice(b"data: [DONE]\n\n");
            }
            "error" => {
                return Err(reported(&raw));
            }
            // ping, content_block_stop, and event types added later.
            _ => {}
        }
        Ok(())
    }

    fn note_usage(&mut self, u: &Value) {
        if let Some(u) = u.as_object() {
            for (k, v) in u {
                if v.is_u64() {
                    self.usage.insert(k.clone(), v.clone());
                }
            }
        }
    }

    fn chunk(&self, out: &mut BytesMut, delta: Value, finish: Option<&str>) {
        let c = json!({"id": self.id, "object": "chat.completion.chunk", "created": self.created,
            "model": self.model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]});
        write(out, &c);
    }
}

fn write(out: &mut BytesMut, v: &Value) {
    out.extend_from_slice(b"data: ");
    out.extend_from_slice(v.to_string().as_bytes());
    out.extend_from_slice(b"\n\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::StreamExt;

    const STREAM: &str = concat!(
        "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"msg_1\",",
        "\"type\":\"message\",\"role\":\"assistant\",\"model\":\"claude\",\"content\":[],",
        "\"stop_reason\":null,\"usage\":{\"input_tokens\":12,\"output_tokens\":1,",
        "\"cache_read_input_tokens\":4}}}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":0,",
        "\"content_block\":{\"type\":\"text\",\"text\":\"\"}}\n\n",
        "event: ping\ndata: {\"type\":\"ping\"}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":0,",
        "\"delta\":{\"type\":\"text_delta\",\"text\":\"Hello\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":0}\n\n",
        "event: content_block_start\ndata: {\"type\":\"content_block_start\",\"index\":1,",
        "\"content_block\":{\"type\":\"tool_use\",\"id\":\"toolu_1\",\"name\":\"f\",\"input\":{}}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,",
        "\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"{\\\"a\\\":\"}}\n\n",
        "event: content_block_delta\ndata: {\"type\":\"content_block_delta\",\"index\":1,",
        "\"delta\":{\"type\":\"input_json_delta\",\"partial_json\":\"1}\"}}\n\n",
        "event: content_block_stop\ndata: {\"type\":\"content_block_stop\",\"index\":1}\n\n",
        "event: message_delta\ndata: {\"type\":\"message_delta\",\"delta\":{\"stop_reason\":",
        "\"tool_use\",\"stop_sequence\":null},\"usage\":{\"output_tokens\":9}}\n\n",
        "event: message_stop\ndata: {\"type\":\"message_stop\"}\n\n",
    );

    async fn run(chunks: Vec<&'static [u8]>, include_usage: bool) -> (String, Option<BodyError>) {
        let inner =
            futures_util::stream::iter(chunks.into_iter().map(|c| Ok(Bytes::from_static(c))))
                .boxed();
        let mut t = Translate::new(inner, include_usage);
        let mut text = String::new();
        while let Some(item) = t.next().await {
            match item {
                Ok(b) => text.push_str(std::str::from_utf8(&b).unwrap()),
                Err(e) => return (text, Some(e)),
            }
        }
        (text, None)
    }

    /// The events' JSON, each one's `created` (a clock reading: two runs may straddle a second)
    /// checked to be a number and then left out, so runs compare equal.
    fn events(text: &str) -> Vec<Value> {
        text.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| {
                let mut v: Value = serde_json::from_str(d).unwrap();
                if let Some(o) = v.as_object_mut() {
                    assert!(o.remove("created").is_none_or(|c| c.is_u64()), "{d}");
                }
                v
            })
            .collect()
    }

    #[tokio::test]
    async fn any_cut_gives_the_same_chunks() {
        let whole = run(vec![STREAM.as_bytes()], true).await;
        assert!(whole.1.is_none());
        assert!(whole.0.ends_with("data: [DONE]\n\n"));
        let ev = events(&whole.0);
        assert_eq!(ev[0]["choices"][0]["delta"]["role"], "assistant");
        assert_eq!(ev[1]["choices"][0]["delta"]["content"], "Hello");
        let call = &ev[2]["choices"][0]["delta"]["tool_calls"][0];
        assert_eq!(
            (call["index"].as_u64(), call["id"].as_str()),
            (Some(0), Some("toolu_1"))
        );
        let args: String = ev
            .iter()
            .filter_map(|e| {
                e["choices"][0]["delta"]["tool_calls"][0]["function"]["arguments"].as_str()
            })
            .collect();
        assert_eq!(args, r#"{"a":1}"#);
        assert_eq!(
            ev[ev.len() - 2]["choices"][0]["finish_reason"],
            "tool_calls"
        );
        let u = &ev[ev.len() - 1]["usage"];
        assert_eq!(
            (u["prompt_tokens"].as_u64(), u["completion_tokens"].as_u64()),
            (Some(16), Some(9))
        );
        assert_eq!(u["prompt_tokens_details"]["cached_tokens"], 4);
        // Byte by byte: the same chunks (ids and times aside, which are the same here).
        let bytes: Vec<&'static [u8]> = STREAM.as_bytes().chunks(7).collect();
        let cut = run(bytes, true).await;
        assert_eq!(events(&cut.0), ev);
        // Without include_usage: no usage chunk.
        let plain = run(vec![STREAM.as_bytes()], false).await;
        assert!(events(&plain.0).iter().all(|e| e.get("usage").is_none()));
    }

    proptest::proptest! {
        /// However the upstream cuts its stream into reads, the client gets the same chunks.
        #[test]
        fn any_split_gives_the_same_chunks(
            cuts in proptest::collection::vec(0..STREAM.len(), 0..20),
        ) {
            let mut at = cuts;
            at.sort_unstable();
            at.dedup();
            let mut chunks: Vec<&'static [u8]> = Vec::new();
            let mut from = 0;
            for to in at.into_iter().chain(std::iter::once(STREAM.len())) {
                chunks.push(&STREAM.as_bytes()[from..to]);
                from = to;
            }
            let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
            let (whole, split) = rt.block_on(async {
                (run(vec![STREAM.as_bytes()], true).await, run(chunks, true).await)
            });
            proptest::prop_assert!(split.1.is_none());
            proptest::prop_assert_eq!(events(&split.0), events(&whole.0));
        }
    }

    #[tokio::test]
    async fn an_error_event_ends_the_stream_after_what_came_before() {
        let s: &'static str = concat!(
            "event: message_start\ndata: {\"type\":\"message_start\",\"message\":{\"id\":\"m\",",
            "\"model\":\"c\",\"usage\":{\"input_tokens\":1}}}\n\n",
            "event: error\ndata: {\"type\":\"error\",\"error\":{\"type\":\"overloaded_error\",",
            "\"message\":\"Overloaded\"}}\n\n",
        );
        let (text, err) = run(vec![s.as_bytes()], true).await;
        assert_eq!(events(&text).len(), 1);
        let Some(BodyError::Reported(body)) = err else {
            panic!("{err:?}")
        };
        let body: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(body["error"]["type"], "overloaded_error");
        assert_eq!(body["error"]["message"], "Overloaded");
        let cut = &STREAM[..STREAM.len() - 40];
        let (_, err) = run(vec![cut.as_bytes()], true).await;
        assert_eq!(err, Some(BodyError::Cut));
    }
}
