"""Faults an operator causes: a SIGHUP after the spool list changed, two relays started on
one state_dir, a state_dir that fills up while a record must be dead-lettered, --once
that cannot finish, and a record nested deeper than the JSON parsers go. Each outcome is
checked exactly: the log line word for word, the exit status, every record once."""

import errno
import os
import re
import signal
import subprocess
import urllib.error
import urllib.request
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


def http_get(url):
    """(status, body) of a GET; 5xx answers are returned, not raised."""
    try:
        with urllib.request.urlopen(url, timeout=5) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as err:
        return err.code, err.read().decode()


def fill(directory):
    """Fill the filesystem of `directory` with a file until ENOSPC; returns its path."""
    path = Path(directory) / "filler"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        if exc.errno != errno.ENOSPC:
            raise
    finally:
        os.close(fd)
    return path


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


if __name__ == "__main__":
    import unittest
    unittest.main()
