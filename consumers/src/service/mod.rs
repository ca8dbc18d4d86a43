//! The worker process behind `sshwarden run`: checks the chosen source's
//! settings, starts what every source needs (the AWS SDK's configuration,
//! the sink with its fleet-wide gate and its probe, the metrics and their
//! HTTP endpoints ([`http`]), SIGTERM/SIGINT handling), hands them to the
//! source as a [`Context`] and serves until the source has drained.

pub mod http;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use sshwarden_pipeline::EngineConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info};

use crate::config::{SinkSettings, SourceSettings};
use crate::metrics::Metrics;
use crate::source::{Context, Worker};

/// Serves `source` until SIGTERM/SIGINT: the worker's whole life. The
/// source's own settings are checked before anything starts.
pub async fn serve(source: SourceSettings, engine_config: EngineConfig) -> anyhow::Result<()> {
    match source {
        SourceSettings::Kinesis(args) => {
            run(crate::source::kinesis::KinesisWorker::prepare(
                args,
                engine_config,
            )?)
            .await
        }
        SourceSettings::Kafka(args) => serve_kafka(args, engine_config).await,
    }
}

#[cfg(feature = "kafka")]
async fn serve_kafka(
    args: crate::config::KafkaArgs,
    engine_config: EngineConfig,
) -> anyhow::Result<()> {
    run(crate::source::kafka::KafkaWorker::prepare(
        args,
        engine_config,
    )?)
    .await
}

#[cfg(not(feature = "kafka"))]
async fn serve_kafka(_: crate::config::KafkaArgs, _: EngineConfig) -> anyhow::Result<()> {
    anyhow::bail!(
        "--source kafka: this sshwarden was built without the Kafka source; \
         rebuild with `cargo build --release --features kafka`"
    )
}

/// Starts what `worker` needs, serves it, then stops the HTTP server.
async fn run(worker: impl Worker) -> anyhow::Result<()> {
    let (sink, metrics_addr, engine) = worker.service_needs();
    let (context, server) = start(sink, metrics_addr, engine).await?;
    let shutdown = context.shutdown.clone();
    stopped(worker.serve(context).await, server, shutdown).await
}

/// Starts what every source needs: the AWS SDK's own chain (endpoints,
/// credentials; 10-s attempts), the sink with its fleet-wide gate,
/// `/metrics` `/healthz` `/readyz`, SIGTERM/SIGINT handling and the sink
/// probe behind `/readyz`. Returns the source's context and the HTTP
/// server's task.
async fn start(
    sink: &SinkSettings,
    metrics_addr: SocketAddr,
    engine_config: &EngineConfig,
) -> anyhow::Result<(Context, JoinHandle<anyhow::Result<()>>)> {
    let listener = http::listen(metrics_addr).await?;
    let sdk = aws_config::defaults(aws_config::BehaviorVersion::latest())
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_secs(10))
                .build(),
        )
        .load()
        .await;
    let metrics = Arc::new(Metrics::default());
    let built = Arc::new(
        crate::sink::build(sink, &sdk, engine_config.policy.blast_radius, &metrics).await?,
    );
    let shutdown = CancellationToken::new();
    let server = tokio::spawn(http::serve(listener, metrics.clone(), shutdown.clone()));
    spawn_signal_handler(shutdown.clone());
    crate::sink::probe::watch_sink(
        crate::sink::probe::probe(sink, &sdk),
        metrics.clone(),
        shutdown.clone(),
    );
    let context = Context {
        sdk,
        sink: built,
        metrics,
        shutdown,
    };
    Ok((context, server))
}

/// After the source returned (drained, or failed): stop the HTTP server
/// (with the shutdown token, already cancelled after a drain), give it its
/// last moments, then say so.
async fn stopped(
    result: anyhow::Result<()>,
    server: JoinHandle<anyhow::Result<()>>,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    shutdown.cancel();
    let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    info!("worker stopped");
    result
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
