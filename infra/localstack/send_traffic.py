#!/usr/bin/env python3
"""Puts CloudWatch subscription payloads into a Kinesis stream, as the
subscription filter would: one gzip member per record, partition key = the
log stream (the instance), so each instance stays on one shard (ByLogStream).

    sshwarden-loadgen payloads --instances 20 --minutes 5 | send_traffic.py --stream NAME

Reads one JSON envelope per line from stdin (`sshwarden-loadgen payloads`).
PutRecords in batches (at most 500 records and 4 MiB), failed entries are
retried a bounded number of times; prints a JSON summary. The endpoint comes
from --endpoint or AWS_ENDPOINT_URL_KINESIS / AWS_ENDPOINT_URL.

Stand-in until the load generator's own Kinesis writer is here: then
`sshwarden-loadgen` writes to the stream itself.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import sys
import time

import boto3
from botocore.config import Config

MAX_RECORDS = 500
MAX_BYTES = 4 * 1024 * 1024
ATTEMPTS = 8


def send(client, stream: str, batch: list[dict]) -> int:  # noqa: ANN001
    """PutRecords with bounded retries of the failed entries; returns how many were lost."""
    pending = batch
    for attempt in range(ATTEMPTS):
        out = client.put_records(StreamName=stream, Records=pending)
        if not out.get("FailedRecordCount"):
            return 0
        pending = [r for r, res in zip(pending, out["Records"]) if "ErrorCode" in res]
        time.sleep(min(2.0, 0.1 * 2**attempt))
    return len(pending)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--stream", required=True)
    ap.add_argument("--endpoint", default=os.environ.get("AWS_ENDPOINT_URL_KINESIS") or os.environ.get("AWS_ENDPOINT_URL"))
    args = ap.parse_args()
    client = boto3.client("kinesis", endpoint_url=args.endpoint,
                          config=Config(region_name=os.environ.get("AWS_REGION", "us-east-1"), read_timeout=15))
    records = events = lost = 0
    batch: list[dict] = []
    size = 0
    started = time.monotonic()
    for lineno, line in enumerate(sys.stdin, 1):
        line = line.strip()
        if not line:
            continue
        try:
            envelope = json.loads(line)
        except ValueError as e:
            print(f"line {lineno}: not JSON ({e}); skipped", file=sys.stderr)
            continue
        data = gzip.compress(line.encode(), compresslevel=6)
        key = str(envelope.get("logStream") or "unknown")
        if len(batch) == MAX_RECORDS or size + len(data) + len(key) > MAX_BYTES:
            lost += send(client, args.stream, batch)
            batch, size = [], 0
        batch.append({"Data": data, "PartitionKey": key})
        size += len(data) + len(key)
        records += 1
        events += len(envelope.get("logEvents", []))
    if batch:
        lost += send(client, args.stream, batch)
    print(json.dumps({"stream": args.stream, "records": records, "events": events, "lost": lost,
                      "seconds": round(time.monotonic() - started, 2)}))
    return 1 if lost else 0


if __name__ == "__main__":
    sys.exit(main())
