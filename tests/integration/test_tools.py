"""The test tools and the harness themselves: if these fail, no other integration result
means anything."""

import json
import os
import shutil
import subprocess
import unittest

import harness as h

ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
BLOCK = 128 * 1024


def zstd_cli(*args, path):
    return subprocess.run(["zstd", *args, str(path)], capture_output=True, timeout=60)


def concat(lines):
    return b"".join(lines)


class SpoolWriteTest(h.RelayTestCase):
    def setUp(self):
        super().setUp()
        h.Tools.require("spoolwrite", "zstdpeek")

    @unittest.skipUnless(shutil.which("zstd"), "zstd command line tool not installed")
    def test_done_segment_decompresses_to_the_input(self):
        lines = h.make_records(3000, seed=1, prefix="done")
        w = self.segment("20250912-110801.440526026")
        w.write(lines)
        st = w.close()
        path = w.path
        data = concat(lines)
        self.assertEqual(("closed", 3000, len(data)), st[:3])
        self.assertEqual(path.stat().st_size, st[3])
        self.assertTrue(h.is_done(path), oct(path.stat().st_mode))
        self.assertEqual(0o444, path.stat().st_mode & 0o777)
        self.assertEqual(ZSTD_MAGIC, path.read_bytes()[:4])
        self.assertEqual(0, zstd_cli("-t", path=path).returncode)
        out = zstd_cli("-dc", path=path)
        self.assertEqual(0, out.returncode, out.stderr)
        self.assertEqual(data, out.stdout)
        self.assertEqual((data, True), h.decode_segment(path))
        self.assertEqual(lines, h.readable_records(path))

    @unittest.skipUnless(shutil.which("zstd"), "zstd command line tool not installed")
    def test_odd_records_survive_byte_for_byte(self):
        huge = b'{"type":"Delivery","blob":"' + b"x" * (3 * 1024 * 1024) + b'"}\n'
        lines = [b"\n", b"not json at all \xff\xfe\r still one line\n", huge,
                 "unicode é 📦\n".encode(), b"no newline at the end"]
        path = h.write_segment(self.spool / "odd", lines).path
        out = zstd_cli("-dc", path=path)
        self.assertEqual(concat(lines), out.stdout)
        self.assertEqual(lines[:-1], h.readable_records(path))

    @unittest.skipUnless(shutil.which("zstd"), "zstd command line tool not installed")
    def test_empty_done_segment_is_a_valid_empty_frame(self):
        path = h.write_segment(self.spool / "empty", []).path
        self.assertTrue(h.is_done(path))
        self.assertGreater(path.stat().st_size, 0)
        out = zstd_cli("-dc", path=path)
        self.assertEqual((0, b""), (out.returncode, out.stdout))

    def test_live_segment_keeps_write_bits_and_nothing_reaches_disk_before_a_block(self):
        w = self.segment("20250912-110802")
        lines = h.make_records(20, seed=2, prefix="live")
        w.write(lines)
        # kumod never flushes: a few KiB of records stay in the compressor.
        self.assertEqual(("died", 20), w.die()[:2])
        self.assertEqual(0, w.path.stat().st_size)
        self.assertFalse(h.is_done(w.path))
        self.assertEqual(0o644, w.path.stat().st_mode & 0o777)

    def test_live_segment_emits_whole_blocks_only(self):
        w = self.segment("20250912-110803")
        lines = h.make_records(2000, seed=3, prefix="blocks")  # ~1.6 MB
        data = concat(lines)
        w.write(lines)
        # Data reaches the disk as the compressor emits blocks, while the writer lives.
        h.poll(lambda: w.path.stat().st_size > 0, 30, "the first block on disk")
        self.assertFalse(h.is_done(w.path))
        decoded, complete = h.decode_segment(w.path)
        self.assertFalse(complete)
        self.assertTrue(data.startswith(decoded))
        self.assertEqual(0, len(decoded) % BLOCK, len(decoded))
        w.close()
        self.assertTrue(h.is_done(w.path))
        self.assertEqual((data, True), h.decode_segment(w.path))

    def test_flush_puts_every_record_on_disk(self):
        w = self.segment("20250912-110804")
        lines = h.make_records(50, seed=4, prefix="flush")
        w.write(lines[:30])
        what, records, raw, file_bytes = w.flush()
        self.assertEqual(("flushed", 30, len(concat(lines[:30]))), (what, records, raw))
        self.assertEqual(file_bytes, w.path.stat().st_size)
        self.assertEqual((concat(lines[:30]), False), h.decode_segment(w.path))
        self.assertFalse(h.is_done(w.path))
        w.write(lines[30:])
        w.flush()
        self.assertEqual(lines, h.readable_records(w.path))
        w.close()
        self.assertEqual((concat(lines), True), h.decode_segment(w.path))

    @unittest.skipUnless(shutil.which("zstd"), "zstd command line tool not installed")
    def test_crash_leaves_an_unfinished_frame_marked_done(self):
        lines = h.make_records(2500, seed=5, prefix="crash")
        data = concat(lines)
        w = self.segment("20250912-110805")
        w.write(lines)
        self.assertEqual("crashed", w.crash()[0])
        self.assertTrue(h.is_done(w.path))
        self.assertNotEqual(0, zstd_cli("-t", path=w.path).returncode)
        decoded, complete = h.decode_segment(w.path)
        self.assertFalse(complete)
        self.assertGreater(len(decoded), 0)
        self.assertLess(len(decoded), len(data))
        self.assertEqual(0, len(decoded) % BLOCK)
        self.assertTrue(data.startswith(decoded))
        # The complete blocks decode partially with the zstd CLI too.
        cli = zstd_cli("-dc", path=w.path).stdout
        self.assertGreater(len(cli), 0)
        self.assertTrue(data.startswith(cli))
        # Records a reader can take: the complete lines of the decodable prefix.
        survivors = h.readable_records(w.path)
        self.assertEqual(lines[:len(survivors)], survivors)
        self.assertLess(len(survivors), len(lines))

    def test_crash_flag_at_eof(self):
        lines = h.make_records(2500, seed=6, prefix="crashflag")
        path = self.spool / "crashflag"
        proc = subprocess.run([str(h.Tools.spoolwrite), "--crash", str(path)],
                              input=concat(lines), capture_output=True, timeout=60)
        self.assertEqual(0, proc.returncode, proc.stderr)
        self.assertTrue(h.is_done(path))
        decoded, complete = h.decode_segment(path)
        self.assertFalse(complete)
        self.assertTrue(concat(lines).startswith(decoded))

    def test_plain_segment_is_written_as_records_arrive(self):
        w = self.segment("plain.jsonl", plain=True)
        lines = h.make_records(10, seed=7, prefix="plain")
        w.write(lines[:4])
        w.flush()  # a no-op for the file; the answer proves the writes happened
        self.assertEqual(concat(lines[:4]), w.path.read_bytes())
        self.assertFalse(h.is_done(w.path))
        w.write(lines[4:])
        w.close()
        self.assertEqual(concat(lines), w.path.read_bytes())
        self.assertTrue(h.is_done(w.path))
        self.assertEqual((concat(lines), True), h.decode_segment(w.path))

    def test_no_done_and_chmod_after_close(self):
        w = h.write_segment(self.spool / "nodone", [b"a\n"], done=False)
        self.assertEqual(0o644, w.path.stat().st_mode & 0o777)
        w2 = self.segment("after", chmod_after_close=True)
        w2.write(b"b\n")
        w2.close()
        self.assertTrue(h.is_done(w2.path))
        h.sweep_spool(self.spool)
        self.assertTrue(h.is_done(w.path))

    def test_control_lines_are_refused_as_records(self):
        w = self.segment("ctl")
        with self.assertRaises(ValueError):
            w.write(b"ok\n#FLUSH\n")
        w.close()

    def test_appends_to_an_existing_file(self):
        path = self.spool / "append"
        h.write_segment(path, [b"one\n"], plain=True, done=False)
        h.write_segment(path, [b"two\n"], plain=True)
        self.assertEqual(b"one\ntwo\n", path.read_bytes())


class HarnessPiecesTest(unittest.TestCase):
    def test_make_records(self):
        recs = h.make_records(2000, seed=9, prefix="mk")
        self.assertEqual(recs, h.make_records(2000, seed=9, prefix="mk"))
        self.assertNotEqual(recs, h.make_records(2000, seed=10, prefix="mk"))
        self.assertEqual(len(recs), len(set(recs)))
        self.assertFalse(set(recs) & set(h.make_records(2000, seed=9, prefix="other")))
        types = set()
        for line in recs:
            self.assertTrue(line.endswith(b"\n"))
            self.assertEqual(1, line.count(b"\n"))
            self.assertGreaterEqual(len(line), 400)
            self.assertLessEqual(len(line), 1400)
            rec = json.loads(line)
            self.assertEqual("type", next(iter(rec)))
            types.add(rec["type"])
            keys = list(rec)
            self.assertEqual(["type", "id", "sender", "recipient", "queue", "site", "size",
                              "response", "peer_address", "timestamp"], keys[:10])
        self.assertGreaterEqual(len(types), 8)
        self.assertTrue(any(isinstance(json.loads(r)["recipient"], list) for r in recs))
        self.assertTrue(any(b"\\n" in r for r in recs))  # escaped newlines in strings
        self.assertTrue(any(max(r) > 0x7F for r in recs))  # unescaped UTF-8

    def test_expected_messages(self):
        got = h.expected_messages("mta1", "/x/20250912-110801", [b"ab\n", b"cde\n"])
        self.assertEqual([(b"ab\n", "mta1:20250912-110801:3"),
                          (b"cde\n", "mta1:20250912-110801:7")], got)

    def test_segment_names_sort_chronologically(self):
        names = h.segment_names(5, step_seconds=0.25)
        self.assertEqual(sorted(names), names)
        self.assertEqual("20250912-110801.440526000", names[0])
        self.assertEqual("20250912-110801", h.segment_names(1, fraction_digits=0)[0])
        self.assertEqual("20250912-110801.440_recv",
                         h.segment_names(1, fraction_digits=3, suffix="_recv")[0])

    def test_assert_exactly_once(self):
        exp = [(b"a\n", "r:s:2"), (b"b\n", "r:s:4")]

        def dump(*pairs):
            return [{"seq": i + 1, "subject": "s", "data": d, "msgid": m}
                    for i, (d, m) in enumerate(pairs)]

        h.assert_exactly_once(dump(*exp), exp)
        h.assert_exactly_once(dump(exp[1], exp[0]), exp)  # order is not checked
        with self.assertRaisesRegex(AssertionError, "missing 1, duplicated 0"):
            h.assert_exactly_once(dump(exp[0]), exp)
        with self.assertRaisesRegex(AssertionError, r"duplicated 1 \(1 extra"):
            h.assert_exactly_once(dump(exp[0], exp[1], exp[1]), exp)
        with self.assertRaisesRegex(AssertionError, "1 are expected data under a wrong msgid"):
            h.assert_exactly_once(dump(exp[0], (b"b\n", "r:s:5")), exp)
        with self.assertRaisesRegex(AssertionError, "unexpected 1"):
            h.assert_exactly_once(dump(exp[0], exp[1], (b"c\n", None)), exp)

    def test_yaml(self):
        cfg = h.relay_config("/sp", "/st", "nats://127.0.0.1:1", relay_id="mta1",
                             jetstream={"max_in_flight": 8}, log=None)
        text = h.to_yaml(cfg)
        self.assertIn('relay_id: "mta1"\n', text)
        self.assertIn('spool:\n  dir: "/sp"\n  pattern: "*"\n', text)
        self.assertIn('nats:\n  servers: ["nats://127.0.0.1:1"]\n', text)
        self.assertIn('jetstream:\n  max_in_flight: 8\n  ack_timeout: "5s"\n', text)
        self.assertIn('policy:\n  subject: "kumo.log.{type}"\n', text)
        self.assertNotIn("log:", text)

    def test_poll(self):
        calls = []
        self.assertEqual(3, h.poll(lambda: calls.append(1) or len(calls) >= 3 and 3, 5, "x"))
        with self.assertRaisesRegex(AssertionError, "waiting for never"):
            h.poll(lambda: False, 0.1, "never")


class StreamToolTest(h.RelayTestCase):
    def setUp(self):
        super().setUp()
        h.Tools.require("streamtool", "nats_server")
        self.server = self.nats()
        self.url = self.server.url

    def test_create_publish_dump(self):
        h.create_stream(self.url, "KUMO", dup_window=120)
        h.create_stream(self.url, "KUMO", dup_window=120)  # same config: no error
        info = h.stream_info(self.url, "KUMO")
        self.assertEqual((0, 120.0, 1, "file", None),
                         (info["messages"], info["duplicate_window"], info["replicas"],
                          info["storage"], info["leader"]))
        a = h.publish(self.url, "kumo.log.Delivery", b"one\n", "mta1:seg:4")
        self.assertEqual({"stream": "KUMO", "seq": 1, "duplicate": False}, a)
        b = h.publish(self.url, "kumo.log.Delivery", b"one\n", "mta1:seg:4")
        self.assertEqual({"stream": "KUMO", "seq": 1, "duplicate": True}, b)
        h.publish(self.url, "kumo.log.Bounce", b"two \xff\n", None)
        h.publish(self.url, "kumo.log.Bounce", b"", "empty")
        self.assertEqual(3, h.stream_count(self.url, "KUMO"))
        dump = h.dump_stream(self.url, "KUMO")
        self.assertEqual([
            {"seq": 1, "subject": "kumo.log.Delivery", "msgid": "mta1:seg:4", "data": b"one\n"},
            {"seq": 2, "subject": "kumo.log.Bounce", "msgid": None, "data": b"two \xff\n"},
            {"seq": 3, "subject": "kumo.log.Bounce", "msgid": "empty", "data": b""},
        ], dump)
        self.assertEqual(dump, h.dump_stream(self.url, "KUMO", slow=True))

    def test_create_options_and_errors(self):
        h.create_stream(self.url, "MEM", ["mem.>"], storage="memory", max_msgs=3,
                        discard="old")
        for i in range(5):
            h.publish(self.url, "mem.x", f"{i}\n".encode(), f"id{i}")
        info = h.stream_info(self.url, "MEM")
        self.assertEqual(("memory", 3, 3, 5), (info["storage"], info["messages"],
                                               info["first_seq"], info["last_seq"]))
        self.assertEqual([3, 4, 5], [m["seq"] for m in h.dump_stream(self.url, "MEM")])
        # A conflicting config is an error at once, not after the retry timeout.
        proc = h.streamtool(self.url, "create", "MEM", "other.>", "--timeout", 60, check=False)
        self.assertEqual(2, proc.returncode)
        self.assertIn(b"different configuration", proc.stderr)
        proc = h.streamtool(self.url, "count", "NOPE", check=False)
        self.assertEqual(2, proc.returncode)
        self.assertIn(b"NOPE", proc.stderr)
        proc = h.streamtool(self.url, "create", "R3", "r3.>", "--replicas", 3, "--timeout", 1,
                            check=False)
        self.assertEqual(2, proc.returncode)

    def test_bulk_dump_is_exact_and_skips_deleted(self):
        h.create_stream(self.url, "BULK", ["bulk.>"])
        lines = h.make_records(5000, seed=11, prefix="bulk")
        proc = h.streamtool(self.url, "publish-lines", "bulk.x", "mta1:seg:",
                            input=b"".join(lines))
        self.assertEqual(b"5000\n", proc.stdout)
        for seq in (1, 2500, 5000):
            h.streamtool(self.url, "delete-msg", "BULK", seq)
        dump = h.dump_stream(self.url, "BULK")
        self.assertEqual(4997, len(dump))
        self.assertNotIn(2500, [m["seq"] for m in dump])
        expected = [(line, f"mta1:seg:{i + 1}") for i, line in enumerate(lines)
                    if i + 1 not in (1, 2500, 5000)]
        h.assert_exactly_once(dump, expected)
        self.assertEqual(dump, h.dump_stream(self.url, "BULK", slow=True))
        fast = h.streamtool(self.url, "dump", "BULK", "--window", 7).stdout
        self.assertEqual(h.streamtool(self.url, "dump", "BULK").stdout, fast)

    def test_wait_count(self):
        h.create_stream(self.url, "W", ["w.>"])
        h.publish(self.url, "w.1", b"x", None)
        self.assertEqual(1, h.wait_count(self.url, "W", 1, 10))
        proc = h.streamtool(self.url, "wait-count", "W", 2, 0.3, check=False)
        self.assertEqual((1, b"1\n"), (proc.returncode, proc.stdout))
        with self.assertRaisesRegex(AssertionError, "did not reach 5"):
            h.wait_count(self.url, "W", 5, 0.3)

    def test_wait_count_rides_through_a_server_restart(self):
        h.create_stream(self.url, "R", ["r.>"])
        waiter = subprocess.Popen([str(h.Tools.streamtool), "-s", self.url, "wait-count", "R",
                                   "1", "60"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            self.server.restart()
            h.publish(self.url, "r.1", b"x", "id")
            out, err = waiter.communicate(timeout=60)
            self.assertEqual(0, waiter.returncode, err)
            self.assertEqual(b"1\n", out)
        finally:
            if waiter.poll() is None:
                waiter.kill()

    def test_server_stop_kill_restart_keep_the_stream(self):
        h.create_stream(self.url, "KEEP", ["keep.>"])
        h.publish(self.url, "keep.a", b"1\n", "a")
        self.assertIn(self.server.stop(), (0, 1))  # 2.9 exits 1 on SIGTERM
        self.assertFalse(self.server.running)
        self.assertFalse(self.server.accepts())
        self.server.start()
        h.publish(self.url, "keep.a", b"2\n", "b")
        self.server.kill()
        self.server.restart()
        self.assertEqual([b"1\n", b"2\n"], [m["data"] for m in h.dump_stream(self.url, "KEEP")])
        self.assertTrue(self.server.log_text().count("==== start") == 3)


@unittest.skipIf(os.environ.get("KNR_SKIP_CLUSTER"), "KNR_SKIP_CLUSTER set")
class ClusterTest(h.RelayTestCase):
    def test_three_node_cluster_replicated_stream(self):
        h.Tools.require("streamtool", "nats_server")
        cluster = self.cluster(3)
        h.create_stream(cluster.url, "KUMO", replicas=3, dup_window=60)
        info = h.stream_info(cluster.url, "KUMO")
        self.assertEqual("knr", info["cluster"])
        self.assertEqual(3, info["replicas"])
        leader = cluster.stream_leader("KUMO")
        self.assertIsNotNone(leader)
        h.publish(cluster.servers[0].url, "kumo.log.Delivery", b"r1\n", "id1")
        # A leader loss: the stream elects another leader and keeps its data.
        leader.kill()
        others = ",".join(s.url for s in cluster.servers if s is not leader)
        h.poll(lambda: (h.stream_info(others, "KUMO").get("leader") or leader.name)
               != leader.name, 30, "a new stream leader", interval=0.2, ignore=AssertionError)
        h.publish(others, "kumo.log.Delivery", b"r2\n", "id2")
        leader.restart(ready_timeout=30)
        h.poll(lambda: h.stream_count(leader.url, "KUMO") == 2, 30, "2 messages", interval=0.1,
               ignore=AssertionError)
        h.assert_exactly_once(h.dump_stream(cluster.url, "KUMO"),
                              [(b"r1\n", "id1"), (b"r2\n", "id2")])


if __name__ == "__main__":
    unittest.main()
