//! The fleet stage on the Kafka source: separate `sshwarden run --source
//! kafka` processes read an 8-partition topic of logs on the project's Kafka
//! test broker (tansu on 127.0.0.1), send their partitions' partials to a
//! second topic keyed by source network (`--fleet-topic`), and read that
//! topic too, in a consumer group of its own (`<group>-fleet`), to merge
//! them fleet-wide: the Kinesis spray case of run_fleet.rs, on Kafka, and
//! a kill -9 of a worker after it.
//!
//! Start the broker first: `scripts/emulators up kafka`. The test fails
//! (never skips) when it does not answer. Every wait is bounded and waits for
//! a fact: a command, or the fleet stage having merged every partial written.

#![cfg(feature = "kafka")]

use std::collections::BTreeSet;
use std::time::Duration;

use rdkafka::producer::{BaseProducer, BaseRecord, Producer};
use rdkafka::ClientConfig;
use serde_json::Value;
use sshwarden_loadgen::encode::{encode_batch, RecordOptions};
use sshwarden_loadgen::GeneratedEvent;

mod common;
use common::fleet::{failed, fleet_commands, one_fleet_spray, shard_commands};
use common::kafka::*;
use common::*;

const PARTITIONS: i32 = 8;

/// One subscription payload per event, keyed by its instance, written to
/// partition `instance % PARTITIONS`: every partition holds the same number
/// of instances (the key alone would leave the spread to the partitioner).
fn write_spread(brokers: &str, topic: &str, events: &[(usize, GeneratedEvent)]) {
    let producer: BaseProducer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .expect("producer");
    let opts = RecordOptions::default();
    for (i, e) in events {
        let r = encode_batch(&[e], &opts);
        let partition = (*i as i32) % PARTITIONS;
        producer
            .send(
                BaseRecord::to(topic)
                    .partition(partition)
                    .key(r.log_stream.as_bytes())
                    .payload(&r.data)
                    .timestamp(r.last_time_ms),
            )
            .unwrap_or_else(|(e, _)| panic!("producing to {topic}/{partition}: {e}"));
    }
    producer
        .flush(Duration::from_secs(30))
        .unwrap_or_else(|e| panic!("flushing to {topic}: {e}"));
}

/// One address guesses once on each of 40 instances, 5 on each of the 8
/// partitions of the topic of logs: no partition sees a spray (10
/// instances), the fleet does. Two worker processes, each running both
/// stages; the spray fires once (one command id), blocking the address,
/// with the distinct instances it counted among the 40.
#[test]
fn a_spray_over_forty_instances_fires_once_fleet_wide_on_kafka_across_two_workers() {
    spray_fires_once("fleet-spray");
}

/// The spray of [`spray_fires_once`], then a kill -9 of one of the two
/// workers: the survivor takes both groups' partitions over, replays the
/// victim's partitions of logs (their engines rebuild the same partials,
/// under the same ids, which its fleet stage drops as duplicates) and
/// re-merges the partials from the committed offsets. Every fleet command
/// keeps one id, and the spray fires under its one id.
#[test]
fn kill_nine_after_the_spray_replays_partials_and_changes_no_fleet_command_on_kafka() {
    let (mut h, src) = spray_fires_once("fleet-kill9");
    let before = fleet_commands(&h.outputs());
    let (victim, survivor) = (0, 1);
    let victim_written = h.workers[victim].metric("sshwarden_partials_written_total");
    let survivor_written = h.workers[survivor].metric("sshwarden_partials_written_total");
    h.workers[victim].kill9();
    h.log(format_args!(
        "killed w0, which had written {victim_written} partials"
    ));
    h.wait_assigned(&[survivor], &[PARTITIONS as usize]);
    // The fact that the replay is over: the survivor rewrote the partials
    // of the victim's partitions (4 of them, one early partial each), and
    // its fleet stage has merged every partial in the topic (which it now
    // reads whole: the commits stay before the partials still merged).
    let d = Deadline::new("the survivor to replay and merge every partial", MAX_WAIT);
    let (written, merged, duplicates) = loop {
        h.check_running();
        let w = &h.workers[survivor];
        let written = w.metric("sshwarden_partials_written_total");
        let merged = w.metric_where("sshwarden_fleet_stage", "kind=\"partials\"");
        let duplicates = w.metric_where("sshwarden_fleet_stage", "kind=\"duplicates\"");
        if written >= survivor_written + 4.0 && merged >= victim_written + written {
            break (written, merged, duplicates);
        }
        d.check(|| {
            format!(
                "the survivor wrote {written} (had {survivor_written}), merged {merged} of {}",
                victim_written + written
            )
        });
        poll();
    };
    let after = fleet_commands(&h.outputs());
    h.log(format_args!(
        "the survivor wrote {written} partials, merged {merged} ({duplicates} duplicates); fleet commands {after:?}"
    ));
    assert!(
        duplicates >= 4.0,
        "the rebuilt partials carry the ids of those already merged: {duplicates} duplicates"
    );
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>(),
        "the replay fired no other fleet rule"
    );
    assert!(
        after.values().all(|&n| n == 1),
        "each fleet rule under one id: {after:?}"
    );
    assert_eq!(
        after.get(&("fleet-spray".to_owned(), format!("{src}/32"))),
        Some(&1)
    );
}

/// The spray case, checked; hands back the harness (both workers still
/// running) and the spraying address.
fn spray_fires_once(label: &str) -> (Harness, &'static str) {
    let mut h = Harness::new(label, PARTITIONS);
    let partials = format!("{}-partials", h.topic);
    create_topic(&h.brokers, &partials, 2);
    h.policy = "graduated";
    let fleet_args = ["--fleet-topic", partials.as_str()];
    let workers = [h.spawn("w0", &fleet_args), h.spawn("w1", &fleet_args)];
    h.wait_assigned(&workers, &[4, 4]);

    // Half a second apart, stamped near now: a caught-up partition's idle
    // clock has already closed older windows.
    let start = traffic_start(20_000, 30_000);
    let src = "198.51.100.7";
    let events: Vec<(usize, GeneratedEvent)> = (0..40)
        .map(|i| (i, failed(i, start + i as i64 * 500, src, i)))
        .collect();
    write_spread(&h.brokers, &h.topic, &events);
    h.log(format_args!(
        "wrote {} payloads to {PARTITIONS} partitions of {}",
        events.len(),
        h.topic
    ));

    let spray = ("fleet-spray".to_owned(), format!("{src}/32"));
    let d = Deadline::new("the fleet stage's spray command", MAX_WAIT);
    while !fleet_commands(&h.outputs()).contains_key(&spray) {
        h.check_running();
        d.check(|| format!("fleet commands so far: {:?}", fleet_commands(&h.outputs())));
        poll();
    }
    // A rule fires once per window whatever comes later: wait until every
    // partition of logs has written its partials (its 5 instances reach
    // half of the spray's threshold: the early send), under its
    // topic/partition, and every partial written has been merged.
    let want: BTreeSet<String> = (0..PARTITIONS).map(|p| h.partition_label(p)).collect();
    let d = Deadline::new(
        "every partition's partials to be written and merged",
        MAX_WAIT,
    );
    let (written, merged, page) = loop {
        let page = h
            .workers
            .iter()
            .map(Worker::metrics)
            .collect::<Vec<_>>()
            .join("\n");
        let writers = samples_by_shard(&page, "sshwarden_partials_written_total", &[]);
        let written = sample_sum(&page, "sshwarden_partials_written_total", &[]);
        let merged = sample_sum(&page, "sshwarden_fleet_stage", &["kind=\"partials\""]);
        let all: BTreeSet<String> = writers.keys().cloned().collect();
        if all == want && merged >= written {
            break (written, merged, page);
        }
        assert!(
            all.is_subset(&want),
            "partials written by a partition that is not the topic's: {writers:?}"
        );
        h.check_running();
        d.check(|| format!("{merged} of {written} partials merged; written by {writers:?}"));
        poll();
    };
    let outputs = h.outputs();
    h.log(format_args!(
        "{written} partials written, {merged} merged; fleet commands {:?}; shard commands {:?}",
        fleet_commands(&outputs),
        shard_commands(&outputs)
    ));
    assert!(
        sample_sum(&page, "sshwarden_partial_bytes_total", &[]) > 0.0,
        "partial bytes counted"
    );
    let c = one_fleet_spray(&outputs, src, "partition");
    h.log(format_args!("the spray command: {c}"));
    let distinct = c["distinct"]["instances"].as_u64().unwrap_or_default();
    assert!(
        (10..=40).contains(&distinct),
        "the spray counts at least its threshold and at most the 40 instances tried: {c}"
    );
    // One guess per instance: as many failures as distinct instances (no
    // partial merged twice), and the instances it names (the first 16) are
    // ones the address tried, each once.
    assert_eq!(c["counts"]["auth_failure"].as_u64(), Some(distinct), "{c}");
    let tried: BTreeSet<String> = events.iter().map(|(_, e)| e.instance.clone()).collect();
    let named: Vec<&str> = c["instances"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let unique: BTreeSet<&str> = named.iter().copied().collect();
    assert_eq!(
        named.len() as u64,
        distinct.min(16),
        "the command names its instances: {c}"
    );
    assert_eq!(unique.len(), named.len(), "an instance named twice: {c}");
    assert!(
        unique.iter().all(|i| tried.contains(*i)),
        "an instance the address did not try: {c}"
    );
    // The fleet stage's counters are labelled fleet:<topic of partials>/<partition>.
    let stage = samples_by_shard(&page, "sshwarden_fleet_stage", &["kind=\"partials\""]);
    assert!(
        !stage.is_empty()
            && stage
                .keys()
                .all(|k| k.starts_with(&format!("fleet:{partials}/"))),
        "{stage:?}"
    );
    (h, src)
}
