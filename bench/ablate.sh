#!/usr/bin/env bash
# `make bench-ablate`: prices the filter's host calls one kind at a time.
# Builds canary_filter.wasm once per `ablate-*` feature of filter/wasm (each
# turns one kind of host call into a no-op, see filter/wasm/Cargo.toml), plus
# one with all of them, and measures every build side by side with the real
# filter and the no-op filter in the same rounds (canary-bench --alt).
#
#   bash bench/ablate.sh [canary-bench run args]  → bench/results/<UTC date>-ablation/
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
CARGO="${CARGO:-cargo}"
envoy_cpu="${BENCH_ENVOY_CPU:-0}"
load_cpu="${BENCH_LOAD_CPU:-1}"

bash scripts/setup.sh bench
# shellcheck disable=SC1091
. .tools/wasm.env
filter_wasm="$(bash scripts/build-wasm.sh)"
noop_wasm="$(bash scripts/build-wasm.sh canary-noop-filter)"
builds="$root/target/wasm-ablation"
mkdir -p "$builds"
features=(ablate-key ablate-request-headers ablate-response-headers ablate-status ablate-metrics ablate-clock)
alts=()
for f in "${features[@]}" all; do
  if [ "$f" = all ]; then list="$(IFS=,; echo "${features[*]}")"; else list="$f"; fi
  # shellcheck disable=SC2086
  env $WASM_ENV "$WASM_CARGO" build -q -p canary-filter --target wasm32-unknown-unknown --profile wasm \
    --target-dir "$builds/target" --features "$list" $WASM_FLAGS >&2
  cp "$builds/target/wasm32-unknown-unknown/wasm/canary_filter.wasm" "$builds/$f.wasm"
  alts+=(--alt "without ${f#ablate-}=$builds/$f.wasm")
done
rows="noop,split,split_alt"
for i in $(seq 2 $(( ${#features[@]} + 1 ))); do rows="$rows,split_alt$i"; done

"$CARGO" build -q --release -p canary-bench --bin canary-bench
out="$root/bench/results/$(date -u +%F)-ablation"
mkdir -p "$out"
taskset -c "$load_cpu" "$root/target/release/canary-bench" run \
  --out "$out" --rows "$rows" \
  --envoy "${CANARY_ENVOY:-$root/.tools/venv/bin/envoy}" \
  --filter-wasm "$filter_wasm" --noop-wasm "$noop_wasm" \
  --envoy-cpu "$envoy_cpu" --load-cpu "$load_cpu" \
  "${alts[@]}" "$@"
echo "ablation: results in $out" >&2
