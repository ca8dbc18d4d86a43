//! The remote peer of an sshd connection (its address, or the host name sshd
//! logged), as a compact key for windows and policy. Called `Peer`, not
//! `Source`, because a consumer's source is where records come from
//! (Kinesis or Kafka).

use std::fmt;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

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
            Peer::Ip(ip) => ip.fmt(f),
            Peer::Name(n) => f.write_str(n),
        }
    }
}

impl serde::Serialize for Peer {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
