//! The thin binary: parse the command line, start logging, hand off to [`tollgate::cli::run`].

use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = tollgate::cli::Cli::parse();
    tollgate::telemetry::init_logging();
    std::process::ExitCode::from(tollgate::cli::run(cli).await)
}
