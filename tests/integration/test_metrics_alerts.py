"""Metrics for alerts: Prometheus' process_* metrics, the lag's age (also while NATS is
away), the exposition Content-Type, and the shipped alert rules and Grafana dashboard:
promtool accepts the rules, and every metric they and the dashboard name is one a running
relay exposes."""

import json
import os
import re
import shutil
import subprocess
import time
import urllib.request
from pathlib import Path

import harness as h

STREAM = "KUMO"
RULES = h.REPO / "packaging" / "prometheus" / "kumo-nats-relay.rules.yml"
DASHBOARD = h.REPO / "packaging" / "grafana" / "kumo-nats-relay.json"
# Made by Prometheus itself for every scrape target, not exposed by the relay.
SYNTHETIC = {"up"}
# PromQL words that look like metric names.
PROMQL_WORDS = {"sum", "by", "rate", "increase", "deriv", "and", "or", "unless", "histogram_quantile",
                "label_values", "le", "instance", "job", "reason", "kind", "on", "without"}


def scrape(url):
    with urllib.request.urlopen(url, timeout=5) as resp:
        return resp.status, resp.headers["Content-Type"], resp.read().decode()


def samples(text):
    """{name: [(labels, value)]} of the exposition text."""
    out = {}
    for line in text.splitlines():
        if not line or line.startswith("#"):
            continue
        m = re.fullmatch(r"([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})? (\S+)", line)
        if not m:
            raise AssertionError(f"not an exposition line: {line!r}")
        out.setdefault(m.group(1), []).append((m.group(2) or "", float(m.group(3))))
    return out


def value(text, name):
    got = samples(text).get(name)
    if not got:
        raise AssertionError(f"{name} not exposed")
    return got[0][1]


def referenced_metrics(exprs):
    names = set()
    for expr in exprs:
        expr = re.sub(r'"[^"]*"', '""', expr)      # label values
        expr = re.sub(r"\[[^\]]*\]", "", expr)     # range selectors
        expr = re.sub(r"\{\{[^}]*\}\}", "", expr)  # legend templates
        for word in re.findall(r"(?<![\w$.])[a-zA-Z_:][a-zA-Z0-9_:]*", expr):
            if word not in PROMQL_WORDS and not re.fullmatch(r"\d.*|e\d+", word):
                names.add(word)
    return names


def rule_exprs():
    return [m.group(1) for m in re.finditer(r"^\s+expr:\s*(.+)$", RULES.read_text(), re.M)]


def dashboard_exprs():
    dash = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dash["panels"] for t in p.get("targets", [])]
    exprs += [v["query"] for v in dash["templating"]["list"] if v.get("type") == "query"]
    return exprs


class MetricsAlertsTest(h.RelayTestCase):
    def setUp(self):
        super().setUp()
        self.server = self.nats()
        h.create_stream(self.server.url, STREAM, ["kumo.>"], dup_window=600)
        self.port = h.free_port()
        self.base = f"http://127.0.0.1:{self.port}"

    def start_relay(self):
        return self.relay(self.relay_config(self.server.url,
                                            metrics={"listen": f"127.0.0.1:{self.port}"}))

    def test_promtool_accepts_the_rules(self):
        promtool = shutil.which("promtool")
        if not promtool:
            if os.environ.get("CI"):
                self.fail("promtool is missing (packaging/install-deps.sh installs prometheus)")
            self.skipTest("promtool is not installed (Debian package prometheus)")
        proc = subprocess.run([promtool, "check", "rules", str(RULES)], capture_output=True,
                              text=True, timeout=60)
        self.assertEqual(0, proc.returncode, proc.stdout + proc.stderr)
        self.assertIn("SUCCESS: 10 rules found", proc.stdout)

    def test_rules_and_dashboard_name_only_exposed_metrics(self):
        lines = h.make_records(50, seed=1)
        h.write_segment(self.spool / h.segment_name(), lines)
        h.write_segment(self.spool / (h.segment_name() + "_x"), [b"not json\n"])
        started = time.time()
        self.start_relay()
        h.wait_count(self.server.url, STREAM, 50, timeout=60)

        def exposed():
            status, ctype, text = scrape(self.base + "/metrics")
            return status == 200 and 'reason="not_json"} 1' in text and (ctype, text)
        ctype, text = h.poll(exposed, 30, "metrics after the first records", ignore=(OSError,))
        self.assertEqual("text/plain; version=0.0.4; charset=utf-8", ctype)
        names = set(samples(text))

        dash = json.loads(DASHBOARD.read_text())
        self.assertEqual("kumo-nats-relay", dash["uid"])
        self.assertGreaterEqual(len(dash["panels"]), 6)
        wanted = referenced_metrics(rule_exprs()) | referenced_metrics(dashboard_exprs())
        for must in ("kumo_nats_relay_lag_seconds", "kumo_nats_relay_lag_file_bytes",
                     "kumo_nats_relay_records_deadlettered_total", "kumo_nats_relay_in_flight",
                     "kumo_nats_relay_nats_connected", "kumo_nats_relay_publishes_acked_total",
                     "kumo_nats_relay_checkpoint_failures_total"):
            self.assertIn(must, wanted)
        self.assertEqual(set(), wanted - names - SYNTHETIC,
                         "metrics the rules or the dashboard name and /metrics does not expose")

        # Prometheus' standard process metrics, of this very process.
        relay_pid = self._procs[-1].pid
        start = value(text, "process_start_time_seconds")
        self.assertLess(abs(start - started), 5, "start time is the relay's")
        rss_kb = h.proc_status_kb(relay_pid)
        self.assertGreater(value(text, "process_resident_memory_bytes"), 1 << 20)
        self.assertLess(abs(value(text, "process_resident_memory_bytes") / 1024 - rss_kb),
                        max(rss_kb / 2, 4096))
        fds = len(os.listdir(f"/proc/{relay_pid}/fd"))
        self.assertLessEqual(abs(value(text, "process_open_fds") - fds), 3)
        self.assertEqual(
            int(Path(f"/proc/{relay_pid}/limits").read_text().split("Max open files")[1].split()[0]),
            value(text, "process_max_fds"))
        self.assertGreaterEqual(value(text, "process_cpu_seconds_total"), 0)
        # gauges are refreshed every second
        h.poll(lambda: [value(scrape(self.base + "/metrics")[2], f"kumo_nats_relay_lag_{n}")
                        for n in ("file_bytes", "seconds")] == [0, 0], 30, "no lag")

    def test_lag_seconds_grows_while_nats_is_away(self):
        """Before: kumo_nats_relay_lag_seconds stayed 0 while disconnected, since nothing
        is read then. Now the segment written during the outage is the lag, and its age
        grows until the server is back; then every record lands once and the lag is 0."""
        names = h.segment_names(2)
        first = h.make_records(20, seed=2, prefix="a")
        h.write_segment(self.spool / names[0], first)
        relay = self.start_relay()
        h.wait_count(self.server.url, STREAM, 20, timeout=60)
        self.server.stop()
        h.poll(lambda: value(scrape(self.base + "/metrics")[2], "kumo_nats_relay_nats_connected")
               == 0, 30, "the relay to see the server gone")
        second = h.make_records(30, seed=3, prefix="b")
        h.write_segment(self.spool / names[1], second)

        def lag():
            text = scrape(self.base + "/metrics")[2]
            return (value(text, "kumo_nats_relay_lag_seconds"),
                    value(text, "kumo_nats_relay_lag_file_bytes"))
        h.poll(lambda: lag()[0] >= 2.0, 30, "the lag's age to pass 2 s while disconnected")
        age, size = lag()
        self.assertEqual((self.spool / names[1]).stat().st_size, size)
        h.poll(lambda: lag()[0] >= age + 1.0, 30, "the lag's age to keep growing")

        self.server.start()
        h.wait_count(self.server.url, STREAM, 50, timeout=60)
        h.poll(lambda: lag() == (0, 0), 30, "the lag to be 0 once everything is acknowledged")
        self.assertEqual(0, relay.stop())
        h.assert_exactly_once(h.dump_stream(self.server.url, STREAM),
                              h.expected_messages("test", names[0], first)
                              + h.expected_messages("test", names[1], second))
