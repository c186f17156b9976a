"""The command line's contract with people and with systemd: one-line usage errors, the
exit statuses the unit relies on, and README commands that work in a root shell."""

import re
import subprocess

import harness as h

UNIT = h.REPO / "systemd" / "kumo-nats-relay.service"
TRY_HELP = "Try 'kumo-nats-relay --help'.\n"
EX_CONFIG = 78  # relay/exit_codes.h: RELAY_EXIT_CONFIG


def unit_values(key):
    """Every value of `key` in the unit, space-separated lists split."""
    values = []
    for line in UNIT.read_text().splitlines():
        m = re.match(rf"\s*{key}\s*=(.*)$", line)
        if m:
            values += m.group(1).split()
    return values


class CliTest(h.RelayTestCase):
    def setUp(self):
        super().setUp()
        h.Tools.require("relay")

    def run_relay(self, *args):
        return subprocess.run([str(h.Tools.relay), *args], capture_output=True, text=True,
                              timeout=30)

    def test_usage_errors_print_one_line_and_where_to_look(self):
        cases = [
            (["--bogus"], "kumo-nats-relay: unknown option '--bogus'\n"),
            (["-x"], "kumo-nats-relay: unknown option '-x'\n"),
            (["-c"], "kumo-nats-relay: option '-c' requires an argument\n"),
            (["--config"], "kumo-nats-relay: option '--config' requires an argument\n"),
            (["--log-format", "xml"], "kumo-nats-relay: --log-format is text or json\n"),
            (["status", "extra"], 'kumo-nats-relay: unexpected argument "extra"\n'),
        ]
        for args, line in cases:
            with self.subTest(args=args):
                proc = self.run_relay(*args)
                self.assertEqual((2, "", line + TRY_HELP),
                                 (proc.returncode, proc.stdout, proc.stderr))

    def test_help_lists_the_exit_statuses(self):
        proc = self.run_relay("--help")
        self.assertEqual(0, proc.returncode, proc.stderr)
        self.assertIn("Exit status: 0 success; 1 runtime or startup failure (also: another relay "
                      "holds\nstate_dir); 2 bad usage; 3 --once stopped before it relayed the "
                      "whole spool", proc.stdout)
        self.assertIn("; 78 configuration\nerror (EX_CONFIG: systemd does not restart on it).\n",
                      proc.stdout)

    def test_unit_does_not_restart_on_the_status_of_a_configuration_error(self):
        bad = self.tmp / "relay.yaml"
        bad.write_text("spool:\n  dir: [unclosed\n")
        for args in (["-c", str(bad)], ["--check", "-c", str(bad)]):
            with self.subTest(args=args):
                proc = self.run_relay(*args)
                self.assertEqual(EX_CONFIG, proc.returncode, proc.stderr)
                self.assertIn(f"{bad}:", proc.stderr)
        self.assertEqual([str(EX_CONFIG)], unit_values("RestartPreventExitStatus"))
        self.assertEqual(["on-failure"], unit_values("Restart"))
        # RestartPreventExitStatus= sees only the main process: a configuration error
        # reported by an ExecStartPre= would restart until the start limit.
        self.assertEqual([], unit_values("ExecStartPre"))
        self.assertTrue(unit_values("StartLimitIntervalSec"))
        self.assertTrue(unit_values("StartLimitBurst"))
        self.assertIn("man:kumo-nats-relay(8)", unit_values("Documentation"))

    def test_readme_commands_need_no_sudo(self):
        # A Debian container has no sudo: commands are written for a root shell, and
        # runuser where one must run as the relay's user.
        readme = (h.REPO / "README.md").read_text()
        blocks = re.findall(r"```(?:sh|bash|console)\n(.*?)```", readme, flags=re.S)
        self.assertTrue(blocks)
        sudo = [line for b in blocks for line in b.splitlines()
                if re.match(r"\s*(\$\s*)?sudo\b", line)]
        self.assertEqual([], sudo)
        self.assertNotRegex(readme, r"`sudo -u ")
        self.assertIn("runuser -u kumo-nats-relay --", readme)
