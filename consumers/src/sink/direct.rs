//! The `direct` sink: the quarantine state machine's steps
//! (infra/statemachines/quarantine.asl.json) as EC2 and SNS calls from the
//! worker, for accounts without Step Functions; and the release machine's
//! steps for `sshwarden release --direct`.
//!
//! Same tags, same notification shape, so the release machine and
//! `sshwarden release` restore an instance whichever way it was quarantined:
//! `sshwarden:reason`, `sshwarden:command-id`, one
//! `sshwarden:saved-groups:<eni-id>` per interface (a compact JSON array of
//! at most [`GROUPS_PER_TAG`] group ids; more go on in
//! `sshwarden:saved-groups:<eni-id>:2`), `sshwarden:quarantined` (RFC 3339
//! time), `sshwarden:exempt`.
//!
//! Where it may act is read from the quarantine group when the sink starts
//! ([`Protection`]): the protected VPC is the group's VPC; the group's tag
//! `sshwarden:require-opt-in` = `true` makes it act only on instances
//! tagged `sshwarden:protected`; the allow-all group it swaps through (see
//! below) is the VPC's group tagged `sshwarden:role` = `untracked`, created
//! when absent.
//!
//! Order, chosen so a replay after a crash at any point is safe and nothing
//! is spent on a command that cannot be carried out:
//! describe → target checks ([`verify`]: exists, state, interfaces, VPC,
//! opt-in; a refusal is notified, nothing changes) → exempt → isolated
//! already (every interface carries the quarantine group: by this command
//! and tagged quarantined, a replay; by another, already-quarantined) →
//! the fleet-wide blast-radius claim (after the checks: threat model T2) →
//! tag reason and command id → save the groups of every interface not saved
//! yet (one CreateTags) → each interface to the allow-all group, so its
//! flows become untracked → its connection-tracking timeouts to the minimum
//! → each interface to the quarantine group → publish → tag
//! `sshwarden:quarantined`. An established session survives a plain swap
//! while it stays tracked; once untracked, the next packet is judged by the
//! quarantine group (threat model T3). A saved-groups tag that exists is
//! never rewritten, so a replay after the swap cannot save the quarantine
//! group over the originals. The quarantined tag comes last, after the
//! notification: a crash before it makes the replay redo the idempotent
//! steps and notify again (a duplicate), never lose the notification.
//!
//! Errors: throttling, 5xx and transport errors are returned to the shard
//! reader, which retries with backoff and holds the checkpoint. An error that
//! retrying cannot fix (malformed or unknown instance, tag limit, access
//! denied) is published as a `failed` notification, as the state machine's
//! failure branch does, and the command counts as given up on: a terminated
//! instance must not stall its shard forever.

use std::collections::HashMap;

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{
    ConnectionTrackingSpecificationRequest, Filter, IpPermission, IpRange, Ipv6Range, ResourceType,
    Tag, TagSpecification,
};
use aws_sdk_sns::types::MessageAttributeValue;
use serde_json::{json, Value};
use sshwarden_pipeline::command::{Action, Command};
use sshwarden_pipeline::policy::is_ec2_instance_id;
use tracing::{error, info, warn};

use super::blast_radius::{Claim, FleetBlastRadius};
use super::{Delivered, DeliveryError};

pub const TAG_EXEMPT: &str = "sshwarden:exempt";
pub const TAG_QUARANTINED: &str = "sshwarden:quarantined";
pub const TAG_REASON: &str = "sshwarden:reason";
pub const TAG_COMMAND_ID: &str = "sshwarden:command-id";
pub const TAG_SAVED_GROUPS: &str = "sshwarden:saved-groups:";
/// The opt-in tag (any value), as the template's `QuarantineOptInPolicy`.
pub const TAG_PROTECTED: &str = "sshwarden:protected";
/// On the quarantine group: `true` to act only on opted-in instances.
pub const TAG_REQUIRE_OPT_IN: &str = "sshwarden:require-opt-in";
/// On sshwarden's groups: `quarantine`, `untracked`.
pub const TAG_ROLE: &str = "sshwarden:role";

/// Instance states a quarantine acts in. `pending`, `running`: the
/// instance is (about to be) reachable. `stopping`, `stopped`: not
/// reachable now, but its interfaces exist and it can be started again (by
/// the attacker too), so it is isolated before that. `shutting-down` and
/// `terminated` are refused: the interfaces are going or gone, and such an
/// instance is never reported as quarantined.
pub const ACTIONABLE_STATES: &[&str] = &["pending", "running", "stopping", "stopped"];

/// The lowest idle timeouts EC2 accepts (seconds), set on every interface
/// during the quarantine: what stays tracked expires soonest. Source:
/// <https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/security-group-connection-tracking.html#connection-tracking-timeouts>.
pub const MIN_TCP_ESTABLISHED_TIMEOUT: i32 = 60;
pub const MIN_UDP_STREAM_TIMEOUT: i32 = 60;
pub const MIN_UDP_TIMEOUT: i32 = 30;

/// What a notification names as its execution (the state machine gives its
/// execution ARN).
const EXECUTION: &str = "sshwarden-direct";

/// Where the sink may act, read from the quarantine group at start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Protection {
    /// The quarantine group's VPC: only its instances are quarantined.
    pub vpc: String,
    /// Only instances tagged [`TAG_PROTECTED`].
    pub require_opt_in: bool,
    /// The allow-all group swapped through, making flows untracked.
    pub untracked_group: String,
}

pub struct DirectSink {
    ec2: aws_sdk_ec2::Client,
    sns: aws_sdk_sns::Client,
    quarantine_group: String,
    topic_arn: String,
    protection: Protection,
}

/// Why a step failed, in the state machine's terms.
#[derive(Debug)]
pub struct StepError {
    pub error: String,
    pub cause: String,
    /// Retrying may help (throttling, 5xx, transport).
    pub transient: bool,
}

impl StepError {
    fn permanent(error: &str, cause: impl Into<String>) -> Self {
        StepError {
            error: error.into(),
            cause: cause.into(),
            transient: false,
        }
    }
}

fn step_error<E, R>(call: &str, e: SdkError<E, R>) -> StepError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let f = crate::aws::call_failure(call, e);
    StepError {
        error: f.code,
        cause: f.cause,
        transient: f.transient,
    }
}

/// One interface as the notification lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Interface {
    pub id: String,
    pub groups: Vec<String>,
    /// The instance it is attached to (DescribeNetworkInterfaces), when read.
    pub attached_to: Option<String>,
}

/// The instance as the checks see it.
#[derive(Debug, Clone, Default)]
pub struct Described {
    pub state: String,
    pub vpc: Option<String>,
    pub interfaces: Vec<Interface>,
    pub tags: HashMap<String, String>,
}

/// The target checks' verdict: what passed, in order, and why the first
/// failing one refused the target.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checks {
    pub passed: Vec<String>,
    pub refused: Option<String>,
}

impl Checks {
    fn json(&self) -> Value {
        json!({"passed": self.passed, "refused": self.refused})
    }
}

/// The checks a target must pass before anything is claimed or changed,
/// in this order: it exists (described), its state is one of
/// [`ACTIONABLE_STATES`], it has an interface, it is in the protected VPC,
/// and it carries [`TAG_PROTECTED`] when opt-in is required.
pub fn verify(d: &Described, p: &Protection) -> Checks {
    let mut passed = vec!["exists".to_owned()];
    let refuse = |passed: Vec<String>, why: String| Checks {
        passed,
        refused: Some(why),
    };
    if !ACTIONABLE_STATES.contains(&d.state.as_str()) {
        return refuse(
            passed,
            format!(
                "instance state {:?}: only a pending, running, stopping or stopped instance is quarantined",
                d.state
            ),
        );
    }
    passed.push(format!("state {}", d.state));
    if d.interfaces.is_empty() {
        return refuse(passed, "the instance has no network interface".into());
    }
    passed.push(format!("{} network interface(s)", d.interfaces.len()));
    match d.vpc.as_deref() {
        Some(v) if v == p.vpc => passed.push(format!("in the protected VPC {v}")),
        other => {
            return refuse(
                passed,
                format!(
                    "the instance's VPC {} is not the protected VPC {}",
                    other.unwrap_or("(none)"),
                    p.vpc
                ),
            )
        }
    }
    if p.require_opt_in {
        if !d.tags.contains_key(TAG_PROTECTED) {
            return refuse(
                passed,
                format!("opt-in is required and the instance has no {TAG_PROTECTED} tag"),
            );
        }
        passed.push(format!("opted in ({TAG_PROTECTED})"));
    } else {
        passed.push("opt-in not required".into());
    }
    Checks {
        passed,
        refused: None,
    }
}

/// Isolated: the interface carries the quarantine group. Only sshwarden
/// applies it (IAM, T4), so the interfaces' groups, not a tag anyone with
/// CreateTags could write, decide "already quarantined". Containment
/// rather than equality, because moto shows the quarantine group next to
/// the launch groups of an instance launched with SecurityGroupIds.
fn carries(i: &Interface, group: &str) -> bool {
    i.groups.iter().any(|g| g == group)
}

/// Group ids per saved-groups tag: 10 × 22 characters of JSON stay under
/// EC2's 256-character tag value (11 would too, the state machine's
/// States.ArrayPartition uses 10 as well).
pub const GROUPS_PER_TAG: usize = 10;

fn saved_key(interface_id: &str) -> String {
    format!("{TAG_SAVED_GROUPS}{interface_id}")
}

fn tag(key: &str, value: &str) -> Tag {
    Tag::builder().key(key).value(value).build()
}

fn now_rfc3339() -> String {
    let ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as i64);
    sshwarden_pipeline::time::format_rfc3339_ms(ms)
}

/// `sg-` and 8 or 17 lowercase hex digits.
pub fn is_security_group_id(s: &str) -> bool {
    s.strip_prefix("sg-").is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17)
            && hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    })
}

/// The instance, or `None` when EC2 does not know the id.
async fn describe(
    ec2: &aws_sdk_ec2::Client,
    instance_id: &str,
) -> Result<Option<Described>, StepError> {
    let out = match ec2
        .describe_instances()
        .instance_ids(instance_id)
        .send()
        .await
    {
        Ok(out) => out,
        Err(e) if e.code() == Some("InvalidInstanceID.NotFound") => return Ok(None),
        Err(e) => return Err(step_error("DescribeInstances", e)),
    };
    let Some(instance) = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find(|i| i.instance_id() == Some(instance_id))
    else {
        return Ok(None);
    };
    let tags = instance
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned())))
        .collect();
    let mut nics: Vec<_> = instance.network_interfaces().iter().collect();
    nics.sort_by_key(|n| n.attachment().and_then(|a| a.device_index()).unwrap_or(0));
    let interfaces = nics
        .into_iter()
        .filter_map(|n| {
            Some(Interface {
                id: n.network_interface_id()?.to_owned(),
                groups: n
                    .groups()
                    .iter()
                    .filter_map(|g| g.group_id().map(str::to_owned))
                    .collect(),
                attached_to: None,
            })
        })
        .collect();
    Ok(Some(Described {
        state: instance
            .state()
            .and_then(|s| s.name())
            .map(|n| n.as_str().to_owned())
            .unwrap_or_default(),
        vpc: instance.vpc_id().map(str::to_owned),
        interfaces,
        tags,
    }))
}

impl DirectSink {
    /// Checks the settings' shapes, then reads [`Protection`] from the
    /// quarantine group (and creates the untracked group if absent).
    pub async fn connect(
        sdk: &aws_config::SdkConfig,
        quarantine_group: String,
        topic_arn: String,
    ) -> anyhow::Result<Self> {
        Self::with_clients(
            aws_sdk_ec2::Client::new(sdk),
            aws_sdk_sns::Client::new(sdk),
            quarantine_group,
            topic_arn,
        )
        .await
    }

    pub async fn with_clients(
        ec2: aws_sdk_ec2::Client,
        sns: aws_sdk_sns::Client,
        quarantine_group: String,
        topic_arn: String,
    ) -> anyhow::Result<Self> {
        if !is_security_group_id(&quarantine_group) {
            anyhow::bail!(
                "--quarantine-group-id {quarantine_group:?} is not a security group id (sg- and 8 or 17 hex digits)"
            );
        }
        if !(topic_arn.starts_with("arn:") && topic_arn.contains(":sns:")) {
            anyhow::bail!("--topic-arn {topic_arn:?} is not an SNS topic ARN");
        }
        let protection = protection(&ec2, &quarantine_group).await?;
        info!(vpc = %protection.vpc, require_opt_in = protection.require_opt_in, untracked_group = %protection.untracked_group,
            quarantine_group = %quarantine_group, "direct sink: protected VPC from the quarantine group");
        Ok(DirectSink {
            ec2,
            sns,
            quarantine_group,
            topic_arn,
            protection,
        })
    }

    pub fn protection(&self) -> &Protection {
        &self.protection
    }

    /// Delivers `c`; a quarantine that passes its target checks claims a
    /// slot of `gate` (when given) before anything changes.
    pub async fn deliver(
        &self,
        c: &Command,
        gate: Option<&FleetBlastRadius>,
    ) -> Result<Delivered, DeliveryError> {
        let command = serde_json::to_value(c).map_err(|e| DeliveryError(e.to_string()))?;
        if c.held {
            let n = held_message(c, command);
            self.publish(&n).await?;
            return Ok(Delivered::New);
        }
        // A block has no target in this sink yet: it is announced like a
        // notification, once its budget has a slot.
        if c.action != Action::Quarantine {
            if let Some(g) = gate.filter(|_| super::claimable(c)) {
                if super::claim(g, c).await? == Claim::OverLimit {
                    let held = super::held(c);
                    let value =
                        serde_json::to_value(&held).map_err(|e| DeliveryError(e.to_string()))?;
                    self.publish(&held_message(&held, value)).await?;
                    return Ok(Delivered::Held);
                }
            }
            let n = notify_message(c, command);
            self.publish(&n).await?;
            return Ok(Delivered::New);
        }
        match self.quarantine(c, &command, gate).await {
            Ok(Quarantined::Replay) => Ok(Delivered::AlreadyHandled),
            Ok(Quarantined::Skipped(n)) => {
                self.publish(&n).await?;
                Ok(Delivered::New)
            }
            Ok(Quarantined::Held(n)) => {
                self.publish(&n).await?;
                Ok(Delivered::Held)
            }
            Ok(Quarantined::Refused(n, why)) => {
                self.publish(&n).await?;
                warn!(id = %c.id, instance = c.subject(), reason = %why, "quarantine refused by a target check; 'refused' notification published");
                Ok(Delivered::Failed("target-check".into()))
            }
            Ok(Quarantined::Isolated(n)) => {
                self.publish(&n).await?;
                let instance_id = c.instance_id.as_deref().unwrap_or("");
                self.ec2
                    .create_tags()
                    .resources(instance_id)
                    .tags(tag(TAG_QUARANTINED, &now_rfc3339()))
                    .send()
                    .await
                    .map_err(|e| {
                        DeliveryError(format!(
                            "{instance_id} isolated and notified, but the {TAG_QUARANTINED} tag failed (retrying): {}",
                            step_error("CreateTags", e).cause
                        ))
                    })?;
                info!(id = %c.id, instance = instance_id, group = %self.quarantine_group, "instance quarantined");
                Ok(Delivered::New)
            }
            Err(e) if e.transient => Err(DeliveryError(format!(
                "quarantine of {}: {} ({})",
                c.subject(),
                e.error,
                e.cause
            ))),
            Err(e) => {
                let n = failure_message(&e, command);
                self.publish(&n).await?;
                error!(id = %c.id, instance = c.subject(), error = %e.error, cause = %e.cause,
                    "quarantine failed and cannot succeed on retry; 'failed' notification published");
                Ok(Delivered::Failed(e.error))
            }
        }
    }

    async fn quarantine(
        &self,
        c: &Command,
        command: &Value,
        gate: Option<&FleetBlastRadius>,
    ) -> Result<Quarantined, StepError> {
        let instance_id = match c.instance_id.as_deref() {
            Some(i) if is_ec2_instance_id(i) => i,
            _ => {
                return Err(StepError::permanent(
                    "sshwarden.InvalidCommand",
                    "the command needs string fields action ('quarantine', 'block' or 'notify'), id and rule, a boolean held if present, and for a quarantine an instance_id of the form i-<lowercase hex>",
                ))
            }
        };
        let Some(d) = describe(&self.ec2, instance_id).await? else {
            let checks = Checks {
                passed: Vec::new(),
                refused: Some("EC2 knows no instance with this id".into()),
            };
            return Ok(Quarantined::Refused(
                refused_message(c, command.clone(), &checks),
                "unknown instance".into(),
            ));
        };
        let checks = verify(&d, &self.protection);
        if let Some(why) = checks.refused.clone() {
            return Ok(Quarantined::Refused(
                refused_message(c, command.clone(), &checks),
                why,
            ));
        }
        if d.tags.contains_key(TAG_EXEMPT) {
            return Ok(Quarantined::Skipped(exempt_message(
                c,
                command.clone(),
                &checks,
            )));
        }
        let q = self.quarantine_group.as_str();
        if d.interfaces.iter().all(|i| carries(i, q)) {
            let ours = d.tags.get(TAG_COMMAND_ID) == Some(&c.id);
            if ours && d.tags.contains_key(TAG_QUARANTINED) {
                return Ok(Quarantined::Replay);
            }
            if !ours {
                return Ok(Quarantined::Skipped(already_quarantined_message(
                    c,
                    command.clone(),
                    &checks,
                )));
            }
            // Ours, isolated, not yet tagged quarantined: a crash before
            // the notification; redo the idempotent steps.
        }
        if let Some(g) = gate {
            let claim = super::claim(g, c).await.map_err(|e| StepError {
                error: "sshwarden.BlastRadius".into(),
                cause: e.0,
                transient: true,
            })?;
            if claim == Claim::OverLimit {
                let held = super::held(c);
                let value = serde_json::to_value(&held)
                    .map_err(|e| StepError::permanent("States.Runtime", e.to_string()))?;
                let mut n = held_message(&held, value);
                if let Some(m) = n.message.as_object_mut() {
                    m.insert("checks".into(), checks.json());
                }
                return Ok(Quarantined::Held(n));
            }
        }
        // Who and why, before anything changes.
        self.ec2
            .create_tags()
            .resources(instance_id)
            .tags(tag(TAG_REASON, &c.rule))
            .tags(tag(TAG_COMMAND_ID, &c.id))
            .send()
            .await
            .map_err(|e| step_error("CreateTags", e))?;
        // Every interface's groups, before any interface is touched.
        let isolated_only = |i: &Interface| i.groups == [q];
        let mut report = Vec::new();
        let mut save = self.ec2.create_tags().resources(instance_id);
        let mut to_save = 0;
        for i in &d.interfaces {
            let key = saved_key(&i.id);
            if d.tags.contains_key(&key) || isolated_only(i) {
                report.push(json!({"instance_id": instance_id, "interface_id": i.id, "groups": i.groups, "already_isolated": true}));
                continue;
            }
            // At most GROUPS_PER_TAG ids per tag value (256 characters):
            // the rest in <key>:2 (an interface has at most 16 groups).
            for (n, chunk) in i.groups.chunks(GROUPS_PER_TAG).enumerate() {
                let value = serde_json::to_string(chunk)
                    .map_err(|e| StepError::permanent("States.Runtime", e.to_string()))?;
                let key = if n == 0 {
                    key.clone()
                } else {
                    format!("{key}:{}", n + 1)
                };
                save = save.tags(tag(&key, &value));
                to_save += 1;
            }
            report.push(
                json!({"instance_id": instance_id, "interface_id": i.id, "groups": i.groups}),
            );
        }
        if to_save > 0 {
            save.send().await.map_err(|e| step_error("CreateTags", e))?;
        }
        // Each interface (an instance-level change fails on instances with
        // several): first the allow-all group, which makes its flows
        // untracked, so the quarantine group cuts established sessions too.
        let swap = d.interfaces.iter().filter(|i| !isolated_only(i));
        for i in swap.clone() {
            self.set_groups(&i.id, &self.protection.untracked_group)
                .await?;
        }
        let mut tracking = Vec::new();
        for i in swap.clone() {
            tracking.push(self.minimise_tracking(&i.id).await?);
        }
        for i in swap {
            self.set_groups(&i.id, q).await?;
        }
        Ok(Quarantined::Isolated(quarantined_message(
            c,
            q,
            report,
            command.clone(),
            json!({
                "checks": checks.json(),
                "untracked_group": self.protection.untracked_group,
                "connection_tracking": tracking,
            }),
        )))
    }

    async fn set_groups(&self, interface: &str, group: &str) -> Result<(), StepError> {
        self.ec2
            .modify_network_interface_attribute()
            .network_interface_id(interface)
            .groups(group)
            .send()
            .await
            .map_err(|e| step_error("ModifyNetworkInterfaceAttribute", e))?;
        Ok(())
    }

    /// The interface's idle timeouts to EC2's minimum. Throttling is
    /// retried by the caller; any other refusal (an interface type without
    /// configurable tracking) is reported in the notification, not fatal:
    /// the untracked swap already did the cutting.
    async fn minimise_tracking(&self, interface: &str) -> Result<Value, StepError> {
        let spec = ConnectionTrackingSpecificationRequest::builder()
            .tcp_established_timeout(MIN_TCP_ESTABLISHED_TIMEOUT)
            .udp_stream_timeout(MIN_UDP_STREAM_TIMEOUT)
            .udp_timeout(MIN_UDP_TIMEOUT)
            .build();
        match self
            .ec2
            .modify_network_interface_attribute()
            .network_interface_id(interface)
            .connection_tracking_specification(spec)
            .send()
            .await
        {
            Ok(_) => Ok(
                json!({"interface_id": interface, "tcp_established_timeout": MIN_TCP_ESTABLISHED_TIMEOUT,
                "udp_stream_timeout": MIN_UDP_STREAM_TIMEOUT, "udp_timeout": MIN_UDP_TIMEOUT}),
            ),
            Err(e) => {
                let e = step_error("ModifyNetworkInterfaceAttribute", e);
                if e.transient {
                    return Err(e);
                }
                warn!(interface, error = %e.error, cause = %e.cause, "connection-tracking timeouts not set");
                Ok(json!({"interface_id": interface, "not_set": e.error}))
            }
        }
    }

    async fn publish(&self, n: &Notification) -> Result<(), DeliveryError> {
        publish(&self.sns, &self.topic_arn, n)
            .await
            .map_err(|e| DeliveryError(format!("notification {}: {}", n.event(), e.cause)))
    }
}

/// The protected VPC and opt-in setting from the quarantine group, and the
/// VPC's untracked group (created, allowing everything in and out over
/// IPv4 and IPv6, when the VPC has none).
async fn protection(
    ec2: &aws_sdk_ec2::Client,
    quarantine_group: &str,
) -> anyhow::Result<Protection> {
    use anyhow::Context;
    let out = ec2
        .describe_security_groups()
        .group_ids(quarantine_group)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!(step_error("DescribeSecurityGroups", e).cause))
        .with_context(|| format!("cannot read the quarantine group {quarantine_group}"))?;
    let group = out
        .security_groups()
        .iter()
        .find(|g| g.group_id() == Some(quarantine_group))
        .with_context(|| format!("the quarantine group {quarantine_group} does not exist"))?;
    let vpc = group
        .vpc_id()
        .with_context(|| format!("the quarantine group {quarantine_group} is in no VPC"))?
        .to_owned();
    let require_opt_in = group
        .tags()
        .iter()
        .any(|t| t.key() == Some(TAG_REQUIRE_OPT_IN) && t.value() == Some("true"));
    let untracked_group = untracked_group(ec2, &vpc).await?;
    Ok(Protection {
        vpc,
        require_opt_in,
        untracked_group,
    })
}

/// Name of the group [`untracked_group`] creates.
pub const UNTRACKED_GROUP_NAME: &str = "sshwarden-untracked";

async fn untracked_group(ec2: &aws_sdk_ec2::Client, vpc: &str) -> anyhow::Result<String> {
    let find = || async {
        let out = ec2
            .describe_security_groups()
            .filters(Filter::builder().name("vpc-id").values(vpc).build())
            .filters(
                Filter::builder()
                    .name(format!("tag:{TAG_ROLE}"))
                    .values("untracked")
                    .build(),
            )
            .send()
            .await
            .map_err(|e| anyhow::anyhow!(step_error("DescribeSecurityGroups", e).cause))?;
        let mut ids: Vec<String> = out
            .security_groups()
            .iter()
            .filter_map(|g| g.group_id().map(str::to_owned))
            .collect();
        ids.sort();
        anyhow::Ok(ids.into_iter().next())
    };
    if let Some(id) = find().await? {
        return Ok(id);
    }
    let created = ec2
        .create_security_group()
        .group_name(UNTRACKED_GROUP_NAME)
        .description("sshwarden: allows everything so that flows are untracked; held only for a moment during a quarantine")
        .vpc_id(vpc)
        .tag_specifications(
            TagSpecification::builder()
                .resource_type(ResourceType::SecurityGroup)
                .tags(tag(TAG_ROLE, "untracked"))
                .build(),
        )
        .send()
        .await;
    let id = match created {
        Ok(out) => out.group_id().unwrap_or_default().to_owned(),
        // Another worker created it meanwhile.
        Err(e) if e.code() == Some("InvalidGroup.Duplicate") => find().await?.ok_or_else(|| {
            anyhow::anyhow!("{UNTRACKED_GROUP_NAME} exists in {vpc} without its {TAG_ROLE} tag")
        })?,
        Err(e) => anyhow::bail!(step_error("CreateSecurityGroup", e).cause),
    };
    let all = || {
        IpPermission::builder()
            .ip_protocol("-1")
            .ip_ranges(IpRange::builder().cidr_ip("0.0.0.0/0").build())
            .ipv6_ranges(Ipv6Range::builder().cidr_ipv6("::/0").build())
            .build()
    };
    // Both directions must allow everything for a flow to be untracked.
    let ingress = ec2
        .authorize_security_group_ingress()
        .group_id(&id)
        .ip_permissions(all())
        .send()
        .await;
    if let Err(e) = ingress {
        if e.code() != Some("InvalidPermission.Duplicate") {
            anyhow::bail!(step_error("AuthorizeSecurityGroupIngress", e).cause);
        }
    }
    // A new group already allows all IPv4 egress; add IPv6 (and IPv4 if
    // absent) one range at a time, so an existing rule is not an error.
    for p in [
        IpPermission::builder()
            .ip_protocol("-1")
            .ipv6_ranges(Ipv6Range::builder().cidr_ipv6("::/0").build())
            .build(),
        IpPermission::builder()
            .ip_protocol("-1")
            .ip_ranges(IpRange::builder().cidr_ip("0.0.0.0/0").build())
            .build(),
    ] {
        if let Err(e) = ec2
            .authorize_security_group_egress()
            .group_id(&id)
            .ip_permissions(p)
            .send()
            .await
        {
            if e.code() != Some("InvalidPermission.Duplicate") {
                anyhow::bail!(step_error("AuthorizeSecurityGroupEgress", e).cause);
            }
        }
    }
    info!(group = %id, vpc, "created the untracked (allow-all) group for quarantines");
    Ok(id)
}

enum Quarantined {
    Isolated(Notification),
    Skipped(Notification),
    Held(Notification),
    /// A target check refused it; the reason.
    Refused(Notification, String),
    Replay,
}

/// A subject and a message, as the state machines build them.
pub struct Notification {
    subject: String,
    message: Value,
}

impl Notification {
    fn event(&self) -> &str {
        self.message
            .get("event")
            .and_then(Value::as_str)
            .unwrap_or("")
    }
}

async fn publish(
    sns: &aws_sdk_sns::Client,
    topic_arn: &str,
    n: &Notification,
) -> Result<(), StepError> {
    let attr = MessageAttributeValue::builder()
        .data_type("String")
        .string_value(n.event())
        .build()
        .map_err(|e| StepError::permanent("States.Runtime", e.to_string()))?;
    sns.publish()
        .topic_arn(topic_arn)
        .subject(&n.subject)
        .message(n.message.to_string())
        .message_attributes("event", attr)
        .send()
        .await
        .map_err(|e| step_error("Publish", e))?;
    Ok(())
}

fn quarantined_message(
    c: &Command,
    group: &str,
    interfaces: Vec<Value>,
    command: Value,
    extra: Value,
) -> Notification {
    let instance = c.instance_id.as_deref().unwrap_or("");
    let mut fields = json!({ "quarantine_group": group, "interfaces": interfaces });
    if let (Some(f), Value::Object(extra)) = (fields.as_object_mut(), extra) {
        f.extend(extra);
    }
    instance_message(
        c,
        command,
        "quarantined",
        format!("quarantined {instance}"),
        format!("Instance {instance} was isolated in security group {group}, through an allow-all group first so that established sessions are cut, with connection-tracking timeouts at their minimum"),
        fields,
    )
}

fn refused_message(c: &Command, command: Value, checks: &Checks) -> Notification {
    let instance = c.instance_id.as_deref().unwrap_or("");
    let why = checks.refused.as_deref().unwrap_or("");
    instance_message(
        c,
        command,
        "refused",
        format!("not quarantined {instance} (target check failed)"),
        format!("Instance {instance} was not quarantined: {why}; nothing was changed"),
        json!({ "checks": checks.json() }),
    )
}

fn exempt_message(c: &Command, command: Value, checks: &Checks) -> Notification {
    let instance = c.instance_id.as_deref().unwrap_or("");
    instance_message(
        c,
        command,
        "exempt",
        format!("not quarantined {instance} (exempt)"),
        format!("Instance {instance} carries the tag sshwarden:exempt: nothing was changed"),
        json!({ "checks": checks.json() }),
    )
}

fn already_quarantined_message(c: &Command, command: Value, checks: &Checks) -> Notification {
    let instance = c.instance_id.as_deref().unwrap_or("");
    instance_message(
        c,
        command,
        "already-quarantined",
        format!("already quarantined {instance}"),
        format!("Instance {instance} is already quarantined (every interface carries the quarantine group): nothing was changed"),
        json!({ "checks": checks.json() }),
    )
}

/// The notification of what became of `c`'s instance (as the state
/// machine words it): "sshwarden: {subject}", the summary followed by the
/// rule and command, and the fields every such event carries plus `extra`.
fn instance_message(
    c: &Command,
    command: Value,
    event: &str,
    subject: String,
    summary: String,
    extra: Value,
) -> Notification {
    let mut message = json!({
        "event": event,
        "summary": format!("{summary} (rule {}, command {}).", c.rule, c.id),
        "instance_id": c.instance_id.as_deref().unwrap_or(""),
        "rule": c.rule,
        "command_id": c.id,
        "execution": EXECUTION,
        "command": command,
    });
    if let (Some(fields), Value::Object(extra)) = (message.as_object_mut(), extra) {
        fields.extend(extra);
    }
    Notification {
        subject: format!("sshwarden: {subject}"),
        message,
    }
}

/// A notification of a rule that fired without a quarantine.
fn rule_message(
    c: &Command,
    command: Value,
    event: &str,
    subject: &str,
    summary: String,
) -> Notification {
    Notification {
        subject: subject.into(),
        message: json!({
            "event": event,
            "summary": summary,
            "rule": c.rule,
            "command_id": c.id,
            "execution": EXECUTION,
            "command": command,
        }),
    }
}

fn notify_message(c: &Command, command: Value) -> Notification {
    rule_message(
        c,
        command,
        "notify",
        "sshwarden: detection (notify only)",
        format!(
            "Rule {} fired (command {}); the policy asks for a notification only.",
            c.rule, c.id
        ),
    )
}

fn held_message(c: &Command, command: Value) -> Notification {
    rule_message(
        c,
        command,
        "held",
        "sshwarden: quarantine held for review",
        format!("Rule {} asked for a quarantine (command {}) that the policy held back: a person has to decide.", c.rule, c.id),
    )
}

fn failure_message(e: &StepError, command: Value) -> Notification {
    Notification {
        subject: "sshwarden: quarantine FAILED".into(),
        message: json!({
            "event": "failed",
            "summary": format!("The quarantine did not complete: {}. Check the instance; sshwarden release restores the groups saved in its tags.", e.error),
            "error": {"Error": e.error, "Cause": e.cause},
            "execution": EXECUTION,
            "command": command,
        }),
    }
}

// ------------------------------------------------------------------ release

/// What `sshwarden release --direct` did.
#[derive(Debug)]
pub struct Released {
    /// `released` or `not-quarantined`.
    pub event: &'static str,
    pub interfaces: Vec<(String, Vec<String>)>,
    /// Interfaces (or groups) left as they were, and why.
    pub skipped: Vec<(String, String)>,
}

/// The release machine's steps, with the checks a tag cannot vouch for
/// (threat model T4): restore an interface from its saved-groups tag only
/// when it is attached to this instance and carries a quarantine group (a
/// group of the instance's VPC tagged `sshwarden:role` = `quarantine`),
/// and only with the saved groups that still exist in the instance's VPC.
/// A detached interface, one someone already moved out of quarantine, or
/// one whose saved groups are all gone is skipped with a warning and keeps
/// its tag. Each restored interface's tag is dropped at once (a failure
/// leaves the rest for the next release); then the other sshwarden tags go
/// and a notification is sent (when a topic is given).
pub async fn release(
    sdk: &aws_config::SdkConfig,
    instance_id: &str,
    requested_by: &str,
    topic_arn: Option<&str>,
) -> anyhow::Result<Released> {
    let ec2 = aws_sdk_ec2::Client::new(sdk);
    let sns = aws_sdk_sns::Client::new(sdk);
    let request = json!({"version": 1, "action": "release", "instance_id": instance_id, "requested_by": requested_by});
    let result = restore(&ec2, instance_id).await;
    let n = match &result {
        Ok(r) if r.event == "released" => Notification {
            subject: format!("sshwarden: released {instance_id}"),
            message: json!({
                "event": "released",
                "summary": format!("Instance {instance_id}: saved security groups restored ({} interface(s), {} skipped) and sshwarden tags removed.", r.interfaces.len(), r.skipped.len()),
                "instance_id": instance_id,
                "interfaces": r.interfaces.iter().map(|(i, g)| json!({"interface_id": i, "groups": g})).collect::<Vec<_>>(),
                "skipped": r.skipped.iter().map(|(i, why)| json!({"interface_id": i, "reason": why})).collect::<Vec<_>>(),
                "execution": EXECUTION,
                "request": request,
            }),
        },
        Ok(_) => Notification {
            subject: format!("sshwarden: nothing to release on {instance_id}"),
            message: json!({
                "event": "not-quarantined",
                "summary": format!("Instance {instance_id} has neither the sshwarden:quarantined tag nor saved groups: nothing was changed."),
                "instance_id": instance_id,
                "execution": EXECUTION,
                "request": request,
            }),
        },
        Err(e) => Notification {
            subject: "sshwarden: release FAILED".into(),
            message: json!({
                "event": "release-failed",
                "summary": format!("The release did not complete: {}. Tags of interfaces not yet restored are kept; run the release again once the cause is fixed.", e.error),
                "error": {"Error": e.error, "Cause": e.cause},
                "execution": EXECUTION,
                "request": request,
            }),
        },
    };
    if let Some(topic) = topic_arn {
        if let Err(e) = publish(&sns, topic, &n).await {
            anyhow::bail!(
                "{} (and the {} notification failed: {})",
                match &result {
                    Ok(r) => format!("{instance_id}: {}", r.event),
                    Err(e) => format!("release of {instance_id} failed: {}", e.cause),
                },
                n.event(),
                e.cause
            );
        }
    }
    result.map_err(|e| anyhow::anyhow!("release of {instance_id} failed: {}: {}", e.error, e.cause))
}

/// The ids among `ids` of groups that exist in `vpc` (a filter, not
/// GroupIds, so a deleted group is absent rather than an error).
async fn groups_in_vpc(
    ec2: &aws_sdk_ec2::Client,
    vpc: &str,
    filter: Filter,
) -> Result<Vec<String>, StepError> {
    let out = ec2
        .describe_security_groups()
        .filters(Filter::builder().name("vpc-id").values(vpc).build())
        .filters(filter)
        .send()
        .await
        .map_err(|e| step_error("DescribeSecurityGroups", e))?;
    Ok(out
        .security_groups()
        .iter()
        .filter(|g| g.vpc_id() == Some(vpc))
        .filter_map(|g| g.group_id().map(str::to_owned))
        .collect())
}

async fn restore(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> Result<Released, StepError> {
    let d = describe(ec2, instance_id).await?.ok_or_else(|| {
        StepError::permanent(
            "sshwarden.InstanceNotFound",
            "DescribeInstances returned no instance for this id",
        )
    })?;
    // DescribeTags like the release machine: the instance's own tag list is
    // the same data, but this keeps the two paths reading alike.
    let found = ec2
        .describe_tags()
        .filters(
            Filter::builder()
                .name("resource-id")
                .values(instance_id)
                .build(),
        )
        .filters(
            Filter::builder()
                .name("key")
                .values(format!("{TAG_SAVED_GROUPS}*"))
                .build(),
        )
        .send()
        .await
        .map_err(|e| step_error("DescribeTags", e))?;
    let mut saved: Vec<(String, String)> = found
        .tags()
        .iter()
        .filter_map(|t| Some((t.key()?.to_owned(), t.value().unwrap_or("").to_owned())))
        .filter(|(k, _)| k.starts_with(TAG_SAVED_GROUPS))
        .collect();
    saved.sort();
    if saved.is_empty() && !d.tags.contains_key(TAG_QUARANTINED) {
        return Ok(Released {
            event: "not-quarantined",
            interfaces: Vec::new(),
            skipped: Vec::new(),
        });
    }
    let vpc = d.vpc.clone().unwrap_or_default();
    let quarantine_groups = if vpc.is_empty() {
        Vec::new()
    } else {
        groups_in_vpc(
            ec2,
            &vpc,
            Filter::builder()
                .name(format!("tag:{TAG_ROLE}"))
                .values("quarantine")
                .build(),
        )
        .await?
    };
    // One interface's groups may span <key> and <key>:2 (more than
    // GROUPS_PER_TAG groups).
    let mut by_interface: std::collections::BTreeMap<String, (Vec<String>, Vec<String>)> =
        Default::default();
    for (key, value) in saved {
        let rest = &key[TAG_SAVED_GROUPS.len()..];
        let interface_id = rest.split(':').next().unwrap_or(rest).to_owned();
        let groups: Vec<String> = serde_json::from_str(&value).map_err(|e| {
            StepError::permanent(
                "States.Runtime",
                format!("tag {key} = {value:?} is not a JSON array of group ids: {e}"),
            )
        })?;
        let entry = by_interface.entry(interface_id).or_default();
        entry.0.push(key);
        entry.1.extend(groups);
    }
    let mut restored = Vec::new();
    let mut skipped = Vec::new();
    for (interface_id, (keys, groups)) in by_interface {
        let mut skip = |why: String| {
            warn!(instance = instance_id, interface = %interface_id, reason = %why, "release: interface skipped, its saved-groups tag kept");
            skipped.push((interface_id.clone(), why));
        };
        let Some(now) = d.interfaces.iter().find(|i| i.id == interface_id) else {
            skip(format!("{interface_id} is not attached to {instance_id}"));
            continue;
        };
        if !now.groups.iter().any(|g| quarantine_groups.contains(g)) {
            skip(format!(
                "{interface_id} is not in a quarantine group of {vpc} (it has {:?}): changed since the quarantine, left as it is",
                now.groups
            ));
            continue;
        }
        let existing = if groups.is_empty() {
            Vec::new()
        } else {
            groups_in_vpc(
                ec2,
                &vpc,
                Filter::builder()
                    .name("group-id")
                    .set_values(Some(groups.clone()))
                    .build(),
            )
            .await?
        };
        let keep: Vec<String> = groups
            .iter()
            .filter(|g| existing.contains(g))
            .cloned()
            .collect();
        if keep.is_empty() {
            skip(format!(
                "none of the saved groups {groups:?} exists in {vpc}: left in quarantine"
            ));
            continue;
        }
        if keep.len() < groups.len() {
            let gone: Vec<_> = groups.iter().filter(|g| !keep.contains(g)).collect();
            warn!(instance = instance_id, interface = %interface_id, ?gone, "release: saved groups that no longer exist in the VPC are left out");
            skipped.push((
                interface_id.clone(),
                format!("groups {gone:?} are not in {vpc} (deleted?): left out"),
            ));
        }
        ec2.modify_network_interface_attribute()
            .network_interface_id(&interface_id)
            .set_groups(Some(keep.clone()))
            .send()
            .await
            .map_err(|e| step_error("ModifyNetworkInterfaceAttribute", e))?;
        let mut forget = ec2.delete_tags().resources(instance_id);
        for key in &keys {
            forget = forget.tags(Tag::builder().key(key).build());
        }
        forget
            .send()
            .await
            .map_err(|e| step_error("DeleteTags", e))?;
        restored.push((interface_id, keep));
    }
    ec2.delete_tags()
        .resources(instance_id)
        .tags(Tag::builder().key(TAG_QUARANTINED).build())
        .tags(Tag::builder().key(TAG_REASON).build())
        .tags(Tag::builder().key(TAG_COMMAND_ID).build())
        .send()
        .await
        .map_err(|e| step_error("DeleteTags", e))?;
    Ok(Released {
        event: "released",
        interfaces: restored,
        skipped,
    })
}

#[cfg(test)]
#[path = "direct_tests.rs"]
mod moto_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn protection(require_opt_in: bool) -> Protection {
        Protection {
            vpc: "vpc-0a".into(),
            require_opt_in,
            untracked_group: "sg-0b".into(),
        }
    }

    fn instance(state: &str, vpc: &str, interfaces: usize, tags: &[&str]) -> Described {
        Described {
            state: state.into(),
            vpc: Some(vpc.into()),
            interfaces: (0..interfaces)
                .map(|n| Interface {
                    id: format!("eni-{n}"),
                    groups: vec!["sg-0c".into()],
                    attached_to: None,
                })
                .collect(),
            tags: tags
                .iter()
                .map(|t| ((*t).to_owned(), String::new()))
                .collect(),
        }
    }

    #[test]
    fn the_target_checks_refuse_what_must_not_be_reported_as_quarantined() {
        let p = protection(false);
        for state in ["terminated", "shutting-down", ""] {
            let c = verify(&instance(state, "vpc-0a", 1, &[]), &p);
            assert_eq!(c.passed, ["exists"], "{state}");
            assert!(c.refused.is_some_and(|r| r.contains("state")), "{state}");
        }
        for state in ACTIONABLE_STATES {
            assert_eq!(
                verify(&instance(state, "vpc-0a", 1, &[]), &p).refused,
                None,
                "{state}"
            );
        }
        let none = verify(&instance("running", "vpc-0a", 0, &[]), &p);
        assert!(none
            .refused
            .is_some_and(|r| r.contains("no network interface")));
        let elsewhere = verify(&instance("running", "vpc-0z", 2, &[]), &p);
        assert_eq!(
            elsewhere.passed,
            ["exists", "state running", "2 network interface(s)"]
        );
        assert!(elsewhere
            .refused
            .is_some_and(|r| r.contains("not the protected VPC vpc-0a")));
        let mut no_vpc = instance("running", "vpc-0a", 1, &[]);
        no_vpc.vpc = None;
        assert!(verify(&no_vpc, &p).refused.is_some());
        let ok = verify(&instance("running", "vpc-0a", 1, &[]), &p);
        assert_eq!(
            ok.passed.last().map(String::as_str),
            Some("opt-in not required")
        );
        let strict = protection(true);
        assert!(verify(&instance("running", "vpc-0a", 1, &[]), &strict)
            .refused
            .is_some_and(|r| r.contains(TAG_PROTECTED)));
        let opted = verify(&instance("running", "vpc-0a", 1, &[TAG_PROTECTED]), &strict);
        assert_eq!(opted.refused, None);
        assert_eq!(opted.passed.len(), 5);
    }

    #[test]
    fn security_group_ids() {
        assert!(is_security_group_id("sg-0123456789abcdef0"));
        assert!(is_security_group_id("sg-01234567"));
        assert!(!is_security_group_id("sg-0123456789ABCDEF0"));
        assert!(!is_security_group_id("sg-"));
        assert!(!is_security_group_id("i-0123456789abcdef0"));
    }

    #[test]
    fn saved_groups_use_the_state_machines_format() {
        // States.JsonToString of the group list: compact JSON.
        let v = serde_json::to_string(&["sg-0a", "sg-0b"]).unwrap_or_default();
        assert_eq!(v, r#"["sg-0a","sg-0b"]"#);
        assert_eq!(saved_key("eni-0abc"), "sshwarden:saved-groups:eni-0abc");
    }
}
