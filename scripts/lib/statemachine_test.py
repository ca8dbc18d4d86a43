#!/usr/bin/env python3
"""Runs infra/statemachines/*.asl.json on moto server; run by `scripts/check-asl --moto`.

moto executes state machines itself (after POST /moto-api/config
{"stepfunctions": {"execute_state_machine": true}}), calling its own EC2 and
SNS for `aws-sdk:ec2:*` and `sns:publish` tasks. This script builds a small
world (VPC, subnet, security groups, the quarantine group, instances, an SNS
topic with an SQS queue subscribed), creates both machines from their
definitions with the placeholders substituted, runs the quarantine and release
cases, and checks EC2 state and the notifications that reached the queue.

Everything talks to the moto URL only (127.0.0.1), every wait is bounded
(an execution gets --timeout seconds), names are unique per run, and what a
run creates is deleted at the end. moto deviations that affect a check are
detected, reported as notes and checked in a weaker form (see infra/README.md).

Usage: statemachine_test.py [--moto URL] [--definitions DIR] [--timeout S] [--keep] [--only PREFIX]
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import traceback
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import boto3
from botocore.config import Config

REGION = "us-east-1"
ACCOUNT = "123456789012"  # moto's default account
CONFIG = Config(
    region_name=REGION,
    connect_timeout=2,
    read_timeout=15,
    retries={"max_attempts": 1, "mode": "standard"},
)
RUN = f"{int(time.time())}-{os.getpid()}"
ROLE_ARN = f"arn:aws:iam::{ACCOUNT}:role/sshwarden-stepfunctions"
PLACEHOLDERS = ("QuarantineGroupId", "UntrackedGroupId", "VpcId", "RequireOptInTag", "TopicArn",
                "BlocksTable", "RuleFirst", "RuleLast", "MaxBanSecs", "BlockProtocol")
MAX_BAN_SECS = 7 * 86_400
SW = "sshwarden:"

results: list[tuple[str, str, float, str]] = []  # (status, name, ms, note)
deviations: list[str] = []


class Note(str):
    """A case returns a Note to have it printed beside its timing."""


class CheckFailed(AssertionError):
    pass


def check(cond: bool, what: str) -> None:
    if not cond:
        raise CheckFailed(what)


def deviation(text: str) -> None:
    if text not in deviations:
        deviations.append(text)


ONLY: list[str] = []  # --only: run only the cases whose names start with one of these (and the setup)


def case(name: str, fn: Callable[[], Any]) -> Any:
    if ONLY and not name.startswith(("setup:", *ONLY)):
        return None
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:  # noqa: BLE001 - every failure is reported, then the next case runs
        ms = (time.perf_counter() - t0) * 1000
        results.append(("FAIL", name, ms, f"{type(exc).__name__}: {exc}"))
        print(f"FAIL {ms:9.1f} ms  {name}: {type(exc).__name__}: {exc}", flush=True)
        if not isinstance(exc, CheckFailed):
            traceback.print_exc()
        return None
    ms = (time.perf_counter() - t0) * 1000
    note = out if isinstance(out, Note) else ""
    results.append(("ok", name, ms, note))
    print(f"ok   {ms:9.1f} ms  {name}{': ' + note if note else ''}", flush=True)
    return out


class World:
    """The AWS resources of one run, and helpers over them."""

    def __init__(self, url: str, definitions: Path, timeout: float):
        self.url = url
        self.definitions = definitions
        self.timeout = timeout

        def client(service: str) -> Any:
            return boto3.client(
                service,
                endpoint_url=url,
                aws_access_key_id="testing",
                aws_secret_access_key="testing",
                config=CONFIG,
            )

        self.ec2 = client("ec2")
        self.sns = client("sns")
        self.sqs = client("sqs")
        self.sfn = client("stepfunctions")
        self.cleanup: list[Callable[[], Any]] = []
        self.instances: dict[str, str] = {}  # role -> instance id
        self.original: dict[str, dict[str, list[str]]] = {}  # instance -> eni -> groups at launch
        self.pending_messages: list[dict] = []

    # ------------------------------------------------------------ setup

    def enable_execution(self) -> None:
        req = urllib.request.Request(
            f"{self.url}/moto-api/config",
            data=json.dumps({"stepfunctions": {"execute_state_machine": True}}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with urllib.request.urlopen(req, timeout=5) as resp:  # noqa: S310 - loopback URL from the caller
            resp.read()

    def network(self) -> Note:
        ec2 = self.ec2
        self.vpc = ec2.create_vpc(CidrBlock="10.77.0.0/16", AmazonProvidedIpv6CidrBlock=True)["Vpc"]["VpcId"]
        self.cleanup.append(lambda: ec2.delete_vpc(VpcId=self.vpc))
        self.subnet = ec2.create_subnet(VpcId=self.vpc, CidrBlock="10.77.1.0/24")["Subnet"]["SubnetId"]
        self.cleanup.append(lambda: ec2.delete_subnet(SubnetId=self.subnet))

        def group(name: str) -> str:
            gid = ec2.create_security_group(
                GroupName=f"sshwarden-test-{name}-{RUN}", Description=f"sshwarden test {name}", VpcId=self.vpc
            )["GroupId"]
            self.cleanup.append(lambda: ec2.delete_security_group(GroupId=gid))
            return gid

        self.web, self.admin, self.db = group("web"), group("admin"), group("db")
        # The allow-all group the quarantine swaps through (the template's
        # UntrackedSecurityGroup): everything in and out, IPv4 and IPv6.
        self.untracked = group("untracked")
        everything = [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}], "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}]
        ec2.authorize_security_group_ingress(GroupId=self.untracked, IpPermissions=everything)
        try:
            ec2.authorize_security_group_egress(GroupId=self.untracked, IpPermissions=everything)
        except ec2.exceptions.ClientError as e:
            if "Duplicate" not in str(e):
                raise
        return Note(f"vpc {self.vpc} (with an IPv6 block), subnet, 3 groups and the untracked (allow-all) group")

    def quarantine_group(self) -> Note:
        """The quarantine group from infra/quarantine-sg.yaml, through moto's
        CloudFormation."""
        cfn = boto3.client("cloudformation", endpoint_url=self.url, aws_access_key_id="testing",
                           aws_secret_access_key="testing", config=CONFIG)
        stack = f"sshwarden-test-quarantine-sg-{RUN}"
        template = (self.definitions.parent / "quarantine-sg.yaml").read_text()
        cfn.create_stack(StackName=stack, TemplateBody=template,
                         Parameters=[{"ParameterKey": "VpcId", "ParameterValue": self.vpc}])
        self.cleanup.append(lambda: cfn.delete_stack(StackName=stack))
        deadline = time.monotonic() + 30
        while True:
            st = cfn.describe_stacks(StackName=stack)["Stacks"][0]
            if not st["StackStatus"].endswith("_IN_PROGRESS"):
                break
            check(time.monotonic() < deadline, f"stack {stack} still {st['StackStatus']} after 30 s")
            time.sleep(0.1)
        check(st["StackStatus"] == "CREATE_COMPLETE", f"stack {st['StackStatus']}: {st.get('StackStatusReason')}")
        self.quarantine = {o["OutputKey"]: o["OutputValue"] for o in st["Outputs"]}["QuarantineGroupId"]
        sg = self.ec2.describe_security_groups(GroupIds=[self.quarantine])["SecurityGroups"][0]
        check(sg["VpcId"] == self.vpc and not sg.get("IpPermissions"), f"quarantine group: {sg}")
        egress = sg.get("IpPermissionsEgress", [])
        # What real EC2 leaves: only the rule of the template that matches no traffic.
        placeholder = [{"IpProtocol": "icmp", "FromPort": 252, "ToPort": 86, "CidrIp": "255.255.255.255/32"}]
        seen = [{"IpProtocol": p["IpProtocol"], "FromPort": p.get("FromPort"), "ToPort": p.get("ToPort"), "CidrIp": r["CidrIp"]}
                for p in egress for r in p.get("IpRanges", [])]
        v6 = [r["CidrIpv6"] for p in egress for r in p.get("Ipv6Ranges", [])]
        if seen == placeholder and not v6:
            return Note(f"{self.quarantine}: no ingress; egress only the no-traffic rule (as on EC2)")
        deviation(
            "CloudFormation AWS::EC2::SecurityGroup: moto ignores SecurityGroupEgress and keeps the default "
            f"allow-all egress ({[r['CidrIp'] for p in egress for r in p.get('IpRanges', [])] + v6}); "
            "the test revokes it through the EC2 API"
        )
        self.ec2.revoke_security_group_egress(GroupId=self.quarantine, IpPermissions=egress)
        sg = self.ec2.describe_security_groups(GroupIds=[self.quarantine])["SecurityGroups"][0]
        check(not sg.get("IpPermissions") and not sg.get("IpPermissionsEgress"), f"quarantine group still has rules: {sg}")
        return Note(f"{self.quarantine} from infra/quarantine-sg.yaml; moto kept allow-all egress "
                    f"(IPv4 and {'IPv6' if v6 else 'no IPv6'}), revoked: now no ingress, no egress")

    def launch(self, role: str, *, interfaces: list[list[str]] | None = None,
               groups: list[str] | None = None, tags: dict[str, str] | None = None) -> str:
        """interfaces: groups per network interface (NetworkInterfaces at launch);
        groups: instance-level SecurityGroupIds (one interface)."""
        kw: dict[str, Any] = {"ImageId": "ami-12c6146b", "MinCount": 1, "MaxCount": 1, "InstanceType": "t3.micro"}
        if interfaces is not None:
            kw["NetworkInterfaces"] = [
                {"DeviceIndex": i, "SubnetId": self.subnet, "Groups": g} for i, g in enumerate(interfaces)
            ]
        else:
            kw["SubnetId"] = self.subnet
            kw["SecurityGroupIds"] = groups
        all_tags = {"Name": f"sshwarden-test-{role}", **(tags or {})}
        kw["TagSpecifications"] = [
            {"ResourceType": "instance", "Tags": [{"Key": k, "Value": v} for k, v in all_tags.items()]}
        ]
        iid = self.ec2.run_instances(**kw)["Instances"][0]["InstanceId"]
        self.cleanup.append(lambda: self.ec2.terminate_instances(InstanceIds=[iid]))
        self.instances[role] = iid
        self.original[iid] = self.interface_groups(iid)
        return iid

    def instances_setup(self) -> Note:
        notes = []
        two = self.launch("target", interfaces=[[self.web, self.admin], [self.db]])
        enis = self.original[two]
        if len(enis) == 2:
            notes.append(f"target {two} has 2 interfaces")
        else:
            deviation(f"run_instances with two NetworkInterfaces gave {len(enis)} interface(s)")
            notes.append(f"target {two} has {len(enis)} interface(s), not 2")
        check(len(enis) >= 1, "the target instance has no network interface")
        for eni, groups in enis.items():
            check(groups, f"interface {eni} has no groups at launch")
        self.launch("exempt", interfaces=[[self.web]], tags={f"{SW}exempt": "true"})
        self.launch("held", interfaces=[[self.web]])
        # Launched with instance-level groups: the way moto's ENI group
        # reporting goes wrong (see legacy case).
        self.launch("legacy", groups=[self.web, self.admin])
        # An earlier quarantine that failed half-way: its only interface is
        # already in the quarantine group and the saved-groups tag holds the
        # real originals.
        resume = self.launch("resume", interfaces=[[self.web, self.db]])
        (eni,) = self.original[resume].keys()
        self.ec2.create_tags(Resources=[resume], Tags=[
            {"Key": f"{SW}saved-groups:{eni}", "Value": json.dumps(self.original[resume][eni], separators=(",", ":"))},
            {"Key": f"{SW}reason", "Value": "invalid-user"},
            {"Key": f"{SW}command-id", "Value": command(resume)["id"]},
        ])
        self.ec2.modify_network_interface_attribute(NetworkInterfaceId=eni, Groups=[self.quarantine])
        check(self.interface_groups(resume)[eni] == [self.quarantine], "could not pre-isolate the resume instance")
        # 49 tags: the 2 the quarantine writes first exceed EC2's 50 per resource.
        self.launch("crowded", interfaces=[[self.web]], tags={f"owner-{i:02d}": "x" for i in range(48)})
        self.launch("mute", interfaces=[[self.web], [self.db]])
        # Target checks (#16 findings 1 and 6).
        gone = self.launch("gone", interfaces=[[self.web]])
        self.ec2.terminate_instances(InstanceIds=[gone])
        stopped = self.launch("stopped", interfaces=[[self.web]])
        self.ec2.stop_instances(InstanceIds=[stopped])
        self.launch("optin", interfaces=[[self.web]], tags={f"{SW}protected": "true"})
        self.launch("forged", interfaces=[[self.web]], tags={f"{SW}quarantined": "2026-01-01T00:00:00Z"})
        isolated = self.launch("isolated", interfaces=[[self.web]])
        (ieni,) = self.original[isolated].keys()
        self.ec2.modify_network_interface_attribute(NetworkInterfaceId=ieni, Groups=[self.quarantine])
        other_vpc = self.ec2.create_vpc(CidrBlock="10.78.0.0/16")["Vpc"]["VpcId"]
        self.cleanup.append(lambda: self.ec2.delete_vpc(VpcId=other_vpc))
        other_subnet = self.ec2.create_subnet(VpcId=other_vpc, CidrBlock="10.78.1.0/24")["Subnet"]["SubnetId"]
        self.cleanup.append(lambda: self.ec2.delete_subnet(SubnetId=other_subnet))
        foreign = self.ec2.run_instances(ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="t3.micro",
                                         SubnetId=other_subnet)["Instances"][0]["InstanceId"]
        self.cleanup.append(lambda: self.ec2.terminate_instances(InstanceIds=[foreign]))
        self.instances["foreign"] = foreign
        self.foreign_group = self.ec2.create_security_group(
            GroupName=f"sshwarden-test-foreign-{RUN}", Description="sshwarden test foreign", VpcId=other_vpc)["GroupId"]
        self.cleanup.append(lambda: self.ec2.delete_security_group(GroupId=self.foreign_group))
        # Release checks (#16 finding 4): a group deleted after the quarantine.
        self.doomed = self.ec2.create_security_group(
            GroupName=f"sshwarden-test-doomed-{RUN}", Description="sshwarden test doomed", VpcId=self.vpc)["GroupId"]
        self.launch("relcheck", interfaces=[[self.web, self.doomed], [self.db]])
        # 13 groups on one interface: more than one 256-character tag holds.
        many = []
        for i in range(13):
            gid = self.ec2.create_security_group(
                GroupName=f"sshwarden-test-many{i}-{RUN}", Description="sshwarden test many", VpcId=self.vpc)["GroupId"]
            self.cleanup.append(lambda gid=gid: self.ec2.delete_security_group(GroupId=gid))
            many.append(gid)
        self.launch("many", interfaces=[many])
        return Note(", ".join(notes) + "; exempt, held, legacy (SecurityGroupIds), resume, crowded, mute, "
                    "terminated, stopped, opted-in, forged-tag, isolated and other-VPC instances")

    def notifications(self) -> Note:
        self.topic = self.sns.create_topic(Name=f"sshwarden-test-{RUN}")["TopicArn"]
        self.cleanup.append(lambda: self.sns.delete_topic(TopicArn=self.topic))
        self.queue = self.sqs.create_queue(QueueName=f"sshwarden-test-{RUN}")["QueueUrl"]
        self.cleanup.append(lambda: self.sqs.delete_queue(QueueUrl=self.queue))
        queue_arn = self.sqs.get_queue_attributes(QueueUrl=self.queue, AttributeNames=["QueueArn"])["Attributes"][
            "QueueArn"
        ]
        self.sns.subscribe(TopicArn=self.topic, Protocol="sqs", Endpoint=queue_arn)
        return Note(f"topic {self.topic} -> queue {queue_arn}")

    def definition(self, name: str, topic: str | None = None, opt_in: bool = False,
                   rules: tuple[int, int] = (90, 99)) -> str:
        text = (self.definitions / f"{name}.asl.json").read_text()
        values = {"QuarantineGroupId": self.quarantine, "TopicArn": topic or self.topic, "VpcId": self.vpc,
                  "UntrackedGroupId": self.untracked, "RequireOptInTag": "true" if opt_in else "false",
                  "BlocksTable": getattr(self, "blocks_table", ""), "RuleFirst": str(rules[0]),
                  "RuleLast": str(rules[1]), "MaxBanSecs": str(MAX_BAN_SECS), "BlockProtocol": "-1"}
        for key in PLACEHOLDERS:
            text = text.replace("${" + key + "}", values[key])
        check("${" not in text, f"{name}: a placeholder is left after substitution")
        json.loads(text)
        return text

    def machines(self) -> Note:
        self.machine: dict[str, str] = {}
        for name in ("quarantine", "release"):
            arn = self.sfn.create_state_machine(
                name=f"sshwarden-{name}-{RUN}", definition=self.definition(name), roleArn=ROLE_ARN, type="STANDARD"
            )["stateMachineArn"]
            self.cleanup.append(lambda arn=arn: self.sfn.delete_state_machine(stateMachineArn=arn))
            self.machine[name] = arn
        # The quarantine machine again, publishing to a topic that does not
        # exist: the notification fails after the swap.
        missing = f"arn:aws:sns:{REGION}:{ACCOUNT}:sshwarden-test-missing-{RUN}"
        arn = self.sfn.create_state_machine(
            name=f"sshwarden-quarantine-notopic-{RUN}", definition=self.definition("quarantine", missing),
            roleArn=ROLE_ARN, type="STANDARD",
        )["stateMachineArn"]
        self.cleanup.append(lambda: self.sfn.delete_state_machine(stateMachineArn=arn))
        self.machine["quarantine-notopic"] = arn
        # And once more with a topic that appears a moment after the start:
        # the retries (backoff, full jitter) must ride out the gap.
        self.late_topic = f"arn:aws:sns:{REGION}:{ACCOUNT}:sshwarden-test-late-{RUN}"
        arn = self.sfn.create_state_machine(
            name=f"sshwarden-quarantine-late-{RUN}", definition=self.definition("quarantine", self.late_topic),
            roleArn=ROLE_ARN, type="STANDARD",
        )["stateMachineArn"]
        self.cleanup.append(lambda: self.sfn.delete_state_machine(stateMachineArn=arn))
        self.machine["quarantine-late"] = arn
        # And with opt-in required (RequireOptInTag=true).
        arn = self.sfn.create_state_machine(
            name=f"sshwarden-quarantine-optin-{RUN}", definition=self.definition("quarantine", opt_in=True),
            roleArn=ROLE_ARN, type="STANDARD",
        )["stateMachineArn"]
        self.cleanup.append(lambda: self.sfn.delete_state_machine(stateMachineArn=arn))
        self.machine["quarantine-optin"] = arn
        return Note("quarantine and release created (Standard), plus quarantine with a missing and with a late topic, "
                    "and with opt-in required")

    def blocks(self) -> Note:
        """The blocks table (the ledger's schema: key pk) on moto, whose
        DynamoDB the machine's dynamodb:* tasks call, an instance in the
        subnet, and the block machine twice: with the default reserved range
        90..99 and with a two-slot range 80..81 for eviction."""
        self.ddb = boto3.client("dynamodb", endpoint_url=self.url, aws_access_key_id="testing",
                                aws_secret_access_key="testing", config=CONFIG)
        self.blocks_table = f"sshwarden-blocks-{RUN}"
        self.ddb.create_table(TableName=self.blocks_table, BillingMode="PAY_PER_REQUEST",
                              AttributeDefinitions=[{"AttributeName": "pk", "AttributeType": "S"}],
                              KeySchema=[{"AttributeName": "pk", "KeyType": "HASH"}])
        self.cleanup.append(lambda: self.ddb.delete_table(TableName=self.blocks_table))
        acls = self.ec2.describe_network_acls(
            Filters=[{"Name": "association.subnet-id", "Values": [self.subnet]}])["NetworkAcls"]
        check(len(acls) == 1, f"the subnet has {len(acls)} ACLs")
        self.acl = acls[0]["NetworkAclId"]
        self.launch("attacked", interfaces=[[self.web]])
        for name, rules in (("block", (90, 99)), ("block-small", (80, 81))):
            arn = self.sfn.create_state_machine(
                name=f"sshwarden-{name}-{RUN}", definition=self.definition("block", rules=rules),
                roleArn=ROLE_ARN, type="STANDARD")["stateMachineArn"]
            self.cleanup.append(lambda arn=arn: self.sfn.delete_state_machine(stateMachineArn=arn))
            self.machine[name] = arn
        return Note(f"table {self.blocks_table}, subnet ACL {self.acl}, block machines (rules 90..99 and 80..81)")

    # ------------------------------------------------------------ helpers

    def inbound(self, acl: str) -> dict[int, dict]:
        entries = self.ec2.describe_network_acls(NetworkAclIds=[acl])["NetworkAcls"][0]["Entries"]
        return {e["RuleNumber"]: e for e in entries if not e["Egress"]}

    def denies(self, acl: str, cidr: str) -> list[int]:
        return sorted(n for n, e in self.inbound(acl).items()
                      if e["RuleAction"] == "deny" and cidr in (e.get("CidrBlock"), e.get("Ipv6CidrBlock")))

    def item(self, pk: str) -> dict | None:
        return self.ddb.get_item(TableName=self.blocks_table, Key={"pk": {"S": pk}}, ConsistentRead=True).get("Item")

    def describe(self, iid: str) -> dict:
        return self.ec2.describe_instances(InstanceIds=[iid])["Reservations"][0]["Instances"][0]

    def interface_groups(self, iid: str) -> dict[str, list[str]]:
        inst = self.describe(iid)
        return {
            n["NetworkInterfaceId"]: [g["GroupId"] for g in n.get("Groups", [])]
            for n in sorted(inst.get("NetworkInterfaces", []), key=lambda n: n["Attachment"]["DeviceIndex"])
        }

    def tags(self, iid: str) -> dict[str, str]:
        return {t["Key"]: t["Value"] for t in self.describe(iid).get("Tags", [])}

    def sw_tags(self, iid: str) -> dict[str, str]:
        return {k: v for k, v in self.tags(iid).items() if k.startswith(SW) and k != f"{SW}exempt"}

    def run(self, machine: str, payload: Any, label: str) -> dict:
        """Starts an execution, polls it to its end (bounded), returns the
        description plus 'seconds' (start to observed end)."""
        obj = payload if isinstance(payload, dict) else {}
        base = str(obj.get("id") or f"{machine}-{obj.get('instance_id', 'x')}")
        name = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{base[:50]}-{label[:29]}")
        t0 = time.monotonic()
        arn = self.sfn.start_execution(
            stateMachineArn=self.machine[machine], name=name, input=json.dumps(payload)
        )["executionArn"]
        deadline = t0 + self.timeout
        while True:
            d = self.sfn.describe_execution(executionArn=arn)
            if d["status"] != "RUNNING":
                d["seconds"] = time.monotonic() - t0
                return d
            if time.monotonic() > deadline:
                raise CheckFailed(f"{machine} execution {name} still RUNNING after {self.timeout:.0f} s")
            time.sleep(0.1)

    def history_tail(self, arn: str, n: int = 6) -> str:
        events = self.sfn.get_execution_history(executionArn=arn, reverseOrder=True, maxResults=n)["events"]
        out = []
        for e in events:
            details = {k: v for k, v in e.items() if k.endswith("Details")}
            out.append(f"{e['type']} {json.dumps(details, default=str)[:300]}")
        return " | ".join(out)

    def expect_status(self, d: dict, status: str) -> None:
        if d["status"] != status:
            raise CheckFailed(
                f"execution ended {d['status']} (want {status}); error={d.get('error')} cause={d.get('cause')}; "
                f"last events: {self.history_tail(d['executionArn'])}"
            )

    def message_for(self, execution_arn: str, wait: float = 5.0) -> dict:
        """The notification one execution published (SNS envelope from SQS,
        Message parsed). Messages of other executions are kept for later."""
        deadline = time.monotonic() + wait
        while True:
            for i, env in enumerate(self.pending_messages):
                if env["parsed"].get("execution") == execution_arn:
                    return self.pending_messages.pop(i)
            got = self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get(
                "Messages", []
            )
            for m in got:
                env = json.loads(m["Body"])
                env["parsed"] = json.loads(env["Message"])
                self.pending_messages.append(env)
                self.sqs.delete_message(QueueUrl=self.queue, ReceiptHandle=m["ReceiptHandle"])
            if not got and time.monotonic() > deadline:
                raise CheckFailed(f"no notification in the queue for {execution_arn} within {wait:.0f} s")

    def expect_message(self, d: dict, event: str) -> dict:
        env = self.message_for(d["executionArn"])
        msg = env["parsed"]
        check(msg.get("event") == event, f"notification event {msg.get('event')!r}, want {event!r}: {msg}")
        attr = env.get("MessageAttributes", {}).get("event", {}).get("Value")
        check(attr == event, f"message attribute event={attr!r}, want {event!r}")
        check(env.get("Subject", "").startswith("sshwarden: "), f"subject {env.get('Subject')!r}")
        return env

    def teardown(self) -> None:
        for fn in reversed(self.cleanup):
            try:
                fn()
            except Exception:  # noqa: BLE001, S110 - best effort; moto keeps nothing across restarts
                pass


def command(instance_id: str | None, rule: str = "invalid-user", window_start_ms: int = 1_795_962_660_000,
            action: str = "quarantine", held: bool = False, **extra: Any) -> dict:
    """A remediation command as pipeline/src/command.rs serialises it."""
    def iso(ms: int) -> str:
        return datetime.fromtimestamp(ms / 1000, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"

    subject = instance_id or extra.get("source", "203.0.113.9/32")
    kind = "i" if instance_id else "s"
    clean = "".join(c if c.isalnum() or c in "-_" else "_" for c in subject)
    cmd: dict[str, Any] = {
        "version": 1,
        "id": f"sw1-{kind}-{clean}-{rule}-{window_start_ms // 1000}",
        "action": action,
        "held": held,
        "subject_kind": "instance" if instance_id else "source",
    }
    if held:
        cmd["reason"] = "blast-radius limit reached; quarantine held for approval"
    if instance_id:
        cmd["instance_id"] = instance_id
    else:
        cmd["source"] = subject
    cmd.update({
        "account": ACCOUNT,
        "log_group": "/ec2/sshd",
        "log_stream": instance_id or "i-0cc4fb28ca0d8400d",
        "rule": rule,
        "window_start": iso(window_start_ms),
        "window_end": iso(window_start_ms + 60_000),
        "window_start_ms": window_start_ms,
        "counts": {"auth_failure": 3, "disconnect": 5, "invalid_key": 1, "invalid_user": 7},
        "top_sources": [
            {"source": "124.153.189.136", "count": 4},
            {"source": "157.167.152.31", "count": 4},
            {"source": "2001:db8::7", "count": 3},
        ],
        "other_source_events": 0,
        "sample_lines": [
            "Nov 29 14:31:47 ip-10-177-109-244 sshd[12895]: Invalid user zabbix from 157.167.152.31 port 14432",
            "Nov 29 14:31:49 ip-10-177-109-244 sshd[12895]: Received disconnect from 157.167.152.31 port 14432:11: Bye Bye [preauth]",
        ],
        "detected_at": iso(window_start_ms + 56_993),
    })
    cmd.update({k: v for k, v in extra.items() if k != "source"})
    return cmd


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moto", default="http://127.0.0.1:5000")
    ap.add_argument("--definitions", default=str(Path(__file__).resolve().parents[2] / "infra" / "statemachines"))
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds an execution may take")
    ap.add_argument("--keep", action="store_true", help="leave the resources in moto")
    ap.add_argument("--only", action="append", default=[], metavar="PREFIX",
                    help="run only the cases whose names start with PREFIX (repeatable), e.g. 'block:'")
    args = ap.parse_args()
    ONLY.extend(args.only)

    w = World(args.moto, Path(args.definitions), args.timeout)
    print(f"state machine tests against {args.moto} (run {RUN})", flush=True)
    try:
        w.enable_execution()
        ready = all(
            case(n, f) is not None
            for n, f in [
                ("setup: network and security groups", w.network),
                ("setup: quarantine group from infra/quarantine-sg.yaml", w.quarantine_group),
                ("setup: SNS topic with an SQS queue subscribed", w.notifications),
                ("setup: instances", w.instances_setup),
                ("setup: create both state machines (placeholders substituted)", w.machines),
                ("setup: blocks table, attacked instance, block machines", w.blocks),
            ]
        )
        if ready:
            run_cases(w)
    finally:
        if not args.keep:
            w.teardown()

    passed = sum(1 for r in results if r[0] == "ok")
    failed = len(results) - passed
    if deviations:
        print("\nmoto deviations seen in this run:")
        for d in deviations:
            print(f"  - {d}")
    print(f"\nstatemachine: {passed} passed, {failed} failed")
    return 0 if failed == 0 else 1


def run_cases(w: World) -> None:
    target, exempt, held, legacy, resume = (w.instances[r] for r in ("target", "exempt", "held", "legacy", "resume"))
    q = w.quarantine
    first = command(target)

    def quarantine_target() -> Note:
        d = w.run("quarantine", first, "q1")
        w.expect_status(d, "SUCCEEDED")
        after = w.interface_groups(target)
        tags = w.sw_tags(target)
        notes = []
        check(set(after) == set(w.original[target]), f"interfaces changed: {after}")
        for eni, groups in after.items():
            orig = w.original[target][eni]
            if groups == [q]:
                continue
            # moto reports an attached interface's groups as its own plus the
            # instance's launch-time SecurityGroupIds; see the legacy case.
            check(q in groups, f"{eni}: quarantine group missing, groups {groups}")
            deviation("ModifyNetworkInterfaceAttribute: interface shows the quarantine group plus old groups")
            notes.append(f"{eni} has {groups} (moto append)")
        for eni, orig in w.original[target].items():
            saved = tags.get(f"{SW}saved-groups:{eni}")
            check(saved is not None, f"no saved-groups tag for {eni}: {tags}")
            check(sorted(json.loads(saved)) == sorted(orig), f"{eni}: saved {saved}, launched with {orig}")
        check(tags.get(f"{SW}reason") == first["rule"], f"reason tag {tags.get(f'{SW}reason')!r}")
        check(tags.get(f"{SW}command-id") == first["id"], f"command-id tag {tags.get(f'{SW}command-id')!r}")
        stamp = tags.get(f"{SW}quarantined", "")
        check(stamp.startswith("20") and "T" in stamp, f"quarantined tag {stamp!r}")
        env = w.expect_message(d, "quarantined")
        msg = env["parsed"]
        check(msg["rule"] == first["rule"] and msg["command"]["rule"] == first["rule"], f"rule in {msg}")
        check(msg["instance_id"] == target and msg["quarantine_group"] == q, f"instance/group in {msg}")
        check(msg["command"]["counts"] == first["counts"], f"counts {msg['command'].get('counts')}")
        ips = [s["source"] for s in msg["command"]["top_sources"]]
        check(ips == [s["source"] for s in first["top_sources"]], f"top sources {ips}")
        check({i["interface_id"] for i in msg["interfaces"]} == set(w.original[target]), f"interfaces {msg['interfaces']}")
        check(target in env["Subject"], f"subject {env['Subject']!r}")
        passed = msg.get("checks", {}).get("passed", [])
        check(passed[:4] == ["exists", "state running", "2 network interface(s)", f"in the protected VPC {w.vpc}"]
              or passed[:2] == ["exists", "state pending"], f"checks {msg.get('checks')}")
        check(msg.get("untracked_group") == w.untracked and "allow-all group" in msg["summary"], f"{msg}")
        # The order of the EC2 calls, from the execution's history: per
        # interface the allow-all group, the minimum tracking timeouts, then
        # the quarantine group (#16 finding 3).
        calls: dict[str, list[str]] = {}
        for e in w.sfn.get_execution_history(executionArn=d["executionArn"], maxResults=1000)["events"]:
            det = e.get("taskScheduledEventDetails")
            if not det or not det.get("resource", "").endswith("modifyNetworkInterfaceAttribute"):
                continue
            p = json.loads(det["parameters"])
            step = "tracking" if "ConnectionTrackingSpecification" in p else ",".join(p.get("Groups", []))
            calls.setdefault(p["NetworkInterfaceId"], []).append(step)
        for eni in w.original[target]:
            check(calls.get(eni) == [w.untracked, "tracking", q], f"{eni}: calls {calls.get(eni)}")
        tracking = msg.get("connection_tracking", [])
        check(any(t.get("connection_tracking", {}).get("tcp_established_timeout") == 60 for t in tracking), f"{tracking}")
        notes.append("per interface: allow-all group, minimum tracking timeouts, quarantine group (execution history)")
        exact = "every interface has exactly the quarantine group" if len(notes) == 1 else "; ".join(notes)
        return Note(f"SUCCEEDED in {d['seconds']:.2f} s; {len(after)} interfaces; {exact}; tags "
                    f"(quarantined={stamp}) and notification ok")

    def exempt_skipped() -> Note:
        before = w.interface_groups(exempt)
        d = w.run("quarantine", command(exempt), "ex")
        w.expect_status(d, "SUCCEEDED")
        check(w.interface_groups(exempt) == before, f"groups changed: {w.interface_groups(exempt)}")
        check(not w.sw_tags(exempt), f"sshwarden tags written: {w.sw_tags(exempt)}")
        w.expect_message(d, "exempt")
        return Note(f"SUCCEEDED in {d['seconds']:.2f} s; groups and tags untouched; 'exempt' notification")

    def second_quarantine_skipped() -> Note:
        before_groups, before_tags = w.interface_groups(target), w.sw_tags(target)
        again = command(target, window_start_ms=first["window_start_ms"] + 60_000)
        d = w.run("quarantine", again, "q2")
        w.expect_status(d, "SUCCEEDED")
        check(w.interface_groups(target) == before_groups, "groups changed on a second quarantine")
        check(w.sw_tags(target) == before_tags, f"tags changed: {w.sw_tags(target)}")
        w.expect_message(d, "already-quarantined")
        return Note(f"SUCCEEDED in {d['seconds']:.2f} s; nothing changed; 'already-quarantined' notification")

    def malformed_id_fails() -> Note:
        bad = command("i-0123456789abcdeZ")  # right length, not hex
        d = w.run("quarantine", bad, "bad")
        w.expect_status(d, "FAILED")
        check(d.get("error") == "sshwarden.QuarantineFailed", f"error {d.get('error')!r}")
        env = w.expect_message(d, "failed")
        err = env["parsed"]["error"]
        check(err["Error"] == "sshwarden.InvalidCommand", f"failure error {err}")
        check(env["parsed"]["command"]["instance_id"] == bad["instance_id"], "command missing from the failure message")
        return Note(f"FAILED in {d['seconds']:.2f} s (input check, no EC2 call); 'failed' notification; cause {d.get('cause', '')[:60]!r}")

    def unknown_id_fails() -> Note:
        bad = command("i-0123456789abcdef0")  # well-formed, no such instance: DescribeInstances fails
        d = w.run("quarantine", bad, "unk")
        w.expect_status(d, "FAILED")
        check(d.get("error") == "sshwarden.QuarantineFailed", f"error {d.get('error')!r}")
        env = w.expect_message(d, "failed")
        err = env["parsed"]["error"]
        check(err.get("Error", "").lower().startswith("ec2.") and bad["instance_id"] in err.get("Cause", ""),
              f"failure error {err}")
        if err["Error"] != "Ec2.Ec2Exception":
            deviation(f"aws-sdk:ec2 task errors are named {err['Error']!r} (AWS: 'Ec2.Ec2Exception' style, "
                      "capitalised service name); match them with States.TaskFailed/States.ALL, not by name")
        return Note(f"FAILED in {d['seconds']:.2f} s (DescribeInstances error {err['Error']!r} after its retries); 'failed' notification")

    def missing_fields_fail() -> Note:
        before = w.interface_groups(held)
        d = w.run("quarantine", {"version": 1, "action": "quarantine", "instance_id": held}, "nofields")
        w.expect_status(d, "FAILED")
        env = w.expect_message(d, "failed")
        check(env["parsed"]["error"]["Error"] == "sshwarden.InvalidCommand", f"{env['parsed']['error']}")
        check(w.interface_groups(held) == before and not w.sw_tags(held), "the instance changed")
        return Note(f"FAILED in {d['seconds']:.2f} s; 'failed' notification")

    def other_bad_inputs_fail() -> Note:
        base = {"version": 1, "action": "quarantine", "id": "sw1-i-x-r-0", "rule": "r"}
        inputs = {
            "array": [1, 2],
            "string": "quarantine i-0123456789abcdef0",
            "action not a string": {**base, "action": 5},
            "unknown action": {**base, "action": "terminate", "instance_id": held},
            "held not a boolean": {**base, "held": "yes", "instance_id": held},
            "instance_id missing": base,
            "instance_id a number": {**base, "instance_id": 1234},
            "bare i-": {**base, "instance_id": "i-"},
            "upper-case hex": {**base, "instance_id": held.upper().replace("I-", "i-")},
            "trailing space": {**base, "instance_id": held + " "},
            "two ids": {**base, "instance_id": f"{held},{exempt}"},
        }
        before = w.interface_groups(held)
        slowest = 0.0
        for label, payload in inputs.items():
            d = w.run("quarantine", payload, "bad-" + label.replace(" ", "-"))
            slowest = max(slowest, d["seconds"])
            if d["status"] != "FAILED":
                raise CheckFailed(f"{label}: ended {d['status']}")
            err = w.expect_message(d, "failed")["parsed"]["error"]
            check(err["Error"] == "sshwarden.InvalidCommand", f"{label}: {err}")
        check(w.interface_groups(held) == before and not w.sw_tags(held), "an instance changed")
        return Note(f"{len(inputs)} inputs ({', '.join(inputs)}): each FAILED as InvalidCommand with a "
                    f"'failed' notification, slowest {slowest:.2f} s")

    def notify_only() -> Note:
        cmd = command(None, rule="botnet", action="notify", source="198.51.100.23/32")
        snapshot = {iid: w.interface_groups(iid) for iid in w.instances.values()}
        d = w.run("quarantine", cmd, "notify")
        w.expect_status(d, "SUCCEEDED")
        check({iid: w.interface_groups(iid) for iid in w.instances.values()} == snapshot, "an instance changed")
        env = w.expect_message(d, "notify")
        check(env["parsed"]["command"]["source"] == "198.51.100.23/32", "command missing from the notification")
        return Note(f"SUCCEEDED in {d['seconds']:.2f} s; no EC2 change; 'notify' notification")

    def held_only_notifies() -> Note:
        before = w.interface_groups(held)
        cmd = command(held, action="notify", held=True)  # how the policy sends a held quarantine
        d = w.run("quarantine", cmd, "held")
        w.expect_status(d, "SUCCEEDED")
        check(w.interface_groups(held) == before and not w.sw_tags(held), "the held instance changed")
        w.expect_message(d, "held")
        return Note(f"SUCCEEDED in {d['seconds']:.2f} s; no EC2 change; 'held' notification")

    def legacy_launch() -> Note:
        orig = w.original[legacy]
        d = w.run("quarantine", command(legacy), "legacy")
        w.expect_status(d, "SUCCEEDED")
        after = w.interface_groups(legacy)
        tags = w.sw_tags(legacy)
        w.expect_message(d, "quarantined")
        for eni, groups in after.items():
            check(q in groups, f"{eni}: no quarantine group: {groups}")
            check(sorted(json.loads(tags[f"{SW}saved-groups:{eni}"])) == sorted(orig[eni]), f"saved tag of {eni}")
        if all(g == [q] for g in after.values()):
            return Note(f"SUCCEEDED in {d['seconds']:.2f} s; exact swap")
        deviation(
            "an instance launched with SecurityGroupIds: moto reports each attached interface's groups as its own "
            "plus the instance's launch groups, so after ModifyNetworkInterfaceAttribute(Groups=[quarantine]) "
            "DescribeInstances shows the quarantine group appended to the old ones (real EC2 shows only the quarantine group)"
        )
        return Note(
            f"SUCCEEDED in {d['seconds']:.2f} s; moto shows {list(after.values())} (quarantine group appended, "
            "moto deviation); saved-groups tags hold the originals"
        )

    def resume_keeps_saved() -> Note:
        (eni,) = w.original[resume].keys()
        saved_before = w.tags(resume)[f"{SW}saved-groups:{eni}"]
        d = w.run("quarantine", command(resume), "resume")
        w.expect_status(d, "SUCCEEDED")
        tags = w.sw_tags(resume)
        check(tags[f"{SW}saved-groups:{eni}"] == saved_before,
              f"saved-groups overwritten: {tags[f'{SW}saved-groups:{eni}']} (was {saved_before})")
        check(w.interface_groups(resume)[eni] == [q], "not isolated")
        check(f"{SW}quarantined" in tags, "no quarantined tag")
        msg = w.expect_message(d, "quarantined")["parsed"]
        check(msg["interfaces"][0].get("already_isolated") is True, f"interfaces {msg['interfaces']}")
        return Note(f"SUCCEEDED in {d['seconds']:.2f} s; interface already isolated: saved tag of the earlier run kept")

    def tag_limit_fails() -> Note:
        crowded = w.instances["crowded"]
        before = w.interface_groups(crowded)
        d = w.run("quarantine", command(crowded), "crowded")
        w.expect_status(d, "FAILED")
        check(w.interface_groups(crowded) == before, "groups changed although tagging failed")
        check(not w.sw_tags(crowded), f"sshwarden tags written: {w.sw_tags(crowded)}")
        err = w.expect_message(d, "failed")["parsed"]["error"]
        check("TagLimitExceeded" in err.get("Cause", "") or "tag" in err.get("Cause", "").lower(), f"error {err}")
        return Note(f"FAILED in {d['seconds']:.2f} s (CreateTags: {err['Cause'][:50]!r}...); nothing changed; 'failed' notification")

    def notification_failure_fails() -> Note:
        mute = w.instances["mute"]
        d = w.run("quarantine-notopic", command(mute), "mute")
        w.expect_status(d, "FAILED")
        check(d.get("error") == "sshwarden.QuarantineFailed", f"error {d.get('error')!r}")
        after = w.interface_groups(mute)
        check(all(q in g for g in after.values()), f"not isolated: {after}")
        check(f"{SW}quarantined" in w.sw_tags(mute), "quarantined tag missing")
        return Note(f"FAILED in {d['seconds']:.2f} s although isolated: an unannounced quarantine is not a success; "
                    f"cause {d.get('cause', '')[:70]!r}")

    def transient_failure_ridden_out() -> Note:
        # SNS fails (no topic) for the first 1.5 s of the execution, as a
        # throttled or briefly unavailable API would; the retriers' backoff
        # with full jitter must carry the publish past it.
        t0 = time.monotonic()
        arn = w.sfn.start_execution(
            stateMachineArn=w.machine["quarantine-late"], name=f"late-{RUN}",
            input=json.dumps(command(None, rule="late-topic", action="notify")),
        )["executionArn"]
        time.sleep(1.5)
        topic = w.sns.create_topic(Name=w.late_topic.rsplit(":", 1)[1])["TopicArn"]
        w.cleanup.append(lambda: w.sns.delete_topic(TopicArn=topic))
        while True:
            d = w.sfn.describe_execution(executionArn=arn)
            if d["status"] != "RUNNING":
                break
            check(time.monotonic() - t0 < w.timeout, f"still RUNNING after {w.timeout:.0f} s")
            time.sleep(0.1)
        d["seconds"] = time.monotonic() - t0
        w.expect_status(d, "SUCCEEDED")
        events = w.sfn.get_execution_history(executionArn=arn, maxResults=1000)["events"]
        failed = sum(1 for e in events if e["type"] == "TaskFailed")
        check(failed >= 1, "no failed attempt before the topic existed: the case tested nothing")
        return Note(f"SUCCEEDED in {d['seconds']:.2f} s after {failed} failed publish attempt(s)")

    def release(role: str, label: str) -> Callable[[], Note]:
        def run() -> Note:
            iid = w.instances[role]
            d = w.run("release", {"version": 1, "action": "release", "instance_id": iid, "requested_by": "test"}, label)
            w.expect_status(d, "SUCCEEDED")
            after = w.interface_groups(iid)
            notes = []
            for eni, orig in w.original[iid].items():
                if sorted(after[eni]) == sorted(orig):
                    continue
                check(set(orig) <= set(after[eni]) and q not in after[eni], f"{eni}: {after[eni]}, want {orig}")
                notes.append(f"{eni} shows {after[eni]} (moto adds launch groups)")
            check(not w.sw_tags(iid), f"sshwarden tags left: {w.sw_tags(iid)}")
            msg = w.expect_message(d, "released")["parsed"]
            check({i["interface_id"] for i in msg["interfaces"]} == set(w.original[iid]), f"{msg['interfaces']}")
            what = "; ".join(notes) if notes else "every interface back in its launch groups"
            return Note(f"SUCCEEDED in {d['seconds']:.2f} s; {what}; sshwarden tags removed; 'released' notification")

        return run

    def release_not_quarantined() -> Note:
        before = w.interface_groups(exempt)
        d = w.run("release", {"instance_id": exempt}, "relex")
        w.expect_status(d, "SUCCEEDED")
        check(w.interface_groups(exempt) == before, "groups changed")
        w.expect_message(d, "not-quarantined")
        return Note(f"SUCCEEDED in {d['seconds']:.2f} s; nothing changed; 'not-quarantined' notification")

    def release_bad_id() -> Note:
        d = w.run("release", {"instance_id": "sg-12345678"}, "relbad")
        w.expect_status(d, "FAILED")
        check(d.get("error") == "sshwarden.ReleaseFailed", f"error {d.get('error')!r}")
        w.expect_message(d, "release-failed")
        return Note(f"FAILED in {d['seconds']:.2f} s; 'release-failed' notification")

    def release_again_after_quarantine() -> Note:
        # A full cycle on the target again: quarantine after release works,
        # i.e. release left nothing that reads as "already quarantined".
        cmd = command(target, window_start_ms=first["window_start_ms"] + 600_000)
        d = w.run("quarantine", cmd, "q3")
        w.expect_status(d, "SUCCEEDED")
        w.expect_message(d, "quarantined")
        d2 = w.run("release", {"instance_id": target}, "rel3")
        w.expect_status(d2, "SUCCEEDED")
        w.expect_message(d2, "released")
        check(not w.sw_tags(target), "tags left")
        return Note(f"quarantine {d['seconds']:.2f} s + release {d2['seconds']:.2f} s, both SUCCEEDED")

    case("quarantine: two-interface instance", quarantine_target)
    def refused(role: str, label: str, machine: str, want: str) -> Callable[[], Note]:
        def run() -> Note:
            iid = w.instances[role]
            before = w.interface_groups(iid) if role != "gone" else {}
            d = w.run(machine, command(iid), label)
            w.expect_status(d, "SUCCEEDED")
            msg = w.expect_message(d, "refused")["parsed"]
            reason = msg.get("checks", {}).get("refused") or ""
            check(want in reason, f"refused {reason!r}, want {want!r}")
            check("isolated" not in msg.get("summary", ""), f"summary {msg.get('summary')}")
            check(not w.sw_tags(iid), f"sshwarden tags written: {w.sw_tags(iid)}")
            if before:
                check(w.interface_groups(iid) == before, "groups changed")
            ec2_writes = [e for e in w.sfn.get_execution_history(executionArn=d["executionArn"], maxResults=1000)["events"]
                          if e.get("taskScheduledEventDetails", {}).get("resource", "").split(":")[-1]
                          in ("createTags", "modifyNetworkInterfaceAttribute")]
            check(not ec2_writes, f"EC2 writes: {ec2_writes}")
            return Note(f"SUCCEEDED in {d['seconds']:.2f} s; 'refused' ({reason}); checks passed "
                        f"{msg['checks'].get('passed')}; no EC2 write")

        return run

    def opt_in_quarantines_the_tagged() -> Note:
        iid = w.instances["optin"]
        d = w.run("quarantine-optin", command(iid), "optin")
        w.expect_status(d, "SUCCEEDED")
        msg = w.expect_message(d, "quarantined")["parsed"]
        check(all(g == [q] for g in w.interface_groups(iid).values()), f"{w.interface_groups(iid)}")
        check("opt-in required: true; sshwarden:protected tag: true" in msg["checks"]["passed"], f"{msg['checks']}")
        return Note(f"SUCCEEDED in {d['seconds']:.2f} s; quarantined; checks {msg['checks']['passed'][-1]!r}")

    def stopped_is_quarantined() -> Note:
        iid = w.instances["stopped"]
        d = w.run("quarantine", command(iid), "stopped")
        w.expect_status(d, "SUCCEEDED")
        msg = w.expect_message(d, "quarantined")["parsed"]
        check("state stopped" in msg["checks"]["passed"], f"{msg['checks']}")
        check(all(g == [q] for g in w.interface_groups(iid).values()), f"{w.interface_groups(iid)}")
        return Note(f"SUCCEEDED in {d['seconds']:.2f} s; a stopped instance is isolated before it can be started")

    def forged_quarantined_tag_does_not_skip() -> Note:
        iid = w.instances["forged"]
        d = w.run("quarantine", command(iid), "forged")
        w.expect_status(d, "SUCCEEDED")
        w.expect_message(d, "quarantined")
        check(all(g == [q] for g in w.interface_groups(iid).values()), f"{w.interface_groups(iid)}")
        return Note(f"SUCCEEDED in {d['seconds']:.2f} s; a stale or forged sshwarden:quarantined tag does not make "
                    "'already quarantined': the interfaces' groups do")

    def already_isolated_by_another_command() -> Note:
        iid = w.instances["isolated"]
        before = w.interface_groups(iid)
        d = w.run("quarantine", command(iid), "isolated")
        w.expect_status(d, "SUCCEEDED")
        w.expect_message(d, "already-quarantined")
        check(w.interface_groups(iid) == before and not w.sw_tags(iid), "changed")
        return Note(f"SUCCEEDED in {d['seconds']:.2f} s; every interface in the quarantine group, no tag: "
                    "'already-quarantined', nothing changed")

    case("quarantine: terminated instance is refused, never quarantined", refused("gone", "gone", "quarantine", "terminated"))
    case("quarantine: instance outside the protected VPC is refused", refused("foreign", "foreign", "quarantine", "is not the protected VPC"))
    case("quarantine (opt-in required): instance without sshwarden:protected is refused",
         refused("held", "noptin", "quarantine-optin", "sshwarden:protected"))
    case("quarantine (opt-in required): instance with sshwarden:protected is quarantined", opt_in_quarantines_the_tagged)
    case("quarantine: stopped instance is quarantined", stopped_is_quarantined)
    case("quarantine: a forged sshwarden:quarantined tag does not skip the quarantine", forged_quarantined_tag_does_not_skip)
    case("quarantine: interfaces already in the quarantine group → already-quarantined", already_isolated_by_another_command)

    case("quarantine: exempt-tagged instance is skipped", exempt_skipped)
    case("quarantine: second command for the same instance is skipped", second_quarantine_skipped)
    case("quarantine: malformed instance id ends FAILED", malformed_id_fails)
    case("quarantine: well-formed unknown instance id ends FAILED", unknown_id_fails)
    case("quarantine: command without id/rule ends FAILED", missing_fields_fail)
    case("quarantine: other malformed commands end FAILED", other_bad_inputs_fail)
    case("quarantine: notify command only notifies", notify_only)
    case("quarantine: held command only notifies", held_only_notifies)
    case("quarantine: instance launched with SecurityGroupIds", legacy_launch)
    case("quarantine: resumes a half-done quarantine without losing saved groups", resume_keeps_saved)
    case("quarantine: EC2 tag limit reached ends FAILED before any change", tag_limit_fails)
    case("quarantine: SNS publish fails after the swap, ends FAILED", notification_failure_fails)
    case("notify: SNS fails for 1.5 s, the retries (backoff, full jitter) carry it", transient_failure_ridden_out)
    case("release: two-interface instance", release("target", "rel1"))
    case("release: instance whose notification failed", release("mute", "relmute"))
    case("release: instance launched with SecurityGroupIds", release("legacy", "rel2"))
    case("release: the resumed instance", release("resume", "relres"))
    case("release: instance that is not quarantined", release_not_quarantined)
    def release_checks() -> Note:
        iid, bystander = w.instances["relcheck"], w.instances["held"]
        d = w.run("quarantine", command(iid), "relcheck")
        w.expect_status(d, "SUCCEEDED")
        w.expect_message(d, "quarantined")
        first, second = list(w.original[iid])
        (by_eni,) = w.original[bystander]
        # After the quarantine: the doomed group is deleted, someone adds a
        # group of another VPC to the first interface's saved tag, moves the
        # second interface out of quarantine by hand, and forges a saved tag
        # naming the bystander's interface.
        w.ec2.delete_security_group(GroupId=w.doomed)
        w.ec2.create_tags(Resources=[iid], Tags=[
            {"Key": f"{SW}saved-groups:{first}", "Value": json.dumps([w.web, w.doomed, w.foreign_group], separators=(",", ":"))},
            {"Key": f"{SW}saved-groups:{by_eni}", "Value": json.dumps([w.db], separators=(",", ":"))},
        ])
        w.ec2.modify_network_interface_attribute(NetworkInterfaceId=second, Groups=[w.web])
        d = w.run("release", {"instance_id": iid, "requested_by": "test"}, "relcheck")
        w.expect_status(d, "SUCCEEDED")
        msg = w.expect_message(d, "released")["parsed"]
        by_id = {i["interface_id"]: i for i in msg["interfaces"]}
        check(set(by_id) == {first, second}, f"interfaces {msg['interfaces']}")
        check(by_id[first].get("groups") == [w.web] and "skipped" not in by_id[first], f"{by_id[first]}")
        check("not in the quarantine group" in by_id[second].get("skipped", ""), f"{by_id[second]}")
        after = w.interface_groups(iid)
        check(after[first] == [w.web], f"{first}: {after[first]}")
        check(after[second] == [w.web], f"{second}: {after[second]}")
        check(w.interface_groups(bystander) == w.original[bystander], "the bystander's interface changed")
        tags = w.sw_tags(iid)
        check(f"{SW}saved-groups:{first}" not in tags, f"{tags}")
        check(f"{SW}saved-groups:{second}" in tags and f"{SW}saved-groups:{by_eni}" in tags, f"{tags}")
        return Note(f"SUCCEEDED in {d['seconds']:.2f} s; {first} back in [web] (deleted and other-VPC groups left out); "
                    f"{second} (moved out by hand) skipped; the forged tag naming another instance's interface ignored")

    case("release: restores only attached interfaces in quarantine, with groups that exist in the VPC", release_checks)

    def many_groups_round_trip() -> Note:
        iid = w.instances["many"]
        ((eni, orig),) = w.original[iid].items()
        check(len(orig) == 13, f"launched with {len(orig)} groups")
        d = w.run("quarantine", command(iid), "many")
        w.expect_status(d, "SUCCEEDED")
        w.expect_message(d, "quarantined")
        tags = w.sw_tags(iid)
        first, second = tags.get(f"{SW}saved-groups:{eni}", ""), tags.get(f"{SW}saved-groups:{eni}:2", "")
        check(len(first) <= 256 and len(second) <= 256, f"tag values of {len(first)} and {len(second)} characters")
        check(sorted(json.loads(first) + json.loads(second)) == sorted(orig), f"saved {first} + {second}, launched with {orig}")
        check(w.interface_groups(iid)[eni] == [q], f"{w.interface_groups(iid)}")
        d = w.run("release", {"instance_id": iid}, "relmany")
        w.expect_status(d, "SUCCEEDED")
        w.expect_message(d, "released")
        check(sorted(w.interface_groups(iid)[eni]) == sorted(orig), f"restored {w.interface_groups(iid)[eni]}")
        check(not w.sw_tags(iid), f"tags left: {w.sw_tags(iid)}")
        return Note(f"13 groups saved in two tags ({len(first)} + {len(second)} characters), all 13 restored, tags removed")

    case("quarantine + release of an interface with 13 groups (two saved-groups tags)", many_groups_round_trip)

    case("release: malformed instance id ends FAILED", release_bad_id)
    case("quarantine + release again on the same instance", release_again_after_quarantine)

    def no_stray_notifications() -> Note:
        # Every notification was claimed by the case of its execution: none
        # was published twice, none by an execution that should have stayed quiet.
        deadline = time.monotonic() + 2
        while time.monotonic() < deadline:
            got = w.sqs.receive_message(QueueUrl=w.queue, MaxNumberOfMessages=10, WaitTimeSeconds=1).get("Messages", [])
            for m in got:
                env = json.loads(m["Body"])
                env["parsed"] = json.loads(env["Message"])
                w.pending_messages.append(env)
        stray = [(m["parsed"].get("event"), m["parsed"].get("execution")) for m in w.pending_messages]
        check(not stray, f"notifications no case expected: {stray}")
        return Note("queue empty")

    run_block_cases(w)
    case("every notification belongs to exactly one checked execution", no_stray_notifications)


def block_command(w: World, source: str, *, ban_secs: int = 3600, expires_at: int | None = None,
                  instances: list[str] | None = None, label: str = "", **plan: Any) -> dict:
    """A block command as the worker hands it to the block machine: the
    command plus the worker's plan (consumers/src/sink/sfn.rs)."""
    now = int(time.time())
    exp = expires_at if expires_at is not None else now + ban_secs
    cmd = command(None, rule="brute-force", action="block", source=source,
                  window_start_ms=1_795_962_660_000 + len(label) * 1000)
    cmd["id"] = f"{cmd['id']}-{label}"[:80]
    cmd["instances"] = instances if instances is not None else [w.instances["attacked"]]
    block = {"cidr": source, "scope": "subnets", "ban_count": 1, "ban_secs": ban_secs, "last_ban_at": now,
             "expires_at": exp, "expires": datetime.fromtimestamp(exp, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.000Z"),
             "purge_at": exp + MAX_BAN_SECS, "command_ids": [cmd["id"]]}
    block.update(plan)
    cmd["block"] = block
    return cmd


def run_block_cases(w: World) -> None:
    acl = w.acl

    def block_one() -> Note:
        cmd = block_command(w, "198.51.100.7/32", label="b1")
        d = w.run("block", cmd, "b1")
        w.expect_status(d, "SUCCEEDED")
        numbers = w.denies(acl, "198.51.100.7/32")
        check(numbers == [90], f"deny entries at {numbers}, want [90]")
        e = w.inbound(acl)[90]
        check(e["Protocol"] == "-1" and not e["Egress"], f"entry {e}")
        slot = w.item(f"slot#{acl}#90")
        check(slot is not None and slot["cidr"]["S"] == "198.51.100.7/32" and slot["commandId"]["S"] == cmd["id"], f"slot {slot}")
        ban = w.item("prefix#198.51.100.7/32")
        check(ban is not None and ban["acls"]["M"] == {acl: {"N": "90"}}, f"ban {ban}")
        check(ban["lastCommandId"]["S"] == cmd["id"] and ban["banCount"]["N"] == "1"
              and ban["expiresAt"]["N"] == str(cmd["block"]["expires_at"]), f"ban {ban}")
        check([v["S"] for v in ban["commandIds"]["L"]] == [cmd["id"]], f"commandIds {ban['commandIds']}")
        msg = w.expect_message(d, "blocked")["parsed"]
        check(msg["acls"] == [{"network_acl_id": acl, "rule_number": 90}] and msg["evicted"] == [], f"{msg}")
        check(msg["source"] == "198.51.100.7/32" and msg["command"]["id"] == cmd["id"], f"{msg}")
        # Replayed (another execution, same input): nothing changes, nothing is sent.
        d2 = w.run("block", cmd, "b1replay")
        w.expect_status(d2, "SUCCEEDED")
        check(json.loads(d2["output"]).get("event") == "already-blocked", f"output {d2.get('output')}")
        check(w.denies(acl, "198.51.100.7/32") == [90], "the replay changed the entries")
        return Note(f"SUCCEEDED in {d['seconds']:.2f} s: one deny at rule 90, slot and ban in the ledger, 'blocked'; "
                    f"the replay ({d2['seconds']:.2f} s) found its command id and changed nothing")

    def replay_before_record() -> Note:
        # The same command again after the ban record lost it (as if the
        # run had stopped before its last write): the scan finds the slot
        # this prefix holds and the entry already there.
        cmd = block_command(w, "198.51.100.7/32", label="b1")
        w.ddb.update_item(TableName=w.blocks_table, Key={"pk": {"S": "prefix#198.51.100.7/32"}},
                          UpdateExpression="REMOVE lastCommandId, commandIds")
        d = w.run("block", cmd, "b1again")
        w.expect_status(d, "SUCCEEDED")
        check(w.denies(acl, "198.51.100.7/32") == [90], f"entries {w.denies(acl, '198.51.100.7/32')}")
        msg = w.expect_message(d, "blocked")["parsed"]
        check(msg["acls"] == [{"network_acl_id": acl, "rule_number": 90}], f"{msg}")
        return Note(f"SUCCEEDED in {d['seconds']:.2f} s: still one entry at 90 (its own slot reused, no new write)")

    def second_prefix_next_slot() -> Note:
        d = w.run("block", block_command(w, "198.51.100.8/32", label="b2"), "b2")
        w.expect_status(d, "SUCCEEDED")
        check(w.denies(acl, "198.51.100.8/32") == [91], f"entries {w.denies(acl, '198.51.100.8/32')}")
        check(w.denies(acl, "198.51.100.7/32") == [90], "the first block moved")
        w.expect_message(d, "blocked")
        return Note(f"SUCCEEDED in {d['seconds']:.2f} s: the next rule number, 91")

    def ipv6_prefix() -> Note:
        d = w.run("block", block_command(w, "2001:db8:1:2::/64", label="b6"), "b6")
        w.expect_status(d, "SUCCEEDED")
        numbers = w.denies(acl, "2001:db8:1:2::/64")
        check(numbers == [92], f"entries {numbers}")
        check(w.inbound(acl)[92].get("Ipv6CidrBlock") == "2001:db8:1:2::/64", f"{w.inbound(acl)[92]}")
        w.expect_message(d, "blocked")
        return Note(f"SUCCEEDED in {d['seconds']:.2f} s: Ipv6CidrBlock deny at 92")

    def eviction() -> Note:
        # Two slots (80, 81): the third prefix evicts the one that expires soonest.
        now = int(time.time())
        runs = [("203.0.113.1/32", now + 7200, "e1"), ("203.0.113.2/32", now + 3600, "e2")]
        for cidr, exp, label in runs:
            d = w.run("block-small", block_command(w, cidr, expires_at=exp, label=label), label)
            w.expect_status(d, "SUCCEEDED")
            w.expect_message(d, "blocked")
        check(w.denies(acl, "203.0.113.1/32") == [80] and w.denies(acl, "203.0.113.2/32") == [81], "setup")
        d = w.run("block-small", block_command(w, "203.0.113.3/32", expires_at=now + 5000, label="e3"), "e3")
        w.expect_status(d, "SUCCEEDED")
        check(w.denies(acl, "203.0.113.3/32") == [81], f"new entry at {w.denies(acl, '203.0.113.3/32')}")
        check(w.denies(acl, "203.0.113.2/32") == [], "the evicted entry is still there")
        check(w.denies(acl, "203.0.113.1/32") == [80], "the later-expiring block was evicted")
        msg = w.expect_message(d, "blocked")["parsed"]
        ev = msg["evicted"]
        check(len(ev) == 1 and ev[0]["source"] == "203.0.113.2/32" and ev[0]["rule_number"] == 81, f"evicted {ev}")
        check("203.0.113.2/32" in msg["summary"], f"summary {msg['summary']}")
        gone = w.item("prefix#203.0.113.2/32")
        check(gone is not None and gone["acls"]["M"] == {}, f"evicted ban {gone}")
        return Note(f"SUCCEEDED in {d['seconds']:.2f} s: 203.0.113.2/32 (expiring first) evicted from 81 and named "
                    "in the notification; its ban no longer holds the ACL")

    def missing_acl_fails() -> Note:
        cmd = block_command(w, "198.51.100.9/32", label="bmiss", scope="acls", acls=["acl-0123456789abcdef0"])
        d = w.run("block", cmd, "bmiss")
        w.expect_status(d, "FAILED")
        check(d.get("error") == "sshwarden.BlockFailed", f"error {d.get('error')!r}")
        msg = w.expect_message(d, "block-failed")["parsed"]
        check(msg["command"]["id"] == cmd["id"], f"{msg}")
        check(w.denies(acl, "198.51.100.9/32") == [], "an entry was written")
        return Note(f"FAILED in {d['seconds']:.2f} s ({msg['error'].get('Error')}); 'block-failed' notification")

    def refused(source: str, label: str, want: str, **kw: Any) -> Callable[[], Note]:
        def run() -> Note:
            d = w.run("block", block_command(w, source, label=label, **kw), label)
            w.expect_status(d, "SUCCEEDED")
            msg = w.expect_message(d, "block-refused")["parsed"]
            check(want in msg["reason"], f"reason {msg['reason']!r}, want {want!r}")
            check(not w.denies(acl, kw.get("cidr", source)), "an entry was written")
            return Note(f"SUCCEEDED in {d['seconds']:.2f} s; 'block-refused': {msg['reason']}")
        return run

    def forged_ban_fails() -> Note:
        d = w.run("block", block_command(w, "198.51.100.10/32", ban_secs=MAX_BAN_SECS + 1, label="blong"), "blong")
        w.expect_status(d, "FAILED")
        msg = w.expect_message(d, "block-failed")["parsed"]
        check(msg["error"]["Error"] == "sshwarden.InvalidCommand", f"{msg['error']}")
        check(not w.denies(acl, "198.51.100.10/32"), "an entry was written")
        return Note(f"FAILED in {d['seconds']:.2f} s: a ban over MaxBanSecs is an invalid command")

    def foreign_rule_fails() -> Note:
        # An entry sshwarden did not write at the next free number (93):
        # never replaced; the slot taken for it is freed again.
        w.ec2.create_network_acl_entry(NetworkAclId=acl, RuleNumber=93, Egress=False, Protocol="6",
                                       RuleAction="deny", CidrBlock="192.0.2.0/24", PortRange={"From": 23, "To": 23})
        try:
            d = w.run("block", block_command(w, "198.51.100.12/32", label="bfor"), "bfor")
            w.expect_status(d, "FAILED")
            msg = w.expect_message(d, "block-failed")["parsed"]
            check(msg["error"]["Error"] == "sshwarden.ForeignRuleInRange", f"{msg['error']}")
            e = w.inbound(acl)[93]
            check(e.get("CidrBlock") == "192.0.2.0/24" and e["Protocol"] == "6", f"entry changed: {e}")
            check(w.item(f"slot#{acl}#93") is None, f"slot kept: {w.item(f'slot#{acl}#93')}")
        finally:
            w.ec2.delete_network_acl_entry(NetworkAclId=acl, RuleNumber=93, Egress=False)
        return Note(f"FAILED in {d['seconds']:.2f} s (sshwarden.ForeignRuleInRange): the foreign entry at 93 untouched, "
                    "the slot freed; 'block-failed'")

    def listed_and_vpc_scopes() -> Note:
        # A second ACL of the protected VPC: listed, it alone gets the deny;
        # with scope vpc, every ACL of the VPC does.
        other = w.ec2.create_network_acl(VpcId=w.vpc)["NetworkAcl"]["NetworkAclId"]
        w.cleanup.append(lambda: w.ec2.delete_network_acl(NetworkAclId=other))
        d = w.run("block", block_command(w, "198.51.100.13/32", label="blist", scope="acls", acls=[other]), "blist")
        w.expect_status(d, "SUCCEEDED")
        check(w.denies(other, "198.51.100.13/32") == [90] and w.denies(acl, "198.51.100.13/32") == [],
              f"listed: {w.denies(other, '198.51.100.13/32')}, subnet's: {w.denies(acl, '198.51.100.13/32')}")
        w.expect_message(d, "blocked")
        d2 = w.run("block", block_command(w, "198.51.100.14/32", label="bvpc", scope="vpc"), "bvpc")
        w.expect_status(d2, "SUCCEEDED")
        msg = w.expect_message(d2, "blocked")["parsed"]
        where = {a["network_acl_id"]: a["rule_number"] for a in msg["acls"]}
        check(set(where) == {acl, other}, f"scope vpc wrote {where}")
        check(w.denies(other, "198.51.100.14/32") == [91], f"{w.denies(other, '198.51.100.14/32')}")
        # An ACL of another VPC, listed, is refused before any write.
        foreign_vpc = w.describe(w.instances["foreign"])["VpcId"]
        foreign_acl = w.ec2.describe_network_acls(Filters=[{"Name": "vpc-id", "Values": [foreign_vpc]}])["NetworkAcls"][0]["NetworkAclId"]
        d3 = w.run("block", block_command(w, "198.51.100.15/32", label="bfacl", scope="acls", acls=[foreign_acl]), "bfacl")
        w.expect_status(d3, "FAILED")
        m3 = w.expect_message(d3, "block-failed")["parsed"]
        check(m3["error"]["Error"] == "sshwarden.AclOutsideVpc", f"{m3['error']}")
        check(not w.denies(foreign_acl, "198.51.100.15/32"), "written in another VPC")
        # An allow rule inside the range (at 85, below the range's end):
        # a deny there would come too late.
        low = w.ec2.create_network_acl(VpcId=w.vpc)["NetworkAcl"]["NetworkAclId"]
        w.cleanup.append(lambda: w.ec2.delete_network_acl(NetworkAclId=low))
        w.ec2.create_network_acl_entry(NetworkAclId=low, RuleNumber=85, Egress=False, Protocol="-1",
                                       RuleAction="allow", CidrBlock="0.0.0.0/0")
        d4 = w.run("block", block_command(w, "198.51.100.16/32", label="blow", scope="acls", acls=[low]), "blow")
        w.expect_status(d4, "FAILED")
        m4 = w.expect_message(d4, "block-failed")["parsed"]
        check(m4["error"]["Error"] == "sshwarden.RangeNotBelowAllowRules", f"{m4['error']}")
        check(not w.denies(low, "198.51.100.16/32") and w.item(f"slot#{low}#90") is None, "written or slot kept")
        return Note(f"listed ACL only ({d['seconds']:.2f} s); scope vpc: both ACLs ({d2['seconds']:.2f} s); "
                    "a listed ACL of another VPC: sshwarden.AclOutsideVpc; an allow rule at 85: "
                    "sshwarden.RangeNotBelowAllowRules, slot freed")

    case("block: one deny in the subnet's ACL at rule 90; replayed, still one", block_one)
    case("block: rerun after the record lost the command id reuses its slot", replay_before_record)
    case("block: a second prefix takes the next rule number", second_prefix_next_slot)
    case("block: IPv6 /64", ipv6_prefix)
    case("block: an entry sshwarden did not write at the chosen number ends FAILED, untouched", foreign_rule_fails)
    case("block: listed ACLs, scope vpc, a listed ACL of another VPC, an allow rule inside the range", listed_and_vpc_scopes)
    case("block: a full range evicts the block that expires soonest, named in the notification", eviction)
    case("block: a listed ACL that does not exist ends FAILED with 'block-failed'", missing_acl_fails)
    case("block: the worker's refusal is notified", refused("10.77.1.5/32", "brefw", "inside the VPC", refused="10.77.1.5/32 overlaps the VPC's own range 10.77.0.0/16: inside the VPC"))
    case("block: a prefix wider than /16 is refused by the machine", refused("10.0.0.0/8", "bwide", "wider than /16", cidr="10.0.0.0/8"))
    case("block: instances outside the protected VPC are refused", refused("198.51.100.11/32", "bforeign", "none of the attacked instances", instances=[w.instances["foreign"]]))
    case("block: a ban longer than MaxBanSecs ends FAILED", forged_ban_fails)


if __name__ == "__main__":
    sys.exit(main())
