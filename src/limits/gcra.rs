//! GCRA (the generic cell rate algorithm): a rate limit kept as one number per limit, the
//! theoretical arrival time (TAT).
//!
//! A limit of `L` per period `P` has an emission interval `T = P / L`. A request of cost `c`
//! (1 for requests, its tokens for tokens) is admitted when, after adding `c·T` to the TAT, the
//! TAT is no more than `P` ahead of now. So a quiet caller may spend all `L` at once, then earns
//! capacity back at `L/P`, continuously: in any interval of length `d` at most `L + d·L/P` is
//! admitted, and there is no window edge at which a second full burst gets through (the failure
//! of fixed windows). One number per limit keeps the Redis script to a GET and a SET.
//!
//! Times are microseconds as `f64`: exact enough at both backends' magnitudes (Redis passes
//! Unix microseconds, ~1.7e15, below 2^53) and the same arithmetic in Rust and in Lua.
//! [`crate::limits::redis`] carries a Lua copy of [`check`]; tests hold both to the same counts.

/// One minute in microseconds: the period of every limit here.
pub const PERIOD_US: f64 = 60_000_000.0;

/// Slack for float rounding when comparing against the period (well under any interval).
const EPS: f64 = 1e-3;

/// The outcome of one check.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Verdict {
    /// Admitted: store `tat`; `remaining` more of cost 1 would fit now; full again in `reset_us`.
    Admit {
        tat: f64,
        remaining: u64,
        reset_us: f64,
    },
    /// Refused: retry in `retry_us` (infinite when the cost alone exceeds the limit).
    Deny {
        retry_us: f64,
        remaining: u64,
        reset_us: f64,
    },
}

/// Check a request of `cost` against a limit of `limit` per minute, given the stored `tat`
/// (0 when none) at time `now`. Pure: the caller stores the new TAT only when every limit of the
/// request admitted.
pub fn check(tat: f64, now: f64, cost: u64, limit: u64) -> Verdict {
    let t = PERIOD_US / limit.max(1) as f64;
    let base = tat.max(now);
    let new = base + cost as f64 * t;
    if new - now <= PERIOD_US + EPS {
        Verdict::Admit {
            tat: new,
            remaining: remaining(new, now, t),
            reset_us: new - now,
        }
    } else {
        let retry_us = if cost > limit {
            f64::INFINITY
        } else {
            new - now - PERIOD_US
        };
        Verdict::Deny {
            retry_us,
            remaining: remaining(base, now, t),
            reset_us: base - now,
        }
    }
}

/// The TAT after reconciling an admitted estimate with the real cost: `delta` units more (or
/// fewer, when negative) than were charged. A refund never moves the TAT before now.
pub fn adjust(tat: f64, now: f64, delta: i64, limit: u64) -> f64 {
    let t = PERIOD_US / limit.max(1) as f64;
    let new = tat + delta as f64 * t;
    if delta < 0 {
        new.max(now.min(tat))
    } else {
        new
    }
}

/// Units of cost 1 that would fit now, for the `x-ratelimit-remaining-*` headers.
pub fn remaining(tat: f64, now: f64, t: f64) -> u64 {
    let free = PERIOD_US - (tat.max(now) - now);
    if free <= 0.0 {
        0
    } else {
        ((free + EPS) / t).floor() as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn admitted(v: Verdict) -> Option<f64> {
        match v {
            Verdict::Admit { tat, .. } => Some(tat),
            Verdict::Deny { .. } => None,
        }
    }

    /// Offer `arrivals` (time, cost) in order; return the admitted ones.
    fn run(limit: u64, arrivals: &[(f64, u64)]) -> Vec<(f64, u64)> {
        let mut tat = 0.0;
        let mut out = Vec::new();
        for &(now, cost) in arrivals {
            if let Some(t) = admitted(check(tat, now, cost, limit)) {
                tat = t;
                out.push((now, cost));
            }
        }
        out
    }

    #[test]
    fn a_quiet_caller_gets_exactly_the_limit_at_once() {
        for limit in [1, 7, 60, 600, 1000, 12_345] {
            let burst: Vec<(f64, u64)> = (0..limit * 2).map(|_| (1000.0, 1)).collect();
            assert_eq!(run(limit, &burst).len() as u64, limit, "limit {limit}");
        }
    }

    #[test]
    fn no_second_burst_at_a_minute_boundary() {
        // A fixed window would admit 600 at 59.9 s and 600 more at 60.1 s.
        let limit = 600;
        let mut arrivals: Vec<(f64, u64)> = (0..1000).map(|_| (59_900_000.0, 1)).collect();
        arrivals.extend((0..1000).map(|_| (60_100_000.0, 1)));
        let got = run(limit, &arrivals);
        let late = got.iter().filter(|(t, _)| *t > 60_000_000.0).count();
        assert_eq!(got.len() - late, 600);
        // 0.2 s at 10 per second.
        assert_eq!(late, 2);
    }

    #[test]
    fn steady_overload_is_held_to_the_rate() {
        // 100 requests per second offered for 5 minutes against 600 per minute.
        let arrivals: Vec<(f64, u64)> = (0..30_000).map(|i| (i as f64 * 10_000.0, 1)).collect();
        let got = run(600, &arrivals);
        // The first burst of 600, then 10 per second for 299.99 s.
        assert!((3_598..=3_601).contains(&got.len()), "{}", got.len());
    }

    /// Property: for random arrivals and costs, every interval [a, b] holds at most
    /// `L + (b - a)·L/P` admitted cost; and nothing is refused while capacity remains.
    #[test]
    fn property_no_interval_exceeds_burst_plus_rate() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _case in 0..200 {
            let limit: u64 = rng.random_range(1..2000);
            let n = rng.random_range(1..400);
            let mut now = 0.0;
            let mut arrivals = Vec::with_capacity(n);
            for _ in 0..n {
                now += rng.random_range(0.0..(3.0 * PERIOD_US / limit as f64));
                arrivals.push((now, rng.random_range(1..=limit.min(50))));
            }
            let got = run(limit, &arrivals);
            let rate = limit as f64 / PERIOD_US;
            for i in 0..got.len() {
                let mut sum = 0u64;
                for j in i..got.len() {
                    sum += got[j].1;
                    let allowed = limit as f64 + (got[j].0 - got[i].0) * rate;
                    assert!(
                        sum as f64 <= allowed + 1e-6,
                        "limit {limit}: {sum} admitted over {} us",
                        got[j].0 - got[i].0
                    );
                }
            }
        }
    }

    #[test]
    fn property_refusals_say_when_to_come_back() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(11);
        for _ in 0..500 {
            let limit: u64 = rng.random_range(1..1000);
            let tat = rng.random_range(0.0..2.0 * PERIOD_US);
            let now = rng.random_range(0.0..PERIOD_US);
            let cost = rng.random_range(1..=limit);
            match check(tat, now, cost, limit) {
                Verdict::Admit { tat: t, .. } => assert!(t - now <= PERIOD_US + 1.0),
                Verdict::Deny { retry_us, .. } => {
                    assert!(retry_us > 0.0);
                    // Coming back exactly then is admitted.
                    assert!(admitted(check(tat, now + retry_us + 0.01, cost, limit)).is_some());
                }
            }
        }
    }

    #[test]
    fn too_big_a_request_is_refused_for_good() {
        assert!(matches!(
            check(0.0, 5.0, 101, 100),
            Verdict::Deny { retry_us, .. } if retry_us.is_infinite()
        ));
    }

    #[test]
    fn reconciliation_charges_and_refunds() {
        let limit = 600; // 100 ms per unit
        let Verdict::Admit { tat, .. } = check(0.0, 0.0, 100, limit) else {
            panic!("admitted")
        };
        assert_eq!(tat, 10_000_000.0);
        assert_eq!(adjust(tat, 0.0, 50, limit), 15_000_000.0);
        assert_eq!(adjust(tat, 0.0, -60, limit), 4_000_000.0);
        // A refund larger than the charge stops at now.
        assert_eq!(adjust(tat, 1_000.0, -1_000, limit), 1_000.0);
    }

    #[test]
    fn headers_count_down() {
        let mut tat = 0.0;
        for i in 1..=10 {
            match check(tat, 0.0, 1, 10) {
                Verdict::Admit {
                    tat: t, remaining, ..
                } => {
                    assert_eq!(remaining, 10 - i);
                    tat = t;
                }
                Verdict::Deny { .. } => panic!("refused {i}"),
            }
        }
        assert!(matches!(
            check(tat, 0.0, 1, 10),
            Verdict::Deny { remaining: 0, .. }
        ));
    }
}
