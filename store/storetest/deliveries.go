package storetest

import (
	"errors"
	"testing"
	"time"

	"github.com/allot/allot"
)

// testDeliveryLease: an attempt's outcome is recorded only while the
// delivery still carries the lease it was claimed with. A replay during
// the attempt wins; the next claim's outcome is recorded.
func (s suite) testDeliveryLease(t *testing.T) {
	e := s.env(t)
	now := time.Now().UTC().Truncate(time.Microsecond)
	h := allot.Webhook{ID: "whk_1", URL: "http://example.test/hook", Secret: "s3cret-s3cret-s3cret", CreatedAt: now}
	e.must(e.store.InsertWebhook(e.ctx, h))
	dl := allot.Delivery{ID: "dlv_1", WebhookID: h.ID, EventID: "evt_1", EventType: allot.EventOrderCreated, ChangeNo: 1,
		Body: []byte(`{}`), Status: allot.DeliveryPending, NextAttemptAt: now, CreatedAt: now}
	e.must(e.store.AddDeliveries(e.ctx, h.ID, []allot.Delivery{dl}, 1))

	claim := func() allot.Delivery {
		t.Helper()
		at := time.Now().UTC()
		ds, err := e.store.ClaimDeliveries(e.ctx, at, at.Add(time.Minute), 10)
		if err != nil || len(ds) != 1 {
			t.Fatalf("claim: %v, %v", ds, err)
		}
		return ds[0]
	}
	first := claim()
	// A replay while the attempt runs: pending, due now, attempts reset.
	replayed := first
	replayed.Status, replayed.Attempts, replayed.NextAttemptAt = allot.DeliveryPending, 0, time.Now().UTC().Truncate(time.Microsecond)
	e.must(e.store.UpdateDelivery(e.ctx, replayed, time.Time{}))
	// The attempt ends, failed: its outcome no longer applies.
	outcome := first
	outcome.Status, outcome.Attempts, outcome.LastStatus = allot.DeliveryFailed, 1, 503
	if err := e.store.UpdateDelivery(e.ctx, outcome, first.NextAttemptAt); !errors.Is(err, allot.ErrNotFound) {
		t.Fatalf("an outcome after a replay: %v, want ErrNotFound", err)
	}
	if got, err := e.store.GetDelivery(e.ctx, dl.ID); err != nil || got.Status != allot.DeliveryPending || got.Attempts != 0 {
		t.Fatalf("after the replay and the stale outcome: %+v, %v", got, err)
	}
	// The replayed delivery's own attempt records its outcome.
	second := claim()
	outcome = second
	outcome.Status, outcome.Attempts, outcome.LastStatus = allot.DeliveryDelivered, 1, 200
	e.must(e.store.UpdateDelivery(e.ctx, outcome, second.NextAttemptAt))
	if got, err := e.store.GetDelivery(e.ctx, dl.ID); err != nil || got.Status != allot.DeliveryDelivered {
		t.Fatalf("after its own attempt: %+v, %v", got, err)
	}
}
