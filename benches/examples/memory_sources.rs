//! Resident memory as the number of distinct source addresses grows: one
//! instance's log with N attackers, each one `Invalid user` line, all inside
//! one window (the worst case: nothing closes). Prints N, the live source
//! keys, the evictions and the peak RSS; run once per N so each peak is its
//! own (`scripts/bench-memory` loops over 1k to 1M). Also prints the lines
//! per second of the run (line formatting included): an address flood's
//! speed.
//!
//! `cargo run --release -p sshwarden-benches --example memory_sources -- N [MAX_SOURCES] [totals|fleet]`
//! (`totals`: also keep the whole-input totals per source, as `scan` does;
//! `fleet`: two shards and the fleet stage, as `scan --shards 2` runs them,
//! every partial sent and merged at the end of the input).

use sshwarden_pipeline::command::Origin;
use sshwarden_pipeline::embedded::EmbeddedStages;
use sshwarden_pipeline::window::WindowConfig;
use sshwarden_pipeline::{EngineConfig, LineInput};

fn main() {
    let mut args = std::env::args().skip(1);
    let n: u32 = args.next().and_then(|a| a.parse().ok()).unwrap_or(1_000);
    let cap: Option<usize> = args.next().and_then(|a| a.parse().ok());
    let mode = args.next();
    let mut config = EngineConfig {
        keep_totals: mode.as_deref() == Some("totals"),
        ..EngineConfig::default()
    };
    let shards = if mode.as_deref() == Some("fleet") {
        2
    } else {
        1
    };
    if let Some(cap) = cap {
        config.window = WindowConfig {
            max_sources: cap,
            ..config.window
        };
    }
    let cap = config.window.max_sources;
    let mut stages = match EmbeddedStages::new(config, shards) {
        Ok(e) => e,
        Err(e) => panic!("{e}"),
    };
    let base_rss = peak_rss_kb();
    let started = std::time::Instant::now();
    let mut out = Vec::new();
    let origin = Origin::default();
    let mut line = String::new();
    for i in 0..n {
        let ip = std::net::Ipv4Addr::from(0x0b00_0000 + i);
        line.clear();
        line.push_str(&format!(
            "2026-11-29T10:00:{:02}.000+00:00 ip-10-0-0-1 sshd[{}]: Invalid user u{i} from {ip} port {}",
            (i / 20_000) % 60,
            // One connection per line: a pid sshd used before, with no
            // closing line between, would be the same attempt again.
            1000 + u64::from(i),
            1024 + i % 60_000
        ));
        stages.process_line(
            &LineInput {
                instance: "i-0123456789abcdef0",
                instance_from_host: false,
                event_id: None,
                time_ms: Some(1_795_946_400_000 + i64::from(i % 50_000)),
                arrival_ms: None,
                position: u64::from(i),
                line: &line,
            },
            &origin,
            &mut out,
        );
        out.clear();
    }
    let (instances, sources) = stages
        .engines()
        .iter()
        .map(|e| e.windows().live_keys())
        .fold((0, 0), |(a, b), (c, d)| (a + c, b + d));
    if shards > 1 {
        // Partials go to the fleet stage when they are let go or closed:
        // here, at the end, all of them.
        stages.finish(&mut out);
    }
    let secs = started.elapsed().as_secs_f64();
    let stats = stages.stats();
    let peak = peak_rss_kb();
    println!(
        "distinct_sources={n} max_sources={cap} live_source_keys={sources} live_instance_keys={instances} \
         evicted_sources={} counted_events={} totals={} shards={shards} partials={} peak_rss_kb={peak} baseline_rss_kb={base_rss} bytes_per_live_source={} lines_per_sec={:.0}",
        stats.windows.evicted_sources,
        stats.signals.values().sum::<u64>(),
        stages.totals().map_or(0, |t| t.sources.len()),
        stages.fleet_summary().partials,
        (peak.saturating_sub(base_rss) * 1024).checked_div(sources as u64).unwrap_or(0),
        f64::from(n) / secs,
    );
}

fn peak_rss_kb() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmHWM:"))
                .and_then(|l| l.split_whitespace().nth(1).map(str::to_owned))
        })
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}
