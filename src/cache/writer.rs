//! The writer task: disk and Redis writes off the request path, through one bounded queue.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{disk, redis, Entry, Key};

/// A write for the writer task.
pub(super) enum Write {
    Put {
        key: Key,
        entry: Arc<Entry>,
        disk_max_bytes: Option<u64>,
        redis: bool,
    },
    Touch(Key),
    Remove(Key),
    /// Everything queued before this is written: answer.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The writer task: disk and Redis writes, in order, off the request path. Ends when the cache
/// (every sender) is gone.
pub(super) async fn writer(
    mut rx: mpsc::Receiver<Write>,
    disk: Option<Arc<disk::Disk>>,
    redis: Option<Arc<redis::RedisTier>>,
) {
    let written = metrics::counter!(crate::telemetry::names::CACHE_WRITES);
    while let Some(w) = rx.recv().await {
        match w {
            Write::Put {
                key,
                entry,
                disk_max_bytes,
                redis: to_redis,
            } => {
                if let (Some(max), Some(d)) = (disk_max_bytes, &disk) {
                    d.put(&key, &entry, max).await;
                }
                if let (true, Some(r)) = (to_redis, &redis) {
                    r.put(&key, &entry).await;
                }
                written.increment(1);
            }
            Write::Touch(key) => {
                if let Some(d) = &disk {
                    d.touch(&key).await;
                }
            }
            Write::Remove(key) => {
                if let Some(d) = &disk {
                    d.remove(&key).await;
                }
            }
            Write::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}
