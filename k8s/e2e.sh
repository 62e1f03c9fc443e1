#!/usr/bin/env bash
# Runs the end-to-end tests of tests/ against the Kubernetes cluster that
# KUBECONFIG (or ~/.kube/config) points at, with the gateway on this machine
# using the Kubernetes runtime and reaching agents and dev servers through the
# API server's port-forward. No cluster can run on the project's CI machines,
# so this is for people who have one (minikube is enough:
# docs/deploy-minikube.md).
#
#   k8s/e2e.sh                          # every end-to-end test
#   k8s/e2e.sh --test api_projects      # arguments go to `cargo test -p tests`
#
# The end-to-end tests were written for the local runtime first: the ones
# that look into the local runtime's project folders (`project_dir`) or
# hibernate to the S3 server the test starts on this machine's loopback
# (unreachable from pods unless E2E_S3_ENDPOINT names an address they
# reach), or clone bundled templates from the gateway (which runs on this
# machine, out of the pods' reach) fail against a cluster for those
# reasons, not because of the cluster. Select the others with `--test` / `--skip`.
#
# Needs: kubectl with a working context; the agent and dev images present in
# the cluster (E2E_BUILD_IMAGES=1 builds them with `minikube image build`);
# S3-compatible servers for the hibernation tests (the tests start moto and s3s-fs on
# this machine; the project pods then reach them at E2E_S3_ENDPOINT, which
# defaults to minikube's host address).
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "e2e: $*" >&2; exit 1; }

command -v kubectl >/dev/null || die "kubectl is not installed"
context=$(kubectl config current-context 2>/dev/null) || die "no current kubectl context (set KUBECONFIG)"
kubectl version --request-timeout=10s >/dev/null 2>&1 || die "the API server of context '$context' does not answer"
echo "== cluster: context '$context'"

# The gateway's service account rules, so a test failing for lack of a
# permission fails the same way it would in the cluster.
for check in "create namespaces" "create pods/exec" "get pods/exec" "create pods/portforward" "get pods/portforward" "patch deployments.apps"; do
  kubectl auth can-i $check --all-namespaces >/dev/null \
    || die "the current user may not '$check' (the gateway's ClusterRole grants it)"
done

tag=${E2E_IMAGE_TAG:-dev}
if [ "${E2E_BUILD_IMAGES:-0}" = 1 ]; then
  command -v minikube >/dev/null || die "E2E_BUILD_IMAGES=1 needs minikube"
  echo "== building images into minikube (tag $tag)"
  minikube image build -f k8s/images/dev.Dockerfile -t "devgate/dev:$tag" .
fi

# Every project namespace these tests make starts with this prefix, so a
# failed run can be cleaned up with one command (printed at the end).
prefix=${E2E_NAMESPACE_PREFIX:-e2e-$(date +%s)-}
export GATEWAY_RUNTIME=kubernetes
export GATEWAY_K8S_NAMESPACE_PREFIX="$prefix"
export GATEWAY_K8S_AGENT_ACCESS=port-forward
# The dev image carries the agent and the tools install commands need.
export GATEWAY_AGENT_IMAGE=${GATEWAY_AGENT_IMAGE:-devgate/dev:$tag}
export GATEWAY_K8S_DEV_IMAGE=${GATEWAY_K8S_DEV_IMAGE:-devgate/dev:$tag}
export GATEWAY_K8S_IMAGE_PULL_POLICY=${GATEWAY_K8S_IMAGE_PULL_POLICY:-IfNotPresent}
export GATEWAY_K8S_STORAGE_SIZE=${GATEWAY_K8S_STORAGE_SIZE:-256Mi}
# The gateway runs outside the cluster: the NetworkPolicies admit the
# API server's port-forward (it enters through the kubelet, not the network).
export GATEWAY_K8S_GATEWAY_NAMESPACE=${GATEWAY_K8S_GATEWAY_NAMESPACE:-default}
if [ -n "${E2E_S3_ENDPOINT:-}" ]; then
  export AWS_ENDPOINT_URL="$E2E_S3_ENDPOINT"
fi

cleanup() {
  left=$(kubectl get namespaces -o name 2>/dev/null | grep "^namespace/$prefix" || true)
  if [ -n "$left" ]; then
    echo "== deleting namespaces left by the run:"
    echo "$left"
    # shellcheck disable=SC2086
    kubectl delete --wait=false $left >/dev/null || true
  fi
}
trap cleanup EXIT

echo "== cargo build"
cargo build --workspace --bins --locked
echo "== cargo test -p tests (namespace prefix $prefix)"
cargo test -p tests --locked "$@" -- --test-threads="${E2E_THREADS:-2}"
