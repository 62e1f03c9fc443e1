#!/usr/bin/env bash
# Starts a real Kubernetes control plane on 127.0.0.1 for the tests: etcd,
# kube-apiserver, kube-controller-manager, kube-scheduler and kwok (fake
# nodes whose kubelet API runs exec, logs and port-forward as local processes
# and connections). Builds what is missing first (build.sh). Prints the admin
# kubeconfig's path as the last line of its output; `down.sh DIR` stops
# exactly what it started.
#
#   up.sh [STATE_DIR]     (default: a new /tmp/devgate-testenv.XXXXXX)
#
# Environment:
#   DEVGATE_TESTENV_CACHE        where binaries are built (build.sh)
#   DEVGATE_TESTENV_OWNER_PID    stop everything (down.sh) once this process is gone
#   DEVGATE_TESTENV_READY_GATE   `annotation` (default): pods are Ready only once
#                                annotated devgate.test/started; `off`: at once
#   DEVGATE_TESTENV_NODES        number of kwok nodes (default 2)
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
# shellcheck source=versions.sh
. "$here/versions.sh"

dir=${1:-}
if [ -z "$dir" ]; then
  dir=$(mktemp -d /tmp/devgate-testenv.XXXXXX)
fi
mkdir -p "$dir"/{pki,logs,etcd}
dir=$(cd "$dir" && pwd)
: > "$dir/pids"
t0=$(date +%s)
say() { echo "testenv: $* (+$(( $(date +%s) - t0 ))s)" >&2; }

failed() {
  echo "testenv: up.sh failed; last lines of each log in $dir/logs:" >&2
  for f in "$dir"/logs/*.log; do
    [ -f "$f" ] || continue
    echo "--- $f" >&2
    tail -n 15 "$f" >&2
  done
  "$here/down.sh" "$dir" --keep >&2 || true
}
trap failed ERR

"$here/build.sh"
bin=$("$here/build.sh" --print)
apiserver=$bin/kube-apiserver-$KUBERNETES_VERSION
kcm=$bin/kube-controller-manager-$KUBERNETES_VERSION
scheduler=$bin/kube-scheduler-$KUBERNETES_VERSION
etcd=$bin/etcd-$ETCD_VERSION
kwok=$bin/kwok-$KWOK_VERSION

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
etcd_port=$(free_port)
etcd_peer_port=$(free_port)
api_port=$(free_port)
kwok_port=$(free_port)
server=https://127.0.0.1:$api_port

# --- certificates, service-account key, kubeconfigs -------------------------
pki=$dir/pki
cert() { # name CN O [SAN] : a key and a certificate signed by the CA
  local name=$1 cn=$2 org=$3 san=${4:-}
  openssl ecparam -name prime256v1 -genkey -noout -out "$pki/$name.key" 2>/dev/null
  local subj="/CN=$cn"
  [ -n "$org" ] && subj="/O=$org$subj"
  openssl req -new -key "$pki/$name.key" -subj "$subj" -out "$pki/$name.csr" 2>/dev/null
  {
    echo "basicConstraints=CA:FALSE"
    echo "keyUsage=critical,digitalSignature,keyEncipherment"
    if [ -n "$san" ]; then
      echo "extendedKeyUsage=serverAuth,clientAuth"
      echo "subjectAltName=$san"
    else
      echo "extendedKeyUsage=clientAuth"
    fi
  } > "$pki/$name.ext"
  openssl x509 -req -in "$pki/$name.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
    -CAcreateserial -days 7 -sha256 -extfile "$pki/$name.ext" -out "$pki/$name.crt" 2>/dev/null
  rm -f "$pki/$name.csr" "$pki/$name.ext"
}
openssl ecparam -name prime256v1 -genkey -noout -out "$pki/ca.key" 2>/dev/null
openssl req -x509 -new -key "$pki/ca.key" -subj "/CN=devgate-testenv-ca" -days 7 -sha256 \
  -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" \
  -out "$pki/ca.crt" 2>/dev/null
cert apiserver kube-apiserver "" \
  "IP:127.0.0.1,IP:10.96.0.1,DNS:localhost,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local"
cert apiserver-kubelet-client kube-apiserver-kubelet-client system:masters
cert admin devgate-testenv-admin system:masters
cert controller-manager system:kube-controller-manager ""
cert scheduler system:kube-scheduler ""
# kwok serves the kubelet API with this one (the API server checks it against
# the CA and the node's address) and talks to the API server as a node agent.
cert kwok kwok system:masters "IP:127.0.0.1,DNS:localhost"
openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null

kubeconfig() { # file user
  local b64="base64 -w0"
  cat > "$1" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: testenv
  cluster:
    server: $server
    certificate-authority-data: $($b64 < "$pki/ca.crt")
users:
- name: $2
  user:
    client-certificate-data: $($b64 < "$pki/$2.crt")
    client-key-data: $($b64 < "$pki/$2.key")
contexts:
- name: testenv
  context:
    cluster: testenv
    user: $2
current-context: testenv
EOF
}
kubeconfig "$dir/admin.kubeconfig" admin
kubeconfig "$dir/controller-manager.kubeconfig" controller-manager
kubeconfig "$dir/scheduler.kubeconfig" scheduler
kubeconfig "$dir/kwok.kubeconfig" kwok

cat > "$dir/env" <<EOF
KUBECONFIG=$dir/admin.kubeconfig
TESTENV_DIR=$dir
TESTENV_SERVER=$server
TESTENV_KWOK_PORT=$kwok_port
TESTENV_KUBERNETES_VERSION=$KUBERNETES_VERSION
EOF

# --- processes ----------------------------------------------------------------
start() { # name binary args... : in its own session, logs in logs/NAME.log
  local name=$1
  shift
  setsid "$@" > "$dir/logs/$name.log" 2>&1 < /dev/null &
  local pid=$!
  # The start time (field 22 of /proc/PID/stat) tells a reused pid apart.
  local started
  started=$(awk '{print $22}' "/proc/$pid/stat" 2>/dev/null || echo 0)
  echo "$name $pid $started" >> "$dir/pids"
}

alive() { # name : fails (and says so) when the process has exited
  local pid
  pid=$(awk -v n="$1" '$1 == n { print $2 }' "$dir/pids")
  if ! kill -0 "$pid" 2>/dev/null; then
    echo "testenv: $1 exited" >&2
    return 1
  fi
}

wait_for() { # what seconds command... : polls every 0.2 s
  local what=$1 secs=$2
  shift 2
  local deadline=$(( $(date +%s) + secs ))
  until "$@" > /dev/null 2>&1; do
    if [ "$(date +%s)" -ge "$deadline" ]; then
      echo "testenv: $what not ready after ${secs}s" >&2
      return 1
    fi
    sleep 0.2
  done
}

admin_curl() {
  curl -sf --cacert "$pki/ca.crt" --cert "$pki/admin.crt" --key "$pki/admin.key" "$@"
}

# Server-side apply of one YAML or JSON document from stdin to an API path.
apply() { # path (e.g. /api/v1/nodes/NAME)
  admin_curl -X PATCH -H 'Content-Type: application/apply-patch+yaml' \
    --data-binary @- "$server$1?fieldManager=devgate-testenv&force=true" > /dev/null
}

if [ -n "${DEVGATE_TESTENV_OWNER_PID:-}" ]; then
  # Stops the environment when its owner (a test process) is gone.
  owner=$DEVGATE_TESTENV_OWNER_PID
  setsid bash -c "while kill -0 $owner 2>/dev/null; do sleep 1; done; exec '$here/down.sh' '$dir'" \
    > "$dir/logs/watchdog.log" 2>&1 < /dev/null &
  echo "$!" > "$dir/watchdog.pid"
fi

say "starting etcd $ETCD_VERSION on 127.0.0.1:$etcd_port"
start etcd "$etcd" --name testenv --data-dir "$dir/etcd" \
  --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
  --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
  --initial-cluster "testenv=http://127.0.0.1:$etcd_peer_port" \
  --unsafe-no-fsync --log-level warn
wait_for etcd 30 curl -sf "http://127.0.0.1:$etcd_port/health"

say "starting kube-apiserver $KUBERNETES_VERSION on $server"
start kube-apiserver "$apiserver" \
  --etcd-servers "http://127.0.0.1:$etcd_port" \
  --bind-address 127.0.0.1 --secure-port "$api_port" --advertise-address 127.0.0.1 \
  --endpoint-reconciler-type none \
  --tls-cert-file "$pki/apiserver.crt" --tls-private-key-file "$pki/apiserver.key" \
  --client-ca-file "$pki/ca.crt" \
  --service-account-issuer https://kubernetes.default.svc.cluster.local \
  --service-account-key-file "$pki/sa.pub" --service-account-signing-key-file "$pki/sa.key" \
  --service-cluster-ip-range 10.96.0.0/16 \
  --authorization-mode Node,RBAC \
  --kubelet-certificate-authority "$pki/ca.crt" \
  --kubelet-client-certificate "$pki/apiserver-kubelet-client.crt" \
  --kubelet-client-key "$pki/apiserver-kubelet-client.key" \
  --kubelet-preferred-address-types InternalIP \
  --profiling=false
wait_for "kube-apiserver /readyz" 120 admin_curl "$server/readyz"
alive kube-apiserver

say "starting kube-controller-manager and kube-scheduler"
start kube-controller-manager "$kcm" \
  --kubeconfig "$dir/controller-manager.kubeconfig" \
  --authentication-skip-lookup=true \
  --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false \
  --use-service-account-credentials=true \
  --service-account-private-key-file "$pki/sa.key" --root-ca-file "$pki/ca.crt" \
  --enable-hostpath-provisioner=true \
  --kube-api-qps 200 --kube-api-burst 400
start kube-scheduler "$scheduler" \
  --kubeconfig "$dir/scheduler.kubeconfig" \
  --bind-address 127.0.0.1 --secure-port 0 --leader-elect=false \
  --kube-api-qps 200 --kube-api-burst 400

# kwok's CRDs for per-pod rules (the tests make one PortForward, Exec and Logs
# per pod they run), from the kwok module in Go's module cache (go.sum-checked).
kwok_src=$(cd "$here/kwok" && GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
if [ -z "$kwok_src" ] || [ ! -d "$kwok_src/kustomize/crd/bases" ]; then
  (cd "$here/kwok" && GOFLAGS=-mod=readonly go mod download sigs.k8s.io/kwok)
  kwok_src=$(cd "$here/kwok" && GOFLAGS=-mod=readonly go list -m -f '{{.Dir}}' sigs.k8s.io/kwok)
fi
for crd in portforwards execs logs; do
  apply "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/$crd.kwok.x-k8s.io" \
    < "$kwok_src/kustomize/crd/bases/kwok.x-k8s.io_$crd.yaml"
done
for crd in portforwards execs logs; do
  wait_for "crd $crd" 30 admin_curl "$server/apis/kwok.x-k8s.io/v1alpha1/$crd"
done

stages=$dir/kwok.yaml
if [ "${DEVGATE_TESTENV_READY_GATE:-annotation}" = off ]; then
  # The ready gate is the three lines from its comment on.
  awk '/# READY_GATE/ { skip = 3 } skip > 0 { skip--; next } { print }' "$here/kwok-stages.yaml" > "$stages"
else
  cp "$here/kwok-stages.yaml" "$stages"
fi
say "starting kwok $KWOK_VERSION (kubelet API on 127.0.0.1:$kwok_port)"
start kwok "$kwok" \
  --kubeconfig "$dir/kwok.kubeconfig" --config "$stages" \
  --manage-all-nodes=false --manage-nodes-with-annotation-selector kwok.x-k8s.io/node=fake \
  --node-ip 127.0.0.1 --node-port "$kwok_port" --server-address "127.0.0.1:$kwok_port" \
  --tls-cert-file "$pki/kwok.crt" --tls-private-key-file "$pki/kwok.key" \
  --node-lease-duration-seconds 40 \
  --enable-crds PortForward,Exec,Logs

nodes=${DEVGATE_TESTENV_NODES:-2}
for i in $(seq 0 $(( nodes - 1 ))); do
  apply "/api/v1/nodes/kwok-node-$i" <<EOF
apiVersion: v1
kind: Node
metadata:
  name: kwok-node-$i
  annotations:
    kwok.x-k8s.io/node: fake
    node.alpha.kubernetes.io/ttl: "0"
  labels:
    kubernetes.io/hostname: kwok-node-$i
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
EOF
done

# Project volumes: kube-controller-manager's hostPath provisioner (a directory
# /tmp/hostpath_pv/<uuid> per claim, removed with the claim). Two classes, so
# a test can change the class a project's volume asks for.
for class in devgate-standard devgate-other; do
  default=false
  [ "$class" = devgate-standard ] && default=true
  apply "/apis/storage.k8s.io/v1/storageclasses/$class" <<EOF
apiVersion: storage.k8s.io/v1
kind: StorageClass
metadata:
  name: $class
  annotations:
    storageclass.kubernetes.io/is-default-class: "$default"
provisioner: kubernetes.io/host-path
reclaimPolicy: Delete
volumeBindingMode: Immediate
EOF
done

node_ready() {
  admin_curl "$server/api/v1/nodes/$1" | python3 -c '
import json, sys
n = json.load(sys.stdin)
ok = any(c["type"] == "Ready" and c["status"] == "True" for c in n.get("status", {}).get("conditions", []))
sys.exit(0 if ok else 1)'
}
for i in $(seq 0 $(( nodes - 1 ))); do
  wait_for "node kwok-node-$i Ready" 60 node_ready "kwok-node-$i"
done
# The namespace controller made `default` ready for pods (its service account).
wait_for "service account default/default" 60 admin_curl "$server/api/v1/namespaces/default/serviceaccounts/default"
for p in kube-apiserver kube-controller-manager kube-scheduler kwok etcd; do alive "$p"; done

trap - ERR
say "ready: $nodes kwok nodes, StorageClass devgate-standard (default) and devgate-other"
echo "$dir/admin.kubeconfig"
