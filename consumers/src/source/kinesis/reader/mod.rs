//! One shard's reader: reads records (GetRecords polling within the
//! per-shard limits, or enhanced fan-out), runs them through the shard's
//! engine, queues the commands in its outbox (delivered while it reads on,
//! [`crate::sink::outbox`]), and checkpoints under the checkpoint rule, held
//! before every command not yet delivered.
//! A child of a reshard first replays what its parents left in open windows
//! (see [`replay`]), so no count is lost across a split or a merge.
//!
//! Here: the reader's state, one record through the engine and the sink,
//! checkpoints and SHARD_END. How records arrive: [`poll`] (GetRecords) or
//! [`fan_out`] (SubscribeToShard).

mod fan_out;
mod poll;
mod replay;

use std::sync::Arc;
use std::time::{Duration, Instant};

use sshwarden_loadgen::writer::kinesis::{KinesisItem, KinesisWriter};
use sshwarden_pipeline::partial::Partial;
use sshwarden_pipeline::policy::Decision;
use sshwarden_pipeline::RecordInput;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::checkpoint::CheckpointTracker;
use super::checkpoint::{is_initial_position, Checkpoint};
use super::lease::{Cas, Lease, LeaseTable, ReplayFrom};
use crate::clock::now_ms;
use crate::metrics::{Metrics, ReaderLabel};
use crate::sink::outbox::Outbox;
use crate::sink::Sink;
use crate::source::record::{self, Place};
use crate::source::stage::{Processor, StageConfig};

#[derive(Debug, Clone)]
pub struct ReaderConfig {
    pub stream: String,
    pub me: String,
    pub idle_poll: Duration,
    pub checkpoint_every: Duration,
    /// The consumer ARN for enhanced fan-out, when used.
    pub consumer_arn: Option<String>,
    /// A fan-out subscription is renewed after this long (Kinesis ends
    /// each one after 5 minutes).
    pub subscription_renew: Duration,
    /// Before the shard id in metric labels: `fleet:` for the stream of
    /// partials, whose shard ids are the same as the logs'.
    pub label_prefix: &'static str,
}

/// One shard's reader task, started by the coordinator for a lease it took.
pub struct ShardReader {
    pub kinesis: aws_sdk_kinesis::Client,
    pub table: LeaseTable,
    pub sink: Arc<Sink>,
    pub metrics: Arc<Metrics>,
    pub config: ReaderConfig,
    /// The engine (stream of logs) or the fleet stage (stream of partials).
    pub stage: StageConfig,
    /// Stage one with the fleet stage on: where its partials are written.
    pub partials_to: Option<Arc<KinesisWriter>>,
    pub lease: Lease,
    /// Fires on shutdown: drain, checkpoint, return.
    pub shutdown: CancellationToken,
    /// Fires when the coordinator lost the lease: stop at once, no checkpoint.
    pub lost: CancellationToken,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Read to SHARD_END and checkpointed it.
    Ended,
    /// Stopped on shutdown after a final checkpoint.
    Stopped,
    /// The lease was lost (stolen or expired).
    Lost,
}

struct State {
    processor: Processor,
    /// Partials emitted and not yet written, with the position of the record
    /// that emitted them: the checkpoint stays before the oldest.
    pending: Vec<(u64, Partial)>,
    tracker: CheckpointTracker,
    position: u64,
    last_checkpoint: Instant,
    decisions: Vec<Decision>,
    shard: ReaderLabel,
    /// What was replayed from the parents before this shard's own records,
    /// and the position of the last record replayed (0: none).
    replayed: Vec<ReplayFrom>,
    replayed_through: u64,
    /// The last fan-out event's continuation sequence number: where a
    /// renewed subscription resumes when no record has been read yet (a
    /// shard started at LATEST that stayed idle would otherwise skip what
    /// arrived between two subscriptions).
    continuation: Option<String>,
    /// The commands waiting for the sink; the checkpoint stays before them.
    outbox: Outbox,
}

impl ShardReader {
    /// Reads the shard until its end, shutdown or a lost lease.
    pub async fn read(self) -> Outcome {
        let shard = self.lease.key.clone();
        let processor = match Processor::new(&self.stage, &shard) {
            Ok(p) => p,
            Err(e) => {
                error!(shard, error = %e, "invalid engine configuration");
                return Outcome::Stopped;
            }
        };
        let mut st = State {
            processor,
            pending: Vec::new(),
            tracker: CheckpointTracker::new(Some(self.lease.checkpoint.clone())),
            position: 0,
            last_checkpoint: Instant::now(),
            decisions: Vec::new(),
            shard: ReaderLabel::new(format!("{}{shard}", self.config.label_prefix)),
            replayed: Vec::new(),
            replayed_through: 0,
            continuation: None,
            outbox: Outbox::new(
                self.sink.clone(),
                self.metrics.clone(),
                "checkpoint",
                // A lost lease stops the deliveries at once; on shutdown they
                // go on until the reader returns and drops the outbox.
                self.lost.clone(),
            ),
        };
        info!(shard, checkpoint = %self.lease.checkpoint, "reading shard");
        // Windows that had closed when the checkpoint was written were
        // delivered by the previous owner: records after the checkpoint that
        // still carry their tail must not re-fire them with partial counts.
        if let Some(t) = self.lease.event_time_ms {
            st.processor.resume_from(t);
        }
        // A child that has not checkpointed yet first rebuilds the windows its
        // parents left open at their end, so a window that straddles the
        // reshard keeps its whole count (docs/design.md: nothing counted is lost).
        if is_initial_position(&self.lease.checkpoint) && !self.lease.parents.is_empty() {
            if let Some(outcome) = self.replay_parents(&mut st).await {
                info!(shard, ?outcome, "shard reader finished");
                return outcome;
            }
        }
        let outcome = if self.config.consumer_arn.is_some() {
            self.subscribe_loop(&mut st).await
        } else {
            self.poll_loop(&mut st).await
        };
        info!(shard, ?outcome, "shard reader finished");
        outcome
    }

    /// One batch, from GetRecords or a fan-out event: the lag metric, each
    /// record, and on a caught-up empty batch the idle watermark. `Some` when
    /// delivery was interrupted (shutdown or a lost lease).
    async fn process_batch(
        &self,
        st: &mut State,
        behind: i64,
        records: &[aws_sdk_kinesis::types::Record],
    ) -> Option<Outcome> {
        self.metrics
            .millis_behind_latest
            .get_or_create(&st.shard)
            .set(behind);
        for r in records {
            if !self.process(st, r, false).await {
                return Some(if self.lost.is_cancelled() {
                    Outcome::Lost
                } else {
                    self.final_checkpoint(st).await
                });
            }
        }
        if records.is_empty() && behind == 0 {
            st.processor.observe_idle(now_ms());
            self.take_partials(st);
        }
        if !self.write_partials(st).await {
            return Some(if self.lost.is_cancelled() {
                Outcome::Lost
            } else {
                self.final_checkpoint(st).await
            });
        }
        None
    }

    /// Moves the partials the engine emitted to `pending`, each held at the
    /// oldest record it counts (not the record that closed it: the
    /// checkpoint must not pass a record whose partial is not written).
    fn take_partials(&self, st: &mut State) {
        if self.partials_to.is_none() {
            return;
        }
        st.processor.drain_partials(&mut st.pending);
    }

    /// Writes the pending partials to the fleet stage's stream (the writer
    /// retries throttles and failures itself). False when shutdown or a lost
    /// lease interrupted it; a failed write keeps them pending (the
    /// checkpoint stays before them) for the next batch.
    async fn write_partials(&self, st: &mut State) -> bool {
        let Some(writer) = &self.partials_to else {
            return true;
        };
        if st.pending.is_empty() {
            return true;
        }
        let items: Vec<KinesisItem> = st
            .pending
            .iter()
            .map(|(_, p)| KinesisItem {
                partition_key: p.source.clone(),
                data: p.encode(),
                due_ms: None,
                marks: Vec::new(),
            })
            .collect();
        let bytes: usize = items.iter().map(|i| i.data.len()).sum();
        let n = items.len();
        tokio::select! {
            r = writer.write(items, None) => match r {
                Ok(_) => {
                    st.pending.clear();
                    self.metrics.partials_written.get_or_create(&st.shard).inc_by(n as u64);
                    self.metrics.partial_bytes.get_or_create(&st.shard).inc_by(bytes as u64);
                    true
                }
                Err(e) => {
                    warn!(shard = %self.lease.key, error = %e, "writing partials failed; will retry");
                    self.metrics.error(&self.lease.key, "partials");
                    true
                }
            },
            _ = self.interrupted() => false,
        }
    }

    /// Runs one record through the engine and queues its commands in the
    /// outbox (delivered while reading goes on; the checkpoint stays before
    /// the oldest one waiting). False when a full outbox was interrupted by
    /// shutdown or a lost lease (the record then stays unrecorded). A record
    /// replayed from a parent shard is never recorded: this shard's
    /// checkpoint only names its own records.
    async fn process(
        &self,
        st: &mut State,
        r: &aws_sdk_kinesis::types::Record,
        replay: bool,
    ) -> bool {
        let (data, sequence) = (r.data().as_ref(), r.sequence_number());
        // Event times are judged against when Kinesis received the record,
        // not against this worker's clock (a replay reads old records).
        let arrival_ms = r
            .approximate_arrival_timestamp()
            .and_then(|t| t.to_millis().ok())
            .unwrap_or_else(now_ms);
        st.position += 1;
        let place = Place::Shard { sequence };
        record::received(&self.metrics, &st.shard, data.len());
        st.decisions.clear();
        let input = RecordInput {
            data,
            position: st.position,
            arrival_ms: Some(arrival_ms),
            ..RecordInput::default()
        };
        // A parent's records replayed here had their partials sent by the
        // parent when it ended: they rebuild this shard's windows only.
        st.processor.pause_partials(replay);
        record::process_stage(
            &mut st.processor,
            &input,
            &mut st.decisions,
            &self.metrics,
            &st.shard,
            place,
        );
        self.take_partials(st);
        // Held where a replay re-derives the command with its full counts:
        // the start of the windows open now (the engine's low water), not
        // just this record.
        let hold = st
            .processor
            .low_water_position()
            .map_or(st.position, |lw| lw.min(st.position));
        for c in record::commands(&st.decisions, &st.shard, place) {
            if !st.outbox.push(hold, c, self.interrupted()).await {
                return false;
            }
        }
        if !replay {
            st.tracker.record(st.position, sequence.to_owned());
        }
        true
    }

    /// Completes on shutdown or a lost lease.
    async fn interrupted(&self) {
        tokio::select! {
            _ = self.shutdown.cancelled() => {}
            _ = self.lost.cancelled() => {}
        }
    }

    async fn maybe_checkpoint(&self, st: &mut State, force: bool) -> Option<Outcome> {
        if !force && st.last_checkpoint.elapsed() < self.config.checkpoint_every {
            return None;
        }
        st.last_checkpoint = Instant::now();
        let pending = st.pending.iter().map(|(p, _)| *p).min();
        let low = st
            .outbox
            .low_water(min_position(st.processor.low_water_position(), pending));
        let seq = st.tracker.advance(low).map(str::to_owned)?;
        match self.write_checkpoint(st, seq).await {
            Written::Yes | Written::Failed => None,
            Written::Lost => Some(Outcome::Lost),
        }
    }

    async fn write_checkpoint(&self, st: &mut State, seq: String) -> Written {
        let shard = self.lease.key.as_str();
        let event_time = st.outbox.event_time(st.processor.event_time());
        match self
            .table
            .checkpoint(&self.lease, &self.config.me, &seq, event_time)
            .await
        {
            Ok(Cas::Done(())) => {
                debug!(shard, sequence = %seq, "checkpointed");
                self.metrics.checkpoints.get_or_create(&st.shard).inc();
                st.tracker.written(seq);
                Written::Yes
            }
            Ok(Cas::Lost) => {
                warn!(shard, "lease lost while checkpointing");
                self.lost.cancel();
                Written::Lost
            }
            Err(e) => {
                warn!(shard, error = %format!("{e:#}"), "checkpoint failed; will retry");
                self.metrics.error(shard, "checkpoint");
                Written::Failed
            }
        }
    }

    /// On shutdown: the checkpoint the checkpoint rule allows (open windows
    /// hold it back; the next owner rebuilds them by replaying).
    async fn final_checkpoint(&self, st: &mut State) -> Outcome {
        match self.maybe_checkpoint(st, true).await {
            Some(o) => o,
            None => Outcome::Stopped,
        }
    }

    /// Every record of the shard is read: the shard is marked finished so its
    /// children may start, with what they must replay to rebuild the windows
    /// still open here (a window that straddles the reshard is then counted
    /// whole by the child, not split between parent and child).
    async fn shard_end(&self, st: &mut State) -> Outcome {
        // Every command delivered before the shard is marked finished.
        if !st.outbox.drain(self.interrupted()).await {
            return if self.lost.is_cancelled() {
                Outcome::Lost
            } else {
                self.final_checkpoint(st).await
            };
        }
        // Every partial is sent, those of windows still open included, and
        // acknowledged before the shard is marked finished: the children
        // replay this shard's records to rebuild their windows but build no
        // partial from them (docs/fleet.md).
        st.processor.flush_partials();
        self.take_partials(st);
        // A failed write keeps them pending: the shard is not marked
        // finished until they are written (its children would not send them).
        let mut backoff = crate::retry::backoff();
        loop {
            if !self.write_partials(st).await {
                return if self.lost.is_cancelled() {
                    Outcome::Lost
                } else {
                    self.final_checkpoint(st).await
                };
            }
            if st.pending.is_empty() {
                break;
            }
            self.pause(backoff.next_wait()).await;
        }
        let replay = self.replay_for_children(st);
        st.processor.finish();
        let shard = self.lease.key.as_str();
        let mut backoff = crate::retry::backoff();
        for _ in 0..20 {
            match self.table.end(&self.lease, &self.config.me, &replay).await {
                Ok(Cas::Done(())) => {
                    self.metrics.checkpoints.get_or_create(&st.shard).inc();
                    st.tracker.written(Checkpoint::ShardEnd.to_string());
                    info!(shard, replay = ?replay, "reached SHARD_END");
                    return Outcome::Ended;
                }
                Ok(Cas::Lost) => {
                    warn!(shard, "lease lost while checkpointing SHARD_END");
                    self.lost.cancel();
                    return Outcome::Lost;
                }
                Err(e) => {
                    warn!(shard, error = %format!("{e:#}"), "checkpoint failed; will retry");
                    self.metrics.error(shard, "checkpoint");
                    self.pause(backoff.next_wait()).await;
                }
            }
            if self.shutdown.is_cancelled() {
                break;
            }
        }
        Outcome::Stopped
    }

    async fn pause(&self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.shutdown.cancelled() => {}
            _ = self.lost.cancelled() => {}
        }
    }
}

fn min_position(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

enum Written {
    Yes,
    Failed,
    Lost,
}
