#!/usr/bin/env bash
# Builds the pinned control plane (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubectl, etcd), the test node (kubelet, kube-proxy, kube-router) and helm from Go modules,
# and prints the directory that holds the binaries.
#
# The versions are pinned by kubernetes/go.mod + go.sum and etcd/go.mod + go.sum. The binaries
# are cached outside the checkout, under a key made of those files, this script and the Go
# version, so a fresh clone on a machine that built them once does not build again:
#   ${PORTCULLIS_CACHE:-$HOME/.cache/portcullis}/controlplane/<key>/
# Progress goes to stderr; stdout is only the bin directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
k8s_version="v1.33.13"
helm_version="v3.22.0"
# The NetworkPolicy enforcer of the test node (firewall only). Test-only: it never ships.
kube_router_version="v2.1.0"
cache_root="${PORTCULLIS_CACHE:-$HOME/.cache/portcullis}/controlplane"

key="$( { cat "$here/build.sh" "$here/kubernetes/go.mod" "$here/kubernetes/go.sum" \
            "$here/kubernetes/tools.go" "$here/etcd/go.mod" "$here/etcd/go.sum" \
            "$here/etcd/main.go"; echo "helm $helm_version kube-router $kube_router_version"; go version; } | sha256sum | cut -c1-16)"
out="$cache_root/$key"
bins=(kube-apiserver kube-controller-manager kube-scheduler kube-proxy kubelet kubectl etcd helm kube-router)

complete() {
  [[ -f "$out/.complete" ]] || return 1
  for b in "${bins[@]}"; do [[ -x "$out/bin/$b" ]] || return 1; done
}

if complete; then
  echo "control plane $k8s_version cached in $out/bin" >&2
  echo "$out/bin"
  exit 0
fi

mkdir -p "$out/bin"
start=$SECONDS
echo "building control plane $k8s_version into $out/bin (a cold build takes about 5 minutes)" >&2
export GOFLAGS="-mod=readonly"
ldflags="-s -w"
ldflags+=" -X k8s.io/component-base/version.gitVersion=$k8s_version"
ldflags+=" -X k8s.io/component-base/version.gitMajor=1"
ldflags+=" -X k8s.io/component-base/version.gitMinor=33"
ldflags+=" -X k8s.io/component-base/version.gitTreeState=clean"
ldflags+=" -X k8s.io/component-base/version.buildDate=1970-01-01T00:00:00Z"
ldflags+=" -X k8s.io/client-go/pkg/version.gitVersion=$k8s_version"
ldflags+=" -X k8s.io/client-go/pkg/version.gitMajor=1"
ldflags+=" -X k8s.io/client-go/pkg/version.gitMinor=33"
(cd "$here/kubernetes" && go build -trimpath -ldflags "$ldflags" -o "$out/bin/" \
  k8s.io/kubernetes/cmd/kube-apiserver \
  k8s.io/kubernetes/cmd/kube-controller-manager \
  k8s.io/kubernetes/cmd/kube-scheduler \
  k8s.io/kubernetes/cmd/kube-proxy \
  k8s.io/kubernetes/cmd/kubelet \
  k8s.io/kubernetes/cmd/kubectl)
(cd "$here/etcd" && go build -trimpath -ldflags "-s -w" -o "$out/bin/etcd" .)
# helm pins itself: `go install module@version` builds with that release's own go.mod/go.sum.
(cd "$here" && GOBIN="$out/bin" GOFLAGS= go install -trimpath \
  -ldflags "-s -w -X helm.sh/helm/v3/internal/version.version=$helm_version" "helm.sh/helm/v3/cmd/helm@$helm_version")
(cd "$here" && GOBIN="$out/bin" GOFLAGS= go install -trimpath -ldflags "-s -w" \
  "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$kube_router_version")
touch "$out/.complete"
echo "control plane built in $((SECONDS - start)) s" >&2
echo "$out/bin"
