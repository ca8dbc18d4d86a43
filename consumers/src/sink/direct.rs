//! The `direct` sink: the quarantine state machine's steps
//! (infra/statemachines/quarantine.asl.json) as EC2 and SNS calls from the
//! worker, for accounts without Step Functions; and the release machine's
//! steps for `sshwarden release --direct`.
//!
//! Same tags, same notification shape, so the release machine and
//! `sshwarden release` restore an instance whichever way it was quarantined:
//! `sshwarden:reason`, `sshwarden:command-id`, one
//! `sshwarden:saved-groups:<eni-id>` per interface (a compact JSON array of
//! group ids), `sshwarden:quarantined` (RFC 3339 time), `sshwarden:exempt`.
//!
//! Order, chosen so a replay after a crash at any point is safe:
//! describe → (exempt | quarantined by this command: replay | by another:
//! already-quarantined) → tag reason and command id → save the groups of
//! every interface not saved yet (one CreateTags) → swap each interface
//! (skipped when it already has exactly the quarantine group) → publish →
//! tag `sshwarden:quarantined`. A saved-groups tag that exists is never
//! rewritten, so a replay after the swap cannot save the quarantine group
//! over the originals (the state machine only keeps a tag when the interface
//! shows exactly the quarantine group; this also covers moto, which shows
//! the old groups next to it). The quarantined tag comes last, after the
//! notification: a crash before it makes the replay redo the idempotent
//! steps and notify again (a duplicate), never lose the notification; once
//! it is written, a replay of the same command id is "already handled" and
//! publishes nothing.
//!
//! Errors: throttling, 5xx and transport errors are returned to the shard
//! reader, which retries with backoff and holds the checkpoint. An error that
//! retrying cannot fix (malformed or unknown instance, tag limit, access
//! denied) is published as a `failed` notification, as the state machine's
//! failure branch does, and the command counts as delivered: a terminated
//! instance must not stall its shard forever.

use std::collections::HashMap;

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_ec2::types::{Filter, Tag};
use aws_sdk_sns::types::MessageAttributeValue;
use serde_json::{json, Value};
use sshwarden_pipeline::command::{Action, Command};
use sshwarden_pipeline::policy::is_ec2_instance_id;
use tracing::{error, info};

use super::{Delivered, DeliveryError};

pub const TAG_EXEMPT: &str = "sshwarden:exempt";
pub const TAG_QUARANTINED: &str = "sshwarden:quarantined";
pub const TAG_REASON: &str = "sshwarden:reason";
pub const TAG_COMMAND_ID: &str = "sshwarden:command-id";
pub const TAG_SAVED_GROUPS: &str = "sshwarden:saved-groups:";

/// What a notification names as its execution (the state machine gives its
/// execution ARN).
const EXECUTION: &str = "sshwarden-direct";

pub struct DirectSink {
    ec2: aws_sdk_ec2::Client,
    sns: aws_sdk_sns::Client,
    quarantine_group: String,
    topic_arn: String,
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

/// Service error codes that retrying can fix.
const TRANSIENT_CODES: &[&str] = &[
    "Throttl",
    "RequestLimitExceeded",
    "InternalError",
    "InternalFailure",
    "ServiceUnavailable",
    "Unavailable",
    "RequestTimeout",
    "KMSThrottling",
];

fn step_error<E, R>(call: &str, e: SdkError<E, R>) -> StepError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    R: std::fmt::Debug + Send + Sync + 'static,
{
    let cause = format!(
        "{call}: {}",
        aws_smithy_types::error::display::DisplayErrorContext(&e)
    );
    match &e {
        SdkError::ServiceError(_) => {
            let code = e.code().unwrap_or("").to_owned();
            let transient = code.is_empty() || TRANSIENT_CODES.iter().any(|t| code.contains(t));
            StepError {
                error: if code.is_empty() {
                    "ServiceError".into()
                } else {
                    code
                },
                cause,
                transient,
            }
        }
        SdkError::ConstructionFailure(_) => StepError::permanent("ConstructionFailure", cause),
        _ => StepError {
            error: "Unreachable".into(),
            cause,
            transient: true,
        },
    }
}

/// One interface as the notification lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Interface {
    id: String,
    groups: Vec<String>,
}

/// What the inspection of the instance decided.
enum Plan {
    Exempt,
    /// Quarantined by this very command: a replay.
    Replay,
    AlreadyQuarantined,
    Quarantine {
        interfaces: Vec<Interface>,
        tags: HashMap<String, String>,
    },
}

struct Described {
    interfaces: Vec<Interface>,
    tags: HashMap<String, String>,
}

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

async fn describe(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> Result<Described, StepError> {
    let out = ec2
        .describe_instances()
        .instance_ids(instance_id)
        .send()
        .await
        .map_err(|e| step_error("DescribeInstances", e))?;
    let Some(instance) = out
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .find(|i| i.instance_id() == Some(instance_id))
    else {
        return Err(StepError::permanent(
            "sshwarden.InstanceNotFound",
            "DescribeInstances returned no instance for this id",
        ));
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
            })
        })
        .collect();
    Ok(Described { interfaces, tags })
}

impl DirectSink {
    pub fn new(
        sdk: &aws_config::SdkConfig,
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
        Ok(DirectSink {
            ec2: aws_sdk_ec2::Client::new(sdk),
            sns: aws_sdk_sns::Client::new(sdk),
            quarantine_group,
            topic_arn,
        })
    }

    pub async fn deliver(&self, c: &Command) -> Result<Delivered, DeliveryError> {
        let command = serde_json::to_value(c).map_err(|e| DeliveryError(e.to_string()))?;
        if c.held {
            let n = held_message(c, command);
            self.publish(&n).await?;
            return Ok(Delivered::New);
        }
        // A block has no target in this sink yet: it is announced like a notification.
        if c.action != Action::Quarantine {
            let n = notify_message(c, command);
            self.publish(&n).await?;
            return Ok(Delivered::New);
        }
        match self.quarantine(c, &command).await {
            Ok(Quarantined::Replay) => Ok(Delivered::AlreadyHandled),
            Ok(Quarantined::Skipped(n)) => {
                self.publish(&n).await?;
                Ok(Delivered::New)
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
                Ok(Delivered::Failed)
            }
        }
    }

    async fn quarantine(&self, c: &Command, command: &Value) -> Result<Quarantined, StepError> {
        let instance_id = match c.instance_id.as_deref() {
            Some(i) if is_ec2_instance_id(i) => i,
            _ => {
                return Err(StepError::permanent(
                    "sshwarden.InvalidCommand",
                    "the command needs string fields action ('quarantine' or 'notify'), id and rule, a boolean held if present, and for a quarantine an instance_id of the form i-<lowercase hex>",
                ))
            }
        };
        let d = describe(&self.ec2, instance_id).await?;
        let plan = if d.tags.contains_key(TAG_EXEMPT) {
            Plan::Exempt
        } else if d.tags.contains_key(TAG_QUARANTINED) {
            if d.tags.get(TAG_COMMAND_ID) == Some(&c.id) {
                Plan::Replay
            } else {
                Plan::AlreadyQuarantined
            }
        } else {
            Plan::Quarantine {
                interfaces: d.interfaces,
                tags: d.tags,
            }
        };
        let (interfaces, tags) = match plan {
            Plan::Exempt => return Ok(Quarantined::Skipped(exempt_message(c, command.clone()))),
            Plan::Replay => return Ok(Quarantined::Replay),
            Plan::AlreadyQuarantined => {
                return Ok(Quarantined::Skipped(already_quarantined_message(
                    c,
                    command.clone(),
                )))
            }
            Plan::Quarantine { interfaces, tags } => (interfaces, tags),
        };
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
        let isolated_only = |i: &Interface| i.groups == [self.quarantine_group.as_str()];
        let mut report = Vec::new();
        let mut save = self.ec2.create_tags().resources(instance_id);
        let mut to_save = 0;
        for i in &interfaces {
            let key = saved_key(&i.id);
            if tags.contains_key(&key) || isolated_only(i) {
                report.push(json!({"instance_id": instance_id, "interface_id": i.id, "groups": i.groups, "already_isolated": true}));
                continue;
            }
            let value = serde_json::to_string(&i.groups)
                .map_err(|e| StepError::permanent("States.Runtime", e.to_string()))?;
            save = save.tags(tag(&key, &value));
            to_save += 1;
            report.push(
                json!({"instance_id": instance_id, "interface_id": i.id, "groups": i.groups}),
            );
        }
        if to_save > 0 {
            save.send().await.map_err(|e| step_error("CreateTags", e))?;
        }
        // Each interface: an instance-level change fails on instances with several.
        for i in interfaces.iter().filter(|i| !isolated_only(i)) {
            self.ec2
                .modify_network_interface_attribute()
                .network_interface_id(&i.id)
                .groups(&self.quarantine_group)
                .send()
                .await
                .map_err(|e| step_error("ModifyNetworkInterfaceAttribute", e))?;
        }
        Ok(Quarantined::Isolated(quarantined_message(
            c,
            &self.quarantine_group,
            report,
            command.clone(),
        )))
    }

    async fn publish(&self, n: &Notification) -> Result<(), DeliveryError> {
        publish(&self.sns, &self.topic_arn, n)
            .await
            .map_err(|e| DeliveryError(format!("notification {}: {}", n.event(), e.cause)))
    }
}

enum Quarantined {
    Isolated(Notification),
    Skipped(Notification),
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
) -> Notification {
    let instance = c.instance_id.as_deref().unwrap_or("");
    instance_message(
        c,
        command,
        "quarantined",
        format!("quarantined {instance}"),
        format!("Instance {instance} was isolated in security group {group}"),
        json!({ "quarantine_group": group, "interfaces": interfaces }),
    )
}

fn exempt_message(c: &Command, command: Value) -> Notification {
    let instance = c.instance_id.as_deref().unwrap_or("");
    instance_message(
        c,
        command,
        "exempt",
        format!("not quarantined {instance} (exempt)"),
        format!("Instance {instance} carries the tag sshwarden:exempt: nothing was changed"),
        json!({}),
    )
}

fn already_quarantined_message(c: &Command, command: Value) -> Notification {
    let instance = c.instance_id.as_deref().unwrap_or("");
    instance_message(
        c,
        command,
        "already-quarantined",
        format!("already quarantined {instance}"),
        format!("Instance {instance} is already quarantined (tag sshwarden:quarantined): nothing was changed"),
        json!({}),
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
}

/// The release machine's steps: restore every interface from its
/// saved-groups tag, dropping each tag once its interface is restored (a
/// failure leaves the rest for the next release), then remove the other
/// sshwarden tags and notify (when a topic is given).
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
                "summary": format!("Instance {instance_id}: saved security groups restored and sshwarden tags removed."),
                "instance_id": instance_id,
                "interfaces": r.interfaces.iter().map(|(i, g)| json!({"interface_id": i, "groups": g})).collect::<Vec<_>>(),
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

async fn restore(ec2: &aws_sdk_ec2::Client, instance_id: &str) -> Result<Released, StepError> {
    let d = describe(ec2, instance_id).await?;
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
        });
    }
    let mut restored = Vec::new();
    for (key, value) in saved {
        let interface_id = key[TAG_SAVED_GROUPS.len()..].to_owned();
        let groups: Vec<String> = serde_json::from_str(&value).map_err(|e| {
            StepError::permanent(
                "States.Runtime",
                format!("tag {key} = {value:?} is not a JSON array of group ids: {e}"),
            )
        })?;
        if groups.is_empty() {
            return Err(StepError::permanent(
                "States.Runtime",
                format!("tag {key} holds no group"),
            ));
        }
        ec2.modify_network_interface_attribute()
            .network_interface_id(&interface_id)
            .set_groups(Some(groups.clone()))
            .send()
            .await
            .map_err(|e| step_error("ModifyNetworkInterfaceAttribute", e))?;
        ec2.delete_tags()
            .resources(instance_id)
            .tags(Tag::builder().key(&key).build())
            .send()
            .await
            .map_err(|e| step_error("DeleteTags", e))?;
        restored.push((interface_id, groups));
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
    })
}

#[cfg(test)]
mod tests {
    use super::*;

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
