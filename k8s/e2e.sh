#!/usr/bin/env bash
# Runs the end-to-end tests of tests/ against the Kubernetes cluster that
# KUBECONFIG (or ~/.kube/config) points at. No cluster can run on the
# project's CI machines (gateway/tests/kubernetes_real.rs runs a real control
# plane there instead), so this is for people who have one (minikube is
# enough: docs/deploy-minikube.md). Two shapes:
#
#   k8s/e2e.sh                          # off-cluster: every test starts its own
#                                       # gateway on this machine, on the Kubernetes
#                                       # runtime, as the gateway's service account
#   k8s/e2e.sh --test api_projects      # arguments go to `cargo test -p tests`
#   E2E_SHAPE=in-cluster k8s/e2e.sh     # the gateway as a pod (k8s/overlays/minikube),
#                                       # reached through a Service port-forward
#
# Off-cluster, the gateway runs with a token of the `devgate-gateway` service
# account (from the TokenRequest API), so every call it makes is authorized
# as in the cluster; agents and dev servers are reached through the API
# server's port-forward, which the opt-in role of k8s/port-forward/ grants.
# Each test's gateway gets a namespace prefix of its own (tests use the same
# project ids). The S3 servers the tests start listen on every address, and
# project pods reach them at E2E_S3_HOST (an address of this machine the
# pods reach; minikube's host address by default).
#
# In the in-cluster shape, only the tests that need no gateway settings of
# their own can run (a test asking for some fails saying so); select them
# with --test (the default: api_projects, api_files). They share the one
# gateway, so each starts by deleting every project on it and they run one
# at a time: use a cluster of its own for this shape, and say so with
# E2E_WIPE=yes (without it the shape does not run; a test that finds
# projects on the gateway without it fails and deletes none).
#
# Tests that look into the local runtime's project folders (`project_dir`)
# or clone bundled templates from a gateway off the pods' network fail
# against a cluster for those reasons, not because of the cluster; skip them
# with --skip.
#
# Needs: kubectl with a working context and rights to apply k8s/base's RBAC;
# the images in the cluster (E2E_BUILD_IMAGES=1 builds them with
# `minikube image build`).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "e2e: $*" >&2; exit 1; }

command -v kubectl >/dev/null || die "kubectl is not installed"
context=$(kubectl config current-context 2>/dev/null) || die "no current kubectl context (set KUBECONFIG)"
kubectl version --request-timeout=10s >/dev/null 2>&1 || die "the API server of context '$context' does not answer"
echo "== cluster: context '$context'"
shape=${E2E_SHAPE:-off-cluster}
case "$shape" in off-cluster | in-cluster) ;; *) die "E2E_SHAPE is off-cluster or in-cluster, not '$shape'" ;; esac
if [ "$shape" = in-cluster ] && [ "${E2E_WIPE:-}" != yes ]; then
  die "the in-cluster shape deletes every project on the gateway of context '$context' (each test starts from none): run it on a cluster of its own, with E2E_WIPE=yes"
fi

tag=${E2E_IMAGE_TAG:-dev}
if [ "${E2E_BUILD_IMAGES:-0}" = 1 ]; then
  command -v minikube >/dev/null || die "E2E_BUILD_IMAGES=1 needs minikube"
  echo "== building images into minikube (tag $tag)"
  for image in dev agent gateway; do
    minikube image build -f "k8s/images/$image.Dockerfile" -t "devgate/$image:$tag" .
  done
fi

sa_ns=devgate
sa=devgate-gateway
as_sa=(--as "system:serviceaccount:$sa_ns:$sa")
tmp=$(mktemp -d)
pf_pid=
cleanup() {
  [ -n "$pf_pid" ] && kill "$pf_pid" 2>/dev/null || true
  rm -rf "$tmp"
  left=$(kubectl get namespaces -o name 2>/dev/null | grep "^namespace/${prefix:-e2e-none-}" || true)
  if [ -n "$left" ]; then
    echo "== deleting namespaces left by the run:"
    echo "$left"
    # shellcheck disable=SC2086
    kubectl delete --wait=false $left >/dev/null || true
  fi
}
trap cleanup EXIT

# Every project namespace this run makes starts with this prefix, so a
# failed run can be cleaned up with one command.
prefix=${E2E_NAMESPACE_PREFIX:-e2e-$(date +%s)-}
threads=${E2E_THREADS:-2}

if [ "$shape" = in-cluster ]; then
  echo "== applying k8s/overlays/minikube"
  kubectl apply -k k8s/overlays/minikube >/dev/null
  kubectl -n "$sa_ns" rollout status deployment/devgate-gateway --timeout=300s
else
  # The service account, its ClusterRole and the admission policy confining
  # it, as the base has them, plus the opt-in port-forward role.
  echo "== applying the gateway's service account and RBAC"
  kubectl apply -f k8s/base/namespace.yaml >/dev/null
  kubectl -n "$sa_ns" apply -f k8s/base/serviceaccount.yaml -f k8s/base/rbac.yaml \
    -f k8s/base/admission-policy.yaml >/dev/null
  if [ -d k8s/port-forward ]; then
    kubectl -n "$sa_ns" apply -k k8s/port-forward >/dev/null
  fi
fi

# What the gateway's service account may do, asked as that account (an
# admin may do everything, so asking as the current user proves nothing).
checks=("create namespaces" "patch deployments.apps" "create persistentvolumeclaims" "delete namespaces")
if [ "$shape" = off-cluster ]; then
  checks+=("create pods/portforward" "get pods/portforward")
fi
for check in "${checks[@]}"; do
  # shellcheck disable=SC2086
  kubectl auth can-i $check --all-namespaces "${as_sa[@]}" >/dev/null \
    || die "the gateway's service account may not '$check'"
done
# shellcheck disable=SC2086
if kubectl auth can-i create pods/exec --all-namespaces "${as_sa[@]}" >/dev/null 2>&1; then
  echo "e2e: warning: the gateway's service account may exec into pods; the default RBAC does not grant it" >&2
fi

echo "== cargo build"
cargo build --workspace --bins --locked
export E2E_NAMESPACE_PREFIX="$prefix"

if [ "$shape" = in-cluster ]; then
  port=${E2E_PORT:-18080}
  kubectl -n "$sa_ns" port-forward service/devgate-gateway "$port:http" >"$tmp/port-forward.log" 2>&1 &
  pf_pid=$!
  for _ in $(seq 1 50); do
    curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null 2>&1 && break
    sleep 0.2
  done
  curl -fsS "http://127.0.0.1:$port/healthz" >/dev/null || die "the gateway's Service does not answer (see $tmp/port-forward.log)"
  export E2E_GATEWAY_URL="http://127.0.0.1:$port"
  E2E_GATEWAY_SECRET=$(kubectl -n "$sa_ns" get secret devgate-gateway -o jsonpath='{.data.GATEWAY_SECRET}' | base64 -d)
  export E2E_GATEWAY_SECRET
  export E2E_GATEWAY_WIPE=yes
  if [ $# -eq 0 ]; then set -- --test api_projects --test api_files; fi
  # One gateway for every test: each test starts by deleting the projects
  # the one before left, so they run one at a time.
  threads=${E2E_THREADS:-1}
else
  # A kubeconfig holding a token of the gateway's service account.
  token=$(kubectl -n "$sa_ns" create token "$sa" --duration=2h)
  server=$(kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.server}')
  ca=$(kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority-data}')
  if [ -z "$ca" ]; then
    ca_file=$(kubectl config view --minify --raw -o jsonpath='{.clusters[0].cluster.certificate-authority}')
    ca=$(base64 -w0 <"$ca_file")
  fi
  cat >"$tmp/kubeconfig" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters: [{name: e2e, cluster: {server: "$server", certificate-authority-data: "$ca"}}]
users: [{name: $sa, user: {token: "$token"}}]
contexts: [{name: e2e, context: {cluster: e2e, user: $sa}}]
current-context: e2e
KUBECONFIG
  export KUBECONFIG="$tmp/kubeconfig"
  export GATEWAY_RUNTIME=kubernetes
  export GATEWAY_K8S_AGENT_ACCESS=port-forward
  export GATEWAY_AGENT_IMAGE=${GATEWAY_AGENT_IMAGE:-devgate/dev:$tag}
  export GATEWAY_K8S_DEV_IMAGE=${GATEWAY_K8S_DEV_IMAGE:-devgate/dev:$tag}
  export GATEWAY_K8S_IMAGE_PULL_POLICY=${GATEWAY_K8S_IMAGE_PULL_POLICY:-IfNotPresent}
  export GATEWAY_K8S_STORAGE_SIZE=${GATEWAY_K8S_STORAGE_SIZE:-256Mi}
  # The gateway runs outside the cluster: the NetworkPolicies admit the
  # API server's port-forward (it enters through the kubelet, not the network).
  export GATEWAY_K8S_GATEWAY_NAMESPACE=${GATEWAY_K8S_GATEWAY_NAMESPACE:-default}
  if [ -z "${E2E_S3_HOST:-}" ] && command -v minikube >/dev/null; then
    E2E_S3_HOST=$(minikube ssh -- getent hosts host.minikube.internal 2>/dev/null | awk '{print $1}' | tr -d '\r' || true)
  fi
  [ -n "${E2E_S3_HOST:-}" ] || die "set E2E_S3_HOST to an address of this machine that pods reach (the S3 servers of the tests listen there)"
  export E2E_S3_HOST
fi

echo "== cargo test -p tests ($shape, namespace prefix $prefix)"
cargo test -p tests --locked "$@" -- --test-threads="$threads"
