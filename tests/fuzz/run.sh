#!/usr/bin/env bash
# Build the libFuzzer targets (clang, -fsanitize=fuzzer,address,undefined, into
# build-fuzz/) and run each for a bounded time, two at a time.
#
#   tests/fuzz/run.sh [TARGET...]        e.g. tests/fuzz/run.sh config checkpoint
#
# FUZZ_SECONDS (default 60) bounds each target. Each starts from its seed corpus in
# tests/fuzz/corpus/<name>/ (never written to) plus what earlier runs found
# (build-fuzz/corpus/<name>/). Prints "fuzz <name>: N execs, 0 crashes" per target; a
# crash, leak, timeout or out-of-memory input is kept in tests/fuzz/crashes/ (git-ignored)
# and makes the script exit 1. Reproduce one with build-fuzz/tests/fuzz/fuzz_<name> FILE.
set -euo pipefail

cd "$(dirname "${BASH_SOURCE[0]}")/../.."
seconds=${FUZZ_SECONDS:-60}
build=build-fuzz
crashes=tests/fuzz/crashes

if ! command -v clang >/dev/null; then
    echo "fuzz: clang is missing (apt-get install clang libclang-rt-14-dev)"
    exit 1
fi
cmake -S . -B "$build" -DCMAKE_C_COMPILER=clang -DRELAY_FUZZ=ON -DRELAY_TESTS=OFF \
    -DCMAKE_BUILD_TYPE=RelWithDebInfo >/dev/null
cmake --build "$build" -j2 >/dev/null

if [[ $# -gt 0 ]]; then
    targets=("$@")
else
    targets=()
    for src in tests/fuzz/fuzz_*.c; do
        name=$(basename "$src" .c)
        targets+=("${name#fuzz_}")
    done
fi

mkdir -p "$crashes" "$build/logs"

run_one() {
    local name=$1 seconds=$2 build=$3 crashes=$4
    local work="$build/corpus/$name"
    mkdir -p "$work"
    # The seed corpus comes second: libFuzzer adds new inputs to the first directory only.
    "$build/tests/fuzz/fuzz_$name" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
        -max_len=65536 -print_final_stats=1 -artifact_prefix="$crashes/$name-" \
        "$work" "tests/fuzz/corpus/$name" >"$build/logs/$name.log" 2>&1 || true
}
export -f run_one

for name in "${targets[@]}"; do
    if [[ ! -x "$build/tests/fuzz/fuzz_$name" ]]; then
        echo "fuzz: no target $name (tests/fuzz/fuzz_$name.c)"
        exit 2
    fi
    rm -f "$crashes/$name"-*
done
printf '%s\n' "${targets[@]}" | xargs -P 2 -I{} bash -c \
    'run_one "$1" "$2" "$3" "$4"' _ {} "$seconds" "$build" "$crashes"

failed=0
for name in "${targets[@]}"; do
    log="$build/logs/$name.log"
    execs=$(sed -nE 's/^stat::number_of_executed_units: *([0-9]+).*/\1/p' "$log" | tail -n 1)
    found=$(find "$crashes" -name "$name-*" -type f | wc -l)
    if [[ -z "$execs" && $found -eq 0 ]]; then
        found=1 # libFuzzer died before its final stats: count it, show why
    fi
    echo "fuzz $name: ${execs:-0} execs, $found crashes"
    if [[ $found -ne 0 ]]; then
        failed=1
        grep -E "ERROR|SUMMARY|runtime error|Test unit written" "$log" | head -n 8 | sed 's/^/    /'
    fi
done
if [[ $failed -ne 0 ]]; then
    echo "fuzz: FAILED (inputs kept in $crashes/)"
    exit 1
fi
echo "fuzz: ${#targets[@]} targets, ${seconds}s each, no crashes"
