# Sextant: an Istio-compatible service-mesh control plane.
#   make test    everything CI runs (installs envoy, helm, kubectl first)
#   make run     the control plane on the sample config (see README)
#   make crds    regenerate crds/ from the Rust types
#   make lint    rustfmt check and clippy with warnings as errors
#   make e2e     the Kubernetes end-to-end suite (needs KUBECONFIG; skipped without)
SHELL := /bin/bash
CARGO ?= cargo
export PATH := $(CURDIR)/.tools/bin:$(PATH)

.PHONY: all build tools test lint crds run validate-samples clean e2e bench

all: build

tools:
	./scripts/install-tools.sh

build:
	$(CARGO) build --workspace --locked

# The end-to-end tests run the binaries built here (SEXTANT_BIN,
# SAMPLE_APP_BIN) instead of building them again with other features.
TARGET_DIR = $${CARGO_TARGET_DIR:-$(CURDIR)/target}

test: tools
	$(CARGO) build --workspace --locked
	SEXTANT_BIN=$(TARGET_DIR)/debug/sextant SAMPLE_APP_BIN=$(TARGET_DIR)/debug/sextant-sample-app \
		$(CARGO) test --workspace --locked
	$(MAKE) validate-samples

# Benchmarks (figures, not pass/fail): the CSR service against openssl's
# sign+verify limit, criterion benches of the pure parts (CSR signing,
# snapshot build, generation), 20 real Envoys converging on a route edit,
# and the xDS load harness (control-plane/bench) at BENCH_SERVICES services
# and BENCH_PROXIES proxies.
BENCH_SERVICES ?= 1000
BENCH_PROXIES ?= 2000
RELEASE_BINS = SEXTANT_BIN=$(TARGET_DIR)/release/sextant SAMPLE_APP_BIN=$(TARGET_DIR)/release/sextant-sample-app

bench: tools
	$(CARGO) build --release --locked -p sextant -p sextant-sample-app -p sextant-bench
	$(CARGO) bench --locked -p sextant-ca --bench csr_load
	$(CARGO) bench --locked -p sextant-ca --bench sign
	$(CARGO) bench --locked -p sextant-bench --bench generate
	$(RELEASE_BINS) $(CARGO) run --release --locked -q -p sextant-e2e --bin envoy-convergence -- --envoys 20 --rounds 10
	$(TARGET_DIR)/release/sextant-bench run --sextant $(TARGET_DIR)/release/sextant \
		--services $(BENCH_SERVICES) --proxies $(BENCH_PROXIES)
	RCP=$$(./scripts/install-bench-tools.sh | tail -1) && \
		$(TARGET_DIR)/release/sextant-bench run --sextant $(TARGET_DIR)/release/sextant \
		--services 200 --proxies 400 --changes 0 --compare-rcp "$$RCP"

# Every Istio sample must validate unchanged (exit 0). Runs the binary the
# workspace build made: `cargo run -p sextant` would resolve features for one
# package and compile a second copy of half the tree (disk and time in CI).
validate-samples:
	$(CARGO) build --workspace --locked
	$(TARGET_DIR)/debug/sextant validate -f ../shared/reference/istio-samples

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets --locked -- -D warnings

crds:
	$(CARGO) run -q -p sextant --locked -- crds > crds/istio-crds.yaml
	cp crds/istio-crds.yaml charts/sextant/crds/istio-crds.yaml

run: build
	./target/debug/sextant serve --config-dir ../shared/reference/istio-samples --admin-addr 127.0.0.1:15014

clean:
	$(CARGO) clean

# The local mesh (tests/src/bin/local-mesh.rs): sextant, an Envoy per
# BookInfo workload (and httpbin), the sample apps and the ingress gateway
# (127.0.0.100:80, needs root) on loopback, until Ctrl-C. Config dir, followed
# live: .local/mesh/config (copy Istio's samples there); logs: .local/mesh/logs.
.PHONY: mesh
mesh: tools build
	SEXTANT_BIN=$(CURDIR)/target/debug/sextant SAMPLE_APP_BIN=$(CURDIR)/target/debug/sextant-sample-app \
		./target/debug/local-mesh --dir .local/mesh

# The Kubernetes end-to-end suite: installs the chart into the cluster
# KUBECONFIG points at, deploys BookInfo with injection, applies the samples
# and checks routing. No cluster is reachable on the CI machines: then it
# says so and exits 0 without testing anything.
e2e: tools build
	./tests/e2e-kube.sh
