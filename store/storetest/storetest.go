// Package storetest is the conformance suite every Allot store runs against
// itself: a new store is a package plus one test file calling Run.
//
// It drives the real engine on the store, so it checks the store's contract
// (locking, constraints, idempotency claims) through the rules that depend
// on it, and races real goroutines against the real database, checking the
// capacity invariants afterwards.
package storetest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/allot/allot"
	"github.com/allot/allot/engine"
)

// Opener returns a new, empty, isolated store; the suite closes it.
type Opener func(t testing.TB) allot.Store

// Clock is a settable clock for expiring holds in tests.
type Clock struct {
	mu sync.Mutex
	t  time.Time
}

// NewClock starts a clock at now.
func NewClock() *Clock { return &Clock{t: time.Now().UTC()} }

// Now reads the clock.
func (c *Clock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }

// Advance moves the clock on.
func (c *Clock) Advance(d time.Duration) { c.mu.Lock(); c.t = c.t.Add(d); c.mu.Unlock() }

type env struct {
	t     *testing.T
	ctx   context.Context
	store allot.Store
	eng   *engine.Engine
	clock *Clock
}

// suite is the conformance suite for one store in one engine mode.
type suite struct {
	open     Opener
	batching engine.Batching
}

func (s suite) env(t *testing.T) *env {
	st := s.open(t)
	c := NewClock()
	eng := engine.New(st, engine.Options{Now: c.Now, Batching: s.batching})
	t.Cleanup(func() { eng.Close(); st.Close() })
	return &env{t: t, ctx: context.Background(), store: st, eng: eng, clock: c}
}

// Run runs the whole suite twice: with every request in its own
// transaction, and with concurrent requests batched.
func Run(t *testing.T, open Opener) {
	for _, m := range []struct {
		name string
		b    engine.Batching
	}{
		{"Single", engine.Batching{}},
		{"Batched", engine.Batching{Workers: 2, MaxSize: 16, Linger: time.Millisecond}},
	} {
		t.Run(m.name, func(t *testing.T) { suite{open, m.b}.run(t) })
	}
}

func (s suite) run(t *testing.T) {
	t.Run("Resources", s.testResources)
	t.Run("HoldBookCancel", s.testHoldBookCancel)
	t.Run("Refusals", s.testRefusals)
	t.Run("PastStays", s.testPastStays)
	t.Run("FinePriceStored", s.testFinePriceStored)
	t.Run("Capacity", s.testCapacity)
	t.Run("Expiry", s.testExpiry)
	t.Run("OrderFromHold", s.testOrderFromHold)
	t.Run("ListOrders", s.testListOrders)
	t.Run("Events", s.testEvents)
	t.Run("IdempotencyClaims", s.testIdempotencyClaims)
	t.Run("IdempotentWrite", s.testIdempotentWrite)
	t.Run("RaceLastUnits", s.testRaceLastUnits)
	t.Run("RaceOverlappingStays", s.testRaceOverlappingStays)
	t.Run("RaceMixed", s.testRaceMixed)
	t.Run("FeedRace", s.testFeedRace)
	t.Run("Thresholds", s.testThresholds)
	t.Run("SequencerGuards", s.testSequencerGuards)
	t.Run("Leases", s.testLeases)
	t.Run("LeaseRace", s.testLeaseRace)
	t.Run("FirstLeaseRace", s.testFirstLeaseRace)
	t.Run("LeaseRacingBooking", s.testLeaseRacingBooking)
	t.Run("LeaseNightRefused", s.testLeaseNightRefused)
	t.Run("SweepPastStuckHold", s.testSweepPastStuckHold)
	t.Run("OpportunityFeed", s.testOpportunityFeed)
	t.Run("OpportunityFeedRace", s.testOpportunityFeedRace)
	t.Run("DeliveryLease", s.testDeliveryLease)
}

func ptr[T any](v T) *T { return &v }

func (e *env) must(err error) {
	e.t.Helper()
	if err != nil {
		e.t.Fatal(err)
	}
}

func (e *env) resource(in engine.ResourceInput) allot.Resource {
	e.t.Helper()
	r, err := e.eng.CreateResource(e.ctx, in)
	e.must(err)
	return r
}

func (e *env) stock(id string, capacity int) allot.Resource {
	return e.resource(engine.ResourceInput{ID: id, Name: id, Kind: allot.KindStock, Capacity: &capacity})
}

func (e *env) room(id string, capacity int) allot.Resource {
	return e.resource(engine.ResourceInput{ID: id, Name: id, Kind: allot.KindNightly, Capacity: &capacity,
		Price: &allot.Money{Minor: 12000, Scale: 2, Currency: "EUR"}})
}

func stay(res, in, out string, q int) allot.Line {
	return allot.Line{ResourceID: res, Quantity: q, CheckIn: ptr(allot.MustDate(in)), CheckOut: ptr(allot.MustDate(out))}
}

func units(res string, q int) allot.Line { return allot.Line{ResourceID: res, Quantity: q} }

// bucket reads one bucket as the availability endpoint shows it.
func (e *env) bucket(res, key string) engine.BucketView {
	e.t.Helper()
	var a engine.Availability
	var err error
	if d, perr := allot.ParseDate(key); perr == nil {
		a, err = e.eng.Availability(e.ctx, res, &d, ptr(d.AddDays(1)))
	} else {
		a, err = e.eng.Availability(e.ctx, res, nil, nil)
	}
	e.must(err)
	for _, b := range a.Buckets {
		if b.Key == key {
			return b
		}
	}
	e.t.Fatalf("resource %s has no bucket %s in %+v", res, key, a)
	return engine.BucketView{}
}

func (e *env) wantBucket(res, key string, held, booked, available int) {
	e.t.Helper()
	b := e.bucket(res, key)
	if b.Held != held || b.Booked != booked || b.Available != available {
		e.t.Fatalf("%s/%s: held %d booked %d available %d, want %d %d %d", res, key, b.Held, b.Booked, b.Available, held, booked, available)
	}
}

func wantCode(t *testing.T, err error, code allot.Code) {
	t.Helper()
	if allot.CodeOf(err) != code {
		t.Fatalf("error %v, want code %s", err, code)
	}
}

// CheckInvariants fails t if engine.Check finds any broken invariant on the
// resources.
func CheckInvariants(t *testing.T, ctx context.Context, s allot.Reader, resourceIDs ...string) {
	t.Helper()
	a, err := engine.Check(ctx, s, resourceIDs...)
	if err != nil {
		t.Fatal(err)
	}
	for _, v := range a.Violations {
		t.Error(v)
	}
}

func (s suite) testResources(t *testing.T) {
	e := s.env(t)
	r := e.room("room-101", 1)
	if r.Kind != allot.KindNightly || r.Capacity != 1 || r.Price.Amount() != "120.00" {
		t.Fatalf("created %+v", r)
	}
	got, err := e.eng.GetResource(e.ctx, "room-101")
	e.must(err)
	if got.Name != r.Name || got.Price == nil || *got.Price != *r.Price || !got.CreatedAt.Equal(r.CreatedAt) {
		t.Fatalf("read back %+v, wrote %+v", got, r)
	}
	_, err = e.eng.CreateResource(e.ctx, engine.ResourceInput{ID: "room-101", Name: "again", Kind: allot.KindStock, Capacity: ptr(1)})
	wantCode(t, err, allot.CodeAlreadyExists)

	start := time.Date(2037, 1, 1, 9, 0, 0, 0, time.UTC)
	yoga := e.resource(engine.ResourceInput{Name: "yoga", Kind: allot.KindSlot, Capacity: ptr(10),
		Slots: []engine.SlotInput{{ID: "mon", StartsAt: &start}, {ID: "tue", StartsAt: ptr(start.Add(24 * time.Hour)), Capacity: ptr(3)}}})
	got, err = e.eng.GetResource(e.ctx, yoga.ID)
	e.must(err)
	if len(got.Slots) != 2 || got.Slots[0].Capacity != 10 || got.Slots[1].Capacity != 3 || !got.Slots[0].StartsAt.Equal(start) {
		t.Fatalf("slots %+v", got.Slots)
	}
	_, err = e.eng.AddSlot(e.ctx, yoga.ID, engine.SlotInput{ID: "wed", StartsAt: ptr(start.Add(48 * time.Hour))})
	e.must(err)
	_, err = e.eng.AddSlot(e.ctx, yoga.ID, engine.SlotInput{ID: "wed", StartsAt: &start})
	wantCode(t, err, allot.CodeAlreadyExists)
	a, err := e.eng.Availability(e.ctx, yoga.ID, ptr(allot.MustDate("2037-01-02")), ptr(allot.MustDate("2037-01-04")))
	e.must(err)
	if len(a.Buckets) != 2 || a.Buckets[0].Key != "tue" || a.Buckets[1].Key != "wed" {
		t.Fatalf("slots starting 2037-01-02..04: %+v", a.Buckets)
	}
	_, err = e.eng.GetResource(e.ctx, "nope")
	wantCode(t, err, allot.CodeNotFound)
}

func (s suite) testHoldBookCancel(t *testing.T) {
	e := s.env(t)
	e.room("suite", 2)
	h, err := e.eng.CreateHold(e.ctx, engine.HoldInput{Lines: []allot.Line{stay("suite", "2037-03-01", "2037-03-04", 1)}, CustomerID: "c1"})
	e.must(err)
	if h.Status != allot.HoldActive || !h.ExpiresAt.Equal(e.clock.Now().Truncate(time.Microsecond).Add(engine.DefaultHoldTTL)) {
		t.Fatalf("hold %+v", h)
	}
	for _, n := range []string{"2037-03-01", "2037-03-02", "2037-03-03"} {
		e.wantBucket("suite", n, 1, 0, 1)
	}
	e.wantBucket("suite", "2037-03-04", 0, 0, 2) // check-out night is not claimed
	o, err := e.eng.CreateOrder(e.ctx, engine.OrderInput{HoldID: h.ID})
	e.must(err)
	if o.Status != allot.OrderReserved || o.CustomerID != "c1" || o.Total == nil || o.Total.Amount() != "360.00" || o.Total.Currency != "EUR" {
		t.Fatalf("order %+v total %+v", o, o.Total)
	}
	e.wantBucket("suite", "2037-03-02", 0, 1, 1)
	h, err = e.eng.GetHold(e.ctx, h.ID)
	e.must(err)
	if h.Status != allot.HoldConverted || h.OrderID != o.ID {
		t.Fatalf("hold after booking: %+v", h)
	}
	CheckInvariants(t, e.ctx, e.store, "suite")

	c, err := e.eng.CancelOrder(e.ctx, o.ID, "guest cancelled")
	e.must(err)
	if c.Status != allot.OrderCancelled || len(c.History) != 2 || c.History[1].Cause != "guest cancelled" || c.History[1].From != allot.OrderReserved {
		t.Fatalf("cancelled order %+v", c)
	}
	e.wantBucket("suite", "2037-03-02", 0, 0, 2)
	again, err := e.eng.CancelOrder(e.ctx, o.ID, "twice")
	e.must(err)
	if len(again.History) != 2 {
		t.Fatalf("second cancel changed history: %+v", again.History)
	}
	got, err := e.eng.GetOrder(e.ctx, o.ID)
	e.must(err)
	if got.Status != allot.OrderCancelled || len(got.History) != 2 || got.Total.Amount() != "360.00" {
		t.Fatalf("stored order %+v", got)
	}
	CheckInvariants(t, e.ctx, e.store, "suite")

	// Releasing a hold gives its capacity back; releasing again is a no-op.
	h2, err := e.eng.CreateHold(e.ctx, engine.HoldInput{Lines: []allot.Line{stay("suite", "2037-03-01", "2037-03-02", 2)}})
	e.must(err)
	e.wantBucket("suite", "2037-03-01", 2, 0, 0)
	for range 2 {
		r, err := e.eng.ReleaseHold(e.ctx, h2.ID)
		e.must(err)
		if r.Status != allot.HoldReleased {
			t.Fatalf("released hold %+v", r)
		}
	}
	e.wantBucket("suite", "2037-03-01", 0, 0, 2)
	_, err = e.eng.ReleaseHold(e.ctx, "hld_missing")
	wantCode(t, err, allot.CodeNotFound)
	CheckInvariants(t, e.ctx, e.store, "suite")
}

// testPastStays: a stay that has begun cannot be held or booked, but what
// was held or booked before it began is still released, expired and
// cancelled.
func (s suite) testPastStays(t *testing.T) {
	e := s.env(t)
	e.room("deluxe", 5)
	today := allot.DateOf(e.clock.Now().UTC())
	line := stay("deluxe", today.String(), today.AddDays(2).String(), 1)
	h, err := e.eng.CreateHold(e.ctx, engine.HoldInput{Lines: []allot.Line{line}, TTL: time.Hour})
	e.must(err)
	o, err := e.eng.CreateOrder(e.ctx, engine.OrderInput{Lines: []allot.Line{line}})
	e.must(err)
	e.clock.Advance(30 * 24 * time.Hour)
	_, err = e.eng.CreateHold(e.ctx, engine.HoldInput{Lines: []allot.Line{line}})
	wantCode(t, err, allot.CodeInvalid)
	_, err = e.eng.CreateOrder(e.ctx, engine.OrderInput{Lines: []allot.Line{line}})
	wantCode(t, err, allot.CodeInvalid)
	if n, err := e.eng.Sweep(e.ctx, 10); err != nil || n != 1 {
		t.Fatalf("sweeping the hold of a past stay: %d, %v", n, err)
	}
	if _, err := e.eng.CancelOrder(e.ctx, o.ID, "test"); err != nil {
		t.Fatalf("cancelling the order of a past stay: %v", err)
	}
	if got, err := e.store.GetHold(e.ctx, h.ID); err != nil || got.Status != allot.HoldExpired {
		t.Fatalf("hold %+v, %v", got, err)
	}
	e.wantBucket("deluxe", today.String(), 0, 0, 5)
}

// testFinePriceStored: a price finer than its currency's minor unit, as
// an older version accepted and stored, is refused for a new resource but
// still reads back, and its orders are booked, read and cancelled.
func (s suite) testFinePriceStored(t *testing.T) {
	e := s.env(t)
	fine := allot.Money{Minor: 12505, Scale: 3, Currency: "EUR"}
	capacity := 5
	_, err := e.eng.CreateResource(e.ctx, engine.ResourceInput{ID: "new", Name: "new", Kind: allot.KindStock, Capacity: &capacity, Price: &fine})
	wantCode(t, err, allot.CodeInvalid)
	e.must(e.store.Write(e.ctx, func(tx allot.Tx) error {
		return tx.InsertResource(e.ctx, allot.Resource{ID: "old", Name: "old", Kind: allot.KindStock, Capacity: capacity, Price: &fine, CreatedAt: e.clock.Now()})
	}))
	o, err := e.eng.CreateOrder(e.ctx, engine.OrderInput{Lines: []allot.Line{units("old", 2)}})
	e.must(err)
	got, err := e.store.GetOrder(e.ctx, o.ID)
	e.must(err)
	if got.Total == nil || got.Total.Amount() != "25.010" {
		t.Fatalf("order total %v, want 25.010 EUR", got.Total)
	}
	if _, err := e.eng.CancelOrder(e.ctx, o.ID, "test"); err != nil {
		t.Fatalf("cancelling: %v", err)
	}
	e.wantBucket("old", allot.StockKey, 0, 0, 5)
}

func (s suite) testRefusals(t *testing.T) {
	e := s.env(t)
	e.stock("widget", 5)
	e.room("r1", 1)
	_, err := e.eng.CreateHold(e.ctx, engine.HoldInput{Lines: []allot.Line{units("widget", 3)}})
	e.must(err)
	_, err = e.eng.CreateOrder(e.ctx, engine.OrderInput{Lines: []allot.Line{units("widget", 1)}})
	e.must(err)
	// 1 free, 3 held by another, 1 booked.
	cases := []struct {
		name  string
		lines []allot.Line
		code  allot.Code
		line  int
	}{
		{"fits", []allot.Line{units("widget", 1)}, "", 0},
		{"held by others covers it", []allot.Line{units("widget", 2)}, allot.CodeCapacityReservedByHold, 0},
		{"beyond capacity minus booked", []allot.Line{units("widget", 5)}, allot.CodeInsufficientCapacity, 0},
		{"second line fails, all or nothing", []allot.Line{stay("r1", "2037-05-01", "2037-05-02", 1), units("widget", 5)}, allot.CodeInsufficientCapacity, 1},
		{"unknown resource", []allot.Line{units("nope", 1)}, allot.CodeInvalid, 0},
		{"zero quantity", []allot.Line{units("widget", 0)}, allot.CodeInvalid, 0},
		{"negative quantity", []allot.Line{units("widget", -2)}, allot.CodeInvalid, 0},
		{"check-out before check-in", []allot.Line{stay("r1", "2037-05-02", "2037-05-01", 1)}, allot.CodeInvalid, 0},
		{"check-out equals check-in", []allot.Line{stay("r1", "2037-05-02", "2037-05-02", 1)}, allot.CodeInvalid, 0},
		{"nightly without dates", []allot.Line{units("r1", 1)}, allot.CodeInvalid, 0},
		{"stock with dates", []allot.Line{stay("widget", "2037-05-01", "2037-05-02", 1)}, allot.CodeInvalid, 0},
		{"no lines", nil, allot.CodeInvalid, 0},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			before := e.bucket("widget", allot.StockKey)
			_, err := e.eng.CreateOrder(e.ctx, engine.OrderInput{Lines: c.lines})
			if c.code == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			wantCode(t, err, c.code)
			var de *allot.Error
			errors.As(err, &de)
			if (c.code == allot.CodeInsufficientCapacity || c.code == allot.CodeCapacityReservedByHold) && (de.Line != c.line || de.Bucket == nil) {
				t.Fatalf("refusal names line %d bucket %v, want line %d and a bucket", de.Line, de.Bucket, c.line)
			}
			if after := e.bucket("widget", allot.StockKey); after != before {
				t.Fatalf("a refused request changed the bucket: %+v -> %+v", before, after)
			}
			e.wantBucket("r1", "2037-05-01", 0, 0, 1)
		})
	}
	CheckInvariants(t, e.ctx, e.store, "widget", "r1")
}

func (s suite) testCapacity(t *testing.T) {
	e := s.env(t)
	e.room("hall", 3)
	e.stock("book", 1)
	_, err := e.eng.CreateOrder(e.ctx, engine.OrderInput{Lines: []allot.Line{stay("hall", "2037-06-02", "2037-06-03", 2)}})
	e.must(err)
	from, to := allot.MustDate("2037-06-01"), allot.MustDate("2037-06-04")
	_, err = e.eng.SetCapacity(e.ctx, "hall", engine.CapacityInput{From: &from, To: &to, Capacity: ptr(1)})
	wantCode(t, err, allot.CodeCapacityBelowUsage)
	e.wantBucket("hall", "2037-06-01", 0, 0, 3) // all or nothing
	bs, err := e.eng.SetCapacity(e.ctx, "hall", engine.CapacityInput{From: &from, To: &to, Capacity: ptr(2)})
	e.must(err)
	if len(bs) != 3 || bs[1].Key != "2037-06-02" || bs[1].Available != 0 || bs[0].Available != 2 {
		t.Fatalf("set capacity returned %+v", bs)
	}
	e.wantBucket("hall", "2037-06-05", 0, 0, 3) // outside the range: default
	// Restock (seed 001) is raising capacity.
	_, err = e.eng.CreateOrder(e.ctx, engine.OrderInput{Lines: []allot.Line{units("book", 2)}})
	wantCode(t, err, allot.CodeInsufficientCapacity)
	_, err = e.eng.SetCapacity(e.ctx, "book", engine.CapacityInput{Capacity: ptr(2)})
	e.must(err)
	_, err = e.eng.CreateOrder(e.ctx, engine.OrderInput{Lines: []allot.Line{units("book", 2)}})
	e.must(err)
	for _, c := range []struct {
		name string
		res  string
		in   engine.CapacityInput
		code allot.Code
	}{
		{"negative", "book", engine.CapacityInput{Capacity: ptr(-1)}, allot.CodeInvalid},
		{"missing capacity", "book", engine.CapacityInput{}, allot.CodeInvalid},
		{"nightly without range", "hall", engine.CapacityInput{Capacity: ptr(1)}, allot.CodeInvalid},
		{"inverted range", "hall", engine.CapacityInput{From: &to, To: &from, Capacity: ptr(1)}, allot.CodeInvalid},
		{"stock with slot", "book", engine.CapacityInput{Slot: "x", Capacity: ptr(1)}, allot.CodeInvalid},
		{"unknown resource", "nope", engine.CapacityInput{Capacity: ptr(1)}, allot.CodeNotFound},
	} {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.eng.SetCapacity(e.ctx, c.res, c.in)
			wantCode(t, err, c.code)
		})
	}
	CheckInvariants(t, e.ctx, e.store, "hall", "book")
}

func (s suite) testExpiry(t *testing.T) {
	e := s.env(t)
	e.stock("seat", 2)
	h, err := e.eng.CreateHold(e.ctx, engine.HoldInput{Lines: []allot.Line{units("seat", 2)}, TTL: time.Minute})
	e.must(err)
	_, err = e.eng.CreateHold(e.ctx, engine.HoldInput{Lines: []allot.Line{units("seat", 1)}})
	wantCode(t, err, allot.CodeCapacityReservedByHold)
	e.clock.Advance(time.Minute)
	// Not swept yet, but an expired hold never causes a refusal.
	h2, err := e.eng.CreateHold(e.ctx, engine.HoldInput{Lines: []allot.Line{units("seat", 2)}, TTL: time.Minute})
	e.must(err)
	got, err := e.eng.GetHold(e.ctx, h.ID)
	e.must(err)
	if got.Status != allot.HoldExpired {
		t.Fatalf("first hold is %s, want expired", got.Status)
	}
	_, err = e.eng.CreateOrder(e.ctx, engine.OrderInput{HoldID: h.ID})
	wantCode(t, err, allot.CodeHoldExpired)
	CheckInvariants(t, e.ctx, e.store, "seat")

	// The sweeper releases expired holds so availability reads stay true.
	e.clock.Advance(time.Minute)
	e.wantBucket("seat", allot.StockKey, 2, 0, 0)
	n, err := e.eng.Sweep(e.ctx, 100)
	e.must(err)
	if n != 1 {
		t.Fatalf("swept %d holds, want 1", n)
	}
	e.wantBucket("seat", allot.StockKey, 0, 0, 2)
	got, err = e.eng.GetHold(e.ctx, h2.ID)
	e.must(err)
	if got.Status != allot.HoldExpired {
		t.Fatalf("swept hold is %s", got.Status)
	}
	if n, err := e.eng.Sweep(e.ctx, 100); err != nil || n != 0 {
		t.Fatalf("second sweep: %d, %v", n, err)
	}
	CheckInvariants(t, e.ctx, e.store, "seat")

	// A hold spanning two resources expired by a refusal on one is released
	// on the other by the sweeper.
	e.room("r", 1)
	h3, err := e.eng.CreateHold(e.ctx, engine.HoldInput{Lines: []allot.Line{units("seat", 2), stay("r", "2037-01-01", "2037-01-03", 1)}, TTL: time.Minute})
	e.must(err)
	e.clock.Advance(2 * time.Minute)
	_, err = e.eng.CreateOrder(e.ctx, engine.OrderInput{Lines: []allot.Line{units("seat", 2)}})
	e.must(err)
	e.wantBucket("r", "2037-01-01", 1, 0, 0)
	CheckInvariants(t, e.ctx, e.store, "seat", "r")
	_, err = e.eng.Sweep(e.ctx, 100)
	e.must(err)
	e.wantBucket("r", "2037-01-01", 0, 0, 1)
	got, err = e.eng.GetHold(e.ctx, h3.ID)
	e.must(err)
	if got.Status != allot.HoldExpired {
		t.Fatalf("hold h3 is %s", got.Status)
	}
	CheckInvariants(t, e.ctx, e.store, "seat", "r")
}

func (s suite) testOrderFromHold(t *testing.T) {
	e := s.env(t)
	e.stock("tee", 10)
	mk := func() allot.Hold {
		h, err := e.eng.CreateHold(e.ctx, engine.HoldInput{Lines: []allot.Line{units("tee", 1)}, CustomerID: "alice", TTL: time.Minute})
		e.must(err)
		return h
	}
	released := mk()
	_, err := e.eng.ReleaseHold(e.ctx, released.ID)
	e.must(err)
	booked := mk()
	o, err := e.eng.CreateOrder(e.ctx, engine.OrderInput{HoldID: booked.ID})
	e.must(err)
	_, err = e.eng.ReleaseHold(e.ctx, booked.ID)
	wantCode(t, err, allot.CodeHoldConverted)
	other := mk()
	cases := []struct {
		name string
		in   engine.OrderInput
		code allot.Code
	}{
		{"released", engine.OrderInput{HoldID: released.ID}, allot.CodeHoldReleased},
		{"already booked", engine.OrderInput{HoldID: booked.ID}, allot.CodeHoldConverted},
		{"unknown hold", engine.OrderInput{HoldID: "hld_nope"}, allot.CodeInvalid},
		{"another customer", engine.OrderInput{HoldID: other.ID, CustomerID: "bob"}, allot.CodeInvalid},
		{"hold and lines", engine.OrderInput{HoldID: other.ID, Lines: []allot.Line{units("tee", 1)}}, allot.CodeInvalid},
		{"neither", engine.OrderInput{}, allot.CodeInvalid},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := e.eng.CreateOrder(e.ctx, c.in)
			wantCode(t, err, c.code)
		})
	}
	e.wantBucket("tee", allot.StockKey, 1, 1, 8)
	if o.HoldID != booked.ID {
		t.Fatalf("order %+v", o)
	}
	CheckInvariants(t, e.ctx, e.store, "tee")
}

func (s suite) testListOrders(t *testing.T) {
	e := s.env(t)
	e.stock("pen", 100)
	var ids []string
	for i := range 7 {
		o, err := e.eng.CreateOrder(e.ctx, engine.OrderInput{Lines: []allot.Line{units("pen", 1)}, CustomerID: fmt.Sprintf("c%d", i%2)})
		e.must(err)
		ids = append(ids, o.ID)
	}
	_, err := e.eng.CancelOrder(e.ctx, ids[0], "test")
	e.must(err)
	var seen []string
	f := allot.OrderFilter{CustomerID: "c0", Limit: 2}
	for {
		page, err := e.eng.ListOrders(e.ctx, f)
		e.must(err)
		for _, o := range page {
			if o.CustomerID != "c0" || len(o.History) == 0 {
				t.Fatalf("listed %+v", o)
			}
			seen = append(seen, o.ID)
		}
		if len(page) < f.Limit {
			break
		}
		f.AfterID = page[len(page)-1].ID
	}
	want := []string{ids[0], ids[2], ids[4], ids[6]}
	if fmt.Sprint(seen) != fmt.Sprint(want) {
		t.Fatalf("paged %v, want %v", seen, want)
	}
	cancelled, err := e.eng.ListOrders(e.ctx, allot.OrderFilter{Status: allot.OrderCancelled})
	e.must(err)
	if len(cancelled) != 1 || cancelled[0].ID != ids[0] {
		t.Fatalf("cancelled: %+v", cancelled)
	}
	_, err = e.eng.ListOrders(e.ctx, allot.OrderFilter{Status: "bogus"})
	wantCode(t, err, allot.CodeInvalid)
}

func (s suite) testEvents(t *testing.T) {
	e := s.env(t)
	e.stock("mug", 3)
	h, err := e.eng.CreateHold(e.ctx, engine.HoldInput{Lines: []allot.Line{units("mug", 1)}})
	e.must(err)
	o, err := e.eng.CreateOrder(e.ctx, engine.OrderInput{HoldID: h.ID})
	e.must(err)
	_, err = e.eng.CancelOrder(e.ctx, o.ID, "x")
	e.must(err)
	_, err = e.eng.CreateOrder(e.ctx, engine.OrderInput{Lines: []allot.Line{units("mug", 9)}}) // refused: no event
	wantCode(t, err, allot.CodeInsufficientCapacity)
	evs, err := e.store.EventsAfter(e.ctx, 0, 100)
	e.must(err)
	var types []string
	for i, ev := range evs {
		types = append(types, ev.Type)
		if i > 0 && ev.Seq <= evs[i-1].Seq {
			t.Fatalf("event seqs not increasing: %d after %d", ev.Seq, evs[i-1].Seq)
		}
		if ev.ResourceID != "mug" || len(ev.Payload) == 0 || ev.ID == "" {
			t.Fatalf("event %+v", ev)
		}
	}
	want := []string{allot.EventResourceCreated, allot.EventHoldCreated, allot.EventOrderCreated, allot.EventOrderStatus}
	if fmt.Sprint(types) != fmt.Sprint(want) {
		t.Fatalf("events %v, want %v", types, want)
	}
	if evs[2].OrderID != o.ID || evs[2].HoldID != h.ID {
		t.Fatalf("order event %+v", evs[2])
	}
	rest, err := e.store.EventsAfter(e.ctx, evs[1].Seq, 100)
	e.must(err)
	if len(rest) != 2 {
		t.Fatalf("events after %d: %d", evs[1].Seq, len(rest))
	}
}

func (s suite) testIdempotencyClaims(t *testing.T) {
	e := s.env(t)
	now := time.Now().UTC().Truncate(time.Microsecond)
	claim := allot.IdempotencyClaim{Key: "k1", Hash: "h1", Token: "t1", At: now}
	rec, err := e.store.ClaimIdempotencyKey(e.ctx, claim, time.Minute)
	if err != nil || rec != nil {
		t.Fatalf("first claim: %+v, %v", rec, err)
	}
	rec, err = e.store.ClaimIdempotencyKey(e.ctx, allot.IdempotencyClaim{Key: "k1", Hash: "h1", Token: "t2", At: now}, time.Minute)
	if err != nil || rec == nil || rec.Done || rec.Token != "t1" {
		t.Fatalf("claim while in flight: %+v, %v", rec, err)
	}
	// A stale claim is taken over; the first holder then can't complete.
	rec, err = e.store.ClaimIdempotencyKey(e.ctx, allot.IdempotencyClaim{Key: "k1", Hash: "h1", Token: "t3", At: now.Add(2 * time.Minute)}, time.Minute)
	if err != nil || rec != nil {
		t.Fatalf("stale takeover: %+v, %v", rec, err)
	}
	err = e.store.Write(e.ctx, func(tx allot.Tx) error { return tx.CompleteIdempotencyKey(e.ctx, "k1", "t1", 201, []byte("x")) })
	if !errors.Is(err, allot.ErrIdempotencyLost) {
		t.Fatalf("complete by the old holder: %v", err)
	}
	// Through the engine, the write of the request that lost its claim must
	// roll back entirely: its effect never happens.
	e.stock("lost", 1)
	_, err = e.store.ClaimIdempotencyKey(e.ctx, allot.IdempotencyClaim{Key: "k-lost", Hash: "h", Token: "old", At: now}, time.Minute)
	e.must(err)
	_, err = e.store.ClaimIdempotencyKey(e.ctx, allot.IdempotencyClaim{Key: "k-lost", Hash: "h", Token: "new", At: now.Add(2 * time.Minute)}, time.Minute)
	e.must(err)
	idem := &engine.Idem{Key: "k-lost", Token: "old", Render: func(any, error) (int, []byte) { return 201, []byte("x") }}
	_, err = e.eng.CreateOrder(engine.WithIdem(e.ctx, idem), engine.OrderInput{Lines: []allot.Line{units("lost", 1)}})
	wantCode(t, err, allot.CodeIdempotencyInFlight)
	if idem.Completed {
		t.Fatal("a lost claim was marked completed")
	}
	e.wantBucket("lost", allot.StockKey, 0, 0, 1)
	if orders, _ := e.store.ListOrders(e.ctx, allot.OrderFilter{Limit: 10}); len(orders) != 0 {
		t.Fatalf("the request that lost its claim still booked: %+v", orders)
	}
	e.must(e.store.Write(e.ctx, func(tx allot.Tx) error { return tx.CompleteIdempotencyKey(e.ctx, "k1", "t3", 201, []byte(`{"ok":1}`)) }))
	rec, err = e.store.ClaimIdempotencyKey(e.ctx, allot.IdempotencyClaim{Key: "k1", Hash: "other", Token: "t4", At: now.Add(time.Hour)}, time.Minute)
	if err != nil || rec == nil || !rec.Done || rec.Status != 201 || string(rec.Body) != `{"ok":1}` || rec.Hash != "h1" {
		t.Fatalf("claim of a done key: %+v, %v", rec, err)
	}
	// Release forgets only an in-flight claim with the right token.
	_, err = e.store.ClaimIdempotencyKey(e.ctx, allot.IdempotencyClaim{Key: "k2", Hash: "h", Token: "a", At: now}, time.Minute)
	e.must(err)
	e.must(e.store.ReleaseIdempotencyKey(e.ctx, "k2", "wrong"))
	if rec, _ := e.store.ClaimIdempotencyKey(e.ctx, allot.IdempotencyClaim{Key: "k2", Hash: "h", Token: "b", At: now}, time.Minute); rec == nil {
		t.Fatal("release with the wrong token forgot the claim")
	}
	e.must(e.store.ReleaseIdempotencyKey(e.ctx, "k2", "a"))
	if rec, _ := e.store.ClaimIdempotencyKey(e.ctx, allot.IdempotencyClaim{Key: "k2", Hash: "h", Token: "c", At: now}, time.Minute); rec != nil {
		t.Fatalf("released key still known: %+v", rec)
	}
	n, err := e.store.DeleteIdempotencyKeysBefore(e.ctx, now.Add(time.Second))
	e.must(err)
	if n != 1 { // k2; k1 was re-claimed later
		t.Fatalf("deleted %d keys, want 1", n)
	}
}

// testIdempotentWrite races many duplicates of one keyed booking: the effect
// happens once, every duplicate gets the stored response or "in flight".
func (s suite) testIdempotentWrite(t *testing.T) {
	e := s.env(t)
	e.stock("lamp", 100)
	const n = 16
	var wg sync.WaitGroup
	var done, inflight atomic.Int32
	bodies := make(chan string, n)
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			token := fmt.Sprintf("tok%d", i)
			rec, err := e.store.ClaimIdempotencyKey(e.ctx, allot.IdempotencyClaim{Key: "same", Hash: "h", Token: token, At: time.Now()}, time.Minute)
			if err != nil {
				t.Error(err)
				return
			}
			if rec != nil {
				if rec.Done {
					bodies <- string(rec.Body)
					done.Add(1)
				} else {
					inflight.Add(1)
				}
				return
			}
			idem := &engine.Idem{Key: "same", Token: token, Render: func(v any, err error) (int, []byte) {
				if err != nil {
					return 409, []byte(err.Error())
				}
				return 201, []byte(v.(allot.Order).ID)
			}}
			o, err := e.eng.CreateOrder(engine.WithIdem(e.ctx, idem), engine.OrderInput{Lines: []allot.Line{units("lamp", 1)}})
			if err != nil || !idem.Completed {
				t.Error(err)
				return
			}
			bodies <- o.ID
		}()
	}
	wg.Wait()
	close(bodies)
	distinct := map[string]bool{}
	for b := range bodies {
		distinct[b] = true
	}
	if len(distinct) != 1 {
		t.Fatalf("duplicates saw %d different results: %v", len(distinct), distinct)
	}
	e.wantBucket("lamp", allot.StockKey, 0, 1, 99)
	if int(done.Load()+inflight.Load()) != n-1 {
		t.Fatalf("%d replays + %d in flight, want %d", done.Load(), inflight.Load(), n-1)
	}
	CheckInvariants(t, e.ctx, e.store, "lamp")
}

func (s suite) testRaceLastUnits(t *testing.T) {
	for _, c := range []struct {
		name     string
		capacity int
		clients  int
		viaHold  bool
	}{
		{"orders", 7, 40, false},
		{"holds", 5, 40, true},
	} {
		t.Run(c.name, func(t *testing.T) {
			e := s.env(t)
			e.stock("ticket", c.capacity)
			var ok, refused atomic.Int32
			var wg sync.WaitGroup
			for range c.clients {
				wg.Add(1)
				go func() {
					defer wg.Done()
					var err error
					if c.viaHold {
						_, err = e.eng.CreateHold(e.ctx, engine.HoldInput{Lines: []allot.Line{units("ticket", 1)}})
					} else {
						_, err = e.eng.CreateOrder(e.ctx, engine.OrderInput{Lines: []allot.Line{units("ticket", 1)}})
					}
					switch allot.CodeOf(err) {
					case "":
						if err != nil {
							t.Error(err)
							return
						}
						ok.Add(1)
					case allot.CodeInsufficientCapacity, allot.CodeCapacityReservedByHold:
						refused.Add(1)
					default:
						t.Error(err)
					}
				}()
			}
			wg.Wait()
			if int(ok.Load()) != c.capacity || int(refused.Load()) != c.clients-c.capacity {
				t.Fatalf("%d won and %d were refused; want exactly %d winners of %d", ok.Load(), refused.Load(), c.capacity, c.clients)
			}
			CheckInvariants(t, e.ctx, e.store, "ticket")
		})
	}
}

// testRaceOverlappingStays is seed 000's TODO: two overlapping stays on a
// capacity-1 room can never both succeed.
func (s suite) testRaceOverlappingStays(t *testing.T) {
	e := s.env(t)
	e.room("room-7", 1)
	stays := [][2]string{
		{"2037-08-01", "2037-08-04"}, {"2037-08-03", "2037-08-06"}, {"2037-08-02", "2037-08-03"},
		{"2037-08-05", "2037-08-07"}, {"2037-08-06", "2037-08-09"}, {"2037-07-30", "2037-08-02"},
		{"2037-08-08", "2037-08-10"}, {"2037-08-01", "2037-08-10"},
	}
	type won struct{ in, out allot.Date }
	var mu sync.Mutex
	var winners []won
	var wg sync.WaitGroup
	for round := range 4 {
		for i, s := range stays {
			wg.Add(1)
			go func() {
				defer wg.Done()
				_, err := e.eng.CreateOrder(e.ctx, engine.OrderInput{Lines: []allot.Line{stay("room-7", s[0], s[1], 1)}, CustomerID: fmt.Sprintf("g%d-%d", round, i)})
				if err == nil {
					mu.Lock()
					winners = append(winners, won{allot.MustDate(s[0]), allot.MustDate(s[1])})
					mu.Unlock()
				} else if allot.CodeOf(err) != allot.CodeInsufficientCapacity {
					t.Error(err)
				}
			}()
		}
	}
	wg.Wait()
	if len(winners) == 0 {
		t.Fatal("no stay won")
	}
	for i, a := range winners {
		for _, b := range winners[i+1:] {
			if a.in.Before(b.out) && b.in.Before(a.out) {
				t.Fatalf("overlapping stays both booked: %v-%v and %v-%v", a.in, a.out, b.in, b.out)
			}
		}
	}
	CheckInvariants(t, e.ctx, e.store, "room-7")
}

// testRaceMixed interleaves holds, orders from holds, direct orders,
// releases, cancels and expiries at random across goroutines, then checks
// the invariants and that every unit is accounted for.
func (s suite) testRaceMixed(t *testing.T) {
	e := s.env(t)
	e.room("hotel", 4)
	e.stock("shop", 6)
	var wg sync.WaitGroup
	for w := range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			seed := uint64(w*7919 + 1)
			rnd := func(n int) int {
				seed = seed*6364136223846793005 + 1442695040888963407
				return int((seed >> 33) % uint64(n))
			}
			for range 25 {
				day := 1 + rnd(5)
				lines := []allot.Line{stay("hotel", fmt.Sprintf("2037-09-%02d", day), fmt.Sprintf("2037-09-%02d", day+1+rnd(3)), 1+rnd(2))}
				if rnd(2) == 0 {
					lines = append(lines, units("shop", 1+rnd(3)))
				}
				var err error
				switch rnd(5) {
				case 0, 1:
					var h allot.Hold
					h, err = e.eng.CreateHold(e.ctx, engine.HoldInput{Lines: lines, TTL: time.Duration(1+rnd(3)) * time.Second})
					if err == nil {
						switch rnd(3) {
						case 0:
							_, err = e.eng.CreateOrder(e.ctx, engine.OrderInput{HoldID: h.ID})
						case 1:
							_, err = e.eng.ReleaseHold(e.ctx, h.ID)
						}
					}
				case 2:
					var o allot.Order
					o, err = e.eng.CreateOrder(e.ctx, engine.OrderInput{Lines: lines})
					if err == nil && rnd(2) == 0 {
						_, err = e.eng.CancelOrder(e.ctx, o.ID, "changed mind")
					}
				case 3:
					e.clock.Advance(time.Second)
				case 4:
					_, err = e.eng.Sweep(e.ctx, 10)
				}
				switch allot.CodeOf(err) {
				case "", allot.CodeInsufficientCapacity, allot.CodeCapacityReservedByHold, allot.CodeHoldExpired, allot.CodeHoldConverted:
					if allot.CodeOf(err) == "" && err != nil {
						t.Error(err)
					}
				default:
					t.Error(err)
				}
			}
		}()
	}
	wg.Wait()
	CheckInvariants(t, e.ctx, e.store, "hotel", "shop")
	e.clock.Advance(time.Hour)
	for {
		n, err := e.eng.Sweep(e.ctx, 100)
		e.must(err)
		if n == 0 {
			break
		}
	}
	CheckInvariants(t, e.ctx, e.store, "hotel", "shop")
	cs, err := e.store.Claims(e.ctx, "shop")
	e.must(err)
	for _, c := range cs {
		if c.Kind == allot.ClaimHeld {
			t.Fatalf("after the last sweep a hold still claims %+v", c)
		}
	}
}

// testThresholds: availability.low when a bucket falls to or below the
// threshold, availability.restored when it climbs back above, once per
// crossing.
func (s suite) testThresholds(t *testing.T) {
	e := s.env(t)
	e.resource(engine.ResourceInput{ID: "cake", Name: "cake", Kind: allot.KindStock, Capacity: ptr(10), Threshold: ptr(3)})
	e.stock("plain", 10) // no threshold: never an event
	var orders []string
	for _, q := range []int{5, 2, 1, 1} { // available 5, 3 (low), 2, 1
		o, err := e.eng.CreateOrder(e.ctx, engine.OrderInput{Lines: []allot.Line{units("cake", q), units("plain", q)}})
		e.must(err)
		orders = append(orders, o.ID)
	}
	_, err := e.eng.CancelOrder(e.ctx, orders[1], "x") // available 3: still low
	e.must(err)
	_, err = e.eng.CancelOrder(e.ctx, orders[0], "x") // available 8: restored
	e.must(err)
	_, err = e.eng.CreateOrder(e.ctx, engine.OrderInput{Lines: []allot.Line{units("cake", 6)}}) // available 2: low again
	e.must(err)
	evs, err := e.store.EventsAfter(e.ctx, 0, 1000)
	e.must(err)
	var got []string
	for _, ev := range evs {
		if ev.Type != allot.EventAvailabilityLow && ev.Type != allot.EventAvailabilityUp {
			continue
		}
		var p struct {
			ResourceID string `json:"resource_id"`
			Available  int    `json:"available"`
		}
		e.must(json.Unmarshal(ev.Payload, &p))
		got = append(got, fmt.Sprintf("%s %s %d", ev.Type, p.ResourceID, p.Available))
	}
	want := []string{"availability.low cake 3", "availability.restored cake 8", "availability.low cake 2"}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Fatalf("threshold events %v, want %v", got, want)
	}
	_, err = e.eng.CreateResource(e.ctx, engine.ResourceInput{Name: "x", Kind: allot.KindStock, Capacity: ptr(1), Threshold: ptr(-1)})
	wantCode(t, err, allot.CodeInvalid)
}

// testSequencerGuards: a cursor never moves backwards, and an event that
// has a change number cannot be given another (two sequencers at once
// would fail rather than renumber what a reader has passed).
func (s suite) testSequencerGuards(t *testing.T) {
	e := s.env(t)
	e.stock("g", 5)
	e.must(e.store.SetCursor(e.ctx, "relay:test", 5))
	e.must(e.store.SetCursor(e.ctx, "relay:test", 3))
	if c, err := e.store.Cursor(e.ctx, "relay:test"); err != nil || c != 5 {
		t.Fatalf("cursor %d after 5 then 3, %v", c, err)
	}
	if _, err := e.eng.Sequence(e.ctx, 100); err != nil {
		t.Fatal(err)
	}
	evs, err := e.store.EventsAfterChange(e.ctx, 0, 10)
	e.must(err)
	if len(evs) == 0 || evs[0].ChangeNo == 0 {
		t.Fatalf("events %+v", evs)
	}
	err = e.store.Write(e.ctx, func(tx allot.Tx) error {
		return tx.Sequence(e.ctx, []int64{evs[0].Seq}, []int64{evs[0].ChangeNo + 100}, nil, nil)
	})
	if err == nil {
		t.Fatal("an event was numbered twice")
	}
	again, err := e.store.EventsAfterChange(e.ctx, 0, 10)
	e.must(err)
	if again[0].ChangeNo != evs[0].ChangeNo {
		t.Fatalf("change number moved from %d to %d", evs[0].ChangeNo, again[0].ChangeNo)
	}
}
