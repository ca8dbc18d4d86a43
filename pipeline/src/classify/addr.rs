//! Address, port and tail-reading helpers shared by the scanner and the oracle.

use std::net::Ipv6Addr;

/// `tok` as a peer IP address: IPv4 (leading zeros accepted) or IPv6. An
/// IPv4-mapped IPv6 address is returned as its IPv4 part.
pub fn ip(tok: &str) -> Option<&str> {
    if is_ipv4(tok) {
        return Some(tok);
    }
    if tok.len() > 45 || !tok.contains(':') {
        return None;
    }
    if let Some(v4) = tok
        .strip_prefix("::ffff:")
        .or_else(|| tok.strip_prefix("::FFFF:"))
    {
        if is_ipv4(v4) {
            return Some(v4);
        }
    }
    tok.parse::<Ipv6Addr>().ok().map(|_| tok)
}

/// `tok` as an IP address or, where sshd prints a resolved name, a host name.
pub fn host(tok: &str) -> Option<&str> {
    ip(tok).or_else(|| is_hostname(tok).then_some(tok))
}

pub fn is_ipv4(tok: &str) -> bool {
    parse_ipv4(tok).is_some()
}

/// Dotted-quad IPv4, octets of one to three decimal digits (leading zeros
/// read as decimal), in one pass: this runs for nearly every sshd line.
pub fn parse_ipv4(tok: &str) -> Option<[u8; 4]> {
    let b = tok.as_bytes();
    if b.len() < 7 || b.len() > 15 {
        return None;
    }
    let mut octets = [0u8; 4];
    let (mut i, mut value, mut digits) = (0usize, 0u32, 0u32);
    for &c in b {
        match c {
            b'0'..=b'9' if digits < 3 => {
                value = value * 10 + u32::from(c - b'0');
                digits += 1;
            }
            b'.' if digits > 0 && i < 3 => {
                octets[i] = u8::try_from(value).ok()?;
                i += 1;
                value = 0;
                digits = 0;
            }
            _ => return None,
        }
    }
    if i != 3 || digits == 0 {
        return None;
    }
    octets[3] = u8::try_from(value).ok()?;
    Some(octets)
}

pub fn is_hostname(tok: &str) -> bool {
    let b = tok.as_bytes();
    !b.is_empty()
        && b.len() <= 253
        && b[0] != b'-'
        && b[0] != b'.'
        && b.iter().any(u8::is_ascii_alphabetic)
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'_')
}

pub fn port(tok: &str) -> Option<u16> {
    if tok.is_empty() || tok.len() > 5 || !tok.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    tok.parse().ok()
}

/// Result of reading an attacker-influenced message for its anchored address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reading<T> {
    None,
    One(T),
    Many,
}

impl<T> Reading<T> {
    pub fn push(&mut self, t: T) {
        *self = match self {
            Reading::None => Reading::One(t),
            _ => Reading::Many,
        };
    }
}

/// Positions of `from ` in `s` that start `s` or follow a space: the
/// candidate tails of most shapes. The searcher is built once; building it
/// per line showed in the profile.
pub fn from_positions(s: &str) -> impl Iterator<Item = usize> + '_ {
    static FROM: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new("from "));
    FROM.find_iter(s.as_bytes())
        .filter(move |&p| p == 0 || s.as_bytes()[p - 1] == b' ')
}

// Byte searches with SIMD memchr: std's `str::find(char)` and
// `split_once(&str)` showed in the `scan` profile. The bytes searched for are
// ASCII, so the indices found are char boundaries.

/// `s` split at its first space (the space dropped).
#[inline]
pub fn split_space(s: &str) -> Option<(&str, &str)> {
    memchr::memchr(b' ', s.as_bytes()).map(|i| (&s[..i], &s[i + 1..]))
}

/// `s` split at its last space (the space dropped).
#[inline]
pub fn rsplit_space(s: &str) -> Option<(&str, &str)> {
    memchr::memrchr(b' ', s.as_bytes()).map(|i| (&s[..i], &s[i + 1..]))
}

#[inline]
pub fn find_byte(s: &str, b: u8) -> Option<usize> {
    memchr::memchr(b, s.as_bytes())
}

#[inline]
pub fn find_either(s: &str, a: u8, b: u8) -> Option<usize> {
    memchr::memchr2(a, b, s.as_bytes())
}

/// `s` split around its last ` port `.
pub fn rsplit_port(s: &str) -> Option<(&str, &str)> {
    static PORT: std::sync::LazyLock<memchr::memmem::FinderRev<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::FinderRev::new(" port "));
    PORT.rfind(s.as_bytes()).map(|i| (&s[..i], &s[i + 6..]))
}

/// The user part before a candidate at `p` (which follows a space, or is 0).
pub fn before(s: &str, p: usize) -> &str {
    if p == 0 {
        ""
    } else {
        &s[..p - 1]
    }
}
