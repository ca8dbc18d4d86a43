//! A realistic day of a fleet whose port 22 is open to the internet: what a
//! detector must be judged on.
//!
//! Background scanners come to every instance in sessions (one every one to
//! two minutes, each one to four connections: about 2,000 attempts a day
//! per instance, the low end of what exposed hosts see), from a fleet-wide
//! pool of a few hundred addresses, some far busier than others, so the
//! same addresses recur across instances and hours. Benign mistakes happen:
//! administrators mistype a password one to three times and then log in
//! from the office; automation jobs with a stale key fail every few minutes
//! for hours. Labelled incidents ([`DayConfig::default_incidents`]) run on
//! top. Every syslog host name is the instance id, so the auth.log can be
//! read with the instance taken from the host. The result is a [`Day`]: the
//! fleet's lines and the [`IncidentTruth`].

use std::net::{IpAddr, Ipv4Addr};

use rand::rngs::StdRng;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::benign::admin_pool;
use super::config::{ConfigError, FleetConfig, MAX_EVENTS};
use super::generator::Gen;
use super::random::{key, pick, public_ipv4, stream, Purpose};
use super::scenario::Scenario;
use super::Fleet;
use crate::incident::{BenignAddress, IncidentTruth};
use crate::sshd::{self, Account};

const HOUR_MS: i64 = 3_600_000;
const DAY_MS: i64 = 24 * HOUR_MS;

/// The background internet scanning of a day: its rate and burst shape.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Background {
    /// Scanner sessions per instance per hour, on average (Poisson arrivals).
    pub sessions_per_instance_per_hour: f64,
    /// Connections per session: uniform in `1..=max_connections_per_session`.
    pub max_connections_per_session: u32,
    /// Longest pause between a session's connections (ms); the shortest is 200 ms.
    pub max_connection_gap_ms: i64,
    /// Addresses the scanners come from, fleet-wide.
    pub scanner_addresses: usize,
}

impl Default for Background {
    /// A session every 1.9 minutes of 2.5 connections on average: 1,920
    /// attempts per instance per day, from 800 addresses.
    fn default() -> Self {
        Background {
            sessions_per_instance_per_hour: 32.0,
            max_connections_per_session: 4,
            max_connection_gap_ms: 20_000,
            scanner_addresses: 800,
        }
    }
}

/// What day to simulate.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DayConfig {
    pub instances: usize,
    pub seed: u64,
    /// Event time of the start (epoch ms).
    pub start_ms: i64,
    pub duration_ms: i64,
    pub background: Background,
    /// Benign lines (logins and their sessions, cron, systemd, sudo) per
    /// instance per minute, on average.
    pub benign_events_per_instance_per_min: f64,
    /// Administrators mistyping a password (one to three times, then logging
    /// in) per instance per day.
    pub admin_typos_per_instance_per_day: f64,
    /// Automation jobs with a stale key, each failing every few minutes
    /// for two to eight hours.
    pub stale_key_jobs: usize,
    /// The incidents, as scenarios (instances are indexes into the fleet).
    pub incidents: Vec<Scenario>,
}

impl Default for DayConfig {
    fn default() -> Self {
        DayConfig::new(20, 1)
    }
}

/// A generated day: the fleet's lines and what really happened.
#[derive(Debug, Clone)]
pub struct Day {
    pub fleet: Fleet,
    pub incidents: IncidentTruth,
}

impl DayConfig {
    /// A day of `instances` from 2023-11-14T00:00:00Z with the default
    /// background, mistakes and [`Self::default_incidents`].
    pub fn new(instances: usize, seed: u64) -> Self {
        DayConfig {
            instances,
            seed,
            start_ms: 1_699_920_000_000,
            duration_ms: DAY_MS,
            background: Background::default(),
            benign_events_per_instance_per_min: 2.0,
            admin_typos_per_instance_per_day: 0.2,
            stale_key_jobs: instances.div_ceil(50),
            incidents: DayConfig::default_incidents(instances, seed, DAY_MS),
        }
    }

    /// Incidents of every kind, scaled to the fleet (per 100 instances: 4
    /// fast brute forces, 10 slow ones, 4 user enumerations, 2 sprays, 1
    /// botnet, 2 IPv6 rotations, 2 brute forces that get in; at least one
    /// of each) and one instance whose clock runs four minutes ahead under
    /// a fast brute force. Victims, sizes and times are drawn from `seed`;
    /// each incident fits in `duration_ms` (at least a few hours).
    pub fn default_incidents(instances: usize, seed: u64, duration_ms: i64) -> Vec<Scenario> {
        let n = instances.max(1);
        let mut rng = stream(seed, Purpose::Incidents, 0);
        let rng = &mut rng;
        let per_100 = |k: usize| (k * n).div_ceil(100).max(1);
        // Victims in a seeded order, so incidents share instances only when
        // there are more incidents than instances.
        let mut order: Vec<usize> = (0..n).collect();
        for i in 0..n {
            let j = rng.random_range(i..n);
            order.swap(i, j);
        }
        let mut next = 0;
        let mut victim = || {
            let v = order[next % n];
            next += 1;
            v
        };
        // A start leaving `span` ms before the end.
        let start = |rng: &mut StdRng, span: i64| rng.random_range(0..(duration_ms - span).max(1));
        let mut v = Vec::new();
        for _ in 0..per_100(4) {
            let attempts = rng.random_range(60..300);
            let per_second = rng.random_range(0.5..3.0);
            v.push(Scenario::FastBruteForce {
                instance: victim(),
                offset_ms: start(rng, 600_000),
                attempts,
                per_second,
            });
        }
        for _ in 0..per_100(10) {
            let attempts = rng.random_range(30..80);
            let interval_ms = rng.random_range(180_000..=360_000);
            v.push(Scenario::SlowBruteForce {
                instance: victim(),
                offset_ms: start(rng, i64::from(attempts) * interval_ms),
                attempts,
                interval_ms,
            });
        }
        for _ in 0..per_100(4) {
            let usernames = rng.random_range(30..150);
            let per_second = rng.random_range(0.2..1.0);
            v.push(Scenario::UserEnumeration {
                instance: victim(),
                offset_ms: start(rng, 800_000),
                usernames,
                per_second,
            });
        }
        for _ in 0..per_100(2) {
            let hosts = n.min(rng.random_range(20..60));
            let interval_ms = rng.random_range(20_000..90_000);
            v.push(Scenario::Spray {
                offset_ms: start(rng, hosts as i64 * interval_ms),
                hosts,
                interval_ms,
            });
        }
        for _ in 0..per_100(1) {
            let duration = rng.random_range(20..60) * 60_000;
            let addresses = rng.random_range(200..400);
            let attempts_per_address = rng.random_range(2..=4);
            v.push(Scenario::Botnet {
                offset_ms: start(rng, duration),
                duration_ms: duration,
                addresses,
                hosts: 1,
                attempts_per_address,
            });
        }
        for _ in 0..per_100(2) {
            let attempts = rng.random_range(40..150);
            let per_second = rng.random_range(0.2..1.0);
            v.push(Scenario::Ipv6Rotation {
                instance: victim(),
                offset_ms: start(rng, 800_000),
                attempts,
                per_second,
            });
        }
        for _ in 0..per_100(2) {
            let failures = rng.random_range(8..30);
            let per_second = rng.random_range(0.2..1.0);
            v.push(Scenario::BruteForceThenSuccess {
                instance: victim(),
                offset_ms: start(rng, 200_000),
                failures,
                per_second,
            });
        }
        let attempts = rng.random_range(60..200);
        let per_second = rng.random_range(0.5..2.0);
        v.push(Scenario::SkewedClock {
            instance: victim(),
            skew_ms: 4 * 60_000,
            offset_ms: start(rng, 600_000),
            attempts,
            per_second,
        });
        v
    }

    /// The fleet configuration underneath: benign traffic and the
    /// incidents, no per-minute probes (the day's scanners replace them).
    fn fleet_config(&self) -> FleetConfig {
        FleetConfig {
            instances: self.instances,
            seed: self.seed,
            start_ms: self.start_ms,
            duration_ms: self.duration_ms,
            benign_events_per_instance_per_min: self.benign_events_per_instance_per_min,
            scan_probes_per_instance_per_min: 0.0,
            scenarios: self.incidents.clone(),
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let err = |s: &str| Err(ConfigError(s.to_owned()));
        self.fleet_config().validate()?;
        let b = &self.background;
        if !b.sessions_per_instance_per_hour.is_finite() || b.sessions_per_instance_per_hour < 0.0 {
            return err("scanner sessions per instance per hour must be a finite number >= 0");
        }
        if !(1..=1_000).contains(&b.max_connections_per_session) {
            return err("connections per scanner session must be between 1 and 1,000");
        }
        if !(200..=HOUR_MS).contains(&b.max_connection_gap_ms) {
            return err("the gap between a session's connections must be between 200 ms and 1 h");
        }
        if !(1..=1_000_000).contains(&b.scanner_addresses) {
            return err("scanner addresses must be between 1 and 1,000,000");
        }
        let typos = self.admin_typos_per_instance_per_day;
        if !typos.is_finite() || !(0.0..=1_000.0).contains(&typos) {
            return err("admin typos per instance per day must be between 0 and 1,000");
        }
        if self.stale_key_jobs > 100_000 {
            return err("stale key jobs must be at most 100,000");
        }
        let days = self.duration_ms as f64 / DAY_MS as f64;
        let hours = self.duration_ms as f64 / HOUR_MS as f64;
        let connections = f64::from(b.max_connections_per_session + 1) / 2.0;
        let estimate = self.instances as f64
            * (hours * b.sessions_per_instance_per_hour * connections * 4.0
                + days * typos * 12.0
                + self.benign_events_per_instance_per_min * hours * 60.0)
            + self.stale_key_jobs as f64 * 8.0 * 20.0 * 3.0;
        if estimate > MAX_EVENTS {
            return Err(ConfigError(format!(
                "about {estimate:.0} events would be generated; the limit is {MAX_EVENTS:.0}"
            )));
        }
        Ok(())
    }
}

impl Day {
    /// Generates the day; the same config gives the same lines and truth.
    pub fn generate(config: &DayConfig) -> Result<Day, ConfigError> {
        config.validate()?;
        let fleet_config = config.fleet_config();
        let mut g = Gen::new(&fleet_config);
        for i in &mut g.instances {
            i.host = i.id.clone();
        }
        let scanners = scanner_pool(config.seed, config.background.scanner_addresses);
        let admins = admin_pool(config.seed);
        for host in 0..g.instances.len() {
            let mut rng = stream(config.seed, Purpose::Benign, host as u64);
            g.benign(&mut rng, host, &admins);
            let mut rng = stream(config.seed, Purpose::Background, host as u64);
            g.scanner_sessions(&mut rng, host, &config.background, &scanners);
        }
        // The administrators' typos come from their office addresses (the
        // pool's public half), never from the VPC.
        let offices = &admins[admins.len() / 2..];
        let mut rng = stream(config.seed, Purpose::Mistakes, 0);
        let instance_days = config.instances as f64 * config.duration_ms as f64 / DAY_MS as f64;
        let typos = (config.admin_typos_per_instance_per_day * instance_days).round() as usize;
        for _ in 0..typos {
            g.admin_typo(&mut rng, offices);
        }
        let mut rng = stream(config.seed, Purpose::Mistakes, 1);
        let mut automation = Vec::new();
        for j in 0..config.stale_key_jobs {
            let peer = automation_address(j);
            automation.push(peer);
            g.stale_key(&mut rng, peer);
        }
        for (i, s) in fleet_config.scenarios.iter().enumerate() {
            g.scenario(i, s);
        }
        let fleet = Fleet::from_gen(g);
        let mut benign: Vec<BenignAddress> = admins
            .iter()
            .map(|a| BenignAddress {
                address: *a,
                role: "admin".into(),
            })
            .collect();
        benign.extend(automation.into_iter().map(|a| BenignAddress {
            address: a,
            role: "automation".into(),
        }));
        // The pool draws addresses independently: one may come up twice.
        benign.sort_by_key(|b| b.address);
        benign.dedup_by_key(|b| b.address);
        let incidents = IncidentTruth::compute(&fleet, benign, &scanners);
        Ok(Day { fleet, incidents })
    }
}

/// The day's scanners, shared by the whole fleet.
fn scanner_pool(seed: u64, size: usize) -> Vec<IpAddr> {
    let mut rng = stream(seed, Purpose::AddressPools, 2);
    (0..size).map(|_| public_ipv4(&mut rng)).collect()
}

/// The `j`-th automation runner: 192.0.2.0/24 (TEST-NET-1), apart from
/// every other pool.
fn automation_address(j: usize) -> IpAddr {
    let j = j % 250;
    IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1 + j as u8))
}

impl Gen<'_> {
    /// Scanner sessions on `host`: Poisson arrivals, each from one pool
    /// address (busy ones more often) making one to `max` connections.
    fn scanner_sessions(
        &mut self,
        rng: &mut StdRng,
        host: usize,
        b: &Background,
        scanners: &[IpAddr],
    ) {
        let per_ms = b.sessions_per_instance_per_hour / HOUR_MS as f64;
        self.poisson(rng, per_ms, |g, rng, t| {
            // Squaring a uniform draw favours the start of the pool: a few
            // addresses scan constantly, most now and then.
            let u: f64 = rng.random();
            let index = ((u * u) * scanners.len() as f64) as usize;
            let peer = scanners[index.min(scanners.len() - 1)];
            let mut t = t;
            for _ in 0..rng.random_range(1..=b.max_connections_per_session) {
                g.probe_from(rng, host, t, peer);
                t += rng.random_range(200..=b.max_connection_gap_ms);
            }
        });
    }

    /// An administrator mistyping a password one to three times on one
    /// connection, then logging in, from an office address.
    fn admin_typo(&mut self, rng: &mut StdRng, offices: &[IpAddr]) {
        let host = rng.random_range(0..self.instances.len());
        let t = rng.random_range(self.start..self.end.max(self.start + 1));
        let peer = *pick(rng, offices);
        let (user, uid) = *pick(rng, &[("ec2-user", 1000), ("ubuntu", 1000), ("ops", 1004)]);
        let mut c = self.open(rng, host, peer, t, None);
        let p = c.port;
        for _ in 0..rng.random_range(1..=3) {
            self.after(
                rng,
                &mut c,
                2_000,
                8_000,
                sshd::pam_auth_failure(peer, Some(user)),
            );
            self.after(
                rng,
                &mut c,
                1_000,
                2_500,
                sshd::failed_password(user, false, peer, p),
            );
        }
        self.after(
            rng,
            &mut c,
            2_000,
            8_000,
            sshd::accepted("password", user, peer, p, None),
        );
        self.after(rng, &mut c, 1, 20, sshd::session_opened(user, uid));
        c.t += rng.random_range(60_000..1_800_000);
        self.say(
            &mut c,
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
    }

    /// A job logging in as `deploy` with a key the instance no longer
    /// accepts, every three to five minutes for two to eight hours: the
    /// key is refused (`Failed publickey`, logged at VERBOSE for a valid
    /// user) and the client gives up (`Connection closed by authenticating
    /// user deploy ... [preauth]`).
    fn stale_key(&mut self, rng: &mut StdRng, peer: IpAddr) {
        let host = rng.random_range(0..self.instances.len());
        let span = rng.random_range(2 * HOUR_MS..=8 * HOUR_MS);
        let length = self.end - self.start;
        let mut t = self.start + rng.random_range(0..(length - span).max(1));
        let until = t + span;
        let interval = rng.random_range(180_000..=300_000);
        let k = key(rng);
        while t < until && t < self.end {
            let mut c = self.open(rng, host, peer, t, None);
            let p = c.port;
            if self.instances[host].verbose {
                self.after(
                    rng,
                    &mut c,
                    5,
                    80,
                    sshd::failed_publickey("deploy", false, peer, p, &k),
                );
            }
            self.after(
                rng,
                &mut c,
                5,
                200,
                sshd::closed_by_user(Account::Authenticating, "deploy", peer, p, true),
            );
            t += interval + rng.random_range(-20_000..=20_000);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

    use ipnet::IpNet;
    use sshwarden_pipeline::classify::classify;
    use sshwarden_pipeline::peer::Peer;
    use sshwarden_pipeline::prefix::parse_line;

    use super::*;
    use crate::incident::{port_of, IncidentKind};
    use crate::incident_score::{read_commands, IncidentJudge};

    /// The default day of 20 instances, generated once for the tests.
    fn default_day() -> &'static Day {
        static DAY: std::sync::OnceLock<Day> = std::sync::OnceLock::new();
        DAY.get_or_init(|| Day::generate(&DayConfig::new(20, 3)).unwrap())
    }

    #[test]
    fn a_day_is_deterministic_and_seeded() {
        let config = DayConfig {
            duration_ms: 6 * HOUR_MS,
            ..DayConfig::new(8, 5)
        };
        let a = Day::generate(&config).unwrap();
        let b = Day::generate(&config).unwrap();
        assert_eq!(a.fleet.events(), b.fleet.events());
        assert_eq!(a.incidents, b.incidents);
        let c = Day::generate(&DayConfig {
            seed: 6,
            ..config.clone()
        })
        .unwrap();
        assert_ne!(a.fleet.events()[..20], c.fleet.events()[..20]);
        assert_ne!(a.incidents.incidents, c.incidents.incidents);
        // Every syslog host is the instance id, and every line is the
        // instance's own.
        for e in a.fleet.events() {
            let l = e.line.split(' ').find(|w| w.starts_with("i-0"));
            assert_eq!(l, Some(e.instance.as_str()), "{}", e.line);
        }
    }

    #[test]
    fn background_is_about_2000_attempts_per_instance_day_from_hundreds_of_addresses() {
        let config = DayConfig {
            admin_typos_per_instance_per_day: 0.0,
            stale_key_jobs: 0,
            incidents: Vec::new(),
            ..DayConfig::new(20, 9)
        };
        let day = Day::generate(&config).unwrap();
        let scanners: HashSet<IpAddr> = day.incidents.scanner_addresses.iter().copied().collect();
        // A connection is one (instance, peer, client port).
        let mut connections: HashSet<(&str, IpAddr, u16)> = HashSet::new();
        let mut per_instance: HashMap<&str, BTreeSet<IpAddr>> = HashMap::new();
        let mut instances_of: HashMap<IpAddr, BTreeSet<&str>> = HashMap::new();
        let mut hours_of: HashMap<IpAddr, BTreeSet<i64>> = HashMap::new();
        for e in day.fleet.events() {
            let Some(a) = e.source.filter(|a| scanners.contains(a)) else {
                continue;
            };
            let Some(port) = port_of(&e.line) else {
                continue;
            };
            connections.insert((&e.instance, a, port));
            per_instance.entry(&e.instance).or_default().insert(a);
            instances_of.entry(a).or_default().insert(&e.instance);
            hours_of
                .entry(a)
                .or_default()
                .insert((e.time_ms - config.start_ms) / HOUR_MS);
        }
        let per_day = connections.len() as f64 / day.incidents.instance_days;
        let distinct: Vec<usize> = per_instance.values().map(BTreeSet::len).collect();
        let min_distinct = distinct.iter().copied().min().unwrap_or(0);
        let recurring = instances_of.values().filter(|s| s.len() >= 5).count();
        let many_hours = hours_of.values().filter(|s| s.len() >= 6).count();
        eprintln!(
            "background: {per_day:.0} connections per instance-day; distinct scanners per \
             instance {min_distinct}..{}; {} scanners seen, {recurring} on >= 5 instances, \
             {many_hours} in >= 6 hours",
            distinct.iter().max().unwrap_or(&0),
            instances_of.len()
        );
        assert!((1_700.0..=2_300.0).contains(&per_day), "{per_day}");
        assert!(min_distinct >= 200, "{distinct:?}");
        assert!(recurring >= 200, "{recurring}");
        assert!(many_hours >= 200, "{many_hours}");
        // Invalid users, root, protocol noise and pre-auth disconnects are all there.
        let all = |needle: &str| {
            day.fleet
                .events()
                .iter()
                .filter(|e| e.line.contains(needle))
                .count()
        };
        for needle in [
            "Invalid user ",
            "Failed password for root ",
            "kex_exchange_identification",
            "Unable to negotiate",
            "Bye Bye [preauth]",
        ] {
            assert!(all(needle) > 1_000, "{needle}: {}", all(needle));
        }
    }

    #[test]
    fn every_line_of_a_day_classifies_as_the_generator_says() {
        let day = default_day();
        // A line's signal counts once per attempt: the engine's connection
        // context says which lines are new attempts, the generator knows.
        let mut engine =
            sshwarden_pipeline::Engine::new(sshwarden_pipeline::EngineConfig::default()).unwrap();
        for e in day.fleet.events() {
            let Some(l) = parse_line(&e.line) else {
                assert_eq!(e.signal, None, "non-sshd line with a signal: {}", e.line);
                continue;
            };
            let c = classify(l.message);
            let counted = match engine.verdict(&e.line, &e.instance) {
                sshwarden_pipeline::engine::LineVerdict::Classified(v) => {
                    v.signal.filter(|_| v.new_attempt && v.counts_for_instance)
                }
                _ => None,
            };
            assert_eq!(counted, e.signal, "signal of {}", e.line);
            if let (Some(c), Some(src)) = (c, e.source) {
                if let Some(text) = c.source {
                    assert_eq!(Peer::parse(text), Some(Peer::Ip(src)), "{}", e.line);
                }
            }
        }
    }

    #[test]
    fn every_incident_kind_appears_with_its_truth() {
        let day = default_day();
        let truth = &day.incidents;
        let events = day.fleet.events();
        let kinds: BTreeSet<IncidentKind> = truth.incidents.iter().map(|i| i.kind).collect();
        for k in [
            IncidentKind::FastBruteForce,
            IncidentKind::SlowBruteForce,
            IncidentKind::UserEnumeration,
            IncidentKind::Spray,
            IncidentKind::Botnet,
            IncidentKind::Ipv6Rotation,
            IncidentKind::SucceededBruteForce,
            IncidentKind::SkewedClock,
        ] {
            assert!(kinds.contains(&k), "{k:?} missing: {kinds:?}");
        }
        let benign: HashSet<IpAddr> = truth.benign.iter().map(|b| b.address).collect();
        let scanners: HashSet<IpAddr> = truth.scanner_addresses.iter().copied().collect();
        for i in &truth.incidents {
            assert!(i.start_ms <= i.end_ms && !i.victims.is_empty(), "{i:?}");
            for a in &i.attackers {
                assert!(!benign.contains(a) && !scanners.contains(a), "{a} of {i:?}");
            }
            let single = || {
                assert_eq!(i.attackers.len(), 1, "{i:?}");
                let p = IpNet::from(i.attackers[0]).to_string();
                assert_eq!(i.prefix.as_ref(), Some(&p));
                assert_eq!(i.response.block, vec![p]);
            };
            match i.kind {
                IncidentKind::FastBruteForce | IncidentKind::UserEnumeration => {
                    single();
                    assert_eq!(i.victims.len(), 1);
                    assert!(i.end_ms - i.start_ms < HOUR_MS, "{i:?}");
                }
                IncidentKind::SlowBruteForce => {
                    single();
                    // One attempt every 3 to 6 minutes, for hours.
                    let gap = (i.end_ms - i.start_ms) / (i.connections as i64 - 1);
                    assert!((170_000..=370_000).contains(&gap), "{gap} {i:?}");
                    assert!(i.end_ms - i.start_ms >= 90 * 60_000, "{i:?}");
                }
                IncidentKind::Spray => {
                    single();
                    assert_eq!(i.victims.len(), i.connections, "one attempt each: {i:?}");
                    assert!(i.victims.len() >= 20, "{i:?}");
                }
                IncidentKind::Botnet => {
                    assert!(i.attackers.len() >= 200 && i.prefix.is_none(), "{i:?}");
                    assert_eq!(i.victims.len(), 1);
                    assert_eq!(i.response.notify, i.victims);
                    assert!(i.response.block.is_empty() && i.response.quarantine.is_empty());
                }
                IncidentKind::Ipv6Rotation => {
                    assert!(i.attackers.len() > 10, "{i:?}");
                    let p: IpNet = i.prefix.as_ref().unwrap().parse().unwrap();
                    assert_eq!(p.prefix_len(), 64);
                    assert!(i.attackers.iter().all(|a| p.contains(a)));
                    assert_eq!(i.response.block, vec![p.to_string()]);
                }
                IncidentKind::SucceededBruteForce => {
                    single();
                    assert!(i.succeeded);
                    assert_eq!(i.response.quarantine, i.victims);
                    assert!(truth.compromised_instances.contains(&i.victims[0]));
                    let accepted = format!("Accepted password for root from {} ", i.attackers[0]);
                    let failures = events
                        .iter()
                        .filter(|e| e.scenario == Some(i.id) && e.line.contains("Failed password"))
                        .count();
                    let at = events
                        .iter()
                        .position(|e| e.instance == i.victims[0] && e.line.contains(&accepted));
                    assert!(at.is_some() && failures >= 8, "{failures} {i:?}");
                }
                IncidentKind::SkewedClock => {
                    single();
                    // Its instance's lines are stamped four minutes ahead of
                    // the lines written around them.
                    let skewed = &i.victims[0];
                    let mut ahead: Vec<i64> = events
                        .windows(2)
                        .filter(|w| &w[0].instance == skewed && &w[1].instance != skewed)
                        .map(|w| w[0].time_ms - w[1].time_ms)
                        .collect();
                    ahead.sort_unstable();
                    let median = ahead[ahead.len() / 2];
                    assert!((230_000..=245_000).contains(&median), "{median}");
                }
                IncidentKind::HostileUsernames => {}
            }
            if !i.succeeded {
                assert!(i.response.quarantine.is_empty());
            }
        }
        let compromised: Vec<&String> = truth
            .incidents
            .iter()
            .filter(|i| i.succeeded)
            .flat_map(|i| &i.victims)
            .collect();
        assert_eq!(truth.compromised_instances.len(), compromised.len());
    }

    #[test]
    fn benign_mistakes_are_there_and_their_addresses_are_known() {
        let day = default_day();
        let truth = &day.incidents;
        let roles: BTreeMap<IpAddr, &str> = truth
            .benign
            .iter()
            .map(|b| (b.address, b.role.as_str()))
            .collect();
        assert!(roles.values().any(|r| *r == "admin"));
        let automation: Vec<IpAddr> = roles
            .iter()
            .filter(|(_, r)| **r == "automation")
            .map(|(a, _)| *a)
            .collect();
        assert!(!automation.is_empty());
        // Administrators: one to three failures on one connection, then in.
        let mut by_conn: BTreeMap<(&str, IpAddr, u16), Vec<&str>> = BTreeMap::new();
        for e in day.fleet.events() {
            let (Some(a), Some(p)) = (e.source, port_of(&e.line)) else {
                continue;
            };
            if roles.get(&a) == Some(&"admin") {
                by_conn
                    .entry((&e.instance, a, p))
                    .or_default()
                    .push(&e.line);
            }
        }
        let typos: Vec<usize> = by_conn
            .values()
            .map(|ls| ls.iter().filter(|l| l.contains("Failed password")).count())
            .filter(|n| *n > 0)
            .collect();
        assert!(typos.len() >= 2, "{typos:?}");
        assert!(typos.iter().all(|n| (1..=3).contains(n)), "{typos:?}");
        for ls in by_conn.values() {
            if ls.iter().any(|l| l.contains("Failed password")) {
                assert!(ls.iter().any(|l| l.contains("Accepted password")), "{ls:?}");
            }
        }
        // The stale key: a valid user's pre-auth closes, minutes apart, for hours.
        let job = automation[0];
        let times: Vec<i64> = day
            .fleet
            .events()
            .iter()
            .filter(|e| {
                e.source == Some(job)
                    && e.line
                        .contains("Connection closed by authenticating user deploy ")
                    && e.line.ends_with("[preauth]")
            })
            .map(|e| e.time_ms)
            .collect();
        assert!(times.len() >= 20, "{}", times.len());
        assert!(times
            .windows(2)
            .all(|w| (150_000..=330_000).contains(&(w[1] - w[0]))));
    }

    #[test]
    fn the_operator_the_truth_describes_scores_perfectly() {
        // Commands that take exactly each incident's response at its first
        // line: every incident detected as expected, nothing false.
        let truth = &default_day().incidents;
        let mut lines = Vec::new();
        for i in &truth.incidents {
            let at = sshwarden_pipeline::time::format_rfc3339_ms(i.start_ms + 1_000);
            for b in &i.response.block {
                lines.push(format!(
                    r#"{{"action":"block","held":false,"subject_kind":"source","source":"{b}","detected_at":"{at}"}}"#
                ));
            }
            for (action, list) in [
                ("notify", &i.response.notify),
                ("quarantine", &i.response.quarantine),
            ] {
                for v in list {
                    lines.push(format!(
                        r#"{{"action":"{action}","held":false,"subject_kind":"instance","instance_id":"{v}","detected_at":"{at}"}}"#
                    ));
                }
            }
        }
        let (commands, bad) = read_commands(&lines.join("\n"));
        assert_eq!(bad, 0);
        let r = IncidentJudge::new(truth).judge(&commands, bad);
        for k in &r.kinds {
            assert_eq!(k.detected, k.incidents, "{k:?}");
            assert_eq!(k.responded_as_expected, k.incidents, "{k:?}");
            assert_eq!(k.time_to_detect_p95_secs, Some(1.0));
        }
        assert_eq!(r.false_responses.quarantines, 0);
        assert_eq!(r.false_responses.benign_blocks, 0);
        assert!(r.unmatched.is_empty(), "{:?}", r.unmatched);
    }
}
