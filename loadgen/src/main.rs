//! `sshwarden-loadgen`: writes a simulated fleet's traffic, with its ground
//! truth, as an auth.log, as captured subscription payloads, or as JSON truth.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sshwarden_loadgen::{encode_records, Fleet, FleetConfig, RecordOptions, Scenario};

/// Synthetic sshd traffic of an EC2 fleet under attack, with ground truth.
#[derive(Parser)]
#[command(name = "sshwarden-loadgen", version, about)]
struct Cli {
    #[command(flatten)]
    fleet: FleetArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(clap::Args)]
struct FleetArgs {
    /// Instances in the fleet.
    #[arg(long, global = true, default_value_t = 20)]
    instances: usize,
    /// Simulated minutes of traffic.
    #[arg(long, global = true, default_value_t = 10.0)]
    minutes: f64,
    /// Seed: the same seed gives the same traffic.
    #[arg(long, global = true, default_value_t = 1)]
    seed: u64,
    /// Event time of the start, RFC 3339 [default: 2023-11-14T22:13:20Z].
    #[arg(long, global = true)]
    start: Option<String>,
    /// Benign lines per instance per minute.
    #[arg(long, global = true, default_value_t = 30.0)]
    benign_per_min: f64,
    /// Background scanner probes per instance per minute.
    #[arg(long, global = true, default_value_t = 1.0)]
    scans_per_min: f64,
    /// No attack scenarios (benign traffic and scanning only).
    #[arg(long, global = true)]
    no_attacks: bool,
    /// Write here instead of stdout.
    #[arg(long, short, global = true)]
    out: Option<PathBuf>,
}

#[derive(Subcommand)]
enum Command {
    /// Raw syslog lines, one instance's host name per line.
    AuthLog {
        /// Stop after this many lines.
        #[arg(long)]
        lines: Option<usize>,
    },
    /// CloudWatch subscription payloads as JSON, one envelope per line.
    Payloads {
        #[arg(long, default_value_t = 100)]
        events_per_record: usize,
    },
    /// The ground truth: expected detections, decoys, compromises.
    Truth,
    /// Writes the traffic to a Kafka topic, keyed by instance id.
    #[cfg(feature = "kafka")]
    Kafka(sshwarden_loadgen::kafka::KafkaArgs),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let f = &cli.fleet;
    let duration_ms = (f.minutes * 60_000.0) as i64;
    let mut config = FleetConfig {
        instances: f.instances,
        seed: f.seed,
        duration_ms,
        benign_events_per_instance_per_min: f.benign_per_min,
        scan_probes_per_instance_per_min: f.scans_per_min,
        scenarios: if f.no_attacks {
            Vec::new()
        } else {
            Scenario::default_mix(f.instances, duration_ms)
        },
        ..FleetConfig::default()
    };
    if let Some(start) = &f.start {
        config.start_ms = sshwarden_pipeline::time::parse_rfc3339_ms(start)
            .with_context(|| format!("--start {start:?} is not an RFC 3339 time"))?;
    }
    let fleet = Fleet::generate(&config).map_err(|e| anyhow::anyhow!("{}", e.0))?;
    let mut out: Box<dyn Write> = match &f.out {
        Some(p) => Box::new(BufWriter::new(
            File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    };
    match cli.command {
        Command::AuthLog { lines } => {
            let limit = lines.unwrap_or(usize::MAX);
            for e in fleet.events().iter().take(limit) {
                out.write_all(e.line.as_bytes())?;
                out.write_all(b"\n")?;
            }
        }
        Command::Payloads { events_per_record } => {
            let opts = RecordOptions {
                events_per_record,
                keep_json: true,
                compression: 1,
                ..RecordOptions::default()
            };
            for r in encode_records(fleet.events(), &opts) {
                out.write_all(&r.json)?;
                out.write_all(b"\n")?;
            }
        }
        #[cfg(feature = "kafka")]
        Command::Kafka(args) => {
            let summary = sshwarden_loadgen::kafka::run(&fleet, &args)?;
            writeln!(out, "{summary}")?;
        }
        Command::Truth => {
            serde_json::to_writer_pretty(&mut out, fleet.ground_truth())?;
            out.write_all(b"\n")?;
        }
    }
    out.flush()?;
    Ok(())
}
