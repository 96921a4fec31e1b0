package engine

import (
	"context"
	"errors"
	"path/filepath"
	"sync"
	"testing"

	"github.com/allot/allot"
	"github.com/allot/allot/store/sqlite"
)

func newTestEngine(t *testing.T, b Batching) *Engine {
	s, err := sqlite.Open(context.Background(), filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	e := New(s, Options{Batching: b})
	t.Cleanup(func() { e.Close(); s.Close() })
	c := 3
	if _, err := e.CreateResource(context.Background(), ResourceInput{ID: "s", Name: "s", Kind: allot.KindStock, Capacity: &c}); err != nil {
		t.Fatal(err)
	}
	return e
}

// holdOp prepares a hold of q units of "s" as the public API would.
func holdOp(t *testing.T, e *Engine, q int) *op {
	t.Helper()
	d, err := e.demandOf(context.Background(), e.store, []allot.Line{{ResourceID: "s", Quantity: q}})
	if err != nil {
		t.Fatal(err)
	}
	id := NewID("hld")
	o := d.op(func(ctx context.Context, w *wtx) (any, error) {
		if err := e.fit(ctx, w, d); err != nil {
			return nil, err
		}
		w.lk[d.keys[0]].Held += q
		if err := w.AddClaims(ctx, d.claims(id, allot.ClaimHeld)); err != nil {
			return nil, err
		}
		h := allot.Hold{ID: id, Status: allot.HoldActive, ExpiresAt: e.now().Add(DefaultHoldTTL), CreatedAt: e.now(), Lines: d.lines}
		return h, w.InsertHold(ctx, h)
	})
	o.done = make(chan opResult, 1)
	return o
}

func TestBatchDecidesInArrivalOrder(t *testing.T) {
	e := newTestEngine(t, Batching{})
	ops := []*op{holdOp(t, e, 2), holdOp(t, e, 2), holdOp(t, e, 1)}
	e.runBatch(ops)
	var codes []allot.Code
	for _, o := range ops {
		r := <-o.done
		if r.err != nil && allot.CodeOf(r.err) == "" {
			t.Fatal(r.err)
		}
		codes = append(codes, allot.CodeOf(r.err))
	}
	// 2 fits, the next 2 does not (1 left), the last 1 fits: a refusal in
	// the middle does not fail its neighbours.
	want := []allot.Code{"", allot.CodeCapacityReservedByHold, ""}
	for i := range want {
		if codes[i] != want[i] {
			t.Fatalf("results %v, want %v", codes, want)
		}
	}
	bs, _ := e.store.Buckets(context.Background(), "s", "", "")
	if bs[0].Held != 3 {
		t.Fatalf("held %d, want 3", bs[0].Held)
	}
	if st := e.Stats(); st.Batches != 2 || st.Ops != 4 { // the resource, then this batch
		t.Fatalf("stats %+v", st)
	}
}

func TestBatchFailureIsIsolated(t *testing.T) {
	e := newTestEngine(t, Batching{})
	boom := errors.New("boom")
	bad := &op{shard: "s", done: make(chan opResult, 1), apply: func(context.Context, *wtx) (any, error) { return nil, boom }}
	ops := []*op{holdOp(t, e, 1), bad, holdOp(t, e, 1)}
	e.runBatch(ops)
	for i, o := range ops {
		r := <-o.done
		if i == 1 {
			if !errors.Is(r.err, boom) {
				t.Fatalf("bad op got %v", r.err)
			}
			continue
		}
		if r.err != nil {
			t.Fatalf("op %d failed with its neighbour: %v", i, r.err)
		}
	}
	bs, _ := e.store.Buckets(context.Background(), "s", "", "")
	if bs[0].Held != 2 {
		t.Fatalf("held %d, want 2", bs[0].Held)
	}
	if st := e.Stats(); st.FailedBatches != 2 { // the batch, then the bad op alone
		t.Fatalf("stats %+v", st)
	}
}

// TestBatchesForm checks that concurrent requests really share
// transactions when batching is on.
func TestBatchesForm(t *testing.T) {
	e := newTestEngine(t, Batching{Workers: 1, MaxSize: 64})
	more := 1000
	if _, err := e.SetCapacity(context.Background(), "s", CapacityInput{Capacity: &more}); err != nil {
		t.Fatal(err)
	}
	before := e.Stats()
	var wg sync.WaitGroup
	for range 200 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if _, err := e.CreateOrder(context.Background(), OrderInput{Lines: []allot.Line{{ResourceID: "s", Quantity: 1}}}); err != nil {
				t.Error(err)
			}
		}()
	}
	wg.Wait()
	st := e.Stats()
	ops, batches := st.Ops-before.Ops, st.Batches-before.Batches
	if ops != 200 || batches >= ops {
		t.Fatalf("%d ops in %d batches: no batching happened", ops, batches)
	}
	t.Logf("200 concurrent orders ran in %d transactions", batches)
}

// TestBatchPanicIsIsolated: an op that panics fails alone; the worker and
// its neighbours carry on, and nothing of the panicking op is committed.
func TestBatchPanicIsIsolated(t *testing.T) {
	e := newTestEngine(t, Batching{})
	bad := &op{shard: "s", done: make(chan opResult, 1), apply: func(ctx context.Context, w *wtx) (any, error) {
		w.lk[allot.BucketKey{ResourceID: "s", Key: allot.StockKey}].Held++
		panic("boom")
	}}
	bad.specs = []allot.BucketSpec{{BucketKey: allot.BucketKey{ResourceID: "s", Key: allot.StockKey}}}
	ops := []*op{holdOp(t, e, 1), bad, holdOp(t, e, 1)}
	e.runBatch(ops)
	for i, o := range ops {
		r := <-o.done
		if (i == 1) != (r.err != nil) {
			t.Fatalf("op %d: %v", i, r.err)
		}
	}
	a, err := Check(context.Background(), e.store, "s")
	if err != nil || a.Held != 2 || len(a.Violations) > 0 {
		t.Fatalf("after a panicking op: %+v, %v", a, err)
	}
}
