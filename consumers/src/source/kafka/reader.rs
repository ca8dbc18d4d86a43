//! One partition's reader: a tokio task with its own engine (or, on the
//! fleet stage's topic, its own fleet stage: [`Processor`]). It takes the
//! messages the consumer's poll thread forwards (a bounded channel: a slow
//! reader pauses its partition, see [`super::group`]), runs them through the
//! engine, queues the commands in its outbox (delivered with backoff while
//! it reads on, [`crate::sink::outbox`]), writes the partials its engine
//! emits to the topic of partials (with the fleet stage on), and publishes
//! the offset the checkpoint rule allows, held before every command not yet
//! delivered and every message counted in a partial the broker has not yet
//! acknowledged. On revoke or shutdown it stops at once (commands and
//! partials still waiting are abandoned, their messages stay uncommitted)
//! and hands back its final offset, which the poll thread commits before the
//! partition moves.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sshwarden_loadgen::kafka::{KafkaWriter, Outgoing};
use sshwarden_pipeline::command::Origin;
use sshwarden_pipeline::partial::Partial;
use sshwarden_pipeline::policy::Decision;
use sshwarden_pipeline::{LineInput, RecordInput};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use super::offsets::{self, CommitTracker, Content};
use crate::clock::now_ms;
use crate::config::KafkaFormat;
use crate::metrics::{Metrics, ReaderLabel};
use crate::sink::outbox::Outbox;
use crate::sink::Sink;
use crate::source::record::{self, Place};
use crate::source::stage::Processor;

/// Partials a reader writes in one call at most (as the Kinesis writer's
/// batches): past it, it writes before reading on.
const PARTIALS_BATCH: usize = 500;

/// Where stage one writes its partials: the topic of partials, with the
/// worker's one producer (shared by its partition readers).
pub struct PartialsTopic {
    pub writer: KafkaWriter,
    pub topic: String,
}

/// A message, copied out of librdkafka's buffer by the poll thread.
#[derive(Debug)]
pub struct Message {
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Vec<u8>,
    /// The message's timestamp (create or log-append time), epoch ms.
    pub timestamp_ms: Option<i64>,
}

#[derive(Debug)]
pub enum Input {
    Message(Message),
    /// The reader reached the end of the partition (nothing more buffered).
    End,
}

/// What the poll thread and the reader share.
#[derive(Debug)]
pub struct Shared {
    /// An offset (and its metadata) the reader wants committed; the poll
    /// thread takes it on its next commit round.
    pub commit: Mutex<Option<(i64, String)>>,
    /// The offset after the last message processed (-1: none yet).
    pub position: AtomicI64,
}

impl Default for Shared {
    fn default() -> Self {
        Shared {
            commit: Mutex::new(None),
            position: AtomicI64::new(-1),
        }
    }
}

/// The offset to commit when the partition is revoked (`None`: nothing was
/// delivered since the assignment).
#[derive(Debug)]
pub struct Final {
    pub commit: Option<(i64, String)>,
}

/// One assigned partition's reader task, started by the group on assignment.
pub struct PartitionReader {
    pub topic: String,
    pub partition: i32,
    pub format: KafkaFormat,
    /// The engine (topic of logs) or the fleet stage (topic of partials).
    pub processor: Processor,
    /// Stage one with the fleet stage on: where its partials go.
    pub partials_to: Option<Arc<PartialsTopic>>,
    /// Partials emitted and not yet acknowledged by the broker, each with
    /// the position of the oldest message it counts: the commit stays
    /// before the oldest.
    pub pending: Vec<(u64, Partial)>,
    /// The partition's name in metrics (`fleet:` before it on the topic of partials).
    pub label: ReaderLabel,
    pub tracker: CommitTracker,
    pub sink: Arc<Sink>,
    pub metrics: Arc<Metrics>,
    pub input: mpsc::Receiver<Input>,
    pub shared: Arc<Shared>,
    /// Fires on revoke or shutdown.
    pub stop: CancellationToken,
    pub checkpoint_every: Duration,
    pub idle: Duration,
    pub max_future_skew_ms: i64,
    pub done: std::sync::mpsc::Sender<Final>,
}

impl PartitionReader {
    /// Reads the partition until a revoke or shutdown, then hands back the final offset.
    pub async fn read(mut self) {
        let label = self.label.clone();
        let mut decisions = Vec::new();
        let mut checkpoint = tokio::time::interval(self.checkpoint_every);
        checkpoint.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Set while the partition is caught up: past it, processing time
        // stands in for event time so idle windows close (as a caught-up
        // Kinesis shard does).
        let mut idle_at: Option<Instant> = None;
        // The last write of partials failed: retried on the checkpoint's
        // tick (not on every message) until one succeeds.
        let mut partials_failed = false;
        // The commands waiting for the sink (the commit stays before them);
        // a revoke or shutdown abandons them, as it abandoned a retry before.
        let outbox = Outbox::new(
            self.sink.clone(),
            self.metrics.clone(),
            "commit",
            self.stop.clone(),
        );
        loop {
            let idle_sleep = async {
                match idle_at {
                    Some(t) => tokio::time::sleep_until(t).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => break,
                input = self.input.recv() => match input {
                    None => break,
                    Some(Input::Message(m)) => {
                        idle_at = None;
                        if !self.process(&label, m, &mut decisions, &outbox).await {
                            break;
                        }
                        // Written once what has arrived is read (a batch,
                        // as a Kinesis reader writes after each GetRecords),
                        // or when many are waiting; after a failure, only
                        // on the checkpoint's tick.
                        let due = self.input.is_empty() || self.pending.len() >= PARTIALS_BATCH;
                        if due && !partials_failed && !self.write_partials(&mut partials_failed).await {
                            break;
                        }
                    }
                    Some(Input::End) => idle_at = Some(Instant::now() + self.idle),
                },
                _ = idle_sleep => {
                    self.processor.observe_idle(now_ms());
                    self.take_partials();
                    idle_at = Some(Instant::now() + self.idle);
                    if !partials_failed && !self.write_partials(&mut partials_failed).await {
                        break;
                    }
                }
                _ = checkpoint.tick() => {
                    if !self.write_partials(&mut partials_failed).await {
                        break;
                    }
                    self.publish(&outbox);
                }
            }
        }
        let low = self.low_water(&outbox);
        let commit = self.tracker.commit_point(low).map(|o| {
            (
                o,
                offsets::commit_metadata(outbox.event_time(self.processor.event_time())),
            )
        });
        info!(partition = %label.name(), commit = ?commit.as_ref().map(|c| c.0), "partition reader stopped");
        // The poll thread may have given up waiting (its deadline passed).
        let _ = self.done.send(Final { commit });
    }

    /// The position the commit must stay before: the oldest message still
    /// counted in an open window or in a partial not yet acknowledged, or
    /// holding a command not yet delivered.
    fn low_water(&self, outbox: &Outbox) -> Option<u64> {
        outbox.low_water(offsets::held_position(
            self.processor.low_water_position(),
            self.pending.iter().map(|(p, _)| *p),
        ))
    }

    /// Moves the partials the engine emitted to `pending`, each held at the
    /// oldest message it counts (not the message that closed it: the
    /// commit must not pass a message whose partial is not written).
    fn take_partials(&mut self) {
        if self.partials_to.is_some() {
            self.processor.drain_partials(&mut self.pending);
        }
    }

    /// Writes the pending partials to the topic of partials, keyed by their
    /// source network (as the Kinesis path's partition key), and waits for
    /// the broker's acknowledgement (librdkafka retries within the writer's
    /// timeout). A failed write keeps them pending, so the commit stays
    /// before them, and sets `failed`; a successful one clears it. False
    /// when a revoke or shutdown interrupted it.
    async fn write_partials(&mut self, failed: &mut bool) -> bool {
        let Some(to) = self.partials_to.clone() else {
            return true;
        };
        if self.pending.is_empty() {
            *failed = false;
            return true;
        }
        let now = now_ms();
        let messages: Vec<Outgoing> = self
            .pending
            .iter()
            .map(|(_, p)| Outgoing {
                key: p.source.clone(),
                payload: p.encode(),
                timestamp_ms: now,
            })
            .collect();
        let bytes: usize = messages.iter().map(|m| m.payload.len()).sum();
        let n = messages.len();
        // librdkafka's producer blocks its caller until the acknowledgements.
        let write =
            tokio::task::spawn_blocking(move || to.writer.write(&to.topic, &messages, None));
        let result = tokio::select! {
            r = write => r,
            _ = self.stop.cancelled() => return false,
        };
        match result.map_err(anyhow::Error::from).and_then(|r| r) {
            Ok(_) => {
                self.pending.clear();
                *failed = false;
                self.metrics
                    .partials_written
                    .get_or_create(&self.label)
                    .inc_by(n as u64);
                self.metrics
                    .partial_bytes
                    .get_or_create(&self.label)
                    .inc_by(bytes as u64);
            }
            Err(e) => {
                warn!(partition = %self.label.name(), error = %format!("{e:#}"), "writing partials failed; will retry");
                self.metrics.error(self.label.name(), "partials");
                *failed = true;
            }
        }
        true
    }

    /// Offers the offset the checkpoint rule allows to the poll thread.
    fn publish(&mut self, outbox: &Outbox) {
        let low = self.low_water(outbox);
        if let Some(offset) = self.tracker.to_commit(low) {
            let meta = offsets::commit_metadata(outbox.event_time(self.processor.event_time()));
            if let Ok(mut slot) = self.shared.commit.lock() {
                *slot = Some((offset, meta));
                self.tracker.committed(offset);
            }
        }
    }

    /// One message through the engine, its commands queued in `outbox`.
    /// False when a full outbox was interrupted by a revoke or shutdown (the
    /// command then stays waiting, so no commit passes its message).
    async fn process(
        &mut self,
        label: &ReaderLabel,
        m: Message,
        decisions: &mut Vec<Decision>,
        outbox: &Outbox,
    ) -> bool {
        let position = offsets::position(m.offset);
        let place = Place::Partition { offset: m.offset };
        record::received(&self.metrics, label, m.payload.len());
        decisions.clear();
        let now = now_ms();
        let content = match self.processor {
            Processor::Logs(_) => offsets::content(self.format, &m.payload),
            // The topic of partials holds partials, whatever the logs' format.
            Processor::Fleet(_) => Content::Payload,
        };
        match content {
            Content::Payload => {
                let input = RecordInput {
                    data: &m.payload,
                    position,
                    // The message time stands for the arrival time (the
                    // producer's or the broker's clock, not the instance's).
                    arrival_ms: m.timestamp_ms.filter(|t| *t > 0).or(Some(now)),
                    ..RecordInput::default()
                };
                record::process_stage(
                    &mut self.processor,
                    &input,
                    decisions,
                    &self.metrics,
                    label,
                    place,
                );
            }
            Content::Lines => {
                let events = self.process_lines(&m, position, now, decisions);
                if let Some(engine) = self.processor.engine() {
                    record::engine_events(engine, &self.metrics, label);
                }
                self.metrics.events.get_or_create(label).inc_by(events);
            }
        }
        self.take_partials();
        // Held where a replay re-derives the command with its full counts:
        // the start of the windows open now (the engine's low water), not
        // just this message.
        let hold = self
            .processor
            .low_water_position()
            .map_or(position, |lw| lw.min(position));
        for c in record::commands(decisions, label, place) {
            if !outbox.push(hold, c, self.stop.cancelled()).await {
                return false;
            }
        }
        self.tracker.delivered(m.offset);
        self.shared.position.store(m.offset + 1, Ordering::Relaxed);
        true
    }

    /// Raw sshd lines: the key names the instance (else each line's syslog
    /// host does, and a host name is never quarantined); the message's
    /// timestamp is the event time, as CloudWatch's is for a payload's
    /// events; ids are topic/partition/offset(/line), for deduplication.
    fn process_lines(
        &mut self,
        m: &Message,
        position: u64,
        now: i64,
        decisions: &mut Vec<Decision>,
    ) -> u64 {
        let Processor::Logs(engine) = &mut self.processor else {
            return 0;
        };
        let text = String::from_utf8_lossy(&m.payload);
        let instance = offsets::instance_from_key(m.key.as_deref());
        let time_ms = m
            .timestamp_ms
            .filter(|t| *t > 0)
            .map(|t| t.min(now + self.max_future_skew_ms));
        let origin = Origin {
            account: String::new(),
            log_group: format!("kafka:{}", self.topic),
            log_stream: instance.unwrap_or_default().to_owned(),
        };
        let mut events = 0;
        for (i, line) in text.split('\n').enumerate() {
            let line = line.strip_suffix('\r').unwrap_or(line);
            if line.trim().is_empty() {
                continue;
            }
            let id = if i == 0 {
                format!("{}/{}/{}", self.topic, self.partition, m.offset)
            } else {
                format!("{}/{}/{}/{i}", self.topic, self.partition, m.offset)
            };
            engine.process_line(
                &LineInput {
                    instance: instance.unwrap_or_default(),
                    instance_from_host: instance.is_none(),
                    event_id: Some(&id),
                    time_ms,
                    arrival_ms: Some(now),
                    position,
                    line,
                },
                &origin,
                decisions,
            );
            events += 1;
        }
        events
    }
}
