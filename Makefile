# make help lists the targets. Everything installs what it needs first.
SHELL := /bin/bash
CARGO ?= cargo
SCENARIO ?= healthy
DEMO_ARGS ?=

.PHONY: help setup wasm canary build test unit integration lint demo docs-screenshots fuzz clean install images

help: ## List the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | sed -E 's/:.*## /\t/' | expand -t 18

setup: ## Install the pinned Envoy and the wasm32 toolchain into .tools/ (idempotent)
	@bash scripts/setup.sh

wasm: setup ## Build the filter: target/wasm/wasm32-unknown-unknown/wasm/canary_filter.wasm
	@bash scripts/build-wasm.sh >/dev/null
	@ls -l target/wasm/wasm32-unknown-unknown/wasm/canary_filter.wasm | awk '{print "filter: " $$5 " bytes"}'

canary: setup ## Build the canary CLI and daemon: target/debug/canary
	$(CARGO) build -p canary-controller --bin canary

build: wasm ## Build the filter, the controller and the test binaries
	$(CARGO) build --workspace --exclude canary-filter --all-targets

lint: ## rustfmt and clippy (host crates, and the filter glue) with warnings as errors
	$(CARGO) fmt --all --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

unit: ## Native unit tests of the pure core, the judge (and its purity check) and the controller, and the fuzz corpus replayed
	$(CARGO) test -p canary-core -p canary-judge -p canary-controller
	$(CARGO) test --manifest-path fuzz/Cargo.toml --target-dir target

integration: build ## Tests against the real Envoy running the built .wasm (and Chromium, Prometheus, Kubernetes/Istio schemas, a local registry)
	@bash scripts/setup.sh browser
	@bash scripts/setup.sh prometheus
	@bash scripts/setup.sh k8s
	@bash scripts/setup.sh images
	$(CARGO) test -p canary-tests -- --test-threads=1

test: lint unit integration ## Everything CI runs: lint, unit and integration tests

# Builds only what the demo runs: the filter, the demo, its model servers and the canary CLI.
demo: wasm ## A complete local rollout (SCENARIO=healthy|faulty, DEMO_ARGS="--stage-seconds 20 ...")
	$(CARGO) build -q -p canary-tests -p canary-controller --bin demo --bin model-backend --bin canary
	target/debug/demo --scenario $(SCENARIO) $(DEMO_ARGS)

docs-screenshots: build ## Regenerate docs/*.png (a stage report, the rollout report, the dashboard) with headless Chromium
	@bash scripts/setup.sh browser
	CANARY_UPDATE_DOCS=1 $(CARGO) test -p canary-tests --test integration -- --test-threads=1 \
	  a_real_rollout_writes_reports the_dashboard_follows_a_rollout_live

FUZZ_SECONDS ?= 60
fuzz: ## Coverage-guided fuzzing (cargo-fuzz, nightly; installed if missing), FUZZ_SECONDS per target
	bash scripts/fuzz.sh $(FUZZ_SECONDS)

images: wasm ## Controller and filter images as OCI layouts in target/images/ (no Docker daemon; umoci); prints digests
	@bash scripts/setup.sh images
	$(CARGO) build --release -p canary-controller --bin canary
	@bash scripts/images.sh

PREFIX ?= $(HOME)/.local
install: ## Install `canary` and its kubectl plugin name `kubectl-canary` into PREFIX/bin (default ~/.local)
	$(CARGO) install --locked --path controller --root $(PREFIX)
	ln -sf canary $(PREFIX)/bin/kubectl-canary
	@echo "kubectl canary status NAMESPACE/NAME  (with $(PREFIX)/bin on PATH)"

clean: ## Remove build output (keeps .tools/)
	$(CARGO) clean

.PHONY: bench bench-smoke
bench: setup ## Filter cost per request vs no filter, no-op wasm, native split, controller reaction (~12 min): bench/results/<date>/
	@bash bench/run.sh full $(BENCH_ARGS)

bench-smoke: setup ## One short round of the bench (< 1 min once built): target/bench-smoke/
	@bash bench/run.sh smoke $(BENCH_ARGS)
