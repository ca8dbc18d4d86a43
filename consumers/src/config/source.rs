//! `sshwarden run`'s settings: which source it reads (Kinesis or Kafka),
//! that source's settings and the sink's, from the `[run]` section of the
//! file, overridden by `SSHWARDEN_*` variables, overridden by flags.

use std::net::SocketAddr;

use anyhow::Context;
use serde::Deserialize;

use super::sink::{BlastRadiusScope, SinkKind, SinkSettings};

/// `[run]`: the service's settings; flags and `SSHWARDEN_*` win over these.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RunSection {
    pub(super) stream: Option<String>,
    pub(super) lease_table: Option<String>,
    pub(super) worker_id: Option<String>,
    pub(super) sink: Option<SinkKind>,
    pub(super) state_machine_arn: Option<String>,
    pub(super) quarantine_group_id: Option<String>,
    pub(super) topic_arn: Option<String>,
    pub(super) blast_radius_scope: Option<BlastRadiusScope>,
    pub(super) blast_radius_table: Option<String>,
    pub(super) start_position: Option<String>,
    pub(super) enhanced_fan_out: Option<String>,
    pub(super) failover_ms: Option<u64>,
    pub(super) shard_sync_ms: Option<u64>,
    pub(super) checkpoint_ms: Option<u64>,
    pub(super) idle_poll_ms: Option<u64>,
    pub(super) subscription_renew_ms: Option<u64>,
    pub(super) shutdown_secs: Option<u64>,
    pub(super) metrics_addr: Option<SocketAddr>,
    pub(super) source: Option<SourceKind>,
    pub(super) brokers: Option<String>,
    pub(super) topic: Option<String>,
    pub(super) group: Option<String>,
    pub(super) kafka_format: Option<KafkaFormat>,
    pub(super) kafka_options: Option<std::collections::BTreeMap<String, String>>,
}

/// `sshwarden run`'s flags; each also reads its `SSHWARDEN_*` variable and
/// falls back to the `[run]` section of the config file, then the default.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct RunFlags {
    /// The Kinesis stream to consume (required here, in SSHWARDEN_STREAM or in [run]).
    #[arg(long, env = "SSHWARDEN_STREAM")]
    pub stream: Option<String>,
    /// DynamoDB lease table, created if absent (on-demand billing) [default: sshwarden-leases].
    #[arg(long, env = "SSHWARDEN_LEASE_TABLE")]
    pub lease_table: Option<String>,
    /// This worker's id in the lease table [default: host name + random suffix].
    #[arg(long, env = "SSHWARDEN_WORKER_ID")]
    pub worker_id: Option<String>,
    /// Where commands go [default: stdout].
    #[arg(long, env = "SSHWARDEN_SINK", value_enum)]
    pub sink: Option<SinkKind>,
    /// The quarantine state machine (with `--sink sfn`).
    #[arg(long, env = "SSHWARDEN_STATE_MACHINE_ARN")]
    pub state_machine_arn: Option<String>,
    /// The quarantine security group (with `--sink direct`; infra/quarantine-sg.yaml).
    #[arg(long, env = "SSHWARDEN_QUARANTINE_GROUP_ID")]
    pub quarantine_group_id: Option<String>,
    /// The SNS topic for notifications (with `--sink direct`).
    #[arg(long, env = "SSHWARDEN_TOPIC_ARN")]
    pub topic_arn: Option<String>,
    /// Where the blast-radius limit holds: fleet (every worker, counters in DynamoDB; with --sink sfn or direct) or shard [default: fleet].
    #[arg(long, env = "SSHWARDEN_BLAST_RADIUS_SCOPE", value_enum)]
    pub blast_radius_scope: Option<BlastRadiusScope>,
    /// DynamoDB table of the fleet-wide blast-radius counters, created if absent [default: <lease table>-blast-radius].
    #[arg(long, env = "SSHWARDEN_BLAST_RADIUS_TABLE")]
    pub blast_radius_table: Option<String>,
    /// Where a shard without a checkpoint starts: trim-horizon, latest or at-timestamp:RFC3339 [default: trim-horizon].
    #[arg(long, env = "SSHWARDEN_START_POSITION")]
    pub start_position: Option<String>,
    /// Use enhanced fan-out (SubscribeToShard) with this consumer name.
    #[arg(long, env = "SSHWARDEN_ENHANCED_FAN_OUT")]
    pub enhanced_fan_out: Option<String>,
    /// A lease whose counter has not moved for this long is taken over [default: 10000].
    #[arg(long, env = "SSHWARDEN_FAILOVER_MS")]
    pub failover_ms: Option<u64>,
    /// How often the shard list is re-read [default: 30000].
    #[arg(long, env = "SSHWARDEN_SHARD_SYNC_MS")]
    pub shard_sync_ms: Option<u64>,
    /// How often a shard writes its checkpoint [default: 5000].
    #[arg(long, env = "SSHWARDEN_CHECKPOINT_MS")]
    pub checkpoint_ms: Option<u64>,
    /// Pause between GetRecords calls on a caught-up shard [default: 1000].
    #[arg(long, env = "SSHWARDEN_IDLE_POLL_MS")]
    pub idle_poll_ms: Option<u64>,
    /// Advanced: with enhanced fan-out, renew each shard's subscription after this long; Kinesis ends them after 5 minutes [default: 290000].
    #[arg(long, env = "SSHWARDEN_SUBSCRIPTION_RENEW_MS")]
    pub subscription_renew_ms: Option<u64>,
    /// On SIGTERM, drain, checkpoint and release within this many seconds (ECS gives 30) [default: 25].
    #[arg(long, env = "SSHWARDEN_SHUTDOWN_SECS")]
    pub shutdown_secs: Option<u64>,
    /// Address of /metrics, /healthz and /readyz [default: 127.0.0.1:9464].
    #[arg(long, env = "SSHWARDEN_METRICS_ADDR")]
    pub metrics_addr: Option<SocketAddr>,
    /// Where the logs come from; kafka needs a build with `--features kafka` [default: kinesis].
    #[arg(long, env = "SSHWARDEN_SOURCE", value_enum)]
    pub source: Option<SourceKind>,
    /// Kafka bootstrap servers, HOST:PORT[,HOST:PORT...] (with `--source kafka`).
    #[arg(long, env = "SSHWARDEN_BROKERS")]
    pub brokers: Option<String>,
    /// The Kafka topic to consume (with `--source kafka`).
    #[arg(long, env = "SSHWARDEN_TOPIC")]
    pub topic: Option<String>,
    /// The Kafka consumer group; its committed offsets are the checkpoints [default: sshwarden].
    #[arg(long, env = "SSHWARDEN_GROUP")]
    pub group: Option<String>,
    /// What Kafka messages carry: payloads (CloudWatch subscription, gzip or JSON), lines (raw sshd lines, key = instance id) or auto (per message) [default: auto].
    #[arg(long, env = "SSHWARDEN_KAFKA_FORMAT", value_enum)]
    pub kafka_format: Option<KafkaFormat>,
    /// A librdkafka setting, KEY=VALUE (repeatable; e.g. security.protocol=ssl, session.timeout.ms=10000).
    #[arg(
        long = "kafka-option",
        env = "SSHWARDEN_KAFKA_OPTIONS",
        value_delimiter = ','
    )]
    pub kafka_options: Option<Vec<String>>,
}

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
}

/// The source `sshwarden run` reads, with its settings.
#[derive(Debug, Clone)]
pub enum SourceSettings {
    Kinesis(KinesisArgs),
    Kafka(KafkaArgs),
}

/// The Kinesis source's settings (`sshwarden run`, `--source kinesis`),
/// resolved from flags, environment and the `[run]` section of the config
/// file (see [`RunFlags`]).
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
}

/// Where `/metrics`, `/healthz` and `/readyz` listen unless configured.
pub const DEFAULT_METRICS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

pub(super) fn resolve_kinesis(f: &RunFlags, r: RunSection) -> anyhow::Result<KinesisArgs> {
    let lease_table = f
        .lease_table
        .clone()
        .or(r.lease_table.clone())
        .unwrap_or_else(|| "sshwarden-leases".into());
    let sink = resolve_sink(f, &r, &format!("{lease_table}-blast-radius"));
    let stream = f
        .stream
        .clone()
        .or(r.stream)
        .filter(|s| !s.is_empty())
        .context(
            "no stream to consume: give --stream, SSHWARDEN_STREAM or stream in the [run] section",
        )?;
    Ok(KinesisArgs {
        sink,
        stream,
        lease_table,
        worker_id: f.worker_id.clone().or(r.worker_id),
        start_position: f
            .start_position
            .clone()
            .or(r.start_position)
            .unwrap_or_else(|| "trim-horizon".into()),
        enhanced_fan_out: f.enhanced_fan_out.clone().or(r.enhanced_fan_out),
        failover_ms: f.failover_ms.or(r.failover_ms).unwrap_or(10_000),
        shard_sync_ms: f.shard_sync_ms.or(r.shard_sync_ms).unwrap_or(30_000),
        checkpoint_ms: f.checkpoint_ms.or(r.checkpoint_ms).unwrap_or(5_000),
        idle_poll_ms: f.idle_poll_ms.or(r.idle_poll_ms).unwrap_or(1_000),
        subscription_renew_ms: f
            .subscription_renew_ms
            .or(r.subscription_renew_ms)
            .unwrap_or(290_000),
        shutdown_secs: f.shutdown_secs.or(r.shutdown_secs).unwrap_or(25),
        metrics_addr: f
            .metrics_addr
            .or(r.metrics_addr)
            .unwrap_or(DEFAULT_METRICS_ADDR),
    })
}

/// The sink settings shared by both sources; `default_table` names the
/// fleet-wide blast-radius table when none is configured.
fn resolve_sink(f: &RunFlags, r: &RunSection, default_table: &str) -> SinkSettings {
    SinkSettings {
        kind: f.sink.or(r.sink).unwrap_or(SinkKind::Stdout),
        state_machine_arn: f
            .state_machine_arn
            .clone()
            .or_else(|| r.state_machine_arn.clone()),
        quarantine_group_id: f
            .quarantine_group_id
            .clone()
            .or_else(|| r.quarantine_group_id.clone()),
        topic_arn: f.topic_arn.clone().or_else(|| r.topic_arn.clone()),
        blast_radius_scope: f
            .blast_radius_scope
            .or(r.blast_radius_scope)
            .unwrap_or_default(),
        blast_radius_table: f
            .blast_radius_table
            .clone()
            .or_else(|| r.blast_radius_table.clone())
            .unwrap_or_else(|| default_table.to_owned()),
    }
}

pub(super) fn resolve_kafka(f: &RunFlags, r: RunSection) -> anyhow::Result<KafkaArgs> {
    let group = f
        .group
        .clone()
        .or(r.group.clone())
        .filter(|g| !g.is_empty())
        .unwrap_or_else(|| "sshwarden".into());
    let sink = resolve_sink(f, &r, &format!("{group}-blast-radius"));
    let need = |flag: Option<String>, file: Option<String>, what: &str| {
        flag.or(file)
            .filter(|s| !s.trim().is_empty())
            .with_context(|| {
                format!(
                    "--source kafka needs --{what} (SSHWARDEN_{} or {} in the [run] section)",
                    what.to_uppercase(),
                    what
                )
            })
    };
    let mut options: Vec<(String, String)> =
        r.kafka_options.unwrap_or_default().into_iter().collect();
    for kv in f.kafka_options.iter().flatten() {
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
        sink,
        brokers: need(f.brokers.clone(), r.brokers, "brokers")?,
        topic: need(f.topic.clone(), r.topic, "topic")?,
        group,
        format: f.kafka_format.or(r.kafka_format).unwrap_or_default(),
        options,
        worker_id: f.worker_id.clone().or(r.worker_id),
        start_position: f
            .start_position
            .clone()
            .or(r.start_position)
            .unwrap_or_else(|| "trim-horizon".into()),
        checkpoint_ms: f.checkpoint_ms.or(r.checkpoint_ms).unwrap_or(5_000),
        idle_poll_ms: f.idle_poll_ms.or(r.idle_poll_ms).unwrap_or(1_000),
        shutdown_secs: f.shutdown_secs.or(r.shutdown_secs).unwrap_or(25),
        metrics_addr: f
            .metrics_addr
            .or(r.metrics_addr)
            .unwrap_or(DEFAULT_METRICS_ADDR),
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
        let flags = RunFlags {
            failover_ms: Some(4000),
            ..RunFlags::default()
        };
        let r = resolve_kinesis(&flags, file.run).unwrap();
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
        let r = resolve_kinesis(&RunFlags::default(), file.run).unwrap();
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
            resolve_kinesis(&RunFlags::default(), file.run)
                .unwrap()
                .subscription_renew_ms,
            3000
        );
        let err = resolve_kinesis(&RunFlags::default(), RunSection::default()).unwrap_err();
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
        let flags = RunFlags {
            topic: Some("from-flag".into()),
            kafka_options: Some(vec!["fetch.wait.max.ms=50".into()]),
            ..RunFlags::default()
        };
        let k = resolve_kafka(&flags, file.run).unwrap();
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
        let err = resolve_kafka(&RunFlags::default(), RunSection::default()).unwrap_err();
        assert!(
            err.to_string().contains("--source kafka needs --brokers"),
            "{err}"
        );
        let bad = RunFlags {
            brokers: Some("b".into()),
            topic: Some("t".into()),
            kafka_options: Some(vec!["novalue".into()]),
            ..RunFlags::default()
        };
        let err = resolve_kafka(&bad, RunSection::default()).unwrap_err();
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

    /// A default is written twice: in the help text (the reference) and in
    /// the code that resolves it. Changing one without the other fails here.
    #[test]
    fn help_text_defaults_are_the_resolved_defaults() {
        use clap::{Args, ValueEnum};
        let name = |v: Option<clap::builder::PossibleValue>| {
            v.map(|v| v.get_name().to_owned()).unwrap_or_default()
        };
        let section: super::super::FileConfig =
            toml::from_str("[run]\nstream = \"s\"\nbrokers = \"b\"\ntopic = \"t\"").unwrap();
        let k = resolve_kinesis(&RunFlags::default(), section.run).unwrap();
        let section: super::super::FileConfig =
            toml::from_str("[run]\nstream = \"s\"\nbrokers = \"b\"\ntopic = \"t\"").unwrap();
        let kafka = resolve_kafka(&RunFlags::default(), section.run).unwrap();
        let defaults = help_defaults(RunFlags::augment_args(clap::Command::new("run")));
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
