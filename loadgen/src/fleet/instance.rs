//! The instance model: how each simulated EC2 instance writes its log (id,
//! address, host name, sshd process name, timestamp style, password and
//! verbose logging) and the per-host counters (pids, sessions) the
//! generator advances.

use std::collections::HashSet;
use std::net::Ipv4Addr;

use rand::Rng;
use serde::Serialize;
use sshwarden_pipeline::time::civil_from_days;

use super::random::{stream, Purpose};

/// How an instance writes its log.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InstanceInfo {
    /// `i-` and 17 lowercase hex digits; also the log stream name.
    pub id: String,
    pub private_ip: Ipv4Addr,
    /// `ip-10-0-x-y`, the syslog host.
    pub host: String,
    /// `sshd`, or `sshd-session` (OpenSSH 9.8+).
    pub process: &'static str,
    /// rsyslog ISO 8601 timestamps instead of RFC 3164 `Mmm dd HH:MM:SS`.
    pub iso_timestamps: bool,
    /// `PasswordAuthentication yes`: brute forces leave `Failed password` lines.
    pub password_auth: bool,
    /// `LogLevel VERBOSE`: `Connection from` lines and key fingerprints.
    pub verbose: bool,
}

/// What changes on an instance as its log is written.
pub(super) struct HostState {
    pub(super) next_pid: u32,
    pub(super) next_session: u32,
    pub(super) cron: &'static str,
}

const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];

/// Draws the fleet's instances and their initial host state from the seed's
/// instance stream; ids and private addresses are unique.
pub(super) fn draw(seed: u64, count: usize) -> (Vec<InstanceInfo>, Vec<HostState>) {
    let mut rng = stream(seed, Purpose::Instances, 0);
    let mut instances = Vec::with_capacity(count);
    let mut hosts = Vec::with_capacity(count);
    let mut used_ips = HashSet::new();
    let mut used_ids = HashSet::new();
    while instances.len() < count {
        let ip = Ipv4Addr::new(
            10,
            rng.random_range(0..=255),
            rng.random_range(1..=254),
            rng.random_range(4..=254),
        );
        let id = format!("i-0{:016x}", rng.random::<u64>());
        if used_ips.contains(&ip) || !used_ids.insert(id.clone()) {
            continue;
        }
        used_ips.insert(ip);
        let o = ip.octets();
        instances.push(InstanceInfo {
            id,
            private_ip: ip,
            host: format!("ip-{}-{}-{}-{}", o[0], o[1], o[2], o[3]),
            process: if rng.random_bool(0.3) {
                "sshd-session"
            } else {
                "sshd"
            },
            iso_timestamps: rng.random_bool(0.2),
            password_auth: rng.random_bool(0.25),
            verbose: rng.random_bool(0.3),
        });
        hosts.push(HostState {
            next_pid: rng.random_range(1_000..30_000),
            next_session: rng.random_range(1..500),
            cron: if rng.random_bool(0.7) {
                "CROND"
            } else {
                "CRON"
            },
        });
    }
    (instances, hosts)
}

impl InstanceInfo {
    /// The syslog timestamp of event time `t` in this instance's style.
    pub(super) fn timestamp(&self, t: i64) -> String {
        let days = t.div_euclid(86_400_000);
        let ms = t.rem_euclid(86_400_000);
        let (y, mo, d) = civil_from_days(days);
        let s = ms / 1000;
        let (hh, mm, ss) = (s / 3600, (s / 60) % 60, s % 60);
        if self.iso_timestamps {
            format!(
                "{y:04}-{mo:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{:06}+00:00",
                (ms % 1000) * 1000
            )
        } else {
            let month = MONTHS[(mo as usize).saturating_sub(1) % 12];
            format!("{month} {d:>2} {hh:02}:{mm:02}:{ss:02}")
        }
    }
}
