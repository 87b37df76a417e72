//! Retry policy pieces: backoff with full jitter, and the retry budget that bounds how much
//! load retries may add (Finagle/linkerd style: a fraction of recent requests plus a floor per
//! second, over a ten-second window).

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

use rand::Rng;

/// Full jitter: uniform in [0, min(max, base * 2^attempt)].
pub fn backoff(attempt: u32, base: Duration, max: Duration) -> Duration {
    let cap = base
        .checked_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX))
        .unwrap_or(max)
        .min(max);
    if cap.is_zero() {
        return cap;
    }
    let nanos = rand::rng().random_range(0..=cap.as_nanos().min(u128::from(u64::MAX)) as u64);
    Duration::from_nanos(nanos)
}

const WINDOW_SECS: u64 = 10;

/// Requests and retries over the last ten seconds, in one-second buckets.
pub struct RetryBudget {
    ratio: f64,
    min_per_sec: f64,
    born: Instant,
    inner: Mutex<[(u64, u64, u64); WINDOW_SECS as usize]>,
}

impl RetryBudget {
    pub fn new(ratio: f64, min_per_sec: f64) -> RetryBudget {
        RetryBudget {
            ratio,
            min_per_sec,
            born: Instant::now(),
            inner: Mutex::new([(u64::MAX, 0, 0); WINDOW_SECS as usize]),
        }
    }

    fn with_bucket<T>(
        &self,
        now: Instant,
        f: impl FnOnce(&mut [(u64, u64, u64)], usize) -> T,
    ) -> T {
        let sec = now.duration_since(self.born).as_secs();
        let mut g = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        let i = (sec % WINDOW_SECS) as usize;
        if g[i].0 != sec {
            g[i] = (sec, 0, 0);
        }
        for b in g.iter_mut() {
            if b.0 != u64::MAX && sec.saturating_sub(b.0) >= WINDOW_SECS {
                *b = (u64::MAX, 0, 0);
            }
        }
        f(&mut g[..], i)
    }

    /// Count one original request.
    pub fn deposit(&self, now: Instant) {
        self.with_bucket(now, |b, i| b[i].1 += 1);
    }

    /// Take permission for one retry; false when the budget is spent.
    pub fn withdraw(&self, now: Instant) -> bool {
        let (ratio, floor) = (self.ratio, self.min_per_sec * WINDOW_SECS as f64);
        self.with_bucket(now, |b, i| {
            let requests: u64 = b.iter().map(|x| x.1).sum();
            let retries: u64 = b.iter().map(|x| x.2).sum();
            if (retries as f64) < floor + ratio * requests as f64 {
                b[i].2 += 1;
                true
            } else {
                false
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_stays_within_its_cap() {
        let base = Duration::from_millis(50);
        let max = Duration::from_secs(2);
        for attempt in 0..40 {
            for _ in 0..50 {
                let d = backoff(attempt, base, max);
                let cap = (base * 2u32.saturating_pow(attempt.min(20))).min(max);
                assert!(d <= cap, "attempt {attempt}: {d:?} > {cap:?}");
            }
        }
    }

    /// The window slides on tokio's clock: spent, it refills only when paused time moves on
    /// past the window.
    #[tokio::test(start_paused = true)]
    async fn the_window_slides_on_tokio_time() {
        let b = RetryBudget::new(0.0, 1.0);
        let spent = |b: &RetryBudget| (0..100).filter(|_| b.withdraw(Instant::now())).count();
        assert_eq!(spent(&b), 10);
        tokio::time::advance(Duration::from_secs(5)).await;
        assert_eq!(spent(&b), 0, "the first retries are still in the window");
        tokio::time::advance(Duration::from_secs(6)).await;
        assert_eq!(spent(&b), 10);
    }

    #[test]
    fn budget_allows_floor_plus_ratio() {
        let b = RetryBudget::new(0.2, 1.0);
        let now = Instant::now();
        for _ in 0..100 {
            b.deposit(now);
        }
        // floor 1/s * 10 s = 10, plus 20% of 100 = 20: 30 retries.
        let allowed = (0..100).filter(|_| b.withdraw(now)).count();
        assert_eq!(allowed, 30);
    }
}
