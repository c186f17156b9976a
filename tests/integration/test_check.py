"""--check refuses what the start would refuse for configuration reasons, in the same
words: each case runs --check (exit status and every error line, exactly) and then the
daemon (the same exit status and the same lines, logged as errors or printed as
configuration errors). And the metrics.listen forms --check accepts do work at start.

Directory permissions are tested as the user nobody (the tests run as root, for whom
every directory is readable)."""

import os
import re
import socket
import subprocess

import harness as h

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
LISTEN_FORMS = "127.0.0.1:9477, [::1]:9477, localhost:9477 or :9477 (every interface)"


http_get = h.http_get


def ipv6_loopback():
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
            s.bind(("::1", 0))
        return True
    except OSError:
        return False


class CheckEqualsStartTest(h.RelayTestCase):
    def setUp(self):
        super().setUp()
        self.dead = f"nats://127.0.0.1:{h.free_port()}"  # nothing listens: start needs none

    def run_relay(self, relay, *args, user=None):
        """(exit status, output) of one run of the binary with relay's configuration."""
        cmd = [str(h.Tools.relay), "-c", str(relay.config_path), *args]
        proc = subprocess.run((user or []) + cmd, capture_output=True, timeout=60,
                              env=relay.env)
        return proc.returncode, (proc.stdout + proc.stderr).decode()

    def messages(self, relay, output):
        """The error lines of one run, without what differs between --check and the start:
        --check's "<config>: " before a message, the start's "<time> error "."""
        prefix = f"{relay.config_path}: "
        out = []
        for line in output.splitlines():
            m = re.fullmatch(r"\S+ error (.*)", line)
            if m:
                out.append(m.group(1))
            elif line.startswith(prefix):
                out.append(line[len(prefix):])
            elif line.startswith(f"{relay.config_path}:"):
                out.append(line)  # file:line:column, the same from both
        return out

    def assert_refused(self, relay, expected, user=None):
        rc, out = self.run_relay(relay, "--check", user=user)
        self.assertEqual(78, rc, out)  # EX_CONFIG, relay/exit_codes.h
        self.assertEqual(expected, self.messages(relay, out), out)
        self.assertNotIn("configuration OK", out)
        rc, out = self.run_relay(relay, user=user)
        self.assertEqual(78, rc, out)
        self.assertEqual(expected, self.messages(relay, out), out)

    def config(self, **overrides):
        return self.relay_config(self.dead, **overrides)

    def line_of(self, relay, text):
        """The 1-based line and column where `text` starts in the configuration file."""
        for number, line in enumerate(relay.config_path.read_text().splitlines(), 1):
            if text in line:
                return f"{relay.config_path}:{number}:{line.index(text) + 1}"
        raise AssertionError(f"{text!r} not in the configuration")

    # ---- metrics.listen -------------------------------------------------------------

    def test_listen_forms_check_and_serve(self):
        """9477, :9477 (every interface: IPv4 and IPv6 loopback both answer) and
        [::1]:9477 pass --check and serve /healthz at start."""
        forms = [(lambda p: p, ["127.0.0.1"]), (lambda p: f":{p}", ["127.0.0.1"])]
        if ipv6_loopback():
            forms[1][1].append("[::1]")
            forms.append((lambda p: f"[::1]:{p}", ["[::1]"]))
        for make, hosts in forms:
            port = h.free_port()
            with self.subTest(listen=make(port)):
                relay = self.relay(self.config(metrics={"listen": make(port)}), start=False,
                                   name=f"relay{port}")
                rc, out = self.run_relay(relay, "--check")
                self.assertEqual((0, "configuration OK\n"), (rc, out))
                relay.start()
                for host in hosts:
                    status, body = h.poll(
                        lambda: http_get(f"http://{host}:{port}/healthz"), 10,
                        f"/healthz on {host}:{port}", ignore=(OSError,))
                    self.assertEqual(503, status)
                    self.assertTrue(body.startswith("not connected to nats: "), body)
                self.assertEqual(0, relay.stop())

    def test_listen_refused_the_same(self):
        for listen, why in (("nine", 'got "nine": no port from 1 to 65535'),
                            ("::1:9477", 'got "::1:9477": ::1 is not an IP address (write an '
                                         "IPv6 one in brackets)"),
                            ("example.net:9477", 'got "example.net:9477": example.net is not an '
                                                 "IP address (write an IPv6 one in brackets)")):
            with self.subTest(listen=listen):
                relay = self.relay(self.config(metrics={"listen": listen}), start=False)
                at = self.line_of(relay, f'"{listen}"')
                self.assert_refused(relay, [f"{at}: metrics.listen: expected {LISTEN_FORMS}, "
                                            f"{why}"])

    # ---- nats.servers ---------------------------------------------------------------

    def test_server_urls_refused_the_same(self):
        for url, why in (
                ("http://127.0.0.1:4222", "the scheme must be nats:// or tls://, got http://"),
                ("ws://127.0.0.1:4222", "the scheme must be nats:// or tls://, got ws://"),
                ("${KNR_TEST_UNSET}", "${KNR_TEST_UNSET} is not expanded in a server URL (only in "
                                      "user, password and token): write the URL itself"),
                ("nats://127.0.0.1:99999", "the port of a server URL is a number from 1 to 65535"),
                ("nats://:4222", "no host in the server URL")):
            with self.subTest(url=url):
                relay = self.relay(self.relay_config(["nats://127.0.0.1:4222", url]), start=False)
                at = self.line_of(relay, f'"{url}"')
                self.assert_refused(relay, [f"{at}: nats.servers[1]: {why}"])
        # Accepted: nats.c's own forms.
        for url in ("nats://user:pw@127.0.0.1:4222", "tls://[::1]:4222", "127.0.0.1",
                    "NATS://127.0.0.1:4222"):
            relay = self.relay(self.relay_config(url), start=False)
            self.assertEqual((0, "configuration OK\n"), self.run_relay(relay, "--check"))

    # ---- directories ------------------------------------------------------------------

    def nobody_dirs(self, spool_mode, state_owner):
        """The test's directories as nobody would meet them."""
        os.chmod(self.tmp, 0o755)
        os.chmod(self.spool, spool_mode)
        self.state.mkdir(exist_ok=True)
        os.chown(self.state, *state_owner)

    def test_spool_the_user_cannot_read(self):
        relay = self.relay(self.config(), start=False)
        self.nobody_dirs(0o700, (65534, 65534))
        self.assert_refused(relay, [f"spool directory {self.spool}: Permission denied"],
                            user=NOBODY)
        os.chmod(self.spool, 0o755)
        rc, out = self.run_relay(relay, "--check", user=NOBODY)
        self.assertEqual((0, "configuration OK\n"), (rc, out))

    def test_state_dir_the_user_cannot_write(self):
        relay = self.relay(self.config(), start=False)
        self.nobody_dirs(0o755, (0, 0))
        self.assert_refused(relay, [f"state_dir {self.state}: Permission denied"], user=NOBODY)
        # Missing, under a directory nobody cannot write: the start could not make it.
        under = self.state / "sub"
        relay.set_config(h.to_yaml(h.relay_config(self.spool, under, self.dead)))
        self.assert_refused(relay, [f"cannot create state_dir {under}: Permission denied"],
                            user=NOBODY)
        # A checkpoint the user cannot read, in a state_dir it owns.
        os.chown(self.state, 65534, 65534)
        relay.set_config(self.config())
        (self.state / "checkpoint").write_text("")
        os.chmod(self.state / "checkpoint", 0o600)
        self.assert_refused(relay, [f"state_dir {self.state}: cannot read {self.state}/checkpoint"
                                    ": Permission denied"], user=NOBODY)

    def test_state_dir_a_file_and_a_missing_spool(self):
        """Every problem is reported, and the start names the same ones."""
        a_file = self.tmp / "state-file"
        a_file.write_text("")
        missing = self.tmp / "no-spool"
        relay = self.relay(h.to_yaml(h.relay_config(missing, a_file, self.dead)), start=False)
        self.assert_refused(relay, [f"spool directory {missing}: No such file or directory",
                                    f"state_dir {a_file}: not a directory"])

    # ---- the policy -------------------------------------------------------------------

    def lua_relay(self, text):
        policy = self.tmp / "policy.lua"
        policy.write_text(text)
        return self.relay(self.config(policy={"script": str(policy), "subject": None}),
                          start=False), policy

    def test_publish_in_init_refused_the_same(self):
        relay, _ = self.lua_relay(
            "local kumo = require 'kumo'\n"
            "kumo.on('init', function()\n"
            f"  local client = kumo.nats.connect {{ servers = {{ '{self.dead}' }} }}\n"
            "  client:publish { subject = 'kumo.x', payload = 'too early' }\n"
            "end)\n")
        self.assert_refused(relay, ["init: policy.lua:4: publish: only possible while a record "
                                    "is being handled"])

    def test_unknown_kumo_functions_refused_the_same(self):
        relay, policy = self.lua_relay(
            "local kumo = require 'kumo'\n"
            "-- kumo.in_a_comment() and \"kumo.in_a_string()\" are not calls\n"
            "local s = 'kumo.nope()'\n"
            "kumo.on('init', function()\n"
            "  if kumo.newer_api then kumo.newer_api() end -- tested first: excused\n"
            "  if kumo.dkim then kumo.dkim.sign() end -- its table tested: excused\n"
            "  kumo.serde.json_encode({})\n"
            "end)\n"
            "kumo.on('make.nats', function()\n"
            f"  local client = kumo.nats.conect {{ servers = {{ '{self.dead}' }} }}\n"
            "  kumo.log_inf 'typo'\n"
            "end)\n")
        self.assert_refused(relay, [f"policy.script {policy}: policy.lua:10: kumo.nats.conect is "
                                    "not a function the relay provides (and 1 more call to "
                                    "unknown kumo functions)"])


if __name__ == "__main__":
    import unittest
    unittest.main()
