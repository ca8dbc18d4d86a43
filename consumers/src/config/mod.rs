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
use sshwarden_pipeline::rules::{Condition, Dimension, PolicyName};
use sshwarden_pipeline::window::{SubjectKind, WindowConfig};
use sshwarden_pipeline::EngineConfig;

mod blocks;
mod fleet;
mod sink;
mod source;

pub use blocks::{AclScope, BlockPorts, BlockSettings, DEFAULT_BLOCKS_TABLE};
pub use fleet::FleetSettings;
pub use sink::{BlastRadiusScope, SinkKind, SinkSettings};
use source::{resolve_kafka, resolve_kinesis};
pub use source::{
    KafkaArgs, KafkaFormat, KinesisArgs, RunOptions, SourceKind, SourceSettings,
    DEFAULT_METRICS_ADDR,
};

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(default)]
    window: WindowSection,
    /// `policy = "seed"`, or a `[policy]` table (whose `name` picks the
    /// rule set): read as a value first so that each form gets its own
    /// error message.
    policy: Option<toml::Value>,
    rules: Option<Vec<RuleSection>>,
    #[serde(default)]
    input: InputSection,
    #[serde(default)]
    run: RunOptions,
    /// `[blocks]`: the direct sink runs `block` commands with these settings.
    blocks: Option<BlockSettings>,
    /// `[fleet]`: the fleet stage's tuning (with `--fleet-stream` or `--fleet-topic`).
    fleet: Option<FleetSettings>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct WindowSection {
    size_secs: Option<u64>,
    allowed_lateness_secs: Option<u64>,
    stream_idle_secs: Option<u64>,
    max_instances: Option<usize>,
    max_sources: Option<usize>,
    ipv4_prefix: Option<u8>,
    ipv6_prefix: Option<u8>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicySection {
    name: Option<String>,
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
    /// The rule's window; absent: `[window] size_secs`.
    window_secs: Option<u64>,
    /// "count" (default), "distinct" or "success_after_failures".
    #[serde(default = "default_condition")]
    condition: String,
    /// What a "distinct" rule counts: "users", "instances" or "sources".
    distinct: Option<String>,
    signals: Vec<String>,
    threshold: u32,
    #[serde(default = "default_action")]
    action: String,
}

fn default_condition() -> String {
    "count".into()
}

fn default_subject() -> String {
    "instance".into()
}

/// A rule that names no action only tells people: quarantine and block
/// are asked for by name.
fn default_action() -> String {
    "notify".into()
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct InputSection {
    max_decompressed_bytes: Option<usize>,
    max_connections: Option<usize>,
    max_future_skew_secs: Option<u64>,
}

/// A help text that states its default, `text [default: value]`: the
/// README's configuration reference reads it from there, and `value` is
/// the constant (or `Default`) the code applies, so each default is
/// written once.
pub(crate) fn with_default(text: &str, value: impl std::fmt::Display) -> String {
    format!("{text} [default: {value}]")
}

/// The name of an option's default value, as the command line spells it.
pub(crate) fn enum_default<T: clap::ValueEnum + Default>() -> String {
    T::default()
        .to_possible_value()
        .map(|v| v.get_name().to_owned())
        .unwrap_or_default()
}

/// [`with_default`] for an engine setting: the value is read from the
/// pipeline's `EngineConfig::default()`, where it is written.
fn engine_default<T: std::fmt::Display>(
    text: &str,
    pick: impl FnOnce(&EngineConfig) -> T,
) -> String {
    with_default(text, pick(&EngineConfig::default()))
}

/// Flags shared by every command that runs the pipeline; each also reads
/// its `SSHWARDEN_*` variable.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct ConfigArgs {
    /// TOML configuration file (see sshwarden.example.toml).
    #[arg(long, env = "SSHWARDEN_CONFIG", global = true)]
    pub config: Option<PathBuf>,
    #[arg(long, env = "SSHWARDEN_POLICY", global = true, help = engine_default(
        "The built-in rule set: graduated (block attackers, quarantine on compromise) or seed (the original sample's three quarantining alarms); [[rules]] in the file replace it",
        |c| c.policy.name.as_str(),
    ))]
    pub policy: Option<String>,
    #[arg(long, env = "SSHWARDEN_WINDOW_SECS", global = true, help = engine_default(
        "Window size in seconds of rules that set none (the seed policy's)",
        |c| c.window.size_ms / 1000,
    ))]
    pub window_secs: Option<u64>,
    #[arg(long, env = "SSHWARDEN_ALLOWED_LATENESS_SECS", global = true, help = engine_default(
        "How far behind the newest event time an event may arrive and still count",
        |c| c.window.allowed_lateness_ms / 1000,
    ))]
    pub allowed_lateness_secs: Option<u64>,
    /// Threshold for every rule, replacing each rule's own (for trials and tests).
    #[arg(long, env = "SSHWARDEN_THRESHOLD", global = true)]
    pub threshold: Option<u32>,
    #[arg(long, env = "SSHWARDEN_IPV4_PREFIX", global = true, help = engine_default(
        "Prefix length IPv4 sources are grouped by in source rules",
        |c| c.window.grouping.v4_prefix,
    ))]
    pub ipv4_prefix: Option<u8>,
    #[arg(long, env = "SSHWARDEN_IPV6_PREFIX", global = true, help = engine_default(
        "Prefix length IPv6 sources are grouped by in source rules",
        |c| c.window.grouping.v6_prefix,
    ))]
    pub ipv6_prefix: Option<u8>,
    #[arg(long, env = "SSHWARDEN_COOLDOWN_SECS", global = true, help = engine_default(
        "Seconds after a command during which the same subject gets no other",
        |c| c.policy.cooldown_ms / 1000,
    ))]
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
    #[arg(long, env = "SSHWARDEN_BLAST_RADIUS_MAX", global = true, help = engine_default(
        "At most this many quarantines per blast-radius period; 0 disables the limit",
        |c| c.policy.blast_radius.map_or(0, |b| b.max_quarantines),
    ))]
    pub blast_radius_max: Option<u32>,
    #[arg(long, env = "SSHWARDEN_BLAST_RADIUS_PERIOD_SECS", global = true, help = engine_default(
        "The blast-radius period in seconds",
        |c| c.policy.blast_radius.map_or(0, |b| b.period_ms / 1000),
    ))]
    pub blast_radius_period_secs: Option<u64>,
    #[arg(long, env = "SSHWARDEN_MAX_SOURCES", global = true, help = engine_default(
        "Live source addresses kept in windows before the oldest is evicted",
        |c| c.window.max_sources,
    ))]
    pub max_sources: Option<usize>,
    #[arg(long, env = "SSHWARDEN_MAX_INSTANCES", global = true, help = engine_default(
        "Live instances kept in windows before the oldest is evicted",
        |c| c.window.max_instances,
    ))]
    pub max_instances: Option<usize>,
    #[arg(long, env = "SSHWARDEN_MAX_DECOMPRESSED_BYTES", global = true, help = engine_default(
        "Largest decompressed record accepted, in bytes",
        |c| c.max_decompressed,
    ))]
    pub max_decompressed_bytes: Option<usize>,
}

impl ConfigArgs {
    /// The engine configuration: defaults, then the file, then env and flags.
    pub fn engine_config(&self) -> anyhow::Result<EngineConfig> {
        self.engine_config_from(self.file()?)
    }

    /// The engine configuration and the source's settings, from one read of the file.
    pub fn source_config(
        &self,
        flags: &RunOptions,
    ) -> anyhow::Result<(EngineConfig, SourceSettings)> {
        let mut file = self.file()?;
        let run = flags.clone().or(std::mem::take(&mut file.run));
        let blocks_table = run.blocks_table.clone().filter(|t| !t.is_empty());
        let mut source = match run.source.unwrap_or_default() {
            SourceKind::Kinesis => SourceSettings::Kinesis(resolve_kinesis(run)?),
            SourceKind::Kafka => SourceSettings::Kafka(resolve_kafka(run)?),
        };
        if let Some(mut b) = file.blocks.take() {
            if let Some(t) = blocks_table {
                b.table = t;
            }
            b.validate()?;
            match &mut source {
                SourceSettings::Kinesis(k) => k.sink.blocks = Some(b),
                SourceSettings::Kafka(k) => k.sink.blocks = Some(b),
            }
        }
        match (&mut source, file.fleet.take()) {
            (SourceSettings::Kinesis(k), settings) if k.fleet.is_some() => {
                if let (Some(f), Some(settings)) = (&mut k.fleet, settings) {
                    f.settings = settings;
                }
            }
            (SourceSettings::Kafka(k), settings) if k.fleet.is_some() => {
                if let (Some(f), Some(settings)) = (&mut k.fleet, settings) {
                    f.settings = settings;
                }
            }
            (_, Some(_)) => tracing::warn!(
                "[fleet] is ignored: no --fleet-stream (Kinesis) or --fleet-topic (Kafka), the fleet stage is off"
            ),
            _ => {}
        }
        Ok((self.engine_config_from(file)?, source))
    }

    /// The file's `[blocks]` section, if any (for `sshwarden blocks`).
    pub fn block_settings(&self) -> anyhow::Result<Option<BlockSettings>> {
        Ok(self.file()?.blocks)
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
        let file_rules = file.rules.is_some();
        apply_file(&mut c, file)?;
        self.apply_overrides(&mut c, file_rules)?;
        c.policy.validate().map_err(anyhow::Error::msg)?;
        Ok(c)
    }

    fn apply_overrides(&self, c: &mut EngineConfig, file_rules: bool) -> anyhow::Result<()> {
        if let Some(name) = &self.policy {
            let named = policy_name(name, "--policy")?;
            c.policy.name = named;
            // Explicit [[rules]] in the file still replace the built-in set.
            if !file_rules {
                c.policy.rules = named.rules();
            }
        }
        if let Some(s) = self.window_secs {
            c.window.size_ms = secs_to_ms(s, "--window-secs")?;
        }
        if let Some(s) = self.allowed_lateness_secs {
            c.window.allowed_lateness_ms = secs_to_ms(s, "--allowed-lateness-secs")?;
        }
        if let Some(t) = self.threshold {
            for r in &mut c.policy.rules {
                r.condition.set_threshold(t);
            }
        }
        if let Some(n) = self.ipv4_prefix {
            c.window.grouping.v4_prefix = n;
        }
        if let Some(n) = self.ipv6_prefix {
            c.window.grouping.v6_prefix = n;
        }
        c.window.grouping.validate().map_err(anyhow::Error::msg)?;
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
                // Disabled in the file: the flags start from the engine's
                // default (the one the help texts state, see the tests).
                let Some(base) = c
                    .policy
                    .blast_radius
                    .or(PolicyConfig::default().blast_radius)
                else {
                    bail!("--blast-radius-max: the engine has no default limit to start from");
                };
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
    if let Some(s) = f.window.stream_idle_secs {
        w.stream_idle_ms = secs_to_ms(s, "window.stream_idle_secs")?;
    }
    if let Some(n) = f.window.ipv4_prefix {
        w.grouping.v4_prefix = n;
    }
    if let Some(n) = f.window.ipv6_prefix {
        w.grouping.v6_prefix = n;
    }
    w.grouping.validate().map_err(anyhow::Error::msg)?;
    let section = match f.policy {
        None => PolicySection::default(),
        Some(toml::Value::String(name)) => PolicySection {
            name: Some(name),
            ..PolicySection::default()
        },
        Some(table @ toml::Value::Table(_)) => {
            PolicySection::deserialize(table).context("invalid [policy] section")?
        }
        Some(_) => bail!(
            "policy must be a rule set's name (\"graduated\" or \"seed\") or a [policy] table"
        ),
    };
    let p: &mut PolicyConfig = &mut c.policy;
    if let Some(name) = &section.name {
        let named = policy_name(name, "policy")?;
        p.name = named;
        p.rules = named.rules();
    }
    if let Some(s) = section.cooldown_secs {
        p.cooldown_ms = secs_to_ms(s, "policy.cooldown_secs")?;
    }
    if let Some(list) = section.allow_instances {
        p.allow_instances = list;
    }
    if let Some(list) = section.allow_sources {
        p.allow_sources = parse_cidrs(&list)?;
    }
    if let Some(b) = section.blast_radius {
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
    let Some(action) = Action::parse(&r.action) else {
        bail!(
            "rule {:?}: action {:?} is not \"quarantine\", \"block\" or \"notify\"",
            r.name,
            r.action
        )
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
    let condition = match (r.condition.as_str(), &r.distinct) {
        ("count", None) => Condition::Count {
            signals,
            at_least: r.threshold,
        },
        ("distinct", Some(of)) => Condition::Distinct {
            signals,
            of: Dimension::parse(of).with_context(|| {
                format!(
                    "rule {:?}: distinct {of:?} is not \"users\", \"instances\" or \"sources\"",
                    r.name
                )
            })?,
            at_least: r.threshold,
        },
        ("distinct", None) => bail!(
            "rule {:?}: condition \"distinct\" needs distinct = \"users\", \"instances\" or \"sources\"",
            r.name
        ),
        ("success_after_failures", None) => Condition::SuccessAfterFailures {
            signals,
            failures: r.threshold,
        },
        ("count" | "success_after_failures", Some(_)) => bail!(
            "rule {:?}: distinct is only for condition \"distinct\"",
            r.name
        ),
        (other, _) => bail!(
            "rule {:?}: condition {other:?} is not \"count\", \"distinct\" or \"success_after_failures\"",
            r.name
        ),
    };
    let window_ms = r
        .window_secs
        .map(|s| secs_to_ms(s, &format!("rule {:?}: window_secs", r.name)))
        .transpose()?;
    Ok(Rule {
        name: r.name,
        subject,
        window_ms,
        condition,
        action,
    })
}

fn policy_name(name: &str, what: &str) -> anyhow::Result<PolicyName> {
    PolicyName::parse(name)
        .with_context(|| format!("{what} {name:?} is not \"graduated\" or \"seed\""))
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
        let text = include_str!("../../../sshwarden.example.toml");
        let c = from_toml(text).unwrap();
        assert_eq!(c.policy.rules.len(), 8);
        assert_eq!(c.window.size_ms, 60_000);
    }

    /// `sshwarden.example.toml` says it lists every option with its
    /// default: the values it sets are the ones the code applies without
    /// it (the engine's, and `[run]`'s for either source).
    #[test]
    fn the_example_file_states_the_defaults() {
        let text = include_str!("../../../sshwarden.example.toml");
        let mut example = from_toml(text).unwrap();
        // Its rules are the default ones, then one it marks "Not a default".
        let defaults = EngineConfig::default().policy.rules;
        assert_eq!(
            format!("{:?}", &example.policy.rules[..defaults.len()]),
            format!("{defaults:?}"),
            "the example file's first rules are not the default rules"
        );
        assert_eq!(example.policy.rules.len(), defaults.len() + 1);
        example.policy.rules.truncate(defaults.len());
        assert_eq!(
            format!("{example:?}"),
            format!("{:?}", EngineConfig::default()),
            "the example file's engine settings are not the engine's defaults"
        );
        // Only what has no default is added (stream, brokers, topic).
        let required = "stream = \"s\"\nbrokers = \"b\"\ntopic = \"t\"\n";
        let with_example: FileConfig =
            toml::from_str(&text.replace("[run]\n", &format!("[run]\n{required}"))).unwrap();
        let bare: FileConfig = toml::from_str(&format!("[run]\n{required}")).unwrap();
        assert_eq!(
            format!("{:?}", resolve_kinesis(with_example.run.clone()).unwrap()),
            format!("{:?}", resolve_kinesis(bare.run.clone()).unwrap()),
            "the example file's [run] is not the Kinesis source's defaults"
        );
        assert_eq!(
            format!("{:?}", resolve_kafka(with_example.run).unwrap()),
            format!("{:?}", resolve_kafka(bare.run).unwrap()),
            "the example file's [run] is not the Kafka source's defaults"
        );
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
            "[[rules]]\nname='a'\nsubject='source'\nsignals=['invalid_user']\nthreshold=3\naction='quarantine'"
        )
        .contains("a source is not an instance"));
        assert!(err(
            "[[rules]]\nname='a'\ncondition='distinct'\nsignals=['invalid_user']\nthreshold=3"
        )
        .contains("needs distinct = "));
        assert!(err("[[rules]]\nname='a'\ncondition='distinct'\ndistinct='hosts'\nsignals=['invalid_user']\nthreshold=3")
            .contains("distinct \"hosts\""));
        assert!(err(
            "[[rules]]\nname='a'\ncondition='sometimes'\nsignals=['invalid_user']\nthreshold=3"
        )
        .contains("condition \"sometimes\""));
        assert!(
            err("[[rules]]\nname='a'\nwindow_secs=0\nsignals=['invalid_user']\nthreshold=3")
                .contains("rule \"a\": window")
        );
        assert!(err("policy = 'strict'").contains("\"strict\" is not"));
        assert!(err("[policy]\nname = 'strict'").contains("\"strict\" is not"));
        assert!(
            format!("{:#}", from_toml("[policy]\ncooldown = 1").unwrap_err())
                .contains("unknown field `cooldown`")
        );
        assert!(err("[window]\nipv6_prefix = 3").contains("/3 is not between"));
        assert!(err("[policy]\nallow_sources=['10.0.0.0/33']").contains("not a CIDR"));
        assert!(err("[window]\nsize_secs = 999999999").contains("more than a year"));
    }

    #[test]
    fn the_policy_is_chosen_by_file_env_or_flag_and_explicit_rules_win() {
        let seed = from_toml("policy = 'seed'").unwrap();
        assert_eq!(seed.policy.rules, PolicyName::Seed.rules());
        let table = from_toml("[policy]\nname = 'seed'\ncooldown_secs = 5").unwrap();
        assert_eq!(
            (table.policy.rules.len(), table.policy.cooldown_ms),
            (3, 5_000)
        );
        assert_eq!(
            from_toml("").unwrap().policy.rules,
            PolicyName::Graduated.rules()
        );
        let flag = ConfigArgs {
            policy: Some("seed".into()),
            ..ConfigArgs::default()
        };
        let f: FileConfig = toml::from_str("").unwrap();
        assert_eq!(
            flag.engine_config_from(f).unwrap().policy.rules,
            PolicyName::Seed.rules()
        );
        let f: FileConfig =
            toml::from_str("[[rules]]\nname='mine'\nsignals=['invalid_user']\nthreshold=2")
                .unwrap();
        let c = flag.engine_config_from(f).unwrap();
        assert_eq!(c.policy.rules.len(), 1);
        assert_eq!(
            c.policy.rules[0].action,
            sshwarden_pipeline::command::Action::Notify
        );
        let bad = ConfigArgs {
            policy: Some("lenient".into()),
            ..ConfigArgs::default()
        };
        let f: FileConfig = toml::from_str("").unwrap();
        assert!(format!("{:#}", bad.engine_config_from(f).unwrap_err())
            .contains("--policy \"lenient\""));
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
        args.apply_overrides(&mut c, false).unwrap();
        assert!(c.policy.rules.iter().all(|r| r.condition.threshold() == 2));
        assert_eq!(c.policy.allow_sources.len(), 2);
        assert_eq!(c.policy.blast_radius, None);
    }

    /// The engine's defaults (pipeline's `EngineConfig::default`) are the
    /// ones the flags' help texts, and so the README, state.
    #[test]
    fn help_text_defaults_are_the_engine_defaults() {
        use clap::Args;
        let c = EngineConfig::default();
        let blast = c.policy.blast_radius.unwrap();
        let defaults =
            source::tests::help_defaults(ConfigArgs::augment_args(clap::Command::new("sshwarden")));
        assert!(defaults.len() >= 8, "{defaults:?}");
        for (id, help) in defaults {
            let resolved = match id.as_str() {
                "policy" => {
                    assert_eq!(help, c.policy.name.as_str());
                    continue;
                }
                "window_secs" => c.window.size_ms / 1000,
                "allowed_lateness_secs" => c.window.allowed_lateness_ms / 1000,
                "ipv4_prefix" => i64::from(c.window.grouping.v4_prefix),
                "ipv6_prefix" => i64::from(c.window.grouping.v6_prefix),
                "cooldown_secs" => c.policy.cooldown_ms / 1000,
                "blast_radius_max" => i64::from(blast.max_quarantines),
                "blast_radius_period_secs" => blast.period_ms / 1000,
                "max_sources" => c.window.max_sources as i64,
                "max_instances" => c.window.max_instances as i64,
                "max_decompressed_bytes" => c.max_decompressed as i64,
                other => panic!("--{other} has a [default: {help}] this test does not check"),
            };
            assert_eq!(
                resolved.to_string(),
                help,
                "--{id}: the help text's default is not the engine's"
            );
        }
    }
}
