//! Unit tests of parsing and validation.
use super::*;
use std::collections::HashMap;

const BASE: &str = r#"
upstreams:
  m: { provider: mock }
models:
  mock-gpt: { targets: [ { upstream: m } ] }
teams:
  t: { models: ["*"] }
"#;

fn check(text: &str) -> Result<Vec<String>, String> {
    Config::parse(text)
        .map_err(|e| e.to_string())?
        .validate(&HashMap::new())
        .map_err(|e| e.to_string())
}

#[test]
fn limits_are_validated_with_field_paths() {
    let t = BASE.replace(
        r#"t: { models: ["*"] }"#,
        r#"t: { models: ["*"], requests_per_minute: 0 }"#,
    );
    assert_eq!(
        check(&t).err().as_deref(),
        Some("teams.t.requests_per_minute: must be greater than 0 (leave it out for no limit)")
    );
    let t = format!(
        "{BASE}keys:\n  - {{ name: k, team: t, sha256: {}, budget: {{ amount_usd: -1 }} }}\n",
        "a".repeat(64)
    );
    assert_eq!(
        check(&t).err().as_deref(),
        Some("keys[0].budget.amount_usd: must be a number from 0 to 1e9")
    );
    let t = format!("{BASE}limits: {{ backend: redis }}\n");
    assert_eq!(
        check(&t).err().as_deref(),
        Some("limits.redis_url: is required with backend: redis")
    );
    let t = format!("{BASE}limits: {{ backend: redis, redis_url: \"http://x\" }}\n");
    assert!(check(&t).is_err_and(|e| e.starts_with("limits.redis_url: must start")));
    // TLS to Redis: `rediss://`, with or without a CA bundle; the bundle needs `rediss://`.
    let t = format!("{BASE}limits: {{ backend: redis, redis_url: \"rediss://r:6380\" }}\n");
    assert_eq!(check(&t).err(), None);
    let t = format!(
        "{BASE}limits: {{ backend: redis, redis_url: \"redis://r\", redis_tls: {{ ca_file: /ca.pem }} }}\n"
    );
    assert_eq!(
        check(&t).err().as_deref(),
        Some("limits.redis_tls: needs a rediss:// redis_url (TLS)")
    );
    let t = format!("{BASE}limits: {{ backned: redis }}\n");
    assert!(check(&t).is_err_and(|e| e.contains("backned")));
    let t = format!("{BASE}prices: {{ x: {{ input_per_million: -1, output_per_million: 1 }} }}\n");
    assert_eq!(
        check(&t).err().as_deref(),
        Some("prices.x.input_per_million: must be a number of at least 0")
    );
}

#[test]
fn durations_parse_with_units() {
    assert_eq!(
        Dur::parse("250ms").map(|d| d.0),
        Ok(Duration::from_millis(250))
    );
    assert_eq!(Dur::parse("2m").map(|d| d.0), Ok(Duration::from_secs(120)));
    assert_eq!(
        Dur::parse("1d").map(|d| d.0),
        Ok(Duration::from_secs(86_400))
    );
    assert_eq!(
        Dur::parse("1.5d").map(|d| d.0),
        Ok(Duration::from_secs(129_600))
    );
    assert!(Dur::parse("5").is_err());
    assert!(Dur::parse("5y").is_err());
}

#[test]
fn unknown_field_names_path_and_line() {
    let text = format!("{BASE}\nserver:\n  listen: 127.0.0.1:1\n  bogus: 1\n");
    let e = Config::parse(&text)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(e.contains("bogus"), "{e}");
    assert!(e.contains("line 11"), "{e}");
}

#[test]
fn undefined_upstream_is_named() {
    let text = BASE.replace("upstream: m", "upstream: nope");
    let cfg = Config::parse(&text).map_err(|e| e.to_string());
    let e = cfg.and_then(|c| c.validate(&HashMap::new()).map_err(|e| e.to_string()));
    assert_eq!(
        e.err().as_deref(),
        Some("models.mock-gpt.targets[0].upstream: upstream 'nope' is not defined under upstreams")
    );
}

fn validate(text: &str, env: &HashMap<String, String>) -> Result<Vec<String>, String> {
    Config::parse(text)
        .map_err(|e| e.to_string())
        .and_then(|c| c.validate(env).map_err(|e| e.to_string()))
}

#[test]
fn credential_kinds_parse_validate_and_warn_on_literals() {
    let env: HashMap<String, String> = [
        ("SK".to_string(), "s3cret".to_string()),
        ("GLM".to_string(), "id.sec".to_string()),
    ]
    .into();
    let text = format!(
        "{BASE}
credentials:
  baidu:
    kind: oauth2
    token_url: http://127.0.0.1:1/oauth/2.0/token
    client_id: ak
    client_secret: ${{SK}}
    client_auth: query
    placement: {{ query: access_token }}
  glm: {{ kind: jwt, api_key: '${{GLM}}' }}
  pool:
    kind: pool
    tokens: [literal-token]
    members:
      - {{ kind: static, secret: '${{SK}}' }}
"
    );
    let w = validate(&text, &env).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(w.len(), 1, "{w:?}");
    assert!(w[0].starts_with("credentials.pool.tokens[0]"), "{w:?}");
    assert!(!w[0].contains("literal-token"), "{w:?}");

    let bad = text.replace("client_auth: query", "client_auth: query\n    bogus: 1");
    let e = validate(&bad, &env).err().unwrap_or_default();
    assert!(e.contains("bogus"), "{e}");
    let bad = text.replace("'${GLM}'", "'${SK}'");
    let e = validate(&bad, &env).err().unwrap_or_default();
    assert_eq!(e, "credentials.glm.api_key: must have the form id.secret");
    let bad = text.replace(
        "{ kind: static, secret: '${SK}' }",
        "{ kind: pool, tokens: [x] }",
    );
    let e = validate(&bad, &env).err().unwrap_or_default();
    assert_eq!(e, "credentials.pool.members[0]: pools do not nest");
}

#[test]
fn connection_limits_are_validated_with_field_paths() {
    for (server, path) in [
        ("max_connections: 0", "server.max_connections"),
        ("idle_timeout: 0s", "server.idle_timeout"),
        ("write_timeout: 0s", "server.write_timeout"),
        (
            "http2: { max_concurrent_streams: 0 }",
            "server.http2.max_concurrent_streams",
        ),
    ] {
        let t = format!("server: {{ {server} }}\n{BASE}");
        assert!(
            check(&t).is_err_and(|e| e.starts_with(path)),
            "{server}: {:?}",
            check(&t)
        );
    }
    let t = format!("server: {{ http2: {{ max_streams: 5 }} }}\n{BASE}");
    assert!(check(&t).is_err_and(|e| e.contains("server.http2") && e.contains("max_streams")));
    let c = Config::parse(BASE).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.server.idle_timeout, secs(60));
    assert_eq!(c.server.max_connections, None);
}

#[test]
fn dangerous_forward_headers_are_refused_with_their_index() {
    for (i, h) in [
        "connection",
        "Transfer-Encoding",
        "te",
        "trailer",
        "upgrade",
        "keep-alive",
        "proxy-authorization",
        "authorization",
        "api-key",
        "X-Api-Key",
        "cookie",
        "host",
    ]
    .iter()
    .enumerate()
    {
        let t = format!("server: {{ forward_headers: [accept, {h}] }}\n{BASE}");
        let e = check(&t).err().unwrap_or_default();
        assert!(
            e.starts_with("server.forward_headers[1]: ") && e.contains("may not be forwarded"),
            "{i} {h}: {e}"
        );
    }
    let t = format!("server: {{ forward_headers: [accept, x-team-trace] }}\n{BASE}");
    assert!(check(&t).is_ok());
}

#[test]
fn the_admin_key_may_not_be_a_client_key() {
    let env = HashMap::from([
        ("K".to_string(), "sk-same".to_string()),
        ("A".to_string(), "sk-same".to_string()),
    ]);
    let hash = hex::encode(<sha2::Sha256 as sha2::Digest>::digest(b"sk-same"));
    // Same key through two references, and a hash against a reference.
    for (key, admin) in [
        ("key: \"${K}\"", "key: \"${A}\"".to_string()),
        ("key: \"${K}\"", format!("sha256: {hash}")),
        (
            &*format!("sha256: {}", hash.to_uppercase()),
            "key: \"${A}\"".to_string(),
        ),
    ] {
        let t = format!(
            "{BASE}keys:\n  - {{ name: k0, team: t, sha256: {} }}\n  - {{ name: k1, team: t, {key} }}\nadmin: {{ {admin} }}\n",
            "b".repeat(64)
        );
        let e = validate(&t, &env).err().unwrap_or_default();
        assert!(e.starts_with("admin."), "{key} / {admin}: {e}");
        assert!(e.contains("keys[1]") && !e.contains("sk-same"), "{e}");
    }
    let env = HashMap::from([
        ("K".to_string(), "sk-client".to_string()),
        ("A".to_string(), "sk-admin".to_string()),
    ]);
    let t = format!(
        "{BASE}keys:\n  - {{ name: k1, team: t, key: \"${{K}}\" }}\nadmin: {{ key: \"${{A}}\" }}\n"
    );
    assert!(validate(&t, &env).is_ok());
}

#[test]
fn the_metrics_key_and_listener_are_checked() {
    let t = format!("server: {{ metrics_key: \"${{NOPE}}\" }}\n{BASE}");
    assert!(check(&t).is_err_and(|e| e.starts_with("server.metrics_key: ")));
    let t = format!(
        "server: {{ listen: \"127.0.0.1:9000\", metrics_listen: \"127.0.0.1:9000\" }}\n{BASE}"
    );
    assert!(check(&t).is_err_and(|e| e.starts_with("server.metrics_listen: ")));
    let t = format!("server: {{ metrics_listen: \"127.0.0.1:9100\" }}\n{BASE}");
    assert!(check(&t).is_ok());
}

#[test]
fn the_cache_is_validated_with_field_paths() {
    let with = |cache: &str| {
        BASE.replace(
            "targets: [ { upstream: m } ] }",
            &format!("targets: [ {{ upstream: m }} ], cache: {cache} }}"),
        )
    };
    assert!(check(&with("{}")).is_ok());
    assert!(check(&with(
        "{ tiers: [memory, disk], ttl: 10m, qualify: all, shared: true }"
    ))
    .is_ok());
    let cases = [
        (
            "{ tiers: [] }",
            "models.mock-gpt.cache.tiers: needs at least one tier",
        ),
        (
            "{ tiers: [memory, memory] }",
            "models.mock-gpt.cache.tiers[1]: tier 'memory' is listed twice",
        ),
        (
            "{ ttl: 500ms }",
            "models.mock-gpt.cache.ttl: must be at least 1s",
        ),
        (
            "{ max_entry_bytes: 0 }",
            "models.mock-gpt.cache.max_entry_bytes: must be greater than 0",
        ),
        (
            "{ max_bytes: { memory: 10 }, max_entry_bytes: 100 }",
            "models.mock-gpt.cache.max_bytes.memory: must be at least max_entry_bytes",
        ),
        (
            "{ single_flight: { enabled: true, max_wait: 0s } }",
            "models.mock-gpt.cache.single_flight.max_wait: must be greater than 0",
        ),
        (
            "{ tiers: [redis] }",
            "cache.redis_url: is required when a model's cache lists the redis tier",
        ),
    ];
    for (cache, want) in cases {
        assert_eq!(check(&with(cache)).err().as_deref(), Some(want), "{cache}");
    }
    assert!(check(&with("{ tiers: [tape] }")).is_err_and(|e| e.contains("tape")));
    let t = format!(
        "{}cache: {{ redis_url: \"http://x\" }}\n",
        with("{ tiers: [redis] }")
    );
    assert!(check(&t).is_err_and(|e| e.starts_with("cache.redis_url: must start")));
    let t = format!("{}cache: {{ write_queue: 0 }}\n", with("{}"));
    assert_eq!(
        check(&t).err().as_deref(),
        Some("cache.write_queue: must be greater than 0")
    );
    let t = with("{}").replace(
        r#"t: { models: ["*"] }"#,
        r#"t: { models: ["*"], cache: { enabled: false, ttl: 0s } }"#,
    );
    assert_eq!(
        check(&t).err().as_deref(),
        Some("teams.t.cache.ttl: must be at least 1s")
    );
}

#[test]
fn a_relative_sqlite_path_is_the_config_files_directorys() {
    use super::store::sqlite_relative_to;
    let dir = std::path::Path::new("/etc/tollgate");
    assert_eq!(
        sqlite_relative_to("sqlite://tollgate.db?mode=rwc", dir).as_deref(),
        Some("sqlite:///etc/tollgate/tollgate.db?mode=rwc")
    );
    assert_eq!(
        sqlite_relative_to("sqlite:data/t.db", dir).as_deref(),
        Some("sqlite:///etc/tollgate/data/t.db")
    );
    for unchanged in [
        "sqlite:///var/lib/t.db",
        "sqlite::memory:",
        "sqlite://:memory:",
        "postgres://u@h/db",
    ] {
        assert_eq!(sqlite_relative_to(unchanged, dir), None, "{unchanged}");
    }
}

#[test]
fn listen_takes_a_host_name() {
    const MIN: &str = BASE;
    let c = Config::parse(&format!(
        "{MIN}server: {{ listen: \"localhost:8080\", metrics_listen: \"localhost:9090\" }}\n"
    ))
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.server.listen,
        std::net::SocketAddr::from(([127, 0, 0, 1], 8080))
    );
    assert_eq!(
        c.server.metrics_listen,
        Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9090)))
    );
    let c = Config::parse(&format!("{MIN}server: {{ listen: \"[::1]:81\" }}\n"))
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(c.server.listen.is_ipv6());
    let e = Config::parse(&format!("{MIN}server: {{ listen: \"localhost\" }}\n")).err();
    assert!(e.is_some_and(|e| e.to_string().contains("server.listen")));
}

#[test]
fn traces_are_off_by_default_and_their_fields_are_checked_with_paths() {
    let cfg = Config::parse(BASE).unwrap_or_else(|e| panic!("{e}"));
    assert!(cfg.telemetry.traces.is_none());
    let with = |fields: &str| format!("{BASE}telemetry:\n  traces: {{ {fields} }}\n");
    let ok = with("endpoint: http://127.0.0.1:4318");
    assert_eq!(check(&ok), Ok(Vec::new()));
    let cases = [
        ("endpoint: nope", "telemetry.traces.endpoint: invalid URL"),
        (
            "endpoint: ftp://x",
            "telemetry.traces.endpoint: must be http or https",
        ),
        (
            "endpoint: http://x, sampling_ratio: 1.5",
            "telemetry.traces.sampling_ratio: must be between 0 and 1",
        ),
        (
            "endpoint: http://x, queue_size: 0",
            "telemetry.traces.queue_size: must be greater than 0",
        ),
        (
            "endpoint: http://x, export_timeout: 0s",
            "telemetry.traces.export_timeout: must be greater than 0",
        ),
        (
            "endpoint: http://x, headers: { x-token: \"${NOT_SET}\" }",
            "telemetry.traces.headers.x-token: environment variable NOT_SET is not set",
        ),
        (
            "endpoint: http://x, headers: { X-Token: \"${NOT_SET}\" }",
            "telemetry.traces.headers.X-Token: is not a valid lowercase header name",
        ),
        (
            "endpoint: http://x, protocol: thrift",
            "telemetry.traces.protocol: unknown variant",
        ),
        (
            "endpoint: http://x, sampling: 1",
            "telemetry.traces.sampling: unknown field",
        ),
    ];
    for (fields, want) in cases {
        let got = check(&with(fields)).err().unwrap_or_default();
        assert!(got.starts_with(want), "{fields}: {got}");
    }
    // A literal header value is a secret written in the file: warned about, never printed.
    let warned = check(&with("endpoint: http://x, headers: { x-token: s3cr3t }"));
    let warnings = warned.unwrap_or_default();
    assert!(warnings
        .iter()
        .any(|w| w.starts_with("telemetry.traces.headers.x-token: secret written literally")));
    assert!(warnings.iter().all(|w| !w.contains("s3cr3t")));
}

#[test]
fn the_http_export_url_gets_the_traces_path_only_when_it_has_none() {
    let t = |endpoint: &str, protocol: OtlpProtocol| {
        let yaml = format!("endpoint: {endpoint}");
        let mut c: TracesConfig = serde_yaml_ng::from_str(&yaml).unwrap_or_else(|e| panic!("{e}"));
        c.protocol = protocol;
        c.export_url()
    };
    assert_eq!(
        t("http://c:4318", OtlpProtocol::Http),
        "http://c:4318/v1/traces"
    );
    assert_eq!(
        t("http://c:4318/", OtlpProtocol::Http),
        "http://c:4318/v1/traces"
    );
    assert_eq!(
        t("https://c/otlp/v1/traces", OtlpProtocol::Http),
        "https://c/otlp/v1/traces"
    );
    assert_eq!(t("http://c:4317", OtlpProtocol::Grpc), "http://c:4317");
}

#[test]
fn relative_batch_files_are_the_config_files_directorys() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("t.yaml");
    std::fs::write(&path, BASE).unwrap_or_else(|e| panic!("{e}"));
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(c.batch.files_dir, dir.path().join("tollgate-files"));
    let abs = format!("{BASE}batch: {{ files_dir: /var/lib/tollgate/files }}\n");
    std::fs::write(&path, abs).unwrap_or_else(|e| panic!("{e}"));
    let c = Config::load(&path).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(
        c.batch.files_dir,
        std::path::Path::new("/var/lib/tollgate/files")
    );
}

#[test]
fn a_base_url_query_or_fragment_is_refused_for_every_provider() {
    let with = |upstream: &str| BASE.replace("{ provider: mock }", upstream);
    let e = check(&with(
        r#"{ provider: openai, base_url: "https://h/v1?api-version=1&key=s3cret" }"#,
    ))
    .err()
    .unwrap_or_default();
    assert!(
        e.starts_with(
            "upstreams.m.base_url: must not carry a query string (parameters: api-version, key)"
        ),
        "{e}"
    );
    assert!(e.contains("`api_version:`") && !e.contains("s3cret"), "{e}");
    let e = check(&with(r#"{ provider: mock, base_url: "http://h/v1#x" }"#))
        .err()
        .unwrap_or_default();
    assert_eq!(e, "upstreams.m.base_url: must not carry a fragment ('#…')");
    assert_eq!(
        check(&with(r#"{ provider: openai, base_url: "https://h/v1" }"#)).err(),
        None
    );
}

#[test]
fn an_azure_upstream_needs_its_api_version_a_deployment_and_an_api_key_placement() {
    let with = |creds: &str, upstream: &str| {
        let t = BASE.replace("{ provider: mock }", upstream);
        format!("credentials:\n{creds}\n{t}")
    };
    let key = "  k: { kind: static, secret: \"${K}\", placement: { header: api-key } }";
    let az = r#"{ provider: azure, base_url: "https://r.openai.azure.com", deployment: d, api_version: "2024-10-21", credential: k }"#;
    let env = HashMap::from([("K".to_string(), "v".to_string())]);
    let run = |text: &str| {
        Config::parse(text)
            .map_err(|e| e.to_string())
            .and_then(|c| c.validate(&env).map_err(|e| e.to_string()))
            .err()
    };
    assert_eq!(run(&with(key, az)), None);
    assert_eq!(
        run(&with(
            key,
            &az.replace(r#", api_version: "2024-10-21""#, "")
        ))
        .as_deref(),
        Some("upstreams.m.api_version: is required for provider: azure (e.g. 2024-10-21)")
    );
    assert!(run(&with(key, &az.replace("deployment: d, ", "")))
        .is_some_and(|e| e.starts_with("upstreams.m.deployment: is required")));
    assert_eq!(
        run(&with(key, &az.replace("deployment: d, ", "model: d, "))),
        None
    );
    let bearer = "  k: { kind: static, secret: \"${K}\" }";
    assert!(run(&with(bearer, az)).is_some_and(|e| e.starts_with(
        "credentials.k.placement: upstreams.m is an azure upstream: its key goes in the api-key header"
    )));
    assert_eq!(
        run(&with(
            key,
            r#"{ provider: openai, base_url: "http://h/v1", api_version: "1" }"#
        ))
        .as_deref(),
        Some("upstreams.m.api_version: is for provider: azure only")
    );
}
