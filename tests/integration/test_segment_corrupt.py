"""A done zstd segment with a damaged block in its middle: every record that decodes
before the damage is relayed exactly once, the undecodable rest is one dead letter (with
the segment, the compressed and decompressed offsets and zstd's error), the segment
finishes in the checkpoint, and the segments around it flow. Every test prints what it
did and the final count line."""

import json
import random
import re
import subprocess
import urllib.request
import zlib

import harness as h

STREAM = "KUMO"


def deadletters(state):
    path = state / "deadletter" / "deadletter.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_bytes().split(b"\n")[:-1]]


def damage(path, at, length, seed):
    """Overwrite `length` bytes at `at` with random ones, keeping the file done."""
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    data[at:at + length] = bytes(rng.randrange(256) for _ in range(length))
    path.chmod(0o644)
    path.write_bytes(bytes(data))
    path.chmod(0o444)


def decodable(path):
    """(bytes a decoder gets before the damage, zstd's error name): zstdpeek --bytewise
    feeds one byte per call, so no block before the bad one is lost with it."""
    h.Tools.require("zstdpeek")
    proc = subprocess.run([str(h.Tools.zstdpeek), "--bytewise", str(path)],
                          capture_output=True, timeout=120)
    if proc.returncode != 2:
        raise AssertionError(f"zstdpeek --bytewise {path} exited {proc.returncode}: the "
                             "damage did not make the segment undecodable")
    return proc.stdout, proc.stderr.decode().strip().rsplit(": ", 1)[1]


def metrics_text(port):
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        return resp.read().decode()


class CorruptSegmentTest(h.RelayTestCase):
    def setUp(self):
        super().setUp()
        self.server = self.nats()
        h.create_stream(self.server.url, STREAM, storage="file", dup_window=900)

    def records(self, n, prefix):
        return h.many_records(n, seed=zlib.crc32(prefix.encode()), prefix=prefix)

    def segment_of(self, name, n, prefix):
        lines = self.records(n, prefix)
        h.write_segment(self.spool / name, lines)
        return lines

    def test_damaged_block_relays_the_records_before_it(self):
        names = h.segment_names(3)
        before = self.segment_of(names[0], 200, "before")
        lines = self.segment_of(names[1], 500, "bad")
        after = self.segment_of(names[2], 200, "after")
        path = self.spool / names[1]
        size = path.stat().st_size
        damage(path, size // 2, 256, seed=12)
        decoded, zstd_error = decodable(path)
        kept = decoded.count(b"\n")
        good = lines[:kept]
        self.assertTrue(decoded.startswith(b"".join(good)))
        self.assertGreater(kept, 50, "the damage should leave a prefix that decodes")
        self.assertLess(kept, 500)
        last = sum(map(len, good))

        relay = self.relay(self.relay_config(self.server.url), start=False)
        self.assertEqual(0, relay.run_once())
        dump = h.dump_stream(self.server.url, STREAM)
        print(f"{size}-byte zstd segment of 500 records, 256 bytes at {size // 2} damaged: "
              f"{kept} records decode before the damage ({len(decoded)} bytes)",
              flush=True)
        expected = (h.expected_messages("test", names[0], before)
                    + h.expected_messages("test", names[1], good)
                    + h.expected_messages("test", names[2], after))
        h.check_exactly_once(dump, expected, "damaged segment")

        dead = deadletters(self.state)
        self.assertEqual(1, len(dead), dead)
        self.assertEqual((names[1], last, len(decoded), None),
                         (dead[0]["segment"], dead[0]["start"], dead[0]["end"],
                          dead[0]["line"]))
        self.assertRegex(
            dead[0]["reason"],
            rf"^undecodable: zstd: {re.escape(zstd_error)} at compressed offset (\d+) of "
            rf"{size} bytes, after {len(decoded)} decompressed bytes; the rest of the "
            rf"segment after offset {last} is lost$")
        at = int(re.search(r"compressed offset (\d+)", dead[0]["reason"]).group(1))
        self.assertLessEqual(at, size // 2, "the damage starts no earlier than it was made")
        self.assertGreater(at, 0)
        self.assertRegex(relay.log_text(),
                         r" error segment cannot be decoded past this point; the records "
                         r"before it are relayed, the rest is dead-lettered segment="
                         + re.escape(names[1]) + f" offset={last} decoded={len(decoded)} "
                         rf"compressed_offset={at} error=\"zstd: {re.escape(zstd_error)}\"")
        segs = h.read_checkpoint(self.state / "checkpoint")["segments"]
        self.assertEqual((last, kept, True), segs[names[1]][1:])
        self.assertTrue(segs[names[0]][3] and segs[names[2]][3])

        # Finished: a second run neither reads it again nor writes a second dead letter.
        self.assertEqual(0, relay.run_once())
        self.assertEqual(1, len(deadletters(self.state)))
        h.check_exactly_once(h.dump_stream(self.server.url, STREAM), expected,
                             "damaged segment, second run")

    def test_damage_found_while_the_daemon_runs_counts_and_moves_on(self):
        """The daemon: the metric counts the segment and its dead letter, and a segment
        written after the damaged one is relayed."""
        names = h.segment_names(2)
        lines = self.segment_of(names[0], 500, "bad")
        path = self.spool / names[0]
        damage(path, path.stat().st_size // 2, 256, seed=12)
        decoded, _ = decodable(path)
        good = lines[:decoded.count(b"\n")]
        port = h.free_port()
        relay = self.relay(self.relay_config(self.server.url,
                                             metrics={"listen": f"127.0.0.1:{port}"}))
        h.wait_count(self.server.url, STREAM, len(good), timeout=60)
        after = self.segment_of(names[1], 300, "after")
        h.wait_count(self.server.url, STREAM, len(good) + len(after), timeout=60)
        metrics = h.poll(lambda: (m := metrics_text(port))
                         and 'reason="undecodable"} 1' in m and m, 30, "the metrics",
                         ignore=(OSError,))
        self.assertIn("kumo_nats_relay_segments_corrupt_total 1\n", metrics)
        self.assertIn('kumo_nats_relay_records_deadlettered_total{reason="undecodable"} 1\n',
                      metrics)
        self.assertEqual(0, relay.stop())
        dump = h.dump_stream(self.server.url, STREAM)
        print(f"daemon: {len(good)} of 500 records before the damage, then 300 of the next "
              "segment", flush=True)
        h.check_exactly_once(dump, h.expected_messages("test", names[0], good)
                             + h.expected_messages("test", names[1], after), "daemon")
        self.assertEqual(1, len(deadletters(self.state)))
