//! The fleet stage on a simulated exposed fleet (`loadgen day`: background
//! scanners, benign mistakes, labelled incidents), split over shards by log
//! stream as Kinesis splits it: how many bytes of partials stage one sends
//! for the JSON it reads, and what the incidents judge says of the shards
//! alone against the shards with the fleet stage.
//!
//! `cargo run --release -p sshwarden-benches --example fleet_traffic -- [instances] [hours] [shards] [seed]`
//! (defaults 200, 6, 8, 1).

use sshwarden_loadgen::incident_score::JudgedCommand;
use sshwarden_loadgen::{encode_records, Day, DayConfig, IncidentJudge, RecordOptions};
use sshwarden_pipeline::embedded::EmbeddedStages;
use sshwarden_pipeline::policy::Decision;
use sshwarden_pipeline::{EngineConfig, RecordInput};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let instances: usize = arg(&args, 0, 200);
    let hours: i64 = arg(&args, 1, 6);
    let shards: usize = arg(&args, 2, 8);
    let seed: u64 = arg(&args, 3, 1);
    let duration_ms = hours * 3_600_000;
    let config = DayConfig {
        duration_ms,
        incidents: DayConfig::default_incidents(instances, seed, duration_ms),
        ..DayConfig::new(instances, seed)
    };
    let day = match Day::generate(&config) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("day: {}", e.0);
            std::process::exit(2);
        }
    };
    let records = encode_records(day.fleet.events(), &RecordOptions::default());
    let json_bytes: usize = records.iter().map(|r| r.json_len).sum();
    // The same two stages `demo` and `scan --shards` run.
    let mut stages = EmbeddedStages::new(EngineConfig::default(), shards).expect("default config");
    stages.keep_fleet_decisions_apart();
    let mut shard_out = Vec::new();
    for (position, r) in (1u64..).zip(&records) {
        let input = RecordInput {
            data: &r.data,
            position,
            ..RecordInput::default()
        };
        let _ = stages.process_record(&r.log_stream, &input, &mut shard_out);
    }
    stages.finish(&mut shard_out);
    let fleet_out = stages.take_fleet_decisions();
    let summary = stages.fleet_summary();
    let judged = |d: &[Decision]| -> Vec<JudgedCommand> {
        d.iter()
            .filter_map(|d| match d {
                Decision::Command(c) => serde_json::to_value(&**c)
                    .ok()
                    .and_then(|v| JudgedCommand::from_json(&v)),
                Decision::Suppressed { .. } => None,
            })
            .collect()
    };
    let shard_only = judged(&shard_out);
    let mut both = shard_only.clone();
    both.extend(judged(&fleet_out));
    let judge = IncidentJudge::new(&day.incidents);
    println!(
        "{instances} instances, {hours} h, {shards} shards: {} records, {:.1} MB of JSON; \
         {} partials, {:.1} kB ({:.2}% of the JSON); fleet stage: {:?}",
        records.len(),
        json_bytes as f64 / 1e6,
        summary.partials,
        summary.partial_bytes as f64 / 1e3,
        100.0 * summary.partial_bytes as f64 / json_bytes.max(1) as f64,
        summary.stage
    );
    let mut stdout = std::io::stdout();
    println!("\nshards alone ({} commands):", shard_only.len());
    let _ = judge.judge(&shard_only, 0).write_text(&mut stdout);
    println!("\nshards and the fleet stage ({} commands):", both.len());
    let _ = judge.judge(&both, 0).write_text(&mut stdout);
}
