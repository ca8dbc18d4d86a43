//! Sinks: where remediation commands go. A sink either delivers a command or
//! says why not; the caller retries with backoff and holds the shard's
//! checkpoint until delivery, so a command is never dropped.
//!
//! [`Sink`] is the target plus the fleet-wide blast-radius gate
//! ([`crate::blast_radius`]): a quarantine that finds its period full is
//! delivered as a held notification instead.

#[cfg(feature = "direct")]
pub mod direct;

use std::io::Write;

use sshwarden_pipeline::command::{Action, Command};
use tracing::warn;

use crate::blast_radius::{Claim, FleetBlastRadius};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SinkKind {
    /// One JSON command per line on stdout (dry run).
    Stdout,
    /// Step Functions StartExecution on the quarantine state machine.
    Sfn,
    /// The quarantine and notify steps through the EC2 and SNS APIs.
    Direct,
}

#[derive(Debug, PartialEq, Eq)]
pub enum Delivered {
    New,
    /// Delivered before (same execution name): a replay.
    AlreadyHandled,
    /// Handled, but it failed in a way retrying cannot fix (the direct sink:
    /// unknown instance, tag limit, access denied); a `failed` notification
    /// went out, as the state machine's failure branch sends one.
    #[cfg_attr(not(feature = "direct"), allow(dead_code))]
    Failed,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DeliveryError(pub String);

pub enum Target {
    Stdout(StdoutSink),
    Sfn(SfnSink),
    #[cfg(feature = "direct")]
    Direct(direct::DirectSink),
}

impl Target {
    async fn deliver(&self, command: &Command) -> Result<Delivered, DeliveryError> {
        match self {
            Target::Stdout(s) => s.deliver(command),
            Target::Sfn(s) => s.deliver(command).await,
            #[cfg(feature = "direct")]
            Target::Direct(s) => s.deliver(command).await,
        }
    }
}

pub struct Sink {
    target: Target,
    fleet_limit: Option<FleetBlastRadius>,
}

impl Sink {
    pub fn new(target: Target, fleet_limit: Option<FleetBlastRadius>) -> Self {
        Sink {
            target,
            fleet_limit,
        }
    }

    /// Claims a fleet-wide slot for a quarantine (a replay finds the slot it
    /// took before), then delivers; past the limit the quarantine goes out as
    /// a held notification. A claim that cannot be made is a delivery error:
    /// the caller retries and holds the checkpoint.
    pub async fn deliver(&self, command: &Command) -> Result<Delivered, DeliveryError> {
        let Some(limit) = &self.fleet_limit else {
            return self.target.deliver(command).await;
        };
        if command.action != Action::Quarantine || command.held {
            return self.target.deliver(command).await;
        }
        let claim = limit
            .claim(&command.id, command.window_start_ms)
            .await
            .map_err(|e| DeliveryError(format!("fleet-wide blast radius: {e:#}")))?;
        match claim {
            Claim::Granted | Claim::AlreadyGranted => self.target.deliver(command).await,
            Claim::OverLimit => {
                warn!(id = %command.id, table = %limit.table(), "fleet-wide blast-radius limit reached; quarantine held");
                self.target.deliver(&held(command)).await
            }
        }
    }
}

/// Delivers `command` with exponential backoff and jitter until the sink
/// takes it (true), or until `interrupted` completes (false: shutdown, a
/// lost lease, a revoked partition). The caller's checkpoint (`held_what`:
/// "checkpoint", "commit") stays where it is meanwhile: nothing is dropped.
pub async fn deliver_until(
    sink: &Sink,
    metrics: &crate::metrics::Metrics,
    command: &Command,
    held_what: &str,
    interrupted: impl std::future::Future<Output = ()>,
) -> bool {
    let mut backoff = crate::run::shard::Backoff::new();
    let mut interrupted = std::pin::pin!(interrupted);
    metrics.commands_pending.inc();
    let delivered = loop {
        match sink.deliver(command).await {
            Ok(d) => {
                let action = serde_json::to_value(command.action)
                    .ok()
                    .and_then(|v| v.as_str().map(str::to_owned))
                    .unwrap_or_default();
                metrics
                    .commands
                    .get_or_create(&crate::metrics::ActionLabel { action })
                    .inc();
                tracing::info!(id = %command.id, rule = %command.rule, already_handled = (d == Delivered::AlreadyHandled), "command delivered");
                break true;
            }
            Err(e) => {
                metrics.command_failures.inc();
                warn!(id = %command.id, error = %e, "command delivery failed; retrying, {held_what} held");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(backoff.next()) => {}
            _ = &mut interrupted => break false,
        }
    };
    metrics.commands_pending.dec();
    delivered
}

/// The quarantine as the policy holds it: a notification a person acts on.
pub fn held(command: &Command) -> Command {
    let mut c = command.clone();
    c.action = Action::Notify;
    c.held = true;
    c.reason = Some("fleet-wide blast-radius limit reached; quarantine held for approval".into());
    c
}

/// Where the blast-radius limit (`--blast-radius-max` per
/// `--blast-radius-period-secs`) is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlastRadiusScope {
    /// Across every worker, in a DynamoDB table of counters per period (and
    /// also by each shard's engine).
    #[default]
    Fleet,
    /// By each shard's engine only.
    Shard,
}

/// The sink settings of `sshwarden run`, whichever source feeds it.
#[derive(Debug, Clone)]
pub struct SinkSettings {
    pub kind: SinkKind,
    /// The quarantine state machine (with `--sink sfn`).
    pub state_machine_arn: Option<String>,
    /// The quarantine security group (with `--sink direct`).
    pub quarantine_group_id: Option<String>,
    /// The SNS topic for notifications (with `--sink direct`).
    pub topic_arn: Option<String>,
    /// Where the blast-radius limit is counted: fleet-wide in DynamoDB or per shard only.
    pub blast_radius_scope: BlastRadiusScope,
    /// DynamoDB table of the fleet-wide counters.
    pub blast_radius_table: String,
}

/// The sink `sshwarden run` delivers to, from its settings: the target, and
/// the fleet-wide gate when the target acts (sfn, direct) and the scope is
/// `fleet`. A dry run (stdout) keeps to the engines' limit: it must not take
/// slots from the workers that act.
pub async fn build(
    settings: &SinkSettings,
    sdk: &aws_config::SdkConfig,
    limit: Option<sshwarden_pipeline::policy::BlastRadius>,
) -> anyhow::Result<Sink> {
    use anyhow::Context;
    let target = match settings.kind {
        SinkKind::Stdout => Target::Stdout(StdoutSink),
        SinkKind::Sfn => {
            let arn = settings
                .state_machine_arn
                .clone()
                .filter(|a| a.starts_with("arn:"))
                .context("--sink sfn needs --state-machine-arn (SSHWARDEN_STATE_MACHINE_ARN) with the quarantine state machine's ARN")?;
            Target::Sfn(SfnSink::new(aws_sdk_sfn::Client::new(sdk), arn))
        }
        SinkKind::Direct => direct_target(
            sdk,
            settings.quarantine_group_id.clone(),
            settings.topic_arn.clone(),
        )?,
    };
    let fleet_limit = match (settings.blast_radius_scope, limit, settings.kind) {
        (BlastRadiusScope::Fleet, Some(b), SinkKind::Sfn | SinkKind::Direct) => {
            let gate = FleetBlastRadius::new(
                aws_sdk_dynamodb::Client::new(sdk),
                settings.blast_radius_table.clone(),
                b.max_quarantines,
                b.period_ms,
            )?;
            gate.ensure().await?;
            tracing::info!(table = %gate.table(), max = b.max_quarantines, period_ms = b.period_ms, "fleet-wide blast-radius limit");
            Some(gate)
        }
        _ => None,
    };
    Ok(Sink::new(target, fleet_limit))
}

/// What `/readyz` probes for this sink: the state machine (sfn), the topic
/// (direct); writing to stdout cannot be probed ahead of a write.
pub fn probe(settings: &SinkSettings, sdk: &aws_config::SdkConfig) -> crate::metrics::SinkProbe {
    use crate::metrics::SinkProbe;
    match (
        settings.kind,
        &settings.state_machine_arn,
        &settings.topic_arn,
    ) {
        (SinkKind::Sfn, Some(arn), _) => SinkProbe::Sfn {
            client: aws_sdk_sfn::Client::new(sdk),
            state_machine_arn: arn.clone(),
        },
        #[cfg(feature = "direct")]
        (SinkKind::Direct, _, Some(topic)) => SinkProbe::Direct {
            client: aws_sdk_sns::Client::new(sdk),
            topic_arn: topic.clone(),
        },
        _ => SinkProbe::Stdout,
    }
}

#[cfg(feature = "direct")]
fn direct_target(
    sdk: &aws_config::SdkConfig,
    group: Option<String>,
    topic: Option<String>,
) -> anyhow::Result<Target> {
    use anyhow::Context;
    let group = group.context(
        "--sink direct needs --quarantine-group-id (SSHWARDEN_QUARANTINE_GROUP_ID) with the quarantine security group",
    )?;
    let topic = topic.context(
        "--sink direct needs --topic-arn (SSHWARDEN_TOPIC_ARN) with the SNS topic for notifications",
    )?;
    Ok(Target::Direct(direct::DirectSink::new(sdk, group, topic)?))
}

#[cfg(not(feature = "direct"))]
fn direct_target(
    _sdk: &aws_config::SdkConfig,
    _group: Option<String>,
    _topic: Option<String>,
) -> anyhow::Result<Target> {
    anyhow::bail!(
        "this sshwarden was built without the direct sink: rebuild with `cargo build --release --features direct` (or use --sink sfn)"
    )
}

/// Starts the quarantine state machine with the command as input. The
/// execution name is the command id, so a replayed command finds its
/// execution: Standard workflows return the running execution for the same
/// name and input, or `ExecutionAlreadyExists`; both mean "already handled".
///
/// The first case is a success response like a new start, told apart only by
/// its `startDate`: that of the execution started earlier. A start date more
/// than [`EARLIER_START_MS`] before this request was sent marks a replay.
pub struct SfnSink {
    client: aws_sdk_sfn::Client,
    state_machine_arn: String,
}

impl SfnSink {
    pub fn new(client: aws_sdk_sfn::Client, state_machine_arn: String) -> Self {
        SfnSink {
            client,
            state_machine_arn,
        }
    }

    async fn deliver(&self, command: &Command) -> Result<Delivered, DeliveryError> {
        let input = serde_json::to_string(command).map_err(|e| DeliveryError(e.to_string()))?;
        let sent_ms = unix_ms(std::time::SystemTime::now());
        match self
            .client
            .start_execution()
            .state_machine_arn(&self.state_machine_arn)
            .name(command.execution_name())
            .input(input)
            .send()
            .await
        {
            Ok(out) => Ok(match out.start_date().to_millis() {
                Ok(started_ms) if started_earlier(started_ms, sent_ms) => Delivered::AlreadyHandled,
                _ => Delivered::New,
            }),
            Err(e)
                if e.as_service_error()
                    .is_some_and(|e| e.is_execution_already_exists()) =>
            {
                Ok(Delivered::AlreadyHandled)
            }
            // Throttling and 5xx are retried by the SDK first, then by the
            // caller with backoff; anything else (a wrong ARN, missing
            // permissions) is retried too and shows in logs and metrics: a
            // command is held, never dropped.
            Err(e) => Err(DeliveryError(format!(
                "StartExecution {}: {}",
                command.execution_name(),
                crate::aws_error(e)
            ))),
        }
    }
}

/// How much older than the request a returned execution's start date must be
/// to count as started earlier. A replay reaches a running execution only
/// after a restart or a lease takeover (seconds to tens of seconds later);
/// the margin covers the request's own latency and ordinary clock skew, so a
/// new execution is never reported as a replay. A duplicate within the margin
/// is reported as new, which is harmless: it still started nothing.
const EARLIER_START_MS: i64 = 5_000;

fn started_earlier(started_ms: i64, sent_ms: i64) -> bool {
    started_ms < sent_ms - EARLIER_START_MS
}

fn unix_ms(t: std::time::SystemTime) -> i64 {
    t.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64)
}

pub struct StdoutSink;

impl StdoutSink {
    fn deliver(&self, command: &Command) -> Result<Delivered, DeliveryError> {
        let mut line = serde_json::to_vec(command).map_err(|e| DeliveryError(e.to_string()))?;
        line.push(b'\n');
        // One write of a whole line under the lock: lines from shard tasks never interleave.
        let mut out = std::io::stdout().lock();
        out.write_all(&line)
            .and_then(|()| out.flush())
            .map_err(|e| DeliveryError(format!("stdout: {e}")))?;
        Ok(Delivered::New)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_running_execution_returned_for_a_replay_is_already_handled() {
        let sent = 1_795_964_040_000;
        // StartExecution returned the execution a previous owner started.
        assert!(started_earlier(sent - 12_000, sent));
        // Started by this request: its start date is around the send time,
        // a little before it with skew, or after it.
        assert!(!started_earlier(sent + 300, sent));
        assert!(!started_earlier(sent - 1_500, sent));
        assert!(!started_earlier(sent - EARLIER_START_MS, sent));
    }
}
