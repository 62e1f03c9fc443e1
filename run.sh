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
#
# As root the gateway gives each project a user of its own, which needs the
# folders above ./data to be searchable by other users. A checkout under
# /root (0700) is not: the demo then runs every project as root, which suits
# one person trying it on their own machine, and says so.
extra=()
if [ "$(id -u)" = 0 ]; then
  dir="$PWD"
  while [ "$dir" != / ]; do
    if [ "$(( 0$(stat -c %a "$dir") & 1 ))" = 0 ]; then
      echo "run.sh: $dir is not searchable by other users: every project runs as root (one trusted user); for a user per project, put the data dir elsewhere (--data-dir /var/lib/devgate)" >&2
      extra=(--isolate-projects off)
      break
    fi
    dir="$(dirname "$dir")"
  done
fi
exec "target/$profile/gateway" "${extra[@]}" "$@"
