//! The processes under test (the release `tollgate` binary and, when installed, nginx), their
//! temp files, and what /proc says about them (resident memory, CPU time).

use std::fs::File;
use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};

/// SHA-256 of [`KEY`], as the gateway config holds it.
pub const KEY_SHA256: &str = "179510ee3e248a7bfae1a518d344461ddef0e32bbf53b40845f2d3e157c5973f";
/// The client key sent to every target (the mock and nginx ignore it).
pub const KEY: &str = "sk-tollgate-demo";
/// The model name used by the benchmark requests.
pub const MODEL: &str = "mock-model";

/// Environment variables that would make a reqwest client (ours or the gateway's) use a proxy.
const PROXY_VARS: [&str; 8] = [
    "HTTP_PROXY",
    "http_proxy",
    "HTTPS_PROXY",
    "https_proxy",
    "ALL_PROXY",
    "all_proxy",
    "NO_PROXY",
    "no_proxy",
];

/// A private temp directory, removed on drop unless `keep`.
pub struct TempDir {
    pub path: PathBuf,
    pub keep: bool,
}

impl TempDir {
    pub fn new() -> Result<TempDir> {
        let stamp = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = std::env::temp_dir().join(format!(
            "tollgate-bench-{}-{}",
            std::process::id(),
            stamp % 1_000_000_000
        ));
        std::fs::create_dir_all(&path).with_context(|| format!("mkdir {}", path.display()))?;
        Ok(TempDir { path, keep: false })
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A free loopback port (bound then released; the small race is acceptable here).
pub fn free_port() -> Result<u16> {
    let l = TcpListener::bind("127.0.0.1:0").context("bind a free port")?;
    Ok(l.local_addr()?.port())
}

/// `taskset -c CPUS cmd...` when CPUs are given, else `cmd...`.
fn command(bin: &Path, cpus: Option<&str>) -> Command {
    match cpus {
        Some(c) => {
            let mut cmd = Command::new("taskset");
            cmd.arg("-c").arg(c).arg(bin);
            cmd
        }
        None => Command::new(bin),
    }
}

/// A child process we started; terminated (SIGTERM, then SIGKILL) on drop.
pub struct Proc {
    child: Child,
    name: &'static str,
}

impl Proc {
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// SIGTERM by pid, wait up to `grace`, then SIGKILL.
    pub fn stop(&mut self, grace: Duration) {
        if matches!(self.child.try_wait(), Ok(Some(_))) {
            return;
        }
        let pid = self.child.id().to_string();
        let _ = Command::new("kill")
            .args(["-TERM", &pid])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!(
            "bench: {} (pid {pid}) did not stop in time; killing it",
            self.name
        );
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    fn check_alive(&mut self) -> Result<()> {
        if let Ok(Some(status)) = self.child.try_wait() {
            bail!("{} exited early ({status})", self.name);
        }
        Ok(())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.stop(Duration::from_secs(5));
    }
}

/// The gateway under test.
pub struct Gateway {
    pub proc: Proc,
    pub addr: SocketAddr,
    pub log: PathBuf,
}

/// The cached models of the `cache` scenario, one per tier, each served by the mock.
pub const CACHE_MEMORY: &str = "cache-memory";
pub const CACHE_DISK: &str = "cache-disk";
pub const CACHE_REDIS: &str = "cache-redis";

/// Where the cache scenario's shared tiers live; `redis`: (URL, key prefix), None when Redis is
/// unreachable (then no model lists the `redis` tier).
pub struct CacheTiers {
    pub disk_path: PathBuf,
    pub redis: Option<(String, String)>,
}

/// The models and the top-level `cache:` block of the cache scenario: `cache-memory` (memory
/// tier only), `cache-disk` (disk only) and, with Redis, `cache-redis` (Redis only); ttl 10 min,
/// so the Redis keys of a run expire on their own.
fn cache_yaml(c: &CacheTiers) -> (String, String) {
    let model = |name: &str, tier: &str| {
        format!(
            "  {name}:
    targets:
      - upstream: mock
    cache: {{ tiers: [{tier}], ttl: 10m }}
"
        )
    };
    let mut models = model(CACHE_MEMORY, "memory") + &model(CACHE_DISK, "disk");
    let mut top = format!("cache:\n  disk_path: {}\n", c.disk_path.display());
    if let Some((url, prefix)) = &c.redis {
        models += &model(CACHE_REDIS, "redis");
        top += &format!("  redis_url: {url}\n  redis_prefix: \"{prefix}\"\n");
    }
    (models, top)
}

/// Write the gateway config: one `openai` upstream at the mock, one model, one team, one key.
/// `governed`: the config a team runs, with governance on the path: the embedded SQLite store
/// (a usage row per request through the batched writer), the model priced, and the team limited
/// by requests and tokens per minute, concurrency and a budget, all high enough never to refuse.
/// `cache`: add the cache scenario's models ([`cache_yaml`]).
pub fn write_gateway_config(
    dir: &Path,
    mock_base_url: &str,
    governed: bool,
    cache: Option<&CacheTiers>,
) -> Result<PathBuf> {
    let path = dir.join("tollgate.yaml");
    let (team_limits, extra) = if governed {
        (
            ", requests_per_minute: 1000000000, tokens_per_minute: 1000000000000, \
             max_concurrent: 100000, budget: { amount_usd: 1000000000, period: monthly }",
            format!(
                "store:
  url: \"sqlite://{db}?mode=rwc\"
  usage: {{ spill_path: {spill} }}
prices:
  {MODEL}: {{ input_per_million: 1.0, output_per_million: 2.0 }}
limits: {{ backend: memory }}
",
                db = dir.join("bench.db").display(),
                spill = dir.join("usage-spill.jsonl").display(),
            ),
        )
    } else {
        ("", String::new())
    };
    let (cache_models, cache_top) = cache.map(cache_yaml).unwrap_or_default();
    let yaml = format!(
        "# Written by tollgate-bench.
server:
  listen: 127.0.0.1:0
  max_in_flight: 20000
upstreams:
  mock:
    provider: openai
    base_url: {mock_base_url}
    max_concurrent: 4096
    max_queue: 4096
    timeouts: {{ connect: 2s, first_byte: 30s, idle: 30s, total: 600s }}
models:
  {MODEL}:
    targets:
      - upstream: mock
{cache_models}teams:
  bench: {{ models: [\"*\"]{team_limits} }}
keys:
  - name: bench
    team: bench
    sha256: {KEY_SHA256}
{extra}{cache_top}"
    );
    std::fs::write(&path, yaml).with_context(|| format!("write {}", path.display()))?;
    Ok(path)
}

impl Gateway {
    /// Spawn `bin serve --config CONFIG --listen 127.0.0.1:0 --addr-file DIR/addr` and wait for
    /// the address file. Logs (stdout and stderr) go to DIR/gateway-N.log.
    pub fn start(
        bin: &Path,
        config: &Path,
        dir: &Path,
        run: usize,
        cpus: Option<&str>,
    ) -> Result<Gateway> {
        let addr_file = dir.join(format!("addr-{run}"));
        let _ = std::fs::remove_file(&addr_file);
        let log = dir.join(format!("gateway-{run}.log"));
        let out = File::create(&log).with_context(|| format!("create {}", log.display()))?;
        let err = out.try_clone()?;
        let mut cmd = command(bin, cpus);
        cmd.arg("serve")
            .arg("--config")
            .arg(config)
            .arg("--listen")
            .arg("127.0.0.1:0")
            .arg("--addr-file")
            .arg(&addr_file)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        for v in PROXY_VARS {
            cmd.env_remove(v);
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let mut proc = Proc {
            child,
            name: "tollgate",
        };
        let until = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(text) = std::fs::read_to_string(&addr_file) {
                if let Ok(addr) = text.trim().parse::<SocketAddr>() {
                    return Ok(Gateway { proc, addr, log });
                }
            }
            proc.check_alive()
                .with_context(|| format!("see {}", log.display()))?;
            if Instant::now() > until {
                bail!("tollgate did not write {} in 15 s", addr_file.display());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// nginx as a bare reverse proxy in front of the mock.
pub struct Nginx {
    pub proc: Proc,
    pub port: u16,
}

/// `nginx` on PATH, else /usr/sbin/nginx (Debian's location, often not on a user's PATH).
pub fn find_nginx() -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .map(|d| d.join("nginx"))
        .chain([PathBuf::from("/usr/sbin/nginx")])
        .find(|p| p.is_file())
}

impl Nginx {
    pub fn start(
        bin: &Path,
        dir: &Path,
        mock: SocketAddr,
        workers: usize,
        run: usize,
        cpus: Option<&str>,
    ) -> Result<Nginx> {
        let port = free_port()?;
        let ndir = dir.join(format!("nginx-{run}"));
        std::fs::create_dir_all(&ndir)?;
        // Runs as root in CI containers: keep the workers as root so they can use the temp dir.
        let user = if is_root() { "user root;\n" } else { "" };
        let conf = format!(
            "# Written by tollgate-bench: nginx as a bare reverse proxy.
{user}daemon off;
master_process on;
worker_processes {workers};
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 16384; }}
http {{
    access_log {d}/access.log;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests 1000000;
    keepalive_timeout 75s;
    upstream mock {{
        server {mock};
        keepalive 1024;
        keepalive_requests 1000000;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=4096;
        location / {{
            proxy_pass http://mock;
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_buffering off;
            proxy_read_timeout 600s;
        }}
    }}
}}
",
            d = ndir.display()
        );
        let conf_path = ndir.join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let log = ndir.join("stderr.log");
        let out = File::create(&log)?;
        let err = out.try_clone()?;
        let mut cmd = command(bin, cpus);
        cmd.arg("-p")
            .arg(&ndir)
            .arg("-e")
            .arg(ndir.join("error.log"))
            .arg("-c")
            .arg(&conf_path)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        let child = cmd
            .spawn()
            .with_context(|| format!("spawn {}", bin.display()))?;
        let mut proc = Proc {
            child,
            name: "nginx",
        };
        let until = Instant::now() + Duration::from_secs(10);
        loop {
            if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
                return Ok(Nginx { proc, port });
            }
            proc.check_alive().map_err(|e| {
                let text = std::fs::read_to_string(ndir.join("error.log")).unwrap_or_default();
                anyhow!("{e}: {text}")
            })?;
            if Instant::now() > until {
                bail!("nginx did not listen on {port} in 10 s");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("Uid:"))
                .and_then(|l| l.split_whitespace().nth(2).map(|u| u == "0"))
        })
        .unwrap_or(false)
}

// ---- /proc ----

/// A `kB` field (VmRSS, VmHWM) of /proc/PID/status, in KiB.
pub fn status_kib(pid: u32, field: &str) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    text.lines()
        .find(|l| l.starts_with(field) && l[field.len()..].starts_with(':'))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// Children of `pid` (scanning /proc for the parent pid).
fn children(pid: u32) -> Vec<u32> {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|p| stat_fields(*p).and_then(|f| f.get(1)?.parse::<u32>().ok()) == Some(pid))
        .collect()
}

/// The fields of /proc/PID/stat after the command name: index 0 is the state (field 3).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

/// VmRSS of `pid` plus its direct children (nginx: master + workers), in KiB.
pub fn tree_rss_kib(pid: u32) -> Option<u64> {
    let own = status_kib(pid, "VmRSS")?;
    Some(
        own + children(pid)
            .into_iter()
            .filter_map(|c| status_kib(c, "VmRSS"))
            .sum::<u64>(),
    )
}

/// user + system CPU time of `pid` and its direct children, in clock ticks.
pub fn tree_cpu_ticks(pid: u32) -> Option<u64> {
    let ticks = |p: u32| -> Option<u64> {
        let f = stat_fields(p)?;
        Some(f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?)
    };
    let own = ticks(pid)?;
    Some(own + children(pid).into_iter().filter_map(ticks).sum::<u64>())
}

/// Clock ticks per second (`getconf CLK_TCK`, 100 if unknown).
pub fn clock_ticks() -> f64 {
    Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| s.trim().parse::<f64>().ok())
        .unwrap_or(100.0)
}

/// The soft limit on open files of this process.
pub fn nofile_soft_limit() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = text.lines().find(|l| l.starts_with("Max open files"))?;
    line.split_whitespace().nth(3)?.parse().ok()
}

/// One line each: CPUs, CPU model, memory, kernel.
pub fn machine() -> Vec<String> {
    let cpus = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(0);
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_else(|| "unknown".into());
    let mem = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
        })
        .map(|kib| format!("{:.1} GiB", kib as f64 / 1024.0 / 1024.0))
        .unwrap_or_else(|| "unknown".into());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map(|s| s.trim().to_owned())
        .unwrap_or_default();
    vec![
        format!("cpus (nproc): {cpus}"),
        format!("cpu model: {model}"),
        format!("memory: {mem}"),
        format!("kernel: {kernel}"),
    ]
}

/// The 1-minute load average.
pub fn loadavg() -> f64 {
    std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// `nginx -v` output (it prints to stderr).
pub fn nginx_version(bin: &Path) -> String {
    Command::new(bin)
        .arg("-v")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stderr).trim().to_owned())
        .unwrap_or_default()
}
