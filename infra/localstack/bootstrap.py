#!/usr/bin/env python3
"""Creates (or deletes) the AWS resources of a local sshwarden dev loop.

Used by infra/localstack/docker-compose.yml (everything on LocalStack) and by
scripts/dev-loop (Kinesis on kinesis-local, the rest on moto). Needs boto3.

    bootstrap.py up   --prefix NAME [--endpoint URL] [--kinesis-endpoint URL] [--shards N]
                      [--definitions DIR] [--env-file FILE]
    bootstrap.py down --prefix NAME [--endpoint URL] [--kinesis-endpoint URL]

`up` creates: a Kinesis stream NAME-sshd (N shards, waited for ACTIVE), the
fleet stage's stream of partials NAME-partials (N shards, docs/fleet.md), the
lease tables NAME-leases and NAME-leases-fleet (the worker's default for the
partials' readers; it would create both too), an SNS topic
NAME-alerts, a VPC with the quarantine group (as infra/quarantine-sg.yaml),
and the quarantine and release state machines from infra/statemachines with
their placeholders filled. It is idempotent: what exists is reused. With
--env-file it writes the worker's SSHWARDEN_* settings there (KEY=value lines).
`down` deletes what `up` made. Credentials and region come from the usual
AWS_* variables (any values work on the emulators).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import boto3
from botocore.config import Config
from botocore.exceptions import ClientError

HERE = Path(__file__).resolve().parent
CONFIG = Config(region_name=os.environ.get("AWS_REGION", "us-east-1"), connect_timeout=2, read_timeout=15,
                retries={"max_attempts": 3})
ROLE_ARN = "arn:aws:iam::000000000000:role/sshwarden-dev-stepfunctions"  # emulators check no IAM


def clients(args: argparse.Namespace) -> dict:
    def make(service: str, endpoint: str | None) -> object:
        return boto3.client(service, endpoint_url=endpoint, config=CONFIG)

    return {
        "kinesis": make("kinesis", args.kinesis_endpoint or args.endpoint),
        "ddb": make("dynamodb", args.endpoint),
        "sns": make("sns", args.endpoint),
        "ec2": make("ec2", args.endpoint),
        "sfn": make("stepfunctions", args.endpoint),
    }


def exists(fn) -> bool:  # noqa: ANN001
    try:
        fn()
        return True
    except ClientError as e:
        if e.response["Error"]["Code"] in ("ResourceNotFoundException", "StateMachineDoesNotExist", "NotFound"):
            return False
        raise


def up(args: argparse.Namespace) -> dict[str, str]:
    c = clients(args)
    p = args.prefix
    stream, table = f"{p}-sshd", f"{p}-leases"
    fleet_stream, fleet_table = f"{p}-partials", f"{p}-leases-fleet"
    k = c["kinesis"]
    for name in (stream, fleet_stream):
        if not exists(lambda name=name: k.describe_stream_summary(StreamName=name)):
            k.create_stream(StreamName=name, ShardCount=args.shards)
    deadline = time.monotonic() + 60
    for name in (stream, fleet_stream):
        while k.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]["StreamStatus"] != "ACTIVE":
            if time.monotonic() > deadline:
                sys.exit(f"stream {name} not ACTIVE within 60 s")
            time.sleep(0.2)
    d = c["ddb"]
    for name in (table, fleet_table):
        if not exists(lambda name=name: d.describe_table(TableName=name)):
            d.create_table(TableName=name, AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
                           KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}], BillingMode="PAY_PER_REQUEST")
    topic = c["sns"].create_topic(Name=f"{p}-alerts")["TopicArn"]  # idempotent
    ec2 = c["ec2"]
    tag = [{"Name": "tag:sshwarden:dev-loop", "Values": [p]}]
    vpcs = ec2.describe_vpcs(Filters=tag)["Vpcs"]
    if vpcs:
        vpc = vpcs[0]["VpcId"]
    else:
        vpc = ec2.create_vpc(CidrBlock="10.99.0.0/16", TagSpecifications=[
            {"ResourceType": "vpc", "Tags": [{"Key": "sshwarden:dev-loop", "Value": p}]}])["Vpc"]["VpcId"]
    groups = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc]},
                                                   {"Name": "group-name", "Values": [f"{p}-quarantine"]}])["SecurityGroups"]
    if groups:
        group = groups[0]["GroupId"]
    else:
        group = ec2.create_security_group(GroupName=f"{p}-quarantine", VpcId=vpc,
                                          Description="sshwarden quarantine - no inbound, no outbound")["GroupId"]
        # As infra/quarantine-sg.yaml: no egress at all.
        rules = ec2.describe_security_groups(GroupIds=[group])["SecurityGroups"][0]["IpPermissionsEgress"]
        if rules:
            ec2.revoke_security_group_egress(GroupId=group, IpPermissions=rules)
    # As the template's UntrackedSecurityGroup: all traffic both ways (the
    # quarantine swaps each interface through it, making flows untracked).
    found = ec2.describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [vpc]},
                                                  {"Name": "group-name", "Values": [f"{p}-untracked"]}])["SecurityGroups"]
    if found:
        untracked = found[0]["GroupId"]
    else:
        untracked = ec2.create_security_group(GroupName=f"{p}-untracked", VpcId=vpc,
                                              Description="sshwarden untracked - all traffic both ways")["GroupId"]
        everything = [{"IpProtocol": "-1", "IpRanges": [{"CidrIp": "0.0.0.0/0"}], "Ipv6Ranges": [{"CidrIpv6": "::/0"}]}]
        ec2.authorize_security_group_ingress(GroupId=untracked, IpPermissions=everything)
        try:
            ec2.authorize_security_group_egress(GroupId=untracked, IpPermissions=everything)
        except ec2.exceptions.ClientError as e:
            if "Duplicate" not in str(e):
                raise
    values = {"QuarantineGroupId": group, "TopicArn": topic, "VpcId": vpc, "UntrackedGroupId": untracked,
              "RequireOptInTag": "false"}
    machines = {}
    for name in ("quarantine", "release"):
        definition = (Path(args.definitions) / f"{name}.asl.json").read_text()
        for key, value in values.items():
            definition = definition.replace("${" + key + "}", value)
        if "${" in definition:
            sys.exit(f"{name}.asl.json: a placeholder this script does not fill")
        found = [m["stateMachineArn"] for m in c["sfn"].list_state_machines()["stateMachines"] if m["name"] == f"{p}-{name}"]
        machines[name] = found[0] if found else c["sfn"].create_state_machine(
            name=f"{p}-{name}", definition=definition, roleArn=ROLE_ARN, type="STANDARD")["stateMachineArn"]
    env = {
        "SSHWARDEN_STREAM": stream,
        "SSHWARDEN_LEASE_TABLE": table,
        "SSHWARDEN_FLEET_STREAM": fleet_stream,
        "SSHWARDEN_STATE_MACHINE_ARN": machines["quarantine"],
        "SSHWARDEN_DEV_RELEASE_STATE_MACHINE_ARN": machines["release"],
        "SSHWARDEN_DEV_TOPIC_ARN": topic,
        "SSHWARDEN_DEV_QUARANTINE_GROUP": group,
    }
    if args.env_file:
        Path(args.env_file).write_text("".join(f"{k}={v}\n" for k, v in env.items()))
    return env


def down(args: argparse.Namespace) -> dict[str, str]:
    c = clients(args)
    p = args.prefix
    done = {}

    def attempt(what: str, fn) -> None:  # noqa: ANN001
        try:
            fn()
            done[what] = "deleted"
        except ClientError as e:
            done[what] = e.response["Error"]["Code"]

    for m in c["sfn"].list_state_machines()["stateMachines"]:
        if m["name"] in (f"{p}-quarantine", f"{p}-release"):
            attempt(m["name"], lambda arn=m["stateMachineArn"]: c["sfn"].delete_state_machine(stateMachineArn=arn))
    for s in (f"{p}-sshd", f"{p}-partials"):
        attempt(s, lambda s=s: c["kinesis"].delete_stream(StreamName=s, EnforceConsumerDeletion=True))
    for t in (f"{p}-leases", f"{p}-leases-fleet"):
        attempt(t, lambda t=t: c["ddb"].delete_table(TableName=t))
    for t in c["sns"].list_topics()["Topics"]:
        if t["TopicArn"].endswith(f":{p}-alerts"):
            attempt(f"{p}-alerts", lambda arn=t["TopicArn"]: c["sns"].delete_topic(TopicArn=arn))
    for v in c["ec2"].describe_vpcs(Filters=[{"Name": "tag:sshwarden:dev-loop", "Values": [p]}])["Vpcs"]:
        for g in c["ec2"].describe_security_groups(Filters=[{"Name": "vpc-id", "Values": [v["VpcId"]]}])["SecurityGroups"]:
            if g["GroupName"] != "default":
                attempt(g["GroupId"], lambda gid=g["GroupId"]: c["ec2"].delete_security_group(GroupId=gid))
        attempt(v["VpcId"], lambda vid=v["VpcId"]: c["ec2"].delete_vpc(VpcId=vid))
    return done


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("action", choices=["up", "down"])
    ap.add_argument("--prefix", default="sshwarden-dev")
    ap.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL"))
    ap.add_argument("--kinesis-endpoint", default=os.environ.get("AWS_ENDPOINT_URL_KINESIS"))
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--definitions", default=str(HERE.parent / "statemachines"))
    ap.add_argument("--env-file")
    args = ap.parse_args()
    result = up(args) if args.action == "up" else down(args)
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
