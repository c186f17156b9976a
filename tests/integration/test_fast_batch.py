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
"""

import json
import os
import re
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


if __name__ == "__main__":
    unittest.main()
