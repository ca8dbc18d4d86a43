//! The `kinesis` and `logs` subcommands: generate the fleet, write its truth
//! (`--truth-out`), put its traffic through a writer with progress on stderr,
//! log when each crossing event was written (`--written-log`, for `score`),
//! and print the writer's report.

use std::collections::HashSet;
use std::fs::File;
use std::io::{LineWriter, Write};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use sshwarden_loadgen::encode::{batches, encode_batch};
use sshwarden_loadgen::writer::kinesis::{
    ensure_stream, KinesisItem, KinesisWriter, KinesisWriterConfig,
};
use sshwarden_loadgen::writer::logs::{
    ensure_log_group, ensure_subscription, LogBatch, LogEvent, LogsWriter, LogsWriterConfig,
};
use sshwarden_loadgen::writer::{
    now_unix_ms, spawn_progress, OnWritten, RateTarget, WriteError, WriteReport, WriterStats,
};
use sshwarden_loadgen::{Fleet, GeneratedEvent, RecordOptions, WrittenMark};

use crate::{fleet_config, output, FleetArgs};

#[derive(clap::Args)]
pub struct WriteArgs {
    /// Play the traffic in real time: the fleet starts now and each batch is
    /// put when its last event has happened, as a log agent ships them (for
    /// latency). Without it, everything is put as fast as the limits allow.
    #[arg(long)]
    live: bool,
    /// Event time one agent batch spans at most (the CloudWatch agent's
    /// force_flush_interval is 5 s).
    #[arg(long, default_value_t = 5000)]
    flush_ms: i64,
    /// Events per batch (one Kinesis record, or one log stream's share of a
    /// flush) at most.
    #[arg(long, default_value_t = 100)]
    events_per_batch: usize,
    /// Target rate: records/s (kinesis) or events/s (logs).
    #[arg(long)]
    rate: Option<f64>,
    /// Target rate in MB/s (10^6 bytes).
    #[arg(long)]
    mbps: Option<f64>,
    /// Calls in flight at most.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// A record still failing after this long is an error (never dropped silently).
    #[arg(long, default_value_t = 120.0)]
    give_up_secs: f64,
    /// Write the ground truth here before writing starts.
    #[arg(long)]
    truth_out: Option<PathBuf>,
    /// Log (JSON lines) when each crossing event was written, for `score --written-log`.
    #[arg(long)]
    written_log: Option<PathBuf>,
    /// Seconds between progress lines on stderr (0: none).
    #[arg(long, default_value_t = 1.0)]
    progress_secs: f64,
    /// The final report as JSON.
    #[arg(long)]
    json: bool,
}

#[derive(clap::Args)]
pub struct KinesisArgs {
    /// The stream.
    #[arg(long)]
    stream: String,
    /// Create the stream with this many shards if it does not exist.
    #[arg(long)]
    create_shards: Option<i32>,
    /// Do not hold each shard to 1,000 records/s and 1 MiB/s.
    #[arg(long)]
    ignore_shard_limits: bool,
    #[command(flatten)]
    write: WriteArgs,
}

#[derive(clap::Args)]
pub struct LogsArgs {
    /// The log group (created if absent; log streams too).
    #[arg(long)]
    log_group: String,
    /// Put a subscription filter (every event, ByLogStream) from the group
    /// to this Kinesis stream ARN.
    #[arg(long)]
    create_subscription_to_stream: Option<String>,
    /// The role CloudWatch Logs assumes to write to the stream (AWS requires
    /// one; emulators do not).
    #[arg(long)]
    subscription_role_arn: Option<String>,
    #[arg(long, default_value = "sshwarden")]
    subscription_filter_name: String,
    #[command(flatten)]
    write: WriteArgs,
}

struct Prepared {
    fleet: Fleet,
    crossing: HashSet<String>,
    on_written: Option<OnWritten>,
}

fn prepare(f: &FleetArgs, w: &WriteArgs) -> anyhow::Result<Prepared> {
    anyhow::ensure!(w.flush_ms > 0, "--flush-ms must be positive");
    anyhow::ensure!(
        w.events_per_batch > 0,
        "--events-per-batch must be positive"
    );
    for (name, v) in [("--rate", w.rate), ("--mbps", w.mbps)] {
        anyhow::ensure!(
            v.is_none_or(|v| v > 0.0 && v.is_finite()),
            "{name} must be positive"
        );
    }
    let duration_ms = (f.minutes * 60_000.0) as i64;
    let start = if w.live {
        now_unix_ms()
    } else {
        now_unix_ms() - duration_ms
    };
    let fleet =
        Fleet::generate(&fleet_config(f, Some(start))?).map_err(|e| anyhow::anyhow!("{}", e.0))?;
    if let Some(p) = &w.truth_out {
        // Written whole, then renamed: a scorer waiting for it never reads half.
        let tmp = p.with_extension("partial");
        let mut out =
            File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
        serde_json::to_writer(&mut out, fleet.ground_truth())?;
        out.flush()?;
        std::fs::rename(&tmp, p).with_context(|| format!("cannot write {}", p.display()))?;
    }
    let crossing: HashSet<String> = fleet
        .ground_truth()
        .expected
        .iter()
        .map(|e| e.crossing_event_id.clone())
        .collect();
    let on_written: Option<OnWritten> = match &w.written_log {
        Some(p) => {
            let mut out = LineWriter::new(
                File::create(p).with_context(|| format!("cannot create {}", p.display()))?,
            );
            let f: OnWritten = Arc::new(Mutex::new(move |id: &str, written_us: i64| {
                let mark = WrittenMark {
                    event_id: id.to_owned(),
                    written_us,
                };
                if let Ok(line) = serde_json::to_string(&mark) {
                    if let Err(e) = writeln!(out, "{line}") {
                        eprintln!("sshwarden-loadgen: written log: {e}");
                    }
                }
            }));
            Some(f)
        }
        None => None,
    };
    Ok(Prepared {
        fleet,
        crossing,
        on_written,
    })
}

fn marks(batch: &[&GeneratedEvent], crossing: &HashSet<String>) -> Vec<String> {
    batch
        .iter()
        .filter(|e| crossing.contains(&e.id))
        .map(|e| e.id.clone())
        .collect()
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("tokio runtime")
}

async fn sdk_config() -> aws_config::SdkConfig {
    aws_config::load_defaults(aws_config::BehaviorVersion::latest()).await
}

/// Runs a write with progress lines on stderr every `--progress-secs`.
async fn with_progress(
    what: &'static str,
    stats: Arc<WriterStats>,
    w: &WriteArgs,
    write: impl std::future::Future<Output = Result<WriteReport, WriteError>>,
) -> anyhow::Result<WriteReport> {
    let progress = (w.progress_secs > 0.0)
        .then(|| spawn_progress(what, stats, Duration::from_secs_f64(w.progress_secs)));
    let result = write.await;
    if let Some(h) = progress {
        h.abort();
    }
    result.map_err(anyhow::Error::from)
}

fn finish(f: &FleetArgs, w: &WriteArgs, report: &WriteReport) -> anyhow::Result<()> {
    let mut out = output(f)?;
    if w.json {
        serde_json::to_writer(&mut out, report)?;
    } else {
        write!(out, "{report}")?;
    }
    writeln!(out)?;
    out.flush()?;
    Ok(())
}

pub fn kinesis(f: &FleetArgs, args: &KinesisArgs) -> anyhow::Result<()> {
    let w = &args.write;
    let p = prepare(f, w)?;
    let opts = RecordOptions {
        events_per_record: w.events_per_batch,
        max_span_ms: w.flush_ms,
        ..RecordOptions::default()
    };
    let events = p.fleet.events();
    let items: Vec<KinesisItem> = batches(events, w.events_per_batch, w.flush_ms)
        .iter()
        .map(|b| {
            let batch: Vec<&GeneratedEvent> = b.iter().map(|&i| &events[i]).collect();
            let r = encode_batch(&batch, &opts);
            KinesisItem {
                due_ms: w.live.then_some(r.last_time_ms),
                marks: marks(&batch, &p.crossing),
                partition_key: r.log_stream,
                data: r.data,
            }
        })
        .collect();
    let rt = runtime()?;
    let report = rt.block_on(async {
        let sdk = sdk_config().await;
        // The writer retries itself, so that it counts every throttle.
        let client = aws_sdk_kinesis::Client::from_conf(
            aws_sdk_kinesis::config::Builder::from(&sdk)
                .retry_config(aws_config::retry::RetryConfig::disabled())
                .build(),
        );
        if let Some(n) = args.create_shards {
            ensure_stream(&client, &args.stream, n, Duration::from_secs(120)).await?;
        }
        let mut config = KinesisWriterConfig::new(&args.stream);
        config.rate = RateTarget {
            records_per_sec: w.rate,
            bytes_per_sec: w.mbps.map(|m| m * 1e6),
        };
        config.per_shard_limits = !args.ignore_shard_limits;
        config.concurrency = w.concurrency;
        config.give_up_after = Duration::from_secs_f64(w.give_up_secs.max(1.0));
        let writer = KinesisWriter::new(client, config).await?;
        eprintln!(
            "kinesis: {} records ({} events) to {} ({} open shards){}",
            items.len(),
            events.len(),
            args.stream,
            writer.shards(),
            if w.live { ", live" } else { "" }
        );
        with_progress(
            "kinesis",
            writer.stats(),
            w,
            writer.write(items, p.on_written.clone()),
        )
        .await
    })?;
    finish(f, w, &report)
}

pub fn logs(f: &FleetArgs, args: &LogsArgs) -> anyhow::Result<()> {
    let w = &args.write;
    let p = prepare(f, w)?;
    let events = p.fleet.events();
    let log_batches: Vec<LogBatch> = batches(events, w.events_per_batch, w.flush_ms)
        .iter()
        .map(|b| {
            let last = b.last().map_or(0, |&i| events[i].time_ms);
            LogBatch {
                log_stream: b
                    .first()
                    .map_or_else(String::new, |&i| events[i].instance.clone()),
                events: b
                    .iter()
                    .map(|&i| {
                        let e = &events[i];
                        LogEvent {
                            time_ms: e.time_ms,
                            message: e.line.clone(),
                            mark: p.crossing.contains(&e.id).then(|| e.id.clone()),
                        }
                    })
                    .collect(),
                due_ms: w.live.then_some(last),
            }
        })
        .collect();
    let rt = runtime()?;
    let report = rt.block_on(async {
        let sdk = sdk_config().await;
        let client = aws_sdk_cloudwatchlogs::Client::from_conf(
            aws_sdk_cloudwatchlogs::config::Builder::from(&sdk)
                .retry_config(aws_config::retry::RetryConfig::disabled())
                .build(),
        );
        if let Some(arn) = &args.create_subscription_to_stream {
            ensure_log_group(&client, &args.log_group).await?;
            ensure_subscription(
                &client,
                &args.log_group,
                &args.subscription_filter_name,
                arn,
                args.subscription_role_arn.as_deref(),
            )
            .await?;
        }
        let mut config = LogsWriterConfig::new(&args.log_group);
        config.rate = RateTarget {
            records_per_sec: w.rate,
            bytes_per_sec: w.mbps.map(|m| m * 1e6),
        };
        config.concurrency = w.concurrency;
        config.give_up_after = Duration::from_secs_f64(w.give_up_secs.max(1.0));
        let writer = LogsWriter::new(client, config);
        eprintln!(
            "logs: {} events in {} batches to {}{}",
            events.len(),
            log_batches.len(),
            args.log_group,
            if w.live { ", live" } else { "" }
        );
        with_progress(
            "logs",
            writer.stats(),
            w,
            writer.write(log_batches, p.on_written.clone()),
        )
        .await
    })?;
    finish(f, w, &report)
}
