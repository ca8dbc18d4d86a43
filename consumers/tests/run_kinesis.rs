//! `sshwarden run` against the real local emulators, over HTTP: Kinesis on
//! kinesis-local, the lease table on moto (DynamoDB). Each test creates its
//! own stream and lease table, writes seeded fleet traffic with ground truth
//! (loadgen) from here, runs separate `sshwarden run` processes with the
//! stdout sink, and checks their commands (stdout), logs (stderr), metrics
//! and the lease table.
//!
//! Scenarios: leases balance across two and three workers and every shard is
//! read once; `kill -9` of a worker mid-stream (the survivor takes over and
//! no window count is lost); a restart under the same worker id; a split and
//! a merge mid-stream (parents read before children, nothing lost); corrupt,
//! truncated, oversize and control records (skipped and counted); SIGTERM
//! (clean exit, leases released, taken over at once); enhanced fan-out
//! (SubscribeToShard on every shard, each record read once), with
//! subscriptions renewed every 3 s mid-stream (meeting ResourceInUse) and
//! from LATEST on an idle stream (resuming at the continuation); throttling,
//! 5xx, connection resets and expired iterators injected by a fault proxy
//! (`scripts/lib/kinesis_fault_proxy.py`) between the worker and
//! kinesis-local; `kill -9` with the Step Functions sink (moto): one
//! execution per command.
//!
//! SSHWARDEN_BIN names the `sshwarden` binary to run instead of the
//! one cargo built (for checkouts sharing one target directory).
//!
//! Start the emulators first: `scripts/emulators up`. A test fails (never
//! skips) when one is not reachable. Endpoints: SSHWARDEN_MOTO_ENDPOINT
//! [http://127.0.0.1:5000] and SSHWARDEN_KINESIS_ENDPOINT [http://127.0.0.1:4567].
//!
//! Every wait is bounded; every worker process is killed when its test ends,
//! and the stream and lease table are deleted, pass or fail. On failure the
//! tails of every worker's stdout and stderr are printed. No test sleeps to
//! synchronise: a check that nothing more will come (no duplicate, nothing
//! read twice) first waits until the readers counted an end marker written
//! after the traffic to every shard. The harness is in common/kinesis.rs.

use std::collections::BTreeSet;
use std::io::Write;
use std::time::{Duration, Instant};

use serde_json::Value;
use sshwarden_loadgen::SubscriptionRecord;

mod common;
use common::kinesis::*;
use common::*;

// ------------------------------------------------------------------ tests

/// Two or three workers on an 8-shard stream: the leases balance (4+4 or
/// 3+3+2), and every shard is read by exactly one of them: every expected
/// command appears exactly once across the outputs, with the ground truth's
/// counts.
async fn balance_and_read_once(label: &str, seed: u64, shares: &[usize]) {
    let mut h = Harness::new(label, 8).await;
    for i in 0..shares.len() {
        h.spawn(&format!("w{i}"));
    }
    let holdings = h.wait_balanced(8, shares).await;
    h.log(format_args!("balanced: {holdings:?}"));

    let start = traffic_start(20_000, 30_000);
    let traffic = Traffic::brute_force(seed, 24, start, 75_000);
    let landed = h.put(&traffic.records).await;
    assert_covers(&landed, 8);
    h.log(format_args!(
        "wrote {} records; {} commands expected",
        traffic.records.len(),
        traffic.expected.len()
    ));
    h.wait_for_commands(&traffic.expected);
    h.log("every expected command issued");
    let all: Vec<usize> = (0..h.workers.len()).collect();
    let shards = h.read_to_the_end(&all).await;
    let t = Tally::new(&traffic.expected, &h.outputs());
    t.assert_content(&traffic.expected, |_, _| false);
    let repeated: Vec<_> = t
        .by_id
        .iter()
        .filter(|(_, n)| n.iter().sum::<usize>() != 1)
        .collect();
    assert!(repeated.is_empty(), "issued more than once: {repeated:?}");
    let read: f64 = h
        .workers
        .iter()
        .map(|w| sample_sum(&w.metrics(), "sshwarden_records_total", &[]))
        .sum();
    assert_eq!(
        read,
        (traffic.records.len() + shards.len()) as f64,
        "records read by all workers: each record (and end marker) read once"
    );
    for (i, w) in h.workers.iter().enumerate() {
        assert!(
            !w.commands().is_empty(),
            "worker {i} issued nothing: its shards were not read"
        );
    }
    assert_eq!(h.holdings().await, holdings, "leases moved after balancing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_workers_balance_eight_shards_and_read_each_once() {
    balance_and_read_once("balance2", 11, &[4, 4]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn three_workers_balance_eight_shards_and_read_each_once() {
    balance_and_read_once("balance3", 12, &[3, 3, 2]).await;
}

/// `kill -9` of one of two workers mid-stream: the survivor takes its leases
/// within about twice the failover time, replays from their checkpoints and
/// issues every expected command with the full window counts; only commands
/// the killed worker had issued are repeated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_survivor_takes_over_without_losing_counts() {
    let mut h = Harness::new("kill9", 4).await;
    let survivor = h.spawn("survivor");
    let victim = h.spawn("victim");
    let holdings = h.wait_balanced(4, &[2, 2]).await;
    h.log(format_args!("balanced: {holdings:?}"));

    // 150 s of traffic; the kill comes after 100 s of it, 12 s into a
    // window: the victim has closed and checkpointed its first windows, and
    // counted the first part of the one the kill falls in.
    let start = traffic_start(32_000, 60_000);
    let boundary = start + 100_000;
    assert_eq!(boundary.rem_euclid(WINDOW_MS), 12_000);
    let traffic = Traffic::brute_force(21, 16, start, 150_000);
    let (before, after) = traffic.split_at(boundary);
    let (shard_of, written_to) = h.put_covering(before, 4).await;
    let on_victim = |e: &&Expected| {
        holdings["victim"]
            .iter()
            .any(|k| shard_of.get(e.instance.as_str()) == Some(k))
    };
    let before_kill = |e: &Expected| {
        written_to
            .get(e.instance.as_str())
            .is_some_and(|&t| e.crossing_ms <= t)
    };
    h.log(format_args!("wrote {} records", before.len()));

    // Wait until the victim issued every command of the records before the
    // kill, so it dies holding counts of the window the kill falls in.
    let victim_before: Vec<&Expected> = traffic
        .expected
        .iter()
        .filter(on_victim)
        .filter(|e| before_kill(e))
        .collect();
    let d = Deadline::new("the victim to issue its first commands", MAX_WAIT);
    loop {
        h.check_running();
        let issued: BTreeSet<String> = h.workers[victim]
            .commands()
            .iter()
            .map(|c| c["id"].as_str().unwrap_or_default().to_owned())
            .collect();
        let missing = victim_before
            .iter()
            .filter(|e| !issued.contains(&e.id))
            .count();
        let leases = h.leases().await;
        let initial: Vec<&LeaseRow> = leases
            .iter()
            .filter(|l| holdings["victim"].contains(&l.key) && l.checkpoint == "TRIM_HORIZON")
            .collect();
        if missing == 0 && initial.is_empty() {
            break;
        }
        d.check(|| {
            format!(
                "{missing} of {} not issued; not checkpointed: {initial:?}",
                victim_before.len()
            )
        });
        pause(100).await;
    }
    // The commands that need the counts from before the kill: the
    // threshold of a window the kill falls in, crossed after it.
    let straddling: Vec<&Expected> = traffic
        .expected
        .iter()
        .filter(on_victim)
        .filter(|e| e.window_start_ms < boundary && !before_kill(e))
        .collect();
    assert!(
        !straddling.is_empty(),
        "the traffic must cross a threshold after the kill in a window the victim started counting"
    );
    let victim_leases = holdings["victim"].clone();
    let checkpoints_at_kill = h.leases().await;
    h.workers[victim].kill9();
    let killed_at = Instant::now();
    h.log(format_args!(
        "killed the victim after {} commands; checkpoints: {:?}",
        h.workers[victim].commands().len(),
        checkpoints_at_kill
            .iter()
            .map(|l| (&l.key, &l.checkpoint))
            .collect::<Vec<_>>()
    ));

    // The rest of the traffic, written while the survivor takes over.
    let landed = h.put(after).await;
    assert_covers(&landed, 4);
    h.wait_sole_holder("survivor", 4, "the survivor to take every lease", 100)
        .await;
    let takeover = killed_at.elapsed();
    h.log(format_args!(
        "survivor holds every lease {takeover:.2?} after the kill"
    ));
    assert!(
        takeover <= Duration::from_millis(2 * FAILOVER_MS),
        "takeover took {takeover:?}, more than twice the failover time ({FAILOVER_MS} ms)"
    );
    // The table shows the take a moment before the worker logs it.
    let d = Deadline::new("the survivor to log its takes", Duration::from_secs(5));
    loop {
        let taken = h.workers[survivor].logs_with("lease taken");
        let missing: Vec<&String> = victim_leases
            .iter()
            .filter(|key| !taken.iter().any(|l| l["fields"]["shard"] == key.as_str()))
            .collect();
        if missing.is_empty() {
            break;
        }
        d.check(|| format!("the survivor never logged taking {missing:?}"));
        pause(100).await;
    }

    let t = h.wait_for_commands(&traffic.expected);
    h.log(format_args!(
        "every expected command issued ({})",
        t.by_id.len()
    ));
    h.read_to_the_end(&[survivor]).await;
    let t = Tally::new(&traffic.expected, &h.outputs());
    // Full counts: a window open at the checkpoint is rebuilt by the replay
    // and crosses its threshold at the same event with the same counts as
    // the truth. Other counts only on a repeat of what the victim delivered.
    t.assert_content(&traffic.expected, |w, id| {
        w == survivor && t.correct_from(id, victim) == 1
    });
    let victim_ids: BTreeSet<String> = h.workers[victim]
        .commands()
        .iter()
        .map(|c| c["id"].as_str().unwrap_or_default().to_owned())
        .collect();
    let mut repeats = 0;
    for (id, n) in &t.by_id {
        assert!(
            n[survivor] <= 1,
            "the survivor issued {id} {} times",
            n[survivor]
        );
        assert!(n[victim] <= 1, "the victim issued {id} {} times", n[victim]);
        if t.total(id) > 1 {
            assert!(
                victim_ids.contains(id),
                "{id} repeated but the victim never issued it"
            );
            repeats += 1;
        }
    }
    t.assert_whole_from(&straddling, survivor, "by the survivor");
    h.log(format_args!(
        "victim issued {}, {repeats} of them repeated by the survivor ({} with a closed window's tail only); {} thresholds crossed after the kill in windows the victim had started, with full counts",
        victim_ids.len(),
        t.partial.len(),
        straddling.len()
    ));
}

/// A split, then a merge, mid-stream on kinesis-local, with records written
/// before and after each: nothing is skipped (every expected command is
/// issued), and each child starts only after its parents reached SHARD_END.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn split_and_merge_read_parents_before_children() {
    let mut h = Harness::new("reshard", 2).await;
    let w = h.spawn_sole("w0", &Spawn::default()).await;

    // The split and the merge both fall inside one window (at 15 s and 40 s).
    let start = traffic_start(50_000, 20_000);
    let traffic = Traffic::brute_force(31, 12, start, 80_000);
    let (first, rest) = traffic.split_at(start + 25_000);
    let cut = rest.partition_point(|r| r.last_time_ms < start + 50_000);
    let (second, third) = rest.split_at(cut);

    h.put(first).await;
    h.log(format_args!("wrote {} records; splitting", first.len()));
    let shards = h.list_shards().await;
    let parent = shards[0].clone();
    let range = parent.hash_key_range().unwrap();
    let lo: u128 = range.starting_hash_key().parse().unwrap();
    let hi: u128 = range.ending_hash_key().parse().unwrap();
    h.kinesis
        .split_shard()
        .stream_name(&h.stream)
        .shard_to_split(parent.shard_id())
        .new_starting_hash_key((lo + (hi - lo) / 2).to_string())
        .send()
        .await
        .expect("SplitShard");
    h.wait_stream_active().await;
    let landed = h.put(second).await;
    h.log(format_args!(
        "split {}; wrote {} records to {:?}",
        parent.shard_id(),
        second.len(),
        landed.iter().collect::<BTreeSet<_>>()
    ));

    // Merge two adjacent open shards, a child of the split and an original.
    let open: Vec<_> = h
        .list_shards()
        .await
        .into_iter()
        .filter(|s| {
            s.sequence_number_range()
                .is_some_and(|r| r.ending_sequence_number().is_none())
        })
        .collect();
    let bounds = |s: &aws_sdk_kinesis::types::Shard| {
        let r = s.hash_key_range().unwrap();
        (
            r.starting_hash_key().parse::<u128>().unwrap(),
            r.ending_hash_key().parse::<u128>().unwrap(),
        )
    };
    let (a, b) = open
        .iter()
        .flat_map(|a| open.iter().map(move |b| (a, b)))
        .find(|(a, b)| {
            bounds(a).1.checked_add(1) == Some(bounds(b).0)
                && a.parent_shard_id().is_some() != b.parent_shard_id().is_some()
        })
        .expect("two adjacent open shards");
    h.kinesis
        .merge_shards()
        .stream_name(&h.stream)
        .shard_to_merge(a.shard_id())
        .adjacent_shard_to_merge(b.shard_id())
        .send()
        .await
        .expect("MergeShards");
    h.wait_stream_active().await;
    let landed = h.put(third).await;
    h.log(format_args!(
        "merged {} and {}; wrote {} records to {:?}",
        a.shard_id(),
        b.shard_id(),
        third.len(),
        landed.iter().collect::<BTreeSet<_>>()
    ));

    h.wait_for_commands(&traffic.expected);
    // The open shards (children) are read after their parents reached
    // SHARD_END: their end markers read, every shard was read to its end.
    h.read_to_the_end(&[w]).await;
    let t = Tally::new(&traffic.expected, &h.outputs());
    // A window that straddles a reshard keeps its whole count: the children
    // rebuild their parents' open windows before reading their own records,
    // so every command is issued once with the truth's counts. Re-derived
    // copies may follow (both children of a split replay the parent).
    t.assert_content(&traffic.expected, |_, _| true);
    h.log(format_args!(
        "every expected command issued ({}); {} more than once (re-derived by a child), {} copies with a closed window's tail only",
        t.by_id.len(),
        t.by_id.values().filter(|n| n[w] > 1).count(),
        t.partial.len()
    ));

    // Parents before children, from the worker's log. Every shard of the
    // stream is read, and every closed one to its end.
    let logs = h.workers[w].logs();
    let index_of = |message: &str, shard: &str| {
        logs.iter()
            .position(|l| l["fields"]["message"] == message && l["fields"]["shard"] == shard)
    };
    let all = h.list_shards().await;
    assert_eq!(
        all.len(),
        5,
        "2 shards, 2 children of the split, 1 of the merge"
    );
    for s in &all {
        let id = s.shard_id();
        let read = index_of("reading shard", id).unwrap_or_else(|| panic!("{id} never read"));
        let closed = s
            .sequence_number_range()
            .is_some_and(|r| r.ending_sequence_number().is_some());
        if closed {
            assert!(
                index_of("reached SHARD_END", id).is_some(),
                "{id} never reached SHARD_END"
            );
        }
        for p in s
            .parent_shard_id()
            .into_iter()
            .chain(s.adjacent_parent_shard_id())
        {
            let ended = index_of("reached SHARD_END", p)
                .unwrap_or_else(|| panic!("parent {p} of {id} never reached SHARD_END"));
            assert!(
                ended < read,
                "{id} was read before its parent {p} reached SHARD_END"
            );
        }
    }
}

/// Corrupt, truncated, oversize (gzip bomb) and CONTROL_MESSAGE records mixed
/// into the stream: each bad one is logged as skipped and counted as a decode
/// error, and the shard keeps moving (every command of the good records).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_records_are_skipped_and_counted() {
    use flate2::{write::GzEncoder, Compression};
    let gzip = |data: &[u8]| {
        let mut e = GzEncoder::new(Vec::new(), Compression::best());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    };
    let mut h = Harness::new("badrecords", 1).await;
    let w = h
        .spawn_sole(
            "w0",
            &Spawn {
                args: &["--max-decompressed-bytes", "1048576"],
                log: Some("info,sshwarden::source::kinesis::reader=debug"),
                ..Spawn::default()
            },
        )
        .await;

    let start = traffic_start(0, 30_000);
    let traffic = Traffic::brute_force(41, 6, start, 60_000);
    let good = &traffic.records;
    let mut rng_state = 0x2545_f491_4f6c_dd1du64;
    let mut random_bytes = |n: usize| -> Vec<u8> {
        (0..n)
            .map(|_| {
                rng_state ^= rng_state << 13;
                rng_state ^= rng_state >> 7;
                rng_state ^= rng_state << 17;
                rng_state as u8
            })
            .collect()
    };
    let mut bad: Vec<(&str, Vec<u8>)> = Vec::new();
    bad.push(("random", random_bytes(300)));
    let mut gzip_garbage = vec![0x1f, 0x8b, 0x08, 0x00];
    gzip_garbage.extend(random_bytes(500));
    bad.push(("random after a gzip header", gzip_garbage));
    let whole = &good[good.len() / 2].data;
    bad.push(("truncated gzip", whole[..whole.len() / 2].to_vec()));
    bad.push((
        "truncated gzip, no trailer",
        whole[..whole.len() - 8].to_vec(),
    ));
    // 4 MiB of a valid-looking envelope: decompresses past the 1 MiB cap.
    let mut bomb = br#"{"messageType":"DATA_MESSAGE","owner":"1","logGroup":"g","logStream":"i-0","subscriptionFilters":[],"logEvents":[{"id":"1","timestamp":1,"message":""#.to_vec();
    bomb.extend(std::iter::repeat_n(b'A', 4 << 20));
    bomb.extend_from_slice(br#""}]}"#);
    let bomb = gzip(&bomb);
    assert!(bomb.len() < 64 << 10, "a bomb is small: {}", bomb.len());
    bad.push(("gzip bomb", bomb.clone()));
    // The same bomb with a trailer that lies about its size.
    let mut liar = bomb;
    let n = liar.len();
    liar[n - 4..].copy_from_slice(&1000u32.to_le_bytes());
    bad.push(("gzip bomb with a lying trailer", liar));
    let control = sshwarden_loadgen::encode::control_message();
    // A record whose events claim to be an hour ahead of their arrival: its
    // times are clamped (and counted), nobody else's events become late.
    let ahead_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
        + 3_600_000;
    let future_events: Vec<String> = (0..3)
        .map(|i| {
            format!(
                r#"{{"id":"9{i}","timestamp":{},"message":"Nov 29 10:00:00 h sshd[7{i}]: Invalid user f{i} from 198.51.100.9 port 4{i}"}}"#,
                ahead_ms + i64::from(i)
            )
        })
        .collect();
    let future = gzip(
        format!(
            r#"{{"messageType":"DATA_MESSAGE","owner":"1","logGroup":"g","logStream":"i-0fffffffffffffff0","subscriptionFilters":[],"logEvents":[{}]}}"#,
            future_events.join(",")
        )
        .as_bytes(),
    );

    // Interleave: bad records and control messages between the good ones.
    let mut mixed: Vec<(String, Vec<u8>)> = Vec::new();
    let step = good.len() / (bad.len() + 1);
    let mut bad_iter = bad.iter();
    for (i, r) in good.iter().enumerate() {
        if i % step == step / 2 {
            if let Some((_, b)) = bad_iter.next() {
                mixed.push(("bad".into(), b.clone()));
            }
            mixed.push(("control".into(), control.clone()));
        }
        mixed.push((r.log_stream.clone(), r.data.clone()));
    }
    assert!(bad_iter.next().is_none());
    mixed.insert(mixed.len() / 3, ("i-0fffffffffffffff0".into(), future));
    let controls = mixed.iter().filter(|(k, _)| k == "control").count();
    h.put_raw(&mixed).await;
    h.log(format_args!(
        "wrote {} good, {} bad and {controls} control records",
        good.len(),
        bad.len()
    ));

    let t = h.wait_for_commands(&traffic.expected);
    t.assert_content(&traffic.expected, |_, _| false);
    let d = Deadline::new("every record to be accounted for", Duration::from_secs(20));
    loop {
        let skipped = h.workers[w].logs_with("record skipped").len();
        let controls_seen = h.workers[w].logs_with("control message skipped").len();
        if skipped >= bad.len() && controls_seen >= controls {
            assert_eq!(skipped, bad.len(), "each bad record is skipped once");
            assert_eq!(controls_seen, controls);
            break;
        }
        d.check(|| {
            format!(
                "{skipped} skipped of {}, {controls_seen} control messages of {controls}",
                bad.len()
            )
        });
        pause(200).await;
    }
    let metrics = h.workers[w].metrics();
    let decode_errors: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("sshwarden_errors_total{") && l.contains(r#"kind="decode""#))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(
        decode_errors,
        bad.len() as f64,
        "sshwarden_errors_total{{kind=\"decode\"}} in:\n{metrics}"
    );
    let records: f64 = metrics
        .lines()
        .filter(|l| l.starts_with("sshwarden_records_total{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    assert_eq!(records, mixed.len() as f64, "every record read once");
    let engine = |kind: &str| -> f64 {
        metrics
            .lines()
            .filter(|l| {
                l.starts_with("sshwarden_engine_events{")
                    && l.contains(&format!(r#"kind="{kind}""#))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    assert_eq!(
        engine("clamped"),
        3.0,
        "sshwarden_engine_events{{kind=\"clamped\"}} in:\n{metrics}"
    );
    assert_eq!(engine("late"), 0.0, "nothing else became late:\n{metrics}");
}

/// SIGTERM: the worker drains, exits 0 within --shutdown-secs, and releases
/// its leases; a worker started afterwards takes them at once (well within
/// the failover time) and, replaying from the checkpoints, issues every
/// command the first one did not.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_releases_leases_for_an_immediate_takeover() {
    const SLOW_FAILOVER: u64 = 10_000;
    let slow = Spawn {
        failover_ms: Some(SLOW_FAILOVER),
        ..Spawn::default()
    };
    let mut h = Harness::new("sigterm", 2).await;
    let first = h.spawn_sole("first", &slow).await;

    let start = traffic_start(0, 30_000);
    let traffic = Traffic::brute_force(51, 8, start, 60_000);
    let (before, after) = traffic.split_at(start + 30_000);
    h.put(before).await;
    h.wait_commands_from(first, 5, "the first worker to issue commands");

    h.workers[first].sigterm();
    let termed = Instant::now();
    let status = h.workers[first].wait_exit(Duration::from_secs(12));
    let exit_time = termed.elapsed();
    h.log(format_args!(
        "SIGTERM: exited {status:?} after {exit_time:.2?}"
    ));
    let status = status.expect("the worker did not exit within --shutdown-secs 10 (+2 s)");
    assert!(status.success(), "exit status {status}");
    let leases = h.leases().await;
    assert_eq!(leases.len(), 2);
    for l in &leases {
        assert_eq!(l.owner, None, "lease {} still owned after SIGTERM", l.key);
    }
    assert_eq!(
        h.workers[first].logs_with("lease released").len(),
        2,
        "each lease released"
    );

    h.put(after).await;
    let second = h.spawn_with("second", &slow);
    let spawned = Instant::now();
    h.wait_sole_holder("second", 2, "the second worker to take the leases", 50)
        .await;
    let took = spawned.elapsed();
    h.log(format_args!(
        "the second worker took both leases {took:.2?} after it started"
    ));
    assert!(
        took < Duration::from_millis(SLOW_FAILOVER / 2),
        "taking released leases took {took:?}: as long as a failover"
    );

    let t = h.wait_for_commands(&traffic.expected);
    h.read_to_the_end(&[second]).await;
    let t2 = Tally::new(&traffic.expected, &h.outputs());
    t2.assert_content(&traffic.expected, |w, id| {
        w == second && t2.correct_from(id, first) == 1
    });
    for (id, n) in &t2.by_id {
        assert!(n[first] <= 1 && n[second] <= 1, "{id} issued {n:?}");
    }
    h.log(format_args!(
        "every expected command issued ({}), {} by both",
        t.by_id.len(),
        t2.by_id
            .values()
            .filter(|n| n[first] + n[second] > 1)
            .count()
    ));
}

/// `kill -9`, then a restart under the same --worker-id (a fixed id in the
/// task definition): the table still names the worker for its leases, but the
/// new process holds none; it takes them back once their counters have not
/// moved for the failover time, and replays from the checkpoints.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_under_the_same_worker_id_resumes_its_shards() {
    let mut h = Harness::new("sameid", 2).await;
    let first = h.spawn_sole("w0", &Spawn::default()).await;

    let start = traffic_start(0, 30_000);
    let traffic = Traffic::brute_force(61, 8, start, 60_000);
    let (before, after) = traffic.split_at(start + 30_000);
    h.put(before).await;
    h.wait_commands_from(first, 5, "the first run to issue commands");
    h.workers[first].kill9();
    let again = h.spawn("w0");
    let restarted = Instant::now();
    h.put(after).await;

    let d = Deadline::new("the restarted worker to read its shards", MAX_WAIT);
    loop {
        let reading = h.workers[again].logs_with("reading shard").len();
        if reading == 2 {
            break;
        }
        h.check_running();
        d.check(|| format!("it reads {reading} of 2"));
        pause(100).await;
    }
    let took = restarted.elapsed();
    h.log(format_args!(
        "the restarted worker reads both shards {took:.2?} after it started"
    ));
    assert!(
        took <= Duration::from_millis(2 * FAILOVER_MS + 2_000),
        "took {took:?} (failover {FAILOVER_MS} ms)"
    );

    h.wait_for_commands(&traffic.expected);
    h.read_to_the_end(&[again]).await;
    let t = Tally::new(&traffic.expected, &h.outputs());
    t.assert_content(&traffic.expected, |w, id| {
        w == again && t.correct_from(id, first) == 1
    });
    for (id, n) in &t.by_id {
        assert!(n[first] <= 1 && n[again] <= 1, "{id} issued {n:?}");
    }
}

/// Enhanced fan-out (`--enhanced-fan-out`, SubscribeToShard) on a 2-shard
/// stream, with records written before the worker starts and after it
/// subscribed: every shard is read through its subscription, and every
/// expected command appears exactly once with the ground truth's counts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_fan_out_reads_every_shard() {
    let mut h = Harness::new("efo", 2).await;
    let start = traffic_start(20_000, 30_000);
    let traffic = Traffic::brute_force(71, 12, start, 75_000);
    let (before, after) = traffic.split_at(start + 35_000);
    let landed = h.put(before).await;
    assert_covers(&landed, 2);
    h.log(format_args!(
        "wrote {} records before the worker starts",
        before.len()
    ));

    let consumer = h.efo_consumer();
    let w = h
        .spawn_sole(
            "w0",
            &Spawn {
                args: &["--enhanced-fan-out", &consumer],
                log: Some("info,aws_sdk_kinesis=debug"),
                ..Spawn::default()
            },
        )
        .await;
    let landed = h.put(after).await;
    assert_covers(&landed, 2);
    h.log(format_args!(
        "wrote {} records after; {} commands expected",
        after.len(),
        traffic.expected.len()
    ));

    h.wait_for_commands(&traffic.expected);
    // Anything read twice (a resubscription from the wrong position) came
    // before the end marker.
    let shards = h.read_to_the_end(&[w]).await;
    let t = Tally::new(&traffic.expected, &h.outputs());
    t.assert_content(&traffic.expected, |_, _| false);
    let repeated: Vec<_> = t.by_id.iter().filter(|(_, n)| n[w] != 1).collect();
    assert!(repeated.is_empty(), "issued more than once: {repeated:?}");

    // The records came through the subscription: the consumer is registered
    // and ACTIVE, and each shard was subscribed.
    let consumers = h
        .kinesis
        .list_stream_consumers()
        .stream_arn(
            h.kinesis
                .describe_stream_summary()
                .stream_name(&h.stream)
                .send()
                .await
                .expect("DescribeStreamSummary")
                .stream_description_summary()
                .expect("summary")
                .stream_arn(),
        )
        .send()
        .await
        .expect("ListStreamConsumers");
    assert!(
        consumers
            .consumers()
            .iter()
            .any(|c| c.consumer_name() == consumer
                && c.consumer_status() == &aws_sdk_kinesis::types::ConsumerStatus::Active),
        "consumer {consumer} not ACTIVE: {:?}",
        consumers.consumers()
    );
    // The SDK logs each Kinesis call at debug, in a span naming the call:
    // both shards were subscribed to, and nothing was polled.
    let calls = |method: &str| {
        h.workers[w]
            .logs()
            .iter()
            .filter(|l| l["span"]["rpc.method"] == method && l["fields"]["request_id"].is_string())
            .count()
    };
    let (subscribes, polls) = (calls("SubscribeToShard"), calls("GetRecords"));
    h.log(format_args!(
        "{subscribes} SubscribeToShard calls, {polls} GetRecords calls"
    ));
    assert!(
        subscribes >= 2,
        "{subscribes} SubscribeToShard calls for 2 shards"
    );
    assert_eq!(polls, 0, "GetRecords called with enhanced fan-out");
    let records = sample_sum(&h.workers[w].metrics(), "sshwarden_records_total", &[]);
    assert_eq!(
        records,
        (traffic.records.len() + shards.len()) as f64,
        "every record (and end marker) read once"
    );
}

/// Asserts that the worker's errors_total{kind} counts each fault of
/// `faults` the proxy injected exactly once. The worker keeps polling (and
/// the script keeps injecting) meanwhile, so the metric is read between two
/// looks at the proxy's log: the proxy logs a fault before it answers, and
/// the worker counts it once the answer arrived. The first look's faults
/// are waited for: the metric is read once it counts at least those.
async fn assert_each_fault_counted_once(
    h: &Harness,
    w: usize,
    proxy: &FaultProxy,
    kind: &str,
    faults: &[&str],
) {
    let label = format!("kind=\"{kind}\"");
    let before = injected(proxy, faults);
    let d = Deadline::new(
        format!("errors_total{{{label}}} to count the faults injected so far"),
        Duration::from_secs(20),
    );
    let counted = loop {
        let counted = metric_by_shard(&h.workers[w], "errors_total", &[&label]);
        let behind: Vec<(&String, usize, f64)> = before
            .iter()
            .map(|(s, &b)| (s, b, counted.get(s).copied().unwrap_or(0.0)))
            .filter(|&(_, b, m)| m < b as f64)
            .collect();
        if behind.is_empty() {
            break counted;
        }
        d.check(|| format!("(shard, injected, counted): {behind:?}"));
        poll().await;
    };
    let after = injected(proxy, faults);
    for (shard, &n) in &after {
        let m = counted.get(shard).copied().unwrap_or(0.0);
        let b = before.get(shard).copied().unwrap_or(0);
        assert!(
            n > 0 && b as f64 <= m && m <= n as f64,
            "{shard}: errors_total{{kind={kind}}} is {m}; the proxy injected {b} before and {n} after reading it ({faults:?})"
        );
    }
}

/// Writes `records` in `chunks` PutRecords batches `gap_ms` apart, so a
/// reader reads them over many calls.
async fn put_paced(h: &Harness, records: &[SubscriptionRecord], chunks: usize, gap_ms: u64) {
    let size = records.len().div_ceil(chunks).max(1);
    for (i, chunk) in records.chunks(size).enumerate() {
        if i > 0 {
            pause(gap_ms).await;
        }
        h.put(chunk).await;
    }
}

/// Starts worker "w0" with `opts` on a two-shard stream, writes `traffic`
/// in 8 batches `gap_ms` apart once it holds both leases, and checks that it
/// reads every record exactly once (`assert_read_exactly_once`). Returns the
/// worker's index.
async fn one_worker_reads_paced_traffic_once(
    h: &mut Harness,
    opts: &Spawn<'_>,
    traffic: &Traffic,
    gap_ms: u64,
) -> usize {
    let w = h.spawn_sole("w0", opts).await;
    put_paced(h, &traffic.records, 8, gap_ms).await;
    h.log(format_args!(
        "wrote {} records in 8 batches {gap_ms} ms apart; {} commands expected",
        traffic.records.len(),
        traffic.expected.len()
    ));
    assert_read_exactly_once(h, w, traffic).await;
    w
}

/// Every expected command exactly once with the truth's counts, and the
/// worker's records_total equal to the records written: nothing read twice,
/// nothing skipped.
async fn assert_read_exactly_once(h: &mut Harness, w: usize, traffic: &Traffic) {
    h.wait_for_commands(&traffic.expected);
    // Anything read twice was read before the end marker.
    let shards = h.read_to_the_end(&[w]).await;
    let t = Tally::new(&traffic.expected, &h.outputs());
    t.assert_content(&traffic.expected, |_, _| false);
    let repeated: Vec<_> = t.by_id.iter().filter(|(_, n)| n[w] != 1).collect();
    assert!(repeated.is_empty(), "issued more than once: {repeated:?}");
    let read: f64 = metric_by_shard(&h.workers[w], "records_total", &[])
        .values()
        .sum();
    assert_eq!(
        read,
        (traffic.records.len() + shards.len()) as f64,
        "records_total: every record (and end marker) read exactly once"
    );
}

/// GetRecords answered with ProvisionedThroughputExceeded (six in a row on
/// each shard, then every tenth call), a 500 and a connection reset, through
/// the fault proxy: the reader backs off (six throttles in a row take the
/// exponential backoff's minimum, 3.4 s, not the 1.2 s of the plain 5/s
/// pacing), never calls a shard more than 5 times a second, counts each
/// fault once in errors_total (the SDK does not retry GetRecords behind its
/// back), and still reads every record exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttled_reads_back_off_and_read_every_record_once() {
    let mut h = Harness::new("throttle", 2).await;
    let proxy = FaultProxy::start(
        &h,
        &serde_json::json!([
            {"calls": [3, 8], "fault": "throughput"},
            {"calls": [12, 12], "fault": "internal"},
            {"calls": [15, 15], "fault": "reset"},
            {"every": 10, "after": 15, "fault": "throughput"},
        ]),
    );
    let start = traffic_start(20_000, 30_000);
    let traffic = Traffic::brute_force(81, 10, start, 75_000);
    let through_proxy = Spawn {
        kinesis: Some(&proxy.endpoint),
        ..Spawn::default()
    };
    let w = one_worker_reads_paced_traffic_once(&mut h, &through_proxy, &traffic, 1_000).await;

    assert_each_fault_counted_once(&h, w, &proxy, "throughput_exceeded", &["throughput"]).await;
    assert_each_fault_counted_once(&h, w, &proxy, "get_records", &["internal", "reset"]).await;
    let by_shard = proxy.by_shard();
    assert_eq!(
        by_shard.len(),
        2,
        "calls on both shards: {:?}",
        by_shard.keys()
    );
    for (shard, calls) in &by_shard {
        let reads: Vec<&ProxyCall> = calls
            .iter()
            .filter(|c| c.target.as_deref() == Some("GetRecords"))
            .collect();
        let count = |f: &str| {
            reads
                .iter()
                .filter(|c| c.fault.as_deref() == Some(f))
                .count()
        };
        let (throttles, faults) = (count("throughput"), count("internal") + count("reset"));
        h.log(format_args!(
            "{shard}: {} GetRecords calls, {throttles} throttled, {faults} 5xx/reset",
            reads.len()
        ));
        assert!(
            reads.len() >= 15,
            "{shard}: only {} calls, the script was not played",
            reads.len()
        );
        // Backoff: calls 3..=8 were throttled; call 9 comes after six
        // backoffs of at least 200, 200, 200, 400, 800 and 1600 ms.
        let span = reads[8].t - reads[2].t;
        assert!(
            span >= 3.0,
            "{shard}: six throttles in a row took only {span:.2} s: no backoff"
        );
        // At most 5 calls a second: any six consecutive calls span a second
        // (less 50 ms for the jitter of the arrival times at the proxy).
        for six in reads.windows(6) {
            let span = six[5].t - six[0].t;
            assert!(
                span >= 0.95,
                "{shard}: 6 GetRecords calls within {span:.3} s (calls {:?})",
                six.iter().map(|c| c.t).collect::<Vec<_>>()
            );
        }
    }
}

/// Every third GetRecords call of each shard answered ExpiredIterator while
/// records arrive: each time the reader gets a new iterator
/// AFTER_SEQUENCE_NUMBER of the last record it read (not its checkpoint,
/// which open windows hold back), so no record is skipped and none is read
/// twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn expired_iterators_resume_after_the_last_record_read() {
    let mut h = Harness::new("expired", 2).await;
    let proxy = FaultProxy::start(&h, &serde_json::json!([{"every": 3, "fault": "expired"}]));
    let start = traffic_start(20_000, 30_000);
    let traffic = Traffic::brute_force(82, 10, start, 75_000);
    let through_proxy = Spawn {
        kinesis: Some(&proxy.endpoint),
        ..Spawn::default()
    };
    let w = one_worker_reads_paced_traffic_once(&mut h, &through_proxy, &traffic, 700).await;

    assert_each_fault_counted_once(&h, w, &proxy, "expired_iterator", &["expired"]).await;
    for (shard, calls) in &proxy.by_shard() {
        let mut last_read: Option<String> = None;
        let mut after_records = 0;
        let mut injected = 0;
        for (i, c) in calls.iter().enumerate() {
            if c.target.as_deref() != Some("GetRecords") {
                continue;
            }
            if c.fault.as_deref() == Some("expired") {
                injected += 1;
                // The next call on this shard asks for a new iterator right
                // after the last record read.
                let Some(next) = calls.get(i + 1) else {
                    continue; // the last call logged
                };
                let next = Some(next);
                assert!(
                    next.is_some_and(|n| n.target.as_deref() == Some("GetShardIterator")),
                    "{shard}: after an expired iterator: {next:?}"
                );
                if let (Some(last), Some(next)) = (&last_read, next) {
                    after_records += 1;
                    assert_eq!(
                        (next.iterator_type.as_deref(), next.after.as_ref()),
                        (Some("AFTER_SEQUENCE_NUMBER"), Some(last)),
                        "{shard}: re-acquired at the wrong place"
                    );
                }
            } else if let Some(seq) = &c.last_sequence {
                last_read = Some(seq.clone());
            }
        }
        h.log(format_args!(
            "{shard}: {injected} expired iterators, {after_records} of them after records were read"
        ));
        assert!(
            after_records >= 2,
            "{shard}: only {after_records} expirations after records were read"
        );
    }
}

/// Enhanced fan-out with the subscription renewed every 3 s
/// (`--subscription-renew-ms`) while records arrive for 16 s: each shard is
/// resubscribed several times, each time right after the last record read,
/// and every record is read exactly once (records_total, and every expected
/// command once with the truth's counts).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_fan_out_renewals_read_every_record_once() {
    let mut h = Harness::new("efo-renew", 2).await;
    let start = traffic_start(20_000, 30_000);
    let traffic = Traffic::brute_force(83, 10, start, 75_000);
    let consumer = h.efo_consumer();
    let renewing = Spawn {
        args: &[
            "--enhanced-fan-out",
            &consumer,
            "--subscription-renew-ms",
            "3000",
        ],
        ..Spawn::default()
    };
    let w = one_worker_reads_paced_traffic_once(&mut h, &renewing, &traffic, 2_000).await;

    let renewals = h.workers[w].logs_with("renewing the subscription");
    let in_use = metric_by_shard(
        &h.workers[w],
        "errors_total",
        &["kind=\"subscription_in_use\""],
    );
    let failed = metric_by_shard(&h.workers[w], "errors_total", &["kind=\"subscription\""]);
    for shard in ["shardId-000000000000", "shardId-000000000001"] {
        let n = renewals
            .iter()
            .filter(|l| l["fields"]["shard"] == shard)
            .count();
        h.log(format_args!(
            "{shard}: {n} renewals, {} ResourceInUse answers, {} other subscription failures",
            in_use.get(shard).copied().unwrap_or(0.0),
            failed.get(shard).copied().unwrap_or(0.0)
        ));
        assert!(n >= 3, "{shard}: only {n} subscription renewals");
    }
    // kinesis-local keeps a subscription registered for a moment after its
    // client went away, and answers a new SubscribeToShard for the same
    // consumer and shard with ResourceInUseException meanwhile (real Kinesis
    // does so within 5 s of the last subscribe): the renewals above went
    // through the resubscribe-after-ResourceInUse path.
    let in_use_total: f64 = in_use.values().sum();
    assert!(
        in_use_total >= 1.0,
        "no renewal met ResourceInUseException: the resubscribe path was not exercised \
         (did kinesis-local change how it releases subscriptions?)"
    );
}

/// Two workers with `--sink sfn` (Step Functions on moto); `kill -9` of one
/// mid-stream, after it started executions and while it holds counts of
/// open windows. The survivor takes over and replays from the checkpoints;
/// afterwards every expected command has exactly one execution (named by its
/// id), none is missing, none unexpected, and each was started with the
/// window's full counts (a replayed copy with a closed window's tail only
/// finds the execution already there).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_nine_with_the_sfn_sink_starts_one_execution_per_command() {
    let mut h = Harness::new("sfn-kill9", 4).await;
    let sm = PassStateMachine::create(&h).await;
    let opts = Spawn {
        sink: Some("sfn"),
        args: &["--state-machine-arn", &sm.arn],
        ..Spawn::default()
    };
    let survivor = h.spawn_with("survivor", &opts);
    let victim = h.spawn_with("victim", &opts);
    let holdings = h.wait_balanced(4, &[2, 2]).await;
    h.log(format_args!(
        "balanced: {holdings:?}; state machine {}",
        sm.arn
    ));

    let start = traffic_start(32_000, 60_000);
    let boundary = start + 100_000;
    let traffic = Traffic::brute_force(22, 16, start, 150_000);
    let (before, after) = traffic.split_at(boundary);
    let (shard_of, written_to) = h.put_covering(before, 4).await;
    let victim_before: Vec<&Expected> = traffic
        .expected
        .iter()
        .filter(|e| {
            holdings["victim"]
                .iter()
                .any(|k| shard_of.get(e.instance.as_str()) == Some(k))
        })
        .filter(|e| {
            written_to
                .get(e.instance.as_str())
                .is_some_and(|&t| e.crossing_ms <= t)
        })
        .collect();
    assert!(
        !victim_before.is_empty(),
        "the victim must deliver before the kill"
    );
    // Kill once the victim delivered what the records before the kill make
    // it issue, and checkpointed its shards.
    let d = Deadline::new("the victim to start its executions", MAX_WAIT);
    loop {
        h.check_running();
        let delivered: BTreeSet<String> = h.workers[victim]
            .logs_with("command delivered")
            .iter()
            .filter_map(|l| l["fields"]["id"].as_str().map(str::to_owned))
            .collect();
        let missing = victim_before
            .iter()
            .filter(|e| !delivered.contains(&e.id))
            .count();
        let initial = h
            .leases()
            .await
            .iter()
            .filter(|l| holdings["victim"].contains(&l.key) && l.checkpoint == "TRIM_HORIZON")
            .count();
        if missing == 0 && initial == 0 {
            break;
        }
        d.check(|| format!("{missing} not delivered, {initial} shards not checkpointed"));
        pause(100).await;
    }
    h.workers[victim].kill9();
    h.log(format_args!(
        "killed the victim after {} deliveries",
        h.workers[victim].logs_with("command delivered").len()
    ));
    let landed = h.put(after).await;
    assert_covers(&landed, 4);

    let want: BTreeSet<&str> = traffic.expected.iter().map(|e| e.id.as_str()).collect();
    let d = Deadline::new(format!("{} executions", traffic.expected.len()), MAX_WAIT);
    loop {
        h.check_running();
        let names = sm.names().await;
        let missing: Vec<&&str> = want
            .iter()
            .filter(|id| !names.iter().any(|n| n == **id))
            .collect();
        if missing.is_empty() {
            break;
        }
        d.check(|| {
            format!(
                "{} of {} missing, e.g. {:?}",
                missing.len(),
                want.len(),
                &missing[..missing.len().min(5)]
            )
        });
        pause(500).await;
    }
    // A late duplicate would come from a record before the end marker.
    h.read_to_the_end(&[survivor]).await;
    let executions = sm.executions().await;
    let more_than_once: Vec<_> = executions.iter().filter(|(_, v)| v.len() != 1).collect();
    assert!(
        more_than_once.is_empty(),
        "more than one execution: {more_than_once:?}"
    );
    let unexpected: Vec<&String> = executions
        .keys()
        .filter(|n| !want.contains(n.as_str()))
        .collect();
    assert!(
        unexpected.is_empty(),
        "executions no rule should start: {unexpected:?}"
    );
    assert_eq!(executions.len(), want.len());
    let inputs: Vec<Value> = executions
        .values()
        .flatten()
        .map(|i| serde_json::from_str(i).expect("execution input is the command JSON"))
        .collect();
    let t = Tally::new(&traffic.expected, &[inputs]);
    t.assert_content(&traffic.expected, |_, _| false);
    let replayed = h.workers[survivor]
        .logs_with("command delivered")
        .iter()
        .filter(|l| l["fields"]["already_handled"] == true)
        .count();
    h.log(format_args!(
        "{} executions, one per expected command; the survivor found {replayed} already started",
        executions.len()
    ));
}

/// Enhanced fan-out from LATEST on an idle stream, renewed every 3 s: the
/// renewals before the first record resume at the last event's
/// continuation sequence number (resubscribing at LATEST would skip what
/// arrives between two subscriptions); records written after two idle
/// renewals, and across later ones, are each read exactly once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enhanced_fan_out_idle_renewals_resume_at_the_continuation() {
    let mut h = Harness::new("efo-idle", 2).await;
    let start = traffic_start(20_000, 30_000);
    let traffic = Traffic::brute_force(84, 10, start, 75_000);
    let consumer = h.efo_consumer();
    let w = h
        .spawn_sole(
            "w0",
            &Spawn {
                args: &[
                    "--enhanced-fan-out",
                    &consumer,
                    "--subscription-renew-ms",
                    "3000",
                    "--start-position",
                    "latest",
                ],
                log: Some("info,sshwarden::source::kinesis::reader=debug"),
                ..Spawn::default()
            },
        )
        .await;
    let d = Deadline::new("two idle renewals on each shard", MAX_WAIT);
    loop {
        h.check_running();
        let renewals = h.workers[w].logs_with("renewing the subscription");
        let per_shard = |s: &str| {
            renewals
                .iter()
                .filter(|l| l["fields"]["shard"] == s)
                .count()
        };
        let (a, b) = (
            per_shard("shardId-000000000000"),
            per_shard("shardId-000000000001"),
        );
        if a >= 2 && b >= 2 {
            break;
        }
        d.check(|| format!("renewals {a} and {b}"));
        pause(200).await;
    }
    // Before any record, the first subscription starts at LATEST and the
    // renewals after the continuation sequence number of the last event.
    for shard in ["shardId-000000000000", "shardId-000000000001"] {
        let from: Vec<String> = h.workers[w]
            .logs_with("subscribing")
            .iter()
            .filter(|l| l["fields"]["shard"] == shard)
            .map(|l| l["fields"]["from"].as_str().unwrap_or_default().to_owned())
            .collect();
        assert_eq!(
            from.first().map(String::as_str),
            Some("LATEST"),
            "{shard}: {from:?}"
        );
        assert!(
            from.len() >= 3 && from[1..].iter().all(|f| f == "AFTER_SEQUENCE_NUMBER"),
            "{shard}: idle renewals must resume at the continuation: {from:?}"
        );
    }
    put_paced(&h, &traffic.records, 6, 1_500).await;
    h.log(format_args!(
        "wrote {} records after the idle renewals; {} commands expected",
        traffic.records.len(),
        traffic.expected.len()
    ));
    assert_read_exactly_once(&mut h, w, &traffic).await;
}
