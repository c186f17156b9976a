#!/usr/bin/python3
"""Run the integration tests: every tests/integration/test_*.py, each file in its own
process (so a crash or hang in one cannot take the others down, and its servers die with
it), and print one summary line per file and a total.

    tests/integration/run.py [NAME...] [-k PATTERN] [-q]

NAME selects files (test_core or test_core.py); -k is unittest's test name pattern.
KNR_TEST_FILE_TIMEOUT (seconds, default 600) bounds each file. Exit status is non-zero
when any test failed or errored, or a file could not run. Skipped tests are counted as
skipped, never as passed.
"""

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest
from pathlib import Path

HERE = Path(__file__).resolve().parent


class CountingResult(unittest.TextTestResult):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.passed = 0

    def addSuccess(self, test):
        super().addSuccess(test)
        self.passed += 1


def _interrupt(signum, frame):
    raise KeyboardInterrupt(f"signal {signum}")


def run_child(path, result_file, patterns, verbosity):
    """Inside the child process: run one file's tests and write the counts as JSON."""
    # SIGTERM (the parent's timeout) must unwind through cleanups and atexit, which stop
    # the servers and relays the tests started.
    signal.signal(signal.SIGTERM, _interrupt)
    sys.stdout.reconfigure(line_buffering=True)
    sys.path.insert(0, str(HERE))
    loader = unittest.TestLoader()
    if patterns:
        loader.testNamePatterns = [p if "*" in p else f"*{p}*" for p in patterns]
    suite = loader.loadTestsFromName(path.stem)
    runner = unittest.TextTestRunner(stream=sys.stdout, verbosity=verbosity,
                                     resultclass=CountingResult)
    result = runner.run(suite)
    counts = {
        "passed": result.passed,
        "failed": len(result.failures) + len(result.errors) + len(result.unexpectedSuccesses),
        "skipped": len(result.skipped),
        "expected_failures": len(result.expectedFailures),
        "run": result.testsRun,
    }
    Path(result_file).write_text(json.dumps(counts))


def run_file(path, patterns, verbosity, timeout):
    """In the parent: run one file in a child process; returns the counts."""
    with tempfile.NamedTemporaryFile(prefix="knr-result-", suffix=".json", delete=False) as f:
        result_file = f.name
    args = [sys.executable, str(Path(__file__).resolve()), "--child", str(path), result_file,
            "-v", str(verbosity)]
    for p in patterns:
        args += ["-k", p]
    print(f"==== integration {path.stem}", flush=True)
    proc = subprocess.Popen(args, start_new_session=True)
    timed_out = False
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        print(f"integration {path.stem}: timed out after {timeout}s", flush=True)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    except KeyboardInterrupt:
        proc.send_signal(signal.SIGTERM)
        proc.wait()
        raise
    finally:
        # Anything the tests left behind in the child's session (servers, relays).
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    try:
        counts = json.loads(Path(result_file).read_text() or "{}")
    except (OSError, ValueError):
        counts = {}
    finally:
        Path(result_file).unlink(missing_ok=True)
    if not counts or timed_out or proc.returncode != 0:
        print(f"integration {path.stem}: the test process exited with {proc.returncode}"
              + (" (timeout)" if timed_out else ""), flush=True)
        counts.setdefault("passed", 0)
        counts.setdefault("skipped", 0)
        counts["failed"] = max(1, counts.get("failed", 0))
    return counts


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", help="test files to run (default: all)")
    parser.add_argument("-k", dest="patterns", action="append", default=[],
                        help="only tests matching this pattern (unittest -k)")
    parser.add_argument("-q", dest="quiet", action="store_true", help="less output")
    parser.add_argument("--label", default="integration",
                        help="the word the summary lines start with (e.g. the server's name)")
    parser.add_argument("-v", dest="verbosity", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", nargs=2, metavar=("FILE", "RESULT"), help=argparse.SUPPRESS)
    opts = parser.parse_args()
    verbosity = opts.verbosity if opts.verbosity is not None else (1 if opts.quiet else 2)

    if opts.child:
        run_child(Path(opts.child[0]), opts.child[1], opts.patterns, verbosity)
        return 0

    files = sorted(HERE.glob("test_*.py"))
    if opts.names:
        wanted = {n[:-3] if n.endswith(".py") else n for n in (Path(x).name for x in opts.names)}
        unknown = wanted - {f.stem for f in files}
        if unknown:
            print(f"integration: no such test file: {', '.join(sorted(unknown))}")
            return 2
        files = [f for f in files if f.stem in wanted]
    if not files:
        print(f"{opts.label}: no test files found")
        return 0

    timeout = float(os.environ.get("KNR_TEST_FILE_TIMEOUT", "600"))
    total = {"passed": 0, "failed": 0, "skipped": 0}
    lines = []
    started = time.monotonic()
    for path in files:
        t0 = time.monotonic()
        counts = run_file(path, opts.patterns, verbosity, timeout)
        for k in total:
            total[k] += counts.get(k, 0)
        lines.append(f"{opts.label} {path.stem}: {counts['passed']} passed, {counts['failed']} "
                     f"failed, {counts['skipped']} skipped ({time.monotonic() - t0:.1f}s)")
        print(lines[-1], flush=True)
    print()
    for line in lines:
        print(line)
    print(f"{opts.label}: {total['passed']} passed, {total['failed']} failed, "
          f"{total['skipped']} skipped ({time.monotonic() - started:.1f}s)", flush=True)
    return 1 if total["failed"] else 0


if __name__ == "__main__":
    sys.exit(main())
