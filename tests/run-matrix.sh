#!/usr/bin/env bash
# The server matrix: the integration suites that exercise the server (core, window,
# deploy, faults) once on each current nats-server release that tests/tools/nats-servers.sh
# builds (Debian's 2.9.10, the default server, has run the whole suite already).
#
#   tests/run-matrix.sh [integration run.py arguments; default: the four suites]
#
# Prints one summary line per server, "matrix nats-server-X.Y.Z: N passed, M failed, ...".
# Without Go >= 1.24 the matrix cannot be built: that is said, and it is a failure under
# CI=true (a CI run must not pass on Debian's server alone), a skip otherwise.
set -uo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/.."

suites=("$@")
if [[ ${#suites[@]} -eq 0 ]]; then
    suites=(test_core test_window test_deploy test_faults)
fi

list=$(mktemp)
trap 'rm -f "$list"' EXIT
tests/tools/nats-servers.sh >"$list"
rc=$?
if [[ $rc -eq 3 ]]; then
    if [[ ${CI:-} == true ]]; then
        echo "matrix: 0 passed, 1 failed (no Go >= 1.24 to build the current nats-server releases)"
        exit 1
    fi
    echo "matrix: skipped: no Go >= 1.24 here, so only Debian's nats-server was tested"
    exit 0
elif [[ $rc -ne 0 ]]; then
    echo "matrix: 0 passed, 1 failed (building the nats-server releases failed: exit $rc)"
    exit 1
fi

status=0
summaries=()
while read -r name path; do
    [[ $name == debian-* ]] && continue
    out=$(mktemp)
    NATS_SERVER=$path /usr/bin/python3 tests/integration/run.py --label "matrix $name" -q \
        "${suites[@]}" | tee "$out"
    [[ ${PIPESTATUS[0]} -eq 0 ]] || status=1
    summaries+=("$(grep -E "^matrix $name: " "$out" | tail -n 1)")
    rm -f "$out"
done <"$list"
printf '%s\n' "${summaries[@]}"
exit $status
