"""Faults an operator causes: a SIGHUP after the spool list changed, two relays started on
one state_dir, a state_dir that fills up while a record must be dead-lettered, --once
that cannot finish, and a record nested deeper than the JSON parsers go. Each outcome is
checked exactly: the log line word for word, the exit status, every record once."""

import fcntl
import json
import os
import re
import shutil
import signal
import subprocess
import zlib
from pathlib import Path

import harness as h

STREAM = "KUMO"


def dir_tag(path):
    """The tag of a spool directory after the first: FNV-1a of its path (spool.c)."""
    v = 2166136261
    for b in str(path).encode():
        v = ((v ^ b) * 16777619) & 0xFFFFFFFF
    return f"{v:08x}"


def log_lines(text, level, message):
    """The log lines at `level` whose message is exactly `message` (timestamp aside)."""
    return [line for line in text.splitlines()
            if re.fullmatch(r"\S+ " + re.escape(f"{level} {message}"), line)]


http_get = h.http_get


fill = h.fill_filesystem


class OpsFaultTest(h.RelayTestCase):
    def setUp(self):
        super().setUp()
        self.server = self.nats()
        h.create_stream(self.server.url, STREAM, storage="file", dup_window=900)

    def segment_of(self, directory, name, n, prefix, tagged=None):
        lines = h.many_records(n, seed=zlib.crc32(prefix.encode()), prefix=prefix)
        h.write_segment(Path(directory) / name, lines)
        return h.expected_messages("test", tagged or name, lines)

    # ---- SIGHUP with several spool directories ------------------------------------------

    def test_sighup_refuses_a_changed_spool_list(self):
        """Two spool directories, then the file lists one (and then a different second
        one): each SIGHUP is refused with "restart to apply it", the relay goes on reading
        both directories, and a reload that keeps the list is applied."""
        second = self.tmp / "spool2"
        second.mkdir()
        two = [{"dir": str(self.spool), "pattern": "*"}, {"dir": str(second), "pattern": "*"}]
        cfg = self.relay_config(self.server.url, spool=two)
        relay = self.relay(cfg)
        names = h.segment_names(4)
        tag = dir_tag(second)
        expected = self.segment_of(self.spool, names[0], 300, "hup0")
        expected += self.segment_of(second, names[1], 300, "hup1", f"{tag}:{names[1]}")
        h.wait_count(self.server.url, STREAM, 600, timeout=60)

        relay.set_config(self.relay_config(self.server.url, spool=two[:1]))
        relay.proc.send_signal(signal.SIGHUP)
        refused = ('reload failed, still running the previous configuration and policy '
                   'error="spool list changed (1 directories, was 2): restart to apply it"')
        h.poll(lambda: log_lines(relay.log_text(), "error", refused), 30, "the refusal")
        third = self.tmp / "spool3"
        relay.set_config(self.relay_config(
            self.server.url, spool=two[:1] + [{"dir": str(third), "pattern": "*"}]))
        relay.proc.send_signal(signal.SIGHUP)
        refused = ('reload failed, still running the previous configuration and policy '
                   f'error="spool directory 2 changed ({third}, was {second}): restart to '
                   'apply it"')
        h.poll(lambda: log_lines(relay.log_text(), "error", refused), 30, "the second refusal")
        self.assertTrue(relay.running)
        # Both directories are still read.
        expected += self.segment_of(self.spool, names[2], 300, "hup2")
        expected += self.segment_of(second, names[3], 300, "hup3", f"{tag}:{names[3]}")
        h.wait_count(self.server.url, STREAM, 1200, timeout=60)
        # The same list again (the log level changed): applied.
        relay.set_config(self.relay_config(self.server.url, spool=two, log={"level": "info"}))
        relay.proc.send_signal(signal.SIGHUP)
        h.poll(lambda: "reloaded configuration and policy" in relay.log_text(), 30,
               "the reload")
        self.assertEqual(0, relay.stop())
        h.check_exactly_once(h.dump_stream(self.server.url, STREAM), expected,
                             "spool list changed under SIGHUP")

    # ---- one relay per state_dir ----------------------------------------------------------

    def lock_fd_flags(self, pid):
        """The open flags of the process's descriptor of state_dir/lock."""
        for fd in os.listdir(f"/proc/{pid}/fd"):
            if os.readlink(f"/proc/{pid}/fd/{fd}") == str(self.state / "lock"):
                text = Path(f"/proc/{pid}/fdinfo/{fd}").read_text()
                return int(re.search(r"^flags:\s+([0-7]+)$", text, re.M).group(1), 8)
        raise AssertionError(f"pid {pid} holds no descriptor of {self.state}/lock")

    def test_second_relay_on_a_state_dir_is_refused(self):
        """A relay runs; a second daemon and a second --once on its state_dir exit 1 naming
        the first one's pid, and write nothing (one dead letter, not two). `status` and
        `deadletter replay` still run beside it. Once the first stops, the next starts."""
        name = h.segment_name()
        lines = h.many_records(50, seed=3, prefix="lock")
        bad = b"not JSON at all\n"
        h.write_segment(self.spool / name, lines[:25] + [bad] + lines[25:], plain=True)
        expected = h.expected_messages("test", name, lines[:25])
        expected += h.expected_messages("test", name, lines[25:],
                                        start_offset=sum(map(len, lines[:25])) + len(bad))
        first = self.relay(self.relay_config(self.server.url))
        h.wait_count(self.server.url, STREAM, 50, timeout=60)
        self.assertEqual(f"{first.pid}\n", (self.state / "lock").read_text())
        self.assertTrue(self.lock_fd_flags(first.pid) & os.O_CLOEXEC)
        held = (f"{self.state}/lock is locked by kumo-nats-relay pid {first.pid}: another "
                f"relay runs on state_dir {self.state}")
        for args in ((), ("--once",), ("--once", "--reset-offsets")):
            second = self.relay(self.relay_config(self.server.url), start=False,
                                name=f"second{len(args)}")
            self.assertEqual(1, second.run(*args, timeout=30))
            self.assertEqual(1, len(log_lines(second.log_text(), "error", held)),
                             second.log_text())
        self.assertEqual([], list(self.state.glob("checkpoint.reset-*")))
        self.assertEqual(f"{first.pid}\n", (self.state / "lock").read_text())
        status = h.run_command([h.Tools.relay, "status", "-c", first.config_path])
        self.assertIn(name, status)
        replayed = h.run_command([h.Tools.relay, "deadletter", "replay", "-c",
                                  first.config_path])
        self.assertRegex(replayed, r"^replayed 1 dead letters as segment ")
        letters = self.state / "deadletter" / "deadletter.jsonl"
        h.poll(lambda: len(letters.read_text().splitlines()) == 2, 30,
               "the replayed record parked again")
        # A replay while another replay runs (its lock held here) is refused.
        with open(self.state / "deadletter" / "replay.lock", "r+") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            lock.truncate()
            lock.write(f"{os.getpid()}\n")
            lock.flush()
            proc = subprocess.run([h.Tools.relay, "deadletter", "replay", "-c",
                                   first.config_path], capture_output=True, text=True)
        self.assertEqual(1, proc.returncode)
        self.assertEqual(f"kumo-nats-relay: deadletter replay: {self.state}/deadletter/"
                         f"replay.lock is locked by kumo-nats-relay pid {os.getpid()}: another "
                         "deadletter replay is running\n", proc.stderr)
        self.assertTrue(first.running)
        self.assertEqual(0, first.stop())
        dead = letters.read_text().splitlines()
        self.assertEqual(2, len(dead))  # the record, and its replay parked again
        self.assertIn('"reason":"not JSON"', dead[0])
        self.assertIn('"reason":"not JSON"', dead[1])
        self.assertNotEqual(re.search(r'"segment":"([^"]+)"', dead[0]).group(1),
                            re.search(r'"segment":"([^"]+)"', dead[1]).group(1))
        again = self.relay(self.relay_config(self.server.url), start=False, name="again")
        self.assertEqual(0, again.run_once())
        h.check_exactly_once(h.dump_stream(self.server.url, STREAM), expected,
                             "a second relay on the state_dir refused")

    # ---- a full state_dir when a record must be dead-lettered ---------------------------

    def mount_tmpfs(self, path, size="64k"):
        Path(path).mkdir(parents=True, exist_ok=True)
        proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                              capture_output=True, text=True)
        self.assertEqual(0, proc.returncode, proc.stderr)
        self.addCleanup(subprocess.run, ["umount", "-l", str(path)], capture_output=True)

    def test_full_state_dir_holds_the_dead_letter(self):
        """state_dir on a 64 KiB tmpfs, filled up; a segment with a line that is not JSON
        and another of good records arrive. The relay neither stops nor skips: the bad
        record is held (its segment waits behind it), the other segment is relayed,
        /healthz says why it is 503. Stopped and started again while the disk is still
        full, it starts. Once there is room, the dead letter is written, the rest of its
        segment follows, and every record is in the stream once."""
        port = h.free_port()
        health = f"http://127.0.0.1:{port}/healthz"
        self.mount_tmpfs(self.state)
        cfg = self.relay_config(self.server.url, metrics={"listen": f"127.0.0.1:{port}"})
        names = h.segment_names(3)
        expected = self.segment_of(self.spool, names[0], 500, "full0")
        relay = self.relay(cfg)
        h.wait_count(self.server.url, STREAM, 500, timeout=60)
        h.poll(lambda: names[0] in (self.state / "checkpoint").read_text(), 30,
               "the first segment in the checkpoint", ignore=(OSError,))

        filler = fill(self.state)
        good = h.many_records(30, seed=11, prefix="held")
        bad = b"this line is not JSON\n"
        lines = good[:10] + [bad] + good[10:]
        h.write_segment(self.spool / names[1], lines, plain=True)
        start = sum(map(len, good[:10]))
        expected += self.segment_of(self.spool, names[2], 300, "full2")
        h.wait_count(self.server.url, STREAM, 810, timeout=60)
        holding = (f"cannot dead-letter a record, holding it and retrying segment={names[1]} "
                   f"offset={start} error=\"cannot append to {self.state}/deadletter/"
                   "deadletter.jsonl: No space left on device\"")
        h.poll(lambda: log_lines(relay.log_text(), "error", holding), 30, "the held record")
        held = (503, "dead letters cannot be written: their records are held and retried\n")
        h.poll(lambda: http_get(health) == held, 30, "/healthz 503 with the reason")
        self.assertTrue(relay.running)
        self.assertEqual(810, h.stream_count(self.server.url, STREAM))  # not past the bad one
        self.assertEqual(0, relay.stop())

        # Still full: the start goes on (the state is readable), and holds the record again.
        relay.start()
        h.poll(lambda: len(log_lines(relay.log_text(), "error", holding)) == 2, 30,
               "the record held again after the restart")
        self.assertEqual(1, len(log_lines(
            relay.log_text(), "warn", "state_dir is full, relaying anyway: the checkpoint is "
                                      f"written as soon as there is room state_dir={self.state}")))
        self.assertEqual(810, h.stream_count(self.server.url, STREAM))
        filler.unlink()
        h.poll(lambda: re.search(r" info dead letters written again after retries=\d+$",
                                 relay.log_text(), flags=re.M), 30, "the dead letter written")
        expected += [m for m in h.expected_messages("test", names[1], lines) if m[0] != bad]
        h.wait_count(self.server.url, STREAM, len(expected), timeout=60)
        h.poll(lambda: http_get(health) == (200, "ok\n"), 30, "/healthz ok again")

        def finished():
            segs = h.read_checkpoint(self.state / "checkpoint")["segments"]
            return all(n in segs and segs[n][3] for n in names)
        h.poll(finished, 30, "every segment finished in the checkpoint",
               ignore=(OSError, ValueError))
        self.assertEqual(0, relay.stop())
        dead = (self.state / "deadletter" / "deadletter.jsonl").read_text().splitlines()
        self.assertEqual(1, len(dead), dead)
        self.assertIn(f'"segment":"{names[1]}","start":{start},"end":{start + len(bad)},'
                      '"reason":"not JSON","line":"this line is not JSON\\n"}', dead[0])
        dump = h.dump_stream(self.server.url, STREAM)
        h.assert_checkpoint_covered(h.read_checkpoint(self.state / "checkpoint"), dump,
                                    deadlettered={f"test:{names[1]}:{start + len(bad)}"})
        h.check_exactly_once(dump, expected, "dead letter held while state_dir was full")

    # ---- --once that cannot finish ------------------------------------------------------

    def run_without_dac_override(self, relay, *args, timeout=60):
        """Run the relay as root without CAP_DAC_OVERRIDE/DAC_READ_SEARCH, so that a file
        of mode 000 cannot be opened (the tests run as root). Returns the exit code."""
        with open(relay.log_path, "ab") as log:
            log.write(f"==== unprivileged: {' '.join(args)}\n".encode())
            log.flush()
            return subprocess.run(
                ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--",
                 str(h.Tools.relay), "-c", str(relay.config_path), *args],
                stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                timeout=timeout).returncode

    def test_once_with_a_segment_it_cannot_open(self):
        """--once with a done segment of mode 000 among readable ones: it relays the others,
        names what it could not relay and exits 3. Once the segment is readable, the next
        --once relays it and exits 0."""
        names = h.segment_names(3)
        expected = self.segment_of(self.spool, names[0], 200, "open0")
        locked = self.segment_of(self.spool, names[1], 100, "open1")
        expected += self.segment_of(self.spool, names[2], 200, "open2")
        os.chmod(self.spool / names[1], 0)
        relay = self.relay(self.relay_config(self.server.url), start=False)
        mark = len(relay.log_text())
        self.assertEqual(3, self.run_without_dac_override(relay, "--once"))
        text = relay.log_text()[mark:]
        print(text.strip().splitlines()[-1], flush=True)
        self.assertEqual(1, len(log_lines(
            text, "warn", f"--once: segment not relayed completely segment={names[1]} "
                          "committed_offset=0 records_unacknowledged=0 opened=no")), text)
        self.assertEqual(1, len(log_lines(
            text, "error", "--once stopped before the spool was relayed, exit status 3 "
                           "records_unacknowledged=0 segments_left=1 checkpoint=written")), text)
        h.check_exactly_once(h.dump_stream(self.server.url, STREAM), expected,
                             "--once, one segment unreadable")
        os.chmod(self.spool / names[1], 0o444)
        self.assertEqual(0, self.run_without_dac_override(relay, "--once"))
        h.check_exactly_once(h.dump_stream(self.server.url, STREAM), expected + locked,
                             "--once again, the segment readable")

    def test_once_stopped_before_the_acks(self):
        """--once whose publishes cannot be acknowledged (no stream takes the subject),
        stopped by SIGTERM: exit 3, the log says how many records and segments are left,
        and the checkpoint moved past none of them. With the stream there, the next --once
        relays everything and exits 0."""
        names = h.segment_names(2)
        expected = self.segment_of(self.spool, names[0], 300, "term0")
        expected += self.segment_of(self.spool, names[1], 300, "term1")
        cfg = self.relay_config(self.server.url, subject="other.{type}",
                                shutdown_timeout="1s")
        relay = self.relay(cfg, start=False)
        relay.start("--once")
        h.poll(lambda: "no stream listens" in relay.log_text() or
               "no responders" in relay.log_text(), 30, "the refused publishes")
        self.assertEqual(3, relay.stop())
        text = relay.log_text()
        summary = [line for line in text.splitlines()
                   if " error --once stopped before the spool was relayed" in line]
        print(summary, flush=True)
        self.assertEqual(1, len(summary), text[-3000:])
        m = re.search(r" error --once stopped before the spool was relayed, exit status 3 "
                      r"records_unacknowledged=(\d+) segments_left=2 checkpoint=written$",
                      summary[0])
        self.assertTrue(m, summary[0])
        self.assertGreater(int(m.group(1)), 0)
        segs = h.read_checkpoint(self.state / "checkpoint")["segments"]
        self.assertEqual([0, 0], [segs[n][1] for n in names])
        h.create_stream(self.server.url, "OTHER", ["other.>"], storage="file", dup_window=900)
        self.assertEqual(0, relay.run_once())
        got = h.dump_stream(self.server.url, "OTHER")
        h.check_exactly_once(got, expected, "--once after a SIGTERM before the acks")

    # ---- a record nested deeper than the parsers go ----------------------------------------

    def deep_records(self, name):
        """A segment of: a good record, one nested 2000 deep (within the limit), one nested
        100,000 deep, a good record. Returns (lines, the too-deep one's start offset)."""
        good = h.many_records(2, seed=21, prefix="deep")
        within = b'{"type":"Delivery","n":' + b"[" * 1999 + b"1" + b"]" * 1999 + b"}\n"
        beyond = b'{"type":"Delivery","n":' + b"[" * 100000 + b"]" * 100000 + b"}\n"
        lines = [good[0], within, beyond, good[1]]
        h.write_segment(self.spool / name, lines)
        return lines, len(good[0]) + len(within)

    def dead_letters(self):
        path = self.state / "deadletter" / "deadletter.jsonl"
        return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []

    def test_nesting_deeper_than_the_parsers_go(self):
        """Both policies read a record nested 2000 deep, and refuse one nested 100,000 deep
        saying the same thing: "nesting deeper than 2048" (jansson's limit, which the
        built-in scanner and the Lua parser share), not "not JSON"."""
        name = h.segment_name()
        lines, start = self.deep_records(name)
        relay = self.relay(self.relay_config(self.server.url), start=False)
        self.assertEqual(0, relay.run_once())
        dead = self.dead_letters()
        self.assertEqual([(name, start, "nesting deeper than 2048")],
                         [(d["segment"], d["start"], d["reason"]) for d in dead])
        expected = [m for m in h.expected_messages("test", name, lines) if m[0] != lines[2]]
        h.check_exactly_once(h.dump_stream(self.server.url, STREAM), expected,
                             "built-in policy, deep records")

        # The Lua policy: log_record and kumo.serde.json_parse read the same records, and
        # the parse error names the same cause.
        shutil.rmtree(self.state)
        h.create_stream(self.server.url, "LUA", ["lua.>"], storage="file", dup_window=900)
        (self.tmp / "policy.lua").write_text(h.connection_policy(self.server.port, """      local ok, err = pcall(kumo.serde.json_parse, message:get_data())
      if not ok then kumo.reject(550, err) end
      local record = message:get_meta('log_record')
      client:publish { subject = 'lua.' .. record.type, payload = message:get_data() }"""))
        lua = self.relay(self.relay_config(
            self.server.url, policy={"script": str(self.tmp / "policy.lua"), "subject": None}),
            start=False, name="lua")
        self.assertEqual(0, lua.run_once())
        dead = self.dead_letters()
        self.assertEqual(1, len(dead), dead)
        self.assertEqual((name, start), (dead[0]["segment"], dead[0]["start"]))
        self.assertRegex(dead[0]["reason"], r"^rejected: 550 .*json_parse: nesting deeper "
                                            r"than 2048 at line 1 column \d+$")
        h.check_exactly_once(h.dump_stream(self.server.url, "LUA"), expected,
                             "Lua policy, deep records")

        # A Lua policy that reads a field, as the built-in one does for its subject: the same
        # decision and the same reason, word for word (lua_message.c push_log_record).
        shutil.rmtree(self.state)
        h.streamtool(self.server.url, "delete", "LUA")
        h.create_stream(self.server.url, "LUA", ["lua.>"], storage="file", dup_window=900)
        (self.tmp / "policy.lua").write_text(h.connection_policy(self.server.port, """      local record = message:get_meta('log_record')
      client:publish { subject = 'lua.' .. record.type, payload = message:get_data() }"""))
        self.assertEqual(0, lua.run_once())
        self.assertEqual([(name, start, "nesting deeper than 2048")],
                         [(d["segment"], d["start"], d["reason"]) for d in self.dead_letters()])
        h.check_exactly_once(h.dump_stream(self.server.url, "LUA"), expected,
                             "Lua policy reading log_record, deep records")


if __name__ == "__main__":
    import unittest
    unittest.main()
