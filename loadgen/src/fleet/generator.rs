//! The log writer the traffic generators share: [`Gen`] holds the fleet being
//! written, turns messages into syslog lines of an instance (dropping those
//! outside the simulated time), and models one sshd connection ([`Conn`]) so
//! its lines carry the peer, the pid and the scenario.

use std::net::IpAddr;

use rand::rngs::StdRng;
use rand::Rng;
use sshwarden_pipeline::classify::Signal;

use super::config::FleetConfig;
use super::instance::{self, HostState, InstanceInfo};
use super::random::exp_gap;
use super::scenario::Scenario;
use crate::rule_truth::Compromise;
use crate::sshd::{self, Msg};

/// A line before the events are sorted and given ids.
pub(super) struct Draft {
    pub(super) host: usize,
    /// When the line was really written (the order of the log).
    pub(super) time_ms: i64,
    /// The time the instance's clock stamped on it (`time_ms` plus its skew).
    pub(super) stamp_ms: i64,
    pub(super) seq: u64,
    pub(super) line: String,
    pub(super) signal: Option<Signal>,
    pub(super) source: Option<IpAddr>,
    pub(super) scenario: Option<usize>,
}

/// What an event is evidence of, and whose.
#[derive(Default)]
pub(super) struct Evidence {
    pub(super) signal: Option<Signal>,
    pub(super) source: Option<IpAddr>,
    pub(super) scenario: Option<usize>,
}

/// One sshd connection being written.
pub(super) struct Conn {
    pub(super) host: usize,
    pub(super) pid: u32,
    pub(super) peer: IpAddr,
    pub(super) port: u16,
    pub(super) t: i64,
    pub(super) scenario: Option<usize>,
    /// Signals this connection has counted (bit i: `Signal` index i): one
    /// attempt feeds a signal once (docs/detection.md), so the truth marks
    /// a second line of the same attempt as no signal.
    pub(super) counted: u8,
}

/// The fleet being written: its instances, the lines so far, and what the
/// truth needs beyond the lines (decoy addresses, compromises).
pub(super) struct Gen<'c> {
    pub(super) config: &'c FleetConfig,
    pub(super) start: i64,
    pub(super) end: i64,
    pub(super) instances: Vec<InstanceInfo>,
    pub(super) hosts: Vec<HostState>,
    /// How far each instance's clock runs ahead (ms).
    pub(super) skews: Vec<i64>,
    pub(super) drafts: Vec<Draft>,
    pub(super) seq: u64,
    pub(super) decoys: Vec<IpAddr>,
    pub(super) compromises: Vec<Compromise>,
}

impl<'c> Gen<'c> {
    pub(super) fn new(config: &'c FleetConfig) -> Self {
        let (instances, hosts) = instance::draw(config.seed, config.instances);
        let mut skews = vec![0; instances.len()];
        for s in &config.scenarios {
            if let Scenario::SkewedClock {
                instance, skew_ms, ..
            } = *s
            {
                if let Some(k) = skews.get_mut(instance) {
                    *k = skew_ms;
                }
            }
        }
        Gen {
            config,
            start: config.start_ms,
            end: config.start_ms.saturating_add(config.duration_ms),
            instances,
            hosts,
            skews,
            drafts: Vec::new(),
            seq: 0,
            decoys: Vec::new(),
            compromises: Vec::new(),
        }
    }

    /// Writes `text` as a line of `process` on `host` at `t`, unless `t` is
    /// outside the simulated time.
    pub(super) fn push(
        &mut self,
        host: usize,
        t: i64,
        process: &str,
        text: &str,
        evidence: Evidence,
    ) {
        let Evidence {
            signal,
            source,
            scenario,
        } = evidence;
        if t < self.start || t >= self.end {
            return;
        }
        let stamp_ms = t.saturating_add(self.skews[host]);
        let line = format!(
            "{} {} {process}: {text}",
            self.instances[host].timestamp(stamp_ms),
            self.instances[host].host
        );
        self.seq += 1;
        self.drafts.push(Draft {
            host,
            time_ms: t,
            stamp_ms,
            seq: self.seq,
            line,
            signal,
            source,
            scenario,
        });
    }

    /// A non-sshd line (`CROND[123]`, `systemd[1]`, ...).
    pub(super) fn system(&mut self, host: usize, t: i64, process: &str, text: &str) {
        self.push(host, t, process, text, Evidence::default());
    }

    pub(super) fn pid(&mut self, host: usize, rng: &mut StdRng) -> u32 {
        let h = &mut self.hosts[host];
        let pid = h.next_pid;
        h.next_pid += rng.random_range(1..40);
        if h.next_pid > 4_000_000 {
            h.next_pid = 1_000;
        }
        pid
    }

    pub(super) fn open(
        &mut self,
        rng: &mut StdRng,
        host: usize,
        peer: IpAddr,
        t: i64,
        scenario: Option<usize>,
    ) -> Conn {
        let pid = self.pid(host, rng);
        let c = Conn {
            host,
            pid,
            peer,
            port: rng.random_range(1024..=65535),
            t,
            scenario,
            counted: 0,
        };
        if self.instances[host].verbose {
            let local = IpAddr::V4(self.instances[host].private_ip);
            let mut c = c;
            let m = sshd::connection_from(peer, c.port, local);
            self.say(&mut c, m);
            return c;
        }
        c
    }

    pub(super) fn say(&mut self, c: &mut Conn, m: Msg) {
        let process = format!("{}[{}]", self.instances[c.host].process, c.pid);
        let signal = m.signal.filter(|signal| {
            let bit = 1u8 << signal.index();
            // Each `Failed <method>` line is a try of its own; a closing
            // "too many failures" adds none to tries already counted; any
            // other signal counts once per connection.
            let new = m.text.starts_with("Failed ") || c.counted & bit == 0;
            c.counted |= bit;
            new
        });
        let evidence = Evidence {
            signal,
            source: Some(c.peer),
            scenario: c.scenario,
        };
        self.push(c.host, c.t, &process, &m.text, evidence);
    }

    /// A Poisson stream of `per_ms` over the run (none if not positive):
    /// `each` writes what happens at every arrival time.
    pub(super) fn poisson(
        &mut self,
        rng: &mut StdRng,
        per_ms: f64,
        mut each: impl FnMut(&mut Self, &mut StdRng, i64),
    ) {
        if per_ms <= 0.0 {
            return;
        }
        let mut t = self.start;
        loop {
            t = t.saturating_add(exp_gap(rng, per_ms));
            if t >= self.end {
                break;
            }
            each(self, rng, t);
        }
    }

    /// Advances the connection's clock by a random delay in `lo..hi` ms and writes `m`.
    pub(super) fn after(&mut self, rng: &mut StdRng, c: &mut Conn, lo: i64, hi: i64, m: Msg) {
        c.t += rng.random_range(lo..hi);
        self.say(c, m);
    }
}
