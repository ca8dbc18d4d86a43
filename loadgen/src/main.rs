//! `sshwarden-loadgen`: writes a simulated fleet's traffic, with its ground
//! truth, as an auth.log, as captured subscription payloads, or as JSON
//! truth; puts it into Kinesis or CloudWatch Logs (feature `aws`); scores a
//! detector's commands against the truth (`score`).

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sshwarden_loadgen::{
    encode_records, CommandScorer, Fleet, FleetConfig, GroundTruth, RecordOptions, Scenario,
    WrittenLog,
};

#[cfg(feature = "aws")]
mod write_cmd;

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
    /// Event time of the start, RFC 3339 [default: 2023-11-14T22:13:20Z;
    /// for `kinesis` and `logs`: so that the traffic ends now, or with
    /// `--live` starts now].
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
    /// Put the traffic into a Kinesis stream as subscription records
    /// (PutRecords; partition key = instance id), as CloudWatch's
    /// subscription filter would. Endpoints and credentials come from the
    /// AWS SDK's chain (AWS_ENDPOINT_URL_KINESIS, AWS_ENDPOINT_URL, ...).
    #[cfg(feature = "aws")]
    Kinesis(write_cmd::KinesisArgs),
    /// Put the traffic into a CloudWatch Logs group (PutLogEvents, one log
    /// stream per instance id), optionally subscribed to a Kinesis stream.
    #[cfg(feature = "aws")]
    Logs(write_cmd::LogsArgs),
    /// Score a detector's commands (`sshwarden run --sink stdout` output, one
    /// JSON per line) against a ground truth: precision and recall per
    /// scenario, and detection latency. Lines are stamped as they are read.
    Score(ScoreArgs),
}

#[derive(clap::Args)]
struct ScoreArgs {
    /// The ground truth (`truth` or a writer's `--truth-out`); waited for
    /// (up to --timeout-secs) if it does not exist yet.
    #[arg(long)]
    truth: PathBuf,
    /// The commands, `-` for stdin (read live).
    #[arg(long, default_value = "-")]
    commands: PathBuf,
    /// A writer's `--written-log`: when each crossing event was put, for the
    /// write → command latency.
    #[arg(long)]
    written_log: Option<PathBuf>,
    /// Stop reading after this long in any case.
    #[arg(long, default_value_t = 600.0)]
    timeout_secs: f64,
    /// Stop once every expected detection was seen, after --grace-secs more
    /// (to catch repeats and false positives that follow).
    #[arg(long)]
    until_complete: bool,
    #[arg(long, default_value_t = 2.0)]
    grace_secs: f64,
    /// The report as JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn fleet_config(
    f: &FleetArgs,
    default_start_ms: Option<i64>,
) -> anyhow::Result<FleetConfig> {
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
    if let Some(start) = default_start_ms {
        config.start_ms = start;
    }
    if let Some(start) = &f.start {
        config.start_ms = sshwarden_pipeline::time::parse_rfc3339_ms(start)
            .with_context(|| format!("--start {start:?} is not an RFC 3339 time"))?;
    }
    Ok(config)
}

pub(crate) fn output(f: &FleetArgs) -> anyhow::Result<Box<dyn Write>> {
    Ok(match &f.out {
        Some(p) => Box::new(BufWriter::new(
            File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
        )),
        None => Box::new(BufWriter::new(std::io::stdout().lock())),
    })
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let f = &cli.fleet;
    let command = match cli.command {
        #[cfg(feature = "aws")]
        Command::Kinesis(args) => return write_cmd::kinesis(f, &args),
        #[cfg(feature = "aws")]
        Command::Logs(args) => return write_cmd::logs(f, &args),
        Command::Score(args) => return score(f, &args),
        other => other,
    };
    let config = fleet_config(f, None)?;
    let fleet = Fleet::generate(&config).map_err(|e| anyhow::anyhow!("{}", e.0))?;
    let mut out = output(f)?;
    match command {
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
        _ => unreachable!("handled above"),
    }
    out.flush()?;
    Ok(())
}

fn unix_us() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

/// Reads the commands live on a thread (stamping each line as it arrives),
/// until EOF, the timeout, or completeness plus grace; then scores them.
fn score(f: &FleetArgs, args: &ScoreArgs) -> anyhow::Result<()> {
    use std::io::BufRead;
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    let started = Instant::now();
    let deadline = started + Duration::from_secs_f64(args.timeout_secs.clamp(0.0, 7.0 * 86_400.0));
    let (tx, rx) = mpsc::channel::<(String, i64)>();
    let input: Box<dyn BufRead + Send> = if args.commands.as_os_str() == "-" {
        Box::new(std::io::BufReader::new(std::io::stdin()))
    } else {
        Box::new(std::io::BufReader::new(
            File::open(&args.commands)
                .with_context(|| format!("cannot open {}", args.commands.display()))?,
        ))
    };
    std::thread::spawn(move || {
        for line in input.lines() {
            let Ok(line) = line else { break };
            if tx.send((line, unix_us())).is_err() {
                break;
            }
        }
    });
    let load_truth = |path: &PathBuf| -> anyhow::Result<Option<GroundTruth>> {
        match std::fs::read_to_string(path) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .with_context(|| format!("{} is not a ground truth", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    };
    let mut truth: Option<GroundTruth> = None;
    let mut scorer = CommandScorer::new();
    let mut stop_at = deadline;
    loop {
        if truth.is_none() {
            truth = load_truth(&args.truth)?;
        }
        if args.until_complete && stop_at == deadline {
            if let Some(t) = &truth {
                if scorer.complete(t) {
                    stop_at = (Instant::now() + Duration::from_secs_f64(args.grace_secs.max(0.0)))
                        .min(deadline);
                }
            }
        }
        let now = Instant::now();
        if now >= stop_at {
            break;
        }
        match rx.recv_timeout((stop_at - now).min(Duration::from_millis(200))) {
            Ok((line, read_us)) => {
                scorer.observe_line(&line, read_us);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
        }
    }
    let truth = match truth {
        Some(t) => t,
        None => load_truth(&args.truth)?
            .with_context(|| format!("the truth {} never appeared", args.truth.display()))?,
    };
    let written = match &args.written_log {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            let (log, bad) = WrittenLog::parse(&text);
            if bad > 0 {
                eprintln!(
                    "sshwarden-loadgen score: {bad} unreadable lines in {}",
                    p.display()
                );
            }
            Some(log)
        }
        None => None,
    };
    let report = scorer.report(&truth, written.as_ref());
    let mut out = output(f)?;
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        report.write_text(&mut out)?;
    }
    out.flush()?;
    Ok(())
}
