# The ext_authz server (issue 3).

# Flags for bench/authzload compare, e.g. AUTHZ_BENCH_FLAGS="-duration 10s -rounds 3 -concurrency 64".
AUTHZ_BENCH_FLAGS ?=

.PHONY: bench-authz
bench-authz: build ## load `meshguard authz` (1,000-rule policy) and a trivial always-OK server side by side; print RPS, p50/p99 and the ratio
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/authzload ./bench/authzload
	$(BIN)/authzload compare -meshguard $(BIN)/meshguard $(AUTHZ_BENCH_FLAGS) | tee $(BIN)/bench-authz.txt

.PHONY: bench-authz-micro
bench-authz-micro: ## in-process Check benchmark next to the engine alone (no transport), and tracing off vs on
	@mkdir -p $(BIN)
	$(GO) test -run '^$$' -bench BenchmarkCheck -benchmem -count 1 ./authz/server/ | tee $(BIN)/bench-authz-micro.txt
	@awk '/^BenchmarkCheck\/check-/{c=$$3} /^BenchmarkCheckTracing\/off-/{o=$$3} /^BenchmarkCheckTracing\/on-unsampled-/{u=$$3} /^BenchmarkCheckTracing\/on-sampled-/{s=$$3} END{if (o > 0) printf "tracing: off %.0f ns/check (%.2fx the untraced check), on and unsampled %.2fx off, on and sampled %.2fx off\n", o, o/c, u/o, s/o}' $(BIN)/bench-authz-micro.txt
