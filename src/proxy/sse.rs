//! Server-sent events as the request path reads them, split into events and their `data` read
//! by the one splitter, [`crate::providers::sse`] (which providers that translate streams use too).
//!
//! The attempt step uses it to commit a stream only once its first event is whole and well
//! formed ([`first_event_ok`]); the relay uses it to pass complete events on as they come and to
//! find the usage chunk ([`inspect`]). Both see the same events however the upstream cuts its
//! stream into chunks (a property test holds [`Events`] to that). It owns no I/O and no state.

use std::borrow::Cow;

use crate::providers::sse::data;
pub(super) use crate::providers::sse::Events;
use crate::providers::Usage;

/// Whether a first stream chunk starts like server-sent events.
pub(super) fn looks_like_sse(chunk: &[u8]) -> bool {
    let start = chunk.trim_ascii_start();
    [&b"data:"[..], b":", b"event:", b"id:", b"retry:"]
        .iter()
        .any(|p| start.starts_with(p))
}

/// Whether the first SSE event in `buf` is well formed: `None` while it is incomplete, else
/// whether its `data` (if any) is JSON or `[DONE]`. Comment-only events (keep-alives) pass.
pub(super) fn first_event_ok(buf: &[u8]) -> Option<bool> {
    let event = Events::new(buf).next()?;
    let data = data(event).unwrap_or_default();
    let data = data.trim_ascii();
    Some(
        data.is_empty()
            || data == b"[DONE]"
            || serde_json::from_slice::<serde::de::IgnoredAny>(data).is_ok(),
    )
}

pub(super) enum Seen {
    Content,
    Usage {
        usage: Usage,
        usage_only: bool,
    },
    /// `data: [DONE]`.
    Done,
    Other,
}

pub(super) fn inspect(event: &[u8]) -> Seen {
    let Some(data) = data(event) else {
        return Seen::Other;
    };
    let data = data.trim_ascii();
    if data == b"[DONE]" {
        return Seen::Done;
    }
    if memfind(data, b"\"usage\"") {
        #[derive(serde::Deserialize)]
        struct Probe {
            usage: Option<Usage>,
            #[serde(default)]
            choices: Vec<serde::de::IgnoredAny>,
        }
        if let Ok(Probe {
            usage: Some(usage),
            choices,
        }) = serde_json::from_slice::<Probe>(data)
        {
            return Seen::Usage {
                usage,
                usage_only: choices.is_empty(),
            };
        }
    }
    Seen::Content
}

/// Whether an event carries a finish reason (`"finish_reason"` with a string, not `null`).
pub(super) fn finish_reason(event: &[u8]) -> bool {
    const FIELD: &[u8] = b"\"finish_reason\"";
    let mut rest = event;
    while let Some(at) = rest.windows(FIELD.len()).position(|w| w == FIELD) {
        rest = &rest[at + FIELD.len()..];
        let value = rest
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b':'))
            .map(|i| &rest[i..]);
        if value.is_some_and(|v| v.first() == Some(&b'"')) {
            return true;
        }
    }
    false
}

/// Where the top-level `model` string of an event's JSON data lies in the event, for the relay to
/// put the client-facing name there. Data on one `data:` line only, as every OpenAI-shaped stream
/// sends it; an event whose data spans lines is left as it is.
pub(super) fn model_span(event: &[u8]) -> Option<std::ops::Range<usize>> {
    let Cow::Borrowed(d) = data(event)? else {
        return None;
    };
    let offset = (d.as_ptr() as usize).checked_sub(event.as_ptr() as usize)?;
    let at = crate::openai::model::span(d)?;
    Some(offset + at.start..offset + at.end)
}

fn memfind(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finish_reason_is_a_string_not_null() {
        assert!(finish_reason(
            br#"data: {"choices":[{"delta":{},"finish_reason":"stop"}]}"#
        ));
        assert!(finish_reason(
            br#"data: {"choices":[{"finish_reason" : "length"}]}"#
        ));
        assert!(!finish_reason(
            br#"data: {"choices":[{"delta":{"content":"a"},"finish_reason":null}]}"#
        ));
        assert!(!finish_reason(b"data: [DONE]"));
    }

    mod split_property {
        //! Any cut of a valid event stream into chunks gives the same events, in order, with
        //! nothing left over, and the same usage. The test command runs proptest's default 256
        //! cases; a longer run: `PROPTEST_CASES=200000 cargo nextest run --lib split_property`.
        use super::super::*;
        use bytes::BytesMut;
        use proptest::prelude::*;

        /// One event: field lines (data, comments, event names, ids) and one line ending for
        /// the whole event, then the blank line.
        fn event() -> impl Strategy<Value = Vec<u8>> {
            let line = prop_oneof![
                "[ -~&&[^\\r\\n]]{0,40}".prop_map(|t| format!("data: {t}")),
                Just(r#"data: {"choices":[{"delta":{"content":"hi"}}]}"#.to_owned()),
                Just(
                    r#"data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}"#
                        .to_owned()
                ),
                Just("data: [DONE]".to_owned()),
                "[ -~]{0,20}".prop_map(|t| format!(": {t}")),
                Just("event: message".to_owned()),
                (0u32..1000).prop_map(|n| format!("id: {n}")),
            ];
            (prop::collection::vec(line, 1..4), any::<bool>()).prop_map(|(lines, crlf)| {
                let eol = if crlf { "\r\n" } else { "\n" };
                let mut e = String::new();
                for l in lines {
                    e.push_str(&l);
                    e.push_str(eol);
                }
                e.push_str(eol);
                e.into_bytes()
            })
        }

        /// Feed `chunks` as the relay does: append, take the complete events at the front.
        fn split(chunks: &[&[u8]]) -> (Vec<Vec<u8>>, usize) {
            let mut buf = BytesMut::new();
            let mut out = Vec::new();
            for c in chunks {
                buf.extend_from_slice(c);
                let mut events = Events::new(&buf);
                out.extend(events.by_ref().map(<[u8]>::to_vec));
                let n = events.consumed();
                let _ = buf.split_to(n);
            }
            (out, buf.len())
        }

        fn usage(events: &[Vec<u8>]) -> Option<(u64, u64)> {
            events.iter().rev().find_map(|e| match inspect(e) {
                Seen::Usage { usage, .. } => Some((usage.prompt_tokens, usage.completion_tokens)),
                _ => None,
            })
        }

        proptest! {
            #[test]
            fn any_split_gives_the_same_events(
                events in prop::collection::vec(event(), 1..12),
                cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..24),
            ) {
                let stream: Vec<u8> = events.concat();
                let mut at: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
                at.sort_unstable();
                at.dedup();
                let mut chunks: Vec<&[u8]> = Vec::new();
                let mut from = 0;
                for &to in at.iter().chain(std::iter::once(&stream.len())) {
                    chunks.push(&stream[from..to]);
                    from = to;
                }
                let (got, left) = split(&chunks);
                prop_assert_eq!(left, 0);
                prop_assert_eq!(&got, &events);
                prop_assert_eq!(usage(&got), usage(&events));
                // The attempt step's first-event check sees the same first event on every
                // prefix that holds it whole, and nothing before that.
                let first = events[0].len();
                for &cut in &at {
                    let e = Events::new(&stream[..cut]).next();
                    prop_assert_eq!(e, (cut >= first).then(|| &stream[..first]));
                }
            }

            #[test]
            fn a_cut_event_is_never_passed_on(
                events in prop::collection::vec(event(), 1..6),
                drop_tail in 1usize..4,
            ) {
                let stream: Vec<u8> = events.concat();
                let cut = stream.len().saturating_sub(drop_tail);
                let (got, left) = split(&[&stream[..cut]]);
                prop_assert_eq!(&got[..], &events[..events.len() - 1]);
                prop_assert_eq!(left, cut - (stream.len() - events[events.len() - 1].len()));
            }
        }
    }

    #[test]
    fn usage_only_chunk_is_recognised() {
        let ev = br#"data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":5}}"#;
        match inspect(ev) {
            Seen::Usage { usage, usage_only } => {
                assert_eq!(
                    (usage.prompt_tokens, usage.completion_tokens, usage_only),
                    (3, 5, true)
                )
            }
            _ => panic!("usage not seen"),
        }
        assert!(matches!(inspect(b"data: [DONE]"), Seen::Done));
    }

    #[test]
    fn first_event_must_be_whole_and_well_formed() {
        assert_eq!(first_event_ok(b"data: {\"a\":1}"), None);
        assert_eq!(first_event_ok(b"data: {\"a\":1}\n\ndata: {x"), Some(true));
        assert_eq!(first_event_ok(b"data: {\"a\":1}\r\n\r\n"), Some(true));
        assert_eq!(first_event_ok(b"data: [DONE]\n\n"), Some(true));
        assert_eq!(first_event_ok(b": keep-alive\n\n"), Some(true));
        assert_eq!(
            first_event_ok(b"data: {\"choices\":[{\"delta\":{\"content\":\n\n"),
            Some(false)
        );
        assert_eq!(first_event_ok(b"data: {not json}\n\n"), Some(false));
    }
}
