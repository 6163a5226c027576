# strata — see README.md. `make demo` sets up and runs the Docker example twice;
# `make test` runs every test, including the ones that boot real VMs.
SHELL := /bin/bash
export PATH := /usr/local/go/bin:$(PATH)
GO ?= go
BIN := bin
VERSION ?= $(shell git describe --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/strata-ci/strata/internal/version.Version=$(VERSION)
# Tests share built base images across packages and runs.
TEST_IMAGES ?= /var/tmp/strata-test-images

.PHONY: all setup build demo test test-unit lint bench clean

all: build

setup:
	./scripts/setup.sh

build:
	CGO_ENABLED=0 $(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/strata-agent ./cmd/strata-agent
	$(GO) build -ldflags '$(LDFLAGS)' -o $(BIN)/strata ./cmd/strata

# The main job: run examples/docker twice; the second run reuses what the first built.
demo: setup build
	./scripts/demo.sh

# Every test. VM tests boot real guests under QEMU; they fail (not skip) here
# when something they need is missing.
test: setup build lint
	STRATA_IMAGES=$${STRATA_IMAGES:-$(TEST_IMAGES)} STRATA_E2E_REQUIRED=1 $(GO) test -p 1 -timeout 80m -count=1 ./...

# Only the fast tests (VM tests skip).
test-unit:
	$(GO) test -short ./...

# gofmt, go vet and staticcheck (fetched through the module proxy, pinned).
STATICCHECK ?= honnef.co/go/tools/cmd/staticcheck@v0.8.2
lint:
	@echo "gofmt -l ."; out=$$(gofmt -l .); if [ -n "$$out" ]; then echo "gofmt would change: $$out"; exit 1; fi
	$(GO) vet ./...
	$(GO) run $(STATICCHECK) ./...

clean:
	rm -rf $(BIN)
