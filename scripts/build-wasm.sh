#!/usr/bin/env bash
# Builds the filter for wasm32 with the toolchain setup.sh chose, into its own
# target dir (build-std rebuilds std; keep it away from the host build).
# Prints the path of the .wasm.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
[ -f "$root/.tools/wasm.env" ] || bash "$root/scripts/setup.sh"
# shellcheck disable=SC1091
. "$root/.tools/wasm.env"
crate="${1:-canary-filter}"
cd "$root"
# shellcheck disable=SC2086
env $WASM_ENV "$WASM_CARGO" build -q -p "$crate" --target wasm32-unknown-unknown --profile wasm \
  --target-dir "$root/target/wasm" $WASM_FLAGS >&2
echo "$root/target/wasm/wasm32-unknown-unknown/wasm/${crate//-/_}.wasm"
