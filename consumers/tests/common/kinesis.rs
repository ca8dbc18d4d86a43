//! The harness of the `sshwarden run` tests on Kinesis: the emulators
//! (Kinesis on kinesis-local, the lease table on moto), each test's own
//! stream and lease table, seeded traffic written to it, workers started
//! with the test timings, the lease table as the test reads it, the end
//! markers a "nothing more will come" check waits for, the Kinesis fault
//! proxy and a Step Functions state machine on moto.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;
use std::path::PathBuf;
use std::process::Child;
use std::time::{Duration, Instant};

use aws_sdk_dynamodb::types::AttributeValue;
use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};
use serde_json::Value;
use sshwarden_loadgen::{encode_records, RecordOptions, SubscriptionRecord};
use sshwarden_testsupport::{sdk_with_attempt_timeout, start_fault_proxy};

use super::*;

/// The worker timings every test uses unless it says otherwise.
pub const FAILOVER_MS: u64 = 3_000;
pub const TIMINGS: &[&str] = &[
    "--checkpoint-ms",
    "500",
    "--idle-poll-ms",
    "200",
    "--shard-sync-ms",
    "1000",
];

// ------------------------------------------------------------------ emulators

#[derive(Clone)]
pub struct Endpoints {
    pub moto: String,
    pub kinesis: String,
}

/// The emulators' endpoints; fails the test when one does not answer.
pub fn emulators() -> Endpoints {
    let e = Endpoints {
        moto: std::env::var("SSHWARDEN_MOTO_ENDPOINT")
            .unwrap_or_else(|_| "http://127.0.0.1:5000".into()),
        kinesis: std::env::var("SSHWARDEN_KINESIS_ENDPOINT")
            .unwrap_or_else(|_| "http://127.0.0.1:4567".into()),
    };
    for (name, var, url, probe) in [
        ("moto", "SSHWARDEN_MOTO_ENDPOINT", &e.moto, "/moto-api/"),
        (
            "kinesis-local",
            "SSHWARDEN_KINESIS_ENDPOINT",
            &e.kinesis,
            "/healthcheck",
        ),
    ] {
        if let Err(err) = http_get(&format!("{url}{probe}")) {
            panic!(
                "{name} is not reachable at {url} ({err}). These tests need the local \
                 emulators: run `scripts/emulators up` (or set {var} to where {name} listens)."
            );
        }
    }
    e
}

/// Test credentials, us-east-1; a call attempt times out after 10 s.
pub async fn sdk_config(endpoint: &str) -> aws_config::SdkConfig {
    sdk_with_attempt_timeout(endpoint, Duration::from_secs(10)).await
}

pub async fn pause(ms: u64) {
    tokio::time::sleep(Duration::from_millis(ms)).await;
}

/// One look's worth of sleep in a wait-until-fact loop.
pub async fn poll() {
    tokio::time::sleep(POLL).await;
}

// ------------------------------------------------------------------ traffic

/// Seeded fleet traffic: records (one instance each, in time order) and the
/// commands they must yield under the default rules without cooldown or
/// blast radius.
pub struct Traffic {
    pub records: Vec<SubscriptionRecord>,
    pub expected: Vec<Expected>,
}

impl Traffic {
    /// Every instance under a brute force of `per_second` attempts for the
    /// whole `[start_ms, start_ms + duration_ms)`, plus benign traffic and
    /// background scanning.
    pub fn brute_force(seed: u64, instances: usize, start_ms: i64, duration_ms: i64) -> Traffic {
        let fleet = brute_force_fleet(seed, instances, start_ms, duration_ms);
        let opts = RecordOptions {
            events_per_record: 25,
            max_span_ms: 5_000,
            ..RecordOptions::default()
        };
        let records = encode_records(fleet.events(), &opts);
        let expected = expected_commands(&fleet);
        Traffic { records, expected }
    }

    /// Records whose last event is before `time_ms`, and the rest.
    pub fn split_at(&self, time_ms: i64) -> (&[SubscriptionRecord], &[SubscriptionRecord]) {
        let i = self.records.partition_point(|r| r.last_time_ms < time_ms);
        self.records.split_at(i)
    }
}

// ------------------------------------------------------------------ workers

/// How to start a worker, beyond the defaults.
#[derive(Default)]
pub struct Spawn<'a> {
    pub failover_ms: Option<u64>,
    /// More flags for `sshwarden run` (global ones included).
    pub args: &'a [&'a str],
    /// SSHWARDEN_LOG [info].
    pub log: Option<&'a str>,
    /// `--sink` [stdout].
    pub sink: Option<&'a str>,
    /// Where the worker reaches Kinesis [the emulator]; a fault proxy.
    pub kinesis: Option<&'a str>,
}

// ------------------------------------------------------------------ harness

/// A lease as the test reads it from the table.
#[derive(Debug, Clone)]
pub struct LeaseRow {
    pub key: String,
    pub owner: Option<String>,
    pub checkpoint: String,
}

/// Deletes the stream and the lease table when dropped (from a thread of its
/// own: drop may run inside the test's runtime, or while it unwinds).
pub struct Cleanup {
    pub env: Endpoints,
    pub stream: String,
    pub table: String,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let (env, stream, table) = (self.env.clone(), self.stream.clone(), self.table.clone());
        clean_up(async move {
            let kinesis = aws_sdk_kinesis::Client::new(&sdk_config(&env.kinesis).await);
            let dynamo = aws_sdk_dynamodb::Client::new(&sdk_config(&env.moto).await);
            let _ = kinesis
                .delete_stream()
                .stream_name(&stream)
                .enforce_consumer_deletion(true)
                .send()
                .await;
            let _ = dynamo.delete_table().table_name(&table).send().await;
        });
    }
}

/// Waits (at most MAX_WAIT) until `stream` is ACTIVE (after CreateStream,
/// SplitShard or MergeShards).
pub async fn wait_stream_active(kinesis: &aws_sdk_kinesis::Client, stream: &str) {
    let d = Deadline::new(format!("stream {stream} to be ACTIVE"), MAX_WAIT);
    loop {
        let out = kinesis
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await;
        let status = out
            .as_ref()
            .ok()
            .and_then(|o| o.stream_description_summary())
            .map(|s| s.stream_status().clone());
        if status == Some(StreamStatus::Active) {
            return;
        }
        d.check(|| format!("status {status:?}"));
        pause(100).await;
    }
}

/// One test's stream, lease table, workers and scratch directory (the
/// workers' part is [`Workers`], which a harness derefs to).
pub struct Harness {
    // Dropped in this order: workers are killed before the stream goes.
    base: Workers,
    pub env: Endpoints,
    pub stream: String,
    pub table: String,
    /// The shards the stream was created with.
    pub shards: usize,
    pub kinesis: aws_sdk_kinesis::Client,
    pub dynamo: aws_sdk_dynamodb::Client,
    _cleanup: Cleanup,
}

derefs_to_workers!(Harness);

impl Harness {
    /// A new stream of `shards` shards (ACTIVE) and a lease table name.
    pub async fn new(label: &str, shards: i32) -> Harness {
        let env = emulators();
        let unique = unique_name(label);
        let stream = format!("sshwarden-it-{unique}");
        let table = format!("sshwarden-it-leases-{unique}");
        let kinesis = aws_sdk_kinesis::Client::new(&sdk_config(&env.kinesis).await);
        let dynamo = aws_sdk_dynamodb::Client::new(&sdk_config(&env.moto).await);
        let cleanup = Cleanup {
            env: env.clone(),
            stream: stream.clone(),
            table: table.clone(),
        };
        // Kinesis (and kinesis-local) limit how many streams are CREATING at
        // once: tests running in parallel wait their turn.
        let d = Deadline::new(format!("CreateStream {stream}"), MAX_WAIT);
        loop {
            let Err(e) = kinesis
                .create_stream()
                .stream_name(&stream)
                .shard_count(shards)
                .send()
                .await
            else {
                break;
            };
            let text = aws_sdk_kinesis::error::DisplayErrorContext(&e).to_string();
            if !text.contains("concurrently") {
                panic!(
                    "CreateStream {stream} ({shards} shards) on kinesis-local at {}: {text}\n\
                     (kinesis-local allows SHARD_LIMIT open shards in all, 50 by default: \
                     streams left by other runs count)",
                    env.kinesis
                );
            }
            d.check(|| text.clone());
            pause(250).await;
        }
        let h = Harness {
            base: Workers::new("", label, format!("stream {stream}, lease table {table}")),
            env,
            stream,
            table,
            shards: shards as usize,
            kinesis,
            dynamo,
            _cleanup: cleanup,
        };
        h.wait_stream_active().await;
        h
    }

    pub async fn wait_stream_active(&self) {
        wait_stream_active(&self.kinesis, &self.stream).await;
    }

    /// Starts `sshwarden run` as `worker_id` with the default timings, no
    /// cooldown and no blast radius.
    pub fn spawn(&mut self, worker_id: &str) -> usize {
        self.spawn_with(worker_id, &Spawn::default())
    }

    /// Spawns the test's first worker and waits until it holds the lease of
    /// every shard the stream was created with.
    pub async fn spawn_sole(&mut self, worker_id: &str, opts: &Spawn<'_>) -> usize {
        let w = self.spawn_with(worker_id, opts);
        self.wait_balanced(self.shards, &[self.shards]).await;
        w
    }

    pub fn spawn_with(&mut self, worker_id: &str, opts: &Spawn) -> usize {
        let failover = opts.failover_ms.unwrap_or(FAILOVER_MS).to_string();
        let mut args: Vec<&str> = vec![
            "--stream",
            &self.stream,
            "--lease-table",
            &self.table,
            "--sink",
            opts.sink.unwrap_or("stdout"),
            "--failover-ms",
            &failover,
        ];
        args.extend_from_slice(TIMINGS);
        args.extend_from_slice(opts.args);
        let env = [
            ("AWS_ENDPOINT_URL", self.env.moto.as_str()),
            (
                "AWS_ENDPOINT_URL_KINESIS",
                opts.kinesis.unwrap_or(&self.env.kinesis),
            ),
            ("AWS_ACCESS_KEY_ID", "testing"),
            ("AWS_SECRET_ACCESS_KEY", "testing"),
            ("AWS_REGION", "us-east-1"),
            ("AWS_EC2_METADATA_DISABLED", "true"),
            ("SSHWARDEN_LOG", opts.log.unwrap_or("info")),
        ];
        self.base.spawn(worker_id, &args, &env)
    }

    /// Writes records with PutRecords (partition key: the instance id, in
    /// order, failed entries retried); returns the shard each landed in.
    pub async fn put(&self, records: &[SubscriptionRecord]) -> Vec<String> {
        let raw: Vec<(String, Vec<u8>)> = records
            .iter()
            .map(|r| (r.log_stream.clone(), r.data.clone()))
            .collect();
        self.put_raw(&raw).await
    }

    /// Writes `records`, which must reach all `shards` shards, and says
    /// where they went: each instance's shard, and the event time up to
    /// which each instance's records go.
    pub async fn put_covering<'r>(
        &self,
        records: &'r [SubscriptionRecord],
        shards: usize,
    ) -> (HashMap<&'r str, String>, HashMap<&'r str, i64>) {
        let landed = self.put(records).await;
        assert_covers(&landed, shards);
        let mut written_to: HashMap<&str, i64> = HashMap::new();
        for r in records {
            let t = written_to.entry(r.log_stream.as_str()).or_insert(i64::MIN);
            *t = (*t).max(r.last_time_ms);
        }
        let shard_of = records
            .iter()
            .map(|r| r.log_stream.as_str())
            .zip(landed)
            .collect();
        (shard_of, written_to)
    }

    /// An enhanced fan-out consumer name: the stream's name is unique to
    /// this test run, and so is the consumer's.
    pub fn efo_consumer(&self) -> String {
        format!(
            "efo-{}",
            self.stream
                .strip_prefix("sshwarden-it-")
                .unwrap_or(&self.stream)
        )
    }

    pub async fn put_raw(&self, records: &[(String, Vec<u8>)]) -> Vec<String> {
        let mut shards = vec![String::new(); records.len()];
        for (chunk_no, chunk) in records.chunks(100).enumerate() {
            let mut pending: Vec<usize> = (0..chunk.len()).collect();
            let d = Deadline::new("PutRecords to succeed", Duration::from_secs(30));
            while !pending.is_empty() {
                let entries = pending
                    .iter()
                    .map(|&i| {
                        PutRecordsRequestEntry::builder()
                            .partition_key(&chunk[i].0)
                            .data(Blob::new(chunk[i].1.clone()))
                            .build()
                            .unwrap()
                    })
                    .collect();
                match self
                    .kinesis
                    .put_records()
                    .stream_name(&self.stream)
                    .set_records(Some(entries))
                    .send()
                    .await
                {
                    Ok(out) => {
                        let mut failed = Vec::new();
                        for (&i, r) in pending.iter().zip(out.records()) {
                            match r.shard_id() {
                                Some(s) if r.error_code().is_none() => {
                                    shards[chunk_no * 100 + i] = s.to_owned()
                                }
                                _ => failed.push(i),
                            }
                        }
                        pending = failed;
                    }
                    Err(e) => {
                        d.check(|| aws_sdk_kinesis::error::DisplayErrorContext(&e).to_string())
                    }
                }
                if !pending.is_empty() {
                    d.check(|| format!("{} records keep failing", pending.len()));
                    pause(200).await;
                }
            }
        }
        shards
    }

    /// The lease table (empty until a worker created it).
    pub async fn leases(&self) -> Vec<LeaseRow> {
        let Ok(out) = self
            .dynamo
            .scan()
            .table_name(&self.table)
            .consistent_read(true)
            .send()
            .await
        else {
            return Vec::new();
        };
        let s = |item: &HashMap<String, AttributeValue>, k: &str| {
            item.get(k).and_then(|v| v.as_s().ok()).cloned()
        };
        let mut rows: Vec<LeaseRow> = out
            .items()
            .iter()
            .map(|item| LeaseRow {
                key: s(item, "leaseKey").unwrap_or_default(),
                owner: s(item, "leaseOwner"),
                checkpoint: s(item, "checkpoint").unwrap_or_default(),
            })
            .collect();
        rows.sort_by(|a, b| a.key.cmp(&b.key));
        rows
    }

    /// Leases held per worker id (unowned leases under "").
    pub async fn holdings(&self) -> BTreeMap<String, Vec<String>> {
        let mut by: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for l in self.leases().await {
            by.entry(l.owner.unwrap_or_default())
                .or_default()
                .push(l.key);
        }
        by
    }

    /// Waits (at most MAX_WAIT, for `what`) until `worker` alone holds
    /// all `leases` leases, looking every `poll_ms`.
    pub async fn wait_sole_holder(
        &mut self,
        worker: &str,
        leases: usize,
        what: &str,
        poll_ms: u64,
    ) {
        let d = Deadline::new(what, MAX_WAIT);
        loop {
            let held = self.holdings().await;
            if held.len() == 1 && held.get(worker).is_some_and(|v| v.len() == leases) {
                break;
            }
            self.check_running();
            d.check(|| format!("holdings {held:?}"));
            pause(poll_ms).await;
        }
    }

    /// Waits until `leases` leases exist and the workers hold them in the
    /// given numbers (any order), steadily for a second; returns the holdings.
    pub async fn wait_balanced(
        &mut self,
        leases: usize,
        shares: &[usize],
    ) -> BTreeMap<String, Vec<String>> {
        let mut want = shares.to_vec();
        want.sort_unstable();
        let d = Deadline::new(format!("leases to balance as {shares:?}"), MAX_WAIT);
        let mut steady_since: Option<(Instant, BTreeMap<String, Vec<String>>)> = None;
        loop {
            self.check_running();
            let h = self.holdings().await;
            let mut got: Vec<usize> = h
                .iter()
                .filter(|(owner, _)| !owner.is_empty())
                .map(|(_, v)| v.len())
                .collect();
            got.sort_unstable();
            let total: usize = h.values().map(Vec::len).sum();
            if got == want && total == leases && !h.contains_key("") {
                match &steady_since {
                    Some((t, prev)) if *prev == h => {
                        if t.elapsed() >= Duration::from_millis(1_200) {
                            return h;
                        }
                    }
                    _ => steady_since = Some((Instant::now(), h.clone())),
                }
            } else {
                steady_since = None;
            }
            d.check(|| format!("holdings {h:?}"));
            pause(200).await;
        }
    }

    pub async fn list_shards(&self) -> Vec<aws_sdk_kinesis::types::Shard> {
        self.kinesis
            .list_shards()
            .stream_name(&self.stream)
            .send()
            .await
            .expect("ListShards")
            .shards()
            .to_vec()
    }

    /// Writes an [`END_MARKER`] after the traffic to every open shard (put
    /// at the shard's starting hash key), then waits until the `readers`
    /// counted each one: every record written before it was read and its
    /// commands delivered. Returns the shards. What a check that nothing
    /// more will come (no duplicate, nothing read twice) waits for.
    pub async fn read_to_the_end(&mut self, readers: &[usize]) -> Vec<String> {
        let mut shards = Vec::new();
        for s in self.list_shards().await {
            let closed = s
                .sequence_number_range()
                .is_some_and(|r| r.ending_sequence_number().is_some());
            if closed {
                continue;
            }
            let key = s
                .hash_key_range()
                .map(|r| r.starting_hash_key().to_owned())
                .expect("an open shard has a hash key range");
            let d = Deadline::new(
                format!("PutRecord of the end marker of {}", s.shard_id()),
                Duration::from_secs(30),
            );
            loop {
                match self
                    .kinesis
                    .put_record()
                    .stream_name(&self.stream)
                    .partition_key("end-marker")
                    .explicit_hash_key(&key)
                    .data(Blob::new(END_MARKER))
                    .send()
                    .await
                {
                    Ok(out) => {
                        assert_eq!(out.shard_id(), s.shard_id(), "end marker misplaced");
                        break;
                    }
                    Err(e) => {
                        d.check(|| aws_sdk_kinesis::error::DisplayErrorContext(&e).to_string());
                        poll().await;
                    }
                }
            }
            shards.push(s.shard_id().to_owned());
        }
        self.base.wait_end_markers(readers, &shards, 0);
        shards
    }
}

/// Asserts that each of `shards` received at least one of the records.
pub fn assert_covers(landed: &[String], shards: usize) {
    let hit: BTreeSet<&String> = landed.iter().collect();
    assert_eq!(
        hit.len(),
        shards,
        "the traffic must reach every shard (change the seed or the instance count): {hit:?}"
    );
}

// ------------------------------------------------------------------ faults

/// `scripts/lib/kinesis_fault_proxy.py` in front of kinesis-local: answers
/// the GetRecords calls its script names with faults (throttling, expired
/// iterators, 5xx, resets) and forwards everything else; logs every Kinesis
/// call. Started here on an ephemeral loopback port, bounded in time, and
/// killed by PID when dropped.
pub struct FaultProxy {
    pub child: Child,
    pub endpoint: String,
    pub log: PathBuf,
}

/// One Kinesis call as the proxy saw it.
#[derive(Debug, Clone, serde::Deserialize)]
pub struct ProxyCall {
    pub t: f64,
    pub target: Option<String>,
    pub shard: Option<String>,
    pub fault: Option<String>,
    pub last_sequence: Option<String>,
    #[serde(rename = "type")]
    pub iterator_type: Option<String>,
    pub after: Option<String>,
    /// PutRecords with `--log-entries`: each entry's data, lossy, cut short.
    pub data: Option<Vec<String>>,
}

impl FaultProxy {
    pub fn start(h: &Harness, script: &Value) -> FaultProxy {
        FaultProxy::start_with(h, script, &[])
    }

    /// With more flags for the proxy (`--log-entries`).
    pub fn start_with(h: &Harness, script: &Value, extra: &[&str]) -> FaultProxy {
        let log = h.dir.path().join("kinesis-proxy.jsonl");
        let stderr = File::create(h.dir.path().join("kinesis-proxy.stderr")).unwrap();
        let (child, endpoint) =
            start_fault_proxy(&h.env.kinesis, script, extra, &log, stderr.into());
        h.log(format_args!(
            "fault proxy (pid {}) on {endpoint}, script {script}",
            child.id()
        ));
        FaultProxy {
            child,
            endpoint,
            log,
        }
    }

    pub fn calls(&self) -> Vec<ProxyCall> {
        read_json_lines(&self.log)
            .into_iter()
            .filter_map(|v| serde_json::from_value(v).ok())
            .collect()
    }

    /// GetRecords and GetShardIterator calls per shard, in order.
    pub fn by_shard(&self) -> BTreeMap<String, Vec<ProxyCall>> {
        let mut by: BTreeMap<String, Vec<ProxyCall>> = BTreeMap::new();
        for c in self.calls() {
            if let Some(shard) = c.shard.clone() {
                by.entry(shard).or_default().push(c);
            }
        }
        by
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// `sshwarden_<name>` samples of a worker's /metrics whose labels include
/// every `label="value"` of `with`, by their `shard` label.
pub fn metric_by_shard(w: &Worker, name: &str, with: &[&str]) -> BTreeMap<String, f64> {
    samples_by_shard(&w.metrics(), &format!("sshwarden_{name}"), with)
}

/// GetRecords calls per shard that the proxy answered with one of `faults`.
pub fn injected(proxy: &FaultProxy, faults: &[&str]) -> BTreeMap<String, usize> {
    proxy
        .by_shard()
        .into_iter()
        .map(|(shard, calls)| {
            let n = calls
                .iter()
                .filter(|c| c.target.as_deref() == Some("GetRecords"))
                .filter(|c| c.fault.as_deref().is_some_and(|f| faults.contains(&f)))
                .count();
            (shard, n)
        })
        .collect()
}

// ------------------------------------------------------------------ sfn sink

/// A state machine on moto that does nothing (one Pass state); deleted when
/// dropped. Executions need not run: what is checked is which were started.
pub struct PassStateMachine {
    pub env: Endpoints,
    pub arn: String,
}

impl PassStateMachine {
    pub async fn create(h: &Harness) -> PassStateMachine {
        let sfn = aws_sdk_sfn::Client::new(&sdk_config(&h.env.moto).await);
        let name = format!(
            "sshwarden-it-{}",
            h.table
                .strip_prefix("sshwarden-it-leases-")
                .unwrap_or(&h.table)
        );
        let out = sfn
            .create_state_machine()
            .name(&name)
            .definition(r#"{"StartAt":"Noop","States":{"Noop":{"Type":"Pass","End":true}}}"#)
            .role_arn("arn:aws:iam::123456789012:role/sshwarden-it")
            .send()
            .await
            .unwrap_or_else(|e| {
                panic!(
                    "CreateStateMachine {name} on moto: {}",
                    aws_sdk_sfn::error::DisplayErrorContext(&e)
                )
            });
        PassStateMachine {
            env: h.env.clone(),
            arn: out.state_machine_arn().to_owned(),
        }
    }

    /// Every execution: name -> the inputs it was started with.
    pub async fn executions(&self) -> BTreeMap<String, Vec<String>> {
        let (sfn, executions) = self.list().await;
        let mut out: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for e in executions {
            let input = sfn
                .describe_execution()
                .execution_arn(e.execution_arn())
                .send()
                .await
                .expect("DescribeExecution")
                .input()
                .unwrap_or_default()
                .to_owned();
            out.entry(e.name().to_owned()).or_default().push(input);
        }
        out
    }

    /// The execution names only (cheap: no DescribeExecution).
    pub async fn names(&self) -> Vec<String> {
        let (_, executions) = self.list().await;
        executions.iter().map(|e| e.name().to_owned()).collect()
    }

    /// Every execution, all pages of ListExecutions, and the client.
    async fn list(
        &self,
    ) -> (
        aws_sdk_sfn::Client,
        Vec<aws_sdk_sfn::types::ExecutionListItem>,
    ) {
        let sfn = aws_sdk_sfn::Client::new(&sdk_config(&self.env.moto).await);
        let mut all = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = sfn
                .list_executions()
                .state_machine_arn(&self.arn)
                .set_next_token(token.take())
                .send()
                .await
                .expect("ListExecutions");
            all.extend(page.executions().iter().cloned());
            match page.next_token() {
                Some(t) if !t.is_empty() => token = Some(t.to_owned()),
                _ => return (sfn, all),
            }
        }
    }
}

impl Drop for PassStateMachine {
    fn drop(&mut self) {
        let (env, arn) = (self.env.clone(), self.arn.clone());
        clean_up(async move {
            let sfn = aws_sdk_sfn::Client::new(&sdk_config(&env.moto).await);
            let _ = sfn
                .delete_state_machine()
                .state_machine_arn(&arn)
                .send()
                .await;
        });
    }
}
