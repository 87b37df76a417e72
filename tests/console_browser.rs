//! The web console in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`, which `./scripts/test.sh` installs when missing) driven by selenium from
//! `tests/python/console_browser.py` against a gateway started here on a loopback port.
//!
//! What it proves, as a user of the console sees it: a wrong admin key is refused and the right
//! one signs in (an HttpOnly, SameSite=Strict cookie that page scripts cannot read); a key made
//! on the keys page is shown once and then works against `/v1/chat/completions` through a real
//! socket; the spend page draws its charts from those requests; a revoked key then gets 401; a
//! write without the CSRF token is refused; every page renders (the credentials page with a
//! pool's members); signing out ends the session.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::Stdio;
use std::time::Duration;

use common::{Gateway, ADMIN_KEY};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const BROWSER_TIMEOUT: Duration = Duration::from_secs(180);

fn browser_installed() {
    for (var, default) in [
        ("TOLLGATE_CHROMIUM", "/usr/bin/chromium"),
        ("TOLLGATE_CHROMEDRIVER", "/usr/bin/chromedriver"),
    ] {
        let path = std::env::var(var).unwrap_or_else(|_| default.into());
        assert!(
            Path::new(&path).exists(),
            "{path} is missing: ./scripts/test.sh installs it (apt-get install -y chromium \
             chromium-driver), or set {var}"
        );
    }
}

#[tokio::test]
async fn the_console_in_headless_chromium() {
    browser_installed();
    let python = common::python::python();
    let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
    let yaml = format!(
        r#"{}
credentials:
  pool-a: {{ kind: pool, tokens: ["${{TG_TOKEN_A}}", "${{TG_TOKEN_B}}"] }}
admin:
  key: ${{TG_ADMIN}}
  console: {{ enabled: true }}
store:
  url: "sqlite://{}?mode=rwc"
  key_cache_ttl: 1s
  usage: {{ spill_path: "{}", batch_interval: 20ms }}
"#,
        common::mock_config(4, 0),
        dir.path().join("t.db").display(),
        dir.path().join("spill").display()
    );
    let env: HashMap<String, String> = [
        ("TG_ADMIN", ADMIN_KEY),
        ("TG_TOKEN_A", "tok-a"),
        ("TG_TOKEN_B", "tok-b"),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_owned(), v.to_owned()))
    .collect();
    let gw = Gateway::start_with_env(&yaml, env).await;

    let mut cmd = tokio::process::Command::new(&python);
    cmd.current_dir(MANIFEST_DIR)
        .arg("tests/python/console_browser.py")
        .arg(format!("http://{}", gw.addr))
        .arg(ADMIN_KEY)
        .args(["--credential", "pool-a"])
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {}: {e}", python.display()));
    let out = match tokio::time::timeout(BROWSER_TIMEOUT, child.wait_with_output()).await {
        Ok(Ok(out)) => out,
        Ok(Err(e)) => panic!("waiting for the browser test: {e}"),
        Err(_) => panic!("the browser test did not finish within {BROWSER_TIMEOUT:?}"),
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    assert!(
        out.status.success(),
        "the browser test failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    assert!(stdout.contains("all passed"), "{stdout}");
    gw.stop().await;
}
