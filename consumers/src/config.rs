//! Configuration: a TOML file (`--config`), overridden by `SSHWARDEN_*`
//! environment variables, overridden by flags (clap reads both). The
//! documented example is `sshwarden.example.toml` at the repository root.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ipnet::IpNet;
use serde::Deserialize;
use sshwarden_pipeline::classify::Signal;
use sshwarden_pipeline::command::Action;
use sshwarden_pipeline::policy::{BlastRadius, PolicyConfig, Rule};
use sshwarden_pipeline::window::{SubjectKind, WindowConfig};
use sshwarden_pipeline::EngineConfig;

use crate::run::RunArgs;
use crate::sink::{BlastRadiusScope, SinkKind, SinkSettings};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    window: WindowSection,
    #[serde(default)]
    policy: PolicySection,
    rules: Option<Vec<RuleSection>>,
    #[serde(default)]
    input: InputSection,
    #[serde(default)]
    run: RunSection,
}

/// `[run]`: the service's settings; flags and `SSHWARDEN_*` win over these.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RunSection {
    stream: Option<String>,
    lease_table: Option<String>,
    worker_id: Option<String>,
    sink: Option<SinkKind>,
    state_machine_arn: Option<String>,
    quarantine_group_id: Option<String>,
    topic_arn: Option<String>,
    blast_radius_scope: Option<BlastRadiusScope>,
    blast_radius_table: Option<String>,
    start_position: Option<String>,
    enhanced_fan_out: Option<String>,
    failover_ms: Option<u64>,
    shard_sync_ms: Option<u64>,
    checkpoint_ms: Option<u64>,
    idle_poll_ms: Option<u64>,
    subscription_renew_ms: Option<u64>,
    shutdown_secs: Option<u64>,
    metrics_addr: Option<SocketAddr>,
    source: Option<Source>,
    brokers: Option<String>,
    topic: Option<String>,
    group: Option<String>,
    kafka_format: Option<KafkaFormat>,
    kafka_options: Option<std::collections::BTreeMap<String, String>>,
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
    /// Where the logs come from [default: kinesis]; kafka needs a build with `--features kafka`.
    #[arg(long, env = "SSHWARDEN_SOURCE", value_enum)]
    pub source: Option<Source>,
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
pub enum Source {
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

/// The service `sshwarden run` starts, with its settings.
#[derive(Debug, Clone)]
pub enum Service {
    Kinesis(RunArgs),
    Kafka(KafkaArgs),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowSection {
    size_secs: Option<u64>,
    allowed_lateness_secs: Option<u64>,
    max_instances: Option<usize>,
    max_sources: Option<usize>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySection {
    cooldown_secs: Option<u64>,
    allow_instances: Option<Vec<String>>,
    allow_sources: Option<Vec<String>>,
    blast_radius: Option<BlastRadiusSection>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct BlastRadiusSection {
    max_quarantines: u32,
    period_secs: u64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleSection {
    name: String,
    #[serde(default = "default_subject")]
    subject: String,
    signals: Vec<String>,
    threshold: u32,
    #[serde(default = "default_action")]
    action: String,
}

fn default_subject() -> String {
    "instance".into()
}

fn default_action() -> String {
    "quarantine".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSection {
    max_decompressed_bytes: Option<usize>,
    max_connections: Option<usize>,
    max_future_skew_secs: Option<u64>,
}

/// Flags shared by every command that runs the pipeline; each also reads
/// its `SSHWARDEN_*` variable.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ConfigArgs {
    /// TOML configuration file (see sshwarden.example.toml).
    #[arg(long, env = "SSHWARDEN_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    /// Tumbling window size in seconds [default: 60].
    #[arg(long, env = "SSHWARDEN_WINDOW_SECS", global = true)]
    pub window_secs: Option<u64>,
    /// How far behind the newest event time an event may arrive and still count [default: 60].
    #[arg(long, env = "SSHWARDEN_ALLOWED_LATENESS_SECS", global = true)]
    pub allowed_lateness_secs: Option<u64>,
    /// Threshold for every rule, replacing each rule's own [default: 5].
    #[arg(long, env = "SSHWARDEN_THRESHOLD", global = true)]
    pub threshold: Option<u32>,
    /// Seconds after a command during which the same subject gets no other [default: 900].
    #[arg(long, env = "SSHWARDEN_COOLDOWN_SECS", global = true)]
    pub cooldown_secs: Option<u64>,
    /// Instance ids that are never remediated (comma-separated).
    #[arg(
        long,
        env = "SSHWARDEN_ALLOW_INSTANCES",
        value_delimiter = ',',
        global = true
    )]
    pub allow_instances: Option<Vec<String>>,
    /// Source CIDRs whose events are never counted (comma-separated).
    #[arg(
        long,
        env = "SSHWARDEN_ALLOW_SOURCES",
        value_delimiter = ',',
        global = true
    )]
    pub allow_sources: Option<Vec<String>>,
    /// At most this many quarantines per blast-radius period; 0 disables the limit [default: 10].
    #[arg(long, env = "SSHWARDEN_BLAST_RADIUS_MAX", global = true)]
    pub blast_radius_max: Option<u32>,
    /// The blast-radius period in seconds [default: 3600].
    #[arg(long, env = "SSHWARDEN_BLAST_RADIUS_PERIOD_SECS", global = true)]
    pub blast_radius_period_secs: Option<u64>,
    /// Live source addresses kept in windows before the oldest is evicted [default: 250000].
    #[arg(long, env = "SSHWARDEN_MAX_SOURCES", global = true)]
    pub max_sources: Option<usize>,
    /// Live instances kept in windows before the oldest is evicted [default: 100000].
    #[arg(long, env = "SSHWARDEN_MAX_INSTANCES", global = true)]
    pub max_instances: Option<usize>,
    /// Largest decompressed record accepted, in bytes [default: 67108864].
    #[arg(long, env = "SSHWARDEN_MAX_DECOMPRESSED_BYTES", global = true)]
    pub max_decompressed_bytes: Option<usize>,
}

impl ConfigArgs {
    /// The engine configuration: defaults, then the file, then env and flags.
    pub fn engine_config(&self) -> anyhow::Result<EngineConfig> {
        self.engine_config_from(self.file()?)
    }

    /// The engine configuration and the service's settings, from one read of the file.
    pub fn run_config(&self, flags: &RunFlags) -> anyhow::Result<(EngineConfig, Service)> {
        let mut file = self.file()?;
        let run = std::mem::take(&mut file.run);
        let service = match flags.source.or(run.source).unwrap_or_default() {
            Source::Kinesis => Service::Kinesis(resolve_run(flags, run)?),
            Source::Kafka => Service::Kafka(resolve_kafka(flags, run)?),
        };
        Ok((self.engine_config_from(file)?, service))
    }

    /// The worker's metrics address for `sshwarden health`: the flag or
    /// `SSHWARDEN_METRICS_ADDR`, else `[run] metrics_addr`, else the default.
    pub fn metrics_addr(&self, flag: Option<SocketAddr>) -> anyhow::Result<SocketAddr> {
        Ok(match flag {
            Some(addr) => addr,
            None => self
                .file()?
                .run
                .metrics_addr
                .unwrap_or(DEFAULT_METRICS_ADDR),
        })
    }

    fn file(&self) -> anyhow::Result<FileConfig> {
        match &self.config {
            Some(path) => read_file(path),
            None => Ok(FileConfig::default()),
        }
    }

    fn engine_config_from(&self, file: FileConfig) -> anyhow::Result<EngineConfig> {
        let mut c = EngineConfig::default();
        apply_file(&mut c, file)?;
        self.apply_overrides(&mut c)?;
        c.policy.validate().map_err(anyhow::Error::msg)?;
        Ok(c)
    }

    fn apply_overrides(&self, c: &mut EngineConfig) -> anyhow::Result<()> {
        if let Some(s) = self.window_secs {
            c.window.size_ms = secs_to_ms(s, "--window-secs")?;
        }
        if let Some(s) = self.allowed_lateness_secs {
            c.window.allowed_lateness_ms = secs_to_ms(s, "--allowed-lateness-secs")?;
        }
        if let Some(t) = self.threshold {
            for r in &mut c.policy.rules {
                r.threshold = t;
            }
        }
        if let Some(s) = self.cooldown_secs {
            c.policy.cooldown_ms = secs_to_ms(s, "--cooldown-secs")?;
        }
        if let Some(list) = &self.allow_instances {
            c.policy.allow_instances = clean_list(list);
        }
        if let Some(list) = &self.allow_sources {
            c.policy.allow_sources = parse_cidrs(&clean_list(list))?;
        }
        match (self.blast_radius_max, self.blast_radius_period_secs) {
            (Some(0), _) => c.policy.blast_radius = None,
            (max, period) if max.is_some() || period.is_some() => {
                let base = c.policy.blast_radius.unwrap_or(BlastRadius {
                    max_quarantines: 10,
                    period_ms: 3_600_000,
                });
                c.policy.blast_radius = Some(BlastRadius {
                    max_quarantines: max.unwrap_or(base.max_quarantines),
                    period_ms: match period {
                        Some(p) => secs_to_ms(p, "--blast-radius-period-secs")?,
                        None => base.period_ms,
                    },
                });
            }
            _ => {}
        }
        if let Some(n) = self.max_sources {
            c.window.max_sources = n;
        }
        if let Some(n) = self.max_instances {
            c.window.max_instances = n;
        }
        if let Some(n) = self.max_decompressed_bytes {
            c.max_decompressed = n;
        }
        Ok(())
    }
}

/// Where `/metrics`, `/healthz` and `/readyz` listen unless configured.
pub const DEFAULT_METRICS_ADDR: SocketAddr =
    SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 9464);

fn resolve_run(f: &RunFlags, r: RunSection) -> anyhow::Result<RunArgs> {
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
    Ok(RunArgs {
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

fn resolve_kafka(f: &RunFlags, r: RunSection) -> anyhow::Result<KafkaArgs> {
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

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("invalid config file {}", path.display()))
}

fn apply_file(c: &mut EngineConfig, f: FileConfig) -> anyhow::Result<()> {
    let w: &mut WindowConfig = &mut c.window;
    if let Some(s) = f.window.size_secs {
        w.size_ms = secs_to_ms(s, "window.size_secs")?;
    }
    if let Some(s) = f.window.allowed_lateness_secs {
        w.allowed_lateness_ms = secs_to_ms(s, "window.allowed_lateness_secs")?;
    }
    if let Some(n) = f.window.max_instances {
        w.max_instances = n;
    }
    if let Some(n) = f.window.max_sources {
        w.max_sources = n;
    }
    let p: &mut PolicyConfig = &mut c.policy;
    if let Some(s) = f.policy.cooldown_secs {
        p.cooldown_ms = secs_to_ms(s, "policy.cooldown_secs")?;
    }
    if let Some(list) = f.policy.allow_instances {
        p.allow_instances = list;
    }
    if let Some(list) = f.policy.allow_sources {
        p.allow_sources = parse_cidrs(&list)?;
    }
    if let Some(b) = f.policy.blast_radius {
        p.blast_radius = (b.max_quarantines > 0)
            .then(|| -> anyhow::Result<BlastRadius> {
                Ok(BlastRadius {
                    max_quarantines: b.max_quarantines,
                    period_ms: secs_to_ms(b.period_secs, "policy.blast_radius.period_secs")?,
                })
            })
            .transpose()?;
    }
    if let Some(rules) = f.rules {
        p.rules = rules.into_iter().map(rule).collect::<anyhow::Result<_>>()?;
    }
    if let Some(n) = f.input.max_decompressed_bytes {
        c.max_decompressed = n;
    }
    if let Some(n) = f.input.max_connections {
        c.max_connections = n;
    }
    if let Some(s) = f.input.max_future_skew_secs {
        c.max_future_skew_ms = secs_to_ms(s, "input.max_future_skew_secs")?;
    }
    Ok(())
}

fn rule(r: RuleSection) -> anyhow::Result<Rule> {
    let subject = match r.subject.as_str() {
        "instance" => SubjectKind::Instance,
        "source" => SubjectKind::Source,
        other => bail!(
            "rule {:?}: subject {other:?} is not \"instance\" or \"source\"",
            r.name
        ),
    };
    let action = match r.action.as_str() {
        "quarantine" => Action::Quarantine,
        "notify" => Action::Notify,
        other => bail!(
            "rule {:?}: action {other:?} is not \"quarantine\" or \"notify\"",
            r.name
        ),
    };
    let signals = r
        .signals
        .iter()
        .map(|s| {
            Signal::parse(s).with_context(|| {
                let known: Vec<_> = Signal::ALL.iter().map(|s| s.as_str()).collect();
                format!(
                    "rule {:?}: unknown signal {s:?} (known: {})",
                    r.name,
                    known.join(", ")
                )
            })
        })
        .collect::<anyhow::Result<_>>()?;
    Ok(Rule {
        name: r.name,
        subject,
        signals,
        threshold: r.threshold,
        action,
    })
}

fn parse_cidrs(list: &[String]) -> anyhow::Result<Vec<IpNet>> {
    list.iter()
        .map(|s| {
            s.parse::<IpNet>()
                .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
                .with_context(|| format!("{s:?} is not a CIDR (like 10.0.0.0/8) or an IP address"))
        })
        .collect()
}

fn clean_list(list: &[String]) -> Vec<String> {
    list.iter()
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .collect()
}

fn secs_to_ms(secs: u64, what: &str) -> anyhow::Result<i64> {
    if secs > 365 * 86_400 {
        bail!("{what} = {secs} is more than a year");
    }
    Ok(secs as i64 * 1000)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_toml(text: &str) -> anyhow::Result<EngineConfig> {
        let f: FileConfig = toml::from_str(text)?;
        let mut c = EngineConfig::default();
        apply_file(&mut c, f)?;
        c.policy.validate().map_err(anyhow::Error::msg)?;
        Ok(c)
    }

    #[test]
    fn the_example_file_parses() {
        let text = include_str!("../../sshwarden.example.toml");
        let c = from_toml(text).unwrap();
        assert_eq!(c.policy.rules.len(), 4);
        assert_eq!(c.window.size_ms, 60_000);
    }

    #[test]
    fn bad_config_is_a_clear_error() {
        let err = |t: &str| format!("{:#}", from_toml(t).unwrap_err());
        assert!(err("[window]\nsize = 5").contains("unknown field `size`"));
        assert!(err("[[rules]]\nname='a'\nsignals=['nope']\nthreshold=1")
            .contains("unknown signal \"nope\""));
        assert!(
            err("[[rules]]\nname='a'\nsignals=['invalid_user']\nthreshold=0")
                .contains("threshold 0")
        );
        assert!(err(
            "[[rules]]\nname='a'\nsubject='source'\nsignals=['invalid_user']\nthreshold=3"
        )
        .contains("use action \"notify\""));
        assert!(err("[policy]\nallow_sources=['10.0.0.0/33']").contains("not a CIDR"));
        assert!(err("[window]\nsize_secs = 999999999").contains("more than a year"));
    }

    #[test]
    fn run_settings_flags_then_file_then_defaults() {
        let file: FileConfig = toml::from_str(
            "[run]\nstream = \"from-file\"\nsink = \"sfn\"\nfailover_ms = 3000\nmetrics_addr = \"127.0.0.1:9999\"",
        )
        .unwrap();
        let flags = RunFlags {
            failover_ms: Some(4000),
            ..RunFlags::default()
        };
        let r = resolve_run(&flags, file.run).unwrap();
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
        let file: FileConfig = toml::from_str(
            "[run]\nstream = \"s\"\nsink = \"direct\"\nquarantine_group_id = \"sg-0123456789abcdef0\"\ntopic_arn = \"arn:aws:sns:us-east-1:123456789012:t\"\nblast_radius_scope = \"shard\"\nblast_radius_table = \"counters\"",
        )
        .unwrap();
        let r = resolve_run(&RunFlags::default(), file.run).unwrap();
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
        let file: FileConfig =
            toml::from_str("[run]\nstream = \"s\"\nsubscription_renew_ms = 3000").unwrap();
        assert_eq!(
            resolve_run(&RunFlags::default(), file.run)
                .unwrap()
                .subscription_renew_ms,
            3000
        );
        let err = resolve_run(&RunFlags::default(), RunSection::default()).unwrap_err();
        assert!(err.to_string().contains("no stream to consume"));
        assert!(toml::from_str::<FileConfig>("[run]\nstreem = \"x\"").is_err());
    }

    #[test]
    fn kafka_settings_flags_then_file_then_defaults() {
        let file: FileConfig = toml::from_str(
            "[run]\nsource = \"kafka\"\nbrokers = \"127.0.0.1:9092\"\ntopic = \"t\"\nkafka_format = \"lines\"\n\
             kafka_options = { \"session.timeout.ms\" = \"6000\" }",
        )
        .unwrap();
        assert_eq!(file.run.source, Some(Source::Kafka));
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

    #[test]
    fn flags_override_the_file() {
        let args = ConfigArgs {
            threshold: Some(2),
            allow_sources: Some(vec!["10.0.0.0/8".into(), " 192.0.2.1 ".into(), "".into()]),
            blast_radius_max: Some(0),
            ..ConfigArgs::default()
        };
        let mut c = EngineConfig::default();
        args.apply_overrides(&mut c).unwrap();
        assert!(c.policy.rules.iter().all(|r| r.threshold == 2));
        assert_eq!(c.policy.allow_sources.len(), 2);
        assert_eq!(c.policy.blast_radius, None);
    }
}
