//! Kinesis PutRecords writer.
//!
//! Batches of at most 500 records and 5 MiB (data + partition keys) per
//! call; a record over 1 MiB can never be written and is an error. Records
//! a call did not take (`FailedRecordCount`, a per-entry `ErrorCode`:
//! `ProvisionedThroughputExceededException`, `InternalFailure`) and whole
//! calls that failed with throttling or a transient error are retried with
//! exponential backoff and full jitter until `give_up_after`; then the write
//! fails and says how many records were left. Nothing is dropped. The
//! writer does all retrying itself (the SDK's retries are off on its
//! client), so its report counts every throttle and retry; the tests in
//! loadgen/tests/writer_faults.rs check the counts against a fault proxy.
//!
//! Rate limits: the user's target (records/s, bytes/s) and Kinesis's
//! per-shard write limits (1,000 records/s and 1 MiB/s). The shard of a
//! record is computed as Kinesis does it: the MD5 of the partition key as a
//! 128-bit big-endian number, looked up in the open shards' hash key ranges
//! (ListShards). Capping the total at shards × limit would be simpler, but
//! instance-id keys do not spread evenly over a few shards (with 8 shards
//! and 20 instances some shard gets 5 and another 1), so a hot shard would be
//! throttled while the total is under its cap. Per-shard buckets keep every
//! shard under its own limit; a batch holds at most one second of any
//! shard's limit.
//!
//! Records are queued per shard and each shard has one call in flight at a
//! time (up to `concurrency` calls in all), so a shard receives its records
//! in the order given: two calls racing for one shard would let a later
//! call land first, and a backlog minutes long then arrives later than the
//! detector's allowed lateness. Within a call, a retried record can be
//! overtaken by the rest of its call, by seconds (the backoff).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_kinesis::primitives::Blob;
use aws_sdk_kinesis::types::{PutRecordsRequestEntry, StreamStatus};
use aws_sdk_kinesis::Client;
use md5::{Digest, Md5};
use tokio::task::JoinSet;

use super::{
    backoff, classify, classify_code, describe, mark_written, summary, unix_us, wait_until,
    Failure, OnWritten, RateTarget, TokenBucket, WriteError, WriteReport, WriterStats,
};

/// Kinesis's limits.
pub const MAX_RECORDS_PER_CALL: usize = 500;
pub const MAX_BYTES_PER_CALL: usize = 5 * 1024 * 1024;
pub const MAX_RECORD_BYTES: usize = 1024 * 1024;
pub const SHARD_RECORDS_PER_SEC: f64 = 1000.0;
pub const SHARD_BYTES_PER_SEC: f64 = 1024.0 * 1024.0;

/// One record to put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KinesisItem {
    /// The instance id (= log stream), as CloudWatch's subscription uses.
    pub partition_key: String,
    pub data: Vec<u8>,
    /// Not before this wall-clock time (epoch ms): live playback.
    pub due_ms: Option<i64>,
    /// Reported through [`OnWritten`] once the record is written.
    pub marks: Vec<String>,
}

impl KinesisItem {
    fn size(&self) -> usize {
        self.data.len() + self.partition_key.len()
    }
}

#[derive(Debug, Clone)]
pub struct KinesisWriterConfig {
    pub stream: String,
    pub rate: RateTarget,
    /// Keep every shard under 1,000 records/s and 1 MiB/s.
    pub per_shard_limits: bool,
    /// Calls in flight at most.
    pub concurrency: usize,
    /// A record still not written this long after its first try is an error.
    pub give_up_after: Duration,
}

impl KinesisWriterConfig {
    pub fn new(stream: impl Into<String>) -> Self {
        KinesisWriterConfig {
            stream: stream.into(),
            rate: RateTarget::default(),
            per_shard_limits: true,
            concurrency: 4,
            give_up_after: Duration::from_secs(120),
        }
    }
}

/// An open shard's hash key range (inclusive).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HashRange {
    pub start: u128,
    pub end: u128,
}

/// The 128-bit hash key Kinesis derives from a partition key.
pub fn partition_hash(key: &str) -> u128 {
    u128::from_be_bytes(Md5::digest(key.as_bytes()).into())
}

/// Index of the range holding `key`'s hash (the last one if none does,
/// which only a stream mid-reshard can cause).
pub fn shard_index(ranges: &[HashRange], key: &str) -> usize {
    let h = partition_hash(key);
    ranges
        .iter()
        .position(|r| r.start <= h && h <= r.end)
        .unwrap_or(ranges.len().saturating_sub(1))
}

struct Limits {
    records: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
    /// Per shard: (records, bytes).
    shards: Vec<(TokenBucket, TokenBucket)>,
}

impl Limits {
    /// Takes tokens for `items` (shard index, bytes); the wait before sending.
    fn take(&mut self, items: &[(usize, usize)]) -> Duration {
        let now = Instant::now();
        let total: usize = items.iter().map(|i| i.1).sum();
        let mut wait = Duration::ZERO;
        if let Some(b) = &mut self.records {
            wait = wait.max(b.take(items.len() as f64, now));
        }
        if let Some(b) = &mut self.bytes {
            wait = wait.max(b.take(total as f64, now));
        }
        if !self.shards.is_empty() {
            let mut per: HashMap<usize, (usize, usize)> = HashMap::new();
            for &(s, n) in items {
                let e = per.entry(s).or_default();
                e.0 += 1;
                e.1 += n;
            }
            for (s, (r, b)) in per {
                if let Some((rb, bb)) = self.shards.get_mut(s) {
                    wait = wait.max(rb.take(r as f64, now)).max(bb.take(b as f64, now));
                }
            }
        }
        wait
    }
}

pub struct KinesisWriter {
    client: Client,
    config: KinesisWriterConfig,
    ranges: Vec<HashRange>,
    stats: Arc<WriterStats>,
}

/// Creates the stream with `shards` shards if it does not exist and waits
/// (up to `wait`) until it is ACTIVE; returns its ARN.
pub async fn ensure_stream(
    client: &Client,
    stream: &str,
    shards: i32,
    wait: Duration,
) -> Result<String, WriteError> {
    let exists = client
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await;
    if let Err(e) = &exists {
        if e.as_service_error()
            .is_some_and(|s| s.is_resource_not_found_exception())
        {
            client
                .create_stream()
                .stream_name(stream)
                .shard_count(shards)
                .send()
                .await
                .map_err(|e| {
                    WriteError::new(format!("CreateStream {stream}: {}", describe(&e)), 0)
                })?;
        } else if let Err(e) = exists {
            return Err(WriteError::new(
                format!("DescribeStreamSummary {stream}: {}", describe(&e)),
                0,
            ));
        }
    }
    let started = Instant::now();
    loop {
        let d = client
            .describe_stream_summary()
            .stream_name(stream)
            .send()
            .await
            .map_err(|e| {
                WriteError::new(
                    format!("DescribeStreamSummary {stream}: {}", describe(&e)),
                    0,
                )
            })?;
        if let Some(s) = d.stream_description_summary() {
            if s.stream_status() == &StreamStatus::Active {
                return Ok(s.stream_arn().to_owned());
            }
        }
        if started.elapsed() > wait {
            return Err(WriteError::new(
                format!("stream {stream} not ACTIVE after {wait:?}"),
                0,
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The open shards' hash key ranges, sorted by start.
pub async fn hash_ranges(client: &Client, stream: &str) -> Result<Vec<HashRange>, WriteError> {
    let mut ranges = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let req = match &token {
            Some(t) => client.list_shards().next_token(t),
            None => client.list_shards().stream_name(stream),
        };
        let out = req
            .send()
            .await
            .map_err(|e| WriteError::new(format!("ListShards {stream}: {}", describe(&e)), 0))?;
        for s in out.shards() {
            let open = s
                .sequence_number_range()
                .is_none_or(|r| r.ending_sequence_number().is_none());
            let Some(h) = s.hash_key_range() else {
                continue;
            };
            let parse = |v: &str| {
                v.parse::<u128>().map_err(|_| {
                    WriteError::new(
                        format!("shard {}: hash key {v:?} is not a number", s.shard_id()),
                        0,
                    )
                })
            };
            if open {
                ranges.push(HashRange {
                    start: parse(h.starting_hash_key())?,
                    end: parse(h.ending_hash_key())?,
                });
            }
        }
        token = out.next_token().map(str::to_owned);
        if token.is_none() {
            break;
        }
    }
    if ranges.is_empty() {
        return Err(WriteError::new(
            format!("stream {stream} has no open shard"),
            0,
        ));
    }
    ranges.sort_by_key(|r| r.start);
    Ok(ranges)
}

impl KinesisWriter {
    /// Reads the stream's shards (for the per-shard limits). The SDK's own
    /// retries are then turned off on (a copy of) `client`: the writer retries
    /// itself, per record, and counts every throttle; the SDK's retries
    /// would hide throttles from the report and retry a call the writer is
    /// about to retry anyway.
    pub async fn new(client: Client, config: KinesisWriterConfig) -> Result<Self, WriteError> {
        let ranges = hash_ranges(&client, &config.stream).await?;
        let client = Client::from_conf(
            client
                .config()
                .to_builder()
                .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled())
                .build(),
        );
        Ok(KinesisWriter {
            client,
            config,
            ranges,
            stats: Arc::new(WriterStats::default()),
        })
    }

    pub fn shards(&self) -> usize {
        self.ranges.len()
    }

    pub fn stats(&self) -> Arc<WriterStats> {
        self.stats.clone()
    }

    /// Puts every item within the limits and returns when all are written,
    /// or at the first error (with how many were not written). Items are
    /// routed to their shard's queue; a shard has one call in flight at a
    /// time, so its records arrive in the order given (a retried record can
    /// still be overtaken by the rest of its own call).
    pub async fn write(
        &self,
        items: impl IntoIterator<Item = KinesisItem>,
        on_written: Option<OnWritten>,
    ) -> Result<WriteReport, WriteError> {
        let started = Instant::now();
        let (records, bytes) = self.config.rate.buckets();
        let shards = self.ranges.len();
        let limits = Arc::new(Mutex::new(Limits {
            records,
            bytes,
            shards: if self.config.per_shard_limits {
                (0..shards)
                    .map(|_| {
                        (
                            TokenBucket::new(SHARD_RECORDS_PER_SEC, SHARD_RECORDS_PER_SEC),
                            TokenBucket::new(SHARD_BYTES_PER_SEC, SHARD_BYTES_PER_SEC),
                        )
                    })
                    .collect()
            } else {
                Vec::new()
            },
        }));
        let mut queues: Vec<VecDeque<KinesisItem>> = (0..shards).map(|_| VecDeque::new()).collect();
        let mut busy = vec![false; shards];
        let mut queued = 0usize;
        // Read ahead at most two calls per shard.
        let read_ahead = MAX_RECORDS_PER_CALL * shards * 2;
        let mut in_flight: JoinSet<(usize, Result<(), WriteError>)> = JoinSet::new();
        let mut items = items.into_iter().peekable();
        let mut error: Option<WriteError> = None;
        // A record that can never be written: what came before it is still
        // written, then the write stops.
        let mut oversize: Option<WriteError> = None;
        loop {
            while error.is_none() && oversize.is_none() && queued < read_ahead {
                let due = match items.peek() {
                    Some(i) => i.due_ms.is_none_or(|d| d <= super::now_unix_ms()),
                    None => false,
                };
                let Some(item) = due.then(|| items.next()).flatten() else {
                    break;
                };
                if item.size() > MAX_RECORD_BYTES {
                    oversize = Some(WriteError::new(
                        format!(
                            "a record of {} is {} bytes with its key, over Kinesis's {MAX_RECORD_BYTES}-byte limit: it can never be written",
                            item.partition_key,
                            item.size()
                        ),
                        1,
                    ));
                    break;
                }
                queues[shard_index(&self.ranges, &item.partition_key)].push_back(item);
                queued += 1;
            }
            if error.is_none() {
                for shard in 0..shards {
                    if busy[shard]
                        || queues[shard].is_empty()
                        || in_flight.len() >= self.config.concurrency.max(1)
                    {
                        continue;
                    }
                    let batch = next_batch(&mut queues[shard], self.config.per_shard_limits);
                    queued -= batch.len();
                    let sizes: Vec<(usize, usize)> =
                        batch.iter().map(|i| (shard, i.size())).collect();
                    let wait = limits
                        .lock()
                        .map(|mut l| l.take(&sizes))
                        .unwrap_or_default();
                    busy[shard] = true;
                    let task = put_batch(
                        self.client.clone(),
                        self.config.stream.clone(),
                        batch,
                        self.stats.clone(),
                        limits.clone(),
                        shard,
                        self.config.give_up_after,
                        on_written.clone(),
                    );
                    in_flight.spawn(async move {
                        tokio::time::sleep(wait).await;
                        (shard, task.await)
                    });
                }
            }
            if in_flight.is_empty() {
                if error.is_some()
                    || (queued == 0 && (items.peek().is_none() || oversize.is_some()))
                {
                    break;
                }
                if queued == 0 {
                    wait_until(items.peek().and_then(|i| i.due_ms)).await;
                }
                continue;
            }
            let next_due = items
                .peek()
                .and_then(|i| i.due_ms)
                .filter(|_| queued < read_ahead && error.is_none() && oversize.is_none());
            tokio::select! {
                Some(done) = in_flight.join_next() => {
                    match done {
                        Ok((shard, result)) => {
                            busy[shard] = false;
                            if let Err(e) = result {
                                match &mut error {
                                    Some(f) => f.unwritten += e.unwritten,
                                    None => error = Some(e),
                                }
                            }
                        }
                        Err(e) => {
                            error.get_or_insert_with(|| WriteError::new(format!("a PutRecords task failed: {e}"), 0));
                        }
                    }
                }
                _ = wait_until(next_due), if next_due.is_some() => {}
            }
        }
        match error.or(oversize) {
            Some(mut e) => {
                e.unwritten += queued as u64 + items.count() as u64;
                Err(e)
            }
            None => Ok(self.stats.report("kinesis", started.elapsed())),
        }
    }
}

/// The next call for one shard: at most 500 records, 5 MiB, and (with the
/// per-shard limits) one second of the shard's byte limit.
fn next_batch(queue: &mut VecDeque<KinesisItem>, per_shard_limits: bool) -> Vec<KinesisItem> {
    let max_bytes = if per_shard_limits {
        MAX_BYTES_PER_CALL.min(SHARD_BYTES_PER_SEC as usize)
    } else {
        MAX_BYTES_PER_CALL
    };
    let mut batch = Vec::new();
    let mut bytes = 0;
    while let Some(next) = queue.front() {
        if batch.len() >= MAX_RECORDS_PER_CALL
            || (!batch.is_empty() && bytes + next.size() > max_bytes)
        {
            break;
        }
        bytes += next.size();
        if let Some(item) = queue.pop_front() {
            batch.push(item);
        }
    }
    batch
}

/// Puts one batch until every record is written or `give_up_after` passed.
///
/// Counting: `retried` is the records sent again (so a failure the writer
/// gives up on is not a retry), `throttled` those of them refused with
/// throttling, `failed_calls` the calls refused as a whole (each time).
#[allow(clippy::too_many_arguments)]
async fn put_batch(
    client: Client,
    stream: String,
    mut pending: Vec<KinesisItem>,
    stats: Arc<WriterStats>,
    limits: Arc<Mutex<Limits>>,
    shard: usize,
    give_up_after: Duration,
    on_written: Option<OnWritten>,
) -> Result<(), WriteError> {
    let started = Instant::now();
    let mut backoff = backoff();
    loop {
        let mut entries = Vec::with_capacity(pending.len());
        let mut call_bytes = 0u64;
        for item in &pending {
            call_bytes += item.size() as u64;
            entries.push(
                PutRecordsRequestEntry::builder()
                    .data(Blob::new(item.data.clone()))
                    .partition_key(&item.partition_key)
                    .build()
                    .map_err(|e| {
                        WriteError::new(format!("PutRecords entry: {e}"), pending.len() as u64)
                    })?,
            );
        }
        stats.call(pending.len() as u64, call_bytes);
        let sent_us = unix_us(SystemTime::now());
        // What failed this time: the last error and how many were throttled.
        let (last_error, throttled) = match client
            .put_records()
            .stream_name(&stream)
            .set_records(Some(entries))
            .send()
            .await
        {
            Ok(out) => {
                let results = out.records();
                if results.len() != pending.len() {
                    return Err(WriteError::new(
                        format!(
                            "PutRecords answered {} entries for {} records",
                            results.len(),
                            pending.len()
                        ),
                        pending.len() as u64,
                    ));
                }
                let mut retry = Vec::new();
                let mut last = String::new();
                let mut throttled = 0u64;
                for (item, r) in pending.into_iter().zip(results) {
                    match r.error_code() {
                        None => {
                            WriterStats::add(&stats.records, 1);
                            WriterStats::add(&stats.bytes, item.size() as u64);
                            mark_written(&on_written, &item.marks, sent_us);
                        }
                        Some(code) => {
                            if classify_code(Some(code)) == Failure::Throttled {
                                throttled += 1;
                            }
                            last = format!("{code}: {}", r.error_message().unwrap_or(""));
                            retry.push(item);
                        }
                    }
                }
                let progressed = retry.len() < results.len();
                pending = retry;
                if pending.is_empty() {
                    return Ok(());
                }
                // Some went through: the shard takes records again. None
                // did: back off further, as after a refused call.
                if progressed {
                    backoff.reset();
                }
                (last, throttled)
            }
            Err(e) => {
                WriterStats::add(&stats.failed_calls, 1);
                let failure = classify(&e);
                if failure == Failure::Fatal {
                    return Err(WriteError::new(
                        format!("PutRecords {stream}: {}", describe(&e)),
                        pending.len() as u64,
                    ));
                }
                let throttled = if failure == Failure::Throttled {
                    pending.len() as u64
                } else {
                    0
                };
                (summary(&e), throttled)
            }
        };
        if started.elapsed() > give_up_after {
            return Err(WriteError::new(
                format!(
                    "PutRecords {stream}: gave up after {:.1} s of retries (limit {give_up_after:?}); last error: {last_error}",
                    started.elapsed().as_secs_f64()
                ),
                pending.len() as u64,
            ));
        }
        WriterStats::add(&stats.retried, pending.len() as u64);
        WriterStats::add(&stats.throttled, throttled);
        let sizes: Vec<(usize, usize)> = pending.iter().map(|i| (shard, i.size())).collect();
        let wait = limits
            .lock()
            .map(|mut l| l.take(&sizes))
            .unwrap_or_default();
        tokio::time::sleep(backoff.next_wait().max(wait)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn partition_hash_is_kinesis_md5() {
        // MD5("") = d41d8cd98f00b204e9800998ecf8427e.
        assert_eq!(partition_hash(""), 0xd41d8cd98f00b204e9800998ecf8427e);
        let two = [
            HashRange {
                start: 0,
                end: u128::MAX / 2,
            },
            HashRange {
                start: u128::MAX / 2 + 1,
                end: u128::MAX,
            },
        ];
        // d41d... has its top bit set: the second half.
        assert_eq!(shard_index(&two, ""), 1);
        // MD5("a") = 0cc175b9c0f1b6a831c399e269772661: the first half.
        assert_eq!(shard_index(&two, "a"), 0);
    }

    #[test]
    fn per_shard_buckets_charge_only_the_shards_used() {
        let mut l = Limits {
            records: None,
            bytes: None,
            shards: (0..2)
                .map(|_| (TokenBucket::new(1000.0, 1000.0), TokenBucket::new(1e6, 1e6)))
                .collect(),
        };
        // 1,000 records to shard 0: its second is used up, shard 1 untouched.
        let batch: Vec<(usize, usize)> = (0..1000).map(|_| (0, 10)).collect();
        assert_eq!(l.take(&batch), Duration::ZERO);
        assert_eq!(l.take(&[(1, 10)]), Duration::ZERO);
        let w = l.take(&[(0, 10); 500]);
        assert!(w >= Duration::from_millis(450), "{w:?}");
    }
}
