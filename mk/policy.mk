# Policy tooling targets (policies/source, policies/policytest, meshguard policy).

.PHONY: policy-examples
policy-examples: ## lint the example policies (warnings fail) and run their YAML tests with the CLI
	$(GO) run ./cmd/meshguard policy lint --warnings-as-errors examples/policies
	$(GO) run ./cmd/meshguard policy test examples/policies --tests examples/tests

.PHONY: fuzz-policy-source
fuzz-policy-source: ## fuzz the policy YAML reader for FUZZTIME
	$(GO) test -run '^$$' -fuzz '^FuzzParse$$' -fuzztime $(FUZZTIME) ./policies/source/

.PHONY: generate-json
generate-json: ## regenerate the reflection-free JSON codecs of the bundle and wire types (policies/internal/jsongen)
	$(GO) generate ./policies/ ./policies/wire/
