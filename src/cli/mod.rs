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
mod output;
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
    #[command(after_help = "Examples:\n  \
        tollgate serve --config examples/quickstart.yaml\n  \
        TOLLGATE_CONFIG=/etc/tollgate/tollgate.yaml tollgate serve --listen 0.0.0.0:8080")]
    Serve {
        /// The config file (YAML); else $TOLLGATE_CONFIG, else ./tollgate.yaml.
        #[arg(long, short, env = "TOLLGATE_CONFIG")]
        config: Option<PathBuf>,
        /// Listen here instead of `server.listen` (port 0 picks a free port), e.g.
        /// 127.0.0.1:8080 or localhost:8080.
        #[arg(long, value_parser = crate::config::listen_addr)]
        listen: Option<SocketAddr>,
        /// Write the bound address to this file once listening (for scripts and tests).
        #[arg(long)]
        addr_file: Option<PathBuf>,
    },
    /// Validate a config file without serving; exit non-zero on the first error.
    #[command(after_help = "Examples:\n  \
        tollgate check-config examples/quickstart.yaml\n  \
        tollgate check-config            # ./tollgate.yaml or $TOLLGATE_CONFIG")]
    CheckConfig {
        /// The config file (YAML); else $TOLLGATE_CONFIG, else ./tollgate.yaml.
        #[arg(env = "TOLLGATE_CONFIG")]
        file: Option<PathBuf>,
    },
    /// Create, list, revoke, rotate and change keys in the store.
    #[command(after_help = "Examples:\n  \
        tollgate keys create --team ml --name ci --rpm 60 --expires-in 30d\n  \
        tollgate keys list --team ml\n  \
        tollgate keys rotate key_0123456789abcdef --grace 24h\n  \
        tollgate keys revoke key_0123456789abcdef")]
    Keys {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: KeysCommand,
    },
    /// Create, list, change and delete store teams (config teams are read-only).
    #[command(after_help = "Examples:\n  \
        tollgate teams create ml --models mock-gpt --rpm 600 --budget-usd 50 --budget-period monthly\n  \
        tollgate teams set ml --tpm 100000\n  \
        tollgate teams list --json\n  \
        tollgate teams delete ml")]
    Teams {
        #[command(flatten)]
        store: StoreArgs,
        #[command(subcommand)]
        command: TeamsCommand,
    },
    /// Batches on a running gateway: submit (and follow), status, cancel, download.
    #[command(after_help = "Examples:\n  \
        export TOLLGATE_URL=http://127.0.0.1:8080 TOLLGATE_API_KEY=sk-tollgate-demo\n  \
        tollgate batch submit requests.jsonl --wait -o out.jsonl\n  \
        tollgate batch submit prompts.txt --model mock-gpt --wait\n  \
        tollgate batch status batch_0123\n  \
        tollgate batch download batch_0123 -o out.jsonl --errors errors.jsonl")]
    Batch(batch::BatchArgs),
    /// Usage totals: requests, tokens, cost, by team, key, model and period.
    #[command(after_help = "Examples:\n  \
        tollgate usage --from 7d --group-by team\n  \
        tollgate usage --team ml --from 2026-12-01 --to 2026-12-02 --group-by model --json")]
    Usage {
        #[command(flatten)]
        store: StoreArgs,
        /// Only this team's requests.
        #[arg(long)]
        team: Option<String>,
        /// A key id (`key_…`) or a config key's name.
        #[arg(long)]
        key: Option<String>,
        /// Only requests for this model.
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
    /// Print a shell completion script.
    #[command(after_help = "Examples:\n  \
        tollgate completions bash > ~/.local/share/bash-completion/completions/tollgate\n  \
        tollgate completions zsh > ~/.zfunc/_tollgate\n  \
        tollgate completions fish > ~/.config/fish/completions/tollgate.fish")]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
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

/// The config file a command uses, found as servers find theirs: `--config` (or the
/// command's file argument), else `$TOLLGATE_CONFIG` (clap reads both into `given`), else
/// `./tollgate.yaml`; otherwise a message saying so.
pub fn find_config(given: Option<PathBuf>) -> Result<PathBuf, String> {
    if let Some(p) = given {
        return Ok(p);
    }
    let local = PathBuf::from(DEFAULT_CONFIG);
    if local.is_file() {
        return Ok(local);
    }
    Err(format!(
        "no config file: pass --config FILE, set TOLLGATE_CONFIG, or put {DEFAULT_CONFIG} in \
         the current directory (examples/quickstart.yaml in the repository is a start)"
    ))
}

/// The config file looked for in the current directory.
pub const DEFAULT_CONFIG: &str = "tollgate.yaml";

pub async fn run(cli: Cli) -> u8 {
    // `batch` talks to a running gateway over HTTP: it reads no config file.
    let cli = match cli.command {
        Command::Batch(args) => return batch::run(args).await,
        command => Cli { command },
    };
    if let Command::Completions { shell } = cli.command {
        use clap::CommandFactory;
        clap_complete::generate(
            shell,
            &mut Cli::command(),
            "tollgate",
            &mut std::io::stdout(),
        );
        return 0;
    }
    let config = match &cli.command {
        Command::Completions { .. } | Command::Batch(_) => None,
        Command::CheckConfig { file } => file.clone(),
        Command::Serve { config, .. } => config.clone(),
        Command::Keys { store, .. }
        | Command::Teams { store, .. }
        | Command::Usage { store, .. } => store.config.clone(),
    };
    let config = match find_config(config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("tollgate: {e}");
            return EXIT_CONFIG;
        }
    };
    match cli.command {
        Command::CheckConfig { .. } => check_config(&config),
        Command::Serve {
            listen, addr_file, ..
        } => serve::serve(&config, listen, addr_file).await,
        Command::Batch(args) => batch::run(args).await,
        Command::Keys { command, store } => admin_cli(&config, store.json, Op::Keys(command)).await,
        Command::Teams { command, store } => {
            admin_cli(&config, store.json, Op::Teams(command)).await
        }
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
            admin_cli(&config, store.json, Op::Usage(q)).await
        }
        Command::Completions { .. } => 0,
    }
}
fn check_config(file: &std::path::Path) -> u8 {
    let result = Config::load(file).and_then(|c| {
        let warnings = config_warnings(&c)?;
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

/// Validate `c`; its warnings (a secret written literally, a model without a price under a
/// budget, …), said by `check-config` and logged by `serve`.
fn config_warnings(c: &Config) -> Result<Vec<String>, crate::config::ConfigError> {
    let mut warnings = c.validate(&ProcessEnv)?;
    warnings.extend(crate::limits::prices::unpriced_warnings(c));
    Ok(warnings)
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    /// Every argument of every command says what it is, and every command shows an example.
    #[test]
    fn every_argument_has_help_and_every_command_an_example() {
        fn walk(cmd: &clap::Command, path: &str, leaf_examples: bool) {
            for arg in cmd.get_arguments() {
                let id = arg.get_id().as_str();
                if id == "help" || id == "version" {
                    continue;
                }
                assert!(arg.get_help().is_some(), "{path} {id} has no help");
            }
            let subs: Vec<&clap::Command> = cmd.get_subcommands().collect();
            if leaf_examples {
                let after = cmd
                    .get_after_help()
                    .map(|h| h.to_string())
                    .unwrap_or_default();
                assert!(after.contains("Examples:"), "{path} has no example");
            }
            for sub in subs {
                let name = sub.get_name();
                // Commands of the top level carry the examples for their subcommands.
                walk(sub, &format!("{path} {name}"), path == "tollgate");
            }
        }
        walk(&Cli::command(), "tollgate", false);
    }
}
