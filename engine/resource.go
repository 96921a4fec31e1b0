package engine

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"sort"
	"time"
	"unicode/utf8"

	"github.com/allot/allot"
)

// idPattern is what client-chosen ids (resources, slots) may look like: safe
// in URLs and logs.
var idPattern = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$`)

// ResourceInput describes a new resource.
type ResourceInput struct {
	ID       string
	Name     string
	Kind     allot.Kind
	Capacity *int
	Slots    []SlotInput
	Price    *allot.Money
	// Threshold: see allot.Resource.
	Threshold *int
}

// SlotInput is one slot of a new slot resource; Capacity defaults to the
// resource's.
type SlotInput struct {
	ID       string
	StartsAt *time.Time
	Capacity *int
}

func checkCapacity(field string, c *int, required bool) error {
	if c == nil {
		if required {
			return allot.Invalid(field, "capacity is required")
		}
		return nil
	}
	if *c < 0 || *c > MaxCapacity {
		return allot.Invalid(field, "capacity must be between 0 and %d, got %d", MaxCapacity, *c)
	}
	return nil
}

func (e *Engine) slot(resourceCap int, field string, in SlotInput) (allot.Slot, error) {
	if !idPattern.MatchString(in.ID) {
		return allot.Slot{}, allot.Invalid(field+".id", "slot id %q must match %s", in.ID, idPattern)
	}
	if in.StartsAt == nil {
		return allot.Slot{}, allot.Invalid(field+".starts_at", "starts_at (RFC 3339) is required")
	}
	if y := in.StartsAt.UTC().Year(); y < 1 || y > 9999 {
		return allot.Slot{}, allot.Invalid(field+".starts_at", "starts_at must fall in the years 1 to 9999 (UTC)")
	}
	if err := checkCapacity(field+".capacity", in.Capacity, false); err != nil {
		return allot.Slot{}, err
	}
	c := resourceCap
	if in.Capacity != nil {
		c = *in.Capacity
	}
	return allot.Slot{ID: in.ID, StartsAt: in.StartsAt.UTC(), Capacity: c}, nil
}

// CreateResource stores a new resource with its buckets.
func (e *Engine) CreateResource(ctx context.Context, in ResourceInput) (allot.Resource, error) {
	r := allot.Resource{ID: in.ID, Name: in.Name, Kind: in.Kind, Price: in.Price, Threshold: in.Threshold, CreatedAt: e.now()}
	if in.Price != nil {
		p, err := in.Price.Exact()
		if err != nil {
			return r, allot.Invalid("price", "%v", err)
		}
		r.Price = &p
	}
	if in.Threshold != nil && (*in.Threshold < 0 || *in.Threshold > MaxCapacity) {
		return r, allot.Invalid("threshold", "threshold must be between 0 and %d", MaxCapacity)
	}
	if r.ID == "" {
		r.ID = NewID("res")
	} else if !idPattern.MatchString(r.ID) {
		return r, allot.Invalid("id", "id %q must match %s", r.ID, idPattern)
	}
	if r.Name == "" || utf8.RuneCountInString(r.Name) > 200 {
		return r, allot.Invalid("name", "name is required, at most 200 characters")
	}
	if !r.Kind.Valid() {
		return r, allot.Invalid("kind", "kind must be nightly, slot or stock, got %q", r.Kind)
	}
	if err := checkCapacity("capacity", in.Capacity, r.Kind != allot.KindSlot); err != nil {
		return r, err
	}
	if in.Capacity != nil {
		r.Capacity = *in.Capacity
	}
	if r.Kind != allot.KindSlot && len(in.Slots) > 0 {
		return r, allot.Invalid("slots", "only slot resources have slots")
	}
	if r.Kind == allot.KindSlot && len(in.Slots) > MaxSlots {
		return r, allot.Invalid("slots", "at most %d slots per request", MaxSlots)
	}
	seen := map[string]bool{}
	for i, si := range in.Slots {
		s, err := e.slot(r.Capacity, fmt.Sprintf("slots[%d]", i), si)
		if err != nil {
			return r, err
		}
		if seen[s.ID] {
			return r, allot.Invalid(fmt.Sprintf("slots[%d].id", i), "slot id %q appears twice", s.ID)
		}
		seen[s.ID] = true
		r.Slots = append(r.Slots, s)
	}
	sort.Slice(r.Slots, func(i, j int) bool { return r.Slots[i].ID < r.Slots[j].ID })
	v, err := e.do(ctx, &op{shard: r.ID, apply: func(ctx context.Context, w *wtx) (any, error) {
		err := w.InsertResource(ctx, r)
		if errors.Is(err, allot.ErrConflict) {
			return nil, &allot.Error{Code: allot.CodeAlreadyExists, Field: "id", Line: -1, Detail: fmt.Sprintf("resource %q already exists", r.ID)}
		}
		if err != nil {
			return nil, err
		}
		w.emit(e.event(allot.EventResourceCreated, r.ID, "", "", r))
		return r, nil
	}})
	if err != nil {
		return allot.Resource{}, err
	}
	return v.(allot.Resource), nil
}

// GetResource returns a resource with its current capacity: its slots', or
// for stock the pool's (restocking changes it); for nightly, the default of
// nights never set.
func (e *Engine) GetResource(ctx context.Context, id string) (allot.Resource, error) {
	r, err := e.store.GetResource(ctx, id)
	if errors.Is(err, allot.ErrNotFound) {
		return r, allot.Errorf(allot.CodeNotFound, "resource %q does not exist", id)
	}
	if err != nil || r.Kind != allot.KindStock {
		return r, err
	}
	bs, err := e.store.Buckets(ctx, id, "", "")
	if err == nil && len(bs) == 1 {
		r.Capacity = bs[0].Capacity
	}
	return r, err
}

// AddSlot adds a slot to a slot resource.
func (e *Engine) AddSlot(ctx context.Context, resourceID string, in SlotInput) (allot.Slot, error) {
	res, err := e.resource(ctx, e.store, resourceID)
	if err != nil {
		return allot.Slot{}, err
	}
	if res.Kind != allot.KindSlot {
		return allot.Slot{}, allot.Invalid("id", "resource %q is %s; only slot resources have slots", resourceID, res.Kind)
	}
	s, err := e.slot(res.Capacity, "", in)
	if err != nil {
		return s, err
	}
	v, err := e.do(ctx, &op{shard: resourceID, apply: func(ctx context.Context, w *wtx) (any, error) {
		err := w.InsertSlot(ctx, resourceID, s)
		if errors.Is(err, allot.ErrConflict) {
			return nil, &allot.Error{Code: allot.CodeAlreadyExists, Field: "id", Line: -1, Detail: fmt.Sprintf("resource %q already has slot %q", resourceID, s.ID)}
		}
		if err != nil {
			return nil, err
		}
		b := allot.Bucket{BucketKey: allot.BucketKey{ResourceID: resourceID, Key: s.ID}, Capacity: s.Capacity}
		// Later ops of this batch may book the new slot: it is theirs to
		// see, and it is written already.
		w.lk[b.BucketKey], w.orig[b.BucketKey] = &b, b
		w.emit(e.event(allot.EventCapacityChanged, resourceID, "", "", []BucketView{view(b)}))
		return s, nil
	}})
	if err != nil {
		return allot.Slot{}, err
	}
	return v.(allot.Slot), nil
}

// CapacityInput sets capacity: of nights From..To (To excluded) for nightly,
// of one Slot, or of the stock.
type CapacityInput struct {
	From, To *allot.Date
	Slot     string
	Capacity *int
}

// SetCapacity changes capacity, all buckets or none. Capacity below what a
// bucket has held plus booked is refused (after expiring expired holds).
func (e *Engine) SetCapacity(ctx context.Context, resourceID string, in CapacityInput) ([]BucketView, error) {
	res, err := e.resource(ctx, e.store, resourceID)
	if err != nil {
		return nil, err
	}
	if err := checkCapacity("capacity", in.Capacity, true); err != nil {
		return nil, err
	}
	var keys []string
	switch res.Kind {
	case allot.KindNightly:
		if in.Slot != "" {
			return nil, allot.Invalid("slot", "resource %q is nightly: give from and to, not slot", resourceID)
		}
		if keys, err = nightRange(in.From, in.To); err != nil {
			return nil, err
		}
	case allot.KindSlot:
		if in.From != nil || in.To != nil {
			return nil, allot.Invalid("from", "resource %q is a slot resource: give slot, not from/to", resourceID)
		}
		if in.Slot == "" {
			return nil, allot.Invalid("slot", "slot is required for a slot resource")
		}
		keys = []string{in.Slot}
	default:
		if in.From != nil || in.To != nil || in.Slot != "" {
			return nil, allot.Invalid("capacity", "resource %q is a stock item: give only capacity", resourceID)
		}
		keys = []string{allot.StockKey}
	}
	specs := make([]allot.BucketSpec, len(keys))
	bkeys := make([]allot.BucketKey, len(keys))
	for i, k := range keys {
		bkeys[i] = allot.BucketKey{ResourceID: resourceID, Key: k}
		specs[i] = allot.BucketSpec{BucketKey: bkeys[i], DefaultCapacity: res.Capacity, Create: res.Kind == allot.KindNightly}
	}
	c := *in.Capacity
	v, err := e.do(ctx, &op{specs: specs, shard: resourceID, apply: func(ctx context.Context, w *wtx) (any, error) {
		if _, ok := w.need(bkeys); !ok {
			return nil, allot.Errorf(allot.CodeNotFound, "resource %q has no slot %q", resourceID, in.Slot)
		}
		over := func() *allot.Bucket {
			for _, k := range bkeys {
				if b := w.lk[k]; b.Held+b.Booked > c {
					return b
				}
			}
			return nil
		}
		if over() != nil {
			if _, err := e.expireOn(ctx, w, bkeys); err != nil {
				return nil, err
			}
			if b := over(); b != nil {
				return nil, &allot.Error{Code: allot.CodeCapacityBelowUsage, Field: "capacity", Line: -1, Bucket: &b.BucketKey,
					Detail: fmt.Sprintf("bucket %q has %d held and %d booked; capacity cannot go below %d", b.Key, b.Held, b.Booked, b.Held+b.Booked)}
			}
		}
		out := make([]BucketView, 0, len(bkeys))
		for _, k := range bkeys {
			w.lk[k].Capacity = c
			out = append(out, view(*w.lk[k]))
		}
		w.emit(e.event(allot.EventCapacityChanged, resourceID, "", "", out))
		return out, nil
	}})
	if err != nil {
		return nil, err
	}
	return v.([]BucketView), nil
}

func nightRange(from, to *allot.Date) ([]string, error) {
	if from == nil || to == nil {
		return nil, allot.Invalid("from", "from and to (YYYY-MM-DD, to excluded) are required for a nightly resource")
	}
	n := from.DaysUntil(*to)
	if n < 1 {
		return nil, allot.Invalid("to", "to %s must be after from %s", to, from)
	}
	if n > MaxRangeNights {
		return nil, allot.Invalid("to", "a range may span at most %d nights, got %d", MaxRangeNights, n)
	}
	return allot.Nights(*from, *to), nil
}

// BucketView is a bucket as clients see it.
type BucketView struct {
	Key       string `json:"key"`
	Capacity  int    `json:"capacity"`
	Held      int    `json:"held"`
	Booked    int    `json:"booked"`
	Available int    `json:"available"`
}

func view(b allot.Bucket) BucketView {
	return BucketView{Key: b.Key, Capacity: b.Capacity, Held: b.Held, Booked: b.Booked, Available: b.Available()}
}

// Availability is a resource's buckets over a range.
type Availability struct {
	ResourceID string       `json:"resource_id"`
	Buckets    []BucketView `json:"buckets"`
}

// Availability reads buckets: nights From..To (To excluded, required) for
// nightly, slots starting in [From, To) (all when absent) for slot, the pool
// for stock. Nights never touched show the default capacity.
func (e *Engine) Availability(ctx context.Context, resourceID string, from, to *allot.Date) (Availability, error) {
	res, err := e.GetResource(ctx, resourceID)
	if err != nil {
		return Availability{}, err
	}
	a := Availability{ResourceID: resourceID, Buckets: []BucketView{}}
	switch res.Kind {
	case allot.KindNightly:
		nights, err := nightRange(from, to)
		if err != nil {
			return a, err
		}
		stored, err := e.store.Buckets(ctx, resourceID, nights[0], to.String())
		if err != nil {
			return a, err
		}
		byKey := map[string]allot.Bucket{}
		for _, b := range stored {
			byKey[b.Key] = b
		}
		for _, n := range nights {
			b, ok := byKey[n]
			if !ok {
				b = allot.Bucket{BucketKey: allot.BucketKey{ResourceID: resourceID, Key: n}, Capacity: res.Capacity}
			}
			a.Buckets = append(a.Buckets, view(b))
		}
	case allot.KindSlot:
		if (from == nil) != (to == nil) {
			return a, allot.Invalid("from", "give both from and to, or neither")
		}
		if from != nil && !from.Before(*to) {
			return a, allot.Invalid("to", "to %s must be after from %s", to, from)
		}
		stored, err := e.store.Buckets(ctx, resourceID, "", "")
		if err != nil {
			return a, err
		}
		starts := map[string]time.Time{}
		for _, s := range res.Slots {
			starts[s.ID] = s.StartsAt
		}
		for _, b := range stored {
			st := starts[b.Key]
			if from != nil && (st.Before(from.Time()) || !st.Before(to.Time())) {
				continue
			}
			a.Buckets = append(a.Buckets, view(b))
		}
	default:
		stored, err := e.store.Buckets(ctx, resourceID, "", "")
		if err != nil {
			return a, err
		}
		for _, b := range stored {
			a.Buckets = append(a.Buckets, view(b))
		}
	}
	return a, nil
}

// RetireOpportunities takes a slot resource's opportunities out of the
// opportunity feeds: they are published as deleted from now on. Bookings
// already made stand; the OpenActive test interface retires its test data
// this way.
func (e *Engine) RetireOpportunities(ctx context.Context, resourceID string) error {
	res, err := e.GetResource(ctx, resourceID)
	if err != nil {
		return err
	}
	if res.Kind != allot.KindSlot {
		return allot.Invalid("resource_id", "only slot resources are opportunities")
	}
	_, err = e.do(ctx, &op{shard: res.ID, apply: func(ctx context.Context, w *wtx) (any, error) {
		w.emit(e.event(allot.EventResourceRetired, res.ID, "", "", res))
		return nil, nil
	}})
	return err
}
