#!/usr/bin/env bash
# The whole project built with AddressSanitizer and UndefinedBehaviorSanitizer
# (-DRELAY_SANITIZE=ON, into build-asan/), its unit tests and the integration tests run
# against that build, then one relay --once run under valgrind memcheck on the normal
# build (build/, or KNR_BUILD_DIR).
#
#   tests/sanitize.sh [integration run.py arguments, e.g. test_core test_lua]
#
# Every sanitizer report, from any process of any test (the relay, the unit tests, the
# test tools), is written to build-asan/sanitizer-reports/ and counted: one report fails
# the run even when the test that caused it passed. Prints a summary line:
#   sanitize: unit N passed, M failed; integration P passed, F failed; R sanitizer reports; memcheck ok
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."
build=build-asan
reports="$PWD/$build/sanitizer-reports"

cmake -S . -B "$build" -DRELAY_SANITIZE=ON -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j2 >/dev/null
rm -rf "$reports"
mkdir -p "$reports"

# halt_on_error: the first error stops the process, whose test then fails too.
# detect_leaks: a leak at exit is an error (exit code 23).
export ASAN_OPTIONS="log_path=$reports/asan:halt_on_error=1:detect_leaks=1:abort_on_error=0"
export UBSAN_OPTIONS="log_path=$reports/ubsan:print_stacktrace=1:halt_on_error=1"
export LSAN_OPTIONS="suppressions=$PWD/tests/lsan.supp:print_suppressions=0"

unit_log=$(mktemp)
trap 'rm -f "$unit_log"' EXIT
set +e
ctest --test-dir "$build" --output-on-failure >"$unit_log" 2>&1
unit_rc=$?
set -e
summary=$(grep -E '[0-9]+ tests? failed out of [0-9]+' "$unit_log" | tail -n 1 || true)
unit_failed=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"${summary:-0 tests failed out of 0}")
unit_total=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\2/' <<<"${summary:-0 tests failed out of 0}")
if [[ $unit_rc -ne 0 && $unit_failed -eq 0 ]]; then
    unit_failed=1
fi
if [[ $unit_failed -ne 0 ]]; then
    grep -E "Failed|FAIL|ERROR" "$unit_log" | head -n 20
fi
echo "sanitize unit: $((unit_total - unit_failed)) passed, $unit_failed failed"

integration_log=$(mktemp)
set +e
KNR_SANITIZED=1 KNR_BUILD_DIR="$build" KNR_TEST_FILE_TIMEOUT="${KNR_TEST_FILE_TIMEOUT:-1200}" \
    /usr/bin/python3 tests/integration/run.py -q "$@" 2>&1 | tee "$integration_log"
integration_rc=${PIPESTATUS[0]}
set -e
counts=$(grep -E '^integration: [0-9]+ passed' "$integration_log" | tail -n 1 || true)
rm -f "$integration_log"
passed=$(sed -nE 's/^integration: ([0-9]+) passed, ([0-9]+) failed.*/\1/p' <<<"$counts")
failed=$(sed -nE 's/^integration: ([0-9]+) passed, ([0-9]+) failed.*/\2/p' <<<"$counts")
passed=${passed:-0}
failed=${failed:-1}

report_count=$(find "$reports" -type f | wc -l)
for report in $(find "$reports" -type f | head -n 5); do
    echo "---- $report"
    head -n 40 "$report"
done

unset ASAN_OPTIONS UBSAN_OPTIONS LSAN_OPTIONS
memcheck=ok
normal=${KNR_BUILD_DIR:-build}
if [[ ! -x "$normal/kumo-nats-relay" ]]; then
    cmake -S . -B "$normal" >/dev/null
    cmake --build "$normal" -j2 >/dev/null
fi
if ! KNR_BUILD_DIR="$normal" /usr/bin/python3 tests/integration/memcheck.py; then
    memcheck=FAILED
fi

echo "sanitize: unit $((unit_total - unit_failed)) passed, $unit_failed failed; integration" \
    "$passed passed, $failed failed; $report_count sanitizer reports; memcheck $memcheck"
if [[ $unit_failed -ne 0 || $integration_rc -ne 0 || $failed -ne 0 || $report_count -ne 0 ||
    $memcheck != ok ]]; then
    echo "sanitize: FAILED"
    exit 1
fi
echo "sanitize: passed"
