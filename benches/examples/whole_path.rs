//! Runs the whole path (`Engine::process_record`) over the bench corpus a few
//! times and prints MB/s of uncompressed JSON: a plain driver for profilers
//! (`perf record`, `valgrind --tool=callgrind
//! --toggle-collect='*Engine::process_record*'`), where criterion's
//! statistics only get in the way.
//!
//! `cargo run --release -p sshwarden-benches --example whole_path -- [passes] [minutes] [policy] [input] [partials]`
//! (`BENCH_SEED=N` generates the standard or dense corpus from another seed;
//! policy: `graduated`, the default, or `seed`; input: `standard`, the
//! default, `dense` or `flood`, as in the `hot_path` bench; for the flood,
//! minutes × 40,000 lines; `partials` also builds the fleet stage's
//! partials, encoded as the second stream would carry them). Each pass
//! prints MB/s of wall time and MB per CPU second of the thread. Each pass
//! starts a fresh engine, so no state carries over from one pass to the
//! next; what a pass leaves live (connections, instances, source networks:
//! windows of an hour or a day never close within the corpus) goes to
//! stderr.

use std::time::Instant;

use sshwarden_benches::{bench_fleet, corpus, corpus_of, dense_fleet, flood_events};
use sshwarden_pipeline::partial::PartialConfig;
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
    let input = args.next().unwrap_or_else(|| "standard".into());
    let partials = match args.next().as_deref() {
        None => false,
        Some("partials") => true,
        Some(other) => {
            eprintln!("{other:?} is not `partials`");
            std::process::exit(2);
        }
    };
    let c = match input.as_str() {
        "flood" => corpus_of(
            &flood_events((minutes.unwrap_or(5) * 40_000).clamp(1, 10_000_000) as u32),
            1.0,
            0,
        ),
        "standard" | "dense" => {
            let mut config = if input == "dense" {
                dense_fleet()
            } else {
                bench_fleet()
            };
            if let Some(m) = minutes {
                config.duration_ms = m * 60_000;
            }
            // Traffic of the same shape from another seed: scripts/build-pgo
            // trains on it, so the corpus timed here stays unseen.
            if let Ok(seed) = std::env::var("BENCH_SEED") {
                config.seed = seed.parse().unwrap_or_else(|_| {
                    eprintln!("BENCH_SEED {seed:?} is not a number");
                    std::process::exit(2);
                });
            }
            corpus(&config)
        }
        other => {
            eprintln!("input {other:?} is not standard, dense or flood");
            std::process::exit(2);
        }
    };
    eprintln!(
        "{input}: {} records, {} events, {:.1} MB JSON, {:.0}% evidence, policy {}",
        c.records.len(),
        c.events,
        c.json_bytes as f64 / 1e6,
        c.evidence_ratio * 100.0,
        policy.as_str()
    );
    for _ in 0..passes {
        let mut engine = Engine::new(EngineConfig {
            policy: PolicyConfig::named(policy),
            partials: partials.then(PartialConfig::default),
            ..EngineConfig::default()
        })
        .expect("built-in policy");
        let mut out = Vec::new();
        let (mut emitted, mut partial_bytes) = (Vec::new(), 0usize);
        let cpu = thread_cpu_ns();
        let t = Instant::now();
        for (pos, r) in c.records.iter().enumerate() {
            let record = RecordInput {
                data: r,
                position: pos as u64,
                ..RecordInput::default()
            };
            let _ = engine.process_record(&record, &mut out);
            if partials {
                engine.drain_partials(&mut emitted);
                partial_bytes += emitted.drain(..).map(|p| p.encode().len()).sum::<usize>();
            }
        }
        if partials {
            engine.finish();
            engine.drain_partials(&mut emitted);
            partial_bytes += emitted.drain(..).map(|p| p.encode().len()).sum::<usize>();
            eprintln!(
                "partials: {} emitted, {:.1} kB, {:.2}% of the JSON",
                engine.partial_stats().map_or(0, |s| s.emitted),
                partial_bytes as f64 / 1e3,
                100.0 * partial_bytes as f64 / c.json_bytes as f64
            );
        }
        let secs = t.elapsed().as_secs_f64();
        let cpu_secs = thread_cpu_ns().zip(cpu).map(|(b, a)| (b - a) as f64 / 1e9);
        let (instances, sources) = engine.windows().live_keys();
        eprintln!(
            "left live: {} connections ({} evicted), {instances} instances, {sources} source networks",
            engine.live_connections(),
            engine.stats().connection_evictions,
        );
        println!(
            "{:.1} MB/s ({} decisions, {:.1} ms; {} MB per CPU second)",
            c.json_bytes as f64 / 1e6 / secs,
            out.len(),
            secs * 1e3,
            cpu_secs.map_or("?".into(), |s| format!(
                "{:.1}",
                c.json_bytes as f64 / 1e6 / s
            )),
        );
    }
}

/// This thread's time on a CPU in ns (Linux `schedstat`): on a shared
/// machine, MB per CPU second is steadier than MB per wall second.
fn thread_cpu_ns() -> Option<u64> {
    std::fs::read_to_string("/proc/thread-self/schedstat")
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}
