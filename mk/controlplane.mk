# Control plane targets.

CPBENCH_NODES ?= 1000
CPBENCH_BASELINE ?= 10
CPBENCH_RULES ?= 1000
CPBENCH_MEMLIMIT_MIB ?= 0
CPBENCH_REPLICAS ?= 1

.PHONY: bench-controlplane
bench-controlplane: ## control plane at fleet scale: snapshot build and ADS push to CPBENCH_NODES clients (ratios vs CPBENCH_BASELINE)
	@mkdir -p $(BIN)
	$(GO) build -o $(BIN)/cpbench ./bench/cpbench
	$(BIN)/cpbench -nodes $(CPBENCH_NODES) -baseline $(CPBENCH_BASELINE) -rules $(CPBENCH_RULES) -memlimit-mib $(CPBENCH_MEMLIMIT_MIB) -replicas $(CPBENCH_REPLICAS) | tee $(BIN)/bench-controlplane.txt

.PHONY: golden-controlplane
golden-controlplane: ## regenerate the control plane's xDS golden files (review the diff)
	$(GO) test ./controlplane/xds -run TestGolden -update

STATEBENCH_QUARANTINES ?= 10000
STATEBENCH_BASELINES ?= 1000
STATEBENCH_RUNS ?= 3

.PHONY: bench-state
bench-state: build ## control plane start to enforcing with STATEBENCH_QUARANTINES quarantines and STATEBENCH_BASELINES baselines in the embedded and (with KUBEBUILDER_ASSETS) Kubernetes store, and its memory (ratios vs an empty store)
	$(GO) run ./bench/statebench -meshguard $(BIN)/meshguard -quarantines $(STATEBENCH_QUARANTINES) -baselines $(STATEBENCH_BASELINES) -runs $(STATEBENCH_RUNS) | tee $(BIN)/bench-state.txt
