//! A brute force through a separate `sshwarden run --sink direct` process
//! with a `[blocks]` section in its config file: the source ends up denied
//! in the attacked subnet's network ACL, in the reserved range, once; and
//! the worker's own sweep lifts a ban when it ends. With `--sink sfn` the
//! worker starts the block state machine (infra/statemachines/block.asl.json,
//! executed by moto), whose ledger `sshwarden blocks` reads and undoes.
//! Kinesis on kinesis-local; EC2, SNS and DynamoDB on moto
//! (`scripts/emulators up`). The harness is in common/kinesis.rs.
#![cfg(feature = "direct")]

mod moto_subnet;

use std::io::Write;

use serde_json::json;
use sshwarden::config::BlockPorts;
use sshwarden::sink::block::acl::Acls;
use sshwarden::sink::block::denies;

mod common;
use common::kinesis::*;
use common::*;

/// A CloudWatch Logs subscription payload (gzip JSON) of `lines` from the
/// log stream `instance`, one second apart from `start_ms`. Event ids are
/// unique per payload: the engine drops an id it has seen on the stream.
fn payload(instance: &str, start_ms: i64, lines: &[String]) -> Vec<u8> {
    let batch = rand::random::<u32>();
    let events: Vec<_> = lines
        .iter()
        .enumerate()
        .map(|(i, m)| json!({"id": format!("{batch}-{i}"), "timestamp": start_ms + 1_000 * i as i64, "message": m}))
        .collect();
    let doc = json!({
        "messageType": "DATA_MESSAGE",
        "owner": "123456789012",
        "logGroup": "/sshwarden/auth",
        "logStream": instance,
        "subscriptionFilters": ["sshwarden"],
        "logEvents": events,
    });
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(doc.to_string().as_bytes()).expect("gzip");
    gz.finish().expect("gzip")
}

/// A VPC with one subnet, one instance in it, the subnet's ACL, a
/// quarantine group and a topic; a fresh blocks table.
struct Setup {
    ec2: aws_sdk_ec2::Client,
    vpc: String,
    instance: String,
    acl: String,
    group: String,
    topic: String,
    table: String,
    dir: tempfile::TempDir,
}

async fn setup(sdk: &aws_config::SdkConfig, net: &str) -> Setup {
    let ec2 = aws_sdk_ec2::Client::new(sdk);
    let moto_subnet::Subnet {
        vpc_id,
        instance,
        acl,
    } = moto_subnet::subnet_with_instance(&ec2, net, false).await;
    let group = ec2
        .create_security_group()
        .group_name(format!("quarantine-{}", rand::random::<u32>()))
        .description("quarantine")
        .vpc_id(&vpc_id)
        .send()
        .await
        .expect("group")
        .group_id()
        .expect("group id")
        .to_owned();
    let topic = aws_sdk_sns::Client::new(sdk)
        .create_topic()
        .name("sshwarden-block-run")
        .send()
        .await
        .expect("topic")
        .topic_arn()
        .expect("arn")
        .to_owned();
    Setup {
        ec2,
        vpc: vpc_id,
        instance,
        acl,
        group,
        topic,
        table: format!("sshwarden-blocks-run-{:08x}", rand::random::<u32>()),
        dir: tempfile::tempdir().expect("tempdir"),
    }
}

impl Setup {
    /// A worker with the direct sink, this setup's group and topic, and
    /// [`Setup::config`] with `more`; started once it holds the shard.
    async fn direct_worker(&self, h: &mut Harness, id: &str, more: &str) -> usize {
        let config = self.config(more);
        h.spawn_sole(
            id,
            &Spawn {
                sink: Some("direct"),
                args: &[
                    "--quarantine-group-id",
                    &self.group,
                    "--topic-arn",
                    &self.topic,
                    "--config",
                    &config,
                ],
                ..Spawn::default()
            },
        )
        .await
    }

    /// [`brute_force`] from `source` on this setup's instance, put.
    async fn attack(&self, h: &Harness, source: &str) {
        h.put_raw(&[(self.instance.clone(), brute_force(&self.instance, source))])
            .await;
    }

    /// A config file: the graduated policy's brute-force rule (the harness
    /// runs the seed policy, which has no block rule; rules in the file
    /// replace it) and `[blocks]` with this table and `more`.
    fn config(&self, more: &str) -> String {
        let path = self.dir.path().join("sshwarden.toml");
        std::fs::write(
            &path,
            format!(
                "[[rules]]\nname = \"brute-force\"\nsubject = \"source\"\nwindow_secs = {WINDOW_SECS}\n\
                 signals = [\"auth_failure\"]\nthreshold = 5\naction = \"block\"\n\n\
                 [blocks]\ntable = \"{}\"\n{more}",
                self.table
            ),
        )
        .expect("config");
        path.to_string_lossy().into_owned()
    }
}

/// The brute-force rule's window in [`Setup::config`].
const WINDOW_SECS: i64 = 600;

/// Six failed passwords from `source` against `instance`, a second apart,
/// starting 30 to 36 s ago and all in one window of the rule: windows are
/// tumbling and aligned to the epoch (docs/detection.md), so six lines
/// across a boundary would count four and two and fire nothing (two tests
/// once timed out so, their attacks sent at 11:50:26).
fn brute_force(instance: &str, source: &str) -> Vec<u8> {
    let window_ms = WINDOW_SECS * 1_000;
    let mut start = sshwarden_testsupport::now_ms() - 30_000;
    let last = start + 5_000;
    if last.div_euclid(window_ms) != start.div_euclid(window_ms) {
        start = last.div_euclid(window_ms) * window_ms - 6_000;
    }
    let lines: Vec<String> = (0..6)
        .map(|i| {
            format!(
                "{} ip-10-0-1-5 sshd[{}]: Failed password for root from {source} port {} ssh2",
                sshwarden_pipeline::time::format_rfc3339_ms(start + 1_000 * i),
                4100 + i,
                40_000 + i
            )
        })
        .collect();
    payload(instance, start, &lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brute_force_through_the_direct_sink_denies_the_source_in_the_subnets_acl() {
    let mut h = Harness::new("block-run", 1).await;
    let sdk = sshwarden_testsupport::sdk(&sshwarden_testsupport::moto_endpoint()).await;
    let s = setup(&sdk, "10.77").await;
    let w = s.direct_worker(&mut h, "blocker", "").await;
    s.attack(&h, "203.0.113.9").await;
    let acls = Acls::new(s.ec2.clone(), BlockPorts::All);
    let d = Deadline::new("the deny entry of 203.0.113.9/32", MAX_WAIT);
    loop {
        let e = acls.entries(&s.acl).await.expect("entries");
        let rules = denies(&e, "203.0.113.9/32");
        if !rules.is_empty() {
            assert_eq!(rules, vec![90]);
            let reserved: Vec<i32> = e
                .keys()
                .copied()
                .filter(|n| (90..=99).contains(n))
                .collect();
            assert_eq!(reserved, vec![90], "one entry in the range");
            break;
        }
        d.check(|| {
            let m: Vec<String> = h.workers[w]
                .metrics()
                .lines()
                .filter(|l| !l.starts_with('#') && !l.ends_with(" 0"))
                .map(str::to_owned)
                .collect();
            format!("entries of {}: {e:?}; metrics:\n{}", s.acl, m.join("\n"))
        });
        poll().await;
    }
}

/// Expiry in a running worker: a one-second ban, swept every second by the
/// worker itself, leaves the range empty again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_running_worker_lifts_a_ban_when_it_ends() {
    let mut h = Harness::new("block-sweep", 1).await;
    let sdk = sshwarden_testsupport::sdk(&sshwarden_testsupport::moto_endpoint()).await;
    let s = setup(&sdk, "10.78").await;
    let w = s
        .direct_worker(
            &mut h,
            "sweeper",
            "ban_secs = 1\nmax_ban_secs = 1\nsweep_secs = 1\n",
        )
        .await;
    s.attack(&h, "198.51.100.23").await;
    let d = Deadline::new("the worker's sweep to lift 198.51.100.23/32", MAX_WAIT);
    while h.workers[w]
        .logs_with("ban ended; entries removed")
        .is_empty()
    {
        d.check(|| h.workers[w].tails(20));
        poll().await;
    }
    assert_eq!(h.workers[w].logs_with("source blocked").len(), 1);
    let lifted = h.workers[w].logs_with("ban ended; entries removed");
    assert_eq!(lifted.len(), 1, "{lifted:?}");
    let e = Acls::new(s.ec2.clone(), BlockPorts::All)
        .entries(&s.acl)
        .await
        .expect("entries");
    assert!(denies(&e, "198.51.100.23/32").is_empty(), "{e:?}");
    assert!(!e.keys().any(|n| (90..=99).contains(n)), "{e:?}");
}

/// Asks moto to run state machines (its own EC2, DynamoDB and SNS behind
/// the SDK tasks) instead of only recording executions.
fn enable_moto_executions(moto: &str) {
    use std::io::{Read, Write};
    let authority = moto.trim_start_matches("http://").trim_end_matches('/');
    let body = r#"{"stepfunctions": {"execute_state_machine": true}}"#;
    let mut s = std::net::TcpStream::connect(authority).expect("moto (scripts/emulators up)");
    write!(
        s,
        "POST /moto-api/config HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .expect("write");
    let mut reply = String::new();
    s.read_to_string(&mut reply).expect("read");
    assert!(reply.starts_with("HTTP/1.1 20"), "moto config: {reply}");
}

/// The block state machine on moto, with this test's VPC, topic and table.
async fn block_machine(sdk: &aws_config::SdkConfig, s: &Setup) -> String {
    let definition = include_str!("../../infra/statemachines/block.asl.json")
        .replace("${VpcId}", &s.vpc)
        .replace("${TopicArn}", &s.topic)
        .replace("${BlocksTable}", &s.table)
        .replace("${RuleFirst}", "90")
        .replace("${RuleLast}", "99")
        .replace("${MaxBanSecs}", "604800")
        .replace("${BlockProtocol}", "-1");
    assert!(!definition.contains("${"), "a placeholder left");
    aws_sdk_sfn::Client::new(sdk)
        .create_state_machine()
        .name(format!("sshwarden-block-it-{:08x}", rand::random::<u32>()))
        .definition(definition)
        .role_arn("arn:aws:iam::123456789012:role/sshwarden-it")
        .send()
        .await
        .expect("CreateStateMachine")
        .state_machine_arn()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brute_force_through_the_sfn_sink_is_blocked_by_the_block_state_machine() {
    let mut h = Harness::new("block-sfn", 1).await;
    let sdk = sshwarden_testsupport::sdk(&sshwarden_testsupport::moto_endpoint()).await;
    enable_moto_executions(&sshwarden_testsupport::moto_endpoint());
    let s = setup(&sdk, "10.79").await;
    let arn = block_machine(&sdk, &s).await;
    let config = s.config("");
    let w = h
        .spawn_sole(
            "sfn-blocker",
            &Spawn {
                sink: Some("sfn"),
                args: &[
                    // No quarantine rule fires here: the block machine
                    // stands in for the quarantine machine's ARN.
                    "--state-machine-arn",
                    &arn,
                    "--block-state-machine-arn",
                    &arn,
                    "--topic-arn",
                    &s.topic,
                    "--config",
                    &config,
                ],
                ..Spawn::default()
            },
        )
        .await;
    s.attack(&h, "203.0.113.77").await;
    let sfn = aws_sdk_sfn::Client::new(&sdk);
    let d = Deadline::new("a block execution that ended", MAX_WAIT);
    let execution = loop {
        let list = sfn
            .list_executions()
            .state_machine_arn(&arn)
            .send()
            .await
            .expect("ListExecutions");
        if let Some(e) = list
            .executions()
            .iter()
            .find(|e| e.status() != &aws_sdk_sfn::types::ExecutionStatus::Running)
        {
            break e.clone();
        }
        d.check(|| {
            format!(
                "executions {:?}; worker:\n{}",
                list.executions(),
                h.workers[w].tails(20)
            )
        });
        poll().await;
    };
    assert_eq!(
        execution.status(),
        &aws_sdk_sfn::types::ExecutionStatus::Succeeded,
        "{execution:?}"
    );
    let input: serde_json::Value = serde_json::from_str(
        sfn.describe_execution()
            .execution_arn(execution.execution_arn())
            .send()
            .await
            .expect("DescribeExecution")
            .input()
            .unwrap_or_default(),
    )
    .expect("input");
    assert_eq!(input["action"], "block");
    assert_eq!(input["block"]["cidr"], "203.0.113.77/32");
    assert_eq!(input["block"]["ban_secs"], 3_600);
    assert_eq!(input["block"]["scope"], "subnets");

    let e = Acls::new(s.ec2.clone(), BlockPorts::All)
        .entries(&s.acl)
        .await
        .expect("entries");
    assert_eq!(denies(&e, "203.0.113.77/32"), vec![90], "{e:?}");
    assert_eq!(
        e.keys().filter(|n| (90..=99).contains(*n)).count(),
        1,
        "one entry in the range: {e:?}"
    );

    // The operator commands work on what the machine wrote.
    let settings = sshwarden::config::BlockSettings {
        table: s.table.clone(),
        ..Default::default()
    };
    let blocker = sshwarden::sink::block::Blocker::new(
        settings,
        s.ec2.clone(),
        aws_sdk_dynamodb::Client::new(&sdk),
        None,
    )
    .expect("blocker");
    let listed = blocker.list().await.expect("list");
    assert_eq!(listed.len(), 1, "{listed:?}");
    let r = &listed[0];
    assert_eq!(r.cidr, "203.0.113.77/32");
    assert_eq!(r.acls.get(&s.acl), Some(&90), "{r:?}");
    assert_eq!((r.ban_count, r.ban_secs), (1, 3_600), "{r:?}");
    assert_eq!(r.last_command_id, execution.name(), "{r:?}");
    let now = sshwarden_testsupport::now_ms() / 1000;
    assert!((now + 3_500..=now + 3_700).contains(&r.expires_at), "{r:?}");
    let lifted = blocker
        .unblock("203.0.113.77/32", now)
        .await
        .expect("unblock")
        .expect("a ban to lift");
    assert_eq!(lifted.removed.get(&s.acl), Some(&90), "{lifted:?}");
    let e = Acls::new(s.ec2.clone(), BlockPorts::All)
        .entries(&s.acl)
        .await
        .expect("entries");
    assert!(!e.keys().any(|n| (90..=99).contains(n)), "{e:?}");
    let _ = sfn
        .delete_state_machine()
        .state_machine_arn(&arn)
        .send()
        .await;
}

/// The worker's block metrics on /metrics: with one reserved slot, a second
/// prefix evicts the first (`block_evictions`), one ban stays in force
/// (`blocks_active`, set by the sweep), and a block into another subnet's
/// ACL, whose allow rule sits inside the range, fails for good
/// (`block_failures`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn block_metrics_count_evictions_failures_and_bans_in_force() {
    let mut h = Harness::new("block-metrics", 1).await;
    let sdk = sshwarden_testsupport::sdk(&sshwarden_testsupport::moto_endpoint()).await;
    let s = setup(&sdk, "10.81").await;
    let other = moto_subnet::subnet_with_own_acl(&s.ec2, &s.vpc, "10.81.2.0/24").await;
    s.ec2
        .create_network_acl_entry()
        .network_acl_id(&other.acl)
        .rule_number(50)
        .egress(false)
        .protocol("-1")
        .rule_action(aws_sdk_ec2::types::RuleAction::Allow)
        .cidr_block("192.0.2.0/24")
        .send()
        .await
        .expect("allow rule 50");
    let w = s
        .direct_worker(&mut h, "metrics", "rule_count = 1\nsweep_secs = 1\n")
        .await;
    s.attack(&h, "198.51.100.31").await;
    let d = Deadline::new("the first block", MAX_WAIT);
    while h.workers[w].logs_with("source blocked").is_empty() {
        d.check(|| h.workers[w].tails(20));
        poll().await;
    }
    h.put_raw(&[
        (
            s.instance.clone(),
            brute_force(&s.instance, "198.51.100.32"),
        ),
        (
            other.instance.clone(),
            brute_force(&other.instance, "198.51.100.33"),
        ),
    ])
    .await;
    let want = [
        "sshwarden_block_evictions_total 1",
        "sshwarden_blocks_active 1",
        "sshwarden_block_failures_total{error=\"sshwarden.RangeNotBelowAllowRules\"} 1",
    ];
    let d = Deadline::new("the block metrics", MAX_WAIT);
    loop {
        let page = h.workers[w].metrics();
        if want.iter().all(|m| page.lines().any(|l| l == *m)) {
            break;
        }
        d.check(|| {
            let block: Vec<&str> = page.lines().filter(|l| l.contains("block")).collect();
            format!(
                "want {want:?}; have:\n{}\n{}",
                block.join("\n"),
                h.workers[w].tails(20)
            )
        });
        poll().await;
    }
    let e = Acls::new(s.ec2.clone(), BlockPorts::All)
        .entries(&s.acl)
        .await
        .expect("entries");
    assert_eq!(denies(&e, "198.51.100.32/32"), vec![90], "{e:?}");
    assert!(denies(&e, "198.51.100.31/32").is_empty(), "{e:?}");
    let o = Acls::new(s.ec2.clone(), BlockPorts::All)
        .entries(&other.acl)
        .await
        .expect("entries");
    assert!(denies(&o, "198.51.100.33/32").is_empty(), "{o:?}");
}

/// Expiry with the Step Functions sink: the worker's own sweep lifts a ban
/// the block state machine wrote (a one-second ban, swept every second).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_sweeps_a_ban_the_block_state_machine_wrote() {
    let mut h = Harness::new("block-sfn-sweep", 1).await;
    let sdk = sshwarden_testsupport::sdk(&sshwarden_testsupport::moto_endpoint()).await;
    enable_moto_executions(&sshwarden_testsupport::moto_endpoint());
    let s = setup(&sdk, "10.83").await;
    let arn = block_machine(&sdk, &s).await;
    let config = s.config("ban_secs = 1\nmax_ban_secs = 1\nsweep_secs = 1\n");
    let w = h
        .spawn_sole(
            "sfn-sweeper",
            &Spawn {
                sink: Some("sfn"),
                args: &[
                    "--state-machine-arn",
                    &arn,
                    "--block-state-machine-arn",
                    &arn,
                    "--config",
                    &config,
                ],
                ..Spawn::default()
            },
        )
        .await;
    s.attack(&h, "198.51.100.44").await;
    let d = Deadline::new("the worker's sweep to lift 198.51.100.44/32", MAX_WAIT);
    let lifted = loop {
        let lifted = h.workers[w].logs_with("ban ended; entries removed");
        if !lifted.is_empty() {
            break lifted;
        }
        d.check(|| h.workers[w].tails(20));
        poll().await;
    };
    assert_eq!(lifted.len(), 1, "{lifted:?}");
    let removed = lifted[0]["fields"]["removed"].as_str().unwrap_or_default();
    assert!(
        removed.contains(&s.acl) && removed.contains("90"),
        "{lifted:?}"
    );
    let e = Acls::new(s.ec2.clone(), BlockPorts::All)
        .entries(&s.acl)
        .await
        .expect("entries");
    assert!(!e.keys().any(|n| (90..=99).contains(n)), "{e:?}");
    let executions = aws_sdk_sfn::Client::new(&sdk)
        .list_executions()
        .state_machine_arn(&arn)
        .send()
        .await
        .expect("ListExecutions");
    assert_eq!(executions.executions().len(), 1, "{executions:?}");
    let _ = aws_sdk_sfn::Client::new(&sdk)
        .delete_state_machine()
        .state_machine_arn(&arn)
        .send()
        .await;
}
