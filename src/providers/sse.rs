//! Server-sent events: the one splitter of a byte stream into events, and the reading of an
//! event's `data`. The relay and the attempt step (`proxy::sse`) and the providers that translate
//! a vendor's stream (`ernie`, `anthropic`) all split with it, so every step sees the same events however the
//! upstream cuts its stream into chunks (a property test in `proxy::sse` holds it to that). No
//! I/O, no state.

use std::borrow::Cow;

/// The complete SSE events at the front of a buffer, in order, each through its blank line
/// (`\n\n` or `\n\r\n`); a partial event at the end is left for more bytes. The one SSE
/// splitter: the relay, the attempt step's first-event check and the stream translating
/// providers use it, and a property test holds it to giving the same events however the stream
/// is cut into chunks.
pub struct Events<'a> {
    buf: &'a [u8],
    pos: usize,
}

impl<'a> Events<'a> {
    pub fn new(buf: &'a [u8]) -> Self {
        Events { buf, pos: 0 }
    }

    /// Bytes taken by the events returned so far.
    pub fn consumed(&self) -> usize {
        self.pos
    }
}

impl<'a> Iterator for Events<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        let rest = self.buf.get(self.pos..)?;
        let len = event_len(rest)?;
        let event = rest.get(..len)?;
        self.pos += len;
        Some(event)
    }
}

/// Length of the first complete SSE event (through its blank line), if there is one.
fn event_len(buf: &[u8]) -> Option<usize> {
    let mut i = 0;
    while i + 1 < buf.len() {
        if buf[i] == b'\n' {
            if buf[i + 1] == b'\n' {
                return Some(i + 2);
            }
            if buf[i + 1] == b'\r' && buf.get(i + 2) == Some(&b'\n') {
                return Some(i + 3);
            }
        }
        i += 1;
    }
    None
}

/// An event's data: its `data:` lines joined by newlines (one optional space after the colon
/// dropped), borrowed when there is one such line, as there is in every OpenAI-shaped stream.
/// `None` when the event has no data line (a comment, a keep-alive).
pub fn data(event: &[u8]) -> Option<Cow<'_, [u8]>> {
    let mut lines = event
        .split(|b| *b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .filter_map(|line| line.strip_prefix(b"data:"))
        .map(|d| d.strip_prefix(b" ").unwrap_or(d));
    let first = lines.next()?;
    let Some(second) = lines.next() else {
        return Some(Cow::Borrowed(first));
    };
    let mut joined = first.to_vec();
    for line in std::iter::once(second).chain(lines) {
        joined.push(b'\n');
        joined.extend_from_slice(line);
    }
    Some(Cow::Owned(joined))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn event_boundaries() {
        assert_eq!(event_len(b"data: a\n\ndata: b"), Some(9));
        assert_eq!(event_len(b"data: a\r\n\r\n"), Some(11));
        assert_eq!(event_len(b"data: a\n"), None);
    }
}
