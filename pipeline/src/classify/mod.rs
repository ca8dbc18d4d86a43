//! sshd message classification: what a single sshd message says happened, who
//! it names as the peer, and whether that attribution can be trusted.
//!
//! Two implementations share the types of this module: [`scanner`], the
//! hand-written hot path, and `oracle`, a regex implementation kept as the
//! test oracle, compiled only for tests and with the `oracle` cargo feature
//! (benches and fuzzing), so that the production binary links no regex. Both take the *message* of an sshd line (after the syslog or
//! journal prefix and sshd's `error:`/`fatal:` decorations were removed by
//! [`crate::prefix`]) and must return identical [`Classified`] values for every
//! input; the corpus tests and the fuzz targets hold them to that.
//!
//! # Attribution rules
//!
//! Usernames, `Bad protocol version` strings, client disconnect reasons, cert
//! IDs and hostbased client names are attacker-controlled and may contain
//! spaces and text such as `from 10.0.0.1 port 22 ssh2`. The peer address is
//! therefore read from the fixed *tail* (or the fixed *head*, where the server
//! text precedes all attacker text) of each shape:
//!
//! * A shape whose attacker text precedes the address (`Invalid user U from A
//!   port P`, `Connection closed by authenticating user U A port P [preauth]`)
//!   is anchored at the end of the message.
//! * `Failed|Accepted|Postponed M for [invalid user ]U from A[ port P[ sshV]][: INFO]`
//!   (and `maximum authentication attempts exceeded for ...`, which has no INFO):
//!   every `from ` (at the start of the user part or after a space) is a
//!   candidate. A candidate is a valid reading when the rest parses as
//!   `A[ port P[ sshV]]` followed by either the end of the message or
//!   `: INFO` for the methods sshd appends one to (OpenSSH's `auth_log`
//!   appends what a method recorded, and only these record anything): for
//!   `publickey`/`hostbased`, INFO whose first two words are a key type and a
//!   fingerprint; for the `gssapi` methods, any INFO (the client's name);
//!   for an unfamiliar method (any but `password`, `none`,
//!   `keyboard-interactive[/...]` and the above), a key's INFO as for
//!   `publickey`; and for `ssh1`, `: ruser[ ...]`. What follows a key's two words is not
//!   checked: it varies (`ID ... CA ...` for certificates, `, client user
//!   "..."` for hostbased, `, signature count = N` for security keys, and
//!   before OpenSSH 7.8 `TYPE-CERT ID ...` with no fingerprint), and a real
//!   tail that failed a stricter check would leave an injected tail as the
//!   only reading. Password and keyboard-interactive lines never carry INFO,
//!   so an injected `... ssh2: ...` in their user names is no reading. `A`
//!   ends at a space, or just before `: ` when INFO follows a bare address;
//!   an IPv6 address may end in `::` (only one of the two splits is ever an
//!   address).
//!   Readings are ranked: with port and protocol > with port > bare address.
//!   The best rank must hold exactly one reading; two or more readings of the
//!   best rank make the line [`Classified::ambiguous`]: the kind stands, the
//!   address is `None`.
//! * `Disconnecting (authenticating|invalid) user U A port P: R` and
//!   `ssh_dispatch_run_fatal: Connection from (authenticating|invalid) user U A port P: R`
//!   have attacker text on both sides (R can quote user names): every ` port `
//!   preceded by ` A` and followed by `P: ` is a reading; two or more make the
//!   line ambiguous, and the rightmost one decides between
//!   [`Kind::Disconnect`] and [`Kind::TooManyAuthFailures`].
//! * `pam_unix(sshd:auth): authentication failure; ... ruser=R rhost=A[  user=U]`
//!   has attacker text on both sides too (some distributions put the attempted
//!   user name in `ruser=`): every ` rhost=` followed by an address is a
//!   reading; two or more make it ambiguous.
//! * Shapes whose address follows server text directly (`Received disconnect
//!   from A`, `Unable to negotiate with A`, `Did not receive identification
//!   string from A`) are anchored at the head. `reverse mapping checking
//!   getaddrinfo for H [A] failed` is anchored at its end: H is the peer's
//!   reverse DNS name.
//!
//! An address is an IPv4 (leading zeros accepted, as sshd prints what it
//! got), an IPv6 (an IPv4-mapped `::ffff:a.b.c.d` is reported as `a.b.c.d`;
//! a zone index, `fe80::1%eth0`, is dropped: it names the instance's own
//! interface, not the peer),
//! or, only in the shapes where sshd prints a resolved host name (`PAM: ...
//! from H`, `User U from H not allowed because ...`), a host name.

pub mod addr;
#[cfg(any(test, feature = "oracle"))]
pub mod oracle;
pub mod scanner;

pub use scanner::classify;

use serde::Serialize;

/// What an sshd message reports. Serialized in `snake_case`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Kind {
    /// `Invalid user U from A[ port P]`; `input_userauth_request: invalid user U` (no address).
    InvalidUser,
    /// `Failed M for ...` with a method other than publickey/hostbased
    /// (password, keyboard-interactive[/pam], none, unknown, gssapi-*, and
    /// unfamiliar ones, which may end in a key's `: KEYTYPE FINGERPRINT`).
    FailedPassword,
    /// `Failed publickey for ...`.
    FailedPublickey,
    /// `Failed hostbased for ...`.
    FailedHostbased,
    /// `PAM: Authentication failure|error for U from H[ via A]`,
    /// `PAM: User not known to the underlying authentication module for illegal user U from H`,
    /// `PAM: unknown user for illegal user U from H`.
    PamAuthFailure,
    /// `pam_unix(sshd:auth): authentication failure; ... rhost=A[  user=U]`: the PAM
    /// echo of a failure sshd logs itself on the next line: attack evidence
    /// ([`crate::context::Verdict::is_attack`]) with no signal, so the attempt
    /// is counted once, on sshd's own line.
    PamUnixFailure,
    /// `User U from H not allowed because REASON`; `User U not allowed because REASON`.
    NotAllowed,
    /// `ROOT LOGIN REFUSED FROM A[ port P]`.
    RootLoginRefused,
    /// tcp-wrappers `refused connect from X (A)`.
    RefusedConnect,
    /// `maximum authentication attempts exceeded for [invalid user ]U from A[ port P[ sshV]]`.
    MaxAuthExceeded,
    /// `Disconnecting: Too many authentication failures[ for [invalid user ]U]`,
    /// `Disconnecting (authenticating|invalid) user U A port P: Too many authentication failures`.
    TooManyAuthFailures,
    /// `Received disconnect from A: C: R`, `Received disconnect from A port P:[ ]C: R`,
    /// `Disconnected from [(authenticating|invalid) ]user U A port P`, `Disconnected from A[ port P]`,
    /// `Disconnecting (authenticating|invalid) user U A port P: R`.
    Disconnect,
    /// `Connection closed by [(authenticating|invalid) ]user U A port P`, `Connection closed by A[ port P]`,
    /// and the same with `Connection reset by`.
    ConnectionClosed,
    /// `Timeout before authentication for A[ port P]`,
    /// `Timeout before authentication for connection from A to B, pid = N` (the peer is A).
    LoginTimeout,
    /// `Did not receive identification string from A[ port P]`.
    NoIdentification,
    /// `Bad protocol version identification 'S' from A[ port P]`,
    /// `banner exchange: Connection from A port P: R`,
    /// `Magic value check failed (V) on obfuscated handshake from A[ port P]`,
    /// `kex_exchange_identification: R` (no address).
    BadProtocol,
    /// `Unable to negotiate with A port P: R`,
    /// `Unable to negotiate a key exchange method`, `no matching X found: R` (no address).
    KexFailed,
    /// `Read from socket failed: R` (no address),
    /// `ssh_dispatch_run_fatal: Connection from [(authenticating|invalid) user U ]A port P: R`.
    ProtocolError,
    /// OpenSSH 9.8+ `drop connection #N from [A]:P on [L]:Q penalty: R`.
    Penalty,
    /// `drop connection #N from [A]:P on [L]:Q past MaxStartups`.
    MaxStartupsDrop,
    /// `Accepted M for U from A port P sshV[: INFO]`.
    Accepted,
    /// `Postponed M for U from A port P sshV`.
    Postponed,
    /// `Connection from A[ port P[ on L port Q[ rdomain "R"]]]` and the
    /// `SSH: Server;Ltype: ...;Remote: A-P;...` audit line: context only.
    ConnectionFrom,
    /// `Address A maps to H, but this does not map back to the address - POSSIBLE BREAK-IN ATTEMPT!`,
    /// `reverse mapping checking getaddrinfo for H [A] failed - POSSIBLE BREAK-IN ATTEMPT!`.
    ReverseMappingFailed,
}

impl Kind {
    pub const ALL: [Kind; 24] = [
        Kind::InvalidUser,
        Kind::FailedPassword,
        Kind::FailedPublickey,
        Kind::FailedHostbased,
        Kind::PamAuthFailure,
        Kind::PamUnixFailure,
        Kind::NotAllowed,
        Kind::RootLoginRefused,
        Kind::RefusedConnect,
        Kind::MaxAuthExceeded,
        Kind::TooManyAuthFailures,
        Kind::Disconnect,
        Kind::ConnectionClosed,
        Kind::LoginTimeout,
        Kind::NoIdentification,
        Kind::BadProtocol,
        Kind::KexFailed,
        Kind::ProtocolError,
        Kind::Penalty,
        Kind::MaxStartupsDrop,
        Kind::Accepted,
        Kind::Postponed,
        Kind::ConnectionFrom,
        Kind::ReverseMappingFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Kind::InvalidUser => "invalid_user",
            Kind::FailedPassword => "failed_password",
            Kind::FailedPublickey => "failed_publickey",
            Kind::FailedHostbased => "failed_hostbased",
            Kind::PamAuthFailure => "pam_auth_failure",
            Kind::PamUnixFailure => "pam_unix_failure",
            Kind::NotAllowed => "not_allowed",
            Kind::RootLoginRefused => "root_login_refused",
            Kind::RefusedConnect => "refused_connect",
            Kind::MaxAuthExceeded => "max_auth_exceeded",
            Kind::TooManyAuthFailures => "too_many_auth_failures",
            Kind::Disconnect => "disconnect",
            Kind::ConnectionClosed => "connection_closed",
            Kind::LoginTimeout => "login_timeout",
            Kind::NoIdentification => "no_identification",
            Kind::BadProtocol => "bad_protocol",
            Kind::KexFailed => "kex_failed",
            Kind::ProtocolError => "protocol_error",
            Kind::Penalty => "penalty",
            Kind::MaxStartupsDrop => "max_startups_drop",
            Kind::Accepted => "accepted",
            Kind::Postponed => "postponed",
            Kind::ConnectionFrom => "connection_from",
            Kind::ReverseMappingFailed => "reverse_mapping_failed",
        }
    }
}

/// The signals windows count and rules fire on. Several kinds feed one signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "snake_case")]
pub enum Signal {
    /// A login attempt for an account that does not exist.
    InvalidUser,
    /// A failed password/keyboard-interactive/PAM attempt, too many failures on one connection.
    AuthFailure,
    /// A rejected key: failed publickey/hostbased for an invalid user, or a client
    /// that offered keys and gave up before authenticating (key-only servers).
    InvalidKey,
    /// A pre-authentication disconnect or close.
    Disconnect,
    /// An account refused by AllowUsers/DenyUsers/groups, a refused root login, tcp-wrappers.
    NotAllowed,
    /// Scanner and protocol noise: no banner, bad banner, failed key exchange,
    /// login grace timeout, OpenSSH penalties and MaxStartups drops.
    Protocol,
}

impl Signal {
    pub const COUNT: usize = 6;
    pub const ALL: [Signal; Signal::COUNT] = [
        Signal::InvalidUser,
        Signal::AuthFailure,
        Signal::InvalidKey,
        Signal::Disconnect,
        Signal::NotAllowed,
        Signal::Protocol,
    ];

    pub fn index(self) -> usize {
        self as usize
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Signal::InvalidUser => "invalid_user",
            Signal::AuthFailure => "auth_failure",
            Signal::InvalidKey => "invalid_key",
            Signal::Disconnect => "disconnect",
            Signal::NotAllowed => "not_allowed",
            Signal::Protocol => "protocol",
        }
    }

    pub fn parse(name: &str) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| s.as_str() == name)
    }
}

/// One classified sshd message. All text borrows from the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Classified<'a> {
    pub kind: Kind,
    /// The user name as logged (attacker-controlled), when the shape has one.
    pub user: Option<&'a str>,
    /// The peer address from the anchored position, IPv4-mapped IPv6 reported as IPv4.
    pub source: Option<&'a str>,
    pub port: Option<u16>,
    /// The message ended in ` [preauth]`.
    pub preauth: bool,
    /// The shape said `invalid user`/`illegal user`/`<invalid username>`.
    pub invalid_user: bool,
    /// The shape said `authenticating user` (a valid account that did not finish auth).
    pub authenticating_user: bool,
    /// More than one reading of the tail was possible: no address is attributed.
    pub ambiguous: bool,
    /// For `Received disconnect`: the SSH disconnect reason code.
    pub disconnect_code: Option<u16>,
}

impl<'a> Classified<'a> {
    pub fn new(kind: Kind) -> Self {
        Classified {
            kind,
            user: None,
            source: None,
            port: None,
            preauth: false,
            invalid_user: false,
            authenticating_user: false,
            ambiguous: false,
            disconnect_code: None,
        }
    }

    /// The signal this message is evidence of on its own, if any. Lines that
    /// are evidence only together with earlier lines of their connection
    /// (a close after a failed key exchange, say) are handled by
    /// [`crate::context`].
    pub fn signal(&self) -> Option<Signal> {
        match self.kind {
            Kind::InvalidUser => Some(Signal::InvalidUser),
            Kind::FailedPassword | Kind::PamAuthFailure => Some(Signal::AuthFailure),
            Kind::MaxAuthExceeded | Kind::TooManyAuthFailures => Some(Signal::AuthFailure),
            // Clients routinely offer several keys before the right one: a failed
            // key for a valid account is not evidence; for an invalid one it is.
            Kind::FailedPublickey => self.invalid_user.then_some(Signal::InvalidKey),
            Kind::FailedHostbased => Some(Signal::InvalidKey),
            Kind::NotAllowed | Kind::RootLoginRefused | Kind::RefusedConnect => {
                Some(Signal::NotAllowed)
            }
            Kind::Disconnect | Kind::ConnectionClosed => {
                if self.authenticating_user && self.preauth {
                    Some(Signal::InvalidKey)
                } else if self.preauth
                    || self.invalid_user
                    || matches!(self.disconnect_code, Some(3) | Some(14))
                {
                    Some(Signal::Disconnect)
                } else {
                    None
                }
            }
            Kind::LoginTimeout
            | Kind::NoIdentification
            | Kind::BadProtocol
            | Kind::KexFailed
            | Kind::ProtocolError
            | Kind::Penalty
            | Kind::MaxStartupsDrop => Some(Signal::Protocol),
            Kind::PamUnixFailure
            | Kind::Accepted
            | Kind::Postponed
            | Kind::ConnectionFrom
            | Kind::ReverseMappingFailed => None,
        }
    }
}
