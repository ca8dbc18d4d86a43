//! A brute force through a separate `sshwarden run --sink direct` process
//! with a `[blocks]` section in its config file: the source ends up denied
//! in the attacked subnet's network ACL, in the reserved range, once.
//! Kinesis on kinesis-local; EC2, SNS and DynamoDB on moto
//! (`scripts/emulators up`). The harness is in common/kinesis.rs.
#![cfg(feature = "direct")]

use std::io::Write;

use serde_json::json;

mod common;
use common::kinesis::*;
use common::*;

/// A CloudWatch Logs subscription payload (gzip JSON) of `lines` from the
/// log stream `instance`, one second apart from `start_ms`.
fn payload(instance: &str, start_ms: i64, lines: &[String]) -> Vec<u8> {
    let events: Vec<_> = lines
        .iter()
        .enumerate()
        .map(|(i, m)| json!({"id": i.to_string(), "timestamp": start_ms + 1_000 * i as i64, "message": m}))
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_brute_force_through_the_direct_sink_denies_the_source_in_the_subnets_acl() {
    let mut h = Harness::new("block-run", 1).await;
    let sdk = sshwarden_testsupport::sdk(&sshwarden_testsupport::moto_endpoint()).await;
    let ec2 = aws_sdk_ec2::Client::new(&sdk);
    let vpc = ec2
        .create_vpc()
        .cidr_block("10.77.0.0/16")
        .send()
        .await
        .expect("moto: create VPC");
    let vpc_id = vpc.vpc().and_then(|v| v.vpc_id()).expect("vpc").to_owned();
    let subnet_id = ec2
        .create_subnet()
        .vpc_id(&vpc_id)
        .cidr_block("10.77.1.0/24")
        .send()
        .await
        .expect("subnet")
        .subnet()
        .and_then(|s| s.subnet_id())
        .expect("subnet id")
        .to_owned();
    let run = ec2
        .run_instances()
        .image_id("ami-12c6146b")
        .min_count(1)
        .max_count(1)
        .subnet_id(&subnet_id)
        .send()
        .await
        .expect("instance");
    let instance = run.instances()[0].instance_id().expect("id").to_owned();
    let acl = ec2
        .describe_network_acls()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("association.subnet-id")
                .values(&subnet_id)
                .build(),
        )
        .send()
        .await
        .expect("acls")
        .network_acls()[0]
        .network_acl_id()
        .expect("acl")
        .to_owned();
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
    let topic = aws_sdk_sns::Client::new(&sdk)
        .create_topic()
        .name("sshwarden-block-run")
        .send()
        .await
        .expect("topic")
        .topic_arn()
        .expect("arn")
        .to_owned();
    let table = format!("sshwarden-blocks-run-{:08x}", rand::random::<u32>());
    let dir = tempfile::tempdir().expect("tempdir");
    let config = dir.path().join("sshwarden.toml");
    // The harness runs the seed policy (no block rule); rules in the file
    // replace it: the graduated policy's brute-force rule.
    std::fs::write(
        &config,
        format!(
            "[[rules]]\nname = \"brute-force\"\nsubject = \"source\"\nwindow_secs = 600\n\
             signals = [\"auth_failure\"]\nthreshold = 5\naction = \"block\"\n\n\
             [blocks]\ntable = \"{table}\"\n"
        ),
    )
    .expect("config");
    let config = config.to_string_lossy().into_owned();

    let w = h
        .spawn_sole(
            "blocker",
            &Spawn {
                sink: Some("direct"),
                args: &[
                    "--quarantine-group-id",
                    &group,
                    "--topic-arn",
                    &topic,
                    "--config",
                    &config,
                ],
                ..Spawn::default()
            },
        )
        .await;

    let start = sshwarden_testsupport::now_ms() - 30_000;
    let lines: Vec<String> = (0..6)
        .map(|i| {
            format!(
                "{} ip-10-77-1-5 sshd[{}]: Failed password for root from 203.0.113.9 port {} ssh2",
                sshwarden_pipeline::time::format_rfc3339_ms(start + 1_000 * i),
                4100 + i,
                40_000 + i
            )
        })
        .collect();
    h.put_raw(&[(instance.clone(), payload(&instance, start, &lines))])
        .await;

    let acls =
        sshwarden::sink::block::acl::Acls::new(ec2.clone(), sshwarden::config::BlockPorts::All);
    let d = Deadline::new("the deny entry of 203.0.113.9/32", MAX_WAIT);
    loop {
        let e = acls.entries(&acl).await.expect("entries");
        let rules = sshwarden::sink::block::denies(&e, "203.0.113.9/32");
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
            format!("entries of {acl}: {e:?}; metrics:\n{}", m.join("\n"))
        });
        poll().await;
    }
}
