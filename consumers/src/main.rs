//! The `sshwarden` binary: subcommands over the pipeline core.

mod blast_radius;
mod classify_cmd;
mod config;
mod demo;
mod input;
mod metrics;
mod release;
mod run;
mod scan;
mod sink;

use std::io::{BufWriter, Write};
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// SSH intrusion detection and response for EC2 fleets.
#[derive(Parser)]
#[command(name = "sshwarden", version, about)]
struct Cli {
    #[command(flatten)]
    config: config::ConfigArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// The whole pipeline on a simulated fleet under attack, no cloud needed.
    Demo(demo::DemoArgs),
    /// Analyse auth logs, journal exports or captured subscription payloads offline.
    Scan(scan::ScanArgs),
    /// Print one JSON verdict per input line.
    Classify(classify_cmd::ClassifyArgs),
    /// The service: consume a Kinesis stream with shard leases in DynamoDB.
    Run(Box<config::RunFlags>),
    /// Release a quarantined instance: start the release state machine, or restore directly.
    Release(release::ReleaseArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        // The stdout sink writes from many tasks: stdout must not stay locked here.
        Command::Run(flags) => cli
            .config
            .run_config(flags)
            .and_then(|(config, args)| run_service(args, config)),
        Command::Release(args) => release::run(args),
        Command::Scan(args) => with_stdout(|out| {
            let config = cli.config.engine_config()?;
            scan::run(args, config, out).map(|_| ())
        }),
        Command::Classify(args) => with_stdout(|out| classify_cmd::run(args, out)),
        Command::Demo(args) => with_stdout(|out| {
            let mut config = cli.config.engine_config()?;
            config.keep_totals = true;
            demo::run(args, config, out).map(|_| ())
        }),
    };
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

/// An AWS SDK error with its whole chain of causes, for anyhow.
pub(crate) fn aws_error<E: std::error::Error + Send + Sync + 'static>(e: E) -> anyhow::Error {
    anyhow::anyhow!(
        "{}",
        aws_smithy_types::error::display::DisplayErrorContext(&e)
    )
}

/// Logs go to stderr as JSON lines (stdout carries the stdout sink's commands).
fn run_service(args: run::RunArgs, config: sshwarden_pipeline::EngineConfig) -> anyhow::Result<()> {
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
    runtime.block_on(run::run(args, config))
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
