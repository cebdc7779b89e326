//! `sluice gateway`: serve webhook ingestion and the publish API until SIGTERM/SIGINT.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use sluice_runtime::{Shutdown, SluiceConfig};

#[derive(Debug, Args)]
pub struct GatewayArgs {
    /// Topology file (sources, routes); defaults to the config's `topology` or
    /// topology/topology.yaml.
    #[arg(long)]
    topology: Option<PathBuf>,
}

pub async fn run(config: &SluiceConfig, args: GatewayArgs) -> anyhow::Result<ExitCode> {
    let (catalog, topology) = super::load(config, args.topology)?;
    let shutdown = Shutdown::on_signals();
    sluice_producers::gateway::run(config, &catalog, &topology, shutdown).await?;
    Ok(ExitCode::SUCCESS)
}
