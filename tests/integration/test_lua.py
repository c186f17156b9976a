"""Lua policies end to end: the seed document's policy byte for byte, the connection-object
shape, batches, retries, rejects, runaway scripts and load errors. Real nats-server, real
binary, zstd segments written the way kumod writes them."""

import collections
import json
import re
from pathlib import Path

import harness as h

REPO = Path(__file__).resolve().parents[2]
SEED = REPO.parent / "shared" / "seed" / "routing-messages-via-nats.txt"


def seed_policy_text():
    """The Lua of the seed document, exactly as printed there: the init/get_queue_config
    block and the make.nats block."""
    lines = SEED.read_text().splitlines(keepends=True)
    start = lines.index("kumo.on('init', function()\n")
    end = lines.index("Sending Messages via NATS\n")
    second = lines.index("-- This is a user-defined event that matches up to the custom_lua\n")
    assert lines[-1].startswith("See the NATS section"), lines[-1]
    return "".join(lines[start:end] + lines[second:-1])


def record_type(line):
    return json.loads(line)["type"]


class LuaPolicyTest(h.RelayTestCase):
    def start_nats(self, subjects, stream="KUMO"):
        server = self.nats()
        h.create_stream(server.url, stream, subjects, dup_window=600)
        return server

    def write_policy(self, text, name="policy.lua"):
        path = self.tmp / name
        path.write_text(text)
        return path

    def lua_config(self, server, policy, **overrides):
        cfg = self.relay_config(server.url, policy={"script": str(policy), "subject": None},
                                **overrides)
        return cfg

    def write_records(self, n, seed, segments=2):
        names = h.segment_names(segments)
        lines_all, expected = [], []
        for i, name in enumerate(names):
            lines = h.make_records(n // segments, seed=seed + i, prefix=f"s{i}")
            h.write_segment(self.spool / name, lines)
            lines_all += lines
            expected += h.expected_messages("test", name, lines)
        return lines_all, expected

    def test_seed_policy_unchanged_relays_every_record(self):
        text = seed_policy_text()
        self.assertEqual((REPO / "config" / "policy.lua").read_text(), text)
        server = self.start_nats(["subject"])
        self.assertIn("servers = { '127.0.0.1:4222' },", text)
        policy = self.write_policy(
            text.replace("'127.0.0.1:4222'", f"'127.0.0.1:{server.port}'"))
        _, expected = self.write_records(3000, seed=1)
        relay = self.relay(self.lua_config(server, policy), start=False)
        self.assertEqual(0, relay.run_once())
        dump = h.dump_stream(server.url, "KUMO")
        h.assert_exactly_once(dump, expected)
        self.assertEqual({"subject"}, {m["subject"] for m in dump})

    def test_connection_object_shape_routes_queues_and_drops(self):
        server = self.start_nats(["kumo.>"])
        text = (REPO / "config" / "policy-connection.lua").read_text()
        policy = self.write_policy(
            text.replace("'127.0.0.1:4222'", f"'127.0.0.1:{server.port}'"))
        lines, expected = self.write_records(4000, seed=2)
        relay = self.relay(self.lua_config(server, policy), start=False)
        self.assertEqual(0, relay.run_once())
        kept = [(d, m) for d, m in expected if record_type(d) != "Reception"]
        dropped = len(expected) - len(kept)
        self.assertGreater(dropped, 0)
        dump = h.dump_stream(server.url, "KUMO")
        h.assert_exactly_once(dump, kept)
        for msg in dump:
            t = record_type(msg["data"])
            queue = "bounces" if t in ("Bounce", "TransientFailure") else "events"
            self.assertEqual(f"kumo.{queue}.{t}", msg["subject"])
        self.assertIn(f" dropped={dropped} ", relay.log_text())
        self.assertRegex(relay.log_text(), r"info [^ ]*policy\.lua:12: policy loaded")

    def test_send_batch_with_batch_size_100(self):
        server = self.start_nats(["kumo.batch"])
        policy = self.write_policy(f"""
local kumo = require 'kumo'
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ custom_lua = {{ constructor = 'make.batch', batch_size = 100,
                                 min_batch_size = 100, max_batch_latency = '200ms' }} }},
  }}
end)
kumo.on('make.batch', function(domain, tenant, campaign)
  local client = kumo.nats.connect {{ servers = {{ '127.0.0.1:{server.port}' }} }}
  return {{
    send_batch = function(self, messages)
      batches = (batches or 0) + 1
      kumo.log_info('batch ' .. batches .. ' of ' .. #messages)
      for _, m in ipairs(messages) do
        client:publish {{ subject = 'kumo.batch', payload = m:get_data() }}
      end
    end,
  }}
end)
""")
        _, expected = self.write_records(1050, seed=3, segments=3)
        relay = self.relay(self.lua_config(server, policy), start=False)
        self.assertEqual(0, relay.run_once())
        h.assert_exactly_once(h.dump_stream(server.url, "KUMO"), expected)
        sizes = [int(n) for n in re.findall(r"batch \d+ of (\d+)", relay.log_text())]
        self.assertEqual(1050, sum(sizes))
        self.assertTrue(all(0 < s <= 100 for s in sizes), sizes)
        self.assertGreaterEqual(sizes.count(100), 10, sizes)

    def retry_policy(self, server, body, retry_interval="100ms"):
        return self.write_policy(f"""
local kumo = require 'kumo'
attempts = {{}}
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ custom_lua = {{ constructor = 'make.q' }} }},
    retry_interval = '{retry_interval}',
  }}
end)
kumo.on('make.q', function(domain, tenant, campaign)
  local client = kumo.nats.connect {{ servers = {{ '127.0.0.1:{server.port}' }} }}
  return {{
    send = function(self, message)
      local id = message:id()
      attempts[id] = (attempts[id] or 0) + 1
      local record = message:get_meta('log_record')
{body}
      client:publish {{ subject = 'kumo.q', payload = message:get_data() }}
    end,
  }}
end)
""")

    def test_reject_451_is_retried_until_it_succeeds(self):
        server = self.start_nats(["kumo.q"])
        policy = self.retry_policy(server, """
      kumo.log_info('attempt ' .. attempts[id] .. ' num_attempts ' .. message:num_attempts()
                    .. ' id ' .. id)
      if attempts[id] < 3 then
        kumo.reject(451, 'not yet')
      end""")
        _, expected = self.write_records(6, seed=4, segments=1)
        relay = self.relay(self.lua_config(server, policy), start=False)
        self.assertEqual(0, relay.run_once())
        h.assert_exactly_once(h.dump_stream(server.url, "KUMO"), expected)
        log = relay.log_text()
        for attempt in (1, 2, 3):
            ids = re.findall(rf"attempt {attempt} num_attempts {attempt - 1} id (\w+)", log)
            self.assertEqual(6, len(set(ids)), log)
        self.assertNotIn("attempt 4", log)
        self.assertFalse((self.state / "deadletter" / "deadletter.jsonl").read_text())

    def test_reject_550_is_dead_lettered(self):
        server = self.start_nats(["kumo.q"])
        policy = self.retry_policy(server, """
      if record.type == 'Bounce' then
        kumo.reject(550, 'no bounces here')
      end""")
        lines, expected = self.write_records(400, seed=5, segments=1)
        relay = self.relay(self.lua_config(server, policy), start=False)
        self.assertEqual(0, relay.run_once())
        kept = [(d, m) for d, m in expected if record_type(d) != "Bounce"]
        bounces = [d for d, _ in expected if record_type(d) == "Bounce"]
        self.assertGreater(len(bounces), 0)
        h.assert_exactly_once(h.dump_stream(server.url, "KUMO"), kept)
        dead = [json.loads(x) for x in
                (self.state / "deadletter" / "deadletter.jsonl").read_text().splitlines()]
        self.assertEqual([b.decode() for b in bounces], [d["line"] for d in dead])
        self.assertEqual({"rejected: 550 no bounces here"}, {d["reason"] for d in dead})

    def test_lua_error_is_retried_and_logged_once_with_file_line(self):
        server = self.start_nats(["kumo.q"])
        policy = self.retry_policy(server, """
      if attempts[id] == 1 then
        error('boom')
      end""")
        _, expected = self.write_records(20, seed=6, segments=1)
        relay = self.relay(self.lua_config(server, policy), start=False)
        self.assertEqual(0, relay.run_once())
        h.assert_exactly_once(h.dump_stream(server.url, "KUMO"), expected)
        warns = [line for line in relay.log_text().splitlines()
                 if " warn " in line and "boom" in line]
        self.assertEqual(1, len(warns), warns)
        line = policy.read_text().splitlines().index("        error('boom')") + 1
        self.assertIn(f'error="policy.lua:{line}: boom"', warns[0])
        # Every error is counted (kumo_nats_relay_policy_errors_total), once per record here.
        self.assertIn(" policy_errors=20", relay.log_text().splitlines()[-1])

    def test_runaway_loop_hits_the_instruction_budget_and_the_relay_goes_on(self):
        server = self.start_nats(["kumo.q"])
        policy = self.retry_policy(server, """
      if attempts[id] == 1 and record.type == 'Delivery' then
        while true do end
      end""")
        _, expected = self.write_records(60, seed=7, segments=1)
        relay = self.relay(self.lua_config(server, policy), start=False)
        self.assertEqual(0, relay.run_once(timeout=300))
        h.assert_exactly_once(h.dump_stream(server.url, "KUMO"), expected)
        self.assertIn("instruction budget of 100000000 exceeded in the 'send' event",
                      relay.log_text())

    def test_await_ack_table_reads_the_ack(self):
        server = self.start_nats(["kumo.q"])
        policy = self.retry_policy(server, """
      local ack = client:publish { subject = 'kumo.q', payload = message:get_data(),
                                   await_ack = true }
      kumo.log_info('ack stream=' .. ack.stream .. ' sequence=' .. ack.sequence
                    .. ' duplicate=' .. tostring(ack.duplicate) .. ' id=' .. id)
      do return 'published' end""")
        _, expected = self.write_records(20, seed=8, segments=1)
        relay = self.relay(self.lua_config(server, policy), start=False)
        self.assertEqual(0, relay.run_once())
        h.assert_exactly_once(h.dump_stream(server.url, "KUMO"), expected)
        seqs = [int(x) for x in re.findall(r"ack stream=KUMO sequence=(\d+) duplicate=false",
                                           relay.log_text())]
        self.assertEqual(list(range(1, 21)), seqs)

    def test_syntax_error_fails_check_with_file_and_line(self):
        server = self.start_nats(["kumo.q"])
        policy = self.write_policy("local kumo = require 'kumo'\nlocal x = = 1\n")
        relay = self.relay(self.lua_config(server, policy), start=False)
        rc, out = relay.check()
        self.assertEqual(78, rc)  # EX_CONFIG
        self.assertIn(f"relay.yaml: policy.script {policy}: policy.lua:2: unexpected symbol "
                      "near '='", out)

    def test_event_registered_twice_names_both_places(self):
        server = self.start_nats(["kumo.q"])
        policy = self.write_policy("local kumo = require 'kumo'\n"
                                   "kumo.on('init', function() end)\n"
                                   "\n"
                                   "kumo.on('init', function() end)\n")
        relay = self.relay(self.lua_config(server, policy), start=False)
        rc, out = relay.check()
        self.assertEqual(78, rc)  # EX_CONFIG
        self.assertIn("policy.lua:4: init event already has a handler defined at policy.lua:2\n",
                      out)

    def test_check_runs_init_without_connecting(self):
        policy = self.write_policy((REPO / "config" / "policy.lua").read_text())
        # No server on this port: --check must not try to reach it.
        cfg = self.relay_config("nats://127.0.0.1:1", policy={"script": str(policy),
                                                               "subject": None})
        relay = self.relay(cfg, start=False)
        rc, out = relay.check()
        self.assertEqual(0, rc, out)
        self.assertIn("configuration OK", out)


if __name__ == "__main__":
    import unittest
    unittest.main()
