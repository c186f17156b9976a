#!/usr/bin/python3
"""One relay --once run under valgrind memcheck: a few thousand records through the
built-in policy and then through a Lua policy, against a real nats-server. Exits 0 when
valgrind found no error (invalid reads or writes, uninitialised values, definite leaks)
and every record reached the stream exactly once.

    tests/integration/memcheck.py [--records N]

Uses the normal build (KNR_BUILD_DIR, default build/); not an ASan build, which valgrind
cannot run. Not a test_*.py file: run.py does not pick it up; tests/sanitize.sh runs it.
"""

import argparse
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import harness as h

LUA_POLICY = """\
local kumo = require 'kumo'
kumo.on('should_enqueue_log_record', function(message, hook_name)
  local record = message:get_meta('log_record')
  message:set_meta('queue', 'nats')
  return record.type ~= nil
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    protocol = { custom_lua = { constructor = 'make.nats', batch_size = 50,
                                max_batch_latency = '50ms' } },
  }
end)
kumo.on('make.nats', function(domain, tenant, campaign)
  local client = kumo.nats.connect { servers = { '%s' } }
  return {
    send_batch = function(self, messages)
      for _, message in ipairs(messages) do
        client:publish { subject = 'kumo.lua.' .. message:get_meta('log_record').type,
                         payload = message:get_data() }
      end
    end,
    close = function(self) client:close() end,
  }
end)
"""


def memcheck_wrapper(tmp, log_prefix):
    """A script that runs the relay under valgrind (what the harness runs as the relay)."""
    wrapper = tmp / "relay-under-valgrind"
    wrapper.write_text(
        "#!/bin/sh\n"
        f"exec valgrind --quiet --error-exitcode=99 --leak-check=full "
        f"--errors-for-leak-kinds=definite --show-leak-kinds=definite --track-origins=yes "
        f"--log-file={log_prefix}.%p {h.Tools.relay} \"$@\"\n")
    wrapper.chmod(0o755)
    return wrapper


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--records", type=int, default=3000)
    opts = parser.parse_args()
    if not shutil.which("valgrind"):
        print("memcheck: valgrind is missing (apt-get install valgrind)")
        return 1
    h.Tools.require("relay", "spoolwrite", "streamtool", "nats_server")
    tmp = Path(tempfile.mkdtemp(prefix="knr-memcheck-"))
    server = None
    try:
        server = h.NatsServer(tmp)
        h.create_stream(server.url, "KUMO", ["kumo.log.>", "kumo.lua.>"], dup_window=600)
        spool, state = tmp / "spool", tmp / "state"
        spool.mkdir()
        names = h.segment_names(2)
        half = opts.records // 2
        expected = []
        for i, name in enumerate(names):
            lines = h.make_records(half, seed=40 + i, prefix=f"mc{i}-")
            h.write_segment(spool / name, lines)
            expected += h.expected_messages("test", name, lines)
        reports = tmp / "valgrind"
        h.Tools.relay, real = memcheck_wrapper(tmp, reports), h.Tools.relay
        relay = h.Relay(h.relay_config(spool, state, server.url,
                                       log={"level": "info"}), tmp, start=False)
        rc_builtin = relay.run_once(timeout=600)
        h.assert_exactly_once(h.dump_stream(server.url, "KUMO"), expected)

        # The Lua policy over the same spool from the start (new state dir).
        policy = tmp / "policy.lua"
        policy.write_text(LUA_POLICY % f"127.0.0.1:{server.port}")
        relay.set_config(h.relay_config(spool, tmp / "state-lua", server.url, relay_id="lua",
                                        policy={"script": str(policy), "subject": None},
                                        log={"level": "info"}))
        rc_lua = relay.run_once(timeout=600)
        lua = [m for m in h.dump_stream(server.url, "KUMO") if m["subject"].startswith("kumo.lua.")]
        h.Tools.relay = real
        errors = 0
        logs = sorted(tmp.glob("valgrind.*"))
        if len(logs) < 2:
            print(f"memcheck: valgrind wrote {len(logs)} logs for 2 runs: did it run?")
            errors += 1
        for path in logs:
            text = path.read_text(errors="replace").strip()
            if text:
                errors += 1
                print(f"---- {path.name}\n{text[:6000]}")
        ok = rc_builtin == 0 and rc_lua == 0 and errors == 0 and len(lua) == len(expected)
        print(f"memcheck: {opts.records} records, built-in policy exit {rc_builtin}, Lua policy "
              f"exit {rc_lua} ({len(lua)} published), {errors} valgrind reports")
        if not ok:
            print(relay.log_tail(40))
        return 0 if ok else 1
    finally:
        if server:
            server.stop()
        h._kill_all()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
