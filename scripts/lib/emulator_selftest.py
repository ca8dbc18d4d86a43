#!/usr/bin/env python3
"""Smoke test of the local AWS emulators, run by `scripts/emulators selftest`.

It exercises the calls sshwarden depends on, against moto server and
kinesis-local on 127.0.0.1, with boto3 from the emulator venv, and prints how
long each call took. Every wait is bounded; names are unique per run so the
checks can be repeated against long-running emulators, and what a run creates
is deleted at the end.

Usage: emulator_selftest.py [--moto URL] [--kinesis URL] [--only moto|kinesis]
"""

from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import shutil
import subprocess
import sys
import time
import traceback
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import boto3
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.eventstream import EventStreamBuffer
from botocore.exceptions import ClientError

REGION = "us-east-1"
# moto accepts any credentials; kinesis-local reads an account id from a
# 12-digit access key, and falls back to its default account otherwise.
KEY, SECRET = "testing", "testing"
# Fail fast: no SDK retries, short timeouts. Polls below are explicit.
CONFIG = Config(
    region_name=REGION,
    connect_timeout=2,
    read_timeout=15,
    retries={"max_attempts": 1, "mode": "standard"},
)
RUN = f"{int(time.time())}-{os.getpid()}"

results: list[tuple[str, str, float, str]] = []  # (status, name, ms, note)


class Note(str):
    """A check returns a Note to have it printed beside its timing."""


def client(service: str, url: str) -> Any:
    return boto3.client(
        service,
        endpoint_url=url,
        aws_access_key_id=KEY,
        aws_secret_access_key=SECRET,
        config=CONFIG,
    )


def step(name: str, fn: Callable[[], Any]) -> Any:
    """Run one check, time it, record the outcome; re-raise on failure so the
    dependent checks after it in the same group are skipped."""
    t0 = time.perf_counter()
    try:
        out = fn()
    except Exception as exc:
        ms = (time.perf_counter() - t0) * 1000
        results.append(("FAIL", name, ms, f"{type(exc).__name__}: {exc}"))
        print(f"FAIL {ms:9.1f} ms  {name}: {type(exc).__name__}: {exc}", flush=True)
        raise
    ms = (time.perf_counter() - t0) * 1000
    note = out if isinstance(out, Note) else ""
    results.append(("ok", name, ms, note))
    print(f"ok   {ms:9.1f} ms  {name}{'  (' + note + ')' if note else ''}", flush=True)
    return out


def poll(what: str, fn: Callable[[], Any], timeout: float = 20.0, every: float = 0.1) -> Any:
    """Call fn until it returns something truthy, at most `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        got = fn()
        if got:
            return got
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what}: not done after {timeout:.0f} s")
        time.sleep(every)


def expect_error(code: str, fn: Callable[[], Any]) -> str:
    try:
        fn()
    except ClientError as exc:
        got = exc.response["Error"]["Code"]
        if got != code:
            raise AssertionError(f"expected {code}, got {got}") from exc
        return Note(f"got {code}")
    raise AssertionError(f"expected {code}, the call succeeded")


def check(cond: bool, msg: str) -> None:
    if not cond:
        raise AssertionError(msg)


def expect_data(page: dict[str, Any], data: bytes) -> dict[str, Any]:
    got = [r["Data"] for r in page["Records"]]
    check(got == [data], f"records {got}, expected [{data!r}]")
    return page


# --------------------------------------------------------------------- moto


def moto_dynamodb(url: str) -> None:
    ddb = client("dynamodb", url)
    table = f"sshwarden-selftest-leases-{RUN}"
    step(
        "moto dynamodb CreateTable",
        lambda: ddb.create_table(
            TableName=table,
            KeySchema=[{"AttributeName": "leaseKey", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "leaseKey", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        ),
    )
    try:
        step(
            "moto dynamodb wait ACTIVE",
            lambda: poll(
                "table ACTIVE",
                lambda: ddb.describe_table(TableName=table)["Table"]["TableStatus"] == "ACTIVE",
            ),
        )
        item = {
            "leaseKey": {"S": "shardId-000000000000"},
            "leaseOwner": {"S": "worker-a"},
            "leaseCounter": {"N": "1"},
        }
        step(
            "moto dynamodb PutItem if absent",
            lambda: ddb.put_item(
                TableName=table, Item=item, ConditionExpression="attribute_not_exists(leaseKey)"
            ),
        )
        step(
            "moto dynamodb PutItem if absent again -> rejected",
            lambda: expect_error(
                "ConditionalCheckFailedException",
                lambda: ddb.put_item(
                    TableName=table, Item=item, ConditionExpression="attribute_not_exists(leaseKey)"
                ),
            ),
        )
        # A lease renewal: bump the counter only if nobody else did.
        renew = dict(
            TableName=table,
            Key={"leaseKey": {"S": "shardId-000000000000"}},
            UpdateExpression="SET leaseCounter = leaseCounter + :one",
            ConditionExpression="leaseCounter = :expected AND leaseOwner = :me",
            ExpressionAttributeValues={
                ":one": {"N": "1"},
                ":expected": {"N": "1"},
                ":me": {"S": "worker-a"},
            },
        )
        step("moto dynamodb UpdateItem conditional (renew)", lambda: ddb.update_item(**renew))
        step(
            "moto dynamodb UpdateItem stale counter -> rejected",
            lambda: expect_error("ConditionalCheckFailedException", lambda: ddb.update_item(**renew)),
        )
        step(
            "moto dynamodb TransactWriteItems conditional",
            lambda: ddb.transact_write_items(
                TransactItems=[
                    {
                        "Put": {
                            "TableName": table,
                            "Item": {"leaseKey": {"S": "shardId-000000000001"}},
                            "ConditionExpression": "attribute_not_exists(leaseKey)",
                        }
                    },
                    {
                        "ConditionCheck": {
                            "TableName": table,
                            "Key": {"leaseKey": {"S": "shardId-000000000000"}},
                            "ConditionExpression": "leaseCounter = :two",
                            "ExpressionAttributeValues": {":two": {"N": "2"}},
                        }
                    },
                ]
            ),
        )

        def get_item() -> Note:
            got = ddb.get_item(
                TableName=table,
                Key={"leaseKey": {"S": "shardId-000000000000"}},
                ConsistentRead=True,
            )["Item"]
            check(got["leaseCounter"]["N"] == "2", f"leaseCounter is {got['leaseCounter']}")
            return Note("leaseCounter 2")

        step("moto dynamodb GetItem (consistent)", get_item)
    finally:
        ddb.delete_table(TableName=table)


def moto_kinesis(url: str) -> None:
    kin = client("kinesis", url)
    stream = f"sshwarden-selftest-{RUN}"
    step("moto kinesis CreateStream", lambda: kin.create_stream(StreamName=stream, ShardCount=1))
    try:
        step(
            "moto kinesis wait ACTIVE",
            lambda: poll(
                "stream ACTIVE",
                lambda: (
                    kin.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamStatus"]
                    == "ACTIVE"
                ),
            ),
        )
        put = step(
            "moto kinesis PutRecord",
            lambda: kin.put_record(StreamName=stream, Data=b"hello moto", PartitionKey="i-0abc"),
        )
        it = step(
            "moto kinesis GetShardIterator",
            lambda: kin.get_shard_iterator(
                StreamName=stream, ShardId=put["ShardId"], ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"],
        )
        step("moto kinesis GetRecords", lambda: expect_data(kin.get_records(ShardIterator=it), b"hello moto"))
    finally:
        kin.delete_stream(StreamName=stream, EnforceConsumerDeletion=True)


def moto_sns_stepfunctions(url: str) -> None:
    sns = client("sns", url)
    sfn = client("stepfunctions", url)
    topic = step(
        "moto sns CreateTopic",
        lambda: sns.create_topic(Name=f"sshwarden-selftest-{RUN}")["TopicArn"],
    )
    machine_arn = None
    try:
        step("moto sns Publish", lambda: sns.publish(TopicArn=topic, Message="selftest"))
        # A Pass state plus an SDK integration, as the quarantine machine uses.
        definition = {
            "StartAt": "Note",
            "States": {
                "Note": {"Type": "Pass", "Result": {"ok": True}, "ResultPath": "$.note", "Next": "Notify"},
                "Notify": {
                    "Type": "Task",
                    "Resource": "arn:aws:states:::sns:publish",
                    "Parameters": {"TopicArn": topic, "Message.$": "$.instance"},
                    "ResultPath": "$.published",
                    "End": True,
                },
            },
        }
        machine_arn = step(
            "moto stepfunctions CreateStateMachine",
            lambda: sfn.create_state_machine(
                name=f"sshwarden-selftest-{RUN}",
                definition=json.dumps(definition),
                roleArn="arn:aws:iam::123456789012:role/sshwarden-selftest",
            )["stateMachineArn"],
        )
        run_input = json.dumps({"instance": "i-0123456789abcdef0"})
        name = "sw1-i-0123456789abcdef0-invalid-user-1700000040"
        exec_arn = step(
            "moto stepfunctions StartExecution",
            lambda: sfn.start_execution(stateMachineArn=machine_arn, name=name, input=run_input)[
                "executionArn"
            ],
        )

        def start_again() -> None:
            same = sfn.start_execution(stateMachineArn=machine_arn, name=name, input=run_input)
            check(same["executionArn"] == exec_arn, f"{same['executionArn']} != {exec_arn}")

        step("moto stepfunctions StartExecution same name+input -> same execution", start_again)
        step(
            "moto stepfunctions StartExecution same name, other input -> rejected",
            lambda: expect_error(
                "ExecutionAlreadyExists",
                lambda: sfn.start_execution(stateMachineArn=machine_arn, name=name, input="{}"),
            ),
        )

        # Only runs when /moto-api/config enabled execute_state_machine before
        # the machine was created; otherwise it stays RUNNING for ever.
        def finished() -> Note:
            status = poll(
                "execution finished (is execute_state_machine on?)",
                lambda: (lambda s: s if s != "RUNNING" else None)(
                    sfn.describe_execution(executionArn=exec_arn)["status"]
                ),
                timeout=20,
                every=0.2,
            )
            check(status == "SUCCEEDED", f"execution ended {status}")
            return Note(status)

        step("moto stepfunctions execution SUCCEEDED (Pass + sns:publish)", finished)
    finally:
        if machine_arn:
            sfn.delete_state_machine(stateMachineArn=machine_arn)
        sns.delete_topic(TopicArn=topic)


# ------------------------------------------------------------ kinesis-local


def stream_status(kin: Any, stream: str) -> str:
    return kin.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamStatus"]


def kinesis_local(url: str) -> None:
    kin = client("kinesis", url)
    stream = f"sshwarden-selftest-{RUN}"
    step("kinesis-local CreateStream", lambda: kin.create_stream(StreamName=stream, ShardCount=1))
    try:
        step(
            "kinesis-local wait ACTIVE (CREATING first)",
            lambda: poll("stream ACTIVE", lambda: stream_status(kin, stream) == "ACTIVE"),
        )
        put = step(
            "kinesis-local PutRecord",
            lambda: kin.put_record(StreamName=stream, Data=b"before split", PartitionKey="i-0abc"),
        )
        parent = put["ShardId"]
        it = step(
            "kinesis-local GetShardIterator",
            lambda: kin.get_shard_iterator(
                StreamName=stream, ShardId=parent, ShardIteratorType="TRIM_HORIZON"
            )["ShardIterator"],
        )
        got = step(
            "kinesis-local GetRecords",
            lambda: expect_data(kin.get_records(ShardIterator=it), b"before split"),
        )

        shard = kin.list_shards(StreamName=stream)["Shards"][0]
        lo = int(shard["HashKeyRange"]["StartingHashKey"])
        hi = int(shard["HashKeyRange"]["EndingHashKey"])
        step(
            "kinesis-local SplitShard",
            lambda: kin.split_shard(
                StreamName=stream, ShardToSplit=parent, NewStartingHashKey=str((lo + hi) // 2 + 1)
            ),
        )
        step(
            "kinesis-local wait ACTIVE after split",
            lambda: poll("stream ACTIVE", lambda: stream_status(kin, stream) == "ACTIVE"),
        )
        children: list[str] = []

        def list_shards() -> Note:
            shards = kin.list_shards(StreamName=stream)["Shards"]
            children[:] = [s["ShardId"] for s in shards if s.get("ParentShardId") == parent]
            closed = [s for s in shards if s["ShardId"] == parent]
            check(len(children) == 2, f"children of {parent}: {shards}")
            check(
                bool(closed) and "EndingSequenceNumber" in closed[0]["SequenceNumberRange"],
                f"parent not closed: {closed}",
            )
            return Note(f"{parent} closed, children {', '.join(sorted(children))}")

        step("kinesis-local ListShards shows parent + children", list_shards)

        # Writes after the split go to a child; the parent reaches SHARD_END.
        put2 = step(
            "kinesis-local PutRecord after split",
            lambda: kin.put_record(StreamName=stream, Data=b"after split", PartitionKey="i-0abc"),
        )
        check(put2["ShardId"] in children, f"landed in {put2['ShardId']}, not a child")

        def drain_parent() -> Note:
            nxt = got.get("NextShardIterator")
            for _ in range(10):
                check(nxt is not None, "closed shard ended without ChildShards")
                page = kin.get_records(ShardIterator=nxt)
                check(not page["Records"], f"new records in a closed shard: {page['Records']}")
                if page.get("ChildShards"):
                    check(page.get("NextShardIterator") is None, "closed shard has a next iterator")
                    kids = sorted(c["ShardId"] for c in page["ChildShards"])
                    return Note("no NextShardIterator, ChildShards " + ", ".join(kids))
                nxt = page.get("NextShardIterator")
                time.sleep(0.2)  # 5 GetRecords/s per shard
            raise AssertionError("parent shard never reached SHARD_END")

        step("kinesis-local GetRecords on parent reaches SHARD_END", drain_parent)

        other = next(c for c in children if c != put2["ShardId"])
        subscribe_checks(kin, url, stream, put2["ShardId"], other)
    finally:
        kin.delete_stream(StreamName=stream, EnforceConsumerDeletion=True)


def signed_subscribe(url: str, body: bytes) -> dict[str, str]:
    """SigV4 headers for a raw SubscribeToShard request (JSON 1.1, like the
    Rust SDK)."""
    req = AWSRequest(
        method="POST",
        url=url.rstrip("/") + "/",
        data=body,
        headers={
            "Content-Type": "application/x-amz-json-1.1",
            "X-Amz-Target": "Kinesis_20131202.SubscribeToShard",
        },
    )
    SigV4Auth(Credentials(KEY, SECRET), "kinesis", REGION).add_auth(req)
    return dict(req.headers.items())


def subscribe_checks(kin: Any, url: str, stream: str, shard_id: str, other_shard: str) -> None:
    """SubscribeToShard on `shard_id` (holding b"after split") over HTTP/1.1,
    then on `other_shard` over h2c: kinesis-local refuses a second live
    subscription of one consumer to one shard (ResourceInUseException), and
    it notices a closed connection only later, as AWS does."""
    arn = kin.describe_stream_summary(StreamName=stream)["StreamDescriptionSummary"]["StreamARN"]
    consumer = step(
        "kinesis-local RegisterStreamConsumer",
        lambda: kin.register_stream_consumer(StreamARN=arn, ConsumerName=f"selftest-{RUN}")["Consumer"][
            "ConsumerARN"
        ],
    )
    step(
        "kinesis-local wait consumer ACTIVE",
        lambda: poll(
            "consumer ACTIVE",
            lambda: (
                kin.describe_stream_consumer(ConsumerARN=consumer)["ConsumerDescription"]["ConsumerStatus"]
                == "ACTIVE"
            ),
        ),
    )

    def subscribe_body(shard: str) -> bytes:
        return json.dumps(
            {"ConsumerARN": consumer, "ShardId": shard, "StartingPosition": {"Type": "TRIM_HORIZON"}}
        ).encode()

    body = subscribe_body(shard_id)
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80

    # HTTP/1.1: the event stream comes as a chunked body, one
    # SubscribeToShardEvent about every second, with no initial-response
    # event before the first one.
    def http1() -> Note:
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("POST", "/", body=body, headers=signed_subscribe(url, body))
            resp = conn.getresponse()
            if resp.status != 200:
                raise AssertionError(f"HTTP {resp.status}: {resp.read(300)!r}")
            buf = EventStreamBuffer()
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                chunk = resp.read1(65536)
                check(bool(chunk), "event stream ended before an event")
                buf.add_data(chunk)
                for msg in buf:
                    kind = msg.headers.get(":event-type")
                    check(kind == "SubscribeToShardEvent", f"first event is {kind}")
                    data = [base64.b64decode(r["Data"]) for r in json.loads(msg.payload)["Records"]]
                    check(data == [b"after split"], f"first event holds {data}")
                    framing = resp.getheader("Transfer-Encoding")
                    return Note(f"HTTP/1.{resp.version % 10} {framing}, first event has the record")
            raise TimeoutError("no event within 5 s")
        finally:
            conn.close()

    step("kinesis-local SubscribeToShard over HTTP/1.1", http1)

    # The same call as HTTP/2 without TLS (h2c, prior knowledge), as hyper
    # does when told http2_only. curl does the HTTP/2; botocore only signs.
    curl = shutil.which("curl")
    if curl is None:
        results.append(("skip", "kinesis-local SubscribeToShard over h2c", 0.0, "no curl"))
        print("skip              kinesis-local SubscribeToShard over h2c (no curl)")
    else:
        shard = next(s for s in kin.list_shards(StreamName=stream)["Shards"] if s["ShardId"] == other_shard)
        kin.put_record(
            StreamName=stream,
            Data=b"other child",
            PartitionKey="i-0def",
            ExplicitHashKey=shard["HashKeyRange"]["StartingHashKey"],
        )
        body2 = subscribe_body(other_shard)

        def h2c() -> Note:
            # -N: pass each event on at once; read until the record shows up,
            # then end curl (the event stream itself never ends).
            cmd = [curl, "-sS", "-N", "--http2-prior-knowledge", "--max-time", "8", "-D", "-"]
            for k, v in signed_subscribe(url, body2).items():
                cmd += ["-H", f"{k}: {v}"]
            cmd += ["--data-binary", body2.decode(), url.rstrip("/") + "/"]
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            out = b""
            try:
                assert proc.stdout is not None
                while base64.b64encode(b"other child") not in out:
                    chunk = proc.stdout.read1(65536)  # type: ignore[attr-defined]
                    if not chunk:
                        break
                    out += chunk
            finally:
                proc.kill()
                proc.wait(timeout=5)
            check(out.startswith(b"HTTP/2 200"), f"head={out[:200]!r} err={proc.stderr.read(200)!r}")  # type: ignore[union-attr]
            check(b"SubscribeToShardEvent" in out, f"no event in {out[:400]!r}")
            check(base64.b64encode(b"other child") in out, f"the record is not in {out[:600]!r}")
            return Note("HTTP/2 200, event has the record")

        step("kinesis-local SubscribeToShard over h2c", h2c)

    # botocore insists on an initial-response event first; kinesis-local sends
    # none. Recorded, not failed: it tells when either side changes. (The
    # parent shard: the children still count as subscribed.)
    def botocore_subscribe() -> Note:
        try:
            resp = kin.subscribe_to_shard(
                ConsumerARN=consumer,
                ShardId=kin.list_shards(StreamName=stream)["Shards"][0]["ShardId"],
                StartingPosition={"Type": "TRIM_HORIZON"},
            )
            resp["EventStream"].close()
            return Note("botocore accepts the stream")
        except Exception as exc:  # ResponseParserError
            return Note(f"botocore rejects it (known): {type(exc).__name__}: {exc}")

    step("kinesis-local SubscribeToShard via boto3", botocore_subscribe)
    kin.deregister_stream_consumer(ConsumerARN=consumer)


# ------------------------------------------------------------------- main


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--moto", default="http://127.0.0.1:5000")
    ap.add_argument("--kinesis", default="http://127.0.0.1:4567")
    ap.add_argument("--only", choices=["moto", "kinesis"])
    args = ap.parse_args()

    groups: list[tuple[str, Callable[[], None]]] = []
    if args.only in (None, "moto"):
        groups += [
            ("moto dynamodb", lambda: moto_dynamodb(args.moto)),
            ("moto kinesis", lambda: moto_kinesis(args.moto)),
            ("moto sns+stepfunctions", lambda: moto_sns_stepfunctions(args.moto)),
        ]
    if args.only in (None, "kinesis"):
        groups += [("kinesis-local", lambda: kinesis_local(args.kinesis))]

    t0 = time.perf_counter()
    for name, run in groups:
        try:
            run()
        except Exception:
            # step() already reported the failing call; a failure outside a
            # step (e.g. cleanup) is printed here.
            if not results or results[-1][0] != "FAIL":
                results.append(("FAIL", name, 0.0, "see traceback"))
                traceback.print_exc()
            print(f"     {name}: skipping the rest of this group", flush=True)
    passed = sum(1 for r in results if r[0] == "ok")
    failed = sum(1 for r in results if r[0] == "FAIL")
    skipped = sum(1 for r in results if r[0] == "skip")
    print(f"\nselftest took {time.perf_counter() - t0:.1f} s")
    print(f"selftest: {passed} passed, {failed} failed, {skipped} skipped")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
