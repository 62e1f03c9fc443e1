#!/usr/bin/env bash
# Builds the release agent and bench-agent, then runs the agent benchmark
# (moto, zip/unzip and the aws CLI are installed if missing). Prints a
# Markdown table for BENCHMARKS.md; arguments go to bench-agent (--help).
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$HOME/.pyenv/shims:$HOME/.local/bin:$PATH"

command -v moto_server >/dev/null || python3 -m pip install -q 'moto[server]'
command -v aws >/dev/null || python3 -m pip install -q awscli
if ! command -v zip >/dev/null || ! command -v unzip >/dev/null; then
  apt-get update -qq && apt-get install -y -qq --no-install-recommends zip unzip >/dev/null
fi
hash -r

# The agent alone, as its image builds it (k8s/images/agent.Dockerfile):
# built together with bench or the gateway, features are unified across
# their dependencies (reqwest, the S3 SDK, ...) and the agent measured would
# be larger than the one that ships.
cargo build --release -p agent --bin agent
cargo build --release -p gateway -p bench --bins
exec ./target/release/bench-agent "$@"
