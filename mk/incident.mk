# Incident response: the record store, forensic queries, policy replay (docs/incident.md).

# e.g. INCIDENT_BENCH_FLAGS="-run ingest,replay -ingest 200000"
INCIDENT_BENCH_FLAGS ?=

.PHONY: bench-incident
bench-incident: ## record store ingest rate, authz checks with shipping off/on, store size, timeline over 10M records (fixture built once into bin/), replay rate
	@mkdir -p $(BIN)
	$(GO) run ./bench/incidentbench -cache $(BIN) $(INCIDENT_BENCH_FLAGS) | tee $(BIN)/bench-incident.txt
