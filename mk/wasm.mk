# The meshguard proxy-wasm filter (wasm/filter), its detectors and its benchmark.

WASM_FILTER   := $(BIN)/meshguard-filter.wasm
WASM_NOOP_BIN := $(BIN)/noop.wasm
# No inlining inside fmt (-38 KB in wasm; the filter formats only on error
# and log paths) nor inside the configuration codec strictjson (-18.6 KB;
# it decodes configurations and encodes deny bodies and event batches: a
# deny costs 3% more, an allow nothing). Keep wasm/wasmtest.Build and
# deploy/docker/filter.Dockerfile in step.
WASM_GCFLAGS  := -gcflags=fmt=-l -gcflags=github.com/meshguard/meshguard/policies/internal/strictjson=-l
WASM_FLAGS    := -buildmode=c-shared -trimpath $(WASM_GCFLAGS) -ldflags "-s -w"
# The module size budget is 4 MiB (docs/wasm.md, "Module size"): make wasm
# (and wasm/wasmtest's TestModuleSize, wasmtest.SizeBudget) fail above it.
WASM_BUDGET   := 4194304

.PHONY: wasm
wasm: ## build the proxy-wasm filters: bin/meshguard-filter.wasm and the no-op baseline bin/noop.wasm
	@mkdir -p $(BIN)
	GOOS=wasip1 GOARCH=wasm $(GO) build $(WASM_FLAGS) -o $(WASM_FILTER) ./wasm/filter
	GOOS=wasip1 GOARCH=wasm $(GO) build $(WASM_FLAGS) -o $(WASM_NOOP_BIN) ./wasm/noop
	@ls -l $(WASM_FILTER) $(WASM_NOOP_BIN)
	@size=$$(wc -c < $(WASM_FILTER)); \
	if [ $$size -gt $(WASM_BUDGET) ]; then \
		echo "$(WASM_FILTER): $$size bytes, $$(( size - $(WASM_BUDGET) )) over the budget of $(WASM_BUDGET) (docs/wasm.md, Module size)" >&2; exit 1; \
	fi; \
	echo "$(WASM_FILTER): $$size bytes; budget $(WASM_BUDGET) ($$(( $(WASM_BUDGET) - size )) to spare)"

.PHONY: test-wasm
test-wasm: ## run the filter's tests: detectors, core, proxytest and the compiled module in the wazero host
	$(GO) test -count=1 ./wasm/internal/... ./wasm/filter/ ./wasm/wasmtest/

.PHONY: bench-wasm
bench-wasm: wasm ## meshguard filter vs no-op filter in the same host and run: cost ratio, memory after 1M requests, module size
	GOOS=wasip1 GOARCH=wasm $(GO) build $(WASM_FLAGS) -o $(BIN)/wasmbench-floor.wasm ./bench/wasmbench/floor
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./wasm/internal/detect/ ./wasm/internal/filtercore/ | tee $(BIN)/bench-wasm-go.txt
	$(GO) run ./bench/wasmbench -filter $(WASM_FILTER) -noop $(WASM_NOOP_BIN) -floor $(BIN)/wasmbench-floor.wasm -requests 1000000 | tee $(BIN)/bench-wasm.txt
