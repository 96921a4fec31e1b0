package workflow_test

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
	"github.com/allot/allot/store/sqlite"
)

// An order booked without the workflow (before the upgrade, or under
// --workflow=false) is "reserved" for good. Turning the workflow on must not
// end it.
func TestOrdersBookedWithoutTheWorkflowStay(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "allot.db")
	s, err := sqlite.Open(ctx, path)
	if err != nil {
		t.Fatal(err)
	}
	old := engine.New(s, engine.Options{})
	c := 5
	if _, err := old.CreateResource(ctx, engine.ResourceInput{ID: "room", Name: "room", Kind: allot.KindStock, Capacity: &c, Price: eur(9000)}); err != nil {
		t.Fatal(err)
	}
	o, err := old.CreateOrder(ctx, engine.OrderInput{Lines: []allot.Line{{ResourceID: "room", Quantity: 2}}})
	if err != nil || o.Status != allot.OrderReserved {
		t.Fatal(o.Status, err)
	}
	s.Close()
	h := newHarness(t, func(t testing.TB) allot.Store {
		s, err := sqlite.Open(ctx, path)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}, false, nil)
	// Past the harness's 3s SellerTimeout and the sweeps that run meanwhile.
	for i := 0; i < 50; i++ {
		if g, _ := h.eng.GetOrder(ctx, o.ID); g.Status != allot.OrderReserved {
			t.Logf("changed by the sweep job after %d00ms", i)
			break
		}
		time.Sleep(100 * time.Millisecond)
	}
	got, _ := h.eng.GetOrder(ctx, o.ID)
	if got.Status != allot.OrderReserved {
		t.Fatalf("a booking made before the workflow was turned on is now %s: %+v; booked now %d", got.Status, got.History[len(got.History)-1], h.booked(t, "room"))
	}
}
