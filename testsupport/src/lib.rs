//! Test support shared by the workspace's integration tests (a
//! dev-dependency of `sshwarden-loadgen` and `sshwarden-consumers`, never a
//! dependency): endpoints of the local emulators that must be reachable (a
//! test fails, never skips, naming `scripts/emulators up`), an SDK
//! configuration for them, the Kinesis fault proxy, a minimal HTTP GET and
//! the clock. What is about `sshwarden run` itself (its workers, the ground
//! truth's commands) stays in consumers/tests/common.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_kinesis::types::ShardIteratorType;
use serde_json::Value;

/// The URL in `var` (or `default`); panics, saying how to start the
/// emulators, when nothing listens there.
pub fn endpoint(var: &str, default: &str, name: &str) -> String {
    let url = std::env::var(var).unwrap_or_else(|_| default.to_owned());
    let authority = url.trim_start_matches("http://").trim_end_matches('/');
    let reachable = std::net::ToSocketAddrs::to_socket_addrs(authority)
        .ok()
        .and_then(|mut a| a.next())
        .is_some_and(|a| TcpStream::connect_timeout(&a, Duration::from_secs(2)).is_ok());
    assert!(
        reachable,
        "{name} is not reachable at {url}. This test needs the local emulators: run \
         `scripts/emulators up` (or set {var} to where {name} listens)."
    );
    url
}

pub fn kinesis_endpoint() -> String {
    endpoint(
        "SSHWARDEN_KINESIS_ENDPOINT",
        "http://127.0.0.1:4567",
        "kinesis-local",
    )
}

pub fn moto_endpoint() -> String {
    endpoint("SSHWARDEN_MOTO_ENDPOINT", "http://127.0.0.1:5000", "moto")
}

/// Test credentials, us-east-1, `endpoint`; a call attempt times out after 20 s.
pub async fn sdk(endpoint: &str) -> aws_config::SdkConfig {
    sdk_with_attempt_timeout(endpoint, Duration::from_secs(20)).await
}

/// Test credentials, us-east-1, `endpoint`; a call attempt times out after
/// `attempt_timeout`.
pub async fn sdk_with_attempt_timeout(
    endpoint: &str,
    attempt_timeout: Duration,
) -> aws_config::SdkConfig {
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kinesis::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .endpoint_url(endpoint)
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(attempt_timeout)
                .build(),
        )
        .load()
        .await
}

pub fn dynalite_endpoint() -> String {
    endpoint(
        "SSHWARDEN_DYNALITE_ENDPOINT",
        "http://127.0.0.1:4569",
        "dynalite",
    )
}

/// Milliseconds since the epoch, now.
pub fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// A name suffix unique to this process and moment.
pub fn suffix() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{}-{}", std::process::id(), t % 1_000_000_000)
}

/// A minimal HTTP/1.1 GET over plain TCP: (status, body).
pub fn http_get(url: &str) -> std::io::Result<(u16, String)> {
    let bad = |what: &str| std::io::Error::new(std::io::ErrorKind::InvalidInput, what.to_owned());
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// URLs are supported"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let addr = std::net::ToSocketAddrs::to_socket_addrs(&if authority.contains(':') {
        authority.to_owned()
    } else {
        format!("{authority}:80")
    })?
    .next()
    .ok_or_else(|| bad("no address"))?;
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    s.read_to_end(&mut raw)?;
    let text = String::from_utf8_lossy(&raw);
    let status = text
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| bad("not an HTTP response"))?;
    let body = text
        .split_once("\r\n\r\n")
        .map_or("", |(_, b)| b)
        .to_owned();
    Ok((status, body))
}

/// Deletes the stream when the test ends, pass or fail.
pub struct StreamGuard(pub aws_sdk_kinesis::Client, pub String);

impl Drop for StreamGuard {
    fn drop(&mut self) {
        let (client, name) = (self.0.clone(), self.1.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let _ = rt.block_on(
                client
                    .delete_stream()
                    .stream_name(name)
                    .enforce_consumer_deletion(true)
                    .send(),
            );
        })
        .join();
    }
}

/// Every record of every shard from TRIM_HORIZON: shard index → (key, data) in order.
pub async fn read_all(
    client: &aws_sdk_kinesis::Client,
    stream: &str,
    want: usize,
) -> BTreeMap<String, Vec<(String, Vec<u8>)>> {
    let deadline = Instant::now() + Duration::from_secs(60);
    let shards = client
        .list_shards()
        .stream_name(stream)
        .send()
        .await
        .unwrap();
    let mut out = BTreeMap::new();
    let mut total = 0;
    for s in shards.shards() {
        let mut it = client
            .get_shard_iterator()
            .stream_name(stream)
            .shard_id(s.shard_id())
            .shard_iterator_type(ShardIteratorType::TrimHorizon)
            .send()
            .await
            .unwrap()
            .shard_iterator()
            .map(str::to_owned);
        let mut got: Vec<(String, Vec<u8>)> = Vec::new();
        let mut empty = 0;
        while let Some(i) = it {
            assert!(Instant::now() < deadline, "reading {stream} took over 60 s");
            let r = client
                .get_records()
                .shard_iterator(i)
                .limit(10_000)
                .send()
                .await
                .unwrap();
            for rec in r.records() {
                got.push((
                    rec.partition_key().unwrap_or_default().to_owned(),
                    rec.data().as_ref().to_vec(),
                ));
            }
            empty = if r.records().is_empty() { empty + 1 } else { 0 };
            // Caught up twice in a row: this shard is read.
            if empty >= 2 || total + got.len() >= want && r.records().is_empty() {
                break;
            }
            it = r.next_shard_iterator().map(str::to_owned);
        }
        total += got.len();
        out.insert(s.shard_id().to_owned(), got);
    }
    out
}

/// Starts `scripts/lib/kinesis_fault_proxy.py` (in the venv's Python when
/// there is one) in front of `upstream` with the fault `script`, logging
/// every Kinesis call to `log`, for 300 s at most: returns the process (the
/// caller kills it by PID) and the proxy's endpoint on an ephemeral loopback
/// port.
pub fn start_fault_proxy(
    upstream: &str,
    script: &Value,
    extra_args: &[&str],
    log: &Path,
    stderr: Stdio,
) -> (Child, String) {
    let python = std::env::var("HOME")
        .ok()
        .map(|home| PathBuf::from(home).join(".cache/sshwarden/venv/bin/python"))
        .filter(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("python3"));
    // The test's own crate (set by cargo when it runs the test, so a target
    // directory shared by two checkouts cannot point at the other one) sits
    // one level below the workspace root, as this crate does.
    let crate_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")));
    let script_path = crate_dir
        .join("../scripts/lib/kinesis_fault_proxy.py")
        .display()
        .to_string();
    let mut child = Command::new(&python)
        .arg(&script_path)
        .args(["--upstream", upstream, "--max-seconds", "300"])
        .args(extra_args)
        .arg("--script")
        .arg(script.to_string())
        .arg("--log")
        .arg(log)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {} {script_path}: {e}", python.display()));
    let mut first = String::new();
    let stdout = child.stdout.take().expect("proxy stdout");
    std::io::BufRead::read_line(&mut std::io::BufReader::new(stdout), &mut first)
        .expect("read the proxy's port");
    let Some(port) = serde_json::from_str::<Value>(&first)
        .ok()
        .and_then(|v| v["port"].as_u64())
    else {
        let _ = child.kill();
        let _ = child.wait();
        panic!("the fault proxy did not report its port: {first:?}");
    };
    (child, format!("http://127.0.0.1:{port}"))
}
