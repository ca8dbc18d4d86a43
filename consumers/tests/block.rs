//! The `block` action against moto's EC2, DynamoDB and SNS (and dynalite's
//! DynamoDB for the race): deny entries in the reserved range of the
//! attacked subnet's network ACL, replays, slots, eviction, expiry,
//! escalation, IPv6, refusals, and two workers racing for one ACL.
//!
//! Each test builds its own VPC, so its default network ACL (allow 100,
//! deny 32767) is its own. Needs `scripts/emulators up`.
#![cfg(feature = "direct")]

mod moto_subnet;

use std::collections::BTreeMap;

use sshwarden::config::{AclScope, BlockPorts, BlockSettings};
use sshwarden::sink::block::acl::Acls;
use sshwarden::sink::block::{denies, Blocker, Outcome};
use sshwarden_pipeline::command::{Action, Command};
use sshwarden_pipeline::rules::SubjectKind;

const NOW: i64 = 1_800_000_000;

struct Fleet {
    ec2: aws_sdk_ec2::Client,
    vpc_id: String,
    acl: String,
    instance: String,
    vpc_cidr: String,
    topic: String,
}

async fn fleet(sdk: &aws_config::SdkConfig) -> Fleet {
    let ec2 = aws_sdk_ec2::Client::new(sdk);
    let octet = rand::random::<u8>();
    let vpc_cidr = format!("10.{octet}.0.0/16");
    let moto_subnet::Subnet {
        vpc_id,
        instance,
        acl,
    } = moto_subnet::subnet_with_instance(&ec2, &format!("10.{octet}"), true).await;
    let sns = aws_sdk_sns::Client::new(sdk);
    let topic = sns
        .create_topic()
        .name(format!("sshwarden-block-test-{octet}"))
        .send()
        .await
        .expect("topic")
        .topic_arn()
        .expect("arn")
        .to_owned();
    Fleet {
        ec2,
        vpc_id,
        acl,
        instance,
        vpc_cidr,
        topic,
    }
}

fn block_command(id: &str, source: &str, instance: &str) -> Command {
    Command {
        version: 1,
        id: id.into(),
        action: Action::Block,
        held: false,
        reason: None,
        subject_kind: SubjectKind::Source,
        instance_id: None,
        source: Some(source.into()),
        account: "123456789012".into(),
        log_group: "/sshwarden/auth".into(),
        log_stream: instance.into(),
        rule: "brute-force".into(),
        window_secs: 600,
        window_start: "2027-01-15T08:00:00.000Z".into(),
        window_end: "2027-01-15T08:10:00.000Z".into(),
        window_start_ms: 1_800_000_000_000,
        counts: BTreeMap::from([("password_failure", 5)]),
        distinct: BTreeMap::new(),
        instances: vec![instance.into()],
        top_sources: Vec::new(),
        other_source_events: 0,
        sample_lines: Vec::new(),
        detected_at: "2027-01-15T08:01:00.000Z".into(),
    }
}

fn settings() -> BlockSettings {
    BlockSettings {
        table: format!("sshwarden-blocks-test-{:08x}", rand::random::<u32>()),
        ..Default::default()
    }
}

async fn blocker(
    sdk: &aws_config::SdkConfig,
    ledger_sdk: &aws_config::SdkConfig,
    f: &Fleet,
    s: BlockSettings,
) -> Blocker {
    let b = Blocker::new(
        s,
        aws_sdk_ec2::Client::new(sdk),
        aws_sdk_dynamodb::Client::new(ledger_sdk),
        Some((aws_sdk_sns::Client::new(sdk), f.topic.clone())),
    )
    .expect("settings");
    b.ensure().await.expect("blocks table");
    b
}

async fn entries(f: &Fleet) -> BTreeMap<i32, sshwarden::sink::block::acl::Entry> {
    Acls::new(f.ec2.clone(), BlockPorts::All)
        .entries(&f.acl)
        .await
        .expect("entries")
}

fn in_range(e: &BTreeMap<i32, sshwarden::sink::block::acl::Entry>) -> Vec<i32> {
    e.keys()
        .copied()
        .filter(|n| (90..=99).contains(n))
        .collect()
}

#[tokio::test]
async fn one_entry_per_prefix_replays_change_nothing_and_a_full_range_evicts_the_soonest_expiring()
{
    let sdk = sshwarden_testsupport::sdk(&sshwarden_testsupport::moto_endpoint()).await;
    let f = fleet(&sdk).await;
    let b = blocker(&sdk, &sdk, &f, settings()).await;

    let first = block_command("sw1-s-first", "203.0.113.9/32", &f.instance);
    let out = b.block(&first, NOW).await.expect("block");
    let Outcome::Blocked {
        record, evicted, ..
    } = out
    else {
        panic!("not blocked: {out:?}");
    };
    assert_eq!(record.acls, BTreeMap::from([(f.acl.clone(), 90)]));
    assert_eq!((record.ban_count, record.ban_secs), (1, 3_600));
    assert!(evicted.is_empty());
    let e = entries(&f).await;
    assert_eq!(denies(&e, "203.0.113.9/32"), vec![90]);
    assert_eq!(in_range(&e), vec![90]);

    // The same command again: nothing changes.
    let again = b.block(&first, NOW + 5).await.expect("replay");
    assert!(matches!(again, Outcome::Replay), "{again:?}");
    assert_eq!(in_range(&entries(&f).await), vec![90]);

    // A second prefix takes the next slot; nine more fill the range.
    for i in 1..10 {
        let c = block_command(
            &format!("sw1-s-p{i}"),
            &format!("198.51.100.{i}/32"),
            &f.instance,
        );
        let Outcome::Blocked {
            record, evicted, ..
        } = b.block(&c, NOW + i64::from(i)).await.expect("block")
        else {
            panic!("prefix {i} not blocked");
        };
        assert_eq!(record.acls[&f.acl], 90 + i);
        assert!(evicted.is_empty());
    }
    assert_eq!(in_range(&entries(&f).await), (90..=99).collect::<Vec<_>>());

    // The eleventh evicts the one that expires soonest: the first.
    let eleventh = block_command("sw1-s-p10", "198.51.100.10/32", &f.instance);
    let Outcome::Blocked {
        record,
        evicted,
        notification,
    } = b.block(&eleventh, NOW + 10).await.expect("block")
    else {
        panic!("eleventh not blocked");
    };
    assert_eq!(record.acls[&f.acl], 90);
    assert_eq!(evicted.len(), 1);
    assert_eq!(evicted[0].cidr, "203.0.113.9/32");
    let summary = notification.message["summary"].as_str().unwrap_or("");
    assert!(summary.contains("Evicted 203.0.113.9/32"), "{summary}");
    assert_eq!(
        notification.message["evicted"][0]["source"],
        "203.0.113.9/32"
    );
    let e = entries(&f).await;
    assert_eq!(denies(&e, "198.51.100.10/32"), vec![90]);
    assert!(denies(&e, "203.0.113.9/32").is_empty());
    assert_eq!(in_range(&e).len(), 10);
    let listed = b.list().await.expect("list");
    let evicted_record = listed
        .iter()
        .find(|r| r.cidr == "203.0.113.9/32")
        .expect("record kept");
    assert!(evicted_record.acls.is_empty(), "{evicted_record:?}");
    // Nothing outside the range was touched.
    assert!(e.contains_key(&100) && e.contains_key(&32767));
}

#[tokio::test]
async fn expiry_lifts_the_entry_and_a_re_offence_within_the_look_back_doubles_the_ban() {
    let sdk = sshwarden_testsupport::sdk(&sshwarden_testsupport::moto_endpoint()).await;
    let f = fleet(&sdk).await;
    let b = blocker(&sdk, &sdk, &f, settings()).await;
    let c = block_command("sw1-s-a", "192.0.2.77/32", &f.instance);
    assert!(matches!(
        b.block(&c, NOW).await.expect("block"),
        Outcome::Blocked { .. }
    ));
    // Another rule fires on the same attack while the ban holds: the ban
    // is extended to an hour from now, not escalated.
    let same_attack = block_command("sw1-s-a-slow", "192.0.2.77/32", &f.instance);
    let Outcome::Blocked { record, .. } = b.block(&same_attack, NOW + 100).await.expect("block")
    else {
        panic!("second rule not handled as a block");
    };
    assert_eq!((record.ban_count, record.ban_secs), (1, 3_600));
    assert_eq!(record.expires_at, NOW + 3_700);
    assert_eq!(denies(&entries(&f).await, "192.0.2.77/32"), vec![90]);
    assert!(b.sweep(NOW + 3_699).await.expect("sweep").is_empty());
    assert_eq!(denies(&entries(&f).await, "192.0.2.77/32"), vec![90]);
    let lifted = b.sweep(NOW + 3_700).await.expect("sweep");
    assert_eq!(lifted.len(), 1);
    assert_eq!(lifted[0].removed, BTreeMap::from([(f.acl.clone(), 90)]));
    assert!(in_range(&entries(&f).await).is_empty());
    assert!(
        b.sweep(NOW + 3_750).await.expect("sweep").is_empty(),
        "sweep is idempotent"
    );
    // The replay of the first command after expiry changes nothing.
    assert!(matches!(
        b.block(&c, NOW + 3_800).await.expect("replay"),
        Outcome::Replay
    ));
    assert!(in_range(&entries(&f).await).is_empty());

    let again = block_command("sw1-s-b", "192.0.2.77/32", &f.instance);
    let Outcome::Blocked { record, .. } = b.block(&again, NOW + 4_000).await.expect("block") else {
        panic!("re-offence not blocked");
    };
    assert_eq!((record.ban_count, record.ban_secs), (2, 7_200));
    assert_eq!(record.expires_at, NOW + 4_000 + 7_200);
    assert_eq!(denies(&entries(&f).await, "192.0.2.77/32"), vec![90]);

    // By hand.
    let lifted = b
        .unblock("192.0.2.77/32", NOW + 4_100)
        .await
        .expect("unblock")
        .expect("was blocked");
    assert_eq!(lifted.removed.len(), 1);
    assert!(in_range(&entries(&f).await).is_empty());
    assert!(b
        .unblock("192.0.2.77/32", NOW + 4_200)
        .await
        .expect("unblock")
        .is_none());
}

#[tokio::test]
async fn ipv6_prefixes_get_ipv6_entries_and_allowlisted_or_internal_sources_are_refused() {
    let sdk = sshwarden_testsupport::sdk(&sshwarden_testsupport::moto_endpoint()).await;
    let f = fleet(&sdk).await;
    let mut s = settings();
    s.allowlist = vec!["198.51.100.0/24".into()];
    s.ports = BlockPorts::Ssh;
    let b = blocker(&sdk, &sdk, &f, s).await;

    let v6 = block_command("sw1-s-v6", "2001:db8:1:2::/64", &f.instance);
    assert!(matches!(
        b.block(&v6, NOW).await.expect("block"),
        Outcome::Blocked { .. }
    ));
    let acls = f
        .ec2
        .describe_network_acls()
        .network_acl_ids(&f.acl)
        .send()
        .await
        .expect("acl");
    let entry = acls.network_acls()[0]
        .entries()
        .iter()
        .find(|e| e.rule_number() == Some(90) && e.egress() == Some(false))
        .expect("entry 90");
    assert_eq!(entry.ipv6_cidr_block(), Some("2001:db8:1:2::/64"));
    assert_eq!(entry.protocol(), Some("6"));
    assert_eq!(entry.port_range().and_then(|p| p.from()), Some(22));

    for (id, source, why) in [
        ("sw1-s-allow", "198.51.100.7/32", "allowlisted"),
        ("sw1-s-vpc", &f.vpc_cidr.replace("0.0/16", "1.5/32"), "VPC"),
        ("sw1-s-wide", "0.0.0.0/0", "wider"),
    ] {
        let c = block_command(id, source, &f.instance);
        match b.block(&c, NOW).await.expect("answer") {
            Outcome::Refused {
                reason,
                notification,
            } => {
                assert!(reason.contains(why), "{reason}");
                assert_eq!(notification.message["event"], "block-refused");
            }
            other => panic!("{source} not refused: {other:?}"),
        }
    }
    assert_eq!(in_range(&entries(&f).await), vec![90]);
}

#[tokio::test]
async fn a_rule_sshwarden_did_not_write_in_the_range_stops_the_block() {
    let sdk = sshwarden_testsupport::sdk(&sshwarden_testsupport::moto_endpoint()).await;
    let f = fleet(&sdk).await;
    f.ec2
        .create_network_acl_entry()
        .network_acl_id(&f.acl)
        .rule_number(95)
        .egress(false)
        .protocol("-1")
        .rule_action(aws_sdk_ec2::types::RuleAction::Deny)
        .cidr_block("192.0.2.0/24")
        .send()
        .await
        .expect("foreign entry");
    let b = blocker(&sdk, &sdk, &f, settings()).await;
    let c = block_command("sw1-s-f", "203.0.113.50/32", &f.instance);
    let e = b.block(&c, NOW).await.expect_err("refused");
    assert_eq!(e.error, "sshwarden.ForeignRuleInRange");
    assert!(!e.transient);
    assert_eq!(in_range(&entries(&f).await), vec![95]);
}

/// Two workers (own clients, own process state) block different prefixes
/// in the same ACL at once. The ledger is on dynalite: moto's DynamoDB does
/// not hold a lock between a condition and its write, so racing creations
/// of one slot can both succeed there, which would test the emulator, not
/// the ledger (see `ledger.rs`).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_workers_racing_for_one_acl_never_take_the_same_rule_number() {
    let sdk = sshwarden_testsupport::sdk(&sshwarden_testsupport::moto_endpoint()).await;
    let ledger_sdk = sshwarden_testsupport::sdk(&sshwarden_testsupport::dynalite_endpoint()).await;
    let f = fleet(&sdk).await;
    let s = settings();
    let mut tasks = Vec::new();
    for w in 0..2u8 {
        let b = blocker(&sdk, &ledger_sdk, &f, s.clone()).await;
        let instance = f.instance.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for p in 0..4u8 {
                let cidr = format!("203.0.113.{}/32", w * 10 + p);
                let c = block_command(&format!("sw1-s-race-{w}-{p}"), &cidr, &instance);
                match b.block(&c, NOW).await.expect("block") {
                    Outcome::Blocked { record, .. } => {
                        got.push((cidr, *record.acls.values().next().expect("placed")))
                    }
                    other => panic!("{cidr}: {other:?}"),
                }
            }
            got
        }));
    }
    let mut numbers = BTreeMap::new();
    for t in tasks {
        for (cidr, n) in t.await.expect("task") {
            if let Some(other) = numbers.insert(n, cidr.clone()) {
                panic!("rule {n} given to {other} and {cidr}");
            }
        }
    }
    assert_eq!(numbers.len(), 8);
    let e = entries(&f).await;
    for (n, cidr) in &numbers {
        assert_eq!(denies(&e, cidr), vec![*n], "{cidr}");
    }
}

fn sshwarden_blocks(args: &[&str], table: &str) -> serde_json::Value {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_sshwarden"))
        .arg("blocks")
        .args(args)
        .arg("--json")
        .args(
            table
                .strip_prefix("config:")
                .map_or_else(|| ["--blocks-table", table], |file| ["--config", file]),
        )
        .env("AWS_ENDPOINT_URL", sshwarden_testsupport::moto_endpoint())
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ACCESS_KEY_ID", "testing")
        .env("AWS_SECRET_ACCESS_KEY", "testing")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env_remove("SSHWARDEN_TOPIC_ARN")
        .env_remove("SSHWARDEN_CONFIG")
        .output()
        .expect("run sshwarden");
    assert!(
        out.status.success(),
        "sshwarden blocks {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

/// `sshwarden blocks list | sweep | unblock --json`, each its own process,
/// on bans placed at the wall clock: one ended an hour ago, one in force.
#[tokio::test]
async fn the_operator_commands_list_sweep_and_unblock() {
    let sdk = sshwarden_testsupport::sdk(&sshwarden_testsupport::moto_endpoint()).await;
    let f = fleet(&sdk).await;
    let s = settings();
    let table = s.table.clone();
    let b = blocker(&sdk, &sdk, &f, s).await;
    let now = sshwarden_testsupport::now_ms() / 1000;
    for (id, cidr, at) in [
        ("sw1-s-old", "192.0.2.1/32", now - 7_200),
        ("sw1-s-new", "192.0.2.2/32", now),
    ] {
        let c = block_command(id, cidr, &f.instance);
        assert!(matches!(
            b.block(&c, at).await.expect("block"),
            Outcome::Blocked { .. }
        ));
    }
    // The table named in the config file's [blocks], as the workers read it.
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("sshwarden.toml");
    std::fs::write(&file, format!("[blocks]\ntable = \"{table}\"\n")).expect("config");
    let listed = sshwarden_blocks(&["list"], &format!("config:{}", file.display()));
    let cidrs: Vec<&str> = listed["blocks"]
        .as_array()
        .expect("blocks")
        .iter()
        .filter_map(|b| b["cidr"].as_str())
        .collect();
    assert_eq!(cidrs, ["192.0.2.1/32", "192.0.2.2/32"]);
    assert_eq!(listed["blocks"][1]["acls"][&f.acl], 91);
    assert_eq!(listed["blocks"][1]["ban_count"], 1);

    let swept = sshwarden_blocks(&["sweep"], &table);
    assert_eq!(swept["swept"].as_array().map(Vec::len), Some(1), "{swept}");
    assert_eq!(swept["swept"][0]["cidr"], "192.0.2.1/32");
    let again = sshwarden_blocks(&["sweep"], &table);
    assert_eq!(again["swept"].as_array().map(Vec::len), Some(0), "{again}");
    assert_eq!(in_range(&entries(&f).await), vec![91]);

    let lifted = sshwarden_blocks(&["unblock", "192.0.2.2/32"], &table);
    assert_eq!(lifted["unblocked"]["removed"][&f.acl], 91, "{lifted}");
    assert!(in_range(&entries(&f).await).is_empty());
    let listed = sshwarden_blocks(&["list"], &table);
    assert_eq!(listed["blocks"].as_array().map(Vec::len), Some(0));
}

/// A rule put into the range after the range was checked is never
/// overwritten: the block fails for good and frees the slot it had taken.
#[tokio::test]
async fn a_rule_added_to_the_range_later_is_left_alone() {
    let sdk = sshwarden_testsupport::sdk(&sshwarden_testsupport::moto_endpoint()).await;
    let f = fleet(&sdk).await;
    let b = blocker(&sdk, &sdk, &f, settings()).await;
    let first = block_command("sw1-s-l1", "203.0.113.60/32", &f.instance);
    assert!(matches!(
        b.block(&first, NOW).await.expect("block"),
        Outcome::Blocked { .. }
    ));
    f.ec2
        .create_network_acl_entry()
        .network_acl_id(&f.acl)
        .rule_number(91)
        .egress(false)
        .protocol("-1")
        .rule_action(aws_sdk_ec2::types::RuleAction::Deny)
        .cidr_block("192.0.2.0/24")
        .send()
        .await
        .expect("foreign entry");
    let second = block_command("sw1-s-l2", "203.0.113.61/32", &f.instance);
    let e = b.block(&second, NOW + 1).await.expect_err("refused");
    assert_eq!(e.error, "sshwarden.ForeignRuleInRange");
    let e = entries(&f).await;
    assert_eq!(denies(&e, "192.0.2.0/24"), vec![91]);
    assert_eq!(in_range(&e), vec![90, 91]);
}

/// `scope = "vpc"`: every ACL of the attacked instance's VPC gets the deny,
/// not only its own subnet's.
#[tokio::test]
async fn the_vpc_scope_denies_in_every_acl_of_the_vpc() {
    let sdk = sshwarden_testsupport::sdk(&sshwarden_testsupport::moto_endpoint()).await;
    let f = fleet(&sdk).await;
    let other = moto_subnet::create_acl(&f.ec2, &f.vpc_id).await;
    let mut s = settings();
    s.scope = AclScope::Vpc;
    let b = blocker(&sdk, &sdk, &f, s).await;
    let c = block_command("sw1-s-vpcwide", "203.0.113.70/32", &f.instance);
    let Outcome::Blocked { record, .. } = b.block(&c, NOW).await.expect("block") else {
        panic!("not blocked");
    };
    assert_eq!(
        record.acls,
        BTreeMap::from([(f.acl.clone(), 90), (other.clone(), 90)])
    );
    let acls = Acls::new(f.ec2.clone(), BlockPorts::All);
    for acl in [&f.acl, &other] {
        let e = acls.entries(acl).await.expect("entries");
        assert_eq!(denies(&e, "203.0.113.70/32"), vec![90], "{acl}");
    }
}

/// `[blocks] acls`: the deny goes into the listed ACLs instead of the
/// subnet's; a listed ACL of another VPC than the attacked instance's is
/// refused before any write; with the protected VPC known (the direct
/// sink's), an ACL outside it is never written and an instance outside it
/// is not located.
#[tokio::test]
async fn listed_acls_are_used_and_checked_against_the_vpc() {
    let sdk = sshwarden_testsupport::sdk(&sshwarden_testsupport::moto_endpoint()).await;
    let f = fleet(&sdk).await;
    let listed = moto_subnet::create_acl(&f.ec2, &f.vpc_id).await;
    let elsewhere = moto_subnet::subnet_with_instance(&f.ec2, "10.250", false).await;
    let foreign = moto_subnet::create_acl(&f.ec2, &elsewhere.vpc_id).await;

    let mut s = settings();
    s.acls = vec![listed.clone()];
    let b = blocker(&sdk, &sdk, &f, s).await;
    let c = block_command("sw1-s-listed", "203.0.113.80/32", &f.instance);
    let Outcome::Blocked { record, .. } = b.block(&c, NOW).await.expect("block") else {
        panic!("not blocked");
    };
    assert_eq!(record.acls, BTreeMap::from([(listed.clone(), 90)]));
    let acls = Acls::new(f.ec2.clone(), BlockPorts::All);
    assert_eq!(
        denies(
            &acls.entries(&listed).await.expect("entries"),
            "203.0.113.80/32"
        ),
        vec![90]
    );
    assert!(
        in_range(&entries(&f).await).is_empty(),
        "the subnet's ACL was written"
    );

    let mut s = settings();
    s.acls = vec![foreign.clone()];
    let b = blocker(&sdk, &sdk, &f, s).await;
    let c = block_command("sw1-s-foreign", "203.0.113.81/32", &f.instance);
    let e = b.block(&c, NOW).await.expect_err("a foreign ACL");
    assert_eq!(e.error, "sshwarden.AclOutsideVpc", "{e:?}");
    assert!(!e.transient);
    let fe = acls.entries(&foreign).await.expect("entries");
    assert!(!fe.keys().any(|n| (90..=99).contains(n)), "{fe:?}");

    // The protected VPC is the other one: the attacked instance is not
    // located there, so nothing is found to write; a listed ACL of the
    // instance's VPC is refused when read before the write.
    let b = blocker(&sdk, &sdk, &f, settings())
        .await
        .with_protected_vpc(Some(elsewhere.vpc_id.clone()));
    let c = block_command("sw1-s-outside", "203.0.113.82/32", &f.instance);
    let out = b.block(&c, NOW).await.expect("block");
    assert!(
        matches!(&out, Outcome::Refused { reason, .. } if reason.contains("no network ACL")),
        "{out:?}"
    );
    let mut s = settings();
    s.acls = vec![listed.clone()];
    let b = blocker(&sdk, &sdk, &f, s)
        .await
        .with_protected_vpc(Some(elsewhere.vpc_id.clone()));
    let c = block_command("sw1-s-outside2", "203.0.113.83/32", &f.instance);
    let out = b.block(&c, NOW).await;
    assert!(
        matches!(&out, Ok(Outcome::Refused { .. }))
            || matches!(&out, Err(e) if e.error == "sshwarden.AclOutsideVpc"),
        "{out:?}"
    );
    assert!(denies(
        &acls.entries(&listed).await.expect("entries"),
        "203.0.113.83/32"
    )
    .is_empty());
}

/// The plan the Step Functions sink sends the block machine: the ban's
/// length from the ledger (a re-offence after a ban doubles it), refusals
/// the machine cannot compute (allowlist, the VPC's own range) carried as
/// `refused`, and nothing for a command the ledger records.
#[tokio::test]
async fn the_plan_for_the_block_machine_escalates_and_refuses() {
    let sdk = sshwarden_testsupport::sdk(&sshwarden_testsupport::moto_endpoint()).await;
    let f = fleet(&sdk).await;
    let mut s = settings();
    s.allowlist = vec!["192.0.2.0/24".into()];
    let b = blocker(&sdk, &sdk, &f, s).await;

    let c = block_command("sw1-s-plan1", "203.0.113.90/32", &f.instance);
    let plan = b.plan(&c, NOW).await.expect("plan").expect("not a replay");
    assert_eq!(plan["id"], "sw1-s-plan1");
    assert_eq!(plan["action"], "block");
    let p = &plan["block"];
    assert_eq!(p["cidr"], "203.0.113.90/32");
    assert_eq!(p["scope"], "subnets");
    assert_eq!(
        (p["ban_count"].as_i64(), p["ban_secs"].as_i64()),
        (Some(1), Some(3_600))
    );
    assert_eq!(p["expires_at"].as_i64(), Some(NOW + 3_600));
    assert_eq!(p["purge_at"].as_i64(), Some(NOW + 3_600 + 7 * 86_400));
    assert_eq!(p["expires"], "2027-01-15T09:00:00.000Z");
    assert_eq!(p["command_ids"], serde_json::json!(["sw1-s-plan1"]));

    // The ban as a machine would record it, then ended: a re-offence
    // within the look-back gets the second, doubled ban; the command
    // already recorded plans nothing.
    let Outcome::Blocked { .. } = b.block(&c, NOW).await.expect("block") else {
        panic!("not blocked");
    };
    assert!(
        b.plan(&c, NOW + 10).await.expect("plan").is_none(),
        "a replay"
    );
    b.sweep(NOW + 3_600).await.expect("sweep");
    let again = block_command("sw1-s-plan2", "203.0.113.90/32", &f.instance);
    let plan = b
        .plan(&again, NOW + 7_200)
        .await
        .expect("plan")
        .expect("plan");
    let p = &plan["block"];
    assert_eq!(
        (p["ban_count"].as_i64(), p["ban_secs"].as_i64()),
        (Some(2), Some(7_200))
    );
    assert_eq!(
        p["command_ids"],
        serde_json::json!(["sw1-s-plan1", "sw1-s-plan2"])
    );

    for (id, source, want) in [
        ("sw1-s-allow", "192.0.2.7/32", "allowlisted"),
        ("sw1-s-inside", "10.0.0.9/32", "VPC's own range"),
    ] {
        let source = if id == "sw1-s-inside" {
            f.vpc_cidr.replace("0.0/16", "1.9/32")
        } else {
            source.to_owned()
        };
        let c = block_command(id, &source, &f.instance);
        let plan = b.plan(&c, NOW).await.expect("plan").expect("plan");
        let reason = plan["block"]["refused"].as_str().unwrap_or_default();
        assert!(reason.contains(want), "{source}: {plan}");
        assert!(plan["block"].get("cidr").is_none(), "{plan}");
    }
}
