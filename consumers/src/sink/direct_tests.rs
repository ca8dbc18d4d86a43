//! The direct sink against moto server (`scripts/emulators up moto`): the
//! target checks, the order of the group swaps (recorded on the wire), the
//! fleet-wide claim after validation, and release's checks. Each test
//! builds its own VPC, so tests do not see each other's groups or
//! instances; moto does not enforce IAM, which these tests do not rely on.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use aws_sdk_ec2::config::interceptors::BeforeTransmitInterceptorContextRef;
use aws_sdk_ec2::config::{ConfigBag, Intercept, RuntimeComponents};
use aws_sdk_ec2::types::{
    InstanceNetworkInterfaceSpecification, InstanceStateName, ResourceType, TagSpecification,
};
use serde_json::Value;
use sshwarden_pipeline::command::{Action, Command};

use super::*;
use crate::sink::blast_radius::FleetBlastRadius;

/// The body of every EC2 request, in the order they were sent.
#[derive(Debug, Clone, Default)]
struct Recorder(Arc<Mutex<Vec<String>>>);

impl Intercept for Recorder {
    fn name(&self) -> &'static str {
        "sshwarden-test-recorder"
    }

    fn read_before_transmit(
        &self,
        ctx: &BeforeTransmitInterceptorContextRef<'_>,
        _rc: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
        if let Some(body) = ctx.request().body().bytes() {
            if let Ok(mut calls) = self.0.lock() {
                calls.push(String::from_utf8_lossy(body).into_owned());
            }
        }
        Ok(())
    }
}

impl Recorder {
    fn calls(&self) -> Vec<String> {
        self.0.lock().map(|c| c.clone()).unwrap_or_default()
    }
}

struct World {
    ec2: aws_sdk_ec2::Client,
    sdk: aws_config::SdkConfig,
    recorder: Recorder,
    vpc: String,
    subnet: String,
    quarantine: String,
    web: String,
    admin: String,
    db: String,
    topic: String,
}

async fn world() -> World {
    let url = sshwarden_testsupport::moto_endpoint();
    let sdk = sshwarden_testsupport::sdk(&url).await;
    let recorder = Recorder::default();
    let ec2 = aws_sdk_ec2::Client::from_conf(
        aws_sdk_ec2::config::Builder::from(&sdk)
            .interceptor(recorder.clone())
            .build(),
    );
    let n = rand::random::<u8>();
    let vpc = ec2
        .create_vpc()
        .cidr_block(format!("10.{n}.0.0/16"))
        .send()
        .await
        .expect("moto: CreateVpc (scripts/emulators up moto)")
        .vpc()
        .and_then(|v| v.vpc_id())
        .expect("vpc id")
        .to_owned();
    let subnet = ec2
        .create_subnet()
        .vpc_id(&vpc)
        .cidr_block(format!("10.{n}.1.0/24"))
        .send()
        .await
        .expect("subnet")
        .subnet()
        .and_then(|s| s.subnet_id())
        .expect("subnet id")
        .to_owned();
    let group = |name: &'static str, role: Option<&'static str>| {
        let ec2 = ec2.clone();
        let vpc = vpc.clone();
        async move {
            let mut req = ec2
                .create_security_group()
                .group_name(format!(
                    "sshwarden-test-{name}-{}",
                    sshwarden_testsupport::suffix()
                ))
                .description("sshwarden test")
                .vpc_id(&vpc);
            if let Some(role) = role {
                req = req.tag_specifications(
                    TagSpecification::builder()
                        .resource_type(ResourceType::SecurityGroup)
                        .tags(tag(TAG_ROLE, role))
                        .build(),
                );
            }
            req.send()
                .await
                .expect("group")
                .group_id()
                .expect("group id")
                .to_owned()
        }
    };
    let quarantine = group("quarantine", Some("quarantine")).await;
    let (web, admin, db) = (
        group("web", None).await,
        group("admin", None).await,
        group("db", None).await,
    );
    let sns = aws_sdk_sns::Client::new(&sdk);
    let topic = sns
        .create_topic()
        .name(format!(
            "sshwarden-test-{}",
            sshwarden_testsupport::suffix()
        ))
        .send()
        .await
        .expect("topic")
        .topic_arn()
        .expect("topic arn")
        .to_owned();
    World {
        ec2,
        sdk,
        recorder,
        vpc,
        subnet,
        quarantine,
        web,
        admin,
        db,
        topic,
    }
}

impl World {
    async fn sink(&self) -> DirectSink {
        DirectSink::with_clients(
            self.ec2.clone(),
            aws_sdk_sns::Client::new(&self.sdk),
            self.quarantine.clone(),
            self.topic.clone(),
        )
        .await
        .expect("direct sink")
    }

    /// An instance with one interface per entry of `interfaces` (its groups).
    async fn launch(&self, interfaces: &[&[&str]], tags: &[(&str, &str)]) -> String {
        self.launch_in(&self.subnet, interfaces, tags).await
    }

    async fn launch_in(
        &self,
        subnet: &str,
        interfaces: &[&[&str]],
        tags: &[(&str, &str)],
    ) -> String {
        let mut req = self
            .ec2
            .run_instances()
            .image_id("ami-12c6146b")
            .instance_type(aws_sdk_ec2::types::InstanceType::T3Micro)
            .min_count(1)
            .max_count(1);
        for (i, groups) in interfaces.iter().enumerate() {
            let mut spec = InstanceNetworkInterfaceSpecification::builder()
                .device_index(i as i32)
                .subnet_id(subnet);
            for g in *groups {
                spec = spec.groups(*g);
            }
            req = req.network_interfaces(spec.build());
        }
        if !tags.is_empty() {
            let mut spec = TagSpecification::builder().resource_type(ResourceType::Instance);
            for (k, v) in tags {
                spec = spec.tags(tag(k, v));
            }
            req = req.tag_specifications(spec.build());
        }
        req.send()
            .await
            .expect("RunInstances")
            .instances()
            .first()
            .and_then(|i| i.instance_id())
            .expect("instance id")
            .to_owned()
    }

    async fn described(&self, instance: &str) -> Described {
        describe(&self.ec2, instance)
            .await
            .expect("describe")
            .expect("instance exists")
    }

    async fn groups(&self, instance: &str) -> HashMap<String, Vec<String>> {
        self.described(instance)
            .await
            .interfaces
            .into_iter()
            .map(|i| (i.id, i.groups))
            .collect()
    }

    async fn tags(&self, instance: &str) -> HashMap<String, String> {
        self.described(instance).await.tags
    }
}

fn command(instance: &str, rule: &str, action: Action) -> Command {
    Command {
        version: 1,
        id: format!("sw1-i-{instance}-{rule}-1795962660"),
        action,
        held: false,
        reason: None,
        subject_kind: sshwarden_pipeline::window::SubjectKind::Instance,
        instance_id: Some(instance.to_owned()),
        source: (action == Action::Block).then(|| "203.0.113.9/32".to_owned()),
        account: "123456789012".into(),
        log_group: "/ec2/sshd".into(),
        log_stream: instance.to_owned(),
        rule: rule.to_owned(),
        window_start: "2026-11-29T14:31:00.000Z".into(),
        window_end: "2026-11-29T14:32:00.000Z".into(),
        window_start_ms: 1_795_962_660_000,
        counts: Default::default(),
        distinct: Default::default(),
        instances: Vec::new(),
        window_secs: 60,
        top_sources: Vec::new(),
        other_source_events: 0,
        sample_lines: Vec::new(),
        detected_at: "2026-11-29T14:31:57.000Z".into(),
    }
}

/// The group ids one ModifyNetworkInterfaceAttribute request sets, with
/// its interface, or the connection-tracking change.
fn modify_calls(calls: &[String], interface: &str) -> Vec<String> {
    calls
        .iter()
        .filter(|b| b.contains("Action=ModifyNetworkInterfaceAttribute"))
        .filter(|b| b.contains(&format!("NetworkInterfaceId={interface}")))
        .map(|b| {
            if b.contains("ConnectionTrackingSpecification") {
                "tracking".to_owned()
            } else {
                b.split('&')
                    .filter_map(|kv| kv.strip_prefix("SecurityGroupId."))
                    .filter_map(|kv| kv.split_once('=').map(|(_, v)| v.to_owned()))
                    .collect::<Vec<_>>()
                    .join(",")
            }
        })
        .collect()
}

fn checks_of(n: &Notification) -> Value {
    n.message.get("checks").cloned().unwrap_or(Value::Null)
}

#[tokio::test]
async fn quarantine_swaps_through_the_untracked_group_and_reports_the_checks() {
    let w = world().await;
    let sink = w.sink().await;
    let untracked = sink.protection().untracked_group.clone();
    assert_eq!(sink.protection().vpc, w.vpc);
    assert!(!sink.protection().require_opt_in);
    // The untracked group allows everything, both ways, IPv4 and IPv6.
    let g = w
        .ec2
        .describe_security_groups()
        .group_ids(&untracked)
        .send()
        .await
        .expect("describe untracked");
    let g = &g.security_groups()[0];
    assert_eq!(g.vpc_id(), Some(w.vpc.as_str()));
    for rules in [g.ip_permissions(), g.ip_permissions_egress()] {
        assert!(
            rules.iter().any(|p| p.ip_protocol() == Some("-1")
                && p.ip_ranges()
                    .iter()
                    .any(|r| r.cidr_ip() == Some("0.0.0.0/0"))),
            "untracked group rules {rules:?}"
        );
        assert!(
            rules.iter().any(|p| p.ip_protocol() == Some("-1")
                && p.ipv6_ranges()
                    .iter()
                    .any(|r| r.cidr_ipv6() == Some("::/0"))),
            "untracked group IPv6 rules {rules:?}"
        );
    }
    // A second sink finds it instead of creating another.
    assert_eq!(w.sink().await.protection().untracked_group, untracked);

    let iid = w
        .launch(&[&[&w.web, &w.admin], &[&w.db]], &[("Name", "target")])
        .await;
    let before = w.groups(&iid).await;
    assert_eq!(before.len(), 2, "two interfaces: {before:?}");
    let c = command(&iid, "invalid-user", Action::Quarantine);
    let d = sink.deliver(&c, None).await.expect("deliver");
    assert_eq!(d, Delivered::New);
    let after = w.groups(&iid).await;
    let tags = w.tags(&iid).await;
    assert!(tags.contains_key(TAG_QUARANTINED), "tags {tags:?}");
    let calls = w.recorder.calls();
    for (eni, groups) in &after {
        assert_eq!(groups, &vec![w.quarantine.clone()], "{eni}");
        // On the wire, per interface: allow-all, then the minimum
        // timeouts, then the isolation group; nothing else.
        assert_eq!(
            modify_calls(&calls, eni),
            vec![untracked.clone(), "tracking".into(), w.quarantine.clone()],
            "{eni}"
        );
        let saved: Vec<String> =
            serde_json::from_str(&tags[&saved_key(eni)]).expect("saved groups JSON");
        assert_eq!(&saved, &before[eni]);
    }
    // Every interface was in the allow-all group before any got the
    // isolation group (calls across interfaces, in order).
    let order: Vec<String> = calls
        .iter()
        .filter(|b| b.contains("Action=ModifyNetworkInterfaceAttribute"))
        .filter(|b| b.contains("SecurityGroupId.1="))
        .map(|b| {
            if b.contains(&format!("SecurityGroupId.1={untracked}")) {
                "untracked".to_owned()
            } else {
                "quarantine".to_owned()
            }
        })
        .collect();
    assert_eq!(
        order,
        ["untracked", "untracked", "quarantine", "quarantine"]
    );
    // The tracking request carries the minimum timeouts.
    let tracking = calls
        .iter()
        .find(|b| b.contains("ConnectionTrackingSpecification"))
        .expect("a connection-tracking request");
    for want in [
        "ConnectionTrackingSpecification.TcpEstablishedTimeout=60",
        "ConnectionTrackingSpecification.UdpStreamTimeout=60",
        "ConnectionTrackingSpecification.UdpTimeout=30",
    ] {
        assert!(tracking.contains(want), "{want} not in {tracking}");
    }

    // The notification's content: a second instance, through quarantine()
    // itself (deliver publishes it to moto's SNS, which keeps nothing to
    // read back without a subscriber).
    let other = w.launch(&[&[&w.web]], &[]).await;
    let oc = command(&other, "invalid-user", Action::Quarantine);
    let value = serde_json::to_value(&oc).expect("json");
    let Ok(Quarantined::Isolated(n)) = sink.quarantine(&oc, &value, None).await else {
        panic!("not isolated");
    };
    assert_eq!(n.event(), "quarantined");
    let checks = checks_of(&n);
    let passed: Vec<&str> = checks["passed"]
        .as_array()
        .expect("passed")
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert_eq!(passed[0], "exists");
    assert!(passed.iter().any(|p| p.starts_with("state ")), "{passed:?}");
    assert!(
        passed.contains(&format!("in the protected VPC {}", w.vpc).as_str()),
        "{passed:?}"
    );
    assert!(checks["refused"].is_null());
    assert_eq!(n.message["untracked_group"], untracked.as_str());
    assert!(n.message["summary"]
        .as_str()
        .is_some_and(|s| s.contains("allow-all group first")));
    assert_eq!(
        n.message["connection_tracking"][0]["tcp_established_timeout"],
        MIN_TCP_ESTABLISHED_TIMEOUT
    );
}

#[tokio::test]
async fn unknown_terminated_foreign_and_not_opted_in_targets_are_refused_and_untouched() {
    let w = world().await;
    let sink = w.sink().await;
    // Terminated.
    let gone = w.launch(&[&[&w.web]], &[]).await;
    w.ec2
        .terminate_instances()
        .instance_ids(&gone)
        .send()
        .await
        .expect("terminate");
    assert_eq!(
        w.described(&gone).await.state,
        InstanceStateName::Terminated.as_str()
    );
    // In another VPC.
    let n = rand::random::<u8>();
    let vpc2 = w
        .ec2
        .create_vpc()
        .cidr_block(format!("10.{n}.0.0/16"))
        .send()
        .await
        .expect("vpc")
        .vpc()
        .and_then(|v| v.vpc_id())
        .expect("id")
        .to_owned();
    let subnet2 = w
        .ec2
        .create_subnet()
        .vpc_id(&vpc2)
        .cidr_block(format!("10.{n}.2.0/24"))
        .send()
        .await
        .expect("subnet")
        .subnet()
        .and_then(|s| s.subnet_id())
        .expect("id")
        .to_owned();
    let foreign = w.launch_in(&subnet2, &[&[]], &[]).await;
    let unknown = "i-0123456789abcdef0";

    let calls_before = w.recorder.calls().len();
    for (iid, why) in [
        (gone.as_str(), "terminated"),
        (foreign.as_str(), "not the protected VPC"),
        (unknown, "no instance"),
    ] {
        let c = command(iid, "invalid-user", Action::Quarantine);
        let value = serde_json::to_value(&c).expect("json");
        match sink.quarantine(&c, &value, None).await {
            Ok(Quarantined::Refused(n, reason)) => {
                assert_eq!(n.event(), "refused", "{iid}");
                let refused = checks_of(&n)["refused"].as_str().unwrap_or("").to_owned();
                assert!(refused.contains(why), "{iid}: refused {refused:?}");
                assert!(
                    !n.message["summary"]
                        .as_str()
                        .unwrap_or("")
                        .contains("isolated"),
                    "{iid}"
                );
                assert!(!reason.is_empty());
            }
            _ => panic!("{iid} ({why}) was not refused"),
        }
        assert_eq!(
            sink.deliver(&c, None).await.expect("deliver"),
            Delivered::Failed("target-check".into()),
            "{iid}"
        );
    }
    // Nothing but reads happened.
    let writes: Vec<String> = w.recorder.calls()[calls_before..]
        .iter()
        .filter(|b| !b.contains("Action=Describe"))
        .cloned()
        .collect();
    assert!(
        writes.is_empty(),
        "EC2 writes for refused targets: {writes:?}"
    );
    assert!(w
        .tags(&foreign)
        .await
        .keys()
        .all(|k| !k.starts_with("sshwarden:")));

    // Opt-in required (the quarantine group says so): an instance without
    // the tag is refused, one with it is quarantined.
    w.ec2
        .create_tags()
        .resources(&w.quarantine)
        .tags(tag(TAG_REQUIRE_OPT_IN, "true"))
        .send()
        .await
        .expect("tag");
    let strict = w.sink().await;
    assert!(strict.protection().require_opt_in);
    let plain = w.launch(&[&[&w.web]], &[]).await;
    let opted = w.launch(&[&[&w.web]], &[(TAG_PROTECTED, "true")]).await;
    let c = command(&plain, "invalid-user", Action::Quarantine);
    assert_eq!(
        strict.deliver(&c, None).await.expect("deliver"),
        Delivered::Failed("target-check".into())
    );
    assert_eq!(
        w.groups(&plain).await.into_values().next(),
        Some(vec![w.web.clone()])
    );
    let c = command(&opted, "invalid-user", Action::Quarantine);
    assert_eq!(
        strict.deliver(&c, None).await.expect("deliver"),
        Delivered::New
    );
    assert_eq!(
        w.groups(&opted).await.into_values().next(),
        Some(vec![w.quarantine.clone()])
    );
}

#[tokio::test]
async fn the_fleet_wide_slot_is_claimed_only_after_the_checks_and_per_budget() {
    let w = world().await;
    let sink = w.sink().await;
    let ddb = aws_sdk_dynamodb::Client::new(&w.sdk);
    let table = format!("sshwarden-test-blast-{}", sshwarden_testsupport::suffix());
    let gate = FleetBlastRadius::new(ddb.clone(), table.clone(), 1, 3_600_000).expect("gate");
    gate.ensure().await.expect("table");
    let at = 1_795_962_660_000;
    let budget = crate::sink::blast_radius::budget(Action::Quarantine, "invalid-user");

    // A made-up id and a terminated instance: refused, no slot spent.
    let gone = w.launch(&[&[&w.web]], &[]).await;
    w.ec2
        .terminate_instances()
        .instance_ids(&gone)
        .send()
        .await
        .expect("terminate");
    for iid in ["i-0fedcba9876543210", gone.as_str()] {
        let c = command(iid, "invalid-user", Action::Quarantine);
        assert_eq!(
            sink.deliver(&c, Some(&gate)).await.expect("deliver"),
            Delivered::Failed("target-check".into())
        );
    }
    assert_eq!(gate.claimed(&budget, at).await.expect("read").0, 0);

    // The one slot goes to a real target; the next quarantine of the rule
    // is held and changes nothing.
    let first = w.launch(&[&[&w.web]], &[]).await;
    let second = w.launch(&[&[&w.web]], &[]).await;
    let c1 = command(&first, "invalid-user", Action::Quarantine);
    assert_eq!(
        sink.deliver(&c1, Some(&gate)).await.expect("deliver"),
        Delivered::New
    );
    let c2 = command(&second, "invalid-user", Action::Quarantine);
    assert_eq!(
        sink.deliver(&c2, Some(&gate)).await.expect("deliver"),
        Delivered::Held
    );
    assert_eq!(
        w.groups(&second).await.into_values().next(),
        Some(vec![w.web.clone()])
    );
    assert!(w
        .tags(&second)
        .await
        .keys()
        .all(|k| !k.starts_with("sshwarden:")));
    // Another rule and the block action have budgets of their own.
    let c3 = command(&second, "root-login", Action::Quarantine);
    assert_eq!(
        sink.deliver(&c3, Some(&gate)).await.expect("deliver"),
        Delivered::New
    );
    let b = command(&second, "invalid-user", Action::Block);
    assert_eq!(
        sink.deliver(&b, Some(&gate)).await.expect("deliver"),
        Delivered::New
    );
    let b2 = Command {
        id: "sw1-s-other-block".into(),
        ..b.clone()
    };
    assert_eq!(
        sink.deliver(&b2, Some(&gate)).await.expect("deliver"),
        Delivered::Held
    );
    assert_eq!(
        gate.claimed(&budget, at).await.expect("read").1,
        vec![c1.id.clone()]
    );
    let _ = ddb.delete_table().table_name(&table).send().await;
}

#[tokio::test]
async fn already_quarantined_is_read_from_the_groups_not_the_tag() {
    let w = world().await;
    let sink = w.sink().await;
    // A stale or forged sshwarden:quarantined tag does not stop a quarantine.
    let iid = w
        .launch(&[&[&w.web]], &[(TAG_QUARANTINED, "2026-01-01T00:00:00Z")])
        .await;
    let c = command(&iid, "invalid-user", Action::Quarantine);
    assert_eq!(
        sink.deliver(&c, None).await.expect("deliver"),
        Delivered::New
    );
    assert_eq!(
        w.groups(&iid).await.into_values().next(),
        Some(vec![w.quarantine.clone()])
    );
    // Now isolated: the same command is a replay, another one already-quarantined.
    assert_eq!(
        sink.deliver(&c, None).await.expect("deliver"),
        Delivered::AlreadyHandled
    );
    let other = command(&iid, "root-login", Action::Quarantine);
    let value = serde_json::to_value(&other).expect("json");
    match sink.quarantine(&other, &value, None).await {
        Ok(Quarantined::Skipped(n)) => assert_eq!(n.event(), "already-quarantined"),
        _ => panic!("not already-quarantined"),
    }
}

#[tokio::test]
async fn release_restores_only_attached_quarantined_interfaces_with_groups_of_the_vpc() {
    let w = world().await;
    let sink = w.sink().await;
    let iid = w.launch(&[&[&w.web, &w.admin], &[&w.db]], &[]).await;
    let bystander = w.launch(&[&[&w.web]], &[]).await;
    let c = command(&iid, "invalid-user", Action::Quarantine);
    assert_eq!(
        sink.deliver(&c, None).await.expect("deliver"),
        Delivered::New
    );
    let enis: Vec<String> = w
        .described(&iid)
        .await
        .interfaces
        .into_iter()
        .map(|i| i.id)
        .collect();
    let (first, second) = (&enis[0], &enis[1]);
    // Someone moved the second interface out of quarantine by hand; the
    // admin group was deleted; and a forged tag names the bystander's
    // interface with the quarantine instance's groups.
    w.ec2
        .modify_network_interface_attribute()
        .network_interface_id(second)
        .groups(&w.web)
        .send()
        .await
        .expect("manual move");
    w.ec2
        .delete_security_group()
        .group_id(&w.admin)
        .send()
        .await
        .expect("delete admin group");
    let foreign_eni = w.described(&bystander).await.interfaces[0].id.clone();
    w.ec2
        .create_tags()
        .resources(&iid)
        .tags(tag(&saved_key(&foreign_eni), &format!("[\"{}\"]", w.db)))
        .send()
        .await
        .expect("forged tag");

    let r = release(&w.sdk, &iid, "test", None).await.expect("release");
    assert_eq!(r.event, "released");
    assert_eq!(r.interfaces, vec![(first.clone(), vec![w.web.clone()])]);
    let skipped: HashMap<_, _> = r.skipped.iter().cloned().collect();
    assert!(
        skipped[second].contains("not in a quarantine group"),
        "{skipped:?}"
    );
    assert!(
        skipped[&foreign_eni].contains("not attached"),
        "{skipped:?}"
    );
    assert_eq!(
        w.groups(&bystander).await[&foreign_eni],
        vec![w.web.clone()]
    );
    assert_eq!(w.groups(&iid).await[second], vec![w.web.clone()]);
    let tags = w.tags(&iid).await;
    assert!(!tags.contains_key(&saved_key(first)));
    assert!(!tags.contains_key(TAG_QUARANTINED));
}

#[tokio::test]
async fn thirteen_groups_are_saved_over_two_tags_and_restored() {
    let w = world().await;
    let sink = w.sink().await;
    let mut many = Vec::new();
    for i in 0..13 {
        let gid = w
            .ec2
            .create_security_group()
            .group_name(format!(
                "sshwarden-test-many{i}-{}",
                sshwarden_testsupport::suffix()
            ))
            .description("sshwarden test")
            .vpc_id(&w.vpc)
            .send()
            .await
            .expect("group")
            .group_id()
            .expect("id")
            .to_owned();
        many.push(gid);
    }
    let refs: Vec<&str> = many.iter().map(String::as_str).collect();
    let iid = w.launch(&[&refs], &[]).await;
    let eni = w.described(&iid).await.interfaces[0].id.clone();
    let c = command(&iid, "invalid-user", Action::Quarantine);
    assert_eq!(
        sink.deliver(&c, None).await.expect("deliver"),
        Delivered::New
    );
    let tags = w.tags(&iid).await;
    let (first, second) = (
        &tags[&saved_key(&eni)],
        &tags[&format!("{}:2", saved_key(&eni))],
    );
    assert!(
        first.len() <= 256 && second.len() <= 256,
        "{first} {second}"
    );
    let mut saved: Vec<String> = serde_json::from_str(first).expect("json");
    saved.extend(serde_json::from_str::<Vec<String>>(second).expect("json"));
    let mut want = many.clone();
    want.sort();
    saved.sort();
    assert_eq!(saved, want);
    let r = release(&w.sdk, &iid, "test", None).await.expect("release");
    assert!(r.skipped.is_empty(), "{:?}", r.skipped);
    let mut back = w.groups(&iid).await[&eni].clone();
    back.sort();
    assert_eq!(back, want);
    assert!(w
        .tags(&iid)
        .await
        .keys()
        .all(|k| !k.starts_with(TAG_SAVED_GROUPS)));
}
