//! The simulated fleet: EC2 instances writing sshd and system logs, some of
//! them under attack, generated deterministically from a seed.
//!
//! Each instance has an EC2-shaped id (`i-` + 17 hex digits), a private
//! address and host name (`ip-10-0-x-y`), an sshd process name (`sshd`, or
//! `sshd-session` as OpenSSH 9.8+ logs), a syslog timestamp style, and
//! whether it allows password authentication (most EC2 images do not, which
//! changes what a brute force looks like in its log). Benign traffic (logins
//! with their sessions, cron, systemd, sudo), background internet scanning
//! and the configured [`Scenario`]s are generated from independent random
//! streams derived from the seed, so adding a scenario does not change the
//! benign traffic. Every event carries what it is evidence of, and the
//! generator computes the [`GroundTruth`] from the events it produced.
//!
//! By job: `config` (what to simulate, and its limits), `scenario` (the
//! attacks), `instance` (how each instance logs), `generator` (the line and
//! connection writer), `benign`, `scan` (background scanning), `attempt`
//! (authentication attempts), `attack` (the scenarios' lines) and `random`
//! (seeded streams and vocabulary). This module runs them in order and turns
//! their lines into sorted [`GeneratedEvent`]s with ids and the truth.
//! Imports point one way: `random` and `scenario` at the bottom, then
//! `config` and `instance`, `generator`, `attempt`, then `benign`, `scan`
//! and `attack`, and this module on top.

mod attack;
mod attempt;
mod benign;
mod config;
pub mod day;
mod generator;
mod instance;
mod random;
mod scan;
mod scenario;

pub use config::{ConfigError, FleetConfig, MAX_EVENTS};
pub use instance::InstanceInfo;
pub use scenario::Scenario;

use crate::event::GeneratedEvent;
use crate::incident::{BenignAddress, IncidentTruth};
use crate::rule_truth::{GroundTruth, TruthRules};
use generator::Gen;
use random::{stream, Purpose};

/// A generated fleet: its instances, its events in the order they were
/// written, and the rule-level truth computed from them.
#[derive(Debug, Clone)]
pub struct Fleet {
    pub config: FleetConfig,
    pub instances: Vec<InstanceInfo>,
    events: Vec<GeneratedEvent>,
    truth: GroundTruth,
}

impl Fleet {
    /// Generates the fleet's events; the same config gives the same events.
    pub fn generate(config: &FleetConfig) -> Result<Fleet, ConfigError> {
        config.validate()?;
        let mut g = Gen::new(config);
        // Benign traffic and background scanning of every instance, each
        // host from its own two streams (benign first: they share the host's
        // pids), then the scenarios, each from its own stream.
        let scanners = scan::scanner_pool(config);
        let admins = benign::admin_pool(config.seed);
        for host in 0..g.instances.len() {
            let mut rng = stream(config.seed, Purpose::Benign, host as u64);
            g.benign(&mut rng, host, &admins);
            let mut rng = stream(config.seed, Purpose::Scanning, host as u64);
            g.scan(&mut rng, host, &scanners);
        }
        for (i, s) in config.scenarios.iter().enumerate() {
            g.scenario(i, s);
        }
        Ok(Fleet::from_gen(g))
    }

    /// Sorts the lines written into `g` (by when they were written), gives
    /// them ids and computes the rule-level truth.
    fn from_gen(g: Gen<'_>) -> Fleet {
        let Gen {
            config,
            instances,
            mut drafts,
            decoys,
            compromises,
            ..
        } = g;
        drafts.sort_by_key(|d| (d.time_ms, d.seq));
        let stream_tags: Vec<u64> = instances.iter().map(|i| fnv1a64(i.id.as_bytes())).collect();
        let events: Vec<GeneratedEvent> = drafts
            .into_iter()
            .enumerate()
            .map(|(n, d)| GeneratedEvent {
                instance: instances[d.host].id.clone(),
                time_ms: d.stamp_ms,
                id: event_id(d.stamp_ms, stream_tags[d.host], n as u64),
                line: d.line,
                signal: d.signal,
                source: d.source,
                scenario: d.scenario,
            })
            .collect();
        let mut truth = GroundTruth::compute(&events, &TruthRules::default());
        truth.decoy_addresses = decoys;
        truth.decoy_addresses.sort();
        truth.decoy_addresses.dedup();
        truth.compromises = compromises;
        truth.scenario_names = config
            .scenarios
            .iter()
            .enumerate()
            .map(|(i, s)| format!("{i}:{}", s.name()))
            .collect();
        Fleet {
            config: config.clone(),
            instances,
            events,
            truth,
        }
    }

    /// The administrators' addresses of the fleet's benign logins.
    pub fn admin_addresses(&self) -> Vec<std::net::IpAddr> {
        benign::admin_pool(self.config.seed)
    }

    /// The incident-level truth of the fleet's scenarios (what `demo` can
    /// judge its commands by): the administrators are the benign
    /// addresses, the per-minute probes' pool the scanners.
    pub fn incident_truth(&self) -> IncidentTruth {
        let mut benign: Vec<BenignAddress> = self
            .admin_addresses()
            .into_iter()
            .map(|address| BenignAddress {
                address,
                role: "admin".into(),
            })
            .collect();
        benign.sort_by_key(|b| b.address);
        benign.dedup_by_key(|b| b.address);
        IncidentTruth::compute(self, benign, &scan::scanner_pool(&self.config))
    }

    /// The events, in the order they were written (an instance whose clock
    /// runs ahead stamps its events ahead of that order).
    pub fn events(&self) -> &[GeneratedEvent] {
        &self.events
    }

    pub fn into_events(self) -> Vec<GeneratedEvent> {
        self.events
    }

    /// What the engine's per-instance window rules (the `seed` policy's)
    /// must detect in these events: its rule-level check.
    pub fn ground_truth(&self) -> &GroundTruth {
        &self.truth
    }

    /// Share of the events that are evidence of an attack (carry a signal).
    pub fn evidence_ratio(&self) -> f64 {
        if self.events.is_empty() {
            return 0.0;
        }
        let n = self.events.iter().filter(|e| e.signal.is_some()).count();
        n as f64 / self.events.len() as f64
    }
}

/// `3`, 15 digits of the time, 20 of the stream, 20 of the sequence: 56
/// digits like CloudWatch's, unique per event.
fn event_id(time_ms: i64, stream: u64, seq: u64) -> String {
    format!(
        "3{:015}{:020}{:020}",
        time_ms.rem_euclid(1_000_000_000_000_000),
        stream,
        seq
    )
}

/// FNV-1a: stable across platforms and releases, unlike std's hashers.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}
