"""Real KumoMTA deployments: log-hook records, segment_header, template (non-JSON) lines,
{nodeid}/{relay_id} subjects, and two relays on two nodes into one 3-server cluster."""

import json

import harness as h

STREAM = "KUMO"


def record(type_, i, **extra):
    rec = {"type": type_, "id": f"{i:032x}", "queue": "example.com", "nodeid": "node-a"}
    rec.update(extra)
    return json.dumps(rec, separators=(",", ":")).encode() + b"\n"


class DeploymentTest(h.RelayTestCase):
    def start_nats(self, subjects=("kumo.>",)):
        server = self.nats()
        h.create_stream(server.url, STREAM, list(subjects), dup_window=600)
        return server

    def test_log_hook_records_are_skipped_by_the_built_in_policy(self):
        server = self.start_nats()
        name = h.segment_name()
        lines = [record("Delivery", i, reception_protocol="LogRecord" if i % 3 == 0 else "ESMTP")
                 for i in range(30)]
        h.write_segment(self.spool / name, lines)
        cfg = self.relay_config(server.url, metrics={"listen": f"127.0.0.1:{h.free_port()}"})
        relay = self.relay(cfg, start=False)
        self.assertEqual(0, relay.run_once())
        kept = [m for m in h.expected_messages("test", name, lines) if b"LogRecord" not in m[0]]
        h.assert_exactly_once(h.dump_stream(server.url, STREAM), kept)
        self.assertIn(" dropped=10 ", relay.log_text())

        # With skip_log_hook_records: false they are relayed like any other record.
        state2 = self.tmp / "state2"
        cfg2 = h.relay_config(self.spool, state2, server.url, relay_id="second",
                              subject="kumo.second.{type}",
                              policy={"skip_log_hook_records": False})
        relay2 = self.relay(cfg2, start=False, name="relay2")
        self.assertEqual(0, relay2.run_once())
        self.assertEqual(30 + 20, h.stream_count(server.url, STREAM))

    def test_segment_header_is_stripped(self):
        server = self.start_nats()
        header = "# kumod segment header v1 "
        with_header, plain = h.segment_names(2)
        lines = [record("Delivery", i) for i in range(50)]
        # kumod writes the header with no newline after it: it prefixes the first record.
        first = header.encode() + lines[0]
        h.write_segment(self.spool / with_header, [first] + lines[1:])
        h.write_segment(self.spool / plain, lines)
        relay = self.relay(self.relay_config(server.url, spool={"segment_header": header}),
                           start=False)
        self.assertEqual(0, relay.run_once())
        expected = [(d, f"test:{with_header}:{int(m.split(':')[-1]) + len(header)}")
                    for d, m in h.expected_messages("test", with_header, lines)]
        expected += h.expected_messages("test", plain, lines)
        h.assert_exactly_once(h.dump_stream(server.url, STREAM), expected)

    def test_template_lines_relay_unchanged_when_the_subject_needs_no_field(self):
        server = self.start_nats()
        name = h.segment_name()
        lines = [b"2026-11-25T10:00:00Z,Delivery,alice@example.com,250\n",
                 record("Bounce", 1),
                 b"free text line \xc3\xa9\n"]
        h.write_segment(self.spool / name, lines)
        relay = self.relay(self.relay_config(server.url, subject="kumo.{relay_id}.lines"),
                           start=False)
        self.assertEqual(0, relay.run_once())
        dump = h.dump_stream(server.url, STREAM)
        h.assert_exactly_once(dump, h.expected_messages("test", name, lines))
        self.assertEqual({"kumo.test.lines"}, {m["subject"] for m in dump})

    def test_lua_policy_sees_template_lines(self):
        server = self.start_nats()
        name = h.segment_name()
        lines = [b"csv,line,1\n", record("Delivery", 2)]
        h.write_segment(self.spool / name, lines)
        policy = self.tmp / "policy.lua"
        policy.write_text(f"""
local kumo = require 'kumo'
kumo.on('get_queue_config', function()
  return kumo.make_queue_config {{ protocol = {{ custom_lua = {{ constructor = 'make.q' }} }} }}
end)
kumo.on('make.q', function()
  local client = kumo.nats.connect {{ servers = {{ '127.0.0.1:{server.port}' }} }}
  return {{ send = function(self, message)
    local kind = message:get_meta('log_record') and 'json' or 'text'
    client:publish {{ subject = 'kumo.' .. kind, payload = message:get_data() }}
  end }}
end)
""")
        cfg = self.relay_config(server.url, policy={"script": str(policy), "subject": None})
        relay = self.relay(cfg, start=False)
        self.assertEqual(0, relay.run_once())
        dump = h.dump_stream(server.url, STREAM)
        h.assert_exactly_once(dump, h.expected_messages("test", name, lines))
        self.assertEqual(["kumo.text", "kumo.json"], [m["subject"] for m in dump])

    def test_several_spool_directories(self):
        server = self.start_nats()
        deliveries = self.tmp / "deliveries"
        deliveries.mkdir()
        tag = h.run_command(["/usr/bin/python3", "-c", f"""
h = 2166136261
for c in {str(deliveries)!r}.encode():
    h = ((h ^ c) * 16777619) & 0xffffffff
print("%08x" % h)"""]).strip()
        main_name, deliv_name = h.segment_name(), h.segment_name(suffix="_deliv")
        main_lines = h.make_records(1000, seed=80, prefix="main")
        deliv_lines = h.make_records(1000, seed=81, prefix="deliv")
        h.write_segment(self.spool / main_name, main_lines)
        # The same file name in both directories: still two segments with their own ids.
        h.write_segment(deliveries / main_name, deliv_lines[:500])
        live = h.SegmentWriter(deliveries / deliv_name, plain=True)
        self._procs.append(live)
        live.write(deliv_lines[500:])
        cfg = self.relay_config(server.url,
                                spool=None,
                                metrics={"listen": f"127.0.0.1:{h.free_port()}"})
        cfg["spool"] = [{"dir": str(self.spool)}, {"dir": str(deliveries), "pattern": "2*"}]
        relay = self.relay(cfg)
        h.wait_count(server.url, STREAM, 2000, timeout=60)
        live.close()
        self.assertEqual(0, relay.stop())
        expected = h.expected_messages("test", main_name, main_lines)
        expected += h.expected_messages(f"test:{tag}", main_name, deliv_lines[:500])
        expected += h.expected_messages(f"test:{tag}", deliv_name, deliv_lines[500:])
        h.assert_exactly_once(h.dump_stream(server.url, STREAM), expected)
        checkpoint = (self.state / "checkpoint").read_text()
        self.assertIn(f"segment {main_name} ", checkpoint)
        self.assertIn(f"segment {tag}:{main_name} ", checkpoint)
        self.assertIn(f"segment {tag}:{deliv_name} ", checkpoint)
        table = h.run_command([h.Tools.relay, "status", "-c", relay.config_path])
        self.assertIn(f"spool {self.spool}: 1 segments, 0 behind", table)
        self.assertIn(f"spool {deliveries} names {tag}: 2 segments, 0 behind", table)

    def test_jetstream_create_makes_the_missing_stream(self):
        server = self.nats()
        name = h.segment_name()
        lines = h.make_records(200, seed=90)
        h.write_segment(self.spool / name, lines)
        cfg = self.relay_config(server.url, jetstream={
            "stream": "CREATED",
            "create": {"subjects": ["kumo.>"], "duplicate_window": "1m"}})
        relay = self.relay(cfg, start=False)
        self.assertEqual(0, relay.run_once())
        self.assertIn("created the stream stream=CREATED subjects=1 replicas=1",
                      relay.log_text())
        info = h.stream_info(server.url, "CREATED")
        self.assertEqual(60.0, info["duplicate_window"])  # seconds, as streamtool reports it
        h.assert_exactly_once(h.dump_stream(server.url, "CREATED"),
                              h.expected_messages("test", name, lines))
        # A second start finds it and creates nothing.
        self.assertEqual(0, relay.run_once())
        self.assertEqual(1, relay.log_text().count("created the stream"))

    def test_two_relays_on_two_nodes_into_one_cluster(self):
        cluster = self.cluster(3)
        h.create_stream(cluster.url, STREAM, ["kumo.>"], replicas=3, dup_window=600)
        expected = []
        relays = []
        for node in ("mta1", "mta2"):
            spool, state = self.tmp / f"spool-{node}", self.tmp / f"state-{node}"
            spool.mkdir()
            names = h.segment_names(2)
            for i, name in enumerate(names):
                lines = h.make_records(1500, seed=len(node) * 10 + i, prefix=f"{node}-{i}")
                h.write_segment(spool / name, lines)
                expected += h.expected_messages(node, name, lines)
            cfg = h.relay_config(spool, state, cluster.urls, relay_id=node,
                                 subject="kumo.{relay_id}.{type}")
            relays.append(self.relay(cfg, name=f"relay-{node}"))
        h.wait_count(cluster.url, STREAM, len(expected), timeout=120)
        for relay in relays:
            self.assertEqual(0, relay.stop())
        dump = h.dump_stream(cluster.url, STREAM)
        h.assert_exactly_once(dump, expected)
        for msg in dump:
            node = msg["msgid"].split(":")[0]
            self.assertTrue(msg["subject"].startswith(f"kumo.{node}."), msg["subject"])


if __name__ == "__main__":
    import unittest
    unittest.main()
