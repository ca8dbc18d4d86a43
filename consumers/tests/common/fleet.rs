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
