package storetest

import (
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"sync"
	"testing"
	"time"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
)

// delayed holds every write transaction open for a random while after its
// writes reached the database and before it commits, so that transactions
// commit out of the order of their sequence numbers.
type delayed struct {
	allot.Store
	max time.Duration
}

func (d delayed) Write(ctx context.Context, fn func(allot.Tx) error) error {
	return d.Store.Write(ctx, func(tx allot.Tx) error {
		if err := fn(tx); err != nil {
			return err
		}
		// A read sends writes a store may have queued (PostgreSQL
		// pipelines them with the commit).
		if _, err := tx.EventsAfter(ctx, 1<<62, 1); err != nil {
			return err
		}
		time.Sleep(rand.N(d.max))
		return nil
	})
}

// testFeedRace runs writers whose transactions commit out of sequence order
// while a reader pages the Orders feed by change number, and checks that the
// reader saw every order in its final state, with change numbers only rising.
func (s suite) testFeedRace(t *testing.T) {
	e := s.env(t)
	slow := engine.New(delayed{e.store, 15 * time.Millisecond}, engine.Options{Batching: s.batching})
	t.Cleanup(slow.Close)
	const writers, perWriter = 8, 12
	var wg sync.WaitGroup
	for w := range writers {
		// Each writer its own resource: no shared bucket lock orders
		// their commits.
		res := fmt.Sprintf("gift-%d", w)
		e.stock(res, 1_000_000)
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range perWriter {
				o, err := slow.CreateOrder(e.ctx, engine.OrderInput{Lines: []allot.Line{units(res, 1)}})
				if err != nil {
					t.Error(err)
					return
				}
				if i%3 == 0 {
					if _, err := slow.CancelOrder(e.ctx, o.ID, "test"); err != nil {
						t.Error(err)
						return
					}
				}
			}
		}()
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()

	seen := map[string]allot.OrderStatus{}
	var after int64
	read := func() int {
		items, err := e.eng.OrdersFeed(e.ctx, after, 7)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			if it.ChangeNo <= after {
				t.Fatalf("change number %d after %d: the feed went backwards", it.ChangeNo, after)
			}
			after = it.ChangeNo
			var o allot.Order
			if err := json.Unmarshal(it.Data, &o); err != nil || o.ID != it.ID {
				t.Fatalf("feed item %s: %v %s", it.ID, err, it.Data)
			}
			seen[o.ID] = o.Status
		}
		return len(items)
	}
	for running := true; running; {
		select {
		case <-done:
			running = false
		default:
			read()
			time.Sleep(time.Millisecond)
		}
	}
	for read() > 0 { // drain: everything has committed now
	}
	orders, err := e.store.ListOrders(e.ctx, allot.OrderFilter{Limit: 1000})
	if err != nil {
		t.Fatal(err)
	}
	if len(orders) != writers*perWriter {
		t.Fatalf("%d orders stored, want %d", len(orders), writers*perWriter)
	}
	var missing []string
	for _, o := range orders {
		if st, ok := seen[o.ID]; !ok {
			missing = append(missing, o.ID)
		} else if st != o.Status {
			missing = append(missing, fmt.Sprintf("%s (saw %s, is %s)", o.ID, st, o.Status))
		}
	}
	if len(missing) > 0 {
		t.Fatalf("the reader missed %d of %d orders or their last change: %v", len(missing), len(orders), missing)
	}
}
