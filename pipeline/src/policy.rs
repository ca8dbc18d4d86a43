//! Policy: turns a fired threshold into a remediation command, or says why not.
//!
//! Allowlists always win (an allowlisted instance gets no command; events from
//! an allowlisted source CIDR are not counted at all, see [`Policy::source_allowed`]).
//! A cooldown per subject and action stops one incident from issuing a command
//! per rule and per window (a weaker action never delays a stronger one). The
//! blast-radius limit caps quarantines per period across what this policy
//! sees (one shard's engine); past it a quarantine becomes a held
//! notification. The same limit across the fleet is a second gate in the
//! service (`consumers`, a counter per period in DynamoDB). All
//! times are event times, so a replay decides the same way.

use std::collections::{HashMap, HashSet, VecDeque};

use ipnet::IpNet;
use serde::Serialize;

use crate::command::{Action, Command, Origin};
use crate::peer::{Peer, PeerNet};
pub use crate::rules::Rule;
use crate::rules::{PolicyName, RuleError};
use crate::window::{Fired, Subject};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BlastRadius {
    pub max_quarantines: u32,
    pub period_ms: i64,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyConfig {
    /// The built-in rule set the rules came from (`rules` may replace them).
    pub name: PolicyName,
    pub rules: Vec<Rule>,
    pub allow_instances: Vec<String>,
    pub allow_sources: Vec<IpNet>,
    pub cooldown_ms: i64,
    pub blast_radius: Option<BlastRadius>,
}

impl Default for PolicyConfig {
    /// The graduated policy: block attackers, notify on heavy attack,
    /// quarantine on evidence of compromise.
    fn default() -> Self {
        PolicyConfig::named(PolicyName::default())
    }
}

impl PolicyConfig {
    /// A built-in policy with the default allowlists, cooldown and budget.
    pub fn named(name: PolicyName) -> Self {
        PolicyConfig {
            name,
            rules: name.rules(),
            allow_instances: Vec::new(),
            allow_sources: Vec::new(),
            cooldown_ms: 15 * 60_000,
            blast_radius: Some(BlastRadius {
                max_quarantines: 10,
                period_ms: 60 * 60_000,
            }),
        }
    }

    /// Checks what a config file cannot express in types.
    pub fn validate(&self) -> Result<(), PolicyError> {
        crate::rules::validate(&self.rules)?;
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

/// A policy configuration [`PolicyConfig::validate`] refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    #[error(transparent)]
    Rule(#[from] RuleError),
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
    /// Per subject and action: a weaker action's cooldown never holds back
    /// a stronger one (a notification about an instance must not delay its
    /// quarantine). Subjects are as many as the sources an attacker owns:
    /// pruned of what no cooldown can hold any more, see [`Policy::forget`].
    //
    // std's SipHash, not foldhash like the window store: a third table
    // hashing `PeerNet` with foldhash made the compiler stop inlining that
    // hash into the store's lookups (the address flood's `scan` ran 4.3%
    // more instructions); a cooldown is looked up once per fired rule.
    last_command: HashMap<(Subject, Action), i64>,
    /// `last_command`'s size after its last pruning.
    kept: usize,
    /// The newest command time seen.
    newest_ms: i64,
    recent_quarantines: VecDeque<i64>,
}

/// `last_command` is not pruned below this many entries.
const KEEP_AT_LEAST: usize = 1024;

impl Policy {
    pub fn new(config: PolicyConfig) -> Self {
        Policy {
            allow_instances: config.allow_instances.iter().cloned().collect(),
            config,
            last_command: HashMap::new(),
            kept: 0,
            newest_ms: i64::MIN,
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
        self.decide_in_doubt(fired, origin, None)
    }

    /// As [`decide`](Self::decide), but a quarantine whose evidence is in
    /// `doubt` (the reason) becomes a notification held for a person: a
    /// quarantine only on counts that cannot be too high.
    pub fn decide_in_doubt(
        &mut self,
        fired: &Fired,
        origin: &Origin,
        doubt: Option<&'static str>,
    ) -> Decision {
        let rule = &self.config.rules[fired.rule];
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
        let key = (fired.subject.clone(), rule.action);
        if let Some(&last) = self.last_command.get(&key) {
            if now >= last && now - last < self.config.cooldown_ms {
                return suppressed(Suppression::Cooldown);
            }
        }
        let mut action = rule.action;
        let mut hold_reason = None;
        match (&fired.subject, action) {
            (Subject::Instance(id), Action::Quarantine) if !is_ec2_instance_id(id) => {
                action = Action::Notify;
                hold_reason = Some("subject is not an EC2 instance id; notify only");
            }
            (Subject::Source(PeerNet::Name(_)), Action::Block) => {
                action = Action::Notify;
                hold_reason = Some("source is a host name, not an address; notify only");
            }
            (Subject::Source(_), Action::Block) if fired.source_logged_in => {
                action = Action::Notify;
                hold_reason = Some(
                    "the source also logged in successfully in this window: blocking it could \
                     lock out a legitimate user; held for a person",
                );
            }
            (_, Action::Quarantine) if doubt.is_some() => {
                action = Action::Notify;
                hold_reason = doubt;
            }
            _ => {}
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
        self.last_command.insert(key, now);
        let held = hold_reason.is_some() && rule.action != Action::Notify;
        let command = Command::from_fired(fired, rule, action, held, hold_reason, origin);
        self.forget(now);
        Decision::Command(Box::new(command))
    }

    /// Once the cooldowns have doubled since the last pruning, drops those
    /// two cooldowns older than the newest command: a lagging stream's fire
    /// (event time is per stream) still finds its subject's last command.
    /// So the entries are at most about twice the commands of the last two
    /// cooldowns, whatever the number of sources over a worker's life (each
    /// source an attacker owns that reaches a rule leaves one entry). A
    /// forged future time prunes early: at worst a repeated command, with
    /// the same id when its window is the same.
    fn forget(&mut self, now: i64) {
        self.newest_ms = self.newest_ms.max(now);
        if self.last_command.len() < 2 * self.kept.max(KEEP_AT_LEAST) {
            return;
        }
        let horizon = self
            .newest_ms
            .saturating_sub(self.config.cooldown_ms.saturating_mul(2));
        self.last_command.retain(|_, last| *last > horizon);
        self.kept = self.last_command.len();
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
    use crate::classify::Signal;
    use crate::peer::PeerGrouping;
    use crate::rules::{PolicyName, SubjectKind};
    use crate::window::{Observation, Observed, WindowConfig, WindowStore};

    const I1: &str = "i-0123456789abcdef0";
    const I2: &str = "i-0fedcba9876543210";

    /// Fires rule `rule` of `config` on `subject` at `at` through a real window.
    fn fired(config: &PolicyConfig, rule: usize, subject: Subject, at: i64) -> Fired {
        let mut one = config.rules[rule].clone();
        one.condition.set_threshold(1);
        one.condition = crate::rules::Condition::Count {
            signals: vec![Signal::InvalidUser],
            at_least: 1,
        };
        if one.subject == SubjectKind::Source && one.action == Action::Quarantine {
            one.action = Action::Notify;
        }
        let peer = Peer::parse("203.0.113.9").unwrap();
        let mut store = WindowStore::new(WindowConfig::default(), vec![one]);
        let mut out = Vec::new();
        store.observe(
            &Observation {
                instance: match &subject {
                    Subject::Instance(i) => i,
                    Subject::Source(_) => "i-x",
                },
                source: Some(&peer),
                observed: Observed::Signal(Signal::InvalidUser),
                user: None,
                counts_for_instance: true,
                time_ms: at,
                position: 1,
                line: "l",
            },
            &mut out,
        );
        let mut f = out.remove(0);
        f.rule = rule;
        f.subject = subject;
        f
    }

    fn instance(id: &str) -> Subject {
        Subject::Instance(id.into())
    }

    fn action(d: &Decision) -> Option<(Action, bool)> {
        match d {
            Decision::Command(c) => Some((c.action, c.held)),
            Decision::Suppressed { .. } => None,
        }
    }

    fn seed() -> PolicyConfig {
        PolicyConfig::named(PolicyName::Seed)
    }

    #[test]
    fn quarantines_an_instance_with_a_stable_id() {
        let c = seed();
        let mut p = Policy::new(c.clone());
        let d = p.decide(&fired(&c, 0, instance(I1), 1_000), &Origin::default());
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
        let c = PolicyConfig {
            allow_instances: vec![I1.into()],
            ..seed()
        };
        let mut p = Policy::new(c.clone());
        let d = p.decide(&fired(&c, 0, instance(I1), 1_000), &Origin::default());
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
        assert!(
            action(&p.decide(&fired(&c, 0, instance(I2), 1_000), &Origin::default())).is_some()
        );
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
    fn cooldowns_of_past_subjects_are_forgotten_not_kept_forever() {
        let c = seed();
        let cooldown = c.cooldown_ms;
        let mut p = Policy::new(c.clone());
        let o = Origin::default();
        let template = fired(&c, 0, instance(I1), 0);
        let at = |subject: Subject, t: i64| Fired {
            subject,
            detected_at_ms: t,
            ..template.clone()
        };
        let mut largest = 0;
        // 40 cooldowns, 500 new subjects in each: 20,000 in all.
        for n in 0..20_000i64 {
            let t = n / 500 * cooldown;
            let d = p.decide(&at(instance(&format!("i-{n:017x}")), t), &o);
            assert!(action(&d).is_some(), "a new subject gets its command");
            largest = largest.max(p.last_command.len());
        }
        assert!(
            largest < 2 * KEEP_AT_LEAST + 2 * 1_500,
            "kept {largest} cooldowns"
        );
        // What is still within its cooldown is held back as before.
        let last = format!("i-{:017x}", 19_999);
        let d = p.decide(&at(instance(&last), 39 * cooldown + 1), &o);
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
    }

    #[test]
    fn cooldown_per_subject_and_action() {
        let c = seed();
        let mut p = Policy::new(c.clone());
        let o = Origin::default();
        assert!(action(&p.decide(&fired(&c, 0, instance(I1), 0), &o)).is_some());
        let d = p.decide(&fired(&c, 1, instance(I1), 60_000), &o);
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
            action(&p.decide(&fired(&c, 1, instance(I2), 60_000), &o)).is_some(),
            "other instances are not held back"
        );
        assert!(
            action(&p.decide(&fired(&c, 0, instance(I1), 15 * 60_000), &o)).is_some(),
            "after the cooldown"
        );
        // A notification about an instance never delays its quarantine.
        let g = PolicyConfig::default();
        let mut p = Policy::new(g.clone());
        let notify = g
            .rules
            .iter()
            .position(|r| r.action == Action::Notify)
            .unwrap();
        let quarantine = g
            .rules
            .iter()
            .position(|r| r.action == Action::Quarantine)
            .unwrap();
        assert_eq!(
            action(&p.decide(&fired(&g, notify, instance(I1), 0), &o)),
            Some((Action::Notify, false))
        );
        let mut q = fired(&g, notify, instance(I1), 1_000);
        q.rule = quarantine;
        assert_eq!(action(&p.decide(&q, &o)), Some((Action::Quarantine, false)));
    }

    #[test]
    fn blast_radius_holds_quarantines_past_the_limit() {
        let c = PolicyConfig {
            blast_radius: Some(BlastRadius {
                max_quarantines: 2,
                period_ms: 3_600_000,
            }),
            ..seed()
        };
        let mut p = Policy::new(c.clone());
        let o = Origin::default();
        let ids: Vec<String> = (0..4).map(|i| format!("i-{i:017x}")).collect();
        let got: Vec<_> = ids
            .iter()
            .map(|i| action(&p.decide(&fired(&c, 0, instance(i), 1_000), &o)))
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
        let later = action(&p.decide(
            &fired(&c, 0, instance("i-00000000000000009"), 3_700_000),
            &o,
        ));
        assert_eq!(later, Some((Action::Quarantine, false)));
    }

    #[test]
    fn never_quarantines_what_is_not_an_instance_id_nor_blocks_a_host_name() {
        let c = seed();
        let mut p = Policy::new(c.clone());
        for subject in [
            "ip-10-0-0-1",
            "i-xyz",
            "i-0123456789ABCDEF0",
            "../i-0123456789abcdef0",
        ] {
            let d = p.decide(&fired(&c, 0, instance(subject), 1_000), &Origin::default());
            assert_eq!(action(&d), Some((Action::Notify, true)), "{subject}");
        }
        assert!(is_ec2_instance_id("i-0123abcd"));
        assert!(is_ec2_instance_id(I1));
        let g = PolicyConfig::default();
        let mut p = Policy::new(g.clone());
        let block = g
            .rules
            .iter()
            .position(|r| r.action == Action::Block)
            .unwrap();
        let name = Subject::Source(
            PeerGrouping::default().network(&Peer::parse("scanner.example").unwrap()),
        );
        let d = p.decide(&fired(&g, block, name, 1_000), &Origin::default());
        assert_eq!(action(&d), Some((Action::Notify, true)));
        let net =
            Subject::Source(PeerGrouping::default().network(&Peer::parse("203.0.113.9").unwrap()));
        let d = p.decide(&fired(&g, block, net, 1_000), &Origin::default());
        let Decision::Command(cmd) = &d else {
            panic!("{d:?}")
        };
        assert_eq!((cmd.action, cmd.held), (Action::Block, false));
        assert_eq!(cmd.source.as_deref(), Some("203.0.113.9/32"));
        // A source that also logged in is not blocked by a machine.
        let other =
            Subject::Source(PeerGrouping::default().network(&Peer::parse("198.51.100.4").unwrap()));
        let mut f = fired(&g, block, other, 1_000);
        f.source_logged_in = true;
        let Decision::Command(cmd) = p.decide(&f, &Origin::default()) else {
            panic!()
        };
        assert_eq!((cmd.action, cmd.held), (Action::Notify, true));
        assert!(cmd.reason.unwrap_or_default().contains("logged in"));
    }

    #[test]
    fn invalid_configs_are_refused() {
        let mut c = seed();
        c.rules[0].condition.set_threshold(0);
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("threshold 0"), "{e}");
        let mut c = seed();
        c.rules[1].name = c.rules[0].name.clone();
        let e = c.validate().unwrap_err();
        assert!(e.to_string().contains("appears twice"), "{e}");
        let c = PolicyConfig {
            cooldown_ms: -1,
            ..seed()
        };
        assert_eq!(c.validate(), Err(PolicyError::NegativeCooldown));
        assert!(PolicyConfig::default().validate().is_ok());
    }
}
