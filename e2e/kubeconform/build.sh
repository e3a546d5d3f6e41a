#!/usr/bin/env bash
# Builds kubeconform, pinned by go.mod + go.sum, and prints the path of the binary. The GitOps
# tests run it with the JSON Schemas in crds/schemas/, the way a user's CI would.
#
# Cached outside the checkout under a key made of go.mod, go.sum, this script and the Go
# version, like the control plane:
#   ${PORTCULLIS_CACHE:-$HOME/.cache/portcullis}/kubeconform/<key>/kubeconform
# Progress goes to stderr; stdout is only the path.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${PORTCULLIS_CACHE:-$HOME/.cache/portcullis}/kubeconform"
key="$( { cat "$here/build.sh" "$here/go.mod" "$here/go.sum" "$here/tools.go"; go version; } |
        sha256sum | cut -c1-16)"
out="$cache_root/$key"

if [[ -f "$out/.complete" && -x "$out/kubeconform" ]]; then
  echo "kubeconform cached in $out" >&2
  echo "$out/kubeconform"
  exit 0
fi

mkdir -p "$out"
start=$SECONDS
version="$(cd "$here" && go list -m -f '{{.Version}}' github.com/yannh/kubeconform)"
echo "building kubeconform $version into $out" >&2
export GOFLAGS="-mod=readonly"
(cd "$here" && go build -trimpath -ldflags "-s -w" -o "$out/kubeconform" github.com/yannh/kubeconform/cmd/kubeconform)
echo "$version" > "$out/version"
touch "$out/.complete"
echo "kubeconform built in $((SECONDS - start)) s" >&2
echo "$out/kubeconform"
