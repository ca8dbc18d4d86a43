//! The generator held to sshwarden's own decoder, classifier and engine.

use std::collections::{BTreeSet, HashSet};
use std::net::IpAddr;

use sshwarden_pipeline::classify::classify;
use sshwarden_pipeline::command::Origin;
use sshwarden_pipeline::envelope::{Decoder, MessageType};
use sshwarden_pipeline::peer::Peer;
use sshwarden_pipeline::policy::{Decision, PolicyConfig};
use sshwarden_pipeline::prefix::parse_line;
use sshwarden_pipeline::{Engine, EngineConfig, LineInput, RecordInput};

use crate::*;

fn small(scenarios: Vec<Scenario>) -> FleetConfig {
    FleetConfig {
        instances: 5,
        seed: 7,
        duration_ms: 6 * 60_000,
        benign_events_per_instance_per_min: 20.0,
        scan_probes_per_instance_per_min: 0.3,
        scenarios,
        ..FleetConfig::default()
    }
}

/// The seed policy (what the rule-level truth models) turning every fired
/// rule into a command (no cooldown, no blast-radius limit), so commands and
/// fired rules are one to one.
fn engine() -> Engine {
    Engine::new(EngineConfig {
        policy: PolicyConfig {
            cooldown_ms: 0,
            blast_radius: None,
            ..PolicyConfig::named(sshwarden_pipeline::rules::PolicyName::Seed)
        },
        keep_totals: true,
        ..EngineConfig::default()
    })
    .unwrap()
}

fn run_records(engine: &mut Engine, records: &[Vec<u8>]) -> Vec<Decision> {
    let mut out = Vec::new();
    for (pos, r) in records.iter().enumerate() {
        engine
            .process_record(
                &RecordInput {
                    data: r,
                    position: pos as u64,
                    account_fallback: "000000000000",
                    ..RecordInput::default()
                },
                &mut out,
            )
            .unwrap();
    }
    engine.finish();
    out
}

fn detections(decisions: &[Decision]) -> Vec<DetectionKey> {
    decisions
        .iter()
        .map(|d| match d {
            Decision::Command(c) => DetectionKey {
                instance: c.instance_id.clone().expect("instance rules only"),
                rule: c.rule.clone(),
                window_start_ms: c.window_start_ms,
            },
            Decision::Suppressed { .. } => panic!("nothing is suppressed here: {d:?}"),
        })
        .collect()
}

#[test]
fn deterministic_sorted_and_well_formed() {
    let cfg = FleetConfig::default();
    let a = Fleet::generate(&cfg).unwrap();
    let b = Fleet::generate(&cfg).unwrap();
    assert_eq!(a.events(), b.events());
    assert!(a.events().len() > 3_000, "{}", a.events().len());
    assert!(a.events().windows(2).all(|w| w[0].time_ms <= w[1].time_ms));
    let end = cfg.start_ms + cfg.duration_ms;
    assert!(a
        .events()
        .iter()
        .all(|e| e.time_ms >= cfg.start_ms && e.time_ms < end));
    let ids: HashSet<&str> = a.events().iter().map(|e| e.id.as_str()).collect();
    assert_eq!(ids.len(), a.events().len(), "event ids are unique");
    assert!(a
        .events()
        .iter()
        .all(|e| e.id.len() == 56 && e.id.bytes().all(|c| c.is_ascii_digit())));
    for i in &a.instances {
        assert!(
            sshwarden_pipeline::policy::is_ec2_instance_id(&i.id) && i.id.len() == 19,
            "{}",
            i.id
        );
    }
    assert!(a.instances.iter().any(|i| i.process == "sshd-session"));
    assert!(a.instances.iter().any(|i| i.process == "sshd"));
    let other = Fleet::generate(&FleetConfig { seed: 2, ..cfg }).unwrap();
    assert_ne!(a.events()[..10], other.events()[..10]);
}

#[test]
fn default_mix_is_about_a_quarter_evidence() {
    let fleet = Fleet::generate(&FleetConfig::default()).unwrap();
    let r = fleet.evidence_ratio();
    eprintln!(
        "{} events, evidence ratio {r}, {} expected",
        fleet.events().len(),
        fleet.ground_truth().expected.len()
    );
    assert!((0.18..=0.32).contains(&r), "evidence ratio {r}");
    let t = fleet.ground_truth();
    assert_eq!(t.events, fleet.events().len());
    assert!(!t.expected.is_empty());
    assert_eq!(t.compromises.len(), 1);
    assert!(t.decoy_addresses.len() >= 3);
    for (i, s) in fleet.config.scenarios.iter().enumerate() {
        let n = fleet
            .events()
            .iter()
            .filter(|e| e.scenario == Some(i))
            .count();
        assert!(n > 0, "scenario {} produced no events", s.name());
    }
}

#[test]
fn every_line_classifies_as_the_generator_says() {
    let fleet = Fleet::generate(&FleetConfig::default()).unwrap();
    let mut sshd_lines = 0;
    // The engine's connection context says which lines are new attempts;
    // the generator knows it by construction (one attempt, one signal).
    let mut engine = engine();
    let mut repeats = 0;
    for e in fleet.events() {
        let Some(l) = parse_line(&e.line) else {
            assert_eq!(e.signal, None, "non-sshd line with a signal: {}", e.line);
            continue;
        };
        sshd_lines += 1;
        let c = classify(l.message);
        let counted = match engine.verdict(&e.line, &e.instance) {
            sshwarden_pipeline::engine::LineVerdict::Classified(v) => {
                v.signal.filter(|_| v.new_attempt && v.counts_for_instance)
            }
            _ => None,
        };
        if c.and_then(|c| c.signal()).is_some() && counted.is_none() {
            repeats += 1;
        }
        assert_eq!(counted, e.signal, "signal of {}", e.line);
        if let (Some(c), Some(src)) = (c, e.source) {
            if let Some(text) = c.source {
                assert_eq!(
                    Peer::parse(text),
                    Some(Peer::Ip(src)),
                    "address of {}",
                    e.line
                );
            }
        }
    }
    assert!(sshd_lines * 2 > fleet.events().len());
    assert!(repeats > 0, "the default mix has disconnect pairs");
}

#[test]
fn records_decode_with_the_pipeline_decoder() {
    let fleet = Fleet::generate(&FleetConfig::default()).unwrap();
    let events = fleet.events();
    let opts = RecordOptions {
        keep_json: true,
        ..RecordOptions::default()
    };
    let records = encode_records(events, &opts);
    let mut decoder = Decoder::default();
    let mut seen = 0;
    let mut last_end = i64::MIN;
    let by_id: std::collections::HashMap<&str, &GeneratedEvent> =
        events.iter().map(|e| (e.id.as_str(), e)).collect();
    for r in &records {
        assert!(r.events <= 100 && r.events > 0);
        assert!(r.last_time_ms - r.first_time_ms <= opts.max_span_ms);
        assert!(
            r.last_time_ms >= last_end,
            "records in order of their last event"
        );
        last_end = r.last_time_ms;
        assert_eq!(r.json.len(), r.json_len);
        let env = decoder.decode(&r.data).unwrap();
        assert_eq!(env.kind().unwrap(), MessageType::Data);
        assert_eq!(env.owner, "123456789012");
        assert_eq!(env.log_group, "/ec2/sshd");
        assert_eq!(env.log_stream, r.log_stream);
        assert_eq!(env.log_events.len(), r.events);
        for ev in &env.log_events {
            let e = by_id[&*ev.id];
            assert_eq!(e.instance, env.log_stream, "one stream per record");
            assert_eq!(e.time_ms, ev.timestamp);
            assert_eq!(e.line, ev.message);
        }
        seen += env.log_events.len();
    }
    assert_eq!(seen, events.len());
    let plain = subscription_records(events, 10);
    assert!(plain.len() > records.len());
    let control = encode::control_message();
    let env = decoder.decode(&control).unwrap();
    assert_eq!(env.kind().unwrap(), MessageType::Control);
}

#[test]
fn engine_finds_exactly_the_brute_forces() {
    // Without background scanning: the slow brute force stays below the
    // thresholds on its own, not always together with the internet's noise.
    let cfg = FleetConfig {
        scan_probes_per_instance_per_min: 0.0,
        ..small(vec![])
    };
    let cfg = FleetConfig {
        scenarios: vec![
            Scenario::FastBruteForce {
                instance: 0,
                offset_ms: 45_000,
                attempts: 200,
                per_second: 2.0,
            },
            Scenario::SlowBruteForce {
                instance: 1,
                offset_ms: 10_000,
                attempts: 17,
                interval_ms: 20_000,
            },
        ],
        ..cfg
    };
    let fleet = Fleet::generate(&cfg).unwrap();
    let truth = fleet.ground_truth();
    let fast = &fleet.instances[0].id;
    let slow = &fleet.instances[1].id;
    let fast_expected = truth.expected_for_scenario(0);
    assert!(
        fast_expected.len() >= 4,
        "the fast brute force fires in several windows: {fast_expected:?}"
    );
    assert!(fast_expected.iter().all(|d| &d.instance == fast));
    assert!(
        truth.expected_for_scenario(1).is_empty(),
        "the slow brute force stays below every threshold: {:#?}",
        truth.expected_for_scenario(1)
    );
    assert!(fleet
        .events()
        .iter()
        .any(|e| e.scenario == Some(1) && e.signal.is_some()));

    let records = subscription_records(fleet.events(), 100);
    let mut engine = engine();
    let decisions = run_records(&mut engine, &records);
    let stats = engine.stats();
    assert_eq!(stats.decode_errors, 0);
    assert_eq!(stats.events as usize, fleet.events().len());
    assert_eq!(stats.windows.late_events, 0);
    assert_eq!(stats.windows.duplicate_events, 0);
    let score = truth.score(detections(&decisions));
    assert_eq!(score.precision, 1.0, "{score:?}");
    assert_eq!(score.recall, 1.0, "{score:?}");
    assert_eq!(
        decisions.len(),
        truth.expected.len(),
        "one command per detection"
    );
    assert!(detections(&decisions)
        .iter()
        .all(|d| &d.instance != slow || truth.expected_keys().contains(d)));
    // Counts match too: the engine's per-instance totals equal the truth's.
    let totals = engine.totals().unwrap();
    for (instance, counts) in &totals.instances {
        let want: Vec<u64> = (0..counts.len())
            .map(|s| {
                truth
                    .instance_windows
                    .iter()
                    .filter(|w| &w.instance == instance)
                    .map(|w| u64::from(w.counts[s]))
                    .sum()
            })
            .collect();
        assert_eq!(&counts[..], &want[..], "totals of {instance}");
    }
}

#[test]
fn hostile_usernames_never_count_against_decoys() {
    let cfg = small(vec![
        Scenario::HostileUsernames {
            instance: 2,
            offset_ms: 20_000,
            attempts: 120,
            per_second: 1.0,
        },
        Scenario::HostileUsernames {
            instance: 3,
            offset_ms: 0,
            attempts: 60,
            per_second: 0.25,
        },
    ]);
    let fleet = Fleet::generate(&cfg).unwrap();
    let truth = fleet.ground_truth();
    let decoys: BTreeSet<IpAddr> = truth.decoy_addresses.iter().copied().collect();
    assert!(decoys.len() >= 3, "{decoys:?}");
    let attackers: BTreeSet<IpAddr> = fleet
        .events()
        .iter()
        .filter(|e| e.scenario.is_some())
        .filter_map(|e| e.source)
        .collect();
    assert!(attackers.is_disjoint(&decoys));

    let mut engine = engine();
    let mut out = Vec::new();
    for (pos, r) in subscription_records(fleet.events(), 100).iter().enumerate() {
        engine
            .process_record(
                &RecordInput {
                    data: r,
                    position: pos as u64,
                    ..RecordInput::default()
                },
                &mut out,
            )
            .unwrap();
        for (src, _) in engine.windows().source_windows() {
            assert!(
                !decoys
                    .iter()
                    .any(|d| src.contains(&sshwarden_pipeline::peer::Peer::Ip(*d))),
                "a window counts against decoy {src}"
            );
        }
    }
    engine.finish();
    let totals = engine.totals().unwrap();
    for src in totals.sources.keys() {
        assert!(!decoys.iter().any(|d| src.contains(&Peer::Ip(*d))), "{src}");
    }
    for a in &attackers {
        assert!(
            totals.sources.keys().any(|n| n.contains(&Peer::Ip(*a))),
            "the real attacker {a} is counted"
        );
    }
    assert!(!out.is_empty(), "the attacked instances are detected");
    for d in &out {
        let Decision::Command(c) = d else {
            continue;
        };
        if let Some(cidr) = &c.source {
            let ip = cidr.split('/').next().unwrap_or(cidr);
            assert!(!decoys.iter().any(|d| d.to_string() == ip), "{c:?}");
        }
        for s in &c.top_sources {
            assert!(!decoys.iter().any(|d| d.to_string() == s.source), "{c:?}");
        }
    }
    assert!(
        engine.stats().ambiguous_lines > 0,
        "some lines are ambiguous by design"
    );
    let score = truth.score(detections(&out));
    assert_eq!((score.precision, score.recall), (1.0, 1.0), "{score:?}");
}

#[test]
fn auth_log_replays_through_process_line() {
    let fleet = Fleet::generate(&small(Scenario::default_mix(5, 6 * 60_000))).unwrap();
    let log = auth_log(fleet.events());
    assert_eq!(log.lines().count(), fleet.events().len());
    let mut engine = engine();
    let mut out = Vec::new();
    for (e, line) in fleet.events().iter().zip(log.lines()) {
        engine.process_line(
            &LineInput {
                instance: &e.instance,
                instance_from_host: false,
                event_id: Some(&e.id),
                time_ms: Some(e.time_ms),
                arrival_ms: None,
                position: 0,
                line,
            },
            &Origin::default(),
            &mut out,
        );
    }
    let score = fleet.ground_truth().score(detections(&out));
    assert_eq!((score.precision, score.recall), (1.0, 1.0), "{score:?}");
    assert!(out.iter().all(|d| matches!(d, Decision::Command(_))));
}

#[test]
fn default_mix_scores_perfectly_across_seeds() {
    for seed in [1, 2, 3] {
        let fleet = Fleet::generate(&FleetConfig {
            seed,
            ..FleetConfig::default()
        })
        .unwrap();
        // Records as long as the allowed lateness: still nothing is late.
        let opts = RecordOptions {
            max_span_ms: 60_000,
            ..RecordOptions::default()
        };
        let records: Vec<Vec<u8>> = encode_records(fleet.events(), &opts)
            .into_iter()
            .map(|r| r.data)
            .collect();
        let mut engine = engine();
        let decisions = run_records(&mut engine, &records);
        assert_eq!(engine.stats().windows.late_events, 0, "seed {seed}");
        let score = fleet.ground_truth().score(detections(&decisions));
        assert_eq!(
            (score.precision, score.recall),
            (1.0, 1.0),
            "seed {seed}: {score:?}"
        );
    }
}

#[test]
fn bad_configs_are_refused() {
    let bad = [
        FleetConfig {
            instances: 0,
            ..FleetConfig::default()
        },
        FleetConfig {
            scenarios: vec![Scenario::FastBruteForce {
                instance: 99,
                offset_ms: 0,
                attempts: 1,
                per_second: 1.0,
            }],
            ..FleetConfig::default()
        },
        FleetConfig {
            scenarios: vec![Scenario::UserEnumeration {
                instance: 0,
                offset_ms: 0,
                usernames: 1,
                per_second: 0.0,
            }],
            ..FleetConfig::default()
        },
        FleetConfig {
            benign_events_per_instance_per_min: f64::NAN,
            ..FleetConfig::default()
        },
        FleetConfig {
            start_ms: -1,
            ..FleetConfig::default()
        },
        FleetConfig {
            scenarios: vec![Scenario::SlowBruteForce {
                instance: 0,
                offset_ms: 0,
                attempts: 1,
                interval_ms: 0,
            }],
            ..FleetConfig::default()
        },
        FleetConfig {
            scenarios: vec![Scenario::HostileUsernames {
                instance: 0,
                offset_ms: i64::MAX,
                attempts: 1,
                per_second: 1.0,
            }],
            ..FleetConfig::default()
        },
        FleetConfig {
            instances: 100_000,
            duration_ms: 24 * 3_600_000,
            scenarios: vec![],
            ..FleetConfig::default()
        },
    ];
    for cfg in bad {
        assert!(Fleet::generate(&cfg).is_err(), "{cfg:?}");
    }
    let json = serde_json::to_string(&FleetConfig::default()).unwrap();
    let back: FleetConfig = serde_json::from_str(&json).unwrap();
    assert_eq!(back, FleetConfig::default());
}

#[test]
fn default_mix_has_one_incident_per_scenario() {
    let fleet = Fleet::generate(&FleetConfig::default()).unwrap();
    let truth = fleet.incident_truth();
    let kinds: Vec<IncidentKind> = truth.incidents.iter().map(|i| i.kind).collect();
    assert_eq!(
        kinds,
        fleet
            .config
            .scenarios
            .iter()
            .map(IncidentKind::of)
            .collect::<Vec<_>>()
    );
    assert_eq!(
        truth.compromised_instances,
        vec![fleet.instances[3].id.clone()]
    );
    assert!(!truth.decoy_addresses.is_empty());
    assert!((truth.instance_days - 20.0 * 10.0 / 1440.0).abs() < 1e-9);
    let admins: HashSet<IpAddr> = fleet.admin_addresses().into_iter().collect();
    assert!(truth.benign.iter().all(|b| admins.contains(&b.address)));
}

/// What a kill -9 and a takeover do, without the processes: an engine reads
/// the records up to some point; a new engine resumes from the checkpoint the
/// first could have written there (the record before its low water, with
/// its event time) and reads on to the end. Together they issue every
/// command a single engine issues (by id), whatever the point.
#[test]
fn a_takeover_at_any_record_issues_every_command() {
    let fleet = Fleet::generate(&FleetConfig {
        instances: 16,
        seed: 21,
        duration_ms: 150_000,
        ..small(
            (0..16)
                .map(|i| Scenario::FastBruteForce {
                    instance: i,
                    offset_ms: 0,
                    attempts: 75,
                    per_second: 0.5,
                })
                .collect(),
        )
    })
    .unwrap();
    let records = subscription_records(fleet.events(), 60);
    let ids = |ds: &[Decision]| -> BTreeSet<String> {
        ds.iter()
            .filter_map(|d| match d {
                Decision::Command(c) => Some(c.id.clone()),
                Decision::Suppressed { .. } => None,
            })
            .collect()
    };
    let whole = ids(&run_records(&mut engine(), &records));
    assert!(whole.len() > 20, "{}", whole.len());
    for stop in (1..records.len()).step_by(7) {
        let mut first = engine();
        let mut out = Vec::new();
        for (pos, r) in records[..stop].iter().enumerate() {
            first
                .process_record(
                    &RecordInput {
                        data: r,
                        position: pos as u64,
                        ..RecordInput::default()
                    },
                    &mut out,
                )
                .unwrap();
        }
        let resume_at = first.low_water_position().map_or(stop, |p| p as usize);
        let mut second = engine();
        if let Some(t) = first.event_time() {
            second.resume_from(t);
        }
        for (pos, r) in records.iter().enumerate().skip(resume_at) {
            second
                .process_record(
                    &RecordInput {
                        data: r,
                        position: pos as u64,
                        ..RecordInput::default()
                    },
                    &mut out,
                )
                .unwrap();
        }
        second.finish();
        let got = ids(&out);
        let missing: Vec<_> = whole.difference(&got).collect();
        assert!(
            missing.is_empty(),
            "stop at record {stop} (resume at {resume_at}): missing {missing:?}"
        );
    }
}
