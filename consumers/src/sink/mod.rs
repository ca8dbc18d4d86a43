//! Sinks: where remediation commands go. A sink either delivers a command or
//! says why not; each reader's [`outbox`] retries with backoff while the
//! reader reads on, and holds the shard's checkpoint before every command not
//! yet delivered, so a command is never dropped. An error no retry can fix
//! is given up on ([`Delivered::Failed`]), counted and logged with its cause.
//!
//! [`Sink`] is the target plus the fleet-wide blast-radius gate
//! ([`blast_radius`]): a quarantine or block that finds its budget full is
//! delivered as a held notification instead; only validated commands claim.

pub mod blast_radius;
#[cfg(feature = "direct")]
pub mod block;
pub mod deliver;
#[cfg(feature = "direct")]
pub mod direct;
pub mod executions;
pub mod outbox;
pub mod probe;
pub mod sfn;
pub mod stdout;

use sshwarden_pipeline::command::{Action, Command};
use tracing::warn;

use crate::config::{BlastRadiusScope, SinkKind, SinkSettings};
use blast_radius::{Claim, FleetBlastRadius};
use sfn::SfnSink;
use stdout::StdoutSink;

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivered {
    New,
    /// Delivered before (same execution name): a replay.
    AlreadyHandled,
    /// The fleet-wide budget of its action and rule class was spent: it went
    /// out as a held notification, nothing was changed.
    Held,
    /// Handled without acting, for good: a target check refused it (unknown,
    /// terminated, interface-less, outside the protected VPC, not opted in)
    /// or it failed in a way retrying cannot fix (tag limit, access denied).
    /// A notification saying so went out, as the state machine's refusal
    /// and failure branches send one. The cause names which.
    Failed(String),
}

impl Delivered {
    pub fn as_str(&self) -> &str {
        match self {
            Delivered::New => "new",
            Delivered::AlreadyHandled => "already-handled",
            Delivered::Held => "held",
            Delivered::Failed(_) => "given-up",
        }
    }
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
            Target::Direct(s) => s.deliver(command, None).await,
        }
    }
}

pub struct Sink {
    target: Target,
    fleet_limit: Option<FleetBlastRadius>,
    /// Runs `block` commands (the direct sink, when blocks are configured),
    /// or plans them for the block state machine.
    #[cfg(feature = "direct")]
    blocks: Option<std::sync::Arc<block::Blocker>>,
    /// The block state machine (the sfn sink, when blocks are configured).
    #[cfg(feature = "direct")]
    block_machine: Option<SfnSink>,
}

impl Sink {
    pub fn new(target: Target, fleet_limit: Option<FleetBlastRadius>) -> Self {
        Sink {
            target,
            fleet_limit,
            #[cfg(feature = "direct")]
            blocks: None,
            #[cfg(feature = "direct")]
            block_machine: None,
        }
    }

    /// Sends `block` commands (not held) to `blocks` instead of the target.
    #[cfg(feature = "direct")]
    pub fn with_blocks(mut self, blocks: std::sync::Arc<block::Blocker>) -> Self {
        self.blocks = Some(blocks);
        self
    }

    /// Starts `block` commands (not held) on the block state machine, with
    /// the plan `blocks` makes for each (ban length, refusals), instead of
    /// running them from here.
    #[cfg(feature = "direct")]
    pub fn with_block_machine(mut self, machine: SfnSink) -> Self {
        self.block_machine = Some(machine);
        self
    }

    /// Delivers `command`, claiming a fleet-wide slot of its budget
    /// ([`blast_radius::budget`]: action and rule class) first when it is a
    /// quarantine or a block the policy did not hold; a replay finds the slot
    /// it took before. Past the limit it goes out as a held notification
    /// ([`Delivered::Held`]). A claim that cannot be made is a delivery
    /// error: the caller retries and holds the checkpoint.
    ///
    /// The claim comes after validation, so made-up commands spend nothing
    /// (threat model T2): the direct sink claims after its target checks
    /// (the instance exists, can be isolated, is in the protected VPC and
    /// opted in); for the Step Functions sink the worker claims after the
    /// command's own checks ([`claimable`]) and the state machine re-checks
    /// the target (infra/statemachines/quarantine.asl.json, `CheckTarget`).
    pub async fn deliver(&self, command: &Command) -> Result<Delivered, DeliveryError> {
        let gate = self.fleet_limit.as_ref().filter(|_| gated(command));
        // A block with a block target (network ACLs): its budget first.
        #[cfg(feature = "direct")]
        if let Some(b) = self
            .blocks
            .as_ref()
            .filter(|_| command.action == Action::Block && !command.held)
        {
            if let Some(limit) = gate.filter(|_| claimable(command)) {
                if claim(limit, command).await? == Claim::OverLimit {
                    self.target.deliver(&held(command)).await?;
                    return Ok(Delivered::Held);
                }
            }
            return match &self.block_machine {
                Some(m) => start_block(b, m, command).await,
                None => b.deliver(command).await,
            };
        }
        #[cfg(feature = "direct")]
        if let Target::Direct(d) = &self.target {
            return d.deliver(command, gate).await;
        }
        let Some(limit) = gate.filter(|_| claimable(command)) else {
            return self.target.deliver(command).await;
        };
        match claim(limit, command).await? {
            Claim::Granted | Claim::AlreadyGranted => self.target.deliver(command).await,
            Claim::OverLimit => {
                self.target.deliver(&held(command)).await?;
                Ok(Delivered::Held)
            }
        }
    }
}

/// A `block` command through the block state machine: the worker plans
/// (escalation from the ledger, allowlist and VPC-range refusals, which ASL
/// cannot compute), the machine re-checks and writes. A replay recorded in
/// the ledger starts nothing; a plan that cannot succeed on retry is given
/// up on, with a `block-failed` notification when a topic is configured.
#[cfg(feature = "direct")]
async fn start_block(
    blocks: &block::Blocker,
    machine: &SfnSink,
    command: &Command,
) -> Result<Delivered, DeliveryError> {
    match blocks.plan(command, crate::clock::now_ms() / 1000).await {
        Ok(None) => Ok(Delivered::AlreadyHandled),
        Ok(Some(input)) => machine.start(command, input.to_string()).await,
        Err(e) if e.transient => {
            blocks.count_failure(&e);
            Err(DeliveryError(format!(
                "block plan of {}: {} ({})",
                command.subject(),
                e.error,
                e.cause
            )))
        }
        Err(e) => {
            blocks.count_failure(&e);
            blocks
                .publish(&block::failed_message(command, &e))
                .await
                .map_err(|p| DeliveryError(format!("block-failed notification: {}", p.cause)))?;
            tracing::error!(id = %command.id, source = command.subject(), error = %e.error, cause = %e.cause,
                "block plan failed and cannot succeed on retry; not started");
            Ok(Delivered::Failed(format!("block: {}", e.error)))
        }
    }
}

/// Commands the fleet-wide limit counts: quarantines and blocks the
/// policy did not already hold.
fn gated(command: &Command) -> bool {
    !command.held && matches!(command.action, Action::Quarantine | Action::Block)
}

/// A command whose own fields are valid for its action: a quarantine names a
/// well-formed instance id, a block a source. Anything else takes no slot
/// (the state machine refuses it as an invalid command).
pub fn claimable(command: &Command) -> bool {
    match command.action {
        Action::Quarantine => command
            .instance_id
            .as_deref()
            .is_some_and(sshwarden_pipeline::policy::is_ec2_instance_id),
        Action::Block => command.source.as_deref().is_some_and(|s| !s.is_empty()),
        Action::Notify => false,
    }
}

/// Claims the command's slot; logs when its budget is spent.
pub(crate) async fn claim(
    limit: &FleetBlastRadius,
    command: &Command,
) -> Result<Claim, DeliveryError> {
    let budget = blast_radius::budget(command.action, &command.rule);
    let c = limit
        .claim(&budget, &command.id, command.window_start_ms)
        .await
        .map_err(|e| DeliveryError(format!("fleet-wide blast radius: {e:#}")))?;
    if c == Claim::OverLimit {
        warn!(id = %command.id, budget = %budget, table = %limit.table(), "fleet-wide blast-radius limit reached; {} held", command.action.as_str());
    }
    Ok(c)
}

/// The command as the policy holds it: a notification a person acts on.
pub fn held(command: &Command) -> Command {
    let mut c = command.clone();
    c.action = Action::Notify;
    c.held = true;
    c.reason = Some(format!(
        "fleet-wide blast-radius limit reached ({} budget of rule {}); {} held for approval",
        command.action.as_str(),
        command.rule,
        command.action.as_str()
    ));
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
    metrics: &std::sync::Arc<crate::metrics::Metrics>,
) -> anyhow::Result<Sink> {
    use anyhow::Context;
    #[cfg(not(feature = "direct"))]
    let _ = metrics;
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
        SinkKind::Direct => {
            direct_target(
                sdk,
                settings.quarantine_group_id.clone(),
                settings.topic_arn.clone(),
            )
            .await?
        }
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
        (SinkKind::Sfn, true) if !cfg!(feature = "direct") => anyhow::bail!(
            "[blocks] with --sink sfn needs a build with `--features direct`: the worker plans each ban from the blocks table and sweeps ended ones through EC2"
        ),
        (SinkKind::Stdout, true) => {
            tracing::warn!("[blocks] is ignored by the stdout sink (a dry run blocks nothing)")
        }
        _ => {}
    }
    #[cfg(feature = "direct")]
    if let (SinkKind::Direct | SinkKind::Sfn, Some(b)) = (settings.kind, settings.blocks.clone()) {
        let machine = match settings.kind {
            SinkKind::Sfn => Some(SfnSink::new(
                aws_sdk_sfn::Client::new(sdk),
                settings
                    .block_state_machine_arn
                    .clone()
                    .filter(|a| a.starts_with("arn:"))
                    .context("[blocks] with --sink sfn needs --block-state-machine-arn (SSHWARDEN_BLOCK_STATE_MACHINE_ARN) with the block state machine's ARN")?,
            )),
            _ => None,
        };
        let blocks = block::Blocker::new(
            b,
            aws_sdk_ec2::Client::new(sdk),
            aws_sdk_dynamodb::Client::new(sdk),
            settings
                .topic_arn
                .clone()
                .map(|t| (aws_sdk_sns::Client::new(sdk), t)),
        )?
        .with_metrics(metrics.clone())
        .with_protected_vpc(match sink.target {
            Target::Direct(ref d) => Some(d.protection().vpc.clone()),
            _ => None,
        });
        blocks.ensure().await?;
        let sweep_secs = blocks.settings().sweep_secs;
        tracing::info!(table = %blocks.settings().table, sweep_secs, through_state_machine = machine.is_some(),
            "block commands go to network ACLs");
        let blocks = std::sync::Arc::new(blocks);
        if sweep_secs > 0 {
            block::spawn_sweeper(blocks.clone(), std::time::Duration::from_secs(sweep_secs));
        }
        let sink = sink.with_blocks(blocks);
        return Ok(match machine {
            Some(m) => sink.with_block_machine(m),
            None => sink,
        });
    }
    Ok(sink)
}

#[cfg(feature = "direct")]
async fn direct_target(
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
    Ok(Target::Direct(
        direct::DirectSink::connect(sdk, group, topic).await?,
    ))
}

#[cfg(not(feature = "direct"))]
async fn direct_target(
    _sdk: &aws_config::SdkConfig,
    _group: Option<String>,
    _topic: Option<String>,
) -> anyhow::Result<Target> {
    anyhow::bail!(
        "this sshwarden was built without the direct sink: rebuild with `cargo build --release --features direct` (or use --sink sfn)"
    )
}

#[cfg(test)]
mod tests {
    //! The gate in front of a target that does not check targets itself
    //! (the Step Functions sink; here stdout stands in for it), against
    //! dynalite's DynamoDB (`scripts/emulators up dynalite`).
    use super::*;
    use crate::sink::outbox::tests::command;

    #[tokio::test]
    async fn only_valid_commands_claim_and_each_action_and_rule_has_its_budget() {
        let sdk = sshwarden_testsupport::sdk(&sshwarden_testsupport::dynalite_endpoint()).await;
        let table = format!("sshwarden-gate-test-{}", sshwarden_testsupport::suffix());
        let gate = FleetBlastRadius::new(
            aws_sdk_dynamodb::Client::new(&sdk),
            table.clone(),
            1,
            3_600_000,
        )
        .expect("gate");
        gate.ensure().await.expect("table");
        let sink = Sink::new(Target::Stdout(StdoutSink), Some(gate));
        let budget = blast_radius::budget(Action::Quarantine, "invalid-user");
        let limit = sink.fleet_limit.as_ref().expect("gate");

        // A malformed instance id takes no slot (the machine refuses it).
        let mut bad = command("sw1-i-bad");
        bad.instance_id = Some("i-NOT-HEX".into());
        assert!(!claimable(&bad));
        assert_eq!(sink.deliver(&bad).await.expect("deliver"), Delivered::New);
        assert_eq!(limit.claimed(&budget, 0).await.expect("read").0, 0);

        let first = command("sw1-i-first");
        assert_eq!(sink.deliver(&first).await.expect("deliver"), Delivered::New);
        assert_eq!(sink.deliver(&first).await.expect("replay"), Delivered::New);
        let second = command("sw1-i-second");
        assert_eq!(
            sink.deliver(&second).await.expect("deliver"),
            Delivered::Held
        );
        let mut other_rule = command("sw1-i-other");
        other_rule.rule = "root-login".into();
        assert_eq!(
            sink.deliver(&other_rule).await.expect("deliver"),
            Delivered::New
        );
        let mut block = command("sw1-s-block");
        block.action = Action::Block;
        block.source = Some("203.0.113.9/32".into());
        assert_eq!(sink.deliver(&block).await.expect("deliver"), Delivered::New);
        // Notifications and held commands are never gated.
        let mut held_one = command("sw1-i-held");
        held_one.held = true;
        held_one.action = Action::Notify;
        assert_eq!(
            sink.deliver(&held_one).await.expect("deliver"),
            Delivered::New
        );
        assert_eq!(
            limit.claimed(&budget, 0).await.expect("read"),
            (1, vec!["sw1-i-first".to_owned()])
        );
        let _ = aws_sdk_dynamodb::Client::new(&sdk)
            .delete_table()
            .table_name(&table)
            .send()
            .await;
    }

    /// `[blocks]` with the Step Functions sink needs the block machine's
    /// ARN; the error says which setting (before any AWS call).
    #[cfg(feature = "direct")]
    #[tokio::test]
    async fn blocks_with_the_sfn_sink_need_the_block_machine() {
        let sdk = sshwarden_testsupport::sdk(&sshwarden_testsupport::moto_endpoint()).await;
        let settings = SinkSettings {
            kind: SinkKind::Sfn,
            state_machine_arn: Some("arn:aws:states:us-east-1:123456789012:stateMachine:q".into()),
            block_state_machine_arn: None,
            quarantine_group_id: None,
            topic_arn: None,
            blast_radius_scope: BlastRadiusScope::Shard,
            blast_radius_table: "unused".into(),
            blocks: Some(crate::config::BlockSettings::default()),
        };
        let metrics = std::sync::Arc::new(crate::metrics::Metrics::default());
        let e = build(&settings, &sdk, None, &metrics)
            .await
            .err()
            .expect("refused");
        assert!(
            format!("{e:#}").contains("--block-state-machine-arn"),
            "{e:#}"
        );
    }
}
