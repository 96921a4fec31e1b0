package engine

import (
	"context"
	"errors"
	"fmt"
	"path/filepath"
	"slices"
	"sync"
	"sync/atomic"
	"testing"
	"time"

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
	return holdOn(t, e, "s", q)
}

// holdOn prepares a hold of q units of a stock resource.
func holdOn(t *testing.T, e *Engine, res string, q int) *op {
	t.Helper()
	d, err := e.demandOf(context.Background(), e.store, []allot.Line{{ResourceID: res, Quantity: q}})
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
	e.runBatch(ops, nil)
	// 2 fits, the next 2 does not (1 left), the last 1 fits: a refusal in
	// the middle does not fail its neighbours.
	wantCodes(t, ops, "", allot.CodeCapacityReservedByHold, "")
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
	e.runBatch(ops, nil)
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
	bad := panickingOp()
	ops := []*op{holdOp(t, e, 1), bad, holdOp(t, e, 1)}
	e.runBatch(ops, nil)
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

// TestLateRequestsJoinTheBatch: requests queued while a batch runs join it
// if it holds their buckets, and are decided in arrival order with it; the
// first that needs another bucket waits for the next batch, and so does
// every request behind it.
func TestLateRequestsJoinTheBatch(t *testing.T) {
	e := newTestEngine(t, Batching{})
	c := 5
	if _, err := e.CreateResource(context.Background(), ResourceInput{ID: "t", Name: "t", Kind: allot.KindStock, Capacity: &c}); err != nil {
		t.Fatal(err)
	}
	first := holdOp(t, e, 2)
	late := []*op{holdOp(t, e, 2), holdOp(t, e, 1), holdOn(t, e, "t", 1), holdOp(t, e, 1)}
	before := e.Stats()
	q, carry := runJoining(e, []*op{first}, late, 64)

	// 2 fits, the next 2 does not (1 left), the 1 fits.
	wantCodes(t, append([]*op{first}, late[:2]...), "", allot.CodeCapacityReservedByHold, "")
	if st := e.Stats(); st.Batches-before.Batches != 1 || st.Ops-before.Ops != 3 || st.JoinedOps-before.JoinedOps != 2 {
		t.Fatalf("want the 3 requests in one transaction: %+v -> %+v", before, st)
	}
	if carry != late[2] {
		t.Fatalf("the request on another resource should wait for the next batch, carry = %v", carry)
	}
	if len(q) != 1 || <-q != late[3] {
		t.Fatal("the request behind it should still be queued")
	}
	select {
	case r := <-late[2].done:
		t.Fatalf("a request that did not join was answered: %+v", r)
	default:
	}
	bs, _ := e.store.Buckets(context.Background(), "s", "", "")
	if bs[0].Held != 3 {
		t.Fatalf("held %d, want 3", bs[0].Held)
	}
}

// TestJoinBoundsTheBatch: no request joins a batch already at its size.
func TestJoinBoundsTheBatch(t *testing.T) {
	e := newTestEngine(t, Batching{})
	ops := []*op{holdOp(t, e, 1), holdOp(t, e, 1)}
	q, carry := runJoining(e, ops, []*op{holdOp(t, e, 1)}, 2)
	for _, o := range ops {
		if r := <-o.done; r.err != nil {
			t.Fatal(r.err)
		}
	}
	if len(q) != 1 || carry != nil {
		t.Fatalf("a request joined a full batch: %d queued, carry %v", len(q), carry)
	}
}

// TestJoinedPanicIsIsolated: a request that joined a batch and panics fails
// alone; the batch's other requests, joined or not, are run again and
// answered.
func TestJoinedPanicIsIsolated(t *testing.T) {
	e := newTestEngine(t, Batching{})
	bad := panickingOp()
	late := []*op{holdOp(t, e, 1), bad, holdOp(t, e, 1)}
	first := holdOp(t, e, 1)
	q, carry := runJoining(e, []*op{first}, late, 64)
	// The batch stopped at the panic: the last request had not joined yet.
	if len(q) != 1 || carry != nil {
		t.Fatalf("%d queued, carry %v; want the last request still queued", len(q), carry)
	}
	for i, o := range append([]*op{first}, late[:2]...) {
		r := answerOf(t, o)
		if (o == bad) != (r.err != nil) {
			t.Fatalf("op %d: %v", i, r.err)
		}
	}
	a, err := Check(context.Background(), e.store, "s")
	if err != nil || a.Held != 2 || len(a.Violations) > 0 {
		t.Fatalf("after a joined request panicked: %+v, %v", a, err)
	}
}

// answerOf waits for o's answer: a request that is never answered (lost by
// its batch) fails the test rather than hanging it.
func answerOf(t *testing.T, o *op) opResult {
	t.Helper()
	select {
	case r := <-o.done:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("a request was never answered")
		return opResult{}
	}
}

// wantCodes checks the answers of ops: their error codes, "" for success.
func wantCodes(t *testing.T, ops []*op, want ...allot.Code) {
	t.Helper()
	var codes []allot.Code
	for _, o := range ops {
		r := answerOf(t, o)
		if r.err != nil && allot.CodeOf(r.err) == "" {
			t.Fatal(r.err)
		}
		codes = append(codes, allot.CodeOf(r.err))
	}
	if !slices.Equal(codes, want) {
		t.Fatalf("results %v, want %v", codes, want)
	}
}

// panickingOp holds a unit of "s", then panics.
func panickingOp() *op {
	k := allot.BucketKey{ResourceID: "s", Key: allot.StockKey}
	return &op{shard: "s", done: make(chan opResult, 1), specs: []allot.BucketSpec{{BucketKey: k}},
		apply: func(ctx context.Context, w *wtx) (any, error) {
			w.lk[k].Held++
			panic("boom")
		}}
}

// flakyStore fails the first fails writes after running them (rolled back),
// with an error it calls retryable.
type flakyStore struct {
	allot.Store
	fails atomic.Int32
}

var errFlaky = errors.New("flaky store: try again")

func (f *flakyStore) Write(ctx context.Context, fn func(allot.Tx) error) error {
	if f.fails.Add(-1) < 0 {
		return f.Store.Write(ctx, fn)
	}
	return f.Store.Write(ctx, func(tx allot.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		return errFlaky
	})
}

func (f *flakyStore) IsRetryable(err error) bool {
	return errors.Is(err, errFlaky) || f.Store.IsRetryable(err)
}

// TestRetryKeepsTheCarriedRequest: a batch of one that is retried after a
// request was carried for the next batch does not take another from the
// queue in its retry (it would replace the carried one, which would never
// be answered).
func TestRetryKeepsTheCarriedRequest(t *testing.T) {
	ctx := context.Background()
	f := &flakyStore{}
	e := engineOver(t, func(s allot.Store) allot.Store { f.Store = s; return f }, Batching{}, map[string]int{"s": 3, "t": 5})
	x, y := holdOn(t, e, "t", 1), holdOn(t, e, "t", 1)
	first := holdOp(t, e, 1)
	f.fails.Store(1)
	q, carry := runJoining(e, []*op{first}, []*op{x, y}, 64)
	wantCodes(t, []*op{first}, "")
	if carry != x || len(q) != 1 {
		t.Fatalf("after the retry: carry %v (want the first request on t), %d queued (want 1)", carry, len(q))
	}
	if a, err := Check(ctx, e.store, "s"); err != nil || a.Held != 1 || len(a.Violations) > 0 {
		t.Fatalf("the retried hold: %+v, %v", a, err)
	}
}

// TestJoinerStopsAtAClosedQueue: when the engine closes, a batch that is
// joining takes nothing more and carries nothing.
func TestJoinerStopsAtAClosedQueue(t *testing.T) {
	q := make(chan *op)
	close(q)
	var carry *op
	if o := joiner(q, &carry, 64)(&wtx{lk: locked{}}, 1); o != nil || carry != nil {
		t.Fatalf("joined %v, carried %v from a closed queue", o, carry)
	}
}

// TestJoinedRequestsStoreTheirResponses: a request that joins a batch
// stores its response with its Idempotency-Key in the batch's transaction;
// one whose key was taken over fails the batch, whose requests then run
// one by one, so that only it is refused.
func TestJoinedRequestsStoreTheirResponses(t *testing.T) {
	ctx := context.Background()
	e := newTestEngine(t, Batching{})
	now := time.Now()
	idem := func(o *op, key string) *op {
		t.Helper()
		if rec, err := e.store.ClaimIdempotencyKey(ctx, allot.IdempotencyClaim{Key: key, Hash: "h", Token: "tok-" + key, At: now}, time.Minute); err != nil || rec != nil {
			t.Fatalf("claiming %s: %+v, %v", key, rec, err)
		}
		o.idem = &Idem{Key: key, Token: "tok-" + key, Render: func(any, error) (int, []byte) { return 201, []byte("response " + key) }}
		return o
	}
	stored := func(o *op) {
		t.Helper()
		rec, err := e.store.ClaimIdempotencyKey(ctx, allot.IdempotencyClaim{Key: o.idem.Key, Hash: "h", Token: "later", At: now}, time.Minute)
		if err != nil || rec == nil || !rec.Done || rec.Status != 201 || string(rec.Body) != "response "+o.idem.Key || !o.idem.Completed {
			t.Fatalf("key %s after the batch: %+v, %v, completed %v", o.idem.Key, rec, err, o.idem.Completed)
		}
	}
	run := func(first *op, late ...*op) Stats {
		t.Helper()
		before := e.Stats()
		runJoining(e, []*op{first}, late, 64)
		st := e.Stats()
		return Stats{Batches: st.Batches - before.Batches, JoinedOps: st.JoinedOps - before.JoinedOps, FailedBatches: st.FailedBatches - before.FailedBatches}
	}

	first, joined := idem(holdOp(t, e, 1), "k1"), idem(holdOp(t, e, 1), "k2")
	if st := run(first, joined); st.Batches != 1 || st.JoinedOps != 1 {
		t.Fatalf("want one transaction with one joined request: %+v", st)
	}
	wantCodes(t, []*op{first, joined}, "", "")
	stored(first)
	stored(joined)

	next, lost := idem(holdOp(t, e, 1), "k3"), idem(holdOp(t, e, 1), "k4")
	lost.idem.Token = "another request's token"
	if st := run(next, lost); st.JoinedOps != 1 || st.FailedBatches < 1 {
		t.Fatalf("want the request to join and the batch to fail: %+v", st)
	}
	wantCodes(t, []*op{next, lost}, "", allot.CodeIdempotencyInFlight)
	stored(next)
	if a, err := Check(ctx, e.store, "s"); err != nil || a.Held != 3 || len(a.Violations) > 0 {
		t.Fatalf("after the batches: %+v, %v", a, err)
	}
}

// runJoining runs a batch of ops with late queued behind it, which may join
// it up to maxSize, and returns the queue as the batch left it and the
// request it carried for the next batch.
func runJoining(e *Engine, ops, late []*op, maxSize int) (chan *op, *op) {
	q := make(chan *op, len(late))
	for _, o := range late {
		q <- o
	}
	var carry *op
	e.runBatch(ops, joiner(q, &carry, maxSize))
	return q, carry
}

// engineOver runs an engine over wrap(a new SQLite store), with stock
// resources of the given capacities.
func engineOver(t *testing.T, wrap func(allot.Store) allot.Store, b Batching, stock map[string]int) *Engine {
	t.Helper()
	ctx := context.Background()
	s, err := sqlite.Open(ctx, filepath.Join(t.TempDir(), "a.db"))
	if err != nil {
		t.Fatal(err)
	}
	e := New(wrap(s), Options{Batching: b})
	t.Cleanup(func() { e.Close(); s.Close() })
	for id, c := range stock {
		if _, err := e.CreateResource(ctx, ResourceInput{ID: id, Name: id, Kind: allot.KindStock, Capacity: &c}); err != nil {
			t.Fatal(err)
		}
	}
	return e
}

// lostCommitStore commits every n-th write, then reports its outcome as
// unknown, as a store does when the answer to COMMIT was lost.
type lostCommitStore struct {
	allot.Store
	n      int32
	writes atomic.Int32
	lost   atomic.Int32
}

func (f *lostCommitStore) Write(ctx context.Context, fn func(allot.Tx) error) error {
	err := f.Store.Write(ctx, fn)
	if err == nil && f.n > 0 && f.writes.Add(1)%f.n == 0 {
		f.lost.Add(1)
		return fmt.Errorf("%w: connection reset", allot.ErrOutcomeUnknown)
	}
	return err
}

// TestLostCommitIsNotRunAgain: a batch whose commit outcome is unknown is
// not split and run again. It committed here: running it again refused
// both requests the capacity they had just been given.
func TestLostCommitIsNotRunAgain(t *testing.T) {
	ctx := context.Background()
	f := &lostCommitStore{}
	e := engineOver(t, func(s allot.Store) allot.Store { f.Store = s; return f }, Batching{}, map[string]int{"s": 3})
	s := f.Store
	ops := []*op{holdOp(t, e, 1), holdOp(t, e, 2)}
	f.n = 1
	e.runBatch(ops, nil)
	f.n = 0
	wantCodes(t, ops, allot.CodeOutcomeUnknown, allot.CodeOutcomeUnknown)
	if a, err := Check(ctx, s, "s"); err != nil || a.Held != 3 || len(a.Violations) > 0 {
		t.Fatalf("after the lost commit: %+v, %v; want the 3 units held once", a, err)
	}
}

// TestLostCommitsUnderLoad races holders through the batching engine while
// some commits lose their answer. No request is refused (there is room for
// all), none fails otherwise, every hold answered is stored, and a hold is
// stored for every request whose outcome was unknown (they all committed):
// nothing ran twice.
func TestLostCommitsUnderLoad(t *testing.T) {
	ctx := context.Background()
	f := &lostCommitStore{}
	e := engineOver(t, func(s allot.Store) allot.Store { f.Store = s; return f }, Batching{Workers: 1, MaxSize: 16}, map[string]int{"s": 1000})
	s := f.Store
	f.n = 3
	const workers, each = 16, 20
	var ok, unknown atomic.Int32
	var wg sync.WaitGroup
	errs := make(chan error, workers*each)
	for range workers {
		wg.Go(func() {
			for range each {
				h, err := e.CreateHold(ctx, HoldInput{Lines: []allot.Line{{ResourceID: "s", Quantity: 1}}})
				switch {
				case err == nil:
					if _, gerr := s.GetHold(ctx, h.ID); gerr != nil {
						errs <- fmt.Errorf("hold %s answered but not stored: %v", h.ID, gerr)
					}
					ok.Add(1)
				case allot.CodeOf(err) == allot.CodeOutcomeUnknown:
					unknown.Add(1)
				default:
					errs <- err
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
	if f.lost.Load() == 0 || unknown.Load() == 0 {
		t.Fatalf("no commit lost its answer (%d lost, %d unknown): the test tested nothing", f.lost.Load(), unknown.Load())
	}
	a, err := Check(ctx, s, "s")
	if err != nil || len(a.Violations) > 0 {
		t.Fatalf("audit: %+v, %v", a, err)
	}
	if want := int(ok.Load() + unknown.Load()); a.Held != want {
		t.Fatalf("held %d, want %d (%d answered, %d unknown, all committed)", a.Held, want, ok.Load(), unknown.Load())
	}
}
