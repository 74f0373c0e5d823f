//! `orderflow`: one binary, a subcommand per role. `up` runs every role in one process.

mod cli;
mod roles;

use clap::Parser;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = cli::Cli::parse();
    roles::init_logging(&cli.log_format);
    roles::run(cli).await
}
