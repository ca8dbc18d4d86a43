//! The generator's randomness and vocabulary: independent seeded streams
//! (so adding a scenario does not change the benign traffic), Poisson gaps,
//! public addresses, key fingerprints and the user names attackers try.

use std::net::{IpAddr, Ipv4Addr};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

/// SplitMix64's finaliser: derives independent stream seeds.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What a random stream is for. Each job draws from its own streams, so
/// adding a scenario or an instance leaves the others' draws unchanged; the
/// values are part of what a seed means and must not change.
#[derive(Clone, Copy)]
pub(super) enum Purpose {
    Instances = 0,
    /// The scanners' and the administrators' addresses.
    AddressPools = 1,
    Benign = 2,
    Scanning = 3,
    Scenario = 4,
    /// A day's scanner sessions (one stream per instance).
    Background = 5,
    /// A day's benign mistakes: administrators' typos, stale automation keys.
    Mistakes = 6,
    /// A day's incidents: kinds, victims, times.
    Incidents = 7,
}

/// The random stream `index` of `purpose` for `seed`.
pub(super) fn stream(seed: u64, purpose: Purpose, index: u64) -> StdRng {
    let kind = purpose as u64;
    StdRng::seed_from_u64(mix(mix(seed ^ kind.wrapping_mul(0x100_0000_01b3)) ^ index))
}

/// Accounts attackers and scanners try that exist on no instance.
pub(super) const INVALID_USERS: &[&str] = &[
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
const KEY_TYPES: &[&str] = &["ED25519", "RSA", "ECDSA"];
/// First octets of routed, non-reserved IPv4 space, for attacker addresses.
const PUBLIC_FIRST_OCTETS: &[u8] = &[
    5, 27, 36, 43, 45, 46, 49, 58, 59, 61, 77, 80, 89, 91, 92, 101, 103, 106, 110, 112, 114, 115,
    116, 117, 118, 119, 121, 122, 124, 134, 138, 139, 141, 143, 146, 147, 150, 154, 157, 159, 161,
    164, 165, 167, 170, 171, 175, 176, 178, 180, 182, 183, 185, 188, 190, 193, 194, 195, 200, 201,
    202, 206, 209, 210, 211, 212, 213, 218, 220, 221, 222,
];

/// A uniformly chosen item of a non-empty slice.
pub(super) fn pick<'a, T>(rng: &mut StdRng, items: &'a [T]) -> &'a T {
    &items[rng.random_range(0..items.len())]
}

/// Start of the `i`-th of a series at `per_second`.
pub(super) fn nth(t0: i64, i: u32, per_second: f64) -> i64 {
    t0.saturating_add((f64::from(i) * 1000.0 / per_second) as i64)
}

/// Exponential inter-arrival time for a Poisson process of `per_ms`.
pub(super) fn exp_gap(rng: &mut StdRng, per_ms: f64) -> i64 {
    let u: f64 = rng.random::<f64>();
    (-(1.0 - u).ln() / per_ms).ceil().max(1.0) as i64
}

/// An address of the public internet, as scanners and attackers have.
pub(super) fn public_ipv4(rng: &mut StdRng) -> IpAddr {
    IpAddr::V4(Ipv4Addr::new(
        *pick(rng, PUBLIC_FIRST_OCTETS),
        rng.random_range(0..=255),
        rng.random_range(0..=255),
        rng.random_range(1..=254),
    ))
}

/// A random `SHA256:` key fingerprint.
pub(super) fn fingerprint(rng: &mut StdRng) -> String {
    const B64: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let fp: String = (0..43)
        .map(|_| char::from(B64[rng.random_range(0..B64.len())]))
        .collect();
    format!("SHA256:{fp}")
}

/// A key type and fingerprint, as `Accepted publickey` lines show them.
pub(super) fn key(rng: &mut StdRng) -> String {
    let t = *pick(rng, KEY_TYPES);
    format!("{t} {}", fingerprint(rng))
}
