//! The remediation command: versioned JSON a sink delivers, with an id that is
//! a pure function of (subject, rule, window start) so a replay yields the
//! same id and the Step Functions execution name deduplicates it.
//!
//! The command's own types ([`Action`], [`Origin`]) live here: [`crate::policy`]
//! decides which command to build and imports this module, never the reverse.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::classify::Signal;
use crate::rules::{Dimension, Rule, SubjectKind};
use crate::time::format_rfc3339_ms;
use crate::window::{Fired, Subject};

pub const COMMAND_VERSION: u32 = 1;

/// What a command asks the sink to do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Isolate an instance (security-group swap): only on evidence of compromise.
    Quarantine,
    /// Deny a source address or prefix. Until a sink has a block target, the
    /// Step Functions and direct sinks announce it like a notification.
    Block,
    /// Tell people; change nothing.
    Notify,
}

impl Action {
    pub fn as_str(self) -> &'static str {
        match self {
            Action::Quarantine => "quarantine",
            Action::Block => "block",
            Action::Notify => "notify",
        }
    }

    pub fn parse(name: &str) -> Option<Action> {
        [Action::Quarantine, Action::Block, Action::Notify]
            .into_iter()
            .find(|a| a.as_str() == name)
    }
}

/// Where the evidence came from, for the command.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Origin {
    pub account: String,
    pub log_group: String,
    pub log_stream: String,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Command {
    pub version: u32,
    pub id: String,
    pub action: Action,
    /// A quarantine the policy downgraded to a notification (blast radius, or
    /// the subject is not an instance id): a person has to decide.
    pub held: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    pub subject_kind: SubjectKind,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub instance_id: Option<String>,
    /// The source as a CIDR (`203.0.113.9/32`, `2001:db8:1:2::/64`): the
    /// subject of a source rule, the attacker of a compromise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    pub account: String,
    pub log_group: String,
    pub log_stream: String,
    pub rule: String,
    /// The rule's window size.
    pub window_secs: i64,
    pub window_start: String,
    pub window_end: String,
    pub window_start_ms: i64,
    pub counts: BTreeMap<&'static str, u32>,
    /// Distinct values counted in the window (users, instances, sources),
    /// only the dimensions the rule set tracks; exact up to the engine's
    /// bound.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub distinct: BTreeMap<&'static str, u32>,
    /// The instances a source tried in the window (at most 16).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub instances: Vec<String>,
    pub top_sources: Vec<SourceCount>,
    pub other_source_events: u32,
    pub sample_lines: Vec<String>,
    pub detected_at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceCount {
    pub source: String,
    pub count: u32,
}

impl Command {
    pub fn from_fired(
        fired: &Fired,
        rule: &Rule,
        action: Action,
        held: bool,
        reason: Option<&str>,
        origin: &Origin,
    ) -> Command {
        let w = &fired.window;
        let top = w.top_sources(5);
        let tracked: u32 = w.top.iter().map(|(_, n)| n).sum();
        let shown: u32 = top.iter().map(|(_, n)| n).sum();
        let (instance_id, subject_text) = match &fired.subject {
            // `String::from`, not `to_string`: on a `Box` or an `Arc` that
            // goes through the formatter and grows the string from empty.
            Subject::Instance(i) => (Some(String::from(&**i)), String::from(&**i)),
            Subject::Source(s) => (None, s.to_string()),
        };
        Command {
            version: COMMAND_VERSION,
            id: command_id(fired.subject.kind(), &subject_text, &rule.name, w.start_ms),
            action,
            held,
            reason: reason.map(str::to_owned),
            subject_kind: fired.subject.kind(),
            instance_id,
            source: fired.source.as_ref().map(|s| s.to_string()),
            account: origin.account.clone(),
            log_group: origin.log_group.clone(),
            log_stream: origin.log_stream.clone(),
            rule: rule.name.clone(),
            window_secs: w.size_ms / 1000,
            window_start: format_rfc3339_ms(w.start_ms),
            window_end: format_rfc3339_ms(w.end_ms()),
            window_start_ms: w.start_ms,
            counts: Signal::ALL
                .iter()
                .filter(|s| w.counts[s.index()] > 0)
                .map(|s| (s.as_str(), w.counts[s.index()]))
                .collect(),
            distinct: Dimension::ALL
                .iter()
                .filter(|d| w.distinct(**d) > 0)
                .map(|d| (d.as_str(), w.distinct(*d)))
                .collect(),
            instances: w
                .instance_names
                .iter()
                .map(|i| String::from(i.as_str()))
                .collect(),
            top_sources: top
                .into_iter()
                .map(|(s, count)| SourceCount {
                    source: s.to_string(),
                    count,
                })
                .collect(),
            other_source_events: w.other_source_events + tracked - shown,
            sample_lines: w.samples.iter().map(|l| String::from(&**l)).collect(),
            detected_at: format_rfc3339_ms(fired.detected_at_ms),
        }
    }

    /// The Step Functions execution name: the id (already at most 80
    /// characters of `[A-Za-z0-9_-]`).
    pub fn execution_name(&self) -> &str {
        &self.id
    }

    /// The instance id or the source address the command is about.
    pub fn subject(&self) -> &str {
        self.instance_id
            .as_deref()
            .or(self.source.as_deref())
            .unwrap_or("")
    }

    /// One line for people: action, subject, rule, window, counts, top
    /// sources. Written straight into the output, not built first: a
    /// report prints one per command.
    pub fn summary(&self) -> Summary<'_> {
        Summary(self)
    }
}

/// [`Command::summary`]'s line.
pub struct Summary<'c>(&'c Command);

impl std::fmt::Display for Summary<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let c = self.0;
        let action = match (c.action, c.held) {
            (_, true) => "notify (held)",
            (Action::Quarantine, false) => "QUARANTINE",
            (Action::Block, false) => "BLOCK",
            (Action::Notify, false) => "notify",
        };
        write!(
            f,
            "{action} {} rule={} window={} counts[",
            c.subject(),
            c.rule,
            c.window_start
        )?;
        for (i, (k, v)) in c.counts.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{k}={v}")?;
        }
        f.write_str("] top[")?;
        for (i, s) in c.top_sources.iter().enumerate() {
            let sep = if i == 0 { "" } else { " " };
            write!(f, "{sep}{}x{}", s.source, s.count)?;
        }
        write!(f, "] id={}", c.id)?;
        if let Some(r) = &c.reason {
            write!(f, " ({r})")?;
        }
        Ok(())
    }
}

/// `sw1-<i|s>-<subject>-<rule>-<window start seconds>`, characters outside
/// `[A-Za-z0-9_-]` replaced by `_`. Over 80 characters, the subject is cut and
/// a stable hash of the full text keeps ids distinct.
pub fn command_id(kind: SubjectKind, subject: &str, rule: &str, window_start_ms: i64) -> String {
    let k = match kind {
        SubjectKind::Instance => 'i',
        SubjectKind::Source => 's',
    };
    let clean = |s: &str| -> String {
        let mut out = String::with_capacity(s.len());
        push_clean(&mut out, s);
        out
    };
    let secs = window_start_ms.div_euclid(1000);
    // Built in place: every command gets one, and `format!` over two
    // cleaned copies cost about 4,000 instructions an id.
    let mut full = String::with_capacity(80);
    full.push_str("sw1-");
    full.push(k);
    full.push('-');
    push_clean(&mut full, subject);
    full.push('-');
    push_clean(&mut full, rule);
    full.push('-');
    full.push_str(itoa::Buffer::new().format(secs));
    if full.len() <= 80 {
        return full;
    }
    let hash = fnv1a64(format!("{k}\0{subject}\0{rule}\0{window_start_ms}").as_bytes());
    let tail = format!("-{}-{secs}-{hash:016x}", clean(rule));
    let room = 80usize.saturating_sub(5 + tail.len());
    let subject: String = clean(subject).chars().take(room).collect();
    let mut id = format!("sw1-{k}-{subject}{tail}");
    id.truncate(80);
    id
}

/// Appends `s` with characters outside `[A-Za-z0-9_-]` as `_` (one per
/// character, not per byte).
fn push_clean(out: &mut String, s: &str) {
    for c in s.chars() {
        out.push(if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
            c
        } else {
            '_'
        });
    }
}

/// FNV-1a, written out because the id must stay the same across releases
/// and platforms, which std's and foldhash's hashers do not promise.
fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ids_are_readable_and_stable() {
        assert_eq!(
            command_id(
                SubjectKind::Instance,
                "i-0123456789abcdef0",
                "invalid-user",
                1_700_000_040_000
            ),
            "sw1-i-i-0123456789abcdef0-invalid-user-1700000040"
        );
        assert_eq!(
            command_id(SubjectKind::Source, "2001:db8::1", "botnet", 60_000),
            "sw1-s-2001_db8__1-botnet-60"
        );
    }

    proptest! {
        /// Ids name Step Functions executions that outlive a release: the
        /// short form is what this format string gave before it was built
        /// in place.
        #[test]
        fn short_ids_are_what_the_format_gives(subject in "\\PC{0,40}", rule in "[a-z-]{1,24}", start in any::<i64>(), source in any::<bool>()) {
            let clean = |s: &str| -> String {
                s.chars()
                    .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
                    .collect()
            };
            let (kind, k) = if source { (SubjectKind::Source, 's') } else { (SubjectKind::Instance, 'i') };
            let expected = format!("sw1-{k}-{}-{}-{}", clean(&subject), clean(&rule), start.div_euclid(1000));
            prop_assume!(expected.len() <= 80);
            prop_assert_eq!(command_id(kind, &subject, &rule, start), expected);
        }

        #[test]
        fn ids_fit_step_functions_names(subject in ".{0,200}", rule in "[a-z-]{1,24}", start in any::<i64>()) {
            let id = command_id(SubjectKind::Instance, &subject, &rule, start);
            prop_assert!(id.len() <= 80);
            prop_assert!(id.bytes().all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_'));
            prop_assert_eq!(id.clone(), command_id(SubjectKind::Instance, &subject, &rule, start));
        }

        #[test]
        fn long_ids_stay_distinct(a in "[a-z]{90,120}", b in "[a-z]{90,120}") {
            prop_assume!(a != b);
            prop_assert_ne!(
                command_id(SubjectKind::Instance, &a, "r", 0),
                command_id(SubjectKind::Instance, &b, "r", 0)
            );
        }
    }
}
