//! Judging a detector by incidents: were the attacks caught, how fast, with
//! what response, and whom did it hit that it should not have.
//!
//! The input is the detector's commands as JSON (`sshwarden scan --json`'s
//! report, whose `commands` it reads, or one command per line as `run`'s
//! stdout sink prints them); unknown fields are ignored, and `source` (or
//! the older `source_ip`) is read as a CIDR or a bare address. Nothing here
//! knows a rule or a threshold: a command is matched to an
//! [`Incident`](crate::incident::Incident) of the [`IncidentTruth`] by what
//! it acts on and when.
//!
//! - A command about a source matches an incident when its prefix contains
//!   one of the incident's attacker addresses; a notification about an
//!   instance, when the instance is a victim; a quarantine, only when the
//!   incident got in and the instance is the one it compromised. An
//!   instance command whose evidence names sources (`source`,
//!   `top_sources`) must name an attacker among them. Its `detected_at`
//!   must fall within the incident's span, widened by a slack.
//! - A held command counts as the notification it was downgraded to.
//! - Time to detect runs from the incident's first line's event time to
//!   the first matching command's `detected_at` (event time, so offline
//!   scans are judged the same as live runs).
//! - False responses: quarantines of instances that were not compromised,
//!   blocks covering an administrator's or an automation job's address, and
//!   (apart, for information) blocks of background scanners that match no
//!   incident; per instance-day of the simulation.

use std::collections::{BTreeMap, BTreeSet, HashSet};
use std::io::Write;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sshwarden_pipeline::time::parse_rfc3339_ms;

use crate::incident::{Incident, IncidentKind, IncidentTruth};

/// What a command does, once a held one is read as its notification.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Effect {
    Quarantine,
    Block,
    Notify,
}

/// The fields of a command the judge reads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JudgedCommand {
    pub effect: Effect,
    /// The subject is a source (else an instance).
    pub source_subject: bool,
    pub instance_id: Option<String>,
    pub source: Option<IpNet>,
    /// The addresses its evidence names: `source` and `top_sources`.
    pub evidence: Vec<IpNet>,
    pub rule: String,
    /// `detected_at` (epoch ms), if it could be read.
    pub detected_ms: Option<i64>,
}

impl JudgedCommand {
    /// Reads one command object; `None` when it is not one (no action).
    pub fn from_json(v: &Value) -> Option<JudgedCommand> {
        let action = v.get("action")?.as_str()?;
        let held = v.get("held").and_then(Value::as_bool).unwrap_or(false);
        let effect = match (action, held) {
            (_, true) | ("notify", _) => Effect::Notify,
            ("quarantine", false) => Effect::Quarantine,
            ("block", false) => Effect::Block,
            _ => return None,
        };
        let text = |k: &str| v.get(k).and_then(Value::as_str);
        let source = text("source")
            .or_else(|| text("source_ip"))
            .and_then(parse_net);
        let instance_id = text("instance_id").map(str::to_owned);
        let mut evidence: Vec<IpNet> = source.into_iter().collect();
        if let Some(top) = v.get("top_sources").and_then(Value::as_array) {
            evidence.extend(
                top.iter()
                    .filter_map(|t| t.get("source").and_then(Value::as_str))
                    .filter_map(parse_net),
            );
        }
        let source_subject = match text("subject_kind") {
            Some("source") => true,
            Some("instance") => false,
            _ => instance_id.is_none() && source.is_some(),
        };
        Some(JudgedCommand {
            effect,
            source_subject,
            instance_id,
            source,
            evidence,
            rule: text("rule").unwrap_or_default().to_owned(),
            detected_ms: text("detected_at").and_then(|t| parse_rfc3339_ms(t).ok()),
        })
    }

    /// How it is listed among the actions taken: `block /32`, `notify
    /// instance`, ...
    fn label(&self) -> String {
        let effect = match self.effect {
            Effect::Quarantine => "quarantine",
            Effect::Block => "block",
            Effect::Notify => "notify",
        };
        match (self.source_subject, &self.source) {
            (true, Some(n)) => format!("{effect} /{}", n.prefix_len()),
            (true, None) => format!("{effect} source"),
            (false, _) => format!("{effect} instance"),
        }
    }
}

/// A CIDR, or a bare address as its own /32 or /128.
pub fn parse_net(s: &str) -> Option<IpNet> {
    let s = s.trim();
    if let Ok(n) = s.parse::<IpNet>() {
        return Some(n.trunc());
    }
    s.parse::<IpAddr>().ok().map(IpNet::from)
}

/// Reads the commands of a detector's output: a JSON document with a
/// `commands` array (`scan --json`), a JSON array of commands, or one JSON
/// command per line. Returns the commands and how many lines or items were
/// not commands.
pub fn read_commands(text: &str) -> (Vec<JudgedCommand>, usize) {
    let mut commands = Vec::new();
    let mut unreadable = 0;
    let whole: Option<Value> = serde_json::from_str(text).ok();
    let items: Option<&Vec<Value>> = match &whole {
        Some(Value::Array(a)) => Some(a),
        Some(v @ Value::Object(_)) => v.get("commands").and_then(Value::as_array),
        _ => None,
    };
    if let Some(items) = items {
        for v in items {
            match JudgedCommand::from_json(v) {
                Some(c) => commands.push(c),
                None => unreadable += 1,
            }
        }
        return (commands, unreadable);
    }
    for line in text.lines() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        match serde_json::from_str::<Value>(line)
            .ok()
            .as_ref()
            .and_then(JudgedCommand::from_json)
        {
            Some(c) => commands.push(c),
            None => unreadable += 1,
        }
    }
    (commands, unreadable)
}

/// How one incident was handled.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentOutcome {
    pub id: usize,
    pub kind: IncidentKind,
    pub detected: bool,
    /// First evidence → first matching command's `detected_at`.
    pub time_to_detect_secs: Option<f64>,
    /// Every kind of matching command (`block /32`, `notify instance`, ...).
    pub actions: BTreeSet<String>,
    /// The response the truth calls for was taken in full (blocks covering
    /// every attacker address, notifications and quarantines of the victims).
    pub responded_as_expected: bool,
}

/// The incidents of one kind.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KindReport {
    pub kind: IncidentKind,
    pub incidents: usize,
    pub detected: usize,
    pub missed: usize,
    pub responded_as_expected: usize,
    pub time_to_detect_p50_secs: Option<f64>,
    pub time_to_detect_p95_secs: Option<f64>,
    /// Action → incidents of this kind it was taken for.
    pub actions: BTreeMap<String, usize>,
}

/// Responses that hit the wrong target.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FalseResponses {
    /// Quarantines (not held) of instances nobody got into, and how many
    /// instances they were.
    pub quarantines: usize,
    pub quarantined_instances: usize,
    pub quarantines_per_instance_day: f64,
    /// Blocks covering an administrator's or an automation job's address.
    pub benign_blocks: usize,
    pub benign_addresses_blocked: Vec<IpAddr>,
    pub benign_blocks_per_instance_day: f64,
    /// Informative: blocks of background scanners that match no incident.
    pub scanner_blocks: usize,
    pub scanner_addresses_blocked: usize,
    pub scanner_blocks_per_instance_day: f64,
}

/// The judgement of a detector's commands against an incidents file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IncidentReport {
    pub commands: usize,
    /// Lines or items that were not commands.
    pub unreadable: usize,
    /// Commands whose `detected_at` could not be read (they match nothing).
    pub undated: usize,
    pub instance_days: f64,
    pub slack_secs: f64,
    pub kinds: Vec<KindReport>,
    pub incidents: Vec<IncidentOutcome>,
    pub false_responses: FalseResponses,
    /// Commands that matched no incident, by action.
    pub unmatched: BTreeMap<String, usize>,
}

/// Judges commands against an [`IncidentTruth`].
#[derive(Debug, Clone)]
pub struct IncidentJudge<'t> {
    truth: &'t IncidentTruth,
    /// How far outside an incident's span a command may be dated and still
    /// count for it (ms).
    pub slack_ms: i64,
}

impl<'t> IncidentJudge<'t> {
    /// A judge with a slack of ten minutes.
    pub fn new(truth: &'t IncidentTruth) -> Self {
        IncidentJudge {
            truth,
            slack_ms: 600_000,
        }
    }

    /// Whether `c` is evidence that `incident` was noticed.
    fn matches(&self, incident: &Incident, c: &JudgedCommand) -> bool {
        let Some(t) = c.detected_ms else {
            return false;
        };
        if t < incident.start_ms.saturating_sub(self.slack_ms)
            || t > incident.end_ms.saturating_add(self.slack_ms)
        {
            return false;
        }
        if c.source_subject {
            return c
                .source
                .is_some_and(|n| incident.attackers.iter().any(|a| n.contains(a)));
        }
        let Some(instance) = &c.instance_id else {
            return false;
        };
        // An instance command whose evidence names sources is about them:
        // it is about this incident only if one of them is an attacker's.
        // (Background scanners keep exposed instances noisy; a command on
        // the victim that names only them noticed the noise.)
        if !c.evidence.is_empty()
            && !c
                .evidence
                .iter()
                .any(|n| incident.attackers.iter().any(|a| n.contains(a)))
        {
            return false;
        }
        match c.effect {
            Effect::Quarantine => incident.response.quarantine.contains(instance),
            Effect::Notify | Effect::Block => incident.victims.contains(instance),
        }
    }

    /// The response the truth calls for was taken by `cs` (the commands
    /// that matched the incident).
    fn as_expected(incident: &Incident, cs: &[&JudgedCommand]) -> bool {
        let blocked = |cidr: &String| {
            let Some(want) = parse_net(cidr) else {
                return false;
            };
            cs.iter().any(|c| {
                c.effect == Effect::Block
                    && c.source_subject
                    && c.source.is_some_and(|n| n.contains(&want))
            })
        };
        let acted_on = |instance: &String, effects: &[Effect]| {
            cs.iter().any(|c| {
                !c.source_subject
                    && c.instance_id.as_ref() == Some(instance)
                    && effects.contains(&c.effect)
            })
        };
        let r = &incident.response;
        r.block.iter().all(blocked)
            && r.notify
                .iter()
                .all(|i| acted_on(i, &[Effect::Notify, Effect::Quarantine]))
            && r.quarantine
                .iter()
                .all(|i| acted_on(i, &[Effect::Quarantine]))
    }

    pub fn judge(&self, commands: &[JudgedCommand], unreadable: usize) -> IncidentReport {
        let truth = self.truth;
        let mut matched = vec![false; commands.len()];
        let mut outcomes = Vec::with_capacity(truth.incidents.len());
        for incident in &truth.incidents {
            let mut mine = Vec::new();
            for (i, c) in commands.iter().enumerate() {
                if self.matches(incident, c) {
                    matched[i] = true;
                    mine.push(c);
                }
            }
            let first = mine.iter().filter_map(|c| c.detected_ms).min();
            outcomes.push(IncidentOutcome {
                id: incident.id,
                kind: incident.kind,
                detected: !mine.is_empty(),
                time_to_detect_secs: first
                    .map(|t| t.saturating_sub(incident.start_ms).max(0) as f64 / 1000.0),
                actions: mine.iter().map(|c| c.label()).collect(),
                responded_as_expected: Self::as_expected(incident, &mine),
            });
        }
        let mut kinds: BTreeMap<IncidentKind, Vec<&IncidentOutcome>> = BTreeMap::new();
        for o in &outcomes {
            kinds.entry(o.kind).or_default().push(o);
        }
        let kinds = kinds
            .into_iter()
            .map(|(kind, os)| {
                let mut ttd: Vec<f64> = os.iter().filter_map(|o| o.time_to_detect_secs).collect();
                ttd.sort_by(f64::total_cmp);
                let mut actions = BTreeMap::new();
                for a in os.iter().flat_map(|o| &o.actions) {
                    *actions.entry(a.clone()).or_insert(0) += 1;
                }
                let detected = os.iter().filter(|o| o.detected).count();
                KindReport {
                    kind,
                    incidents: os.len(),
                    detected,
                    missed: os.len() - detected,
                    responded_as_expected: os.iter().filter(|o| o.responded_as_expected).count(),
                    time_to_detect_p50_secs: percentile(&ttd, 0.50),
                    time_to_detect_p95_secs: percentile(&ttd, 0.95),
                    actions,
                }
            })
            .collect();
        let compromised: HashSet<&str> = truth
            .compromised_instances
            .iter()
            .map(String::as_str)
            .collect();
        let scanners: HashSet<IpAddr> = truth.scanner_addresses.iter().copied().collect();
        let mut quarantines = 0;
        let mut quarantined = BTreeSet::new();
        let mut benign_blocks = 0;
        let mut benign_blocked = BTreeSet::new();
        let mut scanner_blocks = 0;
        let mut scanners_blocked = BTreeSet::new();
        let mut unmatched: BTreeMap<String, usize> = BTreeMap::new();
        for (c, hit) in commands.iter().zip(&matched) {
            if c.effect == Effect::Quarantine {
                let instance = c.instance_id.as_deref().unwrap_or("");
                if !compromised.contains(instance) {
                    quarantines += 1;
                    quarantined.insert(instance);
                }
            }
            let mut benign = false;
            if let (Effect::Block, Some(n)) = (c.effect, c.source) {
                for b in &truth.benign {
                    if n.contains(&b.address) {
                        benign = true;
                        benign_blocked.insert(b.address);
                    }
                }
                benign_blocks += usize::from(benign);
                if !hit && !benign {
                    let mut covered = covered_scanners(n, &scanners);
                    if !covered.is_empty() {
                        scanner_blocks += 1;
                        scanners_blocked.append(&mut covered);
                    }
                }
            }
            if c.detected_ms.is_some() && !hit {
                *unmatched.entry(c.label()).or_insert(0) += 1;
            }
        }
        let per_day = |n: usize| {
            if truth.instance_days > 0.0 {
                n as f64 / truth.instance_days
            } else {
                0.0
            }
        };
        IncidentReport {
            commands: commands.len(),
            unreadable,
            undated: commands.iter().filter(|c| c.detected_ms.is_none()).count(),
            instance_days: truth.instance_days,
            slack_secs: self.slack_ms as f64 / 1000.0,
            kinds,
            incidents: outcomes,
            false_responses: FalseResponses {
                quarantines,
                quarantined_instances: quarantined.len(),
                quarantines_per_instance_day: per_day(quarantines),
                benign_blocks,
                benign_addresses_blocked: benign_blocked.into_iter().collect(),
                benign_blocks_per_instance_day: per_day(benign_blocks),
                scanner_blocks,
                scanner_addresses_blocked: scanners_blocked.len(),
                scanner_blocks_per_instance_day: per_day(scanner_blocks),
            },
            unmatched,
        }
    }
}

/// The scanner addresses inside `n`.
fn covered_scanners(n: IpNet, scanners: &HashSet<IpAddr>) -> BTreeSet<IpAddr> {
    if n.prefix_len() == n.max_prefix_len() {
        return scanners.get(&n.addr()).copied().into_iter().collect();
    }
    scanners
        .iter()
        .filter(|a| n.contains(*a))
        .copied()
        .collect()
}

/// Nearest-rank percentile of sorted values.
fn percentile(sorted: &[f64], q: f64) -> Option<f64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = (q * sorted.len() as f64).ceil().max(1.0) as usize;
    Some(sorted[rank.min(sorted.len()) - 1])
}

impl IncidentReport {
    pub fn write_text(&self, out: &mut dyn Write) -> std::io::Result<()> {
        writeln!(
            out,
            "{} commands ({} unreadable, {} undated), {:.1} instance-days, slack {}s",
            self.commands, self.unreadable, self.undated, self.instance_days, self.slack_secs
        )?;
        writeln!(
            out,
            "{:<22} {:>9} {:>8} {:>6} {:>9} {:>9} {:>9}  actions",
            "incident kind", "incidents", "detected", "missed", "expected", "ttd p50", "ttd p95"
        )?;
        let secs = |s: Option<f64>| s.map_or_else(|| "-".to_owned(), |s| format!("{s:.0}s"));
        for k in &self.kinds {
            let actions: Vec<String> = k.actions.iter().map(|(a, n)| format!("{a} ×{n}")).collect();
            writeln!(
                out,
                "{:<22} {:>9} {:>8} {:>6} {:>9} {:>9} {:>9}  {}",
                k.kind.as_str(),
                k.incidents,
                k.detected,
                k.missed,
                k.responded_as_expected,
                secs(k.time_to_detect_p50_secs),
                secs(k.time_to_detect_p95_secs),
                if actions.is_empty() {
                    "-".to_owned()
                } else {
                    actions.join(", ")
                }
            )?;
        }
        let f = &self.false_responses;
        writeln!(
            out,
            "false responses: {} quarantines of {} instances nobody got into ({:.3} per instance-day); \
             {} blocks of benign addresses {:?} ({:.3} per instance-day)",
            f.quarantines,
            f.quarantined_instances,
            f.quarantines_per_instance_day,
            f.benign_blocks,
            f.benign_addresses_blocked,
            f.benign_blocks_per_instance_day
        )?;
        writeln!(
            out,
            "informative: {} blocks of {} background scanner addresses ({:.3} per instance-day)",
            f.scanner_blocks, f.scanner_addresses_blocked, f.scanner_blocks_per_instance_day
        )?;
        if !self.unmatched.is_empty() {
            let u: Vec<String> = self
                .unmatched
                .iter()
                .map(|(a, n)| format!("{a} ×{n}"))
                .collect();
            writeln!(out, "commands matching no incident: {}", u.join(", "))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::incident::{BenignAddress, Response};

    const T0: i64 = 1_700_000_000_000;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    fn incident(id: usize, kind: IncidentKind, victims: &[&str], attackers: &[&str]) -> Incident {
        let attackers: Vec<IpAddr> = attackers.iter().map(|a| ip(a)).collect();
        let prefix = (attackers.len() == 1).then(|| IpNet::from(attackers[0]).to_string());
        Incident {
            id,
            kind,
            victims: victims.iter().map(|v| (*v).to_owned()).collect(),
            prefix: prefix.clone(),
            attackers,
            start_ms: T0,
            end_ms: T0 + 3_600_000,
            start: String::new(),
            end: String::new(),
            connections: 10,
            succeeded: false,
            response: Response {
                block: prefix.into_iter().collect(),
                ..Response::default()
            },
        }
    }

    /// A fast brute force on a, a compromise of b, an IPv6 rotation on c, a
    /// botnet on d; an administrator and a scanner.
    fn truth() -> IncidentTruth {
        let mut compromise = incident(
            1,
            IncidentKind::SucceededBruteForce,
            &["i-b"],
            &["198.18.0.2"],
        );
        compromise.succeeded = true;
        compromise.response.quarantine = vec!["i-b".into()];
        let mut rotation = incident(
            2,
            IncidentKind::Ipv6Rotation,
            &["i-c"],
            &["2a01:4f8:1:2::5", "2a01:4f8:1:2:ffff::9"],
        );
        rotation.prefix = Some("2a01:4f8:1:2::/64".into());
        rotation.response.block = vec!["2a01:4f8:1:2::/64".into()];
        let mut botnet = incident(
            3,
            IncidentKind::Botnet,
            &["i-d"],
            &["198.18.1.1", "198.18.1.2"],
        );
        botnet.response.notify = vec!["i-d".into()];
        IncidentTruth {
            version: 1,
            seed: 1,
            start_ms: T0,
            end_ms: T0 + 86_400_000,
            instances: ["i-a", "i-b", "i-c", "i-d", "i-e"]
                .map(String::from)
                .to_vec(),
            instance_days: 5.0,
            incidents: vec![
                incident(0, IncidentKind::FastBruteForce, &["i-a"], &["198.18.0.1"]),
                compromise,
                rotation,
                botnet,
            ],
            compromised_instances: vec!["i-b".into()],
            benign: vec![BenignAddress {
                address: ip("203.0.113.7"),
                role: "admin".into(),
            }],
            scanner_addresses: vec![ip("192.0.2.99")],
            decoy_addresses: vec![],
        }
    }

    fn at(ms: i64) -> String {
        sshwarden_pipeline::time::format_rfc3339_ms(ms)
    }

    fn source_cmd(action: &str, source: &str, t: i64) -> String {
        format!(
            r#"{{"action":"{action}","held":false,"subject_kind":"source","source":"{source}","rule":"r","detected_at":"{}","novel":1}}"#,
            at(t)
        )
    }

    fn instance_cmd(action: &str, held: bool, instance: &str, t: i64) -> String {
        format!(
            r#"{{"action":"{action}","held":{held},"subject_kind":"instance","instance_id":"{instance}","rule":"r","detected_at":"{}"}}"#,
            at(t)
        )
    }

    fn judge(lines: &[String]) -> IncidentReport {
        let truth = truth();
        let (commands, unreadable) = read_commands(&lines.join("\n"));
        IncidentJudge::new(&truth).judge(&commands, unreadable)
    }

    fn outcome(r: &IncidentReport, id: usize) -> &IncidentOutcome {
        r.incidents.iter().find(|o| o.id == id).unwrap()
    }

    #[test]
    fn nothing_detected_nothing_false() {
        let r = judge(&[]);
        assert!(r.incidents.iter().all(|o| !o.detected));
        assert_eq!(r.kinds.iter().map(|k| k.missed).sum::<usize>(), 4);
        assert_eq!(r.false_responses.quarantines, 0);
        assert_eq!(r.false_responses.benign_blocks, 0);
    }

    #[test]
    fn a_block_of_the_attacker_in_time_detects_it_with_its_delay() {
        let r = judge(&[source_cmd("block", "198.18.0.1/32", T0 + 90_000)]);
        let o = outcome(&r, 0);
        assert!(o.detected && o.responded_as_expected, "{o:?}");
        assert_eq!(o.time_to_detect_secs, Some(90.0));
        assert_eq!(o.actions, BTreeSet::from(["block /32".to_owned()]));
        let k = &r.kinds[0];
        assert_eq!(k.kind, IncidentKind::FastBruteForce);
        assert_eq!((k.detected, k.missed), (1, 0));
        assert_eq!(k.time_to_detect_p50_secs, Some(90.0));
        assert!(r.unmatched.is_empty());
    }

    #[test]
    fn a_command_outside_the_span_and_slack_matches_nothing() {
        let late = T0 + 3_600_000 + 600_001;
        let r = judge(&[
            source_cmd("block", "198.18.0.1/32", late),
            source_cmd("block", "198.18.0.1/32", T0 - 600_001),
        ]);
        assert!(!outcome(&r, 0).detected);
        assert_eq!(r.unmatched.get("block /32"), Some(&2));
    }

    #[test]
    fn a_quarantine_of_the_wrong_instance_is_a_false_response() {
        let r = judge(&[instance_cmd("quarantine", false, "i-a", T0 + 1_000)]);
        // i-a was attacked but nobody got in: quarantining it is wrong, and
        // it does not count as catching anything.
        assert!(!outcome(&r, 0).detected);
        assert!(!outcome(&r, 1).detected);
        assert_eq!(r.false_responses.quarantines, 1);
        assert_eq!(r.false_responses.quarantined_instances, 1);
        assert!((r.false_responses.quarantines_per_instance_day - 0.2).abs() < 1e-9);
        let r = judge(&[instance_cmd("quarantine", false, "i-b", T0 + 1_000)]);
        let o = outcome(&r, 1);
        assert!(o.detected, "{o:?}");
        // The compromise also calls for the block.
        assert!(!o.responded_as_expected);
        assert_eq!(r.false_responses.quarantines, 0);
        let r = judge(&[
            instance_cmd("quarantine", false, "i-b", T0 + 1_000),
            source_cmd("block", "198.18.0.2/32", T0 + 1_000),
        ]);
        assert!(outcome(&r, 1).responded_as_expected);
    }

    #[test]
    fn a_held_quarantine_is_a_notification() {
        let r = judge(&[instance_cmd("quarantine", true, "i-a", T0 + 1_000)]);
        assert_eq!(r.false_responses.quarantines, 0);
        let o = outcome(&r, 0);
        assert!(o.detected);
        assert_eq!(o.actions, BTreeSet::from(["notify instance".to_owned()]));
        // Held on the compromised instance: noticed, not isolated.
        let r = judge(&[instance_cmd("quarantine", true, "i-b", T0 + 1_000)]);
        let o = outcome(&r, 1);
        assert!(o.detected && !o.responded_as_expected);
    }

    #[test]
    fn a_64_block_stops_an_ipv6_rotation_and_a_128_only_notices_it() {
        let r = judge(&[source_cmd("block", "2a01:4f8:1:2::/64", T0 + 5_000)]);
        let o = outcome(&r, 2);
        assert!(o.detected && o.responded_as_expected, "{o:?}");
        assert_eq!(o.actions, BTreeSet::from(["block /64".to_owned()]));
        let r = judge(&[source_cmd("block", "2a01:4f8:1:2::5", T0 + 5_000)]);
        let o = outcome(&r, 2);
        assert!(o.detected && !o.responded_as_expected, "{o:?}");
        let r = judge(&[source_cmd("block", "2a01:4f8:1:3::/64", T0 + 5_000)]);
        assert!(!outcome(&r, 2).detected);
    }

    #[test]
    fn an_instance_command_naming_only_other_sources_is_not_about_the_incident() {
        let with_top = |top: &str| {
            format!(
                r#"{{"action":"notify","held":false,"subject_kind":"instance","instance_id":"i-a","detected_at":"{}","top_sources":[{{"source":"{top}","count":5}}]}}"#,
                at(T0 + 1_000)
            )
        };
        let r = judge(&[with_top("192.0.2.99")]);
        assert!(!outcome(&r, 0).detected);
        let r = judge(&[with_top("198.18.0.1")]);
        assert!(outcome(&r, 0).detected);
        // A compromise quarantine names its attacker's prefix.
        let q = |source: &str| {
            format!(
                r#"{{"action":"quarantine","held":false,"subject_kind":"instance","instance_id":"i-b","source":"{source}","detected_at":"{}"}}"#,
                at(T0 + 1_000)
            )
        };
        assert!(outcome(&judge(&[q("198.18.0.2/32")]), 1).detected);
        let r = judge(&[q("198.18.0.9/32")]);
        assert!(!outcome(&r, 1).detected);
        // Still the compromised instance: not a false quarantine.
        assert_eq!(r.false_responses.quarantines, 0);
    }

    #[test]
    fn a_botnet_wants_a_notification_on_its_victim() {
        let r = judge(&[instance_cmd("notify", false, "i-e", T0 + 1_000)]);
        assert!(!outcome(&r, 3).detected, "i-e is not the victim");
        assert_eq!(r.unmatched.get("notify instance"), Some(&1));
        let r = judge(&[instance_cmd("notify", false, "i-d", T0 + 1_000)]);
        let o = outcome(&r, 3);
        assert!(o.detected && o.responded_as_expected);
        // Blocking one bot notices it too, but is not the response.
        let r = judge(&[source_cmd("block", "198.18.1.2", T0 + 1_000)]);
        let o = outcome(&r, 3);
        assert!(o.detected && !o.responded_as_expected);
    }

    #[test]
    fn blocks_of_benign_and_scanner_addresses_are_counted_apart() {
        let r = judge(&[
            source_cmd("block", "203.0.113.7/32", T0),
            source_cmd("block", "203.0.113.0/24", T0),
            source_cmd("notify", "203.0.113.7/32", T0),
            source_cmd("block", "192.0.2.99/32", T0),
        ]);
        let f = &r.false_responses;
        assert_eq!(f.benign_blocks, 2);
        assert_eq!(f.benign_addresses_blocked, vec![ip("203.0.113.7")]);
        assert_eq!((f.scanner_blocks, f.scanner_addresses_blocked), (1, 1));
        assert_eq!(f.quarantines, 0);
    }

    #[test]
    fn reads_a_scan_report_lines_and_old_fields() {
        let doc = format!(
            r#"{{"inputs":["-"],"commands":[{},{{"no":"action"}}],"stats":{{}}}}"#,
            source_cmd("block", "198.18.0.1/32", T0)
        );
        let (cs, bad) = read_commands(&doc);
        assert_eq!((cs.len(), bad), (1, 1));
        assert_eq!(cs[0].source, parse_net("198.18.0.1/32"));
        // `run`'s lines, the older `source_ip` as a bare address, garbage.
        let lines = format!(
            "{}\n\nnot json\n{}\n",
            r#"{"action":"notify","held":false,"subject_kind":"source","source_ip":"2a01:4f8:1:2::5","rule":"x","detected_at":"2023-11-14T22:13:20.000Z"}"#,
            instance_cmd("quarantine", false, "i-a", T0)
        );
        let (cs, bad) = read_commands(&lines);
        assert_eq!((cs.len(), bad), (2, 1));
        assert_eq!(cs[0].source, parse_net("2a01:4f8:1:2::5/128"));
        assert_eq!(cs[0].detected_ms, Some(T0));
        assert_eq!(cs[1].effect, Effect::Quarantine);
        assert_eq!(
            parse_net("2a01:4f8:1:2::9/64"),
            parse_net("2a01:4f8:1:2::/64")
        );
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=20).map(f64::from).collect();
        assert_eq!(percentile(&v, 0.5), Some(10.0));
        assert_eq!(percentile(&v, 0.95), Some(19.0));
        assert_eq!(percentile(&[3.0], 0.95), Some(3.0));
        assert_eq!(percentile(&[], 0.5), None);
    }
}
