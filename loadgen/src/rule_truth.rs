//! The engine's rule-level check: what a correct implementation of a
//! policy's per-instance window rules must report for a set of generated
//! events, and how to score what the engine did report. It checks the engine
//! against its own rules (the `seed` policy's semantics), not whether attacks
//! were caught: that is [`crate::incident`] and [`crate::incident_score`].
//!
//! The truth is computed from the events themselves: each event carries the
//! signal it counts for against its instance (see [`crate::sshd`]), and the
//! events are counted in epoch-aligned tumbling windows per instance, exactly
//! as `sshwarden_pipeline::window` counts them when no event is late or
//! duplicated. A rule is expected to fire for an (instance, window) when the
//! sum of its signals there reaches its threshold. Only instance rules are
//! covered; per-source rules need the connection context and are not.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use sshwarden_pipeline::classify::Signal;
use sshwarden_pipeline::policy::PolicyConfig;
use sshwarden_pipeline::rules::Condition;
use sshwarden_pipeline::window::{SubjectKind, WindowConfig};

use crate::event::GeneratedEvent;

/// One instance rule as the truth computation sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TruthRule {
    pub name: String,
    pub signals: Vec<Signal>,
    pub threshold: u32,
}

/// The window size and the instance rules to compute the truth for.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TruthRules {
    pub window_ms: i64,
    pub rules: Vec<TruthRule>,
}

impl Default for TruthRules {
    /// sshwarden's defaults: invalid-user, invalid-key and disconnect, 5 per
    /// 60 s per instance.
    fn default() -> Self {
        TruthRules::from_policy(
            &PolicyConfig::named(sshwarden_pipeline::rules::PolicyName::Seed),
            &WindowConfig::default(),
        )
    }
}

impl TruthRules {
    /// The instance count rules of a policy in the default window (the seed
    /// policy's; source, distinct and long-window rules are skipped).
    pub fn from_policy(policy: &PolicyConfig, window: &WindowConfig) -> Self {
        TruthRules {
            window_ms: window.size_ms.max(1),
            rules: policy
                .rules
                .iter()
                .filter(|r| r.subject == SubjectKind::Instance && r.window_ms.is_none())
                .filter_map(|r| match &r.condition {
                    Condition::Count { signals, at_least } => Some(TruthRule {
                        name: r.name.clone(),
                        signals: signals.clone(),
                        threshold: *at_least,
                    }),
                    _ => None,
                })
                .collect(),
        }
    }
}

/// The identity of a detection: a rule fired for an instance in a window.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct DetectionKey {
    pub instance: String,
    pub rule: String,
    pub window_start_ms: i64,
}

/// A rule that must fire.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExpectedDetection {
    pub instance: String,
    pub rule: String,
    pub window_start_ms: i64,
    /// Events of the rule's signals in the window, in all.
    pub count: u32,
    /// Event time of the event that reaches the threshold (in time order):
    /// the earliest a detector can fire.
    pub crossing_time_ms: i64,
    /// Id of that event: a writer reports when it wrote it, so a scorer can
    /// measure write-to-command latency.
    pub crossing_event_id: String,
    /// Scenarios that contributed events to the window (sorted); empty when
    /// only background scanning did.
    pub scenarios: Vec<usize>,
}

impl ExpectedDetection {
    pub fn key(&self) -> DetectionKey {
        DetectionKey {
            instance: self.instance.clone(),
            rule: self.rule.clone(),
            window_start_ms: self.window_start_ms,
        }
    }
}

/// Signal counts of one instance window (only windows with evidence).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowCount {
    pub instance: String,
    pub window_start_ms: i64,
    /// Indexed by `Signal::index()`.
    pub counts: [u32; Signal::COUNT],
    /// Scenarios that contributed evidence to the window (sorted).
    pub scenarios: Vec<usize>,
}

/// A successful login by an attacker.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Compromise {
    pub instance: String,
    pub source: IpAddr,
    pub user: String,
    pub time_ms: i64,
    pub scenario: usize,
}

/// What a correct detector must report for a set of events.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroundTruth {
    pub window_ms: i64,
    /// Scenario names, indexed like `ExpectedDetection::scenarios` (the
    /// generator fills them in).
    #[serde(default)]
    pub scenario_names: Vec<String>,
    /// Sorted by (window start, instance, rule).
    pub expected: Vec<ExpectedDetection>,
    /// Sorted by (instance, window start).
    pub instance_windows: Vec<WindowCount>,
    /// Addresses planted inside attacker-controlled text: nothing may ever
    /// be counted against them.
    pub decoy_addresses: Vec<IpAddr>,
    pub compromises: Vec<Compromise>,
    pub events: usize,
    /// Events that carry a signal.
    pub evidence_events: usize,
}

/// How a detector's output compares with the truth.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Score {
    pub expected: usize,
    pub detected: usize,
    pub true_positives: usize,
    pub false_positives: Vec<DetectionKey>,
    pub missed: Vec<DetectionKey>,
    /// 1.0 when nothing was detected.
    pub precision: f64,
    /// 1.0 when nothing was expected.
    pub recall: f64,
}

/// (event time, scenario, index into the events) of each signal event.
type Hits = Vec<(i64, Option<usize>, usize)>;

impl GroundTruth {
    /// Counts `events` per instance window and signal and applies `rules`.
    /// Decoys and compromises are left empty (the generator fills them in).
    pub fn compute(events: &[GeneratedEvent], rules: &TruthRules) -> GroundTruth {
        let size = rules.window_ms.max(1);
        let mut windows: BTreeMap<(&str, i64), [Hits; Signal::COUNT]> = BTreeMap::new();
        let mut evidence = 0;
        for (index, e) in events.iter().enumerate() {
            let Some(signal) = e.signal else {
                continue;
            };
            evidence += 1;
            let start = e.time_ms.div_euclid(size) * size;
            windows.entry((&e.instance, start)).or_default()[signal.index()]
                .push((e.time_ms, e.scenario, index));
        }
        let mut expected = Vec::new();
        let mut instance_windows = Vec::with_capacity(windows.len());
        for ((instance, start), hits) in &windows {
            instance_windows.push(WindowCount {
                instance: (*instance).to_owned(),
                window_start_ms: *start,
                counts: std::array::from_fn(|i| hits[i].len() as u32),
                scenarios: hits
                    .iter()
                    .flatten()
                    .filter_map(|h| h.1)
                    .collect::<BTreeSet<usize>>()
                    .into_iter()
                    .collect(),
            });
            for rule in &rules.rules {
                let mut all: Hits = rule
                    .signals
                    .iter()
                    .flat_map(|s| hits[s.index()].iter().copied())
                    .collect();
                let threshold = rule.threshold.max(1) as usize;
                if all.len() < threshold {
                    continue;
                }
                all.sort_by_key(|h| (h.0, h.2));
                let scenarios: BTreeSet<usize> = all.iter().filter_map(|h| h.1).collect();
                expected.push(ExpectedDetection {
                    instance: (*instance).to_owned(),
                    rule: rule.name.clone(),
                    window_start_ms: *start,
                    count: all.len() as u32,
                    crossing_time_ms: all[threshold - 1].0,
                    crossing_event_id: events[all[threshold - 1].2].id.clone(),
                    scenarios: scenarios.into_iter().collect(),
                });
            }
        }
        expected.sort_by(|a, b| {
            (a.window_start_ms, &a.instance, &a.rule).cmp(&(
                b.window_start_ms,
                &b.instance,
                &b.rule,
            ))
        });
        GroundTruth {
            window_ms: size,
            scenario_names: Vec::new(),
            expected,
            instance_windows,
            decoy_addresses: Vec::new(),
            compromises: Vec::new(),
            events: events.len(),
            evidence_events: evidence,
        }
    }

    pub fn expected_keys(&self) -> BTreeSet<DetectionKey> {
        self.expected.iter().map(ExpectedDetection::key).collect()
    }

    /// Expected detections a scenario contributed to.
    pub fn expected_for_scenario(&self, scenario: usize) -> Vec<&ExpectedDetection> {
        self.expected
            .iter()
            .filter(|e| e.scenarios.contains(&scenario))
            .collect()
    }

    /// Compares detections (duplicates are counted once) with the truth.
    pub fn score(&self, detected: impl IntoIterator<Item = DetectionKey>) -> Score {
        let detected: BTreeSet<DetectionKey> = detected.into_iter().collect();
        let expected = self.expected_keys();
        let true_positives = detected.intersection(&expected).count();
        Score {
            expected: expected.len(),
            detected: detected.len(),
            true_positives,
            false_positives: detected.difference(&expected).cloned().collect(),
            missed: expected.difference(&detected).cloned().collect(),
            precision: ratio(true_positives, detected.len()),
            recall: ratio(true_positives, expected.len()),
        }
    }
}

/// `n / d` as a precision or recall: 1.0 when there is nothing to divide by
/// (nothing detected, or nothing expected).
pub(crate) fn ratio(n: usize, d: usize) -> f64 {
    if d == 0 {
        1.0
    } else {
        n as f64 / d as f64
    }
}
