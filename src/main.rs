//! `sluice`: verified webhooks and domain events as versioned Avro on Kafka.

mod cli;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use sluice_runtime::SluiceConfig;

#[derive(Debug, Parser)]
#[command(name = "sluice", version, about)]
struct Cli {
    /// Config file (YAML). Defaults to ./sluice.yaml when present; `SLUICE_<SECTION>__<KEY>`
    /// environment variables override it.
    #[arg(long, global = true, env = "SLUICE_CONFIG")]
    config: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Check that the broker and the schema registry are reachable and say what they support.
    Doctor,
    /// Demonstrations against the running stack.
    #[command(subcommand)]
    Demo(cli::demo::DemoCommand),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = match SluiceConfig::load(cli.config.as_deref()) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let _telemetry = match sluice_runtime::telemetry::init(&config.telemetry) {
        Ok(guard) => guard,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("tokio runtime");
    let result = runtime.block_on(async {
        match cli.command {
            Command::Doctor => cli::doctor::run(&config).await,
            Command::Demo(cmd) => cli::demo::run(&config, cmd).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
