//! Writers that put generated traffic into AWS (or an emulator): Kinesis
//! PutRecords ([`kinesis`]) and CloudWatch Logs PutLogEvents ([`logs`]).
//!
//! Both share what is here: token-bucket rate limits (debt-based: a batch
//! takes its tokens at once and the next one waits off the debt, so the
//! average rate holds whatever the batch size), exponential backoff with full
//! jitter for throttling and transient failures, live counters for progress
//! lines, and the final report. A writer never drops a record: anything it
//! cannot write within its give-up time is an error naming how much was left.
//!
//! Behind the `kinesis-writer` cargo feature (the Logs writer: `aws`, on by default).

pub mod kinesis;
#[cfg(feature = "aws")]
pub mod logs;

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

/// A write that could not be completed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WriteError {
    pub message: String,
    /// Records or events not written when the writer stopped.
    pub unwritten: u64,
}

impl fmt::Display for WriteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({} not written)", self.message, self.unwritten)
    }
}

impl std::error::Error for WriteError {}

impl WriteError {
    pub fn new(message: impl Into<String>, unwritten: u64) -> Self {
        WriteError {
            message: message.into(),
            unwritten,
        }
    }
}

/// Called with (mark, wall-clock µs the successful call was sent) for each
/// mark of a written item: how a scorer learns when a crossing event was put.
pub type OnWritten = Arc<Mutex<dyn FnMut(&str, i64) + Send>>;

pub(crate) fn mark_written(on_written: &Option<OnWritten>, marks: &[String], sent_us: i64) {
    if let Some(f) = on_written {
        if marks.is_empty() {
            return;
        }
        // A poisoned lock means a callback panicked: its marks are lost, not the records.
        if let Ok(mut f) = f.lock() {
            for m in marks {
                f(m, sent_us);
            }
        }
    }
}

pub fn unix_us(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as i64)
}

pub fn now_unix_ms() -> i64 {
    unix_us(SystemTime::now()) / 1000
}

/// Sleeps until the wall clock reaches `due_ms` (epoch ms), if given.
pub(crate) async fn wait_until(due_ms: Option<i64>) {
    if let Some(due) = due_ms {
        let wait = due - now_unix_ms();
        if wait > 0 {
            tokio::time::sleep(Duration::from_millis(wait as u64)).await;
        }
    }
}

/// How a failed call is handled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Failure {
    /// Throttling: back off and retry, counted as throttled.
    Throttled,
    /// Timeouts, connection failures, 5xx: back off and retry.
    Transient,
    /// Anything else (missing stream, bad request, no permission): stop.
    Fatal,
}

/// Sorts an SDK error into [`Failure`] by its kind and error code.
pub(crate) fn classify<E, R>(e: &aws_sdk_kinesis::error::SdkError<E, R>) -> Failure
where
    E: aws_sdk_kinesis::error::ProvideErrorMetadata,
{
    use aws_sdk_kinesis::error::SdkError;
    match e {
        SdkError::ServiceError(s) => classify_code(s.err().code()),
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Failure::Transient
        }
        _ => Failure::Fatal,
    }
}

pub(crate) fn classify_code(code: Option<&str>) -> Failure {
    match code {
        Some(
            "ProvisionedThroughputExceededException"
            | "ThrottlingException"
            | "Throttling"
            | "LimitExceededException"
            | "KMSThrottlingException"
            | "TooManyRequestsException"
            | "RequestLimitExceeded",
        ) => Failure::Throttled,
        Some(
            "InternalFailure"
            | "InternalFailureException"
            | "ServiceUnavailable"
            | "ServiceUnavailableException"
            | "InternalServerError",
        )
        // No code: a body that is not an AWS error (a proxy's 502): retried
        // until the give-up time, then reported.
        | None => Failure::Transient,
        Some(_) => Failure::Fatal,
    }
}

/// An SDK error with its causes, for messages.
pub(crate) fn describe<E, R>(e: &aws_sdk_kinesis::error::SdkError<E, R>) -> String
where
    E: std::error::Error + 'static,
    R: fmt::Debug,
{
    format!("{}", aws_sdk_kinesis::error::DisplayErrorContext(e))
}

/// A short form for retry messages: a service error's code and message
/// (the full chain with the raw response is [`describe`]'s).
pub(crate) fn summary<E, R>(e: &aws_sdk_kinesis::error::SdkError<E, R>) -> String
where
    E: aws_sdk_kinesis::error::ProvideErrorMetadata + std::error::Error + 'static,
    R: fmt::Debug,
{
    match e.as_service_error() {
        Some(s) => format!(
            "{}: {}",
            s.code().unwrap_or("an error without a code"),
            s.message().unwrap_or("")
        ),
        None => describe(e),
    }
}

/// A token bucket that may go into debt: `take` deducts at once and says how
/// long to wait until the debt is paid, so callers pace at `rate` on average
/// with bursts of at most `burst`.
#[derive(Debug)]
pub struct TokenBucket {
    rate: f64,
    burst: f64,
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    /// `rate` per second, at most `burst` saved up (starts full).
    pub fn new(rate: f64, burst: f64) -> Self {
        TokenBucket {
            rate: rate.max(f64::MIN_POSITIVE),
            burst: burst.max(0.0),
            tokens: burst.max(0.0),
            last: Instant::now(),
        }
    }

    /// Deducts `n` tokens; returns how long to wait before using them.
    pub fn take(&mut self, n: f64, now: Instant) -> Duration {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.burst);
        self.tokens -= n;
        if self.tokens >= 0.0 {
            Duration::ZERO
        } else {
            Duration::from_secs_f64(-self.tokens / self.rate)
        }
    }
}

/// A user's target rates: records (or events) per second and bytes per second.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct RateTarget {
    pub records_per_sec: Option<f64>,
    pub bytes_per_sec: Option<f64>,
}

impl RateTarget {
    /// Buckets allowing one second of burst.
    pub(crate) fn buckets(&self) -> (Option<TokenBucket>, Option<TokenBucket>) {
        (
            self.records_per_sec.map(|r| TokenBucket::new(r, r)),
            self.bytes_per_sec.map(|b| TokenBucket::new(b, b)),
        )
    }
}

pub use sshwarden_retry::{Backoff, Jitter};

/// The writers' backoff (the workspace's one, `sshwarden-retry`): first
/// bound 50 ms, doubling, at most 5 s, full jitter (uniform in
/// [0, min(cap, base · 2^n)]), so writers that were throttled together do
/// not retry together.
pub fn backoff() -> Backoff {
    Backoff::new(
        Duration::from_millis(50),
        Duration::from_secs(5),
        Jitter::Full,
    )
}

/// Live counters, shared with a progress printer.
#[derive(Debug, Default)]
pub struct WriterStats {
    /// Records (Kinesis) or events (Logs) written.
    pub records: AtomicU64,
    /// Payload bytes written (data + partition key; message + 26 per event).
    pub bytes: AtomicU64,
    /// API calls made, retries included.
    pub calls: AtomicU64,
    /// Largest number of records or events in one call.
    pub max_per_call: AtomicU64,
    /// Largest payload of one call, bytes.
    pub max_bytes_per_call: AtomicU64,
    /// Records or events sent again after a failure (a failure the writer
    /// gives up on is not counted: nothing was sent again).
    pub retried: AtomicU64,
    /// Of those, the ones whose failure was throttling.
    pub throttled: AtomicU64,
    /// Calls that failed as a whole.
    pub failed_calls: AtomicU64,
}

impl WriterStats {
    pub(crate) fn call(&self, items: u64, bytes: u64) {
        self.calls.fetch_add(1, Ordering::Relaxed);
        self.max_per_call.fetch_max(items, Ordering::Relaxed);
        self.max_bytes_per_call.fetch_max(bytes, Ordering::Relaxed);
    }

    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    fn get(counter: &AtomicU64) -> u64 {
        counter.load(Ordering::Relaxed)
    }

    /// The final report after `elapsed`.
    pub fn report(&self, what: &str, elapsed: Duration) -> WriteReport {
        let secs = elapsed.as_secs_f64().max(1e-9);
        let records = Self::get(&self.records);
        let bytes = Self::get(&self.bytes);
        WriteReport {
            what: what.to_owned(),
            seconds: elapsed.as_secs_f64(),
            records,
            bytes,
            records_per_sec: records as f64 / secs,
            mb_per_sec: bytes as f64 / 1e6 / secs,
            calls: Self::get(&self.calls),
            max_per_call: Self::get(&self.max_per_call),
            max_bytes_per_call: Self::get(&self.max_bytes_per_call),
            retried: Self::get(&self.retried),
            throttled: Self::get(&self.throttled),
            failed_calls: Self::get(&self.failed_calls),
        }
    }
}

/// What a writer did.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct WriteReport {
    /// `kinesis` or `logs`.
    pub what: String,
    pub seconds: f64,
    /// Records (Kinesis) or events (Logs) written.
    pub records: u64,
    pub bytes: u64,
    pub records_per_sec: f64,
    /// 10^6 bytes per second.
    pub mb_per_sec: f64,
    pub calls: u64,
    pub max_per_call: u64,
    pub max_bytes_per_call: u64,
    pub retried: u64,
    pub throttled: u64,
    pub failed_calls: u64,
}

impl fmt::Display for WriteReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = if self.what == "logs" {
            "events"
        } else {
            "records"
        };
        write!(
            f,
            "{}: {} {unit}, {:.2} MB in {:.2} s: {:.0} {unit}/s, {:.2} MB/s; {} calls (at most {} {unit}, {} bytes each), \
             {} retried ({} throttled), {} failed calls",
            self.what,
            self.records,
            self.bytes as f64 / 1e6,
            self.seconds,
            self.records_per_sec,
            self.mb_per_sec,
            self.calls,
            self.max_per_call,
            self.max_bytes_per_call,
            self.retried,
            self.throttled,
            self.failed_calls
        )
    }
}

/// Prints a progress line to stderr every `every` until the returned guard
/// is dropped: totals, rates over the last interval, retries and throttles.
pub fn spawn_progress(
    what: &'static str,
    stats: Arc<WriterStats>,
    every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut last = (0u64, 0u64, Instant::now());
        loop {
            tokio::time::sleep(every).await;
            let (r, b) = (
                WriterStats::get(&stats.records),
                WriterStats::get(&stats.bytes),
            );
            let dt = last.2.elapsed().as_secs_f64().max(1e-9);
            eprintln!(
                "{what}: {r} written, {:.0}/s, {:.2} MB/s; {} calls, {} retried, {} throttled",
                (r - last.0) as f64 / dt,
                (b - last.1) as f64 / 1e6 / dt,
                WriterStats::get(&stats.calls),
                WriterStats::get(&stats.retried),
                WriterStats::get(&stats.throttled),
            );
            last = (r, b, Instant::now());
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_bucket_paces_at_its_rate_after_the_burst() {
        let t0 = Instant::now();
        let mut b = TokenBucket::new(100.0, 100.0);
        assert_eq!(b.take(100.0, t0), Duration::ZERO);
        // 50 more right away: half a second of debt.
        let w = b.take(50.0, t0);
        assert!((w.as_secs_f64() - 0.5).abs() < 1e-6, "{w:?}");
        // A second later the debt is paid and 50 tokens saved up.
        assert_eq!(
            b.take(50.0, t0 + Duration::from_millis(1000)),
            Duration::ZERO
        );
        // Never more than the burst saved up.
        let w = b.take(150.0, t0 + Duration::from_secs(100));
        assert!((w.as_secs_f64() - 0.5).abs() < 1e-6, "{w:?}");
    }

    #[test]
    fn backoff_grows_to_its_cap_with_full_jitter() {
        let mut b = backoff();
        let mut bounds = Vec::new();
        for _ in 0..10 {
            let bound = b.ceiling();
            assert!(b.next_wait() <= bound);
            bounds.push(bound.as_millis());
        }
        assert_eq!(
            bounds,
            [50, 100, 200, 400, 800, 1600, 3200, 5000, 5000, 5000]
        );
        b.reset();
        assert_eq!(b.ceiling(), Duration::from_millis(50));
        // Full jitter: the waits spread over [0, bound] (the distribution
        // itself is tested in sshwarden-retry with a seeded generator).
        let waits: Vec<Duration> = (0..200).map(|_| backoff().next_wait()).collect();
        assert!(
            waits.iter().any(|w| *w < Duration::from_millis(10)),
            "{waits:?}"
        );
        assert!(
            waits.iter().any(|w| *w > Duration::from_millis(40)),
            "{waits:?}"
        );
    }
}
