#!/usr/bin/env python3
"""Static checks of infra/ that no linter does; run by `scripts/check-infra`.

    infra_check.py write      regenerate the state machine definitions in
                              infra/template.yaml from infra/statemachines/*.asl.json
    infra_check.py check      fail when the template and the ASL files diverge, when
                              the quarantine group differs from infra/quarantine-sg.yaml,
                              when the other infra files do not parse, or when a
                              hardening of docs/threat-model.md is missing: a Task
                              without backoff/jitter retries, a machine role beyond the
                              protected VPC or sshwarden:* tags, the instances' log
                              policy, the sshwarden:* tag guard, the journald unit's
                              matches, the alarms; the fleet stage's stream and lease
                              table, and a worker role whose Kinesis and DynamoDB
                              statements name only the stack's streams and tables

The ASL files are the single source of the definitions. The template embeds
each one, minified, as `DefinitionString: !Sub |-` between BEGIN/END marker
comments, with the ASL placeholders mapped to template expressions
(PLACEHOLDERS). Fn::Sub rather than DefinitionSubstitutions: moto's
CloudFormation ignores DefinitionSubstitutions (and `Definition`), and its
Fn::Sub with a variable map runs Python's string.Template, which turns the
ASL's `$$.` context paths into `$.`; plain Fn::Sub with resource references
works on both AWS and moto.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import yaml

sys.dont_write_bytecode = True

ROOT = Path(__file__).resolve().parents[2]
TEMPLATE = ROOT / "infra" / "template.yaml"
QUARANTINE_SG = ROOT / "infra" / "quarantine-sg.yaml"
STATE_MACHINES = ROOT / "infra" / "statemachines"

# ASL placeholder -> what the template substitutes (Fn::Sub syntax).
PLACEHOLDERS = {
    "QuarantineGroupId": "${QuarantineSecurityGroup.GroupId}",
    "UntrackedGroupId": "${UntrackedSecurityGroup.GroupId}",
    "VpcId": "${VpcId}",
    "RequireOptInTag": "${RequireOptInTag}",
    "TopicArn": "${AlertTopic}",
    "BlocksTable": "${BlocksTable}",
    "RuleFirst": "${BlockRuleFirst}",
    "RuleLast": "${BlockRuleLast}",
    "MaxBanSecs": "${BlockMaxBanSecs}",
    "BlockProtocol": "${BlockProtocol}",
}

BLOCK = re.compile(
    r"^(?P<indent>[ ]*)# BEGIN generated from infra/statemachines/(?P<file>[a-z0-9-]+\.asl\.json)"
    r"(?P<rest>[^\n]*)\n.*?^(?P=indent)# END generated[^\n]*\n",
    re.M | re.S,
)


class Failed(Exception):
    pass


def embedded(asl_file: Path) -> str:
    """The definition as the template carries it: minified, placeholders mapped."""
    text = asl_file.read_text()
    definition = json.loads(text)
    minified = json.dumps(definition, separators=(",", ":"), ensure_ascii=False)
    for name in sorted(set(re.findall(r"\$\{([^}]*)\}", minified))):
        if name not in PLACEHOLDERS:
            raise Failed(f"{asl_file.name}: placeholder ${{{name}}} has no template expression in PLACEHOLDERS")
        minified = minified.replace("${" + name + "}", PLACEHOLDERS[name])
    return minified


def generated(template_text: str) -> tuple[str, list[str]]:
    files: list[str] = []

    def block(m: re.Match[str]) -> str:
        indent, name = m.group("indent"), m.group("file")
        files.append(name)
        body = embedded(STATE_MACHINES / name)
        return (
            f"{indent}# BEGIN generated from infra/statemachines/{name}{m.group('rest')}\n"
            f"{indent}DefinitionString: !Sub |-\n"
            f"{indent}  {body}\n"
            f"{indent}# END generated\n"
        )

    return BLOCK.sub(block, template_text), files


class CfnLoader(yaml.SafeLoader):
    """YAML with CloudFormation's short forms (!Ref, !Sub, ...) as {"Fn::X": ...}."""


def _cfn_tag(loader: yaml.SafeLoader, suffix: str, node: yaml.Node) -> Any:
    name = "Ref" if suffix == "Ref" else f"Fn::{suffix}"
    if isinstance(node, yaml.ScalarNode):
        value: Any = loader.construct_scalar(node)
        if suffix == "GetAtt" and isinstance(value, str):
            value = value.split(".", 1)
    elif isinstance(node, yaml.SequenceNode):
        value = loader.construct_sequence(node, deep=True)
    else:
        value = loader.construct_mapping(node, deep=True)
    return {name: value}


CfnLoader.add_multi_constructor("!", _cfn_tag)


def load_cfn(path: Path) -> dict[str, Any]:
    return yaml.load(path.read_text(), Loader=CfnLoader)  # noqa: S506 (SafeLoader subclass)


def check_definitions(files: list[str]) -> None:
    """Semantic check on top of the text comparison: each embedded string,
    placeholders mapped back, is the ASL file's JSON."""
    template = load_cfn(TEMPLATE)
    found = {}
    for name, res in template["Resources"].items():
        if res["Type"] == "AWS::StepFunctions::StateMachine":
            sub = res["Properties"]["DefinitionString"]["Fn::Sub"]
            for placeholder, expr in PLACEHOLDERS.items():
                sub = sub.replace(expr, "${" + placeholder + "}")
            found[name] = json.loads(sub)
    wanted = {json.dumps(json.loads((STATE_MACHINES / f).read_text()), sort_keys=True) for f in files}
    have = {json.dumps(d, sort_keys=True) for d in found.values()}
    if wanted != have:
        raise Failed("the state machines in infra/template.yaml are not the ASL files'")
    on_disk = sorted(p.name for p in STATE_MACHINES.glob("*.asl.json"))
    if sorted(files) != on_disk:
        raise Failed(f"template embeds {sorted(files)}, infra/statemachines has {on_disk}")
    print(f"ok the template's {len(found)} state machines are infra/statemachines/*.asl.json")


# Every Task rides out a few seconds of throttling (EC2 RequestLimitExceeded,
# SNS Throttled: both arrive as States.TaskFailed) with exponential backoff, a
# cap and full jitter. asl-validator 4.0.0 (the newest) accepts any extra field
# in a retrier without checking it, so the values are checked here.
RETRIER_FIELDS = {"ErrorEquals", "IntervalSeconds", "MaxAttempts", "BackoffRate", "MaxDelaySeconds", "JitterStrategy", "Comment"}
MIN_ATTEMPTS = 4
MIN_WORST_CASE_WAIT_S = 10.0


def tasks(states: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every Task state, also inside Map and Parallel states."""
    found = []
    for name, state in states.items():
        where = f"{path}{name}"
        if state.get("Type") == "Task":
            found.append((where, state))
        for key in ("ItemProcessor", "Iterator"):
            if key in state:
                found += tasks(state[key]["States"], f"{where}/")
        for i, branch in enumerate(state.get("Branches", [])):
            found += tasks(branch["States"], f"{where}[{i}]/")
    return found


def retry_problem(retry: Any) -> str | None:
    """Why a Task's Retry is not enough, or None."""
    if not isinstance(retry, list) or not retry:
        return "no Retry"
    for r in retry:
        unknown = set(r) - RETRIER_FIELDS
        if unknown:
            return f"unknown retrier fields {sorted(unknown)}"
    broad = [r for r in retry if {"States.TaskFailed", "States.ALL"} & set(r.get("ErrorEquals", []))]
    if not broad:
        return "no retrier for States.TaskFailed (throttling arrives as a task failure)"
    r = broad[0]
    interval, attempts = r.get("IntervalSeconds", 1), r.get("MaxAttempts", 3)
    rate, cap, jitter = r.get("BackoffRate", 2.0), r.get("MaxDelaySeconds"), r.get("JitterStrategy", "NONE")
    if not (isinstance(interval, int) and interval >= 1):
        return f"IntervalSeconds {interval!r} is not a positive integer"
    if not (isinstance(attempts, int) and attempts >= MIN_ATTEMPTS):
        return f"MaxAttempts {attempts!r} < {MIN_ATTEMPTS}"
    if not (isinstance(rate, (int, float)) and rate > 1.0):
        return f"BackoffRate {rate!r} is no backoff"
    if not (isinstance(cap, int) and interval <= cap <= 31622400):
        return f"MaxDelaySeconds {cap!r} missing or out of range"
    if jitter != "FULL":
        return f"JitterStrategy {jitter!r}, want FULL"
    worst = sum(min(interval * rate**k, cap) for k in range(attempts))
    if worst < MIN_WORST_CASE_WAIT_S:
        return f"the retries wait at most {worst:.0f} s in all (< {MIN_WORST_CASE_WAIT_S:.0f} s)"
    return None


def check_retries() -> None:
    # The check must be able to fail.
    bad = {"T": {"Type": "Task", "Retry": [{"ErrorEquals": ["States.TaskFailed"], "IntervalSeconds": 1, "MaxAttempts": 2, "BackoffRate": 2.0}]}}
    if all(retry_problem(s.get("Retry")) is None for _, s in tasks(bad)):
        raise Failed("the retry check passed two tries without jitter")
    count = 0
    for path in sorted(STATE_MACHINES.glob("*.asl.json")):
        for where, state in tasks(json.loads(path.read_text())["States"]):
            problem = retry_problem(state.get("Retry"))
            if problem:
                raise Failed(f"{path.name}: Task {where}: {problem}")
            count += 1
    print(f"ok all {count} Tasks retry States.TaskFailed with backoff, MaxDelaySeconds and full jitter")


def statements(role: dict[str, Any]) -> list[dict[str, Any]]:
    """A role's statements; one under `!If [cond, statement, !Ref AWS::NoValue]`
    counts as present (the checks judge what the role may do when it is on)."""
    out = []
    for policy in role["Properties"].get("Policies", []):
        for st in policy["PolicyDocument"]["Statement"]:
            if isinstance(st, dict) and set(st) == {"Fn::If"}:
                out += [b for b in st["Fn::If"][1:] if b != {"Ref": "AWS::NoValue"}]
            else:
                out.append(st)
    return out


def actions(stmt: dict[str, Any]) -> set[str]:
    a = stmt.get("Action", [])
    return {a} if isinstance(a, str) else set(a)


def resources(stmt: dict[str, Any]) -> list[str]:
    r = stmt.get("Resource", [])
    return [json.dumps(x) for x in (r if isinstance(r, list) else [r])]


def check_roles() -> None:
    """Each state machine has a role of its own; group swaps only in the
    protected VPC (ec2:Vpc on interfaces and groups); tags only sshwarden:*."""
    res = load_cfn(TEMPLATE)["Resources"]
    q = res["QuarantineStateMachine"]["Properties"]["RoleArn"]
    r = res["ReleaseStateMachine"]["Properties"]["RoleArn"]
    if q == r:
        raise Failed(f"the quarantine and release machines share the role {q}")
    tag_actions = {"ec2:CreateTags", "ec2:DeleteTags"}
    wanted = {"QuarantineRole": {"ec2:CreateTags"}, "ReleaseRole": {"ec2:DeleteTags"}}
    for (machine, ref), role_name in zip((("quarantine", q), ("release", r)), wanted):
        if ref != {"Fn::GetAtt": [role_name, "Arn"]}:
            raise Failed(f"the {machine} machine's role is {ref}, want {role_name}")
        have_tags: set[str] = set()
        for st in statements(res[role_name]):
            if st.get("Effect") != "Allow":
                continue
            if any(x == '"*"' for x in resources(st)) and actions(st) - {"ec2:DescribeInstances", "ec2:DescribeTags", "ec2:DescribeSecurityGroups"}:
                raise Failed(f"{role_name} {st.get('Sid')}: {sorted(actions(st))} on *")
            if "ec2:ModifyNetworkInterfaceAttribute" in actions(st):
                scoped = [x for x in resources(st) if "network-interface/" in x or "security-group/" in x]
                vpc = st.get("Condition", {}).get("StringEquals", {}).get("ec2:Vpc")
                if scoped and (vpc is None or "${VpcId}" not in json.dumps(vpc)):
                    raise Failed(f"{role_name} {st.get('Sid')}: interfaces or groups without an ec2:Vpc condition on the VpcId")
            if actions(st) & tag_actions:
                have_tags |= actions(st) & tag_actions
                cond = st.get("Condition", {})
                if cond.get("ForAllValues:StringLike", {}).get("aws:TagKeys") != ["sshwarden:*"] or \
                        cond.get("Null", {}).get("aws:TagKeys") != "false":
                    raise Failed(f"{role_name} {st.get('Sid')}: tag writes not limited to present sshwarden:* keys")
        if have_tags != wanted[role_name]:
            raise Failed(f"{role_name} may {sorted(have_tags)}, want {sorted(wanted[role_name])}")
    print("ok QuarantineRole and ReleaseRole: one per machine, group swaps only with ec2:Vpc = VpcId, only sshwarden:* tags")
    check_block_role(res)


ACL_WRITES = {"ec2:CreateNetworkAclEntry", "ec2:ReplaceNetworkAclEntry", "ec2:DeleteNetworkAclEntry"}


def acl_write_problem(role_name: str, st: dict[str, Any]) -> str | None:
    """Why a statement that changes ACL entries is too broad, or None."""
    if not actions(st) & ACL_WRITES:
        return None
    if any("network-acl/" not in x for x in resources(st)):
        return f"{role_name} {st.get('Sid')}: ACL entry changes on {resources(st)}, want network-acl/* only"
    vpc = st.get("Condition", {}).get("StringEquals", {}).get("ec2:Vpc")
    if vpc is None or "${VpcId}" not in json.dumps(vpc):
        return f"{role_name} {st.get('Sid')}: ACL entry changes without an ec2:Vpc condition on the VpcId"
    return None


def check_block_role(res: dict[str, Any]) -> None:
    """The block machine has a role of its own that writes ACL entries only
    in the protected VPC and never deletes one; the workers may delete
    (their sweep) only there."""
    b = res["BlockStateMachine"]["Properties"]["RoleArn"]
    if b != {"Fn::GetAtt": ["BlockRole", "Arn"]}:
        raise Failed(f"the block machine's role is {b}, want BlockRole")
    # The check must be able to fail.
    loose = {"Sid": "Loose", "Effect": "Allow", "Action": "ec2:CreateNetworkAclEntry", "Resource": "*"}
    if acl_write_problem("test", loose) is None:
        raise Failed("the ACL write check passed CreateNetworkAclEntry on * without a condition")
    writes: set[str] = set()
    for st in statements(res["BlockRole"]):
        if st.get("Effect") != "Allow":
            continue
        if any(x == '"*"' for x in resources(st)) and actions(st) - {"ec2:DescribeInstances", "ec2:DescribeNetworkAcls"}:
            raise Failed(f"BlockRole {st.get('Sid')}: {sorted(actions(st))} on *")
        problem = acl_write_problem("BlockRole", st)
        if problem:
            raise Failed(problem)
        writes |= actions(st) & ACL_WRITES
    if writes != {"ec2:CreateNetworkAclEntry", "ec2:ReplaceNetworkAclEntry"}:
        raise Failed(f"BlockRole may {sorted(writes)}, want create and replace only")
    for st in statements(res["TaskRole"]):
        problem = acl_write_problem("TaskRole", st) if st.get("Effect") == "Allow" else None
        if problem:
            raise Failed(problem)
    print("ok BlockRole: the block machine's own, ACL entries created or replaced only with ec2:Vpc = VpcId, "
          "never deleted; the workers' sweep deletes only there")


# What the workers may touch in Kinesis and DynamoDB: the stack's own streams
# and tables, by reference (logical id -> what it is).
WORKER_STREAMS = {"LogStream": "the log stream", "PartialsStream": "the fleet stage's stream"}
WORKER_TABLES = {"LeaseTable", "FleetLeaseTable", "BlastRadiusTable", "BlocksTable"}
# Kinesis actions that write: only the stream of partials.
KINESIS_WRITES = {"kinesis:PutRecord", "kinesis:PutRecords"}


def data_statement_problem(st: dict[str, Any]) -> str | None:
    """Why a worker statement on Kinesis or DynamoDB reaches beyond the
    stack's own streams and tables, or None."""
    acts = actions(st)
    services = {a.split(":", 1)[0] for a in acts}
    if not services & {"kinesis", "dynamodb"}:
        return None
    sid = st.get("Sid")
    if any("*" in a for a in acts):
        return f"TaskRole {sid}: wildcard action in {sorted(acts)}"
    if len(services) != 1:
        return f"TaskRole {sid}: Kinesis or DynamoDB mixed with other services ({sorted(acts)})"
    refs = st.get("Resource", [])
    for r in refs if isinstance(refs, list) else [refs]:
        if services == {"kinesis"}:
            att = r.get("Fn::GetAtt") if isinstance(r, dict) else None
            sub = r.get("Fn::Sub") if isinstance(r, dict) else None
            m = re.fullmatch(r"\$\{(\w+)\.Arn\}/consumer/\*", sub) if isinstance(sub, str) else None
            stream = att[0] if att and att[1:] == ["Arn"] else (m.group(1) if m else None)
            if stream not in WORKER_STREAMS:
                return f"TaskRole {sid}: Kinesis on {json.dumps(r)}, want the stack's streams {sorted(WORKER_STREAMS)}"
            if acts & KINESIS_WRITES and (stream != "PartialsStream" or m):
                return f"TaskRole {sid}: writes to {stream}, the workers write only the stream of partials"
        else:
            att = r.get("Fn::GetAtt") if isinstance(r, dict) else None
            if not att or att[0] not in WORKER_TABLES or att[1:] != ["Arn"]:
                return f"TaskRole {sid}: DynamoDB on {json.dumps(r)}, want the stack's tables {sorted(WORKER_TABLES)}"
    return None


def check_fleet_stage() -> None:
    """The fleet stage (docs/fleet.md): its stream as the log stream (KMS,
    retention), on demand by default; its lease table as LeaseTable under the
    worker's default name; the task told the stream (empty when disabled);
    the worker role's Kinesis and DynamoDB statements name only the stack's
    streams and tables and write only the stream of partials."""
    t = load_cfn(TEMPLATE)
    res, params = t["Resources"], t["Parameters"]
    if params["FleetStage"]["Default"] != "enabled" or params["FleetStreamMode"]["Default"] != "ON_DEMAND":
        raise Failed("the fleet stage must be enabled and its stream on demand by default")
    on = t["Conditions"].get("FleetStageOn")
    if on != {"Fn::Equals": [{"Ref": "FleetStage"}, "enabled"]}:
        raise Failed(f"FleetStageOn is {on}")
    stream, logs = res["PartialsStream"], res["LogStream"]
    if stream["Type"] != "AWS::Kinesis::Stream" or stream.get("Condition") != "FleetStageOn":
        raise Failed("PartialsStream: a Kinesis stream under FleetStageOn")
    for key in ("StreamEncryption", "RetentionPeriodHours"):
        if stream["Properties"].get(key) != logs["Properties"][key]:
            raise Failed(f"PartialsStream: {key} {stream['Properties'].get(key)}, want the log stream's")
    if stream["Properties"]["StreamModeDetails"] != {"StreamMode": {"Ref": "FleetStreamMode"}}:
        raise Failed("PartialsStream: its mode is not FleetStreamMode")
    table, leases = res["FleetLeaseTable"], res["LeaseTable"]
    if table.get("Condition") != "FleetStageOn":
        raise Failed("FleetLeaseTable is not under FleetStageOn")
    same = {k: v for k, v in table["Properties"].items() if k != "TableName"}
    if same != {k: v for k, v in leases["Properties"].items() if k != "TableName"}:
        raise Failed("FleetLeaseTable differs from LeaseTable beyond its name")
    m = re.search(r'FLEET_LEASE_TABLE_SUFFIX: &str = "([^"]+)"', (CONSUMERS_SRC / "config" / "source.rs").read_text())
    if not m:
        raise Failed("no FLEET_LEASE_TABLE_SUFFIX in consumers/src/config/source.rs")
    want = {"Fn::Sub": leases["Properties"]["TableName"]["Fn::Sub"] + m.group(1)}
    if table["Properties"]["TableName"] != want:
        raise Failed(f"FleetLeaseTable is named {table['Properties']['TableName']}, want the worker's default {want}")
    (container,) = res["TaskDefinition"]["Properties"]["ContainerDefinitions"]
    env = {e["Name"]: e["Value"] for e in container["Environment"]}
    if env.get("SSHWARDEN_FLEET_STREAM") != {"Fn::If": ["FleetStageOn", {"Ref": "PartialsStream"}, ""]}:
        raise Failed(f"SSHWARDEN_FLEET_STREAM is {env.get('SSHWARDEN_FLEET_STREAM')}, want PartialsStream when FleetStageOn")
    if "SSHWARDEN_FLEET_LEASE_TABLE" in env:
        raise Failed("SSHWARDEN_FLEET_LEASE_TABLE set: FleetLeaseTable carries the default name")
    # The check must be able to fail.
    for loose in ({"Sid": "Loose", "Effect": "Allow", "Action": "kinesis:GetRecords", "Resource": "*"},
                  {"Sid": "Loose", "Effect": "Allow", "Action": "kinesis:PutRecords", "Resource": {"Fn::GetAtt": ["LogStream", "Arn"]}},
                  {"Sid": "Loose", "Effect": "Allow", "Action": "dynamodb:*", "Resource": {"Fn::GetAtt": ["LeaseTable", "Arn"]}},
                  {"Sid": "Loose", "Effect": "Allow", "Action": "dynamodb:Scan",
                   "Resource": {"Fn::Sub": "arn:${AWS::Partition}:dynamodb:${AWS::Region}:${AWS::AccountId}:table/*"}}):
        if data_statement_problem(loose) is None:
            raise Failed(f"the worker data check passed {loose}")
    named: dict[str, set[str]] = {}
    for st in statements(res["TaskRole"]):
        if st.get("Effect") != "Allow":
            continue
        problem = data_statement_problem(st)
        if problem:
            raise Failed(problem)
        r = st.get("Resource")
        if isinstance(r, dict) and "Fn::GetAtt" in r:
            named.setdefault(r["Fn::GetAtt"][0], set()).update(actions(st))
    want_fleet = {"kinesis:ListShards", "kinesis:DescribeStreamSummary", "kinesis:GetShardIterator",
                  "kinesis:GetRecords", "kinesis:PutRecords"}
    if named.get("PartialsStream") != want_fleet:
        raise Failed(f"TaskRole on PartialsStream: {sorted(named.get('PartialsStream', []))}, want {sorted(want_fleet)}")
    if named.get("FleetLeaseTable") != named.get("LeaseTable"):
        raise Failed("TaskRole: FleetLeaseTable's actions differ from LeaseTable's")
    print("ok the fleet stage: its stream (as the log stream's, on demand by default) and lease table "
          "(as LeaseTable, the worker's default name) under FleetStageOn; SSHWARDEN_FLEET_STREAM; the worker's "
          "Kinesis and DynamoDB statements name only the stack's streams and tables, and write only the partials")


JOURNAL_UNIT = ROOT / "infra" / "cloudwatch-agent" / "sshwarden-journal.service"
# Fields journald records itself (systemd.journal-fields(7), "trusted"
# fields): a client cannot set them. _COMM is trusted but a process chooses
# its own (prctl PR_SET_NAME), so it is not accepted here.
TRUSTED_MATCH_FIELDS = {"_SYSTEMD_UNIT", "_EXE", "_UID"}


def journal_groups(exec_start: str) -> list[list[tuple[str, str]]]:
    """The journalctl matches of the unit's ExecStart, as "+"-separated groups
    of (FIELD, value). Options that select entries otherwise are refused."""
    m = re.search(r"journalctl (.*?)(?: >>|'|$)", exec_start)
    if not m:
        raise Failed(f"{JOURNAL_UNIT.name}: no journalctl in ExecStart")
    groups: list[list[tuple[str, str]]] = [[]]
    for arg in m.group(1).split():
        if arg == "+":
            groups.append([])
        elif arg.startswith("-"):
            name = arg.split("=", 1)[0]
            if name in ("-t", "--identifier", "-u", "--unit", "--user-unit", "-g", "--grep", "-k", "--dmesg"):
                raise Failed(f"{JOURNAL_UNIT.name}: journalctl {name} selects entries by what a client may set")
        elif "=" in arg:
            field, value = arg.split("=", 1)
            groups[-1].append((field, value))
        else:
            raise Failed(f"{JOURNAL_UNIT.name}: unexpected journalctl argument {arg!r}")
    return groups


def journal_problem(exec_start: str) -> str | None:
    try:
        groups = journal_groups(exec_start)
    except Failed as e:
        return str(e)
    for g in groups:
        fields = {f for f, _ in g}
        if not g:
            return "an empty match group (it would match every entry)"
        if fields - TRUSTED_MATCH_FIELDS:
            return f"matches on {sorted(fields - TRUSTED_MATCH_FIELDS)}, not fields journald sets itself"
        if "_SYSTEMD_UNIT" not in fields and not ("_EXE" in fields and ("_UID", "0") in g):
            return f"group {g}: an _EXE match without _UID=0 (anyone can run the binary)"
    return None


def check_journal_unit() -> None:
    text = JOURNAL_UNIT.read_text()
    lines = [ln for ln in text.splitlines() if ln.startswith("ExecStart=")]
    if len(lines) != 1:
        raise Failed(f"{JOURNAL_UNIT.name}: {len(lines)} ExecStart lines, want 1")
    # The check must be able to fail: the old recipe, on the syslog identifier.
    old = "ExecStart=/bin/sh -c 'exec /usr/bin/journalctl --follow -t sshd -t sshd-session >> /x'"
    if journal_problem(old) is None or journal_problem(old.replace("-t sshd -t sshd-session", "SYSLOG_IDENTIFIER=sshd")) is None:
        raise Failed("the journal check passed a filter on the syslog identifier")
    problem = journal_problem(lines[0])
    if problem:
        raise Failed(f"{JOURNAL_UNIT.name}: {problem}")
    groups = journal_groups(lines[0])
    print(f"ok {JOURNAL_UNIT.name} selects sshd's entries on trusted journal fields only ({len(groups)} groups)")


def check_instance_log_policy() -> None:
    """The instances' policy: only streams named i-* take events, only role
    credentials EC2 delivered into the protected VPC may use it; the test
    output writes the caller's own stream (docs/threat-model.md, T1)."""
    res = load_cfn(TEMPLATE)["Resources"]
    for st in res["InstanceLogPolicy"]["Properties"]["PolicyDocument"]["Statement"]:
        cond = st.get("Condition", {})
        if cond.get("StringEquals", {}).get("aws:Ec2InstanceSourceVpc") != {"Ref": "VpcId"} or \
                cond.get("Null", {}).get("ec2:SourceInstanceARN") != "false":
            raise Failed(f"InstanceLogPolicy {st.get('Sid')}: not limited to instance credentials of the protected VPC")
        if "logs:PutLogEvents" in actions(st) and not all(x.endswith(':log-stream:i-*"}') for x in resources(st)):
            raise Failed(f"InstanceLogPolicy {st.get('Sid')}: PutLogEvents on {resources(st)}, want streams i-* only")
    outputs = load_cfn(TEMPLATE)["Outputs"]
    test = json.dumps(outputs["TestSendFailedLogins"]["Value"])
    if re.search(r"i-[0-9a-f]{8,17}", test) or "meta-data/instance-id" not in test:
        raise Failed("TestSendFailedLogins must write the calling instance's own stream (from IMDS), not a named one")
    print("ok InstanceLogPolicy: streams i-*, instance credentials of the protected VPC only; the test output writes its own stream")


def check_tag_guard() -> None:
    """ProtectSshwardenTagsPolicy denies sshwarden:* tag writes (and keyless
    DeleteTags) to everyone but the two machine roles."""
    res = load_cfn(TEMPLATE)["Resources"]
    sts = res["ProtectSshwardenTagsPolicy"]["Properties"]["PolicyDocument"]["Statement"]
    roles = [{"Fn::GetAtt": ["QuarantineRole", "Arn"]}, {"Fn::GetAtt": ["ReleaseRole", "Arn"]}]
    keys = [s for s in sts if s.get("Condition", {}).get("ForAnyValue:StringLike", {}).get("aws:TagKeys") == ["sshwarden:*"]]
    keyless = [s for s in sts if s.get("Condition", {}).get("Null", {}).get("aws:TagKeys") == "true"]
    if not keys or actions(keys[0]) != {"ec2:CreateTags", "ec2:DeleteTags"} or not keyless or "ec2:DeleteTags" not in actions(keyless[0]):
        raise Failed("ProtectSshwardenTagsPolicy does not deny CreateTags/DeleteTags of sshwarden:* keys and keyless DeleteTags")
    for st in keys + keyless:
        if st.get("Effect") != "Deny" or resources(st) != ['"*"'] or \
                st["Condition"].get("ArnNotEquals", {}).get("aws:PrincipalArn") != roles:
            raise Failed(f"ProtectSshwardenTagsPolicy {st.get('Sid')}: must deny on * to all but QuarantineRole and ReleaseRole")
    if "ProtectSshwardenTagsPolicyArn" not in load_cfn(TEMPLATE)["Outputs"]:
        raise Failed("no output ProtectSshwardenTagsPolicyArn")
    print("ok ProtectSshwardenTagsPolicy: sshwarden:* tags (and keyless DeleteTags) only by the machine roles")


CONSUMERS_SRC = ROOT / "consumers" / "src"
# (namespace, metric name, what it must watch) every alarm set must cover.
WANTED_ALARM_METRICS = {
    ("AWS/Kinesis", "GetRecords.IteratorAgeMilliseconds", "LogStream"): "the workers' lag",
    ("AWS/Kinesis", "GetRecords.IteratorAgeMilliseconds", "PartialsStream"): "the fleet stage's merge lag",
    ("AWS/States", "ExecutionsFailed", "QuarantineStateMachine"): "failed quarantines",
    ("AWS/States", "ExecutionsFailed", "ReleaseStateMachine"): "failed releases",
    ("AWS/DynamoDB", "WriteThrottleEvents", "LeaseTable"): "lease table throttling",
    ("AWS/DynamoDB", "ReadThrottleEvents", "LeaseTable"): "lease table throttling",
    ("AWS/DynamoDB", "WriteThrottleEvents", "FleetLeaseTable"): "fleet lease table throttling",
    ("AWS/DynamoDB", "ReadThrottleEvents", "FleetLeaseTable"): "fleet lease table throttling",
    ("sshwarden", "CommandDeliveryFailures", ""): "sink failures",
    ("sshwarden", "HeldQuarantines", ""): "held quarantines",
}


def alarm_metrics(props: dict[str, Any]) -> list[tuple[str, str, str]]:
    """(namespace, metric, dimension value reference) of an alarm, also inside metric math."""
    stats = [props] if "MetricName" in props else [m["MetricStat"]["Metric"] for m in props.get("Metrics", []) if "MetricStat" in m]
    out = []
    for m in stats:
        ns = m["Namespace"] if isinstance(m["Namespace"], str) else m["Namespace"].get("Fn::Sub", "")
        dims = m.get("Dimensions", [])
        value = dims[0]["Value"] if dims else ""
        if isinstance(value, dict) and "Fn::If" in value:  # the branch of a stack with the condition on
            value = value["Fn::If"][1]
        ref = value.get("Ref", "") if isinstance(value, dict) else ""
        out.append((ns.split("/${")[0], m["MetricName"], ref))
    return out


def check_alarms() -> None:
    """The alarms of #16 finding 8 exist, watch the right metrics, notify the
    operations topic whose key lets CloudWatch publish; the worker still
    writes the log lines the metric filters count; retention is above a day."""
    t = load_cfn(TEMPLATE)
    res = t["Resources"]
    alarms = {k: r["Properties"] for k, r in res.items() if r["Type"] == "AWS::CloudWatch::Alarm"}
    seen = {m for props in alarms.values() for m in alarm_metrics(props)}
    missing = [what for key, what in WANTED_ALARM_METRICS.items() if key not in seen]
    if missing:
        raise Failed(f"no alarm on {missing}")
    retention = [k for k, p in alarms.items() if "StreamRetentionHours" in json.dumps(p.get("Metrics", []))]
    if not retention:
        raise Failed("no alarm compares the iterator age with StreamRetentionHours (data about to expire)")
    for name, props in alarms.items():
        if props.get("AlarmActions") != [{"Ref": "OperationsTopic"}]:
            raise Failed(f"{name}: AlarmActions {props.get('AlarmActions')}, want the operations topic")
        if not props["AlarmName"]["Fn::Sub"].startswith("${AWS::StackName}-"):
            raise Failed(f"{name}: its name must start with the stack name (the key and topic policies admit those)")
    if res["OperationsTopic"]["Properties"].get("KmsMasterKeyId") != {"Ref": "OperationsKey"}:
        raise Failed("the operations topic is not encrypted with OperationsKey")
    grants = [s for s in res["OperationsKey"]["Properties"]["KeyPolicy"]["Statement"]
              if s.get("Principal") == {"Service": "cloudwatch.amazonaws.com"}]
    if not grants or not {"kms:Decrypt", "kms:GenerateDataKey*"} <= actions(grants[0]):
        raise Failed("OperationsKey does not let CloudWatch alarms publish (kms:Decrypt, kms:GenerateDataKey*)")
    code = "\n".join(p.read_text() for p in sorted(CONSUMERS_SRC.rglob("*.rs")))
    for name, r in res.items():
        if r["Type"] == "AWS::Logs::MetricFilter":
            m = re.fullmatch(r'\{ \$\.fields\.message = "([^"*]+)\*" \}', r["Properties"]["FilterPattern"])
            if not m or m.group(1) not in code:
                raise Failed(f"{name}: the worker does not log a message starting {m.group(1) if m else '?'!r} (consumers/src)")
    if int(t["Parameters"]["StreamRetentionHours"]["Default"]) < 72:
        raise Failed("StreamRetentionHours defaults to less than 3 days")
    print(f"ok {len(alarms)} alarms (lag, fleet stage lag, retention, executions, sink failures, held, checkpoints, throttling) "
          "to the operations topic; its key lets CloudWatch publish; the metric filters' messages are the worker's")


def check_quarantine_group() -> None:
    standalone = load_cfn(QUARANTINE_SG)["Resources"]["QuarantineSecurityGroup"]
    in_template = load_cfn(TEMPLATE)["Resources"]["QuarantineSecurityGroup"]
    if standalone != in_template:
        raise Failed("QuarantineSecurityGroup differs between infra/template.yaml and infra/quarantine-sg.yaml")
    print("ok the template's quarantine group is infra/quarantine-sg.yaml's")


def check_parses() -> None:
    compose = yaml.safe_load((ROOT / "infra" / "localstack" / "docker-compose.yml").read_text())
    services = set(compose.get("services", {}))
    want = {"localstack", "bootstrap", "worker"}
    if not want <= services:
        raise Failed(f"docker-compose.yml: services {sorted(services)} lack {sorted(want - services)}")
    for svc in compose["services"].values():
        if "ports" in svc:
            for p in svc["ports"]:
                if not str(p).startswith("127.0.0.1:"):
                    raise Failed(f"docker-compose.yml: port {p} is published beyond loopback")
    for path in sorted((ROOT / "infra" / "cloudwatch-agent").glob("*.json")):
        json.loads(path.read_text())
    dashboard = ROOT / "infra" / "grafana-dashboard.json"
    json.loads(dashboard.read_text())
    print("ok docker-compose.yml, the CloudWatch agent configs and the dashboard parse")


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ("write", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    text = TEMPLATE.read_text()
    try:
        new, files = generated(text)
        if not files:
            raise Failed("no '# BEGIN generated from infra/statemachines/...' block in infra/template.yaml")
        if argv[0] == "write":
            if new != text:
                TEMPLATE.write_text(new)
                print(f"infra/template.yaml: regenerated {', '.join(files)}")
            else:
                print("infra/template.yaml: up to date")
            return 0
        if new != text:
            raise Failed(
                "infra/template.yaml does not carry the current infra/statemachines/*.asl.json: "
                "run scripts/check-infra --write"
            )
        print(f"ok infra/template.yaml embeds the current {', '.join(files)}")
        check_definitions(files)
        check_retries()
        check_roles()
        check_instance_log_policy()
        check_journal_unit()
        check_tag_guard()
        check_alarms()
        check_fleet_stage()
        check_quarantine_group()
        check_parses()
        size = len(new.encode())
        # A template above 51,200 bytes must go through S3 (aws cloudformation deploy --s3-bucket).
        print(f"ok infra/template.yaml is {size} bytes ({'fits' if size <= 51200 else 'needs --s3-bucket'} for a direct upload)")
    except (Failed, OSError, ValueError, KeyError, TypeError, yaml.YAMLError) as e:
        print(f"FAIL {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
