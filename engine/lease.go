package engine

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/allot/allot"
)

// LeaseInput asks for a lease (OpenActive: the lease of an OrderQuote) on
// Lines under the hold id ID. A lease under an id that already has one
// replaces it: the old claims are given back and the new ones taken in the
// same transaction, so renewing never counts twice.
type LeaseInput struct {
	ID         string
	Lines      []allot.Line
	TTL        time.Duration
	CustomerID string
}

// LineVerdict is the lease's answer for one line.
type LineVerdict struct {
	// Remaining is what the line's bucket had left for this lease before it
	// (capacity - booked - other leases and holds): OpenActive's
	// remainingAttendeeCapacity "excluding the order's own lease".
	Remaining int
	// Of the line's quantity: granted, refused because other unexpired
	// holds keep the capacity (it may come back), refused because it is
	// gone. Granted+Reserved+Gone = the line's quantity.
	Granted, Reserved, Gone int
}

// LeaseResult is the lease, when granted, and the verdict of every line.
type LeaseResult struct {
	Hold    allot.Hold
	Granted bool
	Lines   []LineVerdict
}

// Lease takes all of in.Lines or nothing. A refusal is not an error: the
// result says, line by line, how much was missing and why, and the
// previous lease under the id, if any, stands.
func (e *Engine) Lease(ctx context.Context, in LeaseInput) (LeaseResult, error) {
	return retrying(func() (LeaseResult, error) { return e.lease(ctx, in) })
}

func (e *Engine) lease(ctx context.Context, in LeaseInput) (LeaseResult, error) {
	if in.TTL == 0 {
		in.TTL = DefaultHoldTTL
	}
	if in.TTL < time.Second || in.TTL > MaxHoldTTL {
		return LeaseResult{}, allot.Invalid("ttl_seconds", "ttl_seconds must be between 1 and %d", int(MaxHoldTTL.Seconds()))
	}
	if in.ID == "" || len(in.ID) > 200 {
		return LeaseResult{}, allot.Invalid("id", "a lease needs an id of at most 200 characters")
	}
	if err := checkCustomer(in.CustomerID); err != nil {
		return LeaseResult{}, err
	}
	d, err := e.newDemandOf(ctx, e.store, in.Lines)
	if err != nil {
		return LeaseResult{}, err
	}
	for i, l := range d.lines {
		if d.res[l.ResourceID].Kind == allot.KindNightly {
			// A verdict is per bucket, and a stay spans several.
			return LeaseResult{}, &allot.Error{Code: allot.CodeInvalid, Field: fmt.Sprintf("lines[%d].resource_id", i), Line: i,
				Detail: fmt.Sprintf("resource %q is nightly; leases are for sessions and stock (hold a stay with a hold)", l.ResourceID)}
		}
	}
	// The buckets of the lease this one replaces must be locked too.
	specs, old, err := e.withHold(ctx, d, in.ID)
	if err != nil {
		return LeaseResult{}, err
	}
	if old != nil && old.Status == allot.HoldConverted {
		return LeaseResult{}, allot.Errorf(allot.CodeHoldConverted, "lease %q is already booked as order %q", old.ID, old.OrderID)
	}
	now := e.now()
	h := allot.Hold{ID: in.ID, Status: allot.HoldActive, CustomerID: in.CustomerID, ExpiresAt: now.Add(in.TTL), CreatedAt: now, Lines: in.Lines}
	v, err := e.do(ctx, &op{specs: specs, shard: d.keys[0].ResourceID, apply: func(ctx context.Context, w *wtx) (any, error) {
		if err := d.missing(w); err != nil {
			return nil, err
		}
		prev, err := w.LockHold(ctx, in.ID)
		exists := err == nil
		if err != nil && !errors.Is(err, allot.ErrNotFound) {
			return nil, err
		}
		if exists && prev.Status == allot.HoldConverted {
			return nil, allot.Errorf(allot.CodeHoldConverted, "lease %q is already booked as order %q", prev.ID, prev.OrderID)
		}
		// Expired holds never refuse: release them first (this lease's own,
		// if it expired, among them: then it has no claims left to give).
		if _, err := e.expireOn(ctx, w, d.keys); err != nil {
			return nil, err
		}
		own, err := w.OwnerClaims(ctx, in.ID)
		if err != nil {
			return nil, err
		}
		for _, c := range own {
			if _, ok := w.lk[c.BucketKey]; !ok {
				return nil, errRetry // renewed with other lines since it was read
			}
		}
		// Decide with this lease's own claims given back.
		others := map[allot.BucketKey]allot.Bucket{}
		for _, k := range d.keys {
			others[k] = *w.lk[k]
		}
		for _, c := range own {
			if b, ok := others[c.BucketKey]; ok {
				b.Held -= c.Quantity
				others[c.BucketKey] = b
			}
		}
		res := LeaseResult{Granted: true, Lines: make([]LineVerdict, len(in.Lines))}
		free, reserved := map[allot.BucketKey]int{}, map[allot.BucketKey]int{}
		for k, b := range others {
			free[k], reserved[k] = max(0, b.Capacity-b.Booked-b.Held), b.Held
		}
		for i, l := range d.lines {
			k := allot.BucketKey{ResourceID: l.ResourceID, Key: bucketKeyOf(d.res[l.ResourceID], l)}
			b := others[k]
			v := LineVerdict{Remaining: max(0, b.Capacity-b.Booked-b.Held)}
			v.Granted = min(l.Quantity, free[k])
			free[k] -= v.Granted
			rest := l.Quantity - v.Granted
			v.Reserved = min(rest, reserved[k])
			reserved[k] -= v.Reserved
			v.Gone = rest - v.Reserved
			if v.Granted < l.Quantity {
				res.Granted = false
			}
			res.Lines[i] = v
		}
		if !res.Granted {
			return res, nil
		}
		for _, c := range own {
			w.lk[c.BucketKey].Held -= c.Quantity
		}
		if err := w.DeleteClaims(ctx, own); err != nil {
			return nil, err
		}
		for k, q := range d.need {
			w.lk[k].Held += q
		}
		if err := w.AddClaims(ctx, d.claims(h.ID, allot.ClaimHeld)); err != nil {
			return nil, err
		}
		if err := w.ReplaceHold(ctx, h); err != nil {
			return nil, err
		}
		if exists && len(own) > 0 {
			prev.Status = allot.HoldReleased
			w.emit(e.event(allot.EventHoldReleased, firstResource(prev.Lines), "", prev.ID, prev))
		}
		w.emit(e.event(allot.EventHoldCreated, firstResource(h.Lines), "", h.ID, h))
		res.Hold = h
		return res, nil
	}})
	if err != nil {
		return LeaseResult{}, err
	}
	return v.(LeaseResult), nil
}

// bucketKeyOf is the bucket a one-bucket line claims (a slot, or stock).
func bucketKeyOf(r allot.Resource, l allot.Line) string {
	if r.Kind == allot.KindSlot {
		return l.Slot
	}
	return allot.StockKey
}

func mergeSpecs(a, b []allot.BucketSpec) []allot.BucketSpec {
	seen := map[allot.BucketKey]bool{}
	var out []allot.BucketSpec
	for _, s := range append(a, b...) {
		if !seen[s.BucketKey] {
			seen[s.BucketKey] = true
			out = append(out, s)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Less(out[j].BucketKey) })
	return out
}

// orderReplacing books in.Lines in place of the hold in.ReplacesHold, in
// one transaction: the hold's claims are given back, the lines decided,
// and the hold ends converted. A refusal changes neither.
func (e *Engine) orderReplacing(ctx context.Context, in OrderInput) (allot.Order, error) {
	d, err := e.newDemandOf(ctx, e.store, in.Lines)
	if err != nil {
		return allot.Order{}, err
	}
	specs, _, err := e.withHold(ctx, d, in.ReplacesHold)
	if err != nil {
		return allot.Order{}, err
	}
	o, err := e.preparedOrder(d, in, in.CustomerID, "", "booked directly")
	if err != nil {
		return o, err
	}
	v, err := e.do(ctx, &op{specs: specs, shard: d.keys[0].ResourceID, apply: func(ctx context.Context, w *wtx) (any, error) {
		if err := d.missing(w); err != nil {
			return nil, err
		}
		// An order id given by the channel may be taken already.
		if _, err := w.LockOrder(ctx, o.ID); err == nil {
			return nil, &allot.Error{Code: allot.CodeAlreadyExists, Field: "id", Line: -1, Detail: fmt.Sprintf("order %q already exists", o.ID)}
		} else if !errors.Is(err, allot.ErrNotFound) {
			return nil, err
		}
		prev, err := w.LockHold(ctx, in.ReplacesHold)
		exists := err == nil
		if err != nil && !errors.Is(err, allot.ErrNotFound) {
			return nil, err
		}
		if exists && prev.Status == allot.HoldConverted {
			return nil, allot.Errorf(allot.CodeHoldConverted, "hold %q is already booked as order %q", prev.ID, prev.OrderID)
		}
		if _, err := e.expireOn(ctx, w, d.keys); err != nil {
			return nil, err
		}
		own, err := w.OwnerClaims(ctx, in.ReplacesHold)
		if err != nil {
			return nil, err
		}
		for _, c := range own {
			if _, ok := w.lk[c.BucketKey]; !ok {
				return nil, errRetry
			}
		}
		// Decide with the hold's claims given back; on a refusal put them
		// back as they were.
		for _, c := range own {
			w.lk[c.BucketKey].Held -= c.Quantity
		}
		if err := d.refusal(w.lk); err != nil {
			for _, c := range own {
				w.lk[c.BucketKey].Held += c.Quantity
			}
			return nil, err
		}
		if err := w.DeleteClaims(ctx, own); err != nil {
			return nil, err
		}
		for k, q := range d.need {
			w.lk[k].Booked += q
		}
		if err := w.AddClaims(ctx, d.claims(o.ID, allot.ClaimBooked)); err != nil {
			return nil, err
		}
		if exists && prev.Status == allot.HoldActive {
			if err := w.SetHoldStatus(ctx, prev.ID, allot.HoldConverted, o.ID); err != nil {
				return nil, err
			}
			prev.Status, prev.OrderID = allot.HoldConverted, o.ID
		}
		if exists && prev.Status != allot.HoldActive && prev.Status != allot.HoldConverted {
			// The lease was released or expired: the id is marked booked
			// all the same, as below.
			if err := w.SetHoldStatus(ctx, prev.ID, allot.HoldConverted, o.ID); err != nil {
				return nil, err
			}
		}
		if !exists {
			// No lease came first: the id is marked booked, so that a lease
			// asked for under it later (a C2 racing this B) is refused
			// instead of holding capacity beside the order.
			now := e.now()
			if err := w.InsertHold(ctx, allot.Hold{ID: in.ReplacesHold, Status: allot.HoldConverted, OrderID: o.ID,
				CustomerID: in.CustomerID, ExpiresAt: now, CreatedAt: now, Lines: in.Lines}); err != nil {
				return nil, err
			}
		}
		if exists && (len(own) > 0 || prev.Status == allot.HoldConverted) {
			// Its claims on lines the order does not have are free again:
			// publish the change.
			w.emit(e.event(allot.EventHoldReleased, firstResource(prev.Lines), "", prev.ID, prev))
		}
		return o, e.insertOrder(ctx, w, o)
	}})
	if err != nil {
		return allot.Order{}, err
	}
	return v.(allot.Order), nil
}

// SameLines reports whether two sets of lines ask for the same capacity.
func SameLines(a, b []allot.Line) bool {
	type key struct {
		r, slot string
		in, out string
	}
	k := func(l allot.Line) key {
		x := key{r: l.ResourceID, slot: l.Slot}
		if l.CheckIn != nil {
			x.in = l.CheckIn.String()
		}
		if l.CheckOut != nil {
			x.out = l.CheckOut.String()
		}
		return x
	}
	count := map[key]int{}
	for _, l := range a {
		count[k(l)] += l.Quantity
	}
	for _, l := range b {
		count[k(l)] -= l.Quantity
	}
	for _, n := range count {
		if n != 0 {
			return false
		}
	}
	return true
}
