//! Build script: the commit the binary was built from, for `--version` and `tollgate_build_info`.
//!
//! `TOLLGATE_COMMIT` is the short hash of `HEAD`, or `unknown` outside a git checkout (a source
//! tarball) or without git. It is read again when `HEAD` moves (a commit, a checkout); edits not
//! yet committed do not show.

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_owned())
}

fn main() {
    let commit = git(&["rev-parse", "--short=12", "HEAD"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=TOLLGATE_COMMIT={commit}");
    // Re-run when HEAD or the branch it points at moves (paths as git resolves them, so a
    // worktree works too).
    if let Some(p) = git(&["rev-parse", "--git-path", "HEAD"]) {
        println!("cargo:rerun-if-changed={p}");
    }
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        if let Some(p) = git(&["rev-parse", "--git-path", &r]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}
