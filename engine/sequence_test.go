package engine

import (
	"context"
	"errors"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/allot/allot"
	"github.com/allot/allot/store/sqlite"
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

// Numbering in the batch must never cost the bookings: when it fails, what
// it wrote is undone, the hold still commits, and the background sequencer
// numbers the event later.
func TestFailedInlineNumberingKeepsTheBooking(t *testing.T) {
	ctx := context.Background()
	e := newTestEngine(t, Batching{Workers: 1})
	db := e.store.(*sqlite.Store).DB()
	before, err := e.store.EventsAfterChange(ctx, 0, 1000)
	if err != nil || len(before) == 0 {
		t.Fatalf("%d events numbered before, err %v", len(before), err)
	}
	last := before[len(before)-1].ChangeNo
	// The counter's update is the sequencer's last statement: the events'
	// numbers are written before it fails.
	if _, err := db.ExecContext(ctx, `CREATE TRIGGER refuse_numbering BEFORE UPDATE ON counters WHEN NEW.name = 'change_no'
		BEGIN SELECT RAISE(ABORT, 'test: numbering refused'); END`); err != nil {
		t.Fatal(err)
	}
	h, err := e.CreateHold(ctx, HoldInput{Lines: []allot.Line{{ResourceID: "s", Quantity: 1}}})
	if err != nil {
		t.Fatalf("the hold failed with its batch's numbering: %v", err)
	}
	if _, err := e.store.GetHold(ctx, h.ID); err != nil {
		t.Fatalf("the hold did not commit: %v", err)
	}
	all, err := e.store.EventsAfter(ctx, 0, 1000)
	if err != nil {
		t.Fatal(err)
	}
	if ev := all[len(all)-1]; ev.HoldID != h.ID || ev.ChangeNo != 0 {
		t.Fatalf("the hold's event %+v: want it written and its number undone", ev)
	}
	if _, err := db.ExecContext(ctx, `DROP TRIGGER refuse_numbering`); err != nil {
		t.Fatal(err)
	}
	if n, err := e.Sequence(ctx, 100); err != nil || n != 1 {
		t.Fatalf("the background sequencer numbered %d events, err %v; want 1", n, err)
	}
	after, err := e.store.EventsAfterChange(ctx, last, 10)
	if err != nil {
		t.Fatal(err)
	}
	if len(after) != 1 || after[0].HoldID != h.ID || after[0].ChangeNo != last+1 {
		t.Fatalf("after the sequencer: %+v, want the hold's event numbered %d", after, last+1)
	}
}

// Numbering reads the resources its events name inside a transaction that
// may still roll back; what it reads there must not outlive a rollback in
// the engine's resource cache.
func TestNumberingCachesNoUncommittedResource(t *testing.T) {
	ctx := context.Background()
	e := newTestEngine(t, Batching{})
	r := allot.Resource{ID: "ghost", Name: "g", Kind: allot.KindSlot, Capacity: 5, CreatedAt: e.now(),
		Slots: []allot.Slot{{ID: "a", StartsAt: e.now().Add(time.Hour), Capacity: 5}}}
	rollback := errors.New("roll back")
	err := e.store.Write(ctx, func(tx allot.Tx) error {
		if err := tx.InsertResource(ctx, r); err != nil {
			return err
		}
		keys, err := e.opportunitiesOf(ctx, tx, e.event(allot.EventResourceCreated, r.ID, "", "", r))
		if err != nil || len(keys) != 2 {
			t.Errorf("opportunities of the new slot resource: %v, %v", keys, err)
		}
		return rollback
	})
	if !errors.Is(err, rollback) {
		t.Fatal(err)
	}
	if _, cached := e.resources.Load("ghost"); cached {
		t.Fatal("a resource whose transaction rolled back stayed in the cache")
	}
}

// An event whose payload cannot be read (a bug wrote it) is numbered all
// the same, so that numbering, and every feed, relay and webhook behind it,
// goes on past it; it adds nothing to the feeds.
func TestUnreadableEventDoesNotStopNumbering(t *testing.T) {
	ctx := context.Background()
	for _, workers := range []int{0, 1} {
		e := newTestEngine(t, Batching{Workers: workers})
		db := e.store.(*sqlite.Store).DB()
		for _, typ := range []string{allot.EventOrderCreated, allot.EventOrderStatus, allot.EventHoldCreated} {
			if _, err := db.ExecContext(ctx, `INSERT INTO events (id, type, resource_id, order_id, at, payload) VALUES (?, ?, 's', 'ord_x', 0, '{"slot":"')`,
				NewID("evt"), typ); err != nil {
				t.Fatal(err)
			}
		}
		h, err := e.CreateHold(ctx, HoldInput{Lines: []allot.Line{{ResourceID: "s", Quantity: 1}}})
		if err != nil {
			t.Fatal(err)
		}
		if _, err := e.Sequence(ctx, 100); err != nil {
			t.Fatalf("workers=%d: the sequencer failed on the unreadable events: %v", workers, err)
		}
		all, err := e.store.EventsAfter(ctx, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for _, ev := range all {
			if ev.ChangeNo == 0 {
				t.Fatalf("workers=%d: event %s (%s) is not numbered", workers, ev.ID, ev.Type)
			}
		}
		if last := all[len(all)-1]; last.HoldID != h.ID {
			t.Fatalf("workers=%d: the last event is %+v, want the hold's", workers, last)
		}
		items, err := e.OrdersFeed(ctx, 0, 100)
		if err != nil || len(items) != 0 {
			t.Fatalf("workers=%d: the orders feed shows %+v (%v), want nothing", workers, items, err)
		}
	}
}

// A batch numbers its own events from memory only when no older event
// waits for a number; behind a backlog (events written before an upgrade,
// or while numbering was failing) it numbers the oldest first, so that
// change numbers keep the order in which events were written.
func TestBatchNumbersBehindABacklog(t *testing.T) {
	ctx := context.Background()
	for _, workers := range []int{0, 1} {
		e := newTestEngine(t, Batching{Workers: workers})
		db := e.store.(*sqlite.Store).DB()
		for range 3 {
			if _, err := db.ExecContext(ctx, `INSERT INTO events (id, type, resource_id, at, payload) VALUES (?, ?, 's', 0, '{}')`,
				NewID("evt"), allot.EventCapacityChanged); err != nil {
				t.Fatal(err)
			}
		}
		var holds []string
		for range 3 {
			h, err := e.CreateHold(ctx, HoldInput{Lines: []allot.Line{{ResourceID: "s", Quantity: 1}}})
			if err != nil {
				t.Fatal(err)
			}
			holds = append(holds, h.ID)
		}
		all, err := e.store.EventsAfter(ctx, 0, 1000)
		if err != nil {
			t.Fatal(err)
		}
		for i, ev := range all {
			if ev.ChangeNo == 0 {
				t.Fatalf("workers=%d: event %d (%s) has no number, with no sequencer needed", workers, i, ev.Type)
			}
			if i > 0 && ev.ChangeNo <= all[i-1].ChangeNo {
				t.Fatalf("workers=%d: change numbers out of write order at seq %d: %d after %d", workers, ev.Seq, ev.ChangeNo, all[i-1].ChangeNo)
			}
		}
		var got []string
		for _, ev := range all[len(all)-3:] {
			got = append(got, ev.HoldID)
		}
		if !slices.Equal(got, holds) {
			t.Fatalf("workers=%d: the last events are of holds %v, want %v", workers, got, holds)
		}
		var raw int
		if err := db.QueryRowContext(ctx, `SELECT count(*) FROM events WHERE change_no IS NULL`).Scan(&raw); err != nil || raw != 0 {
			t.Fatalf("workers=%d: %d events unnumbered (%v)", workers, raw, err)
		}
	}
}

// A batch that numbers its own events in memory writes the feeds with
// them: the order's latest state at its event's number, and each slot it
// changed at a number of its own after its batch's events; with no
// sequencer run at all.
func TestOwnNumberingWritesTheFeeds(t *testing.T) {
	ctx := context.Background()
	e := newTestEngine(t, Batching{Workers: 1})
	c, starts := 5, time.Now().Add(24*time.Hour)
	if _, err := e.CreateResource(ctx, ResourceInput{ID: "class", Name: "class", Kind: allot.KindSlot,
		Slots: []SlotInput{{ID: "a", StartsAt: &starts, Capacity: &c}}}); err != nil {
		t.Fatal(err)
	}
	all, err := e.store.EventsAfterChange(ctx, 0, 10000)
	if err != nil || len(all) == 0 {
		t.Fatalf("%d events numbered, err %v", len(all), err)
	}
	before := all[len(all)-1].ChangeNo
	line := []allot.Line{{ResourceID: "class", Slot: "a", Quantity: 1}}
	if _, err := e.CreateHold(ctx, HoldInput{Lines: line}); err != nil {
		t.Fatal(err)
	}
	o, err := e.CreateOrder(ctx, OrderInput{Lines: line})
	if err != nil {
		t.Fatal(err)
	}
	evs, err := e.store.EventsAfterChange(ctx, before, 100)
	if err != nil {
		t.Fatal(err)
	}
	var orderNo, lastNo int64
	for _, ev := range evs {
		if ev.Type == allot.EventOrderCreated && ev.OrderID == o.ID {
			orderNo = ev.ChangeNo
		}
		lastNo = max(lastNo, ev.ChangeNo)
	}
	if orderNo == 0 {
		t.Fatalf("the order's event is not numbered: %+v", evs)
	}
	items, err := e.store.FeedItems(ctx, 0, 100)
	if err != nil || len(items) != 1 || items[0].ID != o.ID || items[0].ChangeNo != orderNo {
		t.Fatalf("orders feed %+v (%v), want order %s at %d", items, err, o.ID, orderNo)
	}
	opps, err := e.store.OpportunityChanges(ctx, before, 100)
	if err != nil {
		t.Fatal(err)
	}
	var slot *allot.OpportunityChange
	for i := range opps {
		if opps[i].ResourceID == "class" && opps[i].Key == "a" {
			slot = &opps[i]
		}
	}
	if slot == nil || slot.ChangeNo <= lastNo {
		t.Fatalf("opportunity changes %+v: want slot a numbered after the last event (%d)", opps, lastNo)
	}
	var raw int
	if err := e.store.(*sqlite.Store).DB().QueryRowContext(ctx, `SELECT count(*) FROM events WHERE change_no IS NULL`).Scan(&raw); err != nil || raw != 0 {
		t.Fatalf("%d events unnumbered (%v)", raw, err)
	}
}
