"""client:publish's arguments as a policy gives them: every error a bad argument raises,
word for word and in the same order of precedence (an unknown key before a bad value), and
an argument table whose fields come from its metatable. Real nats-server, real binary."""

import re

import harness as h

POLICY = """
local kumo = require 'kumo'
nats = kumo.nats.connect { servers = { '127.0.0.1:PORT' } }
kumo.on('get_queue_config', function()
  return kumo.make_queue_config { protocol = { custom_lua = { constructor = 'make.q' } } }
end)
local function try(name, self, args)
  local ok, err = pcall(nats.publish, self, args)
  kumo.log_info('case ' .. name .. ' ' .. tostring(ok) .. ' [' .. tostring(err) .. ']')
end
kumo.on('make.q', function()
  local data = message:get_data()
  nats:publish { subject = 'kumo.q', payload = data, headers = { ['X-Case'] = 'one' } }
  try('unknown', nats, { subject = 'kumo.q', payload = data, bogus = 1 })
  try('unknown-first', nats, { subject = {}, payload = data, [1] = 'x' })
  try('number-key', nats, { subject = 'kumo.q', payload = data, [2.5] = true })
  try('no-subject', nats, { payload = data })
  try('empty-subject', nats, { subject = '', payload = data })
  try('table-subject', nats, { subject = {}, payload = data })
  try('no-payload', nats, { subject = 'kumo.q' })
  try('bad-payload', nats, { subject = 'kumo.q', payload = true })
  try('bad-headers', nats, { subject = 'kumo.q', payload = data, headers = 5 })
  try('bad-header', nats, { subject = 'kumo.q', payload = data, headers = { a = 1 } })
  try('not-a-table', nats, 'kumo.q')
  try('not-a-client', {}, { subject = 'kumo.q', payload = data })
  -- Fields read through __index, as lua_getfield reads them.
  local via_meta = setmetatable({}, { __index = { subject = 'kumo.meta', payload = data,
                                                  await_ack = false } })
  try('metatable', nats, via_meta)
end)
"""

CASES = {
    "unknown": 'false [publish: unknown key "bogus"]',
    "unknown-first": 'false [publish: unknown key "1"]',
    "number-key": 'false [publish: unknown key "2.5"]',
    "no-subject": "false [publish: subject must be a non-empty string]",
    "empty-subject": "false [publish: subject must be a non-empty string]",
    "table-subject": "false [publish: subject must be a non-empty string]",
    "no-payload": "false [publish: payload must be a string]",
    "bad-payload": "false [publish: payload must be a string]",
    "bad-headers": "false [publish: headers must be a table]",
    "bad-header": "false [publish: headers must map strings to strings]",
    "not-a-table": "false [bad argument #2 to '?' (table expected, got string)]",
    "not-a-client": "false [bad argument #1 to '?' (kumo.nats.client expected, got table)]",
}


class LuaPublishArgsTest(h.RelayTestCase):
    def test_bad_arguments_raise_kumods_errors_and_good_ones_publish_once(self):
        server = self.nats()
        h.create_stream(server.url, "KUMO", ["kumo.q", "kumo.meta"], dup_window=600)
        policy = self.tmp / "policy.lua"
        policy.write_text(POLICY.replace("PORT", str(server.port)))
        lines = h.make_records(20, seed=31)
        name = h.segment_names(1)[0]
        h.write_segment(self.spool / name, lines)
        expected = h.expected_messages("test", name, lines)
        relay = self.relay(self.relay_config(server.url, policy={"script": str(policy),
                                                                 "subject": None}),
                           start=False)
        self.assertEqual(0, relay.run_once(timeout=60), relay.log_text())
        log = relay.log_text()
        seen = re.findall(r"case (\S+) (\w+ \[[^\]]*\])", log)
        self.assertEqual(len(lines) * (len(CASES) + 1), len(seen), log)
        for case, text in seen:
            if case == "metatable":
                self.assertTrue(text.startswith("true ["), text)
            else:
                self.assertEqual(CASES[case], text, case)
        dump = h.dump_stream(server.url, "KUMO")
        h.assert_exactly_once([m for m in dump if m["subject"] == "kumo.q"], expected)
        # The second publish of each hook: the same data, the next Nats-Msg-Id.
        copies = [m for m in dump if m["subject"] == "kumo.meta"]
        self.assertEqual(sorted((msgid + ":1", data) for data, msgid in expected),
                         sorted((m["msgid"], m["data"]) for m in copies))
        self.assertNotIn("lua error", log)
