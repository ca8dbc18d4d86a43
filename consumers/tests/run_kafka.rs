//! `sshwarden run --source kafka` against a real Kafka-protocol broker on
//! 127.0.0.1 (tansu, started by `scripts/emulators up kafka`). Each test
//! creates its own topic and consumer group, writes seeded fleet traffic
//! with ground truth through the load generator's Kafka writer, runs
//! separate `sshwarden run` processes with the stdout sink, and checks their
//! commands (stdout), logs (stderr), metrics and the group's committed
//! offsets.
//!
//! Scenarios: attacks detected end to end (subscription payloads, and raw
//! sshd lines keyed by instance id); a restart resumes from the committed
//! offsets without losing a window; a rebalance between two workers; poison
//! messages skipped and counted.
//!
//! The broker: SSHWARDEN_KAFKA_BROKERS [127.0.0.1:9092]; the binary:
//! SSHWARDEN_BIN [the one cargo built for the test]. A test fails (never
//! skips) when it does not answer. Every wait is bounded; every worker is
//! killed when its test ends; on failure the tails of every worker's stdout
//! and stderr are printed.

#![cfg(feature = "kafka")]

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::Write;
use std::net::TcpStream;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{BaseProducer, BaseRecord, DefaultProducerContext, Producer};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientConfig;
use sshwarden_loadgen::kafka::{line_messages, payload_messages, produce, Outgoing};
use sshwarden_loadgen::{encode_records, Fleet, RecordOptions};

mod common;
use common::*;

// ------------------------------------------------------------------ broker

/// The broker's address; fails the test when nothing answers there.
fn broker() -> String {
    let brokers =
        std::env::var("SSHWARDEN_KAFKA_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into());
    let first = brokers.split(',').next().unwrap_or_default().to_owned();
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(&first)
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "no Kafka broker answers at {brokers}. These tests need one: run \
         `scripts/emulators up kafka` (or set SSHWARDEN_KAFKA_BROKERS to where a broker listens)."
    );
    brokers
}

fn create_topic(brokers: &str, topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("admin client");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(1));
    let results = rt
        .block_on(admin.create_topics(
            [&new],
            &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
        ))
        .unwrap_or_else(|e| panic!("CreateTopics {topic}: {e}"));
    for r in results {
        if let Err((t, e)) = r {
            panic!("CreateTopics {t}: {e}");
        }
    }
}

/// The group's committed offsets, per partition (-1: none).
fn committed(brokers: &str, group: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .expect("consumer");
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_range(topic, 0, partitions - 1);
    let got = consumer
        .committed_offsets(tpl, Duration::from_secs(10))
        .unwrap_or_else(|e| panic!("OffsetFetch {group}: {e}"));
    (0..partitions)
        .map(|p| match got.find_partition(topic, p).map(|e| e.offset()) {
            Some(Offset::Offset(o)) => o,
            _ => -1,
        })
        .collect()
}

fn write(brokers: &str, topic: &str, messages: &[Outgoing]) {
    produce(brokers, topic, &[], messages, None, Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("producing to {topic}: {e:#}"));
}

fn pause(ms: u64) {
    std::thread::sleep(Duration::from_millis(ms));
}

/// One look's worth of sleep in a wait-until-fact loop.
fn poll() {
    std::thread::sleep(POLL);
}

/// Writes `payload` once to each of the topic's `partitions`, after
/// everything written before it.
fn write_to_each_partition(brokers: &str, topic: &str, partitions: i32, payload: &[u8]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    for p in 0..partitions {
        producer
            .send(
                BaseRecord::<str, [u8]>::to(topic)
                    .partition(p)
                    .key("end-marker")
                    .payload(payload),
            )
            .unwrap_or_else(|(e, _)| panic!("producing the end marker to {topic}/{p}: {e}"));
    }
    producer
        .flush(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("flushing the end markers to {topic}: {e}"));
}

/// Per partition, the offset after its last message (the high watermark).
fn ends(brokers: &str, topic: &str, partitions: i32) -> Vec<i64> {
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("consumer");
    (0..partitions)
        .map(|p| {
            consumer
                .fetch_watermarks(topic, p, Duration::from_secs(10))
                .unwrap_or_else(|e| panic!("watermarks of {topic}/{p}: {e}"))
                .1
        })
        .collect()
}

// ------------------------------------------------------------------ traffic

struct Traffic {
    fleet: Fleet,
    expected: Vec<Expected>,
}

impl Traffic {
    /// Every instance under a brute force for the whole duration, plus
    /// benign traffic and background scanning.
    fn brute_force(seed: u64, instances: usize, start_ms: i64, duration_ms: i64) -> Traffic {
        let fleet = brute_force_fleet(seed, instances, start_ms, duration_ms);
        let expected = expected_commands(&fleet);
        Traffic { fleet, expected }
    }

    /// One message per subscription payload (25 events, 5 s at most).
    fn payloads(&self) -> Vec<Outgoing> {
        let opts = RecordOptions {
            events_per_record: 25,
            max_span_ms: 5_000,
            ..RecordOptions::default()
        };
        payload_messages(&encode_records(self.fleet.events(), &opts))
    }

    fn lines(&self) -> Vec<Outgoing> {
        line_messages(self.fleet.events())
    }
}

/// Messages whose (last) event is before `time_ms`, and the rest.
fn split_at(messages: &[Outgoing], time_ms: i64) -> (&[Outgoing], &[Outgoing]) {
    let i = messages.partition_point(|m| m.timestamp_ms < time_ms);
    messages.split_at(i)
}

// ------------------------------------------------------------------ workers

static UNIQUE: AtomicU32 = AtomicU32::new(0);

/// One test's topic, group, workers and scratch directory (the workers'
/// part is [`Workers`], which a harness derefs to).
struct Harness {
    base: Workers,
    brokers: String,
    topic: String,
    group: String,
    partitions: i32,
    /// librdkafka's mock cluster, when the test runs on it (dropped last:
    /// the workers are killed first).
    _mock: Option<MockCluster<'static, DefaultProducerContext>>,
}

impl std::ops::Deref for Harness {
    type Target = Workers;
    fn deref(&self) -> &Workers {
        &self.base
    }
}

impl std::ops::DerefMut for Harness {
    fn deref_mut(&mut self) -> &mut Workers {
        &mut self.base
    }
}

impl Harness {
    /// A topic on the broker (tansu).
    fn new(label: &str, partitions: i32) -> Harness {
        Harness::on(label, partitions, None)
    }

    /// A topic on a mock cluster of librdkafka's, in this process but
    /// listening on 127.0.0.1: the workers still talk the Kafka protocol
    /// to it over TCP.
    fn on_mock(label: &str, partitions: i32) -> Harness {
        Harness::on(
            label,
            partitions,
            Some(MockCluster::new(1).expect("librdkafka mock cluster")),
        )
    }

    fn on(
        label: &str,
        partitions: i32,
        mock: Option<MockCluster<'static, DefaultProducerContext>>,
    ) -> Harness {
        let unique = format!(
            "{label}-{}-{}-{}",
            std::process::id(),
            now_ms() % 1_000_000_000,
            UNIQUE.fetch_add(1, Ordering::Relaxed)
        );
        let topic = format!("sshwarden-it-{unique}");
        let brokers = match &mock {
            Some(m) => {
                m.create_topic(&topic, partitions, 1)
                    .unwrap_or_else(|e| panic!("mock CreateTopic {topic}: {e}"));
                m.bootstrap_servers()
            }
            None => {
                let b = broker();
                create_topic(&b, &topic, partitions);
                b
            }
        };
        let group = format!("sshwarden-it-group-{unique}");
        Harness {
            base: Workers::new("kafka-", label, format!("topic {topic}, group {group}")),
            _mock: mock,
            brokers,
            group,
            topic,
            partitions,
        }
    }

    fn write(&self, messages: &[Outgoing]) {
        write(&self.brokers, &self.topic, messages);
        self.log(format_args!("wrote {} messages", messages.len()));
    }

    fn committed(&self) -> Vec<i64> {
        committed(&self.brokers, &self.group, &self.topic, self.partitions)
    }

    /// Starts a worker: stdout sink (the default), no cooldown, no blast radius, short
    /// commit and idle intervals, a short session timeout.
    fn spawn(&mut self, id: &str, extra: &[&str]) -> usize {
        self.spawn_env(id, extra, &[])
    }

    fn spawn_env(&mut self, id: &str, extra: &[&str], env: &[(&str, &str)]) -> usize {
        let mut args: Vec<&str> = vec![
            "--source",
            "kafka",
            "--brokers",
            &self.brokers,
            "--topic",
            &self.topic,
            "--group",
            &self.group,
            "--checkpoint-ms",
            "300",
            "--idle-poll-ms",
            "300",
            "--kafka-option",
            "session.timeout.ms=6000",
            "--kafka-option",
            "heartbeat.interval.ms=500",
            "--kafka-option",
            "fetch.wait.max.ms=100",
        ];
        args.extend_from_slice(extra);
        self.base.spawn(id, &args, env)
    }

    /// Waits until the workers hold `shares` partitions each (as their
    /// metrics say), every partition once.
    fn wait_assigned(&mut self, workers: &[usize], shares: &[usize]) {
        let d = Deadline::new(format!("partitions assigned as {shares:?}"), MAX_WAIT);
        loop {
            self.check_running();
            let held: Vec<usize> = workers
                .iter()
                .map(|&w| self.workers[w].metric("sshwarden_kafka_partitions_assigned") as usize)
                .collect();
            let mut sorted = held.clone();
            sorted.sort_unstable();
            let mut want = shares.to_vec();
            want.sort_unstable();
            if sorted == want {
                self.log(format_args!("assigned: {held:?}"));
                return;
            }
            d.check(|| format!("assigned {held:?}"));
            pause(100);
        }
    }

    /// Messages read by all workers (their `sshwarden_records_total`).
    fn records(&self, worker: usize) -> u64 {
        self.workers[worker].metric("sshwarden_records_total") as u64
    }

    /// The label of partition `p` in the metrics.
    fn partition_label(&self, p: i32) -> String {
        format!("{}/{p}", self.topic)
    }

    /// Writes an [`END_MARKER`] after the traffic to every partition, then
    /// waits until the `readers` counted each one (as a decode error):
    /// every message before it was read and its commands delivered. What a
    /// check that nothing more will come (no duplicate, nothing read twice)
    /// waits for. For payloads; a reader of `--kafka-format lines` decodes
    /// anything (see [`Harness::read_lines_to_the_end`]).
    fn read_to_the_end(&mut self, readers: &[usize]) {
        self.read_to_the_end_past(readers, 0);
    }

    /// [`Harness::read_to_the_end`] on partitions that each hold `poison`
    /// undecodable messages before the end marker.
    fn read_to_the_end_past(&mut self, readers: &[usize], poison: usize) {
        write_to_each_partition(&self.brokers, &self.topic, self.partitions, END_MARKER);
        let partitions: Vec<String> = (0..self.partitions)
            .map(|p| self.partition_label(p))
            .collect();
        self.base.wait_end_markers(readers, &partitions, poison);
    }

    /// For a `--kafka-format lines` reader, which takes any message for
    /// lines: writes an empty line (no event, no command) after the traffic
    /// to every partition, then waits until `reader`, which started at the
    /// offsets `from`, has read every partition to its end (its
    /// records_total per partition is the high watermark less `from`): the
    /// last message it counted is that empty line, so every message before
    /// it was read and its commands delivered. Returns what it read in all.
    fn read_lines_to_the_end(&mut self, reader: usize, from: &[i64]) -> u64 {
        write_to_each_partition(&self.brokers, &self.topic, self.partitions, b"\n");
        let ends = ends(&self.brokers, &self.topic, self.partitions);
        let want: BTreeMap<String, f64> = (0..self.partitions)
            .map(|p| {
                let n = ends[p as usize] - from[p as usize].max(0);
                (self.partition_label(p), n as f64)
            })
            .collect();
        let d = Deadline::new(
            format!("every partition to be read to its end {ends:?}"),
            MAX_WAIT,
        );
        loop {
            self.check_running();
            let page = metrics_page(self.workers[reader].metrics);
            let read = samples_by_shard(&page, "sshwarden_records_total", &[]);
            let behind: Vec<(&String, f64, f64)> = want
                .iter()
                .map(|(p, &n)| (p, read.get(p).copied().unwrap_or(0.0), n))
                .filter(|&(_, got, n)| got < n)
                .collect();
            if behind.is_empty() {
                self.log(format_args!("read to the end of every partition {ends:?}"));
                return want.values().sum::<f64>() as u64;
            }
            d.check(|| format!("(partition, read, to read): {behind:?}"));
            poll();
        }
    }
}

// ------------------------------------------------------------------ tests

/// Subscription payloads (gzip JSON, as CloudWatch delivers them to
/// Kinesis) on a 3-partition topic, one worker, format detected per
/// message: every command of the ground truth with its counts, nothing else,
/// and every message read once.
#[test]
fn attacks_in_payloads_are_detected_end_to_end() {
    let mut h = Harness::new("payloads", 3);
    let traffic = Traffic::brute_force(7, 6, traffic_start(10_000, 60_000), 150_000);
    let messages = traffic.payloads();
    h.write(&messages);
    let w = h.spawn("solo", &[]);
    h.wait_assigned(&[w], &[3]);
    let t = h.wait_for_commands(&traffic.expected);
    h.read_to_the_end(&[w]);
    let t2 = Tally::new(&traffic.expected, &h.outputs());
    t2.assert_content(&traffic.expected, |_, _| false);
    for (id, n) in &t2.by_id {
        assert_eq!(n[w], 1, "{id} issued {} times by one worker", n[w]);
    }
    let markers = h.partitions as u64;
    assert_eq!(
        h.records(w),
        messages.len() as u64 + markers,
        "a message read twice"
    );
    let events = h.workers[w].metric("sshwarden_events_total") as usize;
    assert_eq!(events, traffic.fleet.events().len());
    assert_eq!(
        h.workers[w].metric_where("sshwarden_errors_total", "kind=\"decode\""),
        markers as f64,
        "decode errors: the end markers only"
    );
    h.log(format_args!(
        "{} commands for {} messages, {} events (first pass {} ids)",
        t2.by_id.len(),
        messages.len(),
        events,
        t.by_id.len()
    ));
}

/// Raw sshd lines, one per message, keyed by instance id, with the event
/// time as the message timestamp (`--kafka-format lines`): the same
/// commands as the payloads carry.
#[test]
fn attacks_in_raw_lines_keyed_by_instance_are_detected() {
    let mut h = Harness::new("lines", 2);
    let traffic = Traffic::brute_force(8, 4, traffic_start(10_000, 60_000), 150_000);
    let messages = traffic.lines();
    h.write(&messages);
    let w = h.spawn("solo", &["--kafka-format", "lines"]);
    h.wait_for_commands(&traffic.expected);
    h.read_lines_to_the_end(w, &[0, 0]);
    assert_eq!(
        h.records(w),
        messages.len() as u64 + h.partitions as u64,
        "every line (and end marker) read once"
    );
    let t = Tally::new(&traffic.expected, &h.outputs());
    t.assert_content(&traffic.expected, |_, _| false);
    for c in h.workers[w].commands() {
        assert_eq!(c["log_group"], format!("kafka:{}", h.topic).as_str(), "{c}");
        assert_eq!(c["log_stream"], c["instance_id"], "{c}");
        assert_eq!(
            c["held"], false,
            "an instance id from the key is quarantined: {c}"
        );
    }
    h.log(format_args!(
        "{} commands from {} lines",
        t.by_id.len(),
        messages.len()
    ));
}

/// A worker stops (SIGTERM) 12 s into a window, after committing; a new
/// worker in the same group resumes from the committed offsets: it reads
/// exactly the messages after them (none twice, none skipped), and the
/// thresholds crossed after the restart in windows that straddle it carry the
/// window's full counts (the window was rebuilt from the committed offset).
#[test]
fn a_restart_resumes_from_committed_offsets_without_losing_a_window() {
    restart(Harness::new("restart", 2), false);
}

/// The same on librdkafka's mock cluster, which keeps the metadata of an
/// offset commit (tansu 0.6 drops it): the event time committed with the
/// offsets reaches the next worker, which then leaves the windows the first
/// one had closed closed (no copy of a command with a closed window's tail).
#[test]
fn a_restart_carries_the_event_time_in_the_commit_metadata() {
    restart(Harness::on_mock("restart-mock", 2), true);
}

fn restart(mut h: Harness, broker_keeps_metadata: bool) {
    let start = traffic_start(32_000, 60_000);
    let boundary = start + 100_000;
    assert_eq!(boundary.rem_euclid(WINDOW_MS), 12_000);
    let traffic = Traffic::brute_force(21, 6, start, 150_000);
    let messages = traffic.payloads();
    let (before, after) = split_at(&messages, boundary);
    h.write(before);
    let first = h.spawn("first", &[]);
    // Every command of the messages before the stop.
    let mut written_to: HashMap<&str, i64> = HashMap::new();
    for m in before {
        let t = written_to.entry(m.key.as_str()).or_insert(i64::MIN);
        *t = (*t).max(m.timestamp_ms);
    }
    let before_stop = |e: &Expected| {
        written_to
            .get(e.instance.as_str())
            .is_some_and(|&t| e.crossing_ms <= t)
    };
    let early: Vec<Expected> = traffic
        .expected
        .iter()
        .filter(|e| before_stop(e))
        .cloned()
        .collect();
    h.wait_for_commands(&early);
    let d = Deadline::new("the first worker to read and commit", MAX_WAIT);
    loop {
        h.check_running();
        let read = h.records(first);
        let c = h.committed();
        if read == before.len() as u64 && c.iter().all(|&o| o > 0) {
            break;
        }
        d.check(|| format!("read {read} of {}, committed {c:?}", before.len()));
        pause(100);
    }
    h.workers[first].sigterm();
    let status = h.workers[first].wait_exit(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "the first worker did not exit cleanly on SIGTERM: {status:?}"
    );
    assert_eq!(
        h.workers[first].logs_with("final offsets committed").len(),
        1,
        "no final commit on SIGTERM"
    );
    let at_stop = h.committed();
    let resume_from: i64 = at_stop.iter().sum();
    h.log(format_args!(
        "first worker stopped after {} commands; committed {at_stop:?} of {} messages",
        h.workers[first].commands().len(),
        before.len()
    ));
    assert!(
        (resume_from as usize) < before.len(),
        "windows open at the stop must hold the commit back, committed {at_stop:?}"
    );
    let straddling: Vec<&Expected> = traffic
        .expected
        .iter()
        .filter(|e| e.window_start_ms < boundary && !before_stop(e))
        .collect();
    assert!(
        !straddling.is_empty(),
        "the traffic must cross a threshold after the stop in a window counted before it"
    );

    h.write(after);
    let second = h.spawn("second", &[]);
    h.wait_for_commands(&traffic.expected);
    let assigned = h.workers[second].logs_with("partition assigned");
    assert_eq!(assigned.len(), 2, "{assigned:?}");
    if broker_keeps_metadata {
        // The commits' metadata came back through the broker: the second
        // worker knows which windows the first one had closed.
        for l in &assigned {
            assert!(
                l["fields"]["event_time"]
                    .as_str()
                    .is_some_and(|t| t.starts_with("Some(")),
                "no event time in the committed metadata: {l}"
            );
        }
    }
    // The messages from the committed offsets on, and an end marker per
    // partition.
    let total = messages.len() as u64 + h.partitions as u64;
    let expect_read = total - resume_from as u64;
    h.read_to_the_end(&[second]);
    assert_eq!(
        h.records(second),
        expect_read,
        "the second worker must read exactly the messages from the committed offsets on"
    );
    let t = Tally::new(&traffic.expected, &h.outputs());
    t.assert_content(&traffic.expected, |w, id| {
        !broker_keeps_metadata && w == second && t.correct_from(id, first) == 1
    });
    for e in &straddling {
        assert_eq!(
            t.correct_from(&e.id, second),
            1,
            "{} not issued after the restart with the window's full counts",
            e.id
        );
    }
    h.log(format_args!(
        "second worker read {expect_read} messages from {at_stop:?}; {} thresholds after the restart with full counts; {} repeats of closed windows",
        straddling.len(),
        t.partial.len()
    ));
}

/// Two workers in one group on a 4-partition topic: the second one's
/// arrival rebalances the partitions 2 + 2, each reader resumes from the
/// committed offsets, and every command comes out with its full counts;
/// when the second leaves (SIGTERM) the first takes all four back.
#[test]
fn a_rebalance_between_two_workers_loses_no_window() {
    let mut h = Harness::new("rebalance", 4);
    let start = traffic_start(32_000, 60_000);
    let boundary = start + 100_000;
    let traffic = Traffic::brute_force(33, 8, start, 150_000);
    let messages = traffic.payloads();
    let (before, after) = split_at(&messages, boundary);
    let a = h.spawn("a", &[]);
    h.wait_assigned(&[a], &[4]);
    h.write(before);
    let d = Deadline::new("worker a to read the first part", MAX_WAIT);
    while h.records(a) < before.len() as u64 {
        h.check_running();
        d.check(|| format!("read {} of {}", h.records(a), before.len()));
        pause(100);
    }
    let b = h.spawn("b", &[]);
    h.wait_assigned(&[a, b], &[2, 2]);
    h.write(after);
    h.wait_for_commands(&traffic.expected);
    h.read_to_the_end(&[a, b]);
    let t = Tally::new(&traffic.expected, &h.outputs());
    // A copy with a closed window's tail only repeats a command already delivered in full.
    t.assert_content(&traffic.expected, |_, id| {
        t.correct
            .get(id)
            .is_some_and(|v| v.iter().sum::<usize>() >= 1)
    });
    let assigned_b = h.workers[b].logs_with("partition assigned").len();
    assert!(assigned_b >= 2, "b logged {assigned_b} assignments");
    let revoked_a = h.workers[a].logs_with("partitions revoked").len();
    assert!(revoked_a >= 1, "a never gave partitions up");

    h.workers[b].sigterm();
    let status = h.workers[b].wait_exit(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "b: {status:?}");
    h.wait_assigned(&[a], &[4]);
    h.log(format_args!(
        "{} commands; a and b shared 2 + 2, then a took all 4 back; {} repeats",
        t.by_id.len(),
        t.partial.len()
    ));
}

/// Corrupt messages among good ones (a truncated gzip member, gzip of
/// non-JSON, a JSON object that is no envelope, empty bytes with the gzip
/// magic): each is counted and skipped, the good ones around them are
/// counted whole, and the committed offset moves past them.
#[test]
fn poison_messages_are_counted_and_skipped() {
    let mut h = Harness::new("poison", 1);
    let traffic = Traffic::brute_force(44, 3, traffic_start(10_000, 90_000), 120_000);
    let mut messages = traffic.payloads();
    let truncated = {
        let good = &messages[0].payload;
        good[..good.len() / 2].to_vec()
    };
    let gzip_text = {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        enc.write_all(b"not json at all").unwrap();
        enc.finish().unwrap()
    };
    let poison: Vec<Vec<u8>> = vec![
        truncated,
        gzip_text,
        b"{\"hello\": \"world\"}".to_vec(),
        vec![0x1f, 0x8b],
    ];
    let n_poison = poison.len();
    // Spread over the first third, each keyed like the traffic.
    let stride = messages.len() / 3 / n_poison;
    for (i, p) in poison.into_iter().enumerate() {
        let at = 1 + i * (stride + 1);
        let m = Outgoing {
            key: messages[at].key.clone(),
            payload: p,
            timestamp_ms: messages[at].timestamp_ms,
        };
        messages.insert(at, m);
    }
    h.write(&messages);
    let w = h.spawn("solo", &[]);
    h.wait_for_commands(&traffic.expected);
    h.read_to_the_end_past(&[w], n_poison);
    let t = Tally::new(&traffic.expected, &h.outputs());
    t.assert_content(&traffic.expected, |_, _| false);
    // The end marker is one more undecodable message.
    assert_eq!(
        h.records(w),
        messages.len() as u64 + 1,
        "a message read twice"
    );
    let errors = h.workers[w].metric_where("sshwarden_errors_total", "kind=\"decode\"");
    assert_eq!(errors as usize, n_poison + 1, "decode errors counted");
    let skipped = h.workers[w].logs_with("message skipped").len();
    assert_eq!(
        skipped,
        n_poison + 1,
        "each poison message (and the end marker) logged once"
    );
    let last_poison = 1 + (n_poison - 1) * (stride + 1);
    let d = Deadline::new("the commit to pass the poison messages", MAX_WAIT);
    loop {
        let c = h.committed();
        if c[0] > last_poison as i64 {
            h.log(format_args!(
                "{n_poison} poison messages skipped; committed {c:?} of {}",
                messages.len()
            ));
            break;
        }
        h.check_running();
        d.check(|| format!("committed {c:?}, last poison at offset {last_poison}"));
        pause(200);
    }
    let ids: BTreeSet<&String> = t.by_id.keys().collect();
    assert_eq!(ids.len(), traffic.expected.len());
}

/// Step Functions unreachable: the first command's delivery is retried
/// (with backoff) and holds its partition. The reader's queue fills, the
/// partition is paused (backpressure), the worker stays in the group past
/// the session timeout (the poll thread keeps polling), and the commit never
/// passes the message whose command is undelivered. SIGTERM abandons the
/// retry and exits cleanly; the next worker re-derives the command (same
/// id) with its full counts: nothing is lost.
#[test]
fn a_sink_outage_holds_the_commit_and_pauses_the_partition() {
    let mut h = Harness::new("outage", 1);
    let traffic = Traffic::brute_force(55, 2, traffic_start(10_000, 60_000), 150_000);
    let messages = traffic.lines();
    let first = traffic
        .expected
        .iter()
        .min_by_key(|e| e.crossing_ms)
        .expect("an expected command");
    let crossing = messages
        .iter()
        .position(|m| m.key == first.instance && m.timestamp_ms == first.crossing_ms)
        .expect("the crossing line") as i64;
    assert!(
        messages.len() as i64 - crossing > 2 * 256,
        "enough messages after the first command to fill the reader's queue"
    );
    h.write(&messages);
    let stuck = h.spawn_env(
        "stuck",
        &[
            "--kafka-format",
            "lines",
            "--sink",
            "sfn",
            "--state-machine-arn",
            "arn:aws:states:us-east-1:123456789012:stateMachine:sshwarden-quarantine",
        ],
        &[
            ("AWS_ENDPOINT_URL", "http://127.0.0.1:1"),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    let d = Deadline::new("failed deliveries and a paused partition", MAX_WAIT);
    loop {
        h.check_running();
        let w = &h.workers[stuck];
        let (failures, pauses) = (
            w.metric("sshwarden_command_failures_total"),
            w.metric("sshwarden_kafka_pauses_total"),
        );
        if failures >= 2.0 && pauses >= 1.0 {
            break;
        }
        d.check(|| format!("failures {failures}, pauses {pauses}"));
        pause(100);
    }
    // Still a member, still held, at every look for longer than the
    // session timeout (6 s): the claim is about a span of time (a member
    // that stopped polling would be evicted within it), so this one wait is
    // for a time, and the facts are checked all along it.
    let held_since = Instant::now();
    while held_since.elapsed() < Duration::from_millis(7_000) {
        h.check_running();
        let w = &h.workers[stuck];
        let at = held_since.elapsed();
        assert_eq!(
            w.metric("sshwarden_kafka_partitions_assigned"),
            1.0,
            "unassigned {at:?} into the outage"
        );
        assert!(
            w.logs_with("partitions revoked").is_empty(),
            "left the group {at:?} into the outage"
        );
        assert_eq!(w.metric("sshwarden_commands_pending"), 1.0, "at {at:?}");
        assert_eq!(w.metric("sshwarden_commands_total"), 0.0, "at {at:?}");
        poll();
    }
    let read = h.records(stuck);
    assert!(
        read <= crossing as u64 + 1 + 256,
        "read {read}: more than the undelivered message and a queue behind it"
    );
    let held = h.committed()[0];
    assert!(
        held <= crossing,
        "committed {held}, past the message at {crossing} whose command is undelivered"
    );
    h.workers[stuck].sigterm();
    let status = h.workers[stuck].wait_exit(Duration::from_secs(20));
    assert!(status.is_some_and(|s| s.success()), "stuck: {status:?}");
    let after_stop = h.committed()[0];
    assert!(
        after_stop <= crossing,
        "final commit {after_stop} past {crossing}"
    );
    h.log(format_args!(
        "stuck worker read {read} of {} messages, paused, committed {after_stop} (command at {crossing})",
        messages.len()
    ));

    let next = h.spawn("next", &["--kafka-format", "lines"]);
    h.wait_for_commands(&traffic.expected);
    h.read_lines_to_the_end(next, &[after_stop]);
    let t = Tally::new(&traffic.expected, &h.outputs());
    t.assert_content(&traffic.expected, |_, _| false);
    assert_eq!(t.correct_from(&first.id, next), 1, "{} lost", first.id);
}

/// Two workers share four partitions; one is killed with SIGKILL (no final
/// commit, no leave): after the session timeout the survivor is assigned
/// all four, resumes the victim's partitions from their last periodic
/// commits, and every command comes out with its full counts.
#[test]
fn kill_nine_the_survivor_takes_over_without_losing_a_window() {
    let mut h = Harness::new("kill9", 4);
    let start = traffic_start(32_000, 60_000);
    let boundary = start + 100_000;
    let traffic = Traffic::brute_force(66, 8, start, 150_000);
    let messages = traffic.payloads();
    let (before, after) = split_at(&messages, boundary);
    let survivor = h.spawn("survivor", &[]);
    let victim = h.spawn("victim", &[]);
    h.wait_assigned(&[survivor, victim], &[2, 2]);
    h.write(before);
    let d = Deadline::new("both workers to read the first part", MAX_WAIT);
    loop {
        h.check_running();
        let read = h.records(survivor) + h.records(victim);
        let committed = h.committed();
        if read >= before.len() as u64 && committed.iter().all(|&c| c > 0) {
            break;
        }
        d.check(|| format!("read {read} of {}, committed {committed:?}", before.len()));
        pause(100);
    }
    let at_kill = h.committed();
    let w = &mut h.workers[victim];
    w.child.kill().expect("SIGKILL");
    w.status = Some(w.child.wait().expect("wait"));
    let killed = Instant::now();
    h.log(format_args!("killed the victim; committed {at_kill:?}"));
    h.write(after);
    h.wait_assigned(&[survivor], &[4]);
    h.log(format_args!(
        "the survivor holds all four partitions {:.1?} after the kill",
        killed.elapsed()
    ));
    h.wait_for_commands(&traffic.expected);
    h.read_to_the_end(&[survivor]);
    let t = Tally::new(&traffic.expected, &h.outputs());
    t.assert_content(&traffic.expected, |_, id| {
        t.correct
            .get(id)
            .is_some_and(|v| v.iter().sum::<usize>() >= 1)
    });
    for (id, n) in &t.by_id {
        assert!(n[victim] <= 1, "the victim issued {id} {} times", n[victim]);
    }
    h.log(format_args!(
        "{} commands, {} copies with a closed window's tail (same id as a whole one)",
        t.by_id.len(),
        t.partial.len()
    ));
}
