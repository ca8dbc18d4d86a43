//! Stage one's contribution to the fleet stage: per source network and
//! partial window, what one shard saw of it (counts per signal, the
//! instances and users it tried, accepted logins, first and last time), how
//! a shard builds them ([`PartialBuilder`]) and their wire form.
//!
//! A partial is a snapshot, not a delta: a later emission of the same
//! (shard, window, source, part) replaces an earlier one, so a replay or an
//! early emission followed by the final one never counts twice. Parts are
//! additive: a shard that must let go of an open partial (the cap on open
//! partials) emits it and starts the next part. docs/fleet.md has the why.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::classify::Signal;
use crate::peer::{Peer, PeerNet};
use crate::rules::{Condition, Dimension, Rule, GUESSES};

/// The first byte of every encoded partial; a reader refuses other versions.
pub const PARTIAL_VERSION: u8 = 1;

/// Instance names a partial carries for the command (the rest are counted).
pub const NAMED_INSTANCES: usize = 16;

/// Accepted logins a partial carries (a shard that sees more in one window
/// from one network keeps the first).
pub const MAX_LOGINS: usize = 8;

/// The largest exact set a reader accepts (a writer's `max_exact` is at most this).
pub const MAX_EXACT_LIMIT: usize = 1024;

const NAME_LIMIT: usize = 256;

/// HyperLogLog with 2^8 registers: about 6.5% standard error, 256 bytes on
/// the wire. Written here rather than taken from a crate because partials
/// cross processes: the registers must be a plain, validated byte array (a
/// crate's serde form that panics on a register vector of the wrong length
/// cannot be read from a stream).
const SKETCH_BITS: u32 = 8;
const SKETCH_REGISTERS: usize = 1 << SKETCH_BITS;

/// Distinct values by 64-bit hash: exact up to a bound, then a sketch.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Distinct {
    hashes: Vec<u64>,
    /// Registers, once the exact set outgrew its bound (then `hashes` is empty).
    sketch: Option<Vec<u8>>,
}

impl Distinct {
    pub fn insert(&mut self, h: u64, max_exact: usize) {
        if let Some(regs) = &mut self.sketch {
            sketch_insert(regs, h);
        } else if !self.hashes.contains(&h) {
            if self.hashes.len() < max_exact {
                self.hashes.push(h);
            } else {
                let mut regs = vec![0u8; SKETCH_REGISTERS];
                for &x in self.hashes.iter().chain(std::iter::once(&h)) {
                    sketch_insert(&mut regs, x);
                }
                self.hashes = Vec::new();
                self.sketch = Some(regs);
            }
        }
    }

    /// The union with `other` (exact while both are exact and the union fits).
    pub fn merge(&mut self, other: &Distinct, max_exact: usize) {
        match &other.sketch {
            Some(theirs) => {
                let regs = self.make_sketch();
                for (r, t) in regs.iter_mut().zip(theirs) {
                    *r = (*r).max(*t);
                }
            }
            None => {
                for &h in &other.hashes {
                    self.insert(h, max_exact);
                }
            }
        }
    }

    fn make_sketch(&mut self) -> &mut Vec<u8> {
        if self.sketch.is_none() {
            let mut regs = vec![0u8; SKETCH_REGISTERS];
            for &x in &self.hashes {
                sketch_insert(&mut regs, x);
            }
            self.hashes = Vec::new();
            self.sketch = Some(regs);
        }
        self.sketch.get_or_insert_with(Vec::new)
    }

    /// Exact below the bound; the sketch's estimate above it.
    pub fn count(&self) -> u32 {
        match &self.sketch {
            Some(regs) => sketch_estimate(regs),
            None => self.hashes.len() as u32,
        }
    }

    pub fn is_estimate(&self) -> bool {
        self.sketch.is_some()
    }

    fn validate(&self) -> Result<(), PartialError> {
        if self.hashes.len() > MAX_EXACT_LIMIT {
            return Err(PartialError::Invalid("exact set too large"));
        }
        if let Some(regs) = &self.sketch {
            if regs.len() != SKETCH_REGISTERS
                || regs.iter().any(|&r| r > 64 - SKETCH_BITS as u8 + 1)
            {
                return Err(PartialError::Invalid("sketch registers"));
            }
            if !self.hashes.is_empty() {
                return Err(PartialError::Invalid("sketch with an exact set"));
            }
        }
        Ok(())
    }
}

fn sketch_insert(regs: &mut [u8], h: u64) {
    // The value hashes are fast, not well mixed in their top bits (which
    // pick the register): a splitmix64 finalizer spreads them.
    let mut h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
    h = (h ^ (h >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    h = (h ^ (h >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    h ^= h >> 31;
    let index = (h >> (64 - SKETCH_BITS)) as usize;
    let rest = (h << SKETCH_BITS) | (1 << (SKETCH_BITS - 1));
    let rank = rest.leading_zeros() as u8 + 1;
    if let Some(r) = regs.get_mut(index) {
        *r = (*r).max(rank);
    }
}

fn sketch_estimate(regs: &[u8]) -> u32 {
    let m = regs.len() as f64;
    let alpha = 0.7213 / (1.0 + 1.079 / m);
    let sum: f64 = regs.iter().map(|&r| 2f64.powi(-i32::from(r))).sum();
    let raw = alpha * m * m / sum;
    let zeros = regs.iter().filter(|&&r| r == 0).count();
    let estimate = if raw <= 2.5 * m && zeros > 0 {
        m * (m / zeros as f64).ln()
    } else {
        raw
    };
    estimate.round().clamp(0.0, f64::from(u32::MAX)) as u32
}

/// An accepted login a partial reports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Login {
    pub instance: String,
    pub user: Option<String>,
    pub time_ms: i64,
    /// Guesses in this partial (same shard, network and window) after the
    /// partial's previous login and before this one: the partial's own
    /// guesses may be on either side of it.
    pub failures_before: u32,
}

/// One shard's view of one source network in one partial window.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Partial {
    /// The shard (or partition) that built it.
    pub shard: String,
    /// The source network, as text (`203.0.113.9/32`, `2001:db8::/64`, or a host name).
    pub source: String,
    pub window_start_ms: i64,
    pub window_ms: i64,
    /// Additive pieces of one (shard, window, source): a new part starts
    /// when the shard had to let go of an open one.
    pub part: u32,
    /// Snapshots of one part, from 1: a higher one replaces a lower one.
    pub emission: u32,
    /// The shard closed this part: no later emission of it will come.
    pub last: bool,
    pub counts: [u32; Signal::COUNT],
    /// Instances and users tried with guesses.
    pub instances: Distinct,
    pub users: Distinct,
    pub instance_names: Vec<String>,
    pub logins: Vec<Login>,
    pub first_ms: i64,
    pub last_ms: i64,
    /// The oldest and newest guess (compromise looks at what came between
    /// the network's previous login and this one).
    pub first_guess_ms: Option<i64>,
    pub last_guess_ms: Option<i64>,
    /// The CloudWatch account and log group of the first event (for commands).
    pub account: String,
    pub log_group: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PartialError {
    #[error("partial is empty")]
    Empty,
    #[error("partial version {0} is not {PARTIAL_VERSION}")]
    Version(u8),
    #[error("partial does not decode: {0}")]
    Decode(String),
    #[error("partial is invalid: {0}")]
    Invalid(&'static str),
}

impl Partial {
    /// The id stage two deduplicates by: deterministic for the same input.
    pub fn id(&self) -> String {
        format!(
            "{}|{}|{}|{}|{}",
            self.shard, self.window_start_ms, self.source, self.part, self.emission
        )
    }

    pub fn guesses(&self) -> u32 {
        GUESSES.iter().map(|s| self.counts[s.index()]).sum()
    }

    pub fn encode(&self) -> Vec<u8> {
        // Written in place, in room sized from the partial: `to_allocvec`
        // grew the body from empty, then it was copied, a tenth of an
        // address flood's cost through both stages. Not a fixed size: the
        // encoded partials wait in the writer's batch or the channel.
        let mut out = Vec::with_capacity(self.encoded_size_estimate());
        out.push(PARTIAL_VERSION);
        // Serializing plain data into a Vec cannot fail.
        postcard::to_extend(self, out).unwrap_or_else(|_| vec![PARTIAL_VERSION])
    }

    /// About the encoded size, a little over as a rule (postcard: a string
    /// or vector is a varint length, one byte for short ones, then its
    /// bytes; a hash about 9 bytes; the numbers about 48 together). Below
    /// it, the vector grows once.
    fn encoded_size_estimate(&self) -> usize {
        let text = |s: &str| 1 + s.len();
        let distinct =
            |d: &Distinct| 2 + 9 * d.hashes.len() + d.sketch.as_ref().map_or(0, Vec::len);
        1 + 48
            + text(&self.shard)
            + text(&self.source)
            + text(&self.account)
            + text(&self.log_group)
            + distinct(&self.instances)
            + distinct(&self.users)
            + self.instance_names.iter().map(|n| text(n)).sum::<usize>()
            + self
                .logins
                .iter()
                .map(|l| 16 + l.instance.len() + l.user.as_ref().map_or(0, String::len))
                .sum::<usize>()
    }

    /// Decodes and checks a partial read from a stream.
    pub fn decode(bytes: &[u8]) -> Result<Partial, PartialError> {
        let (&version, body) = bytes.split_first().ok_or(PartialError::Empty)?;
        if version != PARTIAL_VERSION {
            return Err(PartialError::Version(version));
        }
        let p: Partial =
            postcard::from_bytes(body).map_err(|e| PartialError::Decode(e.to_string()))?;
        p.validate()?;
        Ok(p)
    }

    fn validate(&self) -> Result<(), PartialError> {
        let invalid = |what| Err(PartialError::Invalid(what));
        if self.window_ms <= 0 || self.window_start_ms.rem_euclid(self.window_ms) != 0 {
            return invalid("window");
        }
        if self.emission == 0 {
            return invalid("emission");
        }
        if self.source.is_empty() || self.source.len() > NAME_LIMIT || self.net().is_none() {
            return invalid("source");
        }
        if self.shard.len() > NAME_LIMIT
            || self.account.len() > NAME_LIMIT
            || self.log_group.len() > 4 * NAME_LIMIT
        {
            return invalid("names too long");
        }
        if self.instance_names.len() > NAMED_INSTANCES
            || self.instance_names.iter().any(|n| n.len() > NAME_LIMIT)
        {
            return invalid("instance names");
        }
        if self.logins.len() > MAX_LOGINS
            || self.logins.iter().any(|l| {
                l.instance.is_empty()
                    || l.instance.len() > NAME_LIMIT
                    || l.user.as_ref().is_some_and(|u| u.len() > NAME_LIMIT)
            })
        {
            return invalid("logins");
        }
        if self.first_ms > self.last_ms {
            return invalid("times");
        }
        self.instances.validate()?;
        self.users.validate()
    }

    /// Adds another part of the same (shard, window, source) into this one:
    /// counts add, distinct sets unite, names and logins are kept to their
    /// caps (a login past [`MAX_LOGINS`] is left out), times widen, so a
    /// sum's guess times bound all its parts' guesses. A sum's logins are
    /// not its parts' own: the fleet stage does not let a login in a sum
    /// vouch for the guesses of another part (`FleetStage::compromise`).
    pub fn absorb(&mut self, other: &Partial, max_exact: usize) {
        add_counts(&mut self.counts, &other.counts);
        self.instances.merge(&other.instances, max_exact);
        self.users.merge(&other.users, max_exact);
        add_names(&mut self.instance_names, &other.instance_names);
        let room = MAX_LOGINS.saturating_sub(self.logins.len());
        self.logins.extend(other.logins.iter().take(room).cloned());
        self.first_ms = self.first_ms.min(other.first_ms);
        self.last_ms = self.last_ms.max(other.last_ms);
        let earliest = |a: Option<i64>, b: Option<i64>| a.into_iter().chain(b).min();
        let latest = |a: Option<i64>, b: Option<i64>| a.into_iter().chain(b).max();
        self.first_guess_ms = earliest(self.first_guess_ms, other.first_guess_ms);
        self.last_guess_ms = latest(self.last_guess_ms, other.last_guess_ms);
        self.part = self.part.max(other.part);
    }

    /// The source network (`None` if the text is neither a CIDR nor a host name).
    pub fn net(&self) -> Option<PeerNet> {
        parse_net(&self.source)
    }
}

/// Adds counts of signals (saturating: a sum of parts never wraps).
pub(crate) fn add_counts(into: &mut [u32; Signal::COUNT], from: &[u32; Signal::COUNT]) {
    for (a, b) in into.iter_mut().zip(from) {
        *a = a.saturating_add(*b);
    }
}

/// Adds instance names not named yet, up to [`NAMED_INSTANCES`].
pub(crate) fn add_names(into: &mut Vec<String>, from: &[String]) {
    for n in from {
        if into.len() < NAMED_INSTANCES && !into.contains(n) {
            into.push(n.clone());
        }
    }
}

/// Reads a source network back from its text.
pub fn parse_net(text: &str) -> Option<PeerNet> {
    if let Ok(net) = text.parse::<ipnet::IpNet>() {
        return Some(PeerNet::Net(net));
    }
    match Peer::parse(text)? {
        Peer::Name(n) => Some(PeerNet::Name(n)),
        Peer::Ip(_) => None,
    }
}

/// How stage one builds partials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PartialConfig {
    /// The partial window (every fleet rule's window is a multiple of it).
    pub window_ms: i64,
    /// Emit once early when a local measure reaches this percentage of a
    /// fleet rule's threshold (0 emits only when the window closes).
    pub early_percent: u32,
    /// The fleet rules (their thresholds set the early emissions).
    pub fleet_rules: Vec<Rule>,
    /// Exact distinct values per set before the sketch.
    pub max_exact: usize,
    /// Open partials a shard keeps; past it the oldest is emitted and let go.
    pub max_open: usize,
    /// The shard's name in partial ids.
    pub shard: String,
}

impl Default for PartialConfig {
    fn default() -> Self {
        PartialConfig {
            window_ms: 10 * 60_000,
            early_percent: 50,
            fleet_rules: crate::rules::fleet(),
            max_exact: 32,
            max_open: 250_000,
            shard: String::new(),
        }
    }
}

impl PartialConfig {
    pub fn validate(&self) -> Result<(), String> {
        if self.window_ms <= 0 || self.window_ms % 1000 != 0 {
            return Err("fleet partial window must be a positive number of seconds".into());
        }
        if self.early_percent > 100 {
            return Err("fleet early_percent must be between 0 and 100".into());
        }
        if self.max_exact == 0 || self.max_exact > MAX_EXACT_LIMIT {
            return Err(format!(
                "fleet max_exact must be between 1 and {MAX_EXACT_LIMIT}"
            ));
        }
        if self.max_open == 0 {
            return Err("fleet max_open must be positive".into());
        }
        Ok(())
    }
}

/// A measure of an open partial that can reach an early threshold.
#[derive(Debug, Clone)]
enum Measure {
    Count(Vec<Signal>),
    Distinct(Dimension),
}

struct Open {
    partial: Partial,
    early_sent: bool,
    /// Counted something since its last emission (or never emitted).
    changed: bool,
    /// Guesses since the partial's last login (a login starts the count anew,
    /// as the shards' compromise rule does).
    guesses_since_login: u32,
    /// The smallest record position counted in it (the checkpoint stays before).
    min_position: u64,
}

/// What happened to one event offered to the builder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Offer {
    Taken,
    /// Its partial window was already emitted as closed.
    Late,
}

/// Counters of a [`PartialBuilder`].
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct PartialStats {
    pub emitted: u64,
    pub early: u64,
    /// Emitted when the shard's newest event time passed the window's end.
    pub at_window_end: u64,
    /// Not emitted again at close: nothing changed since the last emission.
    pub unchanged_at_close: u64,
    pub let_go: u64,
    pub late_events: u64,
}

/// Stage one's partial accumulators for one shard.
pub struct PartialBuilder {
    config: PartialConfig,
    early: Vec<(Measure, u32)>,
    /// Boxed: a table of whole partials (about 400 bytes) kept half of its
    /// slots empty at 250,000 (206 MB of `scan --shards 2`'s address flood).
    open: HashMap<(PeerNet, i64), Box<Open>>,
    /// Open partials by window start (emission order when windows close).
    by_window: BTreeMap<i64, Vec<PeerNet>>,
    /// Per partial window, how many open partials were let go in it: a new
    /// partial takes that number as its part. A network let go and back
    /// gets a higher part than the one it had (its old one was counted), and
    /// the shard keeps nothing per network let go (a flood of new addresses
    /// lets one go per event).
    let_go_in: BTreeMap<i64, u32>,
    /// Partial windows ending at or before it were emitted as closed.
    closed_until_ms: i64,
    /// Partial windows ending at or before it were reported at their end.
    reported_until_ms: i64,
    /// Emitted, with the smallest record position each counts.
    ready: Vec<(u64, Partial)>,
    hasher: foldhash::fast::FixedState,
    stats: PartialStats,
}

impl PartialBuilder {
    pub fn new(config: PartialConfig) -> Self {
        let early = config
            .fleet_rules
            .iter()
            .filter_map(|r| {
                let threshold = (r.condition.threshold() * config.early_percent).div_ceil(100);
                let measure = match &r.condition {
                    Condition::Count { signals, .. } => Measure::Count(signals.clone()),
                    Condition::Distinct { of, .. } => Measure::Distinct(*of),
                    // An accepted login is always sent early (see `login`).
                    Condition::SuccessAfterFailures { .. } => return None,
                };
                (config.early_percent > 0).then_some((measure, threshold.max(1)))
            })
            .collect();
        PartialBuilder {
            config,
            early,
            open: HashMap::new(),
            by_window: BTreeMap::new(),
            let_go_in: BTreeMap::new(),
            closed_until_ms: i64::MIN,
            reported_until_ms: i64::MIN,
            ready: Vec::new(),
            hasher: foldhash::fast::FixedState::with_seed(0xf1ee7),
            stats: PartialStats::default(),
        }
    }

    pub fn config(&self) -> &PartialConfig {
        &self.config
    }

    pub fn stats(&self) -> PartialStats {
        self.stats
    }

    pub fn open_count(&self) -> usize {
        self.open.len()
    }

    fn hash(&self, s: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(s)
    }

    /// The open partial of `net` at `time_ms` (made if need be), as its key;
    /// `None` when that window was already emitted as closed.
    fn entry(
        &mut self,
        net: &PeerNet,
        time_ms: i64,
        position: u64,
        origin: (&str, &str),
    ) -> Option<(PeerNet, i64)> {
        let start = time_ms.div_euclid(self.config.window_ms) * self.config.window_ms;
        if start + self.config.window_ms <= self.closed_until_ms {
            self.stats.late_events += 1;
            return None;
        }
        let key = (net.clone(), start);
        if !self.open.contains_key(&key) {
            if self.open.len() >= self.config.max_open {
                self.let_go_oldest();
            }
            let part = self.let_go_in.get(&start).copied().unwrap_or(0);
            self.by_window.entry(start).or_default().push(net.clone());
            self.open.insert(
                key.clone(),
                Box::new(Open {
                    partial: Partial {
                        shard: self.config.shard.clone(),
                        source: net.to_string(),
                        window_start_ms: start,
                        window_ms: self.config.window_ms,
                        part,
                        emission: 0,
                        last: false,
                        counts: [0; Signal::COUNT],
                        instances: Distinct::default(),
                        users: Distinct::default(),
                        instance_names: Vec::new(),
                        logins: Vec::new(),
                        first_ms: time_ms,
                        last_ms: time_ms,
                        first_guess_ms: None,
                        last_guess_ms: None,
                        account: origin.0.to_owned(),
                        log_group: origin.1.to_owned(),
                    },
                    early_sent: false,
                    changed: true,
                    guesses_since_login: 0,
                    min_position: position,
                }),
            );
        }
        let open = self.open.get_mut(&key)?;
        open.changed = true;
        open.min_position = open.min_position.min(position);
        let p = &mut open.partial;
        p.first_ms = p.first_ms.min(time_ms);
        p.last_ms = p.last_ms.max(time_ms);
        Some(key)
    }

    /// Counts one event of `signal` from `net` on `instance`.
    #[allow(clippy::too_many_arguments)]
    pub fn signal(
        &mut self,
        net: &PeerNet,
        instance: &str,
        user: Option<&str>,
        signal: Signal,
        time_ms: i64,
        position: u64,
        origin: (&str, &str),
    ) -> Offer {
        let max_exact = self.config.max_exact;
        let guess = GUESSES.contains(&signal);
        let (ih, uh) = (self.hash(instance), user.map(|u| self.hash(u)));
        let Some(key) = self.entry(net, time_ms, position, origin) else {
            return Offer::Late;
        };
        let Some(open) = self.open.get_mut(&key) else {
            return Offer::Late;
        };
        let p = &mut open.partial;
        p.counts[signal.index()] = p.counts[signal.index()].saturating_add(1);
        if guess {
            p.first_guess_ms = Some(p.first_guess_ms.map_or(time_ms, |t| t.min(time_ms)));
            p.last_guess_ms = Some(p.last_guess_ms.map_or(time_ms, |t| t.max(time_ms)));
            open.guesses_since_login = open.guesses_since_login.saturating_add(1);
            let before = p.instances.count();
            p.instances.insert(ih, max_exact);
            if p.instances.count() > before
                && p.instance_names.len() < NAMED_INSTANCES
                && !p.instance_names.iter().any(|n| n == instance)
            {
                p.instance_names.push(instance.to_owned());
            }
            if let Some(uh) = uh {
                p.users.insert(uh, max_exact);
            }
        }
        let send = !open.early_sent
            && self
                .early
                .iter()
                .any(|(m, at)| measure(&open.partial, m) >= *at);
        if send {
            self.emit_early(net, time_ms);
        }
        Offer::Taken
    }

    /// Records an accepted login from `net` on `instance`; it is sent at
    /// once (the first in the partial) so a fleet-wide compromise is not a
    /// window late.
    pub fn login(
        &mut self,
        net: &PeerNet,
        instance: &str,
        user: Option<&str>,
        time_ms: i64,
        position: u64,
        origin: (&str, &str),
    ) -> Offer {
        let Some(key) = self.entry(net, time_ms, position, origin) else {
            return Offer::Late;
        };
        let Some(open) = self.open.get_mut(&key) else {
            return Offer::Late;
        };
        let p = &mut open.partial;
        if p.logins.len() < MAX_LOGINS {
            p.logins.push(Login {
                instance: instance.to_owned(),
                user: user.map(str::to_owned),
                time_ms,
                failures_before: open.guesses_since_login,
            });
        }
        open.guesses_since_login = 0;
        if !open.early_sent {
            self.emit_early(net, time_ms);
        }
        Offer::Taken
    }

    fn emit_early(&mut self, net: &PeerNet, time_ms: i64) {
        let start = time_ms.div_euclid(self.config.window_ms) * self.config.window_ms;
        if let Some(open) = self.open.get_mut(&(net.clone(), start)) {
            open.early_sent = true;
            open.changed = false;
            open.partial.emission += 1;
            self.ready.push((open.min_position, open.partial.clone()));
            self.stats.early += 1;
            self.stats.emitted += 1;
        }
    }

    /// Lets go of an open partial: emitted as the last of its part unless
    /// its last emission already holds everything it counted (a snapshot
    /// replaces, so sending the same counts again would only cost traffic).
    fn finish(&mut self, key: &(PeerNet, i64)) {
        if let Some(open) = self.open.remove(key) {
            let Open {
                mut partial,
                changed,
                min_position,
                ..
            } = *open;
            if !changed {
                self.stats.unchanged_at_close += 1;
                return;
            }
            partial.emission += 1;
            partial.last = true;
            self.ready.push((min_position, partial));
            self.stats.emitted += 1;
        }
    }

    /// Emits, once, every partial whose window ends at or before `clock_ms`
    /// (the shard's newest event time) and that counted something since its
    /// last emission. The window stays open for late events until the
    /// closing clock passes it ([`Self::close_until`]), which waits for the
    /// slowest stream and the allowed lateness; without this, the fleet
    /// stage would hear of a window's counts that much later (docs/fleet.md).
    pub fn report_until(&mut self, clock_ms: i64) {
        if clock_ms <= self.reported_until_ms {
            return;
        }
        let from = self.reported_until_ms;
        self.reported_until_ms = clock_ms;
        let w = self.config.window_ms;
        // Windows ending in (from, clock_ms]: those ending earlier were
        // reported (or closed) before.
        let first = from.saturating_sub(w).saturating_add(1);
        let last = clock_ms.saturating_sub(w);
        if first > last {
            return;
        }
        for (&start, nets) in self.by_window.range(first..=last) {
            for net in nets {
                if let Some(open) = self.open.get_mut(&(net.clone(), start)) {
                    if open.changed {
                        open.changed = false;
                        open.partial.emission += 1;
                        self.ready.push((open.min_position, open.partial.clone()));
                        self.stats.emitted += 1;
                        self.stats.at_window_end += 1;
                    }
                }
            }
        }
    }

    fn let_go_oldest(&mut self) {
        let Some(mut entry) = self.by_window.first_entry() else {
            return;
        };
        let start = *entry.key();
        let nets = entry.get_mut();
        let Some(net) = nets.pop() else {
            entry.remove();
            return;
        };
        if nets.is_empty() {
            entry.remove();
        }
        self.finish(&(net, start));
        // Parts would repeat only past u32::MAX let-gos in one window, more
        // events than a shard reads in a window: saturating is enough.
        let n = self.let_go_in.entry(start).or_default();
        *n = n.saturating_add(1);
        self.stats.let_go += 1;
    }

    /// Emits every partial whose window ends at or before `watermark_ms`.
    pub fn close_until(&mut self, watermark_ms: i64) {
        if watermark_ms <= self.closed_until_ms {
            return;
        }
        self.closed_until_ms = watermark_ms;
        while let Some(entry) = self.by_window.first_entry() {
            if *entry.key() + self.config.window_ms > watermark_ms {
                break;
            }
            let start = *entry.key();
            for net in entry.remove() {
                self.finish(&(net, start));
            }
        }
        let w = self.config.window_ms;
        self.let_go_in.retain(|start, _| *start + w > watermark_ms);
    }

    /// Emits every open partial (end of an offline input).
    pub fn close_all(&mut self) {
        self.close_until(i64::MAX);
    }

    /// Partials emitted since the last call, in emission order.
    pub fn drain(&mut self, out: &mut Vec<Partial>) {
        out.extend(self.ready.drain(..).map(|(_, p)| p));
    }

    /// The same, each with the smallest record position it counts: until
    /// it is delivered, a checkpoint must stay before that record.
    pub fn drain_held(&mut self, out: &mut Vec<(u64, Partial)>) {
        out.append(&mut self.ready);
    }

    /// The smallest record position counted in a partial not emitted as
    /// closed: a checkpoint must stay before it.
    pub fn low_water_position(&self) -> Option<u64> {
        self.open.values().map(|o| o.min_position).min()
    }
}

fn measure(p: &Partial, m: &Measure) -> u32 {
    match m {
        Measure::Count(signals) => signals.iter().map(|s| p.counts[s.index()]).sum(),
        Measure::Distinct(Dimension::Instances) => p.instances.count(),
        Measure::Distinct(Dimension::Users) => p.users.count(),
        Measure::Distinct(Dimension::Sources) => 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn net(s: &str) -> PeerNet {
        parse_net(s).unwrap()
    }

    #[test]
    fn distinct_is_exact_to_its_bound_then_estimates_within_the_sketch_error() {
        let mut d = Distinct::default();
        let h = foldhash::fast::FixedState::with_seed(1);
        use std::hash::BuildHasher;
        for i in 0..32u32 {
            d.insert(h.hash_one(i), 32);
            d.insert(h.hash_one(i), 32);
        }
        assert_eq!(d.count(), 32);
        assert!(!d.is_estimate());
        for i in 32..10_000u32 {
            d.insert(h.hash_one(i), 32);
        }
        assert!(d.is_estimate());
        let n = f64::from(d.count());
        assert!((n - 10_000.0).abs() / 10_000.0 < 0.2, "estimate {n}");
        // Merging a sketch with an overlapping exact set changes little;
        // merging disjoint halves adds up.
        let (mut a, mut b) = (Distinct::default(), Distinct::default());
        for i in 0..5_000u32 {
            a.insert(h.hash_one(i), 32);
            b.insert(h.hash_one(i + 5_000), 32);
        }
        a.merge(&b, 32);
        let n = f64::from(a.count());
        assert!((n - 10_000.0).abs() / 10_000.0 < 0.2, "merged estimate {n}");
        let (mut x, mut y) = (Distinct::default(), Distinct::default());
        for i in 0..10u32 {
            x.insert(h.hash_one(i), 32);
            y.insert(h.hash_one(i + 5), 32);
        }
        x.merge(&y, 32);
        assert_eq!(x.count(), 15, "exact union while it fits");
    }

    #[test]
    fn a_partial_round_trips_and_corrupt_bytes_are_refused_not_panicked_on() {
        let mut b = PartialBuilder::new(PartialConfig::default());
        let n = net("203.0.113.9/32");
        b.signal(
            &n,
            "i-1",
            Some("root"),
            Signal::InvalidUser,
            1_000,
            7,
            ("1", "g"),
        );
        b.close_all();
        let mut out = Vec::new();
        b.drain(&mut out);
        assert_eq!(out.len(), 1);
        let bytes = out[0].encode();
        assert_eq!(Partial::decode(&bytes).unwrap(), out[0]);
        // The wire form: the version, then postcard.
        let body = postcard::to_allocvec(&out[0]).unwrap();
        assert_eq!((bytes[0], &bytes[1..]), (PARTIAL_VERSION, &body[..]));
        let estimate = out[0].encoded_size_estimate();
        assert!(
            bytes.len() <= estimate && estimate <= 2 * bytes.len(),
            "{} {estimate}",
            bytes.len()
        );
        assert!(matches!(Partial::decode(&[]), Err(PartialError::Empty)));
        assert!(matches!(
            Partial::decode(&[9, 1, 2]),
            Err(PartialError::Version(9))
        ));
        for cut in 1..bytes.len() {
            assert!(Partial::decode(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        let mut bad = out[0].clone();
        bad.instances.sketch = Some(vec![0; 3]);
        assert!(Partial::decode(&bad.encode()).is_err());
        let mut bad = out[0].clone();
        bad.window_start_ms += 1;
        assert!(Partial::decode(&bad.encode()).is_err());
    }

    #[test]
    fn emits_early_once_at_the_fraction_then_finally_when_the_window_closes() {
        let mut b = PartialBuilder::new(PartialConfig {
            shard: "s".into(),
            ..PartialConfig::default()
        });
        let n = net("203.0.113.9/32");
        let mut out = Vec::new();
        // Fleet spray needs 10 instances: 5 is half.
        for i in 0..7 {
            b.signal(
                &n,
                &format!("i-{i}"),
                None,
                Signal::AuthFailure,
                1_000 + i,
                i as u64,
                ("1", "g"),
            );
            b.drain(&mut out);
        }
        let early: Vec<_> = out.iter().map(|p| (p.emission, p.last)).collect();
        assert_eq!(early, vec![(1, false)], "one early emission");
        assert_eq!(b.low_water_position(), Some(0));
        b.close_until(600_000 - 1);
        b.drain(&mut out);
        assert_eq!(out.len(), 1, "window not over yet");
        b.close_until(600_000);
        b.drain(&mut out);
        assert_eq!(out.len(), 2);
        assert_eq!(
            (out[1].emission, out[1].last, out[1].instances.count()),
            (2, true, 7)
        );
        assert_eq!(b.low_water_position(), None);
        assert_eq!(
            b.signal(&n, "i-9", None, Signal::AuthFailure, 2_000, 9, ("1", "g")),
            Offer::Late
        );
    }

    #[test]
    fn reported_when_the_newest_time_passes_the_window_then_again_at_close_only_if_changed() {
        let mut b = PartialBuilder::new(PartialConfig {
            early_percent: 0,
            ..PartialConfig::default()
        });
        let (n, m) = (net("203.0.113.9/32"), net("198.51.100.1/32"));
        let mut out = Vec::new();
        b.signal(&n, "i-1", None, Signal::AuthFailure, 1_000, 1, ("", ""));
        b.signal(&m, "i-1", None, Signal::AuthFailure, 2_000, 2, ("", ""));
        b.report_until(599_999);
        b.drain(&mut out);
        assert!(out.is_empty(), "the window has not ended");
        // The newest event time passes the window's end: both reported,
        // still open (late events may come) and holding the checkpoint.
        b.report_until(600_000);
        b.drain(&mut out);
        assert_eq!(out.len(), 2);
        assert!(out.iter().all(|p| p.emission == 1 && !p.last));
        assert_eq!(b.low_water_position(), Some(1));
        b.report_until(700_000);
        b.drain(&mut out);
        assert_eq!(out.len(), 2, "reported once");
        // A late event for one of them: at close only that one is sent again.
        b.signal(&n, "i-2", None, Signal::AuthFailure, 3_000, 3, ("", ""));
        b.close_until(600_000);
        b.drain(&mut out);
        assert_eq!(out.len(), 3);
        assert_eq!(
            (
                out[2].source.as_str(),
                out[2].emission,
                out[2].last,
                out[2].instances.count()
            ),
            ("203.0.113.9/32", 2, true, 2)
        );
        assert_eq!(b.low_water_position(), None);
        let s = b.stats();
        assert_eq!((s.at_window_end, s.unchanged_at_close), (2, 1));
    }

    #[test]
    fn an_emitted_partial_is_held_at_the_oldest_record_it_counts() {
        let mut b = PartialBuilder::new(PartialConfig {
            early_percent: 0,
            ..PartialConfig::default()
        });
        let n = net("203.0.113.9/32");
        b.signal(&n, "i-1", None, Signal::AuthFailure, 1_000, 7, ("", ""));
        b.signal(&n, "i-2", None, Signal::AuthFailure, 2_000, 9, ("", ""));
        assert_eq!(b.low_water_position(), Some(7));
        // Closed by a later record (position 50): still held at 7.
        b.close_until(600_000);
        assert_eq!(b.low_water_position(), None);
        let mut held = Vec::new();
        b.drain_held(&mut held);
        assert_eq!(held.len(), 1);
        assert_eq!(held[0].0, 7);
    }

    #[test]
    fn past_the_cap_the_oldest_partial_is_let_go_and_its_network_starts_a_new_part() {
        let mut b = PartialBuilder::new(PartialConfig {
            max_open: 2,
            early_percent: 0,
            ..PartialConfig::default()
        });
        let (a, c, d) = (
            net("192.0.2.1/32"),
            net("192.0.2.2/32"),
            net("192.0.2.3/32"),
        );
        let mut out = Vec::new();
        b.signal(&a, "i-1", None, Signal::AuthFailure, 1, 1, ("", ""));
        b.signal(&c, "i-1", None, Signal::AuthFailure, 2, 2, ("", ""));
        b.signal(&d, "i-1", None, Signal::AuthFailure, 3, 3, ("", ""));
        b.drain(&mut out);
        assert_eq!(out.len(), 1);
        assert_eq!(b.open_count(), 2);
        let gone = out[0].source.clone();
        b.signal(
            &net(&gone),
            "i-1",
            None,
            Signal::AuthFailure,
            4,
            4,
            ("", ""),
        );
        b.close_all();
        b.drain(&mut out);
        let parts: Vec<_> = out
            .iter()
            .filter(|p| p.source == gone)
            .map(|p| p.part)
            .collect();
        assert_eq!(parts.len(), 2);
        assert!(parts[0] == 0 && parts[1] > 0, "{parts:?}");
        assert_eq!(
            b.stats().let_go,
            2,
            "one let go for each new network past the cap"
        );
    }

    #[test]
    fn an_address_flood_past_the_cap_keeps_nothing_per_network_let_go_and_loses_no_count() {
        // Three networks taking turns past a cap of two: every event lets
        // one go, so every network comes back many times in one window.
        let mut b = PartialBuilder::new(PartialConfig {
            max_open: 2,
            early_percent: 0,
            ..PartialConfig::default()
        });
        let nets: Vec<PeerNet> = (1..=3).map(|i| net(&format!("192.0.2.{i}/32"))).collect();
        let rounds = 200;
        let mut out = Vec::new();
        for r in 0..rounds {
            for (i, n) in nets.iter().enumerate() {
                let t = (r * 3 + i) as i64;
                b.signal(n, "i-1", None, Signal::AuthFailure, t, t as u64, ("", ""));
                assert!(b.open_count() <= 2);
                assert!(b.let_go_in.len() <= 1, "one counter per open window");
            }
        }
        b.close_all();
        b.drain(&mut out);
        assert!(b.let_go_in.is_empty() && b.open.is_empty());
        for n in &nets {
            let text = n.to_string();
            let mine: Vec<&Partial> = out.iter().filter(|p| p.source == text).collect();
            // Each part's last emission holds all it counted; together, every event.
            let total: u32 = mine
                .iter()
                .filter(|p| p.last)
                .map(|p| p.counts.iter().sum::<u32>())
                .sum();
            assert_eq!(total, rounds as u32, "{text}");
            let parts: Vec<u32> = mine.iter().filter(|p| p.last).map(|p| p.part).collect();
            assert!(parts.windows(2).all(|w| w[0] < w[1]), "{text}: {parts:?}");
        }
    }
}
