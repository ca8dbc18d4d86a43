//! Runs the whole path (`Engine::process_record`) over the bench corpus a few
//! times and prints MB/s of uncompressed JSON: a plain driver for profilers
//! (`perf record`, `valgrind --tool=callgrind
//! --toggle-collect='*Engine::process_record*'`), where criterion's
//! statistics only get in the way.
//!
//! `cargo run --release -p sshwarden-benches --example whole_path -- [passes] [minutes] [policy]`
//! (policy: `graduated`, the default, or `seed`).

use std::time::Instant;

use sshwarden_benches::{bench_fleet, corpus};
use sshwarden_pipeline::policy::PolicyConfig;
use sshwarden_pipeline::rules::PolicyName;
use sshwarden_pipeline::{Engine, EngineConfig, RecordInput};

fn main() {
    let mut args = std::env::args().skip(1);
    let passes: usize = args.next().and_then(|a| a.parse().ok()).unwrap_or(5);
    let minutes: Option<i64> = args.next().and_then(|a| a.parse().ok());
    let policy = match args.next() {
        None => PolicyName::default(),
        Some(name) => match PolicyName::parse(&name) {
            Some(p) => p,
            None => {
                eprintln!("policy {name:?} is not graduated or seed");
                std::process::exit(2);
            }
        },
    };
    let mut config = bench_fleet();
    if let Some(m) = minutes {
        config.duration_ms = m * 60_000;
    }
    let c = corpus(&config);
    eprintln!(
        "{} records, {} events, {:.1} MB JSON, policy {}",
        c.records.len(),
        c.events,
        c.json_bytes as f64 / 1e6,
        policy.as_str()
    );
    for _ in 0..passes {
        let mut engine = Engine::new(EngineConfig {
            policy: PolicyConfig::named(policy),
            ..EngineConfig::default()
        })
        .expect("built-in policy");
        let mut out = Vec::new();
        let t = Instant::now();
        for (pos, r) in c.records.iter().enumerate() {
            let record = RecordInput {
                data: r,
                position: pos as u64,
                ..RecordInput::default()
            };
            let _ = engine.process_record(&record, &mut out);
        }
        let secs = t.elapsed().as_secs_f64();
        println!(
            "{:.1} MB/s ({} decisions, {:.1} ms)",
            c.json_bytes as f64 / 1e6 / secs,
            out.len(),
            secs * 1e3
        );
    }
}
