package engine

import (
	"context"
	"sync"
	"testing"

	"github.com/allot/allot"
)

// On SQLite (one writer at a time) every batch numbers its own events
// before it commits: with no sequencer run at all, racing holds leave every
// event numbered, densely, in the order the events were written.
func TestSerialStoreBatchesNumberTheirEvents(t *testing.T) {
	for _, workers := range []int{0, 1, 4} {
		e := newTestEngine(t, Batching{Workers: workers})
		if !e.serial {
			t.Fatal("the SQLite store should be a serial writer")
		}
		ctx := context.Background()
		c := 1000
		if _, err := e.CreateResource(ctx, ResourceInput{ID: "hot", Name: "hot", Kind: allot.KindStock, Capacity: &c}); err != nil {
			t.Fatal(err)
		}
		var wg sync.WaitGroup
		for range 16 {
			wg.Go(func() {
				for range 10 {
					if _, err := e.CreateHold(ctx, HoldInput{Lines: []allot.Line{{ResourceID: "hot", Quantity: 1}}}); err != nil {
						t.Error(err)
						return
					}
				}
			})
		}
		wg.Wait()
		all, err := e.store.EventsAfter(ctx, 0, 10000)
		if err != nil {
			t.Fatal(err)
		}
		if len(all) < 162 { // 2 resources created, 160 holds
			t.Fatalf("workers=%d: %d events, want at least 162", workers, len(all))
		}
		for i, ev := range all {
			if ev.ChangeNo == 0 {
				t.Fatalf("workers=%d: event %d (%s, seq %d) has no change number", workers, i, ev.Type, ev.Seq)
			}
			if i > 0 && ev.ChangeNo <= all[i-1].ChangeNo {
				t.Fatalf("workers=%d: change numbers out of write order at seq %d: %d after %d", workers, ev.Seq, ev.ChangeNo, all[i-1].ChangeNo)
			}
		}
		byChange, err := e.store.EventsAfterChange(ctx, 0, 10000)
		if err != nil {
			t.Fatal(err)
		}
		if len(byChange) != len(all) {
			t.Fatalf("workers=%d: %d events by change number, %d by seq", workers, len(byChange), len(all))
		}
	}
}
