package storetest

import (
	"context"
	"testing"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
)

// Bench measures the engine's hot path on a store: many goroutines holding
// one unit each of a single stock bucket, one transaction per request
// (naive) against batched. CI runs it once (-benchtime=1x) as a smoke test;
// docs/benchmarks.md records real runs.
func Bench(b *testing.B, open Opener) {
	for _, m := range []struct {
		name string
		b    engine.Batching
	}{
		{"naive", engine.Batching{}},
		{"batch", engine.Batching{Workers: 1, MaxSize: 256}},
	} {
		b.Run("HotHolds/"+m.name, func(b *testing.B) {
			ctx := context.Background()
			st := open(b)
			eng := engine.New(st, engine.Options{Batching: m.b})
			defer func() { eng.Close(); st.Close() }()
			capacity := engine.MaxCapacity
			if _, err := eng.CreateResource(ctx, engine.ResourceInput{ID: "hot", Name: "hot", Kind: allot.KindStock, Capacity: &capacity}); err != nil {
				b.Fatal(err)
			}
			before := eng.Stats()
			b.SetParallelism(32) // 64 goroutines on 2 cores, as the HTTP target
			b.ResetTimer()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if _, err := eng.CreateHold(ctx, engine.HoldInput{Lines: []allot.Line{{ResourceID: "hot", Quantity: 1}}}); err != nil {
						b.Error(err)
						return
					}
				}
			})
			b.StopTimer()
			after := eng.Stats()
			if n := after.Batches - before.Batches; n > 0 {
				b.ReportMetric(float64(after.Ops-before.Ops)/float64(n), "holds/txn")
			}
			a, err := engine.Check(ctx, st, "hot")
			if err != nil || a.Oversold != 0 || len(a.Violations) > 0 || a.Held != b.N {
				b.Fatalf("after %d holds: %+v, %v", b.N, a, err)
			}
		})
	}
}
