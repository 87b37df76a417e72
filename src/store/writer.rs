//! The usage writer: usage rows leave the request path through a bounded queue and reach the
//! store in batches, written by one background task.
//!
//! The request side ([`UsageSink::record`], called from the ledger's `Drop`) never waits and
//! never touches the database: it `try_send`s the row. When the queue is full the configured
//! policy applies, and every outcome is counted in `tollgate_usage_rows_total{outcome}`:
//!
//! - `spill` (default): the row is appended to a local JSON-lines file, replayed into the store
//!   after the next successful batch and at start.
//! - `block`: "block briefly" cannot mean blocking the thread (a `Drop` on a runtime worker
//!   would stall every request on that worker), so the row alone waits: a small task waits up
//!   to `block_timeout` for room in the queue, and spills if there is still none. The request
//!   finishes at once either way.
//!
//! The writer task takes up to `batch_size` rows or what arrived within `batch_interval`,
//! inserts them in one transaction (multi-row `INSERT … ON CONFLICT DO NOTHING`, so a retried
//! batch is written once), and on an error keeps the batch and retries with backoff; while it
//! retries the queue absorbs new rows, then the full-queue policy takes over. Rows are lost only
//! if the spill file itself cannot be written, and that is counted (`outcome="lost"`) and logged
//! as an error. On shutdown ([`UsageWriter::close`]) the queue is closed and drained within
//! `flush_timeout`; rows that cannot be written by then, and rows that arrive after the queue
//! closed, are spilled.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::io::AsyncBufReadExt;
use tokio::sync::mpsc::{self, error::TrySendError};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::usage::{UsageRow, MAX_BATCH};
use super::Store;
use crate::config::{OnFull, UsageWriterConfig};
use crate::telemetry::meters;

/// Counts of what happened to usage rows, also exported as metrics.
#[derive(Debug, Default)]
pub struct WriterStats {
    pub written: AtomicU64,
    pub spilled: AtomicU64,
    pub replayed: AtomicU64,
    pub lost: AtomicU64,
    pub write_errors: AtomicU64,
}

impl WriterStats {
    fn add(&self, outcome: &'static str, n: u64) {
        if n == 0 {
            return;
        }
        let c = match outcome {
            "written" => &self.written,
            "spilled" => &self.spilled,
            "replayed" => &self.replayed,
            _ => &self.lost,
        };
        c.fetch_add(n, Ordering::Relaxed);
        meters::process().usage_rows.increment(outcome, n);
    }
    pub fn get(&self, c: &AtomicU64) -> u64 {
        c.load(Ordering::Relaxed)
    }
}

/// The request side: cheap to clone, never blocks.
#[derive(Clone)]
pub struct UsageSink {
    tx: mpsc::Sender<UsageRow>,
    spill: Arc<Spill>,
    on_full: OnFull,
    block_timeout: Duration,
    pub stats: Arc<WriterStats>,
}

impl UsageSink {
    /// Hand a row to the writer; see the module doc for what happens when the queue is full.
    pub fn record(&self, row: UsageRow) {
        match self.tx.try_send(row) {
            Ok(()) => {}
            Err(TrySendError::Closed(row)) => self.spill.write(&[row], &self.stats),
            Err(TrySendError::Full(row)) => {
                match (self.on_full, tokio::runtime::Handle::try_current()) {
                    (OnFull::Block, Ok(rt)) => {
                        let tx = self.tx.clone();
                        let spill = self.spill.clone();
                        let stats = self.stats.clone();
                        let wait = self.block_timeout;
                        rt.spawn(async move {
                            if let Err(e) = tx.send_timeout(row, wait).await {
                                let row = match e {
                                    mpsc::error::SendTimeoutError::Timeout(r)
                                    | mpsc::error::SendTimeoutError::Closed(r) => r,
                                };
                                spill.write(&[row], &stats);
                            }
                        });
                    }
                    _ => self.spill.write(&[row], &self.stats),
                }
            }
        }
    }

    /// Rows waiting in the queue.
    pub fn queued(&self) -> usize {
        self.tx.max_capacity() - self.tx.capacity()
    }
}

/// The local overflow file: JSON lines, appended under a lock (a short local write; only taken
/// when the queue is full or closed), renamed aside before it is replayed.
pub struct Spill {
    path: PathBuf,
    file: Mutex<Option<std::fs::File>>,
    /// Rows appended since the file was last taken for replay.
    pending: AtomicU64,
}

impl Spill {
    fn new(path: PathBuf) -> Spill {
        Spill {
            path,
            file: Mutex::new(None),
            pending: AtomicU64::new(0),
        }
    }

    fn write(&self, rows: &[UsageRow], stats: &WriterStats) {
        let mut text = String::new();
        for r in rows {
            if let Ok(line) = serde_json::to_string(r) {
                text.push_str(&line);
                text.push('\n');
            }
        }
        let result = match self.file.lock() {
            Ok(mut guard) => {
                if guard.is_none() {
                    match std::fs::OpenOptions::new()
                        .create(true)
                        .append(true)
                        .open(&self.path)
                    {
                        Ok(f) => *guard = Some(f),
                        Err(e) => return lost(rows.len(), &self.path, &e.to_string(), stats),
                    }
                }
                match guard.as_mut() {
                    Some(f) => f.write_all(text.as_bytes()).and_then(|()| f.flush()),
                    None => Ok(()),
                }
            }
            Err(_) => return lost(rows.len(), &self.path, "spill lock poisoned", stats),
        };
        match result {
            Ok(()) => {
                self.pending.fetch_add(rows.len() as u64, Ordering::Relaxed);
                stats.add("spilled", rows.len() as u64);
            }
            Err(e) => lost(rows.len(), &self.path, &e.to_string(), stats),
        }
    }

    /// Move the current file aside for replay; new spills start a new file.
    fn take(&self) -> Option<PathBuf> {
        let mut guard = self.file.lock().ok()?;
        *guard = None;
        self.pending.store(0, Ordering::Relaxed);
        if !self.path.exists() {
            return None;
        }
        let aside = replay_name(&self.path, &uuid::Uuid::new_v4().simple().to_string());
        match std::fs::rename(&self.path, &aside) {
            Ok(()) => Some(aside),
            Err(e) => {
                tracing::warn!(file = %self.path.display(), error = %e, "cannot move spill file aside");
                None
            }
        }
    }

    /// Files left for replay by an earlier run (or an earlier failed replay).
    fn leftovers(&self) -> Vec<PathBuf> {
        let dir = match self.path.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        let prefix = replay_name(&self.path, "");
        let mut out: Vec<PathBuf> = std::fs::read_dir(&dir)
            .map(|rd| {
                rd.filter_map(Result::ok)
                    .map(|e| e.path())
                    .filter(|p| {
                        p.file_name()
                            .zip(prefix.file_name())
                            .is_some_and(|(n, pre)| {
                                n.to_string_lossy().starts_with(&*pre.to_string_lossy())
                            })
                    })
                    .collect()
            })
            .unwrap_or_default();
        out.sort();
        out
    }
}

fn replay_name(path: &Path, suffix: &str) -> PathBuf {
    let mut name = path.file_name().unwrap_or_default().to_os_string();
    name.push(".replay-");
    name.push(suffix);
    path.with_file_name(name)
}

fn lost(n: usize, path: &Path, why: &str, stats: &WriterStats) {
    tracing::error!(rows = n, file = %path.display(), error = why,
        "usage rows LOST: the queue was full or closed and the spill file cannot be written");
    stats.add("lost", n as u64);
}

/// The writer task's handle; [`UsageWriter::close`] flushes on shutdown.
pub struct UsageWriter {
    shutdown: CancellationToken,
    task: JoinHandle<()>,
    flush_timeout: Duration,
    pub stats: Arc<WriterStats>,
}

impl UsageWriter {
    /// Stop taking rows and write what is queued, within `flush_timeout` (then spill the rest).
    pub async fn close(self) {
        self.shutdown.cancel();
        let wait = self.flush_timeout + Duration::from_secs(5);
        if tokio::time::timeout(wait, self.task).await.is_err() {
            tracing::error!("usage writer did not finish flushing in time");
        }
    }
}

/// Start the writer task; returns the request-side sink and the task's handle.
pub fn start(store: Store, cfg: &UsageWriterConfig) -> Result<(UsageSink, UsageWriter), String> {
    let (tx, rx) = mpsc::channel(cfg.queue.max(1));
    let spill = Arc::new(Spill::new(cfg.spill_path.clone()));
    let stats = Arc::new(WriterStats::default());
    let shutdown = CancellationToken::new();
    let mut replay = spill.leftovers();
    replay.extend(spill.take());
    let task = Task {
        store,
        rx,
        spill: spill.clone(),
        stats: stats.clone(),
        batch: cfg.batch_size.clamp(1, MAX_BATCH),
        interval: cfg.batch_interval.0,
        flush_timeout: cfg.flush_timeout.0,
        shutdown: shutdown.clone(),
        deadline: None,
        replay,
        last_used: std::collections::HashMap::new(),
        touched_at: None,
    };
    let handle = tokio::spawn(task.run());
    Ok((
        UsageSink {
            tx,
            spill,
            on_full: cfg.on_full,
            block_timeout: cfg.block_timeout.0,
            stats: stats.clone(),
        },
        UsageWriter {
            shutdown,
            task: handle,
            flush_timeout: cfg.flush_timeout.0,
            stats,
        },
    ))
}

struct Task {
    store: Store,
    rx: mpsc::Receiver<UsageRow>,
    spill: Arc<Spill>,
    stats: Arc<WriterStats>,
    batch: usize,
    interval: Duration,
    flush_timeout: Duration,
    shutdown: CancellationToken,
    /// Set when shutdown begins: rows not written by then are spilled.
    deadline: Option<Instant>,
    /// Spill files waiting to be replayed.
    replay: Vec<PathBuf>,
    /// Store keys used since `last_used_at` was last written, with their latest request time.
    last_used: std::collections::HashMap<String, i64>,
    touched_at: Option<Instant>,
}

/// Longest a single batch insert may take before it counts as failed (and is retried).
const INSERT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `keys.last_used_at` is written.
const TOUCH_EVERY: Duration = Duration::from_secs(5);
/// How often a pending replay is retried when no batch triggers it.
const REPLAY_EVERY: Duration = Duration::from_secs(5);

impl Task {
    async fn run(mut self) {
        self.replay_pending().await;
        let mut buf = Vec::with_capacity(self.batch);
        loop {
            buf.clear();
            let idle = if self.replay.is_empty() && self.spill.pending.load(Ordering::Relaxed) == 0
            {
                Duration::from_secs(3600)
            } else {
                REPLAY_EVERY
            };
            tokio::select! {
                biased;
                r = tokio::time::timeout(idle, self.rx.recv_many(&mut buf, self.batch)) => match r {
                    Ok(0) => break,
                    Ok(_) => {}
                    Err(_) => {
                        self.replay_pending().await;
                        continue;
                    }
                },
                () = self.shutdown.cancelled() => break,
            }
            let until = Instant::now() + self.interval;
            while buf.len() < self.batch {
                let want = self.batch - buf.len();
                match tokio::time::timeout_at(until, self.rx.recv_many(&mut buf, want)).await {
                    Ok(n) if n > 0 => {}
                    _ => break,
                }
            }
            meters::process()
                .usage_queue
                .get()
                .set(self.rx.len() as f64);
            let rows = std::mem::replace(&mut buf, Vec::with_capacity(self.batch));
            if self.write(rows).await {
                self.replay_pending().await;
            }
        }
        // Shutdown: no new rows (senders now spill), write what is queued, spill the rest.
        self.rx.close();
        self.flush_deadline();
        loop {
            let mut rows = Vec::with_capacity(self.batch);
            if self.rx.recv_many(&mut rows, self.batch).await == 0 {
                break;
            }
            self.write(rows).await;
        }
        self.touch(&[]).await;
        meters::process().usage_queue.get().set(0.0);
        tracing::info!(
            written = self.stats.get(&self.stats.written),
            spilled = self.stats.get(&self.stats.spilled),
            "usage writer flushed"
        );
    }

    fn flush_deadline(&mut self) -> Option<Instant> {
        if self.shutdown.is_cancelled() {
            let t = self.flush_timeout;
            Some(*self.deadline.get_or_insert_with(|| Instant::now() + t))
        } else {
            None
        }
    }

    /// Write a batch, retrying with backoff until it is in or (shutting down) the flush deadline
    /// passed, then spill it. True if it reached the store.
    async fn write(&mut self, rows: Vec<UsageRow>) -> bool {
        let mut backoff = Duration::from_millis(50);
        let mut failures = 0u32;
        loop {
            if self.flush_deadline().is_some_and(|d| Instant::now() >= d) {
                self.spill.write(&rows, &self.stats);
                return false;
            }
            let r = tokio::time::timeout(INSERT_TIMEOUT, self.store.insert_usage(&rows)).await;
            let err = match r {
                Ok(Ok(())) => {
                    self.stats.add("written", rows.len() as u64);
                    self.touch(&rows).await;
                    if failures > 0 {
                        tracing::info!(failures, "usage writer: the store is back");
                    }
                    return true;
                }
                Ok(Err(e)) => e.to_string(),
                Err(_) => "insert timed out".to_owned(),
            };
            failures += 1;
            self.stats.write_errors.fetch_add(1, Ordering::Relaxed);
            meters::process().usage_write_errors.get().increment(1);
            if failures == 1 || failures % 20 == 0 {
                tracing::warn!(rows = rows.len(), failures, error = %err,
                    "usage writer: batch not written; retrying (rows kept)");
            }
            let mut sleep = backoff;
            if let Some(d) = self.flush_deadline() {
                sleep = sleep.min(d.saturating_duration_since(Instant::now()));
            }
            tokio::select! {
                () = tokio::time::sleep(sleep) => {},
                () = self.shutdown.cancelled(), if self.deadline.is_none() => {},
            }
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    /// `last_used_at` of the store keys seen; best effort, off the request path, and at most
    /// every [`TOUCH_EVERY`] so many distinct keys cost one round of updates, not one per batch.
    async fn touch(&mut self, rows: &[UsageRow]) {
        for r in rows.iter().filter(|r| r.key_id.starts_with("key_")) {
            let ts = self.last_used.entry(r.key_id.clone()).or_insert(r.ts);
            *ts = (*ts).max(r.ts);
        }
        let due = self.touched_at.is_none_or(|t| t.elapsed() >= TOUCH_EVERY);
        if self.last_used.is_empty() || !(due || self.shutdown.is_cancelled()) {
            return;
        }
        self.touched_at = Some(Instant::now());
        let latest: Vec<(String, i64)> = self.last_used.drain().collect();
        if let Err(e) = self.store.touch_keys(&latest).await {
            tracing::debug!(error = %e, "cannot update keys.last_used_at");
        }
    }

    /// Replay spill files into the store; a file is removed once all its rows are in.
    async fn replay_pending(&mut self) {
        if self.spill.pending.load(Ordering::Relaxed) > 0 {
            self.replay.extend(self.spill.take());
        }
        while let Some(path) = self.replay.first().cloned() {
            match self.replay_file(&path).await {
                Ok(n) => {
                    self.stats.add("replayed", n);
                    if n > 0 {
                        tracing::info!(rows = n, file = %path.display(), "replayed spilled usage rows");
                    }
                    if let Err(e) = tokio::fs::remove_file(&path).await {
                        tracing::warn!(file = %path.display(), error = %e, "cannot remove replayed spill file");
                    }
                    self.replay.remove(0);
                }
                Err(e) => {
                    tracing::warn!(file = %path.display(), error = %e, "spill replay failed; will retry");
                    return;
                }
            }
        }
    }

    async fn replay_file(&self, path: &Path) -> Result<u64, String> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| e.to_string())?;
        let mut lines = tokio::io::BufReader::new(file).lines();
        let mut rows = Vec::with_capacity(self.batch);
        let mut n = 0u64;
        loop {
            let line = lines.next_line().await.map_err(|e| e.to_string())?;
            let end = line.is_none();
            if let Some(l) = line {
                match serde_json::from_str::<UsageRow>(&l) {
                    Ok(r) => rows.push(r),
                    Err(e) if !l.trim().is_empty() => {
                        // A torn last line (a crash mid-append) is the only way to get here.
                        tracing::error!(file = %path.display(), error = %e, "unreadable spilled usage row skipped");
                        self.stats.add("lost", 1);
                    }
                    Err(_) => {}
                }
            }
            if rows.len() >= self.batch || (end && !rows.is_empty()) {
                tokio::time::timeout(INSERT_TIMEOUT, self.store.insert_usage(&rows))
                    .await
                    .map_err(|_| "insert timed out".to_owned())?
                    .map_err(|e| e.to_string())?;
                n += rows.len() as u64;
                rows.clear();
            }
            if end {
                return Ok(n);
            }
        }
    }
}
