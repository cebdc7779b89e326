//! `sluice topology …`: validate, plan and apply topics against a live cluster, export
//! AsyncAPI.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Subcommand;
use sluice_runtime::kafka::KafkaClients;
use sluice_runtime::SluiceConfig;
use sluice_topology::{alerts, apply, asyncapi, plan};

#[derive(Debug, Subcommand)]
pub enum TopologyCommand {
    /// Check the topology file and print a summary.
    Validate {
        #[arg(long)]
        topology: Option<PathBuf>,
    },
    /// Show what `apply` would change on the cluster.
    Plan {
        #[arg(long)]
        topology: Option<PathBuf>,
        /// Also plan deleting managed topics the topology no longer declares.
        #[arg(long)]
        allow_delete: bool,
    },
    /// Make the cluster match the topology. A second apply is a no-op.
    Apply {
        #[arg(long)]
        topology: Option<PathBuf>,
        #[arg(long)]
        allow_delete: bool,
    },
    /// Export a description of the topology.
    #[command(subcommand)]
    Export(ExportCommand),
}

#[derive(Debug, Subcommand)]
pub enum ExportCommand {
    /// AsyncAPI 3.0 (JSON): channels are topics, messages reference the Avro schemas.
    Asyncapi {
        #[arg(long)]
        topology: Option<PathBuf>,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
    /// Prometheus alert rules from the SLAs of the topology's upstreams (YAML).
    Alerts {
        #[arg(long)]
        topology: Option<PathBuf>,
        /// Write to this file instead of standard output.
        #[arg(long, short)]
        output: Option<PathBuf>,
    },
}

pub async fn run(config: &SluiceConfig, cmd: TopologyCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        TopologyCommand::Validate { topology } => {
            let path = super::topology_path(config, topology.clone());
            let (_, t) = super::load(config, topology)?;
            println!(
                "{} is valid: {} topics ({} with retry tiers), {} sources, {} routes, {} retry policies",
                path.display(),
                t.topics.len(),
                t.all_topics().len(),
                t.sources.len(),
                t.routes.len(),
                t.retry_policies.len()
            );
            Ok(ExitCode::SUCCESS)
        }
        TopologyCommand::Plan {
            topology,
            allow_delete,
        } => plan_or_apply(config, topology, allow_delete, false).await,
        TopologyCommand::Apply {
            topology,
            allow_delete,
        } => plan_or_apply(config, topology, allow_delete, true).await,
        TopologyCommand::Export(ExportCommand::Asyncapi { topology, output }) => {
            let (catalog, t) = super::load(config, topology)?;
            let doc = asyncapi::document(&t, &catalog, env!("CARGO_PKG_VERSION"));
            write_out(output, &serde_json::to_string_pretty(&doc)?)
        }
        TopologyCommand::Export(ExportCommand::Alerts { topology, output }) => {
            let (_, t) = super::load(config, topology)?;
            write_out(output, &alerts::upstream_alert_rules(&t))
        }
    }
}

/// Writes an export to `output`, or to standard output.
fn write_out(output: Option<PathBuf>, text: &str) -> anyhow::Result<ExitCode> {
    match output {
        Some(path) => {
            std::fs::write(&path, text)?;
            eprintln!("wrote {}", path.display());
        }
        None => print!("{text}{}", if text.ends_with('\n') { "" } else { "\n" }),
    }
    Ok(ExitCode::SUCCESS)
}

async fn plan_or_apply(
    config: &SluiceConfig,
    topology: Option<PathBuf>,
    allow_delete: bool,
    execute: bool,
) -> anyhow::Result<ExitCode> {
    let (_, t) = super::load(config, topology)?;
    let admin = KafkaClients::new(config.kafka.clone()).admin()?;
    let live = apply::live_topics(&admin, &t.prefix).await?;
    let p = plan::plan(&t.all_topics(), &live, allow_delete);
    print!("{p}");
    let blocked = p.blocking_refusals().count();
    if !execute {
        return Ok(if blocked > 0 {
            ExitCode::FAILURE
        } else {
            ExitCode::SUCCESS
        });
    }
    if p.is_empty() {
        println!("apply: nothing to do");
    } else {
        let done = apply::converge(&admin, &t.all_topics(), &t.prefix, &p, allow_delete, 3).await?;
        println!("apply: {done} change(s) made");
    }
    if blocked > 0 {
        println!("apply: {blocked} change(s) refused; see above");
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}
