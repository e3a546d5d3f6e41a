#!/usr/bin/env bash
# Builds the gateway and operator images (and the test node's pause image) FROM scratch with
# buildah, from the release binaries, and writes each as an OCI archive that
# `ctr -n k8s.io images import` or `podman load` takes. Nothing is pulled from anywhere.
#
#   cargo build --release -p portcullis-gateway -p portcullis-operator
#   bash e2e/images/build.sh                # prints one line per image: NAME ARCHIVE
#   bash e2e/images/build.sh --stage-only   # only stage the build contexts (for docker/podman)
#
# Images are tagged ghcr.io/portcullis-dev/portcullis-{gateway,operator}:<workspace version>,
# the names the chart and the operator default to. An image whose inputs (binary, Containerfile)
# did not change is not built again.
set -euo pipefail
cd "$(dirname "$0")/../.."

stage_only=false
[ "${1:-}" = "--stage-only" ] && stage_only=true
version=$(sed -n '/^\[workspace.package\]/,/^\[/s/^version = "\(.*\)"/\1/p' Cargo.toml)
out=${PORTCULLIS_IMAGES_DIR:-$PWD/e2e/.work/images}
mkdir -p "$out"
# A storage of our own: nothing lands in the host's /var/lib/containers.
bah=(buildah --storage-driver vfs --root "$out/storage" --runroot "$out/run")

# Stages NAME's build context: rootfs/ with BINARY at DEST, the shared libraries it links,
# and /etc/passwd and /etc/group naming UID.
stage() {
  local name=$1 binary=$2 dest=$3 uid=$4
  local ctx=$out/$name
  rm -rf "$ctx"
  mkdir -p "$ctx/rootfs$(dirname "$dest")" "$ctx/rootfs/etc"
  cp "$binary" "$ctx/rootfs$dest"
  # Line tables serve local backtraces, not an image; the symbols stay for panics' traces.
  strip --strip-debug "$ctx/rootfs$dest"
  if ldd "$binary" >/dev/null 2>&1; then
    # The loader and every library, by the path the binary asks for (no vdso).
    for lib in $(ldd "$binary" | grep -o '/[^ ]*'); do
      cp -L --parents "$lib" "$ctx/rootfs/"
    done
  fi
  echo "nonroot:x:$uid:$uid:nonroot:/nonexistent:/sbin/nologin" > "$ctx/rootfs/etc/passwd"
  echo "nonroot:x:$uid:" > "$ctx/rootfs/etc/group"
  echo "$ctx"
}

build() {
  local name=$1 image=$2 containerfile=$3 binary=$4 dest=$5 uid=$6
  local archive=$out/$name.oci.tar
  local key
  key=$(cat "$binary" "$containerfile" e2e/images/build.sh | sha256sum | cut -c1-16)-$image
  if ! $stage_only && [ -f "$archive" ] && [ "$(cat "$archive.key" 2>/dev/null)" = "$key" ]; then
    echo "$image $archive"
    return
  fi
  local ctx
  ctx=$(stage "$name" "$binary" "$dest" "$uid")
  if $stage_only; then
    echo "$image $ctx"
    return
  fi
  "${bah[@]}" rmi -f "$image" >/dev/null 2>&1 || true
  "${bah[@]}" bud --quiet --layers=false -f "$containerfile" -t "$image" "$ctx" >/dev/null
  rm -f "$archive"
  "${bah[@]}" push --quiet "$image" "oci-archive:$archive:$image" >/dev/null
  echo "$key" > "$archive.key"
  echo "$image $archive"
}

for b in portcullis-gateway portcullis-operator; do
  [ -x "target/release/$b" ] || { echo "target/release/$b is missing: cargo build --release first" >&2; exit 1; }
done
pause=$out/pause.bin
if [ ! -x "$pause" ] || [ e2e/images/pause.c -nt "$pause" ]; then
  cc -static -Os -o "$pause" e2e/images/pause.c
  strip "$pause"
fi

build gateway "ghcr.io/portcullis-dev/portcullis-gateway:$version" gateway/Containerfile \
  target/release/portcullis-gateway /usr/local/bin/portcullis-gateway 65532
build operator "ghcr.io/portcullis-dev/portcullis-operator:$version" operator/Containerfile \
  target/release/portcullis-operator /usr/local/bin/portcullis-operator 65532
build pause "localhost/portcullis/pause:$version" e2e/images/Containerfile.pause \
  "$pause" /pause 65535
