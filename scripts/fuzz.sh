#!/usr/bin/env bash
# Coverage-guided fuzzing of every target in fuzz/ with cargo-fuzz (libFuzzer),
# SECONDS each (default 60). Installs nightly Rust and cargo-fuzz if missing.
# New corpus entries go to target/fuzz-corpus/ (the seeds in fuzz/corpus/ stay
# small); a crash is copied to fuzz/regressions/<target>/ — `make test` replays
# those forever after — and makes this script fail.
set -euo pipefail
seconds="${1:-60}"
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root/fuzz"
log() { printf 'fuzz: %s\n' "$*" >&2; }

if ! cargo +nightly --version >/dev/null 2>&1; then
  log "installing nightly Rust (cargo-fuzz needs it)"
  timeout 300 rustup toolchain install nightly --profile minimal >&2 \
    || { log "cannot install nightly Rust: make test still replays the corpus on stable"; exit 1; }
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install --locked cargo-fuzz >&2
fi

targets=$(cargo fuzz list)
summary=""
failed=0
for t in $targets; do
  mkdir -p "$root/target/fuzz-corpus/$t" "$root/fuzz/regressions/$t"
  out="$root/target/fuzz-$t.log"
  log "$t: ${seconds}s"
  if cargo +nightly fuzz run "$t" "$root/target/fuzz-corpus/$t" "$root/fuzz/corpus/$t" -- \
      -max_total_time="$seconds" -rss_limit_mb=2048 -malloc_limit_mb=512 -max_len=65536 -print_final_stats=1 \
      >"$out" 2>&1; then
    result=ok
  elif grep -q "failed to build fuzz script" "$out"; then
    result=BUILD
    failed=1
  else
    result=CRASH
    failed=1
    for a in artifacts/"$t"/*; do [ -f "$a" ] && cp "$a" "$root/fuzz/regressions/$t/"; done
  fi
  execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$out" | grep -o '[0-9]*$' | tail -1 || true)
  cov=$(grep -o 'cov: [0-9]*' "$out" | tail -1 | grep -o '[0-9]*' || true)
  summary="$summary\n$(printf '%-14s %-6s %12s executions  %6s edges' "$t" "$result" "${execs:-?}" "${cov:-?}")"
done
printf 'target         result       executions          coverage%b\n' "$summary"
[ "$failed" = 0 ] || { log "a target failed: crashes are copied to fuzz/regressions/; see target/fuzz-<target>.log"; exit 1; }
