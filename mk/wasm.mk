# The meshguard proxy-wasm filter (wasm/filter), its detectors and its benchmark.

WASM_FILTER   := $(BIN)/meshguard-filter.wasm
WASM_NOOP_BIN := $(BIN)/noop.wasm
WASM_FLAGS    := -buildmode=c-shared -trimpath -ldflags "-s -w"

.PHONY: wasm
wasm: ## build the proxy-wasm filters: bin/meshguard-filter.wasm and the no-op baseline bin/noop.wasm
	@mkdir -p $(BIN)
	GOOS=wasip1 GOARCH=wasm $(GO) build $(WASM_FLAGS) -o $(WASM_FILTER) ./wasm/filter
	GOOS=wasip1 GOARCH=wasm $(GO) build $(WASM_FLAGS) -o $(WASM_NOOP_BIN) ./wasm/noop
	@ls -l $(WASM_FILTER) $(WASM_NOOP_BIN)

.PHONY: test-wasm
test-wasm: ## run the filter's tests: detectors, core, proxytest and the compiled module in the wazero host
	$(GO) test -count=1 ./wasm/internal/... ./wasm/filter/ ./wasm/wasmtest/

.PHONY: bench-wasm
bench-wasm: wasm ## meshguard filter vs no-op filter in the same host and run: cost ratio, memory after 1M requests, module size
	GOOS=wasip1 GOARCH=wasm $(GO) build $(WASM_FLAGS) -o $(BIN)/wasmbench-floor.wasm ./bench/wasmbench/floor
	$(GO) test -run '^$$' -bench . -benchmem -count 1 ./wasm/internal/detect/ ./wasm/internal/filtercore/ | tee $(BIN)/bench-wasm-go.txt
	$(GO) run ./bench/wasmbench -filter $(WASM_FILTER) -noop $(WASM_NOOP_BIN) -floor $(BIN)/wasmbench-floor.wasm -requests 1000000 | tee $(BIN)/bench-wasm.txt
