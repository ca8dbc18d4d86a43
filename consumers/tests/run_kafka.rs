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
//! and stderr are printed. No test sleeps to synchronise: a check that
//! nothing more will come first waits until the readers counted an end
//! marker written after the traffic to every partition. The harness is in
//! common/kafka.rs.

#![cfg(feature = "kafka")]

use std::collections::{BTreeSet, HashMap};
use std::io::Write;
use std::time::{Duration, Instant};

use sshwarden_loadgen::kafka::Outgoing;

mod common;
use common::kafka::*;
use common::*;

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
    t.assert_whole_from(&straddling, second, "after the restart");
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

/// Step Functions unreachable: every command's delivery is retried (with
/// backoff) from the reader's outbox while the reader reads on: the whole
/// partition is read and every command detected (a sink outage does not
/// stop detection, #16 finding 7), the worker stays in the group past the
/// session timeout, and the commit never passes the message whose command
/// is undelivered. SIGTERM abandons the retries and exits cleanly; the next
/// worker re-derives the commands (same ids) with their full counts:
/// nothing is lost.
#[test]
fn a_sink_outage_holds_the_commit_while_the_partition_is_read_on() {
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
    let commands = traffic.expected.len() as f64;
    assert!(
        messages.len() as i64 - crossing > 2 * 256,
        "enough messages after the first command that a reader stuck on it would stop reading"
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
    let d = Deadline::new(
        "failed deliveries, every message read, every command waiting",
        MAX_WAIT,
    );
    loop {
        h.check_running();
        let w = &h.workers[stuck];
        let (failures, pending) = (
            w.metric("sshwarden_command_failures_total"),
            w.metric("sshwarden_commands_pending"),
        );
        let read = h.records(stuck);
        if failures >= 2.0 && read >= messages.len() as u64 && pending == commands {
            break;
        }
        d.check(|| {
            format!(
                "failures {failures}, read {read} of {}, pending {pending} of {commands}",
                messages.len()
            )
        });
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
        assert_eq!(
            w.metric("sshwarden_commands_pending"),
            commands,
            "at {at:?}"
        );
        assert_eq!(w.metric("sshwarden_commands_total"), 0.0, "at {at:?}");
        poll();
    }
    let read = h.records(stuck);
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
        "stuck worker read {read} of {} messages with {commands} commands waiting, committed {after_stop} (command at {crossing})",
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
