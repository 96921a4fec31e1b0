package storetest

import (
	"context"
	"fmt"
	"sync/atomic"

	"github.com/allot/allot"
)

// LosingStore commits every write, but while Lose is set reports its
// outcome as unknown (allot.ErrOutcomeUnknown), as a store does when the
// database's answer to COMMIT was lost: the layers above must neither run
// the write again nor call it refused.
type LosingStore struct {
	allot.Store
	Lose atomic.Bool
}

func (l *LosingStore) Write(ctx context.Context, fn func(allot.Tx) error) error {
	err := l.Store.Write(ctx, fn)
	if err == nil && l.Lose.Load() {
		return fmt.Errorf("%w: connection reset", allot.ErrOutcomeUnknown)
	}
	return err
}
