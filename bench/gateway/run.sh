#!/usr/bin/env bash
# The gateway benchmark: installs wrk and nginx from Debian if missing,
# builds the release gateway, agent and bench-gateway, and runs every part in
# one go (preview proxy vs nginx, 4 KiB file GET vs nginx static, terminal
# throughput and keystroke echo, RSS with 1,000 idle terminals). Prints a
# Markdown report for BENCHMARKS.md; arguments go to bench-gateway (--help).
set -euo pipefail
cd "$(dirname "$0")/../.."

need=()
command -v wrk >/dev/null || need+=(wrk)
command -v nginx >/dev/null || need+=(nginx)
if [ ${#need[@]} -gt 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

# 1,000 terminals need a few thousand descriptors (sockets, PTYs) in the
# bench client, the gateway and the agent, which inherit this limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

cargo build --release -p gateway -p agent -p bench --bins
exec ./target/release/bench-gateway "$@"
