package engine

import (
	"context"
	"errors"
	"fmt"
	"sort"

	"github.com/allot/allot"
)

// demand is what a set of lines asks of buckets, validated.
type demand struct {
	lines []allot.Line
	res   map[string]allot.Resource
	need  map[allot.BucketKey]int
	line  map[allot.BucketKey]int // the first line that touches the bucket
	keys  []allot.BucketKey       // sorted
}

// demandOf validates lines against their resources and sums what each
// bucket must give.
func (e *Engine) demandOf(ctx context.Context, r allot.Reader, lines []allot.Line) (*demand, error) {
	if len(lines) == 0 {
		return nil, allot.Invalid("lines", "at least one line is required")
	}
	if len(lines) > MaxLines {
		return nil, allot.Invalid("lines", "at most %d lines are allowed, got %d", MaxLines, len(lines))
	}
	d := &demand{lines: lines, res: map[string]allot.Resource{}, need: map[allot.BucketKey]int{}, line: map[allot.BucketKey]int{}}
	for i, l := range lines {
		f := func(name string) string { return fmt.Sprintf("lines[%d].%s", i, name) }
		if l.ResourceID == "" {
			return nil, allot.Invalid(f("resource_id"), "resource_id is required")
		}
		if l.Quantity < 1 || l.Quantity > MaxQuantity {
			return nil, allot.Invalid(f("quantity"), "quantity must be between 1 and %d, got %d", MaxQuantity, l.Quantity)
		}
		res, ok := d.res[l.ResourceID]
		if !ok {
			var err error
			res, err = e.resource(ctx, r, l.ResourceID)
			if allot.CodeOf(err) == allot.CodeNotFound {
				return nil, allot.Invalid(f("resource_id"), "resource %q does not exist", l.ResourceID)
			}
			if err != nil {
				return nil, err
			}
			d.res[l.ResourceID] = res
		}
		keys, err := lineKeys(res, l, f)
		if err != nil {
			return nil, err
		}
		for _, k := range keys {
			bk := allot.BucketKey{ResourceID: l.ResourceID, Key: k}
			if _, seen := d.need[bk]; !seen {
				d.line[bk] = i
				d.keys = append(d.keys, bk)
			}
			d.need[bk] += l.Quantity
		}
	}
	sort.Slice(d.keys, func(i, j int) bool { return d.keys[i].Less(d.keys[j]) })
	return d, nil
}

// newDemandOf is demandOf for capacity asked for now (a hold, a lease, an
// order of lines): no stay may begin before yesterday in UTC, the earliest
// date that is still today somewhere. Releasing, expiring or cancelling
// what was asked for earlier uses demandOf: a stay past is still let go.
func (e *Engine) newDemandOf(ctx context.Context, r allot.Reader, lines []allot.Line) (*demand, error) {
	d, err := e.demandOf(ctx, r, lines)
	if err != nil {
		return nil, err
	}
	earliest := allot.DateOf(e.now().UTC()).AddDays(-1)
	for i, l := range lines {
		if l.CheckIn != nil && l.CheckIn.Before(earliest) {
			return nil, allot.Invalid(fmt.Sprintf("lines[%d].check_in", i), "check_in %s is in the past (the earliest is %s)", l.CheckIn, earliest)
		}
	}
	return d, nil
}

// lineKeys lists the bucket keys one line claims, checking that the line has
// exactly the fields its resource's kind needs.
func lineKeys(res allot.Resource, l allot.Line, f func(string) string) ([]string, error) {
	switch res.Kind {
	case allot.KindNightly:
		if l.Slot != "" {
			return nil, allot.Invalid(f("slot"), "resource %q is nightly: give check_in and check_out, not slot", res.ID)
		}
		if l.CheckIn == nil || l.CheckOut == nil {
			missing := "check_in"
			if l.CheckIn != nil {
				missing = "check_out"
			}
			return nil, allot.Invalid(f(missing), "resource %q is nightly: check_in and check_out (YYYY-MM-DD) are required", res.ID)
		}
		n := l.CheckIn.DaysUntil(*l.CheckOut)
		if n < 1 {
			return nil, allot.Invalid(f("check_out"), "check_out %s must be after check_in %s", l.CheckOut, l.CheckIn)
		}
		if n > MaxStayNights {
			return nil, allot.Invalid(f("check_out"), "a stay may be at most %d nights, got %d", MaxStayNights, n)
		}
		return allot.Nights(*l.CheckIn, *l.CheckOut), nil
	case allot.KindSlot:
		if l.CheckIn != nil || l.CheckOut != nil {
			return nil, allot.Invalid(f("check_in"), "resource %q is a slot resource: give slot, not check_in/check_out", res.ID)
		}
		if l.Slot == "" {
			return nil, allot.Invalid(f("slot"), "resource %q is a slot resource: slot is required", res.ID)
		}
		return []string{l.Slot}, nil
	default:
		if l.CheckIn != nil || l.CheckOut != nil || l.Slot != "" {
			return nil, allot.Invalid(f("resource_id"), "resource %q is a stock item: give only resource_id and quantity", res.ID)
		}
		return []string{allot.StockKey}, nil
	}
}

func (d *demand) specs() []allot.BucketSpec {
	out := make([]allot.BucketSpec, len(d.keys))
	for i, k := range d.keys {
		res := d.res[k.ResourceID]
		out[i] = allot.BucketSpec{BucketKey: k, DefaultCapacity: res.Capacity, Create: res.Kind == allot.KindNightly}
	}
	return out
}

func (d *demand) claims(owner string, kind allot.ClaimKind) []allot.Claim {
	out := make([]allot.Claim, len(d.keys))
	for i, k := range d.keys {
		out[i] = allot.Claim{BucketKey: k, OwnerID: owner, Kind: kind, Quantity: d.need[k]}
	}
	return out
}

// op makes an op that locks d's buckets and runs apply once they are known
// to exist.
func (d *demand) op(apply func(ctx context.Context, w *wtx) (any, error)) *op {
	return &op{specs: d.specs(), shard: d.keys[0].ResourceID, apply: func(ctx context.Context, w *wtx) (any, error) {
		if err := d.missing(w); err != nil {
			return nil, err
		}
		return apply(ctx, w)
	}}
}

// missing refuses d when one of its buckets is not locked in w: a slot
// that does not exist.
func (d *demand) missing(w *wtx) error {
	if k, ok := w.need(d.keys); !ok {
		i := d.line[k]
		return &allot.Error{Code: allot.CodeInvalid, Field: fmt.Sprintf("lines[%d].slot", i), Line: i,
			Detail: fmt.Sprintf("resource %q has no slot %q", k.ResourceID, k.Key)}
	}
	return nil
}

// withHold returns d's bucket specs merged with those of hold id, if it
// exists, so that an operation that replaces the hold locks both, in the
// one key order; and the hold as it was read.
func (e *Engine) withHold(ctx context.Context, d *demand, id string) ([]allot.BucketSpec, *allot.Hold, error) {
	specs := d.specs()
	h, err := e.store.GetHold(ctx, id)
	if errors.Is(err, allot.ErrNotFound) {
		return specs, nil, nil
	}
	if err != nil {
		return nil, nil, err
	}
	hd, err := e.demandOf(ctx, e.store, h.Lines)
	if err != nil {
		return nil, nil, err
	}
	return mergeSpecs(specs, hd.specs()), &h, nil
}

// refusal returns the capacity error for the first line (then bucket) that
// does not fit in lk, or nil if all fit.
func (d *demand) refusal(lk locked) error {
	var bad *allot.BucketKey
	for i := range d.keys {
		k := d.keys[i]
		if lk[k].Available() >= d.need[k] {
			continue
		}
		if bad == nil || d.line[k] < d.line[*bad] {
			bad = &d.keys[i]
		}
	}
	if bad == nil {
		return nil
	}
	b, need, line := lk[*bad], d.need[*bad], d.line[*bad]
	code := allot.CodeInsufficientCapacity
	what := "is gone"
	if need <= b.Capacity-b.Booked {
		// Free it would fit: other unexpired holds keep what is missing.
		code, what = allot.CodeCapacityReservedByHold, "is reserved by other holds"
	}
	return &allot.Error{Code: code, Line: line, Bucket: bad,
		Detail: fmt.Sprintf("line %d asks %d of resource %q bucket %q; only %d available (capacity %d, booked %d, held %d): the rest %s",
			line, need, bad.ResourceID, bad.Key, b.Available(), b.Capacity, b.Booked, b.Held, what)}
}

// fit checks that d fits in the locked buckets, first expiring expired
// holds on them if it does not, so that an expired hold never causes a
// refusal.
func (e *Engine) fit(ctx context.Context, w *wtx, d *demand) error {
	if d.refusal(w.lk) == nil {
		return nil
	}
	if _, err := e.expireOn(ctx, w, d.keys); err != nil {
		return err
	}
	return d.refusal(w.lk)
}
