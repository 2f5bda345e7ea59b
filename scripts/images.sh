#!/usr/bin/env bash
# Builds the two images deploy/ names, as OCI image layouts, without a
# container daemon (umoci; `scripts/setup.sh images` installs it):
#
#   OUT/controller:VERSION  the controller: the `canary` binary as
#                           /usr/local/bin/canary, the shared libraries it
#                           links (from this machine's Debian) and nothing
#                           else; user 65532 (non-root); entrypoint `canary
#                           operator`
#   OUT/filter:VERSION      the filter for Istio's WasmPlugin (`url: oci://…`),
#                           in the Wasm image spec's *compat* variant: one
#                           layer holding /plugin.wasm (what `FROM scratch` +
#                           `COPY plugin.wasm ./` makes; istio-agent takes it)
#
# Push with skopeo:  skopeo copy oci:OUT/filter:VERSION docker://REGISTRY/canary-filter:VERSION
# Prints each image's manifest digest (pin deploy/ by it).
#
# Env: OUT (target/images), VERSION (0.1.0), CANARY_BIN (target/release/canary),
#      WASM (target/wasm/wasm32-unknown-unknown/wasm/canary_filter.wasm)
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
OUT="${OUT:-$root/target/images}"
VERSION="${VERSION:-0.1.0}"
CANARY_BIN="${CANARY_BIN:-$root/target/release/canary}"
WASM="${WASM:-$root/target/wasm/wasm32-unknown-unknown/wasm/canary_filter.wasm}"
for f in "$CANARY_BIN" "$WASM"; do [ -f "$f" ] || { echo "images: $f is missing (make build / make wasm)" >&2; exit 1; }; done
command -v umoci >/dev/null || { echo "images: umoci is missing (bash scripts/setup.sh images)" >&2; exit 1; }

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
mkdir -p "$OUT"

# A fresh layout with one empty image, unpacked: prints the bundle's rootfs.
start() {
  local layout="$OUT/$1"
  rm -rf "$layout"
  umoci init --layout "$layout"
  umoci new --image "$layout:$VERSION"
  umoci unpack --rootless --image "$layout:$VERSION" "$work/$1" >/dev/null
  echo "$work/$1/rootfs"
}

digest() {
  python3 -c 'import json,sys; print(next(m["digest"] for m in json.load(open(sys.argv[1]))["manifests"] if m.get("annotations",{}).get("org.opencontainers.image.ref.name")==sys.argv[2]))' \
    "$OUT/$1/index.json" "$VERSION"
}

# --- controller -----------------------------------------------------------------
rootfs="$(start controller)"
install -D -m 0755 "$CANARY_BIN" "$rootfs/usr/local/bin/canary"
strip --strip-debug "$rootfs/usr/local/bin/canary" 2>/dev/null || true
# The dynamic loader and the libraries the binary links, at their paths.
for lib in $(ldd "$CANARY_BIN" | grep -o '/[^ ]*'); do
  install -D -m 0755 "$(readlink -f "$lib")" "$rootfs$lib"
done
printf 'root:x:0:0:root:/root:/sbin/nologin\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$work/passwd"
printf 'root:x:0:\nnonroot:x:65532:\n' > "$work/group"
install -D -m 0644 "$work/passwd" "$rootfs/etc/passwd"
install -D -m 0644 "$work/group" "$rootfs/etc/group"
[ -f /etc/ssl/certs/ca-certificates.crt ] && install -D -m 0644 /etc/ssl/certs/ca-certificates.crt "$rootfs/etc/ssl/certs/ca-certificates.crt"
install -d -m 1777 "$rootfs/tmp"
install -d -m 0755 -o 65532 -g 65532 "$rootfs/home/nonroot" "$rootfs/var/lib/canary"
umoci repack --image "$OUT/controller:$VERSION" "$work/controller" >/dev/null
umoci config --image "$OUT/controller:$VERSION" --os linux --architecture amd64 \
  --config.user 65532:65532 --config.entrypoint /usr/local/bin/canary --config.cmd operator \
  --config.workingdir /home/nonroot --config.env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt \
  --config.label org.opencontainers.image.title=canary-controller \
  --config.label "org.opencontainers.image.version=$VERSION"
umoci gc --layout "$OUT/controller"

# --- filter (Wasm image spec, compat variant) ------------------------------------
rootfs="$(start filter)"
install -m 0644 "$WASM" "$rootfs/plugin.wasm"
umoci repack --image "$OUT/filter:$VERSION" "$work/filter" >/dev/null
umoci config --image "$OUT/filter:$VERSION" --os wasip1 --architecture wasm \
  --config.label org.opencontainers.image.title=canary-filter \
  --config.label "org.opencontainers.image.version=$VERSION"
umoci gc --layout "$OUT/filter"

echo "controller $OUT/controller:$VERSION $(digest controller)"
echo "filter $OUT/filter:$VERSION $(digest filter)"
