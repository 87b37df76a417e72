//! What an upstream may and may not do to Tollgate and its clients, through real sockets against
//! the test kit's mock upstream: its `Retry-After` is bounded and may be a date, its error bodies
//! and headers reach the client only through an allowlist, a rejection of Tollgate's own
//! credential is not the client's 401, a short `Retry-After` on the only upstream is waited out,
//! and one tenant's request that the upstream refuses (403, a request-specific 429) does not take
//! the shared pool or upstream from another tenant.

mod common;

use std::collections::HashMap;
use std::time::{Duration, SystemTime};

use common::{sha256_hex, Gateway, Reply};
use serde_json::json;
use tollgate::testkit::{Fault, MockUpstream};

const KEY_A: &str = "sk-team-a";
const KEY_B: &str = "sk-team-b";
/// The upstream secret Tollgate attaches: it must never come back to a client.
const CANARY: &str = "sk-upstream-CANARY-7f3a9c";

async fn mock() -> MockUpstream {
    MockUpstream::start()
        .await
        .unwrap_or_else(|e| panic!("mock upstream: {e}"))
}

/// Teams `a` and `b` with one key each, sharing model `gpt` on upstream `up` (the static
/// credential [`CANARY`] unless `credential` replaces its entry), `retry` for the model.
fn config(base_url: &str, credential: &str, retry: &str) -> String {
    let credential = if credential.is_empty() {
        "  up-key: { kind: static, secret: \"${UP_KEY}\" }\n".to_owned()
    } else {
        credential.to_owned()
    };
    format!(
        r#"
credentials:
{credential}upstreams:
  up:
    provider: openai
    base_url: {base_url}
    credential: up-key
    timeouts: {{ connect: 500ms, first_byte: 2s, idle: 2s, total: 20s }}
models:
  gpt: {{ targets: [ {{ upstream: up }} ], retry: {{ {retry} }}, deadline: 20s }}
teams:
  a: {{ models: ["*"] }}
  b: {{ models: ["*"] }}
keys:
  - {{ name: a, team: a, sha256: {} }}
  - {{ name: b, team: b, sha256: {} }}
"#,
        sha256_hex(KEY_A),
        sha256_hex(KEY_B)
    )
}

fn env() -> HashMap<String, String> {
    HashMap::from([("UP_KEY".to_string(), CANARY.to_string())])
}

async fn start(m: &MockUpstream, credential: &str, retry: &str) -> Gateway {
    Gateway::start_with_env(&config(&m.base_url(), credential, retry), env()).await
}

async fn send(gw: &Gateway, key: &str, text: &str, stream: bool) -> Reply {
    let body = json!({"model": "gpt", "stream": stream,
        "messages": [{"role": "user", "content": text}]});
    let resp = gw
        .client
        .post(gw.url("/v1/chat/completions"))
        .bearer_auth(key)
        .json(&body)
        .send()
        .await
        .unwrap_or_else(|e| panic!("request failed: {e}"));
    Reply::read(resp).await
}

/// An OpenAI-shaped error body (the test kit's), as text.
fn openai_error(message: &str, kind: &str, code: &str) -> String {
    tollgate::testkit::openai_error(message, kind, Some(code)).to_string()
}

fn respond(status: u16, headers: &[(&str, &str)], body: &str) -> Fault {
    Fault::Respond {
        status,
        headers: headers
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        body: body.to_owned(),
    }
}

// ---- item 10: upstream values are bounded ----

#[tokio::test]
async fn a_huge_retry_after_is_clamped_and_a_date_is_read() {
    // `Retry-After: u64::MAX` used to overflow `Instant + Duration` and panic the request task:
    // the client saw its connection dropped. It is clamped to an hour.
    let m = mock().await;
    let gw = start(&m, "", "max_attempts: 1").await;
    let limited = openai_error("slow down", "rate_limit_error", "rate_limit_exceeded");
    m.push_fault(respond(
        429,
        &[("retry-after", "18446744073709551615")],
        &limited,
    ));
    let r = send(&gw, KEY_A, "hello", false).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.retry_after_secs(), Some(3600), "{:?}", r.headers);
    // Beyond u64 too.
    m.push_fault(respond(429, &[("retry-after", &"9".repeat(40))], &limited));
    let r = send(&gw, KEY_B, "hello", false).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert!(r.retry_after_secs().is_some_and(|s| s <= 3600));

    // An HTTP date is read as the time until then and relayed as seconds.
    let m = mock().await;
    let gw = start(&m, "", "max_attempts: 1").await;
    // A huge error body is read only up to a bound; the client gets a short OpenAI error.
    m.push_fault(respond(500, &[], &"x".repeat(8 << 20)));
    let r = send(&gw, KEY_B, "hello", false).await;
    assert_eq!(r.status, 500);
    r.error();
    assert!(r.body.len() < 4096, "{} bytes", r.body.len());

    let at = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
    m.push_fault(respond(429, &[("retry-after", &at)], &limited));
    let r = send(&gw, KEY_A, "hello", false).await;
    assert_eq!(r.status, 429, "{}", r.body);
    let secs = r.retry_after_secs();
    assert!(
        secs.is_some_and(|s| (28..=31).contains(&s)),
        "retry-after {:?}",
        r.header("retry-after")
    );
}

// ---- item 12: response headers by allowlist ----

#[tokio::test]
async fn only_allowlisted_upstream_headers_reach_the_client() {
    let m = mock().await;
    let gw = start(&m, "", "max_attempts: 1").await;
    let leaky = [
        ("set-cookie", "upstream_session=s3cr3t; Path=/"),
        ("server", "internal-llm-7.prod.corp"),
        ("openai-organization", "org-internal"),
        ("x-ratelimit-limit-requests", "10000"),
        ("x-ratelimit-remaining-tokens", "123"),
        ("x-internal-host", "10.1.2.3"),
        ("via", "1.1 internal-proxy"),
        ("openai-processing-ms", "42"),
    ];
    m.set_response_headers(&leaky);
    for stream in [false, true] {
        let r = send(&gw, KEY_A, "hello", stream).await;
        assert_eq!(r.status, 200, "{}", r.body);
        for (name, _) in &leaky[..7] {
            assert!(
                r.headers.get(*name).is_none(),
                "{name} reached the client (stream {stream}): {:?}",
                r.headers
            );
        }
        let text = format!("{:?}", r.headers);
        for secret in ["s3cr3t", "internal", "10.1.2.3"] {
            assert!(!text.contains(secret), "{secret} in {text}");
        }
        // What the client needs is still there.
        assert!(r.header("content-type").is_some());
        assert_eq!(r.header("openai-processing-ms"), Some("42"));
        assert!(r.header("x-request-id").is_some());
        assert_eq!(r.header("x-tollgate-upstream"), Some("up"));
    }
    // Error answers carry none of them either.
    m.push_fault(respond(
        500,
        &leaky,
        &openai_error("boom", "server_error", "boom"),
    ));
    let r = send(&gw, KEY_B, "hello", false).await;
    assert_eq!(r.status, 500, "{}", r.body);
    for (name, _) in &leaky {
        assert!(r.headers.get(*name).is_none(), "{name}: {:?}", r.headers);
    }
}

// ---- item 11: error bodies ----

/// No 12-character piece of the canary anywhere in what the client got.
fn assert_no_canary(r: &Reply) {
    let all = format!("{:?} {}", r.headers, r.body);
    for i in 0..=CANARY.len() - 12 {
        let piece = &CANARY[i..i + 12];
        assert!(
            !all.contains(piece),
            "canary piece {piece:?} reached the client: {all}"
        );
    }
}

#[tokio::test]
async fn upstream_error_bodies_never_carry_the_credential_or_internals() {
    let m = mock().await;
    let gw = start(&m, "", "max_attempts: 1").await;
    // An upstream that echoes the credential it received, in the message and in a field.
    for status in [400u16, 403, 404, 422, 429, 500] {
        for stream in [false, true] {
            m.push_fault(Fault::EchoCredential { status });
            let r = send(&gw, KEY_A, "hello", stream).await;
            assert_eq!(r.status, status, "{}", r.body);
            let e = r.error();
            assert_no_canary(&r);
            // The OpenAI-shaped parts are relayed, the secret masked, extra fields dropped.
            assert_eq!(
                e["message"], "Incorrect API key provided: ***.",
                "{}",
                r.body
            );
            assert_eq!(e["code"], "invalid_api_key");
            assert!(e.get("received_credential").is_none(), "{}", r.body);
        }
    }
    // The mock really did echo it: the canary is what it received.
    assert!(m.received().iter().all(|r| r.headers["authorization"]
        .to_str()
        .is_ok_and(|v| v.contains(CANARY))));

    // An HTML error page with internal hosts and a DSN: Tollgate's own message instead.
    let page = "<html><body><h1>502 Bad Gateway</h1><pre>upstream db.internal.corp:5432 \
                DATABASE_URL=postgres://tollgate:hunter2@db.internal.corp:5432/prod \
                SENTRY_DSN=https://abc123@o1.ingest.sentry.io/42</pre></body></html>";
    m.push_fault(respond(502, &[], page));
    let r = send(&gw, KEY_B, "hello", false).await;
    assert_eq!(r.status, 502);
    let e = r.error();
    assert_eq!(e["code"], "upstream_error");
    for leak in ["postgres", "hunter2", "internal", "sentry", "<html"] {
        assert!(
            !r.body.contains(leak),
            "{leak} reached the client: {}",
            r.body
        );
    }
    // JSON that is not an OpenAI error is not relayed either.
    m.push_fault(respond(
        500,
        &[],
        r#"{"detail":"Traceback ... /srv/app/secrets.py"}"#,
    ));
    let r = send(&gw, KEY_B, "hello", false).await;
    assert_eq!(r.status, 500);
    assert_eq!(r.error()["code"], "upstream_error");
    assert!(!r.body.contains("secrets.py"), "{}", r.body);
}

#[tokio::test]
async fn an_upstream_refusing_the_gateways_credential_is_a_502_not_the_clients_401() {
    let m = mock().await;
    let gw = start(
        &m,
        "",
        "max_attempts: 3, base_backoff: 1ms, max_backoff: 2ms",
    )
    .await;
    m.set_default_fault(Some(Fault::EchoCredential { status: 401 }));
    for stream in [false, true] {
        m.clear_records();
        let r = send(&gw, KEY_A, "hello", stream).await;
        assert_eq!(r.status, 502, "{}", r.body);
        let e = r.error();
        assert_eq!(e["code"], "upstream_credential_rejected");
        assert!(
            e["message"]
                .as_str()
                .is_some_and(|m| m.contains("refused the gateway's credential")),
            "{}",
            r.body
        );
        assert_no_canary(&r);
        // The same credential is not sent to the same upstream again.
        assert_eq!(m.request_count(), 1);
    }
    // The client's key is fine: the same key works once the upstream takes the credential.
    m.set_default_fault(None);
    assert_eq!(send(&gw, KEY_A, "hello", false).await.status, 200);
}

#[tokio::test]
async fn a_renewed_token_still_refused_is_a_502_after_exactly_one_renewal() {
    // An OAuth2 credential: the upstream refuses every token, the fresh one too. The request is
    // retried once with a renewed token, then the client gets 502, not 401.
    let oauth = tollgate::testkit::MockOAuth::start()
        .await
        .unwrap_or_else(|e| panic!("mock oauth: {e}"));
    oauth.add_client("cid", "cs-1");
    let m = mock().await;
    m.set_default_fault(Some(Fault::EchoCredential { status: 401 }));
    let cred = format!(
        "  up-key:\n    kind: oauth2\n    token_url: {}\n    client_id: cid\n    \
         client_secret: \"${{OA_SECRET}}\"\n    min_renew_interval: 10ms\n",
        oauth.token_url()
    );
    let env = HashMap::from([("OA_SECRET".to_string(), "cs-1".to_string())]);
    let gw = Gateway::start_with_env(&config(&m.base_url(), &cred, "max_attempts: 1"), env).await;
    let r = send(&gw, KEY_A, "hello", false).await;
    assert_eq!(r.status, 502, "{}", r.body);
    assert_eq!(r.error()["code"], "upstream_credential_rejected");
    assert_eq!(m.request_count(), 2, "the original and one renewal retry");
    let tokens: Vec<String> = m
        .received()
        .iter()
        .filter_map(|r| {
            r.headers
                .get("authorization")?
                .to_str()
                .ok()
                .map(str::to_owned)
        })
        .collect();
    assert_ne!(tokens[0], tokens[1], "the retry carried a renewed token");
    for t in &tokens {
        let t = t.trim_start_matches("Bearer ");
        assert!(
            !r.body.contains(t),
            "a token reached the client: {}",
            r.body
        );
    }
}

// ---- item 14: Retry-After on the only upstream ----

#[tokio::test]
async fn a_short_retry_after_on_the_only_upstream_is_waited_out() {
    let m = mock().await;
    let gw = start(
        &m,
        "",
        "max_attempts: 3, base_backoff: 1ms, max_backoff: 2ms",
    )
    .await;
    let limited = openai_error("slow down", "rate_limit_error", "rate_limit_exceeded");
    // 429 with Retry-After: 1 once, then 200: the wait fits retry.max_retry_after (5s by
    // default) and the deadline, so the client gets the 200.
    m.push_fault(Fault::Status {
        status: 429,
        body: limited.clone(),
        retry_after: Some(1),
    });
    let t0 = std::time::Instant::now();
    let r = send(&gw, KEY_A, "hello", false).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert_eq!(r.header("x-tollgate-attempts"), Some("2"));
    assert!(
        t0.elapsed() >= Duration::from_millis(950),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(m.request_count(), 2);
    // A stream request too.
    m.push_fault(Fault::Status {
        status: 429,
        body: limited.clone(),
        retry_after: Some(1),
    });
    let r = send(&gw, KEY_B, "hello", true).await;
    assert_eq!(r.status, 200, "{}", r.body);
    assert!(r.body.contains("[DONE]"), "{}", r.body);

    // Longer than retry.max_retry_after: straight back to the client with its Retry-After.
    m.clear_records();
    m.push_fault(Fault::Status {
        status: 429,
        body: limited,
        retry_after: Some(30),
    });
    let t0 = std::time::Instant::now();
    let r = send(&gw, KEY_A, "hello", false).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.retry_after_secs(), Some(30));
    assert_eq!(r.error()["code"], "rate_limit_exceeded");
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(m.request_count(), 1);
}

#[tokio::test]
async fn retry_after_waits_are_bounded_by_max_retry_after_and_the_deadline() {
    let m = mock().await;
    let limited = openai_error("slow down", "rate_limit_error", "rate_limit_exceeded");
    // `max_retry_after: 0s` never waits.
    let gw = start(&m, "", "max_attempts: 3, max_retry_after: 0s").await;
    m.push_fault(Fault::Status {
        status: 429,
        body: limited.clone(),
        retry_after: Some(1),
    });
    let r = send(&gw, KEY_A, "hello", false).await;
    assert_eq!(
        (r.status, r.retry_after_secs()),
        (429, Some(1)),
        "{}",
        r.body
    );
    assert_eq!(m.request_count(), 1);

    // A wait that would pass the model's deadline is not started.
    let m = mock().await;
    let cfg = config(&m.base_url(), "", "max_attempts: 3, max_retry_after: 10s")
        .replace("deadline: 20s", "deadline: 2s");
    let gw = Gateway::start_with_env(&cfg, env()).await;
    m.push_fault(Fault::Status {
        status: 429,
        body: limited,
        retry_after: Some(3),
    });
    let t0 = std::time::Instant::now();
    let r = send(&gw, KEY_A, "hello", false).await;
    assert_eq!(
        (r.status, r.retry_after_secs()),
        (429, Some(3)),
        "{}",
        r.body
    );
    assert!(
        t0.elapsed() < Duration::from_millis(900),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(m.request_count(), 1);
}

// ---- item 8: shared upstream state ----

const POOL: &str = "  up-key: { kind: pool, tokens: [\"tok-1\", \"tok-2\"] }\n";

fn bearer_uses(m: &MockUpstream, token: &str) -> usize {
    m.received()
        .iter()
        .filter(|r| {
            r.headers.get("authorization").and_then(|v| v.to_str().ok())
                == Some(&format!("Bearer {token}"))
        })
        .count()
}

#[tokio::test]
async fn one_teams_refused_request_does_not_take_the_pool_from_another_team() {
    let m = mock().await;
    let gw = start(
        &m,
        POOL,
        "max_attempts: 3, base_backoff: 1ms, max_backoff: 2ms",
    )
    .await;
    // A request whose content the upstream refuses (moderation): 403, whatever the token.
    m.set_content_fault(
        "FORBIDDEN-TOPIC",
        Some(Fault::Status {
            status: 403,
            body: openai_error(
                "This request violates our policy.",
                "invalid_request_error",
                "content_policy_violation",
            ),
            retry_after: None,
        }),
    );
    // A request that is too large for the per-request limit: a 429 about the request only.
    m.set_content_fault(
        "HUGE-REQUEST",
        Some(Fault::Status {
            status: 429,
            body: openai_error(
                "Request too large for gpt.",
                "tokens",
                "rate_limit_exceeded",
            ),
            retry_after: Some(30),
        }),
    );
    for round in 0..3 {
        let r = send(&gw, KEY_A, &format!("FORBIDDEN-TOPIC {round}"), false).await;
        assert_eq!(r.status, 403, "{}", r.body);
        assert_eq!(r.error()["code"], "content_policy_violation");
        let r = send(&gw, KEY_A, &format!("HUGE-REQUEST {round}"), false).await;
        assert_eq!(r.status, 429, "{}", r.body);
        assert_eq!(r.retry_after_secs(), Some(30));
    }
    // Team B, right after: served, by both pool members (neither was disabled nor cooled).
    m.clear_records();
    for i in 0..6 {
        let r = send(&gw, KEY_B, &format!("hello {i}"), i % 2 == 1).await;
        assert_eq!(r.status, 200, "team B request {i}: {}", r.body);
    }
    assert!(bearer_uses(&m, "tok-1") >= 2 && bearer_uses(&m, "tok-2") >= 2);
}

#[tokio::test]
async fn a_request_specific_429_does_not_mark_the_upstream_for_other_teams() {
    let m = mock().await;
    let gw = start(&m, "", "max_attempts: 1").await;
    let too_large = Fault::Status {
        status: 429,
        body: openai_error(
            "Request too large for gpt.",
            "tokens",
            "rate_limit_exceeded",
        ),
        retry_after: Some(30),
    };
    m.set_content_fault("HUGE-REQUEST", Some(too_large));
    let r = send(&gw, KEY_A, "HUGE-REQUEST", false).await;
    assert_eq!(
        (r.status, r.retry_after_secs()),
        (429, Some(30)),
        "{}",
        r.body
    );
    // Team B right after: the upstream was not marked rate limited for 30 s.
    for stream in [false, true] {
        let r = send(&gw, KEY_B, "hello", stream).await;
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // Even several of team A's own such requests are no evidence about the account.
    for _ in 0..3 {
        assert_eq!(send(&gw, KEY_A, "HUGE-REQUEST", false).await.status, 429);
    }
    assert_eq!(send(&gw, KEY_B, "hello", false).await.status, 200);

    // Evidence about the account does mark it, for everyone: the upstream's own
    // x-ratelimit-remaining-requests: 0 ...
    let limited = openai_error("Rate limit reached", "requests", "rate_limit_exceeded");
    m.push_fault(respond(
        429,
        &[
            ("retry-after", "30"),
            ("x-ratelimit-remaining-requests", "0"),
        ],
        &limited,
    ));
    assert_eq!(send(&gw, KEY_A, "hello", false).await.status, 429);
    let before = m.request_count();
    let r = send(&gw, KEY_B, "hello", false).await;
    assert_eq!(r.status, 429, "{}", r.body);
    assert_eq!(r.error()["code"], "upstream_rate_limited");
    assert_eq!(
        m.request_count(),
        before,
        "a marked upstream is not contacted"
    );

    // ... or 429s to two different teams within the window.
    let m = mock().await;
    let gw = start(&m, "", "max_attempts: 1").await;
    for key in [KEY_A, KEY_B] {
        m.push_fault(respond(429, &[("retry-after", "30")], &limited));
        assert_eq!(send(&gw, key, "hello", false).await.status, 429);
    }
    let r = send(&gw, KEY_A, "hello", false).await;
    assert_eq!(r.error()["code"], "upstream_rate_limited", "{}", r.body);
    assert_eq!(m.request_count(), 2);
}
