//! Lines of current OpenSSH (9.x, `sshd-session` since 9.8, per-source
//! penalties) that the fail2ban corpus predates, through the prefix parser
//! and both classifiers.

use sshwarden_pipeline::classify::{oracle, scanner, Kind, Signal};
use sshwarden_pipeline::prefix::parse_line;

fn check(line: &str, kind: Kind, source: Option<&str>, signal: Option<Signal>) {
    let l = parse_line(line).unwrap_or_else(|| panic!("not read as sshd's: {line}"));
    let s = scanner::classify(l.message).unwrap_or_else(|| panic!("unclassified: {line}"));
    assert_eq!(
        Some(s),
        oracle::classify(l.message),
        "scanner and oracle differ: {line}"
    );
    assert_eq!(
        (s.kind, s.source, s.signal()),
        (kind, source, signal),
        "{line}"
    );
}

#[test]
fn openssh_9_lines() {
    let p = "2026-11-29T10:00:00.123456+00:00 ip-10-0-1-23 sshd-session[4242]:";
    check(
        &format!("{p} Invalid user admin from 203.0.113.5 port 50000"),
        Kind::InvalidUser,
        Some("203.0.113.5"),
        Some(Signal::InvalidUser),
    );
    check(
        &format!("{p} Connection closed by invalid user admin 203.0.113.5 port 50000 [preauth]"),
        Kind::ConnectionClosed,
        Some("203.0.113.5"),
        Some(Signal::Disconnect),
    );
    check(
        &format!(
            "{p} Connection closed by authenticating user root 203.0.113.5 port 50001 [preauth]"
        ),
        Kind::ConnectionClosed,
        Some("203.0.113.5"),
        Some(Signal::InvalidKey),
    );
    check(
        &format!("{p} Timeout before authentication for 203.0.113.5 port 50002"),
        Kind::LoginTimeout,
        Some("203.0.113.5"),
        Some(Signal::Protocol),
    );
    check(
        &format!("{p} Failed publickey for invalid user x from 2001:db8:1:2:: port 22 ssh2: ED25519 SHA256:abc"),
        Kind::FailedPublickey,
        Some("2001:db8:1:2::"),
        Some(Signal::InvalidKey),
    );
    // the listener (sshd, not sshd-session) logs penalties and MaxStartups drops
    let l = "2026-11-29T10:00:01+00:00 ip-10-0-1-23 sshd[1000]:";
    check(
        &format!("{l} drop connection #0 from [203.0.113.5]:50003 on [10.0.1.23]:22 penalty: failed authentication"),
        Kind::Penalty,
        Some("203.0.113.5"),
        Some(Signal::Protocol),
    );
    check(
        &format!("{l} drop connection #3 from [2001:db8::9]:50004 on [2001:db8::1]:22 penalty: connections without attempting authentication"),
        Kind::Penalty,
        Some("2001:db8::9"),
        Some(Signal::Protocol),
    );
    check(
        &format!(
            "{l} drop connection #10 from [203.0.113.6]:50005 on [10.0.1.23]:22 past MaxStartups"
        ),
        Kind::MaxStartupsDrop,
        Some("203.0.113.6"),
        Some(Signal::Protocol),
    );
    check(
        &format!("{p} Accepted publickey for ec2-user from 198.51.100.7 port 40000 ssh2: ECDSA SHA256:xyz"),
        Kind::Accepted,
        Some("198.51.100.7"),
        None,
    );
}
