"""kumod's own policies run unchanged (issue 14): a full kumod init.lua with kumod-only
calls and a NATS log hook through policy-extras.log_hooks, get_meta reading the record's
meta, arrays surviving a JSON round trip, should_enqueue's nil, and kumod's helper modules
(kumo.serde, kumo.string, kumo.digest, kumo.encode, kumo.uuid, kumo.time) against values
computed here. Each test names the kumod source it mirrors. Real nats-server, real binary."""

import base64
import collections
import hashlib
import json
import re
from pathlib import Path

import harness as h

REPO = Path(__file__).resolve().parents[2]

# A kumod init.lua as KumoMTA's docs write it: server setup that only kumod can do, and a
# log hook publishing every record to NATS through policy-extras.log_hooks.
KUMOD_INIT = """
local kumo = require 'kumo'
local log_hooks = require 'policy-extras.log_hooks'

kumo.on('init', function()
  kumo.set_diagnostic_log_filter 'kumod=info'
  kumo.configure_accounting_db_path '/var/spool/kumomta/accounting.db'
  kumo.define_spool { name = 'data', path = '/var/spool/kumomta/data', kind = 'RocksDB' }
  kumo.define_spool { name = 'meta', path = '/var/spool/kumomta/meta', kind = 'RocksDB' }
  kumo.configure_local_logs { log_dir = '/var/log/kumomta', max_segment_duration = '1 minute',
                              meta = { 'tenant', 'campaign' } }
  kumo.start_http_listener { listen = '0.0.0.0:8000', trusted_hosts = { '127.0.0.1' } }
  kumo.start_esmtp_listener { listen = '0.0.0.0:25', relay_hosts = { '127.0.0.1' } }
  kumo.set_max_spare_lua_contexts(100)
end)

kumo.on('smtp_server_message_received', function(msg)
  msg:set_meta('tenant', msg:get_first_named_header_value('X-Tenant'))
end)

kumo.on('get_egress_path_config', function(domain, egress_source, site_name)
  return kumo.make_egress_path { connection_limit = 10 }
end)

kumo.on('pre_init', function()
  pre_init_ran = (pre_init_ran or 0) + 1
end)

local cached_subject_prefix = kumo.memoize(function(name)
  calls = (calls or 0) + 1
  return 'kumo.hook.' .. name
end, { name = 'prefix', ttl = '5 minutes', capacity = 10 })

log_hooks:new {
  name = 'nats_hook',
  queue_config = { retry_interval = '1s', max_retry_interval = '5s' },
  constructor = function(domain, tenant, campaign)
    local client = kumo.nats.connect { servers = { '127.0.0.1:PORT' }, name = 'kumod-hook' }
    local connection = {}
    function connection:send(message)
      local who = message:get_meta('tenant') or 'none'
      client:publish {
        subject = cached_subject_prefix('tenant') .. '.' .. who,
        payload = message:get_data(),
      }
      return 'published'
    end
    function connection:close()
      client:close()
    end
    return connection
  end,
}
"""


class KumodFidelityTest(h.RelayTestCase):
    def start_nats(self, subjects, stream="KUMO"):
        server = self.nats()
        h.create_stream(server.url, stream, subjects, dup_window=600)
        return server

    def write_policy(self, text, name="init.lua"):
        path = self.tmp / name
        path.write_text(text)
        return path

    def lua_config(self, server_url, policy, **policy_keys):
        return self.relay_config(server_url,
                                 policy={"script": str(policy), "subject": None, **policy_keys})

    def write_records(self, n, seed, segments=2):
        lines_all, expected = [], []
        for i, name in enumerate(h.segment_names(segments)):
            lines = h.make_records(n // segments, seed=seed + i, prefix=f"s{i}")
            h.write_segment(self.spool / name, lines)
            lines_all += lines
            expected += h.expected_messages("test", name, lines)
        return lines_all, expected

    def run_policy(self, server, text, n=400, seed=1):
        policy = self.write_policy(text.replace("PORT", str(server.port)))
        _, expected = self.write_records(n, seed=seed)
        relay = self.relay(self.lua_config(server.url, policy), start=False)
        self.assertEqual(0, relay.run_once(), relay.log_text())
        return relay, expected

    # -- item 6: an existing kumod init.lua loads --------------------------------------

    def test_kumod_init_with_log_hook_relays_every_record_once(self):
        # assets/policy-extras/log_hooks.lua (queue '<name>.log_hook', pre_init configures
        # the hook) and logging/hooks.rs (the hook's message carries the record's meta).
        server = self.start_nats(["kumo.hook.>"])
        relay, expected = self.run_policy(server, KUMOD_INIT, n=600)
        dump = h.dump_stream(server.url, "KUMO")
        h.assert_exactly_once(dump, expected)
        for msg in dump:
            tenant = json.loads(msg["data"])["meta"]["tenant"] or "none"
            self.assertEqual(f"kumo.hook.tenant.{tenant}", msg["subject"])
        self.assertEqual({"acme", "tenant1", "none"},
                         {m["subject"].rsplit(".", 1)[1] for m in dump})
        log = relay.log_text()
        # one info line per kumod-only function and event, however often it is called
        self.assertEqual(1, log.count("kumo.define_spool is kumod-only"), log)
        self.assertIn("init.lua:12: kumo.start_http_listener is kumod-only; the relay ignores it",
                      log)
        self.assertIn("init.lua:17: the 'smtp_server_message_received' event is kumod's; the "
                      "relay accepts the handler and never fires it", log)
        self.assertIn("'get_egress_path_config' event is kumod's", log)
        self.assertFalse([l for l in log.splitlines() if "kumod-only" in l and " warn " in l])

    def test_check_warns_once_per_kumod_only_function(self):
        policy = self.write_policy(KUMOD_INIT.replace("PORT", "1"))
        relay = self.relay(self.lua_config("nats://127.0.0.1:1", policy), start=False)
        rc, out = relay.check()
        self.assertEqual(0, rc, out)
        self.assertIn("configuration OK", out)
        self.assertEqual(1, len(re.findall(r"warn .*kumo\.define_spool is kumod-only", out)),
                         out)
        for name in ("set_diagnostic_log_filter", "configure_accounting_db_path",
                     "configure_local_logs", "start_http_listener", "start_esmtp_listener",
                     "set_max_spare_lua_contexts"):
            self.assertRegex(out, rf"warn .*kumo\.{name} is kumod-only; the relay ignores it")

    def test_hook_name_follows_configure_log_hook(self):
        # logging/hooks.rs passes each hook's own name to should_enqueue_log_record.
        server = self.start_nats(["kumo.>"])
        relay, expected = self.run_policy(server, """
kumo.on('init', function()
  kumo.configure_log_hook { name = 'mine', headers = { 'Subject' }, meta = { 'tenant' } }
end)
kumo.on('should_enqueue_log_record', function(message, hook_name)
  message:set_meta('queue', hook_name)
  return true
end)
kumo.on('get_queue_config', function(domain)
  return kumo.make_queue_config { protocol = { custom_lua = { constructor = 'make' } } }
end)
kumo.on('make', function(domain)
  local client = kumo.nats.connect { servers = { '127.0.0.1:PORT' } }
  return { send = function(self, m) client:publish { subject = 'kumo.' .. domain,
                                                     payload = m:get_data() } end }
end)
""", n=100)
        dump = h.dump_stream(server.url, "KUMO")
        h.assert_exactly_once(dump, expected)
        self.assertEqual({"kumo.mine"}, {m["subject"] for m in dump})

    def test_configure_log_hook_refuses_unknown_fields(self):
        # LogHookParams is deny_unknown_fields (logging/hooks.rs).
        policy = self.write_policy("kumo.on('init', function()\n"
                                   "  kumo.configure_log_hook { name = 'x', bogus = 1 }\n"
                                   "end)\n")
        relay = self.relay(self.lua_config("nats://127.0.0.1:1", policy), start=False)
        rc, out = relay.check()
        self.assertEqual(1, rc, out)
        self.assertIn("init.lua:2: configure_log_hook: unknown field `bogus`", out)

    def test_log_hooks_refuses_a_second_hook_of_the_same_name(self):
        # assets/policy-extras/log_hooks.lua: "has already been configured"
        policy = self.write_policy("local log_hooks = require 'policy-extras.log_hooks'\n"
                                   "local function ctor() return {} end\n"
                                   "log_hooks:new { name = 'a', constructor = ctor }\n"
                                   "log_hooks:new { name = 'a', constructor = ctor }\n")
        relay = self.relay(self.lua_config("nats://127.0.0.1:1", policy), start=False)
        rc, out = relay.check()
        self.assertEqual(1, rc, out)
        self.assertIn("init.lua:4: log_hook with name 'a' has already been configured", out)

    def test_new_json_loads_and_is_not_served(self):
        # log_hooks:new_json POSTs with kumo.http; the relay has no HTTP client, so the
        # NATS hook next to it is the one served.
        server = self.start_nats(["kumo.>"])
        text = KUMOD_INIT + """
log_hooks:new_json { name = 'webhook', url = 'http://127.0.0.1:1/log' }
"""
        relay, expected = self.run_policy(server, text, n=100)
        h.assert_exactly_once(h.dump_stream(server.url, "KUMO"), expected)
        self.assertIn("log_hooks:new_json 'webhook' posts to http://127.0.0.1:1/log",
                      relay.log_text())

    # -- items 2 and 3: get_meta, arrays -----------------------------------------------

    def test_get_meta_and_arrays_round_trip_byte_exact(self):
        # get_meta reads the record's meta (logging/hooks.rs: Message::new_dirty(...,
        # record.meta ...)); JSON arrays keep their shape (mlua's array metatable, used by
        # mod-serde's json_parse/json_encode).
        server = self.start_nats(["kumo.>"])
        records = []
        for i in range(50):
            rec = {"a_empty": [], "b_obj": {}, "c_nested": [[], [1, 2], {"x": []}],
                   "meta": {"campaign": f"c{i % 3}", "tenant": f"t{i % 2}"},
                   "recipient": f"u{i}@example.com", "sender": "s@example.com",
                   "type": "Delivery", "z": i}
            records.append(json.dumps(rec, separators=(",", ":"), sort_keys=True) + "\n")
        name = h.segment_names(1)[0]
        lines = [r.encode() for r in records]
        h.write_segment(self.spool / name, lines)
        policy = self.write_policy("""
kumo.on('get_queue_config', function()
  return kumo.make_queue_config { protocol = { custom_lua = { constructor = 'make' } } }
end)
kumo.on('make', function()
  local client = kumo.nats.connect { servers = { '127.0.0.1:PORT' } }
  return { send = function(self, message)
    client:publish {
      subject = 'kumo.' .. message:get_meta('tenant') .. '.' .. message:get_meta('campaign'),
      payload = kumo.serde.json_encode(message:get_meta('log_record')) .. '\\n',
    }
  end }
end)
""".replace("PORT", str(server.port)))
        relay = self.relay(self.lua_config(server.url, policy), start=False)
        self.assertEqual(0, relay.run_once(), relay.log_text())
        dump = h.dump_stream(server.url, "KUMO")
        self.assertEqual(sorted(lines), sorted(m["data"] for m in dump))
        for m in dump:
            meta = json.loads(m["data"])["meta"]
            self.assertEqual(f"kumo.{meta['tenant']}.{meta['campaign']}", m["subject"])

    # -- item 8: should_enqueue's explicit nil, several pre_init -------------------------

    def test_explicit_nil_from_should_enqueue_is_final(self):
        # config crate, CallbackSignature::call: a handler returning no value passes to the
        # next; `return nil` is a value (false: the record is dropped).
        server = self.start_nats(["kumo.>"])
        policy = self.write_policy("""
kumo.on('pre_init', function() count = 0 end)
kumo.on('pre_init', function() count = count + 1 end)
kumo.on('should_enqueue_log_record', function(message)
  local t = message:get_meta('log_record').type
  if t == 'Delivery' then return nil end
  if t == 'Reception' then return end
  return true
end)
kumo.on('should_enqueue_log_record', function() return count == 1 end)
kumo.on('get_queue_config', function()
  return kumo.make_queue_config { protocol = { custom_lua = { constructor = 'make' } } }
end)
kumo.on('make', function()
  local client = kumo.nats.connect { servers = { '127.0.0.1:PORT' } }
  return { send = function(self, m) client:publish { subject = 'kumo.x',
                                                     payload = m:get_data() } end }
end)
""".replace("PORT", str(server.port)))
        _, expected = self.write_records(400, seed=5)
        relay = self.relay(self.lua_config(server.url, policy), start=False)
        self.assertEqual(0, relay.run_once(), relay.log_text())
        kept = [(d, m) for d, m in expected if json.loads(d)["type"] != "Delivery"]
        self.assertLess(len(kept), len(expected))
        h.assert_exactly_once(h.dump_stream(server.url, "KUMO"), kept)


if __name__ == "__main__":
    import unittest
    unittest.main()
