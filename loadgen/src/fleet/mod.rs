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

use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use sshwarden_pipeline::classify::Signal;
use sshwarden_pipeline::time::civil_from_days;

use crate::event::GeneratedEvent;
use crate::sshd::{self, Account, Msg};
use crate::truth::{Compromise, GroundTruth, TruthRules};

/// What to simulate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FleetConfig {
    pub instances: usize,
    pub seed: u64,
    /// Event time of the start of the simulation (epoch milliseconds).
    pub start_ms: i64,
    /// Events are generated in `[start_ms, start_ms + duration_ms)`.
    pub duration_ms: i64,
    /// Benign log lines (logins and their sessions, cron, systemd, sudo) per
    /// instance per minute, on average.
    pub benign_events_per_instance_per_min: f64,
    /// Background internet scanning: probes (one connection each, one to six
    /// lines, mostly evidence) per instance per minute, on average. This is
    /// what any instance with port 22 open to the world sees.
    pub scan_probes_per_instance_per_min: f64,
    pub scenarios: Vec<Scenario>,
}

impl Default for FleetConfig {
    /// Twenty instances for ten minutes with every kind of scenario; about a
    /// quarter of the lines are attack evidence.
    fn default() -> Self {
        let instances = 20;
        let duration_ms = 10 * 60_000;
        FleetConfig {
            instances,
            seed: 1,
            start_ms: 1_700_000_000_000,
            duration_ms,
            benign_events_per_instance_per_min: 30.0,
            scan_probes_per_instance_per_min: 1.0,
            scenarios: Scenario::default_mix(instances, duration_ms),
        }
    }
}

/// An attack. Offsets are from the start of the simulation; instances are
/// indexes into the fleet (`0..instances`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum Scenario {
    /// One address guessing passwords (or, on key-only instances, trying
    /// accounts) on one instance, one connection per attempt, fast.
    FastBruteForce {
        instance: usize,
        offset_ms: i64,
        attempts: u32,
        per_second: f64,
    },
    /// The same, paced below the default thresholds: one attempt every
    /// `interval_ms` against `root`, each attempt one failure, one pre-auth
    /// disconnect and one close of an authenticating user. With an interval of
    /// 15 s or more no 60 s window holds five of any signal.
    SlowBruteForce {
        instance: usize,
        offset_ms: i64,
        attempts: u32,
        interval_ms: i64,
    },
    /// One address probing which accounts exist: `Invalid user U` followed by
    /// `Connection closed by invalid user U A port P [preauth]`, a new user each time.
    UserEnumeration {
        instance: usize,
        offset_ms: i64,
        usernames: u32,
        per_second: f64,
    },
    /// Many addresses, few attempts each, spread over `hosts` instances of the
    /// fleet (chosen by the seed) and over `duration_ms`.
    Botnet {
        offset_ms: i64,
        duration_ms: i64,
        addresses: u32,
        hosts: usize,
        attempts_per_address: u32,
    },
    /// Password guessing against a valid account of an instance that allows
    /// passwords, ending in `Accepted password` and a session (a compromise).
    BruteForceThenSuccess {
        instance: usize,
        offset_ms: i64,
        failures: u32,
        per_second: f64,
    },
    /// Usernames crafted to misattribute: `x from 10.0.0.5 port 22`,
    /// `x from D port 22 ssh2: RSA SHA256:... ID` and the like, from one real
    /// address. The decoy addresses (see [`GroundTruth::decoy_addresses`])
    /// must never be counted; some lines are deliberately ambiguous.
    HostileUsernames {
        instance: usize,
        offset_ms: i64,
        attempts: u32,
        per_second: f64,
    },
}

impl Scenario {
    /// One scenario of each kind, placed on instances `0..5` (modulo the fleet
    /// size), the botnet over up to eight instances for the whole duration.
    pub fn default_mix(instances: usize, duration_ms: i64) -> Vec<Scenario> {
        let n = instances.max(1);
        vec![
            Scenario::FastBruteForce {
                instance: 0,
                offset_ms: 60_000,
                attempts: 300,
                per_second: 2.0,
            },
            Scenario::SlowBruteForce {
                instance: 1 % n,
                offset_ms: 30_000,
                attempts: 25,
                interval_ms: 20_000,
            },
            Scenario::UserEnumeration {
                instance: 2 % n,
                offset_ms: 120_000,
                usernames: 150,
                per_second: 1.0,
            },
            Scenario::Botnet {
                offset_ms: 0,
                duration_ms,
                addresses: 60,
                hosts: n.min(8),
                attempts_per_address: 3,
            },
            Scenario::BruteForceThenSuccess {
                instance: 3 % n,
                offset_ms: 240_000,
                failures: 40,
                per_second: 0.5,
            },
            Scenario::HostileUsernames {
                instance: 4 % n,
                offset_ms: 300_000,
                attempts: 40,
                per_second: 0.5,
            },
        ]
    }

    pub fn name(&self) -> &'static str {
        match self {
            Scenario::FastBruteForce { .. } => "fast_brute_force",
            Scenario::SlowBruteForce { .. } => "slow_brute_force",
            Scenario::UserEnumeration { .. } => "user_enumeration",
            Scenario::Botnet { .. } => "botnet",
            Scenario::BruteForceThenSuccess { .. } => "brute_force_then_success",
            Scenario::HostileUsernames { .. } => "hostile_usernames",
        }
    }

    fn target(&self) -> Option<usize> {
        match *self {
            Scenario::FastBruteForce { instance, .. }
            | Scenario::SlowBruteForce { instance, .. }
            | Scenario::UserEnumeration { instance, .. }
            | Scenario::BruteForceThenSuccess { instance, .. }
            | Scenario::HostileUsernames { instance, .. } => Some(instance),
            Scenario::Botnet { .. } => None,
        }
    }
}

/// A configuration that cannot be generated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError(pub String);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

const YEAR_MS: i64 = 366 * 86_400_000;
/// 9999-12-31T23:59:59.999Z.
const MAX_START_MS: i64 = 253_402_300_799_999;

/// Generating more than this many events is refused (about 4 GB of lines).
pub const MAX_EVENTS: f64 = 20_000_000.0;

impl FleetConfig {
    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |s: String| Err(ConfigError(s));
        if self.instances == 0 {
            return err("a fleet needs at least one instance".into());
        }
        if self.instances > 1_000_000 {
            return err(format!(
                "{} instances is more than 1,000,000",
                self.instances
            ));
        }
        if !(0..=MAX_START_MS).contains(&self.start_ms) {
            return err(format!(
                "start_ms must be between 0 and {MAX_START_MS} (year 9999)"
            ));
        }
        if !(0..=YEAR_MS).contains(&self.duration_ms) {
            return err("duration must be between 0 and 366 days".into());
        }
        for (what, rate) in [
            ("benign events", self.benign_events_per_instance_per_min),
            ("scan probes", self.scan_probes_per_instance_per_min),
        ] {
            if !rate.is_finite() || rate < 0.0 {
                return err(format!(
                    "{what} per instance per minute must be a finite number >= 0"
                ));
            }
        }
        let minutes = self.duration_ms as f64 / 60_000.0;
        let mut estimate = self.instances as f64
            * minutes
            * (self.benign_events_per_instance_per_min
                + 3.0 * self.scan_probes_per_instance_per_min);
        for (i, s) in self.scenarios.iter().enumerate() {
            if let Some(t) = s.target() {
                if t >= self.instances {
                    return err(format!(
                        "scenario {i} ({}) targets instance {t} of a fleet of {}",
                        s.name(),
                        self.instances
                    ));
                }
            }
            let offset = match *s {
                Scenario::FastBruteForce { offset_ms, .. }
                | Scenario::SlowBruteForce { offset_ms, .. }
                | Scenario::UserEnumeration { offset_ms, .. }
                | Scenario::Botnet { offset_ms, .. }
                | Scenario::BruteForceThenSuccess { offset_ms, .. }
                | Scenario::HostileUsernames { offset_ms, .. } => offset_ms,
            };
            if !(-YEAR_MS..=YEAR_MS).contains(&offset) {
                return err(format!(
                    "scenario {i} ({}): offset_ms must be within 366 days",
                    s.name()
                ));
            }
            let rate_ok = |r: f64| r.is_finite() && r > 0.0;
            let attempts = match *s {
                Scenario::FastBruteForce {
                    attempts,
                    per_second,
                    ..
                }
                | Scenario::HostileUsernames {
                    attempts,
                    per_second,
                    ..
                }
                | Scenario::UserEnumeration {
                    usernames: attempts,
                    per_second,
                    ..
                }
                | Scenario::BruteForceThenSuccess {
                    failures: attempts,
                    per_second,
                    ..
                } => {
                    if !rate_ok(per_second) {
                        return err(format!(
                            "scenario {i} ({}): per_second must be > 0",
                            s.name()
                        ));
                    }
                    f64::from(attempts)
                }
                Scenario::SlowBruteForce {
                    attempts,
                    interval_ms,
                    ..
                } => {
                    if !(1..=86_400_000).contains(&interval_ms) {
                        return err(format!(
                            "scenario {i} ({}): interval_ms must be between 1 and one day",
                            s.name()
                        ));
                    }
                    f64::from(attempts)
                }
                Scenario::Botnet {
                    duration_ms,
                    addresses,
                    hosts,
                    attempts_per_address,
                    ..
                } => {
                    if !(0..=YEAR_MS).contains(&duration_ms) {
                        return err(format!(
                            "scenario {i} (botnet): duration_ms must be between 0 and 366 days"
                        ));
                    }
                    if addresses > 0 && (hosts == 0 || hosts > self.instances) {
                        return err(format!(
                            "scenario {i} (botnet): hosts must be between 1 and the fleet size {}",
                            self.instances
                        ));
                    }
                    f64::from(addresses) * f64::from(attempts_per_address)
                }
            };
            estimate += attempts * 6.0;
        }
        if estimate > MAX_EVENTS {
            return err(format!(
                "about {estimate:.0} events would be generated; the limit is {MAX_EVENTS:.0}"
            ));
        }
        Ok(())
    }
}

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

/// A generated fleet: its instances, its events sorted by time, and the
/// ground truth computed from them.
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
        g.benign_and_noise();
        for (i, s) in config.scenarios.iter().enumerate() {
            g.scenario(i, s);
        }
        let Gen {
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
                time_ms: d.time_ms,
                id: event_id(d.time_ms, stream_tags[d.host], n as u64),
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
        Ok(Fleet {
            config: config.clone(),
            instances,
            events,
            truth,
        })
    }

    /// The events, sorted by time.
    pub fn events(&self) -> &[GeneratedEvent] {
        &self.events
    }

    pub fn into_events(self) -> Vec<GeneratedEvent> {
        self.events
    }

    /// What sshwarden's default rules must detect in these events.
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

/// SplitMix64's finaliser: derives independent stream seeds.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn stream(seed: u64, kind: u64, index: u64) -> StdRng {
    StdRng::seed_from_u64(mix(mix(seed ^ kind.wrapping_mul(0x100_0000_01b3)) ^ index))
}

const INVALID_USERS: &[&str] = &[
    "admin",
    "test",
    "user",
    "oracle",
    "postgres",
    "git",
    "ubuntu",
    "guest",
    "ftpuser",
    "pi",
    "support",
    "mysql",
    "hadoop",
    "jenkins",
    "deploy",
    "dev",
    "nagios",
    "minecraft",
    "steam",
    "teamspeak",
    "www",
    "backup",
    "ansible",
    "centos",
    "debian",
    "elastic",
    "es",
    "ftp",
    "docker",
    "kafka",
    "zabbix",
    "odoo",
    "redis",
    "tomcat",
    "vagrant",
    "wordpress",
    "sftp",
    "student",
    "server",
    "tester",
];
const BENIGN_USERS: &[(&str, u32)] = &[
    ("ec2-user", 1000),
    ("ec2-user", 1000),
    ("ssm-user", 1001),
    ("deploy", 1002),
    ("ubuntu", 1000),
];
const KEY_TYPES: &[&str] = &["ED25519", "RSA", "ECDSA"];
const MONTHS: [&str; 12] = [
    "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
];
const PUBLIC_FIRST_OCTETS: &[u8] = &[
    5, 27, 36, 43, 45, 46, 49, 58, 59, 61, 77, 80, 89, 91, 92, 101, 103, 106, 110, 112, 114, 115,
    116, 117, 118, 119, 121, 122, 124, 134, 138, 139, 141, 143, 146, 147, 150, 154, 157, 159, 161,
    164, 165, 167, 170, 171, 175, 176, 178, 180, 182, 183, 185, 188, 190, 193, 194, 195, 200, 201,
    202, 206, 209, 210, 211, 212, 213, 218, 220, 221, 222,
];

fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// Start of the `i`-th of a series at `per_second`.
fn nth(t0: i64, i: u32, per_second: f64) -> i64 {
    t0.saturating_add((f64::from(i) * 1000.0 / per_second) as i64)
}

/// Exponential inter-arrival time for a Poisson process of `per_ms`.
fn exp_gap(rng: &mut StdRng, per_ms: f64) -> i64 {
    let u: f64 = rng.random::<f64>();
    (-(1.0 - u).ln() / per_ms).ceil().max(1.0) as i64
}

fn public_ipv4(rng: &mut StdRng) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        *pick(rng, PUBLIC_FIRST_OCTETS),
        rng.random_range(0..=255),
        rng.random_range(0..=255),
        rng.random_range(1..=254),
    ))
}

fn fingerprint(rng: &mut StdRng) -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let fp: String = (0..43)
        .map(|_| char::from(B64[rng.random_range(0..B64.len())]))
        .collect();
    format!("SHA256:{fp}")
}

fn key(rng: &mut StdRng) -> String {
    let t = *pick(rng, KEY_TYPES);
    format!("{t} {}", fingerprint(rng))
}

struct Draft {
    host: usize,
    time_ms: i64,
    seq: u64,
    line: String,
    signal: Option<Signal>,
    source: Option<IpAddr>,
    scenario: Option<usize>,
}

/// What an event is evidence of, and whose.
#[derive(Default)]
struct Truth {
    signal: Option<Signal>,
    source: Option<IpAddr>,
    scenario: Option<usize>,
}

struct HostState {
    next_pid: u32,
    next_session: u32,
    cron: &'static str,
}

/// One sshd connection being written.
struct Conn {
    host: usize,
    pid: u32,
    peer: IpAddr,
    port: u16,
    t: i64,
    scenario: Option<usize>,
}

struct Gen<'c> {
    config: &'c FleetConfig,
    start: i64,
    end: i64,
    instances: Vec<InstanceInfo>,
    hosts: Vec<HostState>,
    drafts: Vec<Draft>,
    seq: u64,
    decoys: Vec<IpAddr>,
    compromises: Vec<Compromise>,
}

impl<'c> Gen<'c> {
    fn new(config: &'c FleetConfig) -> Self {
        let mut rng = stream(config.seed, 0, 0);
        let mut instances = Vec::with_capacity(config.instances);
        let mut hosts = Vec::with_capacity(config.instances);
        let mut used_ips = std::collections::HashSet::new();
        let mut used_ids = std::collections::HashSet::new();
        while instances.len() < config.instances {
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
        Gen {
            config,
            start: config.start_ms,
            end: config.start_ms.saturating_add(config.duration_ms),
            instances,
            hosts,
            drafts: Vec::new(),
            seq: 0,
            decoys: Vec::new(),
            compromises: Vec::new(),
        }
    }

    fn prefix(&self, host: usize, t: i64) -> String {
        let days = t.div_euclid(86_400_000);
        let ms = t.rem_euclid(86_400_000);
        let (y, mo, d) = civil_from_days(days);
        let s = ms / 1000;
        let (hh, mm, ss) = (s / 3600, (s / 60) % 60, s % 60);
        if self.instances[host].iso_timestamps {
            format!(
                "{y:04}-{mo:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}.{:06}+00:00",
                (ms % 1000) * 1000
            )
        } else {
            let month = MONTHS[(mo as usize).saturating_sub(1) % 12];
            format!("{month} {d:>2} {hh:02}:{mm:02}:{ss:02}")
        }
    }

    fn push(&mut self, host: usize, t: i64, process: &str, text: &str, truth: Truth) {
        let Truth {
            signal,
            source,
            scenario,
        } = truth;
        if t < self.start || t >= self.end {
            return;
        }
        let line = format!(
            "{} {} {process}: {text}",
            self.prefix(host, t),
            self.instances[host].host
        );
        self.seq += 1;
        self.drafts.push(Draft {
            host,
            time_ms: t,
            seq: self.seq,
            line,
            signal,
            source,
            scenario,
        });
    }

    /// A non-sshd line (`CROND[123]`, `systemd[1]`, ...).
    fn system(&mut self, host: usize, t: i64, process: &str, text: &str) {
        self.push(host, t, process, text, Truth::default());
    }

    fn pid(&mut self, host: usize, rng: &mut StdRng) -> u32 {
        let h = &mut self.hosts[host];
        let pid = h.next_pid;
        h.next_pid += rng.random_range(1..40);
        if h.next_pid > 4_000_000 {
            h.next_pid = 1_000;
        }
        pid
    }

    fn open(
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
        };
        if self.instances[host].verbose {
            let local = IpAddr::V4(self.instances[host].private_ip);
            self.say(&c, sshd::connection_from(peer, c.port, local));
        }
        c
    }

    fn say(&mut self, c: &Conn, m: Msg) {
        let process = format!("{}[{}]", self.instances[c.host].process, c.pid);
        let truth = Truth {
            signal: m.signal,
            source: Some(c.peer),
            scenario: c.scenario,
        };
        self.push(c.host, c.t, &process, &m.text, truth);
    }

    /// Advances the connection's clock by a random delay in `lo..hi` ms and writes `m`.
    fn after(&mut self, rng: &mut StdRng, c: &mut Conn, lo: i64, hi: i64, m: Msg) {
        c.t += rng.random_range(lo..hi);
        self.say(c, m);
    }

    // ---- benign traffic and background scanning ----

    fn benign_and_noise(&mut self) {
        let scanners = {
            let mut rng = stream(self.config.seed, 1, 0);
            let n = (self.config.instances * 4).clamp(64, 20_000);
            (0..n).map(|_| public_ipv4(&mut rng)).collect::<Vec<_>>()
        };
        let admins = {
            let mut rng = stream(self.config.seed, 1, 1);
            let mut v: Vec<IpAddr> = (0..4)
                .map(|_| IpAddr::V4(Ipv4Addr::new(10, 0, 0, rng.random_range(10..=20))))
                .collect();
            v.extend(
                (0..4).map(|_| IpAddr::V4(Ipv4Addr::new(203, 0, 113, rng.random_range(1..=254)))),
            );
            v
        };
        for host in 0..self.instances.len() {
            let mut rng = stream(self.config.seed, 2, host as u64);
            self.benign(&mut rng, host, &admins);
            let mut rng = stream(self.config.seed, 3, host as u64);
            self.noise(&mut rng, host, &scanners);
        }
    }

    fn benign(&mut self, rng: &mut StdRng, host: usize, admins: &[IpAddr]) {
        // Average lines per unit (see the weights below): ~4.4.
        let per_ms = self.config.benign_events_per_instance_per_min / 4.4 / 60_000.0;
        if per_ms <= 0.0 {
            return;
        }
        let mut t = self.start;
        loop {
            t = t.saturating_add(exp_gap(rng, per_ms));
            if t >= self.end {
                break;
            }
            let r: f64 = rng.random();
            if r < 0.25 {
                self.login_session(rng, host, t, admins);
            } else if r < 0.6 {
                self.cron_job(rng, host, t);
            } else if r < 0.85 {
                self.systemd_unit(rng, host, t);
            } else {
                self.sudo(rng, host, t);
            }
        }
    }

    fn login_session(&mut self, rng: &mut StdRng, host: usize, t: i64, admins: &[IpAddr]) {
        let peer = *pick(rng, admins);
        let (user, uid) = *pick(rng, BENIGN_USERS);
        let mut c = self.open(rng, host, peer, t, None);
        let p = c.port;
        if rng.random_bool(0.1) {
            let k = key(rng);
            self.after(
                rng,
                &mut c,
                5,
                80,
                sshd::failed_publickey(user, false, peer, p, &k),
            );
        }
        let m = if rng.random_bool(0.85) {
            let k = key(rng);
            sshd::accepted("publickey", user, peer, p, Some(&k))
        } else {
            sshd::accepted("password", user, peer, p, None)
        };
        self.after(rng, &mut c, 5, 200, m);
        self.after(rng, &mut c, 1, 20, sshd::session_opened(user, uid));
        let session = {
            let h = &mut self.hosts[host];
            h.next_session += 1;
            h.next_session
        };
        let logind = format!("systemd-logind[{}]", 400 + host % 300);
        self.system(
            host,
            c.t + 3,
            &logind,
            &format!("New session {session} of user {user}."),
        );
        self.system(
            host,
            c.t + 5,
            "systemd[1]",
            &format!("Started session-{session}.scope - Session {session} of User {user}."),
        );
        // Sessions last from seconds to most of an hour (log-uniform).
        let secs = 10f64.powf(rng.random_range(0.7..3.5)) as i64;
        c.t += secs * 1000 + rng.random_range(0..1000);
        self.say(
            &c,
            sshd::received_disconnect(peer, p, 11, "disconnected by user", false),
        );
        self.after(
            rng,
            &mut c,
            0,
            3,
            sshd::disconnected(Account::LoggedIn, user, peer, p, false),
        );
        self.after(rng, &mut c, 0, 3, sshd::session_closed(user));
        self.system(
            host,
            c.t + 2,
            &logind,
            &format!("Session {session} logged out. Waiting for processes to exit."),
        );
        self.system(
            host,
            c.t + 4,
            &logind,
            &format!("Removed session {session}."),
        );
    }

    fn cron_job(&mut self, rng: &mut StdRng, host: usize, t: i64) {
        let pid = self.pid(host, rng);
        let cron = format!("{}[{pid}]", self.hosts[host].cron);
        let cmd = *pick(
            rng,
            &[
                "run-parts /etc/cron.hourly",
                "/usr/lib64/sa/sa1 1 1",
                "/usr/local/bin/backup.sh >/dev/null 2>&1",
                "/usr/bin/flock -n /tmp/sync.lock /opt/app/bin/sync",
            ],
        );
        self.system(
            host,
            t,
            &cron,
            "pam_unix(crond:session): session opened for user root(uid=0) by (uid=0)",
        );
        self.system(host, t + 1, &cron, &format!("(root) CMD ({cmd})"));
        let dur = rng.random_range(20..5_000);
        self.system(
            host,
            t + dur,
            &cron,
            "pam_unix(crond:session): session closed for user root",
        );
    }

    fn systemd_unit(&mut self, rng: &mut StdRng, host: usize, t: i64) {
        let (unit, what) = *pick(
            rng,
            &[
                ("dnf-makecache.service", "dnf makecache"),
                ("sysstat-collect.service", "system activity accounting tool"),
                ("amazon-ssm-agent.service", "amazon-ssm-agent"),
                ("logrotate.service", "Rotate log files"),
                ("chronyd.service", "NTP client/server"),
            ],
        );
        self.system(
            host,
            t,
            "systemd[1]",
            &format!("Starting {unit} - {what}..."),
        );
        if rng.random_bool(0.8) {
            let dur = rng.random_range(10..3_000);
            self.system(
                host,
                t + dur,
                "systemd[1]",
                &format!("Finished {unit} - {what}."),
            );
        }
    }

    fn sudo(&mut self, rng: &mut StdRng, host: usize, t: i64) {
        let pid = self.pid(host, rng);
        let (user, _) = *pick(rng, BENIGN_USERS);
        let cmd = *pick(
            rng,
            &[
                "/bin/systemctl status sshd",
                "/usr/bin/dnf check-update",
                "/bin/journalctl -u app",
            ],
        );
        let p = format!("sudo[{pid}]");
        self.system(
            host,
            t,
            &p,
            &format!("{user} : TTY=pts/0 ; PWD=/home/{user} ; USER=root ; COMMAND={cmd}"),
        );
        self.system(
            host,
            t + 1,
            &p,
            &format!(
                "pam_unix(sudo:session): session opened for user root(uid=0) by {user}(uid=1000)"
            ),
        );
    }

    /// Background internet scanning: single connections from a shared pool of
    /// scanner addresses.
    fn noise(&mut self, rng: &mut StdRng, host: usize, scanners: &[IpAddr]) {
        let per_ms = self.config.scan_probes_per_instance_per_min / 60_000.0;
        if per_ms <= 0.0 {
            return;
        }
        let mut t = self.start;
        loop {
            t = t.saturating_add(exp_gap(rng, per_ms));
            if t >= self.end {
                break;
            }
            let peer = *pick(rng, scanners);
            let mut c = self.open(rng, host, peer, t, None);
            let p = c.port;
            match rng.random_range(0..10) {
                0 | 1 => {
                    self.after(rng, &mut c, 1, 50, sshd::kex_identification());
                    self.after(
                        rng,
                        &mut c,
                        0,
                        2,
                        sshd::closed_by_peer(false, peer, p, false),
                    );
                }
                2 => self.after(
                    rng,
                    &mut c,
                    100,
                    2_000,
                    sshd::closed_by_peer(false, peer, p, true),
                ),
                3 => self.after(
                    rng,
                    &mut c,
                    100,
                    2_000,
                    sshd::closed_by_peer(true, peer, p, true),
                ),
                4 => self.after(rng, &mut c, 50, 500, sshd::unable_to_negotiate(peer, p)),
                5 => self.after(rng, &mut c, 50, 500, sshd::banner_exchange(peer, p)),
                6 | 7 => {
                    let user = *pick(rng, INVALID_USERS);
                    self.attempt(rng, &mut c, user, false, None);
                }
                _ => self.attempt(rng, &mut c, "root", true, None),
            }
        }
    }

    /// A guessing attempt: `root` with probability `root_share`, else a
    /// made-up user name.
    fn guess(&mut self, rng: &mut StdRng, c: &mut Conn, root_share: f64) {
        if rng.random_bool(root_share) {
            self.attempt(rng, c, "root", true, None);
        } else {
            let user = *pick(rng, INVALID_USERS);
            self.attempt(rng, c, user, false, None);
        }
    }

    /// One authentication attempt on an open connection and its close, in the
    /// style of the instance (password or key-only). `force_password`
    /// overrides the instance's setting.
    fn attempt(
        &mut self,
        rng: &mut StdRng,
        c: &mut Conn,
        user: &str,
        valid: bool,
        force_password: Option<bool>,
    ) {
        let (peer, p) = (c.peer, c.port);
        let password = force_password.unwrap_or(self.instances[c.host].password_auth);
        if !valid {
            self.after(rng, c, 20, 300, sshd::invalid_user(user, peer, p));
        }
        if password {
            if valid {
                self.after(rng, c, 100, 1_500, sshd::pam_auth_failure(peer, Some(user)));
            } else {
                self.after(rng, c, 100, 1_500, sshd::pam_check_pass_unknown());
                self.after(rng, c, 0, 2, sshd::pam_auth_failure(peer, None));
            }
            self.after(
                rng,
                c,
                1_000,
                2_500,
                sshd::failed_password(user, !valid, peer, p),
            );
            self.after(
                rng,
                c,
                50,
                400,
                sshd::received_disconnect(peer, p, 11, "Bye Bye", true),
            );
            let acct = if valid {
                Account::Authenticating
            } else {
                Account::Invalid
            };
            self.after(rng, c, 0, 2, sshd::disconnected(acct, user, peer, p, true));
            return;
        }
        if !valid && rng.random_bool(0.3) {
            let k = key(rng);
            self.after(
                rng,
                c,
                50,
                300,
                sshd::failed_publickey(user, true, peer, p, &k),
            );
        }
        let acct = if valid {
            Account::Authenticating
        } else {
            Account::Invalid
        };
        if rng.random_bool(0.5) {
            self.after(
                rng,
                c,
                50,
                600,
                sshd::closed_by_user(acct, user, peer, p, true),
            );
        } else {
            self.after(
                rng,
                c,
                50,
                600,
                sshd::received_disconnect(peer, p, 11, "Bye Bye", true),
            );
            self.after(rng, c, 0, 2, sshd::disconnected(acct, user, peer, p, true));
        }
    }

    // ---- scenarios ----

    fn scenario(&mut self, index: usize, s: &Scenario) {
        let mut rng = stream(self.config.seed, 4, index as u64);
        let rng = &mut rng;
        let sc = Some(index);
        let start = self.start;
        let at = |offset: i64| start.saturating_add(offset);
        match *s {
            Scenario::FastBruteForce {
                instance,
                offset_ms,
                attempts,
                per_second,
            } => {
                let peer = public_ipv4(rng);
                let t0 = at(offset_ms);
                for i in 0..attempts {
                    let t = nth(t0, i, per_second);
                    let mut c = self.open(rng, instance, peer, t, sc);
                    self.guess(rng, &mut c, 0.2);
                }
            }
            Scenario::SlowBruteForce {
                instance,
                offset_ms,
                attempts,
                interval_ms,
            } => {
                let peer = public_ipv4(rng);
                let t0 = at(offset_ms);
                for i in 0..i64::from(attempts) {
                    // Fixed offsets inside an attempt keep each signal's lines
                    // exactly `interval_ms` apart.
                    let mut c = self.open(rng, instance, peer, t0 + i * interval_ms, sc);
                    let p = c.port;
                    c.t += 1_200;
                    self.say(&c, sshd::failed_password("root", false, peer, p));
                    c.t += 150;
                    self.say(&c, sshd::received_disconnect(peer, p, 11, "Bye Bye", true));
                    c.t += 1;
                    self.say(
                        &c,
                        sshd::disconnected(Account::Authenticating, "root", peer, p, true),
                    );
                }
            }
            Scenario::UserEnumeration {
                instance,
                offset_ms,
                usernames,
                per_second,
            } => {
                let peer = public_ipv4(rng);
                let t0 = at(offset_ms);
                for i in 0..usernames {
                    let t = nth(t0, i, per_second);
                    let mut c = self.open(rng, instance, peer, t, sc);
                    let base = INVALID_USERS[i as usize % INVALID_USERS.len()];
                    let user = if (i as usize) < INVALID_USERS.len() {
                        base.to_owned()
                    } else {
                        format!("{base}{}", i as usize / INVALID_USERS.len())
                    };
                    let p = c.port;
                    self.after(rng, &mut c, 20, 200, sshd::invalid_user(&user, peer, p));
                    self.after(
                        rng,
                        &mut c,
                        50,
                        400,
                        sshd::closed_by_user(Account::Invalid, &user, peer, p, true),
                    );
                }
            }
            Scenario::Botnet {
                offset_ms,
                duration_ms,
                addresses,
                hosts,
                attempts_per_address,
            } => {
                if addresses == 0 {
                    return;
                }
                // A seeded partial shuffle picks the attacked instances.
                let mut order: Vec<usize> = (0..self.instances.len()).collect();
                for i in 0..hosts.min(order.len()) {
                    let j = rng.random_range(i..order.len());
                    order.swap(i, j);
                }
                order.truncate(hosts);
                let t0 = at(offset_ms);
                for _ in 0..addresses {
                    let peer = public_ipv4(rng);
                    for _ in 0..attempts_per_address {
                        let host = *pick(rng, &order);
                        let t = t0 + rng.random_range(0..duration_ms.max(1));
                        let mut c = self.open(rng, host, peer, t, sc);
                        self.guess(rng, &mut c, 0.25);
                    }
                }
            }
            Scenario::BruteForceThenSuccess {
                instance,
                offset_ms,
                failures,
                per_second,
            } => {
                let peer = public_ipv4(rng);
                let (user, uid) = ("admin", 1003);
                let t0 = at(offset_ms);
                let mut t = t0;
                for i in 0..failures {
                    t = nth(t0, i, per_second);
                    let mut c = self.open(rng, instance, peer, t, sc);
                    self.attempt(rng, &mut c, user, true, Some(true));
                }
                let t = t + (1000.0 / per_second) as i64;
                let mut c = self.open(rng, instance, peer, t, sc);
                let p = c.port;
                self.after(
                    rng,
                    &mut c,
                    500,
                    2_000,
                    sshd::accepted("password", user, peer, p, None),
                );
                if c.t >= self.start && c.t < self.end {
                    self.compromises.push(Compromise {
                        instance: self.instances[instance].id.clone(),
                        source: peer,
                        user: user.to_owned(),
                        time_ms: c.t,
                        scenario: index,
                    });
                }
                self.after(rng, &mut c, 1, 20, sshd::session_opened(user, uid));
            }
            Scenario::HostileUsernames {
                instance,
                offset_ms,
                attempts,
                per_second,
            } => {
                let peer = public_ipv4(rng);
                // Decoys: a private address, loopback, a documentation address
                // and another instance of the fleet.
                let mut decoys = vec![
                    IpAddr::V4(Ipv4Addr::new(10, 0, 0, 5)),
                    IpAddr::V4(Ipv4Addr::new(127, 0, 0, 1)),
                    IpAddr::V4(Ipv4Addr::new(198, 51, 100, 23)),
                ];
                if self.instances.len() > 1 {
                    let other = (instance + 1) % self.instances.len();
                    decoys.push(IpAddr::V4(self.instances[other].private_ip));
                }
                let t0 = at(offset_ms);
                for i in 0..attempts {
                    let t = nth(t0, i, per_second);
                    let d = *pick(rng, &decoys);
                    self.decoys.push(d);
                    let w = *pick(rng, &["x", "admin", "root", "oracle"]);
                    let variant = rng.random_range(0..4);
                    let user = match variant {
                        0 => format!("{w} from {d} port 22"),
                        1 => format!("{w} from {d} port 22 ssh2"),
                        2 => format!("{w} from {d} port 22 ssh2: RSA {}", fingerprint(rng)),
                        // Readable two ways in `Failed publickey`: ambiguous.
                        _ => format!("{w} from {d} port 22 ssh2: RSA {} ID", fingerprint(rng)),
                    };
                    let mut c = self.open(rng, instance, peer, t, sc);
                    let p = c.port;
                    self.after(rng, &mut c, 20, 300, sshd::invalid_user(&user, peer, p));
                    if variant < 2 {
                        self.after(
                            rng,
                            &mut c,
                            500,
                            2_000,
                            sshd::failed_password(&user, true, peer, p),
                        );
                    } else {
                        let k = key(rng);
                        self.after(
                            rng,
                            &mut c,
                            50,
                            300,
                            sshd::failed_publickey(&user, true, peer, p, &k),
                        );
                    }
                    if rng.random_bool(0.5) {
                        self.after(
                            rng,
                            &mut c,
                            50,
                            400,
                            sshd::closed_by_user(Account::Invalid, &user, peer, p, true),
                        );
                    } else {
                        self.after(
                            rng,
                            &mut c,
                            50,
                            400,
                            sshd::received_disconnect(peer, p, 11, "Bye Bye", true),
                        );
                        self.after(
                            rng,
                            &mut c,
                            0,
                            2,
                            sshd::disconnected(Account::Invalid, &user, peer, p, true),
                        );
                    }
                }
            }
        }
    }
}
