package engine

import (
	"context"
	"fmt"

	"github.com/allot/allot"
)

// Audit is what Check found on a set of resources.
type Audit struct {
	Buckets int `json:"buckets"`
	// Oversold is the units sold beyond capacity, summed over buckets: it
	// must be 0.
	Oversold int `json:"oversold"`
	// Held and Booked are the totals over the audited buckets.
	Held   int `json:"held"`
	Booked int `json:"booked"`
	// Violations describes every broken invariant.
	Violations []string `json:"violations,omitempty"`
}

// Check audits the capacity invariants of the given resources against the
// store: held + booked <= capacity per bucket, held and booked equal to the
// sums of the live claims, held claims owned by holds that still hold, and
// booked claims owned by live orders.
func Check(ctx context.Context, r allot.Reader, resourceIDs ...string) (Audit, error) {
	var a Audit
	bad := func(format string, args ...any) { a.Violations = append(a.Violations, fmt.Sprintf(format, args...)) }
	for _, id := range resourceIDs {
		bs, err := r.Buckets(ctx, id, "", "")
		if err != nil {
			return a, err
		}
		cs, err := r.Claims(ctx, id)
		if err != nil {
			return a, err
		}
		held, booked := map[string]int{}, map[string]int{}
		owners := map[string]allot.ClaimKind{}
		for _, c := range cs {
			owners[c.OwnerID] = c.Kind
			if c.Kind == allot.ClaimHeld {
				held[c.Key] += c.Quantity
			} else {
				booked[c.Key] += c.Quantity
			}
		}
		for _, b := range bs {
			a.Buckets++
			a.Held += b.Held
			a.Booked += b.Booked
			if over := b.Held + b.Booked - b.Capacity; over > 0 {
				a.Oversold += over
				bad("%s/%s oversold by %d: capacity %d held %d booked %d", id, b.Key, over, b.Capacity, b.Held, b.Booked)
			}
			if b.Held < 0 || b.Booked < 0 {
				bad("%s/%s negative: held %d booked %d", id, b.Key, b.Held, b.Booked)
			}
			if b.Held != held[b.Key] || b.Booked != booked[b.Key] {
				bad("%s/%s: held %d booked %d, but claims sum to held %d booked %d", id, b.Key, b.Held, b.Booked, held[b.Key], booked[b.Key])
			}
		}
		for owner, kind := range owners {
			if kind == allot.ClaimHeld {
				h, err := r.GetHold(ctx, owner)
				if err != nil {
					return a, fmt.Errorf("held claim of %s: %w", owner, err)
				}
				if h.Status == allot.HoldConverted || h.Status == allot.HoldReleased {
					bad("hold %s is %s but still holds capacity", owner, h.Status)
				}
				continue
			}
			o, err := r.GetOrder(ctx, owner)
			if err != nil {
				return a, fmt.Errorf("booked claim of %s: %w", owner, err)
			}
			if !o.Status.Live() {
				bad("order %s is %s but still books capacity", owner, o.Status)
			}
		}
	}
	return a, nil
}
