//! Event-time tumbling windows of every rule's size, keyed by instance and by
//! source network, and the per-stream event clocks that close them.
//!
//! Rules of one subject kind and window size share a *lane*: one window per
//! key and window start, aligned to the epoch. Each log stream (instance)
//! has its own event clock: an event is late when its window has ended by
//! its own stream's watermark (newest event time minus the allowed
//! lateness), so one instance with a fast clock, or a forged timestamp,
//! makes nobody else's events late. Windows that mix streams (source
//! windows) close on the *closing clock*: the slowest clock among streams
//! that are live (within `stream_idle_ms` of the newest), never moving back.
//! Instance windows close on whichever of their stream's watermark and the
//! closing clock comes first, so an instance that falls silent does not
//! hold its windows (and the checkpoint) forever.
//!
//! A rule fires *early*, the moment its condition holds, once per window.
//! Live keys are capped per subject kind; past the cap the key least
//! recently active is evicted (second-chance), so a flood of new addresses
//! cannot push out an attacker that is still active. Every window remembers
//! the smallest source position that counted in it: a checkpoint may not
//! pass the smallest of these (docs/design.md, the checkpoint rule).
//! docs/detection.md specifies the semantics.

use std::collections::{HashSet, VecDeque};
use std::hash::{BuildHasher, Hash};
use std::sync::Arc;

use serde::Serialize;
use smallvec::SmallVec;

use crate::classify::Signal;
use crate::peer::{Peer, PeerGrouping, PeerNet};
pub use crate::rules::SubjectKind;
use crate::rules::{Condition, Dimension, Rule};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowConfig {
    /// The window of rules that name none (`[window] size_secs`).
    pub size_ms: i64,
    pub allowed_lateness_ms: i64,
    /// A stream whose newest event is this far behind the newest of all no
    /// longer holds back the windows that mix streams.
    pub stream_idle_ms: i64,
    pub max_instances: usize,
    pub max_sources: usize,
    /// Distinct sources remembered per instance window for the command's top list.
    pub max_tracked_sources: usize,
    /// Lines kept per window as samples for the command.
    pub sample_lines: usize,
    /// Distinct values counted exactly per window and dimension; past it a
    /// count reads "at least" this many.
    pub max_distinct: usize,
    pub grouping: PeerGrouping,
    /// Keep the smallest source position counted in each open window, for
    /// [`WindowStore::low_water_position`]: what a checkpoint may not pass.
    /// Off where nothing checkpoints (offline scans).
    pub checkpoint_positions: bool,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            size_ms: 60_000,
            allowed_lateness_ms: 60_000,
            stream_idle_ms: 10 * 60_000,
            max_instances: 100_000,
            max_sources: 250_000,
            max_tracked_sources: 16,
            sample_lines: 3,
            max_distinct: 64,
            grouping: PeerGrouping::default(),
            checkpoint_positions: true,
        }
    }
}

/// The store's parts that moving a stream's clock borrows ([`touch`]),
/// named field by field so that the rest of the store stays free while the
/// stream is held (a method would borrow all of it).
macro_rules! stream_parts {
    ($store:expr) => {
        StreamParts {
            streams: &mut $store.streams,
            by_time: &mut $store.by_time,
            ledger: &mut $store.ledger,
            lanes: &$store.lanes,
            lateness_ms: $store.config.allowed_lateness_ms,
            longest_keep_ms: $store.longest_keep_ms,
        }
    };
}

/// Instance names a source window keeps for the command (the rest are only counted).
const NAMED_INSTANCES: usize = 16;

/// Distinct values by hash, exact up to a bound (past it, the count stays
/// at the bound).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct DistinctSet {
    /// Most windows see one to a few values: those stay inline.
    hashes: SmallVec<[u64; 4]>,
    saturated: bool,
}

impl DistinctSet {
    fn insert(&mut self, h: u64, cap: usize) {
        if self.saturated || self.hashes.contains(&h) {
            return;
        }
        if self.hashes.len() < cap {
            self.hashes.push(h);
        } else {
            self.saturated = true;
        }
    }

    fn count(&self) -> u32 {
        self.hashes.len() as u32
    }
}

/// A window's counts and what the command will want to show of it: the
/// evidence a [`Fired`] carries (the store keeps windows more compactly).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub start_ms: i64,
    pub size_ms: i64,
    pub counts: [u32; Signal::COUNT],
    /// Distinct users, instances and sources: counts, not the values (a
    /// command shows only how many; a fired rule copies no set).
    pub users: u32,
    pub instances: u32,
    pub sources: u32,
    /// Instances attempted (source windows), at most 16: shared with the
    /// store's names, as the samples are with its lines, so that a fire the
    /// policy then suppresses copies no text.
    pub instance_names: Vec<Arc<String>>,
    /// Sources seen (instance windows), at most `max_tracked_sources`.
    pub top: Vec<(Peer, u32)>,
    /// Attributed events from sources past that limit.
    pub other_source_events: u32,
    pub samples: Vec<Arc<str>>,
}

impl Window {
    pub fn total(&self, signals: &[Signal]) -> u32 {
        signals.iter().map(|s| self.counts[s.index()]).sum()
    }

    pub fn distinct(&self, of: Dimension) -> u32 {
        match of {
            Dimension::Users => self.users,
            Dimension::Instances => self.instances,
            Dimension::Sources => self.sources,
        }
    }

    /// Sources by descending count (ties by address), at most `n`.
    pub fn top_sources(&self, n: usize) -> Vec<(Peer, u32)> {
        let mut v = self.top.clone();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }

    pub fn end_ms(&self) -> i64 {
        self.start_ms + self.size_ms
    }
}

/// A window as the store keeps it: what every event touches inline (64
/// bytes), what only a command shows boxed, so that scanning a key's
/// windows stays within a cache line or two.
#[derive(Debug, Clone)]
struct Tally {
    start_ms: i64,
    min_position: u64,
    counts: [u32; Signal::COUNT],
    /// Bit i set: rule i has fired in this window.
    fired: u64,
    lane: u8,
    evidence: Box<Evidence>,
}

/// What a command shows of a window beyond its counts.
#[derive(Debug, Clone, Default)]
struct Evidence {
    users: DistinctSet,
    instances: DistinctSet,
    sources: DistinctSet,
    /// Shared with the stream's own name: naming an instance allocates
    /// nothing (and most sources try one or two, kept inline).
    instance_names: SmallVec<[Arc<String>; 2]>,
    top: Vec<(Peer, u32)>,
    other_source_events: u32,
    /// One copy of a line however many lanes' windows sample it (the
    /// default three inline).
    samples: SmallVec<[Arc<str>; 3]>,
    /// Instances a success-after-failures rule already fired for.
    compromised: Vec<Arc<String>>,
}

impl Tally {
    fn new(lane: u8, start_ms: i64, position: u64) -> Self {
        Tally {
            start_ms,
            min_position: position,
            counts: [0; Signal::COUNT],
            fired: 0,
            lane,
            evidence: Box::default(),
        }
    }

    fn distinct_count(&self, of: Dimension) -> u32 {
        match of {
            Dimension::Users => self.evidence.users.count(),
            Dimension::Instances => self.evidence.instances.count(),
            Dimension::Sources => self.evidence.sources.count(),
        }
    }

    /// The window a command is built from.
    fn window(&self, size_ms: i64) -> Window {
        let e = &*self.evidence;
        Window {
            start_ms: self.start_ms,
            size_ms,
            counts: self.counts,
            users: e.users.count(),
            instances: e.instances.count(),
            sources: e.sources.count(),
            instance_names: e.instance_names.to_vec(),
            top: e.top.clone(),
            other_source_events: e.other_source_events,
            samples: e.samples.to_vec(),
        }
    }
}

/// What a rule fired on.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    Instance(Box<str>),
    Source(PeerNet),
}

impl Subject {
    pub fn kind(&self) -> SubjectKind {
        match self {
            Subject::Instance(_) => SubjectKind::Instance,
            Subject::Source(_) => SubjectKind::Source,
        }
    }
}

/// A rule's condition met: what the policy decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    pub rule: usize,
    pub subject: Subject,
    /// The source network: the subject of a source rule, the attacker of a
    /// compromise.
    pub source: Option<PeerNet>,
    /// A copy of the window at the moment it fired (for a compromise, its
    /// failure counts include the window before).
    pub window: Window,
    /// Event time of the event that met the condition.
    pub detected_at_ms: i64,
    /// The source network also logged in successfully within the window
    /// (source rules): blocking it could lock out a legitimate user.
    pub source_logged_in: bool,
}

/// What an event says, as the windows count it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Observed {
    Signal(Signal),
    /// An accepted login: counts nothing, but a success-after-failures rule
    /// looks at its source's failures.
    Accepted,
}

/// One event to count.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub instance: &'a str,
    pub source: Option<&'a Peer>,
    pub observed: Observed,
    pub user: Option<&'a str>,
    pub counts_for_instance: bool,
    pub time_ms: i64,
    pub position: u64,
    pub line: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Counted,
    /// Every window it would count in had closed.
    Late,
    /// Nothing to count (an accepted login with no failures before it).
    Nothing,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WindowStats {
    /// Events skipped because every window they belonged to had closed.
    pub late_events: u64,
    /// Events counted in some windows but too late for others (a short
    /// window closed, a long one still open).
    pub partly_late_events: u64,
    pub duplicate_events: u64,
    pub evicted_instances: u64,
    pub evicted_sources: u64,
    pub windows_closed: u64,
}

/// The windows of one subject kind and window size, and the rules on them.
#[derive(Debug, Clone)]
struct Lane {
    subject: SubjectKind,
    size_ms: i64,
    /// How long after its start a window stays: its size, or twice that when
    /// a success-after-failures rule looks back into it.
    keep_ms: i64,
    rules: Vec<usize>,
    /// Per dimension, the signals (bit i: `Signal` index i) whose events a
    /// distinct rule of this lane counts values of.
    users: u32,
    instances: u32,
    sources: u32,
    /// Distinct values kept per window: at least every rule's threshold.
    distinct_cap: usize,
    /// The start of the window [`Lane::start_of`] found last: events
    /// come roughly in time order, so most fall in it and need no division.
    last_start: LastStart,
}

/// A remembered window start. Atomic only so that the store stays `Sync`
/// (relaxed: a plain load and store; it is a cache, any value is correct).
#[derive(Debug)]
struct LastStart(std::sync::atomic::AtomicI64);

impl Clone for LastStart {
    fn clone(&self) -> Self {
        LastStart(self.get().into())
    }
}

impl LastStart {
    fn get(&self) -> i64 {
        self.0.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn set(&self, v: i64) {
        self.0.store(v, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Lane {
    /// The start of the window of this lane that `time_ms` falls in.
    fn start_of(&self, time_ms: i64) -> i64 {
        let last = self.last_start.get();
        if time_ms
            .checked_sub(last)
            .is_some_and(|d| (0..self.size_ms).contains(&d))
        {
            return last;
        }
        let start = WindowStore::window_start(time_ms, self.size_ms);
        self.last_start.set(start);
        start
    }
}

fn signal_mask(signals: &[Signal]) -> u32 {
    signals.iter().fold(0, |m, s| m | 1 << s.index())
}

fn lanes_for(rules: &[Rule], default_size_ms: i64, max_distinct: usize) -> Vec<Lane> {
    let mut lanes: Vec<Lane> = Vec::new();
    for (i, r) in rules.iter().enumerate() {
        let size = r.window_ms.unwrap_or(default_size_ms);
        let lane = match lanes
            .iter_mut()
            .position(|l| l.subject == r.subject && l.size_ms == size)
        {
            Some(l) => &mut lanes[l],
            None => {
                lanes.push(Lane {
                    subject: r.subject,
                    size_ms: size,
                    keep_ms: size,
                    rules: Vec::new(),
                    users: 0,
                    instances: 0,
                    sources: 0,
                    distinct_cap: max_distinct,
                    last_start: LastStart(i64::MIN.into()),
                });
                let last = lanes.len() - 1;
                &mut lanes[last]
            }
        };
        lane.rules.push(i);
        match &r.condition {
            Condition::Distinct {
                of,
                signals,
                at_least,
            } => {
                let mask = signal_mask(signals);
                match of {
                    Dimension::Users => lane.users |= mask,
                    Dimension::Instances => lane.instances |= mask,
                    Dimension::Sources => lane.sources |= mask,
                }
                lane.distinct_cap = lane.distinct_cap.max(*at_least as usize);
            }
            Condition::SuccessAfterFailures { .. } => lane.keep_ms = 2 * size,
            Condition::Count { .. } => {}
        }
    }
    lanes
}

/// One log stream (instance): its event clock and its windows.
#[derive(Debug)]
struct StreamState {
    /// The instance, shared with the source windows that name it (a thin
    /// pointer: a single-event source key holds one).
    name: Arc<String>,
    /// Seen again since the eviction clock last passed (second chance).
    touched: bool,
    max_ms: i64,
    windows: Vec<Tally>,
    /// Event ids seen while a window of the longest lane could count them.
    seen_ids: SeenIds,
}

/// One stream's event ids with their times, in hash sets of one minute of
/// event time each. A stream's events mostly come in time order, so nearly
/// every check and insert is in the newest minute's set, small and hot in
/// the cache, where one set per day window (as written here before) put
/// each id at a random cache line of a table that regrew all day. Hash sets,
/// not a sorted run: an instance may stamp any number of lines with one
/// millisecond. An event is a redelivery when both its time and its id were
/// seen: a redelivered CloudWatch event carries both unchanged.
#[derive(Debug, Default)]
struct SeenIds {
    /// By the minute's start, oldest first.
    minutes: VecDeque<(i64, HashSet<SeenId, foldhash::fast::RandomState>)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct SeenId {
    time_ms: i64,
    id: [u64; 2],
}

impl SeenIds {
    const MINUTE_MS: i64 = 60_000;

    /// Records `(time_ms, id)`; false when it was already recorded.
    fn insert(&mut self, time_ms: i64, id: u128) -> bool {
        let minute = time_ms.div_euclid(Self::MINUTE_MS) * Self::MINUTE_MS;
        let q = &mut self.minutes;
        let i = match q.back() {
            Some((m, _)) if *m == minute => q.len() - 1,
            Some((m, _)) if *m > minute => {
                // A late event: its minute is found by halving (at most a
                // day of minutes are kept).
                let i = q.partition_point(|(m, _)| *m < minute);
                if q.get(i).is_none_or(|(m, _)| *m != minute) {
                    q.insert(i, (minute, HashSet::default()));
                }
                i
            }
            _ => {
                // Sized like the minute before (a stream's rate changes
                // slowly): a set grown from empty moves its ids about once
                // each on the way. Capped, so that a burst's size is not
                // reserved again for a quiet minute after it.
                let like = q.back().map_or(0, |(_, set)| set.len().min(1024));
                q.push_back((
                    minute,
                    HashSet::with_capacity_and_hasher(like, Default::default()),
                ));
                q.len() - 1
            }
        };
        let new = SeenId {
            time_ms,
            id: [(id >> 64) as u64, id as u64],
        };
        q.get_mut(i).is_some_and(|(_, set)| set.insert(new))
    }

    /// Forgets the minutes all of whose times `expired` holds for (it must
    /// hold for every time before one it holds for).
    fn expire(&mut self, expired: impl Fn(i64) -> bool) {
        while self
            .minutes
            .front()
            .is_some_and(|(m, _)| expired(m + Self::MINUTE_MS - 1))
        {
            self.minutes.pop_front();
        }
    }
}

/// A source network's windows. Most keys of an address flood never see a
/// second event: until one does, the key holds only that event (about 60
/// bytes), and the windows it opened (one per lane it was not late for)
/// are implied by it; they become [`Tally`]s at the second event.
#[derive(Debug)]
enum SourceState {
    One(Single),
    Many {
        windows: Vec<Tally>,
        /// From the network's first accepted login on (boxed: few sources
        /// ever log in).
        logins: Option<Box<Logins>>,
        touched: bool,
    },
}

/// A source network's accepted logins, against its failures.
#[derive(Debug, Clone, Default)]
struct Logins {
    /// Events per signal since the network's last accepted login: a
    /// compromise is failures *then* a login, and an administrator who
    /// mistypes a few times at each of many logins is not one.
    since_login: [u32; Signal::COUNT],
    last_login_ms: Option<i64>,
}

/// A keyed state's second-chance mark: set when its key is seen again.
trait Marked {
    fn mark(&mut self) -> &mut bool;
}

impl Marked for SourceState {
    fn mark(&mut self) -> &mut bool {
        match self {
            SourceState::One(one) => &mut one.touched,
            SourceState::Many { touched, .. } => touched,
        }
    }
}

impl Marked for StreamState {
    fn mark(&mut self) -> &mut bool {
        &mut self.touched
    }
}

/// The only event of a source key, and the lanes whose window it opened.
#[derive(Debug, Clone)]
struct Single {
    time_ms: i64,
    position: u64,
    /// Hash of the user name (with `has_user`), when a lane counts
    /// distinct users of its signal.
    user_hash: u64,
    instance: Arc<String>,
    /// Bit i: lane i holds a window of this event.
    lanes: u64,
    signal: Signal,
    has_user: bool,
    touched: bool,
}

impl Single {
    fn start(&self, lane: &Lane) -> i64 {
        lane.start_of(self.time_ms)
    }

    /// The window this event opened in lane `li`.
    fn tally(&self, li: usize, lane: &Lane, instance_hash: u64) -> Tally {
        let mut t = Tally::new(li as u8, self.start(lane), self.position);
        t.counts[self.signal.index()] = 1;
        let bit = 1u32 << self.signal.index();
        if lane.users & bit != 0 && self.has_user {
            t.evidence.users.insert(self.user_hash, lane.distinct_cap);
        }
        if lane.instances & bit != 0 {
            t.evidence
                .instances
                .insert(instance_hash, lane.distinct_cap);
        }
        t.evidence.instance_names.push(self.instance.clone());
        t
    }

    /// What rule `ri` would see in its window: one event of `signal`, one
    /// value of each dimension the lane counts for it.
    fn meets(&self, rule: &Rule, lane: &Lane) -> bool {
        let bit = 1u32 << self.signal.index();
        let distinct = |of: Dimension| -> u32 {
            match of {
                Dimension::Users => u32::from(lane.users & bit != 0 && self.has_user),
                Dimension::Instances => u32::from(lane.instances & bit != 0),
                Dimension::Sources => 0,
            }
        };
        let mut counts = [0; Signal::COUNT];
        counts[self.signal.index()] = 1;
        condition_met(&rule.condition, &counts, distinct)
    }
}

/// Keys with their state, capped; past the cap the key least recently
/// active goes first. Second-chance (CLOCK) eviction, written here because
/// it has to sit inside the window store's own map: a touched key gets
/// requeued once instead of evicted, which approximates least-recently-used
/// in O(1) without a linked node per key.
///
/// Entries sit in a dense slab; the hash table and the eviction queue hold
/// 4-byte slot numbers, not keys. A table of whole entries would cost its
/// power-of-two slack (up to half its buckets empty) in entry-sized buckets,
/// and hold both tables at once while it grows; here the slack is in 5-byte
/// buckets and the slab grows in place. Each key's hash is computed once
/// per access; the table rehashes through the slab's key when it grows.
struct Keyed<K, S> {
    /// Live entries, and free slots (`None`) listed in `free`. The mark
    /// lives in the state itself ([`Marked`]), in bytes its layout would
    /// pad anyway.
    slots: Vec<Option<(K, S)>>,
    /// Slots freed by eviction or by [`Keyed::retain`], reused first.
    free: Vec<u32>,
    /// The live slots, by their key's hash.
    index: hashbrown::HashTable<u32>,
    hasher: foldhash::fast::RandomState,
    /// Every live slot exactly once, least recently queued first: a slot
    /// leaves the queue when it is freed, before it can be reused.
    queue: VecDeque<u32>,
    cap: usize,
    evictions: u64,
    /// Keys come in runs: try the slot last looked up or filled before
    /// hashing. True of streams (a record is one stream's batch, each line
    /// looked up twice, and an instance name costs more to hash than to
    /// compare), not of an address flood's sources.
    runs: bool,
    /// A stale slot (freed, or reused by another key) fails the comparison.
    last: u32,
}

impl<K: Hash + Eq, S: Marked> Keyed<K, S> {
    fn new(cap: usize, runs: bool) -> Self {
        Keyed {
            slots: Vec::new(),
            free: Vec::new(),
            index: hashbrown::HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
            queue: VecDeque::new(),
            // Slot numbers are `u32`: more live keys than that would not
            // fit in memory anyway.
            cap: cap.clamp(1, u32::MAX as usize),
            evictions: 0,
            runs,
            last: 0,
        }
    }

    /// The slot of `key` if live, or else its hash.
    #[inline]
    fn lookup<Q>(&mut self, key: &Q) -> Result<u32, u64>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let last = self.last;
        if self.runs
            && matches!(self.slots.get(last as usize), Some(Some((k, _))) if k.borrow() == key)
        {
            return Ok(last);
        }
        // `Borrow` promises the owned key hashes as the borrowed one.
        let h = self.hasher.hash_one(key);
        let i = self.find(h, key).ok_or(h)?;
        self.last = i;
        Ok(i)
    }

    /// The slot of `key`, if live.
    #[inline]
    fn find<Q>(&self, h: u64, key: &Q) -> Option<u32>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + ?Sized,
    {
        let slots = &self.slots;
        self.index
            .find(
                h,
                |&i| matches!(slots.get(i as usize), Some(Some((k, _))) if k.borrow() == key),
            )
            .copied()
    }

    /// The state of `key`, created with `make` if absent; evicted states are
    /// handed to `evicted` so their windows can be released.
    #[inline]
    fn get_or_insert<Q>(
        &mut self,
        key: &Q,
        to_owned: impl FnOnce(&Q) -> K,
        make: impl FnOnce() -> S,
        evicted: impl FnMut(S),
    ) -> &mut S
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let found = self.lookup(key);
        let i = match found {
            Ok(i) => i,
            Err(h) => self.insert(h, to_owned(key), make, evicted),
        };
        let Some(Some((_, s))) = self.slots.get_mut(i as usize) else {
            unreachable!("a slot just found or filled is live");
        };
        if found.is_ok() {
            *s.mark() = true;
        }
        s
    }

    /// Puts a new key with hash `h` in a slot (evicting first if at the
    /// cap) and returns the slot.
    fn insert(
        &mut self,
        h: u64,
        key: K,
        make: impl FnOnce() -> S,
        mut evicted: impl FnMut(S),
    ) -> u32 {
        let Keyed {
            slots,
            free,
            index,
            hasher,
            queue,
            cap,
            evictions,
            last,
            ..
        } = self;
        while index.len() >= *cap {
            let Some(i) = queue.pop_front() else {
                break;
            };
            let Some(slot) = slots.get_mut(i as usize) else {
                continue;
            };
            let Some((_, s)) = slot.as_mut() else {
                continue;
            };
            let touched = s.mark();
            if *touched {
                *touched = false;
                queue.push_back(i);
                continue;
            }
            if let Some(s) = vacate(slot, i, index, hasher, free) {
                *evictions += 1;
                evicted(s);
            }
        }
        let entry = (key, make());
        let i = match free.pop() {
            Some(i) => i,
            None => {
                slots.push(None);
                // Below `cap`, which fits in `u32`.
                (slots.len() - 1) as u32
            }
        };
        // The new slot is still empty while the table may rehash: only the
        // other slots' keys are hashed again, and the new one's hash is `h`.
        index.insert_unique(h, i, |&j| match slots.get(j as usize) {
            Some(Some((k, _))) => hasher.hash_one(k),
            _ => 0,
        });
        // A new key is not marked: only a key seen again earns its
        // second chance, so one-off addresses go first.
        queue.push_back(i);
        if let Some(slot) = slots.get_mut(i as usize) {
            *slot = Some(entry);
        }
        *last = i;
        i
    }

    fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut S>
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let i = self.lookup(key).ok()?;
        match self.slots.get_mut(i as usize) {
            Some(Some((_, s))) => Some(s),
            _ => None,
        }
    }

    fn len(&self) -> usize {
        self.index.len()
    }

    fn iter(&self) -> impl Iterator<Item = (&K, &S)> {
        self.slots.iter().flatten().map(|(k, s)| (k, s))
    }

    fn states_mut(&mut self) -> impl Iterator<Item = &mut S> {
        self.slots.iter_mut().flatten().map(|(_, s)| s)
    }

    /// Keeps the keys whose state `keep` says to keep, and the queue to them.
    fn retain(&mut self, mut keep: impl FnMut(&mut S) -> bool) {
        let Keyed {
            slots,
            free,
            index,
            hasher,
            queue,
            ..
        } = self;
        let before = free.len();
        for (i, slot) in slots.iter_mut().enumerate() {
            if slot.as_mut().is_some_and(|(_, s)| !keep(s)) {
                vacate(slot, i as u32, index, hasher, free);
            }
        }
        if free.len() > before {
            queue.retain(|&i| matches!(slots.get(i as usize), Some(Some(_))));
        }
    }

    fn clear(&mut self) {
        self.slots.clear();
        self.free.clear();
        self.index.clear();
        self.queue.clear();
    }
}

/// Empties slot `i` of a [`Keyed`]: its key leaves the index and the slot
/// goes to the free list. Returns the state it held.
fn vacate<K: Hash, S>(
    slot: &mut Option<(K, S)>,
    i: u32,
    index: &mut hashbrown::HashTable<u32>,
    hasher: &foldhash::fast::RandomState,
    free: &mut Vec<u32>,
) -> Option<S> {
    let (k, s) = slot.take()?;
    if let Ok(e) = index.find_entry(hasher.hash_one(&k), |&j| j == i) {
        e.remove();
    }
    free.push(i);
    Some(s)
}

/// Counts of open windows by a number (their min position, their end), as
/// a sorted queue of (value, count). Positions grow with reading and window
/// ends with event time, so a value is almost always added at the back and
/// removed near the front: a queue does both without the tree walk and the
/// node allocations of a `BTreeMap` (written here because no crate keeps a
/// counted, sorted, mostly-appended set). A count that drops to zero in the
/// middle stays as a tombstone until the front passes it or tombstones are
/// half the queue.
#[derive(Debug)]
struct Multiset<T> {
    counts: VecDeque<(T, u32)>,
    tombstones: usize,
}

impl<T> Default for Multiset<T> {
    fn default() -> Self {
        Multiset {
            counts: VecDeque::new(),
            tombstones: 0,
        }
    }
}

impl<T: Ord + Copy> Multiset<T> {
    fn add(&mut self, v: T) {
        self.add_n(v, 1);
    }

    /// Adds `v` `times` times (none for 0).
    fn add_n(&mut self, v: T, times: u32) {
        if times == 0 {
            return;
        }
        let q = &mut self.counts;
        match q.back_mut() {
            Some((b, n)) if *b == v => *n += times,
            Some((b, _)) if *b > v => {
                let i = q.partition_point(|(x, _)| *x < v);
                match q.get_mut(i) {
                    Some((x, n)) if *x == v => {
                        if *n == 0 {
                            self.tombstones -= 1;
                        }
                        *n += times;
                    }
                    _ => q.insert(i, (v, times)),
                }
            }
            _ => q.push_back((v, times)),
        }
    }

    fn remove(&mut self, v: T) {
        self.remove_n(v, 1);
    }

    /// Removes `v` up to `times` times: one search for the windows of a
    /// single-event key, which share their position.
    fn remove_n(&mut self, v: T, times: u32) {
        let q = &mut self.counts;
        let i = q.partition_point(|(x, _)| *x < v);
        let Some((x, n)) = q.get_mut(i) else {
            return;
        };
        if *x != v || *n == 0 {
            return;
        }
        *n = n.saturating_sub(times);
        if *n > 0 {
            return;
        }
        self.tombstones += 1;
        while q.front().is_some_and(|(_, n)| *n == 0) {
            q.pop_front();
            self.tombstones -= 1;
        }
        while q.back().is_some_and(|(_, n)| *n == 0) {
            q.pop_back();
            self.tombstones -= 1;
        }
        if self.tombstones > 32 && 2 * self.tombstones > q.len() {
            q.retain(|(_, n)| *n > 0);
            self.tombstones = 0;
        }
    }

    fn first(&self) -> Option<T> {
        self.counts.front().map(|(v, _)| *v)
    }

    /// The smallest value at least `v`.
    fn first_from(&self, v: T) -> Option<T> {
        let i = self.counts.partition_point(|(x, _)| *x < v);
        self.counts
            .range(i..)
            .find(|(_, n)| *n > 0)
            .map(|(x, _)| *x)
    }

    fn clear(&mut self) {
        self.counts.clear();
        self.tombstones = 0;
    }
}

/// Where open windows are: what a checkpoint may not pass, and when the
/// next window ends.
#[derive(Debug, Default)]
struct Ledger {
    /// The smallest source position of each open window; `None` where
    /// nothing checkpoints (offline scans), as keeping it costs a sorted
    /// insert and a search per window.
    positions: Option<Multiset<u64>>,
    instance_ends: Multiset<i64>,
    source_ends: Multiset<i64>,
    closed: u64,
}

impl Ledger {
    fn new(positions: bool) -> Self {
        Ledger {
            positions: positions.then(Multiset::default),
            ..Ledger::default()
        }
    }

    fn add_position(&mut self, position: u64, times: u32) {
        if let Some(p) = &mut self.positions {
            p.add_n(position, times);
        }
    }

    fn remove_position(&mut self, position: u64, times: u32) {
        if let Some(p) = &mut self.positions {
            p.remove_n(position, times);
        }
    }

    /// A window of `lane` starting at `start_ms`, lowest position `position`.
    fn open(&mut self, position: u64, start_ms: i64, lane: &Lane) {
        self.add_position(position, 1);
        self.open_end(start_ms, lane);
    }

    /// The end half of [`Ledger::open`].
    fn open_end(&mut self, start_ms: i64, lane: &Lane) {
        match lane.subject {
            SubjectKind::Instance => self.instance_ends.add(start_ms + lane.keep_ms),
            SubjectKind::Source => self.source_ends.add(start_ms + lane.keep_ms),
        }
    }

    fn close(&mut self, position: u64, start_ms: i64, lane: &Lane) {
        self.remove_position(position, 1);
        self.close_end(start_ms, lane);
    }

    /// The end half of [`Ledger::close`].
    fn close_end(&mut self, start_ms: i64, lane: &Lane) {
        match lane.subject {
            SubjectKind::Instance => self.instance_ends.remove(start_ms + lane.keep_ms),
            SubjectKind::Source => self.source_ends.remove(start_ms + lane.keep_ms),
        }
        self.closed += 1;
    }

    fn close_tally(&mut self, t: &Tally, lanes: &[Lane]) {
        self.close(t.min_position, t.start_ms, &lanes[usize::from(t.lane)]);
    }

    /// Closes the windows of a single-event key whose keep time ended by
    /// `watermark` (all of them with `i64::MAX`); false when none is left.
    fn close_single(&mut self, one: &mut Single, watermark: i64, lanes: &[Lane]) -> bool {
        let mut bits = one.lanes;
        let mut closed = 0;
        while bits != 0 {
            let li = bits.trailing_zeros() as usize;
            bits &= bits - 1;
            let lane = &lanes[li];
            let start = one.start(lane);
            if start + lane.keep_ms <= watermark {
                self.close_end(start, lane);
                one.lanes &= !(1 << li);
                closed += 1;
            }
        }
        // Its windows share one position: one search in the queue, not one
        // per lane (an address flood evicts a single-event key per line).
        if closed > 0 {
            self.remove_position(one.position, closed);
        }
        one.lanes != 0
    }
}

/// All live windows of one shard (or one offline input).
pub struct WindowStore {
    config: WindowConfig,
    rules: Vec<Rule>,
    lanes: Vec<Lane>,
    streams: Keyed<Box<str>, StreamState>,
    sources: Keyed<PeerNet, SourceState>,
    /// The streams' newest event times in whole seconds, counted (what the
    /// closing clock is read from). Streams move on near the newest second,
    /// which a sorted queue takes at its back.
    by_time: Multiset<i64>,
    /// The last read of `by_time`: the live range's first second and the
    /// slowest live stream's second found in it.
    slowest_read: Option<(i64, i64)>,
    newest_ms: Option<i64>,
    /// The closing clock before lateness: the slowest live stream, or the
    /// floor if that is later.
    closing_ms: Option<i64>,
    /// What the closing clock never goes below: a resumed checkpoint's
    /// clock, a caught-up shard's processing time.
    floor_ms: Option<i64>,
    /// A clock move of one stream not applied yet: lines that count nothing
    /// only move their stream's clock, and every line of a record is of
    /// one stream, so the newest time waits here until another stream, a
    /// counted event or a clock change needs it (one update per record
    /// instead of per line). Until then the closing clock and the windows
    /// lag, which only holds a checkpoint back.
    deferred_stream: String,
    deferred_ms: Option<i64>,
    ledger: Ledger,
    stats: WindowStats,
    /// Hashes the users, instance names and networks counted distinct:
    /// seeded at random, so that nobody can pick names that collide to be
    /// counted as one (the fleet stage's sketches have their own hasher).
    hasher: foldhash::fast::RandomState,
    /// The longest `keep_ms` of any lane (how long event ids are kept).
    longest_keep_ms: i64,
    /// The union of the lanes' distinct-value signals, per dimension.
    masks: DistinctMasks,
}

#[derive(Debug, Clone, Copy, Default)]
struct DistinctMasks {
    users: u32,
    instances: u32,
    sources: u32,
}

impl WindowStore {
    pub fn new(config: WindowConfig, rules: Vec<Rule>) -> Self {
        let checkpoint_positions = config.checkpoint_positions;
        let lanes = lanes_for(&rules, config.size_ms, config.max_distinct);
        let masks = lanes
            .iter()
            .fold(DistinctMasks::default(), |m, l| DistinctMasks {
                users: m.users | l.users,
                instances: m.instances | l.instances,
                sources: m.sources | l.sources,
            });
        let longest_keep_ms = lanes
            .iter()
            .map(|l| l.keep_ms)
            .max()
            .unwrap_or(config.size_ms);
        WindowStore {
            streams: Keyed::new(config.max_instances, true),
            sources: Keyed::new(config.max_sources, false),
            config,
            rules,
            lanes,
            by_time: Multiset::default(),
            slowest_read: None,
            newest_ms: None,
            closing_ms: None,
            floor_ms: None,
            deferred_stream: String::new(),
            deferred_ms: None,
            ledger: Ledger::new(checkpoint_positions),
            stats: WindowStats::default(),
            hasher: foldhash::fast::RandomState::default(),
            longest_keep_ms,
            masks,
        }
    }

    pub fn config(&self) -> &WindowConfig {
        &self.config
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    pub fn stats(&self) -> WindowStats {
        WindowStats {
            evicted_instances: self.streams.evictions,
            evicted_sources: self.sources.evictions,
            windows_closed: self.ledger.closed,
            ..self.stats
        }
    }

    /// The closing clock minus the allowed lateness: windows that mix
    /// streams close when it passes their end.
    pub fn watermark(&self) -> Option<i64> {
        self.closing_ms.map(|t| t - self.config.allowed_lateness_ms)
    }

    /// The closing clock (what a checkpoint stores, see [`Self::resume_from`]).
    pub fn event_time(&self) -> Option<i64> {
        self.closing_ms
    }

    /// The newest event time seen on any stream.
    pub fn newest_event_time(&self) -> Option<i64> {
        self.newest_ms
    }

    /// The smallest position counted in a window that is still open: a
    /// checkpoint must stay before it. `None` when no window is open.
    pub fn low_water_position(&self) -> Option<u64> {
        self.ledger.positions.as_ref().and_then(Multiset::first)
    }

    /// Live (instances, source networks).
    pub fn live_keys(&self) -> (usize, usize) {
        (self.streams.len(), self.sources.len())
    }

    /// Lets the closing clock reach `time_ms` whatever the streams say: a
    /// caught-up shard's processing time, or the clock a checkpoint stored.
    pub fn raise_clock(&mut self, time_ms: i64) {
        self.apply_deferred();
        if self.floor_ms.is_none_or(|f| time_ms > f) {
            self.floor_ms = Some(time_ms);
            self.move_closing_clock();
        }
    }

    /// Resumes after a checkpoint written at `event_time_ms`: windows that
    /// were closed then stay closed (their commands were delivered), so
    /// records after the checkpoint that still carry their tail cannot
    /// re-fire them with partial counts; they count as late.
    pub fn resume_from(&mut self, event_time_ms: i64) {
        self.raise_clock(event_time_ms);
    }

    fn window_start(time_ms: i64, size_ms: i64) -> i64 {
        time_ms.div_euclid(size_ms) * size_ms
    }

    /// Moves `instance`'s event clock with an event time (also for events
    /// that count nothing) and closes the windows it passes.
    pub fn advance(&mut self, instance: &str, time_ms: i64) {
        if let Some(t) = &mut self.deferred_ms {
            if self.deferred_stream == instance {
                *t = (*t).max(time_ms);
                return;
            }
        }
        self.apply_deferred();
        self.deferred_stream.clear();
        self.deferred_stream.push_str(instance);
        self.deferred_ms = Some(time_ms);
    }

    /// The deferred clock time of `instance`'s stream, taken to be applied
    /// with the caller's own move of that stream; another stream's deferred
    /// move is applied first.
    fn deferred_for(&mut self, instance: &str) -> Option<i64> {
        if self.deferred_ms.is_some() && self.deferred_stream == instance {
            return self.deferred_ms.take();
        }
        self.apply_deferred();
        None
    }

    /// Applies the deferred clock move, if any.
    fn apply_deferred(&mut self) {
        let Some(time_ms) = self.deferred_ms.take() else {
            return;
        };
        let instance = std::mem::take(&mut self.deferred_stream);
        self.move_stream_clock(&instance, time_ms);
        self.deferred_stream = instance;
    }

    fn move_stream_clock(&mut self, instance: &str, time_ms: i64) {
        let (_, moved_from) = touch(stream_parts!(self), instance, time_ms);
        self.note_newest(time_ms, moved_from);
    }

    /// Follows the newest event time; re-reads the closing clock only when
    /// the live range changed (it is read in seconds) or a stream moved
    /// from a second (`moved_from`) that may have been the slowest: a
    /// stream ahead of the slowest moving further ahead changes nothing.
    fn note_newest(&mut self, time_ms: i64, moved_from: Option<i64>) {
        let newest_moved = match self.newest_ms {
            Some(n) if time_ms <= n => false,
            Some(n) => {
                self.newest_ms = Some(time_ms);
                n.div_euclid(1000) != time_ms.div_euclid(1000)
            }
            None => {
                self.newest_ms = Some(time_ms);
                true
            }
        };
        let reread = newest_moved
            || moved_from.is_some_and(|from| {
                let live_from = self
                    .newest_ms
                    .map(|n| (n - self.config.stream_idle_ms).div_euclid(1000));
                !matches!(
                    (self.slowest_read, live_from),
                    (Some((read_from, slowest)), Some(l)) if read_from == l && from > slowest
                )
            });
        if reread {
            self.move_closing_clock();
        }
    }

    /// The slowest live stream's newest second, or the floor. It moves
    /// back when a stream appears with older times (a new instance, or the
    /// first lines of an interleaved file): windows already closed stay
    /// closed, and that stream's events are not judged by a faster one.
    fn move_closing_clock(&mut self) {
        self.slowest_read = self.newest_ms.and_then(|newest| {
            let live_from = (newest - self.config.stream_idle_ms).div_euclid(1000);
            self.by_time
                .first_from(live_from)
                .map(|sec| (live_from, sec))
        });
        let slowest = self.slowest_read.map(|(_, sec)| sec * 1000);
        let t = match (slowest, self.floor_ms) {
            (Some(s), Some(f)) => Some(s.max(f)),
            (s, f) => s.or(f),
        };
        let moved_on = match (t, self.closing_ms) {
            (Some(t), Some(c)) => t > c,
            (Some(_), None) => true,
            (None, _) => false,
        };
        self.closing_ms = t;
        if moved_on {
            self.close_passed();
        }
    }

    fn close_passed(&mut self) {
        let Some(wm) = self.watermark() else {
            return;
        };
        if self.ledger.instance_ends.first().is_some_and(|e| e <= wm) {
            let lanes = &self.lanes;
            let ledger = &mut self.ledger;
            for st in self.streams.states_mut() {
                close_windows(&mut st.windows, wm, lanes, ledger);
            }
        }
        if self.ledger.source_ends.first().is_some_and(|e| e <= wm) {
            let lanes = &self.lanes;
            let ledger = &mut self.ledger;
            self.sources.retain(|st| match st {
                SourceState::One(one) => ledger.close_single(one, wm, lanes),
                SourceState::Many { windows, .. } => {
                    close_windows(windows, wm, lanes, ledger);
                    !windows.is_empty()
                }
            });
        }
    }

    /// Closes every window (end of input for offline scans).
    pub fn close_all(&mut self) {
        self.apply_deferred();
        for st in self.streams.states_mut() {
            self.ledger.closed += st.windows.len() as u64;
            st.windows.clear();
        }
        for st in self.sources.states_mut() {
            self.ledger.closed += match st {
                SourceState::One(one) => u64::from(one.lanes.count_ones()),
                SourceState::Many { windows, .. } => windows.len() as u64,
            };
        }
        self.sources.clear();
        if let Some(p) = &mut self.ledger.positions {
            p.clear();
        }
        self.ledger.instance_ends.clear();
        self.ledger.source_ends.clear();
    }

    /// Records the event id `id` of `instance`'s stream; false when it was
    /// recorded before (a redelivered log event). Ids are kept as long as the
    /// longest window they could count in; an older event is late anyway.
    pub fn first_sighting(&mut self, instance: &str, time_ms: i64, id: u128) -> bool {
        let clock_ms = self
            .deferred_for(instance)
            .map_or(time_ms, |d| d.max(time_ms));
        let floor = self.floor_ms.unwrap_or(i64::MIN);
        let lateness = self.config.allowed_lateness_ms;
        let longest = self.longest_keep_ms.max(1);
        let (stream, moved_from) = touch(stream_parts!(self), instance, clock_ms);
        // The same watermark `observe` judges this stream's lateness by
        // (moving the closing clock below changes neither part of it).
        let stream_wm = stream.max_ms.max(floor) - lateness;
        let start = Self::window_start(time_ms, longest);
        let first = start + longest <= stream_wm || stream.seen_ids.insert(time_ms, id);
        self.note_newest(clock_ms, moved_from);
        if !first {
            self.stats.duplicate_events += 1;
        }
        first
    }

    /// Counts one observation, appending any rule it makes fire to `fired`.
    pub fn observe(&mut self, o: &Observation<'_>, fired: &mut Vec<Fired>) -> Admit {
        let clock_ms = self
            .deferred_for(o.instance)
            .map_or(o.time_ms, |d| d.max(o.time_ms));
        let lateness = self.config.allowed_lateness_ms;
        let bit = match o.observed {
            Observed::Signal(s) => 1u32 << s.index(),
            Observed::Accepted => 0,
        };
        // Hash only what some lane counts distinct values of.
        let user_hash = o
            .user
            .filter(|_| self.masks.users & bit != 0)
            .map(|u| self.hasher.hash_one(u));
        let instance_hash =
            (self.masks.instances & bit != 0).then(|| self.hasher.hash_one(o.instance));
        let net = o.source.map(|s| self.config.grouping.network(s));
        let net_hash = net
            .as_ref()
            .filter(|_| self.masks.sources & bit != 0)
            .map(|n| self.hasher.hash_one(n));
        let mut counted = 0u32;
        let mut late = 0u32;
        let (stream, moved_from) = touch(stream_parts!(self), o.instance, clock_ms);
        // Instance windows: late by the stream's own clock (or the floor a
        // resumed checkpoint set), never by another stream's.
        let stream_wm = stream.max_ms.max(self.floor_ms.unwrap_or(i64::MIN)) - lateness;
        let cfg = &self.config;

        if let (Observed::Signal(signal), true) = (o.observed, o.counts_for_instance) {
            for (li, lane) in self.lanes.iter().enumerate() {
                if lane.subject != SubjectKind::Instance {
                    continue;
                }
                let start = lane.start_of(o.time_ms);
                if start + lane.keep_ms <= stream_wm {
                    late += 1;
                    continue;
                }
                counted += 1;
                let w = window_in(
                    &mut stream.windows,
                    li,
                    lane,
                    start,
                    o.position,
                    &mut self.ledger,
                );
                w.counts[signal.index()] += 1;
                let e = &mut *w.evidence;
                if let Some(src) = o.source {
                    match e.top.iter().position(|(s, _)| s == src) {
                        Some(i) => e.top[i].1 += 1,
                        None if e.top.len() < cfg.max_tracked_sources => {
                            e.top.push((src.clone(), 1))
                        }
                        None => e.other_source_events += 1,
                    }
                    if let (true, Some(h)) = (lane.sources & bit != 0, net_hash) {
                        e.sources.insert(h, lane.distinct_cap);
                    }
                }
                if let (true, Some(h)) = (lane.users & bit != 0, user_hash) {
                    e.users.insert(h, lane.distinct_cap);
                }
                if e.samples.len() < cfg.sample_lines {
                    e.samples.push(Arc::from(truncate(o.line, 512)));
                }
                check_rules(
                    &self.rules,
                    lane,
                    w,
                    || Subject::Instance(o.instance.into()),
                    || None,
                    (o.time_ms, false),
                    fired,
                );
            }
        }
        // Source windows name the instance by the stream's own name.
        let name = net.as_ref().map(|_| stream.name.clone());

        // The closing clock moves after this stream's windows were counted
        // (the event's own window ends after its time, so no clock this
        // event sets can close it).
        self.note_newest(clock_ms, moved_from);
        let closing_wm = self.watermark().unwrap_or(i64::MIN);
        let cfg = &self.config;
        if let (Some(net), Some(name)) = (net, name) {
            let lanes = &self.lanes;
            let rules = &self.rules;
            let hasher = &self.hasher;
            match o.observed {
                Observed::Signal(signal) => {
                    let ledger = &mut self.ledger;
                    let mut fresh = false;
                    let state = self.sources.get_or_insert(
                        &net,
                        PeerNet::clone,
                        || {
                            fresh = true;
                            SourceState::Many {
                                windows: Vec::new(),
                                logins: None,
                                touched: false,
                            }
                        },
                        |old| release_source(old, lanes, ledger),
                    );
                    if fresh {
                        // A key's first event: kept as itself unless a rule
                        // fires on it already.
                        let mut one = Single {
                            time_ms: o.time_ms,
                            position: o.position,
                            user_hash: user_hash.unwrap_or(0),
                            instance: name.clone(),
                            lanes: 0,
                            signal,
                            has_user: user_hash.is_some(),
                            touched: false,
                        };
                        for (li, lane) in lanes.iter().enumerate() {
                            if lane.subject == SubjectKind::Source
                                && one.start(lane) + lane.keep_ms > closing_wm
                            {
                                one.lanes |= 1 << li;
                            }
                        }
                        let fires = lanes.iter().enumerate().any(|(li, lane)| {
                            one.lanes & 1 << li != 0
                                && lane.rules.iter().any(|&ri| one.meets(&rules[ri], lane))
                        });
                        if one.lanes != 0 && !fires {
                            let mut opened = 0;
                            for (li, lane) in lanes.iter().enumerate() {
                                if lane.subject != SubjectKind::Source {
                                    continue;
                                }
                                if one.lanes & 1 << li == 0 {
                                    late += 1;
                                    continue;
                                }
                                opened += 1;
                                ledger.open_end(one.start(lane), lane);
                            }
                            // Its windows share one position: one insert
                            // (an address flood opens a key per line).
                            ledger.add_position(one.position, opened);
                            counted += opened;
                            *state = SourceState::One(one);
                            return self.admit(counted, late);
                        }
                    }
                    let (windows, logins) = tallies(state, lanes, hasher);
                    if let Some(l) = logins {
                        l.since_login[signal.index()] =
                            l.since_login[signal.index()].saturating_add(1);
                    }
                    let last_login = logins.as_ref().and_then(|l| l.last_login_ms);
                    // Made at the first window that samples this line.
                    let mut sample: Option<Arc<str>> = None;
                    for (li, lane) in lanes.iter().enumerate() {
                        if lane.subject != SubjectKind::Source {
                            continue;
                        }
                        let start = lane.start_of(o.time_ms);
                        if start + lane.keep_ms <= closing_wm {
                            late += 1;
                            continue;
                        }
                        counted += 1;
                        let w = window_in(windows, li, lane, start, o.position, ledger);
                        w.counts[signal.index()] += 1;
                        let total: u32 = w.counts.iter().sum();
                        let e = &mut *w.evidence;
                        if let (true, Some(h)) = (lane.users & bit != 0, user_hash) {
                            e.users.insert(h, lane.distinct_cap);
                        }
                        if let (true, Some(h)) = (lane.instances & bit != 0, instance_hash) {
                            e.instances.insert(h, lane.distinct_cap);
                        }
                        // The command names the instances a source tried
                        // (a block needs their subnets); most sources try
                        // one, so the last name is checked first.
                        // The stream's own name is usually the same `Arc`:
                        // compared by pointer before by text.
                        let named = |n: &Arc<String>| Arc::ptr_eq(n, &name) || **n == *o.instance;
                        if !e.instance_names.last().is_some_and(named)
                            && e.instance_names.len() < NAMED_INSTANCES
                            && !e.instance_names.iter().any(named)
                        {
                            e.instance_names.push(name.clone());
                        }
                        // A single event is not worth a sample: in a flood of
                        // new addresses most windows never see a second.
                        if total >= 2 && e.samples.len() < cfg.sample_lines {
                            let line =
                                sample.get_or_insert_with(|| Arc::from(truncate(o.line, 512)));
                            e.samples.push(line.clone());
                        }
                        let logged_in = last_login.is_some_and(|t| t >= w.start_ms);
                        check_rules(
                            rules,
                            lane,
                            w,
                            || Subject::Source(net.clone()),
                            || Some(net.clone()),
                            (o.time_ms, logged_in),
                            fired,
                        );
                    }
                }
                Observed::Accepted => {
                    // A login opens no window: only failures already counted matter.
                    let Some(state) = self.sources.get_mut(&net) else {
                        return Admit::Nothing;
                    };
                    let (windows, logins) = tallies(state, lanes, hasher);
                    // Without a login before, every failure is "since".
                    let since_login = logins
                        .as_ref()
                        .map_or([u32::MAX; Signal::COUNT], |l| l.since_login);
                    for (li, lane) in lanes.iter().enumerate() {
                        if lane.subject != SubjectKind::Source {
                            continue;
                        }
                        let start = lane.start_of(o.time_ms);
                        let of = |w: &Tally, s: i64| usize::from(w.lane) == li && w.start_ms == s;
                        let previous = windows
                            .iter()
                            .find(|w| of(w, start - lane.size_ms))
                            .map_or([0; Signal::COUNT], |w| w.counts);
                        // The current window holds the marks; with none open
                        // yet, the previous one does.
                        let (w, previous) = match windows.iter().position(|w| of(w, start)) {
                            Some(i) => (&mut windows[i], previous),
                            None => {
                                match windows.iter().position(|w| of(w, start - lane.size_ms)) {
                                    Some(i) => (&mut windows[i], [0; Signal::COUNT]),
                                    None => continue,
                                }
                            }
                        };
                        compromise_rules(
                            rules,
                            lane,
                            w,
                            [previous, since_login],
                            &name,
                            &net,
                            o.time_ms,
                            fired,
                        );
                    }
                    let l = logins.get_or_insert_with(Box::default);
                    l.since_login = [0; Signal::COUNT];
                    l.last_login_ms = l.last_login_ms.max(Some(o.time_ms));
                    return Admit::Nothing;
                }
            }
        }
        self.admit(counted, late)
    }

    fn admit(&mut self, counted: u32, late: u32) -> Admit {
        match (counted, late) {
            (0, 0) => Admit::Nothing,
            (0, _) => {
                self.stats.late_events += 1;
                Admit::Late
            }
            (_, 0) => Admit::Counted,
            _ => {
                self.stats.partly_late_events += 1;
                Admit::Counted
            }
        }
    }

    /// Every open instance window, for reports.
    pub fn instance_windows(&self) -> impl Iterator<Item = (&str, Window)> + '_ {
        let lanes = &self.lanes;
        self.streams.iter().flat_map(move |(k, st)| {
            st.windows
                .iter()
                .map(move |t| (&**k, t.window(lanes[usize::from(t.lane)].size_ms)))
        })
    }

    /// Every open source window, for reports.
    pub fn source_windows(&self) -> impl Iterator<Item = (&PeerNet, Window)> + '_ {
        let lanes = &self.lanes;
        let hasher = &self.hasher;
        self.sources.iter().flat_map(move |(k, st)| {
            let windows: Vec<Window> = match st {
                SourceState::One(one) => single_tallies(one, lanes, hasher)
                    .iter()
                    .map(|t| t.window(lanes[usize::from(t.lane)].size_ms))
                    .collect(),
                SourceState::Many { windows: ts, .. } => ts
                    .iter()
                    .map(|t| t.window(lanes[usize::from(t.lane)].size_ms))
                    .collect(),
            };
            windows.into_iter().map(move |w| (k, w))
        })
    }
}

/// The windows a single-event key's event opened.
fn single_tallies(
    one: &Single,
    lanes: &[Lane],
    hasher: &foldhash::fast::RandomState,
) -> Vec<Tally> {
    let instance_hash = hasher.hash_one(one.instance.as_str());
    let mut v = Vec::with_capacity(one.lanes.count_ones() as usize);
    let mut bits = one.lanes;
    while bits != 0 {
        let li = bits.trailing_zeros() as usize;
        bits &= bits - 1;
        v.push(one.tally(li, &lanes[li], instance_hash));
    }
    v
}

/// A source key's windows as tallies (a single-event key's made at its
/// second event).
fn tallies<'s>(
    state: &'s mut SourceState,
    lanes: &[Lane],
    hasher: &foldhash::fast::RandomState,
) -> (&'s mut Vec<Tally>, &'s mut Option<Box<Logins>>) {
    if let SourceState::One(one) = state {
        let windows = single_tallies(one, lanes, hasher);
        *state = SourceState::Many {
            windows,
            logins: None,
            touched: one.touched,
        };
    }
    match state {
        SourceState::Many {
            windows, logins, ..
        } => (windows, logins),
        // Made many just above.
        SourceState::One(_) => unreachable!("single-event key made many"),
    }
}

/// Takes an evicted source key's windows off the ledger.
fn release_source(old: SourceState, lanes: &[Lane], ledger: &mut Ledger) {
    match old {
        SourceState::One(mut one) => {
            ledger.close_single(&mut one, i64::MAX, lanes);
        }
        SourceState::Many { windows, .. } => {
            for t in &windows {
                ledger.close_tally(t, lanes);
            }
        }
    }
}

/// What moving one stream's clock touches, borrowed apart from the rest of
/// the store so that the stream can be counted into while it is held.
struct StreamParts<'s, 'o> {
    streams: &'s mut Keyed<Box<str>, StreamState>,
    by_time: &'o mut Multiset<i64>,
    ledger: &'o mut Ledger,
    lanes: &'o [Lane],
    lateness_ms: i64,
    longest_keep_ms: i64,
}

/// The stream of `instance` with its clock moved to `time_ms` (its own
/// windows closed on its own watermark), and, when its place among the
/// streams' clocks changed (the closing clock may have to move), the second
/// it moved from (`i64::MIN` for a new stream).
fn touch<'s>(
    p: StreamParts<'s, '_>,
    instance: &str,
    time_ms: i64,
) -> (&'s mut StreamState, Option<i64>) {
    let StreamParts {
        streams,
        by_time,
        ledger,
        lanes,
        ..
    } = p;
    let st = streams.get_or_insert(
        instance,
        |s| s.into(),
        || StreamState {
            name: Arc::new(instance.to_owned()),
            touched: false,
            max_ms: i64::MIN,
            windows: Vec::new(),
            seen_ids: SeenIds::default(),
        },
        |old| {
            if old.max_ms != i64::MIN {
                by_time.remove(old.max_ms.div_euclid(1000));
            }
            for t in &old.windows {
                ledger.close_tally(t, lanes);
            }
        },
    );
    let mut changed = None;
    if time_ms > st.max_ms {
        let old_sec = st.max_ms.div_euclid(1000);
        let new_sec = time_ms.div_euclid(1000);
        if st.max_ms == i64::MIN {
            by_time.add(new_sec);
            changed = Some(i64::MIN);
        } else if old_sec != new_sec {
            by_time.remove(old_sec);
            by_time.add(new_sec);
            changed = Some(old_sec);
        }
        st.max_ms = time_ms;
        // This stream's own windows close on its own watermark.
        let wm = time_ms - p.lateness_ms;
        if st
            .windows
            .iter()
            .any(|w| w.start_ms + lanes[usize::from(w.lane)].keep_ms <= wm)
        {
            close_windows(&mut st.windows, wm, lanes, ledger);
        }
        let longest = p.longest_keep_ms.max(1);
        st.seen_ids
            .expire(|t| WindowStore::window_start(t, longest) + longest <= wm);
    }
    (st, changed)
}

/// The window of `lane` starting at `start` among `windows`, opened if absent.
fn window_in<'w>(
    windows: &'w mut Vec<Tally>,
    li: usize,
    lane: &Lane,
    start: i64,
    position: u64,
    ledger: &mut Ledger,
) -> &'w mut Tally {
    let i = match windows
        .iter()
        .position(|w| usize::from(w.lane) == li && w.start_ms == start)
    {
        Some(i) => i,
        None => {
            // At most 64 rules, so at most 64 lanes: the index fits.
            ledger.open(position, start, lane);
            windows.push(Tally::new(li as u8, start, position));
            windows.len() - 1
        }
    };
    let w = &mut windows[i];
    if position < w.min_position {
        // Replayed parents' records can come in below: keep the ledger exact.
        ledger.remove_position(w.min_position, 1);
        ledger.add_position(position, 1);
        w.min_position = position;
    }
    w
}

/// Drops the windows whose keep time ended by `watermark`.
fn close_windows(windows: &mut Vec<Tally>, watermark: i64, lanes: &[Lane], ledger: &mut Ledger) {
    windows.retain(|w| {
        let open = w.start_ms + lanes[usize::from(w.lane)].keep_ms > watermark;
        if !open {
            ledger.close_tally(w, lanes);
        }
        open
    });
}

/// Whether `counts` and the distinct counts meet a count or distinct condition.
fn condition_met(
    condition: &Condition,
    counts: &[u32; Signal::COUNT],
    distinct: impl Fn(Dimension) -> u32,
) -> bool {
    match condition {
        Condition::Count { signals, at_least } => {
            signals.iter().map(|s| counts[s.index()]).sum::<u32>() >= *at_least
        }
        // The lane keeps at least `at_least` values, so the count is exact here.
        Condition::Distinct { of, at_least, .. } => distinct(*of) >= *at_least,
        Condition::SuccessAfterFailures { .. } => false,
    }
}

/// Fires each count or distinct rule of `lane` whose condition `w` now meets.
fn check_rules(
    rules: &[Rule],
    lane: &Lane,
    w: &mut Tally,
    subject: impl Fn() -> Subject,
    source: impl Fn() -> Option<PeerNet>,
    (at, source_logged_in): (i64, bool),
    fired: &mut Vec<Fired>,
) {
    for &ri in &lane.rules {
        if w.fired & (1 << ri) != 0 {
            continue;
        }
        if condition_met(&rules[ri].condition, &w.counts, |of| w.distinct_count(of)) {
            w.fired |= 1 << ri;
            fired.push(Fired {
                rule: ri,
                subject: subject(),
                source: source(),
                window: w.window(lane.size_ms),
                detected_at_ms: at,
                source_logged_in,
            });
        }
    }
}

/// Fires each success-after-failures rule of `lane` for a login accepted on
/// `instance` from `net`, once per window and instance: the failures counted
/// are those of this window and the one before (`previous`) and since the
/// network's last accepted login (`since_login`), whichever is fewer.
#[allow(clippy::too_many_arguments)]
fn compromise_rules(
    rules: &[Rule],
    lane: &Lane,
    w: &mut Tally,
    [previous, since_login]: [[u32; Signal::COUNT]; 2],
    instance: &Arc<String>,
    net: &PeerNet,
    at: i64,
    fired: &mut Vec<Fired>,
) {
    for &ri in &lane.rules {
        let Condition::SuccessAfterFailures { signals, failures } = &rules[ri].condition else {
            continue;
        };
        let windowed: u32 = signals
            .iter()
            .map(|s| w.counts[s.index()] + previous[s.index()])
            .sum();
        let streak: u32 = signals
            .iter()
            .fold(0u32, |n, s| n.saturating_add(since_login[s.index()]));
        let before = windowed.min(streak);
        let marks = &mut w.evidence.compromised;
        if before < *failures || marks.iter().any(|i| i == instance) {
            continue;
        }
        if marks.len() >= NAMED_INSTANCES {
            continue;
        }
        marks.push(instance.clone());
        let mut evidence = w.window(lane.size_ms);
        for (c, p) in evidence.counts.iter_mut().zip(previous) {
            *c += p;
        }
        fired.push(Fired {
            rule: ri,
            subject: Subject::Instance(Box::from(instance.as_str())),
            source: Some(net.clone()),
            window: evidence,
            detected_at_ms: at,
            source_logged_in: true,
        });
    }
}

fn truncate(s: &str, max: usize) -> &str {
    if s.len() <= max {
        return s;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::command::Action;
    use crate::rules::GUESSES;

    fn names(v: &[Arc<String>]) -> Vec<String> {
        v.iter().map(|n| n.to_string()).collect()
    }

    fn count_rule(name: &str, subject: SubjectKind, window_ms: i64, n: u32) -> Rule {
        Rule {
            name: name.into(),
            subject,
            window_ms: Some(window_ms),
            condition: Condition::Count {
                signals: vec![Signal::InvalidUser],
                at_least: n,
            },
            action: Action::Notify,
        }
    }

    fn store(rules: Vec<Rule>, cap: usize) -> WindowStore {
        WindowStore::new(
            WindowConfig {
                allowed_lateness_ms: 10_000,
                max_instances: cap,
                max_sources: cap,
                ..WindowConfig::default()
            },
            rules,
        )
    }

    fn obs<'a>(instance: &'a str, src: Option<&'a Peer>, t: i64, pos: u64) -> Observation<'a> {
        Observation {
            instance,
            source: src,
            observed: Observed::Signal(Signal::InvalidUser),
            user: None,
            counts_for_instance: true,
            time_ms: t,
            position: pos,
            line: "l",
        }
    }

    fn ip(s: &str) -> Peer {
        Peer::parse(s).unwrap()
    }

    #[test]
    fn fires_early_once_per_window_in_each_of_its_sizes() {
        let mut s = store(
            vec![
                count_rule("minute", SubjectKind::Instance, 60_000, 3),
                count_rule("hour", SubjectKind::Source, 3_600_000, 4),
            ],
            10,
        );
        let a = ip("1.2.3.4");
        let mut fired = Vec::new();
        for i in 0..5 {
            s.observe(&obs("i-1", Some(&a), 1_000 + i, i as u64), &mut fired);
        }
        let names: Vec<_> = fired.iter().map(|f| (f.rule, f.detected_at_ms)).collect();
        assert_eq!(names, vec![(0, 1_002), (1, 1_003)]);
        assert_eq!(fired[0].window.top_sources(5), vec![(a.clone(), 3)]);
        assert_eq!(fired[1].window.size_ms, 3_600_000);
        assert_eq!(
            fired[1].source.as_ref().map(|n| n.to_string()).as_deref(),
            Some("1.2.3.4/32")
        );
        fired.clear();
        // The next minute fires the minute rule again; the hour is still the same window.
        for i in 0..3 {
            s.observe(&obs("i-1", Some(&a), 61_000 + i, 10), &mut fired);
        }
        assert_eq!(fired.len(), 1);
        assert_eq!((fired[0].rule, fired[0].window.start_ms), (0, 60_000));
    }

    #[test]
    fn a_stream_with_a_fast_clock_makes_no_other_stream_late() {
        let mut s = store(
            vec![count_rule("m", SubjectKind::Instance, 60_000, 100)],
            10,
        );
        let mut f = Vec::new();
        let b = ip("5.6.7.8");
        // i-fast's clock runs four minutes ahead.
        s.observe(&obs("i-fast", None, 240_000 + 1_000, 1), &mut f);
        for n in 0..20 {
            let admit = s.observe(
                &obs("i-slow", Some(&b), 1_000 + n * 1_000, 2 + n as u64),
                &mut f,
            );
            assert_eq!(admit, Admit::Counted, "event {n}");
        }
        assert_eq!(s.stats().late_events, 0);
        // A stream is late against its own clock.
        s.observe(&obs("i-slow", None, 200_000, 30), &mut f);
        assert_eq!(
            s.observe(&obs("i-slow", None, 5_000, 31), &mut f),
            Admit::Late
        );
        assert_eq!(s.stats().late_events, 1);
    }

    #[test]
    fn source_windows_close_on_the_slowest_live_stream_and_idle_streams_do_not_hold_them() {
        let mut s = store(vec![count_rule("s", SubjectKind::Source, 60_000, 100)], 10);
        let mut f = Vec::new();
        let a = ip("9.9.9.9");
        s.observe(&obs("i-1", Some(&a), 30_000, 1), &mut f);
        s.observe(&obs("i-2", Some(&a), 30_000, 2), &mut f);
        // i-1 moves on, i-2 stays at 30 s: the source window stays open.
        s.observe(&obs("i-1", None, 200_000, 3), &mut f);
        assert_eq!(s.live_keys().1, 1);
        assert_eq!(s.low_water_position(), Some(1));
        // i-2 catches up: the window [0, 60 s) closes.
        s.observe(&obs("i-2", None, 200_000, 4), &mut f);
        assert_eq!(s.live_keys().1, 0);
        // A stream silent for longer than stream_idle_ms holds nothing.
        s.observe(&obs("i-2", Some(&a), 210_000, 5), &mut f);
        s.observe(&obs("i-1", None, 210_000 + 11 * 60_000, 6), &mut f);
        assert_eq!(
            s.live_keys().1,
            0,
            "the idle stream's clock no longer counts"
        );
        assert_eq!(s.low_water_position(), None);
    }

    #[test]
    fn a_deferred_stream_clock_is_applied_before_anything_depends_on_it() {
        let mut s = store(vec![count_rule("s", SubjectKind::Source, 60_000, 100)], 10);
        let mut f = Vec::new();
        let a = ip("9.9.9.9");
        s.observe(&obs("i-1", Some(&a), 30_000, 1), &mut f);
        // Lines that count nothing: i-2's clock is only noted...
        s.advance("i-2", 30_000);
        s.advance("i-2", 150_000);
        s.advance("i-2", 200_000);
        // ... and applied when another stream's clock moves.
        s.advance("i-1", 200_000);
        assert_eq!(s.live_keys().0, 2);
        // i-1's own deferred move is applied by the next clock change: the
        // slowest stream is at 200 s now, so the source window closes.
        s.raise_clock(0);
        assert_eq!(s.live_keys().1, 0);
        assert_eq!(s.low_water_position(), None);
    }

    #[test]
    fn duplicates_dropped_by_id() {
        let mut s = store(vec![count_rule("m", SubjectKind::Instance, 60_000, 2)], 10);
        let mut f = Vec::new();
        assert!(s.first_sighting("i-1", 1, 7));
        assert_eq!(s.observe(&obs("i-1", None, 1, 1), &mut f), Admit::Counted);
        assert!(!s.first_sighting("i-1", 1, 7));
        assert!(s.first_sighting("i-2", 1, 7), "ids are per stream");
        assert!(s.first_sighting("i-1", 1, 8));
        assert_eq!(s.observe(&obs("i-1", None, 1, 1), &mut f), Admit::Counted);
        assert_eq!(f.len(), 1);
        assert_eq!(s.stats().duplicate_events, 1);
    }

    proptest::proptest! {
        /// The ledger's multiset against a `BTreeMap` of counts, for any
        /// order of adds and removes (removes of absent values included).
        #[test]
        fn multiset_matches_a_counted_map(ops in proptest::collection::vec((proptest::bool::ANY, 0u64..40), 0..400)) {
            let mut m = Multiset::default();
            let mut model = std::collections::BTreeMap::<u64, u32>::new();
            for (add, v) in ops {
                if add {
                    // Some adds several at once (a single-event key's windows).
                    let times = (v % 4) as u32;
                    m.add_n(v, times);
                    if times > 0 {
                        *model.entry(v).or_default() += times;
                    }
                } else {
                    // Some removals several at once (as a single-event
                    // key's windows go), up to more than are there.
                    let times = (v % 3 + 1) as u32;
                    m.remove_n(v, times);
                    if let Some(n) = model.get_mut(&v) {
                        *n = n.saturating_sub(times);
                        if *n == 0 {
                            model.remove(&v);
                        }
                    }
                }
                proptest::prop_assert_eq!(m.first(), model.keys().next().copied());
                let from = v / 2 + 10;
                proptest::prop_assert_eq!(m.first_from(from), model.range(from..).next().map(|(v, _)| *v));
                let live: Vec<(u64, u32)> = m.counts.iter().copied().filter(|(_, n)| *n > 0).collect();
                let expected: Vec<(u64, u32)> = model.iter().map(|(v, n)| (*v, *n)).collect();
                proptest::prop_assert_eq!(live, expected);
                proptest::prop_assert_eq!(m.tombstones, m.counts.iter().filter(|(_, n)| *n == 0).count());
                proptest::prop_assert!(m.counts.iter().zip(m.counts.iter().skip(1)).all(|(a, b)| a.0 < b.0));
            }
        }
    }

    #[test]
    fn seen_ids_catch_a_redelivery_in_order_late_and_only_while_kept() {
        let mut ids = SeenIds::default();
        assert!(ids.insert(10, 1));
        assert!(ids.insert(10, 2), "another id of the same millisecond");
        assert!(ids.insert(70_000, 3));
        assert!(!ids.insert(10, 1), "redelivered, behind the newest minute");
        assert!(!ids.insert(70_000, 3), "redelivered, in the newest minute");
        assert!(
            ids.insert(70_000, 1),
            "an id at another time is another event"
        );
        assert!(ids.insert(30_000, 4), "a late event");
        assert!(!ids.insert(30_000, 4), "a late event redelivered");
        assert!(ids.insert(-50, 5), "a minute before all others");
        assert!(!ids.insert(-50, 5));
        let minutes: Vec<i64> = ids.minutes.iter().map(|(m, _)| *m).collect();
        assert_eq!(minutes, vec![-60_000, 0, 60_000]);
        // Kept while any time of the minute is not yet expired.
        ids.expire(|t| t < 59_999);
        assert_eq!(ids.minutes.len(), 2, "minute 0 still holds a live time");
        ids.expire(|t| t < 60_000);
        assert_eq!(ids.minutes.len(), 1);
        assert!(ids.insert(10, 1), "forgotten once its window is over");
    }

    #[test]
    fn seen_ids_of_one_millisecond_stay_a_hash_lookup_each() {
        // An instance may stamp every line with one time: each id is still
        // one set insert (a scan of the run would make this quadratic).
        let mut ids = SeenIds::default();
        for i in 0..200_000u128 {
            assert!(ids.insert(5, i));
        }
        assert!(!ids.insert(5, 199_999));
        assert_eq!(ids.minutes.len(), 1);
    }

    #[test]
    fn a_store_without_checkpoint_positions_counts_the_same() {
        // Offline scans keep no positions; everything else must not change.
        let run = |positions: bool| {
            let mut s = WindowStore::new(
                WindowConfig {
                    allowed_lateness_ms: 10_000,
                    max_sources: 50,
                    checkpoint_positions: positions,
                    ..WindowConfig::default()
                },
                crate::rules::graduated(),
            );
            let mut f = Vec::new();
            let lows = (0..3000u64)
                .map(|i| {
                    // A flood that evicts, an attacker that returns, and an
                    // instance window closing as the clock moves on.
                    let p = match i % 7 {
                        0 => ip("203.0.113.7"),
                        _ => ip(&format!("10.{}.{}.{}", i / 62500, i / 250 % 250, i % 250)),
                    };
                    let t = 1_000 + i as i64 * 700;
                    s.observe(&obs(&format!("i-{}", i % 3), Some(&p), t, i), &mut f);
                    s.low_water_position()
                })
                .collect::<Vec<_>>();
            // Distinct values are hashed with each store's own seed: compared by count.
            let fired: Vec<_> = f
                .iter()
                .map(|x| {
                    let w = &x.window;
                    let distinct = [w.users, w.instances, w.sources];
                    (
                        x.rule,
                        x.subject.clone(),
                        w.start_ms,
                        w.counts,
                        distinct,
                        w.top.clone(),
                    )
                })
                .collect();
            (fired, s.stats(), s.live_keys(), lows)
        };
        let (with, without) = (run(true), run(false));
        assert!(
            !with.0.is_empty() && with.1.evicted_sources > 0,
            "{:?}",
            with.1
        );
        assert_eq!(
            (&with.0, &with.1, with.2),
            (&without.0, &without.1, without.2)
        );
        assert!(with.3.iter().all(Option::is_some));
        assert!(without.3.iter().all(Option::is_none));
    }

    #[test]
    fn a_flood_of_new_addresses_evicts_them_not_the_active_attacker() {
        let mut s = store(vec![count_rule("s", SubjectKind::Source, 600_000, 10)], 50);
        let mut f = Vec::new();
        let attacker = ip("203.0.113.7");
        let flood: Vec<Peer> = (0..2000)
            .map(|i| ip(&format!("10.0.{}.{}", i / 250, i % 250)))
            .collect();
        for (i, p) in flood.iter().enumerate() {
            let t = 1_000 + i as i64;
            if i % 20 == 0 {
                s.observe(&obs("i-1", Some(&attacker), t, i as u64), &mut f);
            }
            s.observe(&obs("i-1", Some(p), t, i as u64), &mut f);
        }
        assert_eq!(s.live_keys().1, 50);
        assert!(s.stats().evicted_sources >= 1900);
        assert_eq!(
            f.len(),
            1,
            "the attacker's 10 attempts were all counted: {f:?}"
        );
        assert_eq!(
            f[0].subject,
            Subject::Source(PeerGrouping::default().network(&attacker))
        );
    }

    fn with_user<'a>(mut o: Observation<'a>, user: &'a str) -> Observation<'a> {
        o.user = Some(user);
        o
    }

    #[test]
    fn distinct_users_instances_and_sources() {
        let distinct = |name: &str, subject, of, n| Rule {
            name: name.into(),
            subject,
            window_ms: Some(600_000),
            condition: Condition::Distinct {
                signals: GUESSES.to_vec(),
                of,
                at_least: n,
            },
            action: Action::Notify,
        };
        let mut s = store(
            vec![
                distinct("users", SubjectKind::Source, Dimension::Users, 3),
                distinct("spray", SubjectKind::Source, Dimension::Instances, 4),
                distinct("botnet", SubjectKind::Instance, Dimension::Sources, 5),
            ],
            100,
        );
        let mut f = Vec::new();
        let a = ip("198.51.100.1");
        // The same user over and over is no enumeration.
        for i in 0..5 {
            s.observe(
                &with_user(obs("i-1", Some(&a), 1_000 + i, 1), "root"),
                &mut f,
            );
        }
        assert!(f.is_empty(), "{f:?}");
        s.observe(&with_user(obs("i-1", Some(&a), 2_000, 2), "admin"), &mut f);
        s.observe(&with_user(obs("i-1", Some(&a), 2_001, 3), "oracle"), &mut f);
        assert_eq!(f.iter().map(|x| x.rule).collect::<Vec<_>>(), vec![0]);
        for (n, inst) in ["i-2", "i-3", "i-4"].iter().enumerate() {
            s.observe(&obs(inst, Some(&a), 3_000 + n as i64, 4), &mut f);
        }
        assert_eq!(f.iter().map(|x| x.rule).collect::<Vec<_>>(), vec![0, 1]);
        assert_eq!(f[1].window.instances, 4);
        assert_eq!(f[1].window.instance_names.len(), 4);
        let botnet: Vec<Peer> = (1..=5).map(|i| ip(&format!("192.0.2.{i}"))).collect();
        for p in &botnet {
            s.observe(&obs("i-9", Some(p), 4_000, 5), &mut f);
        }
        assert_eq!(
            f.last().map(|x| (x.rule, x.subject.clone())),
            Some((2, Subject::Instance("i-9".into())))
        );
    }

    #[test]
    fn an_accepted_login_after_failures_fires_for_the_instance_that_accepted_it() {
        let rule = Rule {
            name: "compromise".into(),
            subject: SubjectKind::Source,
            window_ms: Some(3_600_000),
            condition: Condition::SuccessAfterFailures {
                signals: GUESSES.to_vec(),
                failures: 5,
            },
            action: Action::Quarantine,
        };
        let mut s = store(vec![rule], 100);
        let mut f = Vec::new();
        let admin = ip("192.0.2.10");
        let attacker = ip("203.0.113.66");
        let accepted = |inst, src, t| Observation {
            observed: Observed::Accepted,
            counts_for_instance: false,
            ..obs(inst, Some(src), t, 99)
        };
        // An administrator mistyping three times, then logging in.
        for i in 0..3 {
            s.observe(&obs("i-1", Some(&admin), 1_000 + i, 1), &mut f);
        }
        assert_eq!(
            s.observe(&accepted("i-1", &admin, 2_000), &mut f),
            Admit::Nothing
        );
        assert!(f.is_empty());
        // ... and again on another instance: six failures in the hour, but
        // never five since a login of theirs.
        for i in 0..3 {
            s.observe(&obs("i-4", Some(&admin), 3_000 + i, 1), &mut f);
        }
        s.observe(&accepted("i-4", &admin, 4_000), &mut f);
        assert!(f.is_empty(), "{f:?}");
        // An attacker failing in the previous hour, succeeding on another instance now.
        for i in 0..5 {
            s.observe(&obs("i-1", Some(&attacker), 3_500_000 + i, 2), &mut f);
        }
        s.observe(&accepted("i-2", &attacker, 3_700_000), &mut f);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].subject, Subject::Instance("i-2".into()));
        assert_eq!(f[0].window.total(&GUESSES), 5);
        // Once per instance and window.
        s.observe(&accepted("i-2", &attacker, 3_700_500), &mut f);
        assert_eq!(f.len(), 1);
        // A login with no failure before it opens nothing.
        let before = s.live_keys();
        s.observe(&accepted("i-3", &ip("192.0.2.99"), 3_700_600), &mut f);
        assert_eq!(s.live_keys().1, before.1);
    }

    fn source_distinct(name: &str, window_ms: i64, of: Dimension, n: u32) -> Rule {
        Rule {
            name: name.into(),
            subject: SubjectKind::Source,
            window_ms: Some(window_ms),
            condition: Condition::Distinct {
                signals: GUESSES.to_vec(),
                of,
                at_least: n,
            },
            action: Action::Notify,
        }
    }

    #[test]
    fn a_source_seen_once_is_kept_as_its_event_and_counts_in_full_from_its_second() {
        let mut s = store(
            vec![
                count_rule("ten", SubjectKind::Source, 600_000, 3),
                source_distinct("users", 600_000, Dimension::Users, 2),
                source_distinct("spray", 3_600_000, Dimension::Instances, 2),
            ],
            100,
        );
        let mut f = Vec::new();
        let a = ip("198.51.100.7");
        let admit = s.observe(&with_user(obs("i-1", Some(&a), 1_000, 5), "root"), &mut f);
        assert_eq!(admit, Admit::Counted);
        assert!(f.is_empty());
        let mut windows: Vec<_> = s
            .source_windows()
            .map(|(_, w)| {
                (
                    w.size_ms,
                    w.counts[Signal::InvalidUser.index()],
                    w.users,
                    w.instances,
                    names(&w.instance_names),
                    w.samples.len(),
                )
            })
            .collect();
        windows.sort();
        let one = vec!["i-1".to_owned()];
        assert_eq!(
            windows,
            vec![
                (600_000, 1, 1, 0, one.clone(), 0),
                (3_600_000, 1, 0, 1, one, 0)
            ]
        );
        assert_eq!(s.low_water_position(), Some(5));
        // The second event, from another instance with another user name.
        s.observe(&with_user(obs("i-2", Some(&a), 2_000, 6), "admin"), &mut f);
        assert_eq!(f.iter().map(|x| x.rule).collect::<Vec<_>>(), vec![1, 2]);
        for fired in &f {
            assert_eq!(fired.window.counts[Signal::InvalidUser.index()], 2);
            assert_eq!(names(&fired.window.instance_names), ["i-1", "i-2"]);
            assert_eq!(fired.window.samples, vec![Arc::<str>::from("l")]);
        }
        assert_eq!(f[0].window.users, 2);
        assert_eq!(f[1].window.instances, 2);
        assert_eq!(s.low_water_position(), Some(5));
        // Its windows close like any other.
        s.observe(&obs("i-1", None, 2 * 3_600_000 + 100_000, 7), &mut f);
        assert_eq!(s.live_keys().1, 0);
        assert_eq!(s.low_water_position(), None);
        assert_eq!(s.stats().windows_closed, 2);
    }

    #[test]
    fn a_source_seen_once_late_for_a_short_window_holds_only_the_long_one() {
        let mut s = store(
            vec![
                count_rule("ten", SubjectKind::Source, 600_000, 3),
                count_rule("hour", SubjectKind::Source, 3_600_000, 3),
            ],
            100,
        );
        let mut f = Vec::new();
        s.observe(&obs("i-1", None, 700_000, 1), &mut f);
        let a = ip("192.0.2.44");
        assert_eq!(
            s.observe(&obs("i-1", Some(&a), 1_000, 2), &mut f),
            Admit::Counted
        );
        assert_eq!(s.stats().partly_late_events, 1);
        let sizes: Vec<_> = s.source_windows().map(|(_, w)| w.size_ms).collect();
        assert_eq!(sizes, vec![3_600_000]);
        // Two more in the hour fire it with all three counted.
        s.observe(&obs("i-1", Some(&a), 650_000, 3), &mut f);
        s.observe(&obs("i-1", Some(&a), 660_000, 4), &mut f);
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!((f[0].rule, f[0].window.total(&GUESSES)), (1, 3));
    }

    #[test]
    fn a_rule_met_by_one_event_fires_on_a_new_source_once() {
        let mut s = store(
            vec![count_rule("one", SubjectKind::Source, 600_000, 1)],
            100,
        );
        let mut f = Vec::new();
        let a = ip("203.0.113.1");
        s.observe(&obs("i-1", Some(&a), 1_000, 1), &mut f);
        s.observe(&obs("i-1", Some(&a), 2_000, 2), &mut f);
        assert_eq!(f.len(), 1);
        assert_eq!(names(&f[0].window.instance_names), ["i-1"]);
    }

    #[test]
    fn an_evicted_source_seen_once_leaves_the_checkpoint_ledger() {
        let mut s = store(vec![count_rule("s", SubjectKind::Source, 600_000, 5)], 2);
        let mut f = Vec::new();
        for (pos, addr) in [(1, "10.0.0.1"), (2, "10.0.0.2"), (3, "10.0.0.3")] {
            s.observe(&obs("i-1", Some(&ip(addr)), 1_000, pos), &mut f);
        }
        assert_eq!(s.live_keys().1, 2);
        assert_eq!(s.stats().evicted_sources, 1);
        // The rule set has no instance lane: only source windows hold positions.
        assert_eq!(s.low_water_position(), Some(2));
        assert_eq!(s.stats().windows_closed, 1);
    }

    #[test]
    fn a_source_seen_once_costs_one_small_map_entry() {
        // What an address flood costs per key (a slab entry; the table and
        // the queue add 4-byte slot numbers and their slack):
        // docs/detection.md and BENCHMARKS.md state the bound from it.
        assert!(std::mem::size_of::<Single>() <= 48);
        assert!(std::mem::size_of::<Option<(PeerNet, SourceState)>>() <= 72);
        assert!(std::mem::size_of::<Tally>() <= 64);
    }

    /// A key's state for the [`Keyed`] tests: its number and mark.
    #[derive(Debug, PartialEq)]
    struct Probe(u32, bool);

    impl Marked for Probe {
        fn mark(&mut self) -> &mut bool {
            &mut self.1
        }
    }

    /// Seen (inserted, or marked if live) in order; returns the evicted.
    fn see(k: &mut Keyed<u32, Probe>, keys: &[u32]) -> Vec<u32> {
        let mut out = Vec::new();
        for &key in keys {
            k.get_or_insert(&key, |q| *q, || Probe(key, false), |s| out.push(s.0));
        }
        out
    }

    /// The queue holds each live slot once, and every live key is found.
    fn consistent(k: &mut Keyed<u32, Probe>) {
        assert_eq!(k.queue.len(), k.len());
        let mut queued: Vec<u32> = k.queue.iter().copied().collect();
        queued.sort_unstable();
        queued.dedup();
        assert_eq!(queued.len(), k.len());
        assert_eq!(k.slots.iter().flatten().count(), k.len());
        assert_eq!(k.slots.len(), k.len() + k.free.len());
        let keys: Vec<u32> = k.iter().map(|(key, _)| *key).collect();
        for key in keys {
            assert_eq!(k.get_mut(&key).map(|s| s.0), Some(key));
        }
    }

    #[test]
    fn keyed_evicts_least_recently_queued_first_and_a_key_seen_again_second() {
        let mut k = Keyed::new(3, true);
        assert!(see(&mut k, &[1, 2, 3]).is_empty());
        // 1 is seen again: its second chance sends 2 out first, then 3,
        // then 1 (its mark spent when it was requeued).
        assert_eq!(see(&mut k, &[1, 4]), [2]);
        assert_eq!(see(&mut k, &[5]), [3]);
        assert_eq!(see(&mut k, &[6]), [1]);
        assert_eq!(k.evictions, 3);
        assert_eq!(k.len(), 3);
        assert!(k.get_mut(&1).is_none());
        consistent(&mut k);
    }

    #[test]
    fn keyed_reuses_an_evicted_keys_slot() {
        let mut k = Keyed::new(2, true);
        assert_eq!(see(&mut k, &[1, 2, 3, 4, 5]), [1, 2, 3]);
        assert_eq!(k.slots.len(), 2);
        assert_eq!(k.get_mut(&4).map(|s| s.0), Some(4));
        assert_eq!(k.get_mut(&5).map(|s| s.0), Some(5));
        assert!(k.get_mut(&3).is_none());
        consistent(&mut k);
    }

    #[test]
    fn keyed_reuses_a_closed_keys_slot_and_keeps_the_queue_order() {
        let mut k = Keyed::new(3, true);
        see(&mut k, &[1, 2, 3]);
        // 1 and 3 close (their windows ended): their slots are free and they
        // leave the queue, so a reused slot is not queued twice.
        k.retain(|s| s.0 == 2);
        assert_eq!(k.len(), 1);
        consistent(&mut k);
        assert!(see(&mut k, &[4, 5]).is_empty());
        assert_eq!(k.slots.len(), 3);
        consistent(&mut k);
        // The order is the queue's (2 before 4 and 5), not the slots'.
        assert_eq!(see(&mut k, &[6, 7, 8]), [2, 4, 5]);
        consistent(&mut k);
        k.retain(|_| false);
        assert_eq!(k.len(), 0);
        consistent(&mut k);
        assert!(see(&mut k, &[9, 10, 11]).is_empty());
        assert_eq!(k.slots.len(), 3);
        consistent(&mut k);
    }

    #[test]
    fn keyed_does_not_find_a_key_through_its_freed_or_reused_last_slot() {
        let mut k = Keyed::new(4, true);
        see(&mut k, &[1]);
        assert_eq!(k.get_mut(&1).map(|s| s.0), Some(1));
        k.retain(|_| false);
        assert!(k.get_mut(&1).is_none());
        // Slot 0 again, for another key: the last slot names 2 now.
        see(&mut k, &[2]);
        assert_eq!(k.slots.len(), 1);
        assert!(k.get_mut(&1).is_none());
        assert_eq!(see(&mut k, &[1, 3, 4, 5]), [2]);
        assert!(k.get_mut(&2).is_none());
        consistent(&mut k);
    }

    #[test]
    fn keyed_with_a_cap_of_one_keeps_the_newest_key() {
        let mut k = Keyed::new(0, true);
        assert_eq!(k.cap, 1);
        assert_eq!(see(&mut k, &[1, 2]), [1]);
        // Seen again, 2 is requeued once, then goes: the cap holds.
        assert_eq!(see(&mut k, &[2, 3]), [2]);
        assert_eq!(see(&mut k, &[3, 3, 3]), Vec::<u32>::new());
        assert_eq!(k.len(), 1);
        assert_eq!(k.slots.len(), 1);
        consistent(&mut k);
        k.clear();
        assert_eq!(k.len(), 0);
        assert!(see(&mut k, &[4]).is_empty());
        consistent(&mut k);
    }

    #[test]
    fn keyed_finds_every_key_after_the_table_grows() {
        let mut k = Keyed::new(100_000, true);
        let keys: Vec<u32> = (0..20_000).map(|i| i * 7919).collect();
        assert!(see(&mut k, &keys).is_empty());
        k.retain(|s| s.0 % 2 == 0);
        assert_eq!(k.len(), 10_000);
        consistent(&mut k);
        let more: Vec<u32> = (0..15_000).map(|i| i * 7919 + 1).collect();
        assert!(see(&mut k, &more).is_empty());
        assert_eq!(k.slots.len(), 25_000);
        consistent(&mut k);
    }

    proptest::proptest! {
        /// The keyed map against a naive second-chance model (a queue of
        /// keys and their marks): the same keys evicted in the same order,
        /// the same keys live, after any mix of sightings and closings.
        #[test]
        fn keyed_matches_a_naive_second_chance_model(
            ops in proptest::collection::vec((0u32..24, 0u32..12), 1..200),
            cap in 1usize..8,
        ) {
            let mut k: Keyed<u32, Probe> = Keyed::new(cap, true);
            let mut live: std::collections::HashMap<u32, bool> = Default::default();
            let mut queue: VecDeque<u32> = VecDeque::new();
            for (key, op) in ops {
                if op == 0 {
                    // Close every key of `key`'s residue mod 3.
                    k.retain(|s| s.0 % 3 != key % 3);
                    live.retain(|x, _| x % 3 != key % 3);
                    queue.retain(|x| live.contains_key(x));
                } else {
                    let mut expected = Vec::new();
                    if let Some(touched) = live.get_mut(&key) {
                        *touched = true;
                    } else {
                        while live.len() >= cap {
                            let Some(old) = queue.pop_front() else { break };
                            let touched = live.get_mut(&old).map(std::mem::take);
                            if touched == Some(true) {
                                queue.push_back(old);
                            } else {
                                live.remove(&old);
                                expected.push(old);
                            }
                        }
                        live.insert(key, false);
                        queue.push_back(key);
                    }
                    proptest::prop_assert_eq!(see(&mut k, &[key]), expected);
                }
                let mut got: Vec<u32> = k.iter().map(|(x, _)| *x).collect();
                got.sort_unstable();
                let mut want: Vec<u32> = live.keys().copied().collect();
                want.sort_unstable();
                proptest::prop_assert_eq!(got, want);
                proptest::prop_assert!(k.slots.len() <= cap);
                consistent(&mut k);
            }
        }

        /// One stream against a naive model: an event is late exactly when
        /// its window ended at or before the watermark at arrival; every
        /// other event is counted once; a window fires exactly once when its
        /// count reaches the threshold.
        #[test]
        fn matches_a_naive_model(
            events in proptest::collection::vec((0i64..400_000, proptest::option::of(0u8..50)), 1..300),
            lateness in 0i64..120_000,
            threshold in 1u32..6,
        ) {
            let size = 60_000;
            let mut s = WindowStore::new(
                WindowConfig { size_ms: size, allowed_lateness_ms: lateness, ..WindowConfig::default() },
                vec![count_rule("m", SubjectKind::Instance, size, threshold)],
            );
            let mut max_t: Option<i64> = None;
            let mut counts: std::collections::HashMap<i64, u32> = Default::default();
            let mut seen_ids = std::collections::HashSet::new();
            let mut expected_fired = 0;
            let mut expected_late = 0;
            let mut fired = Vec::new();
            for (pos, (t, id)) in events.iter().enumerate() {
                max_t = Some(max_t.map_or(*t, |m| m.max(*t)));
                // The closing clock reads whole seconds of the same stream.
                let watermark = max_t.unwrap_or(0) - lateness;
                let start = t.div_euclid(size) * size;
                let fresh = id.is_none_or(|i| s.first_sighting("i-0", *t, u128::from(i) << 70 | start as u128));
                let admit = if fresh { s.observe(&obs("i-0", None, *t, pos as u64), &mut fired) } else { Admit::Nothing };
                let model = if start + size <= watermark {
                    expected_late += 1;
                    Admit::Late
                } else if id.is_some() && !seen_ids.insert((id.unwrap_or(0), *t)) {
                    Admit::Nothing
                } else {
                    let c = counts.entry(start).or_default();
                    *c += 1;
                    if *c == threshold {
                        expected_fired += 1;
                    }
                    Admit::Counted
                };
                proptest::prop_assert_eq!(admit, model, "event {} at {}", pos, t);
            }
            proptest::prop_assert_eq!(fired.len(), expected_fired);
            proptest::prop_assert_eq!(s.stats().late_events, expected_late);
            s.close_all();
            proptest::prop_assert_eq!(s.low_water_position(), None);
        }
    }
}
