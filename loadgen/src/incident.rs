//! Incident-level ground truth: what really happened to a simulated fleet,
//! told the way a security team would tell it, and what a careful operator
//! would have done about it.
//!
//! Each attack scenario of a fleet is one [`Incident`]: its kind, the
//! instances it touched, the addresses it came from (and the prefix that
//! covers them), when its first and last lines were stamped, whether it got
//! in, and the [`Response`] it calls for (block the source; notify for a
//! distributed botnet; quarantine the victim, and block, for a compromise).
//! The truth is read off the generated lines (each carries its scenario and
//! peer), never off a detector's rules or thresholds. [`IncidentTruth`] adds
//! the addresses nobody must block (administrators, automation), the
//! background scanners, and which instances were really compromised; it is
//! what `sshwarden-loadgen day` writes as its incidents file and what
//! [`crate::incident_score`] judges commands by.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use sshwarden_pipeline::time::format_rfc3339_ms;

use crate::fleet::{Fleet, Scenario};

/// Version of the incidents file's shape.
pub const INCIDENTS_VERSION: u32 = 1;

/// What kind of attack an incident is (the scenario that produced it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum IncidentKind {
    FastBruteForce,
    SlowBruteForce,
    UserEnumeration,
    Spray,
    Botnet,
    Ipv6Rotation,
    /// Password guessing that ends in an accepted login: a compromise.
    SucceededBruteForce,
    /// A brute force on an instance whose clock runs ahead.
    SkewedClock,
    /// User names crafted to make a parser count someone else.
    HostileUsernames,
}

impl IncidentKind {
    pub fn of(s: &Scenario) -> IncidentKind {
        match s {
            Scenario::FastBruteForce { .. } => IncidentKind::FastBruteForce,
            Scenario::SlowBruteForce { .. } => IncidentKind::SlowBruteForce,
            Scenario::UserEnumeration { .. } => IncidentKind::UserEnumeration,
            Scenario::Botnet { .. } => IncidentKind::Botnet,
            Scenario::BruteForceThenSuccess { .. } => IncidentKind::SucceededBruteForce,
            Scenario::HostileUsernames { .. } => IncidentKind::HostileUsernames,
            Scenario::Spray { .. } => IncidentKind::Spray,
            Scenario::Ipv6Rotation { .. } => IncidentKind::Ipv6Rotation,
            Scenario::SkewedClock { .. } => IncidentKind::SkewedClock,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            IncidentKind::FastBruteForce => "fast_brute_force",
            IncidentKind::SlowBruteForce => "slow_brute_force",
            IncidentKind::UserEnumeration => "user_enumeration",
            IncidentKind::Spray => "spray",
            IncidentKind::Botnet => "botnet",
            IncidentKind::Ipv6Rotation => "ipv6_rotation",
            IncidentKind::SucceededBruteForce => "succeeded_brute_force",
            IncidentKind::SkewedClock => "skewed_clock",
            IncidentKind::HostileUsernames => "hostile_usernames",
        }
    }
}

/// The response a careful operator would choose for an incident.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Source prefixes (CIDR) to block.
    pub block: Vec<String>,
    /// Instances whose owners should be told.
    pub notify: Vec<String>,
    /// Instances to isolate.
    pub quarantine: Vec<String>,
}

/// One attack, as it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Incident {
    /// The scenario's index in the fleet's configuration.
    pub id: usize,
    pub kind: IncidentKind,
    /// Instances it sent lines to (sorted).
    pub victims: Vec<String>,
    /// Every address it came from (sorted).
    pub attackers: Vec<IpAddr>,
    /// The one prefix covering every attacker address, when there is one
    /// an operator would block: the address itself (/32, /128), or the /64
    /// of a rotation. `None` for a botnet.
    pub prefix: Option<String>,
    /// Event time its first line was stamped with (epoch ms): its first evidence.
    pub start_ms: i64,
    /// Event time of its last line.
    pub end_ms: i64,
    pub start: String,
    pub end: String,
    /// Connections it made.
    pub connections: usize,
    /// It logged in.
    pub succeeded: bool,
    pub response: Response,
}

/// An address that must never be blocked, and why it shows up in the logs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BenignAddress {
    pub address: IpAddr,
    /// `admin` (logins, typos) or `automation` (a job with a stale key).
    pub role: String,
}

/// The incidents file: what happened to a fleet, and who is innocent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentTruth {
    pub version: u32,
    pub seed: u64,
    /// The simulated span (epoch ms, end exclusive).
    pub start_ms: i64,
    pub end_ms: i64,
    pub instances: Vec<String>,
    /// Instances × days simulated: the denominator of false responses.
    pub instance_days: f64,
    pub incidents: Vec<Incident>,
    /// Instances an attacker logged in to (sorted).
    pub compromised_instances: Vec<String>,
    pub benign: Vec<BenignAddress>,
    /// The background scanners' addresses (none of them an incident's).
    pub scanner_addresses: Vec<IpAddr>,
    /// Addresses planted in attacker-controlled text; never anyone's.
    #[serde(default)]
    pub decoy_addresses: Vec<IpAddr>,
}

/// What the lines of one scenario add up to.
#[derive(Default)]
struct Seen {
    victims: BTreeSet<String>,
    attackers: BTreeSet<IpAddr>,
    first: Option<i64>,
    last: i64,
    connections: BTreeSet<(String, IpAddr, u16)>,
}

impl IncidentTruth {
    /// Reads the incidents off `fleet`'s lines. `benign` and `scanners` are
    /// the addresses the generator used for benign logins and mistakes and
    /// for background scanning.
    pub fn compute(fleet: &Fleet, benign: Vec<BenignAddress>, scanners: &[IpAddr]) -> Self {
        let config = &fleet.config;
        let mut seen: BTreeMap<usize, Seen> = BTreeMap::new();
        for e in fleet.events() {
            let Some(i) = e.scenario else { continue };
            let s = seen.entry(i).or_default();
            s.victims.insert(e.instance.clone());
            if let Some(a) = e.source {
                s.attackers.insert(a);
                if let Some(port) = port_of(&e.line) {
                    s.connections.insert((e.instance.clone(), a, port));
                }
            }
            s.first = Some(s.first.map_or(e.time_ms, |f| f.min(e.time_ms)));
            s.last = s.last.max(e.time_ms);
        }
        let compromises = &fleet.ground_truth().compromises;
        let mut incidents = Vec::new();
        for (id, s) in seen {
            let Some(scenario) = config.scenarios.get(id) else {
                continue;
            };
            let (Some(start_ms), false) = (s.first, s.attackers.is_empty()) else {
                continue;
            };
            let kind = IncidentKind::of(scenario);
            let attackers: Vec<IpAddr> = s.attackers.into_iter().collect();
            let victims: Vec<String> = s.victims.into_iter().collect();
            let prefix = match kind {
                IncidentKind::Botnet => None,
                IncidentKind::Ipv6Rotation => covering_64(&attackers),
                _ if attackers.len() == 1 => Some(IpNet::from(attackers[0]).to_string()),
                _ => None,
            };
            let compromised: Vec<String> = compromises
                .iter()
                .filter(|c| c.scenario == id)
                .map(|c| c.instance.clone())
                .collect();
            let succeeded = !compromised.is_empty();
            let mut response = Response::default();
            match kind {
                IncidentKind::Botnet => response.notify = victims.clone(),
                _ => {
                    response.block = prefix.iter().cloned().collect();
                    response.quarantine = compromised;
                }
            }
            incidents.push(Incident {
                id,
                kind,
                victims,
                attackers,
                prefix,
                start_ms,
                end_ms: s.last,
                start: format_rfc3339_ms(start_ms),
                end: format_rfc3339_ms(s.last),
                connections: s.connections.len(),
                succeeded,
                response,
            });
        }
        let attacker_set: BTreeSet<IpAddr> = incidents
            .iter()
            .flat_map(|i| i.attackers.iter().copied())
            .collect();
        let scanner_addresses: BTreeSet<IpAddr> = scanners
            .iter()
            .copied()
            .filter(|a| !attacker_set.contains(a))
            .collect();
        let compromised_instances: BTreeSet<String> =
            compromises.iter().map(|c| c.instance.clone()).collect();
        let end_ms = config.start_ms.saturating_add(config.duration_ms);
        IncidentTruth {
            version: INCIDENTS_VERSION,
            seed: config.seed,
            start_ms: config.start_ms,
            end_ms,
            instances: fleet.instances.iter().map(|i| i.id.clone()).collect(),
            instance_days: config.instances as f64 * config.duration_ms as f64 / 86_400_000.0,
            incidents,
            compromised_instances: compromised_instances.into_iter().collect(),
            benign,
            scanner_addresses: scanner_addresses.into_iter().collect(),
            decoy_addresses: fleet.ground_truth().decoy_addresses.clone(),
        }
    }
}

/// The /64 holding every address, if they are all IPv6 and share one.
fn covering_64(addresses: &[IpAddr]) -> Option<String> {
    let mut nets = addresses.iter().map(|a| match a {
        IpAddr::V6(v6) => ipnet::Ipv6Net::new(*v6, 64).ok().map(|n| n.trunc()),
        IpAddr::V4(_) => None,
    });
    let first = nets.next()??;
    for n in nets {
        if n? != first {
            return None;
        }
    }
    Some(first.to_string())
}

/// The client port a line names (`... port P`), to tell connections apart.
pub(crate) fn port_of(line: &str) -> Option<u16> {
    let at = line.find(" port ")?;
    let rest = &line[at + 6..];
    let end = rest
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(rest.len());
    rest[..end].parse().ok()
}
