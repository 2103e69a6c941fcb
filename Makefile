# meshguard — `make help` lists the targets.
SHELL := /bin/bash
GO ?= go
# vtprotobuf: Envoy's generated marshalers encode ext_authz answers without
# reflection (internal/grpccodec).
export GOFLAGS ?= -mod=mod -tags=vtprotobuf
BIN := bin
PKGS := ./...
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
LDFLAGS := -X github.com/meshguard/meshguard/internal/buildinfo.Version=$(VERSION)
FUZZTIME ?= 10s

.DEFAULT_GOAL := help

.PHONY: help
help: ## list the targets
	@grep -hE '^[a-zA-Z0-9_.-]+:.*?## ' $(MAKEFILE_LIST) | sort | awk 'BEGIN {FS = ":.*?## "}; {printf "  \033[36m%-20s\033[0m %s\n", $$1, $$2}'

.PHONY: build
build: ## build bin/meshguard
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/meshguard ./cmd/meshguard

.PHONY: test
test: ## run every test with -race (the README's test command; CI runs it)
	$(GO) test -race -count=1 -timeout 20m $(PKGS)

.PHONY: lint
lint: ## go vet (also the e2e and fault suites' tagged files), gofmt, staticcheck (built from the module proxy), the package layout, no tracked binaries, the console's vendored library
	$(GO) vet $(PKGS)
	$(GO) vet -tags e2e,faults $(PKGS)
	@out=$$(gofmt -l $$(git ls-files '*.go')); if [ -n "$$out" ]; then echo "gofmt needed:"; echo "$$out"; exit 1; fi
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) $(PKGS)
	./hack/check-layout.sh
	@$(MAKE) --no-print-directory console-assets-check

STATICCHECK_VERSION ?= v0.8.2

.PHONY: bench
bench: ## policy engine: decisions at 10/1k/100k rules, compile 10k policies (ratios in the same run)
	$(GO) run ./bench/policybench

.PHONY: fuzz
fuzz: ## run every fuzz target for FUZZTIME each
	./hack/fuzz-all.sh $(FUZZTIME)

.PHONY: wasip1
wasip1: ## build the policy engine for GOOS=wasip1 GOARCH=wasm
	GOOS=wasip1 GOARCH=wasm $(GO) build ./policies/...

-include mk/*.mk
