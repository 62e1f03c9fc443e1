#!/usr/bin/env bash
# Runs the product on this machine: builds the gateway and the agent (and the
# demo page when npm is available and it is not built yet), then starts the
# gateway on the local runtime with data in ./data. It prints
# `listening on http://127.0.0.1:8080` and the demo URL with an admin token.
# Extra arguments go to the gateway (e.g. ./run.sh --listen 127.0.0.1:9090);
# PROFILE=release ./run.sh builds optimised binaries.
set -euo pipefail
cd "$(dirname "$0")"

profile="${PROFILE:-debug}"
if ! command -v cargo >/dev/null; then
  echo "run.sh: cargo not found: install Rust from https://rustup.rs" >&2
  exit 1
fi
if ! command -v git >/dev/null; then
  echo "run.sh: git not found (containers are cloned from git templates): apt-get install git" >&2
  exit 1
fi

if [ ! -f web-demo/dist/index.html ] && [ -f web-demo/package.json ]; then
  if command -v npm >/dev/null; then
    echo "== building the demo page (web-demo/dist)" >&2
    (cd web-demo && npm ci --no-audit --no-fund && npm run build) >&2
  else
    echo "run.sh: npm not found; serving the API without the demo page" >&2
  fi
fi

echo "== building gateway and agent ($profile)" >&2
if [ "$profile" = release ]; then
  cargo build --release --locked -p gateway -p agent --bins >&2
else
  cargo build --locked -p gateway -p agent --bins >&2
fi

# From the repository root the gateway's defaults are the demo's: data in
# ./data, templates from ./templates, the page from ./web-demo/dist.
exec "target/$profile/gateway" "$@"
