//! `sshwarden-loadgen`: writes a simulated fleet's traffic, with its ground
//! truth, as an auth.log, as captured subscription payloads, or as JSON
//! truth; puts it into Kinesis or CloudWatch Logs (feature `aws`); scores a
//! detector's commands against the rule-level truth (`score`). `day` writes
//! a realistic day (auth.log and incidents.json) and `score-incidents`
//! judges a detector's commands by its incidents.

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::PathBuf;

use anyhow::Context;
use clap::{Parser, Subcommand};
use sshwarden_loadgen::incident_score::read_commands;
use sshwarden_loadgen::{
    encode_records, CommandScorer, Day, DayConfig, Fleet, FleetConfig, GroundTruth, IncidentJudge,
    IncidentTruth, RecordOptions, Scenario, WrittenLog,
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
    /// A realistic day of the fleet (`--instances`, `--seed`, `--start`
    /// [default here: 2023-11-14T00:00:00Z]; not `--minutes` nor the rates
    /// above): background scanners, benign
    /// mistakes and labelled incidents, written as `auth.log` (syslog host
    /// = instance id, lines in the order they were written) and
    /// `incidents.json` (the incident-level truth) in --out-dir.
    Day(DayArgs),
    /// Judge a detector's commands (`sshwarden scan --json` output, or one
    /// command JSON per line) by the incidents of a `day`: per incident
    /// kind, detected or missed, time to detect, the actions taken; false
    /// responses per instance-day.
    ScoreIncidents(ScoreIncidentsArgs),
}

#[derive(clap::Args)]
struct DayArgs {
    /// Where to write auth.log and incidents.json (created if missing).
    #[arg(long)]
    out_dir: PathBuf,
    /// Simulated hours.
    #[arg(long, default_value_t = 24.0)]
    hours: f64,
    /// Scanner sessions per instance per hour, on average.
    #[arg(long, default_value_t = 32.0)]
    scanner_sessions_per_hour: f64,
    /// Connections per scanner session: 1 to this many.
    #[arg(long, default_value_t = 4)]
    max_connections_per_session: u32,
    /// Scanner addresses, fleet-wide.
    #[arg(long, default_value_t = 800)]
    scanner_addresses: usize,
    /// Benign lines per instance per minute.
    #[arg(long, default_value_t = 2.0)]
    benign_lines_per_min: f64,
    /// No incidents (background and benign mistakes only).
    #[arg(long)]
    no_incidents: bool,
    /// The whole day configuration as JSON (`DayConfig`); overrides the
    /// options above except --out-dir.
    #[arg(long)]
    config: Option<PathBuf>,
}

#[derive(clap::Args)]
struct ScoreIncidentsArgs {
    /// The incidents file a `day` wrote.
    #[arg(long)]
    incidents: PathBuf,
    /// The commands, `-` for stdin.
    #[arg(long, default_value = "-")]
    commands: PathBuf,
    /// How far outside an incident's span a command may be dated and still
    /// count for it.
    #[arg(long, default_value_t = 600.0)]
    slack_secs: f64,
    /// The report as JSON.
    #[arg(long)]
    json: bool,
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
        Command::Day(args) => return day(f, &args),
        Command::ScoreIncidents(args) => return score_incidents(f, &args),
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

fn day(f: &FleetArgs, args: &DayArgs) -> anyhow::Result<()> {
    let config = match &args.config {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            serde_json::from_str(&text)
                .with_context(|| format!("{} is not a day configuration", p.display()))?
        }
        None => {
            let duration_ms = (args.hours * 3_600_000.0) as i64;
            let mut c = DayConfig::new(f.instances, f.seed);
            c.duration_ms = duration_ms;
            c.background.sessions_per_instance_per_hour = args.scanner_sessions_per_hour;
            c.background.max_connections_per_session = args.max_connections_per_session;
            c.background.scanner_addresses = args.scanner_addresses;
            c.benign_events_per_instance_per_min = args.benign_lines_per_min;
            c.incidents = if args.no_incidents {
                Vec::new()
            } else {
                DayConfig::default_incidents(f.instances, f.seed, duration_ms)
            };
            if let Some(start) = &f.start {
                c.start_ms = sshwarden_pipeline::time::parse_rfc3339_ms(start)
                    .with_context(|| format!("--start {start:?} is not an RFC 3339 time"))?;
            }
            c
        }
    };
    let day = Day::generate(&config).map_err(|e| anyhow::anyhow!("{}", e.0))?;
    std::fs::create_dir_all(&args.out_dir)
        .with_context(|| format!("cannot create {}", args.out_dir.display()))?;
    let create = |name: &str| -> anyhow::Result<BufWriter<File>> {
        let p = args.out_dir.join(name);
        Ok(BufWriter::new(File::create(&p).with_context(|| {
            format!("cannot create {}", p.display())
        })?))
    };
    let mut log = create("auth.log")?;
    for e in day.fleet.events() {
        log.write_all(e.line.as_bytes())?;
        log.write_all(b"\n")?;
    }
    log.flush()?;
    let mut truth = create("incidents.json")?;
    serde_json::to_writer_pretty(&mut truth, &day.incidents)?;
    truth.write_all(b"\n")?;
    truth.flush()?;
    eprintln!(
        "sshwarden-loadgen day: {} lines of {} instances, {} incidents in {}",
        day.fleet.events().len(),
        config.instances,
        day.incidents.incidents.len(),
        args.out_dir.display()
    );
    Ok(())
}

fn score_incidents(f: &FleetArgs, args: &ScoreIncidentsArgs) -> anyhow::Result<()> {
    use std::io::Read;
    let text = std::fs::read_to_string(&args.incidents)
        .with_context(|| format!("cannot read {}", args.incidents.display()))?;
    let truth: IncidentTruth = serde_json::from_str(&text)
        .with_context(|| format!("{} is not an incidents file", args.incidents.display()))?;
    let mut commands = String::new();
    if args.commands.as_os_str() == "-" {
        std::io::stdin().read_to_string(&mut commands)?;
    } else {
        File::open(&args.commands)
            .and_then(|mut file| file.read_to_string(&mut commands))
            .with_context(|| format!("cannot read {}", args.commands.display()))?;
    }
    let (commands, unreadable) = read_commands(&commands);
    let mut judge = IncidentJudge::new(&truth);
    judge.slack_ms = (args.slack_secs.clamp(0.0, 30.0 * 86_400.0) * 1000.0) as i64;
    let report = judge.judge(&commands, unreadable);
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
