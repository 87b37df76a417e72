//! Exponential backoff with full jitter (the AWS architecture blog's "full jitter"): the n-th
//! wait is uniform in `[0, min(max, base * 2^n)]`. Full jitter spreads the retries of many
//! replicas that failed at the same moment, so a recovering token server is not hit in lockstep.

use std::time::Duration;

use rand::Rng;

/// The cap for attempt `n` (0-based): `min(max, base * 2^n)`, without overflow.
pub fn cap(attempt: u32, base: Duration, max: Duration) -> Duration {
    let factor = 1u32.checked_shl(attempt.min(31)).unwrap_or(u32::MAX);
    base.checked_mul(factor).unwrap_or(max).min(max)
}

/// A full-jitter wait for attempt `n` (0-based).
pub fn full_jitter(attempt: u32, base: Duration, max: Duration, rng: &mut impl Rng) -> Duration {
    let cap = cap(attempt, base, max);
    if cap.is_zero() {
        return cap;
    }
    let nanos = u64::try_from(cap.as_nanos()).unwrap_or(u64::MAX);
    Duration::from_nanos(rng.random_range(0..=nanos))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;

    /// Property: for any attempt, base and max, the wait is within [0, min(max, base*2^n)],
    /// and the cap never decreases with the attempt number.
    #[test]
    fn waits_stay_within_the_cap_for_random_inputs() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for _ in 0..20_000 {
            let attempt = rng.random_range(0..80u32);
            let base = Duration::from_nanos(rng.random_range(0..5_000_000_000u64));
            let max = Duration::from_nanos(rng.random_range(0..120_000_000_000u64));
            let w = full_jitter(attempt, base, max, &mut rng);
            let c = cap(attempt, base, max);
            assert!(
                w <= c,
                "attempt {attempt} base {base:?} max {max:?}: {w:?} > {c:?}"
            );
            assert!(c <= max);
            assert!(cap(attempt + 1, base, max) >= c);
            if attempt < 20 {
                let exact = base.checked_mul(1 << attempt).unwrap_or(max);
                assert_eq!(c, exact.min(max));
            }
        }
    }

    #[test]
    fn jitter_actually_spreads() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(1);
        let base = Duration::from_millis(100);
        let max = Duration::from_secs(10);
        let waits: Vec<_> = (0..200)
            .map(|_| full_jitter(3, base, max, &mut rng))
            .collect();
        let lo = waits
            .iter()
            .filter(|w| **w < Duration::from_millis(400))
            .count();
        assert!(lo > 50 && lo < 150, "{lo}");
    }
}
