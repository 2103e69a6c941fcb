# syntax=docker/dockerfile:1
# The meshguard wasm filter as an OCI image for Istio's WasmPlugin
# (url: oci://<registry>/meshguard-filter:<tag>): one layer holding
# plugin.wasm, the layout Istio's image fetcher reads.
# Build from the repository root: docker build -f deploy/docker/filter.Dockerfile .
FROM golang:1.26 AS build
WORKDIR /src
COPY go.mod go.sum ./
RUN --mount=type=cache,target=/root/go/pkg/mod go mod download
COPY . .
RUN --mount=type=cache,target=/root/go/pkg/mod --mount=type=cache,target=/root/.cache/go-build \
    GOOS=wasip1 GOARCH=wasm GOFLAGS=-mod=mod go build -trimpath -buildmode=c-shared \
      -gcflags=fmt=-l -gcflags=github.com/meshguard/meshguard/policies/internal/strictjson=-l \
      -ldflags "-s -w" -o /out/plugin.wasm ./wasm/filter

FROM scratch
COPY --from=build /out/plugin.wasm ./plugin.wasm
