//! `sluice`: verified webhooks and domain events as versioned Avro on Kafka.

mod bench;
mod cli;
mod demo;

/// Small, short-lived allocations dominate every role's per-record work.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

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
    /// Register, check and inspect Avro schemas.
    #[command(subcommand)]
    Schemas(cli::schemas::SchemasCommand),
    /// Validate, plan and apply the topology; export AsyncAPI.
    #[command(subcommand)]
    Topology(cli::topology::TopologyCommand),
    /// Print a topic's records as JSON lines, decoded through the registry.
    Tail(cli::tail::TailArgs),
    /// Serve webhook ingestion (`POST /webhooks/{source}`), the publish API
    /// (`POST /v1/events/{event_type}`) and the endpoints API (`/v1/endpoints`) until
    /// SIGTERM/SIGINT.
    Gateway(cli::gateway::GatewayArgs),
    /// Demonstrations against the running stack.
    #[command(subcommand)]
    Demo(demo::DemoCommand),
    /// Run the normalizer: raw deliveries to canonical Avro events, with retry tiers and DLQ.
    Normalize(cli::normalize::NormalizeArgs),
    /// Deliver events to subscribers' webhook endpoints: fan-out, signed POSTs, retries,
    /// delivery log and DLQ.
    Deliver(cli::deliver::DeliverArgs),
    /// The delivery log of an endpoint (list, show) and sending events again (resend,
    /// recover).
    #[command(subcommand)]
    Deliveries(cli::deliveries::DeliveriesCommand),
    /// Inspect, replay and purge dead-letter topics.
    #[command(subcommand)]
    Dlq(cli::dlq::DlqCommand),
    /// Run the saga orchestrator (`saga run`); inspect and operate saga instances; run the
    /// demo participants.
    #[command(subcommand)]
    Saga(cli::saga::SagaCommand),
    /// Consumer lag of every group: offsets, time lag and Burrow-style status; `--export`
    /// serves it as Prometheus metrics.
    Lag(cli::lag::LagArgs),
    /// The transactional outbox: create its table (`init`), relay it to Kafka (`relay`).
    #[command(subcommand)]
    Outbox(cli::outbox::OutboxCommand),
    /// Poll the topology's polling sources (`sources[].poll`) into their raw topics until
    /// SIGTERM/SIGINT: exactly once per item version.
    Poll(cli::poll::PollArgs),
    /// Sources: `status` shows each polling source's cursor, last success, items/s, errors.
    #[command(subcommand)]
    Sources(cli::poll::SourcesCommand),
    /// Every role in one supervised process; `--demo` also drives the demo traffic.
    Run(cli::run::RunArgs),
    /// Outbound webhook endpoints, through a running gateway's `/v1/endpoints` API:
    /// add, list, show, update, disable, enable, rotate-secret, delete.
    Endpoints(cli::endpoints::EndpointsArgs),
    /// Benchmarks against the live stack, each with a raw rdkafka ceiling from the same run.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
}

fn main() -> ExitCode {
    with_allocator_defaults();
    without_transparent_huge_pages();
    exit_quietly_on_closed_stdout();
    exit_with_supervisor();
    let cli = Cli::parse_from(cli::renamed::rewrite(std::env::args_os()));
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
            Command::Schemas(cmd) => cli::schemas::run(&config, cmd).await,
            Command::Topology(cmd) => cli::topology::run(&config, cmd).await,
            Command::Tail(args) => cli::tail::run(&config, args).await,
            Command::Demo(cmd) => demo::run(&config, cmd).await,
            Command::Gateway(args) => cli::gateway::run(&config, args).await,
            Command::Normalize(args) => cli::normalize::run(&config, args).await,
            Command::Deliver(args) => cli::deliver::run(&config, args).await,
            Command::Deliveries(cmd) => cli::deliveries::run(&config, cmd).await,
            Command::Dlq(cmd) => cli::dlq::run(&config, cmd).await,
            Command::Saga(cmd) => cli::saga::run(&config, cmd).await,
            Command::Lag(args) => cli::lag::run(&config, args).await,
            Command::Bench(cmd) => bench::run(&config, cmd).await,
            Command::Endpoints(args) => cli::endpoints::run(args).await,
            Command::Outbox(cmd) => cli::outbox::run(&config, cmd).await,
            Command::Poll(args) => cli::poll::run(&config, args).await,
            Command::Sources(cmd) => cli::poll::sources(&config, cmd).await,
            Command::Run(args) => cli::run::run(&config, cli.config.as_deref(), args).await,
        }
    });
    match result {
        Ok(code) => code,
        Err(e) => {
            // Errors may quote what a topic held (a header naming a topic, a saga id).
            eprintln!(
                "error: {}",
                cli::printable::text(&cli::error_text::chain(&e))
            );
            ExitCode::FAILURE
        }
    }
}

/// `sluice tail … | head` closes stdout early; end like other Unix tools instead of
/// printing a panic.
fn exit_quietly_on_closed_stdout() {
    let default = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        let message = info
            .payload()
            .downcast_ref::<String>()
            .map(String::as_str)
            .unwrap_or_default();
        if message.starts_with("failed printing to stdout") && message.contains("Broken pipe") {
            std::process::exit(141);
        }
        default(info);
    }));
}

/// mimalloc's purge delay as sluice sets it: how long freed memory stays resident before it
/// goes back to the kernel. mimalloc's own default, a second, keeps a second of churn
/// resident: on a backlog drain 30–45 MiB of each saga role's memory, for no measurable rate
/// (100 ms against 1 s, docs/benchmarks.md); purging at once cost about a tenth of the rate.
const PURGE_DELAY: (&str, &str) = ("MIMALLOC_PURGE_DELAY", "100");

/// mimalloc reads its options from the environment once, before `main`, so this process runs
/// itself again with sluice's purge delay in its environment: the same process (pid, open
/// files, arguments), a new image. An operator's own `MIMALLOC_PURGE_DELAY` is left as it
/// is, and if the restart fails the process goes on with mimalloc's default.
fn with_allocator_defaults() {
    #[cfg(target_os = "linux")]
    if let Some(mut restart) = restart_with_allocator_defaults() {
        use std::os::unix::process::CommandExt;
        let error = restart.exec(); // returns only on failure
        eprintln!(
            "sluice: could not set {} ({error}); using mimalloc's default",
            PURGE_DELAY.0
        );
    }
}

/// The command that restarts this process with [`PURGE_DELAY`], or `None` when the
/// environment already has it.
#[cfg(target_os = "linux")]
fn restart_with_allocator_defaults() -> Option<std::process::Command> {
    use std::os::unix::process::CommandExt;
    let (name, value) = PURGE_DELAY;
    if std::env::var_os(name).is_some() {
        return None;
    }
    let mut args = std::env::args_os();
    let mut command = std::process::Command::new("/proc/self/exe");
    command.arg0(args.next()?).args(args).env(name, value);
    Some(command)
}

/// Transparent huge pages off for this process, unless `MIMALLOC_ALLOW_THP` is set (then
/// mimalloc does as it says). mimalloc asks the kernel for huge pages on its arenas, and a
/// 2 MiB page is resident as soon as one byte of it is used: with them the saga roles held
/// 10–30% more memory on a backlog for a few percent of speed (docs/benchmarks.md).
fn without_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    if std::env::var_os("MIMALLOC_ALLOW_THP").is_none() {
        // PR_SET_THP_DISABLE: a flag of the whole process, threads started later included.
        let _ = rustix::thread::disable_transparent_huge_pages(true);
    }
}

/// Environment variable naming the `sluice run` process that supervises this one.
pub const SUPERVISOR_PID_ENV: &str = "SLUICE_SUPERVISOR_PID";

/// A role started by `sluice run` stops when its supervisor is gone (even one killed with
/// SIGKILL), instead of living on as an orphan still in its consumer group.
fn exit_with_supervisor() {
    let Some(supervisor) = std::env::var(SUPERVISOR_PID_ENV)
        .ok()
        .and_then(|p| p.parse::<u32>().ok())
    else {
        return;
    };
    std::thread::spawn(move || loop {
        if std::os::unix::process::parent_id() != supervisor {
            eprintln!("sluice: supervisor {supervisor} is gone; stopping");
            std::process::exit(0);
        }
        std::thread::sleep(std::time::Duration::from_millis(500));
    });
}

#[cfg(test)]
mod tests {
    #[cfg(target_os = "linux")]
    #[test]
    fn the_restart_keeps_the_arguments_and_adds_only_the_purge_delay() {
        let (name, value) = super::PURGE_DELAY;
        let Some(restart) = super::restart_with_allocator_defaults() else {
            assert!(std::env::var_os(name).is_some());
            return; // the environment's own setting, left alone
        };
        assert_eq!(restart.get_program(), "/proc/self/exe");
        let args: Vec<_> = restart.get_args().collect();
        let ours: Vec<_> = std::env::args_os().skip(1).collect();
        assert_eq!(args, ours);
        let envs: Vec<_> = restart.get_envs().collect();
        assert_eq!(envs, [(name.as_ref(), Some(value.as_ref()))]);
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn transparent_huge_pages_are_off_unless_mimalloc_is_told_otherwise() {
        if std::env::var_os("MIMALLOC_ALLOW_THP").is_some() {
            return; // the operator's choice, left alone
        }
        super::without_transparent_huge_pages();
        assert!(rustix::thread::transparent_huge_pages_are_disabled().unwrap());
    }
}
