//! Command line: `serve` and `check-config`.
//!
//! Owns argument parsing and the start-up order: load and validate the config before any port
//! is bound, then bind, then serve. Exit codes: 0 ok, 64 bad config or usage, 1 runtime failure.

use std::net::SocketAddr;
use std::path::PathBuf;

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
}

/// Exit code for a bad config or bad usage (EX_USAGE).
pub const EXIT_CONFIG: u8 = 64;

pub async fn run(cli: Cli) -> u8 {
    match cli.command {
        Command::CheckConfig { file } => check_config(&file),
        Command::Serve {
            config,
            listen,
            addr_file,
        } => serve(&config, listen, addr_file).await,
    }
}

fn check_config(file: &std::path::Path) -> u8 {
    let result = Config::load(file).and_then(|c| c.validate(&ProcessEnv));
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
    let state = AppState::new(snapshot);
    let shutdown = server::shutdown_signal();
    let stop_watch = tokio_util::sync::CancellationToken::new();
    crate::reload::spawn_watcher(state.clone(), path.to_path_buf(), stop_watch.clone());
    if let Some(f) = addr_file {
        if let Err(e) = std::fs::write(&f, &bound) {
            tracing::error!(file = %f.display(), error = %e, "cannot write addr file");
            return 1;
        }
    }
    let router = crate::app::router(state.clone());
    let opts = ServeOptions {
        header_read_timeout: server_cfg.header_read_timeout.0,
        shutdown_grace: server_cfg.shutdown_grace.0,
    };
    server::serve(listener, router, opts, shutdown).await;
    if let Err(e) = state.snapshot.load().limiter.flush() {
        tracing::warn!(error = %e, "limits state not saved");
    }
    stop_watch.cancel();
    tracing::info!("stopped");
    0
}
