//! One shard's reader: reads records (GetRecords polling within the
//! per-shard limits, or enhanced fan-out), runs them through the shard's
//! engine, delivers the commands, and checkpoints under the checkpoint rule.
//! A child of a reshard first replays what its parents left in open windows
//! (see [`ReplayFrom`]), so no count is lost across a split or a merge.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use aws_sdk_kinesis::error::DisplayErrorContext;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::{ShardIteratorType, StartingPosition, SubscribeToShardEventStream};
use sshwarden_pipeline::policy::Decision;
use sshwarden_pipeline::{Engine, EngineConfig, RecordInput};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::checkpoint::CheckpointTracker;
use super::lease::{Cas, Lease, LeaseTable, ReplayFrom};
use super::plan::{is_initial_position, SHARD_END};
use crate::metrics::{Metrics, ShardLabel};
use crate::sink::Sink;

/// Kinesis allows 5 GetRecords calls per second per shard.
const MIN_POLL_INTERVAL: Duration = Duration::from_millis(200);

/// Kinesis refuses a second SubscribeToShard for the same consumer and
/// shard within 5 seconds of the last (ResourceInUseException): the first
/// retry after one waits at least this long.
const IN_USE_RETRY: Duration = Duration::from_secs(1);

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
}

pub struct Reader {
    pub kinesis: aws_sdk_kinesis::Client,
    pub table: LeaseTable,
    pub sink: Arc<Sink>,
    pub metrics: Arc<Metrics>,
    pub config: ReaderConfig,
    pub engine_config: EngineConfig,
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
    engine: Engine,
    tracker: CheckpointTracker,
    position: u64,
    last_checkpoint: Instant,
    decisions: Vec<Decision>,
    shard: ShardLabel,
    /// What was replayed from the parents before this shard's own records,
    /// and the position of the last record replayed (0: none).
    replayed: Vec<ReplayFrom>,
    replayed_through: u64,
    /// The last fan-out event's continuation sequence number: where a
    /// renewed subscription resumes when no record has been read yet (a
    /// shard started at LATEST that stayed idle would otherwise skip what
    /// arrived between two subscriptions).
    continuation: Option<String>,
}

impl Reader {
    pub async fn run(self) -> Outcome {
        let shard = self.lease.key.clone();
        let engine = match Engine::new(self.engine_config.clone()) {
            Ok(e) => e,
            Err(e) => {
                error!(shard, error = %e, "invalid engine configuration");
                return Outcome::Stopped;
            }
        };
        let mut st = State {
            engine,
            tracker: CheckpointTracker::new(Some(self.lease.checkpoint.clone())),
            position: 0,
            last_checkpoint: Instant::now(),
            decisions: Vec::new(),
            shard: ShardLabel {
                shard: shard.clone(),
            },
            replayed: Vec::new(),
            replayed_through: 0,
            continuation: None,
        };
        info!(shard, checkpoint = %self.lease.checkpoint, "reading shard");
        // Windows that had closed when the checkpoint was written were
        // delivered by the previous owner: records after the checkpoint that
        // still carry their tail must not re-fire them with partial counts.
        if let Some(t) = self.lease.event_time_ms {
            st.engine.resume_from(t);
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

    async fn poll_loop(&self, st: &mut State) -> Outcome {
        let shard = self.lease.key.as_str();
        let mut iterator = None;
        let mut backoff = Backoff::new();
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
                        self.pause(backoff.next()).await;
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

    async fn subscribe_loop(&self, st: &mut State) -> Outcome {
        let shard = self.lease.key.as_str();
        let Some(arn) = self.config.consumer_arn.clone() else {
            return Outcome::Stopped;
        };
        let mut backoff = Backoff::new();
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
                    let in_use = e
                        .as_service_error()
                        .is_some_and(|e| e.is_resource_in_use_exception());
                    self.subscription_failed(
                        shard,
                        in_use,
                        DisplayErrorContext(&e).to_string(),
                        &mut backoff,
                    )
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
                        let in_use = e
                            .as_service_error()
                            .is_some_and(|e| e.is_resource_in_use_exception());
                        self.subscription_failed(
                            shard,
                            in_use,
                            DisplayErrorContext(&e).to_string(),
                            &mut backoff,
                        )
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
        let wait = backoff.next();
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
            if !self
                .process(st, r.data().as_ref(), r.sequence_number(), false)
                .await
            {
                return Some(if self.lost.is_cancelled() {
                    Outcome::Lost
                } else {
                    self.final_checkpoint(st).await
                });
            }
        }
        if records.is_empty() && behind == 0 {
            st.engine.observe_idle(now_ms());
        }
        None
    }

    /// Runs one record through the engine and delivers its commands. False
    /// when delivery was interrupted by shutdown or a lost lease (the record
    /// then stays unrecorded, so the checkpoint stays before it). A record
    /// replayed from a parent shard is never recorded: this shard's
    /// checkpoint only names its own records.
    async fn process(&self, st: &mut State, data: &[u8], sequence: &str, replay: bool) -> bool {
        st.position += 1;
        self.metrics.records.get_or_create(&st.shard).inc();
        self.metrics
            .bytes
            .get_or_create(&st.shard)
            .inc_by(data.len() as u64);
        st.decisions.clear();
        let record = RecordInput {
            data,
            position: st.position,
            now_ms: Some(now_ms()),
            ..RecordInput::default()
        };
        match st.engine.process_record(&record, &mut st.decisions) {
            Ok(sshwarden_pipeline::engine::RecordKind::Data { events }) => {
                self.metrics
                    .events
                    .get_or_create(&st.shard)
                    .inc_by(events as u64);
            }
            Ok(sshwarden_pipeline::engine::RecordKind::Control) => {
                debug!(shard = %st.shard.shard, sequence, "control message skipped");
            }
            Err(e) => {
                warn!(shard = %st.shard.shard, sequence, error = %e, "record skipped");
                self.metrics.error(&st.shard.shard, "decode");
            }
        }
        let decisions = std::mem::take(&mut st.decisions);
        for d in &decisions {
            match d {
                Decision::Command(c) => {
                    if !self.deliver(c).await {
                        st.decisions = decisions;
                        return false;
                    }
                }
                Decision::Suppressed {
                    rule,
                    subject,
                    reason,
                    ..
                } => {
                    info!(shard = %st.shard.shard, rule, ?subject, ?reason, "rule fired, command suppressed");
                }
            }
        }
        st.decisions = decisions;
        if !replay {
            st.tracker.record(st.position, sequence.to_owned());
        }
        true
    }

    /// Delivers until the sink takes the command, or until shutdown or a
    /// lost lease interrupts (false).
    async fn deliver(&self, c: &sshwarden_pipeline::command::Command) -> bool {
        let interrupted = async {
            tokio::select! {
                _ = self.shutdown.cancelled() => {}
                _ = self.lost.cancelled() => {}
            }
        };
        crate::sink::deliver_until(&self.sink, &self.metrics, c, "checkpoint", interrupted).await
    }

    async fn maybe_checkpoint(&self, st: &mut State, force: bool) -> Option<Outcome> {
        if !force && st.last_checkpoint.elapsed() < self.config.checkpoint_every {
            return None;
        }
        st.last_checkpoint = Instant::now();
        let low = st.engine.low_water_position();
        let seq = st.tracker.advance(low).map(str::to_owned)?;
        match self.write_checkpoint(st, seq).await {
            Written::Yes | Written::Failed => None,
            Written::Lost => Some(Outcome::Lost),
        }
    }

    async fn write_checkpoint(&self, st: &mut State, seq: String) -> Written {
        let shard = self.lease.key.as_str();
        let event_time = st.engine.event_time();
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
        let replay = self.replay_for_children(st);
        st.engine.finish();
        let shard = self.lease.key.as_str();
        let mut backoff = Backoff::new();
        for _ in 0..20 {
            match self.table.end(&self.lease, &self.config.me, &replay).await {
                Ok(Cas::Done(())) => {
                    self.metrics.checkpoints.get_or_create(&st.shard).inc();
                    st.tracker.written(SHARD_END.to_owned());
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
                    self.pause(backoff.next()).await;
                }
            }
            if self.shutdown.is_cancelled() {
                break;
            }
        }
        Outcome::Stopped
    }

    /// What the children must re-read to rebuild the windows still open at
    /// this shard's end: nothing when none is; this shard's records after
    /// the checkpoint the checkpoint rule allows; or, when a window still
    /// holds records replayed from the parents, all that was replayed and
    /// this shard from its start.
    fn replay_for_children(&self, st: &mut State) -> Vec<ReplayFrom> {
        let shard = self.lease.key.clone();
        match st.engine.low_water_position() {
            None => Vec::new(),
            Some(low) if low <= st.replayed_through => {
                let mut r = st.replayed.clone();
                r.push(ReplayFrom {
                    shard,
                    after: self.lease.checkpoint.clone(),
                });
                r
            }
            Some(low) => {
                st.tracker.advance(Some(low));
                vec![ReplayFrom {
                    shard,
                    after: st
                        .tracker
                        .safe()
                        .unwrap_or(&self.lease.checkpoint)
                        .to_owned(),
                }]
            }
        }
    }

    /// Re-reads what the finished parents left in open windows. `Some` when
    /// shutdown or a lost lease interrupted it.
    async fn replay_parents(&self, st: &mut State) -> Option<Outcome> {
        let shard = self.lease.key.as_str();
        let mut parents = self.lease.parents.clone();
        parents.sort();
        let mut replay = Vec::new();
        for p in &parents {
            let mut backoff = Backoff::new();
            loop {
                if self.lost.is_cancelled() {
                    return Some(Outcome::Lost);
                }
                if self.shutdown.is_cancelled() {
                    return Some(Outcome::Stopped);
                }
                match self.table.get(p).await {
                    // A parent lease is deleted only once all its children
                    // checkpointed, which a child does after its replay.
                    Ok(lease) => {
                        replay.extend(lease.map(|l| l.replay).unwrap_or_default());
                        break;
                    }
                    Err(e) => {
                        warn!(shard, parent = %p, error = %format!("{e:#}"), "cannot read the parent lease");
                        self.pause(backoff.next()).await;
                    }
                }
            }
        }
        if replay.is_empty() {
            return None;
        }
        info!(shard, replay = ?replay, "replaying the parents' open windows");
        for r in &replay {
            if !self.replay_shard(st, r).await {
                return Some(if self.lost.is_cancelled() {
                    Outcome::Lost
                } else {
                    Outcome::Stopped
                });
            }
        }
        st.replayed = replay;
        st.replayed_through = st.position;
        None
    }

    /// Reads a closed shard from `r.after` to its end through this shard's
    /// engine. False when shutdown or a lost lease interrupted it.
    async fn replay_shard(&self, st: &mut State, r: &ReplayFrom) -> bool {
        let shard = self.lease.key.as_str();
        let mut last: Option<String> = None;
        let mut iterator: Option<String> = None;
        let mut backoff = Backoff::new();
        let mut failures = 0;
        let mut last_call = Instant::now() - MIN_POLL_INTERVAL;
        loop {
            if self.lost.is_cancelled() || self.shutdown.is_cancelled() {
                return false;
            }
            if failures >= 20 {
                error!(shard, replay = %r.shard, "giving up replaying a parent shard; windows that straddle the reshard may be undercounted");
                return true;
            }
            let it = match iterator.take() {
                Some(it) => it,
                None => {
                    let req = self
                        .kinesis
                        .get_shard_iterator()
                        .stream_name(&self.config.stream)
                        .shard_id(&r.shard);
                    let after = last.as_deref().unwrap_or(&r.after);
                    let req = if is_initial_position(after) {
                        match parse_initial(after) {
                            Ok(Initial::AtTimestamp(ms)) => req
                                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                                .timestamp(DateTime::from_millis(ms)),
                            // LATEST of a closed shard is its end: read it all.
                            _ => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
                        }
                    } else {
                        req.shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                            .starting_sequence_number(after)
                    };
                    match req.send().await {
                        Ok(out) => match out.shard_iterator() {
                            Some(it) => it.to_owned(),
                            None => return true,
                        },
                        Err(e) => {
                            warn!(shard, replay = %r.shard, error = %DisplayErrorContext(&e), "cannot get a shard iterator to replay");
                            self.metrics.error(shard, "get_shard_iterator");
                            failures += 1;
                            self.pause(backoff.next()).await;
                            continue;
                        }
                    }
                }
            };
            let out = match self
                .fetch(&it, &mut last_call, &mut backoff, Some(&r.shard))
                .await
            {
                Fetch::Records(out) => out,
                Fetch::Expired => continue,
                Fetch::Failed { throttled } => {
                    failures += u32::from(!throttled);
                    iterator = Some(it);
                    continue;
                }
            };
            backoff.reset();
            failures = 0;
            for rec in out.records() {
                if !self
                    .process(st, rec.data().as_ref(), rec.sequence_number(), true)
                    .await
                {
                    return false;
                }
                last = Some(rec.sequence_number().to_owned());
            }
            match out.next_shard_iterator() {
                Some(next) => iterator = Some(next.to_owned()),
                None => return true,
            }
        }
    }

    /// One GetRecords call, paced to the per-shard limit (5 calls/s), with
    /// its errors classified and counted; throttling and other failures
    /// back off before returning. `replaying` names the parent shard being
    /// replayed, for the logs.
    async fn fetch(
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
                self.pause(backoff.next()).await;
                Fetch::Failed { throttled }
            }
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
            Some(cp) => match parse_initial(cp)? {
                Initial::TrimHorizon => b.r#type(ShardIteratorType::TrimHorizon),
                Initial::Latest => b.r#type(ShardIteratorType::Latest),
                Initial::AtTimestamp(ms) => b
                    .r#type(ShardIteratorType::AtTimestamp)
                    .timestamp(DateTime::from_millis(ms)),
            },
            None => b.r#type(ShardIteratorType::TrimHorizon),
        };
        Ok(b.build()?)
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
            Some(cp) => match parse_initial(cp)? {
                Initial::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
                Initial::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
                Initial::AtTimestamp(ms) => req
                    .shard_iterator_type(ShardIteratorType::AtTimestamp)
                    .timestamp(DateTime::from_millis(ms)),
            },
            None => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
        };
        let out = req
            .send()
            .await
            .map_err(crate::aws_error)
            .context("GetShardIterator")?;
        out.shard_iterator()
            .map(str::to_owned)
            .context("GetShardIterator returned no iterator")
    }

    async fn pause(&self, d: Duration) {
        tokio::select! {
            _ = tokio::time::sleep(d) => {}
            _ = self.shutdown.cancelled() => {}
            _ = self.lost.cancelled() => {}
        }
    }
}

enum Fetch {
    Records(aws_sdk_kinesis::operation::get_records::GetRecordsOutput),
    /// The iterator expired: get a new one after the last record read.
    Expired,
    /// Throttled or failed; already backed off: retry with the same iterator.
    Failed {
        throttled: bool,
    },
}

enum Written {
    Yes,
    Failed,
    Lost,
}

pub enum Initial {
    TrimHorizon,
    Latest,
    AtTimestamp(i64),
}

/// `TRIM_HORIZON`, `LATEST` or `AT_TIMESTAMP:<epoch ms>` as stored in a lease.
pub fn parse_initial(cp: &str) -> anyhow::Result<Initial> {
    match cp {
        "TRIM_HORIZON" => Ok(Initial::TrimHorizon),
        "LATEST" => Ok(Initial::Latest),
        other => other
            .strip_prefix("AT_TIMESTAMP:")
            .and_then(|ms| ms.parse().ok())
            .map(Initial::AtTimestamp)
            .with_context(|| format!("unknown initial position {other:?} in the lease table")),
    }
}

pub fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

/// Exponential backoff with full jitter, 100 ms to 10 s.
pub struct Backoff {
    attempt: u32,
}

impl Backoff {
    pub fn new() -> Self {
        Backoff { attempt: 0 }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn next(&mut self) -> Duration {
        let cap = 100u64.saturating_mul(1 << self.attempt.min(7)).min(10_000);
        self.attempt += 1;
        Duration::from_millis(cap / 2 + rand::random_range(0..=cap / 2))
    }
}
