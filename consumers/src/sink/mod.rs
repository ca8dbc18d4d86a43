//! Sinks: where remediation commands go. A sink either delivers a command or
//! says why not; the caller retries with backoff and holds the shard's
//! checkpoint until delivery, so a command is never dropped.
//!
//! [`Sink`] is the target plus the fleet-wide blast-radius gate
//! ([`blast_radius`]): a quarantine that finds its period full is
//! delivered as a held notification instead.

pub mod blast_radius;
#[cfg(feature = "direct")]
pub mod block;
pub mod deliver;
#[cfg(feature = "direct")]
pub mod direct;
pub mod probe;
pub mod sfn;
pub mod stdout;

use sshwarden_pipeline::command::{Action, Command};
use tracing::warn;

use crate::config::{BlastRadiusScope, SinkKind, SinkSettings};
use blast_radius::{Claim, FleetBlastRadius};
use sfn::SfnSink;
use stdout::StdoutSink;

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
    /// Runs `block` commands (the direct sink, when blocks are configured).
    #[cfg(feature = "direct")]
    blocks: Option<std::sync::Arc<block::Blocker>>,
}

impl Sink {
    pub fn new(target: Target, fleet_limit: Option<FleetBlastRadius>) -> Self {
        Sink {
            target,
            fleet_limit,
            #[cfg(feature = "direct")]
            blocks: None,
        }
    }

    /// Sends `block` commands (not held) to `blocks` instead of the target.
    #[cfg(feature = "direct")]
    pub fn with_blocks(mut self, blocks: std::sync::Arc<block::Blocker>) -> Self {
        self.blocks = Some(blocks);
        self
    }

    /// Claims a fleet-wide slot for a quarantine (a replay finds the slot it
    /// took before), then delivers; past the limit the quarantine goes out as
    /// a held notification. A claim that cannot be made is a delivery error:
    /// the caller retries and holds the checkpoint.
    pub async fn deliver(&self, command: &Command) -> Result<Delivered, DeliveryError> {
        #[cfg(feature = "direct")]
        if let Some(b) = self
            .blocks
            .as_ref()
            .filter(|_| command.action == Action::Block && !command.held)
        {
            return b.deliver(command).await;
        }
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

/// The quarantine as the policy holds it: a notification a person acts on.
pub fn held(command: &Command) -> Command {
    let mut c = command.clone();
    c.action = Action::Notify;
    c.held = true;
    c.reason = Some("fleet-wide blast-radius limit reached; quarantine held for approval".into());
    c
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
    let sink = Sink::new(target, fleet_limit);
    match (settings.kind, settings.blocks.is_some()) {
        (SinkKind::Sfn, true) => anyhow::bail!(
            "[blocks] needs --sink direct: the Step Functions sink has no block state machine yet"
        ),
        (SinkKind::Stdout, true) => {
            tracing::warn!("[blocks] is ignored by the stdout sink (a dry run blocks nothing)")
        }
        _ => {}
    }
    #[cfg(feature = "direct")]
    if let (SinkKind::Direct, Some(b)) = (settings.kind, settings.blocks.clone()) {
        let blocks = block::Blocker::new(
            b,
            aws_sdk_ec2::Client::new(sdk),
            aws_sdk_dynamodb::Client::new(sdk),
            settings
                .topic_arn
                .clone()
                .map(|t| (aws_sdk_sns::Client::new(sdk), t)),
        )?;
        blocks.ensure().await?;
        let sweep_secs = blocks.settings().sweep_secs;
        tracing::info!(table = %blocks.settings().table, sweep_secs, "block commands go to network ACLs");
        let blocks = std::sync::Arc::new(blocks);
        if sweep_secs > 0 {
            block::spawn_sweeper(blocks.clone(), std::time::Duration::from_secs(sweep_secs));
        }
        return Ok(sink.with_blocks(blocks));
    }
    Ok(sink)
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
