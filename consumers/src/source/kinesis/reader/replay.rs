//! Reshards: a child shard first re-reads what its finished parents left in
//! open windows, and a shard at its end says what its children must re-read
//! (see [`ReplayFrom`]), so a window that straddles a split or a merge keeps
//! its whole count.

use std::time::Instant;

use aws_sdk_kinesis::error::DisplayErrorContext;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use tracing::{error, info, warn};

use super::poll::{Fetch, MIN_POLL_INTERVAL};
use super::{Outcome, ShardReader, State};
use crate::source::kinesis::checkpoint::{is_initial_position, Checkpoint};
use crate::source::kinesis::lease::ReplayFrom;

impl ShardReader {
    /// What the children must re-read to rebuild the windows still open at
    /// this shard's end: nothing when none is; this shard's records after
    /// the checkpoint the checkpoint rule allows; or, when a window still
    /// holds records replayed from the parents, all that was replayed and
    /// this shard from its start.
    pub(super) fn replay_for_children(&self, st: &mut State) -> Vec<ReplayFrom> {
        let shard = self.lease.key.clone();
        match st.processor.low_water_position() {
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
    pub(super) async fn replay_parents(&self, st: &mut State) -> Option<Outcome> {
        let shard = self.lease.key.as_str();
        let mut parents = self.lease.parents.clone();
        parents.sort();
        let mut replay = Vec::new();
        for p in &parents {
            let mut backoff = crate::retry::backoff();
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
                        self.pause(backoff.next_wait()).await;
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
        let mut backoff = crate::retry::backoff();
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
                        match Checkpoint::parse(after) {
                            Ok(Checkpoint::AtTimestamp(ms)) => req
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
                            self.pause(backoff.next_wait()).await;
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
                if !self.process(st, rec, true).await {
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
}
