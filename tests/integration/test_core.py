"""The core relay end to end: real nats-server -js, the real binary, segments written the
way kumod writes them (one zstd frame per file, no flush per record, chmod a-w when
done). Every test checks the stream byte for byte, with each record's Nats-Msg-Id."""

import json
import re

import harness as h

STREAM = "KUMO"


def published_per_run(log_text):
    """The `published=` count of each run's final log line, in order."""
    return [int(m) for m in re.findall(r"(?:stopped|spool relayed) records=\d+ published=(\d+)",
                                       log_text)]


class CoreRelayTest(h.RelayTestCase):
    def start_nats(self):
        server = self.nats()
        h.create_stream(server.url, STREAM, ["kumo.log.>"], dup_window=600)
        return server

    def test_done_and_live_segments_relayed_exactly_once(self):
        server = self.start_nats()
        names = h.segment_names(5)
        expected, lines_by_segment = [], {}
        for i, name in enumerate(names[:4]):
            lines = h.make_records(4000, seed=i, prefix=f"done{i}")
            h.write_segment(self.spool / name, lines)
            expected += h.expected_messages("test", name, lines)
        live = self.segment(names[4])
        first = h.make_records(2000, seed=10, prefix="live-a")
        live.write(first)
        relay = self.relay(self.relay_config(server.url))
        second = h.make_records(2000, seed=11, prefix="live-b")
        live.write(second)
        live.close()
        expected += h.expected_messages("test", names[4], first + second)
        self.assertEqual(20000, len(expected))
        h.wait_count(server.url, STREAM, 20000, timeout=120)
        self.assertEqual(0, relay.stop())
        h.assert_exactly_once(h.dump_stream(server.url, STREAM), expected)
        self.assertEqual([20000], published_per_run(relay.log_text()))

    def test_sigterm_halfway_then_restart_is_still_exactly_once(self):
        server = self.start_nats()
        names = h.segment_names(4)
        expected = []
        for i, name in enumerate(names[:2]):
            lines = h.make_records(5000, seed=20 + i, prefix=f"a{i}")
            h.write_segment(self.spool / name, lines)
            expected += h.expected_messages("test", name, lines)
        live = self.segment(names[2], plain=True)
        live_lines = h.make_records(2000, seed=30, prefix="plain-a")
        live.write(live_lines)
        relay = self.relay(self.relay_config(server.url))
        h.wait_count(server.url, STREAM, 12000, timeout=120)
        self.assertEqual(0, relay.stop())
        checkpoint = (self.state / "checkpoint").read_text()
        self.assertIn(f"segment {names[2]} ", checkpoint)

        # While the relay is down the live segment grows and a new segment appears.
        more = h.make_records(3000, seed=31, prefix="plain-b")
        live.write(more)
        live.close()
        last = h.make_records(5000, seed=32, prefix="c")
        h.write_segment(self.spool / names[3], last)
        expected += h.expected_messages("test", names[2], live_lines + more)
        expected += h.expected_messages("test", names[3], last)

        relay.start()
        h.wait_count(server.url, STREAM, 20000, timeout=120)
        self.assertEqual(0, relay.stop())
        h.assert_exactly_once(h.dump_stream(server.url, STREAM), expected)
        # A clean stop commits everything acknowledged: the second run re-sends nothing.
        self.assertEqual([12000, 8000], published_per_run(relay.log_text()))

    def test_two_live_segments_with_suffixes_advance_together(self):
        server = self.start_nats()
        stamp = h.segment_name()
        recv = self.segment(stamp + "_recv")
        deliv = self.segment(stamp + "_deliv")
        relay = self.relay(self.relay_config(server.url))
        sent = {recv.name: [], deliv.name: []}
        for round_ in range(3):
            for w in (recv, deliv):
                lines = h.make_records(300, seed=40 + round_, prefix=f"{w.name}-{round_}")
                w.write(lines)
                w.flush()  # on disk now; neither segment is done
                sent[w.name] += lines
            total = sum(len(v) for v in sent.values())
            h.wait_count(server.url, STREAM, total, timeout=60)
            self.assertFalse(h.is_done(recv.path) or h.is_done(deliv.path))
            expected = []
            for name, lines in sent.items():
                expected += h.expected_messages("test", name, lines)
            h.assert_exactly_once(h.dump_stream(server.url, STREAM), expected)
        recv.close()
        deliv.close()
        self.assertEqual(0, relay.stop())

    def test_segment_left_truncated_by_a_kumod_crash(self):
        server = self.start_nats()
        name = h.segment_name()
        w = self.segment(name)
        lines = h.make_records(1500, seed=50, prefix="crash")
        w.write(lines)
        w.crash()  # frame never finished; kumod's restart sweep cleared the write bits
        readable = h.readable_records(w.path)
        self.assertLess(len(readable), len(lines))
        self.assertGreater(len(readable), 0)
        self.assertEqual(lines[:len(readable)], readable)
        relay = self.relay(self.relay_config(server.url), start=False)
        self.assertEqual(0, relay.run_once())
        h.assert_exactly_once(h.dump_stream(server.url, STREAM),
                              h.expected_messages("test", name, readable))
        self.assertRegex(relay.log_text(), r"segment ends mid-record .* segment=" + re.escape(name)
                         + r" dropped_bytes=\d+ frame_truncated=yes")
        self.assertIn(f"segment {name} ", (self.state / "checkpoint").read_text())

    def test_non_json_line_is_dead_lettered_when_the_subject_needs_a_field(self):
        server = self.start_nats()
        name = h.segment_name()
        good = h.make_records(10, seed=60, prefix="ok")
        bad = b"2026-11-25,Delivery,not json\n"
        lines = good[:5] + [bad] + good[5:]
        h.write_segment(self.spool / name, lines)
        relay = self.relay(self.relay_config(server.url), start=False)
        self.assertEqual(0, relay.run_once())
        all_msgs = h.expected_messages("test", name, lines)
        expected = [m for m in all_msgs if m[0] != bad]
        h.assert_exactly_once(h.dump_stream(server.url, STREAM), expected)
        dead = (self.state / "deadletter" / "deadletter.jsonl").read_text().splitlines()
        self.assertEqual(1, len(dead))
        entry = json.loads(dead[0])
        start = sum(len(x) for x in good[:5])
        self.assertEqual({"segment": name, "start": start, "end": start + len(bad),
                          "reason": "not JSON", "line": bad.decode()},
                         {k: entry[k] for k in ("segment", "start", "end", "reason", "line")})

    def test_subject_template_tokens_are_sanitised(self):
        server = self.start_nats()
        name = h.segment_name()
        recs = [
            {"type": "Delivery", "queue": "camp.1:tenant one@example.com!mx.example.net"},
            {"type": "Bounce", "queue": "example.org"},
            {"type": "Reception", "queue": ""},
        ]
        lines = [json.dumps(r, separators=(",", ":")).encode() + b"\n" for r in recs]
        h.write_segment(self.spool / name, lines)
        cfg = self.relay_config(server.url,
                                subject="kumo.log.{type}.{domain}.{tenant}.{campaign}.{relay_id}")
        relay = self.relay(cfg, start=False)
        self.assertEqual(0, relay.run_once())
        subjects = [m["subject"] for m in h.dump_stream(server.url, STREAM)]
        self.assertEqual(["kumo.log.Delivery.example_com.tenant_one.camp_1.test",
                          "kumo.log.Bounce.example_org._._.test",
                          "kumo.log.Reception._._._.test"], subjects)

    def test_corrupt_checkpoint_stops_the_start_until_reset(self):
        server = self.start_nats()
        name = h.segment_name()
        lines = h.make_records(100, seed=70)
        h.write_segment(self.spool / name, lines)
        relay = self.relay(self.relay_config(server.url), start=False)
        self.assertEqual(0, relay.run_once())
        cp = self.state / "checkpoint"
        text = cp.read_bytes()
        cp.write_bytes(text[: len(text) // 2])
        self.assertEqual(1, relay.run_once())
        self.assertIn(f"checkpoint {self.state}/checkpoint: the checkpoint is incomplete or "
                      "damaged", relay.log_text())
        self.assertEqual(text[: len(text) // 2], cp.read_bytes())
        self.assertEqual(0, relay.run_once("--reset-offsets"))
        # Everything is sent again with the same ids: JetStream keeps one copy of each.
        h.assert_exactly_once(h.dump_stream(server.url, STREAM),
                              h.expected_messages("test", name, lines))


if __name__ == "__main__":
    import unittest
    unittest.main()
