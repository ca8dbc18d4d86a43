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
    let b = tok.as_bytes();
    if b.len() < 7 || b.len() > 15 {
        return false;
    }
    let mut parts = 0;
    for part in b.split(|&c| c == b'.') {
        parts += 1;
        if part.is_empty() || part.len() > 3 || !part.iter().all(u8::is_ascii_digit) {
            return false;
        }
        let v = part.iter().fold(0u32, |v, &c| v * 10 + u32::from(c - b'0'));
        if v > 255 {
            return false;
        }
    }
    parts == 4
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

/// Positions of `needle` in `s` that start `s` or follow a space.
pub fn word_positions<'s>(s: &'s str, needle: &'s str) -> impl Iterator<Item = usize> + 's {
    memchr::memmem::find_iter(s.as_bytes(), needle.as_bytes())
        .filter(move |&p| p == 0 || s.as_bytes()[p - 1] == b' ')
}

/// The user part before a candidate at `p` (which follows a space, or is 0).
pub fn before(s: &str, p: usize) -> &str {
    if p == 0 {
        ""
    } else {
        &s[..p - 1]
    }
}
