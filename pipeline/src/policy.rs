//! Policy: turns a fired threshold into a remediation command, or says why not.
//!
//! Allowlists always win (an allowlisted instance gets no command; events from
//! an allowlisted source CIDR are not counted at all, see [`Policy::source_allowed`]).
//! A per-subject cooldown stops one incident from issuing a command per rule and
//! per window. The blast-radius limit caps quarantines per period across what
//! this policy sees (one shard's engine); past it a quarantine becomes a held
//! notification. The same limit across the fleet is a second gate in the
//! service (`consumers`, a counter per period in DynamoDB). All
//! times are event times, so a replay decides the same way.

use std::collections::{HashMap, HashSet, VecDeque};

use ipnet::IpNet;
use serde::Serialize;

use crate::classify::Signal;
use crate::command::{Action, Command, Origin};
use crate::peer::Peer;
use crate::window::{Fired, Subject, SubjectKind, Threshold};

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
    pub fn validate(&self) -> Result<(), PolicyError> {
        if self.rules.len() > MAX_RULES {
            return Err(PolicyError::TooManyRules(self.rules.len()));
        }
        let mut names = HashSet::new();
        for r in &self.rules {
            let name = || r.name.clone();
            if r.name.is_empty()
                || !r
                    .name
                    .bytes()
                    .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
            {
                return Err(PolicyError::RuleNameCharacters(name()));
            }
            if r.name.len() > MAX_RULE_NAME {
                return Err(PolicyError::RuleNameTooLong(name()));
            }
            if !names.insert(&r.name) {
                return Err(PolicyError::DuplicateRuleName(name()));
            }
            if r.threshold == 0 {
                return Err(PolicyError::ZeroThreshold(name()));
            }
            if r.signals.is_empty() {
                return Err(PolicyError::NoSignals(name()));
            }
            if r.subject == SubjectKind::Source && r.action == Action::Quarantine {
                return Err(PolicyError::SourceRuleQuarantines(name()));
            }
        }
        if self.cooldown_ms < 0 {
            return Err(PolicyError::NegativeCooldown);
        }
        if let Some(b) = self.blast_radius {
            if b.period_ms <= 0 {
                return Err(PolicyError::BlastRadiusPeriod);
            }
        }
        Ok(())
    }
}

/// At most this many rules: a window keeps which rules fired as bits of a `u64`.
const MAX_RULES: usize = 64;
/// Rule names go into command ids, which Step Functions caps at 80 characters.
const MAX_RULE_NAME: usize = 24;

/// A policy configuration [`PolicyConfig::validate`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error("{0} rules configured; at most 64 are supported")]
    TooManyRules(usize),
    #[error("rule name {0:?} must be non-empty letters, digits, '-' or '_'")]
    RuleNameCharacters(String),
    #[error("rule name {0:?} is longer than 24 characters")]
    RuleNameTooLong(String),
    #[error("rule name {0:?} appears twice")]
    DuplicateRuleName(String),
    #[error("rule {0:?} has threshold 0; it must be at least 1")]
    ZeroThreshold(String),
    #[error("rule {0:?} counts no signals")]
    NoSignals(String),
    #[error("rule {0:?} counts by source but quarantines: a source is not an instance; use action \"notify\"")]
    SourceRuleQuarantines(String),
    #[error("cooldown must not be negative")]
    NegativeCooldown,
    #[error("blast radius period must be positive")]
    BlastRadiusPeriod,
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
    pub fn source_allowed(&self, source: &Peer) -> bool {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::window::Window;

    const I1: &str = "i-0123456789abcdef0";
    const I2: &str = "i-0fedcba9876543210";

    fn fired(instance: &str, threshold: usize, at: i64) -> Fired {
        Fired {
            threshold,
            subject: Subject::Instance(instance.into()),
            window: test_window(at),
            window_end_ms: at - at.rem_euclid(60_000) + 60_000,
            detected_at_ms: at,
        }
    }

    fn test_window(at: i64) -> Window {
        let mut fired = Vec::new();
        let mut store = crate::window::WindowStore::new(
            crate::window::WindowConfig::default(),
            vec![Threshold {
                subject: SubjectKind::Instance,
                signals: vec![Signal::InvalidUser],
                count: 1,
            }],
        );
        store.observe(
            &crate::window::Observation {
                instance: "x",
                source: None,
                signal: Signal::InvalidUser,
                counts_for_instance: true,
                time_ms: at,
                position: 1,
                line: "l",
            },
            None,
            &mut fired,
        );
        fired.remove(0).window
    }

    fn action(d: &Decision) -> Option<(Action, bool)> {
        match d {
            Decision::Command(c) => Some((c.action, c.held)),
            Decision::Suppressed { .. } => None,
        }
    }

    #[test]
    fn quarantines_an_instance_with_a_stable_id() {
        let mut p = Policy::new(PolicyConfig::default());
        let d = p.decide(&fired(I1, 0, 1_000), &Origin::default());
        let Decision::Command(c) = &d else {
            panic!("{d:?}")
        };
        assert_eq!(
            (c.action, c.held, c.rule.as_str()),
            (Action::Quarantine, false, "invalid-user")
        );
        assert_eq!(c.id, format!("sw1-i-{I1}-invalid-user-0"));
        assert_eq!(c.execution_name(), c.id);
    }

    #[test]
    fn an_allowlisted_instance_is_never_remediated() {
        let mut p = Policy::new(PolicyConfig {
            allow_instances: vec![I1.into()],
            ..PolicyConfig::default()
        });
        let d = p.decide(&fired(I1, 0, 1_000), &Origin::default());
        assert!(
            matches!(
                d,
                Decision::Suppressed {
                    reason: Suppression::AllowlistedInstance,
                    ..
                }
            ),
            "{d:?}"
        );
        assert!(action(&p.decide(&fired(I2, 0, 1_000), &Origin::default())).is_some());
    }

    #[test]
    fn an_allowlisted_source_is_not_counted() {
        let p = Policy::new(PolicyConfig {
            allow_sources: vec![
                "10.0.0.0/8".parse().unwrap(),
                "2001:db8::/32".parse().unwrap(),
            ],
            ..PolicyConfig::default()
        });
        assert!(!p.source_allowed(&Peer::parse("10.1.2.3").unwrap()));
        assert!(!p.source_allowed(&Peer::parse("::ffff:10.1.2.3").unwrap()));
        assert!(!p.source_allowed(&Peer::parse("2001:db8::7").unwrap()));
        assert!(p.source_allowed(&Peer::parse("11.1.2.3").unwrap()));
        assert!(p.source_allowed(&Peer::parse("example.com").unwrap()));
    }

    #[test]
    fn cooldown_per_instance() {
        let mut p = Policy::new(PolicyConfig::default());
        let o = Origin::default();
        assert!(action(&p.decide(&fired(I1, 0, 0), &o)).is_some());
        let d = p.decide(&fired(I1, 1, 60_000), &o);
        assert!(
            matches!(
                d,
                Decision::Suppressed {
                    reason: Suppression::Cooldown,
                    ..
                }
            ),
            "{d:?}"
        );
        assert!(
            action(&p.decide(&fired(I2, 1, 60_000), &o)).is_some(),
            "other instances are not held back"
        );
        assert!(
            action(&p.decide(&fired(I1, 0, 15 * 60_000), &o)).is_some(),
            "after the cooldown"
        );
    }

    #[test]
    fn blast_radius_holds_quarantines_past_the_limit() {
        let mut p = Policy::new(PolicyConfig {
            blast_radius: Some(BlastRadius {
                max_quarantines: 2,
                period_ms: 3_600_000,
            }),
            ..PolicyConfig::default()
        });
        let o = Origin::default();
        let ids: Vec<String> = (0..4).map(|i| format!("i-{i:017x}")).collect();
        let got: Vec<_> = ids
            .iter()
            .map(|i| action(&p.decide(&fired(i, 0, 1_000), &o)))
            .collect();
        assert_eq!(
            got,
            vec![
                Some((Action::Quarantine, false)),
                Some((Action::Quarantine, false)),
                Some((Action::Notify, true)),
                Some((Action::Notify, true))
            ]
        );
        // an hour later the budget is back
        let later = action(&p.decide(&fired("i-00000000000000009", 0, 3_700_000), &o));
        assert_eq!(later, Some((Action::Quarantine, false)));
    }

    #[test]
    fn never_quarantines_what_is_not_an_instance_id() {
        let mut p = Policy::new(PolicyConfig::default());
        for subject in [
            "ip-10-0-0-1",
            "i-xyz",
            "i-0123456789ABCDEF0",
            "../i-0123456789abcdef0",
        ] {
            let d = p.decide(&fired(subject, 0, 1_000), &Origin::default());
            assert_eq!(action(&d), Some((Action::Notify, true)), "{subject}");
        }
        assert!(is_ec2_instance_id("i-0123abcd"));
        assert!(is_ec2_instance_id(I1));
    }

    #[test]
    fn invalid_configs_are_refused() {
        let mut c = PolicyConfig::default();
        c.rules[0].threshold = 0;
        let e = c.validate().unwrap_err();
        assert_eq!(e, PolicyError::ZeroThreshold("invalid-user".into()));
        assert!(e.to_string().contains("threshold 0"), "{e}");
        let mut c = PolicyConfig::default();
        c.rules[1].name = c.rules[0].name.clone();
        let e = c.validate().unwrap_err();
        assert_eq!(e, PolicyError::DuplicateRuleName("invalid-user".into()));
        assert!(e.to_string().contains("appears twice"), "{e}");
        let mut c = PolicyConfig::default();
        c.rules[0].name = "a b".into();
        assert_eq!(
            c.validate(),
            Err(PolicyError::RuleNameCharacters("a b".into()))
        );
        assert!(PolicyConfig::default().validate().is_ok());
    }
}
