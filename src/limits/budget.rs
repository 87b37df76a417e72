//! Budget periods in UTC: which spend counter a moment belongs to, and when it ends.
//!
//! Spend is kept per (scope, period tag): `d:2025-06-01` for a daily budget, `m:2025-06` for a
//! monthly one, `all` when the budget never resets. A new period simply starts a new counter, so
//! nothing has to run at midnight, and a changed period in the config starts fresh. Reservation
//! and settlement themselves live in the backends ([`super::memory`], [`super::redis`]), where the
//! budget check and the reservation are one atomic step.

use std::time::{SystemTime, UNIX_EPOCH};

/// The budget rule both backends apply (the Redis script spells the same test in Lua), all in
/// nano-dollars: refuse once `spent` reaches the budget; while money is left, admit a request
/// whose estimate fits beside the reservations of the requests in flight, or, when it does not
/// fit, admit it only if no other request holds a reservation. That request then holds the
/// whole remainder (its reservation is larger than what is left), so every other request waits
/// until it settles.
///
/// The bound this gives, per scope and period: spend ends at most one request's real cost above
/// the budget (the one admitted on the remainder), plus whatever admitted requests cost beyond
/// their estimate. Completion tokens never exceed the estimate when the request carries an
/// output cap (the team's `max_tokens`, or the client's own); the prompt is estimated from its
/// text.
pub fn admits(budget: u64, spent: u64, reserved: u64, estimate: u64) -> Verdict {
    if spent >= budget {
        return Verdict::Spent;
    }
    if spent.saturating_add(reserved).saturating_add(estimate) <= budget || reserved == 0 {
        Verdict::Admit
    } else {
        Verdict::Held
    }
}

/// What the budget rule says of one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Admit,
    /// Money is left but requests in flight hold it: worth retrying in a moment.
    Held,
    /// The budget is spent until its period ends.
    Spent,
}

/// How long a request refused because others hold the remainder is told to wait.
pub const HELD_RETRY: std::time::Duration = std::time::Duration::from_secs(1);

use crate::config::BudgetPeriod;

/// Seconds since the Unix epoch, now.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The counter name of the period containing `unix_secs`.
pub fn period_tag(period: BudgetPeriod, unix_secs: u64) -> String {
    let (y, m, d) = civil_from_days((unix_secs / 86_400) as i64);
    match period {
        BudgetPeriod::Daily => format!("d:{y:04}-{m:02}-{d:02}"),
        BudgetPeriod::Monthly => format!("m:{y:04}-{m:02}"),
        BudgetPeriod::None => "all".to_owned(),
    }
}

/// Seconds from `unix_secs` until the period ends (None: it never does).
pub fn secs_until_reset(period: BudgetPeriod, unix_secs: u64) -> Option<u64> {
    let day = unix_secs / 86_400;
    match period {
        BudgetPeriod::Daily => Some((day + 1) * 86_400 - unix_secs),
        BudgetPeriod::Monthly => {
            let (y, m, _) = civil_from_days(day as i64);
            let (ny, nm) = if m == 12 { (y + 1, 1) } else { (y, m + 1) };
            let next = days_from_civil(ny, nm, 1) as u64 * 86_400;
            Some(next.saturating_sub(unix_secs))
        }
        BudgetPeriod::None => None,
    }
}

/// How long a period's spend counter is worth keeping (Redis TTL, in seconds; 0 = forever).
pub fn retention_secs(period: BudgetPeriod) -> u64 {
    match period {
        BudgetPeriod::Daily => 3 * 86_400,
        BudgetPeriod::Monthly => 70 * 86_400,
        BudgetPeriod::None => 0,
    }
}

/// (year, month, day) of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    (if m <= 2 { y + 1 } else { y }, m, d)
}

/// Days since 1970-01-01 of a civil date.
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = m as i64;
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + d as i64 - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_remainder_goes_to_one_request_at_a_time() {
        // Fits beside others.
        assert_eq!(admits(100, 10, 30, 60), Verdict::Admit);
        // Does not fit, but nobody else holds a reservation: admitted on the remainder.
        assert_eq!(admits(100, 90, 0, 500), Verdict::Admit);
        // Does not fit and another request holds a reservation: refused for now.
        assert_eq!(admits(100, 10, 30, 61), Verdict::Held);
        // Nothing left: refused, however small.
        assert_eq!(admits(100, 100, 0, 0), Verdict::Spent);
        assert_eq!(admits(100, 150, 0, 1), Verdict::Spent);
    }

    #[test]
    fn tags_follow_the_utc_calendar() {
        // 2024-02-29T23:59:59Z and one second later.
        let t = 1_709_251_199;
        assert_eq!(period_tag(BudgetPeriod::Daily, t), "d:2024-02-29");
        assert_eq!(period_tag(BudgetPeriod::Daily, t + 1), "d:2024-03-01");
        assert_eq!(period_tag(BudgetPeriod::Monthly, t), "m:2024-02");
        assert_eq!(period_tag(BudgetPeriod::Monthly, t + 1), "m:2024-03");
        assert_eq!(period_tag(BudgetPeriod::None, t), "all");
        assert_eq!(secs_until_reset(BudgetPeriod::Daily, t), Some(1));
        assert_eq!(secs_until_reset(BudgetPeriod::Monthly, t), Some(1));
        assert_eq!(secs_until_reset(BudgetPeriod::None, t), None);
        // 2023-12-15T00:00:00Z: the month ends at 2024-01-01.
        assert_eq!(
            secs_until_reset(BudgetPeriod::Monthly, 1_702_598_400),
            Some(17 * 86_400)
        );
    }

    #[test]
    fn calendar_round_trips() {
        for day in (-800_000..800_000).step_by(997) {
            let (y, m, d) = civil_from_days(day);
            assert_eq!(days_from_civil(y, m, d), day);
        }
    }
}
