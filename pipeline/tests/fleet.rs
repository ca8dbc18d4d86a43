//! The fleet stage end to end in one process: several shard engines emit
//! partials, one fleet stage merges them. What no single shard can see
//! fires once, fleet-wide; what one shard already fired is left to it; a
//! replay changes nothing.

use sshwarden_pipeline::command::{Action, Origin};
use sshwarden_pipeline::engine::{Engine, EngineConfig, LineInput};
use sshwarden_pipeline::fleet::{FleetConfig, FleetStage};
use sshwarden_pipeline::partial::{Partial, PartialConfig};
use sshwarden_pipeline::policy::Decision;

const MINUTE: i64 = 60_000;
const T0: i64 = 1_764_410_400_000; // 2025-11-29 10:00 UTC, a multiple of an hour

struct Fleet {
    shards: Vec<Engine>,
    stage: FleetStage,
    shard_commands: Vec<Decision>,
    fleet_commands: Vec<Decision>,
    partials: Vec<Partial>,
    position: u64,
}

impl Fleet {
    fn new(n: usize) -> Fleet {
        Fleet::holding(n, PartialConfig::default().max_open)
    }

    /// Shards that each hold at most `max_open` open partials.
    fn holding(n: usize, max_open: usize) -> Fleet {
        let shards = (0..n)
            .map(|i| {
                Engine::new(EngineConfig {
                    partials: Some(PartialConfig {
                        shard: format!("shard-{i}"),
                        max_open,
                        ..PartialConfig::default()
                    }),
                    ..EngineConfig::default()
                })
                .unwrap()
            })
            .collect();
        Fleet {
            shards,
            stage: FleetStage::new(FleetConfig::default()).unwrap(),
            shard_commands: Vec::new(),
            fleet_commands: Vec::new(),
            partials: Vec::new(),
            position: 0,
        }
    }

    /// CloudWatch routes one log stream (instance) to one shard.
    fn line(&mut self, instance: usize, time_ms: i64, text: &str) {
        self.position += 1;
        let shard = instance % self.shards.len();
        let name = format!("i-{instance:017x}");
        let engine = &mut self.shards[shard];
        engine.process_line(
            &LineInput {
                instance: &name,
                instance_from_host: false,
                event_id: None,
                time_ms: Some(time_ms),
                arrival_ms: None,
                position: self.position,
                line: text,
            },
            &Origin {
                account: "123456789012".into(),
                log_group: "/fleet/auth".into(),
                log_stream: name.clone(),
            },
            &mut self.shard_commands,
        );
        self.pump();
    }

    fn pump(&mut self) {
        let mut fresh = Vec::new();
        for e in &mut self.shards {
            e.drain_partials(&mut fresh);
        }
        for p in fresh {
            // Through the wire form, as the second stream carries it.
            let p = Partial::decode(&p.encode()).unwrap();
            self.partials.push(p.clone());
            self.position += 1;
            self.stage
                .ingest(p, self.position, &mut self.fleet_commands);
        }
    }

    fn finish(&mut self) {
        for e in &mut self.shards {
            e.finish();
        }
        self.pump();
    }

    fn fleet(&self) -> Vec<(String, String, Action, bool)> {
        commands(&self.fleet_commands)
    }
}

fn commands(d: &[Decision]) -> Vec<(String, String, Action, bool)> {
    d.iter()
        .filter_map(|d| match d {
            Decision::Command(c) => {
                Some((c.rule.clone(), c.subject().to_owned(), c.action, c.held))
            }
            Decision::Suppressed { .. } => None,
        })
        .collect()
}

fn failed(pid: usize, user: &str, src: &str) -> String {
    format!("Nov 29 10:00:00 h sshd[{pid}]: Failed password for {user} from {src} port 4{pid} ssh2")
}

fn accepted(pid: usize, src: &str) -> String {
    format!(
        "Nov 29 10:00:00 h sshd[{pid}]: Accepted password for deploy from {src} port 5{pid} ssh2"
    )
}

fn suppressed(d: &[Decision]) -> Vec<String> {
    d.iter()
        .filter_map(|d| match d {
            Decision::Suppressed { rule, .. } => Some(rule.clone()),
            Decision::Command(_) => None,
        })
        .collect()
}

/// One guess on each of 40 instances, 30 s apart: each of 8 shards sees 5
/// instances and at most 3 guesses in any 10 minutes, below every shard rule.
fn spray(f: &mut Fleet) {
    for i in 0..40 {
        f.line(
            i,
            T0 + i as i64 * 30_000,
            &failed(i, "root", "198.51.100.7"),
        );
    }
}

#[test]
fn a_spray_over_forty_instances_on_eight_shards_fires_once_fleet_wide() {
    let mut f = Fleet::new(8);
    spray(&mut f);
    f.finish();
    assert!(
        commands(&f.shard_commands).is_empty(),
        "no shard alone sees enough: {:?}",
        commands(&f.shard_commands)
    );
    let fleet = f.fleet();
    assert_eq!(fleet.len(), 1, "{fleet:?}");
    let (rule, subject, action, held) = &fleet[0];
    assert_eq!(
        (subject.as_str(), *action, *held),
        ("198.51.100.7/32", Action::Block, false)
    );
    assert!(rule.starts_with("fleet-"), "{rule}");
    // Every other fleet rule the spray met was held back by the cooldown
    // on the same subject and action: one block, not one per rule.
    let held_back = suppressed(&f.fleet_commands);
    assert!(
        held_back.contains(&"fleet-spray".to_owned()) || rule == "fleet-spray",
        "{held_back:?}"
    );
    let Decision::Command(c) = &f
        .fleet_commands
        .iter()
        .find(|d| matches!(d, Decision::Command(_)))
        .unwrap()
    else {
        unreachable!()
    };
    assert!(c.counts.values().sum::<u32>() >= 5, "{:?}", c.counts);
    assert!(!c.instances.is_empty());
}

#[test]
fn a_spray_whose_partials_crowded_shards_let_go_at_every_line_still_fires_once() {
    // Each shard holds one open partial, and a new address follows every
    // guess of the spray: each of the spray's guesses is a part of its own.
    let mut f = Fleet::holding(8, 1);
    for i in 0..40 {
        let t = T0 + i as i64 * 30_000;
        f.line(i, t, &failed(i, "root", "198.51.100.7"));
        f.line(
            i,
            t + 1,
            &failed(100 + i, "root", &format!("203.0.113.{i}")),
        );
    }
    f.finish();
    let fleet = f.fleet();
    assert_eq!(
        fleet
            .iter()
            .map(|c| (c.1.as_str(), c.2))
            .collect::<Vec<_>>(),
        vec![("198.51.100.7/32", Action::Block)],
        "{fleet:?}"
    );
    let parts = |src: &str| {
        let mut p: Vec<_> = f
            .partials
            .iter()
            .filter(|p| p.source == src)
            .map(|p| (p.shard.clone(), p.window_start_ms, p.part))
            .collect();
        p.sort();
        p.dedup();
        p.len()
    };
    assert_eq!(parts("198.51.100.7/32"), 40, "one part per guess");
    assert_eq!(f.stage.stats().after_fold, 0);
}

#[test]
fn partials_replayed_after_a_takeover_change_no_fleet_decision() {
    let mut f = Fleet::new(8);
    spray(&mut f);
    f.finish();
    let first = f.fleet();
    // A fresh stage fed every partial, then all of them again (a replay
    // after a takeover re-reads from the checkpoint).
    let mut again = FleetStage::new(FleetConfig::default()).unwrap();
    let mut out = Vec::new();
    let all: Vec<Partial> = f.partials.iter().chain(&f.partials).cloned().collect();
    for (i, p) in all.into_iter().enumerate() {
        again.ingest(p, i as u64, &mut out);
    }
    assert_eq!(commands(&out), first);
    let ids = |d: &[Decision]| -> Vec<String> {
        d.iter()
            .filter_map(|d| match d {
                Decision::Command(c) => Some(c.id.clone()),
                Decision::Suppressed { .. } => None,
            })
            .collect()
    };
    assert_eq!(ids(&out), ids(&f.fleet_commands), "the same command ids");
    assert!(again.stats().duplicates >= f.partials.len() as u64);
}

#[test]
fn a_botnet_of_addresses_each_below_every_rule_fires_no_fleet_source_rule() {
    // 500 addresses, each one guess on 4 instances (4 shards): no address is heavy.
    let mut f = Fleet::new(8);
    let mut t = T0;
    for a in 0..500usize {
        let src = format!("10.{}.{}.{}", a / 65_536, (a / 256) % 256, a % 256);
        // Not a private address in a real log; the engine does not care.
        for k in 0..4 {
            f.line(
                (a * 7 + k * 3) % 64,
                t,
                &failed(a * 4 + k, &format!("u{k}"), &src),
            );
            t += 100;
        }
    }
    f.finish();
    assert_eq!(f.fleet(), vec![], "no fleet source rule fires");
    // The shards' instance rule still sees a distributed attack: 64
    // instances, ~31 addresses each within 10 minutes is below 50; with
    // all of them on a few instances it would fire (tested in the engine).
    assert!(f.stage.stats().partials > 0);
}

#[test]
fn failures_on_other_instances_then_a_login_on_a_third_quarantine_the_one_that_accepted_it() {
    let mut f = Fleet::new(8);
    let src = "192.0.2.44";
    // 3 failures on instance 1 (shard 1), 3 on instance 2 (shard 2): no shard has 5.
    for k in 0..3 {
        f.line(1, T0 + k * 1000, &failed(10 + k as usize, "admin", src));
        f.line(
            2,
            T0 + k * 1000 + 500,
            &failed(20 + k as usize, "admin", src),
        );
    }
    // Then a login accepted on instance 3 (shard 3).
    f.line(3, T0 + 2 * MINUTE, &accepted(30, src));
    assert!(
        commands(&f.shard_commands)
            .iter()
            .all(|(_, _, a, _)| *a != Action::Quarantine),
        "{:?}",
        commands(&f.shard_commands)
    );
    let fleet = f.fleet();
    let quarantines: Vec<_> = fleet.iter().filter(|c| c.2 == Action::Quarantine).collect();
    assert_eq!(quarantines.len(), 1, "{fleet:?}");
    assert_eq!(quarantines[0].0, "fleet-compromise");
    assert_eq!(quarantines[0].1, format!("i-{:017x}", 3));
    // Before the window closes: the login's partial was sent early.
    f.finish();
    let after: Vec<_> = f
        .fleet()
        .into_iter()
        .filter(|c| c.2 == Action::Quarantine)
        .collect();
    assert_eq!(after.len(), 1, "not again when the windows close");
}

#[test]
fn a_login_before_the_failures_is_not_a_compromise() {
    let mut f = Fleet::new(8);
    let src = "192.0.2.45";
    f.line(3, T0, &accepted(30, src));
    for k in 0..6 {
        f.line(
            1 + (k % 2) as usize,
            T0 + MINUTE + k * 1000,
            &failed(10 + k as usize, "admin", src),
        );
    }
    f.finish();
    assert!(
        f.fleet().iter().all(|c| c.2 != Action::Quarantine),
        "{:?}",
        f.fleet()
    );
}

#[test]
fn a_brute_force_one_shard_sees_whole_is_left_to_that_shard() {
    let mut f = Fleet::new(8);
    for k in 0..6 {
        f.line(
            5,
            T0 + k * 1000,
            &failed(k as usize, "root", "203.0.113.50"),
        );
    }
    f.finish();
    let shard = commands(&f.shard_commands);
    assert!(shard.iter().any(|c| c.0 == "brute-force"), "{shard:?}");
    assert_eq!(f.fleet(), vec![]);
    assert!(f.stage.stats().left_to_shard > 0);
}

#[test]
fn an_administrator_mistyping_before_each_login_across_the_fleet_is_not_a_compromise() {
    // One office address, two typos then a login on each of 6 instances
    // (6 shards): 12 failures fleet-wide, but never 5 since a login.
    let mut f = Fleet::new(8);
    let src = "198.18.0.10";
    for i in 0..6usize {
        let t = T0 + i as i64 * MINUTE;
        f.line(i, t, &failed(100 + i, "ops", src));
        f.line(i, t + 2_000, &failed(200 + i, "ops", src));
        f.line(i, t + 5_000, &accepted(300 + i, src));
    }
    f.finish();
    let all: Vec<_> = commands(&f.shard_commands)
        .into_iter()
        .chain(f.fleet())
        .filter(|c| c.2 == Action::Quarantine)
        .collect();
    assert_eq!(all, vec![]);
}

#[test]
fn the_seed_policy_has_no_fleet_rules_so_its_shards_send_nothing_not_even_logins() {
    use sshwarden_pipeline::policy::PolicyConfig;
    use sshwarden_pipeline::rules::PolicyName;
    let seed = FleetConfig::for_shards(&PolicyConfig::named(PolicyName::Seed));
    assert!(seed.policy.rules.is_empty());
    let graduated = FleetConfig::for_shards(&PolicyConfig::named(PolicyName::Graduated));
    assert_eq!(graduated.policy.rules.len(), 6);
    let mut e = Engine::new(EngineConfig {
        policy: PolicyConfig::named(PolicyName::Seed),
        partials: Some(PartialConfig {
            fleet_rules: seed.policy.rules.clone(),
            ..PartialConfig::default()
        }),
        ..EngineConfig::default()
    })
    .unwrap();
    let mut out = Vec::new();
    for n in 0..20 {
        let line = if n % 5 == 4 {
            accepted(n, "203.0.113.5")
        } else {
            failed(n, "root", "203.0.113.5")
        };
        e.process_line(
            &LineInput {
                instance: "i-0123456789abcdef0",
                instance_from_host: false,
                event_id: None,
                time_ms: Some(T0 + n as i64 * 1000),
                arrival_ms: None,
                position: n as u64,
                line: &line,
            },
            &Origin::default(),
            &mut out,
        );
    }
    e.finish();
    let mut partials = Vec::new();
    e.drain_partials(&mut partials);
    assert!(partials.is_empty(), "{partials:?}");
}
