//! The log writer: one low-priority thread that writes whole lines to stderr in batches, and the
//! request log line's own formatter.
//!
//! The request line is one per request, so it is written without tracing's field visitors: one
//! append per field into a `Vec<u8>` (`itoa` for integers, `ryu` for floats, JSON escaping as
//! serde_json does it), the same fields, order and values as tracing's JSON formatter gives the
//! same event (a test holds the two to the same bytes). Operational lines still go through
//! tracing, into the same queue, so lines never interleave on stderr.
//!
//! The queue is bounded ([`QUEUE_LINES`]) and not lossy: when it is full (stderr slower than the
//! traffic) a thread that logs waits until the writer has made room, as with the appender this
//! replaced. It takes memory as lines arrive (flume's bounded channel keeps a `VecDeque`), not
//! for its whole bound at start: std's `sync_channel` allocated and wrote all 16,384 slots,
//! 512 KiB of an idle gateway's resident memory. The writer is woken by the first line after a
//! quiet spell; after each write it pauses [`BATCH_INTERVAL`] so that, under load, lines gather
//! and go out in one `write` per interval (up to [`BATCH_BYTES`]) instead of waking a thread per
//! line, and it runs at the lowest CPU priority (nice 19 on Linux) so it never takes the core from
//! the requests it describes. `RUST_LOG` still decides: a filter that leaves `tollgate::request` out at `info`
//! (`RUST_LOG=warn`) turns the request line off before it is formatted.

use flume::{Receiver, Sender, TryRecvError};
use std::io::Write;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use super::RequestRecord;

/// Lines the queue holds before a logging thread waits (about 7 MiB of request lines).
pub const QUEUE_LINES: usize = 16 * 1024;
/// The most the writer hands to one `write`.
pub const BATCH_BYTES: usize = 64 * 1024;
/// The writer's pause after each write, during which lines gather.
pub const BATCH_INTERVAL: Duration = Duration::from_millis(10);

/// One item for the writer.
pub(super) enum Msg {
    Line(Vec<u8>),
    /// Write what is queued and stop (sent by the guard).
    Stop,
}

/// The process's log queue, once [`super::init_logging`] has started the writer.
static QUEUE: OnceLock<Sender<Msg>> = OnceLock::new();

/// The queue the request line goes to, if the writer runs in this process.
pub(super) fn queue() -> Option<&'static Sender<Msg>> {
    QUEUE.get()
}

/// Hand a whole line to the writer. When the writer has stopped (the process is exiting), the
/// line is written directly so that it is not lost.
pub(super) fn send(tx: &Sender<Msg>, line: Vec<u8>) {
    if let Err(e) = tx.send(Msg::Line(line)) {
        if let Msg::Line(line) = e.0 {
            let _ = std::io::stderr().write_all(&line);
        }
    }
}

/// Start the writer thread on `out`; the queue's sender and the thread's handle.
pub(super) fn start<W: Write + Send + 'static>(
    out: W,
) -> std::io::Result<(Sender<Msg>, std::thread::JoinHandle<()>)> {
    let (tx, rx) = flume::bounded(QUEUE_LINES);
    let thread = std::thread::Builder::new()
        .name("tollgate-log".into())
        .spawn(move || {
            lower_priority();
            run(rx, out, BATCH_INTERVAL)
        })?;
    Ok((tx, thread))
}

/// Make `tx` the process's queue (the first call wins).
pub(super) fn install(tx: Sender<Msg>) {
    let _ = QUEUE.set(tx);
}

/// The writer's loop: block until a line comes, take every line queued by then, write them,
/// pause, repeat. Ends on [`Msg::Stop`] or when every sender is gone.
pub(super) fn run<W: Write>(rx: Receiver<Msg>, mut out: W, pause: Duration) {
    let mut buf = Vec::with_capacity(BATCH_BYTES);
    while let Ok(first) = rx.recv() {
        let mut stop = take(first, &mut buf, &mut out);
        while !stop {
            match rx.try_recv() {
                Ok(m) => stop = take(m, &mut buf, &mut out),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Disconnected) => stop = true,
            }
        }
        flush(&mut buf, &mut out);
        if stop {
            return;
        }
        // Not synchronisation: the batching interval (nginx's `flush=`), so that under load
        // the thread wakes once per interval, not once per line.
        std::thread::sleep(pause);
    }
    flush(&mut buf, &mut out);
}

/// Append a line to the batch (writing the batch first when it would grow past
/// [`BATCH_BYTES`]); true on [`Msg::Stop`].
fn take<W: Write>(m: Msg, buf: &mut Vec<u8>, out: &mut W) -> bool {
    match m {
        Msg::Line(line) => {
            if !buf.is_empty() && buf.len() + line.len() > BATCH_BYTES {
                flush(buf, out);
            }
            buf.extend_from_slice(&line);
            false
        }
        Msg::Stop => true,
    }
}

fn flush<W: Write>(buf: &mut Vec<u8>, out: &mut W) {
    if !buf.is_empty() {
        // Nowhere to report a failed write to stderr.
        let _ = out.write_all(buf).and_then(|()| out.flush());
        buf.clear();
    }
}

/// Nice 19 for the calling thread (Linux sets priorities per thread); elsewhere nothing.
fn lower_priority() {
    #[cfg(target_os = "linux")]
    if let Err(e) = rustix::process::setpriority_process(Some(rustix::thread::gettid()), 19) {
        tracing::warn!(error = %e, "log writer: priority not lowered");
    }
}

/// The request line of `r` at `now`, with its newline, appended to `out`.
pub(super) fn format(r: &RequestRecord, now: SystemTime, out: &mut Vec<u8>) {
    out.extend_from_slice(b"{\"timestamp\":\"");
    timestamp(now, out);
    out.extend_from_slice(b"\",\"level\":\"INFO\",\"log_type\":\"request\"");
    string_field(out, "request_id", &r.request_id);
    string_field(out, "endpoint", r.endpoint);
    key(out, "client_addr");
    out.push(b'"');
    socket_addr(out, r.client_addr);
    out.push(b'"');
    string_field(
        out,
        "method",
        r.method.as_ref().map_or("-", http::Method::as_str),
    );
    string_field(out, "path", r.uri.as_ref().map_or("-", http::Uri::path));
    string_field(out, "user_agent", &super::user_agent(r));
    string_field(out, "team", r.team.as_deref().unwrap_or("-"));
    string_field(out, "key_id", r.key_id.as_deref().unwrap_or("-"));
    string_field(out, "model", r.model.as_deref().unwrap_or("-"));
    string_field(out, "upstream", r.upstream.as_deref().unwrap_or("-"));
    int_field(out, "status", u64::from(r.status));
    string_field(out, "error_kind", r.error_kind.unwrap_or("-"));
    bool_field(out, "stream", r.stream);
    float_field(out, "latency_ms", super::millis(r.latency));
    if let Some(t) = r.ttfb {
        float_field(out, "ttfb_ms", super::millis(t));
    }
    int_field(out, "prompt_tokens", r.prompt_tokens);
    int_field(out, "completion_tokens", r.completion_tokens);
    float_field(out, "cost_usd", super::dollars(r.cost_usd));
    bool_field(out, "client_disconnected", r.client_disconnected);
    int_field(out, "attempts", u64::from(r.attempts));
    string_field(out, "attempt_log", &r.attempt_log);
    if let Some(c) = r.cache {
        string_field(out, "cache", c);
    }
    out.extend_from_slice(b",\"target\":\"tollgate::request\"}\n");
}

/// A client address as `Display` writes it (`-` when unknown); IPv4, the common case, without
/// the formatting machinery. An address needs no escaping.
fn socket_addr(out: &mut Vec<u8>, a: Option<std::net::SocketAddr>) {
    match a {
        Some(std::net::SocketAddr::V4(a)) => {
            let mut b = itoa::Buffer::new();
            for (i, o) in a.ip().octets().into_iter().enumerate() {
                if i > 0 {
                    out.push(b'.');
                }
                out.extend_from_slice(b.format(o).as_bytes());
            }
            out.push(b':');
            out.extend_from_slice(b.format(a.port()).as_bytes());
        }
        Some(a) => {
            let _ = write!(out, "{a}");
        }
        None => out.push(b'-'),
    }
}

fn key(out: &mut Vec<u8>, name: &str) {
    out.extend_from_slice(b",\"");
    out.extend_from_slice(name.as_bytes());
    out.extend_from_slice(b"\":");
}

fn string_field(out: &mut Vec<u8>, name: &str, v: &str) {
    key(out, name);
    json_string(out, v);
}

fn int_field(out: &mut Vec<u8>, name: &str, v: u64) {
    key(out, name);
    out.extend_from_slice(itoa::Buffer::new().format(v).as_bytes());
}

fn bool_field(out: &mut Vec<u8>, name: &str, v: bool) {
    key(out, name);
    out.extend_from_slice(if v { b"true" } else { b"false" });
}

/// As serde_json writes an `f64`: shortest round-trip digits, `null` when not finite.
fn float_field(out: &mut Vec<u8>, name: &str, v: f64) {
    key(out, name);
    if v.is_finite() {
        out.extend_from_slice(ryu::Buffer::new().format_finite(v).as_bytes());
    } else {
        out.extend_from_slice(b"null");
    }
}

/// A JSON string as serde_json writes it: `"` and `\` escaped, control characters as `\n`-style
/// or `\u00xx` escapes, everything else (UTF-8 included) as it is.
pub(super) fn json_string(out: &mut Vec<u8>, s: &str) {
    let bytes = s.as_bytes();
    // Most values need no escape: one copy.
    if !bytes.iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\') {
        out.reserve(bytes.len() + 2);
        out.push(b'"');
        out.extend_from_slice(bytes);
        out.push(b'"');
        return;
    }
    out.push(b'"');
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let short = match b {
            b'"' => b'"',
            b'\\' => b'\\',
            b'\n' => b'n',
            b'\r' => b'r',
            b'\t' => b't',
            0x08 => b'b',
            0x0c => b'f',
            0..=0x1f => b'u',
            _ => continue,
        };
        out.extend_from_slice(&bytes[start..i]);
        out.push(b'\\');
        out.push(short);
        if short == b'u' {
            const HEX: &[u8; 16] = b"0123456789abcdef";
            out.extend_from_slice(b"00");
            out.push(HEX[usize::from(b >> 4)]);
            out.push(HEX[usize::from(b & 0xf)]);
        }
        start = i + 1;
    }
    out.extend_from_slice(&bytes[start..]);
    out.push(b'"');
}

/// RFC 3339 in UTC with microseconds (`2026-12-02T02:16:48.123456Z`), as tracing's formatter.
pub(super) fn timestamp(now: SystemTime, out: &mut Vec<u8>) {
    let d = now.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let (y, m, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    let digits = |v: u64, width: usize, out: &mut Vec<u8>| {
        let mut b = itoa::Buffer::new();
        let s = b.format(v);
        out.extend(std::iter::repeat_n(b'0', width.saturating_sub(s.len())));
        out.extend_from_slice(s.as_bytes());
    };
    digits(y.max(0) as u64, 4, out);
    out.push(b'-');
    digits(m, 2, out);
    out.push(b'-');
    digits(day, 2, out);
    out.push(b'T');
    digits(rem / 3600, 2, out);
    out.push(b':');
    digits(rem % 3600 / 60, 2, out);
    out.push(b':');
    digits(rem % 60, 2, out);
    out.push(b'.');
    digits(u64::from(d.subsec_micros()), 6, out);
    out.push(b'Z');
}

/// Year, month, day of a day number since 1970-01-01 (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u64, u64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u64;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u64;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc::{channel, Sender};
    use std::sync::{Arc, Mutex};

    /// A writer that keeps every `write` call apart, and can be held shut until released.
    #[derive(Clone, Default)]
    struct Writes {
        calls: Arc<Mutex<Vec<Vec<u8>>>>,
        gate: Option<Arc<Mutex<std::sync::mpsc::Receiver<()>>>>,
    }

    impl Write for Writes {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            if let Some(g) = &self.gate {
                // Held until the test sends the release (or drops its end).
                let _ = g.lock().map(|rx| rx.recv());
            }
            if let Ok(mut c) = self.calls.lock() {
                c.push(buf.to_vec());
            }
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Writes {
        fn text(&self) -> String {
            let calls = self.calls.lock().map(|c| c.concat()).unwrap_or_default();
            String::from_utf8(calls).unwrap_or_default()
        }
        fn count(&self) -> usize {
            self.calls.lock().map(|c| c.len()).unwrap_or(0)
        }
    }

    fn line(i: usize) -> Vec<u8> {
        format!("{{\"n\":{i},\"pad\":\"{}\"}}\n", "x".repeat(200)).into_bytes()
    }

    #[test]
    fn queued_lines_go_out_in_few_writes_of_at_most_the_batch_size() {
        let (tx, rx) = flume::bounded(QUEUE_LINES);
        let n = 2_000;
        for i in 0..n {
            let _ = tx.send(Msg::Line(line(i)));
        }
        let _ = tx.send(Msg::Stop);
        let out = Writes::default();
        run(rx, out.clone(), Duration::ZERO);
        let expected: Vec<u8> = (0..n).flat_map(line).collect();
        assert_eq!(out.text().as_bytes(), &expected[..]);
        // ~450 KB of lines: 7 batches of at most 64 KiB, not 2,000 writes.
        let max_batches = expected.len().div_ceil(BATCH_BYTES - line(0).len());
        assert!(out.count() <= max_batches, "{} writes", out.count());
        assert!(out
            .calls
            .lock()
            .map(|c| c
                .iter()
                .all(|w| w.len() <= BATCH_BYTES && w.ends_with(b"\n")))
            .unwrap_or(false));
    }

    #[test]
    fn a_full_queue_holds_the_logging_thread_back_and_loses_no_line() {
        let (tx, rx) = flume::bounded(4);
        let (release, gate): (Sender<()>, _) = channel();
        let out = Writes {
            gate: Some(Arc::new(Mutex::new(gate))),
            ..Writes::default()
        };
        let writer = {
            let out = out.clone();
            std::thread::spawn(move || run(rx, out, Duration::ZERO))
        };
        // The writer is stuck in its first write: the queue fills up and says so.
        let mut sent = 0;
        while tx.try_send(Msg::Line(line(sent))).is_ok() {
            sent += 1;
        }
        assert!(sent >= 4, "{sent} lines taken by a queue of 4");
        // A thread that logs now waits for room instead of dropping its lines.
        let producer = std::thread::spawn(move || {
            for i in sent..200 {
                send(&tx, line(i));
            }
            let _ = tx.send(Msg::Stop);
        });
        drop(release);
        let _ = producer.join();
        let _ = writer.join();
        let expected: Vec<u8> = (0..200).flat_map(line).collect();
        assert_eq!(out.text().as_bytes(), &expected[..]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn the_writer_thread_runs_at_the_lowest_priority() {
        let (tx, rx) = channel();
        let _ = std::thread::spawn(move || {
            lower_priority();
            let nice = rustix::process::getpriority_process(Some(rustix::thread::gettid()));
            let _ = tx.send(nice.ok());
        })
        .join();
        assert_eq!(rx.recv().ok().flatten(), Some(19));
    }
}
