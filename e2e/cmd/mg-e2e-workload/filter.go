package main

import (
	"context"
	"errors"
	"log/slog"

	"github.com/meshguard/meshguard/internal/envoyemu"
)

// closingFilter is a Filter that holds resources.
type closingFilter interface {
	envoyemu.Filter
	Close() error
}

// newFilter loads the wasm filter into the wazero host.
func newFilter(_ context.Context, _ options, _ *slog.Logger) (closingFilter, error) {
	return nil, errors.New("the wazero proxy-wasm host (wasm/host) is not merged yet")
}
