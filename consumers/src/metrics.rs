//! Prometheus metrics and the health endpoints (`/metrics`, `/healthz`,
//! `/readyz`) of `sshwarden run`, the sink probe behind readiness, and the
//! client side of `sshwarden health`.
//!
//! `/healthz` answers while the process serves HTTP (liveness: the container
//! health check). `/readyz` answers 200 only while the worker is started and
//! not draining, holds at least one shard lease, and its sink answered the
//! last probe; otherwise 503 with the reasons.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

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
    /// 1 while the sink answered its last probe (stdout: always).
    pub sink_up: Gauge,
    /// Kafka source: messages between a partition reader's position and the partition's end.
    pub kafka_lag: Family<ShardLabel, Gauge>,
    /// Kafka source: partitions assigned to this worker by the consumer group.
    pub partitions_assigned: Gauge,
    /// Kafka source: times a partition was paused because its reader was behind.
    pub kafka_pauses: Family<ShardLabel, Counter>,
    /// Started (lease table reachable) and not draining.
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
            "sink_up",
            "1 if the sink answered its last probe, else 0",
            self.sink_up.clone(),
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
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await?;
    Ok(())
}

/// What "the sink is reachable" means for each sink.
pub enum SinkProbe {
    /// Writing to stdout cannot be probed ahead of a write: always up.
    Stdout,
    /// DescribeStateMachine on the quarantine machine: the endpoint answers,
    /// the credentials work and the machine exists.
    Sfn {
        client: aws_sdk_sfn::Client,
        state_machine_arn: String,
    },
    /// GetTopicAttributes on the notification topic (the direct sink): the
    /// endpoint answers, the credentials work and the topic exists.
    #[cfg(feature = "direct")]
    Direct {
        client: aws_sdk_sns::Client,
        topic_arn: String,
    },
}

impl SinkProbe {
    async fn check(&self) -> Result<(), String> {
        match self {
            SinkProbe::Stdout => Ok(()),
            SinkProbe::Sfn {
                client,
                state_machine_arn,
            } => client
                .describe_state_machine()
                .state_machine_arn(state_machine_arn)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| crate::aws_error(e).to_string()),
            #[cfg(feature = "direct")]
            SinkProbe::Direct { client, topic_arn } => client
                .get_topic_attributes()
                .topic_arn(topic_arn)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| crate::aws_error(e).to_string()),
        }
    }
}

/// How often the sink is probed for `/readyz` and `sshwarden_sink_up`.
pub const SINK_PROBE_EVERY: Duration = Duration::from_secs(15);

/// Probes the sink now and then every [`SINK_PROBE_EVERY`] until shutdown,
/// keeping `sink_up` current; a change is logged once, not every probe.
pub fn watch_sink(
    probe: SinkProbe,
    metrics: Arc<Metrics>,
    shutdown: tokio_util::sync::CancellationToken,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut was_up = None;
        loop {
            let result = probe.check().await;
            let up = result.is_ok();
            metrics.sink_up.set(i64::from(up));
            if was_up != Some(up) {
                match &result {
                    Ok(()) => tracing::info!("sink reachable"),
                    Err(e) => tracing::warn!(error = %e, "sink unreachable"),
                }
                was_up = Some(up);
            }
            tokio::select! {
                _ = tokio::time::sleep(SINK_PROBE_EVERY) => {}
                _ = shutdown.cancelled() => return,
            }
        }
    })
}

/// Where `sshwarden health` connects for a worker that listens on `addr`:
/// an unspecified address (`0.0.0.0`, `[::]`, as in a container) is reached
/// on loopback.
pub fn local_target(addr: SocketAddr) -> SocketAddr {
    match addr.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => (Ipv4Addr::LOCALHOST, addr.port()).into(),
        IpAddr::V6(ip) if ip.is_unspecified() => (Ipv6Addr::LOCALHOST, addr.port()).into(),
        _ => addr,
    }
}

/// One `GET path` to the worker's endpoint; the status code and the body.
///
/// Hand-written on std's `TcpStream` on purpose: it is one request to our own
/// server on loopback, for a container health check in an image without curl,
/// and it keeps an HTTP client stack out of the binary. The response is read
/// until the server closes (`Connection: close`), at most 64 KiB.
pub fn get(addr: SocketAddr, path: &str, timeout: Duration) -> anyhow::Result<(u16, String)> {
    use anyhow::Context;
    let mut stream = TcpStream::connect_timeout(&addr, timeout)
        .with_context(|| format!("cannot connect to {addr}"))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    write!(
        stream,
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .with_context(|| format!("cannot send the request to {addr}"))?;
    let mut response = Vec::new();
    stream
        .take(64 * 1024)
        .read_to_end(&mut response)
        .with_context(|| format!("no complete answer from {addr}"))?;
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = head
        .lines()
        .next()
        .and_then(|line| line.split_whitespace().nth(1))
        .and_then(|code| code.parse::<u16>().ok())
        .with_context(|| format!("{addr} did not answer with an HTTP status line"))?;
    Ok((status, body.to_owned()))
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

    #[test]
    fn unspecified_addresses_are_reached_on_loopback() {
        let t = |s: &str| local_target(s.parse().unwrap()).to_string();
        assert_eq!(t("0.0.0.0:9464"), "127.0.0.1:9464");
        assert_eq!(t("[::]:9464"), "[::1]:9464");
        assert_eq!(t("10.0.0.5:9000"), "10.0.0.5:9000");
    }

    #[tokio::test]
    async fn health_client_reads_the_status_of_both_endpoints() {
        let metrics = Arc::new(Metrics::default());
        let shutdown = tokio_util::sync::CancellationToken::new();
        // Bind first to learn a free port, then serve on it.
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = probe.local_addr().unwrap();
        drop(probe);
        let server = tokio::spawn(serve(addr, metrics.clone(), shutdown.clone()));
        let timeout = Duration::from_secs(5);
        let fetch = move |path: &'static str| {
            tokio::task::spawn_blocking(move || {
                // The server may still be binding: retry for a bounded time.
                let mut last = None;
                for _ in 0..100 {
                    match get(addr, path, timeout) {
                        Ok(r) => return Ok(r),
                        Err(e) => last = Some(e),
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                Err(last.unwrap())
            })
        };
        let (status, body) = fetch("/healthz").await.unwrap().unwrap();
        assert_eq!((status, body.as_str()), (200, "ok\n"));
        let (status, body) = fetch("/readyz").await.unwrap().unwrap();
        assert_eq!(status, 503);
        assert!(body.contains("no shard lease or partition held"), "{body}");
        metrics.set_ready(true);
        metrics.leases_held.set(1);
        metrics.sink_up.set(1);
        let (status, body) = fetch("/readyz").await.unwrap().unwrap();
        assert_eq!(
            (status, body.as_str()),
            (200, "ready: 1 leases held, sink up\n")
        );
        let (status, _) = fetch("/nothing-here").await.unwrap().unwrap();
        assert_eq!(status, 404);
        shutdown.cancel();
        server.await.unwrap().unwrap();
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
