//! What the fleet stage's tests share on either source: one guess as an
//! event, and the fleet commands the workers issued, by distinct id.

use std::collections::{BTreeMap, BTreeSet};

use serde_json::Value;
use sshwarden_loadgen::GeneratedEvent;

/// A `Failed password` for root from `src` on instance `instance`, the
/// `n`th of the test (its pid, port and event id).
pub fn failed(instance: usize, time_ms: i64, src: &str, n: usize) -> GeneratedEvent {
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

/// The commands of fleet rules across every worker: (rule, subject) → how
/// many distinct command ids. A reader that takes a shard or partition of
/// partials over (a lease or a rebalance moving at start, a kill) replays
/// and may print a command again, under the same id: the sinks take one id
/// once (Step Functions execution names, the block ledger), so once means
/// one id.
pub fn fleet_commands(outputs: &[Vec<Value>]) -> BTreeMap<(String, String), usize> {
    let mut by: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
    for c in outputs.iter().flatten() {
        let rule = c["rule"].as_str().unwrap_or_default();
        if rule.starts_with("fleet-") {
            let subject = c["source"].as_str().unwrap_or_default().to_owned();
            let id = c["id"].as_str().unwrap_or_default().to_owned();
            by.entry((rule.to_owned(), subject)).or_default().insert(id);
        }
    }
    by.into_iter().map(|(k, ids)| (k, ids.len())).collect()
}

/// Every worker's commands of shard rules, as (rule, source), for the log.
pub fn shard_commands(outputs: &[Vec<Value>]) -> Vec<(&str, &str)> {
    outputs
        .iter()
        .flatten()
        .map(|c| {
            (
                c["rule"].as_str().unwrap_or_default(),
                c["source"].as_str().unwrap_or_default(),
            )
        })
        .filter(|(r, _)| !r.starts_with("fleet-"))
        .collect()
}

/// What a spray from `src` over instances on many `readers` (shards or
/// partitions) must give: no reader alone fired `spray`, the fleet stage
/// fired `fleet-spray` under one id (as it fired every fleet rule), and its
/// command blocks. Returns that command.
pub fn one_fleet_spray<'o>(outputs: &'o [Vec<Value>], src: &str, readers: &str) -> &'o Value {
    let shard_sprays: Vec<&Value> = outputs
        .iter()
        .flatten()
        .filter(|c| c["rule"] == "spray")
        .collect();
    assert!(
        shard_sprays.is_empty(),
        "no {readers} alone sees 10 instances: {shard_sprays:?}"
    );
    let fleet = fleet_commands(outputs);
    let spray = ("fleet-spray".to_owned(), format!("{src}/32"));
    assert_eq!(fleet.get(&spray), Some(&1), "{fleet:?}");
    assert!(
        fleet.values().all(|&n| n == 1),
        "each fleet rule under one id: {fleet:?}"
    );
    let c = outputs
        .iter()
        .flatten()
        .find(|c| c["rule"] == "fleet-spray")
        .unwrap();
    assert_eq!(c["action"], "block", "{c}");
    c
}
