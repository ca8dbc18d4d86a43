//! What every source starts with: the AWS SDK's configuration, the sink
//! with its fleet-wide gate, the metrics and their HTTP endpoints
//! ([`http`]), SIGTERM/SIGINT handling and the sink probe ([`Service`]);
//! the worker id; the wall clock; and the shared record → engine → deliver
//! step ([`record`], [`deliver`]). The sources (`crate::source`) build on it; it knows
//! nothing of them.

pub mod deliver;
pub mod http;
pub mod record;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sshwarden_pipeline::EngineConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::SinkSettings;
use crate::metrics::Metrics;

/// What both sources (Kinesis, Kafka) start with: the AWS SDK's own chain
/// (endpoints, credentials; 10-s attempts), the sink with its fleet-wide
/// gate, `/metrics` `/healthz` `/readyz`, SIGTERM/SIGINT handling and the
/// sink probe behind `/readyz`.
pub struct Service {
    pub sdk: aws_config::SdkConfig,
    pub sink: Arc<crate::sink::Sink>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
    pub server: JoinHandle<anyhow::Result<()>>,
}

impl Service {
    pub async fn start(
        sink: &SinkSettings,
        metrics_addr: SocketAddr,
        engine_config: &EngineConfig,
    ) -> anyhow::Result<Service> {
        let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
            .timeout_config(
                aws_config::timeout::TimeoutConfig::builder()
                    .operation_attempt_timeout(Duration::from_secs(10))
                    .build(),
            )
            .load()
            .await;
        let built =
            Arc::new(crate::sink::build(sink, &sdk, engine_config.policy.blast_radius).await?);
        let metrics = Arc::new(Metrics::default());
        let shutdown = CancellationToken::new();
        let server = tokio::spawn(http::serve(metrics_addr, metrics.clone(), shutdown.clone()));
        spawn_signal_handler(shutdown.clone());
        crate::sink::probe::watch_sink(
            crate::sink::probe::probe(sink, &sdk),
            metrics.clone(),
            shutdown.clone(),
        );
        Ok(Service {
            sdk,
            sink: built,
            metrics,
            shutdown,
            server,
        })
    }
}

/// SIGTERM (ECS stopping the task) or SIGINT cancels `shutdown`: the source drains.
fn spawn_signal_handler(shutdown: CancellationToken) {
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(e) => {
                    error!(error = %e, "cannot listen for SIGTERM");
                    return;
                }
            };
        tokio::select! {
            _ = term.recv() => info!("SIGTERM received"),
            _ = tokio::signal::ctrl_c() => info!("SIGINT received"),
        }
        shutdown.cancel();
    });
}

/// A worker id unique enough for a lease table or a consumer group: the
/// host name and a random suffix.
pub fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "worker".into());
    format!("{host}-{:08x}", rand::random::<u32>())
}

/// The wall clock in epoch milliseconds (processing time).
pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}
