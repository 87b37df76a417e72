//! Load generators: open-loop fixed rate, closed-loop max throughput, stream time to first byte,
//! and holding many streams open.
//!
//! All of them use one reqwest client per scenario (HTTP/1.1, keep-alive pool, TCP_NODELAY, no
//! proxy) and send the same request to every target.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use reqwest::{Client, Url};
use serde_json::json;
use tokio_util::sync::CancellationToken;

use super::procs::{KEY, MODEL};
use super::stats::Summary;

/// The request bodies.
#[derive(Clone)]
pub struct Payloads {
    /// A short non-stream chat request (~20 words).
    pub plain: Bytes,
    /// The same, streamed.
    pub stream: Bytes,
    /// A streamed request whose answer has enough words for `words` chunks.
    pub long_stream: Bytes,
}

impl Payloads {
    pub fn new(long_words: usize) -> Payloads {
        let text = "Summarise in one sentence why a gateway in front of model servers \
                    should add as little latency as a plain reverse proxy does.";
        let long: String = (0..long_words.max(1))
            .map(|i| format!("w{i}"))
            .collect::<Vec<_>>()
            .join(" ");
        let body = |content: &str, stream: bool| {
            let mut v = json!({
                "model": MODEL,
                "messages": [
                    {"role": "system", "content": "You are terse."},
                    {"role": "user", "content": content},
                ],
                "temperature": 0.2,
            });
            if stream {
                v["stream"] = json!(true);
            }
            Bytes::from(v.to_string())
        };
        Payloads {
            plain: body(text, false),
            stream: body(text, true),
            long_stream: body(&long, true),
        }
    }
}

/// An HTTP/1.1 client with a keep-alive pool big enough for any scenario.
pub fn client() -> Result<Client> {
    Client::builder()
        .no_proxy()
        .http1_only()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(usize::MAX)
        .pool_idle_timeout(Duration::from_secs(120))
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(60))
        .build()
        .context("build the load generator's HTTP client")
}

/// `base` + `/v1/chat/completions`.
pub fn chat_url(base: &str) -> Result<Url> {
    Url::parse(&format!("{base}/v1/chat/completions")).context("chat URL")
}

pub fn post(client: &Client, url: &Url, body: &Bytes) -> reqwest::RequestBuilder {
    client
        .post(url.clone())
        .header(reqwest::header::AUTHORIZATION, format!("Bearer {KEY}"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.clone())
}

/// One non-stream request, read to the end; Err describes a failure.
pub async fn one(client: &Client, url: &Url, body: &Bytes) -> Result<(), String> {
    let resp = post(client, url, body)
        .send()
        .await
        .map_err(|e| format!("send: {e}"))?;
    let status = resp.status();
    let bytes = resp.bytes().await.map_err(|e| format!("body: {e}"))?;
    if !status.is_success() {
        return Err(format!(
            "status {status}: {}",
            String::from_utf8_lossy(&bytes[..bytes.len().min(200)])
        ));
    }
    Ok(())
}

/// What each request of a scenario sends: the same body every time, or a body made from the
/// request's index (unique requests, e.g. each a cache miss).
#[derive(Clone)]
pub enum Body {
    Same(Bytes),
    Each(Arc<dyn Fn(u64) -> Bytes + Send + Sync>),
}

impl Body {
    fn get(&self, i: u64) -> Bytes {
        match self {
            Body::Same(b) => b.clone(),
            Body::Each(f) => f(i),
        }
    }
}

impl From<&Bytes> for Body {
    fn from(b: &Bytes) -> Body {
        Body::Same(b.clone())
    }
}

/// Errors counted, and the first one's text.
#[derive(Debug, Default, Clone)]
pub struct Errors {
    pub count: usize,
    pub first: Option<String>,
}

impl Errors {
    fn add(&mut self, e: String) {
        self.count += 1;
        if self.first.is_none() {
            self.first = Some(e);
        }
    }
}

/// Result of the open-loop scenario.
pub struct FixedRate {
    pub sent: usize,
    pub errors: Errors,
    /// Latency from each request's intended send time to the end of its response body.
    pub latency: Summary,
    /// How late each request actually started (pacer + scheduler), for reading the figures.
    pub start_lag: Summary,
}

/// Open loop: request i is due at `start + i / rate`; its latency counts from that time, so a
/// stalled target (or generator) cannot hide its queueing (no coordinated omission). The pacer
/// is a plain thread that sleeps until each due time and spawns the request onto the runtime,
/// whatever is still in flight. The first `warmup` is sent but not recorded.
pub async fn fixed_rate(
    client: &Client,
    url: &Url,
    body: impl Into<Body>,
    rate: f64,
    warmup: Duration,
    duration: Duration,
) -> Result<FixedRate> {
    struct Sample {
        measured: bool,
        result: Result<(), String>,
        latency: Duration,
        lag: Duration,
    }
    let handle = tokio::runtime::Handle::current();
    let warm_n = (warmup.as_secs_f64() * rate).round() as u64;
    let total = warm_n + (duration.as_secs_f64() * rate).round() as u64;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<Sample>();
    let (client, url, body) = (client.clone(), url.clone(), body.into());
    let start = Instant::now() + Duration::from_millis(50);
    let pacer = std::thread::Builder::new()
        .name("bench-pacer".into())
        .spawn(move || {
            for i in 0..total {
                let due = start + Duration::from_nanos((i as f64 * 1e9 / rate) as u64);
                let now = Instant::now();
                if due > now {
                    std::thread::sleep(due - now);
                }
                let (client, url, body, tx) =
                    (client.clone(), url.clone(), body.get(i), tx.clone());
                handle.spawn(async move {
                    let lag = due.elapsed();
                    let result = one(&client, &url, &body).await;
                    let latency = due.elapsed();
                    let _ = tx.send(Sample {
                        measured: i >= warm_n,
                        result,
                        latency,
                        lag,
                    });
                });
            }
        })
        .context("spawn the pacer thread")?;
    let mut latencies = Vec::with_capacity(total as usize);
    let mut lags = Vec::with_capacity(total as usize);
    let mut errors = Errors::default();
    let mut sent = 0;
    while let Some(s) = rx.recv().await {
        if !s.measured {
            continue;
        }
        sent += 1;
        lags.push(s.lag);
        match s.result {
            // A failed request still took this long: keep it in the latency set.
            Ok(()) => latencies.push(s.latency),
            Err(e) => {
                latencies.push(s.latency);
                errors.add(e);
            }
        }
    }
    let _ = tokio::task::spawn_blocking(move || pacer.join()).await;
    Ok(FixedRate {
        sent,
        errors,
        latency: Summary::of(&mut latencies),
        start_lag: Summary::of(&mut lags),
    })
}

/// Result of the closed-loop scenario.
pub struct Closed {
    pub rps: f64,
    /// Requests that ended at any time, warm-up included (for CPU per request).
    pub done_total: usize,
    pub errors: Errors,
    pub latency: Summary,
}

/// Closed loop: `conc` workers, each sending its next request as soon as the last one ended.
/// Counts the requests that ended (successfully) inside the measured window.
pub async fn closed_loop(
    client: &Client,
    url: &Url,
    body: impl Into<Body>,
    conc: usize,
    warmup: Duration,
    duration: Duration,
) -> Result<Closed> {
    let t0 = Instant::now();
    let (from, until) = (t0 + warmup, t0 + warmup + duration);
    let body = body.into();
    let next = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::with_capacity(conc);
    for _ in 0..conc {
        let (client, url, body, next) = (client.clone(), url.clone(), body.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut errors = Errors::default();
            let mut done = 0usize;
            loop {
                let s = Instant::now();
                if s >= until {
                    break;
                }
                let b = body.get(next.fetch_add(1, Ordering::Relaxed));
                let r = one(&client, &url, &b).await;
                let e = Instant::now();
                done += 1;
                if e >= from && e <= until {
                    match r {
                        Ok(()) => lat.push(e - s),
                        Err(err) => errors.add(err),
                    }
                }
            }
            (lat, errors, done)
        }));
    }
    let mut lat = Vec::new();
    let mut errors = Errors::default();
    let mut done_total = 0;
    for t in tasks {
        let (l, e, d) = t.await.context("closed-loop worker")?;
        done_total += d;
        lat.extend(l);
        errors.count += e.count;
        if errors.first.is_none() {
            errors.first = e.first;
        }
    }
    Ok(Closed {
        rps: lat.len() as f64 / duration.as_secs_f64(),
        done_total,
        errors,
        latency: Summary::of(&mut lat),
    })
}

/// Result of the streaming scenario.
pub struct Streams {
    /// Request start to the first body chunk.
    pub ttfb: Summary,
    /// Request start to the end of the stream.
    pub total: Summary,
    pub errors: Errors,
}

/// One stream: (time to first body chunk, time to end). The stream must end with `[DONE]`.
async fn one_stream(
    client: &Client,
    url: &Url,
    body: &Bytes,
) -> Result<(Duration, Duration), String> {
    let t0 = Instant::now();
    let mut resp = post(client, url, body)
        .send()
        .await
        .map_err(|e| format!("send: {e}"))?;
    if !resp.status().is_success() {
        return Err(format!("status {}", resp.status()));
    }
    let first = resp
        .chunk()
        .await
        .map_err(|e| format!("first chunk: {e}"))?;
    let ttfb = t0.elapsed();
    let Some(first) = first else {
        return Err("empty stream".into());
    };
    let mut tail: Vec<u8> = first.to_vec();
    while let Some(chunk) = resp.chunk().await.map_err(|e| format!("chunk: {e}"))? {
        tail.extend_from_slice(&chunk);
        if tail.len() > 64 {
            tail.drain(..tail.len() - 64);
        }
    }
    let total = t0.elapsed();
    if !tail.windows(6).any(|w| w == b"[DONE]") {
        return Err("stream ended without [DONE]".into());
    }
    Ok((ttfb, total))
}

/// `n` streams, at most `conc` at a time.
pub async fn streams(
    client: &Client,
    url: &Url,
    body: &Bytes,
    n: usize,
    conc: usize,
) -> Result<Streams> {
    let next = Arc::new(AtomicUsize::new(0));
    let mut tasks = Vec::with_capacity(conc);
    for _ in 0..conc.max(1) {
        let (client, url, body, next) = (client.clone(), url.clone(), body.clone(), next.clone());
        tasks.push(tokio::spawn(async move {
            let mut out = Vec::new();
            while next.fetch_add(1, Ordering::Relaxed) < n {
                out.push(one_stream(&client, &url, &body).await);
            }
            out
        }));
    }
    let (mut ttfb, mut total, mut errors) = (Vec::new(), Vec::new(), Errors::default());
    for t in tasks {
        for r in t.await.context("stream worker")? {
            match r {
                Ok((a, b)) => {
                    ttfb.push(a);
                    total.push(b);
                }
                Err(e) => errors.add(e),
            }
        }
    }
    Ok(Streams {
        ttfb: Summary::of(&mut ttfb),
        total: Summary::of(&mut total),
        errors,
    })
}

/// Result of holding streams open.
pub struct Hold {
    /// Streams that delivered their first chunk.
    pub opened: usize,
    /// Streams still open when sampling ended.
    pub open_at_end: usize,
    /// Largest sampled value while the streams were open.
    pub peak: Option<u64>,
    pub errors: Errors,
}

/// Open `n` long streams (at most `open_conc` being opened at once), keep reading them, and once
/// all are open (or `open_timeout` passed) call `sample` every 100 ms for `sample_for`; then drop
/// every stream.
pub async fn hold_streams(
    url: &Url,
    body: &Bytes,
    n: usize,
    open_conc: usize,
    open_timeout: Duration,
    sample_for: Duration,
    sample: impl Fn() -> Option<u64>,
) -> Result<Hold> {
    let client = client()?;
    let opened = Arc::new(AtomicUsize::new(0));
    let open_now = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(open_conc.max(1)));
    let stop = CancellationToken::new();
    let errors = Arc::new(std::sync::Mutex::new(Errors::default()));
    let mut tasks = Vec::with_capacity(n);
    for _ in 0..n {
        let (client, url, body) = (client.clone(), url.clone(), body.clone());
        let (opened, open_now, gate, stop, errors) = (
            opened.clone(),
            open_now.clone(),
            gate.clone(),
            stop.clone(),
            errors.clone(),
        );
        tasks.push(tokio::spawn(async move {
            let fail = |e: String| {
                if let Ok(mut g) = errors.lock() {
                    g.add(e);
                }
            };
            let permit = gate.acquire_owned().await;
            let mut resp = match post(&client, &url, &body).send().await {
                Ok(r) if r.status().is_success() => r,
                Ok(r) => return fail(format!("status {}", r.status())),
                Err(e) => return fail(format!("send: {e}")),
            };
            match resp.chunk().await {
                Ok(Some(_)) => {}
                Ok(None) => return fail("empty stream".into()),
                Err(e) => return fail(format!("first chunk: {e}")),
            }
            drop(permit);
            opened.fetch_add(1, Ordering::SeqCst);
            open_now.fetch_add(1, Ordering::SeqCst);
            loop {
                tokio::select! {
                    () = stop.cancelled() => break,
                    c = resp.chunk() => match c {
                        Ok(Some(_)) => {}
                        Ok(None) => break,
                        Err(e) => { fail(format!("chunk: {e}")); break; }
                    },
                }
            }
            open_now.fetch_sub(1, Ordering::SeqCst);
        }));
    }
    let until = Instant::now() + open_timeout;
    while opened.load(Ordering::SeqCst) + errors.lock().map(|e| e.count).unwrap_or(0) < n
        && Instant::now() < until
    {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut peak: Option<u64> = None;
    let end = Instant::now() + sample_for;
    while Instant::now() < end {
        if let Some(v) = sample() {
            peak = Some(peak.map_or(v, |p| p.max(v)));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let open_at_end = open_now.load(Ordering::SeqCst);
    stop.cancel();
    for t in tasks {
        let _ = t.await;
    }
    drop(client);
    let errors = errors.lock().map(|e| e.clone()).unwrap_or_default();
    Ok(Hold {
        opened: opened.load(Ordering::SeqCst),
        open_at_end,
        peak,
        errors,
    })
}
