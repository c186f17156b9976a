"""Fault tests, state directory: not writable, a regular file, under a file, disk full, a
checkpoint cut in half or scribbled on, a checkpoint from a different spool. Each gives a
clear error (checked word for word), none damages the checkpoint, and none moves an offset
past a record that is not in the stream.

The tests run as root, so chmod cannot make anything read-only: they use read-only mounts
and small tmpfs mounts (unmounted again at cleanup)."""

import os
import re
import shutil
import subprocess
import zlib
from pathlib import Path

import harness as h

STREAM = "KUMO"


def mount(*args):
    proc = subprocess.run(["mount", *map(str, args)], capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"mount {' '.join(map(str, args))}: {proc.stderr.strip()}")


def log_lines(text, level, message):
    """The log lines at `level` whose message is exactly `message` (timestamp aside)."""
    return [line for line in text.splitlines()
            if re.fullmatch(r"\S+ " + re.escape(f"{level} {message}"), line)]


fill = h.fill_filesystem


class StateDirTest(h.RelayTestCase):
    def setUp(self):
        super().setUp()
        self.server = self.nats()
        h.create_stream(self.server.url, STREAM, storage="file", dup_window=900)

    def mount_tmpfs(self, path, size="64k", ro=False):
        Path(path).mkdir(parents=True, exist_ok=True)
        mount("-t", "tmpfs", "-o", f"size={size}" + (",ro" if ro else ""), "tmpfs", path)
        self.addCleanup(subprocess.run, ["umount", "-l", str(path)], capture_output=True)

    def bind_readonly(self, path):
        """Bind-mount path on itself and make that mount read-only. Files the relay opened
        before stay writable (they belong to the mount beneath), as a remount of a busy
        filesystem would refuse."""
        mount("--bind", path, path)
        self.addCleanup(subprocess.run, ["umount", "-l", str(path)], capture_output=True)
        mount("-o", "remount,bind,ro", path)
        return lambda: mount("-o", "remount,bind,rw", path)

    def segment_of(self, name, n, prefix, plain=False):
        lines = h.many_records(n, seed=zlib.crc32(prefix.encode()), prefix=prefix)
        h.write_segment(self.spool / name, lines, plain=plain)
        return h.expected_messages("test", name, lines)

    def wait_committed(self, relay, n, timeout=60):
        """Until the checkpoint commits n records in all."""
        def committed():
            try:
                cp = h.read_checkpoint(self.state / "checkpoint")
            except (OSError, ValueError):
                return False
            return sum(e[2] for e in cp["segments"].values()) >= n
        h.poll(committed, timeout, f"a checkpoint committing {n} records")

    def wait_finished(self, *names, timeout=60):
        """Until the checkpoint shows each of these segments finished: after that it only
        changes when something new is read."""
        def finished():
            try:
                segs = h.read_checkpoint(self.state / "checkpoint")["segments"]
            except (OSError, ValueError):
                return False
            return all(n in segs and segs[n][3] for n in names)
        h.poll(finished, timeout, f"{', '.join(names)} finished in the checkpoint")

    def start_fails(self, relay, message, timeout=30, status=1):
        """The relay refuses to start: exit 1 and `message` logged as an error. Nothing is
        published and the checkpoint (if any) is byte for byte what it was."""
        cp = self.state / "checkpoint"
        before = cp.read_bytes() if cp.is_file() else None
        count = h.stream_count(self.server.url, STREAM)
        mark = len(relay.log_text())
        relay.start()
        rc = relay.wait(timeout)
        text = relay.log_text()[mark:]
        print(f"exit {rc}: {text.strip().splitlines()[-1] if text.strip() else ''}", flush=True)
        self.assertEqual(status, rc, text)
        self.assertEqual(1, len(log_lines(text, "error", message)), text)
        self.assertEqual(count, h.stream_count(self.server.url, STREAM))
        if cp.is_file():
            self.assertEqual(before, cp.read_bytes())
        else:
            self.assertIsNone(before)

    # ---- start-up refusals ----------------------------------------------------------

    def test_state_dir_read_only_mount(self):
        """state_dir is a read-only tmpfs (empty), then a used state_dir bind-mounted
        read-only: the relay refuses to start and says why."""
        expected = self.segment_of(h.segment_name(), 200, "ro")
        state_ro = self.tmp / "state-ro"
        self.mount_tmpfs(state_ro, ro=True)
        relay = self.relay(h.relay_config(self.spool, state_ro, self.server.url), start=False)
        # What --check refuses too: a configuration error (EX_CONFIG, relay/exit_codes.h).
        self.start_fails(relay, f"state_dir {state_ro}: Read-only file system", status=78)

        # A state_dir that worked, now read-only: its checkpoint stays as it was.
        relay = self.relay(self.relay_config(self.server.url), start=False, name="relay2")
        self.assertEqual(0, relay.run_once())
        restore = self.bind_readonly(self.state)
        self.start_fails(relay, f"state_dir {self.state}: Read-only file system", status=78)
        restore()
        self.assertEqual(0, relay.run_once())
        dump = h.dump_stream(self.server.url, STREAM)
        h.assert_checkpoint_covered(h.read_checkpoint(self.state / "checkpoint"), dump)
        h.check_exactly_once(dump, expected, "read-only state_dir")

    def test_state_dir_is_a_file_or_under_one(self):
        expected = self.segment_of(h.segment_name(), 200, "file")
        a_file = self.tmp / "state-file"
        a_file.write_text("not a directory\n")
        # YAML text: Relay would mkdir a state_dir given in a dict.
        relay = self.relay(h.to_yaml(h.relay_config(self.spool, a_file, self.server.url)),
                           start=False)
        self.start_fails(relay, f"state_dir {a_file}: not a directory", status=78)
        under = a_file / "state"
        relay = self.relay(h.to_yaml(h.relay_config(self.spool, under, self.server.url)),
                           start=False, name="relay2")
        self.start_fails(relay, f"cannot create state_dir {under}: Not a directory", status=78)
        self.assertEqual("not a directory\n", a_file.read_text())
        relay = self.relay(self.relay_config(self.server.url), start=False, name="relay3")
        self.assertEqual(0, relay.run_once())
        h.check_exactly_once(h.dump_stream(self.server.url, STREAM), expected,
                             "state_dir a file, then a directory")

    def test_checkpoint_cut_in_half_or_scribbled(self):
        names = h.segment_names(3)
        expected = self.segment_of(names[0], 3000, "cut0")
        expected += self.segment_of(names[1], 3000, "cut1")
        relay = self.relay(self.relay_config(self.server.url), start=False)
        self.assertEqual(0, relay.run_once())
        cp = self.state / "checkpoint"
        whole = cp.read_bytes()
        why = (f"checkpoint {cp}: the checkpoint is incomplete or damaged (its end line or "
               "checksum does not match); refusing to start rather than re-read or skip "
               "records (run with --reset-offsets to start over)")
        expected += self.segment_of(names[2], 3000, "cut2")
        cp.write_bytes(whole[: len(whole) // 2])
        self.start_fails(relay, why)
        # One digit of an offset changed, the length kept: the checksum catches it.
        text = whole.decode()
        m = re.search(r"^segment \S+ \d+ (\d+) ", text, flags=re.M)
        digit = m.start(1)
        bad = text[:digit] + ("1" if text[digit] != "1" else "2") + text[digit + 1:]
        cp.write_text(bad)
        self.start_fails(relay, why)
        cp.write_bytes(whole)  # the operator puts the good one back
        relay.start()
        h.wait_count(self.server.url, STREAM, len(expected), timeout=60)
        self.assertEqual(0, relay.stop())
        self.assertIn("published=3000 ", relay.log_text().splitlines()[-1])
        dump = h.dump_stream(self.server.url, STREAM)
        h.assert_checkpoint_covered(h.read_checkpoint(cp), dump)
        h.check_exactly_once(dump, expected, "damaged checkpoint refused, good one restored")

    def test_checkpoint_from_a_different_spool(self):
        other_spool = self.tmp / "other-spool"
        other_state = self.tmp / "other-state"
        other_spool.mkdir()
        name = h.segment_name()
        lines = h.many_records(500, seed=5, prefix="other")
        h.write_segment(other_spool / name, lines)
        other = self.relay(h.relay_config(other_spool, other_state, self.server.url,
                                          relay_id="other"), start=False, name="other")
        self.assertEqual(0, other.run_once())
        expected = h.expected_messages("other", name, lines)
        # Our spool has a segment of the same name: the foreign offsets would skip into it.
        expected += self.segment_of(name, 500, "ours")
        self.state.mkdir()
        shutil.copy(other_state / "checkpoint", self.state / "checkpoint")
        relay = self.relay(self.relay_config(self.server.url), start=False)
        self.start_fails(
            relay, f"checkpoint {self.state}/checkpoint belongs to spool {other_spool}, not "
                   f"{self.spool}; refusing to apply its offsets (use --reset-offsets to start "
                   "over)")
        self.assertEqual(0, relay.run_once("--reset-offsets"))
        set_aside = list(self.state.glob("checkpoint.reset-*"))
        self.assertEqual(1, len(set_aside))
        self.assertEqual((other_state / "checkpoint").read_bytes(), set_aside[0].read_bytes())
        dump = h.dump_stream(self.server.url, STREAM)
        h.assert_checkpoint_covered(h.read_checkpoint(self.state / "checkpoint"), dump)
        h.check_exactly_once(dump, expected, "foreign checkpoint refused, then reset")

    # ---- while running ------------------------------------------------------------------

    def test_state_dir_turns_read_only_while_running(self):
        """The state_dir becomes read-only under a running relay: it logs the failure once,
        keeps relaying, the checkpoint stays whole and unchanged; killed then, it re-sends
        from the last checkpoint and the stream still holds each record once."""
        names = h.segment_names(2)
        expected = self.segment_of(names[0], 4000, "rw0")
        live = self.segment(names[1])
        live_lines = h.many_records(8000, seed=7, prefix="rwlive")
        live.write(live_lines[:4000])
        live.flush()
        relay = self.relay(self.relay_config(self.server.url))
        h.wait_count(self.server.url, STREAM, 8000, timeout=60)
        self.wait_committed(relay, 8000)
        self.wait_finished(names[0])
        cp = self.state / "checkpoint"
        saved = cp.read_bytes()
        restore = self.bind_readonly(self.state)
        live.write(live_lines[4000:])
        live.close()
        expected += h.expected_messages("test", live.name, live_lines)
        h.wait_count(self.server.url, STREAM, len(expected), timeout=60)
        h.poll(lambda: "cannot write the checkpoint" in relay.log_text(), 30,
               "the checkpoint failure in the log")
        failures = [line for line in relay.log_text().splitlines()
                    if "cannot write the checkpoint" in line]
        print(failures[0], flush=True)
        self.assertRegex(failures[0], r" error cannot write the checkpoint, offsets are not "
                         r"saved failures=1 error=\"cannot create " + re.escape(str(self.state))
                         + r"/\.checkpoint\.tmp: Read-only file system\"$")
        self.assertEqual(1, len(failures))  # once, not at every interval
        self.assertTrue(relay.running)
        self.assertEqual(saved, cp.read_bytes())
        self.assertEqual(-9, relay.kill())
        restore()
        self.assertEqual(saved, cp.read_bytes())
        relay.start()
        h.poll(lambda: h.read_checkpoint(cp)["segments"].get(live.name, (0, 0, 0, False))[3],
               60, "the live segment finished in the checkpoint", ignore=(ValueError, OSError))
        self.assertEqual(0, relay.stop())
        # The restart re-sent the 4,000 records the checkpoint could not save, and JetStream
        # answered each as a duplicate.
        last = relay.log_text().splitlines()[-1]
        print(last, flush=True)
        self.assertRegex(last, r" stopped records=4000 published=4000 acked=4000 "
                               r"duplicates=4000 ")
        dump = h.dump_stream(self.server.url, STREAM)
        h.assert_checkpoint_covered(h.read_checkpoint(cp), dump)
        h.check_exactly_once(dump, expected, "state_dir read-only while running")

    def test_disk_full(self):
        """state_dir on a 64 KiB tmpfs. Full at start: the relay starts all the same (the
        state is readable) and writes the checkpoint once there is room. Full while
        running: the failure is logged, the old checkpoint stays whole, and once there is
        room again the checkpoint catches up. Full when a record must be dead-lettered: the
        record is held and the checkpoint stays before it until the dead letter is written
        (test_faults_ops covers that in detail)."""
        self.mount_tmpfs(self.state, size="64k")
        names = h.segment_names(4)
        expected = self.segment_of(names[0], 3000, "full0")
        filler = fill(self.state)
        relay = self.relay(self.relay_config(self.server.url))
        h.wait_count(self.server.url, STREAM, 3000, timeout=60)
        text = relay.log_text()
        self.assertEqual(1, len(log_lines(
            text, "error", "cannot write the checkpoint, offsets are not saved failures=1 "
                           f"error=\"cannot write {self.state}/.checkpoint.tmp: No space left "
                           "on device\"")), text)
        self.assertEqual(1, len(log_lines(
            text, "warn", "state_dir is full, relaying anyway: the checkpoint is written as "
                          f"soon as there is room state_dir={self.state}")), text)
        self.assertFalse((self.state / ".checkpoint.tmp").exists())
        self.assertFalse((self.state / "checkpoint").exists())
        filler.unlink()
        self.wait_finished(names[0])

        cp = self.state / "checkpoint"
        saved = cp.read_bytes()
        filler = fill(self.state)
        expected += self.segment_of(names[1], 3000, "full1")
        h.wait_count(self.server.url, STREAM, 6000, timeout=60)
        h.poll(lambda: relay.log_text().count("the checkpoint, offsets are not saved "
                                              "failures=1 ") == 2,
               30, "the second checkpoint failure in the log")
        self.assertEqual(saved, cp.read_bytes())
        self.assertTrue(relay.running)
        filler.unlink()
        self.wait_committed(relay, 6000)
        h.poll(lambda: len(re.findall(r" info checkpoint written again after failures=\d+$",
                                      relay.log_text(), flags=re.M)) == 2, 30,
               "the recovery in the log")

        # Full again, and a record that must be dead-lettered arrives: held, not skipped.
        filler = fill(self.state)
        good = h.many_records(20, seed=9, prefix="dl")
        bad = b"this line is not JSON\n"
        lines = good[:10] + [bad] + good[10:]
        h.write_segment(self.spool / names[2], lines, plain=True)
        start = sum(len(x) for x in good[:10])
        holding = (f"cannot dead-letter a record, holding it and retrying segment={names[2]} "
                   f"offset={start} error=\"cannot append to {self.state}/deadletter/"
                   "deadletter.jsonl: No space left on device\"")
        h.poll(lambda: log_lines(relay.log_text(), "error", holding), 30, "the held record")
        entry = h.read_checkpoint(cp)["segments"].get(names[2])
        print(f"checkpoint entry of {names[2]} while its record is held: {entry}", flush=True)
        self.assertTrue(entry is None or entry[1] <= start)
        self.assertTrue(relay.running)
        filler.unlink()
        all_msgs = h.expected_messages("test", names[2], lines)
        expected += [m for m in all_msgs if m[0] != bad]
        h.wait_count(self.server.url, STREAM, len(expected), timeout=60)
        self.wait_finished(names[2])
        self.assertEqual(0, relay.stop())
        dead = (self.state / "deadletter" / "deadletter.jsonl").read_text().splitlines()
        self.assertEqual(1, len(dead))
        self.assertIn(f'"segment":"{names[2]}","start":{start},"end":{start + len(bad)},'
                      '"reason":"not JSON"', dead[0])
        dump = h.dump_stream(self.server.url, STREAM)
        h.assert_checkpoint_covered(h.read_checkpoint(cp), dump,
                                    deadlettered={f"test:{names[2]}:{start + len(bad)}"})
        h.check_exactly_once(dump, expected, "disk full")

if __name__ == "__main__":
    import unittest
    unittest.main()
