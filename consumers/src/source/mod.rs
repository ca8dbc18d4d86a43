//! Where records come from: a Kinesis stream ([`kinesis`]) or, with the
//! `kafka` feature, a Kafka topic ([`kafka`]). The service
//! ([`crate::service`]) checks a source's settings, starts what every source
//! needs and hands it over as a [`Context`]; the source reads, runs each
//! record through the engine ([`record`]) and delivers through
//! [`crate::sink`]. Neither source imports the other.

#[cfg(feature = "kafka")]
pub mod kafka;
pub mod kinesis;
pub mod record;
pub mod stage;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;

use sshwarden_pipeline::EngineConfig;
use tokio_util::sync::CancellationToken;

use crate::config::SinkSettings;
use crate::metrics::Metrics;
use crate::sink::Sink;

/// A source's worker whose own settings were checked (each source's
/// `prepare`): what the service must start for it, then its whole life.
pub trait Worker {
    /// The sink's settings, the metrics address and the engine's
    /// configuration (its blast radius), for the service to start.
    fn service_needs(&self) -> (&SinkSettings, SocketAddr, &EngineConfig);

    /// Serves until SIGTERM/SIGINT cancels `context.shutdown`, then drains.
    fn serve(self, context: Context) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// What the service hands a source: the AWS SDK's configuration, the sink
/// with its fleet-wide gate, the metrics, and the token SIGTERM/SIGINT
/// cancels (the source drains, checkpoints and returns).
pub struct Context {
    pub sdk: aws_config::SdkConfig,
    pub sink: Arc<Sink>,
    pub metrics: Arc<Metrics>,
    pub shutdown: CancellationToken,
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
