"""Authentication and TLS to NATS, and secrets kept out of sight.

Each test starts nats-server with a configuration file (-c) asking for one way of
authenticating: user and password, token, nkey, a .creds file in operator mode, TLS with
a client certificate. The credentials and certificates are made in the test's temp dir
with the openssl command (security_tools.py). Every test greps everything the relay wrote
(its log, --check, /metrics, /healthz, the state directory) for the test's secrets.
"""

import os
import re
import signal

import harness as h
import security_tools as st

STREAM = "KUMO"
PASSWORD = "pw-Corr3ct-horse-7f1c"
WRONG_PASSWORD = "pw-Wr0ng-battery-93ad"
TOKEN = "tok-5ecret-staple-62be"
NEW_PASSWORD = "pw-N3xt-quarter-1d0b"
TOOL_PASSWORD = "pw-T00l-only-for-streamtool"


http_get = h.http_get


class SecurityTest(h.RelayTestCase):
    def setUp(self):
        super().setUp()
        self.secrets = []
        # mkdtemp makes the dir 0700, which alone keeps others out of every file in it;
        # open it up so that the permission warnings judge the files themselves.
        self.tmp.chmod(0o755)

    # ---- helpers ----

    def setenv(self, **values):
        """Set environment variables (streamtool reads its TLS and creds from there) until
        the end of the test."""
        for key, value in values.items():
            old = os.environ.get(key)
            os.environ[key] = str(value)
            self.addCleanup(lambda k=key, v=old: os.environ.pop(k) if v is None
                            else os.environ.__setitem__(k, v))

    def secret_file(self, name, text, mode=0o600):
        path = self.tmp / name
        path.write_text(text + "\n")
        path.chmod(mode)
        return path

    def secured_nats(self, conf_text, tool_url=lambda server: server.url, server_class=None):
        """nats-server -js with conf_text (-c), JetStream ready and the stream created;
        tool_url(server) is the URL streamtool uses (credentials in it, if any)."""
        conf = self.tmp / f"nats-{len(self._procs)}.conf"
        conf.write_text(conf_text)
        server = (server_class or h.NatsServer)(self.tmp, extra_args=["-c", conf], start=False)
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

    def write_records(self, n, seed, index=0):
        name = h.segment_names(index + 1)[index]
        lines = h.make_records(n, seed=seed, prefix=f"sec{index}-")
        h.write_segment(self.spool / name, lines)
        return h.expected_messages("test", name, lines)

    def assert_stream(self, server, expected):
        h.wait_count(server.tool_url, STREAM, len(expected), 60)
        h.assert_exactly_once(h.dump_stream(server.tool_url, STREAM), expected)

    def assert_no_secret(self, relay, *texts):
        """No secret of this test anywhere in the relay's output, nor in its state dir."""
        places = {"relay output": relay.log_text()}
        for i, text in enumerate(texts):
            places[f"text {i}"] = text
        if self.state.exists():
            for path in self.state.rglob("*"):
                if path.is_file():
                    places[str(path)] = path.read_text(errors="replace")
        for secret in self.secrets:
            for where, text in places.items():
                self.assertNotIn(secret, text, f"a secret appears in {where}")

    def wait_log(self, relay, pattern, count=1, timeout=30):
        def found():
            hits = re.findall(pattern, relay.log_text())
            return hits if len(hits) >= count else None
        return h.poll(found, timeout, f"{count} log lines matching {pattern!r}")

    # ---- user and password, token ----

    def test_user_password_from_a_file_then_from_the_environment(self):
        self.secrets = [PASSWORD]
        server = self.secured_nats(
            f'authorization {{ users = [ {{ user: relay, password: "{PASSWORD}" }} ] }}\n',
            lambda s: f"nats://relay:{PASSWORD}@127.0.0.1:{s.port}")
        expected = self.write_records(500, seed=1, index=0)
        pw = self.secret_file("nats-password", PASSWORD)
        relay = self.relay(self.relay_config(
            server.url, nats={"user": "relay", "password": {"file": str(pw)}}), start=False)
        self.assertEqual(0, relay.run_once())
        self.assert_stream(server, expected)

        expected += self.write_records(500, seed=2, index=1)
        relay.env["KNR_TEST_NATS_PASSWORD"] = PASSWORD
        relay.set_config(self.relay_config(
            server.url, nats={"user": "relay", "password": "${KNR_TEST_NATS_PASSWORD}"}))
        rc, out = relay.check()
        self.assertEqual((0, True), (rc, "configuration OK" in out), out)
        self.assertEqual(0, relay.run_once())
        self.assert_stream(server, expected)
        # Neither the file (0600) nor the config (no secret in it) is worth a warning.
        self.assertNotIn("every user may read", relay.log_text())
        self.assert_no_secret(relay)

    def test_token_from_the_environment(self):
        self.secrets = [TOKEN]
        server = self.secured_nats(f'authorization {{ token: "{TOKEN}" }}\n',
                                   lambda s: f"nats://{TOKEN}@127.0.0.1:{s.port}")
        expected = self.write_records(500, seed=3)
        relay = self.relay(self.relay_config(server.url, nats={"token": "${KNR_TEST_TOKEN}"}),
                           start=False, env={"KNR_TEST_TOKEN": TOKEN})
        self.assertEqual(0, relay.run_once())
        self.assert_stream(server, expected)
        self.assertIn('auth="token"', relay.log_text())
        self.assert_no_secret(relay)

    def test_wrong_password_is_reported_retried_and_nothing_is_lost(self):
        """A refused password: the log says the server refused the credentials and names
        the server (never the secret), retries back off, /healthz says why, nothing is
        published; after the fix and a restart every record arrives exactly once."""
        self.secrets = [PASSWORD, WRONG_PASSWORD]
        server = self.secured_nats(
            f'authorization {{ users = [ {{ user: relay, password: "{PASSWORD}" }} ] }}\n',
            lambda s: f"nats://relay:{PASSWORD}@127.0.0.1:{s.port}")
        expected = self.write_records(800, seed=4, index=0)
        port = h.free_port()
        cfg = self.relay_config(server.url, nats={"user": "relay", "password": WRONG_PASSWORD},
                                metrics={"listen": f"127.0.0.1:{port}"}, shutdown_timeout="3s")
        relay = self.relay(cfg)
        # The password is written in a config file others may read: a warning says so.
        self.wait_log(relay, r"relay\.yaml holds a secret and every user may read it")
        lines = self.wait_log(relay, r"warn nats refused the relay's credentials, retrying in "
                                     r"(\d+)ms servers=(\S+) auth=\"user relay\" "
                                     r"error=\"Authorization Violation\"", count=3, timeout=40)
        waits = [int(ms) for ms, _ in lines]
        self.assertEqual({server.url}, {url for _, url in lines})
        self.assertGreater(waits[2], waits[0], f"no backoff: {waits}")
        status, health = http_get(f"http://127.0.0.1:{port}/healthz")
        self.assertEqual(503, status, health)
        _, metrics = http_get(f"http://127.0.0.1:{port}/metrics")
        self.assertIn("kumo_nats_relay_nats_connected 0", metrics)
        self.assertEqual(0, h.stream_count(server.tool_url, STREAM))
        # kumod goes on writing while the relay cannot publish.
        expected += self.write_records(800, seed=5, index=1)
        self.assertEqual(0, relay.stop())
        self.assert_no_secret(relay, health, metrics)

        # The fix: the right password, from a file only the relay may read. (SIGHUP reload
        # of the connection settings is separate work; a restart is enough here.)
        pw = self.secret_file("nats-password", PASSWORD)
        relay.set_config(dict(cfg, nats={"servers": [server.url], "user": "relay",
                                         "password": {"file": str(pw)}}))
        relay.start()
        self.assert_stream(server, expected)
        self.assertEqual(0, relay.stop())
        self.assert_no_secret(relay)

    def test_password_rotated_on_the_server_first_then_sighup(self):
        """The worst order: the server drops the old password while the relay runs. The
        relay is refused, waits with the records in the spool, and SIGHUP with the new
        password file relays everything exactly once, without a restart."""
        self.secrets = [PASSWORD, NEW_PASSWORD]
        def conf_text(password):
            return (f'server_name: knr-rotation\njetstream {{ store_dir: "{self.tmp}/js" }}\n'
                    'authorization { users = [ { user: relay, password: "%s" }, '
                    '{ user: tool, password: "%s" } ] }\n' % (password, TOOL_PASSWORD))
        server = self.secured_nats(conf_text(PASSWORD), server_class=ReloadableNatsServer,
                                   tool_url=lambda s: f"nats://tool:{TOOL_PASSWORD}@127.0.0.1:"
                                                      f"{s.port}")
        conf = sorted(self.tmp.glob("nats-*.conf"))[-1]
        pw = self.secret_file("nats-password", PASSWORD)
        relay = self.relay(self.relay_config(
            server.url, nats={"user": "relay", "password": {"file": str(pw)}}))
        expected = self.write_records(500, seed=10, index=0)
        h.wait_count(server.tool_url, STREAM, len(expected), 60)

        conf.write_text(conf_text(NEW_PASSWORD))
        server.proc.send_signal(signal.SIGHUP)  # nats-server reloads: the relay is cut off
        self.wait_log(relay, r"nats refused the relay's credentials, retrying in \d+ms", 1, 60)
        expected += self.write_records(500, seed=11, index=1)

        staged = self.secret_file(".nats-password.new", NEW_PASSWORD)
        staged.rename(pw)  # atomic: the relay never reads half a password
        relay.proc.send_signal(signal.SIGHUP)
        self.wait_log(relay, r"reloaded configuration and policy")
        self.assert_stream(server, expected)
        self.assertEqual(0, relay.stop())
        self.assert_no_secret(relay)

    # ---- TLS ----

    def test_tls_with_a_client_certificate_and_a_password(self):
        tls = st.make_tls(self.tmp / "tls")
        self.secrets = [PASSWORD, (tls / "client.key").read_text().splitlines()[1]]
        self.setenv(KNR_NATS_TLS_CA=tls / "ca.pem", KNR_NATS_TLS_CERT=tls / "client.pem",
                    KNR_NATS_TLS_KEY=tls / "client.key")
        server = self.secured_nats(
            f'tls {{ cert_file: "{tls}/server.pem", key_file: "{tls}/server.key", '
            f'ca_file: "{tls}/ca.pem", verify: true, timeout: 3 }}\n'
            f'authorization {{ users = [ {{ user: relay, password: "{PASSWORD}" }} ] }}\n',
            lambda s: f"nats://relay:{PASSWORD}@127.0.0.1:{s.port}")
        expected = self.write_records(600, seed=6)
        pw = self.secret_file("nats-password", PASSWORD)
        auth = {"user": "relay", "password": {"file": str(pw)}}

        # Without a client certificate the server hangs up during the handshake.
        relay = self.relay(self.relay_config(
            server.url, nats=dict(auth, tls={"ca": str(tls / "ca.pem")}), shutdown_timeout="3s"))
        self.wait_log(relay, r"cannot connect to nats, retrying in \d+ms servers=\S+ "
                             r"auth=\"user relay, tls\" error=\"[^\"]*client certificate")
        self.assertEqual(0, relay.stop())
        self.assertEqual(0, h.stream_count(server.tool_url, STREAM))

        # jetstream.stream: the stream's tail is read back at start over a connection of
        # its own, which must authenticate the same way.
        relay.set_config(self.relay_config(server.url, nats=dict(auth, tls_required=True, tls={
            "ca": str(tls / "ca.pem"), "cert": str(tls / "client.pem"),
            "key": str(tls / "client.key")}), jetstream={"stream": STREAM}))
        self.assertEqual(0, relay.run_once())
        self.assert_stream(server, expected)
        self.assertIn('auth="user relay, tls with a client certificate"', relay.log_text())
        self.assertIn(f"read back the stream stream={STREAM} ", relay.log_text())
        self.assertNotIn("cannot read back the stream", relay.log_text())
        self.assert_no_secret(relay)

    def test_tls_server_certificate_is_verified(self):
        """The relay trusts only the CA it is given (or the system's), checks the server's
        address against its certificate, and with tls_required refuses a plain server."""
        tls = st.make_tls(self.tmp / "tls")
        self.setenv(KNR_NATS_TLS_CA=tls / "ca.pem")
        cases = [
            ("server", {"tls_required": True}, r"unable to get local issuer certificate"),
            ("elsewhere", {"tls": {"ca": str(tls / "ca.pem")}}, r"IP address mismatch"),
            (None, {"tls_required": True}, r"[Ss]ecure [Cc]onnection"),
        ]
        for cert, nats, error in cases:
            with self.subTest(cert=cert):
                conf = (f'tls {{ cert_file: "{tls}/{cert}.pem", key_file: "{tls}/{cert}.key" }}\n'
                        if cert else "")
                server = h.NatsServer(self.tmp, extra_args=["-c", self._conf(conf)] if conf
                                      else [], start=False)
                self._procs.append(server)
                server.start(wait=False)
                h.poll(server.accepts, 30, "nats-server to accept connections")
                relay = self.relay(self.relay_config(server.url, nats=nats,
                                                     shutdown_timeout="3s"),
                                   name=f"relay-{cert}")
                self.wait_log(relay, r"cannot connect to nats, retrying in \d+ms servers="
                                     + re.escape(server.url) + r" .*error=\"[^\"]*" + error)
                self.assertEqual(0, relay.stop())
                server.stop()

    def _conf(self, text):
        path = self.tmp / f"nats-{len(self._procs)}.conf"
        path.write_text(text)
        return path

    # ---- nkey, creds ----

    def test_nkey_seed(self):
        user = st.NKey("user", self.tmp)
        self.secrets = [user.seed]
        server = self.secured_nats(
            f'authorization {{ users = [ {{ nkey: {user.public} }}, '
            f'{{ user: tool, password: "{PASSWORD}" }} ] }}\n',
            lambda s: f"nats://tool:{PASSWORD}@127.0.0.1:{s.port}")
        expected = self.write_records(500, seed=7)
        seed = self.secret_file("relay.nk", user.seed, mode=0o644)
        relay = self.relay(self.relay_config(server.url, nats={"nkey_seed": str(seed)}),
                           start=False)
        self.assertEqual(0, relay.run_once())
        self.assert_stream(server, expected)
        log = relay.log_text()
        self.assertIn(f'auth="nkey {user.public}"', log)
        self.assertRegex(log, r"nats\.nkey_seed: \S*relay\.nk holds a secret and every user "
                              r"may read it \(mode 0644\)")
        self.assert_no_secret(relay)

    def test_creds_file_in_operator_mode(self):
        conf, creds_text, user = st.operator_setup(self.tmp)
        creds = self.secret_file("relay.creds", creds_text)
        self.secrets = [user.seed]
        self.setenv(KNR_NATS_CREDS=creds)
        server = self.secured_nats(conf)
        expected = self.write_records(500, seed=8)
        relay = self.relay(self.relay_config(server.url, nats={"creds": str(creds)}),
                           start=False)
        self.assertEqual(0, relay.run_once())
        self.assert_stream(server, expected)
        self.assertIn(f'auth="creds {creds}"', relay.log_text())
        self.assert_no_secret(relay)

    # ---- Lua: kumo.nats.connect ----

    def test_lua_connect_with_tls_and_key_sources(self):
        """kumo.nats.connect with KumoMTA's keys: auth values as KeySource (a string is a
        file path, { key_data = ... } the value), certificate, client_cert, client_key,
        tls_required."""
        tls = st.make_tls(self.tmp / "tls")
        self.secrets = [PASSWORD]
        self.setenv(KNR_NATS_TLS_CA=tls / "ca.pem", KNR_NATS_TLS_CERT=tls / "client.pem",
                    KNR_NATS_TLS_KEY=tls / "client.key")
        server = self.secured_nats(
            f'tls {{ cert_file: "{tls}/server.pem", key_file: "{tls}/server.key", '
            f'ca_file: "{tls}/ca.pem", verify: true }}\n'
            f'authorization {{ users = [ {{ user: relay, password: "{PASSWORD}" }} ] }}\n',
            lambda s: f"nats://relay:{PASSWORD}@127.0.0.1:{s.port}")
        pw = self.secret_file("nats-password", PASSWORD)
        policy = self.tmp / "policy.lua"
        client = (f"client_cert = '{tls}/client.pem',\n    "
                  f"client_key = '{tls}/client.key',")

        def write_policy(extra="", client_keys=client):
            policy.write_text(LUA_POLICY.format(port=server.port, password_file=pw, tls=tls,
                                                extra=extra, client=client_keys))
        write_policy()
        expected = self.write_records(500, seed=9)
        relay = self.relay(self.relay_config(server.url, policy={"script": str(policy),
                                                                 "subject": None}),
                           start=False)
        rc, out = relay.check()
        self.assertEqual(0, rc, out)
        self.assertEqual(0, relay.run_once())
        self.assert_stream(server, expected)

        # Keys this build cannot honour, and KeySource forms it does not know, are errors.
        for extra, client_keys, message in (
                ("tls_first = true,", client, "tls_first = true is not supported"),
                ("", f"client_cert = '{tls}/client.pem',",
                 "kumo.nats.connect: client_cert and client_key go together; client_key is "
                 "missing"),
                ("", client + " nkey_seed = '/nonexistent/seed',", "nkey_seed: cannot read"),
                ("", client + " creds = '/etc/hostname',",
                 "kumo.nats.connect: authenticate one way only: auth.username and "
                 "auth.password, auth.token, nkey_seed or creds"),
                ("", client.replace(f"'{tls}/client.key'", f"{{ path = '{tls}/client.key' }}"),
                 "client_key must be a file path")):
            write_policy(extra, client_keys)
            rc, out = relay.check()
            self.assertEqual(78, rc, out)  # EX_CONFIG
            self.assertIn(message, out)
        # A password written as a plain string is read as a file name, as in KumoMTA; the
        # error must not repeat it.
        policy.write_text(LUA_POLICY.format(port=server.port, password_file=PASSWORD, tls=tls,
                                            extra="", client=client))
        rc, out = relay.check()
        self.assertEqual(78, rc, out)  # EX_CONFIG
        self.assertIn("auth.password: a string names a file holding the value", out)
        self.assert_no_secret(relay)

    # ---- --check and configuration errors ----

    def test_check_and_configuration_errors_never_show_a_secret(self):
        self.secrets = [PASSWORD, TOKEN]
        pw = self.secret_file("nats-password", PASSWORD, mode=0o644)
        relay = self.relay(self.relay_config(
            "nats://127.0.0.1:4222", nats={"user": "relay", "password": {"file": str(pw)}}),
            start=False)
        rc, out = relay.check()
        self.assertEqual(0, rc, out)
        self.assertIn("configuration OK", out)
        self.assertRegex(out, r"nats\.password\.file: \S*nats-password holds a secret and every "
                              r"user may read it \(mode 0644\); chmod o-r it")

        bad = [
            ({"user": "relay", "password": "${KNR_TEST_UNSET_VARIABLE}"},
             "nats.password: environment variable KNR_TEST_UNSET_VARIABLE is not set"),
            ({"user": "relay", "password": {"file": str(self.tmp / "missing")}},
             "nats.password.file: cannot read"),
            ({"user": "relay", "password": PASSWORD, "token": TOKEN},
             "nats: authenticate one way only"),
            ({"password": PASSWORD}, "nats: user and password go together; user is missing"),
            ({"user": "relay", "password": [PASSWORD]},
             "nats.password: expected a string, ${ENV_VAR} or { file: path }, got a list"),
            ({"tls": {"cert": str(pw)}}, "nats.tls: cert and key go together; key is missing"),
            ({"nkey_seed": str(pw)}, "no nkey seed"),
        ]
        for nats, message in bad:
            with self.subTest(message=message):
                relay.set_config(self.relay_config("nats://127.0.0.1:4222", nats=nats))
                rc, out = relay.check()
                self.assertEqual(78, rc, out)  # EX_CONFIG
                self.assertIn(message, out)
        self.assert_no_secret(relay)


class ReloadableNatsServer(h.NatsServer):
    """nats-server with every setting in its -c file: its reload (SIGHUP) re-reads the
    file alone and refuses a server name or JetStream store given by flags."""

    def args(self):
        return [h.Tools.nats_server, "-a", "127.0.0.1", "-p", self.port] + self.extra_args


LUA_POLICY = """\
local kumo = require 'kumo'

-- Connecting in init, as the seed document does, lets --check validate the connection.
kumo.on('init', function()
  client = kumo.nats.connect {{
    servers = {{ '127.0.0.1:{port}' }},
    name = 'kumo-nats-relay-test',
    auth = {{ username = {{ key_data = 'relay' }}, password = '{password_file}' }},
    tls_required = true,
    certificate = '{tls}/ca.pem',
    {client}
    {extra}
  }}
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
