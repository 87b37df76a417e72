//! A guard in front of the HTTP/1 parser against request smuggling.
//!
//! hyper resolves a request carrying both `Content-Length` and `Transfer-Encoding` the RFC 7230
//! way (the transfer coding wins) and never tells us; we want such a request refused. This reader
//! follows the HTTP/1 message framing of the byte stream (heads, fixed-length and chunked bodies)
//! and passes bytes on as they come, holding back at most the `\r` that may start a head's final
//! empty line. When a head turns out ambiguous, a [`MARK`] header line is slipped in before that
//! empty line, so the parser sees it as one more header; the `app` framing middleware then answers
//! 400 and closes the connection. After an ambiguous head, or on anything it does not follow
//! (HTTP/2 prior knowledge, absurd lines), it stops looking and passes bytes through untouched.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

/// The header slipped into an ambiguous head.
pub const MARK: &str = "x-tg-ambiguous";
/// Longest header line it looks into; longer lines make it stop following the stream.
const MAX_LINE: usize = 16 * 1024;

/// What one head has said about its framing so far.
#[derive(Debug, Default)]
struct HeadScan {
    /// The current line (to look at its name and value).
    line: Vec<u8>,
    /// The request line is behind us.
    past_request_line: bool,
    /// A `\r` at the start of a line, not yet passed on.
    held_cr: bool,
    lengths: Vec<u64>,
    te: bool,
    chunked: bool,
}

impl HeadScan {
    /// Look at the header line just completed.
    fn note_header(&mut self) {
        let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return;
        };
        let (name, value) = (&line[..colon], &line[colon + 1..]);
        let value = String::from_utf8_lossy(value).trim().to_ascii_lowercase();
        if name.eq_ignore_ascii_case(b"content-length") {
            self.lengths.push(value.parse().unwrap_or(u64::MAX));
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            self.te = true;
            self.chunked = value.ends_with("chunked");
        }
    }

    /// The framing of the body that follows a complete head.
    fn next_state(&self) -> State {
        if self.chunked {
            return State::ChunkSize(Vec::new());
        }
        match self.lengths.first() {
            Some(n) if *n == u64::MAX => State::PassThrough,
            Some(n) if *n > 0 => State::Body(*n),
            _ => State::Head(HeadScan::default()),
        }
    }

    fn ambiguous(&self) -> bool {
        (self.te && !self.lengths.is_empty()) || self.lengths.windows(2).any(|w| w[0] != w[1])
    }
}

#[derive(Debug)]
enum State {
    Head(HeadScan),
    Body(u64),
    /// Reading a chunk-size line.
    ChunkSize(Vec<u8>),
    ChunkData(u64),
    /// The CRLF after chunk data.
    ChunkEnd(u8),
    /// Trailer lines after the last chunk, up to an empty line; holds the current line length.
    Trailer(usize),
    PassThrough,
}

pub struct Guarded<S> {
    inner: S,
    state: State,
    /// Bytes ready for the reader.
    ready: Vec<u8>,
    ready_pos: usize,
}

impl<S> Guarded<S> {
    pub fn new(inner: S) -> Self {
        Guarded {
            inner,
            state: State::Head(HeadScan::default()),
            ready: Vec::new(),
            ready_pos: 0,
        }
    }

    /// Run newly read bytes through the framing state machine into `ready`.
    fn feed(&mut self, mut input: &[u8]) {
        while let Some((&b, rest)) = input.split_first() {
            match &mut self.state {
                State::PassThrough => {
                    self.ready.extend_from_slice(input);
                    return;
                }
                State::Head(scan) => {
                    input = rest;
                    if std::mem::take(&mut scan.held_cr) {
                        if b == b'\n' {
                            // The empty line: the head is complete.
                            if scan.ambiguous() {
                                self.ready.extend_from_slice(MARK.as_bytes());
                                self.ready.extend_from_slice(b": 1\r\n\r\n");
                                self.state = State::PassThrough;
                            } else {
                                self.ready.extend_from_slice(b"\r\n");
                                self.state = scan.next_state();
                            }
                            continue;
                        }
                        self.ready.push(b'\r');
                        scan.line.push(b'\r');
                    }
                    if b == b'\r' && scan.line.is_empty() && scan.past_request_line {
                        scan.held_cr = true;
                        continue;
                    }
                    self.ready.push(b);
                    if b == b'\n' {
                        if scan.past_request_line {
                            scan.note_header();
                        } else if scan.line.starts_with(b"PRI * HTTP/2.0") {
                            self.state = State::PassThrough;
                            continue;
                        }
                        scan.past_request_line = true;
                        scan.line.clear();
                    } else {
                        scan.line.push(b);
                        if scan.line.len() > MAX_LINE {
                            self.state = State::PassThrough;
                        }
                    }
                }
                State::Body(n) => {
                    let take = (*n).min(input.len() as u64) as usize;
                    self.ready.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    *n -= take as u64;
                    if *n == 0 {
                        self.state = State::Head(HeadScan::default());
                    }
                }
                State::ChunkSize(line) => {
                    let Some(i) = input.iter().position(|c| *c == b'\n') else {
                        line.extend_from_slice(input);
                        self.ready.extend_from_slice(input);
                        if line.len() > 1024 {
                            self.state = State::PassThrough;
                        }
                        return;
                    };
                    line.extend_from_slice(&input[..i]);
                    self.ready.extend_from_slice(&input[..=i]);
                    input = &input[i + 1..];
                    let text = String::from_utf8_lossy(line);
                    let hex = text.split(';').next().unwrap_or("").trim();
                    self.state = match u64::from_str_radix(hex, 16) {
                        Ok(0) => State::Trailer(0),
                        Ok(n) => State::ChunkData(n),
                        Err(_) => State::PassThrough,
                    };
                }
                State::ChunkData(n) => {
                    let take = (*n).min(input.len() as u64) as usize;
                    self.ready.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    *n -= take as u64;
                    if *n == 0 {
                        self.state = State::ChunkEnd(2);
                    }
                }
                State::ChunkEnd(left) => {
                    self.ready.push(b);
                    input = rest;
                    *left -= 1;
                    if *left == 0 {
                        self.state = State::ChunkSize(Vec::new());
                    }
                }
                State::Trailer(len) => {
                    self.ready.push(b);
                    input = rest;
                    match b {
                        b'\n' if *len == 0 => self.state = State::Head(HeadScan::default()),
                        b'\n' => *len = 0,
                        b'\r' => {}
                        _ => *len += 1,
                    }
                }
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Guarded<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        loop {
            if this.ready_pos < this.ready.len() {
                let n = (this.ready.len() - this.ready_pos).min(buf.remaining());
                buf.put_slice(&this.ready[this.ready_pos..this.ready_pos + n]);
                this.ready_pos += n;
                if this.ready_pos == this.ready.len() {
                    this.ready.clear();
                    this.ready_pos = 0;
                }
                return Poll::Ready(Ok(()));
            }
            if matches!(this.state, State::PassThrough) {
                // Nothing left to follow: read straight into the caller's buffer.
                return Pin::new(&mut this.inner).poll_read(cx, buf);
            }
            let mut tmp = [const { std::mem::MaybeUninit::<u8>::uninit() }; 8192];
            let mut rb = ReadBuf::uninit(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let got = rb.filled();
                    if got.is_empty() {
                        // EOF: hand over a held-back `\r`, then EOF.
                        if let State::Head(scan) = &mut this.state {
                            if std::mem::take(&mut scan.held_cr) {
                                this.ready.push(b'\r');
                                continue;
                            }
                        }
                        return Poll::Ready(Ok(()));
                    }
                    this.feed(got);
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(input: &[&[u8]]) -> Vec<u8> {
        let mut g = Guarded::new(());
        for part in input {
            g.feed(part);
        }
        g.ready
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    #[test]
    fn ambiguous_head_is_marked_wherever_the_reads_split() {
        let req: &[u8] = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        for cut in 1..req.len() {
            let out = run(&[&req[..cut], &req[cut..]]);
            assert_eq!(out.len(), req.len() + MARK.len() + 5, "cut {cut}");
            assert!(
                find(&out, b"chunked\r\nx-tg-ambiguous: 1\r\n\r\n5\r\n").is_some(),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn keep_alive_requests_are_followed_through_bodies() {
        let a: &[u8] = b"POST / HTTP/1.1\r\nContent-Length: 4\r\n\r\n\r\n\r\n";
        let b = [
            &b"POST / HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n"[..],
            b"3;x=y\r\n",
            b"\r\n\r",
            b"\r\n0\r\nT: 1\r\n\r\n",
        ]
        .concat();
        let c: &[u8] =
            b"POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        let all = [a, &b, c].concat();
        for cut in 0..all.len() {
            let out = run(&[&all[..cut], &all[cut..]]);
            // Only the third request is marked: CRLFs inside bodies were not taken for heads.
            assert_eq!(
                out.windows(14).filter(|w| *w == MARK.as_bytes()).count(),
                1,
                "cut {cut}"
            );
            assert!(
                out.ends_with(b"chunked\r\nx-tg-ambiguous: 1\r\n\r\n"),
                "cut {cut}"
            );
            assert_eq!(out.len(), all.len() + MARK.len() + 5);
        }
    }

    #[test]
    fn a_partial_head_is_passed_on_at_once() {
        assert_eq!(
            run(&[b"POST / HTTP/1.1\r\nhost: x"]),
            b"POST / HTTP/1.1\r\nhost: x"
        );
    }
}
