//! A cached answer and its byte form for the disk and Redis tiers.
//!
//! An answer is kept in the form the upstream gave it: a JSON body for a non-stream request, the
//! SSE events of a complete stream for a stream request (the form is part of the key). A stream
//! is kept as its events up to the finish reason, the usage-only chunk apart, and `[DONE]`
//! implied: a replay hands the client exactly what the live relay would have (the usage chunk
//! only when the client asked for it).

use bytes::{Buf, BufMut, Bytes, BytesMut};
use std::sync::Arc;

use crate::openai::Usage;

/// How the answer is replayed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Form {
    Json,
    Sse,
}

/// One cached answer.
#[derive(Debug, Clone)]
pub struct Entry {
    pub form: Form,
    /// The client-facing model and the team (empty when shared): what a purge selects by.
    pub model: Arc<str>,
    pub team: Arc<str>,
    /// When it was cached and when it expires, ms since the epoch.
    pub created_ms: u64,
    pub expires_ms: u64,
    /// The usage the upstream reported (what a hit saves).
    pub usage: Option<Usage>,
    /// JSON: the body. SSE: every event up to `[DONE]` but the usage-only chunk.
    pub body: Bytes,
    /// SSE: the usage-only chunk (empty if the upstream sent none inside the events).
    pub usage_event: Bytes,
}

const MAGIC: &[u8; 4] = b"TGC1";
const DONE: &[u8] = b"data: [DONE]\n\n";

impl Entry {
    /// Bytes this entry weighs in a tier.
    pub fn weight(&self) -> u64 {
        (self.body.len() + self.usage_event.len() + self.model.len() + self.team.len() + 64) as u64
    }

    /// The pieces of the answer a client receives, in order.
    pub fn replay(&self, include_usage: bool) -> Vec<Bytes> {
        match self.form {
            Form::Json => vec![self.body.clone()],
            Form::Sse => {
                let mut out = vec![self.body.clone()];
                if include_usage && !self.usage_event.is_empty() {
                    out.push(self.usage_event.clone());
                }
                out.push(Bytes::from_static(DONE));
                out
            }
        }
    }

    /// The byte form kept by the disk and Redis tiers.
    pub fn encode(&self) -> Bytes {
        let mut b = BytesMut::with_capacity(self.weight() as usize + 64);
        b.put_slice(MAGIC);
        b.put_u8(match self.form {
            Form::Json => 0,
            Form::Sse => 1,
        });
        b.put_u64(self.created_ms);
        b.put_u64(self.expires_ms);
        match self.usage {
            Some(u) => {
                b.put_u8(1);
                b.put_u64(u.prompt_tokens);
                b.put_u64(u.completion_tokens);
            }
            None => b.put_u8(0),
        }
        for part in [
            self.model.as_bytes(),
            self.team.as_bytes(),
            &self.body,
            &self.usage_event,
        ] {
            b.put_u32(part.len() as u32);
            b.put_slice(part);
        }
        b.freeze()
    }

    /// Read the byte form; `None` when it is not one (a corrupt entry).
    pub fn decode(mut b: Bytes) -> Option<Entry> {
        if b.len() < 4 + 1 + 16 + 1 || &b[..4] != MAGIC {
            return None;
        }
        b.advance(4);
        let form = match b.get_u8() {
            0 => Form::Json,
            1 => Form::Sse,
            _ => return None,
        };
        let created_ms = b.get_u64();
        let expires_ms = b.get_u64();
        let usage = match b.get_u8() {
            0 => None,
            1 if b.remaining() >= 16 => Some(Usage {
                prompt_tokens: b.get_u64(),
                completion_tokens: b.get_u64(),
            }),
            _ => return None,
        };
        let mut part = || -> Option<Bytes> {
            if b.remaining() < 4 {
                return None;
            }
            let n = b.get_u32() as usize;
            (b.remaining() >= n).then(|| b.split_to(n))
        };
        let model = std::str::from_utf8(&part()?).ok()?.into();
        let team = std::str::from_utf8(&part()?).ok()?.into();
        let body = part()?;
        let usage_event = part()?;
        if b.has_remaining() {
            return None;
        }
        Some(Entry {
            form,
            model,
            team,
            created_ms,
            expires_ms,
            usage,
            body,
            usage_event,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            form: Form::Sse,
            model: "m".into(),
            team: "t".into(),
            created_ms: 1,
            expires_ms: 2,
            usage: Some(Usage {
                prompt_tokens: 3,
                completion_tokens: 4,
            }),
            body: Bytes::from_static(b"data: {}\n\n"),
            usage_event: Bytes::from_static(b"data: {\"usage\":{}}\n\n"),
        }
    }

    #[test]
    fn the_byte_form_reads_back() {
        let e = entry();
        let d = Entry::decode(e.encode()).unwrap();
        assert_eq!(d.body, e.body);
        assert_eq!(d.usage_event, e.usage_event);
        assert_eq!(d.usage, e.usage);
        assert_eq!((d.created_ms, d.expires_ms), (1, 2));
        assert_eq!((&*d.model, &*d.team, d.form), ("m", "t", Form::Sse));
    }

    #[test]
    fn a_corrupt_byte_form_is_none() {
        let b = entry().encode();
        assert!(Entry::decode(b.slice(..b.len() - 1)).is_none());
        assert!(Entry::decode(Bytes::from_static(b"TGC1garbage")).is_none());
        assert!(Entry::decode(Bytes::new()).is_none());
        let mut extra = BytesMut::from(&b[..]);
        extra.put_u8(0);
        assert!(Entry::decode(extra.freeze()).is_none());
    }

    #[test]
    fn a_replay_adds_the_usage_chunk_only_when_asked_and_ends_with_done() {
        let e = entry();
        let with: Vec<u8> = e.replay(true).concat();
        let without: Vec<u8> = e.replay(false).concat();
        assert_eq!(
            with,
            b"data: {}\n\ndata: {\"usage\":{}}\n\ndata: [DONE]\n\n"
        );
        assert_eq!(without, b"data: {}\n\ndata: [DONE]\n\n");
    }
}
