//! The circuit breaker of one upstream, and its "rate limited until T" mark kept apart.
//!
//! Closed -> Open on N consecutive failures, or when the window's error rate or P99 time to
//! first byte passes its threshold (with a minimum of requests). Open -> HalfOpen after the
//! cooldown: exactly one probe is let through; its success closes the breaker, its failure opens
//! it again. A 429 is not a failure here: it sets `rate_limited_until` instead. The window is a
//! ring of time buckets, each with counts and a coarse latency histogram; one short lock per
//! upstream, never held across an await.

use std::sync::Mutex;
use std::time::Duration;
use tokio::time::Instant;

use crate::config::BreakerConfig;

/// Buckets in the window ring.
const BUCKETS: usize = 30;
/// Latency histogram bounds (ms) for the P99 estimate; the last bucket is "above".
const LAT_BOUNDS_MS: [u64; 16] = [
    5,
    10,
    25,
    50,
    100,
    200,
    400,
    800,
    1_600,
    3_200,
    6_400,
    12_800,
    25_600,
    51_200,
    102_400,
    u64::MAX,
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Closed,
    Open,
    HalfOpen,
}

impl State {
    /// Gauge value: 0 closed, 1 half-open, 2 open.
    pub fn gauge(self) -> f64 {
        match self {
            State::Closed => 0.0,
            State::HalfOpen => 1.0,
            State::Open => 2.0,
        }
    }
    pub fn label(self) -> &'static str {
        match self {
            State::Closed => "closed",
            State::HalfOpen => "half_open",
            State::Open => "open",
        }
    }
}

#[derive(Clone, Copy, Default)]
struct Bucket {
    /// Which slot of time this bucket holds (start / bucket width).
    epoch: u64,
    ok: u32,
    failed: u32,
    latency: [u32; LAT_BOUNDS_MS.len()],
}

struct Inner {
    state: State,
    opened_at: Instant,
    probe_in_flight: bool,
    consecutive: u32,
    rate_limited_until: Option<Instant>,
    /// The last 429 that alone was no evidence about the account: when, from which tenant.
    last_429: Option<(Instant, u64)>,
    ring: [Bucket; BUCKETS],
}

pub struct Breaker {
    cfg: BreakerConfig,
    born: Instant,
    inner: Mutex<Inner>,
}

/// What a caller may do with this upstream now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Yes,
    /// Yes, as the single half-open probe.
    Probe,
    No,
}

impl Breaker {
    pub fn new(cfg: BreakerConfig) -> Breaker {
        let now = Instant::now();
        Breaker {
            cfg,
            born: now,
            inner: Mutex::new(Inner {
                state: State::Closed,
                opened_at: now,
                probe_in_flight: false,
                consecutive: 0,
                rate_limited_until: None,
                last_429: None,
                ring: [Bucket::default(); BUCKETS],
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn bucket_width(&self) -> Duration {
        (self.cfg.window.0 / BUCKETS as u32).max(Duration::from_millis(10))
    }

    fn epoch(&self, now: Instant) -> u64 {
        (now.duration_since(self.born).as_nanos() / self.bucket_width().as_nanos().max(1)) as u64
    }

    pub fn state(&self) -> State {
        self.lock().state
    }

    /// Until when the upstream asked us to back off, if that is still in the future.
    pub fn rate_limited_until(&self, now: Instant) -> Option<Instant> {
        self.lock().rate_limited_until.filter(|t| *t > now)
    }

    /// Whether a request may go to this upstream now (without taking the probe slot).
    pub fn available(&self, now: Instant) -> bool {
        let g = self.lock();
        if g.rate_limited_until.is_some_and(|t| t > now) {
            return false;
        }
        match g.state {
            State::Closed => true,
            State::Open => now.duration_since(g.opened_at) >= self.cfg.cooldown.0,
            State::HalfOpen => !g.probe_in_flight,
        }
    }

    /// Take permission to send; an open breaker past its cooldown lets one probe through.
    pub fn admit(&self, now: Instant) -> Admit {
        let mut g = self.lock();
        if g.rate_limited_until.is_some_and(|t| t > now) {
            return Admit::No;
        }
        match g.state {
            State::Closed => Admit::Yes,
            State::Open if now.duration_since(g.opened_at) >= self.cfg.cooldown.0 => {
                g.state = State::HalfOpen;
                g.probe_in_flight = true;
                Admit::Probe
            }
            State::HalfOpen if !g.probe_in_flight => {
                g.probe_in_flight = true;
                Admit::Probe
            }
            _ => Admit::No,
        }
    }

    /// The probe ended without an outcome (its request was cancelled, e.g. the client went
    /// away): give the probe slot back so the next request probes. Fix: without this an
    /// abandoned probe left the breaker half-open with `probe_in_flight` set for good, and the
    /// upstream was skipped until the process restarted.
    pub fn abandon_probe(&self) {
        let mut g = self.lock();
        if g.state == State::HalfOpen {
            g.probe_in_flight = false;
        }
    }

    /// A 429: skip this upstream until `until`; not a health failure.
    pub fn rate_limited(&self, until: Instant, probe: bool) {
        let mut g = self.lock();
        g.rate_limited_until = Some(g.rate_limited_until.map_or(until, |t| t.max(until)));
        if probe {
            g.probe_in_flight = false;
        }
    }

    /// Note a 429 that alone says nothing about the account, from `tenant`; true when another
    /// tenant got one within `window` (then it is taken as being about the account).
    pub fn note_429(&self, now: Instant, tenant: u64, window: Duration) -> bool {
        let mut g = self.lock();
        let seen = g.last_429.is_some_and(|(at, t)| {
            t != tenant && now.checked_duration_since(at).is_some_and(|d| d <= window)
        });
        g.last_429 = Some((now, tenant));
        seen
    }

    /// Record an outcome. `ttfb` is the time to first byte of a success.
    pub fn record(&self, now: Instant, ok: bool, ttfb: Option<Duration>, probe: bool) -> State {
        let epoch = self.epoch(now);
        let mut g = self.lock();
        let slot = (epoch % BUCKETS as u64) as usize;
        if g.ring[slot].epoch != epoch {
            g.ring[slot] = Bucket {
                epoch,
                ..Bucket::default()
            };
        }
        let b = &mut g.ring[slot];
        if ok {
            b.ok += 1;
        } else {
            b.failed += 1;
        }
        if let Some(t) = ttfb {
            let ms = t.as_millis() as u64;
            let i = LAT_BOUNDS_MS
                .iter()
                .position(|bound| ms <= *bound)
                .unwrap_or(0);
            b.latency[i] += 1;
        }
        if probe {
            g.probe_in_flight = false;
        }
        if ok {
            g.consecutive = 0;
            if g.state == State::HalfOpen && probe {
                g.state = State::Closed;
                // A fresh start: the failures that opened it no longer count.
                g.ring = [Bucket::default(); BUCKETS];
            }
        } else {
            g.consecutive += 1;
            if g.state == State::HalfOpen && probe {
                g.state = State::Open;
                g.opened_at = now;
            }
        }
        if g.state == State::Closed && self.should_open(&g, epoch) {
            g.state = State::Open;
            g.opened_at = now;
        }
        g.state
    }

    fn should_open(&self, g: &Inner, epoch: u64) -> bool {
        if g.consecutive >= self.cfg.consecutive_failures.max(1) {
            return true;
        }
        let live = || {
            g.ring
                .iter()
                .filter(move |b| epoch.saturating_sub(b.epoch) < BUCKETS as u64)
        };
        let (mut ok, mut failed) = (0u64, 0u64);
        for b in live() {
            ok += u64::from(b.ok);
            failed += u64::from(b.failed);
        }
        let total = ok + failed;
        if total < u64::from(self.cfg.min_requests.max(1)) {
            return false;
        }
        if failed as f64 / total as f64 > self.cfg.error_rate {
            return true;
        }
        // The latency histogram is summed only when there is an objective to hold it to (this
        // runs on every answer).
        if let Some(objective) = self.cfg.latency_objective {
            let mut lat = [0u64; LAT_BOUNDS_MS.len()];
            for b in live() {
                for (i, n) in b.latency.iter().enumerate() {
                    lat[i] += u64::from(*n);
                }
            }
            let n: u64 = lat.iter().sum();
            let rank = (n as f64 * 0.99).ceil() as u64;
            let mut seen = 0;
            for (i, c) in lat.iter().enumerate() {
                seen += c;
                if seen >= rank && n > 0 {
                    let lower = if i == 0 { 0 } else { LAT_BOUNDS_MS[i - 1] };
                    return Duration::from_millis(lower) > objective.0;
                }
            }
        }
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Dur;

    /// Open `b` with three failures in a row; returns when.
    fn opened(b: &Breaker) -> Instant {
        let t0 = Instant::now();
        for _ in 0..3 {
            b.record(t0, false, None, false);
        }
        t0
    }

    fn cfg() -> BreakerConfig {
        BreakerConfig {
            consecutive_failures: 3,
            error_rate: 0.5,
            latency_objective: None,
            min_requests: 10,
            window: Dur(Duration::from_secs(60)),
            cooldown: Dur(Duration::from_secs(5)),
        }
    }

    #[test]
    fn opens_on_consecutive_failures_then_probes_once() {
        let b = Breaker::new(cfg());
        let t0 = opened(&b);
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.admit(t0), Admit::No);
        let later = t0 + Duration::from_secs(6);
        assert_eq!(b.admit(later), Admit::Probe);
        assert_eq!(b.admit(later), Admit::No, "only one probe at a time");
        b.record(later, true, Some(Duration::from_millis(3)), true);
        assert_eq!(b.state(), State::Closed);
        assert_eq!(b.admit(later), Admit::Yes);
    }

    /// The breaker's clock is tokio's: on a paused clock the cooldown passes when the test
    /// advances time, not before (with `std::time::Instant` it would never pass here).
    #[tokio::test(start_paused = true)]
    async fn the_cooldown_runs_on_tokio_time() {
        let b = Breaker::new(cfg());
        opened(&b);
        assert_eq!(b.admit(Instant::now()), Admit::No);
        tokio::time::advance(Duration::from_secs(4)).await;
        assert_eq!(b.admit(Instant::now()), Admit::No, "4 s of a 5 s cooldown");
        tokio::time::advance(Duration::from_secs(2)).await;
        assert_eq!(b.admit(Instant::now()), Admit::Probe);
    }

    #[test]
    fn failed_probe_reopens() {
        let b = Breaker::new(cfg());
        let t0 = opened(&b);
        let later = t0 + Duration::from_secs(6);
        assert_eq!(b.admit(later), Admit::Probe);
        b.record(later, false, None, true);
        assert_eq!(b.state(), State::Open);
        assert_eq!(b.admit(later + Duration::from_secs(1)), Admit::No);
    }

    #[test]
    fn opens_on_error_rate_not_before_min_requests() {
        let b = Breaker::new(BreakerConfig {
            consecutive_failures: 100,
            ..cfg()
        });
        let t0 = Instant::now();
        for _ in 0..4 {
            b.record(t0, true, None, false);
            b.record(t0, false, None, false);
        }
        b.record(t0, false, None, false);
        // 9 requests, 5 failed (56% > 50%), but fewer than min_requests.
        assert_eq!(b.state(), State::Closed);
        b.record(t0, true, None, false);
        // 10 requests, 50%: not over the threshold.
        assert_eq!(b.state(), State::Closed);
        b.record(t0, false, None, false);
        assert_eq!(b.state(), State::Open);
    }

    #[test]
    fn an_abandoned_probe_frees_the_probe_slot() {
        let b = Breaker::new(cfg());
        let t0 = opened(&b);
        let later = t0 + Duration::from_secs(6);
        assert_eq!(b.admit(later), Admit::Probe);
        assert!(!b.available(later));
        b.abandon_probe();
        assert_eq!(b.state(), State::HalfOpen);
        assert_eq!(b.admit(later), Admit::Probe);
    }

    #[test]
    fn rate_limit_is_not_a_failure() {
        let b = Breaker::new(cfg());
        let t0 = Instant::now();
        b.rate_limited(t0 + Duration::from_secs(3), false);
        assert!(!b.available(t0));
        assert_eq!(b.state(), State::Closed);
        assert!(b.available(t0 + Duration::from_secs(4)));
    }
}
