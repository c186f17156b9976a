"""Starting while NATS is away: the relay says so at once (a warning naming the server
and the reason), repeats it only every PUBLISHER_DOWN_WARN_INTERVAL_MS, reports READY
anyway (a mail host must boot without NATS), and /healthz, STATUS= and
kumo_nats_relay_nats_connected tell the connection state. When the server comes, every
record is relayed exactly once. The same for a Lua policy's kumo.nats.connect."""

import re
import socket

import harness as h

STREAM = "KUMO"


http_get = h.http_get


metric = h.metric


class NatsAwayTest(h.RelayTestCase):
    def setUp(self):
        super().setUp()
        # The stream is made while the server runs, then the server stops: nothing
        # listens on its port until the test starts it again on the same store.
        self.server = self.nats()
        h.create_stream(self.server.url, STREAM, ["kumo.>"], dup_window=600)
        self.server.stop()
        self.metrics_port = h.free_port()
        self.base = f"http://127.0.0.1:{self.metrics_port}"
        self.refused = f"127.0.0.1:{self.server.port}: Connection refused"

    def notify_socket(self):
        path = str(self.tmp / "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.setblocking(False)
        self.addCleanup(sock.close)
        messages = []

        def drain():
            while True:
                try:
                    messages.append(sock.recv(4096).decode())
                except BlockingIOError:
                    return messages
        return path, drain

    def warnings(self, relay):
        return [x for x in relay.log_text().splitlines()
                if re.match(r"\S+ warn cannot connect to nats, retrying ", x)]

    def write_records(self, n, seed):
        names = h.segment_names(2)
        expected = []
        for i, name in enumerate(names):
            lines = h.make_records(n, seed=seed + i, prefix=f"away{i}-")
            h.write_segment(self.spool / name, lines)
            expected += h.expected_messages("test", name, lines)
        return expected

    def assert_waiting(self, relay, servers):
        """The first warning, in full; /healthz and the gauge while nothing listens."""
        h.poll(lambda: self.warnings(relay), 5, "the connect warning")
        self.assertRegex(self.warnings(relay)[0],
                         rf"^\S+ warn cannot connect to nats, retrying "
                         rf"servers={re.escape(servers)} auth=\"none\" "
                         rf"error=\"{re.escape(self.refused)}\" down_for=0s in_flight=0$")
        down = (503, f"not connected to nats: {self.refused}\n")
        h.poll(lambda: http_get(self.base + "/healthz") == down, 10, "healthz 503",
               ignore=(OSError,))
        self.assertEqual(0, metric(http_get(self.base + "/metrics")[1], "nats_connected"))

    def assert_relayed(self, relay, expected):
        self.server.start()
        h.wait_count(self.server.url, STREAM, len(expected), timeout=60)
        h.poll(lambda: http_get(self.base + "/healthz") == (200, "ok\n"), 30, "healthz 200")
        self.assertEqual(1, metric(http_get(self.base + "/metrics")[1], "nats_connected"))
        self.assertEqual(0, relay.stop())
        h.assert_exactly_once(h.dump_stream(self.server.url, STREAM), expected)

    def test_start_while_nats_is_away(self):
        expected = self.write_records(300, seed=1)
        path, drain = self.notify_socket()
        relay = self.relay(self.relay_config(
            self.server.url, metrics={"listen": f"127.0.0.1:{self.metrics_port}"}),
            env={"NOTIFY_SOCKET": path})
        self.assert_waiting(relay, self.server.url)
        h.poll(lambda: "READY=1" in drain(), 10, "READY=1 without NATS")
        # STATUS= counts the seconds down: a clock for "the warning does not repeat".
        def away_for():
            seconds = [int(m.group(1)) for m in map(
                re.compile(r"STATUS=not connected to nats for (\d+)s: ").match, drain()) if m]
            return max(seconds, default=0)
        h.poll(lambda: away_for() >= 3, 15, "STATUS= to say NATS is away for 3s")
        status = next(m for m in drain() if m.startswith("STATUS=not connected"))
        self.assertRegex(status, rf"^STATUS=not connected to nats for \ds: "
                                 rf"{re.escape(self.refused)}; \d+ records/s, ")
        self.assertEqual(1, len(self.warnings(relay)), relay.log_tail())
        self.assertNotIn("connected to nats server=", relay.log_text())

        self.assert_relayed(relay, expected)
        self.assertEqual(1, len(self.warnings(relay)))
        self.assertEqual(1, relay.log_text().count("info connected to nats server="))
        last = [m for m in drain() if m.startswith("STATUS=")][-1]
        self.assertRegex(last, r"^STATUS=\d+ records/s, ")

    def test_lua_connect_to_a_dead_server_warns_the_same(self):
        expected = self.write_records(200, seed=5)
        policy = self.tmp / "policy.lua"
        policy.write_text(h.connection_policy(
            self.server.port,
            "      client:publish { subject = 'kumo.log.x', payload = message:get_data() }"))
        relay = self.relay(self.relay_config(
            self.server.url, metrics={"listen": f"127.0.0.1:{self.metrics_port}"},
            policy={"script": str(policy), "subject": None}))
        self.assert_waiting(relay, self.server.url)
        self.assert_relayed(relay, expected)
        self.assertEqual(1, len(self.warnings(relay)))


if __name__ == "__main__":
    import unittest
    unittest.main()
