package postgres_test

import (
	"context"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
	"github.com/allot/allot/store/postgres"
	"github.com/allot/allot/store/postgres/pgtest"
)

// nodes opens n engines on one schema, as n allot processes on one
// PostgreSQL would be, each with one batch worker.
func nodes(t *testing.T, n int) []*engine.Engine {
	t.Helper()
	url := pgtest.URL(t)
	schema := pgtest.Schema(t, url)
	var out []*engine.Engine
	for range n {
		st, err := postgres.Open(context.Background(), url, postgres.Options{Schema: schema})
		if err != nil {
			t.Fatal(err)
		}
		e := engine.New(st, engine.Options{Batching: engine.Batching{Workers: 1}})
		t.Cleanup(func() { e.Close(); st.Close() })
		out = append(out, e)
	}
	return out
}

func stock(t *testing.T, e *engine.Engine, id string, capacity int) {
	t.Helper()
	if _, err := e.CreateResource(context.Background(), engine.ResourceInput{ID: id, Name: id, Kind: allot.KindStock, Capacity: &capacity}); err != nil {
		t.Fatal(err)
	}
}

func holdOne(e *engine.Engine, id string) (allot.Hold, error) {
	return e.CreateHold(context.Background(), engine.HoldInput{Lines: []allot.Line{{ResourceID: id, Quantity: 1}}})
}

func soldOut(err error) bool {
	c := allot.CodeOf(err)
	return c == allot.CodeInsufficientCapacity || c == allot.CodeCapacityReservedByHold
}

// A worker that knows what it last committed to a bucket writes the next
// batch over it with a compare-and-swap, without a round trip to lock and
// read it first. Another node's write in between makes the swap fail; the
// batch then runs again, locked, and decides on the state as it stands:
// a refusal decided on a stale "sold out" must not stand.
func TestSwapSeesAnotherNodesWrite(t *testing.T) {
	ctx := context.Background()
	ns := nodes(t, 2)
	a, b := ns[0], ns[1]
	stock(t, a, "one", 1)
	h, err := holdOne(a, "one") // a now knows the bucket: full
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.ReleaseHold(ctx, h.ID); err != nil { // b frees it behind a's back
		t.Fatal(err)
	}
	h2, err := holdOne(a, "one")
	if err != nil {
		t.Fatalf("a's hold was refused on the state it knew, after b freed the unit: %v", err)
	}
	if _, err := b.ReleaseHold(ctx, h2.ID); err != nil {
		t.Fatal(err)
	}
	if _, err := holdOne(a, "one"); err != nil {
		t.Fatal(err)
	}
	if _, err := holdOne(a, "one"); !soldOut(err) {
		t.Fatalf("a second unit of one: %v, want it sold out", err)
	}
	s := a.Stats()
	if s.BucketsChanged != 2 {
		t.Fatalf("a found the bucket changed %d times, want 2 (once after each release by b)", s.BucketsChanged)
	}
	if s.SwappedBatches == 0 {
		t.Fatal("a never wrote a batch by swapping")
	}
	audit, err := engine.Check(ctx, a.Store(), "one")
	if err != nil || audit.Oversold != 0 || len(audit.Violations) > 0 || audit.Held != 1 {
		t.Fatalf("audit: %+v, %v; want 1 held and nothing broken", audit, err)
	}
}

// Two nodes race many clients each for the last units of one bucket: every
// unit is sold exactly once, however often their swaps collide.
func TestSwapRaceSellsEachUnitOnce(t *testing.T) {
	ctx := context.Background()
	ns := nodes(t, 2)
	const capacity, clients, tries = 150, 16, 20 // 640 tries for 150 units
	stock(t, ns[0], "hot", capacity)
	var won atomic.Int64
	var wg sync.WaitGroup
	for _, e := range ns {
		for range clients {
			wg.Go(func() {
				for range tries {
					_, err := holdOne(e, "hot")
					switch {
					case err == nil:
						won.Add(1)
					case soldOut(err):
					default:
						t.Error(err)
						return
					}
				}
			})
		}
	}
	wg.Wait()
	if won.Load() != capacity {
		t.Fatalf("%d holds won, want exactly %d", won.Load(), capacity)
	}
	audit, err := engine.Check(ctx, ns[0].Store(), "hot")
	if err != nil || audit.Oversold != 0 || len(audit.Violations) > 0 || audit.Held != capacity {
		t.Fatalf("audit: %+v, %v; want %d held and nothing broken", audit, err, capacity)
	}
	var swapped, changed int64
	for _, e := range ns {
		swapped, changed = swapped+e.Stats().SwappedBatches, changed+e.Stats().BucketsChanged
	}
	t.Logf("%d batches swapped, %d found the bucket changed", swapped, changed)
	if swapped == 0 {
		t.Fatal("no batch wrote by swapping")
	}
}
