//! Event-time tumbling windows keyed by (instance, signal) and (source, signal).
//!
//! Windows are aligned to the epoch and all have the configured size, so all
//! windows starting at the same time close together when the shard's
//! watermark (the largest event time seen minus the allowed lateness) passes
//! their end. A rule fires *early*, the moment its threshold is crossed,
//! once per window. Live keys are capped per subject kind; past the cap the
//! oldest key is evicted and counted, so a botnet of a million addresses
//! cannot exhaust memory. Each window bucket remembers the smallest source
//! position (e.g. record ordinal) that counted in it, which is what a
//! checkpoint may not pass while the window is open (docs/design.md, the checkpoint rule).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::hash::Hash;

use serde::Serialize;

use crate::classify::Signal;
use crate::peer::Peer;

type FastMap<K, V> = HashMap<K, V, foldhash::fast::RandomState>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowConfig {
    pub size_ms: i64,
    pub allowed_lateness_ms: i64,
    pub max_instances: usize,
    pub max_sources: usize,
    /// Distinct sources remembered per instance window for the command's top list.
    pub max_tracked_sources: usize,
    /// Lines kept per instance window as samples for the command.
    pub sample_lines: usize,
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig {
            size_ms: 60_000,
            allowed_lateness_ms: 60_000,
            max_instances: 100_000,
            max_sources: 250_000,
            max_tracked_sources: 16,
            sample_lines: 3,
        }
    }
}

/// Which kind of key a rule counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    Instance,
    Source,
}

/// A threshold on the sum of some signals in one window of one subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Threshold {
    pub subject: SubjectKind,
    pub signals: Vec<Signal>,
    pub count: u32,
}

/// A window's counts and what the command will want to show of it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    pub start_ms: i64,
    pub counts: [u32; Signal::COUNT],
    /// Bit i set: threshold i has fired in this window.
    fired: u64,
    /// Sources seen (instance windows only), at most `max_tracked_sources`.
    pub sources: Vec<(Peer, u32)>,
    /// Attributed events from sources past that limit.
    pub other_source_events: u32,
    pub samples: Vec<String>,
}

impl Window {
    fn new(start_ms: i64) -> Self {
        Window {
            start_ms,
            counts: [0; Signal::COUNT],
            fired: 0,
            sources: Vec::new(),
            other_source_events: 0,
            samples: Vec::new(),
        }
    }

    pub fn total(&self, signals: &[Signal]) -> u32 {
        signals.iter().map(|s| self.counts[s.index()]).sum()
    }

    /// Sources by descending count (ties by address), at most `n`.
    pub fn top_sources(&self, n: usize) -> Vec<(Peer, u32)> {
        let mut v = self.sources.clone();
        v.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        v.truncate(n);
        v
    }
}

/// A threshold crossed: what the policy decides on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fired {
    pub threshold: usize,
    pub subject: Subject,
    pub window: Window,
    pub window_end_ms: i64,
    /// Event time of the event that crossed the threshold.
    pub detected_at_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Subject {
    Instance(Box<str>),
    Source(Peer),
}

impl Subject {
    pub fn kind(&self) -> SubjectKind {
        match self {
            Subject::Instance(_) => SubjectKind::Instance,
            Subject::Source(_) => SubjectKind::Source,
        }
    }
}

/// One signal-bearing event to count.
#[derive(Debug, Clone, Copy)]
pub struct Observation<'a> {
    pub instance: &'a str,
    pub source: Option<&'a Peer>,
    pub signal: Signal,
    pub counts_for_instance: bool,
    pub time_ms: i64,
    pub position: u64,
    pub line: &'a str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    Counted,
    /// Its window had already closed.
    Late,
    /// The same event id was counted before.
    Duplicate,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct WindowStats {
    pub late_events: u64,
    pub duplicate_events: u64,
    pub evicted_instances: u64,
    pub evicted_sources: u64,
    pub windows_closed: u64,
}

/// Per-bucket (all windows with one start) bookkeeping.
#[derive(Debug, Default)]
struct Bucket {
    min_position: Option<u64>,
    seen_ids: std::collections::HashSet<u128, foldhash::fast::RandomState>,
}

/// Keys of one subject kind with their live windows, capped.
struct Keyed<K> {
    map: FastMap<K, Vec<Window>>,
    order: VecDeque<K>,
    cap: usize,
    evictions: u64,
}

impl<K: Hash + Eq + Clone> Keyed<K> {
    fn new(cap: usize) -> Self {
        Keyed {
            map: FastMap::default(),
            order: VecDeque::new(),
            cap: cap.max(1),
            evictions: 0,
        }
    }

    fn window_mut<Q>(
        &mut self,
        key: &Q,
        start_ms: i64,
        to_owned: impl FnOnce(&Q) -> K,
    ) -> &mut Window
    where
        K: std::borrow::Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        if !self.map.contains_key(key) {
            while self.map.len() >= self.cap {
                let Some(old) = self.order.pop_front() else {
                    break;
                };
                if self.map.remove::<K>(&old).is_some() {
                    self.evictions += 1;
                }
            }
            let owned = to_owned(key);
            self.order.push_back(owned.clone());
            self.map.insert(owned, Vec::with_capacity(1));
        }
        let windows = self.map.get_mut(key).expect("inserted above");
        let i = match windows.iter().position(|w| w.start_ms == start_ms) {
            Some(i) => i,
            None => {
                windows.push(Window::new(start_ms));
                windows.len() - 1
            }
        };
        &mut windows[i]
    }

    /// Drops windows that end at or before `watermark`; returns how many.
    fn close(&mut self, size_ms: i64, watermark: i64) -> u64 {
        let mut closed = 0;
        self.map.retain(|_, ws| {
            let before = ws.len();
            ws.retain(|w| w.start_ms + size_ms > watermark);
            closed += (before - ws.len()) as u64;
            !ws.is_empty()
        });
        let map = &self.map;
        self.order.retain(|k| map.contains_key(k));
        closed
    }

    fn windows(&self) -> impl Iterator<Item = (&K, &Window)> {
        self.map
            .iter()
            .flat_map(|(k, ws)| ws.iter().map(move |w| (k, w)))
    }
}

/// All live windows of one shard.
pub struct WindowStore {
    config: WindowConfig,
    thresholds: Vec<Threshold>,
    instances: Keyed<Box<str>>,
    sources: Keyed<Peer>,
    buckets: BTreeMap<i64, Bucket>,
    max_event_ms: Option<i64>,
    stats: WindowStats,
}

impl WindowStore {
    pub fn new(config: WindowConfig, thresholds: Vec<Threshold>) -> Self {
        WindowStore {
            instances: Keyed::new(config.max_instances),
            sources: Keyed::new(config.max_sources),
            config,
            thresholds,
            buckets: BTreeMap::new(),
            max_event_ms: None,
            stats: WindowStats::default(),
        }
    }

    pub fn config(&self) -> &WindowConfig {
        &self.config
    }

    pub fn stats(&self) -> WindowStats {
        WindowStats {
            evicted_instances: self.instances.evictions,
            evicted_sources: self.sources.evictions,
            ..self.stats
        }
    }

    /// Largest event time seen minus the allowed lateness.
    pub fn watermark(&self) -> Option<i64> {
        self.max_event_ms
            .map(|t| t - self.config.allowed_lateness_ms)
    }

    /// The largest event time seen (what the watermark follows).
    pub fn max_event_time(&self) -> Option<i64> {
        self.max_event_ms
    }

    pub fn window_start(&self, time_ms: i64) -> i64 {
        time_ms.div_euclid(self.config.size_ms) * self.config.size_ms
    }

    /// The smallest position counted in a window that is still open: a
    /// checkpoint must stay before it. `None` when no window is open.
    pub fn low_water_position(&self) -> Option<u64> {
        self.buckets.values().filter_map(|b| b.min_position).min()
    }

    pub fn live_keys(&self) -> (usize, usize) {
        (self.instances.map.len(), self.sources.map.len())
    }

    /// Moves the watermark with an event time (also for events that count
    /// nothing) and closes the windows it passes.
    pub fn advance(&mut self, time_ms: i64) {
        if self.max_event_ms.is_none_or(|m| time_ms > m) {
            self.max_event_ms = Some(time_ms);
            self.close_passed();
        }
    }

    fn close_passed(&mut self) {
        let Some(watermark) = self.watermark() else {
            return;
        };
        let size = self.config.size_ms;
        let Some((&oldest, _)) = self.buckets.first_key_value() else {
            return;
        };
        if oldest + size > watermark {
            return;
        }
        self.buckets.retain(|&start, _| start + size > watermark);
        self.stats.windows_closed += self.instances.close(size, watermark);
        self.stats.windows_closed += self.sources.close(size, watermark);
    }

    /// Closes every window (end of input for offline scans).
    pub fn close_all(&mut self) {
        self.buckets.clear();
        self.stats.windows_closed += self.instances.close(0, i64::MAX);
        self.stats.windows_closed += self.sources.close(0, i64::MAX);
    }

    /// Counts one observation, appending any thresholds it crosses to `fired`.
    /// `event_id` (a hash of the log event id) drops redeliveries.
    pub fn observe(
        &mut self,
        o: &Observation<'_>,
        event_id: Option<u128>,
        fired: &mut Vec<Fired>,
    ) -> Admit {
        self.advance(o.time_ms);
        let start = self.window_start(o.time_ms);
        let end = start + self.config.size_ms;
        if self.watermark().is_some_and(|w| end <= w) {
            self.stats.late_events += 1;
            return Admit::Late;
        }
        let bucket = self.buckets.entry(start).or_default();
        if let Some(id) = event_id {
            if !bucket.seen_ids.insert(id) {
                self.stats.duplicate_events += 1;
                return Admit::Duplicate;
            }
        }
        bucket.min_position = Some(
            bucket
                .min_position
                .map_or(o.position, |p| p.min(o.position)),
        );

        let signal = o.signal.index();
        if o.counts_for_instance {
            let max_tracked = self.config.max_tracked_sources;
            let max_samples = self.config.sample_lines;
            let w = self.instances.window_mut(o.instance, start, |s| s.into());
            w.counts[signal] += 1;
            if let Some(src) = o.source {
                match w.sources.iter().position(|(s, _)| s == src) {
                    Some(i) => w.sources[i].1 += 1,
                    None if w.sources.len() < max_tracked => w.sources.push((src.clone(), 1)),
                    None => w.other_source_events += 1,
                }
            }
            if w.samples.len() < max_samples {
                w.samples.push(truncate(o.line, 512).to_owned());
            }
            let w = w.clone_if_fires(&self.thresholds, SubjectKind::Instance);
            push_fired(
                fired,
                w,
                || Subject::Instance(o.instance.into()),
                end,
                o.time_ms,
            );
        }
        if let Some(src) = o.source {
            let w = self.sources.window_mut(src, start, Peer::clone);
            w.counts[signal] += 1;
            let w = w.clone_if_fires(&self.thresholds, SubjectKind::Source);
            push_fired(fired, w, || Subject::Source(src.clone()), end, o.time_ms);
        }
        Admit::Counted
    }

    /// Every open instance window, for reports.
    pub fn instance_windows(&self) -> impl Iterator<Item = (&str, &Window)> {
        self.instances.windows().map(|(k, w)| (&**k, w))
    }

    pub fn source_windows(&self) -> impl Iterator<Item = (&Peer, &Window)> {
        self.sources.windows()
    }
}

impl Window {
    /// Marks and returns (as a copy, with the threshold index) each threshold
    /// of `kind` this window has just crossed.
    fn clone_if_fires(
        &mut self,
        thresholds: &[Threshold],
        kind: SubjectKind,
    ) -> Vec<(usize, Window)> {
        let mut out = Vec::new();
        for (i, t) in thresholds.iter().enumerate() {
            if t.subject != kind || i >= 64 || self.fired & (1 << i) != 0 {
                continue;
            }
            if self.total(&t.signals) >= t.count {
                self.fired |= 1 << i;
                out.push((i, self.clone()));
            }
        }
        out
    }
}

/// `subject` is only called when something fired: most observations cross
/// nothing, and building an instance subject allocates.
fn push_fired(
    fired: &mut Vec<Fired>,
    crossed: Vec<(usize, Window)>,
    subject: impl FnOnce() -> Subject,
    end: i64,
    at: i64,
) {
    if crossed.is_empty() {
        return;
    }
    let subject = subject();
    for (threshold, window) in crossed {
        fired.push(Fired {
            threshold,
            subject: subject.clone(),
            window,
            window_end_ms: end,
            detected_at_ms: at,
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

    fn store(threshold: u32) -> WindowStore {
        WindowStore::new(
            WindowConfig {
                size_ms: 60_000,
                allowed_lateness_ms: 10_000,
                max_instances: 3,
                max_sources: 3,
                ..WindowConfig::default()
            },
            vec![
                Threshold {
                    subject: SubjectKind::Instance,
                    signals: vec![Signal::InvalidUser],
                    count: threshold,
                },
                Threshold {
                    subject: SubjectKind::Source,
                    signals: vec![Signal::InvalidUser, Signal::AuthFailure],
                    count: threshold,
                },
            ],
        )
    }

    fn obs<'a>(instance: &'a str, src: Option<&'a Peer>, t: i64, pos: u64) -> Observation<'a> {
        Observation {
            instance,
            source: src,
            signal: Signal::InvalidUser,
            counts_for_instance: true,
            time_ms: t,
            position: pos,
            line: "l",
        }
    }

    #[test]
    fn fires_early_once_per_window() {
        let mut s = store(3);
        let ip = Peer::parse("1.2.3.4").unwrap();
        let mut fired = Vec::new();
        for i in 0..5 {
            s.observe(
                &obs("i-1", Some(&ip), 1_000 + i, i as u64),
                None,
                &mut fired,
            );
            if i == 1 {
                assert!(fired.is_empty());
            }
        }
        assert_eq!(
            fired.len(),
            2,
            "one instance and one source firing: {fired:?}"
        );
        assert_eq!(fired[0].window.counts[Signal::InvalidUser.index()], 3);
        assert_eq!(fired[0].detected_at_ms, 1_002);
        assert_eq!(fired[0].window.top_sources(5), vec![(ip.clone(), 3)]);
        // next window fires again
        fired.clear();
        for i in 0..3 {
            s.observe(&obs("i-1", None, 61_000 + i, 10), None, &mut fired);
        }
        assert_eq!(fired.len(), 1);
        assert_eq!(fired[0].window.start_ms, 60_000);
    }

    #[test]
    fn watermark_closes_and_drops_late() {
        let mut s = store(100);
        let mut f = Vec::new();
        assert_eq!(
            s.observe(&obs("i-1", None, 59_000, 1), None, &mut f),
            Admit::Counted
        );
        assert_eq!(s.low_water_position(), Some(1));
        // 65 s: watermark 55 s, the [0,60) window stays open for lateness
        assert_eq!(
            s.observe(&obs("i-1", None, 65_000, 2), None, &mut f),
            Admit::Counted
        );
        assert_eq!(
            s.observe(&obs("i-1", None, 1_000, 3), None, &mut f),
            Admit::Counted
        );
        assert_eq!(s.low_water_position(), Some(1));
        // 70 s: watermark 60 s closes [0,60)
        s.advance(70_000);
        assert_eq!(s.low_water_position(), Some(2));
        assert_eq!(
            s.observe(&obs("i-1", None, 2_000, 4), None, &mut f),
            Admit::Late
        );
        assert_eq!(s.stats().late_events, 1);
        assert_eq!(s.stats().windows_closed, 1);
        s.close_all();
        assert_eq!(s.low_water_position(), None);
        assert_eq!(s.live_keys(), (0, 0));
    }

    #[test]
    fn duplicates_dropped_by_id() {
        let mut s = store(2);
        let mut f = Vec::new();
        assert_eq!(
            s.observe(&obs("i-1", None, 1, 1), Some(7), &mut f),
            Admit::Counted
        );
        assert_eq!(
            s.observe(&obs("i-1", None, 1, 1), Some(7), &mut f),
            Admit::Duplicate
        );
        assert!(f.is_empty());
        assert_eq!(
            s.observe(&obs("i-1", None, 1, 1), Some(8), &mut f),
            Admit::Counted
        );
        assert_eq!(f.len(), 1);
    }

    proptest::proptest! {
        /// Against a naive model that replays the same arrivals: an event is
        /// late exactly when its window ended at or before the watermark at
        /// arrival; every other event is counted once; a (key, window) fires
        /// exactly once when its count reaches the threshold.
        #[test]
        fn matches_a_naive_model(
            events in proptest::collection::vec((0u8..4, 0i64..400_000, proptest::option::of(0u8..50)), 1..300),
            lateness in 0i64..120_000,
            threshold in 1u32..6,
        ) {
            let size = 60_000;
            let mut s = WindowStore::new(
                WindowConfig { size_ms: size, allowed_lateness_ms: lateness, ..WindowConfig::default() },
                vec![Threshold { subject: SubjectKind::Instance, signals: vec![Signal::InvalidUser], count: threshold }],
            );
            let mut max_t: Option<i64> = None;
            let mut counts: std::collections::HashMap<(u8, i64), u32> = Default::default();
            let mut seen_ids = std::collections::HashSet::new();
            let mut expected_fired = 0;
            let mut expected_late = 0;
            let mut fired = Vec::new();
            for (pos, (inst, t, id)) in events.iter().enumerate() {
                max_t = Some(max_t.map_or(*t, |m| m.max(*t)));
                let watermark = max_t.unwrap_or(0) - lateness;
                let start = t.div_euclid(size) * size;
                let name = format!("i-{inst}");
                let admit = s.observe(&obs(&name, None, *t, pos as u64), id.map(|i| u128::from(i) << 70 | start as u128), &mut fired);
                let model = if start + size <= watermark {
                    expected_late += 1;
                    Admit::Late
                } else if id.is_some() && !seen_ids.insert((id.unwrap_or(0), start)) {
                    Admit::Duplicate
                } else {
                    let c = counts.entry((*inst, start)).or_default();
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
            for f in &fired {
                proptest::prop_assert_eq!(f.window.counts[Signal::InvalidUser.index()], threshold);
            }
        }
    }

    #[test]
    fn keys_capped_with_eviction_counter() {
        let mut s = store(100);
        let mut f = Vec::new();
        let ips: Vec<Peer> = (0..10)
            .map(|i| Peer::parse(&format!("10.0.0.{i}")).unwrap())
            .collect();
        for (i, ip) in ips.iter().enumerate() {
            s.observe(&obs(&format!("i-{i}"), Some(ip), 1, 1), None, &mut f);
        }
        assert_eq!(s.live_keys(), (3, 3));
        assert_eq!(s.stats().evicted_instances, 7);
        assert_eq!(s.stats().evicted_sources, 7);
    }
}
