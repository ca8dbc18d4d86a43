//! The attacks a fleet can be put under, as configured: what each kind
//! does, where and how fast. How each is written into the logs is in
//! [`super::attack`].

use serde::{Deserialize, Serialize};

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
    /// Password guessing against `root` on an instance that allows
    /// passwords, ending in `Accepted password for root` and a session (a
    /// compromise).
    BruteForceThenSuccess {
        instance: usize,
        offset_ms: i64,
        failures: u32,
        per_second: f64,
    },
    /// Usernames crafted to misattribute: `x from 10.0.0.5 port 22`,
    /// `x from D port 22 ssh2: RSA SHA256:... ID` and the like, from one real
    /// address. The decoy addresses (see [`crate::GroundTruth::decoy_addresses`])
    /// must never be counted; some lines are deliberately ambiguous.
    HostileUsernames {
        instance: usize,
        offset_ms: i64,
        attempts: u32,
        per_second: f64,
    },
    /// One address, one guessing attempt on each of `hosts` instances of the
    /// fleet (chosen by the seed), `interval_ms` apart.
    Spray {
        offset_ms: i64,
        hosts: usize,
        interval_ms: i64,
    },
    /// A brute force whose every connection comes from a new address inside
    /// one IPv6 /64, as a host rotating its interface id does.
    Ipv6Rotation {
        instance: usize,
        offset_ms: i64,
        attempts: u32,
        per_second: f64,
    },
    /// An instance whose clock runs `skew_ms` ahead (every line it writes is
    /// stamped that much late in the future, from the start of the
    /// simulation), under a fast brute force from one address.
    SkewedClock {
        instance: usize,
        skew_ms: i64,
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
            Scenario::Spray { .. } => "spray",
            Scenario::Ipv6Rotation { .. } => "ipv6_rotation",
            Scenario::SkewedClock { .. } => "skewed_clock",
        }
    }

    /// The instance the scenario attacks; `None` for a botnet or a spray
    /// (several).
    pub(super) fn target(&self) -> Option<usize> {
        match *self {
            Scenario::Ipv6Rotation { instance, .. }
            | Scenario::SkewedClock { instance, .. }
            | Scenario::FastBruteForce { instance, .. }
            | Scenario::SlowBruteForce { instance, .. }
            | Scenario::UserEnumeration { instance, .. }
            | Scenario::BruteForceThenSuccess { instance, .. }
            | Scenario::HostileUsernames { instance, .. } => Some(instance),
            Scenario::Botnet { .. } | Scenario::Spray { .. } => None,
        }
    }

    /// When the scenario starts, from the start of the simulation.
    pub(super) fn offset_ms(&self) -> i64 {
        match *self {
            Scenario::FastBruteForce { offset_ms, .. }
            | Scenario::SlowBruteForce { offset_ms, .. }
            | Scenario::UserEnumeration { offset_ms, .. }
            | Scenario::Botnet { offset_ms, .. }
            | Scenario::BruteForceThenSuccess { offset_ms, .. }
            | Scenario::HostileUsernames { offset_ms, .. }
            | Scenario::Spray { offset_ms, .. }
            | Scenario::Ipv6Rotation { offset_ms, .. }
            | Scenario::SkewedClock { offset_ms, .. } => offset_ms,
        }
    }
}
