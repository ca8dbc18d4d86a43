//! Scoring a detector's commands against the ground truth, with end-to-end
//! detection latency.
//!
//! The input is what `sshwarden run --sink stdout` prints: one command JSON
//! per line (`id`, `subject_kind`, `instance_id`, `rule`, `window_start_ms`,
//! `detected_at`, ...). A command carries the event time of the event that
//! made its rule fire (`detected_at`) but not when it was emitted, so the
//! reader stamps each line with the wall-clock time it read it: that is when
//! the command reached the sink, give or take the pipe. Two latencies come
//! out, per expected detection that was found (its first command counts):
//!
//! - event → command: from the truth's crossing event time (the event that
//!   reached the threshold) to the stamp. Meaningful when events were written
//!   live (event time = wall time, as `--live` does); it includes the log
//!   agent's batching.
//! - write → command: from when a writer put the record holding the crossing
//!   event (its written log, [`WrittenLog`]) to the stamp: the pipeline alone.
//!
//! Only instance rules are scored (the truth covers only those); commands
//! about source addresses are counted and reported apart.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

use crate::rule_truth::{ratio, DetectionKey, GroundTruth, Score};

/// The fields of a command line the scorer reads.
#[derive(Debug, Deserialize)]
struct CommandLine {
    subject_kind: String,
    #[serde(default)]
    instance_id: Option<String>,
    rule: String,
    window_start_ms: i64,
}

/// What one line of detector output was.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LineKind {
    /// An instance command, the first for its detection.
    New,
    /// An instance command for a detection seen before (a replay).
    Duplicate,
    /// A command about a source address (not scored).
    Source,
    /// Not a command (blank, not JSON, missing fields): counted.
    Unparsed,
}

/// Commands read so far, each stamped with when it was read.
#[derive(Debug, Default)]
pub struct CommandScorer {
    /// Detection → wall-clock microseconds its first command was read.
    first_seen_us: BTreeMap<DetectionKey, i64>,
    commands: usize,
    duplicates: usize,
    source_commands: usize,
    unparsed: usize,
}

/// When writers put the crossing events (event id → wall-clock
/// microseconds the successful put was sent), from the written log: one
/// JSON object per line, `{"event_id": "...", "written_us": 1700000000000000}`.
#[derive(Debug, Default, Clone)]
pub struct WrittenLog(pub HashMap<String, i64>);

/// One line of the written log.
#[derive(Debug, Serialize, Deserialize)]
pub struct WrittenMark {
    pub event_id: String,
    pub written_us: i64,
}

impl WrittenLog {
    /// Reads the lines; unreadable lines are counted in the second value.
    pub fn parse(text: &str) -> (WrittenLog, usize) {
        let mut map = HashMap::new();
        let mut bad = 0;
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            match serde_json::from_str::<WrittenMark>(line) {
                Ok(m) => {
                    // Retried writes may log twice: the first success counts.
                    map.entry(m.event_id).or_insert(m.written_us);
                }
                Err(_) => bad += 1,
            }
        }
        (WrittenLog(map), bad)
    }
}

/// A latency distribution in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LatencySummary {
    pub samples: u64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    /// Samples where the command was read before the reference time (clock
    /// or ordering problem), left out of the figures.
    pub negative: u64,
}

/// Accuracy for one scenario (or `background`: windows with scanning only).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScenarioScore {
    pub name: String,
    pub expected: usize,
    pub true_positives: usize,
    /// Detections that are not expected, in windows the scenario touched.
    pub false_positives: usize,
    pub precision: f64,
    pub recall: f64,
}

/// The scorer's result.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DetectionReport {
    pub commands: usize,
    pub duplicate_commands: usize,
    pub source_commands: usize,
    pub unparsed_lines: usize,
    pub score: Score,
    pub per_scenario: Vec<ScenarioScore>,
    /// Crossing event time → command read.
    pub event_to_command: Option<LatencySummary>,
    /// Crossing event written → command read (needs a written log).
    pub write_to_command: Option<LatencySummary>,
    /// Detections found whose crossing event is not in the written log.
    pub write_times_missing: usize,
}

const MAX_LATENCY_US: u64 = 24 * 3600 * 1_000_000;

struct LatencyRecorder {
    hist: Histogram<u64>,
    negative: u64,
}

impl LatencyRecorder {
    fn new() -> Self {
        LatencyRecorder {
            // Bounds and precision are constants: construction cannot fail.
            hist: Histogram::new_with_bounds(1, MAX_LATENCY_US, 3).expect("valid histogram bounds"),
            negative: 0,
        }
    }

    fn record(&mut self, us: i64) {
        if us < 0 {
            self.negative += 1;
        } else {
            self.hist
                .saturating_record((us as u64).clamp(1, MAX_LATENCY_US));
        }
    }

    fn summary(&self) -> Option<LatencySummary> {
        if self.hist.is_empty() && self.negative == 0 {
            return None;
        }
        let ms = |us: u64| us as f64 / 1000.0;
        Some(LatencySummary {
            samples: self.hist.len(),
            p50_ms: ms(self.hist.value_at_quantile(0.5)),
            p99_ms: ms(self.hist.value_at_quantile(0.99)),
            p999_ms: ms(self.hist.value_at_quantile(0.999)),
            min_ms: ms(self.hist.min()),
            max_ms: ms(self.hist.max()),
            negative: self.negative,
        })
    }
}

impl CommandScorer {
    pub fn new() -> Self {
        CommandScorer::default()
    }

    /// One line of detector output, read at `read_us` (wall clock, epoch µs).
    pub fn observe_line(&mut self, line: &str, read_us: i64) -> LineKind {
        let line = line.trim();
        let Ok(c) = serde_json::from_str::<CommandLine>(line) else {
            self.unparsed += 1;
            return LineKind::Unparsed;
        };
        self.commands += 1;
        let instance = match (c.subject_kind.as_str(), c.instance_id) {
            ("instance", Some(i)) => i,
            _ => {
                self.source_commands += 1;
                return LineKind::Source;
            }
        };
        let key = DetectionKey {
            instance,
            rule: c.rule,
            window_start_ms: c.window_start_ms,
        };
        if self.first_seen_us.contains_key(&key) {
            self.duplicates += 1;
            return LineKind::Duplicate;
        }
        self.first_seen_us.insert(key, read_us);
        LineKind::New
    }

    /// Every expected detection has been seen.
    pub fn complete(&self, truth: &GroundTruth) -> bool {
        truth
            .expected
            .iter()
            .all(|e| self.first_seen_us.contains_key(&e.key()))
    }

    pub fn detections(&self) -> impl Iterator<Item = &DetectionKey> {
        self.first_seen_us.keys()
    }

    /// Scores what was read against `truth`; `written` gives write times.
    pub fn report(&self, truth: &GroundTruth, written: Option<&WrittenLog>) -> DetectionReport {
        let score = truth.score(self.first_seen_us.keys().cloned());
        let mut event_lat = LatencyRecorder::new();
        let mut write_lat = LatencyRecorder::new();
        let mut write_times_missing = 0;
        for e in &truth.expected {
            let Some(&read_us) = self.first_seen_us.get(&e.key()) else {
                continue;
            };
            event_lat.record(read_us - e.crossing_time_ms * 1000);
            if let Some(w) = written {
                match w.0.get(&e.crossing_event_id) {
                    Some(&written_us) => write_lat.record(read_us - written_us),
                    None => write_times_missing += 1,
                }
            }
        }
        DetectionReport {
            commands: self.commands,
            duplicate_commands: self.duplicates,
            source_commands: self.source_commands,
            unparsed_lines: self.unparsed,
            per_scenario: per_scenario(truth, &score),
            score,
            event_to_command: event_lat.summary(),
            write_to_command: if written.is_some() {
                write_lat.summary()
            } else {
                None
            },
            write_times_missing,
        }
    }
}

/// Recall per scenario from the expected detections it contributed to;
/// precision from those found and the false positives in windows it touched.
/// Windows only background scanning touched are the `background` row.
/// Names come from `truth.scenario_names`.
pub fn per_scenario(truth: &GroundTruth, score: &Score) -> Vec<ScenarioScore> {
    const BACKGROUND: usize = usize::MAX;
    let missed: std::collections::BTreeSet<&DetectionKey> = score.missed.iter().collect();
    // (expected, true positives, false positives) per scenario.
    let mut rows: BTreeMap<usize, (usize, usize, usize)> = BTreeMap::new();
    for i in 0..truth.scenario_names.len() {
        rows.insert(i, (0, 0, 0));
    }
    for e in &truth.expected {
        let found = !missed.contains(&e.key());
        let scenarios: Vec<usize> = if e.scenarios.is_empty() {
            vec![BACKGROUND]
        } else {
            e.scenarios.clone()
        };
        for s in scenarios {
            let row = rows.entry(s).or_default();
            row.0 += 1;
            row.1 += usize::from(found);
        }
    }
    let windows: HashMap<(&str, i64), &Vec<usize>> = truth
        .instance_windows
        .iter()
        .map(|w| ((w.instance.as_str(), w.window_start_ms), &w.scenarios))
        .collect();
    for fp in &score.false_positives {
        let scenarios = windows
            .get(&(fp.instance.as_str(), fp.window_start_ms))
            .filter(|s| !s.is_empty())
            .map_or_else(|| vec![BACKGROUND], |s| (*s).clone());
        for s in scenarios {
            rows.entry(s).or_default().2 += 1;
        }
    }
    rows.into_iter()
        .map(|(s, (expected, tp, fp))| ScenarioScore {
            name: if s == BACKGROUND {
                "background".to_owned()
            } else {
                truth
                    .scenario_names
                    .get(s)
                    .cloned()
                    .unwrap_or_else(|| format!("{s}"))
            },
            expected,
            true_positives: tp,
            false_positives: fp,
            precision: ratio(tp, tp + fp),
            recall: ratio(tp, expected),
        })
        .collect()
}

impl DetectionReport {
    /// The report for people.
    pub fn write_text(&self, out: &mut dyn Write) -> std::io::Result<()> {
        let s = &self.score;
        writeln!(
            out,
            "commands read: {} ({} repeated, {} about source addresses, {} lines not commands)",
            self.commands, self.duplicate_commands, self.source_commands, self.unparsed_lines
        )?;
        writeln!(
            out,
            "detections against the ground truth: precision {:.3}, recall {:.3} ({} expected, {} found, {} missed, {} false)",
            s.precision,
            s.recall,
            s.expected,
            s.true_positives,
            s.missed.len(),
            s.false_positives.len()
        )?;
        for r in &self.per_scenario {
            writeln!(
                out,
                "  {:<30} {:>4}/{:<4} found, {} false: precision {:.3}, recall {:.3}",
                r.name, r.true_positives, r.expected, r.false_positives, r.precision, r.recall
            )?;
        }
        for (what, l) in [
            ("event time → command", &self.event_to_command),
            ("write → command", &self.write_to_command),
        ] {
            if let Some(l) = l {
                writeln!(
                    out,
                    "{what} latency over {} detections: p50 {:.1} ms, p99 {:.1} ms, p99.9 {:.1} ms, max {:.1} ms (min {:.1}{})",
                    l.samples,
                    l.p50_ms,
                    l.p99_ms,
                    l.p999_ms,
                    l.max_ms,
                    l.min_ms,
                    if l.negative > 0 {
                        format!(", {} negative left out", l.negative)
                    } else {
                        String::new()
                    }
                )?;
            }
        }
        if self.write_times_missing > 0 {
            writeln!(
                out,
                "{} detections have no write time in the written log",
                self.write_times_missing
            )?;
        }
        for k in s.missed.iter().take(10) {
            writeln!(
                out,
                "  missed: {} {} window {}",
                k.instance, k.rule, k.window_start_ms
            )?;
        }
        for k in s.false_positives.iter().take(10) {
            writeln!(
                out,
                "  false:  {} {} window {}",
                k.instance, k.rule, k.window_start_ms
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Fleet, FleetConfig, Scenario};

    fn fleet() -> Fleet {
        let duration_ms = 5 * 60_000;
        Fleet::generate(&FleetConfig {
            instances: 8,
            seed: 7,
            duration_ms,
            scenarios: Scenario::default_mix(8, duration_ms),
            ..FleetConfig::default()
        })
        .unwrap()
    }

    fn line(instance: &str, rule: &str, window_start_ms: i64) -> String {
        serde_json::json!({
            "version": 1, "id": "x", "subject_kind": "instance", "instance_id": instance,
            "rule": rule, "window_start_ms": window_start_ms, "detected_at": "2023-11-14T22:13:20.000Z"
        })
        .to_string()
    }

    #[test]
    fn every_expected_command_once_scores_one_with_latencies() {
        let f = fleet();
        let truth = f.ground_truth();
        assert!(truth.expected.len() > 3);
        let mut sc = CommandScorer::new();
        let mut written = WrittenLog::default();
        assert!(!sc.complete(truth));
        for e in &truth.expected {
            let read = e.crossing_time_ms * 1000 + 250_000;
            assert_eq!(
                sc.observe_line(&line(&e.instance, &e.rule, e.window_start_ms), read),
                LineKind::New
            );
            written
                .0
                .insert(e.crossing_event_id.clone(), read - 100_000);
        }
        assert!(sc.complete(truth));
        let first = &truth.expected[0];
        let dup = line(&first.instance, &first.rule, first.window_start_ms);
        assert_eq!(sc.observe_line(&dup, 0), LineKind::Duplicate);
        assert_eq!(sc.observe_line("not json", 0), LineKind::Unparsed);
        let r = sc.report(truth, Some(&written));
        assert_eq!((r.score.precision, r.score.recall), (1.0, 1.0));
        assert_eq!(r.duplicate_commands, 1);
        assert_eq!(r.unparsed_lines, 1);
        let ev = r.event_to_command.unwrap();
        assert_eq!(ev.samples as usize, truth.expected.len());
        assert!(
            (ev.p50_ms - 250.0).abs() < 1.0 && (ev.max_ms - 250.0).abs() < 1.0,
            "{ev:?}"
        );
        let wr = r.write_to_command.unwrap();
        assert!((wr.p99_ms - 100.0).abs() < 1.0, "{wr:?}");
        assert!(r
            .per_scenario
            .iter()
            .all(|s| s.recall == 1.0 && s.precision == 1.0));
        assert!(r.per_scenario.len() >= truth.scenario_names.len());
    }

    #[test]
    fn misses_and_false_positives_land_in_their_scenarios() {
        let f = fleet();
        let truth = f.ground_truth();
        let dropped = &truth.expected[0];
        let mut sc = CommandScorer::new();
        for e in truth.expected.iter().skip(1) {
            sc.observe_line(&line(&e.instance, &e.rule, e.window_start_ms), 0);
        }
        // A rule that never fires there, in a window the first scenario touched.
        let w = truth
            .instance_windows
            .iter()
            .find(|w| !w.scenarios.is_empty())
            .unwrap();
        sc.observe_line(&line(&w.instance, "no_such_rule", w.window_start_ms), 0);
        sc.observe_line(
            r#"{"subject_kind":"source","source":"203.0.113.9/32","rule":"r","window_start_ms":0}"#,
            0,
        );
        let r = sc.report(truth, None);
        assert_eq!(r.score.missed, vec![dropped.key()]);
        assert_eq!(r.score.false_positives.len(), 1);
        assert_eq!(r.source_commands, 1);
        assert!(r.write_to_command.is_none());
        let rows_with_fp: Vec<&ScenarioScore> = r
            .per_scenario
            .iter()
            .filter(|s| s.false_positives > 0)
            .collect();
        assert_eq!(rows_with_fp.len(), w.scenarios.len());
        assert!(rows_with_fp.iter().all(|s| s.precision < 1.0));
        let missed_rows = r.per_scenario.iter().filter(|s| s.recall < 1.0).count();
        assert!(missed_rows >= 1);
        let mut text = Vec::new();
        r.write_text(&mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.contains("missed:") && text.contains("false:"),
            "{text}"
        );
    }

    #[test]
    fn written_log_reads_lines_and_counts_bad_ones() {
        let (log, bad) = WrittenLog::parse(
            "{\"event_id\":\"a\",\"written_us\":5}\nnope\n{\"event_id\":\"a\",\"written_us\":9}\n\n",
        );
        assert_eq!(bad, 1);
        assert_eq!(log.0.get("a"), Some(&5));
    }
}
