//! Attack scenarios written into the logs: each [`Scenario`] from its own
//! random stream, marked with its index so the truth can say which scenario
//! contributed to which detection.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use rand::rngs::StdRng;
use rand::Rng;

use super::generator::{Conn, Gen};
use super::random::{fingerprint, key, nth, pick, public_ipv4, stream, Purpose, INVALID_USERS};
use super::scenario::Scenario;
use crate::rule_truth::Compromise;
use crate::sshd::{self, Account};

impl Gen<'_> {
    /// `count` connections to `instance` from one new public address,
    /// `per_second` of them a second from `t0`; `each` writes what happens
    /// on the i-th.
    #[allow(clippy::too_many_arguments)]
    fn burst(
        &mut self,
        rng: &mut StdRng,
        instance: usize,
        t0: i64,
        count: u32,
        per_second: f64,
        scenario: Option<usize>,
        mut each: impl FnMut(&mut Self, &mut StdRng, &mut Conn, u32),
    ) {
        let peer = public_ipv4(rng);
        for i in 0..count {
            let mut c = self.open(rng, instance, peer, nth(t0, i, per_second), scenario);
            each(self, rng, &mut c, i);
        }
    }

    pub(super) fn scenario(&mut self, index: usize, s: &Scenario) {
        let mut rng = stream(self.config.seed, Purpose::Scenario, index as u64);
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
                self.burst(
                    rng,
                    instance,
                    at(offset_ms),
                    attempts,
                    per_second,
                    sc,
                    |g, rng, c, _| g.guess(rng, c, 0.2),
                );
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
                    self.say(&mut c, sshd::failed_password("root", false, peer, p));
                    c.t += 150;
                    self.say(
                        &mut c,
                        sshd::received_disconnect(peer, p, 11, "Bye Bye", true),
                    );
                    c.t += 1;
                    self.say(
                        &mut c,
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
                let t0 = at(offset_ms);
                self.burst(
                    rng,
                    instance,
                    t0,
                    usernames,
                    per_second,
                    sc,
                    |g, rng, c, i| {
                        let base = INVALID_USERS[i as usize % INVALID_USERS.len()];
                        let user = if (i as usize) < INVALID_USERS.len() {
                            base.to_owned()
                        } else {
                            format!("{base}{}", i as usize / INVALID_USERS.len())
                        };
                        let (peer, p) = (c.peer, c.port);
                        g.after(rng, c, 20, 200, sshd::invalid_user(&user, peer, p));
                        g.after(
                            rng,
                            c,
                            50,
                            400,
                            sshd::closed_by_user(Account::Invalid, &user, peer, p, true),
                        );
                    },
                );
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
                let order = pick_hosts(rng, self.instances.len(), hosts);
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
                let (user, uid) = ("root", 0);
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
            Scenario::Spray {
                offset_ms,
                hosts,
                interval_ms,
            } => {
                let order = pick_hosts(rng, self.instances.len(), hosts);
                let peer = public_ipv4(rng);
                let t0 = at(offset_ms);
                for (i, host) in (0i64..).zip(order) {
                    let mut c = self.open(rng, host, peer, t0 + i * interval_ms, sc);
                    self.guess(rng, &mut c, 0.5);
                }
            }
            Scenario::Ipv6Rotation {
                instance,
                offset_ms,
                attempts,
                per_second,
            } => {
                let prefix = public_ipv6_prefix(rng);
                let t0 = at(offset_ms);
                for i in 0..attempts {
                    let peer = in_prefix(rng, prefix);
                    let mut c = self.open(rng, instance, peer, nth(t0, i, per_second), sc);
                    self.guess(rng, &mut c, 0.3);
                }
            }
            Scenario::SkewedClock {
                instance,
                offset_ms,
                attempts,
                per_second,
                ..
            } => {
                // The skew itself is applied to every line of the instance
                // by the writer (see `Gen::new`).
                self.burst(
                    rng,
                    instance,
                    at(offset_ms),
                    attempts,
                    per_second,
                    sc,
                    |g, rng, c, _| g.guess(rng, c, 0.3),
                );
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
                    self.leave_preauth(rng, &mut c, Account::Invalid, &user, 400);
                }
            }
        }
    }
}

/// `count` distinct instances of `0..fleet`, by a seeded partial shuffle.
fn pick_hosts(rng: &mut StdRng, fleet: usize, count: usize) -> Vec<usize> {
    let mut order: Vec<usize> = (0..fleet).collect();
    for i in 0..count.min(order.len()) {
        let j = rng.random_range(i..order.len());
        order.swap(i, j);
    }
    order.truncate(count);
    order
}

/// A /64 of a provider's global unicast space (`2a0x:....:....:..../64`).
fn public_ipv6_prefix(rng: &mut StdRng) -> u128 {
    let top: u128 = 0x2a00 | rng.random_range(0..0x10);
    let rest: u128 = u128::from(rng.random::<u64>() & 0x0000_ffff_ffff_ffff);
    (top << 112) | (rest << 64)
}

/// A random interface id inside the /64 `prefix`.
fn in_prefix(rng: &mut StdRng, prefix: u128) -> IpAddr {
    IpAddr::V6(Ipv6Addr::from(prefix | u128::from(rng.random::<u64>())))
}
