#!/bin/sh
# The benchmark, one command: tests/bench/run.sh [profile]
#
# Builds the relay and the test tools (Release, in build-bench/ unless BENCH_BUILD_DIR says
# otherwise) and the benchmark's own nats.c programs, then runs bench.py: it starts its own
# nats-server -js on a free loopback port and prints the machine, the runs and the tables.
# See bench.py for the BENCH_* environment variables (BENCH_BIG=1 adds the ~1 GB backlog).
# NATS_SERVER=PATH runs it on another nats-server (e.g. one that tests/tools/nats-servers.sh
# built); BENCH_MATRIX=1 runs it on every server of the test matrix in turn.
set -eu
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
build=${BENCH_BUILD_DIR:-$repo/build-bench}
export BENCH_BUILD_DIR="$build"

build() {
    cmake -S "$repo" -B "$build" -DCMAKE_BUILD_TYPE=Release || return 1
    cmake --build "$build" -j"$(nproc)" --target kumo-nats-relay spoolwrite streamtool ||
        return 1
    for prog in bare_publisher latency_probe; do
        # shellcheck disable=SC2046 # pkg-config prints several words on purpose
        gcc -std=gnu11 -O2 -Wall -Wextra -Wshadow -Wno-unused-parameter \
            -o "$build/bench/$prog" "$here/$prog.c" \
            $(pkg-config --cflags --libs libnats) -lpthread || return 1
    done
}

mkdir -p "$build/bench"
log="$build/bench/build.log"
if ! build >"$log" 2>&1; then
    tail -n 40 "$log" >&2
    echo "run.sh: build failed (full log: $log)" >&2
    exit 1
fi
# natscli for the `nats bench` row (built once, cached; see tests/tools/nats-servers.sh).
if [ -z "${BENCH_NATS:-}" ]; then
    BENCH_NATS=$("$repo/tests/tools/nats-servers.sh" --natscli) || BENCH_NATS=
    export BENCH_NATS
fi
if [ "${BENCH_MATRIX:-0}" = 1 ]; then
    # Every server of the test matrix in turn (Debian's first), each its own full run.
    "$repo/tests/tools/nats-servers.sh" | while read -r name path; do
        echo "# nats-server $name"
        NATS_SERVER=$path /usr/bin/python3 "$here/bench.py" "$@" || exit 1
    done
    exit $?
fi
exec /usr/bin/python3 "$here/bench.py" "$@"
