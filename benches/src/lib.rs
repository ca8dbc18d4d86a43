//! Fixtures shared by sshwarden's benchmarks: a generated fleet's traffic,
//! encoded once as CloudWatch Logs subscription records (gzip and plain JSON)
//! and pre-extracted into lines and sshd messages, so each benchmark measures
//! only its own stage.

use sshwarden_loadgen::{encode_records, Fleet, FleetConfig, RecordOptions, Scenario};
use sshwarden_pipeline::envelope::Decoder;
use sshwarden_pipeline::prefix::parse_line;

/// One log event as a source hands it to `Engine::process_line`.
#[derive(Debug, Clone)]
pub struct Line {
    pub instance: String,
    pub id: String,
    pub time_ms: i64,
    pub line: String,
}

/// A benchmark corpus.
pub struct Corpus {
    /// gzip subscription records, in delivery order.
    pub records: Vec<Vec<u8>>,
    /// The same records uncompressed.
    pub json: Vec<Vec<u8>>,
    /// Total size of the uncompressed JSON.
    pub json_bytes: u64,
    /// Every event of the records, in record order.
    pub lines: Vec<Line>,
    pub line_bytes: u64,
    /// The sshd messages (after the syslog prefix) of the sshd lines.
    pub messages: Vec<String>,
    pub message_bytes: u64,
    pub events: usize,
    /// Share of the events that are attack evidence.
    pub evidence_ratio: f64,
    /// Expected detections of the default rules.
    pub expected_detections: usize,
}

/// 200 instances, 5 minutes, 150 benign lines per instance per minute plus
/// background scanning and a few dozen attacks: about 175,000 events and
/// 40 MB of subscription JSON, a quarter of the events attack evidence.
pub fn bench_fleet() -> FleetConfig {
    let instances = 200;
    let duration_ms = 5 * 60_000;
    let mut scenarios = Vec::new();
    for k in 0..6 {
        scenarios.push(Scenario::FastBruteForce {
            instance: k * 31 % instances,
            offset_ms: 10_000 + k as i64 * 20_000,
            attempts: 600,
            per_second: 4.0,
        });
        scenarios.push(Scenario::UserEnumeration {
            instance: (k * 31 + 7) % instances,
            offset_ms: k as i64 * 15_000,
            usernames: 400,
            per_second: 3.0,
        });
        scenarios.push(Scenario::HostileUsernames {
            instance: (k * 31 + 11) % instances,
            offset_ms: k as i64 * 25_000,
            attempts: 250,
            per_second: 1.0,
        });
        scenarios.push(Scenario::SlowBruteForce {
            instance: (k * 31 + 13) % instances,
            offset_ms: k as i64 * 5_000,
            attempts: 15,
            interval_ms: 20_000,
        });
    }
    scenarios.push(Scenario::BruteForceThenSuccess {
        instance: 17,
        offset_ms: 60_000,
        failures: 100,
        per_second: 1.0,
    });
    scenarios.push(Scenario::Botnet {
        offset_ms: 0,
        duration_ms,
        addresses: 1_500,
        hosts: 150,
        attempts_per_address: 3,
    });
    FleetConfig {
        instances,
        seed: 2024,
        duration_ms,
        benign_events_per_instance_per_min: 150.0,
        scan_probes_per_instance_per_min: 6.0,
        scenarios,
        ..FleetConfig::default()
    }
}

/// Generates and encodes `config`'s traffic, about 100 events per record.
pub fn corpus(config: &FleetConfig) -> Corpus {
    let fleet = Fleet::generate(config).expect("a valid bench fleet");
    let opts = RecordOptions {
        events_per_record: 100,
        // Up to the engine's default allowed lateness: full records, none late.
        max_span_ms: 60_000,
        keep_json: true,
        ..RecordOptions::default()
    };
    let encoded = encode_records(fleet.events(), &opts);
    let mut decoder = Decoder::default();
    let mut lines = Vec::with_capacity(fleet.events().len());
    for r in &encoded {
        let env = decoder.decode(&r.data).expect("generated records decode");
        for ev in &env.log_events {
            lines.push(Line {
                instance: env.log_stream.to_string(),
                id: ev.id.to_string(),
                time_ms: ev.timestamp,
                line: ev.message.to_string(),
            });
        }
    }
    let messages: Vec<String> = lines
        .iter()
        .filter_map(|l| parse_line(&l.line).map(|p| p.message.to_owned()))
        .collect();
    Corpus {
        json_bytes: encoded.iter().map(|r| r.json_len as u64).sum(),
        line_bytes: lines.iter().map(|l| l.line.len() as u64).sum(),
        message_bytes: messages.iter().map(|m| m.len() as u64).sum(),
        events: lines.len(),
        evidence_ratio: fleet.evidence_ratio(),
        expected_detections: fleet.ground_truth().expected.len(),
        json: encoded.iter().map(|r| r.json.clone()).collect(),
        records: encoded.into_iter().map(|r| r.data).collect(),
        lines,
        messages,
    }
}
