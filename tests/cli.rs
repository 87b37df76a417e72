//! `tollgate check-config`: the binary validates a config without serving, and every error names
//! its field (and line where the YAML parser gives one), with a non-zero exit; the admin commands
//! (`keys`, `teams`) run the same operations as the HTTP admin API.

use std::process::Command;

fn check(yaml: &str, env: &[(&str, &str)]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("c.yaml");
    std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("{e}"));
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.arg("check-config").arg(&path).env_remove("TG_MISSING");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap_or_else(|e| panic!("{e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

const GOOD: &str = r#"
credentials:
  up: { kind: static, secret: "${TG_UP}" }
upstreams:
  u: { provider: openai, base_url: "http://127.0.0.1:9/v1", credential: up }
models:
  m: { targets: [ { upstream: u } ] }
teams:
  t: { models: ["*"] }
"#;

#[test]
fn the_quickstart_and_a_good_config_pass() {
    for example in ["examples/quickstart.yaml", "examples/cache.yaml"] {
        let yaml = std::fs::read_to_string(example).unwrap_or_default();
        let (code, out, _) = check(&yaml, &[("TOLLGATE_ADMIN_KEY", "sk-admin-cli-test")]);
        assert_eq!(code, 0, "{example}: {out}");
    }
    let (code, out, err) = check(GOOD, &[("TG_UP", "secret")]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains(": ok"), "{out}");
    assert!(!err.contains("secret written literally"), "{err}");
}

/// The quickstart's admin key (admin API and console) comes from `TOLLGATE_ADMIN_KEY`: without
/// it the config is refused, naming the variable, rather than served with the console open.
#[test]
fn the_quickstart_without_its_admin_key_names_the_variable() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("c.yaml");
    let yaml = std::fs::read_to_string("examples/quickstart.yaml").unwrap_or_default();
    std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("{e}"));
    let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .arg("check-config")
        .arg(&path)
        .env_remove("TOLLGATE_ADMIN_KEY")
        .output()
        .unwrap_or_else(|e| panic!("{e}"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{err}");
    assert!(
        err.contains("environment variable TOLLGATE_ADMIN_KEY is not set"),
        "{err}"
    );
}

#[test]
fn each_error_names_its_field_and_exits_64() {
    let cases = [
        (
            GOOD.replace("teams:", "teams:\n  x: { models: [\"*\"], colour: red }"),
            // The limits fields are the shared `Limits`, flattened: the path stops at the team.
            "teams.x: unknown field `colour`",
        ),
        (
            GOOD.replace("${TG_UP}", "${TG_MISSING}"),
            "credentials.up.secret: environment variable TG_MISSING is not set",
        ),
        (
            GOOD.replace("upstream: u }", "upstream: nope }"),
            "models.m.targets[0].upstream: upstream 'nope' is not defined under upstreams",
        ),
        (
            GOOD.replace("credential: up", "credential: other"),
            "upstreams.u.credential: credential 'other' is not defined under credentials",
        ),
        (
            GOOD.replace(
                "upstream: u } ] }",
                "upstream: u } ], cache: { tiers: [disk, redis] } }",
            ),
            "cache.redis_url: is required when a model's cache lists the redis tier",
        ),
    ];
    for (yaml, expected) in cases {
        let (code, out, err) = check(&yaml, &[("TG_UP", "secret")]);
        assert_eq!(code, 64, "{out}{err}");
        assert!(err.contains(expected), "expected {expected:?} in {err}");
    }
    // The parser's line number comes along with the field path.
    let (code, _, err) = check(
        &GOOD.replace("teams:", "teams:\n  x: { models: [\"*\"], colour: red }"),
        &[("TG_UP", "s")],
    );
    assert_eq!(code, 64);
    assert!(err.contains("at line 9"), "{err}");
}

#[test]
fn a_literal_secret_is_a_warning_not_an_error() {
    let (code, _, err) = check(&GOOD.replace("\"${TG_UP}\"", "sk-literal-123"), &[]);
    assert_eq!(code, 0, "{err}");
    assert!(
        err.contains("credentials.up.secret: secret written literally"),
        "{err}"
    );
    assert!(
        !err.contains("sk-literal-123"),
        "the warning must not print the secret: {err}"
    );
}

#[test]
fn dangerous_forwarding_and_a_shared_admin_key_are_refused() {
    let cases = [
        (
            GOOD.replace(
                "credentials:",
                "server: { forward_headers: [accept, transfer-encoding] }\ncredentials:",
            ),
            "server.forward_headers[1]: 'transfer-encoding' may not be forwarded",
        ),
        (
            format!(
                "{GOOD}keys:\n  - {{ name: k, team: t, key: \"${{TG_UP}}\" }}\nadmin: {{ key: \"${{TG_UP}}\" }}\n"
            ),
            "admin.key: is the same key as keys[0]",
        ),
    ];
    for (yaml, expected) in cases {
        let (code, out, err) = check(&yaml, &[("TG_UP", "secret")]);
        assert_eq!(code, 64, "{out}{err}");
        assert!(err.contains(expected), "expected {expected:?} in {err}");
    }
}

/// `tollgate keys|teams …` against the embedded store: the same admin operations as the HTTP
/// API, with the same checks (a key's team exists, models are defined, config teams are
/// read-only), printing JSON; a refusal exits non-zero with the reason.
#[test]
fn keys_and_teams_through_the_cli_share_the_admin_apis_checks() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cfg = dir.path().join("c.yaml");
    let yaml = format!(
        r#"
upstreams:
  m: {{ provider: mock }}
models:
  mock-gpt: {{ targets: [ {{ upstream: m }} ] }}
teams:
  demo: {{ models: ["*"] }}
store:
  url: "sqlite://{}?mode=rwc"
  usage: {{ spill_path: {} }}
"#,
        dir.path().join("t.db").display(),
        dir.path().join("spill.jsonl").display()
    );
    std::fs::write(&cfg, yaml).unwrap_or_else(|e| panic!("{e}"));
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .arg("-c")
            .arg(&cfg)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, out, err) = run(&["teams", "create", "ml", "--models", "mock-gpt"]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(&["keys", "create", "--team", "ml"]);
    assert_eq!(code, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    assert!(
        v["key"].as_str().is_some_and(|k| k.starts_with("sk-")),
        "{v}"
    );
    // The same refusals as the HTTP API.
    let (code, _, err) = run(&["keys", "create", "--team", "nope"]);
    assert_ne!(code, 0);
    assert!(err.contains("team 'nope' does not exist"), "{err}");
    let (code, _, err) = run(&["teams", "create", "demo", "--models", "mock-gpt"]);
    assert_ne!(code, 0);
    assert!(err.contains("defined in the config file"), "{err}");
    let (code, _, err) = run(&["teams", "create", "x", "--models", "made-up"]);
    assert_ne!(code, 0);
    assert!(err.contains("model 'made-up' is not defined"), "{err}");
    // The config's limits shape and checks: a budget is an amount with its period; zero limits
    // are refused in the config's words.
    let (code, _, err) = run(&["teams", "set", "ml", "--budget-period", "daily"]);
    assert_ne!(code, 0);
    assert!(err.contains("--budget-period needs --budget-usd"), "{err}");
    let (code, _, err) = run(&["teams", "set", "ml", "--rpm", "0"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("requests_per_minute: must be greater than 0"),
        "{err}"
    );
    let (code, out, err) = run(&[
        "teams",
        "set",
        "ml",
        "--budget-usd",
        "5",
        "--budget-period",
        "daily",
    ]);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, _) = run(&["teams", "list"]);
    let teams: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"));
    let ml = teams
        .as_array()
        .and_then(|t| t.iter().find(|t| t["name"] == "ml"))
        .unwrap_or_else(|| panic!("{out}"));
    assert_eq!(
        ml["budget"],
        serde_json::json!({"amount_usd": 5.0, "period": "daily"})
    );
    assert_eq!(code, 0);
    assert!(out.contains("\"source\":\"config\"") || out.contains("\"source\": \"config\""));
}
