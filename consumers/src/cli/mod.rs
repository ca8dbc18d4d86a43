//! The `sshwarden` command line: the subcommands and what each one starts.
//! `run` hands its resolved settings to a source ([`crate::source`]); the
//! offline commands ([`scan`], [`classify`], [`demo`]) read [`input`] and
//! drive the engine themselves; [`release`] and [`health`] are one call each.

pub mod blocks;
pub mod classify;
#[cfg(test)]
mod config_reference;
pub mod demo;
pub mod health;
pub mod input;
pub mod release;
pub mod scan;
mod scan_split;

use std::io::{BufWriter, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::config;

/// SSH intrusion detection and response for EC2 fleets.
#[derive(Parser)]
#[command(name = "sshwarden", version, about)]
pub struct Cli {
    #[command(flatten)]
    config: config::ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

// Parsed once per process: the size of the `run` variant's flags does not matter.
#[allow(clippy::large_enum_variant)]
#[derive(Subcommand)]
enum Command {
    /// The whole pipeline on a simulated fleet under attack, no cloud needed.
    Demo(demo::DemoArgs),
    /// Analyse auth logs, journal exports or captured subscription payloads offline.
    Scan(scan::ScanArgs),
    /// Print one JSON verdict per input line.
    Classify(classify::ClassifyArgs),
    /// The service: consume a Kinesis stream with shard leases in DynamoDB (or a Kafka topic).
    Run(Box<config::RunOptions>),
    /// Release a quarantined instance: start the release state machine, or restore directly.
    Release(release::ReleaseArgs),
    /// The network ACL blocks: list them, lift one, sweep the ended ones.
    Blocks(blocks::BlocksArgs),
    /// Ask a running worker's /healthz (or /readyz); exit 0 if it answers 200 (container health check).
    Health(health::HealthArgs),
}

impl Cli {
    /// Parses the process's arguments (and `SSHWARDEN_*` variables).
    pub fn from_args() -> Cli {
        Cli::parse()
    }

    /// Runs the subcommand; the process's exit code.
    pub fn execute(&self) -> ExitCode {
        exit_code(self.dispatch())
    }

    fn dispatch(&self) -> anyhow::Result<()> {
        match &self.command {
            // The stdout sink writes from many tasks: stdout must not stay locked here.
            Command::Run(flags) => self
                .config
                .source_config(flags)
                .and_then(|(config, source)| serve(source, config)),
            Command::Release(args) => release::release(args),
            Command::Health(args) => health::health(args, &self.config),
            Command::Blocks(args) => with_stdout(|out| blocks::blocks(args, &self.config, out)),
            Command::Scan(args) => with_stdout(|out| {
                let config = self.config.engine_config()?;
                scan::scan(args, config, out).map(|_| ())
            }),
            Command::Classify(args) => with_stdout(|out| classify::classify(args, out)),
            Command::Demo(args) => with_stdout(|out| {
                let mut config = self.config.engine_config()?;
                config.keep_totals = true;
                demo::demo(args, config, out).map(|_| ())
            }),
        }
    }
}

fn exit_code(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sshwarden: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs `f` with a buffered, locked stdout and flushes it.
fn with_stdout(f: impl FnOnce(&mut dyn Write) -> anyhow::Result<()>) -> anyhow::Result<()> {
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = f(&mut out);
    let flushed = out.flush();
    result.and(flushed.map_err(Into::into))
}

/// `sshwarden run`: the source's service on a multi-thread runtime until
/// SIGTERM/SIGINT. Logs go to stderr as JSON lines (stdout carries the
/// stdout sink's commands).
fn serve(
    source: config::SourceSettings,
    config: sshwarden_pipeline::EngineConfig,
) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .json()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("SSHWARDEN_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(crate::service::serve(source, config))
}

/// `sshwarden classify big.log | head` is not an error.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        c.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
            || c.downcast_ref::<serde_json::Error>()
                .and_then(|j| j.io_error_kind())
                .is_some_and(|k| k == std::io::ErrorKind::BrokenPipe)
    })
}
