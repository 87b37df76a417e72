//! Command line: `serve`, `check-config`, and the store's admin operations (`keys`, `teams`,
//! `usage`).
//!
//! Owns argument parsing and the start-up order: load and validate the config before any port
//! is bound, then bind, then serve. Exit codes: 0 ok, 64 bad config or usage, 1 runtime failure.
//!
//! `keys`, `teams` and `usage` work against the store directly: they read `store.url` from the
//! config file (`--config`), apply migrations if needed, and run the same operations as the
//! admin API (with the same checks and audit rows, actor `cli:$USER`). Output is JSON.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::secret::ProcessEnv;
use crate::server::{self, ServeOptions};
use crate::state::{AppState, Snapshot};

#[derive(Parser, Debug)]
#[command(name = "tollgate", version, about = "An LLM API gateway")]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the gateway.
    Serve {
        /// The config file (YAML).
        #[arg(
            long,
            short,
            default_value = "examples/quickstart.yaml",
            env = "TOLLGATE_CONFIG"
        )]
        config: PathBuf,
        /// Listen here instead of `server.listen` (port 0 picks a free port).
        #[arg(long)]
        listen: Option<SocketAddr>,
        /// Write the bound address to this file once listening (for scripts and tests).
        #[arg(long)]
        addr_file: Option<PathBuf>,
    },
    /// Validate a config file without serving; exit non-zero on the first error.
    CheckConfig {
        /// The config file (YAML).
        file: PathBuf,
    },
    /// Create, list, revoke, rotate and change keys in the store.
    Keys {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Create, list and change store teams (config teams are read-only).
    Teams {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: TeamsCommand,
    },
    /// Usage totals: requests, tokens, cost, by team, key, model and period.
    Usage {
        #[command(flatten)]
        store: StoreArgs,
        #[arg(long)]
        team: Option<String>,
        /// A key id (`key_…`) or a config key's name.
        #[arg(long)]
        key: Option<String>,
        #[arg(long)]
        model: Option<String>,
        /// Start: 2024-05-01, 2024-05-01T12:00:00Z, epoch seconds, or an age like 24h or 7d.
        #[arg(long)]
        from: Option<String>,
        /// End (exclusive), same forms as --from.
        #[arg(long)]
        to: Option<String>,
        /// team, key, model or day.
        #[arg(long)]
        group_by: Option<String>,
    },
}

#[derive(clap::Args, Debug)]
pub struct StoreArgs {
    /// The config file whose `store.url` (and teams and models) to use.
    #[arg(
        long,
        short,
        default_value = "examples/quickstart.yaml",
        env = "TOLLGATE_CONFIG",
        global = true
    )]
    config: PathBuf,
}

#[derive(clap::Args, Debug, Default)]
pub struct LimitArgs {
    /// Requests per minute.
    #[arg(long)]
    rpm: Option<u64>,
    /// Tokens per minute.
    #[arg(long)]
    tpm: Option<u64>,
    /// Requests in flight at once.
    #[arg(long)]
    max_concurrent: Option<u64>,
    /// Spend cap in US dollars per --budget-period.
    #[arg(long)]
    budget_usd: Option<f64>,
    /// daily, monthly or none (the config's words; day, month, total are read too).
    #[arg(long)]
    budget_period: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum KeysCommand {
    /// Make a key; the plaintext is printed once.
    Create {
        #[arg(long)]
        team: String,
        #[arg(long)]
        name: Option<String>,
        /// Comma-separated models, narrowing the team's.
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        /// Lifetime, e.g. 30d, 12h.
        #[arg(long)]
        expires_in: Option<String>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// List keys (display prefix, never the key).
    List {
        #[arg(long)]
        team: Option<String>,
    },
    /// Revoke a key now.
    Revoke { id: String },
    /// Replace a key; the old one keeps working for --grace.
    Rotate {
        id: String,
        #[arg(long, default_value = "1h")]
        grace: String,
    },
    /// Change a key's models, limits or budget.
    Set {
        id: String,
        #[arg(long)]
        name: Option<String>,
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        #[command(flatten)]
        limits: LimitArgs,
    },
}

#[derive(Subcommand, Debug)]
pub enum TeamsCommand {
    /// Make a store team.
    Create {
        name: String,
        /// Comma-separated models the team may use (`*` for all).
        #[arg(long, value_delimiter = ',')]
        models: Vec<String>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// Change a store team's models, limits or budget.
    Set {
        name: String,
        #[arg(long, value_delimiter = ',')]
        models: Option<Vec<String>>,
        #[command(flatten)]
        limits: LimitArgs,
    },
    /// List config and store teams.
    List,
}

/// Exit code for a bad config or bad usage (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

/// The whole program: parse the command line, start logging, run the command on a Tokio
/// runtime. Lives in the library (not in `main.rs`) so the runtime and every async state machine
/// it polls are compiled once, here, and the binary stays a call: an async `main` in the binary
/// made the compiler build the whole server a second time for it.
pub fn main() -> std::process::ExitCode {
    use clap::Parser;
    let cli = Cli::parse();
    // Held to the end: dropping it flushes the log lines still queued.
    let _log_guard = crate::telemetry::init_logging();
    let runtime = match runtime_builder().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tollgate: cannot start the Tokio runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    std::process::ExitCode::from(runtime.block_on(run(cli)))
}

/// The runtime for the CPUs this process may use: one thread that runs everything when it has
/// one CPU (no work stealing, no cross-thread wake-ups; `taskset -c 1`, a container limited to
/// one CPU), a worker per CPU otherwise. `TOKIO_WORKER_THREADS` still sets the worker count.
fn runtime_builder() -> tokio::runtime::Builder {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let workers_set = std::env::var_os("TOKIO_WORKER_THREADS").is_some();
    if cpus == 1 && !workers_set {
        tokio::runtime::Builder::new_current_thread()
    } else {
        tokio::runtime::Builder::new_multi_thread()
    }
}

pub async fn run(cli: Cli) -> u8 {
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Serve {
            config,
            listen,
            addr_file,
        } => serve(&config, listen, addr_file).await,
        Command::Keys { store, command } => admin_cli(&store.config, Op::Keys(command)).await,
        Command::Teams { store, command } => admin_cli(&store.config, Op::Teams(command)).await,
        Command::Usage {
            store,
            team,
            key,
            model,
            from,
            to,
            group_by,
        } => {
            let mut q = std::collections::HashMap::new();
            for (k, v) in [
                ("team", team),
                ("key", key),
                ("model", model),
                ("from", from),
                ("to", to),
                ("group_by", group_by),
            ] {
                if let Some(v) = v {
                    q.insert(k.to_owned(), v);
                }
            }
            admin_cli(&store.config, Op::Usage(q)).await
        }
    }
}

enum Op {
    Keys(KeysCommand),
    Teams(TeamsCommand),
    Usage(std::collections::HashMap<String, String>),
}

impl LimitArgs {
    fn limits(&self) -> Result<crate::store::Limits, String> {
        Ok(crate::store::Limits {
            requests_per_minute: self.rpm,
            tokens_per_minute: self.tpm,
            max_concurrent: self.max_concurrent,
            budget: self.budget()?,
        })
    }
    /// `--budget-usd` with `--budget-period` (monthly when left out) make one budget.
    fn budget(&self) -> Result<Option<crate::config::BudgetConfig>, String> {
        let period = self
            .budget_period
            .as_deref()
            .map(|p| {
                crate::store::BudgetPeriod::parse(p)
                    .ok_or_else(|| "--budget-period must be daily, monthly or none".to_owned())
            })
            .transpose()?;
        match (self.budget_usd, period) {
            (Some(amount_usd), period) => Ok(Some(crate::config::BudgetConfig {
                amount_usd,
                period: period.unwrap_or_default(),
            })),
            (None, Some(_)) => {
                Err("--budget-period needs --budget-usd (a budget is set whole)".into())
            }
            (None, None) => Ok(None),
        }
    }
    /// Only the flags given are changed.
    fn patch(&self) -> Result<crate::store::records::LimitsPatch, String> {
        Ok(crate::store::records::LimitsPatch {
            requests_per_minute: self.rpm.map(Some),
            tokens_per_minute: self.tpm.map(Some),
            max_concurrent: self.max_concurrent.map(Some),
            budget: self.budget()?.map(Some),
        })
    }
}

/// `30d`, `12h`, `90m`, `45s` as seconds.
fn lifetime_secs(s: &str) -> Result<u64, String> {
    if let Some(d) = s.strip_suffix('d').and_then(|n| n.parse::<u64>().ok()) {
        return Ok(d * 86_400);
    }
    crate::config::Dur::parse(s).map(|d| d.0.as_secs())
}

/// Run a store operation against the store named in `config`; prints JSON.
async fn admin_cli(config: &std::path::Path, op: Op) -> u8 {
    let cfg = match Config::load(config).and_then(|c| c.validate(&ProcessEnv).map(|_| c)) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("{}: {e}", config.display());
            return EXIT_CONFIG;
        }
    };
    let Some(store_cfg) = &cfg.store else {
        eprintln!("{}: no store configured (store.url)", config.display());
        return EXIT_CONFIG;
    };
    let url = match store_cfg.url.resolve(&ProcessEnv) {
        Ok(u) => u,
        Err(e) => {
            eprintln!("store.url: {e}");
            return EXIT_CONFIG;
        }
    };
    let tls = store_cfg.tls.as_ref();
    let db = match crate::store::Store::connect_tls(url.expose(), 2, tls, &ProcessEnv).await {
        Ok(db) => db,
        Err(e) => {
            eprintln!("{e}");
            return 1;
        }
    };
    let actor = format!(
        "cli:{}",
        std::env::var("USER").unwrap_or_else(|_| "unknown".into())
    );
    let result = run_op(&cfg, &db, &actor, op).await;
    db.close().await;
    match result {
        Ok(v) => {
            println!(
                "{}",
                serde_json::to_string_pretty(&v).unwrap_or_else(|_| v.to_string())
            );
            0
        }
        Err(e) => {
            eprintln!("error: {e}");
            EXIT_CONFIG
        }
    }
}

async fn run_op(
    cfg: &Config,
    db: &crate::store::Store,
    actor: &str,
    op: Op,
) -> Result<serde_json::Value, String> {
    use crate::admin::ops;
    use crate::store::records::{KeyPatch, NewKey, NewTeam, TeamPatch};
    use serde_json::json;
    let e = |e: ops::OpError| e.to_string();
    Ok(match op {
        Op::Keys(KeysCommand::Create {
            team,
            name,
            models,
            expires_in,
            limits,
        }) => {
            let new = NewKey {
                team,
                name,
                models,
                expires_in_secs: expires_in.as_deref().map(lifetime_secs).transpose()?,
                limits: limits.limits()?,
            };
            ops::create_key(cfg, db, actor, &new).await.map_err(e)?
        }
        Op::Keys(KeysCommand::List { team }) => {
            json!(db
                .list_keys(team.as_deref())
                .await
                .map_err(|x| x.to_string())?)
        }
        Op::Keys(KeysCommand::Revoke { id }) => {
            json!(db.revoke_key(actor, &id).await.map_err(|x| x.to_string())?)
        }
        Op::Keys(KeysCommand::Rotate { id, grace }) => {
            ops::rotate_key(db, actor, &id, Duration::from_secs(lifetime_secs(&grace)?))
                .await
                .map_err(e)?
                .0
        }
        Op::Keys(KeysCommand::Set {
            id,
            name,
            models,
            limits,
        }) => {
            let p = KeyPatch {
                name,
                models: models.map(Some),
                expires_at: None,
                limits: limits.patch()?,
            };
            json!(ops::update_key(cfg, db, actor, &id, &p).await.map_err(e)?)
        }
        Op::Teams(TeamsCommand::Create {
            name,
            models,
            limits,
        }) => {
            let t = NewTeam {
                name,
                models,
                limits: limits.limits()?,
            };
            json!(ops::create_team(cfg, db, actor, &t).await.map_err(e)?)
        }
        Op::Teams(TeamsCommand::Set {
            name,
            models,
            limits,
        }) => {
            let p = TeamPatch {
                models,
                limits: limits.patch()?,
            };
            json!(ops::update_team(cfg, db, actor, &name, &p)
                .await
                .map_err(e)?)
        }
        Op::Teams(TeamsCommand::List) => json!(ops::list_teams(cfg, db).await.map_err(e)?),
        Op::Usage(q) => {
            let f = crate::admin::usage_filter(&q).map_err(|e| e.to_string())?;
            json!(db.query_usage(&f).await.map_err(|x| x.to_string())?)
        }
    })
}

fn check_config(file: &std::path::Path) -> u8 {
    let result = Config::load(file).and_then(|c| {
        let mut warnings = c.validate(&ProcessEnv)?;
        warnings.extend(crate::limits::prices::unpriced_warnings(&c));
        check_tls_files(&c).map_err(|message| crate::config::ConfigError {
            path: String::new(),
            message,
        })?;
        Ok(warnings)
    });
    match result {
        Ok(warnings) => {
            for w in warnings {
                eprintln!("warning: {w}");
            }
            println!("{}: ok", file.display());
            0
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            EXIT_CONFIG
        }
    }
}

/// The certificate and key files the config names, read and parsed as serving would: the
/// listener's, each upstream's and each OAuth2 token endpoint's. The error names the field.
fn check_tls_files(c: &Config) -> Result<(), String> {
    if let Some(t) = &c.server.tls {
        crate::server::tls::ListenerTls::from_config(t)?;
    }
    for (name, u) in &c.upstreams {
        if u.tls.is_some() {
            crate::egress::client_config(
                u.tls.as_ref(),
                &format!("upstreams.{name}.tls"),
                &ProcessEnv,
            )?;
        }
    }
    for (name, cred) in &c.credentials {
        if let crate::config::CredentialConfig::Oauth2(o) = cred {
            if o.tls.is_some() {
                let path = format!("credentials.{name}.tls");
                crate::egress::client_config(o.tls.as_ref(), &path, &ProcessEnv)?;
            }
        }
    }
    Ok(())
}

async fn serve(
    path: &std::path::Path,
    listen: Option<SocketAddr>,
    addr_file: Option<PathBuf>,
) -> u8 {
    let config = match Config::load(path) {
        Ok(c) => c,
        Err(e) => {
            tracing::error!(config = %path.display(), error = %e, "invalid config");
            return EXIT_CONFIG;
        }
    };
    let snapshot = match Snapshot::build(config, &ProcessEnv, None) {
        Ok(s) => s,
        Err(e) => {
            tracing::error!(config = %path.display(), error = %e, "invalid config");
            return EXIT_CONFIG;
        }
    };
    // The listener's certificate before the port, too.
    let opts = match ServeOptions::from_config(&snapshot.config.server)
        .with_tls(&snapshot.config.server)
    {
        Ok(o) => o,
        Err(e) => {
            tracing::error!(config = %path.display(), error = %e, "invalid config");
            return EXIT_CONFIG;
        }
    };
    // The store before the port: a gateway that cannot reach it must not look ready; and the
    // signal handler before the address is published, so a SIGTERM is never the default kill.
    let shutdown = server::shutdown_signal();
    let (store, writer) = match &snapshot.config.store {
        None => {
            tracing::warn!("no store configured (store.url): config keys only, no usage rows");
            (None, None)
        }
        Some(cfg) => match crate::store::open(cfg, &ProcessEnv).await {
            Ok((h, w)) => (Some(h), Some(w)),
            Err(e) => {
                tracing::error!(error = %e, "cannot open the store");
                return 1;
            }
        },
    };
    let server_cfg = snapshot.config.server.clone();
    let addr = listen.unwrap_or(server_cfg.listen);
    let listener = match tokio::net::TcpListener::bind(addr).await {
        Ok(l) => l,
        Err(e) => {
            tracing::error!(%addr, error = %e, "cannot listen");
            return 1;
        }
    };
    let bound = listener
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_default();
    tracing::info!(addr = %bound, config = %path.display(), "listening");
    let state = AppState::with_store(snapshot, store.clone());
    let stop_watch = tokio_util::sync::CancellationToken::new();
    crate::reload::spawn_watcher(state.clone(), path.to_path_buf(), stop_watch.clone());
    // `/metrics` on its own listener, stopped when the main one has drained.
    let (metrics_stop, metrics_stopped) = tokio::sync::oneshot::channel::<()>();
    let metrics_task = match server_cfg.metrics_listen {
        None => None,
        Some(maddr) => match tokio::net::TcpListener::bind(maddr).await {
            Ok(l) => {
                tracing::info!(addr = %maddr, "metrics listening");
                Some(tokio::spawn(server::serve(
                    l,
                    crate::app::metrics_router(state.clone()),
                    ServeOptions {
                        // A scraper or two: no need for the main listener's budget.
                        max_connections: 64,
                        ..ServeOptions::from_config(&server_cfg)
                    },
                    async {
                        let _ = metrics_stopped.await;
                    },
                )))
            }
            Err(e) => {
                tracing::error!(addr = %maddr, error = %e, "cannot listen (server.metrics_listen)");
                return 1;
            }
        },
    };
    if let Some(f) = addr_file {
        if let Err(e) = std::fs::write(&f, &bound) {
            tracing::error!(file = %f.display(), error = %e, "cannot write addr file");
            return 1;
        }
    }
    let router = crate::app::router(state.clone());
    server::serve(listener, router, opts, shutdown).await;
    let _ = metrics_stop.send(());
    if let Some(t) = metrics_task {
        let _ = t.await;
    }
    stop_watch.cancel();
    // Connections are drained: wait for the limiter's last settlements (spend), then save.
    state
        .snapshot
        .load()
        .limiter
        .close(server_cfg.shutdown_grace.0)
        .await;
    if let Err(e) = state.snapshot.load().limiter.flush() {
        tracing::warn!(error = %e, "limits state not saved");
    }
    // The response cache's queued disk and Redis writes (bounded by the shutdown grace).
    let cache = state.snapshot.load().cache.clone();
    if !cache.flush(server_cfg.shutdown_grace.0).await {
        tracing::warn!("response cache writes still queued at shutdown were dropped");
    }
    // Connections are drained: write the usage rows still queued, then close the pool.
    if let Some(w) = writer {
        w.close().await;
    }
    if let Some(h) = store {
        h.db.close().await;
    }
    tracing::info!("stopped");
    0
}
