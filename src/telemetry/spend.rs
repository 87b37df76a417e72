//! Spend as a Prometheus counter in dollars: `tollgate_spend_usd_total{team, model}`.
//!
//! The metrics facade counts in integers, and a float that only goes up would otherwise have to
//! be a gauge. So spend is counted here, per team and model, in nano-dollars (the unit the
//! limits count money in) and written into `/metrics` as dollars with the rest of the text, as
//! a counter. A series is made once per team and model ([`cell`], from the meters of a config
//! snapshot, behind a lock taken only then); a request adds to its cell without a lock.

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use super::names;

/// One series: dollars spent by a team on a model, in nano-dollars.
pub type Cell = Arc<AtomicU64>;

type Series = Vec<(Box<str>, Box<str>, Cell)>;

fn series() -> &'static Mutex<Series> {
    static SERIES: OnceLock<Mutex<Series>> = OnceLock::new();
    SERIES.get_or_init(|| Mutex::new(Vec::new()))
}

/// The cell of `team` and `model`: the same one for the process's life (a reload's new meters
/// find the cells the old ones counted in).
pub fn cell(team: &str, model: &str) -> Cell {
    let mut all = match series().lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    if let Some((_, _, c)) = all.iter().find(|(t, m, _)| &**t == team && &**m == model) {
        return c.clone();
    }
    let c = Cell::default();
    all.push((team.into(), model.into(), c.clone()));
    c
}

/// Add `usd` to a cell, rounded to the nano-dollar.
pub fn add(cell: &AtomicU64, usd: f64) {
    let nanos = (usd * 1e9).round();
    if nanos >= 1.0 {
        cell.fetch_add(nanos as u64, Ordering::Relaxed);
    }
}

/// The series as Prometheus text (`# HELP`, `# TYPE counter`, a line per team and model).
pub fn render(out: &mut String) {
    let all = match series().lock() {
        Ok(g) => g,
        Err(p) => p.into_inner(),
    };
    if all.is_empty() {
        return;
    }
    let _ = writeln!(out, "# HELP {} {}", names::SPEND_USD, HELP);
    let _ = writeln!(out, "# TYPE {} counter", names::SPEND_USD);
    for (team, model, c) in all.iter() {
        let nanos = c.load(Ordering::Relaxed);
        let _ = write!(out, "{}{{team=\"", names::SPEND_USD);
        label_value(out, team);
        out.push_str("\",model=\"");
        label_value(out, model);
        out.push_str("\"} ");
        push_dollars(out, nanos);
        out.push('\n');
    }
    out.push('\n');
}

pub(super) const HELP: &str = "US dollars spent, by team and model, as this process priced it.";

/// `nanos` (billionths of a US dollar, the unit prices are kept in) as dollars with nine decimals:
/// `1234.567890123`. The metrics page and the `x-tollgate-cost-usd` header both write it so.
pub fn push_dollars(out: &mut String, nanos: u64) {
    let mut b = itoa::Buffer::new();
    out.push_str(b.format(nanos / 1_000_000_000));
    out.push('.');
    let frac = b.format(nanos % 1_000_000_000);
    out.extend(std::iter::repeat_n('0', 9 - frac.len()));
    out.push_str(frac);
}

/// A label value escaped as the Prometheus text format asks (`\\`, `\"`, `\n`).
fn label_value(out: &mut String, v: &str) {
    for ch in v.chars() {
        match ch {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_team_and_model_have_one_cell_rendered_in_dollars() {
        let a = cell("spend-test \"q\"", "m\\1");
        let b = cell("spend-test \"q\"", "m\\1");
        assert!(Arc::ptr_eq(&a, &b));
        add(&a, 0.000_155_46);
        add(&b, 1.5);
        let mut out = String::new();
        render(&mut out);
        assert!(
            out.contains("# TYPE tollgate_spend_usd_total counter\n"),
            "{out}"
        );
        assert!(
            out.contains(
                "tollgate_spend_usd_total{team=\"spend-test \\\"q\\\"\",model=\"m\\\\1\"} 1.500155460\n"
            ),
            "{out}"
        );
    }
}
