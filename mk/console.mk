# The control plane's web console (controlplane/console): its vendored graph
# library and its browser tests.

# cytoscape.js, pinned: `make console-assets` fetches the npm package, checks
# the file against the pinned SHA-256 and writes it (with its licence) into
# the embedded assets; `make lint` checks the committed copy.
CYTOSCAPE_VERSION := 3.35.0
CYTOSCAPE_SHA256  := 71fa9ebec21a7ca2c40cff6aacc30d1f6464e363662ad4b2c197e1adc770cd94
CONSOLE_VENDOR    := controlplane/console/assets/vendor/cytoscape

.PHONY: console-assets
console-assets: ## fetch cytoscape.js $(CYTOSCAPE_VERSION) from npm, check its SHA-256 and vendor it into the console's embedded assets
	@tmp=$$(mktemp -d) && trap 'rm -rf $$tmp' EXIT && \
	(cd $$tmp && npm pack --silent cytoscape@$(CYTOSCAPE_VERSION) >/dev/null && tar xzf cytoscape-$(CYTOSCAPE_VERSION).tgz package/dist/cytoscape.min.js package/LICENSE) && \
	echo "$(CYTOSCAPE_SHA256)  $$tmp/package/dist/cytoscape.min.js" | sha256sum --check --quiet && \
	mkdir -p $(CONSOLE_VENDOR) && cp $$tmp/package/dist/cytoscape.min.js $$tmp/package/LICENSE $(CONSOLE_VENDOR)/ && \
	echo "vendored cytoscape $(CYTOSCAPE_VERSION) into $(CONSOLE_VENDOR)"

.PHONY: console-assets-check
console-assets-check: ## check the vendored cytoscape.js against its pinned SHA-256
	@echo "$(CYTOSCAPE_SHA256)  $(CONSOLE_VENDOR)/cytoscape.min.js" | sha256sum --check --quiet || \
		{ echo "$(CONSOLE_VENDOR)/cytoscape.min.js is not cytoscape $(CYTOSCAPE_VERSION): run make console-assets"; exit 1; }

.PHONY: test-console
test-console: ## the console's tests, the browser tests in headless Chromium included (they skip without chromium)
	$(GO) test -race -count=1 ./controlplane/console/... ./internal/testbed/browser/...

.PHONY: bench-console
bench-console: ## first paint and update latency of the console in headless Chromium at 100/1,000 and 1,000/10,000 workloads/edges
	$(GO) test -count=1 -run 'TestConsoleScale' -v ./controlplane/console/ | grep -E 'scale|ratio|PASS|FAIL|SKIP|ok'
