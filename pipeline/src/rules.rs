//! The rule set: what each rule counts, over which window, by which subject,
//! and what it asks for; and the two built-in policies (`graduated`, the
//! default, and `seed`, the original sample's alarms). Pure data: the
//! windows evaluate rules, the policy turns what fired into commands.
//! The reasoning behind each default is in docs/detection.md.

use crate::classify::Signal;
use crate::command::Action;

/// Which kind of key a rule counts by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum SubjectKind {
    Instance,
    Source,
}

/// What a distinct-count condition counts the distinct values of.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    /// User names tried (either subject).
    Users,
    /// Instances attempted (source subjects).
    Instances,
    /// Source networks seen (instance subjects).
    Sources,
}

impl Dimension {
    pub const ALL: [Dimension; 3] = [Dimension::Users, Dimension::Instances, Dimension::Sources];

    pub fn as_str(self) -> &'static str {
        match self {
            Dimension::Users => "users",
            Dimension::Instances => "instances",
            Dimension::Sources => "sources",
        }
    }

    pub fn parse(name: &str) -> Option<Dimension> {
        Dimension::ALL.into_iter().find(|d| d.as_str() == name)
    }
}

/// When a rule fires, within one window of its subject.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// The signals' count reaches `at_least`.
    Count { signals: Vec<Signal>, at_least: u32 },
    /// Among events of the signals, `at_least` distinct values of `of`.
    Distinct {
        signals: Vec<Signal>,
        of: Dimension,
        at_least: u32,
    },
    /// An accepted login from a source network that had at least `failures`
    /// events of the signals in this window or the one before it (so the
    /// look-back is between one and two window sizes). Counted per source
    /// network; the command is about the instance that accepted the login.
    SuccessAfterFailures { signals: Vec<Signal>, failures: u32 },
}

impl Condition {
    pub fn signals(&self) -> &[Signal] {
        match self {
            Condition::Count { signals, .. }
            | Condition::Distinct { signals, .. }
            | Condition::SuccessAfterFailures { signals, .. } => signals,
        }
    }

    /// The number the condition compares against.
    pub fn threshold(&self) -> u32 {
        match self {
            Condition::Count { at_least, .. } | Condition::Distinct { at_least, .. } => *at_least,
            Condition::SuccessAfterFailures { failures, .. } => *failures,
        }
    }

    pub fn set_threshold(&mut self, n: u32) {
        match self {
            Condition::Count { at_least, .. } | Condition::Distinct { at_least, .. } => {
                *at_least = n
            }
            Condition::SuccessAfterFailures { failures, .. } => *failures = n,
        }
    }

    pub fn is_success_after_failures(&self) -> bool {
        matches!(self, Condition::SuccessAfterFailures { .. })
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub name: String,
    pub subject: SubjectKind,
    /// The rule's tumbling window; `None` takes the engine's default size
    /// (`[window] size_secs`).
    pub window_ms: Option<i64>,
    pub condition: Condition,
    pub action: Action,
}

/// The built-in rule sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PolicyName {
    /// Block attackers, notify on heavy attack, quarantine on compromise.
    #[default]
    Graduated,
    /// The original sample: quarantine an instance after 5 invalid users,
    /// invalid keys or disconnects in one window.
    Seed,
}

impl PolicyName {
    pub fn as_str(self) -> &'static str {
        match self {
            PolicyName::Graduated => "graduated",
            PolicyName::Seed => "seed",
        }
    }

    pub fn parse(name: &str) -> Option<PolicyName> {
        [PolicyName::Graduated, PolicyName::Seed]
            .into_iter()
            .find(|p| p.as_str() == name)
    }

    pub fn rules(self) -> Vec<Rule> {
        match self {
            PolicyName::Graduated => graduated(),
            PolicyName::Seed => seed(),
        }
    }
}

/// Signals that are a guess at a credential or an account: what brute-force,
/// spray and compromise rules count. Not scanner noise (`protocol`,
/// `disconnect`) nor rejected keys (`invalid_key`): a job with a stale key
/// and a port scanner are not password guessers.
pub const GUESSES: [Signal; 3] = [Signal::AuthFailure, Signal::InvalidUser, Signal::NotAllowed];

const MINUTE: i64 = 60_000;

/// The default policy. Where a number comes from (fail2ban 1.0 `jail.conf`,
/// sshguard 2.4 `sshguard.conf.sample`, CrowdSec hub `crowdsecurity/ssh-bf`
/// and `ssh-slow-bf`) is cited next to it here and in sshwarden.example.toml.
pub fn graduated() -> Vec<Rule> {
    let guesses = || GUESSES.to_vec();
    let rule = |name: &str, subject, minutes: i64, condition, action| Rule {
        name: name.to_owned(),
        subject,
        window_ms: Some(minutes * MINUTE),
        condition,
        action,
    };
    vec![
        // fail2ban: maxretry = 5 within findtime = 10m; CrowdSec ssh-bf: capacity 5.
        rule(
            "brute-force",
            SubjectKind::Source,
            10,
            Condition::Count {
                signals: guesses(),
                at_least: 5,
            },
            Action::Block,
        ),
        // CrowdSec ssh-slow-bf: capacity 10 (leak 60 s); over an hour here,
        // for attempts several minutes apart.
        rule(
            "slow-brute-force",
            SubjectKind::Source,
            60,
            Condition::Count {
                signals: guesses(),
                at_least: 10,
            },
            Action::Block,
        ),
        // fail2ban's recidive jail looks back one day (findtime = 1d);
        // sshguard blocks at an attack score of 30.
        rule(
            "persistent-brute-force",
            SubjectKind::Source,
            24 * 60,
            Condition::Count {
                signals: guesses(),
                at_least: 30,
            },
            Action::Block,
        ),
        // CrowdSec ssh-bf_user-enum: 5 distinct target users.
        rule(
            "user-enumeration",
            SubjectKind::Source,
            10,
            Condition::Distinct {
                signals: guesses(),
                of: Dimension::Users,
                at_least: 5,
            },
            Action::Block,
        ),
        // No host-based tool sees this: one address trying many instances.
        rule(
            "spray",
            SubjectKind::Source,
            60,
            Condition::Distinct {
                signals: guesses(),
                of: Dimension::Instances,
                at_least: 10,
            },
            Action::Block,
        ),
        // Many addresses, each below every source rule: a distributed attack
        // on one instance. People should know; blocking each is pointless.
        rule(
            "instance-under-attack",
            SubjectKind::Instance,
            10,
            Condition::Distinct {
                signals: guesses(),
                of: Dimension::Sources,
                at_least: 50,
            },
            Action::Notify,
        ),
        // Evidence of compromise: a login accepted from a network that had
        // failed fail2ban's maxretry (5) times within the hour before.
        rule(
            "compromise",
            SubjectKind::Source,
            60,
            Condition::SuccessAfterFailures {
                signals: guesses(),
                failures: 5,
            },
            Action::Quarantine,
        ),
    ]
}

/// The original sample's three alarms: 5 per instance per window, quarantining.
pub fn seed() -> Vec<Rule> {
    let rule = |name: &str, signal| Rule {
        name: name.to_owned(),
        subject: SubjectKind::Instance,
        window_ms: None,
        condition: Condition::Count {
            signals: vec![signal],
            at_least: 5,
        },
        action: Action::Quarantine,
    };
    vec![
        rule("invalid-user", Signal::InvalidUser),
        rule("invalid-key", Signal::InvalidKey),
        rule("disconnect", Signal::Disconnect),
    ]
}

/// The fleet stage's default rules: the graduated policy's source rules,
/// counted over every shard's partials (docs/fleet.md). Each mirrors a
/// shard rule of the same window and condition, so a fleet rule stays quiet
/// where one shard alone already met it (that shard's engine fired).
pub fn fleet() -> Vec<Rule> {
    graduated()
        .into_iter()
        .filter(|r| r.subject == SubjectKind::Source)
        .map(|mut r| {
            // Names go into command ids (at most 24 characters).
            r.name = match r.name.as_str() {
                "persistent-brute-force" => "fleet-persistent".to_owned(),
                other => format!("fleet-{other}"),
            };
            r
        })
        .collect()
}

/// At most this many rules: a window keeps which rules fired as bits of a `u64`.
pub const MAX_RULES: usize = 64;
/// Rule names go into command ids, which Step Functions caps at 80 characters.
pub const MAX_RULE_NAME: usize = 24;
/// Windows are at most a week: a window holds the checkpoint back, and
/// Kinesis keeps records for at most 365 days but 7 by default in our stack.
pub const MAX_WINDOW_MS: i64 = 7 * 24 * 60 * MINUTE;

/// A rule [`validate`] refuses; each names the rule and the field.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RuleError {
    #[error("{0} rules configured; at most 64 are supported")]
    TooManyRules(usize),
    #[error("rule name {0:?} must be non-empty letters, digits, '-' or '_'")]
    NameCharacters(String),
    #[error("rule name {0:?} is longer than 24 characters")]
    NameTooLong(String),
    #[error("rule name {0:?} appears twice")]
    DuplicateName(String),
    #[error("rule {0:?}: threshold 0; it must be at least 1")]
    ZeroThreshold(String),
    #[error("rule {0:?}: signals is empty")]
    NoSignals(String),
    #[error("rule {0:?}: window must be between 1 second and 7 days, in whole seconds")]
    Window(String),
    #[error("rule {0:?}: action \"quarantine\" needs subject \"instance\" or condition \"success_after_failures\" (a source is not an instance)")]
    SourceQuarantine(String),
    #[error(
        "rule {0:?}: action \"block\" needs subject \"source\" (an instance is not an address)"
    )]
    InstanceBlock(String),
    #[error("rule {0:?}: distinct {1:?} is not counted for subject {2:?} (instances per source, sources per instance, users per either)")]
    DistinctDimension(String, &'static str, &'static str),
    #[error("rule {0:?}: success_after_failures counts by subject \"source\"")]
    SuccessSubject(String),
}

pub fn validate(rules: &[Rule]) -> Result<(), RuleError> {
    if rules.len() > MAX_RULES {
        return Err(RuleError::TooManyRules(rules.len()));
    }
    let mut names = std::collections::HashSet::new();
    for r in rules {
        let name = || r.name.clone();
        if r.name.is_empty()
            || !r
                .name
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        {
            return Err(RuleError::NameCharacters(name()));
        }
        if r.name.len() > MAX_RULE_NAME {
            return Err(RuleError::NameTooLong(name()));
        }
        if !names.insert(&r.name) {
            return Err(RuleError::DuplicateName(name()));
        }
        if r.condition.threshold() == 0 {
            return Err(RuleError::ZeroThreshold(name()));
        }
        if r.condition.signals().is_empty() {
            return Err(RuleError::NoSignals(name()));
        }
        if let Some(w) = r.window_ms {
            if !(1000..=MAX_WINDOW_MS).contains(&w) || w % 1000 != 0 {
                return Err(RuleError::Window(name()));
            }
        }
        let subject = match r.subject {
            SubjectKind::Instance => "instance",
            SubjectKind::Source => "source",
        };
        match &r.condition {
            Condition::Distinct { of, .. } => {
                let ok = match of {
                    Dimension::Users => true,
                    Dimension::Instances => r.subject == SubjectKind::Source,
                    Dimension::Sources => r.subject == SubjectKind::Instance,
                };
                if !ok {
                    return Err(RuleError::DistinctDimension(name(), of.as_str(), subject));
                }
            }
            Condition::SuccessAfterFailures { .. } if r.subject != SubjectKind::Source => {
                return Err(RuleError::SuccessSubject(name()));
            }
            _ => {}
        }
        if r.action == Action::Quarantine
            && r.subject == SubjectKind::Source
            && !r.condition.is_success_after_failures()
        {
            return Err(RuleError::SourceQuarantine(name()));
        }
        if r.action == Action::Block && r.subject == SubjectKind::Instance {
            return Err(RuleError::InstanceBlock(name()));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_built_in_policies_are_valid_and_only_compromise_quarantines() {
        for p in [PolicyName::Graduated, PolicyName::Seed] {
            assert_eq!(validate(&p.rules()), Ok(()), "{p:?}");
            assert_eq!(PolicyName::parse(p.as_str()), Some(p));
        }
        let quarantining: Vec<_> = graduated()
            .into_iter()
            .filter(|r| r.action == Action::Quarantine)
            .collect();
        assert_eq!(quarantining.len(), 1);
        assert!(quarantining[0].condition.is_success_after_failures());
        assert_eq!(PolicyName::default(), PolicyName::Graduated);
    }

    #[test]
    fn the_fleet_rules_are_valid_source_rules() {
        let rules = fleet();
        assert_eq!(validate(&rules), Ok(()));
        assert_eq!(rules.len(), 6);
        assert!(rules.iter().all(|r| r.subject == SubjectKind::Source));
    }

    #[test]
    fn errors_name_the_rule_and_the_field() {
        let base = graduated();
        let with = |f: &dyn Fn(&mut Rule)| {
            let mut rules = base.clone();
            f(&mut rules[0]);
            validate(&rules).map_err(|e| e.to_string())
        };
        let e = with(&|r| r.condition.set_threshold(0)).unwrap_err();
        assert!(
            e.contains("\"brute-force\"") && e.contains("threshold 0"),
            "{e}"
        );
        let e = with(&|r| r.window_ms = Some(1500)).unwrap_err();
        assert!(e.contains("window"), "{e}");
        let e = with(&|r| r.action = Action::Quarantine).unwrap_err();
        assert!(e.contains("quarantine"), "{e}");
        let e = with(&|r| {
            r.subject = SubjectKind::Instance;
        })
        .unwrap_err();
        assert!(e.contains("block"), "{e}");
        let e = with(&|r| {
            r.condition = Condition::Distinct {
                signals: GUESSES.to_vec(),
                of: Dimension::Sources,
                at_least: 3,
            }
        })
        .unwrap_err();
        assert!(e.contains("distinct \"sources\""), "{e}");
        let e = with(&|r| r.name = "compromise".into()).unwrap_err();
        assert!(e.contains("appears twice"), "{e}");
        let e = with(&|r| {
            r.subject = SubjectKind::Instance;
            r.action = Action::Notify;
            r.condition = Condition::SuccessAfterFailures {
                signals: GUESSES.to_vec(),
                failures: 3,
            };
        })
        .unwrap_err();
        assert!(e.contains("success_after_failures"), "{e}");
    }
}
