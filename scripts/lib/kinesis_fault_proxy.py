#!/usr/bin/env python3
"""A fault-injecting HTTP proxy in front of a Kinesis emulator, for tests.

Neither emulator throttles or expires iterators, so a test puts this proxy
between a client (`sshwarden run`, the load generator's writer) and
kinesis-local (AWS_ENDPOINT_URL_KINESIS) to exercise its handling of
ProvisionedThroughputExceeded, ExpiredIterator, 5xx answers, connection
resets and PutRecords' per-record failures. Every request is forwarded to
the upstream byte for byte (headers included, so signatures stay valid)
unless the script says to answer a GetRecords or PutRecords call with a
fault instead. Responses are relayed as they come (streamed responses such
as SubscribeToShard's event stream included).

The script (JSON, --script) is a list of rules. A rule without "target" (or
with "target": "GetRecords") applies to GetRecords calls counted per shard
(1-based; the shard is learnt by following iterators from GetShardIterator
and GetRecords answers):

    {"calls": [2, 7], "fault": "throughput"}   calls 2 to 7 of each shard
    {"every": 3, "after": 1, "fault": "expired"}  calls 1+3, 1+6, ... of each shard

A rule with "target": "PutRecords" applies to PutRecords calls, counted
over the whole proxy (1-based, in the order they arrive):

    {"target": "PutRecords", "calls": [1, 4], "fault": "partial", "fail_every": 3}
    {"target": "PutRecords", "calls": [5, 5], "fault": "partial", "fail_first": 2,
     "error": "internal"}
    {"target": "PutRecords", "every": 4, "fault": "throughput"}
    {"target": "PutRecords", "while_exists": "/tmp/flag", "fault": "internal"}
        every call made while that file exists (a test switches the
        fault on and off at the moment it chooses)

Faults: "throughput" (400 ProvisionedThroughputExceededException),
"expired" (400 ExpiredIteratorException; GetRecords only), "internal" (500
InternalFailure), "reset" (the connection is closed without an answer), and
for PutRecords "partial": only some entries are forwarded (every
"fail_every"-th entry and/or the first "fail_first" entries fail), and the
answer is what Kinesis sends for a partly failed call: HTTP 200,
"FailedRecordCount", and "Records" in request order, the forwarded ones with
the upstream's "SequenceNumber" and "ShardId", the failed ones with
"ErrorCode" ("ProvisionedThroughputExceededException", or "InternalFailure"
with "error": "internal") and "ErrorMessage" worded as Kinesis words it (the
shard, when the proxy has seen the stream's ListShards answer). No failed
entry reaches the upstream, so a fault never writes a record. The first rule
that matches a call wins.

Every Kinesis call is logged as one JSON line to --log:
{"t": epoch seconds, "target": "GetRecords", "shard": "shardId-...",
"call": n, "fault": null | name, "status": http status | null, "records": n,
"last_sequence": the last record's sequence number}; a GetShardIterator
line has "shard", "type" and "after" (StartingSequenceNumber). A PutRecords
line has "call" (its number), "fault", "status", "stream", "entries" (how
many), "failed" (indices of the entries that got an ErrorCode, or of all of
them when the whole call failed) and "error_code"; with --log-entries also
"data": each entry's data (UTF-8, replacement characters for other bytes,
first 64 characters), in request order. PutRecords lines are written before
the answer is sent, so a client's next call is always logged after it.

Listens on 127.0.0.1 only, on an ephemeral port written to stdout as
{"port": N}; exits after --max-seconds (bounded, whatever the test does).
Standard library only.
"""

import argparse
import base64
import hashlib
import http.client
import json
import os
import socket
import sys
import threading
import time
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

HOP_BY_HOP = {
    "connection",
    "keep-alive",
    "proxy-connection",
    "transfer-encoding",
    "te",
    "trailer",
    "upgrade",
}

FAULTS = {
    "throughput": (
        400,
        "ProvisionedThroughputExceededException",
        "Rate exceeded for shard in stream (injected by the test proxy).",
    ),
    "expired": (
        400,
        "ExpiredIteratorException",
        "Iterator expired (injected by the test proxy).",
    ),
    "internal": (500, "InternalFailure", "Internal failure (injected by the test proxy)."),
    "reset": None,
}

PUT_FAULTS = {"throughput", "internal", "reset", "partial"}
GET_FAULTS = {"throughput", "expired", "internal", "reset"}

# The per-entry ErrorCode of a partial failure and its message, as Kinesis
# words them (API reference, PutRecordsResultEntry).
ENTRY_ERRORS = {
    "throughput": (
        "ProvisionedThroughputExceededException",
        "Rate exceeded for shard {shard} in stream {stream} under account {account}.",
    ),
    "internal": ("InternalFailure", "Internal Service Failure"),
}


def matching_rule(rules, call):
    """The first rule naming call number `call`, or None."""
    for rule in rules:
        if "calls" in rule:
            lo, hi = rule["calls"]
            if lo <= call <= hi:
                return rule
        elif "every" in rule:
            after = rule.get("after", 0)
            if call > after and (call - after) % rule["every"] == 0:
                return rule
        elif "while_exists" in rule:
            if os.path.exists(rule["while_exists"]):
                return rule
    return None


def failed_entries(rule, n):
    """Indices (0-based) of the n entries a "partial" rule fails."""
    every = rule.get("fail_every", 0)
    first = rule.get("fail_first", 0)
    return [i for i in range(n) if i < first or (every and (i + 1) % every == 0)]


def entry_text(record):
    """An entry's data for the log: UTF-8 (lossy), first 64 characters."""
    try:
        data = base64.b64decode(record.get("Data") or "")
    except (ValueError, TypeError):
        return None
    return data.decode("utf-8", "replace")[:64]


def stream_name(request):
    name = request.get("StreamName")
    if not name and request.get("StreamARN"):
        name = str(request["StreamARN"]).rsplit("/", 1)[-1]
    return name


class State:
    """Shared by the handler threads: the script, iterator -> shard, counts."""

    def __init__(self, rules, log, log_entries, account):
        self.rules = [r for r in rules if r.get("target", "GetRecords") == "GetRecords"]
        self.put_rules = [r for r in rules if r.get("target") == "PutRecords"]
        self.log = log
        self.log_entries = log_entries
        self.account = account
        self.lock = threading.Lock()
        self.shard_of_iterator = {}
        self.calls = {}
        self.put_calls = 0
        # stream -> [(start, end, shard id)] from ListShards answers, and the
        # stream a ListShards NextToken continues.
        self.ranges = {}
        self.stream_of_token = {}

    def shard(self, iterator):
        with self.lock:
            return self.shard_of_iterator.get(iterator)

    def learn(self, iterator, shard):
        if iterator and shard:
            with self.lock:
                self.shard_of_iterator[iterator] = shard

    def next_call(self, shard):
        with self.lock:
            n = self.calls.get(shard, 0) + 1
            self.calls[shard] = n
            return n

    def fault_for(self, call):
        rule = matching_rule(self.rules, call)
        return rule["fault"] if rule else None

    def next_put(self):
        """The next PutRecords call's number and the rule that applies."""
        with self.lock:
            self.put_calls += 1
            n = self.put_calls
        return n, matching_rule(self.put_rules, n)

    def learn_shards(self, stream, shards):
        if not stream:
            return
        with self.lock:
            known = self.ranges.setdefault(stream, [])
            for sh in shards:
                try:
                    r = sh["HashKeyRange"]
                    known.append((int(r["StartingHashKey"]), int(r["EndingHashKey"]), sh["ShardId"]))
                except (KeyError, TypeError, ValueError):
                    continue

    def shard_of_key(self, stream, entry):
        """The shard Kinesis puts an entry in: MD5 of its key (or its explicit hash key)."""
        try:
            if entry.get("ExplicitHashKey"):
                h = int(entry["ExplicitHashKey"])
            else:
                h = int.from_bytes(hashlib.md5(entry["PartitionKey"].encode()).digest(), "big")
        except (KeyError, TypeError, ValueError, AttributeError):
            return None
        with self.lock:
            # Open shards only would need the sequence ranges; the last
            # match is the newest shard, which is the open one after a split.
            found = [sid for lo, hi, sid in self.ranges.get(stream, []) if lo <= h <= hi]
        return found[-1] if found else None

    def record(self, entry):
        line = json.dumps(entry, separators=(",", ":"))
        with self.lock:
            self.log.write(line + "\n")
            self.log.flush()


def make_handler(state, upstream):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        # One upstream connection per client connection (keep-alive both ways).
        upstream_conn = None

        def log_message(self, fmt, *args):  # quiet: the JSON log says it all
            pass

        def read_body(self):
            if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
                parts = []
                while True:
                    size_line = self.rfile.readline()
                    size = int(size_line.split(b";")[0].strip() or b"0", 16)
                    if size == 0:
                        # trailers until the empty line
                        while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                            pass
                        return b"".join(parts)
                    parts.append(self.rfile.read(size))
                    self.rfile.readline()
            length = int(self.headers.get("Content-Length", "0") or "0")
            return self.rfile.read(length) if length else b""

        def send_fault(self, fault):
            status, kind, message = FAULTS[fault]
            self.send_json(status, {"__type": kind, "message": message})

        def reset(self):
            # RST instead of FIN: SO_LINGER with a zero timeout.
            try:
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00"
                )
            except OSError:
                pass
            self.close_connection = True
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def connect_upstream(self):
            if self.upstream_conn is None:
                self.upstream_conn = http.client.HTTPConnection(
                    upstream.hostname, upstream.port or 80, timeout=330
                )
            return self.upstream_conn

        def do_POST(self):
            self.proxy("POST")

        def do_GET(self):
            self.proxy("GET")

        def send_json(self, status, answer):
            body = json.dumps(answer, separators=(",", ":")).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("x-amzn-RequestId", "fault-proxy-%d" % time.monotonic_ns())
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

        def send_upstream(self, method, body):
            """Sends the request (with `body`) upstream; returns the response."""
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            try:
                conn = self.connect_upstream()
                conn.putrequest(method, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in headers.items():
                    conn.putheader(k, v)
                conn.endheaders(body)
                return conn.getresponse()
            except (OSError, http.client.HTTPException):
                if self.upstream_conn is not None:
                    self.upstream_conn.close()
                    self.upstream_conn = None
                raise

        def done_with_upstream(self, resp):
            if resp.will_close and self.upstream_conn is not None:
                self.upstream_conn.close()
                self.upstream_conn = None

        def put_records(self, method, body, request, entry):
            """A PutRecords call: forwarded, failed as a whole, or in part."""
            records = request.get("Records") or []
            stream = stream_name(request)
            call, rule = state.next_put()
            fault = rule["fault"] if rule else None
            entry.update(call=call, fault=fault, stream=stream, entries=len(records))
            if state.log_entries:
                entry["data"] = [entry_text(r) for r in records]
            if fault == "reset":
                entry.update(status=None, failed=list(range(len(records))))
                state.record(entry)
                self.reset()
                return
            if fault in ("throughput", "internal"):
                entry.update(
                    status=FAULTS[fault][0],
                    failed=list(range(len(records))),
                    error_code=FAULTS[fault][1],
                )
                state.record(entry)
                self.send_fault(fault)
                return
            failed = failed_entries(rule, len(records)) if fault == "partial" else []
            failed_set = set(failed)
            forwarded = [r for i, r in enumerate(records) if i not in failed_set]
            answer = {"FailedRecordCount": 0, "Records": []}
            if forwarded:
                sub = dict(request, Records=forwarded) if failed else request
                try:
                    resp = self.send_upstream(method, json.dumps(sub).encode() if failed else body)
                    data = resp.read()
                except (OSError, http.client.HTTPException) as e:
                    entry.update(status=None, error=str(e))
                    state.record(entry)
                    self.send_error(502, "upstream failed: %s" % e)
                    return
                self.done_with_upstream(resp)
                try:
                    answer = json.loads(data or b"{}")
                except ValueError:
                    answer = None
                got = (answer or {}).get("Records") if isinstance(answer, dict) else None
                if resp.status != 200 or not isinstance(got, list) or len(got) != len(forwarded):
                    # The upstream refused the call as a whole: that is the answer.
                    entry.update(status=resp.status, failed=list(range(len(records))))
                    if isinstance(answer, dict):
                        entry["error_code"] = answer.get("__type")
                    state.record(entry)
                    self.relay_head(resp, len(data))
                    self.wfile.write(data)
                    self.wfile.flush()
                    return
            if not failed:
                entry.update(
                    status=200,
                    failed=[i for i, r in enumerate(answer["Records"]) if r.get("ErrorCode")],
                )
                state.record(entry)
                self.send_json(200, answer)
                return
            code, wording = ENTRY_ERRORS[rule.get("error", "throughput")]
            upstream_results = iter(answer["Records"])
            results = []
            for i, r in enumerate(records):
                if i in failed_set:
                    message = wording.format(
                        shard=state.shard_of_key(stream, r) or "(unknown)",
                        stream=stream,
                        account=state.account,
                    )
                    results.append({"ErrorCode": code, "ErrorMessage": message})
                else:
                    results.append(next(upstream_results))
            answer["Records"] = results
            answer["FailedRecordCount"] = sum(1 for r in results if r.get("ErrorCode"))
            entry.update(
                status=200,
                failed=[i for i, r in enumerate(results) if r.get("ErrorCode")],
                error_code=code,
            )
            state.record(entry)
            self.send_json(200, answer)

        def proxy(self, method):
            body = self.read_body()
            target = self.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1]
            request = {}
            if target in ("GetRecords", "GetShardIterator", "PutRecords", "ListShards"):
                try:
                    request = json.loads(body or b"{}")
                except ValueError:
                    request = None
                if not isinstance(request, dict):
                    # Not JSON (CBOR, say): forwarded untouched, never faulted.
                    request, target = {}, target + "?"
            entry = {"t": time.time(), "target": target or None}
            if target == "PutRecords":
                self.put_records(method, body, request, entry)
                return
            if target == "GetRecords":
                shard = state.shard(request.get("ShardIterator")) or "?"
                call = state.next_call(shard)
                fault = state.fault_for(call)
                entry.update(shard=shard, call=call, fault=fault)
                if fault == "reset":
                    entry["status"] = None
                    state.record(entry)
                    self.reset()
                    return
                if fault:
                    entry["status"] = FAULTS[fault][0]
                    state.record(entry)
                    self.send_fault(fault)
                    return
            elif target == "GetShardIterator":
                entry.update(
                    shard=request.get("ShardId"),
                    type=request.get("ShardIteratorType"),
                    after=request.get("StartingSequenceNumber"),
                )
            try:
                resp = self.send_upstream(method, body)
            except (OSError, http.client.HTTPException) as e:
                entry.update(status=None, error=str(e))
                state.record(entry)
                self.send_error(502, "upstream failed: %s" % e)
                return
            entry["status"] = resp.status
            streamed = resp.getheader("Content-Length") is None
            parsed = ("GetRecords", "GetShardIterator", "ListShards")
            if target in parsed and not streamed:
                data = resp.read()
                try:
                    answer = json.loads(data or b"{}")
                except ValueError:
                    answer = {}
                if not isinstance(answer, dict):
                    answer = {}
                if target == "GetShardIterator":
                    state.learn(answer.get("ShardIterator"), request.get("ShardId"))
                elif target == "ListShards":
                    stream = stream_name(request) or state.stream_of_token.get(
                        request.get("NextToken")
                    )
                    state.learn_shards(stream, answer.get("Shards") or [])
                    if answer.get("NextToken") and stream:
                        state.stream_of_token[answer["NextToken"]] = stream
                else:
                    state.learn(answer.get("NextShardIterator"), entry.get("shard"))
                    records = answer.get("Records") or []
                    entry["records"] = len(records)
                    if records:
                        entry["last_sequence"] = records[-1].get("SequenceNumber")
                self.relay_head(resp, len(data))
                self.wfile.write(data)
            elif not streamed:
                data = resp.read()
                self.relay_head(resp, len(data))
                self.wfile.write(data)
            else:
                self.relay_head(resp, None)
                while True:
                    chunk = resp.read1(65536)
                    if not chunk:
                        break
                    self.wfile.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
                    self.wfile.flush()
                self.wfile.write(b"0\r\n\r\n")
            self.wfile.flush()
            state.record(entry)
            self.done_with_upstream(resp)

        def relay_head(self, resp, length):
            self.send_response_only(resp.status, resp.reason)
            for k, v in resp.getheaders():
                if k.lower() not in HOP_BY_HOP and k.lower() != "content-length":
                    self.send_header(k, v)
            if length is None:
                self.send_header("Transfer-Encoding", "chunked")
            else:
                self.send_header("Content-Length", str(length))
            self.end_headers()

        def finish(self):
            try:
                super().finish()
            finally:
                if self.upstream_conn is not None:
                    self.upstream_conn.close()

    return Handler


def valid_rule(rule):
    if not isinstance(rule, dict) or not ("calls" in rule or "every" in rule or "while_exists" in rule):
        return False
    target = rule.get("target", "GetRecords")
    if "while_exists" in rule and (target != "PutRecords" or not isinstance(rule["while_exists"], str)):
        return False
    if target == "GetRecords":
        return rule.get("fault") in GET_FAULTS
    if target != "PutRecords" or rule.get("fault") not in PUT_FAULTS:
        return False
    if rule["fault"] == "partial":
        every, first = rule.get("fail_every", 0), rule.get("fail_first", 0)
        ok_numbers = all(isinstance(v, int) and v >= 0 for v in (every, first))
        return ok_numbers and (every > 0 or first > 0) and rule.get("error", "throughput") in ENTRY_ERRORS
    return True


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:4567")
    p.add_argument("--script", default="[]", help="JSON list of fault rules")
    p.add_argument("--log", required=True, help="JSON lines, one per Kinesis call")
    p.add_argument("--max-seconds", type=float, default=300, help="exit after this long")
    p.add_argument(
        "--log-entries",
        action="store_true",
        help="log each PutRecords entry's data (first 64 characters)",
    )
    p.add_argument(
        "--account",
        default=os.environ.get("SSHWARDEN_KINESIS_ACCOUNT_ID", "123456789012"),
        help="the account named in throttling messages [SSHWARDEN_KINESIS_ACCOUNT_ID or 123456789012]",
    )
    args = p.parse_args()

    upstream = urllib.parse.urlsplit(args.upstream)
    if upstream.scheme != "http" or upstream.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("kinesis_fault_proxy: --upstream must be http:// on loopback")
    rules = json.loads(args.script)
    for rule in rules:
        if not valid_rule(rule):
            sys.exit("kinesis_fault_proxy: bad rule %r" % (rule,))
    log = open(args.log, "a", encoding="utf-8")
    state = State(rules, log, args.log_entries, args.account)
    server = ThreadingHTTPServer(("127.0.0.1", 0), make_handler(state, upstream))
    server.daemon_threads = True
    print(json.dumps({"port": server.server_address[1], "pid": os.getpid()}), flush=True)
    timer = threading.Timer(args.max_seconds, server.shutdown)
    timer.daemon = True
    timer.start()
    try:
        server.serve_forever(poll_interval=0.2)
    finally:
        server.server_close()
        log.close()


if __name__ == "__main__":
    main()
