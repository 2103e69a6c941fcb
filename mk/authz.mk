# The ext_authz server (issue 3).

# Flags for bench/authzload compare, e.g. AUTHZ_BENCH_FLAGS="-duration 10s -rounds 3 -concurrency 64".
AUTHZ_BENCH_FLAGS ?=

# The tracing line of BenchmarkCheckTracing's output (and BenchmarkCheck's
# check, when run): off is the default, where the server never calls the
# tracer.
TRACING_SUMMARY = awk '/^BenchmarkCheck\/check-/{c=$$3} /^BenchmarkCheckTracing\/off-/{o=$$3; oa=$$7} /^BenchmarkCheckTracing\/on-unsampled-/{u=$$3} /^BenchmarkCheckTracing\/on-sampled-/{s=$$3} END{if (o > 0) {printf "tracing: off %.0f ns/check, %d allocs", o, oa; if (c > 0) printf " (%.2fx the check without trace headers)", o/c; printf "; on and unsampled %.2fx off, on and sampled %.2fx off\n", u/o, s/o}}'

.PHONY: bench-authz
bench-authz: build ## load `meshguard authz` (1,000-rule policy) and a trivial always-OK server side by side; print RPS, p50/p99 and the ratio; then a check with tracing off vs on
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/authzload ./bench/authzload
	$(BIN)/authzload compare -meshguard $(BIN)/meshguard $(AUTHZ_BENCH_FLAGS) | tee $(BIN)/bench-authz.txt
	$(GO) test -run '^$$' -bench 'BenchmarkCheckTracing' -benchmem -count 1 ./authz/server/ | tee -a $(BIN)/bench-authz.txt
	@$(TRACING_SUMMARY) $(BIN)/bench-authz.txt

.PHONY: bench-authz-micro
bench-authz-micro: ## in-process Check benchmark next to the engine alone (no transport), and tracing off vs on
	@mkdir -p $(BIN)
	$(GO) test -run '^$$' -bench BenchmarkCheck -benchmem -count 1 ./authz/server/ | tee $(BIN)/bench-authz-micro.txt
	@$(TRACING_SUMMARY) $(BIN)/bench-authz-micro.txt
