package engine

import (
	"context"
	"fmt"
	"time"

	"github.com/allot/allot"
)

// IdempotencyRetention is how long completed Idempotency-Keys are kept.
const IdempotencyRetention = 24 * time.Hour

// Sweep releases the capacity of up to limit expired holds and forgets old
// idempotency keys. It returns how many holds it released.
func (e *Engine) Sweep(ctx context.Context, limit int) (int, error) {
	ids, err := e.store.ExpiredHolds(ctx, e.now(), limit)
	if err != nil {
		return 0, err
	}
	n, failed := 0, 0
	var first error
	for _, id := range ids {
		if _, err := e.releaseHold(ctx, id, allot.HoldExpired); err != nil {
			if allot.CodeOf(err) != "" { // it changed under us (booked, say): nothing to do
				continue
			}
			if ctx.Err() != nil {
				return n, err
			}
			// One hold that cannot be released must not keep every hold
			// that expired after it: go on, and report it.
			if failed++; first == nil {
				first = fmt.Errorf("releasing expired hold %s: %w", id, err)
			}
			continue
		}
		n++
	}
	if failed > 0 {
		// Logged here, at most once a minute, not returned: the sweep did
		// its work, and a failed sweep job would be kept (and this said)
		// every second for as long as the hold stays stuck.
		now := time.Now().UnixNano()
		if last := e.sweepWarned.Load(); now-last > int64(time.Minute) && e.sweepWarned.CompareAndSwap(last, now) {
			e.log.ErrorContext(ctx, "expired holds could not be released; the sweeper goes on past them", "failed", failed, "first", first)
		}
	}
	if _, err := e.store.DeleteIdempotencyKeysBefore(ctx, e.now().Add(-IdempotencyRetention)); err != nil {
		return n, err
	}
	return n, nil
}

// RunSweeper sweeps every interval until ctx ends, logging failures.
func (e *Engine) RunSweeper(ctx context.Context, interval time.Duration) {
	e.every(ctx, interval, "sweeping expired holds", 100, func(ctx context.Context, limit int) (int, error) {
		n, err := e.Sweep(ctx, limit)
		if n > 0 {
			e.log.InfoContext(ctx, "released expired holds", "count", n)
		}
		return n, err
	})
}

// every runs step every interval until ctx ends; a step that did a whole
// batch (limit) runs again at once, so a backlog drains without waiting.
func (e *Engine) every(ctx context.Context, interval time.Duration, what string, limit int, step func(context.Context, int) (int, error)) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		for {
			n, err := step(ctx, limit)
			if err != nil {
				if ctx.Err() == nil {
					e.log.ErrorContext(ctx, what, "err", err)
				}
				break
			}
			if n < limit {
				break
			}
		}
	}
}
