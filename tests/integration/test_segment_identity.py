"""A segment's identity across a stop: a name deleted and written again while the relay
is stopped, with the inode number the file system hands out again (ext4 does), is read
from its start as a new generation; so is a segment the checkpoint (edited by hand) says
is longer than it is. Neither is ever called finished without being read. Every test
prints what it did and the final count line."""

import os
import re
import zlib

import harness as h

STREAM = "KUMO"


def rewrite_checkpoint(path, edit):
    """Apply edit(fields) to every segment line's fields ([name, inode, offset, ordinal,
    finished, ...], as bytes) and write the checkpoint back with a valid end line, as an
    operator's script would."""
    lines = path.read_bytes().split(b"\n")[:-1]
    body = []
    for line in lines[:-1]:  # the end line is made again
        if line.startswith(b"segment "):
            fields = line.split(b" ")[1:]
            edit(fields)
            line = b"segment " + b" ".join(fields)
        body.append(line + b"\n")
    text = b"".join(body)
    count = sum(1 for line in body if line.startswith(b"segment "))
    path.write_bytes(text + f"end {count} {zlib.crc32(text) & 0xffffffff:08x}\n".encode())


class SegmentIdentityTest(h.RelayTestCase):
    def setUp(self):
        super().setUp()
        self.server = self.nats()
        h.create_stream(self.server.url, STREAM, storage="file", dup_window=900)

    def records(self, n, prefix):
        return h.many_records(n, seed=zlib.crc32(prefix.encode()), prefix=prefix)

    def status(self, relay, name):
        out = h.run_command([h.Tools.relay, "status", "-c", relay.config_path])
        return re.search(rf"^{re.escape(name)} .*$", out, re.M).group(0)

    def test_made_again_with_the_same_inode_while_stopped(self):
        name = h.segment_names(1)[0]
        old = self.records(200, "old")
        h.write_segment(self.spool / name, old)
        relay = self.relay(self.relay_config(self.server.url), start=False)
        self.assertEqual(0, relay.run_once())
        inode = os.stat(self.spool / name).st_ino

        # Deleted and made again at once: ext4 hands the freed inode number to the next
        # file created, so the new file is usually the old one's number.
        os.unlink(self.spool / name)
        os.close(os.open(self.spool / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        new = self.records(300, "new")
        h.write_segment(self.spool / name, new)  # spoolwrite appends to the file made
        reused = os.stat(self.spool / name).st_ino == inode
        if not reused:
            # This file system did not reuse it: make the checkpoint name the new file's
            # inode, which is what reuse looks like to the relay.
            new_inode = str(os.stat(self.spool / name).st_ino).encode()
            rewrite_checkpoint(self.state / "checkpoint",
                               lambda f: f.__setitem__(1, new_inode))
        self.assertEqual(os.stat(self.spool / name).st_ino,
                         h.read_checkpoint(self.state / "checkpoint")["segments"][name][0])
        print(f"{name} deleted and written again with 300 new records; inode "
              f"{'reused by the file system' if reused else 'set in the checkpoint'}",
              flush=True)

        self.assertRegex(self.status(relay, name),
                         rf"^{re.escape(name)} +replaced +0 +0 +300 +{sum(map(len, new))}$")
        self.assertEqual(0, relay.run_once())
        self.assertRegex(relay.log_text(),
                         r" warn segment starts with other bytes than at the checkpoint, "
                         r"reading it from the start segment=" + re.escape(name)
                         + " generation=1\n")
        dump = h.dump_stream(self.server.url, STREAM)
        h.check_exactly_once(dump, h.expected_messages("test", name, old)
                             + h.expected_messages("test", f"{name}~1", new),
                             "made again with the same inode")
        self.assertRegex(self.status(relay, name),
                         rf"^{re.escape(name)} +finished +300 +{sum(map(len, new))} +0 +0$")

    def test_made_again_smaller_with_the_same_inode_while_stopped(self):
        """The new file is smaller than the old one was: its size tells, before its
        first bytes are even compared. The old one was read while live, so its entry is
        not finished."""
        name = h.segment_names(1)[0]
        old = self.records(2000, "old")
        h.write_segment(self.spool / name, old, done=False)
        relay = self.relay(self.relay_config(self.server.url))
        h.wait_count(self.server.url, STREAM, 2000, timeout=60)
        h.poll(lambda: h.read_checkpoint(self.state / "checkpoint")["segments"][name][2] == 2000,
               30, "the old file committed", ignore=(ValueError, OSError, KeyError))
        self.assertEqual(0, relay.stop())
        inode = os.stat(self.spool / name).st_ino
        os.unlink(self.spool / name)
        os.close(os.open(self.spool / name, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
        new = self.records(100, "new")
        h.write_segment(self.spool / name, new)
        reused = os.stat(self.spool / name).st_ino == inode
        if not reused:
            new_inode = str(os.stat(self.spool / name).st_ino).encode()
            rewrite_checkpoint(self.state / "checkpoint",
                               lambda f: f.__setitem__(1, new_inode))
        print(f"{name}: 2000 records read live, then made again with 100; inode "
              f"{'reused by the file system' if reused else 'set in the checkpoint'}",
              flush=True)
        self.assertEqual(0, relay.run_once())
        self.assertRegex(relay.log_text(),
                         r" warn segment is smaller than at the checkpoint, reading it from the "
                         r"start segment=" + re.escape(name) + " generation=1\n")
        dump = h.dump_stream(self.server.url, STREAM)
        h.check_exactly_once(dump, h.expected_messages("test", name, old)
                             + h.expected_messages("test", f"{name}~1", new),
                             "made again smaller")

    def test_checkpoint_offset_past_the_end_is_read_again(self):
        """Edited by hand: a zstd segment's entry says more was committed than the file
        holds (not finished), a plain one's says finished past its end. Both are read
        again from the start as a new generation, with a warning; neither is finished
        silently."""
        names = h.segment_names(2)
        zlines = self.records(200, "z")
        plines = self.records(100, "p")
        h.write_segment(self.spool / names[0], zlines)
        h.write_segment(self.spool / names[1], plines, plain=True)
        relay = self.relay(self.relay_config(self.server.url), start=False)
        self.assertEqual(0, relay.run_once())
        zsize, psize = sum(map(len, zlines)), sum(map(len, plines))

        def edit(fields):
            if fields[0] == names[0].encode():
                fields[2], fields[3], fields[4] = str(zsize + 5000).encode(), b"250", b"0"
            else:
                fields[2], fields[3], fields[4] = str(psize + 5000).encode(), b"150", b"1"
        rewrite_checkpoint(self.state / "checkpoint", edit)
        self.assertEqual(0, relay.run_once())
        log = relay.log_text()
        self.assertRegex(log, r" warn segment ends before the checkpoint's offset, reading it "
                         r"from the start segment=" + re.escape(names[0])
                         + f" offset={zsize + 5000} decoded={zsize} generation=1\n")
        self.assertRegex(log, r" warn segment ends before the checkpoint's offset, reading it "
                         r"from the start segment=" + re.escape(names[1]) + " generation=1\n")
        dump = h.dump_stream(self.server.url, STREAM)
        h.check_exactly_once(dump, h.expected_messages("test", names[0], zlines)
                             + h.expected_messages("test", names[1], plines)
                             + h.expected_messages("test", f"{names[0]}~1", zlines)
                             + h.expected_messages("test", f"{names[1]}~1", plines),
                             "offset past the end")
        segs = h.read_checkpoint(self.state / "checkpoint")["segments"]
        self.assertEqual((zsize, 200, True), segs[names[0]][1:])
        self.assertEqual((psize, 100, True), segs[names[1]][1:])
