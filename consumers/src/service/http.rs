//! The worker's HTTP endpoints: `/metrics` (Prometheus text), `/healthz`
//! (answers while the process serves: the container's liveness check) and
//! `/readyz` (200 only when [`Metrics::not_ready_reasons`] has none, else 503
//! with the reasons).

use std::net::SocketAddr;
use std::sync::Arc;

use crate::metrics::Metrics;

/// The endpoints' listener on `addr`, bound before the worker starts: a
/// worker whose port is taken fails at once, rather than reading on with
/// no health checks or metrics.
pub async fn listen(addr: SocketAddr) -> anyhow::Result<tokio::net::TcpListener> {
    use anyhow::Context as _;
    tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr} for /metrics, /healthz and /readyz"))
}

/// Serves the endpoints on `listener` until `shutdown` fires.
pub async fn serve(
    listener: tokio::net::TcpListener,
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
                let verdict = match for_ready.not_ready_reasons() {
                    None => (
                        StatusCode::OK,
                        format!(
                            "ready: {} leases held, sink up\n",
                            for_ready.leases_held.get()
                        ),
                    ),
                    Some(reasons) => (
                        StatusCode::SERVICE_UNAVAILABLE,
                        format!("not ready: {}\n", reasons.join(", ")),
                    ),
                };
                async move { verdict }
            }),
        );
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}
