//! `sshwarden run`'s settings: which source it reads (Kinesis or Kafka),
//! that source's settings and the sink's, from the `[run]` section of the
//! file, overridden by `SSHWARDEN_*` variables, overridden by flags.

use std::net::SocketAddr;

use anyhow::Context;
use serde::Deserialize;

use super::sink::{BlastRadiusScope, SinkKind, SinkSettings};
use super::{enum_default, with_default};

/// `sshwarden run`'s options, one struct for both places they come from:
/// clap reads flags and `SSHWARDEN_*` variables, serde reads the `[run]`
/// section of the file, and [`RunOptions::or`] puts the first over the
/// second. A default is written once, as a constant below (or an enum's
/// `Default`): the help text states it through [`with_default`] (and so the
/// README's configuration reference) and the resolvers apply it.
#[derive(Debug, Default, Clone, clap::Args, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RunOptions {
    /// The Kinesis stream to consume (required here, in SSHWARDEN_STREAM or in [run]).
    #[arg(long, env = "SSHWARDEN_STREAM")]
    pub stream: Option<String>,
    #[arg(long, env = "SSHWARDEN_LEASE_TABLE", help = with_default(
        "DynamoDB lease table, created if absent (on-demand billing)",
        DEFAULT_LEASE_TABLE,
    ))]
    pub lease_table: Option<String>,
    /// This worker's id in the lease table [default: host name + random suffix].
    #[arg(long, env = "SSHWARDEN_WORKER_ID")]
    pub worker_id: Option<String>,
    #[arg(long, env = "SSHWARDEN_SINK", value_enum,
        help = with_default("Where commands go", enum_default::<SinkKind>()))]
    pub sink: Option<SinkKind>,
    /// The quarantine state machine (with `--sink sfn`).
    #[arg(long, env = "SSHWARDEN_STATE_MACHINE_ARN")]
    pub state_machine_arn: Option<String>,
    /// The block state machine (with `--sink sfn` and a `[blocks]` section; infra/statemachines/block.asl.json).
    #[arg(long, env = "SSHWARDEN_BLOCK_STATE_MACHINE_ARN")]
    pub block_state_machine_arn: Option<String>,
    /// The blocks table, over `[blocks] table` of the file (used only with a `[blocks]` section).
    #[arg(long, env = "SSHWARDEN_BLOCKS_TABLE")]
    pub blocks_table: Option<String>,
    /// The quarantine security group (with `--sink direct`; infra/quarantine-sg.yaml).
    #[arg(long, env = "SSHWARDEN_QUARANTINE_GROUP_ID")]
    pub quarantine_group_id: Option<String>,
    /// The SNS topic for notifications (with `--sink direct`; with `[blocks]` and `--sink sfn`, the sweep's `unblocked`).
    #[arg(long, env = "SSHWARDEN_TOPIC_ARN")]
    pub topic_arn: Option<String>,
    #[arg(long, env = "SSHWARDEN_BLAST_RADIUS_SCOPE", value_enum, help = with_default(
        "Where the blast-radius limit holds: fleet (every worker, counters in DynamoDB; with --sink sfn or direct) or shard",
        enum_default::<BlastRadiusScope>(),
    ))]
    pub blast_radius_scope: Option<BlastRadiusScope>,
    #[arg(long, env = "SSHWARDEN_BLAST_RADIUS_TABLE", help = with_default(
        "DynamoDB table of the fleet-wide blast-radius counters, created if absent",
        format_args!("<lease table>{BLAST_RADIUS_TABLE_SUFFIX}"),
    ))]
    pub blast_radius_table: Option<String>,
    #[arg(long, env = "SSHWARDEN_START_POSITION", help = with_default(
        "Where a shard without a checkpoint starts: trim-horizon, latest or at-timestamp:RFC3339",
        DEFAULT_START_POSITION,
    ))]
    pub start_position: Option<String>,
    /// Use enhanced fan-out (SubscribeToShard) with this consumer name.
    #[arg(long, env = "SSHWARDEN_ENHANCED_FAN_OUT")]
    pub enhanced_fan_out: Option<String>,
    /// The fleet stage's stream (Kinesis): each worker sends its shards' partials there, keyed by source network, and reads it to merge them fleet-wide (docs/fleet.md). Unset: no fleet stage.
    #[arg(long, env = "SSHWARDEN_FLEET_STREAM")]
    pub fleet_stream: Option<String>,
    #[arg(long, env = "SSHWARDEN_FLEET_LEASE_TABLE", help = with_default(
        "DynamoDB lease table of the fleet stage's readers, created if absent",
        format_args!("<lease table>{FLEET_LEASE_TABLE_SUFFIX}"),
    ))]
    pub fleet_lease_table: Option<String>,
    #[arg(long, env = "SSHWARDEN_FAILOVER_MS", help = with_default(
        "A lease whose counter has not moved for this long is taken over",
        DEFAULT_FAILOVER_MS,
    ))]
    pub failover_ms: Option<u64>,
    #[arg(long, env = "SSHWARDEN_SHARD_SYNC_MS",
        help = with_default("How often the shard list is re-read", DEFAULT_SHARD_SYNC_MS))]
    pub shard_sync_ms: Option<u64>,
    #[arg(long, env = "SSHWARDEN_CHECKPOINT_MS",
        help = with_default("How often a shard writes its checkpoint", DEFAULT_CHECKPOINT_MS))]
    pub checkpoint_ms: Option<u64>,
    #[arg(long, env = "SSHWARDEN_IDLE_POLL_MS", help = with_default(
        "Pause between GetRecords calls on a caught-up shard",
        DEFAULT_IDLE_POLL_MS,
    ))]
    pub idle_poll_ms: Option<u64>,
    #[arg(long, env = "SSHWARDEN_SUBSCRIPTION_RENEW_MS", help = with_default(
        "Advanced: with enhanced fan-out, renew each shard's subscription after this long; Kinesis ends them after 5 minutes",
        DEFAULT_SUBSCRIPTION_RENEW_MS,
    ))]
    pub subscription_renew_ms: Option<u64>,
    #[arg(long, env = "SSHWARDEN_SHUTDOWN_SECS", help = with_default(
        "On SIGTERM, drain, checkpoint and release within this many seconds (ECS gives 30)",
        DEFAULT_SHUTDOWN_SECS,
    ))]
    pub shutdown_secs: Option<u64>,
    #[arg(long, env = "SSHWARDEN_METRICS_ADDR", help = with_default(
        "Address of /metrics, /healthz and /readyz",
        DEFAULT_METRICS_ADDR,
    ))]
    pub metrics_addr: Option<SocketAddr>,
    #[arg(long, env = "SSHWARDEN_SOURCE", value_enum, help = with_default(
        "Where the logs come from; kafka needs a build with `--features kafka`",
        enum_default::<SourceKind>(),
    ))]
    pub source: Option<SourceKind>,
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT...] (with `--source kafka`).
    #[arg(long, env = "SSHWARDEN_BROKERS")]
    pub brokers: Option<String>,
    /// The Kafka topic to consume (with `--source kafka`).
    #[arg(long, env = "SSHWARDEN_TOPIC")]
    pub topic: Option<String>,
    #[arg(long, env = "SSHWARDEN_GROUP", help = with_default(
        "The Kafka consumer group; its committed offsets are the checkpoints",
        DEFAULT_GROUP,
    ))]
    pub group: Option<String>,
    #[arg(long, env = "SSHWARDEN_KAFKA_FORMAT", value_enum, help = with_default(
        "What Kafka messages carry: payloads (CloudWatch subscription, gzip or JSON), lines (raw sshd lines, key = instance id) or auto (per message)",
        enum_default::<KafkaFormat>(),
    ))]
    pub kafka_format: Option<KafkaFormat>,
    /// The fleet stage's topic (with `--source kafka`; must differ from --topic): each worker sends its partitions' partials there, keyed by source network, and reads it to merge them fleet-wide (docs/fleet.md). Unset: no fleet stage.
    #[arg(long, env = "SSHWARDEN_FLEET_TOPIC")]
    pub fleet_topic: Option<String>,
    #[arg(long, env = "SSHWARDEN_FLEET_GROUP", help = with_default(
        "The consumer group of the fleet stage's readers (with --fleet-topic)",
        format_args!("<group>{FLEET_GROUP_SUFFIX}"),
    ))]
    pub fleet_group: Option<String>,
    /// A librdkafka setting, KEY=VALUE (repeatable; e.g. security.protocol=ssl, session.timeout.ms=10000).
    #[arg(
        long = "kafka-option",
        env = "SSHWARDEN_KAFKA_OPTIONS",
        value_delimiter = ','
    )]
    #[serde(skip)]
    pub kafka_options: Option<Vec<String>>,
    /// The file's form of `--kafka-option`: `[run] kafka_options`, a table
    /// of librdkafka settings (applied before the flags', so those win).
    #[arg(skip)]
    #[serde(rename = "kafka_options")]
    pub kafka_option_table: Option<std::collections::BTreeMap<String, String>>,
}

impl RunOptions {
    /// Each option from `self` (flags, environment), else from `lower`
    /// (the file). The struct literal names every field, so an option
    /// added without its layering does not compile.
    pub fn or(self, lower: RunOptions) -> RunOptions {
        macro_rules! over {
            ($($field:ident),* $(,)?) => {
                RunOptions { $($field: self.$field.or(lower.$field)),* }
            };
        }
        over!(
            stream,
            lease_table,
            worker_id,
            sink,
            state_machine_arn,
            block_state_machine_arn,
            blocks_table,
            quarantine_group_id,
            topic_arn,
            blast_radius_scope,
            blast_radius_table,
            start_position,
            enhanced_fan_out,
            fleet_stream,
            fleet_lease_table,
            fleet_topic,
            fleet_group,
            failover_ms,
            shard_sync_ms,
            checkpoint_ms,
            idle_poll_ms,
            subscription_renew_ms,
            shutdown_secs,
            metrics_addr,
            source,
            brokers,
            topic,
            group,
            kafka_format,
            kafka_options,
            kafka_option_table,
        )
    }
}

/// `--lease-table`'s default.
pub const DEFAULT_LEASE_TABLE: &str = "sshwarden-leases";
/// The fleet-wide blast-radius table, unless configured, is the lease table
/// (Kinesis) or the consumer group (Kafka) with this suffix.
pub const BLAST_RADIUS_TABLE_SUFFIX: &str = "-blast-radius";
/// The fleet stage's lease table, unless configured, is the lease table
/// with this suffix.
pub const FLEET_LEASE_TABLE_SUFFIX: &str = "-fleet";
/// The fleet stage's consumer group, unless configured, is the consumer
/// group with this suffix.
pub const FLEET_GROUP_SUFFIX: &str = "-fleet";
/// `--start-position`'s default (for both sources).
pub const DEFAULT_START_POSITION: &str = "trim-horizon";
/// `--failover-ms`'s default.
pub const DEFAULT_FAILOVER_MS: u64 = 10_000;
/// `--shard-sync-ms`'s default.
pub const DEFAULT_SHARD_SYNC_MS: u64 = 30_000;
/// `--checkpoint-ms`'s default (for both sources).
pub const DEFAULT_CHECKPOINT_MS: u64 = 5_000;
/// `--idle-poll-ms`'s default (for both sources).
pub const DEFAULT_IDLE_POLL_MS: u64 = 1_000;
/// `--subscription-renew-ms`'s default: under Kinesis' 5 minutes.
pub const DEFAULT_SUBSCRIPTION_RENEW_MS: u64 = 290_000;
/// `--shutdown-secs`'s default: under the 30 s ECS gives.
pub const DEFAULT_SHUTDOWN_SECS: u64 = 25;
/// Where `/metrics`, `/healthz` and `/readyz` listen unless configured.
pub const DEFAULT_METRICS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);
/// `--group`'s default.
pub const DEFAULT_GROUP: &str = "sshwarden";

/// Where `sshwarden run` reads logs from.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A Kinesis stream with shard leases in DynamoDB.
    #[default]
    Kinesis,
    /// A Kafka (or MSK) topic read by a consumer group.
    Kafka,
}

/// What a Kafka message holds.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KafkaFormat {
    /// Decided per message: gzip or a JSON object is a subscription payload, anything else lines.
    #[default]
    Auto,
    /// CloudWatch Logs subscription payloads (gzip JSON, as delivered to Kinesis).
    Payloads,
    /// Raw log lines (one or more per message, newline-separated); the key is the instance id.
    Lines,
}

/// The Kafka source's settings (`sshwarden run --source kafka`). Resolved
/// in every build, so that a build without the source says so clearly.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "kafka"), allow(dead_code))]
pub struct KafkaArgs {
    pub brokers: String,
    pub topic: String,
    pub group: String,
    pub format: KafkaFormat,
    /// librdkafka settings passed through (after sshwarden's own, so they win).
    pub options: Vec<(String, String)>,
    /// The consumer's client.id [default: host name + random suffix].
    pub worker_id: Option<String>,
    /// Where commands go, and the fleet-wide blast-radius gate in front of them.
    pub sink: SinkSettings,
    /// Where a partition without a committed offset starts: trim-horizon (earliest) or latest.
    pub start_position: String,
    /// How often committed offsets move (each partition: the checkpoint rule's offset).
    pub checkpoint_ms: u64,
    /// A caught-up partition with nothing new for this long lets windows close on processing time.
    pub idle_poll_ms: u64,
    pub shutdown_secs: u64,
    pub metrics_addr: SocketAddr,
    /// The fleet stage, when configured.
    pub fleet: Option<FleetTopicArgs>,
}

/// Where the fleet stage's partials go on Kafka and which consumer group
/// reads them.
#[derive(Debug, Clone)]
#[cfg_attr(not(feature = "kafka"), allow(dead_code))]
pub struct FleetTopicArgs {
    pub topic: String,
    pub group: String,
    /// The file's `[fleet]` (its defaults without one).
    pub settings: super::FleetSettings,
}

/// The source `sshwarden run` reads, with its settings.
#[derive(Debug, Clone)]
pub enum SourceSettings {
    Kinesis(KinesisArgs),
    Kafka(KafkaArgs),
}

/// The Kinesis source's settings (`sshwarden run`, `--source kinesis`),
/// resolved from flags, environment and the `[run]` section of the config
/// file (see [`RunOptions`]).
#[derive(Debug, Clone)]
pub struct KinesisArgs {
    /// The Kinesis stream to consume.
    pub stream: String,
    /// DynamoDB lease table (created if absent, on-demand billing).
    pub lease_table: String,
    /// This worker's id in the lease table [default: host name + random suffix].
    pub worker_id: Option<String>,
    /// Where commands go, and the fleet-wide blast-radius gate in front of them.
    pub sink: SinkSettings,
    /// Where a shard without a checkpoint starts: trim-horizon, latest, or at-timestamp:RFC3339.
    pub start_position: String,
    /// Use enhanced fan-out (SubscribeToShard) with this consumer name.
    pub enhanced_fan_out: Option<String>,
    /// A lease whose counter has not moved for this long is taken over.
    pub failover_ms: u64,
    /// How often the shard list is re-read.
    pub shard_sync_ms: u64,
    /// How often a shard writes its checkpoint.
    pub checkpoint_ms: u64,
    /// Pause between GetRecords calls on a caught-up shard.
    pub idle_poll_ms: u64,
    /// With enhanced fan-out, each subscription is renewed after this long
    /// (Kinesis ends them after 5 minutes; tests renew every few seconds).
    pub subscription_renew_ms: u64,
    /// On SIGTERM, drain, checkpoint and release within this many seconds (ECS gives 30).
    pub shutdown_secs: u64,
    /// Address of /metrics, /healthz and /readyz.
    pub metrics_addr: SocketAddr,
    /// The fleet stage, when configured.
    pub fleet: Option<FleetStreamArgs>,
}

/// Where the fleet stage's partials go and how its readers share them.
#[derive(Debug, Clone)]
pub struct FleetStreamArgs {
    pub stream: String,
    pub lease_table: String,
    /// The file's `[fleet]` (its defaults without one).
    pub settings: super::FleetSettings,
}

/// The Kinesis source's settings from layered options (see [`RunOptions::or`]).
pub(super) fn resolve_kinesis(o: RunOptions) -> anyhow::Result<KinesisArgs> {
    let lease_table = o
        .lease_table
        .clone()
        .unwrap_or_else(|| DEFAULT_LEASE_TABLE.into());
    let sink = resolve_sink(&o, &lease_table);
    let stream = o.stream.filter(|s| !s.is_empty()).context(
        "no stream to consume: give --stream, SSHWARDEN_STREAM or stream in the [run] section",
    )?;
    if o.fleet_topic.as_ref().is_some_and(|s| !s.is_empty()) {
        anyhow::bail!(
            "--fleet-topic works with --source kafka only: with --source kinesis the fleet stage's partials go to --fleet-stream"
        );
    }
    let fleet = match o.fleet_stream.filter(|s| !s.is_empty()) {
        Some(fleet_stream) => {
            let lease = o
                .fleet_lease_table
                .clone()
                .unwrap_or_else(|| format!("{lease_table}{FLEET_LEASE_TABLE_SUFFIX}"));
            if fleet_stream == stream {
                anyhow::bail!("--fleet-stream must not be the stream of logs ({stream})");
            }
            if lease == lease_table {
                anyhow::bail!("--fleet-lease-table must not be the lease table of the logs' readers ({lease_table})");
            }
            Some(FleetStreamArgs {
                stream: fleet_stream,
                lease_table: lease,
                settings: super::FleetSettings::default(),
            })
        }
        None => None,
    };
    Ok(KinesisArgs {
        fleet,
        sink,
        stream,
        lease_table,
        worker_id: o.worker_id,
        start_position: o
            .start_position
            .unwrap_or_else(|| DEFAULT_START_POSITION.into()),
        enhanced_fan_out: o.enhanced_fan_out,
        failover_ms: o.failover_ms.unwrap_or(DEFAULT_FAILOVER_MS),
        shard_sync_ms: o.shard_sync_ms.unwrap_or(DEFAULT_SHARD_SYNC_MS),
        checkpoint_ms: o.checkpoint_ms.unwrap_or(DEFAULT_CHECKPOINT_MS),
        idle_poll_ms: o.idle_poll_ms.unwrap_or(DEFAULT_IDLE_POLL_MS),
        subscription_renew_ms: o
            .subscription_renew_ms
            .unwrap_or(DEFAULT_SUBSCRIPTION_RENEW_MS),
        shutdown_secs: o.shutdown_secs.unwrap_or(DEFAULT_SHUTDOWN_SECS),
        metrics_addr: o.metrics_addr.unwrap_or(DEFAULT_METRICS_ADDR),
    })
}

/// The sink settings shared by both sources; `table_prefix` (the lease
/// table or the consumer group) names the fleet-wide blast-radius table
/// when none is configured.
fn resolve_sink(o: &RunOptions, table_prefix: &str) -> SinkSettings {
    SinkSettings {
        kind: o.sink.unwrap_or_default(),
        state_machine_arn: o.state_machine_arn.clone(),
        block_state_machine_arn: o.block_state_machine_arn.clone(),
        quarantine_group_id: o.quarantine_group_id.clone(),
        topic_arn: o.topic_arn.clone(),
        blast_radius_scope: o.blast_radius_scope.unwrap_or_default(),
        blast_radius_table: o
            .blast_radius_table
            .clone()
            .unwrap_or_else(|| format!("{table_prefix}{BLAST_RADIUS_TABLE_SUFFIX}")),
        blocks: None,
    }
}

/// The Kafka source's settings from layered options (see [`RunOptions::or`]).
pub(super) fn resolve_kafka(o: RunOptions) -> anyhow::Result<KafkaArgs> {
    let need = |value: Option<String>, what: &str| {
        value.filter(|s| !s.trim().is_empty()).with_context(|| {
            format!(
                "--source kafka needs --{what} (SSHWARDEN_{} or {} in the [run] section)",
                what.to_uppercase(),
                what
            )
        })
    };
    if o.fleet_stream.as_ref().is_some_and(|s| !s.is_empty()) {
        anyhow::bail!(
            "--fleet-stream works with --source kinesis only: with --source kafka the fleet stage's partials go to --fleet-topic"
        );
    }
    let group = o
        .group
        .clone()
        .filter(|g| !g.is_empty())
        .unwrap_or_else(|| DEFAULT_GROUP.into());
    let brokers = need(o.brokers.clone(), "brokers")?;
    let topic = need(o.topic.clone(), "topic")?;
    let fleet = match o.fleet_topic.clone().filter(|s| !s.trim().is_empty()) {
        Some(fleet_topic) => {
            let fleet_group = o
                .fleet_group
                .clone()
                .filter(|g| !g.is_empty())
                .unwrap_or_else(|| format!("{group}{FLEET_GROUP_SUFFIX}"));
            if fleet_topic == topic {
                anyhow::bail!("--fleet-topic must not be the topic of logs ({topic})");
            }
            if fleet_group == group {
                anyhow::bail!(
                    "--fleet-group must not be the consumer group of the logs' readers ({group})"
                );
            }
            Some(FleetTopicArgs {
                topic: fleet_topic,
                group: fleet_group,
                settings: super::FleetSettings::default(),
            })
        }
        None => None,
    };
    let sink = resolve_sink(&o, &group);
    let mut options: Vec<(String, String)> = o
        .kafka_option_table
        .unwrap_or_default()
        .into_iter()
        .collect();
    for kv in o.kafka_options.iter().flatten() {
        let kv = kv.trim();
        if kv.is_empty() {
            continue;
        }
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--kafka-option {kv:?}: expected KEY=VALUE"))?;
        options.push((k.trim().to_owned(), v.trim().to_owned()));
    }
    Ok(KafkaArgs {
        fleet,
        sink,
        brokers,
        topic,
        group,
        format: o.kafka_format.unwrap_or_default(),
        options,
        worker_id: o.worker_id,
        start_position: o
            .start_position
            .unwrap_or_else(|| DEFAULT_START_POSITION.into()),
        checkpoint_ms: o.checkpoint_ms.unwrap_or(DEFAULT_CHECKPOINT_MS),
        idle_poll_ms: o.idle_poll_ms.unwrap_or(DEFAULT_IDLE_POLL_MS),
        shutdown_secs: o.shutdown_secs.unwrap_or(DEFAULT_SHUTDOWN_SECS),
        metrics_addr: o.metrics_addr.unwrap_or(DEFAULT_METRICS_ADDR),
    })
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    #[test]
    fn run_settings_flags_then_file_then_defaults() {
        let file: super::super::FileConfig = toml::from_str(
            "[run]\nstream = \"from-file\"\nsink = \"sfn\"\nfailover_ms = 3000\nmetrics_addr = \"127.0.0.1:9999\"",
        )
        .unwrap();
        let flags = RunOptions {
            failover_ms: Some(4000),
            ..RunOptions::default()
        };
        let r = resolve_kinesis(flags.or(file.run)).unwrap();
        assert_eq!(r.stream, "from-file");
        assert_eq!(r.sink.kind, SinkKind::Sfn);
        assert_eq!(r.failover_ms, 4000, "the flag wins");
        assert_eq!(r.metrics_addr.port(), 9999);
        assert_eq!(r.lease_table, "sshwarden-leases");
        assert_eq!(r.checkpoint_ms, 5000);
        assert_eq!(
            r.sink.blast_radius_scope,
            BlastRadiusScope::Fleet,
            "fleet-wide by default"
        );
        assert_eq!(r.sink.blast_radius_table, "sshwarden-leases-blast-radius");
        let file: super::super::FileConfig = toml::from_str(
            "[run]\nstream = \"s\"\nsink = \"direct\"\nquarantine_group_id = \"sg-0123456789abcdef0\"\ntopic_arn = \"arn:aws:sns:us-east-1:123456789012:t\"\nblast_radius_scope = \"shard\"\nblast_radius_table = \"counters\"",
        )
        .unwrap();
        let r = resolve_kinesis(file.run).unwrap();
        assert_eq!(r.sink.kind, SinkKind::Direct);
        assert_eq!(
            r.sink.quarantine_group_id.as_deref(),
            Some("sg-0123456789abcdef0")
        );
        assert_eq!(
            r.sink.topic_arn.as_deref(),
            Some("arn:aws:sns:us-east-1:123456789012:t")
        );
        assert_eq!(r.sink.blast_radius_scope, BlastRadiusScope::Shard);
        assert_eq!(r.sink.blast_radius_table, "counters");
        assert_eq!(r.subscription_renew_ms, 290_000);
        let file: super::super::FileConfig =
            toml::from_str("[run]\nstream = \"s\"\nsubscription_renew_ms = 3000").unwrap();
        assert_eq!(
            resolve_kinesis(file.run).unwrap().subscription_renew_ms,
            3000
        );
        let err = resolve_kinesis(RunOptions::default()).unwrap_err();
        assert!(err.to_string().contains("no stream to consume"));
        assert!(toml::from_str::<super::super::FileConfig>("[run]\nstreem = \"x\"").is_err());
    }

    #[test]
    fn kafka_settings_flags_then_file_then_defaults() {
        let file: super::super::FileConfig = toml::from_str(
            "[run]\nsource = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\ntopic = \"t\"\nkafka_format = \"lines\"\n\
             kafka_options = { \"session.timeout.ms\" = \"6000\" }",
        )
        .unwrap();
        assert_eq!(file.run.source, Some(SourceKind::Kafka));
        let flags = RunOptions {
            topic: Some("from-flag".into()),
            kafka_options: Some(vec!["fetch.wait.max.ms=50".into()]),
            ..RunOptions::default()
        };
        let k = resolve_kafka(flags.or(file.run)).unwrap();
        assert_eq!(k.topic, "from-flag", "the flag wins");
        assert_eq!(k.brokers, "127.0.0.1:9092");
        assert_eq!(k.group, "sshwarden");
        assert_eq!(k.format, KafkaFormat::Lines);
        assert_eq!(
            k.options,
            vec![
                ("session.timeout.ms".to_owned(), "6000".to_owned()),
                ("fetch.wait.max.ms".to_owned(), "50".to_owned())
            ]
        );
        let err = resolve_kafka(RunOptions::default()).unwrap_err();
        assert!(
            err.to_string().contains("--source kafka needs --brokers"),
            "{err}"
        );
        let bad = RunOptions {
            brokers: Some("b".into()),
            topic: Some("t".into()),
            kafka_options: Some(vec!["novalue".into()]),
            ..RunOptions::default()
        };
        let err = resolve_kafka(bad).unwrap_err();
        assert!(err.to_string().contains("expected KEY=VALUE"), "{err}");
    }

    /// The `[default: X]` of each flag's help text (what the README's
    /// configuration reference shows), by flag id.
    pub(crate) fn help_defaults(command: clap::Command) -> Vec<(String, String)> {
        command
            .get_arguments()
            .filter_map(|a| {
                let help = a.get_help()?.to_string();
                let (_, rest) = help.split_once(" [default: ")?;
                let (value, _) = rest.split_once(']')?;
                Some((a.get_id().to_string(), value.to_owned()))
            })
            .collect()
    }

    #[test]
    fn the_fleet_stream_is_refused_where_it_cannot_work() {
        let run = |text: &str| {
            let section: super::super::FileConfig = toml::from_str(text).unwrap();
            section.run
        };
        let e = resolve_kinesis(run("[run]\nstream = \"s\"\nfleet_stream = \"s\""))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("--fleet-stream must not be the stream of logs"),
            "{e}"
        );
        let e = resolve_kinesis(run(
            "[run]\nstream = \"s\"\nfleet_stream = \"f\"\nlease_table = \"t\"\nfleet_lease_table = \"t\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("--fleet-lease-table"), "{e}");
        let e = resolve_kafka(run(
            "[run]\nbrokers = \"b\"\ntopic = \"t\"\nfleet_stream = \"f\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("--source kinesis only"), "{e}");
        assert!(e.contains("--fleet-topic"), "says what to use instead: {e}");
        let e = resolve_kinesis(run("[run]\nstream = \"s\"\nfleet_topic = \"f\""))
            .unwrap_err()
            .to_string();
        assert!(e.contains("--source kafka only"), "{e}");
        assert!(resolve_kinesis(run("[run]\nstream = \"s\""))
            .unwrap()
            .fleet
            .is_none());
    }

    #[test]
    fn the_fleet_topic_is_named_and_checked_as_the_fleet_stream_is() {
        let run = |text: &str| {
            let section: super::super::FileConfig = toml::from_str(text).unwrap();
            section.run
        };
        let e = resolve_kafka(run(
            "[run]\nbrokers = \"b\"\ntopic = \"t\"\nfleet_topic = \"t\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("--fleet-topic must not be the topic of logs"),
            "{e}"
        );
        let e = resolve_kafka(run(
            "[run]\nbrokers = \"b\"\ntopic = \"t\"\nfleet_topic = \"f\"\ngroup = \"g\"\nfleet_group = \"g\"",
        ))
        .unwrap_err()
        .to_string();
        assert!(e.contains("--fleet-group"), "{e}");
        let k = resolve_kafka(run(
            "[run]\nbrokers = \"b\"\ntopic = \"t\"\nfleet_topic = \"f\"\ngroup = \"g\"",
        ))
        .unwrap();
        let f = k.fleet.expect("the fleet stage is on");
        assert_eq!((f.topic.as_str(), f.group.as_str()), ("f", "g-fleet"));
        assert_eq!(f.settings, super::super::FleetSettings::default());
        let flags = RunOptions {
            fleet_group: Some("from-flag".into()),
            ..RunOptions::default()
        };
        let k = resolve_kafka(flags.or(run(
            "[run]\nbrokers = \"b\"\ntopic = \"t\"\nfleet_topic = \"f\"\nfleet_group = \"from-file\"",
        )))
        .unwrap();
        assert_eq!(k.fleet.unwrap().group, "from-flag", "the flag wins");
        assert!(resolve_kafka(run("[run]\nbrokers = \"b\"\ntopic = \"t\""))
            .unwrap()
            .fleet
            .is_none());
    }

    /// A default is written once, as a constant both the help text (the
    /// reference) and the resolvers use; a resolver that stops using it
    /// (or a help text that stops stating it) fails here.
    #[test]
    fn help_text_defaults_are_the_resolved_defaults() {
        use clap::{Args, ValueEnum};
        let name = |v: Option<clap::builder::PossibleValue>| {
            v.map(|v| v.get_name().to_owned()).unwrap_or_default()
        };
        let section: super::super::FileConfig =
            toml::from_str("[run]\nstream = \"s\"\nbrokers = \"b\"\ntopic = \"t\"").unwrap();
        let k = resolve_kinesis(section.run).unwrap();
        let section: super::super::FileConfig =
            toml::from_str("[run]\nstream = \"s\"\nbrokers = \"b\"\ntopic = \"t\"").unwrap();
        let kafka = resolve_kafka(section.run).unwrap();
        let defaults = help_defaults(RunOptions::augment_args(clap::Command::new("run")));
        assert!(defaults.len() >= 15, "{defaults:?}");
        for (id, help) in defaults {
            let resolved = match id.as_str() {
                // Not a value: says how one is made.
                "worker_id" => continue,
                "lease_table" => k.lease_table.clone(),
                "sink" => name(k.sink.kind.to_possible_value()),
                "blast_radius_scope" => name(k.sink.blast_radius_scope.to_possible_value()),
                "blast_radius_table" => {
                    assert_eq!(kafka.sink.blast_radius_table, "sshwarden-blast-radius");
                    k.sink
                        .blast_radius_table
                        .replace(&k.lease_table, "<lease table>")
                }
                "start_position" => {
                    assert_eq!(kafka.start_position, k.start_position);
                    k.start_position.clone()
                }
                "fleet_lease_table" => {
                    let section: super::super::FileConfig =
                        toml::from_str("[run]\nstream = \"s\"\nfleet_stream = \"f\"").unwrap();
                    let fleet = resolve_kinesis(section.run).unwrap().fleet.unwrap();
                    assert_eq!(fleet.stream, "f");
                    fleet.lease_table.replace(&k.lease_table, "<lease table>")
                }
                "fleet_group" => {
                    let section: super::super::FileConfig = toml::from_str(
                        "[run]\nbrokers = \"b\"\ntopic = \"t\"\nfleet_topic = \"f\"",
                    )
                    .unwrap();
                    let fleet = resolve_kafka(section.run).unwrap().fleet.unwrap();
                    assert_eq!(fleet.topic, "f");
                    fleet.group.replace(&kafka.group, "<group>")
                }
                "failover_ms" => k.failover_ms.to_string(),
                "shard_sync_ms" => k.shard_sync_ms.to_string(),
                "checkpoint_ms" => {
                    assert_eq!(kafka.checkpoint_ms, k.checkpoint_ms);
                    k.checkpoint_ms.to_string()
                }
                "idle_poll_ms" => {
                    assert_eq!(kafka.idle_poll_ms, k.idle_poll_ms);
                    k.idle_poll_ms.to_string()
                }
                "subscription_renew_ms" => k.subscription_renew_ms.to_string(),
                "shutdown_secs" => {
                    assert_eq!(kafka.shutdown_secs, k.shutdown_secs);
                    k.shutdown_secs.to_string()
                }
                "metrics_addr" => {
                    assert_eq!(kafka.metrics_addr, k.metrics_addr);
                    k.metrics_addr.to_string()
                }
                "source" => name(SourceKind::default().to_possible_value()),
                "group" => kafka.group.clone(),
                "kafka_format" => name(kafka.format.to_possible_value()),
                other => panic!("--{other} has a [default: {help}] this test does not check"),
            };
            assert_eq!(
                resolved, help,
                "--{id}: the help text's default is not the code's"
            );
        }
    }
}
