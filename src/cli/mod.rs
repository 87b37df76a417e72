//! Command line: `serve`, `check-config`, and the store's admin operations (`keys`, `teams`,
//! `usage`).
//!
//! Owns argument parsing and the start-up order: load and validate the config before any port
//! is bound, then bind, then serve. Exit codes: 0 ok, 64 bad config or usage, 1 runtime failure.
//!
//! `keys`, `teams` and `usage` work against the store directly: they read `store.url` from the
//! config file (`--config`), apply migrations if needed, and run the same operations as the
//! admin API (with the same checks and audit rows, actor `cli:$USER`). Output is JSON.
//!
//! `batch` talks to a running gateway over HTTP with a Tollgate key (see `batch.rs`).
//!
//! The command-line module is split by concern: this file parses and dispatches and checks a
//! config; [`serve`] runs the gateway; [`store_ops`] holds the store commands; `batch` the
//! batch commands.

mod batch;
mod serve;
mod store_ops;

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::secret::ProcessEnv;
use store_ops::{admin_cli, Op};
pub use store_ops::{KeysCommand, LimitArgs, StoreArgs, TeamsCommand};

#[derive(Parser, Debug)]
#[command(name = "tollgate", version = crate::telemetry::VERSION, about = "An LLM API gateway")]
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
    /// Batches on a running gateway: submit (and follow), status, cancel, download.
    Batch(batch::BatchArgs),
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
        } => serve::serve(&config, listen, addr_file).await,
        Command::Batch(args) => batch::run(args).await,
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
