//! Per-upstream concurrency: at most `max` in flight, then a bounded wait queue ordered by
//! priority (high before normal before low, first come first served within one).
//!
//! A released slot is handed straight to the first live waiter, so a burst cannot jump the
//! queue. Waiters that gave up (deadline, client gone) are skipped. One short lock per upstream.
//!
//! Batch lines also take one of `batch_max` permits before they queue (`batch.upstream_share`
//! of `max`), so batches never hold more than their share of an upstream and interactive
//! requests always find the rest.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use tokio::sync::{oneshot, OwnedSemaphorePermit, Semaphore};

pub use crate::config::Priority;
use crate::telemetry::meters::QueueMeters;

struct Inner {
    in_flight: usize,
    waiting: [VecDeque<oneshot::Sender<Slot>>; 3],
}

pub struct Gate {
    /// The queue's depth and wait series, labelled with the upstream's name.
    meters: QueueMeters,
    max: usize,
    max_queue: usize,
    /// Batch lines' share of `max`: a batch line holds one of these while it waits and runs.
    batch: Arc<Semaphore>,
    inner: Mutex<Inner>,
}

/// One slot in flight; released on drop.
pub struct Slot {
    /// Taken out when a hand-over fails, so the drop does not release twice.
    gate: Option<Arc<Gate>>,
    /// A batch line's permit of the batch share, given back with the slot.
    _batch: Option<OwnedSemaphorePermit>,
}

/// Who asks for a slot: its queue priority, and whether it is a batch line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ask {
    pub priority: Priority,
    pub batch: bool,
}

/// Why no slot was had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    QueueFull,
    Timeout,
}

impl Gate {
    /// `batch_share` of `max` (at least 1) may be held by batch lines.
    pub fn new(name: Arc<str>, max: usize, max_queue: usize, batch_share: f64) -> Arc<Gate> {
        let max = max.max(1);
        let batch_max = ((max as f64 * batch_share).floor() as usize).clamp(1, max);
        Arc::new(Gate {
            meters: QueueMeters::new(&name),
            max,
            max_queue,
            batch: Arc::new(Semaphore::new(batch_max)),
            inner: Mutex::new(Inner {
                in_flight: 0,
                waiting: [VecDeque::new(), VecDeque::new(), VecDeque::new()],
            }),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn in_flight(&self) -> usize {
        self.lock().in_flight
    }

    /// Requests waiting for a slot now (waiters that gave up are not counted).
    pub fn queued(&self) -> usize {
        let g = self.lock();
        g.waiting
            .iter()
            .flatten()
            .filter(|tx| !tx.is_closed())
            .count()
    }

    /// Publish the queue depth gauge. Fix: the gauge used to be set only when a waiter was
    /// added, so it never went down and `/metrics` showed the deepest queue ever seen.
    fn publish_depth(&self, g: &Inner) {
        let depth: usize = g.waiting.iter().map(VecDeque::len).sum();
        self.meters.depth.get().set(depth as f64);
    }

    /// Take a slot, waiting up to `wait` (for a batch line: for its share, then in the queue).
    pub async fn acquire(self: &Arc<Gate>, ask: Ask, wait: Duration) -> Result<Slot, Refused> {
        if !ask.batch {
            return self.slot(ask.priority, wait).await;
        }
        let started = Instant::now();
        let permit = match self.batch.clone().try_acquire_owned() {
            Ok(p) => p,
            Err(_) => match tokio::time::timeout(wait, self.batch.clone().acquire_owned()).await {
                Ok(Ok(p)) => p,
                _ => return Err(Refused::Timeout),
            },
        };
        let mut slot = self
            .slot(ask.priority, wait.saturating_sub(started.elapsed()))
            .await?;
        slot._batch = Some(permit);
        Ok(slot)
    }

    async fn slot(self: &Arc<Gate>, prio: Priority, wait: Duration) -> Result<Slot, Refused> {
        let rx = {
            let mut g = self.lock();
            if g.in_flight < self.max {
                g.in_flight += 1;
                return Ok(Slot {
                    gate: Some(self.clone()),
                    _batch: None,
                });
            }
            for q in g.waiting.iter_mut() {
                q.retain(|tx| !tx.is_closed());
            }
            let queued: usize = g.waiting.iter().map(VecDeque::len).sum();
            if queued >= self.max_queue {
                return Err(Refused::QueueFull);
            }
            let (tx, rx) = oneshot::channel();
            g.waiting[prio as usize].push_back(tx);
            self.publish_depth(&g);
            rx
        };
        let started = Instant::now();
        let got = tokio::time::timeout(wait, rx).await;
        self.meters.wait.get().record(started.elapsed());
        match got {
            Ok(Ok(slot)) => Ok(slot),
            _ => {
                // Our receiver is gone: drop it (and any other dead waiter) from the count.
                let mut g = self.lock();
                for q in g.waiting.iter_mut() {
                    q.retain(|tx| !tx.is_closed());
                }
                self.publish_depth(&g);
                Err(Refused::Timeout)
            }
        }
    }

    fn release(self: &Arc<Gate>) {
        let mut g = self.lock();
        for q in 0..3 {
            while let Some(tx) = g.waiting[q].pop_front() {
                // Hand the slot over; in_flight stays the same.
                match tx.send(Slot {
                    gate: Some(self.clone()),
                    _batch: None,
                }) {
                    Ok(()) => {
                        self.publish_depth(&g);
                        return;
                    }
                    Err(mut slot) => {
                        slot.gate = None;
                    }
                }
            }
        }
        self.publish_depth(&g);
        g.in_flight = g.in_flight.saturating_sub(1);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        if let Some(gate) = self.gate.take() {
            gate.release();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ask(priority: Priority) -> Ask {
        Ask {
            priority,
            batch: false,
        }
    }

    fn batch_line() -> Ask {
        Ask {
            priority: Priority::Low,
            batch: true,
        }
    }

    #[tokio::test(start_paused = true)]
    async fn batch_lines_hold_at_most_their_share_and_interactive_requests_get_the_rest() {
        let gate = Gate::new(Arc::from("u"), 4, 10, 0.5);
        let w = Duration::from_secs(1);
        let (a, b) = (
            gate.acquire(batch_line(), w).await,
            gate.acquire(batch_line(), w).await,
        );
        assert!(a.is_ok() && b.is_ok());
        // A third batch line waits for a batch permit, though two slots are free...
        assert_eq!(
            gate.acquire(batch_line(), w).await.err(),
            Some(Refused::Timeout)
        );
        // ...which interactive requests take at once.
        let (c, d) = (
            gate.acquire(ask(Priority::Low), w).await,
            gate.acquire(ask(Priority::Normal), w).await,
        );
        assert!(c.is_ok() && d.is_ok());
        assert_eq!(gate.in_flight(), 4);
        // A batch line's end frees its share for the next one.
        drop(a);
        let e = gate.acquire(batch_line(), w).await;
        assert!(e.is_ok());
        assert_eq!(gate.in_flight(), 4);
    }

    #[tokio::test(start_paused = true)]
    async fn high_priority_waiters_go_first() {
        let gate = Gate::new(Arc::from("u"), 1, 10, 1.0);
        let first = gate
            .acquire(ask(Priority::Normal), Duration::from_secs(1))
            .await;
        assert!(first.is_ok());
        let g2 = gate.clone();
        let low = tokio::spawn(async move {
            g2.acquire(ask(Priority::Low), Duration::from_secs(5))
                .await
                .map(|_| Instant::now())
        });
        tokio::task::yield_now().await;
        let g3 = gate.clone();
        let high = tokio::spawn(async move {
            g3.acquire(ask(Priority::High), Duration::from_secs(5))
                .await
                .map(|s| {
                    drop(s);
                    Instant::now()
                })
        });
        tokio::task::yield_now().await;
        drop(first);
        let (h, l) = (high.await, low.await);
        let (Ok(Ok(h)), Ok(Ok(l))) = (h, l) else {
            panic!("both should get a slot")
        };
        assert!(h <= l);
    }

    #[tokio::test(start_paused = true)]
    async fn full_queue_and_timeout_are_refused() {
        let gate = Gate::new(Arc::from("u"), 1, 1, 1.0);
        let _held = gate
            .acquire(ask(Priority::Normal), Duration::from_secs(1))
            .await;
        let g2 = gate.clone();
        let waiter = tokio::spawn(async move {
            g2.acquire(ask(Priority::Normal), Duration::from_secs(2))
                .await
                .err()
        });
        tokio::task::yield_now().await;
        assert_eq!(
            gate.acquire(ask(Priority::High), Duration::from_secs(1))
                .await
                .err(),
            Some(Refused::QueueFull)
        );
        assert_eq!(waiter.await.ok().flatten(), Some(Refused::Timeout));
        assert_eq!(gate.in_flight(), 1);
    }
}
