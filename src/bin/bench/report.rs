//! Results over runs, and the table of medians with ratios to direct and to nginx.

use super::stats::{median, range};

/// Whether a smaller or a larger value is better (for reading "added").
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Better {
    Lower,
    Higher,
}

struct Metric {
    name: String,
    unit: &'static str,
    better: Better,
    /// (target, value per run)
    values: Vec<(&'static str, Vec<f64>)>,
}

#[derive(Default)]
pub struct Results {
    metrics: Vec<Metric>,
}

pub const TARGETS: [&str; 3] = ["direct", "nginx", "tollgate"];

impl Results {
    /// The server's CPU time per request over scenario `name` (the one name the CPU figures go
    /// by, so the targets can find them).
    pub fn record_cpu(&mut self, name: &str, target: &'static str, us_per_request: f64) {
        self.record(
            &format!("{name} server CPU"),
            "µs CPU/req",
            Better::Lower,
            target,
            us_per_request,
        );
    }

    pub fn record(
        &mut self,
        name: &str,
        unit: &'static str,
        better: Better,
        target: &'static str,
        v: f64,
    ) {
        let i = match self.metrics.iter().position(|m| m.name == name) {
            Some(i) => i,
            None => {
                self.metrics.push(Metric {
                    name: name.to_owned(),
                    unit,
                    better,
                    values: Vec::new(),
                });
                self.metrics.len() - 1
            }
        };
        let m = &mut self.metrics[i];
        match m.values.iter_mut().find(|(t, _)| *t == target) {
            Some((_, vs)) => vs.push(v),
            None => m.values.push((target, vec![v])),
        }
    }

    /// The median over runs of `name` for `target`.
    pub fn median(&self, name: &str, target: &str) -> Option<f64> {
        let m = self.metrics.iter().find(|m| m.name == name)?;
        let (_, vs) = m.values.iter().find(|(t, _)| *t == target)?;
        Some(median(vs)).filter(|x| !x.is_nan())
    }

    /// A Markdown table: one row per (metric, target), medians over runs, the spread, and the
    /// difference and ratio to direct and to nginx.
    pub fn table(&self) -> String {
        let mut out = String::new();
        out.push_str("| metric | target | median | runs min..max | vs direct | vs nginx |\n");
        out.push_str("|---|---|---:|---:|---:|---:|\n");
        for m in &self.metrics {
            let med = |t: &str| {
                m.values
                    .iter()
                    .find(|(x, _)| *x == t)
                    .map(|(_, v)| median(v))
                    .filter(|x| !x.is_nan())
            };
            for target in TARGETS {
                let Some((_, vs)) = m.values.iter().find(|(t, _)| *t == target) else {
                    continue;
                };
                let v = median(vs);
                let (lo, hi) = range(vs);
                let cmp = |base: &str| -> String {
                    if base == target {
                        return String::new();
                    }
                    match med(base) {
                        Some(b) if b != 0.0 => {
                            format!("{} ({:.2}x)", signed(v - b, m.unit), v / b)
                        }
                        _ => String::new(),
                    }
                };
                let name = format!("{} ({}{})", m.name, m.unit, arrow(m.better));
                out.push_str(&format!(
                    "| {name} | {target} | {} | {}..{} | {} | {} |\n",
                    fmt(v, m.unit),
                    fmt(lo, m.unit),
                    fmt(hi, m.unit),
                    cmp("direct"),
                    cmp("nginx"),
                ));
            }
        }
        out
    }
}

fn arrow(b: Better) -> &'static str {
    match b {
        Better::Lower => ", lower is better",
        Better::Higher => ", higher is better",
    }
}

fn decimals(unit: &str) -> usize {
    match unit {
        "ms" => 3,
        "req/s" | "MiB" | "µs CPU/req" | "count" => 1,
        _ => 2,
    }
}

fn fmt(v: f64, unit: &str) -> String {
    if v.is_nan() {
        return "-".into();
    }
    format!("{:.*}", decimals(unit), v)
}

fn signed(v: f64, unit: &str) -> String {
    format!("{:+.*}", decimals(unit), v)
}
