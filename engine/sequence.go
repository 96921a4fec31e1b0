package engine

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"time"

	"github.com/allot/allot"
)

// Sequence gives change numbers to up to limit committed events that have
// none, in Seq order, and brings the Orders feed up to date with them. It
// returns how many events it numbered.
//
// Why after commit: Seq comes from a sequence when the event is written, so
// two transactions can commit in the other order than their Seqs; a reader
// paging by Seq could pass a Seq whose transaction had not committed yet and
// never see it (the delayed-item-interleaving race). Change numbers are
// given only to committed events, by one sequencer at a time, in
// increasing order: an event that commits late gets a later number, so a
// reader paging by change number never skips one. Events of one resource
// keep their order: their transactions serialize on the bucket locks and
// write their events after taking them.
func (e *Engine) Sequence(ctx context.Context, limit int) (int, error) {
	n := 0
	err := e.store.Write(ctx, func(tx allot.Tx) (err error) {
		n, err = e.sequenceIn(ctx, tx, limit)
		return err
	})
	return n, err
}

// numberOwnEvents numbers, on a serial store, the events a batch has just
// written (n of them), in the batch's transaction. It must never cost the
// bookings: if numbering fails, what it wrote is undone and the events are
// left to the background sequencer, which reports the failure; so is a
// backlog (events written before an upgrade), a little at a time.
func (e *Engine) numberOwnEvents(ctx context.Context, tx allot.Tx, n int) error {
	if time.Now().UnixNano() < e.inlineOffUntil.Load() {
		return nil // it failed a moment ago: do not make every batch fail it again
	}
	sp, ok := tx.(allot.Savepointer)
	if !ok {
		_, err := e.sequenceIn(ctx, tx, n+64)
		return err
	}
	failed, err := sp.Savepoint(ctx, func() error {
		_, err := e.sequenceIn(ctx, tx, n+64)
		return err
	})
	if err != nil {
		return err
	}
	if failed != nil {
		now := time.Now().UnixNano()
		e.inlineOffUntil.Store(now + int64(time.Second))
		if last := e.sequenceWarned.Load(); now-last > int64(10*time.Second) && e.sequenceWarned.CompareAndSwap(last, now) {
			e.log.Warn("a batch could not number its events; they are left to the background sequencer", "err", failed)
		}
	}
	return nil
}

// sequenceIn numbers up to limit unsequenced events in tx. On a store whose
// writers run one at a time (SQLite) every batch numbers its own events
// this way before it commits: commit order is then write order, so no
// late commit can be skipped, and no separate sequencing transaction
// holds the only write lock for a backlog's worth of events while every
// batch waits.
func (e *Engine) sequenceIn(ctx context.Context, tx allot.Tx, limit int) (int, error) {
	n := 0
	err := func() error {
		ok, err := tx.LockSequencer(ctx)
		if err != nil || !ok {
			return err
		}
		evs, err := tx.UnsequencedEvents(ctx, limit)
		if err != nil || len(evs) == 0 {
			return err
		}
		last, err := tx.LastChangeNumber(ctx)
		if err != nil {
			return err
		}
		seqs, nos := make([]int64, len(evs)), make([]int64, len(evs))
		latest := map[string]int{} // order id -> index in items
		var items []allot.FeedItem
		opps := map[allot.BucketKey]allot.OpportunityChange{}
		for i, ev := range evs {
			seqs[i], nos[i] = ev.Seq, last+int64(i)+1
			touched, err := e.opportunitiesOf(ctx, tx, ev)
			if e.unreadable(ev, err) {
				continue
			}
			if err != nil {
				return err
			}
			for _, k := range touched {
				del := ev.Type == allot.EventResourceRetired || opps[k].Deleted
				opps[k] = allot.OpportunityChange{ResourceID: k.ResourceID, Key: k.Key, ChangeNo: nos[i], Modified: ev.At, Deleted: del}
			}
			data, err := orderOf(ev)
			if e.unreadable(ev, err) {
				continue
			}
			if err != nil {
				return err
			}
			if data == nil {
				continue
			}
			it := allot.FeedItem{ID: ev.OrderID, ChangeNo: nos[i], Modified: ev.At, Data: data}
			if j, seen := latest[ev.OrderID]; seen {
				items[j] = it // one row per order and statement: keep the latest
				continue
			}
			latest[ev.OrderID] = len(items)
			items = append(items, it)
		}
		n = len(evs)
		// Each opportunity gets a number of its own, after the events', in
		// the order of the events that last changed them: a page boundary
		// must never fall between two items of one number.
		changes := make([]allot.OpportunityChange, 0, len(opps))
		for _, o := range opps {
			changes = append(changes, o)
		}
		sort.Slice(changes, func(i, j int) bool {
			a, b := changes[i], changes[j]
			if a.ChangeNo != b.ChangeNo {
				return a.ChangeNo < b.ChangeNo
			}
			return allot.BucketKey{ResourceID: a.ResourceID, Key: a.Key}.Less(allot.BucketKey{ResourceID: b.ResourceID, Key: b.Key})
		})
		for j := range changes {
			changes[j].ChangeNo = last + int64(len(evs)+j) + 1
		}
		return tx.Sequence(ctx, seqs, nos, items, changes)
	}()
	return n, err
}

// badPayload is an event whose payload does not say what its type
// promises: a bug that wrote it, never a passing failure.
type badPayload struct{ error }

func (b badPayload) Unwrap() error { return b.error }

// unreadable reports err as an event's bad payload. Such an event is still
// numbered, so that it is published as it stands and numbering goes on past
// it, but it adds nothing to the feeds: one bad event must not stop every
// feed, relay and webhook behind it.
func (e *Engine) unreadable(ev allot.Event, err error) bool {
	var b badPayload
	if !errors.As(err, &b) {
		return false
	}
	e.log.Error("an event's payload cannot be read: it is numbered and published as it is, and no feed shows it", "event", ev.ID, "type", ev.Type, "err", err)
	return true
}

// orderOf extracts the order an order event describes, or nil for events
// about something else.
func orderOf(ev allot.Event) ([]byte, error) {
	switch ev.Type {
	case allot.EventOrderCreated:
		return ev.Payload, nil
	case allot.EventOrderStatus:
		var p struct {
			Order json.RawMessage `json:"order"`
		}
		if err := json.Unmarshal(ev.Payload, &p); err != nil || len(p.Order) == 0 {
			return nil, badPayload{fmt.Errorf("event %s (%s) has no order in its payload: %v", ev.ID, ev.Type, err)}
		}
		return p.Order, nil
	}
	return nil, nil
}

// opportunitiesOf lists the opportunities an event changes: a slot
// resource (Key "") when it is created, and each slot whose description or
// remaining capacity the event changes. Other kinds have no opportunities.
func (e *Engine) opportunitiesOf(ctx context.Context, r allot.Reader, ev allot.Event) ([]allot.BucketKey, error) {
	var lines []allot.Line
	var keys []string
	// Cheap tests first: the sequencer holds the write lock (on SQLite, the
	// only one) while it reads every event of a hot run.
	switch ev.Type {
	case allot.EventHoldCreated, allot.EventHoldReleased, allot.EventHoldExpired, allot.EventOrderCreated, allot.EventOrderStatus:
		if !bytes.Contains(ev.Payload, []byte(`"slot":"`)) {
			return nil, nil // no line names a slot
		}
	case allot.EventCapacityChanged, allot.EventResourceCreated, allot.EventResourceRetired:
		res, err := e.resourceNoCache(ctx, r, ev.ResourceID)
		if err != nil {
			return nil, err
		}
		if res.Kind != allot.KindSlot {
			return nil, nil
		}
	default:
		return nil, nil
	}
	switch ev.Type {
	case allot.EventResourceCreated, allot.EventResourceRetired:
		var res allot.Resource
		if err := json.Unmarshal(ev.Payload, &res); err != nil {
			return nil, badPayload{fmt.Errorf("event %s: %w", ev.ID, err)}
		}
		if res.Kind != allot.KindSlot {
			return nil, nil
		}
		out := []allot.BucketKey{{ResourceID: res.ID}}
		for _, s := range res.Slots {
			out = append(out, allot.BucketKey{ResourceID: res.ID, Key: s.ID})
		}
		return out, nil
	case allot.EventCapacityChanged:
		var bs []struct {
			Key string `json:"key"`
		}
		if err := json.Unmarshal(ev.Payload, &bs); err != nil {
			return nil, badPayload{fmt.Errorf("event %s: %w", ev.ID, err)}
		}
		for _, b := range bs {
			keys = append(keys, b.Key)
		}
	case allot.EventHoldCreated, allot.EventHoldReleased, allot.EventHoldExpired:
		var h allot.Hold
		if err := json.Unmarshal(ev.Payload, &h); err != nil {
			return nil, badPayload{fmt.Errorf("event %s: %w", ev.ID, err)}
		}
		lines = h.Lines
	case allot.EventOrderCreated, allot.EventOrderStatus:
		data, err := orderOf(ev)
		if err != nil {
			return nil, err
		}
		var o allot.Order
		if err := json.Unmarshal(data, &o); err != nil {
			return nil, badPayload{fmt.Errorf("event %s: %w", ev.ID, err)}
		}
		lines = lineList(o.Lines)
	default:
		return nil, nil
	}
	var out []allot.BucketKey
	for _, k := range keys {
		out = append(out, allot.BucketKey{ResourceID: ev.ResourceID, Key: k})
	}
	for _, l := range lines {
		if l.Slot != "" {
			out = append(out, allot.BucketKey{ResourceID: l.ResourceID, Key: l.Slot})
		}
	}
	// Only slot resources are opportunities.
	kept := out[:0]
	for _, k := range out {
		res, err := e.resourceNoCache(ctx, r, k.ResourceID)
		if err != nil {
			return nil, err
		}
		if res.Kind == allot.KindSlot {
			kept = append(kept, k)
		}
	}
	return kept, nil
}

// RunSequencer numbers new events every interval until ctx ends.
// While it runs, feed reads only read: a public feed polled by many
// clients must not take the write lock (on SQLite, the only one) on each
// request; what they show lags by at most interval.
func (e *Engine) RunSequencer(ctx context.Context, interval time.Duration) {
	e.sequencing.Add(1)
	defer e.sequencing.Add(-1)
	e.every(ctx, interval, "sequencing events", 1000, e.Sequence)
}

// catchUp numbers committed events for a feed read, unless a background
// sequencer does it.
func (e *Engine) catchUp(ctx context.Context) error {
	if e.sequencing.Load() > 0 {
		return nil
	}
	_, err := e.Sequence(ctx, 1000)
	return err
}

// OrdersFeed numbers what has committed, then reads the feed after a
// change number.
func (e *Engine) OrdersFeed(ctx context.Context, afterChange int64, limit int) ([]allot.FeedItem, error) {
	if afterChange < 0 {
		return nil, allot.Invalid("afterChangeNumber", "afterChangeNumber must not be negative")
	}
	if limit == 0 {
		limit = 500
	}
	if limit < 1 || limit > 1000 {
		return nil, allot.Invalid("limit", "limit must be between 1 and 1000")
	}
	if err := e.catchUp(ctx); err != nil {
		return nil, err
	}
	return e.store.FeedItems(ctx, afterChange, limit)
}

// OpportunityFeed numbers what has committed, then reads the opportunities
// (slot resources and their slots) changed after a change number.
func (e *Engine) OpportunityFeed(ctx context.Context, afterChange int64, limit int) ([]allot.OpportunityChange, error) {
	if afterChange < 0 {
		return nil, allot.Invalid("afterChangeNumber", "afterChangeNumber must not be negative")
	}
	if limit < 1 || limit > 1000 {
		return nil, allot.Invalid("limit", "limit must be between 1 and 1000")
	}
	if err := e.catchUp(ctx); err != nil {
		return nil, err
	}
	return e.store.OpportunityChanges(ctx, afterChange, limit)
}
