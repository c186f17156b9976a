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
        self.assertEqual(78, rc, out)  # a configuration error
        self.assertIn("init.lua:2: configure_log_hook: unknown field `bogus`", out)

    def test_log_hooks_refuses_a_second_hook_of_the_same_name(self):
        # assets/policy-extras/log_hooks.lua: "has already been configured"
        policy = self.write_policy("local log_hooks = require 'policy-extras.log_hooks'\n"
                                   "local function ctor() return {} end\n"
                                   "log_hooks:new { name = 'a', constructor = ctor }\n"
                                   "log_hooks:new { name = 'a', constructor = ctor }\n")
        relay = self.relay(self.lua_config("nats://127.0.0.1:1", policy), start=False)
        rc, out = relay.check()
        self.assertEqual(78, rc, out)  # a configuration error
        self.assertIn("init.lua:4: log_hook with name 'a' has already been configured", out)

    def test_connect_takes_the_keys_and_types_kumod_takes(self):
        # crates/mod-nats/src/lib.rs, struct Config: client_capacity and max_reconnects are
        # Option<usize>, ping_interval a plain Duration ({ secs, nanos }), the timeouts
        # duration_serde, tls_first a bool (false is kumod's default).
        def check(keys):
            policy = self.write_policy(
                "kumo.on('init', function()\n"
                f"  kumo.nats.connect {{ servers = {{ 'nats://127.0.0.1:1' }}, {keys} }}\n"
                "end)\n")
            relay = self.relay(self.lua_config("nats://127.0.0.1:1", policy), start=False)
            return relay.check()

        for keys in ("client_capacity = 2048, tls_first = false, max_reconnects = 0",
                     "ping_interval = { secs = 10, nanos = 0 }, no_echo = true",
                     "connection_timeout = '5s', request_timeout = 3, name = 'relay'"):
            with self.subTest(keys=keys):
                rc, out = check(keys)
                self.assertEqual((0, True), (rc, "configuration OK" in out), out)
        prefix = "init.lua:2: kumo.nats.connect: "
        for keys, error in (
                ("max_reconnects = 'lots'",
                 "max_reconnects: a whole number >= 0 expected, got string"),
                ("client_capacity = -1", "client_capacity: a whole number >= 0 expected, got number"),
                ("ping_interval = '10s'", "ping_interval: a duration as kumod reads this key: "
                                          "{ secs = N, nanos = N } expected, got string"),
                ("no_echo = 'yes'", "no_echo: a boolean expected, got string"),
                ("connection_timeout = 'soon'",
                 "connection_timeout: a duration (\"30s\" or seconds) expected, got string"),
                ("tls_first = true", "tls_first = true is not supported by this build")):
            with self.subTest(keys=keys):
                rc, out = check(keys)
                self.assertEqual(78, rc, out)
                self.assertIn(prefix + error + "\n", out)

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


# -- item 7: kumod's helper modules, checked against Python -----------------------------

HELPERS_POLICY = r"""
local kumo = require 'kumo'
local input = 'The quick brown fox \0 jumps \xff over'
local r = {}
-- crates/mod-digest: strings hashed as bytes, other values as their JSON
for _, name in ipairs { 'sha1', 'sha256', 'sha384', 'sha512', 'sha512_256' } do
  local d = kumo.digest[name](input)
  r[name] = { hex = d.hex, base64 = d.base64, base64url_nopad = d.base64url_nopad,
              base32 = d.base32, tostring = tostring(d), bytes = kumo.encode.hex_encode(d.bytes) }
end
r.sha256_multi = kumo.digest.sha256('a', 'b', { x = 1 }, 2).hex
-- crates/mod-encode
r.encode = {}
for _, name in ipairs { 'base32', 'base32_nopad', 'base32hex', 'base32hex_nopad', 'base64',
                        'base64_nopad', 'base64url', 'base64url_nopad', 'hex' } do
  for len = 0, 7 do
    local s = input:sub(1, len)
    local e = kumo.encode[name .. '_encode'](s)
    assert(kumo.encode[name .. '_decode'](e) == s, name .. ' round trip')
    table.insert(r.encode, { name, len, e })
  end
end
r.bad = {}
for _, case in ipairs { { 'base64', 'QQ=' }, { 'base64', 'QR==' }, { 'base64', 'Q!==' },
                        { 'hex', 'ABCD' }, { 'hex', 'abc' }, { 'base64_nopad', 'QQ==' } } do
  local ok, err = pcall(kumo.encode[case[1] .. '_decode'], case[2])
  table.insert(r.bad, { case[1], case[2], ok })
end
-- crates/mod-uuid
local u = kumo.uuid.new_v4()
r.uuid = { v4 = tostring(u), simple = u.simple, braced = u.braced, urn = u.urn,
           v1 = kumo.uuid.new_v1().hyphenated, v6 = kumo.uuid.new_v6().hyphenated,
           v7 = kumo.uuid.new_v7().hyphenated, bytes = kumo.encode.hex_encode(u.bytes),
           parsed = kumo.uuid.parse('{67E55044-10B1-426F-9247-BB680E5FE0C8}').hyphenated }
-- crates/mod-string
local S = kumo.string
r.string = {
  split = S.split('a,b,,c', ','), splitn = S.splitn('a,b,,c', 2, ','),
  rsplit = S.rsplit('a,b,,c', ','), rsplitn = S.rsplitn('a,b,,c', 2, ','),
  ws = S.split_whitespace('  a \t b\n c  '), aws = S.split_ascii_whitespace(' x  y '),
  trim = S.trim('  x  '), trim_start = S.trim_start('  x  '), trim_end = S.trim_end('  x  '),
  replace = S.replace('aXbXc', 'X', '--'), replacen = S.replacen('aXbXc', 'X', '--', 1),
  starts = S.starts_with('hello', 'he'), ends = S.ends_with('hello', 'lo'),
}
-- crates/mod-time
local t = kumo.time.now()
r.time = { year = t:format('%Y'), ms = kumo.time.epoch_millis(),
           since = kumo.time.since_millis(kumo.time.epoch_millis()),
           elapsed = math.type(t:elapsed()), timer = type(kumo.time.start_timer('x'):done()),
           sleep = select(2, pcall(kumo.time.sleep, 0.1)) }
-- crates/mod-serde
r.serde = {
  pretty = kumo.serde.json_encode_pretty { b = { 1, 2 }, a = {}, c = kumo.serde.json_parse('[]') },
  comments = kumo.serde.json_parse('{ // a comment\n "a": [1, /* two */ 2], # three\n "b": "//x" }'),
  load = kumo.serde.json_load('DATA.json'),
  yaml = kumo.serde.yaml_parse('a: 1\nb: [x, "2", 3.5, true, null, yes]\nc: {}\nd: []\n'),
  yaml_text = kumo.serde.yaml_encode { name = 'x', list = { 1, '2', true }, empty = {} },
}
r.serde.yaml_back = kumo.serde.yaml_parse(r.serde.yaml_text)
local out = io.open('OUT.json', 'w')
out:write(kumo.serde.json_encode(r))
out:close()
"""


class KumodHelpersTest(h.RelayTestCase):
    def helpers(self):
        data = self.tmp / "data.json"
        data.write_text('// kumod strips comments from files too\n{"k": [1, 2, {}]}\n')
        policy = self.tmp / "init.lua"
        out = self.tmp / "out.json"
        policy.write_text(HELPERS_POLICY.replace("DATA.json", str(data))
                          .replace("OUT.json", str(out)))
        cfg = self.relay_config("nats://127.0.0.1:1",
                                policy={"script": str(policy), "subject": None})
        rc, log = self.relay(cfg, start=False).check()
        self.assertEqual(0, rc, log)
        return json.loads(out.read_text())

    def test_helpers_match_python(self):
        r = self.helpers()
        data = b"The quick brown fox \0 jumps \xff over"
        for name, fn in (("sha1", hashlib.sha1), ("sha256", hashlib.sha256),
                         ("sha384", hashlib.sha384), ("sha512", hashlib.sha512),
                         ("sha512_256", lambda b: hashlib.new("sha512_256", b))):
            d = fn(data).digest()
            self.assertEqual({"hex": d.hex(), "tostring": d.hex(), "bytes": d.hex(),
                              "base64": base64.b64encode(d).decode(),
                              "base64url_nopad": base64.urlsafe_b64encode(d).decode().rstrip("="),
                              "base32": base64.b32encode(d).decode()}, r[name], name)
        self.assertEqual(hashlib.sha256(b'ab{"x":1}2').hexdigest(), r["sha256_multi"])

        encoders = {
            "base32": lambda b: base64.b32encode(b).decode(),
            "base32_nopad": lambda b: base64.b32encode(b).decode().rstrip("="),
            "base32hex": lambda b: base64.b32hexencode(b).decode(),
            "base32hex_nopad": lambda b: base64.b32hexencode(b).decode().rstrip("="),
            "base64": lambda b: base64.b64encode(b).decode(),
            "base64_nopad": lambda b: base64.b64encode(b).decode().rstrip("="),
            "base64url": lambda b: base64.urlsafe_b64encode(b).decode(),
            "base64url_nopad": lambda b: base64.urlsafe_b64encode(b).decode().rstrip("="),
            "hex": lambda b: b.hex(),
        }
        self.assertEqual(9 * 8, len(r["encode"]))
        for name, n, text in r["encode"]:
            self.assertEqual(encoders[name](data[:n]), text, (name, n))
        # data_encoding refuses a short pad, non-zero trailing bits, stray symbols,
        # uppercase hex (HEXLOWER), odd hex and padding where there is none
        self.assertEqual([False] * 6, [ok for _, _, ok in r["bad"]], r["bad"])

        u = r["uuid"]
        uuid_re = r"^[0-9a-f]{8}-[0-9a-f]{4}-%s[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$"
        for version in ("1", "4", "6", "7"):
            self.assertRegex(u[f"v{version}"], uuid_re % version)
        self.assertEqual(u["v4"].replace("-", ""), u["simple"])
        self.assertEqual(u["simple"], u["bytes"])
        self.assertEqual("{" + u["v4"] + "}", u["braced"])
        self.assertEqual("urn:uuid:" + u["v4"], u["urn"])
        self.assertEqual("67e55044-10b1-426f-9247-bb680e5fe0c8", u["parsed"])

        s = r["string"]
        self.assertEqual("a,b,,c".split(","), s["split"])
        self.assertEqual("a,b,,c".split(",", 1), s["splitn"])
        self.assertEqual(list(reversed("a,b,,c".split(","))), s["rsplit"])
        self.assertEqual(list(reversed("a,b,,c".rsplit(",", 1))), s["rsplitn"])
        self.assertEqual(["a", "b", "c"], s["ws"])
        self.assertEqual(["x", "y"], s["aws"])
        self.assertEqual(("x", "x  ", "  x"), (s["trim"], s["trim_start"], s["trim_end"]))
        self.assertEqual(("a--b--c", "a--bXc"), (s["replace"], s["replacen"]))
        self.assertTrue(s["starts"] and s["ends"])

        t = r["time"]
        import time
        self.assertLess(abs(t["ms"] - time.time() * 1000), 60000)
        self.assertEqual(time.strftime("%Y", time.gmtime()), t["year"])
        self.assertLess(t["since"], 1000)
        self.assertEqual(("integer", "number"), (t["elapsed"], t["timer"]))
        self.assertIn("kumo.sleep is not available in the relay", t["sleep"])

        sd = r["serde"]
        self.assertEqual(json.dumps({"a": {}, "b": [1, 2], "c": []}, indent=2, sort_keys=True),
                         sd["pretty"])
        self.assertEqual({"a": [1, 2], "b": "//x"}, sd["comments"])
        self.assertEqual({"k": [1, 2, {}]}, sd["load"])
        self.assertEqual({"a": 1, "b": ["x", "2", 3.5, True, None, "yes"], "c": {}, "d": []},
                         sd["yaml"])
        self.assertEqual({"name": "x", "list": [1, "2", True], "empty": {}}, sd["yaml_back"])
