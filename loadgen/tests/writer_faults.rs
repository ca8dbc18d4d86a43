//! The Kinesis writer's failure handling, through the fault-injecting proxy
//! (`scripts/lib/kinesis_fault_proxy.py`) in front of kinesis-local, which
//! itself never throttles: PutRecords calls answered with per-entry failures
//! (`FailedRecordCount`, `ErrorCode` ProvisionedThroughputExceededException
//! or InternalFailure, as Kinesis answers), whole calls throttled, 500s and
//! connection resets. The records are read back from kinesis-local directly
//! and compared with what was given: each exactly once, on its shard, in
//! the order the writer guarantees; the writer's counters are compared with
//! what the proxy says it injected.
//!
//! The order guarantee: a shard has one call in flight at a time, so a
//! record is never overtaken by a record of a later call; a record that
//! failed within a call is retried after the rest of that call went in, so
//! it can be overtaken by records of its own first call, and only by those.
//!
//! Start the emulators first: `scripts/emulators up`. A test fails (never
//! skips) when kinesis-local is not reachable (SSHWARDEN_KINESIS_ENDPOINT
//! [http://127.0.0.1:4567]). The proxy runs on an ephemeral 127.0.0.1 port,
//! exits by itself after 300 s and is killed by PID when its test ends.
#![cfg(feature = "aws")]

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use sshwarden_loadgen::writer::kinesis::{
    ensure_stream, hash_ranges, shard_index, HashRange, KinesisItem, KinesisWriter,
    KinesisWriterConfig,
};
use sshwarden_loadgen::writer::OnWritten;

use sshwarden_testsupport::{
    kinesis_endpoint, read_all, sdk, start_fault_proxy, suffix, StreamGuard,
};

const PTEE: &str = "ProvisionedThroughputExceededException";

/// The fault proxy, started with a PutRecords script; killed when dropped.
struct FaultProxy {
    child: Child,
    endpoint: String,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

/// One PutRecords call as the proxy logged it.
#[derive(Debug, Clone, serde::Deserialize)]
struct PutCall {
    call: u64,
    fault: Option<String>,
    status: Option<u16>,
    entries: usize,
    /// Indices of the entries that failed (all of them for a whole-call fault).
    failed: Vec<usize>,
    error_code: Option<String>,
    /// Each entry's data (first 64 characters), in request order.
    data: Vec<String>,
}

impl FaultProxy {
    fn start(upstream: &str, script: &Value) -> FaultProxy {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("proxy.jsonl");
        let (child, endpoint) =
            start_fault_proxy(upstream, script, &["--log-entries"], &log, Stdio::inherit());
        eprintln!(
            "fault proxy (pid {}) on {}, script {script}",
            child.id(),
            endpoint.trim_start_matches("http://")
        );
        FaultProxy {
            child,
            endpoint,
            log,
            _dir: dir,
        }
    }

    /// Every PutRecords call so far, in the order the proxy saw them.
    fn puts(&self) -> Vec<PutCall> {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let mut calls: Vec<PutCall> = text
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|v| v["target"] == "PutRecords")
            .map(|v| serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("{e}: {v}")))
            .collect();
        calls.sort_by_key(|c| c.call);
        calls
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Record `i`: its data starts with `r{i:05} `, so the proxy's log names it.
fn items(n: usize) -> Vec<KinesisItem> {
    (0..n)
        .map(|i| KinesisItem {
            partition_key: format!("i-{:017x}", i % 37),
            data: format!("r{i:05} {}", "x".repeat(i % 300)).into_bytes(),
            due_ms: None,
            marks: vec![format!("r{i:05}")],
        })
        .collect()
}

/// The record number in a data string (`r00042 xxx` → 42).
fn id_of(data: &str) -> usize {
    data.get(1..6)
        .and_then(|d| d.parse().ok())
        .unwrap_or_else(|| panic!("not a test record: {data:?}"))
}

/// The stream's records by shard index (shard ids sorted, as the ranges
/// are), each as its record number, in arrival order.
async fn read_ids(client: &aws_sdk_kinesis::Client, stream: &str, want: usize) -> Vec<Vec<usize>> {
    read_all(client, stream, want)
        .await
        .into_values()
        .map(|records| {
            records
                .iter()
                .map(|(_, data)| id_of(&String::from_utf8_lossy(data)))
                .collect()
        })
        .collect()
}

/// Records the marks the writer reports written.
fn mark_sink() -> (OnWritten, Arc<Mutex<Vec<String>>>) {
    let marked: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = marked.clone();
    let on_written: OnWritten = Arc::new(Mutex::new(move |m: &str, _us: i64| {
        sink.lock().unwrap().push(m.to_owned())
    }));
    (on_written, marked)
}

/// A stream on kinesis-local (deleted when the guard drops), a client on
/// kinesis-local itself, and one through a new proxy running `script`.
async fn setup(
    name: &str,
    shards: i32,
    script: Value,
) -> (
    aws_sdk_kinesis::Client,
    aws_sdk_kinesis::Client,
    String,
    Vec<HashRange>,
    StreamGuard,
    FaultProxy,
) {
    let endpoint = kinesis_endpoint();
    let direct = aws_sdk_kinesis::Client::new(&sdk(&endpoint).await);
    let stream = format!("loadgen-{name}-{}", suffix());
    ensure_stream(&direct, &stream, shards, Duration::from_secs(60))
        .await
        .unwrap();
    let guard = StreamGuard(direct.clone(), stream.clone());
    let ranges = hash_ranges(&direct, &stream).await.unwrap();
    let proxy = FaultProxy::start(&endpoint, &script);
    let proxied = aws_sdk_kinesis::Client::new(&sdk(&proxy.endpoint).await);
    (direct, proxied, stream, ranges, guard, proxy)
}

/// The record numbers given to each shard, in the order given.
fn given_by_shard(sent: &[KinesisItem], ranges: &[HashRange]) -> Vec<Vec<usize>> {
    let mut by = vec![Vec::new(); ranges.len()];
    for (i, item) in sent.iter().enumerate() {
        by[shard_index(ranges, &item.partition_key)].push(i);
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_failures_throttles_5xx_and_resets_still_write_every_record_once() {
    let script = json!([
        {"target": "PutRecords", "calls": [1, 3], "fault": "partial", "fail_every": 3},
        {"target": "PutRecords", "calls": [4, 4], "fault": "partial", "fail_first": 7, "error": "internal"},
        {"target": "PutRecords", "calls": [5, 6], "fault": "throughput"},
        {"target": "PutRecords", "calls": [7, 7], "fault": "internal"},
        {"target": "PutRecords", "calls": [8, 8], "fault": "reset"},
        {"target": "PutRecords", "calls": [9, 10], "fault": "partial", "fail_first": 3},
    ]);
    // Several calls per shard and more calls allowed in flight than there
    // are shards: a shard's next call must still wait for its retries.
    let (direct, proxied, stream, ranges, _guard, proxy) = setup("faults", 2, script).await;
    let n = 3_000;
    let sent = items(n);
    let (on_written, marked) = mark_sink();
    let mut config = KinesisWriterConfig::new(&stream);
    config.concurrency = 4;
    config.give_up_after = Duration::from_secs(120);
    let writer = KinesisWriter::new(proxied, config).await.unwrap();
    let report = writer
        .write(sent.clone(), Some(on_written))
        .await
        .unwrap_or_else(|e| panic!("the writer gave up: {e}"));
    eprintln!("{report}");

    // Every scripted fault happened (each faulted call makes another call).
    let puts = proxy.puts();
    assert!(puts.len() >= 10, "only {} PutRecords calls", puts.len());
    let kinds: Vec<(Option<&str>, Option<&str>)> = puts[..10]
        .iter()
        .map(|c| (c.fault.as_deref(), c.error_code.as_deref()))
        .collect();
    assert_eq!(
        kinds,
        [
            (Some("partial"), Some(PTEE)),
            (Some("partial"), Some(PTEE)),
            (Some("partial"), Some(PTEE)),
            (Some("partial"), Some("InternalFailure")),
            (Some("throughput"), Some(PTEE)),
            (Some("throughput"), Some(PTEE)),
            (Some("internal"), Some("InternalFailure")),
            (Some("reset"), None),
            (Some("partial"), Some(PTEE)),
            (Some("partial"), Some(PTEE)),
        ],
        "the proxy's first ten calls"
    );
    for c in &puts {
        assert_eq!(c.data.len(), c.entries, "call {}", c.call);
        match c.fault.as_deref() {
            Some("partial") => assert_eq!(c.status, Some(200), "call {}", c.call),
            Some(_) => assert_eq!(c.failed.len(), c.entries, "call {}", c.call),
            None => assert!(c.failed.is_empty(), "kinesis-local failed entries: {c:?}"),
        }
    }
    let partial_failed: usize = puts
        .iter()
        .filter(|c| c.fault.as_deref() == Some("partial"))
        .map(|c| c.failed.len())
        .sum();
    assert!(partial_failed > 0, "no entry failed on its own");

    // The report counts exactly what was injected: every failed entry and
    // every entry of a refused call was sent again; the throttled ones are
    // those refused with ProvisionedThroughputExceededException.
    let injected: u64 = puts.iter().map(|c| c.failed.len() as u64).sum();
    let throttled: u64 = puts
        .iter()
        .filter(|c| c.error_code.as_deref() == Some(PTEE))
        .map(|c| c.failed.len() as u64)
        .sum();
    let refused_calls = puts
        .iter()
        .filter(|c| {
            matches!(
                c.fault.as_deref(),
                Some("throughput" | "internal" | "reset")
            )
        })
        .count() as u64;
    assert_eq!(report.records, n as u64, "{report}");
    assert_eq!(report.calls, puts.len() as u64, "{report}");
    assert_eq!(report.retried, injected, "{report}");
    assert_eq!(report.throttled, throttled, "{report}");
    assert_eq!(report.failed_calls, refused_calls, "{report}");
    let mut marks = marked.lock().unwrap().clone();
    marks.sort();
    let want_marks: Vec<String> = sent.iter().map(|i| i.marks[0].clone()).collect();
    assert_eq!(marks, want_marks, "each record reported written once");

    // Exactly once, on its shard, with its content.
    let read = read_all(&direct, &stream, n).await;
    let mut got: Vec<(String, Vec<u8>)> = read.values().flatten().cloned().collect();
    got.sort();
    let mut want: Vec<(String, Vec<u8>)> = sent
        .iter()
        .map(|i| (i.partition_key.clone(), i.data.clone()))
        .collect();
    want.sort();
    assert_eq!(got.len(), n, "read back {} records, wrote {n}", got.len());
    assert!(
        got == want,
        "the stream holds other records than were given"
    );
    let arrived = read_ids(&direct, &stream, n).await;
    let given = given_by_shard(&sent, &ranges);
    for (shard, ids) in arrived.iter().enumerate() {
        let mut sorted = ids.clone();
        sorted.sort_unstable();
        assert_eq!(sorted, given[shard], "shard {shard} holds other records");
    }

    // Order. The call each record was first sent in, and whether it failed.
    let mut first_call: HashMap<usize, u64> = HashMap::new();
    let mut failed_once: HashSet<usize> = HashSet::new();
    for c in &puts {
        for (i, d) in c.data.iter().enumerate() {
            first_call.entry(id_of(d)).or_insert(c.call);
            if c.failed.contains(&i) {
                failed_once.insert(id_of(d));
            }
        }
    }
    let mut overtaken = 0;
    for (shard, ids) in arrived.iter().enumerate() {
        // Calls take a shard's records in the order given...
        let firsts: Vec<u64> = given[shard].iter().map(|i| first_call[i]).collect();
        assert!(
            firsts.windows(2).all(|w| w[0] <= w[1]),
            "shard {shard}: a record was first sent after a later one"
        );
        // ...and a record lands before every record of a later call.
        let landed: Vec<u64> = ids.iter().map(|i| first_call[i]).collect();
        assert!(
            landed.windows(2).all(|w| w[0] <= w[1]),
            "shard {shard}: a record landed after one of a later call"
        );
        // Within a call, only a record that failed is overtaken.
        for (pos, &id) in ids.iter().enumerate() {
            let later_given_earlier = ids[pos + 1..].iter().filter(|&&j| j < id).count();
            if later_given_earlier > 0 {
                overtaken += later_given_earlier;
                for &j in &ids[pos + 1..] {
                    if j < id {
                        assert!(
                            failed_once.contains(&j),
                            "shard {shard}: r{j} was overtaken by r{id} but never failed"
                        );
                    }
                }
            }
        }
    }
    // Per-entry failures do reorder within a call: the test saw it happen.
    assert!(overtaken > 0, "no retried record was overtaken");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_throttling_gives_up_naming_what_was_not_written() {
    // The first two calls go through, every later one is throttled.
    let script = json!([
        {"target": "PutRecords", "calls": [3, 1_000_000], "fault": "throughput"},
    ]);
    let (direct, proxied, stream, ranges, _guard, proxy) = setup("giveup", 2, script).await;
    let n = 1_200;
    let sent = items(n);
    let (on_written, marked) = mark_sink();
    let mut config = KinesisWriterConfig::new(&stream);
    config.concurrency = 2;
    config.give_up_after = Duration::from_secs(2);
    let writer = KinesisWriter::new(proxied, config).await.unwrap();
    let started = Instant::now();
    let err = writer
        .write(sent.clone(), Some(on_written))
        .await
        .expect_err("every call throttled: the writer must give up");
    let took = started.elapsed();
    eprintln!("{err} after {took:?}");
    assert!(took >= Duration::from_secs(2), "gave up after {took:?}");
    // Backoff is capped at 5 s: 2 s + a wait + a call, generously.
    assert!(
        took < Duration::from_secs(60),
        "gave up only after {took:?}"
    );
    assert!(err.message.contains("gave up"), "{err}");
    assert!(err.message.contains(PTEE), "{err}");
    assert!(
        err.to_string()
            .contains(&format!("({} not written)", err.unwritten)),
        "{err}"
    );

    // What the writer says it wrote is exactly what is in the stream.
    let arrived = read_ids(&direct, &stream, n).await;
    let written: usize = arrived.iter().map(Vec::len).sum();
    let stats = writer.stats().report("kinesis", took);
    assert!(written > 0, "the first calls went through");
    assert!(
        written < n,
        "every record was written despite the throttling"
    );
    assert_eq!(stats.records, written as u64);
    assert_eq!(err.unwritten, (n - written) as u64, "{err}");
    let mut marks = marked.lock().unwrap().clone();
    marks.sort();
    let mut want_marks: Vec<String> = arrived
        .iter()
        .flatten()
        .map(|i| format!("r{i:05}"))
        .collect();
    want_marks.sort();
    assert_eq!(marks, want_marks, "marks reported for records not written");
    // Whole calls went through or not: each shard holds a prefix of its records.
    let given = given_by_shard(&sent, &ranges);
    for (shard, ids) in arrived.iter().enumerate() {
        assert_eq!(ids[..], given[shard][..ids.len()], "shard {shard}");
    }

    // Counters: each refused call counted; a record refused on its last try
    // (the writer gave up on it) is not a retry.
    let puts = proxy.puts();
    let refused: Vec<&PutCall> = puts.iter().filter(|c| c.fault.is_some()).collect();
    assert_eq!(puts.len() - refused.len(), 2, "calls that went through");
    let refused_entries: usize = refused.iter().map(|c| c.entries).sum();
    let given_up: HashSet<usize> = refused
        .iter()
        .flat_map(|c| c.data.iter().map(|d| id_of(d)))
        .collect();
    assert_eq!(stats.calls, puts.len() as u64, "{stats}");
    assert_eq!(stats.failed_calls, refused.len() as u64, "{stats}");
    assert_eq!(
        stats.retried,
        (refused_entries - given_up.len()) as u64,
        "{stats}"
    );
    assert_eq!(stats.throttled, stats.retried, "{stats}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_record_failing_on_its_own_forever_is_reported_and_the_rest_written() {
    // From the second call on, the first entry of every call fails: a
    // batch's first record never goes in, the rest of it does.
    let script = json!([
        {"target": "PutRecords", "calls": [2, 1_000_000], "fault": "partial", "fail_first": 1,
         "error": "internal"},
    ]);
    let (direct, proxied, stream, _ranges, _guard, proxy) = setup("stuck", 1, script).await;
    let n = 1_200;
    let sent = items(n);
    let (on_written, marked) = mark_sink();
    let mut config = KinesisWriterConfig::new(&stream);
    config.give_up_after = Duration::from_secs(2);
    let writer = KinesisWriter::new(proxied, config).await.unwrap();
    let err = writer
        .write(sent.clone(), Some(on_written))
        .await
        .expect_err("a record that always fails: the writer must give up");
    eprintln!("{err}");
    assert!(err.message.contains("InternalFailure"), "{err}");

    let arrived = read_ids(&direct, &stream, n).await;
    let written: usize = arrived.iter().map(Vec::len).sum();
    let stats = writer.stats().report("kinesis", Duration::from_secs(1));
    assert_eq!(stats.records, written as u64);
    assert_eq!(err.unwritten, (n - written) as u64, "{err}");
    assert_eq!(marked.lock().unwrap().len(), written);
    // One shard, one batch at a time: the first batch (call 1) went in
    // whole, the second all but its first record, which was tried until
    // the give-up time; the rest was never sent.
    let puts = proxy.puts();
    let second = id_of(&puts[1].data[0]);
    assert!(
        !arrived[0].contains(&second),
        "r{second} failed every time yet is in the stream"
    );
    let stuck_calls = puts
        .iter()
        .filter(|c| c.data.first().map(|d| id_of(d)) == Some(second))
        .count();
    assert!(stuck_calls >= 3, "r{second} was tried {stuck_calls} times");
    let expect: Vec<usize> = (0..second)
        .chain(puts[1].data.iter().skip(1).map(|d| id_of(d)))
        .collect();
    assert_eq!(arrived[0], expect, "the stream");
    assert_eq!(
        stats.retried,
        (stuck_calls - 1) as u64,
        "only r{second} was sent again: {stats}"
    );
    assert_eq!(stats.throttled, 0, "{stats}");
}
