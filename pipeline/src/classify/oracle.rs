//! The regex classifier: the test oracle for [`super::scanner`].
//!
//! Every message shape of [`super::Kind`] is stated here as a regular
//! expression, written from the module docs of [`super`] rather than from the
//! scanner's code, so that the corpus tests, the property tests and the fuzz
//! target can hold the two implementations to identical [`Classified`] values.
//! It is far too slow for the hot path (docs/design.md measured 60 MB/s for regex
//! captures), which never calls it.
//!
//! Where a shape has attacker text before its address, the regex for the
//! fixed tail is tried at every candidate position (every `from ` that starts
//! the user part or follows a space, every ` port `, every `' from `), and the
//! valid readings are counted with [`Reading`] as the attribution rules ask.
//! Address, host and port tokens are read by this file's own [`ip`], [`host`]
//! and [`port`] (a regex for the token's shape, std's parsers for its value),
//! not by [`super::addr`], which the scanner uses: a bug in either shows up as
//! a disagreement instead of being shared by both sides.

use std::net::Ipv6Addr;
use std::sync::LazyLock;

use regex::{Captures, Match, Regex};

use super::addr::Reading;
use super::{Classified, Kind};

fn re(pattern: &str) -> Regex {
    // The patterns are constants of this file, compiled by every test: a bad
    // one is a programming error, not an input error.
    Regex::new(pattern).expect("oracle regex compiles")
}

macro_rules! regex {
    ($name:ident, $pattern:expr) => {
        static $name: LazyLock<Regex> = LazyLock::new(|| re($pattern));
    };
}

// --- Address tokens, as the module docs of `super` define them.

// A dotted quad of one to three decimal digits per octet: leading zeros are
// read as decimal (`192.030.0.6` is 192.30.0.6).
regex!(
    IPV4,
    r"\A([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\.([0-9]{1,3})\z"
);
// An IPv4-mapped IPv6 address as sshd prints one: `::ffff:` and a dotted quad.
regex!(IPV4_MAPPED, r"\A::(?:ffff|FFFF):(?P<v4>[0-9.]+)\z");
// A host name: letters, digits, `-`, `.`, `_`, not starting with `-` or `.`.
regex!(HOST_NAME, r"\A[A-Za-z0-9_][A-Za-z0-9_.-]{0,252}\z");
regex!(LETTER, r"[A-Za-z]");
// An address and a zone index: an interface name or number.
regex!(ZONED, r"\A(?P<a>[^%]*)%[A-Za-z0-9_.-]+\z");
regex!(PORT, r"\A[0-9]{1,5}\z");

fn is_ipv4(tok: &str) -> bool {
    IPV4.captures(tok)
        .is_some_and(|c| (1..=4).all(|i| c[i].parse::<u8>().is_ok()))
}

/// `tok` as a peer address: IPv4, or IPv6 (std's parser), an IPv4-mapped
/// IPv6 address reported as its IPv4 part.
/// An IPv6 address with a zone index (`fe80::1%eth0`) is read without the zone.
fn ip(tok: &str) -> Option<&str> {
    if is_ipv4(tok) {
        return Some(tok);
    }
    if let Some(caps) = ZONED.captures(tok) {
        let a = caps.name("a")?.as_str();
        return if a.contains(':') { ip(a) } else { None };
    }
    if let Some(v4) = IPV4_MAPPED.captures(tok).and_then(|c| c.name("v4")) {
        if is_ipv4(v4.as_str()) {
            return Some(v4.as_str());
        }
    }
    tok.parse::<Ipv6Addr>().is_ok().then_some(tok)
}

/// `tok` as an address or, where sshd prints a resolved name, a host name
/// (which has at least one letter, so that a bad address is no name).
fn host(tok: &str) -> Option<&str> {
    ip(tok).or_else(|| (HOST_NAME.is_match(tok) && LETTER.is_match(tok)).then_some(tok))
}

/// A port (or a disconnect code): one to five decimal digits, at most 65535.
fn port(tok: &str) -> Option<u16> {
    if !PORT.is_match(tok) {
        return None;
    }
    tok.parse().ok()
}

// The message proper and sshd's ` [preauth]` suffix, after trailing whitespace.
regex!(
    ENVELOPE,
    r"(?s)\A(?P<m>.*?)(?P<preauth> \[preauth\])?[ \t\r\n]*\z"
);

// An address token as it can end a `from ` tail: address characters, ending
// in a non-colon or in `::` (so `A: INFO` and an IPv6 address ending in `::`
// split one way only). The token is validated with `addr::ip` afterwards.
// An IPv6 address may carry a zone index (`%eth0`), which never ends in a colon.
const ADDR: &str =
    r"(?:[0-9A-Fa-f.:]*[0-9A-Fa-f.]|(?:[0-9A-Fa-f.:]*[0-9A-Fa-f.])?::)(?:%[A-Za-z0-9_.-]+)?";

// --- Failed|Accepted|Postponed M for [invalid user ]U from A[ port P[ sshV]][: INFO]
regex!(
    AUTH,
    r"(?s)\A(?P<verb>Failed|Accepted|Postponed) (?P<method>[^ ]*) for (?P<iu>invalid user )?(?P<body>(?P<iname><invalid username> )?.*)\z"
);
// A `from ` candidate: at the start of the user part or after a space.
regex!(FROM_CANDIDATE, r"(?:\A| )from ");
static AUTH_TAIL: LazyLock<Regex> = LazyLock::new(|| {
    re(&format!(
        r"(?s)\Afrom (?P<a>{ADDR})(?: port (?P<port>[0-9]{{1,5}})(?: (?P<proto>ssh[12]))?)?(?:: (?P<info>.*))?\z"
    ))
});
// `: INFO` of a key method: its first two words are a key type and a fingerprint.
regex!(KEY_INFO, r"(?s)\A[A-Za-z0-9@._-]+ [^ ,]+");
// `: INFO` of `ssh1`: the remote user.
regex!(SSH1_INFO, r"(?s)\Aruser(?: |\z)");
// Methods whose `: INFO` is the client's GSSAPI name: free text.
regex!(GSSAPI_METHOD, r"\Agssapi");
// Methods sshd never appends INFO to; any other method that is not a key or
// gssapi method is unfamiliar and may carry a key's INFO.
regex!(
    INFOLESS_METHOD,
    r"(?s)\A(?:password|none|keyboard-interactive.*)\z"
);
regex!(
    MAX_AUTH,
    r"(?s)\Amaximum authentication attempts exceeded for (?P<iu>invalid user )?(?P<body>.*)\z"
);

// --- Invalid user U from A[ port P]; input_userauth_request: invalid user U
regex!(INVALID_USER, r"(?s)\AInvalid user (?P<body>.*)\z");
regex!(
    FROM_ADDR_PORT_END,
    r"(?s)\Afrom (?P<a>[^ ]+)(?: port (?P<port>[0-9]{1,5}))?\z"
);
regex!(
    INPUT_USERAUTH,
    r"(?s)\Ainput_userauth_request: invalid user (?P<user>.*)\z"
);

// --- Connection closed|reset by / Disconnected from: `[(authenticating|invalid) ]user U A port P` or `A[ port P]`
regex!(
    CLOSED,
    r"(?s)\A(?:Connection closed by|Connection reset by|(?P<disconnected>Disconnected from)) (?P<rest>.*)\z"
);
regex!(
    CLOSED_USER,
    r"(?s)\A(?P<who>authenticating |invalid |)user (?P<user>.*) (?P<a>[^ ]+) port (?P<port>[0-9]{1,5})\z"
);
regex!(USER_PREFIX, r"\A(?:authenticating |invalid |)user ");
regex!(
    ADDR_PORT,
    r"(?s)\A(?P<a>[^ ]+)(?: port (?P<port>[0-9]{1,5}))?\z"
);

// --- Disconnecting: Too many authentication failures[ for [invalid user ]U]
regex!(
    TOO_MANY,
    r"(?s)\ADisconnecting: Too many authentication failures(?: for (?P<iu>invalid user )?(?P<user>.*))?\z"
);

// --- Disconnecting (authenticating|invalid) user U A port P: R
// --- ssh_dispatch_run_fatal: Connection from [(authenticating|invalid) user U ]A port P: R
regex!(
    DISCONNECTING,
    r"(?s)\ADisconnecting (?P<who>authenticating|invalid) user (?P<body>.*)\z"
);
regex!(
    DISPATCH_FATAL,
    r"(?s)\Assh_dispatch_run_fatal: Connection from (?:(?P<who>authenticating|invalid) user (?P<body>.*)|(?P<a>[^ ]+) port (?P<port>[0-9]{1,5}): .*)\z"
);
regex!(PORT_WORD, r" port ");
regex!(USER_ADDR_END, r"(?s)\A(?P<user>.*) (?P<a>[^ ]+)\z");
regex!(PORT_REASON, r"(?s)\A(?P<port>[0-9]{1,5}): (?P<reason>.*)\z");
regex!(TOO_MANY_REASON, r"\AToo many authentication failures");

// --- Received disconnect from A[ port P]:[ ]C: R (address at the head)
regex!(
    RECEIVED_DISCONNECT,
    r"(?s)\AReceived disconnect from (?:(?P<a>[^ ]*) port (?P<port>[0-9]{1,5}): ?(?P<code>[0-9]{1,5}):|(?P<a2>.*?): (?P<code2>[0-9]{1,5}):)"
);

// --- Bad protocol version identification 'S' from A[ port P]
regex!(
    BAD_PROTOCOL,
    r"(?s)\ABad protocol version identification '(?P<body>.*)\z"
);
regex!(QUOTE_FROM, r"' from ");
regex!(
    QUOTE_FROM_ADDR_PORT_END,
    r"(?s)\A' from (?P<a>[^ ]+)(?: port (?P<port>[0-9]{1,5}))?\z"
);

// --- User U[ from H] not allowed because R
regex!(
    NOT_ALLOWED,
    r"(?s)\AUser (?P<head>.*) not allowed because .*\z"
);
regex!(SPACE_FROM, r" from ");
regex!(FROM_HOST_END, r"(?s)\Afrom (?P<h>[^ ]+)\z");

// --- PAM: ... for [illegal user ]U from H[ via A]
regex!(
    PAM,
    r"(?s)\APAM: (?:[Aa]uthentication (?:failure|error)|User not known to the underlying authentication module|unknown user) for (?P<iu>illegal user )?(?P<body>.*)\z"
);
regex!(
    FROM_HOST_VIA_END,
    r"(?s)\Afrom (?P<h>[^ ]+)(?: via (?P<via>[^ ]+))?\z"
);

// --- pam_unix(sshd:auth): authentication failure; ... ruser=R rhost=A[  user=U]
regex!(
    PAM_UNIX,
    r"(?s)\Apam_unix\(sshd:auth\): authentication failure;(?P<rest>.*)\z"
);
regex!(RHOST, r" rhost=");
regex!(
    RHOST_ADDR_USER,
    r"(?s)\A rhost=(?P<a>[^ ]*)(?:.*? user=(?P<user>.*))?"
);

// --- refused connect from X (A)
regex!(
    REFUSED_CONNECT,
    r"(?s)\Arefused connect from .* \((?P<a>.*)\)\z"
);

// --- Address A maps to H, ... / reverse mapping checking getaddrinfo for H [A] failed ...
regex!(REVERSE_MAPPING, r"(?s)\AAddress (?P<a>[^ ]*) maps to ");
regex!(
    REVERSE_MAPPING_BRACKETED,
    r"(?s)\Areverse mapping checking getaddrinfo for .* \[(?P<a>.*)\] failed"
);

// --- Connection from A[ port P[ on L port Q[ rdomain "R"]]]
regex!(
    CONNECTION_FROM,
    r"(?s)\AConnection from (?P<a>[^ ]*)(?: port (?P<port>[0-9]{1,5})(?: on .*)?)?\z"
);
// --- SSH: Server;Ltype: T;Remote: A-P;...
regex!(
    AUDIT,
    r"(?s)\ASSH: Server;Ltype: .*?;Remote: (?P<field>[^;]*)"
);
regex!(AUDIT_REMOTE, r"(?s)\A(?P<a>.*)-(?P<port>[0-9]{1,5})\z");

// --- drop connection #N from [A]:P on [L]:Q (penalty: R|past MaxStartups)
regex!(
    DROP_CONNECTION,
    r"(?s)\Adrop connection #(?P<n>[0-9]{1,5}) from \[(?P<a>.*?)\]:(?P<port>.*?) on \[.*?\]:[^ ]* (?:(?P<penalty>penalty:.*)|(?P<maxstartups>(?i-u:past maxstartups)))\z"
);

// --- head-anchored A[ port P] and A port P: R
regex!(
    NO_IDENTIFICATION,
    r"(?s)\ADid not receive identification string from (?P<rest>.*)\z"
);
regex!(
    ROOT_LOGIN_REFUSED,
    r"(?s)\AROOT LOGIN REFUSED FROM (?P<rest>.*)\z"
);
regex!(
    LOGIN_TIMEOUT,
    r"(?s)\ATimeout before authentication for (?P<rest>.*)\z"
);
// The newer form names both ends: the peer first, then the server's address.
regex!(
    LOGIN_TIMEOUT_CONNECTION,
    r"(?s)\Aconnection from (?P<a>.*?) to (?P<local>.*?), pid = [0-9]+\z"
);
// --- Magic value check failed (V) on obfuscated handshake from A[ port P]
regex!(
    MAGIC_VALUE,
    r"(?s)\AMagic value check failed \((?P<body>.*)\z"
);
regex!(OBFUSCATED_FROM, r"\) on obfuscated handshake from ");
regex!(
    OBFUSCATED_FROM_ADDR_PORT_END,
    r"(?s)\A\) on obfuscated handshake from (?P<a>[^ ]+)(?: port (?P<port>[0-9]{1,5}))?\z"
);
regex!(
    UNABLE_TO_NEGOTIATE_WITH,
    r"(?s)\AUnable to negotiate with (?P<a>[^ ]*) port (?P<port>[0-9]{1,5}):"
);
regex!(
    BANNER_EXCHANGE,
    r"(?s)\Abanner exchange: Connection from (?P<a>[^ ]*) port (?P<port>[0-9]{1,5}):"
);

// --- shapes without an address
regex!(KEX_IDENTIFICATION, r"\Akex_exchange_identification: ");
regex!(READ_FROM_SOCKET, r"\ARead from socket failed: ");
regex!(UNABLE_KEX, r"\AUnable to negotiate a key exchange method");
regex!(NO_MATCHING, r"(?s)\Ano matching (?:.* )?found");

/// Classifies one sshd message with regular expressions.
pub fn classify(message: &str) -> Option<Classified<'_>> {
    let env = ENVELOPE.captures(message)?;
    let m = env.name("m")?.as_str();
    let preauth = env.name("preauth").is_some();
    let shapes: [fn(&str) -> Option<Classified<'_>>; 25] = [
        auth_attempt,
        invalid_user,
        input_userauth,
        max_auth,
        closed,
        too_many,
        disconnecting,
        dispatch_fatal,
        received_disconnect,
        bad_protocol,
        not_allowed,
        pam,
        pam_unix,
        refused_connect,
        reverse_mapping,
        reverse_mapping_bracketed,
        connection_from,
        audit,
        drop_connection,
        no_identification,
        root_login_refused,
        login_timeout,
        magic_value,
        addr_port_reason,
        addressless,
    ];
    // The shapes start with distinct server text, so at most one can match.
    let mut c = shapes.iter().find_map(|shape| shape(m))?;
    c.preauth = preauth;
    Some(c)
}

fn text<'a>(caps: &Captures<'a>, name: &str) -> Option<&'a str> {
    caps.name(name).map(|m| m.as_str())
}

/// Start positions of every match of `re` in `hay`, overlapping ones included.
fn positions<'h>(re: &'static Regex, hay: &'h str) -> impl Iterator<Item = Match<'h>> + 'h {
    let mut start = 0;
    std::iter::from_fn(move || {
        let found = re.find_at(hay, start)?;
        // Matches of these needles start with an ASCII byte, so +1 is a char boundary.
        start = found.start() + 1;
        Some(found)
    })
}

fn port_of(caps: &Captures<'_>, name: &str) -> Option<Option<u16>> {
    match text(caps, name) {
        None => Some(None),
        Some(p) => port(p).map(Some),
    }
}

fn attribute<'a>(
    mut c: Classified<'a>,
    reading: Reading<(&'a str, &'a str, Option<u16>)>,
) -> Option<Classified<'a>> {
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

/// The readings of `USER from A[ port P[ sshV]][: INFO]`, best rank only
/// (port and protocol > port > bare address).
fn ranked_from_tail(
    body: &str,
    info_ok: impl Fn(&str, Option<&str>) -> bool,
) -> Reading<(&str, &str, Option<u16>)> {
    let mut best = Reading::None;
    let mut best_rank = 0u8;
    for cand in positions(&FROM_CANDIDATE, body) {
        let at = cand.end() - "from ".len();
        let Some(caps) = AUTH_TAIL.captures(&body[at..]) else {
            continue;
        };
        let Some(source) = text(&caps, "a").and_then(ip) else {
            continue;
        };
        let Some(port_no) = port_of(&caps, "port") else {
            continue;
        };
        let proto = text(&caps, "proto");
        if let Some(info) = text(&caps, "info") {
            if !info_ok(info, proto) {
                continue;
            }
        }
        let rank = match (port_no, proto) {
            (Some(_), Some(_)) => 2,
            (Some(_), None) => 1,
            (None, _) => 0,
        };
        let reading = (&body[..cand.start()], source, port_no);
        if matches!(best, Reading::None) || rank > best_rank {
            best = Reading::One(reading);
            best_rank = rank;
        } else if rank == best_rank {
            best = Reading::Many;
        }
    }
    best
}

fn auth_attempt(m: &str) -> Option<Classified<'_>> {
    let caps = AUTH.captures(m)?;
    let method = text(&caps, "method")?;
    let key_method = method == "publickey" || method == "hostbased";
    let kind = match (text(&caps, "verb")?, method) {
        ("Failed", "publickey") => Kind::FailedPublickey,
        ("Failed", "hostbased") => Kind::FailedHostbased,
        ("Failed", _) => Kind::FailedPassword,
        ("Accepted", _) => Kind::Accepted,
        _ => Kind::Postponed,
    };
    let c = Classified {
        invalid_user: caps.name("iu").is_some() || caps.name("iname").is_some(),
        ..Classified::new(kind)
    };
    let gssapi = GSSAPI_METHOD.is_match(method);
    let unfamiliar = !key_method && !gssapi && !INFOLESS_METHOD.is_match(method);
    let reading = ranked_from_tail(text(&caps, "body")?, |info, proto| {
        if key_method {
            KEY_INFO.is_match(info)
        } else {
            gssapi
                || (unfamiliar && KEY_INFO.is_match(info))
                || (proto == Some("ssh1") && SSH1_INFO.is_match(info))
        }
    });
    attribute(c, reading)
}

fn max_auth(m: &str) -> Option<Classified<'_>> {
    let caps = MAX_AUTH.captures(m)?;
    let c = Classified {
        invalid_user: caps.name("iu").is_some(),
        ..Classified::new(Kind::MaxAuthExceeded)
    };
    attribute(c, ranked_from_tail(text(&caps, "body")?, |_, _| false))
}

fn invalid_user(m: &str) -> Option<Classified<'_>> {
    let body = text(&INVALID_USER.captures(m)?, "body")?;
    let mut reading = Reading::None;
    for cand in positions(&FROM_CANDIDATE, body) {
        let at = cand.end() - "from ".len();
        let Some(caps) = FROM_ADDR_PORT_END.captures(&body[at..]) else {
            continue;
        };
        let (Some(source), Some(port_no)) = (text(&caps, "a").and_then(ip), port_of(&caps, "port"))
        else {
            continue;
        };
        reading.push((&body[..cand.start()], source, port_no));
    }
    let c = Classified {
        invalid_user: true,
        ..Classified::new(Kind::InvalidUser)
    };
    attribute(c, reading)
}

fn input_userauth(m: &str) -> Option<Classified<'_>> {
    let caps = INPUT_USERAUTH.captures(m)?;
    Some(Classified {
        user: text(&caps, "user"),
        invalid_user: true,
        ..Classified::new(Kind::InvalidUser)
    })
}

fn closed(m: &str) -> Option<Classified<'_>> {
    let caps = CLOSED.captures(m)?;
    let kind = if caps.name("disconnected").is_some() {
        Kind::Disconnect
    } else {
        Kind::ConnectionClosed
    };
    let rest = text(&caps, "rest")?;
    let mut c = Classified::new(kind);
    if USER_PREFIX.is_match(rest) {
        // Attacker text precedes the address: read ` A port P` at the end.
        let caps = CLOSED_USER.captures(rest)?;
        match text(&caps, "who")? {
            "authenticating " => c.authenticating_user = true,
            "invalid " => c.invalid_user = true,
            _ => {}
        }
        c.user = text(&caps, "user");
        c.source = Some(ip(text(&caps, "a")?)?);
        c.port = Some(port(text(&caps, "port")?)?);
    } else {
        let caps = ADDR_PORT.captures(rest)?;
        c.source = Some(ip(text(&caps, "a")?)?);
        c.port = port_of(&caps, "port")?;
    }
    Some(c)
}

fn too_many(m: &str) -> Option<Classified<'_>> {
    let caps = TOO_MANY.captures(m)?;
    Some(Classified {
        user: text(&caps, "user"),
        invalid_user: caps.name("iu").is_some(),
        ..Classified::new(Kind::TooManyAuthFailures)
    })
}

/// `USER A port P: REASON` read at every ` port `; the rightmost valid
/// reading decides whether the reason is `Too many authentication failures`.
fn user_addr_port_reason<'a>(
    mut c: Classified<'a>,
    who: &str,
    body: &'a str,
) -> Option<Classified<'a>> {
    match who {
        "authenticating" => c.authenticating_user = true,
        _ => c.invalid_user = true,
    }
    let mut reading = Reading::None;
    let mut too_many = false;
    for cand in positions(&PORT_WORD, body) {
        let (Some(head), Some(tail)) = (
            USER_ADDR_END.captures(&body[..cand.start()]),
            PORT_REASON.captures(&body[cand.end()..]),
        ) else {
            continue;
        };
        let (Some(user), Some(source), Some(port_no)) = (
            text(&head, "user"),
            text(&head, "a").and_then(ip),
            text(&tail, "port").and_then(port),
        ) else {
            continue;
        };
        reading.push((user, source, Some(port_no)));
        too_many = text(&tail, "reason").is_some_and(|r| TOO_MANY_REASON.is_match(r));
    }
    if c.kind == Kind::Disconnect && too_many {
        c.kind = Kind::TooManyAuthFailures;
    }
    attribute(c, reading)
}

fn disconnecting(m: &str) -> Option<Classified<'_>> {
    let caps = DISCONNECTING.captures(m)?;
    user_addr_port_reason(
        Classified::new(Kind::Disconnect),
        text(&caps, "who")?,
        text(&caps, "body")?,
    )
}

fn dispatch_fatal(m: &str) -> Option<Classified<'_>> {
    let caps = DISPATCH_FATAL.captures(m)?;
    let c = Classified::new(Kind::ProtocolError);
    match (text(&caps, "who"), text(&caps, "body")) {
        (Some(who), Some(body)) => user_addr_port_reason(c, who, body),
        _ => Some(Classified {
            source: Some(ip(text(&caps, "a")?)?),
            port: Some(port(text(&caps, "port")?)?),
            ..c
        }),
    }
}

fn received_disconnect(m: &str) -> Option<Classified<'_>> {
    let caps = RECEIVED_DISCONNECT.captures(m)?;
    let (a, port_no, code) = match text(&caps, "a") {
        Some(a) => (a, Some(port(text(&caps, "port")?)?), text(&caps, "code")?),
        None => (text(&caps, "a2")?, None, text(&caps, "code2")?),
    };
    Some(Classified {
        source: Some(ip(a)?),
        port: port_no,
        disconnect_code: Some(port(code)?),
        ..Classified::new(Kind::Disconnect)
    })
}

fn bad_protocol(m: &str) -> Option<Classified<'_>> {
    let body = text(&BAD_PROTOCOL.captures(m)?, "body")?;
    protocol_tail(body, &QUOTE_FROM, &QUOTE_FROM_ADDR_PORT_END)
}

/// Every `from` (as `from` matches) that starts a tail `end` reads to the
/// message's end: one reading → the peer, two → ambiguous, none → not this shape.
fn protocol_tail<'a>(body: &'a str, from: &'static Regex, end: &Regex) -> Option<Classified<'a>> {
    let mut reading = Reading::None;
    for cand in positions(from, body) {
        let Some(caps) = end.captures(&body[cand.start()..]) else {
            continue;
        };
        if let (Some(source), Some(port_no)) =
            (text(&caps, "a").and_then(ip), port_of(&caps, "port"))
        {
            reading.push((source, port_no));
        }
    }
    let mut c = Classified::new(Kind::BadProtocol);
    match reading {
        Reading::None => return None,
        Reading::One((source, port_no)) => {
            c.source = Some(source);
            c.port = port_no;
        }
        Reading::Many => c.ambiguous = true,
    }
    Some(c)
}

fn not_allowed(m: &str) -> Option<Classified<'_>> {
    let head = text(&NOT_ALLOWED.captures(m)?, "head")?;
    let mut reading = Reading::None;
    for cand in positions(&SPACE_FROM, head) {
        let Some(caps) = FROM_HOST_END.captures(&head[cand.start() + 1..]) else {
            continue;
        };
        if let Some(h) = text(&caps, "h").and_then(host) {
            reading.push((&head[..cand.start()], h, None));
        }
    }
    let c = Classified::new(Kind::NotAllowed);
    match reading {
        Reading::None => Some(Classified {
            user: Some(head),
            ..c
        }),
        reading => attribute(c, reading),
    }
}

fn pam(m: &str) -> Option<Classified<'_>> {
    let caps = PAM.captures(m)?;
    let body = text(&caps, "body")?;
    let mut reading = Reading::None;
    for cand in positions(&FROM_CANDIDATE, body) {
        let at = cand.end() - "from ".len();
        let Some(tail) = FROM_HOST_VIA_END.captures(&body[at..]) else {
            continue;
        };
        let via_ok = text(&tail, "via").is_none_or(|via| ip(via).is_some());
        if let Some(h) = text(&tail, "h").and_then(host).filter(|_| via_ok) {
            reading.push((&body[..cand.start()], h, None));
        }
    }
    let c = Classified {
        invalid_user: caps.name("iu").is_some(),
        ..Classified::new(Kind::PamAuthFailure)
    };
    attribute(c, reading)
}

fn pam_unix(m: &str) -> Option<Classified<'_>> {
    let rest = text(&PAM_UNIX.captures(m)?, "rest")?;
    let mut reading = Reading::None;
    for cand in positions(&RHOST, rest) {
        let Some(caps) = RHOST_ADDR_USER.captures(&rest[cand.start()..]) else {
            continue;
        };
        if let Some(source) = text(&caps, "a").and_then(ip) {
            reading.push((source, text(&caps, "user")));
        }
    }
    let mut c = Classified::new(Kind::PamUnixFailure);
    match reading {
        Reading::None => {}
        Reading::One((source, user)) => {
            c.source = Some(source);
            c.user = user;
        }
        Reading::Many => c.ambiguous = true,
    }
    Some(c)
}

fn refused_connect(m: &str) -> Option<Classified<'_>> {
    let caps = REFUSED_CONNECT.captures(m)?;
    Some(Classified {
        source: Some(ip(text(&caps, "a")?)?),
        ..Classified::new(Kind::RefusedConnect)
    })
}

fn reverse_mapping(m: &str) -> Option<Classified<'_>> {
    let caps = REVERSE_MAPPING.captures(m)?;
    Some(Classified {
        source: Some(ip(text(&caps, "a")?)?),
        ..Classified::new(Kind::ReverseMappingFailed)
    })
}

fn reverse_mapping_bracketed(m: &str) -> Option<Classified<'_>> {
    let caps = REVERSE_MAPPING_BRACKETED.captures(m)?;
    Some(Classified {
        source: Some(ip(text(&caps, "a")?)?),
        ..Classified::new(Kind::ReverseMappingFailed)
    })
}

fn connection_from(m: &str) -> Option<Classified<'_>> {
    let caps = CONNECTION_FROM.captures(m)?;
    Some(Classified {
        source: Some(ip(text(&caps, "a")?)?),
        port: port_of(&caps, "port")?,
        ..Classified::new(Kind::ConnectionFrom)
    })
}

fn audit(m: &str) -> Option<Classified<'_>> {
    let field = text(&AUDIT.captures(m)?, "field")?;
    let caps = AUDIT_REMOTE.captures(field)?;
    Some(Classified {
        source: Some(ip(text(&caps, "a")?)?),
        port: Some(port(text(&caps, "port")?)?),
        ..Classified::new(Kind::ConnectionFrom)
    })
}

fn drop_connection(m: &str) -> Option<Classified<'_>> {
    let caps = DROP_CONNECTION.captures(m)?;
    port(text(&caps, "n")?)?;
    let kind = if caps.name("penalty").is_some() {
        Kind::Penalty
    } else {
        Kind::MaxStartupsDrop
    };
    Some(Classified {
        source: Some(ip(text(&caps, "a")?)?),
        port: Some(port(text(&caps, "port")?)?),
        ..Classified::new(kind)
    })
}

fn head_addr_port<'a>(kind: Kind, shape: &Regex, m: &'a str) -> Option<Classified<'a>> {
    let rest = text(&shape.captures(m)?, "rest")?;
    let caps = ADDR_PORT.captures(rest)?;
    Some(Classified {
        source: Some(ip(text(&caps, "a")?)?),
        port: port_of(&caps, "port")?,
        ..Classified::new(kind)
    })
}

fn no_identification(m: &str) -> Option<Classified<'_>> {
    head_addr_port(Kind::NoIdentification, &NO_IDENTIFICATION, m)
}

fn root_login_refused(m: &str) -> Option<Classified<'_>> {
    head_addr_port(Kind::RootLoginRefused, &ROOT_LOGIN_REFUSED, m)
}

fn login_timeout(m: &str) -> Option<Classified<'_>> {
    let rest = text(&LOGIN_TIMEOUT.captures(m)?, "rest")?;
    if !rest.starts_with("connection from ") {
        return head_addr_port(Kind::LoginTimeout, &LOGIN_TIMEOUT, m);
    }
    let caps = LOGIN_TIMEOUT_CONNECTION.captures(rest)?;
    ip(text(&caps, "local")?)?;
    Some(Classified {
        source: Some(ip(text(&caps, "a")?)?),
        ..Classified::new(Kind::LoginTimeout)
    })
}

fn magic_value(m: &str) -> Option<Classified<'_>> {
    let body = text(&MAGIC_VALUE.captures(m)?, "body")?;
    protocol_tail(body, &OBFUSCATED_FROM, &OBFUSCATED_FROM_ADDR_PORT_END)
}

/// `Unable to negotiate with A port P: R` and `banner exchange: Connection from A port P: R`.
fn addr_port_reason(m: &str) -> Option<Classified<'_>> {
    let (kind, caps) = if let Some(caps) = UNABLE_TO_NEGOTIATE_WITH.captures(m) {
        (Kind::KexFailed, caps)
    } else {
        (Kind::BadProtocol, BANNER_EXCHANGE.captures(m)?)
    };
    Some(Classified {
        source: Some(ip(text(&caps, "a")?)?),
        port: Some(port(text(&caps, "port")?)?),
        ..Classified::new(kind)
    })
}

fn addressless(m: &str) -> Option<Classified<'_>> {
    let kind = if KEX_IDENTIFICATION.is_match(m) {
        Kind::BadProtocol
    } else if READ_FROM_SOCKET.is_match(m) {
        Kind::ProtocolError
    } else if UNABLE_KEX.is_match(m) || NO_MATCHING.is_match(m) {
        Kind::KexFailed
    } else {
        return None;
    };
    Some(Classified::new(kind))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::addr::{self, tables};
    use super::*;

    // The oracle's own address reading, held to the same hand-written
    // tables as the scanner's `addr`.

    #[test]
    fn ip_table() {
        for &(text, want) in tables::IP {
            assert_eq!(ip(text), want, "ip({text:?})");
        }
    }

    #[test]
    fn host_table() {
        for &(text, want) in tables::HOST {
            assert_eq!(host(text), want, "host({text:?})");
        }
        assert_eq!(host(&"a".repeat(253)).map(str::len), Some(253));
        assert_eq!(host(&"a".repeat(254)), None);
    }

    #[test]
    fn port_table() {
        for &(text, want) in tables::PORT {
            assert_eq!(port(text), want, "port({text:?})");
        }
    }

    proptest! {
        // Beyond the tables: the two readers agree on address-like tokens.
        #[test]
        fn address_readers_agree(
            tok in prop_oneof![
                "[0-9]{1,4}(\\.[0-9]{1,4}){2,4}",
                "(::(ffff|FFFF|Ffff):)?[0-9]{1,3}(\\.[0-9]{1,3}){2,4}",
                "([0-9a-fA-F]{0,5}:){1,8}[0-9a-fA-F]{0,5}(%[a-z0-9]{1,4})?",
                "[0-9A-Za-z._:%-]{0,12}",
            ]
        ) {
            prop_assert_eq!(ip(&tok), addr::ip(&tok), "ip({:?})", tok);
            prop_assert_eq!(host(&tok), addr::host(&tok), "host({:?})", tok);
        }

        #[test]
        fn port_readers_agree(tok in "[0-9+ -]{0,7}") {
            prop_assert_eq!(port(&tok), addr::port(&tok), "port({:?})", tok);
        }
    }
}
