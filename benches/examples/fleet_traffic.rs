//! The fleet stage on a simulated exposed fleet (`loadgen day`: background
//! scanners, benign mistakes, labelled incidents), split over shards by log
//! stream as Kinesis splits it: how many bytes of partials stage one sends
//! for the JSON it reads, and what the incidents judge says of the shards
//! alone against the shards with the fleet stage.
//!
//! `cargo run --release -p sshwarden-benches --example fleet_traffic -- [instances] [hours] [shards] [seed]`
//! (defaults 200, 6, 8, 1).

use std::hash::BuildHasher;

use sshwarden_loadgen::incident_score::JudgedCommand;
use sshwarden_loadgen::{encode_records, Day, DayConfig, IncidentJudge, RecordOptions};
use sshwarden_pipeline::fleet::{FleetConfig, FleetStage};
use sshwarden_pipeline::partial::{Partial, PartialConfig};
use sshwarden_pipeline::policy::Decision;
use sshwarden_pipeline::{Engine, EngineConfig, RecordInput};

fn arg<T: std::str::FromStr>(args: &[String], i: usize, default: T) -> T {
    args.get(i).and_then(|a| a.parse().ok()).unwrap_or(default)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let instances: usize = arg(&args, 0, 200);
    let hours: i64 = arg(&args, 1, 6);
    let shards: usize = arg(&args, 2, 8).max(1);
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
    let route = foldhash::fast::FixedState::with_seed(7);
    let mut engines: Vec<Engine> = (0..shards)
        .map(|i| {
            Engine::new(EngineConfig {
                partials: Some(PartialConfig {
                    shard: format!("shard-{i}"),
                    ..PartialConfig::default()
                }),
                ..EngineConfig::default()
            })
            .expect("default config")
        })
        .collect();
    let mut stage = FleetStage::new(FleetConfig::default()).expect("default fleet config");
    let (mut shard_out, mut fleet_out, mut partials) = (Vec::new(), Vec::new(), Vec::new());
    let (mut n_partials, mut partial_bytes, mut position) = (0u64, 0usize, 0u64);
    let mut pump = |engine: &mut Engine, fleet_out: &mut Vec<Decision>, position: &mut u64| {
        engine.drain_partials(&mut partials);
        for p in partials.drain(..) {
            let bytes = p.encode();
            n_partials += 1;
            partial_bytes += bytes.len();
            *position += 1;
            if let Ok(p) = Partial::decode(&bytes) {
                stage.ingest(p, *position, fleet_out);
            }
        }
    };
    for r in &records {
        position += 1;
        let shard = (route.hash_one(&r.log_stream) % shards as u64) as usize;
        let input = RecordInput {
            data: &r.data,
            position,
            ..RecordInput::default()
        };
        let _ = engines[shard].process_record(&input, &mut shard_out);
        pump(&mut engines[shard], &mut fleet_out, &mut position);
    }
    for e in &mut engines {
        e.finish();
        pump(e, &mut fleet_out, &mut position);
    }
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
         {n_partials} partials, {:.1} kB ({:.2}% of the JSON); fleet stage: {:?}",
        records.len(),
        json_bytes as f64 / 1e6,
        partial_bytes as f64 / 1e3,
        100.0 * partial_bytes as f64 / json_bytes.max(1) as f64,
        stage.stats()
    );
    let mut stdout = std::io::stdout();
    println!("\nshards alone ({} commands):", shard_only.len());
    let _ = judge.judge(&shard_only, 0).write_text(&mut stdout);
    println!("\nshards and the fleet stage ({} commands):", both.len());
    let _ = judge.judge(&both, 0).write_text(&mut stdout);
}
