//! `sluice bench …`: throughput and latency against the live stack, each reported next to a
//! raw rdkafka ceiling measured in the same run, because absolute numbers on a shared or
//! small machine mean little on their own.

pub mod gateway;
pub mod normalizer;
pub mod stats;

use std::process::ExitCode;

use clap::Subcommand;
use sluice_runtime::SluiceConfig;

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Signed Stripe and GitHub deliveries through `sluice gateway`, against a raw
    /// producer writing the same bytes with the same acks=all.
    Gateway(gateway::GatewayBench),
    /// The normalizer in exactly-once and at-least-once mode, against a raw
    /// consume→produce passthrough.
    Normalizer(normalizer::NormalizerBench),
}

pub async fn run(config: &SluiceConfig, cmd: BenchCommand) -> anyhow::Result<ExitCode> {
    match cmd {
        BenchCommand::Gateway(b) => gateway::run(config, b).await,
        BenchCommand::Normalizer(b) => normalizer::run(config, b).await,
    }
}

/// The real webhook payloads the benches send (see tests/fixtures/webhooks/README.md).
pub mod fixtures {
    pub const STRIPE_PAYMENT_SUCCEEDED: &[u8] =
        include_bytes!("../../../tests/fixtures/webhooks/stripe/payment_intent.succeeded.json");
    pub const GITHUB_PUSH: &[u8] =
        include_bytes!("../../../tests/fixtures/webhooks/github/push.json");
}

/// Starts another `sluice` process (this binary) with extra environment, for benches that
/// measure a role's own RSS.
pub fn spawn_self(args: &[&str], env: &[(&str, String)]) -> anyhow::Result<ChildProcess> {
    let mut cmd = std::process::Command::new(std::env::current_exe()?);
    cmd.args(args)
        .env("RUST_LOG", "warn")
        .env("SLUICE_ADMIN__LISTEN", "127.0.0.1:0")
        .stdout(std::process::Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    Ok(ChildProcess(cmd.spawn()?))
}

/// A child process stopped when dropped.
pub struct ChildProcess(pub std::process::Child);

impl ChildProcess {
    /// Peak resident set size so far (Linux `VmHWM`), in MiB.
    pub fn peak_rss_mib(&self) -> Option<f64> {
        peak_rss_mib(self.0.id())
    }
}

impl Drop for ChildProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub fn peak_rss_mib(pid: u32) -> Option<f64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}

/// A port nobody listens on right now.
pub fn free_port() -> anyhow::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}
