//! Policy: turns a fired threshold into a remediation command, or says why not.
//!
//! Allowlists always win (an allowlisted instance gets no command; events from
//! an allowlisted source CIDR are not counted at all, see [`Policy::source_allowed`]).
//! A per-subject cooldown stops one incident from issuing a command per rule and
//! per window. The blast-radius limit caps quarantines per period across what
//! this policy sees; past it a quarantine becomes a held notification. All
//! times are event times, so a replay decides the same way.

use std::collections::{HashMap, HashSet, VecDeque};

use ipnet::IpNet;
use serde::Serialize;

use crate::classify::Signal;
use crate::command::Command;
use crate::source::Source;
use crate::window::{Fired, Subject, SubjectKind, Threshold};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Quarantine,
    Notify,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub subject: SubjectKind,
    pub signals: Vec<Signal>,
    pub threshold: u32,
    pub action: Action,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlastRadius {
    pub max_quarantines: u32,
    pub period_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    pub rules: Vec<Rule>,
    pub allow_instances: Vec<String>,
    pub allow_sources: Vec<IpNet>,
    pub cooldown_ms: i64,
    pub blast_radius: Option<BlastRadius>,
}

impl Default for PolicyConfig {
    /// The original sample's three alarms, 5 per window per instance, quarantining.
    fn default() -> Self {
        let rule = |name: &str, signal| Rule {
            name: name.to_owned(),
            subject: SubjectKind::Instance,
            signals: vec![signal],
            threshold: 5,
            action: Action::Quarantine,
        };
        PolicyConfig {
            rules: vec![
                rule("invalid-user", Signal::InvalidUser),
                rule("invalid-key", Signal::InvalidKey),
                rule("disconnect", Signal::Disconnect),
            ],
            allow_instances: Vec::new(),
            allow_sources: Vec::new(),
            cooldown_ms: 15 * 60_000,
            blast_radius: Some(BlastRadius {
                max_quarantines: 10,
                period_ms: 60 * 60_000,
            }),
        }
    }
}

impl PolicyConfig {
    pub fn thresholds(&self) -> Vec<Threshold> {
        self.rules
            .iter()
            .map(|r| Threshold {
                subject: r.subject,
                signals: r.signals.clone(),
                count: r.threshold,
            })
            .collect()
    }

    /// Checks what a config file cannot express in types.
    pub fn validate(&self) -> Result<(), String> {
        if self.rules.len() > 64 {
            return Err(format!(
                "{} rules configured; at most 64 are supported",
                self.rules.len()
            ));
        }
        let mut names = HashSet::new();
        for r in &self.rules {
            if r.name.is_empty()
                || !r
                    .name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            {
                return Err(format!(
                    "rule name {:?} must be non-empty letters, digits, '-' or '_'",
                    r.name
                ));
            }
            if r.name.len() > 24 {
                return Err(format!(
                    "rule name {:?} is longer than 24 characters",
                    r.name
                ));
            }
            if !names.insert(&r.name) {
                return Err(format!("rule name {:?} appears twice", r.name));
            }
            if r.threshold == 0 {
                return Err(format!(
                    "rule {:?} has threshold 0; it must be at least 1",
                    r.name
                ));
            }
            if r.signals.is_empty() {
                return Err(format!("rule {:?} counts no signals", r.name));
            }
            if r.subject == SubjectKind::Source && r.action == Action::Quarantine {
                return Err(format!(
                    "rule {:?} counts by source but quarantines: a source is not an instance; use action \"notify\"",
                    r.name
                ));
            }
        }
        if self.cooldown_ms < 0 {
            return Err("cooldown must not be negative".into());
        }
        if let Some(b) = self.blast_radius {
            if b.period_ms <= 0 {
                return Err("blast radius period must be positive".into());
            }
        }
        Ok(())
    }
}

/// Why a fired rule issued no command.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Suppression {
    AllowlistedInstance,
    Cooldown,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Command(Box<Command>),
    Suppressed {
        rule: String,
        subject: Subject,
        window_start_ms: i64,
        reason: Suppression,
    },
}

/// Where the evidence came from, for the command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub account: String,
    pub log_group: String,
    pub log_stream: String,
}

pub struct Policy {
    config: PolicyConfig,
    allow_instances: HashSet<String>,
    last_command: HashMap<Subject, i64>,
    recent_quarantines: VecDeque<i64>,
}

impl Policy {
    pub fn new(config: PolicyConfig) -> Self {
        Policy {
            allow_instances: config.allow_instances.iter().cloned().collect(),
            config,
            last_command: HashMap::new(),
            recent_quarantines: VecDeque::new(),
        }
    }

    pub fn config(&self) -> &PolicyConfig {
        &self.config
    }

    /// False for a source inside an allowlisted CIDR: its events are not counted.
    pub fn source_allowed(&self, source: &Source) -> bool {
        match source.ip() {
            Some(ip) => !self
                .config
                .allow_sources
                .iter()
                .any(|net| net.contains(&ip)),
            None => true,
        }
    }

    pub fn decide(&mut self, fired: &Fired, origin: &Origin) -> Decision {
        let rule = &self.config.rules[fired.threshold];
        let suppressed = |reason| Decision::Suppressed {
            rule: rule.name.clone(),
            subject: fired.subject.clone(),
            window_start_ms: fired.window.start_ms,
            reason,
        };
        if let Subject::Instance(id) = &fired.subject {
            if self.allow_instances.contains(&**id) {
                return suppressed(Suppression::AllowlistedInstance);
            }
        }
        let now = fired.detected_at_ms;
        if let Some(&last) = self.last_command.get(&fired.subject) {
            if now >= last && now - last < self.config.cooldown_ms {
                return suppressed(Suppression::Cooldown);
            }
        }
        let mut action = rule.action;
        let mut hold_reason = None;
        if action == Action::Quarantine {
            if let Subject::Instance(id) = &fired.subject {
                if !is_ec2_instance_id(id) {
                    action = Action::Notify;
                    hold_reason = Some("subject is not an EC2 instance id; notify only");
                }
            }
        }
        if action == Action::Quarantine {
            if let Some(b) = self.config.blast_radius {
                while self
                    .recent_quarantines
                    .front()
                    .is_some_and(|&t| t <= now - b.period_ms)
                {
                    self.recent_quarantines.pop_front();
                }
                if self.recent_quarantines.len() >= b.max_quarantines as usize {
                    action = Action::Notify;
                    hold_reason = Some("blast-radius limit reached; quarantine held for approval");
                } else {
                    self.recent_quarantines.push_back(now);
                }
            }
        }
        self.last_command.insert(fired.subject.clone(), now);
        let held = hold_reason.is_some() && rule.action == Action::Quarantine;
        Decision::Command(Box::new(Command::from_fired(
            fired,
            &rule.name,
            action,
            held,
            hold_reason,
            origin,
        )))
    }
}

/// `i-` and 8 or 17 lowercase hex digits.
pub fn is_ec2_instance_id(s: &str) -> bool {
    s.strip_prefix("i-").is_some_and(|hex| {
        (hex.len() == 8 || hex.len() == 17)
            && hex
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    })
}
