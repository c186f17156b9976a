"""log_record read a member at a time (lua_record.c) is the record the eager parse gave:
whatever a policy does with it (index it, iterate it, json_encode it, change it, next/rawget/
#/getmetatable on it), it sees the same values, byte for byte, as with the table
kumo.serde.json_parse builds from the same line. Real nats-server, real binary."""

import json

import harness as h

# What a policy can do with a log record, one way per record (n % 6), and what it sees
# afterwards whatever it did: the sorted members with their types and values, and the
# record encoded. view() runs on log_record and on json_parse(get_data()).
VIEW = r"""
local function enc(t)
  local ok, s = pcall(kumo.serde.json_encode, t)
  return ok and s or ('error: ' .. s)
end
local function members(t)
  local out = {}
  for k, v in pairs(t) do
    out[#out + 1] = tostring(k) .. ':' .. type(v) .. ':'
      .. (type(v) == 'table' and enc(v) or tostring(v))
  end
  table.sort(out)
  return table.concat(out, '|')
end
local function view(r, mode)
  if type(r) ~= 'table' then
    return { scalar = tostring(r) }
  end
  local out = {}
  if mode == 0 then
    out.type = r.type
    out.members = members(r)
  elseif mode == 1 then
    out.encoded = enc(r)
    out.type = r.type
  elseif mode == 2 then
    out.type = r.type
    r.type = tostring(r.type) .. '!'
    r.added = 1
    r.id = nil
    out.type_after = r.type
  elseif mode == 3 then
    out.next = next(r) ~= nil
    out.rawget = rawget(r, 'type')
    out.len = #r
    local mt = getmetatable(r)
    out.mt = mt and mt.__name or tostring(mt)
  elseif mode == 4 then
    out.code = r.response and r.response.code
    out.same_table = r.response == r.response
    if r.response then r.response.code = 'changed' end
  else
    -- The same keys again and again, others between: each read as the first.
    out.type = r.type
    out.missing = r['no such key']
    out.type_again = r.type
    out.type_third = r.type
    out.sender = r.sender
    out.missing_again = r['no such key']
    out.sender_again = r.sender
    out.index_1 = r[1]
    out.size = r.size
    out.meta_campaign = r.meta and r.meta.campaign
    out.type_filled = r.type
  end
  out.after_members = members(r)
  out.after_encoded = enc(r)
  return out
end
"""

SEND = """      n = (n or 0) + 1
      local mode = n % 6
      local lazy = message:get_meta('log_record')
      local ok, eager = pcall(kumo.serde.json_parse, message:get_data())
      if not ok then eager = nil end
      client:publish {
        subject = 'lua.view',
        payload = kumo.serde.json_encode { mode = mode, lazy = view(lazy, mode),
                                           eager = view(eager, mode) },
      }"""

# Lines the benchmark's records do not have: duplicate keys (the last wins, a null one
# removes), escaped keys, numbers at the edges, arrays with holes, spacing, an integer the
# direct parser hands to jansson (which refuses it), other top-level values, not JSON.
EDGE = [
    b'{"type":"A","type":"B"}\n',
    b'{"type":"A","x":1,"type":null}\n',
    b'{"t\\u0079pe":"Escaped","k\\"q":"quote","\\u00e9":"\\u00e9\\ud83d\\ude00","type":"Later"}\n',
    b'{"t\\u0079pe":"Escaped only"}\n',
    b'{"type":"Num","i":9007199254740993,"neg":-0,"f":1.5e300,"e":1E2,'
    b'"min":-9223372036854775808,"frac":0.1}\n',
    b'{"type":"Arr","a":[1,null,"x",[],{}],"o":{},"t":true,"n":null,"response":{"code":451}}\n',
    b'{}\n',
    b'  { "type" : "Spaced" , "v" : [ 1 , 2 ] , "response" : { "code" : 250 } }  \n',
    b'{"type":"Big","n":18446744073709551616}\n',
    b'"just a string"\n',
    b'[1,2,{"type":"in an array"}]\n',
    b'not json\n',
    b'{"type":"Deep","n":' + b"[" * 2000 + b"1" + b"]" * 2000 + b"}\n",
    b'{"type":"Plain","sender":"s","t\\u0079pe":"Escaped last"}\n',
    b'{"type":"X","sender":"a","type":"Y","sender":"b"}\n',
    b'{"type":"Obj","sender":{"a":1},"type":"Obj2"}\n',
    b'{"sender":"no type","size":1}\n',
]  # 17 lines: n % 6 gives each of them every mode


class LuaRecordTest(h.RelayTestCase):
    def run_policy(self, lines, stream="LUA"):
        server = self.nats()
        h.create_stream(server.url, stream, ["lua.>"], dup_window=600)
        policy = self.tmp / "policy.lua"
        policy.write_text("local kumo = require 'kumo'\n" + VIEW
                          + h.connection_policy(server.port, SEND))
        name = h.segment_name()
        h.write_segment(self.spool / name, lines)
        cfg = self.relay_config(server.url, policy={"script": str(policy), "subject": None})
        relay = self.relay(cfg, start=False)
        self.assertEqual(0, relay.run_once(), relay.log_text()[-3000:])
        return server, name, h.dump_stream(server.url, stream)

    def test_lazy_log_record_is_the_eagerly_parsed_record(self):
        lines = h.make_records(240, seed=31, prefix="lazy") + EDGE * 6
        _, name, dump = self.run_policy(lines)
        by_msgid = {m: d for d, m in h.expected_messages("test", name, lines)}
        self.assertEqual(len(lines), len(dump))
        self.assertEqual(sorted(by_msgid), sorted(m["msgid"] for m in dump))
        # Kept with the test's files: the same policy run on another build must print the
        # same bytes (KNR_BUILD_DIR=... KNR_KEEP_TMP=1, then diff).
        (self.tmp / "views.jsonl").write_bytes(b"".join(
            m["data"] + b"\n" for m in sorted(dump, key=lambda m: int(m["msgid"].split(":")[-1]))))
        modes = set()
        for msg in dump:
            line = by_msgid[msg["msgid"]]
            got = json.loads(msg["data"])
            modes.add(got["mode"])
            self.assertEqual(got["eager"], got["lazy"], line[:200])
            parsed = self.python_view(line)
            if parsed is None or "scalar" in got["lazy"]:
                continue
            if got["mode"] in (0, 1, 2, 5):
                self.assertEqual(parsed.get("type"), got["lazy"].get("type"), line[:200])
            if got["mode"] == 1 and line in lines[:240]:
                self.assertEqual(self.python_encode(parsed), got["lazy"]["encoded"])
        self.assertEqual(set(range(6)), modes)
        # Spot checks of what the edge lines read as.
        views = [(by_msgid[m["msgid"]], json.loads(m["data"])) for m in dump]
        for line, want in ((EDGE[0], "B"), (EDGE[1], None), (EDGE[2], "Later"),
                           (EDGE[3], "Escaped only"), (EDGE[12], "Deep"),
                           (EDGE[13], "Escaped last"), (EDGE[14], "Y"), (EDGE[15], "Obj2"),
                           (EDGE[16], None)):
            seen = [v["lazy"].get("type") for k, v in views
                    if k == line and v["mode"] in (0, 1, 2, 5)]
            self.assertEqual([want] * 4, seen, line[:80])
            again = [[v["lazy"].get(f) for f in ("type_again", "type_third", "type_filled")]
                     for k, v in views if k == line and v["mode"] == 5]
            self.assertEqual([[want] * 3], again, line[:80])
        self.assertEqual(["nil"] * 12, [v["lazy"]["scalar"] for k, v in views
                                        if k in (EDGE[8], EDGE[11])])

    @staticmethod
    def python_view(line):
        try:
            value = json.loads(line)
        except (ValueError, RecursionError):
            return None
        return value if isinstance(value, dict) else None

    @classmethod
    def python_encode(cls, value):
        """kumo.serde.json_encode of the parsed record: null members left out, sorted keys."""
        def strip(v):
            if isinstance(v, dict):
                return {k: strip(x) for k, x in v.items() if x is not None}
            if isinstance(v, list):
                return [strip(x) for x in v]
            return v
        return json.dumps(strip(value), sort_keys=True, separators=(",", ":"),
                          ensure_ascii=False)

    def test_record_nested_too_deep_is_dead_lettered_with_the_same_reason(self):
        good = h.make_records(2, seed=32, prefix="deep")
        beyond = b'{"type":"Delivery","n":' + b"[" * 2048 + b"]" * 2048 + b"}\n"
        lines = [good[0], beyond, good[1]]
        _, name, dump = self.run_policy(lines)
        dead = [json.loads(x) for x in
                (self.state / "deadletter" / "deadletter.jsonl").read_text().splitlines()]
        self.assertEqual([(name, len(good[0]), "nesting deeper than 2048")],
                         [(d["segment"], d["start"], d["reason"]) for d in dead])
        expected = {m for d, m in h.expected_messages("test", name, lines) if d != beyond}
        self.assertEqual(sorted(expected), sorted(m["msgid"] for m in dump))


if __name__ == "__main__":
    import unittest
    unittest.main()
