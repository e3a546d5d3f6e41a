#!/usr/bin/env bash
# Builds rclone's integration-suite test binaries (backend/sftp and backend/ftp, each linked with
# fstest/fstests) from the rclone release pinned by go.mod + go.sum, and prints the directory
# that holds them: sftp.test and ftp.test.
#
# Cached outside the checkout under a key made of go.mod, go.sum, this script and the Go
# version, like the control plane:
#   ${PORTCULLIS_CACHE:-$HOME/.cache/portcullis}/rclone/<key>/
# Progress goes to stderr; stdout is only the directory.
set -euo pipefail

here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cache_root="${PORTCULLIS_CACHE:-$HOME/.cache/portcullis}/rclone"
key="$( { cat "$here/build.sh" "$here/go.mod" "$here/go.sum" "$here/tools.go"; go version; } |
        sha256sum | cut -c1-16)"
out="$cache_root/$key"

if [[ -f "$out/.complete" && -x "$out/sftp.test" && -x "$out/ftp.test" ]]; then
  echo "rclone test binaries cached in $out" >&2
  echo "$out"
  exit 0
fi

mkdir -p "$out"
start=$SECONDS
version="$(cd "$here" && go list -m -f '{{.Version}}' github.com/rclone/rclone)"
echo "building rclone $version test binaries into $out (a cold build takes a few minutes)" >&2
export GOFLAGS="-mod=readonly"
(cd "$here" && go test -c -trimpath -ldflags "-s -w" -o "$out/sftp.test" github.com/rclone/rclone/backend/sftp)
(cd "$here" && go test -c -trimpath -ldflags "-s -w" -o "$out/ftp.test" github.com/rclone/rclone/backend/ftp)
echo "$version" > "$out/version"
touch "$out/.complete"
echo "rclone test binaries built in $((SECONDS - start)) s" >&2
echo "$out"
