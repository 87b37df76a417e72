//! What the request body costs on the request path: parse, shape, estimate and serialise one
//! realistic chat body (a system prompt, a few turns, one tool; 2.7 KiB), as `proxy` does
//! for every request before the upstream is called.
//!
//! ```text
//! cargo build --release --example body_cost
//! target/release/examples/body_cost 100000            # wall time per request
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/body_cost 0
//! valgrind --tool=callgrind --callgrind-out-file=/dev/null target/release/examples/body_cost 2000
//! ```
//!
//! Instructions per request = (Ir with 2000 − Ir with 0) / 2000 (callgrind's "Collected" line).

use std::time::Instant;

use bytes::Bytes;
use http::HeaderMap;
use serde_json::{json, Value};
use tollgate::config::{RangeDefault, TeamConfig};
use tollgate::limits::estimate_prompt_tokens;
use tollgate::openai::Body;
use tollgate::policy::{self, Endpoint};

/// A chat request as a coding assistant sends it: system prompt, history, one tool.
fn realistic_body() -> Bytes {
    let system = "You are a careful assistant for a software team. Answer briefly, cite the file \
                  and line you rely on, and say when you are unsure. "
        .repeat(8);
    let turn = "Here is the function that fails under load; the pool is exhausted after a few \
                hundred requests and I suspect the guard is never dropped on the error path. "
        .repeat(3);
    let body = json!({
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": turn},
            {"role": "assistant", "content": "The guard is moved into the task, so it lives \
                until the task ends; on the error path the task returns early. Can you show \
                the caller?"},
            {"role": "user", "content": [{"type": "text", "text": turn}]},
        ],
        "tools": [{"type": "function", "function": {
            "name": "read_file", "description": "Read a file of the repository",
            "parameters": {"type": "object", "properties": {
                "path": {"type": "string", "description": "path from the repository root"},
                "from": {"type": "integer"}, "to": {"type": "integer"}},
                "required": ["path"]}}}],
        "temperature": 0.2,
        "max_tokens": 1024,
        "stream": false,
        "user": "dev-42",
        "metadata": {"session": "a1b2c3", "ticket": "OPS-1234"}
    });
    Bytes::from(body.to_string())
}

/// One request's body work; returns something that depends on all of it.
fn once(raw: &Bytes, team: &TeamConfig, headers: &HeaderMap) -> usize {
    let Ok(mut body) = Body::parse(raw.clone()) else {
        return 0;
    };
    let Ok(shaped) = policy::shape(Endpoint::Chat, team, headers, &mut body) else {
        return 0;
    };
    let estimate = estimate_prompt_tokens(&body);
    set_model(&mut body, "upstream-model");
    let sent = body.to_bytes().len();
    sent + estimate as usize + shaped.model.len()
}

/// As an attempt does: the upstream's own model name, when it has one.
fn set_model(body: &mut Body, model: &str) {
    if body.get::<&str>("model").and_then(Result::ok) != Some(model) {
        body.insert("model", Value::from(model));
    }
}

fn main() {
    let n: usize = std::env::args()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(100_000);
    let raw = realistic_body();
    let team = TeamConfig {
        models: vec!["*".into()],
        max_tokens: Some(RangeDefault {
            default: Some(512),
            max: Some(4096),
        }),
        ..TeamConfig::default()
    };
    let headers = HeaderMap::new();
    let started = Instant::now();
    let mut sink = 0usize;
    for _ in 0..n {
        sink = sink.wrapping_add(once(&raw, &team, &headers));
    }
    let per = started.elapsed().as_nanos() / (n.max(1) as u128);
    println!(
        "body {} bytes, {n} requests, {per} ns/request (check {sink})",
        raw.len()
    );
}
