#!/usr/bin/env python3
"""infra/template.yaml deployed into moto's CloudFormation, then `sshwarden
run` against what it created; run by `scripts/check-infra --moto`.

1. A VPC, a subnet and an instance to protect (moto EC2).
2. CreateStack with the whole template. moto's CloudFormation skips the
   types it does not implement (AWS::Logs::SubscriptionFilter,
   AWS::ApplicationAutoScaling::*) with a warning; the test fails if any
   other resource is missing, and creates the subscription filter through the
   Logs API with the template's own properties.
3. Checks what was created: stream shards, the lease table's key, the fleet
   stage's stream of partials and lease table, the state
   machines (definition = the ASL file with the stack's group id and topic
   ARN), the quarantine group, the task definition (health check, stop
   timeout below the drain time, environment), the service.
4. Runs the built `sshwarden run` with exactly the task definition's
   environment (metrics on a loopback port instead of 0.0.0.0), checks
   `sshwarden health` before and after start and `health --ready`, sends six
   failed-password lines and an accepted login through the log group, and waits for the quarantine
   state machine (from the stack) to isolate the instance.
   The worker runs the fleet stage (SSHWARDEN_FLEET_STREAM from the task
   definition): it writes partials to the stack's stream of partials and
   holds leases in the stack's FleetLeaseTable (no table of its own).
5. Stops the worker by PID (SIGTERM: exit 0, leases released, log lines in
   the shard span); runs `sshwarden run --sink stdout` over the same stream
   with a lease table of its own and checks the same command (same id) comes
   out on stdout; deletes the stack and what it made by hand.
6. Deploys the template again with FleetStage=disabled: no stream of
   partials, no fleet lease table, no permission on them, and an empty
   SSHWARDEN_FLEET_STREAM (the worker then runs no fleet stage).

Usage: infra_moto_test.py --bin PATH [--moto URL] [--template FILE] [--keep]
Last line: `infra-moto: N passed, M failed`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

import boto3

sys.dont_write_bytecode = True
sys.path.insert(0, str(Path(__file__).resolve().parent))
from e2e_remediation_test import Worker, free_port, in_one_window, now_ms, syslog_line, wait_for  # noqa: E402
from infra_check import PLACEHOLDERS, load_cfn  # noqa: E402
from statemachine_test import CONFIG, RUN, CheckFailed, check  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
STACK = f"sshwarden-infra-{RUN}".replace("_", "-")
ATTACKER = "203.0.113.66"
# What moto 5.2's CloudFormation does not implement (it skips them).
NOT_ON_MOTO = {
    "AWS::Logs::SubscriptionFilter",
    "AWS::Logs::MetricFilter",
    "AWS::CloudWatch::Alarm",
    "AWS::SNS::TopicPolicy",
    "AWS::ApplicationAutoScaling::ScalableTarget",
    "AWS::ApplicationAutoScaling::ScalingPolicy",
}


class Test:
    def __init__(self, args: argparse.Namespace):
        self.args = args

        def client(service: str) -> Any:
            return boto3.client(service, endpoint_url=args.moto, aws_access_key_id="testing",
                                aws_secret_access_key="testing", config=CONFIG)

        self.cfn, self.ec2, self.logs = client("cloudformation"), client("ec2"), client("logs")
        self.kinesis, self.ddb, self.sfn = client("kinesis"), client("dynamodb"), client("stepfunctions")
        self.ecs, self.iam, self.cw = client("ecs"), client("iam"), client("cloudwatch")
        self.template_path = Path(args.template)
        self.template = load_cfn(self.template_path)
        self.cleanup: list[Callable[[], Any]] = []
        self.workdir = Path(tempfile.mkdtemp(prefix="sshwarden-infra-"))
        self.worker: Worker | None = None
        self.out: dict[str, str] = {}
        self.phys: dict[str, str] = {}

    # ------------------------------------------------------------ steps

    def world(self) -> str:
        vpc = self.ec2.create_vpc(CidrBlock="10.78.0.0/16")["Vpc"]["VpcId"]
        self.cleanup.append(lambda: self.ec2.delete_vpc(VpcId=vpc))
        subnet = self.ec2.create_subnet(VpcId=vpc, CidrBlock="10.78.1.0/24")["Subnet"]["SubnetId"]
        self.cleanup.append(lambda: self.ec2.delete_subnet(SubnetId=subnet))
        web = self.ec2.create_security_group(GroupName=f"{STACK}-web", Description="web", VpcId=vpc)["GroupId"]
        self.cleanup.append(lambda: self.ec2.delete_security_group(GroupId=web))
        inst = self.ec2.run_instances(
            ImageId="ami-12c6146b", MinCount=1, MaxCount=1, InstanceType="t3.micro",
            NetworkInterfaces=[{"DeviceIndex": 0, "SubnetId": subnet, "Groups": [web]}],
        )["Instances"][0]
        self.instance = inst["InstanceId"]
        self.cleanup.append(lambda: self.ec2.terminate_instances(InstanceIds=[self.instance]))
        self.vpc, self.subnet, self.web = vpc, subnet, web
        return f"{vpc}, {subnet}, instance {self.instance} in group {web}"

    def deploy(self) -> str:
        params = {
            "VpcId": self.vpc,
            "SubnetIds": self.subnet,
            "Image": "sshwarden:moto-test",
            "SshdLogGroupName": f"/{STACK}/sshd",
            "ShardCount": "2",
        }
        self.cfn.create_stack(
            StackName=STACK, TemplateBody=self.template_path.read_text(), Capabilities=["CAPABILITY_IAM"],
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        )
        self.cleanup.append(self.delete_stack)
        stack = wait_for("stack creation", lambda: self.settled(), timeout=60)
        check(stack["StackStatus"] == "CREATE_COMPLETE", f"stack {stack['StackStatus']}: {stack.get('StackStatusReason')}")
        self.out = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        self.params = params
        return f"{STACK} CREATE_COMPLETE, {len(self.out)} outputs"

    def settled(self) -> dict | None:
        s = self.cfn.describe_stacks(StackName=STACK)["Stacks"][0]
        return None if s["StackStatus"].endswith("_IN_PROGRESS") else s

    def resources(self) -> str:
        created = {r["LogicalResourceId"]: r for r in self.cfn.list_stack_resources(StackName=STACK)["StackResourceSummaries"]}
        self.phys = {k: r.get("PhysicalResourceId", "") for k, r in created.items()}
        # Resources whose condition is false with these parameters.
        off = {"AlertEmailSubscription", "PullImagePolicy", "QuarantineOptInPolicy", "OperationsEmailSubscription"}
        missing = {k: r["Type"] for k, r in self.template["Resources"].items() if k not in created and k not in off}
        unexpected = {k: t for k, t in missing.items() if t not in NOT_ON_MOTO}
        check(not unexpected, f"moto did not create {unexpected}")
        return f"{len(created)} created; skipped by moto (not implemented): {', '.join(sorted(missing))}"

    def outputs(self) -> str:
        want = {"StreamName", "StreamArn", "LeaseTableName", "FleetStreamName", "FleetLeaseTableName", "BlastRadiusTableName", "AlertTopicArn", "QuarantineGroupId",
                "QuarantineStateMachineArn", "ReleaseStateMachineArn", "BlockStateMachineArn", "BlocksTableName",
                "ClusterName", "WorkerLogGroupName",
                "InstanceLogPolicyArn", "ProtectSshwardenTagsPolicyArn", "OperationsTopicArn",
                "TestSendFailedLogins", "TestWatchWorkers", "TestListExecutions", "TestNotifyOnly", "TestRelease",
                "TestLag"}
        check(want <= set(self.out), f"outputs lack {sorted(want - set(self.out))}")
        leftover = [k for k, v in self.out.items() if "${" in v]
        check(not leftover, f"outputs with an unsubstituted ${{...}}: {leftover}")
        check(self.instance not in self.out["TestSendFailedLogins"] and self.params["SshdLogGroupName"] in self.out["TestSendFailedLogins"],
              "TestSendFailedLogins names the log group")
        return "every output present, no ${...} left"

    def stream_and_table(self) -> str:
        s = self.kinesis.describe_stream(StreamName=self.out["StreamName"])["StreamDescription"]
        check(len(s["Shards"]) == 2, f"{len(s['Shards'])} shards, want 2 (ShardCount)")
        t = self.ddb.describe_table(TableName=self.out["LeaseTableName"])["Table"]
        check(t["KeySchema"] == [{"AttributeName": "leaseKey", "KeyType": "HASH"}], f"lease table key {t['KeySchema']}")
        b = self.ddb.describe_table(TableName=self.out["BlastRadiusTableName"])["Table"]
        check(b["KeySchema"] == [{"AttributeName": "periodKey", "KeyType": "HASH"}], f"blast-radius table key {b['KeySchema']}")
        k = self.ddb.describe_table(TableName=self.out["BlocksTableName"])["Table"]
        check(k["KeySchema"] == [{"AttributeName": "pk", "KeyType": "HASH"}], f"blocks table key {k['KeySchema']}")
        f = self.kinesis.describe_stream_summary(StreamName=self.out["FleetStreamName"])["StreamDescriptionSummary"]
        check(f["StreamStatus"] == "ACTIVE", f"stream of partials {f['StreamStatus']}")
        check(f.get("EncryptionType") == s.get("EncryptionType"),
              f"stream of partials encrypted {f.get('EncryptionType')}, the log stream {s.get('EncryptionType')}")
        check(self.out["FleetLeaseTableName"] == self.out["LeaseTableName"] + "-fleet",
              f"fleet lease table {self.out['FleetLeaseTableName']}: not the worker's default <lease table>-fleet")
        fl = self.ddb.describe_table(TableName=self.out["FleetLeaseTableName"])["Table"]
        check(fl["KeySchema"] == t["KeySchema"], f"fleet lease table key {fl['KeySchema']}")
        return (f"{self.out['StreamName']} (2 shards), {self.out['LeaseTableName']} (leaseKey), "
                f"{self.out['FleetStreamName']} ({f['OpenShardCount']} open shard(s); moto reports mode "
                f"{f.get('StreamModeDetails', {}).get('StreamMode', '?')} for the template's ON_DEMAND), "
                f"{self.out['FleetLeaseTableName']} (leaseKey), "
                f"{self.out['BlastRadiusTableName']} (periodKey), {self.out['BlocksTableName']} (pk)")

    def state_machines(self) -> str:
        """Both definitions as deployed: the ASL files with the stack's group id
        and topic ARN. moto (5.2, with execute_state_machine on) keeps machines
        created by CloudFormation in a backend its Step Functions API does not
        read, so where DescribeStateMachine cannot see them this step resolves
        the template's Fn::Sub itself and creates each machine under the same
        name (the same ARN as the stack's output) through the API."""
        topic, group = self.out["AlertTopicArn"], self.out["QuarantineGroupId"]
        check(group.startswith("sg-") and topic.startswith("arn:aws:sns:"), f"group {group}, topic {topic}")
        # What each ASL placeholder is in this stack (RequireOptInTag: the
        # template's default, not given to the deploy).
        values = {"QuarantineGroupId": group, "TopicArn": topic, "VpcId": self.vpc,
                  "UntrackedGroupId": self.phys.get("UntrackedSecurityGroup", ""), "RequireOptInTag": "false",
                  "BlocksTable": self.out["BlocksTableName"], "RuleFirst": "90", "RuleLast": "99",
                  "MaxBanSecs": "604800", "BlockProtocol": "-1"}
        check(set(PLACEHOLDERS) == set(values), "placeholders changed: update this test")
        check(values["UntrackedGroupId"].startswith("sg-"), f"UntrackedSecurityGroup: {values['UntrackedGroupId']!r}")
        notes = []
        for logical, name, key, role in (("QuarantineStateMachine", "quarantine", "QuarantineStateMachineArn", "QuarantineRole"),
                                         ("ReleaseStateMachine", "release", "ReleaseStateMachineArn", "ReleaseRole"),
                                         ("BlockStateMachine", "block", "BlockStateMachineArn", "BlockRole")):
            role_arn = self.iam.get_role(RoleName=self.phys[role])["Role"]["Arn"]
            want = (ROOT / "infra" / "statemachines" / f"{name}.asl.json").read_text()
            for ph, value in values.items():
                want = want.replace("${" + ph + "}", value)
            want = json.loads(want)
            props = self.template["Resources"][logical]["Properties"]
            check(props.get("StateMachineType") == "STANDARD", f"{logical}: StateMachineType {props.get('StateMachineType')}")
            try:
                deployed = self.sfn.describe_state_machine(stateMachineArn=self.out[key])["definition"]
                notes.append(f"{name}: read back from the stack")
            except self.sfn.exceptions.StateMachineDoesNotExist:
                deployed = props["DefinitionString"]["Fn::Sub"]
                for ph, value in values.items():
                    deployed = deployed.replace(PLACEHOLDERS[ph], value)
                check("${" not in deployed, f"{logical}: a ${{...}} the stack cannot resolve")
                arn = self.sfn.create_state_machine(name=self.out[key].rsplit(":", 1)[1], definition=deployed,
                                                    roleArn=role_arn, type="STANDARD")["stateMachineArn"]
                self.cleanup.append(lambda arn=arn: self.sfn.delete_state_machine(stateMachineArn=arn))
                check(arn == self.out[key], f"{arn} is not the stack's {self.out[key]}")
                notes.append(f"{name}: Fn::Sub resolved here (moto hides CloudFormation's machines from the API)")
            check(json.loads(deployed) == want,
                  f"{name}: the deployed definition is not the ASL file with the stack's group and topic")
        return "definitions = the ASL files with the stack's group id, topic ARN and blocks table; " + "; ".join(notes)

    def quarantine_group(self) -> str:
        g = self.ec2.describe_security_groups(GroupIds=[self.out["QuarantineGroupId"]])["SecurityGroups"][0]
        check(g["VpcId"] == self.vpc, f"quarantine group in {g['VpcId']}")
        check(not g["IpPermissions"], f"quarantine group ingress {g['IpPermissions']}")
        return f"{g['GroupId']} in {self.vpc}, no ingress (egress: see infra/README.md, moto keeps defaults)"

    def task_definition(self) -> str:
        svc = self.ecs.describe_services(cluster=self.out["ClusterName"], services=[self.phys["Service"]])["services"]
        check(len(svc) == 1, f"service {self.phys['Service']}: {svc}")
        td = self.ecs.describe_task_definition(taskDefinition=svc[0]["taskDefinition"])["taskDefinition"]
        # moto's CloudFormation keeps only the family, containers, volumes and
        # memory of a task definition: the launch settings are read from the template.
        props = self.template["Resources"]["TaskDefinition"]["Properties"]
        check(props["RequiresCompatibilities"] == ["FARGATE"] and props["NetworkMode"] == "awsvpc", "Fargate, awsvpc")
        (c,) = td["containerDefinitions"]
        hc = c.get("healthCheck", {})
        check(hc.get("command") == ["CMD", "/usr/local/bin/sshwarden", "health"], f"health check {hc}")
        self.env = {e["name"]: e["value"] for e in c.get("environment", [])}
        shutdown = int(self.env.get("SSHWARDEN_SHUTDOWN_SECS", "0"))
        check(0 < shutdown < int(c.get("stopTimeout", 0)), f"SSHWARDEN_SHUTDOWN_SECS {shutdown} vs stopTimeout {c.get('stopTimeout')}")
        check(c.get("logConfiguration", {}).get("logDriver") == "awslogs", "awslogs driver")
        check(self.env.get("SSHWARDEN_STREAM") == self.out["StreamName"], "SSHWARDEN_STREAM is the stack's stream")
        check(self.env.get("SSHWARDEN_LEASE_TABLE") == self.out["LeaseTableName"], "SSHWARDEN_LEASE_TABLE")
        check(self.env.get("SSHWARDEN_FLEET_STREAM") == self.out["FleetStreamName"], "SSHWARDEN_FLEET_STREAM is the stack's")
        check("SSHWARDEN_FLEET_LEASE_TABLE" not in self.env, "SSHWARDEN_FLEET_LEASE_TABLE: the default name is the stack's")
        role = self.phys["TaskRole"]
        policies = json.dumps([self.iam.get_role_policy(RoleName=role, PolicyName=n)["PolicyDocument"]
                               for n in self.iam.list_role_policies(RoleName=role)["PolicyNames"]])
        fleet_arn = self.kinesis.describe_stream_summary(StreamName=self.out["FleetStreamName"])["StreamDescriptionSummary"]["StreamARN"]
        check(fleet_arn in policies and "kinesis:PutRecords" in policies and f"table/{self.out['FleetLeaseTableName']}" in policies,
              "the worker role does not name the stream of partials (PutRecords) and its lease table")
        check(self.env.get("SSHWARDEN_BLAST_RADIUS_TABLE") == self.out["BlastRadiusTableName"], "SSHWARDEN_BLAST_RADIUS_TABLE")
        check(self.env.get("SSHWARDEN_STATE_MACHINE_ARN") == self.out["QuarantineStateMachineArn"], "SSHWARDEN_STATE_MACHINE_ARN")
        check(self.env.get("SSHWARDEN_BLOCK_STATE_MACHINE_ARN") == self.out["BlockStateMachineArn"], "SSHWARDEN_BLOCK_STATE_MACHINE_ARN")
        check(self.env.get("SSHWARDEN_BLOCKS_TABLE") == self.out["BlocksTableName"], "SSHWARDEN_BLOCKS_TABLE")
        dockerfile = (ROOT / "Dockerfile").read_text()
        check("/usr/local/bin/sshwarden" in dockerfile, "the Dockerfile installs /usr/local/bin/sshwarden")
        return f"{td['family']}: health check `sshwarden health`, stopTimeout {c.get('stopTimeout')} > drain {shutdown} s, {len(self.env)} SSHWARDEN_* settings"

    def alarms(self) -> str:
        """The template's metric filters and alarms, through the Logs and
        CloudWatch APIs (moto's CloudFormation skips both types), with the
        template's properties: botocore validates every field against the
        service model, and each alarm must notify the operations topic."""
        params = {k: str(v.get("Default", "")) for k, v in self.template["Parameters"].items()} | self.params
        refs = {"OperationsTopic": self.out["OperationsTopicArn"], "LogStream": self.out["StreamName"],
                "PartialsStream": self.out["FleetStreamName"], "FleetLeaseTable": self.out["FleetLeaseTableName"],
                "QuarantineStateMachine": self.out["QuarantineStateMachineArn"],
                "BlockStateMachine": self.out["BlockStateMachineArn"],
                "ReleaseStateMachine": self.out["ReleaseStateMachineArn"], "LeaseTable": self.out["LeaseTableName"],
                "BlastRadiusTable": self.out["BlastRadiusTableName"], "WorkerLogGroup": self.out["WorkerLogGroupName"],
                "AWS::StackName": STACK} | params

        def resolve(v: Any) -> Any:
            if isinstance(v, dict) and set(v) == {"Ref"}:
                return refs[v["Ref"]]
            if isinstance(v, dict) and set(v) == {"Fn::If"}:  # this stack has every condition it tests on
                cond, yes, no = v["Fn::If"]
                check(cond == "FleetStageOn", f"a condition this test does not know: {cond}")
                return resolve(yes)
            if isinstance(v, dict) and set(v) == {"Fn::Sub"}:
                return re.sub(r"\$\{([^}]+)\}", lambda m: refs[m.group(1)], v["Fn::Sub"])
            if isinstance(v, dict):
                return {k: resolve(x) for k, x in v.items()}
            if isinstance(v, list):
                return [resolve(x) for x in v]
            return v

        names = []
        for logical, res in self.template["Resources"].items():
            if res["Type"] == "AWS::Logs::MetricFilter":
                p = resolve(res["Properties"])
                t = [{"metricName": m["MetricName"], "metricNamespace": m["MetricNamespace"], "metricValue": m["MetricValue"],
                      "defaultValue": float(m["DefaultValue"]), "unit": m["Unit"]} for m in p["MetricTransformations"]]
                self.logs.put_metric_filter(logGroupName=p["LogGroupName"], filterName=p["FilterName"],
                                            filterPattern=p["FilterPattern"], metricTransformations=t)
            elif res["Type"] == "AWS::CloudWatch::Alarm":
                p = resolve(res["Properties"])
                p["Threshold"] = float(p["Threshold"])
                self.cw.put_metric_alarm(**p)
                names.append(p["AlarmName"])
        self.cleanup.append(lambda: self.cw.delete_alarms(AlarmNames=names))
        got = self.cw.describe_alarms(AlarmNames=names)["MetricAlarms"]
        check(len(got) == len(names) >= 8, f"{len(got)} alarms of {names}")
        for a in got:
            check(a["AlarmActions"] == [self.out["OperationsTopicArn"]], f"{a['AlarmName']}: actions {a['AlarmActions']}")
        dims = {d["Value"] for a in got for m in a.get("Metrics", []) if "MetricStat" in m
                for d in m["MetricStat"]["Metric"].get("Dimensions", [])} | \
               {d["Value"] for a in got for d in a.get("Dimensions", [])}
        for watched in ("FleetStreamName", "FleetLeaseTableName", "LeaseTableName", "StreamName"):
            check(self.out[watched] in dims, f"no alarm watches {self.out[watched]}")
        filters = self.logs.describe_metric_filters(logGroupName=self.out["WorkerLogGroupName"])["metricFilters"]
        return (f"{len(names)} alarms to the operations topic (the streams' lag and the lease tables' throttling, "
                f"the fleet stage's included), {len(filters)} metric filters on the worker log group")

    def subscription(self) -> str:
        """The template's SubscriptionFilter, through the Logs API (moto's
        CloudFormation skips the type), with the template's properties."""
        props = self.template["Resources"]["SubscriptionFilter"]["Properties"]
        role_arn = self.iam.get_role(RoleName=self.phys["SubscriptionRole"])["Role"]["Arn"]
        group = self.params["SshdLogGroupName"]
        self.logs.create_log_stream(logGroupName=group, logStreamName=self.instance)
        self.logs.put_subscription_filter(
            logGroupName=group, filterName=f"{STACK}-to-kinesis", filterPattern="",
            destinationArn=self.out["StreamArn"], roleArn=role_arn, distribution=props["Distribution"],
        )
        check(props["Distribution"] == "ByLogStream", f"distribution {props['Distribution']}")
        return f"{group} -> {self.out['StreamName']} ({props['Distribution']}, role {role_arn})"

    def health(self, *extra: str) -> subprocess.CompletedProcess:
        return subprocess.run([self.args.bin, "health", *extra], env=self.worker_env, capture_output=True,
                              text=True, timeout=30, stdin=subprocess.DEVNULL)

    def start_worker(self) -> str:
        port = free_port()
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SSHWARDEN_"))}
        env.update(self.env)
        env.update({
            # The container listens on 0.0.0.0 for scraping; tests stay on loopback.
            "SSHWARDEN_METRICS_ADDR": f"127.0.0.1:{port}",
            "SSHWARDEN_WORKER_ID": f"{STACK}-w1",
            "SSHWARDEN_IDLE_POLL_MS": "200",
            "AWS_ENDPOINT_URL": self.args.moto,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1",
            "AWS_EC2_METADATA_DISABLED": "true",
        })
        self.worker_env = env
        before = self.health()
        check(before.returncode == 1 and "cannot connect" in before.stderr,
              f"`sshwarden health` with no worker: exit {before.returncode}, {before.stderr.strip()!r}")
        self.worker = Worker("worker", [self.args.bin, "run"], env, self.workdir, port)
        self.worker.start()
        wait_for("`sshwarden health` exit 0", lambda: self.health().returncode == 0 or not self.worker.alive(), timeout=30)
        check(self.worker.alive(), f"the worker exited:\n{self.worker.tail()}")
        ready = wait_for("`sshwarden health --ready` exit 0",
                         lambda: self.health("--ready").returncode == 0 or not self.worker.alive(), timeout=60)
        check(self.worker.alive() and ready, f"the worker exited:\n{self.worker.tail()}")
        m = self.worker.metrics()
        check(self.worker.metric_sum("sshwarden_leases_held", m) >= 1, "leases held")
        check(self.worker.metric_sum("sshwarden_sink_up", m) == 1, "sink up")
        # The fleet stage's readers hold the stream of partials' leases in
        # the stack's table: the default name is the stack's.
        fleet = wait_for(f"leases in {self.out['FleetLeaseTableName']}",
                         lambda: self.ddb.scan(TableName=self.out["FleetLeaseTableName"])["Items"] or None, timeout=30)
        tables = self.ddb.list_tables()["TableNames"]
        check(all(not n.startswith(STACK) or n in self.out.values() for n in tables),
              f"the worker made a table of its own: {[n for n in tables if n.startswith(STACK)]}")
        return (f"pid {self.worker.pid}, env from the task definition; health 1 before start, 0 after; --ready 0; "
                f"{len(fleet)} lease(s) of the stream of partials in {self.out['FleetLeaseTableName']}")

    def attack(self) -> str:
        group = self.params["SshdLogGroupName"]
        window = int(self.env.get("SSHWARDEN_WINDOW_SECS", "60")) * 1000
        t0 = in_one_window(window, 6 * 300, back_ms=3000)
        host = "ip-10-78-1-9"
        # The default (graduated) policy quarantines on evidence of
        # compromise: failures, then a login accepted from the same address.
        events = [{"timestamp": t0 + i * 300,
                   "message": syslog_line(t0 + i * 300, host, 5100 + i, f"Failed password for root from {ATTACKER} port {42000 + i} ssh2")}
                  for i in range(5)]
        events.append({"timestamp": t0 + 5 * 300,
                       "message": syslog_line(t0 + 5 * 300, host, 5105, f"Accepted password for root from {ATTACKER} port 42005 ssh2")})
        self.logs.put_log_events(logGroupName=group, logStreamName=self.instance, logEvents=events)
        return f"5 failed passwords, then an accepted login, from {ATTACKER} on log stream {self.instance}"

    def quarantined(self) -> str:
        arn = self.out["QuarantineStateMachineArn"]

        def finished() -> dict | None:
            for e in self.sfn.list_executions(stateMachineArn=arn)["executions"]:
                d = self.sfn.describe_execution(executionArn=e["executionArn"])
                if json.loads(d["input"]).get("instance_id") == self.instance and d["status"] != "RUNNING":
                    return d
            return None

        d = wait_for("a finished quarantine execution for the instance", finished, timeout=90)
        command = json.loads(d["input"])
        check(command.get("action") == "quarantine" and command.get("version") == 1, f"command {command}")
        self.command_id = command["id"]
        check(d["status"] == "SUCCEEDED", f"execution {d['status']}: {d.get('error')} {d.get('cause')}")
        enis = self.ec2.describe_instances(InstanceIds=[self.instance])["Reservations"][0]["Instances"][0]["NetworkInterfaces"]
        groups = {g["GroupId"] for g in enis[0]["Groups"]}
        check(groups == {self.out["QuarantineGroupId"]}, f"interface groups {groups}")
        # The fleet-wide limit counted it in the stack's table (the worker
        # would create `<lease table>-blast-radius` if the setting were lost).
        slots = self.ddb.scan(TableName=self.out["BlastRadiusTableName"], ConsistentRead=True)["Items"]
        ids = {i for item in slots for i in item.get("ids", {}).get("SS", [])}
        check(command["id"] in ids, f"the quarantine took no slot in {self.out['BlastRadiusTableName']}: {slots}")
        # The accepted login makes the shard send its partial at once (docs/fleet.md).
        assert self.worker is not None
        written = wait_for("partials written to the stack's stream of partials",
                           lambda: self.worker.metric_sum("sshwarden_partials_written_total") or None, timeout=30)
        return (f"command {command['id']} ({command['rule']}) -> {d['status']}; the interface is in "
                f"{self.out['QuarantineGroupId']} alone; one fleet-wide blast-radius slot taken; "
                f"{written:.0f} partial(s) written to {self.out['FleetStreamName']}")

    def drain(self) -> str:
        assert self.worker is not None
        code = self.worker.stop(grace=40)
        check(code == 0, f"worker exit {code} after SIGTERM:\n{self.worker.tail()}")
        spans = [e for e in self.worker.logs() if e.get("span", {}).get("name") == "shard"]
        check(spans and all(e["span"].get("shard") for e in spans), "JSON log lines carry the shard span")
        items = self.ddb.scan(TableName=self.out["LeaseTableName"])["Items"]
        owners = [i.get("leaseOwner", {}).get("S") for i in items]
        check(len(items) == 2 and not any(owners), f"leases after drain: {owners}")
        fleet = self.ddb.scan(TableName=self.out["FleetLeaseTableName"])["Items"]
        fleet_owners = [i.get("leaseOwner", {}).get("S") for i in fleet]
        check(fleet and not any(fleet_owners), f"leases of the stream of partials after drain: {fleet_owners}")
        return (f"exit 0; {len(spans)} log lines in a shard span; both leases and the {len(fleet)} of the "
                "stream of partials released")

    def dry_run(self) -> str:
        """`--sink stdout` on the same stream from TRIM_HORIZON with a lease
        table of its own (created by the worker): the same command, same id,
        on stdout."""
        table = f"{STACK}-dry-run"
        self.cleanup.append(lambda: self.ddb.delete_table(TableName=table))
        # Its fleet stage's leases: the default name, a table of its own too.
        self.cleanup.append(lambda: self.ddb.delete_table(TableName=f"{table}-fleet"))
        env = dict(self.worker_env, SSHWARDEN_SINK="stdout", SSHWARDEN_LEASE_TABLE=table,
                   SSHWARDEN_WORKER_ID=f"{STACK}-dry", SSHWARDEN_METRICS_ADDR=f"127.0.0.1:{free_port()}")
        self.worker = Worker("dry-run", [self.args.bin, "run"], env, self.workdir, None)
        self.worker.start()

        def printed() -> list[dict] | None:
            check(self.worker is not None and self.worker.alive(), "the stdout worker exited")
            lines = self.worker.out_path.read_text().splitlines()
            commands = [json.loads(line) for line in lines if line.strip()]
            return [c for c in commands if c.get("instance_id") == self.instance] or None

        (command,) = wait_for("a command on stdout", printed, timeout=60)
        check(command["id"] == self.command_id, f"stdout command {command['id']} vs execution {self.command_id}")
        code = self.worker.stop(grace=40)
        check(code == 0, f"stdout worker exit {code}")
        return f"--sink stdout printed {command['id']} ({command['action']}, {command['rule']}): the execution's id"

    def delete_stack(self) -> None:
        self.cfn.delete_stack(StackName=STACK)

    def deleted(self) -> str:
        self.cleanup.remove(self.delete_stack)
        self.delete_stack()
        wait_for("stack deletion", lambda: self.gone(), timeout=60)
        streams = self.kinesis.list_streams()["StreamNames"]
        check(self.out["StreamName"] not in streams, "the stream is gone with the stack")
        check(self.out["FleetStreamName"] not in streams, "the stream of partials is gone with the stack")
        return f"{STACK} deleted"

    def fleet_disabled(self) -> str:
        name = f"{STACK}-nofleet"
        params = dict(self.params, FleetStage="disabled", SshdLogGroupName=f"/{name}/sshd")
        self.cfn.create_stack(
            StackName=name, TemplateBody=self.template_path.read_text(), Capabilities=["CAPABILITY_IAM"],
            Parameters=[{"ParameterKey": k, "ParameterValue": v} for k, v in params.items()],
        )
        self.cleanup.append(lambda: self.cfn.delete_stack(StackName=name))

        def settled() -> dict | None:
            s = self.cfn.describe_stacks(StackName=name)["Stacks"][0]
            return None if s["StackStatus"].endswith("_IN_PROGRESS") else s

        stack = wait_for("stack creation (FleetStage=disabled)", settled, timeout=60)
        check(stack["StackStatus"] == "CREATE_COMPLETE", f"stack {stack['StackStatus']}: {stack.get('StackStatusReason')}")
        out = {o["OutputKey"]: o["OutputValue"] for o in stack.get("Outputs", [])}
        check("FleetStreamName" not in out and "FleetLeaseTableName" not in out, f"fleet outputs: {sorted(out)}")
        created = {r["LogicalResourceId"]: r for r in self.cfn.list_stack_resources(StackName=name)["StackResourceSummaries"]}
        check("PartialsStream" not in created and "FleetLeaseTable" not in created, "fleet resources created while disabled")
        check(f"{name}-partials" not in self.kinesis.list_streams()["StreamNames"], "a stream of partials exists")
        check(f"{name}-leases-fleet" not in self.ddb.list_tables()["TableNames"], "a fleet lease table exists")
        svc = self.ecs.describe_services(cluster=out["ClusterName"], services=[created["Service"]["PhysicalResourceId"]])["services"]
        td = self.ecs.describe_task_definition(taskDefinition=svc[0]["taskDefinition"])["taskDefinition"]
        env = {e["name"]: e["value"] for e in td["containerDefinitions"][0].get("environment", [])}
        check(env.get("SSHWARDEN_FLEET_STREAM") == "", f"SSHWARDEN_FLEET_STREAM {env.get('SSHWARDEN_FLEET_STREAM')!r}, want empty")
        role = created["TaskRole"]["PhysicalResourceId"]
        policies = [self.iam.get_role_policy(RoleName=role, PolicyName=n)["PolicyDocument"]
                    for n in self.iam.list_role_policies(RoleName=role)["PolicyNames"]]
        text = json.dumps(policies)
        check(policies and "partials" not in text and "leases-fleet" not in text and "PutRecords" not in text,
              f"the worker role names fleet resources while disabled: {text[:400]}")
        self.cfn.delete_stack(StackName=name)
        return (f"{name}: no stream of partials, no fleet lease table, no fleet output; SSHWARDEN_FLEET_STREAM empty; "
                f"the worker role's {len(policies)} policy(ies) name neither")

    def gone(self) -> bool:
        try:
            s = self.cfn.describe_stacks(StackName=STACK)["Stacks"][0]
        except self.cfn.exceptions.ClientError:
            return True
        return s["StackStatus"] == "DELETE_COMPLETE"


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--moto", default="http://127.0.0.1:5000")
    ap.add_argument("--template", default=str(ROOT / "infra" / "template.yaml"))
    ap.add_argument("--keep", action="store_true", help="leave the stack and the world in place")
    args = ap.parse_args()
    t = Test(args)
    passed = failed = 0
    steps = [t.world, t.deploy, t.resources, t.outputs, t.stream_and_table, t.state_machines, t.quarantine_group,
             t.task_definition, t.alarms, t.subscription, t.start_worker, t.attack, t.quarantined, t.drain, t.dry_run,
             t.deleted, t.fleet_disabled]
    try:
        for step in steps:
            started = time.monotonic()
            try:
                note = step()
            except CheckFailed as e:
                failed += 1
                print(f"FAIL {step.__name__}: {e}", flush=True)
                break
            except Exception as e:  # noqa: BLE001 (an emulator error is a failure, reported)
                failed += 1
                print(f"FAIL {step.__name__}: {type(e).__name__}: {e}", flush=True)
                if "Could not connect" in str(e):
                    print(f"  no moto at {args.moto}: start it with scripts/emulators up moto", flush=True)
                else:
                    traceback.print_exc()
                break
            passed += 1
            print(f"ok   {step.__name__} ({time.monotonic() - started:.1f} s): {note}", flush=True)
    finally:
        if t.worker is not None and t.worker.alive():
            t.worker.stop(grace=10)
        if failed and t.worker is not None:
            print(f"--- worker stderr (last lines), logs in {t.workdir}:\n{t.worker.tail()}", flush=True)
        if not args.keep:
            for fn in reversed(t.cleanup):
                try:
                    fn()
                except Exception as e:  # noqa: BLE001 (cleanup is best effort, reported)
                    print(f"  cleanup: {type(e).__name__}: {e}", flush=True)
    print(f"infra-moto: {passed} passed, {failed} failed")
    return 0 if failed == 0 and passed == len(steps) else 1


if __name__ == "__main__":
    sys.exit(main())
