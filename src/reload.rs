//! Config reload without a restart: on `SIGHUP`, or when the config file's modification time or
//! size changes (checked every second), the file is loaded and validated and a new snapshot is
//! swapped in. Requests in flight keep the snapshot they started with. A bad new config is
//! refused with a logged reason and the old one keeps serving. The `batch:` block is the one
//! part read only at start (the batch worker's): a reload keeps the old one and says so.
//!
//! Polling the file's metadata is deliberate: it survives editors that replace the file and
//! config maps that swap symlinks, and costs one `stat` a second.

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::secret::ProcessEnv;
use crate::state::{AppState, Snapshot};

/// Load `path` and swap it in; the error says why the old config stays.
pub fn reload_now(state: &AppState, path: &Path) -> Result<(), String> {
    let mut config = Config::load(path).map_err(|e| e.to_string())?;
    let old = state.snapshot.load_full();
    // `batch:` is read once, by the worker at start: the Files and Batch API keep the same one,
    // so both read and write the same `files_dir` until a restart.
    if config.batch != old.config.batch {
        tracing::warn!("batch: changed in the config; it applies at the next restart");
        config.batch = old.config.batch.clone();
    }
    let snapshot = Snapshot::build(config, &ProcessEnv, Some(&old))?;
    state.snapshot.store(std::sync::Arc::new(snapshot));
    Ok(())
}

fn stamp(path: &Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

/// Watch for SIGHUP and file changes until `stop` is cancelled.
///
/// The SIGHUP handler is installed before this returns, so a SIGHUP that follows never takes
/// the default action (ending the process).
pub fn spawn_watcher(state: AppState, path: PathBuf, stop: CancellationToken) {
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    tokio::spawn(async move {
        let mut last = stamp(&path);
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            #[cfg(unix)]
            let hup_fired = async {
                match hup.as_mut() {
                    Some(s) => {
                        s.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            #[cfg(not(unix))]
            let hup_fired = std::future::pending::<()>();
            let why = tokio::select! {
                () = stop.cancelled() => return,
                () = hup_fired => "sighup",
                _ = tick.tick() => {
                    let now = stamp(&path);
                    if now == last { continue; }
                    last = now;
                    "file_changed"
                }
            };
            match reload_now(&state, &path) {
                Ok(()) => tracing::info!(reason = why, config = %path.display(), "config reloaded"),
                Err(e) => tracing::error!(reason = why, config = %path.display(), error = %e,
                    "config reload refused; the previous config keeps serving"),
            }
        }
    });
}
