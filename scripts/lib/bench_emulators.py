"""Benchmarks of the load generator, `sshwarden run` and the scorer on the
local emulators (kinesis-local for Kinesis, moto for the lease table). Run
through scripts/bench-e2e, scripts/bench-scaleout and scripts/bench-worker;
see BENCHMARKS.md.

  e2e       1. the loadgen's Kinesis writer puts a backlog (peer: a bare boto3
               PutRecords loop putting the same records);
            2. one worker drains it (peer: a bare boto3 GetRecords loop);
            3. live traffic into a fresh stream, the worker caught up: the
               scorer reads the worker's stdout; precision/recall and
               event -> command and write -> command latency.
  scaleout  a fixed backlog on an 8-shard stream; 1, 2 and 3 workers, each
            round with a fresh lease table: time until every record is read,
            records/s, CPU per worker; peer: bare GetRecords loops (1 and 3
            threads) over the same shards.
  worker    one worker (stdout sink) on a 1-shard backlog of the loadgen's
            payloads: CPU per MB of stream data, beside the bare GetRecords
            loop over the same records; then put -> command latency on the
            caught-up worker, one record at a time.
  fleet     the fleet stage's detection latency: two workers with
            --fleet-stream on an 8-shard stream of logs, live sprays (one
            address, one guess per instance) written in real time over a
            background of one-guess scanners; event -> fleet command latency
            from the event that made the fleet-wide count reach the rule's
            threshold (computed here from the events written), for sprays
            that reach the early emission on their shards and for sprays that
            only the windows' close reports.

Every wait is bounded; workers are killed by PID; streams and tables are
deleted at the end.
"""
import argparse, gzip, hashlib, json, os, queue, random, subprocess, sys, threading, time, urllib.request
import boto3

MOTO = os.environ.get("SSHWARDEN_MOTO_ENDPOINT", "http://127.0.0.1:5000")
KIN = os.environ.get("SSHWARDEN_KINESIS_ENDPOINT", "http://127.0.0.1:4567")
CREDS = dict(region_name="us-east-1", aws_access_key_id="testing", aws_secret_access_key="testing")
kin = boto3.client("kinesis", endpoint_url=KIN, **CREDS)
ddb = boto3.client("dynamodb", endpoint_url=MOTO, **CREDS)
TICK = os.sysconf("SC_CLK_TCK")
TAG = f"{os.getpid()}-{int(time.time())}"
ENV = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "AWS_ENDPOINT_URL": MOTO,
       "AWS_ENDPOINT_URL_KINESIS": KIN, "AWS_ACCESS_KEY_ID": "testing",
       "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1",
       "AWS_EC2_METADATA_DISABLED": "true", "SSHWARDEN_LOG": "warn"}
streams, tables, procs = [], [], []


def say(*a):
    print(*a, flush=True)


def bounded(what, limit, cond, every=0.05):
    end = time.monotonic() + limit
    while True:
        v = cond()
        if v:
            return v
        if time.monotonic() > end:
            raise SystemExit(f"bench: timed out after {limit} s waiting for {what}")
        time.sleep(every)


def cpu_s(pid):
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def load():
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def new_stream(name, shards):
    kin.create_stream(StreamName=name, ShardCount=shards)
    streams.append(name)
    bounded(f"stream {name}", 60, lambda: kin.describe_stream_summary(StreamName=name)
            ["StreamDescriptionSummary"]["StreamStatus"] == "ACTIVE", 0.2)


def loadgen_write(loadgen, fleet, stream, *extra, timeout=600):
    out = subprocess.run([loadgen, *fleet, "kinesis", "--stream", stream, "--json",
                          "--progress-secs", "0", *extra],
                         env=ENV, check=True, capture_output=True, timeout=timeout)
    return json.loads(out.stdout)


def read_back(stream, threads=1, want=None, limit_s=600):
    """A bare GetRecords loop over every shard (no processing): (records, seconds, calls)."""
    shards = [s["ShardId"] for s in kin.list_shards(StreamName=stream)["Shards"]]
    got, calls, lock = [], [0], threading.Lock()
    t0 = time.monotonic()

    def one(ids):
        c = boto3.client("kinesis", endpoint_url=KIN, **CREDS)
        for sid in ids:
            it = c.get_shard_iterator(StreamName=stream, ShardId=sid,
                                      ShardIteratorType="TRIM_HORIZON")["ShardIterator"]
            empty = 0
            while it and empty < 1:
                if time.monotonic() - t0 > limit_s:
                    raise SystemExit(f"bench: reading {stream} took over {limit_s} s")
                out = c.get_records(ShardIterator=it, Limit=10000)
                with lock:
                    calls[0] += 1
                    got.extend((r["PartitionKey"], r["Data"]) for r in out["Records"])
                empty = 0 if out["Records"] else empty + 1
                it = out.get("NextShardIterator")
                if out.get("MillisBehindLatest", 1) == 0 and not out["Records"]:
                    break
    groups = [shards[i::threads] for i in range(threads)]
    ts = [threading.Thread(target=one, args=(g,)) for g in groups]
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    return got, time.monotonic() - t0, calls[0]


def boto3_put(stream, records):
    """The peer writer: PutRecords in 500s, one call at a time, failures retried."""
    t0 = time.monotonic()
    for i in range(0, len(records), 500):
        pending = [{"PartitionKey": k, "Data": d} for k, d in records[i:i + 500]]
        end = time.monotonic() + 120
        while pending:
            out = kin.put_records(StreamName=stream, Records=pending)
            pending = [p for p, r in zip(pending, out["Records"]) if "ErrorCode" in r]
            if pending:
                if time.monotonic() > end:
                    raise SystemExit("bench: PutRecords keeps failing")
                time.sleep(0.2)
    return time.monotonic() - t0


def spawn_worker(sshwarden, stream, table, wid, port, stdout, flags=(), run_flags=()):
    """`sshwarden [flags] run` on `stream` with the stdout sink, metrics on `port`."""
    cmd = [sshwarden, "--blast-radius-max", "0", "--cooldown-secs", "0", *flags, "run", "--stream", stream,
           "--lease-table", table, "--worker-id", wid, "--sink", "stdout",
           "--metrics-addr", f"127.0.0.1:{port}", *run_flags]
    p = subprocess.Popen(cmd, env=ENV, stdin=subprocess.DEVNULL, stdout=stdout,
                         stderr=open(f"/tmp/bench-{stream}-{wid}.stderr", "w"))
    procs.append(p)
    return p, cmd


def records_read(p, port):
    if p.poll() is not None:
        raise SystemExit(f"bench: worker on :{port} exited {p.returncode}; see /tmp/bench-*.stderr")
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0
    return sum(float(l.rsplit(" ", 1)[1]) for l in body.splitlines()
               if l.startswith("sshwarden_records_total{"))


def metric_sum(p, port, name):
    records_read(p, port)  # fails if the worker exited
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=2).read().decode()
    except OSError:
        return 0
    return sum(float(l.rsplit(" ", 1)[1]) for l in body.splitlines()
               if l.startswith(name + " ") or l.startswith(name + "{"))


def ready(p, port):
    records_read(p, port)  # fails if the worker exited
    try:
        return urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=2).status == 200
    except OSError:
        return False


def stop(p):
    if p.poll() is None:
        p.kill()
        p.wait(timeout=10)


def e2e(a):
    fleet = ["--instances", str(a.instances), "--minutes", str(a.minutes)]
    # 1. the writer, and the same records by a bare boto3 loop
    s1 = f"bench-e2e-{TAG}"
    new_stream(s1, a.shards)
    w = loadgen_write(a.loadgen, fleet, s1, "--concurrency", str(a.shards))
    say(f"load {load()}; loadgen kinesis writer, {a.shards} shards: {w['records']} records, "
        f"{w['bytes'] / 1e6:.2f} MB in {w['seconds']:.2f} s = {w['records_per_sec']:.0f} records/s, "
        f"{w['mb_per_sec']:.2f} MB/s; {w['calls']} calls (max {w['max_per_call']} records), "
        f"{w['retried']} retried, {w['throttled']} throttled")
    recs, read_s, calls = read_back(s1)
    if len(recs) != w["records"]:
        raise SystemExit(f"bench: read back {len(recs)} records, the writer wrote {w['records']}")
    say(f"peer read: bare GetRecords loop (boto3, 1 thread): {len(recs)} records in {read_s:.2f} s, {calls} calls")
    s2 = f"bench-e2e-peer-{TAG}"
    new_stream(s2, a.shards)
    put_s = boto3_put(s2, recs)
    say(f"peer write: bare boto3 PutRecords loop (500 per call, 1 in flight), same records: "
        f"{put_s:.2f} s = {len(recs) / put_s:.0f} records/s")
    # 2. one worker drains the backlog
    table = f"bench-e2e-leases-{TAG}"
    tables.append(table)
    t0 = time.monotonic()
    p, cmd = spawn_worker(a.sshwarden, s1, table, "drain", 19481, subprocess.DEVNULL)
    bounded("the worker to read the backlog", 600, lambda: records_read(p, 19481) >= len(recs), 0.02)
    wall, cpu = time.monotonic() - t0, cpu_s(p.pid)
    stop(p)
    say(f"worker drained {len(recs)} records in {wall:.2f} s wall ({len(recs) / wall:.0f} records/s), "
        f"{cpu:.2f} s CPU; the bare GetRecords loop took {read_s / wall * 100:.0f}% of that")
    # 3. live traffic, worker caught up, scorer on its stdout
    s3 = f"bench-e2e-live-{TAG}"
    new_stream(s3, a.shards)
    table3 = f"bench-e2e-live-leases-{TAG}"
    tables.append(table3)
    truth, written = f"/tmp/{s3}.truth.json", f"/tmp/{s3}.written.jsonl"
    p, cmd = spawn_worker(a.sshwarden, s3, table3, "live", 19482, subprocess.PIPE)
    score = subprocess.Popen([a.loadgen, "score", "--truth", truth, "--written-log", written,
                              "--until-complete", "--grace-secs", "3", "--timeout-secs",
                              str(int(a.live_minutes * 60 + 120)), "--json"],
                             stdin=p.stdout, stdout=subprocess.PIPE, env=ENV)
    procs.append(score)
    p.stdout.close()
    bounded("the live worker to be ready", 60, lambda: ready(p, 19482), 0.2)
    time.sleep(3)  # leases taken, shards polled
    say("worker: " + " ".join(cmd))
    lw = loadgen_write(a.loadgen, ["--instances", str(a.live_instances), "--minutes", str(a.live_minutes)],
                       s3, "--live", "--truth-out", truth, "--written-log", written,
                       timeout=a.live_minutes * 60 + 300)
    say(f"load {load()}; live writer: {lw['records']} records over {lw['seconds']:.0f} s "
        f"({a.live_instances} instances, {a.live_minutes} min, agent flush 5 s), {lw['retried']} retried")
    out, _ = score.communicate(timeout=a.live_minutes * 60 + 200)
    stop(p)
    r = json.loads(out)
    s = r["score"]
    say(f"scorer: {r['commands']} commands; precision {s['precision']:.3f}, recall {s['recall']:.3f} "
        f"({s['expected']} expected, {len(s['missed'])} missed, {len(s['false_positives'])} false)")
    for row in r["per_scenario"]:
        say(f"  {row['name']:<28} {row['true_positives']}/{row['expected']} precision {row['precision']:.3f} recall {row['recall']:.3f}")
    for k, what in (("event_to_command", "event time -> command"), ("write_to_command", "write -> command")):
        l = r.get(k)
        if l:
            say(f"{what}: p50 {l['p50_ms']:.0f} ms, p99 {l['p99_ms']:.0f} ms, p99.9 {l['p999_ms']:.0f} ms, "
                f"max {l['max_ms']:.0f} ms over {l['samples']} detections (min {l['min_ms']:.0f})")


def scaleout(a):
    fleet = ["--instances", str(a.instances), "--minutes", str(a.minutes)]
    s = f"bench-scaleout-{TAG}"
    new_stream(s, 8)
    w = loadgen_write(a.loadgen, fleet, s, "--concurrency", "8")
    n = w["records"]
    say(f"load {load()}; backlog: {n} records, {w['bytes'] / 1e6:.2f} MB on 8 shards "
        f"(loadgen writer {w['records_per_sec']:.0f} records/s)")
    for threads in (1, 3):
        recs, secs, calls = read_back(s, threads)
        say(f"peer: bare GetRecords loop, {threads} thread(s): {len(recs)} records in {secs:.2f} s "
            f"= {len(recs) / secs:.0f} records/s")
    for k in a.workers:
        table = f"bench-scaleout-leases-{k}-{TAG}"
        tables.append(table)
        ports = [19490 + i for i in range(k)]
        t0 = time.monotonic()
        ws = [spawn_worker(a.sshwarden, s, table, f"w{i}", ports[i], subprocess.DEVNULL)[0] for i in range(k)]
        bounded(f"{k} workers to read {n} records", a.round_limit,
                lambda: sum(records_read(p, port) for p, port in zip(ws, ports)) >= n, 0.02)
        wall = time.monotonic() - t0
        per = [(records_read(p, port), cpu_s(p.pid)) for p, port in zip(ws, ports)]
        for p in ws:
            stop(p)
        say(f"load {load()}; {k} worker(s): {n} records in {wall:.2f} s = {n / wall:.0f} records/s; "
            + "; ".join(f"w{i} read {r:.0f}, CPU {c:.2f} s" for i, (r, c) in enumerate(per)))


def worker(a):
    # ---- a backlog of the loadgen's payloads, one gzipped envelope per record
    stream = f"sshwarden-bench-{TAG}"
    new_stream(stream, 1)
    lines = subprocess.run([a.loadgen, "--instances", str(a.instances), "--minutes", str(a.minutes),
                            "payloads"], check=True, capture_output=True, timeout=120).stdout.splitlines()
    blobs = [gzip.compress(l, 6) for l in lines]
    raw_mb = sum(len(l) for l in lines) / 1e6
    gz_mb = sum(len(b) for b in blobs) / 1e6
    n = len(blobs)
    put_s = boto3_put(stream, [("k%d" % i, b) for i, b in enumerate(blobs)])
    say(f"stream {stream}: {n} records written in {put_s:.1f} s; "
        f"{raw_mb:.1f} MB of JSON, {gz_mb:.2f} MB gzipped (instances {a.instances}, minutes {a.minutes})")

    # ---- the emulator's ceiling: a bare GetRecords loop, no processing
    recs, ceiling, calls = read_back(stream, limit_s=300)
    if len(recs) != n:
        raise SystemExit(f"bench: GetRecords loop read {len(recs)} of {n}")
    say(f"bare GetRecords loop (boto3, limit 10000): {len(recs)} records in {calls} calls, {ceiling:.2f} s")

    # ---- one worker from start until it has read every record
    table = f"sshwarden-bench-leases-{TAG}"
    tables.append(table)
    port = 19465
    arrivals = queue.Queue()
    commands = [0]
    t_start = time.monotonic()
    p, cmd = spawn_worker(a.sshwarden, stream, table, "bench", port, subprocess.PIPE,
                          flags=("--threshold", "1"))
    say("worker: " + " ".join(cmd))

    def reader():
        for line in p.stdout:
            t = time.monotonic()
            commands[0] += 1
            if b'"i-lat' in line:
                arrivals.put((t, json.loads(line)["instance_id"]))
    threading.Thread(target=reader, daemon=True).start()
    bounded("the worker to read every record", 300, lambda: records_read(p, port) >= n, 0.02)
    wall = time.monotonic() - t_start
    cpu = cpu_s(p.pid)
    say(f"worker read {n} records in {wall:.2f} s wall, {cpu:.2f} s CPU (user+sys), "
        f"{commands[0]} commands; {cpu * 1000 / raw_mb:.1f} CPU ms per MB of JSON, "
        f"{cpu * 1000 / gz_mb:.1f} per MB gzipped; {raw_mb / cpu:.0f} MB of JSON per CPU second")
    say(f"ceiling: the bare GetRecords loop took {ceiling:.2f} s, {ceiling / wall * 100:.0f}% of the worker's wall time")

    # ---- latency: one record at a time, each a new instance crossing --threshold 1
    time.sleep(3)  # caught up and idle
    lat = []
    for k in range(a.latency_samples):
        inst = "i-lat%013x" % k
        now = time.time()
        msg = (time.strftime("%b %e %H:%M:%S", time.gmtime(now)) +
               f" ip-10-9-0-{k % 250} sshd[{4000 + k}]: Invalid user admin from 198.51.100.{k % 250} port {40000 + k}")
        env_ = {"messageType": "DATA_MESSAGE", "owner": "123456789012", "logGroup": "/ec2/sshd",
                "logStream": inst, "subscriptionFilters": ["sshwarden"],
                "logEvents": [{"id": str(k), "timestamp": int(now * 1000), "message": msg}]}
        data = gzip.compress(json.dumps(env_).encode())
        t0 = time.monotonic()
        kin.put_record(StreamName=stream, Data=data, PartitionKey=inst)
        while True:
            try:
                t, got_inst = arrivals.get(timeout=10)
            except queue.Empty:
                raise SystemExit(f"bench: no command for {inst} within 10 s")
            if got_inst == inst:
                break
        lat.append((t - t0) * 1000)
        while not arrivals.empty():  # other rules firing on the same line
            arrivals.get_nowait()
        # A random pause, so the puts do not lock onto the worker's poll cycle.
        time.sleep(random.uniform(0.1, 1.3))
    if lat:
        lat.sort()
        q = lambda f: lat[min(len(lat) - 1, int(f * len(lat)))]
        say(f"put->command latency over {len(lat)} commands: p50 {q(0.50):.0f} ms, p90 {q(0.90):.0f} ms, "
            f"p99 {q(0.99):.0f} ms, min {lat[0]:.0f}, max {lat[-1]:.0f} (idle poll 1000 ms, the default)")


def kinesis_shard_of(key, ranges):
    """The shard Kinesis puts `key` on: MD5 of the partition key in the shards' hash ranges."""
    h = int(hashlib.md5(key.encode()).hexdigest(), 16)
    for sid, lo, hi in ranges:
        if lo <= h <= hi:
            return sid
    raise SystemExit(f"bench: no shard holds the hash of {key}")


def crossing(events, window_ms, at_least, distinct):
    """Event time at which a fleet-wide count (of guesses, or of distinct
    instances) first reaches `at_least` inside one of the rule's tumbling
    windows (aligned on the epoch): {window_start_ms: event time}."""
    seen, out = {}, {}
    for t, inst in sorted(events):
        w = t - t % window_ms
        if w in out:
            continue
        c = seen.setdefault(w, set() if distinct else [0])
        if distinct:
            c.add(inst)
            n = len(c)
        else:
            c[0] += 1
            n = c[0]
        if n >= at_least:
            out[w] = t
    return out


def quantiles(xs):
    xs = sorted(xs)
    q = lambda f: xs[min(len(xs) - 1, int(f * len(xs)))]
    return f"p50 {q(0.5) / 1000:.1f} s, p99 {q(0.99) / 1000:.1f} s, max {xs[-1] / 1000:.1f} s (min {xs[0] / 1000:.1f}, {len(xs)} commands)"


def fleet(a):
    logs, parts = f"bench-fleet-{TAG}", f"bench-fleet-partials-{TAG}"
    new_stream(logs, 8)
    new_stream(parts, 2)
    table, ftable = f"bench-fleet-leases-{TAG}", f"bench-fleet-leases-fleet-{TAG}"
    tables.extend([table, ftable])
    ranges = [(x["ShardId"], int(x["HashKeyRange"]["StartingHashKey"]), int(x["HashKeyRange"]["EndingHashKey"]))
              for x in kin.list_shards(StreamName=logs)["Shards"]]
    # Instances by shard, so that each spray touches every shard equally.
    by_shard, k = {sid: [] for sid, _, _ in ranges}, 0
    while min(len(v) for v in by_shard.values()) < 64:
        inst = "i-%017x" % (0xbe0000 + k)
        by_shard[kinesis_shard_of(inst, ranges)].append(inst)
        k += 1
    conf = f"/tmp/{logs}.toml"
    with open(conf, "w") as f:
        f.write(f"[fleet]\npartial_window_secs = {a.partial_window_secs}\n")
    run_flags = ("--fleet-stream", parts, "--fleet-lease-table", ftable)
    stamped = []  # (wall ms when read, command)
    lock = threading.Lock()
    ws = []
    for i in range(2):
        port = 19470 + i
        p, cmd = spawn_worker(a.sshwarden, logs, table, f"f{i}", port, subprocess.PIPE,
                              flags=("--config", conf), run_flags=run_flags)
        ws.append((p, port))

        def reader(p=p):
            for line in p.stdout:
                t = time.time() * 1000
                try:
                    c = json.loads(line)
                except ValueError:
                    continue
                with lock:
                    stamped.append((t, c))
        threading.Thread(target=reader, daemon=True).start()
    say("workers: " + " ".join(cmd))
    # The gauge counts the stream of logs' leases; the partials' are read
    # from their table.
    def fleet_leases():
        items = ddb.scan(TableName=ftable).get("Items", []) if ftable in ddb.list_tables()["TableNames"] else []
        return sum(1 for i in items if i.get("leaseOwner", {}).get("S"))
    bounded("both workers to hold every lease (8 shards of logs, 2 of partials)", 120,
            lambda: sum(metric_sum(p, port, "sshwarden_leases_held") for p, port in ws) >= 8
            and fleet_leases() >= 2, 0.5)
    say(f"load {load()}; leases held; writing {a.sprays} sprays live")

    # Sprays: one guess per instance, `a.gap` s apart, each from its own
    # address; half over 5 instances per shard (a shard's distinct count
    # reaches half of fleet-spray's 10: an early partial), half over 2 per
    # shard (nothing is sent early: only the windows' close reports them).
    plan = []
    for n in range(a.sprays):
        per_shard = 5 if n % 2 == 0 else 2
        insts = [v[(n * 5 + j) % len(v)] for v in by_shard.values() for j in range(per_shard)]
        random.Random(n).shuffle(insts)
        plan.append(("early" if per_shard == 5 else "window end", f"198.18.{n // 250}.{n % 250 + 1}", insts))
    attempts = {}  # source -> [(event ms, instance)]
    stop_bg = threading.Event()
    bg = [0]

    def put(inst, src, user, t_ms):
        msg = (time.strftime("%b %e %H:%M:%S", time.gmtime(t_ms / 1000)) +
               f" ip-10-0-0-1 sshd[{random.randint(1000, 99999)}]: Failed password for {user} from {src} port {random.randint(1024, 65535)} ssh2")
        env_ = {"messageType": "DATA_MESSAGE", "owner": "123456789012", "logGroup": "/ec2/sshd",
                "logStream": inst, "subscriptionFilters": ["sshwarden"],
                "logEvents": [{"id": f"{t_ms}{random.randint(0, 10**9):010d}", "timestamp": t_ms, "message": msg}]}
        return {"PartitionKey": inst, "Data": gzip.compress(json.dumps(env_).encode())}

    def background():
        c = boto3.client("kinesis", endpoint_url=KIN, **CREDS)
        insts = [i for v in by_shard.values() for i in v]
        r = random.Random(7)
        while not stop_bg.is_set():
            now = int(time.time() * 1000)
            batch = [put(r.choice(insts), f"203.0.{r.randint(0, 255)}.{r.randint(1, 254)}", "admin", now)
                     for _ in range(max(1, int(a.background_per_s / 2)))]
            c.put_records(StreamName=logs, Records=batch)
            bg[0] += len(batch)
            stop_bg.wait(0.5)
    bgt = threading.Thread(target=background, daemon=True)
    bgt.start()

    def spray(src, insts):
        c = boto3.client("kinesis", endpoint_url=KIN, **CREDS)
        for inst in insts:
            t = int(time.time() * 1000)
            c.put_records(StreamName=logs, Records=[put(inst, src, "root", t)])
            with lock:
                attempts.setdefault(src, []).append((t, inst))
            time.sleep(a.gap)
    threads = []
    for kind, src, insts in plan:
        th = threading.Thread(target=spray, args=(src, insts), daemon=True)
        th.start()
        threads.append(th)
        time.sleep(a.stagger)
    for th in threads:
        th.join()
    last_event = time.time()
    # The truth: where each spray's fleet-wide count reached each fleet rule.
    rules = {"fleet-spray": (3_600_000, 10, True), "fleet-brute-force": (600_000, 5, False)}
    truth = {}
    for kind, src, _ in plan:
        for rule, (w, at, distinct) in rules.items():
            for ws_ms, t in crossing(attempts[src], w, at, distinct).items():
                truth[(f"{src}/32", rule, ws_ms)] = (t, kind)
    want = {k for k in truth if k[1] == "fleet-spray"}

    def found():
        with lock:
            got = {(c.get("source"), c.get("rule"), c.get("window_start_ms")) for _, c in stamped}
        return want <= got
    limit = 2 * a.partial_window_secs + 120
    try:
        bounded(f"a fleet-spray command for each of the {len(want)} sprays", limit, found, 0.5)
    finally:
        stop_bg.set()
    say(f"load {load()}; {sum(len(v) for v in attempts.values())} spray guesses and {bg[0]} background guesses written")
    first, ids, dup = {}, set(), 0
    with lock:
        for t, c in stamped:
            if not str(c.get("rule", "")).startswith("fleet-"):
                continue
            if c.get("id") in ids:
                dup += 1
            ids.add(c.get("id"))
            key = (c.get("source"), c.get("rule"), c.get("window_start_ms"))
            first.setdefault(key, t)
    lat, untimed = {}, {}
    for key, t in first.items():
        if key not in truth:
            # Rules not timed here (slow and persistent brute force, on the
            # sprays' addresses) or a window no spray reached.
            what = key[1] if key[1] not in rules else f"{key[1]} (no crossing here)"
            untimed[what] = untimed.get(what, 0) + 1
            continue
        ev, kind = truth[key]
        lat.setdefault((key[1], kind), []).append(t - ev)
    say(f"partial window {a.partial_window_secs} s, allowed lateness 60 s (default), idle poll 1000 ms (default); "
        f"{len(ids)} fleet commands ({dup} repeated ids); not timed: "
        + (", ".join(f"{n} {r}" for r, n in sorted(untimed.items())) or "none"))
    for (rule, kind), xs in sorted(lat.items()):
        say(f"  {rule:<18} {kind:<9} event -> command: {quantiles(xs)}")
    every = [x for (rule, _), xs in lat.items() if rule == "fleet-spray" for x in xs]
    if every:
        say(f"  fleet-spray, all sprays: {quantiles(every)}")
    for p, _ in ws:
        stop(p)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("mode", choices=["e2e", "scaleout", "worker", "fleet"])
    ap.add_argument("--sshwarden", required=True)
    ap.add_argument("--loadgen", required=True)
    ap.add_argument("--instances", type=int, default=200)
    ap.add_argument("--minutes", type=float, default=10)
    ap.add_argument("--shards", type=int, default=4)
    ap.add_argument("--live-instances", type=int, default=100)
    ap.add_argument("--live-minutes", type=float, default=2)
    ap.add_argument("--workers", type=int, nargs="+", default=[1, 2, 3])
    ap.add_argument("--round-limit", type=float, default=300)
    ap.add_argument("--latency-samples", type=int, default=50)
    ap.add_argument("--sprays", type=int, default=16)
    ap.add_argument("--gap", type=float, default=1.0)
    ap.add_argument("--stagger", type=float, default=4.0)
    ap.add_argument("--background-per-s", type=float, default=10)
    ap.add_argument("--partial-window-secs", type=int, default=60)
    a = ap.parse_args()
    say(f"machine: {os.cpu_count()} CPUs, load average {load()} at start")
    try:
        {"e2e": e2e, "scaleout": scaleout, "worker": worker, "fleet": fleet}[a.mode](a)
    finally:
        for p in procs:
            try:
                stop(p)
            except Exception:
                pass
        for name in streams:
            try:
                kin.delete_stream(StreamName=name, EnforceConsumerDeletion=True)
            except Exception:
                pass
        for t in tables:
            try:
                ddb.delete_table(TableName=t)
            except Exception:
                pass


if __name__ == "__main__":
    main()
