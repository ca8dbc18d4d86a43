//! The `block` action: deny the attacking source in the network ACLs of the
//! subnets it attacked, for a ban time that grows with each new ban of the
//! same prefix, recorded in one DynamoDB table ([`ledger`]) and written to
//! EC2 ([`acl`]). The direct sink runs it for `block` commands; the Step
//! Functions sink takes its decision only ([`Blocker::plan`]) and leaves the
//! writes to the block state machine, which keeps the same ledger; the
//! `sshwarden blocks` commands and each worker's sweep list, lift and sweep
//! what either wrote.
//!
//! Order of one block, chosen so a replay after a crash anywhere is safe:
//! refuse (no source, allowlisted, inside the VPC, no ACL) → escalate from
//! the prefix's record → per ACL: check the reserved range once, take a
//! slot (ours already, a free one, or evict the soonest-expiring holder) →
//! write the deny entry → notify → write the prefix's record last, with the
//! command id. A replay whose id is recorded changes nothing; a replay
//! before the record finds its slots and entries and only notifies again.
//!
//! Ban time: `ban_secs × factor^(n−1)` for the n-th ban of a prefix whose
//! previous ban started within the look-back, capped at `max_ban_secs`. A
//! command for a prefix whose ban is in force extends it to at least its
//! own ban time from now (more ACLs, same count): several rules fire on one
//! attack, and only a re-offence after the ban escalates.
//! The anchors: fail2ban's `bantime.increment` (ban time × 1, 2, 4, 8, …
//! with `bantime.factor`, capped by `bantime.maxtime`, counting earlier
//! bans in its database) and sshguard's block time, which grows ×1.5 per
//! repeated block.

pub mod acl;
pub mod ledger;

use std::collections::{BTreeMap, HashSet};
use std::sync::Mutex;

use aws_sdk_sns::types::MessageAttributeValue;
use ipnet::IpNet;
use serde_json::{json, Value};
use sshwarden_pipeline::command::Command;
use sshwarden_pipeline::policy::is_ec2_instance_id;
use sshwarden_pipeline::time::format_rfc3339_ms;

use crate::config::BlockSettings;
use acl::{Acls, Entry};
use ledger::{BanRecord, Ledger, Slot, Taken};

/// Why a step failed, and whether retrying may help.
#[derive(Debug)]
pub struct BlockError {
    pub error: String,
    pub cause: String,
    pub transient: bool,
}

impl BlockError {
    pub fn permanent(error: &str, cause: impl Into<String>) -> Self {
        BlockError {
            error: error.into(),
            cause: cause.into(),
            transient: false,
        }
    }

    /// DynamoDB trouble: the caller retries.
    fn ledger(e: anyhow::Error) -> Self {
        BlockError {
            error: "sshwarden.Ledger".into(),
            cause: format!("{e:#}"),
            transient: true,
        }
    }
}

/// A block that gave way to a newer one.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Eviction {
    pub cidr: String,
    pub acl: String,
    pub rule_number: i32,
    pub expires_at: i64,
}

/// What became of a block command.
#[derive(Debug)]
pub enum Outcome {
    Blocked {
        record: BanRecord,
        evicted: Vec<Eviction>,
        notification: Notification,
    },
    /// The command's id is recorded already: nothing changed.
    Replay,
    Refused {
        reason: String,
        notification: Notification,
    },
}

/// A subject and a message, as the notifications of the state machines.
#[derive(Debug, Clone)]
pub struct Notification {
    pub subject: String,
    pub message: Value,
}

/// A removed block, for `sweep` and `unblock`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Lifted {
    pub cidr: String,
    /// ACL id → rule number whose entry was deleted.
    pub removed: BTreeMap<String, i32>,
}

/// A ban decided by [`Blocker::prepare`], not yet placed.
struct Ban {
    cidr: IpNet,
    previous: Option<BanRecord>,
    placement: acl::Placement,
    count: u32,
    secs: i64,
    expires_at: i64,
    started: i64,
    /// The latest command ids of the prefix, this one last.
    command_ids: Vec<String>,
}

enum Prepared {
    Refused(String),
    Replay,
    Ban(Box<Ban>),
}

pub struct Blocker {
    settings: BlockSettings,
    allowlist: Vec<IpNet>,
    ledger: Ledger,
    acls: Acls,
    sns: Option<(aws_sdk_sns::Client, String)>,
    /// ACLs whose reserved range was checked.
    checked: Mutex<HashSet<String>>,
    /// Where evictions, failures and bans in force are counted (a worker's).
    metrics: Option<std::sync::Arc<crate::metrics::Metrics>>,
}

const EXECUTION: &str = "sshwarden-direct";

/// The reserved inbound rule numbers.
fn rule_numbers(s: &BlockSettings) -> std::ops::RangeInclusive<i32> {
    s.rule_first..=s.rule_first + s.rule_count - 1
}

fn rfc3339(s: i64) -> String {
    format_rfc3339_ms(s.saturating_mul(1000))
}

impl Blocker {
    pub fn new(
        settings: BlockSettings,
        ec2: aws_sdk_ec2::Client,
        dynamodb: aws_sdk_dynamodb::Client,
        sns: Option<(aws_sdk_sns::Client, String)>,
    ) -> anyhow::Result<Self> {
        settings.validate()?;
        Ok(Blocker {
            allowlist: settings.allowlist_nets()?,
            acls: Acls::new(ec2, settings.ports)
                .with_scope(settings.scope)
                .with_listed(settings.acls.clone()),
            ledger: Ledger::new(dynamodb, settings.table.clone()),
            settings,
            sns,
            checked: Mutex::new(HashSet::new()),
            metrics: None,
        })
    }

    /// Locates and writes only in `vpc` (the direct sink's protected VPC).
    pub fn with_protected_vpc(mut self, vpc: Option<String>) -> Self {
        self.acls = self.acls.with_protected_vpc(vpc);
        self
    }

    /// Counts into a worker's metrics (`sshwarden_blocks_active`,
    /// `sshwarden_block_evictions_total`, `sshwarden_block_failures_total`).
    pub fn with_metrics(mut self, metrics: std::sync::Arc<crate::metrics::Metrics>) -> Self {
        self.metrics = Some(metrics);
        self
    }

    /// Counts a block attempt that ended in `e`.
    pub fn count_failure(&self, e: &BlockError) {
        if let Some(m) = &self.metrics {
            m.block_failures
                .get_or_create(&crate::metrics::BlockErrorLabel {
                    error: e.error.clone(),
                })
                .inc();
        }
    }

    pub fn settings(&self) -> &BlockSettings {
        &self.settings
    }

    pub async fn ensure(&self) -> anyhow::Result<()> {
        self.ledger.ensure().await
    }

    /// What a `block` command asks for at `now_s`, decided before anything
    /// is written: refused, a replay, or the ban (its count, length, expiry)
    /// with where the attacked instances are.
    async fn prepare(&self, c: &Command, now_s: i64) -> Result<Prepared, BlockError> {
        let Some(cidr) = c
            .source
            .as_deref()
            .and_then(|s| s.parse::<IpNet>().ok())
            .map(|n| n.trunc())
        else {
            return Ok(Prepared::Refused(
                "the command names no source CIDR to block".into(),
            ));
        };
        // The engine groups sources by /32 and /64 unless configured
        // otherwise; anything this wide is a misconfiguration, not an attacker.
        let too_wide = match cidr {
            IpNet::V4(n) => n.prefix_len() < 16,
            IpNet::V6(n) => n.prefix_len() < 32,
        };
        if too_wide {
            return Ok(Prepared::Refused(format!(
                "{cidr} is wider than /16 (IPv4) or /32 (IPv6): not blocked"
            )));
        }
        if let Some(a) = self
            .allowlist
            .iter()
            .find(|a| a.contains(&cidr) || cidr.contains(*a))
        {
            return Ok(Prepared::Refused(format!(
                "{cidr} overlaps the allowlisted {a}"
            )));
        }
        let previous = self
            .ledger
            .record(&cidr.to_string())
            .await
            .map_err(BlockError::ledger)?;
        if previous
            .as_ref()
            .is_some_and(|r| r.last_command_id == c.id || r.command_ids.contains(&c.id))
        {
            return Ok(Prepared::Replay);
        }
        let instances: Vec<String> = c
            .instances
            .iter()
            .filter(|i| is_ec2_instance_id(i))
            .cloned()
            .collect();
        let placement = self.acls.locate(&instances).await?;
        if let Some(v) = placement
            .vpc_cidrs
            .iter()
            .find(|v| v.contains(&cidr) || cidr.contains(*v))
        {
            return Ok(Prepared::Refused(format!(
                "{cidr} overlaps the VPC's own range {v}: an internal address is never blocked"
            )));
        }
        // A ban in force is extended, not escalated: several rules fire on
        // one attack (brute force, then slow brute force, enumeration), and
        // the attacker may try other subnets while banned. Escalation is
        // for a re-offence after a ban ended (or was evicted).
        let in_force = previous
            .as_ref()
            .filter(|r| r.expires_at > now_s && !r.acls.is_empty() && r.ban_count > 0);
        let (count, secs, expires_at, started) = match in_force {
            Some(r) => (
                r.ban_count,
                r.ban_secs,
                r.expires_at.max(now_s + r.ban_secs),
                r.last_ban_at,
            ),
            None => {
                let (count, secs) = self.settings.escalate(
                    previous.as_ref().map(|r| (r.ban_count, r.last_ban_at)),
                    now_s,
                );
                (count, secs, now_s + secs, now_s)
            }
        };
        let mut command_ids: Vec<String> = previous
            .as_ref()
            .map(|r| r.command_ids.clone())
            .unwrap_or_default();
        command_ids.push(c.id.clone());
        let skip = command_ids.len().saturating_sub(ledger::KEPT_COMMAND_IDS);
        Ok(Prepared::Ban(Box::new(Ban {
            cidr,
            previous,
            placement,
            count,
            secs,
            expires_at,
            started,
            command_ids: command_ids.split_off(skip),
        })))
    }

    /// The input of the block state machine for `c` at `now_s`: the command
    /// with the worker's decision in `block` (infra/statemachines/block.asl.json
    /// re-checks what a forged input could abuse), or `None` for a replay.
    pub async fn plan(&self, c: &Command, now_s: i64) -> Result<Option<Value>, BlockError> {
        let block = match self.prepare(c, now_s).await? {
            Prepared::Replay => return Ok(None),
            Prepared::Refused(reason) => json!({ "refused": reason }),
            Prepared::Ban(b) => {
                let mut plan = json!({
                    "cidr": b.cidr.to_string(),
                    "scope": match self.settings.scope {
                        crate::config::AclScope::Subnets => "subnets",
                        crate::config::AclScope::Vpc => "vpc",
                    },
                    "ban_count": b.count,
                    "ban_secs": b.secs,
                    "last_ban_at": b.started,
                    "expires_at": b.expires_at,
                    "expires": rfc3339(b.expires_at),
                    "purge_at": b.expires_at + self.settings.lookback_secs,
                    "command_ids": b.command_ids,
                });
                if !self.settings.acls.is_empty() {
                    plan["scope"] = json!("acls");
                    plan["acls"] = json!(self.settings.acls);
                }
                plan
            }
        };
        let mut input = command_value(c);
        if let Some(o) = input.as_object_mut() {
            o.insert("block".into(), block);
        }
        Ok(Some(input))
    }

    /// Runs a `block` command at `now_s` (epoch seconds).
    pub async fn block(&self, c: &Command, now_s: i64) -> Result<Outcome, BlockError> {
        let b = match self.prepare(c, now_s).await? {
            Prepared::Replay => return Ok(Outcome::Replay),
            Prepared::Refused(reason) => return Ok(self.refused(c, &reason)),
            Prepared::Ban(b) => b,
        };
        let Ban {
            cidr,
            previous,
            placement,
            count,
            secs,
            expires_at,
            started,
            command_ids,
        } = *b;
        let mut targets = placement.acls.clone();
        if let Some(r) = previous.as_ref().filter(|r| r.expires_at > now_s) {
            targets.extend(r.acls.keys().cloned());
        }
        if targets.is_empty() {
            return Ok(self.refused(
                c,
                &format!(
                    "no network ACL found for the attacked instances {:?}",
                    c.instances
                ),
            ));
        }
        let mut placed = BTreeMap::new();
        let mut evicted = Vec::new();
        for acl in &targets {
            let known = previous.as_ref().and_then(|r| r.acls.get(acl)).copied();
            let (number, gone) = self.place(acl, &cidr, &c.id, expires_at, known).await?;
            let entries = self.acls.entries(acl).await?;
            let existing = entries.get(&number);
            if let Some(e) = existing.filter(|e| !(e.deny && e.cidr == Some(cidr))) {
                // Replaced only if sshwarden wrote it: its prefix's record
                // names this slot (an evicted block, or one whose eviction
                // a crash interrupted). Anything else appeared in the range
                // after it was checked and is left alone.
                let writer = match e.cidr {
                    Some(other) => self
                        .ledger
                        .record(&other.to_string())
                        .await
                        .map_err(BlockError::ledger)?,
                    None => None,
                };
                if writer.is_none_or(|r| r.acls.get(acl) != Some(&number)) {
                    self.ledger
                        .free(acl, number, &cidr.to_string())
                        .await
                        .map_err(BlockError::ledger)?;
                    if let Ok(mut c) = self.checked.lock() {
                        c.remove(acl);
                    }
                    return Err(BlockError::permanent(
                        "sshwarden.ForeignRuleInRange",
                        format!("{acl}: rule {number} in the reserved range was not written by sshwarden; free the range or configure another"),
                    ));
                }
            }
            self.acls.deny(acl, number, &cidr, existing).await?;
            if let Some(g) = gone {
                self.ledger
                    .forget_acl(&g.cidr, acl)
                    .await
                    .map_err(BlockError::ledger)?;
                evicted.push(g);
            }
            placed.insert(acl.clone(), number);
        }
        let record = BanRecord {
            cidr: cidr.to_string(),
            acls: placed,
            expires_at,
            ban_count: count,
            last_ban_at: started,
            ban_secs: secs,
            last_command_id: c.id.clone(),
            command_ids,
            rule: c.rule.clone(),
        };
        let notification = blocked_message(c, &record, &evicted);
        self.publish(&notification).await?;
        self.ledger
            .write_ban(&record, expires_at + self.settings.lookback_secs)
            .await
            .map_err(BlockError::ledger)?;
        Ok(Outcome::Blocked {
            record,
            evicted,
            notification,
        })
    }

    /// Takes a rule number of `acl` for `cidr`: the one it holds, the lowest
    /// free one, or the soonest-expiring holder's (evicted, returned).
    async fn place(
        &self,
        acl: &str,
        cidr: &IpNet,
        command_id: &str,
        expires_at: i64,
        known: Option<i32>,
    ) -> Result<(i32, Option<Eviction>), BlockError> {
        self.check_range(acl).await?;
        let mine = |rule_number| Slot {
            acl: acl.to_owned(),
            rule_number,
            cidr: cidr.to_string(),
            command_id: command_id.to_owned(),
            expires_at,
        };
        if let Some(n) = known.filter(|n| rule_numbers(&self.settings).contains(n)) {
            if self
                .ledger
                .take(&mine(n), None)
                .await
                .map_err(BlockError::ledger)?
                == Taken::Ours
            {
                return Ok((n, None));
            }
        }
        // Rounds: a slot freed or evicted by someone else between the reads
        // is found on the next one.
        for _ in 0..3 {
            let mut held = Vec::new();
            for n in rule_numbers(&self.settings) {
                match self
                    .ledger
                    .take(&mine(n), None)
                    .await
                    .map_err(BlockError::ledger)?
                {
                    Taken::Ours => return Ok((n, None)),
                    Taken::Held(s) => held.push(s),
                }
            }
            let Some(victim) = held
                .into_iter()
                .min_by_key(|s| (s.expires_at, s.rule_number))
            else {
                continue;
            };
            if self
                .ledger
                .take(&mine(victim.rule_number), Some(&victim))
                .await
                .map_err(BlockError::ledger)?
                == Taken::Ours
            {
                let n = victim.rule_number;
                return Ok((
                    n,
                    Some(Eviction {
                        cidr: victim.cidr,
                        acl: acl.to_owned(),
                        rule_number: n,
                        expires_at: victim.expires_at,
                    }),
                ));
            }
        }
        Err(BlockError {
            error: "sshwarden.NoSlot".into(),
            cause: format!("no rule number of {acl} could be taken in three rounds"),
            transient: true,
        })
    }

    /// Once per ACL: every allow rule lies above the reserved range (or the
    /// deny would come too late), and every entry inside it is one the
    /// ledger placed.
    async fn check_range(&self, acl: &str) -> Result<(), BlockError> {
        if self.checked.lock().is_ok_and(|c| c.contains(acl)) {
            return Ok(());
        }
        let entries = self.acls.entries(acl).await?;
        let range = rule_numbers(&self.settings);
        if let Some(e) = entries
            .values()
            .find(|e| !e.deny && e.rule_number <= *range.end())
        {
            return Err(BlockError::permanent(
                "sshwarden.RangeNotBelowAllowRules",
                format!(
                    "{acl}: allow rule {} is not above the reserved range {}..={}, so a deny there would not take effect",
                    e.rule_number,
                    range.start(),
                    range.end()
                ),
            ));
        }
        for e in entries.values().filter(|e| range.contains(&e.rule_number)) {
            let slot = self
                .ledger
                .slot(acl, e.rule_number)
                .await
                .map_err(BlockError::ledger)?;
            // A slot names the number as sshwarden's even while an eviction
            // is replacing the entry of its previous holder.
            if slot.is_none() {
                return Err(BlockError::permanent(
                    "sshwarden.ForeignRuleInRange",
                    format!(
                        "{acl}: rule {} in the reserved range {}..={} was not written by sshwarden; free the range or configure another",
                        e.rule_number,
                        range.start(),
                        range.end()
                    ),
                ));
            }
        }
        if let Ok(mut c) = self.checked.lock() {
            c.insert(acl.to_owned());
        }
        Ok(())
    }

    /// Removes the entries of every ban that ended by `now_s`. Idempotent.
    /// With metrics, sets the count of bans still in force.
    pub async fn sweep(&self, now_s: i64) -> Result<Vec<Lifted>, BlockError> {
        let records = self.ledger.records().await.map_err(BlockError::ledger)?;
        if let Some(m) = &self.metrics {
            let active = records
                .iter()
                .filter(|r| !r.acls.is_empty() && r.expires_at > now_s)
                .count();
            m.blocks_active
                .set(i64::try_from(active).unwrap_or(i64::MAX));
        }
        let mut lifted = Vec::new();
        for r in records
            .into_iter()
            .filter(|r| !r.acls.is_empty() && r.expires_at <= now_s)
        {
            lifted.push(self.lift(&r, r.expires_at).await?);
        }
        Ok(lifted)
    }

    /// Lifts the ban of `cidr` now, whatever its expiry.
    pub async fn unblock(&self, cidr: &str, now_s: i64) -> Result<Option<Lifted>, BlockError> {
        let cidr = cidr
            .parse::<IpNet>()
            .map_err(|e| BlockError::permanent("sshwarden.InvalidCidr", format!("{cidr}: {e}")))?
            .trunc();
        let record = self
            .ledger
            .record(&cidr.to_string())
            .await
            .map_err(BlockError::ledger)?;
        match record.filter(|r| !r.acls.is_empty()) {
            Some(r) => Ok(Some(self.lift(&r, now_s.min(r.expires_at)).await?)),
            None => Ok(None),
        }
    }

    async fn lift(&self, r: &BanRecord, ended_at: i64) -> Result<Lifted, BlockError> {
        let cidr = r.cidr.parse::<IpNet>().map_err(|e| {
            BlockError::permanent("sshwarden.InvalidCidr", format!("{}: {e}", r.cidr))
        })?;
        let mut removed = BTreeMap::new();
        for (acl, &n) in &r.acls {
            let slot = self.ledger.slot(acl, n).await.map_err(BlockError::ledger)?;
            // Evicted meanwhile: the entry belongs to its new holder.
            if slot.is_some_and(|s| s.cidr == r.cidr) {
                if self.acls.remove(acl, n, &cidr).await? {
                    removed.insert(acl.clone(), n);
                }
                self.ledger
                    .free(acl, n, &r.cidr)
                    .await
                    .map_err(BlockError::ledger)?;
            }
        }
        self.ledger
            .end_ban(&r.cidr, r.expires_at, ended_at)
            .await
            .map_err(BlockError::ledger)?;
        Ok(Lifted {
            cidr: r.cidr.clone(),
            removed,
        })
    }

    /// Every ban in the ledger (in force or within the look-back).
    pub async fn list(&self) -> anyhow::Result<Vec<BanRecord>> {
        self.ledger.records().await
    }

    fn refused(&self, c: &Command, reason: &str) -> Outcome {
        Outcome::Refused {
            reason: reason.to_owned(),
            notification: refused_message(c, reason),
        }
    }

    pub async fn publish(&self, n: &Notification) -> Result<(), BlockError> {
        let Some((sns, topic)) = &self.sns else {
            return Ok(());
        };
        let event = n.message.get("event").and_then(Value::as_str).unwrap_or("");
        let attr = MessageAttributeValue::builder()
            .data_type("String")
            .string_value(event)
            .build()
            .map_err(|e| BlockError::permanent("States.Runtime", e.to_string()))?;
        sns.publish()
            .topic_arn(topic)
            .subject(&n.subject)
            .message(n.message.to_string())
            .message_attributes("event", attr)
            .send()
            .await
            .map_err(|e| BlockError {
                error: "Publish".into(),
                cause: format!(
                    "Publish: {}",
                    aws_smithy_types::error::display::DisplayErrorContext(&e)
                ),
                transient: true,
            })?;
        Ok(())
    }
}

fn command_value(c: &Command) -> Value {
    serde_json::to_value(c).unwrap_or(Value::Null)
}

fn blocked_message(c: &Command, r: &BanRecord, evicted: &[Eviction]) -> Notification {
    let until = rfc3339(r.expires_at);
    let mut summary = format!(
        "{} denied inbound in {} until {until} (ban {} of this prefix, {} s; rule {}, command {}).",
        r.cidr,
        r.acls
            .iter()
            .map(|(a, n)| format!("{a} rule {n}"))
            .collect::<Vec<_>>()
            .join(", "),
        r.ban_count,
        r.ban_secs,
        c.rule,
        c.id
    );
    for e in evicted {
        summary.push_str(&format!(
            " Evicted {} from {} rule {} (it was to expire {}).",
            e.cidr,
            e.acl,
            e.rule_number,
            rfc3339(e.expires_at)
        ));
    }
    Notification {
        subject: format!("sshwarden: blocked {}", r.cidr),
        message: json!({
            "event": "blocked",
            "summary": summary,
            "source": r.cidr,
            "acls": r.acls.iter().map(|(a, n)| json!({"network_acl_id": a, "rule_number": n})).collect::<Vec<_>>(),
            "expires_at": until,
            "ban_count": r.ban_count,
            "ban_secs": r.ban_secs,
            "evicted": evicted.iter().map(|e| json!({"source": e.cidr, "network_acl_id": e.acl, "rule_number": e.rule_number, "expires_at": rfc3339(e.expires_at)})).collect::<Vec<_>>(),
            "rule": c.rule,
            "command_id": c.id,
            "execution": EXECUTION,
            "command": command_value(c),
        }),
    }
}

fn refused_message(c: &Command, reason: &str) -> Notification {
    Notification {
        subject: format!(
            "sshwarden: not blocked {}",
            c.source.as_deref().unwrap_or("")
        ),
        message: json!({
            "event": "block-refused",
            "summary": format!("The block of {} was refused: {reason} (rule {}, command {}).", c.source.as_deref().unwrap_or("?"), c.rule, c.id),
            "reason": reason,
            "rule": c.rule,
            "command_id": c.id,
            "execution": EXECUTION,
            "command": command_value(c),
        }),
    }
}

/// The notification of a lifted ban: `how` says why ("expired", "by hand").
pub fn unblocked_message(l: &Lifted, how: &str) -> Notification {
    Notification {
        subject: format!("sshwarden: unblocked {} ({how})", l.cidr),
        message: json!({
            "event": "unblocked",
            "summary": format!("The ban of {} was lifted ({how}); entries removed: {}.", l.cidr,
                l.removed.iter().map(|(a, n)| format!("{a} rule {n}")).collect::<Vec<_>>().join(", ")),
            "source": l.cidr,
            "removed": l.removed,
            "how": how,
            "execution": EXECUTION,
        }),
    }
}

/// Lifts ended bans every `period` until the process ends. Every worker
/// may run one: each step of a lift is conditional, so two sweepers at once
/// remove each entry once and a failed round is redone by the next.
pub fn spawn_sweeper(blocker: std::sync::Arc<Blocker>, period: std::time::Duration) {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            match blocker.sweep(crate::clock::now_ms() / 1000).await {
                Ok(lifted) => {
                    for l in &lifted {
                        tracing::info!(source = %l.cidr, removed = ?l.removed, "ban ended; entries removed");
                        if let Err(e) = blocker.publish(&unblocked_message(l, "expired")).await {
                            tracing::warn!(source = %l.cidr, error = %e.cause, "unblocked notification failed");
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e.error, cause = %e.cause, "block sweep failed; the next round retries")
                }
            }
        }
    });
}

/// The notification of a block that failed for good.
pub fn failed_message(c: &Command, e: &BlockError) -> Notification {
    Notification {
        subject: "sshwarden: block FAILED".into(),
        message: json!({
            "event": "block-failed",
            "summary": format!("The block of {} did not complete: {}.", c.source.as_deref().unwrap_or("?"), e.error),
            "error": {"Error": e.error, "Cause": e.cause},
            "rule": c.rule,
            "command_id": c.id,
            "execution": EXECUTION,
            "command": command_value(c),
        }),
    }
}

/// An entry in the reserved range, for tests.
pub fn denies(entries: &BTreeMap<i32, Entry>, cidr: &str) -> Vec<i32> {
    entries
        .values()
        .filter(|e| e.deny && e.cidr.map(|c| c.to_string()).as_deref() == Some(cidr))
        .map(|e| e.rule_number)
        .collect()
}

impl Blocker {
    /// The direct sink's delivery of a `block` command: blocked, or refused
    /// (with a `block-refused` notification), or a replay. A failure that
    /// retrying cannot fix (a foreign rule in the range, a missing ACL) is
    /// notified as `block-failed` and counts as delivered, like the
    /// quarantine's failure branch; anything else is retried by the caller.
    pub async fn deliver(&self, c: &Command) -> Result<super::Delivered, super::DeliveryError> {
        use super::{Delivered, DeliveryError};
        let now_s = crate::clock::now_ms() / 1000;
        let delivery = |e: BlockError| {
            DeliveryError(format!(
                "block of {}: {} ({})",
                c.subject(),
                e.error,
                e.cause
            ))
        };
        match self.block(c, now_s).await {
            Ok(Outcome::Replay) => Ok(Delivered::AlreadyHandled),
            Ok(Outcome::Blocked {
                record, evicted, ..
            }) => {
                if let Some(m) = &self.metrics {
                    m.block_evictions.inc_by(evicted.len() as u64);
                }
                tracing::info!(id = %c.id, source = %record.cidr, acls = ?record.acls, expires_at = record.expires_at,
                    ban_count = record.ban_count, evicted = evicted.len(), "source blocked");
                Ok(Delivered::New)
            }
            Ok(Outcome::Refused {
                reason,
                notification,
            }) => {
                self.publish(&notification).await.map_err(delivery)?;
                tracing::warn!(id = %c.id, source = c.subject(), %reason, "block refused");
                Ok(Delivered::New)
            }
            Err(e) if e.transient => {
                self.count_failure(&e);
                Err(delivery(e))
            }
            Err(e) => {
                self.count_failure(&e);
                self.publish(&failed_message(c, &e))
                    .await
                    .map_err(delivery)?;
                tracing::error!(id = %c.id, source = c.subject(), error = %e.error, cause = %e.cause,
                    "block failed and cannot succeed on retry; 'block-failed' notification published");
                Ok(Delivered::Failed(format!("block: {}", e.error)))
            }
        }
    }
}
