package engine

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/allot/allot"
)

// HoldInput asks for a hold on all of Lines, or none.
type HoldInput struct {
	Lines []allot.Line
	// TTL is how long the hold lasts; DefaultHoldTTL when zero.
	TTL        time.Duration
	CustomerID string
}

// CreateHold claims the lines' capacity until the hold expires.
func (e *Engine) CreateHold(ctx context.Context, in HoldInput) (allot.Hold, error) {
	if in.TTL == 0 {
		in.TTL = DefaultHoldTTL
	}
	if in.TTL < time.Second || in.TTL > MaxHoldTTL {
		return allot.Hold{}, allot.Invalid("ttl_seconds", "ttl_seconds must be between 1 and %d", int(MaxHoldTTL.Seconds()))
	}
	// As an order would be: better refused now than when the hold is
	// booked.
	if err := e.checkOrderCustomer(ctx, in.CustomerID); err != nil {
		return allot.Hold{}, err
	}
	d, err := e.newDemandOf(ctx, e.store, in.Lines)
	if err != nil {
		return allot.Hold{}, err
	}
	now := e.now()
	h := allot.Hold{ID: NewID("hld"), Status: allot.HoldActive, CustomerID: in.CustomerID,
		ExpiresAt: now.Add(in.TTL), CreatedAt: now, Lines: in.Lines}
	v, err := e.do(ctx, d.op(func(ctx context.Context, w *wtx) (any, error) {
		if err := e.fit(ctx, w, d); err != nil {
			return nil, err
		}
		for k, q := range d.need {
			w.lk[k].Held += q
		}
		if err := w.AddClaims(ctx, d.claims(h.ID, allot.ClaimHeld)); err != nil {
			return nil, err
		}
		if err := w.InsertHold(ctx, h); err != nil {
			return nil, err
		}
		w.emit(e.event(allot.EventHoldCreated, firstResource(h.Lines), "", h.ID, h))
		return h, nil
	}))
	if err != nil {
		return allot.Hold{}, err
	}
	return v.(allot.Hold), nil
}

// GetHold returns a hold; an active hold past its expiry reads as expired.
func (e *Engine) GetHold(ctx context.Context, id string) (allot.Hold, error) {
	h, err := e.store.GetHold(ctx, id)
	if errors.Is(err, allot.ErrNotFound) {
		return h, allot.Errorf(allot.CodeNotFound, "hold %q does not exist", id)
	}
	if err == nil && h.Status == allot.HoldActive && !h.ExpiresAt.After(e.now()) {
		h.Status = allot.HoldExpired
	}
	return h, err
}

// ReleaseHold gives a hold's capacity back. Releasing a released or expired
// hold does nothing; a hold already booked cannot be released.
func (e *Engine) ReleaseHold(ctx context.Context, id string) (allot.Hold, error) {
	return e.releaseHold(ctx, id, allot.HoldReleased)
}

// releaseHold releases what is left of a hold's claims and moves an active
// hold to status to (released, or expired for the sweeper).
func (e *Engine) releaseHold(ctx context.Context, id string, to allot.HoldStatus) (allot.Hold, error) {
	return retrying(func() (allot.Hold, error) { return e.releaseHoldOnce(ctx, id, to) })
}

func (e *Engine) releaseHoldOnce(ctx context.Context, id string, to allot.HoldStatus) (allot.Hold, error) {
	h, err := e.GetHold(ctx, id)
	if err != nil {
		return h, err
	}
	d, err := e.demandOf(ctx, e.store, h.Lines)
	if err != nil {
		return h, err
	}
	v, err := e.do(ctx, d.op(func(ctx context.Context, w *wtx) (any, error) {
		h, err := w.LockHold(ctx, id)
		if err != nil {
			return nil, err
		}
		expired := !h.ExpiresAt.After(e.now())
		switch {
		case h.Status == allot.HoldConverted:
			return nil, allot.Errorf(allot.CodeHoldConverted, "hold %q was booked as order %q; cancel the order instead", id, h.OrderID)
		case to == allot.HoldExpired && h.Status == allot.HoldActive && !expired:
			return h, nil // not expired on this clock: leave it
		}
		n, err := e.releaseClaimsCounted(ctx, w, id, func(b *allot.Bucket, q int) { b.Held -= q })
		if err != nil {
			return nil, err
		}
		if h.Status != allot.HoldActive {
			if n > 0 {
				// What an earlier expiry left (claims on buckets it had not
				// locked) is given back now: a capacity change to publish.
				w.emit(e.event(allot.EventHoldExpired, firstResource(h.Lines), "", id, h))
			}
			return h, nil
		}
		if expired {
			to = allot.HoldExpired
		}
		if err := w.SetHoldStatus(ctx, id, to, ""); err != nil {
			return nil, err
		}
		h.Status = to
		typ := allot.EventHoldReleased
		if to == allot.HoldExpired {
			typ = allot.EventHoldExpired
		}
		w.emit(e.event(typ, firstResource(h.Lines), "", id, h))
		return h, nil
	}))
	if err != nil {
		return allot.Hold{}, err
	}
	return v.(allot.Hold), nil
}

// releaseClaims applies change to the bucket of each of owner's claims and
// deletes them (they no longer count).
func (e *Engine) releaseClaims(ctx context.Context, w *wtx, owner string, change func(b *allot.Bucket, q int)) error {
	_, err := e.releaseClaimsCounted(ctx, w, owner, change)
	return err
}

// releaseClaimsCounted is releaseClaims, saying how many claims it released.
// A claim on a bucket this transaction has not locked means the owner's
// lines changed since they were read (a lease renewed with other items):
// the operation is run again, reading them afresh.
func (e *Engine) releaseClaimsCounted(ctx context.Context, w *wtx, owner string, change func(b *allot.Bucket, q int)) (int, error) {
	claims, err := w.OwnerClaims(ctx, owner)
	if err != nil {
		return 0, err
	}
	for _, c := range claims {
		if _, ok := w.lk[c.BucketKey]; !ok {
			return 0, errRetry
		}
	}
	for _, c := range claims {
		change(w.lk[c.BucketKey], c.Quantity)
	}
	return len(claims), w.DeleteClaims(ctx, claims)
}

// errRetry is a refusal that changed nothing and asks its caller to run
// the operation again: what it read before its transaction moved on.
var errRetry = &allot.Error{Code: "engine-retry", Line: -1, Detail: "the data moved on while the request was prepared; run it again"}

// retrying runs f again while it asks to (a bounded number of times).
func retrying[T any](f func() (T, error)) (T, error) {
	for i := 0; ; i++ {
		v, err := f()
		if err != errRetry || i >= 20 {
			if err == errRetry {
				return v, fmt.Errorf("engine: gave up after %d tries against concurrent changes", i+1)
			}
			return v, err
		}
	}
}

func checkCustomer(id string) error {
	if len(id) > 200 {
		return allot.Invalid("customer_id", "customer_id may be at most 200 characters")
	}
	return nil
}
