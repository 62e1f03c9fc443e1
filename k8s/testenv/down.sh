#!/usr/bin/env bash
# Stops exactly the processes up.sh started in STATE_DIR (each pid checked
# against its recorded start time, so a reused pid is never signalled), newest
# first: SIGTERM, then SIGKILL after 10 s. Removes the project volumes the
# environment's provisioner made and, unless --keep, the state dir.
#
#   down.sh STATE_DIR [--keep]
set -euo pipefail
dir=${1:?usage: down.sh STATE_DIR [--keep]}
keep=${2:-}
[ -f "$dir/pids" ] || { echo "down.sh: $dir/pids not found (not an up.sh state dir?)" >&2; exit 1; }

# The watchdog (when up.sh had an owner) is not needed any more, unless it is
# the one running this script.
if [ -f "$dir/watchdog.pid" ]; then
  w=$(cat "$dir/watchdog.pid")
  if [ "$w" != "$PPID" ] && [ "$w" != "$$" ]; then
    kill "$w" 2>/dev/null || true
  fi
fi

# Volumes made by the hostPath provisioner for this environment's claims,
# read while the API server still answers.
volumes=()
if [ -f "$dir/pki/admin.crt" ] && [ -f "$dir/env" ]; then
  server=$(awk -F= '$1 == "TESTENV_SERVER" { print $2 }' "$dir/env")
  while IFS= read -r p; do
    case "$p" in /tmp/hostpath_pv/*) volumes+=("$p") ;; esac
  done < <(curl -sf --max-time 5 --cacert "$dir/pki/ca.crt" --cert "$dir/pki/admin.crt" --key "$dir/pki/admin.key" \
    "$server/api/v1/persistentvolumes" 2>/dev/null |
    python3 -c 'import json, sys
for pv in json.load(sys.stdin).get("items", []):
    print(pv["spec"].get("hostPath", {}).get("path", ""))' 2>/dev/null || true)
fi

ours=()
while read -r name pid started; do
  [ -n "$pid" ] || continue
  now=$(awk '{print $22}' "/proc/$pid/stat" 2>/dev/null || true)
  if [ -n "$now" ] && [ "$now" = "$started" ]; then
    ours=("$pid" "${ours[@]}")
  fi
done < "$dir/pids"

for pid in "${ours[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
deadline=$(( $(date +%s) + 10 ))
for pid in "${ours[@]}"; do
  while kill -0 "$pid" 2>/dev/null && [ "$(date +%s)" -lt "$deadline" ]; do sleep 0.1; done
  kill -KILL "$pid" 2>/dev/null || true
done
: > "$dir/pids"

for v in "${volumes[@]}"; do rm -rf -- "$v"; done
if [ "$keep" != --keep ]; then
  rm -rf -- "$dir"
fi
