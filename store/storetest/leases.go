package storetest

import (
	"fmt"
	"sync"
	"testing"
	"time"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
)

// session makes a slot resource with one session of the given capacity.
func (e *env) session(id string, capacity int) {
	e.t.Helper()
	e.resource(engine.ResourceInput{ID: id, Name: id, Kind: allot.KindSlot, Capacity: &capacity,
		Slots: []engine.SlotInput{{ID: "s1", StartsAt: ptr(time.Date(2030, 1, 1, 10, 0, 0, 0, time.UTC))}}})
}

// spaces is n OpenActive OrderItems of one space each on one session.
func spaces(res string, n int) []allot.Line {
	out := make([]allot.Line, n)
	for i := range out {
		out[i] = allot.Line{ResourceID: res, Quantity: 1, Slot: "s1"}
	}
	return out
}

type split struct{ granted, reserved, gone int }

func splitOf(r engine.LeaseResult) (s split, remaining []int) {
	for _, v := range r.Lines {
		s.granted += v.Granted
		s.reserved += v.Reserved
		s.gone += v.Gone
		remaining = append(remaining, v.Remaining)
	}
	return s, remaining
}

// testLeases runs the OpenActive leasing rules: all or nothing; the
// capacity shown excludes the lease's own; a refusal splits what is missing
// into what other leases keep and what is gone; renewing under the same id
// replaces; booking converts; an expired lease never refuses.
func (s suite) testLeases(t *testing.T) {
	e := s.env(t)
	e.session("yoga", 5)
	lease := func(id string, n int) engine.LeaseResult {
		t.Helper()
		r, err := e.eng.Lease(e.ctx, engine.LeaseInput{ID: id, Lines: spaces("yoga", n), TTL: 10 * time.Minute})
		e.must(err)
		return r
	}
	steps := []struct {
		id        string
		n         int
		granted   bool
		split     split
		remaining int // shown on every line
		held      int // the bucket's held after the step
	}{
		{"a", 3, true, split{3, 0, 0}, 5, 3},
		{"b", 10, false, split{2, 3, 5}, 2, 3}, // the suite's 2 / 3 / 5 split
		{"a", 3, true, split{3, 0, 0}, 5, 3},   // renewed: the same 3, not 6
		{"c", 2, true, split{2, 0, 0}, 2, 5},   //
		{"d", 1, false, split{0, 1, 0}, 0, 5},  // reserved by other leases
		{"a", 1, true, split{1, 0, 0}, 3, 3},   // replaced by a smaller lease
		{"d", 4, false, split{2, 2, 0}, 2, 3},  // 2 free, 3 leased by others
	}
	for i, st := range steps {
		r := lease(st.id, st.n)
		sp, rem := splitOf(r)
		if r.Granted != st.granted || sp != st.split {
			t.Fatalf("step %d (%s x%d): granted %v split %+v, want %v %+v", i, st.id, st.n, r.Granted, sp, st.granted, st.split)
		}
		for _, v := range rem {
			if v != st.remaining {
				t.Fatalf("step %d: remaining %v, want %d each", i, rem, st.remaining)
			}
		}
		e.wantBucket("yoga", "s1", st.held, 0, 5-st.held)
		CheckInvariants(t, e.ctx, e.store, "yoga")
	}
	// Booking converts the lease: capacity does not move.
	o, err := e.eng.CreateOrder(e.ctx, engine.OrderInput{HoldID: "c"})
	e.must(err)
	e.wantBucket("yoga", "s1", 1, 2, 2)
	if _, err := e.eng.Lease(e.ctx, engine.LeaseInput{ID: "c", Lines: spaces("yoga", 1), TTL: time.Minute}); allot.CodeOf(err) != allot.CodeHoldConverted {
		t.Fatalf("leasing a booked lease again: %v", err)
	}
	// A lease renewed after it expired, before any sweep, counts once.
	e.session("pool", 2)
	if r, err := e.eng.Lease(e.ctx, engine.LeaseInput{ID: "p", Lines: spaces("pool", 2), TTL: time.Minute}); err != nil || !r.Granted {
		t.Fatalf("lease p: %+v %v", r, err)
	}
	e.clock.Advance(2 * time.Minute)
	if r, err := e.eng.Lease(e.ctx, engine.LeaseInput{ID: "p", Lines: spaces("pool", 2), TTL: time.Minute}); err != nil || !r.Granted {
		t.Fatalf("renewing the expired lease p: %+v %v", r, err)
	}
	e.wantBucket("pool", "s1", 2, 0, 0)
	if r, _ := e.eng.Lease(e.ctx, engine.LeaseInput{ID: "q", Lines: spaces("pool", 1), TTL: time.Minute}); r.Granted {
		t.Fatal("a second lease was granted on a full session")
	}
	CheckInvariants(t, e.ctx, e.store, "pool")
	// An expired lease never refuses.
	e.clock.Advance(11 * time.Minute)
	r := lease("e", 3)
	if sp, _ := splitOf(r); !r.Granted || sp.granted != 3 {
		t.Fatalf("after the other leases expired: %+v", r)
	}
	e.wantBucket("yoga", "s1", 3, 2, 0)
	CheckInvariants(t, e.ctx, e.store, "yoga")
	_ = o

	// An order in place of a lease: the lease's claims are given back and
	// the order's decided in one transaction; a refusal keeps the lease.
	e.session("gym", 5)
	if r, err := e.eng.Lease(e.ctx, engine.LeaseInput{ID: "L", Lines: spaces("gym", 2), TTL: time.Minute}); err != nil || !r.Granted {
		t.Fatalf("lease L: %+v %v", r, err)
	}
	_, err = e.eng.CreateOrder(e.ctx, engine.OrderInput{Lines: spaces("gym", 6), ReplacesHold: "L"})
	wantCode(t, err, allot.CodeInsufficientCapacity)
	e.wantBucket("gym", "s1", 2, 0, 3)
	_, err = e.eng.CreateOrder(e.ctx, engine.OrderInput{Lines: spaces("gym", 4), ReplacesHold: "L"})
	e.must(err)
	e.wantBucket("gym", "s1", 0, 4, 1)
	if h, _ := e.eng.GetHold(e.ctx, "L"); h.Status != allot.HoldConverted {
		t.Fatalf("the replaced lease is %s", h.Status)
	}
	// The lease expiring and the sweeper running change nothing of the order.
	e.clock.Advance(2 * time.Minute)
	_, err = e.eng.Sweep(e.ctx, 100)
	e.must(err)
	e.wantBucket("gym", "s1", 0, 4, 1)
	CheckInvariants(t, e.ctx, e.store, "gym")

	// An order in place of an expired lease on other slots: those are
	// free again, and re-published.
	e.session("zen", 3)
	if r, err := e.eng.Lease(e.ctx, engine.LeaseInput{ID: "M", Lines: spaces("zen", 1), TTL: time.Minute}); err != nil || !r.Granted {
		t.Fatalf("lease M: %+v %v", r, err)
	}
	e.clock.Advance(2 * time.Minute)
	changeOf := func() int64 {
		items, err := e.eng.OpportunityFeed(e.ctx, 0, 1000)
		e.must(err)
		for _, it := range items {
			if it.ResourceID == "zen" && it.Key == "s1" {
				return it.ChangeNo
			}
		}
		t.Fatal("zen/s1 is not in the feed")
		return 0
	}
	before := changeOf()
	_, err = e.eng.CreateOrder(e.ctx, engine.OrderInput{ID: "ord-x", Lines: spaces("gym", 1), ReplacesHold: "M"})
	e.must(err)
	e.wantBucket("zen", "s1", 0, 0, 3)
	if after := changeOf(); after <= before {
		t.Fatalf("zen/s1 was freed but not re-published (change %d, then %d)", before, after)
	}
	// A channel's order id is its own: a second order under it is refused.
	_, err = e.eng.CreateOrder(e.ctx, engine.OrderInput{ID: "ord-x", Lines: spaces("zen", 1), ReplacesHold: "none"})
	wantCode(t, err, allot.CodeAlreadyExists)
	e.wantBucket("zen", "s1", 0, 0, 3)
	CheckInvariants(t, e.ctx, e.store, "gym", "zen")
}

// testLeaseRace races leases (new and renewed) for one session's last
// spaces: no more than capacity is ever held, and the invariants hold.
func (s suite) testLeaseRace(t *testing.T) {
	e := s.env(t)
	e.session("class", 7)
	var wg sync.WaitGroup
	for w := range 12 {
		wg.Go(func() {
			for i := range 15 {
				id := fmt.Sprintf("w%d-%d", w, i%3) // each worker renews three leases
				n := 1 + (w+i)%3
				r, err := e.eng.Lease(e.ctx, engine.LeaseInput{ID: id, Lines: spaces("class", n), TTL: time.Minute})
				if err != nil {
					t.Error(err)
					return
				}
				if sp, _ := splitOf(r); sp.granted+sp.reserved+sp.gone != n || (r.Granted && sp.granted != n) {
					t.Errorf("lease %s x%d: %+v", id, n, r)
				}
				if i%5 == 4 {
					if _, err := e.eng.ReleaseHold(e.ctx, id); err != nil && allot.CodeOf(err) == "" {
						t.Error(err)
					}
				}
			}
		})
	}
	// One id renewed concurrently with alternating sessions: no failure,
	// and it ends holding one of them.
	e.session("class2", 7)
	for i := range 20 {
		wg.Go(func() {
			res := "class"
			if i%2 == 1 {
				res = "class2"
			}
			if _, err := e.eng.Lease(e.ctx, engine.LeaseInput{ID: "shared", Lines: spaces(res, 1), TTL: time.Minute}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	CheckInvariants(t, e.ctx, e.store, "class", "class2")
	b := e.bucket("class", "s1")
	if b.Held > 7 || b.Held+b.Available != 7 {
		t.Fatalf("bucket after the race: %+v", b)
	}
}

// twoSessions is an env with sessions "left" and "right", 100 spaces each.
func (s suite) twoSessions(t *testing.T) *env {
	e := s.env(t)
	e.session("left", 100)
	e.session("right", 100)
	return e
}

// testFirstLeaseRace: two first leases under one new id, on different
// sessions, at once (OpenActive's C1 and C2 for one UUID). One replaces the
// other; neither may leave claims that its hold's lines do not list, which
// nothing could release.
func (s suite) testFirstLeaseRace(t *testing.T) {
	e := s.twoSessions(t)
	const ids = 30
	var wg sync.WaitGroup
	for i := range ids {
		for _, res := range []string{"left", "right"} {
			wg.Go(func() {
				if _, err := e.eng.Lease(e.ctx, engine.LeaseInput{ID: fmt.Sprintf("new-%d", i), Lines: spaces(res, 1), TTL: time.Minute}); err != nil {
					t.Error(err)
				}
			})
		}
	}
	wg.Wait()
	CheckInvariants(t, e.ctx, e.store, "left", "right")
	if held := e.bucket("left", "s1").Held + e.bucket("right", "s1").Held; held != ids {
		t.Errorf("%d leases of one space each hold %d spaces", ids, held)
	}
	for i := range ids {
		if _, err := e.eng.ReleaseHold(e.ctx, fmt.Sprintf("new-%d", i)); err != nil {
			t.Errorf("releasing lease new-%d: %v", i, err)
		}
	}
	e.wantBucket("left", "s1", 0, 0, 100)
	e.wantBucket("right", "s1", 0, 0, 100)
}

// testLeaseRacingBooking: a lease and a booking under one new id (C2 and B
// for one UUID), on different sessions, at once. Whichever comes first, no
// lease is left holding capacity beside the order.
func (s suite) testLeaseRacingBooking(t *testing.T) {
	e := s.twoSessions(t)
	const ids = 30
	var wg sync.WaitGroup
	for i := range ids {
		id := fmt.Sprintf("uuid-%d", i)
		wg.Go(func() {
			_, err := e.eng.Lease(e.ctx, engine.LeaseInput{ID: id, Lines: spaces("left", 1), TTL: time.Minute})
			if err != nil && allot.CodeOf(err) != allot.CodeHoldConverted {
				t.Error(err)
			}
		})
		wg.Go(func() {
			if _, err := e.eng.CreateOrder(e.ctx, engine.OrderInput{ID: "order-" + id, Prepaid: true, Lines: spaces("right", 1), ReplacesHold: id}); err != nil {
				t.Error(err)
			}
		})
	}
	wg.Wait()
	CheckInvariants(t, e.ctx, e.store, "left", "right")
	e.wantBucket("left", "s1", 0, 0, 100)
	e.wantBucket("right", "s1", 0, ids, 100-ids)
	_, err := e.eng.Lease(e.ctx, engine.LeaseInput{ID: "uuid-0", Lines: spaces("left", 1), TTL: time.Minute})
	wantCode(t, err, allot.CodeHoldConverted)
	// A lease released before the booking: its id is booked all the same.
	_, err = e.eng.Lease(e.ctx, engine.LeaseInput{ID: "gone", Lines: spaces("left", 1), TTL: time.Minute})
	e.must(err)
	_, err = e.eng.ReleaseHold(e.ctx, "gone")
	e.must(err)
	_, err = e.eng.CreateOrder(e.ctx, engine.OrderInput{ID: "order-gone", Prepaid: true, Lines: spaces("right", 1), ReplacesHold: "gone"})
	e.must(err)
	_, err = e.eng.Lease(e.ctx, engine.LeaseInput{ID: "gone", Lines: spaces("left", 1), TTL: time.Minute})
	wantCode(t, err, allot.CodeHoldConverted)
}

// testLeaseNightRefused: a lease is for sessions and stock; a stay is
// refused as such, not as if its rooms were gone.
func (s suite) testLeaseNightRefused(t *testing.T) {
	e := s.env(t)
	e.room("suite", 4)
	_, err := e.eng.Lease(e.ctx, engine.LeaseInput{ID: "stay", Lines: []allot.Line{stay("suite", "2030-01-01", "2030-01-03", 1)}, TTL: time.Minute})
	wantCode(t, err, allot.CodeInvalid)
}

// testSweepPastStuckHold: an expired hold the sweeper cannot release (here
// one whose claims reach past its lines, as the race above once left) does
// not keep it from the holds behind it.
func (s suite) testSweepPastStuckHold(t *testing.T) {
	e := s.env(t)
	e.session("left", 10)
	e.session("right", 10)
	now := e.clock.Now()
	stuck := allot.Hold{ID: "stuck", Status: allot.HoldActive, ExpiresAt: now.Add(time.Second), CreatedAt: now, Lines: spaces("left", 1)}
	e.must(e.store.Write(e.ctx, func(tx allot.Tx) error {
		if err := tx.InsertHold(e.ctx, stuck); err != nil {
			return err
		}
		return tx.AddClaims(e.ctx, []allot.Claim{
			{BucketKey: allot.BucketKey{ResourceID: "left", Key: "s1"}, OwnerID: "stuck", Kind: allot.ClaimHeld, Quantity: 1},
			{BucketKey: allot.BucketKey{ResourceID: "right", Key: "s1"}, OwnerID: "stuck", Kind: allot.ClaimHeld, Quantity: 1},
		})
	}))
	later, err := e.eng.Lease(e.ctx, engine.LeaseInput{ID: "later", Lines: spaces("left", 1), TTL: time.Minute})
	e.must(err)
	e.clock.Advance(2 * time.Minute)
	n, err := e.eng.Sweep(e.ctx, 100)
	if err != nil {
		t.Errorf("sweep: %v; the stuck hold is logged, the sweep itself did its work", err)
	}
	h, gerr := e.store.GetHold(e.ctx, later.Hold.ID)
	e.must(gerr)
	if n != 1 || h.Status != allot.HoldExpired {
		t.Fatalf("sweep released %d; the hold behind the stuck one is %s, want expired", n, h.Status)
	}
}

// testOpportunityFeed checks that every change to a session's remaining
// capacity re-publishes it at a new change number, once per page.
func (s suite) testOpportunityFeed(t *testing.T) {
	e := s.env(t)
	e.session("swim", 4)
	e.stock("tix", 3) // not an opportunity
	feed := func() map[allot.BucketKey]int64 {
		t.Helper()
		items, err := e.eng.OpportunityFeed(e.ctx, 0, 100)
		e.must(err)
		out := map[allot.BucketKey]int64{}
		last := int64(0)
		for _, it := range items {
			k := allot.BucketKey{ResourceID: it.ResourceID, Key: it.Key}
			if _, dup := out[k]; dup || it.ChangeNo <= last {
				t.Fatalf("feed %+v: duplicate or out of order", items)
			}
			out[k], last = it.ChangeNo, it.ChangeNo
		}
		return out
	}
	f0 := feed()
	if len(f0) != 2 || f0[allot.BucketKey{ResourceID: "swim"}] == 0 || f0[allot.BucketKey{ResourceID: "swim", Key: "s1"}] == 0 {
		t.Fatalf("feed after creation: %v", f0)
	}
	k := allot.BucketKey{ResourceID: "swim", Key: "s1"}
	prev := f0[k]
	for i, change := range []func(){
		func() {
			_, err := e.eng.Lease(e.ctx, engine.LeaseInput{ID: "l", Lines: spaces("swim", 2), TTL: time.Minute})
			e.must(err)
		},
		func() { _, err := e.eng.CreateOrder(e.ctx, engine.OrderInput{HoldID: "l"}); e.must(err) },
		func() {
			_, err := e.eng.SetCapacity(e.ctx, "swim", engine.CapacityInput{Slot: "s1", Capacity: ptr(6)})
			e.must(err)
		},
	} {
		change()
		f := feed()
		if f[k] <= prev {
			t.Fatalf("change %d did not re-publish the session: %d after %d", i, f[k], prev)
		}
		prev = f[k]
	}
}

// testOpportunityFeedRace pages the opportunity feed while writers lease
// and release on their own sessions, each commit delayed at random: the
// reader must end having seen every session at its last change (no delayed
// commit skipped).
func (s suite) testOpportunityFeedRace(t *testing.T) {
	e := s.env(t)
	slow := engine.New(delayed{e.store, 15 * time.Millisecond}, engine.Options{Batching: s.batching})
	t.Cleanup(slow.Close)
	const writers, perWriter = 6, 10
	var wg sync.WaitGroup
	for w := range writers {
		res := fmt.Sprintf("class-%d", w)
		e.session(res, 1000)
		wg.Go(func() {
			for i := range perWriter {
				id := fmt.Sprintf("%s-lease-%d", res, i%2)
				if _, err := slow.Lease(e.ctx, engine.LeaseInput{ID: id, Lines: spaces(res, 1+i%3), TTL: time.Minute}); err != nil {
					t.Error(err)
					return
				}
				if i%4 == 3 {
					if _, err := slow.ReleaseHold(e.ctx, id); err != nil {
						t.Error(err)
						return
					}
				}
			}
		})
	}
	done := make(chan struct{})
	go func() { wg.Wait(); close(done) }()
	seen := map[allot.BucketKey]int64{}
	var after int64
	read := func() int {
		items, err := e.eng.OpportunityFeed(e.ctx, after, 5)
		if err != nil {
			t.Fatal(err)
		}
		for _, it := range items {
			if it.ChangeNo <= after {
				t.Fatalf("change number %d after %d", it.ChangeNo, after)
			}
			after = it.ChangeNo
			seen[allot.BucketKey{ResourceID: it.ResourceID, Key: it.Key}] = it.ChangeNo
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
	for read() > 0 {
	}
	all, err := e.eng.OpportunityFeed(e.ctx, 0, 1000)
	e.must(err)
	if len(all) != 2*writers {
		t.Fatalf("%d opportunities in the feed, want %d", len(all), 2*writers)
	}
	for _, it := range all {
		if k := (allot.BucketKey{ResourceID: it.ResourceID, Key: it.Key}); seen[k] != it.ChangeNo {
			t.Fatalf("the reader saw %v last at %d; its last change is %d", k, seen[k], it.ChangeNo)
		}
	}
}
