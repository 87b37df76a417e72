//! Per-upstream concurrency: at most `max` in flight, then a bounded wait queue ordered by
//! priority (high before normal before low, first come first served within one).
//!
//! A released slot is handed straight to the first live waiter, so a burst cannot jump the
//! queue. Waiters that gave up (deadline, client gone) are skipped. One short lock per upstream.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::time::Instant;

use tokio::sync::oneshot;

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
    inner: Mutex<Inner>,
}

/// One slot in flight; released on drop.
pub struct Slot {
    /// Taken out when a hand-over fails, so the drop does not release twice.
    gate: Option<Arc<Gate>>,
}

/// Why no slot was had.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refused {
    QueueFull,
    Timeout,
}

impl Gate {
    pub fn new(name: Arc<str>, max: usize, max_queue: usize) -> Arc<Gate> {
        Arc::new(Gate {
            meters: QueueMeters::new(&name),
            max: max.max(1),
            max_queue,
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

    /// Take a slot, waiting up to `wait` in the queue.
    pub async fn acquire(
        self: &Arc<Gate>,
        prio: Priority,
        wait: Duration,
    ) -> Result<Slot, Refused> {
        let rx = {
            let mut g = self.lock();
            if g.in_flight < self.max {
                g.in_flight += 1;
                return Ok(Slot {
                    gate: Some(self.clone()),
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

    #[tokio::test(start_paused = true)]
    async fn high_priority_waiters_go_first() {
        let gate = Gate::new(Arc::from("u"), 1, 10);
        let first = gate.acquire(Priority::Normal, Duration::from_secs(1)).await;
        assert!(first.is_ok());
        let g2 = gate.clone();
        let low = tokio::spawn(async move {
            g2.acquire(Priority::Low, Duration::from_secs(5))
                .await
                .map(|_| Instant::now())
        });
        tokio::task::yield_now().await;
        let g3 = gate.clone();
        let high = tokio::spawn(async move {
            g3.acquire(Priority::High, Duration::from_secs(5))
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
        let gate = Gate::new(Arc::from("u"), 1, 1);
        let _held = gate.acquire(Priority::Normal, Duration::from_secs(1)).await;
        let g2 = gate.clone();
        let waiter = tokio::spawn(async move {
            g2.acquire(Priority::Normal, Duration::from_secs(2))
                .await
                .err()
        });
        tokio::task::yield_now().await;
        assert_eq!(
            gate.acquire(Priority::High, Duration::from_secs(1))
                .await
                .err(),
            Some(Refused::QueueFull)
        );
        assert_eq!(waiter.await.ok().flatten(), Some(Refused::Timeout));
        assert_eq!(gate.in_flight(), 1);
    }
}
