# End-to-end suite, SPIRE tooling and the demo (issue 6).

SPIRE_TOOLS := hack/tools/spire
SPIRE_STAMP := $(BIN)/.spire.stamp
SPIRE_BINS := $(BIN)/spire-server $(BIN)/spire-agent

.PHONY: spire
spire: $(SPIRE_STAMP) ## build bin/spire-server and bin/spire-agent (v1.13.3, pinned in hack/tools/spire) once

# The stamp holds the hash of the tools go.mod/go.sum; the build is skipped while
# both binaries exist and the hash is unchanged.
$(SPIRE_STAMP): FORCE
	@mkdir -p $(BIN)
	@want=$$(cat $(SPIRE_TOOLS)/go.mod $(SPIRE_TOOLS)/go.sum | sha256sum | cut -d' ' -f1); \
	if [ -x $(BIN)/spire-server ] && [ -x $(BIN)/spire-agent ] && [ "$$(cat $@ 2>/dev/null)" = "$$want" ]; then \
		echo "spire: up to date ($(SPIRE_BINS))"; \
	else \
		echo "spire: building spire-server and spire-agent (several minutes on a cold cache)"; \
		start=$$(date +%s); \
		( cd $(SPIRE_TOOLS) && GONOSUMDB=github.com/GoogleCloudPlatform/cloudsql-proxy \
			$(GO) build -trimpath -ldflags="-s -w" -o $(CURDIR)/$(BIN)/ \
			github.com/spiffe/spire/cmd/spire-server github.com/spiffe/spire/cmd/spire-agent ) && \
		echo "$$want" > $@ && echo "spire: built in $$(( $$(date +%s) - start ))s"; \
	fi

.PHONY: FORCE
FORCE:

# -v: the scenarios' own lines (SCENARIO ..., OUTBOUND ...) are printed.
E2E_FLAGS ?= -v

.PHONY: e2e
e2e: spire build wasm ## run the end-to-end suite against real SPIRE, authz and control-plane processes
	MESHGUARD_BIN=$(CURDIR)/$(BIN) $(GO) test -tags e2e -count=1 -timeout 30m $(E2E_FLAGS) ./e2e/...

.PHONY: demo
demo: build wasm ## build and run `meshguard demo` (in-process CA, embedded policies, loopback only)
	$(BIN)/meshguard demo $(DEMO_FLAGS)
