//! The coordinator loop of one Kinesis worker: renew held leases (32 in
//! flight), reap finished readers, sync new shards from ListShards, re-read
//! the lease table, plan (see [`super::plan`]), take and steal leases, start
//! a [`ShardReader`] per lease, and clean up finished parents. On
//! SIGTERM/SIGINT the readers drain and checkpoint, and the leases are
//! released so other workers take them at once.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};
use aws_sdk_kinesis::error::DisplayErrorContext;
use std::sync::Arc;

use sshwarden_loadgen::writer::kinesis::{KinesisWriter, KinesisWriterConfig};
use sshwarden_pipeline::fleet::FleetConfig;
use sshwarden_pipeline::partial::PartialConfig;
use sshwarden_pipeline::EngineConfig;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

use super::checkpoint::Checkpoint;
use super::lease::{Cas, Lease, LeaseTable};
use super::plan;
use super::reader::{Outcome, ReaderConfig, ShardReader};
use crate::config::{KinesisArgs, SinkSettings};
use crate::metrics::Metrics;
use crate::sink::Sink;
use crate::source::stage::StageConfig;
use crate::source::{default_worker_id, Context, Worker};

struct Held {
    lease: Lease,
    lost: CancellationToken,
    task: JoinHandle<Outcome>,
}

/// A Kinesis worker whose settings were checked, before anything starts.
pub struct KinesisWorker {
    args: KinesisArgs,
    engine_config: EngineConfig,
    /// With `--fleet-stream`: the shards' partials and the fleet stage, checked.
    fleet: Option<(PartialConfig, FleetConfig)>,
    start_checkpoint: Checkpoint,
    me: String,
}

impl KinesisWorker {
    /// Checks the settings that no emulator or AWS call is needed to judge,
    /// so a bad setting fails before the service binds a port or a client.
    pub fn prepare(args: KinesisArgs, engine_config: EngineConfig) -> anyhow::Result<Self> {
        let start_checkpoint = Checkpoint::from_start_position(&args.start_position)?;
        if args.failover_ms < 1_000 {
            bail!("--failover-ms must be at least 1000");
        }
        if !(1_000..=300_000).contains(&args.subscription_renew_ms) {
            bail!("--subscription-renew-ms must be between 1000 and 300000 (Kinesis ends a subscription after 5 minutes)");
        }
        let me = args.worker_id.clone().unwrap_or_else(default_worker_id);
        let fleet = match &args.fleet {
            Some(f) => Some(f.settings.configs(
                &engine_config.policy,
                engine_config.window.allowed_lateness_ms,
            )?),
            None => None,
        };
        if fleet
            .as_ref()
            .is_some_and(|(_, f)| f.policy.rules.is_empty())
        {
            tracing::warn!(
                "the {} policy has no fleet rules: the fleet stage runs but sends and fires nothing",
                engine_config.policy.name.as_str()
            );
        }
        Ok(KinesisWorker {
            args,
            engine_config,
            fleet,
            start_checkpoint,
            me,
        })
    }
}

impl Worker for KinesisWorker {
    fn service_needs(&self) -> (&SinkSettings, std::net::SocketAddr, &EngineConfig) {
        (&self.args.sink, self.args.metrics_addr, &self.engine_config)
    }

    /// Serves the stream until SIGTERM/SIGINT: the worker's whole life.
    /// With the fleet stage on, the same worker also serves the stream of
    /// partials, with its own lease table (docs/fleet.md).
    async fn serve(self, context: Context) -> anyhow::Result<()> {
        let KinesisWorker {
            args,
            engine_config,
            fleet: fleet_configs,
            start_checkpoint,
            me,
        } = self;
        let Context {
            sdk,
            sink,
            metrics,
            shutdown,
        } = context;
        let kinesis = aws_sdk_kinesis::Client::new(&sdk);
        let dynamodb = aws_sdk_dynamodb::Client::new(&sdk);
        let table = LeaseTable::new(dynamodb.clone(), args.lease_table.clone());

        table.ensure().await?;
        let consumer_arn = match &args.enhanced_fan_out {
            Some(name) => Some(register_consumer(&kinesis, &args.stream, name).await?),
            None => None,
        };
        let reader = |stream: &str, consumer_arn, label_prefix| ReaderConfig {
            stream: stream.to_owned(),
            me: me.clone(),
            idle_poll: Duration::from_millis(args.idle_poll_ms),
            checkpoint_every: Duration::from_millis(args.checkpoint_ms),
            consumer_arn,
            subscription_renew: Duration::from_millis(args.subscription_renew_ms),
            label_prefix,
        };
        let coordinator =
            |stream: &str, table, stage, partials_to, consumer_arn, counts_leases| Coordinator {
                kinesis: kinesis.clone(),
                table,
                stream: stream.to_owned(),
                reader: reader(
                    stream,
                    consumer_arn,
                    if counts_leases { "" } else { "fleet:" },
                ),
                stage,
                partials_to,
                sink: sink.clone(),
                metrics: metrics.clone(),
                shutdown: shutdown.clone(),
                me: me.clone(),
                start_checkpoint: start_checkpoint.clone(),
                failover_ms: args.failover_ms,
                shard_sync_ms: args.shard_sync_ms,
                shutdown_secs: args.shutdown_secs,
                counts_leases,
            };
        let (Some(fleet), Some((partial_config, fleet_config))) = (&args.fleet, fleet_configs)
        else {
            metrics.set_ready(true);
            info!(worker = %me, stream = %args.stream, table = %table.name(), "worker started");
            return coordinate(coordinator(
                &args.stream,
                table,
                StageConfig::Logs(engine_config),
                None,
                consumer_arn,
                true,
            ))
            .await;
        };
        let fleet_table = LeaseTable::new(dynamodb, fleet.lease_table.clone());
        fleet_table.ensure().await?;
        let writer = KinesisWriter::new(
            kinesis.clone(),
            KinesisWriterConfig::new(fleet.stream.clone()),
        )
        .await
        .with_context(|| format!("the fleet stage's stream {}", fleet.stream))?;
        let logs_config = EngineConfig {
            partials: Some(partial_config),
            ..engine_config
        };
        metrics.set_ready(true);
        info!(worker = %me, stream = %args.stream, table = %table.name(), fleet_stream = %fleet.stream,
            fleet_table = %fleet_table.name(), "worker started, with the fleet stage");
        let logs = coordinate(coordinator(
            &args.stream,
            table,
            StageConfig::Logs(logs_config),
            Some(Arc::new(writer)),
            consumer_arn,
            true,
        ));
        let partials = coordinate(coordinator(
            &fleet.stream,
            fleet_table,
            StageConfig::Fleet(fleet_config),
            None,
            None,
            false,
        ));
        tokio::try_join!(logs, partials).map(|_| ())
    }
}

/// One stream's coordinator: its leases, its readers and what they run.
struct Coordinator {
    kinesis: aws_sdk_kinesis::Client,
    table: LeaseTable,
    stream: String,
    reader: ReaderConfig,
    stage: StageConfig,
    partials_to: Option<Arc<KinesisWriter>>,
    sink: Arc<Sink>,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    me: String,
    start_checkpoint: Checkpoint,
    failover_ms: u64,
    shard_sync_ms: u64,
    shutdown_secs: u64,
    /// The `leases_held` gauge is the stream of logs' (one gauge, one stream).
    counts_leases: bool,
}

/// Serves one stream until shutdown, then drains its readers and releases
/// their leases.
async fn coordinate(c: Coordinator) -> anyhow::Result<()> {
    let (kinesis, table, sink, metrics, shutdown, me) = (
        c.kinesis.clone(),
        c.table.clone(),
        c.sink.clone(),
        c.metrics.clone(),
        c.shutdown.clone(),
        c.me.clone(),
    );
    let failover = Duration::from_millis(c.failover_ms);
    let tick = failover / 3;
    let mut held: HashMap<String, Held> = HashMap::new();
    let mut seen: HashMap<String, (u64, Instant)> = HashMap::new();
    let mut last_sync: Option<Instant> = None;

    while !shutdown.is_cancelled() {
        let round_started = Instant::now();
        // 1. renew what we hold; a failed renewal means someone else has it
        renew_all(&table, &me, &mut held).await;
        // 2. reap readers that finished
        let finished: Vec<String> = held
            .iter()
            .filter(|(_, h)| h.task.is_finished())
            .map(|(k, _)| k.clone())
            .collect();
        for key in finished {
            if let Some(h) = held.remove(&key) {
                let outcome = h.task.await.unwrap_or(Outcome::Stopped);
                info!(shard = %key, ?outcome, "shard released by its reader");
                if outcome == Outcome::Stopped && !shutdown.is_cancelled() {
                    let _ = table.release(&h.lease, &me).await;
                }
            }
        }
        // 3. new shards
        if last_sync.is_none_or(|t| t.elapsed() >= Duration::from_millis(c.shard_sync_ms)) {
            match sync_shards(&kinesis, &table, &c.stream, &c.start_checkpoint).await {
                Ok(n) if n > 0 => info!(created = n, "leases created for new shards"),
                Ok(_) => {}
                Err(e) => warn!(error = %format!("{e:#}"), "shard sync failed"),
            }
            last_sync = Some(Instant::now());
        }
        // 4. plan against the table
        match table.scan().await {
            Ok(leases) => {
                let now = Instant::now();
                let mut expired = HashSet::new();
                seen.retain(|k, _| leases.iter().any(|l| &l.key == k));
                for l in &leases {
                    let entry = seen.entry(l.key.clone()).or_insert((l.counter, now));
                    if entry.0 != l.counter {
                        *entry = (l.counter, now);
                    } else if !held.contains_key(&l.key) && now.duration_since(entry.1) >= failover
                    {
                        // Ours in the table but not held here is a previous
                        // run of this worker id (killed): it expires too.
                        expired.insert(l.key.clone());
                    }
                }
                let views: Vec<_> = leases.iter().map(Lease::view).collect();
                let p = plan::plan(&me, &views, &expired);
                let mut wanted: Vec<String> = p.take.clone();
                wanted.extend(p.steal.clone());
                for key in wanted {
                    if held.contains_key(&key) {
                        continue;
                    }
                    let Some(lease) = leases.iter().find(|l| l.key == key) else {
                        continue;
                    };
                    match table.take(lease, &me).await {
                        Ok(Cas::Done(lease)) => {
                            let stolen = p.steal.as_deref() == Some(key.as_str());
                            info!(shard = %key, from = ?lease_prev_owner(&leases, &key), stolen, "lease taken");
                            let lost = CancellationToken::new();
                            let reader = ShardReader {
                                kinesis: kinesis.clone(),
                                table: table.clone(),
                                sink: sink.clone(),
                                metrics: metrics.clone(),
                                config: c.reader.clone(),
                                stage: c.stage.clone(),
                                partials_to: c.partials_to.clone(),
                                lease: lease.clone(),
                                shutdown: shutdown.clone(),
                                lost: lost.clone(),
                            };
                            let span =
                                tracing::info_span!("shard", shard = %key, stream = %c.stream);
                            let task =
                                tokio::spawn(tracing::Instrument::instrument(reader.read(), span));
                            held.insert(key, Held { lease, lost, task });
                        }
                        Ok(Cas::Lost) => {}
                        Err(e) => {
                            warn!(shard = %key, error = %format!("{e:#}"), "taking lease failed")
                        }
                    }
                }
                for key in p.cleanup {
                    if let Ok(Cas::Done(())) = table.delete_finished(&key).await {
                        info!(shard = %key, "finished parent lease deleted");
                    }
                }
            }
            Err(e) => warn!(error = %format!("{e:#}"), "cannot read the lease table"),
        }
        if c.counts_leases {
            metrics
                .leases_held
                .set(held.values().filter(|h| !h.lost.is_cancelled()).count() as i64);
        }
        let rest = tick.saturating_sub(round_started.elapsed());
        tokio::select! {
            _ = tokio::time::sleep(rest) => {}
            _ = shutdown.cancelled() => {}
        }
    }

    // Drain: readers checkpoint and return; then leases are released.
    metrics.set_ready(false);
    info!(leases = held.len(), "shutting down: draining shard readers");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(c.shutdown_secs);
    for (key, h) in held.drain() {
        let renew_lost = h.lost.clone();
        match tokio::time::timeout_at(deadline, h.task).await {
            Ok(Ok(Outcome::Ended)) => {}
            Ok(Ok(_)) if !renew_lost.is_cancelled() => match table.release(&h.lease, &me).await {
                Ok(_) => info!(shard = %key, "lease released"),
                Err(e) => {
                    warn!(shard = %key, error = %format!("{e:#}"), "lease release failed")
                }
            },
            Ok(_) => {}
            Err(_) => error!(shard = %key, "reader did not stop before the shutdown deadline"),
        }
    }
    Ok(())
}

/// How many lease renewals are in flight at once: a worker holding hundreds
/// of shards renews them all within a small part of the failover time,
/// without a burst of hundreds of requests.
const RENEW_FAN_OUT: usize = 32;

/// Renews every lease whose reader still runs, [`RENEW_FAN_OUT`] at a time.
/// A lease someone else took cancels its reader.
async fn renew_all(table: &LeaseTable, me: &str, held: &mut HashMap<String, Held>) {
    let mut pending = held
        .iter()
        // A lease already lost stays in `held` until its reader returns (a
        // GetRecords call in flight can take seconds on a busy stream);
        // renewing it again would only fail and warn again.
        .filter(|(_, h)| !h.task.is_finished() && !h.lost.is_cancelled())
        .map(|(key, h)| (key.clone(), h.lease.counter))
        .collect::<Vec<_>>()
        .into_iter();
    let mut running = tokio::task::JoinSet::new();
    loop {
        while running.len() < RENEW_FAN_OUT {
            let Some((key, counter)) = pending.next() else {
                break;
            };
            let (table, me) = (table.clone(), me.to_owned());
            running.spawn(async move {
                let r = table.renew(&key, &me, counter).await;
                (key, r)
            });
        }
        let Some(done) = running.join_next().await else {
            return;
        };
        let (key, renewed) = match done {
            Ok(done) => done,
            Err(e) => {
                error!(error = %e, "lease renewal task failed");
                continue;
            }
        };
        let Some(h) = held.get_mut(&key) else {
            continue;
        };
        match renewed {
            Ok(Cas::Done(c)) => h.lease.counter = c,
            Ok(Cas::Lost) => {
                warn!(shard = %key, "lease lost to another worker");
                h.lost.cancel();
            }
            Err(e) => warn!(shard = %key, error = %format!("{e:#}"), "lease renewal failed"),
        }
    }
}

fn lease_prev_owner(leases: &[Lease], key: &str) -> Option<String> {
    leases
        .iter()
        .find(|l| l.key == key)
        .and_then(|l| l.owner.clone())
}

/// Creates leases for shards that have none, unless a descendant already has
/// one (a closed parent whose children are being read must not be re-read).
/// A child of a known shard starts at TRIM_HORIZON so nothing is skipped.
async fn sync_shards(
    kinesis: &aws_sdk_kinesis::Client,
    table: &LeaseTable,
    stream: &str,
    start_checkpoint: &Checkpoint,
) -> anyhow::Result<usize> {
    let mut shards = Vec::new();
    let mut token: Option<String> = None;
    loop {
        let req = match &token {
            Some(t) => kinesis.list_shards().next_token(t),
            None => kinesis.list_shards().stream_name(stream),
        };
        let out = req
            .send()
            .await
            .map_err(crate::aws::aws_error)
            .context("ListShards")?;
        shards.extend(out.shards().iter().cloned());
        match out.next_token() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    let leases = table.scan().await?;
    let has_lease: HashSet<&str> = leases.iter().map(|l| l.key.as_str()).collect();
    let parents_of = |s: &aws_sdk_kinesis::types::Shard| -> Vec<String> {
        s.parent_shard_id()
            .into_iter()
            .chain(s.adjacent_parent_shard_id())
            .map(str::to_owned)
            .collect()
    };
    let known: HashSet<&str> = shards.iter().map(|s| s.shard_id()).collect();
    // descendants with leases, transitively
    let mut covered: HashSet<String> = HashSet::new();
    let mut changed = true;
    while changed {
        changed = false;
        for s in &shards {
            if has_lease.contains(s.shard_id()) || covered.contains(s.shard_id()) {
                for p in parents_of(s) {
                    changed |= covered.insert(p);
                }
            }
        }
    }
    let mut created = 0;
    for s in &shards {
        let id = s.shard_id();
        if has_lease.contains(id) || covered.contains(id) {
            continue;
        }
        let parents: Vec<String> = parents_of(s);
        let checkpoint = if parents
            .iter()
            .any(|p| known.contains(p.as_str()) || has_lease.contains(p.as_str()))
        {
            &Checkpoint::TrimHorizon
        } else {
            start_checkpoint
        };
        if let Cas::Done(()) = table.create(id, &checkpoint.to_string(), &parents).await? {
            created += 1;
        }
    }
    Ok(created)
}

/// Registers (or finds) the enhanced fan-out consumer and waits for ACTIVE.
async fn register_consumer(
    kinesis: &aws_sdk_kinesis::Client,
    stream: &str,
    name: &str,
) -> anyhow::Result<String> {
    let desc = kinesis
        .describe_stream_summary()
        .stream_name(stream)
        .send()
        .await
        .map_err(crate::aws::aws_error)
        .with_context(|| format!("cannot describe stream {stream}"))?;
    let stream_arn = desc
        .stream_description_summary()
        .map(|s| s.stream_arn().to_owned())
        .context("stream has no ARN")?;
    let registered = kinesis
        .register_stream_consumer()
        .stream_arn(&stream_arn)
        .consumer_name(name)
        .send()
        .await;
    if let Err(e) = &registered {
        if !e
            .as_service_error()
            .is_some_and(|e| e.is_resource_in_use_exception())
        {
            return Err(anyhow::anyhow!("{}", DisplayErrorContext(e)))
                .context("RegisterStreamConsumer");
        }
    }
    for _ in 0..120 {
        let d = kinesis
            .describe_stream_consumer()
            .stream_arn(&stream_arn)
            .consumer_name(name)
            .send()
            .await
            .map_err(crate::aws::aws_error)
            .context("DescribeStreamConsumer")?;
        if let Some(c) = d.consumer_description() {
            if c.consumer_status() == &aws_sdk_kinesis::types::ConsumerStatus::Active {
                return Ok(c.consumer_arn().to_owned());
            }
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    bail!("consumer {name} did not become ACTIVE within 60 s")
}
