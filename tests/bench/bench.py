#!/usr/bin/python3
"""kumo-nats-relay benchmark: throughput against a bare nats.c publisher, latency, memory.

Run it through tests/bench/run.sh, which builds what it needs first. Everything runs
against one nats-server -js (file storage, its own temp store dir, a free loopback port).

    run.sh            throughput table, latency, (BENCH_BIG=1) memory over a ~1 GB backlog
    run.sh profile    callgrind (20k records) and perf (BENCH_RECORDS) profiles of the relay

Environment:
    BENCH_RECORDS     records in the spool (default 200000)
    BENCH_ROUNDS      rounds of the alternating runs (default 3; the table shows medians)
    BENCH_SYNC_DIV    the one-at-a-time publisher runs on BENCH_RECORDS / this (default 10)
    BENCH_SEGMENT_MB  segment size, uncompressed MB, like kumod's max_file_size (default 100)
    BENCH_THROUGHPUT  "0" skips the throughput runs
    BENCH_LATENCY     "0" skips the latency run; BENCH_LATENCY_RATE (5000/s),
                      BENCH_LATENCY_SECONDS (10)
    BENCH_BIG         "1" adds the relay's peak RSS over a backlog of BENCH_BIG_RECORDS
                      (default 1000000, ~1 GB) records
    BENCH_QUIET       SECONDS: before each run, wait up to that long for other processes to
                      leave the machine under 10 % busy (for shared machines; default 0)
    BENCH_KEEP        "1" keeps the temp dir (spool, logs, store, profiles)
    BENCH_BUILD_DIR   where run.sh built (default build-bench/)
"""

import json
import os
import platform
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from multiprocessing import Pool
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
BUILD = Path(os.environ.get("BENCH_BUILD_DIR") or REPO / "build-bench")
os.environ["KNR_BUILD_DIR"] = str(BUILD)  # harness.Tools reads it at import

sys.path.insert(0, str(HERE))
import records  # noqa: E402  (puts tests/integration on sys.path)
import harness  # noqa: E402

RELAY = BUILD / "kumo-nats-relay"
SPOOLWRITE = BUILD / "tests" / "spoolwrite"
STREAMTOOL = BUILD / "tests" / "streamtool"
BARE = BUILD / "bench" / "bare_publisher"
# natscli's `nats`, built by tests/tools/nats-servers.sh --natscli (run.sh sets BENCH_NATS).
NATS_CLI = Path(os.environ["BENCH_NATS"]) if os.environ.get("BENCH_NATS") else None
PROBE = BUILD / "bench" / "latency_probe"
NATS_SERVER = harness.Tools.nats_server

STREAM = "BENCH"
STREAM_SUBJECTS = ["kumo.>", "subject"]  # built-in policy, connection policy; seed policy
WINDOW = 4096
CHUNK = 25000  # records per generator task
CLK_TCK = os.sysconf("SC_CLK_TCK")


def env_int(name, default):
    return int(os.environ.get(name) or default)


N_RECORDS = env_int("BENCH_RECORDS", 200000)
ROUNDS = env_int("BENCH_ROUNDS", 3)
SYNC_DIV = env_int("BENCH_SYNC_DIV", 10)
SEGMENT_BYTES = env_int("BENCH_SEGMENT_MB", 100) * 1000 * 1000
LAT_RATE = env_int("BENCH_LATENCY_RATE", 5000)
LAT_SECONDS = env_int("BENCH_LATENCY_SECONDS", 10)
# BENCH_ROWS=relay-builtin,relay-fast runs only those throughput rows (keys of ROWS).
ONLY_ROWS = [r for r in os.environ.get("BENCH_ROWS", "").split(",") if r]
BIG_RECORDS = env_int("BENCH_BIG_RECORDS", 1000000)


def say(*args):
    print(*args, flush=True)


# ---------------------------------------------------------------------------------------
# Machine


def cpu_model():
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def machine():
    def out(*cmd):
        try:
            return subprocess.run(cmd, capture_output=True, text=True, cwd=REPO,
                                  timeout=30).stdout.strip()
        except OSError:
            return "?"
    mem_kb = next(int(l.split()[1]) for l in Path("/proc/meminfo").read_text().splitlines()
                  if l.startswith("MemTotal:"))
    dirty = out("git", "status", "--porcelain", "--", "relay", "CMakeLists.txt")
    return {
        "nproc": os.cpu_count(),
        "cpu": cpu_model(),
        "memory": f"{mem_kb / 1024 / 1024:.1f} GiB",
        "kernel": platform.release(),
        "os": next((l.split("=", 1)[1].strip('"') for l in
                    Path("/etc/os-release").read_text().splitlines()
                    if l.startswith("PRETTY_NAME=")), "?"),
        "nats-server": out(str(NATS_SERVER), "--version").replace("nats-server: ", ""),
        "nats.c": out("pkg-config", "--modversion", "libnats"),
        "relay": out(str(RELAY), "--version") + " @ " + out("git", "rev-parse", "--short", "HEAD")
                 + (" + uncommitted changes in relay/" if dirty else ""),
        "loadavg": Path("/proc/loadavg").read_text().split()[:3],
    }


def machine_busy_seconds():
    """CPU seconds the whole machine has been busy (all cores), from /proc/stat."""
    f = [int(x) for x in Path("/proc/stat").read_text().splitlines()[0].split()[1:]]
    idle = f[3] + f[4]
    return (sum(f[:8]) - idle) / CLK_TCK


def proc_cpu_seconds(pid):
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return 0.0
    rest = text[text.rindex(")") + 2:].split()
    return (int(rest[11]) + int(rest[12])) / CLK_TCK


def busy_others(seconds=1.0):
    """Fraction of the machine's CPU in use over `seconds`, before we start anything."""
    b0 = machine_busy_seconds()
    time.sleep(seconds)
    return (machine_busy_seconds() - b0) / seconds / os.cpu_count()


QUIET_WAIT = float(os.environ.get("BENCH_QUIET") or 0)


def wait_quiet():
    """With BENCH_QUIET=SECONDS: before a run, wait up to that long for the other processes
    of a shared machine to leave it under 10 % busy (measured over 0.5 s)."""
    if QUIET_WAIT <= 0:
        return
    deadline = time.monotonic() + QUIET_WAIT
    waited = 0.0
    while True:
        busy = busy_others(0.5)
        if busy < 0.10 or time.monotonic() >= deadline:
            break
        waited += 0.5
    if waited:
        say(f"  (waited {waited:.1f} s for a quieter machine; now {busy * 100:.0f} % busy)")


# ---------------------------------------------------------------------------------------
# Processes measured with wait4


class Measured:
    """A child process measured as a whole: wall time, user+sys CPU of all its threads (from
    wait4) and peak RSS.

    The peak RSS comes from /usr/bin/time's %M, not from our own wait4: Linux carries the
    high-water RSS of the process that exec()s over into the new program, so a child forked
    from this (large) Python process would report at least Python's size. /usr/bin/time is
    small, and the RSS it reports for its own child is the program's."""

    def __init__(self, args, server_pid, stdout=None, stderr=None, stdin=subprocess.DEVNULL,
                 tmp=None):
        self.server_pid = server_pid
        self.cpu_srv0 = proc_cpu_seconds(server_pid)
        self.busy0 = machine_busy_seconds()
        fd, self.rss_file = tempfile.mkstemp(prefix="rss-", dir=tmp)
        os.close(fd)
        self.t0 = time.monotonic()
        self.proc = subprocess.Popen(["/usr/bin/time", "-f", "%M", "-o", self.rss_file,
                                      *[str(a) for a in args]],
                                     stdout=stdout, stderr=stderr, stdin=stdin)
        self.wall = self.cpu = self.rss_mb = self.server_cpu = self.others_cpu = None

    def pid(self, timeout=10):
        """The measured program's pid (the child of /usr/bin/time)."""
        deadline = time.monotonic() + timeout
        path = Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children")
        while time.monotonic() < deadline:
            try:
                kids = path.read_text().split()
            except OSError:
                kids = []
            if kids:
                return int(kids[0])
            time.sleep(0.01)
        raise RuntimeError(f"no child under /usr/bin/time ({self.proc.args})")

    def wait(self, timeout):
        timer = threading.Timer(timeout, self.proc.kill)
        timer.start()
        try:
            _, status, ru = os.wait4(self.proc.pid, 0)
        finally:
            timer.cancel()
        self.wall = time.monotonic() - self.t0
        self.proc.returncode = os.waitstatus_to_exitcode(status)
        # wait4 reports /usr/bin/time plus the child it waited for; time itself is ~1 ms.
        self.cpu = ru.ru_utime + ru.ru_stime
        self.user, self.sys = ru.ru_utime, ru.ru_stime
        self.csw = ru.ru_nvcsw + ru.ru_nivcsw  # voluntary + involuntary, all threads
        try:
            self.rss_mb = int(Path(self.rss_file).read_text().split()[-1]) / 1024
        except (OSError, ValueError, IndexError):
            self.rss_mb = float("nan")
        os.unlink(self.rss_file)
        self.server_cpu = proc_cpu_seconds(self.server_pid) - self.cpu_srv0
        self.others_cpu = machine_busy_seconds() - self.busy0 - self.cpu - self.server_cpu
        return self.proc.returncode


# ---------------------------------------------------------------------------------------
# Spool


def _gen_chunk(task):
    n, prefix = task
    return b"".join(records.iter_records(n, seed=0, prefix=prefix))


def write_spool(spool_dir, n, tag, records_file=None):
    """n records (harness.make_records's, in chunks of CHUNK with distinct prefixes) as done
    zstd segments written by spoolwrite, a new segment every SEGMENT_BYTES; the same lines
    to `records_file` if given. Returns {"records", "bytes", "by_type", "segments"}."""
    spool_dir.mkdir(parents=True, exist_ok=True)
    names = iter(harness.segment_names(100000))
    tasks = [(min(CHUNK, n - k), f"{tag}{k // CHUNK}-") for k in range(0, n, CHUNK)]
    stats = {"records": 0, "bytes": 0, "by_type": {}, "segments": 0}
    rec_out = open(records_file, "wb") if records_file else None
    seg, seg_bytes = None, 0

    def close_segment():
        seg.stdin.close()
        if seg.wait(120) != 0:
            raise RuntimeError(f"spoolwrite failed: {seg.stderr.read().decode()}")

    with Pool(max(1, min(2, os.cpu_count()))) as pool:
        for blob in pool.imap(_gen_chunk, tasks):
            if rec_out:
                rec_out.write(blob)
            for line in blob.splitlines(keepends=True):
                if seg is None:
                    seg = subprocess.Popen([str(SPOOLWRITE), str(spool_dir / next(names))],
                                           stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                           stderr=subprocess.PIPE, bufsize=1 << 20)
                    stats["segments"] += 1
                seg.stdin.write(line)
                seg_bytes += len(line)
                stats["records"] += 1
                stats["bytes"] += len(line)
                typ = line[9:line.index(b'"', 9)].decode()  # {"type":"X"
                stats["by_type"][typ] = stats["by_type"].get(typ, 0) + 1
                if seg_bytes >= SEGMENT_BYTES:
                    close_segment()
                    seg, seg_bytes = None, 0
    if seg is not None:
        close_segment()
    if rec_out:
        rec_out.close()
    files = sorted(spool_dir.iterdir())
    stats["file_bytes"] = sum(p.stat().st_size for p in files)
    return stats


# ---------------------------------------------------------------------------------------
# The bench


class Bench:
    def __init__(self, tmp):
        self.tmp = tmp
        self.server = harness.NatsServer(tmp, name="bench")
        self.url = self.server.url
        self.port = self.server.port
        self.runs = []  # dicts, in run order
        self.policies = self._policies()

    def _policies(self):
        out = {}
        for name, src in (("seed", "policy.lua"), ("connection", "policy-connection.lua")):
            text = (REPO / "config" / src).read_text()
            new = text.replace("'127.0.0.1:4222'", f"'127.0.0.1:{self.port}'")
            if new == text:
                raise RuntimeError(f"config/{src}: no '127.0.0.1:4222' to point at the server")
            path = self.tmp / f"policy-{name}.lua"
            path.write_text(new)
            out[name] = path
        return out

    def stream(self, *args, check=True):
        return harness.streamtool(self.url, *args, check=check)

    def fresh_stream(self, allow_batched=False):
        """A new empty stream; allow_batched: with fast-ingest batches on (the same settings
        otherwise). Returns False when the server does not take allow_batched."""
        self.stream("delete", STREAM, check=False)
        harness.create_stream(self.url, STREAM, STREAM_SUBJECTS, storage="file")
        ok = self.allow_batched() if allow_batched else True
        wait_quiet()
        return ok

    def allow_batched(self):
        info = json.loads(harness.nats_request(self.url, f"$JS.API.STREAM.INFO.{STREAM}"))
        config = dict(info["config"], allow_batched=True)
        reply = json.loads(harness.nats_request(self.url, f"$JS.API.STREAM.UPDATE.{STREAM}",
                                                json.dumps(config).encode()))
        return bool(reply.get("config", {}).get("allow_batched"))

    def stream_count(self):
        return int(self.stream("count", STREAM).stdout)

    # ---- runs ----

    def bare(self, label, mode, records_file, limit=0):
        self.fresh_stream()
        out = self.tmp / f"{label}.out"
        with open(out, "wb") as fo, open(self.tmp / f"{label}.err", "ab") as fe:
            m = Measured([BARE, "-s", self.url, "--mode", mode, "--window", WINDOW,
                          "--limit", limit, records_file], self.server.proc.pid,
                         stdout=fo, stderr=fe, tmp=self.tmp)
            rc = m.wait(600)
        if rc != 0:
            raise RuntimeError(f"{label} failed ({rc}): {(self.tmp / f'{label}.err').read_text()}")
        res = json.loads(out.read_text().splitlines()[-1])
        count = self.stream_count()
        if count != res["records"]:
            raise RuntimeError(f"{label}: stream holds {count}, published {res['records']}")
        return {
            "label": label, "records": res["records"], "bytes": res["bytes"],
            "seconds": res["seconds"], "cpu": res["cpu_user"] + res["cpu_sys"],
            "user": res["cpu_user"], "sys": res["cpu_sys"], "rss_mb": m.rss_mb,
            "server_cpu": m.server_cpu, "others_cpu": m.others_cpu, "stored": count,
            "published": res["records"], "others_pct": others_pct(m),
        }

    def natsbench(self, label, mode, n, size):
        """natscli's `nats bench js pub MODE`: n messages of `size` bytes into the same
        stream, a Nats-Msg-Id on each (--dedup), WINDOW publishes outstanding (--batch)."""
        self.fresh_stream()
        err = self.tmp / f"{label}.err"
        out = self.tmp / f"{label}.out"
        args = [NATS_CLI, "-s", self.url, "bench", "js", "pub", mode, "kumo.bench",
                "--stream", STREAM, "--msgs", n, "--size", size, "--dedup", "--no-progress",
                "--batch", WINDOW if mode == "async" else 500]
        with open(out, "wb") as fo, open(err, "wb") as fe:
            m = Measured(args, self.server.proc.pid, stdout=fo, stderr=fe, tmp=self.tmp)
            rc = m.wait(600)
        if rc != 0:
            raise RuntimeError(f"{label} failed ({rc}): {err.read_text()}{out.read_text()}")
        # Its own figure: "... stats: 75,805 msgs/sec ~ ..." (first publish to last ack).
        found = re.search(r"stats: ([\d,]+) msgs/sec", out.read_text() + err.read_text())
        if not found:
            raise RuntimeError(f"{label}: no rate in its output: {out.read_text()[-2000:]}")
        rate = int(found.group(1).replace(",", ""))
        count = self.stream_count()
        if count != n:
            raise RuntimeError(f"{label}: stream holds {count}, published {n}")
        return {
            "label": label, "records": n, "bytes": n * size, "seconds": n / rate,
            "cpu": m.cpu, "user": m.user, "sys": m.sys, "rss_mb": m.rss_mb,
            "server_cpu": m.server_cpu, "others_cpu": m.others_cpu, "stored": count,
            "published": n, "others_pct": others_pct(m),
        }

    def relay_config(self, spool, state, policy):
        over = {"jetstream": {"max_in_flight": WINDOW, "ack_timeout": "5s"},
                "log": {"level": "info"}}
        if policy != "builtin":
            over["policy"] = {"script": str(self.policies[policy]), "subject": None}
        cfg = harness.relay_config(spool, state, self.url, relay_id="bench", **over)
        state.mkdir(parents=True, exist_ok=True)
        return cfg

    def relay(self, label, spool, policy, expect, ack_timeout=None, wrapper=(), timeout=1800,
              batched=False):
        """--once over `spool` into a fresh stream. `expect`: (records, bytes, published).
        batched: the stream allows fast-ingest batches, and the relay must use them."""
        self.fresh_stream(allow_batched=batched)
        state = self.tmp / f"state-{label}"
        shutil.rmtree(state, ignore_errors=True)
        cfg = self.relay_config(spool, state, policy)
        if ack_timeout:
            cfg["jetstream"]["ack_timeout"] = ack_timeout
        cfg_path = self.tmp / f"{label}.yaml"
        cfg_path.write_text(harness.to_yaml(cfg) + "\n")
        log = self.tmp / f"{label}.log"
        with open(log, "wb") as fe:
            m = Measured([*wrapper, RELAY, "-c", cfg_path, "--once"], self.server.proc.pid,
                         stdout=fe, stderr=subprocess.STDOUT, tmp=self.tmp)
            rc = m.wait(timeout)
        text = log.read_text(errors="replace")
        if rc != 0:
            raise RuntimeError(f"{label}: relay exited {rc}\n{text[-3000:]}")
        totals = relay_totals(text)
        n, nbytes, published = expect
        count = self.stream_count()
        problems = []
        if totals.get("records") != n:
            problems.append(f"read {totals.get('records')} records, expected {n}")
        if totals.get("published") not in (None, published) or count != published:
            problems.append(f"published {totals.get('published')}, stream holds {count}, "
                            f"expected {published}")
        if totals.get("deadlettered", 0):
            problems.append(f"{totals['deadlettered']} dead-lettered")
        if batched != ("publishing in fast-ingest batches" in text):
            problems.append("fast-ingest batches " + ("not used" if batched else "used"))
        if problems:
            raise RuntimeError(f"{label}: " + "; ".join(problems) + "\n" + text[-3000:])
        return {
            "label": label, "records": n, "bytes": nbytes, "seconds": m.wall, "cpu": m.cpu,
            "user": m.user, "sys": m.sys, "rss_mb": m.rss_mb, "server_cpu": m.server_cpu,
            "others_cpu": m.others_cpu, "stored": count, "published": published,
            "csw": m.csw, "totals": totals, "others_pct": others_pct(m),
        }


def others_pct(m):
    """CPU other processes used during a run, in % of the whole machine."""
    return max(0.0, 100 * m.others_cpu / m.wall / os.cpu_count())


def relay_totals(log_text):
    """key=value pairs of the relay's last line of totals ("spool relayed records=..")."""
    found = {}
    for line in log_text.splitlines():
        if " records=" in line and " published=" in line:
            found = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)\b", line)}
    return found


def describe(run):
    rate = run["records"] / run["seconds"]
    return (f"{run['label']:<24} {run['records']:>8} rec {run['seconds']:7.2f} s "
            f"{rate:>9,.0f} rec/s {run['bytes'] / run['seconds'] / 1e6:6.1f} MB/s  "
            f"cpu {run['cpu']:6.2f} s (u {run['user']:.2f} s {run['sys']:.2f})  "
            f"server {run['server_cpu']:5.2f} s  others {run['others_pct']:3.0f} %  "
            f"rss {run['rss_mb']:6.1f} MB  stored {run['stored']}"
            + (f"  csw/100k {run['csw'] * 100000 / run['records']:,.0f}" if "csw" in run else ""))


# ---------------------------------------------------------------------------------------
# Throughput


ROWS = [
    # key, label in the table, what it is
    ("bare-reply", "bare publisher, core publish + reply subject per slot"),
    ("bare-async", "bare publisher, js_PublishMsgAsync"),
    ("natsbench-async", "`nats bench js pub async --dedup` (natscli)"),
    ("sync", "one at a time, js_Publish (kumod await_ack)"),
    ("relay-builtin", "relay, built-in policy (`kumo.log.{type}`)"),
    ("relay-fast", "relay, built-in policy, fast-ingest batches (`allow_batched`) ⁴"),
    ("relay-seed", "relay, seed Lua policy (config/policy.lua)"),
    ("relay-connection", "relay, connection-object Lua policy"),
]


def throughput(bench, spool, stats, records_file):
    n, nbytes = stats["records"], stats["bytes"]
    receptions = stats["by_type"].get("Reception", 0)
    sync_n = max(1, n // SYNC_DIV)
    avg_size = round(nbytes / n)
    results = {k: [] for k, _ in ROWS}
    # Fast-ingest batches need nats-server >= 2.14 (a stream option it does not know is
    # dropped by older servers, so the row would only repeat relay-builtin).
    fast = bench.fresh_stream(allow_batched=True)
    if not fast:
        say("   (this nats-server does not take allow_batched: no fast-ingest row)")
    for rnd in range(1, ROUNDS + 1):
        say(f"\n-- round {rnd}/{ROUNDS}")
        plan = [
            ("bare-reply", lambda l: bench.bare(l, "reply", records_file)),
            ("bare-async", lambda l: bench.bare(l, "async", records_file)),
            ("natsbench-async", lambda l: bench.natsbench(l, "async", n, avg_size)),
            ("sync", lambda l: bench.bare(l, "sync", records_file, limit=sync_n)),
            ("relay-builtin", lambda l: bench.relay(l, spool, "builtin", (n, nbytes, n))),
            ("relay-fast", lambda l: bench.relay(l, spool, "builtin", (n, nbytes, n),
                                                 batched=True)),
            ("relay-seed", lambda l: bench.relay(l, spool, "seed", (n, nbytes, n))),
            ("relay-connection", lambda l: bench.relay(l, spool, "connection",
                                                       (n, nbytes, n - receptions))),
        ]
        for key, fn in plan:
            if key == "natsbench-async" and NATS_CLI is None:
                continue
            if (key == "relay-fast" and not fast) or (ONLY_ROWS and key not in ONLY_ROWS):
                continue
            run = fn(f"{key}-{rnd}")
            run["key"] = key
            results[key].append(run)
            bench.runs.append(run)
            say("  " + describe(run))
    return results


def med(runs, fn):
    return statistics.median(fn(r) for r in runs)


def table(results):
    rate = {k: med(v, lambda r: r["records"] / r["seconds"]) for k, v in results.items() if v}
    # The ceiling: the fastest independent publisher of the same records in this run.
    ceiling_key = max(("bare-reply", "bare-async", "natsbench-async"),
                      key=lambda k: rate.get(k, 0))
    ceiling = rate.get(ceiling_key)  # None when BENCH_ROWS left out every ceiling row
    lines = [
        "| run | records | records/s | MB/s | CPU s / 100k | nats-server CPU s / 100k "
        "| peak RSS | vs ceiling |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for key, what in ROWS:
        runs = results.get(key)
        if not runs:
            continue
        n = runs[0]["records"]
        note = ""
        if key == "sync":
            note = " ¹"
        if key == "relay-connection":
            note = " ²"
        if key == "natsbench-async":
            note = " ³"
        if key == ceiling_key:
            note += " (ceiling)"
        lines.append(
            f"| {what}{note} | {n:,} | {rate[key]:,.0f} "
            f"| {med(runs, lambda r: r['bytes'] / r['seconds'] / 1e6):.1f} "
            f"| {med(runs, lambda r: r['cpu'] / r['records'] * 1e5):.2f} "
            f"| {med(runs, lambda r: r['server_cpu'] / r['records'] * 1e5):.2f} "
            f"| {med(runs, lambda r: r['rss_mb']):.0f} MB "
            f"| {f'{rate[key] / ceiling:.2f}' if ceiling else '–'} |")
    if rate.get("relay-fast") and rate.get("relay-builtin"):
        lines.append(f"\nrelay on fast-ingest batches / relay on async publishes: "
                     f"{rate['relay-fast'] / rate['relay-builtin']:.2f} × the rate (target ≥ 1.5), "
                     f"{med(results['relay-fast'], lambda r: r['cpu'] / r['records'] * 1e5):.2f} vs "
                     f"{med(results['relay-builtin'], lambda r: r['cpu'] / r['records'] * 1e5):.2f} "
                     f"CPU s / 100k")
    lines += per_round_ratios(results)
    return "\n".join(lines), ceiling_key


def per_round_ratios(results):
    """Each relay row against the fastest independent publisher of the same round. The
    rows of a round run back to back, so this ratio compares runs made under the same
    conditions; the table's ratio (median rate / median ceiling) also moves with the
    machine's drift between rounds, which on a shared VM is up to ±15 %."""
    ceilings = {}
    for key in ("bare-reply", "bare-async", "natsbench-async"):
        for rnd, run in enumerate(results.get(key, [])):
            ceilings[rnd] = max(ceilings.get(rnd, 0), run["records"] / run["seconds"])
    out = []
    for key, what in ROWS:
        runs = results.get(key) if key.startswith("relay") else None
        if not runs or len(ceilings) < len(runs):
            continue
        ratios = [r["records"] / r["seconds"] / ceilings[i] for i, r in enumerate(runs)]
        out.append(f"- {what}: " + " ".join(f"{x:.2f}" for x in ratios)
                   + f" (median {statistics.median(ratios):.2f})")
    if out:
        out.insert(0, "\nvs the fastest independent publisher of the same round, round by round:")
    return out


# ---------------------------------------------------------------------------------------
# Latency


STAMP_PLACEHOLDER = b"1000000000000000000"  # 19 digits, as time.time_ns() until 2286


def latency(bench):
    """The relay as a daemon on an empty spool; a plain segment gets LAT_RATE records/s for
    LAT_SECONDS, each stamped with its append time; latency_probe measures append ->
    delivered (core subscription) and append -> stored (JetStream's timestamp)."""
    total = LAT_RATE * LAT_SECONDS
    bench.fresh_stream()
    spool = bench.tmp / "spool-latency"
    spool.mkdir()
    lines = []
    for line in records.iter_records(total, seed=1, prefix="lat"):
        rec = json.loads(line)
        rec["meta"]["bench_append_ns"] = int(STAMP_PLACEHOLDER)
        lines.append(harness._encode(rec))
    warm = records.iter_records(1, seed=1, prefix="warm").__next__()
    pos = [l.index(STAMP_PLACEHOLDER) for l in lines]

    probe = subprocess.Popen([str(PROBE), "-s", bench.url, "--subject", "kumo.log.>",
                              "--stream", STREAM, "--count", str(total), "--idle", "10",
                              "--raw", str(bench.tmp / "latency-raw.txt")],
                             stdout=subprocess.PIPE, stderr=open(bench.tmp / "probe.err", "wb"))
    if probe.stdout.readline().strip() != b"ready":
        raise RuntimeError("latency_probe did not start: "
                           + (bench.tmp / "probe.err").read_text())
    state = bench.tmp / "state-latency"
    cfg = bench.relay_config(spool, state, "builtin")
    cfg_path = bench.tmp / "latency.yaml"
    cfg_path.write_text(harness.to_yaml(cfg) + "\n")
    log = open(bench.tmp / "latency.log", "wb")
    relay = Measured([RELAY, "-c", cfg_path], bench.server.proc.pid, stdout=log,
                     stderr=subprocess.STDOUT, tmp=bench.tmp)

    seg = spool / harness.segment_name()
    fd = os.open(seg, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(fd, warm)  # no stamp: tells the probe the relay is up and publishing
    if probe.stdout.readline().strip() != b"warm":
        raise RuntimeError("no warm-up record reached the probe")

    t_start = time.monotonic()
    relay_pid = relay.pid()
    cpu_before = proc_cpu_seconds(relay_pid)
    period = 1.0 / LAT_RATE
    for i, line in enumerate(lines):
        due = t_start + i * period
        delay = due - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        p = pos[i]
        os.write(fd, line[:p] + str(time.time_ns()).encode() + line[p + 19:])
    t_written = time.monotonic()
    cpu_steady = proc_cpu_seconds(relay_pid) - cpu_before
    os.fchmod(fd, 0o444)  # done, as kumod marks a closed segment
    os.close(fd)

    out, _ = probe.communicate(timeout=120)
    os.kill(relay_pid, signal.SIGTERM)
    relay.wait(60)
    log.close()
    res = json.loads(out.decode().strip().splitlines()[-1])
    res.update({
        "records": total, "rate_target": LAT_RATE,
        "rate_written": total / (t_written - t_start),
        "relay_cpu_pct": 100 * cpu_steady / (t_written - t_start),
        "relay_rss_mb": relay.rss_mb, "others_pct": others_pct(relay),
        "stream": bench.stream_count(),
    })
    return res


def latency_text(res):
    def row(name, what):
        d = res[what]
        return (f"| {name} | {d['count']:,} | {d['p50_ms']:.2f} | {d['p90_ms']:.2f} "
                f"| {d['p99_ms']:.2f} | {d['p999_ms']:.2f} | {d['max_ms']:.2f} |")
    return "\n".join([
        f"{res['records']:,} records appended one write(2) each to a plain segment at "
        f"{res['rate_written']:,.0f}/s (target {res['rate_target']:,}/s); relay running as a "
        f"daemon (built-in policy); relay CPU while appending: {res['relay_cpu_pct']:.1f} % of "
        f"one core; stream holds {res['stream']:,} (+1 warm-up record); other processes used "
        f"{res['others_pct']:.0f} % of the machine meanwhile.",
        "",
        "| append → | records | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms |",
        "|---|---:|---:|---:|---:|---:|---:|",
        row("stored in the stream (JetStream's timestamp, just before the ack)", "stored"),
        row("delivered to a core subscriber on the subject", "delivered"),
    ])


# ---------------------------------------------------------------------------------------
# Big backlog


def big(bench):
    spool = bench.tmp / "spool-big"
    say(f"\n-- big backlog: generating {BIG_RECORDS:,} records")
    t = time.monotonic()
    stats = write_spool(spool, BIG_RECORDS, "big")
    say(f"   {stats['records']:,} records, {stats['bytes'] / 1e9:.2f} GB in "
        f"{stats['segments']} zstd segments ({stats['file_bytes'] / 1e6:.0f} MB on disk), "
        f"{time.monotonic() - t:.0f} s")
    n, nbytes = stats["records"], stats["bytes"]
    out = []
    for policy in ("builtin", "seed"):
        run = bench.relay(f"big-{policy}", spool, policy, (n, nbytes, n))
        say("  " + describe(run))
        out.append(run)
        bench.stream("delete", STREAM, check=False)  # give the disk back
    shutil.rmtree(spool, ignore_errors=True)
    return stats, out


# ---------------------------------------------------------------------------------------
# Profile

_CG_LINE = re.compile(r"^\s*([\d,]+)\s+\(\s*([\d.]+)%\)\s+(<|\*)?\s*(.*?) \[(.*)\]\s*$")


def _cg_entries(text):
    """(Ir, percent, marker, function, object) of callgrind_annotate lines."""
    out = []
    for line in text.splitlines():
        m = _CG_LINE.match(line)
        if m and "PROGRAM TOTALS" not in line:
            ir, pct, marker, fn, obj = m.groups()
            out.append((int(ir.replace(",", "")), float(pct), marker, fn.rsplit(":", 1)[-1],
                        Path(obj).name))
    return out


def callgrind_top(cg_file, n=15):
    """Markdown rows of the n functions with the highest self cost (instructions), an
    anonymous function (no symbol in a stripped library) named after its main caller."""
    def annotate(*extra):
        return subprocess.run(["callgrind_annotate", "--inclusive=no", *extra, str(cg_file)],
                              capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"([\d,]+) \(100.0%\)\s+PROGRAM TOTALS",
                          annotate()).group(1).replace(",", ""))
    top = [e for e in _cg_entries(annotate("--threshold=100"))][:n]
    callers, current = {}, []
    for ir, _, marker, fn, obj in _cg_entries(annotate("--tree=caller", "--threshold=100")):
        if marker == "<":
            current.append((ir, fn, obj))
        elif marker == "*":
            callers[(fn, obj)] = sorted(current, reverse=True)
            current = []
        else:
            current = []
    rows = []
    for i, (ir, pct, _, fn, obj) in enumerate(top, 1):
        name = f"`{fn}`"
        if fn.startswith("0x") and callers.get((fn, obj)):
            _, cfn, _ = callers[(fn, obj)][0]
            cfn = re.sub(r" \([\d,]+x\)$", "", cfn)
            name = f"{fn} (static; called from `{cfn}`)"
        rows.append(f"| {i} | {pct:.1f} % | {ir / 1e6:,.1f} M | {name} | {obj} |")
    return total, rows


_SYSCALL_WRAPPERS = [("futex", "futex"), ("lll_lock", "futex"), ("pthread_cond", "futex"),
                     ("pthread_mutex", "futex"), ("send", "sendto"), ("recv", "recvfrom"),
                     ("epoll", "epoll_wait"), ("write", "write"), ("read", "read")]


def _kernel_cause(frames):
    """What a kernel sample was doing: the syscall (from the kernel's entry point, or else
    from the libc wrapper that made it), a page fault, or a preemption."""
    for f in frames:
        m = re.search(r" __(?:x64|se)_sys_(\w+) ", f)
        if m:
            return f"syscall {m.group(1)}"
        if " exc_page_fault " in f:
            return "page faults"
    user = next((f for f in frames if "[kernel.kallsyms]" not in f), "")
    if any(" entry_SYSCALL" in f for f in frames):
        for key, name in _SYSCALL_WRAPPERS:
            if key in user:
                return f"syscall {name}"
        return "syscall (other)"
    if any(" schedule " in f or " __schedule " in f for f in frames):
        return "preempted / rescheduled"
    return "interrupts and other"


def perf_summary(data, n=15):
    """Markdown rows: top n symbols by self samples; split by user/kernel, by thread, and
    kernel samples by the syscall (or fault) they were in."""
    rep = subprocess.run(["perf", "report", "-i", str(data), "--no-children", "--stdio",
                          "--sort", "dso,sym", "-g", "none", "-F", "overhead,dso,sym"],
                         capture_output=True, text=True, check=True).stdout
    rows = []
    for line in rep.splitlines():
        m = re.match(r"^\s*([\d.]+)%\s+(\S+)\s+\[(.)\]\s+(.*?)\s*$", line)
        if m:
            pct, dso, kind, sym = m.groups()
            rows.append((float(pct), dso, kind, sym))
    rows.sort(reverse=True)
    top = [f"| {i} | {pct:.1f} % | `{sym}` | {dso} |"
           for i, (pct, dso, kind, sym) in enumerate(rows[:n], 1)]

    script = subprocess.run(["perf", "script", "-i", str(data), "-F", "pid,tid,ip,sym,dso"],
                            capture_output=True, text=True, check=True).stdout
    total = user = 0
    threads, kernel = {}, {}
    for block in script.split("\n\n"):
        lines = [l.strip() for l in block.strip().splitlines()]
        if len(lines) < 2:
            continue
        pid, tid = lines[0].split()[0].split("/")
        total += 1
        who = "main loop thread" if pid == tid else "nats.c threads"
        threads[who] = threads.get(who, 0) + 1
        frames = lines[1:]
        if "[kernel.kallsyms]" not in frames[0]:
            user += 1
            continue
        kernel[_kernel_cause(frames)] = kernel.get(_kernel_cause(frames), 0) + 1
    split = [f"samples {total:,}: user {100 * user / total:.0f} %, kernel "
             f"{100 * (total - user) / total:.0f} %; "
             + ", ".join(f"{k} {100 * v / total:.0f} %" for k, v in sorted(threads.items()))]
    split.append("kernel time by cause (% of all samples): " + ", ".join(
        f"{k} {100 * v / total:.1f} %" for k, v in sorted(kernel.items(), key=lambda kv: -kv[1])
        if 100 * v / total >= 0.5))
    return top, split


def published_by(policy, stats):
    """How many of a spool's records `policy` publishes: the connection-object policy drops
    the Reception records."""
    dropped = stats["by_type"].get("Reception", 0) if policy == "connection" else 0
    return stats["records"] - dropped


def profile(bench, spool, stats):
    """The relay over a spool, built-in, seed and connection-object policy: under callgrind
    over `spool` (20k records: instructions, user space, exact) and under perf record -g
    over a spool of BENCH_RECORDS (CPU samples at perf's default 4 kHz, kernel included; a
    longer run so that start-up weighs little and there are enough samples). Returns
    Markdown."""
    n, nbytes = stats["records"], stats["bytes"]
    say(f"\n-- generating {N_RECORDS:,} records for perf")
    big_spool = bench.tmp / "spool-perf"
    pstats = write_spool(big_spool, N_RECORDS, "p")
    pn, pbytes = pstats["records"], pstats["bytes"]
    out = []
    for policy in ("builtin", "seed", "connection"):
        published, ppublished = (published_by(policy, st) for st in (stats, pstats))
        cg = bench.tmp / f"callgrind-{policy}.out"
        bench.relay(f"callgrind-{policy}", spool, policy, (n, nbytes, published),
                    ack_timeout="120s",
                    wrapper=("valgrind", "--tool=callgrind", f"--callgrind-out-file={cg}"))
        total, rows = callgrind_top(cg)
        pd = bench.tmp / f"perf-{policy}.data"
        run = bench.relay(f"perf-{policy}", big_spool, policy, (pn, pbytes, ppublished),
                          wrapper=("perf", "record", "-q", "-g", "-o", str(pd), "--"))
        ptop, split = perf_summary(pd)
        out += [f"### {policy} policy: callgrind over {n:,} records, self cost",
                "",
                f"{total / 1e6:,.0f} M instructions in all, {total / n:,.0f} per record "
                f"(start-up included).",
                "",
                "| # | self | instructions | function | object |",
                "|---:|---:|---:|---|---|",
                *rows,
                "",
                f"### {policy} policy: perf record -g over {pn:,} records, self samples",
                "",
                f"CPU {run['cpu']:.2f} s under perf ({run['cpu'] / pn * 1e5:.2f} s / 100k), "
                f"{run['records'] / run['seconds']:,.0f} records/s; " + split[0] + ".",
                "",
                split[1] + ".",
                "",
                "| # | self | symbol | object |",
                "|---:|---:|---|---|",
                *ptop,
                ""]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------


def check_tools(*paths):
    missing = [str(p) for p in paths if not os.access(p, os.X_OK)]
    if missing:
        sys.exit("missing: " + ", ".join(missing) + " (run tests/bench/run.sh, which builds them)")


def main():
    mode = sys.argv[1] if len(sys.argv) > 1 else "all"
    if mode not in ("all", "profile"):
        sys.exit(__doc__)
    check_tools(RELAY, SPOOLWRITE, STREAMTOOL, BARE, PROBE, NATS_SERVER,
                *([NATS_CLI] if NATS_CLI else []))
    if NATS_CLI is None:
        say("(BENCH_NATS is not set: no `nats bench` row; tests/bench/run.sh sets it)")
    info = machine()
    busy = busy_others()
    say("## Machine\n")
    for k, v in info.items():
        say(f"- {k}: {' '.join(v) if isinstance(v, list) else v}")
    say(f"- CPU already in use by other processes at start: {busy * 100:.0f} %")
    tmp = Path(tempfile.mkdtemp(prefix="knr-bench-"))
    bench = None
    try:
        bench = Bench(tmp)
        say(f"- nats-server -js, file storage, store {bench.server.store_dir}, {bench.url}")
        n = 20000 if mode == "profile" else N_RECORDS
        say(f"\n-- generating {n:,} records")
        t = time.monotonic()
        spool = tmp / "spool"
        records_file = tmp / "records.jsonl"
        stats = write_spool(spool, n, "r", records_file)
        say(f"   {stats['records']:,} records, {stats['bytes'] / stats['records']:.0f} bytes "
            f"on average, {stats['bytes'] / 1e6:.1f} MB in {stats['segments']} zstd "
            f"segment(s) ({stats['file_bytes'] / 1e6:.1f} MB on disk), "
            f"{time.monotonic() - t:.0f} s")
        say("   types: " + ", ".join(f"{k} {v}" for k, v in
                                      sorted(stats["by_type"].items(), key=lambda kv: -kv[1])))
        if mode == "profile":
            say("\n" + profile(bench, spool, stats))
            return
        text = None
        if os.environ.get("BENCH_THROUGHPUT", "1") != "0":
            results = throughput(bench, spool, stats, records_file)
            text, _ = table(results)
        records_file.unlink()
        lat = None
        if os.environ.get("BENCH_LATENCY", "1") != "0":
            say(f"\n-- latency: {LAT_RATE}/s for {LAT_SECONDS} s")
            lat = latency(bench)
            say("   " + json.dumps(lat))
        big_res = None
        if os.environ.get("BENCH_BIG") == "1":
            big_res = big(bench)
        if text:
            say(f"\n## Throughput (median of {ROUNDS} alternating rounds)\n")
            say(f"{stats['records']:,} records, {stats['bytes'] / stats['records']:.0f} bytes on "
                f"average ({stats['bytes'] / 1e6:.1f} MB), in {stats['segments']} zstd "
                f"segment(s); window {WINDOW}, a Nats-Msg-Id on every message; one nats-server on the same "
                f"machine.\n")
            say(text)
            say(f"\n¹ on the first {max(1, stats['records'] // SYNC_DIV):,} records "
                f"(1/{SYNC_DIV}); its rate does not depend on the count.")
            say(f"² drops the {stats['by_type'].get('Reception', 0):,} Reception records and "
                f"publishes the rest; records/s and MB/s count every record read.")
            say(f"³ its own rate (first publish to last ack) for as many messages of the records' "
                f"average size, {stats['bytes'] / stats['records']:.0f} bytes, with --dedup "
                f"and --batch {WINDOW}; CPU: the whole process.")
            say("⁴ the same run into a stream with allow_batched (nats-server ≥ 2.14): the "
                "relay learns so from STREAM.INFO after its first ack and publishes in "
                "ADR-50 fast-ingest batches, one flow ack per up to 500 messages; relay-builtin's "
                "stream does not allow them, so it publishes with one ack per message.")
            say("Relay rows: the whole process, start to exit (`--once`: read, publish, wait for "
                "every ack, checkpoint). Bare rows: first publish to last ack, records already in "
                "memory; their RSS holds the whole records file. CPU: user+sys of the process "
                "(all threads), from wait4/getrusage; nats-server CPU from /proc over the same "
                "span. MB = 10^6 bytes of record lines.")
            noise = [r["others_pct"] for r in bench.runs]
            say(f"Other processes on the machine during these runs: median "
                f"{statistics.median(noise):.0f} %, max {max(noise):.0f} % of its CPU.")
        if lat:
            say("\n## Latency\n")
            say(latency_text(lat))
        if big_res:
            stats_b, runs = big_res
            say("\n## Peak RSS over a big backlog\n")
            say(f"{stats_b['records']:,} records ({stats_b['bytes'] / 1e9:.2f} GB) in "
                f"{stats_b['segments']} zstd segments, max_in_flight {WINDOW}, `--once`:\n")
            for r in runs:
                say(f"- {r['label']}: peak RSS {r['rss_mb']:.0f} MB, "
                    f"{r['records'] / r['seconds']:,.0f} records/s, "
                    f"{r['cpu'] / r['records'] * 1e5:.2f} CPU s / 100k "
                    f"(other processes: {r['others_pct']:.0f} % of the machine)")
        say(f"\nCPU in use by other processes at the end: {busy_others() * 100:.0f} %; "
            f"loadavg {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    finally:
        if bench is not None:
            bench.server.stop()
        if os.environ.get("BENCH_KEEP") == "1":
            say(f"kept {tmp}")
        else:
            shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
