//! `# HELP` for every metric Tollgate exports: one table, described to the recorder when it is
//! installed. A metric added to [`super::names`] gets its line here (a test holds every name
//! to having one).

use metrics::{describe_counter, describe_gauge, describe_histogram};

use super::names::*;

/// What a metric is, for its `# TYPE`.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub(super) enum Kind {
    Counter,
    Gauge,
    Histogram,
}

use Kind::{Counter, Gauge, Histogram};

/// Every metric: kind, name, help.
pub(super) const HELP: &[(Kind, &str, &str)] = &[
    (Counter, REQUESTS, "Requests answered, by model, team and HTTP status."),
    (Histogram, LATENCY, "Whole request time in seconds, by model (streams: to the last byte)."),
    (Histogram, TTFB, "Time to the first byte of the answer in seconds, by model."),
    (Histogram, TTFT, "Streams: time to the first content event in seconds, by model."),
    (Histogram, OUTPUT_RATE, "Streams: output tokens per second after the first, by model."),
    (Histogram, OVERHEAD, "Time spent inside Tollgate per request in seconds (upstream time excluded)."),
    (Counter, TOKENS, "Tokens, by model, team and direction (in: prompt, out: completion)."),
    (Gauge, IN_FLIGHT, "Requests in flight now, streams included."),
    (Counter, ERRORS, "Requests that ended in an error, by error kind."),
    (Counter, ATTEMPTS, "Upstream attempts, by upstream and outcome (ok or an error kind)."),
    (Gauge, BREAKER_STATE, "Circuit breaker state by upstream: 0 closed, 1 half-open, 2 open."),
    (Gauge, QUEUE_DEPTH, "Requests waiting for an upstream's concurrency slot, by upstream."),
    (Histogram, QUEUE_WAIT, "Time waited for an upstream's concurrency slot in seconds, by upstream."),
    (Counter, RETRY_BUDGET_EXHAUSTED, "Retries not made because the model's retry budget was spent, by model."),
    (Counter, FALLBACKS, "Requests that fell back from one model to another, by from and to."),
    (Counter, CREDENTIAL_RENEWALS, "Credential renewals (OAuth2 token calls that succeeded, JWT re-signs), by credential."),
    (Counter, CREDENTIAL_RENEWAL_FAILURES, "Failed token calls, by credential and class (transient or permanent)."),
    (Counter, CREDENTIAL_401_RETRIES, "Upstream 401s answered by renewing the credential and retrying once, by credential."),
    (Counter, CREDENTIAL_429_ROTATIONS, "Upstream 429s answered by rotating to another pool member, by credential."),
    (Gauge, CREDENTIAL_POOL_MEMBERS, "Pool members by credential and state (valid, cooling_down, disabled)."),
    (Counter, LIMIT_REJECTIONS, "Requests refused by a limit, by scope (key, team) and limit (rpm, tpm, concurrency, budget)."),
    (Counter, LIMITER_BACKEND_ERRORS, "Limiter backend calls that failed, by backend and operation."),
    (Counter, USAGE_ROWS, "Usage rows by outcome (written, spilled, replayed, lost)."),
    (Gauge, USAGE_QUEUE, "Usage rows queued for the store writer."),
    (Counter, USAGE_WRITE_ERRORS, "Failed usage row writes to the store."),
    (Gauge, CONNECTIONS_OPEN, "Client connections open now."),
    (Counter, CONNECTIONS_CLOSED, "Client connections the server closed, by reason (no_request, idle, write_timeout)."),
    // Rendered by `spend` itself (a float counter), not described to the recorder.
    (Counter, SPEND_USD, super::spend::HELP),
    (Counter, BATCH_LINES, "Batch lines answered and recorded, by outcome (completed, failed)."),
    (Gauge, BUILD_INFO, "Always 1; the labels say the version and the commit of the binary."),
    (Counter, CACHE_HITS, "Response cache hits, by tier."),
    (Counter, CACHE_MISSES, "Response cache misses, by tier."),
    (Gauge, CACHE_BYTES, "Bytes held by the response cache, by tier (and model for the disk tier)."),
    (Gauge, CACHE_SAVED_USD, "US dollars the response cache saved (the price of the answers it served), since start."),
    (Counter, CACHE_WRITES, "Entries written to the shared cache tiers (disk, Redis)."),
    (Counter, CACHE_WRITES_DROPPED, "Cache writes dropped because the write queue was full."),
    (Counter, TRACE_SPANS_DROPPED, "Finished trace spans not exported, by reason (queue_full, export_failed)."),
    (Counter, TRACE_SPANS_EXPORTED, "Trace spans the OTLP collector accepted."),
];

/// Describe every metric to the installed recorder.
pub(super) fn describe() {
    for &(kind, name, help) in HELP.iter().filter(|(_, n, _)| *n != SPEND_USD) {
        match kind {
            Counter => describe_counter!(name, help),
            Gauge => describe_gauge!(name, help),
            Histogram => describe_histogram!(name, help),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The metric names a text mentions (`tollgate_…`, `process_…`), histogram suffixes removed.
    fn mentioned(text: &str) -> Vec<String> {
        let mut out = Vec::new();
        for (i, _) in text
            .match_indices("tollgate_")
            .chain(text.match_indices("process_"))
        {
            let name: String = text[i..]
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            out.push(base.to_owned());
        }
        out
    }

    #[test]
    fn the_grafana_dashboard_queries_only_metrics_that_exist() {
        let dashboard = include_str!("../../docs/grafana/tollgate.json");
        let parsed: serde_json::Value =
            serde_json::from_str(dashboard).unwrap_or(serde_json::Value::Null);
        let panels = parsed["panels"].as_array().map_or(0, Vec::len);
        assert!(panels >= 12, "{panels} panels");
        let process = ["process_cpu_seconds_total", "process_resident_memory_bytes"];
        let names = mentioned(dashboard);
        assert!(names.len() > 20, "{names:?}");
        for name in names {
            assert!(
                HELP.iter().any(|(_, n, _)| *n == name) || process.contains(&name.as_str()),
                "the dashboard queries {name}, which Tollgate does not export"
            );
        }
    }

    #[test]
    fn counters_and_only_counters_end_in_total() {
        for (kind, name, help) in HELP {
            assert_eq!(name.ends_with("_total"), *kind == Kind::Counter, "{name}");
            assert!(help.ends_with('.'), "{name}: {help}");
        }
    }
}
