#!/usr/bin/env bash
# The gateway benchmark: installs wrk and nginx from Debian if missing, the
# terminal peers if missing (wetty and the node client's `ws` and
# `socket.io-client` from npm into bench/gateway/node_modules; terminado and
# tornado from PyPI into a venv under target/), builds the release gateway,
# agent and bench-gateway, and runs every part in one go (preview proxy vs
# nginx, 4 KiB file GET vs nginx static, terminal throughput and keystroke
# echo with the Rust client and a browser-like node client against wetty and
# terminado, WebSocket echo through the preview proxy vs nginx's keepalive
# proxy, RSS with 1,000 idle terminals). Prints a Markdown report for
# BENCHMARKS.md; arguments go to bench-gateway (--help).
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

# The terminal peers. node (20 or later, for wetty 3.2) comes with the
# machine; without it bench-gateway reports the node rows as not run.
if command -v npm >/dev/null; then
  if ! (cd bench/gateway && node -e "require('node-pty'); require('ws'); require('socket.io-client')") 2>/dev/null; then
    # node-pty (wetty's PTY) builds with node-gyp when it has no prebuilt binary.
    npm ci --prefix bench/gateway --no-audit --no-fund --loglevel=error
  fi
else
  echo "npm missing: the node client and wetty will not run" >&2
fi
venv=target/bench-peers/venv
if ! "$venv/bin/python" -c 'import terminado' 2>/dev/null; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q terminado==0.18.1 tornado==6.6.1
fi

# 1,000 terminals need a few thousand descriptors (sockets, PTYs) in the
# bench client, the gateway and the agent, which inherit this limit.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

# The agent alone, as its image builds it (see bench/run.sh).
cargo build --release -p agent --bin agent
cargo build --release -p gateway -p bench --bins
exec ./target/release/bench-gateway --terminado-python "$venv/bin/python" "$@"
