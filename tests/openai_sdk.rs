//! The official `openai` Python SDK against a real `tollgate serve` process.
//!
//! Spawns the built binary on a free port with the quickstart config, runs
//! `tests/python/test_openai_sdk.py` with the interpreter in `TOLLGATE_TEST_PYTHON` (or
//! `target/pyvenv/bin/python`, which `./scripts/test.sh` sets up), then stops the gateway with
//! SIGTERM and checks it exits 0.

use std::fs::File;
use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::thread;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

const MANIFEST_DIR: &str = env!("CARGO_MANIFEST_DIR");
const ADDR_FILE_WAIT: Duration = Duration::from_secs(10);
const PYTHON_TIMEOUT: Duration = Duration::from_secs(60);
const SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);

/// A child process waited on by its own thread; killed (SIGKILL) on drop unless it has exited,
/// so a failing test never leaves a gateway behind.
struct Running {
    name: &'static str,
    pid: u32,
    exited: Receiver<io::Result<Output>>,
    done: bool,
}

impl Running {
    fn spawn(name: &'static str, mut cmd: Command) -> Result<Running> {
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {name}: {cmd:?}"))?;
        let pid = child.id();
        let (tx, exited) = mpsc::channel();
        thread::spawn(move || {
            let _ = tx.send(child.wait_with_output());
        });
        Ok(Running {
            name,
            pid,
            exited,
            done: false,
        })
    }

    /// Its output if it exits within `limit`, `None` if it is still running.
    fn wait_for(&mut self, limit: Duration) -> Result<Option<Output>> {
        match self.exited.recv_timeout(limit) {
            Ok(out) => {
                self.done = true;
                Ok(Some(
                    out.with_context(|| format!("waiting for {}", self.name))?,
                ))
            }
            Err(RecvTimeoutError::Timeout) => Ok(None),
            Err(RecvTimeoutError::Disconnected) => {
                self.done = true;
                bail!("the waiter thread of {} went away", self.name)
            }
        }
    }

    /// `Some(status)` if it has already exited.
    fn try_exited(&mut self) -> Result<Option<ExitStatus>> {
        Ok(self.wait_for(Duration::ZERO)?.map(|o| o.status))
    }

    fn signal(&self, sig: &str) -> Result<()> {
        let status = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid.to_string())
            .status()
            .context("cannot run kill")?;
        if !status.success() {
            bail!("kill -{sig} {} ({}) failed: {status}", self.pid, self.name);
        }
        Ok(())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.done || self.exited.try_recv().is_ok() {
            return;
        }
        let _ = self.signal("KILL");
        let _ = self.exited.recv_timeout(Duration::from_secs(5));
    }
}

fn python() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("TOLLGATE_TEST_PYTHON").filter(|p| !p.is_empty()) {
        let p = PathBuf::from(p);
        if !p.exists() {
            bail!(
                "TOLLGATE_TEST_PYTHON={} does not exist; run ./scripts/test.sh (it creates \
                 target/pyvenv with the openai SDK)",
                p.display()
            );
        }
        return Ok(p);
    }
    let venv = Path::new(MANIFEST_DIR).join("target/pyvenv/bin/python");
    if venv.exists() {
        return Ok(venv);
    }
    bail!(
        "no Python with the openai SDK: TOLLGATE_TEST_PYTHON is unset and {} does not exist; \
         run ./scripts/test.sh (it creates the venv) or set TOLLGATE_TEST_PYTHON",
        venv.display()
    )
}

/// Poll for the address file: it has no event to wait on.
fn wait_for_addr(gateway: &mut Running, file: &Path, log: &Path) -> Result<SocketAddr> {
    let deadline = Instant::now() + ADDR_FILE_WAIT;
    loop {
        // The file is created, then written: only a parsable address counts.
        if let Ok(addr) = std::fs::read_to_string(file)
            .map_err(anyhow::Error::from)
            .and_then(|s| s.trim().parse::<SocketAddr>().map_err(anyhow::Error::from))
        {
            return Ok(addr);
        }
        if let Some(status) = gateway.try_exited()? {
            bail!(
                "the gateway exited early ({status}); its log:\n{}",
                read_log(log)
            );
        }
        if Instant::now() >= deadline {
            bail!(
                "no address in {} after {ADDR_FILE_WAIT:?}; gateway log:\n{}",
                file.display(),
                read_log(log)
            );
        }
        thread::sleep(Duration::from_millis(25));
    }
}

fn read_log(path: &Path) -> String {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| format!("(cannot read {}: {e})", path.display()))
}

#[test]
fn openai_python_sdk_against_a_running_gateway() -> Result<()> {
    let dir = tempfile::tempdir().context("tempdir")?;
    sdk_script(
        "tests/python/test_openai_sdk.py",
        Path::new(MANIFEST_DIR),
        dir.path(),
    )
}

/// The Batch API with the SDK, on the quickstart config as it ships (its SQLite store and
/// files directory land in a temporary working directory).
#[test]
fn openai_python_sdk_batch_lifecycle_on_the_quickstart() -> Result<()> {
    let dir = tempfile::tempdir().context("tempdir")?;
    sdk_script("tests/python/test_openai_batch.py", dir.path(), dir.path())
}

/// Serve the quickstart from `cwd`, run `script` against it, stop the gateway with SIGTERM.
fn sdk_script(script: &str, cwd: &Path, scratch: &Path) -> Result<()> {
    let python = python()?;
    let addr_file = scratch.join("addr");
    let log_file = scratch.join("gateway.log");
    let config = Path::new(MANIFEST_DIR).join("examples/quickstart.yaml");

    let mut cmd = Command::new(env!("CARGO_BIN_EXE_tollgate"));
    cmd.current_dir(cwd)
        .arg("serve")
        .arg("--config")
        .arg(&config)
        .args(["--listen", "127.0.0.1:0", "--addr-file"])
        .arg(&addr_file)
        .env("TOLLGATE_ADMIN_KEY", "sk-admin-sdk-test")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(File::create(&log_file).context("gateway log file")?);
    let mut gateway = Running::spawn("tollgate serve", cmd)?;
    let addr = wait_for_addr(&mut gateway, &addr_file, &log_file)?;

    let script = Path::new(MANIFEST_DIR).join(script);
    let mut cmd = Command::new(&python);
    cmd.current_dir(MANIFEST_DIR)
        .arg(&script)
        .arg(format!("http://{addr}/v1"))
        .env("PYTHONUNBUFFERED", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut sdk = Running::spawn("python openai sdk test", cmd)
        .with_context(|| format!("python is {}", python.display()))?;
    let Some(out) = sdk.wait_for(PYTHON_TIMEOUT)? else {
        sdk.signal("KILL")?;
        let partial = sdk.wait_for(Duration::from_secs(5))?;
        bail!(
            "the python SDK test did not finish within {PYTHON_TIMEOUT:?}; its output:\n{}\ngateway log:\n{}",
            partial.map(|o| String::from_utf8_lossy(&o.stdout).into_owned()).unwrap_or_default(),
            read_log(&log_file)
        );
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("{stdout}");
    if !stderr.is_empty() {
        println!("python stderr:\n{stderr}");
    }
    assert!(
        out.status.success(),
        "the python SDK test failed ({}):\n{stdout}\n{stderr}\ngateway log:\n{}",
        out.status,
        read_log(&log_file)
    );

    gateway.signal("TERM")?;
    let Some(exit) = gateway.wait_for(SHUTDOWN_TIMEOUT)? else {
        bail!(
            "the gateway did not exit within {SHUTDOWN_TIMEOUT:?} of SIGTERM; its log:\n{}",
            read_log(&log_file)
        );
    };
    assert_eq!(
        exit.status.code(),
        Some(0),
        "the gateway did not exit 0 on SIGTERM ({}); its log:\n{}",
        exit.status,
        read_log(&log_file)
    );
    Ok(())
}
