#!/usr/bin/env bash
# Installs what building and testing kumo-nats-relay needs on Debian 12, from Debian's
# own packages. Idempotent: skips apt entirely when everything is already there.
set -euo pipefail

packages=(
  build-essential cmake pkg-config
  libnats-dev libjansson-dev libyaml-dev liblua5.4-dev libzstd-dev
  libsystemd-dev libmicrohttpd-dev libssl-dev
  libcriterion-dev nats-server zstd python3 procps openssl
  clang libclang-rt-14-dev valgrind
  # tests/packaging: build, inspect, lint and install the .deb and the .rpm
  rpm rpmlint lintian cpio dpkg-dev file help2man systemd adduser init-system-helpers man-db
  logrotate
  # tests/integration/test_metrics_alerts.py: promtool checks the shipped alert rules
  prometheus
)

missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -eq 0 ]; then
  echo "install-deps: all ${#packages[@]} packages present"
  exit 0
fi
if [ "$(id -u)" -ne 0 ]; then
  SUDO=sudo
else
  SUDO=
fi
echo "install-deps: installing ${missing[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
echo "install-deps: done"
