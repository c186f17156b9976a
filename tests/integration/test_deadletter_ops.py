"""Operating the dead-letter file: logrotate's create mode (mv, then SIGHUP) and
`deadletter replay` across the rotation, its size in /metrics, and a replay of a big file
in bounded memory.

Dead letters here are spool lines that are not JSON: each is dead-lettered with its line
kept, so `deadletter replay` hands back exactly those bytes. The replays write to a spool
directory of their own (a second configuration with the same state_dir) that the running
relay does not watch, so what a replay wrote is its segment, read back whole."""

import hashlib
import os
import re
import signal
import stat
import subprocess
import sys

import harness as h

STREAM = "KUMO"


def bad_lines(tag, n):
    return [f"not json {tag}-{i:04d}\n".encode() for i in range(n)]


metric = h.metric


class DeadletterOpsTest(h.RelayTestCase):
    def setUp(self):
        super().setUp()
        self.server = self.nats()
        h.create_stream(self.server.url, STREAM, ["kumo.>"], dup_window=600)
        self.metrics_port = h.free_port()
        self.letters = self.state / "deadletter" / "deadletter.jsonl"
        self.rotated = self.state / "deadletter" / "deadletter.jsonl.1"
        self.replays = self.tmp / "replayed"
        self.replayer = h.Relay(h.relay_config(self.replays, self.state, self.server.url),
                                self.tmp, start=False, name="replayer")

    def config(self):
        return self.relay_config(self.server.url,
                                 metrics={"listen": f"127.0.0.1:{self.metrics_port}"})

    def dead_letter(self, lines, path=None):
        """Writes lines as a segment and waits until the file the relay appends to (path)
        holds its dead letters: line counts only grow by exactly these."""
        path = path or self.letters
        before = path.read_bytes().count(b"\n") if path.exists() else 0
        h.write_segment(self.spool / h.segment_name(), lines)
        h.poll(lambda: path.exists() and path.read_bytes().count(b"\n") == before + len(lines),
               30, f"{len(lines)} dead letters in {path.name}")

    def replay(self):
        """Runs `deadletter replay`; returns its output and the bytes of the segment it
        wrote (b"" when none)."""
        before = set(os.listdir(self.replays))
        out = h.run_command([h.Tools.relay, "deadletter", "replay", "-c",
                             self.replayer.config_path])
        new = sorted(set(os.listdir(self.replays)) - before)
        self.assertLessEqual(len(new), 1, new)
        data = (self.replays / new[0]).read_bytes() if new else b""
        if new:
            self.assertRegex(out, rf"^replayed \d+ dead letters as segment "
                                  rf"{re.escape(str(self.replays / new[0]))}\n")
        return out, data

    def rotate(self):
        """What logrotate's create mode does: rename, then a new file of the same mode."""
        os.rename(self.letters, self.rotated)
        fd = os.open(self.letters, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o640)
        os.close(fd)

    def test_rotation_with_sighup_loses_and_doubles_nothing(self):
        """mv + a new file + SIGHUP: dead letters written before the SIGHUP stay in the
        rotated file (made read-only), those after go to the new one. A replay after the
        rotation hands back exactly what no replay took yet: the rest of the rotated file,
        then the new file from its start; later replays take only what is new."""
        relay = self.relay(self.config())
        a, b, c, d, e = (bad_lines(t, n) for t, n in
                         (("a", 50), ("b", 30), ("c", 20), ("d", 40), ("e", 10)))
        self.dead_letter(a)
        out, data = self.replay()
        self.assertEqual(b"".join(a), data)
        self.dead_letter(b)
        self.rotate()
        self.dead_letter(c, self.rotated)  # the relay has not reopened yet
        relay.proc.send_signal(signal.SIGHUP)
        h.poll(lambda: "dead letters now go to a new file" in relay.log_text(), 30,
               "the relay to reopen the dead-letter file")
        old = self.rotated.read_bytes()
        self.assertEqual(0o440, stat.S_IMODE(self.rotated.stat().st_mode))
        self.dead_letter(d)
        self.assertEqual(old, self.rotated.read_bytes(), "the rotated file is left alone")
        self.assertEqual(len(a + b + c), old.count(b"\n"))
        self.assertEqual(len(d), self.letters.read_bytes().count(b"\n"))
        self.assertEqual(0o640, stat.S_IMODE(self.letters.stat().st_mode))

        out, data = self.replay()
        self.assertTrue(out.startswith(f"replayed {len(b + c + d)} dead letters as segment "), out)
        self.assertEqual(b"".join(b + c + d), data)
        self.dead_letter(e)
        out, data = self.replay()
        self.assertEqual(b"".join(e), data)
        self.assertEqual(f"no dead letters to replay since the last replay ({self.letters})\n",
                         self.replay()[0])
        self.assertEqual(0, relay.stop())

    def test_replay_between_rotation_and_sighup_waits_for_the_relay(self):
        """A replay that runs after logrotate renamed the file but before the relay reopened
        it (the relay still appends to the rotated file) takes the rotated file's rest and
        stays on it; once the relay reopened, the next replay takes what the rotated file
        got meanwhile, then the new file."""
        relay = self.relay(self.config())
        a, b, c, d = (bad_lines(t, n) for t, n in (("a", 25), ("b", 15), ("c", 5), ("d", 35)))
        self.dead_letter(a)
        self.rotate()
        self.dead_letter(b, self.rotated)
        out, data = self.replay()
        self.assertEqual(b"".join(a + b), data)
        self.assertIn(f"{self.letters} was rotated but the relay still appends to "
                      f"{self.rotated}: reload it (SIGHUP)", out)
        self.dead_letter(c, self.rotated)
        relay.proc.send_signal(signal.SIGHUP)
        h.poll(lambda: "dead letters now go to a new file" in relay.log_text(), 30,
               "the relay to reopen the dead-letter file")
        self.dead_letter(d)
        out, data = self.replay()
        self.assertEqual(b"".join(c + d), data)
        self.assertEqual(0, relay.stop())

    def test_replay_reads_every_uncompressed_rotation(self):
        """Rotated twice since the last replay, without compression (deadletter.jsonl.2 and
        .1): the replay reads the rest of the file it stopped in, the one rotated after it,
        then the new file, in that order."""
        relay = self.relay(self.config())
        a, b, c, d = (bad_lines(t, n) for t, n in (("a", 5), ("b", 6), ("c", 7), ("d", 8)))
        self.dead_letter(a)
        self.replay()
        self.dead_letter(b)
        for lines in (c, d):
            second = self.state / "deadletter" / "deadletter.jsonl.2"
            if self.rotated.exists():
                os.rename(self.rotated, second)
            self.rotate()
            relay.proc.send_signal(signal.SIGHUP)
            h.poll(lambda: relay.log_text().count("dead letters now go to a new file")
                   == (1 if lines is c else 2), 30, "the relay to reopen the dead-letter file")
            self.dead_letter(lines)
        self.assertEqual(b"".join(b + c + d), self.replay()[1])
        self.assertEqual(0, relay.stop())

    def test_replay_refuses_to_skip_a_compressed_rotation(self):
        """The file the last replay stopped in was rotated and compressed away: its later
        dead letters cannot be read, so the replay says so and replays nothing rather than
        skip them; removing the mark replays the new file from its start."""
        relay = self.relay(self.config())
        a, b, c = bad_lines("a", 5), bad_lines("b", 7), bad_lines("c", 9)
        self.dead_letter(a)
        self.replay()
        self.dead_letter(b)
        self.rotate()
        relay.proc.send_signal(signal.SIGHUP)
        h.poll(lambda: "dead letters now go to a new file" in relay.log_text(), 30,
               "the relay to reopen the dead-letter file")
        self.dead_letter(c)
        subprocess.run(["gzip", str(self.rotated)], check=True)
        replays = os.listdir(self.replays)
        proc = subprocess.run([h.Tools.relay, "deadletter", "replay", "-c",
                               self.replayer.config_path], capture_output=True, text=True)
        self.assertEqual(1, proc.returncode)
        self.assertIn("deadletter.jsonl was rotated since the last replay, and the file it was "
                      "replayed from", proc.stderr)
        self.assertEqual(replays, os.listdir(self.replays), "no replay segment")
        (self.state / "deadletter" / "replayed").unlink()
        self.assertEqual(b"".join(c), self.replay()[1])
        self.assertEqual(0, relay.stop())

    def test_metric_is_the_file_size(self):
        """kumo_nats_relay_deadletter_file_bytes is the size of the file dead letters are
        appended to: the new one after a rotation."""
        relay = self.relay(self.config())
        base = f"http://127.0.0.1:{self.metrics_port}/metrics"

        def gauge_is(path):
            status, text = h.http_get(base)
            return status == 200 and metric(text, "deadletter_file_bytes") == \
                path.stat().st_size
        self.dead_letter(bad_lines("a", 40))
        h.poll(lambda: gauge_is(self.letters), 10, "the gauge to be the file's size",
               ignore=(OSError,))
        self.assertGreater(self.letters.stat().st_size, 1000)
        self.rotate()
        relay.proc.send_signal(signal.SIGHUP)
        h.poll(lambda: "dead letters now go to a new file" in relay.log_text(), 30,
               "the relay to reopen the dead-letter file")
        self.dead_letter(bad_lines("b", 3))
        h.poll(lambda: gauge_is(self.letters), 10, "the gauge to be the new file's size",
               ignore=(OSError,))
        self.assertEqual(0, relay.stop())

    def test_replay_of_a_big_file_streams(self):
        """A 200 MB dead-letter file is replayed with a peak RSS far below its size, every
        line once, in order."""
        self.letters.parent.mkdir(parents=True)
        pad = "x" * 1000
        digest, lines, size = hashlib.sha256(), 0, 0
        with open(self.letters, "wb", buffering=1 << 20) as f:
            while size < 200 * 1024 * 1024:
                chunk = [(f'{{"time":1,"segment":"s","start":{i},"end":{i + 1},'
                          f'"reason":"not_json","line":"r{i:08d} {pad}\\n"}}\n').encode()
                         for i in range(lines, lines + 10000)]
                for line in chunk:
                    digest.update(line[line.index(b'"line":"') + 8:-5] + b"\n")
                data = b"".join(chunk)
                f.write(data)
                size += len(data)
                lines += len(chunk)
        before = set(os.listdir(self.replays))
        measure = ("import resource, subprocess, sys\n"
                   "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
                   "print(p.returncode, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)\n"
                   "print(p.stdout + p.stderr, end='')\n")
        out = subprocess.run([sys.executable, "-c", measure, h.Tools.relay, "deadletter",
                              "replay", "-c", self.replayer.config_path],
                             capture_output=True, text=True, timeout=300).stdout
        status, peak_kb = map(int, out.splitlines()[0].split())
        self.assertEqual(0, status, out)
        new = sorted(set(os.listdir(self.replays)) - before)
        self.assertEqual(1, len(new))
        self.assertEqual(f"replayed {lines} dead letters as segment {self.replays / new[0]}",
                         out.splitlines()[1])
        got = hashlib.sha256()
        with open(self.replays / new[0], "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                got.update(block)
        self.assertEqual(digest.hexdigest(), got.hexdigest(), "every line once, in order")
        print(f"\n    replay of {size} bytes, {lines} lines: peak RSS {peak_kb} kB",
              file=sys.stderr)
        if not h.SANITIZED:  # ASan's quarantine keeps every freed line buffer resident
            self.assertLess(peak_kb, 64 * 1024, f"peak RSS {peak_kb} kB")
