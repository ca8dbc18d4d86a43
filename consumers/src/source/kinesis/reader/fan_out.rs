//! Enhanced fan-out: SubscribeToShard, renewed a little before Kinesis ends
//! each subscription (5 minutes), waiting out ResourceInUse after a renewal,
//! resuming after the last record read or the last continuation.

use std::time::Duration;

use aws_sdk_kinesis::error::{DisplayErrorContext, SdkError};
use aws_sdk_kinesis::operation::subscribe_to_shard::SubscribeToShardError;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::error::SubscribeToShardEventStreamError;
use aws_sdk_kinesis::types::{ShardIteratorType, StartingPosition, SubscribeToShardEventStream};
use tracing::{debug, error, info, warn};

use super::{Outcome, ShardReader, State};
use crate::retry::Backoff;
use crate::source::kinesis::checkpoint::{is_initial_position, Checkpoint};

/// Kinesis refuses a second SubscribeToShard for the same consumer and
/// shard within 5 seconds of the last (ResourceInUseException): the first
/// retry after one waits at least this long.
const IN_USE_RETRY: Duration = Duration::from_secs(1);

/// A failure of SubscribeToShard, the call's or its event stream's: both
/// can say whether it is ResourceInUse.
trait SubscribeFailure {
    fn is_in_use(&self) -> bool;
}

impl SubscribeFailure for SubscribeToShardError {
    fn is_in_use(&self) -> bool {
        self.is_resource_in_use_exception()
    }
}

impl SubscribeFailure for SubscribeToShardEventStreamError {
    fn is_in_use(&self) -> bool {
        self.is_resource_in_use_exception()
    }
}

/// Whether `e` is ResourceInUse, and its text with its causes.
fn subscribe_error<E, R>(e: &SdkError<E, R>) -> (bool, String)
where
    E: SubscribeFailure + std::error::Error + 'static,
    R: std::fmt::Debug,
{
    let in_use = e.as_service_error().is_some_and(E::is_in_use);
    (in_use, DisplayErrorContext(e).to_string())
}

impl ShardReader {
    pub(super) async fn subscribe_loop(&self, st: &mut State) -> Outcome {
        let shard = self.lease.key.as_str();
        let Some(arn) = self.config.consumer_arn.clone() else {
            return Outcome::Stopped;
        };
        let mut backoff = crate::retry::backoff();
        loop {
            if self.lost.is_cancelled() {
                return Outcome::Lost;
            }
            if self.shutdown.is_cancelled() {
                return self.final_checkpoint(st).await;
            }
            let start = match self.starting_position(st) {
                Ok(s) => s,
                Err(e) => {
                    error!(shard, error = %format!("{e:#}"), "bad starting position");
                    return Outcome::Stopped;
                }
            };
            debug!(
                shard,
                from = start.r#type().as_str(),
                sequence = start.sequence_number(),
                "subscribing"
            );
            let sub = self
                .kinesis
                .subscribe_to_shard()
                .consumer_arn(&arn)
                .shard_id(shard)
                .starting_position(start)
                .send()
                .await;
            let mut stream = match sub {
                Ok(out) => out.event_stream,
                Err(e) => {
                    let (in_use, error) = subscribe_error(&e);
                    self.subscription_failed(shard, in_use, error, &mut backoff)
                        .await;
                    continue;
                }
            };
            // A subscription lasts five minutes; renew it a little before the end.
            let deadline = tokio::time::Instant::now() + self.config.subscription_renew;
            loop {
                let event = tokio::select! {
                    e = stream.recv() => e,
                    _ = tokio::time::sleep_until(deadline) => {
                        info!(shard, "renewing the subscription");
                        break;
                    }
                    _ = self.shutdown.cancelled() => return self.final_checkpoint(st).await,
                    _ = self.lost.cancelled() => return Outcome::Lost,
                };
                match event {
                    Ok(Some(SubscribeToShardEventStream::SubscribeToShardEvent(ev))) => {
                        backoff.reset();
                        if !ev.continuation_sequence_number().is_empty() {
                            st.continuation = Some(ev.continuation_sequence_number().to_owned());
                        }
                        if let Some(o) = self
                            .process_batch(st, ev.millis_behind_latest(), ev.records())
                            .await
                        {
                            return o;
                        }
                        if !ev.child_shards().is_empty()
                            || ev.continuation_sequence_number().is_empty()
                        {
                            return self.shard_end(st).await;
                        }
                        if let Some(o) = self.maybe_checkpoint(st, false).await {
                            return o;
                        }
                    }
                    Ok(Some(other)) => {
                        debug!(shard, event = ?other, "unexpected subscription event")
                    }
                    Ok(None) => break,
                    Err(e) => {
                        let (in_use, error) = subscribe_error(&e);
                        self.subscription_failed(shard, in_use, error, &mut backoff)
                            .await;
                        break;
                    }
                }
            }
        }
    }

    /// A subscription could not start or broke off: counted, then backed
    /// off. ResourceInUse (another subscription of this consumer to this
    /// shard is still active, or the last one started under 5 seconds ago)
    /// is expected right after a renewal and waits at least [`IN_USE_RETRY`].
    async fn subscription_failed(
        &self,
        shard: &str,
        in_use: bool,
        error: String,
        backoff: &mut Backoff,
    ) {
        let wait = backoff.next_wait();
        if in_use {
            info!(shard, error = %error, "subscription still in use; resubscribing");
            self.metrics.error(shard, "subscription_in_use");
            self.pause(wait.max(IN_USE_RETRY)).await;
        } else {
            warn!(shard, error = %error, "subscription failed");
            self.metrics.error(shard, "subscription");
            self.pause(wait).await;
        }
    }

    fn starting_position(&self, st: &State) -> anyhow::Result<StartingPosition> {
        let b = StartingPosition::builder();
        let resume = match (st.tracker.last_read(), &st.continuation) {
            (Some(cp), Some(c)) if is_initial_position(cp) => Some(c.as_str()),
            (last, _) => last,
        };
        let b = match resume {
            Some(cp) if !is_initial_position(cp) => b
                .r#type(ShardIteratorType::AfterSequenceNumber)
                .sequence_number(cp),
            Some(cp) => match Checkpoint::parse(cp)? {
                Checkpoint::Latest => b.r#type(ShardIteratorType::Latest),
                Checkpoint::AtTimestamp(ms) => b
                    .r#type(ShardIteratorType::AtTimestamp)
                    .timestamp(DateTime::from_millis(ms)),
                // TRIM_HORIZON (sequence numbers are handled above)
                _ => b.r#type(ShardIteratorType::TrimHorizon),
            },
            None => b.r#type(ShardIteratorType::TrimHorizon),
        };
        Ok(b.build()?)
    }
}
