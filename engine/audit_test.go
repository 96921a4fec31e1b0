package engine

import (
	"context"
	"strings"
	"testing"

	"github.com/allot/allot"
)

// TestCheckFindsViolations corrupts buckets behind the engine's back and
// expects Check to say so: the audit the race tests rely on can fail.
func TestCheckFindsViolations(t *testing.T) {
	ctx := context.Background()
	e := newTestEngine(t, Batching{})
	if _, err := e.CreateOrder(ctx, OrderInput{Lines: []allot.Line{{ResourceID: "s", Quantity: 2}}}); err != nil {
		t.Fatal(err)
	}
	a, err := Check(ctx, e.store, "s")
	if err != nil || len(a.Violations) != 0 || a.Booked != 2 || a.Oversold != 0 {
		t.Fatalf("clean audit: %+v, %v", a, err)
	}
	corrupt := func(b allot.Bucket) {
		t.Helper()
		if err := e.store.Write(ctx, func(tx allot.Tx) error { return tx.SaveBuckets(ctx, []allot.Bucket{b}) }); err != nil {
			t.Fatal(err)
		}
	}
	key := allot.BucketKey{ResourceID: "s", Key: allot.StockKey}
	corrupt(allot.Bucket{BucketKey: key, Capacity: 3, Booked: 1}) // booked no longer matches the order's claim
	a, err = Check(ctx, e.store, "s")
	if err != nil || len(a.Violations) != 1 || !strings.Contains(a.Violations[0], "claims sum to") {
		t.Fatalf("audit after corruption: %+v, %v", a, err)
	}
	// The database itself refuses an oversold bucket.
	err = e.store.Write(ctx, func(tx allot.Tx) error {
		return tx.SaveBuckets(ctx, []allot.Bucket{{BucketKey: key, Capacity: 1, Booked: 2}})
	})
	if err == nil {
		t.Fatal("the store accepted held + booked > capacity")
	}
}
