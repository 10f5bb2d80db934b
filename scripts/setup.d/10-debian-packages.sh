#!/usr/bin/env bash
# Debian packages the tests need. apt-get update runs once per day at most.
set -euo pipefail
want=(zookeeper redis-server redis-tools)  # redis-tools: redis-cli, which builds the test Redis Cluster
missing=()
for p in "${want[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
[ ${#missing[@]} -eq 0 ] && exit 0
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q --no-install-recommends "${missing[@]}"
# The packaged services must not hold the default ports; tests start their own.
systemctl disable --now redis-server zookeeper >/dev/null 2>&1 || true
service redis-server stop >/dev/null 2>&1 || true
