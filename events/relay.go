// Package events moves the transactional outbox to the outside world: a
// relay per sink reads events by change number (only committed, sequenced
// events: see engine.Sequence), publishes them, waits for the sink's
// acknowledgement, and only then advances its cursor. A crash at any point
// re-sends from the last saved cursor: every event reaches every sink at
// least once, in change-number order, and consumers de-duplicate by event id
// (JetStream does it itself, by Nats-Msg-Id).
package events

import (
	"context"
	"encoding/json"
	"log/slog"
	"time"

	"github.com/allot/allot"
)

// Sink is one destination of the outbox.
type Sink interface {
	// Name identifies the sink's cursor; keep it stable across restarts.
	Name() string
	// Publish sends evs in order and returns once the destination has
	// acknowledged every one of them.
	Publish(ctx context.Context, evs []allot.Event) error
	Close() error
}

// Relay moves events from a store's outbox to one sink.
type Relay struct {
	store allot.Store
	sink  Sink
	log   *slog.Logger
	// Batch bounds the events published at once; Idle is the pause when
	// there is nothing new.
	Batch int
	Idle  time.Duration
}

// NewRelay returns a relay from store to sink.
func NewRelay(store allot.Store, sink Sink, log *slog.Logger) *Relay {
	if log == nil {
		log = slog.Default()
	}
	return &Relay{store: store, sink: sink, log: log.With("sink", sink.Name()), Batch: 500, Idle: 100 * time.Millisecond}
}

// CursorName is the name of a sink's cursor in the store.
func CursorName(sink string) string { return "relay:" + sink }

// Run relays until ctx ends. Failures are logged and retried with
// exponential backoff (up to 10 s); nothing is skipped.
func (r *Relay) Run(ctx context.Context) {
	backoff := 50 * time.Millisecond
	fail := func(what string, err error) {
		if ctx.Err() != nil {
			return
		}
		r.log.ErrorContext(ctx, what, "err", err, "retry_in", backoff)
		sleep(ctx, backoff)
		backoff = min(2*backoff, 10*time.Second)
	}
	cursor, err := r.store.Cursor(ctx, CursorName(r.sink.Name()))
	for err != nil && ctx.Err() == nil {
		fail("reading the relay cursor", err)
		cursor, err = r.store.Cursor(ctx, CursorName(r.sink.Name()))
	}
	for ctx.Err() == nil {
		n, err := r.Step(ctx, &cursor)
		switch {
		case err != nil:
			fail("relaying events", err)
		case n == 0:
			backoff = 50 * time.Millisecond
			sleep(ctx, r.Idle)
		default:
			backoff = 50 * time.Millisecond
		}
	}
}

// Step publishes the next batch after *cursor and advances it; it returns
// how many events it published.
func (r *Relay) Step(ctx context.Context, cursor *int64) (int, error) {
	evs, err := r.store.EventsAfterChange(ctx, *cursor, r.Batch)
	if err != nil || len(evs) == 0 {
		return 0, err
	}
	if err := r.sink.Publish(ctx, evs); err != nil {
		return 0, err
	}
	last := evs[len(evs)-1].ChangeNo
	if err := r.store.SetCursor(ctx, CursorName(r.sink.Name()), last); err != nil {
		return 0, err // published but not recorded: sent again, de-duplicated downstream
	}
	*cursor = last
	return len(evs), nil
}

func sleep(ctx context.Context, d time.Duration) {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
	case <-t.C:
	}
}

// Message is an event as sinks send it: self-contained, so a consumer can
// act without calling back.
func Message(ev allot.Event) []byte {
	b, err := json.Marshal(ev)
	if err != nil {
		// An event's fields are strings, numbers, a time and raw JSON
		// that was marshalled to be stored: this cannot fail.
		panic(err)
	}
	return b
}
