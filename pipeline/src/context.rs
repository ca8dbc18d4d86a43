//! Connection context: attributes lines that name no peer from earlier lines
//! of the same sshd connection (same host, same sshd pid), in bounded memory.
//!
//! Some evidence arrives without an address: `Disconnecting: Too many
//! authentication failures [preauth]`, `kex_exchange_identification: ...`,
//! `fatal: Read from socket failed ...`. Its address comes from an earlier
//! `Connection from A port P` (or any earlier attributed line) of the same
//! connection; when there is none yet, the evidence is held as *pending* and
//! the next line of the connection that names the peer (typically
//! `Connection closed by A port P`) carries it. Evidence always counts
//! against the instance at once; the pending mechanism only adds the
//! address, so nothing is counted twice.

use std::collections::{HashMap, VecDeque};

use crate::classify::{Classified, Kind, Signal};
use crate::peer::Peer;

/// Default number of connections whose context is kept.
pub const DEFAULT_MAX_CONNECTIONS: usize = 65_536;

/// What a line means once its connection's context is taken into account.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verdict<'a> {
    pub kind: Kind,
    /// The signal the line is evidence of, if any.
    pub signal: Option<Signal>,
    pub user: Option<&'a str>,
    /// The peer the evidence is attributed to (None: unknown or ambiguous).
    pub source: Option<Peer>,
    /// The address the line itself names (unless ambiguous), as logged: also
    /// for lines that are not evidence.
    pub logged_source: Option<&'a str>,
    pub port: Option<u16>,
    /// Where the address came from.
    pub attribution: Attribution,
    /// Count this line's signal against the instance (false when it only
    /// supplies the address of evidence already counted).
    pub counts_for_instance: bool,
    /// The line's signal is a new attempt: false when another line of the
    /// same connection already counted it (the disconnect pair, the PAM
    /// line of a `Failed password`, a second key-exchange complaint). See
    /// docs/detection.md for what one attempt is per signal.
    pub new_attempt: bool,
    pub ambiguous: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Attribution {
    /// The line names its peer itself.
    Line,
    /// An earlier line of the same connection named the peer.
    Connection,
    /// No address could be attributed.
    None,
}

impl Verdict<'_> {
    /// Evidence of a failed or hostile access attempt. The PAM echo
    /// (`pam_unix(sshd:auth): authentication failure; ... rhost=A`) is
    /// evidence too, but it has no signal: sshd logs the same attempt itself
    /// (`Failed password ...`, the line that counts), so one attempt is
    /// counted once.
    pub fn is_attack(&self) -> bool {
        self.signal.is_some() || self.kind == Kind::PamUnixFailure
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct ConnKey {
    host: u64,
    pid: u32,
}

#[derive(Debug, Default)]
struct ConnState {
    source: Option<Peer>,
    port: Option<u16>,
    pending: Option<Signal>,
    /// Signals this connection has counted (bit i: `Signal` index i).
    counted: u8,
    /// `Failed <method>` lines and PAM failure lines seen: each pair is one
    /// password attempt, whichever of the two comes first.
    failed_lines: u16,
    pam_lines: u16,
    /// The connection was closed (by the line with this port, 0 for none):
    /// a second closing line with the same port is the same close; any
    /// other line is a new connection on a recycled pid.
    closed_port: Option<u16>,
}

impl ConnState {
    /// Whether `c` (of signal `signal`) is an attempt this connection has not counted.
    fn new_attempt(&mut self, c: &Classified<'_>, signal: Signal) -> bool {
        let bit = 1u8 << signal.index();
        match c.kind {
            Kind::FailedPassword => {
                self.failed_lines = self.failed_lines.saturating_add(1);
                self.counted |= bit;
                self.failed_lines > self.pam_lines
            }
            Kind::PamAuthFailure => {
                self.pam_lines = self.pam_lines.saturating_add(1);
                self.counted |= bit;
                self.pam_lines > self.failed_lines
            }
            // "Too many failures" closes a connection whose failures counted.
            Kind::MaxAuthExceeded | Kind::TooManyAuthFailures if self.counted & bit != 0 => false,
            _ => {
                let new = self.counted & bit == 0;
                self.counted |= bit;
                new
            }
        }
    }
}

/// Per-connection context, capped at a number of connections (oldest first out).
pub struct ConnectionTracker {
    /// Seeded at random per tracker: the pids and host names it is keyed
    /// by are written by the instance (any local user can log an `sshd`
    /// line with `logger`), and with a known seed they could be chosen to
    /// collide, slowing every lookup or merging two hosts' connections.
    conns: HashMap<ConnKey, ConnState, foldhash::fast::RandomState>,
    hosts: foldhash::fast::RandomState,
    order: VecDeque<ConnKey>,
    cap: usize,
    evictions: u64,
}

impl Default for ConnectionTracker {
    fn default() -> Self {
        ConnectionTracker::new(DEFAULT_MAX_CONNECTIONS)
    }
}

impl ConnectionTracker {
    pub fn new(cap: usize) -> Self {
        ConnectionTracker {
            conns: HashMap::default(),
            hosts: foldhash::fast::RandomState::default(),
            order: VecDeque::new(),
            cap: cap.max(1),
            evictions: 0,
        }
    }

    /// The identity of the machine a line came from, as [`Self::observe`]
    /// takes it: the instance and the syslog host the line names.
    pub fn host_key(&self, instance: &str, syslog_host: Option<&str>) -> u64 {
        use std::hash::BuildHasher;
        self.hosts.hash_one((instance, syslog_host.unwrap_or("")))
    }

    /// Connections evicted to stay within the cap.
    pub fn evictions(&self) -> u64 {
        self.evictions
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// Applies one classified line. `host` identifies the machine (instance and
    /// syslog host); `pid` is sshd's, without which there is no connection.
    pub fn observe<'a>(&mut self, host: u64, pid: Option<u32>, c: &Classified<'a>) -> Verdict<'a> {
        let own_signal = c.signal();
        let text = if c.ambiguous { None } else { c.source };
        let mut v = Verdict {
            kind: c.kind,
            signal: own_signal,
            user: if c.ambiguous { None } else { c.user },
            source: None,
            logged_source: text,
            port: c.port,
            attribution: Attribution::None,
            counts_for_instance: own_signal.is_some(),
            new_attempt: own_signal.is_some(),
            ambiguous: c.ambiguous,
        };
        // Parsing the address is only worth it where it is used: evidence, and
        // what the connection context keeps (benign logins are most lines).
        let parse = || text.and_then(Peer::parse);
        let attribute_own = |v: &mut Verdict<'a>, source: Option<Peer>| {
            if source.is_some() {
                v.source = source;
                v.attribution = Attribution::Line;
            }
        };
        let Some(pid) = pid else {
            if own_signal.is_some() {
                attribute_own(&mut v, parse());
            }
            return v;
        };
        let key = ConnKey { host, pid };
        let closes = closes_connection(c.kind);
        let remembers = text.is_some() && !closes && remembers_peer(c.kind);
        // One hash lookup per line: evidence and lines that name the peer
        // create the connection's state; a close only looks it up.
        let state = if own_signal.is_some() || remembers {
            self.entry(key)
        } else if text.is_some() && closes {
            match self.conns.get_mut(&key) {
                Some(s) => s,
                None => return v,
            }
        } else {
            return v;
        };
        if let Some(port) = state.closed_port {
            let same_close = closes && (port == 0 || c.port.is_none_or(|p| p == port));
            if !same_close {
                // A pid sshd used before: a new connection.
                *state = ConnState::default();
            }
        }
        if let Some(signal) = own_signal {
            v.new_attempt = state.new_attempt(c, signal);
        }
        if text.is_some() && closes {
            // The connection is over: it may carry the address of evidence
            // logged without one. Its state stays (marked closed) so that
            // the second line of a disconnect pair is known as the same
            // close; a later line of this pid is a new connection.
            state.closed_port = Some(c.port.unwrap_or(0));
            state.source = None;
            match (own_signal, state.pending.take()) {
                (None, Some(signal)) => {
                    v.source = parse();
                    if v.source.is_some() {
                        v.signal = Some(signal);
                        v.counts_for_instance = false;
                        // Counted for the instance already; new for the source.
                        v.new_attempt = true;
                        v.attribution = Attribution::Connection;
                    }
                }
                (Some(_), _) => attribute_own(&mut v, parse()),
                (None, None) => {}
            }
        } else if text.is_some() {
            let source = parse();
            state.pending = None;
            state.source = source.clone();
            state.port = c.port;
            attribute_own(&mut v, source);
        } else if own_signal.is_some() {
            match &state.source {
                Some(source) => {
                    v.source = Some(source.clone());
                    v.port = v.port.or(state.port);
                    v.attribution = Attribution::Connection;
                }
                None => state.pending = own_signal,
            }
        }
        v
    }

    fn entry(&mut self, key: ConnKey) -> &mut ConnState {
        if self.order.len() >= 2 * self.cap {
            // Closed connections leave stale keys in the queue: keep it bounded.
            let conns = &self.conns;
            self.order.retain(|k| conns.contains_key(k));
        }
        // One hash lookup on the common path; the membership test is only
        // needed when an insert could have to evict.
        if self.conns.len() >= self.cap && !self.conns.contains_key(&key) {
            while self.conns.len() >= self.cap {
                let Some(old) = self.order.pop_front() else {
                    break;
                };
                if self.conns.remove(&old).is_some() {
                    self.evictions += 1;
                }
            }
        }
        match self.conns.entry(key) {
            std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
            std::collections::hash_map::Entry::Vacant(e) => {
                self.order.push_back(key);
                e.insert(ConnState::default())
            }
        }
    }
}

/// Benign lines worth remembering the peer of: what may precede evidence
/// logged without an address. Accepted logins and PAM echoes are not.
fn remembers_peer(kind: Kind) -> bool {
    !matches!(
        kind,
        Kind::Accepted | Kind::Postponed | Kind::PamUnixFailure | Kind::ReverseMappingFailed
    )
}

/// Lines that end a connection and so may carry the address of evidence
/// logged earlier without one.
fn closes_connection(kind: Kind) -> bool {
    matches!(kind, Kind::ConnectionClosed | Kind::Disconnect)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::classify::classify;

    fn run(lines: &[(u32, &str)]) -> Vec<(bool, Option<String>)> {
        let mut t = ConnectionTracker::new(8);
        lines
            .iter()
            .map(|(pid, msg)| {
                let c = classify(msg).unwrap();
                let v = t.observe(1, Some(*pid), &c);
                (v.is_attack(), v.source.map(|s| s.to_string()))
            })
            .collect()
    }

    #[test]
    fn host_keys_are_seeded_per_tracker() {
        // A fixed seed would let a log writer precompute pids and host
        // names that collide; two trackers agreeing on a key would mean one.
        let (a, b) = (ConnectionTracker::new(8), ConnectionTracker::new(8));
        assert_eq!(a.host_key("i-1", None), a.host_key("i-1", None));
        assert_ne!(a.host_key("i-1", None), b.host_key("i-1", None));
        assert_ne!(a.host_key("i-1", None), a.host_key("i-1", Some("web")));
    }

    #[test]
    fn address_from_earlier_line() {
        let r = run(&[
            (
                7,
                "Connection from 192.0.2.3 port 39678 on 192.168.1.9 port 22",
            ),
            (7, "Unable to negotiate a key exchange method [preauth]"),
            (8, "Unable to negotiate a key exchange method [preauth]"),
        ]);
        assert_eq!(r[0], (false, Some("192.0.2.3".into())));
        assert_eq!(r[1], (true, Some("192.0.2.3".into())));
        assert_eq!(r[2], (true, None));
    }

    #[test]
    fn pending_evidence_takes_the_closing_address_once() {
        let mut t = ConnectionTracker::new(8);
        let lines = [
            "kex_exchange_identification: Connection closed by remote host",
            "Connection closed by 192.0.2.15 port 35352",
            "Connection closed by 192.0.2.15 port 35352",
        ];
        let v: Vec<_> = lines
            .iter()
            .map(|m| t.observe(1, Some(9), &classify(m).unwrap()))
            .collect();
        assert!(v[0].is_attack() && v[0].counts_for_instance && v[0].source.is_none());
        assert!(v[1].is_attack() && !v[1].counts_for_instance);
        assert_eq!(v[1].attribution, Attribution::Connection);
        assert!(!v[2].is_attack());
    }

    #[test]
    fn pam_echo_is_evidence_counted_once() {
        let mut t = ConnectionTracker::new(8);
        let lines = [
            "pam_unix(sshd:auth): authentication failure; logname= uid=0 euid=0 tty=ssh ruser= rhost=192.0.2.7  user=bob",
            "Failed password for bob from 192.0.2.7 port 4242 ssh2",
        ];
        let v: Vec<_> = lines
            .iter()
            .map(|m| t.observe(1, Some(9), &classify(m).unwrap()))
            .collect();
        // The echo is attack evidence but no signal: it is not counted...
        assert!(v[0].is_attack());
        assert_eq!((v[0].signal, v[0].counts_for_instance), (None, false));
        assert_eq!(v[0].logged_source, Some("192.0.2.7"));
        // ... the failure sshd logs itself is, once.
        assert!(v[1].is_attack() && v[1].counts_for_instance);
        assert_eq!(v[1].signal, Some(Signal::AuthFailure));
    }

    #[test]
    fn a_zone_indexed_peer_is_its_address() {
        let line = "Jan  1 00:00:00 host host sshd[9]: Failed password for bob from fe80::1%eth0 port 22 ssh2";
        let l = crate::prefix::parse_line(line).unwrap();
        let mut t = ConnectionTracker::new(8);
        let v = t.observe(1, l.pid, &classify(l.message).unwrap());
        // The zone names the instance's interface: one peer whatever the zone.
        assert_eq!(v.source, Peer::parse("fe80::1"));
        assert_eq!(v.signal, Some(Signal::AuthFailure));
    }

    #[test]
    fn other_hosts_and_pids_do_not_leak() {
        let mut t = ConnectionTracker::new(8);
        t.observe(
            1,
            Some(5),
            &classify("Connection from 192.0.2.3 port 1").unwrap(),
        );
        let v = t.observe(
            2,
            Some(5),
            &classify("Read from socket failed: Connection reset by peer [preauth]").unwrap(),
        );
        assert_eq!(v.source, None);
    }

    #[test]
    fn capped_with_evictions() {
        let mut t = ConnectionTracker::new(4);
        for pid in 0..10 {
            t.observe(
                1,
                Some(pid),
                &classify("Connection from 192.0.2.3 port 1").unwrap(),
            );
        }
        assert_eq!(t.len(), 4);
        assert_eq!(t.evictions(), 6);
        let v = t.observe(
            1,
            Some(0),
            &classify("Read from socket failed: x [preauth]").unwrap(),
        );
        assert_eq!(v.source, None, "evicted context must not attribute");
    }
}
