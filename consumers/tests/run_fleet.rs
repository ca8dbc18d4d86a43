//! The fleet stage in the service: separate `sshwarden run` processes read
//! an 8-shard stream of logs on kinesis-local (leases on moto), send their
//! shards' partials to a second stream keyed by source network, and read
//! that stream too (its own lease table) to merge them fleet-wide.
//!
//! Start the emulators first: `scripts/emulators up`. A test fails (never
//! skips) when one is not reachable. Every wait is bounded and waits for a
//! fact: a command, or the fleet stage having merged every partial written.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use sshwarden_loadgen::encode::{encode_batch, RecordOptions};
use sshwarden_loadgen::{GeneratedEvent, SubscriptionRecord};

mod common;
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
    let d = Deadline::new(format!("stream {name} to be ACTIVE"), MAX_WAIT);
    loop {
        let status = h
            .kinesis
            .describe_stream_summary()
            .stream_name(&name)
            .send()
            .await
            .ok()
            .and_then(|o| {
                o.stream_description_summary()
                    .map(|s| s.stream_status().clone())
            });
        if status == Some(aws_sdk_kinesis::types::StreamStatus::Active) {
            break;
        }
        d.check(|| format!("status {status:?}"));
        pause(100).await;
    }
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

fn failed(instance: usize, time_ms: i64, src: &str, n: usize) -> GeneratedEvent {
    GeneratedEvent {
        instance: format!("i-{instance:017x}"),
        time_ms,
        line: format!(
            "Dec  7 01:00:00 ip-10-0-0-{instance} sshd[{n}]: Failed password for root from {src} port {} ssh2",
            40_000 + n
        ),
        id: format!("{:056}", 1_000_000 + n),
        signal: None,
        source: None,
        scenario: None,
    }
}

/// The commands of fleet rules across every worker: (rule, subject) → how many.
fn fleet_commands(outputs: &[Vec<Value>]) -> BTreeMap<(String, String), usize> {
    let mut by = BTreeMap::new();
    for c in outputs.iter().flatten() {
        let rule = c["rule"].as_str().unwrap_or_default();
        if rule.starts_with("fleet-") {
            let subject = c["source"].as_str().unwrap_or_default().to_owned();
            *by.entry((rule.to_owned(), subject)).or_default() += 1;
        }
    }
    by
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spray_over_forty_instances_fires_once_fleet_wide_across_two_workers() {
    let mut h = Harness::new("fleet-spray", 8).await;
    let partials = partials_stream(&h, 2).await;
    h.policy = "graduated";
    let fleet_args = [
        "--fleet-stream",
        partials.name.as_str(),
        "--fleet-lease-table",
        partials.table.as_str(),
    ];
    for w in ["w0", "w1"] {
        h.spawn_with(
            w,
            &Spawn {
                args: &fleet_args,
                ..Spawn::default()
            },
        );
    }
    h.wait_balanced(8, &[4, 4]).await;

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
    // Nothing more will come from what was sent so far: every partial
    // written has been merged (windows still open send theirs later; a rule
    // fires once per window whatever comes).
    let d = Deadline::new("every partial written to be merged", MAX_WAIT);
    loop {
        let sum = |f: &dyn Fn(&Worker) -> f64| h.workers.iter().map(f).sum::<f64>();
        let written = sum(&|w| w.metric("sshwarden_partials_written_total"));
        let merged = sum(&|w| w.metric_where("sshwarden_fleet_stage", "kind=\"partials\""));
        if written > 0.0 && merged >= written {
            break;
        }
        h.check_running();
        d.check(|| format!("{merged} of {written} partials merged"));
        poll().await;
    }
    let outputs = h.outputs();
    // A shard that alone saw 5 guesses blocks the address itself (the
    // brute force); none saw 10 instances.
    let shard_sprays: Vec<&Value> = outputs
        .iter()
        .flatten()
        .filter(|c| c["rule"] == "spray")
        .collect();
    assert!(
        shard_sprays.is_empty(),
        "no shard alone sees 10 instances: {shard_sprays:?}"
    );
    let fleet = fleet_commands(&outputs);
    h.log(format_args!(
        "fleet commands {fleet:?}; shard commands {:?}",
        outputs
            .iter()
            .flatten()
            .map(|c| (
                c["rule"].as_str().unwrap_or_default(),
                c["source"].as_str().unwrap_or_default()
            ))
            .filter(|(r, _)| !r.starts_with("fleet-"))
            .collect::<Vec<_>>()
    ));
    let spray = ("fleet-spray".to_owned(), format!("{src}/32"));
    assert_eq!(fleet.get(&spray), Some(&1), "{fleet:?}");
    assert!(
        fleet.values().all(|&n| n == 1),
        "each fleet rule once: {fleet:?}"
    );
    let c = outputs
        .iter()
        .flatten()
        .find(|c| c["rule"] == "fleet-spray")
        .unwrap();
    assert_eq!(c["action"], "block");
    assert!(c["distinct"]["instances"].as_u64().unwrap() >= 10, "{c}");
}
