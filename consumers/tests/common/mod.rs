//! Test support shared by the `sshwarden run` integration tests (Kinesis
//! and Kafka sources, and the load generator end to end): the binary under
//! test, bounded waits, traffic windows, the commands the ground truth
//! expects and the tally of what the workers issued against them, the
//! workers' metrics and the end marker. `worker` runs the processes for
//! either source; `kinesis` and `kafka` are each source's harness. What is
//! not about `sshwarden` (emulator endpoints, SDK configuration, the fault
//! proxy, HTTP GET, the clock) is in the `sshwarden-testsupport` crate.

// Each test binary includes this module with `mod common;` and uses only
// part of it; what one binary leaves unused is not dead code.
#![allow(dead_code)]

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use sshwarden_loadgen::{Fleet, FleetConfig, Scenario, TruthRules};
use sshwarden_pipeline::command::command_id;
use sshwarden_pipeline::time::format_rfc3339_ms;
use sshwarden_pipeline::window::SubjectKind;

/// A source's harness keeps its [`Workers`] in a field `base` and derefs
/// to them, so a test calls `h.spawn(..)` on either source's harness.
macro_rules! derefs_to_workers {
    ($harness:ty) => {
        impl std::ops::Deref for $harness {
            type Target = Workers;
            fn deref(&self) -> &Workers {
                &self.base
            }
        }

        impl std::ops::DerefMut for $harness {
            fn deref_mut(&mut self) -> &mut Workers {
                &mut self.base
            }
        }
    };
}

#[cfg(feature = "kafka")]
pub mod fleet;
pub mod kafka;
pub mod kinesis;
pub mod worker;
// Not every test binary names both.
#[allow(unused_imports)]
pub use worker::{Worker, Workers};

/// No wait in these tests is longer.
pub const MAX_WAIT: Duration = Duration::from_secs(60);

/// The window size of the default rules.
pub const WINDOW_MS: i64 = 60_000;

pub use sshwarden_testsupport::{http_get, now_ms};

/// Runs `cleanup` (deleting what a test made) on a thread and runtime of
/// its own, and waits for it: a drop may run inside the test's runtime, or
/// while it unwinds. Best effort: what fails is left for the emulator's
/// next restart.
pub fn clean_up(cleanup: impl std::future::Future<Output = ()> + Send + 'static) {
    let done = std::thread::spawn(move || {
        let Ok(rt) = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
        else {
            return;
        };
        rt.block_on(cleanup);
    });
    let _ = done.join();
}

/// A name for what one test makes (stream, table, topic, group): `label`
/// with this process, the clock and a counter, so that neither runs in
/// parallel nor runs one after the other on the same emulators meet.
pub fn unique_name(label: &str) -> String {
    static UNIQUE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    format!(
        "{label}-{}-{}-{}",
        std::process::id(),
        now_ms() % 1_000_000_000,
        UNIQUE.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    )
}

/// How long a wait-until-fact loop sleeps between two looks.
pub const POLL: Duration = Duration::from_millis(100);

/// A record that no source can decode (the gzip magic, then garbage),
/// written after the traffic as the last record of every shard or
/// partition: when a reader's `sshwarden_errors_total{kind="decode"}` for
/// that shard counts it, the reader has read, and delivered the commands
/// of, every record before it, because one shard's records are processed
/// one after the other. That is the fact a "nothing more will come" check
/// waits for, instead of a pause.
pub const END_MARKER: &[u8] = b"\x1f\x8b\x08\x00sshwarden-it: end of the traffic";

/// A start time for traffic at `offset_ms` into a (60 s, epoch-aligned)
/// window, at most `lag_ms` and less than `lag_ms` + 60 s before now. The
/// same seed then yields the same events relative to the windows, so what a
/// test exercises does not depend on the time it runs.
pub fn traffic_start(offset_ms: i64, lag_ms: i64) -> i64 {
    let t = now_ms() - lag_ms;
    let start = t.div_euclid(WINDOW_MS) * WINDOW_MS + offset_ms;
    if start > t {
        start - WINDOW_MS
    } else {
        start
    }
}

/// A bounded wait: `check` panics with `what` and a detail once it is over.
pub struct Deadline {
    what: String,
    start: Instant,
    limit: Duration,
}

impl Deadline {
    pub fn new(what: impl Into<String>, limit: Duration) -> Self {
        assert!(limit <= MAX_WAIT);
        Deadline {
            what: what.into(),
            start: Instant::now(),
            limit,
        }
    }

    pub fn check(&self, detail: impl FnOnce() -> String) {
        if self.start.elapsed() > self.limit {
            panic!(
                "timed out after {:?} waiting for {}: {}",
                self.limit,
                self.what,
                detail()
            );
        }
    }
}

/// A command the ground truth says must be issued, with what it must carry.
#[derive(Debug, Clone)]
pub struct Expected {
    pub id: String,
    pub instance: String,
    pub window_start_ms: i64,
    /// Event time of the event that crossed the threshold.
    pub crossing_ms: i64,
    /// `detected_at`: the event time of the event that crossed the threshold.
    pub detected_at: String,
    /// Counts per signal in the window when the threshold was crossed (all
    /// of the window's evidence up to and including the crossing event).
    pub counts: BTreeMap<String, u64>,
}

/// Every instance under a brute force of 0.5 attempts a second for the
/// whole `[start_ms, start_ms + duration_ms)`, plus benign traffic and
/// background scanning.
pub fn brute_force_fleet(seed: u64, instances: usize, start_ms: i64, duration_ms: i64) -> Fleet {
    let per_second = 0.5;
    let config = FleetConfig {
        instances,
        seed,
        start_ms,
        duration_ms,
        benign_events_per_instance_per_min: 12.0,
        scan_probes_per_instance_per_min: 1.0,
        scenarios: (0..instances)
            .map(|i| Scenario::FastBruteForce {
                instance: i,
                offset_ms: 0,
                attempts: (duration_ms as f64 / 1000.0 * per_second) as u32,
                per_second,
            })
            .collect(),
    };
    Fleet::generate(&config).expect("fleet config")
}

/// The commands `fleet`'s ground truth says must be issued under the default
/// rules without cooldown or blast radius, with the counts at the crossing.
pub fn expected_commands(fleet: &Fleet) -> Vec<Expected> {
    let rules = TruthRules::default();
    let truth = fleet.ground_truth();
    truth
        .expected
        .iter()
        .map(|d| {
            let rule = rules.rules.iter().find(|r| r.name == d.rule).unwrap();
            // The window's evidence in processing order (events are sorted
            // by time, and one instance's records are read in that order).
            let mut counts: BTreeMap<String, u64> = BTreeMap::new();
            let mut hits = 0;
            for e in fleet.events() {
                let Some(signal) = e.signal else { continue };
                if e.instance != d.instance
                    || e.time_ms.div_euclid(truth.window_ms) * truth.window_ms != d.window_start_ms
                {
                    continue;
                }
                *counts.entry(signal.as_str().to_owned()).or_default() += 1;
                if rule.signals.contains(&signal) {
                    hits += 1;
                    if hits == rule.threshold {
                        assert_eq!(e.time_ms, d.crossing_time_ms);
                        break;
                    }
                }
            }
            Expected {
                id: command_id(
                    SubjectKind::Instance,
                    &d.instance,
                    &d.rule,
                    d.window_start_ms,
                ),
                instance: d.instance.clone(),
                window_start_ms: d.window_start_ms,
                crossing_ms: d.crossing_time_ms,
                detected_at: format_rfc3339_ms(d.crossing_time_ms),
                counts,
            }
        })
        .collect()
}

/// What the workers' commands say against what was expected.
#[derive(Debug, Default)]
pub struct Tally {
    /// Command id -> how many times each worker issued it.
    pub by_id: BTreeMap<String, Vec<usize>>,
    /// Command id -> how many of those copies carry the truth's content
    /// (`detected_at` and the counts at the crossing).
    pub correct: BTreeMap<String, Vec<usize>>,
    /// Commands that no rule should have issued.
    pub unexpected: Vec<String>,
    /// Copies with other content than the truth: (worker, id, what differs).
    pub partial: Vec<(usize, String, String)>,
}

impl Tally {
    pub fn new(expected: &[Expected], outputs: &[Vec<Value>]) -> Tally {
        let want: HashMap<&str, &Expected> = expected.iter().map(|e| (e.id.as_str(), e)).collect();
        let mut t = Tally::default();
        for (w, commands) in outputs.iter().enumerate() {
            for c in commands {
                let id = c["id"].as_str().unwrap_or_default().to_owned();
                t.by_id
                    .entry(id.clone())
                    .or_insert_with(|| vec![0; outputs.len()])[w] += 1;
                let Some(e) = want.get(id.as_str()) else {
                    t.unexpected
                        .push(format!("unexpected command from worker {w}: {c}"));
                    continue;
                };
                let counts: BTreeMap<String, u64> = c["counts"]
                    .as_object()
                    .map(|m| {
                        m.iter()
                            .map(|(k, v)| (k.clone(), v.as_u64().unwrap_or(0)))
                            .collect()
                    })
                    .unwrap_or_default();
                if c["instance_id"] == e.instance.as_str()
                    && c["detected_at"] == e.detected_at.as_str()
                    && counts == e.counts
                {
                    t.correct
                        .entry(id)
                        .or_insert_with(|| vec![0; outputs.len()])[w] += 1;
                } else {
                    t.partial.push((
                        w,
                        id,
                        format!(
                            "detected_at {} counts {counts:?}, expected {} {:?}",
                            c["detected_at"], e.detected_at, e.counts
                        ),
                    ));
                }
            }
        }
        t
    }

    pub fn missing<'a>(&self, expected: &'a [Expected]) -> Vec<&'a str> {
        expected
            .iter()
            .filter(|e| !self.by_id.contains_key(&e.id))
            .map(|e| e.id.as_str())
            .collect()
    }

    pub fn total(&self, id: &str) -> usize {
        self.by_id.get(id).map_or(0, |v| v.iter().sum())
    }

    pub fn correct_from(&self, id: &str, worker: usize) -> usize {
        self.correct.get(id).map_or(0, |v| v[worker])
    }

    /// Each of `expected` issued exactly once by `worker` with its window's
    /// full counts; `by` names the worker in the message.
    pub fn assert_whole_from(&self, expected: &[&Expected], worker: usize, by: &str) {
        for e in expected {
            assert_eq!(
                self.correct_from(&e.id, worker),
                1,
                "{} not issued {by} with the window's full counts",
                e.id
            );
        }
    }

    /// Nothing unexpected, every expected command issued at least once with
    /// the truth's counts, and every copy with other counts allowed by
    /// `repeat_ok(worker, id)`.
    ///
    /// A new owner replays a shard (or partition) from its checkpoint (or
    /// committed offset), which the checkpoint
    /// rule keeps before every window still open; but the records after it
    /// also carry the tail of windows that had already closed (a record ends
    /// in one window and starts in the one before). Those tails are counted
    /// again as if they were whole windows: a command the previous owner
    /// already delivered can come again, with the same id and smaller
    /// counts. The sink deduplicates it by name; what is checked here is
    /// that such a copy only ever repeats a command delivered in full.
    pub fn assert_content(&self, expected: &[Expected], repeat_ok: impl Fn(usize, &str) -> bool) {
        assert!(
            self.unexpected.is_empty(),
            "unexpected commands: {:#?}",
            self.unexpected
        );
        let never_whole: Vec<&str> = expected
            .iter()
            .filter(|e| {
                self.correct
                    .get(&e.id)
                    .is_none_or(|v| v.iter().sum::<usize>() == 0)
            })
            .map(|e| e.id.as_str())
            .collect();
        assert!(
            never_whole.is_empty(),
            "issued only with other counts than the truth (counts lost): {never_whole:?}\n{:#?}",
            self.partial
        );
        let bad: Vec<_> = self
            .partial
            .iter()
            .filter(|(w, id, _)| !repeat_ok(*w, id))
            .collect();
        assert!(bad.is_empty(), "commands with wrong counts: {bad:#?}");
    }
}

/// The `sshwarden` binary under test: SSHWARDEN_BIN when set (a copy
/// taken right after the build, where several checkouts share one cargo
/// target directory and overwrite each other's `target/debug/sshwarden`),
/// else the one cargo built for this test.
pub fn sshwarden_bin() -> PathBuf {
    std::env::var_os("SSHWARDEN_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_sshwarden")))
}

/// A free port on 127.0.0.1 (bound, then released for the worker), never
/// one this process handed out before: released, a port is free again, and
/// the system gave two workers of one test the same one.
pub fn free_addr() -> SocketAddr {
    static GIVEN: std::sync::Mutex<Vec<u16>> = std::sync::Mutex::new(Vec::new());
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..1000 {
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap();
        if !given.contains(&addr.port()) {
            given.push(addr.port());
            return addr;
        }
    }
    panic!("no port on 127.0.0.1 that this test run has not used yet");
}

/// The JSON lines of a file (a torn last line is left out).
pub fn read_json_lines(path: &Path) -> Vec<Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The last `n` lines of a file, each cut at 400 characters: what a failed
/// test prints of a worker's output.
pub fn tail_lines(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<String> = text
        .lines()
        .map(|l| match l.char_indices().nth(400) {
            Some((i, _)) => format!("{}...", &l[..i]),
            None => l.to_owned(),
        })
        .collect();
    all[all.len().saturating_sub(n)..].join("\n")
}

/// What a harness prints when its test fails: which test, after how long,
/// its `resources` (stream, table, topic...) and where its files are, then
/// each worker's `tails`; the scratch directory `dir` is kept for a look.
pub fn report_failure(
    label: &str,
    started: Instant,
    resources: &str,
    dir: &mut tempfile::TempDir,
    tails: impl Iterator<Item = String>,
) {
    eprintln!(
        "===== {label} failed after {:.1?}; {resources}, files in {}",
        started.elapsed(),
        dir.path().display()
    );
    for t in tails {
        eprintln!("{t}");
    }
    let kept = std::mem::replace(dir, tempfile::tempdir().unwrap());
    let _ = kept.keep();
}

/// A worker's `/metrics` page (empty when it does not answer: a worker that
/// is starting or gone).
pub fn metrics_page(addr: SocketAddr) -> String {
    match http_get(&format!("http://{addr}/metrics")) {
        Ok((200, body)) => body,
        _ => String::new(),
    }
}

/// The samples of metric `name` (the full name, e.g.
/// `sshwarden_errors_total`) in a `/metrics` page whose labels include every
/// `label="value"` of `with`, summed by the shard (or partition) they name
/// ("" for a sample without one).
pub fn samples_by_shard(page: &str, name: &str, with: &[&str]) -> BTreeMap<String, f64> {
    let mut out = BTreeMap::new();
    for line in page.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = match line.rsplit_once(' ') {
            Some(x) => x,
            None => continue,
        };
        let (metric, labels) = match series.split_once('{') {
            Some((m, l)) => (m, l.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let labels: Vec<&str> = labels.split(',').collect();
        if !with.iter().all(|w| labels.contains(w)) {
            continue;
        }
        let shard = labels
            .iter()
            .find_map(|x| {
                x.strip_prefix("shard=\"")
                    .or_else(|| x.strip_prefix("partition=\""))
            })
            .map(|s| s.trim_end_matches('"').to_owned())
            .unwrap_or_default();
        *out.entry(shard).or_default() += value.parse::<f64>().unwrap_or(f64::NAN);
    }
    out
}

/// The sum of every sample of metric `name` whose labels include every
/// `label="value"` of `with`.
pub fn sample_sum(page: &str, name: &str, with: &[&str]) -> f64 {
    samples_by_shard(page, name, with).values().sum()
}

/// The end markers each shard (or partition) of `shards` has seen counted,
/// summed over the `/metrics` pages of its readers.
pub fn end_markers_counted(pages: &[String], shards: &[String]) -> BTreeMap<String, f64> {
    let mut seen: BTreeMap<String, f64> = shards.iter().map(|s| (s.clone(), 0.0)).collect();
    for page in pages {
        for (shard, n) in samples_by_shard(page, "sshwarden_errors_total", &["kind=\"decode\""]) {
            if let Some(v) = seen.get_mut(&shard) {
                *v += n;
            }
        }
    }
    seen
}
