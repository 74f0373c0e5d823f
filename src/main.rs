//! `orderflow`: one binary, a subcommand per role. `up` runs every role in one process.

mod bench;
mod cli;
mod dev;
mod roles;
mod services;
mod workflows_cli;

use std::process::ExitCode;

use clap::Parser;

#[tokio::main]
async fn main() -> ExitCode {
    let cli = cli::Cli::parse();
    let _telemetry = match roles::init_logging(&cli.log_format) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("error: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    match roles::run(cli).await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // The cause chain on one line; a backtrace helps nobody at a prompt.
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
