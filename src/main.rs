//! The thin binary: parse the command line, start logging, hand off to [`tollgate::cli::run`].

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = tollgate::cli::Cli::parse();
    // Held to the end: dropping it flushes the log lines still queued.
    let _log_guard = tollgate::telemetry::init_logging();
    std::process::ExitCode::from(tollgate::cli::run(cli).await)
}
