#!/usr/bin/env bash
# `make bench` / `make bench-smoke`: installs and builds what the bench needs
# (through scripts/setup.sh and scripts/build-wasm.sh, so the rustup and the
# Debian wasm toolchains both work), runs the criterion micro-benchmarks of
# the pure core, the side-by-side Envoy benchmark, then the controller's
# reaction (tests/src/bin/reaction.rs: fault → decision → 0 % in Envoy).
#
#   bash bench/run.sh full  [ARGS]   → bench/results/<UTC date>/   (~12 min)
#   bash bench/run.sh smoke [ARGS]   → target/bench-smoke/          (one short round)
#
# ARGS go to `canary-bench run` (e.g. --rounds 8, --rate 3000, --connections 64).
# BENCH_ENVOY_CPU / BENCH_LOAD_CPU choose the two cores (default 0 and 1).
# BENCH_OUT names the results directory of a full run (default
# bench/results/<UTC date>; set it so as not to overwrite that day's run).
# BENCH_REACTION=0 skips the controller reaction run (~5 min).
# Linux only: it pins with taskset and reads /proc.
set -euo pipefail
mode="${1:-full}"
shift || true
case "$mode" in full|smoke) ;; *) echo "usage: bench/run.sh full|smoke [canary-bench run args]" >&2; exit 2 ;; esac
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
CARGO="${CARGO:-cargo}"
target_dir="${CARGO_TARGET_DIR:-$root/target}"
envoy_cpu="${BENCH_ENVOY_CPU:-0}"
load_cpu="${BENCH_LOAD_CPU:-1}"
started=$(date +%s)

bash scripts/setup.sh bench
filter_wasm="$(bash scripts/build-wasm.sh)"
noop_wasm="$(bash scripts/build-wasm.sh canary-noop-filter)"
# shellcheck disable=SC1091
. .tools/wasm.env
case "$WASM_FLAGS" in *build-std*) route="Debian rustc-web + build-std" ;; *) route="rustup target" ;; esac
# shellcheck disable=SC2016,SC2086
wasm_rustc="$(env $WASM_ENV sh -c '"${RUSTC:-rustc}" --version')"
toolchain="wasm32-unknown-unknown via $route, $wasm_rustc, profile wasm"

"$CARGO" build -q --release -p canary-bench --bin canary-bench
"$CARGO" bench -q --no-run -p canary-bench --bench core 2>/dev/null

if [ "$mode" = full ]; then
  out="${BENCH_OUT:-$root/bench/results/$(date -u +%F)}"
  crit_args=(--warm-up-time 1 --measurement-time 3)
  smoke=()
else
  out="$target_dir/bench-smoke"
  crit_args=(--warm-up-time 0.1 --measurement-time 0.3)
  smoke=(--smoke)
fi
crit="$target_dir/bench-criterion/$mode"
rm -rf "$crit"
mkdir -p "$crit" "$out"
echo "bench: criterion micro-benchmarks of canary-core (log: $crit/criterion.log)" >&2
CRITERION_HOME="$crit" taskset -c "$envoy_cpu" "$CARGO" bench -q -p canary-bench --bench core -- "${crit_args[@]}" \
  >"$crit/criterion.log" 2>&1 || { tail -20 "$crit/criterion.log" >&2; exit 1; }

taskset -c "$load_cpu" "$target_dir/release/canary-bench" run "${smoke[@]}" \
  --out "$out" \
  --envoy "${CANARY_ENVOY:-$root/.tools/venv/bin/envoy}" \
  --filter-wasm "$filter_wasm" --noop-wasm "$noop_wasm" \
  --criterion "$crit" \
  --envoy-cpu "$envoy_cpu" --load-cpu "$load_cpu" \
  --wasm-toolchain "$toolchain" \
  "$@"
# Controller reaction (real Envoy, backends and daemon; file sink): at the
# spec's default interval (60 s) and at 1 s. Not pinned: it is a latency of
# the whole system, not a CPU cost.
if [ "${BENCH_REACTION:-1}" = 0 ]; then
  echo "bench: controller reaction skipped (BENCH_REACTION=0); results in $out" >&2
  exit 0
fi
"$CARGO" build -q -p canary-controller -p canary-tests --bins
if [ "$mode" = full ]; then
  reaction=(--interval 60s,1s --trials 3)
else
  reaction=(--interval 1s --trials 1)
fi
echo "bench: controller reaction (${reaction[*]})" >&2
"$target_dir/debug/reaction" --out "$out" "${reaction[@]}" >/dev/null
echo "bench: $mode run took $(( $(date +%s) - started )) s in all (builds included); results in $out" >&2
