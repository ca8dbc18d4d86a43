#!/usr/bin/env python3
"""End-to-end remediation on moto server; run by `scripts/e2e`.

The whole path of docs/design.md with nothing stubbed but AWS itself:

    PutLogEvents (one log stream per instance id)
      -> CloudWatch Logs subscription filter (ByLogStream) -> Kinesis (2 shards)
      -> `sshwarden run --sink sfn` (leases in DynamoDB; with the fleet stage,
         --fleet-stream: partials to a second 2-shard stream, read back under
         <lease table>-fleet; docs/fleet.md)
      -> StartExecution of infra/statemachines/quarantine.asl.json
      -> EC2 security-group swap and tags, SNS -> SQS notification

then a replay from TRIM_HORIZON with a fresh lease table (no second
execution), `sshwarden release`, a replay that reaches the first execution
while it still runs (a machine that only waits), and (unless --skip-outage)
Step Functions down for a while: the command is held with the checkpoint,
then delivered. Then (unless --skip-direct; --only-direct runs just this)
`sshwarden run --sink direct` with the fleet-wide blast radius: quarantine,
exempt, held past the limit, a replay after a simulated crash between the
swap and the quarantined tag (moto's appended groups make it the hard case:
the saved groups must not be rewritten), a plain replay, `sshwarden release
--direct`, an unknown instance notified as refused (target checks).

Everything runs on the moto URL (127.0.0.1). The worker gets
AWS_ENDPOINT_URL=<moto> and no AWS_ENDPOINT_URL_KINESIS: moto's subscription
filters deliver into moto's own Kinesis. World building (VPC, quarantine
group from infra/quarantine-sg.yaml, instances, SNS+SQS, placeholder
substitution) and the moto-deviation bookkeeping come from
statemachine_test.py. Every wait is bounded; every process started here is
stopped by PID in a finally block; names are unique per run.

Usage: e2e_remediation_test.py --bin PATH [--moto URL] [--definitions DIR]
       [--workdir DIR] [--wait S] [--skip-outage] [--keep] [--summary FILE]
"""

from __future__ import annotations

import argparse
import base64
import gzip
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import boto3

sys.dont_write_bytecode = True  # no __pycache__ beside the sources
sys.path.insert(0, str(Path(__file__).resolve().parent))
import statemachine_test as smt  # noqa: E402  (the world builder and the case runner)
from statemachine_test import SW, CheckFailed, Note, check, deviation  # noqa: E402

RUN = smt.RUN
ATTACKER = "203.0.113.7"
PREFIX = f"sshwarden-e2e-{RUN}"
FILTER_ROLE = f"arn:aws:iam::{smt.ACCOUNT}:role/sshwarden-e2e-logs-to-kinesis"  # moto checks nothing


# ---------------------------------------------------------------- helpers

def now_ms() -> int:
    return int(time.time() * 1000)


_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A free port on 127.0.0.1, never one handed out before in this run:
    released, a port is free again and may be given twice."""
    for _ in range(1000):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port
    raise RuntimeError("no port on 127.0.0.1 that this run has not used yet")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_for(what: str, fn: Callable[[], Any], timeout: float, every: float = 0.25) -> Any:
    """Polls fn until it returns something truthy; CheckFailed after timeout s."""
    deadline = time.monotonic() + timeout
    while True:
        out = fn()
        if out:
            return out
        if time.monotonic() > deadline:
            raise CheckFailed(f"{what}: not within {timeout:.0f} s")
        time.sleep(every)


def syslog_line(ts_ms: int, host: str, pid: int, message: str) -> str:
    """`Nov 29 10:00:00 ip-10-0-0-5 sshd[123]: ...` (RFC 3164, no year)."""
    t = datetime.fromtimestamp(ts_ms / 1000, tz=timezone.utc)
    return f"{t.strftime('%b')} {t.day:>2} {t.strftime('%H:%M:%S')} {host} sshd[{pid}]: {message}"


def in_one_window(window_ms: int, span_ms: int, back_ms: int) -> int:
    """A start time about back_ms ago such that [start, start + span] lies in
    one event-time tumbling window (windows are aligned to the epoch)."""
    t0 = now_ms() - back_ms
    ws = t0 - t0 % window_ms
    return min(t0, ws + window_ms - span_ms - 500)


def window_start(ts_ms: int, window_ms: int) -> int:
    return ts_ms - ts_ms % window_ms


class Worker:
    """One `sshwarden` process: stderr (JSON logs) and stdout to files,
    /metrics on its own port, stopped by PID."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str], workdir: Path, metrics_port: int | None):
        self.name = name
        self.argv = argv
        self.env = env
        self.err_path = workdir / f"{name}.stderr.jsonl"
        self.out_path = workdir / f"{name}.stdout"
        self.metrics_port = metrics_port
        self.proc: subprocess.Popen | None = None
        self.started = 0.0

    def start(self) -> None:
        with open(self.err_path, "wb") as err, open(self.out_path, "wb") as out:
            self.proc = subprocess.Popen(self.argv, env=self.env, stdin=subprocess.DEVNULL, stdout=out, stderr=err)
        self.started = time.monotonic()

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def stop(self, grace: float = 10.0) -> int | None:
        """TERM by PID, a bounded wait, then KILL. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            try:
                os.kill(self.proc.pid, signal.SIGTERM)
                self.proc.wait(timeout=grace)
            except subprocess.TimeoutExpired:
                print(f"  {self.name} (pid {self.proc.pid}) still up {grace:.0f} s after TERM: KILL", flush=True)
                os.kill(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=5)
            except ProcessLookupError:
                pass
        return self.proc.returncode

    def logs(self) -> list[dict]:
        out = []
        try:
            text = self.err_path.read_text(errors="replace")
        except FileNotFoundError:
            return out
        for line in text.splitlines():
            try:
                out.append(json.loads(line))
            except ValueError:
                out.append({"fields": {"message": line}, "level": "RAW"})
        return out

    def events(self, message: str) -> list[dict]:
        """The fields of every log entry with this message."""
        return [e.get("fields", {}) for e in self.logs() if e.get("fields", {}).get("message") == message]

    def tail(self, n: int = 40) -> str:
        try:
            lines = self.err_path.read_text(errors="replace").splitlines()
        except FileNotFoundError:
            return "(no stderr file)"
        return "\n".join(lines[-n:])

    def metrics(self) -> dict[str, float]:
        """/metrics as {'name{labels}': value}; {} if it does not answer."""
        if self.metrics_port is None:
            return {}
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics_port}/metrics", timeout=2) as r:  # noqa: S310
                text = r.read().decode()
        except (urllib.error.URLError, OSError):
            return {}
        out = {}
        for line in text.splitlines():
            if not line or line.startswith("#"):
                continue
            key, _, value = line.rpartition(" ")
            try:
                out[key] = float(value)
            except ValueError:
                pass
        return out

    def metric_sum(self, name: str, m: dict[str, float] | None = None) -> float:
        m = self.metrics() if m is None else m
        return sum(v for k, v in m.items() if k == name or k.startswith(name + "{"))


class E2E(smt.World):
    """statemachine_test's World plus CloudWatch Logs, Kinesis, DynamoDB and
    the sshwarden processes."""

    def __init__(self, args: argparse.Namespace):
        super().__init__(args.moto, Path(args.definitions), timeout=60.0)
        self.args = args
        self.bin = args.bin
        self.moto_port = urllib.parse.urlparse(args.moto).port or 80
        self.workdir = Path(args.workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)

        def client(service: str) -> Any:
            return boto3.client(service, endpoint_url=args.moto, aws_access_key_id="testing",
                                aws_secret_access_key="testing", config=smt.CONFIG)

        self.logs = client("logs")
        self.kinesis = client("kinesis")
        self.ddb = client("dynamodb")
        self.workers: list[Worker] = []
        self.extra_procs: list[tuple[str, subprocess.Popen]] = []
        self.streams: dict[str, str] = {}  # name -> ARN
        self.put_at: dict[str, float] = {}  # label -> time.time() of the PutLogEvents
        self.expected: dict[str, Any] = {}

    # ------------------------------------------------------------ world

    def fleet(self) -> Note:
        # Launched with SecurityGroupIds, as most fleets are: moto then reports
        # an interface's groups with the launch groups appended (infra/README.md),
        # which the checks below tolerate and report.
        self.launch("attacked", groups=[self.web, self.admin])
        self.launch("benign", interfaces=[[self.web]])
        self.launch("benign2", groups=[self.web, self.db])
        self.launch("allowed", groups=[self.web, self.admin])
        self.launch("outage", interfaces=[[self.web, self.db]])
        # Attacked during the outage: its command is detected while the
        # first one waits (reading goes on, #16 finding 7).
        self.launch("outage2", interfaces=[[self.web]])
        self.host: dict[str, str] = {}
        for role, iid in self.instances.items():
            ip = self.describe(iid).get("PrivateIpAddress", "10.77.1.9")
            self.host[role] = "ip-" + ip.replace(".", "-")
        self.sg_names = {self.web: "web", self.admin: "admin", self.db: "db", self.quarantine: "quarantine"}
        return Note(", ".join(f"{r} {i}" for r, i in self.instances.items()))

    def e2e_machines(self) -> Note:
        self.machine = {}
        self.machine_def = {}
        for name in ("quarantine", "release"):
            definition = self.definition(name)
            mname = f"{PREFIX}-{name}"
            arn = self.sfn.create_state_machine(name=mname, definition=definition, roleArn=smt.ROLE_ARN,
                                                type="STANDARD")["stateMachineArn"]
            self.cleanup.append(lambda arn=arn: self.sfn.delete_state_machine(stateMachineArn=arn))
            self.machine[name] = arn
            self.machine_def[name] = (mname, definition)
        return Note(f"{self.machine['quarantine']} and the release machine (Standard)")

    def stream(self, name: str, shards: int) -> str:
        self.kinesis.create_stream(StreamName=name, ShardCount=shards)
        self.cleanup.append(lambda: self.kinesis.delete_stream(StreamName=name, EnforceConsumerDeletion=True))

        def active() -> str | None:
            d = self.kinesis.describe_stream_summary(StreamName=name)["StreamDescriptionSummary"]
            return d["StreamARN"] if d["StreamStatus"] == "ACTIVE" else None

        arn = wait_for(f"stream {name} ACTIVE", active, 30)
        self.streams[name] = arn
        return arn

    def log_group(self, group: str, stream_arn: str, roles: list[str], pattern: str = "") -> None:
        self.logs.create_log_group(logGroupName=group)
        self.cleanup.append(lambda: self.logs.delete_log_group(logGroupName=group))
        for role in roles:
            self.logs.create_log_stream(logGroupName=group, logStreamName=self.instances[role])
        self.logs.put_subscription_filter(
            logGroupName=group, filterName="sshwarden", filterPattern=pattern,
            destinationArn=stream_arn, roleArn=FILTER_ROLE, distribution="ByLogStream",
        )

    def pipeline(self) -> Note:
        self.main_stream = f"{PREFIX}-sshd"
        self.group = f"/{PREFIX}/sshd"
        arn = self.stream(self.main_stream, 2)
        # The fleet stage's stream of partials (docs/fleet.md): workers 1
        # and 2 run with --fleet-stream.
        self.fleet_stream = f"{PREFIX}-partials"
        self.stream(self.fleet_stream, 2)
        self.log_group(self.group, arn, ["attacked", "benign", "benign2", "allowed"])
        f = self.logs.describe_subscription_filters(logGroupName=self.group)["subscriptionFilters"]
        check(len(f) == 1 and f[0]["destinationArn"] == arn, f"subscription filter: {f}")
        dist = f[0].get("distribution")
        if dist != "ByLogStream":
            deviation(f"DescribeSubscriptionFilters does not echo distribution ByLogStream (got {dist!r})")
        return Note(f"log group {self.group}, 4 log streams named by instance id, filter -> {self.main_stream} (2 shards); "
                    f"stream of partials {self.fleet_stream} (2 shards)")

    # ------------------------------------------------------------ kinesis

    def read_stream(self, name: str) -> list[dict]:
        """Every record of every shard from TRIM_HORIZON (reading does not
        consume): [{shard, seq, raw, payload}]."""
        out = []
        for sh in self.kinesis.list_shards(StreamName=name)["Shards"]:
            it = self.kinesis.get_shard_iterator(StreamName=name, ShardId=sh["ShardId"],
                                                 ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
            for _ in range(50):
                r = self.kinesis.get_records(ShardIterator=it, Limit=1000)
                for rec in r["Records"]:
                    raw = rec["Data"]
                    payload = json.loads(gzip.decompress(raw)) if raw[:2] == b"\x1f\x8b" else None
                    out.append({"shard": sh["ShardId"], "seq": rec["SequenceNumber"], "raw": raw, "payload": payload})
                it = r.get("NextShardIterator")
                if not r["Records"] or not it:
                    break
        return out

    def put_lines(self, group: str, role: str, lines: list[tuple[int, str]]) -> None:
        """One PutLogEvents call for one instance. moto delivers each call as
        one Kinesis record with a random partition key, so one call keeps an
        instance's burst on one shard (see the deviations)."""
        self.logs.put_log_events(logGroupName=group, logStreamName=self.instances[role],
                                 logEvents=[{"timestamp": t, "message": m} for t, m in lines])
        self.put_at[role] = time.time()

    def attack_lines(self, role: str, t0: int, n: int = 8, step_ms: int = 500) -> list[tuple[int, str]]:
        users = ["admin", "oracle", "test", "ubuntu", "postgres", "git", "ftpuser", "pi", "guest", "support"]
        return [
            (t0 + i * step_ms, syslog_line(t0 + i * step_ms, self.host[role], 4100 + i,
                                           f"Invalid user {users[i % len(users)]}{i} from {ATTACKER} port {40110 + 7 * i}"))
            for i in range(n)
        ]

    # ------------------------------------------------------------ sshwarden

    def worker_env(self, sfn_endpoint: str | None = None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "SSHWARDEN_"))}
        env.update({
            "AWS_ENDPOINT_URL": self.url,  # everything on moto, Kinesis included
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": smt.REGION,
            "AWS_DEFAULT_REGION": smt.REGION,
            "AWS_EC2_METADATA_DISABLED": "true",
            "AWS_CONFIG_FILE": "/dev/null",
            "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
            "SSHWARDEN_LOG": "info",
        })
        if sfn_endpoint:
            env["AWS_ENDPOINT_URL_SFN"] = sfn_endpoint
        return env

    def worker(self, name: str, *, stream: str, table: str, global_flags: list[str],
               run_flags: list[str] | None = None, sfn_endpoint: str | None = None,
               machine_arn: str | None = None, sink_flags: list[str] | None = None,
               blast_radius_max: int = 0, fleet: bool = False) -> Worker:
        port = free_port()
        sink = sink_flags or ["--sink", "sfn", "--state-machine-arn", machine_arn or self.machine["quarantine"]]
        # The remediation path is exercised with the seed policy's instance
        # quarantines (invalid users per window); what the default policy
        # detects is judged by scan, demo and scripts/bench-detection.
        argv = [
            self.bin, "--policy", "seed", "--cooldown-secs", "0", "--blast-radius-max", str(blast_radius_max), *global_flags,
            "run", "--stream", stream, "--lease-table", table, *sink, "--worker-id", f"e2e-{name}",
            "--metrics-addr", f"127.0.0.1:{port}", "--idle-poll-ms", "200", "--shutdown-secs", "5",
            *(run_flags or []),
        ]
        self.cleanup.append(lambda: self.ddb.delete_table(TableName=table))
        if fleet:
            # The partials' readers take the default lease table, <table>-fleet.
            argv += ["--fleet-stream", self.fleet_stream]
            self.cleanup.append(lambda: self.ddb.delete_table(TableName=f"{table}-fleet"))
        w = Worker(name, argv, self.worker_env(sfn_endpoint), self.workdir, port)
        self.workers.append(w)
        w.start()
        return w

    def wait_leases(self, w: Worker, n: int, timeout: float = 30) -> float:
        t0 = time.monotonic()

        def held() -> bool:
            check(w.alive(), f"{w.name} exited with {w.proc.returncode if w.proc else '?'}")
            return w.metric_sum("sshwarden_leases_held") >= n

        wait_for(f"{w.name} holding {n} lease(s)", held, timeout)
        return time.monotonic() - t0

    def executions(self, machine_arn: str | None = None, client: Any = None) -> list[dict]:
        c = client or self.sfn
        out, token = [], None
        while True:
            kw = {"stateMachineArn": machine_arn or self.machine["quarantine"], "maxResults": 100}
            if token:
                kw["nextToken"] = token
            r = c.list_executions(**kw)
            out += r["executions"]
            token = r.get("nextToken")
            if not token:
                return out

    def wait_execution_end(self, arn: str, client: Any = None, timeout: float = 60) -> dict:
        c = client or self.sfn

        def ended() -> dict | None:
            d = c.describe_execution(executionArn=arn)
            return d if d["status"] != "RUNNING" else None

        return wait_for(f"execution {arn} ending", ended, timeout)

    def drain_queue(self, seconds: float) -> list[dict]:
        """Every notification that arrives within `seconds` (deleted)."""
        got_all = []
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            got = self.sqs.receive_message(QueueUrl=self.queue, MaxNumberOfMessages=10, WaitTimeSeconds=1,
                                           MessageAttributeNames=["All"]).get("Messages", [])
            for m in got:
                env = json.loads(m["Body"])
                env["parsed"] = json.loads(env["Message"])
                got_all.append(env)
                self.sqs.delete_message(QueueUrl=self.queue, ReceiptHandle=m["ReceiptHandle"])
        return got_all

    def lease_items(self, table: str) -> list[dict]:
        items = self.ddb.scan(TableName=table, ConsistentRead=True)["Items"]
        return [{k: next(iter(v.values())) for k, v in it.items()} for it in items]

    def teardown_processes(self) -> None:
        for w in self.workers:
            try:
                rc = w.stop()
                if rc is not None:
                    print(f"  stopped {w.name} (pid {w.pid}), exit {rc}", flush=True)
            except Exception as exc:  # noqa: BLE001 - keep stopping the others
                print(f"  could not stop {w.name} (pid {w.pid}): {exc}", flush=True)
        for name, p in self.extra_procs:
            if p.poll() is None:
                try:
                    os.kill(p.pid, signal.SIGTERM)
                    p.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    os.kill(p.pid, signal.SIGKILL)
                    p.wait(timeout=5)
                except ProcessLookupError:
                    pass
                print(f"  stopped {name} (pid {p.pid})", flush=True)


# ---------------------------------------------------------------- the cases

def run_cases(w: E2E) -> None:
    q = w.quarantine
    attacked, benign, benign2, allowed = (w.instances[r] for r in ("attacked", "benign", "benign2", "allowed"))
    wait = w.args.wait
    state: dict[str, Any] = {}

    def case(name: str, fn: Callable[[], Note], show: list[Worker] | None = None) -> bool:
        ok = smt.case(name, fn) is not None
        if not ok:
            for wk in show if show is not None else w.workers:
                print(f"--- last lines of {wk.name} stderr ({wk.err_path}):\n{wk.tail()}", flush=True)
        return ok

    if w.args.only_direct:
        direct_case(w, case)
        stray = [(m["parsed"].get("event"), m["parsed"].get("instance_id")) for m in w.pending_messages + w.drain_queue(2)]
        case("every notification belongs to exactly one checked command",
             lambda: Note("queue empty") if not stray else check(False, f"notifications no case expected: {stray}"),
             show=[])
        return

    # -------------------------------------------------- moto delivers gzip into Kinesis

    def moto_delivery_probe() -> Note:
        # A separate log group and stream, so the worker never reads the probe.
        name = f"{PREFIX}-probe"
        arn = w.stream(name, 1)
        group = f"/{PREFIX}/probe"
        w.logs.create_log_group(logGroupName=group)
        w.cleanup.append(lambda: w.logs.delete_log_group(logGroupName=group))
        w.logs.create_log_stream(logGroupName=group, logStreamName=benign)
        w.logs.put_subscription_filter(logGroupName=group, filterName="probe", filterPattern='"Invalid user"',
                                       destinationArn=arn, roleArn=FILTER_ROLE, distribution="ByLogStream")
        t = now_ms()
        lines = [(t, syslog_line(t, "ip-probe", 1, f"Invalid user probe from {ATTACKER} port 1")),
                 (t + 1, syslog_line(t + 1, "ip-probe", 1, "Accepted publickey for ec2-user from 198.51.100.20 port 2 ssh2"))]
        w.logs.put_log_events(logGroupName=group, logStreamName=benign,
                              logEvents=[{"timestamp": a, "message": b} for a, b in lines])
        recs = wait_for("probe record in Kinesis", lambda: w.read_stream(name), 10)
        check(len(recs) == 1, f"{len(recs)} records for one PutLogEvents")
        raw = recs[0]["raw"]
        check(raw[:2] == b"\x1f\x8b", f"record is not gzip: {raw[:16]!r}")
        p = recs[0]["payload"]
        check(p["messageType"] == "DATA_MESSAGE" and p["logGroup"] == group and p["logStream"] == benign,
              f"envelope {({k: v for k, v in p.items() if k != 'logEvents'})}")
        check(p.get("owner") == smt.ACCOUNT and p.get("subscriptionFilters") == ["probe"], f"owner/filters {p}")
        ids = [e["id"] for e in p["logEvents"]]
        msgs = [e["message"] for e in p["logEvents"]]
        check(msgs == [m for _, m in lines], f"messages {msgs}")
        check([e["timestamp"] for e in p["logEvents"]] == [a for a, _ in lines], "timestamps changed")
        notes = [f"1 gzip record ({len(raw)} B), DATA_MESSAGE envelope"]
        if all(isinstance(i, int) for i in ids):
            deviation(f"Logs subscription payloads: event ids are JSON integers ({ids}), AWS sends 56-digit decimal strings")
            notes.append(f"event ids integers {ids}")
        else:
            notes.append(f"event ids {ids!r}")
        if len(msgs) == 2:
            deviation("Logs subscription filters: filterPattern is not applied (a non-matching line was delivered)")
            notes.append("filter pattern '\"Invalid user\"' NOT applied (both lines delivered)")
        deviation("Logs -> Kinesis: moto uses a random partition key per PutLogEvents call, not the log stream "
                  "(distribution ByLogStream is accepted and ignored); one call = one record on a random shard")
        return Note("; ".join(notes))

    case("moto: Logs subscription filter delivers gzip payloads into its Kinesis", moto_delivery_probe, show=[])

    # -------------------------------------------------- worker 1: detect and quarantine

    w1 = w.worker("w1", stream=w.main_stream, table=f"{PREFIX}-leases-1",
                  global_flags=["--allow-instances", allowed], fleet=True)

    def worker_ready() -> Note:
        s = w.wait_leases(w1, 2)
        started = w1.events("worker started, with the fleet stage")
        check(bool(started), "no 'worker started, with the fleet stage' log entry")
        check(started[0].get("fleet_stream") == w.fleet_stream, f"fleet stream {started[0].get('fleet_stream')!r}")
        return Note(f"pid {w1.pid}; both shard leases held {s:.1f} s after start, with the fleet stage "
                    f"({started[0].get('fleet_stream')}, leases in {started[0].get('fleet_table')}); "
                    f"flags --cooldown-secs 0 --blast-radius-max 0 --allow-instances {allowed}")

    if not case("worker 1 starts and takes both shard leases", worker_ready, show=[w1]):
        return

    def put_traffic() -> Note:
        window = 60_000
        t0 = in_one_window(window, 8 * 500, back_ms=6_000)
        state["attack_t0"] = t0
        state["window_start"] = window_start(t0, window)
        w.put_lines(w.group, "attacked", w.attack_lines("attacked", t0))
        t = now_ms() - 4_000
        w.put_lines(w.group, "benign", [
            (t, syslog_line(t, w.host["benign"], 2201, "Accepted publickey for ec2-user from 198.51.100.20 port 50122 ssh2: ED25519 SHA256:3q2+7w")),
            (t + 10, syslog_line(t + 10, w.host["benign"], 2201, "pam_unix(sshd:session): session opened for user ec2-user(uid=1000) by (uid=0)")),
            (t + 900, syslog_line(t + 900, w.host["benign"], 2230, "Accepted publickey for deploy from 198.51.100.21 port 50200 ssh2: RSA SHA256:x9yZ")),
        ])
        w.put_lines(w.group, "benign2", [
            (t, syslog_line(t, w.host["benign2"], 3301, "Failed password for alice from 198.51.100.30 port 51000 ssh2")),
            (t + 2000, syslog_line(t + 2000, w.host["benign2"], 3301, "Failed password for alice from 198.51.100.30 port 51000 ssh2")),
            (t + 3000, syslog_line(t + 3000, w.host["benign2"], 3301, "Accepted password for alice from 198.51.100.30 port 51000 ssh2")),
        ])
        w.put_lines(w.group, "allowed", w.attack_lines("allowed", t0))
        state["events_put"] = 8 + 3 + 3 + 8
        state["put_done"] = time.time()
        return Note(f"8 'Invalid user ... from {ATTACKER}' on attacked and on allowed within 3.5 s of window "
                    f"{datetime.fromtimestamp(state['window_start'] / 1000, tz=timezone.utc):%H:%M:%S}; "
                    "accepted logins + 2 failed passwords on the benign ones")

    case("PutLogEvents: brute force, benign traffic, brute force on the allowlisted instance", put_traffic)

    def stream_contents() -> Note:
        recs = w.read_stream(w.main_stream)
        check(all(r["payload"] for r in recs), "a record is not gzip JSON")
        per_stream: dict[str, list] = {}
        for r in recs:
            per_stream.setdefault(r["payload"]["logStream"], []).append(r)
        check(set(per_stream) == {attacked, benign, benign2, allowed}, f"log streams in Kinesis: {sorted(per_stream)}")
        n_events = sum(len(r["payload"]["logEvents"]) for r in recs)
        check(n_events == state["events_put"], f"{n_events} events in Kinesis, {state['events_put']} put")
        ids = [e["id"] for r in recs for e in r["payload"]["logEvents"]]
        check(len(set(map(str, ids))) == len(ids), f"event ids repeat: {ids}")
        where = {}
        for r in recs:
            where.setdefault(r["shard"].rsplit("-", 1)[-1].lstrip("0") or "0", []).append(
                next(role for role, i in w.instances.items() if i == r["payload"]["logStream"]))
        return Note(f"{len(recs)} gzip records, {n_events} events, one log stream per instance; "
                    f"by shard: {dict(sorted(where.items()))}")

    case("the subscription delivered every event into the 2-shard stream", stream_contents, show=[])

    def detected() -> Note:
        def our_execution() -> list[dict]:
            check(w1.alive(), f"w1 exited with {w1.proc.returncode}")
            return [e for e in w.executions() if attacked in e["name"]]

        t_put = w.put_at["attacked"]
        ex = wait_for("an execution for the attacked instance", our_execution, wait)
        seen = time.time()
        check(len(ex) == 1, f"{len(ex)} executions for {attacked}: {[e['name'] for e in ex]}")
        d = w.wait_execution_end(ex[0]["executionArn"])
        w.expect_status(d, "SUCCEEDED")
        state["execution"] = d
        start = d["startDate"].timestamp()
        want = f"sw1-i-{attacked}-invalid-user-{state['window_start'] // 1000}"
        check(d["name"] == want, f"execution name {d['name']!r}, want {want!r} (id of instance, rule, window start)")
        stop = d["stopDate"].timestamp() if d.get("stopDate") else seen
        return Note(f"{d['name']} SUCCEEDED; PutLogEvents -> StartExecution {start - t_put:.2f} s, "
                    f"-> SUCCEEDED {stop - t_put:.2f} s")

    if not case(f"worker 1 starts one quarantine execution for the attacked instance (bounded {wait:.0f} s)", detected):
        return

    def all_processed() -> Note:
        # Every event reached the engine (so a missing execution below is a
        # decision, not a delay), and the allowlisted instance's rule fired
        # and was suppressed.
        wait_for("w1 decoded every event", lambda: w1.metric_sum("sshwarden_events_total") >= state["events_put"], 30)
        sup = wait_for("the allowlisted instance's suppression in the log",
                       lambda: [f for f in w1.events("rule fired, command suppressed") if allowed in str(f.get("subject"))], 10)
        check("Allowlist" in str(sup[0].get("reason")), f"suppression reason {sup[0]}")
        return Note(f"events_total={w1.metric_sum('sshwarden_events_total'):.0f}; "
                    f"log: rule {sup[0].get('rule')} fired for {allowed}, suppressed ({sup[0].get('reason')})")

    case("worker 1 read every event; the allowlisted instance's rule fired and was suppressed", all_processed)

    def quarantined() -> Note:
        after = w.interface_groups(attacked)
        tags = w.sw_tags(attacked)
        notes = []
        check(set(after) == set(w.original[attacked]), f"interfaces changed: {after}")
        for eni, groups in after.items():
            orig = w.original[attacked][eni]
            check(q in groups, f"{eni}: quarantine group {q} missing, groups {groups}")
            if groups == [q]:
                notes.append(f"{eni} exactly [quarantine]")
            else:
                deviation("ModifyNetworkInterfaceAttribute on an instance launched with SecurityGroupIds: the interface "
                          "shows the quarantine group plus the launch groups")
                notes.append(f"{eni} shows {[w.sg_names.get(g, g) for g in groups]} (moto append)")
            saved = tags.get(f"{SW}saved-groups:{eni}")
            check(saved is not None and json.loads(saved) == orig, f"saved-groups tag of {eni}: {saved!r}, want {orig}")
        check(tags.get(f"{SW}reason") == "invalid-user", f"reason tag {tags.get(SW + 'reason')!r}")
        check(tags.get(f"{SW}command-id") == state["execution"]["name"], f"command-id tag {tags.get(SW + 'command-id')!r}")
        check(f"{SW}quarantined" in tags, f"no {SW}quarantined tag: {tags}")
        originals = {eni: [w.sg_names.get(g, g) for g in gs] for eni, gs in w.original[attacked].items()}
        return Note("; ".join(notes) + f"; saved-groups tags hold the originals {originals}; "
                    "reason, command-id, quarantined tags set")

    case("the attacked instance is in the quarantine group, its groups saved in tags", quarantined)

    def notified() -> Note:
        env = w.message_for(state["execution"]["executionArn"], wait=10)
        msg = env["parsed"]
        check(msg.get("event") == "quarantined", f"event {msg.get('event')!r}")
        attr = env.get("MessageAttributes", {}).get("event", {}).get("Value")
        check(attr == "quarantined", f"message attribute event={attr!r}")
        check(msg.get("instance_id") == attacked and msg.get("rule") == "invalid-user", f"{msg}")
        cmd = msg.get("command", {})
        counts = cmd.get("counts", {})
        check(5 <= counts.get("invalid_user", 0) <= 8, f"counts {counts} (threshold 5, 8 lines)")
        top = cmd.get("top_sources", [])
        check(bool(top) and top[0]["source"] == ATTACKER, f"top_sources {top}")
        check(cmd.get("log_stream") == attacked and cmd.get("log_group") == w.group, f"origin {cmd.get('log_group')}/{cmd.get('log_stream')}")
        check(cmd.get("account") == smt.ACCOUNT, f"account {cmd.get('account')!r}")
        check(cmd.get("sample_lines") and ATTACKER in cmd["sample_lines"][0], f"sample_lines {cmd.get('sample_lines')}")
        state["notified"] = 1
        return Note(f"'{env.get('Subject')}': rule {msg['rule']}, counts {counts}, top_sources {top}, "
                    f"{len(cmd['sample_lines'])} sample lines")

    case("SQS receives the quarantine notification (rule, counts, top source 203.0.113.7)", notified)

    def untouched() -> Note:
        names = [e["name"] for e in w.executions()]
        for role in ("benign", "benign2", "allowed"):
            iid = w.instances[role]
            check(w.interface_groups(iid) == w.original[iid], f"{role} {iid}: groups {w.interface_groups(iid)}")
            check(not w.sw_tags(iid), f"{role} {iid}: sshwarden tags {w.sw_tags(iid)}")
            check(not [n for n in names if iid in n], f"{role} {iid} has an execution: {names}")
        return Note("benign, benign2 and allowed: launch groups, no sshwarden tags, no execution")

    case("the benign and the allowlisted instances are untouched, with no execution", untouched)

    def one_per_id() -> Note:
        ex = w.executions()
        delivered = w1.events("command delivered")
        ids = [f.get("id") for f in delivered]
        check(len(ids) == len(set(ids)), f"a command delivered twice by one worker: {ids}")
        check(all(f.get("already_handled") is False for f in delivered), f"deliveries {delivered}")
        check(sorted(e["name"] for e in ex) == sorted(ids), f"executions {[e['name'] for e in ex]} vs delivered {ids}")
        check(len(ex) == 1, f"{len(ex)} executions: {[e['name'] for e in ex]}")
        failures = w1.metric_sum("sshwarden_command_failures_total")
        state["executions_after_w1"] = sorted(e["executionArn"] for e in ex)
        # The fleet stage ran beside, with the seed policy's fleet rules:
        # none (the original sample counts per instance only), so no partial
        # is sent and no fleet command fired (the ids above are all the
        # commands). The wiring with partials: consumers/tests/run_fleet.rs
        # and scripts/dev-loop.
        partials = w1.metric_sum("sshwarden_partials_written_total")
        check(partials == 0, f"{partials} partials written under the seed policy")
        return Note(f"ListExecutions: {len(ex)} execution, = the {len(ids)} id(s) logged 'command delivered' "
                    f"(already_handled=false); command_failures_total={failures:.0f}; "
                    f"no partial under the seed policy")

    case("exactly one execution per command id (ListExecutions vs the worker's log)", one_per_id)

    def stop_w1() -> Note:
        t0 = time.monotonic()
        rc = w1.stop()
        check(rc == 0, f"w1 exit code {rc}")
        check(bool(w1.events("worker stopped")), "no 'worker stopped' log entry")
        return Note(f"SIGTERM -> exit 0 in {time.monotonic() - t0:.2f} s")

    case("worker 1 stops cleanly on SIGTERM", stop_w1, show=[w1])

    # -------------------------------------------------- replay: fresh lease table, TRIM_HORIZON

    w2 = w.worker("w2", stream=w.main_stream, table=f"{PREFIX}-leases-2",
                  global_flags=["--allow-instances", allowed], run_flags=["--start-position", "trim-horizon"], fleet=True)

    def replay() -> Note:
        want = state["execution"]["name"]

        def delivered() -> list[dict]:
            check(w2.alive(), f"w2 exited with {w2.proc.returncode}")
            return [f for f in w2.events("command delivered") if f.get("id") == want]

        got = wait_for(f"w2 re-deriving {want}", delivered, wait)
        wait_for("w2 decoded every event", lambda: w2.metric_sum("sshwarden_events_total") >= state["events_put"], 30)
        check(got[0].get("already_handled") is True, f"replayed delivery {got[0]}")
        all_delivered = w2.events("command delivered")
        check(all(f.get("already_handled") is True for f in all_delivered), f"w2 delivered something new: {all_delivered}")
        after = sorted(e["executionArn"] for e in w.executions())
        check(after == state["executions_after_w1"], f"executions changed by the replay: {after}")
        extra = w.drain_queue(3)
        check(not extra, f"notifications after the replay: {[m['parsed'].get('event') for m in extra]}")
        tags = w.sw_tags(attacked)
        check(tags.get(f"{SW}command-id") == want, f"tags {tags}")
        return Note(f"w2 (pid {w2.pid}, lease table {PREFIX}-leases-2) logged 'command delivered' id={want} "
                    f"already_handled=true; still {len(after)} execution; no new SQS notification in 3 s")

    case(f"replay from TRIM_HORIZON with a fresh lease table: same id, no second execution (bounded {wait:.0f} s)",
         replay, show=[w2])

    def stop_w2() -> Note:
        rc = w2.stop()
        check(rc == 0, f"w2 exit code {rc}")
        return Note("exit 0")

    case("worker 2 stops cleanly on SIGTERM", stop_w2, show=[w2])

    # -------------------------------------------------- release

    def release() -> Note:
        t0 = time.monotonic()
        p = subprocess.run(
            [w.bin, "release", attacked, "--release-state-machine-arn", w.machine["release"], "--wait", "60",
             "--requested-by", "e2e"],
            env=w.worker_env(), capture_output=True, text=True, timeout=90,
        )
        secs = time.monotonic() - t0
        check(p.returncode == 0, f"release exit {p.returncode}: {p.stderr.strip()[-800:]}")
        arn = p.stdout.strip().splitlines()[-1]
        check(arn.startswith("arn:aws:states:"), f"release printed {p.stdout!r}")
        after = w.interface_groups(attacked)
        notes = []
        for eni, orig in w.original[attacked].items():
            if sorted(after[eni]) == sorted(orig):
                continue
            check(set(orig) <= set(after[eni]) and q not in after[eni], f"{eni}: {after[eni]}, want {orig}")
            notes.append(f"{eni} shows {[w.sg_names.get(g, g) for g in after[eni]]} (moto adds launch groups)")
        check(not w.sw_tags(attacked), f"sshwarden tags left: {w.sw_tags(attacked)}")
        env = w.message_for(arn, wait=10)
        check(env["parsed"].get("event") == "released", f"event {env['parsed'].get('event')!r}")
        check(env["parsed"].get("request", {}).get("requested_by") == "e2e", f"request {env['parsed'].get('request')}")
        return Note(f"exit 0 in {secs:.2f} s; {'; '.join(notes) or 'every interface back in its saved groups'}; "
                    "sshwarden tags removed; 'released' notification")

    case("sshwarden release --wait 60 restores the saved groups and removes the tags", release, show=[])

    # -------------------------------------------------- Step Functions down for a while

    running_replay_case(w, case)

    if not w.args.skip_outage:
        outage_case(w, state, case)

    if not w.args.skip_direct:
        direct_case(w, case)

    def no_stray_notifications() -> Note:
        # Every notification was claimed by the case of its execution: none
        # came from a second (replayed) quarantine or from an untouched instance.
        stray = [(m["parsed"].get("event"), m["parsed"].get("instance_id")) for m in w.pending_messages + w.drain_queue(2)]
        w.pending_messages.clear()
        check(not stray, f"notifications no case expected: {stray}")
        return Note("queue empty")

    case("every notification belongs to exactly one checked execution", no_stray_notifications, show=[])


def running_replay_case(w: E2E, case: Callable[..., bool]) -> None:
    """A replay that reaches the first execution while it still runs. Standard
    workflows then answer StartExecution with success and the running
    execution (same name, same input) instead of ExecutionAlreadyExists; the
    sink must still report it as already handled. The quarantine machine ends
    within a second on moto, so this uses a machine that only waits, on a
    stream of its own, for an instance id nothing else uses."""
    name = f"{PREFIX}-running"
    group = f"/{PREFIX}/running"
    iid = "i-0e2e0000000000000"
    hold = 20

    def run() -> Note:
        definition = json.dumps({"Comment": "e2e: stays RUNNING for a while",
                                 "StartAt": "Hold", "States": {"Hold": {"Type": "Wait", "Seconds": hold, "End": True}}})
        machine = w.sfn.create_state_machine(name=f"{PREFIX}-hold", definition=definition, roleArn=smt.ROLE_ARN,
                                             type="STANDARD")["stateMachineArn"]
        w.cleanup.append(lambda: w.sfn.delete_state_machine(stateMachineArn=machine))
        arn = w.stream(name, 1)
        w.logs.create_log_group(logGroupName=group)
        w.cleanup.append(lambda: w.logs.delete_log_group(logGroupName=group))
        w.logs.create_log_stream(logGroupName=group, logStreamName=iid)
        w.logs.put_subscription_filter(logGroupName=group, filterName="sshwarden", filterPattern="",
                                       destinationArn=arn, roleArn=FILTER_ROLE, distribution="ByLogStream")
        w.host[iid] = "ip-10-77-1-250"
        t0 = in_one_window(60_000, 8 * 100, back_ms=2_000)
        w.logs.put_log_events(logGroupName=group, logStreamName=iid, logEvents=[
            {"timestamp": t, "message": m} for t, m in w.attack_lines(iid, t0, step_ms=100)])
        first = w.worker("w4", stream=name, table=f"{PREFIX}-leases-4", global_flags=[], machine_arn=machine)
        ex = wait_for("the first execution", lambda: w.executions(machine), w.args.wait)
        started = ex[0]["startDate"].timestamp()
        check(first.events("command delivered")[0].get("already_handled") is False, "first delivery")
        first.stop()
        # The sink counts a start date more than 5 s before its request as
        # an earlier execution: start the replay after that.
        time.sleep(max(0.0, started + 6.5 - time.time()))
        second = w.worker("w5", stream=name, table=f"{PREFIX}-leases-5", global_flags=[], machine_arn=machine)
        try:
            got = wait_for("w5 re-deriving the command", lambda: second.events("command delivered"), w.args.wait)
            status = w.sfn.describe_execution(executionArn=ex[0]["executionArn"])["status"]
            after = w.executions(machine)
        finally:
            second.stop()
        check(len(after) == 1, f"{len(after)} executions: {[e['name'] for e in after]}")
        check(status == "RUNNING", f"the first execution was already {status} at the replay: the case proves nothing")
        check(got[0].get("already_handled") is True,
              f"replay reaching a RUNNING execution logged {got[0]} (StartExecution answered with the running execution)")
        return Note(f"{ex[0]['name']} still RUNNING {time.time() - started:.1f} s after it started; w5 (fresh lease "
                    "table) logged already_handled=true; 1 execution")

    case("replay while the first execution still runs: StartExecution succeeds, reported already handled", run)


def direct_case(w: E2E, case: Callable[..., bool]) -> None:
    """`sshwarden run --sink direct`: the quarantine machine's steps from the
    worker (EC2 + SNS), with the fleet-wide blast-radius gate. A stream of its
    own with four instances: attacked (SecurityGroupIds at launch plus a
    second interface attached later), exempt (tag), over (attacked after the
    fleet-wide limit is used up: one slot was taken by "another worker"
    before the run), benign. Then a replay after a simulated crash between
    the swap and the quarantined tag, a plain replay, and `sshwarden release
    --direct`."""
    q = w.quarantine
    name = f"{PREFIX}-direct"
    group = f"/{PREFIX}/direct"
    blast_table = f"{PREFIX}-blast"
    # Two slots taken by "other workers", one for d-attacked; d-exempt takes
    # none (nothing is changed), so d-over finds the budget spent, although
    # the shard's own engine (same limit, counting the exempt one) lets it pass.
    limit = 3
    st: dict[str, Any] = {}
    OTHERS = ["sw1-i-i-0another0worker0-x-1", "sw1-i-i-0another0worker1-x-1"]  # noqa: N806 - a constant of this case
    roles = ("d-attacked", "d-exempt", "d-over", "d-benign")

    def take(pred: Callable[[dict], bool], n: int, wait: float) -> list[dict]:
        """Up to n notifications matching pred, waiting at most `wait` s;
        others stay pending for their own case."""
        got: list[dict] = []
        deadline = time.monotonic() + wait
        while True:
            for env in list(w.pending_messages):
                if len(got) < n and pred(env["parsed"]):
                    w.pending_messages.remove(env)
                    got.append(env)
            if len(got) >= n or time.monotonic() > deadline:
                return got
            w.pending_messages.extend(w.drain_queue(1))

    def ours(msg: dict) -> bool:
        return msg.get("command_id") in st["ids"].values() or msg.get("instance_id") in st["iids"].values()

    def setup() -> Note:
        iid = w.launch("d-attacked", groups=[w.web, w.admin])
        eni = w.ec2.create_network_interface(SubnetId=w.subnet, Groups=[w.db])["NetworkInterface"]["NetworkInterfaceId"]
        w.cleanup.append(lambda: w.ec2.delete_network_interface(NetworkInterfaceId=eni))
        w.ec2.attach_network_interface(NetworkInterfaceId=eni, InstanceId=iid, DeviceIndex=1)
        w.original[iid] = w.interface_groups(iid)
        check(len(w.original[iid]) == 2, f"d-attacked interfaces {w.original[iid]}")
        w.launch("d-exempt", interfaces=[[w.web]], tags={f"{SW}exempt": "true"})
        w.launch("d-over", interfaces=[[w.web, w.db]])
        w.launch("d-benign", interfaces=[[w.web]])
        for role in roles:
            w.host[role] = f"ip-10-77-9-{roles.index(role) + 10}"
        st["iids"] = {r: w.instances[r] for r in roles}
        arn = w.stream(name, 1)
        w.log_group(group, arn, list(roles))
        st["t0"] = in_one_window(60_000, 8 * 100, back_ms=3_000)
        ws = window_start(st["t0"], 60_000)
        st["ids"] = {r: f"sw1-i-{w.instances[r]}-invalid-user-{ws // 1000}" for r in ("d-attacked", "d-exempt", "d-over")}
        # The budget of the quarantine action and the rule (#16 finding 2).
        st["period"] = f"blast#quarantine#invalid-user#{ws - ws % 3_600_000}"
        # The counter table as the worker creates it, with one slot of this
        # period already taken by another worker.
        w.ddb.create_table(TableName=blast_table, BillingMode="PAY_PER_REQUEST",
                           AttributeDefinitions=[{"AttributeName": "periodKey", "AttributeType": "S"}],
                           KeySchema=[{"AttributeName": "periodKey", "KeyType": "HASH"}])
        w.cleanup.append(lambda: w.ddb.delete_table(TableName=blast_table))
        w.ddb.update_item(TableName=blast_table, Key={"periodKey": {"S": st["period"]}},
                          UpdateExpression="ADD claimed :one, ids :ids",
                          ExpressionAttributeValues={":one": {"N": "2"}, ":ids": {"SS": OTHERS}})
        return Note(f"stream {name} (1 shard); {', '.join(f'{r} {i}' for r, i in st['iids'].items())}; "
                    f"d-attacked interfaces {list(w.original[iid])}; {blast_table}: 2 of {limit} slots taken")

    if not case("direct: a stream, four instances, a blast-radius table with two slots taken", setup, show=[]):
        return

    sink_flags = ["--sink", "direct", "--quarantine-group-id", q, "--topic-arn", w.topic,
                  "--blast-radius-table", blast_table]

    def run_worker(label: str, stream: str = name, n: int = 3, blast_max: int = limit) -> tuple[Worker, list[dict]]:
        wk = w.worker(label, stream=stream, table=f"{PREFIX}-leases-{label}", global_flags=[],
                      sink_flags=sink_flags, blast_radius_max=blast_max)
        try:
            def delivered() -> list[dict] | None:
                check(wk.alive(), f"{wk.name} exited with {wk.proc.returncode if wk.proc else '?'}")
                got = wk.events("command delivered")
                return got if len(got) >= n else None

            got = wait_for(f"{label}: {n} commands delivered", delivered, w.args.wait)
        finally:
            rc = wk.stop()
        check(rc == 0, f"{label} exit code {rc}")
        return wk, got

    def blast_item() -> dict:
        item = w.ddb.get_item(TableName=blast_table, Key={"periodKey": {"S": st["period"]}}, ConsistentRead=True)["Item"]
        return {"claimed": int(item["claimed"]["N"]), "ids": set(item["ids"]["SS"])}

    def by_id(got: list[dict]) -> dict[str, dict]:
        return {g.get("id"): g for g in got}

    def first_pass() -> Note:
        for role in roles:
            w.put_lines(group, role, w.attack_lines(role, st["t0"], step_ms=100) if role != "d-benign" else [
                (st["t0"], syslog_line(st["t0"], w.host[role], 2201,
                                       "Accepted publickey for ec2-user from 198.51.100.20 port 50122 ssh2"))])
        wk, got = run_worker("d1")
        ids = st["ids"]
        seen = by_id(got)
        check(set(seen) == set(ids.values()), f"delivered {sorted(seen)}, want {sorted(ids.values())}")
        check(all(g.get("already_handled") is False for g in got), f"{got}")
        # Held by the fleet-wide gate, counted as held (not as delivered).
        outcomes = {r: seen[ids[r]].get("outcome") for r in ("d-attacked", "d-exempt", "d-over")}
        check(outcomes == {"d-attacked": "new", "d-exempt": "new", "d-over": "held"}, f"outcomes {outcomes}")
        attacked = w.instances["d-attacked"]
        after = w.interface_groups(attacked)
        tags = w.sw_tags(attacked)
        notes = []
        for eni, orig in w.original[attacked].items():
            saved = tags.get(f"{SW}saved-groups:{eni}")
            check(saved is not None and json.loads(saved) == orig, f"{eni}: saved {saved!r}, launched with {orig}")
            if after[eni] != [q]:
                check(q in after[eni], f"{eni}: no quarantine group: {after[eni]}")
                deviation("ModifyNetworkInterfaceAttribute on an instance launched with SecurityGroupIds: "
                          "the interface shows the quarantine group plus the launch groups")
                notes.append(f"{eni} shows {[w.sg_names.get(g, g) for g in after[eni]]} (moto append)")
        check(tags.get(f"{SW}command-id") == ids["d-attacked"] and tags.get(f"{SW}reason") == "invalid-user", f"{tags}")
        check(tags.get(f"{SW}quarantined", "").startswith("20"), f"quarantined tag {tags}")
        st["saved"] = {k: v for k, v in tags.items() if k.startswith(f"{SW}saved-groups:")}
        for role in ("d-exempt", "d-over", "d-benign"):
            iid = w.instances[role]
            check(w.interface_groups(iid) == w.original[iid], f"{role} changed: {w.interface_groups(iid)}")
            check(not w.sw_tags(iid), f"{role} has sshwarden tags {w.sw_tags(iid)}")
        msgs = take(ours, 3, 15)
        events = {m["parsed"].get("command_id"): m for m in msgs}
        want = {ids["d-attacked"]: "quarantined", ids["d-exempt"]: "exempt", ids["d-over"]: "held"}
        check({k: m["parsed"].get("event") for k, m in events.items()} == want,
              f"notifications {[(m['parsed'].get('event'), m['parsed'].get('command_id')) for m in msgs]}")
        for cid, m in events.items():
            attr = m.get("MessageAttributes", {}).get("event", {}).get("Value")
            check(attr == want[cid], f"message attribute event={attr!r} for {cid}")
        qm = events[ids["d-attacked"]]["parsed"]
        check(qm["instance_id"] == attacked and qm["quarantine_group"] == q and qm["execution"] == "sshwarden-direct",
              f"{qm}")
        check({i["interface_id"] for i in qm["interfaces"]} == set(w.original[attacked]), f"{qm['interfaces']}")
        # The rule fires early, at the fifth line of the window.
        check(qm["command"]["counts"] == {"invalid_user": 5}, f"counts {qm['command'].get('counts')}")
        held = events[ids["d-over"]]["parsed"]["command"]
        check(held["action"] == "notify" and held["held"] is True and "fleet-wide" in held.get("reason", ""), f"{held}")
        b = blast_item()
        check(b["claimed"] == limit and b["ids"] == {*OTHERS, ids["d-attacked"]},
              f"blast-radius item {b} (the exempt instance takes no slot: the claim follows the checks)")
        passed = qm.get("checks", {}).get("passed", [])
        check(qm.get("checks", {}).get("refused") is None and "exists" in passed
              and f"in the protected VPC {w.vpc}" in passed, f"checks {qm.get('checks')}")
        check(qm.get("untracked_group", "").startswith("sg-") and "allow-all group first" in qm.get("summary", ""),
              f"untracked swap not reported: {qm}")
        return Note(f"3 commands; d-attacked isolated on {len(after)} interfaces, originals in saved-groups tags"
                    f"{'; ' + '; '.join(notes) if notes else ''}; exempt/over/benign untouched; notifications "
                    f"quarantined, exempt, held (fleet-wide); {blast_table}: {b['claimed']} claimed")

    if not case("direct: quarantine, exempt, fleet-wide limit → held, benign untouched; notifications in SQS",
                first_pass, show=[]):
        return

    def crash_replay() -> Note:
        attacked = w.instances["d-attacked"]
        # As if the worker died after the swap, before the quarantined tag.
        w.ec2.delete_tags(Resources=[attacked], Tags=[{"Key": f"{SW}quarantined"}])
        groups_before = w.interface_groups(attacked)
        wk, got = run_worker("d2")
        seen = by_id(got)
        check(seen[st["ids"]["d-attacked"]].get("already_handled") is False, f"{seen}")
        tags = w.sw_tags(attacked)
        saved = {k: v for k, v in tags.items() if k.startswith(f"{SW}saved-groups:")}
        check(saved == st["saved"], f"saved groups rewritten: {saved}, was {st['saved']}")
        check(f"{SW}quarantined" in tags, f"quarantined tag not written again: {tags}")
        check(w.interface_groups(attacked) == groups_before, f"groups {w.interface_groups(attacked)}, were {groups_before}")
        msgs = take(ours, 3, 15)
        evs = sorted(m["parsed"].get("event") for m in msgs)
        check(evs == ["exempt", "held", "quarantined"], f"notifications {evs}")
        b = blast_item()
        check(b["claimed"] == limit, f"replays took slots: {b}")
        return Note(f"saved-groups tags kept although moto shows {[len(g) for g in groups_before.values()]} groups per "
                    "interface; quarantined tag written again; notified again (at least once); 3 slots still claimed")

    case("direct: replay after a crash between the swap and the quarantined tag keeps the saved groups",
         crash_replay, show=[])

    def plain_replay() -> Note:
        wk, got = run_worker("d3")
        seen = by_id(got)
        check(seen[st["ids"]["d-attacked"]].get("already_handled") is True, f"{seen}")
        msgs = take(ours, 3, 5)
        evs = sorted(m["parsed"].get("event") for m in msgs)
        check("quarantined" not in evs, f"a second 'quarantined' notification: {evs}")
        check(blast_item()["claimed"] == limit, "replays took slots")
        check({k: v for k, v in w.sw_tags(w.instances["d-attacked"]).items() if k.startswith(f"{SW}saved-groups:")}
              == st["saved"], "saved groups changed")
        return Note(f"d-attacked already handled (tag command-id = this id): nothing changed, no 'quarantined' "
                    f"notification; exempt/held notified again: {evs}")

    case("direct: a plain replay quarantines nothing twice and takes no slot", plain_replay, show=[])

    def release_direct() -> Note:
        attacked = w.instances["d-attacked"]
        p = subprocess.run([w.bin, "release", attacked, "--direct", "--topic-arn", w.topic, "--requested-by", "e2e"],
                           env=w.worker_env(), capture_output=True, text=True, timeout=90)
        check(p.returncode == 0, f"release --direct exit {p.returncode}: {p.stderr.strip()[-800:]}")
        after = w.interface_groups(attacked)
        notes = []
        for eni, orig in w.original[attacked].items():
            if sorted(after[eni]) == sorted(orig):
                continue
            check(set(orig) <= set(after[eni]) and q not in after[eni], f"{eni}: {after[eni]}, want {orig}")
            notes.append(f"{eni} shows {[w.sg_names.get(g, g) for g in after[eni]]} (moto adds launch groups)")
        check(not w.sw_tags(attacked), f"sshwarden tags left: {w.sw_tags(attacked)}")
        msgs = take(lambda m: m.get("instance_id") == attacked and m.get("event") == "released", 1, 10)
        check(len(msgs) == 1, "no 'released' notification")
        req = msgs[0]["parsed"].get("request", {})
        check(req.get("requested_by") == "e2e", f"request {req}")
        return Note(f"exit 0; {'; '.join(notes) or 'every interface back in its saved groups'}; tags removed; "
                    "'released' notification")

    case("direct: sshwarden release --direct restores the saved groups", release_direct, show=[])

    def unknown_instance() -> Note:
        # A log stream named like an instance that does not exist: the
        # quarantine cannot succeed on retry, so it is notified as failed and
        # the command counts as handled (the shard is not stalled).
        ghost = "i-0dead00000000beef"
        gname, ggroup = f"{PREFIX}-direct-ghost", f"/{PREFIX}/direct-ghost"
        arn = w.stream(gname, 1)
        w.logs.create_log_group(logGroupName=ggroup)
        w.cleanup.append(lambda: w.logs.delete_log_group(logGroupName=ggroup))
        w.logs.create_log_stream(logGroupName=ggroup, logStreamName=ghost)
        w.logs.put_subscription_filter(logGroupName=ggroup, filterName="sshwarden", filterPattern="",
                                       destinationArn=arn, roleArn=FILTER_ROLE, distribution="ByLogStream")
        w.host[ghost] = "ip-10-77-9-99"
        t0 = in_one_window(60_000, 8 * 100, back_ms=3_000)
        w.logs.put_log_events(logGroupName=ggroup, logStreamName=ghost, logEvents=[
            {"timestamp": t, "message": m} for t, m in w.attack_lines(ghost, t0, step_ms=100)])
        want = f"sw1-i-{ghost}-invalid-user-{window_start(t0, 60_000) // 1000}"
        wk, got = run_worker("d4", stream=gname, n=1, blast_max=0)
        check([g.get("id") for g in got] == [want], f"delivered {got}")
        failed = [e for e in wk.logs() if "refused by a target check" in str(e.get("fields", {}).get("message"))]
        check(len(failed) == 1, f"'quarantine refused' log entries: {failed}")
        msgs = take(lambda m: m.get("command", {}).get("id") == want, 1, 10)
        check(len(msgs) == 1, "no notification for the unknown instance")
        m = msgs[0]
        check(m["parsed"].get("event") == "refused"
              and m.get("Subject") == f"sshwarden: not quarantined {ghost} (target check failed)", f"{m['parsed']}")
        refused = m["parsed"].get("checks", {}).get("refused", "")
        check("no instance" in refused, f"checks {m['parsed'].get('checks')}")
        return Note(f"'refused' notification ({refused}), command handled once, no retry loop, no slot")

    case("direct: an unknown instance → 'refused' notification, the command is not retried forever",
         unknown_instance, show=[])


def outage_case(w: E2E, state: dict, case: Callable[..., bool]) -> None:
    outage = w.instances["outage"]
    wait = w.args.wait
    port = free_port()
    sfn_url = f"http://127.0.0.1:{port}"
    name = f"{PREFIX}-outage"
    group = f"/{PREFIX}/outage"
    table = f"{PREFIX}-leases-3"
    window = 10_000

    def setup() -> Note:
        arn = w.stream(name, 1)
        w.log_group(group, arn, ["outage", "outage2"])
        check(not port_open(port), f"port {port} is taken")
        return Note(f"stream {name} (1 shard), log group {group}; Step Functions endpoint {sfn_url} (nothing listening)")

    if not case("outage: a separate stream and log group; Step Functions pointed at a dead port", setup, show=[]):
        return

    # Short windows so the checkpoint can move within the test (it stays
    # behind every record whose window is open).
    w3 = w.worker("w3", stream=name, table=table, sfn_endpoint=sfn_url,
                  global_flags=["--window-secs", "10", "--allowed-lateness-secs", "2"],
                  run_flags=["--checkpoint-ms", "1000"])

    def held_back() -> Note:
        w.wait_leases(w3, 1)
        # 8 lines 100 ms apart, ending about 0.8 s ago: well inside the idle
        # watermark (now - 2 x lateness = now - 4 s), which would count older
        # lines as late.
        t0 = in_one_window(window, 8 * 100, back_ms=1_500)
        state["outage_window"] = window_start(t0, window)
        w.put_lines(group, "outage", w.attack_lines("outage", t0, step_ms=100))
        t_put = time.monotonic()
        wait_for("command_failures_total > 0", lambda: w3.metric_sum("sshwarden_command_failures_total") > 0, 20)
        # The bound of the brief: about 5 s after the attack, still nothing.
        time.sleep(max(0.0, 5.0 - (time.monotonic() - t_put)))
        m = w3.metrics()
        failures = w3.metric_sum("sshwarden_command_failures_total", m)
        pending = w3.metric_sum("sshwarden_commands_pending", m)
        check(failures > 0, f"command_failures_total {failures}")
        check(pending >= 1, f"commands_pending {pending}")
        check(not [e for e in w.executions() if outage in e["name"]], "an execution exists on the main moto")
        leases = w.lease_items(table)
        check(len(leases) == 1 and leases[0]["checkpoint"] == "TRIM_HORIZON", f"lease {leases}")
        warned = w3.events("command delivery failed; retrying, checkpoint held")
        check(bool(warned), "no 'command delivery failed' log entry")
        check(w.interface_groups(outage) == w.original[outage], "the outage instance changed without Step Functions")
        state["failures_during_outage"] = failures
        # A second attack while the first command waits: the shard is still
        # read, the second command is detected and waits too (before #16
        # finding 7 the reader stopped at the first command).
        records_before = w3.metric_sum("sshwarden_records_total")
        t1 = in_one_window(window, 8 * 100, back_ms=1_500)
        state["outage2_window"] = window_start(t1, window)
        w.put_lines(group, "outage2", w.attack_lines("outage2", t1, step_ms=100))
        wait_for("a second command waiting (commands_pending >= 2)",
                 lambda: w3.metric_sum("sshwarden_commands_pending") >= 2, 30)
        records_after = w3.metric_sum("sshwarden_records_total")
        check(records_after > records_before, f"records_total {records_before} -> {records_after}")
        leases = w.lease_items(table)
        check(leases[0]["checkpoint"] == "TRIM_HORIZON", f"lease {leases}")
        return Note(f"{time.monotonic() - t_put:.1f} s after PutLogEvents: command_failures_total={failures:.0f}, "
                    f"commands_pending={pending:.0f}, no execution, checkpoint still TRIM_HORIZON; "
                    f"a second attack during the outage read ({records_before:.0f} -> {records_after:.0f} records) "
                    f"and its command waiting too (pending 2); log: {str(warned[0].get('error'))[:100]}")

    if not case("outage: the command is held, the checkpoint stays at TRIM_HORIZON", held_back, show=[w3]):
        return

    def recovered() -> Note:
        # A second moto on the dead port, by PID. MOTO_PORT points its Step
        # Functions task calls (EC2, SNS) at the main moto, where the instance
        # and the topic live.
        moto_bin = str(Path(sys.executable).parent / "moto_server")
        log = open(w.workdir / "moto-sfn.log", "wb")  # noqa: SIM115 - closed with the process
        env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
        env["MOTO_PORT"] = str(w.moto_port)
        p = subprocess.Popen([moto_bin, "-H", "127.0.0.1", "-p", str(port)], env=env, stdin=subprocess.DEVNULL,
                             stdout=log, stderr=subprocess.STDOUT)
        w.extra_procs.append((f"moto_server on {port}", p))
        t_up = time.monotonic()

        def answers() -> bool:
            check(p.poll() is None, f"second moto exited {p.returncode}")
            try:
                with urllib.request.urlopen(f"{sfn_url}/moto-api/", timeout=1):  # noqa: S310
                    return True
            except (urllib.error.URLError, OSError):
                return False

        wait_for(f"moto on {port}", answers, 30)
        req = urllib.request.Request(f"{sfn_url}/moto-api/config",
                                     data=json.dumps({"stepfunctions": {"execute_state_machine": True}}).encode(),
                                     headers={"Content-Type": "application/json"}, method="POST")
        with urllib.request.urlopen(req, timeout=5):  # noqa: S310
            pass
        sfn2 = boto3.client("stepfunctions", endpoint_url=sfn_url, aws_access_key_id="testing",
                            aws_secret_access_key="testing", config=smt.CONFIG)
        mname, definition = w.machine_def["quarantine"]
        arn = sfn2.create_state_machine(name=mname, definition=definition, roleArn=smt.ROLE_ARN,
                                        type="STANDARD")["stateMachineArn"]
        check(arn == w.machine["quarantine"], f"ARN on the second moto {arn} != {w.machine['quarantine']}")
        t_sm = time.monotonic()

        def execution() -> list[dict]:
            check(w3.alive(), f"w3 exited with {w3.proc.returncode}")
            return [e for e in w.executions(arn, client=sfn2) if outage in e["name"]]

        ex = wait_for("the held command's execution on the second moto", execution, wait)
        t_ex = time.monotonic()
        check(len(ex) == 1, f"{len(ex)} executions: {ex}")
        outage2 = w.instances["outage2"]
        want2 = f"sw1-i-{outage2}-invalid-user-{state['outage2_window'] // 1000}"
        ex2 = wait_for("the second held command's execution",
                       lambda: [e for e in w.executions(arn, client=sfn2) if e["name"] == want2], wait)
        want = f"sw1-i-{outage}-invalid-user-{state['outage_window'] // 1000}"
        check(ex[0]["name"] == want, f"execution {ex[0]['name']!r}, want {want!r}")
        delivered = wait_for("w3 'command delivered'", lambda: w3.events("command delivered"), 10)
        check(delivered[0].get("already_handled") is False, f"{delivered[0]}")

        def advanced() -> str | None:
            items = w.lease_items(table)
            cp = items[0]["checkpoint"] if items else None
            return cp if cp and cp != "TRIM_HORIZON" else None

        cp = wait_for("the checkpoint advancing past TRIM_HORIZON", advanced, 45)
        t_cp = time.monotonic()
        d = w.wait_execution_end(ex[0]["executionArn"], client=sfn2)
        w.expect_status(d, "SUCCEEDED")
        groups = w.interface_groups(outage)
        check(all(w.quarantine in g for g in groups.values()), f"outage instance groups {groups}")
        env_msg = w.message_for(d["executionArn"], wait=15)
        check(env_msg["parsed"]["event"] == "quarantined" and env_msg["parsed"]["instance_id"] == outage,
              f"{env_msg['parsed']}")
        d2 = w.wait_execution_end(ex2[0]["executionArn"], client=sfn2)
        w.expect_status(d2, "SUCCEEDED")
        msg2 = w.message_for(d2["executionArn"], wait=15)["parsed"]
        check(msg2["event"] == "quarantined" and msg2["instance_id"] == outage2, f"{msg2}")
        wait_for("commands_pending 0", lambda: w3.metric_sum("sshwarden_commands_pending") == 0, 15)
        return Note(f"moto (pid {p.pid}) up in {t_sm - t_up:.1f} s; execution {want} {t_ex - t_sm:.1f} s after the "
                    f"machine existed, SUCCEEDED (tasks ran against the main moto: instance quarantined, notified); "
                    f"checkpoint {cp} {t_cp - t_sm:.1f} s after; "
                    f"failures before recovery {w3.metric_sum('sshwarden_command_failures_total'):.0f}")

    case("outage: Step Functions back (a second moto, same ARN): the execution starts and the checkpoint advances",
         recovered, show=[w3])


# ---------------------------------------------------------------- main

def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--bin", required=True, help="the sshwarden binary")
    ap.add_argument("--moto", default="http://127.0.0.1:5000")
    ap.add_argument("--definitions", default=str(Path(__file__).resolve().parents[2] / "infra" / "statemachines"))
    ap.add_argument("--workdir", default=None,
                    help="worker logs [a fresh directory under /tmp, removed after a run without failures]")
    ap.add_argument("--wait", type=float, default=90.0, help="bound on each wait for the worker (s), at most 90")
    ap.add_argument("--skip-outage", action="store_true", help="skip the Step Functions outage case")
    ap.add_argument("--only-direct", action="store_true", help="run only the --sink direct pass")
    ap.add_argument("--skip-direct", action="store_true",
                    help="skip the --sink direct pass (for a binary built without --features direct)")
    ap.add_argument("--keep", action="store_true", help="leave the resources in moto")
    ap.add_argument("--summary", default=None, help="write 'N M' (passed, failed) to this file")
    args = ap.parse_args()
    args.wait = min(args.wait, 90.0)
    own_workdir = args.workdir is None
    if own_workdir:
        import tempfile
        args.workdir = tempfile.mkdtemp(prefix=f"sshwarden-e2e-{RUN}-")
    host = urllib.parse.urlparse(args.moto).hostname
    if host not in ("127.0.0.1", "localhost", "::1"):
        print(f"refusing a non-loopback moto URL {args.moto}", file=sys.stderr)
        return 2

    w = E2E(args)
    print(f"end-to-end remediation against {args.moto} (run {RUN}); worker logs in {args.workdir}", flush=True)
    t_start = time.monotonic()
    try:
        w.enable_execution()
        ready = all(
            smt.case(n, f) is not None
            for n, f in [
                ("setup: network and security groups", w.network),
                ("setup: quarantine group from infra/quarantine-sg.yaml (no ingress, no egress v4/v6)", w.quarantine_group),
                ("setup: SNS topic with an SQS queue subscribed", w.notifications),
                ("setup: instances (attacked, benign, benign2, allowlisted, outage)", w.fleet),
                ("setup: quarantine and release machines from infra/ (placeholders substituted)", w.e2e_machines),
                ("setup: log group, one log stream per instance, subscription filter -> Kinesis", w.pipeline),
            ]
        )
        if ready:
            run_cases(w)
    except KeyboardInterrupt:
        smt.results.append(("FAIL", "interrupted", 0.0, ""))
    finally:
        w.teardown_processes()
        if not args.keep:
            w.teardown()

    passed = sum(1 for r in smt.results if r[0] == "ok")
    failed = len(smt.results) - passed
    if smt.deviations:
        print("\nmoto deviations seen in this run:")
        for d in smt.deviations:
            print(f"  - {d}")
    print(f"\ne2e remediation: {passed} passed, {failed} failed in {time.monotonic() - t_start:.1f} s "
          f"(worker logs: {args.workdir})", flush=True)
    if args.summary:
        Path(args.summary).write_text(f"{passed} {failed}\n")
    if failed == 0 and own_workdir and not args.keep:
        import shutil
        shutil.rmtree(args.workdir, ignore_errors=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
