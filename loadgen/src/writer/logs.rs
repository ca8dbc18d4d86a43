//! CloudWatch Logs PutLogEvents writer: the real path into sshwarden, where
//! a subscription filter on the log group forwards to Kinesis.
//!
//! One log stream per instance id, as the CloudWatch agent writes them.
//! Events come in the agent's batches (per instance, a flush interval of
//! event time); each is sorted by time and split to PutLogEvents's limits:
//! at most 10,000 events, 1,048,576 bytes counting 26 bytes per event on
//! top of the message, and a 24-hour span. Log group and streams are created
//! when absent. Throttling and transient failures are retried with
//! exponential backoff and jitter until `give_up_after`. Events the service
//! rejects (too old, too new, past retention: `rejectedLogEventsInfo`) can
//! never be written: that is an error naming how many.

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use aws_sdk_cloudwatchlogs::types::{Distribution, InputLogEvent};
use aws_sdk_cloudwatchlogs::Client;
use tokio::task::JoinSet;

use super::{
    backoff, classify, describe, mark_written, unix_us, wait_until, Failure, OnWritten, RateTarget,
    TokenBucket, WriteError, WriteReport, WriterStats,
};

pub const MAX_EVENTS_PER_CALL: usize = 10_000;
pub const MAX_BYTES_PER_CALL: usize = 1_048_576;
pub const EVENT_OVERHEAD_BYTES: usize = 26;
pub const MAX_SPAN_MS: i64 = 24 * 3600 * 1000;

/// One log event to put.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEvent {
    pub time_ms: i64,
    pub message: String,
    /// Reported through [`OnWritten`] once the event is written.
    pub mark: Option<String>,
}

impl LogEvent {
    fn size(&self) -> usize {
        self.message.len() + EVENT_OVERHEAD_BYTES
    }
}

/// A batch of one log stream's events, as an agent flushes them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogBatch {
    pub log_stream: String,
    pub events: Vec<LogEvent>,
    /// Not before this wall-clock time (epoch ms): live playback.
    pub due_ms: Option<i64>,
}

/// Sorts `events` by time and cuts them into PutLogEvents calls.
pub fn split_for_put_log_events(mut events: Vec<LogEvent>) -> Vec<Vec<LogEvent>> {
    events.sort_by_key(|e| e.time_ms);
    let mut calls: Vec<Vec<LogEvent>> = Vec::new();
    let mut current: Vec<LogEvent> = Vec::new();
    let mut bytes = 0;
    for e in events {
        let full = current.len() >= MAX_EVENTS_PER_CALL
            || bytes + e.size() > MAX_BYTES_PER_CALL
            || current
                .first()
                .is_some_and(|f| e.time_ms - f.time_ms >= MAX_SPAN_MS);
        if full && !current.is_empty() {
            calls.push(std::mem::take(&mut current));
            bytes = 0;
        }
        bytes += e.size();
        current.push(e);
    }
    if !current.is_empty() {
        calls.push(current);
    }
    calls
}

#[derive(Debug, Clone)]
pub struct LogsWriterConfig {
    pub log_group: String,
    /// Events/s and bytes/s targets.
    pub rate: RateTarget,
    /// Calls in flight at most (each on its own log stream batch).
    pub concurrency: usize,
    pub give_up_after: Duration,
}

impl LogsWriterConfig {
    pub fn new(log_group: impl Into<String>) -> Self {
        LogsWriterConfig {
            log_group: log_group.into(),
            rate: RateTarget::default(),
            concurrency: 4,
            give_up_after: Duration::from_secs(120),
        }
    }
}

/// Retries `call` on throttling and transient errors; `Ok(None)` when the
/// error has the code `done_code` ("already exists": nothing to do).
async fn with_retries<T, E, R, F, Fut>(
    what: &str,
    give_up_after: Duration,
    done_code: Option<&str>,
    mut call: F,
) -> Result<Option<T>, WriteError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, aws_sdk_cloudwatchlogs::error::SdkError<E, R>>>,
    E: aws_sdk_cloudwatchlogs::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let started = Instant::now();
    let mut backoff = backoff();
    loop {
        match call().await {
            Ok(v) => return Ok(Some(v)),
            Err(e)
                if done_code.is_some()
                    && e.as_service_error().and_then(|s| s.code()) == done_code =>
            {
                return Ok(None)
            }
            Err(e) => {
                if classify(&e) == Failure::Fatal || started.elapsed() > give_up_after {
                    return Err(WriteError::new(format!("{what}: {}", describe(&e)), 0));
                }
                tokio::time::sleep(backoff.next_wait()).await;
            }
        }
    }
}

/// Creates the log group if it does not exist.
pub async fn ensure_log_group(client: &Client, group: &str) -> Result<(), WriteError> {
    with_retries(
        &format!("CreateLogGroup {group}"),
        Duration::from_secs(60),
        Some("ResourceAlreadyExistsException"),
        || client.create_log_group().log_group_name(group).send(),
    )
    .await
    .map(|_| ())
}

/// Creates each log stream that does not exist.
pub async fn ensure_log_streams(
    client: &Client,
    group: &str,
    streams: impl IntoIterator<Item = &str>,
) -> Result<(), WriteError> {
    for stream in streams {
        with_retries(
            &format!("CreateLogStream {group} {stream}"),
            Duration::from_secs(60),
            Some("ResourceAlreadyExistsException"),
            || {
                client
                    .create_log_stream()
                    .log_group_name(group)
                    .log_stream_name(stream)
                    .send()
            },
        )
        .await?;
    }
    Ok(())
}

/// Puts a subscription filter (every event, distribution by log stream)
/// from the log group to `destination_arn`, replacing one of the same name.
pub async fn ensure_subscription(
    client: &Client,
    group: &str,
    filter_name: &str,
    destination_arn: &str,
    role_arn: Option<&str>,
) -> Result<(), WriteError> {
    with_retries(
        &format!("PutSubscriptionFilter {group} -> {destination_arn}"),
        Duration::from_secs(60),
        None,
        || {
            client
                .put_subscription_filter()
                .log_group_name(group)
                .filter_name(filter_name)
                .filter_pattern("")
                .destination_arn(destination_arn)
                .set_role_arn(role_arn.map(str::to_owned))
                .distribution(Distribution::ByLogStream)
                .send()
        },
    )
    .await
    .map(|_| ())
}

pub struct LogsWriter {
    client: Client,
    config: LogsWriterConfig,
    stats: Arc<WriterStats>,
}

impl LogsWriter {
    /// The SDK's own retries are turned off on (a copy of) `client`: the
    /// writer retries itself and counts every throttle (as the Kinesis
    /// writer does).
    pub fn new(client: Client, config: LogsWriterConfig) -> Self {
        let client = Client::from_conf(
            client
                .config()
                .to_builder()
                .retry_config(aws_sdk_cloudwatchlogs::config::retry::RetryConfig::disabled())
                .build(),
        );
        LogsWriter {
            client,
            config,
            stats: Arc::new(WriterStats::default()),
        }
    }

    pub fn stats(&self) -> Arc<WriterStats> {
        self.stats.clone()
    }

    /// Creates the group and the batches' log streams if absent, then puts
    /// every batch; returns when all are written or at the first error.
    pub async fn write(
        &self,
        batches: Vec<LogBatch>,
        on_written: Option<OnWritten>,
    ) -> Result<WriteReport, WriteError> {
        let group = &self.config.log_group;
        ensure_log_group(&self.client, group).await?;
        let streams: BTreeSet<&str> = batches.iter().map(|b| b.log_stream.as_str()).collect();
        ensure_log_streams(&self.client, group, streams.iter().copied()).await?;
        let started = Instant::now();
        let (mut events_bucket, mut bytes_bucket): (Option<TokenBucket>, Option<TokenBucket>) =
            self.config.rate.buckets();
        let mut in_flight: JoinSet<(String, Result<(), WriteError>)> = JoinSet::new();
        // One call in flight per log stream, so a stream's events arrive in order.
        let mut busy: HashSet<String> = HashSet::new();
        let mut first_error: Option<WriteError> = None;
        let mut not_sent = 0u64;
        let settle = |done: Result<(String, Result<(), WriteError>), tokio::task::JoinError>,
                      busy: &mut HashSet<String>,
                      first_error: &mut Option<WriteError>| {
            let result = match done {
                Ok((stream, result)) => {
                    busy.remove(&stream);
                    result
                }
                Err(e) => Err(WriteError::new(
                    format!("a PutLogEvents task failed: {e}"),
                    0,
                )),
            };
            if let Err(e) = result {
                match first_error {
                    Some(f) => f.unwritten += e.unwritten,
                    None => *first_error = Some(e),
                }
            }
        };
        for batch in batches {
            if first_error.is_some() {
                not_sent += batch.events.len() as u64;
                continue;
            }
            wait_until(batch.due_ms).await;
            for call in split_for_put_log_events(batch.events) {
                if let Some(e) = call.iter().find(|e| e.size() > MAX_BYTES_PER_CALL) {
                    first_error.get_or_insert_with(|| {
                        WriteError::new(
                            format!(
                                "an event of {} is {} bytes, over PutLogEvents's limit: it can never be written",
                                batch.log_stream,
                                e.size()
                            ),
                            0,
                        )
                    });
                }
                if first_error.is_some() {
                    not_sent += call.len() as u64;
                    continue;
                }
                let bytes: usize = call.iter().map(LogEvent::size).sum();
                let now = Instant::now();
                let mut wait = Duration::ZERO;
                if let Some(b) = &mut events_bucket {
                    wait = wait.max(b.take(call.len() as f64, now));
                }
                if let Some(b) = &mut bytes_bucket {
                    wait = wait.max(b.take(bytes as f64, now));
                }
                if !wait.is_zero() {
                    tokio::time::sleep(wait).await;
                }
                while busy.contains(&batch.log_stream)
                    || in_flight.len() >= self.config.concurrency.max(1)
                {
                    match in_flight.join_next().await {
                        Some(done) => settle(done, &mut busy, &mut first_error),
                        None => break,
                    }
                }
                busy.insert(batch.log_stream.clone());
                let stream = batch.log_stream.clone();
                let task = put_events(
                    self.client.clone(),
                    group.clone(),
                    batch.log_stream.clone(),
                    call,
                    self.stats.clone(),
                    self.config.give_up_after,
                    on_written.clone(),
                );
                in_flight.spawn(async move { (stream, task.await) });
            }
        }
        while let Some(done) = in_flight.join_next().await {
            settle(done, &mut busy, &mut first_error);
        }
        match first_error {
            Some(mut e) => {
                e.unwritten += not_sent;
                Err(e)
            }
            None => Ok(self.stats.report("logs", started.elapsed())),
        }
    }
}

/// One PutLogEvents call, retried until written or `give_up_after`.
async fn put_events(
    client: Client,
    group: String,
    stream: String,
    events: Vec<LogEvent>,
    stats: Arc<WriterStats>,
    give_up_after: Duration,
    on_written: Option<OnWritten>,
) -> Result<(), WriteError> {
    let n = events.len() as u64;
    let bytes: u64 = events.iter().map(|e| e.size() as u64).sum();
    let mut input = Vec::with_capacity(events.len());
    for e in &events {
        input.push(
            InputLogEvent::builder()
                .timestamp(e.time_ms)
                .message(&e.message)
                .build()
                .map_err(|err| WriteError::new(format!("PutLogEvents entry: {err}"), n))?,
        );
    }
    let started = Instant::now();
    let mut backoff = backoff();
    loop {
        stats.call(n, bytes);
        let sent_us = unix_us(SystemTime::now());
        match client
            .put_log_events()
            .log_group_name(&group)
            .log_stream_name(&stream)
            .set_log_events(Some(input.clone()))
            .send()
            .await
        {
            Ok(out) => {
                if let Some(r) = out.rejected_log_events_info() {
                    let total = events.len() as i32;
                    let too_old = r.too_old_log_event_end_index().map_or(0, |i| i + 1);
                    let expired = r.expired_log_event_end_index().map_or(0, |i| i + 1);
                    let too_new = r.too_new_log_event_start_index().map_or(0, |i| total - i);
                    let rejected = (too_old.max(expired) + too_new).clamp(0, total);
                    if rejected > 0 {
                        return Err(WriteError::new(
                            format!(
                                "PutLogEvents {group} {stream}: {rejected} of {total} events rejected \
                                 (too old {too_old}, expired {expired}, too new {too_new}): they can never be written"
                            ),
                            rejected as u64,
                        ));
                    }
                }
                WriterStats::add(&stats.records, n);
                WriterStats::add(&stats.bytes, bytes);
                for e in &events {
                    if let Some(m) = &e.mark {
                        mark_written(&on_written, std::slice::from_ref(m), sent_us);
                    }
                }
                return Ok(());
            }
            Err(e) => {
                WriterStats::add(&stats.failed_calls, 1);
                let failure = classify(&e);
                if failure == Failure::Fatal || started.elapsed() > give_up_after {
                    return Err(WriteError::new(
                        format!("PutLogEvents {group} {stream}: {}", describe(&e)),
                        n,
                    ));
                }
                WriterStats::add(&stats.retried, n);
                if failure == Failure::Throttled {
                    WriterStats::add(&stats.throttled, n);
                }
                tokio::time::sleep(backoff.next_wait()).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(time_ms: i64, len: usize) -> LogEvent {
        LogEvent {
            time_ms,
            message: "x".repeat(len),
            mark: None,
        }
    }

    #[test]
    fn calls_respect_count_bytes_span_and_order() {
        // 25,000 small events: three calls by count.
        let calls = split_for_put_log_events((0..25_000).rev().map(|t| ev(t, 10)).collect());
        assert_eq!(
            calls.iter().map(Vec::len).collect::<Vec<_>>(),
            vec![10_000, 10_000, 5_000]
        );
        assert!(calls.iter().flatten().zip(0..).all(|(e, t)| e.time_ms == t));
        // 1 KiB events: the byte limit with 26 bytes each cuts at 1,000.
        let calls = split_for_put_log_events((0..2_500).map(|t| ev(t, 1024)).collect());
        let max = MAX_BYTES_PER_CALL / (1024 + EVENT_OVERHEAD_BYTES);
        assert_eq!(calls[0].len(), max);
        assert!(calls
            .iter()
            .all(|c| c.iter().map(LogEvent::size).sum::<usize>() <= MAX_BYTES_PER_CALL));
        // Two days of events: no call spans 24 h.
        let calls = split_for_put_log_events((0..48).map(|h| ev(h * 3_600_000, 10)).collect());
        assert_eq!(calls.len(), 2);
        assert!(calls
            .iter()
            .all(|c| c.last().unwrap().time_ms - c[0].time_ms < MAX_SPAN_MS));
    }
}
