#!/usr/bin/env bash
# Runs every test: installs what the tests need, builds the binaries, runs the
# Rust tests (agent, gateway, end-to-end) and the browser tests of the page.
set -euo pipefail
cd "$(dirname "$0")"

scripts/install-test-deps.sh
# pyenv shims may live outside PATH in a non-login shell.
export PATH="$HOME/.pyenv/shims:$PATH"
# One build on a fresh machine: incremental caches would only double the
# target directory (a CI run once died of a full disk).
export CARGO_INCREMENTAL=0

# The house style first: formatting and every clippy warning are errors.
echo "== cargo fmt --check"
cargo fmt --all --check
echo "== cargo clippy"
cargo clippy --workspace --all-targets --locked -- -D warnings

# The Kubernetes control plane of gateway/tests/kubernetes_real.rs, built
# from Go modules into ~/.cache/devgate-testenv and checked by sha256 (the
# first build takes minutes, later runs a few seconds; README, "Testing").
echo "== test control plane (k8s/testenv/build.sh)"
k8s/testenv/build.sh

# One build: `cargo test` also builds the agent and gateway binaries the tests
# start (a separate `cargo build` first compiled the dependency tree twice, with
# and without the dev-dependencies' features).
echo "== cargo test"
cargo test --workspace --locked

echo "== web-demo build"
(cd web-demo && npm run build --silent)
echo "== browser tests (Chromium, against target/debug/gateway)"
node --test tests/browser/
