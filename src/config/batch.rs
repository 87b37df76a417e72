//! Config of the Batch API (`batch:`): where files live, how large they may be, and how hard
//! the worker may push a team's limits. Batches need a store (`store:`); see docs/BATCH.md.

use super::*;

#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BatchConfig {
    /// Directory of uploaded files and of the output and error files the worker writes. Every
    /// replica sharing a store must see the same directory (a shared volume).
    pub files_dir: std::path::PathBuf,
    /// Largest file accepted by `POST /v1/files`, in bytes (OpenAI: 200 MB).
    pub max_file_bytes: u64,
    /// Most request lines in one input file (OpenAI: 50,000).
    pub max_lines: usize,
    /// Longest input line, in bytes.
    pub max_line_bytes: usize,
    /// Lines of one batch in flight at once on one gateway.
    pub concurrency: usize,
    /// The share of the team's requests per minute, tokens per minute and concurrency that
    /// batch lines may take (0 < share <= 1); interactive requests keep the rest.
    pub share: f64,
    /// The share of each upstream's `max_concurrent` that batch lines may hold at once (at
    /// least 1 slot; 0 < share <= 1); interactive requests always find the rest free of them.
    pub upstream_share: f64,
    /// How long a gateway holds a line (or a batch it validates or finalizes) without renewing
    /// it; a gateway that dies has its lines taken over after this. Renewed every third of it.
    pub lease: Dur,
    /// How often the worker looks for new work when it has none (new batches made on this
    /// gateway start at once).
    pub poll_interval: Dur,
    /// Attempts of a line that failed upstream (5xx, timeouts, upstream 429) before its error
    /// is recorded; a line refused by the team's own limits is retried without counting.
    pub max_attempts: u32,
    /// Wait before a failed or limited line is tried again (doubled per attempt, at most 30s).
    pub retry_backoff: Dur,
    /// Longest time an upload may take.
    pub upload_timeout: Dur,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            files_dir: "tollgate-files".into(),
            max_file_bytes: 200 * 1024 * 1024,
            max_lines: 50_000,
            max_line_bytes: 1024 * 1024,
            concurrency: 8,
            share: 0.5,
            upstream_share: 0.5,
            lease: secs(30),
            poll_interval: secs(1),
            max_attempts: 5,
            retry_backoff: Dur(Duration::from_millis(500)),
            upload_timeout: secs(300),
        }
    }
}

impl BatchConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        if !(self.share > 0.0 && self.share <= 1.0) {
            return Err(err("batch.share", "must be above 0 and at most 1"));
        }
        if !(self.upstream_share > 0.0 && self.upstream_share <= 1.0) {
            return Err(err("batch.upstream_share", "must be above 0 and at most 1"));
        }
        if self.concurrency == 0 {
            return Err(err("batch.concurrency", "must be greater than 0"));
        }
        if self.max_lines == 0 || self.max_line_bytes == 0 || self.max_file_bytes == 0 {
            return Err(err(
                "batch",
                "max_lines, max_line_bytes and max_file_bytes must be greater than 0",
            ));
        }
        if self.lease.0 < Duration::from_secs(1) {
            return Err(err("batch.lease", "must be at least 1s"));
        }
        if self.max_attempts == 0 {
            return Err(err("batch.max_attempts", "must be greater than 0"));
        }
        Ok(())
    }
}
