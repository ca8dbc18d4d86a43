//! The Prometheus metrics of `sshwarden run` (both sources) and the
//! readiness verdict they add up to. Served by [`crate::service::http`];
//! the sink probe that keeps `sink_up` current lives in [`crate::sink::probe`].
//!
//! `/readyz` answers 200 only while the worker is started and not draining,
//! holds at least one shard lease or partition, and its sink answered the
//! last probe; otherwise 503 with the reasons ([`Metrics::not_ready_reasons`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The reader a sample belongs to: a Kinesis shard id, or `topic/partition`
/// for Kafka. The label is named `shard` for both sources, so one dashboard
/// (`sum by (shard)`) serves either.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReaderLabel {
    pub shard: String,
}

impl ReaderLabel {
    pub fn new(reader: impl Into<String>) -> Self {
        ReaderLabel {
            shard: reader.into(),
        }
    }

    /// The reader's name, for logs.
    pub fn name(&self) -> &str {
        &self.shard
    }
}

/// An error of one reader (see [`ReaderLabel`]), or of the Kafka topic, by kind.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReaderError {
    pub shard: String,
    pub kind: String,
}

/// What a reader's engine set aside or merged, by kind (see
/// `Engine::skip_counts`): late, partly_late, duplicate, clamped,
/// repeated_attempt, evicted_instance, evicted_source.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct EngineEventLabel {
    pub shard: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
}

/// A command held for a person instead of acted on: its action, and which
/// gate held it (`policy`: the shard's engine; `fleet`: the fleet-wide
/// blast-radius budget).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HeldLabel {
    pub action: String,
    pub gate: String,
}

/// A command the sink gave up on (a target check refused it, or an error
/// no retry can fix), by cause.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GaveUpLabel {
    pub cause: String,
}

/// A quarantine execution that did not succeed: its status and error.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ExecutionLabel {
    pub status: String,
    pub error: String,
}

/// A block that did not complete, by error (`sshwarden.ForeignRuleInRange`,
/// an EC2 or DynamoDB code, ...).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BlockErrorLabel {
    pub error: String,
}

#[derive(Default)]
pub struct Metrics {
    pub records: Family<ReaderLabel, Counter>,
    pub bytes: Family<ReaderLabel, Counter>,
    pub events: Family<ReaderLabel, Counter>,
    pub millis_behind_latest: Family<ReaderLabel, Gauge>,
    /// Totals since the reader's engine started (a new lease starts a new engine).
    pub engine_events: Family<EngineEventLabel, Gauge>,
    pub errors: Family<ReaderError, Counter>,
    pub commands: Family<ActionLabel, Counter>,
    pub command_failures: Counter,
    pub commands_pending: Gauge,
    /// Held commands, apart from `commands` (notifications included there).
    pub commands_held: Family<HeldLabel, Counter>,
    /// Commands the sink could not carry out and will not retry.
    pub commands_given_up: Family<GaveUpLabel, Counter>,
    /// Quarantine executions seen failed, timed out or aborted (sink sfn).
    pub executions_failed: Family<ExecutionLabel, Counter>,
    /// Of those, the ones redriven.
    pub executions_redriven: Counter,
    pub leases_held: Gauge,
    pub checkpoints: Family<ReaderLabel, Counter>,
    /// 1 while the sink answered its last probe (stdout: always).
    pub sink_up: Gauge,
    /// Kafka source: messages between a partition reader's position and the partition's end.
    pub kafka_lag: Family<ReaderLabel, Gauge>,
    /// Kafka source: partitions assigned to this worker by the consumer group.
    pub partitions_assigned: Gauge,
    /// Kafka source: times a partition was paused because its reader was behind.
    pub kafka_pauses: Family<ReaderLabel, Counter>,
    /// Fleet stage: partials a shard's reader wrote to the stream of partials, and their bytes.
    pub partials_written: Family<ReaderLabel, Counter>,
    pub partial_bytes: Family<ReaderLabel, Counter>,
    /// Fleet stage: what a reader of the stream of partials merged, by kind
    /// (totals since its stage started).
    pub fleet_stage: Family<EngineEventLabel, Gauge>,
    /// Bans in force in the blocks table at this worker's last sweep.
    pub blocks_active: Gauge,
    /// Blocks this worker evicted to make room (direct sink).
    pub block_evictions: Counter,
    /// Block attempts that ended in an error, retried or not.
    pub block_failures: Family<BlockErrorLabel, Counter>,
    /// Started (lease table reachable) and not draining.
    pub ready: AtomicBool,
}

impl Metrics {
    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut r = Registry::with_prefix("sshwarden");
        r.register(
            "records",
            "Records read (Kinesis records, Kafka messages)",
            self.records.clone(),
        );
        r.register(
            "bytes",
            "Bytes read (Kinesis record data, Kafka message payloads)",
            self.bytes.clone(),
        );
        r.register("events", "Log events decoded", self.events.clone());
        r.register(
            "partials_written",
            "Partials a shard's reader wrote to the fleet stage's stream",
            self.partials_written.clone(),
        );
        r.register(
            "fleet_stage",
            "Fleet stage: partials merged, finals, duplicates, replaced, late, networks dropped, left to a shard, rules fired (per reader of the stream of partials)",
            self.fleet_stage.clone(),
        );
        r.register(
            "partial_bytes",
            "Bytes of partials a shard's reader wrote to the fleet stage's stream",
            self.partial_bytes.clone(),
        );
        r.register(
            "millis_behind_latest",
            "How far the shard reader is behind the tip of the shard",
            self.millis_behind_latest.clone(),
        );
        r.register(
            "engine_events",
            "Events the reader's engine set aside or merged since it started, by kind: late (every window closed), partly_late, duplicate (same event id), clamped (time ahead of arrival), repeated_attempt (another line of a counted attempt), evicted_instance and evicted_source (keys past the caps)",
            self.engine_events.clone(),
        );
        r.register(
            "errors",
            "Errors by reader (shard, or topic/partition) and kind",
            self.errors.clone(),
        );
        r.register(
            "commands",
            "Commands delivered by action",
            self.commands.clone(),
        );
        r.register(
            "command_failures",
            "Failed command deliveries (each is retried)",
            self.command_failures.clone(),
        );
        r.register(
            "commands_held",
            "Commands held for a person instead of acted on, by action and gate (policy, fleet); not counted in commands",
            self.commands_held.clone(),
        );
        r.register(
            "commands_given_up",
            "Commands the sink handled without acting and will not retry (a target check refused them, or an error no retry fixes), by cause",
            self.commands_given_up.clone(),
        );
        r.register(
            "executions_failed",
            "Quarantine executions that failed, timed out or were aborted, by status and error (sink sfn; each reported once per worker)",
            self.executions_failed.clone(),
        );
        r.register(
            "executions_redriven",
            "Quarantine executions redriven (RedriveExecution) after they stopped outside the machine's failure branch",
            self.executions_redriven.clone(),
        );
        r.register(
            "commands_pending",
            "Commands waiting for delivery (holding their shard's checkpoint)",
            self.commands_pending.clone(),
        );
        r.register(
            "leases_held",
            "Shard leases held by this worker",
            self.leases_held.clone(),
        );
        r.register(
            "checkpoints",
            "Checkpoints written",
            self.checkpoints.clone(),
        );
        r.register(
            "sink_up",
            "1 if the sink answered its last probe, else 0",
            self.sink_up.clone(),
        );
        r.register(
            "blocks_active",
            "Bans in force in the blocks table (prefixes with deny entries), read at this worker's last sweep; the same table for every worker: take the max, not the sum",
            self.blocks_active.clone(),
        );
        r.register(
            "block_evictions",
            "Blocks this worker evicted from a full reserved range (the soonest-expiring; direct sink: the block state machine names its evictions in the notification)",
            self.block_evictions.clone(),
        );
        r.register(
            "block_failures",
            "Block attempts that ended in an error, by error: retried ones (throttling, the ledger) and given-up ones (a foreign rule in the range, a missing ACL)",
            self.block_failures.clone(),
        );
        r.register(
            "kafka_consumer_lag",
            "Kafka: messages between the partition reader's position and the end of the partition",
            self.kafka_lag.clone(),
        );
        r.register(
            "kafka_partitions_assigned",
            "Kafka: partitions assigned to this worker by the consumer group",
            self.partitions_assigned.clone(),
        );
        r.register(
            "kafka_pauses",
            "Kafka: times a partition was paused because its reader was behind (backpressure)",
            self.kafka_pauses.clone(),
        );
        r
    }

    /// Why the worker is not ready, or `None` when it is.
    pub fn not_ready_reasons(&self) -> Option<Vec<&'static str>> {
        let mut reasons = Vec::new();
        if !self.ready.load(Ordering::Relaxed) {
            reasons.push("not started or draining");
        }
        // A Kinesis worker reads what it leases, a Kafka worker what the
        // consumer group assigned it; either way, holding nothing means a standby.
        if self.leases_held.get() < 1 && self.partitions_assigned.get() < 1 {
            reasons.push("no shard lease or partition held");
        }
        if self.sink_up.get() < 1 {
            reasons.push("sink unreachable");
        }
        (!reasons.is_empty()).then_some(reasons)
    }

    /// Counts an error of `reader` (a shard, a topic/partition, or the Kafka topic).
    pub fn error(&self, reader: &str, kind: &str) {
        self.errors
            .get_or_create(&ReaderError {
                shard: reader.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_needs_start_a_lease_and_the_sink() {
        let m = Metrics::default();
        let reasons = m.not_ready_reasons().unwrap();
        assert_eq!(
            reasons,
            [
                "not started or draining",
                "no shard lease or partition held",
                "sink unreachable"
            ]
        );
        m.set_ready(true);
        m.leases_held.set(2);
        m.sink_up.set(1);
        assert_eq!(m.not_ready_reasons(), None);
        m.sink_up.set(0);
        assert_eq!(m.not_ready_reasons().unwrap(), ["sink unreachable"]);
        m.sink_up.set(1);
        m.set_ready(false);
        assert_eq!(m.not_ready_reasons().unwrap(), ["not started or draining"]);
    }
}

/// Every metric is documented in the README and the dashboard asks only for
/// metrics that exist. Families without samples are not encoded, so the
/// names come from the `register` calls in this file.
#[cfg(test)]
mod documented {
    fn registered() -> Vec<String> {
        let source = include_str!("metrics.rs");
        let names: Vec<String> = source
            .split("r.register(")
            .skip(1)
            .filter_map(|rest| rest.trim_start().strip_prefix('"'))
            .filter_map(|rest| rest.split('"').next())
            .filter(|name| {
                !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c == '_')
            })
            .map(|name| format!("sshwarden_{name}"))
            .collect();
        assert!(names.len() >= 10, "{names:?}");
        names
    }

    #[test]
    fn every_metric_is_in_the_readme() {
        let readme = include_str!("../../README.md");
        for name in registered() {
            assert!(
                readme.contains(&format!("`{name}`"))
                    || readme.contains(&format!("`{name}_total`")),
                "README.md does not document {name} (Observability)"
            );
        }
    }

    #[test]
    fn the_dashboard_asks_for_existing_metrics() {
        let dashboard = include_str!("../../infra/grafana-dashboard.json");
        let names = registered();
        let mut asked = 0;
        for (i, _) in dashboard.match_indices("sshwarden_") {
            let name: String = dashboard[i..]
                .chars()
                .take_while(|c| c.is_ascii_lowercase() || *c == '_')
                .collect();
            let family = name.strip_suffix("_total").unwrap_or(&name);
            assert!(
                names.iter().any(|n| n == family),
                "the dashboard asks for {name}, which is not registered"
            );
            asked += 1;
        }
        assert!(asked >= 10, "only {asked} queries");
    }
}
