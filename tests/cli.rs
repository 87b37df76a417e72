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

/// A `base_url` with a query string is refused for every provider (the endpoint path would be
/// appended after the query), naming the field and where the parameter goes; the parameter's
/// value (perhaps a key) is never printed.
#[test]
fn a_base_url_with_a_query_is_refused_naming_where_the_parameter_goes() {
    let cases = [
        (
            GOOD.replace(
                "http://127.0.0.1:9/v1\"",
                "https://r.openai.azure.com/openai/deployments/d?api-version=2024-10-21\"",
            ),
            "upstreams.u.base_url: must not carry a query string (parameters: api-version)",
            "`api_version:`",
        ),
        (
            GOOD.replace(
                "http://127.0.0.1:9/v1\"",
                "http://127.0.0.1:9/v1?key=sk-in-url\"",
            ),
            "upstreams.u.base_url: must not carry a query string (parameters: key)",
            "placement: { query: NAME }",
        ),
        (
            GOOD.replace(
                "{ provider: openai, base_url: \"http://127.0.0.1:9/v1\", credential: up }",
                "{ provider: mock, base_url: \"http://h/v1?x=1\" }",
            ),
            "upstreams.u.base_url: must not carry a query string (parameters: x)",
            "placement",
        ),
    ];
    for (yaml, expected, instead) in cases {
        let (code, out, err) = check(&yaml, &[("TG_UP", "secret")]);
        assert_eq!(code, 64, "{out}{err}");
        assert!(err.contains(expected), "expected {expected:?} in {err}");
        assert!(err.contains(instead), "expected {instead:?} in {err}");
        assert!(
            !err.contains("sk-in-url"),
            "a query value was printed: {err}"
        );
    }
}

/// The Azure example passes with its variables set.
#[test]
fn the_azure_example_passes() {
    let yaml = std::fs::read_to_string("examples/azure.yaml").unwrap_or_default();
    let (code, out, err) = check(
        &yaml,
        &[
            ("AZURE_OPENAI_API_KEY", "k"),
            ("TOLLGATE_CLIENT_KEY", "sk-client-cli-test"),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
}

#[test]
fn the_gemini_example_passes() {
    let yaml = std::fs::read_to_string("examples/gemini.yaml").unwrap_or_default();
    assert!(yaml.contains("provider: openai"), "{yaml}");
    let (code, out, err) = check(
        &yaml,
        &[
            ("GEMINI_API_KEY", "k"),
            ("TOLLGATE_CLIENT_KEY", "sk-client-cli-test"),
        ],
    );
    assert_eq!(code, 0, "{out}{err}");
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
    // A store team can be deleted (its keys revoked); a config team cannot.
    let (code, out, err) = run(&["teams", "delete", "ml"]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("\"keys_revoked\": 1"), "{out}");
    let (code, _, err) = run(&["teams", "delete", "demo"]);
    assert_ne!(code, 0);
    assert!(err.contains("defined in the config file"), "{err}");
}

/// The CLI finds its config as servers do (`--config`, `$TOLLGATE_CONFIG`, `./tollgate.yaml`,
/// else a clear message), and a relative SQLite path means the config file's directory, so a
/// command run from anywhere opens the server's database.
#[test]
fn the_config_is_found_like_a_servers_and_its_sqlite_path_is_relative_to_it() {
    let home = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let elsewhere = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let run = |cwd: &std::path::Path, args: &[&str], env: Option<&std::path::Path>| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
        cmd.args(args)
            .current_dir(cwd)
            .env_remove("TOLLGATE_CONFIG");
        if let Some(p) = env {
            cmd.env("TOLLGATE_CONFIG", p);
        }
        let out = cmd.output().unwrap_or_else(|e| panic!("{e}"));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    // Nothing to find: a message that says where a config is looked for.
    let (code, _, err) = run(elsewhere.path(), &["teams", "list"], None);
    assert_eq!(code, 64, "{err}");
    for part in ["--config", "TOLLGATE_CONFIG", "tollgate.yaml"] {
        assert!(err.contains(part), "{part} not in {err}");
    }
    let (code, _, err) = run(elsewhere.path(), &["check-config"], None);
    assert_eq!(code, 64, "{err}");

    let config = home.path().join("tollgate.yaml");
    std::fs::write(
        &config,
        r#"
upstreams:
  m: { provider: mock }
models:
  mock-gpt: { targets: [ { upstream: m } ] }
teams:
  demo: { models: ["*"] }
store:
  url: "sqlite://data.db?mode=rwc"
  usage: { spill_path: /dev/null }
"#,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    // ./tollgate.yaml in the working directory.
    let (code, out, err) = run(home.path(), &["check-config"], None);
    assert_eq!(code, 0, "{out}{err}");
    let (code, out, err) = run(
        home.path(),
        &["teams", "create", "ml", "--models", "*"],
        None,
    );
    assert_eq!(code, 0, "{out}{err}");
    // From elsewhere, through $TOLLGATE_CONFIG and through --config: the same database.
    let (code, out, err) = run(elsewhere.path(), &["teams", "list"], Some(&config));
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"ml\""), "{out}");
    let (code, out, err) = run(
        elsewhere.path(),
        &["teams", "list", "--config", &config.display().to_string()],
        None,
    );
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("\"ml\""), "{out}");
    assert!(home.path().join("data.db").is_file());
    assert!(!elsewhere.path().join("data.db").exists());
}

/// `serve` logs the warnings `check-config` gives (without the secret), and still serves; it
/// listens on a host name (`localhost:0`).
#[test]
fn serve_logs_the_config_warnings() {
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let path = dir.path().join("c.yaml");
    let yaml =
        GOOD.replace("\"${TG_UP}\"", "sk-literal-123") + "server: { listen: \"127.0.0.1:0\" }\n";
    std::fs::write(&path, yaml).unwrap_or_else(|e| panic!("{e}"));
    let mut child = Command::new(env!("CARGO_BIN_EXE_tollgate"))
        .args(["serve", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{e}"));
    let stderr = child.stderr.take().unwrap_or_else(|| panic!("no stderr"));
    // Read lines until the server says it listens (the warnings come before).
    let mut seen = String::new();
    for line in std::io::BufRead::lines(std::io::BufReader::new(stderr)).take(50) {
        let line = line.unwrap_or_default();
        seen.push_str(&line);
        seen.push('\n');
        if line.contains("\"listening\"") {
            break;
        }
    }
    let _ = child.kill();
    let _ = child.wait();
    assert!(seen.contains("\"listening\""), "{seen}");
    // `localhost` is resolved once, to its IPv4 address.
    assert!(seen.contains("\"addr\":\"127.0.0.1:"), "{seen}");
    assert!(
        seen.lines().any(|l| l.contains("\"WARN\"")
            && l.contains("credentials.up.secret: secret written literally")),
        "{seen}"
    );
    assert!(!seen.contains("sk-literal-123"), "{seen}");
}

/// `--version` names the commit; `completions` prints a script the shell can load; at a
/// terminal a list is a table with dates and money, `--json` (and a pipe) gives the JSON.
#[test]
fn version_completions_and_human_output() {
    let run = |args: &[&str]| {
        let out = Command::new(env!("CARGO_BIN_EXE_tollgate"))
            .args(args)
            .output()
            .unwrap_or_else(|e| panic!("{e}"));
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let (code, out) = run(&["--version"]);
    assert_eq!(code, 0);
    // `tollgate 0.1.0 (1a2b3c4d5e6f)`: the commit, or `unknown` outside a git checkout.
    assert!(
        out.starts_with(&format!("tollgate {} (", env!("CARGO_PKG_VERSION"))),
        "{out}"
    );
    assert!(out.trim_end().ends_with(')'), "{out}");
    let (code, out) = run(&["completions", "bash"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("complete -F") && out.contains("tollgate"),
        "{out}"
    );
    let (code, out) = run(&["completions", "zsh"]);
    assert_eq!(code, 0);
    assert!(out.starts_with("#compdef tollgate"), "{out}");

    // A terminal, through `script` (a pseudo-terminal), when the machine has it.
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let cfg = dir.path().join("tollgate.yaml");
    std::fs::write(
        &cfg,
        "upstreams:\n  m: { provider: mock }\nmodels:\n  mock-gpt: { targets: [ { upstream: m } ] }\n\
         teams:\n  demo: { models: [\"*\"] }\nstore:\n  url: \"sqlite://t.db?mode=rwc\"\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let bin = env!("CARGO_BIN_EXE_tollgate");
    let c = cfg.display();
    let (code, _) = run(&[
        "teams",
        "create",
        "ml",
        "--models",
        "*",
        "--budget-usd",
        "5",
        "-c",
        &c.to_string(),
    ]);
    assert_eq!(code, 0);
    let at_terminal = |extra: &str| -> Option<String> {
        let out = Command::new("script")
            .args([
                "-qec",
                &format!("{bin} teams list -c {c} {extra}"),
                "/dev/null",
            ])
            .output()
            .ok()?;
        Some(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    if let Some(table) = at_terminal("") {
        assert!(
            table.contains("NAME") && table.contains("SOURCE"),
            "{table}"
        );
        assert!(table.contains("5.00 USD monthly"), "{table}");
        assert!(table.contains(" UTC"), "{table}");
        let json = at_terminal("--json").unwrap_or_default();
        assert!(json.trim_start().starts_with('['), "{json}");
    }
    // Piped: JSON, as scripts expect.
    let (_, piped) = run(&["teams", "list", "-c", &c.to_string()]);
    assert!(piped.trim_start().starts_with('['), "{piped}");
}
