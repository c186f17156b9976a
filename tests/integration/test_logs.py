"""Logs journald and log pipelines can read: in JSON mode every line the relay writes is
one JSON object (startup, relaying, a dead letter, a Lua error, an outage, SIGHUP, a
config error, shutdown); text mode escapes values; under journald each line starts with
its sd-daemon priority."""

import json
import os
import select
import signal
import subprocess
import time

import harness as h

STREAM = "KUMO"

# Fails the first time it sees a Bounce (a message with a quote, a backslash and a
# newline): one Lua error, retried. Rejects the record with id REJECT_ID (550): one dead
# letter. Publishes everything else.
POLICY = """
local kumo = require 'kumo'
local failed = false
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    protocol = { custom_lua = { constructor = 'make.q' } }, retry_interval = '100ms' }
end)
kumo.on('make.q', function(domain, tenant, campaign)
  local client = kumo.nats.connect { servers = { '127.0.0.1:PORT' } }
  return { send = function(self, message)
    if not failed and message:get_meta('log_record').type == 'Bounce' then
      failed = true
      error('said "no" \\\\ twice\\nsecond line', 0)
    end
    if message:get_meta('log_record').id == 'REJECT_ID' then
      kumo.reject(550, 'parked')
    end
    client:publish { subject = 'kumo.log.x', payload = message:get_data() }
  end }
end)
"""
LUA_ERROR = 'said "no" \\ twice\nsecond line'


def log_lines(relay):
    """The relay's own lines (without the harness's run markers)."""
    return [x for x in relay.log_text().splitlines() if not x.startswith("==== run ")]


class LogsTest(h.RelayTestCase):
    def setUp(self):
        super().setUp()
        self.server = self.nats()
        h.create_stream(self.server.url, STREAM, ["kumo.>"], dup_window=600)

    def policy_config(self, reject_id="none", **overrides):
        policy = self.tmp / "policy.lua"
        policy.write_text(POLICY.replace("PORT", str(self.server.port))
                          .replace("REJECT_ID", reject_id))
        return self.relay_config(self.server.url, policy={"script": str(policy), "subject": None},
                                 **overrides)

    def test_every_line_is_a_json_object(self):
        lines = h.make_records(200, seed=5)
        name = h.segment_name()
        h.write_segment(self.spool / name, lines)
        expected = h.expected_messages("test", name, lines)
        expected.pop(7)
        cfg = self.policy_config(json.loads(lines[7])["id"], log={"format": "json", "level": "debug"})
        relay = self.relay(cfg)
        h.wait_count(self.server.url, STREAM, 199, timeout=60)
        # an outage
        self.server.stop()
        h.poll(lambda: "disconnected from nats" in relay.log_text(), 30, "the disconnect")
        self.server.start()
        h.poll(lambda: "reconnected to nats" in relay.log_text(), 60, "the reconnect")
        # SIGHUP: one reload that works, one that does not
        relay.proc.send_signal(signal.SIGHUP)
        h.poll(lambda: "reloaded configuration and policy" in relay.log_text(), 30, "reload")
        relay.config_path.write_text(relay.config_path.read_text() + "bogus_key: 1\n")
        relay.proc.send_signal(signal.SIGHUP)
        h.poll(lambda: "reload failed" in relay.log_text(), 30, "the failed reload")
        self.assertEqual(0, relay.stop())
        # a config error, with the format on the command line
        self.assertEqual(78, relay.run("--log-format", "json"))  # EX_CONFIG
        # a policy that does not load
        relay.set_config(cfg)
        (self.tmp / "policy.lua").write_text("local kumo = require 'kumo'\nkumo.on(\n")
        self.assertNotEqual(0, relay.run())

        parsed = []
        for line in log_lines(relay):
            obj = json.loads(line)  # raises on any line that is not JSON
            self.assertIsInstance(obj, dict, line)
            self.assertLessEqual({"time", "level", "msg"}, set(obj), line)
            self.assertIn(obj["level"], ("debug", "info", "warn", "error"), line)
            parsed.append(obj)
        msgs = [p["msg"] for p in parsed]
        for want in ("relaying", "connected to nats", "record dead-lettered",
                     "disconnected from nats, reconnecting", "reconnected to nats",
                     "reloaded configuration and policy", "stopped"):
            self.assertIn(want, msgs)
        lua = [p for p in parsed if p["msg"].startswith("lua error in the 'send' event")]
        self.assertEqual(1, len(lua), lua)
        self.assertEqual("warn", lua[0]["level"])
        self.assertEqual(LUA_ERROR, lua[0]["error"])
        stopped = next(p for p in parsed if p["msg"] == "stopped")
        self.assertEqual(200, stopped["records"])  # numbers stay numbers
        self.assertEqual(1, stopped["deadlettered"])
        failed = next(p for p in parsed if p["msg"].startswith("reload failed"))
        self.assertIn("bogus_key", failed["error"])
        config_errors = [p for p in parsed if "unknown key" in p["msg"] and "bogus_key" in p["msg"]]
        self.assertEqual(1, len(config_errors), msgs)
        self.assertEqual("error", config_errors[0]["level"])
        self.assertTrue(any("policy.lua:3:" in json.dumps(p) for p in parsed if p["level"] == "error"))
        h.assert_exactly_once(h.dump_stream(self.server.url, STREAM), expected)

    def test_text_escapes_quotes_backslashes_and_newlines(self):
        h.write_segment(self.spool / h.segment_name(), h.make_records(200, seed=5))
        relay = self.relay(self.policy_config(), start=False)
        self.assertEqual(0, relay.run_once())
        warns = [x for x in log_lines(relay) if "lua error in the 'send' event" in x]
        self.assertEqual(1, len(warns), warns)
        # one line; the timestamp first
        self.assertRegex(warns[0], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z warn ")
        self.assertEqual("warn lua error in the 'send' event, the record will be retried "
                         'error="said \\"no\\" \\\\ twice\\nsecond line"',
                         warns[0].split(" ", 1)[1])

    def run_on_pipe(self, config, env):
        """Runs --once with stderr on a pipe; returns its lines."""
        relay = self.relay(config, start=False)
        read_end, write_end = os.pipe()
        st = os.fstat(write_end)
        env = dict(os.environ, **{k: v.format(dev=st.st_dev, ino=st.st_ino)
                                  for k, v in env.items()})
        env.pop("JOURNAL_STREAM", None) if "JOURNAL_STREAM" not in env else None
        proc = subprocess.Popen([str(h.Tools.relay), "-c", str(relay.config_path), "--once"],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=write_end, env=env)
        os.close(write_end)
        data = b""
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                ready, _, _ = select.select([read_end], [], [], 1)
                if ready:
                    chunk = os.read(read_end, 65536)
                    if not chunk:
                        break
                    data += chunk
            self.assertEqual(0, proc.wait(30), data.decode(errors="replace"))
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            os.close(read_end)
        return data.decode().splitlines()

    def test_journald_stream_gets_priority_prefixes(self):
        h.write_segment(self.spool / h.segment_name(), h.make_records(20, seed=1))
        h.write_segment(self.spool / (h.segment_name() + "_x"), [b"not json\n"])
        cfg = self.relay_config(self.server.url, log={"format": "text", "level": "debug"})
        lines = self.run_on_pipe(cfg, {"JOURNAL_STREAM": "{dev}:{ino}"})
        self.assertTrue(lines)
        for line in lines:
            self.assertRegex(line, r"^<[3467]>(debug|info|warn|error) ", line)
        prio = {"debug": "<7>", "info": "<6>", "warn": "<4>", "error": "<3>"}
        for line in lines:
            level = line[3:].split(" ", 1)[0]
            self.assertTrue(line.startswith(prio[level]), line)
        self.assertTrue(any(x.startswith("<4>warn record dead-lettered") for x in lines), lines)
        self.assertTrue(any(x.startswith("<6>info stopped ") for x in lines), lines)
        self.assertTrue(any(x.startswith("<7>debug ") for x in lines), lines)

        # JSON lines get the prefix too
        cfg["log"]["format"] = "json"
        (self.state / "checkpoint").unlink()
        lines = self.run_on_pipe(cfg, {"JOURNAL_STREAM": "{dev}:{ino}"})
        warn = [x for x in lines if x.startswith("<4>{")]
        self.assertTrue(warn, lines)
        self.assertEqual("record dead-lettered", json.loads(warn[0][3:])["msg"])

        # JOURNAL_STREAM naming another file (inherited from a parent): no prefixes
        cfg["log"]["format"] = "text"
        (self.state / "checkpoint").unlink()
        lines = self.run_on_pipe(cfg, {"JOURNAL_STREAM": "1:{ino}1"})
        self.assertTrue(all(x[:4].isdigit() for x in lines), lines)

        # log.target: journal forces them
        cfg["log"]["target"] = "journal"
        (self.state / "checkpoint").unlink()
        lines = self.run_on_pipe(cfg, {})
        self.assertTrue(any(x.startswith("<6>info stopped ") for x in lines), lines)
