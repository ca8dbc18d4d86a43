//! Helpers shared by the tests that talk to the local emulators: endpoints
//! that must be reachable (a test fails, never skips, naming
//! `scripts/emulators up`) and an SDK configuration for them. Used by
//! loadgen/tests/{emulators,writer_faults}.rs and, through `#[path]`, by
//! consumers/tests/loadgen_e2e.rs; not every test uses every helper.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::TcpStream;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use aws_sdk_kinesis::types::ShardIteratorType;

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
    aws_config::defaults(aws_config::BehaviorVersion::latest())
        .region(aws_config::Region::new("us-east-1"))
        .credentials_provider(aws_sdk_kinesis::config::Credentials::new(
            "testing", "testing", None, None, "test",
        ))
        .endpoint_url(endpoint)
        .timeout_config(
            aws_config::timeout::TimeoutConfig::builder()
                .operation_attempt_timeout(Duration::from_secs(20))
                .build(),
        )
        .load()
        .await
}

/// A name suffix unique to this process and moment.
pub fn suffix() -> String {
    let t = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("{}-{}", std::process::id(), t % 1_000_000_000)
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
