//! Background internet scanning: what any instance with port 22 open to the
//! world sees, single connections from a shared pool of scanner addresses.

use std::net::IpAddr;

use rand::rngs::StdRng;
use rand::Rng;

use super::config::FleetConfig;
use super::generator::Gen;
use super::random::{pick, public_ipv4, stream, Purpose, INVALID_USERS};
use crate::sshd;

/// The scanners' addresses, shared by the whole fleet.
pub(super) fn scanner_pool(config: &FleetConfig) -> Vec<IpAddr> {
    let mut rng = stream(config.seed, Purpose::AddressPools, 0);
    let n = (config.instances * 4).clamp(64, 20_000);
    (0..n).map(|_| public_ipv4(&mut rng)).collect()
}

impl Gen<'_> {
    /// Background internet scanning: single connections from a shared pool of
    /// scanner addresses.
    pub(super) fn scan(&mut self, rng: &mut StdRng, host: usize, scanners: &[IpAddr]) {
        let per_ms = self.config.scan_probes_per_instance_per_min / 60_000.0;
        self.poisson(rng, per_ms, |g, rng, t| g.probe(rng, host, t, scanners));
    }

    /// One probe at `t` from an address of the pool.
    fn probe(&mut self, rng: &mut StdRng, host: usize, t: i64, scanners: &[IpAddr]) {
        let peer = *pick(rng, scanners);
        self.probe_from(rng, host, t, peer);
    }

    /// One scanner connection from `peer` at `t`: protocol noise, a
    /// pre-auth disconnect, or one guess (a made-up user, or `root`) with
    /// the lines sshd writes for it.
    pub(super) fn probe_from(&mut self, rng: &mut StdRng, host: usize, t: i64, peer: IpAddr) {
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
