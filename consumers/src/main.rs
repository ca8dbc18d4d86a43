//! The `sshwarden` binary: subcommands over the pipeline core.

mod classify_cmd;
mod config;
mod input;
mod scan;

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
    /// Analyse auth logs, journal exports or captured subscription payloads offline.
    Scan(scan::ScanArgs),
    /// Print one JSON verdict per input line.
    Classify(classify_cmd::ClassifyArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let stdout = std::io::stdout();
    let mut out = BufWriter::new(stdout.lock());
    let result = match &cli.command {
        Command::Scan(args) => cli
            .config
            .engine_config()
            .and_then(|c| scan::run(args, c, &mut out).map(|_| ())),
        Command::Classify(args) => classify_cmd::run(args, &mut out),
    };
    let flushed = out.flush();
    match result.and(flushed.map_err(Into::into)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if is_broken_pipe(&e) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("sshwarden: error: {e:#}");
            ExitCode::FAILURE
        }
    }
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
