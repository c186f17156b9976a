"""Fault tests: the relay, the server or the cluster dies while records are relayed, and
the stream must still hold every record exactly once, byte for byte, with its Nats-Msg-Id.

Random choices come from one seed, printed at the start of each test; set KNR_FAULT_SEED
to replay a run. Every test prints what it did and a final line
"expected N, stored N, missing 0, duplicated 0, unexpected 0"."""

import os
import random
import re
import time

import harness as h

STREAM = "KUMO"
DUP_WINDOW = 900  # seconds: longer than any test here, so every replay is deduplicated


def fault_seed(test):
    seed = int(os.environ.get("KNR_FAULT_SEED") or random.SystemRandom().randrange(2 ** 32))
    print(f"\n{test.id()}: seed {seed} (KNR_FAULT_SEED={seed} replays it)", flush=True)
    return random.Random(seed)


def chunks(lines, n):
    """lines cut into n consecutive pieces of (nearly) equal size."""
    size, extra = divmod(len(lines), n)
    out, at = [], 0
    for i in range(n):
        step = size + (1 if i < extra else 0)
        out.append(lines[at:at + step])
        at += step
    return out


def wait_at_least(url, n, timeout, what):
    """Poll the stream's count until it reaches n (through server restarts); returns it."""
    return h.poll(lambda: (c := h.stream_count(url, STREAM)) >= n and c, timeout,
                  f"{what}: {n} messages in the stream", interval=0.05, ignore=(AssertionError,))


def log_count(text, pattern):
    return len(re.findall(pattern, text, flags=re.M))


class FaultTest(h.RelayTestCase):
    def spool_with_live(self, done_segments, per_segment, live_records, prefix):
        """done_segments done zstd segments of per_segment records, and a live zstd
        segment (returned, nothing written yet) that gets live_records records. Returns
        (expected messages of the done ones, live writer, live lines)."""
        names = h.segment_names(done_segments + 1)
        expected = []
        for i, name in enumerate(names[:-1]):
            lines = h.many_records(per_segment, seed=i, prefix=f"{prefix}{i}-")
            h.write_segment(self.spool / name, lines)
            expected += h.expected_messages("test", name, lines)
        live = self.segment(names[-1])
        live_lines = h.many_records(live_records, seed=99, prefix=f"{prefix}live-")
        return expected, live, live_lines

    # ---- 1 ------------------------------------------------------------------------------

    def test_relay_killed_at_random_moments(self):
        """kill -9 the relay 12 times while 100,000 records (four done zstd segments, one
        live and growing) are relayed; restart it each time."""
        rng = fault_seed(self)
        started = time.monotonic()
        server = self.nats()
        h.create_stream(server.url, STREAM, storage="file", dup_window=DUP_WINDOW)
        kills = 12
        expected, live, live_lines = self.spool_with_live(4, 20000, 20000, "k")
        pieces = chunks(live_lines, kills + 1)
        relay = self.relay(self.relay_config(server.url, jetstream={"max_in_flight": 4096}),
                           start=False)
        # Kill points: a stream count to reach, then a random extra moment (0-300 ms), so
        # kills land during start-up, replays, steady relaying and checkpoint writes.
        targets = sorted(rng.sample(range(1000, 95000), kills))
        for i in range(kills):
            live.write(pieces[i])
            relay.start()
            reached = wait_at_least(server.url, min(targets[i], 80000 + live.records // 2),
                                    120, f"kill {i + 1}")
            delay = rng.uniform(0, 0.3)
            time.sleep(delay)  # a random moment, not a wait for a condition
            self.assertEqual(-9, relay.kill())
            count = h.stream_count(server.url, STREAM)
            cp = h.read_checkpoint(self.state / "checkpoint")  # whole, never torn
            committed = sum(e[2] for e in cp["segments"].values())
            print(f"kill {i + 1}: target {targets[i]} (count {reached} seen) + {delay:.3f}s; "
                  f"stream {count}, checkpoint commits {committed}", flush=True)
            # Every committed record is in the stream: the checkpoint never runs ahead.
            self.assertLessEqual(committed, count)
        live.write(pieces[-1])
        live.close()
        expected += h.expected_messages("test", live.name, live_lines)
        self.assertEqual(100000, len(expected))
        relay.start()
        h.wait_count(server.url, STREAM, len(expected), timeout=180)
        self.assertEqual(0, relay.stop())
        dump = h.dump_stream(server.url, STREAM)
        h.assert_checkpoint_covered(h.read_checkpoint(self.state / "checkpoint"), dump)
        print(f"relay killed {kills} times, {relay.runs} runs, "
              f"{time.monotonic() - started:.1f}s", flush=True)
        h.check_exactly_once(dump, expected, "relay kill -9 x12")

    # ---- 2 ------------------------------------------------------------------------------

    def test_nats_server_killed_twice(self):
        """kill -9 nats-server (file storage) twice mid-stream, restart it on the same port
        and store; the relay rides through without a restart."""
        rng = fault_seed(self)
        started = time.monotonic()
        server = self.nats()
        h.create_stream(server.url, STREAM, storage="file", dup_window=DUP_WINDOW)
        expected, live, live_lines = self.spool_with_live(3, 15000, 15000, "s")
        pieces = chunks(live_lines, 3)
        live.write(pieces[0])
        relay = self.relay(self.relay_config(server.url, jetstream={"max_in_flight": 4096}))
        pid = relay.pid
        for i, target in enumerate((rng.randrange(8000, 20000), rng.randrange(28000, 42000))):
            reached = wait_at_least(server.url, target, 120, f"server kill {i + 1}")
            server.kill()
            down = rng.uniform(0.2, 2.0)
            time.sleep(down)  # how long the server stays away: a chosen duration
            live.write(pieces[i + 1])
            server.start()
            print(f"server kill {i + 1} at count >= {target} ({reached} seen), down "
                  f"{down:.2f}s", flush=True)
        live.close()
        expected += h.expected_messages("test", live.name, live_lines)
        h.wait_count(server.url, STREAM, len(expected), timeout=180)
        self.assertTrue(relay.running)
        self.assertEqual(pid, relay.pid)
        self.assertEqual(1, relay.runs)
        log = relay.log_text()
        self.assertEqual(2, log_count(log, r" info reconnected to nats "), log[-3000:])
        self.assertEqual(0, relay.stop())
        dump = h.dump_stream(server.url, STREAM)
        print(f"nats-server killed twice, relay pid {pid} never restarted, "
              f"{time.monotonic() - started:.1f}s", flush=True)
        h.check_exactly_once(dump, expected, "nats-server kill -9 x2")

    # ---- 3 ------------------------------------------------------------------------------

    def test_cluster_stream_leader_stopped_and_back(self):
        """Three-server JetStream cluster, stream with 3 replicas; stop the stream's leader
        mid-stream, bring it back later. The relay has all three URLs."""
        rng = fault_seed(self)
        started = time.monotonic()
        cluster = self.cluster(3)
        h.create_stream(cluster.url, STREAM, storage="file", replicas=3, dup_window=DUP_WINDOW,
                        timeout=60)
        expected, live, live_lines = self.spool_with_live(3, 15000, 15000, "c")
        pieces = chunks(live_lines, 3)
        live.write(pieces[0])
        relay = self.relay(self.relay_config(cluster.urls,
                                             jetstream={"max_in_flight": 4096}))
        pid = relay.pid
        target = rng.randrange(8000, 20000)
        reached = wait_at_least(cluster.url, target, 120, "leader stop")
        leader = h.poll(lambda: cluster.stream_leader(STREAM), 30, "a stream leader",
                        ignore=(AssertionError,))
        # The hard case: the leader is the server the relay is connected to, so the relay
        # loses its connection (and the acks on it) while the stream elects a new leader.
        # Leader stepdowns (each picks another replica) move the leadership there.
        relay_url = h.poll(lambda: re.findall(r" connected to nats server=(\S+)",
                                              relay.log_text()), 30, "the relay's server")[-1]
        stepdowns = 0
        while leader.url != relay_url and stepdowns < 20:
            h.stream_leader_stepdown(leader.url, STREAM)
            stepdowns += 1
            old = leader.name
            leader = h.poll(lambda: (n := cluster.stream_leader(STREAM)) and n.name != old
                            and n, 60, "a new leader after the stepdown",
                            ignore=(AssertionError,))
        print(f"{stepdowns} stepdown(s) put the stream's leader on {leader.name}, the relay's "
              f"server {relay_url}", flush=True)
        self.assertEqual(relay_url, leader.url)
        leader.stop()
        print(f"stopped stream leader {leader.name} ({leader.url}) at count >= {target} "
              f"({reached} seen)", flush=True)
        live.write(pieces[1])
        new_leader = h.poll(lambda: (n := cluster.stream_leader(STREAM)) and
                            n.name != leader.name and n, 60, "a new stream leader",
                            ignore=(AssertionError,))
        back_at = reached + rng.randrange(8000, 15000)
        reached = wait_at_least(cluster.url, back_at, 120, "progress without the old leader")
        print(f"new leader {new_leader.name}; {reached} messages; bringing {leader.name} back",
              flush=True)
        leader.start(wait=False)
        leader.wait_ready(60, jetstream=False)
        live.write(pieces[2])
        live.close()
        expected += h.expected_messages("test", live.name, live_lines)
        h.wait_count(cluster.url, STREAM, len(expected), timeout=180)
        self.assertTrue(relay.running)
        self.assertEqual(pid, relay.pid)
        self.assertEqual(0, relay.stop())
        # It went on through another of the three URLs.
        self.assertEqual(1, log_count(relay.log_text(), r" info reconnected to nats "))
        info = h.stream_info(cluster.url, STREAM)
        dump = h.dump_stream(cluster.url, STREAM)
        connected = re.findall(r"connected to nats server=(\S+)", relay.log_text())
        print(f"leader {leader.name} stopped and back, now led by {info.get('leader')}; relay "
              f"connections: {connected}; {time.monotonic() - started:.1f}s", flush=True)
        h.check_exactly_once(dump, expected, "cluster leader stop")

    # ---- 4 ------------------------------------------------------------------------------

    def test_server_away_30s_memory_bounded(self):
        """Stop nats-server for 30 s while the spool keeps growing: the relay's RSS does
        not grow with the backlog, it logs the outage once and the recovery once, then
        catches up."""
        started = time.monotonic()
        server = self.nats()
        h.create_stream(server.url, STREAM, storage="file", dup_window=DUP_WINDOW)
        expected, live, live_lines = self.spool_with_live(2, 10000, 70000, "o")
        before, during = live_lines[:10000], chunks(live_lines[10000:], 30)
        live.write(before)
        relay = self.relay(self.relay_config(server.url, log={"level": "info"}))
        live.flush()
        # Stopped while the relay is busy (30,000 records on disk), so publishes are in
        # flight when the server goes.
        reached = wait_at_least(server.url, 15000, 120, "the outage")
        rss_before = h.proc_status_kb(relay.pid, "VmRSS")
        hwm_before = h.proc_status_kb(relay.pid, "VmHWM")

        server.stop()
        h.poll(lambda: "disconnected from nats" in relay.log_text(), 30,
               "the relay to notice the outage")
        outage_started = time.monotonic()
        rss_outage = h.proc_status_kb(relay.pid, "VmRSS")
        samples = []
        backlog = 0
        for i, piece in enumerate(during):
            live.write(piece)
            backlog += sum(len(x) for x in piece)
            samples.append(h.proc_status_kb(relay.pid, "VmRSS"))
            # The outage is a chosen duration of 30 s: one piece a second.
            time.sleep(max(0.0, outage_started + i + 1 - time.monotonic()))
        live.flush()
        outage = time.monotonic() - outage_started
        samples.append(h.proc_status_kb(relay.pid, "VmRSS"))
        hwm_outage = h.proc_status_kb(relay.pid, "VmHWM")
        self.assertTrue(relay.running)
        server.start()
        live.close()
        expected += h.expected_messages("test", live.name, live_lines)
        h.wait_count(server.url, STREAM, len(expected), timeout=180)
        caught_up = time.monotonic() - outage_started - outage
        rss_after = h.proc_status_kb(relay.pid, "VmRSS")
        self.assertEqual(0, relay.stop())
        log = relay.log_text()
        print(f"server stopped at {reached} of 30000 records relayed", flush=True)
        print(f"outage {outage:.1f}s, backlog {backlog / 1e6:.1f} MB ({70000 - 10000} records) "
              f"written meanwhile; caught up {caught_up:.1f}s after the restart", flush=True)
        print(f"relay RSS kB: before {rss_before} (peak {hwm_before}); at the outage's start "
              f"{rss_outage}; during it min {min(samples)} max {max(samples)} last "
              f"{samples[-1]} (peak {hwm_outage}); after catching up {rss_after}", flush=True)
        disconnects = log_count(log, r" disconnected from nats")
        reconnects = log_count(log, r" reconnected to nats")
        print(f"log: {disconnects} 'disconnected from nats', {reconnects} 'reconnected to nats'",
              flush=True)
        self.assertEqual(1, disconnects)
        self.assertEqual(1, reconnects)
        # Bounded: the RSS during the outage stays where it was (within 2 MiB) while the
        # backlog grows by ~60 MB.
        self.assertGreater(backlog, 50e6)
        self.assertLess(max(samples) - rss_outage, 2048)
        self.assertLess(max(samples) - rss_before, 4096)
        dump = h.dump_stream(server.url, STREAM)
        print(f"{time.monotonic() - started:.1f}s", flush=True)
        h.check_exactly_once(dump, expected, "30 s server outage")

    def test_backlog_of_many_done_segments_memory_bounded(self):
        """A backlog of 16 done zstd segments costs the relay no more memory than one of 2:
        done segments are decoded a few at a time, in name order, not all at once (each
        open decoder holds a zstd window)."""
        server = self.nats()
        h.create_stream(server.url, STREAM, storage="file", dup_window=DUP_WINDOW)
        peaks, expected = {}, []
        for count in (2, 16):
            tag = f"b{count}"
            spool, state = self.tmp / f"spool-{tag}", self.tmp / f"state-{tag}"
            spool.mkdir()
            for i, name in enumerate(h.segment_names(count)):
                lines = h.many_records(3000, seed=i, prefix=f"{tag}-{i}-")
                h.write_segment(spool / name, lines)
                expected += h.expected_messages(tag, name, lines)
            relay = self.relay(h.relay_config(spool, state, server.url, relay_id=tag), name=tag)
            h.wait_count(server.url, STREAM, len(expected), timeout=120)
            peaks[count] = h.proc_status_kb(relay.pid, "VmHWM")
            self.assertEqual(0, relay.stop())
        print(f"relay peak RSS kB: {peaks[2]} over 2 done segments, {peaks[16]} over 16 "
              f"(3,000 records each)", flush=True)
        if not h.SANITIZED:  # ASan's quarantine keeps freed decoders resident
            self.assertLess(peaks[16] - peaks[2], 6 * 1024)
        h.check_exactly_once(h.dump_stream(server.url, STREAM), expected, "16-segment backlog")


if __name__ == "__main__":
    import unittest
    unittest.main()
