//! `sshwarden demo`: the whole pipeline on a simulated fleet under attack,
//! in one process, no cloud account or emulator needed. A producer thread
//! plays the load generator's subscription records in event-time order,
//! compressed into a few seconds of wall time, through a bounded in-memory
//! stream; the engine consumes them as a shard reader would; commands go to
//! the dry-run sink (stdout). It ends with a report: achieved rate,
//! record-to-command latency, and the commands judged by incident (was
//! each attack noticed, with the response a careful operator would choose;
//! were bystanders spared), by loadgen's judge, which knows nothing of
//! sshwarden's rules.

use std::io::Write;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::Context;
use hdrhistogram::Histogram;
use serde::Serialize;
use sshwarden_loadgen::incident_score::{IncidentJudge, IncidentReport, JudgedCommand};
use sshwarden_loadgen::{encode_records, Fleet, FleetConfig, RecordOptions, Scenario};
use sshwarden_pipeline::policy::Decision;
use sshwarden_pipeline::{EngineConfig, RecordInput};

use sshwarden_pipeline::embedded::{EmbeddedStages, FleetSummary};

use crate::clock::now_ms;

#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Instances in the simulated fleet.
    #[arg(long, default_value_t = 20)]
    pub instances: usize,
    /// Minutes of fleet traffic to simulate.
    #[arg(long, default_value_t = 10.0)]
    pub minutes: f64,
    /// Wall-clock seconds to play them in.
    #[arg(long, default_value_t = 10.0)]
    pub seconds: f64,
    /// Seed of the simulation.
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    /// Shard engines the fleet is split over (as Kinesis splits it, by
    /// instance), with the fleet stage across them; 1 runs one engine.
    #[arg(long, default_value_t = 4)]
    pub shards: usize,
    /// Print commands and the report as JSON lines.
    #[arg(long)]
    pub json: bool,
}

struct Sent {
    /// The log stream: which shard the record goes to.
    key: String,
    data: Vec<u8>,
    sent_at: Instant,
}

#[derive(Debug, Serialize)]
pub struct DemoReport {
    pub instances: usize,
    pub simulated_minutes: f64,
    pub wall_seconds: f64,
    pub records: u64,
    pub events: u64,
    pub json_mb: f64,
    pub events_per_second: f64,
    pub commands: u64,
    pub suppressed: u64,
    /// Record handed to the stream → command at the sink, microseconds.
    pub latency_us: Latency,
    /// The commands judged by incident.
    pub incidents: IncidentReport,
    pub decoys_counted: usize,
    pub fleet: FleetSummary,
}

#[derive(Debug, Serialize)]
pub struct Latency {
    pub p50: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
}

/// The commands so far, printed as they come and kept for the judge.
#[derive(Default)]
struct Tally {
    commands: u64,
    suppressed: u64,
    judged: Vec<JudgedCommand>,
}

impl Tally {
    fn take(&mut self, d: Decision, json: bool, out: &mut dyn Write) -> anyhow::Result<()> {
        match d {
            Decision::Command(c) => {
                self.commands += 1;
                let value = serde_json::to_value(&*c)?;
                self.judged.extend(JudgedCommand::from_json(&value));
                if json {
                    serde_json::to_writer(&mut *out, &c)?;
                    writeln!(out)?;
                } else {
                    writeln!(out, "  {}", c.summary())?;
                }
            }
            Decision::Suppressed { .. } => self.suppressed += 1,
        }
        Ok(())
    }
}

pub fn demo(
    args: &DemoArgs,
    config: EngineConfig,
    out: &mut dyn Write,
) -> anyhow::Result<DemoReport> {
    anyhow::ensure!(args.instances > 0, "--instances must be at least 1");
    anyhow::ensure!(
        args.minutes > 0.0 && args.minutes <= 24.0 * 60.0,
        "--minutes must be in (0, 1440]"
    );
    anyhow::ensure!(
        args.seconds > 0.0 && args.seconds <= 3600.0,
        "--seconds must be in (0, 3600]"
    );
    let duration_ms = (args.minutes * 60_000.0) as i64;
    let fleet_config = FleetConfig {
        instances: args.instances,
        seed: args.seed,
        start_ms: now_ms() - duration_ms,
        duration_ms,
        scenarios: Scenario::default_mix(args.instances, duration_ms),
        ..FleetConfig::default()
    };
    let fleet = Fleet::generate(&fleet_config).map_err(|e| anyhow::anyhow!("{}", e.0))?;
    let truth = fleet.incident_truth();
    let records = encode_records(fleet.events(), &RecordOptions::default());
    let json_bytes: usize = records.iter().map(|r| r.json_len).sum();
    let events: usize = records.iter().map(|r| r.events).sum();
    if !args.json {
        writeln!(
            out,
            "sshwarden demo: {} instances, {:.0} simulated minutes ({} records, {} events) played in {:.0} s; \
             commands below go to the dry-run sink",
            args.instances,
            args.minutes,
            records.len(),
            events,
            args.seconds
        )?;
    }

    // Event time is compressed into wall time by this factor.
    let speedup = args.minutes * 60.0 / args.seconds;
    let first_ms = records.iter().map(|r| r.last_time_ms).min().unwrap_or(0);
    let (tx, rx) = mpsc::sync_channel::<Sent>(256);
    let producer = std::thread::spawn(move || {
        let start = Instant::now();
        for r in records {
            let key = r.log_stream;
            let due = Duration::from_secs_f64(
                ((r.last_time_ms - first_ms).max(0) as f64 / 1000.0) / speedup,
            );
            if let Some(wait) = due.checked_sub(start.elapsed()) {
                std::thread::sleep(wait);
            }
            if tx
                .send(Sent {
                    key,
                    data: r.data,
                    sent_at: Instant::now(),
                })
                .is_err()
            {
                return;
            }
        }
    });

    let mut stages = EmbeddedStages::new(config, args.shards)?;
    let mut latency = Histogram::<u64>::new_with_bounds(1, 60_000_000, 3).context("histogram")?;
    let mut decisions = Vec::new();
    let mut tally = Tally::default();
    let mut n_records = 0u64;
    let started = Instant::now();
    for sent in rx {
        n_records += 1;
        decisions.clear();
        let record = RecordInput {
            data: &sent.data,
            position: n_records,
            ..RecordInput::default()
        };
        if let Err(e) = stages.process_record(&sent.key, &record, &mut decisions) {
            eprintln!("sshwarden demo: record {n_records} skipped: {e}");
        }
        for d in decisions.drain(..) {
            let us = sent.sent_at.elapsed().as_micros().clamp(1, 60_000_000) as u64;
            latency.record(us).context("latency out of range")?;
            tally.take(d, args.json, out)?;
        }
    }
    let wall = started.elapsed().as_secs_f64();
    let _ = producer.join();
    decisions.clear();
    stages.finish(&mut decisions);
    for d in decisions.drain(..) {
        tally.take(d, args.json, out)?;
    }
    let Tally {
        commands,
        suppressed,
        judged,
    } = tally;

    let decoys = &fleet.ground_truth().decoy_addresses;
    let decoys_counted = stages
        .totals()
        .map(|t| {
            t.sources
                .keys()
                .filter(|n| {
                    decoys
                        .iter()
                        .any(|d| n.contains(&sshwarden_pipeline::peer::Peer::Ip(*d)))
                })
                .count()
        })
        .unwrap_or(0);
    let incidents = IncidentJudge::new(&truth).judge(&judged, 0);
    let report = DemoReport {
        instances: args.instances,
        simulated_minutes: args.minutes,
        wall_seconds: wall,
        records: n_records,
        events: events as u64,
        json_mb: json_bytes as f64 / 1e6,
        events_per_second: events as f64 / wall.max(1e-9),
        commands,
        suppressed,
        latency_us: Latency {
            p50: latency.value_at_quantile(0.5),
            p99: latency.value_at_quantile(0.99),
            p999: latency.value_at_quantile(0.999),
            max: latency.max(),
        },
        incidents,
        decoys_counted,
        fleet: stages.fleet_summary(),
    };
    if args.json {
        serde_json::to_writer(&mut *out, &report)?;
        writeln!(out)?;
    } else {
        print_report(&report, out)?;
    }
    Ok(report)
}

fn print_report(r: &DemoReport, out: &mut dyn Write) -> anyhow::Result<()> {
    writeln!(out)?;
    writeln!(
        out,
        "played {} records ({} events, {:.1} MB of JSON) in {:.1} s: {:.0} events/s (paced by the simulation, not a throughput test)",
        r.records, r.events, r.json_mb, r.wall_seconds, r.events_per_second
    )?;
    writeln!(
        out,
        "record → command latency: p50 {} µs, p99 {} µs, p99.9 {} µs, max {} µs",
        r.latency_us.p50, r.latency_us.p99, r.latency_us.p999, r.latency_us.max
    )?;
    writeln!(
        out,
        "{} commands, {} more suppressed by the cooldown; judged by incident:",
        r.commands, r.suppressed
    )?;
    r.incidents.write_text(out)?;
    writeln!(
        out,
        "addresses injected in usernames that were counted: {}",
        r.decoys_counted
    )?;
    let f = &r.fleet;
    if f.shards > 1 {
        writeln!(
            out,
            "fleet stage over {} shards: {} partials, {:.1} kB ({:.2}% of the JSON), {} fleet rules fired, {} left to the shard that saw them whole",
            f.shards,
            f.partials,
            f.partial_bytes as f64 / 1e3,
            100.0 * f.partial_bytes as f64 / (r.json_mb * 1e6).max(1.0),
            f.stage.fired,
            f.stage.left_to_shard
        )?;
    }
    Ok(())
}
