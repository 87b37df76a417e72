//! The Python the SDK tests run (`TOLLGATE_TEST_PYTHON`, else the venv `./scripts/test.sh` makes
//! in `target/pyvenv`, with the `openai` and `anthropic` SDKs and selenium), and running one
//! script of `tests/python/` against a gateway: the scripts are plain Python, one line per check,
//! exit status 1 when a check fails.

use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long one script may take.
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// The interpreter: `TOLLGATE_TEST_PYTHON`, else `target/pyvenv/bin/python`; panics naming both
/// when neither exists.
pub fn python() -> PathBuf {
    let p = std::env::var_os("TOLLGATE_TEST_PYTHON")
        .filter(|p| !p.is_empty())
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/pyvenv/bin/python"));
    assert!(
        p.exists(),
        "no Python at {}: set TOLLGATE_TEST_PYTHON or run ./scripts/test.sh (it makes \
         target/pyvenv with the SDKs)",
        p.display()
    );
    p
}

/// Runs `tests/python/{script}` with `args` (unbuffered, killed if the test ends first) and
/// returns its stdout; panics with stdout and stderr unless it exits 0 within a minute.
pub async fn run_script(script: &str, args: &[&str]) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/python")
        .join(script);
    let mut cmd = tokio::process::Command::new(python());
    cmd.arg(path)
        .args(args)
        .env("PYTHONUNBUFFERED", "1")
        .kill_on_drop(true);
    let out = tokio::time::timeout(SCRIPT_TIMEOUT, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{script} did not finish in {SCRIPT_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("cannot run python: {e}"));
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{script}: {stdout}\n{stderr}");
    stdout
}
