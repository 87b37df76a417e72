//! A guard in front of the HTTP/1 parser against request smuggling.
//!
//! hyper resolves a request carrying both `Content-Length` and `Transfer-Encoding` the RFC 7230
//! way (the transfer coding wins) and never tells us; we want such a request refused. This reader
//! follows the HTTP/1 message framing of the byte stream (heads, fixed-length and chunked bodies)
//! exactly as hyper frames it, and passes bytes on unchanged as they come, holding back at most
//! the `\r` that may start a head's final empty line (and, at the very start of a connection, the
//! few bytes that might still turn out to be the HTTP/2 preface).
//!
//! It refuses rather than follows: any head it cannot vouch for gets a [`MARK`] header line
//! slipped in before the head's final empty line, so the parser sees one more header and the
//! `app` framing middleware answers 400 with `Connection: close`. A head is not vouched for when
//! it has a bare LF anywhere (the final empty line included), a line longer than [`MAX_LINE`],
//! `Content-Length` together with `Transfer-Encoding`, more than one `Content-Length` (equal or
//! not), a `Content-Length` that is not plain digits, or a `Transfer-Encoding` whose last coding
//! is not `chunked`. After a marked head nothing more is handed to the parser (the bytes are read
//! and dropped until the connection closes), so no later message can be smuggled behind it.
//!
//! Chunked bodies are followed with hyper's own grammar (`hyper/src/proto/h1/decode.rs`): where
//! hyper would refuse a chunk line, the guard passes the bytes up to that point and then fails
//! the read, so the two can never disagree on where a message ends while the connection lives.
//! The only stream it passes through untouched is HTTP/2 prior knowledge (the full preface at
//! the start of the connection). No route upgrades a connection (101, or 2xx to CONNECT); one
//! that did would need to switch the guard to pass-through, or it would read the upgraded bytes
//! as HTTP/1.
//!
//! On the write side it holds the write deadline ([`Guarded::with_write_timeout`]): a client that
//! stops reading cannot keep a response (and the memory behind it) forever.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::Sleep;

use super::conn::CloseReason;

/// The header slipped into a head the guard cannot vouch for.
pub const MARK: &str = "x-tg-ambiguous";
/// Longest head line (request line or header) accepted; a longer one marks its head.
pub const MAX_LINE: usize = 16 * 1024;
/// The HTTP/2 connection preface (prior knowledge).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";
/// hyper's limit on chunk-extension bytes in one body.
const CHUNK_EXT_LIMIT: u64 = 16 * 1024;
/// hyper's limit on trailer bytes in one body.
const TRAILER_LIMIT: usize = 16 * 1024;

/// What one head has said about its framing so far.
#[derive(Debug, Default)]
struct HeadScan {
    /// The start of the current line (up to [`MAX_LINE`] bytes), to read its name and value.
    line: Vec<u8>,
    /// The full length of the current line, counted past [`MAX_LINE`].
    line_len: usize,
    /// The last byte of the current line.
    last: u8,
    /// The request line is behind us.
    past_request_line: bool,
    /// A `\r` at the start of a line, not yet passed on.
    held_cr: bool,
    /// `Content-Length` headers seen.
    lengths: usize,
    /// The value of the first `Content-Length`, when it is plain digits.
    length: Option<u64>,
    /// A `Content-Length` that is not plain digits.
    bad_length: bool,
    te: bool,
    /// The last `Transfer-Encoding` ends in `chunked`.
    chunked: bool,
    bare_lf: bool,
    overlong: bool,
}

impl HeadScan {
    /// Look at the header line just completed (without its line end).
    fn note_header(&mut self) {
        if self.line_len > MAX_LINE {
            return; // marked anyway
        }
        let line = self.line.strip_suffix(b"\r").unwrap_or(&self.line);
        let Some(colon) = line.iter().position(|b| *b == b':') else {
            return;
        };
        let (name, value) = (&line[..colon], trim(&line[colon + 1..]));
        if name.eq_ignore_ascii_case(b"content-length") {
            self.lengths += 1;
            match plain_digits(value) {
                Some(n) if self.lengths == 1 => self.length = Some(n),
                Some(_) => {}
                None => self.bad_length = true,
            }
        } else if name.eq_ignore_ascii_case(b"transfer-encoding") {
            // As hyper reads it: the last coding of the last Transfer-Encoding line.
            self.te = true;
            let last = value.rsplit(|b| *b == b',').next().unwrap_or_default();
            self.chunked = value
                .iter()
                .all(|b| (0x20..0x7f).contains(b) || *b == b'\t')
                && trim(last).eq_ignore_ascii_case(b"chunked");
        }
    }

    /// The head cannot be vouched for: it gets the mark.
    fn suspect(&self) -> bool {
        self.bare_lf
            || self.overlong
            || self.lengths > 1
            || self.bad_length
            || (self.te && (self.lengths > 0 || !self.chunked))
    }

    /// The framing of the body that follows a complete, vouched-for head.
    fn next_state(&self) -> State {
        if self.chunked {
            return State::Chunk(Chunk::default());
        }
        match self.length {
            Some(n) if n > 0 => State::Body(n),
            _ => State::Head(HeadScan::default()),
        }
    }
}

fn trim(mut v: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = v {
        v = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = v {
        v = rest;
    }
    v
}

/// 1 to 19 ASCII digits that fit a u64; anything else (signs, lists, spaces) is refused.
fn plain_digits(v: &[u8]) -> Option<u64> {
    if v.is_empty() || !v.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(v).ok()?.parse().ok()
}

/// Where in a chunked body we are, state for state as hyper's decoder.
#[derive(Debug, Default, Clone, Copy, PartialEq)]
enum ChunkStep {
    /// Expecting the first hex digit of a size.
    #[default]
    Start,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    /// After the last chunk: a trailer line or the final CRLF.
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

#[derive(Debug, Default)]
struct Chunk {
    step: ChunkStep,
    /// The size being read, then the data bytes left.
    size: u64,
    ext: u64,
    trailer: usize,
    trailers: usize,
}

/// What follows from one byte of a chunked body.
enum ChunkNext {
    More,
    Done,
    /// hyper refuses this byte: the connection will not carry another message.
    Broken,
}

impl Chunk {
    fn byte(&mut self, b: u8) -> ChunkNext {
        use ChunkStep::*;
        let hex = |b: u8| (b as char).to_digit(16).map(u64::from);
        self.step = match (self.step, b) {
            (Start | Size, _) if hex(b).is_some() => {
                match self
                    .size
                    .checked_mul(16)
                    .and_then(|s| s.checked_add(hex(b).unwrap_or(0)))
                {
                    Some(s) => self.size = s,
                    None => return ChunkNext::Broken,
                }
                Size
            }
            (Size | SizeLws, b' ' | b'\t') => SizeLws,
            (Size | SizeLws, b';') => Extension,
            (Size | SizeLws | Extension, b'\r') => SizeLf,
            (Extension, b'\n') => return ChunkNext::Broken,
            (Extension, _) => {
                self.ext += 1;
                if self.ext >= CHUNK_EXT_LIMIT {
                    return ChunkNext::Broken;
                }
                Extension
            }
            (SizeLf, b'\n') if self.size == 0 => EndCr,
            (SizeLf, b'\n') => Data,
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Start,
            (EndCr, b'\r') => EndLf,
            (Trailer, b'\r') => TrailerLf,
            (EndCr | Trailer, _) => {
                self.trailer += 1;
                if self.trailer >= TRAILER_LIMIT {
                    return ChunkNext::Broken;
                }
                Trailer
            }
            (TrailerLf, b'\n') => {
                self.trailers += 1;
                if self.trailers > 100 || self.trailer + self.trailers * 2 >= TRAILER_LIMIT {
                    return ChunkNext::Broken;
                }
                EndCr
            }
            (EndLf, b'\n') => return ChunkNext::Done,
            _ => return ChunkNext::Broken,
        };
        ChunkNext::More
    }
}

#[derive(Debug)]
enum State {
    /// The first bytes of the connection, held while they may still be the HTTP/2 preface.
    Preface(Vec<u8>),
    Head(HeadScan),
    Body(u64),
    Chunk(Chunk),
    /// HTTP/2 prior knowledge: bytes pass untouched.
    PassThrough,
    /// After a marked head: nothing more reaches the parser.
    Discard,
    /// A chunked body hyper refuses: the read fails once the bytes before it are handed over.
    Broken,
}

pub struct Guarded<S> {
    inner: S,
    state: State,
    /// Bytes ready for the reader.
    ready: Vec<u8>,
    ready_pos: usize,
    /// How long one write may stay blocked; `None`: forever.
    write_timeout: Option<Duration>,
    /// Armed when a write blocks, dropped when one goes through.
    write_stall: Option<Pin<Box<Sleep>>>,
    /// The write deadline passed: every write fails from now on.
    write_timed_out: bool,
}

impl<S> Guarded<S> {
    pub fn new(inner: S) -> Self {
        Guarded {
            inner,
            state: State::Preface(Vec::new()),
            ready: Vec::new(),
            ready_pos: 0,
            write_timeout: None,
            write_stall: None,
            write_timed_out: false,
        }
    }

    /// Fail the connection when one write stays blocked (the client stopped reading and the
    /// socket buffers are full) for longer than `t`: hyper then drops the connection and the
    /// response it was holding.
    pub fn with_write_timeout(mut self, t: Duration) -> Self {
        self.write_timeout = Some(t);
        self
    }

    /// A write returned `Pending`: wait on the deadline too, and fail once it has passed.
    fn write_blocked<T>(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<T>> {
        let Some(t) = self.write_timeout else {
            return Poll::Pending;
        };
        let stall = self
            .write_stall
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(t)));
        match stall.as_mut().poll(cx) {
            Poll::Pending => Poll::Pending,
            Poll::Ready(()) => {
                self.write_stall = None;
                self.write_timed_out = true;
                CloseReason::WriteTimeout.count();
                Poll::Ready(Err(timed_out()))
            }
        }
    }

    /// What a write returned, through the deadline.
    fn write_result<T>(
        &mut self,
        cx: &mut Context<'_>,
        r: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match r {
            Poll::Pending => self.write_blocked(cx),
            ready => {
                self.write_stall = None;
                ready
            }
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
                State::Discard | State::Broken => return,
                State::Preface(held) => {
                    if H2_PREFACE.get(held.len()) == Some(&b) {
                        held.push(b);
                        input = rest;
                        if held.len() == H2_PREFACE.len() {
                            self.ready.extend_from_slice(H2_PREFACE);
                            self.state = State::PassThrough;
                        }
                        continue;
                    }
                    let held = std::mem::take(held);
                    self.state = State::Head(HeadScan::default());
                    self.feed(&held);
                }
                State::Head(scan) => {
                    // Up to the next LF every byte is an ordinary line byte, unless it is a CR or
                    // LF that starts a line or follows a held CR: take such a run whole.
                    if !scan.held_cr && b != b'\n' && (scan.line_len > 0 || b != b'\r') {
                        let end = memchr::memchr(b'\n', input).unwrap_or(input.len());
                        let (run, after) = input.split_at(end);
                        scan.push_run(run);
                        self.ready.extend_from_slice(run);
                        input = after;
                        continue;
                    }
                    input = rest;
                    if std::mem::take(&mut scan.held_cr) {
                        if b == b'\n' {
                            if scan.past_request_line {
                                self.end_head(b"\r\n");
                            } else {
                                // An empty line before the request line: hyper skips it.
                                self.ready.extend_from_slice(b"\r\n");
                            }
                            continue;
                        }
                        self.ready.push(b'\r');
                        scan.push(b'\r');
                    }
                    match b {
                        b'\r' if scan.line_len == 0 => scan.held_cr = true,
                        b'\n' if scan.line_len == 0 => {
                            // An empty line ended by a bare LF.
                            scan.bare_lf = true;
                            if scan.past_request_line {
                                self.end_head(b"\n");
                            } else {
                                self.ready.push(b'\n');
                            }
                        }
                        b'\n' => {
                            if scan.last != b'\r' {
                                scan.bare_lf = true;
                            }
                            if scan.past_request_line {
                                scan.note_header();
                            }
                            scan.past_request_line = true;
                            scan.line.clear();
                            scan.line_len = 0;
                            scan.last = 0;
                            self.ready.push(b'\n');
                        }
                        _ => {
                            scan.push(b);
                            self.ready.push(b);
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
                State::Chunk(c) if c.step == ChunkStep::Data => {
                    let take = c.size.min(input.len() as u64) as usize;
                    self.ready.extend_from_slice(&input[..take]);
                    input = &input[take..];
                    c.size -= take as u64;
                    if c.size == 0 {
                        c.step = ChunkStep::DataCr;
                    }
                }
                State::Chunk(c) => {
                    self.ready.push(b);
                    input = rest;
                    match c.byte(b) {
                        ChunkNext::More => {}
                        ChunkNext::Done => self.state = State::Head(HeadScan::default()),
                        ChunkNext::Broken => self.state = State::Broken,
                    }
                }
            }
        }
    }

    /// The final empty line of a head (`eol` is how it ended): mark it or follow its body.
    fn end_head(&mut self, eol: &[u8]) {
        let State::Head(scan) = &self.state else {
            return;
        };
        if scan.suspect() {
            self.ready.extend_from_slice(MARK.as_bytes());
            self.ready.extend_from_slice(b": 1\r\n");
            self.ready.extend_from_slice(eol);
            self.state = State::Discard;
        } else {
            self.ready.extend_from_slice(eol);
            self.state = scan.next_state();
        }
    }

    /// At EOF: hand over what was held back.
    fn flush_held(&mut self) -> bool {
        match &mut self.state {
            State::Head(scan) if scan.held_cr => {
                scan.held_cr = false;
                self.ready.push(b'\r');
                true
            }
            State::Preface(held) if !held.is_empty() => {
                let held = std::mem::take(held);
                self.ready.extend_from_slice(&held);
                true
            }
            _ => false,
        }
    }
}

impl HeadScan {
    /// One more byte of the current line.
    fn push(&mut self, b: u8) {
        self.push_run(&[b]);
    }

    /// [`Self::push`] for each byte of `run` (no LF in it), in one go.
    fn push_run(&mut self, run: &[u8]) {
        let Some(&last) = run.last() else {
            return;
        };
        self.line_len += run.len();
        self.last = last;
        let room = MAX_LINE.saturating_sub(self.line.len());
        self.line.extend_from_slice(&run[..room.min(run.len())]);
        if run.len() > room {
            self.overlong = true;
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
            match this.state {
                // Nothing left to follow: read straight into the caller's buffer.
                State::PassThrough => return Pin::new(&mut this.inner).poll_read(cx, buf),
                State::Broken => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "malformed chunked body",
                    )))
                }
                _ => {}
            }
            let mut tmp = [const { std::mem::MaybeUninit::<u8>::uninit() }; 8192];
            let mut rb = ReadBuf::uninit(&mut tmp);
            match Pin::new(&mut this.inner).poll_read(cx, &mut rb) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Ready(Ok(())) => {
                    let got = rb.filled();
                    if got.is_empty() {
                        if this.flush_held() {
                            continue;
                        }
                        return Poll::Ready(Ok(()));
                    }
                    this.feed(got);
                }
            }
        }
    }
}

fn timed_out() -> io::Error {
    io::Error::new(
        io::ErrorKind::TimedOut,
        "client stopped reading: write deadline passed",
    )
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Guarded<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.write_timed_out {
            return Poll::Ready(Err(timed_out()));
        }
        let r = Pin::new(&mut this.inner).poll_write(cx, buf);
        this.write_result(cx, r)
    }
    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        if this.write_timed_out {
            return Poll::Ready(Err(timed_out()));
        }
        let r = Pin::new(&mut this.inner).poll_flush(cx);
        this.write_result(cx, r)
    }
    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if this.write_timed_out {
            return Poll::Ready(Err(timed_out()));
        }
        let r = Pin::new(&mut this.inner).poll_write_vectored(cx, bufs);
        this.write_result(cx, r)
    }
    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn run(input: &[&[u8]]) -> Vec<u8> {
        let mut g = Guarded::new(());
        for part in input {
            g.feed(part);
        }
        while g.flush_held() {}
        g.ready
    }

    fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
        hay.windows(needle.len()).position(|w| w == needle)
    }

    const MARK_LINE: &[u8] = b"x-tg-ambiguous: 1\r\n";

    #[test]
    fn ambiguous_head_is_marked_wherever_the_reads_split() {
        let req: &[u8] = b"POST / HTTP/1.1\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
        let head_end = find(req, b"\r\n\r\n").unwrap_or_default() + 4;
        for cut in 1..req.len() {
            let out = run(&[&req[..cut], &req[cut..]]);
            // Marked, and nothing after the marked head reaches the parser.
            assert_eq!(
                out,
                [&req[..head_end - 2], MARK_LINE, b"\r\n"].concat(),
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
            assert_eq!(out.windows(14).filter(|w| *w == MARK.as_bytes()).count(), 1);
            assert!(
                out.ends_with(b"chunked\r\nx-tg-ambiguous: 1\r\n\r\n"),
                "cut {cut}"
            );
            assert_eq!(out.len(), all.len() + MARK_LINE.len());
        }
    }

    #[test]
    fn a_partial_head_is_passed_on_at_once() {
        assert_eq!(
            run(&[b"POST / HTTP/1.1\r\nhost: x"]),
            b"POST / HTTP/1.1\r\nhost: x"
        );
    }

    #[test]
    fn a_bare_lf_head_is_marked_where_the_parser_ends_it() {
        // The body looks like a CL+TE request; a guard that misses the bare-LF head end would
        // mark inside the body and shift the parser's boundary.
        let smuggled =
            b"POST / HTTP/1.1\r\ncontent-length: 3\r\ntransfer-encoding: chunked\r\n\r\n";
        let head = b"POST / HTTP/1.1\nhost: x\ncontent-length: 70\n\n";
        let out = run(&[head, smuggled]);
        assert_eq!(
            out,
            b"POST / HTTP/1.1\nhost: x\ncontent-length: 70\nx-tg-ambiguous: 1\r\n\n"
        );
        // One bare LF in an otherwise CRLF head is enough.
        let out = run(&[b"GET / HTTP/1.1\r\nhost: x\n\r\n"]);
        assert_eq!(
            out,
            [&b"GET / HTTP/1.1\r\nhost: x\n"[..], MARK_LINE, b"\r\n"].concat()
        );
    }

    #[test]
    fn an_overlong_line_marks_its_head_and_the_guard_keeps_following() {
        let long = format!("x-long: {}\r\n", "a".repeat(MAX_LINE + 10));
        let head = format!(
            "GET / HTTP/1.1\r\n{long}content-length: 2\r\ntransfer-encoding: chunked\r\n\r\n"
        );
        let out = run(&[head.as_bytes()]);
        assert_eq!(
            out,
            [&head.as_bytes()[..head.len() - 2], MARK_LINE, b"\r\n"].concat()
        );
        // An overlong line alone marks too.
        let head = format!("GET / HTTP/1.1\r\n{long}\r\n");
        assert!(find(&run(&[head.as_bytes()]), MARK_LINE).is_some());
    }

    #[test]
    fn content_length_must_be_one_plain_number() {
        for cl in [
            "content-length: 5\r\ncontent-length: 5",
            "content-length: 5, 5",
            "content-length: +5",
            "content-length: 0x5",
            "content-length: 99999999999999999999999",
            "content-length:",
            "transfer-encoding: gzip",
        ] {
            let head = format!("POST / HTTP/1.1\r\n{cl}\r\n\r\nhello");
            let out = run(&[head.as_bytes()]);
            assert!(out.ends_with(b"x-tg-ambiguous: 1\r\n\r\n"), "{cl}");
        }
        let out = run(&[b"POST / HTTP/1.1\r\ncontent-length:  5 \r\n\r\nhello"]);
        assert_eq!(out, b"POST / HTTP/1.1\r\ncontent-length:  5 \r\n\r\nhello");
    }

    #[test]
    fn leading_empty_lines_are_not_the_request_line() {
        let req: &[u8] =
            b"\r\n\r\nPOST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n";
        assert!(run(&[req]).ends_with(b"x-tg-ambiguous: 1\r\n\r\n"));
        let req: &[u8] = b"\r\nGET / HTTP/1.1\r\nhost: x\r\n\r\n";
        assert_eq!(run(&[req]), req);
    }

    #[test]
    fn a_chunk_line_hyper_refuses_ends_the_stream() {
        for bad in [
            &b"zz\r\n"[..],
            b"5\nhello\r\n",
            b"5;a\nb\r\nhello\r\n",
            b"5\r\nhelloXX",
            b"fffffffffffffffff\r\n",
            b" 5\r\n",
        ] {
            let head = b"POST / HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n";
            let next = b"GET /smuggled HTTP/1.1\r\n\r\n";
            let mut g = Guarded::new(());
            g.feed(&[&head[..], bad, next].concat());
            assert!(matches!(g.state, State::Broken), "{bad:?}");
            assert!(find(&g.ready, b"smuggled").is_none(), "{bad:?}");
        }
    }

    #[test]
    fn http2_prior_knowledge_passes_untouched() {
        let bytes = [H2_PREFACE, b"\0\0\x04\x01\r\n\n\n"].concat();
        for cut in 0..bytes.len() {
            assert_eq!(run(&[&bytes[..cut], &bytes[cut..]]), bytes, "cut {cut}");
        }
        // The preface later on a connection, or only its first line, is HTTP/1.
        let out = run(&[b"PRI * HTTP/2.0\r\n\r\nXX"]);
        assert_eq!(out, b"PRI * HTTP/2.0\r\n\r\nXX");
        let mut g = Guarded::new(());
        g.feed(&[&b"GET / HTTP/1.1\r\n\r\n"[..], H2_PREFACE].concat());
        assert!(matches!(g.state, State::Head(_)));
    }

    // --- Property: the guard never changes what the parser sees, and marks what it must ---

    /// One message of a random keep-alive stream.
    #[derive(Debug, Clone)]
    enum Body {
        None,
        Length(Vec<u8>),
        /// Chunks, each with an optional extension; then trailers.
        Chunked(Vec<(Vec<u8>, bool)>, Vec<String>),
    }

    fn token() -> impl Strategy<Value = String> {
        "[a-zA-Z][a-zA-Z0-9-]{0,12}".prop_filter("not a framing header", |n| {
            let l = n.to_ascii_lowercase();
            l != "content-length" && l != "transfer-encoding"
        })
    }

    /// Body bytes that like to look like heads and chunk lines.
    fn body_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop::collection::vec(
            prop_oneof![
                any::<u8>().prop_map(|b| vec![b]),
                Just(b"\r\n".to_vec()),
                Just(b"\n".to_vec()),
                Just(b"\r\n\r\n".to_vec()),
                Just(
                    b"POST / HTTP/1.1\r\ncontent-length: 1\r\ntransfer-encoding: chunked\r\n\r\n"
                        .to_vec()
                ),
                Just(b"0\r\n\r\n".to_vec()),
            ],
            0..12,
        )
        .prop_map(|v| v.concat())
    }

    fn body() -> impl Strategy<Value = Body> {
        prop_oneof![
            Just(Body::None),
            body_bytes().prop_map(Body::Length),
            (
                prop::collection::vec(
                    (
                        body_bytes().prop_filter("non-empty", |b| !b.is_empty()),
                        any::<bool>()
                    ),
                    0..4
                ),
                prop::collection::vec(token(), 0..3)
            )
                .prop_map(|(c, t)| Body::Chunked(c, t)),
        ]
    }

    /// What makes a head suspect.
    #[derive(Debug, Clone)]
    enum Flaw {
        ClAndTe,
        TwoLengths,
        OddLength(&'static str),
        /// A bare LF ends line `n` of the head (the last one is the final empty line).
        BareLf(usize),
        Overlong,
    }

    fn flaw() -> impl Strategy<Value = Flaw> {
        prop_oneof![
            Just(Flaw::ClAndTe),
            Just(Flaw::TwoLengths),
            prop::sample::select(vec!["5, 5", "+5", "-0", "1 2", "0x10", ""])
                .prop_map(Flaw::OddLength),
            (0usize..16).prop_map(Flaw::BareLf),
            Just(Flaw::Overlong),
        ]
    }

    /// The bytes of one message; with a flaw, also where its head's final empty line starts.
    fn message(
        leading: usize,
        headers: &[(String, String)],
        body: &Body,
        flaw: Option<&Flaw>,
    ) -> (Vec<u8>, usize) {
        let mut lines: Vec<String> = vec!["POST /v1/x HTTP/1.1".into()];
        lines.extend(headers.iter().map(|(n, v)| format!("{n}: {v}")));
        let mut tail = Vec::new();
        match body {
            Body::None => {}
            Body::Length(b) => {
                lines.push(format!("Content-Length: {}", b.len()));
                tail.extend_from_slice(b);
            }
            Body::Chunked(chunks, trailers) => {
                lines.push("transfer-encoding: gzip, Chunked".into());
                for (c, ext) in chunks {
                    let ext = if *ext { ";a=b" } else { "" };
                    tail.extend_from_slice(format!("{:X}{ext}\r\n", c.len()).as_bytes());
                    tail.extend_from_slice(c);
                    tail.extend_from_slice(b"\r\n");
                }
                tail.extend_from_slice(b"0\r\n");
                for t in trailers {
                    tail.extend_from_slice(format!("{t}: 1\r\n").as_bytes());
                }
                tail.extend_from_slice(b"\r\n");
            }
        }
        match flaw {
            Some(Flaw::ClAndTe) => {
                lines.push("content-length: 3".into());
                lines.push("Transfer-Encoding: chunked".into());
            }
            Some(Flaw::TwoLengths) => {
                lines.push("content-length: 3".into());
                lines.push("content-length: 3".into());
            }
            Some(Flaw::OddLength(v)) => lines.push(format!("content-length: {v}")),
            Some(Flaw::Overlong) => lines.push(format!("x-big: {}", "b".repeat(MAX_LINE))),
            _ => {}
        }
        let bare = match flaw {
            Some(Flaw::BareLf(n)) => Some(n % (lines.len() + 1)),
            _ => None,
        };
        let mut out = b"\r\n".repeat(leading);
        for (i, l) in lines.iter().enumerate() {
            out.extend_from_slice(l.as_bytes());
            out.extend_from_slice(if bare == Some(i) { b"\n" } else { b"\r\n" });
        }
        let final_line = out.len();
        out.extend_from_slice(if bare == Some(lines.len()) {
            b"\n"
        } else {
            b"\r\n"
        });
        out.extend_from_slice(&tail);
        (out, final_line)
    }

    fn split_run(input: &[u8], cuts: &[usize]) -> Vec<u8> {
        let mut cuts: Vec<usize> = cuts.iter().map(|c| c % (input.len() + 1)).collect();
        cuts.sort_unstable();
        let mut parts = Vec::new();
        let mut at = 0;
        for c in cuts {
            parts.push(&input[at..c]);
            at = c;
        }
        parts.push(&input[at..]);
        run(&parts)
    }

    type Msg = (usize, Vec<(String, String)>, Body);

    fn msg() -> impl Strategy<Value = Msg> {
        (
            0usize..3,
            prop::collection::vec((token(), "[ -~]{0,20}"), 0..5),
            body(),
        )
    }

    proptest! {
        // `PROPTEST_CASES=100000 cargo nextest run --lib framing` for a longer run.
        #![proptest_config(ProptestConfig::with_cases(
            std::env::var("PROPTEST_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(256)
        ))]

        /// Well-framed keep-alive streams come out byte for byte, however the reads split.
        #[test]
        fn clean_streams_pass_unchanged(
            msgs in prop::collection::vec(msg(), 1..5),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let input: Vec<u8> = msgs.iter().flat_map(|(l, h, b)| message(*l, h, b, None).0).collect();
            let out = split_run(&input, &cuts);
            prop_assert_eq!(out, input);
        }

        /// A suspect head after any clean ones is marked before its final empty line, and
        /// the output without the mark is the input up to that head's end, byte for byte.
        #[test]
        fn a_suspect_head_is_always_marked(
            msgs in prop::collection::vec(msg(), 0..4),
            bad in msg(),
            flaw in flaw(),
            rest in body_bytes(),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let mut input: Vec<u8> = msgs.iter().flat_map(|(l, h, b)| message(*l, h, b, None).0).collect();
            let (bad_bytes, final_line) = message(bad.0, &bad.1, &bad.2, Some(&flaw));
            let mark_at = input.len() + final_line;
            let eol = if bad_bytes[final_line] == b'\n' { 1 } else { 2 };
            input.extend_from_slice(&bad_bytes);
            input.extend_from_slice(&rest);
            let out = split_run(&input, &cuts);
            let expected = [&input[..mark_at], MARK_LINE, &input[mark_at..mark_at + eol]].concat();
            prop_assert_eq!(out, expected);
        }

        /// Whatever the bytes: the output without marks is a prefix of the input, and it does
        /// not depend on how the input was split into reads.
        #[test]
        fn any_bytes_are_never_rewritten(
            input in prop::collection::vec(
                prop_oneof![
                    any::<u8>().prop_map(|b| vec![b]),
                    Just(b"\r\n".to_vec()),
                    Just(b"\n".to_vec()),
                    Just(b"POST / HTTP/1.1\r\n".to_vec()),
                    Just(b"content-length: 2\r\n".to_vec()),
                    Just(b"transfer-encoding: chunked\r\n".to_vec()),
                    Just(b"3\r\nabc\r\n0\r\n\r\n".to_vec()),
                ],
                0..40,
            ).prop_map(|v| v.concat()),
            cuts in prop::collection::vec(any::<usize>(), 0..8),
        ) {
            let whole = run(&[&input]);
            let out = split_run(&input, &cuts);
            prop_assert_eq!(&out, &whole);
            let marks = out.windows(MARK_LINE.len()).filter(|w| *w == MARK_LINE).count();
            prop_assert!(marks <= 1);
            let unmarked = match find(&out, MARK_LINE) {
                Some(i) => [&out[..i], &out[i + MARK_LINE.len()..]].concat(),
                None => out.clone(),
            };
            prop_assert!(input.starts_with(&unmarked));
        }
    }
}
