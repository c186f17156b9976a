#!/usr/bin/env bash
# The project's test command: build into build/, run the unit tests (ctest), then the
# integration tests (real nats-server, real binary), then the packaging suite (builds,
# checks, installs and purges the .deb and the .rpm in build-pkg/), then the fuzz suite
# (tests/fuzz/run.sh: every libFuzzer target for FUZZ_SECONDS, default 60) and the
# sanitizer suite (tests/sanitize.sh: ASan+UBSan build, unit and integration tests on it,
# a valgrind memcheck run). Runs from any directory.
#
#   tests/run.sh [integration run.py arguments, e.g. test_core -k restart]
#
# Without arguments, the core, window, deploy and fault suites then run again on each
# current nats-server release of the matrix (tests/run-matrix.sh; MATRIX=0 leaves it out).
# FUZZ=0 or SANITIZE=0 leaves that suite out. Under the sanitizers the integration tests
# are those selected by the arguments, or without any all but the two fault suites
# (test_faults, test_faults_spool: timing-bound, minutes more under ASan); run
# tests/sanitize.sh alone for those.
#
# Exit status is non-zero when the build fails or any test fails.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

cmake -S . -B build -DRELAY_WERROR=ON
cmake --build build -j2

unit_log=$(mktemp)
trap 'rm -f "$unit_log"' EXIT

set +e
ctest --test-dir build --output-on-failure 2>&1 | tee "$unit_log"
unit_rc=${PIPESTATUS[0]}
set -e

# ctest's own summary: "100% tests passed, 0 tests failed out of 7" (absent if no tests).
unit_failed=0
unit_total=0
summary=$(grep -E '[0-9]+ tests? failed out of [0-9]+' "$unit_log" | tail -n 1 || true)
if [[ -n "$summary" ]]; then
    unit_failed=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\1/' <<<"$summary")
    unit_total=$(sed -E 's/.* ([0-9]+) tests? failed out of ([0-9]+).*/\2/' <<<"$summary")
fi
if [[ $unit_rc -ne 0 && $unit_failed -eq 0 ]]; then
    unit_failed=1 # ctest itself failed (e.g. a test could not start)
fi
unit_passed=$((unit_total - unit_failed))
if [[ $unit_passed -lt 0 ]]; then
    unit_passed=0
fi
echo "unit: $unit_passed passed, $unit_failed failed"

set +e
/usr/bin/python3 tests/integration/run.py "$@"
integration_rc=$?
matrix_rc=0
if [[ ${MATRIX:-1} != 0 && $# -eq 0 ]]; then
    tests/run-matrix.sh
    matrix_rc=$?
fi
tests/packaging/run.sh
packaging_rc=$?
fuzz_rc=0
if [[ ${FUZZ:-1} != 0 ]]; then
    tests/fuzz/run.sh
    fuzz_rc=$?
fi
sanitize_rc=0
if [[ ${SANITIZE:-1} != 0 ]]; then
    sanitize_args=("$@")
    if [[ $# -eq 0 ]]; then
        for f in tests/integration/test_*.py; do
            case $(basename "$f") in
            test_faults.py | test_faults_spool.py) ;;
            *) sanitize_args+=("$(basename "$f" .py)") ;;
            esac
        done
    fi
    tests/sanitize.sh "${sanitize_args[@]}"
    sanitize_rc=$?
fi
set -e

echo "unit: $unit_passed passed, $unit_failed failed"
if [[ $unit_rc -ne 0 || $unit_failed -ne 0 || $integration_rc -ne 0 || $matrix_rc -ne 0 || $packaging_rc -ne 0 ||
    $fuzz_rc -ne 0 || $sanitize_rc -ne 0 ]]; then
    echo "tests FAILED"
    exit 1
fi
echo "tests passed"
