"""kumod's publish and connection semantics (issue 14 items 1, 4, 5 and the max_age dead
letter): publish waits for the ack by default without stopping the relay, publish errors
reach Lua, a failed send rebuilds the connection object, and a dead letter after max_age
names the last error. Each test names the kumod source it mirrors. Real nats-server, real
binary."""

import json
import re
import socket
import time

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


# KumoMTA's integration-test publisher (its NATS test policy): send returns a string
# built from the ack, so it needs publish to wait for the ack and return its fields.
KUMO_TEST_SEND = """
kumo.on('make.q', function(domain, tenant, campaign)
  local client = kumo.nats.connect { servers = { '127.0.0.1:PORT' }, name = 'kumo-test' }
  return {
    send = function(self, message)
      local ret = client:publish { subject = 'kumo.q', payload = message:get_data() }
      kumo.log_info('ack stream=' .. ret.stream .. ' sequence=' .. ret.sequence
                    .. ' duplicate=' .. tostring(ret.duplicate) .. ' domain=[' .. ret.domain
                    .. '] value=[' .. ret.value .. ']')
      return 'stored at ' .. ret.sequence
    end,
    close = function(self) client:close() end,
  }
end)
"""

# Bounces go to a subject whose acknowledgement is slow in coming; the rest to one a
# stream serves at once.
TWO_SUBJECTS = """
kumo.on('make.q', function(domain, tenant, campaign)
  local client = kumo.nats.connect { servers = { '127.0.0.1:PORT' } }
  return {
    send = function(self, message)
      local record = message:get_meta('log_record')
      local subject = record.type == 'Bounce' and 'kumo.slow' or 'kumo.q'
      local ret = client:publish { subject = subject, payload = message:get_data() }
      kumo.log_info('stored ' .. subject .. ' ' .. ret.sequence)
      return subject .. ' ' .. ret.sequence
    end,
  }
end)
"""


class SilentSubscriber:
    """A core NATS subscriber on a subject that never answers: a JetStream publish there
    gets no acknowledgement (and no "no responders") until a stream takes the subject."""

    def __init__(self, server, subject):
        self.sock = socket.create_connection(("127.0.0.1", server.port), timeout=5)
        self.sock.recv(4096)  # INFO
        self.sock.sendall(b'CONNECT {"verbose":false,"pedantic":false}\r\n'
                          + f"SUB {subject} 1\r\nPING\r\n".encode())
        buf = b""
        while b"PONG" not in buf:
            buf += self.sock.recv(4096)

    def close(self):
        self.sock.close()


def record_type(line):
    return json.loads(line)["type"]


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

    # -- items 1 and 4: publish waits for the ack, as a coroutine ---------------------

    def test_kumo_integration_test_send_relays_every_record_once(self):
        # crates/mod-nats/src/lib.rs: await_ack defaults to true and publish returns the
        # PublishAck {stream, sequence, duplicate, domain, value} (strings "" when empty);
        # KumoMTA's NATS integration test concatenates ret.sequence.
        server = self.start_nats(["kumo.q"])
        policy = self.write_policy(server, KUMO_TEST_SEND)
        expected = self.write_records(40, seed=3, segments=2)
        relay = self.relay(self.lua_config(server, policy), start=False)
        self.assertEqual(0, relay.run_once(timeout=60), relay.log_text())
        dump = h.dump_stream(server.url, "KUMO")
        h.assert_exactly_once(dump, expected)
        acks = re.findall(r"ack stream=(\w+) sequence=(\d+) duplicate=(\w+) domain=\[\] "
                          r"value=\[\]", relay.log_text())
        self.assertEqual(40, len(acks), relay.log_text())
        self.assertEqual({("KUMO", "false")}, {(s, d) for s, _, d in acks})
        self.assertEqual(sorted(m["seq"] for m in dump), sorted(int(q) for _, q, _ in acks))
        self.assertNotIn("lua error", relay.log_text())

    def test_publish_error_is_raised_in_lua_and_pcall_sees_it(self):
        # crates/mod-nats/src/lib.rs: the ack future's error (async_nats: no responders)
        # is the publish call's Lua error, so pcall catches it and the policy decides.
        server = self.start_nats(["kumo.q"])
        policy = self.write_policy(server, """
kumo.on('make.q', function(domain, tenant, campaign)
  local client = kumo.nats.connect { servers = { '127.0.0.1:PORT' } }
  return {
    send = function(self, message)
      local ok, err = pcall(client.publish, client,
                            { subject = 'nostream.x', payload = message:get_data() })
      if not ok then
        kumo.reject(550, 'no stream: ' .. tostring(err))
      end
    end,
  }
end)
""")
        lines = h.make_records(5, seed=4)
        h.write_segment(self.spool / h.segment_names(1)[0], lines)
        relay = self.relay(self.lua_config(server, policy), start=False)
        self.assertEqual(0, relay.run_once(timeout=60), relay.log_text())
        dead = self.dead_letters()
        self.assertEqual([x.decode() for x in lines], [d["line"] for d in dead])
        self.assertEqual({"rejected: 550 no stream: publish: no responders (no stream listens "
                          "on the subject)"}, {d["reason"] for d in dead})

    def start_two_subjects(self, n, seed, **config):
        server = self.start_nats(["kumo.q"])
        policy = self.write_policy(server, TWO_SUBJECTS)
        silent = SilentSubscriber(server, "kumo.slow")
        self.addCleanup(silent.close)
        expected = self.write_records(n, seed=seed)
        fast = [(d, m) for d, m in expected if record_type(d) != "Bounce"]
        slow = [(d, m) for d, m in expected if record_type(d) == "Bounce"]
        self.assertGreater(len(slow), 0)
        cfg = self.lua_config(server, policy, jetstream={"ack_timeout": "1s"}, **config)
        return server, silent, cfg, fast, slow

    def test_other_records_flow_while_an_ack_is_awaited(self):
        # The hook waits in publish as kumod's async send does (lua_deliver.rs awaits the
        # send future): the loop resumes it when the ack comes, other records go on.
        server, silent, cfg, fast, slow = self.start_two_subjects(200, seed=5)
        relay = self.relay(cfg)
        h.wait_count(server.url, "KUMO", len(fast), timeout=30)
        h.assert_exactly_once(h.dump_stream(server.url, "KUMO"), fast)

        def stored(subject):
            return [int(x) for x in re.findall(rf"stored {subject} (\d+)", relay.log_text())]
        # Every fast record's hook has its ack while the slow ones still wait.
        h.poll(lambda: len(stored("kumo.q")) == len(fast), 10, "the fast hooks' acks")
        self.assertEqual(list(range(1, len(fast) + 1)), sorted(stored("kumo.q")))
        self.assertEqual([], stored("kumo.slow"))
        # The slow records wait, parked; once a stream takes their subject the resent
        # publishes are acknowledged and their hooks finish.
        silent.close()
        h.create_stream(server.url, "SLOW", ["kumo.slow"], dup_window=600)
        h.wait_count(server.url, "SLOW", len(slow), timeout=30)
        h.poll(lambda: len(stored("kumo.slow")) == len(slow), 10, "the slow hooks' acks")
        self.assertEqual(list(range(1, len(slow) + 1)), sorted(stored("kumo.slow")))
        self.assertNotIn("lua error", relay.log_text())
        self.assertEqual(0, relay.stop())
        h.assert_exactly_once(h.dump_stream(server.url, "KUMO"), fast)
        h.assert_exactly_once(h.dump_stream(server.url, "SLOW"), slow)

    def test_sigterm_with_parked_hooks_exits_in_time_and_a_rerun_relays_once(self):
        # Parked hooks whose ack does not come are abandoned after shutdown_timeout, their
        # records not committed: the next run sends them again.
        server, silent, cfg, fast, slow = self.start_two_subjects(200, seed=6,
                                                                  shutdown_timeout="2s")
        relay = self.relay(cfg)
        h.wait_count(server.url, "KUMO", len(fast), timeout=30)
        started = time.monotonic()
        relay.stop(timeout=10)
        self.assertLess(time.monotonic() - started, 2 + 3)
        silent.close()
        h.create_stream(server.url, "SLOW", ["kumo.slow"], dup_window=600)
        rerun = self.relay(cfg, start=False, name="rerun")
        self.assertEqual(0, rerun.run_once(timeout=60), rerun.log_text())
        h.assert_exactly_once(h.dump_stream(server.url, "KUMO"), fast)
        h.assert_exactly_once(h.dump_stream(server.url, "SLOW"), slow)

    # -- lazy await: a hook that never reads the ack table is not parked ----------------

    def parks(self, relay):
        return relay.log_text().count("lua hook parked for an ack")

    def test_seed_shape_returns_before_its_ack_and_is_never_parked(self):
        # config/policy.lua's shape: the constructor publishes with the global `message`
        # and never reads the result. The hook returns at once (no parked coroutine); its
        # record stays held until the ack and is relayed exactly once.
        server = self.start_nats(["kumo.q"])
        policy = self.write_policy(server, """
nats = kumo.nats.connect { servers = { '127.0.0.1:PORT' } }
returned = 0
kumo.on('make.q', function(domain, tenant, campaign)
  nats:publish { subject = 'kumo.slow', payload = message:get_data() }
  returned = returned + 1
  kumo.log_info('returned ' .. returned)
end)
""")
        silent = SilentSubscriber(server, "kumo.slow")
        self.addCleanup(silent.close)
        expected = self.write_records(60, seed=7)
        relay = self.relay(self.lua_config(server, policy, jetstream={"ack_timeout": "1s"}))
        # Every hook has returned although no ack has come (nothing is stored yet).
        h.poll(lambda: "returned 60" in relay.log_text(), 20, "every hook to return")
        # The stream first: a publish in between would meet no responders.
        h.create_stream(server.url, "SLOW", ["kumo.slow"], dup_window=600)
        silent.close()
        h.wait_count(server.url, "SLOW", len(expected), timeout=30)
        self.assertEqual(0, relay.stop())
        h.assert_exactly_once(h.dump_stream(server.url, "SLOW"), expected)
        self.assertEqual(0, self.parks(relay), relay.log_text())
        self.assertNotIn("lua error", relay.log_text())
        self.assertNotIn("returned 61", relay.log_text())  # no hook ran twice

    def test_reading_a_lazy_result_waits_for_its_own_ack(self):
        # Reading ret.sequence parks the hook until that publish's ack (kumod's await):
        # several publishes in one hook, lazy and eager (under pcall), each get their own.
        server = self.start_nats(["kumo.q", "kumo.copy", "kumo.third"])
        policy = self.write_policy(server, """
kumo.on('make.q', function(domain, tenant, campaign)
  local client = kumo.nats.connect { servers = { '127.0.0.1:PORT' } }
  return {
    send = function(self, message)
      local data = message:get_data()
      local first = client:publish { subject = 'kumo.q', payload = data }
      local keys = {}
      for k in pairs(first) do keys[#keys + 1] = k end
      table.sort(keys)
      kumo.log_info('keys ' .. table.concat(keys, ','))
      local a = first.sequence
      local second = client:publish { subject = 'kumo.copy', payload = data }
      kumo.log_info('json ' .. kumo.serde.json_encode(second))
      local ok, third = pcall(client.publish, client, { subject = 'kumo.third', payload = data })
      assert(ok, third)
      kumo.log_info('seqs ' .. a .. ' ' .. second.sequence .. ' ' .. third.sequence
                    .. ' ' .. second.stream)
    end,
  }
end)
""")
        expected = self.write_records(30, seed=8)
        relay = self.relay(self.lua_config(server, policy), start=False)
        self.assertEqual(0, relay.run_once(timeout=60), relay.log_text())
        dump = h.dump_stream(server.url, "KUMO")
        by_seq = {m["seq"]: m for m in dump}
        h.assert_exactly_once([m for m in dump if m["subject"] == "kumo.q"], expected)
        seqs = re.findall(r"seqs (\d+) (\d+) (\d+) (\w+)", relay.log_text())
        self.assertEqual(len(expected), len(seqs), relay.log_text())
        self.assertEqual(3 * len(expected), len(dump))
        for a, b, c, stream in seqs:
            self.assertEqual("KUMO", stream)
            msgs = [by_seq[int(a)], by_seq[int(b)], by_seq[int(c)]]
            self.assertEqual(["kumo.q", "kumo.copy", "kumo.third"], [m["subject"] for m in msgs])
            self.assertEqual(1, len({m["data"] for m in msgs}))
        # json_encode waits (polling) for the ack it encodes.
        self.assertEqual(sorted(f'{{"domain":"","duplicate":false,"sequence":{b},'
                                f'"stream":"KUMO","value":""}}' for _, b, _, _ in seqs),
                         sorted(re.findall(r"json (\S*)", relay.log_text())))
        # pairs waits too, and sees kumod's fields only.
        self.assertEqual(["domain,duplicate,sequence,stream,value"] * len(expected),
                         re.findall(r"keys (\S*)", relay.log_text()))
        # Each hook parked at least for the first read and for the publish under pcall.
        self.assertGreaterEqual(self.parks(relay), 2 * len(expected))
        self.assertNotIn("lua error", relay.log_text())

    def test_a_table_from_before_a_park_parks_again_when_read(self):
        # A hook's lazy publishes stay its own across a park: reading, after the hook was
        # resumed, a table it had before parking parks it again, as the first read did.
        # Polling instead would stop the relay until that ack: the other records' hooks
        # could not run meanwhile.
        server = self.start_nats(["kumo.q"])
        policy = self.write_policy(server, """
kumo.on('make.q', function(domain, tenant, campaign)
  local client = kumo.nats.connect { servers = { '127.0.0.1:PORT' } }
  return {
    send = function(self, message)
      local data = message:get_data()
      local late = client:publish { subject = 'kumo.slow', payload = data }
      local now = client:publish { subject = 'kumo.q', payload = data }
      kumo.log_info('first ' .. now.sequence)
      kumo.log_info('late ' .. late.sequence .. ' ' .. late.stream)
    end,
  }
end)
""")
        silent = SilentSubscriber(server, "kumo.slow")
        self.addCleanup(silent.close)
        expected = self.write_records(10, seed=12)
        relay = self.relay(self.lua_config(server, policy, jetstream={"ack_timeout": "1s"}))
        # Every hook got past its first read while kumo.slow acknowledges nothing.
        h.poll(lambda: relay.log_text().count("first ") == len(expected), 20,
               "every hook's first read")
        self.assertNotIn("late ", relay.log_text())
        h.create_stream(server.url, "SLOW", ["kumo.slow"], dup_window=600)
        silent.close()
        h.wait_count(server.url, "SLOW", len(expected), timeout=30)
        h.poll(lambda: relay.log_text().count("late ") == len(expected), 20, "every late read")
        self.assertEqual(0, relay.stop())
        h.assert_exactly_once(h.dump_stream(server.url, "SLOW"), expected)
        h.assert_exactly_once(h.dump_stream(server.url, "KUMO"),
                              [(data, msgid + ":1") for data, msgid in expected])
        self.assertEqual(len(expected), relay.log_text().count(" SLOW\n"), relay.log_text())
        self.assertEqual(2 * len(expected), self.parks(relay), relay.log_text())
        self.assertNotIn("lua error", relay.log_text())

    def test_error_ack_after_the_hook_returned_retries_the_record(self):
        # The hook returned before JetStream refused its publish: the record is retried as
        # if publish had raised in the hook (kumod: the send fails, lua_deliver.rs closes
        # the connection and constructs a new one); a stream created later takes it once.
        server = self.start_nats(["kumo.q"])
        policy = self.write_policy(server, """
constructed = 0
kumo.on('make.q', function(domain, tenant, campaign)
  constructed = constructed + 1
  kumo.log_info('constructor ' .. constructed)
  local client = kumo.nats.connect { servers = { '127.0.0.1:PORT' } }
  return {
    send = function(self, message)
      client:publish { subject = 'late.x', payload = message:get_data() }
      return 'sent'
    end,
  }
end)
""")
        expected = self.write_records(20, seed=9)
        relay = self.relay(self.lua_config(server, policy))
        h.poll(lambda: "lua error in the 'send' event, the record will be retried "
               "error=\"publish: no responders" in relay.log_text(), 20, "the error ack")
        h.poll(lambda: "constructor 2" in relay.log_text(), 20, "a new connection object")
        h.create_stream(server.url, "LATE", ["late.x"], dup_window=600)
        h.wait_count(server.url, "LATE", len(expected), timeout=30)
        self.assertEqual(0, relay.stop())
        h.assert_exactly_once(h.dump_stream(server.url, "LATE"), expected)
        self.assertEqual(0, self.parks(relay), relay.log_text())
