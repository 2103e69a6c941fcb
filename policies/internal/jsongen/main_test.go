package main

import (
	"bytes"
	"os"
	"path/filepath"
	"testing"
)

// TestGenerated fails when a generated file no longer matches its types;
// run go generate ./policies/... to refresh it.
func TestGenerated(t *testing.T) {
	dirs := map[string]string{"policies": "../..", "wire": "../../wire"}
	for _, tg := range targets {
		want, err := generate(tg)
		if err != nil {
			t.Fatal(err)
		}
		path := filepath.Join(dirs[tg.pkg], tg.file)
		got, err := os.ReadFile(path)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) {
			t.Errorf("%s is stale: run go generate ./policies/...", path)
		}
	}
}
