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

mod group;
pub mod offsets;
pub mod reader;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context as _};
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::ClientConfig;
use sshwarden_pipeline::{Engine, EngineConfig};
use tracing::{error, info};

use crate::config::{KafkaArgs, SinkSettings};
use crate::source::{default_worker_id, Context, Worker};
use group::{poll_loop, Group, GroupContext};

/// A Kafka worker whose settings were checked, before anything starts.
pub struct KafkaWorker {
    args: KafkaArgs,
    engine_config: EngineConfig,
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
        Ok(KafkaWorker {
            args,
            engine_config,
            reset,
        })
    }
}

impl Worker for KafkaWorker {
    fn service_needs(&self) -> (&SinkSettings, std::net::SocketAddr, &EngineConfig) {
        (&self.args.sink, self.args.metrics_addr, &self.engine_config)
    }

    /// Serves the topic until SIGTERM/SIGINT: the worker's whole life.
    async fn serve(self, context: Context) -> anyhow::Result<()> {
        let KafkaWorker {
            args,
            engine_config,
            reset,
        } = self;
        let Context {
            sink,
            metrics,
            shutdown,
            ..
        } = context;

        let client_id = args.worker_id.clone().unwrap_or_else(default_worker_id);
        let mut config = ClientConfig::new();
        config
            .set("bootstrap.servers", &args.brokers)
            .set("group.id", &args.group)
            .set("client.id", &client_id)
            // Offsets move only under the checkpoint rule, from this code.
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", reset)
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
        for (k, v) in &args.options {
            config.set(k, v);
        }
        let drain = Duration::from_secs(args.shutdown_secs);
        let group = Arc::new(Group {
            topic: args.topic.clone(),
            format: args.format,
            engine_config,
            sink,
            metrics: metrics.clone(),
            runtime: tokio::runtime::Handle::current(),
            checkpoint_every: Duration::from_millis(args.checkpoint_ms.max(100)),
            idle: Duration::from_millis(args.idle_poll_ms.max(10)),
            drain,
            readers: Mutex::new(HashMap::new()),
        });
        let consumer: BaseConsumer<GroupContext> = config
            .create_with_context(GroupContext(group.clone()))
            .context("cannot create the Kafka consumer")?;
        consumer
            .subscribe(&[&args.topic])
            .with_context(|| format!("cannot subscribe to {}", args.topic))?;
        metrics.set_ready(true);
        info!(worker = %client_id, brokers = %args.brokers, topic = %args.topic, group = %args.group, format = ?args.format, "worker started");

        // librdkafka's poll blocks: the loop gets a thread of its own.
        let poll_shutdown = shutdown.clone();
        let mut poller =
            tokio::task::spawn_blocking(move || poll_loop(consumer, group, poll_shutdown));
        let early = tokio::select! {
            _ = shutdown.cancelled() => None,
            ended = &mut poller => Some(ended),
        };
        metrics.set_ready(false);
        let result = match early {
            // Nothing is consumed any more: exit non-zero so the task is replaced.
            Some(ended) => {
                shutdown.cancel();
                Err(anyhow::anyhow!(
                    "the Kafka poll loop ended unexpectedly: {ended:?}"
                ))
            }
            None => {
                info!("shutting down: draining partition readers");
                // The poll loop drains, commits and leaves the group; it is
                // bounded by the drain deadline plus the group's leave.
                match tokio::time::timeout(drain + Duration::from_secs(5), poller).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => error!(error = %e, "the Kafka poll loop failed"),
                    Err(_) => {
                        error!("the Kafka poll loop did not stop before the shutdown deadline")
                    }
                }
                Ok(())
            }
        };
        result
    }
}
