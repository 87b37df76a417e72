//! How a command's answer is printed: JSON for scripts (`--json`, or whenever stdout is not a
//! terminal), and for people at a terminal aligned tables, dates and money with its currency.
//!
//! Works on the JSON the admin operations return (the same the admin API answers with), so a
//! command has one result and two renderings; it owns no formatting of its own per command.

use std::io::IsTerminal;

use comfy_table::{presets::UTF8_BORDERS_ONLY, ContentArrangement, Table};
use serde_json::Value;

/// Print `v` for a person when stdout is a terminal and `json` was not asked for; else as JSON.
pub fn print(v: &Value, json: bool) {
    if json || !std::io::stdout().is_terminal() {
        println!(
            "{}",
            serde_json::to_string_pretty(v).unwrap_or_else(|_| v.to_string())
        );
    } else {
        print!("{}", human(v));
    }
}

/// `v` for a person: a list of objects as a table; an object as aligned `field  value` lines,
/// with its lists of objects (a usage report's groups) as tables after them.
pub fn human(v: &Value) -> String {
    match v {
        Value::Array(rows) if rows.iter().all(Value::is_object) => table(rows),
        Value::Object(map) => {
            let mut fields = Table::new();
            fields.load_preset(comfy_table::presets::NOTHING);
            let mut tables = String::new();
            for (k, val) in map {
                match val {
                    Value::Array(rows) if !rows.is_empty() && rows.iter().all(Value::is_object) => {
                        tables.push_str(&format!("\n{k}:\n{}", table(rows)));
                    }
                    Value::Object(inner) if !is_budget(val) => {
                        for (ik, iv) in inner {
                            fields.add_row(vec![format!("{k}.{ik}"), cell(ik, iv)]);
                        }
                    }
                    _ => {
                        fields.add_row(vec![k.clone(), cell(k, val)]);
                    }
                }
            }
            format!("{fields}\n{tables}")
        }
        other => format!("{}\n", cell("", other)),
    }
}

/// Columns that lead a table when present, in this order; the rest follow by name.
const LEADING: [&str; 14] = [
    "id",
    "name",
    "key",
    "team",
    "source",
    "prefix",
    "models",
    "requests",
    "requests_per_minute",
    "tokens_per_minute",
    "max_concurrent",
    "budget",
    "cost_usd",
    "created_at",
];

/// Rows of objects as a table: the [`LEADING`] columns, then the others by name.
fn table(rows: &[Value]) -> String {
    if rows.is_empty() {
        return "(none)\n".into();
    }
    let mut columns: Vec<String> = Vec::new();
    for r in rows {
        if let Value::Object(m) = r {
            for k in m.keys() {
                if !columns.contains(k) {
                    columns.push(k.clone());
                }
            }
        }
    }
    columns.sort_by_key(|c| LEADING.iter().position(|l| l == c).unwrap_or(LEADING.len()));
    let mut t = Table::new();
    t.load_preset(UTF8_BORDERS_ONLY)
        .set_content_arrangement(ContentArrangement::Disabled)
        .set_header(columns.iter().map(|c| c.to_uppercase()));
    for r in rows {
        t.add_row(
            columns
                .iter()
                .map(|c| cell(c, r.get(c).unwrap_or(&Value::Null))),
        );
    }
    format!("{t}\n")
}

fn is_budget(v: &Value) -> bool {
    v.get("amount_usd").is_some()
}

/// One value for a person: `-` for nothing, epoch milliseconds in `…_at` fields as UTC dates,
/// dollars with their currency, lists joined with commas.
fn cell(field: &str, v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => s.clone(),
        Value::Bool(b) => if *b { "yes" } else { "no" }.into(),
        Value::Number(n) if field.ends_with("_at") || field == "ts" => n
            .as_i64()
            .and_then(|ms| u64::try_from(ms).ok())
            .map_or_else(|| n.to_string(), date),
        Value::Number(n) if field.contains("usd") => n.as_f64().map_or_else(|| n.to_string(), usd),
        Value::Number(n) => n.to_string(),
        Value::Array(a) => a
            .iter()
            .map(|x| cell(field, x))
            .collect::<Vec<_>>()
            .join(", "),
        Value::Object(_) if is_budget(v) => {
            let amount = v["amount_usd"].as_f64().map_or_else(|| "-".into(), usd);
            match v["period"].as_str() {
                Some(p) => format!("{amount} {p}"),
                None => amount,
            }
        }
        Value::Object(_) => v.to_string(),
    }
}

/// Epoch milliseconds as `2026-12-02 10:18 UTC`.
fn date(ms: u64) -> String {
    let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(ms);
    let s = crate::telemetry::rfc3339(t);
    format!("{} {} UTC", &s[..10], &s[11..16])
}

/// Dollars with their currency: cents for sums of a cent or more, else to the millionth.
fn usd(v: f64) -> String {
    if v == 0.0 || v.abs() >= 0.01 {
        format!("{v:.2} USD")
    } else {
        format!("{v:.6} USD")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_list_is_an_aligned_table_with_dates_and_money() {
        let out = human(&json!([
            {"name": "ml", "models": ["a", "b"], "created_at": 1_764_670_680_000_i64,
             "budget": {"amount_usd": 5.0, "period": "daily"}, "revoked_at": null},
            {"name": "research-team", "models": ["*"], "created_at": 0,
             "budget": null, "revoked_at": null}
        ]));
        assert!(out.contains("NAME"), "{out}");
        assert!(out.contains("2025-12-02 10:18 UTC"), "{out}");
        assert!(out.contains("1970-01-01 00:00 UTC"), "{out}");
        assert!(out.contains("5.00 USD daily"), "{out}");
        assert!(out.contains("a, b"), "{out}");
        // Aligned: every data line of the table is as wide as the header's.
        let widths: Vec<usize> = out
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| l.chars().count())
            .collect();
        assert!(widths.windows(2).all(|w| w[0] == w[1]), "{out}");
    }

    #[test]
    fn a_report_is_fields_then_its_groups() {
        let out = human(&json!({
            "totals": {"requests": 3, "cost_usd": 0.000_155},
            "groups": [{"key": "mock-gpt", "requests": 3, "cost_usd": 12.5}]
        }));
        assert!(out.contains("totals.requests"), "{out}");
        assert!(out.contains("0.000155 USD"), "{out}");
        assert!(out.contains("12.50 USD"), "{out}");
        assert!(out.contains("KEY"), "{out}");
    }
}
