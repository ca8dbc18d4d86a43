//! `sshwarden health`: one GET to a running worker's `/healthz` (or
//! `/readyz`), exit 0 on 200: the container health check.

use std::io::{Read, Write};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::time::Duration;

use crate::config::{with_default, ConfigArgs, DEFAULT_METRICS_ADDR};

/// `--timeout-ms`'s default.
const TIMEOUT_MS: u64 = 2000;

#[derive(clap::Args)]
pub struct HealthArgs {
    /// Ask /readyz (a lease held, the sink reachable) instead of /healthz (the process serves).
    #[arg(long)]
    ready: bool,
    #[arg(long, env = "SSHWARDEN_METRICS_ADDR", help = with_default(
        "The worker's --metrics-addr; an unspecified address (0.0.0.0) is asked on loopback",
        DEFAULT_METRICS_ADDR,
    ))]
    metrics_addr: Option<std::net::SocketAddr>,
    #[arg(long, env = "SSHWARDEN_HEALTH_TIMEOUT_MS", default_value_t = TIMEOUT_MS,
        help = with_default("Give up after this many milliseconds", TIMEOUT_MS))]
    timeout_ms: u64,
}

/// `sshwarden health`: one GET to the worker's endpoint, quiet on success.
pub fn health(args: &HealthArgs, config: &ConfigArgs) -> anyhow::Result<()> {
    let addr = local_target(config.metrics_addr(args.metrics_addr)?);
    let path = if args.ready { "/readyz" } else { "/healthz" };
    let timeout = std::time::Duration::from_millis(args.timeout_ms.max(1));
    let (status, body) = get(addr, path, timeout)?;
    if status == 200 {
        Ok(())
    } else {
        anyhow::bail!("{path} on {addr} answered {status}: {}", body.trim())
    }
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
    use std::sync::Arc;

    use super::*;
    use crate::metrics::Metrics;

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
        let listener = crate::service::http::listen("127.0.0.1:0".parse().unwrap())
            .await
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(crate::service::http::serve(
            listener,
            metrics.clone(),
            shutdown.clone(),
        ));
        let timeout = Duration::from_secs(5);
        let fetch = move |path: &'static str| {
            // Bound already: a connection waits in the backlog until served.
            tokio::task::spawn_blocking(move || get(addr, path, timeout))
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
