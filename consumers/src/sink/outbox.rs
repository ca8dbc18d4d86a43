//! A reader's outbox: its commands wait here for the sink while the reader
//! goes on reading and detecting (threat model T7: a sink outage must not
//! stop detection). One delivery task per reader takes them in order and
//! retries each with backoff ([`deliver_until`]); the reader's checkpoint
//! is held before the record of the oldest command not yet delivered
//! ([`Outbox::low_water`]), so a command still waiting when the reader
//! stops (shutdown, lost lease, revoke) is re-emitted by the next owner.
//!
//! Bounded: at [`CAPACITY`] waiting commands the reader waits too (reading
//! stops only then, after that many commands, not at the first). Deduplicated:
//! a command whose id is already waiting is not queued again (the engine
//! re-emits nothing within one owner, but a parent replay and the shard's
//! own records can meet the same window).

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use sshwarden_pipeline::command::Command;
use tokio::sync::{mpsc, Notify};
use tokio_util::sync::CancellationToken;

use super::deliver::deliver_until;
use super::Sink;
use crate::metrics::Metrics;

/// Commands that may wait per reader before the reader waits as well.
pub const CAPACITY: usize = 256;

#[derive(Default)]
struct Waiting {
    /// Engine position of each waiting command's record → how many.
    positions: BTreeMap<u64, usize>,
    /// Window start of each waiting command → how many.
    window_starts: BTreeMap<i64, usize>,
    ids: HashSet<String>,
}

impl Waiting {
    fn remove(&mut self, position: u64, window_start_ms: i64, id: &str) {
        self.ids.remove(id);
        take_one(&mut self.positions, position);
        take_one(&mut self.window_starts, window_start_ms);
    }
}

fn take_one<K: Ord>(counts: &mut BTreeMap<K, usize>, key: K) {
    if let Some(n) = counts.get_mut(&key) {
        *n -= 1;
        if *n == 0 {
            counts.remove(&key);
        }
    }
}

pub struct Outbox {
    tx: mpsc::Sender<(u64, Command)>,
    waiting: Arc<Mutex<Waiting>>,
    emptied: Arc<Notify>,
    metrics: Arc<Metrics>,
    task: tokio::task::JoinHandle<()>,
}

impl Outbox {
    /// Starts the delivery task; it stops when `stop` fires (a command being
    /// retried is abandoned and stays waiting) or the outbox is dropped.
    /// `held_what` names the reader's checkpoint in the retry log line.
    pub fn new(
        sink: Arc<Sink>,
        metrics: Arc<Metrics>,
        held_what: &'static str,
        stop: CancellationToken,
    ) -> Self {
        Self::with_capacity(sink, metrics, held_what, stop, CAPACITY)
    }

    pub fn with_capacity(
        sink: Arc<Sink>,
        metrics: Arc<Metrics>,
        held_what: &'static str,
        stop: CancellationToken,
        capacity: usize,
    ) -> Self {
        let (tx, mut rx) = mpsc::channel::<(u64, Command)>(capacity.max(1));
        let waiting = Arc::new(Mutex::new(Waiting::default()));
        let emptied = Arc::new(Notify::new());
        let task = {
            let (waiting, emptied, metrics) = (waiting.clone(), emptied.clone(), metrics.clone());
            tokio::spawn(async move {
                while let Some((position, c)) = rx.recv().await {
                    if !deliver_until(&sink, &metrics, &c, held_what, stop.cancelled()).await {
                        break;
                    }
                    metrics.commands_pending.dec();
                    if let Ok(mut w) = waiting.lock() {
                        w.remove(position, c.window_start_ms, &c.id);
                        if w.ids.is_empty() {
                            emptied.notify_waiters();
                        }
                    }
                }
            })
        };
        Outbox {
            tx,
            waiting,
            emptied,
            metrics,
            task,
        }
    }

    /// Queues `c`, holding the checkpoint before engine `position` (the
    /// reader passes the earliest record a replay needs to re-derive `c`:
    /// its own, or the start of the windows open when it fired). Waits while the outbox is
    /// full; false when `interrupted` completes first (or the delivery task
    /// has stopped), and the command was not queued.
    pub async fn push(
        &self,
        position: u64,
        c: &Command,
        interrupted: impl std::future::Future<Output = ()>,
    ) -> bool {
        {
            let Ok(mut w) = self.waiting.lock() else {
                return false;
            };
            if !w.ids.insert(c.id.clone()) {
                return true;
            }
            *w.positions.entry(position).or_default() += 1;
            *w.window_starts.entry(c.window_start_ms).or_default() += 1;
        }
        self.metrics.commands_pending.inc();
        let sent = tokio::select! {
            r = self.tx.send((position, c.clone())) => r.is_ok(),
            _ = interrupted => false,
        };
        if !sent {
            // Still counted as waiting: the checkpoint stays before it.
            tracing::debug!(id = %c.id, "outbox: not queued (interrupted)");
        }
        sent
    }

    /// The position a checkpoint must stay before: the engine's low water
    /// or the oldest waiting command's record, whichever is earlier.
    pub fn low_water(&self, engine: Option<u64>) -> Option<u64> {
        let oldest = self
            .waiting
            .lock()
            .ok()
            .and_then(|w| w.positions.keys().next().copied());
        match (engine, oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// The event time a checkpoint may store: the engine's, or the start
    /// of the oldest waiting command's window if earlier. The next owner
    /// treats windows that ended before the stored time as closed; a
    /// command still waiting must find its window open again, or its
    /// replayed events would count as late and the command be lost.
    pub fn event_time(&self, engine: Option<i64>) -> Option<i64> {
        let oldest = self
            .waiting
            .lock()
            .ok()
            .and_then(|w| w.window_starts.keys().next().copied());
        match (engine, oldest) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Commands waiting (queued or being delivered).
    pub fn len(&self) -> usize {
        self.waiting.lock().map_or(0, |w| w.ids.len())
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Waits until every queued command was delivered (true), or until
    /// `interrupted` completes (false): before a shard's end is written.
    pub async fn drain(&self, interrupted: impl std::future::Future<Output = ()>) -> bool {
        let mut interrupted = std::pin::pin!(interrupted);
        loop {
            let notified = self.emptied.notified();
            if self.is_empty() {
                return true;
            }
            if self.task.is_finished() {
                return false;
            }
            tokio::select! {
                _ = notified => {}
                _ = &mut interrupted => return false,
                // The task may stop without emptying (its stop fired).
                _ = tokio::time::sleep(std::time::Duration::from_millis(200)) => {}
            }
        }
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        self.task.abort();
        let left = self.len();
        if left > 0 {
            // Not delivered: the checkpoint was held before them.
            self.metrics.commands_pending.dec_by(left as i64);
            tracing::info!(
                waiting = left,
                "reader stopped with commands not delivered; its checkpoint stays before them"
            );
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    //! The outbox against a Step Functions endpoint where nothing listens
    //! (every delivery fails and is retried) and against the stdout sink
    //! (every delivery succeeds).
    use std::time::Duration;

    use super::*;
    use crate::sink::sfn::SfnSink;
    use crate::sink::stdout::StdoutSink;
    use crate::sink::Target;

    pub(crate) fn command(id: &str) -> Command {
        Command {
            version: 1,
            id: id.into(),
            action: sshwarden_pipeline::command::Action::Quarantine,
            held: false,
            reason: None,
            subject_kind: sshwarden_pipeline::window::SubjectKind::Instance,
            instance_id: Some("i-0123456789abcdef0".into()),
            source: None,
            account: String::new(),
            log_group: String::new(),
            log_stream: String::new(),
            rule: "invalid-user".into(),
            window_start: String::new(),
            window_end: String::new(),
            window_start_ms: 0,
            counts: Default::default(),
            distinct: Default::default(),
            instances: Vec::new(),
            window_secs: 60,
            top_sources: Vec::new(),
            other_source_events: 0,
            sample_lines: Vec::new(),
            detected_at: String::new(),
        }
    }

    async fn dead_sink() -> Arc<Sink> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map(|a| a.port())
            .expect("a free port");
        let sdk = sshwarden_testsupport::sdk_with_attempt_timeout(
            &format!("http://127.0.0.1:{port}"),
            Duration::from_millis(300),
        )
        .await;
        let sfn = SfnSink::new(
            aws_sdk_sfn::Client::new(&sdk),
            "arn:aws:states:us-east-1:123456789012:stateMachine:q".into(),
        );
        Arc::new(Sink::new(Target::Sfn(sfn), None))
    }

    #[tokio::test]
    async fn a_failing_sink_does_not_stop_the_reader_and_holds_the_checkpoint() {
        let metrics = Arc::new(Metrics::default());
        let stop = CancellationToken::new();
        let outbox = Outbox::with_capacity(
            dead_sink().await,
            metrics.clone(),
            "checkpoint",
            stop.clone(),
            2,
        );
        let never = std::future::pending::<()>;
        // Each push returns at once although nothing can be delivered.
        for (position, id) in [(5, "a"), (7, "b"), (7, "a")] {
            let pushed = tokio::time::timeout(
                Duration::from_secs(2),
                outbox.push(position, &command(id), never()),
            )
            .await
            .expect("push waited for the sink");
            assert!(pushed);
        }
        // "a" twice is queued once; the checkpoint stays before record 5.
        assert_eq!(outbox.len(), 2);
        assert_eq!(metrics.commands_pending.get(), 2);
        assert_eq!(outbox.low_water(None), Some(5));
        // The checkpoint's event time stays at the waiting windows' start,
        // so the next owner re-opens them and re-derives the commands.
        let start = command("a").window_start_ms;
        assert_eq!(outbox.event_time(Some(start + 600_000)), Some(start));
        assert_eq!(outbox.event_time(Some(start - 1)), Some(start - 1));
        assert_eq!(outbox.event_time(None), Some(start));
        assert_eq!(outbox.low_water(Some(9)), Some(5));
        assert_eq!(outbox.low_water(Some(3)), Some(3));
        // Deliveries are being retried meanwhile.
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        while metrics.command_failures.get() == 0 {
            assert!(tokio::time::Instant::now() < deadline, "no failed delivery");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Full: only now does the reader wait (here: interrupted).
        let waited = tokio::time::timeout(
            Duration::from_secs(5),
            outbox.push(
                8,
                &command("c"),
                tokio::time::sleep(Duration::from_millis(300)),
            ),
        )
        .await
        .expect("interrupted");
        // "c" took the channel's last slot (one command is in delivery), so
        // a fourth is the one that waits.
        let fourth = if waited {
            outbox
                .push(
                    9,
                    &command("d"),
                    tokio::time::sleep(Duration::from_millis(300)),
                )
                .await
        } else {
            false
        };
        assert!(!fourth, "a full outbox did not make the reader wait");
        assert!(
            !outbox
                .drain(tokio::time::sleep(Duration::from_millis(100)))
                .await
        );
        stop.cancel();
        drop(outbox);
        assert_eq!(metrics.commands_pending.get(), 0);
    }

    #[tokio::test]
    async fn delivered_commands_release_the_checkpoint() {
        let metrics = Arc::new(Metrics::default());
        let sink = Arc::new(Sink::new(Target::Stdout(StdoutSink), None));
        let outbox = Outbox::new(
            sink,
            metrics.clone(),
            "checkpoint",
            CancellationToken::new(),
        );
        for (position, id) in [(1, "x"), (2, "y")] {
            assert!(
                outbox
                    .push(position, &command(id), std::future::pending())
                    .await
            );
        }
        assert!(
            outbox
                .drain(tokio::time::sleep(Duration::from_secs(10)))
                .await
        );
        assert!(outbox.is_empty());
        assert_eq!(outbox.low_water(None), None);
        assert_eq!(outbox.low_water(Some(4)), Some(4));
        assert_eq!(metrics.commands_pending.get(), 0);
    }
}
