package engine

import "sync/atomic"

// metrics counts what the write path does, for operators and benchmarks.
type metrics struct {
	batches, ops, failed atomic.Int64
}

func (m *metrics) batch(size int, err error) {
	m.batches.Add(1)
	m.ops.Add(int64(size))
	if err != nil {
		m.failed.Add(1)
	}
}

// Stats is a snapshot of the write path's counters.
type Stats struct {
	Batches       int64 `json:"batches"`
	Ops           int64 `json:"ops"`
	FailedBatches int64 `json:"failed_batches"`
}

// Stats returns the counters since the engine started.
func (e *Engine) Stats() Stats {
	return Stats{Batches: e.metrics.batches.Load(), Ops: e.metrics.ops.Load(), FailedBatches: e.metrics.failed.Load()}
}
