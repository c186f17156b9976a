"""What nats-server's fast-ingest batches (ADR-50, `allow_batched`, nats-server >= 2.14) do
with `Nats-Msg-Id`: the server behaviour a fast-batch publishing path in the relay would
rest on (issue 16). Run on the newest server of the matrix (tests/tools/nats-servers.sh).

The wire contract, as nats-server 2.14/2.15 speaks it: a fast-batch publish carries no batch
headers; the reply subject says everything, `<inbox>.<flow>.<gap>.<batch seq>.<op>.$FI`
(op 0 first message, 1 add, 2 commit with this message), the inbox's last token is the batch
id, and the server answers on the inbox with flow acks `{"type":"ack","seq":N,"msgs":M}`
(batch sequences up to N stored) and a terminal `{"stream","seq","batch","count"}`.

Found on 2.15.3 (each is a test below): a message id seen before is dropped inside a batch
and across batches, after a kill -9 of the server too, without failing the batch; so
exactly-once by message id holds for fast batches as for per-message acks.

RelayFastBatchTest runs the relay's fast-batch path (relay/publish_batch.c) on it: every
record exactly once through a kill -9 of the relay and of the server mid-batch, and the
single-publish path where the stream or the server does not take batches.
"""

import json
import os
import random
import re
import signal
import socket
import subprocess
import unittest

import harness
from harness import REPO, RelayTestCase, poll


def newest_server():
    """Path of the newest nats-server the matrix builds, or None (and why)."""
    proc = subprocess.run([REPO / "tests" / "tools" / "nats-servers.sh"], capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode != 0:
        return None, proc.stderr.strip().splitlines()[-1:] or [f"exit {proc.returncode}"]
    name, path = proc.stdout.split("\n")[-2].split(" ", 1)
    return path, name


class FastBatchClient:
    """The NATS protocol over a socket: just enough to publish fast batches and read the
    frames the server answers with on the batch's inbox."""

    def __init__(self, url):
        host, port = url.split("//", 1)[-1].rsplit(":", 1)
        self.sock = socket.create_connection((host, int(port)), timeout=5)
        self.buf = b""
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError(f"{url} closed the connection before its INFO")
            self.buf += chunk
        self.buf = self.buf.split(b"\r\n", 1)[1]
        self.sock.sendall(b'CONNECT {"verbose":false,"headers":true,"no_responders":true}\r\n')
        self.frames = {}  # batch id -> [decoded JSON frames], in arrival order

    def close(self):
        self.sock.close()

    def publish_batch(self, batch_id, msg_ids, subject="fi.x", flow=5, commit=True):
        """Each id as one message (payload "payload <id>"), in one batch; the last one
        commits it when `commit`."""
        inbox = f"_FIQ.{batch_id}"
        self.frames[batch_id] = []
        out = [f"SUB {inbox}.> {batch_id}\r\n".encode()]
        for seq, msg_id in enumerate(msg_ids, 1):
            op = 0 if seq == 1 else (2 if commit and seq == len(msg_ids) else 1)
            hdr = f"NATS/1.0\r\nNats-Msg-Id: {msg_id}\r\n\r\n".encode()
            body = f"payload {msg_id}".encode()
            out.append(f"HPUB {subject} {inbox}.{flow}.fail.{seq}.{op}.$FI {len(hdr)} "
                       f"{len(hdr) + len(body)}\r\n".encode() + hdr + body + b"\r\n")
        self.sock.sendall(b"".join(out))

    def read(self):
        """Take in what has arrived (non-blocking) and file each frame under its batch."""
        self.sock.setblocking(False)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    raise AssertionError("the server closed the connection")
                self.buf += chunk
        except BlockingIOError:
            pass
        finally:
            self.sock.setblocking(True)
        while True:
            if self.buf.startswith(b"PING\r\n"):
                self.sock.sendall(b"PONG\r\n")
                self.buf = self.buf[6:]
                continue
            if self.buf.startswith((b"PONG\r\n", b"+OK\r\n")):
                self.buf = self.buf.split(b"\r\n", 1)[1]
                continue
            if self.buf.startswith(b"-ERR"):
                raise AssertionError(self.buf.split(b"\r\n")[0].decode())
            m = re.match(rb"(H?MSG) \S+ (\S+) (?:\S+ )?(?:(\d+) )?(\d+)\r\n", self.buf)
            if not m:
                return
            total = int(m.group(4))
            if len(self.buf) < m.end() + total + 2:
                return
            hdr_len = int(m.group(3) or 0) if m.group(1) == b"HMSG" else 0
            payload = self.buf[m.end() + hdr_len:m.end() + total]
            self.frames.setdefault(m.group(2).decode(), []).append(json.loads(payload))
            self.buf = self.buf[m.end() + total + 2:]

    def wait_frame(self, batch_id, pred, what, timeout=10):
        def found():
            self.read()
            return next((f for f in self.frames.get(batch_id, []) if pred(f)), None)
        return poll(found, timeout, what, interval=0.01)

    def wait_committed(self, batch_id, timeout=10):
        return self.wait_frame(batch_id, lambda f: "batch" in f,
                               f"the terminal ack of batch {batch_id}", timeout)


class FastBatchDedupTest(RelayTestCase):
    @classmethod
    def setUpClass(cls):
        cls.server_path, cls.server_name = newest_server()
        if cls.server_path is None:
            if os.environ.get("CI") == "true":
                raise AssertionError(f"no current nats-server to test on: {cls.server_name}")
            raise unittest.SkipTest(f"no current nats-server: {cls.server_name}")

    def setUp(self):
        super().setUp()
        self.server = self.nats(binary=self.server_path)
        reply = json.loads(harness.nats_request(
            self.server.url, "$JS.API.STREAM.CREATE.FI",
            json.dumps({"name": "FI", "subjects": ["fi.>"], "storage": "file",
                        "allow_batched": True,
                        "duplicate_window": 120 * 10**9}).encode()))
        self.assertTrue(reply.get("config", {}).get("allow_batched"),
                        f"{self.server_name} did not take allow_batched: {reply}")
        self.client = self.connect()

    def connect(self):
        client = FastBatchClient(self.server.url)
        self.addCleanup(client.close)
        return client

    def assert_stored_once(self, ids):
        """The stream holds exactly one message per id, carrying that id and its payload."""
        dump = harness.dump_stream(self.server.url, "FI")
        got = sorted((m["msgid"], m["data"]) for m in dump)
        self.assertEqual(got, sorted((i, f"payload {i}".encode()) for i in set(ids)))

    def test_resend_in_a_new_batch_is_deduplicated(self):
        ids = [f"m{i}" for i in range(1, 11)]
        self.client.publish_batch("A", ids)
        ack_a = self.client.wait_committed("A")
        self.assertEqual((ack_a["stream"], ack_a["seq"], ack_a["count"]), ("FI", 10, 10))
        # What a relay restarted after a crash does: the unacknowledged tail again, then on.
        more = ids + [f"m{i}" for i in range(11, 16)]
        self.client.publish_batch("B", more)
        ack_b = self.client.wait_committed("B")
        # The batch is not failed by its duplicates: count is every message sent.
        self.assertEqual((ack_b["seq"], ack_b["count"]), (15, 15))
        self.assert_stored_once(more)

    def test_duplicate_inside_one_batch_is_dropped(self):
        self.client.publish_batch("C", ["m1", "m2", "m1", "m3", "m2"])
        ack = self.client.wait_committed("C")
        self.assertEqual(ack["count"], 5)
        self.assert_stored_once(["m1", "m2", "m3"])

    def test_flow_ack_then_server_killed_then_resent(self):
        """A batch never committed (the relay died), the server killed -9 after the flow
        ack for sequence 10: the ids are still known after the restart, so a resend in a
        new batch on a new connection stores only what is new."""
        ids = [f"k{i}" for i in range(1, 13)]
        self.client.publish_batch("D", ids, flow=5, commit=False)
        ack = self.client.wait_frame("D", lambda f: f.get("type") == "ack" and f["seq"] >= 10,
                                     "the flow ack for batch sequence 10")
        self.assertEqual(ack["msgs"], 5)
        poll(lambda: harness.stream_count(self.server.url, "FI") == 12, 10,
             "the 12 messages of the open batch to be stored")
        self.server.kill()
        self.server.start()
        client = self.connect()
        resend = ids + ["k13", "k14"]
        client.publish_batch("E", resend)
        ack = client.wait_committed("E", timeout=20)
        self.assertEqual(ack["count"], 14)
        self.assert_stored_once(resend)


STREAM = "KUMO"
BATCHING = "publishing in fast-ingest batches stream=KUMO"
NO_BATCHES = ("one ack per message: the stream does not take fast-ingest batches "
              "(allow_batched, nats-server 2.14 or later) stream=KUMO")


def create_kumo_stream(url, allow_batched, storage="file"):
    config = {"name": STREAM, "subjects": ["kumo.log.>"], "storage": storage,
              "duplicate_window": 600 * 10**9}
    if allow_batched:
        config["allow_batched"] = True
    reply = json.loads(harness.nats_request(url, f"$JS.API.STREAM.CREATE.{STREAM}",
                                            json.dumps(config).encode()))
    if "error" in reply:
        raise AssertionError(f"cannot create the stream: {reply}")
    return reply


def wait_at_least(url, n, timeout, what):
    """Poll the stream's count until it reaches n (through server restarts); returns it."""
    return poll(lambda: (c := harness.stream_count(url, STREAM)) >= n and c, timeout,
                f"{what}: {n} messages in the stream", interval=0.02, ignore=(AssertionError,))


def batched(log):
    """How many messages the relay's fast batches stored, by its debug log."""
    return sum(int(n) for n in re.findall(r"fast-ingest batch stored stream=\S+ batch=\d+ "
                                          r"messages=(\d+)", log))


class RelayFastBatchTest(RelayTestCase):
    """The relay publishing in fast batches on the newest server of the matrix."""

    @classmethod
    def setUpClass(cls):
        FastBatchDedupTest.setUpClass.__func__(cls)

    def write_spool(self, segments, per_segment, prefix):
        """Done zstd segments; returns the messages they must become."""
        names = harness.segment_names(segments)
        expected = []
        for i, name in enumerate(names):
            lines = harness.many_records(per_segment, seed=i, prefix=f"{prefix}{i}-")
            harness.write_segment(self.spool / name, lines)
            expected += harness.expected_messages("test", name, lines)
        return expected

    def acked_metrics(self, port, n):
        """/metrics once the relay has had n publishes acknowledged."""
        def acked():
            status, text = harness.http_get(f"http://127.0.0.1:{port}/metrics")
            return status == 200 and harness.metric(text, "publishes_acked_total") >= n and text
        return poll(acked, 60, f"{n} publishes acknowledged", ignore=(OSError,))

    def relay_all(self, allow_batched, segments, per_segment, tag):
        """A relay with its metrics endpoint over a fresh spool into a stream with or
        without allow_batched, once every record is stored and acknowledged: (server, relay,
        expected records, /metrics text)."""
        server = self.nats(binary=self.server_path)
        create_kumo_stream(server.url, allow_batched=allow_batched)
        expected = self.write_spool(segments, per_segment, tag)
        port = harness.free_port()
        relay = self.relay(self.relay_config(server.url,
                                             metrics={"listen": f"127.0.0.1:{port}"}))
        harness.wait_count(server.url, STREAM, len(expected), timeout=120)
        return server, relay, expected, self.acked_metrics(port, len(expected))

    def test_batches_carry_every_record_exactly_once(self):
        server, relay, expected, text = self.relay_all(True, 4, 10000, "b")
        self.assertEqual(0, relay.stop())
        log = relay.log_text()
        self.assertIn(BATCHING, log)
        self.assertNotIn("fast-ingest batch failed", log)
        self.assertNotIn("sent again one by one", log)
        self.assertEqual(len(expected), harness.metric(text, "publishes_acked_total"))
        # Only the publishes before the stream's answer about batches are single ones; the
        # counter and the batches' own log lines agree on the others.
        self.assertGreater(harness.metric(text, "publishes_batched_total"), 0.9 * len(expected))
        self.assertEqual(batched(log), harness.metric(text, "publishes_batched_total"))
        harness.assert_exactly_once(harness.dump_stream(server.url, STREAM), expected)

    def test_relay_killed_mid_batch_then_restarted(self):
        """kill -9 of the relay three times while it publishes in batches: what a batch had
        not had acknowledged goes out again after the restart, and the stream drops what
        it already stored (its Nats-Msg-Id)."""
        rng = random.Random(1)
        server = self.nats(binary=self.server_path)
        create_kumo_stream(server.url, allow_batched=True)
        expected = self.write_spool(4, 15000, "k")
        relay = self.relay(self.relay_config(server.url))
        for i, target in enumerate(sorted(rng.sample(range(5000, 50000), 3))):
            wait_at_least(server.url, target, 120, f"kill {i + 1}")
            self.assertEqual(-9, relay.kill())
            self.assertIn(BATCHING, relay.log_text())
            relay.start()
        harness.wait_count(server.url, STREAM, len(expected), timeout=120)
        self.assertEqual(0, relay.stop())
        dump = harness.dump_stream(server.url, STREAM)
        harness.assert_checkpoint_covered(harness.read_checkpoint(self.state / "checkpoint"),
                                          dump)
        harness.assert_exactly_once(dump, expected)

    def test_server_killed_mid_batch_and_restarted_on_its_store(self):
        """kill -9 of nats-server twice mid-run, restarted on the same port and store: the
        relay rides through, its open batches go out again one by one, then batches go
        on."""
        server = self.nats(binary=self.server_path)
        create_kumo_stream(server.url, allow_batched=True)
        expected = self.write_spool(4, 15000, "s")
        relay = self.relay(self.relay_config(server.url))
        pid = relay.pid
        for i, target in enumerate((12000, 35000)):
            wait_at_least(server.url, target, 120, f"server kill {i + 1}")
            server.kill()
            server.start()
        harness.wait_count(server.url, STREAM, len(expected), timeout=180)
        self.assertEqual(pid, relay.pid)
        self.assertEqual(0, relay.stop())
        log = relay.log_text()
        self.assertEqual(2, len(re.findall(r" info reconnected to nats ", log)), log[-3000:])
        harness.assert_exactly_once(harness.dump_stream(server.url, STREAM), expected)

    def test_batches_disabled_mid_run_fall_back_to_single_publishes(self):
        """The stream's allow_batched turned off while the relay runs: the server refuses
        the batch ("batch publish is disabled"), whose messages go out again singly with
        their ids, and the relay publishes one ack per message from then on."""
        server = self.nats(binary=self.server_path)
        config = create_kumo_stream(server.url, allow_batched=True)["config"]
        names = harness.segment_names(1)
        live = self.segment(names[0])
        lines = harness.many_records(30000, seed=7, prefix="x-")
        live.write(lines[:10000])
        live.flush()
        relay = self.relay(self.relay_config(server.url))
        wait_at_least(server.url, 10000, 120, "the first part")
        self.assertIn(BATCHING, relay.log_text())
        live.write(lines[10000:20000])
        live.flush()
        wait_at_least(server.url, 12000, 120, "a batch under way")
        config["allow_batched"] = False
        reply = json.loads(harness.nats_request(server.url, f"$JS.API.STREAM.UPDATE.{STREAM}",
                                                json.dumps(config).encode()))
        self.assertFalse(reply["config"].get("allow_batched"), reply)
        live.write(lines[20000:])
        live.close()
        expected = harness.expected_messages("test", names[0], lines)
        harness.wait_count(server.url, STREAM, len(expected), timeout=120)
        self.assertEqual(0, relay.stop())
        log = relay.log_text()
        self.assertIn('error="batch publish is disabled"', log)
        self.assertIn("publishing with one ack per message from now on: fast-ingest batches "
                      "do not work here stream=KUMO", log)
        harness.assert_exactly_once(harness.dump_stream(server.url, STREAM), expected)

    def test_server_paused_past_ack_timeout_mid_batch(self):
        """nats-server stopped (SIGSTOP) for longer than ack_timeout while a batch is in
        flight: the batch's unacknowledged messages go out again singly, and when the
        server goes on it stores each record once and batches resume."""
        server = self.nats(binary=self.server_path)
        create_kumo_stream(server.url, allow_batched=True)
        names = harness.segment_names(1)
        live = self.segment(names[0])
        lines = harness.many_records(30000, seed=8, prefix="p-")
        live.write(lines[:20000])
        live.flush()
        relay = self.relay(self.relay_config(server.url, jetstream={"ack_timeout": "1s"}))
        wait_at_least(server.url, 5000, 120, "batches under way")
        os.kill(server.proc.pid, signal.SIGSTOP)
        try:
            poll(lambda: "no ack within ack_timeout" in relay.log_text(), 30,
                 "the relay to give the batch up")
        finally:
            os.kill(server.proc.pid, signal.SIGCONT)
        live.write(lines[20000:])
        live.close()
        expected = harness.expected_messages("test", names[0], lines)
        harness.wait_count(server.url, STREAM, len(expected), timeout=120)
        self.assertEqual(0, relay.stop())
        log = relay.log_text()
        failed = log.index("a fast-ingest batch failed")
        self.assertRegex(log[failed:], r"fast-ingest batch stored stream=KUMO batch=\d+ "
                                       r"messages=\d+")  # batches again after the pause
        self.assertNotIn("publishing with one ack per message from now on", log)
        harness.assert_exactly_once(harness.dump_stream(server.url, STREAM), expected)

    def test_stream_without_allow_batched_gets_single_publishes(self):
        server, relay, expected, text = self.relay_all(False, 2, 5000, "n")
        self.assertEqual(0, harness.metric(text, "publishes_batched_total"))
        self.assertEqual(0, relay.stop())
        log = relay.log_text()
        self.assertIn(NO_BATCHES, log)
        self.assertNotIn("publishing in fast-ingest batches", log)
        harness.assert_exactly_once(harness.dump_stream(server.url, STREAM), expected)

    def test_batch_off_never_asks(self):
        server = self.nats(binary=self.server_path)
        create_kumo_stream(server.url, allow_batched=True)
        expected = self.write_spool(2, 5000, "o")
        relay = self.relay(self.relay_config(server.url, jetstream={"batch": "off"}))
        harness.wait_count(server.url, STREAM, len(expected), timeout=120)
        self.assertEqual(0, relay.stop())
        self.assertNotIn("fast-ingest", relay.log_text())
        harness.assert_exactly_once(harness.dump_stream(server.url, STREAM), expected)


def older_servers():
    """(name, path) of every server of the matrix but the newest: Debian's 2.9.10 always,
    2.10 and 2.12 where tests/tools/nats-servers.sh built them."""
    proc = subprocess.run([REPO / "tests" / "tools" / "nats-servers.sh"], capture_output=True,
                          text=True, timeout=1800)
    found = [tuple(line.split(" ", 1)) for line in proc.stdout.splitlines() if " " in line]
    return found[:-1] if proc.returncode == 0 and len(found) > 1 else [("debian", None)]


class OlderServerTest(RelayTestCase):
    """Servers before 2.14 know no fast batches (2.9 and 2.10 drop allow_batched from a
    stream's configuration, 2.12 refuses it): the relay learns from STREAM.INFO that the
    stream has none and publishes one ack per message."""

    def test_single_publishes_on_servers_without_batches(self):
        for name, path in older_servers():
            with self.subTest(server=name):
                self.relay_on(name, path)

    def relay_on(self, name, path):
        server = self.nats(**({"binary": path} if path else {}), name=name.replace(".", "-"))
        try:
            reply = create_kumo_stream(server.url, allow_batched=True)
            self.assertNotIn("allow_batched", reply["config"], name)  # 2.9, 2.10: dropped
        except AssertionError as e:
            self.assertIn('unknown field "allow_batched"', str(e))
            create_kumo_stream(server.url, allow_batched=False)  # 2.12: refused
        spool = self.spool / name
        spool.mkdir(parents=True)
        names = harness.segment_names(2)
        expected = []
        for i, segment in enumerate(names):
            lines = harness.many_records(3000, seed=i, prefix=f"{name}-{i}-")
            harness.write_segment(spool / segment, lines)
            expected += harness.expected_messages("test", segment, lines)
        state = self.state / name
        state.mkdir(parents=True)
        relay = self.relay(harness.relay_config(spool, state, server.url),
                           name=f"relay-{name}")
        harness.wait_count(server.url, STREAM, len(expected), timeout=120)
        self.assertEqual(0, relay.stop())
        log = relay.log_text()
        self.assertIn(NO_BATCHES, log)
        self.assertNotIn("publishing in fast-ingest batches", log)
        harness.assert_exactly_once(harness.dump_stream(server.url, STREAM), expected)
        server.stop()


if __name__ == "__main__":
    unittest.main()
