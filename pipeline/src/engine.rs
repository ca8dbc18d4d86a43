//! The pipeline for one shard (or one offline input): record bytes or log
//! lines in, decisions out. Owns the decoder, the connection context, the
//! windows and the policy, and counts everything it skips.

use std::collections::HashMap;
use std::hash::BuildHasher;

use serde::Serialize;

use crate::classify::{self, Kind, Signal};
use crate::command::{Action, Origin};
use crate::context::{Attribution, ConnectionTracker, Verdict, DEFAULT_MAX_CONNECTIONS};
use crate::envelope::{DecodeError, Decoder, MessageType, DEFAULT_MAX_DECOMPRESSED};
use crate::partial::{Partial, PartialBuilder, PartialConfig, PartialStats};
use crate::policy::{Decision, Policy, PolicyConfig, PolicyError};
use crate::prefix::{self, LineTime};
use crate::window::{Admit, Fired, Observation, Observed, WindowConfig, WindowStats, WindowStore};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EngineConfig {
    pub window: WindowConfig,
    pub policy: PolicyConfig,
    pub max_decompressed: usize,
    pub max_connections: usize,
    /// Event times further than this ahead of their arrival time are
    /// clamped to it (and counted): a clock that runs ahead, or a forged
    /// timestamp, cannot move its stream's clock far past real time.
    pub max_future_skew_ms: i64,
    /// Year for syslog timestamps that carry none (offline scans).
    pub default_year: i64,
    /// Keep whole-input totals per instance and source (offline reports).
    pub keep_totals: bool,
    /// Build partials for the fleet stage (`None`: no fleet stage).
    pub partials: Option<PartialConfig>,
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            window: WindowConfig::default(),
            policy: PolicyConfig::default(),
            max_decompressed: DEFAULT_MAX_DECOMPRESSED,
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_future_skew_ms: 60_000,
            default_year: 1970,
            keep_totals: false,
            partials: None,
        }
    }
}

#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub records: u64,
    pub control_messages: u64,
    pub decode_errors: u64,
    pub events: u64,
    pub non_sshd_lines: u64,
    pub unclassified_sshd_lines: u64,
    pub kinds: std::collections::BTreeMap<&'static str, u64>,
    pub signals: std::collections::BTreeMap<&'static str, u64>,
    pub attributed_by_line: u64,
    pub attributed_by_connection: u64,
    pub unattributed_evidence: u64,
    pub ambiguous_lines: u64,
    /// Lines that are evidence of an attempt another line of the same
    /// connection already counted (docs/detection.md, what one attempt is).
    pub repeated_attempt_lines: u64,
    pub allowlisted_source_events: u64,
    pub future_times_clamped: u64,
    pub commands_quarantine: u64,
    pub commands_block: u64,
    pub commands_notify: u64,
    pub commands_held: u64,
    pub suppressed: u64,
    pub windows: WindowStats,
    pub connection_evictions: u64,
    /// Source networks whose whole-input totals were dropped to keep them
    /// within `max_sources` (with `keep_totals`; see [`Totals`]).
    pub dropped_source_totals: u64,
    /// Instances (hosts) whose whole-input totals were dropped to keep them
    /// within `max_instances`.
    pub dropped_instance_totals: u64,
}

impl Stats {
    /// Adds `other`'s counts (several engines' statistics as one).
    pub fn add(&mut self, other: &Stats) {
        // Destructured whole, so a new field cannot be left out.
        let Stats {
            records,
            control_messages,
            decode_errors,
            events,
            non_sshd_lines,
            unclassified_sshd_lines,
            kinds,
            signals,
            attributed_by_line,
            attributed_by_connection,
            unattributed_evidence,
            ambiguous_lines,
            repeated_attempt_lines,
            allowlisted_source_events,
            future_times_clamped,
            commands_quarantine,
            commands_block,
            commands_notify,
            commands_held,
            suppressed,
            windows,
            connection_evictions,
            dropped_source_totals,
            dropped_instance_totals,
        } = other;
        self.records += records;
        self.control_messages += control_messages;
        self.decode_errors += decode_errors;
        self.events += events;
        self.non_sshd_lines += non_sshd_lines;
        self.unclassified_sshd_lines += unclassified_sshd_lines;
        for (k, v) in kinds {
            *self.kinds.entry(k).or_default() += v;
        }
        for (k, v) in signals {
            *self.signals.entry(k).or_default() += v;
        }
        self.attributed_by_line += attributed_by_line;
        self.attributed_by_connection += attributed_by_connection;
        self.unattributed_evidence += unattributed_evidence;
        self.ambiguous_lines += ambiguous_lines;
        self.repeated_attempt_lines += repeated_attempt_lines;
        self.allowlisted_source_events += allowlisted_source_events;
        self.future_times_clamped += future_times_clamped;
        self.commands_quarantine += commands_quarantine;
        self.commands_block += commands_block;
        self.commands_notify += commands_notify;
        self.commands_held += commands_held;
        self.suppressed += suppressed;
        let WindowStats {
            late_events,
            partly_late_events,
            duplicate_events,
            evicted_instances,
            evicted_sources,
            windows_closed,
        } = windows;
        let w = &mut self.windows;
        w.late_events += late_events;
        w.partly_late_events += partly_late_events;
        w.duplicate_events += duplicate_events;
        w.evicted_instances += evicted_instances;
        w.evicted_sources += evicted_sources;
        w.windows_closed += windows_closed;
        self.connection_evictions += connection_evictions;
        self.dropped_source_totals += dropped_source_totals;
        self.dropped_instance_totals += dropped_instance_totals;
    }
}

/// An [`EngineConfig`] [`Engine::new`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EngineConfigError {
    #[error(transparent)]
    Policy(#[from] PolicyError),
    #[error("window size must be positive")]
    WindowSize,
    #[error("allowed lateness must not be negative")]
    NegativeLateness,
    #[error("{0}")]
    Grouping(String),
    #[error("stream idle time must not be negative")]
    StreamIdle,
    #[error("{0}")]
    Partials(String),
}

/// One Kinesis or Kafka record to process: its bytes and where it stands.
/// Build it with field names; the rarely needed fields default
/// (`..RecordInput::default()`).
#[derive(Debug, Clone, Copy, Default)]
pub struct RecordInput<'a> {
    /// The record's data: a CloudWatch Logs subscription payload (gzip or JSON).
    pub data: &'a [u8],
    /// Opaque, increasing position of the record (for checkpoints).
    pub position: u64,
    /// When the record arrived (Kinesis `ApproximateArrivalTimestamp`,
    /// Kafka's message time): event times further than `max_future_skew_ms`
    /// past it are clamped to it. `None` clamps nothing.
    pub arrival_ms: Option<i64>,
    /// The account named in commands when the payload's `owner` is empty
    /// (CloudWatch always sets it; empty leaves it empty).
    pub account_fallback: &'a str,
}

/// One log line to process, with where it came from.
#[derive(Debug, Clone, Copy)]
pub struct LineInput<'a> {
    /// The instance the line is counted against. With `instance_from_host`,
    /// the syslog host of the line wins and this is the fallback.
    pub instance: &'a str,
    pub instance_from_host: bool,
    pub event_id: Option<&'a str>,
    /// Event time from the transport (CloudWatch's timestamp); when absent
    /// the line's own timestamp is used.
    pub time_ms: Option<i64>,
    /// When the line arrived (or, offline, the reading clock): event times
    /// further than `max_future_skew_ms` past it are clamped to it.
    pub arrival_ms: Option<i64>,
    /// Opaque, increasing position of the record the line came in (for checkpoints).
    pub position: u64,
    pub line: &'a str,
}

/// The totals' hasher. Seeded at random, as the windows' keys are: the
/// source networks are the attacker's choice, so a fixed seed would let
/// one pick networks that share a bucket. Not SipHash: on an address flood
/// it cost `scan`'s counting thread about a tenth of its time.
pub type TotalsHasher = foldhash::fast::RandomState;

/// Whole-input counts per signal, kept only with `keep_totals`.
#[derive(Debug, Default, Clone)]
pub struct Totals {
    /// By instance (or syslog host, which a central log server takes from
    /// its senders): at most `max_instances`, pruned as the sources are.
    pub instances: HashMap<String, [u64; Signal::COUNT], TotalsHasher>,
    /// By source network (what source rules count and commands name). At
    /// most `max_sources` networks: past that, the half with the smallest
    /// totals is dropped (ties by network, so what stays does not depend on
    /// the map's order), so an address flood cannot grow the totals without
    /// bound. A network's total is exact unless it was once dropped, which
    /// takes being among the smallest.
    pub sources: HashMap<crate::peer::PeerNet, [u64; Signal::COUNT], TotalsHasher>,
    /// Networks dropped so far.
    pub dropped_sources: u64,
    /// Instances dropped so far.
    pub dropped_instances: u64,
}

type Counts = [u64; Signal::COUNT];

/// The order totals are kept and shown in: the largest first, ties by key,
/// so that neither depends on a map's order.
fn by_total<K: Ord>((a_total, a): (u64, &K), (b_total, b): (u64, &K)) -> std::cmp::Ordering {
    b_total.cmp(&a_total).then_with(|| a.cmp(b))
}

/// The `n` keys of `map` with the largest totals, with their totals and
/// counts, in no order except that, when `map` holds more than `n`, the
/// smallest of them is last.
fn largest<K: Ord, S>(map: &HashMap<K, Counts, S>, n: usize) -> Vec<(u64, &K, &Counts)> {
    let mut ranked: Vec<(u64, &K, &Counts)> = map
        .iter()
        .map(|(key, counts)| (counts.iter().sum(), key, counts))
        .collect();
    if ranked.len() > n {
        if n == 0 {
            return Vec::new();
        }
        ranked.select_nth_unstable_by(n - 1, |a, b| by_total((a.0, a.1), (b.0, b.1)));
        ranked.truncate(n);
    }
    ranked
}

/// Keeps the `keep` keys of `map` with the largest totals; returns how many went.
fn keep_largest<K: Ord + Clone + std::hash::Hash + Eq>(
    map: &mut HashMap<K, Counts, TotalsHasher>,
    keep: usize,
) -> u64 {
    let all = map.len();
    if all <= keep {
        return 0;
    }
    let Some((last_total, last_key)) = largest(map, keep)
        .last()
        .map(|&(total, key, _)| (total, key.clone()))
    else {
        map.clear();
        return all as u64;
    };
    // Keys are unique: exactly `keep` rank at or before the last kept.
    map.retain(|key, counts| by_total((counts.iter().sum(), key), (last_total, &last_key)).is_le());
    (all - keep) as u64
}

impl Totals {
    /// The `top` source networks by total, ties by network (IPv4 before
    /// IPv6, in address order). Only these are ranked in full: an address
    /// flood leaves up to `max_sources` networks.
    pub fn top_sources(&self, top: usize) -> Vec<(&crate::peer::PeerNet, &Counts)> {
        let mut v = largest(&self.sources, top);
        v.sort_unstable_by(|a, b| by_total((a.0, a.1), (b.0, b.1)));
        v.into_iter()
            .map(|(_, net, counts)| (net, counts))
            .collect()
    }

    /// Keeps the `keep` source networks with the largest totals.
    fn prune_sources(&mut self, keep: usize) {
        self.dropped_sources += keep_largest(&mut self.sources, keep);
    }

    /// Keeps the `keep` instances with the largest totals.
    fn prune_instances(&mut self, keep: usize) {
        self.dropped_instances += keep_largest(&mut self.instances, keep);
    }
}

pub struct Engine {
    decoder: Decoder,
    reading: Reading,
    core: Core,
    /// The buffer of a record's fronts, kept empty between records so its
    /// allocation serves the next one (see [`recycle`]).
    fronts: Vec<Front<'static>>,
}

/// The half of a line's processing that needs no event time: the `sshd`
/// finder and the connection tracker (one attempt per connection). Apart
/// from [`Core`] so the two can run on two threads ([`Engine::split`]).
struct Reading {
    sshd_finder: memchr::memmem::Finder<'static>,
    tracker: ConnectionTracker,
}

/// The half that counts: event time, windows, policy, statistics.
struct Core {
    config: EngineConfig,
    windows: WindowStore,
    policy: Policy,
    stats: Stats,
    kind_counts: [u64; Kind::ALL.len()],
    signal_counts: [u64; Signal::COUNT],
    fired: Vec<Fired>,
    last_time_ms: Option<i64>,
    /// The day (since the epoch) of the newest complete timestamp seen, and
    /// its year: syslog lines without a year mixed with ISO ones (or
    /// following them) take it. The calendar is consulted only when an
    /// absolute time falls on another day.
    year_hint: Option<(i64, i64)>,
    totals: Option<Totals>,
    partials: Option<PartialBuilder>,
    /// Signals some fleet rule counts, as bits: only these make partials.
    fleet_signals: u32,
    /// Some fleet rule judges logins (success after failures).
    fleet_logins: bool,
    /// Events are counted in windows but not in partials (a reshard's
    /// child replaying records whose partials its parent sent).
    partials_paused: bool,
    id_hasher: (foldhash::fast::FixedState, foldhash::fast::FixedState),
}

impl Engine {
    pub fn new(config: EngineConfig) -> Result<Engine, EngineConfigError> {
        config.policy.validate()?;
        config
            .window
            .grouping
            .validate()
            .map_err(EngineConfigError::Grouping)?;
        if config.window.stream_idle_ms < 0 {
            return Err(EngineConfigError::StreamIdle);
        }
        if config.window.size_ms <= 0 {
            return Err(EngineConfigError::WindowSize);
        }
        if config.window.allowed_lateness_ms < 0 {
            return Err(EngineConfigError::NegativeLateness);
        }
        if let Some(p) = &config.partials {
            p.validate().map_err(EngineConfigError::Partials)?;
        }
        let fleet_signals = config
            .partials
            .iter()
            .flat_map(|p| &p.fleet_rules)
            .fold(0, |m, r| {
                r.condition
                    .signals()
                    .iter()
                    .fold(m, |m, s| m | 1u32 << s.index())
            });
        Ok(Engine {
            fronts: Vec::new(),
            decoder: Decoder::new(config.max_decompressed),
            reading: Reading {
                sshd_finder: memchr::memmem::Finder::new("sshd"),
                tracker: ConnectionTracker::new(config.max_connections),
            },
            core: Core {
                windows: WindowStore::new(config.window.clone(), config.policy.rules.clone()),
                policy: Policy::new(config.policy.clone()),
                stats: Stats::default(),
                kind_counts: [0; Kind::ALL.len()],
                signal_counts: [0; Signal::COUNT],
                fired: Vec::new(),
                last_time_ms: None,
                year_hint: None,
                totals: config.keep_totals.then(Totals::default),
                partials: config.partials.clone().map(PartialBuilder::new),
                fleet_signals,
                partials_paused: false,
                fleet_logins: config.partials.iter().any(|p| {
                    p.fleet_rules
                        .iter()
                        .any(|r| r.condition.is_success_after_failures())
                }),
                id_hasher: (
                    foldhash::fast::FixedState::with_seed(0x1d5),
                    foldhash::fast::FixedState::with_seed(0x2e7),
                ),
                config,
            },
        })
    }

    /// Processes one Kinesis/Kafka record holding a subscription payload. A
    /// record that cannot be decoded is counted and its error returned; the
    /// caller logs it and moves on.
    pub fn process_record(
        &mut self,
        record: &RecordInput<'_>,
        out: &mut Vec<Decision>,
    ) -> Result<RecordKind, DecodeError> {
        let &RecordInput {
            data,
            position,
            arrival_ms,
            account_fallback,
        } = record;
        self.core.stats.records += 1;
        let envelope = match self.decoder.decode(data) {
            Ok(e) => e,
            Err(e) => {
                self.core.stats.decode_errors += 1;
                return Err(e);
            }
        };
        if envelope.kind()? == MessageType::Control {
            self.core.stats.control_messages += 1;
            return Ok(RecordKind::Control);
        }
        let origin = Origin {
            account: if envelope.owner.is_empty() {
                account_fallback.to_owned()
            } else {
                envelope.owner.to_string()
            },
            log_group: envelope.log_group.to_string(),
            log_stream: envelope.log_stream.to_string(),
        };
        let n = envelope.log_events.len();
        // Each line's prefix and classification first, then each line
        // through the state: the two halves' code stays in the instruction
        // cache for a whole record instead of evicting each other at every
        // line (the first half is pure, so the order changes nothing).
        let mut lines = recycle(std::mem::take(&mut self.fronts));
        lines.extend(
            envelope
                .log_events
                .iter()
                .map(|ev| self.reading.front(&ev.message)),
        );
        for (ev, &front) in envelope.log_events.iter().zip(&lines) {
            self.core.process_front(
                &LineInput {
                    instance: &envelope.log_stream,
                    instance_from_host: false,
                    event_id: Some(&ev.id),
                    time_ms: Some(ev.timestamp),
                    arrival_ms,
                    position,
                    line: &ev.message,
                },
                front,
                Tracking::Tracker(&mut self.reading.tracker),
                &origin,
                out,
            );
        }
        self.fronts = recycle(lines);
        if self.core.partials.is_some() {
            self.core.close_partials();
        }
        Ok(RecordKind::Data { events: n })
    }

    /// Processes one log line (files, stdin, raw-line transports).
    pub fn process_line(
        &mut self,
        input: &LineInput<'_>,
        origin: &Origin,
        out: &mut Vec<Decision>,
    ) {
        let front = self.reading.front(input.line);
        let tracking = Tracking::Tracker(&mut self.reading.tracker);
        self.core.process_front(input, front, tracking, origin, out);
    }

    /// The engine as two halves for two threads, the counter a few lines
    /// behind the reader (`scan` on both cores). Lines only: a record's
    /// lines carry event ids, which are checked before the connection
    /// tracker sees a line, so records go through [`Engine::process_record`].
    pub fn split(&mut self) -> (LineReader<'_>, LineCounter<'_>) {
        (
            LineReader {
                reading: &mut self.reading,
            },
            LineCounter {
                core: &mut self.core,
            },
        )
    }

    /// Classifies one line with its connection context, counting nothing
    /// (for `sshwarden classify`).
    pub fn verdict<'a>(&mut self, line: &'a str, instance: &str) -> LineVerdict<'a> {
        let Some(l) = prefix::parse_line(line) else {
            return LineVerdict::NotSshd;
        };
        let Some(c) = classify::classify(l.message) else {
            return LineVerdict::Unclassified;
        };
        let tracker = &mut self.reading.tracker;
        let host = tracker.host_key(instance, l.host);
        LineVerdict::Classified(tracker.observe(host, l.pid, &c))
    }

    /// A caught-up shard with nothing new: lets processing time stand in for
    /// event time so idle windows still close (and the checkpoint moves).
    /// Conservative: the watermark only reaches `now` minus twice the
    /// allowed lateness.
    pub fn observe_idle(&mut self, now_ms: i64) {
        let lateness = self.core.config.window.allowed_lateness_ms;
        self.core.windows.raise_clock(now_ms - lateness);
        self.core.close_partials();
    }

    /// Closes every open window (end of an offline input).
    pub fn finish(&mut self) {
        self.core.windows.close_all();
        if let Some(b) = &mut self.core.partials {
            b.close_all();
        }
    }

    /// While `paused`, events still count in the windows but not in
    /// partials: a reshard's child replays its parent's records to rebuild
    /// the windows, and the parent sent those records' partials itself
    /// ([`Engine::flush_partials`]), so building them again would count
    /// them twice fleet-wide.
    pub fn pause_partials(&mut self, paused: bool) {
        self.core.partials_paused = paused;
    }

    /// Emits every open partial as the last of its part (a shard at its
    /// end: no record of it will come), leaving the windows open.
    pub fn flush_partials(&mut self) {
        if let Some(b) = &mut self.core.partials {
            b.close_all();
        }
    }

    /// Partials for the fleet stage emitted since the last call.
    pub fn drain_partials(&mut self, out: &mut Vec<Partial>) {
        if let Some(b) = &mut self.core.partials {
            b.drain(out);
        }
    }

    /// The same, each with the smallest record position it counts (a
    /// checkpoint stays before it until the partial is delivered).
    pub fn drain_partials_held(&mut self, out: &mut Vec<(u64, Partial)>) {
        if let Some(b) = &mut self.core.partials {
            b.drain_held(out);
        }
    }

    pub fn partial_stats(&self) -> Option<PartialStats> {
        self.core.partials.as_ref().map(PartialBuilder::stats)
    }

    /// The largest event time seen: stored with a checkpoint, so that the
    /// next owner of the shard knows which windows were already closed.
    pub fn event_time(&self) -> Option<i64> {
        self.core.windows.event_time()
    }

    /// Resumes after a checkpoint written at `event_time_ms`: windows that
    /// were closed then stay closed (their commands were delivered), so
    /// records after the checkpoint that still carry their tail cannot
    /// re-fire them with partial counts; they count as late.
    pub fn resume_from(&mut self, event_time_ms: i64) {
        self.core.windows.resume_from(event_time_ms);
        self.core.close_partials();
    }

    /// The position a checkpoint must stay before (see [`WindowStore::low_water_position`]).
    /// With partials, also before the oldest one not yet emitted as closed.
    pub fn low_water_position(&self) -> Option<u64> {
        let windows = self.core.windows.low_water_position();
        let partials = self
            .core
            .partials
            .as_ref()
            .and_then(|b| b.low_water_position());
        match (windows, partials) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    pub fn stats(&self) -> Stats {
        let mut s = self.core.stats();
        s.connection_evictions = self.reading.tracker.evictions();
        s
    }

    /// What the engine set aside or merged, cheaply (no clone of [`Stats`]):
    /// events late for every window or for some, duplicates by event id,
    /// times clamped to their arrival, lines repeating a counted attempt,
    /// keys evicted past the caps. Totals since the engine started.
    pub fn skip_counts(&self) -> [(&'static str, u64); 7] {
        let w = self.core.windows.stats();
        let s = &self.core.stats;
        [
            ("late", w.late_events),
            ("partly_late", w.partly_late_events),
            ("duplicate", w.duplicate_events),
            ("clamped", s.future_times_clamped),
            ("repeated_attempt", s.repeated_attempt_lines),
            ("evicted_instance", w.evicted_instances),
            ("evicted_source", w.evicted_sources),
        ]
    }

    pub fn totals(&self) -> Option<&Totals> {
        self.core.totals.as_ref()
    }

    pub fn live_connections(&self) -> usize {
        self.reading.tracker.len()
    }

    pub fn windows(&self) -> &WindowStore {
        &self.core.windows
    }

    pub fn policy_config(&self) -> &PolicyConfig {
        self.core.policy.config()
    }
}

/// The instance a line counts against: its syslog host when the input
/// says so and the line names one, else the input's instance.
fn instance_of<'l>(
    instance: &'l str,
    from_host: bool,
    parsed: Option<prefix::SshdLine<'l>>,
) -> &'l str {
    match (from_host, parsed.and_then(|l| l.host)) {
        (true, Some(h)) => h,
        _ => instance,
    }
}

/// Where [`Core::process_front`] gets a classified line's verdict.
enum Tracking<'t, 'l> {
    /// From this tracker, after the event-id check: a redelivered line
    /// must not pass for a further attempt.
    Tracker(&'t mut ConnectionTracker),
    /// Observed already, by a [`LineReader`] (lines without event ids).
    Read(Option<Verdict<'l>>),
}

impl Reading {
    /// What a line says before any state sees it: its prefix and its
    /// classification. Most lines of a host's log are not sshd's: a SIMD
    /// search for the process name rejects them before any parsing (every
    /// prefix `parse_line` accepts names `sshd`).
    fn front<'l>(&self, line: &'l str) -> Front<'l> {
        if self.sshd_finder.find(line.as_bytes()).is_none() {
            return Front::NotSshd;
        }
        match prefix::parse_line(line) {
            None => Front::Unparsed,
            Some(l) => Front::Sshd(l, classify::classify(l.message)),
        }
    }
}

/// A line from text (a file, stdin): no event id, no transport time. What
/// the halves of a split engine take ([`Engine::split`]).
#[derive(Debug, Clone, Copy)]
pub struct TextLine<'a> {
    /// As [`LineInput::instance`].
    pub instance: &'a str,
    pub instance_from_host: bool,
    /// As [`LineInput::arrival_ms`].
    pub arrival_ms: Option<i64>,
    pub position: u64,
    pub line: &'a str,
}

impl<'a> From<TextLine<'a>> for LineInput<'a> {
    fn from(t: TextLine<'a>) -> Self {
        LineInput {
            instance: t.instance,
            instance_from_host: t.instance_from_host,
            event_id: None,
            time_ms: None,
            arrival_ms: t.arrival_ms,
            position: t.position,
            line: t.line,
        }
    }
}

/// A line as a [`LineReader`] leaves it for its [`LineCounter`]: prefix,
/// classification and connection verdict, borrowing the line's text.
#[derive(Debug, Clone)]
pub struct ReadLine<'l> {
    line: TextLine<'l>,
    front: Front<'l>,
    verdict: Option<Verdict<'l>>,
}

/// The first half of a split engine: prefix, classification, connection
/// tracker. Needs no event time, so it can run ahead on another thread.
pub struct LineReader<'e> {
    reading: &'e mut Reading,
}

impl LineReader<'_> {
    pub fn read<'l>(&mut self, line: TextLine<'l>) -> ReadLine<'l> {
        let front = self.reading.front(line.line);
        let verdict = match front {
            Front::Sshd(l, Some(c)) => {
                let instance = instance_of(line.instance, line.instance_from_host, Some(l));
                let tracker = &mut self.reading.tracker;
                let host = tracker.host_key(instance, l.host);
                Some(tracker.observe(host, l.pid, &c))
            }
            Front::NotSshd | Front::Unparsed | Front::Sshd(_, None) => None,
        };
        ReadLine {
            line,
            front,
            verdict,
        }
    }
}

/// The second half of a split engine: event time, windows, policy.
pub struct LineCounter<'e> {
    core: &'e mut Core,
}

impl LineCounter<'_> {
    /// Counts `read`: given the reader's lines in the reader's order, the
    /// same as [`Engine::process_line`] on each.
    pub fn count(&mut self, read: ReadLine<'_>, origin: &Origin, out: &mut Vec<Decision>) {
        let ReadLine {
            line,
            front,
            verdict,
        } = read;
        self.core
            .process_front(&line.into(), front, Tracking::Read(verdict), origin, out);
    }

    /// The engine's statistics so far, except the connection evictions
    /// (the reader's).
    pub fn stats(&self) -> Stats {
        self.core.stats()
    }
}

/// An empty vector of fronts of any lifetime, in `v`'s allocation: the
/// fronts borrow one record's text, so the buffer cannot be kept typed by
/// it; emptied, it is converted in place (a `collect` of an empty
/// `into_iter` into an element of the same size and alignment reuses the
/// allocation).
fn recycle<'a>(mut v: Vec<Front<'_>>) -> Vec<Front<'a>> {
    v.clear();
    v.into_iter().map(|_| Front::NotSshd).collect()
}

/// A line's prefix and classification ([`Core::front`]).
#[derive(Debug, Clone, Copy)]
enum Front<'l> {
    /// No `sshd` in the line.
    NotSshd,
    /// Not a prefix `parse_line` accepts.
    Unparsed,
    Sshd(prefix::SshdLine<'l>, Option<classify::Classified<'l>>),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordKind {
    Data { events: usize },
    Control,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LineVerdict<'a> {
    NotSshd,
    Unclassified,
    Classified(crate::context::Verdict<'a>),
}

impl Core {
    /// The statistics, except the connection tracker's evictions.
    fn stats(&self) -> Stats {
        let mut s = self.stats.clone();
        s.kinds = Kind::ALL
            .iter()
            .zip(self.kind_counts)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.as_str(), n))
            .collect();
        s.signals = Signal::ALL
            .iter()
            .zip(self.signal_counts)
            .filter(|(_, n)| *n > 0)
            .map(|(k, n)| (k.as_str(), n))
            .collect();
        s.windows = self.windows.stats();
        s.dropped_source_totals = self.totals.as_ref().map_or(0, |t| t.dropped_sources);
        s.dropped_instance_totals = self.totals.as_ref().map_or(0, |t| t.dropped_instances);
        s
    }

    fn resolve(&mut self, t: LineTime, arrival_ms: Option<i64>) -> i64 {
        match t {
            LineTime::Absolute(ms) => {
                let day = ms.div_euclid(86_400_000);
                if self.year_hint.is_none_or(|(d, _)| d != day) {
                    self.year_hint = Some((day, crate::time::civil_from_days(day).0));
                }
                ms
            }
            no_year => {
                let year = self
                    .year_hint
                    .map_or(self.config.default_year, |(_, year)| year);
                let ms = no_year.resolve(year);
                // A yearless date ahead of the reading clock is last year's
                // (December's log read in January), as syslog readers assume.
                match arrival_ms {
                    Some(a) if ms > a.saturating_add(self.config.max_future_skew_ms) => {
                        no_year.resolve(year - 1)
                    }
                    _ => ms,
                }
            }
        }
    }

    /// Reports the partials whose window the newest event time (or, idle,
    /// the raised clock) has passed, and emits as closed those the closing
    /// clock has passed.
    fn close_partials(&mut self) {
        let Some(b) = &mut self.partials else {
            return;
        };
        let newest = self
            .windows
            .newest_event_time()
            .into_iter()
            .chain(self.windows.event_time())
            .max();
        if let Some(t) = newest {
            b.report_until(t);
        }
        if let Some(wm) = self.windows.watermark() {
            b.close_until(wm);
        }
    }

    /// Offers a counted event or a login to the partials.
    fn offer_partial(&mut self, o: &Observation<'_>, origin: &Origin) {
        if self.partials_paused {
            return;
        }
        let (Some(b), Some(src)) = (&mut self.partials, o.source) else {
            return;
        };
        let net = self.config.window.grouping.network(src);
        let ids = (origin.account.as_str(), origin.log_group.as_str());
        match o.observed {
            Observed::Signal(s) if self.fleet_signals & (1 << s.index()) != 0 => {
                b.signal(&net, o.instance, o.user, s, o.time_ms, o.position, ids);
            }
            Observed::Accepted if self.fleet_logins => {
                b.login(&net, o.instance, o.user, o.time_ms, o.position, ids);
            }
            Observed::Signal(_) | Observed::Accepted => {}
        }
    }

    /// Counts `input`, whose [`Reading::front`] is `front`.
    fn process_front<'l>(
        &mut self,
        input: &LineInput<'l>,
        front: Front<'l>,
        tracking: Tracking<'_, 'l>,
        origin: &Origin,
        out: &mut Vec<Decision>,
    ) {
        self.stats.events += 1;
        // Without a transport time a line without `sshd` is not needed (sshd's
        // own lines move the watermark); with one it still moves its
        // stream's clock below.
        let (parsed, classified) = match front {
            Front::NotSshd if input.time_ms.is_none() => {
                self.stats.non_sshd_lines += 1;
                return;
            }
            Front::NotSshd | Front::Unparsed => (None, None),
            Front::Sshd(l, c) => (Some(l), c),
        };
        let instance = instance_of(input.instance, input.instance_from_host, parsed);
        let mut time_ms = input
            .time_ms
            .or_else(|| {
                parsed
                    .and_then(|l| l.time)
                    .map(|t| self.resolve(t, input.arrival_ms))
            })
            .or(self.last_time_ms)
            .unwrap_or(0);
        if let Some(arrival) = input.arrival_ms {
            if time_ms > arrival.saturating_add(self.config.max_future_skew_ms) {
                self.stats.future_times_clamped += 1;
                time_ms = arrival;
            }
        }
        self.last_time_ms = Some(time_ms);
        let Some(line) = parsed else {
            self.stats.non_sshd_lines += 1;
            self.windows.advance(instance, time_ms);
            return;
        };
        let Some(c) = classified else {
            self.stats.unclassified_sshd_lines += 1;
            self.windows.advance(instance, time_ms);
            return;
        };
        // A redelivered log event (same id in the same stream) is dropped
        // before the connection context sees it, so it cannot pass for a
        // further attempt. Only lines that can count keep their id.
        if let Some(id) = input.event_id.filter(|id| !id.is_empty()) {
            if may_count(&c) {
                // Ids are kept per stream: the instance need not be hashed in.
                let key = id;
                let hashed = u128::from(self.id_hasher.0.hash_one(key)) << 64
                    | u128::from(self.id_hasher.1.hash_one(key));
                if !self.windows.first_sighting(instance, time_ms, hashed) {
                    return;
                }
            }
        }
        let v = match tracking {
            Tracking::Tracker(t) => t.observe(t.host_key(instance, line.host), line.pid, &c),
            Tracking::Read(Some(v)) => v,
            Tracking::Read(None) => {
                // Not reached: a `LineReader` observes every classified
                // line. Were it reached, the line would be counted as
                // unrecognised rather than lost.
                debug_assert!(false, "a classified line read without its verdict");
                self.stats.unclassified_sshd_lines += 1;
                self.windows.advance(instance, time_ms);
                return;
            }
        };
        self.kind_counts[kind_index(v.kind)] += 1;
        if v.ambiguous {
            self.stats.ambiguous_lines += 1;
        }
        let (observed, source) = match (v.signal, v.kind) {
            (Some(signal), _) if v.new_attempt => (Observed::Signal(signal), v.source.clone()),
            (None, Kind::Accepted) => (
                Observed::Accepted,
                v.logged_source.and_then(crate::peer::Peer::parse),
            ),
            (Some(_), _) => {
                // Another line of an attempt already counted.
                self.stats.repeated_attempt_lines += 1;
                self.windows.advance(instance, time_ms);
                return;
            }
            (None, _) => {
                self.windows.advance(instance, time_ms);
                return;
            }
        };
        if let Observed::Signal(_) = observed {
            match v.attribution {
                Attribution::Line => self.stats.attributed_by_line += 1,
                Attribution::Connection => self.stats.attributed_by_connection += 1,
                Attribution::None => self.stats.unattributed_evidence += 1,
            }
        }
        if let Some(src) = &source {
            if !self.policy.source_allowed(src) {
                if let Observed::Signal(_) = observed {
                    self.stats.allowlisted_source_events += 1;
                }
                self.windows.advance(instance, time_ms);
                return;
            }
        }
        let observation = Observation {
            instance,
            source: source.as_ref(),
            observed,
            user: v.user,
            counts_for_instance: v.counts_for_instance,
            time_ms,
            position: input.position,
            line: input.line,
        };
        let admit = self.windows.observe(&observation, &mut self.fired);
        if self.partials.is_some() {
            if admit != Admit::Late {
                self.offer_partial(&observation, origin);
            }
            self.close_partials();
        }
        if admit == Admit::Nothing {
            self.decide(origin, out);
            return;
        }
        if admit != Admit::Counted {
            return;
        }
        let Observed::Signal(signal) = observed else {
            return;
        };
        self.signal_counts[signal.index()] += 1;
        if let Some(t) = &mut self.totals {
            if v.counts_for_instance {
                match t.instances.get_mut(instance) {
                    Some(counts) => counts[signal.index()] += 1,
                    None => {
                        let mut counts = [0; Signal::COUNT];
                        counts[signal.index()] = 1;
                        t.instances.insert(instance.to_owned(), counts);
                        let cap = self.config.window.max_instances.max(1);
                        if t.instances.len() > cap {
                            // Host names can be forged as freely as addresses.
                            t.prune_instances((cap / 2).max(1));
                        }
                    }
                }
            }
            if let Some(src) = &source {
                let net = self.config.window.grouping.network(src);
                t.sources.entry(net).or_default()[signal.index()] += 1;
                let cap = self.config.window.max_sources.max(1);
                if t.sources.len() > cap {
                    // Down to half: the pruning's cost is spread over the
                    // next cap / 2 new networks.
                    t.prune_sources((cap / 2).max(1));
                }
            }
        }
        self.decide(origin, out);
    }

    fn decide(&mut self, origin: &Origin, out: &mut Vec<Decision>) {
        for fired in self.fired.drain(..) {
            let d = self.policy.decide(&fired, origin);
            match &d {
                Decision::Command(c) => {
                    match c.action {
                        Action::Quarantine => self.stats.commands_quarantine += 1,
                        Action::Block => self.stats.commands_block += 1,
                        Action::Notify => self.stats.commands_notify += 1,
                    }
                    if c.held {
                        self.stats.commands_held += 1;
                    }
                }
                Decision::Suppressed { .. } => self.stats.suppressed += 1,
            }
            out.push(d);
        }
    }
}

/// Lines whose id is kept for deduplication: evidence, the closes that can
/// carry evidence's address, accepted logins. (Ids are only promised unique
/// within a log stream: they are keyed by both.)
fn may_count(c: &classify::Classified<'_>) -> bool {
    c.signal().is_some()
        || matches!(
            c.kind,
            Kind::Accepted | Kind::ConnectionClosed | Kind::Disconnect
        )
}

fn kind_index(kind: Kind) -> usize {
    kind as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(engine: &mut Engine, t: i64, n: u32, out: &mut Vec<Decision>) {
        let text =
            format!("Nov 29 10:00:00 h sshd[{n}]: Invalid user u{n} from 203.0.113.9 port {n}");
        engine.process_line(
            &LineInput {
                instance: "i-0123456789abcdef0",
                instance_from_host: false,
                event_id: None,
                time_ms: Some(t),
                arrival_ms: None,
                position: u64::from(n),
                line: &text,
            },
            &Origin::default(),
            out,
        );
    }

    #[test]
    fn a_recycled_buffer_of_fronts_keeps_its_allocation() {
        let mut v = Vec::with_capacity(64);
        v.push(Front::Unparsed);
        v.extend(std::iter::repeat_n(Front::NotSshd, 9));
        let (ptr, cap) = (v.as_ptr() as usize, v.capacity());
        let r = recycle(v);
        assert!(r.is_empty());
        assert_eq!((r.as_ptr() as usize, r.capacity()), (ptr, cap));
    }

    /// An engine keeping whole-input totals within `window`'s caps.
    fn totals_engine(window: WindowConfig) -> Engine {
        Engine::new(EngineConfig {
            keep_totals: true,
            window,
            ..EngineConfig::default()
        })
        .unwrap()
    }

    /// Counts line `n`, `text`, of `instance` (its syslog host's with
    /// `from_host`), at `n` ms past a fixed time.
    fn count(engine: &mut Engine, instance: &str, from_host: bool, n: u32, text: &str) {
        engine.process_line(
            &LineInput {
                instance,
                instance_from_host: from_host,
                event_id: None,
                time_ms: Some(1_000_000 + i64::from(n)),
                arrival_ms: None,
                position: u64::from(n),
                line: text,
            },
            &Origin::default(),
            &mut Vec::new(),
        );
    }

    #[test]
    fn source_totals_stay_within_the_cap_and_keep_the_largest() {
        let mut engine = totals_engine(WindowConfig {
            max_sources: 100,
            ..WindowConfig::default()
        });
        let attacker = std::net::Ipv4Addr::new(203, 0, 113, 9);
        for i in 0..10_000u32 {
            // The attacker every tenth line, a new address on the others.
            let ip = if i % 10 == 0 {
                attacker
            } else {
                std::net::Ipv4Addr::from(0x0b00_0000 + i)
            };
            let text = format!("Nov 29 10:00:00 h sshd[{i}]: Invalid user u from {ip} port {i}");
            count(&mut engine, "i-0123456789abcdef0", false, i, &text);
        }
        let totals = engine.totals().unwrap();
        assert!(totals.sources.len() <= 100, "{}", totals.sources.len());
        let net = WindowConfig::default()
            .grouping
            .network(&crate::peer::Peer::Ip(attacker.into()));
        assert_eq!(totals.sources[&net].iter().sum::<u64>(), 1_000);
        let dropped = engine.stats().dropped_source_totals;
        assert_eq!(dropped, totals.dropped_sources);
        assert_eq!(dropped + totals.sources.len() as u64, 9_001);
    }

    #[test]
    fn instance_totals_stay_within_the_cap_and_keep_the_largest() {
        // A central log server takes host names from its senders: a flood
        // of made-up hosts must not grow the totals without bound.
        let mut engine = totals_engine(WindowConfig {
            max_instances: 100,
            ..WindowConfig::default()
        });
        for i in 0..10_000u32 {
            // The attacked host every tenth line, a new host on the others.
            let host = if i % 10 == 0 {
                "web-1".to_owned()
            } else {
                format!("h{i}")
            };
            let text = format!(
                "Nov 29 10:00:00 {host} sshd[{i}]: Invalid user u from 203.0.113.9 port {i}"
            );
            count(&mut engine, "central.log", true, i, &text);
        }
        let totals = engine.totals().unwrap();
        assert!(totals.instances.len() <= 100, "{}", totals.instances.len());
        assert_eq!(totals.instances["web-1"].iter().sum::<u64>(), 1_000);
        let dropped = engine.stats().dropped_instance_totals;
        assert_eq!(dropped, totals.dropped_instances);
        assert_eq!(dropped + totals.instances.len() as u64, 9_001);
    }

    #[test]
    fn top_sources_are_the_largest_totals_ties_in_network_order() {
        let net = |s: &str| crate::peer::PeerNet::Net(s.parse().unwrap());
        let mut totals = Totals::default();
        let counts = |n: u64| {
            let mut c = [0; Signal::COUNT];
            c[0] = n;
            c[1] = 1;
            c
        };
        // Text order would put .10 before .9 and 2001:db8:: before 203.
        for (cidr, n) in [
            ("198.51.100.10/32", 1),
            ("198.51.100.9/32", 1),
            ("2001:db8::/64", 4),
            ("203.0.113.7/32", 4),
            ("192.0.2.1/32", 9),
            ("192.0.2.2/32", 0),
        ] {
            totals.sources.insert(net(cidr), counts(n));
        }
        let names = |top| -> Vec<String> {
            totals
                .top_sources(top)
                .into_iter()
                .map(|(n, _)| n.to_string())
                .collect()
        };
        assert_eq!(
            names(5),
            [
                "192.0.2.1/32",
                "203.0.113.7/32",
                "2001:db8::/64",
                "198.51.100.9/32",
                "198.51.100.10/32"
            ]
        );
        assert_eq!(names(2), ["192.0.2.1/32", "203.0.113.7/32"]);
        assert_eq!(names(100).len(), 6);
        assert!(names(0).is_empty());
        assert_eq!(totals.top_sources(1)[0].1[0], 9);
    }

    #[test]
    fn a_resumed_engine_does_not_refire_windows_closed_before_the_checkpoint() {
        // The previous owner counted 5 events of window [0, 60 s) and fired;
        // its checkpoint was written when event time had reached 200 s.
        // Replaying two stragglers of that window must not fire it again.
        let mut out = Vec::new();
        let seed = || EngineConfig {
            policy: PolicyConfig::named(crate::rules::PolicyName::Seed),
            ..EngineConfig::default()
        };
        let mut fresh = Engine::new(seed()).unwrap();
        let mut resumed = Engine::new(seed()).unwrap();
        resumed.resume_from(200_000);
        for n in 0..5 {
            line(&mut fresh, 50_000 + i64::from(n), n, &mut out);
        }
        assert_eq!(out.len(), 1, "a fresh engine fires on the replayed tail");
        out.clear();
        for n in 0..5 {
            line(&mut resumed, 50_000 + i64::from(n), n, &mut out);
        }
        assert!(out.is_empty(), "{out:?}");
        assert_eq!(resumed.stats().windows.late_events, 5);
        assert_eq!(resumed.event_time(), Some(200_000));
    }
}
