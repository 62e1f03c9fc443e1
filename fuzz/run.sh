#!/usr/bin/env bash
# Nightly-style fuzzing of the parsers that face the internet: each target
# runs for FUZZ_SECONDS (default 180) with libFuzzer under cargo-fuzz, on the
# nightly toolchain. Not part of ./test.sh or CI. Prints the executions and
# any crash per target; crashes are kept in fuzz/artifacts/<target>/.
set -euo pipefail
cd "$(dirname "$0")"
seconds="${FUZZ_SECONDS:-180}"
command -v cargo-fuzz >/dev/null || cargo install --locked cargo-fuzz
rustup toolchain list | grep -q nightly || rustup toolchain install nightly --profile minimal
targets=("$@")
[ ${#targets[@]} -gt 0 ] || mapfile -t targets < <(cargo +nightly fuzz list)
status=0
for t in "${targets[@]}"; do
  mkdir -p "corpus/$t"
  log="$(mktemp)"
  if cargo +nightly fuzz run "$t" "corpus/$t" -- -max_total_time="$seconds" -rss_limit_mb=2048 -print_final_stats=1 >"$log" 2>&1; then
    result=ok
  else
    result=CRASH
    status=1
  fi
  execs="$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)"
  echo "$t: $result, ${execs:-?} executions in ${seconds}s"
  [ "$result" = ok ] || tail -40 "$log"
  rm -f "$log"
done
exit "$status"
