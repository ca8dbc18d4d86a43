#!/usr/bin/env python3
"""A fault-injecting HTTP proxy in front of a Kinesis emulator, for tests.

Neither emulator throttles reads or expires iterators, so a test puts this
proxy between `sshwarden run` and kinesis-local (AWS_ENDPOINT_URL_KINESIS)
to exercise the reader's handling of ProvisionedThroughputExceeded,
ExpiredIterator, 5xx answers and connection resets. Every request is
forwarded to the upstream byte for byte (headers included, so signatures
stay valid) unless the script says to answer a GetRecords call with a fault
instead. Responses are relayed as they come (streamed responses such as
SubscribeToShard's event stream included).

The script (JSON, --script) is a list of rules, applied to GetRecords calls
counted per shard (1-based; the shard is learnt by following iterators from
GetShardIterator and GetRecords answers):

    {"calls": [2, 7], "fault": "throughput"}   calls 2 to 7 of each shard
    {"every": 3, "after": 1, "fault": "expired"}  calls 1+3, 1+6, ... of each shard

Faults: "throughput" (400 ProvisionedThroughputExceededException),
"expired" (400 ExpiredIteratorException), "internal" (500 InternalFailure),
"reset" (the connection is closed without an answer). The first rule that
matches a call wins.

Every Kinesis call is logged as one JSON line to --log:
{"t": epoch seconds, "target": "GetRecords", "shard": "shardId-...",
"call": n, "fault": null | name, "status": http status | null, "records": n,
"last_sequence": the last record's sequence number}; a GetShardIterator
line has "shard", "type" and "after" (StartingSequenceNumber).

Listens on 127.0.0.1 only, on an ephemeral port written to stdout as
{"port": N}; exits after --max-seconds (bounded, whatever the test does).
Standard library only.
"""

import argparse
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


class State:
    """Shared by the handler threads: the script, iterator -> shard, counts."""

    def __init__(self, rules, log):
        self.rules = rules
        self.log = log
        self.lock = threading.Lock()
        self.shard_of_iterator = {}
        self.calls = {}

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
        for rule in self.rules:
            if "calls" in rule:
                lo, hi = rule["calls"]
                if lo <= call <= hi:
                    return rule["fault"]
            elif "every" in rule:
                after = rule.get("after", 0)
                if call > after and (call - after) % rule["every"] == 0:
                    return rule["fault"]
        return None

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
            body = json.dumps({"__type": kind, "message": message}).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("x-amzn-RequestId", "fault-proxy-%d" % time.monotonic_ns())
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.wfile.flush()

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

        def proxy(self, method):
            body = self.read_body()
            target = self.headers.get("X-Amz-Target", "").rsplit(".", 1)[-1]
            request = {}
            if target in ("GetRecords", "GetShardIterator"):
                try:
                    request = json.loads(body or b"{}")
                except ValueError:
                    request = {}
            entry = {"t": time.time(), "target": target or None}
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
            headers = {k: v for k, v in self.headers.items() if k.lower() not in HOP_BY_HOP}
            headers["Content-Length"] = str(len(body))
            try:
                conn = self.connect_upstream()
                conn.putrequest(method, self.path, skip_host=True, skip_accept_encoding=True)
                for k, v in headers.items():
                    conn.putheader(k, v)
                conn.endheaders(body)
                resp = conn.getresponse()
            except (OSError, http.client.HTTPException) as e:
                if self.upstream_conn is not None:
                    self.upstream_conn.close()
                    self.upstream_conn = None
                entry.update(status=None, error=str(e))
                state.record(entry)
                self.send_error(502, "upstream failed: %s" % e)
                return
            entry["status"] = resp.status
            streamed = resp.getheader("Content-Length") is None
            if target in ("GetRecords", "GetShardIterator") and not streamed:
                data = resp.read()
                try:
                    answer = json.loads(data or b"{}")
                except ValueError:
                    answer = {}
                if target == "GetShardIterator":
                    state.learn(answer.get("ShardIterator"), request.get("ShardId"))
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
            if resp.will_close:
                conn.close()
                self.upstream_conn = None

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


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--upstream", required=True, help="e.g. http://127.0.0.1:4567")
    p.add_argument("--script", default="[]", help="JSON list of fault rules")
    p.add_argument("--log", required=True, help="JSON lines, one per Kinesis call")
    p.add_argument("--max-seconds", type=float, default=300, help="exit after this long")
    args = p.parse_args()

    upstream = urllib.parse.urlsplit(args.upstream)
    if upstream.scheme != "http" or upstream.hostname not in ("127.0.0.1", "localhost", "::1"):
        sys.exit("kinesis_fault_proxy: --upstream must be http:// on loopback")
    rules = json.loads(args.script)
    for rule in rules:
        if rule.get("fault") not in FAULTS or not ("calls" in rule or "every" in rule):
            sys.exit("kinesis_fault_proxy: bad rule %r" % (rule,))
    log = open(args.log, "a", encoding="utf-8")
    state = State(rules, log)
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
