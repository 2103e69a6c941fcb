# The fault suite (e2e/faults): real `meshguard authz` and `meshguard
# controlplane` processes on loopback under the faults an operator meets.

# Extra `go test` flags, e.g. FAULTS_FLAGS="-run Fault5".
FAULTS_FLAGS ?=

.PHONY: test-faults
test-faults: build ## fault suite: the six reliability faults, a 1,000-node reconnection storm and the happy paths, real processes on loopback; prints what held (≈1.5 min)
	MESHGUARD_BIN=$(CURDIR)/$(BIN) FAULTS_REPORT=$(CURDIR)/$(BIN)/faults-report.txt \
		$(GO) test -tags faults,vtprotobuf -count=1 -timeout 10m -v $(FAULTS_FLAGS) ./e2e/faults/
