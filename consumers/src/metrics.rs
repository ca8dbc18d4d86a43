//! Prometheus metrics and the health endpoints (`/metrics`, `/healthz`,
//! `/readyz`) of `sshwarden run`.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardLabel {
    pub shard: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ShardError {
    pub shard: String,
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ActionLabel {
    pub action: String,
}

#[derive(Default)]
pub struct Metrics {
    pub records: Family<ShardLabel, Counter>,
    pub bytes: Family<ShardLabel, Counter>,
    pub events: Family<ShardLabel, Counter>,
    pub millis_behind_latest: Family<ShardLabel, Gauge>,
    pub errors: Family<ShardError, Counter>,
    pub commands: Family<ActionLabel, Counter>,
    pub command_failures: Counter,
    pub commands_pending: Gauge,
    pub leases_held: Gauge,
    pub checkpoints: Family<ShardLabel, Counter>,
    /// Kafka source: messages between a partition reader's position and the partition's end.
    pub kafka_lag: Family<ShardLabel, Gauge>,
    /// Kafka source: partitions assigned to this worker by the consumer group.
    pub partitions_assigned: Gauge,
    /// Kafka source: times a partition was paused because its reader was behind.
    pub kafka_pauses: Family<ShardLabel, Counter>,
    pub ready: AtomicBool,
}

impl Metrics {
    pub fn registry(self: &Arc<Self>) -> Registry {
        let mut r = Registry::with_prefix("sshwarden");
        r.register("records", "Kinesis records read", self.records.clone());
        r.register("bytes", "Kinesis record bytes read", self.bytes.clone());
        r.register("events", "Log events decoded", self.events.clone());
        r.register(
            "millis_behind_latest",
            "How far the shard reader is behind the tip of the shard",
            self.millis_behind_latest.clone(),
        );
        r.register("errors", "Errors by shard and kind", self.errors.clone());
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

    pub fn error(&self, shard: &str, kind: &str) {
        self.errors
            .get_or_create(&ShardError {
                shard: shard.to_owned(),
                kind: kind.to_owned(),
            })
            .inc();
    }

    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }
}

/// Serves the endpoints until `shutdown` fires.
pub async fn serve(
    addr: SocketAddr,
    metrics: Arc<Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) -> anyhow::Result<()> {
    use axum::http::StatusCode;
    use axum::routing::get;
    let registry = Arc::new(metrics.registry());
    let for_ready = metrics.clone();
    let app = axum::Router::new()
        .route(
            "/metrics",
            get(move || {
                let registry = registry.clone();
                async move {
                    let mut body = String::new();
                    match prometheus_client::encoding::text::encode(&mut body, &registry) {
                        Ok(()) => (StatusCode::OK, body),
                        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
                    }
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = for_ready.ready.load(Ordering::Relaxed);
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        );
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}
