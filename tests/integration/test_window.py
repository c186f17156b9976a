"""Longer than the duplicate window: kill -9 the relay right after a burst, restart it after
10 s with a stream whose duplicate_window is 5 s. With jetstream.stream set the relay reads
back the stream's tail at start and does not publish what is already stored; without it
(the control, run side by side) JetStream can no longer drop the copies."""

import collections
import re
import time

import harness as h

DOWNTIME_S = 10  # the scenario itself: longer than the 5 s duplicate window

TWO_STREAMS = """\
      client:publish { subject = 'short.x', payload = message:get_data() }
      client:publish { subject = 'long.x', payload = message:get_data() }"""


class DuplicateWindowTest(h.RelayTestCase):
    def burst_then_crash(self, server, stream, subject_root, spool, state, read_back):
        h.create_stream(server.url, stream, [f"{subject_root}.>"], dup_window=5)
        name = h.segment_name()
        lines = h.make_records(3000, seed=hash(stream) % 1000, prefix=stream)
        h.write_segment(spool / name, lines)
        cfg = h.relay_config(spool, state, server.url, subject=f"{subject_root}.{{type}}",
                             # The checkpoint must not catch up before the kill: every record
                             # is then sent again at the restart.
                             checkpoint={"interval": "1h"},
                             jetstream={"stream": stream if read_back else None,
                                        "max_in_flight": 1024},
                             expected_max_downtime="10m")
        relay = h.Relay(cfg, self.tmp, name=f"relay-{stream}")
        self._procs.append(relay)
        h.wait_count(server.url, stream, len(lines), timeout=60)
        self.assertEqual(-9, relay.kill())
        return relay, h.expected_messages("test", name, lines)

    def test_restart_after_the_duplicate_window_publishes_nothing_twice(self):
        server = self.nats()
        spool_b, state_b = self.tmp / "spool-b", self.tmp / "state-b"
        spool_b.mkdir()
        relay, expected = self.burst_then_crash(server, "KUMO", "kumo", self.spool, self.state,
                                                read_back=True)
        control, control_expected = self.burst_then_crash(server, "CONTROL", "control",
                                                          spool_b, state_b, read_back=False)
        time.sleep(DOWNTIME_S)

        self.assertEqual(0, relay.run_once())
        self.assertEqual(0, control.run_once())

        h.assert_exactly_once(h.dump_stream(server.url, "KUMO"), expected)
        log = relay.log_text()
        self.assertIn("the stream's duplicate_window is shorter than expected_max_downtime", log)
        self.assertRegex(log, r"read back the stream stream=KUMO from_seq=1 last_seq=3000 "
                              r"ids_of_this_relay=3000")
        self.assertRegex(log, r"spool relayed records=3000 published=0 ")

        # The control shows what the read-back prevents: every record stored twice.
        dump = h.dump_stream(server.url, "CONTROL")
        copies = collections.Counter(m["msgid"] for m in dump)
        print(f"control without read-back: {len(dump)} stored for {len(control_expected)} "
              f"records, {sum(1 for c in copies.values() if c > 1)} duplicated")
        self.assertEqual(2 * len(control_expected), len(dump))

    def test_short_duplicate_window_is_warned_for_every_stream_published_to(self):
        """Without jetstream.stream the relay still learns each stream it writes into from
        the acks, reads its configuration once, and warns once for each whose
        duplicate_window is shorter than expected_max_downtime: the built-in policy's, and
        of the two a Lua policy publishes to, the short one only."""
        server = self.nats()
        h.create_stream(server.url, "SHORT", ["short.>"], dup_window=5)
        h.create_stream(server.url, "LONG", ["long.>"], dup_window=1200)
        name = h.segment_name()
        lines = h.make_records(600, seed=5, prefix="w")
        h.write_segment(self.spool / name, lines)
        warning = (r" warn the stream's duplicate_window is shorter than expected_max_downtime: "
                   r".* stream=(\S+) duplicate_window_ms=(\d+) expected_max_downtime_ms=(\d+)$")

        builtin = self.relay(self.relay_config(server.url, subject="short.{type}",
                                               expected_max_downtime="10m"), start=False)
        self.assertEqual(0, builtin.run_once())
        self.assertEqual([("SHORT", "5000", "600000")],
                         re.findall(warning, builtin.log_text(), flags=re.M))

        # A Lua policy that sends each record to both streams.
        policy = self.tmp / "policy.lua"
        policy.write_text(h.connection_policy(server.port, TWO_STREAMS))
        lua = self.relay(h.relay_config(self.spool, self.tmp / "state-lua", server.url,
                                        relay_id="lua",
                                        policy={"script": str(policy), "subject": None},
                                        expected_max_downtime="10m"),
                         start=False, name="lua")
        self.assertEqual(0, lua.run_once())
        self.assertEqual([("SHORT", "5000", "600000")],
                         re.findall(warning, lua.log_text(), flags=re.M))
        self.assertEqual(2 * len(lines), h.stream_count(server.url, "SHORT"))
        self.assertEqual(len(lines), h.stream_count(server.url, "LONG"))

    def test_shared_stream_restart_after_the_window_publishes_nothing_twice(self):
        """Two relays share a stream. Relay a is killed -9 right after a burst; while it is
        down (longer than the 5 s duplicate_window) relay b stores 70,000 more, past the
        65,536 last messages a read of the stream's tail would see. a reads back from its
        checkpoint's floor instead, finds its 3,000, and publishes nothing twice."""
        server = self.nats()
        h.create_stream(server.url, "KUMO", ["kumo.>"], dup_window=5)
        name = h.segment_name()
        lines = h.make_records(3000, seed=21, prefix="sa")
        h.write_segment(self.spool / name, lines)
        a = self.relay(h.relay_config(self.spool, self.state, server.url, relay_id="a",
                                      checkpoint={"interval": "1h"},
                                      jetstream={"stream": "KUMO", "max_in_flight": 1024}),
                       name="a")
        h.wait_count(server.url, "KUMO", len(lines), timeout=60)
        burst_done = time.monotonic()
        self.assertEqual(-9, a.kill())
        # Written at start, before anything was published: the stream was empty.
        self.assertIn("\nstream KUMO 0\n", (self.state / "checkpoint").read_text())

        spool_b = self.tmp / "spool-b"
        spool_b.mkdir()
        lines_b = h.many_records(70000, seed=22, prefix="sb")
        h.write_segment(spool_b / name, lines_b)
        b = self.relay(h.relay_config(spool_b, self.tmp / "state-b", server.url, relay_id="b"),
                       start=False, name="b")
        self.assertEqual(0, b.run_once(timeout=180))
        time.sleep(max(0.0, burst_done + DOWNTIME_S - time.monotonic()))

        self.assertEqual(0, a.run_once())
        log = a.log_text()
        self.assertRegex(log, r"read back the stream stream=KUMO from_seq=1 last_seq=73000 "
                              r"ids_of_this_relay=3000")
        self.assertRegex(log, r"spool relayed records=3000 published=0 ")
        # Every found id was read again and committed: the floor moves up to the stream's
        # last sequence at that start.
        self.assertIn("\nstream KUMO 73000\n", (self.state / "checkpoint").read_text())
        expected = h.expected_messages("a", name, lines) + h.expected_messages("b", name, lines_b)
        h.check_exactly_once(h.dump_stream(server.url, "KUMO"), expected,
                             "shared stream, restart after the window")


if __name__ == "__main__":
    import unittest
    unittest.main()
