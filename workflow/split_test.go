package workflow_test

import (
	"context"
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
	"github.com/allot/allot/payments"
	"github.com/allot/allot/store/storetest"
	"github.com/allot/allot/workflow"
)

type flaky struct {
	inner  engine.Scheduler
	failed atomic.Bool
	calls  atomic.Int64
}

func (f *flaky) Schedule(ctx context.Context, tx allot.Tx, steps []allot.Step) error {
	f.calls.Add(1)
	if len(steps) > 1 && f.failed.CompareAndSwap(false, true) {
		// Let River insert first, then fail the batch: its insert must roll back.
		if err := f.inner.Schedule(ctx, tx, steps); err != nil {
			return err
		}
		return errors.New("injected failure after River's insert")
	}
	return f.inner.Schedule(ctx, tx, steps)
}

// TestFailedBatchSchedulesOnce fails a batch after River's insert ran in
// its transaction: the insert must roll back with it, and the re-run of its
// requests one by one schedule each charge exactly once.
func TestFailedBatchSchedulesOnce(t *testing.T) {
	ctx := context.Background()
	s := storetest.Stores()["postgres"](t)
	pay := &payments.Fake{}
	run, err := workflow.New(ctx, s, workflow.Config{Payments: map[string]allot.Payments{"fake": pay},
		Sellers: &seller{answer: map[string]allot.SellerAnswer{}, calls: map[string]int{}}, Notifier: &notes{sent: map[string]int{}, to: map[string]string{}},
		PollEvery: 20 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	fl := &flaky{inner: run}
	eng := engine.New(s, engine.Options{Batching: engine.Batching{Workers: 1, MaxSize: 64, Linger: 100 * time.Millisecond},
		Workflow: engine.Workflow{Scheduler: fl, DefaultProvider: "fake"}})
	if err := run.Start(ctx, eng); err != nil {
		t.Fatal(err)
	}
	defer func() {
		c, cl := context.WithTimeout(ctx, 5*time.Second)
		defer cl()
		run.Stop(c)
		eng.Close()
		s.Close()
	}()
	cap := 100
	if _, err := eng.CreateResource(ctx, engine.ResourceInput{ID: "r", Name: "r", Kind: allot.KindStock, Capacity: &cap, Price: eur(100)}); err != nil {
		t.Fatal(err)
	}
	var wg sync.WaitGroup
	ids := make([]string, 10)
	for i := range 10 {
		wg.Go(func() {
			o, err := eng.CreateOrder(ctx, engine.OrderInput{Lines: []allot.Line{{ResourceID: "r", Quantity: 1}}})
			if err != nil {
				t.Error(err)
				return
			}
			ids[i] = o.ID
		})
	}
	wg.Wait()
	if !fl.failed.Load() {
		t.Skip("no multi-op batch formed")
	}
	time.Sleep(2 * time.Second)
	pool := s.(interface{ Pool() *pgxpool.Pool }).Pool()
	for _, id := range ids {
		var n int
		if err := pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE kind = 'payment_charge' AND args->>'order_id' = $1`, id).Scan(&n); err != nil {
			t.Fatal(err)
		}
		o, _ := eng.GetOrder(ctx, id)
		if n != 1 || pay.Captures(id) != 1 {
			t.Errorf("order %s (%s): %d charge jobs, %d captures", id, o.Status, n, pay.Captures(id))
		}
	}
	var total int
	pool.QueryRow(ctx, `SELECT count(*) FROM river_job WHERE kind = 'payment_charge'`).Scan(&total)
	t.Logf("charge jobs %d, schedule calls %d", total, fl.calls.Load())
}
