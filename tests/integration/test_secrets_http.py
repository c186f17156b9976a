"""Credentials written in a server URL, and a metrics port under a slow-client flood.

- nats://user:password@host and nats://token@host: the relay connects with them and names
  the kind of credentials (`auth="user relay in the server URL"`), and no password or token
  appears in anything it prints: the log (connects, refusals), --check, status, /metrics,
  /healthz, the state directory.
- Sockets that connect to the metrics port and send nothing, or a byte now and then, never
  keep /healthz from answering, and the relay goes on relaying meanwhile.
"""

import http.client
import json
import re
import socket
import time

import harness as h

STREAM = "KUMO"
PASSWORD = "pw-Url-cr3dential-5e1f"
WRONG_PASSWORD = "pw-Url-wr0ng-77ab"
TOKEN = "tok-Url-s3cret-9c2d"


def http_get(port, path, source="127.0.0.1", timeout=3.0):
    """(status, body) of a GET from the source address; raises OSError (or
    http.client's errors) when the server closes the connection without an answer."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout,
                                      source_address=(source, 0))
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def try_get(port, path, source="127.0.0.1"):
    try:
        return http_get(port, path, source)
    except (OSError, http.client.HTTPException):
        return None


class UrlCredentialsTest(h.RelayTestCase):
    def setUp(self):
        super().setUp()
        self.secrets = []

    def secured_nats(self, conf_text, tool_url):
        """nats-server -js -c conf_text, JetStream ready and the stream created;
        server.tool_url is what streamtool connects with."""
        conf = self.tmp / f"nats-{len(self._procs)}.conf"
        conf.write_text(conf_text)
        server = h.NatsServer(self.tmp, extra_args=["-c", conf], start=False)
        self._procs.append(server)
        server.start(wait=False)

        def up():
            if server.proc.poll() is not None:
                raise AssertionError(f"nats-server exited:\n{server.log_text()[-2000:]}")
            return server.accepts()
        h.poll(up, 30, "nats-server to accept connections")
        server.tool_url = tool_url(server)
        proc = h.streamtool(server.tool_url, "ready", 30, timeout=60, check=False)
        self.assertEqual(0, proc.returncode, proc.stderr.decode())
        h.create_stream(server.tool_url, STREAM, dup_window=600)
        return server

    def password_nats(self):
        return self.secured_nats(
            f'authorization {{ users = [ {{ user: relay, password: "{PASSWORD}" }} ] }}\n',
            lambda s: f"nats://relay:{PASSWORD}@127.0.0.1:{s.port}")

    def write_records(self, n, seed, index=0):
        name = h.segment_names(index + 1)[index]
        lines = h.make_records(n, seed=seed, prefix=f"url{index}-")
        h.write_segment(self.spool / name, lines)
        return h.expected_messages("test", name, lines)

    def assert_stream(self, server, expected):
        h.wait_count(server.tool_url, STREAM, len(expected), 60)
        h.assert_exactly_once(h.dump_stream(server.tool_url, STREAM), expected)

    def wait_log(self, relay, pattern, count=1, timeout=30):
        def found():
            hits = re.findall(pattern, relay.log_text())
            return hits if len(hits) >= count else None
        return h.poll(found, timeout, f"{count} log lines matching {pattern!r}")

    def assert_no_secret(self, relay, **texts):
        """No secret of this test in the relay's output, the texts or the state dir (the
        configuration file holds it, by design)."""
        places = dict(texts, log=relay.log_text())
        for path in self.state.rglob("*") if self.state.exists() else ():
            if path.is_file():
                places[str(path)] = path.read_text(errors="replace")
        for secret in self.secrets:
            for where, text in places.items():
                self.assertNotIn(secret, text, f"a secret appears in {where}")

    def everything_printed(self, relay, port):
        """The outputs an operator sees besides the log: --check, status (text and JSON),
        /metrics, /healthz."""
        rc, check = relay.check()
        self.assertEqual((0, True), (rc, "configuration OK" in check), check)
        status = h.run_command([h.Tools.relay, "status", "-c", relay.config_path])
        status_json = h.run_command([h.Tools.relay, "status", "--json", "-c",
                                     relay.config_path])
        json.loads(status_json)
        health = h.poll(lambda: try_get(port, "/healthz") == (200, "ok\n") and (200, "ok\n"),
                        30, "/healthz 200")
        metrics = h.poll(lambda: try_get(port, "/metrics"), 10, "/metrics")
        self.assertEqual(200, metrics[0])
        return {"check": check, "status": status, "status --json": status_json,
                "healthz": health[1], "metrics": metrics[1]}

    def relay_with(self, server_url, port, **overrides):
        return self.relay(self.relay_config(server_url, metrics={"listen": f"127.0.0.1:{port}"},
                                            shutdown_timeout="3s", **overrides))

    def test_user_and_password_in_the_server_url(self):
        self.secrets = [PASSWORD]
        server = self.password_nats()
        expected = self.write_records(300, seed=1)
        port = h.free_port()
        relay = self.relay_with(f"nats://relay:{PASSWORD}@127.0.0.1:{server.port}", port)
        self.assert_stream(server, expected)
        self.wait_log(relay, re.escape(f"connected to nats server=nats://relay:***@127.0.0.1:"
                                       f"{server.port} auth=\"user relay in the server URL\""))
        printed = self.everything_printed(relay, port)
        self.assertEqual(0, relay.stop())
        self.assert_no_secret(relay, **printed)

    def test_token_in_the_server_url(self):
        self.secrets = [TOKEN]
        server = self.secured_nats(f'authorization {{ token: "{TOKEN}" }}\n',
                                   lambda s: f"nats://{TOKEN}@127.0.0.1:{s.port}")
        expected = self.write_records(300, seed=2)
        port = h.free_port()
        relay = self.relay_with(f"nats://{TOKEN}@127.0.0.1:{server.port}", port)
        self.assert_stream(server, expected)
        self.wait_log(relay, re.escape(f"connected to nats server=nats://***@127.0.0.1:"
                                       f"{server.port} auth=\"token in the server URL\""))
        printed = self.everything_printed(relay, port)
        self.assertEqual(0, relay.stop())
        self.assert_no_secret(relay, **printed)

    def test_refused_password_in_the_server_url(self):
        """The refusal warning names the server and the kind of credentials, never the
        password; after the fix every record arrives exactly once."""
        self.secrets = [PASSWORD, WRONG_PASSWORD]
        server = self.password_nats()
        expected = self.write_records(300, seed=3)
        port = h.free_port()
        relay = self.relay_with(f"nats://relay:{WRONG_PASSWORD}@127.0.0.1:{server.port}", port)
        self.wait_log(relay, re.escape(
            f"warn nats refused the relay's credentials, retrying in ") + r"\d+ms " + re.escape(
            f"servers=nats://relay:***@127.0.0.1:{server.port} auth=\"user relay in the "
            f"server URL\" error=\"Authorization Violation\""), count=2, timeout=40)
        health = h.poll(lambda: try_get(port, "/healthz"), 10, "/healthz")
        self.assertEqual(503, health[0], health)
        metrics = h.poll(lambda: try_get(port, "/metrics"), 10, "/metrics")
        self.assertEqual(0, h.stream_count(server.tool_url, STREAM))
        self.assertEqual(0, relay.stop())
        self.assert_no_secret(relay, healthz=health[1], metrics=metrics[1])

        relay.set_config(self.relay_config(
            f"nats://relay:{PASSWORD}@127.0.0.1:{server.port}",
            metrics={"listen": f"127.0.0.1:{port}"}, shutdown_timeout="3s"))
        relay.start()
        self.assert_stream(server, expected)
        self.assertEqual(0, relay.stop())
        self.assert_no_secret(relay)

    def test_lua_connect_with_credentials_in_the_server_url(self):
        self.secrets = [PASSWORD]
        server = self.password_nats()
        policy = self.tmp / "policy.lua"
        # KumoMTA's form, without a scheme: the relay makes it nats://.
        policy.write_text(LUA_POLICY.format(server=f"relay:{PASSWORD}@127.0.0.1:{server.port}"))
        expected = self.write_records(300, seed=4)
        relay = self.relay(self.relay_config("nats://127.0.0.1:1", policy={
            "script": str(policy), "subject": None}), start=False)
        rc, check = relay.check()
        self.assertEqual(0, rc, check)
        self.assertEqual(0, relay.run_once())
        self.assert_stream(server, expected)
        self.assertRegex(relay.log_text(), re.escape(
            f"connected to nats server=nats://relay:***@127.0.0.1:{server.port} "
            f"auth=\"user relay in the server URL\""))
        self.assert_no_secret(relay, check=check)

    def test_a_password_without_a_user_is_refused_without_showing_it(self):
        """nats.c ignores the password of nats://:password@host and prints that URL
        without its '@', where nothing could hide the password: the relay refuses it."""
        self.secrets = [PASSWORD]
        self.write_records(10, seed=5)
        relay = self.relay(self.relay_config(f"nats://:{PASSWORD}@127.0.0.1:4222"),
                           start=False)
        self.assertEqual(1, relay.run_once())
        self.assertIn("server nats://:***@127.0.0.1:4222 has a password and no user name",
                      relay.log_text())
        self.assert_no_secret(relay)


LUA_POLICY = """\
local kumo = require 'kumo'

kumo.on('init', function()
  client = kumo.nats.connect {{ servers = {{ '{server}' }}, name = 'url-credentials' }}
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ custom_lua = {{ constructor = 'make.nats' }} }},
  }}
end)

kumo.on('make.nats', function(domain, tenant, campaign)
  return {{
    send = function(self, message)
      local record = message:get_meta('log_record')
      client:publish {{ subject = 'kumo.log.' .. record.type, payload = message:get_data() }}
    end,
  }}
end)
"""


# The relay's bounds (relay/metrics.c): idle sockets are closed after 5 s, a request not
# whole 10 s after the connection opened is cut, one address holds at most half of the
# 256 connections.
IDLE_TIMEOUT = 5
REQUEST_DEADLINE = 10


def open_idle(port, n, source="127.0.0.1"):
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((source, 0))
        s.settimeout(5)
        s.connect(("127.0.0.1", port))
        socks.append(s)
    return socks


def closed_by_server(sock):
    """True when the server has closed (or reset) the connection; never blocks."""
    sock.setblocking(False)
    try:
        return sock.recv(4096) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


class MetricsFloodTest(h.RelayTestCase):
    def setUp(self):
        super().setUp()
        self.server = self.nats()
        h.create_stream(self.server.url, STREAM)
        self.port = h.free_port()
        self.relay_ = self.relay(h.relay_config(
            self.spool, self.state, self.server.url,
            metrics={"listen": f"127.0.0.1:{self.port}"}, log={"level": "info"}))
        self.socks = []
        self.addCleanup(lambda: [s.close() for s in self.socks])
        h.poll(lambda: try_get(self.port, "/healthz") == (200, "ok\n"), 30, "healthz 200")

    def probe(self, source="127.0.0.1", timeout=3):
        """/healthz must answer 200 within `timeout` seconds."""
        return h.poll(lambda: try_get(self.port, "/healthz", source) == (200, "ok\n"),
                      timeout, f"/healthz to answer 200 from {source}", interval=0.05)

    def write(self, n, seed, index):
        name = h.segment_names(index + 1)[index]
        lines = h.make_records(n, seed=seed, prefix=f"fl{index}-")
        h.write_segment(self.spool / name, lines)
        return h.expected_messages("test", name, lines)

    def test_idle_and_slow_clients_never_keep_healthz_from_answering(self):
        expected = self.write(500, seed=10, index=0)
        idle = open_idle(self.port, 64)
        slow = open_idle(self.port, 8)
        self.socks += idle + slow
        for s in slow:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        # While they hold their sockets (the slow ones send a header byte each round, so
        # they are never idle), kumod writes more, and every probe is answered.
        expected += self.write(500, seed=11, index=1)
        started = time.monotonic()
        rounds = 0
        while time.monotonic() - started < REQUEST_DEADLINE + 4 and rounds < 100:
            for s in slow:
                try:
                    s.sendall(b"X")
                except OSError:
                    pass  # cut by the relay: what the deadline is for
            self.probe()
            rounds += 1
            time.sleep(0.2)  # pacing of the slow clients, not a wait for a result
        self.assertGreater(rounds, 5)
        # The bounds hold: idle sockets are closed after the idle timeout, slow ones at the
        # request deadline, though they kept sending.
        h.poll(lambda: all(closed_by_server(s) for s in idle), IDLE_TIMEOUT + 5,
               "the idle sockets to be closed")
        h.poll(lambda: all(closed_by_server(s) for s in slow), 5,
               "the slow sockets to be cut at the request deadline")
        h.wait_count(self.server.url, STREAM, len(expected), 60)
        h.assert_exactly_once(h.dump_stream(self.server.url, STREAM), expected)
        self.assertEqual(0, self.relay_.stop())
        # libmicrohttpd's messages are not repeated per connection.
        self.assertLessEqual(self.relay_.log_text().count("metrics server:"), 1)

    def test_one_address_cannot_take_every_connection(self):
        """300 idle sockets from 127.0.0.1: a probe from another address is answered at
        once, and one from 127.0.0.1 as soon as the idle ones time out."""
        self.socks += open_idle(self.port, 300)
        for _ in range(5):
            self.probe(source="127.0.0.2")
        self.probe(source="127.0.0.1", timeout=IDLE_TIMEOUT + 5)
        expected = self.write(300, seed=12, index=0)
        h.wait_count(self.server.url, STREAM, len(expected), 60)
        h.assert_exactly_once(h.dump_stream(self.server.url, STREAM), expected)
        self.assertEqual(0, self.relay_.stop())
        log = self.relay_.log_text()
        self.assertLessEqual(log.count("metrics server:"), 1, log[-3000:])


if __name__ == "__main__":
    import unittest
    unittest.main()
