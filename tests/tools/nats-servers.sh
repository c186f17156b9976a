#!/usr/bin/env bash
# Build, once, the nats-server releases of the test matrix and natscli, into a cache
# outside the tree, and print "NAME PATH" for each server of the matrix (Debian's first).
#
#   tests/tools/nats-servers.sh            build what is missing, print the matrix
#   tests/tools/nats-servers.sh --natscli  build what is missing, print the path of `nats`
#
# The versions are pinned: the newest patch of each line the Go module proxy served when
# they were last chosen. KNR_NATS_CACHE (default /var/cache/kumo-nats-relay-tests) holds
# one directory per version, so a second run builds nothing. Needs Go >= 1.24 (the
# servers' go.mod); without it, prints only Debian's server and exits 3.
set -euo pipefail

SERVER_VERSIONS=(v2.10.27 v2.12.15 v2.15.3)
NATSCLI_VERSION=v0.5.0
CACHE=${KNR_NATS_CACHE:-/var/cache/kumo-nats-relay-tests}

export PATH=$PATH:/usr/local/go/bin
go_ok() {
    command -v go >/dev/null 2>&1 || return 1
    local v
    v=$(go env GOVERSION 2>/dev/null) || return 1 # go1.26.8
    v=${v#go}
    local major=${v%%.*} rest=${v#*.}
    local minor=${rest%%.*}
    ((major > 1 || (major == 1 && minor >= 24)))
}

build() { # module@version into $CACHE/<dir>
    local pkg=$1 version=$2 dir=$3 bin=$4
    if [[ -x $CACHE/$dir/$bin ]]; then
        return 0
    fi
    mkdir -p "$CACHE/$dir.tmp"
    echo "building $pkg@$version into $CACHE/$dir" >&2
    GOBIN=$CACHE/$dir.tmp GOFLAGS=-mod=mod CGO_ENABLED=0 go install "$pkg@$version" >&2
    rm -rf "${CACHE:?}/$dir"
    mv "$CACHE/$dir.tmp" "$CACHE/$dir"
}

debian=$(command -v nats-server || echo /usr/sbin/nats-server)

if ! go_ok; then
    echo "no Go >= 1.24 on this machine: the server matrix is Debian's nats-server only" >&2
    if [[ ${1:-} != --natscli ]]; then
        echo "debian-$("$debian" --version | awk '{print $NF}' | sed 's/^v//') $debian"
    fi
    exit 3
fi

if [[ ${1:-} == --natscli ]]; then
    build github.com/nats-io/natscli/nats "$NATSCLI_VERSION" "natscli-$NATSCLI_VERSION" nats
    echo "$CACHE/natscli-$NATSCLI_VERSION/nats"
    exit 0
fi

echo "debian-$("$debian" --version | awk '{print $NF}' | sed 's/^v//') $debian"
for v in "${SERVER_VERSIONS[@]}"; do
    build github.com/nats-io/nats-server/v2 "$v" "nats-server-$v" nats-server
    echo "nats-server-${v#v} $CACHE/nats-server-$v/nats-server"
done
