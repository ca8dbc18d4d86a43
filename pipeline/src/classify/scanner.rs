//! The hot-path classifier: a hand-written scanner over the sshd message.
//!
//! Hand-written rather than a regex set because classification dominates the
//! pipeline's cost (docs/design.md measured 60 MB/s for regex captures against
//! 1,300 MB/s for a scanner): it dispatches on the first byte, compares fixed
//! server text with `starts_with`, and reads addresses from the anchored tail
//! as described in [`crate::classify`]. [`super::oracle`] states the same
//! shapes as regular expressions and is held equal to this on every input.

use super::addr::{
    before, find_byte, find_either, from_positions, host, ip, port, rsplit_port, rsplit_space,
    split_space, Reading,
};
use super::{Classified, Kind};

/// Classifies one sshd message (already stripped of its syslog prefix).
pub fn classify(message: &str) -> Option<Classified<'_>> {
    let m = message.trim_end_matches([' ', '\t', '\r', '\n']);
    let (m, preauth) = match m.strip_suffix(" [preauth]") {
        Some(rest) => (rest, true),
        None => (m, false),
    };
    let mut c = match *m.as_bytes().first()? {
        b'A' => {
            if let Some(r) = m.strip_prefix("Accepted ") {
                auth_attempt(Kind::Accepted, r)
            } else if let Some(r) = m.strip_prefix("Address ") {
                reverse_mapping(r)
            } else {
                None
            }
        }
        b'B' => m
            .strip_prefix("Bad protocol version identification '")
            .and_then(bad_protocol),
        b'C' => {
            if let Some(r) = m.strip_prefix("Connection closed by ") {
                closed(Kind::ConnectionClosed, r)
            } else if let Some(r) = m.strip_prefix("Connection reset by ") {
                closed(Kind::ConnectionClosed, r)
            } else if let Some(r) = m.strip_prefix("Connection from ") {
                connection_from(r)
            } else {
                None
            }
        }
        b'D' => {
            if let Some(r) = m.strip_prefix("Did not receive identification string from ") {
                with_addr_port(Kind::NoIdentification, r)
            } else if let Some(r) = m.strip_prefix("Disconnected from ") {
                closed(Kind::Disconnect, r)
            } else if let Some(r) =
                m.strip_prefix("Disconnecting: Too many authentication failures")
            {
                too_many_failures(r)
            } else if let Some(r) = m.strip_prefix("Disconnecting ") {
                user_addr_port_reason(r, Kind::Disconnect)
            } else {
                None
            }
        }
        b'F' => m
            .strip_prefix("Failed ")
            .and_then(|r| auth_attempt(Kind::FailedPassword, r)),
        b'I' => m.strip_prefix("Invalid user ").and_then(invalid_user),
        b'P' => {
            if let Some(r) = m.strip_prefix("PAM: ") {
                pam(r)
            } else if let Some(r) = m.strip_prefix("Postponed ") {
                auth_attempt(Kind::Postponed, r)
            } else {
                None
            }
        }
        b'R' => {
            if let Some(r) = m.strip_prefix("Received disconnect from ") {
                received_disconnect(r)
            } else if let Some(r) = m.strip_prefix("ROOT LOGIN REFUSED FROM ") {
                with_addr_port(Kind::RootLoginRefused, r)
            } else if m.starts_with("Read from socket failed: ") {
                Some(Classified::new(Kind::ProtocolError))
            } else {
                None
            }
        }
        b'S' => m.strip_prefix("SSH: Server;Ltype: ").and_then(audit_remote),
        b'M' => m
            .strip_prefix("Magic value check failed (")
            .and_then(magic_value),
        b'T' => m
            .strip_prefix("Timeout before authentication for ")
            .and_then(login_timeout),
        b'U' => {
            if let Some(r) = m.strip_prefix("User ") {
                not_allowed(r)
            } else if let Some(r) = m.strip_prefix("Unable to negotiate with ") {
                addr_port_colon(Kind::KexFailed, r)
            } else if m.starts_with("Unable to negotiate a key exchange method") {
                Some(Classified::new(Kind::KexFailed))
            } else {
                None
            }
        }
        b'b' => m
            .strip_prefix("banner exchange: Connection from ")
            .and_then(|r| addr_port_colon(Kind::BadProtocol, r)),
        b'd' => m
            .strip_prefix("drop connection #")
            .and_then(drop_connection),
        b'i' => m
            .strip_prefix("input_userauth_request: invalid user ")
            .map(|user| Classified {
                user: Some(user),
                invalid_user: true,
                ..Classified::new(Kind::InvalidUser)
            }),
        b'k' => m
            .starts_with("kex_exchange_identification: ")
            .then(|| Classified::new(Kind::BadProtocol)),
        b'm' => m
            .strip_prefix("maximum authentication attempts exceeded for ")
            .and_then(max_auth),
        b'n' => (m.starts_with("no matching ") && m.contains(" found"))
            .then(|| Classified::new(Kind::KexFailed)),
        b'p' => m
            .strip_prefix("pam_unix(sshd:auth): authentication failure;")
            .map(pam_unix),
        b'r' => {
            if let Some(r) = m.strip_prefix("refused connect from ") {
                refused_connect(r)
            } else if let Some(r) = m.strip_prefix("reverse mapping checking getaddrinfo for ") {
                reverse_mapping_bracketed(r)
            } else {
                None
            }
        }
        b's' => m
            .strip_prefix("ssh_dispatch_run_fatal: Connection from ")
            .and_then(|r| user_addr_port_reason(r, Kind::ProtocolError)),
        _ => None,
    }?;
    c.preauth = preauth;
    Some(c)
}

/// `ADDR` or `ADDR port N`, the whole of `s`.
fn addr_port_exact(s: &str) -> Option<(&str, Option<u16>)> {
    match split_space(s) {
        None => Some((ip(s)?, None)),
        Some((a, rest)) => Some((ip(a)?, Some(port(rest.strip_prefix("port ")?)?))),
    }
}

fn with_addr_port(kind: Kind, s: &str) -> Option<Classified<'_>> {
    let (source, port) = addr_port_exact(s)?;
    Some(Classified {
        source: Some(source),
        port,
        ..Classified::new(kind)
    })
}

/// `ADDR port N: REASON` with the address at the head.
fn addr_port_colon(kind: Kind, s: &str) -> Option<Classified<'_>> {
    let (a, rest) = s.split_once(" port ")?;
    let (p, _reason) = rest.split_once(':')?;
    Some(Classified {
        source: Some(ip(a)?),
        port: Some(port(p)?),
        ..Classified::new(kind)
    })
}

struct AuthTail<'a> {
    user: &'a str,
    source: &'a str,
    port: Option<u16>,
    rank: u8,
}

/// `Failed|Accepted|Postponed METHOD for [invalid user ]USER from ADDR[ port N[ sshV]][: INFO]`.
fn auth_attempt(base: Kind, s: &str) -> Option<Classified<'_>> {
    let (method, rest) = split_space(s)?;
    let rest = rest.strip_prefix("for ")?;
    let kind = match (base, method) {
        (Kind::FailedPassword, "publickey") => Kind::FailedPublickey,
        (Kind::FailedPassword, "hostbased") => Kind::FailedHostbased,
        (k, _) => k,
    };
    let key_method = method == "publickey" || method == "hostbased";
    // Methods sshd never appends INFO to; any other (unfamiliar) method may
    // carry a key's `: KEYTYPE FINGERPRINT` as the key methods do.
    let no_info =
        method == "password" || method == "none" || method.starts_with("keyboard-interactive");
    let (rest, invalid) = match rest.strip_prefix("invalid user ") {
        Some(r) => (r, true),
        None => (rest, rest.starts_with("<invalid username> ")),
    };
    let mut c = Classified {
        invalid_user: invalid,
        ..Classified::new(kind)
    };
    // sshd appends `: INFO` only for methods that record some: keys, and
    // gssapi's client name (free text, so any INFO is one); an unfamiliar
    // method may record a key as the key methods do.
    let gssapi = method.starts_with("gssapi");
    match best_auth_tail(rest, |info, proto| {
        if key_method {
            key_info(info)
        } else {
            gssapi
                || (!no_info && key_info(info))
                // `ruser ` with an empty remote user loses its trailing space to the trim.
                || (proto == Some("ssh1") && (info == "ruser" || info.starts_with("ruser ")))
        }
    }) {
        Reading::None => return None,
        Reading::One(t) => {
            c.user = Some(t.user);
            c.source = Some(t.source);
            c.port = t.port;
        }
        Reading::Many => c.ambiguous = true,
    }
    Some(c)
}

/// Reads `USER from ADDR[ port N[ sshV]][: INFO]`, keeping only readings of the
/// best rank (port and protocol > port > bare address).
fn best_auth_tail<'a>(
    s: &'a str,
    info_ok: impl Fn(&str, Option<&str>) -> bool,
) -> Reading<AuthTail<'a>> {
    let mut best = Reading::None;
    let mut best_rank = 0;
    for p in from_positions(s) {
        let Some(t) = auth_tail_at(s, p, &info_ok) else {
            continue;
        };
        if matches!(best, Reading::None) || t.rank > best_rank {
            best_rank = t.rank;
            best = Reading::One(t);
        } else if t.rank == best_rank {
            best = Reading::Many;
        }
    }
    best
}

fn auth_tail_at<'a>(
    s: &'a str,
    p: usize,
    info_ok: &impl Fn(&str, Option<&str>) -> bool,
) -> Option<AuthTail<'a>> {
    let tail = &s[p + 5..];
    let token_end = find_byte(tail, b' ').unwrap_or(tail.len());
    let token = &tail[..token_end];
    // The address ends at a space, or one byte earlier when `: INFO` follows a
    // bare address. At most one of the two is an address: an IPv6 address
    // that ends in a colon ends in `::` (`2001:db8::`), and one colon less
    // than that is never an address.
    let (source, addr_end) = match ip(token) {
        Some(a) => (a, token_end),
        None => {
            let bare = token.strip_suffix(':').filter(|_| token_end < tail.len())?;
            (ip(bare)?, token_end - 1)
        }
    };
    let mut rest = &tail[addr_end..];
    let mut port_no = None;
    let mut proto = None;
    if let Some(r) = rest.strip_prefix(" port ") {
        let end = find_either(r, b' ', b':').unwrap_or(r.len());
        port_no = Some(port(&r[..end])?);
        rest = &r[end..];
        if let Some(r) = rest.strip_prefix(' ') {
            let end = find_byte(r, b':').unwrap_or(r.len());
            if &r[..end] != "ssh1" && &r[..end] != "ssh2" {
                return None;
            }
            proto = Some(&r[..end]);
            rest = &r[end..];
        }
    }
    if !rest.is_empty() {
        let info = rest.strip_prefix(": ")?;
        if !info_ok(info, proto) {
            return None;
        }
    }
    let rank = match (port_no, proto) {
        (Some(_), Some(_)) => 2,
        (Some(_), None) => 1,
        _ => 0,
    };
    Some(AuthTail {
        user: before(s, p),
        source,
        port: port_no,
        rank,
    })
}

/// `KEYTYPE FINGERPRINT...`: the first two words are a key type and a
/// fingerprint. What follows is not checked: it varies by version and method
/// (`ID ... CA ...` for certificates, `, client user "..."` for hostbased,
/// `, signature count = N` for security keys; before OpenSSH 7.8 certificates
/// were `TYPE-CERT ID ...` with no fingerprint), and a real tail failing the
/// check would leave an injected tail as the only reading.
fn key_info(info: &str) -> bool {
    let Some((key_type, rest)) = split_space(info) else {
        return false;
    };
    !key_type.is_empty()
        && key_type
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'-' | b'@' | b'.' | b'_'))
        && !rest.starts_with([' ', ','])
        && !rest.is_empty()
}

/// `USER from ADDR[ port N]` anchored at the end.
fn invalid_user(s: &str) -> Option<Classified<'_>> {
    let mut c = Classified {
        invalid_user: true,
        ..Classified::new(Kind::InvalidUser)
    };
    let mut reading = Reading::None;
    for p in from_positions(s) {
        if let Some((source, port)) = addr_port_exact(&s[p + 5..]) {
            reading.push((before(s, p), source, port));
        }
    }
    match reading {
        Reading::None => return None,
        Reading::One((user, source, port)) => {
            c.user = Some(user);
            c.source = Some(source);
            c.port = port;
        }
        Reading::Many => c.ambiguous = true,
    }
    Some(c)
}

/// `[invalid user ]USER from ADDR port N sshV`.
fn max_auth(s: &str) -> Option<Classified<'_>> {
    let (rest, invalid) = match s.strip_prefix("invalid user ") {
        Some(r) => (r, true),
        None => (s, false),
    };
    let mut c = Classified {
        invalid_user: invalid,
        ..Classified::new(Kind::MaxAuthExceeded)
    };
    match best_auth_tail(rest, |_, _| false) {
        Reading::None => return None,
        Reading::One(t) => {
            c.user = Some(t.user);
            c.source = Some(t.source);
            c.port = t.port;
        }
        Reading::Many => c.ambiguous = true,
    }
    Some(c)
}

/// `[(authenticating|invalid) user USER ]ADDR[ port N]` after
/// `Connection closed by`, `Connection reset by` or `Disconnected from`.
fn closed(kind: Kind, s: &str) -> Option<Classified<'_>> {
    let mut c = Classified::new(kind);
    let rest = if let Some(r) = s.strip_prefix("authenticating user ") {
        c.authenticating_user = true;
        r
    } else if let Some(r) = s.strip_prefix("invalid user ") {
        c.invalid_user = true;
        r
    } else if let Some(r) = s.strip_prefix("user ") {
        r
    } else {
        let (source, port) = addr_port_exact(s)?;
        c.source = Some(source);
        c.port = port;
        return Some(c);
    };
    let (head, port_text) = rsplit_port(rest)?;
    let (user, addr) = rsplit_space(head)?;
    c.user = Some(user);
    c.source = Some(ip(addr)?);
    c.port = Some(port(port_text)?);
    Some(c)
}

/// After `Disconnecting: Too many authentication failures`: nothing, or
/// ` for [invalid user ]USER`.
fn too_many_failures(s: &str) -> Option<Classified<'_>> {
    let mut c = Classified::new(Kind::TooManyAuthFailures);
    if s.is_empty() {
        return Some(c);
    }
    let user = s.strip_prefix(" for ")?;
    match user.strip_prefix("invalid user ") {
        Some(u) => {
            c.invalid_user = true;
            c.user = Some(u);
        }
        None => c.user = Some(user),
    }
    Some(c)
}

/// `(authenticating|invalid) user USER ADDR port N: REASON` (after
/// `Disconnecting `), or the same with the user part optional (after
/// `ssh_dispatch_run_fatal: Connection from `). With two or more readings the
/// rightmost one decides the kind and the line is ambiguous.
fn user_addr_port_reason(s: &str, base: Kind) -> Option<Classified<'_>> {
    let mut c = Classified::new(base);
    let rest = if let Some(r) = s.strip_prefix("authenticating user ") {
        c.authenticating_user = true;
        r
    } else if let Some(r) = s.strip_prefix("invalid user ") {
        c.invalid_user = true;
        r
    } else if base == Kind::ProtocolError {
        let (source, port) = addr_port_colon_parts(s)?;
        c.source = Some(source);
        c.port = Some(port);
        return Some(c);
    } else {
        return None;
    };
    let mut reading = Reading::None;
    let mut last_reason = "";
    for p in memchr::memmem::find_iter(rest.as_bytes(), b" port ") {
        let head = &rest[..p];
        let tail = &rest[p + 6..];
        let Some((port_text, reason)) = tail.split_once(": ") else {
            continue;
        };
        let Some(port_no) = port(port_text) else {
            continue;
        };
        let Some((user, addr)) = rsplit_space(head) else {
            continue;
        };
        let Some(source) = ip(addr) else {
            continue;
        };
        reading.push((user, source, port_no));
        last_reason = reason;
    }
    if base == Kind::Disconnect && last_reason.starts_with("Too many authentication failures") {
        c.kind = Kind::TooManyAuthFailures;
    }
    match reading {
        Reading::None => return None,
        Reading::One((user, source, port_no)) => {
            c.user = Some(user);
            c.source = Some(source);
            c.port = Some(port_no);
        }
        Reading::Many => c.ambiguous = true,
    }
    Some(c)
}

fn addr_port_colon_parts(s: &str) -> Option<(&str, u16)> {
    let (a, rest) = s.split_once(" port ")?;
    let (p, _) = rest.split_once(": ")?;
    Some((ip(a)?, port(p)?))
}

/// `ADDR: CODE: REASON` or `ADDR port N:CODE: REASON`; the address is at the head.
fn received_disconnect(s: &str) -> Option<Classified<'_>> {
    let mut c = Classified::new(Kind::Disconnect);
    let after_code_sep;
    let space_end = find_byte(s, b' ').unwrap_or(s.len());
    if s[space_end..].starts_with(" port ") {
        c.source = Some(ip(&s[..space_end])?);
        let r = &s[space_end + 6..];
        let (p, rest) = r.split_once(':')?;
        c.port = Some(port(p)?);
        after_code_sep = rest.strip_prefix(' ').unwrap_or(rest);
    } else {
        let (a, rest) = s.split_once(": ")?;
        c.source = Some(ip(a)?);
        after_code_sep = rest;
    }
    let (code, _reason) = after_code_sep.split_once(':')?;
    c.disconnect_code = Some(port(code)?);
    Some(c)
}

/// `ADDR[ port N]` (older OpenSSH) or `connection from ADDR to LADDR, pid = N`
/// (newer): the peer is the first address, the second is the server's own.
fn login_timeout(s: &str) -> Option<Classified<'_>> {
    let Some(r) = s.strip_prefix("connection from ") else {
        return with_addr_port(Kind::LoginTimeout, s);
    };
    let (a, rest) = r.split_once(" to ")?;
    let (local, pid) = rest.split_once(", pid = ")?;
    ip(local)?;
    digits_only(pid)?;
    Some(Classified {
        source: Some(ip(a)?),
        ..Classified::new(Kind::LoginTimeout)
    })
}

fn digits_only(s: &str) -> Option<()> {
    (!s.is_empty() && s.bytes().all(|c| c.is_ascii_digit())).then_some(())
}

/// `VALUE) on obfuscated handshake from ADDR[ port N]` (the obfuscated-SSH
/// patch), anchored at the end as `Bad protocol version` is.
fn magic_value(s: &str) -> Option<Classified<'_>> {
    bad_protocol_from(s, b") on obfuscated handshake from ")
}

/// `STRING' from ADDR[ port N]`, anchored at the end.
fn bad_protocol(s: &str) -> Option<Classified<'_>> {
    bad_protocol_from(s, b"' from ")
}

/// A protocol failure whose peer follows the last `sep` that ends the
/// message with `ADDR[ port N]`; two such tails → ambiguous, no peer.
fn bad_protocol_from<'a>(s: &'a str, sep: &[u8]) -> Option<Classified<'a>> {
    let mut reading = Reading::None;
    for p in memchr::memmem::find_iter(s.as_bytes(), sep) {
        if let Some(found) = addr_port_exact(&s[p + sep.len()..]) {
            reading.push(found);
        }
    }
    let mut c = Classified::new(Kind::BadProtocol);
    match reading {
        Reading::None => return None,
        Reading::One((source, port)) => {
            c.source = Some(source);
            c.port = port;
        }
        Reading::Many => c.ambiguous = true,
    }
    Some(c)
}

/// `USER from HOST not allowed because REASON` or `USER not allowed because REASON`.
fn not_allowed(s: &str) -> Option<Classified<'_>> {
    let idx = memchr::memmem::rfind(s.as_bytes(), b" not allowed because ")?;
    let head = &s[..idx];
    let mut c = Classified::new(Kind::NotAllowed);
    let mut reading = Reading::None;
    for p in from_positions(head) {
        if p == 0 {
            continue;
        }
        if let Some(h) = host(&head[p + 5..]) {
            reading.push((before(head, p), h));
        }
    }
    match reading {
        Reading::None => c.user = Some(head),
        Reading::One((user, source)) => {
            c.user = Some(user);
            c.source = Some(source);
        }
        Reading::Many => c.ambiguous = true,
    }
    Some(c)
}

/// `Authentication failure for [illegal user ]USER from HOST[ via ADDR]` and friends.
fn pam(s: &str) -> Option<Classified<'_>> {
    let rest = [
        "Authentication failure for ",
        "authentication failure for ",
        "Authentication error for ",
        "authentication error for ",
        "User not known to the underlying authentication module for ",
        "unknown user for ",
    ]
    .iter()
    .find_map(|p| s.strip_prefix(p))?;
    let mut c = Classified::new(Kind::PamAuthFailure);
    let rest = match rest.strip_prefix("illegal user ") {
        Some(r) => {
            c.invalid_user = true;
            r
        }
        None => rest,
    };
    let mut reading = Reading::None;
    for p in from_positions(rest) {
        let tail = &rest[p + 5..];
        let h = match tail.split_once(" via ") {
            Some((h, via)) => ip(via).and(host(h)),
            None => host(tail),
        };
        if let Some(h) = h {
            reading.push((before(rest, p), h));
        }
    }
    match reading {
        Reading::None => return None,
        Reading::One((user, source)) => {
            c.user = Some(user);
            c.source = Some(source);
        }
        Reading::Many => c.ambiguous = true,
    }
    Some(c)
}

/// ` logname= uid=0 euid=0 tty=ssh ruser=RUSER rhost=ADDR[  user=USER]`.
/// Attacker text can stand on both sides of the address (some distributions
/// put the attempted user name in `ruser=`), so every ` rhost=` followed by
/// an address is a reading.
fn pam_unix(s: &str) -> Classified<'_> {
    let mut c = Classified::new(Kind::PamUnixFailure);
    let mut reading = Reading::None;
    for i in memchr::memmem::find_iter(s.as_bytes(), b" rhost=") {
        let r = &s[i + 7..];
        let end = find_byte(r, b' ').unwrap_or(r.len());
        if let Some(source) = ip(&r[..end]) {
            let user =
                memchr::memmem::find(&r.as_bytes()[end..], b" user=").map(|j| &r[end + j + 6..]);
            reading.push((source, user));
        }
    }
    match reading {
        Reading::None => {}
        Reading::One((source, user)) => {
            c.source = Some(source);
            c.user = user;
        }
        Reading::Many => c.ambiguous = true,
    }
    c
}

/// `X (ADDR)`: tcp-wrappers' client and address; the address in the final parentheses.
fn refused_connect(s: &str) -> Option<Classified<'_>> {
    let inner = s.strip_suffix(')')?;
    let open = inner.rfind(" (")?;
    Some(Classified {
        source: Some(ip(&inner[open + 2..])?),
        ..Classified::new(Kind::RefusedConnect)
    })
}

/// `ADDR maps to HOST, but this does not map back to the address - POSSIBLE BREAK-IN ATTEMPT[!]`.
fn reverse_mapping(s: &str) -> Option<Classified<'_>> {
    let (a, rest) = split_space(s)?;
    if !rest.starts_with("maps to ") {
        return None;
    }
    Some(Classified {
        source: Some(ip(a)?),
        ..Classified::new(Kind::ReverseMappingFailed)
    })
}

/// `HOST [ADDR] failed[.| - POSSIBLE BREAK-IN ATTEMPT!]`. HOST comes from the
/// peer's reverse DNS, so the address is read from the end.
fn reverse_mapping_bracketed(s: &str) -> Option<Classified<'_>> {
    let (head, _) = s.rsplit_once("] failed")?;
    let (_, a) = head.rsplit_once(" [")?;
    Some(Classified {
        source: Some(ip(a)?),
        ..Classified::new(Kind::ReverseMappingFailed)
    })
}

/// `ADDR[ port N[ on LADDR port M[ rdomain "R"]]]`.
fn connection_from(s: &str) -> Option<Classified<'_>> {
    let (a, rest) = match split_space(s) {
        Some((a, r)) => (a, Some(r)),
        None => (s, None),
    };
    let mut c = Classified {
        source: Some(ip(a)?),
        ..Classified::new(Kind::ConnectionFrom)
    };
    if let Some(r) = rest {
        let r = r.strip_prefix("port ")?;
        let end = find_byte(r, b' ').unwrap_or(r.len());
        c.port = Some(port(&r[..end])?);
        let tail = &r[end..];
        if !tail.is_empty() && !tail.starts_with(" on ") {
            return None;
        }
    }
    Some(c)
}

/// `TYPE;Remote: ADDR-PORT;...` (the `SSH: Server;Ltype:` audit line).
fn audit_remote(s: &str) -> Option<Classified<'_>> {
    let i = memchr::memmem::find(s.as_bytes(), b";Remote: ")?;
    let r = &s[i + 9..];
    let end = r.find(';').unwrap_or(r.len());
    let (a, p) = r[..end].rsplit_once('-')?;
    Some(Classified {
        source: Some(ip(a)?),
        port: Some(port(p)?),
        ..Classified::new(Kind::ConnectionFrom)
    })
}

/// `N from [ADDR]:PORT on [LADDR]:LPORT REASON` (OpenSSH 9.8+ penalties, MaxStartups).
fn drop_connection(s: &str) -> Option<Classified<'_>> {
    let (n, rest) = s.split_once(" from [")?;
    port(n)?;
    let (a, rest) = rest.split_once("]:")?;
    let (p, rest) = rest.split_once(" on [")?;
    let (_, rest) = rest.split_once("]:")?;
    let (_, reason) = split_space(rest)?;
    let kind = if reason.starts_with("penalty:") {
        Kind::Penalty
    } else if reason.eq_ignore_ascii_case("past MaxStartups") {
        Kind::MaxStartupsDrop
    } else {
        return None;
    };
    Some(Classified {
        source: Some(ip(a)?),
        port: Some(port(p)?),
        ..Classified::new(kind)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (kind, source, user, port, invalid user) of a message, unambiguous.
    fn read(m: &str) -> (Kind, Option<&str>, Option<&str>, Option<u16>, bool) {
        let c = classify(m).unwrap_or_else(|| panic!("{m:?} not classified"));
        assert!(!c.ambiguous, "{m:?}");
        (c.kind, c.source, c.user, c.port, c.invalid_user)
    }

    #[test]
    fn zone_indexed_peers_are_read_without_the_zone() {
        assert_eq!(
            read("Failed password for root from fe80::1%eth0 port 22 ssh2"),
            (
                Kind::FailedPassword,
                Some("fe80::1"),
                Some("root"),
                Some(22),
                false
            )
        );
        assert_eq!(
            read("Accepted publickey for bob from fe80::2%3: RSA SHA256:x"),
            (Kind::Accepted, Some("fe80::2"), Some("bob"), None, false)
        );
        assert_eq!(
            read("Did not receive identification string from fe80::1%eth0 port 7"),
            (
                Kind::NoIdentification,
                Some("fe80::1"),
                None,
                Some(7),
                false
            )
        );
        assert_eq!(
            classify("Did not receive identification string from 192.0.2.7%eth0"),
            None
        );
    }

    #[test]
    fn pam_failures_of_other_platforms() {
        assert_eq!(
            read("PAM: authentication failure for bob from 192.0.2.7"),
            (
                Kind::PamAuthFailure,
                Some("192.0.2.7"),
                Some("bob"),
                None,
                false
            )
        );
        assert_eq!(
            read("PAM: unknown user for illegal user bob from 192.0.2.7"),
            (
                Kind::PamAuthFailure,
                Some("192.0.2.7"),
                Some("bob"),
                None,
                true
            )
        );
        assert_eq!(classify("PAM: unknown user for bob"), None);
    }

    #[test]
    fn timeouts_old_and_new() {
        assert_eq!(
            read("Timeout before authentication for 192.0.2.7 port 4242"),
            (
                Kind::LoginTimeout,
                Some("192.0.2.7"),
                None,
                Some(4242),
                false
            )
        );
        // The peer is the first address; the second is the server's own.
        assert_eq!(
            read("Timeout before authentication for connection from 192.0.2.7 to 10.0.0.5, pid = 812"),
            (Kind::LoginTimeout, Some("192.0.2.7"), None, None, false)
        );
        assert_eq!(
            classify(
                "Timeout before authentication for connection from 192.0.2.7 to 10.0.0.5, pid = "
            ),
            None
        );
    }

    #[test]
    fn bad_banners() {
        assert_eq!(
            read("Bad protocol version identification 'GET / HTTP/1.0' from 192.0.2.7"),
            (Kind::BadProtocol, Some("192.0.2.7"), None, None, false)
        );
        assert_eq!(
            read("Bad protocol version identification '\\026\\003' from 192.0.2.7 port 4242"),
            (
                Kind::BadProtocol,
                Some("192.0.2.7"),
                None,
                Some(4242),
                false
            )
        );
        assert_eq!(
            read("Magic value check failed (3405643776) on obfuscated handshake from 192.0.2.7 port 4242"),
            (Kind::BadProtocol, Some("192.0.2.7"), None, Some(4242), false)
        );
        assert_eq!(
            classify("Magic value check failed (1) on obfuscated handshake from nowhere"),
            None
        );
    }

    #[test]
    fn unfamiliar_methods_with_a_key() {
        assert_eq!(
            read("Failed hostbased for bob from 192.0.2.7 port 4242 ssh2: ED25519 SHA256:abc"),
            (
                Kind::FailedHostbased,
                Some("192.0.2.7"),
                Some("bob"),
                Some(4242),
                false
            )
        );
        assert_eq!(
            read("Failed keyboard-interactive/pam for invalid user bob from 192.0.2.7 port 4242 ssh2"),
            (Kind::FailedPassword, Some("192.0.2.7"), Some("bob"), Some(4242), true)
        );
        assert_eq!(
            read("Failed webauthn for invalid user bob from 192.0.2.7 port 4242 ssh2: ED25519 SHA256:abc"),
            (Kind::FailedPassword, Some("192.0.2.7"), Some("bob"), Some(4242), true)
        );
        // Methods that never carry INFO still refuse one.
        for m in ["password", "none", "keyboard-interactive"] {
            let line =
                format!("Failed {m} for bob from 192.0.2.7 port 4242 ssh2: ED25519 SHA256:abc");
            assert_eq!(classify(&line), None, "{line}");
        }
        // An address in the user name is never the peer.
        let c = classify(
            "Failed webauthn for x from 6.6.6.6 port 1 ssh2: ED25519 SHA256:x from 192.0.2.7 port 4242 ssh2: ED25519 SHA256:y",
        )
        .unwrap();
        assert!(c.ambiguous && c.source.is_none());
    }

    #[test]
    fn pam_echo_is_read() {
        assert_eq!(
            read("pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=192.0.2.7  user=bob"),
            (Kind::PamUnixFailure, Some("192.0.2.7"), Some("bob"), None, false)
        );
    }
}
