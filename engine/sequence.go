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

// appendOwnEvents appends a batch's events; on a serial store it also
// numbers them in the batch's transaction. It must never cost the
// bookings: if numbering fails, what it wrote is undone and the events are
// left to the background sequencer, which reports the failure. (A serial
// store without savepoints could not undo it; numbering there is part of
// the batch. The SQLite store has them.)
//
// Where the store can write events already numbered and no older event
// waits for a number, the numbers are worked out from the events in hand
// and written with them: nothing is read back, and no event row is written
// twice. Otherwise (a backlog, such as events written before an upgrade)
// the batch numbers the oldest waiting events first, a few more than its
// own, so that numbers keep commit order.
func (e *Engine) appendOwnEvents(ctx context.Context, tx allot.Tx, evs []allot.Event) error {
	if len(evs) == 0 {
		return nil
	}
	sp, canUndo := tx.(allot.Savepointer)
	on, canNumber := tx.(allot.OwnNumberer)
	if !e.serial || time.Now().UnixNano() < e.inlineOffUntil.Load() {
		// Not serial, or numbering failed a moment ago: do not make every
		// batch fail it again.
		return tx.AppendEvents(ctx, evs)
	}
	if !canUndo {
		if err := tx.AppendEvents(ctx, evs); err != nil {
			return err
		}
		_, err := e.sequenceIn(ctx, tx, len(evs)+64)
		return err
	}
	if canNumber {
		failed, err := sp.Savepoint(ctx, func() error { return e.numberInMemory(ctx, tx, on, evs) })
		if err != nil {
			return err
		}
		if failed == nil {
			return nil
		}
		for i := range evs {
			evs[i].ChangeNo = 0
		}
		if !errors.Is(failed, errBacklog) {
			e.inlineNumberingFailed(failed)
			return tx.AppendEvents(ctx, evs)
		}
	}
	if err := tx.AppendEvents(ctx, evs); err != nil {
		return err
	}
	failed, err := sp.Savepoint(ctx, func() error {
		_, err := e.sequenceIn(ctx, tx, len(evs)+64)
		return err
	})
	if err != nil {
		return err
	}
	if failed != nil {
		e.inlineNumberingFailed(failed)
	}
	return nil
}

// errBacklog: older events wait for numbers, so a batch's own cannot be
// numbered first.
var errBacklog = errors.New("engine: older events wait for change numbers")

// numberInMemory gives evs the numbers after the last one given, and
// appends them with those numbers, their feed items and opportunity
// changes, in tx.
func (e *Engine) numberInMemory(ctx context.Context, tx allot.Tx, on allot.OwnNumberer, evs []allot.Event) error {
	backlog, err := on.Unsequenced(ctx)
	if err != nil {
		return err
	}
	if backlog {
		return errBacklog
	}
	last, err := tx.LastChangeNumber(ctx)
	if err != nil {
		return err
	}
	nos, items, changes, err := e.numbering(ctx, tx, evs, last)
	if err != nil {
		return err
	}
	for i := range evs {
		evs[i].ChangeNo = nos[i]
	}
	if err := tx.AppendEvents(ctx, evs); err != nil {
		return err
	}
	return tx.Sequence(ctx, nil, nos, items, changes)
}

// inlineNumberingFailed turns numbering in batches off for a second, and
// warns, at most every 10 seconds.
func (e *Engine) inlineNumberingFailed(failed error) {
	now := time.Now().UnixNano()
	e.inlineOffUntil.Store(now + int64(time.Second))
	if last := e.sequenceWarned.Load(); now-last > int64(10*time.Second) && e.sequenceWarned.CompareAndSwap(last, now) {
		e.log.Warn("a batch could not number its events; they are left to the background sequencer", "err", failed)
	}
}

// sequenceIn numbers up to limit unsequenced events in tx. On a store whose
// writers run one at a time (SQLite) a batch may number events this way
// before it commits: commit order is then write order, so no late commit
// can be skipped, and no separate sequencing transaction holds the only
// write lock for a backlog's worth of events while every batch waits.
func (e *Engine) sequenceIn(ctx context.Context, tx allot.Tx, limit int) (int, error) {
	ok, err := tx.LockSequencer(ctx)
	if err != nil || !ok {
		return 0, err
	}
	evs, err := tx.UnsequencedEvents(ctx, limit)
	if err != nil || len(evs) == 0 {
		return 0, err
	}
	last, err := tx.LastChangeNumber(ctx)
	if err != nil {
		return 0, err
	}
	nos, items, changes, err := e.numbering(ctx, tx, evs, last)
	if err != nil {
		return 0, err
	}
	seqs := make([]int64, len(evs))
	for i, ev := range evs {
		seqs[i] = ev.Seq
	}
	return len(evs), tx.Sequence(ctx, seqs, nos, items, changes)
}

// numbering gives evs the change numbers after last, in order, and works
// out what they change in the Orders feed and the opportunity feed.
func (e *Engine) numbering(ctx context.Context, r allot.Reader, evs []allot.Event, last int64) (nos []int64, items []allot.FeedItem, changes []allot.OpportunityChange, err error) {
	nos = make([]int64, len(evs))
	latest := map[string]int{} // order id -> index in items
	opps := map[allot.BucketKey]allot.OpportunityChange{}
	for i, ev := range evs {
		nos[i] = last + int64(i) + 1
		touched, err := e.opportunitiesOf(ctx, r, ev)
		if e.unreadable(ev, err) {
			continue
		}
		if err != nil {
			return nil, nil, nil, err
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
			return nil, nil, nil, err
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
	// Each opportunity gets a number of its own, after the events', in
	// the order of the events that last changed them: a page boundary
	// must never fall between two items of one number.
	changes = make([]allot.OpportunityChange, 0, len(opps))
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
	return nos, items, changes, nil
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
