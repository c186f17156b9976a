"""kumod's publish and connection semantics (issue 14 items 1, 4, 5 and the max_age dead
letter): publish waits for the ack by default without stopping the relay, publish errors
reach Lua, a failed send rebuilds the connection object, and a dead letter after max_age
names the last error. Each test names the kumod source it mirrors. Real nats-server, real
binary."""

import json
import re

import harness as h

HEADER = """
local kumo = require 'kumo'
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    protocol = { custom_lua = { constructor = 'make.q' } },
    retry_interval = '100ms',
    max_retry_interval = '200ms',
    MAX_AGE
  }
end)
"""


class KumodAwaitTest(h.RelayTestCase):
    def start_nats(self, subjects, stream="KUMO"):
        server = self.nats()
        h.create_stream(server.url, stream, subjects, dup_window=600)
        return server

    def write_policy(self, server, body, max_age=""):
        text = HEADER.replace("MAX_AGE", max_age) + body
        path = self.tmp / "policy.lua"
        path.write_text(text.replace("PORT", str(server.port)))
        return path

    def lua_config(self, server, policy, **extra):
        return self.relay_config(server.url, policy={"script": str(policy), "subject": None},
                                 **extra)

    def write_records(self, n, seed, segments=1):
        expected = []
        for i, name in enumerate(h.segment_names(segments)):
            lines = h.make_records(n // segments, seed=seed + i, prefix=f"s{i}")
            h.write_segment(self.spool / name, lines)
            expected += h.expected_messages("test", name, lines)
        return expected

    def dead_letters(self):
        path = self.state / "deadletter" / "deadletter.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    # -- item 5: connection objects are rebuilt ----------------------------------------

    def test_failed_send_closes_the_connection_and_constructs_a_new_one(self):
        # crates/kumod/src/lua_deliver.rs: a send that raises a Lua error, or a 421, makes
        # the dispatcher close the connection (its close()) and build a new one with the
        # constructor for the next message.
        server = self.start_nats(["kumo.q"])
        policy = self.write_policy(server, """
constructed, closed, sends = 0, 0, 0
kumo.on('make.q', function(domain, tenant, campaign)
  constructed = constructed + 1
  kumo.log_info('constructor ' .. constructed)
  local client = kumo.nats.connect { servers = { '127.0.0.1:PORT' } }
  local generation = constructed
  return {
    send = function(self, message)
      sends = sends + 1
      if sends == 3 then error('stale connection ' .. generation) end
      if sends == 6 then kumo.reject(421, 'go away') end
      client:publish { subject = 'kumo.q', payload = message:get_data() }
    end,
    close = function(self)
      closed = closed + 1
      kumo.log_info('close ' .. closed .. ' of connection ' .. generation)
      client:close()
    end,
  }
end)
""")
        expected = self.write_records(10, seed=1)
        relay = self.relay(self.lua_config(server, policy), start=False)
        self.assertEqual(0, relay.run_once(), relay.log_text())
        h.assert_exactly_once(h.dump_stream(server.url, "KUMO"), expected)
        events = re.findall(r"(constructor \d+|close \d+ of connection \d+)", relay.log_text())
        self.assertEqual(["constructor 1", "close 1 of connection 1", "constructor 2",
                          "close 2 of connection 2", "constructor 3",
                          "close 3 of connection 3"], events)

    # -- a dead letter after max_age carries the last error ----------------------------

    def test_max_age_dead_letter_names_the_last_error(self):
        # crates/kumod/src/queue: a message that expires is logged as an Expiration with
        # the last delivery failure; the relay's dead letter says the same.
        server = self.start_nats(["kumo.q"])
        policy = self.write_policy(server, """
kumo.on('make.q', function(domain, tenant, campaign)
  return {
    send = function(self, message)
      error('backend down')
    end,
  }
end)
""", max_age="max_age = '1s',")
        self.write_records(3, seed=2)
        relay = self.relay(self.lua_config(server, policy), start=False)
        self.assertEqual(0, relay.run_once(), relay.log_text())
        dead = self.dead_letters()
        self.assertEqual(3, len(dead), relay.log_text())
        line = policy.read_text().splitlines().index("      error('backend down')") + 1
        self.assertEqual({f"max_age exceeded; last error: policy.lua:{line}: backend down"},
                         {d["reason"] for d in dead})
