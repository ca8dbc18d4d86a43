//! `sshwarden run --source kafka`: the service on a Kafka (or MSK) topic,
//! with the same semantics as the Kinesis source. A consumer group spreads
//! the partitions over the workers; each assigned partition gets its own
//! reader and engine ([`reader`]); the group's committed offsets are the
//! checkpoints, and they only move under the checkpoint rule (docs/design.md)
//! ([`offsets`]): past a message once its commands are delivered and every
//! window it counted in has closed. The commit's metadata carries the
//! engine's event time, so the next owner does not re-fire closed windows.
//!
//! One thread polls the consumer (librdkafka's callbacks run there): it
//! forwards messages to the partition readers over bounded channels, pauses
//! a partition whose reader is behind (backpressure without blocking the
//! other partitions or the group's liveness) and resumes it, commits what the
//! readers allow every `checkpoint_ms`, and on a revoke (rebalance) or
//! SIGTERM stops the affected readers and commits their final offsets
//! synchronously before the partitions move. Per-partition lag comes from
//! librdkafka's statistics.
//!
//! With `--fleet-topic` (docs/fleet.md) each worker also runs the fleet
//! stage: its partition readers write the partials their engines build to
//! that topic (keyed by source network, with the load generator's Kafka
//! writer), their commits held before every message counted in a partial
//! not yet acknowledged; and a second consumer group (`--fleet-group`) reads
//! the topic of partials with the same readers running the fleet stage.

mod group;
pub mod offsets;
pub mod reader;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use sshwarden_loadgen::kafka::KafkaWriter;
use sshwarden_pipeline::fleet::FleetConfig;
use sshwarden_pipeline::partial::PartialConfig;
use sshwarden_pipeline::{Engine, EngineConfig};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::{KafkaArgs, SinkSettings};
use crate::metrics::Metrics;
use crate::sink::Sink;
use crate::source::stage::StageConfig;
use crate::source::{default_worker_id, Context, Worker};
use group::{poll_loop, Group, GroupContext};
use reader::PartialsTopic;

/// How long the writer of partials waits for the broker's acknowledgement
/// of a batch before the write fails (and is retried; the commit waits).
const PARTIALS_TIMEOUT: Duration = Duration::from_secs(30);

/// A Kafka worker whose settings were checked, before anything starts.
pub struct KafkaWorker {
    args: KafkaArgs,
    engine_config: EngineConfig,
    /// With `--fleet-topic`: the partitions' partials and the fleet stage, checked.
    fleet: Option<(PartialConfig, FleetConfig)>,
    reset: &'static str,
}

impl KafkaWorker {
    /// Checks the settings that no broker is needed to judge, so a bad
    /// setting fails before the service binds a port or a client.
    pub fn prepare(args: KafkaArgs, engine_config: EngineConfig) -> anyhow::Result<Self> {
        Engine::new(engine_config.clone()).map_err(anyhow::Error::msg)?;
        let reset = match args.start_position.as_str() {
            "trim-horizon" | "TRIM_HORIZON" | "earliest" => "earliest",
            "latest" | "LATEST" => "latest",
            other => bail!(
                "--start-position {other:?}: the Kafka source starts a partition without a committed \
                 offset at trim-horizon (earliest) or latest"
            ),
        };
        if args.topic.contains('\0') || args.group.contains('\0') {
            bail!("--topic and --group must not contain NUL");
        }
        let fleet = match &args.fleet {
            Some(f) => {
                if f.topic.contains('\0') || f.group.contains('\0') {
                    bail!("--fleet-topic and --fleet-group must not contain NUL");
                }
                Some(f.settings.configs(
                    &engine_config.policy,
                    engine_config.window.allowed_lateness_ms,
                )?)
            }
            None => None,
        };
        if fleet
            .as_ref()
            .is_some_and(|(_, f)| f.policy.rules.is_empty())
        {
            tracing::warn!(
                "the {} policy has no fleet rules: the fleet stage runs but sends and fires nothing",
                engine_config.policy.name.as_str()
            );
        }
        Ok(KafkaWorker {
            args,
            engine_config,
            fleet,
            reset,
        })
    }
}

impl Worker for KafkaWorker {
    fn service_needs(&self) -> (&SinkSettings, std::net::SocketAddr, &EngineConfig) {
        (&self.args.sink, self.args.metrics_addr, &self.engine_config)
    }

    /// Serves the topic until SIGTERM/SIGINT: the worker's whole life.
    /// With the fleet stage on, the same worker also serves the topic of
    /// partials, in its own consumer group (docs/fleet.md).
    async fn serve(self, context: Context) -> anyhow::Result<()> {
        let KafkaWorker {
            args,
            engine_config,
            fleet,
            reset,
        } = self;
        let Context {
            sink,
            metrics,
            shutdown,
            ..
        } = context;

        let client_id = args.worker_id.clone().unwrap_or_else(default_worker_id);
        let drain = Duration::from_secs(args.shutdown_secs);
        let groups = Groups {
            args: &args,
            client_id: &client_id,
            reset,
            sink,
            metrics: metrics.clone(),
            shutdown: shutdown.clone(),
            max_future_skew_ms: engine_config.max_future_skew_ms,
        };
        let mut pollers = JoinSet::new();
        match (&args.fleet, fleet) {
            (Some(topics), Some((partial_config, fleet_config))) => {
                let writer = KafkaWriter::new(&args.brokers, &args.options, PARTIALS_TIMEOUT)
                    .with_context(|| format!("the fleet stage's topic {}", topics.topic))?;
                let logs_config = EngineConfig {
                    partials: Some(partial_config),
                    ..engine_config
                };
                groups.start(
                    &mut pollers,
                    &args.topic,
                    &args.group,
                    StageConfig::Logs(logs_config),
                    Some(Arc::new(PartialsTopic {
                        writer,
                        topic: topics.topic.clone(),
                    })),
                )?;
                groups.start(
                    &mut pollers,
                    &topics.topic,
                    &topics.group,
                    StageConfig::Fleet(fleet_config),
                    None,
                )?;
                info!(worker = %client_id, brokers = %args.brokers, topic = %args.topic, group = %args.group,
                    fleet_topic = %topics.topic, fleet_group = %topics.group, format = ?args.format,
                    "worker started, with the fleet stage");
            }
            _ => {
                groups.start(
                    &mut pollers,
                    &args.topic,
                    &args.group,
                    StageConfig::Logs(engine_config),
                    None,
                )?;
                info!(worker = %client_id, brokers = %args.brokers, topic = %args.topic, group = %args.group, format = ?args.format, "worker started");
            }
        }
        metrics.set_ready(true);

        // Either poll loop ending before the shutdown is a failure.
        let early = tokio::select! {
            _ = shutdown.cancelled() => None,
            ended = pollers.join_next() => Some(ended),
        };
        metrics.set_ready(false);
        if early.is_some() {
            shutdown.cancel();
        } else {
            info!("shutting down: draining partition readers");
        }
        // Each poll loop drains, commits and leaves its group; that is
        // bounded by the drain deadline plus the group's leave.
        let stopped = tokio::time::timeout(drain + Duration::from_secs(5), async {
            while let Some(ended) = pollers.join_next().await {
                if let Err(e) = ended {
                    error!(error = %e, "a Kafka poll loop failed");
                }
            }
        })
        .await;
        if stopped.is_err() {
            error!("a Kafka poll loop did not stop before the shutdown deadline");
        }
        match early {
            // Nothing is consumed any more: exit non-zero so the task is replaced.
            Some(ended) => Err(anyhow::anyhow!(
                "the Kafka poll loop ended unexpectedly: {ended:?}"
            )),
            None => Ok(()),
        }
    }
}

/// What every consumer group of this worker shares.
struct Groups<'a> {
    args: &'a KafkaArgs,
    client_id: &'a str,
    reset: &'static str,
    sink: Arc<Sink>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    max_future_skew_ms: i64,
}

impl Groups<'_> {
    /// Joins `group` on `topic`, its partitions' readers running `stage`,
    /// and starts its poll loop on a thread of its own (librdkafka's poll
    /// blocks) in `pollers`.
    fn start(
        &self,
        pollers: &mut JoinSet<()>,
        topic: &str,
        group_id: &str,
        stage: StageConfig,
        partials_to: Option<Arc<PartialsTopic>>,
    ) -> anyhow::Result<()> {
        let args = self.args;
        let logs = matches!(stage, StageConfig::Logs(_));
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &args.brokers)
            .set("group.id", group_id)
            .set("client.id", self.client_id)
            // Offsets move only under the checkpoint rule, from this code.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", self.reset)
            // The end of a partition tells a reader it is caught up (idle windows may close).
            .set("enable.partition.eof", "true")
            .set("statistics.interval.ms", "1000")
            // A dead worker's partitions move after 10 s (the Kinesis source's
            // default failover), not Kafka's 45 s; tansu also waits about half
            // of it before the first assignment.
            .set("session.timeout.ms", "10000")
            .set("heartbeat.interval.ms", "1000")
            // What a paused partition may still hold in librdkafka's queue.
            .set("queued.max.messages.kbytes", "16384");
        if !logs {
            // Every partial written is read, whatever the logs' start position.
            config.set("auto.offset.reset", "earliest");
        }
        for (k, v) in &args.options {
            config.set(k, v);
        }
        let group = Arc::new(Group {
            topic: topic.to_owned(),
            format: args.format,
            stage,
            label_prefix: if logs { "" } else { "fleet:" },
            partials_to,
            counts_partitions: logs,
            max_future_skew_ms: self.max_future_skew_ms,
            sink: self.sink.clone(),
            metrics: self.metrics.clone(),
            runtime: tokio::runtime::Handle::current(),
            checkpoint_every: Duration::from_millis(args.checkpoint_ms.max(100)),
            idle: Duration::from_millis(args.idle_poll_ms.max(10)),
            drain: Duration::from_secs(args.shutdown_secs),
            readers: Mutex::new(HashMap::new()),
        });
        let consumer: BaseConsumer<GroupContext> = config
            .create_with_context(GroupContext(group.clone()))
            .with_context(|| format!("cannot create the Kafka consumer of {topic}"))?;
        consumer
            .subscribe(&[topic])
            .with_context(|| format!("cannot subscribe to {topic}"))?;
        let shutdown = self.shutdown.clone();
        pollers.spawn_blocking(move || poll_loop(consumer, group, shutdown));
        Ok(())
    }
}
