//! The consumer group on this worker: the poll thread, the partitions it
//! holds and their readers, pause and resume, commits, and librdkafka's
//! callbacks (rebalances, statistics, logs).

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::Message as _;
use rdkafka::statistics::Statistics;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::ClientContext;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::offsets;
use super::reader::{Final, Input, Message, PartialsTopic, PartitionReader, Shared};
use crate::config::KafkaFormat;
use crate::metrics::{Metrics, ReaderLabel};
use crate::sink::Sink;
use crate::source::stage::{Processor, StageConfig};

/// Messages buffered per partition between the poll thread and its reader;
/// past it the partition is paused.
const READER_QUEUE: usize = 256;

/// The poll thread: forwards, resumes, commits; on shutdown drains every
/// reader, commits, and closes the consumer (which leaves the group, so the
/// partitions move at once).
pub(super) fn poll_loop(
    consumer: BaseConsumer<GroupContext>,
    group: Arc<Group>,
    shutdown: CancellationToken,
) {
    let mut last_commit = Instant::now();
    while !shutdown.is_cancelled() {
        group.resume_ready(&consumer);
        match consumer.poll(Duration::from_millis(100)) {
            None => {}
            Some(Ok(m)) => group.forward(&consumer, &m),
            Some(Err(KafkaError::PartitionEOF(p))) => group.end_of_partition(p),
            Some(Err(e)) => {
                warn!(error = %e, "Kafka consumer error");
                group.metrics.error(&group.topic, "consume");
            }
        }
        if last_commit.elapsed() >= group.checkpoint_every {
            group.commit_published(&consumer);
            last_commit = Instant::now();
        }
    }
    let all: Vec<i32> = group.lock().keys().copied().collect();
    group.revoke(&consumer, &all, true);
    drop(consumer);
    info!("left the consumer group");
}

/// One assigned partition, as the poll thread sees it.
pub(super) struct Assigned {
    input: mpsc::Sender<Input>,
    /// What arrived while the reader's queue was full (the partition is
    /// paused until it is empty again).
    overflow: VecDeque<Input>,
    paused: bool,
    stop: CancellationToken,
    shared: Arc<Shared>,
    done: std::sync::mpsc::Receiver<Final>,
    label: ReaderLabel,
}

/// The consumer group's state on this worker; lives in librdkafka's client
/// context so the rebalance callbacks reach it.
pub(super) struct Group {
    pub(super) topic: String,
    pub(super) format: KafkaFormat,
    /// What each partition's reader runs: its engine (the topic of logs)
    /// or the fleet stage (the topic of partials).
    pub(super) stage: StageConfig,
    /// Before topic/partition in metric labels: `fleet:` on the topic of
    /// partials, as on the Kinesis stream of partials.
    pub(super) label_prefix: &'static str,
    /// Stage one with the fleet stage on: where its partials are written.
    pub(super) partials_to: Option<Arc<PartialsTopic>>,
    /// Whether this group's partitions are the ones
    /// `sshwarden_kafka_partitions_assigned` counts (the logs').
    pub(super) counts_partitions: bool,
    pub(super) max_future_skew_ms: i64,
    pub(super) sink: Arc<Sink>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) runtime: tokio::runtime::Handle,
    pub(super) checkpoint_every: Duration,
    pub(super) idle: Duration,
    /// How long a revoke waits for the readers' final offsets.
    pub(super) drain: Duration,
    pub(super) readers: Mutex<HashMap<i32, Assigned>>,
}

impl Group {
    fn lock(&self) -> MutexGuard<'_, HashMap<i32, Assigned>> {
        // Only the poll thread locks it; a poisoned lock still holds valid state.
        self.readers.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn tpl(&self, partitions: &[i32]) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in partitions {
            tpl.add_partition(&self.topic, *p);
        }
        tpl
    }

    /// A message to its partition's reader; a full queue pauses the partition.
    fn forward(
        &self,
        consumer: &BaseConsumer<GroupContext>,
        m: &rdkafka::message::BorrowedMessage<'_>,
    ) {
        let p = m.partition();
        let mut readers = self.lock();
        let Some(a) = readers.get_mut(&p) else {
            // Buffered before its partition was revoked: the new owner reads it.
            debug!(
                partition = p,
                offset = m.offset(),
                "message of a partition not held, dropped"
            );
            return;
        };
        let input = Input::Message(Message {
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec).unwrap_or_default(),
            timestamp_ms: m.timestamp().to_millis(),
        });
        if a.paused {
            a.overflow.push_back(input);
            return;
        }
        if let Err(mpsc::error::TrySendError::Full(input)) = a.input.try_send(input) {
            a.overflow.push_back(input);
            a.paused = true;
            if let Err(e) = consumer.pause(&self.tpl(&[p])) {
                warn!(partition = %a.label.name(), error = %e, "cannot pause the partition");
            }
            self.metrics.kafka_pauses.get_or_create(&a.label).inc();
            debug!(partition = %a.label.name(), "reader behind: partition paused");
        }
    }

    fn end_of_partition(&self, p: i32) {
        if let Some(a) = self.lock().get_mut(&p) {
            if a.paused {
                a.overflow.push_back(Input::End);
            } else {
                let _ = a.input.try_send(Input::End);
            }
        }
    }

    /// Moves held-back messages into readers that caught up; resumes their partitions.
    fn resume_ready(&self, consumer: &BaseConsumer<GroupContext>) {
        let mut resume = Vec::new();
        for (p, a) in self.lock().iter_mut().filter(|(_, a)| a.paused) {
            while let Some(input) = a.overflow.pop_front() {
                match a.input.try_send(input) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(input)) => {
                        a.overflow.push_front(input);
                        break;
                    }
                    Err(mpsc::error::TrySendError::Closed(_)) => {
                        a.overflow.clear();
                        break;
                    }
                }
            }
            if a.overflow.is_empty() {
                a.paused = false;
                resume.push(*p);
            }
        }
        if !resume.is_empty() {
            if let Err(e) = consumer.resume(&self.tpl(&resume)) {
                warn!(error = %e, "cannot resume partitions");
            }
        }
    }

    /// Commits (asynchronously) what the readers published.
    fn commit_published(&self, consumer: &BaseConsumer<GroupContext>) {
        let mut tpl = TopicPartitionList::new();
        for (p, a) in self.lock().iter() {
            let taken = a.shared.commit.lock().ok().and_then(|mut c| c.take());
            if let Some((offset, meta)) = taken {
                add_commit(&mut tpl, &self.topic, *p, offset, &meta);
            }
        }
        if tpl.count() > 0 {
            if let Err(e) = consumer.commit(&tpl, CommitMode::Async) {
                warn!(error = %e, "offset commit failed; the next one carries it");
                self.metrics.error(&self.topic, "commit");
            }
        }
    }

    /// New partitions: each gets a reader that resumes from the group's
    /// committed offset and the event time committed with it.
    fn assign(&self, consumer: &BaseConsumer<GroupContext>, partitions: &[i32]) {
        let committed = match consumer
            .committed_offsets(self.tpl(partitions), Duration::from_secs(10))
        {
            Ok(tpl) => tpl,
            Err(e) => {
                warn!(error = %e, "cannot read the committed offsets; resuming without their event time");
                TopicPartitionList::new()
            }
        };
        let mut readers = self.lock();
        for &p in partitions {
            let (offset, event_time) = match committed.find_partition(&self.topic, p) {
                Some(elem) => (
                    match elem.offset() {
                        Offset::Offset(o) => Some(o),
                        _ => None,
                    },
                    offsets::parse_commit_metadata(&metadata_of(&elem)),
                ),
                None => (None, None),
            };
            // Partials name their shard topic/partition (their ids must
            // not collide between partitions).
            let shard = format!("{}/{p}", self.topic);
            let mut processor = match Processor::new(&self.stage, &shard) {
                Ok(e) => e,
                Err(e) => {
                    error!(error = %e, "invalid engine configuration");
                    continue;
                }
            };
            if let Some(t) = event_time {
                processor.resume_from(t);
            }
            let label = ReaderLabel::new(format!("{}{shard}", self.label_prefix));
            let (tx, rx) = mpsc::channel(READER_QUEUE);
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            let stop = CancellationToken::new();
            let shared = Arc::new(Shared::default());
            let reader = PartitionReader {
                topic: self.topic.clone(),
                partition: p,
                format: self.format,
                processor,
                partials_to: self.partials_to.clone(),
                pending: Vec::new(),
                label: label.clone(),
                tracker: offsets::CommitTracker::new(offset),
                sink: self.sink.clone(),
                metrics: self.metrics.clone(),
                input: rx,
                shared: shared.clone(),
                stop: stop.clone(),
                checkpoint_every: self.checkpoint_every,
                idle: self.idle,
                max_future_skew_ms: self.max_future_skew_ms,
                done: done_tx,
            };
            self.runtime.spawn(reader.read());
            info!(partition = %label.name(), committed = ?offset, event_time = ?event_time, "partition assigned");
            readers.insert(
                p,
                Assigned {
                    input: tx,
                    overflow: VecDeque::new(),
                    paused: false,
                    stop,
                    shared,
                    done: done_rx,
                    label,
                },
            );
        }
        if self.counts_partitions {
            self.metrics.partitions_assigned.set(readers.len() as i64);
        }
    }

    /// Partitions leave this worker (rebalance or shutdown): their readers
    /// stop, and unless the assignment was lost (another member may own them
    /// already) their final offsets are committed synchronously first.
    fn revoke(&self, consumer: &BaseConsumer<GroupContext>, partitions: &[i32], commit: bool) {
        let leaving: Vec<(i32, Assigned)> = {
            let mut readers = self.lock();
            let l = partitions
                .iter()
                .filter_map(|p| readers.remove(p).map(|a| (*p, a)))
                .collect();
            if self.counts_partitions {
                self.metrics.partitions_assigned.set(readers.len() as i64);
            }
            l
        };
        if leaving.is_empty() {
            return;
        }
        for (_, a) in &leaving {
            a.stop.cancel();
        }
        let deadline = Instant::now() + self.drain;
        let mut tpl = TopicPartitionList::new();
        for (p, a) in leaving {
            self.metrics.kafka_lag.remove(&a.label);
            let wait = deadline.saturating_duration_since(Instant::now());
            match a.done.recv_timeout(wait) {
                Ok(Final {
                    commit: Some((offset, meta)),
                }) => add_commit(&mut tpl, &self.topic, p, offset, &meta),
                Ok(Final { commit: None }) => {}
                Err(_) => {
                    error!(partition = %a.label.name(), "reader did not stop in time; its offset is not committed")
                }
            }
        }
        if !commit {
            warn!(partitions = ?partitions, "assignment lost: nothing committed");
            return;
        }
        if tpl.count() > 0 {
            match consumer.commit(&tpl, CommitMode::Sync) {
                // The commit callback counts it in the metrics.
                Ok(()) => info!(offsets = ?offsets_of(&tpl), "final offsets committed"),
                Err(e) => {
                    error!(error = %e, "final offset commit failed");
                    self.metrics.error(&self.topic, "commit");
                }
            }
        }
    }

    /// Per-partition lag from librdkafka's statistics: the partition's end
    /// (high watermark) minus the reader's position.
    fn lag(&self, stats: &Statistics) {
        let Some(topic) = stats.topics.get(&self.topic) else {
            return;
        };
        for (p, a) in self.lock().iter() {
            let Some(part) = topic.partitions.get(p) else {
                continue;
            };
            let position = a.shared.position.load(std::sync::atomic::Ordering::Relaxed);
            if part.hi_offset < 0 || position < 0 {
                continue;
            }
            self.metrics
                .kafka_lag
                .get_or_create(&a.label)
                .set((part.hi_offset - position).max(0));
        }
    }
}

fn add_commit(tpl: &mut TopicPartitionList, topic: &str, p: i32, offset: i64, meta: &str) {
    let mut elem = tpl.add_partition(topic, p);
    if let Err(e) = elem.set_offset(Offset::Offset(offset)) {
        warn!(partition = p, error = %e, "cannot set the offset to commit");
    }
    elem.set_metadata(meta);
}

fn offsets_of(tpl: &TopicPartitionList) -> Vec<(i32, Option<i64>)> {
    tpl.elements()
        .iter()
        .map(|e| (e.partition(), e.offset().to_raw()))
        .collect()
}

/// A committed offset's metadata. rdkafka panics on metadata that is not
/// UTF-8 (another tool may have committed anything): read it as none then.
fn metadata_of(elem: &rdkafka::topic_partition_list::TopicPartitionListElem<'_>) -> String {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| elem.metadata().to_owned()))
        .unwrap_or_default()
}

fn partitions_of(tpl: &TopicPartitionList) -> Vec<i32> {
    tpl.elements().iter().map(|e| e.partition()).collect()
}

/// librdkafka's client context: logs into tracing, lag from statistics,
/// and the rebalance callbacks (run on the poll thread).
pub(super) struct GroupContext(pub(super) Arc<Group>);

impl ClientContext for GroupContext {
    fn log(&self, level: RDKafkaLogLevel, fac: &str, message: &str) {
        match level {
            RDKafkaLogLevel::Emerg
            | RDKafkaLogLevel::Alert
            | RDKafkaLogLevel::Critical
            | RDKafkaLogLevel::Error => error!(facility = fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Warning => warn!(facility = fac, "librdkafka: {message}"),
            RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
                info!(facility = fac, "librdkafka: {message}")
            }
            RDKafkaLogLevel::Debug => debug!(facility = fac, "librdkafka: {message}"),
        }
    }

    fn stats(&self, statistics: Statistics) {
        self.0.lag(&statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        warn!(error = %error, reason, "Kafka client error");
    }
}

impl ConsumerContext for GroupContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let partitions = partitions_of(tpl);
                info!(partitions = ?partitions, "partitions revoked");
                self.0
                    .revoke(consumer, &partitions, !consumer.assignment_lost());
            }
            Rebalance::Assign(_) => {}
            Rebalance::Error(e) => warn!(error = %e, "rebalance error"),
        }
    }

    fn post_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(tpl) = rebalance {
            let partitions: Vec<i32> = tpl
                .elements()
                .iter()
                .filter(|e| e.topic() == self.0.topic)
                .map(|e| e.partition())
                .collect();
            self.0.assign(consumer, &partitions);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        match result {
            Ok(()) => {
                for e in offsets.elements() {
                    self.0
                        .metrics
                        .checkpoints
                        .get_or_create(&ReaderLabel::new(format!(
                            "{}/{}",
                            e.topic(),
                            e.partition()
                        )))
                        .inc();
                }
                debug!(offsets = ?offsets_of(offsets), "offsets committed");
            }
            Err(e) => {
                warn!(error = %e, "offset commit failed; the next one carries it");
                self.0.metrics.error(&self.0.topic, "commit");
            }
        }
    }
}
