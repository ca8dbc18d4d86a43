//! The remote peer of an sshd connection (its address, or the host name sshd
//! logged), as a compact key for windows and policy. Called `Peer`, not
//! `Source`, because a consumer's source is where records come from
//! (Kinesis or Kafka).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnet::IpNet;

/// A peer address, or a host name where sshd logged a resolved name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Peer {
    Ip(IpAddr),
    Name(Box<str>),
}

impl Peer {
    /// Parses a classifier's address text. IPv4 octets with leading zeros are
    /// read as decimal (`192.030.0.6` is 192.30.0.6), as sshd prints what
    /// the resolver accepted; IPv4-mapped IPv6 becomes IPv4.
    pub fn parse(text: &str) -> Option<Peer> {
        if let Some(v4) = crate::classify::addr::parse_ipv4(text) {
            return Some(Peer::Ip(IpAddr::V4(Ipv4Addr::from(v4))));
        }
        if let Ok(v6) = text.parse::<Ipv6Addr>() {
            return Some(Peer::Ip(match v6.to_ipv4_mapped() {
                Some(v4) => IpAddr::V4(v4),
                None => IpAddr::V6(v6),
            }));
        }
        crate::classify::addr::is_hostname(text)
            .then(|| Peer::Name(text.to_ascii_lowercase().into()))
    }

    pub fn ip(&self) -> Option<IpAddr> {
        match self {
            Peer::Ip(ip) => Some(*ip),
            Peer::Name(_) => None,
        }
    }
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Peer::Ip(IpAddr::V4(v4)) => f.pad(Dotted::new(*v4, None).as_str()),
            Peer::Ip(ip) => ip.fmt(f),
            Peer::Name(n) => f.write_str(n),
        }
    }
}

/// An IPv4 address (and prefix length) as text, written digit by digit.
/// Commands, report rows and suppressed decisions name thousands of
/// sources; std's `Ipv4Addr` display runs each octet through the general
/// formatting machinery.
struct Dotted {
    buf: [u8; 18],
    len: usize,
}

impl Dotted {
    fn new(addr: Ipv4Addr, prefix: Option<u8>) -> Dotted {
        let mut d = Dotted {
            buf: [0; 18],
            len: 0,
        };
        for (i, octet) in addr.octets().into_iter().enumerate() {
            if i > 0 {
                d.push(b'.');
            }
            d.number(octet);
        }
        if let Some(p) = prefix {
            d.push(b'/');
            d.number(p);
        }
        d
    }

    fn number(&mut self, n: u8) {
        if n >= 100 {
            self.push(b'0' + n / 100);
        }
        if n >= 10 {
            self.push(b'0' + n / 10 % 10);
        }
        self.push(b'0' + n % 10);
    }

    fn push(&mut self, c: u8) {
        // 15 bytes of address and 3 of prefix at most: never past the end.
        if let Some(b) = self.buf.get_mut(self.len) {
            *b = c;
            self.len += 1;
        }
    }

    fn as_str(&self) -> &str {
        // Only ASCII digits, dots and a slash were written.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or_default()
    }
}

impl serde::Serialize for Peer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

/// How sources are grouped into the networks rules count by: IPv4 and IPv6
/// prefix lengths. One attacker rotating addresses inside an IPv6 /64 (what
/// one customer is usually given) is one network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerGrouping {
    pub v4_prefix: u8,
    pub v6_prefix: u8,
}

impl Default for PeerGrouping {
    fn default() -> Self {
        PeerGrouping {
            v4_prefix: 32,
            v6_prefix: 64,
        }
    }
}

impl PeerGrouping {
    /// The network `peer` is counted in. Host names stay host names.
    pub fn network(&self, peer: &Peer) -> PeerNet {
        match peer {
            Peer::Ip(ip) => {
                let len = match ip {
                    IpAddr::V4(_) => self.v4_prefix.min(32),
                    IpAddr::V6(_) => self.v6_prefix.min(128),
                };
                // In range by the `min` above, so the error arm is unreachable;
                // a full-length network is the address itself.
                let net = IpNet::new(*ip, len)
                    .map(|n| n.trunc())
                    .unwrap_or_else(|_| IpNet::from(*ip));
                PeerNet::Net(net)
            }
            Peer::Name(n) => PeerNet::Name(n.clone()),
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if !(8..=32).contains(&self.v4_prefix) {
            return Err(format!(
                "IPv4 source prefix /{} is not between /8 and /32",
                self.v4_prefix
            ));
        }
        if !(16..=128).contains(&self.v6_prefix) {
            return Err(format!(
                "IPv6 source prefix /{} is not between /16 and /128",
                self.v6_prefix
            ));
        }
        Ok(())
    }
}

/// A source as rules count it: an address's network (a CIDR), or a host name.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum PeerNet {
    Net(IpNet),
    Name(Box<str>),
}

impl PeerNet {
    pub fn contains(&self, peer: &Peer) -> bool {
        match (self, peer) {
            (PeerNet::Net(n), Peer::Ip(ip)) => n.contains(ip),
            (PeerNet::Name(a), Peer::Name(b)) => a == b,
            _ => false,
        }
    }
}

impl fmt::Display for PeerNet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PeerNet::Net(IpNet::V4(n)) => {
                f.pad(Dotted::new(n.addr(), Some(n.prefix_len())).as_str())
            }
            PeerNet::Net(n) => n.fmt(f),
            PeerNet::Name(n) => f.write_str(n),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_by_prefix_and_names_the_cidr() {
        let g = PeerGrouping::default();
        let net = |s: &str| g.network(&Peer::parse(s).unwrap()).to_string();
        assert_eq!(net("203.0.113.9"), "203.0.113.9/32");
        assert_eq!(net("2001:db8:1:2:aaaa::1"), "2001:db8:1:2::/64");
        assert_eq!(net("2001:db8:1:2:ffff::9"), "2001:db8:1:2::/64");
        assert_ne!(net("2001:db8:1:3::1"), net("2001:db8:1:2::1"));
        assert_eq!(net("::ffff:10.0.0.1"), "10.0.0.1/32");
        assert_eq!(net("example.com"), "example.com");
        let wide = PeerGrouping {
            v4_prefix: 24,
            v6_prefix: 48,
        };
        let n = wide.network(&Peer::parse("198.51.100.77").unwrap());
        assert_eq!(n.to_string(), "198.51.100.0/24");
        assert!(n.contains(&Peer::parse("198.51.100.1").unwrap()));
        assert!(!n.contains(&Peer::parse("198.51.101.1").unwrap()));
        assert!(PeerGrouping {
            v4_prefix: 33,
            v6_prefix: 64
        }
        .validate()
        .is_err());
        assert!(PeerGrouping {
            v4_prefix: 32,
            v6_prefix: 0
        }
        .validate()
        .is_err());
        assert!(g.validate().is_ok());
    }

    #[test]
    fn ipv4_text_is_what_std_writes() {
        for octets in [
            [0, 0, 0, 0],
            [255, 255, 255, 255],
            [1, 22, 100, 9],
            [10, 0, 99, 200],
            [203, 0, 113, 9],
        ] {
            let addr = Ipv4Addr::from(octets);
            let peer = Peer::Ip(IpAddr::V4(addr));
            assert_eq!(peer.to_string(), addr.to_string());
            assert_eq!(format!("{peer:>16}|"), format!("{addr:>16}|"));
            for len in [8, 24, 32] {
                let net = PeerNet::Net(IpNet::new(IpAddr::V4(addr), len).unwrap());
                // `IpNet`'s own display, which writes the address by std's.
                let theirs = match &net {
                    PeerNet::Net(n) => n.to_string(),
                    PeerNet::Name(n) => n.to_string(),
                };
                assert_eq!(net.to_string(), theirs);
            }
        }
    }

    #[test]
    fn parses_and_normalises() {
        assert_eq!(
            Peer::parse("192.030.0.6").unwrap().to_string(),
            "192.30.0.6"
        );
        assert_eq!(
            Peer::parse("::ffff:1.2.3.4").unwrap().to_string(),
            "1.2.3.4"
        );
        assert_eq!(
            Peer::parse("aaaa:bbbb:cccc:1234::1:1").unwrap().to_string(),
            "aaaa:bbbb:cccc:1234::1:1"
        );
        assert_eq!(
            Peer::parse("Example.COM"),
            Some(Peer::Name("example.com".into()))
        );
        assert_eq!(Peer::parse("1.2.3.256"), None);
        assert_eq!(Peer::parse("from"), Some(Peer::Name("from".into())));
        assert_eq!(Peer::parse("a b"), None);
        for bad in [
            "1.2.3",
            "1.2.3.4.5",
            "1..2.3",
            "1.2.3.",
            ".1.2.3",
            "1.2.3.1000",
            "300.1.1.1",
        ] {
            assert!(!matches!(Peer::parse(bad), Some(Peer::Ip(_))), "{bad}");
        }
    }
}
