package engine

import (
	"context"
	"encoding/json"
	"fmt"
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
	err := e.store.Write(ctx, func(tx allot.Tx) error {
		n = 0
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
		for i, ev := range evs {
			seqs[i], nos[i] = ev.Seq, last+int64(i)+1
			data, err := orderOf(ev)
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
		return tx.Sequence(ctx, seqs, nos, items)
	})
	return n, err
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
			return nil, fmt.Errorf("event %s (%s) has no order in its payload: %v", ev.ID, ev.Type, err)
		}
		return p.Order, nil
	}
	return nil, nil
}

// RunSequencer numbers new events every interval until ctx ends.
func (e *Engine) RunSequencer(ctx context.Context, interval time.Duration) {
	e.every(ctx, interval, "sequencing events", 1000, e.Sequence)
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
	if _, err := e.Sequence(ctx, 1000); err != nil {
		return nil, err
	}
	return e.store.FeedItems(ctx, afterChange, limit)
}
