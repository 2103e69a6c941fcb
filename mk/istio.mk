# Istio integration, Kubernetes test assets and deploy/ manifests.

KUBE_TOOLS := hack/tools/kube
KUBE_VERSION := v1.37.2
KUBE_STAMP := $(BIN)/.kube-assets.stamp

# kube-assets builds kube-apiserver and etcd from the Go module proxy into bin/
# (envtest's KUBEBUILDER_ASSETS). It does nothing when both binaries exist and
# the tools module's go.mod/go.sum are the ones they were built from.
.PHONY: kube-assets
kube-assets: ## build bin/kube-apiserver and bin/etcd for the Istio tests (skipped when up to date)
	@mkdir -p $(BIN)
	@want=$$(cat $(KUBE_TOOLS)/go.mod $(KUBE_TOOLS)/go.sum | sha256sum | cut -d' ' -f1); \
	if [ -x $(BIN)/kube-apiserver ] && [ -x $(BIN)/etcd ] && [ "$$(cat $(KUBE_STAMP) 2>/dev/null)" = "$$want" ]; then \
		echo "kube-assets: $(BIN)/kube-apiserver and $(BIN)/etcd are up to date"; exit 0; \
	fi; \
	set -e; \
	echo "kube-assets: building kube-apiserver $(KUBE_VERSION) and etcd (several minutes)"; \
	(cd $(KUBE_TOOLS) && $(GO) build -trimpath \
		-ldflags="-s -w -X k8s.io/component-base/version.gitVersion=$(KUBE_VERSION) -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=37 -X k8s.io/component-base/version.gitTreeState=clean" \
		-o $(CURDIR)/$(BIN)/kube-apiserver k8s.io/kubernetes/cmd/kube-apiserver); \
	(cd $(KUBE_TOOLS) && $(GO) build -trimpath -ldflags="-s -w" -o $(CURDIR)/$(BIN)/etcd go.etcd.io/etcd/server/v3); \
	echo "$$want" > $(KUBE_STAMP)

.PHONY: test-istio
test-istio: kube-assets wasm ## run the Istio integration, state store, control plane replica and deploy/ tests against a real kube-apiserver, with the compiled filter
	KUBEBUILDER_ASSETS=$(CURDIR)/$(BIN) $(GO) test -count=1 ./controlplane/istio/... ./controlplane/state/... ./deploy/...
	KUBEBUILDER_ASSETS=$(CURDIR)/$(BIN) MESHGUARD_FILTER_WASM=$(CURDIR)/$(WASM_FILTER) $(GO) test -count=1 -run 'Kube|Replicas|Restart' ./cmd/meshguard

# Changes BenchmarkKubeIstioPropagation writes to the Kubernetes API, and
# the other filters' long polls it holds on the control plane meanwhile.
ISTIO_PROPAGATION_CHANGES ?= 40
ISTIO_PROPAGATION_POLLERS ?= 1000

.PHONY: bench-istio-propagation
bench-istio-propagation: kube-assets wasm ## changes written to a real kube-apiserver → enforced by the WasmPlugin-configured filter and the authz server: p50/p99 against the in-process watcher (ISTIO_PROPAGATION_CHANGES, _POLLERS)
	KUBEBUILDER_ASSETS=$(CURDIR)/$(BIN) MESHGUARD_FILTER_WASM=$(CURDIR)/$(WASM_FILTER) $(GO) test -count=1 -run '^$$' \
		-bench '^BenchmarkKubeIstioPropagation$$' -benchtime 1x ./cmd/meshguard/ -propagation-changes $(ISTIO_PROPAGATION_CHANGES) -propagation-pollers $(ISTIO_PROPAGATION_POLLERS) \
		| tee $(BIN)/bench-istio-propagation.txt
