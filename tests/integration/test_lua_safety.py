"""A hostile or broken Lua policy must not take the relay down: bytecode is refused, a hook
stuck in C code shows on /healthz and cannot block SIGTERM, a record the policy hangs on
twice in a row is dead-lettered, and TERM cuts a runaway Lua loop short. Real
nats-server, real binary, zstd segments written the way kumod writes them."""

import json
import time

import harness as h

POISON_REASON = "poison record: the policy did not return"
# Backtracks for ever, inside string.find's C code: the instruction budget never fires.
HANG_IN_C = "string.rep('a', 3000):find('.-.-.-.-.-b')"
# string.dump's output with its LOADK made to read constant 131071 of 1: loading it is
# fine for Lua's undump, running it reads far out of bounds (a segfault before the fix).
BAD_BYTECODE = r"""
local dumped = string.dump(function() return 'abc' end)
local at = dumped:find('\3\0\0\0', 1, true)
local bad = dumped:sub(1, at - 1) .. '\3\128\255\255' .. dumped:sub(at + 4)
"""
BYTECODE_ERROR = "binary chunks cannot be loaded: a policy loads Lua source only"


http_get = h.http_get


def policy_text(port, send_body, prelude=""):
    """Every record through one queue whose send(self, message) runs send_body, then
    publishes the record to kumo.q."""
    return f"""
local kumo = require 'kumo'
{prelude}
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ custom_lua = {{ constructor = 'make.q' }} }},
    retry_interval = '100ms',
  }}
end)
kumo.on('make.q', function(domain, tenant, campaign)
  local client = kumo.nats.connect {{ servers = {{ '127.0.0.1:{port}' }} }}
  return {{
    send = function(self, message)
{send_body}
      client:publish {{ subject = 'kumo.q', payload = message:get_data() }}
    end,
  }}
end)
"""


def seq_of(line):
    return json.loads(line)["meta"]["knr_seq"]


class LuaSafetyTest(h.RelayTestCase):
    def setUp(self):
        super().setUp()
        self.server = self.nats()
        h.create_stream(self.server.url, "KUMO", ["kumo.q"], dup_window=600)
        self.metrics_port = h.free_port()
        self.base = f"http://127.0.0.1:{self.metrics_port}"

    def write_policy(self, text):
        path = self.tmp / "policy.lua"
        path.write_text(text)
        return path

    def config(self, policy, **overrides):
        return self.relay_config(self.server.url, policy={"script": str(policy), "subject": None},
                                 metrics={"listen": f"127.0.0.1:{self.metrics_port}"},
                                 **overrides)

    def write_records(self, n, prefix="p"):
        name = h.segment_names(1)[0]
        lines = h.make_records(n, seed=11, prefix=prefix)
        h.write_segment(self.spool / name, lines)
        return lines, h.expected_messages("test", name, lines)

    def deadletters(self):
        path = self.state / "deadletter" / "deadletter.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def hang_on(self, line):
        """send_body that hangs in C on the record `line`, and only on it."""
        return f"""
      if message:get_data():find('"knr_seq":"{seq_of(line)}"', 1, true) then
        {HANG_IN_C}
      end"""

    def wait_stuck(self, relay):
        return h.poll(lambda: (lambda s, b: s == 503 and "has been running" in b and b)(
            *http_get(self.base + "/healthz")), 30, "/healthz 503 for the stuck hook",
            ignore=(OSError,))

    def wait_exit(self, relay, timeout):
        """Seconds until the relay exits (polled), and its exit code."""
        start = time.monotonic()
        h.poll(lambda: not relay.running, timeout, "the relay to exit")
        return time.monotonic() - start, relay.proc.returncode

    # ---- bytecode ----

    def test_bytecode_in_a_hook_is_a_lua_error_and_the_record_is_retried(self):
        policy = self.write_policy(policy_text(self.server.port, f"""
      attempts = attempts or {{}}
      local id = message:id()
      attempts[id] = (attempts[id] or 0) + 1
      if attempts[id] == 1 then
        {BAD_BYTECODE}
        local chunk = assert(load(bad, 'x', 'b'))
        chunk()
      end"""))
        _, expected = self.write_records(30)
        relay = self.relay(self.config(policy), start=False)
        self.assertEqual(0, relay.run_once())
        h.assert_exactly_once(h.dump_stream(self.server.url, "KUMO"), expected)
        self.assertIn(f'lua error in the \'send\' event, the record will be retried error="'
                      f'policy.lua:', relay.log_text())
        self.assertIn(BYTECODE_ERROR, relay.log_text())
        self.assertEqual([], self.deadletters())

    def test_check_with_bytecode_at_top_level_fails_with_a_clear_error(self):
        policy = self.write_policy(policy_text(self.server.port, "", prelude=BAD_BYTECODE + """
local chunk = assert(load(bad, 'x', 'b'))
chunk()
"""))
        relay = self.relay(self.config(policy), start=False)
        rc, out = relay.check()
        self.assertEqual(78, rc, out)  # a configuration error (relay/exit_codes.h)
        line = policy.read_text().splitlines().index(
            "local chunk = assert(load(bad, 'x', 'b'))") + 1
        self.assertIn(f"policy.script {policy}: policy.lua:{line}: {BYTECODE_ERROR}\n", out)

    def test_loadfile_dofile_require_refuse_bytecode_and_c_loading_is_gone(self):
        luac = self.tmp / "mod.lua"
        policy = self.write_policy(policy_text(self.server.port, "", prelude=f"""
local f = io.open('{luac}', 'wb')
f:write(string.dump(function() return 42 end))
f:close()
local chunk, err = loadfile('{luac}')
kumo.log_info('loadfile: ' .. tostring(chunk) .. ' ' .. err)
kumo.log_info('dofile: ' .. select(2, pcall(dofile, '{luac}')))
kumo.log_info('require: ' .. select(2, pcall(require, 'mod')))
kumo.log_info('debug=' .. tostring(debug) .. ' loadlib=' .. tostring(package.loadlib)
              .. ' searchers=' .. #package.searchers)
kumo.log_info('text: ' .. load('return 1 + 1', 'x', 'b')())
"""))
        relay = self.relay(self.config(policy), start=False)
        rc, out = relay.check()
        self.assertEqual(0, rc, out)
        self.assertIn("loadfile: nil attempt to load a binary chunk (mode is 't')", out)
        self.assertIn("dofile: attempt to load a binary chunk (mode is 't')", out)
        # The log escapes the newline and tab of Lua's message (relay/log.c).
        self.assertIn(f"require: error loading module 'mod' from file '{luac}':\\n"
                      "\\tattempt to load a binary chunk (mode is 't')", out)
        self.assertIn("debug=nil loadlib=nil searchers=2", out)
        self.assertIn("text: 2", out)

    # ---- a hook stuck in C ----

    def test_term_stops_a_hook_stuck_in_c_within_shutdown_timeout(self):
        lines, expected = self.write_records(40)
        stuck_policy = policy_text(self.server.port, self.hang_on(lines[20]))
        policy = self.write_policy(stuck_policy)
        relay = self.relay(self.config(policy, shutdown_timeout="2s"))
        body = self.wait_stuck(relay)
        self.assertRegex(body, r"^policy hook 'send' has been running for \d+s \(segment=\S+ "
                         r"offset=\d+\)\n$")
        self.assertIn("policy hook has not returned, /healthz answers 503 until it does "
                      "event=send", relay.log_text())
        checkpoint = (self.state / "checkpoint").read_bytes()
        relay.proc.terminate()
        took, rc = self.wait_exit(relay, 10)
        self.assertLess(took, 2 + 1.5, relay.log_tail())
        self.assertEqual(1, rc)
        self.assertIn("policy hook did not return within shutdown_timeout of the stop, exiting "
                      "now", relay.log_text())
        self.assertEqual(checkpoint, (self.state / "checkpoint").read_bytes())
        # The policy fixed: every record exactly once, nothing dead-lettered.
        policy.write_text(policy_text(self.server.port, ""))
        self.assertEqual(0, relay.run_once())
        h.assert_exactly_once(h.dump_stream(self.server.url, "KUMO"), expected)
        self.assertEqual([], self.deadletters())

    def test_record_the_policy_hangs_on_twice_is_dead_lettered_as_poison(self):
        _, expected = self.write_records(60)
        target = expected[25][0]
        policy = self.write_policy(policy_text(self.server.port, self.hang_on(target)))
        relay = self.relay(self.config(policy), start=False)
        for run in (1, 2):
            relay.start()
            self.wait_stuck(relay)
            relay.kill()
            self.assertEqual([], self.deadletters(), f"run {run}")
        self.assertIn("deaths_in_a_row=1 action=\"try it again\"", relay.log_text())
        # Third start, same policy: the record is dead-lettered, the rest relayed.
        self.assertEqual(0, relay.run_once())
        self.assertIn("deaths_in_a_row=2 action=\"dead-letter it\"", relay.log_text())
        dead = self.deadletters()
        self.assertEqual([(target.decode(), POISON_REASON)],
                         [(d["line"], d["reason"]) for d in dead])
        kept = [(d, m) for d, m in expected if d != target]
        h.assert_exactly_once(h.dump_stream(self.server.url, "KUMO"), kept)
        # A clean stop: no marker left, the next start does not guard.
        self.assertFalse((self.state / "hook-record").exists())
        self.assertFalse((self.state / "running").exists())

    def test_a_single_death_on_a_record_is_retried(self):
        lines, expected = self.write_records(30)
        policy = self.write_policy(policy_text(self.server.port, self.hang_on(lines[10])))
        relay = self.relay(self.config(policy))
        self.wait_stuck(relay)
        relay.kill()
        policy.write_text(policy_text(self.server.port, ""))
        self.assertEqual(0, relay.run_once())
        h.assert_exactly_once(h.dump_stream(self.server.url, "KUMO"), expected)
        self.assertEqual([], self.deadletters())

    # ---- a runaway Lua loop and TERM ----

    def test_term_cuts_a_runaway_lua_loop_short(self):
        lines, expected = self.write_records(20)
        policy = self.write_policy(policy_text(self.server.port, """
      if not fixed then
        while true do end
      end"""))
        relay = self.relay(self.config(policy))
        # Each record runs the loop to the end of its budget (a second or more): after the
        # first one, the next is looping when TERM comes.
        h.poll(lambda: "instruction budget of 100000000 exceeded" in relay.log_text(), 60,
               "the first runaway hook to end")
        relay.proc.terminate()
        took, rc = self.wait_exit(relay, 30)
        self.assertEqual(0, rc, relay.log_tail())
        self.assertLess(took, 3, relay.log_tail())
        self.assertIn("the relay is stopping: the 'send' event was cut short", relay.log_text())
        policy.write_text(policy_text(self.server.port, "", prelude="fixed = true"))
        self.assertEqual(0, relay.run_once())
        h.assert_exactly_once(h.dump_stream(self.server.url, "KUMO"), expected)


if __name__ == "__main__":
    import unittest
    unittest.main()
