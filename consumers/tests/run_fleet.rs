//! The fleet stage in the service: separate `sshwarden run` processes read
//! an 8-shard stream of logs on kinesis-local (leases on moto), send their
//! shards' partials to a second stream keyed by source network, and read
//! that stream too (its own lease table) to merge them fleet-wide.
//!
//! Start the emulators first: `scripts/emulators up`. A test fails (never
//! skips) when one is not reachable. Every wait is bounded and waits for a
//! fact: a command, or the fleet stage having merged every partial written.

use std::collections::BTreeSet;

use serde_json::Value;
use sshwarden_loadgen::encode::{encode_batch, RecordOptions};
use sshwarden_loadgen::{GeneratedEvent, SubscriptionRecord};

mod common;
use common::fleet::{failed, fleet_commands, one_fleet_spray, shard_commands};
use common::kinesis::*;
use common::*;

/// A second stream (the partials), deleted when dropped.
struct PartialsStream {
    name: String,
    table: String,
    _cleanup: Cleanup,
}

async fn partials_stream(h: &Harness, shards: i32) -> PartialsStream {
    let name = format!("{}-partials", h.stream);
    let table = format!("{}-fleet", h.table);
    let cleanup = Cleanup {
        env: h.env.clone(),
        stream: name.clone(),
        table: table.clone(),
    };
    h.kinesis
        .create_stream()
        .stream_name(&name)
        .shard_count(shards)
        .send()
        .await
        .unwrap_or_else(|e| {
            panic!(
                "CreateStream {name}: {}",
                aws_sdk_kinesis::error::DisplayErrorContext(&e)
            )
        });
    wait_stream_active(&h.kinesis, &name).await;
    PartialsStream {
        name,
        table,
        _cleanup: cleanup,
    }
}

/// One record per event, so each lands in its instance's shard.
fn records(events: &[GeneratedEvent]) -> Vec<SubscriptionRecord> {
    let opts = RecordOptions::default();
    events.iter().map(|e| encode_batch(&[e], &opts)).collect()
}

/// `shares.len()` workers with the fleet stage on an 8-shard stream of
/// logs and a 2-shard stream of partials, balanced as `shares`.
async fn fleet_harness(
    label: &str,
    shares: &[usize],
    config_extra: &'static str,
) -> (Harness, PartialsStream) {
    let mut h = Harness::new(label, 8).await;
    let partials = partials_stream(&h, 2).await;
    h.policy = "graduated";
    h.config_extra = config_extra;
    let fleet_args = [
        "--fleet-stream",
        partials.name.as_str(),
        "--fleet-lease-table",
        partials.table.as_str(),
    ];
    for i in 0..shares.len() {
        h.spawn_with(
            &format!("w{i}"),
            &Spawn {
                args: &fleet_args,
                ..Spawn::default()
            },
        );
    }
    h.wait_balanced(8, shares).await;
    (h, partials)
}

/// Waits until every partial written so far has been merged: what was sent
/// has been judged (windows still open send their final partials later).
async fn wait_partials_merged(h: &mut Harness) {
    let d = Deadline::new("every partial written to be merged", MAX_WAIT);
    loop {
        let sum = |f: &dyn Fn(&Worker) -> f64| h.workers.iter().map(f).sum::<f64>();
        let written = sum(&|w| w.metric("sshwarden_partials_written_total"));
        let merged = sum(&|w| w.metric_where("sshwarden_fleet_stage", "kind=\"partials\""));
        if written > 0.0 && merged >= written {
            return;
        }
        h.check_running();
        d.check(|| format!("{merged} of {written} partials merged"));
        poll().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spray_over_forty_instances_fires_once_fleet_wide_across_two_workers() {
    spray_fires_once("fleet-spray", &[4, 4]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spray_over_forty_instances_fires_once_fleet_wide_across_three_workers() {
    spray_fires_once("fleet-spray3", &[3, 3, 2]).await;
}

async fn spray_fires_once(label: &str, shares: &[usize]) {
    let (mut h, _partials) = fleet_harness(label, shares, "").await;

    // One guess on each of 40 instances, half a second apart, from one
    // address: no shard sees 10 instances (the spray), the fleet does.
    // Traffic is stamped near now: a caught-up shard's idle clock has
    // already closed older windows.
    let start = traffic_start(20_000, 30_000);
    let src = "198.51.100.7";
    let events: Vec<_> = (0..40)
        .map(|i| failed(i, start + i as i64 * 500, src, i))
        .collect();
    let recs = records(&events);
    let landed = h.put(&recs).await;
    h.log(format_args!(
        "wrote {} records to {} shards",
        recs.len(),
        landed.iter().collect::<BTreeSet<_>>().len(),
    ));
    let spray = ("fleet-spray".to_owned(), format!("{src}/32"));
    let d = Deadline::new("the fleet stage's spray command", MAX_WAIT);
    while !fleet_commands(&h.outputs()).contains_key(&spray) {
        h.check_running();
        d.check(|| format!("fleet commands so far: {:?}", fleet_commands(&h.outputs())));
        poll().await;
    }
    // A rule fires once per window whatever comes later.
    wait_partials_merged(&mut h).await;
    let outputs = h.outputs();
    h.log(format_args!(
        "fleet commands {:?}; shard commands {:?}",
        fleet_commands(&outputs),
        shard_commands(&outputs)
    ));
    // A shard that alone saw 5 guesses blocks the address itself (the
    // brute force); none saw 10 instances.
    let c = one_fleet_spray(&outputs, src, "shard");
    assert!(c["distinct"]["instances"].as_u64().unwrap() >= 10, "{c}");
}

/// The owner of the (one) lease of the stream of partials.
async fn partials_owner(h: &Harness, table: &str) -> Option<String> {
    let out = h
        .dynamo
        .scan()
        .table_name(table)
        .consistent_read(true)
        .send()
        .await
        .ok()?;
    out.items()
        .iter()
        .find_map(|i| i.get("leaseOwner").and_then(|v| v.as_s().ok()).cloned())
}

/// `n` instances whose records land on `n` different shards, avoiding `taken`.
fn on_distinct_shards(
    ranges: &[sshwarden_loadgen::writer::kinesis::HashRange],
    from: usize,
    n: usize,
    taken: &mut BTreeSet<usize>,
) -> Vec<usize> {
    let mut picked = Vec::new();
    for i in from.. {
        if picked.len() == n {
            break;
        }
        let shard = sshwarden_loadgen::writer::kinesis::shard_index(ranges, &format!("i-{i:017x}"));
        if taken.insert(shard) {
            picked.push(i);
        }
        assert!(i < from + 10_000, "no instance found for a free shard");
    }
    picked
}

/// kill -9 of the worker that runs the fleet stage, after it merged the
/// first half of a spray and issued a fleet command from it: the survivor
/// takes the stream of partials over, replays what the victim merged, and
/// the second half (in the next partial window) completes the spray, which
/// only adds up with the first half. Every fleet command is issued under one
/// id (a command repeated by the replay has the same id).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_of_the_fleet_stage_loses_no_partial_and_changes_no_command_id() {
    spray_in_two_halves("fleet-kill9", Disturbance::KillNine).await;
}

/// The same with the stream of partials split in two between the halves:
/// the parent's reader ends, both children replay what it still held, and
/// the child that receives the second half completes the spray.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_of_the_stream_of_partials_loses_no_partial_and_changes_no_command_id() {
    spray_in_two_halves("fleet-split", Disturbance::SplitPartials).await;
}

/// The same with the stream of logs split between the halves, at the shard
/// that holds one instance of the first half: the parent sends its
/// partials (the early one replaced by its last) before it is marked
/// finished, and its children replay its records for their windows without
/// building partials from them, so that instance's guesses count once
/// fleet-wide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_of_the_stream_of_logs_counts_each_guess_once_fleet_wide() {
    spray_in_two_halves("fleet-logsplit", Disturbance::SplitLogs).await;
}

/// The same split of the stream of logs, with every write of partials
/// failing from just before the split until the parent shard's own final
/// write has failed twice: the parent is not marked finished while its
/// partials are unwritten, it retries them, and once writes succeed they
/// arrive and each guess still counts once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_of_the_stream_of_logs_retries_the_final_partials_it_failed_to_write() {
    spray_in_two_halves("fleet-logsplit-fail", Disturbance::SplitLogsFailingWrites).await;
}

enum Disturbance {
    KillNine,
    SplitPartials,
    SplitLogs,
    SplitLogsFailingWrites,
}

impl Disturbance {
    fn splits_logs(&self) -> bool {
        matches!(
            self,
            Disturbance::SplitLogs | Disturbance::SplitLogsFailingWrites
        )
    }
}

async fn spray_in_two_halves(label: &str, disturbance: Disturbance) {
    let mut h = Harness::new(label, 8).await;
    let partials = partials_stream(&h, 1).await;
    h.policy = "graduated";
    // One-minute partial windows: the second half opens new partials.
    h.config_extra = "[fleet]\npartial_window_secs = 60\n";
    let fleet_args = [
        "--fleet-stream",
        partials.name.as_str(),
        "--fleet-lease-table",
        partials.table.as_str(),
    ];
    // Writes of partials fail while this file exists.
    let flag = h.dir.path().join("fail-partial-writes");
    let proxy = matches!(disturbance, Disturbance::SplitLogsFailingWrites).then(|| {
        FaultProxy::start_with(
            &h,
            &serde_json::json!([{
                "target": "PutRecords",
                "while_exists": flag.display().to_string(),
                "fault": "internal",
            }]),
            &["--log-entries"],
        )
    });
    for w in ["w0", "w1"] {
        h.spawn_with(
            w,
            &Spawn {
                args: &fleet_args,
                kinesis: proxy.as_ref().map(|p| p.endpoint.as_str()),
                ..Spawn::default()
            },
        );
    }
    h.wait_balanced(8, &[4, 4]).await;
    let ranges = sshwarden_loadgen::writer::kinesis::hash_ranges(&h.kinesis, &h.stream)
        .await
        .unwrap();
    let src = "203.0.113.77";
    // Three guesses each (a shard's early send: half of brute force's 5).
    let mut taken = BTreeSet::new();
    let first = on_distinct_shards(&ranges, 0, 6, &mut taken);
    let mut taken = BTreeSet::new();
    let second = on_distinct_shards(&ranges, 1_000, 5, &mut taken);
    // The first half in one minute, the second in the next, both in one
    // 10-minute window (so in one window of every fleet rule): the minute
    // before this one, unless this one starts a 10-minute window; then this
    // one and the next (ahead of the clock by less than the 300 s allowed).
    let this_minute = now_ms().div_euclid(60_000) * 60_000;
    let first_minute = if this_minute % 600_000 == 0 {
        this_minute
    } else {
        this_minute - 60_000
    };
    let start = first_minute + 5_000;
    let guesses = |instances: &[usize], t0: i64, base: usize| -> Vec<GeneratedEvent> {
        instances
            .iter()
            .enumerate()
            .flat_map(|(k, &i)| {
                (0..3).map(move |g| failed(i, t0 + (k * 3 + g) as i64 * 100, src, base + k * 3 + g))
            })
            .collect()
    };
    let first_events = guesses(&first, start, 0);
    h.put(&records(&first_events)).await;
    let ids_of = |outputs: &[Vec<Value>], rule: &str| -> BTreeSet<String> {
        outputs
            .iter()
            .flatten()
            .filter(|c| c["rule"] == rule)
            .map(|c| c["id"].as_str().unwrap_or_default().to_owned())
            .collect()
    };
    // The fact to kill on: the owner of the stream of partials merged the
    // six early partials of the first half and issued a command from them.
    let d = Deadline::new("the fleet stage to merge the first half", MAX_WAIT);
    let (victim, merged) = loop {
        h.check_running();
        let owner = partials_owner(&h, &partials.table).await;
        let holder = owner.and_then(|o| h.workers.iter().position(|w| w.id == o));
        let merged = holder.map_or(0.0, |w| {
            h.workers[w].metric_where("sshwarden_fleet_stage", "kind=\"partials\"")
        });
        if let Some(w) = holder {
            if merged >= 6.0 && !ids_of(&h.outputs(), "fleet-brute-force").is_empty() {
                break (w, merged);
            }
        }
        d.check(|| {
            format!(
                "merged {merged}; fleet commands: {:?}",
                fleet_commands(&h.outputs())
            )
        });
        poll().await;
    };
    assert!(
        ids_of(&h.outputs(), "fleet-spray").is_empty(),
        "6 instances are not a spray yet"
    );
    match disturbance {
        Disturbance::KillNine => {
            let victim_id = h.workers[victim].id.clone();
            h.workers[victim].kill9();
            h.log(format_args!(
                "killed {victim_id}, which had merged {merged} partials"
            ));
        }
        Disturbance::SplitPartials => {
            let shards = h
                .kinesis
                .list_shards()
                .stream_name(&partials.name)
                .send()
                .await
                .expect("ListShards");
            let parent = shards.shards()[0].clone();
            let range = parent.hash_key_range().expect("hash key range");
            let lo: u128 = range.starting_hash_key().parse().unwrap();
            let hi: u128 = range.ending_hash_key().parse().unwrap();
            h.kinesis
                .split_shard()
                .stream_name(&partials.name)
                .shard_to_split(parent.shard_id())
                .new_starting_hash_key((lo + (hi - lo) / 2).to_string())
                .send()
                .await
                .expect("SplitShard");
            wait_stream_active(&h.kinesis, &partials.name).await;
            h.log(format_args!(
                "split {} after {merged} partials were merged",
                parent.shard_id()
            ));
        }
        Disturbance::SplitLogs | Disturbance::SplitLogsFailingWrites => {
            if proxy.is_some() {
                // A fourth guess on the parent's instance, after its early
                // send: the parent holds a changed partial when it ends,
                // which it must write before it is marked finished.
                h.put(&records(&[failed(first[0], start + 2_000, src, 999)]))
                    .await;
                std::fs::write(&flag, b"").expect("the flag that fails writes");
            }
            let parent = ranges[sshwarden_loadgen::writer::kinesis::shard_index(
                &ranges,
                &format!("i-{:017x}", first[0]),
            )];
            let shards = h
                .kinesis
                .list_shards()
                .stream_name(&h.stream)
                .send()
                .await
                .expect("ListShards");
            let shard = shards
                .shards()
                .iter()
                .find(|s| {
                    s.hash_key_range().is_some_and(|r| {
                        r.starting_hash_key().parse::<u128>().ok() == Some(parent.start)
                    })
                })
                .expect("the shard of the first instance")
                .clone();
            let mid = parent.start + (parent.end - parent.start) / 2;
            h.kinesis
                .split_shard()
                .stream_name(&h.stream)
                .shard_to_split(shard.shard_id())
                .new_starting_hash_key(mid.to_string())
                .send()
                .await
                .expect("SplitShard");
            wait_stream_active(&h.kinesis, &h.stream).await;
            h.log(format_args!(
                "split {} of the stream of logs after {merged} partials were merged",
                shard.shard_id()
            ));
            if let Some(proxy) = &proxy {
                parent_retries_its_final_partials(&mut h, proxy, &flag, shard.shard_id()).await;
            }
        }
    }
    let second_events = if disturbance.splits_logs() {
        // Three instances away from the split shard, merged first (9
        // instances), then two in its range, read by its children after
        // they replayed the parent: the spray (10) is fired by a child's
        // partial, after any partial it rebuilt from the replay.
        let parent = ranges[sshwarden_loadgen::writer::kinesis::shard_index(
            &ranges,
            &format!("i-{:017x}", first[0]),
        )];
        let in_parent = |i: &usize| {
            let k = sshwarden_loadgen::writer::kinesis::partition_hash(&format!("i-{i:017x}"));
            (parent.start..=parent.end).contains(&k)
        };
        let away: Vec<usize> = second
            .iter()
            .copied()
            .filter(|i| !in_parent(i))
            .take(3)
            .collect();
        let near: Vec<usize> = (2_000..).filter(in_parent).take(2).collect();
        let merged_now = |h: &Harness| -> f64 {
            h.workers
                .iter()
                .filter(|w| w.status.is_none())
                .map(|w| w.metric_where("sshwarden_fleet_stage", "kind=\"partials\""))
                .sum()
        };
        let before = merged_now(&h);
        let away_events = guesses(&away, first_minute + 65_000, 100);
        h.put(&records(&away_events)).await;
        let d = Deadline::new("the three instances away from the split to merge", MAX_WAIT);
        while merged_now(&h) < before + 3.0 {
            d.check(|| format!("merged {} (was {before})", merged_now(&h)));
            poll().await;
        }
        assert!(
            ids_of(&h.outputs(), "fleet-spray").is_empty(),
            "9 instances are not a spray yet"
        );
        guesses(&near, first_minute + 66_000, 200)
    } else {
        guesses(&second, first_minute + 65_000, 100)
    };
    h.put(&records(&second_events)).await;
    let d = Deadline::new("the survivor's spray (6 + 5 instances)", MAX_WAIT);
    while ids_of(&h.outputs(), "fleet-spray").is_empty() {
        d.check(|| format!("fleet commands: {:?}", fleet_commands(&h.outputs())));
        poll().await;
    }
    let outputs = h.outputs();
    let spray = outputs
        .iter()
        .flatten()
        .find(|c| c["rule"] == "fleet-spray")
        .unwrap();
    assert!(
        spray["distinct"]["instances"].as_u64().unwrap() >= 10,
        "{spray}"
    );
    // Each instance had three guesses (the parent's a fourth when its
    // writes failed), every one in a single partial: a partial counted
    // twice (a replay, a takeover, a reshard) would add guesses without
    // adding instances, and one lost would take them away.
    let fourth = u64::from(proxy.is_some());
    assert_eq!(
        spray["counts"]["auth_failure"].as_u64().unwrap(),
        3 * spray["distinct"]["instances"].as_u64().unwrap() + fourth,
        "{spray}"
    );
    let fleet = fleet_commands(&outputs);
    for rule in ["fleet-brute-force", "fleet-spray"] {
        assert_eq!(
            fleet.get(&(rule.to_owned(), format!("{src}/32"))),
            Some(&1),
            "{rule} under one id: {fleet:?}"
        );
    }
    assert!(
        fleet.values().all(|&n| n == 1),
        "one id per fleet command: {fleet:?}"
    );
}

/// With writes of partials failing (the flag file exists): waits until the
/// parent shard's final partials failed to write twice (its first try and a
/// retry: the writer retries for up to two minutes before the reader's own
/// loop takes over, which this test does not wait for) and checks its lease
/// is not finished; then lets writes through and waits until they are
/// written and the lease is finished.
async fn parent_retries_its_final_partials(
    h: &mut Harness,
    proxy: &FaultProxy,
    flag: &std::path::Path,
    parent: &str,
) {
    let parent_writes = |fault: bool| -> Vec<usize> {
        proxy
            .calls()
            .iter()
            .enumerate()
            .filter(|(_, c)| {
                c.target.as_deref() == Some("PutRecords")
                    && c.fault.is_some() == fault
                    && c.data.iter().flatten().any(|d| d.contains(parent))
            })
            .map(|(i, _)| i)
            .collect()
    };
    let written_before = parent_writes(false).len();
    let d = Deadline::new(
        "the parent's final partials to fail to write twice",
        MAX_WAIT,
    );
    while parent_writes(true).len() < 2 {
        h.check_running();
        d.check(|| {
            format!(
                "failed writes of {parent}'s partials: {:?}",
                parent_writes(true)
            )
        });
        poll().await;
    }
    let lease = h.leases().await.into_iter().find(|l| l.key == parent);
    assert!(
        lease.as_ref().is_some_and(|l| l.checkpoint != "SHARD_END"),
        "{parent} is not finished while its partials are unwritten: {lease:?}"
    );
    assert_eq!(
        parent_writes(false).len(),
        written_before,
        "no write of {parent}'s partials got through the fault"
    );
    std::fs::remove_file(flag).expect("the flag that fails writes");
    let d = Deadline::new(
        "the parent to finish once its partials are written",
        MAX_WAIT,
    );
    loop {
        let finished = h
            .leases()
            .await
            .iter()
            .any(|l| l.key == parent && l.checkpoint == "SHARD_END");
        let last_failure = parent_writes(true).last().copied();
        let written_after = parent_writes(false)
            .iter()
            .any(|&i| last_failure.is_some_and(|f| i > f));
        if finished {
            assert!(
                written_after,
                "{parent} finished before a write of its partials got through"
            );
            break;
        }
        h.check_running();
        d.check(|| format!("{parent} not finished; written since the failures: {written_after}"));
        poll().await;
    }
    h.log(format_args!(
        "{parent}'s final partials failed {} times, then were written",
        parent_writes(true).len()
    ));
}

/// 500 addresses, each one guess on 4 of 20 instances: no address is heavy
/// (no source rule fires, on a shard or fleet-wide), while every instance
/// sees 100 addresses in 10 minutes (the shards' `instance-under-attack`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_botnet_of_light_addresses_fires_no_source_rule_and_every_instance_rule() {
    // Every partial is sent at its first guess (20% of brute force's 5), so
    // the fleet stage merges all 500 addresses' partials now, not when their
    // windows close.
    let (mut h, _partials) =
        fleet_harness("fleet-botnet", &[4, 4], "[fleet]\nearly_percent = 20\n").await;
    let start = traffic_start(5_000, 30_000);
    let mut events = Vec::new();
    for a in 0..500usize {
        let src = format!("198.18.{}.{}", a / 250, a % 250 + 1);
        for k in 0..4 {
            let n = a * 4 + k;
            events.push(failed((a * 4 + k) % 20, start + n as i64 * 10, &src, n));
        }
    }
    h.put(&records(&events)).await;
    let instances: BTreeSet<String> = (0..20).map(|i| format!("i-{i:017x}")).collect();
    let d = Deadline::new("instance-under-attack on every instance", MAX_WAIT);
    loop {
        h.check_running();
        let notified: BTreeSet<String> = h
            .outputs()
            .iter()
            .flatten()
            .filter(|c| c["rule"] == "instance-under-attack")
            .filter_map(|c| c["instance_id"].as_str().map(str::to_owned))
            .collect();
        if notified == instances {
            break;
        }
        d.check(|| format!("{} of 20 instances notified", notified.len()));
        poll().await;
    }
    wait_partials_merged(&mut h).await;
    let sources: Vec<(String, String)> = h
        .outputs()
        .iter()
        .flatten()
        .filter(|c| c["subject_kind"] == "source")
        .map(|c| {
            (
                c["rule"].as_str().unwrap_or_default().to_owned(),
                c["source"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    assert_eq!(sources, vec![], "no address is heavy");
    let merged: f64 = h
        .workers
        .iter()
        .map(|w| w.metric_where("sshwarden_fleet_stage", "kind=\"partials\""))
        .sum();
    assert!(
        merged > 0.0,
        "the botnet's partials reached the fleet stage"
    );
}

/// Three guesses on instance A and three on B (different shards), then a
/// login accepted on C (a third shard) from the same address: no shard saw
/// five failures, the fleet did, before the login; C is quarantined.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failures_elsewhere_then_a_login_quarantine_the_instance_that_accepted_it() {
    let (mut h, _partials) = fleet_harness("fleet-compromise", &[4, 4], "").await;
    let ranges = sshwarden_loadgen::writer::kinesis::hash_ranges(&h.kinesis, &h.stream)
        .await
        .unwrap();
    let mut taken = BTreeSet::new();
    let abc = on_distinct_shards(&ranges, 300, 3, &mut taken);
    let src = "192.0.2.200";
    let start = traffic_start(5_000, 30_000);
    let mut events: Vec<GeneratedEvent> = (0..6)
        .map(|n| failed(abc[n % 2], start + n as i64 * 1_000, src, 500 + n))
        .collect();
    let victim = format!("i-{:017x}", abc[2]);
    events.push(GeneratedEvent {
        line: format!(
            "Dec  7 01:00:00 ip-10-0-0-9 sshd[900]: Accepted password for deploy from {src} port 50900 ssh2"
        ),
        id: format!("{:056}", 9_000_000),
        ..failed(abc[2], start + 10_000, src, 900)
    });
    h.put(&records(&events)).await;
    let quarantines = |h: &Harness| -> Vec<(String, String)> {
        h.outputs()
            .iter()
            .flatten()
            .filter(|c| c["action"] == "quarantine")
            .map(|c| {
                (
                    c["rule"].as_str().unwrap_or_default().to_owned(),
                    c["instance_id"].as_str().unwrap_or_default().to_owned(),
                )
            })
            .collect()
    };
    let d = Deadline::new("the fleet stage's quarantine", MAX_WAIT);
    while quarantines(&h).is_empty() {
        h.check_running();
        d.check(|| format!("fleet commands: {:?}", fleet_commands(&h.outputs())));
        poll().await;
    }
    wait_partials_merged(&mut h).await;
    let q: BTreeSet<(String, String)> = quarantines(&h).into_iter().collect();
    assert_eq!(
        q,
        BTreeSet::from([("fleet-compromise".to_owned(), victim)]),
        "only the instance that accepted the login, once"
    );
}
