//! Fixtures shared by sshwarden's benchmarks: a generated fleet's traffic,
//! encoded once as CloudWatch Logs subscription records (gzip and plain JSON)
//! and pre-extracted into lines and sshd messages, so each benchmark measures
//! only its own stage.

use sshwarden_loadgen::{
    encode_records, Fleet, FleetConfig, GeneratedEvent, RecordOptions, Scenario,
};
use sshwarden_pipeline::classify::Signal;
use sshwarden_pipeline::envelope::Decoder;
use sshwarden_pipeline::prefix::parse_line;
use sshwarden_pipeline::time::format_rfc3339_ms;

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

/// The hard case of a dense log: 200 instances exposed to the internet for
/// 5 minutes, few benign lines, heavy background scanning and a botnet of
/// 40,000 addresses making one attempt each, so most evidence comes from
/// an address not seen before (issue #17's dense sshd log).
pub fn dense_fleet() -> FleetConfig {
    let instances = 200;
    let duration_ms = 5 * 60_000;
    let mut config = bench_fleet();
    config.benign_events_per_instance_per_min = 12.0;
    config.scan_probes_per_instance_per_min = 40.0;
    config.scenarios.push(Scenario::Botnet {
        offset_ms: 0,
        duration_ms,
        addresses: 40_000,
        hosts: instances,
        attempts_per_address: 1,
    });
    config
}

/// An address flood: `n` `Invalid user` lines on one instance within one
/// minute, each from an address not seen before (a botnet, or one attacker
/// rotating addresses), one connection each.
pub fn flood_events(n: u32) -> Vec<GeneratedEvent> {
    let start_ms = 1_700_000_000_000;
    (0..n)
        .map(|i| {
            let time_ms = start_ms + i64::from(i) * 60_000 / i64::from(n.max(1));
            let ip = std::net::Ipv4Addr::from(0x0b00_0000 + i);
            GeneratedEvent {
                instance: "i-0f100d00000000001".into(),
                time_ms,
                line: format!(
                    "{} ip-10-0-0-1 sshd[{}]: Invalid user u{} from {ip} port {}",
                    format_rfc3339_ms(time_ms),
                    10_000 + i,
                    i % 5000,
                    1024 + i % 60_000
                ),
                id: format!("{:056}", u64::from(i) + 1),
                signal: Some(Signal::InvalidUser),
                source: Some(std::net::IpAddr::V4(ip)),
                scenario: Some(0),
            }
        })
        .collect()
}

/// Generates and encodes `config`'s traffic, about 100 events per record.
pub fn corpus(config: &FleetConfig) -> Corpus {
    let fleet = Fleet::generate(config).expect("a valid bench fleet");
    let expected = fleet.ground_truth().expected.len();
    corpus_of(fleet.events(), fleet.evidence_ratio(), expected)
}

/// Encodes `events` as a corpus (about 100 events per record).
/// `expected_detections` is only reported.
pub fn corpus_of(
    events: &[GeneratedEvent],
    evidence_ratio: f64,
    expected_detections: usize,
) -> Corpus {
    let opts = RecordOptions {
        events_per_record: 100,
        // Up to the engine's default allowed lateness: full records, none late.
        max_span_ms: 60_000,
        keep_json: true,
        ..RecordOptions::default()
    };
    let encoded = encode_records(events, &opts);
    let mut decoder = Decoder::default();
    let mut lines = Vec::with_capacity(events.len());
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
        evidence_ratio,
        expected_detections,
        json: encoded.iter().map(|r| r.json.clone()).collect(),
        records: encoded.into_iter().map(|r| r.data).collect(),
        lines,
        messages,
    }
}
