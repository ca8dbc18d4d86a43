//! Configuration: a TOML file (`--config`), overridden by `SSHWARDEN_*`
//! environment variables, overridden by flags (clap reads both). The
//! documented example is `sshwarden.example.toml` at the repository root.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use ipnet::IpNet;
use serde::Deserialize;
use sshwarden_pipeline::classify::Signal;
use sshwarden_pipeline::policy::{Action, BlastRadius, PolicyConfig, Rule};
use sshwarden_pipeline::window::{SubjectKind, WindowConfig};
use sshwarden_pipeline::EngineConfig;

use crate::run::RunArgs;
use crate::sink::SinkKind;

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
    start_position: Option<String>,
    enhanced_fan_out: Option<String>,
    failover_ms: Option<u64>,
    shard_sync_ms: Option<u64>,
    checkpoint_ms: Option<u64>,
    idle_poll_ms: Option<u64>,
    subscription_renew_ms: Option<u64>,
    shutdown_secs: Option<u64>,
    metrics_addr: Option<SocketAddr>,
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
    pub fn run_config(&self, flags: &RunFlags) -> anyhow::Result<(EngineConfig, RunArgs)> {
        let mut file = self.file()?;
        let run = std::mem::take(&mut file.run);
        Ok((self.engine_config_from(file)?, resolve_run(flags, run)?))
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

fn resolve_run(f: &RunFlags, r: RunSection) -> anyhow::Result<RunArgs> {
    let stream = f
        .stream
        .clone()
        .or(r.stream)
        .filter(|s| !s.is_empty())
        .context(
            "no stream to consume: give --stream, SSHWARDEN_STREAM or stream in the [run] section",
        )?;
    Ok(RunArgs {
        stream,
        lease_table: f
            .lease_table
            .clone()
            .or(r.lease_table)
            .unwrap_or_else(|| "sshwarden-leases".into()),
        worker_id: f.worker_id.clone().or(r.worker_id),
        sink: f.sink.or(r.sink).unwrap_or(SinkKind::Stdout),
        state_machine_arn: f.state_machine_arn.clone().or(r.state_machine_arn),
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
            .unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 9464))),
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
        assert_eq!(r.sink, SinkKind::Sfn);
        assert_eq!(r.failover_ms, 4000, "the flag wins");
        assert_eq!(r.metrics_addr.port(), 9999);
        assert_eq!(r.lease_table, "sshwarden-leases");
        assert_eq!(r.checkpoint_ms, 5000);
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
