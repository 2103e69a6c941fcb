# The proxy-wasm host (internal/testbed/wasmhost) and the no-op filter (wasm/noop).

WASM_NOOP := $(BIN)/noop.wasm

.PHONY: wasm-noop
wasm-noop: ## build the no-op proxy-wasm filter (bin/noop.wasm), the baseline of the wasm benchmarks
	@mkdir -p $(BIN)
	GOOS=wasip1 GOARCH=wasm $(GO) build -buildmode=c-shared -o $(WASM_NOOP) ./wasm/noop
	@ls -l $(WASM_NOOP)

.PHONY: bench-wasmhost
bench-wasmhost: ## wasm host: cost per request with the no-op filter, as a ratio to the bare guest calls
	@mkdir -p $(BIN)
	$(GO) test -run '^$$' -bench 'Noop' -benchmem -count 1 ./wasm/host/ | tee $(BIN)/bench-wasmhost.txt
	@awk '/^BenchmarkNoopRequest-/{r=$$3} /^BenchmarkNoopRawCallbacks-/{b=$$3} END{if (b > 0) printf "wasm host: %.0f ns/request through the host vs %.0f ns for the bare guest callbacks: %.2fx\n", r, b, r/b}' $(BIN)/bench-wasmhost.txt
