//! `sluice schemas …`: register the catalog at deploy time, check compatibility, inspect
//! the registry.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use apache_avro::Schema;
use clap::Subcommand;
use sluice_runtime::SluiceConfig;
use sluice_schemas::compat::{self, check_history, Rules};
use sluice_schemas::{Catalog, RegistryClient};
use sluice_topology::model::Compatibility;
use sluice_topology::Topology;

/// Apicurio's Confluent API lists at most this many subjects unless configured otherwise.
const APICURIO_DEFAULT_MAX_SUBJECTS: usize = 1000;

#[derive(Debug, Subcommand)]
pub enum SchemasCommand {
    /// Register every catalog version of every routed event type (and of every saga
    /// command, reply and control message) under its subject, after setting the subject's
    /// compatibility mode. Idempotent.
    Register {
        #[arg(long)]
        topology: Option<PathBuf>,
    },
    /// Check compatibility: offline against the catalog's own history (default), or online
    /// against the registry's compatibility endpoint.
    Check {
        #[arg(long)]
        topology: Option<PathBuf>,
        /// Ask the live registry instead of checking the catalog's history.
        #[arg(long)]
        online: bool,
        /// Check the `.avsc` files in this directory instead of the catalog built into
        /// sluice (e.g. `schemas/avro` in a working tree).
        #[arg(long)]
        catalog: Option<PathBuf>,
    },
    /// List the registry's subjects (or, with --catalog, the catalog's event types).
    List {
        #[arg(long)]
        catalog: bool,
    },
    /// Show one subject's schema.
    Show {
        subject: String,
        #[arg(long)]
        version: Option<u32>,
    },
}

pub async fn run(config: &SluiceConfig, cmd: SchemasCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        SchemasCommand::Register { topology } => register(config, topology).await,
        SchemasCommand::Check {
            topology,
            online,
            catalog,
        } => {
            let (embedded, topology) = super::load(config, topology)?;
            let catalog = match catalog {
                Some(dir) => Catalog::from_dir(&dir)?,
                None => embedded,
            };
            if online {
                check_online(config, &catalog, &topology).await
            } else {
                check_offline(&catalog, &topology)
            }
        }
        SchemasCommand::List { catalog } => list(config, catalog).await,
        SchemasCommand::Show { subject, version } => show(config, &subject, version).await,
    }
}

fn rules(mode: Compatibility) -> Rules {
    Rules {
        backward: mode.backward(),
        forward: mode.forward(),
        transitive: mode.transitive(),
    }
}

async fn register(config: &SluiceConfig, topology: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    let (catalog, topology) = super::load(config, topology)?;
    let registry = RegistryClient::new(&config.registry)?;
    println!("{:<72} {:>3} {:>6}  mode", "subject", "ver", "id");
    // Routed events, then each saga's commands, replies and control messages.
    for (topic, event_type) in topology.registrations() {
        let subject = topology.subjects.naming.subject(&topic, &event_type);
        let mode = topology.subjects.compatibility_of(&event_type);
        registry
            .set_compatibility(Some(&subject), mode.as_str())
            .await
            .with_context(|| format!("setting {subject}'s compatibility to {mode}"))?;
        for entry in catalog.versions(&event_type)? {
            let id = registry
                .register(&subject, &entry.json)
                .await
                .with_context(|| format!("registering {} as {subject}", entry.path))?;
            println!("{subject:<72} v{:<2} {id:>6}  {mode}", entry.version);
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn check_offline(catalog: &Catalog, topology: &Topology) -> anyhow::Result<ExitCode> {
    let mut failures = 0;
    for name in catalog.event_types() {
        let mode = topology.subjects.compatibility_of(name);
        let entries = catalog.versions(name)?;
        let versions: Vec<&Schema> = entries.iter().map(|e| &e.schema).collect();
        let subjects: Vec<String> = topology
            .routes
            .iter()
            .filter(|r| r.event_type == name)
            .map(|r| topology.subjects.naming.subject(&r.topic, name))
            .collect();
        let label = subjects
            .first()
            .cloned()
            .unwrap_or_else(|| name.to_string());
        let violations = check_history(&versions, rules(mode));
        for v in &violations {
            println!("FAIL {label} [{mode}] {v}");
        }
        failures += violations.len();
        if violations.is_empty() && versions.len() > 1 {
            println!("ok   {label} [{mode}] v1..v{}", versions.len());
        }
    }
    if failures > 0 {
        println!("{failures} compatibility problem(s)");
        return Ok(ExitCode::FAILURE);
    }
    println!("catalog history is compatible with every subject's mode");
    Ok(ExitCode::SUCCESS)
}

async fn check_online(
    config: &SluiceConfig,
    catalog: &Catalog,
    topology: &Topology,
) -> anyhow::Result<ExitCode> {
    let registry = RegistryClient::new(&config.registry)?;
    let mut failures = 0;
    for route in &topology.routes {
        let subject = topology
            .subjects
            .naming
            .subject(&route.topic, &route.event_type);
        let latest = catalog.latest(&route.event_type)?;
        if registry.is_compatible(&subject, &latest.json).await? {
            println!("ok   {subject} accepts {}", latest.path);
            continue;
        }
        failures += 1;
        println!("FAIL {subject} rejects {} (registry verdict)", latest.path);
        // The registry says no without saying why; compare against what it holds.
        let mode = topology.subjects.compatibility_of(&route.event_type);
        for version in registry.versions(&subject).await? {
            let held = registry.schema_by_subject(&subject, Some(version)).await?;
            let held = Schema::parse_str(&held.schema)?;
            if mode.backward() {
                for p in compat::check(&latest.schema, &held) {
                    println!("       vs registered version {version} (backward): {p}");
                }
            }
            if mode.forward() {
                for p in compat::check(&held, &latest.schema) {
                    println!("       vs registered version {version} (forward): {p}");
                }
            }
        }
    }
    if failures > 0 {
        return Ok(ExitCode::FAILURE);
    }
    Ok(ExitCode::SUCCESS)
}

async fn list(config: &SluiceConfig, catalog_only: bool) -> anyhow::Result<ExitCode> {
    if catalog_only {
        let catalog = Catalog::embedded()?;
        for e in catalog.entries() {
            println!(
                "{:<56} v{}  schemas/avro/{}",
                e.full_name, e.version, e.path
            );
        }
        return Ok(ExitCode::SUCCESS);
    }
    let registry = RegistryClient::new(&config.registry)?;
    let mut subjects = registry.subjects().await?;
    subjects.sort();
    if subjects.len() == APICURIO_DEFAULT_MAX_SUBJECTS {
        eprintln!(
            "note: the registry listed exactly {APICURIO_DEFAULT_MAX_SUBJECTS} subjects, Apicurio's default cap; \
             raise apicurio.ccompat.max-subjects to see them all"
        );
    }
    println!(
        "{:<72} {:>8} {:>6}  compatibility",
        "subject", "versions", "id"
    );
    for s in subjects {
        let versions = registry.versions(&s).await?;
        let latest = registry.schema_by_subject(&s, None).await?;
        let mode = registry
            .compatibility(Some(&s))
            .await
            .unwrap_or_else(|_| "(global)".into());
        println!("{s:<72} {:>8} {:>6}  {mode}", versions.len(), latest.id);
    }
    Ok(ExitCode::SUCCESS)
}

async fn show(
    config: &SluiceConfig,
    subject: &str,
    version: Option<u32>,
) -> anyhow::Result<ExitCode> {
    let registry = RegistryClient::new(&config.registry)?;
    let s = registry
        .schema_by_subject(subject, version)
        .await
        .with_context(|| match version {
            Some(v) => format!("subject {subject} version {v}"),
            None => format!("subject {subject}"),
        })?;
    println!("subject  {subject}");
    println!(
        "version  {}",
        s.version.map_or("?".into(), |v| v.to_string())
    );
    println!("id       {}", s.id);
    let pretty = serde_json::from_str::<serde_json::Value>(&s.schema)
        .map(|v| serde_json::to_string_pretty(&v).unwrap_or_default())
        .unwrap_or(s.schema);
    println!("{pretty}");
    Ok(ExitCode::SUCCESS)
}
