# chunkraid — build, demo and test.
#
#   make demo    bring up a local cluster with a 20 GiB mirrored volume (Ctrl-C stops it)
#   make test    unit, PostgreSQL and end-to-end tests with real clients
#   make fuzz    run every fuzz target for FUZZTIME each
#   make bench   chunkraid against nbdkit and tgtd, every layout, bitmap modes, resync, rebuild (bench/results/latest.{md,json}); make bench-go: Go benchmarks

SHELL    := /bin/bash
GO       ?= go
BIN      := bin/chunkraid
FUZZTIME ?= 30s
# staticcheck, pinned; run with go run so that nothing is installed by hand.
STATICCHECK := honnef.co/go/tools/cmd/staticcheck@v0.8.2
# Debian packages the demo and the tests need (real peers: PostgreSQL, the
# libiscsi and QEMU iSCSI clients, NBD clients and reference servers, fio,
# Prometheus to scrape the daemons).
PKGS     := postgresql libiscsi-bin qemu-utils qemu-block-extra fio libnbd-bin nbdkit tgt curl openssl prometheus
# Debian packages only the tests need: Chromium drives the dashboard.
TEST_PKGS := chromium

.PHONY: all build deps test-deps demo demo-clean test test-unit test-e2e vet fuzz soak bench bench-iscsi clean

all: build

build:
	$(GO) build -o $(BIN) ./cli/chunkraid

# install-missing installs the Debian packages of $(1) that are missing (as
# root, with apt-get).
define install-missing
	@missing=""; for p in $(1); do \
	  dpkg-query -W -f='$${Status}' $$p 2>/dev/null | grep -q "install ok installed" || missing="$$missing $$p"; \
	done; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" != 0 ]; then echo "missing packages:$$missing — install them as root (apt-get install$$missing)"; exit 1; fi; \
	  echo "installing:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	fi
endef

# deps: what the demo and the tests need; test-deps adds what only the
# tests need (a browser for the dashboard's tests).
deps:
	$(call install-missing,$(PKGS))

test-deps: deps
	$(call install-missing,$(TEST_PKGS))

demo: deps build
	./$(BIN) demo --dir .demo

demo-clean: build
	./$(BIN) demo --dir .demo --clean

# vet: go vet, gofmt, a tidy module and staticcheck (staticcheck.conf).
vet:
	$(GO) vet ./...
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || (gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1)
	@$(GO) mod tidy -diff >/dev/null || (echo "go.mod or go.sum is not tidy: run go mod tidy"; exit 1)
	$(GO) run $(STATICCHECK) ./...

# test runs everything: unit tests (with the race detector), the metaserver
# against a private PostgreSQL, and the end-to-end tests that start real
# processes and drive them with real clients. testreport prints what go test
# would, then the ten slowest tests; pipefail keeps go test's exit status.
# The end-to-end tests spend most of their time waiting for timeouts, each
# with its own cluster on its own ports: E2E_PARALLEL of them run at once.
E2E_PARALLEL ?= 4
test: test-deps build vet
	set -o pipefail; CHUNKRAID_ISCSI_FULL=1 $(GO) test -json -race -count=1 -parallel $(E2E_PARALLEL) -timeout 15m ./... | $(GO) run ./internal/testreport

test-unit: build
	$(GO) test -race -count=1 -short ./...

test-e2e: test-deps build
	$(GO) test -count=1 -v -parallel $(E2E_PARALLEL) -timeout 15m ./test/...

# soak runs the randomized recovery models far longer than make test does
# (no race detector): the set's data model and the health machine.
SOAK_SEEDS ?= 1000
soak:
	$(GO) test -count=1 -timeout 60m -run 'TestSetDataModel|TestHealthModel' ./raid -args -datamodel.seeds=$(SOAK_SEEDS)

fuzz:
	@for pkg in $$($(GO) list ./...); do \
	  for f in $$($(GO) test -list '^Fuzz' $$pkg 2>/dev/null | grep '^Fuzz'); do \
	    echo "== $$pkg $$f"; $(GO) test -run '^$$' -fuzz "^$$f$$" -fuzztime $(FUZZTIME) $$pkg || exit 1; \
	  done; \
	done

# bench measures chunkraid against nbdkit and tgtd on this machine in one
# run and prints ratios (also in bench/results/latest.md and latest.json);
# BENCH_FLAGS are passed to the driver, e.g. BENCH_FLAGS=-rev=HEAD to
# measure the last commit whatever the state of the work tree, or
# BENCH_FLAGS=-groups=volume,bitmap to measure only those groups. bench-go runs the Go
# benchmarks of the hot paths; bench-profile adds CPU profiles (perf) of our
# daemons under load, in bench/results/profile-*.txt.
BENCH_FLAGS ?=
bench: deps
	$(GO) run ./bench/run $(BENCH_FLAGS)

.PHONY: bench-go bench-profile
bench-go:
	$(GO) test -run '^$$' -bench . -benchmem ./...

bench-profile: deps
	$(GO) run ./bench/run -profile $(BENCH_FLAGS)

# conformance: libiscsi's whole suite without digests against our target and
# against tgtd in one run, side by side (make test runs it once, with digests).
.PHONY: conformance
conformance: deps
	CHUNKRAID_ISCSI_REFERENCE=1 $(GO) test -count=1 -run '^TestConformanceWholeSuite$$' -v -timeout 30m ./hostd/iscsi

# bench-iscsi: the iSCSI target alone over memory against tgtd (qemu-img bench).
bench-iscsi: deps
	CHUNKRAID_BENCH=1 $(GO) test -count=1 -run TestBenchVersusTgtd -v ./hostd/iscsi

clean:
	rm -rf bin
