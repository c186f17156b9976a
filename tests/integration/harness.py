"""Integration test harness for kumo-nats-relay (Python 3.11 standard library only).

Everything a test needs to drive the real binary against a real nats-server:

- ``Tools``: where the binaries are (``build/`` next to this repository; override with
  KNR_BUILD_DIR, or per binary with KNR_RELAY, KNR_SPOOLWRITE, KNR_STREAMTOOL,
  KNR_NATS_SERVER or NATS_SERVER).
- ``NatsServer`` / ``NatsCluster``: nats-server with JetStream on loopback, started on a free
  port in the test's temp dir; stop, kill, restart on the same port and store.
- ``SegmentWriter``: a spool segment written exactly the way kumod writes it (tests/tools/
  spoolwrite.c): one zstd frame, no per-record flush, write bits cleared when done.
- ``make_records``: realistic KumoMTA log record lines.
- ``Relay`` and ``relay_config``: the daemon with a YAML config, or ``--once``.
- ``dump_stream``, ``stream_info``, ``create_stream``, ``wait_count``... (tests/tools/
  streamtool.c) and ``assert_exactly_once`` to compare a stream with what was written.
- ``poll``: wait for a condition with a deadline. Tests never sleep to wait.
- ``RelayTestCase``: a unittest base class giving each test its own temp dir and killing
  every process it started, pass or fail (and printing their logs on failure).
"""

import atexit
import base64
import collections
import datetime
import errno
import json
import os
import random
import re
import select
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import unittest
import urllib.error
import urllib.request
import weakref
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Set by tests/sanitize.sh: the binaries are ASan/UBSan builds, several times slower and
# with a larger RSS (shadow memory, quarantine); timing and memory bounds do not hold.
SANITIZED = bool(os.environ.get("KNR_SANITIZED"))
KUMO_SUBJECTS = ["kumo.log.>"]
DEFAULT_SUBJECT = "kumo.log.{type}"


# ---------------------------------------------------------------------------------------
# Binaries and process bookkeeping


def _binary(env, default):
    return Path(os.environ[env]) if os.environ.get(env) else default


class Tools:
    """Paths of the programs under test. Each can be overridden by an environment variable."""

    build_dir = Path(os.environ.get("KNR_BUILD_DIR") or REPO / "build")
    relay = _binary("KNR_RELAY", build_dir / "kumo-nats-relay")
    spoolwrite = _binary("KNR_SPOOLWRITE", build_dir / "tests" / "spoolwrite")
    streamtool = _binary("KNR_STREAMTOOL", build_dir / "tests" / "streamtool")
    zstdpeek = _binary("KNR_ZSTDPEEK", build_dir / "tests" / "zstdpeek")
    # NATS_SERVER (the name tests/run.sh's server matrix sets) or KNR_NATS_SERVER; default
    # Debian's package.
    nats_server = _binary(
        "NATS_SERVER" if os.environ.get("NATS_SERVER") else "KNR_NATS_SERVER",
        Path(shutil.which("nats-server") or "/usr/sbin/nats-server"),
    )

    @classmethod
    def missing(cls, *names):
        """Names (relay, spoolwrite, streamtool, zstdpeek, nats_server) whose binary is not
        there."""
        return [n for n in names if not os.access(getattr(cls, n), os.X_OK)]

    @classmethod
    def require(cls, *names):
        gone = cls.missing(*names)
        if gone:
            raise RuntimeError(
                "missing binaries: "
                + ", ".join(f"{n} ({getattr(cls, n)})" for n in gone)
                + "; build with tests/run.sh or point KNR_* at them"
            )


# Every process the harness starts, so that nothing outlives the test run.
_LIVE = weakref.WeakSet()


def _spawn(args, **kwargs):
    proc = subprocess.Popen([str(a) for a in args], **kwargs)
    _LIVE.add(proc)
    return proc


def _kill_all():
    for proc in list(_LIVE):
        if proc.poll() is None:
            try:
                proc.kill()
                proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                pass


atexit.register(_kill_all)


def _stop_process(proc, timeout, sig=signal.SIGTERM):
    """Signal, wait up to `timeout`, SIGKILL if still there. Returns (exit code, timed out)."""
    if proc.poll() is not None:
        return proc.returncode, False
    proc.send_signal(sig)
    try:
        return proc.wait(timeout), False
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait(), True


def poll(fn, timeout, what, interval=0.02, ignore=()):
    """Call fn() until it returns something truthy and return that; after `timeout` seconds
    raise AssertionError naming `what`. Exceptions of the types in `ignore` count as "not
    yet" (the last one is reported on timeout); any other exception propagates."""
    deadline = time.monotonic() + timeout
    last_exc = None
    while True:
        try:
            value = fn()
            if value:
                return value
        except ignore as exc:  # noqa: PERF203
            last_exc = exc
        if time.monotonic() >= deadline:
            detail = f" (last error: {last_exc!r})" if last_exc else ""
            raise AssertionError(f"timed out after {timeout}s waiting for {what}{detail}")
        time.sleep(interval)


_HANDED_OUT = set()


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on now (and not handed out before)."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if port not in _HANDED_OUT:
            _HANDED_OUT.add(port)
            return port
    raise RuntimeError("no free port")


def split_lines(data):
    """Split bytes after every b"\n" (kept); a trailing partial line is the last item.
    Unlike bytes.splitlines, a lone "\r" is not a line end."""
    parts = data.split(b"\n")
    lines = [p + b"\n" for p in parts[:-1]]
    return lines + [parts[-1]] if parts[-1] else lines


def _tail(path, lines=60):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return ""
    return "\n".join(text.splitlines()[-lines:])


# ---------------------------------------------------------------------------------------
# streamtool wrappers


def streamtool(url, *args, input=None, timeout=120, check=True):
    """Run streamtool; returns CompletedProcess (stdout/stderr as bytes)."""
    Tools.require("streamtool")
    proc = subprocess.run(
        [str(Tools.streamtool), "-s", url, *map(str, args)],
        input=input,
        capture_output=True,
        timeout=timeout,
    )
    if check and proc.returncode != 0:
        raise AssertionError(
            f"streamtool {' '.join(map(str, args))} exited {proc.returncode}: "
            f"{proc.stderr.decode(errors='replace').strip()}"
        )
    return proc


def create_stream(url, name, subjects=None, storage=None, replicas=None, dup_window=None,
                  max_msgs=None, discard=None, timeout=30):
    """Create a stream (retrying while JetStream/the cluster is not ready)."""
    args = ["create", name, *(subjects or KUMO_SUBJECTS)]
    for flag, value in (("--storage", storage), ("--replicas", replicas),
                        ("--dup-window", dup_window), ("--max-msgs", max_msgs),
                        ("--discard", discard)):
        if value is not None:
            args += [flag, value]
    streamtool(url, *args, "--timeout", timeout, timeout=timeout + 30)


def stream_info(url, name):
    """dict: name, messages, bytes, first_seq, last_seq, num_deleted, duplicate_window,
    replicas, storage, cluster, leader, peers."""
    return json.loads(streamtool(url, "info", name).stdout)


def stream_count(url, name):
    return int(streamtool(url, "count", name).stdout)


def wait_count(url, name, n, timeout):
    """Wait until the stream holds >= n messages; returns the count, raises on timeout."""
    proc = streamtool(url, "wait-count", name, n, timeout, timeout=timeout + 30, check=False)
    if proc.returncode != 0:
        raise AssertionError(
            f"stream {name} did not reach {n} messages in {timeout}s: "
            f"{proc.stderr.decode(errors='replace').strip()}"
        )
    return int(proc.stdout)


def publish(url, subject, data, msgid=None):
    """One synchronous JetStream publish; returns {"stream", "seq", "duplicate"}."""
    proc = streamtool(url, "publish", subject, msgid or "-", input=data)
    return json.loads(proc.stdout)


def nats_request(url, subject, payload=b"", timeout=5.0):
    """One core NATS request to a single server URL (plain protocol over a socket: the
    JetStream API calls streamtool has no command for). Returns the reply payload."""
    host, port = url.split("//", 1)[-1].rsplit(":", 1)
    inbox = f"_KNR_INBOX.{random.randrange(10 ** 9)}"
    with socket.create_connection((host, int(port)), timeout=timeout) as s:
        buf = b""
        while b"\r\n" not in buf:
            chunk = s.recv(4096)
            if not chunk:
                raise AssertionError(f"{url} closed the connection before its INFO")
            buf += chunk
        s.sendall(b'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\n'
                  + f"SUB {inbox} 1\r\nPUB {subject} {inbox} {len(payload)}\r\n".encode()
                  + payload + b"\r\n")
        buf = buf.split(b"\r\n", 1)[1]
        deadline = time.monotonic() + timeout
        while True:
            m = re.search(rb"(?:^|\r\n)(H?MSG) \S+ \S+ (?:(\d+) )?(\d+)\r\n", buf)
            if m and len(buf) >= m.end() + int(m.group(3)):
                data = buf[m.end():m.end() + int(m.group(3))]
                hdr_len = int(m.group(2) or 0)
                if m.group(1) == b"HMSG" and b" 503" in data[:hdr_len]:
                    raise AssertionError(f"no responders for {subject}")
                return data[hdr_len:]
            if b"PING\r\n" in buf:
                s.sendall(b"PONG\r\n")
                buf = buf.replace(b"PING\r\n", b"")
            if time.monotonic() > deadline:
                raise AssertionError(f"no reply to {subject} from {url} in {timeout}s")
            chunk = s.recv(65536)
            if not chunk:
                raise AssertionError(f"{url} closed the connection")
            buf += chunk


def http_get(url):
    """(status, body) of a GET; 4xx and 5xx answers are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def metric(text, name, labels=""):
    """The value of kumo_nats_relay_<name><labels> in a /metrics text."""
    m = re.search(rf"^kumo_nats_relay_{name}{re.escape(labels)} ([0-9.e+]+)$", text, re.M)
    if not m:
        raise AssertionError(f"metric {name}{labels} not found")
    return float(m.group(1))

def fill_filesystem(directory):
    """Fill the filesystem of `directory` with a file until ENOSPC; returns its path."""
    path = Path(directory) / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return path


def stream_leader_stepdown(url, name):
    """Ask the stream's leader to step down (the cluster elects another replica)."""
    reply = json.loads(nats_request(url, f"$JS.API.STREAM.LEADER.STEPDOWN.{name}"))
    if not reply.get("success"):
        raise AssertionError(f"stepdown of {name}: {reply}")


def dump_stream(url, name, slow=False, timeout=300):
    """Every message of the stream in sequence order, as dicts with seq, subject, msgid
    (str or None) and data (bytes)."""
    args = ["dump", name] + (["--slow"] if slow else [])
    proc = streamtool(url, *args, timeout=timeout)
    out = []
    for line in proc.stdout.splitlines():
        m = json.loads(line)
        m["data"] = base64.b64decode(m["data"])
        out.append(m)
    return out


# ---------------------------------------------------------------------------------------
# nats-server


class NatsServer:
    """nats-server with JetStream, listening on 127.0.0.1 only.

    `cluster`: None, or a dict {"name", "port", "routes": [route URLs]} to join a cluster
    (see NatsCluster). The log goes to <tmpdir>/nats-<name>.log (appended across restarts).
    """

    def __init__(self, tmpdir, port=None, name=None, cluster=None, extra_args=(), start=True,
                 ready_timeout=30, binary=None):
        self.binary = binary  # None: Tools.nats_server
        self.tmpdir = Path(tmpdir)
        self.port = port or free_port()
        self.name = name or f"n{self.port}"
        self.cluster = cluster
        self.extra_args = list(extra_args)
        self.store_dir = self.tmpdir / f"nats-{self.name}"
        self.log_path = self.tmpdir / f"nats-{self.name}.log"
        self.proc = None
        self.starts = 0
        if start:
            self.start(ready_timeout=ready_timeout)

    @property
    def url(self):
        return f"nats://127.0.0.1:{self.port}"

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def args(self):
        args = [self.binary or Tools.nats_server, "-js", "-a", "127.0.0.1", "-p", self.port,
                "-sd", self.store_dir, "-n", self.name]
        if self.cluster:
            args += ["--cluster_name", self.cluster["name"],
                     "--cluster", f"nats://127.0.0.1:{self.cluster['port']}"]
            if self.cluster.get("routes"):
                args += ["--routes", ",".join(self.cluster["routes"])]
        return args + self.extra_args

    def start(self, wait=True, ready_timeout=30):
        Tools.require("nats_server")
        if self.running:
            raise RuntimeError(f"nats-server {self.name} is already running")
        self.store_dir.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        with open(self.log_path, "ab") as log:
            log.write(f"==== start {self.starts}: {' '.join(map(str, self.args()))}\n".encode())
            log.flush()
            self.proc = _spawn(self.args(), stdout=log, stderr=subprocess.STDOUT,
                               stdin=subprocess.DEVNULL)
        if wait:
            self.wait_ready(ready_timeout, jetstream=self.cluster is None)
        return self

    def accepts(self):
        """True when the port accepts a connection and greets with INFO."""
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                return s.recv(4).startswith(b"INFO")
        except OSError:
            return False

    def wait_ready(self, timeout=30, jetstream=True):
        """Wait until the port accepts TCP and (with `jetstream`) JetStream answers."""
        def up():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"nats-server {self.name} exited with {self.proc.returncode}:\n"
                    + _tail(self.log_path))
            return self.accepts()

        deadline = time.monotonic() + timeout
        poll(up, timeout, f"nats-server {self.name} to accept connections on {self.port}")
        if jetstream:
            left = max(1.0, deadline - time.monotonic())
            proc = streamtool(self.url, "ready", left, timeout=left + 30, check=False)
            if proc.returncode != 0:
                raise AssertionError(
                    f"JetStream on {self.name} not ready: {proc.stderr.decode().strip()}\n"
                    + _tail(self.log_path))

    def stop(self, timeout=20):
        """SIGTERM and wait (SIGKILL after `timeout`). Returns the exit code (nats-server
        2.9 exits with 1 after a clean shutdown on SIGTERM)."""
        if self.proc is None:
            return None
        rc, _ = _stop_process(self.proc, timeout)
        return rc

    def kill(self):
        """SIGKILL: no chance to sync the store."""
        if self.proc is None:
            return None
        rc, _ = _stop_process(self.proc, 10, signal.SIGKILL)
        return rc

    def restart(self, wait=True, ready_timeout=30):
        """Stop if running, start again on the same port with the same store."""
        if self.running:
            self.stop()
        return self.start(wait=wait, ready_timeout=ready_timeout)

    def log_text(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class NatsCluster:
    """A JetStream cluster of `size` nats-servers on loopback, full mesh of routes."""

    def __init__(self, tmpdir, size=3, name="knr", ready_timeout=60):
        self.name = name
        ports = [free_port() for _ in range(size)]
        cports = [free_port() for _ in range(size)]
        self.servers = []
        for i in range(size):
            routes = [f"nats-route://127.0.0.1:{p}" for j, p in enumerate(cports) if j != i]
            self.servers.append(NatsServer(
                tmpdir, port=ports[i], name=f"{name}-{i + 1}", start=False,
                cluster={"name": name, "port": cports[i], "routes": routes}))
        self._start_all(ready_timeout)

    def _start_all(self, ready_timeout):
        """Start the servers one after the other, each once it listens. Started in the same
        instant, all dial each other at once, and nats-server 2.10's route pool can then
        settle without a metadata leader (seen in CI: "JetStream system temporarily
        unavailable" for a minute, "Duplicate Route" closes in every log). That is a
        start-up race of the test cluster, not what the tests are about, so a cluster that
        still elects no leader is started once more, and says so."""
        for attempt in (1, 2):
            for s in self.servers:
                s.start()  # waits until it listens (a cluster member: not for JetStream)
            try:
                self.wait_ready(ready_timeout / 2 if attempt == 1 else ready_timeout)
                return
            except AssertionError as e:
                if attempt == 2:
                    raise
                print(f"cluster {self.name}: {e}; starting it again", flush=True)
                for s in self.servers:
                    s.stop()

    @property
    def urls(self):
        return [s.url for s in self.servers]

    @property
    def url(self):
        """All servers, comma separated (what streamtool -s takes)."""
        return ",".join(self.urls)

    def wait_ready(self, timeout=60):
        deadline = time.monotonic() + timeout
        for s in self.servers:
            if s.running:
                s.wait_ready(max(1.0, deadline - time.monotonic()), jetstream=False)
        left = max(1.0, deadline - time.monotonic())
        proc = streamtool(self.url, "ready", left, timeout=left + 30, check=False)
        if proc.returncode != 0:
            raise AssertionError(f"JetStream cluster not ready: {proc.stderr.decode().strip()}")

    def server(self, name):
        return next(s for s in self.servers if s.name == name)

    def stream_leader(self, stream):
        """The NatsServer leading `stream` (None when there is no leader right now)."""
        leader = stream_info(self.url, stream).get("leader")
        return self.server(leader) if leader else None

    def stop(self):
        for s in self.servers:
            s.stop()


# ---------------------------------------------------------------------------------------
# Spool segments


def segment_name(when=None, fraction_digits=9, suffix=""):
    """A kumod segment name for `when` (datetime, UTC; default now): YYYYMMDD-HHMMSS, then
    "." and 0/3/6/9 fraction digits, then the suffix (e.g. "_recv")."""
    when = when or datetime.datetime.now(datetime.timezone.utc)
    name = when.strftime("%Y%m%d-%H%M%S")
    if fraction_digits:
        nanos = f"{when.microsecond * 1000:09d}"
        name += "." + nanos[:fraction_digits]
    return name + suffix


def segment_names(n, start=None, step_seconds=1.0, fraction_digits=9, suffix=""):
    """n ascending segment names starting at `start` (default 2025-09-12 11:08:01.44)."""
    start = start or datetime.datetime(2025, 9, 12, 11, 8, 1, 440526, tzinfo=datetime.timezone.utc)
    return [segment_name(start + datetime.timedelta(seconds=i * step_seconds),
                         fraction_digits, suffix) for i in range(n)]


class SegmentWriter:
    """A segment being written by spoolwrite, like a live kumod log segment.

    write(lines) feeds records; nothing reaches the file until the compressor emits a
    ~128 KiB block, unless flush() (kumod never flushes; tests that need the data on disk
    now do). close() finishes the frame and clears the write bits (the done marker);
    crash() leaves the frame unfinished and clears the write bits (kumod killed, then its
    restart sweep); die() leaves the frame unfinished and the file writable (kumod killed,
    not restarted yet). `plain`: an uncompressed JSON-lines file, each record written as it
    arrives.
    """

    def __init__(self, path, plain=False, done=True, chmod_after_close=False):
        Tools.require("spoolwrite")
        self.path = Path(path)
        args = [Tools.spoolwrite]
        if plain:
            args.append("--plain")
        if not done:
            args.append("--no-done")
        if chmod_after_close:
            args.append("--chmod-after-close")
        self.proc = _spawn(args + [self.path], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE)
        self.records = 0        # records handed to write()
        self.bytes = 0          # their bytes (decompressed offset after the last one)
        self.status = None      # last (what, records, decompressed bytes, file bytes)
        self._out = b""

    @property
    def name(self):
        return self.path.name

    def write(self, lines):
        """Feed records: bytes/str (one or more lines) or an iterable of them."""
        if isinstance(lines, (bytes, str)):
            lines = [lines]
        data = b"".join(x.encode() if isinstance(x, str) else x for x in lines)
        for line in split_lines(data):
            if line in (b"#FLUSH\n", b"#CRASH\n", b"#DIE\n"):
                raise ValueError(f"{line!r} is a spoolwrite control line, not a record")
        self.records += data.count(b"\n")
        self.bytes += len(data)
        self._send(data)
        return self

    def _send(self, data):
        try:
            self.proc.stdin.write(data)
            self.proc.stdin.flush()
        except BrokenPipeError:
            self.proc.wait()
            raise AssertionError(f"spoolwrite {self.path} exited ({self.proc.returncode}): "
                                 f"{self.proc.stderr.read().decode()}") from None

    def _read_status(self, timeout):
        deadline = time.monotonic() + timeout
        fd = self.proc.stdout.fileno()
        while b"\n" not in self._out:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"spoolwrite {self.path} did not answer in {timeout}s")
            ready, _, _ = select.select([fd], [], [], left)
            if ready:
                chunk = os.read(fd, 4096)
                if not chunk:
                    raise AssertionError(
                        f"spoolwrite {self.path} exited: {self.proc.stderr.read().decode()}")
                self._out += chunk
        line, self._out = self._out.split(b"\n", 1)
        what, records, raw, file_bytes = line.decode().split()
        self.status = (what, int(records), int(raw), int(file_bytes))
        return self.status

    def flush(self, timeout=30):
        """Make every record written so far reach the file; returns
        (what, records, decompressed bytes, file bytes)."""
        self._send(b"#FLUSH\n")
        return self._read_status(timeout)

    def _finish(self, control, timeout):
        if control:
            self._send(control)
        self.proc.stdin.close()
        try:
            rc = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            raise AssertionError(f"spoolwrite {self.path} did not exit in {timeout}s")
        if rc != 0:
            raise AssertionError(f"spoolwrite {self.path} failed ({rc}): "
                                 f"{self.proc.stderr.read().decode()}")
        return self._read_status(timeout)

    def close(self, timeout=60):
        """Finish the frame, mark the segment done (unless done=False), close."""
        return self._finish(b"", timeout)

    def crash(self, timeout=60):
        """kumod killed and restarted: frame left unfinished, write bits cleared."""
        return self._finish(b"#CRASH\n", timeout)

    def die(self, timeout=60):
        """kumod killed, not restarted: frame left unfinished, file still writable."""
        return self._finish(b"#DIE\n", timeout)


def write_segment(path, lines, plain=False, done=True):
    """Write a whole segment at once (done unless done=False). Returns the SegmentWriter."""
    w = SegmentWriter(path, plain=plain, done=done)
    w.write(lines)
    w.close()
    return w


def sweep_spool(spool_dir):
    """kumod's startup sweep: clear the write bits of every regular non-dot file."""
    for p in Path(spool_dir).iterdir():
        if not p.name.startswith(".") and p.is_file():
            p.chmod(p.stat().st_mode & ~0o222)


def is_done(path):
    return (Path(path).stat().st_mode & 0o222) == 0


def decode_segment(path):
    """(decoded bytes, complete) of a segment as a streaming reader sees it now: a zstd
    segment is decoded up to its last complete block (complete = the frame is finished); a
    plain file is returned as is (complete = True)."""
    path = Path(path)
    with open(path, "rb") as f:
        magic = f.read(4)
    if magic != b"\x28\xb5\x2f\xfd":
        return path.read_bytes(), True
    Tools.require("zstdpeek")
    proc = subprocess.run([str(Tools.zstdpeek), str(path)], capture_output=True, timeout=120)
    if proc.returncode not in (0, 3):
        raise AssertionError(f"zstdpeek {path}: {proc.stderr.decode().strip()}")
    return proc.stdout, proc.returncode == 0


def readable_records(path):
    """The complete records (lines with their "\n") a reader can get from the segment now;
    a trailing partial line is left out."""
    data, _ = decode_segment(path)
    return split_lines(data)[:data.count(b"\n")]


# ---------------------------------------------------------------------------------------
# Records

_TYPES = [("Reception", 30), ("Delivery", 34), ("TransientFailure", 10), ("Bounce", 8),
          ("Rejection", 3), ("Expiration", 2), ("AdminBounce", 1), ("OOB", 1),
          ("Feedback", 2), ("Delayed", 3), ("AdminRebind", 1), ("XferOut", 2), ("XferIn", 2),
          ("DeferredInjectionRebind", 1)]
_DOMAINS = ["example.com", "gmail.com", "yahoo.co.jp", "outlook.com", "müller.de",
            "recipient.example.net", "mail.example.org"]
_WORDS = ["hello", "invoice", "your", "order", "has", "shipped", "newsletter", "Grüße",
          "café", "résumé", "—", "\"quoted\"", "back\\slash", "tab\there", "📦", "sale",
          "weekly", "digest", "account", "update"]
_RESPONSES = {
    "Delivery": (250, (2, 0, 0), "OK ids=8a5475ccbbc611eda12250ebf67f93bd", "."),
    "Reception": (250, None, "", None),
    "TransientFailure": (451, (4, 7, 1), "Try again later\ngreylisted for 300 seconds", "RCPT"),
    "Bounce": (550, (5, 1, 1), "The email account that you tried to reach does not exist.",
               "RCPT"),
    "Rejection": (550, (5, 7, 1), "relaying not permitted", "RCPT"),
    "Expiration": (551, (5, 4, 7), "Next delivery time would be at or after max age", None),
    "AdminBounce": (599, None, "Administratively bounced", None),
    "Delayed": (400, None, "KumoMTA internal: ready queue full", None),
}


def _hex(rng, n):
    return "".join(rng.choice("0123456789abcdef") for _ in range(n))


def _rfc3339(ts, nanos):
    dt = datetime.datetime.fromtimestamp(ts, datetime.timezone.utc)
    return dt.strftime("%Y-%m-%dT%H:%M:%S") + f".{nanos:09d}Z"


def _record(rng, i, prefix):
    typ = rng.choices([t for t, _ in _TYPES], [w for _, w in _TYPES])[0]
    domain = rng.choice(_DOMAINS)
    tenant = rng.choice(["", "tenant1", "acme"])
    campaign = rng.choice(["", "spring", "weekly"])
    queue = (f"{campaign}:" if campaign else "") + (f"{tenant}@" if tenant else "") + domain
    nrcpt = 3 if rng.random() < 0.05 else 1
    rcpts = [f"user{rng.randrange(10 ** 6)}@{domain}" for _ in range(nrcpt)]
    ts = 1757675281 + i
    nanos = rng.randrange(10 ** 9)
    code, enh, content, command = _RESPONSES.get(typ, (250, (2, 0, 0), "OK", None))
    rec = {
        "type": typ,
        "id": "" if typ == "Rejection" else f"{prefix}{i:08d}{_hex(rng, 16)}",
        "sender": f"bounce+{_hex(rng, 6)}@sender.example.com",
        "recipient": rcpts[0] if nrcpt == 1 else rcpts,
        "queue": "" if typ == "Rejection" else queue,
        "site": "" if typ in ("Reception", "Rejection") else f"source2->(alt1|alt2)?.mx.{domain}",
        "size": rng.randrange(200, 200000),
        "response": {
            "code": code,
            "enhanced_code": ({"class": enh[0], "subject": enh[1], "detail": enh[2]}
                              if enh else None),
            "content": content,
            "command": command,
        },
        "peer_address": ({"name": f"mx{rng.randrange(9)}.{domain}.",
                          "addr": f"142.251.{rng.randrange(256)}.{rng.randrange(256)}"}
                         if rng.random() < 0.9 else None),
        "timestamp": ts,
        "event_time": _rfc3339(ts, nanos),
        "created": ts - rng.randrange(3600),
        "created_time": _rfc3339(ts - 60, nanos),
        "num_attempts": rng.randrange(5),
        "bounce_classification": "Uncategorized" if code < 500 else "InvalidRecipient",
        "egress_pool": rng.choice([None, "pool0", "warmup"]),
        "egress_source": rng.choice([None, "source2", "ip-10-0-0-1"]),
        "source_address": ({"address": f"10.0.0.{rng.randrange(1, 255)}:53210",
                            "protocol": "socks5", "server": "192.168.1.1:5000"}
                           if rng.random() < 0.3 else None),
        "feedback_report": None,
        "meta": {"tenant": tenant or None, "campaign": campaign, "knr_seq": f"{prefix}{i}"},
        "headers": {"Subject": ""},
        "delivery_protocol": "ESMTP" if typ == "Delivery" else None,
        "reception_protocol": "ESMTP",
        "nodeid": "557f3ad4-2c8c-11ee-976e-782d7e12e173",
    }
    if typ == "Feedback":
        rec["feedback_report"] = {
            "feedback_type": "abuse", "user_agent": "SomeGenerator/1.0", "version": 1,
            "arrival_date": "2005-03-08T18:00:00Z", "source_ip": "192.0.2.1",
            "reported_domain": ["example.net"],
            "original_message": "From: <somesender@example.net>\nSubject: Earn money\n\nSpam\n",
        }
    if rng.random() < 0.03:  # an older kumod: fewer fields
        for k in ("event_time", "created_time", "delivery_protocol", "reception_protocol",
                  "nodeid"):
            rec.pop(k)
    if rng.random() < 0.02:  # a field this relay has never heard of
        rec["bogus"] = None
    if typ == "Delivery" and rng.random() < 0.6:
        rec["tls_cipher"] = "TLS_AES_256_GCM_SHA384"
        rec["tls_protocol_version"] = "TLSv1.3"
        rec["tls_peer_subject_name"] = ["C=US", "ST=CA", f"CN=mx.{domain}"]
    if rng.random() < 0.5:
        rec["session_id"] = f"{_hex(rng, 8)}-{_hex(rng, 4)}-{_hex(rng, 4)}-{_hex(rng, 12)}"
    return rec


def _encode(rec):
    return (json.dumps(rec, separators=(",", ":"), ensure_ascii=False) + "\n").encode()


def make_records(n, seed=0, prefix="r"):
    """n distinct KumoMTA log record lines (bytes, each ending in b"\\n"): compact JSON with
    the fields in KumoMTA's order, mixed types, UTF-8 unescaped, ~400-1200 bytes. Every
    record carries `prefix` and its index (id and meta.knr_seq), so different prefixes
    never collide. Deterministic for a given (n, seed, prefix)."""
    rng = random.Random(f"{seed}:{prefix}")
    out = []
    for i in range(n):
        rec = _record(rng, i, prefix)
        target = rng.randint(400, 1200)
        words = []
        line = _encode(rec)
        while len(line) < target:
            words.append(rng.choice(_WORDS))
            rec["headers"]["Subject"] = " ".join(words)
            line = _encode(rec)
        out.append(line)
    return out


def many_records(n, seed=0, prefix="m", base=5000):
    """n distinct record lines, fast: make_records(base) variants whose id and
    meta.knr_seq carry the copy number (so every line is unique). For the tests that need
    10^5 records; make_records costs ~0.17 ms a record."""
    pool = make_records(min(n, base), seed=seed, prefix=prefix)
    out = []
    for i in range(n):
        copy, rec = divmod(i, len(pool))
        line = pool[rec]
        if copy:
            tag = f"{prefix}~{copy}~".encode()
            line = line.replace(b'"knr_seq":"' + prefix.encode(),
                                b'"knr_seq":"' + tag, 1)
            line = line.replace(b'"id":"' + prefix.encode(), b'"id":"' + tag, 1)
        out.append(line)
    return out


def expected_messages(relay_id, segment, lines, start_offset=0):
    """[(data, msgid)] the relay should publish for `lines` of `segment` (a name or path):
    msgid = <relay_id>:<segment name>:<decompressed end offset of the record>."""
    name = Path(segment).name
    out, offset = [], start_offset
    for line in lines:
        offset += len(line)
        out.append((line, f"{relay_id}:{name}:{offset}"))
    return out


# ---------------------------------------------------------------------------------------
# Checking a stream


def _short(data, n=100):
    text = repr(data)
    return text if len(text) <= n else text[:n] + "..."


def assert_exactly_once(dump, expected, examples=5):
    """Every (data, msgid) of `expected` is in `dump` exactly once, byte for byte with its
    msgid, and the dump holds nothing else. Raises AssertionError with a summary."""
    want = collections.Counter(expected)
    dup_expected = [k for k, c in want.items() if c > 1]
    if dup_expected:
        raise AssertionError(f"test bug: {len(dup_expected)} expected messages are not unique, "
                             f"e.g. {_short(dup_expected[0])}")
    got = collections.Counter((m["data"], m["msgid"]) for m in dump)
    missing = [k for k in expected if got[k] == 0]
    duplicated = [(k, c) for k, c in got.items() if k in want and c > 1]
    unexpected = [k for k in got if k not in want]
    if not (missing or duplicated or unexpected):
        return
    by_data = {d: mid for d, mid in expected}
    wrong_id = [(d, mid, by_data[d]) for d, mid in unexpected if d in by_data]
    lines = [
        f"exactly-once check failed: expected {len(expected)} messages, stream holds "
        f"{len(dump)}; missing {len(missing)}, duplicated {len(duplicated)} "
        f"({sum(c - 1 for _, c in duplicated)} extra copies), unexpected {len(unexpected)} "
        f"(of which {len(wrong_id)} are expected data under a wrong msgid)"]
    seqs = collections.defaultdict(list)
    for m in dump:
        seqs[(m["data"], m["msgid"])].append(m["seq"])
    for (d, mid) in missing[:examples]:
        lines.append(f"  missing    msgid={mid} data={_short(d)}")
    for (d, mid), c in duplicated[:examples]:
        lines.append(f"  duplicated x{c} seqs={seqs[(d, mid)][:5]} msgid={mid} data={_short(d)}")
    for d, mid, want_id in wrong_id[:examples]:
        lines.append(f"  wrong msgid seqs={seqs[(d, mid)][:5]} msgid={mid} expected={want_id}")
    for (d, mid) in [k for k in unexpected if k[0] not in by_data][:examples]:
        lines.append(f"  unexpected seqs={seqs[(d, mid)][:5]} msgid={mid} data={_short(d)}")
    raise AssertionError("\n".join(lines))


def exactly_once_counts(dump, expected):
    """dict: expected, stored, missing, duplicated (extra copies), unexpected."""
    want = set(expected)
    got = collections.Counter((m["data"], m["msgid"]) for m in dump)
    return {
        "expected": len(expected),
        "stored": len(dump),
        "missing": sum(1 for k in want if got[k] == 0),
        "duplicated": sum(c - 1 for k, c in got.items() if k in want and c > 1),
        "unexpected": sum(c for k, c in got.items() if k not in want),
    }


def count_line(dump, expected, what=""):
    """The one-line summary every fault test prints: what it checked and the counts."""
    c = exactly_once_counts(dump, expected)
    return (f"{what + ': ' if what else ''}expected {c['expected']}, stored {c['stored']}, "
            f"missing {c['missing']}, duplicated {c['duplicated']}, "
            f"unexpected {c['unexpected']}")


def check_exactly_once(dump, expected, what=""):
    """Print count_line, then assert_exactly_once."""
    print(count_line(dump, expected, what), flush=True)
    assert_exactly_once(dump, expected)


def proc_status_kb(pid, key="VmRSS"):
    """A kB value of /proc/PID/status (VmRSS: resident now, VmHWM: peak resident)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    raise KeyError(f"{key} not in /proc/{pid}/status")


def read_checkpoint(path):
    """The checkpoint file as {"spool": dir, "segments": {name: (inode, offset, ordinal,
    finished)}} (names unescaped). Raises ValueError when it is not complete."""
    text = Path(path).read_bytes()
    lines = text.split(b"\n")
    if lines[0] != b"kumo-nats-relay checkpoint 1" or not lines[-2].startswith(b"end "):
        raise ValueError(f"checkpoint {path} is not complete")

    def unescape(b):
        return re.sub(rb"%([0-9A-Fa-f]{2})", lambda m: bytes([int(m.group(1), 16)]),
                      b).decode(errors="surrogateescape")
    out = {"spool": None, "segments": {}}
    for line in lines[1:-2]:
        kind, _, rest = line.partition(b" ")
        if kind == b"spool":
            out["spool"] = unescape(rest)
        elif kind == b"segment":
            # A 6th field, the generation, follows on segments replaced under their name.
            name, inode, offset, ordinal, fin = rest.split(b" ")[:5]
            out["segments"][unescape(name)] = (int(inode), int(offset), int(ordinal),
                                               fin == b"1")
        else:
            raise ValueError(f"checkpoint {path}: unknown line {line!r}")
    return out


def assert_checkpoint_covered(checkpoint, dump, relay_id="test", deadlettered=()):
    """No committed offset of `checkpoint` (read_checkpoint) is past a record that is not
    in the stream (or in `deadlettered`, a set of msgids): every msgid
    <relay_id>:<segment>:<end> that the stream or the dead letters hold, and the offset of
    each segment is either 0 or the end of such a record, with every record before it also
    there. Checked from the stream's msgids only: needs records whose ids were published."""
    held = collections.defaultdict(set)
    for m in dump:
        if m["msgid"] and m["msgid"].startswith(relay_id + ":"):
            _, seg, end = m["msgid"].rsplit(":", 2)
            held[seg].add(int(end))
    for mid in deadlettered:
        _, seg, end = mid.rsplit(":", 2)
        held[seg].add(int(end))
    for name, (_, offset, ordinal, _) in checkpoint["segments"].items():
        ends = sorted(e for e in held[name] if e <= offset)
        if offset and (not ends or ends[-1] != offset or len(ends) != ordinal):
            raise AssertionError(
                f"checkpoint moved past unacknowledged records: segment {name} offset "
                f"{offset} ordinal {ordinal}, but the stream holds {len(ends)} records up to "
                f"it (last end {ends[-1] if ends else None})")


# ---------------------------------------------------------------------------------------
# The relay


def _deep_merge(base, over):
    out = dict(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) \
            else v
    return out


def connection_policy(port, send_body):
    """A Lua policy in the connection-object shape: every record goes to the queue whose
    constructor connects to 127.0.0.1:port; send_body is the Lua body of send(self,
    message), with `client` the connection."""
    return f"""
local kumo = require 'kumo'
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{ protocol = {{ custom_lua = {{ constructor = 'make.nats' }} }} }}
end)
kumo.on('make.nats', function(domain, tenant, campaign)
  local client = kumo.nats.connect {{ servers = {{ '127.0.0.1:{port}' }} }}
  return {{
    send = function(self, message)
{send_body}
    end,
  }}
end)
"""


def relay_config(spool_dir, state_dir, servers, relay_id="test", subject=DEFAULT_SUBJECT,
                 **overrides):
    """A typical config dict; keyword overrides are merged in (nested dicts too), and a
    value of None removes the key."""
    cfg = {
        "relay_id": relay_id,
        "spool": {"dir": str(spool_dir), "pattern": "*", "start_at": "beginning"},
        "state_dir": str(state_dir),
        "nats": {"servers": [servers] if isinstance(servers, str) else list(servers)},
        "jetstream": {"max_in_flight": 1024, "ack_timeout": "5s"},
        "policy": {"subject": subject},
        "checkpoint": {"interval": "200ms"},
        "log": {"level": "debug"},
    }
    # KNR_LOG_FORMAT=json runs a suite with JSON logs (test_logs.py parses every line).
    if os.environ.get("KNR_LOG_FORMAT"):
        cfg["log"]["format"] = os.environ["KNR_LOG_FORMAT"]
    cfg = _deep_merge(cfg, overrides)

    def prune(d):
        return {k: prune(v) if isinstance(v, dict) else v for k, v in d.items() if v is not None}
    return prune(cfg)


def _yaml_scalar(v):
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    return json.dumps(str(v), ensure_ascii=False)  # a JSON string is a YAML double-quoted one


def to_yaml(value, indent=0):
    """Block YAML for dicts/lists/scalars (strings double-quoted)."""
    pad = " " * indent
    lines = []
    if isinstance(value, dict):
        for k, v in value.items():
            if isinstance(v, dict) and v:
                lines.append(f"{pad}{k}:")
                lines.append(to_yaml(v, indent + 2))
            elif isinstance(v, list) and v and any(isinstance(x, (dict, list)) for x in v):
                lines.append(f"{pad}{k}:")
                lines.append(to_yaml(v, indent + 2))
            elif isinstance(v, list):
                lines.append(f"{pad}{k}: [{', '.join(_yaml_scalar(x) for x in v)}]")
            elif isinstance(v, dict):
                lines.append(f"{pad}{k}: {{}}")
            else:
                lines.append(f"{pad}{k}: {_yaml_scalar(v)}")
    elif isinstance(value, list):
        for v in value:
            if isinstance(v, (dict, list)):
                inner = to_yaml(v, indent + 2).lstrip()
                lines.append(f"{pad}- {inner}")
            else:
                lines.append(f"{pad}- {_yaml_scalar(v)}")
    else:
        lines.append(pad + _yaml_scalar(value))
    return "\n".join(lines)


class Relay:
    """kumo-nats-relay with a config file in `tmpdir`.

    `config`: a dict (see relay_config) or YAML text. With start=True (the default) the
    daemon starts at once; use start=False for run_once()/check(). Output (stdout and
    stderr) goes to <tmpdir>/<name>.log, appended across starts with a marker line.
    """

    def __init__(self, config, tmpdir, start=True, name="relay", env=None):
        Tools.require("relay")
        self.tmpdir = Path(tmpdir)
        self.name = name
        self.config_path = self.tmpdir / f"{name}.yaml"
        self.log_path = self.tmpdir / f"{name}.log"
        self.env = dict(os.environ, **(env or {}))
        self.proc = None
        self.runs = 0
        self.set_config(config)
        if start:
            self.start()

    def set_config(self, config):
        self.config = config
        text = config if isinstance(config, str) else to_yaml(config) + "\n"
        self.config_path.write_text(text)
        if isinstance(config, dict):
            for key in ("state_dir",):
                if key in config:
                    Path(config[key]).mkdir(parents=True, exist_ok=True)
            if "spool" in config and "dir" in config["spool"]:
                Path(config["spool"]["dir"]).mkdir(parents=True, exist_ok=True)

    def _popen(self, extra):
        self.runs += 1
        args = [Tools.relay, "-c", self.config_path, *extra]
        with open(self.log_path, "ab") as log:
            log.write(f"==== run {self.runs}: {' '.join(map(str, args))}\n".encode())
            log.flush()
            return _spawn(args, stdout=log, stderr=subprocess.STDOUT,
                          stdin=subprocess.DEVNULL, env=self.env)

    @property
    def pid(self):
        return self.proc.pid if self.proc is not None else None

    @property
    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def start(self, *extra):
        if self.running:
            raise RuntimeError("relay already running")
        self.proc = self._popen(extra)
        return self

    def wait(self, timeout):
        """Wait for the daemon to exit by itself; returns its exit code."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"relay still running after {timeout}s\n" + self.log_tail())

    def stop(self, timeout=30):
        """SIGTERM (drain and exit) and wait; returns the exit code. Raises if the relay
        needed a SIGKILL."""
        if self.proc is None:
            return None
        rc, killed = _stop_process(self.proc, timeout)
        if killed:
            raise AssertionError(f"relay did not exit within {timeout}s of SIGTERM\n"
                                 + self.log_tail())
        return rc

    def kill(self):
        """SIGKILL: a crash. Returns the exit code (-9)."""
        if self.proc is None:
            return None
        rc, _ = _stop_process(self.proc, 10, signal.SIGKILL)
        return rc

    def restart(self, *extra):
        if self.running:
            self.stop()
        return self.start(*extra)

    def run(self, *args, timeout=120):
        """Run the binary to completion with extra arguments; returns the exit code."""
        proc = self._popen(args)
        try:
            return proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"relay {' '.join(args)} did not finish in {timeout}s\n"
                                 + self.log_tail())

    def run_once(self, *extra, timeout=120):
        """--once: relay what is in the spool, wait for the acks, exit. Returns exit code."""
        return self.run("--once", *extra, timeout=timeout)

    def check(self, timeout=30):
        """--check: returns (exit code, output of that run)."""
        start = self.log_path.stat().st_size if self.log_path.exists() else 0
        rc = self.run("--check", timeout=timeout)
        with open(self.log_path, "rb") as f:
            f.seek(start)
            return rc, f.read().decode(errors="replace")

    def reset_offsets(self, timeout=30):
        return self.run("--reset-offsets", timeout=timeout)

    def log_text(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines=60):
        return _tail(self.log_path, lines)


# ---------------------------------------------------------------------------------------
# unittest base class


class RelayTestCase(unittest.TestCase):
    """Gives each test `self.tmp` (its own temp dir, with spool/ and state/ paths ready in
    `self.spool` and `self.state`) and factories that register every process for cleanup:
    self.nats(), self.cluster(), self.segment(), self.relay(). On failure the tails of all
    logs are printed and the temp dir is kept; KNR_KEEP_TMP=1 keeps it always."""

    def setUp(self):
        super().setUp()
        self.tmp = Path(tempfile.mkdtemp(prefix=f"knr-{self._testMethodName}-"))
        self.spool = self.tmp / "spool"
        self.state = self.tmp / "state"
        self.spool.mkdir()
        self._procs = []  # objects with .stop/.kill and maybe .log_path
        self.addCleanup(self._cleanup)

    def _failed(self):
        # outcome.success cannot be used: unittest resets it around each cleanup.
        result = getattr(getattr(self, "_outcome", None), "result", None)
        if result is None:
            return False
        return any(test is self for test, _ in result.failures + result.errors)

    def _cleanup(self):
        failed = self._failed()
        for obj in reversed(self._procs):
            try:
                if isinstance(obj, SegmentWriter):
                    if obj.proc.poll() is None:
                        obj.proc.kill()
                        obj.proc.wait()
                elif isinstance(obj, Relay):
                    if obj.running:
                        obj.kill()
                else:
                    obj.kill()
            except Exception as exc:  # cleanup must go on
                print(f"cleanup of {obj!r} failed: {exc!r}", file=sys.stderr)
        if failed:
            for obj in self._procs:
                log = getattr(obj, "log_path", None)
                if log is not None and Path(log).exists():
                    print(f"\n---- {log} (tail) ----\n{_tail(log, 60)}")
            print(f"---- kept {self.tmp}", flush=True)
        elif not os.environ.get("KNR_KEEP_TMP"):
            shutil.rmtree(self.tmp, ignore_errors=True)

    def nats(self, **kwargs):
        server = NatsServer(self.tmp, **kwargs)
        self._procs.append(server)
        return server

    def cluster(self, size=3, **kwargs):
        cluster = NatsCluster(self.tmp, size=size, **kwargs)
        self._procs.extend(cluster.servers)
        return cluster

    def segment(self, name, plain=False, **kwargs):
        w = SegmentWriter(self.spool / name, plain=plain, **kwargs)
        self._procs.append(w)
        return w

    def relay_config(self, servers, **overrides):
        """relay_config() for this test's spool and state dirs."""
        return relay_config(self.spool, self.state, servers, **overrides)

    def relay(self, config, start=True, **kwargs):
        """A Relay (config: dict or YAML text; see relay_config)."""
        r = Relay(config, self.tmp, start=start, **kwargs)
        self._procs.append(r)
        return r


def run_command(args, timeout=60):
    """Run a command to completion; returns its stdout (text). Raises with its output when
    it exits non-zero."""
    proc = subprocess.run([str(a) for a in args], capture_output=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{args} exited {proc.returncode}\n{proc.stdout.decode()}"
                             f"\n{proc.stderr.decode()}")
    return proc.stdout.decode()
