//! Writing a missed answer: a [`Fill`] for a whole JSON body, a [`Capture`] for a stream that is
//! written only once it ended complete (`[DONE]` after a finish reason).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};

use super::{flight, now_ms, Entry, Form, Key, ModelCache, Shared, Write};
use crate::config::Tier;
use crate::openai::Usage;

/// A ticket to write a missed answer: complete it with [`Fill::json`] or through a [`Capture`];
/// dropping it writes nothing (and lets identical requests waiting on it go upstream).
pub struct Fill {
    pub(super) model: Arc<ModelCache>,
    pub(super) shared: Arc<Shared>,
    pub(super) key: Key,
    pub(super) team: Arc<str>,
    pub(super) ttl: Duration,
    /// The answer is a stream (captured), not a JSON body.
    pub(super) stream: bool,
    pub(super) leader: Option<flight::Leader>,
}

impl Fill {
    /// Whether an answer from `upstream` (by name) is this model's to keep: not one from a
    /// fallback model's upstream.
    pub fn serves(&self, upstream: &str) -> bool {
        self.model.upstreams.iter().any(|u| u == upstream)
    }

    /// Largest answer this fill keeps.
    pub fn max_entry_bytes(&self) -> u64 {
        self.model.config.max_entry_bytes
    }

    /// Write a whole non-stream answer (a 200 the upstream sent whole); nothing for a stream
    /// request (an upstream that answered it with JSON).
    pub fn json(self, body: Bytes, usage: Option<Usage>) {
        if self.stream || body.len() as u64 > self.max_entry_bytes() {
            return;
        }
        self.commit(Form::Json, body, Bytes::new(), usage);
    }

    /// Start capturing a stream (`None` for a non-stream request).
    pub fn capture(self) -> Option<Capture> {
        self.stream.then(|| Capture {
            buf: BytesMut::new(),
            usage_event: Bytes::new(),
            finished: false,
            done: false,
            fill: Some(self),
        })
    }

    fn commit(self, form: Form, body: Bytes, usage_event: Bytes, usage: Option<Usage>) {
        let now = now_ms();
        let entry = Arc::new(Entry {
            form,
            model: self.model.name.clone(),
            team: self.team.clone(),
            created_ms: now,
            expires_ms: now.saturating_add(self.ttl.as_millis() as u64),
            usage,
            body,
            usage_event,
        });
        self.model.memory_put(&self.key, &entry);
        let tiers = &self.model.config.tiers;
        let disk = tiers.contains(&Tier::Disk);
        let redis = tiers.contains(&Tier::Redis);
        if disk || redis {
            self.shared.queue(Write::Put {
                key: self.key,
                entry: entry.clone(),
                disk_max_bytes: disk.then_some(self.model.config.max_bytes.disk),
                redis,
            });
        }
        if let Some(l) = &self.leader {
            l.done(entry);
        }
    }
}

/// A stream being captured for the cache: its events appended to one buffer, up to the model's
/// `max_entry_bytes` (past it the capture stops and nothing is written).
pub struct Capture {
    fill: Option<Fill>,
    buf: BytesMut,
    usage_event: Bytes,
    /// A choice's finish reason was seen.
    finished: bool,
    /// `[DONE]` came after it.
    done: bool,
}

/// An SSE event as the relay read it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Event {
    /// A content chunk (or any other event); `finish`: it carries a finish reason.
    Content {
        finish: bool,
    },
    /// The usage-only chunk (no choices).
    UsageOnly,
    Done,
}

impl Capture {
    /// Note one whole event of the live stream.
    pub fn event(&mut self, bytes: &[u8], kind: Event) {
        let Some(fill) = &self.fill else { return };
        let limit = fill.max_entry_bytes();
        match kind {
            Event::Done => {
                self.done = self.finished;
                return;
            }
            Event::UsageOnly => self.usage_event = Bytes::copy_from_slice(bytes),
            Event::Content { finish } => {
                self.finished |= finish;
                self.buf.extend_from_slice(bytes);
            }
        }
        if (self.buf.len() + self.usage_event.len()) as u64 > limit {
            // Too big to keep: stop capturing, release the memory now.
            self.fill = None;
            self.buf = BytesMut::new();
        }
    }

    /// Whether it still captures.
    pub fn active(&self) -> bool {
        self.fill.is_some()
    }

    /// The stream ended cleanly: written when it was complete (`[DONE]` after a finish reason).
    pub fn complete(&mut self, usage: Option<Usage>) {
        let Some(fill) = self.fill.take() else { return };
        if self.done {
            let body = std::mem::take(&mut self.buf).freeze();
            fill.commit(
                Form::Sse,
                body,
                std::mem::take(&mut self.usage_event),
                usage,
            );
        }
    }
}
