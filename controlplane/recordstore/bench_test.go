package recordstore

import (
	"context"
	"fmt"
	"path/filepath"
	"testing"
	"time"

	"github.com/meshguard/meshguard/controlplane/record"
)

// BenchmarkWrite measures the writer: one transaction per Batch records.
func BenchmarkWrite(b *testing.B) {
	s, err := Open(context.Background(), Options{Path: filepath.Join(b.TempDir(), "r.db"), MaxAge: -1})
	if err != nil {
		b.Fatal(err)
	}
	defer s.Close()
	batch := make([]record.Record, 5000)
	for i := range batch {
		batch[i] = decision(t0.Add(time.Duration(i)*time.Millisecond), frontend, fmt.Sprintf("spiffe://cluster.local/ns/bookstore/sa/svc%d", i%50), fmt.Sprintf("/api/%d", i), i%10 != 0, "allowed_by_policy", "AuthorizationPolicy/bookstore/catalog", "0")
	}
	b.ReportAllocs()
	b.ResetTimer()
	for b.Loop() {
		if err := s.write(context.Background(), batch); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(b.N*len(batch))/b.Elapsed().Seconds(), "records/s")
}
