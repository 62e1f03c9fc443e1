# The test control plane's pinned versions and the sha256 of every binary as
# build.sh builds it. Sourced by build.sh, up.sh and down.sh.
#
# The module versions are the ones the wrapper modules' go.mod files require
# (build.sh checks that they agree). Go builds are reproducible: the same
# source (go.sum), the same toolchain (TESTENV_GO, fetched as a Go module by
# GOTOOLCHAIN when the machine's go differs), CGO off, -trimpath and the fixed
# flags of build.sh give the same bytes on any machine of the same GOARCH, so
# the hashes below are checked after every build and before every start.
#
# To update a version: edit the go.mod of its wrapper module (for Kubernetes
# also every `replace` line, to the same release), run `go mod tidy` there,
# change the version here, then `k8s/testenv/build.sh --record` rebuilds and
# rewrites the hashes below; commit go.mod, go.sum and this file together.

TESTENV_GO=go1.26.8
KUBERNETES_VERSION=v1.37.2
ETCD_VERSION=v3.7.3
KWOK_VERSION=v0.8.0

# sha256 of each binary for linux/amd64 (name-version-goarch).
TESTENV_SHA256_LIST="
etcd-v3.7.3-amd64 ee356dc5d281e25ec6950d130f50ed89cef3d00e53cd9ee0118484b2c042d897
kube-apiserver-v1.37.2-amd64 553ce94afeeb084547b278b3c9aacb357b862163fd82d3c0c27105108128ffca
kube-controller-manager-v1.37.2-amd64 76deecb3bacedc2ccbfa00ec3b3b71a6deb8e8bc1aa1c34df9788ed13879901a
kube-scheduler-v1.37.2-amd64 83e72eb65ce58689ece778da2f75ff16d473eb22a2ca83d738812cd0af23f5cc
kwok-v0.8.0-amd64 bd4517d8a11b487228974d45ded423ff8a9241c88d1ec957827d2b653f5f41a1
"
