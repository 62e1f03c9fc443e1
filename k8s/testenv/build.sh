#!/usr/bin/env bash
# Builds the test control plane (kube-apiserver, kube-controller-manager,
# kube-scheduler, etcd, kwok) from Go modules into the cache folder, one
# binary at a time, and checks each against the sha256 pinned in versions.sh.
# A binary already in the cache with the right hash is kept: the first run
# takes minutes (see the README), later ones a second.
#
#   build.sh            build what is missing, check every hash
#   build.sh --record   build everything and write the hashes into versions.sh
#   build.sh --print    print the cache's bin folder (builds nothing)
#
# Environment: DEVGATE_TESTENV_CACHE (default ~/.cache/devgate-testenv),
# TESTENV_GO_P (parallel compile jobs, default 2).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.sh
. "$here/versions.sh"

mode=${1:-build}
cache=${DEVGATE_TESTENV_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/devgate-testenv}
bindir=$cache/bin
if [ "$mode" = --print ]; then
  echo "$bindir"
  exit 0
fi

case "$(uname -m)" in
  x86_64) arch=amd64 ;;
  aarch64) arch=arm64 ;;
  *) arch=$(uname -m) ;;
esac

# name | wrapper module | package | version
targets="
kube-apiserver|kubernetes|k8s.io/kubernetes/cmd/kube-apiserver|$KUBERNETES_VERSION
kube-controller-manager|kubernetes|k8s.io/kubernetes/cmd/kube-controller-manager|$KUBERNETES_VERSION
kube-scheduler|kubernetes|k8s.io/kubernetes/cmd/kube-scheduler|$KUBERNETES_VERSION
etcd|etcd|devgate.test/testenv/etcd|$ETCD_VERSION
kwok|kwok|sigs.k8s.io/kwok/cmd/kwok|$KWOK_VERSION
"

# The wrapper modules must require the versions named in versions.sh.
requires() { # module-dir module version
  grep -Eq "^(require )?[[:space:]]*$2 $3( // indirect)?\$" "$here/$1/go.mod" ||
    { echo "build.sh: $1/go.mod does not require $2 $3 (versions.sh)" >&2; exit 1; }
}
requires kubernetes k8s.io/kubernetes "$KUBERNETES_VERSION"
requires etcd go.etcd.io/etcd/server/v3 "$ETCD_VERSION"
requires kwok sigs.k8s.io/kwok "$KWOK_VERSION"
staging_minor=${KUBERNETES_VERSION#v1.}
if grep -E '^\s+k8s\.io/[a-z0-9-]+ => ' "$here/kubernetes/go.mod" | grep -v " v0.$staging_minor\$" >&2; then
  echo "build.sh: every staging module must be replaced by v0.$staging_minor (lines above)" >&2
  exit 1
fi

expected() { # name-version-arch
  printf '%s\n' "$TESTENV_SHA256_LIST" | awk -v k="$1" '$1 == k { print $2 }'
}

sha() { sha256sum "$1" | cut -d' ' -f1; }

ldflags() { # name
  case "$1" in
    kube-*)
      local v=$KUBERNETES_VERSION minor=${KUBERNETES_VERSION#v1.}
      minor=${minor%%.*}
      echo "-s -w -buildid= -X k8s.io/component-base/version.gitVersion=$v -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=$minor -X k8s.io/component-base/version.gitTreeState=clean -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
      ;;
    kwok) echo "-s -w -buildid= -X sigs.k8s.io/kwok/pkg/consts.Version=$KWOK_VERSION" ;;
    *) echo "-s -w -buildid=" ;;
  esac
}

mkdir -p "$bindir"
exec 9>"$cache/.build.lock"
flock 9

export CGO_ENABLED=0 GOTOOLCHAIN=$TESTENV_GO GOAMD64=v1 GOEXPERIMENT=
export GOFLAGS="-mod=readonly -p=${TESTENV_GO_P:-2}"
recorded=""
failed=0
while IFS='|' read -r name module pkg version; do
  [ -n "$name" ] || continue
  key=$name-$version-$arch
  out=$bindir/$name-$version
  want=$(expected "$key")
  if [ "$mode" != --record ] && [ -x "$out" ] && [ -n "$want" ] && [ "$(sha "$out")" = "$want" ]; then
    continue
  fi
  echo "== build $name $version ($pkg, $TESTENV_GO, $arch)" >&2
  start=$(date +%s)
  tmp=$out.tmp.$$
  (cd "$here/$module" && go build -trimpath -buildvcs=false -ldflags "$(ldflags "$name")" -o "$tmp" "$pkg")
  got=$(sha "$tmp")
  echo "   built in $(( $(date +%s) - start ))s, sha256 $got" >&2
  if [ "$mode" = --record ]; then
    recorded+="$key $got"$'\n'
  elif [ -z "$want" ]; then
    echo "build.sh: no sha256 pinned for $key in versions.sh; check the build, then run build.sh --record" >&2
    rm -f "$tmp"
    failed=1
    continue
  elif [ "$got" != "$want" ]; then
    echo "build.sh: $key has sha256 $got, versions.sh pins $want" >&2
    echo "          (another toolchain than $TESTENV_GO, changed flags or a changed module cache?)" >&2
    rm -f "$tmp"
    failed=1
    continue
  fi
  mv -f "$tmp" "$out"
done <<< "$targets"

if [ "$mode" = --record ]; then
  # Keep the other architectures' hashes, replace this one's.
  others=$(printf '%s\n' "$TESTENV_SHA256_LIST" | awk -v a="-$arch" 'NF == 2 && substr($1, length($1) - length(a) + 1) != a')
  list=$(printf '%s\n%s' "$others" "$recorded" | awk 'NF == 2' | sort)
  python3 - "$here/versions.sh" "$list" <<'EOF'
import re, sys
path, body = sys.argv[1], sys.argv[2]
text = open(path).read()
text = re.sub(r'TESTENV_SHA256_LIST="\n.*?"\n', 'TESTENV_SHA256_LIST="\n' + body + '\n"\n', text, flags=re.S)
open(path, "w").write(text)
EOF
  echo "recorded in $here/versions.sh:" >&2
  printf '%s' "$recorded" >&2
fi
exit $failed
