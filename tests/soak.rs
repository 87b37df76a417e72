//! The soak command (`tollgate-bench --soak`, docs/BENCHMARKS.md "Soak under faults") end to
//! end, short: a few hundred requests through the gateway binary while the test kit's upstream
//! fails 10% of its calls and the OAuth2 tokens live 2 s, then a few seconds on those tokens.
//! Every check of the soak must pass: terminal answers, one usage row per accepted request,
//! the in-flight gauge back to 0, no authentication failure.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

#[tokio::test]
async fn a_short_soak_passes_every_check() {
    let run = tokio::process::Command::new(env!("CARGO_BIN_EXE_tollgate-bench"))
        .args(["--soak", "--gateway-bin", env!("CARGO_BIN_EXE_tollgate")])
        .args(["--soak-requests", "300", "--soak-clients", "16"])
        .args(["--soak-auth-clients", "32", "--soak-seconds", "2"])
        // A debug build on a shared machine: memory is the release run's business.
        .args(["--soak-rss-slack-mib", "1000"])
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(240), run)
        .await
        .expect("the soak is bounded")
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(!stdout.contains("FAIL"), "{stdout}");
    for check in [
        "PASS: phase 1: requests without a terminal answer: 0",
        "PASS: requests billed twice: 0",
        "PASS: usage rows for accepted requests missing: 0",
        "PASS: in-flight gauge after phase 1: 0",
        "PASS: phase 2: client-visible authentication failures: 0",
    ] {
        assert!(stdout.contains(check), "{check}\n{stdout}");
    }
}
