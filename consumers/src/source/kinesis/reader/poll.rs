//! Polling: GetRecords at most 5 calls per second per shard, its own
//! backoff on throttling and failures (the SDK's retries are off), and an
//! expired iterator resumed after the last record read.

use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_kinesis::error::DisplayErrorContext;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use tracing::{debug, warn};

use super::{Outcome, ShardReader, State};
use crate::retry::Backoff;
use crate::source::kinesis::checkpoint::{is_initial_position, Checkpoint};

/// Kinesis allows 5 GetRecords calls per second per shard.
pub(super) const MIN_POLL_INTERVAL: Duration = Duration::from_millis(200);

impl ShardReader {
    pub(super) async fn poll_loop(&self, st: &mut State) -> Outcome {
        let shard = self.lease.key.as_str();
        let mut iterator = None;
        let mut backoff = crate::retry::backoff();
        let mut last_call = Instant::now() - MIN_POLL_INTERVAL;
        loop {
            if self.lost.is_cancelled() {
                return Outcome::Lost;
            }
            if self.shutdown.is_cancelled() {
                return self.final_checkpoint(st).await;
            }
            let it = match iterator.take() {
                Some(it) => it,
                None => match self.iterator(st).await {
                    Ok(it) => it,
                    Err(e) => {
                        warn!(shard, error = %format!("{e:#}"), "cannot get a shard iterator");
                        self.metrics.error(shard, "get_shard_iterator");
                        self.pause(backoff.next_wait()).await;
                        continue;
                    }
                },
            };
            let out = match self.fetch(&it, &mut last_call, &mut backoff, None).await {
                Fetch::Records(out) => out,
                Fetch::Expired => continue,
                Fetch::Failed { .. } => {
                    iterator = Some(it);
                    continue;
                }
            };
            backoff.reset();
            let records = out.records();
            let behind = out.millis_behind_latest().unwrap_or(0);
            if let Some(o) = self.process_batch(st, behind, records).await {
                return o;
            }
            match out.next_shard_iterator() {
                Some(next) => iterator = Some(next.to_owned()),
                None => return self.shard_end(st).await,
            }
            if let Some(o) = self.maybe_checkpoint(st, false).await {
                return o;
            }
            if records.is_empty() {
                self.pause(self.config.idle_poll).await;
            }
        }
    }

    /// One GetRecords call, paced to the per-shard limit (5 calls/s), with
    /// its errors classified and counted; throttling and other failures
    /// back off before returning. `replaying` names the parent shard being
    /// replayed, for the logs.
    pub(super) async fn fetch(
        &self,
        iterator: &str,
        last_call: &mut Instant,
        backoff: &mut Backoff,
        replaying: Option<&str>,
    ) -> Fetch {
        let shard = self.lease.key.as_str();
        let since = last_call.elapsed();
        if since < MIN_POLL_INTERVAL {
            self.pause(MIN_POLL_INTERVAL - since).await;
        }
        *last_call = Instant::now();
        // The SDK's own retries would add calls this pacing does not see
        // (and retry throttling on their own schedule): this loop is the
        // one retry policy for reads.
        match self
            .kinesis
            .get_records()
            .shard_iterator(iterator)
            .limit(10_000)
            .customize()
            .config_override(
                aws_sdk_kinesis::config::Builder::default()
                    .retry_config(aws_sdk_kinesis::config::retry::RetryConfig::disabled()),
            )
            .send()
            .await
        {
            Ok(out) => Fetch::Records(out),
            Err(e) => {
                let svc = e.as_service_error();
                if svc.is_some_and(|e| e.is_expired_iterator_exception()) {
                    debug!(
                        shard,
                        ?replaying,
                        "iterator expired; re-acquiring after the last record read"
                    );
                    self.metrics.error(shard, "expired_iterator");
                    return Fetch::Expired;
                }
                let throttled =
                    svc.is_some_and(|e| e.is_provisioned_throughput_exceeded_exception());
                if throttled {
                    self.metrics.error(shard, "throughput_exceeded");
                } else {
                    warn!(shard, ?replaying, error = %DisplayErrorContext(&e), "GetRecords failed");
                    self.metrics.error(shard, "get_records");
                }
                self.pause(backoff.next_wait()).await;
                Fetch::Failed { throttled }
            }
        }
    }

    async fn iterator(&self, st: &State) -> anyhow::Result<String> {
        let req = self
            .kinesis
            .get_shard_iterator()
            .stream_name(&self.config.stream)
            .shard_id(&self.lease.key);
        let req = match st.tracker.last_read() {
            Some(cp) if !is_initial_position(cp) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(cp),
            Some(cp) => match Checkpoint::parse(cp)? {
                Checkpoint::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
                Checkpoint::AtTimestamp(ms) => req
                    .shard_iterator_type(ShardIteratorType::AtTimestamp)
                    .timestamp(DateTime::from_millis(ms)),
                // TRIM_HORIZON (sequence numbers are handled above)
                _ => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            },
            None => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
        };
        let out = req
            .send()
            .await
            .map_err(crate::aws::aws_error)
            .context("GetShardIterator")?;
        out.shard_iterator()
            .map(str::to_owned)
            .context("GetShardIterator returned no iterator")
    }
}

pub(super) enum Fetch {
    Records(aws_sdk_kinesis::operation::get_records::GetRecordsOutput),
    /// The iterator expired: get a new one after the last record read.
    Expired,
    /// Throttled or failed; already backed off: retry with the same iterator.
    Failed {
        throttled: bool,
    },
}
